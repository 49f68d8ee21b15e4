//! Fair NAT under a flood, with real traffic: router A's VM floods new TCP flows at full speed
//! (`hping3 -S --flood` to closed ports, several processes) while router B's VM opens 50 new
//! connections, which must all succeed; A's connection opened before the flood keeps working
//! during and after it, and A's new connections work again within seconds after it stops.
//!
//! ```text
//!  vmA 10.0.0.5 ── qr ── router A ── qg 192.0.2.10 ══ tapA ─┐
//!                                                            ├─ br ── srv 192.0.2.1
//!  vmB 10.1.0.5 ── qr ── router B ── qg 192.0.2.20 ══ tapB ─┘   (echo on :7000; no route
//!                                                                 to 10.0.0.0/8)
//! ```
//!
//! One datapath serves both routers, with the default proportions on a smaller table
//! (`[nat] max_sessions = 16384`, so a router's cap is the default quarter, 4096) to keep
//! the flood short, and the daemon's GC pacing (`GcPace`, one poll a second) in a thread.
//! And the daemon itself runs that GC within seconds once new flows are refused, although a
//! full table or a router at its cap creates nothing that would say so.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use router_ctl::{
    config::NatConfig,
    datapath::{Datapath, RouterNat, sessions::GcPace},
};
use tests::{Bpffs, Netns, unique, veth};

const SRV: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ECHO_PORT: u16 = 7000;
const A: u32 = 1;
const B: u32 = 2;
/// hping3 processes and how long they flood.
const FLOODERS: usize = 4;
const FLOOD: Duration = Duration::from_secs(20);

struct Side {
    vm: Netns,
    _router: Netns,
    tap: String,
}

/// The host namespace with its bridge `brf`, and the server on it at `SRV` (echoing nothing
/// yet: `echo_server`).
fn host_and_server(host: &str, srv: &str) -> (Netns, Netns) {
    let host = Netns::new(host);
    let srv = Netns::new(srv);
    host.ip(&["link", "add", "name", "brf", "type", "bridge"]);
    host.ip(&["link", "set", "brf", "up"]);
    veth(&host, "hsrv", &srv, "eth0");
    host.ip(&["link", "set", "hsrv", "master", "brf"]);
    srv.ip(&["addr", "add", &format!("{SRV}/24"), "dev", "eth0"]);
    (host, srv)
}

/// A VM behind its own router namespace, the router's `qg` tap on the host's bridge.
fn side(host: &Netns, gw: &str, net: &str) -> Side {
    let vm = Netns::new("fvm");
    let router = Netns::new("frt");
    veth(&vm, "eth0", &router, "qr");
    vm.ip(&["addr", "add", &format!("{net}.5/24"), "dev", "eth0"]);
    vm.ip(&["route", "add", "default", "via", &format!("{net}.1")]);
    router.ip(&["addr", "add", &format!("{net}.1/24"), "dev", "qr"]);
    let tap = unique("tap");
    veth(&router, "qg", host, &tap);
    router.ip(&["addr", "add", &format!("{gw}/24"), "dev", "qg"]);
    router.ip(&["route", "add", "default", "via", &SRV.to_string()]);
    router.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward"));
    host.ip(&["link", "set", &tap, "master", "brf"]);
    Side {
        vm,
        _router: router,
        tap,
    }
}

/// Echoes lines on `SRV:ECHO_PORT` in `srv`, one thread per connection.
fn echo_server(srv: &Netns) {
    let addr = SocketAddr::from((SRV, ECHO_PORT));
    let l = srv.enter(|| TcpListener::bind(addr).expect("bind echo server"));
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = match c.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                for line in BufReader::new(c).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(w, "{line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A connection to the echo server opened from `vm` (the socket lives in its namespace).
fn connect(vm: &Netns, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((SRV, ECHO_PORT));
    let s = vm.enter(|| TcpStream::connect_timeout(&addr, timeout))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Sends `msg` on `s` and reads it back.
fn echo(s: &TcpStream, msg: &str) -> std::io::Result<()> {
    let mut w = s;
    writeln!(w, "{msg}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.trim_end() != msg {
        return Err(std::io::Error::other(format!(
            "echoed {line:?} for {msg:?}"
        )));
    }
    Ok(())
}

/// A new connection from `vm` that echoes.
fn new_connection(vm: &Netns, msg: &str) -> std::io::Result<()> {
    let s = connect(vm, Duration::from_secs(3))?;
    echo(&s, msg)
}

/// The daemon's GC loop: a poll a second, a pass when `GcPace` says so. Returns the passes
/// and the sessions they dropped early.
fn gc_thread(dp: Arc<Datapath>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let mut pace = GcPace::new(Duration::from_secs(10), &dp.limits());
        let (mut passes, mut dropped) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let p = dp.pressure().expect("pressure");
            let now = Instant::now();
            if pace.due(now, &p) {
                let r = dp.gc().expect("gc pass");
                pace.ran(now, &p, r.entries);
                passes += 1;
                dropped += r.dropped_early;
            }
            std::thread::sleep(GcPace::POLL);
        }
        (passes, dropped)
    })
}

