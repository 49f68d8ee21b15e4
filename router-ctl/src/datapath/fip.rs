//! Floating IPs, port forwardings and the router's internal side in the datapath: the maps
//! `FLOATING_IPS`, `PORT_FORWARDINGS` and `INTERNAL_IFS`, and attaching `internal_in` (the
//! hairpin) to the taps of a router's `qr-` devices.
//!
//! The realiser hands over the whole wanted set of one router each time
//! (`configure_floating`, `configure_internal`); entries of the router not in it are removed,
//! and so are the sessions they translated, so a disassociation stops the flow at once and
//! `router-ctl sessions` no longer shows it.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{Result, bail};
use aya::Ebpf;
use router_common::{
    DIR_IN, DIR_OUT, FipKey, FipValue, PfKey, PfValue, ROUTER_F_FLOATING, ROUTER_F_SNAT,
    RouterConfig, SESSION_FIP, SESSION_PF, SessionKey, ip_to_wire, maps, port_to_wire,
};

use super::{
    Datapath, INTERNAL_HOOKS, Inner, LEGACY_HOOKS, filter, ifindex_of, mirror::Mirrored,
    read_sessions, remove_missing_ok, take,
};
use crate::model::spec::{FloatingIpSpec, PortForwardingSpec};

/// The associated floating IPs among `fips`, as (floating, fixed) pairs: an unassociated one
/// (held for port forwardings only) translates nothing by itself.
fn associated(fips: &[FloatingIpSpec]) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
    fips.iter()
        .filter_map(|f| f.fixed_ip.map(|fixed| (f.floating_ip, fixed)))
}

/// Typed handles of the floating-IP maps.
pub(super) struct Maps {
    fips: Mirrored<FipKey, FipValue>,
    pfs: Mirrored<PfKey, PfValue>,
    internal: Mirrored<u32, RouterConfig>,
    /// Whether each router has floating IPs or port forwardings, as last configured by this
    /// daemon (`ROUTER_F_FLOATING` of its config entries); unknown after a start until the
    /// first `configure_floating`, when the pinned entries' own bit is kept.
    known: std::collections::HashMap<u32, bool>,
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            fips: Mirrored::new(take(ebpf, maps::FLOATING_IPS)?)?,
            pfs: Mirrored::new(take(ebpf, maps::PORT_FORWARDINGS)?)?,
            internal: Mirrored::new(take(ebpf, maps::INTERNAL_IFS)?)?,
            known: std::collections::HashMap::new(),
        })
    }

    /// The `ROUTER_F_FLOATING` bit for a new config entry of `dp_id`; `previous`: whether an
    /// existing entry of the router carries it (used while the state is unknown).
    pub(super) fn flag(&self, dp_id: u32, previous: bool) -> u32 {
        match self.known.get(&dp_id) {
            Some(true) => ROUTER_F_FLOATING,
            Some(false) => 0,
            None if previous => ROUTER_F_FLOATING,
            None => 0,
        }
    }
}

fn fip_key(dp_id: u32, addr: Ipv4Addr, dir: u8) -> FipKey {
    FipKey {
        router_id: dp_id,
        addr: ip_to_wire(addr.octets()),
        dir,
        _pad: [0; 3],
    }
}

fn fip_val(addr: Ipv4Addr) -> FipValue {
    FipValue {
        addr: ip_to_wire(addr.octets()),
        _pad: 0,
    }
}

fn pf_key(dp_id: u32, addr: Ipv4Addr, port: u16, proto: u8, dir: u8) -> PfKey {
    PfKey {
        router_id: dp_id,
        addr: ip_to_wire(addr.octets()),
        port: port_to_wire(port),
        proto,
        dir,
    }
}

fn pf_val(addr: Ipv4Addr, port: u16) -> PfValue {
    PfValue {
        addr: ip_to_wire(addr.octets()),
        port: port_to_wire(port),
        _pad: 0,
    }
}

impl Datapath {
    /// Makes the router's floating IPs and port forwardings exactly the associated ones of
    /// `fips` and `pfs`, as the router's spec holds them; sessions of entries that went away
    /// (or changed) are deleted.
    pub fn configure_floating(
        &self,
        dp_id: u32,
        fips: &[FloatingIpSpec],
        pfs: &[PortForwardingSpec],
    ) -> Result<()> {
        let mut seen = HashSet::new();
        for (floating, fixed) in associated(fips) {
            if !seen.insert(fixed) || !seen.insert(floating) {
                bail!("router {dp_id}: address {fixed} or {floating} used by two floating IPs");
            }
        }
        let mut inner = self.lock();
        let mut want_f: Vec<(FipKey, FipValue)> = Vec::new();
        for (floating, fixed) in associated(fips) {
            want_f.push((fip_key(dp_id, fixed, DIR_OUT), fip_val(floating)));
            want_f.push((fip_key(dp_id, floating, DIR_IN), fip_val(fixed)));
        }
        let mut want_p: Vec<(PfKey, PfValue)> = Vec::new();
        for p in pfs {
            want_p.push((
                pf_key(dp_id, p.internal_ip, p.internal_port, p.protocol, DIR_OUT),
                pf_val(p.floating_ip, p.external_port),
            ));
            want_p.push((
                pf_key(dp_id, p.floating_ip, p.external_port, p.protocol, DIR_IN),
                pf_val(p.internal_ip, p.internal_port),
            ));
        }
        // Stale entries first (a changed mapping must not leave its old reverse behind).
        let floating = &mut inner.floating;
        let stale = floating
            .fips
            .remove_where(|k, v| k.router_id == dp_id && !want_f.contains(&(*k, *v)))?
            + floating
                .pfs
                .remove_where(|k, v| k.router_id == dp_id && !want_p.contains(&(*k, *v)))?;
        for (k, v) in &want_f {
            inner.floating.fips.insert(*k, *v)?;
        }
        for (k, v) in &want_p {
            inner.floating.pfs.insert(*k, *v)?;
        }
        // A FIP/PF session exists only while the entry that made it does (entries go only
        // here, with their sessions, or with the router's): nothing stale, nothing to flush,
        // and the session table (up to its capacity) is not read on every router change.
        if stale > 0 {
            flush_stale_sessions(&mut inner, dp_id, fips, pfs)?;
        }
        let any = associated(fips).next().is_some() || !pfs.is_empty();
        set_floating_flag(&mut inner, dp_id, any)?;
        Ok(())
    }

