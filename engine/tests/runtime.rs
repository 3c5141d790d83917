//! The runtime: two gateways (A encrypts, B decrypts) joined by an in-memory link, driven
//! deterministically on one thread with `poll_once`, and with real threads for the rekey
//! test. Every transform, IPv4 and IPv6 outer, NAT-T on and off; reordering within the
//! replay window; duplication; 100 make-before-break replacements under load; 10,000 SAs
//! installed, used and deleted while traffic flows.

use engine::counters::DropReason;
use engine::crypto::{Backend, Encryption, Integrity, Suite};
use engine::io::{Impair, MemPort, QueuePort, mem_link};
use engine::pkt::{BufPool, PacketBuf, shared_pool};
use engine::runtime::{Command, Selector, Worker, WorkerConfig, WorkerHandle};
use engine::sa::{Direction, InboundSa, OutboundSa};
use engine::testkit::*;
use engine::wire;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

type A = Worker<QueuePort, MemPort>;
type B = Worker<QueuePort, MemPort>;

fn gateways(impair: Impair) -> (A, WorkerHandle, B, WorkerHandle) {
    gateways_with(impair, shared_pool(4096, 2048))
}

fn gateways_with(
    impair: Impair,
    shared: engine::pkt::SharedPool,
) -> (A, WorkerHandle, B, WorkerHandle) {
    let (la, lb) = mem_link(8192, impair);
    let (a, ha) = Worker::new(
        WorkerConfig {
            id: 0,
            ..Default::default()
        },
        QueuePort::default(),
        la,
        BufPool::with_shared(shared.clone(), 2048),
    );
    let (b, hb) = Worker::new(
        WorkerConfig {
            id: 1,
            ..Default::default()
        },
        QueuePort::default(),
        lb,
        BufPool::with_shared(shared, 2048),
    );
    (a, ha, b, hb)
}

fn tunnel_dst(t: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x1000_0000u32 + t)
}

/// SA pair for tunnel `t` with its own SPIs and keys.
fn sa_pair(suite: Suite, t: u32, spi: u32, v6: bool, nat: bool) -> (OutboundSa, InboundSa) {
    let mut oc = cfg(suite, Direction::Out, v6, nat, false);
    oc.spi = spi;
    oc.enc_key
        .iter_mut()
        .for_each(|b| *b ^= (t as u8) ^ (spi as u8));
    let mut ic = oc.clone();
    ic.direction = Direction::In;
    std::mem::swap(&mut ic.tunnel_src, &mut ic.tunnel_dst);
    (
        OutboundSa::new(oc, Backend::fastest(), &[t as u8; 32]).unwrap(),
        InboundSa::new(ic, Backend::fastest()).unwrap(),
    )
}

fn install(
    ha: &WorkerHandle,
    hb: &WorkerHandle,
    suite: Suite,
    t: u32,
    spi: u32,
    v6: bool,
    nat: bool,
) {
    let (o, i) = sa_pair(suite, t, spi, v6, nat);
    hb.send(Command::AddInbound {
        tunnel: t,
        sa: Box::new(i),
    });
    ha.send(Command::SetOutbound {
        tunnel: t,
        sa: Box::new(o),
        selectors: vec![Selector::host(IpAddr::V4(tunnel_dst(t)))],
    });
}

/// Tunnel 4: inner IPv6 (selector 2001:db8:2::/48, the destination of `udp6`).
fn install_inner_v6(ha: &WorkerHandle, hb: &WorkerHandle, suite: Suite, v6: bool, nat: bool) {
    let (o, i) = sa_pair(suite, 4, 0x104, v6, nat);
    hb.send(Command::AddInbound {
        tunnel: 4,
        sa: Box::new(i),
    });
    ha.send(Command::SetOutbound {
        tunnel: 4,
        sa: Box::new(o),
        selectors: vec![Selector {
            addr: "2001:db8:2::".parse().unwrap(),
            prefix: 48,
        }],
    });
}

/// An inner UDP packet of flow `t` with sequence `seq` in its payload.
fn flow_packet(t: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut p = udp4(len.max(40), false, seq as u16, t as u8);
    p[16..20].copy_from_slice(&tunnel_dst(t).octets());
    p[28..32].copy_from_slice(&t.to_be_bytes());
    p[32..40].copy_from_slice(&seq.to_be_bytes());
    wire::ipv4_fix_checksum(&mut p);
    p
}

