//! Many routers on one realiser: each apply touches only its router, and a reconcile pass over
//! a converged state changes nothing (no repair, no removal, no new announcements).
//!
//! `REALISE_ROUTERS` sets the count (default 60); durations are printed, never asserted.

use std::time::Instant;

use router_ctl::model::spec::{DesiredState, names};
use tests::{
    RealiserHost, netns_exists,
    spec::{gateway, port, router},
};

#[test]
fn many_routers_apply_and_reconcile_steady_state() {
    let n: u32 = std::env::var("REALISE_ROUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let h = RealiserHost::new(&[]);
    let [ext, int] = h.networks([true, false]);
    let mut routers = Vec::new();
    for i in 0..n {
        let hi = (i >> 8) as u8;
        let lo = (i & 0xff) as u8;
        routers.push(router(
            i + 1,
            vec![port(
                &int.id,
                [0xfa, 0x16, 0x3e, 0x01, hi, lo],
                &format!("10.{hi}.{lo}.1/24"),
            )],
            Some(gateway(
                port(
                    &ext.id,
                    [0xfa, 0x16, 0x3e, 0x02, hi, lo],
                    &format!("100.64.{hi}.{lo}/16"),
                ),
                "100.64.255.254",
            )),
        ));
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
