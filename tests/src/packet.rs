//! A small packet builder for the BPF TestRun tests: Ethernet + IPv4 (with options and
//! fragment fields) + TCP/UDP/ICMP, every checksum computed from scratch with
//! `router_common::csum` so expected frames are independent of the datapath's incremental
//! updates.

use std::net::Ipv6Addr;

use router_common::csum::{checksum_be, l4_checksum_be};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const FIN: u8 = 0x01;
/// A connection's answer to a SYN.
pub const SYN_ACK: u8 = SYN | ACK;

/// An IPv4 header to serialise in front of a payload.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub id: u16,
    pub ttl: u8,
    /// Flags and fragment offset as on the wire (e.g. 0x2000 = MF, offset in 8-byte units).
    pub frag: u16,
    /// IP options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            id: 0x1c46,
            ttl: 64,
            frag: 0x4000,
            options: Vec::new(),
        }
    }

    /// Header (with a correct checksum) followed by `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let hlen = 20 + self.options.len();
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        h[20..].copy_from_slice(&self.options);
        let c = checksum_be(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// A TCP segment with a correct checksum for `src`→`dst`.
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4));
    let hlen = 20 + options.len();
    let mut s = vec![0u8; hlen];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    s[8..12].copy_from_slice(&(if flags & ACK != 0 { 0x0a0b_0c0du32 } else { 0 }).to_be_bytes());
    s[12] = ((hlen / 4) as u8) << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s[20..].copy_from_slice(options);
    s.extend_from_slice(payload);
    let c = l4_checksum_be(src, dst, TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram; `zero_csum` leaves the checksum 0 ("none").
pub fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
    zero_csum: bool,
) -> Vec<u8> {
    let mut s = vec![0u8; 8];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(payload);
    if !zero_csum {
        let mut c = l4_checksum_be(src, dst, UDP, &s);
        if c == 0 {
            c = 0xffff;
        }
        s[6..8].copy_from_slice(&c.to_be_bytes());
    }
    s
}

/// Writes an IPv4/UDP packet with an 18-byte payload (a 64-byte Ethernet frame with FCS) into
/// `b` in place, with correct IP and UDP checksums; returns its length. Allocation-free for the
/// bench's generators, which write one per sent packet.
pub fn udp_into(
    b: &mut [u8],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) -> usize {
    const PAYLOAD: usize = 18;
    let len = 20 + 8 + PAYLOAD;
    let b = &mut b[..len];
    b.fill(0);
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    b[6] = 0x40; // DF
    b[8] = 64;
    b[9] = UDP;
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    let ip_csum = checksum_be(&b[..20]);
    b[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    b[20..22].copy_from_slice(&sport.to_be_bytes());
    b[22..24].copy_from_slice(&dport.to_be_bytes());
    b[24..26].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    for (i, x) in b[28..].iter_mut().enumerate() {
        *x = i as u8;
    }
    let mut c = l4_checksum_be(src.octets(), dst.octets(), UDP, &b[20..]);
    if c == 0 {
        c = 0xffff;
    }
    b[26..28].copy_from_slice(&c.to_be_bytes());
    len
}

/// An ICMP message: type, code, the 4 bytes after the checksum, then `payload`.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0];
    s.extend_from_slice(&rest);
    s.extend_from_slice(payload);
    let c = checksum_be(&s);
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// An ICMP echo request (type 8) or reply (type 0).
pub fn echo(ty: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&seq.to_be_bytes());
    icmp(ty, 0, rest, payload)
}

/// An Ethernet frame carrying `ip` (EtherType IPv4).
pub fn frame(ip: &[u8]) -> Vec<u8> {
    frame_type(ip, 0x0800)
}

/// An Ethernet frame with an arbitrary EtherType.
pub fn frame_type(payload: &[u8], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet/IPv4 ARP frame (operation `op`: 1 request, 2 reply) from `sha` to Ethernet
/// destination `dst`, the target hardware address zero.
pub fn arp_frame(op: u16, sha: [u8; 6], sip: [u8; 4], tip: [u8; 4], dst: [u8; 6]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&sha);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tip);
    f
}

