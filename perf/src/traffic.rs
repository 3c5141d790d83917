//! Traffic ends of the rig, as ports a worker polls: a generator (inside port of the
//! encrypting gateway) that writes flows of UDP packets into pool buffers, one copy per
//! packet as a NIC would, and a sink (inside port of the decrypting gateway) that verifies
//! every packet (content and order per flow) and records latency. Also a replay source and a
//! null sink for one-way runs.

use engine::io::PacketIo;
use engine::pkt::{BufPool, PacketBuf};
use engine::wire;
use hdrhistogram::Histogram;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Bytes of the UDP payload header: flow (4), sequence (8), timestamp in ns (8).
pub const HDR: usize = 28 + 20;
/// Smallest packet the generator makes.
pub const MIN_PACKET: usize = HDR;

/// Inner destination of tunnel `t` (its selector).
pub fn tunnel_dst(t: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x1000_0000u32.wrapping_add(t))
}

/// Sizes of consecutive packets: fixed, or IMIX 7:4:1 of 64/570/1518-byte frames (IP
/// packets of 48 (the generator's minimum), 552 and 1500 bytes).
pub fn size_pattern(size: Option<usize>) -> Vec<usize> {
    match size {
        Some(n) => vec![n.max(MIN_PACKET)],
        None => vec![48, 552, 48, 48, 552, 48, 1500, 48, 552, 48, 552, 48],
    }
}

/// The fill pattern of payload bytes after the header.
pub fn pattern() -> Vec<u8> {
    (0..2048u32)
        .map(|i| (i.wrapping_mul(131) >> 3) as u8)
        .collect()
}

/// Writes one generated packet into `b`.
#[inline]
pub fn build(b: &mut PacketBuf, flow: u32, seq: u64, ts: u64, len: usize, pat: &[u8]) {
    b.clear();
    let p = b.push_back(len).expect("pool buffers hold 1500 bytes");
    wire::write_ipv4_header(
        p,
        len as u16,
        seq as u16,
        false,
        64,
        wire::proto::UDP,
        Ipv4Addr::new(10, 0, 0, 1),
        tunnel_dst(flow),
    );
    wire::put16(p, 20, 4000);
    wire::put16(p, 22, 5000);
    wire::put16(p, 24, (len - 20) as u16);
    wire::put16(p, 26, 0);
    p[28..32].copy_from_slice(&flow.to_be_bytes());
    p[32..40].copy_from_slice(&seq.to_be_bytes());
    p[40..48].copy_from_slice(&ts.to_be_bytes());
    p[HDR..].copy_from_slice(&pat[..len - HDR]);
}

/// The generating inside port of gateway A.
pub struct Generator {
    flows: Vec<(u32, u64)>,
    next_flow: usize,
    sizes: Vec<usize>,
    next_size: usize,
    pat: Vec<u8>,
    epoch: Instant,
    /// Packets per second for this generator (None: as fast as the link takes them).
    rate: Option<f64>,
    /// With a rate: the NIC receive ring the packets wait in; what overflows it is missed
    /// and counts as loss.
    ring: RxRing,
    pub go: Arc<AtomicBool>,
    pub generated: Arc<AtomicU64>,
    local_generated: u64,
    /// Packets the schedule offered while the ring was full.
    pub missed: Arc<AtomicU64>,
}

/// Descriptors of the emulated receive ring of a rate-limited generator (a common NIC
/// default, and the size of the loopback link's ring).
pub const RX_RING: usize = 4096;

/// A NIC receive ring filled at a fixed rate (packets due and not yet taken by the worker);
/// what arrives while it is full is missed (the NIC's rx_missed). Without a rate the ring
/// is always full: the worker takes as much as it asks for.
pub struct RxRing {
    rate: Option<f64>,
    tokens: f64,
    last: Option<Instant>,
    missed_frac: f64,
    /// Packets the schedule offered while the ring was full.
    pub missed: Arc<AtomicU64>,
}

impl RxRing {
    pub fn new(rate: Option<f64>) -> Self {
        RxRing {
            rate,
            tokens: 0.0,
            last: None,
            missed_frac: 0.0,
            missed: Arc::default(),
        }
    }

