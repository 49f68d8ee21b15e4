//! Restart without losing sessions: a long-lived TCP connection from a VM through the router's
//! SNAT keeps flowing, byte for byte and without a reset, across `kill -9` of the daemon, the
//! gap while it is down, and a new start that resyncs.
//!
//! ```text
//!  vm ns 10.66.0.5 ── tap ── brq<int> ── qr- ─ qrouter ─ qg- 192.0.2.x ── brq<ext> ── upl (host ns)
//!                                                                                     │ veth
//!                                                                   server ns 192.0.2.1 (echo)
//! ```
//! The daemon runs in the host namespace with `public` mapped to the uplink; the server has no
//! route to 10.0.0.0/8, so every echoed byte proves translation both ways. After the restart
//! each of the router's taps still has exactly one filter per hook, now running the new
//! daemon's program instances (new program ids), which carry the rest of the connection.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::Duration,
};

use router_common::programs;
use router_ctl::model::spec::names;
use serde_json::{Value, json};
use tests::{Netns, daemon::Daemon, tc_filters, unique};

/// Program ids on the router's gateway tap, checking exactly one filter per hook running the
/// hook's program: (ingress, egress). The interface tap of this router (no floating IP, so
/// nothing to hairpin) must carry no filter at all.
fn hook_programs(host: &Netns, gw_tap: &str, qr_tap: &str) -> [u64; 2] {
    let one = |dev: &str, hook: &str, prog: &str| {
        let f = tc_filters(host, dev, hook);
        assert_eq!(f.len(), 1, "{dev} {hook}: {f:?}");
        assert_eq!(f[0].prog, prog, "{dev} {hook}: {f:?}");
        f[0].prog_id
    };
    for hook in ["ingress", "egress"] {
        let f = tc_filters(host, qr_tap, hook);
        assert!(
            f.is_empty(),
            "{qr_tap} {hook} of a router without FIPs: {f:?}"
        );
    }
    [
        one(gw_tap, "ingress", programs::SNAT_OUT),
        one(gw_tap, "egress", programs::SNAT_IN),
    ]
}

#[track_caller]
fn expect(got: (u16, Value), want: u16) -> Value {
    assert_eq!(got.0, want, "body: {}", got.1);
    got.1
}

fn id(v: &Value, kind: &str) -> String {
    v[kind]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// Echo server on 192.0.2.1:5001 in `ns`: accepts one connection, echoes until EOF, returns
/// the peer address it saw and the bytes echoed.
fn echo_server(ns: &Netns) -> JoinHandle<(SocketAddr, usize)> {
    let listener = ns.enter(|| TcpListener::bind("192.0.2.1:5001").expect("bind echo server"));
    std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        let mut total = 0;
        loop {
            let n = s
                .read(&mut buf)
                .expect("server read (a reset would show here)");
            if n == 0 {
                return (peer, total);
            }
            s.write_all(&buf[..n]).expect("server write");
            total += n;
        }
    })
}

/// Sends `round` distinct bytes and reads exactly them back.
fn exchange(s: &mut TcpStream, round: u8) -> usize {
    let msg: Vec<u8> = (0..1000u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(round))
        .collect();
    s.write_all(&msg)
        .expect("client write (a reset would show here)");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("client read: echo lost");
    assert_eq!(back, msg, "round {round}: echoed bytes differ");
    msg.len()
}

