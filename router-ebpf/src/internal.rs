//! The router's internal side: programs on the bridge-side peer (`tap…`) of each `qr-` device,
//! keyed in `INTERNAL_IFS` by that tap's ifindex in the daemon's namespace.
//!
//! `internal_in` (egress of the tap: packets entering the router from a tenant network, before
//! the router's routing) does the hairpin: a packet to a floating IP (or a forwarded port) of
//! this router is translated to the fixed IP here, because the router would otherwise take it
//! for one of its own addresses. Its source is translated too — to the sender's own floating IP
//! (or port forwarding) if it has one, else to the gateway IP with a SNAT session — so the
//! reply comes back through the router, as Neutron does. A reply to such a gateway-SNATed flow
//! (destination = gateway IP, matching a session) is translated back here, and its source to
//! the replier's floating IP.
//!
//! The daemon attaches it only to the taps of routers that have a floating IP or a port
//! forwarding: other routers' tenant traffic never runs it. The metadata proxy needs no
//! program: it listens on 169.254.169.254:80 itself, inside the router namespace.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use router_common::{
    DIR_IN, DIR_OUT, MAX_INTERNAL_IFS, ROUTER_F_FLOATING, RouterConfig, stats::Counter,
};

use crate::{
    csum::{l4_csum, rewrite_addr, rewrite_port},
    fip::{L4, fip_lookup, load_l4, pf_lookup},
    maps::{count, count_seen},
    nat::ifindex,
    parse::{ICMP_ID, IP_DST, IP_SRC, IPPROTO_ICMP, Packet, load_ipv4, validate},
    session::{key, snat_port, touch_in},
};

const OK: i32 = TC_ACT_OK;
const SHOT: i32 = TC_ACT_SHOT;

/// Router config of each internal tap (a copy of the router's gateway config: router id,
/// gateway IP and SNAT port range, for hairpin SNAT).
#[map]
pub static INTERNAL_IFS: HashMap<u32, RouterConfig> =
    HashMap::with_max_entries(MAX_INTERNAL_IFS, 0);

#[inline(always)]
fn internal_config(ifindex: u32) -> Option<RouterConfig> {
    INTERNAL_IFS.get_ptr(ifindex).map(|p| {
        // SAFETY: valid map value pointer, plain data copied out.
        unsafe { *p }
    })
}

