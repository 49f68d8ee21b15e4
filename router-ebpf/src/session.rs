//! Connection tracking for SNAT: forward (`DIR_OUT`) and reverse (`DIR_IN`) entries in one LRU
//! hash, endpoint-dependent port allocation, and per-direction state bits for the userspace GC.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use router_common::{
    DIR_IN, DIR_OUT, RouterConfig, SESSION_SNAT, SessionKey, SessionValue, nat::probe_port, stat,
};

use crate::{
    maps::{SESSIONS, count},
    parse::{IPPROTO_ICMP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use router_common::{ST_ACK, ST_FIN, ST_RST, ST_SEEN, ST_SYN};

/// Ports tried after the original one before giving up on a new flow.
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

/// Looks up an entry and, when found, refreshes it with `bits` and returns a copy.
/// A pure outbound SYN restarts the forward state (port reuse after close).
#[inline(always)]
pub fn touch(key: &SessionKey, bits: u8) -> Option<SessionValue> {
    let p = SESSIONS.get_ptr_mut(key)?;
    // SAFETY: valid map value; concurrent updates of these plain fields are benign.
    let v = unsafe { &mut *p };
    if key.dir == DIR_OUT && bits == ST_SYN {
        v.state = ST_SYN;
    } else {
        v.state |= bits;
    }
    if key.dir == DIR_IN {
        v.state |= ST_SEEN;
    }
    v.last_seen_ns = now();
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

/// Why a session could not be created (also the counter to bump).
pub type CreateError = usize;

/// Creates the session of a new outbound flow: keeps the original source port when it is in
/// range and free towards this destination, else probes from a random start. The reverse entry
/// is inserted first (it is what reserves the port), then the forward one; if another CPU won
/// the race for the forward key, the reverse is rolled back and the winner's entry is used.
#[inline(always)]
pub fn create(cfg: &RouterConfig, fwd: &SessionKey, bits: u8) -> Result<SessionValue, CreateError> {
    if cfg.port_max < cfg.port_min {
        return Err(stat::DROP_NO_PORT);
    }
    let t = now();
    let rev_val = SessionValue {
        addr: fwd.src,
        port: fwd.sport,
        state: 0,
        kind: SESSION_SNAT,
        last_seen_ns: t,
    };
    let orig = u16::from_be(fwd.sport);
    let mut nat_port: Option<u16> = None;
    if orig >= cfg.port_min && orig <= cfg.port_max {
        let rk = reverse_key(fwd, cfg.gateway_ip, fwd.sport);
        match SESSIONS.insert(rk, rev_val, BPF_NOEXIST as u64) {
            Ok(()) => nat_port = Some(fwd.sport),
            Err(EEXIST) => {}
            Err(_) => return Err(stat::DROP_TABLE_FULL),
        }
    }
    if nat_port.is_none() {
        // SAFETY: helper without arguments.
        let start = unsafe { bpf_get_prandom_u32() };
        for i in 0..MAX_PROBES {
            let p = probe_port(cfg.port_min, cfg.port_max, start, i).to_be();
            let rk = reverse_key(fwd, cfg.gateway_ip, p);
            match SESSIONS.insert(rk, rev_val, BPF_NOEXIST as u64) {
                Ok(()) => {
                    nat_port = Some(p);
                    break;
                }
                Err(EEXIST) => {}
                Err(_) => return Err(stat::DROP_TABLE_FULL),
            }
        }
    }
    let Some(port) = nat_port else {
        return Err(stat::DROP_NO_PORT);
    };
    let fwd_val = SessionValue {
        addr: cfg.gateway_ip,
        port,
        state: bits,
        kind: SESSION_SNAT,
        last_seen_ns: t,
    };
    match SESSIONS.insert(fwd, fwd_val, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(u32::from(fwd.router_id), stat::SESSIONS_CREATED, 1);
            Ok(fwd_val)
        }
        Err(e) => {
            let rk = reverse_key(fwd, cfg.gateway_ip, port);
            let _ = SESSIONS.remove(rk);
            if e == EEXIST {
                touch(fwd, bits).ok_or(stat::DROP_TABLE_FULL)
            } else {
                Err(stat::DROP_TABLE_FULL)
            }
        }
    }
}

/// Makes sure the reverse entry of a forward hit still exists and belongs to this flow (the LRU
/// may have evicted it while the forward entry stayed busy); the lookup also keeps it recent.
/// Re-inserts it when missing. `false`: the port was taken by another flow meanwhile, so the
/// forward entry must be dropped and the session created afresh.
///
/// `reopen` (a pure SYN on an existing session: the port is being reused for a new
/// connection) clears the reverse state so the new connection does not inherit FIN/RST bits.
#[inline(always)]
pub fn ensure_reverse(fwd: &SessionKey, v: &SessionValue, reopen: bool) -> bool {
    let rk = reverse_key(fwd, v.addr, v.port);
    if let Some(r) = SESSIONS.get_ptr_mut(rk) {
        // SAFETY: valid map value pointer; concurrent updates of these plain fields are benign.
        let r = unsafe { &mut *r };
        if r.addr != fwd.src || r.port != fwd.sport {
            return false;
        }
        if reopen {
            r.state = 0;
        }
        return true;
    }
    let rev_val = SessionValue {
        addr: fwd.src,
        port: fwd.sport,
        state: 0,
        kind: SESSION_SNAT,
        last_seen_ns: now(),
    };
    SESSIONS.insert(rk, rev_val, BPF_NOEXIST as u64).is_ok()
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
