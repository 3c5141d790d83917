//! Handoff between workers (VPP's worker handoff): one writer per SA whatever queue a packet
//! arrives on. RSS spreads a tunnel's packets over every receive queue, and the XDP program
//! can only redirect to the socket of the receiving queue, so a worker that receives a
//! packet of an SA another worker owns passes it to that owner here.
//!
//! Contract: between every ordered pair of workers there are two bounded rings, one per
//! path (packets from the inside to encrypt, packets from the outside to decrypt); each has
//! exactly one producer (the sender) and one consumer (the owner), so ordering within a
//! ring is kept. A push to a full ring fails and the caller drops and counts the packet:
//! memory stays bounded whatever the traffic. Buffers travel with their packets and return
//! to the shared pool from whichever worker frees them.

use crate::pkt::PacketBuf;
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

/// Which way a handed-off packet goes at its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Received on the inside: route, encrypt, send outside.
    Encrypt = 0,
    /// Received on the outside: look the SA up by SPI, decrypt, send inside.
    Decrypt = 1,
}

/// A one-producer, one-consumer ring of packets.
pub type Ring = Arc<ArrayQueue<PacketBuf>>;

/// One worker's ends of the rings: `to[w][path]` toward worker `w` (None for itself) and
/// `from[path]` every ring that ends here.
#[derive(Debug)]
pub struct Mesh {
    pub me: usize,
    pub to: Vec<Option<[Ring; 2]>>,
    pub from: [Vec<Ring>; 2],
}

impl Mesh {
    /// Workers in the mesh.
    pub fn workers(&self) -> usize {
        self.to.len()
    }

    /// Hands `p` to worker `owner` on `path`; gives the packet back when the ring is full
    /// (or `owner` is this worker or out of range).
    #[inline]
    pub fn push(&self, owner: usize, path: Path, p: PacketBuf) -> Result<(), PacketBuf> {
        match self.to.get(owner) {
            Some(Some(r)) => r[path as usize].push(p),
            _ => Err(p),
        }
    }

    /// Moves up to `max` handed-off packets of `path` into `out`, taking from each sender in
    /// turn. Returns how many.
    #[inline]
    pub fn pull(&self, path: Path, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let mut n = 0;
        for r in &self.from[path as usize] {
            while n < max {
                match r.pop() {
                    Some(p) => {
                        out.push(p);
                        n += 1;
                    }
                    None => break,
                }
            }
        }
        n
    }
}

/// The meshes of `n` workers, `capacity` packets per ring.
pub fn mesh(n: usize, capacity: usize) -> Vec<Mesh> {
    let ring = || Arc::new(ArrayQueue::new(capacity.max(1)));
    // rings[from][to], both paths.
    let rings: Vec<Vec<[Ring; 2]>> = (0..n)
        .map(|_| (0..n).map(|_| [ring(), ring()]).collect())
        .collect();
    (0..n)
        .map(|me| Mesh {
            me,
            to: (0..n)
                .map(|w| (w != me).then(|| rings[me][w].clone()))
                .collect(),
            from: [0, 1].map(|path| {
                (0..n)
                    .filter(|&w| w != me)
                    .map(|w| rings[w][me][path].clone())
                    .collect()
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(b: u8) -> PacketBuf {
        PacketBuf::from_slice(&[b])
    }

    #[test]
    fn rings_connect_each_pair_per_path_keep_order_and_are_bounded() {
        let m = mesh(3, 2);
        assert!(
            m[0].push(0, Path::Encrypt, pkt(0)).is_err(),
            "not to itself"
        );
        assert!(
            m[0].push(7, Path::Encrypt, pkt(0)).is_err(),
            "no such worker"
        );
        m[0].push(2, Path::Encrypt, pkt(1)).unwrap();
        m[0].push(2, Path::Encrypt, pkt(2)).unwrap();
        assert!(m[0].push(2, Path::Encrypt, pkt(3)).is_err(), "full at 2");
        m[1].push(2, Path::Encrypt, pkt(4)).unwrap();
        m[1].push(2, Path::Decrypt, pkt(5)).unwrap();
        let mut got = vec![];
        assert_eq!(m[2].pull(Path::Decrypt, &mut got, 8), 1);
        assert_eq!(got[0].bytes(), [5]);
        got.clear();
        assert_eq!(m[2].pull(Path::Encrypt, &mut got, 2), 2);
        assert_eq!(m[2].pull(Path::Encrypt, &mut got, 8), 1);
        let order: Vec<u8> = got.iter().map(|p| p.bytes()[0]).collect();
        assert_eq!(order, [1, 2, 4]);
        assert_eq!(m[0].pull(Path::Encrypt, &mut got, 8), 0);
    }
}
