//! Security associations: a validated SA's parameters ([`SaConfig`], built by the daemon's
//! static-file parser or its IKE shell) and the per-direction runtime state.
//!
//! Contract: an [`OutboundSa`]
//! owns its sequence counter and an [`InboundSa`] its replay window: one writer per SA.
//! Key material is held in `Zeroizing` buffers and never printed by `Debug`.

use crate::counters::Counters;
use crate::crypto::{Backend, EspTransform, Suite, new_transform};
use crate::mtu::{self, OuterFamily};
use crate::replay::{self, ReplayWindow};
use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit, array::Array};
use std::fmt;
use std::net::IpAddr;
use zeroize::Zeroizing;

/// Direction of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Encrypt: inner packets in, ESP out.
    Out,
    /// Decrypt: ESP in, inner packets out.
    In,
}

/// What to do with an inner IPv4 packet above the inner MTU that has DF set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DfPolicy {
    /// Clear DF and fragment before encryption (AWS's recommendation; the default).
    Clear,
    /// Drop and answer ICMP Fragmentation Needed with the inner MTU.
    Honor,
}

/// A validated SA.
#[derive(Clone)]
pub struct SaConfig {
    pub name: String,
    pub direction: Direction,
    pub spi: u32,
    pub suite: Suite,
    pub enc_key: Zeroizing<Vec<u8>>,
    pub int_key: Zeroizing<Vec<u8>>,
    pub tunnel_src: IpAddr,
    pub tunnel_dst: IpAddr,
    pub nat_t: bool,
    /// UDP ports for NAT-T (both 4500 unless a NAT rewrote the peer's).
    pub natt_sport: u16,
    pub natt_dport: u16,
    pub esn: bool,
    pub replay_window: u32,
    /// First sequence number to send (out SAs).
    pub seq: u64,
    pub df_policy: DfPolicy,
    /// Rewrite TCP MSS on SYN / SYN-ACK (on by default).
    pub mss_clamp: bool,
    /// Inner MTU override (e.g. 1399 or 1436 presets); never above the computed value.
    pub inner_mtu: Option<usize>,
    /// Fraction of the sequence space after which a soft-limit event (rekey request) fires.
    pub soft_seq_percent: u8,
}

impl fmt::Debug for SaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaConfig")
            .field("name", &self.name)
            .field("direction", &self.direction)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &format_args!("{}", self.suite))
            .field("keys", &"<redacted>")
            .field("tunnel_src", &self.tunnel_src)
            .field("tunnel_dst", &self.tunnel_dst)
            .field("nat_t", &self.nat_t)
            .field("esn", &self.esn)
            .finish_non_exhaustive()
    }
}

impl SaConfig {
    /// An SA with the defaults of the static file for every optional key: raw ESP (no
    /// NAT-T), no ESN, replay window 1024, first sequence number 1, `df_policy = "clear"`,
    /// MSS clamping on, computed inner MTU, soft limit at 90%.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        direction: Direction,
        spi: u32,
        suite: Suite,
        enc_key: Vec<u8>,
        int_key: Vec<u8>,
        tunnel_src: IpAddr,
        tunnel_dst: IpAddr,
    ) -> SaConfig {
        SaConfig {
            name: name.into(),
            direction,
            spi,
            suite,
            enc_key: Zeroizing::new(enc_key),
            int_key: Zeroizing::new(int_key),
            tunnel_src,
            tunnel_dst,
            nat_t: false,
            natt_sport: 4500,
            natt_dport: 4500,
            esn: false,
            replay_window: replay::DEFAULT_WINDOW,
            seq: 1,
            df_policy: DfPolicy::Clear,
            mss_clamp: true,
            inner_mtu: None,
            soft_seq_percent: 90,
        }
    }

    /// The peer's view of this SA: the other direction, tunnel addresses swapped, same SPI,
    /// keys and options.
    pub fn mirrored(&self) -> SaConfig {
        let mut m = self.clone();
        m.direction = if self.direction == Direction::Out {
            Direction::In
        } else {
            Direction::Out
        };
        std::mem::swap(&mut m.tunnel_src, &mut m.tunnel_dst);
        m
    }

    pub fn outer_family(&self) -> OuterFamily {
        if self.tunnel_src.is_ipv4() {
            OuterFamily::V4
        } else {
            OuterFamily::V6
        }
    }
    /// The SA's inner MTU: the formula for its transform and NAT-T state, capped at 1446,
    /// lowered further by an override.
    pub fn inner_mtu(&self) -> usize {
        let m = mtu::inner_mtu(self.suite, self.nat_t, self.outer_family());
        self.inner_mtu.map_or(m, |o| o.min(m))
    }
}

