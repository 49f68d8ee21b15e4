//! ICMP errors (destination unreachable incl. fragmentation needed, time exceeded, parameter
//! problem) about translated flows: the embedded header is rewritten like the flow it quotes,
//! with the embedded IP and L4 checksums updated per RFC 1624 and every changed 16-bit word
//! reflected into the outer ICMP checksum.

use aya_ebpf::programs::TcContext;
use router_common::{
    RouterConfig,
    csum::{update16, update32},
};

use crate::{
    csum::rewrite_addr,
    maps::SESSIONS,
    parse::{
        ICMP_CHECK, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, ICMP_ID,
        ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, IP_CHECK, IP_DST, IP_MIN_HLEN, IP_SRC,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, L4Head, Packet, TCP_CHECK, UDP_CHECK,
    },
    session::{IN, find_out, key},
};

/// Whether an ICMP type is an error this datapath translates.
#[inline(always)]
pub fn is_error(ty: u8) -> bool {
    matches!(
        ty,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
    )
}

/// Outcome of looking at an ICMP error.
pub enum ErrorResult {
    /// Translated in place.
    Translated,
    /// Quotes no known session (or cannot be parsed).
    NoMatch,
}

/// The packet an ICMP error quotes, and the translation of the session it belongs to.
struct Quote {
    /// Offset of the embedded IP header, and its protocol and checksum.
    ip: usize,
    proto: u8,
    ip_check: u16,
    /// The embedded address to rewrite (`IP_SRC`/`IP_DST`) and its value.
    addr_field: usize,
    old_addr: u32,
    /// Offset of the embedded port / echo id to rewrite, and its value.
    port_off: usize,
    old_port: u16,
    /// Offset of the embedded L4 checksum; whether it covers a pseudo-header (TCP/UDP).
    csum_off: usize,
    pseudo: bool,
    /// The session's address and port (wire order) the quote is rewritten to.
    new_addr: u32,
    new_port: u16,
}

/// Translates the ICMP error in `pkt` for direction `dir`:
/// - `IN` (error from outside about one of our outbound flows): outer dst gateway → internal,
///   embedded src gateway → internal, embedded source port/echo id → original;
/// - `OUT` (error from an internal host about an inbound-translated flow): outer src internal →
///   gateway, embedded dst internal → gateway, embedded destination port/echo id → NAT port
///   (the quoted packet is one of the flow's replies: its session is found from the outbound
///   tuple, as for the flow's own packets).
///
/// `Err` means a helper failed after a partial rewrite: the caller must drop the packet.
#[inline(always)]
pub fn translate_error(
    ctx: &TcContext,
    cfg: &RouterConfig,
    pkt: &Packet,
    dir: u8,
) -> Result<ErrorResult, i64> {
    let Some(q) = find_quote(ctx, cfg, pkt, dir) else {
        return Ok(ErrorResult::NoMatch);
    };
    rewrite_quote(ctx, pkt, &q)?;
    // Outer header: the address the flow is translated on (no pseudo-header in ICMP).
    if dir == IN {
        rewrite_addr(ctx, IP_DST, pkt.ip.dst, q.new_addr, None)?;
    } else {
        rewrite_addr(ctx, IP_SRC, pkt.ip.src, q.new_addr, None)?;
    }
    Ok(ErrorResult::Translated)
}

