//! Security associations: the static `[[sa]]` file format (a stable contract for rigs and
//! tests), its validation, and the per-direction runtime state.
//!
//! Contract: [`load_sa_file`] / [`parse_sa_toml`] reject a bad file with every error at once,
//! each naming the file, the SA, the key, the value and what is allowed. An [`OutboundSa`]
//! owns its sequence counter and an [`InboundSa`] its replay window: one writer per SA.
//! Key material is held in `Zeroizing` buffers and never printed by `Debug`.

use crate::counters::Counters;
use crate::crypto::{Backend, Encryption, EspTransform, Integrity, Suite, new_transform};
use crate::mtu::{self, OuterFamily};
use crate::replay::{self, ReplayWindow};
use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit, array::Array};
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sa: Vec<RawSa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    name: Option<String>,
    direction: Option<String>,
    spi: Option<i64>,
    encryption: Option<String>,
    integrity: Option<String>,
    enc_key: Option<String>,
    int_key: Option<String>,
    tunnel_src: Option<String>,
    tunnel_dst: Option<String>,
    nat_t: Option<bool>,
    natt_sport: Option<i64>,
    natt_dport: Option<i64>,
    esn: Option<bool>,
    replay_window: Option<i64>,
    seq: Option<i64>,
    df_policy: Option<String>,
    mss_clamp: Option<bool>,
    inner_mtu: Option<i64>,
    soft_seq_percent: Option<i64>,
}

/// All the errors of one file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads and validates a static SA file.
pub fn load_sa_file(path: &Path) -> Result<Vec<SaConfig>, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse_sa_toml(&text, &path.display().to_string())
}

fn hex_key(v: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let s: String = v
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let s = s.strip_prefix("0x").unwrap_or(&s);
    hex::decode(s)
        .map(Zeroizing::new)
        .map_err(|_| "is not a hex string".to_string())
}

