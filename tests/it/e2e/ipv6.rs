//! A dual-stack router end to end, its IPv6 subnets made with the stock `openstack` CLI: a VM
//! on a SLAAC subnet takes its address and default route from the daemon's router
//! advertisements, reaches an upstream IPv6 host that sees the VM's own address (routed, no
//! NAT66: ping6 and a TCP connection), while its IPv4 traffic on the same router is still
//! SNATed; the gateway programs count the IPv6 packets; removing the subnet from the router
//! ends the advertisements (a last one with router lifetime 0 takes the VM's default route).
//!
//! ```text
//!  vm 10.45.0.x + fd00:45::EUI-64 ── qr-(v4) / qr-(v6, RA) ── r1 ── qg- 203.0.113.x, 2001:db8::2
//!                                                                     │ public
//!                                                inet 203.0.113.1, 2001:db8::1 (route to fd00:45::/64)
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use router_ctl::model::spec::names;
use serde_json::Value;
use tests::{
    Netns,
    openstack::Cloud,
    topo::{self, INTERNET_IP, Internet, id, tenant_network},
};

const UPSTREAM: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Polls `f` every 200 ms for at most `limit`.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The IPv6 address of a port object (its fixed IP with a colon).
fn v6_address(port: &Value) -> Ipv6Addr {
    port["fixed_ips"]
        .as_array()
        .expect("fixed_ips")
        .iter()
        .filter_map(|f| f["ip_address"].as_str()?.parse::<Ipv6Addr>().ok())
        .next()
        .unwrap_or_else(|| panic!("no IPv6 fixed IP in {port}"))
}

/// The global addresses and the default route's gateway the VM has on eth0.
fn vm_ipv6(vm: &Netns) -> (Vec<Ipv6Addr>, Option<String>) {
    let addrs = tests::ip_json(
        &vm.name,
        &["-6", "addr", "show", "dev", "eth0", "scope", "global"],
    );
    let addrs = addrs
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    let routes = tests::ip_json(&vm.name, &["-6", "route", "show", "default"]);
    let gw = routes
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["gateway"].as_str())
        .map(str::to_string);
    (addrs, gw)
}

