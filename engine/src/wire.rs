//! Zero-copy checked views and helpers for the headers the data plane touches: IPv4, IPv6,
//! UDP, TCP, ESP, ICMP ([`Ipv4`], [`Ipv6`], [`Udp`], [`Tcp`], [`Esp`], [`Icmp`], [`Ipv6Frag`]: fields by
//! name, length checked once), TCP (MSS option) and the Internet checksum (RFC 1071).
//!
//! Contract: every function here is bounds-checked and returns `None`/`Err` on short or
//! inconsistent input; nothing panics on any byte string. No allocation, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers used by the engine.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const IPV6_FRAG: u8 = 44;
    pub const ESP: u8 = 50;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT: u8 = 59;
}

mod views;
pub use views::{Esp, Icmp, Ipv4, Ipv6, Ipv6Frag, Tcp, Udp};

/// The NAT-T port (RFC 3948).
pub const NATT_PORT: u16 = 4500;
pub const IPV4_HDR: usize = 20;
pub const IPV6_HDR: usize = 40;
pub const UDP_HDR: usize = 8;

#[inline]
pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
#[inline]
pub fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
/// A hash of a packet's flow for ECMP: addresses and protocol, and for TCP / UDP the ports
/// (not for fragments, which carry none: a flow's fragments all hash alike). Never panics;
/// a packet too short for a field hashes without it.
#[inline]
pub fn flow_hash(p: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |b: &[u8]| {
        for x in b {
            h = (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= IPV4_HDR => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = be16(p, 6) & 0x3fff != 0;
            mix(&p[9..10]);
            mix(&p[12..20]);
            if !frag && matches!(p[9], proto::TCP | proto::UDP) && p.len() >= ihl + 4 {
                mix(&p[ihl..ihl + 4]);
            }
        }
        Some(6) if p.len() >= IPV6_HDR => {
            mix(&p[6..7]);
            mix(&p[8..40]);
            if matches!(p[6], proto::TCP | proto::UDP) && p.len() >= IPV6_HDR + 4 {
                mix(&p[IPV6_HDR..IPV6_HDR + 4]);
            }
        }
        _ => {}
    }
    (h ^ (h >> 32)) as u32
}

#[inline]
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

/// One's-complement sum of `data` added to `acc` (not folded).
pub fn csum_add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, o) = acc.overflowing_add(w);
        acc = s + o as u64;
    }
    let rem = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rem.len()].copy_from_slice(rem);
    let w = u64::from_be_bytes(tail);
    let (s, o) = acc.overflowing_add(w);
    s + o as u64
}

/// Folds a running sum into the final 16-bit one's-complement checksum.
pub fn csum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    csum_fold(csum_add(0, data))
}

/// Incremental checksum update for one 16-bit word changing from `old` to `new` (RFC 1624 eq. 3).
pub fn csum_update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut acc: u32 = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Pseudo-header sum for TCP/UDP/ICMPv6 over IPv4 or IPv6.
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let mut acc = csum_add(0, src);
    acc = csum_add(acc, dst);
    let mut tail = [0u8; 8];
    tail[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    tail[7] = proto;
    csum_add(acc, &tail)
}

/// A parsed view of an IP header (either family), enough for classification and fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpInfo {
    pub version: u8,
    /// Header length (IPv4 IHL*4, IPv6 40 plus the extension headers walked over).
    pub hdr_len: usize,
    /// Total length claimed by the header.
    pub total_len: usize,
    /// Upper-layer protocol (after IPv6 extension headers we understand).
    pub proto: u8,
    /// IPv4: fragment offset in bytes or more-fragments set; IPv6: a fragment header is present.
    pub is_fragment: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// Parses and checks an IPv4 or IPv6 header at the start of `pkt`. Returns `None` when the
