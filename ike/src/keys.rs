//! IKEv2 key derivation (RFC 7296 sections 2.13-2.15, 2.17, 2.18) and the Encrypted payload
//! (section 3.14 for AES-CBC + HMAC, RFC 5282 for AES-GCM).
//!
//! Contract: pure functions of their inputs; every key is held in `Zeroizing` buffers.
//! [`SkCipher::seal`] writes a whole SK payload body (IV, ciphertext with padding and pad
//! length, ICV) given the message bytes that precede it (the integrity / AAD input) and an
//! IV from the caller; [`SkCipher::open`] checks the ICV in constant time before decrypting
//! and returns the inner payload bytes, or None for any failure (a bad ICV, a bad length).

use crate::msg::transform as t;
use aes::{Aes128, Aes256};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

/// A negotiated PRF (transform type 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prf {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Prf {
    pub fn from_id(id: u16) -> Option<Prf> {
        Some(match id {
            t::PRF_HMAC_SHA1 => Prf::Sha1,
            t::PRF_HMAC_SHA2_256 => Prf::Sha256,
            t::PRF_HMAC_SHA2_384 => Prf::Sha384,
            t::PRF_HMAC_SHA2_512 => Prf::Sha512,
            _ => return None,
        })
    }
    pub fn id(self) -> u16 {
        match self {
            Prf::Sha1 => t::PRF_HMAC_SHA1,
            Prf::Sha256 => t::PRF_HMAC_SHA2_256,
            Prf::Sha384 => t::PRF_HMAC_SHA2_384,
            Prf::Sha512 => t::PRF_HMAC_SHA2_512,
        }
    }
    /// Output (and preferred key) length.
    pub fn len(self) -> usize {
        match self {
            Prf::Sha1 => 20,
            Prf::Sha256 => 32,
            Prf::Sha384 => 48,
            Prf::Sha512 => 64,
        }
    }
    pub fn is_empty(self) -> bool {
        false
    }

    /// prf(key, data) (HMAC).
    pub fn prf(self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        Zeroizing::new(match self {
            Prf::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            Prf::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
            Prf::Sha384 => run::<Hmac<sha2::Sha384>>(key, parts),
            Prf::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        })
    }

    /// prf+(K, S) = T1 | T2 | ..., T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)
    /// (section 2.13), truncated to `len` bytes.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.len()));
        let mut prev = Zeroizing::new(Vec::new());
        let mut n = 1u8;
        while out.len() < len {
            prev = self.prf(key, &[&prev, seed, &[n]]);
            out.extend_from_slice(&prev);
            n = n.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

/// A negotiated integrity algorithm (transform type 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integ {
    Sha1_96,
    Sha256_128,
    Sha384_192,
    Sha512_256,
}

impl Integ {
    pub fn from_id(id: u16) -> Option<Integ> {
        Some(match id {
            t::AUTH_HMAC_SHA1_96 => Integ::Sha1_96,
            t::AUTH_HMAC_SHA2_256_128 => Integ::Sha256_128,
            t::AUTH_HMAC_SHA2_384_192 => Integ::Sha384_192,
            t::AUTH_HMAC_SHA2_512_256 => Integ::Sha512_256,
            _ => return None,
        })
    }
    pub fn id(self) -> u16 {
        match self {
            Integ::Sha1_96 => t::AUTH_HMAC_SHA1_96,
            Integ::Sha256_128 => t::AUTH_HMAC_SHA2_256_128,
            Integ::Sha384_192 => t::AUTH_HMAC_SHA2_384_192,
            Integ::Sha512_256 => t::AUTH_HMAC_SHA2_512_256,
        }
    }
    pub fn key_len(self) -> usize {
        self.prf().len()
    }
    pub fn icv_len(self) -> usize {
        match self {
            Integ::Sha1_96 => 12,
            Integ::Sha256_128 => 16,
            Integ::Sha384_192 => 24,
            Integ::Sha512_256 => 32,
        }
    }
    fn prf(self) -> Prf {
        match self {
            Integ::Sha1_96 => Prf::Sha1,
            Integ::Sha256_128 => Prf::Sha256,
            Integ::Sha384_192 => Prf::Sha384,
            Integ::Sha512_256 => Prf::Sha512,
        }
    }
    fn mac(self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let mut m = self.prf().prf(key, parts);
        m.truncate(self.icv_len());
        m
    }
}

