//! Floating IPs and port forwardings at the gateway tap.
//!
//! A floating IP is a stateless 1:1 translation decided by the `FLOATING_IPS` map alone: every
//! packet from the fixed IP leaving through the gateway gets the floating IP as source (all
//! protocols, ports kept, later fragments too), every packet to the floating IP coming in gets
//! the fixed IP as destination. It runs before, and instead of, the gateway SNAT. A port
//! forwarding (`PORT_FORWARDINGS`) translates (floating IP, external port) ⇄ (internal IP,
//! internal port) for one protocol; its internal side is unique, so replies are found without
//! state.
//!
//! Sessions of kind `SESSION_FIP`/`SESSION_PF` are recorded in `SESSIONS` like SNAT sessions,
//! one entry keyed by the tuple as replies arrive (the floating IP and external port known from
//! the maps, so no forward alias is ever needed), so `router-ctl sessions` shows them, the GC
//! ages them, ICMP errors find them and a disassociation can flush them; they never decide a
//! translation. Removing a map entry therefore stops the translation at the
//! next packet.

use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_OK},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use router_common::{
    DIR_IN, DIR_OUT, FipKey, FipValue, MAX_FIPS, PfKey, PfValue, RouterConfig, SessionValue,
    stats::{Counter, GlobalCounter},
};

use crate::{
    csum::{l4_csum, rewrite_addr, rewrite_port},
    maps::{
        ROUTER_SESSIONS, SESSIONS, atomic_add, count, count_global, count_packet, session_quota,
    },
    parse::{
        ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HLEN, IP_DST, IP_SRC, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, L4Head, Packet, TCP_HLEN, TcpHdr, UDP_HLEN, load, load_ipv4, validate,
    },
    session::{key, note_in, note_out, now, reverse_key, tcp_bits},
};

const OK: i32 = TC_ACT_OK;

/// Floating IPs: `DIR_OUT` fixed → floating, `DIR_IN` floating → fixed.
#[map]
pub static FLOATING_IPS: HashMap<FipKey, FipValue> = HashMap::with_max_entries(MAX_FIPS, 0);

/// Port forwardings: `DIR_IN` (floating IP, external port) → internal, `DIR_OUT` (internal IP,
/// internal port) → (floating IP, external port).
#[map]
pub static PORT_FORWARDINGS: HashMap<PfKey, PfValue> = HashMap::with_max_entries(2 * MAX_FIPS, 0);

/// The address `addr` translates to through a floating IP of router `rid` in direction `dir`.
#[inline(always)]
pub fn fip_lookup(rid: u32, addr: u32, dir: u8) -> Option<u32> {
    let k = FipKey {
        router_id: rid,
        addr,
        dir,
        _pad: [0; 3],
    };
    FLOATING_IPS.get_ptr(k).map(|p| {
        // SAFETY: valid map value pointer, plain data copied out.
        unsafe { (*p).addr }
    })
}

/// The port forwarding of router `rid` matching `(addr, port, proto)` in direction `dir`.
#[inline(always)]
pub fn pf_lookup(rid: u32, addr: u32, port: u16, proto: u8, dir: u8) -> Option<PfValue> {
    let k = PfKey {
        router_id: rid,
        addr,
        port,
        proto,
        dir,
    };
    PORT_FORWARDINGS.get_ptr(k).map(|p| {
        // SAFETY: valid map value pointer, plain data copied out.
        unsafe { *p }
    })
}

/// The L4 facts a floating-IP translation needs: protocol, ports (wire order; echo id as the
/// "port" of ICMP echo), TCP state bits, and whether the packet may be recorded as a session.
#[derive(Clone, Copy)]
pub struct L4 {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub bits: u8,
    /// TCP or UDP with a complete header (ports valid).
    pub ports: bool,
    /// ICMP echo request / reply (id in `sport`).
    pub echo_request: bool,
    pub echo_reply: bool,
}

