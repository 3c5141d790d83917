//! AES-CBC (RFC 3602) of a burst of packets with VAES on AVX2: encryption sixteen packets
//! at a time, two per 256-bit register; decryption sixteen blocks of one packet at a time.
//!
//! Why our own: CBC encryption chains every block on the one before, so one packet keeps
//! one AES round in flight. ipsec-mb 1.3 interleaves 8 packets with 128-bit AES-NI on CPUs
//! without AVX-512 (its VAES code needs AVX-512); a Zen 3 core retires two 256-bit `vaesenc`
//! per cycle, so 16 packets in 8 registers fill it. Measured (one core, 1,424-byte
//! payloads, bursts of 32): ipsec-mb's AVX2 manager 237 ns per packet, this code 107 ns.
//! Decryption has no chain, and RustCrypto's `aes` already uses VAES for it (123 ns against
//! the library's 176); ours works on the library's key schedule, in bursts, from the last
//! block back so that it runs in place.
//!
//! Contract: [`available`] says whether the CPU has AVX2, VAES and AES-NI; [`encrypt_burst`]
//! and [`decrypt_burst`] may be called only when it is true (they assert it). Each buffer
//! is `IV | text`, both whole 16-byte blocks, processed in place; the IV stays. The round
//! keys are the standard AES encryption key schedule (FIPS 197 section 5.2), 11 for AES-128
//! and 15 for AES-256; they are borrowed, and the copies in registers and the kernels' stack
//! frames are wiped. No allocation, no I/O.
//!
//! The `unsafe` here is the CPU's side of the crypto FFI: `#[target_feature]` kernels,
//! called only after run-time detection, on pointers kept inside each buffer (or, for idle
//! encryption lanes, on a scratch block).

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::{
    _mm_aesimc_si128, _mm_loadu_si128, _mm256_aesdec_epi128, _mm256_aesdeclast_epi128,
    _mm256_aesenc_epi128, _mm256_aesenclast_epi128, _mm256_broadcastsi128_si256,
    _mm256_loadu_si256, _mm256_loadu2_m128i, _mm256_setzero_si256, _mm256_storeu_si256,
    _mm256_storeu2_m128i, _mm256_xor_si256,
};

/// Packets encrypted side by side.
pub const LANES: usize = 16;

/// Whether this CPU has 256-bit VAES (with AVX2 and AES-NI).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("vaes")
                && std::arch::is_x86_feature_detected!("aes")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Where one packet of a burst stands.
#[derive(Clone, Copy)]
struct Lane {
    buf: usize,
    /// Blocks after the IV already encrypted.
    done: usize,
}

/// The preconditions both directions assert: VAES present, an AES-128 or AES-256
/// schedule, whole-block buffers.
fn check_args(round_keys: &[[u8; 16]], bufs: &[&mut [u8]]) {
    assert!(available(), "VAES CBC on a CPU without VAES");
    assert!(
        matches!(round_keys.len(), 11 | 15),
        "AES-128 or AES-256 schedule"
    );
    for b in bufs {
        assert!(b.len().is_multiple_of(16), "whole blocks");
    }
}

