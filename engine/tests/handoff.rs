//! Two gateways of two workers each, joined queue to queue crosswise (A's worker 0 talks to
//! B's worker 1 and the other way round), with packets of every tunnel arriving on every
//! worker, as RSS spreads them: each SA is written by its owner only, the others hand its
//! packets over through the rings, nothing is lost or duplicated, a full ring holds the
//! feeder back, and a make-before-break rekey of a tunnel whose packets arrive on both workers
//! loses nothing.

use engine::counters::DropReason;
use engine::crypto::{Backend, Suite};
use engine::handoff::mesh;
use engine::io::{Impair, MemPort, QueuePort, mem_link};
use engine::pkt::{BufPool, PacketBuf, shared_pool};
use engine::runtime::{Command, Selector, Worker, WorkerConfig, WorkerReport};
use engine::sa::{Direction, InboundSa, OutboundSa};
use engine::testkit::*;
use engine::wire;
use engine::workers::WorkerSet;
use std::net::{IpAddr, Ipv4Addr};

type W = Worker<QueuePort, MemPort>;

struct Gw {
    w: Vec<W>,
    set: WorkerSet,
}

/// Gateways A and B, `n` workers each, A's worker i linked to B's worker n-1-i.
fn pair(n: usize, ring: usize) -> (Gw, Gw) {
    let shared = shared_pool(8192, 2048);
    let mut links: Vec<(MemPort, Option<MemPort>)> = (0..n)
        .map(|_| {
            let (a, b) = mem_link(8192, Impair::default());
            (a, Some(b))
        })
        .collect();
    let mut b_ports: Vec<Option<MemPort>> = links.iter_mut().map(|l| l.1.take()).collect();
    b_ports.reverse();
    let mk = |ports: Vec<MemPort>, base: usize| {
        let meshes = mesh(n, ring);
        let (w, h): (Vec<W>, Vec<_>) = ports
            .into_iter()
            .zip(meshes)
            .enumerate()
            .map(|(i, (port, m))| {
                let (mut w, h) = Worker::new(
                    WorkerConfig {
                        id: base + i,
                        ..Default::default()
                    },
                    QueuePort::default(),
                    port,
                    BufPool::with_shared(shared.clone(), 2048),
                );
                w.set_mesh(m);
                (w, h)
            })
            .unzip();
        Gw {
            w,
            set: WorkerSet::new(h),
        }
    };
    let a = mk(links.into_iter().map(|l| l.0).collect(), 0);
    let b = mk(b_ports.into_iter().map(|p| p.unwrap()).collect(), 10);
    (a, b)
}

fn dst(t: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x1000_0000u32 + t)
}

fn sas(t: u32, spi: u32) -> (OutboundSa, InboundSa) {
    let mut oc = cfg(Suite::all()[0], Direction::Out, false, false, false);
    oc.spi = spi;
    oc.enc_key.iter_mut().for_each(|b| *b ^= spi as u8);
    let mut ic = oc.clone();
    ic.direction = Direction::In;
    std::mem::swap(&mut ic.tunnel_src, &mut ic.tunnel_dst);
    (
        OutboundSa::new(oc, Backend::fastest(), &[t as u8; 32]).unwrap(),
        InboundSa::new(ic, Backend::fastest()).unwrap(),
    )
}

fn install(a: &Gw, b: &Gw, t: u32, spi: u32, selectors: bool) {
    let (o, i) = sas(t, spi);
    b.set.send(Command::AddInbound {
        tunnel: t,
        sa: Box::new(i),
    });
    a.set.send(Command::SetOutbound {
        tunnel: t,
        sa: Box::new(o),
        selectors: if selectors {
            vec![Selector::host(IpAddr::V4(dst(t)))]
        } else {
            vec![]
        },
    });
}

/// Inner UDP of flow `t`, sequence `seq` in the payload.
fn packet(t: u32, seq: u64) -> PacketBuf {
    let mut p = udp4(200, false, seq as u16, t as u8);
    p[16..20].copy_from_slice(&dst(t).octets());
    p[28..32].copy_from_slice(&t.to_be_bytes());
    p[32..40].copy_from_slice(&seq.to_be_bytes());
    wire::ipv4_fix_checksum(&mut p);
    PacketBuf::from_slice(&p)
}

impl Gw {
    /// Each worker's report (the workers are polled on this thread, so they are asked
    /// directly rather than over their command channels).
    fn reports(&self, per_tunnel: bool) -> Vec<WorkerReport> {
        self.w.iter().map(|w| w.report(per_tunnel)).collect()
    }
    fn total(&self, per_tunnel: bool) -> WorkerReport {
        let mut all = self.reports(per_tunnel).into_iter();
        let mut r = all.next().unwrap();
        for o in all {
            r.merge(&o);
        }
        r
    }
}

fn pump(a: &mut Gw, b: &mut Gw, rounds: usize) {
    for _ in 0..rounds {
        for w in a.w.iter_mut().chain(b.w.iter_mut()) {
            w.poll_once(0.0);
        }
    }
}

/// (flow, seq) of everything B's workers sent inside.
fn delivered(b: &mut Gw) -> Vec<(u32, u64)> {
    let mut got = vec![];
    for w in &mut b.w {
        for p in w.inside.tx.drain(..) {
            let p = p.bytes();
            got.push((
                wire::be32(p, 28),
                u64::from_be_bytes(p[32..40].try_into().unwrap()),
            ));
        }
    }
    got.sort();
    got
}

