//! Property tests over arbitrary bytes (the "cargo-fuzz or proptest" requirement): the outer
//! classifier, the ESP decapsulation path, the reassembler, MSS clamping and the pcap parser
//! never panic, and every packet offered to an SA is accounted for: it is either delivered
//! or counted under exactly one drop reason.

use engine::counters::DropReason;
use engine::crypto::{Backend, Suite};
use engine::esp;
use engine::frag::{self, ReasmLimits, Reassembler};
use engine::pipeline;
use engine::pkt::{BufPool, PacketBuf};
use engine::testkit::*;
use proptest::prelude::*;

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(pos, x) in edits {
        if !v.is_empty() {
            let n = v.len();
            v[pos % n] ^= x;
        }
    }
    let keep = v.len().saturating_sub(cut % 64);
    v.truncate(keep);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1600)) {
        let _ = esp::classify_outer(&data);
        let _ = engine::wire::parse_ip(&data);
        let mut d = data.clone();
        let _ = engine::wire::clamp_mss(&mut d, 1000);
        let _ = engine::pcap::parse(&data);
        let mut r = Reassembler::new(ReasmLimits::default());
        let mut out = PacketBuf::new();
        let _ = r.insert(0.0, &data, &mut out);
        for suite in Suite::all() {
            let (_, mut i) = pair(suite, Backend::RustCrypto, false, false, false);
            let mut p = PacketBuf::from_slice(&data);
            let res = esp::decapsulate(&mut i, &mut p);
            prop_assert!(res.is_err() || data.len() >= 8);
            prop_assert_eq!(i.counters.packets + i.counters.total_drops(), 1);
        }
    }

    /// Valid packets with random bit flips and truncations, through every suite and backend:
    /// a flipped packet never comes out altered.
    #[test]
    fn mutated_esp_is_dropped_or_intact(edits in prop::collection::vec((any::<usize>(), 1u8..=255), 0..3),
                                         cut in any::<usize>(), len in 20usize..1400, esn in any::<bool>()) {
        for backend in Backend::available_all() {
            for suite in Suite::all() {
                let (mut o, mut i) = pair(suite, backend, false, false, esn);
                let inner = udp4(len.max(28), false, 7, 3);
                let mut p = PacketBuf::from_slice(&inner);
                esp::encapsulate(&mut o, &mut p).unwrap();
                let off = esp_part(p.bytes());
                let esp_bytes = &p.bytes()[off..];
                let bad = mutate(esp_bytes, &edits, cut);
                let mut q = PacketBuf::from_slice(&bad);
                let mut r = Reassembler::new(ReasmLimits::default());
                match pipeline::unprotect(&mut i, &mut r, 0.0, &mut q) {
                    Ok(_) => prop_assert_eq!(q.bytes(), &inner[..]),
                    Err(_) => prop_assert!(bad != esp_bytes, "intact packet dropped"),
                }
                prop_assert_eq!(i.counters.packets + i.counters.total_drops(), 1);
            }
        }
    }

    /// Reassembly over any order, with duplicated (overlapping) fragments and a fragment
    /// limit: the datagram comes out intact exactly when every fragment arrived once and the
    /// limit allowed it; otherwise it is dropped as invalid or limited. Afterwards (complete
    /// or expired) the table holds nothing and no bytes, and every pool buffer is back.
    #[test]
    fn reassembly_any_order_overlaps_and_limits(len in 60usize..4000, mtu in 68usize..1500,
                                                 order in prop::collection::vec(any::<u32>(), 64),
                                                 dup in prop::option::of(any::<usize>()),
                                                 max_fragments in 2u32..80) {
        let p = udp4(len, false, 9, 1);
        let mut pool = BufPool::new(64, 2048);
        let start = pool.available();
        let mut frags = vec![];
        frag::fragment_ipv4(&p, mtu, &mut pool, &mut frags).unwrap();
        let n = frags.len();
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by_key(|&i| order[i % order.len()].wrapping_mul(i as u32 + 1));
        if let Some(d) = dup {
            idx.insert(d % (n + 1), idx[d % n]);
        }
        let mut r = Reassembler::new(ReasmLimits { max_fragments, ..Default::default() });
        let mut got = PacketBuf::with_capacity(0);
        let mut results = vec![];
        for &i in &idx {
            results.push(r.insert(0.0, frags[i].bytes(), &mut got));
        }
        let done = results.iter().filter(|x| **x == Ok(true)).count();
        let clean = dup.is_none() && n as u32 <= max_fragments;
        if clean {
            prop_assert_eq!(done, 1);
            prop_assert_eq!(results.last(), Some(&Ok(true)));
            let mut want = p.clone();
            engine::wire::put16(&mut want, 6, 0);
            engine::wire::ipv4_fix_checksum(&mut want);
            prop_assert_eq!(got.bytes(), &want[..]);
        } else if n > 1 {
            prop_assert!(results.iter().any(|x| matches!(
                x,
                Err(DropReason::ReassemblyInvalid) | Err(DropReason::ReassemblyLimit)
            )) || done == 1, "{:?}", results);
        }
        r.expire(1e9);
        prop_assert_eq!((r.pending(), r.stats.bytes, r.stats.in_progress), (0, 0, 0));
        for f in frags {
            pool.put(f);
        }
        prop_assert_eq!(pool.available() as u64, start as u64 + pool.grown);
    }
}