    /// How many packets the worker gets now (at most `max`), and the ring's backlog before
    /// they were taken: of `backlog` arrivals, packet i (oldest first) arrived
    /// `(backlog - 1 - i) / rate` seconds ago. `go` false: the tester stopped; what is
    /// still in the ring is delivered, nothing new arrives. None: stopped and empty.
    pub fn take(&mut self, now: Instant, go: bool, max: usize) -> Option<(usize, f64)> {
        let Some(r) = self.rate else {
            return go.then_some((max, 0.0));
        };
        if !go {
            if self.tokens < 1.0 {
                self.last = None;
                self.tokens = 0.0;
                return None;
            }
            let n = max.min(self.tokens as usize);
            let backlog = self.tokens;
            self.tokens -= n as f64;
            return Some((n, backlog));
        }
        let dt = self.last.map_or(0.0, |l| (now - l).as_secs_f64());
        self.last = Some(now);
        self.tokens += dt * r;
        if self.tokens > RX_RING as f64 {
            self.missed_frac += self.tokens - RX_RING as f64;
            self.tokens = RX_RING as f64;
            let whole = self.missed_frac.floor();
            self.missed_frac -= whole;
            self.missed.fetch_add(whole as u64, Ordering::Relaxed);
        }
        let n = max.min(self.tokens as usize);
        let backlog = self.tokens;
        self.tokens -= n as f64;
        Some((n, backlog))
    }

    /// Packets [`take`](Self::take) handed out that were not used: back into the ring.
    pub fn give_back(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens += n as f64;
        }
    }
}

impl Generator {
    pub fn new(tunnels: Vec<u32>, size: Option<usize>, rate: Option<f64>, epoch: Instant) -> Self {
        let ring = RxRing::new(rate);
        Generator {
            flows: tunnels.into_iter().map(|t| (t, 0)).collect(),
            next_flow: 0,
            sizes: size_pattern(size),
            next_size: 0,
            pat: pattern(),
            epoch,
            rate,
            missed: ring.missed.clone(),
            ring,
            go: Arc::new(AtomicBool::new(false)),
            generated: Arc::default(),
            local_generated: 0,
        }
    }
}

impl PacketIo for Generator {
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        if self.flows.is_empty() {
            return 0;
        }
        let now = Instant::now();
        // Timestamps are arrival times in the ring, so the latency includes the time the
        // packets queued (as a tester's timestamps on the wire would).
        let Some((n, backlog)) = self.ring.take(now, self.go.load(Ordering::Relaxed), max) else {
            return 0;
        };
        let now_ns = (now - self.epoch).as_nanos() as u64;
        let gap_ns = self.rate.map_or(0.0, |r| 1e9 / r);
        for i in 0..n {
            let ts = now_ns.saturating_sub(((backlog - 1.0 - i as f64).max(0.0) * gap_ns) as u64);
            let (flow, seq) = &mut self.flows[self.next_flow];
            let len = self.sizes[self.next_size];
            let mut b = pool.get();
            build(&mut b, *flow, *seq, ts, len, &self.pat);
            *seq += 1;
            out.push(b);
            self.next_flow += 1;
            if self.next_flow == self.flows.len() {
                self.next_flow = 0;
            }
            self.next_size += 1;
            if self.next_size == self.sizes.len() {
                self.next_size = 0;
            }
        }
        self.local_generated += n as u64;
        if n > 0 {
            self.generated
                .store(self.local_generated, Ordering::Relaxed);
        }
        n
    }
    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        for p in pkts.drain(..) {
            pool.put(p);
        }
        0
    }
}

/// What a sink saw.
#[derive(Clone, Debug, Default)]
pub struct SinkStats {
    pub packets: u64,
    pub bytes: u64,
    pub bad_content: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub duplicates: u64,
}

/// The verifying inside port of gateway B.
pub struct Sink {
    next: Vec<u64>,
    pat: Vec<u8>,
    epoch: Instant,
    pub latency_ns: Histogram<u64>,
    pub stats: SinkStats,
    pub delivered: Arc<AtomicU64>,
}

impl Sink {
    pub fn new(tunnels: usize, epoch: Instant) -> Self {
        Sink {
            next: vec![0; tunnels],
            pat: pattern(),
            epoch,
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            stats: SinkStats::default(),
            delivered: Arc::default(),
        }
    }
}

