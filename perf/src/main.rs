//! `perf`: the traffic generator and benchmark rig.
//!
//! - `perf loopback`: generator -> gateway A encrypts -> in-memory link -> gateway B decrypts
//!   -> sink verifies every packet (content, order per flow) and measures latency. No NIC,
//!   no root. The README's main job.
//! - `perf oneway --direction encrypt|decrypt`: one worker, prebuilt packets replayed from
//!   memory with one copy per packet into a pool buffer (as a NIC would), output dropped.
//! - `perf crypto`: the raw seal/open rate of every transform and backend.
//! - `perf ike`: IKE SAs established per second, or N tunnels rekeyed over simulated hours.
//! - `perf xdp-gateway` (cargo feature `xdp`, root): the gateway on AF_XDP over veth pairs
//!   against a plain AF_XDP forwarder. Off by default, so the main job builds without clang
//!   or libelf.
//!
//! Each run measures the raw crypto of its transform in the same process first, as the
//! baseline, and reports the ratio.

mod ikebench;
mod ndr;
mod report;
mod secgw;
mod stress;
mod traffic;
#[cfg(feature = "xdp")]
mod xdpbench;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use engine::counters::{Counters, DropReason};
use engine::crypto::{Backend, CryptoOp, Encryption, Integrity, Suite, new_transform};
use engine::io::{Impair, mem_link};
use engine::pkt::{BufPool, PacketBuf, shared_pool};
use engine::runtime::{Command, Selector, Worker, WorkerConfig, WorkerHandle, WorkerReport};
use engine::sa::{Direction, InboundSa, OutboundSa, SaConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use traffic::{Generator, Null, Replay, Sink, tunnel_dst};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "perf", about = "espd benchmark rig")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Debug, ClapArgs)]
struct Common {
    /// Transform: the `encryption` name, or `encryption+integrity` (aes128-gcm16, aes256-cbc+sha256-128, ...).
    #[arg(long, default_value = "aes128-gcm16")]
    transform: String,
    /// Inner IP packet size in bytes, or `imix` (7:4:1 of 64/570/1518-byte frames).
    #[arg(long, default_value = "1400")]
    packet_size: String,
    /// Number of tunnels (SA pairs), 1..100000.
    #[arg(long, default_value_t = 1)]
    tunnels: u32,
    /// Workers per gateway.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Packets per second offered in total (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    json: bool,
    /// Crypto backend: auto | rustcrypto | ipsec-mb.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// UDP-encapsulate ESP (NAT-T).
    #[arg(long)]
    nat_t: bool,
    /// Outer (tunnel) addresses are IPv6.
    #[arg(long)]
    ipv6_outer: bool,
    /// Packets per receive burst.
    #[arg(long, default_value_t = 64)]
    burst: usize,
    /// Serve Prometheus metrics (AWS TunnelState / TunnelDataIn / TunnelDataOut ...) on this
    /// address, e.g. 127.0.0.1:9100 (loopback only; off by default).
    #[arg(long)]
    metrics: Option<String>,
    /// Keep serving metrics this many seconds after the traffic stopped.
    #[arg(long, default_value_t = 0.0)]
    metrics_linger: f64,
    /// Every packet takes the handoff ring on the encrypting side, as when RSS puts a
    /// tunnel's packets on another worker's queue. loopback: worker i's generator makes the
    /// packets of the tunnels worker i+1 owns (needs --workers 2 or more); oneway (encrypt):
    /// worker 0 replays and hands everything to worker 1, which encrypts.
    #[arg(long)]
    handoff: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PipelineArg {
    Loopback,
    Oneway,
    /// The gateway on AF_XDP sockets over veth in a private namespace (root, `xdp` feature).
    XdpGateway,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DirectionArg {
    Encrypt,
    Decrypt,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole pipeline in memory: generator, encrypting gateway, link, decrypting gateway, sink.
    Loopback(Common),
    /// RFC 2544 throughput search: NDR (no loss) and PDR (loss at most --pdr-loss) of the
    /// loopback pipeline by binary search on the offered rate, each verified; then latency at
    /// 10, 50 and 90 % of the NDR.
    Ndr {
        #[command(flatten)]
        common: Common,
        /// Seconds per trial.
        #[arg(long, default_value_t = 2.0)]
        trial_duration: f64,
        /// Search trials at most (warm-up, verification and latency trials not counted).
        #[arg(long, default_value_t = 20)]
        max_trials: usize,
        /// Relative width of [highest pass, lowest failure] at which a search stops.
        #[arg(long, default_value_t = 0.02)]
        precision: f64,
        /// Loss ratio a PDR trial may have.
        #[arg(long, default_value_t = 0.005)]
        pdr_loss: f64,
        /// Seconds of the warm-up trial (as fast as possible; it starts the search).
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// What is measured: the loopback pipeline, one worker in one direction, or the
        /// gateway on AF_XDP over veth (root; a generator and a sink of ours on core 0).
        #[arg(long, value_enum, default_value = "loopback")]
        pipeline: PipelineArg,
        /// xdp-gateway: native | generic | auto.
        #[arg(long, default_value = "generic")]
        xdp_mode: String,
        /// oneway: the direction.
        #[arg(long, value_enum, default_value = "encrypt")]
        direction: DirectionArg,
        /// oneway: distinct prebuilt packets replayed.
        #[arg(long, default_value_t = 16384)]
        packets: usize,
    },
    /// One worker, one direction, prebuilt packets replayed from memory.
    Oneway {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "encrypt")]
        direction: DirectionArg,
        /// Distinct prebuilt packets replayed (the working set: match another harness's,
        /// e.g. DPDK ipsec-secgw's mbuf pool), 1..=1048576.
        #[arg(long, default_value_t = 16384)]
        packets: usize,
        /// Also write the working set and a matching DPDK `ipsec-secgw` configuration into
        /// this directory (packets.pcap, secgw.cfg, secgw-cpu.cfg), for perf/secgw/compare.py.
        #[arg(long)]
        export_secgw: Option<std::path::PathBuf>,
    },
    /// Gateway forwarding rate on AF_XDP over veth (root): ESP vs a plain AF_XDP forwarder,
    /// same run, same veth pairs, as a ratio.
    XdpGateway {
        /// Inner IP packet sizes, comma-separated.
        #[arg(long, default_value = "64,1400")]
        packet_size: String,
        /// Seconds per measured run (each mode runs twice per size).
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
        #[arg(long, default_value = "aes128-gcm16")]
        transform: String,
        #[arg(long, default_value = "auto")]
        backend: String,
        /// native | generic | auto
        #[arg(long, default_value = "generic")]
        xdp_mode: String,
        /// Gateway workers, one per veth queue (1..=64); with 2 or more every tunnel's
        /// packets arrive on every queue and the handoff carries the share of the others.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        json: bool,
    },
    /// IKE SAs established per second per core (both peers in this process), or with
    /// --scale N: N tunnels established and rekeyed over simulated hours, memory per tunnel.
    Ike {
        /// DH groups to measure, comma-separated.
        #[arg(long, default_value = "19,14")]
        groups: String,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Number of tunnels for the scale test (0: measure the rate instead).
        #[arg(long, default_value_t = 0)]
        scale: usize,
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// IKE version of the rate: 2, or 1 (IKEv1 main + quick mode, shown beside IKEv2).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        version: u8,
        #[arg(long)]
        json: bool,
    },
    /// Raw seal/open rate of every transform and backend (bursts of 32, one core).
    Crypto {
        #[arg(long, default_value_t = 1400)]
        size: usize,
        #[arg(long, default_value_t = 200)]
        ms: u64,
        #[arg(long)]
        only: Option<String>,
        /// One JSON object on stdout (rows of transform, backend, seal/open Mpps and Gbps).
        #[arg(long)]
        json: bool,
    },
    /// Emulates many customer gateways against a device under test: IKEv2 tunnels (PSK,
    /// forced NAT-T) from --local addresses to --dut, then UDP traffic through every tunnel
    /// to a sink of ours on the DUT's inside network; setup rate, failures by reason, rekeys
    /// survived, per-tunnel loss and latency (or, with --ndr, the NDR through the DUT).
    Stress {
        /// The DUT's outside (IKE) address.
        #[arg(long)]
        dut: Ipv4Addr,
        /// The emulated gateways' outside addresses: a list, `a.b.c.d+N` for N consecutive
        /// ones; tunnel i uses address i modulo their number.
        #[arg(long)]
        local: String,
        /// Tunnels (IKE SAs with one CHILD_SA each).
        #[arg(long, default_value_t = 1)]
        tunnels: usize,
        /// Pre-shared key of every tunnel.
        #[arg(long)]
        psk: String,
        /// Phase 1: encryption, integrity, DH group (AWS names).
        #[arg(long, default_value = "AES128")]
        p1_enc: String,
        #[arg(long, default_value = "SHA2-256")]
        p1_integ: String,
        #[arg(long, default_value = "19")]
        p1_dh: String,
        /// Phase 2 DH groups accepted for PFS in the DUT's CHILD_SA rekeys (AWS's default set).
        #[arg(long, default_value = "2,5,14,15,16,17,18,19,20,21,22,23,24")]
        p2_dh: String,
        /// Phase 2 encryption and integrity (none for GCM).
        #[arg(long, default_value = "AES128-GCM-16")]
        p2_enc: String,
        #[arg(long, default_value = "")]
        p2_integ: String,
        /// The gateways' inside network (traffic selector, packet sources).
        #[arg(long, default_value = "10.2.0.0/16")]
        cgw_net: String,
        /// The DUT's inside network (traffic selector).
        #[arg(long, default_value = "10.1.0.0/24")]
        dut_net: String,
        /// Where the decrypted packets go: our UDP sink on the DUT's inside network.
        #[arg(long)]
        sink: SocketAddrV4,
        /// Network namespace (`ip netns` name) the sink runs in.
        #[arg(long)]
        sink_netns: Option<String>,
        /// Packets per second over all tunnels (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Inner IP packet bytes.
        #[arg(long, default_value_t = 512)]
        packet_size: usize,
        /// IKE SAs being set up at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds to wait for every tunnel to come up.
        #[arg(long, default_value_t = 60.0)]
        setup_timeout: f64,
        /// Search the NDR through the DUT instead of one rate (trials of --trial-duration).
        #[arg(long)]
        ndr: bool,
        #[arg(long, default_value_t = 2.0)]
        trial_duration: f64,
        #[arg(long, default_value_t = 12)]
        max_trials: usize,
        #[arg(long, default_value_t = 0.05)]
        precision: f64,
        /// Crypto backend of our ESP: auto | rustcrypto | ipsec-mb.
        #[arg(long, default_value = "auto")]
        backend: String,
        #[arg(long)]
        json: bool,
    },
    /// Turns result files of ndr, loopback, oneway and crypto (--json) into DIR/index.html:
    /// a table of the runs side by side and SVG plots (self-contained, no network).
    Report {
        /// Result files (one JSON object each, or one per line).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Output directory (made if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn fail(msg: String) -> ! {
    eprintln!("perf: {msg}");
    std::process::exit(2);
}

fn parse_suite(s: &str) -> Suite {
    let (e, i) = s.split_once('+').unwrap_or((s, "none"));
    let enc: Encryption = e
        .parse()
        .unwrap_or_else(|m: String| fail(format!("--transform: {m}")));
    let integ: Integrity = i
        .parse()
        .unwrap_or_else(|m: String| fail(format!("--transform: {m}")));
    Suite::new(enc, integ).unwrap_or_else(|m| fail(format!("--transform {s:?}: {m}")))
}

struct Setup {
    suite: Suite,
    size: Option<usize>,
    backend: Backend,
    tunnels: u32,
    workers: usize,
}

fn setup(c: &Common) -> Setup {
    let suite = parse_suite(&c.transform);
    let size = match c.packet_size.as_str() {
        "imix" => None,
        n => Some(
            n.parse::<usize>()
                .ok()
                .filter(|n| (traffic::MIN_PACKET..=1500).contains(n))
                .unwrap_or_else(|| {
                    fail(format!(
                        "--packet-size {n:?}: allowed: {}..=1500 or imix",
                        traffic::MIN_PACKET
                    ))
                }),
        ),
    };
    let backend: Backend = c
        .backend
        .parse()
        .unwrap_or_else(|m: String| fail(format!("--backend: {m}")));
    if !backend.available() {
        fail(format!(
            "--backend {}: not available on this machine",
            backend.name()
        ));
    }
    if !(1..=100_000).contains(&c.tunnels) {
        fail(format!("--tunnels {}: allowed: 1..=100000", c.tunnels));
    }
    if !(1..=64).contains(&c.workers) {
        fail(format!("--workers {}: allowed: 1..=64", c.workers));
    }
    if c.duration <= 0.0 || c.duration > 86_400.0 {
        fail(format!(
            "--duration {}: allowed: more than 0, up to 86400 seconds",
            c.duration
        ));
    }
    Setup {
        suite,
        size,
        backend,
        tunnels: c.tunnels,
        workers: c.workers,
    }
}

/// Tunnel endpoints of the benchmark's SAs (IPv4 outer): the encrypting gateway, its peer.
const OUTER_V4: (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
    std::net::Ipv4Addr::new(192, 0, 2, 1),
    std::net::Ipv4Addr::new(192, 0, 2, 2),
);

/// SPI of tunnel `t` (both directions: the benchmark's two gateways share one SA pair).
fn tunnel_spi(t: u32) -> u32 {
    0x1000_0000 + t
}

/// Synthetic encryption and integrity keys of tunnel `t`, distinct per tunnel.
fn tunnel_keys(s: &Setup, t: u32) -> (Vec<u8>, Vec<u8>) {
    let key = |n: usize, salt: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt ^ (t as u8) ^ ((t >> 8) as u8))
            .collect()
    };
    (
        key(s.suite.enc.enc_key_len(), 0x11),
        key(s.suite.integ.key_len(), 0x22),
    )
}

