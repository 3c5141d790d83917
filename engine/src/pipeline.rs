//! The per-packet gateway logic around ESP, in the order a gateway applies it:
//!
//! - forwarding ([`forward_hop`], when the gateway routes): lower the inner TTL / hop limit
//!   once per tunnel traversal, ICMP Time Exceeded when it runs out;
//! - outbound ([`protect`]): parse the inner packet, clamp TCP MSS, fragment to the SA's inner
//!   MTU *before* encryption (DF policy, ICMP errors), encapsulate each piece;
//! - inbound ([`unprotect`]): decapsulate, reassemble inner fragments, clamp MSS.
//!
//! Contract: sans-IO; buffers come from and return to a [`BufPool`]; every packet that does
//! not come out is counted on the SA under a [`DropReason`].

use crate::counters::DropReason;
use crate::esp;
use crate::frag::{self, RateLimit, Reassembler};
use crate::pkt::{BufPool, PacketBuf};
use crate::sa::{DfPolicy, InboundSa, OutboundSa, SeqState};
use crate::wire::{self, MssClamp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Outcome of [`protect`] for one inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protected {
    /// This many ESP packets were appended to the output (more than one: fragmented).
    Sent { packets: usize, soft_limit: bool },
    /// Dropped; an ICMP error for the sender was appended to the ICMP output.
    DroppedWithIcmp(DropReason),
    /// Dropped.
    Dropped(DropReason),
}

/// Per-gateway outbound context: where ICMP errors come from and how often.
#[derive(Debug)]
pub struct OutboundCtx {
    /// Source of ICMPv4 errors (the gateway's inside address); the SA's outer source if unset.
    pub icmp_src_v4: Option<Ipv4Addr>,
    pub icmp_src_v6: Option<Ipv6Addr>,
    pub icmp_limit: RateLimit,
    /// Scratch list for fragments (kept to avoid allocating per packet).
    frags: Vec<PacketBuf>,
}

impl Default for OutboundCtx {
    fn default() -> Self {
        OutboundCtx {
            icmp_src_v4: None,
            icmp_src_v6: None,
            icmp_limit: RateLimit::new(100.0, 20.0),
            frags: Vec::with_capacity(64),
        }
    }
}

fn icmp_source_v4(ctx: &OutboundCtx, sa: &OutboundSa, inner_dst: IpAddr) -> Ipv4Addr {
    ctx.icmp_src_v4
        .unwrap_or(match (sa.cfg.tunnel_src, inner_dst) {
            (IpAddr::V4(a), _) => a,
            (_, IpAddr::V4(d)) => d,
            _ => Ipv4Addr::UNSPECIFIED,
        })
}

fn icmp_source_v6(ctx: &OutboundCtx, sa: &OutboundSa, inner_dst: IpAddr) -> Ipv6Addr {
    ctx.icmp_src_v6
        .unwrap_or(match (sa.cfg.tunnel_src, inner_dst) {
            (IpAddr::V6(a), _) => a,
            (_, IpAddr::V6(d)) => d,
            _ => Ipv6Addr::UNSPECIFIED,
        })
}

/// Protects one inner IP packet with `sa`: ESP packets go to `out`, an ICMP error (if any)
/// to `icmp_out`. `pkt` is consumed (its buffer ends up in `out` or back in `pool`).
pub fn protect(
    sa: &mut OutboundSa,
    ctx: &mut OutboundCtx,
    now: f64,
    mut pkt: PacketBuf,
    pool: &mut BufPool,
    out: &mut Vec<PacketBuf>,
    icmp_out: &mut Vec<PacketBuf>,
) -> Protected {
    let drop = |sa: &mut OutboundSa, pool: &mut BufPool, pkt: PacketBuf, r: DropReason| {
        sa.counters.drop(r);
        pool.put(pkt);
        Protected::Dropped(r)
    };
    let Some(ip) = wire::parse_ip(pkt.bytes()) else {
        let r = match pkt.bytes().first().map(|b| b >> 4) {
            Some(4) | Some(6) => DropReason::Malformed,
            _ => DropReason::NotIp,
        };
        return drop(sa, pool, pkt, r);
    };
    // Trailing link-layer padding is not part of the packet.
    pkt.truncate(ip.total_len);
    if sa.cfg.mss_clamp {
        let mss = if ip.version == 4 {
            sa.mss_ipv4()
        } else {
            sa.mss_ipv6()
        };
        if let MssClamp::Clamped(..) = wire::clamp_mss(pkt.bytes_mut(), mss) {
            sa.counters.mss_clamped += 1;
        }
    }
    let mtu = sa.inner_mtu;
    if pkt.len() <= mtu {
        return match esp::encapsulate(sa, &mut pkt) {
            Ok(st) => {
                out.push(pkt);
                Protected::Sent {
                    packets: 1,
                    soft_limit: st == SeqState::SoftLimit,
                }
            }
            Err(r) => {
                pool.put(pkt);
                Protected::Dropped(r) // counted by encapsulate
            }
        };
    }
    if ip.version == 6 {
        // IPv6 is never fragmented in transit: Packet Too Big with the inner MTU.
        let src = icmp_source_v6(ctx, sa, ip.dst);
        return icmp_reply(
            sa,
            ctx,
            now,
            pkt,
            pool,
            icmp_out,
            DropReason::TooBig,
            |orig, b| frag::icmpv6_packet_too_big(orig, mtu as u32, src, b),
        );
    }
    let df = wire::Ipv4::new(pkt.bytes()).is_some_and(|h| h.dont_frag());
    if df && sa.cfg.df_policy == DfPolicy::Honor {
        let src = icmp_source_v4(ctx, sa, ip.dst);
        return icmp_reply(
            sa,
            ctx,
            now,
            pkt,
            pool,
            icmp_out,
            DropReason::TooBig,
            |orig, b| frag::icmpv4_frag_needed(orig, mtu as u16, src, b),
        );
    }
    let mut frags = std::mem::take(&mut ctx.frags);
    frags.clear();
    let r = frag::fragment_ipv4(pkt.bytes(), mtu, pool, &mut frags);
    pool.put(pkt);
    let n = match r {
        Ok(n) => n,
        Err(r) => {
            for f in frags.drain(..) {
                pool.put(f);
            }
            ctx.frags = frags;
            sa.counters.drop(r);
            return Protected::Dropped(r);
        }
    };
    if df {
        sa.counters.df_cleared += 1;
    }
    sa.counters.frag_before_encrypt_packets += 1;
    sa.counters.frag_before_encrypt_fragments += n as u64;
    let mut sent = 0;
    let mut soft = false;
    let mut first_err = None;
    for mut f in frags.drain(..) {
        match esp::encapsulate(sa, &mut f) {
            Ok(st) => {
                soft |= st == SeqState::SoftLimit;
                sent += 1;
                out.push(f);
            }
            Err(r) => {
                first_err.get_or_insert(r);
                pool.put(f);
            }
        }
    }
    ctx.frags = frags;
    match first_err {
        Some(r) if sent == 0 => Protected::Dropped(r),
        _ => Protected::Sent {
            packets: sent,
            soft_limit: soft,
        },
    }
}

/// The router's hop for an inner packet about to enter the tunnel of `sa`: its TTL (IPv4)
/// or hop limit (IPv6) goes down by one; at 0 or 1 the packet is dropped (`ttl_exceeded`)
/// and an ICMP Time Exceeded goes back to its sender (rate limited). Decremented on the way
/// in only, so every loop through the gateway ends and the tunnel counts as one hop.
/// Returns the packet to forward, or None when it was consumed.
pub fn forward_hop(
    sa: &mut OutboundSa,
    ctx: &mut OutboundCtx,
    now: f64,
    mut pkt: PacketBuf,
    pool: &mut BufPool,
    icmp_out: &mut Vec<PacketBuf>,
) -> Option<PacketBuf> {
    match wire::decrement_ttl(pkt.bytes_mut()) {
        Some(wire::Hop::Forwarded) => Some(pkt),
        Some(wire::Hop::Expired) => {
            let dst = wire::parse_ip(pkt.bytes()).map(|i| i.dst);
            let v4 = pkt.bytes()[0] >> 4 == 4;
            let (s4, s6) = match dst {
                Some(d) => (icmp_source_v4(ctx, sa, d), icmp_source_v6(ctx, sa, d)),
                None => (Ipv4Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED),
            };
            let _ = icmp_reply(
                sa,
                ctx,
                now,
                pkt,
                pool,
                icmp_out,
                DropReason::TtlExceeded,
                |orig, b| {
                    if v4 {
                        frag::icmpv4_time_exceeded(orig, s4, b)
                    } else {
                        frag::icmpv6_time_exceeded(orig, s6, b)
                    }
                },
            );
            None
        }
        None => {
            sa.counters.drop(DropReason::Malformed);
            pool.put(pkt);
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn icmp_reply(
    sa: &mut OutboundSa,
    ctx: &mut OutboundCtx,
    now: f64,
    pkt: PacketBuf,
    pool: &mut BufPool,
    icmp_out: &mut Vec<PacketBuf>,
    reason: DropReason,
    build: impl FnOnce(&[u8], &mut PacketBuf) -> Result<(), DropReason>,
) -> Protected {
    sa.counters.drop(reason);
    if !ctx.icmp_limit.allow(now) {
        sa.counters.drop(DropReason::IcmpRateLimited);
        pool.put(pkt);
        return Protected::Dropped(reason);
    }
    let mut b = pool.get();
    let r = build(pkt.bytes(), &mut b);
    pool.put(pkt);
    match r {
        Ok(()) => {
            sa.counters.icmp_sent += 1;
            icmp_out.push(b);
            Protected::DroppedWithIcmp(reason)
        }
        Err(_) => {
            pool.put(b);
            Protected::Dropped(reason)
        }
    }
}

/// Outcome of [`unprotect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unprotected {
    /// `pkt` holds a complete inner packet to forward.
    Inner,
    /// An inner fragment was taken by the reassembler; nothing to forward yet.
    Held,
}

/// Decrypts one ESP packet (`pkt` starts at the ESP header) and, when the inner packet is a
/// fragment, feeds the reassembler; the reassembled packet replaces `pkt`'s content.
pub fn unprotect(
    sa: &mut InboundSa,
    reasm: &mut Reassembler,
    now: f64,
    pkt: &mut PacketBuf,
) -> Result<Unprotected, DropReason> {
    esp::decapsulate(sa, pkt)?;
    finish_inbound(sa, Some(reasm), now, pkt)
}

/// The inbound steps after decapsulation (reassembly, MSS clamp), shared by the burst path.
/// With `reasm` None, inner fragments are forwarded as they are (a gateway in front of hosts
/// that reassemble, as a router would); with a reassembler they are joined first.
pub fn finish_inbound(
    sa: &mut InboundSa,
    reasm: Option<&mut Reassembler>,
    now: f64,
    pkt: &mut PacketBuf,
) -> Result<Unprotected, DropReason> {
    if let Some(p) = &sa.policy {
        // RFC 4301 section 5.2: the inner addresses must match the SA's selectors (every
        // fragment carries them, so this holds before reassembly too).
        let ok = wire::parse_ip(pkt.bytes()).is_some_and(|ip| p.allows(ip.src, ip.dst));
        if !ok {
            sa.counters.drop(DropReason::PolicyMismatch);
            return Err(DropReason::PolicyMismatch);
        }
    }
    if let Some(reasm) = reasm
        && frag::is_fragment(pkt.bytes())
    {
        // Capacity 0: nothing is allocated unless the datagram completes.
        let mut whole = PacketBuf::with_capacity(0);
        match reasm.insert(now, pkt.bytes(), &mut whole) {
            Ok(false) => return Ok(Unprotected::Held),
            Ok(true) => {
                *pkt = whole;
                sa.counters.reassembled += 1;
            }
            Err(r) => {
                sa.counters.drop(r);
                return Err(r);
            }
        }
    }
    if sa.cfg.mss_clamp {
        let mtu = sa.cfg.inner_mtu();
        let v4 = pkt.bytes().first().is_some_and(|b| b >> 4 == 4);
        let mss = if v4 {
            crate::mtu::mss_ipv4(mtu)
        } else {
            crate::mtu::mss_ipv6(mtu)
        } as u16;
        if let MssClamp::Clamped(..) = wire::clamp_mss(pkt.bytes_mut(), mss) {
            sa.counters.mss_clamped += 1;
        }
    }
    Ok(Unprotected::Inner)
}
