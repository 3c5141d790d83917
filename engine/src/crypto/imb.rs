//! The fast backend: Intel ipsec-mb (Debian `libipsec-mb-dev`) through `csrc/imb_shim.c`.
//! AES-GCM uses the library's direct API (lowest per-call cost measured on these machines);
//! AES-CBC + HMAC uses the job manager, so a burst of packets of one SA is encrypted and
//! hashed multi-buffer (AVX-512 lanes).
//!
//! Where the CPU has the SHA extensions (SHA-NI) and the library's pick is not AVX-512
//! ([`hmac_pick`]), AES-CBC + HMAC-SHA1 and + HMAC-SHA-256 bypass the job manager: the
//! library's AVX2 manager only uses SHA-NI on CPUs that also have GFNI ("AVX2 type 2"), so
//! on AMD Zen 2/3 it hashes with 8-lane AVX2 code, and its SSE manager's SHA-NI code runs
//! two messages at a time. Ours: four-lane SHA-NI HMAC (`super::hmac_ni`) and 16-lane VAES
//! CBC (`super::cbc_vaes`) on the library's key schedule. Zen 3, `perf crypto`, Mpps seal /
//! open, library's pick -> SSE manager -> ours: CBC+SHA1-96 at 1400 bytes 1.25 / 1.43 ->
//! 1.28 / 1.32 -> 1.66 / 1.78, at 64 bytes 5.4 / 6.2 -> 6.4 / 7.0 -> 8.0 / 8.3;
//! CBC+SHA256-128 at 1400 bytes 0.78 / 0.70 -> 1.12 / 1.35 -> 1.47 / 1.54.
//!
//! SHA-384/512 stay on the library's pick (no SHA-NI for them).
//!
//! AES-GCM of large packets goes to ring's VAES-AVX2 code where the CPU has VAES but the
//! library's pick is not AVX-512 (`ring_min`, `super::ring_gcm`).
//!
//! This is the crypto FFI module: the `unsafe` of the crypto layer lives here (and in
//! `ring_gcm`'s key wiping and the SIMD kernels of `hmac_ni` and `cbc_vaes`). Each
//! thread gets its own `IMB_MGR` (the library's managers are not thread-safe); expanded keys
//! are immutable after creation and shared between threads.

use super::{Backend, CryptoOp, EspTransform, KeyError, Suite, gcm_aad, gcm_nonce};
use aes::cipher::KeyInit;
use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use zeroize::Zeroize;

#[repr(C)]
struct CbcOp {
    buf: *mut u8,
    cipher_off: u64,
    cipher_len: u64,
    hash_len: u64,
    tag: *mut u8,
    tag_len: u64,
    status: i32,
    _pad: i32,
}

unsafe extern "C" {
    fn espd_imb_mgr_new(sse: c_int) -> *mut c_void;
    fn espd_imb_mgr_features(m: *mut c_void) -> u64;
    fn espd_imb_mgr_free(m: *mut c_void);
    fn espd_imb_mgr_arch(m: *mut c_void) -> c_int;
    fn espd_imb_version() -> *const c_char;
    fn espd_imb_gcm_key_new(m: *mut c_void, key: *const u8, key_len: c_int) -> *mut c_void;
    fn espd_imb_gcm_key_free(k: *mut c_void);
    fn espd_imb_gcm_seal(
        m: *mut c_void,
        k: *const c_void,
        key_len: c_int,
        buf: *mut u8,
        len: u64,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        tag: *mut u8,
    );
    fn espd_imb_gcm_open(
        m: *mut c_void,
        k: *const c_void,
        key_len: c_int,
        buf: *mut u8,
        len: u64,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        tag: *mut u8,
    );
    fn espd_imb_cbc_key_new(
        m: *mut c_void,
        aes_key: *const u8,
        aes_len: c_int,
        hash_alg: c_int,
        mac_key: *const u8,
        mac_len: c_int,
    ) -> *mut c_void;
    fn espd_imb_cbc_key_free(k: *mut c_void);
    fn espd_imb_hmac(
        m: *mut c_void,
        key: *const c_void,
        data: *const u8,
        len: u64,
        tag: *mut u8,
        tag_len: u64,
    ) -> c_int;
    fn espd_imb_cbc_burst(
        m: *mut c_void,
        key: *const c_void,
        encrypt: c_int,
        hash: c_int,
        ops: *mut CbcOp,
        n: c_int,
    ) -> c_int;
    fn espd_imb_cbc_enc_keys(key: *const c_void) -> *const u8;
}

/// A thread's multi-buffer manager.
struct Mgr(*mut c_void);