/// buffer is shorter than the header claims, the version is unknown or fields are inconsistent.
/// The IPv4 header checksum is not verified here (see [`ipv4_header_ok`]).
#[inline(always)]
pub fn parse_ip(pkt: &[u8]) -> Option<IpInfo> {
    let v = *pkt.first()? >> 4;
    match v {
        4 => {
            let h = Ipv4::new(pkt)?;
            let (ihl, total) = (h.header_len(), usize::from(h.total_len()));
            if ihl < IPV4_HDR || total < ihl || total > pkt.len() {
                return None;
            }
            Some(IpInfo {
                version: 4,
                hdr_len: ihl,
                total_len: total,
                proto: h.protocol(),
                is_fragment: h.is_fragment(),
                src: IpAddr::V4(h.src()),
                dst: IpAddr::V4(h.dst()),
            })
        }
        6 => {
            let h = Ipv6::new(pkt)?;
            let total = IPV6_HDR + usize::from(h.payload_len());
            if total > pkt.len() {
                return None;
            }
            let (proto, hdr_len, is_fragment) = walk_ipv6_ext(pkt, total)?;
            Some(IpInfo {
                version: 6,
                hdr_len,
                total_len: total,
                proto,
                is_fragment,
                src: IpAddr::V6(h.src()),
                dst: IpAddr::V6(h.dst()),
            })
        }
        _ => None,
    }
}

/// Walks hop-by-hop, routing, destination-options and fragment headers. Returns the
/// upper-layer protocol, the offset where it starts and whether a fragment header was seen.
fn walk_ipv6_ext(pkt: &[u8], total: usize) -> Option<(u8, usize, bool)> {
    let mut nh = pkt[6];
    let mut off = IPV6_HDR;
    let mut frag = false;
    for _ in 0..8 {
        match nh {
            0 | 43 | 60 => {
                if off + 8 > total {
                    return None;
                }
                let len = (pkt[off + 1] as usize + 1) * 8;
                nh = pkt[off];
                off += len;
            }
            proto::IPV6_FRAG => {
                if off + 8 > total {
                    return None;
                }
                frag = true;
                nh = pkt[off];
                off += 8;
            }
            _ => break,
        }
    }
    if off > total {
        return None;
    }
    Some((nh, off, frag))
}

/// What [`decrement_ttl`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// TTL / hop limit lowered by one (IPv4 header checksum updated, RFC 1624).
    Forwarded,
    /// TTL / hop limit was 0 or 1: the packet may not be forwarded (RFC 1812 section 5.3.1,
    /// RFC 8200 section 3); left unchanged.
    Expired,
}

/// Lowers the TTL (IPv4) or hop limit (IPv6) of the packet at the start of `pkt`, as a
/// router forwarding it does. None when it is not a whole IP header.
pub fn decrement_ttl(pkt: &mut [u8]) -> Option<Hop> {
    match pkt.first()? >> 4 {
        4 => {
            let mut h = views::Ipv4::new(pkt)?;
            match h.ttl() {
                0 | 1 => Some(Hop::Expired),
                ttl => {
                    h.set_ttl(ttl - 1);
                    Some(Hop::Forwarded)
                }
            }
        }
        6 => {
            let mut h = views::Ipv6::new(pkt)?;
            match h.hop_limit() {
                0 | 1 => Some(Hop::Expired),
                hop => {
                    h.set_hop_limit(hop - 1);
                    Some(Hop::Forwarded)
                }
            }
        }
        _ => None,
    }
}

/// True when the IPv4 header checksum of `pkt` verifies.
pub fn ipv4_header_ok(pkt: &[u8]) -> bool {
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    pkt.len() >= ihl && checksum(&pkt[..ihl]) == 0
}

