//! The fast path end to end (`fast_fwd` inside the router namespace, docs/ARCHITECTURE.md
//! "Fast path"): a live daemon in a throwaway host namespace builds a router with two tenant
//! subnets and a gateway on an external network whose "server" namespace (203.0.113.1, also
//! the subnet's gateway and so the router's next hop) sits on the external bridge.
//!
//! What is shown: traffic is forwarded by the fast path (counter, filter on the `qr-` ingress,
//! `qg-` transmit counter nearly still), NAT still applies, the cases the router must handle
//! itself still work (TTL 1, its own addresses), east-west is fast too, `fast_path = false`
//! turns it off (also removing what an earlier run attached), a filter removed from outside is
//! put back, and a stale neighbour whose MAC changed without a gratuitous ARP is probed again.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use router_ctl::model::spec::names;
use tests::{
    Netns,
    daemon::Daemon,
    tc_filters_in,
    topo::{self, Internet, id},
    unique,
};

const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PORT: u16 = 8080;
const FAST_FWD: &str = "fast_fwd";

/// Router `r1` with interfaces on tenant subnets 10.40.0.0/24 (VM `vm`) and 10.41.0.0/24
/// (VM `vm2`), its gateway on the external network with the server behind the bridge.
struct Topology {
    // Field order is drop order: namespaces first, then the daemon (whose drop purges).
    vm: Netns,
    vm2: Netns,
    server: Netns,
    /// Router `r1`'s namespace.
    router_ns: String,
    gw_ip: String,
    vm_ip: String,
    vm2_ip: String,
    d: Daemon,
    #[allow(dead_code)]
    host: Netns,
}

impl Topology {
    fn new(config: &str) -> Self {
        let host = Netns::new("fph");
        let d = Daemon::start_configured(&host, config);
        let server = Internet::new(&host, &d, "fps", 40).ns;
        let router = d.cli_json(&["router", "create", "r1"]);
        let router_ns = names::router_netns(&id(&router));
        let mut vms = Vec::new();
        for (net, cidr) in [("tenant", "10.40.0.0/24"), ("tenant2", "10.41.0.0/24")] {
            let subnet = topo::tenant_network(&d, net, cidr);
            d.cli_ok(&["router", "interface", "add", "r1", &subnet]);
            let (vm, _, ip) = topo::vm(&d, net, "fpv", &[]);
            vms.push((vm, ip));
        }
        let (_, gw_ip) = topo::set_gateway(&d, "r1");
        let (vm2, vm2_ip) = vms.pop().expect("vm2");
        let (vm, vm_ip) = vms.pop().expect("vm");
        Self {
            vm,
            vm2,
            server,
            router_ns,
            gw_ip,
            vm_ip,
            vm2_ip,
            d,
            host,
        }
    }

    /// The router's devices in its namespace starting with `prefix` ("qr-" or "qg-").
    fn devices(&self, prefix: &str) -> Vec<String> {
        let v = tests::ip_json(&self.router_ns, &["link", "show"]);
        let mut out: Vec<String> = v
            .as_array()
            .expect("ip -j link show is a list")
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect();
        out.sort();
        out
    }

    fn qg(&self) -> String {
        let devs = self.devices("qg-");
        assert_eq!(devs.len(), 1, "one qg- device: {devs:?}");
        devs[0].clone()
    }

    /// The router's counter `name` (`router-ctl stats`).
    fn counter(&self, name: &str) -> u64 {
        let stats = self.d.cli_json(&["stats", "r1"]);
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    }

    /// Whether `dev`'s ingress (router namespace) runs `fast_fwd`.
    fn fast_filter_on(&self, dev: &str) -> bool {
        tc_filters_in(&self.router_ns, dev, "ingress")
            .iter()
            .any(|f| f.prog == FAST_FWD)
    }

    /// `dev`'s transmitted packets, read inside the router namespace.
    fn tx_packets(&self, dev: &str) -> u64 {
        let v = tests::ip_json(&self.router_ns, &["-s", "link", "show", "dev", dev]);
        v[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx packets for {dev} in {v}"))
    }

    /// `ping -c count` from `ns` to `dst` (`extra` options first); returns the replies received.
    fn ping(ns: &Netns, dst: &str, count: u32, extra: &[&str]) -> (u32, String) {
        let c = count.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-n", "-c", &c, "-W", "2", dst]);
        let out = ns.try_run("ping", &args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let received = text
            .lines()
            .find(|l| l.contains("received"))
            .and_then(|l| {
                l.split(',')
                    .find(|p| p.contains("received"))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0);
        (received, text)
    }

    /// Pings `dst` from `ns` once a second until one reply comes, within `secs` seconds.
    fn ping_until(ns: &Netns, dst: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if Self::ping(ns, dst, 1, &[]).0 == 1 {
                return true;
            }
        }
        false
    }
}

/// A TCP connection from `vm` to the server: the server answers with the source it saw.
fn tcp_exchange(t: &Topology, vm: &Netns) -> Ipv4Addr {
    let listener = t
        .server
        .enter(|| TcpListener::bind((SERVER, PORT)).expect("bind the TCP server"));
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).expect("blocking");
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read the request");
        s.write_all(peer.ip().to_string().as_bytes())
            .expect("answer");
        peer
    });
    let seen = vm.enter(|| {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((SERVER, PORT)), Duration::from_secs(5))
                .expect("connect to the server through the router");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(b"hello").expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read the answer");
        answer
    });
    let peer = server.join().expect("server thread");
    assert_eq!(
        peer.ip().to_string(),
        seen,
        "what the server saw and answered"
    );
    seen.parse().expect("an IPv4 address")
}

