//! Port-range fill through BPF_PROG_TEST_RUN: with a 256-port SNAT range, open new flows to one
//! server (same remote address and port, so every flow competes for the same ports) from
//! distinct internal sources, and report the share of new flows refused at 75% and 100% of the
//! range size. Cilium's bar: < 7% and < 16%. Flows that got a port must keep translating.
use router_common::stats::Counter;
use router_ctl::{config::NatConfig, datapath::Datapath};
use tests::{Bpffs, open_datapath, packet::tcp_frame, testrun_router};

const GW: [u8; 4] = [192, 0, 2, 10];
const SRV: [u8; 4] = [203, 0, 113, 9];
const DP_ID: u32 = 3;
const PORT_MIN: u16 = 20000;
const PORT_MAX: u16 = 20255;

fn src(i: usize) -> [u8; 4] {
    [10, 0, (i / 250) as u8, (i % 250 + 2) as u8]
}

/// A datapath in `bpffs` with the test router (gateway `GW`, 10.0.0.0/16 inside) on ifindex 1.
fn open_router(bpffs: &Bpffs, nat: &NatConfig) -> std::sync::Arc<Datapath> {
    open_datapath(bpffs, nat, &testrun_router(DP_ID, GW, &["10.0.0.0/16"]))
}

fn nat_port(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[34], f[35]])
}

#[test]
fn port_range_fill_failure_rates() {
    let bpffs = Bpffs::new();
    let nat = NatConfig {
        port_min: PORT_MIN,
        port_max: PORT_MAX,
        ..NatConfig::default()
    };
    let dp = open_router(&bpffs, &nat);

    let range = (PORT_MAX - PORT_MIN + 1) as usize;
    let mut ok: Vec<(usize, u16)> = Vec::new();
    let mut failed_at_75 = 0;
    let mut failed = 0;
    for i in 0..range {
        // Source port outside the range: every flow goes through the random probe.
        let (rc, out) = dp
            .test_run("snat_out", &tcp_frame(src(i), 40000, SRV, 80, 0x02))
            .expect("test run");
        if rc == 0 {
            let p = nat_port(&out);
            assert!(
                (PORT_MIN..=PORT_MAX).contains(&p),
                "port {p} outside the range"
            );
            ok.push((i, p));
        } else {
            assert_eq!(rc, 2, "a refused flow is dropped");
            failed += 1;
        }
        if i + 1 == range * 3 / 4 {
            failed_at_75 = failed;
        }
    }
    let rate75 = failed_at_75 as f64 / (range * 3 / 4) as f64 * 100.0;
    let rate100 = failed as f64 / range as f64 * 100.0;
    println!(
        "port-range fill ({range} ports): new-flow failures {rate75:.1}% at 75% fill, {rate100:.1}% at 100% fill"
    );
    let stats = dp.stats(DP_ID).expect("stats");
    assert_eq!(stats[Counter::DropNoPort.name()], failed as u64);
    assert!(rate75 < 7.0, "{rate75:.1}% failures at 75% fill");
    assert!(rate100 < 16.0, "{rate100:.1}% failures at 100% fill");

    // Ports are unique towards this server, and every existing flow keeps its translation.
    let mut ports: Vec<u16> = ok.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), ok.len(), "two flows share a NAT port");
    for (i, p) in &ok {
        let (rc, out) = dp
            .test_run("snat_out", &tcp_frame(src(*i), 40000, SRV, 80, 0x10))
            .expect("test run");
        assert_eq!(rc, 0, "existing flow {i} refused");
        assert_eq!(nat_port(&out), *p, "existing flow {i} changed port");
    }
    dp.purge().expect("purge");
}

/// Port preservation leaves contiguous runs of taken ports (consecutive ephemeral ports of one
/// host); flows displaced from such a run must find a free port outside it, not probe only
/// inside it.
#[test]
fn displaced_flows_escape_runs_of_preserved_ports() {
    let bpffs = Bpffs::new();
    let dp = open_router(&bpffs, &NatConfig::default());
    // One host takes 4000 consecutive ports towards the server (each keeps its own).
    for p in 30_000..34_000u16 {
        let (rc, out) = dp
            .test_run("snat_out", &tcp_frame(src(0), p, SRV, 80, 0x02))
            .expect("test run");
        assert_eq!((rc, nat_port(&out)), (0, p), "port kept");
    }
    // Another host with the same source ports: every flow is displaced, none refused.
    for p in 30_000..30_300u16 {
        let (rc, out) = dp
            .test_run("snat_out", &tcp_frame(src(1), p, SRV, 80, 0x02))
            .expect("test run");
        assert_eq!(rc, 0, "displaced flow from port {p} refused");
        let got = nat_port(&out);
        assert!(
            !(30_000..34_000).contains(&got),
            "port {got} of the run handed out twice"
        );
    }
    assert_eq!(
        dp.stats(DP_ID).expect("stats")[Counter::DropNoPort.name()],
        0
    );
    dp.purge().expect("purge");
}