/// Recomputes the IPv4 header checksum in place (header length from IHL).
#[inline]
pub fn ipv4_fix_checksum(hdr: &mut [u8]) {
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    hdr[10] = 0;
    hdr[11] = 0;
    let c = match hdr.first_chunk::<IPV4_HDR>() {
        Some(h) if ihl == IPV4_HDR => {
            // The common 20-byte header: ten 16-bit words summed in a u32 (no carry handling
            // needed until the fold: 10 * 0xffff < 2^32); a fixed-size array lets the
            // compiler drop the bounds checks and unroll.
            let mut acc = 0u32;
            for w in h.chunks_exact(2) {
                acc += u16::from_be_bytes([w[0], w[1]]) as u32;
            }
            acc = (acc & 0xffff) + (acc >> 16);
            acc = (acc & 0xffff) + (acc >> 16);
            !(acc as u16)
        }
        _ => checksum(&hdr[..ihl]),
    };
    put16(hdr, 10, c);
}

/// Writes a 20-byte IPv4 header (no options) into `h`, checksum included.
///
/// The checksum is summed from the field values, not read back from `h`: reading bytes
/// just written one by one stalls the CPU's store-to-load forwarding (it showed up as 10%
/// of the 64-byte encrypt path), and the header is written with one 20-byte copy.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn write_ipv4_header(
    h: &mut [u8],
    total_len: u16,
    id: u16,
    df: bool,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let flags: u16 = if df { 0x4000 } else { 0 };
    let (s, d) = (u32::from(src), u32::from(dst));
    let mut acc: u32 = 0x4500
        + u32::from(total_len)
        + u32::from(id)
        + u32::from(flags)
        + ((u32::from(ttl) << 8) | u32::from(proto))
        + (s >> 16)
        + (s & 0xffff)
        + (d >> 16)
        + (d & 0xffff);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    let c = !(acc as u16);
    let mut b = [0u8; IPV4_HDR];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&total_len.to_be_bytes());
    b[4..6].copy_from_slice(&id.to_be_bytes());
    b[6..8].copy_from_slice(&flags.to_be_bytes());
    b[8] = ttl;
    b[9] = proto;
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    h[..IPV4_HDR].copy_from_slice(&b);
}

/// Writes a 40-byte IPv6 header into `h`.
pub fn write_ipv6_header(
    h: &mut [u8],
    payload_len: u16,
    next: u8,
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    h[0] = 0x60;
    h[1] = 0;
    h[2] = 0;
    h[3] = 0;
    put16(h, 4, payload_len);
    h[6] = next;
    h[7] = hop;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// Writes an 8-byte UDP header with a zero checksum (allowed for UDP-encapsulated ESP over
/// IPv4, RFC 3948 section 2.1; over IPv6 the caller must fill it, see [`udp6_fix_checksum`]).
pub fn write_udp_header(h: &mut [u8], sport: u16, dport: u16, len: u16) {
    put16(h, 0, sport);
    put16(h, 2, dport);
    put16(h, 4, len);
    put16(h, 6, 0);
}

/// Computes the UDP checksum of an IPv6 packet whose UDP header starts at `udp_off`.
pub fn udp6_fix_checksum(pkt: &mut [u8], udp_off: usize) {
    let len = pkt.len() - udp_off;
    pkt[udp_off + 6] = 0;
    pkt[udp_off + 7] = 0;
    let acc = pseudo_sum(&pkt[8..24], &pkt[24..40], proto::UDP, len);
    let mut c = csum_fold(csum_add(acc, &pkt[udp_off..]));
    if c == 0 {
        c = 0xffff;
    }
    put16(pkt, udp_off + 6, c);
}

/// Result of MSS clamping on one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MssClamp {
    /// Not a TCP SYN (or SYN-ACK) with an MSS option, or a non-first fragment.
    NotApplicable,
    /// The MSS was already at or below the limit.
    Unchanged,
    /// The MSS option was lowered from the first value to the second.
    Clamped(u16, u16),
}

