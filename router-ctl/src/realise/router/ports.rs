//! The veth pair of every router port, the internal ones and the gateway's alike: the tap in
//! the network's bridge (daemon namespace), the `qr-`/`qg-` end with the port's MAC in the
//! router namespace, both ends with the MTU of the port's network (the bridge follows its
//! ports). Missing pairs are made, taps down, off their bridge or at another MTU fixed, an
//! inner device whose tap is gone deleted and made again.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Result, anyhow, bail};
use rtnetlink::Handle;

use super::{Created, PortPlan, SPARE_IFINDEX_TRIES, namespace::Namespace};
use crate::{
    model::spec::RouterSpec,
    net::{
        LinkState,
        link::{self, LinkKind},
        ns::{NetnsHandle, with_netlink},
        owned::{Kind, Record},
        sysctl,
    },
    realise::Realiser,
};

/// The daemon namespace's view of a router's bridges and taps.
pub(super) struct DaemonLinks {
    pub links: HashMap<String, LinkState>,
    /// Taken from the caller's dump (reconcile), which may predate an API call.
    pub from_dump: bool,
}

/// What `process_internal_ports` did.
#[derive(Default)]
pub(super) struct PortsOutcome {
    /// Taps of the veth pairs made by this pass (their datapath hooks must be attached anew).
    pub taps: BTreeSet<String>,
    /// Pairs were made or taps fixed: their inner devices still need configuring.
    pub configure_new: bool,
    /// Bridges and taps of the router as last looked up.
    pub links: HashMap<String, LinkState>,
    /// What changed, for the log.
    pub log: Vec<String>,
}

impl Realiser {
    /// The router's bridges must exist (its networks are applied first); returns the bridges
    /// and taps of its ports as the daemon namespace has them.
    pub(super) fn check_bridges(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        known: Option<&HashMap<String, LinkState>>,
    ) -> Result<DaemonLinks> {
        let mut wanted: Vec<String> = ports.iter().map(|p| p.bridge.clone()).collect();
        wanted.extend(ports.iter().map(|p| p.tap.clone()));
        let links: HashMap<String, LinkState> = match known {
            Some(k) => wanted
                .iter()
                .filter_map(|n| k.get(n).map(|l| (n.clone(), l.clone())))
                .collect(),
            None => self.lookup_daemon_links(&wanted)?,
        };
        for p in ports {
            match links.get(&p.bridge) {
                Some(b) if b.kind == LinkKind::Bridge => {}
                _ => bail!(
                    "router {}: port {} is on network {} whose bridge {} does not exist (apply the network first)",
                    spec.id,
                    p.port.port_id,
                    p.port.network_id,
                    p.bridge
                ),
            }
        }
        Ok(DaemonLinks {
            links,
            from_dump: known.is_some(),
        })
    }

