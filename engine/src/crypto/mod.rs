//! ESP transforms behind one trait (RFC 4303 section 3.3.2 / 3.4.4):
//! AES-GCM-16 (RFC 4106) and AES-CBC (RFC 3602) with HMAC-SHA1-96 (RFC 2404) or
//! HMAC-SHA2-256-128 / 384-192 / 512-256 (RFC 4868).
//!
//! Contract: a transform is built once per SA with its keys expanded; afterwards `seal` and
//! `open` work in place on one ESP packet laid out as
//! `SPI(4) | Seq(4) | IV | payload (already padded, trailer included) | ICV`, where the caller
//! has written the header and the IV. `open` verifies the ICV (constant time) *before* it
//! decrypts anything the caller sees and reports failure as `false`, leaving the payload
//! unspecified. With ESN the high 32 bits of the sequence number are authenticated
//! (RFC 4303 section 2.2.1; RFC 4106 section 5). No allocation, no I/O.

pub mod cbc_vaes;
pub mod hmac_ni;
pub mod rust;

#[cfg(espd_ipsec_mb)]
pub mod imb;
#[cfg(espd_ipsec_mb)]
mod ring_gcm;

use std::fmt;
use std::str::FromStr;

/// Encryption algorithm of an ESP SA (names as in the static SA format and the AWS options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encryption {
    Aes128Gcm16,
    Aes256Gcm16,
    Aes128Cbc,
    Aes256Cbc,
}

/// Integrity algorithm of an ESP SA; `None` only with GCM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Integrity {
    None,
    Sha1_96,
    Sha256_128,
    Sha384_192,
    Sha512_256,
}

impl Encryption {
    pub const ALL: [Encryption; 4] = [
        Self::Aes128Gcm16,
        Self::Aes256Gcm16,
        Self::Aes128Cbc,
        Self::Aes256Cbc,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm16 => "aes128-gcm16",
            Self::Aes256Gcm16 => "aes256-gcm16",
            Self::Aes128Cbc => "aes128-cbc",
            Self::Aes256Cbc => "aes256-cbc",
        }
    }
    pub fn is_gcm(self) -> bool {
        matches!(self, Self::Aes128Gcm16 | Self::Aes256Gcm16)
    }
    /// AES key length in bytes (without the GCM salt).
    pub fn aes_key_len(self) -> usize {
        match self {
            Self::Aes128Gcm16 | Self::Aes128Cbc => 16,
            Self::Aes256Gcm16 | Self::Aes256Cbc => 32,
        }
    }
    /// Length of `enc_key` in the SA: GCM carries the 4-byte salt after the key (RFC 4106 section 8.1).
    pub fn enc_key_len(self) -> usize {
        self.aes_key_len() + if self.is_gcm() { 4 } else { 0 }
    }
    pub fn iv_len(self) -> usize {
        if self.is_gcm() { 8 } else { 16 }
    }
    /// Alignment the ciphertext (payload + padding + 2-byte trailer) must reach.
    pub fn block(self) -> usize {
        if self.is_gcm() { 4 } else { 16 }
    }
}

impl Integrity {
    pub const ALL: [Integrity; 5] = [
        Self::None,
        Self::Sha1_96,
        Self::Sha256_128,
        Self::Sha384_192,
        Self::Sha512_256,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sha1_96 => "sha1-96",
            Self::Sha256_128 => "sha256-128",
            Self::Sha384_192 => "sha384-192",
            Self::Sha512_256 => "sha512-256",
        }
    }
    /// Truncated ICV length in bytes.
    pub fn icv_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Sha1_96 => 12,
            Self::Sha256_128 => 16,
            Self::Sha384_192 => 24,
            Self::Sha512_256 => 32,
        }
    }
    /// HMAC key length in bytes (RFC 2404 section 3; RFC 4868 section 2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Self::None => 0,
            Self::Sha1_96 => 20,
            Self::Sha256_128 => 32,
            Self::Sha384_192 => 48,
            Self::Sha512_256 => 64,
        }
    }
}

impl FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown encryption {s:?}; allowed: aes128-gcm16, aes256-gcm16, aes128-cbc, aes256-cbc"))
    }
}

impl FromStr for Integrity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown integrity {s:?}; allowed: none, sha1-96, sha256-128, sha384-192, sha512-256"))
    }
}

/// A valid (encryption, integrity) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Suite {
    pub enc: Encryption,
    pub integ: Integrity,
}

