//! One netlink session inside the router namespace: its settings, the `qr-`/`qg-` devices the
//! spec no longer has deleted, every present port device configured (IPv6 settings, MAC, MTU,
//! up, addresses), the router advertisements of its `qr-` ports, then `process_routes` and
//! `process_fast_path` on the same thread.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{Context as _, Result};
use rtnetlink::Handle;

use super::{PortPlan, floating, ipv6, namespace};
use crate::{
    datapath::filter,
    model::spec::{
        RouterSpec,
        names::{self, RouterDev},
    },
    net::{
        LinkState, link,
        ns::{NetnsHandle, with_netlink},
    },
    realise::Realiser,
};

/// What a router-namespace pass does besides configuring the present devices.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct InsideMode {
    /// Delete `qr-`/`qg-` devices the spec does not have.
    pub prune: bool,
    /// Write the namespace's sysctls.
    pub sysctls: bool,
    /// A reconcile pass: check the fast-path filters and refresh stale neighbours.
    pub verify: bool,
    /// A reconcile pass after the start-up resync: a router not yet unlisted by this run is
    /// (`datapath::unlist`). Not in the start-up resync, whose time to confirm every router
    /// is what a restart waits for.
    pub unlist: bool,
}

/// What the router-namespace pass found and did.
#[derive(Default)]
pub(super) struct InsideReport {
    /// Inner devices present after removing extras.
    pub present: HashSet<String>,
    /// Router devices deleted because the spec no longer has their port (their taps went with
    /// them).
    pub removed: Vec<RouterDev>,
    /// (bridge of the port's network, mac, ip) to announce.
    pub announce: Vec<(String, [u8; 6], Ipv4Addr)>,
    /// What changed, for the log.
    pub changed: Vec<String>,
}

impl Realiser {
    /// The inside pass (see the module comment and `InsideMode`).
    ///
    /// Namespace-wide sysctls are written when the namespace is new and checked by reconcile,
    /// not on every API call: each `/proc/sys` look-up is O(namespaces) on the kernel side (the
    /// sysctl dentries of all namespaces share hash chains), ~8 per router change with 1000
    /// routers. A port's own IPv6 settings are compared with the link dump on every pass and
    /// written only where they differ.
    pub(super) fn process_inside(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        router_ns: &NetnsHandle,
        mode: InsideMode,
    ) -> Result<InsideReport> {
        with_netlink(router_ns, |h| async move {
            let mut rep = InsideReport::default();
            let links = link::dump_links(&h).await?;
            namespace::converge_settings(&h, &links, mode.sysctls, &mut rep.changed).await?;
            // A port that stops advertising says so (router lifetime 0) while its device is
            // still there to send it: before the pruning below.
            let netns = std::os::unix::fs::MetadataExt::ino(&router_ns.file.metadata()?);
            let keep: Vec<&str> = ipv6::advertising(spec, ports).collect();
            rep.changed
                .append(&mut self.advertiser.retire(&spec.id, netns, &keep));
            let by_name = self
                .prune_devices(&h, router_ns, ports, links, mode.prune, &mut rep)
                .await?;
            let mut gw_index = None;
            // Present, up and addressed: (name, ifindex, MAC, gateway).
            let mut fast_ready = Vec::new();
            for p in ports {
                let Some(l) = by_name.get(&p.inner) else {
                    continue;
                };
                rep.present.insert(p.inner.clone());
                ipv6::configure_port(spec, p, l)
                    .with_context(|| format!("router {}: device {}", spec.id, p.inner))?;
                self.configure_device(&h, spec, p, l, &mut rep).await?;
                if p.gateway {
                    gw_index = Some(l.index);
                }
                if spec.admin_state_up {
                    fast_ready.push((p.inner.clone(), l.index, p.port.mac, p.gateway));
                }
            }
            let advertised = ipv6::advertised(spec, ports, &by_name);
            let mut ra_changes = self.advertiser.converge(&spec.id, netns, &advertised)?;
            rep.changed.append(&mut ra_changes);
            let mut route_changes = self.process_routes(&h, spec, gw_index).await?;
            rep.changed.append(&mut route_changes);
            let mut fast_changes = self
                .process_fast_path(&h, spec, &fast_ready, &by_name, mode)
                .await?;
            rep.changed.append(&mut fast_changes);
            Ok(rep)
        })
    }

