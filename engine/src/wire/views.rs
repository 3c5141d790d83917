//! Typed, checked views of the headers the data plane reads and writes (smoltcp style): a
//! view wraps a byte buffer whose length was checked once, at construction, against the
//! fixed header it describes; its accessors then name fields instead of offsets and cannot
//! go out of bounds. `T` is `&[u8]` to read and `&mut [u8]` to write.
//!
//! Contract: `new` returns `None` when the buffer is shorter than the fixed header. It does
//! not check the version or any other field, so a view can be laid over a zeroed buffer to
//! write a header into it; [`super::parse_ip`] is what validates a received packet. No
//! accessor panics, whatever the bytes say (an IPv4 IHL beyond the buffer is clamped).

use super::{IPV4_HDR, IPV6_HDR, UDP_HDR, checksum, csum_add, csum_fold};

/// The fixed TCP header.
pub const TCP_HDR: usize = 20;
use std::net::{Ipv4Addr, Ipv6Addr};

#[inline]
fn get16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
#[inline]
fn set16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}

/// IPv4 header flags: don't fragment and more fragments (RFC 791 section 3.1).
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;

/// An IPv4 header (RFC 791 section 3.1).
#[derive(Debug)]
pub struct Ipv4<T>(T);

impl<T: AsRef<[u8]>> Ipv4<T> {
    /// A view over `b` (at least the 20-byte fixed header).
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= IPV4_HDR).then_some(Ipv4(b))
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    /// Header length in bytes as the IHL says (IHL * 4; 20..=60 in a valid header).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0x0f) * 4
    }
    #[inline]
    pub fn total_len(&self) -> u16 {
        get16(self.b(), 2)
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        get16(self.b(), 4)
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        get16(self.b(), 6) & DF != 0
    }
    #[inline]
    pub fn more_frags(&self) -> bool {
        get16(self.b(), 6) & MF != 0
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        usize::from(get16(self.b(), 6) & 0x1fff) * 8
    }
    /// A fragment: an offset or more fragments to come.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get16(self.b(), 6) & (MF | 0x1fff) != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[9]
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// The header's bytes (IHL * 4, within 20 and the buffer's length).
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len().clamp(IPV4_HDR, self.b().len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.0.as_mut()
    }
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        set16(self.m(), 2, v)
    }
    /// Sets the fragment field: DF cleared, MF as given, offset in bytes (a multiple of 8).
    #[inline]
    pub fn set_frag(&mut self, more: bool, offset: usize) {
        let v = ((offset / 8) as u16 & 0x1fff) | if more { MF } else { 0 };
        set16(self.m(), 6, v)
    }
    /// Sets the TTL, updating the header checksum incrementally
    /// (RFC 1624; the TTL shares its 16-bit word with the protocol).
    #[inline]
    pub fn set_ttl(&mut self, new: u8) {
        let word = get16(self.b(), 8);
        let m = self.m();
        m[8] = new;
        let c = super::csum_update16(get16(m, 10), word, get16(m, 8));
        set16(m, 10, c);
    }
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        self.m()[0] = 0x40 | (len / 4) as u8;
    }
    /// Recomputes the header checksum (RFC 1071) over the header length.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let (ihl, len) = (self.header_len(), self.b().len());
        if (IPV4_HDR..=len).contains(&ihl) {
            super::ipv4_fix_checksum(&mut self.m()[..ihl]);
        } else {
            // An inconsistent IHL: the sum over the bytes there are (never a panic).
            let n = ihl.clamp(IPV4_HDR, len);
            let m = self.m();
            m[10] = 0;
            m[11] = 0;
            let c = checksum(&m[..n]);
            set16(m, 10, c);
        }
    }
}

/// An IPv6 fixed header (RFC 8200 section 3).
#[derive(Debug)]
pub struct Ipv6<T>(T);

impl<T: AsRef<[u8]>> Ipv6<T> {
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= IPV6_HDR).then_some(Ipv6(b))
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.0.as_ref()
    }
    #[inline]
    pub fn payload_len(&self) -> u16 {
        get16(self.b(), 4)
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[6]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[7]
    }
    /// The source and destination addresses as they are on the wire (for checksums).
    #[inline]
    pub fn addr_bytes(&self) -> (&[u8], &[u8]) {
        (&self.b()[8..24], &self.b()[24..40])
    }
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.b()[8..24].try_into().unwrap_or([0; 16]);
        Ipv6Addr::from(a)
    }
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        let a: [u8; 16] = self.b()[24..40].try_into().unwrap_or([0; 16]);
        Ipv6Addr::from(a)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6<T> {
    #[inline]
    pub fn set_hop_limit(&mut self, v: u8) {
        self.0.as_mut()[7] = v;
    }
    #[inline]
    pub fn set_payload_len(&mut self, v: u16) {
        set16(self.0.as_mut(), 4, v)
    }
}

