//! The two NAT directions.
//!
//! `snat_out` (ingress of the gateway tap: packets leaving the router): sources inside the
//! router's internal CIDRs are translated to the gateway IP; anything from such a source that
//! cannot be translated is dropped and counted, never let out with its private address.
//! Everything else (the router's own traffic, foreign sources, IPv6) passes untouched.
//!
//! `snat_in` (egress of the gateway tap: packets entering the router): packets to the gateway
//! IP that match a session are translated back; the rest goes to the router's own stack.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use router_common::{ROUTER_F_FLOATING, ROUTER_F_SNAT, RouterConfig, ST_ACK, stats::Counter};

use crate::{
    arp,
    csum::{l4_csum, rewrite_addr, rewrite_port},
    frag,
    icmp::{self, ErrorResult},
    maps::{count, count_packet, count_seen, is_internal, router_config},
    parse::{
        ETH_P_IPV6_WIRE, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, ICMP_ID, IP_DST, IP_SRC,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L4Head, Packet, ParseError, TCP_HLEN, TCP_RST,
        TcpHdr, UDP_HLEN, ethertype, load, load_ipv4, validate,
    },
    session::{Found, IN, OUT, create_snat, find_snat, key, tcp_bits, touch_in},
};

const OK: i32 = TC_ACT_OK;
const SHOT: i32 = TC_ACT_SHOT;

/// Counts `reason` for the router and returns the drop verdict.
#[inline(always)]
fn drop(router_id: u32, reason: Counter) -> i32 {
    count(router_id, reason, 1);
    SHOT
}

/// A packet `snat_out` cannot translate for `reason`: dropped and counted if its source `src`
/// is internal (it must not leave with its private address), else passed untouched.
#[inline(always)]
fn refuse(router_id: u32, src: u32, reason: Counter) -> i32 {
    if is_internal(router_id, src) {
        drop(router_id, reason)
    } else {
        pass(router_id)
    }
}

/// Counts an untouched packet and returns the pass verdict.
#[inline(always)]
fn pass(router_id: u32) -> i32 {
    count(router_id, Counter::Passed, 1);
    OK
}

/// IPv6 is routed, never translated (no NAT66): it leaves both gateway hooks unchanged and
/// is counted with its bytes.
#[inline(always)]
fn routed_ipv6(ctx: &TcContext, router_id: u32) -> i32 {
    counted(
        ctx,
        router_id,
        Counter::Ipv6Packets,
        Counter::Ipv6Bytes,
        false,
    )
}

/// The ifindex of the device the program runs on.
#[inline(always)]
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The L4 fields a translation needs, once parsed.
struct Flow {
    proto: u8,
    /// Source and destination port (or echo id / 0), wire order.
    sport: u16,
    dport: u16,
    /// Frame offset of the field rewritten on the way out (source port / echo id) or in
    /// (destination port / echo id).
    port_off: usize,
    /// `ST_*` bits this packet contributes.
    bits: u8,
    /// Whether the packet may open a session (outbound only).
    may_create: bool,
}

