//! Real traffic through the real datapath, without the daemon: the Neutron shape built with
//! `ip` in namespaces this test creates —
//!
//! ```text
//!  vm1 10.0.0.5 ─┐                                  host ns (daemon's)
//!  vm2 10.0.2.6 ─┼─ qr* ── router ns ── qg 192.0.2.10 ══ tap* ── br ── hop ns ── srv ns
//!  vm3 10.0.1.7 ─┘         (forwarding,                       192.0.2.1  203.0.113.1  203.0.113.9
//!                           default via 192.0.2.1)
//! ```
//!
//! The programs are attached with `Datapath::attach` to the tap from a thread inside the host
//! namespace. Neither the hop nor the server has a route to 10.0.0.0/8, so every reply that
//! reaches a VM proves the translation both ways; the servers also report the source they saw.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use router_common::programs;
use router_ctl::{
    config::NatConfig,
    datapath::{Datapath, RouterNat, filter},
};
use tests::{Bpffs, Netns, tc_filters, unique, veth};

const GW: &str = "192.0.2.10";
const SRV: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const HOP_EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

struct Topology {
    vm1: Netns,
    vm2: Netns,
    vm3: Netns,
    router: Netns,
    host: Netns,
    hop: Netns,
    srv: Netns,
    tap: String,
}

impl Topology {
    /// A datapath pinned in `bpffs`, attached to the gateway tap, with router `dp_id`
    /// (10.0.0.0/24 SNATed to the gateway address) on it.
    fn attached(&self, bpffs: &Bpffs, dp_id: u32) -> std::sync::Arc<Datapath> {
        let dp = Datapath::open(bpffs.path(), &NatConfig::default()).expect("open");
        let ifindex = self.host.enter(|| dp.attach(&self.tap)).expect("attach");
        dp.configure_router(&gw_router(dp_id, ifindex, &["10.0.0.0/24"]))
            .expect("configure");
        dp
    }
}

/// Router `dp_id` on the gateway tap `ifindex`, SNATing `cidrs` to the gateway address.
fn gw_router(dp_id: u32, ifindex: u32, cidrs: &[&str]) -> RouterNat {
    RouterNat {
        dp_id,
        ifindex,
        gateway_ip: GW.parse().unwrap(),
        enable_snat: true,
        internal_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn forwarding(ns: &Netns) {
    ns.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward"));
}

/// Turns TX checksum offload of `dev` (in `ns`) on or off through the ethtool ioctl.
///
/// With it off, a CHECKSUM_PARTIAL packet leaving `dev` gets its checksum finished in software
/// right there (`skb_checksum_help`). Veth receivers trust CHECKSUM_PARTIAL without checking,
/// so without this a datapath that broke the partial pseudo-header sum would go unnoticed.
fn set_tx_checksum(ns: &Netns, dev: &str, on: bool) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    ns.enter(|| {
        let mut val = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: on as u32,
        };
        // SAFETY: zeroed ifreq is valid; the name fits (checked) and data points to `val`.
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            assert!(dev.len() < ifr.ifr_name.len());
            for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = (&mut val as *mut EthtoolValue).cast();
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0, "socket");
            let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(rc, 0, "ETHTOOL_STXCSUM on {dev}: {err}");
        }
    });
}