/// An IPv6 fragment extension header (RFC 8200 section 4.5).
#[derive(Debug)]
pub struct Ipv6Frag<T>(T);

impl<T: AsRef<[u8]>> Ipv6Frag<T> {
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= 8).then_some(Ipv6Frag(b))
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.0.as_ref()[0]
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn offset(&self) -> usize {
        usize::from(get16(self.0.as_ref(), 2) & 0xfff8)
    }
    #[inline]
    pub fn more(&self) -> bool {
        get16(self.0.as_ref(), 2) & 1 != 0
    }
    #[inline]
    pub fn ident(&self) -> u32 {
        let b = self.0.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
}

/// A UDP header (RFC 768).
#[derive(Debug)]
pub struct Udp<T>(T);

impl<T: AsRef<[u8]>> Udp<T> {
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= UDP_HDR).then_some(Udp(b))
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        get16(self.0.as_ref(), 0)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        get16(self.0.as_ref(), 2)
    }
    /// Length of header and data, as the header claims it.
    #[inline]
    pub fn len(&self) -> u16 {
        get16(self.0.as_ref(), 4)
    }
    /// Never: a view holds at least a header (for clippy's `len_without_is_empty`).
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A TCP header (RFC 9293 section 3.1): the fixed 20 bytes, and the options up to the data
/// offset when the buffer holds them.
#[derive(Debug)]
pub struct Tcp<T>(T);

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;