/// Shorthand: Ethernet + IPv4 (defaults) + TCP.
pub fn tcp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    frame(&Ipv4::new(src, dst, TCP).packet(&tcp(src, dst, sport, dport, flags, &[], b"hello")))
}

/// Shorthand: Ethernet + IPv4 (defaults) + UDP.
pub fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    frame(&Ipv4::new(src, dst, UDP).packet(&udp(src, dst, sport, dport, b"query", false)))
}

/// Shorthand: Ethernet + IPv4 (defaults) + ICMP echo.
pub fn echo_frame(src: [u8; 4], dst: [u8; 4], ty: u8, id: u16) -> Vec<u8> {
    frame(&Ipv4::new(src, dst, ICMP).packet(&echo(ty, id, 1, b"pingdata")))
}

/// A test packet by its headers, short enough for one row of a table of steps (see
/// `testrun::Rig::expect_all`); [`Pkt::frame`] builds it with the shorthands above, every
/// checksum computed in full.
#[derive(Clone, Debug)]
pub enum Pkt {
    /// [`tcp_frame`]: source, source port, destination, destination port, flags.
    Tcp([u8; 4], u16, [u8; 4], u16, u8),
    /// [`udp_frame`]: source, source port, destination, destination port.
    Udp([u8; 4], u16, [u8; 4], u16),
    /// [`echo_frame`]: source, destination, ICMP type, identifier.
    Echo([u8; 4], [u8; 4], u8, u16),
    /// Any other frame, built by the test.
    Frame(Vec<u8>),
}

impl Pkt {
    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        match self {
            Pkt::Tcp(src, sport, dst, dport, flags) => {
                tcp_frame(*src, *sport, *dst, *dport, *flags)
            }
            Pkt::Udp(src, sport, dst, dport) => udp_frame(*src, *sport, *dst, *dport),
            Pkt::Echo(src, dst, ty, id) => echo_frame(*src, *dst, *ty, *id),
            Pkt::Frame(f) => f.clone(),
        }
    }
}

/// Asserts the IPv4 header checksum of `frame` and, for unfragmented TCP/UDP/ICMP, the L4
/// checksum, recomputed from scratch.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[14..];
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(checksum_be(&ip[..hlen]), 0, "IPv4 header checksum");
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let l4 = &ip[hlen..tot];
    match ip[9] {
        TCP => assert_eq!(l4_checksum_be(src, dst, TCP, l4), 0, "TCP checksum"),
        UDP if l4[6..8] != [0, 0] => {
            assert_eq!(l4_checksum_be(src, dst, UDP, l4), 0, "UDP checksum")
        }
        ICMP => assert_eq!(checksum_be(l4), 0, "ICMP checksum"),
        _ => {}
    }
}

/// ICMPv6's protocol number.
pub const ICMPV6: u8 = 58;

/// An Ethernet frame carrying an IPv6 packet (hop limit 64) with `payload` of protocol
/// `next`; for UDP, TCP and ICMPv6 the checksum field of `payload` is filled in over the
/// IPv6 pseudo-header (RFC 8200 §8.1).
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = payload.to_vec();
    let csum_at = match next {
        UDP => Some(6),
        TCP => Some(16),
        ICMPV6 => Some(2),
        _ => None,
    };
    if let Some(at) = csum_at {
        l4[at..at + 2].copy_from_slice(&[0, 0]);
        let mut pseudo = Vec::with_capacity(40 + l4.len());
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next]);
        pseudo.extend_from_slice(&l4);
        let c = checksum_be(&pseudo);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&l4);
    frame_type(&ip, 0x86dd)
}

/// Shorthand: Ethernet + IPv6 + UDP with a valid checksum.
pub fn ipv6_udp_frame(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(8 + 5u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(b"query");
    ipv6_frame(src, dst, UDP, &u)
}
