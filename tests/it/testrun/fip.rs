//! BPF_PROG_TEST_RUN of the floating-IP, port-forwarding, hairpin and metadata paths: packet
//! in → exact packet out. Expected frames are built from scratch by `tests::packet` (every
//! checksum computed in full), so a byte-for-byte match proves the datapath's incremental
//! checksum updates.
//!
//! The kernel runs skb test programs with loopback (ifindex 1) as the device, so the router is
//! configured on ifindex 1 both as gateway tap (`snat_out`/`snat_in`) and as internal tap
//! (`internal_in`) of a private datapath.
use std::net::Ipv4Addr;

use router_ctl::model::spec::{FloatingIpSpec, PortForwardingSpec};
use tests::packet::{
    Pkt::{Echo, Frame, Tcp, Udp},
    SYN_ACK,
};
use tests::{
    packet::{ACK, ICMP, Ipv4, SYN, TCP, UDP, frame, icmp, tcp_frame, udp, udp_frame},
    testrun::{GW, IN, INTERNAL, OUT, Rig, SHOT, SRV},
};

const FIP1: [u8; 4] = [192, 0, 2, 51];
const FIP2: [u8; 4] = [192, 0, 2, 52];
const VM1: [u8; 4] = [10, 0, 0, 5];
const VM2: [u8; 4] = [10, 0, 0, 6];
const VM3: [u8; 4] = [10, 0, 0, 7];
const ROUTER_QR: [u8; 4] = [10, 0, 0, 1];
const META: [u8; 4] = [169, 254, 169, 254];
const DP_ID: u32 = 9;

/// Router `DP_ID` SNATing 10.0.0.0/24 to `GW`, its internal hook on loopback too.
fn fixture() -> Rig {
    let rig = Rig::snat(DP_ID, "10.0.0.0/24");
    rig.dp
        .configure_internal(DP_ID, &[1], Some(GW.into()))
        .expect("configure internal");
    rig
}

/// Configures the router's floating IPs (`(floating, fixed)`) and port forwardings.
fn floating(rig: &Rig, fips: &[([u8; 4], [u8; 4])], pfs: &[PortForwardingSpec]) {
    let fips: Vec<FloatingIpSpec> = fips
        .iter()
        .map(|(f, x)| FloatingIpSpec {
            floating_ip: Ipv4Addr::from(*f),
            fixed_ip: Some(Ipv4Addr::from(*x)),
        })
        .collect();
    rig.dp
        .configure_floating(DP_ID, &fips, pfs)
        .expect("configure floating");
}

/// The router's sessions as sorted `(kind, protocol, translated)`.
fn kinds(rig: &Rig) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = rig
        .sessions()
        .into_iter()
        .map(|s| (s.kind, s.protocol, s.translated.to_string()))
        .collect();
    v.sort();
    v
}

/// Asserts the router has a session of each `(kind, protocol, translated)`.
#[track_caller]
fn assert_sessions(rig: &Rig, want: &[(&str, &str, &str)]) {
    let kinds = kinds(rig);
    for (kind, proto, translated) in want {
        assert!(
            kinds
                .iter()
                .any(|k| k.0 == *kind && k.1 == *proto && k.2 == *translated),
            "no {kind} {proto} session on {translated}: {kinds:?}"
        );
    }
}

/// ICMP port unreachable `from` → `to` quoting the head (IP header and 8 bytes) of the UDP
/// datagram `q.0:q.1` → `q.2:q.3`.
fn unreachable(from: [u8; 4], to: [u8; 4], q: ([u8; 4], u16, [u8; 4], u16)) -> Vec<u8> {
    let (src, sport, dst, dport) = q;
    let mut quoted = Ipv4::new(src, dst, UDP).packet(&udp(src, dst, sport, dport, b"query", false));
    quoted.truncate(28);
    frame(&Ipv4::new(from, to, ICMP).packet(&icmp(3, 3, [0; 4], &quoted)))
}

fn pf(proto: u8, fip: [u8; 4], ext: u16, int: [u8; 4], port: u16) -> PortForwardingSpec {
    PortForwardingSpec {
        protocol: proto,
        floating_ip: fip.into(),
        external_port: ext,
        internal_ip: int.into(),
        internal_port: port,
    }
}