    /// Makes the missing veth pairs and fixes taps. `present`: the inner devices found inside
    /// (orphans deleted here leave it).
    pub(super) fn process_internal_ports(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        ns: &Namespace,
        daemon: DaemonLinks,
        present: &mut HashSet<String>,
        created: &mut Vec<Created>,
    ) -> Result<PortsOutcome> {
        let mut out = PortsOutcome {
            links: daemon.links,
            ..PortsOutcome::default()
        };
        let tap_broken = |links: &HashMap<String, LinkState>, p: &PortPlan<'_>| {
            let br = links.get(&p.bridge).map(|b| b.index);
            links
                .get(&p.tap)
                .is_none_or(|t| !t.up || t.controller != br || t.mtu != Some(p.port.mtu))
        };
        let needs_fix = ports
            .iter()
            .any(|p| !present.contains(&p.inner) || tap_broken(&out.links, p));
        if daemon.from_dump && needs_fix {
            // The caller's dump may predate an API call: look again before changing anything.
            let wanted: Vec<String> = ports
                .iter()
                .flat_map(|p| [p.bridge.clone(), p.tap.clone()])
                .collect();
            out.links = self.lookup_daemon_links(&wanted)?;
        }
        // An inner device whose tap is gone is not ours any more (a veth takes its peer with
        // it): delete it and build the pair again.
        let orphans: Vec<String> = ports
            .iter()
            .filter(|p| present.contains(&p.inner) && !out.links.contains_key(&p.tap))
            .map(|p| p.inner.clone())
            .collect();
        if !orphans.is_empty() {
            with_netlink(&ns.handle, |h| {
                let orphans = &orphans;
                async move {
                    for d in orphans {
                        self.datapath.detach_fast(d)?;
                        link::delete_link(&h, d).await?;
                    }
                    Ok(())
                }
            })?;
            for d in &orphans {
                present.remove(d);
                out.log.push(format!("removed orphan {d}"));
            }
        }
        let missing: Vec<&PortPlan<'_>> = ports
            .iter()
            .filter(|p| !present.contains(&p.inner))
            .collect();
        let tap_fix: Vec<&PortPlan<'_>> = ports
            .iter()
            .filter(|p| present.contains(&p.inner) && tap_broken(&out.links, p))
            .collect();
        out.configure_new = !missing.is_empty() || !tap_fix.is_empty();
        if out.configure_new {
            let made =
                self.daemon_ports(spec, &missing, &tap_fix, &ns.handle, created, &mut out)?;
            out.log.extend(made.iter().map(|t| format!("veth {t}")));
            out.taps = made.into_iter().collect();
        }
        Ok(out)
    }

    /// Daemon side of router ports: creates the veth pairs whose inner device is missing (tap in
    /// the bridge, inner device with the port MAC moved into the router namespace), fixes taps
    /// that are down, off their bridge or at another MTU (noting MTU changes in `out.log`).
    /// Returns the taps created.
    ///
    /// The bridges and taps are taken from `out.links`, this call's look-up (`check_bridges`,
    /// from the link table), not asked for again: by name, the kernel walks a name-hash chain
    /// of a namespace with two devices a router, and fills a tap's answer with a walk of every
    /// router namespace's id.
    fn daemon_ports(
        &self,
        spec: &RouterSpec,
        missing: &[&PortPlan<'_>],
        fix: &[&PortPlan<'_>],
        router_ns: &NetnsHandle,
        created: &mut Vec<Created>,
        out: &mut PortsOutcome,
    ) -> Result<Vec<String>> {
        let owned = &self.owned;
        let (links, log) = (&out.links, &mut out.log);
        let mut made = Vec::new();
        let res = with_netlink(&self.daemon_ns, |h| {
            let made = &mut made;
            async move {
                for p in missing.iter().chain(fix.iter()) {
                    let bridge = links.get(&p.bridge).ok_or_else(|| {
                        anyhow!(
                            "router {}: bridge {} of network {} does not exist",
                            spec.id,
                            p.bridge,
                            p.port.network_id
                        )
                    })?;
                    let tap = links.get(&p.tap);
                    let recreate = missing.iter().any(|m| m.tap == p.tap) || tap.is_none();
                    if let Some(t) = tap {
                        if !owned.contains(Kind::Link, &p.tap) {
                            bail!(
                                "router {}: device {} exists but was not created by this daemon",
                                spec.id,
                                p.tap
                            );
                        }
                        if recreate {
                            // Its peer is gone (namespace deleted from outside): start afresh.
                            link::delete_index(&h, t.index, &p.tap).await?;
                        } else {
                            if link::converge_mtu(&h, t, p.port.mtu).await? {
                                log.push(format!("mtu {}", p.tap));
                            }
                            if t.controller != Some(bridge.index) {
                                link::set_controller(&h, t.index, bridge.index).await?;
                            }
                            if !t.up {
                                link::set_up(&h, t.index, true).await?;
                            }
                            continue;
                        }
                    }
                    self.make_veth(&h, spec, p, bridge.index, router_ns).await?;
                    made.push(p.tap.clone());
                }
                Ok(())
            }
        });
        for t in &made {
            created.push(Created::Tap(t.clone()));
        }
        res.map(|()| made)
    }

    /// Records and creates the veth pair of `p`. With the fast path, at an ifindex no other
    /// router device has (see `Datapath::spare_ifindex`): a few tries, then the kernel's choice.
    async fn make_veth(
        &self,
        h: &Handle,
        spec: &RouterSpec,
        p: &PortPlan<'_>,
        bridge: u32,
        router_ns: &NetnsHandle,
    ) -> Result<()> {
        let record = Record::Tap {
            router_id: spec.id.clone(),
        };
        self.owned.record(&p.tap, &record)?;
        let peer = link::VethPeer {
            name: &p.inner,
            mac: p.port.mac,
            ns: router_ns,
        };
        let veth = |index| link::create_veth(h, &p.tap, bridge, peer, Some(p.port.mtu), index);
        let mut res = Err(link::VethError::IndexTaken);
        if self.fast_path() {
            let mut after = 0;
            for _ in 0..SPARE_IFINDEX_TRIES {
                let tap = self.datapath.spare_ifindex(after);
                let inner = self.datapath.spare_ifindex(tap);
                res = veth(Some((tap, inner))).await;
                if !matches!(res, Err(link::VethError::IndexTaken)) {
                    break;
                }
                after = inner;
            }
        }
        if matches!(res, Err(link::VethError::IndexTaken)) {
            res = veth(None).await;
        }
        if let Err(e) = res {
            let _ = self.owned.forget(Kind::Link, &p.tap);
            return Err(anyhow::Error::from(e)
                .context(format!("router {}: port {}", spec.id, p.port.port_id)));
        }
        sysctl::disable_ipv6(&p.tap);
        Ok(())
    }
}
