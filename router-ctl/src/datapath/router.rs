//! Router configuration: a router's NAT config (`ROUTER_CONFIG`) and internal CIDRs
//! (`INTERNAL_CIDRS`), and the flushes that keep its sessions consistent with them.

use std::{net::Ipv4Addr, sync::atomic::Ordering};

use anyhow::{Context as _, Result, bail};
use aya::maps::{PerCpuValues, lpm_trie::Key};
use ipnet::Ipv4Net;
use router_common::{
    CidrKey, ROUTER_F_FLOATING, ROUTER_F_SNAT, RouterConfig, RouterStats, SessionKey, ip_to_wire,
};

use super::{Datapath, Inner, fast, fip, read_session_map, remove_missing_ok, sessions};

/// NAT configuration of one router, as the realiser hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterNat {
    pub dp_id: u32,
    /// ifindex (daemon namespace) of the gateway tap the programs are attached to.
    pub ifindex: u32,
    pub gateway_ip: Ipv4Addr,
    pub enable_snat: bool,
    pub internal_cidrs: Vec<Ipv4Net>,
}

fn cidr_key(dp_id: u32, net: &Ipv4Net) -> Key<CidrKey> {
    Key::new(
        32 + u32::from(net.prefix_len()),
        CidrKey {
            router_id_be: dp_id.to_be(),
            addr: ip_to_wire(net.network().octets()),
        },
    )
}

impl Datapath {
    /// Writes (or rewrites) the router's config and internal CIDRs.
    ///
    /// Sessions of the router are flushed when its gateway IP changes or SNAT is turned off:
    /// they could never be used again.
    pub fn configure_router(&self, nat: &RouterNat) -> Result<()> {
        if nat.ifindex == 0 {
            bail!("router {}: gateway ifindex 0 is not a device", nat.dp_id);
        }
        let mut inner = self.lock();
        // Previous config of this router (possibly on another gateway device).
        let previous: Vec<(u32, RouterConfig)> = inner
            .config
            .iter()
            .filter(|(_, c)| c.router_id == nat.dp_id)
            .collect();
        let previous_floating = previous
            .iter()
            .any(|(_, c)| c.flags & ROUTER_F_FLOATING != 0);
        let snat = if nat.enable_snat { ROUTER_F_SNAT } else { 0 };
        let cfg = RouterConfig {
            router_id: nat.dp_id,
            gateway_ip: ip_to_wire(nat.gateway_ip.octets()),
            flags: snat | inner.floating.flag(nat.dp_id, previous_floating),
            port_min: self.nat.port_min,
            port_max: self.nat.port_max,
        };
        // CIDRs: add the wanted ones, then drop the others.
        let wanted: Vec<Key<CidrKey>> = nat
            .internal_cidrs
            .iter()
            .map(|n| cidr_key(nat.dp_id, &n.trunc()))
            .collect();
        for k in &wanted {
            if !inner.cidrs.contains(k) {
                inner.cidrs.insert(k)?;
            }
        }
        let stale: Vec<Key<CidrKey>> = inner
            .cidrs
            .of_router(nat.dp_id)
            .into_iter()
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for k in &stale {
            inner.cidrs.remove(k)?;
        }
        // `snat_out` trusts a session without asking the trie: sessions whose internal end
        // left the router's subnets go with them (after the trie, so none is re-created).
        if !stale.is_empty() {
            let gone = self.flush_outside(&mut inner, nat.dp_id, &nat.internal_cidrs)?;
            self.uncount(nat.dp_id, gone);
        }
        // An identical entry (a restart adopting the router) is left as the kernel has it.
        if !previous.iter().any(|(i, c)| *i == nat.ifindex && *c == cfg) {
            inner.config.insert(nat.ifindex, cfg)?;
        }
        for (idx, _) in previous.iter().filter(|(idx, _)| *idx != nat.ifindex) {
            inner.config.remove(idx)?;
        }
        let changed = previous
            .iter()
            .any(|(_, c)| c.gateway_ip != cfg.gateway_ip || c.flags & ROUTER_F_SNAT == 0);
        if changed || !nat.enable_snat {
            let gone = self.flush_router(&mut inner, nat.dp_id)?;
            self.uncount(nat.dp_id, gone.entries);
        }
        Ok(())
    }