#[test]
fn floating_ip_is_1to1_for_every_protocol_and_beats_snat() {
    let fx = fixture();
    floating(&fx, &[(FIP1, VM1)], &[]);

    // TCP both ways, ports kept.
    #[rustfmt::skip]
    let steps = [
        (OUT, Tcp(VM1, 40000, SRV, 80, SYN), Tcp(FIP1, 40000, SRV, 80, SYN), "TCP out"),
        (IN, Tcp(SRV, 80, FIP1, 40000, SYN_ACK), Tcp(SRV, 80, VM1, 40000, SYN_ACK), "TCP in"),
        // Inbound-initiated UDP and its reply.
        (IN, Udp(SRV, 5000, FIP1, 53), Udp(SRV, 5000, VM1, 53), "UDP in"),
        (OUT, Udp(VM1, 53, SRV, 5000), Udp(FIP1, 53, SRV, 5000), "UDP reply out"),
    ];
    fx.expect_all(&steps);
    // A zero UDP checksum stays "none".
    let mk = |s: [u8; 4], sp, d: [u8; 4], dp| {
        frame(&Ipv4::new(s, d, UDP).packet(&udp(s, d, sp, dp, b"nocsum", true)))
    };
    #[rustfmt::skip]
    let steps = [
        (OUT, Frame(mk(VM1, 4000, SRV, 53)), Frame(mk(FIP1, 4000, SRV, 53)), "zero-checksum UDP"),
        // Echo both ways, either side starting.
        (OUT, Echo(VM1, SRV, 8, 0x4242), Echo(FIP1, SRV, 8, 0x4242), "echo request out"),
        (IN, Echo(SRV, FIP1, 0, 0x4242), Echo(SRV, VM1, 0, 0x4242), "echo reply in"),
        (IN, Echo(SRV, FIP1, 8, 7), Echo(SRV, VM1, 8, 7), "echo request in"),
    ];
    fx.expect_all(&steps);
    // A protocol the SNAT cannot translate (GRE) and a later fragment without its first:
    // both dropped by the SNAT, both translated by the floating IP.
    let gre = |s, d| frame(&Ipv4::new(s, d, 47).packet(&[0, 0, 0x08, 0, 1, 2, 3, 4]));
    #[rustfmt::skip]
    let steps = [
        (OUT, Frame(gre(VM1, SRV)), Frame(gre(FIP1, SRV)), "GRE out"),
        (IN, Frame(gre(SRV, FIP1)), Frame(gre(SRV, VM1)), "GRE in"),
    ];
    fx.expect_all(&steps);
    let later = |s, d| {
        let mut ip = Ipv4::new(s, d, UDP);
        ip.frag = 0x0010; // offset 128 bytes, last fragment
        frame(&ip.packet(&[0xab; 24]))
    };
    #[rustfmt::skip]
    let steps = [
        (OUT, Frame(later(VM1, SRV)), Frame(later(FIP1, SRV)), "later fragment out"),
        (IN, Frame(later(SRV, FIP1)), Frame(later(SRV, VM1)), "later fragment in"),
    ];
    fx.expect_all(&steps);
    let (rc, _) = fx.run("snat_out", &gre(VM2, SRV));
    assert_eq!(rc, SHOT, "without a floating IP GRE may not leave");

    // VM2 has no floating IP: gateway SNAT as before.
    fx.expect(
        "snat_out",
        &tcp_frame(VM2, 40001, SRV, 80, SYN),
        &tcp_frame(GW, 40001, SRV, 80, SYN),
        "SNAT for the others",
    );
    assert_sessions(
        &fx,
        &[
            ("floating_ip", "tcp", "192.0.2.51:40000"),
            ("floating_ip", "udp", "192.0.2.51:53"),
            ("floating_ip", "icmp", "192.0.2.51:16962"),
            ("snat", "tcp", "192.0.2.10:40001"),
        ],
    );
    assert!(fx.stat("fip_packets") >= 12);

    // Disassociated: sessions gone, VM1 is SNATed like anyone, its old FIP is not translated.
    floating(&fx, &[], &[]);
    assert!(
        !kinds(&fx).iter().any(|k| k.0 == "floating_ip"),
        "{:?}",
        kinds(&fx)
    );
    fx.expect(
        "snat_out",
        &tcp_frame(VM1, 40000, SRV, 80, SYN),
        &tcp_frame(GW, 40000, SRV, 80, SYN),
        "SNAT once disassociated",
    );
    let input = tcp_frame(SRV, 80, FIP1, 40000, ACK);
    fx.expect("snat_in", &input, &input, "old FIP untouched");
}

