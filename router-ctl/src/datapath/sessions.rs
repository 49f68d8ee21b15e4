//! Pure session-table logic: listing sessions (one `DIR_IN` entry each, plus a forward alias
//! for SNAT flows that could not keep their first-choice port), deciding which entries the
//! GC expires under the configured conntrack-like timeouts and which it drops early when the
//! table or a router's share of it is crowded, and when it runs.
//!
//! The table (`SESSIONS`) never evicts by itself: a new flow that finds it full is dropped and
//! counted (`drop_table_full`), and so is a new flow of a router that holds its cap of entries
//! (`drop_router_quota`). Room is kept here, as conntrack keeps it: sessions expire by their
//! state's timeout (a TCP SYN answered by a RST at once), and while a router holds 3/4 of its
//! cap or the table is 3/4 full ([`Limits`]) the GC runs every second and drops sessions that
//! are not assured ([`router_common::nat::assured`]: unanswered flows, refused connections,
//! single exchanges) and TCP connections already closing ([`droppable_early`]), least recently
//! seen first: a crowded router's own down to half its cap, then, if the table is still
//! crowded, anyone's down to half the table. A live assured session (an established TCP
//! connection, a UDP exchange that goes on) is never dropped before its timeout, so a flood of
//! new flows cannot push out live connections, which an LRU table would do, and one router's
//! flood never reaches another's.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use router_common::{
    DIR_IN, DIR_OUT, IPPROTO_ICMP, IPPROTO_TCP, MAX_SESSIONS, SESSION_SNAT, SessionKey,
    SessionValue,
    nat::{SessionState, alias_hint_slot, assured, opened_and_reset, proto_name},
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
                // A connection refused by a RST is over (conntrack closes it at once).
                if opened_and_reset(k.proto, v.state)
                    || idle > timeout_secs(nat, k.proto, state).saturating_mul(1_000_000_000)
                {
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

/// Entries (sessions and aliases) at or above which the default table is crowded.
pub const PRESSURE: usize = MAX_SESSIONS as usize / 4 * 3;
/// Entries an early drop brings a crowded default table down to.
pub const EARLY_DROP_TARGET: usize = MAX_SESSIONS as usize / 2;

/// The table's size and a router's cap (`[nat] max_sessions`, `max_sessions_per_router`), and
/// the marks the GC works by: 3/4 of either is crowded, and an early drop brings it to 1/2
/// (room for about a second of new flows at the bench's highest rates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub capacity: usize,
    pub per_router: usize,
}

impl Limits {
    pub fn new(nat: &NatConfig) -> Self {
        Self {
            capacity: nat.max_sessions as usize,
            per_router: nat.sessions_per_router() as usize,
        }
    }
    /// Entries at or above which the table is crowded.
    pub fn table_high(&self) -> usize {
        self.capacity * 3 / 4
    }
    /// Entries an early drop brings a crowded table down to.
    pub fn table_low(&self) -> usize {
        self.capacity / 2
    }
    /// Entries at or above which a router is crowded.
    pub fn router_high(&self) -> usize {
        self.per_router * 3 / 4
    }
    /// Entries an early drop brings a crowded router down to.
    pub fn router_low(&self) -> usize {
        self.per_router / 2
    }
}

/// Entries per router number in `entries` but not in `gone`.
pub fn per_router(
    entries: &HashMap<SessionKey, SessionValue>,
    gone: &std::collections::HashSet<&SessionKey>,
) -> HashMap<u16, usize> {
    let mut n = HashMap::new();
    for k in entries.keys().filter(|k| !gone.contains(k)) {
        *n.entry(k.router_id).or_insert(0) += 1;
    }
    n
}

/// Whether the GC may drop a session before its timeout when the table or its router is
/// crowded, as conntrack's GC may (`gc_worker_can_early_drop`): one that is not assured, or a
/// TCP connection that is closing (a FIN or a RST seen, conntrack's `tcp_can_early_drop`).
/// A closed connection was assured but has nothing left to carry, and it stays for
/// `tcp_time_wait`: a client that opens and closes connections at a high rate (HTTP/1.0,
/// health checks, `connect-request-close` in the bench) leaves one per connection, and kept,
/// they would hold its router at its cap and refuse every new connection until they expire.
pub fn droppable_early(proto: u8, state: u8) -> bool {
    !assured(proto, state)
        || (proto == IPPROTO_TCP
            && matches!(
                SessionState::derive(proto, state),
                SessionState::Closing | SessionState::TimeWait | SessionState::Close
            ))
}

