//! `perf xdp-gateway`: the gateway's forwarding rate on real AF_XDP sockets over veth, with
//! ESP, against a plain AF_XDP forwarder (MAC rewrite, no crypto) measured in the same run
//! on the same veth pairs, as a ratio. Needs root.
//!
//! Topology, in one private network namespace (removed afterwards, even on failure):
//!
//! ```text
//!   generator [xgi] ==veth==> [xwi] worker [xwo] ==veth==> [xgo] sink
//! ```
//!
//! The generator (pktgen-style: prebuilt frames of N flows, a per-flow sequence number in
//! each payload, 64-frame batches) and the sink share core 0; the worker runs on core 1.
//! Both ends of the worker carry the steering XDP program, as in `espd run`. The plain
//! forwarder copies each received frame into a TX frame of the other socket and rewrites
//! the MACs: the least work an AF_XDP forwarder with one UMEM per socket does. The gateway
//! (`engine::runtime::Worker` on `XskPort`s) encrypts with one SA. The sink counts what
//! arrives (plain: per-flow sequence numbers give loss and reordering; ESP: the SA's
//! sequence numbers).

use afxdp::neigh::NeighShared;
use afxdp::xsk::{FRAME_SIZE, XdpDesc, Xsk, XskConfig};
use afxdp::{NextHops, XskPort, if_mac};
use engine::crypto::{Backend, Suite};
use engine::pkt::BufPool;
use engine::runtime::{Command, Selector, Worker, WorkerConfig};
use engine::sa::{Direction, OutboundSa, SaConfig};
use serde_json::json;
use std::net::IpAddr;
use std::process::Command as Proc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use xdp_prog::{Mode, Role, Steering};

const FLOWS: u32 = 64;
const BATCH: usize = 64;

/// Options of one benchmark run.
#[derive(Clone, Debug)]
pub struct Opts {
    pub sizes: Vec<usize>,
    pub duration: f64,
    pub suite: Suite,
    pub backend: Backend,
    pub json: bool,
    pub mode: Mode,
    /// Gateway workers (1: on core 1; more: worker w on core w mod the cores, queue w of
    /// each veth, the tunnels' packets spread over every queue so that handoff carries its
    /// share).
    pub workers: usize,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let o = Proc::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// Creates the namespace and veth pairs, re-runs this binary inside it, removes it.
pub fn outer(args: &[String]) -> i32 {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("perf xdp-gateway: needs root (network namespace, XDP, AF_XDP)");
        return 2;
    }
    let ns = format!("pxb{}", std::process::id());
    // Queues per veth: one per gateway worker (`--workers N` or `--workers=N`).
    let queues = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            a.strip_prefix("--workers=")
                .or_else(|| (a == "--workers").then(|| args.get(i + 1).map(String::as_str))?)
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 64)
        .to_string();
    let cleanup = || {
        let _ = sh(&["ip", "netns", "del", &ns]);
    };
    let setup = || -> Result<(), String> {
        sh(&["ip", "netns", "add", &ns])?;
        for (a, b) in [("xgi", "xwi"), ("xwo", "xgo")] {
            sh(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                a,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                b,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
            ])?;
        }
        for d in ["lo", "xgi", "xwi", "xwo", "xgo"] {
            sh(&["ip", "-n", &ns, "link", "set", d, "up"])?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        cleanup();
        eprintln!("perf xdp-gateway: setting up namespace {ns}: {e}");
        return 2;
    }
    std::thread::sleep(Duration::from_millis(300));
    let exe = std::env::current_exe().expect("own path");
    let st = Proc::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args(args)
        .env("PERF_XDP_INSIDE", "1")
        .status();
    cleanup();
    match st {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("perf xdp-gateway: {e}");
            2
        }
    }
}

/// The inside host of tunnel `t` (its selector, /32): 198.18.(2 + t / 250).(1 + t % 250).
fn tunnel_dst(t: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 18, (2 + t / 250) as u8, (1 + t % 250) as u8)
}

/// Tunnels the rig can address with [`tunnel_dst`].
pub const MAX_TUNNELS: usize = 250 * 250;

