//! Pure NAT logic shared by the datapath and userspace: the port probe sequence and the
//! conntrack-like state a session is in, derived from the per-direction `ST_*` bits.

use crate::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, ST_ACK, ST_FIN, ST_RST, ST_SEEN};

/// The `i`-th port tried for a new flow: a linear probe from a random `start` inside the
/// inclusive range `[min, max]` (host order), wrapping around. `min <= max` is required.
#[inline(always)]
pub fn probe_port(min: u16, max: u16, start: u32, i: u32) -> u16 {
    let range = (max as u32).wrapping_sub(min as u32).wrapping_add(1);
    if range == 0 || max < min {
        return min;
    }
    let off = ((start % range) + i) % range;
    (min as u32 + off) as u16
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
    /// Derives the state from the forward (`DIR_OUT`) and reverse (`DIR_IN`) state bits.
    pub fn derive(proto: u8, fwd: u8, rev: u8) -> Self {
        let replied = rev & ST_SEEN != 0;
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
    use super::*;
    use crate::{ST_SEEN, ST_SYN};

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
        assert_eq!(probe_port(0, 65535, 70000, 0), (70000 % 65536) as u16);
    }

    #[test]
    fn tcp_states_follow_the_bits() {
        let t = IPPROTO_TCP;
        assert_eq!(SessionState::derive(t, ST_SYN, 0), SessionState::SynSent);
        assert_eq!(
            SessionState::derive(t, ST_SYN | ST_ACK, ST_SEEN | ST_SYN | ST_ACK),
            SessionState::Established
        );
        assert_eq!(
            SessionState::derive(t, ST_SYN | ST_ACK | ST_FIN, ST_SEEN),
            SessionState::Closing
        );
        assert_eq!(
            SessionState::derive(t, ST_FIN, ST_SEEN | ST_FIN),
            SessionState::TimeWait
        );
        assert_eq!(
            SessionState::derive(t, ST_ACK, ST_SEEN | ST_RST),
            SessionState::Close
        );
        assert_eq!(
            SessionState::derive(IPPROTO_UDP, 0, 0),
            SessionState::Unreplied
        );
        assert_eq!(
            SessionState::derive(IPPROTO_ICMP, 0, ST_SEEN),
            SessionState::Replied
        );
    }
}
