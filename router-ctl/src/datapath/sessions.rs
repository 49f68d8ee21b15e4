//! Pure session-table logic: listing sessions (one `DIR_IN` entry each, plus a forward alias
//! for SNAT flows that could not keep their first-choice port), deciding which entries the
//! GC expires under the configured conntrack-like timeouts and which it drops early when the
//! table is crowded, and when it runs.
//!
//! The table (`SESSIONS`) never evicts by itself: a new flow that finds it full is dropped and
//! counted (`drop_table_full`). Room is kept here, as conntrack keeps it: sessions expire by
//! their state's timeout, and once the table is [`PRESSURE`] full the GC runs every second and
//! drops sessions that never saw a reply (unanswered UDP, TCP still in SYN_SENT, unanswered
//! pings), least recently seen first, down to [`EARLY_DROP_TARGET`]. A session that was
//! answered (an established TCP connection, a UDP exchange) is never dropped before its timeout,
//! so a flood of new flows cannot push out live connections, which an LRU table would do.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use router_common::{
    DIR_IN, DIR_OUT, IPPROTO_ICMP, MAX_SESSIONS, SESSION_SNAT, ST_SEEN, SessionKey, SessionValue,
    nat::{SessionState, alias_hint_slot, proto_name},
};

use super::SessionInfo;
use crate::config::NatConfig;

/// Aliases younger than this are never treated as orphans: the datapath inserts the session a
/// moment before its alias, and re-creates a removed session from its alias.
pub const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// The session key of a forward alias (`v`: its translated address and port).
pub fn reverse_of(k: &SessionKey, v: &SessionValue) -> SessionKey {
    let sport = if k.proto == IPPROTO_ICMP { 0 } else { k.dport };
    SessionKey {
        router_id: k.router_id,
        src: k.dst,
        dst: v.addr,
        sport,
        dport: v.port,
        proto: k.proto,
        dir: DIR_IN,
    }
}

/// The forward (outbound) tuple of a session, the key its alias would have.
pub fn forward_of(k: &SessionKey, v: &SessionValue) -> SessionKey {
    let dport = if k.proto == IPPROTO_ICMP { 0 } else { k.sport };
    SessionKey {
        router_id: k.router_id,
        src: v.addr,
        dst: k.src,
        sport: v.port,
        dport,
        proto: k.proto,
        dir: DIR_OUT,
    }
}

/// Whether alias `(k, v)` points at session `(rk, rv)`: same flow, same port.
fn alias_matches(k: &SessionKey, v: &SessionValue, rk: &SessionKey, rv: &SessionValue) -> bool {
    *rk == reverse_of(k, v) && rv.addr == k.src && rv.port == k.sport
}

/// The name `router-ctl sessions` shows for a `SESSION_*` kind.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        router_common::SESSION_SNAT => "snat",
        router_common::SESSION_FIP => "floating_ip",
        router_common::SESSION_PF => "port_forwarding",
        _ => "other",
    }
}

/// Timeout in seconds of a session in `state`.
pub fn timeout_secs(nat: &NatConfig, proto: u8, state: SessionState) -> u64 {
    match state {
        SessionState::SynSent => nat.tcp_syn_sent,
        SessionState::Established => nat.tcp_established,
        // A half-closed connection may still carry data; Linux keeps FIN_WAIT/CLOSE_WAIT for
        // minutes, so it gets the TIME_WAIT timeout rather than the short CLOSE one.
        SessionState::Closing | SessionState::TimeWait => nat.tcp_time_wait,
        SessionState::Close => nat.tcp_closing,
        SessionState::Unreplied | SessionState::Replied if proto == IPPROTO_ICMP => nat.icmp,
        SessionState::Unreplied => nat.udp_unreplied,
        SessionState::Replied => nat.udp_replied,
    }
}

fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(
        router_common::ip_from_wire(addr).into(),
        router_common::port_from_wire(port),
    )
}

/// The sessions of one router: one per `DIR_IN` entry.
pub fn join(
    entries: &HashMap<SessionKey, SessionValue>,
    router_id: u32,
    now_ns: u64,
) -> Vec<SessionInfo> {
    let mut out: Vec<SessionInfo> = entries
        .iter()
        .filter(|(k, _)| u32::from(k.router_id) == router_id && k.dir == DIR_IN)
        .map(|(k, v)| SessionInfo {
            protocol: proto_name(k.proto).to_string(),
            internal: sock(v.addr, v.port),
            translated: sock(k.dst, k.dport),
            remote: sock(k.src, k.sport),
            kind: kind_name(v.kind).to_string(),
            state: SessionState::derive(k.proto, v.state).name().to_string(),
            idle_secs: now_ns.saturating_sub(v.last_seen_ns) / 1_000_000_000,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.internal, a.remote, &a.protocol).cmp(&(b.internal, b.remote, &b.protocol))
    });
    out
}

