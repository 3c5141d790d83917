//! IKEv1 key derivation and message encryption (RFC 2409 sections 5, 5.4, 5.5 and
//! appendix B) for pre-shared key authentication.
//!
//! - SKEYID = prf(pre-shared-key, Ni_b | Nr_b); SKEYID_d / _a / _e chain from it with
//!   g^xy, the cookies and 0 / 1 / 2 (section 5).
//! - The encryption key Ka is SKEYID_e, expanded with prf(SKEYID_e, 0), prf(SKEYID_e, K1),
//!   ... when the cipher needs more bits than the PRF gives (appendix B).
//! - IVs: the first phase 1 IV is hash(g^xi | g^xr); every later message of the exchange
//!   continues from the last ciphertext block; a quick mode or informational exchange
//!   starts from hash(last phase 1 block | M-ID) (appendix B).
//! - KEYMAT = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), extended by feeding
//!   each block back in (section 5.5).
//!
//! Contract: pure functions; every secret is returned in a `Zeroizing` buffer.

use crate::keys::{Prf, SkError, cbc_decrypt, cbc_encrypt};
use zeroize::Zeroizing;

/// The negotiated hash itself (not its HMAC): IVs and NAT-D (RFC 3947 section 3.2).
pub fn hash(h: Prf, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match h {
        Prf::Sha1 => run::<sha1::Sha1>(parts),
        Prf::Sha256 => run::<sha2::Sha256>(parts),
        Prf::Sha384 => run::<sha2::Sha384>(parts),
        Prf::Sha512 => run::<sha2::Sha512>(parts),
    }
}

/// An AES-CBC IV: the first 16 bytes of a hash (appendix B).
pub fn iv_of(h: Prf, parts: &[&[u8]]) -> [u8; 16] {
    let d = hash(h, parts);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d[..16]);
    iv
}

/// The phase 1 keys.
pub struct P1Keys {
    pub skeyid: Zeroizing<Vec<u8>>,
    pub skeyid_d: Zeroizing<Vec<u8>>,
    pub skeyid_a: Zeroizing<Vec<u8>>,
    pub skeyid_e: Zeroizing<Vec<u8>>,
    /// The AES key (SKEYID_e expanded or cut to the key length).
    pub ka: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for P1Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P1Keys(<redacted>)")
    }
}

/// Derives the phase 1 keys of a pre-shared key main mode (section 5, appendix B).
#[allow(clippy::too_many_arguments)]
pub fn phase1_keys(
    h: Prf,
    psk: &[u8],
    ni: &[u8],
    nr: &[u8],
    gxy: &[u8],
    ci: u64,
    cr: u64,
    key_len: usize,
) -> P1Keys {
    let (ci, cr) = (ci.to_be_bytes(), cr.to_be_bytes());
    let skeyid = h.prf(psk, &[ni, nr]);
    let skeyid_d = h.prf(&skeyid, &[gxy, &ci, &cr, &[0]]);
    let skeyid_a = h.prf(&skeyid, &[&skeyid_d, gxy, &ci, &cr, &[1]]);
    let skeyid_e = h.prf(&skeyid, &[&skeyid_a, gxy, &ci, &cr, &[2]]);
    let mut ka = Zeroizing::new(Vec::with_capacity(key_len + h.len()));
    if skeyid_e.len() >= key_len {
        ka.extend_from_slice(&skeyid_e[..key_len]);
    } else {
        let mut k = h.prf(&skeyid_e, &[&[0]]);
        ka.extend_from_slice(&k);
        while ka.len() < key_len {
            k = h.prf(&skeyid_e, &[&k]);
            ka.extend_from_slice(&k);
        }
        ka.truncate(key_len);
    }
    P1Keys {
        skeyid,
        skeyid_d,
        skeyid_a,
        skeyid_e,
        ka,
    }
}

/// KEYMAT of one direction of an IPsec SA (section 5.5): `spi` is the SPI its receiver
/// chose.
#[allow(clippy::too_many_arguments)]
pub fn keymat(
    h: Prf,
    skeyid_d: &[u8],
    gxy: Option<&[u8]>,
    protocol: u8,
    spi: u32,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    let g = gxy.unwrap_or(&[]);
    let spi = spi.to_be_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(len + h.len()));
    let mut k = h.prf(skeyid_d, &[g, &[protocol], &spi, ni, nr]);
    out.extend_from_slice(&k);
    while out.len() < len {
        k = h.prf(skeyid_d, &[&k, g, &[protocol], &spi, ni, nr]);
        out.extend_from_slice(&k);
    }
    out.truncate(len);
    out
}

/// Encrypts a payload chain in place of a message body: zero padding to the block size
/// (RFC 2408 section 3.5 leaves the pad's content open; the chain's own lengths end it).
pub fn encrypt(ka: &[u8], iv: &[u8; 16], plain: &[u8]) -> Result<Vec<u8>, SkError> {
    let mut b = plain.to_vec();
    b.resize(plain.len().next_multiple_of(16).max(16), 0);
    cbc_encrypt((ka.len() * 8) as u16, ka, iv, &mut b)?;
    Ok(b)
}

/// Decrypts a message body (None when it is not whole blocks or the key is unusable).
pub fn decrypt(ka: &[u8], iv: &[u8; 16], ct: &[u8]) -> Option<Vec<u8>> {
    if ct.is_empty() || !ct.len().is_multiple_of(16) {
        return None;
    }
    let mut b = ct.to_vec();
    cbc_decrypt((ka.len() * 8) as u16, ka, iv, &mut b).ok()?;
    Some(b)
}

/// The last ciphertext block of a message body: the next message's IV.
pub fn last_block(ct: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    if ct.len() >= 16 {
        iv.copy_from_slice(&ct[ct.len() - 16..]);
    }
    iv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ka_is_expanded_when_the_prf_is_short() {
        let k = phase1_keys(Prf::Sha1, b"psk", b"ni", b"nr", b"gxy", 1, 2, 32);
        assert_eq!(k.skeyid_e.len(), 20);
        let k1 = Prf::Sha1.prf(&k.skeyid_e, &[&[0]]);
        let k2 = Prf::Sha1.prf(&k.skeyid_e, &[&k1]);
        assert_eq!(&k.ka[..20], &k1[..]);
        assert_eq!(&k.ka[20..], &k2[..12]);
        let k = phase1_keys(Prf::Sha256, b"psk", b"ni", b"nr", b"gxy", 1, 2, 16);
        assert_eq!(&k.ka[..], &k.skeyid_e[..16]);
    }

    #[test]
    fn keymat_chains_its_blocks() {
        let a = keymat(Prf::Sha1, b"d", None, 3, 7, b"ni", b"nr", 52);
        let k1 = Prf::Sha1.prf(b"d", &[&[3], &7u32.to_be_bytes(), b"ni", b"nr"]);
        let k2 = Prf::Sha1.prf(b"d", &[&k1, &[3], &7u32.to_be_bytes(), b"ni", b"nr"]);
        assert_eq!(&a[..20], &k1[..]);
        assert_eq!(&a[20..40], &k2[..]);
    }

    #[test]
    fn cbc_round_trip_pads_to_blocks() {
        let ka = [7u8; 16];
        let iv = [1u8; 16];
        let ct = encrypt(&ka, &iv, b"hello").unwrap();
        assert_eq!(ct.len(), 16);
        assert_eq!(&decrypt(&ka, &iv, &ct).unwrap()[..5], b"hello");
        assert!(decrypt(&ka, &iv, &ct[..15]).is_none());
    }
}