fn flow_of(p: &[u8]) -> (u32, u64) {
    (
        wire::be32(p, 28),
        u64::from_be_bytes(p[32..40].try_into().unwrap()),
    )
}

fn pump(a: &mut A, b: &mut B, rounds: usize) {
    for _ in 0..rounds {
        a.poll_once(0.0);
        b.poll_once(0.0);
    }
    while a.pending_commands() + b.pending_commands() > 0 {
        a.poll_once(0.0);
        b.poll_once(0.0);
    }
}

#[test]
fn loopback_every_transform_family_natt() {
    for suite in Suite::all() {
        for v6 in [false, true] {
            for nat in [false, true] {
                let (mut a, ha, mut b, hb) = gateways(Impair::default());
                for t in 0..4 {
                    install(&ha, &hb, suite, t, 0x100 + t, v6, nat);
                }
                // Tunnel 4 carries inner IPv6.
                install_inner_v6(&ha, &hb, suite, v6, nat);
                let mut sent = vec![];
                for k in 0..500u64 {
                    let p = if k % 5 == 4 {
                        udp6([80, 700, 1300][(k % 3) as usize], k as u8)
                    } else {
                        let t = (k % 5) as u32;
                        flow_packet(t, k, [64, 300, 1400, 3000][t as usize])
                    };
                    sent.push(p.clone());
                    a.inside.rx.push_back(PacketBuf::from_slice(&p));
                }
                pump(&mut a, &mut b, 20);
                let got: Vec<Vec<u8>> = b.inside.tx.iter().map(|p| p.bytes().to_vec()).collect();
                assert_eq!(got.len(), sent.len(), "{suite} v6={v6} nat={nat}");
                for (g, s) in got.iter().zip(&sent) {
                    let mut want = s.clone();
                    if want[0] >> 4 == 4 && want.len() > 1446 {
                        wire::put16(&mut want, 6, 0); // fragmented before encryption, reassembled
                        wire::ipv4_fix_checksum(&mut want);
                    }
                    assert_eq!(g, &want, "{suite}");
                }
                let ra = a.report(false);
                let rb = b.report(false);
                assert_eq!(
                    ra.total.total_drops() + rb.total.total_drops(),
                    0,
                    "{:?} {:?}",
                    ra.total.drops_summary(),
                    rb.total.drops_summary()
                );
                assert!(ra.total.frag_before_encrypt_packets >= 100);
                // Per-tunnel counters: inner bytes out at A equal inner bytes in at B (AWS
                // TunnelDataOut / TunnelDataIn), 100 packets per tunnel.
                let (pa, pb) = (a.report(true).per_tunnel, b.report(true).per_tunnel);
                assert_eq!(pa.len(), 5);
                for ((ta, ca), (tb, cb)) in pa.iter().zip(&pb) {
                    assert_eq!(ta, tb);
                    assert_eq!(cb.inb.inner_bytes, ca.out.inner_bytes, "tunnel {ta}");
                    assert!(ca.out.packets >= 100);
                }
                let by_tunnel: u64 = pa.iter().map(|(_, c)| c.out.inner_bytes).sum();
                // Inner bytes are counted before encryption, after fragmentation: each extra
                // fragment adds a 20-byte IPv4 header.
                let extra = 20
                    * (ra.total.frag_before_encrypt_fragments
                        - ra.total.frag_before_encrypt_packets);
                assert_eq!(
                    by_tunnel,
                    sent.iter().map(|p| p.len() as u64).sum::<u64>() + extra
                );
                assert_eq!(rb.total.reassembled, ra.total.frag_before_encrypt_packets);
            }
        }
    }
}

fn run_impaired(impair: Impair) -> (Vec<(u32, u64)>, u64, engine::counters::Counters, u64) {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let (mut a, ha, mut b, hb) = gateways(impair);
    install(&ha, &hb, suite, 0, 0x500, false, false);
    for k in 0..5000u64 {
        a.inside
            .rx
            .push_back(PacketBuf::from_slice(&flow_packet(0, k, 200)));
        if k % 64 == 0 {
            pump(&mut a, &mut b, 1);
        }
    }
    pump(&mut a, &mut b, 200);
    let got: Vec<(u32, u64)> = b.inside.tx.iter().map(|p| flow_of(p.bytes())).collect();
    let dups = a
        .outside
        .stats
        .duplicated
        .load(std::sync::atomic::Ordering::Relaxed);
    let reord = a
        .outside
        .stats
        .reordered
        .load(std::sync::atomic::Ordering::Relaxed);
    drop((ha, hb));
    (got, dups, b.report(false).total, reord)
}