#[test]
fn tcp_through_snat_survives_kill9_and_restart() {
    let host = Netns::new("apir");
    let server = Netns::new("apis");
    let vm = Netns::new("apiv");
    let upl = unique("upl");
    tests::veth(&host, &upl, &server, "srv0");
    server.ip(&["addr", "add", "192.0.2.1/24", "dev", "srv0"]);

    let mut d =
        Daemon::start_configured(&host, format!("[physical_networks]\npublic = \"{upl}\"\n"));
    let v = expect(
        d.post(
            "/v2.0/networks",
            &json!({"network": {"name": "public", "router:external": true,
            "provider:network_type": "flat", "provider:physical_network": "public"}}),
        ),
        201,
    );
    let ext = id(&v, "network");
    expect(
        d.post("/v2.0/subnets", &json!({"subnet": {"network_id": ext, "ip_version": 4, "cidr": "192.0.2.0/24",
            "gateway_ip": "192.0.2.1", "allocation_pools": [{"start": "192.0.2.10", "end": "192.0.2.20"}]}})),
        201,
    );
    let v = expect(
        d.post("/v2.0/networks", &json!({"network": {"name": "private"}})),
        201,
    );
    let net = id(&v, "network");
    let v = expect(
        d.post(
            "/v2.0/subnets",
            &json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.66.0.0/24"}}),
        ),
        201,
    );
    let sub = id(&v, "subnet");
    let v = expect(
        d.post("/v2.0/routers", &json!({"router": {"name": "r"}})),
        201,
    );
    let r = id(&v, "router");
    expect(
        d.put(
            &format!("/v2.0/routers/{r}/add_router_interface"),
            &json!({"subnet_id": sub}),
        ),
        200,
    );
    let v = expect(
        d.put(
            &format!("/v2.0/routers/{r}"),
            &json!({"router": {"external_gateway_info": {"network_id": ext}}}),
        ),
        200,
    );
    let gw_ip = v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .expect("gateway ip")
        .to_string();

    // The VM: a port on the private network, plugged with ip into the network's bridge.
    let v = expect(
        d.post(
            "/v2.0/ports",
            &json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.66.0.5"}]}}),
        ),
        201,
    );
    let mac = v["port"]["mac_address"].as_str().expect("mac").to_string();
    let tap = unique("vmt");
    tests::veth(&host, &tap, &vm, "eth0");
    host.ip(&["link", "set", &tap, "master", &names::bridge(&net)]);
    vm.ip(&["link", "set", "eth0", "address", &mac]);
    vm.ip(&["addr", "add", "10.66.0.5/24", "dev", "eth0"]);
    vm.ip(&["route", "add", "default", "via", "10.66.0.1"]);

    let srv = echo_server(&server);
    let mut conn = vm.enter(|| {
        TcpStream::connect_timeout(
            &"192.0.2.1:5001".parse().expect("addr"),
            Duration::from_secs(10),
        )
        .expect("connect through the router")
    });
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut sent = exchange(&mut conn, 1);

    let (_, ports) = d.get(&format!("/v2.0/ports?device_id={r}"));
    let tap_of = |owner: &str| {
        ports["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["device_owner"] == owner)
            .map(|p| names::tap_dev(p["id"].as_str().expect("port id")))
            .unwrap_or_else(|| panic!("no {owner} port in {ports}"))
    };
    let gw_tap = tap_of("network:router_gateway");
    let qr_tap = tap_of("network:router_interface");
    let before = hook_programs(&host, &gw_tap, &qr_tap);

    d.kill9();
    // While the daemon is down the kernel keeps forwarding and translating.
    sent += exchange(&mut conn, 2);
    d.restart();
    let after = hook_programs(&host, &gw_tap, &qr_tap);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b, a,
            "a filter still runs the old daemon's program: {before:?} → {after:?}"
        );
    }
    sent += exchange(&mut conn, 3);
    // And after the resync (the kit waits for the start-up pass after a restart).
    let v = expect(d.get(&format!("/v2.0/routers/{r}")), 200);
    assert_eq!(
        v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        gw_ip.as_str()
    );
    sent += exchange(&mut conn, 4);

    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (peer, echoed) = srv.join().expect("echo server");
    assert_eq!(
        peer.ip().to_string(),
        gw_ip,
        "the server saw the gateway address (SNAT)"
    );
    assert_eq!(echoed, sent, "no byte lost");
}