/// Clamps the MSS option of an IPv4/IPv6 TCP SYN or SYN-ACK to `max_mss`, fixing the TCP
/// checksum incrementally (RFC 1624). Never raises a lower MSS. Malformed options are left
/// alone.
pub fn clamp_mss(pkt: &mut [u8], max_mss: u16) -> MssClamp {
    let Some(ip) = parse_ip(pkt) else {
        return MssClamp::NotApplicable;
    };
    if ip.proto != proto::TCP || ip.is_fragment {
        return MssClamp::NotApplicable;
    }
    let Some(mut tcp) = views::Tcp::new(&mut pkt[ip.hdr_len..ip.total_len]) else {
        return MssClamp::NotApplicable;
    };
    let hlen = tcp.header_len();
    if tcp.flags() & views::TCP_SYN == 0
        || hlen < views::TCP_HDR
        || hlen > ip.total_len - ip.hdr_len
    {
        return MssClamp::NotApplicable;
    }
    // MSS: kind 2, length 4 (RFC 9293 section 3.2).
    let Some((at, old)) = tcp
        .options()
        .find_map(|(at, kind, v)| (kind == 2 && v.len() == 2).then(|| (at, be16(v, 0))))
    else {
        return MssClamp::NotApplicable;
    };
    if old <= max_mss {
        return MssClamp::Unchanged;
    }
    tcp.set_u16_at(at + 2, max_mss);
    let c = csum_update16(tcp.checksum(), old, max_mss);
    tcp.set_checksum(c);
    MssClamp::Clamped(old, max_mss)
}

/// What [`complete_checksum`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Not a whole TCP or UDP packet, an IPv4 UDP packet without a checksum, or a checksum
    /// that is not a partial one (valid, or wrong: left for the receiver to judge).
    Untouched,
    /// The field held the folded pseudo-header sum and the packet did not verify: the
    /// checksum was finished.
    Completed,
}

/// Finishes a TCP or UDP checksum a sender left for the NIC to fill in (Linux
/// `CHECKSUM_PARTIAL`, what veth and tap hand over: the field holds the folded
/// pseudo-header sum, not complemented; RFC 1071 arithmetic). Only such a field is
/// touched, and only when the packet does not verify already; any other checksum, right or
/// wrong, is left alone, so a packet corrupted on the wire is not made to look good.
pub fn complete_checksum(pkt: &mut [u8]) -> Completion {
    let Some(ip) = parse_ip(pkt) else {
        return Completion::Untouched;
    };
    let field = match ip.proto {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => return Completion::Untouched,
    };
    let l4_len = ip.total_len - ip.hdr_len;
    if ip.is_fragment || l4_len < field + 2 || pkt.len() < ip.total_len {
        return Completion::Untouched;
    }
    let (s, d) = match ip.version {
        4 => (12..16, 16..20),
        _ => (8..24, 24..40),
    };
    let pseudo = pseudo_sum(&pkt[s], &pkt[d], ip.proto, l4_len);
    let l4 = &mut pkt[ip.hdr_len..ip.total_len];
    let have = be16(l4, field);
    // The folded pseudo-header sum, in ones' complement (0 and 0xffff are the same value).
    let norm = |v: u16| if v == 0xffff { 0 } else { v };
    if (ip.proto == proto::UDP && ip.version == 4 && have == 0)
        || norm(have) != norm(!csum_fold(pseudo))
        || csum_fold(csum_add(pseudo, l4)) == 0
    {
        return Completion::Untouched;
    }
    // The field already carries the pseudo-header: sum the segment as it is.
    let mut c = csum_fold(csum_add(0, l4));
    if ip.proto == proto::UDP && c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    put16(l4, field, c);
    Completion::Completed
}