/// Entry of `snat_out`: `Ok` and `Err` both carry the TC verdict.
pub fn snat_out(ctx: &TcContext) -> Result<i32, i32> {
    let Some(cfg) = count_seen(|| router_config(ifindex(ctx))) else {
        return Ok(OK);
    };
    let rid = cfg.router_id;
    match ethertype(ctx) {
        Some(ETH_P_IPV6_WIRE) => return Ok(routed_ipv6(ctx, rid)),
        Some(arp::ETH_P_ARP_WIRE) => {
            if let Some(a) = arp::parse(ctx) {
                arp::note_sent(rid, &a);
            }
            return Ok(pass(rid));
        }
        _ => {}
    }
    // Floating IPs and port forwardings first: they take precedence over SNAT.
    if cfg.flags & ROUTER_F_FLOATING != 0
        && let Some(verdict) = crate::fip::gateway_out(ctx, &cfg)
    {
        return Ok(verdict);
    }
    if cfg.flags & ROUTER_F_SNAT == 0 {
        return Ok(pass(rid));
    }
    let ip = match load_ipv4(ctx) {
        Ok(ip) => ip,
        Err(ParseError::NotIpv4) => return Ok(pass(rid)),
        // Not even a source address to decide on: it may be internal, so it cannot leave.
        Err(ParseError::Malformed) => return Err(drop(rid, Counter::DropMalformed)),
    };
    // The router's own traffic is never taken for a session; only its ICMP errors about a
    // translated flow are touched.
    if ip.src == cfg.gateway_ip {
        if ip.proto == IPPROTO_ICMP {
            return Ok(router_icmp_error(ctx, &cfg, ip));
        }
        return Ok(pass(rid));
    }
    // The internal-CIDR trie is consulted only where a session cannot decide: on a session
    // miss, and before dropping anything (a foreign source passes untouched, whatever it is).
    let pkt = validate(ctx, ip).map_err(|_| refuse(rid, ip.src, Counter::DropMalformed))?;

    if pkt.ip.frag_offset() != 0 {
        if !is_internal(rid, pkt.ip.src) {
            return Ok(pass(rid));
        }
        let Some(addr) = frag::lookup(rid, &pkt.ip, OUT) else {
            return Err(drop(rid, Counter::DropFragment));
        };
        rewrite_addr(ctx, IP_SRC, pkt.ip.src, addr, None)
            .map_err(|_| drop(rid, Counter::DropMalformed))?;
        return Ok(translated_out(ctx, rid, false));
    }

    let flow = match pkt.ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            parse_ports(ctx, &pkt, OUT).map_err(|r| refuse(rid, pkt.ip.src, r))?
        }
        IPPROTO_ICMP => {
            let ty = load_icmp_type(ctx, &pkt).map_err(|r| refuse(rid, pkt.ip.src, r))?;
            if ty == ICMP_ECHO_REQUEST {
                parse_echo(ctx, &pkt, OUT).map_err(|r| refuse(rid, pkt.ip.src, r))?
            } else if !is_internal(rid, pkt.ip.src) {
                return Ok(pass(rid));
            } else if icmp::is_error(ty) {
                return match icmp::translate_error(ctx, &cfg, &pkt, OUT) {
                    Ok(ErrorResult::Translated) => {
                        count(rid, Counter::IcmpErrors, 1);
                        Ok(translated_out(ctx, rid, false))
                    }
                    Ok(ErrorResult::NoMatch) => Err(drop(rid, Counter::DropInvalid)),
                    Err(_) => Err(drop(rid, Counter::DropMalformed)),
                };
            } else {
                return Err(drop(rid, Counter::DropUnsupported));
            }
        }
        _ => return Err(refuse(rid, pkt.ip.src, Counter::DropUnsupported)),
    };

    let fwd = key(
        rid, pkt.ip.src, pkt.ip.dst, flow.sport, flow.dport, flow.proto, OUT,
    );
    let (port, created) = match find_snat(&cfg, &fwd, flow.bits) {
        Found::Port(port) => (port, false),
        Found::Missing { first, first_free } => {
            if !is_internal(rid, pkt.ip.src) {
                return Ok(pass(rid));
            }
            if !flow.may_create {
                return Err(drop(rid, Counter::DropInvalid));
            }
            create_snat(&cfg, &fwd, flow.bits, first, first_free).map_err(|r| drop(rid, r))?
        }
    };
    let c = l4_csum(flow.proto, pkt.l4);
    let gw = cfg.gateway_ip;
    rewrite_port(ctx, flow.port_off, flow.sport, port, c)
        .and_then(|()| rewrite_addr(ctx, IP_SRC, pkt.ip.src, gw, Some(c)))
        .map_err(|_| drop(rid, Counter::DropMalformed))?;
    if frag::is_first(&pkt.ip) {
        frag::record(rid, &pkt.ip, OUT, gw);
    }
    Ok(translated_out(ctx, rid, created))
}