/// A negotiated encryption algorithm (transform type 1) with its key length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encr {
    AesCbc(u16),
    AesGcm16(u16),
}

impl Encr {
    pub fn from_transform(id: u16, bits: Option<u16>) -> Option<Encr> {
        let b = bits?;
        if b != 128 && b != 256 {
            return None;
        }
        match id {
            t::ENCR_AES_CBC => Some(Encr::AesCbc(b)),
            t::ENCR_AES_GCM_16 => Some(Encr::AesGcm16(b)),
            _ => None,
        }
    }
    pub fn id(self) -> u16 {
        match self {
            Encr::AesCbc(_) => t::ENCR_AES_CBC,
            Encr::AesGcm16(_) => t::ENCR_AES_GCM_16,
        }
    }
    pub fn bits(self) -> u16 {
        match self {
            Encr::AesCbc(b) | Encr::AesGcm16(b) => b,
        }
    }
    pub fn is_aead(self) -> bool {
        matches!(self, Encr::AesGcm16(_))
    }
    /// Key material length: the AES key, plus a 4-byte salt for GCM (RFC 5282 section 7.1,
    /// RFC 4106 section 8.1).
    pub fn key_len(self) -> usize {
        let k = usize::from(self.bits() / 8);
        if self.is_aead() { k + 4 } else { k }
    }
    pub fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { 16 }
    }
}

/// The seven IKE SA keys (section 2.14).
pub struct IkeKeys {
    pub sk_d: Zeroizing<Vec<u8>>,
    pub sk_ai: Zeroizing<Vec<u8>>,
    pub sk_ar: Zeroizing<Vec<u8>>,
    pub sk_ei: Zeroizing<Vec<u8>>,
    pub sk_er: Zeroizing<Vec<u8>>,
    pub sk_pi: Zeroizing<Vec<u8>>,
    pub sk_pr: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IkeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IkeKeys(<redacted>)")
    }
}

/// SKEYSEED = prf(Ni | Nr, g^ir); the keys = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
/// For a rekeyed IKE SA (section 2.18) pass `old_sk_d`: SKEYSEED = prf(SK_d (old), g^ir
/// (new) | Ni | Nr).
#[allow(clippy::too_many_arguments)]
pub fn ike_keys(
    prf: Prf,
    encr: Encr,
    integ: Option<Integ>,
    shared: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
    old_sk_d: Option<(Prf, &[u8])>,
) -> IkeKeys {
    let skeyseed = match old_sk_d {
        None => prf.prf(&[ni, nr].concat(), &[shared]),
        Some((old_prf, d)) => old_prf.prf(d, &[shared, ni, nr]),
    };
    let (pl, il, el) = (prf.len(), integ.map_or(0, Integ::key_len), encr.key_len());
    let seed = [ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()].concat();
    let k = prf.prf_plus(&skeyseed, &seed, pl * 3 + il * 2 + el * 2);
    let mut at = 0;
    let mut take = |n: usize| {
        let v = Zeroizing::new(k[at..at + n].to_vec());
        at += n;
        v
    };
    IkeKeys {
        sk_d: take(pl),
        sk_ai: take(il),
        sk_ar: take(il),
        sk_ei: take(el),
        sk_er: take(el),
        sk_pi: take(pl),
        sk_pr: take(pl),
    }
}

/// Keys of one CHILD_SA (section 2.17): KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr);
/// initiator-to-responder encryption then integrity key first, then the other direction.
pub struct ChildKeys {
    pub enc_i: Zeroizing<Vec<u8>>,
    pub int_i: Zeroizing<Vec<u8>>,
    pub enc_r: Zeroizing<Vec<u8>>,
    pub int_r: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChildKeys(<redacted>)")
    }
}