/// SA pair of tunnel `t`: distinct SPI and keys per tunnel.
fn sa_pair(s: &Setup, c: &Common, t: u32) -> (OutboundSa, InboundSa) {
    let (src, dst): (IpAddr, IpAddr) = if c.ipv6_outer {
        (
            "2001:db8::a".parse().unwrap(),
            "2001:db8::b".parse().unwrap(),
        )
    } else {
        (IpAddr::V4(OUTER_V4.0), IpAddr::V4(OUTER_V4.1))
    };
    let (enc_key, auth_key) = tunnel_keys(s, t);
    let mut cfg = SaConfig::new(
        format!("t{t}"),
        Direction::Out,
        tunnel_spi(t),
        s.suite,
        enc_key,
        auth_key,
        src,
        dst,
    );
    cfg.nat_t = c.nat_t;
    let ic = cfg.mirrored();
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u32 ^ t) as u8);
    (
        OutboundSa::new(cfg, s.backend, &seed).unwrap_or_else(|e| fail(e.to_string())),
        InboundSa::new(ic, s.backend).unwrap_or_else(|e| fail(e.to_string())),
    )
}

/// Raw seal rate (packets/s) of the transform on one core at this size: the baseline.
fn baseline_mpps(s: &Setup, decrypt: bool) -> f64 {
    let sizes = traffic::size_pattern(s.size);
    let t = new_transform(
        s.backend,
        s.suite,
        &vec![7; s.suite.enc.enc_key_len()],
        &vec![9; s.suite.integ.key_len()],
    )
    .expect("keys");
    let mk = |inner: usize| {
        let ct = (inner + 2).div_ceil(s.suite.block()) * s.suite.block();
        vec![0u8; 8 + s.suite.iv_len() + ct + s.suite.icv_len()]
    };
    let templates: Vec<Vec<u8>> = (0..32).map(|i| mk(sizes[i % sizes.len()])).collect();
    let mut sealed = templates.clone();
    {
        let mut ops: Vec<CryptoOp<'_>> = sealed
            .iter_mut()
            .map(|b| CryptoOp {
                esp: b,
                seq_hi: None,
                ok: false,
            })
            .collect();
        t.seal_burst(&mut ops);
    }
    let src = if decrypt { &sealed } else { &templates };
    let mut bufs = src.clone();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        for _ in 0..8 {
            for (b, s) in bufs.iter_mut().zip(src) {
                b.copy_from_slice(s);
            }
            let mut ops: smallvec::SmallVec<[CryptoOp<'_>; 32]> = bufs
                .iter_mut()
                .map(|b| CryptoOp {
                    esp: b,
                    seq_hi: None,
                    ok: false,
                })
                .collect();
            if decrypt {
                t.open_burst(&mut ops);
            } else {
                t.seal_burst(&mut ops);
            }
            n += 32;
        }
    }
    n as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn drops_json(
    c: &Counters,
    extra: &[(&str, u64)],
) -> (u64, serde_json::Map<String, serde_json::Value>) {
    let mut m = serde_json::Map::new();
    let mut total = 0;
    for r in DropReason::ALL {
        let n = c.dropped(*r);
        if n > 0 {
            m.insert(r.name().into(), n.into());
            total += n;
        }
    }
    for (k, v) in extra {
        if *v > 0 {
            m.insert((*k).into(), (*v).into());
            total += v;
        }
    }
    (total, m)
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let us = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    serde_json::json!({"p50": us(0.5), "p99": us(0.99), "p999": us(0.999), "max": if h.is_empty() {0.0} else {h.max() as f64 / 1000.0}})
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn loopback(c: Common) {
    let s = setup(&c);
    if c.handoff && s.workers < 2 {
        fail("--handoff needs --workers 2 or more (one worker has no one to hand to)".into());
    }
    let base = baseline_mpps(&s, false);
    let v = loopback_run(&c, &s, base, !c.json);
    let w = s.workers;
    let mpps = v["mpps"].as_f64().unwrap_or(0.0);
    let elapsed = v["duration_s"].as_f64().unwrap_or(0.0);
    let f = |k: &str| v[k].as_u64().unwrap_or(0);
    let (tx, rx, lost, drops) = (f("tx_packets"), f("rx_packets"), f("lost"), f("drops"));
    let (handed, handoff_drops) = (f("handoff_packets"), f("handoff_drops"));
    let per = |k: &str| -> Vec<f64> {
        v["per_core_mpps"][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| (x.as_f64().unwrap_or(0.0) * 1000.0).round() / 1000.0)
                    .collect()
            })
            .unwrap_or_default()
    };
    let ratio = v["ratio_to_baseline"].as_f64().unwrap_or(0.0);
    if c.json {
        println!("{v}");
    } else {
        let l = &v["latency_us"];
        println!(
            "{} {} bytes x {} tunnel(s), {} worker(s)/gateway: {:.3} Mpps, {:.2} Gbps inner, {:.2} Gbps wire over {:.1} s",
            s.suite,
            c.packet_size,
            s.tunnels,
            w,
            mpps,
            v["gbps_inner"].as_f64().unwrap_or(0.0),
            v["gbps_wire"].as_f64().unwrap_or(0.0),
            elapsed
        );
        if c.handoff {
            println!(
                "  handoff: {handed} packets ({:.0}% of those encrypted), {handoff_drops} dropped (ring full)",
                100.0 * v["handoff_share"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "  per core: encrypt {:?} Mpps, decrypt {:?} Mpps",
            per("encrypt"),
            per("decrypt")
        );
        println!(
            "  packets: generated {tx}, delivered {rx}, lost {lost}; drops {drops} {}",
            serde_json::Value::Object(
                v["drops_by_reason"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            )
        );
        println!(
            "  latency us: p50 {} p99 {} p99.9 {} max {}",
            l["p50"], l["p99"], l["p999"], l["max"]
        );
        println!(
            "  raw crypto baseline (same process, one core): {:.3} Mpps seal; pipeline = {:.0}% of the encrypting cores' raw crypto",
            base,
            ratio * 100.0
        );
    }
    if drops > 0 || lost > 0 {
        std::process::exit(1);
    }
}

/// The xdp-gateway rig of `perf ndr` (nothing without the `xdp` feature).
#[cfg(feature = "xdp")]
type XdpRig = xdpbench::EspRig;
#[cfg(not(feature = "xdp"))]
struct XdpRig;

/// Checks the flags `perf ndr --pipeline xdp-gateway` takes, enters its namespace (this
/// binary again, inside it: the process exits with that run's status) and, inside, starts
/// the rig.
#[cfg(feature = "xdp")]
fn xdp_rig(c: &Common, s: &Setup, xdp_mode: &str) -> XdpRig {
    // IMIX: the loopback's pattern (IP packets of 48, 552 and 1500 bytes, 7:4:1).
    let sizes = traffic::size_pattern(s.size);
    let tunnels = (s.tunnels as usize).max(s.workers);
    if tunnels > xdpbench::MAX_TUNNELS {
        fail(format!(
            "--tunnels {}: xdp-gateway allows 1..={}",
            c.tunnels,
            xdpbench::MAX_TUNNELS
        ));
    }
    for (set, flag) in [
        (c.ipv6_outer, "--ipv6-outer"),
        (c.handoff, "--handoff"),
        (c.metrics.is_some(), "--metrics"),
    ] {
        if set {
            fail(format!(
                "{flag}: not with --pipeline xdp-gateway (IPv4 outer ESP; with --workers 2 or more every tunnel's packets arrive on every queue and handoff carries its share)"
            ));
        }
    }
    let mode = xdp_mode
        .parse()
        .unwrap_or_else(|e: String| fail(format!("--xdp-mode {e}")));
    if std::env::var_os("PERF_XDP_INSIDE").is_none() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(xdpbench::outer(&args));
    }
    let o = xdpbench::Opts {
        sizes: sizes.clone(),
        duration: 0.0,
        suite: s.suite,
        backend: s.backend,
        json: c.json,
        mode,
        workers: s.workers,
    };
    xdpbench::EspRig::start(&o, &sizes, tunnels, c.nat_t)
        .unwrap_or_else(|e| fail(format!("xdp-gateway: {e}")))
}

#[cfg(not(feature = "xdp"))]
fn xdp_rig(_: &Common, _: &Setup, _: &str) -> XdpRig {
    no_xdp()
}

#[cfg(not(feature = "xdp"))]
fn no_xdp() -> ! {
    fail(
        "--pipeline xdp-gateway: perf was built without its `xdp` feature (clang, libelf-dev): \
         cargo run --release -p perf --features xdp -- ndr --pipeline xdp-gateway"
            .into(),
    )
}

/// One trial over the xdp-gateway rig: what the tester could not send counts as offered
/// and lost; latency from the sampled packets.
#[cfg(feature = "xdp")]
fn xdp_trial(rig: &mut XdpRig, rate: Option<f64>, secs: f64) -> ndr::Outcome {
    // Latency only at a fixed rate (as fast as possible, the queues are full by design).
    let r = rig.trial(rate, secs, rate.is_some());
    ndr::Outcome {
        duration_s: r.duration_s,
        tx_packets: r.sent + r.short,
        rx_packets: r.received,
        rx_bytes: r.inner_bytes,
        latency_us: r.latency_ns.as_ref().map_or_else(
            || percentiles(&hdrhistogram::Histogram::new(3).expect("valid")),
            percentiles,
        ),
        tester_short: r.short,
    }
}

#[cfg(not(feature = "xdp"))]
fn xdp_trial(_: &mut XdpRig, _: Option<f64>, _: f64) -> ndr::Outcome {
    no_xdp()
}

/// `perf ndr`: the search of [`ndr::search`] over trials of the chosen pipeline, with the
/// setup and the machine in the result.
fn ndr_cmd(
    c: Common,
    pipeline: PipelineArg,
    direction: DirectionArg,
    packets: usize,
    xdp_mode: &str,
    o: ndr::Opts,
) {
    let bad = |flag: &str, v: String, allowed: &str| {
        fail(format!("--{flag} {v}: allowed: {allowed}"));
    };
    if !(0.1..=3600.0).contains(&o.trial_s) {
        bad(
            "trial-duration",
            o.trial_s.to_string(),
            "0.1 to 3600 seconds",
        );
    }
    if !(1..=1000).contains(&o.max_trials) {
        bad("max-trials", o.max_trials.to_string(), "1..=1000");
    }
    if !(o.precision > 0.0 && o.precision < 1.0) {
        bad(
            "precision",
            o.precision.to_string(),
            "more than 0, less than 1",
        );
    }
    if !(0.0..1.0).contains(&o.pdr_loss) {
        bad(
            "pdr-loss",
            o.pdr_loss.to_string(),
            "0 up to (not including) 1",
        );
    }
    if !(0.1..=600.0).contains(&o.warmup_s) {
        bad("warmup", o.warmup_s.to_string(), "0.1 to 600 seconds");
    }
    if c.rate.is_some() {
        fail("--rate: perf ndr chooses the rates (see --precision, --max-trials)".into());
    }
    let mut s = setup(&c);
    let oneway = matches!(pipeline, PipelineArg::Oneway);
    let decrypt = oneway && matches!(direction, DirectionArg::Decrypt);
    let mut rig = None;
    if oneway {
        oneway_check(&c, decrypt, packets);
    } else if matches!(pipeline, PipelineArg::XdpGateway) {
        rig = Some(xdp_rig(&c, &s, xdp_mode));
        // The rig has a tunnel for every worker at least.
        s.tunnels = s.tunnels.max(s.workers as u32);
    } else if c.handoff && s.workers < 2 {
        fail("--handoff needs --workers 2 or more (one worker has no one to hand to)".into());
    }
    let base = baseline_mpps(&s, decrypt);
    let pipeline_name = match (pipeline, decrypt) {
        (PipelineArg::Loopback, _) => "loopback",
        (PipelineArg::XdpGateway, _) => "xdp-gateway",
        (PipelineArg::Oneway, false) => "oneway encrypt",
        (PipelineArg::Oneway, true) => "oneway decrypt",
    };
    if !c.json {
        eprintln!(
            "perf ndr: {pipeline_name}, {} {} bytes, {} tunnel(s), {} worker(s) per gateway, backend {}; trials of {} s, precision {}, PDR loss {}",
            s.suite,
            c.packet_size,
            s.tunnels,
            s.workers,
            s.backend.describe(),
            o.trial_s,
            o.precision,
            o.pdr_loss
        );
    }
    let mut trial = |rate: Option<f64>, secs: f64| {
        if let Some(r) = rig.as_mut() {
            return xdp_trial(r, rate, secs);
        }
        let mut cc = c.clone();
        cc.rate = rate;
        cc.duration = secs;
        cc.metrics = None;
        let v = if oneway {
            oneway_run(&cc, &s, decrypt, packets, base, None)
        } else {
            loopback_run(&cc, &s, base, false)
        };
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        ndr::Outcome {
            duration_s: v["duration_s"].as_f64().unwrap_or(secs),
            tx_packets: u("tx_packets"),
            rx_packets: u("rx_packets"),
            rx_bytes: if oneway {
                (v["gbps_inner"].as_f64().unwrap_or(0.0) * 1e9 / 8.0
                    * v["duration_s"].as_f64().unwrap_or(0.0)) as u64
            } else {
                u("inner_bytes_in")
            },
            latency_us: v["latency_us"].clone(),
            // The generator is the DUT's own port here: what it could not take is the
            // ring's rx_missed, the DUT's loss.
            tester_short: 0,
        }
    };
    let quiet = c.json;
    let mut progress = |n: usize, t: &ndr::Trial| {
        if quiet {
            return;
        }
        let r = t
            .rate_pps
            .map_or("max".to_string(), |r| format!("{:.4} Mpps", r / 1e6));
        let l = t.out.loss_ratio();
        eprintln!(
            "  trial {n:2} {:<7} {r:>13} for {:.1} s: tx {} rx {} loss {:.4}%{}",
            t.kind,
            t.out.duration_s,
            t.out.tx_packets,
            t.out.rx_packets,
            100.0 * l,
            if t.kind == "latency" {
                format!(
                    "  latency us p50 {} p99 {} p99.9 {} max {}",
                    t.out.latency_us["p50"],
                    t.out.latency_us["p99"],
                    t.out.latency_us["p999"],
                    t.out.latency_us["max"]
                )
            } else {
                String::new()
            }
        );
    };
    let found = ndr::search(&o, &mut trial, &mut progress);
    #[cfg(feature = "xdp")]
    if let Some(r) = rig {
        r.finish();
    }
    let mut v = found.json(&o);
    let m = v.as_object_mut().expect("an object");
    for (k, x) in [
        ("mode", json_str("ndr")),
        ("pipeline", json_str(pipeline_name)),
        ("transform", json_str(&s.suite.to_string())),
        ("packet_size", json_str(&c.packet_size)),
        ("tunnels", s.tunnels.into()),
        ("workers", s.workers.into()),
        ("nat_t", c.nat_t.into()),
        ("ipv6_outer", c.ipv6_outer.into()),
        ("baseline_crypto_mpps", base.into()),
        ("machine", machine(&s)),
    ] {
        m.insert(k.into(), x);
    }
    if c.json {
        println!("{v}");
    } else {
        println!(
            "{} {} bytes x {} tunnel(s), {} worker(s)/gateway: NDR {:.4} Mpps ({:.2} Gbps inner), PDR ({}% loss) {:.4} Mpps ({:.2} Gbps inner)",
            s.suite,
            c.packet_size,
            s.tunnels,
            s.workers,
            found.ndr_pps / 1e6,
            v["ndr_gbps_inner"].as_f64().unwrap_or(0.0),
            100.0 * o.pdr_loss,
            found.pdr_pps / 1e6,
            v["pdr_gbps_inner"].as_f64().unwrap_or(0.0),
        );
        for (f, t) in &found.latency {
            let l = &t.out.latency_us;
            println!(
                "  latency at {:>3.0}% of NDR: p50 {} p99 {} p99.9 {} max {} us",
                f * 100.0,
                l["p50"],
                l["p99"],
                l["p999"],
                l["max"]
            );
        }
        println!(
            "  {} trials; raw crypto baseline (same process, one core): {base:.3} Mpps seal",
            found.trials.len()
        );
    }
}

fn json_str(s: &str) -> serde_json::Value {
    serde_json::Value::String(s.to_string())
}

/// The machine a result was measured on: CPU model and the flags that change the crypto's
/// speed, cores, kernel, crypto backend, and the commit perf was built from.
fn machine(s: &Setup) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let has: Vec<&str> = [
        "aes",
        "avx2",
        "avx512f",
        "vaes",
        "vpclmulqdq",
        "sha_ni",
        "gfni",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .collect();
    serde_json::json!({
        "cpu_model": field("model name"),
        "cpu_flags": has,
        "cores": cores(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|k| k.trim().to_string()),
        "backend": s.backend.name(),
        "backend_detail": s.backend.describe(),
        "commit": option_env!("PERF_COMMIT").unwrap_or("unknown"),
    })
}

/// One loopback run (the workers, SAs and threads made for it, then ended): its result
/// object (the `perf loopback --json` keys, `latency_hist_us` besides). `progress`: a
/// line on stderr every second.
fn loopback_run(c: &Common, s: &Setup, base: f64, progress: bool) -> serde_json::Value {
    let w = s.workers;
    let mut meshes_a = engine::handoff::mesh(w, 1024).into_iter();
    let ncpu = cores();
    let epoch = Instant::now();
    let mut handles: Vec<(WorkerHandle, WorkerHandle)> = vec![];
    let mut gen_go = vec![];
    let mut generated = vec![];
    let mut missed = vec![];
    let mut delivered = vec![];
    let mut threads_a = vec![];
    let mut threads_b = vec![];
    let stop = Arc::new(AtomicBool::new(false));
    let mut link_stats = vec![];
    let mut workers_a = vec![];
    let mut workers_b = vec![];
    for i in 0..w {
        // Worker i's generator: its own tunnels, or (--handoff) those of worker i+1.
        let feeds = if c.handoff { (i + 1) % w } else { i };
        let owned: Vec<u32> = (0..s.tunnels)
            .filter(|t| *t as usize % w == feeds)
            .collect();
        let rate = c.rate.map(|r| r / w as f64);
        let g = Generator::new(owned, s.size, rate, epoch);
        gen_go.push(g.go.clone());
        generated.push(g.generated.clone());
        missed.push(g.missed.clone());
        let sink = Sink::new(s.tunnels as usize, epoch);
        delivered.push(sink.delivered.clone());
        let (la, lb) = mem_link(4096, Impair::default());
        link_stats.push(la.stats.clone());
        let shared = shared_pool(16384, 2048);
        let mk = |id: usize, core: usize| WorkerConfig {
            id,
            core: Some(core % ncpu),
            burst: c.burst,
            ..Default::default()
        };
        let (mut a, ha) = Worker::new(
            mk(i, 2 * i),
            g,
            la,
            BufPool::with_shared(shared.clone(), 2048),
        );
        let (mut b, hb) = Worker::new(
            mk(w + i, 2 * i + 1),
            sink,
            lb,
            BufPool::with_shared(shared, 2048),
        );
        a.set_epoch(epoch);
        b.set_epoch(epoch);
        if let Some(m) = meshes_a.next().filter(|_| c.handoff) {
            a.set_mesh(m);
        }
        handles.push((ha, hb));
        workers_a.push(a);
        workers_b.push(b);
    }
    // Install the SAs (on the owner worker of each tunnel: t % w, as `WorkerSet` does;
    // with --handoff the other encrypting workers learn who owns each tunnel), then start.
    let set_a = engine::workers::WorkerSet::new(handles.iter().map(|h| h.0.clone()).collect());
    for t in 0..s.tunnels {
        let (o, i) = sa_pair(s, c, t);
        let (ha, hb) = &handles[t as usize % w];
        let (o, i) = (o, i);
        hb.send(Command::AddInbound {
            tunnel: t,
            sa: Box::new(i),
        });
        let out = Command::SetOutbound {
            tunnel: t,
            sa: Box::new(o),
            selectors: vec![Selector::host(IpAddr::V4(tunnel_dst(t)))],
        };
        if c.handoff {
            set_a.send(out);
        } else {
            ha.send(out);
        }
    }
    for a in workers_a.drain(..) {
        let st = stop.clone();
        threads_a.push(std::thread::spawn(move || a.run(st)));
    }
    for b in workers_b.drain(..) {
        let st = stop.clone();
        threads_b.push(std::thread::spawn(move || b.run(st)));
    }
    for (ha, hb) in &handles {
        ha.barrier();
        hb.barrier();
    }
    let metrics_server = c.metrics.as_ref().map(|addr| {
        let hs = handles.clone();
        let snapshot = Arc::new(move || {
            let mut tunnels: std::collections::BTreeMap<u32, telemetry::metrics::TunnelSnapshot> =
                Default::default();
            for (ha, hb) in &hs {
                for (t, cnt) in ha.report(true).map(|r| r.per_tunnel).unwrap_or_default() {
                    let e = tunnels.entry(t).or_default();
                    e.out = cnt.out;
                    e.up = true;
                }
                for (t, cnt) in hb.report(true).map(|r| r.per_tunnel).unwrap_or_default() {
                    tunnels.entry(t).or_default().inb = cnt.inb;
                }
            }
            let snaps: Vec<_> = tunnels
                .into_iter()
                .map(|(t, mut snap)| {
                    snap.vpn_id = format!("vpn-loopback-{}", t / 2);
                    snap.tunnel_ip = "192.0.2.1".into();
                    snap.name = format!("t{t}");
                    snap.dpd_enabled = true;
                    snap
                })
                .collect();
            telemetry::metrics::render(&snaps)
        });
        let srv = telemetry::http::serve(addr, telemetry::serve::Limits::default(), snapshot)
            .unwrap_or_else(|e| fail(format!("--metrics {addr}: {e}")));
        if progress {
            eprintln!("metrics on http://{}/metrics", srv.addr);
        }
        srv
    });
    if progress {
        eprintln!(
            "perf loopback: {} {} bytes, {} tunnel(s), {} worker(s) per gateway, {}, backend {}",
            s.suite,
            c.packet_size,
            s.tunnels,
            w,
            c.rate
                .map_or("as fast as possible".to_string(), |r| format!(
                    "{r} pps offered"
                )),
            s.backend.describe()
        );
    }
    let t0 = Instant::now();
    for g in &gen_go {
        g.store(true, Ordering::Relaxed);
    }
    let sum = |v: &Vec<Arc<std::sync::atomic::AtomicU64>>| {
        v.iter().map(|x| x.load(Ordering::Relaxed)).sum::<u64>()
    };
    let mut last = (0u64, t0);
    while t0.elapsed().as_secs_f64() < c.duration {
        std::thread::sleep(Duration::from_millis(250).min(Duration::from_secs_f64(
            (c.duration - t0.elapsed().as_secs_f64()).max(0.0),
        )));
        if progress && last.1.elapsed() >= Duration::from_secs(1) {
            let d = sum(&delivered);
            let dt = last.1.elapsed().as_secs_f64();
            eprint!(
                "\r  {:5.1}s  {:7.3} Mpps delivered  generated {}  delivered {}   ",
                t0.elapsed().as_secs_f64(),
                (d - last.0) as f64 / dt / 1e6,
                sum(&generated),
                d
            );
            last = (d, Instant::now());
        }
    }
    for g in &gen_go {
        g.store(false, Ordering::Relaxed);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Drain: wait until every generated packet was delivered (or stops moving).
    let mut prev = (sum(&delivered), Instant::now());
    while sum(&delivered) < sum(&generated) && prev.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(5));
        let d = sum(&delivered);
        if d != prev.0 {
            prev = (d, Instant::now());
        }
    }
    if progress {
        eprintln!();
    }
    if metrics_server.is_some() && c.metrics_linger > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(c.metrics_linger));
    }
    drop(metrics_server);
    let reports_a: Vec<WorkerReport> = handles
        .iter()
        .map(|(ha, _)| ha.report(false).expect("worker"))
        .collect();
    let reports_b: Vec<WorkerReport> = handles
        .iter()
        .map(|(_, hb)| hb.report(false).expect("worker"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let sinks: Vec<Sink> = threads_b
        .into_iter()
        .map(|t| t.join().expect("worker B").inside)
        .collect();
    for t in threads_a {
        let _ = t.join();
    }
    // What the tester offered: what entered the gateway, and what its receive ring missed.
    let rx_missed = sum(&missed);
    let tx = sum(&generated) + rx_missed;
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut rx = 0;
    let mut rx_bytes = 0;
    let (mut bad, mut gaps, mut dups) = (0, 0, 0);
    for k in &sinks {
        hist.add(&k.latency_ns).expect("same bounds");
        rx += k.stats.packets;
        rx_bytes += k.stats.bytes;
        bad += k.stats.bad_content;
        gaps += k.stats.gaps;
        dups += k.stats.duplicates;
    }
    let mut all = Counters::default();
    for r in reports_a.iter().chain(&reports_b) {
        all.merge(&r.total);
    }
    let ring_full: u64 = link_stats
        .iter()
        .map(|l| l.ring_full.load(Ordering::Relaxed))
        .sum();
    let lost = tx.saturating_sub(rx);
    let (drops, by_reason) = drops_json(
        &all,
        &[
            ("rx_missed", rx_missed),
            ("link_ring_full", ring_full),
            ("sink_bad_content", bad),
            ("sink_duplicates", dups),
        ],
    );
    let outer_bytes: u64 = reports_a.iter().map(|r| r.total.outer_bytes).sum();
    let mpps = rx as f64 / elapsed / 1e6;
    let per_core_a: Vec<f64> = reports_a
        .iter()
        .map(|r| r.total.packets as f64 / elapsed / 1e6)
        .collect();
    let per_core_b: Vec<f64> = reports_b
        .iter()
        .map(|r| r.tx_in as f64 / elapsed / 1e6)
        .collect();
    let ratio = mpps / (base * w as f64);
    let handed: u64 = reports_a.iter().map(|r| r.handoff_out).sum();
    let handoff_drops: u64 = reports_a.iter().map(|r| r.handoff_drops).sum();
    let encrypted: u64 = reports_a.iter().map(|r| r.total.packets).sum();
    let v = serde_json::json!({
        "mode": "loopback",
        "handoff": c.handoff,
        "handoff_packets": handed,
        "handoff_drops": handoff_drops,
        "handoff_share": if encrypted > 0 { handed as f64 / encrypted as f64 } else { 0.0 },
        "transform": s.suite.to_string(),
        "backend": s.backend.name(),
        "backend_note": Backend::upgrade_hint(),
        "packet_size": c.packet_size,
        "tunnels": s.tunnels,
        "workers": w,
        "nat_t": c.nat_t,
        "ipv6_outer": c.ipv6_outer,
        "duration_s": elapsed,
        "offered_pps": c.rate,
        "tx_packets": tx,
        "rx_packets": rx,
        "lost": lost,
        "out_of_order_gaps": gaps,
        "drops": drops,
        "drops_by_reason": by_reason,
        "mpps": mpps,
        "gbps_inner": rx_bytes as f64 * 8.0 / elapsed / 1e9,
        "gbps_wire": outer_bytes as f64 * 8.0 / elapsed / 1e9,
        "inner_bytes_out": reports_a.iter().map(|r| r.total.inner_bytes).sum::<u64>(),
        "inner_bytes_in": reports_b.iter().map(|r| r.total.inner_bytes).sum::<u64>(),
        "per_core_mpps": {"encrypt": per_core_a, "decrypt": per_core_b},
        "burst_occupancy": reports_a.iter().chain(&reports_b).map(|r| serde_json::json!({"worker": r.worker, "polls": r.polls, "log2_buckets": r.burst_hist})).collect::<Vec<_>>(),
        "latency_us": percentiles(&hist),
        "baseline_crypto_mpps": base,
        "ratio_to_baseline": ratio,
        "machine": machine(s),
    });
    v
}

fn oneway(c: Common, dir: DirectionArg, packets: usize, export_secgw: Option<std::path::PathBuf>) {
    let s = setup(&c);
    let decrypt = matches!(dir, DirectionArg::Decrypt);
    oneway_check(&c, decrypt, packets);
    let base = baseline_mpps(&s, decrypt);
    let v = oneway_run(&c, &s, decrypt, packets, base, export_secgw.as_deref());
    let mpps = v["mpps"].as_f64().unwrap_or(0.0);
    let drops = v["drops"].as_u64().unwrap_or(0);
    let n_pkts = v["working_set_packets"].as_u64().unwrap_or(0);
    if c.json {
        println!("{v}");
    } else {
        println!(
            "oneway {}{} {} {} bytes x {} tunnel(s), {} distinct packets, {} core(s), backend {}: {:.3} Mpps, {:.2} Gbps inner; raw crypto {:.3} Mpps; ratio {:.0}%; drops {drops}",
            if decrypt { "decrypt" } else { "encrypt" },
            if c.handoff {
                " (received by worker 0, handed to worker 1 which encrypts)"
            } else {
                ""
            },
            s.suite,
            c.packet_size,
            s.tunnels,
            n_pkts,
            if c.handoff { 2 } else { 1 },
            s.backend.name(),
            mpps,
            v["gbps_inner"].as_f64().unwrap_or(0.0),
            base,
            100.0 * mpps / base
        );
    }
}

fn oneway_check(c: &Common, decrypt: bool, packets: usize) {
    if !(1..=1 << 20).contains(&packets) {
        fail(format!("--packets {packets}: allowed: 1..=1048576"));
    }
    if c.handoff && decrypt {
        fail("oneway --handoff: encrypt only (a replayed capture's replay-window reset cannot wait for the ring to drain)".into());
    }
}

/// One oneway run: its result object (the `perf oneway --json` keys). With `c.rate` the
/// packets arrive into an emulated NIC ring at that rate; what overflows it is missed.
fn oneway_run(
    c: &Common,
    s: &Setup,
    decrypt: bool,
    packets: usize,
    base: f64,
    export_secgw: Option<&std::path::Path>,
) -> serde_json::Value {
    let sizes = traffic::size_pattern(s.size);
    let pat = traffic::pattern();
    // Prebuilt packets: inner packets round-robin over the tunnels (encrypt), or the ESP of
    // those packets (decrypt, replay window reset at each pass).
    let n_pkts = packets.max(s.tunnels as usize);
    let mut outs = vec![];
    let mut ins = vec![];
    for t in 0..s.tunnels {
        let (o, i) = sa_pair(s, c, t);
        outs.push(o);
        ins.push(i);
    }
    let mut pkts = Vec::with_capacity(n_pkts);
    for k in 0..n_pkts {
        let t = (k % s.tunnels as usize) as u32;
        let mut b = PacketBuf::new();
        traffic::build(&mut b, t, k as u64, 0, sizes[k % sizes.len()], &pat);
        if decrypt {
            engine::esp::encapsulate(&mut outs[t as usize], &mut b).expect("prebuild");
        }
        pkts.push(b.bytes().to_vec());
    }
    if let Some(dir) = export_secgw {
        if c.nat_t || c.ipv6_outer {
            fail("--export-secgw: plain ESP over IPv4 only (no --nat-t, no --ipv6-outer)".into());
        }
        let sas: Vec<secgw::SecgwSa> = (0..s.tunnels)
            .map(|t| {
                let (enc_key, auth_key) = tunnel_keys(s, t);
                secgw::SecgwSa {
                    spi: tunnel_spi(t),
                    enc_key,
                    auth_key,
                    outer_src: OUTER_V4.0,
                    outer_dst: OUTER_V4.1,
                    inner_dst: tunnel_dst(t),
                }
            })
            .collect();
        secgw::export(dir, s.suite, &sas, decrypt, &pkts)
            .unwrap_or_else(|e| fail(format!("--export-secgw: {e}")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let null = Null::default();
    let (np, nb) = (null.packets.clone(), null.bytes.clone());
    let shared = shared_pool(8192, 2048);
    let wc = WorkerConfig {
        id: 0,
        core: Some(0),
        burst: c.burst,
        ..Default::default()
    };
    let counts: (
        Arc<std::sync::atomic::AtomicU64>,
        Arc<std::sync::atomic::AtomicU64>,
    );
    let (go, thread, h) = if decrypt {
        // At the end of each pass the replay port asks the worker (through its own command
        // channel, applied before the next burst) to forget the replay window.
        let cmd_slot: Arc<std::sync::OnceLock<crossbeam_channel::Sender<Command>>> = Arc::default();
        let slot = cmd_slot.clone();
        let replay = Replay::with_rate(
            pkts,
            Some(Box::new(move || {
                if let Some(tx) = slot.get() {
                    let _ = tx.send(Command::ResetReplay { spi: None });
                }
            })),
            c.rate,
        );
        let go = replay.go.clone();
        counts = (replay.taken.clone(), replay.missed());
        let (wk, h) = Worker::new(wc, null, replay, BufPool::with_shared(shared, 2048));
        let _ = cmd_slot.set(h.cmds.clone());
        for (t, i) in ins.into_iter().enumerate() {
            h.send(Command::AddInbound {
                tunnel: t as u32,
                sa: Box::new(i),
            });
        }
        let st = stop.clone();
        (go, std::thread::spawn(move || drop(wk.run(st))), h)
    } else if c.handoff {
        // Worker 0 replays the packets and hands every one to worker 1, which holds the
        // SAs (tunnel ids 2t+1: owner 1 in a set of two) and encrypts to the counted port.
        let replay = Replay::with_rate(pkts, None, c.rate);
        let go = replay.go.clone();
        counts = (replay.taken.clone(), replay.missed());
        let mut meshes = engine::handoff::mesh(2, 1024).into_iter();
        let (mut w0, h0) = Worker::new(
            wc.clone(),
            replay,
            Null::default(),
            BufPool::with_shared(shared.clone(), 2048),
        );
        let (mut w1, h1) = Worker::new(
            WorkerConfig {
                id: 1,
                core: Some(1 % cores()),
                ..wc
            },
            Null::default(),
            null,
            BufPool::with_shared(shared, 2048),
        );
        w0.set_mesh(meshes.next().expect("two meshes"));
        w1.set_mesh(meshes.next().expect("two meshes"));
        let set = engine::workers::WorkerSet::new(vec![h0, h1.clone()]);
        for (t, o) in outs.into_iter().enumerate() {
            set.send(Command::SetOutbound {
                tunnel: 2 * t as u32 + 1,
                sa: Box::new(o),
                selectors: vec![Selector::host(IpAddr::V4(tunnel_dst(t as u32)))],
            });
        }
        let (st0, st1) = (stop.clone(), stop.clone());
        let t0 = std::thread::spawn(move || drop(w0.run(st0)));
        let t1 = std::thread::spawn(move || {
            drop(w1.run(st1));
            let _ = t0.join();
        });
        set.barrier();
        (go, t1, h1)
    } else {
        let replay = Replay::with_rate(pkts, None, c.rate);
        let go = replay.go.clone();
        counts = (replay.taken.clone(), replay.missed());
        let (wk, h) = Worker::new(wc, replay, null, BufPool::with_shared(shared, 2048));
        for (t, o) in outs.into_iter().enumerate() {
            h.send(Command::SetOutbound {
                tunnel: t as u32,
                sa: Box::new(o),
                selectors: vec![Selector::host(IpAddr::V4(tunnel_dst(t as u32)))],
            });
        }
        let st = stop.clone();
        (go, std::thread::spawn(move || drop(wk.run(st))), h)
    };
    h.barrier();
    let t0 = Instant::now();
    go.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(c.duration));
    go.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    // Drain: until the output stops moving (the ring empties after the stop).
    let mut prev = (np.load(Ordering::Relaxed), Instant::now());
    while prev.1.elapsed() < Duration::from_millis(20) {
        std::thread::sleep(Duration::from_millis(2));
        let n = np.load(Ordering::Relaxed);
        if n != prev.0 {
            prev = (n, Instant::now());
        }
    }
    let r = h.report(false).expect("worker");
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    let rx = np.load(Ordering::Relaxed);
    let bytes = nb.load(Ordering::Relaxed);
    let mpps = rx as f64 / elapsed / 1e6;
    // What the tester offered: what the worker took, and what the ring missed.
    let rx_missed = counts.1.load(Ordering::Relaxed);
    let offered = counts.0.load(Ordering::Relaxed) + rx_missed;
    let (drops, by_reason) = drops_json(&r.total, &[("rx_missed", rx_missed)]);
    let (inner_bytes, wire_bytes) = if decrypt {
        (bytes, r.total.outer_bytes)
    } else {
        (r.total.inner_bytes, bytes)
    };
    let v = serde_json::json!({
        "mode": "oneway",
        "machine": machine(s),
        "direction": if decrypt {"decrypt"} else {"encrypt"},
        "transform": s.suite.to_string(),
        "backend": s.backend.name(),
        "backend_note": Backend::upgrade_hint(),
        "packet_size": c.packet_size,
        "tunnels": s.tunnels,
        "workers": if c.handoff { 2 } else { 1 },
        "handoff": c.handoff,
        "handoff_packets": r.handoff_in,
        "working_set_packets": n_pkts,
        "duration_s": elapsed,
        "offered_pps": c.rate,
        "tx_packets": offered,
        "rx_packets": rx,
        "lost": offered.saturating_sub(rx),
        "drops": drops,
        "drops_by_reason": by_reason,
        "mpps": mpps,
        "gbps_inner": inner_bytes as f64 * 8.0 / elapsed / 1e9,
        "gbps_wire": wire_bytes as f64 * 8.0 / elapsed / 1e9,
        "latency_us": {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0},
        "baseline_crypto_mpps": base,
        "ratio_to_baseline": mpps / base,
    });
    v
}

fn crypto(size: usize, ms: u64, only: Option<String>, json: bool) {
    if !json {
        println!(
            "{:<26} {:<11} {:>10} {:>10} {:>10} {:>10}",
            "transform", "backend", "seal Mpps", "seal Gbps", "open Mpps", "open Gbps"
        );
    }
    let mut rows = vec![];
    let mut last = None;
    for suite in Suite::all() {
        if only
            .as_deref()
            .is_some_and(|o| !suite.to_string().contains(o))
        {
            continue;
        }
        for backend in Backend::available_all() {
            let s = Setup {
                suite,
                size: Some(size.clamp(traffic::MIN_PACKET, 1500)),
                backend,
                tunnels: 1,
                workers: 1,
            };
            let _ = ms;
            let seal = baseline_mpps(&s, false);
            let open = baseline_mpps(&s, true);
            let gbps = |m: f64| m * size as f64 * 8.0 / 1e3;
            if json {
                rows.push(serde_json::json!({
                    "transform": suite.to_string(), "backend": backend.name(),
                    "seal_mpps": seal, "seal_gbps": gbps(seal),
                    "open_mpps": open, "open_gbps": gbps(open),
                }));
            } else {
                println!(
                    "{:<26} {:<11} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    suite.to_string(),
                    backend.name(),
                    seal,
                    gbps(seal),
                    open,
                    gbps(open)
                );
            }
            last = Some(s);
        }
    }
    if json {
        let s = last.unwrap_or_else(|| fail(format!("--only {only:?}: no transform matches")));
        println!(
            "{}",
            serde_json::json!({
                "mode": "crypto",
                "packet_size": size.clamp(traffic::MIN_PACKET, 1500).to_string(),
                "rows": rows,
                "machine": machine(&s),
            })
        );
    }
}

fn main() {
    let cmd = Cli::parse().cmd;
    if !matches!(cmd, Cmd::Ike { .. }) {
        // First line on stderr (JSON on stdout stays one object): what a fresh machine is
        // missing for the fastest crypto.
        if let Some(h) = Backend::upgrade_hint() {
            eprintln!("note: {h}");
        }
    }
    match cmd {
        Cmd::Loopback(c) => loopback(c),
        Cmd::Ndr {
            common,
            trial_duration,
            max_trials,
            precision,
            pdr_loss,
            warmup,
            pipeline,
            xdp_mode,
            direction,
            packets,
        } => ndr_cmd(
            common,
            pipeline,
            direction,
            packets,
            &xdp_mode,
            ndr::Opts {
                trial_s: trial_duration,
                max_trials,
                precision,
                pdr_loss,
                warmup_s: warmup,
                // oneway drops its output: no latency to measure.
                latency: !matches!(pipeline, PipelineArg::Oneway),
            },
        ),
        Cmd::Oneway {
            common,
            direction,
            packets,
            export_secgw,
        } => oneway(common, direction, packets, export_secgw),
        Cmd::Crypto {
            size,
            ms,
            only,
            json,
        } => crypto(size, ms, only, json),
        Cmd::Stress {
            dut,
            local,
            tunnels,
            psk,
            p1_enc,
            p1_integ,
            p1_dh,
            p2_dh,
            p2_enc,
            p2_integ,
            cgw_net,
            dut_net,
            sink,
            sink_netns,
            rate,
            duration,
            packet_size,
            concurrency,
            setup_timeout,
            ndr,
            trial_duration,
            max_trials,
            precision,
            backend,
            json,
        } => {
            let list = |s: &str| -> Vec<String> {
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect()
            };
            if !(1..=100_000).contains(&tunnels) {
                fail(format!("--tunnels {tunnels}: allowed: 1..=100000"));
            }
            let backend: Backend = backend
                .parse()
                .unwrap_or_else(|m: String| fail(format!("--backend: {m}")));
            let o = stress::Opts {
                dut,
                locals: stress::locals(&local).unwrap_or_else(|e| fail(e)),
                tunnels,
                psk,
                p1_enc: list(&p1_enc),
                p1_integ: list(&p1_integ),
                p1_dh: list(&p1_dh)
                    .iter()
                    .map(|g| {
                        g.parse()
                            .unwrap_or_else(|_| fail(format!("--p1-dh {g:?}: a DH group number")))
                    })
                    .collect(),
                p2_dh: list(&p2_dh)
                    .iter()
                    .map(|g| {
                        g.parse()
                            .unwrap_or_else(|_| fail(format!("--p2-dh {g:?}: a DH group number")))
                    })
                    .collect(),
                p2_enc: list(&p2_enc),
                p2_integ: list(&p2_integ),
                cgw_net: stress::net(&cgw_net).unwrap_or_else(|e| fail(format!("--cgw-net {e}"))),
                dut_net: stress::net(&dut_net).unwrap_or_else(|e| fail(format!("--dut-net {e}"))),
                sink,
                sink_netns,
                rate,
                duration,
                size: packet_size,
                concurrency: concurrency.max(1),
                setup_timeout,
                backend,
                ndr: ndr.then(|| ndr::Opts {
                    trial_s: trial_duration,
                    max_trials,
                    precision,
                    pdr_loss: 0.005,
                    warmup_s: trial_duration.min(1.0),
                    latency: false,
                }),
            };
            match stress::run(o, !json) {
                Ok(v) => {
                    if json {
                        println!("{v}");
                    } else {
                        let f = |k: &str| v[k].clone();
                        println!(
                            "{}/{} tunnels up in {:.2} s ({:.0}/s); failures {}; sent {} received {} (loss {:.4}%, {} tunnel(s) with loss); rekeys survived {}; latency us {}",
                            f("tunnels_up"),
                            f("tunnels_requested"),
                            f("setup_s").as_f64().unwrap_or(0.0),
                            f("setup_rate_per_s").as_f64().unwrap_or(0.0),
                            f("setup_failures"),
                            f("tx_packets"),
                            f("rx_packets"),
                            100.0 * f("loss_ratio").as_f64().unwrap_or(0.0),
                            f("tunnels_with_loss"),
                            f("rekeys_survived"),
                            f("latency_us"),
                        );
                        if v.get("ndr_mpps").is_some() {
                            println!(
                                "  NDR through the DUT {:.4} Mpps, PDR {:.4} Mpps",
                                f("ndr_mpps").as_f64().unwrap_or(0.0),
                                f("pdr_mpps").as_f64().unwrap_or(0.0)
                            );
                        }
                    }
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Report { files, out } => {
            let runs = report::load(&files).unwrap_or_else(|e| fail(e));
            let html = report::render(&runs);
            std::fs::create_dir_all(&out)
                .unwrap_or_else(|e| fail(format!("--out {}: {e}", out.display())));
            let path = out.join("index.html");
            std::fs::write(&path, html)
                .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
            println!("{} ({} result(s))", path.display(), runs.len());
        }
        Cmd::Ike {
            groups,
            seconds,
            scale,
            hours,
            version,
            json,
        } => {
            let gs: Vec<u16> = groups
                .split(',')
                .map(|g| {
                    g.trim().parse().unwrap_or_else(|_| {
                        fail(format!("--groups: {g:?} is not a DH group number"))
                    })
                })
                .collect();
            if scale > 0 {
                ikebench::scale(scale, hours, gs[0], json);
            } else {
                ikebench::rate(&gs, seconds, version == 1, json);
            }
        }
        #[cfg(feature = "xdp")]
        Cmd::XdpGateway {
            packet_size,
            duration,
            transform,
            backend,
            xdp_mode,
            workers,
            json,
        } => {
            if !(1..=64).contains(&workers) {
                fail(format!("--workers {workers}: allowed: 1..=64"));
            }
            if std::env::var_os("PERF_XDP_INSIDE").is_none() {
                let args: Vec<String> = std::env::args().skip(1).collect();
                std::process::exit(xdpbench::outer(&args));
            }
            let sizes = packet_size
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (48..=1500).contains(n))
                        .unwrap_or_else(|| fail(format!("--packet-size {s:?}: allowed 48..=1500")))
                })
                .collect();
            let o = xdpbench::Opts {
                sizes,
                duration,
                suite: parse_suite(&transform),
                backend: backend
                    .parse()
                    .unwrap_or_else(|e: String| fail(format!("--backend: {e}"))),
                json,
                mode: xdp_mode
                    .parse()
                    .unwrap_or_else(|e: String| fail(format!("--xdp-mode {e}"))),
                workers,
            };
            std::process::exit(xdpbench::inner(o));
        }
        #[cfg(not(feature = "xdp"))]
        Cmd::XdpGateway { .. } => fail(
            "perf was built without its `xdp` feature (the XDP program needs clang and libelf): \
             apt-get install clang libelf-dev, then \
             cargo run --release -p perf --features xdp -- xdp-gateway"
                .to_string(),
        ),
    }
}