/// Reads the L4 facts of a validated, unfragmented (or first-fragment) packet.
#[inline(always)]
pub fn load_l4(ctx: &TcContext, pkt: &Packet) -> L4 {
    let mut l = L4 {
        proto: pkt.ip.proto,
        sport: 0,
        dport: 0,
        bits: 0,
        ports: false,
        echo_request: false,
        echo_reply: false,
    };
    if pkt.ip.frag_offset() != 0 {
        return l;
    }
    match pkt.ip.proto {
        IPPROTO_TCP if pkt.l4 + TCP_HLEN <= pkt.end => {
            if let Ok(t) = load::<TcpHdr>(ctx, pkt.l4) {
                l.sport = t.sport;
                l.dport = t.dport;
                l.bits = tcp_bits(t.flags);
                l.ports = true;
            }
        }
        IPPROTO_UDP if pkt.l4 + UDP_HLEN <= pkt.end => {
            if let Ok(u) = load::<L4Head>(ctx, pkt.l4) {
                l.sport = u.a;
                l.dport = u.b;
                l.ports = true;
            }
        }
        IPPROTO_ICMP if pkt.l4 + ICMP_HLEN <= pkt.end => {
            if let Ok(h) = load::<L4Head>(ctx, pkt.l4) {
                let ty = (u16::from_be(h.a) >> 8) as u8;
                l.echo_request = ty == ICMP_ECHO_REQUEST;
                l.echo_reply = ty == ICMP_ECHO_REPLY;
                l.sport = h.c;
            }
        }
        _ => {}
    }
    l
}

/// Records (or refreshes) the session of a translated packet: one entry, keyed by the tuple
/// as replies arrive. `dir` is the packet's direction;
/// `(src, dst, sport, dport)` its tuple before translation; `(new_addr, new_port)` what the
/// internal end was translated to (`DIR_OUT`) or from (`DIR_IN`: the internal end itself).
/// Returns whether it made a new session (the caller counts it with the packet).
#[expect(
    clippy::too_many_arguments,
    reason = "a flat, inlined helper: a struct would only be built to be taken apart"
)]
#[inline(always)]
pub fn note_session(
    rid: u32,
    kind: u8,
    dir: u8,
    l: &L4,
    src: u32,
    dst: u32,
    new_addr: u32,
    new_port: u16,
) -> bool {
    let mut replaces = false;
    let (rk, value) = if dir == DIR_OUT {
        // Outbound: TCP/UDP, or an echo request (id as source "port", 0 as destination).
        let (sport, dport) = if l.ports {
            (l.sport, l.dport)
        } else if l.echo_request {
            (l.sport, 0)
        } else {
            return false;
        };
        let fwd = key(rid, src, dst, sport, dport, l.proto, DIR_OUT);
        let rk = reverse_key(&fwd, new_addr, new_port);
        if let Some(v) = SESSIONS.get_ptr_mut(rk) {
            // SAFETY: valid map value; concurrent updates of these plain fields are benign.
            let v = unsafe { &mut *v };
            if v.addr == src && v.port == sport && v.kind == kind {
                note_out(v, l.bits);
                return false;
            }
            replaces = true;
        }
        let v = SessionValue {
            addr: src,
            port: sport,
            state: l.bits,
            kind,
            last_seen_ns: now(),
        };
        (rk, v)
    } else {
        // Inbound: TCP/UDP, or an echo reply (0 as source "port", id as destination).
        let (sport, dport) = if l.ports {
            (l.sport, l.dport)
        } else if l.echo_reply {
            (0, l.sport)
        } else {
            return false;
        };
        let rk = key(rid, src, dst, sport, dport, l.proto, DIR_IN);
        if let Some(v) = SESSIONS.get_ptr_mut(rk) {
            // SAFETY: as above.
            let v = unsafe { &mut *v };
            if v.addr == new_addr && v.port == new_port && v.kind == kind {
                note_in(v, l.bits);
                return false;
            }
            replaces = true;
        }
        let mut v = SessionValue {
            addr: new_addr,
            port: new_port,
            state: 0,
            kind,
            last_seen_ns: 0,
        };
        note_in(&mut v, l.bits);
        (rk, v)
    };
    // A router at its quota of entries records no new session: the translation does not
    // need one (it is stateless), and the table stays fair to the other routers.
    let count = ROUTER_SESSIONS.get_ptr_mut(rid);
    if !replaces
        && let Some(c) = count
        // SAFETY: a valid array slot, updated atomically elsewhere; a stale read is harmless.
        && unsafe { core::ptr::read_volatile(c) } >= session_quota()
    {
        return false;
    }
    // A translation that changed (another kind or internal end) replaces the old session.
    let created = SESSIONS.insert(rk, value, BPF_ANY as u64).is_ok();
    if created {
        if !replaces && let Some(c) = count {
            // SAFETY: the slot of `ROUTER_SESSIONS` looked up above.
            unsafe { atomic_add(c, 1) };
        }
        count_global(GlobalCounter::SessionsCreated);
    }
    created
}