/// Entry of `internal_in`: `Ok` and `Err` both carry the TC verdict.
pub fn internal_in(ctx: &TcContext) -> Result<i32, i32> {
    let Some(cfg) = count_seen(|| internal_config(ifindex(ctx))) else {
        return Ok(OK);
    };
    let rid = cfg.router_id;
    let Ok(ip) = load_ipv4(ctx) else {
        return Ok(OK);
    };
    let Ok(pkt) = validate(ctx, ip) else {
        return Ok(OK);
    };
    let l = load_l4(ctx, &pkt);
    let csum = l4_csum(pkt.ip.proto, pkt.l4);

    // Hairpin to a forwarded port or a floating IP of this router.
    let floating = cfg.flags & ROUTER_F_FLOATING != 0;
    if floating
        && l.ports
        && let Some(pf) = pf_lookup(rid, pkt.ip.dst, l.dport, l.proto, DIR_IN)
    {
        rewrite_port(ctx, pkt.l4 + 2, l.dport, pf.port, csum)
            .and_then(|()| rewrite_addr(ctx, IP_DST, pkt.ip.dst, pf.addr, Some(csum)))
            .map_err(|_| SHOT)?;
        count(rid, Counter::PfPackets, 1);
        return hairpin_source(ctx, &cfg, &pkt, &l, pf.addr, pf.port);
    }
    if floating && let Some(fixed) = fip_lookup(rid, pkt.ip.dst, DIR_IN) {
        crate::fip::rewrite_1to1(ctx, &pkt, IP_DST, fixed).map_err(|_| SHOT)?;
        count(rid, Counter::FipPackets, 1);
        return hairpin_source(ctx, &cfg, &pkt, &l, fixed, l.dport);
    }

    // Reply to a hairpin flow that was SNATed to the gateway IP.
    if pkt.ip.dst == cfg.gateway_ip && pkt.ip.frag_offset() == 0 {
        let (sport, dport, port_off) = if l.ports {
            (l.sport, l.dport, pkt.l4 + 2)
        } else if l.echo_reply {
            (0, l.sport, pkt.l4 + ICMP_ID)
        } else {
            return Ok(OK);
        };
        let rev = key(rid, pkt.ip.src, pkt.ip.dst, sport, dport, l.proto, DIR_IN);
        let Some(v) = touch_in(&rev, l.bits) else {
            return Ok(OK);
        };
        rewrite_port(ctx, port_off, dport, v.port, csum)
            .and_then(|()| rewrite_addr(ctx, IP_DST, pkt.ip.dst, v.addr, Some(csum)))
            .map_err(|_| SHOT)?;
        // The original sender addressed the replier by its floating IP (or forwarded port).
        if l.ports
            && let Some(pf) = pf_lookup(rid, pkt.ip.src, l.sport, l.proto, DIR_OUT)
        {
            rewrite_port(ctx, pkt.l4, l.sport, pf.port, csum)
                .and_then(|()| rewrite_addr(ctx, IP_SRC, pkt.ip.src, pf.addr, Some(csum)))
                .map_err(|_| SHOT)?;
        } else if let Some(f) = fip_lookup(rid, pkt.ip.src, DIR_OUT) {
            rewrite_addr(ctx, IP_SRC, pkt.ip.src, f, Some(csum)).map_err(|_| SHOT)?;
        }
        count(rid, Counter::InPackets, 1);
        return Ok(OK);
    }
    Ok(OK)
}

/// Source translation of a hairpinned packet whose destination was just rewritten to
/// `(new_dst, new_dport)`: the sender's floating IP or port forwarding, else the gateway IP
/// with a SNAT session (TCP, UDP, echo requests; anything else keeps its source).
#[inline(always)]
fn hairpin_source(
    ctx: &TcContext,
    cfg: &RouterConfig,
    pkt: &Packet,
    l: &L4,
    new_dst: u32,
    new_dport: u16,
) -> Result<i32, i32> {
    let rid = cfg.router_id;
    let csum = l4_csum(pkt.ip.proto, pkt.l4);
    let c = if l.ports { Some(csum) } else { None };
    if l.ports
        && let Some(pf) = pf_lookup(rid, pkt.ip.src, l.sport, l.proto, DIR_OUT)
    {
        rewrite_port(ctx, pkt.l4, l.sport, pf.port, csum)
            .and_then(|()| rewrite_addr(ctx, IP_SRC, pkt.ip.src, pf.addr, c))
            .map_err(|_| SHOT)?;
        return Ok(OK);
    }
    if let Some(f) = fip_lookup(rid, pkt.ip.src, DIR_OUT) {
        crate::fip::rewrite_1to1(ctx, pkt, IP_SRC, f).map_err(|_| SHOT)?;
        return Ok(OK);
    }
    let (sport, dport, port_off) = if l.ports {
        (l.sport, new_dport, pkt.l4)
    } else if l.echo_request && l.proto == IPPROTO_ICMP {
        (l.sport, 0, pkt.l4 + ICMP_ID)
    } else {
        return Ok(OK);
    };
    let fwd = key(rid, pkt.ip.src, new_dst, sport, dport, l.proto, DIR_OUT);
    let port = snat_port(cfg, &fwd, l.bits, true).map_err(|r| {
        count(rid, r, 1);
        SHOT
    })?;
    rewrite_port(ctx, port_off, sport, port, csum)
        .and_then(|()| rewrite_addr(ctx, IP_SRC, pkt.ip.src, cfg.gateway_ip, c))
        .map_err(|_| SHOT)?;
    Ok(OK)
}
