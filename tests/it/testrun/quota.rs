//! The per-router session cap through BPF TestRun: two routers share one datapath (each on a
//! device of a throwaway namespace, `Datapath::test_run_on`); router A at its cap
//! (`[nat] max_sessions_per_router`) has its new flows dropped and counted
//! (`drop_router_quota`), while its established flow keeps being translated both ways and
//! router B's new flow is created. The GC brings A's count back down as A's sessions expire,
//! and repairs a count that went wrong (as after a crash). And the session table keeps its
//! sessions over a restart, resized when `[nat] max_sessions` changed.
use std::{sync::Arc, time::Duration};

use aya::maps::{Array, MapData};
use router_common::{maps, stats::GlobalCounter};
use router_ctl::{config::NatConfig, datapath::Datapath};
use tests::{
    Bpffs, Netns,
    packet::{ACK, SYN, tcp_frame, udp_frame},
    pinned_map,
    testrun::{GW as GW_A, OK, SHOT, SRV},
    testrun_router,
};

const GW_B: [u8; 4] = [192, 0, 2, 20];
const VM_A: [u8; 4] = [10, 0, 0, 5];
const VM_B: [u8; 4] = [10, 1, 0, 5];
const A: u32 = 7;
const B: u32 = 8;
/// Router A's cap in the test: its established flow and two more.
const CAP: u32 = 3;

struct Fixture {
    ns: Netns,
    dp: Arc<Datapath>,
    _bpffs: Bpffs,
    gw_a: u32,
    gw_b: u32,
}

