//! Floating IPs, port forwarding and the metadata proxy end to end: a real daemon in a
//! throwaway host namespace, driven through the CLI and the API; VM namespaces plugged by
//! `port create --netns`; an "internet" namespace on the external bridge; real TCP, UDP, ICMP
//! and ARP.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use router_common::programs;
use router_ctl::model::spec::names;
use serde_json::{Value, json};
use tests::{
    Netns,
    daemon::{Daemon, DaemonOptions},
    enter_named, tc_filters,
    topo::{self, Internet},
    unique, veth,
};

const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// `floatingip create public` with `extra` arguments; returns the floating IP and its
/// address.
fn create_fip(d: &Daemon, extra: &[&str]) -> (Value, Ipv4Addr) {
    let f = d.cli_json(&[&["floatingip", "create", "public"][..], extra].concat());
    let ip = s(&f["floating_ip_address"])
        .parse()
        .expect("floating IP address");
    (f, ip)
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// An external network with the internet behind its bridge, a tenant network with two VMs,
/// and router `r1` with an interface on the tenant subnet and its gateway on the external one.
struct Topology {
    // Field order is drop order: namespaces first, then the daemon (whose drop purges).
    vm1: Netns,
    vm2: Netns,
    inet: Netns,
    vm1_port: String,
    vm2_port: String,
    vm1_ip: Ipv4Addr,
    vm2_ip: Ipv4Addr,
    router_id: String,
    gw_ip: Ipv4Addr,
    gw_mac: String,
    d: Daemon,
    host: Netns,
}

impl Topology {
    fn new(opts: DaemonOptions) -> Self {
        let host = Netns::new("fh");
        let d = Daemon::start_with(&host, opts);
        let inet = Internet::new(&host, &d, "fi", 60).ns;
        // Gratuitous ARPs create neighbour entries here, so the test can see them.
        inet.run("sysctl", &["-qw", "net.ipv4.conf.eth0.arp_accept=1"]);

        topo::tenant_network(&d, "tenant", "10.40.0.0/24");
        let router = d.cli_json(&["router", "create", "r1"]);
        let router_id = s(&router["id"]);
        d.cli_ok(&["router", "interface", "add", "r1", "tenant-v4"]);
        let (_, gw_ip) = topo::set_gateway(&d, "r1");
        let gw_ip: Ipv4Addr = gw_ip.parse().expect("gateway IP");
        let (_, ports) = d.get(&format!("/v2.0/ports?device_id={router_id}"));
        let gw_mac = ports["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["device_owner"] == "network:router_gateway")
            .map(|p| s(&p["mac_address"]))
            .unwrap_or_else(|| panic!("no gateway port in {ports}"));

        let plug = |name: &str| {
            let (vm, port, ip) = topo::vm(&d, "tenant", "fv", &["--name", name]);
            (vm, s(&port["id"]), ip.parse::<Ipv4Addr>().expect("port IP"))
        };
        let (vm1, vm1_port, vm1_ip) = plug("vm1");
        let (vm2, vm2_port, vm2_ip) = plug("vm2");
        Self {
            vm1,
            vm2,
            inet,
            vm1_port,
            vm2_port,
            vm1_ip,
            vm2_ip,
            router_id,
            gw_ip,
            gw_mac,
            d,
            host,
        }
    }

    fn router_ns(&self) -> String {
        names::router_netns(&self.router_id)
    }

    /// `router-ctl sessions r1`, as JSON.
    /// TCP from the internet to `to`, accepted by `vm` on `port`, which sees the internet's
    /// own address; returns the VM's listener (still listening) and the internet's end.
    fn tcp_in(
        &self,
        vm: &Netns,
        port: u16,
        to: SocketAddr,
        what: &str,
    ) -> (TcpListener, TcpStream) {
        let l = listen(vm, port);
        let c = connect(&self.inet, to).unwrap_or_else(|| panic!("{what}\n{}", self.d.log()));
        let from = (INTERNET, c.local_addr().expect("local").port()).into();
        assert_eq!(accepted(&l), Some(from), "{what}");
        (l, c)
    }

    /// UDP from the internet to `to`, answered by `vm` on `port`: the VM sees the internet's
    /// own address, the answer comes back from `to`.
    fn udp_in(&self, vm: &Netns, port: u16, to: SocketAddr, what: &str) {
        let u = vm.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind"));
        let (seen, answer) =
            udp_exchange(&self.inet, &u, to).unwrap_or_else(|| panic!("{what}\n{}", self.d.log()));
        assert_eq!(seen.ip(), std::net::IpAddr::V4(INTERNET), "{what}");
        assert_eq!(answer, to, "{what}");
    }

    fn sessions(&self) -> Vec<Value> {
        self.d
            .cli_json(&["sessions", "r1"])
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("sessions is not a list"))
    }

    /// The tap of the router's interface on the tenant network (daemon namespace).
    fn qr_tap(&self) -> String {
        let (_, ports) = self
            .d
            .get(&format!("/v2.0/ports?device_id={}", self.router_id));
        ports["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["device_owner"] == "network:router_interface")
            .map(|p| names::tap_dev(&s(&p["id"])))
            .expect("interface port")
    }

    /// Programs of the filters on the interface tap's `hook` (ingress, egress).
    fn qr_progs(&self, hook: &str) -> Vec<String> {
        tc_filters(&self.host, &self.qr_tap(), hook)
            .into_iter()
            .map(|f| f.prog)
            .collect()
    }

    /// Asserts the interface tap runs the hairpin hook (`internal_in` on egress, one filter)
    /// or, `false`, no filter at all.
    #[track_caller]
    fn assert_hairpin_hook(&self, attached: bool) {
        let want: Vec<String> = if attached {
            vec![programs::INTERNAL_IN.to_string()]
        } else {
            Vec::new()
        };
        assert_eq!(self.qr_progs("egress"), want, "egress of the interface tap");
        assert_eq!(
            self.qr_progs("ingress"),
            Vec::<String>::new(),
            "ingress of the interface tap"
        );
    }

    /// `router-ctl stats r1`, as JSON.
    fn stats(&self) -> Value {
        self.d.cli_json(&["stats", "r1"])
    }
}

/// A TCP listener inside `ns` on `port` (non-blocking accept).
fn listen(ns: &Netns, port: u16) -> TcpListener {
    let l = ns.enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind"));
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Connects from `ns` to `to`; the stream once the handshake completed.
fn connect(ns: &Netns, to: SocketAddr) -> Option<TcpStream> {
    ns.enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok())
}

/// The peer of the next accepted connection (bounded wait), if any.
fn accepted(l: &TcpListener) -> Option<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.accept() {
            Ok((_, peer)) => return Some(peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A UDP exchange: `client` (in `from`) sends to `to`; `server` (in the other namespace,
/// bound already) answers to whoever it saw. Returns (source the server saw, source of the
/// answer the client got), or None if either leg was lost.
fn udp_exchange(
    from: &Netns,
    server: &UdpSocket,
    to: SocketAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    let client = from.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"));
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    client.send_to(b"ping", to).expect("send");
    let mut buf = [0u8; 64];
    let (_, seen) = server.recv_from(&mut buf).ok()?;
    server.send_to(b"pong", seen).expect("reply");
    let (_, from_addr) = client.recv_from(&mut buf).ok()?;
    Some((seen, from_addr))
}

fn ping(ns: &Netns, to: Ipv4Addr) -> bool {
    ns.try_run("ping", &["-c", "1", "-W", "1", &to.to_string()])
        .status
        .success()
}

/// The MAC `ns` has learnt for `ip` on eth0 (None: no usable entry).
fn neighbour(ns: &Netns, ip: Ipv4Addr) -> Option<String> {
    let v = tests::ip_json(&ns.name, &["neigh", "show", &ip.to_string(), "dev", "eth0"]);
    v.as_array()?
        .iter()
        .find(|n| {
            n["state"]
                .as_array()
                .is_none_or(|s| !s.iter().any(|x| x == "FAILED"))
        })
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let v = tests::ip_json(ns, &["-4", "addr", "show", "dev", dev]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", s(&a["local"]), a["prefixlen"]))
        .collect()
}

#[test]
fn floating_ip_translates_both_ways_hairpins_and_disassociates() {
    let t = Topology::new(DaemonOptions::default());
    let d = &t.d;

    // Create: an address from the pool, not associated.
    let (f1, f1_ip) = create_fip(d, &[]);
    assert_eq!(f1["status"], "DOWN", "{f1}");
    assert!(f1["router_id"].is_null() && f1["port_id"].is_null(), "{f1}");
    assert_ne!(f1_ip, t.gw_ip);
    let qg = tests::ip_json(&t.router_ns(), &["-4", "addr"])
        .as_array()
        .expect("links")
        .iter()
        .find(|l| s(&l["ifname"]).starts_with("qg-"))
        .map(|l| s(&l["ifname"]))
        .expect("qg- device");
    assert!(
        !addresses(&t.router_ns(), &qg).contains(&format!("{f1_ip}/32")),
        "an unassociated floating IP is not on {qg}"
    );
    // Nothing to hairpin to yet: no program on the interface tap.
    t.assert_hairpin_hook(false);

    // Associate: gratuitous ARP seen on the external network, the /32 on qg-.
    assert_eq!(neighbour(&t.inet, f1_ip), None);
    let f1 = d.cli_json(&["floatingip", "set", &f1_ip.to_string(), "--port", "vm1"]);
    assert_eq!(f1["status"], "ACTIVE", "{f1}");
    assert_eq!(f1["router_id"], t.router_id.as_str(), "{f1}");
    assert_eq!(f1["fixed_ip_address"], t.vm1_ip.to_string(), "{f1}");
    assert_eq!(f1["port_id"], t.vm1_port.as_str(), "{f1}");
    t.assert_hairpin_hook(true);
    let deadline = Instant::now() + Duration::from_secs(3);
    while neighbour(&t.inet, f1_ip).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        neighbour(&t.inet, f1_ip).as_deref(),
        Some(t.gw_mac.as_str()),
        "gratuitous ARP for {f1_ip} from the gateway MAC\n{}",
        d.log()
    );
    assert!(addresses(&t.router_ns(), &qg).contains(&format!("{f1_ip}/32")));

    // ARP for the floating IP is answered on the external bridge.
    t.inet.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(ping(&t.inet, f1_ip), "ping to the floating IP\n{}", d.log());
    assert_eq!(
        neighbour(&t.inet, f1_ip).as_deref(),
        Some(t.gw_mac.as_str())
    );

    // Inbound TCP, UDP: the VM sees the real remote, the remote sees the floating IP.
    let (l1, _stream) = t.tcp_in(&t.vm1, 8080, (f1_ip, 8080).into(), "TCP to the floating IP");
    t.udp_in(&t.vm1, 9000, (f1_ip, 9000).into(), "UDP to the floating IP");

    // Outbound: VM1 leaves as its floating IP (ports kept), VM2 as the gateway IP.
    let srv = listen(&t.inet, 8081);
    let c = connect(&t.vm1, (INTERNET, 8081).into()).expect("VM1 to the internet");
    let peer = accepted(&srv).expect("accepted VM1");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(f1_ip),
        "VM1 leaves as its FIP"
    );
    assert_eq!(
        peer.port(),
        c.local_addr().expect("local").port(),
        "port kept"
    );
    connect(&t.vm2, (INTERNET, 8081).into()).expect("VM2 to the internet");
    assert_eq!(
        accepted(&srv).map(|p| p.ip()),
        Some(std::net::IpAddr::V4(t.gw_ip)),
        "VM2 (no FIP) is SNATed to the gateway IP"
    );
    assert!(ping(&t.vm1, INTERNET), "ping out from VM1");
    let u_inet = t
        .inet
        .enter(|| UdpSocket::bind((INTERNET, 5300)).expect("bind"));
    let (seen, _) = udp_exchange(&t.vm1, &u_inet, (INTERNET, 5300).into()).expect("UDP out");
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::V4(f1_ip),
        "UDP leaves as the FIP"
    );

    // Sessions and counters show floating-IP flows distinctly.
    let sessions = t.sessions();
    let fip_sessions: Vec<&Value> = sessions
        .iter()
        .filter(|x| x["kind"] == "floating_ip")
        .collect();
    assert!(
        fip_sessions.iter().any(|x| x["protocol"] == "tcp"
            && x["translated"]
                .as_str()
                .is_some_and(|a| a.starts_with(&f1_ip.to_string()))),
        "{sessions:#?}"
    );
    assert!(
        sessions.iter().any(|x| x["kind"] == "snat"),
        "{sessions:#?}"
    );
    let stats = t.stats();
    assert!(stats["fip_packets"].as_u64().unwrap_or(0) > 0, "{stats}");

    // Hairpin: VM2 (no FIP) reaches VM1 through VM1's FIP; VM1 sees the gateway IP.
    let c = connect(&t.vm2, (f1_ip, 8080).into())
        .unwrap_or_else(|| panic!("hairpin TCP to the FIP\n{}", d.log()));
    let peer = accepted(&l1).expect("hairpin accepted");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(t.gw_ip),
        "hairpin SNAT to the gateway"
    );
    drop(c);
    assert!(ping(&t.vm2, f1_ip), "hairpin ping");
    // With its own FIP, VM2 is seen as that FIP.
    let (_, f2_ip) = create_fip(d, &["--port", "vm2"]);
    connect(&t.vm2, (f1_ip, 8080).into()).expect("hairpin FIP to FIP");
    assert_eq!(
        accepted(&l1).map(|p| p.ip()),
        Some(std::net::IpAddr::V4(f2_ip)),
        "hairpin source is the sender's FIP"
    );
    let u2 = t
        .vm2
        .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9002)).expect("bind"));
    let (seen, answer) =
        udp_exchange(&t.vm1, &u2, (f2_ip, 9002).into()).expect("hairpin UDP VM1 → FIP2");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(f1_ip));
    assert_eq!(answer, SocketAddr::from((f2_ip, 9002)));

    // Metadata without an upstream: 503 with a clear message.
    let (status, body) = metadata_get(&t.vm1).expect("metadata answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no metadata upstream is configured"),
        "{body}"
    );

    // One fixed IP, one floating IP.
    let (st, e) = d.post(
        "/v2.0/floatingips",
        &json!({"floatingip": {"floating_network_id": f1["floating_network_id"], "port_id": t.vm1_port}}),
    );
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["NeutronError"]["type"], "FloatingIPPortAlreadyAssociated");

    // Disassociate: inbound and outbound translation stop at once, the sessions go.
    let f1 = d.cli_json(&["floatingip", "unset", &f1_ip.to_string(), "--port"]);
    assert_eq!(f1["status"], "DOWN", "{f1}");
    assert!(f1["port_id"].is_null() && f1["router_id"].is_null(), "{f1}");
    let sessions = t.sessions();
    assert!(
        !sessions.iter().any(|x| x["kind"] == "floating_ip"
            && x["translated"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{f1_ip}:")))),
        "FIP sessions flushed: {sessions:#?}"
    );
    assert!(
        !ping(&t.inet, f1_ip),
        "ping to a disassociated FIP answered"
    );
    assert!(connect(&t.inet, (f1_ip, 8080).into()).is_none());
    assert_eq!(accepted(&l1), None);
    connect(&t.vm1, (INTERNET, 8081).into()).expect("VM1 to the internet after unset");
    assert_eq!(
        accepted(&srv).map(|p| p.ip()),
        Some(std::net::IpAddr::V4(t.gw_ip)),
        "VM1 is SNATed to the gateway IP once disassociated"
    );
    assert!(!addresses(&t.router_ns(), &qg).contains(&format!("{f1_ip}/32")));

    // The gateway cannot go while a FIP needs it; deleting the FIPs frees it.
    let (st, e) = d.put(
        &format!("/v2.0/routers/{}", t.router_id),
        &json!({"router": {"external_gateway_info": {}}}),
    );
    assert_eq!(st, 409, "{e}");
    d.cli_ok(&[
        "floatingip",
        "delete",
        &f2_ip.to_string(),
        &f1_ip.to_string(),
    ]);
    assert_eq!(d.cli_json(&["floatingip", "list"]), json!([]));
    assert_eq!(
        addresses(&t.router_ns(), &qg),
        vec![format!("{}/24", t.gw_ip)],
        "only the gateway address is left on {qg}"
    );

    // The last floating IP gone, the hairpin hook is off the interface tap; removing the
    // interface takes the tap away.
    t.assert_hairpin_hook(false);
    let qr_tap = t.qr_tap();
    d.cli_ok(&["router", "interface", "remove", "r1", "tenant-v4"]);
    assert!(!t.host.has_link(&qr_tap), "{qr_tap} left behind");
    let _ = (&t.host, &t.vm2_ip);
}

/// GET http://169.254.169.254/latest/meta-data/ from inside `vm`: (status, body).
fn metadata_get(vm: &Netns) -> Option<(u16, String)> {
    vm.enter(|| {
        let mut s =
            TcpStream::connect_timeout(&(METADATA, 80).into(), Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(
            b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text))
    })
}

#[test]
fn port_forwarding_tcp_and_udp_to_two_internal_ports() {
    let t = Topology::new(DaemonOptions::default());
    let d = &t.d;
    let (_, fip) = create_fip(d, &[]);
    let pf_tcp = d.cli_json(&[
        "floatingip",
        "port-forwarding",
        "create",
        &fip.to_string(),
        "--protocol",
        "tcp",
        "--external-port",
        "2222",
        "--port",
        "vm1",
        "--internal-port",
        "22",
    ]);
    assert_eq!(pf_tcp["internal_ip_address"], t.vm1_ip.to_string());
    d.cli_ok(&[
        "floatingip",
        "port-forwarding",
        "create",
        &fip.to_string(),
        "--protocol",
        "udp",
        "--external-port",
        "5353",
        "--port",
        "vm2",
        "--internal-port",
        "53",
    ]);
    let f = d.cli_json(&["floatingip", "show", &fip.to_string()]);
    assert_eq!(f["router_id"], t.router_id.as_str(), "{f}");
    assert_eq!(f["status"], "ACTIVE");

    // TCP 2222 → VM1:22; the external host sees fip:2222 answering.
    let (l, c) = t.tcp_in(&t.vm1, 22, (fip, 2222).into(), "TCP to the forwarded port");
    assert_eq!(c.peer_addr().expect("peer"), SocketAddr::from((fip, 2222)));
    // UDP 5353 → VM2:53; the answer comes from fip:5353.
    t.udp_in(&t.vm2, 53, (fip, 5353).into(), "UDP to the forwarded port");
    // Other ports of the FIP are not forwarded.
    let l_other = listen(&t.vm1, 2222);
    assert!(connect(&t.inet, (fip, 2222 + 1).into()).is_none());
    assert_eq!(accepted(&l_other), None);

    let sessions = t.sessions();
    assert!(
        sessions.iter().any(|x| x["kind"] == "port_forwarding"
            && x["protocol"] == "tcp"
            && x["translated"] == format!("{fip}:2222").as_str()),
        "{sessions:#?}"
    );
    assert!(
        sessions
            .iter()
            .any(|x| x["kind"] == "port_forwarding" && x["protocol"] == "udp"),
        "{sessions:#?}"
    );
    assert!(t.stats()["pf_packets"].as_u64().unwrap_or(0) > 0);

    // Duplicates: same FIP+protocol+external port, or same internal ip+port+protocol.
    let fid = s(&f["id"]);
    let path = format!("/v2.0/floatingips/{fid}/port_forwardings");
    for body in [
        json!({"protocol": "tcp", "external_port": 2222, "internal_port_id": t.vm2_port, "internal_port": 80}),
        json!({"protocol": "tcp", "external_port": 2223, "internal_port_id": t.vm1_port, "internal_port": 22}),
    ] {
        let (st, e) = d.post(&path, &json!({ "port_forwarding": body }));
        assert_eq!(st, 409, "{e}");
    }
    // An associated port forwarding FIP refuses association.
    let (st, e) = d.put(
        &format!("/v2.0/floatingips/{fid}"),
        &json!({"floatingip": {"port_id": t.vm1_port}}),
    );
    assert_eq!(st, 409, "{e}");

    // Deleting the forwarding stops it.
    d.cli_ok(&[
        "floatingip",
        "port-forwarding",
        "delete",
        &fip.to_string(),
        &s(&pf_tcp["id"]),
    ]);
    assert!(connect(&t.inet, (fip, 2222).into()).is_none());
    assert_eq!(accepted(&l), None);
    let _ = (&t.host, &t.vm2_ip, &t.gw_mac, &t.vm2_port);
}

/// A one-shot fake metadata service in `ns` on `addr`: answers the first request with 200 and
/// returns its head.
fn fake_upstream(ns: &Netns, addr: SocketAddr) -> std::thread::JoinHandle<String> {
    let l = ns.enter(|| TcpListener::bind(addr).expect("bind the upstream"));
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("upstream accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
            if s.read(&mut b).unwrap_or(0) == 0 {
                break;
            }
            head.push(b[0]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ni-123")
            .expect("upstream answer");
        String::from_utf8_lossy(&head).into_owned()
    })
}

#[test]
fn metadata_reaches_the_upstream_with_router_and_instance_headers() {
    // The upstream lives in its own namespace, reached from the daemon's host namespace.
    let meta = Netns::new("fm");
    let host_probe = unique("fmh");
    let cfg = "[metadata]\nupstream = \"http://10.199.0.2:8775\"\n".to_string();
    let t = Topology::new(DaemonOptions::config(cfg));
    veth(&t.host, &host_probe, &meta, "eth0");
    t.host
        .ip(&["addr", "add", "10.199.0.1/30", "dev", &host_probe]);
    meta.ip(&["addr", "add", "10.199.0.2/30", "dev", "eth0"]);

    let upstream = fake_upstream(&meta, "10.199.0.2:8775".parse().expect("addr"));
    let (status, body) =
        metadata_get(&t.vm1).unwrap_or_else(|| panic!("no metadata answer\n{}", t.d.log()));
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("i-123"), "{body}");
    let head = upstream.join().expect("upstream thread").to_lowercase();
    assert!(
        head.starts_with("get /latest/meta-data/instance-id http/1.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!("x-neutron-router-id: {}", t.router_id)),
        "{head}"
    );
    assert!(
        head.contains(&format!("x-forwarded-for: {}", t.vm1_ip)),
        "{head}"
    );

    // Served on port 80 itself, with no program on the router's internal side: this router has
    // no floating IP.
    t.assert_hairpin_hook(false);
    let listening = enter_named(&t.router_ns(), || {
        TcpStream::connect_timeout(&(METADATA, 80).into(), Duration::from_secs(2)).is_ok()
    });
    assert!(
        listening,
        "no metadata proxy on port 80 inside the router namespace"
    );
    // Nothing listens on Neutron's 9697 any more (nothing redirects to it).
    assert!(
        connect(&t.vm2, (METADATA, 9697).into()).is_none(),
        "TCP to {METADATA}:9697 was accepted"
    );
    // The external network cannot reach the proxy, even with a route to it through the router.
    t.inet.ip(&[
        "route",
        "add",
        "169.254.169.254/32",
        "via",
        &t.gw_ip.to_string(),
    ]);
    assert!(
        connect(&t.inet, (METADATA, 80).into()).is_none(),
        "the metadata proxy is reachable from the external network"
    );
    // A second request from the other VM names that VM.
    let upstream = fake_upstream(&meta, "10.199.0.2:8775".parse().expect("addr"));
    let (status, body) =
        metadata_get(&t.vm2).unwrap_or_else(|| panic!("no metadata answer\n{}", t.d.log()));
    assert_eq!(status, 200, "{body}");
    let head = upstream.join().expect("upstream thread").to_lowercase();
    assert!(
        head.contains(&format!("x-forwarded-for: {}", t.vm2_ip)),
        "{head}"
    );
    let _ = (
        &t.inet,
        &t.vm1_port,
        &t.vm2_port,
        &t.vm2_ip,
        &t.gw_ip,
        &t.gw_mac,
    );
}

#[test]
fn floating_ips_forwardings_and_metadata_survive_a_daemon_restart() {
    let mut t = Topology::new(DaemonOptions::config("reconcile_interval = 1\n"));
    let (_, f1_ip) = create_fip(&t.d, &["--port", "vm1"]);
    let (_, f2_ip) = create_fip(&t.d, &[]);
    t.d.cli_ok(&[
        "floatingip",
        "port-forwarding",
        "create",
        &f2_ip.to_string(),
        "--protocol",
        "tcp",
        "--external-port",
        "2222",
        "--port",
        "vm2",
        "--internal-port",
        "22",
    ]);
    let l1 = listen(&t.vm1, 8080);
    let l2 = listen(&t.vm2, 22);
    let mut client = connect(&t.inet, (f1_ip, 8080).into()).expect("TCP to the FIP");
    let mut server = {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match l1.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    };
    server.set_nonblocking(false).expect("blocking");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
    }
    let echo = |client: &mut TcpStream, server: &mut TcpStream, what: &str| {
        let mut buf = [0u8; 5];
        client.write_all(b"hello").expect("client write");
        server
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: server read: {e}"));
        server.write_all(b"world").expect("server write");
        client
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: client read: {e}"));
        assert_eq!(&buf, b"world");
    };
    echo(&mut client, &mut server, "before the restart");
    assert_eq!(metadata_get(&t.vm1).map(|r| r.0), Some(503));
    t.assert_hairpin_hook(true);
    let hairpin_prog = tc_filters(&t.host, &t.qr_tap(), "egress")[0].prog_id;

    // Daemon down: the datapath keeps translating.
    t.d.kill9();
    echo(&mut client, &mut server, "while the daemon is down");
    assert!(connect(&t.inet, (f2_ip, 2222).into()).is_some());
    assert!(accepted(&l2).is_some(), "port forwarding while down");

    // Back: the same connection flows, the proxy answers again, the API sees it all.
    t.d.restart();
    echo(&mut client, &mut server, "after the restart");
    assert_eq!(
        metadata_get(&t.vm1).map(|r| r.0),
        Some(503),
        "metadata proxy after the restart\n{}",
        t.d.log()
    );
    assert!(connect(&t.inet, (f2_ip, 2222).into()).is_some());
    assert!(accepted(&l2).is_some(), "port forwarding after the restart");
    // The router still has floating IPs: the hook stays, now running the new daemon's program.
    t.assert_hairpin_hook(true);
    assert_ne!(
        tc_filters(&t.host, &t.qr_tap(), "egress")[0].prog_id,
        hairpin_prog,
        "the hairpin filter still runs the old daemon's program"
    );
    let f = t.d.cli_json(&["floatingip", "show", &f1_ip.to_string()]);
    assert_eq!(f["port_id"], t.vm1_port.as_str());
    let sessions = t.sessions();
    assert!(
        sessions.iter().any(|x| x["kind"] == "floating_ip"
            && x["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with("203.0.113.1:"))),
        "{sessions:?}"
    );
    // Disassociating after the restart still takes effect at once.
    t.d.cli_ok(&["floatingip", "unset", &f1_ip.to_string(), "--port"]);
    client.write_all(b"hello").expect("client write");
    let mut buf = [0u8; 5];
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    assert!(
        server.read_exact(&mut buf).is_err(),
        "data still reaches the VM through a disassociated FIP"
    );

    // The router namespace deleted from outside: reconcile rebuilds it, and the metadata proxy
    // follows it into the new namespace (its old listener must not keep the old one).
    tests::ip(&["netns", "del", &t.router_ns()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let rebuilt = || {
        tests::netns_exists(&t.router_ns())
            && tests::ip_json(&t.router_ns(), &["link"])
                .as_array()
                .is_some_and(|l| l.iter().any(|d| s(&d["ifname"]).starts_with("qr-")))
    };
    while !rebuilt() {
        assert!(
            Instant::now() < deadline,
            "router namespace not rebuilt\n{}",
            t.d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    while metadata_get(&t.vm1).map(|r| r.0) != Some(503) {
        assert!(
            Instant::now() < deadline,
            "no metadata proxy after the namespace was rebuilt\n{}",
            t.d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