impl Drop for Mgr {
    fn drop(&mut self) {
        // SAFETY: the pointer came from espd_imb_mgr_new and is freed once, by its owning thread.
        unsafe { espd_imb_mgr_free(self.0) }
    }
}

/// Which of a thread's two managers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `init_mb_mgr_auto`.
    Auto = 0,
    /// `init_mb_mgr_sse` (SHA-NI hashing where the CPU has it).
    Sse = 1,
}

thread_local! {
    static MGR: RefCell<[Option<Mgr>; 2]> = const { RefCell::new([None, None]) };
}

/// Runs `f` with this thread's manager, creating it on first use. Returns `None` when the
/// library cannot initialise on this CPU.
fn with_mgr<R>(f: impl FnOnce(*mut c_void) -> R) -> Option<R> {
    with_kind(Kind::Auto, f)
}

fn with_kind<R>(kind: Kind, f: impl FnOnce(*mut c_void) -> R) -> Option<R> {
    MGR.with(|cell| {
        let mut slots = cell.borrow_mut();
        let slot = &mut slots[kind as usize];
        if slot.is_none() {
            // SAFETY: plain constructor; NULL is handled.
            let p = unsafe { espd_imb_mgr_new((kind == Kind::Sse) as c_int) };
            if p.is_null() {
                return None;
            }
            *slot = Some(Mgr(p));
        }
        slot.as_ref().map(|m| f(m.0))
    })
}

/// IMB_FEATURE_SHANI of intel-ipsec-mb.h.
const FEATURE_SHANI: u64 = 1;
/// IMB_ARCH_AVX512.
const ARCH_AVX512: c_int = 5;

/// Where HMAC-SHA1 and HMAC-SHA-256 run, decided once per process ([`hmac_pick`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HmacPick {
    /// The library's pick for the CPU (`init_mb_mgr_auto`) for every hash.
    Library,
    /// The SSE manager (two-lane SHA-NI) for SHA-1 and SHA-256.
    Sse,
    /// SHA-1 and SHA-256 on our four-lane SHA-NI code (`super::hmac_ni`), the AES-CBC
    /// around them on 16-lane VAES (`super::cbc_vaes`) or, without VAES, the library
    /// (encryption) and RustCrypto (decryption).
    Lanes,
}

/// The default: where the CPU has SHA-NI and the library's pick is not AVX-512,
/// [`HmacPick::Lanes`] (Zen 3, AES-128-CBC + HMAC-SHA1 at 1400 bytes: 1.66 Mpps seal against
/// 1.25 on the library's pick); otherwise the library's pick. `ESPD_IMB_HMAC=auto` keeps
/// every HMAC on the library's pick, `=sse` sends SHA-1 and SHA-256 to the SSE manager,
/// `=lanes` asks for the default where the CPU allows it (to compare on a machine).
pub fn hmac_pick() -> HmacPick {
    static PICK: std::sync::OnceLock<HmacPick> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        let sse_ok = || with_kind(Kind::Sse, |_| ()).is_some();
        let cpu = || {
            // SAFETY: the manager pointer is valid for the duration of the closure.
            let shani_not_512 = with_mgr(|m| unsafe {
                espd_imb_mgr_features(m) & FEATURE_SHANI != 0 && espd_imb_mgr_arch(m) != ARCH_AVX512
            })
            .unwrap_or(false);
            if shani_not_512 && super::hmac_ni::available() && sse_ok() {
                HmacPick::Lanes
            } else {
                HmacPick::Library
            }
        };
        match std::env::var("ESPD_IMB_HMAC").as_deref() {
            Ok("auto") => HmacPick::Library,
            Ok("sse") if sse_ok() => HmacPick::Sse,
            _ => cpu(),
        }
    })
}

/// ESP packets (SPI to ICV) of at least this many bytes are sealed and opened with ring's
/// VAES + VPCLMULQDQ AVX2 GCM instead of the library's, where [`ring_min`] chooses it.
const RING_MIN_DEFAULT: usize = 1024;

