//! AF_XDP sockets over `libc`: a UMEM, its fill and completion rings, and the RX / TX rings
//! of one socket bound to one queue of one interface (Linux `Documentation/networking/af_xdp.rst`).
//!
//! Contract: [`Xsk::open`] registers a UMEM of `frames` 2048-byte chunks, binds the socket
//! (zero-copy when the driver supports it, copy mode otherwise, reported by [`Xsk::zero_copy`];
//! `EBUSY` right after a previous socket on the queue closed is retried for up to a second),
//! and leaves every frame with the caller: the caller decides which frames feed the fill ring
//! and which are TX frames. Rings are single-producer / single-consumer: one thread uses an
//! `Xsk` (it is `Send`, not `Sync`); the kernel is the other side. Indices are read with
//! Acquire and published with Release. Nothing here allocates after `open`.
//!
//! This is the I/O layer: the raw pointers into the shared rings live only here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

const AF_XDP: libc::c_int = 44;
const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_STATISTICS: libc::c_int = 7;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_PGOFF_TX_RING: libc::off_t = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// Size of one UMEM chunk (one frame).
pub const FRAME_SIZE: usize = 2048;
/// Where the kernel puts received data inside a chunk in aligned mode (XDP_PACKET_HEADROOM).
pub const RX_HEADROOM: usize = 256;

#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// One RX / TX descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// Kernel statistics of a socket (`XDP_STATISTICS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XdpStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A memory mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: RawFd, off: libc::off_t, what: &str) -> io::Result<Mapping> {
        let (flags, fd) = if fd < 0 {
            (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            )
        } else {
            (libc::MAP_SHARED | libc::MAP_POPULATE, fd)
        };
        // SAFETY: a fresh mapping at an address of the kernel's choice; no existing memory
        // is affected. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err(what));
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing refers to the mapping
        // once its owner is dropped.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One mapped ring. `T` is `u64` (fill / completion: frame addresses) or `XdpDesc`.
struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut T,
    mask: u32,
    size: u32,
    /// Our copy of our own index and our last view of the kernel's.
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: RawFd,
        off: &RingOffset,
        size: u32,
        pgoff: libc::off_t,
        what: &str,
    ) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let m = Mapping::new(len, fd, pgoff, what)?;
        let base = m.ptr.as_ptr();
        // SAFETY: the kernel's offsets lie inside the mapping of `len` bytes it described.
        let (producer, consumer, flags, desc) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.flags as usize) as *const AtomicU32,
                base.add(off.desc as usize) as *mut T,
            )
        };
        let mut r = Ring {
            _map: m,
            producer,
            consumer,
            flags,
            desc,
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        r.cached_prod = r.prod().load(Ordering::Relaxed);
        r.cached_cons = r.cons().load(Ordering::Relaxed);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping owned by self; the kernel only accesses it
        // atomically too.
        unsafe { &*self.producer }
    }
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for `prod`.
        unsafe { &*self.consumer }
    }
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `prod`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & XDP_RING_NEED_WAKEUP != 0
    }

    // --- producer side (fill, tx) ---
    /// Free slots (refreshing the consumer index only when the cached view is short).
    fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return free;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }
    /// Writes one entry at the next producer slot (visible after `submit`).
    fn write(&mut self, v: T) {
        let i = (self.cached_prod & self.mask) as usize;
        // SAFETY: i < size, the slot belongs to us (caller checked `free`).
        unsafe { self.desc.add(i).write(v) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }
    fn submit(&mut self) {
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    // --- consumer side (rx, completion) ---
    fn available(&mut self) -> u32 {
        let n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n > 0 {
            return n;
        }
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }
    fn read(&mut self) -> T {
        let i = (self.cached_cons & self.mask) as usize;
        // SAFETY: i < size and the entry was published by the kernel (checked by `available`).
        let v = unsafe { self.desc.add(i).read() };
        self.cached_cons = self.cached_cons.wrapping_add(1);
        v
    }
    fn release(&mut self) {
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}

/// Sizes of one socket's rings and UMEM.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Frames in the UMEM (a power of two).
    pub frames: u32,
    /// RX / TX ring entries (powers of two).
    pub ring: u32,
    /// Try zero-copy first.
    pub zero_copy: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frames: 4096,
            ring: 2048,
            zero_copy: true,
        }
    }
}