fn sysctl(ns: &str, key: &str) -> String {
    let out = tests::netns::netns_cmd(ns, "sysctl")
        .args(["-n", key])
        .output()
        .expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Connects from `vm` to `server` (listening in `srv_ns`); returns the peer address the server
/// saw (panics, without hanging, when the connection fails).
fn tcp_peer(vm: &Netns, srv_ns: &Netns, server: SocketAddr) -> IpAddr {
    let listener = srv_ns.enter(|| TcpListener::bind(server).expect("listen"));
    listener.set_nonblocking(true).expect("non-blocking");
    let client = vm
        .spawn_thread(move || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hi")?;
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf)
        })
        .expect("VM thread");
    let start = Instant::now();
    let accepted = loop {
        match listener.accept() {
            Ok(a) => break Some(a),
            Err(_) if client.is_finished() || start.elapsed() > Duration::from_secs(10) => {
                break None;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let Some((mut conn, peer)) = accepted else {
        panic!("no connection to {server}: {:?}", client.join());
    };
    conn.set_nonblocking(false).expect("blocking");
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).expect("read");
    conn.write_all(b"ok").expect("answer");
    client.join().expect("client thread").expect("client");
    peer.ip()
}

#[test]
fn slaac_vm_reaches_ipv6_upstream_through_the_router_while_ipv4_is_snated() {
    let cloud = Cloud::start("i6h");
    let (d, host) = (&cloud.d, &cloud.host);
    let os = |args: &[&str]| cloud.os(args);
    let inet = Internet::new(host, d, "i6i", 40);
    os(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--ip-version",
        "6",
        "--subnet-range",
        "2001:db8::/64",
        "--gateway",
        &UPSTREAM.to_string(),
        "public-v6",
        "-f",
        "json",
    ]);
    tenant_network(d, "tenant", "10.45.0.0/24");
    let v6 = os(&[
        "subnet",
        "create",
        "--network",
        "tenant",
        "--ip-version",
        "6",
        "--subnet-range",
        "fd00:45::/64",
        "--ipv6-ra-mode",
        "slaac",
        "--ipv6-address-mode",
        "slaac",
        "tenant-v6",
        "-f",
        "json",
    ]);
    assert_eq!(v6["gateway_ip"], "fd00:45::1", "{v6}");
    let router = d.cli_json(&["router", "create", "r1"]);
    let router_id = id(&router);
    d.cli_ok(&["router", "interface", "add", "r1", "tenant-v4"]);
    os(&["router", "add", "subnet", "r1", "tenant-v6"]);
    let (r, gw_v4) = topo::set_gateway(d, "r1");
    let gw_v6: Ipv6Addr = r["external_gateway_info"]["external_fixed_ips"]
        .as_array()
        .expect("gateway addresses")
        .iter()
        .find_map(|f| f["ip_address"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 gateway address: {r}"));

    // The upstream router: its address on the external network and a route to the tenant
    // prefix via the router's gateway (as an operator configures one, or BGP would).
    inet.ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{UPSTREAM}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    inet.ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:45::/64",
        "via",
        &gw_v6.to_string(),
    ]);

    // Router namespace: IPv6 forwarding on; the v6 ports speak IPv6, the v4-only port does not;
    // the gateway has a configured v6 next hop, so it accepts no advertisements.
    let rns = names::router_netns(&router_id);
    assert_eq!(sysctl(&rns, "net.ipv6.conf.all.forwarding"), "1");
    let devs = tests::ip_json(&rns, &["link", "show"]);
    let mut v6_on = Vec::new();
    for l in devs.as_array().expect("links") {
        let name = l["ifname"].as_str().expect("name");
        if name.starts_with("qr-") || name.starts_with("qg-") {
            let off = sysctl(&rns, &format!("net.ipv6.conf.{name}.disable_ipv6"));
            v6_on.push((name.to_string(), off == "0"));
            if name.starts_with("qg-") {
                assert_eq!(
                    sysctl(&rns, &format!("net.ipv6.conf.{name}.accept_ra")),
                    "0"
                );
            }
        }
    }
    assert_eq!(
        v6_on.iter().filter(|(_, on)| *on).count(),
        2,
        "qg- and the v6 qr-: {v6_on:?}"
    );
    assert_eq!(v6_on.len(), 3, "{v6_on:?}");

    // The VM: a host (no forwarding) that accepts advertisements; its link comes up afresh so
    // it solicits one.
    let (vm, port, vm_v4) = topo::vm(d, "tenant", "i6v", &[]);
    let want = v6_address(&port);
    for (k, v) in [
        ("accept_dad", "0"),
        ("accept_ra", "1"),
        ("disable_ipv6", "0"),
    ] {
        vm.sysctl(&format!("net.ipv6.conf.eth0.{k}"), v)
            .expect("VM sysctl");
    }
    vm.ip(&["link", "set", "eth0", "down"]);
    vm.ip(&["link", "set", "eth0", "up"]);
    // The link going down took the IPv4 default route with it.
    vm.ip(&["route", "replace", "default", "via", "10.45.0.1"]);
    let configured = wait_for(Duration::from_secs(20), || {
        let (addrs, gw) = vm_ipv6(&vm);
        addrs.contains(&want) && gw.is_some_and(|g| g.starts_with("fe80::"))
    });
    assert!(
        configured,
        "SLAAC from the router's advertisements: want {want}, have {:?}\n{}",
        vm_ipv6(&vm),
        d.log()
    );

    let before = d.cli_json(&["stats", "r1"])["ipv6_packets"]
        .as_u64()
        .expect("ipv6_packets");
    let ping = vm.try_run(
        "ping",
        &[
            "-6",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &UPSTREAM.to_string(),
        ],
    );
    assert!(
        ping.status.success(),
        "ping6 to the upstream host: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        d.log()
    );
    let peer = tcp_peer(&vm, &inet.ns, SocketAddr::from((UPSTREAM, 8080)));
    assert_eq!(
        peer,
        IpAddr::V6(want),
        "routed, not translated: the upstream sees the VM"
    );
    let after = d.cli_json(&["stats", "r1"])["ipv6_packets"]
        .as_u64()
        .expect("ipv6_packets");
    assert!(
        after >= before + 6,
        "the gateway programs count IPv6: {before} → {after}"
    );

    // IPv4 from the same VM is still SNATed to the gateway address.
    let peer = tcp_peer(&vm, &inet.ns, SocketAddr::from((INTERNET_IP, 8081)));
    assert_eq!(peer.to_string(), gw_v4, "IPv4 SNATed (VM {vm_v4})");

    // The subnet leaves the router: a last advertisement (lifetime 0) removes the VM's route.
    os(&["router", "remove", "subnet", "r1", "tenant-v6"]);
    let gone = wait_for(Duration::from_secs(10), || vm_ipv6(&vm).1.is_none());
    assert!(
        gone,
        "default route after the interface went: {:?}",
        vm_ipv6(&vm)
    );
}
