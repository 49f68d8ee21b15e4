//! Rewrites of addresses and ports with their checksums. The L4 checksum goes through
//! `bpf_l4_csum_replace`, which knows whether the skb is CHECKSUM_PARTIAL (veth: the field holds
//! the pseudo-header sum) or carries a full checksum; the program cannot tell. The IPv4 header
//! checksum is always complete, so it is updated here (RFC 1624) and written, with the new
//! address or port, straight into the packet: that saves `bpf_l3_csum_replace` and two
//! `bpf_skb_store_bytes` calls per translated packet. A field outside the linear data falls back
//! to the helpers. Direct writes make the verifier add a prologue that un-clones a cloned skb
//! before each run of the program (the helpers did it only for the packets they wrote); skbs
//! on these hooks are cloned only when a bridge floods them or a packet socket holds a copy.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use router_common::csum::update32;

use crate::parse::{ETH_HLEN, IP_CHECK, IPPROTO_TCP, IPPROTO_UDP, TCP_CHECK, UDP_CHECK};

/// Where an L4 checksum lives and how the helper must treat it.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Frame offset of the checksum field.
    pub off: usize,
    /// Extra `l4_csum_replace` flags (`BPF_F_MARK_MANGLED_0` for UDP).
    pub flags: u64,
    /// Whether the checksum covers the IPv4 pseudo-header (TCP, UDP; not ICMP).
    pub pseudo: bool,
}

/// The checksum of the L4 header at `l4` for `proto` (ICMP otherwise).
#[inline(always)]
pub fn l4_csum(proto: u8, l4: usize) -> L4Csum {
    match proto {
        IPPROTO_TCP => L4Csum {
            off: l4 + TCP_CHECK,
            flags: 0,
            pseudo: true,
        },
        IPPROTO_UDP => L4Csum {
            off: l4 + UDP_CHECK,
            flags: BPF_F_MARK_MANGLED_0 as u64,
            pseudo: true,
        },
        _ => L4Csum {
            off: l4 + crate::parse::ICMP_CHECK,
            flags: 0,
            pseudo: false,
        },
    }
}

/// Writes `new` at frame offset `off` when it lies in the linear data; `false` otherwise.
#[inline(always)]
fn write<T: Copy>(ctx: &TcContext, off: usize, new: T) -> bool {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return false;
    }
    // SAFETY: the whole `T` lies between data and data_end (checked above).
    unsafe { core::ptr::write_unaligned((start + off) as *mut T, new) };
    true
}

/// Rewrites the IPv4 address at IP-header offset `field` (`IP_SRC`/`IP_DST`) from `old` to
/// `new`, fixing the IP checksum and, when `l4` is given, the L4 pseudo-header checksum.
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    field: usize,
    old: u32,
    new: u32,
    l4: Option<L4Csum>,
) -> Result<(), i64> {
    if let Some(c) = l4
        && c.pseudo
    {
        ctx.l4_csum_replace(
            c.off,
            old as u64,
            new as u64,
            c.flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )?;
    }
    // The helper above may have moved the data: read and write through fresh pointers.
    let check_off = ETH_HLEN + IP_CHECK;
    match crate::parse::load::<u16>(ctx, check_off) {
        Ok(check) if write(ctx, check_off, update32(check, old, new)) => {
            if write(ctx, ETH_HLEN + field, new) {
                return Ok(());
            }
            // Unreachable in practice (the checksum field came first in the same header);
            // undo the checksum so the helpers below start from the original.
            let _ = write(ctx, check_off, check);
        }
        _ => {}
    }
    ctx.l3_csum_replace(ETH_HLEN + IP_CHECK, old as u64, new as u64, 4)?;
    ctx.store(ETH_HLEN + field, &new, 0)?;
    Ok(())
}

/// Rewrites the 16-bit L4 field at frame offset `off` (a port or an ICMP echo identifier)
/// from `old` to `new`, fixing the L4 checksum `c`.
#[inline(always)]
pub fn rewrite_port(ctx: &TcContext, off: usize, old: u16, new: u16, c: L4Csum) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(c.off, old as u64, new as u64, c.flags | 2)?;
    if !write(ctx, off, new) {
        ctx.store(off, &new, 0)?;
    }
    Ok(())
}
