//! IPv6 through the gateway programs: routed, never translated (no NAT66). Every IPv6 frame
//! leaves `snat_out` and `snat_in` byte for byte as it came, with TC_ACT_OK, whatever the
//! router's NAT state (SNAT on, floating IPs configured), and moves `ipv6_packets` /
//! `ipv6_bytes` (not `passed`, not a session).

use std::net::Ipv6Addr;

use router_common::stats::Counter;
use router_ctl::model::spec::FloatingIpSpec;
use tests::{
    packet::{ICMPV6, TCP, ipv6_frame, ipv6_udp_frame, tcp},
    testrun::{Rig, hex},
};

const DP_ID: u32 = 11;

fn vm() -> Ipv6Addr {
    "fd00:1::f816:3eff:fe12:3456".parse().unwrap()
}

fn upstream() -> Ipv6Addr {
    "2001:db8::10".parse().unwrap()
}

/// The frames of one exchange: UDP out and back, a TCP SYN, an echo request and a router
/// solicitation-sized ICMPv6 message.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    // The IPv4 TCP builder's segment is family-neutral apart from its checksum, which
    // `ipv6_frame` recomputes over the IPv6 pseudo-header.
    let syn = tcp([0; 4], [0; 4], 40000, 80, 0x02, &[], b"hello");
    let echo = [128u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    vec![
        ("udp out", ipv6_udp_frame(vm(), 40000, upstream(), 53)),
        ("udp back", ipv6_udp_frame(upstream(), 53, vm(), 40000)),
        ("tcp syn", ipv6_frame(vm(), upstream(), TCP, &syn)),
        ("echo", ipv6_frame(vm(), upstream(), ICMPV6, &echo)),
    ]
}

#[test]
fn ipv6_passes_both_gateway_programs_unchanged_and_counted() {
    let fx = Rig::snat(DP_ID, "10.0.0.0/24");
    // Floating IPs on too: the IPv4-only translation paths are skipped for IPv6 as well.
    fx.dp
        .configure_floating(
            DP_ID,
            &[FloatingIpSpec {
                floating_ip: [192, 0, 2, 50].into(),
                fixed_ip: Some([10, 0, 0, 5].into()),
            }],
            &[],
        )
        .expect("floating IPs");
    let passed = fx.stat(Counter::Passed.name());
    let mut packets = 0;
    let mut bytes = 0;
    for (what, f) in frames() {
        for prog in ["snat_out", "snat_in"] {
            let (rc, got) = fx.run(prog, &f);
            assert_eq!(rc, tests::testrun::OK, "{what}: verdict of {prog}");
            assert_eq!(hex(&got), hex(&f), "{what}: {prog} changed the frame");
            packets += 1;
            bytes += f.len() as u64;
        }
    }
    assert_eq!(fx.stat(Counter::Ipv6Packets.name()), packets);
    assert_eq!(fx.stat(Counter::Ipv6Bytes.name()), bytes);
    assert_eq!(
        fx.stat(Counter::Passed.name()),
        passed,
        "IPv6 has its own counter"
    );
    assert!(fx.sessions().is_empty(), "no session for IPv6");
    assert_eq!(fx.stat(Counter::OutPackets.name()), 0);
}