/// Keys the GC must delete: sessions idle past their state's timeout (with their alias, if
/// any), and aliases whose session is gone or belongs to another flow once past a short grace
/// period.
pub fn expired(
    entries: &HashMap<SessionKey, SessionValue>,
    nat: &NatConfig,
    now_ns: u64,
) -> Vec<SessionKey> {
    let mut doomed = Vec::new();
    for (k, v) in entries {
        match k.dir {
            DIR_IN => {
                let state = SessionState::derive(k.proto, v.state);
                let idle = now_ns.saturating_sub(v.last_seen_ns);
                if idle > timeout_secs(nat, k.proto, state).saturating_mul(1_000_000_000) {
                    doomed.push(*k);
                    let fk = forward_of(k, v);
                    if let Some(fv) = entries.get(&fk)
                        && alias_matches(&fk, fv, k, v)
                    {
                        doomed.push(fk);
                    }
                }
            }
            DIR_OUT => {
                let rk = reverse_of(k, v);
                let live = entries
                    .get(&rk)
                    .is_some_and(|rv| alias_matches(k, v, &rk, rv));
                if !live && now_ns.saturating_sub(v.last_seen_ns) > ORPHAN_GRACE_NS {
                    doomed.push(*k);
                }
            }
            _ => doomed.push(*k),
        }
    }
    doomed
}

/// Entries (sessions and aliases) at or above which the table is crowded: the GC runs every
/// second while new sessions keep coming, and drops never-replied sessions early.
pub const PRESSURE: usize = MAX_SESSIONS as usize / 4 * 3;
/// Entries an early drop brings a crowded table down to (if enough sessions were never
/// replied): room for about a second of new flows at the bench's highest rates.
pub const EARLY_DROP_TARGET: usize = MAX_SESSIONS as usize / 2;

/// Keys the GC drops early from a crowded table: `entries` is the table as read, `gone` what
/// this pass removes anyway (expired). When the rest holds at least `high` entries, sessions
/// that never saw a reply are dropped with their alias, least recently seen first, until at
/// most `low` entries are left or none is left to drop. Answered sessions are never dropped.
pub fn early_drop(
    entries: &HashMap<SessionKey, SessionValue>,
    gone: &[SessionKey],
    high: usize,
    low: usize,
) -> Vec<SessionKey> {
    let gone: std::collections::HashSet<&SessionKey> = gone.iter().collect();
    let mut left = entries.len().saturating_sub(gone.len());
    if left < high {
        return Vec::new();
    }
    let mut unreplied: Vec<(&SessionKey, &SessionValue)> = entries
        .iter()
        .filter(|(k, v)| k.dir == DIR_IN && v.state & ST_SEEN == 0 && !gone.contains(k))
        .collect();
    unreplied.sort_unstable_by_key(|(_, v)| v.last_seen_ns);
    let mut doomed = Vec::new();
    for (k, v) in unreplied {
        if left <= low {
            break;
        }
        doomed.push(*k);
        left -= 1;
        let fk = forward_of(k, v);
        if let Some(fv) = entries.get(&fk)
            && alias_matches(&fk, fv, k, v)
            && !gone.contains(&fk)
        {
            doomed.push(fk);
            left -= 1;
        }
    }
    doomed
}

/// The `ALIAS_HINTS` slots of the forward aliases in `entries` that `gone` leaves: the slots
/// the GC must keep set.
pub fn alias_slots(
    entries: &HashMap<SessionKey, SessionValue>,
    gone: &[SessionKey],
) -> std::collections::HashSet<u32> {
    let gone: std::collections::HashSet<&SessionKey> = gone.iter().collect();
    entries
        .keys()
        .filter(|k| k.dir == DIR_OUT && !gone.contains(k))
        .map(|k| alias_hint_slot(k.router_id, k.dst, k.dport, k.proto))
        .collect()
}

/// When the GC runs: every `every` (`[nat] gc_interval`), and every second while the table is
/// estimated crowded — the entries the last pass left plus the sessions created since
/// (`GlobalCounter::SessionsCreated`, one cheap read) — and still getting new sessions.
#[derive(Debug)]
pub struct GcPace {
    every: Duration,
    /// When the last pass ran, the creation counter then and the entries it left.
    last: Option<(Instant, u64, usize)>,
}

