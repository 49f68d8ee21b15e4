//! Pure NAT logic shared by the datapath and userspace: the first-choice NAT port of a flow,
//! the port probe sequence, and the conntrack-like state a session is in, derived from its
//! `ST_*` bits.

use crate::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, ST_ACK, ST_FIN, ST_OUT_MASK, ST_REPLY_SHIFT, ST_RST,
    ST_SEEN,
};

/// A 32-bit hash of an outbound tuple (wire-order fields), well mixed (murmur3's finaliser) so
/// that flows from out-of-range source ports spread over the NAT port range.
#[inline(always)]
pub fn flow_hash(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = src.wrapping_mul(0x9e37_79b1)
        ^ dst.rotate_left(16)
        ^ ((u32::from(sport) << 16) | u32::from(dport)).wrapping_mul(0x85eb_ca77)
        ^ u32::from(proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The NAT port (host order) a new outbound flow asks for first, and the one the datapath
/// recomputes to find its session from an outbound packet: the original source port when it
/// lies in `[min, max]` (port preservation), else a port chosen by [`flow_hash`] of the tuple —
/// deterministic, so every packet of the flow computes the same one. `sport`/`dport`/addresses
/// in wire order; `min <= max` is required.
#[inline(always)]
pub fn first_port(
    min: u16,
    max: u16,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
) -> u16 {
    let orig = u16::from_be(sport);
    if orig >= min && orig <= max {
        return orig;
    }
    probe_port(min, max, flow_hash(src, dst, sport, dport, proto), 0)
}

/// Slots of `ALIAS_HINTS` (a power of two no larger than 65 536: [`alias_hint_slot`] yields 16
/// bits).
pub const ALIAS_HINT_SLOTS: u32 = 65_536;

/// The `ALIAS_HINTS` slot of an outbound SNAT flow (router, remote address and port,
/// protocol; wire-order fields as in its forward key): a flow is only ever displaced from its
/// first-choice port by another flow to the same remote endpoint, so a slot that is zero tells
/// the datapath that no flow towards the endpoints hashing to it has a forward alias, and a
/// new flow needs no alias lookup. Shared with the GC, which clears a slot once no alias
/// hashes to it.
#[inline(always)]
pub fn alias_hint_slot(router_id: u16, remote: u32, remote_port: u16, proto: u8) -> u32 {
    let k = u64::from(remote)
        | u64::from(remote_port) << 32
        | u64::from(router_id) << 48
        | u64::from(proto) << 58;
    // murmur3's 64-bit finaliser: every input bit moves the low 16.
    let mut h = k ^ (k >> 33);
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32 & (ALIAS_HINT_SLOTS - 1)
}

/// Stride of the port probe: a prime, so it is coprime to every range size but itself.
const PROBE_STRIDE: u32 = 40_009;

/// The `i`-th port tried for a new flow inside the inclusive range `[min, max]` (host order),
/// from `start`: `start + i × stride` modulo the range, the stride coprime to the range size,
/// so `range` probes visit every port once. Not a linear probe: ports kept by port
/// preservation form contiguous runs (consecutive ephemeral ports), and a linear probe that
/// starts in such a run spends every try inside it. `min <= max` is required.
#[inline(always)]
pub fn probe_port(min: u16, max: u16, start: u32, i: u32) -> u16 {
    let range = (max as u32).wrapping_sub(min as u32).wrapping_add(1);
    if range == 0 || max < min {
        return min;
    }
    let step = if range == PROBE_STRIDE {
        1
    } else {
        PROBE_STRIDE % range
    };
    let off = ((start % range) as u64 + i as u64 * step as u64) % range as u64;
    (min as u32 + off as u32) as u16
}

/// Whether a session (`DIR_IN` entry) of protocol `proto` in `state` is *assured*, as
/// conntrack's `IPS_ASSURED`: traffic seen both ways beyond the opening exchange. Only assured
/// sessions are protected from the GC's early drop under pressure.
/// - TCP: a reply (`ST_SEEN`) and an acknowledgement from the opener (`ST_ACK` out: the
///   handshake's third packet, or data), and no reset either way. A SYN answered by a RST is
///   not assured (and is closed at once, see [`opened_and_reset`]).
/// - UDP and ICMP echo: a reply and a packet out after the opening one (`ST_ACK` out; the
///   datapath leaves it unset on the packet that opens the session): a single query and its
///   answer is not assured, an exchange that goes on is.
pub fn assured(proto: u8, state: u8) -> bool {
    let out = state & ST_OUT_MASK;
    let replied = state & ST_SEEN != 0;
    if !replied || out & ST_ACK == 0 {
        return false;
    }
    proto != IPPROTO_TCP || (out | (state >> ST_REPLY_SHIFT)) & ST_RST == 0
}

/// Whether a TCP session was reset before it was ever established (no acknowledgement from
/// the opener): a SYN answered by a RST, which conntrack closes at once.
pub fn opened_and_reset(proto: u8, state: u8) -> bool {
    proto == IPPROTO_TCP && (state | (state >> ST_REPLY_SHIFT)) & ST_RST != 0 && state & ST_ACK == 0
}

/// Conntrack-like state of a session, chosen to pick its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// TCP: only the opening direction seen.
    SynSent,
    /// TCP: replies seen and the opener acknowledged.
    Established,
    /// TCP: FIN seen in one direction.
    Closing,
    /// TCP: FIN seen in both directions.
    TimeWait,
    /// TCP: reset seen.
    Close,
    /// UDP/ICMP: no reply yet.
    Unreplied,
    /// UDP/ICMP: a reply arrived.
    Replied,
}

impl SessionState {
    /// Derives the state from a session's `state` byte (outbound bits in the low nibble, reply
    /// bits and `ST_SEEN` in the high one).
    pub fn derive(proto: u8, state: u8) -> Self {
        let replied = state & ST_SEEN != 0;
        let fwd = state & ST_OUT_MASK;
        let rev = state >> ST_REPLY_SHIFT;
        if proto != IPPROTO_TCP {
            return if replied {
                Self::Replied
            } else {
                Self::Unreplied
            };
        }
        if (fwd | rev) & ST_RST != 0 {
            Self::Close
        } else if fwd & ST_FIN != 0 && rev & ST_FIN != 0 {
            Self::TimeWait
        } else if (fwd | rev) & ST_FIN != 0 {
            Self::Closing
        } else if replied && (fwd & ST_ACK != 0) {
            Self::Established
        } else {
            Self::SynSent
        }
    }

    /// The name `router-ctl sessions` shows (Linux conntrack's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Self::SynSent => "SYN_SENT",
            Self::Established => "ESTABLISHED",
            Self::Closing => "CLOSING",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::Unreplied => "UNREPLIED",
            Self::Replied => "REPLIED",
        }
    }
}

