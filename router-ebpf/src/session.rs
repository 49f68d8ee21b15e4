//! Connection tracking for SNAT: one `SESSIONS` entry per session, keyed by the tuple its replies
//! arrive with (`DIR_IN`), holding the internal end, both directions' state bits and the last
//! time either direction was seen.
//!
//! An outbound packet finds its session without an entry of its own: its first-choice NAT port
//! `p0` ([`first_port`]: the source port when in range, else a hash of the tuple) is
//! recomputed and the reply key at `p0` looked up; if that entry's internal end is this flow's,
//! it is the session (one lookup). A flow that found `p0` taken by another flow to the same
//! remote endpoint probed another port and has a forward alias (`DIR_OUT` key → its port),
//! looked up second — only when the endpoint's `ALIAS_HINTS` slot says some flow to it may
//! have one, so a new flow walks one bucket, not two. A session whose entry went while its
//! flow still sends (expired by the daemon's GC between two packets, or dropped early under
//! pressure) is re-created by its next outbound packet at the same port, so the connection
//! survives.
//!
//! The table never evicts (see `maps::SESSIONS`): a new flow that finds it full is dropped and
//! counted, and an existing session is never displaced by it.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use router_common::{
    DIR_IN, DIR_OUT, ROUTER_F_FLOATING, RouterConfig, SESSION_SNAT, ST_REPLY_SHIFT, ST_SEEN,
    SessionKey, SessionValue,
    nat::{alias_hint_slot, first_port, probe_port},
    stats::{Counter, GlobalCounter},
};