fn build() -> Topology {
    let vm1 = Netns::new("nvm");
    let vm2 = Netns::new("nvm");
    let vm3 = Netns::new("nvm");
    let router = Netns::new("nrt");
    let host = Netns::new("nhs");
    let hop = Netns::new("nhp");
    let srv = Netns::new("nsv");
    // VMs on three internal subnets, each behind its own qr- port.
    for (vm, ip, gw, qr, net) in [
        (&vm1, "10.0.0.5/24", "10.0.0.1", "qr1", "10.0.0.1/24"),
        (&vm2, "10.0.2.6/24", "10.0.2.1", "qr2", "10.0.2.1/24"),
        (&vm3, "10.0.1.7/24", "10.0.1.1", "qr3", "10.0.1.1/24"),
    ] {
        veth(vm, "eth0", &router, qr);
        vm.ip(&["addr", "add", ip, "dev", "eth0"]);
        vm.ip(&["route", "add", "default", "via", gw]);
        router.ip(&["addr", "add", net, "dev", qr]);
    }
    // Gateway port: qg- in the router, its tap peer on the host's external bridge.
    let tap = unique("tap");
    veth(&router, "qg", &host, &tap);
    router.ip(&["addr", "add", &format!("{GW}/24"), "dev", "qg"]);
    router.ip(&["route", "add", "default", "via", &HOP_EXT.to_string()]);
    forwarding(&router);
    host.ip(&["link", "add", "name", "brx", "type", "bridge"]);
    host.ip(&["link", "set", "brx", "up"]);
    host.ip(&["link", "set", &tap, "master", "brx"]);
    veth(&host, "hx", &hop, "hg");
    host.ip(&["link", "set", "hx", "master", "brx"]);
    // Finish checksums in software right after the hooks, in both directions: the receivers
    // then verify what the datapath did to CHECKSUM_PARTIAL packets.
    set_tx_checksum(&host, &tap, false);
    set_tx_checksum(&host, "hx", false);
    hop.ip(&["addr", "add", &format!("{HOP_EXT}/24"), "dev", "hg"]);
    veth(&hop, "hs", &srv, "eth0");
    hop.ip(&["addr", "add", "203.0.113.1/24", "dev", "hs"]);
    forwarding(&hop);
    srv.ip(&["addr", "add", &format!("{SRV}/24"), "dev", "eth0"]);
    srv.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    Topology {
        vm1,
        vm2,
        vm3,
        router,
        host,
        hop,
        srv,
        tap,
    }
}

/// A UDP server in a namespace: answers `who` with the source address it saw, and echoes any
/// other payload back unchanged. Runs until dropped (bounded to 120 s).
struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl UdpServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let sock = ns.enter(|| UdpSocket::bind(addr).expect("bind UDP server"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    if &buf[..n] == b"who" {
                        let _ = sock.send_to(peer.to_string().as_bytes(), peer);
                    } else {
                        let _ = sock.send_to(&buf[..n], peer);
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `payload` and waits for one answer, retrying a few times (first packets may wait on
/// ARP). Panics when nothing comes back.
fn udp_ask(sock: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        sock.send_to(payload, to).expect("send");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, to, "answer from the server");
            return buf[..n].to_vec();
        }
    }
    panic!("no UDP answer from {to}");
}

/// A TCP server answering each connection with the peer address it saw.
fn tcp_server(ns: &Netns, addr: SocketAddr, conns: usize) -> JoinHandle<Vec<String>> {
    let l = ns.enter(|| TcpListener::bind(addr).expect("bind TCP server"));
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while seen.len() < conns && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(peer.to_string().as_bytes());
                    seen.push(peer.to_string());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        seen
    })
}

fn tcp_ask(ns: &Netns, to: SocketAddr) -> String {
    ns.enter(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("TCP connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("TCP read");
        out
    })
}

/// Reads one queued ICMP error of a socket with IP_RECVERR: (ICMP type, code, offender).
fn recv_icmp_error(sock: &UdpSocket) -> Option<(u8, u8, Ipv4Addr)> {
    let mut data = [0u8; 2048];
    let mut control = [0u8; 512];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr is valid; pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: valid socket and message buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE) };
    if n < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel just wrote.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_RECVERR {
                let ee = libc::CMSG_DATA(c) as *const libc::sock_extended_err;
                let off = libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in;
                let addr = Ipv4Addr::from(u32::from_be((*off).sin_addr.s_addr));
                return Some(((*ee).ee_type, (*ee).ee_code, addr));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    None
}