impl GcPace {
    /// How often the daemon asks [`GcPace::due`].
    pub const POLL: Duration = Duration::from_secs(1);

    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether a pass is due at `now`, with the creation counter at `created`.
    pub fn due(&self, now: Instant, created: u64) -> bool {
        let Some((at, created_then, entries)) = self.last else {
            return true;
        };
        let new = created.wrapping_sub(created_then);
        now.duration_since(at) >= self.every
            || (new > 0 && entries.saturating_add(new as usize) >= PRESSURE)
    }

    /// Records a pass that ran at `now` with the counter at `created` and left `entries`.
    pub fn ran(&mut self, now: Instant, created: u64, entries: usize) {
        self.last = Some((now, created, entries));
    }
}

/// SNAT entries (sessions and aliases) of router `dp_id` whose internal end is in none of
/// `cidrs`: once a subnet leaves the router they must go, because `snat_out` trusts a session
/// hit without asking the internal-CIDR trie. Floating-IP and port-forwarding sessions are
/// left alone (their maps decide their translation).
pub fn outside(
    entries: &HashMap<SessionKey, SessionValue>,
    dp_id: u32,
    cidrs: &[Ipv4Net],
) -> Vec<SessionKey> {
    entries
        .iter()
        .filter(|(k, v)| u32::from(k.router_id) == dp_id && v.kind == SESSION_SNAT)
        .filter(|(k, v)| {
            let internal = if k.dir == DIR_IN { v.addr } else { k.src };
            let ip = Ipv4Addr::from(router_common::ip_from_wire(internal));
            !cidrs.iter().any(|n| n.contains(&ip))
        })
        .map(|(k, _)| *k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_common::{
        IPPROTO_TCP, IPPROTO_UDP, ST_ACK, ST_REPLY_SHIFT, ST_SEEN, ST_SYN, ip_to_wire, port_to_wire,
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

    #[test]
    fn early_drop_takes_unreplied_sessions_oldest_first_and_never_answered_ones() {
        let mut m = unreplied(30, 100);
        // 30 sessions, 10 aliases; plus an established TCP session older than all of them and
        // a replied UDP one with its alias.
        let est = ST_SYN | ST_ACK | ST_SEEN | (ST_ACK << ST_REPLY_SHIFT);
        m.extend(session(IPPROTO_TCP, 40000, 0, est, false));
        m.extend(session(IPPROTO_UDP, 1500, 1, ST_SEEN, true));
        assert_eq!(m.len(), 43);

        assert!(
            early_drop(&m, &[], 44, 10).is_empty(),
            "below the high mark"
        );
        let doomed = early_drop(&m, &[], 43, 30);
        let left: HashMap<_, _> = m
            .iter()
            .filter(|(k, _)| !doomed.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        // Down to the low mark; a session's alias going with it may take it one below.
        assert!(
            (29..=30).contains(&left.len()),
            "{} left: {doomed:?}",
            left.len()
        );
        for (k, v) in &doomed.iter().map(|k| (k, m[k])).collect::<Vec<_>>() {
            let session = if k.dir == DIR_IN {
                *v
            } else {
                m[&reverse_of(k, v)]
            };
            assert_eq!(session.state & ST_SEEN, 0, "only never-replied sessions go");
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
        // The answered sessions and their alias stay, however old.
        assert_eq!(left.values().filter(|v| v.state & ST_SEEN != 0).count(), 2);

        // Entries expired in the same pass count as gone already.
        let expired: Vec<SessionKey> = m
            .keys()
            .filter(|k| k.dir == DIR_IN)
            .take(5)
            .copied()
            .collect();
        assert!(
            early_drop(&m, &expired, 40, 30).is_empty(),
            "38 left: below 40"
        );
        // Only unreplied sessions can go: with nothing else to drop it stops above `low`.
        let all = early_drop(&m, &[], 1, 0);
        assert_eq!(all.len(), 40, "30 sessions and their 10 aliases");
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
        let mut p = GcPace::new(Duration::from_secs(10));
        assert!(p.due(t0, 0), "first pass at once");
        p.ran(t0, 1000, 10);
        let s = |n| t0 + Duration::from_secs(n);
        assert!(!p.due(s(1), 2000), "quiet table: wait for the interval");
        assert!(p.due(s(10), 1000), "interval");
        // Entries left plus sessions created since reach the pressure mark.
        let crowd = (PRESSURE - 10) as u64;
        assert!(!p.due(s(1), 1000 + crowd - 1));
        assert!(p.due(s(1), 1000 + crowd));
        // A crowded table that gets no new sessions is not walked again before the interval.
        p.ran(s(2), 5000, PRESSURE + 100);
        assert!(!p.due(s(3), 5000));
        assert!(p.due(s(3), 5001));
        assert!(p.due(s(12), 5000));
        // The per-CPU sum may wrap.
        p.ran(s(20), u64::MAX, 0);
        assert!(!p.due(s(21), 5));
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
}