    /// With `prune`, deletes the router devices of ports the spec does not have; returns the
    /// remaining links by name.
    async fn prune_devices(
        &self,
        h: &Handle,
        router_ns: &NetnsHandle,
        ports: &[PortPlan<'_>],
        links: Vec<LinkState>,
        prune: bool,
        rep: &mut InsideReport,
    ) -> Result<HashMap<String, LinkState>> {
        let mut by_name = HashMap::new();
        for l in links {
            let dev = names::parse_router_dev(&l.name);
            if let Some(dev) = dev.filter(|_| prune)
                && !ports.iter().any(|p| p.inner == l.name)
            {
                if let Some(mac) = l.mac {
                    self.datapath.forget_fast(l.index, mac)?;
                }
                link::delete_detached(router_ns, h, &l.name).await?;
                rep.removed.push(dev);
                continue;
            }
            by_name.insert(l.name.clone(), l);
        }
        Ok(by_name)
    }

    /// One present port device: MAC, MTU, administrative state, addresses (the gateway's with
    /// the floating IPs); notes what to announce.
    async fn configure_device(
        &self,
        h: &Handle,
        spec: &RouterSpec,
        p: &PortPlan<'_>,
        l: &LinkState,
        rep: &mut InsideReport,
    ) -> Result<()> {
        let mut announce = false;
        if l.mac != Some(p.port.mac) {
            link::set_mac(h, l.index, p.port.mac).await?;
            rep.changed.push(format!("mac {}", p.inner));
            announce = true;
        }
        if link::converge_mtu(h, l, p.port.mtu)
            .await
            .with_context(|| format!("router {}: device {}", spec.id, p.inner))?
        {
            rep.changed.push(format!("mtu {}", p.inner));
        }
        if l.up != spec.admin_state_up {
            if spec.admin_state_up && self.fast_path() {
                // The qdisc goes on while the device is down: grafting a qdisc onto an up
                // device deactivates it for a moment (`qdisc_graft` → `dev_deactivate`),
                // dropping what it sends then — the router's first ARP request, so the first
                // packets of a new gateway waited a second for the retransmission. An
                // `ingress` qdisc, not a `clsact`: the fast path uses that hook only (see
                // `filter::ensure_ingress`). `process_fast_path` adds the filter.
                if filter::ensure_ingress(h, l.index)
                    .await
                    .with_context(|| format!("router {}: device {}", spec.id, p.inner))?
                {
                    self.datapath.unlist_router_block();
                }
            }
            link::set_up(h, l.index, spec.admin_state_up).await?;
            rep.changed.push(format!("link {}", p.inner));
            announce = true;
        }
        let extras = if p.gateway {
            floating::gateway_extras(spec)
        } else {
            Vec::new()
        };
        let (addr_changed, added) =
            floating::converge_addresses(h, l.index, &p.port.addresses, &extras)
                .await
                .with_context(|| format!("router {}: device {}", spec.id, p.inner))?;
        if addr_changed || !added.is_empty() {
            rep.changed.push(format!("address {}", p.inner));
        }
        let to_announce = if announce || addr_changed {
            // Gratuitous ARP is IPv4's; IPv6 neighbours learn by their own means.
            p.port
                .ipv4()
                .map(|n| n.addr())
                .into_iter()
                .chain(extras)
                .collect()
        } else {
            // Floating IPs just added (associations).
            added
        };
        for a in to_announce {
            rep.announce.push((p.bridge.clone(), p.port.mac, a));
        }
        Ok(())
    }
}
