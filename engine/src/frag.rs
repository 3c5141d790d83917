//! Fragmentation of inner IPv4 packets *before* encryption (RFC 4459 section 3; the AWS rule
//! of shared/spec/mtu.md section 4.1), ICMP errors for packets that may not be fragmented,
//! and bounded reassembly of IPv4 and IPv6 fragments (inner after decryption, outer before).
//!
//! Contract (sans-IO): `now` is passed in (seconds as `f64` or any monotonic unit the caller
//! chooses, consistently); memory is bounded by [`ReasmLimits`]; every fragment that does not
//! end up in a datagram is returned as a [`DropReason`] or counted by [`Reassembler::expire`].

use crate::counters::DropReason;
use crate::pkt::{BufPool, PacketBuf};
use crate::wire::{self, IPV4_HDR, IPV6_HDR, Icmp, Ipv4, Ipv6, Ipv6Frag, proto};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Splits an IPv4 packet into fragments of at most `mtu` bytes (RFC 791 section 3.2), each
/// in a buffer from `pool`, appended to `out`. DF is cleared in the fragments. Options are
/// kept in the first fragment and only those with the copy flag in the others. Returns the
/// number of fragments.
pub fn fragment_ipv4(
    pkt: &[u8],
    mtu: usize,
    pool: &mut BufPool,
    out: &mut Vec<PacketBuf>,
) -> Result<usize, DropReason> {
    let ip = wire::parse_ip(pkt).ok_or(DropReason::Malformed)?;
    if ip.version != 4 {
        return Err(DropReason::NotIp);
    }
    let hl = ip.hdr_len;
    let payload = &pkt[hl..ip.total_len];
    let hdr = Ipv4::new(pkt).ok_or(DropReason::Malformed)?;
    let (orig_off, orig_mf) = (hdr.frag_offset(), hdr.more_frags());
    // Options copied into later fragments (copy flag = bit 7 of the type).
    let mut copied = [0u8; 40];
    let mut clen = 0;
    let opts = &pkt[IPV4_HDR..hl];
    let mut o = 0;
    while o < opts.len() {
        let t = opts[o];
        if t == 0 {
            break;
        }
        if t == 1 {
            o += 1;
            continue;
        }
        if o + 1 >= opts.len() {
            break;
        }
        let l = opts[o + 1] as usize;
        if l < 2 || o + l > opts.len() {
            return Err(DropReason::Malformed);
        }
        if t & 0x80 != 0 {
            copied[clen..clen + l].copy_from_slice(&opts[o..o + l]);
            clen += l;
        }
        o += l;
    }
    let later_hl = IPV4_HDR + clen.div_ceil(4) * 4;
    if mtu < hl + 8 || mtu < later_hl + 8 {
        return Err(DropReason::TooBig);
    }
    let mut off = 0usize;
    let mut n = 0;
    while off < payload.len() {
        let h = if off == 0 { hl } else { later_hl };
        let room = (mtu - h) / 8 * 8;
        let take = room.min(payload.len() - off);
        let last = off + take == payload.len();
        let mut b = pool.get();
        let f = b.push_back(h + take).ok_or(DropReason::TooBig)?;
        if off == 0 {
            f[..hl].copy_from_slice(&pkt[..hl]);
        } else {
            f[..IPV4_HDR].copy_from_slice(&pkt[..IPV4_HDR]);
            f[IPV4_HDR..IPV4_HDR + clen].copy_from_slice(&copied[..clen]);
            for x in &mut f[IPV4_HDR + clen..h] {
                *x = 0; // end-of-options padding
            }
        }
        f[h..].copy_from_slice(&payload[off..off + take]);
        let mut v = Ipv4::new(&mut *f).ok_or(DropReason::TooBig)?;
        v.set_header_len(h);
        v.set_total_len((h + take) as u16);
        v.set_frag(!last || orig_mf, orig_off + off); // DF cleared
        v.fill_checksum();
        out.push(b);
        n += 1;
        off += take;
    }
    Ok(n)
}

/// ICMP error rate limiter: a token bucket refilled per unit of `now`.
#[derive(Clone, Debug)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: f64,
}

