//! Many routers on one realiser: each apply touches only its router, and a reconcile pass over
//! a converged state changes nothing (no repair, no removal, no new announcements).
//!
//! `REALISE_ROUTERS` sets the count (default 60); durations are printed, never asserted.

use std::time::Instant;

use router_ctl::model::spec::{
    DesiredState, GatewaySpec, NetworkSpec, PortSpec, RouterSpec, names,
};
use tests::{RealiserHost, netns_exists, unique};

#[test]
fn many_routers_apply_and_reconcile_steady_state() {
    let n: u32 = std::env::var("REALISE_ROUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let h = RealiserHost::new(&[]);
    let ext = NetworkSpec {
        id: unique("n"),
        physical_network: None,
        external: true,
    };
    let int = NetworkSpec {
        id: unique("n"),
        physical_network: None,
        external: false,
    };
    h.call(|r| r.apply_network(&ext)).expect("ext");
    h.call(|r| r.apply_network(&int)).expect("int");
    let mut routers = Vec::new();
    for i in 0..n {
        let hi = (i >> 8) as u8;
        let lo = (i & 0xff) as u8;
        routers.push(RouterSpec {
            id: unique("r"),
            dp_id: i + 1,
            admin_state_up: true,
            interfaces: vec![PortSpec {
                port_id: unique("p"),
                network_id: int.id.clone(),
                mac: [0xfa, 0x16, 0x3e, 0x01, hi, lo],
                addresses: vec![format!("10.{hi}.{lo}.1/24").parse().expect("address")],
                mtu: 1500,
            }],
            floating_ips: vec![],
            port_forwardings: vec![],
            routes: vec![],
            gateway: Some(GatewaySpec {
                port: PortSpec {
                    port_id: unique("p"),
                    network_id: ext.id.clone(),
                    mac: [0xfa, 0x16, 0x3e, 0x02, hi, lo],
                    addresses: vec![format!("100.64.{hi}.{lo}/16").parse().expect("address")],
                    mtu: 1500,
                },
                next_hops: vec!["100.64.255.254".parse().expect("nh")],
                enable_snat: true,
            }),
        });
    }
    let t = Instant::now();
    for r in &routers {
        h.call(|re| re.apply_router(r)).expect("apply");
    }
    eprintln!("{n} routers applied in {:?}", t.elapsed());
    for r in &routers {
        assert!(netns_exists(&names::router_netns(&r.id)));
    }
    let desired = DesiredState {
        networks: vec![ext.clone(), int.clone()],
        routers: routers.clone(),
    };
    // The first pass enters every namespace, the next ones check from the host side.
    for kind in ["full", "outside-only"] {
        let t = Instant::now();
        let rep = h.call(|re| re.reconcile(&desired)).expect("reconcile");
        eprintln!(
            "steady-state {kind} reconcile of {n} routers in {:?}",
            t.elapsed()
        );
        assert!(rep.repaired.is_empty(), "{:?}", rep.repaired.first());
        assert!(rep.removed.is_empty() && rep.failed.is_empty(), "{rep:?}");
    }
    assert_eq!(h.owned("netns").len(), n as usize);
    let t = Instant::now();
    h.call(|re| re.purge()).expect("purge");
    eprintln!("{n} routers purged in {:?}", t.elapsed());
    for r in &routers {
        assert!(!netns_exists(&names::router_netns(&r.id)));
    }
}
