//! Packet buffers with headroom and tailroom, so ESP encapsulation prepends the outer headers
//! and appends the trailer and ICV without copying the payload, and a free-list pool so the
//! steady state allocates nothing.

/// Default room reserved before the packet: outer IPv6 (40) + UDP (8) + ESP (8) + IV (16),
/// rounded up, plus Ethernet (14) for link-layer backends.
pub const DEFAULT_HEADROOM: usize = 128;
/// Default buffer size: a 1500-byte inner packet (or a reassembled 9000-byte one would need
/// a bigger buffer: see [`PacketBuf::with_capacity`]) plus head/tailroom.
pub const DEFAULT_CAPACITY: usize = 2048;

/// A packet does not fit the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("packet needs {need} bytes of buffer, capacity is {capacity}")]
pub struct TooSmall {
    pub need: usize,
    pub capacity: usize,
}

/// A packet in a fixed buffer: the bytes are `data[head..tail]`.
#[derive(Clone)]
pub struct PacketBuf {
    data: Box<[u8]>,
    head: usize,
    tail: usize,
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PacketBuf({} bytes, headroom {})", self.len(), self.head)
    }
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
    pub fn with_capacity(cap: usize) -> Self {
        let head = DEFAULT_HEADROOM.min(cap);
        PacketBuf {
            data: vec![0u8; cap].into_boxed_slice(),
            head,
            tail: head,
        }
    }
    /// A buffer holding a copy of `bytes` after the default headroom (grows the buffer if needed).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut p = Self::with_capacity(DEFAULT_CAPACITY.max(bytes.len() + DEFAULT_HEADROOM + 128));
        p.set(bytes).expect("sized above");
        p
    }
    /// Replaces the content with a copy of `bytes` at the default headroom. Fails when the
    /// buffer is too small.
    pub fn set(&mut self, bytes: &[u8]) -> Result<(), TooSmall> {
        let head = DEFAULT_HEADROOM.min(self.data.len());
        if head + bytes.len() > self.data.len() {
            return Err(TooSmall {
                need: head + bytes.len(),
                capacity: self.data.len(),
            });
        }
        self.head = head;
        self.tail = head + bytes.len();
        self.data[self.head..self.tail].copy_from_slice(bytes);
        Ok(())
    }
    pub fn clear(&mut self) {
        self.head = DEFAULT_HEADROOM.min(self.data.len());
        self.tail = self.head;
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.tail - self.head
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.data.len() - self.tail
    }
    pub fn capacity(&self) -> usize {
        self.data.len()
    }
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.head..self.tail]
    }
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.head..self.tail]
    }
    /// Grows the packet at the front by `n` bytes and returns the whole packet.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        Some(&mut self.data[self.head..self.tail])
    }
    /// Removes `n` bytes from the front.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> Option<()> {
        if n > self.len() {
            return None;
        }
        self.head += n;
        Some(())
    }
    /// Grows the packet at the back by `n` bytes and returns the whole packet.
    #[inline]
    pub fn push_back(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        self.tail += n;
        Some(&mut self.data[self.head..self.tail])
    }
    /// Shortens the packet to `len` bytes.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.tail = self.head + len;
        }
    }
}

/// Buffers shared between threads (a packet encrypted on one worker is freed on another):
/// a bounded lock-free queue that per-thread [`BufPool`]s refill from and spill to in batches.
pub type SharedPool = std::sync::Arc<crossbeam_queue::ArrayQueue<PacketBuf>>;

/// Creates a shared pool holding `n` buffers of `capacity` bytes (room for `n` more).
pub fn shared_pool(n: usize, capacity: usize) -> SharedPool {
    let q = crossbeam_queue::ArrayQueue::new(n.max(1) * 2);
    for _ in 0..n {
        let _ = q.push(PacketBuf::with_capacity(capacity));
    }
    std::sync::Arc::new(q)
}

/// Batch size of refills from and spills to the shared pool.
const POOL_BATCH: usize = 64;

/// Default bound of a per-thread free list with a shared pool behind it (buffers beyond it
/// that the shared pool cannot take are freed).
pub const DEFAULT_POOL_MAX_FREE: usize = POOL_BATCH * 16;

/// A per-thread free list of buffers: `get` reuses a returned buffer before refilling from
/// the shared pool, and allocates only when both are empty (counted in `grown`).
///
/// Memory is bounded whatever the input: `put` keeps at most `max_free` buffers (the rest
/// are freed and counted in `freed_over_cap`), and frees buffers larger than the pool's
/// buffer size (a reassembled jumbo datagram; counted in `freed_oversize`) instead of
/// keeping them, so a stream of reassemblies cannot grow the pool.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<PacketBuf>,
    capacity: usize,
    shared: Option<SharedPool>,
    max_free: usize,
    /// Buffers allocated because the pool was empty (zero in steady state).
    pub grown: u64,
    /// Buffers freed because the free list was full.
    pub freed_over_cap: u64,
    /// Buffers freed because they were larger than the pool's buffers.
    pub freed_oversize: u64,
}