#[test]
fn reordering_within_the_window_loses_nothing() {
    let (got, _, c, reordered) = run_impaired(Impair {
        reorder: 0.2,
        reorder_depth: 16,
        seed: 7,
        ..Default::default()
    });
    assert!(reordered > 500, "the link did reorder ({reordered})");
    let mut seqs: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_ne!(seqs, (0..5000).collect::<Vec<_>>(), "arrival order differs");
    seqs.sort();
    assert_eq!(seqs, (0..5000).collect::<Vec<_>>());
    assert_eq!(c.total_drops(), 0, "{}", c.drops_summary());
}

#[test]
fn duplicates_are_exactly_the_replay_drops() {
    let (got, dups, c, _) = run_impaired(Impair {
        dup: 0.05,
        reorder: 0.05,
        reorder_depth: 4,
        seed: 99,
        ..Default::default()
    });
    assert!(dups > 100);
    let mut seqs: Vec<u64> = got.iter().map(|g| g.1).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (0..5000).collect::<Vec<_>>(),
        "every packet exactly once"
    );
    assert_eq!(c.dropped(DropReason::Replay), dups);
    assert_eq!(c.total_drops(), dups);
}

#[test]
fn ten_thousand_sas_installed_used_deleted_under_traffic() {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let shared = shared_pool(4096, 2048);
    let (mut a, ha, mut b, hb) = gateways_with(Impair::default(), shared.clone());
    let pool_start = shared.len();
    let mut seq = vec![0u64; 10_000];
    let mut delivered = 0usize;
    let mut sent = 0usize;
    let mut live: Vec<u32> = vec![];
    for batch in 0..10u32 {
        for t in batch * 1000..(batch + 1) * 1000 {
            install(&ha, &hb, suite, t, 0x1_0000 + t, false, false);
            live.push(t);
        }
        pump(&mut a, &mut b, 1);
        // Traffic to every live tunnel.
        for &t in &live {
            a.inside
                .rx
                .push_back(PacketBuf::from_slice(&flow_packet(t, seq[t as usize], 100)));
            seq[t as usize] += 1;
            sent += 1;
        }
        while !a.inside.rx.is_empty()
            || a.outside
                .stats
                .sent
                .load(std::sync::atomic::Ordering::Relaxed) as usize
                > delivered + b.inside.tx.len()
        {
            pump(&mut a, &mut b, 1);
        }
        delivered += b.inside.tx.len();
        for p in b.inside.tx.drain(..) {
            b.pool.put(p);
        }
        // Delete the older half of the live tunnels while the rest keep sending.
        if batch % 2 == 1 {
            let gone: Vec<u32> = live.drain(..live.len() / 2).collect();
            for t in gone {
                ha.send(Command::DelTunnel { tunnel: t });
                hb.send(Command::DelTunnel { tunnel: t });
            }
        }
    }
    assert_eq!(delivered, sent, "no packet of a live SA lost");
    for t in live.drain(..) {
        ha.send(Command::DelTunnel { tunnel: t });
        hb.send(Command::DelTunnel { tunnel: t });
    }
    pump(&mut a, &mut b, 2);
    let (ra, rb) = (a.report(false), b.report(false));
    assert_eq!(
        (
            ra.outbound_sas,
            ra.inbound_sas,
            rb.outbound_sas,
            rb.inbound_sas
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        ha.reap() + hb.reap(),
        20_000,
        "every SA handed back to be freed"
    );
    assert_eq!(ra.total.total_drops() + rb.total.total_drops(), 0);
    assert_eq!(
        ra.total.packets, sent as u64,
        "retired SAs keep their counters"
    );
    assert_eq!(a.pool.grown + b.pool.grown, 0);
    // Every buffer is back in a pool, or freed because the pools were at their bound (the
    // pools' memory is bounded): nothing leaked in rings or tables. (Each test packet
    // brought its own buffer, which ends in a pool after delivery.)
    a.pool.flush();
    b.pool.flush();
    assert_eq!(
        shared.len() as u64
            + a.pool.available() as u64
            + b.pool.available() as u64
            + a.pool.freed_over_cap
            + b.pool.freed_over_cap,
        (pool_start + sent) as u64
    );
    assert!(a.pool.available() <= a.pool.max_free() && b.pool.available() <= b.pool.max_free());
}

#[test]
fn hundred_make_before_break_replacements_under_load_lose_nothing() {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let (mut a, ha, b, hb) = gateways(Impair::default());
    install(&ha, &hb, suite, 0, 0x2000, false, false);
    let stop = Arc::new(AtomicBool::new(false));
    // Pre-load A's inside queue with the whole load; A drains it at its own pace.
    const N: u64 = 100_000;
    for k in 0..N {
        a.inside
            .rx
            .push_back(PacketBuf::from_slice(&flow_packet(0, k, 64)));
    }
    let sent_by_a = a.outside.stats.clone();
    let received_by_b = b.outside.stats.clone();
    let sa_ = stop.clone();
    let ta = std::thread::spawn(move || a.run(sa_));
    let sb_ = stop.clone();
    let tb = std::thread::spawn(move || b.run(sb_));
    let mut old_spi = 0x2000u32;
    for r in 1..=100u32 {
        let new_spi = 0x2000 + r;
        let (o, i) = sa_pair(suite, 0, new_spi, false, false);
        // 1. new inbound live at B; 2. A switches; 3. old inbound deleted after the link drained.
        hb.send(Command::AddInbound {
            tunnel: 0,
            sa: Box::new(i),
        });
        assert!(hb.barrier());
        ha.send(Command::SetOutbound {
            tunnel: 0,
            sa: Box::new(o),
            selectors: vec![],
        });
        assert!(ha.barrier());
        // Every packet sent with the old SA has left A: wait until B has taken them all
        // and finished that burst (in a real gateway, the IKE DELETE exchange times this).
        let target = sent_by_a.sent.load(std::sync::atomic::Ordering::Relaxed);
        while received_by_b
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
            < target
        {
            std::thread::yield_now();
        }
        assert!(hb.barrier());
        hb.send(Command::DelInbound { spi: old_spi });
        old_spi = new_spi;
        ha.reap();
        hb.reap();
    }
    // Let the rest of the load through.
    // Let the rest of the load through (stop when nothing moved for a second).
    let mut last = (0, std::time::Instant::now());
    loop {
        let n = hb.report(false).unwrap().tx_in;
        if n >= N || last.1.elapsed() > std::time::Duration::from_secs(1) {
            break;
        }
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _a = ta.join().unwrap();
    let b = tb.join().unwrap();
    let rb = b.report(false);
    let got: Vec<u64> = b.inside.tx.iter().map(|p| flow_of(p.bytes()).1).collect();
    assert_eq!(
        got.len() as u64,
        N,
        "zero loss across 100 replacements ({})",
        rb.total.drops_summary()
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(rb.total.dropped(DropReason::Replay), 0);
    assert_eq!(rb.total.total_drops(), 0, "{}", rb.total.drops_summary());
    assert_eq!(rb.inbound_sas, 1);
}

#[test]
fn pcap_ports_run_the_same_worker() {
    use engine::io::PcapPort;
    let dir = std::env::temp_dir().join(format!("espd-rt-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inner_path = dir.join("inner.pcap");
    let esp_path = dir.join("esp.pcap");
    let inner: Vec<Vec<u8>> = (0..50u64)
        .map(|k| flow_packet(0, k, 100 + k as usize * 20))
        .collect();
    {
        let f = std::io::BufWriter::new(std::fs::File::create(&inner_path).unwrap());
        let mut w = engine::pcap::Writer::new(f, engine::pcap::LINKTYPE_RAW, false).unwrap();
        for p in &inner {
            w.write(0, 0, &[], p).unwrap();
        }
        w.finish().unwrap();
    }
    let suite = Suite::new(Encryption::Aes256Cbc, Integrity::Sha384_192).unwrap();
    let inside = PcapPort::new(Some(&inner_path), None).unwrap();
    let outside = PcapPort::new(None, Some(&esp_path)).unwrap();
    let (mut w, h) = Worker::new(
        WorkerConfig::default(),
        inside,
        outside,
        BufPool::new(64, 2048),
    );
    let (o, mut i) = sa_pair(suite, 0, 0x777, false, true);
    h.send(Command::SetOutbound {
        tunnel: 0,
        sa: Box::new(o),
        selectors: vec![Selector {
            addr: "16.0.0.0".parse().unwrap(),
            prefix: 8,
        }],
    });
    while !w.inside.exhausted() {
        w.poll_once(0.0);
    }
    let r = w.report(false);
    assert_eq!(r.tx_out, 50);
    let Worker { outside, .. } = w;
    outside.finish().unwrap();
    let cap = engine::pcap::read(&esp_path).unwrap();
    assert_eq!(cap.records.len(), 50);
    for (rec, want) in cap.records.iter().zip(&inner) {
        let mut p = PacketBuf::from_slice(&rec.data);
        let off = esp_part(p.bytes());
        p.pull_front(off).unwrap();
        engine::esp::decapsulate(&mut i, &mut p).unwrap();
        assert_eq!(p.bytes(), &want[..]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn connection_fails_over_to_the_other_tunnel_and_back() {
    // Two tunnels of one connection (static SAs), route 0.0.0.0/0 -> [t1, t2]: t1 preferred.
    let suite = Suite::new(Encryption::Aes128Cbc, Integrity::Sha256_128).unwrap();
    let (mut a, ha, mut b, hb) = gateways(Impair::default());
    for (t, spi) in [(1u32, 0x1111u32), (2, 0x2222)] {
        let (o, i) = sa_pair(suite, t, spi, false, false);
        hb.send(Command::AddInbound {
            tunnel: t,
            sa: Box::new(i),
        });
        ha.send(Command::SetOutbound {
            tunnel: t,
            sa: Box::new(o),
            selectors: vec![],
        });
    }
    let any = Selector {
        addr: "0.0.0.0".parse().unwrap(),
        prefix: 0,
    };
    ha.send(Command::SetRoute {
        selectors: vec![any],
        tunnels: vec![1, 2],
    });
    pump(&mut a, &mut b, 1);
    let probe = flow_packet(0, 0, 100);
    assert_eq!(a.route_of(&probe), Some(1));
    let mut seq = 0u64;
    let mut send = |a: &mut A, b: &mut B, n: u64| {
        for _ in 0..n {
            a.inside
                .rx
                .push_back(PacketBuf::from_slice(&flow_packet(0, seq, 200)));
            seq += 1;
            if seq.is_multiple_of(32) {
                a.poll_once(0.0);
                b.poll_once(0.0);
            }
        }
    };
    send(&mut a, &mut b, 1000);
    // Tunnel 1 goes away under load (its SAs deleted on both sides, in the same instant).
    ha.send(Command::DelTunnel { tunnel: 1 });
    hb.send(Command::DelTunnel { tunnel: 1 });
    send(&mut a, &mut b, 1000);
    assert_eq!(a.route_of(&probe), Some(2), "failed over to tunnel 2");
    // DPD clear on tunnel 2 with tunnel 1 still gone: nothing usable; a packet sent now is
    // dropped and counted as no_sa.
    while !a.inside.rx.is_empty() {
        pump(&mut a, &mut b, 1);
    }
    ha.send(Command::SetTunnelState {
        tunnel: 2,
        up: false,
    });
    pump(&mut a, &mut b, 1);
    assert_eq!(a.route_of(&probe), None);
    send(&mut a, &mut b, 32);
    while !a.inside.rx.is_empty() {
        pump(&mut a, &mut b, 1);
    }
    ha.send(Command::SetTunnelState {
        tunnel: 2,
        up: true,
    });
    // Tunnel 1 comes back with a new SA pair: traffic moves back to it.
    let (o, i) = sa_pair(suite, 1, 0x1112, false, false);
    hb.send(Command::AddInbound {
        tunnel: 1,
        sa: Box::new(i),
    });
    pump(&mut a, &mut b, 1);
    ha.send(Command::SetOutbound {
        tunnel: 1,
        sa: Box::new(o),
        selectors: vec![],
    });
    pump(&mut a, &mut b, 1);
    assert_eq!(a.route_of(&probe), Some(1), "back on the preferred tunnel");
    send(&mut a, &mut b, 1000);
    pump(&mut a, &mut b, 20);
    let got = b.inside.tx.len() as u64;
    let (ra, rb) = (a.report(false), b.report(true));
    let lost = seq - got;
    // Lost: the packets of tunnel 1 in flight when its inbound SA was deleted (unknown_spi at
    // B, at most a burst) and the 32 sent while no tunnel was up (no_sa at A). All reported.
    let in_flight = rb.total.dropped(DropReason::UnknownSpi);
    assert!(in_flight <= 64, "loss bounded: {in_flight}");
    assert_eq!(ra.total.dropped(DropReason::NoSa), 32);
    assert_eq!(
        in_flight + 32,
        lost,
        "A: {} B: {}",
        ra.total.drops_summary(),
        rb.total.drops_summary()
    );
    let per: std::collections::HashMap<u32, u64> = rb
        .per_tunnel
        .iter()
        .map(|(t, c)| (*t, c.inb.packets))
        .collect();
    assert!(
        per[&2] >= 900,
        "tunnel 2 carried the traffic while tunnel 1 was down: {per:?}"
    );
    assert!(per[&1] >= 1900, "tunnel 1 before and after: {per:?}");
    eprintln!(
        "failover: sent {seq}, delivered {got}, lost {lost}: {in_flight} in flight on the deleted SA, 32 while no tunnel was up"
    );
}

#[test]
fn garbage_on_either_port_never_panics_a_worker_and_is_counted() {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let (mut a, ha, mut b, hb) = gateways(Impair::default());
    install(&ha, &hb, suite, 0, 0x900, false, true);
    pump(&mut a, &mut b, 1);
    // A valid ESP packet to mutate.
    a.inside
        .rx
        .push_back(PacketBuf::from_slice(&flow_packet(0, 0, 300)));
    a.poll_once(0.0);
    let mut valid = PacketBuf::new();
    let mut got = vec![];
    engine::io::PacketIo::rx_burst(&mut b.outside, &mut b.pool, &mut got, 1);
    valid.set(got[0].bytes()).unwrap();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut fed = 0u64;
    for i in 0..20_000u64 {
        let r = rnd();
        let mut pkt = if i % 2 == 0 {
            let n = (r % 1600) as usize;
            (0..n).map(|_| rnd() as u8).collect::<Vec<u8>>()
        } else {
            let mut v = valid.bytes().to_vec();
            let n = v.len();
            v[(r as usize >> 8) % n] ^= (r as u8) | 1;
            v.truncate(n - (r as usize >> 20) % 8);
            v
        };
        if i % 3 == 0 && !pkt.is_empty() {
            pkt[0] = 0x45; // looks like IPv4
        }
        // Half to the outside port (as if from the peer), half to the inside (plaintext side).
        if i % 4 < 2 {
            let mut v = vec![PacketBuf::from_slice(&pkt)];
            engine::io::PacketIo::tx_burst(&mut a.outside, &mut a.pool, &mut v);
        } else {
            a.inside.rx.push_back(PacketBuf::from_slice(&pkt));
        }
        fed += 1;
        if i % 64 == 0 {
            pump(&mut a, &mut b, 1);
        }
    }
    pump(&mut a, &mut b, 50);
    let (ra, rb) = (a.report(false), b.report(false));
    // Everything is accounted for somewhere: delivered, encrypted, or counted as a drop / IKE.
    let accounted = ra.total.packets
        + ra.total.total_drops()
        + rb.total.packets
        + rb.total.total_drops()
        + rb.total.ike_passed
        + rb.total.nat_keepalives
        + ra.total.frag_before_encrypt_packets;
    assert!(accounted >= fed / 2, "accounted {accounted} of {fed}");
    assert!(
        rb.total.total_drops() > 1000,
        "{}",
        rb.total.drops_summary()
    );
}

/// A gateway that routes (`decrement_ttl`, as `espd run` sets it): the inner TTL / hop limit
/// goes down by one on the way into the tunnel (checksum still right, also for packets
/// fragmented before encryption); at 1 the packet is dropped as `ttl_exceeded` and an ICMP
/// Time Exceeded (RFC 792 type 11 / RFC 4443 type 3) goes back inside to its sender, never
/// about an ICMP error.
#[test]
fn a_routing_gateway_lowers_the_ttl_and_answers_time_exceeded() {
    let (la, lb) = mem_link(1024, Impair::default());
    let shared = shared_pool(1024, 2048);
    let (mut a, ha) = Worker::new(
        WorkerConfig {
            decrement_ttl: true,
            ..Default::default()
        },
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
    let suite = Suite::all()[0];
    install(&ha, &hb, suite, 0, 0x100, false, false);
    install_inner_v6(&ha, &hb, suite, false, false);
    let with_ttl = |mut p: Vec<u8>, ttl: u8| {
        if p[0] >> 4 == 4 {
            p[8] = ttl;
            wire::ipv4_fix_checksum(&mut p);
        } else {
            p[7] = ttl;
        }
        p
    };
    let (ttl1, ttl0) = (
        with_ttl(flow_packet(0, 3, 300), 1),
        with_ttl(flow_packet(0, 6, 300), 0),
    );
    let mut icmp_error = with_ttl(flow_packet(0, 9, 64), 1);
    icmp_error[9] = wire::proto::ICMP;
    icmp_error[20] = 3; // destination unreachable
    wire::ipv4_fix_checksum(&mut icmp_error);
    for p in [
        with_ttl(flow_packet(0, 1, 300), 64),
        with_ttl(flow_packet(0, 2, 3000), 2),
        ttl1.clone(),
        with_ttl(udp6(300, 4), 64),
        with_ttl(udp6(300, 5), 1),
        ttl0.clone(),
        icmp_error,
    ] {
        a.inside.rx.push_back(PacketBuf::from_slice(&p));
    }
    pump(&mut a, &mut b, 10);
    let got: Vec<Vec<u8>> = b.inside.tx.iter().map(|p| p.bytes().to_vec()).collect();
    assert_eq!(got.len(), 3, "only the packets with TTL left cross");
    assert_eq!((got[0][8], flow_of(&got[0])), (63, (0, 1)));
    assert_eq!(
        (got[1][8], got[1].len(), flow_of(&got[1])),
        (1, 3000, (0, 2))
    );
    assert!(wire::ipv4_header_ok(&got[0]) && wire::ipv4_header_ok(&got[1]));
    assert_eq!((got[2][0] >> 4, got[2][7]), (6, 63));
    // Back inside: Time Exceeded for the TTL 1, hop limit 1 and TTL 0 packets, none for the
    // ICMP error.
    let back: Vec<Vec<u8>> = a.inside.tx.iter().map(|p| p.bytes().to_vec()).collect();
    assert_eq!(back.len(), 3, "{back:?}");
    for (m, orig) in [(&back[0], &ttl1), (&back[2], &ttl0)] {
        assert!(wire::ipv4_header_ok(m));
        assert_eq!((m[9], m[20], m[21]), (wire::proto::ICMP, 11, 0));
        assert_eq!(wire::checksum(&m[20..]), 0);
        assert_eq!(&m[16..20], &[198, 51, 100, 1], "to the sender");
        assert_eq!(&m[28..], &orig[..28], "quotes the packet: header + 8 bytes");
    }
    let v6 = &back[1];
    assert_eq!(
        (v6[0] >> 4, v6[6], v6[40], v6[41]),
        (6, wire::proto::ICMPV6, 3, 0)
    );
    let acc = wire::pseudo_sum(&v6[8..24], &v6[24..40], wire::proto::ICMPV6, v6.len() - 40);
    assert_eq!(wire::csum_fold(wire::csum_add(acc, &v6[40..])), 0);
    let r = a.report(true);
    let out: u64 = r
        .sas
        .iter()
        .map(|s| s.counters.dropped(DropReason::TtlExceeded))
        .sum();
    assert_eq!(out, 4);
    assert_eq!(r.sas.iter().map(|s| s.counters.icmp_sent).sum::<u64>(), 3);
}

/// The gateway's own tunnel address (`SetLocalAddr`): decrypted packets for it go to the
/// control thread's queue, not the inside port (other packets of the tunnel still do);
/// `Transmit` encrypts a packet of the control thread's on the tunnel whatever the
/// selectors, and the peer opens it. Without an outbound SA, `Transmit` counts `no_sa`; a
/// full queue counts `local_full`.
#[test]
fn local_address_traffic_goes_to_the_control_thread_and_back() {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let (mut a, ha, mut b, hb) = gateways(Impair::default());
    install(&ha, &hb, suite, 1, 0x101, false, false);
    // B -> A on the same tunnel number, other SPI.
    install(&hb, &ha, suite, 1, 0x201, false, false);
    let q: engine::runtime::LocalQueue = Arc::new(crossbeam_queue::ArrayQueue::new(2));
    b.to_local = Some(q.clone());
    hb.send(Command::SetLocalAddr {
        tunnel: 1,
        addr: Some(tunnel_dst(1)),
    });
    for k in 0..2 {
        a.inside
            .rx
            .push_back(PacketBuf::from_slice(&flow_packet(1, k, 100)));
    }
    pump(&mut a, &mut b, 4);
    assert_eq!(q.len(), 2);
    assert!(
        b.inside.tx.is_empty(),
        "nothing for the local address reaches the inside port"
    );
    let (t, p) = q.pop().unwrap();
    assert_eq!((t, flow_of(p.bytes())), (1, (1, 0)));
    // The queue holds one more; a third packet finds it full (after the second was taken).
    a.inside
        .rx
        .push_back(PacketBuf::from_slice(&flow_packet(1, 2, 100)));
    a.inside
        .rx
        .push_back(PacketBuf::from_slice(&flow_packet(1, 3, 100)));
    pump(&mut a, &mut b, 4);
    assert_eq!(b.report(false).total.dropped(DropReason::LocalFull), 1);
    assert_eq!(b.report(false).total.local_in, 3);
    // Another address of the tunnel goes inside as before.
    hb.send(Command::SetLocalAddr {
        tunnel: 1,
        addr: Some(Ipv4Addr::new(169, 254, 10, 1)),
    });
    a.inside
        .rx
        .push_back(PacketBuf::from_slice(&flow_packet(1, 4, 100)));
    pump(&mut a, &mut b, 4);
    assert_eq!(b.inside.tx.len(), 1);
    // B's control thread answers on tunnel 1: A decrypts it to its inside port, although no
    // selector of B's routes the packet's destination.
    let mut reply = udp4(80, false, 9, 9);
    reply[16..20].copy_from_slice(&[198, 51, 100, 77]);
    wire::ipv4_fix_checksum(&mut reply);
    hb.send(Command::Transmit {
        tunnel: 1,
        packet: PacketBuf::from_slice(&reply),
    });
    pump(&mut a, &mut b, 4);
    let got: Vec<Vec<u8>> = a.inside.tx.iter().map(|p| p.bytes().to_vec()).collect();
    assert_eq!(got, vec![reply.clone()]);
    assert_eq!(b.report(false).total.local_out, 1);
    // No outbound SA for tunnel 7: dropped and counted.
    hb.send(Command::Transmit {
        tunnel: 7,
        packet: PacketBuf::from_slice(&reply),
    });
    pump(&mut a, &mut b, 2);
    assert_eq!(b.report(false).total.dropped(DropReason::NoSa), 1);
}

/// Dynamic (BGP) routes: a prefix on two tunnels is equal-cost, flows spread over both and
/// each flow stays on one; a tunnel that goes down leaves the other; a new set withdraws the
/// old routes; a longer static selector still wins.
#[test]
fn dynamic_routes_are_ecmp_per_flow_and_replaced_as_a_set() {
    let suite = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
    let (mut a, ha, mut b, hb) = gateways(Impair::default());
    install(&ha, &hb, suite, 1, 0x101, false, false);
    install(&ha, &hb, suite, 2, 0x102, false, false);
    let net = |a: [u8; 4], p: u8| Selector {
        addr: IpAddr::V4(Ipv4Addr::from(a)),
        prefix: p,
    };
    ha.send(Command::SetDynamicRoutes {
        routes: vec![(net([198, 51, 100, 0], 24), vec![1, 2])],
    });
    pump(&mut a, &mut b, 2);
    let flow = |sport: u16| {
        let mut p = udp4(100, false, sport, 3);
        p[16..20].copy_from_slice(&[198, 51, 100, 7]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        wire::ipv4_fix_checksum(&mut p);
        p
    };
    let mut on = [0; 3];
    for sport in 0..64u16 {
        let t = a.route_of(&flow(sport)).expect("routed");
        assert_eq!(a.route_of(&flow(sport)), Some(t), "one flow, one tunnel");
        on[t as usize] += 1;
        a.inside.rx.push_back(PacketBuf::from_slice(&flow(sport)));
    }
    assert!(on[1] >= 16 && on[2] >= 16, "spread {on:?}");
    pump(&mut a, &mut b, 8);
    assert_eq!(b.inside.tx.len(), 64, "every packet delivered");
    // Tunnel 1 down: everything on tunnel 2.
    ha.send(Command::SetTunnelState {
        tunnel: 1,
        up: false,
    });
    pump(&mut a, &mut b, 2);
    assert!((0..64).all(|s| a.route_of(&flow(s)) == Some(2)));
    // A longer static selector wins over the dynamic /24.
    assert_eq!(
        a.route_of(&flow_packet(1, 0, 100)),
        None,
        "tunnel 1 is down"
    );
    // A new set without the prefix withdraws it.
    ha.send(Command::SetDynamicRoutes {
        routes: vec![(net([203, 0, 113, 0], 24), vec![2])],
    });
    pump(&mut a, &mut b, 2);
    assert_eq!(a.route_of(&flow(1)), None);
    a.inside.rx.push_back(PacketBuf::from_slice(&flow(1)));
    pump(&mut a, &mut b, 2);
    assert_eq!(a.report(false).total.dropped(DropReason::NoSa), 1);
}