pub fn child_keys(
    prf: Prf,
    sk_d: &[u8],
    shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    enc_len: usize,
    int_len: usize,
) -> ChildKeys {
    let seed = [shared.unwrap_or(&[]), ni, nr].concat();
    let k = prf.prf_plus(sk_d, &seed, 2 * (enc_len + int_len));
    let s = |a: usize, n: usize| Zeroizing::new(k[a..a + n].to_vec());
    ChildKeys {
        enc_i: s(0, enc_len),
        int_i: s(enc_len, int_len),
        enc_r: s(enc_len + int_len, enc_len),
        int_r: s(2 * enc_len + int_len, int_len),
    }
}

/// The PSK AUTH value (section 2.15): prf(prf(PSK, "Key Pad for IKEv2"), signed octets),
/// where the signed octets are the sender's first message, the peer's nonce and
/// prf(SK_p, ID payload body).
pub fn psk_auth(
    prf: Prf,
    psk: &[u8],
    message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Zeroizing<Vec<u8>> {
    let pad = prf.prf(psk, &[b"Key Pad for IKEv2"]);
    let maced_id = prf.prf(sk_p, &[id_body]);
    prf.prf(&pad, &[message, peer_nonce, &maced_id])
}

/// Encryption and integrity of SK payloads in one direction.
pub struct SkCipher {
    pub encr: Encr,
    pub integ: Option<Integ>,
    ek: Zeroizing<Vec<u8>>,
    ak: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SkCipher({:?}, {:?}, <keys redacted>)",
            self.encr, self.integ
        )
    }
}

/// Why an SK cipher cannot be made or used (a suite a peer should not have been able to
/// choose, or a message too large for the cipher): never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkError {
    #[error("{0:?} needs an integrity algorithm")]
    NoIntegrity(Encr),
    #[error("{0:?} is AEAD and takes no integrity algorithm")]
    ExtraIntegrity(Encr),
    #[error("wrong key length for {0:?}")]
    KeyLength(Encr),
    #[error("the cipher refused the message")]
    Cipher,
}

impl SkCipher {
    /// A cipher for one direction. The suite must be consistent (an integrity algorithm
    /// exactly when the cipher is not AEAD) and the keys of the right length.
    pub fn new(
        encr: Encr,
        integ: Option<Integ>,
        ek: &[u8],
        ak: &[u8],
    ) -> Result<SkCipher, SkError> {
        match (encr.is_aead(), integ) {
            (false, None) => return Err(SkError::NoIntegrity(encr)),
            (true, Some(_)) => return Err(SkError::ExtraIntegrity(encr)),
            _ => {}
        }
        if ek.len() != encr.key_len() || ak.len() != integ.map_or(0, Integ::key_len) {
            return Err(SkError::KeyLength(encr));
        }
        Ok(SkCipher {
            encr,
            integ,
            ek: Zeroizing::new(ek.to_vec()),
            ak: Zeroizing::new(ak.to_vec()),
        })
    }

    pub fn icv_len(&self) -> usize {
        match self.integ {
            Some(i) if !self.encr.is_aead() => i.icv_len(),
            _ => 16,
        }
    }

    /// Length of the SK body for `plain_len` bytes of inner payloads.
    pub fn body_len(&self, plain_len: usize) -> usize {
        let block = if self.encr.is_aead() { 4 } else { 16 };
        let ct = (plain_len + 1).next_multiple_of(block);
        self.encr.iv_len() + ct + self.icv_len()
    }

    /// Writes the SK body. `head` is every message byte before the body (IKE header and SK
    /// generic header, with the final lengths already in place); `iv` comes from the caller.
    pub fn seal(&self, head: &[u8], plain: &[u8], iv: &[u8; 16]) -> Result<Vec<u8>, SkError> {
        let block = if self.encr.is_aead() { 4 } else { 16 };
        let pad = (plain.len() + 1).next_multiple_of(block) - plain.len() - 1;
        let mut buf = Vec::with_capacity(self.body_len(plain.len()));
        buf.extend_from_slice(&iv[..self.encr.iv_len()]);
        buf.extend_from_slice(plain);
        buf.extend(std::iter::repeat_n(0u8, pad));
        buf.push(pad as u8);
        let ivl = self.encr.iv_len();
        match self.encr {
            Encr::AesGcm16(bits) => {
                let (key, salt) = self.ek.split_at(self.ek.len() - 4);
                let nonce = [salt, &buf[..8]].concat();
                let tag = gcm_seal(bits, key, &nonce, head, &mut buf[ivl..])?;
                buf.extend_from_slice(&tag);
            }
            Encr::AesCbc(bits) => {
                let integ = self.integ.ok_or(SkError::NoIntegrity(self.encr))?;
                cbc_encrypt(bits, &self.ek, iv, &mut buf[16..])?;
                let icv = integ.mac(&self.ak, &[head, &buf]);
                buf.extend_from_slice(&icv);
            }
        }
        Ok(buf)
    }