/// Computes the TCP or UDP checksum of a (non-fragmented) IPv4/IPv6 packet from scratch and
/// returns whether it verifies. Used by tests and by the reassembly path's sanity checks.
pub fn l4_checksum_ok(pkt: &[u8]) -> bool {
    let Some(ip) = parse_ip(pkt) else {
        return false;
    };
    let l4 = &pkt[ip.hdr_len..ip.total_len];
    let (s, d): (&[u8], &[u8]) = if ip.version == 4 {
        (&pkt[12..16], &pkt[16..20])
    } else {
        (&pkt[8..24], &pkt[24..40])
    };
    let acc = pseudo_sum(s, d, ip.proto, l4.len());
    csum_fold(csum_add(acc, l4)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment whose checksum field holds the folded pseudo-header sum (as veth hands
    /// over CHECKSUM_PARTIAL packets) gets the checksum its sender would have computed; a
    /// valid or a corrupted checksum is left alone, IPv4 and IPv6, TCP and UDP.
    #[test]
    fn partial_checksums_are_completed_and_others_left_alone() {
        let v4 = crate::testkit::tcp_syn4(1460);
        let mut udp6 = vec![0u8; 40 + 8 + 33];
        write_ipv6_header(
            &mut udp6,
            41,
            proto::UDP,
            64,
            "fd00:1::2".parse().unwrap(),
            "fd00:2::2".parse().unwrap(),
        );
        put16(&mut udp6, 40, 5000);
        put16(&mut udp6, 42, 53);
        put16(&mut udp6, 44, 41);
        for (i, b) in udp6[48..].iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        udp6_fix_checksum(&mut udp6, 40);
        for (good, l4, field) in [(v4, 20, 16), (udp6, 40, 6)] {
            assert!(l4_checksum_ok(&good));
            let mut p = good.clone();
            assert_eq!(complete_checksum(&mut p), Completion::Untouched);
            assert_eq!(p, good, "a valid checksum is left alone");
            let ip = parse_ip(&p).unwrap();
            let (s, d) = if ip.version == 4 {
                (12..16, 16..20)
            } else {
                (8..24, 24..40)
            };
            let partial = !csum_fold(pseudo_sum(&p[s], &p[d], ip.proto, p.len() - l4));
            put16(&mut p, l4 + field, partial);
            assert!(!l4_checksum_ok(&p));
            assert_eq!(complete_checksum(&mut p), Completion::Completed);
            assert_eq!(p, good, "completed to what the sender would have sent");
            let mut bad = good.clone();
            put16(&mut bad, l4 + field, partial ^ 0x0100);
            let before = bad.clone();
            assert_eq!(complete_checksum(&mut bad), Completion::Untouched);
            assert_eq!(bad, before, "a corrupted checksum is not made good");
        }
        let mut short = crate::testkit::tcp_syn4(1460);
        short.truncate(30);
        assert_eq!(complete_checksum(&mut short), Completion::Untouched);
    }

    #[test]
    fn mss_clamp_needs_a_syn_and_a_data_offset_inside_the_packet() {
        let syn = crate::testkit::tcp_syn4(1460);
        let mut p = syn.clone();
        assert_eq!(clamp_mss(&mut p, 1360), MssClamp::Clamped(1460, 1360));
        assert!(l4_checksum_ok(&p));
        assert_eq!(clamp_mss(&mut p, 1400), MssClamp::Unchanged);
        let mut ack = syn.clone();
        ack[33] = 0x10;
        assert_eq!(clamp_mss(&mut ack, 1360), MssClamp::NotApplicable);
        let mut long = syn.clone();
        long[32] = 7 << 4; // 28 bytes of TCP header in a 24-byte segment
        let before = long.clone();
        assert_eq!(clamp_mss(&mut long, 1360), MssClamp::NotApplicable);
        assert_eq!(long, before);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 -> ~ = 0x220d.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&d), !0xddf2);
    }

    /// The checksum summed from the field values equals RFC 1071 over the written bytes,
    /// for extreme and pseudo-random fields (the fold runs twice for all-ones addresses).
    #[test]
    fn ipv4_header_checksum_from_fields_equals_the_sum_over_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases = vec![
            (0xffff, 0xffff, true, 255, 255, u32::MAX, u32::MAX),
            (20, 0, false, 0, 0, 0, 0),
        ];
        for _ in 0..2000 {
            let r = next();
            cases.push((
                r as u16,
                (r >> 16) as u16,
                r & 1 == 0,
                (r >> 32) as u8,
                (r >> 40) as u8,
                next() as u32,
                next() as u32,
            ));
        }
        for (len, id, df, ttl, p, src, dst) in cases {
            let mut h = [0xaau8; 24];
            write_ipv4_header(&mut h, len, id, df, ttl, p, src.into(), dst.into());
            assert_eq!(
                checksum(&h[..20]),
                0,
                "{len} {id} {df} {ttl} {p} {src:x} {dst:x}"
            );
            assert_eq!(h[20..], [0xaa; 4], "nothing written past the header");
            let v = Ipv4::new(&h[..]).unwrap();
            assert_eq!(
                (
                    v.total_len(),
                    v.ident(),
                    v.dont_frag(),
                    v.ttl(),
                    v.protocol()
                ),
                (len, id, df, ttl, p)
            );
            assert_eq!((u32::from(v.src()), u32::from(v.dst())), (src, dst));
        }
    }

    #[test]
    fn incremental_matches_full() {
        let mut h = [0u8; 20];
        write_ipv4_header(
            &mut h,
            100,
            7,
            true,
            64,
            6,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        assert!(ipv4_header_ok(&h));
        let c = be16(&h, 10);
        let old = be16(&h, 2);
        put16(&mut h, 2, 1400);
        let inc = csum_update16(c, old, 1400);
        ipv4_fix_checksum(&mut h);
        assert_eq!(inc, be16(&h, 10));
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_right() {
        // Every TTL and a spread of headers: the incremental update equals a recomputation.
        for ttl in 0..=255u8 {
            for (id, proto) in [(0u16, 1u8), (0xffff, 6), (0x1234, 17), (0xfeff, 50)] {
                let mut h = [0u8; 20];
                let src = Ipv4Addr::new(10, ttl, 0, 1);
                let dst = Ipv4Addr::new(192, 0, 2, ttl);
                write_ipv4_header(&mut h, 84, id, id & 1 == 0, ttl, proto, src, dst);
                let r = decrement_ttl(&mut h).unwrap();
                if ttl <= 1 {
                    assert_eq!(r, Hop::Expired);
                    assert_eq!(h[8], ttl, "left unchanged");
                } else {
                    assert_eq!((r, h[8]), (Hop::Forwarded, ttl - 1));
                    let inc = be16(&h, 10);
                    ipv4_fix_checksum(&mut h);
                    assert_eq!(inc, be16(&h, 10), "ttl {ttl} id {id:#x}");
                    assert!(ipv4_header_ok(&h));
                }
            }
        }
        let mut v6 = [0u8; 40];
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        write_ipv6_header(&mut v6, 0, 59, 2, a, a);
        assert_eq!(decrement_ttl(&mut v6), Some(Hop::Forwarded));
        assert_eq!(v6[7], 1);
        assert_eq!(decrement_ttl(&mut v6), Some(Hop::Expired));
        assert_eq!(decrement_ttl(&mut [0x45; 19]), None);
        assert_eq!(decrement_ttl(&mut [0x20; 40]), None);
        assert_eq!(decrement_ttl(&mut []), None);
    }

    /// Headers whose lengths claim more than the buffer holds (or that are too short to
    /// be headers) are refused; a well-formed header of the same shape parses (the control).
    #[test]
    fn parse_rejects_garbage() {
        for len in 0..64 {
            assert!(parse_ip(&vec![0x45u8; len]).is_none(), "IPv4, {len} bytes");
            assert!(parse_ip(&vec![0x60u8; len]).is_none(), "IPv6, {len} bytes");
        }
        let mut ok = vec![0u8; 40];
        write_ipv4_header(
            &mut ok,
            40,
            1,
            false,
            64,
            17,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        );
        assert!(parse_ip(&ok).is_some());
    }
}
