//! `perf`: the traffic generator and benchmark rig. The embedded loopback benchmark
//! (`perf loopback`) arrives with the poll-mode runtime; for now `perf crypto` measures the
//! single-core seal/open rate of every transform on every crypto backend built here.

use clap::{Parser, Subcommand};
use engine::crypto::{Backend, CryptoOp, Suite, new_transform};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "perf", about = "espd benchmark rig")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seal and open bursts of 32 ESP packets per transform and backend, one core.
    Crypto {
        /// Payload (ciphertext) bytes per packet.
        #[arg(long, default_value_t = 1400)]
        size: usize,
        /// Milliseconds measured per point.
        #[arg(long, default_value_t = 200)]
        ms: u64,
        /// Only transforms whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
}

fn rate(ms: u64, mut f: impl FnMut()) -> f64 {
    let end = Duration::from_millis(ms);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < end {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let Cmd::Crypto { size, ms, only } = Args::parse().cmd;
    println!(
        "{:<26} {:<11} {:>10} {:>10} {:>10} {:>10}",
        "transform", "backend", "seal Mpps", "seal Gbps", "open Mpps", "open Gbps"
    );
    for suite in Suite::all() {
        if only
            .as_deref()
            .is_some_and(|o| !suite.to_string().contains(o))
        {
            continue;
        }
        let ct = size.div_ceil(suite.block()) * suite.block();
        let len = 8 + suite.iv_len() + ct + suite.icv_len();
        for backend in Backend::available_all() {
            let ek = vec![0x11; suite.enc.enc_key_len()];
            let ik = vec![0x22; suite.integ.key_len()];
            let t = new_transform(backend, suite, &ek, &ik).expect("valid keys");
            let mut bufs = vec![vec![0u8; len]; 32];
            let seal = rate(ms, || {
                let mut ops: Vec<CryptoOp<'_>> = bufs
                    .iter_mut()
                    .map(|b| CryptoOp {
                        esp: b,
                        seq_hi: None,
                        ok: false,
                    })
                    .collect();
                t.seal_burst(&mut ops);
            }) * 32.0;
            let sealed = bufs.clone();
            let open = rate(ms, || {
                for (b, s) in bufs.iter_mut().zip(&sealed) {
                    b.copy_from_slice(s);
                }
                let mut ops: Vec<CryptoOp<'_>> = bufs
                    .iter_mut()
                    .map(|b| CryptoOp {
                        esp: b,
                        seq_hi: None,
                        ok: false,
                    })
                    .collect();
                t.open_burst(&mut ops);
            }) * 32.0;
            let gbps = |pps: f64| pps * size as f64 * 8.0 / 1e9;
            println!(
                "{:<26} {:<11} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                suite.to_string(),
                backend.name(),
                seal / 1e6,
                gbps(seal),
                open / 1e6,
                gbps(open)
            );
        }
    }
}