/// Protocol name of a session.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{ST_SEEN, ST_SYN};

    #[test]
    fn assured_sessions_saw_traffic_both_ways_beyond_the_opening() {
        use crate::{ST_ACK, ST_RST};
        let r = |b: u8| b << ST_REPLY_SHIFT;
        let t = IPPROTO_TCP;
        // TCP: the handshake completed.
        assert!(assured(t, ST_SYN | ST_ACK | ST_SEEN));
        assert!(assured(t, ST_SYN | ST_ACK | ST_SEEN | r(ST_ACK | ST_FIN)));
        assert!(!assured(t, ST_SYN), "unanswered SYN");
        assert!(
            !assured(t, ST_SYN | ST_SEEN),
            "SYN-ACK not acknowledged yet"
        );
        // A SYN answered by a RST (RST|ACK): not assured, closed at once.
        let refused = ST_SYN | ST_SEEN | r(ST_ACK | ST_RST);
        assert!(!assured(t, refused));
        assert!(opened_and_reset(t, refused));
        // An ACK scan answered by RSTs: not assured, but not "opened and reset" either.
        assert!(!assured(t, ST_ACK | ST_SEEN | r(ST_ACK | ST_RST)));
        assert!(!opened_and_reset(t, ST_ACK | ST_SEEN | r(ST_RST)));
        // An established connection that was reset is no longer protected.
        assert!(!assured(t, ST_SYN | ST_ACK | ST_RST | ST_SEEN));
        assert!(!opened_and_reset(t, ST_SYN | ST_ACK | ST_RST | ST_SEEN));
        // UDP/ICMP: a reply and a later packet out.
        for p in [IPPROTO_UDP, IPPROTO_ICMP] {
            assert!(!assured(p, 0));
            assert!(!assured(p, ST_SEEN), "one query, one answer");
            assert!(!assured(p, ST_ACK), "several out, no answer");
            assert!(assured(p, ST_ACK | ST_SEEN));
            assert!(!opened_and_reset(p, ST_SEEN | r(ST_RST)));
        }
    }

    #[test]
    fn alias_hint_slots_spread_endpoints_and_ignore_the_internal_end() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let s = alias_hint_slot(7, (0xc633_6400 + i).to_be(), 443u16.to_be(), IPPROTO_TCP);
            assert!(s < ALIAS_HINT_SLOTS);
            seen.insert(s);
        }
        // 4096 endpoints over 65 536 slots: a few collisions at most.
        assert!(seen.len() > 3900, "{}", seen.len());
        // Router, port and protocol each change the slot.
        let base = alias_hint_slot(7, 1, 53, IPPROTO_UDP);
        assert_ne!(base, alias_hint_slot(8, 1, 53, IPPROTO_UDP));
        assert_ne!(base, alias_hint_slot(7, 1, 54, IPPROTO_UDP));
        assert_ne!(base, alias_hint_slot(7, 1, 53, IPPROTO_TCP));
    }

    /// Reply-direction bits placed in the state byte.
    fn r(bits: u8) -> u8 {
        bits << ST_REPLY_SHIFT
    }

    #[test]
    fn probe_stays_in_range_and_covers_it() {
        let (min, max) = (1024u16, 1279u16);
        let mut seen = [false; 256];
        for i in 0..256 {
            let p = probe_port(min, max, 0xdead_beef, i);
            assert!((min..=max).contains(&p));
            seen[(p - min) as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "a full probe visits every port once"
        );
        assert_eq!(probe_port(5, 5, 12345, 7), 5);
        // A range the size of the stride is still covered.
        let (min, max) = (1000u16, 1000 + PROBE_STRIDE as u16 - 1);
        let mut seen = std::vec![false; PROBE_STRIDE as usize];
        for i in 0..PROBE_STRIDE {
            seen[(probe_port(min, max, 7, i) - min) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(probe_port(0, 65535, 70000, 0), (70000 % 65536) as u16);
    }

    #[test]
    fn first_port_keeps_in_range_ports_and_hashes_the_rest() {
        let (src, dst) = (0x0500_000a, 0x0971_00cb);
        let p = |port: u16| port.to_be();
        assert_eq!(
            first_port(1024, 65535, src, dst, p(40000), p(53), 17),
            40000
        );
        let a = first_port(1024, 65535, src, dst, p(80), p(53), 17);
        assert!((1024..=65535).contains(&a));
        assert_eq!(
            a,
            first_port(1024, 65535, src, dst, p(80), p(53), 17),
            "deterministic"
        );
        // Out-of-range sources spread over the range.
        let mut seen = std::collections::HashSet::new();
        for sport in 1..=1000u16 {
            seen.insert(first_port(40000, 40999, src, dst, p(sport), p(53), 17));
        }
        assert!(seen.len() > 550, "{} distinct ports of 1000", seen.len());
    }

    #[test]
    fn tcp_states_follow_the_bits() {
        let t = IPPROTO_TCP;
        assert_eq!(SessionState::derive(t, ST_SYN), SessionState::SynSent);
        assert_eq!(
            SessionState::derive(t, ST_SYN | ST_ACK | ST_SEEN | r(ST_ACK)),
            SessionState::Established
        );
        assert_eq!(
            SessionState::derive(t, ST_SYN | ST_SEEN | r(ST_ACK)),
            SessionState::SynSent,
            "a reply without the opener's ACK is not established yet"
        );
        assert_eq!(
            SessionState::derive(t, ST_SYN | ST_ACK | ST_FIN | ST_SEEN),
            SessionState::Closing
        );
        assert_eq!(
            SessionState::derive(t, ST_FIN | ST_SEEN | r(ST_FIN)),
            SessionState::TimeWait
        );
        assert_eq!(
            SessionState::derive(t, ST_ACK | ST_SEEN | r(ST_RST)),
            SessionState::Close
        );
        assert_eq!(
            SessionState::derive(IPPROTO_UDP, 0),
            SessionState::Unreplied
        );
        assert_eq!(
            SessionState::derive(IPPROTO_ICMP, ST_SEEN),
            SessionState::Replied
        );
    }
}
