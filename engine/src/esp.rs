//! ESP tunnel mode (RFC 4303): encapsulation and decapsulation of single packets and bursts,
//! outer IPv4/IPv6, inner IPv4/IPv6 (next header 4 / 41), NAT-T UDP 4500 (RFC 3948).
//!
//! Contract (sans-IO): functions take packet buffers and SA state, never block, never
//! allocate per packet (bursts use inline arrays) and never panic on any input. A drop
//! returns the [`DropReason`] and is counted on the SA. Inbound order per RFC 4303 section
//! 3.4: replay check, ICV verification and decryption, then replay commit, then padding and
//! next-header checks.

use crate::counters::DropReason;
use crate::crypto::CryptoOp;
use crate::pkt::PacketBuf;
use crate::sa::{InboundSa, OutboundSa, SeqState};
use crate::wire::{self, IPV4_HDR, IPV6_HDR, NATT_PORT, UDP_HDR, proto};
use smallvec::SmallVec;
use std::net::IpAddr;

/// ESP header: SPI (4) + sequence number (4).
pub const ESP_HDR: usize = 8;
/// Most packets handled in one crypto call (longer bursts are processed in chunks).
pub const MAX_BURST: usize = 64;

type Ops<'a> = SmallVec<[CryptoOp<'a>; 64]>;

/// What a received outer packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outer {
    /// ESP (IP protocol 50, or UDP-encapsulated): the ESP header starts at `esp_off`.
    Esp {
        esp_off: usize,
        spi: u32,
        src: IpAddr,
        dst: IpAddr,
        udp: Option<(u16, u16)>,
    },
    /// IKE: UDP 500, or UDP 4500 whose payload starts with the four-byte non-ESP marker.
    Ike,
    /// A one-byte 0xff NAT keepalive on UDP 4500 (RFC 3948 section 2.3).
    NatKeepalive,
    /// An outer IPv4/IPv6 fragment (to reassemble before classification).
    Fragment,
    /// Anything else (not ours).
    Other,
}

/// Classifies an outer IP packet (starting at the IP header).
#[inline]
pub fn classify_outer(pkt: &[u8]) -> Result<Outer, DropReason> {
    let ip = wire::parse_ip(pkt).ok_or(
        if pkt.first().map(|b| b >> 4) == Some(4) || pkt.first().map(|b| b >> 4) == Some(6) {
            DropReason::Malformed
        } else {
            DropReason::NotIp
        },
    )?;
    if ip.is_fragment {
        return Ok(Outer::Fragment);
    }
    let l4 = &pkt[ip.hdr_len..ip.total_len];
    match ip.proto {
        proto::ESP => {
            let esp = wire::Esp::new(l4).ok_or(DropReason::Malformed)?;
            Ok(Outer::Esp {
                esp_off: ip.hdr_len,
                spi: esp.spi(),
                src: ip.src,
                dst: ip.dst,
                udp: None,
            })
        }
        proto::UDP => {
            let udp = wire::Udp::new(l4).ok_or(DropReason::Malformed)?;
            let (sport, dport) = (udp.src_port(), udp.dst_port());
            let ulen = usize::from(udp.len());
            if ulen < UDP_HDR || ulen > l4.len() {
                return Err(DropReason::Malformed);
            }
            let payload = &l4[UDP_HDR..ulen];
            if sport == 500 || dport == 500 {
                return Ok(Outer::Ike);
            }
            if sport != NATT_PORT && dport != NATT_PORT {
                return Ok(Outer::Other);
            }
            if payload.len() == 1 && payload[0] == 0xff {
                return Ok(Outer::NatKeepalive);
            }
            if payload.len() >= 4 && payload[..4] == [0, 0, 0, 0] {
                return Ok(Outer::Ike);
            }
            let esp = wire::Esp::new(payload).ok_or(DropReason::Malformed)?;
            Ok(Outer::Esp {
                esp_off: ip.hdr_len + UDP_HDR,
                spi: esp.spi(),
                src: ip.src,
                dst: ip.dst,
                udp: Some((sport, dport)),
            })
        }
        _ => Ok(Outer::Other),
    }
}

/// Per-packet result of the first encapsulation phase.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    seq_hi: Option<u32>,
    soft: bool,
}

