//! Handoff between workers (VPP's worker handoff): one writer per SA whatever queue a packet
//! arrives on. RSS spreads a tunnel's packets over every receive queue, and the XDP program
//! can only redirect to the socket of the receiving queue, so a worker that receives a
//! packet of an SA another worker owns passes it to that owner here.
//!
//! Contract: between every ordered pair of workers there is one lane per path (packets from
//! the inside to encrypt, packets from the outside to decrypt). A lane carries **batches**
//! (up to [`BATCH`] packets, like VPP's handoff frames): the sender stages packets per owner
//! during a burst and publishes each batch with one ring operation in [`Mesh::flush`], so
//! the cache lines the two cores share move once per batch, not once per packet. Each lane
//! has exactly one producer and one consumer, so order within a lane is kept. Its capacity
//! is bounded; [`Mesh::room`] says how many packets fit, so the sender takes no more from
//! its port than it can hand over, and a batch that still does not fit comes back from
//! `flush` to be dropped and counted. Emptied batch vectors go back to their sender on a
//! second ring, so there is no allocation in steady state. Buffers travel with their
//! packets and return to the shared pool from whichever worker frees them.

use crate::pkt::PacketBuf;
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

/// Packets per batch.
pub const BATCH: usize = 64;

/// Which way a handed-off packet goes at its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Received on the inside: route, encrypt, send outside.
    Encrypt = 0,
    /// Received on the outside: look the SA up by SPI, decrypt, send inside.
    Decrypt = 1,
}

/// One direction of one worker pair on one path: full batches one way, empty vectors back.
#[derive(Debug, Clone)]
struct Lane {
    full: Arc<ArrayQueue<Vec<PacketBuf>>>,
    empty: Arc<ArrayQueue<Vec<PacketBuf>>>,
}

impl Lane {
    fn new(batches: usize) -> Lane {
        Lane {
            full: Arc::new(ArrayQueue::new(batches)),
            empty: Arc::new(ArrayQueue::new(batches + 2)),
        }
    }
}

/// A lane toward another worker and the packets staged for it.
type Outgoing = (Lane, Vec<PacketBuf>);

/// One worker's ends of the lanes, and its staged batches.
#[derive(Debug)]
pub struct Mesh {
    pub me: usize,
    /// `to[w][path]`: toward worker `w` (None for itself), with the batch being staged.
    to: Vec<Option<[Outgoing; 2]>>,
    /// Every lane that ends here, per path.
    from: [Vec<Lane>; 2],
    /// Batches taken but not all handed to the caller yet (a caller's `max` cut one).
    rest: [Vec<PacketBuf>; 2],
}

impl Mesh {
    /// Workers in the mesh.
    pub fn workers(&self) -> usize {
        self.to.len()
    }

    /// Stages `p` for worker `owner` on `path` (published by [`Mesh::flush`]). Gives the
    /// packet back when `owner` is this worker or out of range.
    #[inline]
    pub fn push(&mut self, owner: usize, path: Path, p: PacketBuf) -> Result<(), PacketBuf> {
        let Some(Some(lanes)) = self.to.get_mut(owner) else {
            return Err(p);
        };
        let (lane, stage) = &mut lanes[path as usize];
        if stage.capacity() == 0 {
            *stage = lane
                .empty
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BATCH));
        }
        stage.push(p);
        Ok(())
    }

    /// Publishes every staged batch (one ring operation per [`BATCH`] packets). Packets that
    /// do not fit (the owner's lane is full) are moved to `dropped`.
    #[inline]
    pub fn flush(&mut self, dropped: &mut Vec<PacketBuf>) {
        for (lane, stage) in self.to.iter_mut().flatten().flat_map(|l| l.iter_mut()) {
            while !stage.is_empty() {
                let mut batch = if stage.len() <= BATCH {
                    std::mem::take(stage)
                } else {
                    let mut b = lane
                        .empty
                        .pop()
                        .unwrap_or_else(|| Vec::with_capacity(BATCH));
                    b.extend(stage.drain(..BATCH));
                    b
                };
                if let Err(b) = lane.full.push(std::mem::take(&mut batch)) {
                    batch = b;
                    dropped.append(&mut batch);
                    let _ = lane.empty.push(batch);
                }
            }
        }
    }

    /// How many packets this worker can still hand to every other worker on `path`: the
    /// free batches of its fullest lane.
    #[inline]
    pub fn room(&self, path: Path) -> usize {
        self.to
            .iter()
            .flatten()
            .map(|l| {
                let (lane, stage) = &l[path as usize];
                ((lane.full.capacity() - lane.full.len()) * BATCH).saturating_sub(stage.len())
            })
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Moves up to `max` handed-off packets of `path` into `out`, taking from each sender in
    /// turn. Returns how many.
    #[inline]
    pub fn pull(&mut self, path: Path, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let p = path as usize;
        let mut n = 0;
        let take = |b: &mut Vec<PacketBuf>, out: &mut Vec<PacketBuf>, n: &mut usize| {
            let k = b.len().min(max - *n);
            out.extend(b.drain(..k));
            *n += k;
        };
        take(&mut self.rest[p], out, &mut n);
        for lane in &self.from[p] {
            while n < max {
                let Some(mut b) = lane.full.pop() else { break };
                take(&mut b, out, &mut n);
                if b.is_empty() {
                    let _ = lane.empty.push(b);
                } else {
                    // Keep the tail for the next call; the vector goes back once emptied.
                    self.rest[p].append(&mut b);
                    let _ = lane.empty.push(b);
                }
            }
        }
        n
    }
}