/// Encrypts each `IV | plaintext` buffer in place with AES-CBC under `round_keys` (11 keys:
/// AES-128, 15: AES-256). Buffers shorter than two blocks have nothing to encrypt.
///
/// # Panics
/// If the CPU lacks VAES, a buffer is not whole blocks, or the schedule is not 11 or 15 keys.
pub fn encrypt_burst(round_keys: &[[u8; 16]], bufs: &mut [&mut [u8]]) {
    check_args(round_keys, bufs);
    let blocks = |b: &[u8]| (b.len() / 16).saturating_sub(1);
    // Idle lanes run on this scratch pair of blocks (chain, block), going nowhere.
    let mut scratch = [0u8; 32];
    let mut lanes: [Option<Lane>; LANES] = [None; LANES];
    let mut next = 0usize;
    loop {
        for slot in lanes.iter_mut() {
            while slot.is_none() && next < bufs.len() {
                if blocks(bufs[next]) > 0 {
                    *slot = Some(Lane { buf: next, done: 0 });
                }
                next += 1;
            }
        }
        let run = lanes
            .iter()
            .flatten()
            .map(|l| blocks(bufs[l.buf]) - l.done)
            .min();
        let Some(run) = run else { break };
        let sp = scratch.as_mut_ptr();
        let mut p = [sp; LANES];
        let mut stride = [0usize; LANES];
        for (l, slot) in lanes.iter().enumerate() {
            if let Some(ln) = slot {
                // The lane's next block; the chain value is the block before it.
                p[l] = bufs[ln.buf][16 * ln.done..].as_mut_ptr();
                stride[l] = 16;
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, VAES and AES-NI (asserted above). For an active lane,
        // p[l] points at the chain block of a buffer from which at least `run` more blocks
        // follow (`run` is the minimum over active lanes), so every 16-byte access the
        // kernel makes, at p[l] + 16 * (i + 1) for i < run and the chain at p[l], stays
        // inside that buffer; distinct lanes are distinct `&mut` buffers. Idle lanes have
        // stride 0 on the 32-byte scratch array.
        unsafe {
            if round_keys.len() == 11 {
                kernel::<10>(round_keys, &p, &stride, run)
            } else {
                kernel::<14>(round_keys, &p, &stride, run)
            }
        }
        for slot in lanes.iter_mut() {
            if let Some(ln) = slot {
                ln.done += run;
                if ln.done == blocks(bufs[ln.buf]) {
                    *slot = None;
                }
            }
        }
    }
}

/// Decrypts each `IV | ciphertext` buffer in place with AES-CBC (the IV stays), given the
/// *encryption* schedule (the decryption keys are derived once per call: FIPS 197 section
/// 5.3.5, the equivalent inverse cipher). CBC decryption has no chain between blocks, so
/// each packet runs 16 blocks at a time.
///
/// # Panics
/// As [`encrypt_burst`].
pub fn decrypt_burst(round_keys: &[[u8; 16]], bufs: &mut [&mut [u8]]) {
    check_args(round_keys, bufs);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2, VAES and AES-NI (asserted above); the kernel stays inside
    // each buffer (whole blocks, asserted above).
    unsafe {
        if round_keys.len() == 11 {
            dec_kernel::<10>(round_keys, bufs)
        } else {
            dec_kernel::<14>(round_keys, bufs)
        }
    }
}

/// CBC decryption of each buffer, from its last block back to its first, so that every
/// block still reads its predecessor's ciphertext: 16 blocks per step, then 2, then 1.
///
/// # Safety
/// The CPU must have AVX2, VAES and AES-NI; `rk` holds at least `R + 1` keys; each buffer is
/// whole blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,vaes,aes")]
unsafe fn dec_kernel<const R: usize>(rk: &[[u8; 16]], bufs: &mut [&mut [u8]]) {
    let mut k = [_mm256_setzero_si256(); 15];
    for r in 0..=R {
        // SAFETY: a 16-byte array.
        let e = unsafe { _mm_loadu_si128(rk[R - r].as_ptr().cast()) };
        let d = if r == 0 || r == R {
            e
        } else {
            _mm_aesimc_si128(e)
        };
        k[r] = _mm256_broadcastsi128_si256(d);
    }
    let dec = |mut x: core::arch::x86_64::__m256i| {
        x = _mm256_xor_si256(x, k[0]);
        for key in &k[1..R] {
            x = _mm256_aesdec_epi128(x, *key);
        }
        _mm256_aesdeclast_epi128(x, k[R])
    };
    for buf in bufs.iter_mut() {
        let base = buf.as_mut_ptr();
        // Blocks 1..hi (block 0 is the IV) are still ciphertext.
        let mut hi = buf.len() / 16;
        while hi > 16 {
            let lo = hi - 16;
            let mut x = [_mm256_setzero_si256(); 8];
            let mut pv = [_mm256_setzero_si256(); 8];
            for j in 0..8 {
                // SAFETY: blocks lo + 2j, lo + 2j + 1 and the two before them, all below
                // hi <= len / 16, and lo >= 1.
                unsafe {
                    x[j] = _mm256_loadu_si256(base.add(16 * (lo + 2 * j)).cast());
                    pv[j] = _mm256_loadu_si256(base.add(16 * (lo + 2 * j - 1)).cast());
                }
            }
            for j in 0..8 {
                x[j] = _mm256_xor_si256(dec(x[j]), pv[j]);
            }
            for (j, xj) in x.iter().enumerate() {
                // SAFETY: as the loads; the blocks were read above.
                unsafe { _mm256_storeu_si256(base.add(16 * (lo + 2 * j)).cast(), *xj) };
            }
            hi = lo;
        }
        while hi > 2 {
            let lo = hi - 2;
            // SAFETY: blocks lo - 1 .. lo + 2, lo >= 1.
            unsafe {
                let x = _mm256_loadu_si256(base.add(16 * lo).cast());
                let pv = _mm256_loadu_si256(base.add(16 * (lo - 1)).cast());
                _mm256_storeu_si256(base.add(16 * lo).cast(), _mm256_xor_si256(dec(x), pv));
            }
            hi = lo;
        }
        if hi == 2 {
            // One block left (block 1), its predecessor the IV: run it doubled in a pair.
            // SAFETY: blocks 0 and 1.
            unsafe {
                let x = _mm256_loadu2_m128i(base.add(16).cast(), base.add(16).cast());
                let pv = _mm256_loadu2_m128i(base.cast(), base.cast());
                let y = _mm256_xor_si256(dec(x), pv);
                let mut out = [0u8; 32];
                _mm256_storeu_si256(out.as_mut_ptr().cast(), y);
                core::ptr::copy_nonoverlapping(out.as_ptr(), base.add(16), 16);
            }
        }
    }
    for kr in k.iter_mut() {
        // SAFETY: a valid, aligned local.
        unsafe { core::ptr::write_volatile(kr, _mm256_setzero_si256()) };
    }
}

/// `run` CBC steps on 16 lanes. Lane l reads its chain value at `p[l]` and its first
/// plaintext block at `p[l] + 16`, writes the ciphertext over the plaintext and moves
/// `stride[l]` bytes per block.
///
/// # Safety
/// The CPU must have AVX2, VAES and AES-NI; `rk` holds at least `R + 1` keys; for each lane,
/// `p[l] .. p[l] + 16 + stride[l] * run + 16` is valid for reads and writes and no other
/// lane's range overlaps it unless both have stride 0 (then only the scratch is touched).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,vaes,aes")]
unsafe fn kernel<const R: usize>(
    rk: &[[u8; 16]],
    p: &[*mut u8; LANES],
    stride: &[usize; LANES],
    run: usize,
) {
    let mut k = [_mm256_setzero_si256(); 15];
    for (r, key) in rk.iter().take(R + 1).enumerate() {
        // SAFETY: a 16-byte array.
        k[r] = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(key.as_ptr().cast()) });
    }
    let mut q = *p;
    let mut c = [_mm256_setzero_si256(); LANES / 2];
    for j in 0..LANES / 2 {
        // SAFETY: the chain blocks at p[2j], p[2j+1] (the caller's contract).
        c[j] = unsafe { _mm256_loadu2_m128i(q[2 * j + 1].cast(), q[2 * j].cast()) };
    }
    for _ in 0..run {
        for l in 0..LANES {
            // SAFETY: within the lane's range (the caller's contract).
            q[l] = unsafe { q[l].add(stride[l]) };
        }
        let mut x = [_mm256_setzero_si256(); LANES / 2];
        for j in 0..LANES / 2 {
            // SAFETY: the lanes' current plaintext blocks.
            let pt = unsafe { _mm256_loadu2_m128i(q[2 * j + 1].cast(), q[2 * j].cast()) };
            x[j] = _mm256_xor_si256(_mm256_xor_si256(pt, c[j]), k[0]);
        }
        for key in &k[1..R] {
            for xj in x.iter_mut() {
                *xj = _mm256_aesenc_epi128(*xj, *key);
            }
        }
        for j in 0..LANES / 2 {
            c[j] = _mm256_aesenclast_epi128(x[j], k[R]);
            // SAFETY: as the load above; ciphertext replaces plaintext.
            unsafe { _mm256_storeu2_m128i(q[2 * j + 1].cast(), q[2 * j].cast(), c[j]) };
        }
    }
    // Round keys were broadcast into this frame: wipe them.
    for kr in k.iter_mut() {
        // SAFETY: a valid, aligned local.
        unsafe { core::ptr::write_volatile(kr, _mm256_setzero_si256()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes128;
    use aes::Aes256;
    use cbc::cipher::{BlockModeEncrypt, KeyIvInit};

    /// FIPS 197 key expansion in plain Rust (test only), to feed the kernel.
    fn schedule(key: &[u8]) -> Vec<[u8; 16]> {
        const RCON: [u8; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 27, 54];
        let sbox = |b: u8| -> u8 {
            // Multiplicative inverse in GF(2^8) then the affine map.
            let mut inv = 0u8;
            if b != 0 {
                for c in 1..=255u8 {
                    let mut a = b;
                    let mut bb = c;
                    let mut p = 0u8;
                    while bb != 0 {
                        if bb & 1 != 0 {
                            p ^= a;
                        }
                        let hi = a & 0x80;
                        a <<= 1;
                        if hi != 0 {
                            a ^= 0x1b;
                        }
                        bb >>= 1;
                    }
                    if p == 1 {
                        inv = c;
                        break;
                    }
                }
            }
            let mut s = inv;
            let mut x = inv;
            for _ in 0..4 {
                x = x.rotate_left(1);
                s ^= x;
            }
            s ^ 0x63
        };
        let nk = key.len() / 4;
        let nr = nk + 6;
        let mut w: Vec<[u8; 4]> = key.chunks(4).map(|c| c.try_into().unwrap()).collect();
        for i in nk..4 * (nr + 1) {
            let mut t = w[i - 1];
            if i % nk == 0 {
                t = [
                    sbox(t[1]) ^ RCON[i / nk - 1],
                    sbox(t[2]),
                    sbox(t[3]),
                    sbox(t[0]),
                ];
            } else if nk > 6 && i % nk == 4 {
                t = t.map(sbox);
            }
            let prev = w[i - nk];
            w.push([
                prev[0] ^ t[0],
                prev[1] ^ t[1],
                prev[2] ^ t[2],
                prev[3] ^ t[3],
            ]);
        }
        w.chunks(4)
            .map(|c| {
                let mut b = [0u8; 16];
                for (i, word) in c.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(word);
                }
                b
            })
            .collect()
    }

    /// RFC 3602 section 4, case #2 (AES-128-CBC, two blocks) through the burst path.
    #[test]
    fn rfc3602_case2() {
        if !available() {
            eprintln!("no VAES: skipped");
            return;
        }
        let key = hex::decode("c286696d887c9aa0611bbb3e2025a45a").unwrap();
        let mut buf = hex::decode(
            "562e17996d093d28ddb3ba695a2e6f58\
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .unwrap();
        encrypt_burst(&schedule(&key), &mut [&mut buf[..]]);
        assert_eq!(
            hex::encode(&buf[16..]),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1"
        );
        decrypt_burst(&schedule(&key), &mut [&mut buf[..]]);
        assert_eq!(
            hex::encode(&buf[16..]),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        );
    }

    /// Bursts of mixed lengths (0 to 120 blocks, more packets than lanes, fewer) against
    /// RustCrypto's `cbc`, AES-128 and AES-256.
    #[test]
    fn bursts_match_rustcrypto() {
        if !available() {
            eprintln!("no VAES: skipped");
            return;
        }
        for key_len in [16usize, 32] {
            let key: Vec<u8> = (0..key_len as u8)
                .map(|i| i.wrapping_mul(29) ^ 0x5a)
                .collect();
            let rk = schedule(&key);
            for count in [1usize, 2, 15, 16, 17, 33, 70] {
                let mut bufs: Vec<Vec<u8>> = (0..count)
                    .map(|i| {
                        let blocks = 1 + (i * 37 + count) % 121;
                        (0..16 * blocks).map(|j| (j * 7 + i * 13) as u8).collect()
                    })
                    .collect();
                let want: Vec<Vec<u8>> = bufs
                    .iter()
                    .map(|b| {
                        let mut out = b.clone();
                        let (iv, body) = out.split_at_mut(16);
                        let (blocks, _) = cbc::cipher::array::Array::slice_as_chunks_mut(body);
                        if key_len == 16 {
                            cbc::Encryptor::<Aes128>::new_from_slices(&key, iv)
                                .unwrap()
                                .encrypt_blocks(blocks);
                        } else {
                            cbc::Encryptor::<Aes256>::new_from_slices(&key, iv)
                                .unwrap()
                                .encrypt_blocks(blocks);
                        }
                        out
                    })
                    .collect();
                let plain = bufs.clone();
                let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                encrypt_burst(&rk, &mut refs);
                assert_eq!(bufs, want, "key {key_len} count {count}");
                let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                decrypt_burst(&rk, &mut refs);
                assert_eq!(bufs, plain, "decrypt: key {key_len} count {count}");
            }
        }
    }
}