/// Entry of `snat_in`: `Ok` and `Err` both carry the TC verdict.
pub fn snat_in(ctx: &TcContext) -> Result<i32, i32> {
    let Some(cfg) = count_seen(|| router_config(ifindex(ctx))) else {
        return Ok(OK);
    };
    let rid = cfg.router_id;
    match ethertype(ctx) {
        Some(ETH_P_IPV6_WIRE) => return Ok(routed_ipv6(ctx, rid)),
        Some(arp::ETH_P_ARP_WIRE) => {
            return match arp::parse(ctx) {
                Some(a) if arp::ignored_announcement(ctx, &cfg, &a) => {
                    Err(drop(rid, Counter::AnnouncementsIgnored))
                }
                _ => Ok(pass(rid)),
            };
        }
        _ => {}
    }
    // Nothing from the external network may reach the metadata proxy's address.
    if crate::fip::to_metadata(ctx) {
        return Err(drop(rid, Counter::DropInvalid));
    }
    if cfg.flags & ROUTER_F_FLOATING != 0
        && let Some(verdict) = crate::fip::gateway_in(ctx, &cfg)
    {
        return Ok(verdict);
    }
    if cfg.flags & ROUTER_F_SNAT == 0 {
        return Ok(pass(rid));
    }
    // Anything not both IPv4 and well-formed and for the gateway IP is the router's business.
    let Ok(ip) = load_ipv4(ctx) else {
        return Ok(pass(rid));
    };
    if ip.dst != cfg.gateway_ip {
        return Ok(pass(rid));
    }
    let Ok(pkt) = validate(ctx, ip) else {
        return Ok(pass(rid));
    };

    if pkt.ip.frag_offset() != 0 {
        let Some(addr) = frag::lookup(rid, &pkt.ip, IN) else {
            return Ok(pass(rid));
        };
        rewrite_addr(ctx, IP_DST, pkt.ip.dst, addr, None)
            .map_err(|_| drop(rid, Counter::DropMalformed))?;
        return Ok(translated_in(ctx, rid));
    }

    let flow = match pkt.ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => match parse_ports(ctx, &pkt, IN) {
            Ok(f) => f,
            Err(_) => return Ok(pass(rid)),
        },
        IPPROTO_ICMP => {
            let Ok(ty) = load_icmp_type(ctx, &pkt) else {
                return Ok(pass(rid));
            };
            if ty == ICMP_ECHO_REPLY {
                match parse_echo(ctx, &pkt, IN) {
                    Ok(f) => f,
                    Err(_) => return Ok(pass(rid)),
                }
            } else if icmp::is_error(ty) {
                return match icmp::translate_error(ctx, &cfg, &pkt, IN) {
                    Ok(ErrorResult::Translated) => {
                        count(rid, Counter::IcmpErrors, 1);
                        Ok(translated_in(ctx, rid))
                    }
                    Ok(ErrorResult::NoMatch) => Ok(pass(rid)),
                    Err(_) => Err(drop(rid, Counter::DropMalformed)),
                };
            } else {
                return Ok(pass(rid));
            }
        }
        _ => return Ok(pass(rid)),
    };

    let rev = key(
        rid, pkt.ip.src, pkt.ip.dst, flow.sport, flow.dport, flow.proto, IN,
    );
    let Some(v) = touch_in(&rev, flow.bits) else {
        return Ok(pass(rid));
    };
    let old_port = flow.dport;
    let c = l4_csum(flow.proto, pkt.l4);
    rewrite_port(ctx, flow.port_off, old_port, v.port, c)
        .and_then(|()| rewrite_addr(ctx, IP_DST, pkt.ip.dst, v.addr, Some(c)))
        .map_err(|_| drop(rid, Counter::DropMalformed))?;
    if frag::is_first(&pkt.ip) {
        frag::record(rid, &pkt.ip, IN, v.addr);
    }
    Ok(translated_in(ctx, rid))
}

/// ICMP errors the router itself sends (source = gateway IP) about a reverse-translated packet,
/// e.g. host unreachable for a VM that went away: the quoted header still carries the internal
/// address and must be translated like the flow, or the remote could not match it and would
/// learn the internal address. Anything else from the gateway IP is the router's own traffic.
#[inline(always)]
fn router_icmp_error(ctx: &TcContext, cfg: &RouterConfig, ip: crate::parse::Ipv4Hdr) -> i32 {
    let rid = cfg.router_id;
    let Ok(pkt) = validate(ctx, ip) else {
        return pass(rid);
    };
    if pkt.ip.frag_offset() != 0 {
        return pass(rid);
    }
    match load_icmp_type(ctx, &pkt) {
        Ok(ty) if icmp::is_error(ty) => {}
        _ => return pass(rid),
    }
    match icmp::translate_error(ctx, cfg, &pkt, OUT) {
        Ok(ErrorResult::Translated) => {
            count(rid, Counter::IcmpErrors, 1);
            translated_out(ctx, rid, false)
        }
        Ok(ErrorResult::NoMatch) => pass(rid),
        Err(_) => drop(rid, Counter::DropMalformed),
    }
}