/// Builds the UDP frame of `flow` to tunnel `tunnel`'s inside host ([`tunnel_dst`])
/// (sequence number patched per send).
fn frame(size: usize, flow: u32, tunnel: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let ip_len = size.clamp(48, 1500);
    let mut f = vec![0u8; 14 + ip_len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF clear policy on the SA takes care of it
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 1, 1]);
    ip[16..20].copy_from_slice(&tunnel_dst(tunnel).octets());
    engine::wire::ipv4_fix_checksum(&mut ip[..20]);
    let udp_len = ip_len - 20;
    ip[20..22].copy_from_slice(&((1024 + flow) as u16).to_be_bytes());
    ip[22..24].copy_from_slice(&9u16.to_be_bytes());
    ip[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    // UDP checksum 0 (none) for IPv4: the payload changes per packet.
    ip[28..32].copy_from_slice(&flow.to_be_bytes());
    f
}

/// Sequence-number offset of the payload inside a frame (after flow id).
const SEQ_OFF: usize = 14 + 28 + 4;

struct GenStats {
    sent: u64,
    received: u64,
    lost: u64,
    reordered: u64,
    max_esp_seq: u64,
}

/// Generator + sink on one core for `secs`: sends as fast as the TX rings take, counts what
/// the sinks see after a one-second warm-up (rates over the measured window). Flow f goes
/// out on generator socket f mod the sockets (a veth delivers on the RX queue of the TX
/// queue it was sent on, so that is the RX queue it arrives on, as RSS would spread
/// flows); every sink socket is drained.
fn generate(
    gens: &mut [Xsk],
    sinks: &mut [Xsk],
    frames: &[Vec<u8>],
    secs: f64,
    esp: bool,
) -> (GenStats, f64) {
    let mut free: Vec<Vec<u64>> = gens.iter().map(all_frames).collect();
    let mut done = Vec::with_capacity(4096);
    let mut rx = Vec::with_capacity(BATCH);
    let mut refill = Vec::with_capacity(BATCH);
    let mut seq = vec![0u64; frames.len()];
    let mut next_seen = vec![0u64; frames.len()];
    let mut st = GenStats {
        sent: 0,
        received: 0,
        lost: 0,
        reordered: 0,
        max_esp_seq: 0,
    };
    let warm = Duration::from_secs_f64(1.0f64.min(secs / 4.0));
    let t0 = Instant::now();
    let mut measuring = false;
    let (mut sent0, mut rx0, mut tm) = (0u64, 0u64, t0);
    let ng = gens.len();
    let per = frames.len() / ng;
    let mut flow = vec![0usize; ng];
    loop {
        let el = t0.elapsed();
        if !measuring && el >= warm {
            measuring = true;
            sent0 = st.sent;
            rx0 = st.received;
            tm = Instant::now();
        }
        if el.as_secs_f64() >= secs {
            break;
        }
        for (q, gen_xsk) in gens.iter_mut().enumerate() {
            done.clear();
            gen_xsk.complete(&mut done);
            free[q].extend_from_slice(&done);
            let room = gen_xsk.tx_free(BATCH as u32) as usize;
            // This socket's flows: q, q + ng, q + 2 ng, ...
            let k = send_batch(
                gen_xsk,
                &mut free[q],
                room,
                || {
                    let fl = flow[q] * ng + q;
                    flow[q] = (flow[q] + 1) % per;
                    fl
                },
                frames,
                &mut seq,
                None,
            );
            st.sent += k as u64;
        }
        st.received += drain_sinks(sinks, &mut rx, &mut refill, |b| {
            if esp {
                // Outer IPv4 (20) + ESP: SPI (4), sequence number (4).
                if b.len() >= 14 + 28 {
                    let s = u32::from_be_bytes(b[38..42].try_into().unwrap_or_default());
                    st.max_esp_seq = st.max_esp_seq.max(u64::from(s));
                }
            } else if b.len() >= SEQ_OFF + 8 {
                let fl = u32::from_be_bytes(b[42..46].try_into().unwrap_or_default()) as usize;
                let s = u64::from_be_bytes(b[SEQ_OFF..SEQ_OFF + 8].try_into().unwrap_or_default());
                if let Some(nx) = next_seen.get_mut(fl) {
                    if s > *nx + 1 {
                        st.lost += s - *nx - 1;
                    } else if s <= *nx {
                        st.reordered += 1;
                    }
                    *nx = (*nx).max(s);
                }
            }
        });
    }
    let window = tm.elapsed().as_secs_f64();
    // Drain what is still in flight.
    let end = Instant::now();
    while end.elapsed() < Duration::from_millis(300) {
        let got = drain_sinks(sinks, &mut rx, &mut refill, |_| {});
        st.received += got;
        if got == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let measured = (st.received.min(rx0 + (st.sent - sent0)) - rx0) as f64;
    (st, measured / window)
}

fn open_sink(mode: Mode, queues: usize) -> Result<(Steering, Vec<Xsk>), String> {
    let ifi = xdp_prog::ifindex("xgo").map_err(|e| e.to_string())?;
    let st = Steering::attach("xgo", Role::Inside, mode).map_err(|e| e.to_string())?;
    st.add_selector("0.0.0.0".parse().expect("literal"), 0)
        .map_err(|e| e.to_string())?;
    let mut v = vec![];
    for q in 0..queues as u32 {
        let mut x =
            Xsk::open(ifi, q, XskConfig::default()).map_err(|e| format!("xgo queue {q}: {e}"))?;
        x.fill(&all_frames(&x));
        st.add_socket(q, x.fd()).map_err(|e| e.to_string())?;
        v.push(x);
    }
    Ok((st, v))
}

/// Generator sockets on queues 0..n of xgi.
fn open_gens(queues: usize) -> Result<Vec<Xsk>, String> {
    let ifi = xdp_prog::ifindex("xgi").map_err(|e| e.to_string())?;
    (0..queues as u32)
        .map(|q| Xsk::open(ifi, q, XskConfig::default()).map_err(|e| format!("xgi queue {q}: {e}")))
        .collect()
}

/// The plain forwarder: xwi -> copy + MAC rewrite -> xwo, until `stop`.
fn plain_forwarder(
    mut rx: Xsk,
    mut tx: Xsk,
    dst: [u8; 6],
    src: [u8; 6],
    stop: Arc<AtomicBool>,
    fwd: Arc<AtomicU64>,
) {
    core_affinity_set(1);
    let half = rx.frames as u64;
    let all: Vec<u64> = (0..half).map(|i| i * FRAME_SIZE as u64).collect();
    rx.fill(&all);
    let mut free: Vec<u64> = (0..tx.frames as u64)
        .map(|i| i * FRAME_SIZE as u64)
        .collect();
    let (mut descs, mut out, mut done, mut refill) = (
        Vec::with_capacity(BATCH),
        Vec::with_capacity(BATCH),
        Vec::with_capacity(4096),
        Vec::with_capacity(BATCH),
    );
    let mut n_fwd = 0u64;
    while !stop.load(Ordering::Relaxed) {
        done.clear();
        tx.complete(&mut done);
        free.extend_from_slice(&done);
        descs.clear();
        let room = (tx.tx_free(BATCH as u32) as usize)
            .min(free.len())
            .min(BATCH);
        if room == 0 {
            tx.flush();
            continue;
        }
        rx.recv(&mut descs, room);
        out.clear();
        for d in &descs {
            let a = free.pop().expect("room checked");
            let len = d.len as usize;
            let src_bytes = rx.frame(d.addr, len);
            let dst_buf = tx.frame_mut(a);
            dst_buf[..len].copy_from_slice(src_bytes);
            dst_buf[0..6].copy_from_slice(&dst);
            dst_buf[6..12].copy_from_slice(&src);
            out.push(XdpDesc {
                addr: a,
                len: d.len,
                options: 0,
            });
            refill.push(d.addr);
        }
        rx.fill(&refill);
        refill.clear();
        if !out.is_empty() {
            tx.send(&out);
            let mut tries = 0;
            while tx.tx_pending() && tries < 8 {
                tx.flush();
                tries += 1;
            }
            n_fwd += out.len() as u64;
            fwd.store(n_fwd, Ordering::Relaxed);
        }
    }
}

fn core_affinity_set(core: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity on our own
    // thread (pid 0) with its size have no other preconditions.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

struct RunResult {
    mpps: f64,
    sent: u64,
    received: u64,
    lost: u64,
    reordered: u64,
    /// Packets the owner worker took from another worker's ring, over all received.
    handoff_share: f64,
}

fn run_plain(o: &Opts, size: usize) -> Result<RunResult, String> {
    let (_sink_st, mut sinks) = open_sink(o.mode, 1)?;
    let wi_st = Steering::attach("xwi", Role::Inside, o.mode).map_err(|e| e.to_string())?;
    wi_st
        .add_selector("0.0.0.0".parse().expect("literal"), 0)
        .map_err(|e| e.to_string())?;
    let wi = Xsk::open(
        xdp_prog::ifindex("xwi").map_err(|e| e.to_string())?,
        0,
        XskConfig::default(),
    )
    .map_err(|e| format!("xwi: {e}"))?;
    wi_st.add_socket(0, wi.fd()).map_err(|e| e.to_string())?;
    let wo = Xsk::open(
        xdp_prog::ifindex("xwo").map_err(|e| e.to_string())?,
        0,
        XskConfig::default(),
    )
    .map_err(|e| format!("xwo: {e}"))?;
    let mut gens = open_gens(1)?;
    let (go_mac, wo_mac, wi_mac, gi_mac) = macs()?;
    let stop = Arc::new(AtomicBool::new(false));
    let fwd = Arc::new(AtomicU64::new(0));
    let (s2, f2) = (stop.clone(), fwd.clone());
    let t = std::thread::spawn(move || plain_forwarder(wi, wo, go_mac, wo_mac, s2, f2));
    core_affinity_set(0);
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|f| frame(size, f, 0, wi_mac, gi_mac))
        .collect();
    let (st, mpps) = generate(&mut gens, &mut sinks, &frames, o.duration, false);
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    Ok(RunResult {
        mpps: mpps / 1e6,
        sent: st.sent,
        received: st.received,
        // Sent but never seen by the sink (the per-flow sequence numbers agree: `st.lost`
        // counts the gaps, which excludes only the tail still in flight at the end).
        lost: st.sent.saturating_sub(st.received).max(st.lost),
        reordered: st.reordered,
        handoff_share: 0.0,
    })
}

type Mac = [u8; 6];

/// MACs of xgo, xwo, xwi, xgi.
fn macs() -> Result<(Mac, Mac, Mac, Mac), String> {
    let m = |d: &str| if_mac(d).map_err(|e| format!("{d}: {e}"));
    Ok((m("xgo")?, m("xwo")?, m("xwi")?, m("xgi")?))
}

/// The ESP gateway of the rig, running: its workers (tunnel t owned by worker t), the
/// steering programs, and the generator's and sink's sockets, ready for runs and trials.
pub struct EspRig {
    gens: Vec<Xsk>,
    /// Free frames of each generator socket (kept across trials).
    gen_free: Vec<Vec<u64>>,
    sinks: Vec<Xsk>,
    frames: Vec<Vec<u8>>,
    /// Per-flow sequence numbers written into the payloads (kept across trials).
    seq: Vec<u64>,
    set: engine::workers::WorkerSet,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The outbound SAs' configurations: the sampler decrypts with their mirrors.
    sas: Vec<SaConfig>,
    /// ESP in UDP (NAT-T): the ESP header is 8 bytes further into a frame.
    nat_t: bool,
    backend: Backend,
    _steering: [Steering; 3],
}

impl EspRig {
    /// Attaches the programs, opens every socket, starts the workers with `tunnels`
    /// outbound SAs (tunnel t owned by worker t mod the workers; UDP-encapsulated with
    /// `nat_t`), and pins the calling thread (generator and sink) to core 0. The flows'
    /// inner IP sizes cycle through `sizes`.
    pub fn start(o: &Opts, sizes: &[usize], tunnels: usize, nat_t: bool) -> Result<EspRig, String> {
        let n = o.workers;
        if sizes.is_empty() || !(1..=MAX_TUNNELS).contains(&tunnels) {
            return Err(format!("tunnels {tunnels}: allowed 1..={MAX_TUNNELS}"));
        }
        let (sink_st, sinks) = open_sink(o.mode, n)?;
        let wi_st = Steering::attach("xwi", Role::Inside, o.mode).map_err(|e| e.to_string())?;
        let wo_st = Steering::attach("xwo", Role::Outside, o.mode).map_err(|e| e.to_string())?;
        wi_st
            .add_selector("0.0.0.0".parse().expect("literal"), 0)
            .map_err(|e| e.to_string())?;
        let (go_mac, _wo_mac, wi_mac, gi_mac) = macs()?;
        let n_in = NeighShared::new();
        let n_out = NeighShared::new();
        let peer: IpAddr = "198.19.0.2".parse().expect("literal");
        n_out.insert(peer, go_mac);
        let xc = XskConfig::default();
        let ifi = |d: &str| xdp_prog::ifindex(d).map_err(|e| e.to_string());
        let (ifi_wi, ifi_wo) = (ifi("xwi")?, ifi("xwo")?);
        let gens = open_gens(n)?;
        // One worker per queue (as `espd run`: one pool behind them, a handoff mesh when
        // there are several); tunnel t belongs to worker t mod n.
        let shared = engine::pkt::shared_pool(8192 * n, engine::pkt::DEFAULT_CAPACITY);
        let mut meshes = engine::handoff::mesh(n, 1024).into_iter();
        let mut workers = vec![];
        let mut handles = vec![];
        for w in 0..n {
            let q = w as u32;
            let pin = XskPort::open("xwi", ifi_wi, q, xc, NextHops::default(), n_in.clone())
                .map_err(|e| format!("xwi queue {q}: {e}"))?;
            let pout = XskPort::open("xwo", ifi_wo, q, xc, NextHops::default(), n_out.clone())
                .map_err(|e| format!("xwo queue {q}: {e}"))?;
            wi_st.add_socket(q, pin.fd()).map_err(|e| e.to_string())?;
            wo_st.add_socket(q, pout.fd()).map_err(|e| e.to_string())?;
            let wc = WorkerConfig {
                id: w,
                // One worker: core 1 (the generator has core 0). More: core w mod the
                // cores, so worker 0 shares core 0 with the generator on a 2-core machine.
                core: Some(if n == 1 { 1 } else { w % cores() }),
                burst: 64,
                // As `espd run`: forward inner fragments, lower the inner TTL.
                reassemble_inner: false,
                decrement_ttl: true,
                ..Default::default()
            };
            let pool = BufPool::with_shared(shared.clone(), engine::pkt::DEFAULT_CAPACITY);
            let (mut wk, h) = Worker::new(wc, pin, pout, pool);
            if n > 1
                && let Some(m) = meshes.next()
            {
                wk.set_mesh(m);
            }
            workers.push(wk);
            handles.push(h);
        }
        let set = engine::workers::WorkerSet::new(handles);
        let mut sas: Vec<SaConfig> = vec![];
        for t in 0..tunnels {
            let mut cfg = SaConfig::new(
                format!("bench{t}"),
                Direction::Out,
                SPI0 + t as u32,
                o.suite,
                vec![7; o.suite.enc.enc_key_len()],
                vec![9; o.suite.integ.key_len()],
                "198.19.0.1".parse().expect("literal"),
                peer,
            );
            cfg.mss_clamp = false;
            cfg.nat_t = nat_t;
            sas.push(cfg.clone());
            let sa = OutboundSa::new(cfg, o.backend, &[5; 32]).map_err(|e| e.to_string())?;
            set.send(Command::SetOutbound {
                tunnel: t as u32,
                sa: Box::new(sa),
                selectors: vec![Selector {
                    addr: IpAddr::V4(tunnel_dst(t as u32)),
                    prefix: 32,
                }],
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = workers
            .into_iter()
            .map(|w| {
                let s2 = stop.clone();
                std::thread::spawn(move || drop(w.run(s2)))
            })
            .collect();
        set.barrier();
        core_affinity_set(0);
        // Flow f leaves on generator queue f mod n and goes to tunnel (f / n) mod tunnels:
        // every tunnel's packets arrive on every queue, as RSS spreads them. Its size is
        // the next of the pattern after each round of the tunnels, so that every tunnel
        // and every queue gets the whole pattern (whole rounds of it: the flows are sent
        // in turn).
        // Larger packets would be fragmented before encryption, two ESP packets for one:
        // the sink counts ESP packets, so the sizes stop at the tunnel's inner MTU (IMIX's
        // 1500 bytes become 1446 with AES-GCM).
        let mtu = sas[0].inner_mtu();
        let sizes: Vec<usize> = sizes.iter().map(|&z| z.min(mtu)).collect();
        let cycle = n * tunnels * sizes.len();
        let flows = (FLOWS as usize).div_ceil(cycle) * cycle;
        let frames: Vec<Vec<u8>> = (0..flows)
            .map(|f| {
                let t = ((f / n) % tunnels) as u32;
                let size = sizes[(f / n / tunnels) % sizes.len()];
                frame(size, f as u32, t, wi_mac, gi_mac)
            })
            .collect();
        let gen_free = gens.iter().map(all_frames).collect();
        Ok(EspRig {
            gens,
            gen_free,
            sinks,
            seq: vec![0; frames.len()],
            frames,
            set,
            stop,
            threads,
            sas,
            nat_t,
            backend: o.backend,
            _steering: [sink_st, wi_st, wo_st],
        })
    }

    /// Mean inner IP packet size of the flows.
    pub fn mean_inner(&self) -> f64 {
        let total: usize = self.frames.iter().map(|f| f.len() - 14).sum();
        total as f64 / self.frames.len() as f64
    }

    /// Stops the workers: their drops (all reasons) and the share of packets handed over.
    pub fn finish(self) -> (u64, f64) {
        let rep = self.set.report(false);
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        rep.map(|r| {
            let rx = (r.rx_in + r.rx_out).max(1);
            (r.total.total_drops(), r.handoff_in as f64 / rx as f64)
        })
        .unwrap_or((0, 0.0))
    }

    /// One trial of `perf ndr`: the generator offers `rate` packets per second (None: as
    /// fast as its TX rings take them) for `secs`, then the sinks drain until nothing has
    /// arrived for 100 ms. With `latency`, one ESP packet in [`SAMPLE`] is decrypted by the
    /// sink with the SA's keys for the send time the generator wrote into it. Generator and
    /// sink share core 0, one clock.
    pub fn trial(&mut self, rate: Option<f64>, secs: f64, latency: bool) -> TrialResult {
        let epoch = Instant::now();
        let mut sampler = latency.then(|| Sampler::new(&self.sas, self.backend, self.nat_t));
        let mut see = |b: &[u8]| {
            if let Some(s) = sampler.as_mut() {
                s.sample(b, epoch);
            }
        };
        let mut pace = rate.map(|r| (r, 0.0f64, epoch));
        let (mut sent, mut short, mut received) = (0u64, 0u64, 0u64);
        let mut done = Vec::with_capacity(4096);
        let mut rx = Vec::with_capacity(BATCH);
        let mut refill = Vec::with_capacity(BATCH);
        let ng = self.gens.len();
        let per = self.frames.len() / ng;
        let mut flow = vec![0usize; ng];
        let end = Duration::from_secs_f64(secs);
        loop {
            let now = Instant::now();
            let el = now - epoch;
            if el >= end {
                break;
            }
            // Packets due now (as fast as possible: a batch per socket).
            let mut due = usize::MAX;
            if let Some((r, tokens, last)) = pace.as_mut() {
                *tokens += (now - *last).as_secs_f64() * *r;
                *last = now;
                // What the tester could not send before its backlog filled up is short.
                if *tokens > TESTER_BACKLOG {
                    short += (*tokens - TESTER_BACKLOG) as u64;
                    *tokens = TESTER_BACKLOG;
                }
                due = *tokens as usize;
            }
            let ts = el.as_nanos() as u64;
            let sent0 = sent;
            for (q, (g, free)) in self.gens.iter_mut().zip(&mut self.gen_free).enumerate() {
                done.clear();
                g.complete(&mut done);
                free.extend_from_slice(&done);
                // Copy mode sends a few dozen descriptors per kick: keep the ring moving.
                g.flush();
                if due == 0 {
                    continue;
                }
                let room = (g.tx_free(BATCH as u32) as usize).min(BATCH).min(due);
                let fq = &mut flow[q];
                // This socket's flows: q, q + ng, q + 2 ng, ...
                let k = send_batch(
                    g,
                    free,
                    room,
                    || {
                        let fl = *fq * ng + q;
                        *fq = (*fq + 1) % per;
                        fl
                    },
                    &self.frames,
                    &mut self.seq,
                    Some(ts),
                );
                sent += k as u64;
                due -= k;
            }
            if let Some((_, tokens, _)) = pace.as_mut() {
                *tokens -= (sent - sent0) as f64;
            }
            received += drain_sinks(&mut self.sinks, &mut rx, &mut refill, &mut see);
        }
        let duration_s = epoch.elapsed().as_secs_f64();
        // What is still on the generator's TX rings was sent in this trial: push it out
        // now, so that it does not arrive in the next one.
        let t_flush = Instant::now();
        while self.gens.iter().any(Xsk::tx_pending) && t_flush.elapsed() < Duration::from_secs(1) {
            for g in &self.gens {
                g.flush();
            }
        }
        let mut quiet = Instant::now();
        let drain0 = Instant::now();
        while quiet.elapsed() < Duration::from_millis(100)
            && drain0.elapsed() < Duration::from_secs(2)
        {
            let got = drain_sinks(&mut self.sinks, &mut rx, &mut refill, &mut see);
            received += got;
            if got > 0 {
                quiet = Instant::now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // Whatever the generator's TX rings still hold went out meanwhile: take its
        // completions back for the next trial.
        for (g, free) in self.gens.iter_mut().zip(&mut self.gen_free) {
            done.clear();
            g.complete(&mut done);
            free.extend_from_slice(&done);
        }
        TrialResult {
            duration_s,
            sent,
            short,
            received,
            // Every flow is sent in turn: received packets have the flows' mean size.
            inner_bytes: (received as f64 * self.mean_inner()) as u64,
            latency_ns: sampler.map(|s| s.hist),
        }
    }
}

/// What one trial of [`EspRig::trial`] counted.
pub struct TrialResult {
    pub duration_s: f64,
    /// Packets the generator put on the wire.
    pub sent: u64,
    /// Packets due at the trial's rate that the generator could not send (its backlog of
    /// [`TESTER_BACKLOG`] was full): the tester's shortfall, counted as offered and lost.
    pub short: u64,
    /// ESP packets the sink received.
    pub received: u64,
    /// Inner bytes of what was received.
    pub inner_bytes: u64,
    /// Send-to-receive times of the sampled packets.
    pub latency_ns: Option<hdrhistogram::Histogram<u64>>,
}

/// SPI of the rig's tunnel 0 (tunnel t: SPI0 + t).
const SPI0: u32 = 0x4242;
/// One ESP packet in this many (of those the sink receives) is decrypted for its
/// timestamp: the SAs' replay windows take the gaps.
pub const SAMPLE: u64 = 64;
/// Packets a paced generator may fall behind its schedule before the rest is short.
const TESTER_BACKLOG: f64 = 4096.0;

/// Decrypts sampled ESP frames with the mirrors of the rig's outbound SAs and records the
/// time since the generator's send timestamp.
struct Sampler {
    sas: Vec<engine::sa::InboundSa>,
    /// Frames seen (every [`SAMPLE`]th is decrypted).
    seen: u64,
    /// Offset of the ESP header in a frame.
    esp: usize,
    pool: BufPool,
    hist: hdrhistogram::Histogram<u64>,
}

impl Sampler {
    fn new(cfgs: &[SaConfig], backend: Backend, nat_t: bool) -> Sampler {
        Sampler {
            // Ethernet, IPv4 and, with NAT-T, UDP.
            esp: 14 + 20 + if nat_t { 8 } else { 0 },
            seen: 0,
            sas: cfgs
                .iter()
                .filter_map(|c| engine::sa::InboundSa::new(c.mirrored(), backend).ok())
                .collect(),
            pool: BufPool::new(4, engine::pkt::DEFAULT_CAPACITY),
            hist: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid bounds"),
        }
    }

    /// `b`: an Ethernet frame from the sink (outer IPv4, ESP).
    fn sample(&mut self, b: &[u8], epoch: Instant) {
        let esp = self.esp;
        if b.len() < esp + 8 {
            return;
        }
        self.seen += 1;
        if !self.seen.is_multiple_of(SAMPLE) {
            return;
        }
        let spi = u32::from_be_bytes(b[esp..esp + 4].try_into().unwrap_or_default());
        let Some(sa) = self.sas.get_mut(spi.wrapping_sub(SPI0) as usize) else {
            return;
        };
        let mut p = self.pool.get();
        if p.set(&b[esp..]).is_ok() && engine::esp::decapsulate(sa, &mut p).is_ok() {
            // The inner packet: IPv4 (20), UDP (8), flow (4), sequence (8), send time (8).
            let inner = p.bytes();
            // A whole packet (no fragment), as the generator made it.
            if inner.len() >= 48 && inner[6] & 0x3f == 0 && inner[7] == 0 {
                let ts = u64::from_be_bytes(inner[40..48].try_into().unwrap_or_default());
                let now = epoch.elapsed().as_nanos() as u64;
                let _ = self.hist.record(now.saturating_sub(ts).max(1));
            }
        }
        self.pool.put(p);
    }
}

/// Every frame address of a socket's UMEM.
fn all_frames(x: &Xsk) -> Vec<u64> {
    (0..x.frames as u64)
        .map(|i| i * FRAME_SIZE as u64)
        .collect()
}

/// Puts up to `room` frames on `g`'s TX ring: the prebuilt frame of flow `next_flow()`
/// with its next sequence number (and `ts`, the send time in ns, after it). Returns how
/// many went.
fn send_batch(
    g: &mut Xsk,
    free: &mut Vec<u64>,
    room: usize,
    mut next_flow: impl FnMut() -> usize,
    frames: &[Vec<u8>],
    seq: &mut [u64],
    ts: Option<u64>,
) -> usize {
    let mut descs = [XdpDesc::default(); BATCH];
    let mut k = 0;
    while k < room.min(BATCH) {
        let Some(a) = free.pop() else { break };
        let fl = next_flow();
        let f = &frames[fl];
        let buf = g.frame_mut(a);
        buf[..f.len()].copy_from_slice(f);
        seq[fl] += 1;
        buf[SEQ_OFF..SEQ_OFF + 8].copy_from_slice(&seq[fl].to_be_bytes());
        if let Some(ts) = ts {
            buf[SEQ_OFF + 8..SEQ_OFF + 16].copy_from_slice(&ts.to_be_bytes());
        }
        descs[k] = XdpDesc {
            addr: a,
            len: f.len() as u32,
            options: 0,
        };
        k += 1;
    }
    if k > 0 {
        g.send(&descs[..k]);
    }
    k
}

/// Receives what every sink socket holds (up to two batches each), gives each frame to
/// `see`, refills; returns how many arrived.
fn drain_sinks(
    sinks: &mut [Xsk],
    rx: &mut Vec<XdpDesc>,
    refill: &mut Vec<u64>,
    mut see: impl FnMut(&[u8]),
) -> u64 {
    let mut got = 0;
    for sink in sinks.iter_mut() {
        for _ in 0..2 {
            rx.clear();
            let n = sink.recv(rx, BATCH);
            for d in rx.iter() {
                see(sink.frame(d.addr, d.len as usize));
                refill.push(d.addr);
            }
            got += n as u64;
            sink.fill(refill);
            refill.clear();
            if n == 0 {
                break;
            }
        }
    }
    got
}

fn run_esp(o: &Opts, size: usize) -> Result<RunResult, String> {
    let mut rig = EspRig::start(o, &[size], o.workers, false)?;
    let (st, mpps) = generate(&mut rig.gens, &mut rig.sinks, &rig.frames, o.duration, true);
    let (drops, handoff_share) = rig.finish();
    Ok(RunResult {
        mpps: mpps / 1e6,
        sent: st.sent,
        received: st.received,
        // Sent but never seen by the sink, wherever it was lost (XDP->socket ring full,
        // worker drop, handoff ring full, TX ring); `drops` is the workers' own share.
        lost: st.sent.saturating_sub(st.received).max(drops),
        reordered: 0,
        handoff_share,
    })
}

/// Online CPUs (not this thread's affinity: the generator pins itself to core 0).
fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Runs inside the namespace: both modes for every size, prints the table or JSON.
pub fn inner(o: Opts) -> i32 {
    let mut rows = vec![];
    for &size in &o.sizes {
        // Alternate plain / ESP twice and keep each mode's best: the VM's noise is large.
        let mut best: [Option<RunResult>; 2] = [None, None];
        for _round in 0..2 {
            for (i, esp) in [false, true].into_iter().enumerate() {
                let r = if esp {
                    run_esp(&o, size)
                } else {
                    run_plain(&o, size)
                };
                match r {
                    Ok(r) => {
                        if best[i].as_ref().is_none_or(|b| r.mpps > b.mpps) {
                            best[i] = Some(r);
                        }
                    }
                    Err(e) => {
                        eprintln!("perf xdp-gateway: {e}");
                        return 2;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let [Some(p), Some(e)] = best else { return 2 };
        rows.push((size, p, e));
    }
    if o.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(size, p, e)| {
                json!({
                    "packet_size": size, "transform": o.suite.to_string(),
                    "plain_mpps": p.mpps, "esp_mpps": e.mpps, "ratio": e.mpps / p.mpps,
                    "plain": {"sent": p.sent, "received": p.received, "lost": p.lost, "reordered": p.reordered},
                    "esp": {"sent": e.sent, "received": e.received, "lost": e.lost},
                    "workers": o.workers, "handoff_share": e.handoff_share,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "xdp_gateway": v })).unwrap_or_default()
        );
    } else {
        println!(
            "AF_XDP over veth (copy mode), generator+sink on core 0, {}, {} s per run, best of 2",
            if o.workers == 1 {
                "plain forwarder and gateway worker on core 1".to_string()
            } else {
                format!(
                    "plain forwarder on core 1, {} gateway workers on cores 0..{} (queue w -> worker w; every tunnel's packets on every queue)",
                    o.workers,
                    o.workers.min(cores()) - 1
                )
            },
            o.duration
        );
        println!(
            "{:>6} {:>12} {:>12} {:>8}   transform",
            "size", "plain Mpps", "ESP Mpps", "ratio"
        );
        for (size, p, e) in &rows {
            println!(
                "{:>6} {:>12.3} {:>12.3} {:>7.0}%   {} (plain lost {}, ESP lost {}{})",
                size,
                p.mpps,
                e.mpps,
                100.0 * e.mpps / p.mpps,
                o.suite,
                p.lost,
                e.lost,
                if o.workers > 1 {
                    format!(", handed over {:.0}%", 100.0 * e.handoff_share)
                } else {
                    String::new()
                }
            );
        }
    }
    0
}
