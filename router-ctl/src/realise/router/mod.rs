//! One router's pass, read as the list of what a router is made of (after Neutron's
//! `RouterInfo.process()`): `ensure_namespace`, `process_internal_ports` (the veth pairs),
//! `process_external_gateway` (datapath attachment and NAT), `process_floating_ips`, and inside
//! the namespace `process_routes` and `process_fast_path`. Each phase returns what it decided
//! as a typed outcome; the change lines it adds are for logs and reports only.

pub(super) mod fast;
pub(super) mod floating;
mod gateway;
mod inside;
mod ipv6;
pub(super) mod namespace;
mod ports;
mod routes;

use std::collections::HashMap;

use anyhow::Result;

use self::inside::InsideMode;
use super::{Realiser, lock, validate::validate_router};
use crate::{
    model::spec::{PortSpec, RouterSpec, names},
    net::{
        LinkState,
        ns::{self, in_netns},
        owned::Kind,
    },
};

/// Ifindexes tried for a new router port before leaving the choice to the kernel.
const SPARE_IFINDEX_TRIES: usize = 8;

/// Kernel objects a call created, deleted again if the call fails.
#[derive(Debug)]
enum Created {
    Netns(String),
    Tap(String),
    Attached(String),
}

/// One router port as the realiser lays it out.
pub(super) struct PortPlan<'a> {
    pub port: &'a PortSpec,
    pub inner: String,
    pub tap: String,
    pub bridge: String,
    pub gateway: bool,
}

/// The ports of `spec`, interfaces first, with their kernel names.
pub(super) fn plan(spec: &RouterSpec) -> Vec<PortPlan<'_>> {
    let mut out: Vec<PortPlan<'_>> = spec
        .interfaces
        .iter()
        .map(|p| PortPlan {
            port: p,
            inner: names::internal_dev(&p.port_id),
            tap: names::tap_dev(&p.port_id),
            bridge: names::bridge(&p.network_id),
            gateway: false,
        })
        .collect();
    if let Some(gw) = &spec.gateway {
        out.push(PortPlan {
            port: &gw.port,
            inner: names::gateway_dev(&gw.port.port_id),
            tap: names::tap_dev(&gw.port.port_id),
            bridge: names::bridge(&gw.port.network_id),
            gateway: true,
        });
    }
    out
}

/// Who asks for a router pass, which decides what it looks at besides the spec.
#[derive(Clone, Copy)]
pub(in crate::realise) enum Look<'a> {
    /// An API call (or the agent): the change, and the sysctls of a namespace it makes.
    Change,
    /// A reconcile pass, with the daemon namespace's links it dumped: the fast-path filters and
    /// neighbours are checked too, and with `sysctls` the namespace's sysctls are written
    /// again. The start-up resync leaves them as the namespace has them (it adopts what an
    /// earlier run made, and each `/proc/sys` look-up costs O(namespaces) in the kernel: at
    /// 10 000 routers, most of the resync); later passes write them, a slice at a time.
    Reconcile {
        links: &'a HashMap<String, LinkState>,
        sysctls: bool,
    },
}

impl Realiser {
    /// Converges one router (namespace, interfaces, gateway, routes, NAT) to `spec`; idempotent.
    /// On error, the kernel objects this call created are deleted again.
    pub fn apply_router(&self, spec: &RouterSpec) -> Result<()> {
        validate_router(spec)?;
        let _g = self.lock_op();
        self.process_router(spec, Look::Change).map(|_| ())
    }

    /// `process` with the rollback of a failed pass. Returns the change lines.
    pub(in crate::realise) fn process_router(
        &self,
        spec: &RouterSpec,
        look: Look<'_>,
    ) -> Result<Vec<String>> {
        let mut created = Vec::new();
        let res = self.process(spec, look, &mut created);
        if res.is_err() {
            self.rollback(spec, created);
        }
        res
    }

    /// Deletes what a failed converge created, newest first.
    fn rollback(&self, spec: &RouterSpec, created: Vec<Created>) {
        let ns_gone = created.iter().any(|c| matches!(c, Created::Netns(_)));
        if ns_gone {
            // Its sockets would keep the deleted namespace alive.
            self.advertiser.forget_router(&spec.id);
        }
        for c in created.into_iter().rev() {
            let r = match &c {
                Created::Attached(tap) => in_netns(&self.daemon_ns, || self.datapath.detach(tap)),
                Created::Tap(tap) => self.delete_daemon_links(std::slice::from_ref(tap)),
                Created::Netns(name) => {
                    ns::delete(name).and_then(|()| self.owned.forget(Kind::Netns, name))
                }
            };
            if let Err(e) = r {
                tracing::warn!("router {}: undoing {c:?}: {e:#}", spec.id);
            }
        }
        let memo = lock(&self.memo).remove(&spec.id);
        // Fast-path entries of devices that went with a namespace this call made.
        if ns_gone {
            for (idx, mac) in memo.iter().flat_map(|m| m.fast.values()) {
                if let Err(e) = self.datapath.forget_fast(*idx, *mac) {
                    tracing::warn!("router {}: undoing the fast path: {e:#}", spec.id);
                }
            }
        }
    }

