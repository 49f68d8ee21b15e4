//! Realisation of floating IPs, port forwardings, the internal-side hooks and the metadata
//! address of a router.
//!
//! - Each floating IP of the router is a /32 on its `qg-` device, so the router namespace
//!   answers ARP for it on the external network (`arp_ignore=1` is satisfied: the address is on
//!   the receiving interface); a newly added one is announced by gratuitous ARP.
//! - 169.254.169.254/32 sits on the namespace's `lo`: the daemon's metadata proxy listens there
//!   on port 80 (`crate::metadata`); plain routing takes instances' requests to it.
//! - `accept_local=1`: hairpinned packets enter the router with a floating IP or the gateway IP
//!   (local addresses) as source, which Linux would otherwise drop as martians.
//! - While the router has at least one floating IP or port forwarding, the taps of its `qr-`
//!   devices carry `internal_in` (the hairpin), attached before the first translation is
//!   configured and detached after the last is gone; other routers' taps carry no program.
//!   The datapath's floating-IP and port-forwarding maps are set to the spec's.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use anyhow::{Context as _, Result};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::Handle;

use super::{PortPlan, Realiser, RouterMemo};
use crate::{
    datapath::Datapath,
    model::spec::{FloatingIpSpec, PortForwardingSpec, RouterSpec},
    net::{
        link,
        ns::{NetnsHandle, in_netns, with_netlink},
    },
};

/// The metadata address, as it sits on the router namespace's `lo`.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(
    router_common::METADATA_IP[0],
    router_common::METADATA_IP[1],
    router_common::METADATA_IP[2],
    router_common::METADATA_IP[3],
);

/// Something that follows routers' lives: the daemon's metadata proxies.
pub trait RouterHook: Send + Sync {
    /// The router's namespace is converged (called after every apply; idempotent).
    fn router_up(&self, router_id: &str, ns: &NetnsHandle) -> Result<()>;
    /// The router is being removed.
    fn router_down(&self, router_id: &str);
}

/// What `converge_floating` last wrote for a router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
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

/// Puts the metadata address on `lo` (index `lo`); returns whether it was added.
pub(super) async fn converge_metadata_addr(h: &Handle, lo: u32) -> Result<bool> {
    let metadata = IpNet::V4(Ipv4Net::from(METADATA_ADDR));
    let current = link::addresses(h, lo).await?;
    if current.iter().any(|a| a.net == metadata) {
        return Ok(false);
    }
    match h
        .address()
        .add(lo, metadata.addr(), metadata.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if link::errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("adding address {metadata}")),
    }
}

/// Sysctls of a router namespace needed by the floating-IP hairpin.
pub(super) const SYSCTLS: [(&str, &str); 1] = [("ipv4/conf/all/accept_local", "1")];

impl Realiser {
    /// Attaches the hairpin program to the router's `qr-` taps while the router has floating
    /// IPs or port forwardings (detaches it otherwise) and writes the internal-tap,
    /// floating-IP and port-forwarding maps. `force`: the datapath state of the router was
    /// reset in this converge (rewrite even if the memo says it is current).
    pub(super) fn converge_floating(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        memo: &mut RouterMemo,
        recreated: &[String],
        force: bool,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let first = memo.floating.is_none();
        let old = memo.floating.clone().unwrap_or_default();
        let gateway_ip = spec.gateway.as_ref().and_then(|g| g.snat_ip());
        let fips: Vec<FloatingIpSpec> = spec
            .floating_ips
            .iter()
            .filter(|f| f.fixed_ip.is_some())
            .cloned()
            .collect();
        let pfs = spec.port_forwardings.clone();
        // Without a gateway nothing may be translated (the spec should hold none anyway).
        let (fips, pfs) = if gateway_ip.is_some() {
            (fips, pfs)
        } else {
            (Vec::new(), Vec::new())
        };
        // The hairpin hook runs only on routers that have something to hairpin to: every other
        // router's tenant traffic crosses its `qr-` taps without a program.
        let hairpin = !fips.is_empty() || !pfs.is_empty();
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
        // Attached before the floating IPs are configured below, so no hairpin packet meets a
        // translation without its hook.
        let to_attach: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|t| !old.internal.contains_key(*t) || recreated.iter().any(|r| r == t))
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
            } else if let Some(idx) = old.internal.get(*t) {
                internal.insert(t.to_string(), *idx);
            }
        }
        // Taps to take the hook off once the translations that need it are gone: those that
        // left the router (their devices go with the port) or whose router has nothing left to
        // hairpin to; on the first converge of a daemon (or after a rollback), every unwanted
        // interface tap that existed before this converge, as a previous run may have left
        // filters on it.
        let mut detach: Vec<String> = old
            .internal
            .keys()
            .filter(|t| !internal.contains_key(*t))
            .cloned()
            .collect();
        if first {
            detach.extend(
                interface_taps
                    .iter()
                    .filter(|t| !internal.contains_key(**t) && !recreated.iter().any(|r| r == *t))
                    .map(|t| t.to_string()),
            );
        }
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

    /// Reconcile's check of the filters on the taps of `routers` (as the memo records them
    /// attached): a tap whose hooks no longer all run our filter (removed from outside) is
    /// dropped from its router's memo, so the next converge attaches it again. One netlink
    /// connection for the pass, one dump per hook. Returns `(router id, tap)` of those.
    pub(super) fn check_filters(&self, routers: &[RouterSpec]) -> Result<Vec<(String, String)>> {
        let mut taps: Vec<(String, String, u32, bool)> = Vec::new();
        {
            let memo = super::lock(&self.memo);
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
        let mut memo = super::lock(&self.memo);
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

    /// Registers the hook told about routers coming up and going (the metadata proxies).
    pub fn set_router_hook(&self, hook: Arc<dyn RouterHook>) {
        let _ = self.router_hook.set(hook);
    }
}