/// A UDP request from `vm` and the server's answer (the source it saw).
fn udp_exchange(t: &Topology, vm: &Netns) -> Ipv4Addr {
    let server = t
        .server
        .enter(|| UdpSocket::bind((SERVER, PORT)).expect("bind the UDP server"));
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let client = vm.enter(|| UdpSocket::bind(("0.0.0.0", 0)).expect("bind the client"));
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for _ in 0..5 {
        client.send_to(b"who", (SERVER, PORT)).expect("send");
        let mut buf = [0u8; 64];
        let Ok((_, peer)) = server.recv_from(&mut buf) else {
            continue;
        };
        server
            .send_to(peer.ip().to_string().as_bytes(), peer)
            .expect("answer");
        match client.recv_from(&mut buf) {
            Ok((n, _)) => {
                let seen = String::from_utf8_lossy(&buf[..n]).to_string();
                return seen.parse().expect("an IPv4 address");
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receiving the answer: {e}"),
        }
    }
    panic!("no UDP exchange through the router")
}

const FAST_CONFIG: &str = "reconcile_interval = 1\n";

#[test]
fn fast_path_forwards_vm_to_server_past_the_router_stack() {
    let t = Topology::new(FAST_CONFIG);
    for dev in t.devices("qr-").iter().chain([t.qg()].iter()) {
        assert!(
            t.fast_filter_on(dev),
            "{dev} has no {FAST_FWD} filter on its ingress: {:?}\n{}",
            tc_filters_in(&t.router_ns, dev, "ingress"),
            t.d.log()
        );
    }
    // Warm up (ARP on both sides), then measure a bounded burst.
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server\n{}",
        t.d.log()
    );
    let qg = t.qg();
    let fast_before = t.counter("fast_forwarded");
    let tx_before = t.tx_packets(&qg);
    const N: u32 = 100;
    let (received, out) = Topology::ping(&t.vm, &SERVER.to_string(), N, &["-i", "0.01", "-q"]);
    assert!(received > 0, "no reply to the burst: {out}");
    let fast = t.counter("fast_forwarded") - fast_before;
    let tx = t.tx_packets(&qg) - tx_before;
    // Every request that got a reply crossed the router twice.
    assert!(
        fast >= 2 * u64::from(received),
        "fast_forwarded grew by {fast} for {received} echo exchanges"
    );
    assert!(
        tx < u64::from(N) / 4,
        "{qg} transmitted {tx} packets for {N} requests: the fast path did not bypass it"
    );
    // NAT still applies: the server sees the gateway IP.
    let gw: Ipv4Addr = t.gw_ip.parse().expect("gateway IP");
    let before = t.counter("fast_forwarded");
    assert_eq!(tcp_exchange(&t, &t.vm), gw, "TCP source seen by the server");
    assert_eq!(udp_exchange(&t, &t.vm), gw, "UDP source seen by the server");
    assert!(
        t.counter("fast_forwarded") >= before + 6,
        "TCP and UDP went past the fast path"
    );
    // The CLI's table shows the counter too.
    let table = t.d.cli_ok(&["stats", "r1"]);
    assert!(table.contains("fast_forwarded"), "{table}");
}

