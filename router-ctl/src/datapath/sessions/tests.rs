//! The session table's pure logic: listing, expiry by state timeout, orphan aliases, early
//! drop under pressure, alias slots, the GC's pace, sessions outside the internal CIDRs.

use super::*;
use router_common::{
    IPPROTO_TCP, IPPROTO_UDP, ST_ACK, ST_FIN, ST_REPLY_SHIFT, ST_RST, ST_SEEN, ST_SYN, ip_to_wire,
    port_to_wire,
};

const S: u64 = 1_000_000_000;

/// The outbound tuple of the test flow.
fn fwd(proto: u8) -> SessionKey {
    SessionKey {
        router_id: 7,
        src: ip_to_wire([10, 0, 0, 5]),
        dst: ip_to_wire([203, 0, 113, 9]),
        sport: port_to_wire(40000),
        dport: if proto == IPPROTO_ICMP {
            0
        } else {
            port_to_wire(53)
        },
        proto,
        dir: DIR_OUT,
    }
}

/// The session of the test flow translated to 192.0.2.10:`port`; with `alias`, also its
/// forward alias.
fn session(
    proto: u8,
    port: u16,
    last: u64,
    state: u8,
    alias: bool,
) -> HashMap<SessionKey, SessionValue> {
    let k = fwd(proto);
    let a = SessionValue {
        addr: ip_to_wire([192, 0, 2, 10]),
        port: port_to_wire(port),
        state: 0,
        kind: 0,
        last_seen_ns: last,
    };
    let rk = reverse_of(&k, &a);
    let rv = SessionValue {
        addr: k.src,
        port: k.sport,
        state,
        kind: 0,
        last_seen_ns: last,
    };
    assert_eq!(forward_of(&rk, &rv), k);
    let mut m = HashMap::from([(rk, rv)]);
    if alias {
        m.insert(k, a);
    }
    m
}

#[test]
fn join_lists_one_session_per_entry() {
    let m = session(IPPROTO_UDP, 1500, 12 * S, ST_SEEN, true);
    let s = join(&m, 7, 20 * S);
    assert_eq!(s.len(), 1, "the alias is not a session");
    assert_eq!(s[0].protocol, "udp");
    assert_eq!(s[0].internal.to_string(), "10.0.0.5:40000");
    assert_eq!(s[0].translated.to_string(), "192.0.2.10:1500");
    assert_eq!(s[0].remote.to_string(), "203.0.113.9:53");
    assert_eq!(s[0].state, "REPLIED");
    assert_eq!(s[0].idle_secs, 8);
    assert!(join(&m, 8, 20 * S).is_empty());
}

#[test]
fn gc_expires_by_state_timeout() {
    let nat = NatConfig::default();
    // UDP unreplied: 30 s.
    let m = session(IPPROTO_UDP, 40000, 0, 0, false);
    assert!(expired(&m, &nat, 29 * S).is_empty());
    assert_eq!(expired(&m, &nat, 31 * S).len(), 1);
    // ... with its alias.
    let m = session(IPPROTO_UDP, 1500, 0, 0, true);
    assert_eq!(expired(&m, &nat, 31 * S).len(), 2);
    // UDP replied: 120 s.
    let m = session(IPPROTO_UDP, 40000, 0, ST_SEEN, false);
    assert!(expired(&m, &nat, 100 * S).is_empty());
    // TCP established survives a day.
    let est = ST_SYN | ST_ACK | ST_SEEN | (ST_ACK << ST_REPLY_SHIFT);
    let m = session(IPPROTO_TCP, 40000, 0, est, false);
    assert!(expired(&m, &nat, 86_400 * S).is_empty());
    // TCP SYN_SENT: 120 s.
    let m = session(IPPROTO_TCP, 40000, 0, ST_SYN, false);
    assert_eq!(expired(&m, &nat, 121 * S).len(), 1);
    // ICMP: 30 s.
    let m = session(IPPROTO_ICMP, 40000, 0, ST_SEEN, false);
    assert_eq!(expired(&m, &nat, 31 * S).len(), 1);
}

