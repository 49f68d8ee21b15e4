//! Pure session-table logic: pairing forward and reverse entries, naming their state, and
//! deciding which pairs the GC expires under the configured conntrack-like timeouts.

use std::{collections::HashMap, net::SocketAddrV4};

use router_common::{
    DIR_IN, DIR_OUT, IPPROTO_ICMP, SessionKey, SessionValue,
    nat::{SessionState, proto_name},
};

use super::SessionInfo;
use crate::config::NatConfig;

/// Entries younger than this are never treated as orphans: the datapath inserts the reverse
/// entry a moment before the forward one.
pub const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

/// The reverse key of a forward entry.
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

/// The forward key of a reverse entry.
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

/// Joins the entries of one router into sessions (forward entries with their reverse).
pub fn join(
    entries: &HashMap<SessionKey, SessionValue>,
    router_id: u32,
    now_ns: u64,
) -> Vec<SessionInfo> {
    let mut out: Vec<SessionInfo> = entries
        .iter()
        .filter(|(k, _)| u32::from(k.router_id) == router_id && k.dir == DIR_OUT)
        .map(|(k, v)| {
            let rev = entries.get(&reverse_of(k, v));
            let rev_state = rev.map(|r| r.state).unwrap_or(0);
            let last = rev.map_or(v.last_seen_ns, |r| r.last_seen_ns.max(v.last_seen_ns));
            SessionInfo {
                protocol: proto_name(k.proto).to_string(),
                internal: sock(k.src, k.sport),
                translated: sock(v.addr, v.port),
                remote: sock(k.dst, k.dport),
                kind: kind_name(v.kind).to_string(),
                state: SessionState::derive(k.proto, v.state, rev_state)
                    .name()
                    .to_string(),
                idle_secs: now_ns.saturating_sub(last) / 1_000_000_000,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.internal, a.remote, &a.protocol).cmp(&(b.internal, b.remote, &b.protocol))
    });
    out
}

/// Keys the GC must delete: both entries of expired sessions, and entries whose partner is
/// gone (evicted by the LRU) once past a short grace period.
pub fn expired(
    entries: &HashMap<SessionKey, SessionValue>,
    nat: &NatConfig,
    now_ns: u64,
) -> Vec<SessionKey> {
    let mut doomed = Vec::new();
    for (k, v) in entries {
        match k.dir {
            DIR_OUT => {
                let rk = reverse_of(k, v);
                match entries.get(&rk) {
                    Some(r) => {
                        let state = SessionState::derive(k.proto, v.state, r.state);
                        let last = v.last_seen_ns.max(r.last_seen_ns);
                        let idle = now_ns.saturating_sub(last);
                        if idle > timeout_secs(nat, k.proto, state).saturating_mul(1_000_000_000) {
                            doomed.push(*k);
                            doomed.push(rk);
                        }
                    }
                    None if now_ns.saturating_sub(v.last_seen_ns) > ORPHAN_GRACE_NS => {
                        doomed.push(*k)
                    }
                    None => {}
                }
            }
            DIR_IN => {
                if !entries.contains_key(&forward_of(k, v))
                    && now_ns.saturating_sub(v.last_seen_ns) > ORPHAN_GRACE_NS
                {
                    doomed.push(*k);
                }
            }
            _ => doomed.push(*k),
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_common::{
        IPPROTO_TCP, IPPROTO_UDP, ST_ACK, ST_SEEN, ST_SYN, ip_to_wire, port_to_wire,
    };

    const S: u64 = 1_000_000_000;

    fn pair(
        proto: u8,
        last_out: u64,
        last_in: u64,
        st_out: u8,
        st_in: u8,
    ) -> HashMap<SessionKey, SessionValue> {
        let k = SessionKey {
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
        };
        let v = SessionValue {
            addr: ip_to_wire([192, 0, 2, 10]),
            port: port_to_wire(1500),
            state: st_out,
            kind: 0,
            last_seen_ns: last_out,
        };
        let rk = reverse_of(&k, &v);
        let rv = SessionValue {
            addr: k.src,
            port: k.sport,
            state: st_in,
            kind: 0,
            last_seen_ns: last_in,
        };
        assert_eq!(forward_of(&rk, &rv), k);
        HashMap::from([(k, v), (rk, rv)])
    }

    #[test]
    fn join_reports_the_pair() {
        let m = pair(IPPROTO_UDP, 10 * S, 12 * S, 0, ST_SEEN);
        let s = join(&m, 7, 20 * S);
        assert_eq!(s.len(), 1);
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
        let m = pair(IPPROTO_UDP, 0, 0, 0, 0);
        assert!(expired(&m, &nat, 29 * S).is_empty());
        assert_eq!(expired(&m, &nat, 31 * S).len(), 2);
        // UDP replied: 120 s.
        let m = pair(IPPROTO_UDP, 0, 0, 0, ST_SEEN);
        assert!(expired(&m, &nat, 100 * S).is_empty());
        // TCP established survives a day.
        let m = pair(
            IPPROTO_TCP,
            0,
            0,
            ST_SYN | ST_ACK,
            ST_SEEN | ST_SYN | ST_ACK,
        );
        assert!(expired(&m, &nat, 86_400 * S).is_empty());
        // TCP SYN_SENT: 120 s.
        let m = pair(IPPROTO_TCP, 0, 0, ST_SYN, 0);
        assert_eq!(expired(&m, &nat, 121 * S).len(), 2);
        // ICMP: 30 s.
        let m = pair(IPPROTO_ICMP, 0, 0, 0, ST_SEEN);
        assert_eq!(expired(&m, &nat, 31 * S).len(), 2);
    }

    #[test]
    fn gc_removes_orphans_after_grace() {
        let nat = NatConfig::default();
        let mut m = pair(IPPROTO_UDP, 0, 0, 0, 0);
        let fwd = *m.keys().find(|k| k.dir == DIR_OUT).expect("forward");
        m.remove(&fwd);
        assert!(expired(&m, &nat, S).is_empty());
        assert_eq!(expired(&m, &nat, 3 * S).len(), 1);
    }
}
