//! BPF_PROG_TEST_RUN of the real NAT programs: packet in → exact bytes out. Every expected frame
//! is built from scratch by `tests::packet` (checksums computed in full, not incrementally), so
//! a byte-for-byte match proves every checksum the datapath updated.
//!
//! The kernel runs skb test programs with loopback (ifindex 1) as the device, so each test
//! configures its router on ifindex 1 of a private datapath (own bpffs, own maps).
use router_common::stats::Counter;
use router_ctl::{config::NatConfig, datapath::RouterNat};
use tests::packet::{
    Pkt::{Frame, Tcp, Udp},
    SYN_ACK,
};
use tests::{
    packet::{
        self, ACK, ICMP, Ipv4, RST, SYN, TCP, UDP, echo, echo_frame, frame, icmp, tcp, tcp_frame,
        udp, udp_frame,
    },
    testrun::{GW, IN, OUT, Rig, SHOT, SRV, assert_frame, reply_key},
    testrun_router,
};

const VM1: [u8; 4] = [10, 0, 0, 5];
const VM2: [u8; 4] = [10, 0, 0, 6];
const VM3: [u8; 4] = [10, 0, 1, 7];
const HOP: [u8; 4] = [198, 51, 100, 1];
const DP_ID: u32 = 7;

/// Router `DP_ID` SNATing two subnets to `GW`, with `enable_snat` and NAT settings `nat`.
fn fixture(enable_snat: bool, nat: NatConfig) -> Rig {
    let router = RouterNat {
        enable_snat,
        ..router(GW, &["10.0.0.0/24", "10.0.1.0/24"])
    };
    Rig::open(&nat, &router)
}

/// The usual fixture: SNAT on, default NAT settings.
fn snat() -> Rig {
    fixture(true, NatConfig::default())
}

fn sport(f: &[u8]) -> u16 {
    let hlen = ((f[14] & 0x0f) as usize) * 4;
    u16::from_be_bytes([f[14 + hlen], f[15 + hlen]])
}

/// VM1 and then VM2 send from port 40000 to SRV:53: VM2's flow must be remapped; returns its
/// translated port.
fn remapped_second_flow(fx: &Rig) -> u16 {
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    remapped(fx, VM2)
}

/// `vm`'s UDP 40000 → SRV:53 goes out and finds port 40000 taken towards SRV:53: returns the
/// port it was translated to instead.
fn remapped(fx: &Rig, vm: [u8; 4]) -> u16 {
    let moved = fx.out(&udp_frame(vm, 40000, SRV, 53));
    let p = sport(&moved);
    assert_ne!(p, 40000);
    assert_frame(&moved, &udp_frame(GW, p, SRV, 53), "remapped");
    p
}

/// SRV's UDP answer from port 53 to `dst:dport`, as the IP packet an ICMP error quotes.
fn answer(dst: [u8; 4], dport: u16) -> Vec<u8> {
    Ipv4::new(SRV, dst, UDP).packet(&udp(SRV, dst, 53, dport, b"answer", false))
}

#[test]
fn tcp_each_way_keeps_free_port() {
    let fx = snat();
    let got = fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    assert_frame(&got, &tcp_frame(GW, 40000, SRV, 80, SYN), "SYN translated");
    let got = fx.inn(&tcp_frame(SRV, 80, GW, 40000, SYN | ACK));
    assert_frame(
        &got,
        &tcp_frame(SRV, 80, VM1, 40000, SYN | ACK),
        "SYN-ACK reversed",
    );
    let got = fx.out(&tcp_frame(VM1, 40000, SRV, 80, ACK));
    assert_frame(&got, &tcp_frame(GW, 40000, SRV, 80, ACK), "ACK translated");
    let s = fx.sessions();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].protocol, "tcp");
    assert_eq!(s[0].state, "ESTABLISHED");
    assert_eq!(s[0].internal.to_string(), "10.0.0.5:40000");
    assert_eq!(s[0].translated.to_string(), "192.0.2.10:40000");
    assert_eq!(s[0].remote.to_string(), "203.0.113.9:80");
    assert_eq!(fx.stat("sessions_created"), 1);
    assert_eq!(fx.stat("out_packets"), 2);
    assert_eq!(fx.stat("in_packets"), 1);
}

#[test]
fn udp_each_way() {
    let fx = snat();
    let got = fx.out(&udp_frame(VM1, 40000, SRV, 53));
    assert_frame(&got, &udp_frame(GW, 40000, SRV, 53), "UDP out");
    let got = fx.inn(&udp_frame(SRV, 53, GW, 40000));
    assert_frame(&got, &udp_frame(SRV, 53, VM1, 40000), "UDP in");
    let s = fx.sessions();
    assert_eq!(s[0].state, "REPLIED");
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let fx = snat();
    let mk = |s: [u8; 4], sp, d: [u8; 4], dp| {
        frame(&Ipv4::new(s, d, UDP).packet(&udp(s, d, sp, dp, b"nocsum", true)))
    };
    let got = fx.out(&mk(VM1, 40003, SRV, 53));
    assert_frame(&got, &mk(GW, 40003, SRV, 53), "zero-checksum UDP out");
    let got = fx.inn(&mk(SRV, 53, GW, 40003));
    assert_frame(&got, &mk(SRV, 53, VM1, 40003), "zero-checksum UDP in");
}