impl PacketIo for Sink {
    fn rx_burst(&mut self, _pool: &mut BufPool, _out: &mut Vec<PacketBuf>, _max: usize) -> usize {
        0
    }
    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        let now = (Instant::now() - self.epoch).as_nanos() as u64;
        let n = pkts.len();
        for p in pkts.drain(..) {
            let b = p.bytes();
            self.stats.packets += 1;
            self.stats.bytes += b.len() as u64;
            if b.len() < HDR
                || b[0] != 0x45
                || wire::be16(b, 2) as usize != b.len()
                || b[HDR..] != self.pat[..b.len() - HDR]
            {
                self.stats.bad_content += 1;
                pool.put(p);
                continue;
            }
            let flow = wire::be32(b, 28) as usize;
            let seq = u64::from_be_bytes(b[32..40].try_into().expect("8 bytes"));
            let ts = u64::from_be_bytes(b[40..48].try_into().expect("8 bytes"));
            match self.next.get_mut(flow) {
                Some(next) => {
                    if seq == *next {
                        *next += 1;
                    } else if seq > *next {
                        self.stats.gaps += seq - *next;
                        self.stats.out_of_order += 1;
                        *next = seq + 1;
                    } else {
                        self.stats.duplicates += 1;
                    }
                }
                None => self.stats.bad_content += 1,
            }
            let _ = self.latency_ns.record(now.saturating_sub(ts).max(1));
            pool.put(p);
        }
        self.delivered.store(self.stats.packets, Ordering::Relaxed);
        n
    }
}

/// Replays prebuilt packets in a loop, copying each into a pool buffer.
pub struct Replay {
    pkts: Vec<Vec<u8>>,
    pos: usize,
    /// A rate: packets arrive into a NIC receive ring at that rate (see [`RxRing`]).
    ring: RxRing,
    /// Packets the worker took.
    pub taken: Arc<AtomicU64>,
    /// Called at the end of each pass before the next one starts (e.g. reset a replay window).
    on_wrap: Option<Box<dyn FnMut() + Send>>,
    wrapped: bool,
    pub go: Arc<AtomicBool>,
}

impl Replay {
    /// Packets the replay's ring missed (offered while it was full).
    pub fn missed(&self) -> Arc<AtomicU64> {
        self.ring.missed.clone()
    }

    /// Replays at `rate` packets per second into an emulated NIC ring (None: as fast as
    /// the worker takes them).
    pub fn with_rate(
        pkts: Vec<Vec<u8>>,
        on_wrap: Option<Box<dyn FnMut() + Send>>,
        rate: Option<f64>,
    ) -> Self {
        Replay {
            pkts,
            pos: 0,
            ring: RxRing::new(rate),
            taken: Arc::default(),
            on_wrap,
            wrapped: false,
            go: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl PacketIo for Replay {
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        if self.wrapped {
            // Give the worker one poll to apply what on_wrap asked for.
            self.wrapped = false;
            return 0;
        }
        let Some((due, _)) = self
            .ring
            .take(Instant::now(), self.go.load(Ordering::Relaxed), max)
        else {
            return 0;
        };
        let mut n = 0;
        while n < due {
            if self.pos == self.pkts.len() {
                self.pos = 0;
                if let Some(f) = self.on_wrap.as_mut() {
                    f();
                    self.wrapped = true;
                    break;
                }
            }
            let mut b = pool.get();
            let _ = b.set(&self.pkts[self.pos]);
            out.push(b);
            self.pos += 1;
            n += 1;
        }
        // Cut short by the end of a pass: the rest stays in the ring.
        self.ring.give_back(due - n);
        if n > 0 {
            self.taken.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }
    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        for p in pkts.drain(..) {
            pool.put(p);
        }
        0
    }
}

/// Drops everything it is given, counting packets and bytes.
#[derive(Default)]
pub struct Null {
    pub packets: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    local: (u64, u64),
}

impl PacketIo for Null {
    fn rx_burst(&mut self, _pool: &mut BufPool, _out: &mut Vec<PacketBuf>, _max: usize) -> usize {
        0
    }
    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        let n = pkts.len();
        for p in pkts.drain(..) {
            self.local.0 += 1;
            self.local.1 += p.len() as u64;
            pool.put(p);
        }
        self.packets.store(self.local.0, Ordering::Relaxed);
        self.bytes.store(self.local.1, Ordering::Relaxed);
        n
    }
}