/// Phase 1: adds padding, trailer, ICV room, ESP header and IV around the inner packet in
/// `pkt`, reserving the sequence number.
#[inline]
fn prepare(sa: &mut OutboundSa, pkt: &mut PacketBuf) -> Result<Prepared, DropReason> {
    let inner_len = pkt.len();
    let nh = match pkt.bytes().first().map(|b| b >> 4) {
        Some(4) => proto::IPIP,
        Some(6) => proto::IPV6,
        _ => return Err(DropReason::NotIp),
    };
    let l = &sa.layout;
    let (block, icv, iv_len) = (l.block, l.icv, l.iv);
    // block is 4 or 16: a mask instead of a division.
    let ct_len = (inner_len + 2 + block - 1) & !(block - 1);
    let pad = ct_len - inner_len - 2;
    if pkt.tailroom() < pad + 2 + icv || pkt.headroom() < ESP_HDR + iv_len + l.outer {
        return Err(DropReason::TooBig);
    }
    let gcm = l.gcm;
    let (seq, st) = sa.reserve_seq()?;
    let b = pkt.push_back(pad + 2 + icv).expect("tailroom checked");
    let t = &mut b[inner_len..inner_len + pad + 2];
    // RFC 4303 section 2.4: padding bytes 1, 2, 3, ..., then pad length and next header.
    t[..pad].copy_from_slice(&PAD[..pad]);
    t[pad] = pad as u8;
    t[pad + 1] = nh;
    let b = pkt.push_front(ESP_HDR + iv_len).expect("headroom checked");
    if let Some(mut h) = wire::Esp::new(&mut *b) {
        h.set_header(sa.cfg.spi, seq as u32);
    }
    if gcm {
        // RFC 4106 section 3.1: the explicit IV must not repeat under a key; the 64-bit
        // sequence number never does.
        b[8..16].copy_from_slice(&seq.to_be_bytes());
    } else {
        sa.iv.next(&mut b[8..24]);
    }
    Ok(Prepared {
        seq_hi: sa.cfg.esn.then_some((seq >> 32) as u32),
        soft: st == SeqState::SoftLimit,
    })
}

/// Padding bytes of RFC 4303 section 2.4 (at most 15 with AES-CBC, 3 with GCM).
const PAD: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// Phase 3: prepends UDP (NAT-T) and the outer IP header to a sealed ESP packet. IPv4: the
/// SA's header template, with length, identification and the checksum (the template's
/// precomputed sum plus those two words, RFC 1071) filled in.
#[inline]
fn finish(sa: &mut OutboundSa, pkt: &mut PacketBuf) {
    let esp_len = pkt.len();
    let nat = sa.cfg.nat_t;
    if let Some(h) = &sa.layout.v4 {
        let hl = sa.layout.outer;
        let b = pkt.push_front(hl).expect("headroom checked in prepare");
        b[..hl].copy_from_slice(&h[..hl]);
        sa.ip_id = sa.ip_id.wrapping_add(1);
        let total = (hl + esp_len) as u16;
        wire::put16(b, 2, total);
        wire::put16(b, 4, sa.ip_id);
        let mut acc = sa.layout.v4_sum + u32::from(total) + u32::from(sa.ip_id);
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        wire::put16(b, 10, !(acc as u16));
        if nat {
            wire::put16(b, IPV4_HDR + 4, (UDP_HDR + esp_len) as u16);
        }
        return;
    }
    let (src, dst) = (sa.cfg.tunnel_src, sa.cfg.tunnel_dst);
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let hl = IPV6_HDR + if nat { UDP_HDR } else { 0 };
            let b = pkt.push_front(hl).expect("headroom checked in prepare");
            let p = if nat { proto::UDP } else { proto::ESP };
            wire::write_ipv6_header(b, (hl - IPV6_HDR + esp_len) as u16, p, 64, s, d);
            if nat {
                wire::write_udp_header(
                    &mut b[IPV6_HDR..],
                    sa.cfg.natt_sport,
                    sa.cfg.natt_dport,
                    (UDP_HDR + esp_len) as u16,
                );
                wire::udp6_fix_checksum(b, IPV6_HDR);
            }
        }
        _ => unreachable!("SA validation requires one address family; IPv4 has a template"),
    }
}

