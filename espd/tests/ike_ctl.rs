//! The IKE shell of `espd run` (`espd::ike_ctl`): two instances on loopback addresses with
//! real UDP sockets and a fake clock, for each DPD action. Needs root (port 500): the tests
//! are `#[ignore]`d with that reason, and the test command runs them as root.

use engine::io::mem_link;
use engine::pkt::BufPool;
use engine::runtime::{Worker, WorkerConfig};
use engine::workers::WorkerSet;
use espd::config;
use espd::ike_ctl::IkeCtl;

fn fill(b: &mut [u8]) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(37) ^ 0x5a;
    }
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn side(me: &str, peer: &str, startup: &str, action: &str) -> config::Config {
    side_with(me, peer, startup, action, "")
}

/// [`side`] with more options for tunnel `t1` (TOML lines).
fn side_with(me: &str, peer: &str, startup: &str, action: &str, extra: &str) -> config::Config {
    let text = format!(
        r#"
[[tunnel]]
name = "t1"
connection = "c"
outside_ip = "{me}"
peer_ip = "{peer}"
ike_versions = ["ikev2"]
startup_action = "{startup}"
dpd_timeout_s = 30
dpd_timeout_action = "{action}"
phase1_dh_groups = [19]
pre_shared_key = "lab.tunnel_one"
{extra}

[[tunnel]]
name = "t2"
connection = "c"
outside_ip = "{me}"
ike_versions = ["ikev2"]
pre_shared_key = "lab.tunnel_two"
"#
    );
    config::parse(&text, "t.toml", &mut fill).unwrap()
}

/// The tunnels of a configuration with their indexes (1, 2, ...), as `espd run` numbers them.
fn indexed(c: &config::Config) -> Vec<(u32, &config::Tunnel)> {
    c.tunnels
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u32 + 1, t))
        .collect()
}

/// A worker handle whose commands are queued (the worker is kept, not run).
fn handle() -> (Worker<engine::io::MemPort, engine::io::MemPort>, WorkerSet) {
    let (a, b) = mem_link(16, Default::default());
    let (w, h) = Worker::new(WorkerConfig::default(), a, b, BufPool::new(16, 2048));
    (w, WorkerSet::new(vec![h]))
}

struct Run {
    a_logs: Vec<String>,
    b_logs: Vec<String>,
}

/// Establishes, silences B at t=20 s, runs A to t=80 s; with `revive`, B answers again from
/// t=80 s to t=100 s.
fn dpd_run(net: u8, action: &str, revive: bool) -> Run {
    let (ia, ib) = (format!("127.0.{net}.1"), format!("127.0.{net}.2"));
    let ca = side(&ia, &ib, "start", action);
    let cb = side(&ib, &ia, "add", "clear");
    let ta = indexed(&ca);
    let tb = indexed(&cb);
    let backend = engine::crypto::Backend::RustCrypto;
    let mut a = IkeCtl::new(&ta, backend, None, 0.0).unwrap();
    let mut b = IkeCtl::new(&tb, backend, None, 0.0).unwrap();
    let (_wa, ha) = handle();
    let (_wb, hb) = handle();
    let mut r = Run {
        a_logs: vec![],
        b_logs: vec![],
    };
    let mut now = 0.0;
    let end = if revive { 110.0 } else { 80.0 };
    while now < end {
        let b_alive = now < 20.0 || (revive && now >= 80.0);
        for (_, st, l) in a.poll(now, &ha) {
            let (p1, p2) = (st.0.name(), st.1.name());
            r.a_logs.push(format!("{now:.1} p1={p1} p2={p2} {l}"));
        }
        // Real sockets: give the datagram a moment to arrive.
        std::thread::sleep(std::time::Duration::from_micros(300));
        if b_alive {
            for (_, _, l) in b.poll(now, &hb) {
                r.b_logs.push(format!("{now:.1} {l}"));
            }
            std::thread::sleep(std::time::Duration::from_micros(300));
        } else {
            // A dead peer: whatever A sends is dropped.
            b.drain();
        }
        now += 0.1;
    }
    r
}