#[test]
fn port_forwarding_each_way() {
    let fx = fixture();
    floating(
        &fx,
        &[],
        &[pf(TCP, FIP1, 2222, VM1, 22), pf(UDP, FIP1, 5353, VM2, 53)],
    );
    #[rustfmt::skip]
    let steps = [
        (IN, Tcp(SRV, 50000, FIP1, 2222, SYN), Tcp(SRV, 50000, VM1, 22, SYN), "TCP forwarded in"),
        (OUT, Tcp(VM1, 22, SRV, 50000, SYN_ACK), Tcp(FIP1, 2222, SRV, 50000, SYN_ACK),
            "TCP reply out"),
        (IN, Udp(SRV, 50001, FIP1, 5353), Udp(SRV, 50001, VM2, 53), "UDP forwarded in"),
        (OUT, Udp(VM2, 53, SRV, 50001), Udp(FIP1, 5353, SRV, 50001), "UDP reply out"),
    ];
    fx.expect_all(&steps);
    // Another port or protocol of the FIP is not forwarded.
    let other = tcp_frame(SRV, 50000, FIP1, 2223, SYN);
    fx.expect("snat_in", &other, &other, "unforwarded port untouched");
    let other = udp_frame(SRV, 50000, FIP1, 2222);
    #[rustfmt::skip]
    let steps = [
        (IN, Frame(other.clone()), Frame(other.clone()), "unforwarded protocol untouched"),
        // VM1's other traffic is SNATed.
        (OUT, Tcp(VM1, 40000, SRV, 80, SYN), Tcp(GW, 40000, SRV, 80, SYN), "VM1 otherwise SNATed"),
    ];
    fx.expect_all(&steps);
    assert_sessions(
        &fx,
        &[
            ("port_forwarding", "tcp", "192.0.2.51:2222"),
            ("port_forwarding", "udp", "192.0.2.51:5353"),
        ],
    );
    assert_eq!(fx.stat("pf_packets"), 4);
    // Removing one forwarding flushes its sessions only.
    floating(&fx, &[], &[pf(UDP, FIP1, 5353, VM2, 53)]);
    let kinds = kinds(&fx);
    assert!(
        !kinds
            .iter()
            .any(|k| k.1 == "tcp" && k.0 == "port_forwarding")
    );
    assert!(
        kinds
            .iter()
            .any(|k| k.1 == "udp" && k.0 == "port_forwarding")
    );
}

#[test]
fn hairpin_through_the_internal_hook() {
    let fx = fixture();
    floating(
        &fx,
        &[(FIP1, VM1), (FIP2, VM2)],
        &[pf(TCP, [192, 0, 2, 53], 2222, VM1, 22)],
    );
    // VM2 → FIP1: destination to VM1, source to VM2's own FIP; and the reply.
    #[rustfmt::skip]
    let steps = [
        (INTERNAL, Tcp(VM2, 40000, FIP1, 8080, SYN), Tcp(FIP2, 40000, VM1, 8080, SYN),
            "FIP to FIP"),
        (INTERNAL, Tcp(VM1, 8080, FIP2, 40000, SYN_ACK), Tcp(FIP1, 8080, VM2, 40000, SYN_ACK),
            "FIP to FIP reply"),
        // VM3 (no FIP) → FIP1: source to the gateway IP (port kept when free); the reply back.
        (INTERNAL, Tcp(VM3, 40001, FIP1, 8080, SYN), Tcp(GW, 40001, VM1, 8080, SYN),
            "to FIP, SNAT to the gateway"),
        (INTERNAL, Tcp(VM1, 8080, GW, 40001, SYN_ACK), Tcp(FIP1, 8080, VM3, 40001, SYN_ACK),
            "reply to the gateway-SNATed hairpin"),
        (INTERNAL, Echo(VM3, FIP2, 8, 4099), Echo(GW, VM2, 8, 4099), "hairpin ping"),
        (INTERNAL, Echo(VM2, GW, 0, 4099), Echo(FIP2, VM3, 0, 4099), "hairpin ping reply"),
        // A forwarded port reached from inside.
        (INTERNAL, Tcp(VM2, 40002, [192, 0, 2, 53], 2222, SYN), Tcp(FIP2, 40002, VM1, 22, SYN),
            "hairpin to a forwarded port"),
    ];
    fx.expect_all(&steps);
    // East-west and outbound traffic is not touched here.
    for f in [
        tcp_frame(VM1, 1234, VM2, 80, SYN),
        tcp_frame(VM1, 1234, SRV, 80, SYN),
        udp_frame(VM1, 1234, SRV, 53),
    ] {
        fx.expect("internal_in", &f, &f, "untouched");
    }
}