/// Encapsulates one inner IP packet (already within the SA's inner MTU) into a complete
/// outer packet in place. Returns whether the soft sequence limit was crossed.
pub fn encapsulate(sa: &mut OutboundSa, pkt: &mut PacketBuf) -> Result<SeqState, DropReason> {
    let inner = pkt.len();
    let p = prepare(sa, pkt).inspect_err(|r| sa.counters.drop(*r))?;
    sa.transform.seal(pkt.bytes_mut(), p.seq_hi);
    finish(sa, pkt);
    sa.counters.packets += 1;
    sa.counters.inner_bytes += inner as u64;
    sa.counters.outer_bytes += pkt.len() as u64;
    Ok(if p.soft {
        SeqState::SoftLimit
    } else {
        SeqState::Ok
    })
}

/// Encapsulates a burst of inner packets for one SA: headers for all, one batched crypto
/// call, outer headers for all. `results[i]` gets each packet's outcome; a dropped packet's
/// buffer content is unspecified. `results.len()` must equal `pkts.len()`.
pub fn encapsulate_burst(
    sa: &mut OutboundSa,
    pkts: &mut [PacketBuf],
    results: &mut [Result<SeqState, DropReason>],
) {
    debug_assert_eq!(pkts.len(), results.len());
    for (chunk, res) in pkts
        .chunks_mut(MAX_BURST)
        .zip(results.chunks_mut(MAX_BURST))
    {
        let mut inner = [0u32; MAX_BURST];
        let mut hi = [None; MAX_BURST];
        for (i, pkt) in chunk.iter_mut().enumerate() {
            inner[i] = pkt.len() as u32;
            res[i] = match prepare(sa, pkt) {
                Ok(p) => {
                    hi[i] = Some(p.seq_hi);
                    Ok(if p.soft {
                        SeqState::SoftLimit
                    } else {
                        SeqState::Ok
                    })
                }
                Err(r) => {
                    sa.counters.drop(r);
                    Err(r)
                }
            };
        }
        let n = chunk.len();
        {
            let mut ops: Ops<'_> = SmallVec::new();
            for (i, pkt) in chunk.iter_mut().enumerate() {
                if let Some(seq_hi) = hi[i] {
                    ops.push(CryptoOp {
                        esp: pkt.bytes_mut(),
                        seq_hi,
                        ok: false,
                    });
                }
            }
            sa.transform.seal_burst(&mut ops);
            let mut k = 0;
            for i in 0..n {
                if hi[i].is_some() {
                    if !ops[k].ok {
                        res[i] = Err(DropReason::CryptoError);
                        sa.counters.drop(DropReason::CryptoError);
                        hi[i] = None;
                    }
                    k += 1;
                }
            }
        }
        for (i, pkt) in chunk.iter_mut().enumerate() {
            if hi[i].is_some() {
                finish(sa, pkt);
                sa.counters.packets += 1;
                sa.counters.inner_bytes += inner[i] as u64;
                sa.counters.outer_bytes += pkt.len() as u64;
            }
        }
    }
}

/// Checks what an inbound ESP packet needs before decryption: length and alignment, replay.
/// Returns the full sequence number.
#[inline]
fn pre_open(sa: &InboundSa, esp: &[u8]) -> Result<u64, DropReason> {
    let suite = sa.cfg.suite;
    let min = ESP_HDR + suite.iv_len() + suite.block().max(4) + suite.icv_len();
    if esp.len() < min {
        return Err(DropReason::Malformed);
    }
    let ct = esp.len() - ESP_HDR - suite.iv_len() - suite.icv_len();
    if !suite.enc.is_gcm() && !ct.is_multiple_of(16) {
        return Err(DropReason::Malformed);
    }
    let seq = wire::Esp::new(esp).ok_or(DropReason::Malformed)?.seq();
    sa.replay.check(seq).map_err(|e| match e {
        crate::replay::ReplayError::Replayed => DropReason::Replay,
        crate::replay::ReplayError::TooOld => DropReason::TooOld,
    })
}

