//! Floating IPs, port forwardings and the internal-side hooks of a router.
//!
//! - Each floating IP of the router is a /32 on its `qg-` device, so the router namespace
//!   answers ARP for it on the external network (`arp_ignore=1` is satisfied: the address is on
//!   the receiving interface); a newly added one is announced by gratuitous ARP.
//! - `accept_local=1`: hairpinned packets enter the router with a floating IP or the gateway IP
//!   (local addresses) as source, which Linux would otherwise drop as martians.
//! - While the router has at least one floating IP or port forwarding, the taps of its `qr-`
//!   devices carry `internal_in` (the hairpin), attached before the first translation is
//!   configured and detached after the last is gone; other routers' taps carry no program.
//!   The datapath's floating-IP and port-forwarding maps are set to the spec's.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::Handle;

use super::PortPlan;
use crate::{
    datapath::Datapath,
    model::spec::{FloatingIpSpec, PortForwardingSpec, RouterSpec},
    net::{
        link,
        ns::{in_netns, with_netlink},
    },
    realise::{Realiser, RouterMemo, lock},
};

/// What `process_floating_ips` last wrote for a router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(in crate::realise) struct Applied {
    /// Internal tap → ifindex, attached (empty while the router has no floating IP or port
    /// forwarding).
    internal: BTreeMap<String, u32>,
    gateway_ip: Option<Ipv4Addr>,
    /// The associated floating IPs (an unassociated one translates nothing).
    fips: Vec<FloatingIpSpec>,
    pfs: Vec<PortForwardingSpec>,
}

/// The floating IPs whose address belongs on the router's gateway device.
pub(super) fn gateway_extras(spec: &RouterSpec) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = spec.floating_ips.iter().map(|f| f.floating_ip).collect();
    v.sort();
    v.dedup();
    v
}

/// Makes the port's `addresses` plus `extras` (each a /32) exactly the addresses of link
/// `index`. Returns whether anything but the addition of extras changed, and the extras added.
pub(super) async fn converge_addresses(
    h: &Handle,
    index: u32,
    addresses: &[IpNet],
    extras: &[Ipv4Addr],
) -> Result<(bool, Vec<Ipv4Addr>)> {
    let mut want = addresses.to_vec();
    want.extend(extras.iter().map(|e| IpNet::V4(Ipv4Net::from(*e))));
    let changes = link::converge_addresses(h, index, &want).await?;
    let mut added = Vec::new();
    let mut changed = !changes.removed.is_empty();
    for a in changes.added {
        match a {
            IpNet::V4(v) if !addresses.contains(&a) && extras.contains(&v.addr()) => {
                added.push(v.addr())
            }
            _ => changed = true,
        }
    }
    Ok((changed, added))
}

/// The datapath's floating IPs (the associated ones) and port forwardings of `spec`: none
/// without a gateway (the spec should hold none then anyway).
fn translations(
    spec: &RouterSpec,
    gateway: bool,
) -> (Vec<FloatingIpSpec>, Vec<PortForwardingSpec>) {
    if !gateway {
        return (Vec::new(), Vec::new());
    }
    let fips = spec
        .floating_ips
        .iter()
        .filter(|f| f.fixed_ip.is_some())
        .cloned()
        .collect();
    (fips, spec.port_forwardings.clone())
}

/// Sysctls of a router namespace needed by the floating-IP hairpin.
pub(super) const SYSCTLS: [(&str, &str); 1] = [("ipv4/conf/all/accept_local", "1")];

impl Realiser {
    /// Attaches the hairpin program to the router's `qr-` taps while the router has floating
    /// IPs or port forwardings (detaches it otherwise) and writes the internal-tap,
    /// floating-IP and port-forwarding maps. `force`: the datapath state of the router was
    /// reset in this converge (rewrite even if the memo says it is current).
    pub(in crate::realise) fn process_floating_ips(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        memo: &mut RouterMemo,
        recreated: &BTreeSet<String>,
        force: bool,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let gateway_ip = spec.gateway.as_ref().and_then(|g| g.snat_ip());
        let (fips, pfs) = translations(spec, gateway_ip.is_some());
        // The hairpin hook runs only on routers that have something to hairpin to: every other
        // router's tenant traffic crosses its `qr-` taps without a program.
        let hairpin = !fips.is_empty() || !pfs.is_empty();
        // Attached before the floating IPs are configured below, so no hairpin packet meets a
        // translation without its hook.
        let (internal, detach) =
            self.attach_hairpin(spec, ports, memo.floating.as_ref(), recreated, hairpin)?;
        let new = Applied {
            internal,
            gateway_ip,
            fips,
            pfs,
        };
        if !force && detach.is_empty() && memo.floating.as_ref() == Some(&new) {
            return Ok(());
        }
        let idxs: Vec<u32> = new.internal.values().copied().collect();
        self.datapath
            .configure_internal(spec.dp_id, &idxs, gateway_ip)
            .with_context(|| format!("router {}: configuring the internal hooks", spec.id))?;
        self.datapath
            .configure_floating(spec.dp_id, &new.fips, &new.pfs)
            .with_context(|| format!("router {}: configuring floating IPs", spec.id))?;
        if !detach.is_empty() {
            in_netns(&self.daemon_ns, || {
                for t in &detach {
                    self.datapath.detach_internal(t)?;
                }
                Ok(())
            })
            .with_context(|| format!("router {}: detaching the internal hooks", spec.id))?;
        }
        // The first write after a start rewrites what the pinned maps already hold.
        if memo.floating.is_some() {
            changes.push("floating IPs configured".into());
        }
        memo.floating = Some(new);
        Ok(())
    }

