//! Zero heap allocations per packet in steady state: a counting global allocator around
//! bursts of encapsulation and decapsulation for every suite on every backend.

mod common;

use common::*;
use engine::crypto::{Backend, Suite};
use engine::esp;
use engine::pkt::PacketBuf;
use engine::sa::SeqState;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_bursts_do_not_allocate() {
    for backend in Backend::available_all() {
        for suite in Suite::all() {
            let (mut o, mut i) = pair(suite, backend, false, true, true);
            let inner: Vec<Vec<u8>> = (0..32)
                .map(|k| udp4(64 + k * 40, false, k as u16, 1))
                .collect();
            let mut out: Vec<PacketBuf> = inner.iter().map(|p| PacketBuf::from_slice(p)).collect();
            let mut ins: Vec<PacketBuf> = (0..32).map(|_| PacketBuf::new()).collect();
            let mut eres = vec![Ok(SeqState::Ok); 32];
            let mut dres = vec![Ok(()); 32];
            let mut round = |count: bool| {
                for (p, src) in out.iter_mut().zip(&inner) {
                    p.set(src).unwrap();
                }
                let before = ALLOCS.load(Ordering::Relaxed);
                esp::encapsulate_burst(&mut o, &mut out, &mut eres);
                for (d, s) in ins.iter_mut().zip(&out) {
                    let off = esp_part(s.bytes());
                    d.set(&s.bytes()[off..]).unwrap();
                }
                esp::decapsulate_burst(&mut i, &mut ins, &mut dres);
                let n = ALLOCS.load(Ordering::Relaxed) - before;
                if count {
                    assert_eq!(
                        n, 0,
                        "{suite} on {backend:?} allocated {n} times for a burst of 32"
                    );
                }
                assert!(dres.iter().all(|r| r.is_ok()));
            };
            round(false); // warm-up: thread-local crypto managers are created lazily
            for _ in 0..10 {
                round(true);
            }
        }
    }
}