#[test]
fn slow_path_cases_still_behave_like_a_router() {
    let t = Topology::new(FAST_CONFIG);
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server\n{}",
        t.d.log()
    );
    // TTL 1: the router answers Time Exceeded (fast_fwd leaves it to the router).
    let (received, out) = Topology::ping(&t.vm, &SERVER.to_string(), 1, &["-t", "1"]);
    assert_eq!(received, 0, "{out}");
    assert!(
        out.contains("Time to live exceeded") && out.contains("10.40.0.1"),
        "no Time Exceeded from the router's 10.40.0.1: {out}"
    );
    // The router's own addresses answer.
    for dst in [t.gw_ip.as_str(), "10.40.0.1", "10.41.0.1"] {
        let (received, out) = Topology::ping(&t.vm, dst, 2, &[]);
        assert!(received >= 1, "no answer from the router's {dst}: {out}");
    }
    // East-west between the two subnets, fast-forwarded both ways.
    assert!(
        Topology::ping_until(&t.vm, &t.vm2_ip, 20),
        "{} cannot reach {}",
        t.vm_ip,
        t.vm2_ip
    );
    let before = t.counter("fast_forwarded");
    let (received, out) = Topology::ping(&t.vm, &t.vm2_ip, 20, &["-i", "0.05", "-q"]);
    assert!(received > 0, "{out}");
    let fast = t.counter("fast_forwarded") - before;
    assert!(
        fast >= 2 * u64::from(received),
        "east-west: fast_forwarded grew by {fast} for {received} echo exchanges"
    );
    let (received, out) = Topology::ping(&t.vm2, &t.vm_ip, 2, &[]);
    assert!(received >= 1, "{out}");
}

#[test]
fn fast_path_off_leaves_forwarding_to_the_router_and_removes_earlier_filters() {
    let mut t = Topology::new(FAST_CONFIG);
    let qr = t.devices("qr-");
    assert!(qr.iter().all(|d| t.fast_filter_on(d)), "fast path on first");
    // Restart with the fast path off: the filters of the earlier run go.
    let config =
        t.d.state_dir()
            .parent()
            .expect("test directory")
            .join("router-ctl.toml");
    std::fs::write(
        &config,
        format!("{FAST_CONFIG}[datapath]\nfast_path = false\n"),
    )
    .expect("rewriting the config");
    t.d.restart();
    for dev in t.devices("qr-").iter().chain([t.qg()].iter()) {
        assert!(
            !t.fast_filter_on(dev),
            "{dev} still runs {FAST_FWD}\n{}",
            t.d.log()
        );
    }
    let before = t.counter("fast_forwarded");
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server\n{}",
        t.d.log()
    );
    let (received, out) = Topology::ping(&t.vm, &SERVER.to_string(), 20, &["-i", "0.05", "-q"]);
    assert!(received > 0, "{out}");
    let gw: Ipv4Addr = t.gw_ip.parse().expect("gateway IP");
    assert_eq!(tcp_exchange(&t, &t.vm), gw);
    assert!(Topology::ping_until(&t.vm, &t.vm2_ip, 20), "east-west");
    assert_eq!(
        t.counter("fast_forwarded"),
        before,
        "nothing is fast-forwarded with fast_path = false"
    );
}

#[test]
fn fast_path_off_from_the_start_attaches_nothing() {
    let t = Topology::new(&format!("{FAST_CONFIG}[datapath]\nfast_path = false\n"));
    for dev in t.devices("qr-").iter().chain([t.qg()].iter()) {
        assert!(!t.fast_filter_on(dev), "{dev} runs {FAST_FWD}");
    }
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server\n{}",
        t.d.log()
    );
    assert_eq!(t.counter("fast_forwarded"), 0);
}