#[test]
fn icmp_echo_each_way() {
    let fx = snat();
    let got = fx.out(&echo_frame(VM1, SRV, 8, 0x1234));
    assert_frame(&got, &echo_frame(GW, SRV, 8, 0x1234), "echo request");
    let got = fx.inn(&echo_frame(SRV, GW, 0, 0x1234));
    assert_frame(&got, &echo_frame(SRV, VM1, 0, 0x1234), "echo reply");
    let s = fx.sessions();
    assert_eq!(
        (s[0].protocol.as_str(), s[0].state.as_str()),
        ("icmp", "REPLIED")
    );
}

#[test]
fn colliding_flows_are_remapped_into_the_range() {
    let fx = snat();
    let a = fx.out(&tcp_frame(VM1, 41000, SRV, 80, SYN));
    assert_eq!(sport(&a), 41000);
    // Same source port, same destination, other host: must be remapped.
    let b = fx.out(&tcp_frame(VM2, 41000, SRV, 80, SYN));
    let p = sport(&b);
    assert_ne!(p, 41000);
    assert!((1024..=65535).contains(&p));
    assert_frame(&b, &tcp_frame(GW, p, SRV, 80, SYN), "remapped SYN");
    // Endpoint-dependent: another destination port lets the original port be kept.
    let c = fx.out(&tcp_frame(VM2, 41000, SRV, 81, SYN));
    assert_eq!(sport(&c), 41000);
    // Replies go to the right hosts.
    let got = fx.inn(&tcp_frame(SRV, 80, GW, 41000, SYN | ACK));
    assert_frame(
        &got,
        &tcp_frame(SRV, 80, VM1, 41000, SYN | ACK),
        "reply to first",
    );
    let got = fx.inn(&tcp_frame(SRV, 80, GW, p, SYN | ACK));
    assert_frame(
        &got,
        &tcp_frame(SRV, 80, VM2, 41000, SYN | ACK),
        "reply to remapped",
    );
    // A source port outside the range is always remapped into it.
    let d = fx.out(&udp_frame(VM3, 80, SRV, 53));
    assert!((1024..=65535).contains(&sport(&d)), "port {}", sport(&d));
    assert_frame(&d, &udp_frame(GW, sport(&d), SRV, 53), "low port remapped");
    // An ICMP echo id collision is remapped too.
    let e1 = fx.out(&echo_frame(VM1, SRV, 8, 5000));
    let e2 = fx.out(&echo_frame(VM2, SRV, 8, 5000));
    let id2 = u16::from_be_bytes([e2[38], e2[39]]);
    assert_eq!(u16::from_be_bytes([e1[38], e1[39]]), 5000);
    assert_ne!(id2, 5000);
    assert_frame(&e2, &echo_frame(GW, SRV, 8, id2), "echo id remapped");
    let got = fx.inn(&echo_frame(SRV, GW, 0, id2));
    assert_frame(
        &got,
        &echo_frame(SRV, VM2, 0, 5000),
        "echo reply to remapped id",
    );
    assert_eq!(fx.sessions().len(), 6);
}

#[test]
fn icmp_errors_inbound_rewrite_the_quoted_flow() {
    let fx = snat();
    // Two flows with the same source port so the second one is remapped.
    let p = remapped_second_flow(&fx);
    let quoted = |src: [u8; 4], sp: u16| {
        let mut ip = Ipv4::new(src, SRV, UDP);
        ip.ttl = 1;
        ip.packet(&udp(src, SRV, sp, 53, b"query", false))
    };
    // Time exceeded from a hop beyond the router, about VM2's translated datagram.
    let err = |dst: [u8; 4], q: Vec<u8>| {
        frame(&Ipv4::new(HOP, dst, ICMP).packet(&icmp(11, 0, [0; 4], &q)))
    };
    let got = fx.inn(&err(GW, quoted(GW, p)));
    assert_frame(&got, &err(VM2, quoted(VM2, 40000)), "time exceeded to VM2");
    // The quoted datagram is complete here: its own IP and UDP checksums verify.
    packet::assert_checksums(&frame(&got[14 + 20 + 8..]));

    // Fragmentation needed (code 4, MTU 1400) about a TCP SYN, quote with the full TCP header.
    fx.out(&tcp_frame(VM1, 42000, SRV, 443, SYN));
    let tq = |src: [u8; 4]| {
        Ipv4::new(src, SRV, TCP).packet(&tcp(src, SRV, 42000, 443, SYN, &[], b"hello"))
    };
    let ferr = |dst: [u8; 4], q: Vec<u8>| {
        frame(&Ipv4::new(HOP, dst, ICMP).packet(&icmp(3, 4, [0, 0, 0x05, 0x78], &q)))
    };
    let got = fx.inn(&ferr(GW, tq(GW)));
    assert_frame(&got, &ferr(VM1, tq(VM1)), "frag-needed about TCP");

    // Destination unreachable about an ICMP echo request, and a quote cut after 8 L4 bytes.
    fx.out(&echo_frame(VM1, SRV, 8, 0x0777));
    let eq = |src: [u8; 4]| Ipv4::new(src, SRV, ICMP).packet(&echo(8, 0x0777, 1, b"pingdata"));
    let got = fx.inn(&ferr(GW, eq(GW)));
    assert_frame(&got, &ferr(VM1, eq(VM1)), "unreachable about echo");
    let cut = |src: [u8; 4]| tq(src)[..28].to_vec();
    let got = fx.inn(&ferr(GW, cut(GW)));
    // The cut quote has no TCP checksum to update: only address, port and IP checksum change.
    assert_frame(&got, &ferr(VM1, cut(VM1)), "truncated quote");

    // Parameter problem quoting a packet of a flow we do not know: passed untouched.
    let unknown = err(GW, quoted(GW, 999));
    assert_eq!(fx.inn(&unknown), unknown);
    assert_eq!(fx.stat("icmp_errors"), 4);
}

