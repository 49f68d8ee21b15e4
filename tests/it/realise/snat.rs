//! Realiser and datapath together with real packets: a "VM" namespace on the internal network
//! reaches an "upstream" namespace on the external network through the realised router, seen
//! upstream as the gateway address (SNAT on the gateway tap), replies come back; clearing the
//! gateway removes NAT state and sessions and stops traffic; SNAT off and on takes effect; the
//! upstream host learns the gateway MAC from the gratuitous ARPs; a restart of the realiser
//! resyncs without changing anything or losing sessions.

use std::{
    net::{SocketAddrV4, UdpSocket},
    time::Duration,
};

use router_ctl::model::spec::{DesiredState, names};
use tests::{
    Netns, RealiserHost, ip_json,
    spec::{gateway, port, router},
};

/// Sends one UDP datagram from `client` to `server:port` and returns the source address the
/// server saw, and whether the server's reply made it back (None: the request never arrived).
fn udp_roundtrip(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    port: u16,
) -> Option<(String, bool)> {
    let listener = server.enter(|| {
        let s = UdpSocket::bind(format!("{server_ip}:{port}")).expect("bind server");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s
    });
    let sock = client.enter(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s
    });
    let dst: SocketAddrV4 = format!("{server_ip}:{port}").parse().expect("addr");
    let mut buf = [0u8; 64];
    // A few tries: the very first packet may wait for ARP resolution.
    for _ in 0..3 {
        sock.send_to(b"ping", dst).expect("send");
        let Ok((n, from)) = listener.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(&buf[..n], b"ping");
        // Unroutable when SNAT is off (upstream has no route to the internal subnet).
        let _ = listener.send_to(b"pong", from);
        let back = matches!(sock.recv_from(&mut buf), Ok((4, _)) if &buf[..4] == b"pong");
        return Some((from.ip().to_string(), back));
    }
    None
}

#[test]
fn snat_through_a_realised_router() {
    let mut h = RealiserHost::new(&[]);
    let [ext, int] = h.networks([true, false]);
    let upstream = Netns::new("up");
    let vm = Netns::new("vm");
    h.plug(&upstream, &names::bridge(&ext.id), "203.0.113.1/24");
    h.plug(&vm, &names::bridge(&int.id), "10.0.1.10/24");
    vm.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    // Let the upstream host learn neighbours from gratuitous ARP.
    upstream.enter(|| {
        std::fs::write("/proc/sys/net/ipv4/conf/eth0/arp_accept", "1").expect("arp_accept")
    });

    let gw_mac = [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0x01];
    let mut spec = router(
        11,
        vec![port(
            &int.id,
            [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0x02],
            "10.0.1.1/24",
        )],
        Some(gateway(
            port(&ext.id, gw_mac, "203.0.113.10/24"),
            "203.0.113.1",
        )),
    );
    h.call(|r| r.apply_router(&spec)).expect("apply router");

    // The upstream host learnt the gateway MAC from the announcements (no traffic yet).
    let mut learnt = String::new();
    for _ in 0..30 {
        let out = upstream.run("ip", &["neigh", "show", "203.0.113.10"]);
        learnt = String::from_utf8_lossy(&out.stdout).to_string();
        if learnt.contains("fa:16:3e:aa:bb:01") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        learnt.contains("fa:16:3e:aa:bb:01"),
        "upstream neighbour: {learnt:?}"
    );

    let (seen, back) = udp_roundtrip(&vm, &upstream, "203.0.113.1", 40001)
        .expect("datagram never reached upstream through the router");
    assert_eq!(seen, "203.0.113.10", "source not translated");
    assert!(back, "reply not translated back to the VM");

    // A restart (new realiser and datapath on the same state dir and pins) resyncs without
    // changing anything: same devices, NAT and sessions kept, traffic still translated.
    let before = ip_json(&names::router_netns(&spec.id), &["link", "show"]);
    let sessions_before = h
        .r()
        .datapath()
        .sessions(spec.dp_id)
        .expect("sessions")
        .len();
    h.restart(&[]);
    let desired = DesiredState {
        networks: vec![ext.clone(), int.clone()],
        routers: vec![spec.clone()],
    };
    let rep = h.call(|r| r.reconcile(&desired)).expect("resync");
    assert!(
        rep.repaired.is_empty() && rep.removed.is_empty() && rep.failed.is_empty(),
        "{rep:?}"
    );
    assert_eq!(
        ip_json(&names::router_netns(&spec.id), &["link", "show"]),
        before
    );
    assert_eq!(
        h.r()
            .datapath()
            .sessions(spec.dp_id)
            .expect("sessions")
            .len(),
        sessions_before,
        "sessions lost across the restart"
    );
    let (seen, back) = udp_roundtrip(&vm, &upstream, "203.0.113.1", 40001)
        .expect("datagram never reached upstream after the restart");
    assert_eq!(seen, "203.0.113.10");
    assert!(back);

    let sessions = h.r().datapath().sessions(spec.dp_id).expect("sessions");
    assert!(
        sessions
            .iter()
            .any(|x| x.translated.ip().to_string() == "203.0.113.10"
                && x.internal.ip().to_string() == "10.0.1.10"),
        "no SNAT session recorded: {sessions:?}"
    );

    // Gateway cleared: NAT state and sessions gone, nothing leaves the router towards upstream.
    let gateway = spec.gateway.take();
    h.call(|r| r.apply_router(&spec)).expect("clear gateway");
    assert!(
        h.r()
            .datapath()
            .sessions(spec.dp_id)
            .expect("sessions")
            .is_empty(),
        "sessions survived the gateway"
    );
    assert!(
        udp_roundtrip(&vm, &upstream, "203.0.113.1", 40002).is_none(),
        "traffic still flows without a gateway"
    );

    // Gateway back with SNAT off: upstream sees the internal address.
    spec.gateway = gateway.map(|mut g| {
        g.enable_snat = false;
        g
    });
    h.call(|r| r.apply_router(&spec))
        .expect("gateway without SNAT");
    let (seen, _) = udp_roundtrip(&vm, &upstream, "203.0.113.1", 40003)
        .expect("datagram never reached upstream with SNAT off");
    assert_eq!(seen, "10.0.1.10", "translated although SNAT is off");

    // SNAT back on: translated again.
    if let Some(g) = spec.gateway.as_mut() {
        g.enable_snat = true;
    }
    h.call(|r| r.apply_router(&spec)).expect("SNAT on");
    let (seen, back) = udp_roundtrip(&vm, &upstream, "203.0.113.1", 40004)
        .expect("datagram never reached upstream with SNAT back on");
    assert_eq!(seen, "203.0.113.10");
    assert!(back);
}