/// An AF_XDP socket with its own UMEM.
pub struct Xsk {
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<XdpDesc>,
    tx: Ring<XdpDesc>,
    umem: Mapping,
    fd: OwnedFd,
    zero_copy: bool,
    pub frames: u32,
}

// SAFETY: the raw pointers refer to mappings owned by the Xsk; moving it to another thread
// moves the sole user of those rings with it.
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Xsk(fd {}, {} frames, zero_copy {})",
            self.fd.as_raw_fd(),
            self.frames,
            self.zero_copy
        )
    }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T, what: &str) -> io::Result<()> {
    // SAFETY: v points to a live T of the given size for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as _,
        )
    };
    if r != 0 {
        return Err(last_err(what));
    }
    Ok(())
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int, what: &str) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v is a writable T of `len` bytes; the kernel writes at most `len`.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if r != 0 {
        return Err(last_err(what));
    }
    Ok(v)
}

impl Xsk {
    /// Creates a socket with its UMEM and binds it to `queue` of `ifindex`.
    pub fn open(ifindex: u32, queue: u32, cfg: XskConfig) -> io::Result<Xsk> {
        assert!(cfg.frames.is_power_of_two() && cfg.ring.is_power_of_two());
        // SAFETY: plain socket creation; the result is checked and owned below.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_err("socket(AF_XDP)"));
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = cfg.frames as usize * FRAME_SIZE;
        let umem = Mapping::new(umem_len, -1, 0, "mmap of the UMEM")?;
        let reg = UmemReg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(
            raw,
            XDP_UMEM_REG,
            &reg,
            "XDP_UMEM_REG (UMEM registration; RLIMIT_MEMLOCK?)",
        )?;
        // Fill ring twice the frame count: the kernel publishes its consumer index lazily.
        let fill_size = cfg.frames * 2;
        setsockopt(raw, XDP_UMEM_FILL_RING, &fill_size, "XDP_UMEM_FILL_RING")?;
        setsockopt(
            raw,
            XDP_UMEM_COMPLETION_RING,
            &cfg.frames,
            "XDP_UMEM_COMPLETION_RING",
        )?;
        setsockopt(raw, XDP_RX_RING, &cfg.ring, "XDP_RX_RING")?;
        setsockopt(raw, XDP_TX_RING, &cfg.ring, "XDP_TX_RING")?;
        let off: MmapOffsets = getsockopt(raw, XDP_MMAP_OFFSETS, "XDP_MMAP_OFFSETS")?;
        let fill = Ring::map(
            raw,
            &off.fr,
            fill_size,
            XDP_UMEM_PGOFF_FILL_RING,
            "mmap fill ring",
        )?;
        let comp = Ring::map(
            raw,
            &off.cr,
            cfg.frames,
            XDP_UMEM_PGOFF_COMPLETION_RING,
            "mmap completion ring",
        )?;
        let rx = Ring::map(raw, &off.rx, cfg.ring, XDP_PGOFF_RX_RING, "mmap rx ring")?;
        let tx = Ring::map(raw, &off.tx, cfg.ring, XDP_PGOFF_TX_RING, "mmap tx ring")?;
        let mut zero_copy = false;
        let modes: &[u16] = if cfg.zero_copy {
            &[XDP_ZEROCOPY, XDP_COPY]
        } else {
            &[XDP_COPY]
        };
        let mut bound = Err(io::Error::other("not bound"));
        for &m in modes {
            bound = Self::bind(raw, ifindex, queue, m | XDP_USE_NEED_WAKEUP);
            match &bound {
                Ok(()) => {
                    zero_copy = m == XDP_ZEROCOPY;
                    break;
                }
                // The driver refuses zero-copy (veth does): fall back to copy mode.
                Err(e) if m == XDP_ZEROCOPY && e.raw_os_error() != Some(libc::EBUSY) => continue,
                Err(_) => break,
            }
        }
        bound?;
        if let Ok(o) = getsockopt::<u32>(raw, XDP_OPTIONS, "XDP_OPTIONS") {
            zero_copy = o & XDP_OPTIONS_ZEROCOPY != 0;
        }
        Ok(Xsk {
            fill,
            comp,
            rx,
            tx,
            umem,
            fd,
            zero_copy,
            frames: cfg.frames,
        })
    }