#[test]
fn metadata_traffic_is_left_to_the_proxy_and_unreachable_from_outside() {
    let fx = fixture();
    // A router with a floating IP, so the hairpin hook is attached and its lookups run.
    floating(&fx, &[(FIP1, VM1)], &[]);
    // The proxy listens on 169.254.169.254:80 itself: the hook rewrites nothing, both ways
    // (requests reach it by plain routing; replies leave the router untouched).
    for f in [
        tcp_frame(VM1, 40000, META, 80, SYN),
        tcp_frame(VM2, 40000, META, 80, SYN),
        tcp_frame(VM1, 40001, META, 9697, SYN),
        tcp_frame(VM1, 40001, ROUTER_QR, 80, SYN),
        udp_frame(VM1, 40000, META, 80),
        tcp_frame(META, 80, VM1, 40000, SYN | ACK),
    ] {
        fx.expect("internal_in", &f, &f, "metadata untouched");
    }
    assert!(
        !router_common::stats::Counter::NAMES.contains(&"metadata_redirects"),
        "the datapath no longer counts metadata redirects"
    );
    // From the external network the metadata address is unreachable, on any port.
    for port in [80, 9697] {
        let outside = tcp_frame(SRV, 40000, META, port, SYN);
        let (rc, got) = fx.run("snat_in", &outside);
        assert_eq!(
            rc, SHOT,
            "metadata proxy reached from outside on port {port}"
        );
        assert_eq!(got, outside);
    }
}

#[test]
fn icmp_errors_about_floating_ip_flows_quote_the_right_address() {
    let fx = fixture();
    floating(&fx, &[(FIP1, VM1)], &[]);
    // VM1 → SRV over UDP through its FIP (records the flow).
    fx.expect(
        "snat_out",
        &udp_frame(VM1, 4000, SRV, 53),
        &udp_frame(FIP1, 4000, SRV, 53),
        "UDP out",
    );
    // SRV answers port unreachable about FIP1:4000 → SRV:53: VM1 must see its own address
    // quoted.
    let err = |dst: [u8; 4]| unreachable(SRV, dst, (dst, 4000, SRV, 53));
    #[rustfmt::skip]
    let steps = [
        (IN, Frame(err(FIP1)), Frame(err(VM1)), "error in"),
        // VM1 answers an inbound flow with an error: the remote must see the FIP quoted.
        (IN, Udp(SRV, 5000, FIP1, 9), Udp(SRV, 5000, VM1, 9), "UDP in"),
    ];
    fx.expect_all(&steps);
    let err_out = |src: [u8; 4]| unreachable(src, SRV, (SRV, 5000, src, 9));
    fx.expect("snat_out", &err_out(VM1), &err_out(FIP1), "error out");
    assert_eq!(fx.stat("icmp_errors"), 2);
}

#[test]
fn icmp_errors_about_port_forwarding_flows_quote_the_internal_port() {
    let fx = fixture();
    floating(&fx, &[], &[pf(UDP, FIP1, 5353, VM2, 53)]);
    // The remote asks, VM2 answers through the forwarding.
    #[rustfmt::skip]
    let steps = [
        (IN, Udp(SRV, 6000, FIP1, 5353), Udp(SRV, 6000, VM2, 53), "UDP in"),
        (OUT, Udp(VM2, 53, SRV, 6000), Udp(FIP1, 5353, SRV, 6000), "UDP reply out"),
    ];
    fx.expect_all(&steps);
    // The remote's port unreachable about FIP1:5353 → SRV:6000 reaches VM2 quoting VM2:53.
    let err = |dst: [u8; 4], quoted: ([u8; 4], u16)| {
        unreachable(SRV, dst, (quoted.0, quoted.1, SRV, 6000))
    };
    fx.expect(
        "snat_in",
        &err(FIP1, (FIP1, 5353)),
        &err(VM2, (VM2, 53)),
        "error in",
    );
    // VM2 (no floating IP) answers a forwarded datagram with port unreachable: the remote must
    // see the forwarding's address and external port quoted, and the error come from them.
    let err_out = |src: [u8; 4], dport: u16| unreachable(src, SRV, (SRV, 6000, src, dport));
    fx.expect(
        "snat_out",
        &err_out(VM2, 53),
        &err_out(FIP1, 5353),
        "error out",
    );
    assert_eq!(fx.stat("icmp_errors"), 2);
}