    /// Removes the router's config, CIDRs, sessions, fragments, fast-path entries and counters (its counter slot
    /// reads zero for the next router given this number).
    pub fn remove_router(&self, dp_id: u32) -> Result<()> {
        let mut inner = self.lock();
        inner.config.remove_where(|_, c| c.router_id == dp_id)?;
        for k in &inner.cidrs.of_router(dp_id) {
            inner.cidrs.remove(k)?;
        }
        self.flush_router(&mut inner, dp_id)?;
        fip::remove_router(&mut inner, dp_id)?;
        fast::remove_router(&mut inner, dp_id)?;
        zero_stats(&mut inner, dp_id)?;
        // No packet of the router creates entries any more (its config is gone).
        self.counts.clear(dp_id);
        Ok(())
    }

    /// Deletes every session of the router; returns how many.
    pub fn flush_sessions(&self, dp_id: u32) -> Result<usize> {
        let mut inner = self.lock();
        let n = self.flush_router(&mut inner, dp_id)?;
        self.uncount(dp_id, n.entries);
        Ok(n.sessions)
    }

    /// Whether router `dp_id` may hold entries of the session table, so that flushing them
    /// must read the table: its count says so, or no GC pass has repaired the counts yet
    /// (`counts_repaired`). Reading the table costs a copy of every entry of every router;
    /// done for each router deleted, gateway cleared or subnet removed, it made those calls
    /// O(sessions on the node) whether the router had a session or not. A count of 0 with an
    /// entry the datapath is inserting at this moment is the race a read of the table has as
    /// well (an entry inserted after the read); the router's config goes first, so no new
    /// flow of a router being removed starts after it.
    fn may_hold_sessions(&self, dp_id: u32) -> bool {
        !self.counts_repaired.load(Ordering::Acquire) || self.counts.get(dp_id) != 0
    }

    /// Deletes router `dp_id`'s SNAT sessions (and aliases) whose internal end is in none of
    /// `cidrs`; returns how many entries went.
    fn flush_outside(&self, inner: &mut Inner, dp_id: u32, cidrs: &[Ipv4Net]) -> Result<usize> {
        if !self.may_hold_sessions(dp_id) {
            return Ok(0);
        }
        let cidrs: Vec<Ipv4Net> = cidrs.iter().map(Ipv4Net::trunc).collect();
        let doomed = sessions::outside(&read_session_map(&inner.sessions)?, dp_id, &cidrs);
        for k in &doomed {
            remove_missing_ok(inner.sessions.remove(k))?;
        }
        Ok(doomed.len())
    }

    /// Deletes the sessions (read only if it may hold any) and fragment entries of one router.
    fn flush_router(&self, inner: &mut Inner, dp_id: u32) -> Result<Flushed> {
        let keys: Vec<SessionKey> = if self.may_hold_sessions(dp_id) {
            read_session_map(&inner.sessions)?
                .into_keys()
                .filter(|k| u32::from(k.router_id) == dp_id)
                .collect()
        } else {
            Vec::new()
        };
        let mut n = 0;
        for k in &keys {
            remove_missing_ok(inner.sessions.remove(k))?;
            if k.dir == router_common::DIR_IN {
                n += 1;
            }
        }
        let mut frags = Vec::new();
        for k in inner.fragments.keys() {
            match k {
                Ok(k) if k.router_id == dp_id => frags.push(k),
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for k in &frags {
            remove_missing_ok(inner.fragments.remove(k))?;
        }
        Ok(Flushed {
            sessions: n,
            entries: keys.len(),
        })
    }

    /// Takes `entries` the daemon deleted off router `dp_id`'s count, at most what it holds
    /// (the next GC pass corrects the count either way), so a router near its cap gets room
    /// at once.
    fn uncount(&self, dp_id: u32, entries: usize) {
        let held = self.counts.get(dp_id);
        self.counts.add(dp_id, -(held.min(entries as u64) as i64));
    }
}

/// Zeroes router `dp_id`'s counter slot on every CPU.
fn zero_stats(inner: &mut Inner, dp_id: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let zero = PerCpuValues::try_from(vec![RouterStats::default(); cpus])?;
    inner
        .stats
        .set(dp_id, zero, 0)
        .with_context(|| format!("zeroing the counters of router number {dp_id}"))
}

/// What a flush deleted: sessions, and entries (sessions and forward aliases).
struct Flushed {
    sessions: usize,
    entries: usize,
}
