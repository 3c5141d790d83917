//! The fast backend: Intel ipsec-mb (Debian `libipsec-mb-dev`) through `csrc/imb_shim.c`.
//! AES-GCM uses the library's direct API (lowest per-call cost measured on these machines);
//! AES-CBC + HMAC uses the job manager, so a burst of packets of one SA is encrypted and
//! hashed multi-buffer (AVX-512 lanes).
//!
//! Two managers per thread: the library's pick for the CPU (`init_mb_mgr_auto`), and, for
//! HMAC-SHA1 and HMAC-SHA-256 on a CPU with the SHA extensions (SHA-NI) where that pick is
//! not AVX-512, the SSE manager. The library's AVX2 manager only uses SHA-NI on CPUs that
//! also have GFNI ("AVX2 type 2"), so on AMD Zen 2/3 it hashes with 8-lane AVX2 code; its
//! SSE manager hashes with SHA-NI. Measured on a Zen 3 EPYC (`perf crypto`, one core):
//! CBC+SHA1-96 at 64 bytes 4.7 -> 5.9 Mpps seal and 5.1 -> 6.2 open; CBC+SHA256-128 at
//! 1400 bytes 0.77 -> 1.09 seal and 0.80 -> 1.33 open; SHA-384/512 and GCM stay on the
//! library's pick (no SHA-NI for them; VAES for GCM).
//!
//! AES-GCM of large packets goes to ring's VAES-AVX2 code where the CPU has VAES but the
//! library's pick is not AVX-512 (`ring_min`, `super::ring_gcm`).
//!
//! This is the crypto FFI module: the `unsafe` of the crypto layer lives here (and in
//! `ring_gcm`'s key wiping). Each
//! thread gets its own `IMB_MGR` (the library's managers are not thread-safe); expanded keys
//! are immutable after creation and shared between threads.

use super::{Backend, CryptoOp, EspTransform, KeyError, Suite, gcm_aad, gcm_nonce};
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
        ops: *mut CbcOp,
        n: c_int,
    ) -> c_int;
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

/// Whether HMAC-SHA1/SHA-256 bursts go to the SSE manager (SHA-NI present, the library's
/// pick not AVX-512). Decided once per process; `ESPD_IMB_HMAC=auto` keeps them on the
/// library's pick and `ESPD_IMB_HMAC=sse` forces the SSE manager (to compare on a machine).
fn sha_ni_for_hmac() -> bool {
    static PICK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PICK.get_or_init(|| {
        match std::env::var("ESPD_IMB_HMAC").as_deref() {
            Ok("auto") => return false,
            Ok("sse") => return with_kind(Kind::Sse, |_| ()).is_some(),
            _ => {}
        }
        // SAFETY: the manager pointer is valid for the duration of the closure.
        with_mgr(|m| unsafe {
            espd_imb_mgr_features(m) & FEATURE_SHANI != 0 && espd_imb_mgr_arch(m) != ARCH_AVX512
        })
        .unwrap_or(false)
            && with_kind(Kind::Sse, |_| ()).is_some()
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
    if sha_ni_for_hmac() {
        extra.push_str("; SSE with SHA-NI for HMAC-SHA1/SHA-256");
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
        let kind = if matches!(alg, 1 | 256) && sha_ni_for_hmac() {
            Kind::Sse
        } else {
            Kind::Auto
        };
        Ok(Box::new(ImbCbc { suite, key, kind }))
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
        let icv = self.suite.icv_len();
        let mut jobs: smallvec::SmallVec<[CbcOp; CHUNK]> = smallvec::SmallVec::new();
        let mut idx: smallvec::SmallVec<[u8; CHUNK]> = smallvec::SmallVec::new();
        let mut got = [[0u8; 32]; CHUNK];
        let mut seq_hi_tail = [[0u8; 4]; CHUNK];
        for (i, op) in ops.iter_mut().enumerate() {
            let n = op.esp.len();
            op.ok = false;
            if n < 24 + icv + 16 || !(n - 24 - icv).is_multiple_of(16) {
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
            unsafe { espd_imb_cbc_burst(m, self.key, encrypt as c_int, jp, k as c_int) }
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
