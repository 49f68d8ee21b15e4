//! A full session table (a flood of new flows): a further new flow is dropped and counted,
//! never let out with its private address; established connections keep being translated both
//! ways; one GC pass makes room again by dropping never-replied sessions, oldest first, and
//! only those. The table is the real pinned `SESSIONS` map, filled to the kernel's refusal.
//! And a running daemon notices a crowded table within seconds, long before its
//! `gc_interval`, from the datapath's count of created sessions.
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use router_common::{
    IPPROTO_UDP, MAX_SESSIONS, SESSION_SNAT, SessionKey, SessionValue, ip_to_wire, port_to_wire,
    stats::Counter,
};
use router_ctl::{config::NatConfig, datapath::sessions};
use tests::packet::Pkt::{Tcp, Udp};
use tests::{
    Netns,
    daemon::Daemon,
    packet::{ACK, SYN, tcp_frame, udp_frame},
    pinned_map, pinned_sessions,
    testrun::{GW, IN, OUT, Rig, SRV, reply_key},
    testrun_router,
};

const VM: [u8; 4] = [10, 0, 0, 5];
const FLOODER: [u8; 4] = [10, 0, 0, 66];
const DP_ID: u32 = 7;

/// CLOCK_MONOTONIC in ns, the datapath's clock.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply key of flood flow `i` (a distinct remote address and port each) and its session:
/// never replied, last seen `i` ns after `t0` (so a lower `i` is older).
fn flood_entry(i: u32, t0: u64) -> (SessionKey, SessionValue) {
    let [_, a, b, c] = i.to_be_bytes();
    let k = reply_key(DP_ID, IPPROTO_UDP, ([198, a, b, c], 53), (GW, 40000));
    let v = SessionValue {
        addr: ip_to_wire(FLOODER),
        port: port_to_wire(40000),
        state: 0,
        kind: SESSION_SNAT,
        last_seen_ns: t0 + u64::from(i),
    };
    (k, v)
}

#[test]
fn a_full_table_drops_new_flows_keeps_answered_ones_and_the_gc_makes_room() {
    // One router may take the whole table here (the per-router cap is tested apart).
    let nat = NatConfig {
        max_sessions_per_router: Some(MAX_SESSIONS),
        ..NatConfig::default()
    };
    let rig = Rig::open(&nat, &testrun_router(DP_ID, GW, &["10.0.0.0/24"]));

    // An assured UDP exchange (a query, its answer, a second query) and an established TCP
    // connection.
    rig.run("snat_out", &udp_frame(VM, 40000, SRV, 53));
    rig.run("snat_out", &udp_frame(VM, 40000, SRV, 53));
    rig.expect(
        "snat_in",
        &udp_frame(SRV, 53, GW, 40000),
        &udp_frame(SRV, 53, VM, 40000),
        "UDP reply",
    );
    rig.run("snat_out", &tcp_frame(VM, 40001, SRV, 80, SYN));
    rig.run("snat_in", &tcp_frame(SRV, 80, GW, 40001, SYN | ACK));
    rig.run("snat_out", &tcp_frame(VM, 40001, SRV, 80, ACK));

    // A flood of never-replied flows fills the rest, until the kernel refuses an insert.
    let mut map = pinned_sessions(&rig.dp);
    let t0 = now_ns();
    let mut flood = 0u32;
    while map
        .insert(flood_entry(flood, t0).0, flood_entry(flood, t0).1, 0)
        .is_ok()
    {
        flood += 1;
        assert!(
            flood <= MAX_SESSIONS,
            "the table holds more than MAX_SESSIONS"
        );
    }
    assert_eq!(flood + 2, MAX_SESSIONS, "full at MAX_SESSIONS entries");

    // A new flow now finds no room: dropped and counted, never let out untranslated.
    rig.assert_dropped(
        "snat_out",
        &udp_frame(VM, 50000, SRV, 53),
        Counter::DropTableFull,
    );

    // The live connections are untouched by the flood, both ways.
    #[rustfmt::skip]
    let steps = [
        (OUT, Tcp(VM, 40001, SRV, 80, ACK), Tcp(GW, 40001, SRV, 80, ACK), "TCP out, table full"),
        (IN, Tcp(SRV, 80, GW, 40001, ACK), Tcp(SRV, 80, VM, 40001, ACK), "TCP in, table full"),
        (IN, Udp(SRV, 53, GW, 40000), Udp(SRV, 53, VM, 40000), "answered UDP in, table full"),
    ];
    rig.expect_all(&steps);

    // One GC pass: nothing has idled past a timeout; the never-replied flood goes, oldest
    // first, down to the early-drop target.
    let r = rig.dp.gc().expect("gc");
    assert_eq!(r.expired, 0, "{r:?}");
    assert_eq!(r.entries, sessions::EARLY_DROP_TARGET, "{r:?}");
    assert_eq!(
        r.dropped_early,
        MAX_SESSIONS as usize - sessions::EARLY_DROP_TARGET,
        "{r:?}"
    );
    let left: HashSet<SessionKey> = map.keys().map(|k| k.expect("key")).collect();
    assert_eq!(left.len(), sessions::EARLY_DROP_TARGET);
    let kept_flood = (0..flood)
        .filter(|i| left.contains(&flood_entry(*i, t0).0))
        .collect::<Vec<_>>();
    assert_eq!(
        kept_flood.first().copied(),
        Some(flood - kept_flood.len() as u32),
        "the newest flood sessions stay, the oldest went"
    );
    let listed = rig.sessions();
    let state = |port: u16| {
        listed
            .iter()
            .find(|s| s.internal.ip().octets() == VM && s.internal.port() == port)
            .map(|s| s.state.clone())
    };
    assert_eq!(state(40000).as_deref(), Some("REPLIED"));
    assert_eq!(state(40001).as_deref(), Some("ESTABLISHED"));

    // Room again: the new flow is translated.
    rig.expect(
        "snat_out",
        &udp_frame(VM, 50000, SRV, 53),
        &udp_frame(GW, 50000, SRV, 53),
        "new flow after the GC",
    );
    // A second pass finds the table below the pressure mark and drops nothing more.
    let r = rig.dp.gc().expect("gc");
    assert_eq!((r.expired, r.dropped_early), (0, 0), "{r:?}");
}