    /// Attaches the hairpin hook to the interface taps that need it and do not have it (`old`:
    /// what the memo says is attached; `recreated`: taps made anew by this pass). Returns the
    /// taps that carry it now (tap → ifindex) and those to take it off once the translations
    /// that need it are gone.
    fn attach_hairpin(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        old: Option<&Applied>,
        recreated: &BTreeSet<String>,
        hairpin: bool,
    ) -> Result<(BTreeMap<String, u32>, Vec<String>)> {
        let first = old.is_none();
        let empty = BTreeMap::new();
        let old_internal = old.map_or(&empty, |o| &o.internal);
        let interface_taps: Vec<&str> = ports
            .iter()
            .filter(|p| !p.gateway)
            .map(|p| p.tap.as_str())
            .collect();
        let wanted: Vec<&str> = if hairpin {
            interface_taps.clone()
        } else {
            Vec::new()
        };
        let to_attach: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|t| !old_internal.contains_key(*t) || recreated.contains(*t))
            .collect();
        let attached: Vec<(String, u32)> = if to_attach.is_empty() {
            Vec::new()
        } else {
            in_netns(&self.daemon_ns, || {
                to_attach
                    .iter()
                    .map(|t| Ok((t.to_string(), self.datapath.attach_internal(t)?)))
                    .collect::<Result<Vec<_>>>()
            })
            .with_context(|| format!("router {}: attaching the internal hooks", spec.id))?
        };
        let mut internal = BTreeMap::new();
        for t in &wanted {
            if let Some((_, idx)) = attached.iter().find(|(a, _)| a == t) {
                internal.insert(t.to_string(), *idx);
            } else if let Some(idx) = old_internal.get(*t) {
                internal.insert(t.to_string(), *idx);
            }
        }
        // Taps to take the hook off once the translations that need it are gone: those that
        // left the router (their devices go with the port) or whose router has nothing left to
        // hairpin to; on the first converge of a daemon (or after a rollback), every unwanted
        // interface tap that existed before this converge, as a previous run may have left
        // filters on it.
        let mut detach: Vec<String> = old_internal
            .keys()
            .filter(|t| !internal.contains_key(*t))
            .cloned()
            .collect();
        if first {
            detach.extend(
                interface_taps
                    .iter()
                    .filter(|t| !internal.contains_key(**t) && !recreated.contains(**t))
                    .map(|t| t.to_string()),
            );
        }
        Ok((internal, detach))
    }

    /// Reconcile's check of the filters on the taps of `routers` (as the memo records them
    /// attached): a tap whose hooks no longer all run our filter (removed from outside) is
    /// dropped from its router's memo, so the next converge attaches it again. One netlink
    /// connection for the pass, one dump per hook. Returns `(router id, tap)` of those.
    pub(in crate::realise) fn check_filters(
        &self,
        routers: &[RouterSpec],
    ) -> Result<Vec<(String, String)>> {
        let mut taps: Vec<(String, String, u32, bool)> = Vec::new();
        {
            let memo = lock(&self.memo);
            for r in routers {
                let Some(m) = memo.get(&r.id) else { continue };
                if let Some((t, idx)) = &m.attached {
                    taps.push((r.id.clone(), t.clone(), *idx, false));
                }
                if let Some(f) = &m.floating {
                    taps.extend(
                        f.internal
                            .iter()
                            .map(|(t, idx)| (r.id.clone(), t.clone(), *idx, true)),
                    );
                }
            }
        }
        if taps.is_empty() {
            return Ok(Vec::new());
        }
        let missing: Vec<(String, String, bool)> = with_netlink(&self.daemon_ns, |h| {
            let taps = &taps;
            async move {
                let mut out = Vec::new();
                for (router, t, idx, internal) in taps {
                    if !Datapath::hooks_in_place(&h, *idx, *internal).await? {
                        out.push((router.clone(), t.clone(), *internal));
                    }
                }
                Ok(out)
            }
        })?;
        let mut memo = lock(&self.memo);
        for (router, t, internal) in &missing {
            let Some(m) = memo.get_mut(router) else {
                continue;
            };
            if *internal {
                if let Some(f) = m.floating.as_mut() {
                    f.internal.remove(t);
                }
            } else {
                m.attached = None;
            }
            // Not converged any more: the outside-only check must not skip it.
            m.spec = None;
        }
        Ok(missing.into_iter().map(|(r, t, _)| (r, t)).collect())
    }
}