/// Rewrites the source (`field = IP_SRC`) or destination address of `pkt` to `new`, with the
/// pseudo-header checksum of TCP/UDP when the packet carries the L4 header.
#[inline(always)]
pub fn rewrite_1to1(ctx: &TcContext, pkt: &Packet, field: usize, new: u32) -> Result<(), i64> {
    let old = if field == IP_SRC {
        pkt.ip.src
    } else {
        pkt.ip.dst
    };
    let has_l4 = pkt.ip.frag_offset() == 0
        && match pkt.ip.proto {
            IPPROTO_TCP => pkt.l4 + TCP_HLEN <= pkt.end,
            IPPROTO_UDP => pkt.l4 + UDP_HLEN <= pkt.end,
            _ => false,
        };
    let c = if has_l4 {
        Some(l4_csum(pkt.ip.proto, pkt.l4))
    } else {
        None
    };
    rewrite_addr(ctx, field, old, new, c)
}

/// Rewrites address and port (`port_off`: frame offset of the port) of a TCP/UDP packet.
#[inline(always)]
pub fn rewrite_pf(
    ctx: &TcContext,
    pkt: &Packet,
    field: usize,
    port_off: usize,
    old_port: u16,
    new: &PfValue,
) -> Result<(), i64> {
    let old = if field == IP_SRC {
        pkt.ip.src
    } else {
        pkt.ip.dst
    };
    let c = l4_csum(pkt.ip.proto, pkt.l4);
    rewrite_port(ctx, port_off, old_port, new.port, c)?;
    rewrite_addr(ctx, field, old, new.addr, Some(c))
}

/// Gateway tap ingress (leaving the router): port-forwarding replies and floating-IP sources.
/// `None`: not ours, the SNAT decides.
#[inline(always)]
pub fn gateway_out(ctx: &TcContext, cfg: &RouterConfig) -> Option<i32> {
    let rid = cfg.router_id;
    let ip = load_ipv4(ctx).ok()?;
    let pkt = validate(ctx, ip).ok()?;
    let l = load_l4(ctx, &pkt);
    if let Some(v) = forward_port(ctx, rid, &pkt, &l, DIR_OUT) {
        return Some(v);
    }
    let fip = fip_lookup(rid, pkt.ip.src, DIR_OUT)?;
    if let Some(v) = icmp_error(ctx, cfg, &pkt, DIR_OUT) {
        return Some(v);
    }
    Some(one_to_one(ctx, rid, &pkt, &l, DIR_OUT, fip))
}

/// Whether an IPv4 packet is addressed to the metadata address (169.254.169.254): the proxy
/// there serves the router's tenants only, so `snat_in` drops such packets from outside.
#[inline(always)]
pub fn to_metadata(ctx: &TcContext) -> bool {
    crate::parse::is_ipv4(ctx)
        && matches!(
            load::<u32>(ctx, crate::parse::ETH_HLEN + IP_DST),
            Ok(d) if d == router_common::ip_to_wire(router_common::METADATA_IP)
        )
}

/// Gateway tap egress (entering the router): packets to a floating IP or a forwarded port.
/// `None`: not ours, the SNAT decides.
#[inline(always)]
pub fn gateway_in(ctx: &TcContext, cfg: &RouterConfig) -> Option<i32> {
    let rid = cfg.router_id;
    let ip = load_ipv4(ctx).ok()?;
    if ip.dst == cfg.gateway_ip {
        return None;
    }
    let pkt = validate(ctx, ip).ok()?;
    // ICMP errors quoting a floating-IP or port-forwarding flow (found by its session).
    if let Some(v) = icmp_error(ctx, cfg, &pkt, DIR_IN) {
        return Some(v);
    }
    let l = load_l4(ctx, &pkt);
    if let Some(v) = forward_port(ctx, rid, &pkt, &l, DIR_IN) {
        return Some(v);
    }
    let fixed = fip_lookup(rid, pkt.ip.dst, DIR_IN)?;
    Some(one_to_one(ctx, rid, &pkt, &l, DIR_IN, fixed))
}