/// After a verified ICV: commits the replay window, checks the trailer and strips ESP so
/// `pkt` holds the inner IP packet.
#[inline]
fn post_open(sa: &mut InboundSa, pkt: &mut PacketBuf, seq: u64) -> Result<(), DropReason> {
    sa.replay.commit(seq).map_err(|e| match e {
        crate::replay::ReplayError::Replayed => DropReason::Replay,
        crate::replay::ReplayError::TooOld => DropReason::TooOld,
    })?;
    let suite = sa.cfg.suite;
    let icv = suite.icv_len();
    let hdr = ESP_HDR + suite.iv_len();
    let b = pkt.bytes();
    let end = b.len() - icv; // end of ciphertext
    let nh = b[end - 1];
    let pad = b[end - 2] as usize;
    if hdr + pad + 2 > end {
        return Err(DropReason::BadPadding);
    }
    let pad_start = end - 2 - pad;
    for (i, &x) in b[pad_start..end - 2].iter().enumerate() {
        if x as usize != i + 1 {
            return Err(DropReason::BadPadding);
        }
    }
    let want_version = match nh {
        proto::IPIP => 4,
        proto::IPV6 => 6,
        proto::NO_NEXT => return Err(DropReason::Dummy),
        _ => return Err(DropReason::BadNextHeader),
    };
    pkt.truncate(pad_start);
    pkt.pull_front(hdr).ok_or(DropReason::Malformed)?;
    let inner = pkt.bytes();
    match inner.first() {
        Some(v) if v >> 4 == want_version => {}
        _ => return Err(DropReason::BadNextHeader),
    }
    let ip = wire::parse_ip(inner).ok_or(DropReason::Malformed)?;
    // TFC padding (RFC 4303 section 2.7) may follow the inner packet: trust its length.
    pkt.truncate(ip.total_len);
    Ok(())
}

/// Decapsulates one ESP packet: `pkt` starts at the ESP header (outer headers removed) and
/// on success holds the inner IP packet.
pub fn decapsulate(sa: &mut InboundSa, pkt: &mut PacketBuf) -> Result<(), DropReason> {
    let esp_len = pkt.len() as u64;
    let r = (|| {
        let seq = pre_open(sa, pkt.bytes())?;
        let seq_hi = sa.cfg.esn.then_some((seq >> 32) as u32);
        if !sa.transform.open(pkt.bytes_mut(), seq_hi) {
            return Err(DropReason::IcvFailure);
        }
        post_open(sa, pkt, seq)
    })();
    match r {
        Ok(()) => {
            sa.counters.packets += 1;
            sa.counters.inner_bytes += pkt.len() as u64;
            sa.counters.outer_bytes += esp_len;
        }
        Err(e) => sa.counters.drop(e),
    }
    r
}

/// Decapsulates a burst of ESP packets of one SA with one batched crypto call. Packets are
/// replay-checked before and committed after, in burst order, so duplicates inside one
/// burst are caught at commit.
pub fn decapsulate_burst(
    sa: &mut InboundSa,
    pkts: &mut [PacketBuf],
    results: &mut [Result<(), DropReason>],
) {
    debug_assert_eq!(pkts.len(), results.len());
    for (chunk, res) in pkts
        .chunks_mut(MAX_BURST)
        .zip(results.chunks_mut(MAX_BURST))
    {
        let mut seqs = [0u64; MAX_BURST];
        let mut outer = [0u32; MAX_BURST];
        for (i, pkt) in chunk.iter().enumerate() {
            outer[i] = pkt.len() as u32;
            res[i] = pre_open(sa, pkt.bytes()).map(|s| seqs[i] = s);
        }
        let n = chunk.len();
        {
            let mut ops: Ops<'_> = SmallVec::new();
            for (i, pkt) in chunk.iter_mut().enumerate() {
                if res[i].is_ok() {
                    let seq_hi = sa.cfg.esn.then_some((seqs[i] >> 32) as u32);
                    ops.push(CryptoOp {
                        esp: pkt.bytes_mut(),
                        seq_hi,
                        ok: false,
                    });
                }
            }
            sa.transform.open_burst(&mut ops);
            let mut k = 0;
            for r in res.iter_mut().take(n) {
                if r.is_ok() {
                    if !ops[k].ok {
                        *r = Err(DropReason::IcvFailure);
                    }
                    k += 1;
                }
            }
        }
        for (i, pkt) in chunk.iter_mut().enumerate() {
            if res[i].is_ok() {
                res[i] = post_open(sa, pkt, seqs[i]);
            }
            match res[i] {
                Ok(()) => {
                    sa.counters.packets += 1;
                    sa.counters.inner_bytes += pkt.len() as u64;
                    sa.counters.outer_bytes += outer[i] as u64;
                }
                Err(e) => sa.counters.drop(e),
            }
        }
    }
}
