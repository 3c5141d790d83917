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

/// A free list of buffers: `get` reuses a returned buffer before allocating.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<PacketBuf>,
    capacity: usize,
}

impl BufPool {
    /// A pool pre-filled with `n` buffers of `capacity` bytes.
    pub fn new(n: usize, capacity: usize) -> Self {
        BufPool {
            free: (0..n).map(|_| PacketBuf::with_capacity(capacity)).collect(),
            capacity,
        }
    }
    pub fn get(&mut self) -> PacketBuf {
        match self.free.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => PacketBuf::with_capacity(self.capacity.max(DEFAULT_CAPACITY)),
        }
    }
    pub fn put(&mut self, b: PacketBuf) {
        self.free.push(b);
    }
    pub fn available(&self) -> usize {
        self.free.len()
    }
}
