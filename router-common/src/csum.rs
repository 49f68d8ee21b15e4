//! Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624).
//!
//! Shared by the datapath (where no helper applies, e.g. headers embedded in ICMP errors) and by
//! tests, which recompute every checksum independently of the helpers the datapath used.
//! All 16-bit values here are in the same byte order as the data they checksum; ones'
//! complement sums are byte-order independent as long as one order is used throughout.

/// Folds a 32-bit accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: new checksum `HC' = ~(~HC + ~m + m')` for one 16-bit field changing
/// from `old` to `new`.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// Incremental update for a 32-bit field (e.g. an IPv4 address) changing from `old` to `new`.
#[inline(always)]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum =
        (!check as u32) + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// Ones' complement sum of `data` (odd length padded with zero), big-endian word order.
pub fn sum_be(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 32 != 0 {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// Full checksum of `data` (big-endian result, as stored in a header).
pub fn checksum_be(data: &[u8]) -> u16 {
    !fold(sum_be(data, 0))
}

/// Checksum of a TCP/UDP segment with its IPv4 pseudo-header (the checksum field of `segment`
/// must be zero, or the result is the verification sum: 0 means valid).
pub fn l4_checksum_be(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let s = sum_be(&pseudo, 0);
    !fold(sum_be(segment, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_be(&data, 0)), 0xddf2);
    }

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 5, 203, 0, 113, 9,
        ];
        let c = checksum_be(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u32::from_be_bytes([10, 0, 0, 5]);
        let new = u32::from_be_bytes([192, 0, 2, 10]);
        hdr[12..16].copy_from_slice(&new.to_be_bytes());
        let inc = update32(c, old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, checksum_be(&hdr));
        // 16-bit update, e.g. TTL/protocol word.
        hdr[10..12].copy_from_slice(&inc.to_be_bytes());
        let oldw = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] = 0x3f;
        let neww = u16::from_be_bytes([hdr[8], hdr[9]]);
        let inc2 = update16(inc, oldw, neww);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc2, checksum_be(&hdr));
    }

    #[test]
    fn verify_sum_is_zero() {
        let seg = [
            0x12u8, 0x34, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'a', b'b', b'c', b'd',
        ];
        let c = l4_checksum_be([10, 0, 0, 1], [10, 0, 0, 2], 17, &seg);
        let mut s2 = seg;
        s2[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(l4_checksum_be([10, 0, 0, 1], [10, 0, 0, 2], 17, &s2), 0);
    }
}