use crate::{
    maps::{
        ALIAS_HINTS, ROUTER_SESSIONS, SESSIONS, atomic_add, count, count_global, session_quota,
    },
    parse::{IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use router_common::{ST_ACK, ST_FIN, ST_RST, ST_SYN};

/// Ports tried after the first-choice one before giving up on a new flow.
pub const MAX_PROBES: u32 = 64;
/// `-EEXIST`: the map already holds the key.
const EEXIST: i32 = -17;

/// Current CLOCK_MONOTONIC (coarse) time in ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `ST_*` bits for a TCP flags byte (0 for other protocols).
#[inline(always)]
pub fn tcp_bits(flags: u8) -> u8 {
    let mut s = 0;
    if flags & TCP_SYN != 0 {
        s |= ST_SYN;
    } else if flags & TCP_ACK != 0 {
        s |= ST_ACK;
    }
    if flags & TCP_FIN != 0 {
        s |= ST_FIN;
    }
    if flags & TCP_RST != 0 {
        s |= ST_RST;
    }
    s
}

/// Records an outbound packet with `bits` on a session. A pure SYN restarts the state of both
/// directions (the port is being reused for a new connection after a close).
#[inline(always)]
pub fn note_out(v: &mut SessionValue, bits: u8) {
    if bits == ST_SYN {
        v.state = ST_SYN;
    } else {
        v.state |= bits;
    }
    v.last_seen_ns = now();
}

/// Records a reply-direction packet with `bits` on a session.
#[inline(always)]
pub fn note_in(v: &mut SessionValue, bits: u8) {
    v.state |= (bits << ST_REPLY_SHIFT) | ST_SEEN;
    v.last_seen_ns = now();
}

/// Looks up the session of an inbound (`DIR_IN`) key and, when found, records the packet and
/// returns a copy.
#[inline(always)]
pub fn touch_in(key: &SessionKey, bits: u8) -> Option<SessionValue> {
    let p = SESSIONS.get_ptr_mut(key)?;
    // SAFETY: valid map value; concurrent updates of these plain fields are benign.
    let v = unsafe { &mut *p };
    note_in(v, bits);
    Some(*v)
}

/// The reverse key of a forward key once translated to `(gw, nat_port)`.
#[inline(always)]
pub fn reverse_key(fwd: &SessionKey, gw: u32, nat_port: u16) -> SessionKey {
    let (sport, dport) = if fwd.proto == IPPROTO_ICMP {
        (0, nat_port)
    } else {
        (fwd.dport, nat_port)
    };
    SessionKey {
        router_id: fwd.router_id,
        src: fwd.dst,
        dst: gw,
        sport,
        dport,
        proto: fwd.proto,
        dir: DIR_IN,
    }
}

/// Whether session `v` belongs to the flow of forward key `fwd` (its internal end).
#[inline(always)]
fn is_of(v: &SessionValue, fwd: &SessionKey) -> bool {
    v.addr == fwd.src && v.port == fwd.sport
}

/// The first-choice NAT port (wire order) of forward key `fwd` on router `cfg`.
#[inline(always)]
fn p0(cfg: &RouterConfig, fwd: &SessionKey) -> u16 {
    first_port(
        cfg.port_min,
        cfg.port_max,
        fwd.src,
        fwd.dst,
        fwd.sport,
        fwd.dport,
        fwd.proto,
    )
    .to_be()
}

/// The `ALIAS_HINTS` slot of outbound flow `fwd`.
#[inline(always)]
fn hint_slot(fwd: &SessionKey) -> u32 {
    alias_hint_slot(fwd.router_id, fwd.dst, fwd.dport, fwd.proto)
}

/// Whether flow `fwd` may have a forward alias (its slot is set; or unreadable, to be safe).
#[inline(always)]
fn may_have_alias(fwd: &SessionKey) -> bool {
    match ALIAS_HINTS.get_ptr(hint_slot(fwd)) {
        // SAFETY: a valid array slot; a racing update is an atomic add on the same word.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// Adds one to the `ALIAS_HINTS` slot of `fwd` (atomically: other CPUs and the GC's
/// compare-and-swap work on the same word).
#[inline(always)]
fn hint_add(fwd: &SessionKey) {
    if let Some(p) = ALIAS_HINTS.get_ptr_mut(hint_slot(fwd)) {
        // SAFETY: a slot of the array, from its lookup.
        unsafe { atomic_add(p, 1) };
    }
}

/// The `ROUTER_SESSIONS` count of the router of `fwd` (every router number has one).
#[inline(always)]
fn router_count(fwd: &SessionKey) -> Option<*mut u64> {
    ROUTER_SESSIONS.get_ptr_mut(u32::from(fwd.router_id))
}

/// Counts an entry the datapath inserted (`1`) or removed (`u64::MAX`, i.e. minus one) for
/// its router.
#[inline(always)]
fn count_entries(count: Option<*mut u64>, n: u64) {
    if let Some(p) = count {
        // SAFETY: a slot of `ROUTER_SESSIONS`, from its lookup.
        unsafe { atomic_add(p, n) };
    }
}

/// Counts a new flow refused for want of room (`DropTableFull`, `DropRouterQuota`) globally,
/// for the GC's pace, and returns `reason`.
#[inline(always)]
fn refused(reason: Counter) -> Counter {
    count_global(GlobalCounter::SessionsRefused);
    reason
}

/// Why a packet could not be given a session (also the counter to bump).
pub type SessionError = Counter;

/// What [`find_snat`] found for an outbound flow.
pub enum Found {
    /// The flow's session (the packet is recorded on it): its NAT port, wire order; the
    /// address is the gateway IP.
    Port(u16),
    /// No session: [`create_snat`] needs the first-choice port and whether it looked free.
    Missing { first: u16, first_free: bool },
}

/// Finds the session of the outbound SNAT flow `fwd` and records the packet (`bits`) on it;
/// never creates one for a new flow (see the module comment for the lookup order). A hit
/// proves the flow's source was internal when its session was made: the daemon flushes a
/// router's sessions whose internal end left its internal CIDRs.
#[inline(always)]
pub fn find_snat(cfg: &RouterConfig, fwd: &SessionKey, bits: u8) -> Found {
    if cfg.port_max < cfg.port_min {
        return Found::Missing {
            first: 0,
            first_free: false,
        };
    }
    let gw = cfg.gateway_ip;
    let first = p0(cfg, fwd);
    let rk0 = reverse_key(fwd, gw, first);
    let mut first_free = true;
    if let Some(r) = SESSIONS.get_ptr_mut(rk0) {
        // SAFETY: valid map value; concurrent updates of these plain fields are benign.
        let r = unsafe { &mut *r };
        if r.kind == SESSION_SNAT && is_of(r, fwd) {
            note_out(r, bits);
            return Found::Port(first);
        }
        first_free = false;
    }
    // A free first-choice key and no alias towards this endpoint: a new flow.
    if first_free && !may_have_alias(fwd) {
        return Found::Missing { first, first_free };
    }
    // Not at its first-choice port: a displaced flow has a forward alias.
    if let Some(f) = SESSIONS.get_ptr_mut(fwd) {
        // SAFETY: as above.
        let f = unsafe { &mut *f };
        let port = f.port;
        if f.kind == SESSION_SNAT {
            f.last_seen_ns = now();
            let rk = reverse_key(fwd, gw, port);
            match SESSIONS.get_ptr_mut(rk) {
                Some(r) => {
                    // SAFETY: as above.
                    let r = unsafe { &mut *r };
                    if r.kind == SESSION_SNAT && is_of(r, fwd) {
                        note_out(r, bits);
                        return Found::Port(port);
                    }
                }
                // The session went while the alias stayed (the GC removes both, but not
                // atomically): restore it at the same port.
                None => match SESSIONS.insert(rk, new_session(fwd, bits), BPF_NOEXIST as u64) {
                    Ok(()) => {
                        count_entries(router_count(fwd), 1);
                        count_global(GlobalCounter::SessionsCreated);
                        return Found::Port(port);
                    }
                    // No room: keep the alias (the port is still this flow's to take back);
                    // creating afresh fails the same way and the packet is counted there.
                    Err(e) if e != EEXIST => {
                        return Found::Missing { first, first_free };
                    }
                    Err(_) => {}
                },
            }
        }
        // The port went to another flow meanwhile: forget the alias, start afresh.
        if SESSIONS.remove(fwd).is_ok() {
            count_entries(router_count(fwd), u64::MAX);
        }
    }
    Found::Missing { first, first_free }
}

/// The NAT port of the outbound SNAT flow `fwd`: [`find_snat`], then — when `may_create` —
/// [`create_snat`], counting a created session on its own (the hairpin's gateway SNAT;
/// `snat_out` calls the two itself to check the source between them and count once).
#[inline(always)]
pub fn snat_port(
    cfg: &RouterConfig,
    fwd: &SessionKey,
    bits: u8,
    may_create: bool,
) -> Result<u16, SessionError> {
    match find_snat(cfg, fwd, bits) {
        Found::Port(port) => Ok(port),
        Found::Missing { .. } if !may_create => Err(Counter::DropInvalid),
        Found::Missing { first, first_free } => {
            let (port, created) = create_snat(cfg, fwd, bits, first, first_free)?;
            if created {
                count(u32::from(fwd.router_id), Counter::SessionsCreated, 1);
            }
            Ok(port)
        }
    }
}

/// A fresh SNAT session value for forward key `fwd`, opened by a packet with `bits`. UDP and
/// ICMP packets carry `ST_ACK` as their outbound bit ("a packet out"), but the opening one
/// does not set it: the bit then says a packet went out *after* the first, which with a reply
/// (`ST_SEEN`) makes the session assured (see `router_common::nat::assured`).
#[inline(always)]
fn new_session(fwd: &SessionKey, bits: u8) -> SessionValue {
    SessionValue {
        addr: fwd.src,
        port: fwd.sport,
        state: if fwd.proto == IPPROTO_TCP { bits } else { 0 },
        kind: SESSION_SNAT,
        last_seen_ns: now(),
    }
}

/// Creates the session of a new outbound flow (after [`find_snat`] missed): at its first-choice
/// port `first` unless that is known to be taken, else at the first free port of a probe from a
/// random start, with a forward alias. Inserts use `BPF_NOEXIST`, so two CPUs creating the same
/// flow at once end up with one session: the loser re-reads the winner's entry (or alias) and
/// uses it. Returns the NAT port and whether this call created the session (for the
/// `SESSIONS_CREATED` counter, bumped by the caller with the packet's).
///
///
/// A router holding its quota of entries (`ROUTER_SESSIONS` ≥ `MAX_SESSIONS_PER_ROUTER`)
/// gets no new session (`DropRouterQuota`); a refusal for want of room (that or
/// `DropTableFull`) is also counted globally, for the GC's pace.
#[inline(always)]
pub fn create_snat(
    cfg: &RouterConfig,
    fwd: &SessionKey,
    bits: u8,
    first: u16,
    first_free: bool,
) -> Result<(u16, bool), SessionError> {
    // Every router number has a slot, so the pointer is never null below: one verifier state
    // per path, not two.
    let Some(count) = router_count(fwd) else {
        return Err(refused(Counter::DropRouterQuota));
    };
    // SAFETY: a valid array slot; other CPUs add to it atomically, a stale read only lets a
    // router go a few entries over its cap.
    if unsafe { core::ptr::read_volatile(count) } >= session_quota() {
        return Err(refused(Counter::DropRouterQuota));
    }
    if cfg.port_max < cfg.port_min {
        return Err(Counter::DropNoPort);
    }
    let gw = cfg.gateway_ip;
    let val = new_session(fwd, bits);
    if first_free {
        let rk0 = reverse_key(fwd, gw, first);
        match SESSIONS.insert(rk0, val, BPF_NOEXIST as u64) {
            Ok(()) => {
                // SAFETY: the slot of `ROUTER_SESSIONS` looked up above.
                unsafe { atomic_add(count, 1) };
                count_global(GlobalCounter::SessionsCreated);
                return Ok((first, true));
            }
            Err(EEXIST) => {
                if let Some(r) = SESSIONS.get_ptr_mut(rk0) {
                    // SAFETY: valid map value; plain fields.
                    let r = unsafe { &mut *r };
                    if r.kind == SESSION_SNAT && is_of(r, fwd) {
                        note_out(r, bits);
                        return Ok((first, false));
                    }
                }
            }
            Err(_) => return Err(refused(Counter::DropTableFull)),
        }
    }
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() };
    let mut nat_port: Option<u16> = None;
    for i in 0..MAX_PROBES {
        let p = probe_port(cfg.port_min, cfg.port_max, start, i).to_be();
        let rk = reverse_key(fwd, gw, p);
        match SESSIONS.insert(rk, val, BPF_NOEXIST as u64) {
            Ok(()) => {
                nat_port = Some(p);
                break;
            }
            Err(EEXIST) => {}
            Err(_) => return Err(refused(Counter::DropTableFull)),
        }
    }
    let Some(port) = nat_port else {
        return Err(Counter::DropNoPort);
    };
    // SAFETY: the slot of `ROUTER_SESSIONS` looked up above.
    unsafe { atomic_add(count, 1) };
    let alias = SessionValue {
        addr: gw,
        port,
        state: 0,
        kind: SESSION_SNAT,
        last_seen_ns: val.last_seen_ns,
    };
    // The endpoint's hint counts up around the alias write: a GC that read the slot before
    // this and found no alias in its snapshot sees the count moved, and leaves it set.
    hint_add(fwd);
    let inserted = SESSIONS.insert(fwd, alias, BPF_NOEXIST as u64);
    hint_add(fwd);
    match inserted {
        Ok(()) => {
            // SAFETY: the slot of `ROUTER_SESSIONS` looked up above.
            unsafe { atomic_add(count, 1) };
            count_global(GlobalCounter::SessionsCreated);
            Ok((port, true))
        }
        Err(e) => {
            if SESSIONS.remove(reverse_key(fwd, gw, port)).is_ok() {
                // SAFETY: the slot of `ROUTER_SESSIONS` looked up above.
                unsafe { atomic_add(count, u64::MAX) };
            }
            if e != EEXIST {
                return Err(refused(Counter::DropTableFull));
            }
            // Another CPU created this flow's alias (and session) meanwhile: use its port.
            match SESSIONS.get_ptr(fwd) {
                // SAFETY: valid map value pointer, plain data copied out.
                Some(f) => Ok((unsafe { (*f).port }, false)),
                None => Err(Counter::DropTableFull),
            }
        }
    }
}

/// The translation (address, port) of the outbound flow `fwd` if it has a session, without
/// recording anything: for ICMP errors an internal host sends about a flow. Port forwardings
/// and floating IPs (their session is keyed by the floating IP) are tried before SNAT.
#[inline(always)]
pub fn find_out(cfg: &RouterConfig, fwd: &SessionKey) -> Option<(u32, u16)> {
    let rid = cfg.router_id;
    if cfg.flags & ROUTER_F_FLOATING != 0 {
        let cand = if fwd.proto != IPPROTO_ICMP
            && let Some(pf) = crate::fip::pf_lookup(rid, fwd.src, fwd.sport, fwd.proto, DIR_OUT)
        {
            Some((pf.addr, pf.port))
        } else {
            crate::fip::fip_lookup(rid, fwd.src, DIR_OUT).map(|f| (f, fwd.sport))
        };
        if let Some((addr, port)) = cand {
            return session_at(fwd, addr, port).then_some((addr, port));
        }
    }
    if cfg.port_max < cfg.port_min {
        return None;
    }
    let gw = cfg.gateway_ip;
    let first = p0(cfg, fwd);
    if session_at(fwd, gw, first) {
        return Some((gw, first));
    }
    let f = SESSIONS.get_ptr(fwd)?;
    // SAFETY: valid map value pointer, plain data copied out.
    let port = unsafe { (*f).port };
    session_at(fwd, gw, port).then_some((gw, port))
}

/// Whether the session of forward key `fwd` translated to `(addr, port)` exists.
#[inline(always)]
fn session_at(fwd: &SessionKey, addr: u32, port: u16) -> bool {
    match SESSIONS.get_ptr(reverse_key(fwd, addr, port)) {
        // SAFETY: valid map value pointer, plain data read.
        Some(v) => is_of(unsafe { &*v }, fwd),
        None => false,
    }
}

/// A session key with the padding zeroed.
#[inline(always)]
pub fn key(
    router_id: u32,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    dir: u8,
) -> SessionKey {
    SessionKey {
        // Router numbers are at most MAX_ROUTERS (checked in router_common), so this is exact.
        router_id: router_id as u16,
        src,
        dst,
        sport,
        dport,
        proto,
        dir,
    }
}

/// Direction constants re-exported for the NAT code.
pub const OUT: u8 = DIR_OUT;
pub const IN: u8 = DIR_IN;