#[test]
fn icmp_errors_outbound_rewrite_the_quoted_flow() {
    let fx = snat();
    // VM2's flow gets a remapped port; VM2 then rejects a reply with port unreachable.
    let p = remapped_second_flow(&fx);
    let unreach = |src: [u8; 4], quoted: Vec<u8>| {
        frame(&Ipv4::new(src, SRV, ICMP).packet(&icmp(3, 3, [0; 4], &quoted)))
    };
    let got = fx.out(&unreach(VM2, answer(VM2, 40000)));
    assert_frame(
        &got,
        &unreach(GW, answer(GW, p)),
        "port unreachable from VM2",
    );
    // An internal host's ICMP error about no known flow must not leave with its own address.
    fx.assert_dropped(
        "snat_out",
        &unreach(VM1, answer(VM1, 4444)),
        Counter::DropInvalid,
    );
}

/// Splits a UDP datagram into two IPv4 fragments (id `id`) at `at` (a multiple of 8).
fn fragments(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    datagram: &[u8],
    at: usize,
) -> (Vec<u8>, Vec<u8>) {
    let mut a = Ipv4::new(src, dst, UDP);
    a.id = id;
    a.frag = 0x2000;
    let mut b = a.clone();
    b.frag = (at / 8) as u16;
    (
        frame(&a.packet(&datagram[..at])),
        frame(&b.packet(&datagram[at..])),
    )
}

#[test]
fn fragments_follow_their_first_fragment() {
    let fx = snat();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let d = |s: [u8; 4], sp, dd: [u8; 4], dp| udp(s, dd, sp, dp, &payload, false);
    // Out: first fragment creates the session and records the datagram.
    let (f1, f2) = fragments(VM1, SRV, 0x4242, &d(VM1, 40001, SRV, 9000), 512);
    let (w1, w2) = fragments(GW, SRV, 0x4242, &d(GW, 40001, SRV, 9000), 512);
    // In: the reply datagram, fragmented.
    let (r1, r2) = fragments(SRV, GW, 0x5151, &d(SRV, 9000, GW, 40001), 504);
    let (e1, e2) = fragments(SRV, VM1, 0x5151, &d(SRV, 9000, VM1, 40001), 504);
    #[rustfmt::skip]
    let steps = [
        (OUT, Frame(f1), Frame(w1), "first fragment out"),
        (OUT, Frame(f2), Frame(w2), "later fragment out"),
        (IN, Frame(r1), Frame(e1), "first fragment in"),
        (IN, Frame(r2), Frame(e2), "later fragment in"),
    ];
    fx.expect_all(&steps);
    // A later fragment whose first fragment was never seen cannot leave with a private source.
    let (_, orphan) = fragments(VM1, SRV, 0x4343, &d(VM1, 40001, SRV, 9000), 512);
    fx.assert_dropped("snat_out", &orphan, Counter::DropFragment);
    // Inbound, it is not ours: passed untouched.
    let (_, orphan_in) = fragments(SRV, GW, 0x6161, &d(SRV, 9000, GW, 40001), 504);
    assert_eq!(fx.inn(&orphan_in), orphan_in);
}

#[test]
fn ip_options_use_the_real_header_length() {
    let fx = snat();
    let mk = |s: [u8; 4], sp, d: [u8; 4], dp, flags| {
        let mut ip = Ipv4::new(s, d, TCP);
        // Record-route style option (type 7, len 7, ptr 4) + EOL padding: IHL = 7.
        ip.options = vec![7, 7, 4, 0, 0, 0, 0, 0];
        // TCP options too (MSS + NOPs + window scale): untouched.
        frame(&ip.packet(&tcp(
            s,
            d,
            sp,
            dp,
            flags,
            &[2, 4, 5, 0xb4, 1, 3, 3, 7],
            b"opt",
        )))
    };
    #[rustfmt::skip]
    let steps = [
        (OUT, Frame(mk(VM1, 40002, SRV, 443, SYN)), Frame(mk(GW, 40002, SRV, 443, SYN)),
            "IHL 7 out"),
        (IN, Frame(mk(SRV, 443, GW, 40002, SYN_ACK)), Frame(mk(SRV, 443, VM1, 40002, SYN_ACK)),
            "IHL 7 in"),
    ];
    fx.expect_all(&steps);
}