/// Unpredictable CBC IVs (RFC 3602 section 3): a counter encrypted under a random per-SA
/// AES key, the construction of NIST SP 800-38A Appendix C. One AES block per packet, no
/// syscall; the key comes from the RNG the caller passes at SA creation.
pub struct IvGen {
    key: Aes128,
    ctr: u128,
}

impl IvGen {
    pub fn new(seed: &[u8; 32]) -> Self {
        IvGen {
            key: Aes128::new_from_slice(&seed[..16]).expect("16 bytes"),
            ctr: u128::from_le_bytes(seed[16..32].try_into().expect("16 bytes")),
        }
    }
    /// A 16-bit value for the outer IPv4 ID counter's start: AES output under the IV key
    /// for a block the IV counter never reaches first, so no key or seed byte reaches the
    /// wire.
    pub fn id_seed(&self) -> u16 {
        let mut b = Array::from(u128::MAX.wrapping_sub(self.ctr).to_le_bytes());
        self.key.encrypt_block(&mut b);
        u16::from_le_bytes([b[0], b[1]])
    }
    #[inline]
    pub fn next(&mut self, out: &mut [u8]) {
        self.ctr = self.ctr.wrapping_add(1);
        let mut b = Array::from(self.ctr.to_le_bytes());
        self.key.encrypt_block(&mut b);
        out.copy_from_slice(&b[..out.len()]);
    }
}

/// What the sequence counter allows for the next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqState {
    Ok,
    /// Past the soft threshold: the control plane should rekey (reported once).
    SoftLimit,
}

/// The hot state of an outbound SA: transform, sequence counter, IV generator, precomputed
/// sizes, counters. Owned by one worker.
pub struct OutboundSa {
    pub cfg: SaConfig,
    pub transform: Box<dyn EspTransform>,
    next_seq: u64,
    max_seq: u64,
    /// Highest sequence number that may be sent: the write-ahead mark persisted by the
    /// control thread for static SAs (u64::MAX: no persistence).
    seq_limit: u64,
    soft_seq: u64,
    soft_reported: bool,
    pub(crate) iv: IvGen,
    pub(crate) ip_id: u16,
    pub inner_mtu: usize,
    pub counters: Counters,
    /// What every packet shares, computed once from `cfg` (whose suite, addresses and
    /// ports are fixed for the SA's life).
    pub(crate) layout: Layout,
}

/// Per-SA constants of encapsulation, so the per-packet path reads fields instead of
/// matching on the suite and address family, and copies a prebuilt outer header (VPP and
/// DPDK lib/ipsec keep the same template per SA).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Ciphertext alignment (4 for GCM, 16 for CBC), ICV and IV lengths.
    pub block: usize,
    pub icv: usize,
    pub iv: usize,
    pub gcm: bool,
    /// Outer header bytes in front of ESP: IP, plus UDP under NAT-T.
    pub outer: usize,
    /// IPv4 outer: IP header (+ UDP) with total length, identification, header checksum
    /// and UDP length zero; `v4_sum` is the ones' complement sum (unfolded) of the IP
    /// header's other 16-bit words.
    pub v4: Option<[u8; 28]>,
    pub v4_sum: u32,
}