/// From which ESP length AES-GCM goes to ring (`super::ring_gcm`), or None (all on
/// ipsec-mb). Decided once per process: where the CPU has AVX2, VAES and VPCLMULQDQ and the
/// library's pick is not AVX-512 (whose GCM uses VAES already), from [`RING_MIN_DEFAULT`]
/// bytes. `ESPD_GCM_RING=off` keeps everything on ipsec-mb, `ESPD_GCM_RING=<bytes>` sets
/// the length (0: every packet), to compare on a machine.
pub(super) fn ring_min() -> Option<usize> {
    static PICK: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        let cpu = || {
            let vaes_avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("vaes")
                && std::arch::is_x86_feature_detected!("vpclmulqdq");
            // SAFETY: the manager pointer is valid for the duration of the closure.
            let avx512 = with_mgr(|m| unsafe { espd_imb_mgr_arch(m) }) == Some(ARCH_AVX512);
            (vaes_avx2 && !avx512).then_some(RING_MIN_DEFAULT)
        };
        match std::env::var("ESPD_GCM_RING").as_deref() {
            Ok("off") => None,
            Ok(n) => n.parse().ok().or_else(cpu),
            Err(_) => cpu(),
        }
    })
}

/// Whether ipsec-mb initialises on this machine.
pub fn available() -> bool {
    with_mgr(|_| ()).is_some()
}

/// `ipsec-mb 1.3.0 (AVX512)`.
pub fn describe() -> String {
    // SAFETY: returns a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(espd_imb_version()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the manager pointer is valid for the duration of the closure.
    let arch = with_mgr(|m| unsafe { espd_imb_mgr_arch(m) }).unwrap_or(0);
    let a = match arch {
        1 => "no AES-NI",
        2 => "SSE",
        3 => "AVX",
        4 => "AVX2",
        5 => "AVX512",
        _ => "none",
    };
    let mut extra = String::new();
    match hmac_pick() {
        HmacPick::Library => {}
        HmacPick::Sse => extra.push_str("; SSE with SHA-NI for HMAC-SHA1/SHA-256"),
        HmacPick::Lanes => {
            extra.push_str("; HMAC-SHA1/SHA-256 on 4-lane SHA-NI");
            if super::cbc_vaes::available() {
                extra.push_str(", AES-CBC on 16-lane VAES");
            }
        }
    }
    if let Some(n) = ring_min() {
        extra.push_str(&format!(
            "; AES-GCM packets of {n} bytes and more on ring's VAES-AVX2"
        ));
    }
    format!("ipsec-mb {v} ({a}{extra})")
}

pub(super) fn new(
    suite: Suite,
    enc_key: &[u8],
    int_key: &[u8],
) -> Result<Box<dyn EspTransform>, KeyError> {
    new_with(
        suite,
        enc_key,
        int_key,
        hmac_pick(),
        super::cbc_vaes::available(),
    )
}

/// [`new`] with the HMAC placement and the VAES CBC encryption chosen by the caller (tests
/// run every combination the CPU allows).
fn new_with(
    suite: Suite,
    enc_key: &[u8],
    int_key: &[u8],
    pick: HmacPick,
    vaes: bool,
) -> Result<Box<dyn EspTransform>, KeyError> {
    let n = suite.enc.aes_key_len();
    if suite.enc.is_gcm() {
        let key = with_mgr(|m| {
            // SAFETY: enc_key holds at least n bytes (checked by check_keys); m is valid.
            unsafe { espd_imb_gcm_key_new(m, enc_key.as_ptr(), n as c_int) }
        })
        .ok_or(KeyError::BackendUnavailable("ipsec-mb"))?;
        if key.is_null() {
            return Err(KeyError::Backend);
        }
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&enc_key[n..n + 4]);
        let large =
            ring_min().and_then(|min| Some((super::ring_gcm::RingGcm::new(suite, enc_key)?, min)));
        Ok(Box::new(ImbGcm {
            suite,
            key,
            key_len: n as c_int,
            salt,
            large,
        }))
    } else {
        let alg = match suite.integ.icv_len() {
            12 => 1,
            16 => 256,
            24 => 384,
            _ => 512,
        };
        let key = with_mgr(|m| {
            // SAFETY: both keys are valid slices of the given lengths; m is valid.
            unsafe {
                espd_imb_cbc_key_new(
                    m,
                    enc_key.as_ptr(),
                    n as c_int,
                    alg,
                    int_key.as_ptr(),
                    int_key.len() as c_int,
                )
            }
        })
        .ok_or(KeyError::BackendUnavailable("ipsec-mb"))?;
        if key.is_null() {
            return Err(KeyError::Backend);
        }
        let kind = if matches!(alg, 1 | 256) && pick != HmacPick::Library {
            Kind::Sse
        } else {
            Kind::Auto
        };
        let hash = match alg {
            1 => Some(super::hmac_ni::Alg::Sha1),
            256 => Some(super::hmac_ni::Alg::Sha256),
            _ => None,
        };
        let lanes = hash.filter(|_| pick == HmacPick::Lanes).map(|h| Lanes {
            hmac: super::hmac_ni::Hmac::new(h, int_key),
            dec: if n == 16 {
                CbcDec::A128(aes::Aes128Dec::new_from_slice(&enc_key[..16]).expect("16"))
            } else {
                CbcDec::A256(aes::Aes256Dec::new_from_slice(&enc_key[..32]).expect("32"))
            },
            vaes: vaes && super::cbc_vaes::available(),
        });
        Ok(Box::new(ImbCbc {
            suite,
            key,
            kind,
            lanes,
        }))
    }
}