#[test]
fn snat_end_to_end() {
    let t = build();
    let bpffs = Bpffs::new();
    let dp = Datapath::open(bpffs.path(), &NatConfig::default())
        .unwrap_or_else(|e| panic!("open datapath: {e:#}"));
    // A device that does not exist: a clear error and no filter anywhere.
    let err = t
        .host
        .enter(|| dp.attach("nosuchdev0"))
        .expect_err("attach to nothing");
    assert!(format!("{err:#}").contains("nosuchdev0"), "{err:#}");
    assert_eq!(filters(&t.host, &t.tap), (0, 0));
    let ifindex = t
        .host
        .enter(|| dp.attach(&t.tap))
        .unwrap_or_else(|e| panic!("attach: {e:#}"));
    assert_eq!(ifindex, t.host.ifindex(&t.tap));
    // Attaching again (a daemon resync) keeps working and changes nothing.
    assert_eq!(
        t.host.enter(|| dp.attach(&t.tap)).expect("re-attach"),
        ifindex
    );
    assert_eq!(filters(&t.host, &t.tap), (1, 1), "one filter per hook");
    dp.configure_router(&gw_router(
        11,
        ifindex,
        &["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"],
    ))
    .expect("configure router");

    let udp_srv = UdpServer::start(&t.srv, SocketAddr::from((SRV, 5353)));

    // UDP: the server sees the gateway address; the answer reaches the VM.
    let s1 = t
        .vm1
        .enter(|| UdpSocket::bind("0.0.0.0:40000").expect("bind vm1"));
    let seen = String::from_utf8(udp_ask(&s1, udp_srv.addr, b"who")).expect("utf8");
    assert_eq!(seen, format!("{GW}:40000"), "UDP source seen by the server");

    // Two VMs, same source port, same server: both work, on different NAT ports.
    let s2 = t
        .vm2
        .enter(|| UdpSocket::bind("0.0.0.0:40000").expect("bind vm2"));
    let seen2 = String::from_utf8(udp_ask(&s2, udp_srv.addr, b"who")).expect("utf8");
    assert!(seen2.starts_with(&format!("{GW}:")), "vm2 seen as {seen2}");
    assert_ne!(seen2, seen, "two flows share one NAT port");
    let again = String::from_utf8(udp_ask(&s1, udp_srv.addr, b"who")).expect("utf8");
    assert_eq!(again, seen, "vm1 keeps its mapping");

    // TCP.
    let tcp = tcp_server(&t.srv, SocketAddr::from((SRV, 8080)), 1);
    let peer = tcp_ask(&t.vm1, SocketAddr::from((SRV, 8080)));
    assert!(
        peer.starts_with(&format!("{GW}:")),
        "TCP source seen as {peer}"
    );
    assert_eq!(tcp.join().expect("tcp server").len(), 1);

    // ICMP echo.
    let out = t.vm1.try_run(
        "ping",
        &["-c", "2", "-i", "0.3", "-W", "2", &SRV.to_string()],
    );
    assert!(
        out.status.success(),
        "ping from vm1: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A 4000-byte datagram crosses intact both ways (fragmented on 1500-byte links).
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(udp_ask(&s1, udp_srv.addr, &big), big, "4000-byte UDP echo");

    // Traceroute-like: TTL 2 expires at the hop beyond the router; the time-exceeded error
    // comes back translated and matches the VM's socket.
    let probe = t
        .vm1
        .enter(|| UdpSocket::bind("0.0.0.0:40100").expect("bind probe"));
    let on: libc::c_int = 1;
    // SAFETY: valid socket and option value.
    let rc = unsafe {
        libc::setsockopt(
            probe.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_RECVERR");
    probe.set_ttl(2).expect("ttl");
    probe
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut got = None;
    for _ in 0..3 {
        probe
            .send_to(b"probe", SocketAddr::from((SRV, 33434)))
            .expect("send probe");
        let mut b = [0u8; 64];
        if let Err(e) = probe.recv_from(&mut b)
            && e.raw_os_error() == Some(libc::EHOSTUNREACH)
        {
            got = recv_icmp_error(&probe);
            break;
        }
    }
    assert_eq!(
        got,
        Some((11, 0, HOP_EXT)),
        "time exceeded from the hop reaches the VM socket"
    );
    // The same for ICMP echo (an error quoting an echo request).
    let out = t
        .vm1
        .try_run("ping", &["-c", "1", "-t", "2", "-W", "2", &SRV.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {HOP_EXT}")) && text.contains("exceeded"),
        "ping -t 2: {text}"
    );

    // East-west between internal subnets keeps the original source and opens no session.
    let ew = UdpServer::start(&t.vm3, SocketAddr::from(([10, 0, 1, 7], 7000)));
    let seen = String::from_utf8(udp_ask(&s1, ew.addr, b"who")).expect("utf8");
    assert_eq!(seen, "10.0.0.5:40000", "east-west source");

    // The router's own traffic and pings to the gateway IP are untouched.
    let out = t
        .router
        .try_run("ping", &["-c", "1", "-W", "2", &SRV.to_string()]);
    assert!(out.status.success(), "ping from the router itself");
    let out = t.srv.try_run("ping", &["-c", "1", "-W", "2", GW]);
    assert!(out.status.success(), "ping to the gateway IP");

    let sessions = dp.sessions(11).expect("sessions");
    assert!(
        sessions
            .iter()
            .all(|s| s.remote.ip() != &Ipv4Addr::new(10, 0, 1, 7)),
        "east-west opened a session: {sessions:?}"
    );
    for proto in ["udp", "tcp", "icmp"] {
        assert!(
            sessions
                .iter()
                .any(|s| s.protocol == proto && s.translated.ip().to_string() == GW),
            "no {proto} session in {sessions:?}"
        );
    }
    let stats = dp.stats(11).expect("stats");
    assert!(stats["icmp_errors"] >= 2, "{stats:?}");
    assert_eq!(stats["drop_malformed"], 0, "{stats:?}");
    assert_eq!(stats["drop_fragment"], 0, "{stats:?}");
    println!("sessions: {sessions:#?}\nstats: {stats:?}");

    drop((ew, udp_srv));
    t.host.enter(|| dp.detach(&t.tap)).expect("detach");
    dp.purge().expect("purge");
    let _ = (&t.vm2, &t.vm3, &t.hop);
}

/// Number of filters on `dev` (ingress, egress) in `ns`, each checked to be ours: priority
/// `filter::PRIORITY`, handle `filter::HANDLE`, and the hook's program.
fn filters(ns: &Netns, dev: &str) -> (usize, usize) {
    let count = |hook: &str, prog: &str| {
        let f = tc_filters(ns, dev, hook);
        for x in &f {
            assert_eq!(
                (x.pref, x.handle.as_str(), x.prog.as_str()),
                (u64::from(filter::PRIORITY), "0x1", prog),
                "{dev} {hook}: {f:?}"
            );
        }
        f.len()
    };
    (
        count("ingress", programs::SNAT_OUT),
        count("egress", programs::SNAT_IN),
    )
}

/// Kernel ids of the programs on `dev` (ingress, egress).
fn prog_ids(ns: &Netns, dev: &str) -> (Vec<u64>, Vec<u64>) {
    let ids = |hook| {
        tc_filters(ns, dev, hook)
            .iter()
            .map(|f| f.prog_id)
            .collect()
    };
    (ids("ingress"), ids("egress"))
}

#[test]
fn state_survives_a_datapath_restart() {
    let t = build();
    let bpffs = Bpffs::new();
    let nat = gw_router(12, 0, &["10.0.0.0/24", "10.0.2.0/24"]);
    let dp = Datapath::open(bpffs.path(), &NatConfig::default()).expect("open");
    let ifindex = t.host.enter(|| dp.attach(&t.tap)).expect("attach");
    dp.configure_router(&RouterNat {
        ifindex,
        ..nat.clone()
    })
    .expect("configure");
    let srv = UdpServer::start(&t.srv, SocketAddr::from((SRV, 5353)));
    let s1 = t
        .vm1
        .enter(|| UdpSocket::bind("0.0.0.0:40000").expect("bind vm1"));
    let s2 = t
        .vm2
        .enter(|| UdpSocket::bind("0.0.0.0:40000").expect("bind vm2"));
    let seen1 = String::from_utf8(udp_ask(&s1, srv.addr, b"who")).expect("utf8");
    let seen2 = String::from_utf8(udp_ask(&s2, srv.addr, b"who")).expect("utf8");
    assert_eq!(seen1, format!("{GW}:40000"));
    assert_ne!(seen2, seen1, "vm2 remapped");

    // The daemon dies without cleaning up (as with kill -9): filters and pinned maps stay.
    let ids_before = prog_ids(&t.host, &t.tap);
    drop(dp);
    assert_eq!(
        filters(&t.host, &t.tap),
        (1, 1),
        "filters outlive the process"
    );
    let again = String::from_utf8(udp_ask(&s2, srv.addr, b"who")).expect("utf8");
    assert_eq!(again, seen2, "translation continues with no daemon running");

    // A new daemon reuses the pinned maps: same sessions, same mappings.
    let dp = Datapath::open(bpffs.path(), &NatConfig::default()).expect("reopen");
    let before = dp.sessions(12).expect("sessions");
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(
        t.host.enter(|| dp.attach(&t.tap)).expect("re-attach"),
        ifindex
    );
    dp.configure_router(&RouterNat {
        ifindex,
        ..nat.clone()
    })
    .expect("reconfigure");
    assert_eq!(
        filters(&t.host, &t.tap),
        (1, 1),
        "re-attach replaced, not added"
    );
    let ids_after = prog_ids(&t.host, &t.tap);
    assert!(
        ids_after.0 != ids_before.0 && ids_after.1 != ids_before.1,
        "the filters run the new instance: {ids_before:?} → {ids_after:?}"
    );
    let again = String::from_utf8(udp_ask(&s2, srv.addr, b"who")).expect("utf8");
    assert_eq!(again, seen2, "mapping kept across the restart");
    assert_eq!(dp.sessions(12).expect("sessions").len(), 2);

    // Gateway cleared: detach and remove the router; nothing is left on the tap.
    t.host.enter(|| dp.detach(&t.tap)).expect("detach");
    assert_eq!(filters(&t.host, &t.tap), (0, 0), "detached");
    dp.remove_router(12).expect("remove router");
    assert!(dp.sessions(12).expect("sessions").is_empty());
    // Detaching again is a no-op.
    t.host.enter(|| dp.detach(&t.tap)).expect("detach twice");
    dp.purge().expect("purge");
}

/// Upgrade from a daemon that attached with TCX links pinned under `v<N>/links/`: the new
/// datapath puts its filters on the device, then removes the old pins (their links detach), so
/// the device ends with exactly one program per hook, and traffic is translated throughout.
#[test]
fn legacy_tcx_links_are_taken_over() {
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc};
    use router_ctl::datapath::bpffs;

    let t = build();
    let bpffs_dir = Bpffs::new();
    let nat = gw_router(15, t.host.ifindex(&t.tap), &["10.0.0.0/24"]);
    let dp = Datapath::open(bpffs_dir.path(), &NatConfig::default()).expect("open");
    dp.configure_router(&nat).expect("configure");
    drop(dp);

    // The old daemon: same pinned maps, programs attached with TCX, links pinned.
    let version_dir = bpffs::version_dir(bpffs_dir.path());
    let links_dir = version_dir.join("links");
    std::fs::create_dir_all(&links_dir).expect("links dir");
    {
        let mut loader = aya::EbpfLoader::new();
        let names = router_ctl::datapath::MAP_NAMES;
        let paths: Vec<_> = names.iter().map(|n| version_dir.join(n)).collect();
        for (n, p) in names.iter().zip(&paths) {
            loader.map_pin_path(n, p);
        }
        let obj = router_ctl::datapath::object().expect("object");
        let mut ebpf = loader.load(obj).expect("load with pinned maps");
        for (name, at, hook) in [
            (programs::SNAT_OUT, TcAttachType::Ingress, "ingress"),
            (programs::SNAT_IN, TcAttachType::Egress, "egress"),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("classifier");
            prog.load().expect("load program");
            let id = t
                .host
                .enter(|| {
                    prog.attach_with_options(
                        &t.tap,
                        at,
                        tc::TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                })
                .expect("TCX attach");
            let link: FdLink = prog
                .take_link(id)
                .expect("take link")
                .try_into()
                .expect("TCX link");
            link.pin(links_dir.join(bpffs::legacy_link_pin_name(&t.tap, nat.ifindex, hook)))
                .expect("pin link");
        }
    }
    assert_eq!(tcx_programs(&t.host, &t.tap), (1, 1));
    assert_eq!(filters(&t.host, &t.tap), (0, 0));
    let srv = UdpServer::start(&t.srv, SocketAddr::from((SRV, 5353)));
    let s1 = t
        .vm1
        .enter(|| UdpSocket::bind("0.0.0.0:40001").expect("bind vm1"));
    let seen = String::from_utf8(udp_ask(&s1, srv.addr, b"who")).expect("utf8");
    assert_eq!(
        seen,
        format!("{GW}:40001"),
        "the old daemon's programs translate"
    );

    // The new daemon takes over.
    let dp = Datapath::open(bpffs_dir.path(), &NatConfig::default()).expect("reopen");
    assert_eq!(dp.legacy_links(), vec![t.tap.clone()]);
    assert_eq!(
        t.host.enter(|| dp.attach(&t.tap)).expect("attach"),
        nat.ifindex
    );
    assert_eq!(filters(&t.host, &t.tap), (1, 1));
    assert!(dp.legacy_links().is_empty());
    assert_eq!(
        std::fs::read_dir(&links_dir).expect("links dir").count(),
        0,
        "legacy pins removed"
    );
    // The kernel releases an unpinned link from a work queue: wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcx_programs(&t.host, &t.tap) != (0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tcx_programs(&t.host, &t.tap), (0, 0), "TCX links detached");
    let seen = String::from_utf8(udp_ask(&s1, srv.addr, b"who")).expect("utf8");
    assert_eq!(
        seen,
        format!("{GW}:40001"),
        "the filters translate, same mapping"
    );

    t.host.enter(|| dp.detach(&t.tap)).expect("detach");
    dp.remove_router(15).expect("remove router");
    dp.purge().expect("purge");
}

/// Number of TCX programs on `dev` (ingress, egress), queried inside `ns`.
fn tcx_programs(ns: &Netns, dev: &str) -> (usize, usize) {
    use aya::programs::{SchedClassifier, TcAttachType};
    ns.enter(|| {
        let i = SchedClassifier::query_tcx(dev, TcAttachType::Ingress).expect("query ingress");
        let e = SchedClassifier::query_tcx(dev, TcAttachType::Egress).expect("query egress");
        (i.1.len(), e.1.len())
    })
}

/// 4 MiB each way over one translated TCP connection: GSO/GRO-sized segments cross the hooks
/// (and are segmented in software after them), and every byte arrives in order.
#[test]
fn bulk_tcp_both_ways() {
    const SIZE: usize = 4 << 20;
    let pattern = |i: usize| (i.wrapping_mul(31) >> 3) as u8;
    let t = build();
    let bpffs = Bpffs::new();
    let dp = t.attached(&bpffs, 13);
    let addr = SocketAddr::from((SRV, 9000));
    let l = t.srv.enter(|| TcpListener::bind(addr).expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = vec![0u8; SIZE];
        s.read_exact(&mut buf).expect("upload");
        let ok = buf.iter().enumerate().all(|(i, b)| *b == pattern(i));
        let down: Vec<u8> = (0..SIZE).map(pattern).collect();
        s.write_all(&down).expect("download");
        (peer.to_string(), ok)
    });
    let mut c = t
        .vm1
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"));
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let up: Vec<u8> = (0..SIZE).map(pattern).collect();
    c.write_all(&up).expect("upload");
    let mut down = vec![0u8; SIZE];
    c.read_exact(&mut down).expect("download");
    assert!(
        down.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "download corrupted"
    );
    let (peer, ok) = server.join().expect("server");
    assert!(ok, "upload corrupted");
    assert!(peer.starts_with(&format!("{GW}:")), "server saw {peer}");
    let stats = dp.stats(13).expect("stats");
    assert_eq!(stats["drop_malformed"], 0, "{stats:?}");
    println!("bulk stats: {stats:?}");
    t.host.enter(|| dp.detach(&t.tap)).expect("detach");
    dp.purge().expect("purge");
}

/// Path-MTU discovery through the router: the link beyond the hop has MTU 1400, a 1472-byte
/// datagram with DF from a VM makes the hop send fragmentation-needed to the gateway address;
/// translated back, it reaches the VM's socket, which learns the path MTU.
#[test]
fn path_mtu_discovery_through_the_router() {
    let t = build();
    t.hop.ip(&["link", "set", "hs", "mtu", "1400"]);
    t.srv.ip(&["link", "set", "eth0", "mtu", "1400"]);
    let bpffs = Bpffs::new();
    let dp = t.attached(&bpffs, 14);
    let srv = UdpServer::start(&t.srv, SocketAddr::from((SRV, 5353)));
    let sock = t
        .vm1
        .enter(|| UdpSocket::bind("0.0.0.0:40200").expect("bind"));
    let on: libc::c_int = 1;
    let pmtu_do: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: valid socket and option values.
    unsafe {
        for (opt, val) in [(libc::IP_RECVERR, &on), (libc::IP_MTU_DISCOVER, &pmtu_do)] {
            let rc = libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                opt,
                (val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setsockopt {opt}");
        }
    }
    sock.connect(srv.addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut err = None;
    for _ in 0..3 {
        let _ = sock.send(&[7u8; 1472]);
        let mut b = [0u8; 2048];
        match sock.recv(&mut b) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                err = recv_icmp_error(&sock);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        err,
        Some((3, 4, HOP_EXT)),
        "fragmentation needed reaches the VM socket"
    );
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid socket and out-pointers.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!((rc, mtu), (0, 1400), "the VM learned the path MTU");
    // A datagram that fits the path crosses.
    let fits = vec![9u8; 1372];
    assert_eq!(udp_ask(&sock, srv.addr, &fits), fits);
    assert!(dp.stats(14).expect("stats")["icmp_errors"] >= 1);
    drop(srv);
    t.host.enter(|| dp.detach(&t.tap)).expect("detach");
    dp.purge().expect("purge");
}

/// Map pins an earlier layout version left (each a whole preallocated session table) are
/// removed when the datapath opens; an old `links/` directory that still holds a pin stays for
/// the device-by-device takeover, and a version directory left empty goes.
#[test]
fn stale_layout_map_pins_are_removed() {
    use router_common::maps;
    use router_ctl::datapath::{MAP_NAMES, bpffs};

    let bpffs_dir = Bpffs::new();
    let root = bpffs_dir.path();
    let (v1, v2) = (root.join("v1"), root.join("v2"));
    std::fs::create_dir_all(&v1).expect("v1");
    std::fs::create_dir_all(v2.join("links")).expect("v2/links");
    for (dir, kept) in [(&v1, None), (&v2, Some(v2.join("links").join("held")))] {
        let mut loader = aya::EbpfLoader::new();
        for n in MAP_NAMES {
            match &kept {
                Some(p) if n == maps::GLOBAL_STATS => loader.map_pin_path(n, p),
                _ => loader.map_pin_path(n, dir.join(n)),
            };
        }
        let obj = router_ctl::datapath::object().expect("object");
        loader.load(obj).expect("load with pinned maps");
    }
    assert!(v1.join(maps::SESSIONS).exists() && v2.join(maps::SESSIONS).exists());

    let dp = Datapath::open(root, &NatConfig::default()).expect("open");
    assert!(!v1.exists(), "v1 held only map pins: removed");
    let left: Vec<_> = std::fs::read_dir(&v2)
        .expect("v2 stays")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["links"], "only the links directory of v2 stays");
    assert!(v2.join("links").join("held").exists());
    let current = bpffs::version_dir(root);
    assert!(MAP_NAMES.iter().all(|n| current.join(n).exists()));
    drop(dp);
}