#[test]
fn the_daemon_drops_a_flood_within_seconds_not_at_its_gc_interval() {
    let host = Netns::new("spd");
    let d = Daemon::start_configured(
        &host,
        "[nat]\ngc_interval = 3600\nmax_sessions_per_router = 262144\n",
    );
    // The GC's first pass runs as the daemon starts; the next by the interval only in an hour.
    std::thread::sleep(Duration::from_secs(2));
    let mut sessions: aya::maps::HashMap<_, SessionKey, SessionValue> =
        aya::maps::HashMap::try_from(pinned_map(d.bpffs(), router_common::maps::SESSIONS))
            .expect("hash map");

    // A flood of never-replied flows fills 4/5 of the table, and one answered session sits
    // among them, older than all of them.
    let t0 = now_ns();
    let flood = MAX_SESSIONS / 5 * 4;
    for i in 0..flood {
        let (k, v) = flood_entry(i, t0);
        sessions.insert(k, v, 0).expect("insert flood session");
    }
    let (answered, mut v) = flood_entry(flood, 0);
    v.state = router_common::ST_SEEN | router_common::ST_ACK;
    v.last_seen_ns = t0 - 1;
    sessions
        .insert(answered, v, 0)
        .expect("insert answered session");
    // ... and the datapath's counter says so, as it would after creating them.
    let mut global: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(pinned_map(d.bpffs(), router_common::maps::GLOBAL_STATS))
            .expect("per-CPU array");
    let cpus = aya::util::nr_cpus().expect("cpus");
    let mut created = vec![0u64; cpus];
    created[0] = u64::from(flood) + 1;
    global
        .set(
            router_common::stats::GlobalCounter::SessionsCreated.key(),
            aya::maps::PerCpuValues::try_from(created).expect("values"),
            0,
        )
        .expect("set the creation counter");

    let deadline = Instant::now() + Duration::from_secs(15);
    let count = || sessions.keys().count();
    while count() > sessions::EARLY_DROP_TARGET {
        assert!(
            Instant::now() < deadline,
            "the daemon left {} entries after 15 s; log:\n{}",
            count(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(), sessions::EARLY_DROP_TARGET);
    assert!(
        sessions.get(&answered, 0).is_ok(),
        "the answered session was dropped"
    );
    assert!(
        d.log().contains("session table crowded"),
        "log:\n{}",
        d.log()
    );
}
