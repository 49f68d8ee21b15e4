//! Smoke test of the whole chain: the real eBPF object loads, a TC program attaches to a veth in
//! a namespace this test creates (as the datapath does: a cls_bpf filter under clsact, see
//! `router_ctl::datapath::filter`), real packets cross it, and the program's counter map moves.
use aya::{
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType},
};
use router_common::{maps, programs, stats::GlobalCounter};
use router_ctl::datapath::filter;
use tests::{Netns, load_object, tc_filters, veth};

#[test]
fn tc_program_counts_real_packets() {
    let a = Netns::new("smka");
    let b = Netns::new("smkb");
    veth(&a, "v0", &b, "v1");
    a.ip(&["addr", "add", "10.99.0.1/24", "dev", "v0"]);
    b.ip(&["addr", "add", "10.99.0.2/24", "dev", "v1"]);

    let mut ebpf = load_object();
    b.enter(|| {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(programs::SNAT_OUT)
            .expect("snat_out in object")
            .try_into()
            .expect("snat_out is a classifier");
        prog.load().expect("verifier accepts snat_out");
        filter::attach(prog, "v1", TcAttachType::Ingress)
            .map_err(|e| format!("{e:#}"))
            .expect_err("no clsact qdisc yet");
        filter::ensure_clsact("v1").expect("clsact");
        assert!(
            filter::attach(prog, "v1", TcAttachType::Ingress).expect("attach"),
            "filter created"
        );
    });
    let f = tc_filters(&b, "v1", "ingress");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].prog, programs::SNAT_OUT);

    let out = a.run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.99.0.2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 received"));

    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(maps::GLOBAL_STATS).expect("GLOBAL_STATS map"))
            .expect("per-cpu array");
    let seen: u64 = stats
        .get(&GlobalCounter::Packets.key(), 0)
        .expect("read counter")
        .iter()
        .sum();
    // Three echo requests at least (ARP too), all through the ingress hook of v1.
    assert!(seen >= 3, "counter saw {seen} packets");
}
