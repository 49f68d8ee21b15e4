//! IPv4 fragments: only the first fragment carries the L4 header, so the translation chosen
//! for it is recorded and later fragments of the same datagram (same src, dst, id, protocol)
//! follow it. Out-of-order later fragments that arrive before their first one are dropped on
//! the way out (they could otherwise leak an internal source) and passed on the way in.

use router_common::{FragKey, FragValue};

use crate::{maps::FRAGMENTS, parse::Ipv4Hdr};

#[inline(always)]
fn frag_key(router_id: u32, ip: &Ipv4Hdr, dir: u8) -> FragKey {
    FragKey {
        router_id,
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
        dir,
    }
}

/// Whether the packet is the first fragment of a fragmented datagram.
#[inline(always)]
pub fn is_first(ip: &Ipv4Hdr) -> bool {
    ip.more_fragments() && ip.frag_offset() == 0
}

/// Records that the datagram of first fragment `ip` was translated to `addr`.
#[inline(always)]
pub fn record(router_id: u32, ip: &Ipv4Hdr, dir: u8, addr: u32) {
    let v = FragValue { addr, _pad: 0 };
    // A failed insert only means later fragments get dropped/passed: nothing to undo.
    let _ = FRAGMENTS.insert(frag_key(router_id, ip, dir), v, 0);
}

/// The address later fragment `ip` must be rewritten to, if its first fragment was seen.
#[inline(always)]
pub fn lookup(router_id: u32, ip: &Ipv4Hdr, dir: u8) -> Option<u32> {
    FRAGMENTS.get_ptr(frag_key(router_id, ip, dir)).map(|p| {
        // SAFETY: valid map value pointer, plain data copied out.
        unsafe { (*p).addr }
    })
}