/// The quote of the ICMP error in `pkt` and its session's translation, if the quote is a
/// complete first fragment of a TCP/UDP packet or echo of a session known for `dir`.
#[inline(always)]
fn find_quote(ctx: &TcContext, cfg: &RouterConfig, pkt: &Packet, dir: u8) -> Option<Quote> {
    let emb_ip = pkt.l4 + ICMP_HLEN;
    if emb_ip + IP_MIN_HLEN > pkt.end {
        return None;
    }
    let eh = ctx.load::<Ipv4Hdr>(emb_ip).ok()?;
    let ehlen = eh.hlen();
    if eh.version() != 4 || ehlen < IP_MIN_HLEN || eh.frag_offset() != 0 {
        return None;
    }
    let emb_l4 = emb_ip + ehlen;
    if emb_l4 + 8 > pkt.end {
        return None;
    }
    let l4 = ctx.load::<L4Head>(emb_l4).ok()?;
    let router_id = cfg.router_id;
    let inbound = dir == IN;
    // Offsets of the embedded fields to rewrite, their old values, and the session key.
    let (port_off, old_port, csum_off, pseudo, skey) = match eh.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let (sport, dport) = (l4.a, l4.b);
            let (off, old) = if inbound {
                (emb_l4, sport)
            } else {
                (emb_l4 + 2, dport)
            };
            let coff = if eh.proto == IPPROTO_TCP {
                emb_l4 + TCP_CHECK
            } else {
                emb_l4 + UDP_CHECK
            };
            let k = key(router_id, eh.dst, eh.src, dport, sport, eh.proto, dir);
            (off, old, coff, true, k)
        }
        IPPROTO_ICMP => {
            let ty = ctx.load::<u8>(emb_l4).ok()?;
            let want = if inbound {
                ICMP_ECHO_REQUEST
            } else {
                ICMP_ECHO_REPLY
            };
            if ty != want {
                return None;
            }
            let id = l4.c;
            let k = if inbound {
                key(router_id, eh.dst, eh.src, 0, id, IPPROTO_ICMP, dir)
            } else {
                key(router_id, eh.dst, eh.src, id, 0, IPPROTO_ICMP, dir)
            };
            (emb_l4 + ICMP_ID, id, emb_l4 + ICMP_CHECK, false, k)
        }
        _ => return None,
    };
    let (new_addr, new_port) = if inbound {
        SESSIONS.get_ptr(skey).map(|v| {
            // SAFETY: valid map value pointer, plain data copied out.
            let v = unsafe { &*v };
            (v.addr, v.port)
        })
    } else {
        find_out(cfg, &skey)
    }?;
    let (addr_field, old_addr) = if inbound {
        (IP_SRC, eh.src)
    } else {
        (IP_DST, eh.dst)
    };
    Some(Quote {
        ip: emb_ip,
        proto: eh.proto,
        ip_check: eh.check,
        addr_field,
        old_addr,
        port_off,
        old_port,
        csum_off,
        pseudo,
        new_addr,
        new_port,
    })
}

/// Rewrites the quote `q` to its session's address and port: the embedded IP header with its
/// checksum, the embedded L4 checksum when the quote includes it, the port / echo id, and
/// every changed word into the outer ICMP checksum.
#[inline(always)]
fn rewrite_quote(ctx: &TcContext, pkt: &Packet, q: &Quote) -> Result<(), i64> {
    let (old_addr, new_addr) = (q.old_addr, q.new_addr);
    let (old_port, new_port) = (q.old_port, q.new_port);
    let outer_check_off = pkt.l4 + ICMP_CHECK;
    let mut icmp_check = ctx.load::<u16>(outer_check_off)?;

    // Embedded IP header: address and its checksum.
    let new_eh_check = update32(q.ip_check, old_addr, new_addr);
    icmp_check = update32(icmp_check, old_addr, new_addr);
    icmp_check = update16(icmp_check, q.ip_check, new_eh_check);

    // Embedded L4 checksum, when the quote includes it (a zero UDP checksum stays zero).
    if q.csum_off + 2 <= pkt.end {
        let old_l4c = ctx.load::<u16>(q.csum_off)?;
        if !(q.proto == IPPROTO_UDP && old_l4c == 0) {
            let mut c = old_l4c;
            if q.pseudo {
                c = update32(c, old_addr, new_addr);
            }
            c = update16(c, old_port, new_port);
            if q.proto == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            icmp_check = update16(icmp_check, old_l4c, c);
            ctx.store(q.csum_off, &c, 0)?;
        }
    }
    // Embedded port / echo identifier.
    icmp_check = update16(icmp_check, old_port, new_port);
    ctx.store(q.port_off, &new_port, 0)?;
    ctx.store(q.ip + q.addr_field, &new_addr, 0)?;
    ctx.store(q.ip + IP_CHECK, &new_eh_check, 0)?;
    ctx.store(outer_check_off, &icmp_check, 0)?;
    Ok(())
}