impl<T: AsRef<[u8]>> Tcp<T> {
    /// A view over `b` (at least the 20-byte fixed header).
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= TCP_HDR).then_some(Tcp(b))
    }
    #[inline]
    pub fn flags(&self) -> u8 {
        self.0.as_ref()[13]
    }
    /// Header length in bytes as the data offset says (20..=60 in a valid header).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.0.as_ref()[12] >> 4) * 4
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        get16(self.0.as_ref(), 16)
    }
    /// The options: (offset of the option's kind byte, kind, its bytes after kind and
    /// length). Stops at end-of-list, and at the first option that runs past the header
    /// (malformed options end the walk; they never panic).
    pub fn options(&self) -> impl Iterator<Item = (usize, u8, &[u8])> {
        let b = self.0.as_ref();
        let end = self.header_len().min(b.len());
        let mut o = TCP_HDR;
        std::iter::from_fn(move || {
            while o < end {
                match b[o] {
                    0 => return None,
                    1 => o += 1,
                    kind => {
                        let len = usize::from(*b.get(o + 1)?);
                        if len < 2 || o + len > end {
                            return None;
                        }
                        let at = o;
                        o += len;
                        return Some((at, kind, &b[at + 2..at + len]));
                    }
                }
            }
            None
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tcp<T> {
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set16(self.0.as_mut(), 16, v)
    }
    /// Writes a 16-bit value at `at` within the header (an option's field).
    #[inline]
    pub fn set_u16_at(&mut self, at: usize, v: u16) {
        set16(self.0.as_mut(), at, v)
    }
}

/// The ESP header (RFC 4303 section 2): SPI and sequence number.
#[derive(Debug)]
pub struct Esp<T>(T);

impl<T: AsRef<[u8]>> Esp<T> {
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= 8).then_some(Esp(b))
    }
    #[inline]
    pub fn spi(&self) -> u32 {
        let b = self.0.as_ref();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline]
    pub fn seq(&self) -> u32 {
        let b = self.0.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Esp<T> {
    /// Writes the SPI and the low 32 bits of the sequence number.
    #[inline]
    pub fn set_header(&mut self, spi: u32, seq: u32) {
        let b = self.0.as_mut();
        b[0..4].copy_from_slice(&spi.to_be_bytes());
        b[4..8].copy_from_slice(&seq.to_be_bytes());
    }
}

/// An ICMP or ICMPv6 message header: type, code, checksum and the 32-bit word after them
/// (RFC 792, RFC 4443 section 2.1).
#[derive(Debug)]
pub struct Icmp<T>(T);

impl<T: AsRef<[u8]>> Icmp<T> {
    #[inline]
    pub fn new(b: T) -> Option<Self> {
        (b.as_ref().len() >= 8).then_some(Icmp(b))
    }
    #[inline]
    pub fn kind(&self) -> u8 {
        self.0.as_ref()[0]
    }
    #[inline]
    pub fn code(&self) -> u8 {
        self.0.as_ref()[1]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmp<T> {
    /// Writes type, code, a zero checksum and the word after them.
    #[inline]
    pub fn set_header(&mut self, kind: u8, code: u8, word: u32) {
        let b = self.0.as_mut();
        b[0] = kind;
        b[1] = code;
        b[2] = 0;
        b[3] = 0;
        b[4..8].copy_from_slice(&word.to_be_bytes());
    }
    /// ICMP (IPv4): the checksum over the whole message.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let c = checksum(self.0.as_ref());
        set16(self.0.as_mut(), 2, c);
    }
    /// ICMPv6: the checksum over the pseudo-header sum `pseudo` and the whole message.
    #[inline]
    pub fn fill_checksum_v6(&mut self, pseudo: u64) {
        let c = csum_fold(csum_add(pseudo, self.0.as_ref()));
        set16(self.0.as_mut(), 2, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN's options as Linux sends them (MSS, SACK permitted, timestamps, NOP, window
    /// scale) are walked in order; malformed lengths end the walk without a panic.
    #[test]
    fn tcp_options_walk_stops_at_malformed_ones() {
        let mut h = vec![0u8; 40];
        h[12] = 10 << 4;
        h[13] = TCP_SYN;
        h[20..40].copy_from_slice(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
        let t = Tcp::new(&h[..]).unwrap();
        let kinds: Vec<(usize, u8, usize)> =
            t.options().map(|(at, k, v)| (at, k, v.len())).collect();
        assert_eq!(kinds, [(20, 2, 2), (24, 4, 0), (26, 8, 8), (37, 3, 1)]);
        let walk = |b: &[u8]| -> Vec<u8> { Tcp::new(b).unwrap().options().map(|o| o.1).collect() };
        let mut b = h.clone();
        b[25] = 0; // SACK permitted with length 0
        assert_eq!(walk(&b), [2]);
        b[25] = 40; // ... with a length past the header
        assert_eq!(walk(&b), [2]);
        b[12] = 6 << 4; // a 24-byte header ending in NOPs and a kind with no length byte
        b[20..24].copy_from_slice(&[1, 1, 1, 9]);
        assert_eq!(walk(&b), [0u8; 0]);
        b[20] = 0; // end of list first
        b[21..24].copy_from_slice(&[2, 4, 5]);
        assert_eq!(walk(&b), [0u8; 0]);
        // A data offset past the buffer: only the bytes there are walked.
        let t = Tcp::new(&h[..30]).unwrap();
        assert_eq!(t.options().count(), 2);
        let mut short = h.clone();
        short[12] = 4 << 4;
        assert_eq!(Tcp::new(&short[..]).unwrap().options().count(), 0);
        assert!(Tcp::new(&h[..19]).is_none());
    }

    #[test]
    fn short_buffers_have_no_view() {
        assert!(Ipv4::new(&[0x45u8; 19][..]).is_none());
        // IHL 15 claims 60 bytes of 40: clamped, no panic.
        let mut b = [0u8; 40];
        b[0] = 0x4f;
        assert_eq!(Ipv4::new(&b[..]).unwrap().header().len(), 40);
        Ipv4::new(&mut b[..]).unwrap().fill_checksum();
        assert_eq!(checksum(&b), 0);
        b[0] = 0x41;
        Ipv4::new(&mut b[..]).unwrap().fill_checksum();
        assert_eq!(checksum(&b[..20]), 0);
        assert!(Ipv6::new(&[0u8; 39][..]).is_none());
        assert!(Ipv6Frag::new(&[0u8; 7][..]).is_none());
        assert!(Udp::new(&[0u8; 7][..]).is_none());
        assert!(Esp::new(&[0u8; 7][..]).is_none());
        assert!(Icmp::new(&[0u8; 7][..]).is_none());
    }

    /// Fields written through a view read back through a view, at RFC 791's offsets.
    #[test]
    fn ipv4_fields() {
        let mut b = [0u8; 24];
        let mut ip = Ipv4::new(&mut b[..]).unwrap();
        ip.set_header_len(24);
        ip.set_total_len(24);
        ip.set_frag(true, 1480);
        ip.fill_checksum();
        assert_eq!(b[0], 0x46);
        assert_eq!(&b[2..4], &[0, 24]);
        assert_eq!(u16::from_be_bytes([b[6], b[7]]), 0x2000 | 185);
        assert_eq!(checksum(&b[..24]), 0);
        let ip = Ipv4::new(&b[..]).unwrap();
        assert_eq!((ip.header_len(), ip.frag_offset()), (24, 1480));
        assert!(ip.more_frags() && ip.is_fragment() && !ip.dont_frag());
    }

    #[test]
    fn icmp_checksums() {
        let mut m = [0u8; 12];
        let mut i = Icmp::new(&mut m[..]).unwrap();
        i.set_header(3, 4, 1400);
        i.fill_checksum();
        assert_eq!(checksum(&m), 0);
        assert_eq!((m[0], m[1], &m[4..8]), (3, 4, &1400u32.to_be_bytes()[..]));
    }
}