/// Keys the GC drops early: `entries` is the table as read, `gone` what this pass removes
/// anyway (expired). Only sessions [`droppable_early`] go, each with its alias, least
/// recently seen first: first those of every router holding at least `router_high` entries,
/// until it holds at most `router_low` (a router's flood is its own problem, and a router over
/// its cap loses its own first); then, while the rest of the table holds at least
/// `table_high`, anyone's until at most `table_low` are left. Live assured sessions are never
/// dropped.
pub fn early_drop(
    entries: &HashMap<SessionKey, SessionValue>,
    gone: &[SessionKey],
    limits: &Limits,
) -> Vec<SessionKey> {
    let gone: std::collections::HashSet<&SessionKey> = gone.iter().collect();
    let mut by_router = per_router(entries, &gone);
    let mut left: usize = by_router.values().sum();
    let crowded: std::collections::HashSet<u16> = by_router
        .iter()
        .filter(|(_, n)| **n >= limits.router_high())
        .map(|(r, _)| *r)
        .collect();
    if crowded.is_empty() && left < limits.table_high() {
        return Vec::new();
    }
    let mut candidates: Vec<(&SessionKey, &SessionValue)> = entries
        .iter()
        .filter(|(k, v)| k.dir == DIR_IN && droppable_early(k.proto, v.state) && !gone.contains(k))
        .collect();
    candidates.sort_unstable_by_key(|(_, v)| v.last_seen_ns);
    let mut doomed = Vec::new();
    let mut take = |k: &SessionKey, v: &SessionValue, by_router: &mut HashMap<u16, usize>| {
        let mut n = 1;
        doomed.push(*k);
        let fk = forward_of(k, v);
        if let Some(fv) = entries.get(&fk)
            && alias_matches(&fk, fv, k, v)
            && !gone.contains(&fk)
        {
            doomed.push(fk);
            n += 1;
        }
        if let Some(c) = by_router.get_mut(&k.router_id) {
            *c = c.saturating_sub(n);
        }
        n
    };
    let mut rest = Vec::new();
    for (k, v) in candidates {
        let r = k.router_id;
        if crowded.contains(&r) && by_router.get(&r).is_some_and(|n| *n > limits.router_low()) {
            left -= take(k, v, &mut by_router).min(left);
        } else {
            rest.push((k, v));
        }
    }
    if left >= limits.table_high() {
        for (k, v) in rest {
            if left <= limits.table_low() {
                break;
            }
            left -= take(k, v, &mut by_router).min(left);
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

/// When the GC runs: every `every` (`[nat] gc_interval`), and every second while
/// - new flows are being refused for want of room (`GlobalCounter::SessionsRefused` moved:
///   a full table or a router at its cap creates nothing, so the creation count alone would
///   never say so), or
/// - new sessions keep coming (`GlobalCounter::SessionsCreated` moved) and the table is
///   estimated crowded — the entries the last pass left plus the sessions created since — or
///   some router's count of entries is at its crowded mark (the caller reads
///   `ROUTER_SESSIONS`).
#[derive(Debug)]
pub struct GcPace {
    every: Duration,
    high: usize,
    /// When the last pass ran, the creation and refusal counters then and the entries it left.
    last: Option<(Instant, u64, u64, usize)>,
}

/// The datapath's counters the pace goes by, read once a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `GlobalCounter::SessionsCreated`, summed over CPUs.
    pub created: u64,
    /// `GlobalCounter::SessionsRefused`, summed over CPUs.
    pub refused: u64,
    /// Some router holds at least `Limits::router_high` entries.
    pub router_crowded: bool,
}

impl GcPace {
    /// How often the daemon asks [`GcPace::due`].
    pub const POLL: Duration = Duration::from_secs(1);

    pub fn new(every: Duration, limits: &Limits) -> Self {
        Self {
            every,
            high: limits.table_high(),
            last: None,
        }
    }

    /// Whether a pass is due at `now`, with the datapath's counters at `p`.
    pub fn due(&self, now: Instant, p: &Pressure) -> bool {
        let Some((at, created_then, refused_then, entries)) = self.last else {
            return true;
        };
        let new = p.created.wrapping_sub(created_then);
        now.duration_since(at) >= self.every
            || p.refused != refused_then
            || (new > 0 && (p.router_crowded || entries.saturating_add(new as usize) >= self.high))
    }

    /// Records a pass that ran at `now` with the counters at `p` and left `entries`.
    pub fn ran(&mut self, now: Instant, p: &Pressure, entries: usize) {
        self.last = Some((now, p.created, p.refused, entries));
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
mod tests;
