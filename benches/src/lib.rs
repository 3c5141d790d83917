//! Fixtures shared by the criterion benchmarks (and later the `perf` rig): SA pairs, inner
//! packet bursts of fixed sizes or IMIX, and the raw-crypto baseline on the same buffers.
//!
//! Every measured loop copies the same bytes into its buffers first (encapsulation consumes
//! its input, so the baseline copies too): ratios compare like with like.

use engine::crypto::{Backend, CryptoOp, EspTransform, Suite};
use engine::esp;
use engine::pkt::PacketBuf;
use engine::replay::ReplayWindow;
use engine::sa::{Direction, InboundSa, OutboundSa, SeqState};
use engine::testkit;

/// Packets per burst.
pub const BURST: usize = 32;

/// Inner packet sizes of a burst: a fixed size, or IMIX 7:4:1 of 64/570/1518-byte Ethernet
/// frames (IP packets of 46/552/1500 bytes).
#[derive(Clone, Copy, Debug)]
pub enum Size {
    Fixed(usize),
    Imix,
}

impl Size {
    pub fn label(self) -> String {
        match self {
            Size::Fixed(n) => n.to_string(),
            Size::Imix => "imix".into(),
        }
    }
    pub fn sizes(self) -> Vec<usize> {
        match self {
            Size::Fixed(n) => vec![n; BURST],
            Size::Imix => {
                let pattern = [46, 46, 552, 46, 46, 552, 46, 1500, 46, 552, 46, 552];
                (0..BURST).map(|i| pattern[i % pattern.len()]).collect()
            }
        }
    }
}

/// Everything one benchmark point needs, built once.
pub struct Fixture {
    pub out: OutboundSa,
    pub inb: InboundSa,
    /// A standalone transform for the raw baseline (same keys, same backend).
    pub raw: Box<dyn EspTransform>,
    pub inner: Vec<Vec<u8>>,
    /// ESP packets (SPI..ICV) as produced by `out`, for decryption.
    pub esp: Vec<Vec<u8>>,
    /// Plain ESP layouts (header, IV, padded payload, ICV room) for the raw seal baseline.
    pub raw_plain: Vec<Vec<u8>>,
    pub bufs: Vec<PacketBuf>,
    pub raw_bufs: Vec<Vec<u8>>,
    pub inner_bytes: u64,
}

impl Fixture {
    pub fn new(suite: Suite, backend: Backend, size: Size) -> Fixture {
        let (mut out, inb) = testkit::pair(suite, backend, false, false, false);
        let keys = testkit::cfg(suite, Direction::Out, false, false, false);
        let raw =
            engine::crypto::new_transform(backend, suite, &keys.enc_key, &keys.int_key).unwrap();
        let inner: Vec<Vec<u8>> = size
            .sizes()
            .iter()
            .enumerate()
            .map(|(i, &n)| testkit::udp4(n, false, i as u16, 0))
            .collect();
        let mut esp_pkts = vec![];
        let mut raw_plain = vec![];
        for p in &inner {
            let mut b = PacketBuf::from_slice(p);
            esp::encapsulate(&mut out, &mut b).unwrap();
            esp_pkts.push(b.bytes()[20..].to_vec());
            let block = suite.block();
            let ct = (p.len() + 2).div_ceil(block) * block;
            let mut r = vec![0u8; 8 + suite.iv_len() + ct + suite.icv_len()];
            r[8 + suite.iv_len()..8 + suite.iv_len() + p.len()].copy_from_slice(p);
            raw_plain.push(r);
        }
        let bufs = (0..BURST).map(|_| PacketBuf::new()).collect();
        let raw_bufs = raw_plain.clone();
        let inner_bytes = inner.iter().map(|p| p.len() as u64).sum();
        Fixture {
            out,
            inb,
            raw,
            inner,
            esp: esp_pkts,
            raw_plain,
            bufs,
            raw_bufs,
            inner_bytes,
        }
    }

    /// Baseline: copy the plaintext layouts in, seal the burst with the transform alone.
    pub fn raw_seal(&mut self) {
        Self::raw_burst(&*self.raw, &mut self.raw_bufs, &self.raw_plain, false);
    }

    /// Copies `src` into `bufs`, then seals or opens them as one burst (the same copy as the
    /// ESP path does, so ratios compare like with like).
    fn raw_burst(t: &dyn EspTransform, bufs: &mut [Vec<u8>], src: &[Vec<u8>], open: bool) {
        for (b, s) in bufs.iter_mut().zip(src) {
            b.clear();
            b.extend_from_slice(s);
        }
        let mut ops: smallvec::SmallVec<[CryptoOp<'_>; BURST]> = bufs
            .iter_mut()
            .map(|b| CryptoOp {
                esp: b,
                seq_hi: None,
                ok: false,
            })
            .collect();
        if open {
            t.open_burst(&mut ops)
        } else {
            t.seal_burst(&mut ops)
        }
    }

    /// Full encapsulation: copy the inner packets in, ESP + outer headers for the burst.
    pub fn encap(&mut self) {
        for (b, p) in self.bufs.iter_mut().zip(&self.inner) {
            b.set(p).unwrap();
        }
        let mut res = [Ok(SeqState::Ok); BURST];
        esp::encapsulate_burst(&mut self.out, &mut self.bufs, &mut res);
    }

    /// Baseline: copy the ESP packets in, open the burst with the transform alone.
    pub fn raw_open(&mut self) {
        Self::raw_burst(&*self.raw, &mut self.raw_bufs, &self.esp, true);
    }

    /// Full decapsulation: copy the ESP packets in, replay check, open, trailer checks.
    pub fn decap(&mut self) {
        for (b, p) in self.bufs.iter_mut().zip(&self.esp) {
            b.set(p).unwrap();
        }
        self.inb.replay = ReplayWindow::new(1024, false);
        let mut res = [Ok(()); BURST];
        esp::decapsulate_burst(&mut self.inb, &mut self.bufs, &mut res);
        debug_assert!(res.iter().all(|r| r.is_ok()));
    }
}
