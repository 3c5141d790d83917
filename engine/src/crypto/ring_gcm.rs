//! AES-GCM-16 (RFC 4106) on `ring`'s assembly (BoringSSL's), which the ipsec-mb backend
//! uses for large packets where it is faster: on CPUs with VAES and VPCLMULQDQ but no
//! AVX-512 (AMD Zen 3, Intel client parts), ipsec-mb 1.3 runs its AES-NI AVX2 GCM, one
//! block per instruction, while ring 0.17.14 has the VAES + VPCLMULQDQ AVX2 code (two blocks
//! per instruction). For small packets ipsec-mb's direct API costs less per call, so the
//! ipsec-mb backend keeps those (see `imb::ring_min`).
//!
//! Key material: ring does not wipe its expanded keys, so this wrapper does, on drop. That
//! drop is the one `unsafe` here: it relies on `LessSafeKey` owning no heap memory and
//! having no destructor, which a compile-time assertion checks.

use super::{Suite, gcm_aad, gcm_nonce};
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use std::mem::ManuallyDrop;
use zeroize::Zeroize;

// The drop below zeroes a `LessSafeKey` in place and frees its box without running a
// destructor: only sound while it has none.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

/// An expanded AES-GCM key with its RFC 4106 salt.
pub(super) struct RingGcm {
    key: ManuallyDrop<Box<LessSafeKey>>,
    salt: [u8; 4],
}

impl RingGcm {
    /// `enc_key`: the AES key followed by the 4-byte salt (lengths checked by the caller).
    pub(super) fn new(suite: Suite, enc_key: &[u8]) -> Option<RingGcm> {
        let n = suite.enc.aes_key_len();
        let alg = match n {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return None,
        };
        let key = LessSafeKey::new(UnboundKey::new(alg, &enc_key[..n]).ok()?);
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&enc_key[n..n + 4]);
        Some(RingGcm {
            key: ManuallyDrop::new(Box::new(key)),
            salt,
        })
    }

    /// Seals `esp` in place (SPI, seq, IV, body, room for the tag; at least 32 bytes).
    #[inline]
    pub(super) fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = Nonce::assume_unique_for_key(gcm_nonce(&self.salt, esp));
        let n = esp.len();
        let (body, tag_out) = esp[16..].split_at_mut(n - 32);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&aad[..aad_len]), body)
            .expect("ESP payloads are far below the GCM length limit");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Checks the tag (ring compares in constant time) and decrypts in place.
    #[inline]
    pub(super) fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        if esp.len() < 32 {
            return false;
        }
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = Nonce::assume_unique_for_key(gcm_nonce(&self.salt, esp));
        self.key
            .open_in_place(nonce, Aad::from(&aad[..aad_len]), &mut esp[16..])
            .is_ok()
    }
}

impl Drop for RingGcm {
    fn drop(&mut self) {
        self.salt.zeroize();
        // SAFETY: `self.key` is taken once, here, and never used again. Its box's memory
        // is zeroed as a `MaybeUninit` (for which zeros are valid, so no value with an
        // invalid `&'static` field is ever made) and freed with the layout it was allocated
        // with. Not running `LessSafeKey`'s destructor is sound because it has none
        // (asserted above at compile time): it owns no other memory.
        unsafe {
            let p = Box::into_raw(ManuallyDrop::take(&mut self.key));
            zeroize::zeroize_flat_type(p.cast::<std::mem::MaybeUninit<LessSafeKey>>());
            std::alloc::dealloc(p.cast::<u8>(), std::alloc::Layout::new::<LessSafeKey>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RingGcm;
    use crate::crypto::{Encryption, Integrity, Suite};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// draft-mcgrew-gcm-test-01 section 4: the 128-bit key case with a 64-bit (extended)
    /// sequence number and the 256-bit key case, straight through ring (whatever the
    /// ipsec-mb backend's length cut: `tests/kat.rs` covers the backend as a whole).
    #[test]
    fn draft_mcgrew_vectors() {
        for (key, salt, seq_hi, plain, packet) in [
            (
                "4c80cdefbb5d10da906ac73c3613a634",
                "2e443b68",
                Some(0x8765_4321u32),
                "45000048699a000080114db7c0a80102c0a801010a9bf15638d301000001000000000000045f736970045f756470037369700963796265726369747902646b000021000101020201",
                "00004321000000004956ed7e3b244cfefecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce61bc17d768fd9732459018148f6cbe722fd04796562dfdb4",
            ),
            (
                "abbccddef00112233445566778899aababbccddef00112233445566778899aab",
                "11223344",
                None,
                "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee0000000007002400020bf0000020405b40101040201020201",
                "4a2cbfe3000000020102030405060708ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763748a637985771d347f0545659f14e99def842d8eb335f4eecfdbf831824b4c4915956c96",
            ),
        ] {
            let mut ek = h(key);
            let enc = if ek.len() == 16 {
                Encryption::Aes128Gcm16
            } else {
                Encryption::Aes256Gcm16
            };
            ek.extend_from_slice(&h(salt));
            let g = RingGcm::new(Suite::new(enc, Integrity::None).unwrap(), &ek).unwrap();
            let want = h(packet);
            let mut esp = want[..16].to_vec();
            esp.extend_from_slice(&h(plain));
            esp.extend_from_slice(&[0; 16]);
            g.seal(&mut esp, seq_hi);
            assert_eq!(hex::encode(&esp), packet);
            assert!(g.open(&mut esp, seq_hi));
            assert_eq!(esp[16..esp.len() - 16], h(plain)[..]);
            for pos in [0, 5, 9, 20, want.len() - 1] {
                let mut bad = want.clone();
                bad[pos] ^= 1;
                assert!(!g.open(&mut bad, seq_hi), "tampered at {pos}");
            }
            let mut bad = want.clone();
            assert!(!g.open(&mut bad, Some(seq_hi.map_or(1, |x| x ^ 1))));
        }
    }
}