impl Suite {
    /// Checks the pairing: GCM takes no separate integrity, CBC needs one.
    pub fn new(enc: Encryption, integ: Integrity) -> Result<Suite, String> {
        match (enc.is_gcm(), integ) {
            (true, Integrity::None) => Ok(Suite { enc, integ }),
            (true, _) => Err(format!(
                "{} is an AEAD: integrity must be \"none\", not {:?}",
                enc.name(),
                integ.name()
            )),
            (false, Integrity::None) => Err(format!(
                "{} needs an integrity algorithm: one of sha1-96, sha256-128, sha384-192, sha512-256",
                enc.name()
            )),
            (false, _) => Ok(Suite { enc, integ }),
        }
    }
    /// Every valid suite (4 GCM/CBC ciphers; CBC with each of 4 HMACs).
    pub fn all() -> Vec<Suite> {
        let mut v = vec![];
        for e in Encryption::ALL {
            for i in Integrity::ALL {
                if let Ok(s) = Suite::new(e, i) {
                    v.push(s);
                }
            }
        }
        v
    }
    pub fn iv_len(self) -> usize {
        self.enc.iv_len()
    }
    pub fn icv_len(self) -> usize {
        if self.enc.is_gcm() {
            16
        } else {
            self.integ.icv_len()
        }
    }
    pub fn block(self) -> usize {
        self.enc.block()
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enc.is_gcm() {
            f.write_str(self.enc.name())
        } else {
            write!(f, "{}+{}", self.enc.name(), self.integ.name())
        }
    }
}

/// Which implementation runs the transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// RustCrypto crates (`aes-gcm`, `aes`, `cbc`, `hmac`, `sha1`, `sha2`): portable, always built.
    RustCrypto,
    /// Intel ipsec-mb through our C shim: AVX-512 GCM and multi-buffer CBC+HMAC.
    IpsecMb,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rustcrypto",
            Backend::IpsecMb => "ipsec-mb",
        }
    }
    /// Whether this backend is compiled in and works on this CPU.
    pub fn available(self) -> bool {
        match self {
            Backend::RustCrypto => true,
            #[cfg(espd_ipsec_mb)]
            Backend::IpsecMb => imb::available(),
            #[cfg(not(espd_ipsec_mb))]
            Backend::IpsecMb => false,
        }
    }
    /// The fastest available backend: ipsec-mb when present (2-3.5x at MTU size, see
    /// `shared/design/crypto.md`), RustCrypto otherwise.
    pub fn fastest() -> Backend {
        if Backend::IpsecMb.available() {
            Backend::IpsecMb
        } else {
            Backend::RustCrypto
        }
    }
    /// What a user gains by installing the faster backend, when it is not in use here:
    /// `None` when ipsec-mb is built in and runs on this CPU. Printed first by `perf` and
    /// `espd crypto` so a fresh machine's numbers are not mistaken for the engine's best.
    pub fn upgrade_hint() -> Option<&'static str> {
        if Backend::IpsecMb.available() {
            None
        } else if cfg!(espd_ipsec_mb) {
            Some(
                "Intel ipsec-mb is built in but does not run on this CPU; using RustCrypto \
                 (portable)",
            )
        } else {
            Some(
                "crypto backend: RustCrypto (portable). Intel ipsec-mb was not found at build \
                 time: `apt-get install libipsec-mb-dev` and rebuild for about 1.1-1.4x on \
                 AES-GCM and 1.5-2.7x on AES-CBC+HMAC at 1400 bytes (2-vCPU AMD EPYC, no \
                 AVX-512; more with AVX-512 and VAES); `perf crypto` measures both",
            )
        }
    }
    /// Every backend usable here.
    pub fn available_all() -> Vec<Backend> {
        [Backend::RustCrypto, Backend::IpsecMb]
            .into_iter()
            .filter(|b| b.available())
            .collect()
    }
    /// A description for logs (`ipsec-mb 1.3.0 (AVX512)`).
    pub fn describe(self) -> String {
        match self {
            Backend::RustCrypto => "rustcrypto (aes-gcm 0.11, aes 0.9, cbc 0.2, hmac 0.13)".into(),
            #[cfg(espd_ipsec_mb)]
            Backend::IpsecMb => imb::describe(),
            #[cfg(not(espd_ipsec_mb))]
            Backend::IpsecMb => "ipsec-mb (not built)".into(),
        }
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rustcrypto" | "rust" => Ok(Backend::RustCrypto),
            "ipsec-mb" | "ipsecmb" | "imb" => Ok(Backend::IpsecMb),
            "auto" => Ok(Backend::fastest()),
            _ => Err(format!(
                "unknown crypto backend {s:?}; allowed: auto, rustcrypto, ipsec-mb"
            )),
        }
    }
}

/// Key errors: wrong lengths are caught before any key is expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("enc_key must be {expected} bytes for {alg}, got {got}")]
    EncKeyLen {
        alg: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("int_key must be {expected} bytes for {alg}, got {got}")]
    IntKeyLen {
        alg: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("crypto backend {0} is not available on this machine")]
    BackendUnavailable(&'static str),
    #[error("crypto backend failed to expand the key")]
    Backend,
}