#[test]
fn gc_removes_orphan_aliases_after_grace() {
    let nat = NatConfig::default();
    let mut m = session(IPPROTO_UDP, 1500, 0, 0, true);
    m.retain(|k, _| k.dir == DIR_OUT);
    assert!(expired(&m, &nat, S).is_empty(), "grace period");
    assert_eq!(expired(&m, &nat, 3 * S), vec![fwd(IPPROTO_UDP)]);
    // An alias whose port now holds another flow's session is an orphan too.
    let mut m = session(IPPROTO_UDP, 1500, 0, 0, true);
    for (k, v) in m.iter_mut() {
        if k.dir == DIR_IN {
            v.addr = ip_to_wire([10, 0, 0, 6]);
        }
    }
    assert_eq!(expired(&m, &nat, 3 * S), vec![fwd(IPPROTO_UDP)]);
    // A live alias stays.
    let m = session(IPPROTO_UDP, 1500, 0, 0, true);
    assert!(expired(&m, &nat, 3 * S).is_empty());
}

/// `n` unreplied UDP sessions to distinct remote ports, last seen at `first`, `first + 1`, …
/// ns; every third with a forward alias.
fn unreplied(n: u16, first: u64) -> HashMap<SessionKey, SessionValue> {
    let mut m = HashMap::new();
    for i in 0..n {
        let mut k = fwd(IPPROTO_UDP);
        k.dport = port_to_wire(1000 + i);
        let aliased = i % 3 == 0;
        let nat = if aliased { 2000 + i } else { 40000 };
        let a = SessionValue {
            addr: ip_to_wire([192, 0, 2, 10]),
            port: port_to_wire(nat),
            state: 0,
            kind: 0,
            last_seen_ns: first + u64::from(i),
        };
        let rk = reverse_of(&k, &a);
        let rv = SessionValue {
            addr: k.src,
            port: k.sport,
            state: 0,
            kind: 0,
            last_seen_ns: first + u64::from(i),
        };
        m.insert(rk, rv);
        if aliased {
            m.insert(k, a);
        }
    }
    m
}

/// Limits of a table of `capacity` entries (crowded at 3/4, dropped to 1/2) whose
/// routers' cap is never reached.
fn table(capacity: usize) -> Limits {
    Limits {
        capacity,
        per_router: 1 << 20,
    }
}

/// An assured UDP session (a reply and a packet out after the first).
const UDP_ASSURED: u8 = ST_SEEN | ST_ACK;