#[inline(always)]
fn translated_out(ctx: &TcContext, rid: u32, created: bool) -> i32 {
    counted(ctx, rid, Counter::OutPackets, Counter::OutBytes, created)
}

#[inline(always)]
fn translated_in(ctx: &TcContext, rid: u32) -> i32 {
    counted(ctx, rid, Counter::InPackets, Counter::InBytes, false)
}

/// Counts the packet in `pkts` and its length in `octets` (and a session in
/// `sessions_created` when it `created` one); the verdict: OK.
#[inline(always)]
fn counted(ctx: &TcContext, rid: u32, pkts: Counter, octets: Counter, created: bool) -> i32 {
    count_packet(rid, pkts, octets, ctx.len() as u64, created);
    OK
}

/// Ports of a TCP or UDP packet, with the header checked to be complete.
#[inline(always)]
fn parse_ports(ctx: &TcContext, pkt: &Packet, dir: u8) -> Result<Flow, Counter> {
    let port_off = if dir == OUT { pkt.l4 } else { pkt.l4 + 2 };
    if pkt.ip.proto == IPPROTO_TCP {
        if pkt.l4 + TCP_HLEN > pkt.end {
            return Err(Counter::DropMalformed);
        }
        let t = load::<TcpHdr>(ctx, pkt.l4).map_err(|_| Counter::DropMalformed)?;
        let doff = ((t.doff_res >> 4) as usize) * 4;
        if doff < TCP_HLEN || pkt.l4 + doff > pkt.end {
            return Err(Counter::DropMalformed);
        }
        Ok(Flow {
            proto: IPPROTO_TCP,
            sport: t.sport,
            dport: t.dport,
            port_off,
            bits: tcp_bits(t.flags),
            may_create: t.flags & TCP_RST == 0,
        })
    } else {
        if pkt.l4 + UDP_HLEN > pkt.end {
            return Err(Counter::DropMalformed);
        }
        let u = load::<L4Head>(ctx, pkt.l4).map_err(|_| Counter::DropMalformed)?;
        if (u16::from_be(u.c) as usize) < UDP_HLEN {
            return Err(Counter::DropMalformed);
        }
        Ok(Flow {
            proto: IPPROTO_UDP,
            sport: u.a,
            dport: u.b,
            port_off,
            bits: out_bit(dir),
            may_create: true,
        })
    }
}

/// The `ST_*` bits of a UDP or ICMP echo packet: `ST_ACK` ("a packet out") on the way out, so
/// a session that saw a reply and a later outbound packet is assured; the session's opening
/// packet does not set it (`session::new_session`).
#[inline(always)]
fn out_bit(dir: u8) -> u8 {
    if dir == OUT { ST_ACK } else { 0 }
}

/// The type of an ICMP message whose 8-byte header is complete.
#[inline(always)]
fn load_icmp_type(ctx: &TcContext, pkt: &Packet) -> Result<u8, Counter> {
    if pkt.l4 + ICMP_HLEN > pkt.end {
        return Err(Counter::DropMalformed);
    }
    load::<u8>(ctx, pkt.l4).map_err(|_| Counter::DropMalformed)
}

/// An echo request (out: `sport = id, dport = 0`) or reply (in: `sport = 0, dport = id`).
#[inline(always)]
fn parse_echo(ctx: &TcContext, pkt: &Packet, dir: u8) -> Result<Flow, Counter> {
    let id = load::<u16>(ctx, pkt.l4 + ICMP_ID).map_err(|_| Counter::DropMalformed)?;
    let (sport, dport) = if dir == OUT { (id, 0) } else { (0, id) };
    Ok(Flow {
        proto: IPPROTO_ICMP,
        sport,
        dport,
        port_off: pkt.l4 + ICMP_ID,
        bits: out_bit(dir),
        may_create: dir == OUT,
    })
}
