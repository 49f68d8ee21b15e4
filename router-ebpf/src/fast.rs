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
    maps::Array,
    programs::TcContext,
};
use router_common::{FAST_IF_USED, FastIf, MAX_FAST_IFS, stats::Counter};

use crate::{
    maps::count,
    nat::ifindex,
    parse::{ETH_HLEN, ETH_P_IP_WIRE, IP_MIN_HLEN, Ipv4Hdr},
};

const OK: i32 = TC_ACT_OK;
const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// The router devices that run `fast_fwd`, by ifindex in their router namespace (an array:
/// the lookup is an inlined bounds check, see `router_common::MAX_FAST_IFS`).
#[map]
pub static FAST_IFS: Array<FastIf> = Array::with_max_entries(MAX_FAST_IFS, 0);

/// The entry of `ifindex`, if the slot holds a device whose MAC is `mac` (as `u32` + `u16`
/// halves: a field-wise compare instead of a byte-array one, which LLVM lowers to a call).
#[inline(always)]
fn fast_if(ifindex: u32, mac: (u32, u16)) -> Option<FastIf> {
    let e = *FAST_IFS.get(ifindex)?;
    (e.flags & FAST_IF_USED != 0 && mac_halves(&e.mac) == mac).then_some(e)
}

/// A MAC as its first four and last two bytes.
#[inline(always)]
fn mac_halves(m: &[u8; 6]) -> (u32, u16) {
    // SAFETY: reads inside the 6-byte array, unaligned.
    unsafe {
        (
            core::ptr::read_unaligned(m.as_ptr() as *const u32),
            core::ptr::read_unaligned(m.as_ptr().add(4) as *const u16),
        )
    }
}

/// The FIB lookup parameters, 8-aligned so they can be written as eight u64 words.
#[repr(C, align(8))]
struct FibSlot(core::mem::MaybeUninit<FibParams>);
const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

/// Ethernet header plus the fixed IPv4 header, as they sit at the start of the frame (packed:
/// the IPv4 header starts at byte 14, which `Ipv4Hdr`'s alignment would move to 16).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Head {
    dst_hi: u32,
    dst_lo: u16,
    src_hi: u32,
    src_lo: u16,
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
    let start = ctx.data();
    let end = ctx.data_end();
    if start + core::mem::size_of::<Head>() > end {
        return OK;
    }
    // SAFETY: the whole header lies between data and data_end (checked above).
    let head: Head = unsafe { core::ptr::read_unaligned(start as *const Head) };
    if head.proto != ETH_P_IP_WIRE {
        return OK;
    }
    // A frame for this device (another device's ifindex in another namespace has another MAC).
    let Some(me) = fast_if(ifindex, (head.dst_hi, head.dst_lo)) else {
        return OK;
    };
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
    // With a length the lookup compares it with the egress MTU; a GSO packet's length is
    // that of all its segments, so for one the helper checks the skb itself (segments fit).
    let tot_len = if gso {
        0
    } else {
        u16::from_be(ip.tot_len) as u64
    };
    // The parameters as eight words (family, protocol, ports, length | ifindex, tos | source
    // | destination | rest zero), so no memset call zeroes the 64 bytes first; the layout is
    // `struct bpf_fib_lookup`'s (little-endian).
    let words: [u64; 8] = [
        AF_INET as u64 | (ip.proto as u64) << 8 | tot_len << 48,
        ifindex as u64 | (ip.tos as u64) << 32,
        ip.src as u64,
        0,
        ip.dst as u64,
        0,
        0,
        0,
    ];
    let mut slot = FibSlot(core::mem::MaybeUninit::uninit());
    let w = slot.0.as_mut_ptr() as *mut u64;
    for (i, v) in words.iter().enumerate() {
        // SAFETY: eight aligned u64 stores fill the 64-byte, 8-aligned slot; volatile keeps
        // LLVM from folding the zero words into a memset call.
        unsafe { core::ptr::write_volatile(w.add(i), *v) };
    }
    // SAFETY: every byte was written above; the helper reads and writes the struct (its size
    // is passed) and reads the skb.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            slot.0.as_mut_ptr(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // SAFETY: initialised above (and only updated by the helper).
    let fib = unsafe { slot.0.assume_init() };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return OK;
    }
    let egress = fib.ifindex;
    if egress == ifindex {
        // Out the way it came: the router sends an ICMP redirect.
        return OK;
    }
    let smac = mac_halves(&fib.smac);
    let dmac = mac_halves(&fib.dmac);
    match fast_if(egress, smac) {
        Some(out) if out.router_id == me.router_id => {}
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
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).dst_hi), dmac.0);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).dst_lo), dmac.1);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).src_hi), smac.0);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).src_lo), smac.1);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).ip.ttl), ip.ttl - 1);
        core::ptr::write_unaligned(core::ptr::addr_of_mut!((*p).ip.check), check as u16);
    }
    count(me.router_id, Counter::FastForwarded, 1);
    // SAFETY: plain helper call; the verdict is TC_ACT_REDIRECT (or TC_ACT_SHOT for a bad
    // ifindex, which `egress` from the FIB is not).
    unsafe { bpf_redirect_peer(egress, 0) as i32 }
}