struct ImbGcm {
    suite: Suite,
    key: *mut c_void,
    key_len: c_int,
    salt: [u8; 4],
    /// The same key on ring, for ESP packets of at least this length ([`ring_min`]).
    large: Option<(super::ring_gcm::RingGcm, usize)>,
}

// SAFETY: the expanded key is written once at creation and only read afterwards; the
// per-call context lives on the stack of the calling thread.
unsafe impl Send for ImbGcm {}
// SAFETY: as above: shared read-only key data.
unsafe impl Sync for ImbGcm {}

impl Drop for ImbGcm {
    fn drop(&mut self) {
        self.salt.zeroize();
        // SAFETY: allocated by espd_imb_gcm_key_new, freed (and wiped) once.
        unsafe { espd_imb_gcm_key_free(self.key) }
    }
}

impl ImbGcm {
    /// Seals one packet with an already borrowed manager.
    #[inline]
    fn seal_with(&self, m: *mut c_void, esp: &mut [u8], seq_hi: Option<u32>) {
        if let Some((r, min)) = &self.large
            && esp.len() >= *min
        {
            return r.seal(esp, seq_hi);
        }
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = gcm_nonce(&self.salt, esp);
        let n = esp.len();
        let p = esp.as_mut_ptr();
        // SAFETY: body [16, n-16) and tag [n-16, n) lie inside `esp` (n >= 32 is the caller's
        // contract); nonce and aad are stack arrays of 12 bytes; the key outlives the call.
        unsafe {
            espd_imb_gcm_seal(
                m,
                self.key,
                self.key_len,
                p.add(16),
                (n - 32) as u64,
                nonce.as_ptr(),
                aad.as_ptr(),
                aad_len as u64,
                p.add(n - 16),
            )
        }
    }

    /// Decrypts one packet with an already borrowed manager and checks its tag.
    #[inline]
    fn open_with(&self, m: *mut c_void, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        let n = esp.len();
        if n < 32 {
            return false;
        }
        if let Some((r, min)) = &self.large
            && n >= *min
        {
            return r.open(esp, seq_hi);
        }
        let (aad, aad_len) = gcm_aad(esp, seq_hi);
        let nonce = gcm_nonce(&self.salt, esp);
        let mut tag = [0u8; 16];
        let p = esp.as_mut_ptr();
        // SAFETY: as in seal_with; the computed tag goes to a stack buffer.
        unsafe {
            espd_imb_gcm_open(
                m,
                self.key,
                self.key_len,
                p.add(16),
                (n - 32) as u64,
                nonce.as_ptr(),
                aad.as_ptr(),
                aad_len as u64,
                tag.as_mut_ptr(),
            )
        }
        super::ct_eq(&tag, &esp[n - 16..])
    }
}