impl Layout {
    pub(crate) fn new(cfg: &SaConfig) -> Self {
        let nat = if cfg.nat_t { crate::wire::UDP_HDR } else { 0 };
        let outer = cfg.outer_family().header_len() + nat;
        let (mut v4, mut v4_sum) = (None, 0);
        if let (IpAddr::V4(src), IpAddr::V4(dst)) = (cfg.tunnel_src, cfg.tunnel_dst) {
            let mut h = [0u8; 28];
            let proto = if cfg.nat_t {
                crate::wire::proto::UDP
            } else {
                crate::wire::proto::ESP
            };
            // Don't Fragment: fragmentation happens before encryption (mtu.md).
            crate::wire::write_ipv4_header(&mut h, 0, 0, true, 64, proto, src, dst);
            h[10..12].fill(0);
            if cfg.nat_t {
                crate::wire::write_udp_header(&mut h[20..], cfg.natt_sport, cfg.natt_dport, 0);
            }
            v4_sum = h[..20]
                .chunks_exact(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            v4 = Some(h);
        }
        Layout {
            block: cfg.suite.block(),
            icv: cfg.suite.icv_len(),
            iv: cfg.suite.iv_len(),
            gcm: cfg.suite.enc.is_gcm(),
            outer,
            v4,
            v4_sum,
        }
    }
}

impl fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSa")
            .field("cfg", &self.cfg)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// Builds the SA; `seed` comes from the caller's RNG (OS randomness in the shell).
    pub fn new(
        cfg: SaConfig,
        backend: Backend,
        seed: &[u8; 32],
    ) -> Result<Self, crate::crypto::KeyError> {
        let transform = new_transform(backend, cfg.suite, &cfg.enc_key, &cfg.int_key)?;
        let max_seq = if cfg.esn { u64::MAX } else { u32::MAX as u64 };
        let soft_seq = (max_seq / 100).saturating_mul(cfg.soft_seq_percent as u64);
        let iv = IvGen::new(seed);
        Ok(OutboundSa {
            next_seq: cfg.seq,
            max_seq,
            seq_limit: u64::MAX,
            soft_seq,
            soft_reported: false,
            ip_id: iv.id_seed(),
            iv,
            inner_mtu: cfg.inner_mtu(),
            layout: Layout::new(&cfg),
            transform,
            cfg,
            counters: Counters::default(),
        })
    }
    /// Reserves the next sequence number. `Err` once the space is exhausted: a sequence
    /// number never wraps (RFC 4303 section 3.3.3); the SA must be rekeyed.
    #[inline]
    pub fn reserve_seq(&mut self) -> Result<(u64, SeqState), crate::counters::DropReason> {
        let s = self.next_seq;
        if s > self.max_seq || s == 0 {
            return Err(crate::counters::DropReason::SeqExhausted);
        }
        if s > self.seq_limit {
            return Err(crate::counters::DropReason::SeqNotPersisted);
        }
        self.next_seq = s.wrapping_add(1);
        if s >= self.soft_seq && !self.soft_reported {
            self.soft_reported = true;
            self.counters.soft_limit_events += 1;
            return Ok((s, SeqState::SoftLimit));
        }
        Ok((s, SeqState::Ok))
    }
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    /// Starts sending at `seq` (a persisted mark after a restart); never goes back.
    pub fn advance_to(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }
    pub fn seq_limit(&self) -> u64 {
        self.seq_limit
    }
    /// Sets the highest sequence number that may be sent (the persisted write-ahead mark).
    pub fn set_seq_limit(&mut self, limit: u64) {
        self.seq_limit = limit;
    }
    /// Whether `other` is the same SA with the same keys (a reload that changed another
    /// field): then its sequence counter must carry over, or GCM nonces would repeat.
    pub fn same_keys(&self, other: &SaConfig) -> bool {
        same_keys(&self.cfg, other)
    }
    /// Takes over the sequence state of `old` when it is the same SA with the same keys
    /// (RFC 4106 section 8: a (key, IV) pair is never used twice).
    pub fn continue_from(&mut self, old: &OutboundSa) {
        if old.same_keys(&self.cfg) {
            self.next_seq = self.next_seq.max(old.next_seq);
            // Keep the larger reservation (a reload may already have written a new one).
            self.seq_limit = if self.seq_limit == u64::MAX {
                old.seq_limit
            } else {
                self.seq_limit.max(old.seq_limit)
            };
            self.soft_reported |= old.soft_reported;
        }
    }
    pub fn mss_ipv4(&self) -> u16 {
        mtu::mss_ipv4(self.inner_mtu) as u16
    }
    pub fn mss_ipv6(&self) -> u16 {
        mtu::mss_ipv6(self.inner_mtu) as u16
    }
}

/// The hot state of an inbound SA: transform, replay window, counters. Owned by one worker.
pub struct InboundSa {
    pub cfg: SaConfig,
    pub transform: Box<dyn EspTransform>,
    pub replay: ReplayWindow,
    pub counters: Counters,
    /// The inner addresses this SA may carry (None: any, as the `espd pcap` tools).
    pub policy: Option<InnerPolicy>,
}