#[test]
fn a_fast_filter_removed_from_outside_is_put_back() {
    let t = Topology::new(FAST_CONFIG);
    let qr = t.devices("qr-")[0].clone();
    assert!(t.fast_filter_on(&qr));
    // The router's devices share one filter block: the filter goes from all of them.
    let block = router_ctl::datapath::filter::ROUTER_BLOCK.to_string();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.router_ns))
        .args(["tc", "filter", "del", "block", &block])
        .output()
        .expect("nsenter tc");
    assert!(out.status.success(), "tc filter del: {out:?}");
    let qg = t.devices("qg-")[0].clone();
    assert!(!t.fast_filter_on(&qr), "the filter was removed");
    assert!(
        !t.fast_filter_on(&qg),
        "the filter was removed from the shared block"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(t.fast_filter_on(&qr) && t.fast_filter_on(&qg)) {
        assert!(
            Instant::now() < deadline,
            "reconcile did not put {FAST_FWD} back on {qr} within 60 s\n{}",
            t.d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server"
    );
    let before = t.counter("fast_forwarded");
    let (received, out) = Topology::ping(&t.vm, &SERVER.to_string(), 5, &["-i", "0.05", "-q"]);
    assert!(received > 0, "{out}");
    assert!(
        t.counter("fast_forwarded") > before,
        "the fast path works again"
    );
}

/// The router namespace's neighbour entry of `ip` on `dev`: (lladdr, state).
fn neighbour(t: &Topology, dev: &str, ip: &str) -> Option<(String, String)> {
    tests::neighbour(&t.router_ns, dev, ip)
}

#[test]
fn a_stale_neighbour_whose_mac_changed_is_probed_again() {
    let t = Topology::new(FAST_CONFIG);
    let qg = t.qg();
    // Short neighbour timers on qg- (REACHABLE ~1 s, then DELAY 1 s before probing).
    let rns = t.router_ns.clone();
    for (key, value) in [
        ("base_reachable_time_ms", "1000"),
        ("delay_first_probe_time", "1"),
    ] {
        let path = format!("/proc/sys/net/ipv4/neigh/{qg}/{key}");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{rns}"))
            .args(["sh", "-c", &format!("echo {value} > {path}")])
            .output()
            .expect("nsenter");
        assert!(out.status.success(), "writing {path}: {out:?}");
    }
    assert!(
        Topology::ping_until(&t.vm, &SERVER.to_string(), 20),
        "the VM cannot reach the server\n{}",
        t.d.log()
    );
    // Fast-path traffic until the router's entry is STALE: nothing the kernel sees uses it any
    // more, so without the daemon's refresh it would stay so (the slow-path packets that
    // resolved it would have it probed on expiry). Bounded: the change below must be
    // recovered from whatever state the entry is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let old_mac = loop {
        assert!(
            Topology::ping(&t.vm, &SERVER.to_string(), 1, &[]).0 == 1,
            "the VM lost the server before the MAC change"
        );
        let (mac, state) =
            neighbour(&t, &qg, &SERVER.to_string()).expect("the router knows the server's MAC");
        if state == "STALE" || Instant::now() > deadline {
            break mac;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The server changes its MAC without telling anyone (no gratuitous ARP: arp_notify is 0).
    let new_mac = "02:00:5e:10:00:42";
    assert_ne!(old_mac, new_mac);
    t.server
        .ip(&["link", "set", "dev", "eth0", "address", new_mac]);
    // Only a probe of the router's entry can find the new MAC: the fast path keeps using the
    // entry without the kernel seeing it used, so only the daemon's refresh gets it probed.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if Topology::ping(&t.vm, &SERVER.to_string(), 1, &[]).0 == 1
            && neighbour(&t, &qg, &SERVER.to_string()).is_some_and(|(m, _)| m == new_mac)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic did not recover within 90 s of the server's MAC change; the router's entry: {:?}\n{}",
            neighbour(&t, &qg, &SERVER.to_string()),
            t.d.log()
        );
    }
}

#[test]
fn routers_of_one_daemon_each_take_the_fast_path() {
    // The kernel numbers devices per namespace: left to itself, every router's first `qr-`
    // would share one ifindex and one `FAST_IFS` key, and only one router would be fast.
    let t = Topology::new(FAST_CONFIG);
    let d = &t.d;
    d.cli_ok(&["network", "create", "tenant3"]);
    d.cli_ok(&[
        "subnet",
        "create",
        "tenant3-v4",
        "--network",
        "tenant3",
        "--cidr",
        "10.42.0.0/24",
    ]);
    let r2 = d.cli_json(&["router", "create", "r2"]);
    d.cli_ok(&["router", "interface", "add", "r2", "tenant3-v4"]);
    d.cli_json(&["gateway", "set", "r2", "public"]);
    let vm3 = Netns {
        name: unique("fpv"),
    };
    d.cli_json(&[
        "port",
        "create",
        "--network",
        "tenant3",
        "--netns",
        &vm3.name,
    ]);
    let r2_ns = names::router_netns(&id(&r2));
    let index_of = |ns: &str, prefix: &str| -> Vec<u64> {
        tests::ip_json(ns, &["link", "show"])
            .as_array()
            .expect("links")
            .iter()
            .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|l| l["ifindex"].as_u64().expect("ifindex"))
            .collect()
    };
    let mut all: Vec<u64> = Vec::new();
    for ns in [t.router_ns.clone(), r2_ns.clone()] {
        all.extend(index_of(&ns, "qr-"));
        all.extend(index_of(&ns, "qg-"));
    }
    let mut unique_idx = all.clone();
    unique_idx.sort();
    unique_idx.dedup();
    assert_eq!(
        unique_idx.len(),
        all.len(),
        "router devices share ifindexes across namespaces: {all:?}"
    );
    for (vm, router) in [(&t.vm, "r1"), (&vm3, "r2")] {
        assert!(
            Topology::ping_until(vm, &SERVER.to_string(), 20),
            "{router}: the VM cannot reach the server\n{}",
            d.log()
        );
        let before = d.cli_json(&["stats", router])["fast_forwarded"]
            .as_u64()
            .expect("counter");
        let (received, out) = Topology::ping(vm, &SERVER.to_string(), 10, &["-i", "0.05", "-q"]);
        assert!(received > 0, "{out}");
        let after = d.cli_json(&["stats", router])["fast_forwarded"]
            .as_u64()
            .expect("counter");
        assert!(
            after - before >= 2 * u64::from(received),
            "{router}: fast_forwarded grew by {} for {received} echo exchanges\n{}",
            after - before,
            d.log()
        );
    }
    drop(vm3);
}