/// The port forwarding of this packet, if any, applied: the VM's reply source (`DIR_OUT`) or the
/// forwarded destination (`DIR_IN`) rewritten, the session noted, the packet counted. `None`: no
/// forwarding matches.
#[inline(always)]
fn forward_port(ctx: &TcContext, rid: u32, pkt: &Packet, l: &L4, dir: u8) -> Option<i32> {
    if !l.ports {
        return None;
    }
    let (field, addr, port, port_off, bytes) = if dir == DIR_OUT {
        (IP_SRC, pkt.ip.src, l.sport, pkt.l4, Counter::OutBytes)
    } else {
        (IP_DST, pkt.ip.dst, l.dport, pkt.l4 + 2, Counter::InBytes)
    };
    let pf = pf_lookup(rid, addr, port, l.proto, dir)?;
    if rewrite_pf(ctx, pkt, field, port_off, port, &pf).is_err() {
        count(rid, Counter::DropMalformed, 1);
        return Some(aya_ebpf::bindings::TC_ACT_SHOT);
    }
    let created = note_session(
        rid,
        router_common::SESSION_PF,
        dir,
        l,
        pkt.ip.src,
        pkt.ip.dst,
        pf.addr,
        pf.port,
    );
    count_packet(rid, Counter::PfPackets, bytes, ctx.len() as u64, created);
    Some(OK)
}

/// The 1:1 translation of a floating IP: the VM's source becomes `to` (`DIR_OUT`) or the floating
/// destination becomes the VM's `to` (`DIR_IN`); the session noted, the packet counted.
#[inline(always)]
fn one_to_one(ctx: &TcContext, rid: u32, pkt: &Packet, l: &L4, dir: u8, to: u32) -> i32 {
    let (field, port, bytes) = if dir == DIR_OUT {
        (IP_SRC, l.sport, Counter::OutBytes)
    } else {
        (
            IP_DST,
            if l.ports { l.dport } else { l.sport },
            Counter::InBytes,
        )
    };
    if rewrite_1to1(ctx, pkt, field, to).is_err() {
        count(rid, Counter::DropMalformed, 1);
        return aya_ebpf::bindings::TC_ACT_SHOT;
    }
    let created = note_session(
        rid,
        router_common::SESSION_FIP,
        dir,
        l,
        pkt.ip.src,
        pkt.ip.dst,
        to,
        port,
    );
    count_packet(rid, Counter::FipPackets, bytes, ctx.len() as u64, created);
    OK
}

/// An ICMP error about a floating-IP flow: the quoted header is translated like the flow
/// (through its session, as for SNAT), so the VM or the remote can match it. `None`: not an
/// ICMP error, or it quotes no recorded flow (the caller then translates the outer header only).
#[inline(always)]
fn icmp_error(ctx: &TcContext, cfg: &RouterConfig, pkt: &Packet, dir: u8) -> Option<i32> {
    let rid = cfg.router_id;
    if pkt.ip.proto != IPPROTO_ICMP || pkt.ip.frag_offset() != 0 || pkt.l4 + ICMP_HLEN > pkt.end {
        return None;
    }
    let ty = ctx.load::<u8>(pkt.l4).ok()?;
    if !crate::icmp::is_error(ty) {
        return None;
    }
    match crate::icmp::translate_error(ctx, cfg, pkt, dir) {
        Ok(crate::icmp::ErrorResult::Translated) => {
            count(rid, Counter::IcmpErrors, 1);
            count(rid, Counter::FipPackets, 1);
            Some(OK)
        }
        Ok(crate::icmp::ErrorResult::NoMatch) => None,
        Err(_) => {
            count(rid, Counter::DropMalformed, 1);
            Some(aya_ebpf::bindings::TC_ACT_SHOT)
        }
    }
}
