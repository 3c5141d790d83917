//! Packet I/O backends behind one trait, so the runtime and the benchmarks run unchanged on
//! each: an in-memory link (a pair of lock-free rings, with seeded loss / reordering /
//! duplication), and pcap files. AF_XDP comes with its own issue.
//!
//! Contract: `rx_burst` appends at most `max` packets (IP packets, link layer stripped) and
//! never blocks; `tx_burst` takes every packet out of the vector: sent, or returned to the
//! pool and counted as a drop of the link. No allocation in steady state.

use crate::pkt::{BufPool, PacketBuf};
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A port the runtime polls.
pub trait PacketIo: Send {
    /// Receives up to `max` packets into `out` (buffers from `pool`). Returns how many.
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize;
    /// Sends the packets of `pkts` (the vector is left empty). Returns how many were sent.
    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize;
    /// How many packets the transmit side can take now (a full TX ring makes the worker stop
    /// pulling the other port, as a NIC's ring would). Unbounded by default.
    fn tx_room(&self) -> usize {
        usize::MAX
    }
}

/// Link impairments, applied on transmit with a deterministic generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impair {
    /// Probability of losing a packet.
    pub loss: f64,
    /// Probability of sending a packet twice.
    pub dup: f64,
    /// Probability of holding a packet back and sending it after up to `reorder_depth` others.
    pub reorder: f64,
    pub reorder_depth: usize,
    pub seed: u64,
}

/// Counters of one direction of a link (shared with readers; updated per burst).
#[derive(Debug, Default)]
pub struct LinkStats {
    pub sent: AtomicU64,
    /// Packets taken from this port's receive ring.
    pub received: AtomicU64,
    pub ring_full: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

/// One end of an in-memory link.
pub struct MemPort {
    tx: Arc<ArrayQueue<PacketBuf>>,
    rx: Arc<ArrayQueue<PacketBuf>>,
    impair: Impair,
    rng: u64,
    held: Vec<(usize, PacketBuf)>,
    pub stats: Arc<LinkStats>,
}

impl std::fmt::Debug for MemPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemPort(rx {} queued, tx {} queued)",
            self.rx.len(),
            self.tx.len()
        )
    }
}

/// A link of two ports with rings of `capacity` packets each way; `impair` applies to the
/// direction a -> b.
pub fn mem_link(capacity: usize, impair: Impair) -> (MemPort, MemPort) {
    let ab = Arc::new(ArrayQueue::new(capacity));
    let ba = Arc::new(ArrayQueue::new(capacity));
    let a = MemPort {
        tx: ab.clone(),
        rx: ba.clone(),
        impair,
        rng: impair.seed | 1,
        held: Vec::with_capacity(impair.reorder_depth + 1),
        stats: Arc::default(),
    };
    let b = MemPort {
        tx: ba,
        rx: ab,
        impair: Impair::default(),
        rng: 1,
        held: Vec::new(),
        stats: Arc::default(),
    };
    (a, b)
}

impl MemPort {
    #[inline]
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn push(&mut self, pool: &mut BufPool, p: PacketBuf, sent: &mut u64) {
        match self.tx.push(p) {
            Ok(()) => *sent += 1,
            Err(p) => {
                self.stats.ring_full.fetch_add(1, Ordering::Relaxed);
                pool.put(p);
            }
        }
    }

    /// Packets waiting in the receive ring.
    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }
}

impl PacketIo for MemPort {
    fn tx_room(&self) -> usize {
        self.tx.capacity() - self.tx.len()
    }
    fn rx_burst(&mut self, _pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.pop() {
                Some(p) => {
                    out.push(p);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        let mut sent = 0u64;
        let (mut lost, mut dups, mut reord) = (0u64, 0u64, 0u64);
        let imp = self.impair;
        for p in pkts.drain(..) {
            if self.chance(imp.loss) {
                lost += 1;
                pool.put(p);
                continue;
            }
            if self.chance(imp.dup) {
                let mut d = pool.get();
                if d.set(p.bytes()).is_ok() {
                    dups += 1;
                    self.push(pool, d, &mut sent);
                } else {
                    pool.put(d);
                }
            }
            if imp.reorder_depth > 0
                && self.held.len() < imp.reorder_depth
                && self.chance(imp.reorder)
            {
                reord += 1;
                let delay = 1 + (self.rng as usize % imp.reorder_depth);
                self.held.push((delay, p));
                continue;
            }
            self.push(pool, p, &mut sent);
            // Release held packets whose delay ran out.
            let mut i = 0;
            while i < self.held.len() {
                self.held[i].0 -= 1;
                if self.held[i].0 == 0 {
                    let (_, h) = self.held.swap_remove(i);
                    self.push(pool, h, &mut sent);
                } else {
                    i += 1;
                }
            }
        }
        // Nothing waits longer than one burst.
        while let Some((_, h)) = self.held.pop() {
            self.push(pool, h, &mut sent);
        }
        let s = &self.stats;
        s.sent.fetch_add(sent, Ordering::Relaxed);
        if lost + dups + reord > 0 {
            s.lost.fetch_add(lost, Ordering::Relaxed);
            s.duplicated.fetch_add(dups, Ordering::Relaxed);
            s.reordered.fetch_add(reord, Ordering::Relaxed);
        }
        sent as usize
    }
}

/// A pcap-file port: receives the IP packets of an input capture in order, writes what it
/// transmits to an output capture (raw IP link type).
pub struct PcapPort {
    input: Option<crate::pcap::Pcap>,
    pos: usize,
    output: Option<crate::pcap::Writer<std::io::BufWriter<std::fs::File>>>,
    /// Frames of the input that were not IP (skipped).
    pub skipped: u64,
}

impl std::fmt::Debug for PcapPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PcapPort(pos {})", self.pos)
    }
}