    /// The router pass behind `apply_router` and reconcile's repair (see `Look`; a reconcile
    /// pass's dump of the daemon namespace's links spares lookups in the steady state).
    fn process(
        &self,
        spec: &RouterSpec,
        look: Look<'_>,
        created: &mut Vec<Created>,
    ) -> Result<Vec<String>> {
        let (known, sysctls) = match look {
            Look::Change => (None, false),
            Look::Reconcile { links, sysctls } => (Some(links), sysctls),
        };
        let ports = plan(spec);
        let mut log = Vec::new();
        let daemon_links = self.check_bridges(spec, &ports, known)?;
        let ns = self.ensure_namespace(spec, created, &mut log)?;

        // Inside: namespace settings, extra devices out, what is present configured. Sysctls
        // on a namespace made by this call, and when a reconcile pass asks.
        let mode = InsideMode {
            prune: true,
            sysctls: sysctls || ns.created,
            verify: known.is_some(),
            // `sysctls` in a reconcile look: every pass but the start-up resync.
            unlist: known.is_some() && sysctls,
        };
        let mut inside = self.process_inside(spec, &ports, &ns.handle, mode)?;
        for d in &inside.removed {
            self.owned.forget(Kind::Link, &d.tap())?;
            log.push(format!("removed {}", d.name()));
        }
        log.append(&mut inside.changed);

        let made = self.process_internal_ports(
            spec,
            &ports,
            &ns,
            daemon_links,
            &mut inside.present,
            created,
        )?;
        log.extend(made.log.iter().cloned());

        let mut memo = lock(&self.memo).get(&spec.id).cloned().unwrap_or_default();
        let gateway = self.process_external_gateway(
            spec,
            &ports,
            &mut memo,
            &inside.removed,
            &made,
            created,
        )?;
        log.extend(gateway.log);
        self.process_floating_ips(spec, &ports, &mut memo, &made.taps, gateway.reset, &mut log)?;
        memo.taps = ports.iter().map(|p| p.tap.clone()).collect();
        memo.spec = Some(spec.clone());
        lock(&self.memo).insert(spec.id.clone(), memo);

        // Only now address, bring up and route the devices made above: the NAT programs are
        // attached and know every internal CIDR, so no packet from an internal source can leave
        // through a new `qg-` (or from a new subnet) untranslated.
        if made.configure_new {
            let mut again = self.process_inside(spec, &ports, &ns.handle, InsideMode::default())?;
            log.append(&mut again.changed);
            inside.announce.append(&mut again.announce);
        }

        // Announce new or changed addresses (background threads).
        if spec.admin_state_up {
            for (bridge, mac, ip) in inside.announce {
                self.announcer.announce(bridge, mac, ip);
            }
        }
        if let Some(hook) = self.router_hook.get()
            && let Err(e) = hook.router_up(&spec.id, &ns.handle)
        {
            tracing::warn!("router {}: metadata proxy: {e:#}", spec.id);
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];

    fn port(id: &str, addr: &str) -> PortSpec {
        PortSpec {
            port_id: id.into(),
            network_id: "net-1".into(),
            mac: MAC,
            addresses: vec![addr.parse().unwrap()],
            mtu: 1500,
            ra_prefixes: vec![],
        }
    }

    #[test]
    fn plan_names_devices_like_neutron() {
        let r = RouterSpec {
            id: "router-1".into(),
            dp_id: 1,
            admin_state_up: true,
            interfaces: vec![port("0123456789abcdef", "10.0.0.1/24")],
            gateway: Some(crate::model::spec::GatewaySpec {
                port: port("fedcba9876543210", "192.0.2.10/24"),
                next_hops: vec![],
                enable_snat: true,
            }),
            floating_ips: vec![],
            port_forwardings: vec![],
            routes: vec![],
        };
        let p = plan(&r);
        assert_eq!(p[0].inner, "qr-0123456789a");
        assert_eq!(p[0].tap, "tap0123456789a");
        assert_eq!(p[0].bridge, "brqnet-1");
        assert!(!p[0].gateway);
        assert_eq!(p[1].inner, "qg-fedcba98765");
        assert!(p[1].gateway);
    }
}