    /// Checks and decrypts an SK body; returns the inner payload bytes.
    pub fn open(&self, head: &[u8], body: &[u8]) -> Option<Vec<u8>> {
        let (ivl, icvl) = (self.encr.iv_len(), self.icv_len());
        if body.len() < ivl + icvl + if self.encr.is_aead() { 1 } else { 16 } {
            return None;
        }
        let (data, icv) = body.split_at(body.len() - icvl);
        let mut ct = data[ivl..].to_vec();
        match self.encr {
            Encr::AesGcm16(bits) => {
                let (key, salt) = self.ek.split_at(self.ek.len() - 4);
                let nonce = [salt, &data[..8]].concat();
                gcm_open(bits, key, &nonce, head, &mut ct, icv)?;
            }
            Encr::AesCbc(bits) => {
                if ct.len() % 16 != 0 {
                    return None;
                }
                let integ = self.integ?;
                let want = integ.mac(&self.ak, &[head, data]);
                if !ct_eq(&want, icv) {
                    return None;
                }
                let iv: [u8; 16] = data[..16].try_into().ok()?;
                cbc_decrypt(bits, &self.ek, &iv, &mut ct).ok()?;
            }
        }
        let pad = *ct.last()? as usize;
        if pad + 1 > ct.len() {
            return None;
        }
        ct.truncate(ct.len() - pad - 1);
        Some(ct)
    }
}

/// Equality in time that depends on the length only (ICVs, AUTH payloads, cookies).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn gcm_seal(
    bits: u16,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; 16], SkError> {
    let n = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(nonce)
        .map_err(|_| SkError::Cipher)?;
    let bad_key = |_| SkError::KeyLength(Encr::AesGcm16(bits));
    let tag = if bits == 128 {
        Aes128Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_inout_detached(&n, aad, buf.into())
    } else {
        Aes256Gcm::new_from_slice(key)
            .map_err(bad_key)?
            .encrypt_inout_detached(&n, aad, buf.into())
    };
    tag.map(Into::into).map_err(|_| SkError::Cipher)
}