#[test]
fn malformed_internal_packets_are_dropped_and_counted() {
    let fx = snat();
    let good = tcp_frame(VM1, 40000, SRV, 80, SYN);
    // IHL < 5.
    let mut f = good.clone();
    f[14] = 0x44;
    fx.assert_dropped("snat_out", &f, Counter::DropMalformed);
    // Total length beyond the packet.
    let mut f = good.clone();
    let tot = u16::from_be_bytes([f[16], f[17]]) + 100;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fx.assert_dropped("snat_out", &f, Counter::DropMalformed);
    // Version 6 in an IPv4 EtherType.
    let mut f = good.clone();
    f[14] = 0x65;
    fx.assert_dropped("snat_out", &f, Counter::DropMalformed);
    // A broken transport header `l4` in an intact IPv4 packet from VM1 to SRV.
    let malformed = |proto: u8, l4: &[u8]| {
        fx.assert_dropped(
            "snat_out",
            &frame(&Ipv4::new(VM1, SRV, proto).packet(l4)),
            Counter::DropMalformed,
        );
    };
    // TCP header cut short by the IP total length.
    let seg = tcp(VM1, SRV, 40000, 80, SYN, &[], b"");
    malformed(TCP, &seg[..12]);
    // TCP data offset < 5.
    let mut seg = tcp(VM1, SRV, 40000, 80, SYN, &[], b"abcd");
    seg[12] = 0x40;
    malformed(TCP, &seg);
    // TCP data offset beyond the segment.
    let mut seg = tcp(VM1, SRV, 40000, 80, SYN, &[], b"");
    seg[12] = 0xf0;
    malformed(TCP, &seg);
    // UDP shorter than its header, and a UDP length field below 8.
    let d = udp(VM1, SRV, 40000, 53, b"x", false);
    malformed(UDP, &d[..6]);
    let mut d = udp(VM1, SRV, 40000, 53, b"xyz", false);
    d[4..6].copy_from_slice(&4u16.to_be_bytes());
    malformed(UDP, &d);
    // ICMP shorter than 8 bytes.
    let e = echo(8, 1, 1, b"");
    malformed(ICMP, &e[..4]);
    // (A frame too short for an IPv4 header cannot be fed to BPF_PROG_TEST_RUN: the kernel
    // refuses it with EINVAL; the datapath drops it as malformed all the same.)
    // None of these created a session.
    assert!(fx.sessions().is_empty());
}

#[test]
fn invalid_and_unsupported_internal_packets_are_dropped() {
    let fx = snat();
    // RST with no session.
    fx.assert_dropped(
        "snat_out",
        &tcp_frame(VM1, 40000, SRV, 80, RST | ACK),
        Counter::DropInvalid,
    );
    // GRE from an internal source.
    fx.assert_dropped(
        "snat_out",
        &frame(&Ipv4::new(VM1, SRV, 47).packet(&[0u8; 8])),
        Counter::DropUnsupported,
    );
    // ICMP echo reply or timestamp from an internal host: no session may be opened by it.
    fx.assert_dropped(
        "snat_out",
        &echo_frame(VM1, SRV, 0, 9),
        Counter::DropUnsupported,
    );
    fx.assert_dropped(
        "snat_out",
        &frame(&Ipv4::new(VM1, SRV, ICMP).packet(&icmp(13, 0, [0; 4], &[0; 12]))),
        Counter::DropUnsupported,
    );
    // With a session, an RST is translated.
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    assert_frame(
        &fx.out(&tcp_frame(VM1, 40000, SRV, 80, RST | ACK)),
        &tcp_frame(GW, 40000, SRV, 80, RST | ACK),
        "RST in session",
    );
    assert_eq!(fx.sessions()[0].state, "CLOSE");
}

#[test]
fn exempt_traffic_passes_untouched() {
    let fx = snat();
    // Foreign source (not in the router's internal CIDRs) and the router's own address.
    for f in [
        tcp_frame([10, 9, 9, 9], 40000, SRV, 80, SYN),
        tcp_frame(GW, 40000, SRV, 80, SYN),
        echo_frame(GW, SRV, 8, 77),
        frame(&Ipv4::new([172, 16, 0, 1], SRV, 47).packet(&[0u8; 8])),
    ] {
        assert_eq!(fx.out(&f), f, "exempt packet rewritten");
    }
    // Anything neither IPv4 nor IPv6 (IPv6: testrun::ipv6) passes.
    let arp = packet::frame_type(&[0u8; 28], 0x0806);
    assert_eq!(fx.out(&arp), arp);
    assert_eq!(fx.inn(&arp), arp);
    assert!(fx.sessions().is_empty());
    assert!(fx.stat("passed") >= 5);
}

#[test]
fn snat_disabled_translates_nothing() {
    let fx = fixture(false, NatConfig::default());
    let f = tcp_frame(VM1, 40000, SRV, 80, SYN);
    assert_eq!(fx.out(&f), f);
    let r = tcp_frame(SRV, 80, GW, 40000, SYN | ACK);
    assert_eq!(fx.inn(&r), r);
    assert!(fx.sessions().is_empty());
}

#[test]
fn unknown_inbound_goes_to_the_router_stack() {
    let fx = snat();
    for f in [
        tcp_frame(SRV, 5555, GW, 22, SYN),
        udp_frame(SRV, 5555, GW, 40000),
        echo_frame(SRV, GW, 8, 1),
        echo_frame(SRV, GW, 0, 1),
        tcp_frame(SRV, 80, [192, 0, 2, 99], 40000, SYN | ACK),
    ] {
        assert_eq!(fx.inn(&f), f, "unknown inbound rewritten");
    }
}