/// Floods from `vm`: new TCP flows to closed ports of the server (each answered by a RST).
fn flooder(vm: &Netns, i: usize) -> Child {
    vm.cmd("hping3")
        .args([
            "-q",
            "-S",
            "--flood",
            "-p",
            &format!("++{}", 20000 + i * 10000),
        ])
        .arg(SRV.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting hping3 (cargo xtask test installs it): {e}"))
}

#[test]
fn a_flooding_router_keeps_to_its_share_and_the_others_get_through() {
    let (host, srv) = host_and_server("fhs", "fsv");
    let a = side(&host, "192.0.2.10", "10.0.0");
    let b = side(&host, "192.0.2.20", "10.1.0");

    let bpffs = Bpffs::new();
    let nat = NatConfig {
        max_sessions: 16_384,
        ..NatConfig::default()
    };
    let dp = Datapath::open(bpffs.path(), &nat).unwrap_or_else(|e| panic!("open: {e:#}"));
    let cap = u64::from(nat.sessions_per_router());
    assert_eq!(cap, 4096, "the default quarter");
    for (dp_id, side, gw, net) in [
        (A, &a, "192.0.2.10", "10.0.0.0/24"),
        (B, &b, "192.0.2.20", "10.1.0.0/24"),
    ] {
        let ifindex = host.enter(|| dp.attach(&side.tap).expect("attach"));
        dp.configure_router(&RouterNat {
            dp_id,
            ifindex,
            gateway_ip: gw.parse().expect("ip"),
            enable_snat: true,
            internal_cidrs: vec![net.parse().expect("cidr")],
        })
        .expect("configure router");
    }
    echo_server(&srv);
    let stop = Arc::new(AtomicBool::new(false));
    let gc = gc_thread(dp.clone(), stop.clone());

    // A's long-lived connection, opened before the flood.
    let held = connect(&a.vm, Duration::from_secs(3)).expect("A's connection before the flood");
    echo(&held, "before").expect("A's connection before the flood");
    new_connection(&b.vm, "warm-up").expect("B before the flood");

    let start = Instant::now();
    let mut flood: Vec<Child> = (0..FLOODERS).map(|i| flooder(&a.vm, i)).collect();
    // Let A reach its cap.
    let capped_by = Instant::now() + Duration::from_secs(10);
    while dp.stats(A).expect("stats")["drop_router_quota"] == 0 {
        assert!(
            Instant::now() < capped_by,
            "A never reached its cap: {:?}, {} entries",
            dp.stats(A),
            dp.session_count(A)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // B: 50 new connections during the flood, every one through.
    let mut failures = Vec::new();
    for i in 0..50 {
        if let Err(e) = new_connection(&b.vm, &format!("b{i}")) {
            failures.push(format!("connection {i}: {e}"));
        }
        if i % 10 == 0 {
            echo(&held, &format!("during {i}")).expect("A's connection during the flood");
        }
    }
    let most = dp.session_count(A);
    // Flood on until its time is up, A's connection checked every second.
    while start.elapsed() < FLOOD {
        echo(&held, "during").expect("A's connection during the flood");
        std::thread::sleep(Duration::from_secs(1));
    }
    for c in &mut flood {
        let _ = c.kill();
        let _ = c.wait();
    }
    let stopped = Instant::now();
    let sa = dp.stats(A).expect("stats");
    let sb = dp.stats(B).expect("stats");
    assert!(
        failures.is_empty(),
        "B's new connections failed during A's flood: {failures:?}\nA: {sa:?}\nB: {sb:?}"
    );
    assert_eq!(sb["drop_table_full"], 0, "B: {sb:?}");
    assert_eq!(sb["drop_router_quota"], 0, "B: {sb:?}");
    assert!(sa["drop_router_quota"] > 0, "A: {sa:?}");
    assert!(
        most <= cap + 64,
        "A held {most} entries with a cap of {cap}"
    );

    // After the flood: A's held connection works, and a new one within a few seconds.
    echo(&held, "after").expect("A's connection after the flood");
    let mut last = None;
    while stopped.elapsed() < Duration::from_secs(5) {
        match new_connection(&a.vm, "again") {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    assert!(
        last.is_none(),
        "A's new connections still failed 5 s after the flood: {last:?}; A: {:?}",
        dp.stats(A)
    );
    let recovered = stopped.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (passes, _) = gc.join().expect("gc thread");
    eprintln!(
        "flood {:?}: A dropped {} new flows at its cap ({} entries at most), B 50/50, A new again after {recovered:?}, {passes} GC passes",
        FLOOD, sa["drop_router_quota"], most
    );
    for side in [&a, &b] {
        host.enter(|| dp.detach(&side.tap).expect("detach"));
    }
}

/// A VM that opens and closes connections faster than they expire leaves its router one
/// closed connection each (`TIME_WAIT`, here for an hour). The GC drops closing connections
/// under pressure, as conntrack's does, so the router does not sit at its cap refusing every
/// new connection until they expire: each connection gets through, at worst after a SYN
/// retransmission (the router reached its cap between two passes).
#[test]
fn closed_connections_never_hold_a_router_at_its_cap() {
    let (host, srv) = host_and_server("fch", "fcs");
    let a = side(&host, "192.0.2.10", "10.0.0");

    let bpffs = Bpffs::new();
    let nat = NatConfig {
        max_sessions: 2048,
        tcp_time_wait: 3600,
        ..NatConfig::default()
    };
    let dp = Datapath::open(bpffs.path(), &nat).unwrap_or_else(|e| panic!("open: {e:#}"));
    let cap = nat.sessions_per_router() as usize;
    assert_eq!(cap, 512, "the default quarter");
    let ifindex = host.enter(|| dp.attach(&a.tap).expect("attach"));
    dp.configure_router(&RouterNat {
        dp_id: A,
        ifindex,
        gateway_ip: "192.0.2.10".parse().expect("ip"),
        enable_snat: true,
        internal_cidrs: vec!["10.0.0.0/24".parse().expect("cidr")],
    })
    .expect("configure router");
    echo_server(&srv);
    let stop = Arc::new(AtomicBool::new(false));
    let gc = gc_thread(dp.clone(), stop.clone());

    // Three times the cap, one after another, each closed by the VM first.
    let n = 3 * cap;
    let start = Instant::now();
    let (mut retried, mut most) = (0, 0);
    for i in 0..n {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match new_connection(&a.vm, &format!("c{i}")) {
                Ok(()) => break,
                Err(e) => assert!(
                    attempts < 3,
                    "connection {i} of {n} failed {attempts} times after {:?} ({e}); {} \
                     entries, A: {:?}",
                    start.elapsed(),
                    dp.session_count(A),
                    dp.stats(A)
                ),
            }
        }
        retried += usize::from(attempts > 1);
        most = most.max(dp.session_count(A));
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (passes, dropped) = gc.join().expect("gc thread");
    let sa = dp.stats(A).expect("stats");
    assert!(
        most <= cap as u64 + 64,
        "A held {most} entries with a cap of {cap}"
    );
    assert!(
        dropped + cap + 64 >= n,
        "{dropped} sessions dropped early for {n} closed connections and a cap of {cap}"
    );
    eprintln!(
        "{n} connections in {took:?} ({retried} after a refusal, {} new flows refused at the cap), \
         at most {most} entries, {passes} GC passes dropped {dropped} closed connections",
        sa["drop_router_quota"]
    );
    host.enter(|| dp.detach(&a.tap).expect("detach"));
}

/// A session of router 7 whose SYN was answered by a RST (closed at once by the next pass),
/// to remote port `i`.
fn refused_session(i: u16) -> (router_common::SessionKey, router_common::SessionValue) {
    use router_common::{
        ST_ACK, ST_REPLY_SHIFT, ST_RST, ST_SEEN, ST_SYN, ip_to_wire, port_to_wire,
    };
    let k = tests::testrun::reply_key(
        7,
        router_common::IPPROTO_TCP,
        ([198, 51, 100, 7], 1000 + i),
        ([192, 0, 2, 10], 40000),
    );
    let v = router_common::SessionValue {
        addr: ip_to_wire([10, 0, 0, 5]),
        port: port_to_wire(40000),
        state: ST_SYN | ST_SEEN | ((ST_ACK | ST_RST) << ST_REPLY_SHIFT),
        kind: router_common::SESSION_SNAT,
        last_seen_ns: 0,
    };
    (k, v)
}

/// A full table or a router at its cap creates no sessions, so the creation count cannot
/// tell the daemon's GC about the pressure: the refusal count does, and a pass follows within
/// seconds, long before `gc_interval`.
#[test]
fn the_daemon_runs_its_gc_within_seconds_while_new_flows_are_refused() {
    use router_common::{maps, stats::GlobalCounter};
    use tests::{daemon::Daemon, pinned_map};
    let host = Netns::new("fgc");
    let d = Daemon::start_configured(&host, "[nat]\ngc_interval = 3600\n");
    // The first pass runs as the daemon starts; the next by the interval only in an hour.
    std::thread::sleep(Duration::from_secs(2));
    let mut sessions: aya::maps::HashMap<
        _,
        router_common::SessionKey,
        router_common::SessionValue,
    > = aya::maps::HashMap::try_from(pinned_map(d.bpffs(), maps::SESSIONS)).expect("hash map");
    for i in 0..100 {
        let (k, v) = refused_session(i);
        sessions.insert(k, v, 0).expect("insert");
    }
    // Nothing created, nothing refused: no pass.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        sessions.keys().count(),
        100,
        "a pass ran early; log:\n{}",
        d.log()
    );

    // The datapath refuses a new flow (as it counts one).
    let mut global: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(pinned_map(d.bpffs(), maps::GLOBAL_STATS))
            .expect("per-CPU array");
    let cpus = aya::util::nr_cpus().expect("cpus");
    let mut refused = vec![0u64; cpus];
    refused[0] = 1;
    global
        .set(
            GlobalCounter::SessionsRefused.key(),
            aya::maps::PerCpuValues::try_from(refused).expect("values"),
            0,
        )
        .expect("set the refusal counter");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sessions.keys().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} refused connections left 5 s after a refusal; log:\n{}",
            sessions.keys().count(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