impl RateLimit {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimit {
            tokens: burst,
            burst,
            per_sec,
            last: f64::NEG_INFINITY,
        }
    }
    pub fn allow(&mut self, now: f64) -> bool {
        if self.last.is_finite() {
            self.tokens = (self.tokens + (now - self.last).max(0.0) * self.per_sec).min(self.burst);
        }
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether an ICMP error may be sent about `orig` (RFC 1812 section 4.3.2.7, RFC 4443
/// section 2.4 (e)): never about an ICMP error message, a non-first fragment, or a packet
/// from or to a multicast / broadcast / unspecified address.
fn may_answer(orig: &[u8], ip: &wire::IpInfo) -> bool {
    let no_addr = |a: IpAddr| match a {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    };
    if no_addr(ip.src) || no_addr(ip.dst) {
        return false;
    }
    if ip.version == 4 {
        if Ipv4::new(orig).is_some_and(|h| h.frag_offset() != 0) {
            return false;
        }
        // ICMP errors: destination unreachable, source quench, redirect, time exceeded,
        // parameter problem.
        !(ip.proto == proto::ICMP && matches!(orig.get(ip.hdr_len), Some(3 | 4 | 5 | 11 | 12)))
    } else {
        // ICMPv6 types below 128 are errors.
        !(ip.proto == proto::ICMPV6 && orig.get(ip.hdr_len).is_some_and(|t| *t < 128))
    }
}

/// An ICMPv4 error (`kind`, `code`, the 4 bytes after the checksum) from `src` to the
/// original sender, quoting the original header and 8 bytes of its payload (RFC 792).
fn icmpv4_error(
    orig: &[u8],
    kind: u8,
    code: u8,
    word: u32,
    src: Ipv4Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    let ip = wire::parse_ip(orig).ok_or(DropReason::Malformed)?;
    let IpAddr::V4(dst) = ip.src else {
        return Err(DropReason::NotIp);
    };
    if !may_answer(orig, &ip) {
        return Err(DropReason::NotIp);
    }
    let quote = (ip.hdr_len + 8).min(orig.len());
    let total = IPV4_HDR + 8 + quote;
    out.clear();
    let b = out.push_back(total).ok_or(DropReason::TooBig)?;
    wire::write_ipv4_header(b, total as u16, 0, false, 64, proto::ICMP, src, dst);
    b[IPV4_HDR + 8..].copy_from_slice(&orig[..quote]);
    let mut icmp = Icmp::new(&mut b[IPV4_HDR..]).ok_or(DropReason::TooBig)?;
    icmp.set_header(kind, code, word);
    icmp.fill_checksum();
    Ok(())
}

/// An ICMPv6 error (`kind`, `code`, the 4 bytes after the checksum) from `src` to the
/// original sender, quoting as much of the original as fits in the IPv6 minimum MTU
/// (RFC 4443 section 2.4 (c)).
fn icmpv6_error(
    orig: &[u8],
    kind: u8,
    code: u8,
    word: u32,
    src: Ipv6Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    let ip = wire::parse_ip(orig).ok_or(DropReason::Malformed)?;
    let IpAddr::V6(dst) = ip.src else {
        return Err(DropReason::NotIp);
    };
    if !may_answer(orig, &ip) {
        return Err(DropReason::NotIp);
    }
    let quote = orig.len().min(1280 - IPV6_HDR - 8);
    let total = IPV6_HDR + 8 + quote;
    out.clear();
    let b = out.push_back(total).ok_or(DropReason::TooBig)?;
    wire::write_ipv6_header(b, (8 + quote) as u16, proto::ICMPV6, 64, src, dst);
    b[IPV6_HDR + 8..].copy_from_slice(&orig[..quote]);
    let pseudo = {
        let v6 = Ipv6::new(&*b).ok_or(DropReason::TooBig)?;
        let (s, d) = v6.addr_bytes();
        wire::pseudo_sum(s, d, proto::ICMPV6, 8 + quote)
    };
    let mut icmp = Icmp::new(&mut b[IPV6_HDR..]).ok_or(DropReason::TooBig)?;
    icmp.set_header(kind, code, word);
    icmp.fill_checksum_v6(pseudo);
    Ok(())
}

/// Builds ICMPv4 Destination Unreachable / Fragmentation Needed (type 3 code 4, RFC 1191
/// section 4) with next-hop MTU `mtu`, quoting the original header and 8 bytes, from `src`
/// to the original sender.
pub fn icmpv4_frag_needed(
    orig: &[u8],
    mtu: u16,
    src: Ipv4Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    icmpv4_error(orig, 3, 4, u32::from(mtu), src, out)
}

/// Builds ICMPv6 Packet Too Big (type 2, RFC 4443 section 3.2) with MTU `mtu`, quoting as
/// much of the original as fits in the IPv6 minimum MTU.
pub fn icmpv6_packet_too_big(
    orig: &[u8],
    mtu: u32,
    src: Ipv6Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    icmpv6_error(orig, 2, 0, mtu, src, out)
}

/// Builds ICMPv4 Time Exceeded in transit (type 11 code 0, RFC 792) about a packet whose
/// TTL ran out here.
pub fn icmpv4_time_exceeded(
    orig: &[u8],
    src: Ipv4Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    icmpv4_error(orig, 11, 0, 0, src, out)
}

/// Builds ICMPv6 Time Exceeded, hop limit exceeded in transit (type 3 code 0, RFC 4443
/// section 3.3).
pub fn icmpv6_time_exceeded(
    orig: &[u8],
    src: Ipv6Addr,
    out: &mut PacketBuf,
) -> Result<(), DropReason> {
    icmpv6_error(orig, 3, 0, 0, src, out)
}

/// Bounds of a reassembly table.
#[derive(Clone, Copy, Debug)]
pub struct ReasmLimits {
    /// Datagrams in progress at once.
    pub max_datagrams: usize,
    /// Bytes buffered across all datagrams.
    pub max_bytes: usize,
    /// Largest reassembled datagram.
    pub max_datagram: usize,
    /// Seconds (in the caller's `now` unit) a datagram may wait for its fragments.
    pub timeout: f64,
    /// Fragments one datagram may have (a datagram of more is dropped whole).
    pub max_fragments: u32,
    /// Datagrams in progress from one source address (so one sender cannot take every
    /// slot of `max_datagrams`).
    pub max_per_source: u32,
}

impl Default for ReasmLimits {
    fn default() -> Self {
        // shared/spec/mtu.md section 4.3 suggests 30 s with memory caps.
        ReasmLimits {
            max_datagrams: 1024,
            max_bytes: 16 << 20,
            max_datagram: 65535,
            timeout: 30.0,
            // A 65,535-byte datagram in 1,280-byte (IPv6 minimum MTU) fragments needs 52.
            max_fragments: 64,
            max_per_source: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    proto: u8,
}

#[derive(Debug)]
struct Datagram {
    /// Unfragmentable part (IPv4 header of the first fragment / IPv6 header + extensions).
    header: Vec<u8>,
    /// Offset in `header` of the byte that holds the next-header value to patch (IPv6).
    nh_pos: usize,
    payload: Vec<u8>,
    /// Received byte ranges, start -> end (exclusive), disjoint: an overlap check and an
    /// insert cost O(log n).
    ranges: BTreeMap<usize, usize>,
    /// Bytes received (the sum of the ranges): with no overlaps, the datagram is complete
    /// when this reaches `total`.
    received: usize,
    total: Option<usize>,
    fragments: u32,
    first: f64,
}

/// Counters of a reassembler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasmStats {
    pub reassembled: u64,
    pub timeouts: u64,
    pub timed_out_fragments: u64,
    pub overflow: u64,
    pub invalid: u64,
    /// Fragments dropped by `max_fragments` or `max_per_source`.
    pub limited: u64,
    /// Datagrams dropped, oldest first, to make room for a new one when the table or its
    /// bytes were full.
    pub evicted: u64,
    pub in_progress: usize,
    pub bytes: usize,
}

/// IPv4 and IPv6 reassembly with bounded memory and time (RFC 791, RFC 8200 section 4.5).
/// Overlapping fragments drop the whole datagram (RFC 5722). When the table is full a new
/// datagram evicts the oldest one (as the kernel does above its high threshold): a flood
/// of fragments that never complete cannot keep real datagrams out for the whole timeout.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReasmLimits,
    table: HashMap<Key, Datagram>,
    /// Datagrams in progress per source address.
    per_source: HashMap<IpAddr, u32>,
    /// Datagrams in the order they started (stale entries skipped lazily): the eviction order.
    order: std::collections::VecDeque<(Key, f64)>,
    /// Fragments held by evicted datagrams, not yet taken by [`Reassembler::take_evicted`].
    evicted_fragments: u64,
    bytes: usize,
    pub stats: ReasmStats,
}

/// Parsed fragment fields.
struct Frag<'a> {
    key: Key,
    off: usize,
    more: bool,
    data: &'a [u8],
    header: &'a [u8],
    nh_pos: usize,
    next: u8,
}

fn parse_frag(pkt: &[u8]) -> Result<Frag<'_>, DropReason> {
    let ip = wire::parse_ip(pkt).ok_or(DropReason::Malformed)?;
    if ip.version == 4 {
        let h = Ipv4::new(pkt).ok_or(DropReason::Malformed)?;
        return Ok(Frag {
            key: Key {
                src: ip.src,
                dst: ip.dst,
                id: u32::from(h.ident()),
                proto: ip.proto,
            },
            off: h.frag_offset(),
            more: h.more_frags(),
            data: &pkt[ip.hdr_len..ip.total_len],
            header: &pkt[..ip.hdr_len],
            nh_pos: 9,
            next: ip.proto,
        });
    }
    // IPv6: find the fragment header, remembering where its next-header value is referenced.
    let total = ip.total_len;
    let mut nh_pos = 6;
    let mut off = IPV6_HDR;
    for _ in 0..8 {
        let nh = pkt[nh_pos];
        match nh {
            proto::IPV6_FRAG => {
                if off + 8 > total {
                    return Err(DropReason::Malformed);
                }
                let fh = Ipv6Frag::new(&pkt[off..total]).ok_or(DropReason::Malformed)?;
                return Ok(Frag {
                    key: Key {
                        src: ip.src,
                        dst: ip.dst,
                        id: fh.ident(),
                        proto: 0,
                    },
                    off: fh.offset(),
                    more: fh.more(),
                    data: &pkt[off + 8..total],
                    header: &pkt[..off],
                    nh_pos,
                    next: fh.next_header(),
                });
            }
            0 | 43 | 60 => {
                if off + 8 > total {
                    return Err(DropReason::Malformed);
                }
                nh_pos = off;
                off += (pkt[off + 1] as usize + 1) * 8;
            }
            _ => break,
        }
    }
    Err(DropReason::Malformed)
}