/// The meshes of `n` workers, lanes of about `capacity` packets (whole batches, at least
/// two).
pub fn mesh(n: usize, capacity: usize) -> Vec<Mesh> {
    let batches = capacity.div_ceil(BATCH).max(2);
    // lanes[from][to][path]
    let lanes: Vec<Vec<[Lane; 2]>> = (0..n)
        .map(|_| {
            (0..n)
                .map(|_| [Lane::new(batches), Lane::new(batches)])
                .collect()
        })
        .collect();
    (0..n)
        .map(|me| Mesh {
            me,
            to: (0..n)
                .map(|w| {
                    (w != me).then(|| {
                        [
                            (lanes[me][w][0].clone(), Vec::new()),
                            (lanes[me][w][1].clone(), Vec::new()),
                        ]
                    })
                })
                .collect(),
            from: [0, 1].map(|path| {
                (0..n)
                    .filter(|&w| w != me)
                    .map(|w| lanes[w][me][path].clone())
                    .collect()
            }),
            rest: [Vec::new(), Vec::new()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(b: u8) -> PacketBuf {
        PacketBuf::from_slice(&[b])
    }

    fn bytes(v: &[PacketBuf]) -> Vec<u8> {
        v.iter().map(|p| p.bytes()[0]).collect()
    }

    #[test]
    fn lanes_connect_each_pair_per_path_keep_order_and_are_bounded() {
        let mut m = mesh(3, 2 * BATCH);
        let mut dropped = vec![];
        assert!(
            m[0].push(0, Path::Encrypt, pkt(0)).is_err(),
            "not to itself"
        );
        assert!(
            m[0].push(7, Path::Encrypt, pkt(0)).is_err(),
            "no such worker"
        );
        assert_eq!(m[0].room(Path::Encrypt), 2 * BATCH);
        m[0].push(2, Path::Encrypt, pkt(1)).unwrap();
        m[0].push(2, Path::Encrypt, pkt(2)).unwrap();
        assert_eq!(
            m[0].room(Path::Encrypt),
            2 * BATCH - 2,
            "staged packets count"
        );
        let mut got = vec![];
        assert_eq!(
            m[2].pull(Path::Encrypt, &mut got, 8),
            0,
            "nothing before the flush"
        );
        m[0].flush(&mut dropped);
        m[1].push(2, Path::Encrypt, pkt(4)).unwrap();
        m[1].push(2, Path::Decrypt, pkt(5)).unwrap();
        m[1].flush(&mut dropped);
        assert_eq!(m[2].pull(Path::Decrypt, &mut got, 8), 1);
        assert_eq!(bytes(&got), [5]);
        got.clear();
        assert_eq!(m[2].pull(Path::Encrypt, &mut got, 1), 1, "max cuts a batch");
        assert_eq!(
            m[2].pull(Path::Encrypt, &mut got, 8),
            2,
            "its tail comes next"
        );
        assert_eq!(bytes(&got), [1, 2, 4]);
        assert_eq!(m[0].pull(Path::Encrypt, &mut got, 8), 0);
        // Two batches fit in a lane; a third comes back to be dropped and counted.
        for k in 0..3 * BATCH {
            m[0].push(1, Path::Encrypt, pkt(k as u8)).unwrap();
        }
        m[0].flush(&mut dropped);
        assert_eq!(dropped.len(), BATCH);
        assert_eq!(m[0].room(Path::Encrypt), 0);
        got.clear();
        assert_eq!(m[1].pull(Path::Encrypt, &mut got, 1000), 2 * BATCH);
        assert_eq!(
            bytes(&got),
            (0..2 * BATCH).map(|k| k as u8).collect::<Vec<_>>()
        );
        assert_eq!(m[0].room(Path::Encrypt), 2 * BATCH);
    }
}