impl EspTransform for ImbGcm {
    fn suite(&self) -> Suite {
        self.suite
    }
    fn backend(&self) -> Backend {
        Backend::IpsecMb
    }
    fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        with_mgr(|m| self.seal_with(m, esp, seq_hi))
            .expect("ipsec-mb manager was available when the key was built");
    }
    fn auth_tag(&self, _data: &[u8], _out: &mut [u8]) -> bool {
        false
    }
    fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        with_mgr(|m| self.open_with(m, esp, seq_hi)).expect("ipsec-mb manager available")
    }
    /// One thread-local lookup per burst instead of per packet.
    fn seal_burst(&self, ops: &mut [CryptoOp<'_>]) {
        with_mgr(|m| {
            for op in ops.iter_mut() {
                self.seal_with(m, op.esp, op.seq_hi);
                op.ok = true;
            }
        })
        .expect("ipsec-mb manager available");
    }
    fn open_burst(&self, ops: &mut [CryptoOp<'_>]) {
        with_mgr(|m| {
            for op in ops.iter_mut() {
                op.ok = self.open_with(m, op.esp, op.seq_hi);
            }
        })
        .expect("ipsec-mb manager available");
    }
}

struct ImbCbc {
    suite: Suite,
    key: *mut c_void,
    /// The manager its bursts run on (the key data is the same for both).
    kind: Kind,
    /// HMAC-SHA1 SAs under [`HmacPick::Lanes`]: bursts bypass the job manager's hashing.
    lanes: Option<Lanes>,
}

/// The pieces of an AES-CBC + HMAC-SHA1 or HMAC-SHA-256 SA for [`HmacPick::Lanes`]. The
/// ICVs run on `super::hmac_ni`; opening checks them first and decrypts only packets that pass. With
/// VAES both directions of AES-CBC run on `super::cbc_vaes` with the library's key schedule
/// (Zen 3, 1,424 bytes: encryption 107 ns against the library's 237, decryption 16 blocks
/// per step); without it encryption runs on the library (cipher only) and decryption on
/// RustCrypto's `aes`. Key schedules and pad states are wiped on drop by their own types.
struct Lanes {
    hmac: super::hmac_ni::Hmac,
    dec: CbcDec,
    vaes: bool,
}

enum CbcDec {
    A128(aes::Aes128Dec),
    A256(aes::Aes256Dec),
}

impl CbcDec {
    /// Decrypts `IV | ciphertext` in place (the IV stays).
    fn decrypt(&self, buf: &mut [u8]) {
        use cbc::cipher::{BlockModeDecrypt, InnerIvInit, array::Array};
        let (iv, body) = buf.split_at_mut(16);
        let iv = Array::from(<[u8; 16]>::try_from(&*iv).expect("16-byte IV"));
        let (blocks, _) = Array::slice_as_chunks_mut(body);
        match self {
            CbcDec::A128(k) => {
                cbc::Decryptor::<&aes::Aes128Dec>::inner_iv_init(k, &iv).decrypt_blocks(blocks)
            }
            CbcDec::A256(k) => {
                cbc::Decryptor::<&aes::Aes256Dec>::inner_iv_init(k, &iv).decrypt_blocks(blocks)
            }
        }
    }
}

// SAFETY: the key structure (AES schedules and HMAC pad states) is immutable after creation.
unsafe impl Send for ImbCbc {}
// SAFETY: as above.
unsafe impl Sync for ImbCbc {}

impl Drop for ImbCbc {
    fn drop(&mut self) {
        // SAFETY: allocated by espd_imb_cbc_key_new, freed (and wiped) once.
        unsafe { espd_imb_cbc_key_free(self.key) }
    }
}

/// Whether an ESP packet of `n` bytes can be AES-CBC: header and IV (24 bytes), at least
/// one whole block, whole blocks only, then the ICV.
fn cbc_len_ok(n: usize, icv: usize) -> bool {
    n >= 24 + icv + 16 && (n - 24 - icv).is_multiple_of(16)
}

/// Most packets one job-manager call takes; longer bursts are cut into chunks of this size.
const CHUNK: usize = 64;

impl ImbCbc {
    /// Runs up to CHUNK packets through the job manager. Sealing writes each ICV straight
    /// into its packet; opening computes the ICVs into a stack array and compares them with
    /// the received ones in place. With ESN, seq-hi is hashed after the ciphertext where the
    /// ICV sits (RFC 4303 section 3.3.2.2): those 4 bytes are saved and, when opening,
    /// restored before the compare; when sealing the library's ICV overwrites them after
    /// the hash. Only the valid packets become jobs (no zeroed job table per burst).
    fn run(&self, ops: &mut [CryptoOp<'_>], encrypt: bool) {
        if let Some(lanes) = &self.lanes {
            return self.run_lanes(lanes, ops, encrypt);
        }
        let icv = self.suite.icv_len();
        let mut jobs: smallvec::SmallVec<[CbcOp; CHUNK]> = smallvec::SmallVec::new();
        let mut idx: smallvec::SmallVec<[u8; CHUNK]> = smallvec::SmallVec::new();
        let mut got = [[0u8; 32]; CHUNK];
        let mut seq_hi_tail = [[0u8; 4]; CHUNK];
        for (i, op) in ops.iter_mut().enumerate() {
            let n = op.esp.len();
            op.ok = false;
            if !cbc_len_ok(n, icv) {
                continue;
            }
            let authed = n - icv;
            let mut hash_len = authed;
            if let Some(hi) = op.seq_hi {
                seq_hi_tail[i].copy_from_slice(&op.esp[authed..authed + 4]);
                op.esp[authed..authed + 4].copy_from_slice(&hi.to_be_bytes());
                hash_len += 4;
            }
            let tag = if encrypt {
                op.esp[authed..].as_mut_ptr()
            } else {
                got[i].as_mut_ptr()
            };
            jobs.push(CbcOp {
                buf: op.esp.as_mut_ptr(),
                cipher_off: 24,
                cipher_len: (authed - 24) as u64,
                hash_len: hash_len as u64,
                tag,
                tag_len: icv as u64,
                status: -1,
                _pad: 0,
            });
            idx.push(i as u8);
        }
        let k = jobs.len();
        if k == 0 {
            return;
        }
        let jp = jobs.as_mut_ptr();
        // HMAC-SHA1 sealing of large packets: the library's AVX2 manager (8-lane AES-CBC
        // encryption) edges out SHA-NI hashing from 1 KB up (Zen 3, `perf crypto`:
        // 1400 bytes 1.07 vs 0.98 Mpps; 900 bytes 1.47 vs 1.54).
        let kind = if self.kind == Kind::Sse
            && encrypt
            && icv == 12
            && jobs.iter().map(|j| j.cipher_len).sum::<u64>() >= 1024 * k as u64
        {
            Kind::Auto
        } else {
            self.kind
        };
        with_kind(kind, |m| {
            // SAFETY: each job points into a distinct packet buffer borrowed mutably for
            // this call, with offsets/lengths checked above, and its tag into that packet's
            // ICV field (seal) or into `got` (open).
            unsafe { espd_imb_cbc_burst(m, self.key, encrypt as c_int, 1, jp, k as c_int) }
        })
        .expect("ipsec-mb manager available");
        for (j, &i) in idx.iter().enumerate() {
            let i = usize::from(i);
            let op = &mut ops[i];
            let authed = op.esp.len() - icv;
            let status_ok = jobs[j].status == 0;
            if encrypt {
                op.ok = status_ok;
            } else {
                if op.seq_hi.is_some() {
                    op.esp[authed..authed + 4].copy_from_slice(&seq_hi_tail[i]);
                }
                op.ok = status_ok && super::ct_eq(&got[i][..icv], &op.esp[authed..]);
            }
        }
    }
}

impl ImbCbc {
    /// [`Self::run`] for [`HmacPick::Lanes`]: up to CHUNK packets of an AES-CBC +
    /// HMAC-SHA1-96 or HMAC-SHA2-256-128 SA. Sealing encrypts every packet, then hashes them
    /// four at a time and
    /// writes the ICVs; opening hashes first, compares in constant time and decrypts only
    /// the packets whose ICV matches. ESN's seq-hi sits where the ICV goes while hashing,
    /// as in `run`.
    fn run_lanes(&self, lanes: &Lanes, ops: &mut [CryptoOp<'_>], encrypt: bool) {
        let icv = self.suite.icv_len();
        let mut valid = [false; CHUNK];
        let mut hash_len = [0usize; CHUNK];
        let mut seq_hi_tail = [[0u8; 4]; CHUNK];
        let mut any = false;
        for (i, op) in ops.iter_mut().enumerate() {
            let n = op.esp.len();
            op.ok = false;
            if !cbc_len_ok(n, icv) {
                continue;
            }
            let authed = n - icv;
            valid[i] = true;
            any = true;
            hash_len[i] = authed;
            if let Some(hi) = op.seq_hi {
                seq_hi_tail[i].copy_from_slice(&op.esp[authed..authed + 4]);
                op.esp[authed..authed + 4].copy_from_slice(&hi.to_be_bytes());
                hash_len[i] += 4;
            }
        }
        if !any {
            return;
        }
        if encrypt {
            let mut bufs: smallvec::SmallVec<[&mut [u8]; CHUNK]> = ops
                .iter_mut()
                .zip(valid)
                .filter(|(_, v)| *v)
                .map(|(op, _)| {
                    let authed = op.esp.len() - icv;
                    &mut op.esp[8..authed]
                })
                .collect();
            if !self.cbc_encrypt(lanes, &mut bufs) {
                return;
            }
        }
        let mut tags = [[0u8; 32]; CHUNK];
        {
            let msgs: smallvec::SmallVec<[&[u8]; CHUNK]> = ops
                .iter()
                .enumerate()
                .filter(|(i, _)| valid[*i])
                .map(|(i, op)| &op.esp[..hash_len[i]])
                .collect();
            lanes.hmac.burst(&msgs, &mut tags);
        }
        let mut j = 0;
        for (i, op) in ops.iter_mut().enumerate() {
            if !valid[i] {
                continue;
            }
            let tag = &tags[j][..icv];
            j += 1;
            let authed = op.esp.len() - icv;
            if encrypt {
                op.esp[authed..].copy_from_slice(tag);
                op.ok = true;
            } else {
                if op.seq_hi.is_some() {
                    op.esp[authed..authed + 4].copy_from_slice(&seq_hi_tail[i]);
                }
                op.ok = super::ct_eq(tag, &op.esp[authed..]);
                if op.ok && !lanes.vaes {
                    lanes.dec.decrypt(&mut op.esp[8..authed]);
                }
            }
        }
        tags.zeroize();
        if !encrypt && lanes.vaes {
            let mut bufs: smallvec::SmallVec<[&mut [u8]; CHUNK]> = ops
                .iter_mut()
                .filter(|op| op.ok)
                .map(|op| {
                    let authed = op.esp.len() - icv;
                    &mut op.esp[8..authed]
                })
                .collect();
            super::cbc_vaes::decrypt_burst(self.enc_schedule(), &mut bufs);
        }
    }

    /// The library's AES encryption key schedule of this SA (11 or 15 round keys).
    fn enc_schedule(&self) -> &[[u8; 16]] {
        let nk = if self.suite.enc.aes_key_len() == 16 {
            11
        } else {
            15
        };
        // SAFETY: the key structure lives as long as `self` and holds the schedule's nk
        // round keys of 16 bytes at `enc` (struct espd_cbc_key: room for 15), never written
        // after creation.
        unsafe {
            std::slice::from_raw_parts(espd_imb_cbc_enc_keys(self.key).cast::<[u8; 16]>(), nk)
        }
    }

    /// CBC-encrypts `IV | plaintext` buffers in place: 16-lane VAES with the library's key
    /// schedule, or the library's job manager with no hash.
    /// False when the library failed a job (then no packet of the burst is sealed).
    fn cbc_encrypt(&self, lanes: &Lanes, bufs: &mut [&mut [u8]]) -> bool {
        if lanes.vaes {
            super::cbc_vaes::encrypt_burst(self.enc_schedule(), bufs);
            return true;
        }
        let mut jobs: smallvec::SmallVec<[CbcOp; CHUNK]> = bufs
            .iter_mut()
            .map(|b| CbcOp {
                buf: b.as_mut_ptr(),
                cipher_off: 16,
                cipher_len: (b.len() - 16) as u64,
                hash_len: 0,
                tag: std::ptr::null_mut(),
                tag_len: 0,
                status: -1,
                _pad: 0,
            })
            .collect();
        let k = jobs.len();
        let jp = jobs.as_mut_ptr();
        let done = with_kind(Kind::Auto, |m| {
            // SAFETY: each job covers one distinct buffer borrowed mutably for this call:
            // its IV at offset 0 and cipher_len bytes of whole blocks after it; no hash, so
            // no tag is written.
            unsafe { espd_imb_cbc_burst(m, self.key, 1, 0, jp, k as c_int) }
        })
        .expect("ipsec-mb manager available");
        done as usize == k
    }
}

impl EspTransform for ImbCbc {
    fn suite(&self) -> Suite {
        self.suite
    }
    fn backend(&self) -> Backend {
        Backend::IpsecMb
    }
    fn seal(&self, esp: &mut [u8], seq_hi: Option<u32>) {
        let mut ops = [CryptoOp {
            esp,
            seq_hi,
            ok: false,
        }];
        self.run(&mut ops, true);
    }
    fn auth_tag(&self, data: &[u8], out: &mut [u8]) -> bool {
        let full = match self.suite.integ.icv_len() {
            12 => 20,
            16 => 32,
            24 => 48,
            _ => 64,
        };
        let n = out.len().min(full);
        // SAFETY: data and out are valid slices; the library writes n <= out.len() bytes.
        let rc = with_kind(self.kind, |m| unsafe {
            espd_imb_hmac(
                m,
                self.key,
                data.as_ptr(),
                data.len() as u64,
                out.as_mut_ptr(),
                n as u64,
            )
        });
        rc == Some(0)
    }
    fn open(&self, esp: &mut [u8], seq_hi: Option<u32>) -> bool {
        let mut ops = [CryptoOp {
            esp,
            seq_hi,
            ok: false,
        }];
        self.run(&mut ops, false);
        ops[0].ok
    }
    fn seal_burst(&self, ops: &mut [CryptoOp<'_>]) {
        for chunk in ops.chunks_mut(CHUNK) {
            self.run(chunk, true);
        }
    }
    fn open_burst(&self, ops: &mut [CryptoOp<'_>]) {
        for chunk in ops.chunks_mut(CHUNK) {
            self.run(chunk, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Encryption, Integrity};

    /// Every HMAC placement and CBC encryption path the CPU allows, for AES-128/256 +
    /// HMAC-SHA1-96 and SHA-256-128, against RustCrypto packet by packet: bursts of mixed
    /// lengths (more packets than a chunk, malformed lengths among them), with and without
    /// ESN; opening the same bursts with tampered packets among them.
    #[test]
    fn every_cbc_path_matches_rustcrypto_in_bursts() {
        if !available() {
            eprintln!("ipsec-mb unavailable: skipped");
            return;
        }
        let mut paths = vec![(HmacPick::Library, false)];
        if with_kind(Kind::Sse, |_| ()).is_some() {
            paths.push((HmacPick::Sse, false));
        }
        if super::super::hmac_ni::available() {
            paths.push((HmacPick::Lanes, false));
            if super::super::cbc_vaes::available() {
                paths.push((HmacPick::Lanes, true));
            }
        }
        for enc in [Encryption::Aes128Cbc, Encryption::Aes256Cbc] {
            for integ in [Integrity::Sha1_96, Integrity::Sha256_128] {
                let suite = Suite::new(enc, integ).expect("valid suite");
                let ek: Vec<u8> = (0..enc.enc_key_len() as u8).map(|i| i ^ 0x3c).collect();
                let ik: Vec<u8> = (0..integ.key_len() as u8).map(|i| i * 3 + 1).collect();
                let reference = super::super::rust::new(suite, &ek, &ik);
                for &(pick, vaes) in &paths {
                    let t = new_with(suite, &ek, &ik, pick, vaes).expect("key");
                    for seq_hi in [None, Some(0x0102_0304)] {
                        check_bursts(
                            &*t,
                            &*reference,
                            seq_hi,
                            &format!("{suite} {pick:?} vaes {vaes}"),
                        );
                    }
                }
            }
        }
    }

    /// Seals or opens the packets as one burst; the per-packet `ok` flags.
    fn burst(
        t: &dyn EspTransform,
        pkts: &mut [Vec<u8>],
        seq_hi: Option<u32>,
        seal: bool,
    ) -> Vec<bool> {
        let mut ops: Vec<CryptoOp<'_>> = pkts
            .iter_mut()
            .map(|p| CryptoOp {
                esp: &mut p[..],
                seq_hi,
                ok: false,
            })
            .collect();
        if seal {
            t.seal_burst(&mut ops);
        } else {
            t.open_burst(&mut ops);
        }
        ops.iter().map(|o| o.ok).collect()
    }

    fn check_bursts(
        t: &dyn EspTransform,
        reference: &dyn EspTransform,
        seq_hi: Option<u32>,
        what: &str,
    ) {
        let icv = t.suite().icv_len();
        // ESP lengths: header 8 + IV 16 + blocks + ICV; some malformed (not whole blocks,
        // too short).
        let lens: Vec<usize> = (0..80)
            .map(|i| match i % 11 {
                3 => 24 + icv + 5,
                7 => 20,
                _ => 24 + 16 * (1 + (i * 29) % 95) + icv,
            })
            .collect();
        let base: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|j| (j * 13 + k * 7 + 1) as u8).collect())
            .collect();
        let mut sealed = base.clone();
        let oks = burst(t, &mut sealed, seq_hi, true);
        for (k, p) in sealed.iter().enumerate() {
            let well_formed = cbc_len_ok(lens[k], icv);
            assert_eq!(oks[k], well_formed, "{what}: packet {k} sealed flag");
            if !well_formed {
                continue;
            }
            let mut want = base[k].clone();
            reference.seal(&mut want, seq_hi);
            assert_eq!(p, &want, "{what}: packet {k} of {} bytes", lens[k]);
        }
        // Open: every third well-formed packet tampered (ICV, ciphertext or header).
        let mut opened = sealed.clone();
        for (k, p) in opened.iter_mut().enumerate() {
            if k % 3 == 1 && p.len() > 40 {
                let at = [p.len() - 1, 30, 2][k % 9 / 3];
                p[at] ^= 0x40;
            }
        }
        let oks = burst(t, &mut opened, seq_hi, false);
        for (k, p) in opened.iter().enumerate() {
            let well_formed = cbc_len_ok(lens[k], icv);
            let tampered = k % 3 == 1 && lens[k] > 40;
            assert_eq!(
                oks[k],
                well_formed && !tampered,
                "{what}: packet {k} opened flag"
            );
            if oks[k] {
                let n = lens[k] - icv;
                assert_eq!(&p[24..n], &base[k][24..n], "{what}: packet {k} plaintext");
                assert_eq!(&p[n..], &sealed[k][n..], "{what}: packet {k} ICV kept");
            }
        }
    }
}
