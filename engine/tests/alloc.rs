//! Zero heap allocations per packet in steady state: a counting global allocator around
//! bursts of encapsulation and decapsulation for every suite on every backend.

use engine::crypto::{Backend, Suite};
use engine::esp;
use engine::pkt::PacketBuf;
use engine::sa::SeqState;
use engine::testkit::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::Ordering;

struct Counting;

thread_local! {
    // Per thread, so tests running in parallel do not count each other's allocations.
    static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Allocations made by this thread so far.
struct Allocs;
static ALLOCS: Allocs = Allocs;
impl Allocs {
    fn load(&self, _: Ordering) -> u64 {
        COUNT.with(|c| c.get())
    }
}

fn bump() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        bump();
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

#[test]
fn runtime_steady_state_does_not_allocate() {
    use engine::io::{Impair, QueuePort, mem_link};
    use engine::pkt::{BufPool, shared_pool};
    use engine::runtime::{Command, Selector, Worker, WorkerConfig};
    use engine::sa::{Direction, InboundSa, OutboundSa};
    use std::net::IpAddr;

    for suite in Suite::all() {
        let (la, lb) = mem_link(1024, Impair::default());
        let shared = shared_pool(1024, 2048);
        let (mut a, ha) = Worker::new(
            WorkerConfig::default(),
            QueuePort::default(),
            la,
            BufPool::with_shared(shared.clone(), 2048),
        );
        let (mut b, hb) = Worker::new(
            WorkerConfig::default(),
            QueuePort::default(),
            lb,
            BufPool::with_shared(shared, 2048),
        );
        let oc = cfg(suite, Direction::Out, false, false, false);
        let mut ic = oc.clone();
        ic.direction = Direction::In;
        hb.send(Command::AddInbound {
            tunnel: 1,
            sa: Box::new(InboundSa::new(ic, Backend::fastest()).unwrap()),
        });
        let dst: IpAddr = "203.0.113.1".parse().unwrap();
        ha.send(Command::SetOutbound {
            tunnel: 1,
            sa: Box::new(OutboundSa::new(oc, Backend::fastest(), &[1; 32]).unwrap()),
            selectors: vec![Selector::host(dst)],
        });
        a.inside.rx.reserve(256);
        b.inside.tx.reserve(256);
        let inner: Vec<Vec<u8>> = (0..64)
            .map(|k| udp4(64 + k * 20, false, k as u16, 0))
            .collect();
        let mut spare: Vec<PacketBuf> = inner.iter().map(|p| PacketBuf::from_slice(p)).collect();
        let mut round = |count: bool| {
            for (p, src) in spare.drain(..).zip(&inner) {
                let mut p = p;
                p.set(src).unwrap();
                a.inside.rx.push_back(p);
            }
            let before = ALLOCS.load(Ordering::Relaxed);
            for _ in 0..4 {
                a.poll_once(0.0);
                b.poll_once(0.0);
            }
            let n = ALLOCS.load(Ordering::Relaxed) - before;
            assert_eq!(b.inside.tx.len(), 64, "{suite}");
            spare.append(&mut b.inside.tx);
            if count {
                assert_eq!(
                    n, 0,
                    "{suite}: the runtime allocated {n} times for 64 packets"
                );
            }
        };
        round(false);
        round(false);
        for _ in 0..10 {
            round(true);
        }
    }
}