#[test]
fn every_worker_receives_every_tunnel_and_each_sa_has_one_writer() {
    let (mut a, mut b) = pair(2, 1024);
    for t in 0..4 {
        install(&a, &b, t, 0x100 + t, true);
    }
    pump(&mut a, &mut b, 2);
    let mut sent = vec![];
    for k in 0..2000u64 {
        let t = (k % 4) as u32;
        // Spread over both inside queues regardless of the tunnel (RSS by flow hash).
        a.w[((k / 4) % 2) as usize]
            .inside
            .rx
            .push_back(packet(t, k));
        sent.push((t, k));
        if k % 64 == 63 {
            pump(&mut a, &mut b, 1);
        }
    }
    pump(&mut a, &mut b, 50);
    sent.sort();
    assert_eq!(delivered(&mut b), sent, "all of them, once");
    let (ra, rb) = (a.reports(true), b.reports(true));
    for (i, r) in ra.iter().chain(rb.iter()).enumerate() {
        assert_eq!(
            r.total.total_drops(),
            0,
            "worker {i}: {:?}",
            r.total.drops_summary()
        );
        assert!(r.handoff_out > 0 && r.handoff_in > 0, "worker {i}: {r:?}");
        assert_eq!(r.handoff_drops, 0);
        // Only the owner holds (and counts on) a tunnel's SAs: tunnels i % 2.
        assert!(
            r.sas.iter().all(|s| s.tunnel as usize % 2 == i % 2),
            "{:?}",
            r.sas
        );
        assert_eq!(r.sas.len(), 2);
    }
    // What one side hands over, the other takes: half of the inside traffic at A (the
    // other worker's tunnels), and at B the ESP of tunnels whose owner is across.
    let sum = |v: &[WorkerReport], f: fn(&WorkerReport) -> u64| v.iter().map(f).sum::<u64>();
    assert_eq!(sum(&ra, |r| r.handoff_out), 1000);
    assert_eq!(sum(&ra, |r| r.handoff_in), 1000);
    assert_eq!(sum(&rb, |r| r.handoff_out), sum(&rb, |r| r.handoff_in));
    let total = a.total(true);
    assert_eq!(total.total.packets, 2000);
    assert_eq!(total.per_tunnel.len(), 4);
}

/// A congested owner slows the worker that feeds it: with lanes of two batches (128
/// packets), the feeder takes from its port only what its lane can still hold, so 400
/// packets of the other worker's tunnel arriving at once wait in the port (as they would in
/// a NIC ring) and all get through.
#[test]
fn a_full_lane_holds_the_feeder_back_and_nothing_is_dropped() {
    let (mut a, mut b) = pair(2, 8);
    install(&a, &b, 1, 0x201, true);
    pump(&mut a, &mut b, 2);
    for k in 0..400u64 {
        a.w[0].inside.rx.push_back(packet(1, k));
    }
    for _ in 0..4 {
        a.w[0].poll_once(0.0);
    }
    assert_eq!(
        a.w[0].inside.rx.len(),
        400 - 128,
        "took only what the lane holds"
    );
    assert_eq!(a.w[0].report(false).handoff_out, 128);
    pump(&mut a, &mut b, 60);
    let got = delivered(&mut b);
    let r0 = a.w[0].report(false);
    assert_eq!((got.len(), r0.handoff_out, r0.handoff_drops), (400, 400, 0));
    assert_eq!(r0.total.dropped(DropReason::HandoffFull), 0);
}

/// A rekey while packets of the tunnel arrive on both workers of each side: the new inbound
/// SA is installed (on B's owner, and known to B's other worker) before A switches, the old
/// one goes after; every packet arrives.
#[test]
fn make_before_break_with_packets_on_both_workers_loses_nothing() {
    let (mut a, mut b) = pair(2, 1024);
    install(&a, &b, 3, 0x300, true);
    pump(&mut a, &mut b, 2);
    let mut sent = vec![];
    let mut k = 0u64;
    let mut feed = |a: &mut Gw, sent: &mut Vec<(u32, u64)>, n: u64| {
        for _ in 0..n {
            a.w[(k % 2) as usize].inside.rx.push_back(packet(3, k));
            sent.push((3, k));
            k += 1;
        }
    };
    for round in 0..10u32 {
        feed(&mut a, &mut sent, 100);
        pump(&mut a, &mut b, 1);
        let old = 0x300 + round;
        let new = old + 1;
        let (o, i) = sas(3, new);
        b.set.send(Command::AddInbound {
            tunnel: 3,
            sa: Box::new(i),
        });
        feed(&mut a, &mut sent, 100);
        pump(&mut a, &mut b, 1);
        a.set.send(Command::SetOutbound {
            tunnel: 3,
            sa: Box::new(o),
            selectors: vec![],
        });
        feed(&mut a, &mut sent, 100);
        pump(&mut a, &mut b, 3);
        b.set.send(Command::DelInbound { spi: old });
    }
    feed(&mut a, &mut sent, 100);
    pump(&mut a, &mut b, 30);
    sent.sort();
    assert_eq!(delivered(&mut b), sent);
    let rb = b.total(true);
    assert_eq!(rb.total.total_drops(), 0, "{:?}", rb.total.drops_summary());
    assert_eq!(rb.inbound_sas, 1);
    assert!(rb.handoff_in > 0);
}
