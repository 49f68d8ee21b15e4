//! The fast path: `fast_fwd`, on the tc ingress of a router's own devices (`qr-`, `qg-`)
//! **inside** the router namespace.
//!
//! A packet the router would forward is forwarded here instead, with the router namespace's
//! own routing and neighbour tables (`bpf_fib_lookup` runs in the namespace of the device the
//! packet arrived on), and put straight onto the bridge-side peer of the egress device with
//! `bpf_redirect_peer`: the namespace's IPv4 receive, route lookup, forward and output, the
//! egress veth transmit and its backlog queue are skipped. NAT is untouched: a packet leaving
//! through `qg-` lands on the gateway tap's ingress, where `snat_out` translates it as if the
//! router had sent it; a packet entering through `qg-` was already translated by `snat_in` on
//! the tap's egress. East-west traffic between the router's subnets is forwarded the same way.
//!
//! Everything unusual takes the router's own path (`TC_ACT_OK`), which then behaves exactly as
//! without the fast path: frames not addressed to the device's MAC, non-IPv4, IP options,
//! TTL ≤ 1 (the router sends Time Exceeded), a bad header checksum or length (the router
//! drops and counts it), martian addresses, anything the FIB does not forward or whose
//! neighbour is unresolved (the router resolves it), a packet larger than the egress MTU (the
//! router fragments or answers Fragmentation Needed), and an egress device that is not one of
//! this router's own. The fast path only ever changes what the router would change in a
//! forwarded packet: both MAC addresses, the TTL and the header checksum.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{TC_ACT_OK, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_redirect_peer},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use router_common::{FastIf, MAX_FAST_IFS, stat};

use crate::{
    maps::count,
    nat::ifindex,
    parse::{ETH_HLEN, ETH_P_IP_WIRE, IP_MIN_HLEN, Ipv4Hdr},
};

const OK: i32 = TC_ACT_OK;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// The router devices that run `fast_fwd`, by ifindex in their router namespace.
#[map]
pub static FAST_IFS: HashMap<u32, FastIf> = HashMap::with_max_entries(MAX_FAST_IFS, 0);

#[inline(always)]
fn fast_if(ifindex: u32) -> Option<FastIf> {
    FAST_IFS.get_ptr(ifindex).map(|p| {
        // SAFETY: a valid map value pointer; plain data copied out.
        unsafe { *p }
    })
}

/// Ethernet header plus the fixed IPv4 header, as they sit at the start of the frame (packed:
/// the IPv4 header starts at byte 14, which `Ipv4Hdr`'s alignment would move to 16).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Head {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
    ip: Ipv4Hdr,
}

/// Whether the 20-byte header's checksum verifies (the ones' complement sum of its ten
/// 16-bit words is 0xffff).
#[inline(always)]
fn header_checksum_ok(ip: &Ipv4Hdr) -> bool {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data; reading it as ten u16 words is sound
    // (read_unaligned, any alignment).
    let words: [u16; 10] = unsafe { core::ptr::read_unaligned(ip as *const Ipv4Hdr as *const _) };
    let mut sum: u32 = 0;
    for w in words {
        sum += w as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// First octet of an IPv4 address in wire order.
#[inline(always)]
fn first_octet(addr: u32) -> u8 {
    addr.to_ne_bytes()[0]
}

/// Entry of `fast_fwd`: the verdict.
pub fn fast_fwd(ctx: &TcContext) -> i32 {
    let ifindex = ifindex(ctx);
    let Some(me) = fast_if(ifindex) else {
        return OK;
    };
    let start = ctx.data();
    let end = ctx.data_end();
    if start + core::mem::size_of::<Head>() > end {
        return OK;
    }
    // SAFETY: the whole header lies between data and data_end (checked above).
    let head: Head = unsafe { core::ptr::read_unaligned(start as *const Head) };
    // A frame for this device (another device's ifindex in another namespace has another MAC).
    if head.dst != me.mac || head.proto != ETH_P_IP_WIRE {
        return OK;
    }
    let ip = head.ip;
    // No options (the router handles those), TTL left to decrement, sane length, valid header.
    if ip.vhl != 0x45
        || ip.ttl <= 1
        || ip.total_len() < IP_MIN_HLEN
        || ETH_HLEN + ip.total_len() > ctx.len() as usize
        || !header_checksum_ok(&ip)
    {
        return OK;
    }
    // Martians the router drops: 0/8, 127/8 and 224/3 sources; 0/8 and 127/8 destinations.
    let (s, d) = (first_octet(ip.src), first_octet(ip.dst));
    if s == 0 || s == 127 || s >= 224 || d == 0 || d == 127 {
        return OK;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    // SAFETY: FibParams is plain data (integers and unions of integers); all-zero is valid.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.ifindex = ifindex;
    // With a length the lookup compares it with the egress MTU; a GSO packet's length is
    // that of all its segments, so for one the helper checks the skb itself (segments fit).
    fib.__bindgen_anon_1.tot_len = if gso { 0 } else { u16::from_be(ip.tot_len) };
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = ip.src;
    fib.__bindgen_anon_4.ipv4_dst = ip.dst;
    // SAFETY: the helper reads and writes `fib` (its size is passed) and reads the skb.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return OK;
    }
    let egress = fib.ifindex;
    if egress == ifindex {
        // Out the way it came: the router sends an ICMP redirect.
        return OK;
    }
    match fast_if(egress) {
        Some(out) if out.mac == fib.smac && out.router_id == me.router_id => {}
        _ => return OK,
    }
    // Rewrite what forwarding rewrites: MACs, TTL, header checksum (as ip_decrease_ttl does).
    let start = ctx.data();
    if start + core::mem::size_of::<Head>() > ctx.data_end() {
        return OK;
    }
    let mut check = ip.check as u32 + 0x0100u16.to_be() as u32;
    check += (check >= 0xffff) as u32;
    let p = start as *mut Head;
    // SAFETY: the header lies inside the packet (checked just above, after the helper call
    // that invalidated earlier packet pointers); writes are unaligned-safe field by field.
    unsafe {
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).dst), fib.dmac);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).src), fib.smac);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).ip.ttl), ip.ttl - 1);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).ip.check), check as u16);
    }
    count(me.router_id, stat::FAST_PACKETS, 1);
    // SAFETY: plain helper call; the verdict is TC_ACT_REDIRECT (or TC_ACT_SHOT for a bad
    // ifindex, which `egress` from the FIB is not).
    unsafe { bpf_redirect_peer(egress, 0) as i32 }
}