#[test]
fn early_drop_takes_sessions_not_assured_oldest_first_and_never_assured_ones() {
    let mut m = unreplied(30, 100);
    // 30 sessions, 10 aliases; plus an established TCP session older than all of them and
    // an assured UDP one with its alias.
    let est = ST_SYN | ST_ACK | ST_SEEN | (ST_ACK << ST_REPLY_SHIFT);
    m.extend(session(IPPROTO_TCP, 40000, 0, est, false));
    m.extend(session(IPPROTO_UDP, 1500, 1, UDP_ASSURED, true));
    assert_eq!(m.len(), 43);

    assert!(
        early_drop(&m, &[], &table(60)).is_empty(),
        "below the high mark (45)"
    );
    // Crowded at 42, down to 28.
    let doomed = early_drop(&m, &[], &table(56));
    let left: HashMap<_, _> = m
        .iter()
        .filter(|(k, _)| !doomed.contains(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    // Down to the low mark; a session's alias going with it may take it one below.
    assert!(
        (27..=28).contains(&left.len()),
        "{} left: {doomed:?}",
        left.len()
    );
    for (k, v) in &doomed.iter().map(|k| (k, m[k])).collect::<Vec<_>>() {
        let session = if k.dir == DIR_IN {
            *v
        } else {
            m[&reverse_of(k, v)]
        };
        assert_eq!(session.state & ST_SEEN, 0, "only unassured sessions go");
    }
    // Oldest first: every session still there was seen after every one dropped.
    let newest_dropped = doomed
        .iter()
        .filter(|k| k.dir == DIR_IN)
        .map(|k| m[k].last_seen_ns)
        .max()
        .expect("something dropped");
    assert!(
        left.iter()
            .filter(|(k, v)| k.dir == DIR_IN && v.state & ST_SEEN == 0)
            .all(|(_, v)| v.last_seen_ns > newest_dropped)
    );
    // A dropped session's alias goes with it; no alias is left without its session.
    for (k, v) in left.iter().filter(|(k, _)| k.dir == DIR_OUT) {
        assert!(left.contains_key(&reverse_of(k, v)), "orphaned alias {k:?}");
    }
    // The assured sessions and their alias stay, however old.
    assert_eq!(left.values().filter(|v| v.state & ST_SEEN != 0).count(), 2);

    // Entries expired in the same pass count as gone already.
    let expired: Vec<SessionKey> = m
        .keys()
        .filter(|k| k.dir == DIR_IN)
        .take(5)
        .copied()
        .collect();
    assert!(
        early_drop(&m, &expired, &table(56)).is_empty(),
        "38 left: below 42"
    );
    // Only unassured sessions can go: with nothing else to drop it stops above `low`.
    let all = early_drop(&m, &[], &table(2));
    assert_eq!(all.len(), 40, "30 sessions and their 10 aliases");

    // A single answered exchange (one query, one answer) is not protected; a refused TCP
    // connection neither.
    let mut m = unreplied(30, 100);
    m.extend(session(IPPROTO_UDP, 1500, 1, ST_SEEN, true));
    m.extend(session(
        IPPROTO_TCP,
        40000,
        2,
        ST_SYN | ST_SEEN | ((ST_ACK | ST_RST) << ST_REPLY_SHIFT),
        false,
    ));
    let doomed = early_drop(&m, &[], &table(40));
    let gone: Vec<u8> = doomed
        .iter()
        .filter(|k| k.dir == DIR_IN && m[*k].last_seen_ns < 100)
        .map(|k| k.proto)
        .collect();
    assert_eq!(gone.len(), 2, "both go first, being the oldest: {doomed:?}");
}

/// Conntrack's GC drops closing TCP connections under pressure although they were assured
/// (`tcp_can_early_drop`); so does this one, and never a live connection, however old.
#[test]
fn early_drop_takes_closing_connections_and_never_live_ones() {
    let est = ST_SYN | ST_ACK | ST_SEEN | (ST_ACK << ST_REPLY_SHIFT);
    let closing = est | ST_FIN;
    let time_wait = closing | (ST_FIN << ST_REPLY_SHIFT);
    let reset = est | (ST_RST << ST_REPLY_SHIFT);
    let mut m = HashMap::new();
    // The live connections are the oldest; then ten of each closing kind.
    for (n, state) in [est, closing, time_wait, reset].into_iter().enumerate() {
        for i in 0..10u16 {
            let last = (n as u64) * 100 + u64::from(i);
            m.extend(session(
                IPPROTO_TCP,
                2000 + (n as u16) * 100 + i,
                last,
                state,
                false,
            ));
        }
    }
    assert_eq!(m.len(), 40);
    for (state, want) in [
        (est, SessionState::Established),
        (closing, SessionState::Closing),
        (time_wait, SessionState::TimeWait),
        (reset, SessionState::Close),
    ] {
        assert_eq!(SessionState::derive(IPPROTO_TCP, state), want);
        assert_eq!(
            droppable_early(IPPROTO_TCP, state),
            want != SessionState::Established
        );
    }
    assert!(
        assured(IPPROTO_TCP, time_wait),
        "assured, and still droppable"
    );

    // Crowded at 36 of 48, down to 24: 16 go, the oldest closing ones first.
    let doomed = early_drop(&m, &[], &table(48));
    assert_eq!(doomed.len(), 16, "{doomed:?}");
    assert!(
        doomed
            .iter()
            .all(|k| m[k].state == closing || m[k].state == time_wait)
    );
    assert_eq!(doomed.iter().filter(|k| m[*k].state == closing).count(), 10);
    // With nothing else to drop, every closing connection goes and every live one stays.
    let all = early_drop(&m, &[], &table(2));
    assert_eq!(all.len(), 30);
    assert!(all.iter().all(|k| m[k].state != est));
}

/// `n` unreplied TCP sessions (SYN_SENT) of router `router`, last seen at `first`, …
fn syn_flood(router: u16, n: u16, first: u64) -> HashMap<SessionKey, SessionValue> {
    (0..n)
        .map(|i| {
            let mut k = fwd(IPPROTO_TCP);
            k.router_id = router;
            k.dport = port_to_wire(1000 + i);
            let a = SessionValue {
                addr: ip_to_wire([192, 0, 2, router as u8]),
                port: k.sport,
                ..Default::default()
            };
            let rk = reverse_of(&k, &a);
            let rv = SessionValue {
                addr: k.src,
                port: k.sport,
                state: ST_SYN,
                kind: 0,
                last_seen_ns: first + u64::from(i),
            };
            (rk, rv)
        })
        .collect()
}

#[test]
fn early_drop_brings_a_crowded_router_to_half_its_cap_and_spares_the_others() {
    let limits = Limits {
        capacity: 1000,
        per_router: 40,
    };
    // Router 1 floods: 40 unassured sessions, one assured older than all of them.
    let mut m = syn_flood(1, 40, 100);
    let mut est = session(
        IPPROTO_TCP,
        40000,
        0,
        ST_SYN | ST_ACK | ST_SEEN | (ST_ACK << ST_REPLY_SHIFT),
        false,
    );
    est = est
        .into_iter()
        .map(|(mut k, v)| {
            k.router_id = 1;
            k.src = ip_to_wire([198, 51, 100, 1]);
            (k, v)
        })
        .collect();
    m.extend(est);
    // Router 2: 20 unassured sessions (below its crowded mark of 30), older still.
    m.extend(syn_flood(2, 20, 0));
    let doomed = early_drop(&m, &[], &limits);
    assert!(
        doomed.iter().all(|k| k.router_id == 1),
        "another router's sessions are not touched: {doomed:?}"
    );
    let left1 = m
        .keys()
        .filter(|k| k.router_id == 1 && !doomed.contains(k))
        .count();
    assert_eq!(left1, 20, "router 1 down to half its cap");
    assert!(
        m.iter()
            .filter(|(k, _)| k.router_id == 1 && !doomed.contains(k))
            .any(|(_, v)| v.state & ST_ACK != 0),
        "its assured session stays"
    );
    // The oldest went.
    let newest_dropped = doomed
        .iter()
        .map(|k| m[k].last_seen_ns)
        .max()
        .expect("dropped");
    assert!(
        m.iter()
            .filter(|(k, v)| k.router_id == 1 && v.state == ST_SYN && !doomed.contains(k))
            .all(|(_, v)| v.last_seen_ns > newest_dropped)
    );

    // A crowded table (70 of 80) with no router crowded: the oldest go, whoever's.
    let limits = Limits {
        capacity: 80,
        per_router: 1000,
    };
    let mut m = syn_flood(1, 30, 100);
    m.extend(syn_flood(2, 40, 0));
    let doomed = early_drop(&m, &[], &limits);
    assert_eq!(doomed.len(), 30, "70 → 40");
    assert!(
        doomed.iter().all(|k| k.router_id == 2),
        "router 2's are older"
    );
    // Router 2 crowded (cap 50, crowded at 37): it goes down to 25 first, which leaves
    // the table at 55, no longer crowded (60).
    let capped = Limits {
        capacity: 80,
        per_router: 50,
    };
    let doomed = early_drop(&m, &[], &capped);
    assert_eq!(doomed.len(), 15);
    assert!(doomed.iter().all(|k| k.router_id == 2));
}

#[test]
fn a_refused_connection_is_closed_at_once() {
    let nat = NatConfig::default();
    let refused = ST_SYN | ST_SEEN | ((ST_ACK | ST_RST) << ST_REPLY_SHIFT);
    let m = session(IPPROTO_TCP, 40000, 10 * S, refused, false);
    assert_eq!(expired(&m, &nat, 10 * S).len(), 1, "no timeout to wait for");
    // A reset established connection waits for the CLOSE timeout (10 s).
    let reset = ST_SYN | ST_ACK | ST_SEEN | (ST_RST << ST_REPLY_SHIFT);
    let m = session(IPPROTO_TCP, 40000, 10 * S, reset, false);
    assert!(expired(&m, &nat, 15 * S).is_empty());
    assert_eq!(expired(&m, &nat, 21 * S).len(), 1);
}

#[test]
fn alias_slots_are_those_of_the_aliases_left() {
    let m = session(IPPROTO_UDP, 1500, 0, 0, true);
    let k = fwd(IPPROTO_UDP);
    let slot = alias_hint_slot(k.router_id, k.dst, k.dport, k.proto);
    assert_eq!(alias_slots(&m, &[]), [slot].into());
    assert!(
        alias_slots(&m, &[k]).is_empty(),
        "the alias goes in this pass"
    );
    let no_alias = session(IPPROTO_UDP, 40000, 0, 0, false);
    assert!(
        alias_slots(&no_alias, &[]).is_empty(),
        "sessions have no slot"
    );
}

#[test]
fn gc_paces_by_interval_and_by_pressure() {
    let t0 = Instant::now();
    let limits = Limits::new(&NatConfig::default());
    let mut p = GcPace::new(Duration::from_secs(10), &limits);
    let at = |created: u64| Pressure {
        created,
        ..Default::default()
    };
    assert!(p.due(t0, &at(0)), "first pass at once");
    p.ran(t0, &at(1000), 10);
    let s = |n| t0 + Duration::from_secs(n);
    assert!(
        !p.due(s(1), &at(2000)),
        "quiet table: wait for the interval"
    );
    assert!(p.due(s(10), &at(1000)), "interval");
    // Entries left plus sessions created since reach the pressure mark.
    let crowd = (PRESSURE - 10) as u64;
    assert!(!p.due(s(1), &at(1000 + crowd - 1)));
    assert!(p.due(s(1), &at(1000 + crowd)));
    // A crowded router that gets new sessions.
    let crowded = Pressure {
        created: 1001,
        router_crowded: true,
        ..Default::default()
    };
    assert!(p.due(s(1), &crowded));
    assert!(!p.due(
        s(1),
        &Pressure {
            created: 1000,
            ..crowded
        }
    ));
    // A full table (or a router at its cap) creates nothing: refusals say it.
    let refusing = Pressure {
        created: 1000,
        refused: 1,
        router_crowded: false,
    };
    assert!(p.due(s(1), &refusing));
    p.ran(s(1), &refusing, 10);
    assert!(!p.due(s(2), &refusing), "refusals stopped");
    // A crowded table that gets no new sessions is not walked again before the interval.
    p.ran(s(2), &at(5000), PRESSURE + 100);
    assert!(!p.due(s(3), &at(5000)));
    assert!(p.due(s(3), &at(5001)));
    assert!(p.due(s(12), &at(5000)));
    // The per-CPU sum may wrap.
    p.ran(s(20), &at(u64::MAX), 0);
    assert!(!p.due(s(21), &at(5)));
}

#[test]
fn sessions_outside_the_internal_cidrs() {
    let net = |s: &str| s.parse::<Ipv4Net>().expect("cidr");
    // Session with its alias; internal end 10.0.0.5 on router 7.
    let m = session(IPPROTO_UDP, 1500, 0, 0, true);
    assert!(outside(&m, 7, &[net("10.0.0.0/24")]).is_empty());
    assert!(outside(&m, 7, &[net("10.9.0.0/24"), net("10.0.0.4/30")]).is_empty());
    let mut gone = outside(&m, 7, &[net("10.9.0.0/24")]);
    gone.sort_by_key(|k| k.dir);
    assert_eq!(gone.len(), 2, "session and alias");
    assert_eq!(gone[0], fwd(IPPROTO_UDP));
    assert_eq!(outside(&m, 7, &[]).len(), 2);
    // Another router's entries, and floating-IP sessions, are not touched.
    assert!(outside(&m, 8, &[]).is_empty());
    let mut fip = m.clone();
    for v in fip.values_mut() {
        v.kind = router_common::SESSION_FIP;
    }
    assert!(outside(&fip, 7, &[]).is_empty());
}