fn at(logs: &[String], needle: &str) -> Option<f64> {
    logs.iter()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn dpd_clear_none_and_restart() {
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    // clear: the peer goes quiet at 20 s; it is declared dead 30 s after the last packet
    // from it (its last answer to a liveness check, sent every 10 s of silence: 10-20 s).
    let r = dpd_run(61, "clear", false);
    let all = r.a_logs.join("\n");
    assert!(
        at(&r.a_logs, "CHILD_SA established").is_some_and(|t| t < 5.0),
        "{all}"
    );
    let dead = at(&r.a_logs, "AWS tunnel DPD timed out after").expect(&all);
    assert!((40.0..=51.0).contains(&dead), "dead at {dead}: {all}");
    assert!(
        all.contains("DPD action clear: SAs deleted, tunnel DOWN"),
        "{all}"
    );
    assert!(at(&r.a_logs, "Initiating IKE_SA_INIT").is_some_and(|t| t < 1.0));
    // The records' phase states (log spec section 2.4).
    for (event, states) in [
        ("Initiating IKE_SA_INIT", "p1=Negotiating p2=Negotiating"),
        ("CHILD_SA established", "p1=Established p2=Established"),
        ("AWS tunnel DPD timed out after", "p1=Down p2=Down"),
        ("DPD action clear", "p1=Down p2=Down"),
    ] {
        assert!(
            r.a_logs
                .iter()
                .any(|l| l.contains(event) && l.contains(states)),
            "{event}: {states}: {all}"
        );
    }
    assert_eq!(
        all.matches("Initiating IKE_SA_INIT").count(),
        1,
        "clear does not restart: {all}"
    );
    // none: dead is logged and nothing else happens: the CHILD_SAs stay in the data plane,
    // even when the unanswered liveness check ends the IKE SA.
    let r = dpd_run(62, "none", false);
    let all = r.a_logs.join("\n");
    assert!(
        at(&r.a_logs, "AWS tunnel DPD timed out after").is_some(),
        "{all}"
    );
    assert!(
        !all.contains("DPD action clear") && !all.contains("DPD action restart"),
        "{all}"
    );
    assert!(!all.contains("tunnel DOWN"), "{all}");
    assert!(all.contains("DPD action none: CHILD_SAs kept"), "{all}");
    assert!(
        r.a_logs
            .iter()
            .filter(|l| l.contains("AWS tunnel DPD timed out") || l.contains("CHILD_SAs kept"))
            .all(|l| l.contains("p2=Established")),
        "{all}"
    );
    // restart: a new IKE SA is started at once and retried until the peer is back.
    let r = dpd_run(63, "restart", true);
    let all = r.a_logs.join("\n");
    let dead = at(&r.a_logs, "DPD action restart").expect(&all);
    let back = r
        .a_logs
        .iter()
        .filter(|l| l.contains("CHILD_SA established"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .find(|t| *t > dead)
        .expect(&all);
    assert!(
        (80.0..=95.0).contains(&back),
        "re-established at {back}: {all}"
    );
    assert!(
        all.matches("Initiating IKE_SA_INIT").count() >= 3,
        "retried while the peer was away: {all}"
    );
}

/// The shell's own rekeys come from its timers, at the AWS formula's times (lifetime -
/// margin - uniform(0, margin * fuzz / 100), counted from the SA's establishment): A's
/// CHILD_SA rekeys each fall in their window after the previous CHILD_SA, and its IKE SA
/// rekey in its window. B has the longest lifetimes, so its own timers never fire first.
/// Three hours of fake time in 1 s steps.
#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn rekey_timers_fire_inside_the_aws_window() {
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    let (ia, ib) = ("127.0.66.1", "127.0.66.2");
    // Windows: CHILD_SA 900 - 120 - [0, 60] = [720, 780] s; IKE SA 3600 - 120 - [0, 60].
    let short = "phase1_lifetime_s = 3600\nphase2_lifetime_s = 900\nrekey_margin_s = 120\nrekey_fuzz_pct = 50";
    let long = "phase1_lifetime_s = 28800\nphase2_lifetime_s = 3600\nrekey_margin_s = 60";
    let (ca, cb) = (
        side_with(ia, ib, "start", "clear", short),
        side_with(ib, ia, "add", "clear", long),
    );
    let (ta, tb) = (indexed(&ca), indexed(&cb));
    let backend = engine::crypto::Backend::RustCrypto;
    let mut a = IkeCtl::new(&ta, backend, None, 0.0).unwrap();
    let mut b = IkeCtl::new(&tb, backend, None, 0.0).unwrap();
    let (_wa, ha) = handle();
    let (_wb, hb) = handle();
    let mut logs = vec![];
    let (mut now, end) = (0.0f64, 3.0 * 3600.0);
    while now < end {
        for (_, _, l) in a.poll(now, &ha) {
            logs.push((now, format!("A {l}")));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        for (_, _, l) in b.poll(now, &hb) {
            logs.push((now, format!("B {l}")));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        // Ten steps of 0.1 s after a send (retransmits and answers), else 1 s.
        now += if logs.last().is_some_and(|(t, _)| now - t < 1.0) {
            0.1
        } else {
            1.0
        };
    }
    let all: Vec<String> = logs.iter().map(|(t, l)| format!("{t:.1} {l}")).collect();
    let all = all.join("\n");
    let times = |needle: &str| -> Vec<f64> {
        logs.iter()
            .filter(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
            .collect()
    };
    let children = times("A CHILD_SA established");
    let child_req = times("A AWS tunnel is sending request (id=");
    let ike_rekeyed = times("A IKE SA rekeyed");
    assert!(children.len() >= 12, "{} CHILD_SAs: {all}", children.len());
    assert!(
        !all.contains("B AWS tunnel is sending request"),
        "B never rekeys: {all}"
    );
    // Each CHILD_SA rekey request: 720..780 s after the CHILD_SA it replaces (IKE SA rekeys
    // carry their own request lines, told apart by the suffix).
    let mut prev = children[0];
    let mut k = 0;
    for (t, l) in &logs {
        if l.starts_with("A AWS tunnel is sending request (id=")
            && l.ends_with("for CREATE_CHILD_SA")
        {
            let age = t - prev;
            assert!(
                (719.0..=781.5).contains(&age),
                "CHILD_SA rekey {age:.1} s after the SA at {t}: {all}"
            );
            k += 1;
        }
        if l.starts_with("A CHILD_SA established") {
            prev = *t;
        }
    }
    assert!(k >= 12 && child_req.len() > k, "{k} CHILD_SA rekeys: {all}");
    // The IKE SA: established by 1 s, rekeyed 3420..3480 s later, then again after that.
    assert!(ike_rekeyed.len() >= 2, "{all}");
    let first = ike_rekeyed[0];
    assert!(
        (3419.0..=3482.0).contains(&first),
        "IKE SA rekeyed at {first}: {all}"
    );
    let second = ike_rekeyed[1] - first;
    assert!(
        (3419.0..=3482.0).contains(&second),
        "then {second} s later: {all}"
    );
    let st = &a.stats()[0].1;
    assert_eq!(st.rekeys[1][1], 0, "CHILD_SA rekeys all A's: {all}");
    assert_eq!(st.rekeys[0], [ike_rekeyed.len() as u64, 0], "{all}");
    assert_eq!((st.phase1, st.phase2), ("Established", "Established"));
}

/// What no IKE SA takes is counted by reason (the gateway's `espd_ike_dropped_total`), and a
/// tunnel's snapshot starts with its phases Down and nothing counted.
#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn datagrams_no_sa_takes_are_counted() {
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    let c = side("127.0.64.1", "127.0.64.2", "add", "clear");
    let t = indexed(&c);
    let mut a = IkeCtl::new(&t, engine::crypto::Backend::RustCrypto, None, 0.0).unwrap();
    let (_w, h) = handle();
    let s = std::net::UdpSocket::bind("127.0.64.3:0").unwrap();
    // Too short for a header; then a well-formed INFORMATIONAL request for SPIs nobody has.
    s.send_to(b"short", "127.0.64.1:500").unwrap();
    let mut hdr = vec![0u8; 28];
    hdr[7] = 1;
    hdr[15] = 2;
    hdr[17] = 0x20;
    hdr[18] = 37;
    hdr[19] = 0x08;
    hdr[27] = 28;
    s.send_to(&hdr, "127.0.64.1:500").unwrap();
    // On 4500 without the non-ESP marker it is not IKE (ESP or a keepalive): not counted.
    s.send_to(&hdr, "127.0.64.1:4500").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(a.poll(1.0, &h).is_empty());
    let k = a.counters;
    assert_eq!(
        (
            k.datagrams,
            k.malformed,
            k.unknown_spi,
            k.no_tunnel,
            k.cookies_sent
        ),
        (2, 1, 1, 0, 0),
        "{k:?}"
    );
    let st = a.stats();
    assert_eq!(st.len(), 2);
    let (_, t1) = &st[0];
    assert_eq!((t1.phase1, t1.phase2), ("Down", "Down"));
    assert_eq!(
        (
            t1.rekeys,
            t1.collisions,
            t1.dpd_timeouts,
            t1.messages_dropped
        ),
        ([[0; 2]; 2], 0, 0, 0)
    );
    assert_eq!(t1.dpd_action, "clear");
}

/// A datagram for tunnel `t1` of `side`'s peer: an IKE_SA_INIT request from a fresh IKE SA
/// (as an attacker who copies the peer's address would send it).
fn spoofed_init(me: &str, peer: &str, seed: u8) -> Vec<u8> {
    let c = side(me, peer, "add", "clear");
    let t = &c.tunnels[0];
    let cfg = ike::session::Config {
        local_addr: me.parse().unwrap(),
        peer_addr: peer.parse().unwrap(),
        psk: zeroize::Zeroizing::new(b"not the key".to_vec()),
        p1_enc: t.phase1_encryption.clone(),
        p1_integ: t.phase1_integrity.clone(),
        p1_dh: t.phase1_dh_groups.clone(),
        p2_enc: t.phase2_encryption.clone(),
        p2_integ: t.phase2_integrity.clone(),
        p2_dh: vec![],
        local_ts: ike::msg::TrafficSelector::any(false),
        remote_ts: ike::msg::TrafficSelector::any(false),
        force_nat_t: false,
        retransmits: 0,
        retransmit_base_s: 1.0,
    };
    let mut n = seed;
    let mut rng = move |b: &mut [u8]| {
        for x in b {
            n = n.wrapping_mul(31).wrapping_add(7);
            *x = n;
        }
    };
    let (_, out) = ike::session::IkeSa::initiate(cfg, 0.0, &mut rng).unwrap();
    match out.into_iter().next() {
        Some(ike::session::Output::Send { data, .. }) => data,
        o => panic!("{o:?}"),
    }
}

/// Spoofed datagrams at a live tunnel: IKE_SA_INIT requests from the peer's address (kept
/// aside as half-open SAs, cookies asked for past two from one source, never replacing the
/// live SA), and a datagram with the live SA's SPIs that does not authenticate, from another
/// port (the peer's port does not float to it, its liveness is not refreshed by it). The
/// tunnel stays up on the same IKE SA, with liveness checks answered, for a minute.
#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn spoofed_ike_datagrams_change_nothing_of_a_live_tunnel() {
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    let (ia, ib) = ("127.0.65.1", "127.0.65.2");
    let (ca, cb) = (side(ia, ib, "start", "clear"), side(ib, ia, "add", "clear"));
    let (ta, tb) = (indexed(&ca), indexed(&cb));
    let backend = engine::crypto::Backend::RustCrypto;
    let mut a = IkeCtl::new(&ta, backend, None, 0.0).unwrap();
    let mut b = IkeCtl::new(&tb, backend, None, 0.0).unwrap();
    // The responder answers IKE_SA_INIT from its DH thread, as espd run does.
    b.offload_dh(1).unwrap();
    let (_wa, ha) = handle();
    let (_wb, hb) = handle();
    let spoof = std::net::UdpSocket::bind(format!("{ib}:0")).unwrap();
    let (mut logs, mut spis) = (vec![], None);
    let mut now = 0.0;
    while now < 80.0 {
        if (4.95..5.05).contains(&now) {
            spis = a.stats()[0].1.spis;
            let (si, sr) = spis.expect("established by 5 s");
            for k in 0..6 {
                spoof
                    .send_to(&spoofed_init(ib, ia, k), format!("{ia}:500"))
                    .unwrap();
            }
            // The live SA's SPIs, an SK payload that does not authenticate, on 4500.
            let mut d = vec![0u8; 4];
            d.extend_from_slice(&si.to_be_bytes());
            d.extend_from_slice(&sr.to_be_bytes());
            d.extend_from_slice(&[46, 0x20, 37, 0x20, 0, 0, 0, 9, 0, 0, 0, 100]);
            d.extend_from_slice(&[0, 0, 0, 72]);
            d.extend_from_slice(&[0x5a; 68]);
            spoof.send_to(&d, format!("{ia}:4500")).unwrap();
        }
        if (5.45..5.55).contains(&now) {
            // A CHILD_SA rekey right after: its request must go to the peer, not to the
            // port the forged datagram came from.
            a.rekey_now(1, false, now);
        }
        for (_, _, l) in a.poll(now, &ha) {
            logs.push(format!("{now:.1} A {l}"));
        }
        std::thread::sleep(std::time::Duration::from_micros(300));
        for (_, _, l) in b.poll(now, &hb) {
            logs.push(format!("{now:.1} B {l}"));
        }
        std::thread::sleep(std::time::Duration::from_micros(300));
        now += 0.1;
    }
    let all = logs.join("\n");
    assert!(!all.contains("DPD timed out"), "{all}");
    let rekeyed = logs
        .iter()
        .filter(|l| l.contains(" A CHILD_SA established"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .any(|t| (5.4..6.5).contains(&t));
    assert!(
        rekeyed,
        "the rekey right after the forgery went through: {all}"
    );
    let st = &a.stats()[0].1;
    assert_eq!(
        (st.phase1, st.phase2),
        ("Established", "Established"),
        "{all}"
    );
    assert_eq!(st.spis, spis, "the live IKE SA was not replaced: {all}");
    assert!(st.messages_dropped >= 1, "the forged datagram was dropped");
    let k = a.counters;
    assert!(
        k.cookies_sent >= 4,
        "a cookie past two half-open SAs from one source: {k:?}"
    );
    assert!(
        all.contains("deleting un-established Phase 1 IKE_SA with cgw: 127.0.65.2"),
        "the half-open SAs expired: {all}"
    );
}

/// A customer gateway played by `ike::v1` over a real UDP socket: it answers our new
/// main modes (our phase 1 rekey) with a new ISAKMP SA that adopts its old one once up.
struct Cgw {
    sa: ike::v1::Isakmp,
    newer: Option<ike::v1::Isakmp>,
    cfg: ike::session::Config,
    sock: std::net::UdpSocket,
    to: String,
    rng: ike::seeded::Fill,
    children: u32,
}

impl Cgw {
    fn send(&self, out: &[ike::session::Output]) {
        for o in out {
            if let ike::session::Output::Send { data, .. } = o {
                self.sock.send_to(data, &self.to).unwrap();
            }
        }
    }

    fn take(&mut self, out: Vec<ike::session::Output>) {
        self.children += out
            .iter()
            .filter(|o| matches!(o, ike::session::Output::ChildUp(_)))
            .count() as u32;
        self.send(&out);
    }

    /// Reads and answers everything waiting (drops it when `silent`), runs the timers.
    fn step(&mut self, now: f64, silent: bool) {
        use ike::session::State;
        let life = ike::v1::Lifetimes::default();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            if silent || n < 28 {
                continue;
            }
            let d = buf[..n].to_vec();
            let ci = u64::from_be_bytes(d[0..8].try_into().unwrap());
            let cr = u64::from_be_bytes(d[8..16].try_into().unwrap());
            let out = if self.sa.owns(ci, cr) {
                self.sa.handle(&d, now, &mut self.rng)
            } else if let Some(nw) = self.newer.as_mut().filter(|x| x.owns(ci, cr)) {
                let out = nw.handle(&d, now, &mut self.rng);
                if nw.state() == State::Established {
                    // Our phase 1 rekey (the IPsec SAs move over), or our new main mode after
                    // a DPD restart (INITIAL-CONTACT: the old ones are stale).
                    let nw = self.newer.take().unwrap();
                    let old = std::mem::replace(&mut self.sa, nw);
                    let _stale = self.sa.adopt(old, now);
                }
                out
            } else {
                let (nw, out) =
                    ike::v1::Isakmp::respond(self.cfg.clone(), life, &d, now, &mut self.rng);
                self.newer = nw;
                out
            };
            self.take(out);
        }
        if !silent {
            let out = self.sa.handle_timeout(now, &mut self.rng);
            self.take(out);
        }
    }
}

/// An IKEv1-only tunnel `t1` (DPD timeout 30 s, `action`) on `me`, its shell, and the CGW
/// on `peer` (played by `ike::v1`) that has sent main mode message 1.
fn v1_setup(me: &str, peer: &str, action: &str) -> (IkeCtl, Cgw) {
    use ike::v1::{Isakmp, Lifetimes};
    let text = format!(
        r#"
[[tunnel]]
name = "t1"
connection = "c"
outside_ip = "{me}"
peer_ip = "{peer}"
ike_versions = ["ikev1"]
dpd_timeout_s = 30
dpd_timeout_action = "{action}"
phase2_dh_groups = [14]
pre_shared_key = "lab.tunnel_one"

[[tunnel]]
name = "t2"
connection = "c"
outside_ip = "{me}"
ike_versions = ["ikev1"]
pre_shared_key = "lab.tunnel_two"
"#
    );
    let c = config::parse(&text, "t.toml", &mut fill).unwrap();
    let b = IkeCtl::new(&indexed(&c), engine::crypto::Backend::RustCrypto, None, 0.0).unwrap();
    let cfg = ike::session::Config {
        local_addr: peer.parse().unwrap(),
        peer_addr: me.parse().unwrap(),
        psk: zeroize::Zeroizing::new(b"lab.tunnel_one".to_vec()),
        p1_enc: vec!["AES256".into()],
        p1_integ: vec!["SHA2-256".into()],
        p1_dh: vec![14],
        p2_enc: vec!["AES128-GCM-16".into()],
        p2_integ: vec![],
        p2_dh: vec![14],
        local_ts: ike::msg::TrafficSelector::any(false),
        remote_ts: ike::msg::TrafficSelector::any(false),
        force_nat_t: false,
        retransmits: 3,
        retransmit_base_s: 1.0,
    };
    let sock = std::net::UdpSocket::bind(format!("{peer}:500")).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut rng = Box::new(ike::seeded::rng(42));
    let (sa, out) = Isakmp::initiate(cfg.clone(), Lifetimes::default(), 0.0, &mut rng).unwrap();
    let g = Cgw {
        sa,
        newer: None,
        cfg,
        sock,
        to: format!("{me}:500"),
        rng,
        children: 0,
    };
    g.send(&out);
    (b, g)
}

/// Runs the shell and the CGW for `secs` of fake time (the CGW drops everything when
/// `silent`); returns every log line so far.
fn v1_run(
    b: &mut IkeCtl,
    g: &mut Cgw,
    h: &WorkerSet,
    now: &mut f64,
    secs: f64,
    silent: bool,
    logs: &mut Vec<String>,
) -> String {
    let end = *now + secs;
    while *now < end {
        for (_, _, l) in b.poll(*now, h) {
            logs.push(format!("{now:.1} {l}"));
        }
        std::thread::sleep(std::time::Duration::from_micros(300));
        g.step(*now, silent);
        std::thread::sleep(std::time::Duration::from_micros(300));
        *now += 0.1;
    }
    logs.join("\n")
}

/// DPD actions `none`, `clear` and `restart` on an IKEv1 tunnel: the IKEv1 wording; `none`
/// keeps the IPsec SA; `clear` deletes it and starts nothing; `restart` starts an IKEv1 main mode (the tunnel allows only IKEv1), and
/// again every 5 s after one gives up, until the CGW answers again and the tunnel is back
/// with a new IPsec SA.
#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn ikev1_dpd_none_clear_and_restart() {
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    for (net, action) in [(70, "none"), (71, "restart"), (73, "clear")] {
        let (me, peer) = (format!("127.0.{net}.1"), format!("127.0.{net}.2"));
        let (mut b, mut g) = v1_setup(&me, &peer, action);
        let (_w, h) = handle();
        let (mut now, mut logs) = (0.0, vec![]);
        let l = v1_run(&mut b, &mut g, &h, &mut now, 2.0, false, &mut logs);
        assert!(l.contains("CHILD_SA established"), "{action}: {l}");
        let l = v1_run(&mut b, &mut g, &h, &mut now, 45.0, true, &mut logs);
        assert!(
            l.contains("Peer is not responsive - Declaring peer dead"),
            "{action}: {l}"
        );
        assert!(!l.contains("DPD timed out after"), "{action}: {l}");
        if action == "none" {
            assert_eq!(b.stats()[0].1.phase2, "Established", "{l}");
            continue;
        }
        if action == "clear" {
            assert!(
                l.contains("DPD action clear: SAs deleted, tunnel DOWN"),
                "{l}"
            );
            // The CGW answers again: clear does not start anything of its own.
            let l = v1_run(&mut b, &mut g, &h, &mut now, 30.0, false, &mut logs);
            assert!(!l.contains("Initiating IKEv1 Main Mode"), "{l}");
            assert_eq!(l.matches("CHILD_SA established").count(), 1, "{l}");
            let st = b.stats();
            assert_eq!((st[0].1.phase1, st[0].1.phase2), ("Down", "Down"), "{l}");
            continue;
        }
        assert!(l.contains("Initiating IKEv1 Main Mode"), "{l}");
        // The CGW answers again after espd's main mode gave up once: the restart is retried.
        let l = v1_run(&mut b, &mut g, &h, &mut now, 30.0, false, &mut logs);
        assert!(l.contains("Main Mode (phase 1) timed out"), "{l}");
        assert_eq!(l.matches("CHILD_SA established").count(), 2, "{l}");
        let st = b.stats();
        assert_eq!(
            (st[0].1.phase1, st[0].1.phase2),
            ("Established", "Established"),
            "{l}"
        );
        assert_eq!(g.children, 2, "{l}");
    }
}

/// An IKEv1-only tunnel in the shell, the customer gateway played by `ike::v1` ([`Cgw`]):
/// main mode and quick mode from the CGW, the CGW's phase 1 rekey (a new main mode the
/// shell adopts: the IPsec SA stays), our phase 2 and phase 1 rekeys (`espd rekey`), an
/// IKEv2 datagram ignored with a log line, then a silent CGW and the IKEv1 DPD line.
#[test]
#[ignore = "needs root (UDP port 500); the test command runs it as root"]
fn ikev1_tunnel_in_the_shell() {
    use ike::session::State;
    assert!(
        root(),
        "needs root (UDP port 500): run as root, or without --include-ignored"
    );
    let peer = "127.0.72.2";
    let (mut b, mut g) = v1_setup("127.0.72.1", peer, "clear");
    let (_w, h) = handle();
    let (mut now, mut logs) = (0.0, vec![]);
    let mut run = |b: &mut IkeCtl, g: &mut Cgw, now: &mut f64, secs: f64, silent: bool| {
        v1_run(b, g, &h, now, secs, silent, &mut logs)
    };
    let l = run(&mut b, &mut g, &mut now, 2.0, false);
    assert!(l.contains("IKE SA established (IKEv1, DH group 14)"), "{l}");
    assert!(l.contains("CHILD_SA established: ESP AES128-GCM-16"), "{l}");
    assert_eq!(g.children, 1);
    assert_eq!(g.sa.state(), State::Established);
    let st = b.stats();
    assert_eq!(
        (st[0].1.phase1, st[0].1.phase2),
        ("Established", "Established")
    );

    // The CGW rekeys phase 1: a new main mode; the shell's new ISAKMP SA adopts the IPsec SA.
    let out = g.sa.rekey_ike(now, &mut g.rng);
    g.send(&out);
    let old_ci = g.sa.ci;
    let l = run(&mut b, &mut g, &mut now, 2.0, false);
    assert_ne!(g.sa.ci, old_ci, "{l}");
    let st = b.stats();
    assert_eq!(st[0].1.rekeys[0], [0, 1], "{l}");
    assert_eq!(st[0].1.phase2, "Established", "{l}");
    assert!(!l.contains("IKE SA closed"), "{l}");

    // Our phase 2 rekey, then our phase 1 rekey (a new main mode from us).
    b.rekey_now(1, false, now);
    let l = run(&mut b, &mut g, &mut now, 3.0, false);
    assert_eq!(g.children, 2, "{l}");
    assert_eq!(b.stats()[0].1.rekeys[1], [1, 0], "{l}");
    b.rekey_now(1, true, now);
    let l = run(&mut b, &mut g, &mut now, 3.0, false);
    assert_eq!(b.stats()[0].1.rekeys[0], [1, 1], "{l}");
    assert!(l.contains("IKEv1 phase 1 rekeyed"), "{l}");
    // The old IPsec SA is deleted 10 s after the rekey; DPD keeps the tunnel up meanwhile.
    let l = run(&mut b, &mut g, &mut now, 20.0, false);
    assert!(l.contains("replaced by its rekey: deleted"), "{l}");
    assert_eq!(b.stats()[0].1.phase2, "Established", "{l}");

    // An IKEv2 IKE_SA_INIT from the CGW's address: the tunnel allows only IKEv1.
    let v2 = spoofed_init(peer, "127.0.72.1", 3);
    g.sock.send_to(&v2, &g.to).unwrap();
    let l = run(&mut b, &mut g, &mut now, 0.5, false);
    assert!(
        l.contains("engine: IKEv2 from 127.0.72.2 ignored: ike_versions does not allow it"),
        "{l}"
    );

    // The CGW goes silent: R-U-THEREs go unanswered, the IKEv1 line, action clear.
    let l = run(&mut b, &mut g, &mut now, 45.0, true);
    assert!(
        l.contains("Peer is not responsive - Declaring peer dead"),
        "{l}"
    );
    assert!(l.contains("DPD action clear"), "{l}");
}