#[test]
fn flush_and_remove_router_forget_sessions() {
    let fx = snat();
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    assert_eq!(fx.dp.flush_sessions(DP_ID).expect("flush"), 2);
    let r = udp_frame(SRV, 53, GW, 40000);
    assert_eq!(fx.inn(&r), r, "no session after flush");
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.dp.remove_router(DP_ID).expect("remove router");
    assert!(fx.sessions().is_empty());
    // Unconfigured: everything passes, even an internal source.
    let f = udp_frame(VM1, 40000, SRV, 53);
    assert_eq!(fx.out(&f), f);
    assert_eq!(fx.dp.stats(DP_ID).expect("stats")["out_packets"], 0);
}

/// Once a GC pass has repaired the counts, a flush reads the table only for a router whose
/// count says it holds entries: the sessions the datapath made are counted, and flushed.
#[test]
fn flushes_after_a_gc_pass_go_by_the_counts() {
    let fx = snat();
    fx.dp.gc().expect("gc pass");
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    assert_eq!(fx.dp.session_count(DP_ID), 2);
    assert_eq!(fx.dp.flush_sessions(DP_ID).expect("flush"), 2);
    assert_eq!(fx.dp.session_count(DP_ID), 0);
    let r = udp_frame(SRV, 53, GW, 40000);
    assert_eq!(fx.inn(&r), r, "no session after flush");
    assert_eq!(fx.dp.flush_sessions(DP_ID).expect("flush"), 0);
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.dp.gc().expect("gc pass");
    assert_eq!(fx.dp.session_count(DP_ID), 1);
    fx.dp.remove_router(DP_ID).expect("remove router");
    assert!(fx.sessions().is_empty());
}

/// The router config of the fixture with other internal CIDRs (and gateway `gw`).
fn router(gw: [u8; 4], cidrs: &[&str]) -> RouterNat {
    testrun_router(DP_ID, gw, cidrs)
}

#[test]
fn deleted_router_counters_do_not_leak_into_its_number() {
    let fx = snat();
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.inn(&udp_frame(SRV, 53, GW, 40000));
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    let f = udp_frame(SRV, 53, GW, 1);
    assert_eq!(fx.inn(&f), f, "no session: to the router itself");
    fx.assert_dropped(
        "snat_out",
        &udp_frame(VM1, 40001, SRV, 53)[..40],
        Counter::DropMalformed,
    );
    assert_eq!(fx.stat("out_packets"), 2);
    assert_eq!(fx.stat("in_packets"), 1);
    assert_eq!(fx.stat("sessions_created"), 1);
    assert_eq!(fx.stat("passed"), 1);
    assert_eq!(fx.stat("drop_malformed"), 1);

    fx.dp.remove_router(DP_ID).expect("remove router");
    let zero = |what: &str| {
        let st = fx.dp.stats(DP_ID).expect("stats");
        assert_eq!(st.len(), Counter::COUNT);
        assert!(st.values().all(|v| *v == 0), "{what}: {st:?}");
    };
    zero("after remove_router");
    // Another router gets the number: it starts from zero and counts only its own packets.
    let gw2 = [192, 0, 2, 20];
    fx.dp
        .configure_router(&router(gw2, &["10.0.9.0/24"]))
        .expect("configure the next router");
    zero("the next router, before any packet");
    let got = fx.out(&udp_frame([10, 0, 9, 4], 40000, SRV, 53));
    assert_frame(
        &got,
        &udp_frame(gw2, 40000, SRV, 53),
        "next router translates",
    );
    let st = fx.dp.stats(DP_ID).expect("stats");
    let nonzero: Vec<_> = st.iter().filter(|(_, v)| **v != 0).collect();
    assert_eq!(
        nonzero,
        vec![
            (&"out_bytes".to_string(), &(got.len() as u64)),
            (&"out_packets".to_string(), &1),
            (&"sessions_created".to_string(), &1),
        ],
        "one new flow, counted once"
    );
}

#[test]
fn sessions_of_a_removed_subnet_go_with_it() {
    let fx = snat();
    // VM3 (10.0.1.0/24) and VM1 (10.0.0.0/24) each have a session.
    let got = fx.out(&udp_frame(VM3, 40000, SRV, 53));
    assert_frame(&got, &udp_frame(GW, 40000, SRV, 53), "VM3 translated");
    fx.out(&udp_frame(VM1, 40001, SRV, 53));
    assert_eq!(fx.sessions().len(), 2);
    // 10.0.1.0/24 leaves the router: its session goes, the other stays.
    fx.dp
        .configure_router(&router(GW, &["10.0.0.0/24"]))
        .expect("reconfigure");
    let s = fx.sessions();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].internal.to_string(), "10.0.0.5:40001");
    // VM3 is no longer internal: its packets pass untouched (a session would have translated
    // them, since the session is looked up before the subnet), replies are not reversed.
    let f = udp_frame(VM3, 40000, SRV, 53);
    assert_eq!(fx.out(&f), f, "a former subnet's packet is not translated");
    let r = udp_frame(SRV, 53, GW, 40000);
    assert_eq!(fx.inn(&r), r, "nor its replies");
    let got = fx.out(&udp_frame(VM1, 40001, SRV, 53));
    assert_frame(
        &got,
        &udp_frame(GW, 40001, SRV, 53),
        "VM1 keeps its session",
    );
    assert_eq!(fx.stat("sessions_created"), 2);
}