/// Parses and validates SA TOML text; `origin` names the file in messages.
pub fn parse_sa_toml(text: &str, origin: &str) -> Result<Vec<SaConfig>, ConfigErrors> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("{origin}: {e}")]))?;
    let mut errs = vec![];
    let mut out = vec![];
    if raw.sa.is_empty() {
        errs.push(format!("{origin}: no [[sa]] tables"));
    }
    for (i, r) in raw.sa.into_iter().enumerate() {
        let label = match &r.name {
            Some(n) => format!("{origin}: sa[{i}] \"{n}\""),
            None => format!("{origin}: sa[{i}]"),
        };
        let mut e = |key: &str, msg: String| errs.push(format!("{label}: {key}: {msg}"));
        let name = r.name.clone().unwrap_or_else(|| format!("sa{i}"));
        let direction = match r.direction.as_deref() {
            Some("out") => Some(Direction::Out),
            Some("in") => Some(Direction::In),
            Some(v) => {
                e(
                    "direction",
                    format!("{v:?} is not allowed; allowed: \"out\", \"in\""),
                );
                None
            }
            None => {
                e("direction", "missing; allowed: \"out\", \"in\"".into());
                None
            }
        };
        let spi = match r.spi {
            Some(v) if (256..=u32::MAX as i64).contains(&v) => Some(v as u32),
            Some(v) => {
                e(
                    "spi",
                    format!(
                        "{v:#x} is out of range; allowed: 0x100..=0xffffffff (1..255 are reserved, RFC 4303 section 2.1)"
                    ),
                );
                None
            }
            None => {
                e("spi", "missing; an integer such as 0x0a0b0c0d".into());
                None
            }
        };
        let enc = match r.encryption.as_deref().map(str::parse::<Encryption>) {
            Some(Ok(x)) => Some(x),
            Some(Err(m)) => {
                e("encryption", m);
                None
            }
            None => {
                e(
                    "encryption",
                    "missing; allowed: aes128-gcm16, aes256-gcm16, aes128-cbc, aes256-cbc".into(),
                );
                None
            }
        };
        let integ = match r.integrity.as_deref().map(str::parse::<Integrity>) {
            Some(Ok(x)) => Some(x),
            Some(Err(m)) => {
                e("integrity", m);
                None
            }
            None => {
                e(
                    "integrity",
                    "missing; allowed: none (GCM), sha1-96, sha256-128, sha384-192, sha512-256"
                        .into(),
                );
                None
            }
        };
        let suite = match (enc, integ) {
            (Some(a), Some(b)) => match Suite::new(a, b) {
                Ok(s) => Some(s),
                Err(m) => {
                    e("integrity", m);
                    None
                }
            },
            _ => None,
        };
        let enc_key = match r.enc_key.as_deref().map(hex_key) {
            Some(Ok(k)) => Some(k),
            Some(Err(m)) => {
                e("enc_key", m);
                None
            }
            None => {
                e("enc_key", "missing; hex".into());
                None
            }
        };
        let int_key = match r.int_key.as_deref().map(hex_key) {
            Some(Ok(k)) => Some(k),
            Some(Err(m)) => {
                e("int_key", m);
                None
            }
            None => Some(Zeroizing::new(vec![])),
        };
        if let (Some(s), Some(k)) = (suite, &enc_key)
            && k.len() != s.enc.enc_key_len()
        {
            let what = if s.enc.is_gcm() {
                "key followed by the 4-byte salt"
            } else {
                "the AES key"
            };
            e(
                "enc_key",
                format!(
                    "{} bytes is the wrong length for {}; allowed: {} bytes ({what})",
                    k.len(),
                    s.enc.name(),
                    s.enc.enc_key_len()
                ),
            );
        }
        if let (Some(s), Some(k)) = (suite, &int_key)
            && k.len() != s.integ.key_len()
        {
            let allowed = if s.integ == Integrity::None {
                "none (GCM takes no int_key)".to_string()
            } else {
                format!("{} bytes", s.integ.key_len())
            };
            e(
                "int_key",
                format!(
                    "{} bytes is the wrong length for {}; allowed: {allowed}",
                    k.len(),
                    s.integ.name()
                ),
            );
        }
        let mut addr = |key: &str, v: &Option<String>| match v.as_deref().map(str::parse::<IpAddr>)
        {
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                e(
                    key,
                    format!(
                        "{:?} is not an IPv4 or IPv6 address",
                        v.as_deref().unwrap_or("")
                    ),
                );
                None
            }
            None => {
                e(key, "missing; an IPv4 or IPv6 address".into());
                None
            }
        };
        let src = addr("tunnel_src", &r.tunnel_src);
        let dst = addr("tunnel_dst", &r.tunnel_dst);
        if let (Some(a), Some(b)) = (src, dst)
            && a.is_ipv4() != b.is_ipv4()
        {
            e(
                "tunnel_dst",
                format!("{b} is not the same address family as tunnel_src {a}"),
            );
        }
        let mut port = |key: &str, v: Option<i64>| match v {
            None => 4500u16,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                e(key, format!("{p} is out of range; allowed: 1..=65535"));
                4500
            }
        };
        let natt_sport = port("natt_sport", r.natt_sport);
        let natt_dport = port("natt_dport", r.natt_dport);
        let esn = r.esn.unwrap_or(false);
        let replay_window = match r.replay_window {
            None => replay::DEFAULT_WINDOW,
            Some(w) if (replay::MIN_WINDOW as i64..=replay::MAX_WINDOW as i64).contains(&w) => {
                w as u32
            }
            Some(w) => {
                e(
                    "replay_window",
                    format!("{w} is out of range; allowed: 64..=2048"),
                );
                replay::DEFAULT_WINDOW
            }
        };
        let max_seq: i64 = if esn { i64::MAX } else { u32::MAX as i64 };
        let seq = match r.seq {
            None => 1,
            Some(s) if (1..=max_seq).contains(&s) => s as u64,
            Some(s) => {
                e(
                    "seq",
                    format!("{s} is out of range; allowed: 1..={max_seq}"),
                );
                1
            }
        };
        let df_policy = match r.df_policy.as_deref() {
            None | Some("clear") => DfPolicy::Clear,
            Some("honor") => DfPolicy::Honor,
            Some(v) => {
                e(
                    "df_policy",
                    format!("{v:?} is not allowed; allowed: \"clear\", \"honor\""),
                );
                DfPolicy::Clear
            }
        };
        let inner_mtu = match r.inner_mtu {
            None => None,
            Some(m) if (1280..=1446).contains(&m) => Some(m as usize),
            Some(m) => {
                e(
                    "inner_mtu",
                    format!("{m} is out of range; allowed: 1280..=1446 (presets 1399, 1436)"),
                );
                None
            }
        };
        let soft_seq_percent = match r.soft_seq_percent {
            None => 90,
            Some(p) if (1..=99).contains(&p) => p as u8,
            Some(p) => {
                e(
                    "soft_seq_percent",
                    format!("{p} is out of range; allowed: 1..=99"),
                );
                90
            }
        };
        if let (
            Some(direction),
            Some(spi),
            Some(suite),
            Some(enc_key),
            Some(int_key),
            Some(src),
            Some(dst),
        ) = (direction, spi, suite, enc_key, int_key, src, dst)
        {
            out.push(SaConfig {
                name,
                direction,
                spi,
                suite,
                enc_key,
                int_key,
                tunnel_src: src,
                tunnel_dst: dst,
                nat_t: r.nat_t.unwrap_or(false),
                natt_sport,
                natt_dport,
                esn,
                replay_window,
                seq,
                df_policy,
                mss_clamp: r.mss_clamp.unwrap_or(true),
                inner_mtu,
                soft_seq_percent,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out {
        if s.direction == Direction::In && !seen.insert(s.spi) {
            errs.push(format!("{origin}: sa \"{}\": spi: {:#010x} is used by another \"in\" SA; inbound SPIs must be unique", s.name, s.spi));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errs))
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
    use crate::replay::ReplayWindow;

    const GOOD: &str = r#"
[[sa]]
name = "t1-out"
direction = "out"
spi = 0x0a0b0c0d
encryption = "aes128-gcm16"
integrity = "none"
enc_key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"

[[sa]]
name = "t1-in"
direction = "in"
spi = 0x01020304
encryption = "aes256-cbc"
integrity = "sha512-256"
enc_key = "000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"
int_key = "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
tunnel_src = "2001:db8::2"
tunnel_dst = "2001:db8::1"
nat_t = true
esn = true
replay_window = 64
"#;

    /// A reload that rebuilds an SA with the same keys keeps its sequence counter (so GCM
    /// nonces never repeat) and its replay window; new keys start afresh. A persisted mark
    /// stops the SA (seq_not_persisted) until it is raised.
    #[test]
    fn same_keys_carry_the_sequence_state_over_and_the_mark_stops_the_sa() {
        let v = parse_sa_toml(GOOD, "good.toml").unwrap();
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

    /// RFC 4301 section 5.2: an inbound SA delivers only its selectors' addresses (CIDR
    /// ranges from `Cidr::range`, as the IKE selectors have).
    #[test]
    fn inner_policy_ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            crate::config::Cidr {
                addr: ip("10.2.0.77"),
                len: 24
            }
            .range(),
            (ip("10.2.0.0"), ip("10.2.0.255"))
        );
        assert_eq!(
            crate::config::Cidr {
                addr: ip("10.2.0.77"),
                len: 0
            }
            .range(),
            (ip("0.0.0.0"), ip("255.255.255.255"))
        );
        assert_eq!(
            crate::config::Cidr {
                addr: ip("fd00:2::9"),
                len: 64
            }
            .range(),
            (ip("fd00:2::"), ip("fd00:2::ffff:ffff:ffff:ffff"))
        );
        let p = InnerPolicy {
            src: vec![
                crate::config::Cidr {
                    addr: ip("10.2.0.0"),
                    len: 24,
                }
                .range(),
            ],
            dst: vec![
                crate::config::Cidr {
                    addr: ip("10.1.0.0"),
                    len: 24,
                }
                .range(),
            ],
        };
        assert!(p.allows(ip("10.2.0.2"), ip("10.1.0.2")));
        assert!(!p.allows(ip("10.3.0.2"), ip("10.1.0.2")), "spoofed source");
        assert!(
            !p.allows(ip("10.2.0.2"), ip("10.9.0.2")),
            "other tunnel's network"
        );
        assert!(!p.allows(ip("fd00:2::2"), ip("10.1.0.2")), "other family");
        let mut inb = InboundSa::new(
            parse_sa_toml(GOOD, "g").unwrap()[1].clone(),
            Backend::RustCrypto,
        )
        .unwrap();
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
        let v = parse_sa_toml(GOOD, "good.toml").unwrap();
        for k in 0..=255u8 {
            let mut seed = [k; 32];
            seed[31] = k.wrapping_add(1);
            let sa = OutboundSa::new(v[0].clone(), Backend::RustCrypto, &seed).unwrap();
            assert_ne!(sa.ip_id, u16::from_le_bytes([seed[0], seed[31]]));
        }
    }

    #[test]
    fn parses_good_file() {
        let v = parse_sa_toml(GOOD, "good.toml").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].spi, 0x0a0b0c0d);
        assert_eq!(v[0].inner_mtu(), 1446);
        assert_eq!(v[1].replay_window, 64);
        assert!(
            !format!("{:?}", v[1]).contains("000102"),
            "Debug must not print keys"
        );
    }

    #[test]
    fn every_error_named() {
        let bad = GOOD
            .replace("aes128-gcm16", "aes128-gcm8")
            .replace("replay_window = 64", "replay_window = 4096")
            .replace("\"2001:db8::1\"", "\"192.0.2.9\"");
        let e = parse_sa_toml(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "bad.toml: sa[0] \"t1-out\": encryption: unknown encryption \"aes128-gcm8\""
            ),
            "{e}"
        );
        assert!(
            e.contains("sa[1] \"t1-in\": replay_window: 4096 is out of range; allowed: 64..=2048"),
            "{e}"
        );
        assert!(e.contains("tunnel_dst"), "{e}");
    }

    #[test]
    fn key_length_errors() {
        let bad = GOOD.replace("0c0d0e0f10111213\"", "0c0d0e0f\"");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(
            e.contains("enc_key: 16 bytes is the wrong length for aes128-gcm16; allowed: 20 bytes"),
            "{e}"
        );
        let bad = GOOD.replace("integrity = \"none\"", "integrity = \"sha1-96\"");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(e.contains("integrity must be \"none\""), "{e}");
    }

    #[test]
    fn unknown_key_rejected() {
        let bad = GOOD.replace("esn = true", "esn = true\nreplay_windw = 5");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(e.contains("replay_windw"), "{e}");
    }

    #[test]
    fn seq_never_wraps() {
        let mut cfg = parse_sa_toml(GOOD, "f").unwrap().remove(0);
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