impl Fixture {
    fn new(nat: &NatConfig) -> Self {
        let ns = Netns::new("tquota");
        for dev in ["gwa", "gwb"] {
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["link", "set", &peer, "up"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        let bpffs = Bpffs::new();
        let dp = Datapath::open(bpffs.path(), nat).unwrap_or_else(|e| panic!("open: {e:#}"));
        let (gw_a, gw_b) = (ns.ifindex("gwa"), ns.ifindex("gwb"));
        for (dp_id, gw, cidr, ifindex) in [
            (A, GW_A, "10.0.0.0/24", gw_a),
            (B, GW_B, "10.1.0.0/24", gw_b),
        ] {
            let mut r = testrun_router(dp_id, gw, &[cidr]);
            r.ifindex = ifindex;
            dp.configure_router(&r).expect("configure router");
        }
        Self {
            ns,
            dp,
            _bpffs: bpffs,
            gw_a,
            gw_b,
        }
    }

    fn run(&self, ifindex: u32, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.ns.enter(|| {
            self.dp
                .test_run_on(prog, frame, ifindex)
                .unwrap_or_else(|e| panic!("test run of {prog}: {e:#}"))
        })
    }

    /// Runs `frame` through `prog` on `ifindex` and checks it comes out as `want`.
    fn translated(&self, ifindex: u32, prog: &str, frame: &[u8], want: &[u8], what: &str) {
        let (rc, out) = self.run(ifindex, prog, frame);
        assert_eq!(rc, OK, "{what}: verdict");
        assert_eq!(out, want, "{what}: frame");
    }

    fn stat(&self, dp_id: u32, name: &str) -> u64 {
        self.dp.stats(dp_id).expect("stats")[name]
    }

    fn refused(&self) -> u64 {
        self.dp.global_stats().expect("global stats")[GlobalCounter::SessionsRefused.name()]
    }

    /// A new UDP flow of router A from source port `sport`: its verdict.
    fn new_flow_a(&self, sport: u16) -> u32 {
        self.run(self.gw_a, "snat_out", &udp_frame(VM_A, sport, SRV, 53))
            .0
    }

    /// Router A's TCP flow: its handshake, then `established_a`.
    fn establish_a(&self, what: &str) {
        self.run(self.gw_a, "snat_out", &tcp_frame(VM_A, 40000, SRV, 80, SYN));
        let syn_ack = tcp_frame(SRV, 80, GW_A, 40000, SYN | ACK);
        self.run(self.gw_a, "snat_in", &syn_ack);
        self.established_a(what);
    }

    /// Router A's established TCP flow, translated both ways.
    fn established_a(&self, what: &str) {
        let out = tcp_frame(VM_A, 40000, SRV, 80, ACK);
        let translated_out = tcp_frame(GW_A, 40000, SRV, 80, ACK);
        let back = tcp_frame(SRV, 80, GW_A, 40000, ACK);
        let translated_back = tcp_frame(SRV, 80, VM_A, 40000, ACK);
        for (prog, frame, want, way) in [
            ("snat_out", out, translated_out, "out"),
            ("snat_in", back, translated_back, "in"),
        ] {
            let what = format!("A's established flow {way}, {what}");
            self.translated(self.gw_a, prog, &frame, &want, &what);
        }
    }
}

fn capped(cap: u32, udp_unreplied: u64) -> NatConfig {
    NatConfig {
        max_sessions_per_router: Some(cap),
        udp_unreplied,
        ..NatConfig::default()
    }
}

#[test]
fn a_router_at_its_cap_drops_its_new_flows_and_no_other_router_notices() {
    let fx = Fixture::new(&capped(CAP, 1));
    // Router A: an established connection, then new flows up to its cap.
    fx.establish_a("before the cap");
    for sport in [40001, 40002] {
        assert_eq!(fx.new_flow_a(sport), OK, "flow {sport} within the cap");
    }
    assert_eq!(fx.dp.session_count(A), u64::from(CAP));

    // At its cap: A's next new flow is dropped and counted, globally too.
    let refused = fx.refused();
    assert_eq!(fx.new_flow_a(40003), SHOT, "a new flow over the cap");
    assert_eq!(fx.stat(A, "drop_router_quota"), 1);
    assert_eq!(fx.stat(A, "drop_table_full"), 0);
    assert_eq!(fx.refused(), refused + 1);
    assert_eq!(fx.dp.session_count(A), u64::from(CAP), "nothing created");

    // Router B is not affected: its new flow is created.
    fx.translated(
        fx.gw_b,
        "snat_out",
        &udp_frame(VM_B, 41000, SRV, 53),
        &udp_frame(GW_B, 41000, SRV, 53),
        "B's new flow while A is at its cap",
    );
    assert_eq!(fx.stat(B, "drop_router_quota"), 0);
    assert_eq!(fx.dp.session_count(B), 1);

    // A's established flow still passes both ways, and A's existing UDP flows too.
    fx.established_a("at the cap");
    assert_eq!(fx.new_flow_a(40001), OK, "an existing flow is not new");
    assert_eq!(fx.stat(A, "drop_router_quota"), 1);

    // A's share is crowded (3 of 3, the mark is 3/4): the GC drops its unanswered flows,
    // oldest first, down to half its cap, and keeps its established one; B's flow (1 of 3)
    // is not A's problem.
    let r = fx.dp.gc().expect("gc");
    assert_eq!((r.expired, r.dropped_early), (0, 2), "{r:?}");
    assert_eq!(fx.dp.session_count(A), 1, "the established flow");
    assert_eq!(fx.dp.session_count(B), 1);
    fx.established_a("after the early drop");
    assert_eq!(fx.new_flow_a(40003), OK, "room again");
    assert_eq!(fx.stat(A, "drop_router_quota"), 1);

    // Expired sessions come off the counts too (unreplied UDP: 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    fx.established_a("after the wait");
    let r = fx.dp.gc().expect("gc");
    assert_eq!(r.expired, 2, "A's new flow and B's: {r:?}");
    assert_eq!(fx.dp.session_count(A), 1);
    assert_eq!(fx.dp.session_count(B), 0);

    // Removing a router zeroes its count.
    fx.dp.remove_router(A).expect("remove router");
    assert_eq!(fx.dp.session_count(A), 0);
}

#[test]
fn the_gc_repairs_a_count_that_went_wrong() {
    let fx = Fixture::new(&capped(10, 30));
    assert_eq!(fx.new_flow_a(40001), OK);
    // As after a crash between a delete and its correction, or a datapath that did not
    // count: the count says A is at its cap although it holds one entry.
    let mut counts: Array<MapData, u64> =
        Array::try_from(pinned_map(fx.dp.bpffs(), maps::ROUTER_SESSIONS)).expect("array");
    counts.set(A, 1000, 0).expect("set the count");
    assert_eq!(fx.new_flow_a(40002), SHOT, "refused by the wrong count");
    // Router B's count was never set; it read zero, as a router never counted.
    let r = fx.dp.gc().expect("gc");
    assert_eq!((r.expired, r.dropped_early), (0, 0), "{r:?}");
    assert_eq!(fx.dp.session_count(A), 1, "what the table holds");
    assert_eq!(fx.new_flow_a(40002), OK, "created after the repair");
    assert_eq!(fx.dp.session_count(A), 2);
    // Entries nobody counted are counted by the next pass.
    counts.set(A, 0, 0).expect("set the count");
    fx.dp.gc().expect("gc");
    assert_eq!(fx.dp.session_count(A), 2);
}

#[test]
fn a_crowded_router_loses_its_unassured_sessions_first_and_keeps_its_assured_ones() {
    // A cap of 8 (crowded at 6, dropped to 4): A holds its established flow and 7 unanswered.
    let nat = NatConfig {
        max_sessions_per_router: Some(8),
        ..NatConfig::default()
    };
    let fx = Fixture::new(&nat);
    fx.establish_a("before the flood");
    for sport in 41000..41007 {
        assert_eq!(fx.new_flow_a(sport), OK);
    }
    // B's one unanswered flow.
    assert_eq!(
        fx.run(fx.gw_b, "snat_out", &udp_frame(VM_B, 41000, SRV, 53))
            .0,
        OK
    );
    assert_eq!(fx.new_flow_a(41007), SHOT, "at the cap");
    let r = fx.dp.gc().expect("gc");
    assert_eq!(r.dropped_early, 4, "A down to half its cap: {r:?}");
    assert_eq!(fx.dp.session_count(A), 4);
    assert_eq!(fx.dp.session_count(B), 1, "B's session is not A's problem");
    fx.established_a("after the early drop");
    assert_eq!(fx.new_flow_a(41007), OK, "room again");
}

#[test]
fn the_session_table_keeps_its_sessions_over_a_restart_and_a_resize() {
    let bpffs = Bpffs::new();
    let router = testrun_router(A, GW_A, &["10.0.0.0/24"]);
    let open = |max_sessions: u32| {
        let nat = NatConfig {
            max_sessions,
            ..NatConfig::default()
        };
        let dp = Datapath::open(bpffs.path(), &nat).unwrap_or_else(|e| panic!("open: {e:#}"));
        dp.configure_router(&router).expect("configure router");
        dp
    };
    let table_size = || {
        let pin = router_ctl::datapath::bpffs::version_dir(bpffs.path()).join(maps::SESSIONS);
        MapData::from_pin(&pin)
            .and_then(|m| m.info())
            .expect("pinned session table")
            .max_entries()
    };
    let dp = open(1024);
    assert_eq!(table_size(), 1024);
    for sport in 40000..40010 {
        let (rc, _) = dp
            .test_run("snat_out", &udp_frame(VM_A, sport, SRV, 53))
            .expect("test run");
        assert_eq!(rc, OK);
    }
    drop(dp);
    // Same size: the pinned table is reused as it is.
    let dp = open(1024);
    assert_eq!(dp.sessions(A).expect("sessions").len(), 10);
    drop(dp);
    // Another size: a table of that size, with the sessions carried over.
    let dp = open(2048);
    assert_eq!(table_size(), 2048);
    assert_eq!(dp.sessions(A).expect("sessions").len(), 10);
    // The router's count survived in its own pin; the GC checks it against the table.
    dp.gc().expect("gc");
    assert_eq!(dp.session_count(A), 10);
    drop(dp);
    // Smaller than the sessions it held: as many as fit stay.
    let dp = open(4);
    assert_eq!(table_size(), 4);
    assert_eq!(dp.sessions(A).expect("sessions").len(), 4);
}

#[test]
fn floating_ip_flows_of_a_router_at_its_cap_are_translated_without_a_session() {
    use router_ctl::model::spec::FloatingIpSpec;
    const FIP: [u8; 4] = [192, 0, 2, 50];
    const FIXED: [u8; 4] = [10, 0, 0, 9];
    let fx = Fixture::new(&capped(2, 30));
    fx.dp
        .configure_floating(
            A,
            &[FloatingIpSpec {
                floating_ip: FIP.into(),
                fixed_ip: Some(FIXED.into()),
            }],
            &[],
        )
        .expect("configure floating");
    let fip_flow = |sport, what| {
        let (from, to) = (
            udp_frame(FIXED, sport, SRV, 53),
            udp_frame(FIP, sport, SRV, 53),
        );
        fx.translated(fx.gw_a, "snat_out", &from, &to, what);
    };
    // A floating-IP flow records its session, counted like any other.
    fip_flow(40000, "floating IP flow");
    assert_eq!(fx.dp.session_count(A), 1);
    assert_eq!(fx.new_flow_a(40001), OK, "a SNAT flow: A at its cap of 2");
    assert_eq!(fx.dp.session_count(A), 2);
    // At the cap: a new floating-IP flow is still translated (the map decides, not the
    // session) but records no session.
    fip_flow(40002, "floating IP flow at the cap");
    assert_eq!(fx.dp.session_count(A), 2);
    let listed = fx.dp.sessions(A).expect("sessions");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        !listed.iter().any(|s| s.internal.port() == 40002),
        "{listed:?}"
    );
}