    /// Attaches `internal_in` to `dev`, the tap of one of a router's `qr-` devices (calling
    /// thread in the daemon's namespace); idempotent. Returns the ifindex.
    pub fn attach_internal(&self, dev: &str) -> Result<u32> {
        let ifindex = ifindex_of(dev)?;
        let mut inner = self.lock();
        self.attach_hooks(&mut inner, dev, &INTERNAL_HOOKS)?;
        // A filter an earlier version left on the other hook (`internal_out`) goes.
        for (name, attach_type, _) in &LEGACY_HOOKS {
            filter::detach(dev, *attach_type, name)?;
        }
        Ok(ifindex)
    }

    /// Makes the router's internal taps exactly `ifindexes`, with the router's gateway IP
    /// (`None`: no gateway, so no hairpin SNAT) for hairpin SNAT.
    pub fn configure_internal(
        &self,
        dp_id: u32,
        ifindexes: &[u32],
        gateway_ip: Option<Ipv4Addr>,
    ) -> Result<()> {
        let mut inner = self.lock();
        let mut stale = Vec::new();
        let mut previous_floating = false;
        for (idx, c) in inner.floating.internal.iter() {
            if c.router_id == dp_id {
                previous_floating |= c.flags & ROUTER_F_FLOATING != 0;
                if !ifindexes.contains(&idx) {
                    stale.push(idx);
                }
            }
        }
        let snat = if gateway_ip.is_some() {
            ROUTER_F_SNAT
        } else {
            0
        };
        let cfg = RouterConfig {
            router_id: dp_id,
            gateway_ip: gateway_ip.map_or(0, |g| ip_to_wire(g.octets())),
            flags: snat | inner.floating.flag(dp_id, previous_floating),
            port_min: self.nat.port_min,
            port_max: self.nat.port_max,
        };
        for idx in &stale {
            inner.floating.internal.remove(idx)?;
        }
        for idx in ifindexes {
            if *idx == 0 {
                bail!("router {dp_id}: internal ifindex 0 is not a device");
            }
            inner.floating.internal.insert(*idx, cfg)?;
        }
        Ok(())
    }
}

/// Deletes the FIP/PF sessions of router `dp_id` that the wanted entries no longer produce.
fn flush_stale_sessions(
    inner: &mut Inner,
    dp_id: u32,
    fips: &[FloatingIpSpec],
    pfs: &[PortForwardingSpec],
) -> Result<()> {
    let entries = read_sessions(inner)?;
    let w = |a: Ipv4Addr| ip_to_wire(a.octets());
    let p = port_to_wire;
    let mut doomed: Vec<SessionKey> = Vec::new();
    for (k, v) in &entries {
        if u32::from(k.router_id) != dp_id {
            continue;
        }
        // (internal addr, internal port, outside addr, outside port) of the entry.
        let (int_a, int_p, ext_a, ext_p) = match k.dir {
            DIR_OUT => (k.src, k.sport, v.addr, v.port),
            DIR_IN => (v.addr, v.port, k.dst, k.dport),
            _ => continue,
        };
        let keep = match v.kind {
            SESSION_FIP => {
                associated(fips).any(|(floating, fixed)| w(fixed) == int_a && w(floating) == ext_a)
            }
            SESSION_PF => pfs.iter().any(|f| {
                f.protocol == k.proto
                    && w(f.internal_ip) == int_a
                    && p(f.internal_port) == int_p
                    && w(f.floating_ip) == ext_a
                    && p(f.external_port) == ext_p
            }),
            _ => true,
        };
        if !keep {
            doomed.push(*k);
        }
    }
    for k in &doomed {
        remove_missing_ok(inner.sessions.remove(k))?;
    }
    Ok(())
}

/// Sets or clears `ROUTER_F_FLOATING` on every config entry (gateway and internal taps) of
/// router `dp_id`; a no-op when this daemon already set it that way.
fn set_floating_flag(inner: &mut Inner, dp_id: u32, on: bool) -> Result<()> {
    if inner.floating.known.get(&dp_id) == Some(&on) {
        return Ok(());
    }
    let bit = |c: RouterConfig| RouterConfig {
        flags: if on {
            c.flags | ROUTER_F_FLOATING
        } else {
            c.flags & !ROUTER_F_FLOATING
        },
        ..c
    };
    let of_router = |_: &u32, c: &RouterConfig| c.router_id == dp_id;
    inner.config.update_where(of_router, bit)?;
    inner.floating.internal.update_where(of_router, bit)?;
    inner.floating.known.insert(dp_id, on);
    Ok(())
}

/// Removes every floating-IP, port-forwarding and internal-tap entry of the router.
pub(super) fn remove_router(inner: &mut Inner, dp_id: u32) -> Result<()> {
    inner.floating.known.remove(&dp_id);
    let floating = &mut inner.floating;
    floating.fips.remove_where(|k, _| k.router_id == dp_id)?;
    floating.pfs.remove_where(|k, _| k.router_id == dp_id)?;
    floating
        .internal
        .remove_where(|_, c| c.router_id == dp_id)?;
    Ok(())
}