#[test]
fn router_own_packets_are_never_taken_for_a_session() {
    let fx = snat();
    // VM1's flow holds NAT port 40000 towards SRV:53 ...
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    let passed = fx.stat("passed");
    // ... and the router itself sends from the gateway IP with the same tuple otherwise.
    for f in [
        udp_frame(GW, 40000, SRV, 53),
        tcp_frame(GW, 40000, SRV, 53, SYN),
        echo_frame(GW, SRV, 8, 40000),
    ] {
        assert_eq!(fx.out(&f), f, "router's own packet untouched");
    }
    assert_eq!(fx.stat("passed"), passed + 3);
    assert_eq!(fx.stat("sessions_created"), 1);
    let s = fx.sessions();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].internal.to_string(), "10.0.0.5:40000");
}

#[test]
fn gc_expires_idle_sessions_by_state() {
    let nat = NatConfig {
        udp_unreplied: 1,
        udp_replied: 3600,
        icmp: 1,
        ..NatConfig::default()
    };
    let fx = fixture(true, nat);
    // A replied UDP flow (long timeout), an unreplied one and a ping (short timeouts).
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    fx.inn(&udp_frame(SRV, 53, GW, 40000));
    fx.out(&udp_frame(VM1, 40001, SRV, 53));
    fx.out(&echo_frame(VM1, SRV, 8, 77));
    assert_eq!(fx.sessions().len(), 3);
    // Well past the 1 s timeouts (the datapath clock is the coarse monotonic one).
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert_eq!(
        fx.dp.gc().expect("gc").expired,
        2,
        "expired: unreplied UDP and ICMP"
    );
    let left = fx.sessions();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (left[0].internal.port(), left[0].state.as_str()),
        (40000, "REPLIED")
    );
    // The expired flow's reply is no longer translated; the live one still is.
    let late = udp_frame(SRV, 53, GW, 40001);
    assert_eq!(fx.inn(&late), late);
    assert_frame(
        &fx.inn(&udp_frame(SRV, 53, GW, 40000)),
        &udp_frame(SRV, 53, VM1, 40000),
        "live flow after GC",
    );
}

/// The pinned session map of a fixture, opened like any other process would.
fn pinned_sessions(
    fx: &Rig,
) -> aya::maps::HashMap<aya::maps::MapData, router_common::SessionKey, router_common::SessionValue>
{
    tests::pinned_sessions(&fx.dp)
}

#[test]
fn removed_reverse_entry_is_restored_or_the_flow_remapped() {
    let fx = snat();
    fx.out(&udp_frame(VM1, 40000, SRV, 53));
    let mut sessions = pinned_sessions(&fx);
    let rev = |port: u16| reply_key(DP_ID, UDP, (SRV, 53), (GW, port));
    // As if the GC removed the session (its only entry) between two packets: the next outbound packet restores it.
    sessions.remove(&rev(40000)).expect("remove reverse");
    #[rustfmt::skip]
    let steps = [
        (OUT, Udp(VM1, 40000, SRV, 53), Udp(GW, 40000, SRV, 53), "same port"),
        (IN, Udp(SRV, 53, GW, 40000), Udp(SRV, 53, VM1, 40000), "reply restored"),
    ];
    fx.expect_all(&steps);
    // Removed again, and meanwhile another host's flow took the port: VM1 is remapped rather
    // than sharing it, and each reply reaches its own host.
    sessions.remove(&rev(40000)).expect("remove reverse");
    assert_frame(
        &fx.out(&udp_frame(VM2, 40000, SRV, 53)),
        &udp_frame(GW, 40000, SRV, 53),
        "VM2 takes the port",
    );
    let p = remapped(&fx, VM1);
    #[rustfmt::skip]
    let steps = [
        (IN, Udp(SRV, 53, GW, 40000), Udp(SRV, 53, VM2, 40000), "reply to VM2"),
        (IN, Udp(SRV, 53, GW, p), Udp(SRV, 53, VM1, 40000), "reply to VM1"),
    ];
    fx.expect_all(&steps);
}

#[test]
fn router_icmp_errors_about_translated_flows_are_translated() {
    let fx = snat();
    let p = remapped_second_flow(&fx);
    // The router answers a reply for VM2 with host unreachable (from its gateway address): the
    // quote must show the translated destination, never VM2's address.
    let err =
        |quoted: Vec<u8>| frame(&Ipv4::new(GW, SRV, ICMP).packet(&icmp(3, 1, [0; 4], &quoted)));
    assert_frame(
        &fx.out(&err(answer(VM2, 40000))),
        &err(answer(GW, p)),
        "router's host unreachable",
    );
    // About no known flow, or not an error at all: the router's own traffic, untouched.
    let other = err(answer([10, 0, 0, 99], 1234));
    assert_eq!(fx.out(&other), other);
    let own = echo_frame(GW, SRV, 8, 4);
    assert_eq!(fx.out(&own), own);
}