/// The inner addresses an inbound SA may deliver (RFC 4301 section 5.2: a decrypted packet
/// must match the SA's selectors, or a peer could inject traffic for other tunnels):
/// sources in the peer's ranges, destinations in ours. Inclusive address ranges (an IKE
/// traffic selector, or a CIDR).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InnerPolicy {
    pub src: Vec<(IpAddr, IpAddr)>,
    pub dst: Vec<(IpAddr, IpAddr)>,
}

fn addr_bits(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

impl InnerPolicy {
    fn within(a: IpAddr, ranges: &[(IpAddr, IpAddr)]) -> bool {
        let (v6, x) = addr_bits(a);
        ranges.iter().any(|&(lo, hi)| {
            let ((v6l, l), (v6h, h)) = (addr_bits(lo), addr_bits(hi));
            v6l == v6 && v6h == v6 && l <= x && x <= h
        })
    }

    /// Whether a decrypted packet from `src` to `dst` may be delivered.
    pub fn allows(&self, src: IpAddr, dst: IpAddr) -> bool {
        Self::within(src, &self.src) && Self::within(dst, &self.dst)
    }
}

impl fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSa")
            .field("cfg", &self.cfg)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// The same SA (direction, SPI, suite) with the same keys and sequence space.
fn same_keys(a: &SaConfig, b: &SaConfig) -> bool {
    a.direction == b.direction
        && a.spi == b.spi
        && a.suite == b.suite
        && a.esn == b.esn
        && *a.enc_key == *b.enc_key
        && *a.int_key == *b.int_key
}

impl InboundSa {
    /// Takes over the replay state of `old` when it is the same SA with the same keys, so
    /// a reload does not make recorded traffic acceptable again.
    pub fn continue_from(&mut self, old: &InboundSa) {
        if same_keys(&self.cfg, &old.cfg) {
            self.replay = if old.replay.window() == self.replay.window() {
                old.replay.clone()
            } else {
                ReplayWindow::resume(self.replay.window(), self.cfg.esn, old.replay.top())
            };
        }
    }

    pub fn new(cfg: SaConfig, backend: Backend) -> Result<Self, crate::crypto::KeyError> {
        let transform = new_transform(backend, cfg.suite, &cfg.enc_key, &cfg.int_key)?;
        Ok(InboundSa {
            replay: ReplayWindow::new(cfg.replay_window, cfg.esn),
            transform,
            cfg,
            counters: Counters::default(),
            policy: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Encryption, Integrity};
    use crate::replay::ReplayWindow;

    /// The two SAs of the static-file example (`espd::static_sa`'s tests parse the same text).
    fn good() -> Vec<SaConfig> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let out = SaConfig::new(
            "t1-out",
            Direction::Out,
            0x0a0b_0c0d,
            Suite {
                enc: Encryption::Aes128Gcm16,
                integ: Integrity::None,
            },
            (0..20).collect(),
            vec![],
            ip("192.0.2.1"),
            ip("192.0.2.2"),
        );
        let mut inb = SaConfig::new(
            "t1-in",
            Direction::In,
            0x0102_0304,
            Suite {
                enc: Encryption::Aes256Cbc,
                integ: Integrity::Sha512_256,
            },
            (0..16).chain(0..16).collect(),
            vec![0; 64],
            ip("2001:db8::2"),
            ip("2001:db8::1"),
        );
        inb.nat_t = true;
        inb.esn = true;
        inb.replay_window = 64;
        vec![out, inb]
    }

    /// A reload that rebuilds an SA with the same keys keeps its sequence counter (so GCM
    /// nonces never repeat) and its replay window; new keys start afresh. A persisted mark
    /// stops the SA (seq_not_persisted) until it is raised.
    #[test]
    fn same_keys_carry_the_sequence_state_over_and_the_mark_stops_the_sa() {
        let v = good();
        let mut old = OutboundSa::new(v[0].clone(), Backend::RustCrypto, &[1; 32]).unwrap();
        for _ in 0..10 {
            old.reserve_seq().unwrap();
        }
        let mut changed = v[0].clone();
        changed.df_policy = DfPolicy::Honor;
        let mut new = OutboundSa::new(changed.clone(), Backend::RustCrypto, &[2; 32]).unwrap();
        new.continue_from(&old);
        assert_eq!(new.next_seq(), 11);
        changed.enc_key = Zeroizing::new(vec![9; 20]);
        let mut rekeyed = OutboundSa::new(changed, Backend::RustCrypto, &[3; 32]).unwrap();
        rekeyed.continue_from(&old);
        assert_eq!(rekeyed.next_seq(), 1);
        new.set_seq_limit(12);
        assert!(new.reserve_seq().is_ok());
        assert!(new.reserve_seq().is_ok());
        assert_eq!(
            new.reserve_seq(),
            Err(crate::counters::DropReason::SeqNotPersisted)
        );
        new.set_seq_limit(100);
        assert_eq!(new.reserve_seq().map(|x| x.0), Ok(13));

        let mut inb = InboundSa::new(v[1].clone(), Backend::RustCrypto).unwrap();
        for s in [5, 7, 9] {
            inb.replay.commit(s).unwrap();
        }
        let mut again = InboundSa::new(v[1].clone(), Backend::RustCrypto).unwrap();
        again.continue_from(&inb);
        assert!(again.replay.check(7).is_err() && again.replay.check(8).is_ok());
        let mut wider = v[1].clone();
        wider.replay_window = 128;
        let mut w = InboundSa::new(wider, Backend::RustCrypto).unwrap();
        w.continue_from(&inb);
        assert!(
            w.replay.check(8).is_err(),
            "a resumed window counts all up to top as seen"
        );
        assert!(w.replay.check(10).is_ok());
        // The numbers after the resumed top are accepted once, in order or not.
        for top in [9u64, 63, 64, 127, 1000] {
            let mut r = ReplayWindow::resume(1024, false, top);
            for s in [top + 2, top + 1, top + 3] {
                let seq = r.check(s as u32).unwrap();
                r.commit(seq).unwrap();
            }
            assert!(r.check(top as u32).is_err() && r.check(top as u32 + 1).is_err());
        }
    }

    /// RFC 4301 section 5.2: an inbound SA delivers only its selectors' addresses
    /// (inclusive ranges, as an IKE selector or `espd::config::Cidr::range` gives them).
    #[test]
    fn inner_policy_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = InnerPolicy {
            src: vec![(ip("10.2.0.0"), ip("10.2.0.255"))],
            dst: vec![(ip("10.1.0.0"), ip("10.1.0.255"))],
        };
        assert!(p.allows(ip("10.2.0.2"), ip("10.1.0.2")));
        assert!(!p.allows(ip("10.3.0.2"), ip("10.1.0.2")), "spoofed source");
        assert!(
            !p.allows(ip("10.2.0.2"), ip("10.9.0.2")),
            "other tunnel's network"
        );
        assert!(!p.allows(ip("fd00:2::2"), ip("10.1.0.2")), "other family");
        let mut inb = InboundSa::new(good()[1].clone(), Backend::RustCrypto).unwrap();
        inb.policy = Some(p);
        let mut pkt = crate::pkt::PacketBuf::new();
        let mut b = vec![0u8; 40];
        crate::wire::write_ipv4_header(
            &mut b,
            40,
            1,
            false,
            64,
            17,
            "10.3.0.2".parse().unwrap(),
            "10.1.0.2".parse().unwrap(),
        );
        pkt.set(&b).unwrap();
        assert_eq!(
            crate::pipeline::finish_inbound(&mut inb, None, 0.0, &mut pkt).err(),
            Some(crate::counters::DropReason::PolicyMismatch)
        );
        assert_eq!(
            inb.counters
                .dropped(crate::counters::DropReason::PolicyMismatch),
            1
        );
    }

    /// The outer IPv4 ID start is not a byte of the seed (which holds the IV key).
    #[test]
    fn ip_id_seed_is_not_a_key_byte() {
        let v = good();
        for k in 0..=255u8 {
            let mut seed = [k; 32];
            seed[31] = k.wrapping_add(1);
            let sa = OutboundSa::new(v[0].clone(), Backend::RustCrypto, &seed).unwrap();
            assert_ne!(sa.ip_id, u16::from_le_bytes([seed[0], seed[31]]));
        }
    }

    #[test]
    fn seq_never_wraps() {
        let mut cfg = good().remove(0);
        cfg.seq = u32::MAX as u64 - 1;
        let mut sa = OutboundSa::new(cfg, Backend::RustCrypto, &[7; 32]).unwrap();
        assert!(sa.reserve_seq().is_ok());
        assert!(sa.reserve_seq().is_ok());
        assert_eq!(
            sa.reserve_seq(),
            Err(crate::counters::DropReason::SeqExhausted)
        );
        assert_eq!(sa.counters.soft_limit_events, 1);
    }
}