    fn bind(fd: RawFd, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
        let sa = SockaddrXdp {
            family: AF_XDP as u16,
            flags,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // A socket that just closed on this queue is released asynchronously: retry EBUSY.
        for attempt in 0.. {
            // SAFETY: sa is a valid sockaddr_xdp of the given length.
            let r = unsafe {
                libc::bind(
                    fd,
                    (&sa as *const SockaddrXdp).cast(),
                    std::mem::size_of::<SockaddrXdp>() as _,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) && attempt < 100 {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("bind AF_XDP socket to ifindex {ifindex} queue {queue}: {e}"),
            ));
        }
        unreachable!()
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the socket runs in zero-copy mode (else copy mode).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The bytes of frame data at UMEM address `addr`, `len` long (clamped to the chunk).
    #[inline]
    pub fn frame(&self, addr: u64, len: usize) -> &[u8] {
        let chunk_end = (addr as usize & !(FRAME_SIZE - 1)) + FRAME_SIZE;
        let end = (addr as usize + len).min(chunk_end).min(self.umem.len);
        let start = (addr as usize).min(end);
        // SAFETY: [start, end) lies inside the UMEM mapping (clamped above). The kernel
        // wrote the frame before publishing its descriptor and does not touch it until we
        // give the frame back.
        unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), end - start) }
    }

    /// The whole chunk at `addr` for writing a TX frame.
    #[inline]
    pub fn frame_mut(&mut self, addr: u64) -> &mut [u8] {
        let start = (addr as usize & !(FRAME_SIZE - 1)).min(self.umem.len - FRAME_SIZE);
        // SAFETY: the chunk lies inside the UMEM; the caller owns this frame (it is on no
        // ring), so the kernel does not read or write it now.
        unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(start), FRAME_SIZE) }
    }

    /// Gives frames to the kernel for receiving. Returns how many fit.
    pub fn fill(&mut self, addrs: &[u64]) -> usize {
        let n = (self.fill.free(addrs.len() as u32) as usize).min(addrs.len());
        for &a in &addrs[..n] {
            self.fill.write(a & !(FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.fill.submit();
        }
        n
    }

    /// Whether the kernel asks for a wakeup to keep filling (need_wakeup mode).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Takes up to `max` received descriptors into `out`.
    pub fn recv(&mut self, out: &mut Vec<XdpDesc>, max: usize) -> usize {
        let n = (self.rx.available() as usize).min(max);
        for _ in 0..n {
            out.push(self.rx.read());
        }
        if n > 0 {
            self.rx.release();
        }
        n
    }

    /// Free TX ring slots.
    pub fn tx_free(&mut self, want: u32) -> u32 {
        self.tx.free(want)
    }

    /// Queues descriptors for transmission (caller checked `tx_free`) and kicks the kernel
    /// when it asks for it (copy mode always does). Returns whether a kick was made.
    pub fn send(&mut self, descs: &[XdpDesc]) -> bool {
        for d in descs {
            self.tx.write(*d);
        }
        self.tx.submit();
        if self.tx.needs_wakeup() {
            self.kick_tx();
            return true;
        }
        false
    }

    fn kick_tx(&self) {
        // SAFETY: a zero-length sendto on our own socket; errors (EAGAIN, EBUSY, ENOBUFS)
        // only mean the kernel is busy and will be retried by the next kick.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            );
        }
    }

    /// Wakes the kernel to refill RX from the fill ring.
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length non-blocking recvfrom on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Takes completed TX frame addresses into `out`.
    pub fn complete(&mut self, out: &mut Vec<u64>) -> usize {
        let n = self.comp.available() as usize;
        for _ in 0..n {
            out.push(self.comp.read());
        }
        if n > 0 {
            self.comp.release();
        }
        n
    }

    /// TX descriptors queued but not completed yet need a kick in copy mode.
    pub fn tx_pending(&self) -> bool {
        self.tx.cached_prod != self.tx.cons().load(Ordering::Relaxed)
    }

    /// Kicks TX if descriptors are still waiting (call when idle).
    pub fn flush(&self) {
        if self.tx_pending() {
            self.kick_tx();
        }
    }
}

/// Reads the kernel's statistics of the AF_XDP socket `fd` (any thread may ask).
pub fn stats_of(fd: RawFd) -> io::Result<XdpStats> {
    getsockopt(fd, XDP_STATISTICS, "XDP_STATISTICS")
}