#[test]
fn tcp_port_reuse_after_close_starts_a_fresh_connection() {
    let fx = snat();
    let state = |fx: &Rig| fx.sessions()[0].state.clone();
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    fx.inn(&tcp_frame(SRV, 80, GW, 40000, SYN | ACK));
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, ACK));
    assert_eq!(state(&fx), "ESTABLISHED");
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, packet::FIN | ACK));
    assert_eq!(state(&fx), "CLOSING");
    fx.inn(&tcp_frame(SRV, 80, GW, 40000, packet::FIN | ACK));
    assert_eq!(state(&fx), "TIME_WAIT");
    // The same 4-tuple opens again: a new connection, not a closing one.
    assert_frame(
        &fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN)),
        &tcp_frame(GW, 40000, SRV, 80, SYN),
        "reopen",
    );
    assert_eq!(state(&fx), "SYN_SENT");
    fx.inn(&tcp_frame(SRV, 80, GW, 40000, SYN | ACK));
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, ACK));
    assert_eq!(state(&fx), "ESTABLISHED");
}

/// The entries of the fixture's session table, as (sessions keyed `DIR_IN`, forward aliases
/// keyed `DIR_OUT`).
fn entries(
    fx: &Rig,
) -> (
    Vec<router_common::SessionKey>,
    Vec<router_common::SessionKey>,
) {
    let map = pinned_sessions(fx);
    let keys: Vec<router_common::SessionKey> = map
        .keys()
        .map(|k| k.expect("session key"))
        .filter(|k| u32::from(k.router_id) == DP_ID)
        .collect();
    keys.into_iter()
        .partition(|k| k.dir == router_common::DIR_IN)
}

#[test]
fn one_entry_per_session_for_flows_that_keep_their_port() {
    let fx = snat();
    for i in 0..40u16 {
        let f = fx.out(&udp_frame(VM1, 30000 + i, SRV, 53));
        assert_eq!(sport(&f), 30000 + i, "port kept");
    }
    fx.out(&tcp_frame(VM2, 30000, SRV, 80, SYN));
    fx.inn(&tcp_frame(SRV, 80, GW, 30000, SYN | ACK));
    fx.out(&tcp_frame(VM2, 30000, SRV, 80, ACK));
    fx.out(&echo_frame(VM3, SRV, 8, 4242));
    fx.inn(&echo_frame(SRV, GW, 0, 4242));
    let (sessions, aliases) = entries(&fx);
    let listed = fx.sessions();
    assert_eq!(listed.len(), 42);
    assert_eq!(sessions.len(), listed.len(), "one entry per session");
    assert!(aliases.is_empty(), "no forward entry: {aliases:?}");
    // A source port outside the range is moved to a port chosen by a hash of the flow: still one
    // entry, and every packet of the flow finds it again.
    let low = fx.out(&udp_frame(VM3, 80, SRV, 53));
    let p = sport(&low);
    assert!((1024..=65535).contains(&p), "port {p}");
    for _ in 0..3 {
        assert_frame(
            &fx.out(&udp_frame(VM3, 80, SRV, 53)),
            &udp_frame(GW, p, SRV, 53),
            "same hashed port",
        );
    }
    assert_frame(
        &fx.inn(&udp_frame(SRV, 53, GW, p)),
        &udp_frame(SRV, 53, VM3, 80),
        "reply to the hashed port",
    );
    let (sessions, aliases) = entries(&fx);
    assert_eq!((sessions.len(), aliases.len()), (43, 0));
    assert_eq!(fx.stat("sessions_created"), 43);
}

#[test]
fn displaced_flow_gets_a_forward_entry_and_both_translate() {
    let fx = snat();
    let a = fx.out(&tcp_frame(VM1, 41000, SRV, 80, SYN));
    assert_frame(
        &a,
        &tcp_frame(GW, 41000, SRV, 80, SYN),
        "first keeps its port",
    );
    let b = fx.out(&tcp_frame(VM2, 41000, SRV, 80, SYN));
    let p = sport(&b);
    assert_ne!(p, 41000, "the port is taken towards this endpoint");
    assert_frame(&b, &tcp_frame(GW, p, SRV, 80, SYN), "second remapped");
    let (sessions, aliases) = entries(&fx);
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        aliases.len(),
        1,
        "only the displaced flow has a forward entry"
    );
    assert_eq!(
        (aliases[0].src, aliases[0].sport),
        (
            router_common::ip_to_wire(VM2),
            router_common::port_to_wire(41000)
        )
    );
    // Both directions of both flows, several packets each: the ports stay put.
    for _ in 0..3 {
        #[rustfmt::skip]
        let steps = [
            (IN, Tcp(SRV, 80, GW, 41000, SYN_ACK), Tcp(SRV, 80, VM1, 41000, SYN_ACK), "first, in"),
            (IN, Tcp(SRV, 80, GW, p, SYN_ACK), Tcp(SRV, 80, VM2, 41000, SYN_ACK), "displaced, in"),
            (OUT, Tcp(VM1, 41000, SRV, 80, ACK), Tcp(GW, 41000, SRV, 80, ACK), "first, out"),
            (OUT, Tcp(VM2, 41000, SRV, 80, ACK), Tcp(GW, p, SRV, 80, ACK), "displaced, out"),
        ];
        fx.expect_all(&steps);
    }
    let listed = fx.sessions();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().all(|s| s.state == "ESTABLISHED"),
        "{listed:?}"
    );
    // The displaced flow's session removed (the GC deletes it a moment before its alias): its forward entry restores it at the same port.
    let mut map = pinned_sessions(&fx);
    let rev = |port: u16| reply_key(DP_ID, TCP, (SRV, 80), (GW, port));
    map.remove(&rev(p))
        .expect("remove the displaced flow's session");
    #[rustfmt::skip]
    let steps = [
        (OUT, Tcp(VM2, 41000, SRV, 80, ACK), Tcp(GW, p, SRV, 80, ACK),
            "displaced flow keeps its port after its session went"),
        (IN, Tcp(SRV, 80, GW, p, ACK), Tcp(SRV, 80, VM2, 41000, ACK), "its replies again"),
    ];
    fx.expect_all(&steps);
    assert_eq!(fx.stat("sessions_created"), 2, "restored, not created");
    // The GC leaves live forward entries alone (past the orphan grace period).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    fx.out(&tcp_frame(VM2, 41000, SRV, 80, ACK));
    assert_eq!(fx.dp.gc().expect("gc").expired, 0);
    assert_eq!(entries(&fx).1.len(), 1, "forward entry kept");
}