fn gcm_open(
    bits: u16,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Option<()> {
    let n = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(nonce).ok()?;
    let t = aes_gcm::Tag::<aes_gcm::aead::consts::U16>::try_from(tag).ok()?;
    if bits == 128 {
        Aes128Gcm::new_from_slice(key)
            .ok()?
            .decrypt_inout_detached(&n, aad, buf.into(), &t)
            .ok()
    } else {
        Aes256Gcm::new_from_slice(key)
            .ok()?
            .decrypt_inout_detached(&n, aad, buf.into(), &t)
            .ok()
    }
}

/// `buf` as AES blocks (its length must be a multiple of 16).
fn blocks(buf: &[u8]) -> Result<Vec<aes::Block>, SkError> {
    buf.chunks(16)
        .map(|c| aes::Block::try_from(c).map_err(|_| SkError::Cipher))
        .collect()
}

pub(crate) fn cbc_encrypt(
    bits: u16,
    key: &[u8],
    iv: &[u8; 16],
    buf: &mut [u8],
) -> Result<(), SkError> {
    let mut bl = blocks(buf)?;
    let bad_key = |_| SkError::KeyLength(Encr::AesCbc(bits));
    if bits == 128 {
        cbc::Encryptor::<Aes128>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .encrypt_blocks(&mut bl);
    } else {
        cbc::Encryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .encrypt_blocks(&mut bl);
    }
    for (c, b) in buf.chunks_mut(16).zip(bl) {
        c.copy_from_slice(&b);
    }
    Ok(())
}

pub(crate) fn cbc_decrypt(
    bits: u16,
    key: &[u8],
    iv: &[u8; 16],
    buf: &mut [u8],
) -> Result<(), SkError> {
    let mut bl = blocks(buf)?;
    let bad_key = |_| SkError::KeyLength(Encr::AesCbc(bits));
    if bits == 128 {
        cbc::Decryptor::<Aes128>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .decrypt_blocks(&mut bl);
    } else {
        cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
            .map_err(bad_key)?
            .decrypt_blocks(&mut bl);
    }
    for (c, b) in buf.chunks_mut(16).zip(bl) {
        c.copy_from_slice(&b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_plus_is_the_section_2_13_chain() {
        let p = Prf::Sha256;
        let (k, s) = (b"key".as_slice(), b"seed".as_slice());
        let t1 = p.prf(k, &[s, &[1]]);
        let t2 = p.prf(k, &[&t1, s, &[2]]);
        let t3 = p.prf(k, &[&t2, s, &[3]]);
        let want = [t1.as_slice(), &t2, &t3].concat();
        assert_eq!(*p.prf_plus(k, s, 70), want[..70]);
    }

    /// RFC 4231 test case 2 (HMAC-SHA-256 with key "Jefe").
    #[test]
    fn prf_known_answer() {
        let out = Prf::Sha256.prf(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            out.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A suite a hostile responder could pick (CBC with no integrity, GCM with one, wrong
    /// key sizes) is refused when the cipher is made, never a panic later.
    #[test]
    fn inconsistent_suites_are_errors() {
        let k16 = [1u8; 16];
        assert_eq!(
            SkCipher::new(Encr::AesCbc(128), None, &k16, &[]).err(),
            Some(SkError::NoIntegrity(Encr::AesCbc(128)))
        );
        assert_eq!(
            SkCipher::new(
                Encr::AesGcm16(128),
                Some(Integ::Sha1_96),
                &[1; 20],
                &[2; 20]
            )
            .err(),
            Some(SkError::ExtraIntegrity(Encr::AesGcm16(128)))
        );
        assert_eq!(
            SkCipher::new(Encr::AesCbc(256), Some(Integ::Sha1_96), &k16, &[2; 20]).err(),
            Some(SkError::KeyLength(Encr::AesCbc(256)))
        );
        assert_eq!(
            SkCipher::new(Encr::AesGcm16(256), None, &[1; 20], &[]).err(),
            Some(SkError::KeyLength(Encr::AesGcm16(256)))
        );
    }

    #[test]
    fn sk_round_trip_and_tamper_for_every_ike_cipher() {
        let combos = [
            (Encr::AesCbc(128), Some(Integ::Sha256_128)),
            (Encr::AesCbc(256), Some(Integ::Sha1_96)),
            (Encr::AesCbc(256), Some(Integ::Sha384_192)),
            (Encr::AesCbc(128), Some(Integ::Sha512_256)),
            (Encr::AesGcm16(128), None),
            (Encr::AesGcm16(256), None),
        ];
        for (e, i) in combos {
            let ek: Vec<u8> = (0..e.key_len() as u8).collect();
            let ak: Vec<u8> = (0..i.map_or(0, Integ::key_len) as u8)
                .map(|x| x ^ 0x5a)
                .collect();
            let c = SkCipher::new(e, i, &ek, &ak).unwrap();
            let head = [7u8; 32];
            for n in [0usize, 1, 15, 16, 17, 100] {
                let plain: Vec<u8> = (0..n as u8).collect();
                let body = c.seal(&head, &plain, &[9; 16]).unwrap();
                assert_eq!(body.len(), c.body_len(n));
                assert_eq!(
                    c.open(&head, &body).as_deref(),
                    Some(plain.as_slice()),
                    "{e:?} {n}"
                );
                for k in 0..body.len() {
                    let mut b = body.clone();
                    b[k] ^= 1;
                    assert_eq!(c.open(&head, &b), None, "{e:?} byte {k}");
                }
                let mut h = head;
                h[3] ^= 1;
                assert_eq!(c.open(&h, &body), None, "{e:?}: header is authenticated");
            }
        }
    }
}