impl BufPool {
    /// A pool pre-filled with `n` buffers of `capacity` bytes.
    pub fn new(n: usize, capacity: usize) -> Self {
        let mut free = Vec::with_capacity(n.max(POOL_BATCH * 4));
        free.extend((0..n).map(|_| PacketBuf::with_capacity(capacity)));
        BufPool {
            free,
            capacity,
            shared: None,
            max_free: n.max(DEFAULT_POOL_MAX_FREE),
            ..Default::default()
        }
    }
    /// A pool that refills from and spills to `shared`.
    pub fn with_shared(shared: SharedPool, capacity: usize) -> Self {
        BufPool {
            free: Vec::with_capacity(POOL_BATCH * 4),
            capacity,
            shared: Some(shared),
            max_free: DEFAULT_POOL_MAX_FREE,
            ..Default::default()
        }
    }
    /// Sets the bound of the free list (at least the spill batch, so spilling still works).
    pub fn with_max_free(mut self, n: usize) -> Self {
        self.max_free = n.max(POOL_BATCH * 4);
        self
    }
    /// The bound of the free list.
    pub fn max_free(&self) -> usize {
        self.max_free
    }
    #[inline]
    pub fn get(&mut self) -> PacketBuf {
        if self.free.is_empty()
            && let Some(sh) = &self.shared
        {
            for _ in 0..POOL_BATCH {
                match sh.pop() {
                    Some(b) => self.free.push(b),
                    None => break,
                }
            }
        }
        match self.free.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => {
                self.grown += 1;
                PacketBuf::with_capacity(self.capacity.max(DEFAULT_CAPACITY))
            }
        }
    }
    #[inline]
    pub fn put(&mut self, b: PacketBuf) {
        if b.capacity() < DEFAULT_CAPACITY {
            return; // a zero-capacity placeholder or a foreign small buffer: not pooled
        }
        if b.capacity() > self.capacity.max(DEFAULT_CAPACITY) {
            self.freed_oversize += 1;
            return;
        }
        if self.free.len() >= self.max_free {
            self.freed_over_cap += 1;
            return;
        }
        self.free.push(b);
        if self.free.len() >= POOL_BATCH * 4
            && let Some(sh) = &self.shared
        {
            for _ in 0..POOL_BATCH * 2 {
                let Some(b) = self.free.pop() else { break };
                if let Err(b) = sh.push(b) {
                    self.free.push(b);
                    break;
                }
            }
        }
    }
    /// Buffers in the local free list.
    ///
    /// Never more than [`BufPool::max_free`].
    pub fn available(&self) -> usize {
        self.free.len()
    }
    /// Returns every local buffer to the shared pool (at shutdown, for leak accounting).
    pub fn flush(&mut self) {
        if let Some(sh) = &self.shared {
            while let Some(b) = self.free.pop() {
                if let Err(b) = sh.push(b) {
                    self.free.push(b);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever comes back, the free list stays within its bound and buffers larger than
    /// the pool's are freed, each counted.
    #[test]
    fn pool_is_bounded_and_frees_oversize_buffers() {
        let mut pool = BufPool::new(4, DEFAULT_CAPACITY).with_max_free(300);
        for _ in 0..1000 {
            pool.put(PacketBuf::with_capacity(DEFAULT_CAPACITY));
        }
        assert_eq!(pool.available(), 300);
        assert_eq!(pool.freed_over_cap, 704);
        for _ in 0..10 {
            pool.put(PacketBuf::with_capacity(70_000));
        }
        assert_eq!((pool.available(), pool.freed_oversize), (300, 10));
        // With a full shared pool behind it, the local list is bounded too.
        let shared = shared_pool(64, DEFAULT_CAPACITY);
        let mut pool = BufPool::with_shared(shared.clone(), DEFAULT_CAPACITY);
        for _ in 0..10_000 {
            pool.put(PacketBuf::with_capacity(DEFAULT_CAPACITY));
        }
        assert!(pool.available() <= DEFAULT_POOL_MAX_FREE);
        assert_eq!(shared.len(), shared.capacity());
        assert_eq!(
            pool.available() as u64 + shared.len() as u64 + pool.freed_over_cap,
            10_000 + 64
        );
    }
}
