//! The daemon's reads of a large session table (listing, GC, flush) go through batched map
//! lookups: sessions created by real `snat_out` runs, more than one batch of them, must all be
//! listed, expired by the GC once idle past their timeout, and flushed.
use std::{sync::Arc, time::Duration};

use router_ctl::{config::NatConfig, datapath::Datapath};
use tests::{Bpffs, open_datapath, packet::udp_frame, testrun_router};

const GW: [u8; 4] = [192, 0, 2, 10];
const VM: [u8; 4] = [10, 0, 0, 5];
const SRV: [u8; 4] = [203, 0, 113, 9];
const DP_ID: u32 = 7;
/// Sessions per step: one entry each, more than the 4096 entries of one batch.
const FLOWS: u16 = 6000;

fn datapath(dir: &Bpffs, nat: &NatConfig) -> Arc<Datapath> {
    open_datapath(dir, nat, &testrun_router(DP_ID, GW, &["10.0.0.0/24"]))
}

/// One new UDP flow per source port from `first`, each through `snat_out`.
fn open_flows(dp: &Datapath, first: u16) {
    for i in 0..FLOWS {
        let (rc, out) = dp
            .test_run("snat_out", &udp_frame(VM, first + i, SRV, 53))
            .unwrap_or_else(|e| panic!("test run: {e:#}"));
        assert_eq!(rc, 0, "snat_out verdict");
        assert_eq!(&out[26..30], &GW, "flow {i} left untranslated");
    }
}

#[test]
fn large_tables_are_listed_expired_and_flushed_whole() {
    let dir = Bpffs::new();
    let nat = NatConfig {
        udp_unreplied: 1,
        ..NatConfig::default()
    };
    let dp = datapath(&dir, &nat);

    open_flows(&dp, 10_000);
    let listed = dp.sessions(DP_ID).expect("sessions");
    assert_eq!(listed.len(), usize::from(FLOWS), "every session listed");
    assert!(listed.iter().all(|s| s.protocol == "udp"));

    // Unreplied UDP expires after 1 s idle; the GC removes every one of them.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        dp.gc().expect("gc").expired,
        usize::from(FLOWS),
        "all expired"
    );
    assert!(dp.sessions(DP_ID).expect("sessions").is_empty());

    open_flows(&dp, 20_000);
    assert_eq!(dp.flush_sessions(DP_ID).expect("flush"), usize::from(FLOWS));
    assert!(dp.sessions(DP_ID).expect("sessions").is_empty());
}