#[test]
fn removed_session_of_an_established_flow_is_recreated_at_the_same_port() {
    let fx = snat();
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, SYN));
    fx.inn(&tcp_frame(SRV, 80, GW, 40000, SYN | ACK));
    fx.out(&tcp_frame(VM1, 40000, SRV, 80, ACK));
    let (sessions, _) = entries(&fx);
    assert_eq!(sessions.len(), 1);
    // As if the GC had removed it between two packets: the table is empty.
    let mut map = pinned_sessions(&fx);
    map.remove(&sessions[0]).expect("remove the session");
    assert_eq!(entries(&fx), (vec![], vec![]));
    let r = tcp_frame(SRV, 80, GW, 40000, ACK);
    assert_eq!(fx.inn(&r), r, "nothing to translate a reply with");
    // The next outbound packet (mid-connection, no SYN) re-creates it at the same port.
    #[rustfmt::skip]
    let steps = [
        (OUT, Tcp(VM1, 40000, SRV, 80, ACK), Tcp(GW, 40000, SRV, 80, ACK), "same NAT port"),
        (IN, Tcp(SRV, 80, GW, 40000, ACK), Tcp(SRV, 80, VM1, 40000, ACK),
            "replies reach the host again"),
    ];
    fx.expect_all(&steps);
    assert_eq!(entries(&fx).0, sessions, "the same single entry");
    // The same for a flow whose port was chosen by the hash (source port out of range).
    let first = sport(&fx.out(&udp_frame(VM2, 80, SRV, 53)));
    let (now, _) = entries(&fx);
    let k = *now
        .iter()
        .find(|k| k.dport == router_common::port_to_wire(first))
        .expect("hashed session");
    map.remove(&k).expect("remove");
    assert_frame(
        &fx.out(&udp_frame(VM2, 80, SRV, 53)),
        &udp_frame(GW, first, SRV, 53),
        "same hashed port",
    );
    // An RST may not create a session.
    map.remove(&sessions[0]).expect("remove the session");
    assert_eq!(
        fx.run("snat_out", &tcp_frame(VM1, 40000, SRV, 80, RST)).0,
        SHOT
    );
}

#[test]
fn a_displaced_flow_finds_its_alias_through_its_endpoint_hint_until_the_gc_clears_it() {
    let fx = fixture(
        true,
        NatConfig {
            udp_unreplied: 1,
            ..NatConfig::default()
        },
    );
    let slot = router_common::nat::alias_hint_slot(
        DP_ID as u16,
        router_common::ip_to_wire(SRV),
        router_common::port_to_wire(53),
        UDP,
    );
    assert_eq!(fx.dp.alias_hint(slot), 0, "no alias yet");
    // VM1 keeps port 40000 towards SRV:53; VM2's flow from the same port is displaced.
    assert_frame(
        &fx.out(&udp_frame(VM1, 40000, SRV, 53)),
        &udp_frame(GW, 40000, SRV, 53),
        "first flow keeps its port",
    );
    let p = remapped(&fx, VM2);
    assert_ne!(
        fx.dp.alias_hint(slot),
        0,
        "the alias set its endpoint's hint"
    );
    // VM1's session goes (as the GC removes one): VM2's first-choice key is free now, and
    // VM2 must still find its alias rather than take the free port.
    let mut sessions = pinned_sessions(&fx);
    sessions
        .remove(&reply_key(DP_ID, UDP, (SRV, 53), (GW, 40000)))
        .expect("remove VM1's session");
    assert_frame(
        &fx.out(&udp_frame(VM2, 40000, SRV, 53)),
        &udp_frame(GW, p, SRV, 53),
        "displaced flow keeps its port when its first choice frees up",
    );
    // A GC pass while the alias lives leaves the hint set.
    assert_eq!(fx.dp.gc().expect("gc").expired, 0);
    assert_ne!(fx.dp.alias_hint(slot), 0, "hint kept while the alias lives");
    // Idle past the 1 s timeout (and the alias grace): the session and its alias expire, and
    // the same pass clears the hint.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(fx.dp.gc().expect("gc").expired, 1);
    assert_eq!(entries(&fx), (vec![], vec![]));
    assert_eq!(
        fx.dp.alias_hint(slot),
        0,
        "hint cleared with the last alias"
    );
    // A new flow from VM2 then takes its first choice.
    assert_frame(
        &fx.out(&udp_frame(VM2, 40000, SRV, 53)),
        &udp_frame(GW, 40000, SRV, 53),
        "new flow after the GC",
    );
}