impl PcapPort {
    pub fn new(
        input: Option<&std::path::Path>,
        output: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let input = input.map(crate::pcap::read).transpose()?;
        let output = match output {
            Some(p) => {
                let f = std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
                Some(
                    crate::pcap::Writer::new(
                        std::io::BufWriter::new(f),
                        crate::pcap::LINKTYPE_RAW,
                        false,
                    )
                    .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        Ok(PcapPort {
            input,
            pos: 0,
            output,
            skipped: 0,
        })
    }
    /// Whether every input record has been received.
    pub fn exhausted(&self) -> bool {
        self.input
            .as_ref()
            .is_none_or(|p| self.pos >= p.records.len())
    }
    /// Flushes the output file.
    pub fn finish(self) -> Result<(), String> {
        if let Some(w) = self.output {
            w.finish().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl PacketIo for PcapPort {
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let Some(input) = &self.input else { return 0 };
        let mut n = 0;
        while n < max && self.pos < input.records.len() {
            let rec = &input.records[self.pos];
            self.pos += 1;
            let Some((_, ip)) = crate::pcap::split_link(input.linktype, &rec.data) else {
                self.skipped += 1;
                continue;
            };
            let mut b = pool.get();
            if b.set(ip).is_err() {
                b = PacketBuf::from_slice(ip);
            }
            out.push(b);
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        let mut n = 0;
        for p in pkts.drain(..) {
            if let Some(w) = self.output.as_mut()
                && w.write(0, 0, &[], p.bytes()).is_ok()
            {
                n += 1;
            }
            pool.put(p);
        }
        n
    }
}

/// A port backed by two queues: packets pushed to `rx` are received, transmitted packets are
/// kept in `tx`. For tests and tools that feed and inspect a worker directly.
#[derive(Debug, Default)]
pub struct QueuePort {
    pub rx: std::collections::VecDeque<PacketBuf>,
    pub tx: Vec<PacketBuf>,
}

impl PacketIo for QueuePort {
    fn rx_burst(&mut self, _pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(p) = self.rx.pop_front() else { break };
            out.push(p);
            n += 1;
        }
        n
    }
    fn tx_burst(&mut self, _pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        let n = pkts.len();
        self.tx.append(pkts);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_delivers_in_order_without_impairment() {
        let (mut a, mut b) = mem_link(64, Impair::default());
        let mut pool = BufPool::new(16, 2048);
        let mut v: Vec<PacketBuf> = (0..10u8)
            .map(|i| PacketBuf::from_slice(&[0x45, i]))
            .collect();
        assert_eq!(a.tx_burst(&mut pool, &mut v), 10);
        let mut got = vec![];
        assert_eq!(b.rx_burst(&mut pool, &mut got, 32), 10);
        assert!(got.iter().enumerate().all(|(i, p)| p.bytes()[1] == i as u8));
    }

    #[test]
    fn impairments_are_seeded_and_counted() {
        let imp = Impair {
            loss: 0.1,
            dup: 0.1,
            reorder: 0.2,
            reorder_depth: 4,
            seed: 42,
        };
        let run = || {
            let (mut a, mut b) = mem_link(4096, imp);
            let mut pool = BufPool::new(16, 2048);
            let mut seen = vec![];
            for k in 0..20u8 {
                let mut v: Vec<PacketBuf> = (0..32u8)
                    .map(|i| PacketBuf::from_slice(&[0x45, k, i]))
                    .collect();
                a.tx_burst(&mut pool, &mut v);
                let mut got = vec![];
                b.rx_burst(&mut pool, &mut got, 4096);
                seen.extend(got.iter().map(|p| (p.bytes()[1], p.bytes()[2])));
            }
            (
                seen,
                a.stats.lost.load(Ordering::Relaxed),
                a.stats.duplicated.load(Ordering::Relaxed),
            )
        };
        let (s1, lost, dup) = run();
        let (s2, _, _) = run();
        assert_eq!(s1, s2, "same seed, same sequence");
        assert!(lost > 20 && dup > 20);
        assert_eq!(s1.len() as u64, 640 - lost + dup);
    }
}
