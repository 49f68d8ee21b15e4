//! Header layouts and offsets: Ethernet at 0 (TC sees the MAC header), IPv4 after it with its
//! real header length (IHL), then the L4 header.
//!
//! Headers are read straight from the packet (`load`): the linear part of the skb holds them
//! for everything a veth delivers, and a direct read costs a bounds check where
//! `bpf_skb_load_bytes` costs a helper call and a copy (measured on the bench's UDP path:
//! ~25 ns of `bpf_skb_load_bytes` plus ~27 ns of `memcpy` per packet over the two programs a
//! packet crosses). Headers outside the linear part fall back to the helper.

use aya_ebpf::programs::TcContext;

/// Ethernet header length; the programs run on an Ethernet device (the gateway tap).
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4, as loaded from the wire into a native u16.
pub const ETH_P_IP_WIRE: u16 = 0x0800u16.to_be();
/// EtherType of IPv6, in wire order.
pub const ETH_P_IPV6_WIRE: u16 = 0x86ddu16.to_be();
/// Offset of the EtherType.
pub const ETH_PROTO_OFF: usize = 12;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 header field offsets relative to the start of the IP header.
pub const IP_CHECK: usize = 10;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
/// Minimum IPv4 header length.
pub const IP_MIN_HLEN: usize = 20;

/// TCP header field offsets and flags.
pub const TCP_CHECK: usize = 16;
pub const TCP_HLEN: usize = 20;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// UDP checksum offset and header length.
pub const UDP_CHECK: usize = 6;
pub const UDP_HLEN: usize = 8;
/// ICMP checksum offset, echo identifier offset and header length.
pub const ICMP_CHECK: usize = 2;
pub const ICMP_ID: usize = 4;
pub const ICMP_HLEN: usize = 8;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// The fixed part of an IPv4 header; multi-byte fields are in wire order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vhl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

impl Ipv4Hdr {
    /// Header length in bytes from IHL.
    #[inline(always)]
    pub fn hlen(&self) -> usize {
        ((self.vhl & 0x0f) as usize) * 4
    }
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vhl >> 4
    }
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        u16::from_be(self.tot_len) as usize
    }
    /// Fragment offset in 8-byte units (0 for unfragmented and first fragments).
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        u16::from_be(self.frag_off) & 0x1fff
    }
    /// More-fragments flag.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        u16::from_be(self.frag_off) & 0x2000 != 0
    }
}

/// The first 20 bytes of a TCP header, wire order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

/// The 8 bytes every L4 header we translate starts with: ports (TCP/UDP) or
/// type/code/checksum/id/sequence (ICMP). Wire order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L4Head {
    pub a: u16,
    pub b: u16,
    pub c: u16,
    pub d: u16,
}

/// A parsed and validated outer IPv4 packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub ip: Ipv4Hdr,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// Offset one past the IP datagram in the frame (excludes Ethernet padding).
    pub end: usize,
}

/// Why a packet could not be parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 (or not even an Ethernet header): passes untouched.
    NotIpv4,
    /// IPv4 but truncated or inconsistent.
    Malformed,
}

/// Reads a `T` at frame offset `off`: directly from the linear data when it lies there, else
/// through `bpf_skb_load_bytes` (headers in paged data).
#[inline(always)]
pub fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, i64> {
    let start = ctx.data();
    let end = ctx.data_end();
    // At least two bytes: for one, LLVM turns the check into `data + off < data_end`, which
    // the verifier does not accept as a bound (a last byte in the linear data takes the helper).
    if start + off + core::mem::size_of::<T>().max(2) <= end {
        // SAFETY: the whole `T` lies between data and data_end (checked above); the read is
        // unaligned because headers sit at any offset.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    ctx.load::<T>(off)
}

/// The frame's EtherType, wire order (`None`: shorter than an Ethernet header).
#[inline(always)]
pub fn ethertype(ctx: &TcContext) -> Option<u16> {
    load::<u16>(ctx, ETH_PROTO_OFF).ok()
}

/// Whether the frame carries IPv4.
#[inline(always)]
pub fn is_ipv4(ctx: &TcContext) -> bool {
    matches!(load::<u16>(ctx, ETH_PROTO_OFF), Ok(p) if p == ETH_P_IP_WIRE)
}

/// Whether the frame carries IPv6.
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    matches!(load::<u16>(ctx, ETH_PROTO_OFF), Ok(p) if p == ETH_P_IPV6_WIRE)
}

/// Loads the fixed IPv4 header (fails only when the frame is shorter than it).
#[inline(always)]
pub fn load_ipv4(ctx: &TcContext) -> Result<Ipv4Hdr, ParseError> {
    if !is_ipv4(ctx) {
        return Err(ParseError::NotIpv4);
    }
    load::<Ipv4Hdr>(ctx, ETH_HLEN).map_err(|_| ParseError::Malformed)
}

/// Validates version, IHL and total length against the frame.
#[inline(always)]
pub fn validate(ctx: &TcContext, ip: Ipv4Hdr) -> Result<Packet, ParseError> {
    let hlen = ip.hlen();
    let tot = ip.total_len();
    let frame = ctx.len() as usize;
    if ip.version() != 4 || hlen < IP_MIN_HLEN || tot < hlen || ETH_HLEN + tot > frame {
        return Err(ParseError::Malformed);
    }
    Ok(Packet {
        ip,
        l4: ETH_HLEN + hlen,
        end: ETH_HLEN + tot,
    })
}
