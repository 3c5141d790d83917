//! The portable backend: RustCrypto `aes-gcm` for RFC 4106 and `aes` + `cbc` + `hmac` +
//! `sha1`/`sha2` for RFC 3602 with RFC 2404 / RFC 4868 integrity. Keys are expanded once
//! (`AesGcm` holds the key schedule and GHASH key; the HMAC state is keyed once and cloned per
//! packet). Key schedules are zeroized on drop by the crates' `zeroize` features.

use super::{Encryption, EspTransform, Integrity, Suite, gcm_aad, gcm_nonce};
use aes::{Aes128, Aes256};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use cbc::cipher::array::Array;
use cbc::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit,
};
use hmac::{Hmac, Mac};
use zeroize::Zeroize;

use super::Backend;

pub(super) fn new(suite: Suite, enc_key: &[u8], int_key: &[u8]) -> Box<dyn EspTransform> {
    match suite.enc {
        Encryption::Aes128Gcm16 => Box::new(Gcm::<Aes128Gcm>::new(suite, enc_key)),
        Encryption::Aes256Gcm16 => Box::new(Gcm::<Aes256Gcm>::new(suite, enc_key)),
        Encryption::Aes128Cbc => cbc_with::<Aes128>(suite, enc_key, int_key),
        Encryption::Aes256Cbc => cbc_with::<Aes256>(suite, enc_key, int_key),
    }
}

fn cbc_with<C>(suite: Suite, enc_key: &[u8], int_key: &[u8]) -> Box<dyn EspTransform>
where
    C: BlockCipherEncrypt<BlockSize = aes::cipher::consts::U16>
        + BlockCipherDecrypt<BlockSize = aes::cipher::consts::U16>
        + KeyInit
        + Send
        + Sync
        + 'static,
{
    match suite.integ {
        Integrity::Sha1_96 => {
            Box::new(CbcHmac::<C, Hmac<sha1::Sha1>>::new(suite, enc_key, int_key))
        }
        Integrity::Sha256_128 => Box::new(CbcHmac::<C, Hmac<sha2::Sha256>>::new(
            suite, enc_key, int_key,
        )),
        Integrity::Sha384_192 => Box::new(CbcHmac::<C, Hmac<sha2::Sha384>>::new(
            suite, enc_key, int_key,
        )),
        Integrity::Sha512_256 => Box::new(CbcHmac::<C, Hmac<sha2::Sha512>>::new(
            suite, enc_key, int_key,
        )),
        Integrity::None => unreachable!("Suite::new rejects CBC without integrity"),
    }
}

/// AES-GCM-16 per RFC 4106.
struct Gcm<A> {
    suite: Suite,
    aead: A,
    salt: [u8; 4],
}

impl<A: KeyInit> Gcm<A> {
    fn new(suite: Suite, enc_key: &[u8]) -> Self {
        let n = suite.enc.aes_key_len();
        let aead = A::new_from_slice(&enc_key[..n]).expect("key length checked by check_keys");
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&enc_key[n..n + 4]);
        Gcm { suite, aead, salt }
    }
}

impl<A> Drop for Gcm<A> {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl<A> EspTransform for Gcm<A>
where
    A: AeadInOut<NonceSize = aes::cipher::consts::U12, TagSize = aes::cipher::consts::U16>
        + Send
        + Sync,
{
    fn suite(&self) -> Suite {
        self.suite
    }
    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }
    #[inline]
    fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = Array::from(gcm_nonce(&self.salt, esp));
        let n = esp.len();
        let (body, tag_out) = esp[16..].split_at_mut(n - 32);
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, &aad[..aad_len], body.into())
            .expect("ESP payloads are far below the GCM length limit");
        tag_out.copy_from_slice(&tag);
    }
    fn auth_tag(&self, _data: &[u8], _out: &mut [u8]) -> bool {
        false
    }
    #[inline]
    fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        if esp.len() < 32 {
            return false;
        }
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = Array::from(gcm_nonce(&self.salt, esp));
        let n = esp.len();
        let (body, tag_in) = esp[16..].split_at_mut(n - 32);
        let tag = Array::try_from(&*tag_in).expect("16-byte tag");
        self.aead
            .decrypt_inout_detached(&nonce, &aad[..aad_len], body.into(), &tag)
            .is_ok()
    }
}

/// AES-CBC (RFC 3602) with a truncated HMAC (RFC 2404 / RFC 4868): encrypt-then-MAC over
/// `SPI | Seq | IV | ciphertext` (plus seq-hi with ESN, RFC 4303 section 3.3.2.2).
struct CbcHmac<C, M> {
    suite: Suite,
    cipher: C,
    mac: M,
}

impl<C: KeyInit, M: Mac + KeyInit> CbcHmac<C, M> {
    fn new(suite: Suite, enc_key: &[u8], int_key: &[u8]) -> Self {
        CbcHmac {
            suite,
            cipher: C::new_from_slice(enc_key).expect("key length checked"),
            mac: <M as KeyInit>::new_from_slice(int_key).expect("HMAC takes any key length"),
        }
    }
}

impl<C, M> CbcHmac<C, M>
where
    M: Mac + Clone,
{
    #[inline]
    fn icv(&self, authed: &[u8], seq_hi: Option<u32>) -> impl AsRef<[u8]> + use<C, M> {
        let mut m = self.mac.clone();
        m.update(authed);
        if let Some(hi) = seq_hi {
            m.update(&hi.to_be_bytes());
        }
        m.finalize().into_bytes()
    }
}

impl<C, M> EspTransform for CbcHmac<C, M>
where
    C: BlockCipherEncrypt<BlockSize = aes::cipher::consts::U16>
        + BlockCipherDecrypt<BlockSize = aes::cipher::consts::U16>
        + Send
        + Sync,
    M: Mac + Clone + Send + Sync,
{
    fn suite(&self) -> Suite {
        self.suite
    }
    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }
    #[inline]
    fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        let icv_len = self.suite.icv_len();
        let n = esp.len();
        let iv: [u8; 16] = esp[8..24].try_into().expect("IV");
        let (blocks, rest) = Array::slice_as_chunks_mut(&mut esp[24..n - icv_len]);
        debug_assert!(rest.is_empty(), "ciphertext must be block aligned");
        cbc::Encryptor::<&C>::inner_iv_init(&self.cipher, &Array::from(iv)).encrypt_blocks(blocks);
        let tag = self.icv(&esp[..n - icv_len], seq_hi);
        esp[n - icv_len..].copy_from_slice(&tag.as_ref()[..icv_len]);
    }
    fn auth_tag(&self, data: &[u8], out: &mut [u8]) -> bool {
        let t = self.icv(data, None);
        let n = out.len().min(t.as_ref().len());
        out[..n].copy_from_slice(&t.as_ref()[..n]);
        true
    }
    #[inline]
    fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        let icv_len = self.suite.icv_len();
        let n = esp.len();
        if n < 24 + icv_len || !(n - 24 - icv_len).is_multiple_of(16) {
            return false;
        }
        let tag = self.icv(&esp[..n - icv_len], seq_hi);
        if !super::ct_eq(&tag.as_ref()[..icv_len], &esp[n - icv_len..]) {
            return false;
        }
        let iv: [u8; 16] = esp[8..24].try_into().expect("IV");
        let (blocks, _) = Array::slice_as_chunks_mut(&mut esp[24..n - icv_len]);
        cbc::Decryptor::<&C>::inner_iv_init(&self.cipher, &Array::from(iv)).decrypt_blocks(blocks);
        true
    }
}