/// Whether `pkt` is an IPv4 or IPv6 fragment.
pub fn is_fragment(pkt: &[u8]) -> bool {
    wire::parse_ip(pkt).is_some_and(|i| i.is_fragment)
}

impl Reassembler {
    pub fn new(limits: ReasmLimits) -> Self {
        Reassembler {
            limits,
            table: HashMap::new(),
            per_source: HashMap::new(),
            order: std::collections::VecDeque::new(),
            evicted_fragments: 0,
            bytes: 0,
            stats: ReasmStats::default(),
        }
    }

    fn remove(&mut self, k: &Key) -> Option<Datagram> {
        let d = self.table.remove(k)?;
        if let Some(n) = self.per_source.get_mut(&k.src) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&k.src);
            }
        }
        self.bytes -= d.payload.capacity() + d.header.len();
        self.stats.in_progress = self.table.len();
        self.stats.bytes = self.bytes;
        Some(d)
    }

    /// Adds one fragment. Returns the reassembled packet in `out` and `Ok(true)` when the
    /// datagram completes, `Ok(false)` while it is incomplete, or the reason the fragment
    /// (and, for invalid ones, its whole datagram) was dropped.
    pub fn insert(
        &mut self,
        now: f64,
        pkt: &[u8],
        out: &mut PacketBuf,
    ) -> Result<bool, DropReason> {
        let f = parse_frag(pkt)?;
        let end = f.off + f.data.len();
        let hdr_len = f.header.len();
        if end + hdr_len > self.limits.max_datagram || (f.more && f.data.len() % 8 != 0) {
            self.stats.invalid += 1;
            self.remove(&f.key);
            return Err(DropReason::ReassemblyInvalid);
        }
        if !self.table.contains_key(&f.key) {
            while (self.table.len() >= self.limits.max_datagrams
                || self.bytes + end + hdr_len > self.limits.max_bytes)
                && self.evict_oldest()
            {}
            if self.table.len() >= self.limits.max_datagrams
                || self.bytes + end + hdr_len > self.limits.max_bytes
            {
                self.stats.overflow += 1;
                return Err(DropReason::ReassemblyOverflow);
            }
            let from_src = self.per_source.entry(f.key.src).or_insert(0);
            if *from_src >= self.limits.max_per_source {
                self.stats.limited += 1;
                return Err(DropReason::ReassemblyLimit);
            }
            *from_src += 1;
            self.order.push_back((f.key, now));
            if self.order.len() > 2 * self.limits.max_datagrams + 64 {
                let table = &self.table;
                self.order
                    .retain(|(k, t)| table.get(k).is_some_and(|d| d.first == *t));
            }
            self.table.insert(
                f.key,
                Datagram {
                    header: Vec::new(),
                    nh_pos: 0,
                    payload: Vec::new(),
                    ranges: BTreeMap::new(),
                    received: 0,
                    total: None,
                    fragments: 0,
                    first: now,
                },
            );
        }
        let Some(d) = self.table.get_mut(&f.key) else {
            return Err(DropReason::ReassemblyOverflow);
        };
        if d.fragments >= self.limits.max_fragments {
            self.stats.limited += 1;
            self.remove(&f.key);
            return Err(DropReason::ReassemblyLimit);
        }
        // Overlap check: the range starting at or before `off` must end by `off`, and the
        // next one must start at or after `end`.
        let overlaps = d
            .ranges
            .range(..=f.off)
            .next_back()
            .is_some_and(|(_, &e)| e > f.off)
            || d.ranges
                .range(f.off..)
                .next()
                .is_some_and(|(&s, _)| s < end);
        let highest = d.ranges.last_key_value().map_or(0, |(_, &e)| e);
        let bad_total = match d.total {
            Some(t) => end > t || (!f.more && end != t),
            None => !f.more && highest > end,
        };
        if overlaps || bad_total || f.data.is_empty() && f.more {
            self.stats.invalid += 1;
            self.remove(&f.key);
            return Err(DropReason::ReassemblyInvalid);
        }
        let before = d.payload.capacity() + d.header.len();
        if d.payload.len() < end {
            d.payload.resize(end, 0);
        }
        d.payload[f.off..end].copy_from_slice(f.data);
        if f.off == 0 {
            d.header.clear();
            d.header.extend_from_slice(f.header);
            d.nh_pos = f.nh_pos;
            if f.key.src.is_ipv6() {
                d.header[f.nh_pos] = f.next;
            }
        }
        if !f.more {
            d.total = Some(end);
        }
        d.ranges.insert(f.off, end);
        d.received += end - f.off;
        d.fragments += 1;
        let after = d.payload.capacity() + d.header.len();
        self.bytes = self.bytes + after - before;
        if self.bytes > self.limits.max_bytes {
            self.stats.overflow += 1;
            self.remove(&f.key);
            return Err(DropReason::ReassemblyOverflow);
        }
        // Complete when the disjoint ranges add up to the total (so they cover 0..total)
        // and the first fragment came.
        let complete = d.total == Some(d.received) && !d.header.is_empty();
        if !complete {
            self.stats.in_progress = self.table.len();
            self.stats.bytes = self.bytes;
            return Ok(false);
        }
        let Some(d) = self.remove(&f.key) else {
            return Err(DropReason::ReassemblyOverflow);
        };
        let total = d.header.len() + d.payload.len();
        out.clear();
        if out.tailroom() < total {
            *out = PacketBuf::with_capacity(total + crate::pkt::DEFAULT_HEADROOM + 64);
        }
        let Some(b) = out.push_back(total) else {
            return Err(DropReason::ReassemblyOverflow);
        };
        b[..d.header.len()].copy_from_slice(&d.header);
        b[d.header.len()..].copy_from_slice(&d.payload);
        if b[0] >> 4 == 4 {
            if let Some(mut v) = Ipv4::new(&mut *b) {
                v.set_total_len(total as u16);
                v.set_frag(false, 0);
                v.fill_checksum();
            }
        } else if let Some(mut v) = Ipv6::new(&mut *b) {
            v.set_payload_len((total - IPV6_HDR) as u16);
        }
        self.stats.reassembled += 1;
        Ok(true)
    }

    /// Drops datagrams older than the timeout. Returns how many fragments were discarded
    /// (each to be counted as `reassembly_timeout`).
    pub fn expire(&mut self, now: f64) -> u64 {
        let timeout = self.limits.timeout;
        let old: Vec<Key> = self
            .table
            .iter()
            .filter(|(_, d)| now - d.first >= timeout)
            .map(|(k, _)| *k)
            .collect();
        let mut frags = 0;
        for k in old {
            if let Some(d) = self.remove(&k) {
                frags += d.fragments as u64;
                self.stats.timeouts += 1;
            }
        }
        self.stats.timed_out_fragments += frags;
        frags
    }

    /// Drops the oldest datagram in progress; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((k, t)) = self.order.pop_front() {
            if self.table.get(&k).is_some_and(|d| d.first == t)
                && let Some(d) = self.remove(&k)
            {
                self.stats.evicted += 1;
                self.evicted_fragments += d.fragments as u64;
                return true;
            }
        }
        false
    }

    /// Fragments dropped by eviction since the last call (each to be counted as
    /// `reassembly_overflow`).
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_fragments)
    }

    /// Datagrams still waiting.
    pub fn pending(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_packet(len: usize, df: bool, id: u16) -> Vec<u8> {
        let mut p = vec![0u8; len];
        wire::write_ipv4_header(
            &mut p,
            len as u16,
            id,
            df,
            64,
            proto::UDP,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        for (i, x) in p[20..].iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
        p
    }

    #[test]
    fn fact_47_1500_into_1444_and_76() {
        let p = v4_packet(1500, false, 9);
        let mut pool = BufPool::new(4, 2048);
        let mut out = vec![];
        assert_eq!(fragment_ipv4(&p, 1446, &mut pool, &mut out).unwrap(), 2);
        assert_eq!(out[0].len(), 1444);
        assert_eq!(out[1].len(), 76);
        // Same packet on CBC+SHA1 (1438): 1436 and 84; with a 1399 MTU: 1396 and 124.
        out.clear();
        fragment_ipv4(&p, 1438, &mut pool, &mut out).unwrap();
        assert_eq!((out[0].len(), out[1].len()), (1436, 84));
        out.clear();
        fragment_ipv4(&p, 1399, &mut pool, &mut out).unwrap();
        assert_eq!((out[0].len(), out[1].len()), (1396, 124));
    }

    #[test]
    fn fragments_reassemble_in_any_order() {
        let p = v4_packet(3000, true, 77);
        let mut pool = BufPool::new(4, 2048);
        let mut out = vec![];
        fragment_ipv4(&p, 1000, &mut pool, &mut out).unwrap();
        assert!(out.len() >= 3);
        for f in &out {
            assert!(wire::ipv4_header_ok(f.bytes()));
            assert_eq!(wire::be16(f.bytes(), 6) & 0x4000, 0, "DF cleared");
        }
        let mut r = Reassembler::new(ReasmLimits::default());
        let mut got = PacketBuf::new();
        out.reverse();
        let n = out.len();
        for (i, f) in out.iter().enumerate() {
            assert_eq!(r.insert(0.0, f.bytes(), &mut got).unwrap(), i == n - 1);
        }
        let mut want = p.clone();
        wire::put16(&mut want, 6, 0);
        wire::ipv4_fix_checksum(&mut want);
        assert_eq!(got.bytes(), &want[..]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn overlap_and_timeout() {
        let p = v4_packet(3000, false, 5);
        let mut pool = BufPool::new(4, 2048);
        let mut out = vec![];
        fragment_ipv4(&p, 1000, &mut pool, &mut out).unwrap();
        let mut r = Reassembler::new(ReasmLimits {
            timeout: 30.0,
            ..Default::default()
        });
        let mut got = PacketBuf::new();
        assert!(!r.insert(0.0, out[0].bytes(), &mut got).unwrap());
        assert_eq!(
            r.insert(0.0, out[0].bytes(), &mut got),
            Err(DropReason::ReassemblyInvalid)
        );
        assert!(!r.insert(1.0, out[1].bytes(), &mut got).unwrap());
        assert_eq!(r.expire(10.0), 0);
        assert_eq!(r.expire(31.0), 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn memory_cap() {
        let mut r = Reassembler::new(ReasmLimits {
            max_datagrams: 2,
            ..Default::default()
        });
        let mut pool = BufPool::new(4, 2048);
        let mut got = PacketBuf::new();
        let mut firsts = vec![];
        for id in 0..3u16 {
            let p = v4_packet(3000, false, id);
            let mut out = vec![];
            fragment_ipv4(&p, 1000, &mut pool, &mut out).unwrap();
            // Full: the third datagram evicts the oldest (the first).
            assert_eq!(r.insert(f64::from(id), out[0].bytes(), &mut got), Ok(false));
            firsts.push(out);
        }
        assert_eq!((r.pending(), r.stats.evicted, r.take_evicted()), (2, 1, 1));
        assert_eq!(r.take_evicted(), 0);
        // The second datagram (still there) completes; the first's rest starts anew.
        for f in &firsts[1][1..] {
            let _ = r.insert(3.0, f.bytes(), &mut got);
        }
        assert_eq!(got.len(), 3000);
    }

    /// A datagram of more fragments than `max_fragments` is dropped whole, and one source
    /// cannot hold more than `max_per_source` datagrams; other sources still get slots, and
    /// the table and its bytes return to zero.
    #[test]
    fn fragment_count_and_per_source_limits() {
        let mut r = Reassembler::new(ReasmLimits {
            max_fragments: 4,
            max_per_source: 2,
            ..Default::default()
        });
        let mut pool = BufPool::new(4, 2048);
        let mut got = PacketBuf::new();
        let p = v4_packet(3000, false, 1);
        let mut out = vec![];
        fragment_ipv4(&p, 500, &mut pool, &mut out).unwrap();
        assert!(out.len() > 5);
        for f in &out[..4] {
            assert_eq!(r.insert(0.0, f.bytes(), &mut got), Ok(false));
        }
        assert_eq!(
            r.insert(0.0, out[4].bytes(), &mut got),
            Err(DropReason::ReassemblyLimit)
        );
        assert_eq!((r.pending(), r.stats.limited), (0, 1));
        for id in 10..12u16 {
            let mut out = vec![];
            fragment_ipv4(&v4_packet(3000, false, id), 1000, &mut pool, &mut out).unwrap();
            assert_eq!(r.insert(0.0, out[0].bytes(), &mut got), Ok(false));
        }
        let mut out = vec![];
        fragment_ipv4(&v4_packet(3000, false, 12), 1000, &mut pool, &mut out).unwrap();
        assert_eq!(
            r.insert(0.0, out[0].bytes(), &mut got),
            Err(DropReason::ReassemblyLimit)
        );
        // Another source is not affected.
        let mut other = out[0].bytes().to_vec();
        other[12] = 10;
        other[15] = 9;
        wire::ipv4_fix_checksum(&mut other);
        assert_eq!(r.insert(0.0, &other, &mut got), Ok(false));
        assert_eq!(r.expire(100.0), 3);
        assert_eq!((r.pending(), r.stats.bytes, r.stats.limited), (0, 0, 2));
        assert!(r.per_source.is_empty());
    }

    /// A datagram in the smallest legal pieces (8 bytes each, the most a peer can send)
    /// costs O(n log n): 8,000 fragments of one 64,000-byte datagram go in well under a
    /// second even in a debug build (the old sorted-Vec insert was O(n^2)).
    #[test]
    fn many_tiny_fragments_are_cheap() {
        let mut r = Reassembler::new(ReasmLimits {
            max_fragments: 10_000,
            ..Default::default()
        });
        let mut got = PacketBuf::new();
        let n = 8000usize;
        let t = std::time::Instant::now();
        for k in (0..n).rev() {
            let mut f = vec![0u8; 28];
            let more = k + 1 < n;
            wire::write_ipv4_header(
                &mut f,
                28,
                7,
                false,
                64,
                proto::UDP,
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
            );
            wire::put16(&mut f, 6, (k as u16) | if more { 0x2000 } else { 0 });
            wire::ipv4_fix_checksum(&mut f);
            assert_eq!(r.insert(0.0, &f, &mut got), Ok(k == 0), "fragment {k}");
        }
        assert_eq!(got.len(), 20 + 8 * n);
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
    }

    #[test]
    fn icmp_frag_needed_is_valid() {
        let p = v4_packet(1500, true, 1);
        let mut b = PacketBuf::new();
        icmpv4_frag_needed(&p, 1446, Ipv4Addr::new(192, 0, 2, 1), &mut b).unwrap();
        let x = b.bytes();
        assert!(wire::ipv4_header_ok(x));
        assert_eq!((x[20], x[21], wire::be16(x, 26)), (3, 4, 1446));
        assert_eq!(wire::checksum(&x[20..]), 0);
    }

    #[test]
    fn time_exceeded_and_when_no_icmp_error_may_be_sent() {
        let p = v4_packet(300, false, 5);
        let src = Ipv4Addr::new(192, 0, 2, 1);
        let mut b = PacketBuf::new();
        icmpv4_time_exceeded(&p, src, &mut b).unwrap();
        let x = b.bytes();
        assert!(wire::ipv4_header_ok(x));
        assert_eq!((x[20], x[21], wire::checksum(&x[20..])), (11, 0, 0));
        assert_eq!(&x[28..], &p[..28]);
        // RFC 1812 section 4.3.2.7: not about a non-first fragment, an ICMP error, or a
        // multicast destination; an echo request is answered.
        let mut frag = p.clone();
        wire::put16(&mut frag, 6, 100);
        wire::ipv4_fix_checksum(&mut frag);
        let mut icmp = p.clone();
        icmp[9] = proto::ICMP;
        icmp[20] = 11;
        wire::ipv4_fix_checksum(&mut icmp);
        let mut mcast = p.clone();
        mcast[16] = 224;
        wire::ipv4_fix_checksum(&mut mcast);
        for bad in [&frag, &icmp, &mcast] {
            assert!(icmpv4_time_exceeded(bad, src, &mut b).is_err());
        }
        let mut echo = icmp.clone();
        echo[20] = 8;
        assert!(icmpv4_time_exceeded(&echo, src, &mut b).is_ok());
    }

    #[test]
    fn ipv6_reassembly() {
        // Two IPv6 fragments of a UDP datagram (fragment header right after the base header).
        let payload: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let mk = |off: usize, data: &[u8], more: bool| {
            let mut p = vec![0u8; 48 + data.len()];
            wire::write_ipv6_header(
                &mut p,
                (8 + data.len()) as u16,
                proto::IPV6_FRAG,
                64,
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            );
            p[40] = proto::UDP;
            wire::put16(&mut p, 42, ((off / 8) << 3) as u16 | more as u16);
            wire::put32(&mut p, 44, 0xabcdef);
            p[48..].copy_from_slice(data);
            p
        };
        let a = mk(0, &payload[..1200], true);
        let b = mk(1200, &payload[1200..], false);
        let mut r = Reassembler::new(ReasmLimits::default());
        let mut got = PacketBuf::new();
        assert!(!r.insert(0.0, &b, &mut got).unwrap());
        assert!(r.insert(0.0, &a, &mut got).unwrap());
        let g = got.bytes();
        assert_eq!(g.len(), 40 + 2000);
        assert_eq!(g[6], proto::UDP);
        assert_eq!(wire::be16(g, 4), 2000);
        assert_eq!(&g[40..], &payload[..]);
    }
}