/// One packet of a burst: the ESP packet (SPI to ICV), the ESN high bits if the SA uses ESN,
/// and the outcome (`open` sets `ok = false` on an ICV failure).
#[derive(Debug)]
pub struct CryptoOp<'a> {
    pub esp: &'a mut [u8],
    pub seq_hi: Option<u32>,
    pub ok: bool,
}

/// An ESP transform with its keys expanded. See the module contract for the buffer layout.
pub trait EspTransform: Send + Sync {
    fn suite(&self) -> Suite;
    fn backend(&self) -> Backend;
    /// Encrypts and authenticates `esp` in place. `esp.len()` must be at least
    /// `8 + iv + icv`, and the ciphertext region a multiple of the cipher block.
    fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>);
    /// Verifies the ICV in constant time and decrypts in place; false when the ICV is wrong.
    fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool;
    /// The integrity tag (full HMAC output, truncated to `out.len()`) over arbitrary bytes,
    /// for known-answer tests of the keyed MAC; `false` for AEAD transforms.
    fn auth_tag(&self, data: &[u8], out: &mut [u8]) -> bool;
    /// Seals a burst of packets of this SA (backends batch across packets).
    fn seal_burst(&self, ops: &mut [CryptoOp<'_>]) {
        for op in ops {
            self.seal(op.esp, op.seq_hi);
            op.ok = true;
        }
    }
    /// Opens a burst of packets of this SA.
    fn open_burst(&self, ops: &mut [CryptoOp<'_>]) {
        for op in ops {
            op.ok = self.open(op.esp, op.seq_hi);
        }
    }
}

/// Builds a transform. `enc_key` is the KEYMAT for the cipher (with the salt for GCM),
/// `int_key` the HMAC key (empty for GCM).
pub fn new_transform(
    backend: Backend,
    suite: Suite,
    enc_key: &[u8],
    int_key: &[u8],
) -> Result<Box<dyn EspTransform>, KeyError> {
    check_keys(suite, enc_key, int_key)?;
    match backend {
        Backend::RustCrypto => Ok(rust::new(suite, enc_key, int_key)),
        #[cfg(espd_ipsec_mb)]
        Backend::IpsecMb => imb::new(suite, enc_key, int_key),
        #[cfg(not(espd_ipsec_mb))]
        Backend::IpsecMb => Err(KeyError::BackendUnavailable("ipsec-mb")),
    }
}

/// Validates key lengths for a suite.
pub fn check_keys(suite: Suite, enc_key: &[u8], int_key: &[u8]) -> Result<(), KeyError> {
    if enc_key.len() != suite.enc.enc_key_len() {
        return Err(KeyError::EncKeyLen {
            alg: suite.enc.name(),
            expected: suite.enc.enc_key_len(),
            got: enc_key.len(),
        });
    }
    if int_key.len() != suite.integ.key_len() {
        return Err(KeyError::IntKeyLen {
            alg: suite.integ.name(),
            expected: suite.integ.key_len(),
            got: int_key.len(),
        });
    }
    Ok(())
}

/// Compares two tags in constant time: every byte is read, the only branch is on the final
/// result (equal or not), which the caller reveals anyway by accepting or dropping.
#[inline]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u64;
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        acc |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in ra.iter().zip(rb) {
        acc |= (x ^ y) as u64;
    }
    std::hint::black_box(acc) == 0
}

/// Builds the GCM AAD (RFC 4106 section 5): SPI|seq (8 bytes) or SPI|seq-hi|seq-lo (12 bytes).
/// Returns the buffer and the length used.
#[inline]
pub(crate) fn gcm_aad(esp: &[u8], seq_hi: Option<u32>) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&esp[..4]);
    match seq_hi {
        None => {
            aad[4..8].copy_from_slice(&esp[4..8]);
            (aad, 8)
        }
        Some(hi) => {
            aad[4..8].copy_from_slice(&hi.to_be_bytes());
            aad[8..12].copy_from_slice(&esp[4..8]);
            (aad, 12)
        }
    }
}

/// Builds the GCM nonce: salt (4) | explicit IV (8) (RFC 4106 section 4).
#[inline]
pub(crate) fn gcm_nonce(salt: &[u8; 4], esp: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&esp[8..16]);
    n
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_compares_every_byte() {
        let a: Vec<u8> = (0..32).collect();
        for len in [0, 1, 7, 8, 12, 16, 24, 32] {
            assert!(ct_eq(&a[..len], &a[..len]));
            for i in 0..len {
                let mut b = a[..len].to_vec();
                b[i] ^= 0x80;
                assert!(!ct_eq(&a[..len], &b), "len {len} byte {i}");
            }
        }
        assert!(!ct_eq(&a[..4], &a[..5]));
    }
}
