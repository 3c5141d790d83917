//! `perf ndr`: the throughput search of RFC 2544 section 26.1 (binary search on the offered
//! rate, each trial a fixed duration at a fixed rate, the frames received counted against
//! those sent) for the **NDR** (no drop rate: no loss at all) and the **PDR** (partial drop
//! rate: a loss ratio of at most `pdr_loss`, 0.5 % by default, as FD.io CSIT defines it),
//! then the latency at fractions of the NDR.
//!
//! The search is independent of what it measures: [`search`] takes a function that runs one
//! trial at a rate and reports what was sent and received, so it is tested against a
//! simulated device with a known capacity, and `perf ndr` gives it the loopback pipeline.
//!
//! The procedure: a warm-up trial as fast as the device takes packets gives its maximum
//! rate M; the first trial is offered at 1.25 M (it must lose, or the rate doubles until
//! one does); then bisection between the highest rate that passed and the lowest that
//! failed until they are within `precision` of each other (relative) or `max_trials` ran.
//! The NDR found is confirmed by a verification trial at that rate; a lossy verification
//! makes it the new upper bound and the search goes on (at most three times). The PDR
//! search starts from what the NDR trials showed.

use serde_json::{Value, json};

/// The search's parameters (`perf ndr` flags).
#[derive(Clone, Debug)]
pub struct Opts {
    /// Seconds per trial (RFC 2544 asks for 60; CSIT uses 1 to 30).
    pub trial_s: f64,
    /// Trials at most, warm-up, verification and latency trials not counted.
    pub max_trials: usize,
    /// Relative width of [pass, fail] at which a search stops (0.02: 2 %).
    pub precision: f64,
    /// Loss ratio a PDR trial may have (0.005: 0.5 %).
    pub pdr_loss: f64,
    /// Seconds of the warm-up trial (as fast as possible; its rate starts the search).
    pub warmup_s: f64,
    /// Latency trials at 10, 50 and 90 % of the NDR (when the trials measure latency).
    pub latency: bool,
}

/// What one trial did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub duration_s: f64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// Inner (plaintext) bytes received.
    pub rx_bytes: u64,
    /// Latency percentiles in microseconds (p50, p99, p999, max).
    pub latency_us: Value,
    /// Packets the tester itself could not send at the trial's rate (counted in
    /// `tx_packets` and so as loss: a rate the tester cannot offer is not a pass).
    pub tester_short: u64,
}

impl Outcome {
    pub fn loss_ratio(&self) -> f64 {
        if self.tx_packets == 0 {
            return 1.0;
        }
        self.tx_packets.saturating_sub(self.rx_packets) as f64 / self.tx_packets as f64
    }
}

/// One trial of the search, as reported.
#[derive(Clone, Debug)]
pub struct Trial {
    /// warmup | ndr | verify | pdr | latency
    pub kind: &'static str,
    /// Offered rate (None: as fast as possible, the warm-up).
    pub rate_pps: Option<f64>,
    pub out: Outcome,
}

impl Trial {
    fn json(&self) -> Value {
        json!({
            "kind": self.kind,
            "rate_pps": self.rate_pps,
            "duration_s": self.out.duration_s,
            "tx_packets": self.out.tx_packets,
            "rx_packets": self.out.rx_packets,
            "loss_ratio": self.out.loss_ratio(),
            "tester_short": self.out.tester_short,
            "latency_us": self.out.latency_us,
        })
    }
}

/// The search's result.
#[derive(Clone, Debug)]
pub struct Found {
    pub ndr_pps: f64,
    /// A verification trial at `ndr_pps` lost nothing.
    pub ndr_verified: bool,
    pub pdr_pps: f64,
    /// Mean inner packet size seen (bytes), for the Gbps figures.
    pub bytes_per_packet: f64,
    pub trials: Vec<Trial>,
    /// (fraction of NDR, the trial at that rate)
    pub latency: Vec<(f64, Trial)>,
}

impl Found {
    /// The result object of `perf ndr --json` (the machine and setup are added by the
    /// caller): `ndr_mpps`, `pdr_mpps`, `ndr_gbps_inner`, `pdr_gbps_inner`, `trials`,
    /// `latency_us_at` keyed by fraction ("0.1", "0.5", "0.9").
    pub fn json(&self, opts: &Opts) -> Value {
        let gbps = |pps: f64| pps * self.bytes_per_packet * 8.0 / 1e9;
        let lat: serde_json::Map<String, Value> = self
            .latency
            .iter()
            .map(|(f, t)| (format!("{f}"), t.out.latency_us.clone()))
            .collect();
        json!({
            "ndr_mpps": self.ndr_pps / 1e6,
            "ndr_verified": self.ndr_verified,
            "pdr_mpps": self.pdr_pps / 1e6,
            "ndr_gbps_inner": gbps(self.ndr_pps),
            "pdr_gbps_inner": gbps(self.pdr_pps),
            "pdr_loss_ratio": opts.pdr_loss,
            "precision": opts.precision,
            "trial_duration_s": opts.trial_s,
            "inner_bytes_per_packet": self.bytes_per_packet,
            "trials": self.trials.iter().map(Trial::json).collect::<Vec<_>>(),
            "latency_us_at": lat,
        })
    }
}

/// Runs one trial of a kind at a rate for some seconds and records it.
type RunTrial<'a> = dyn FnMut(&'static str, Option<f64>, f64, &mut Vec<Trial>) -> Trial + 'a;

/// Runs the search. `trial(rate, seconds)` runs one trial (rate None: as fast as possible);
/// `progress` sees each trial as it ends.
pub fn search(
    opts: &Opts,
    trial: &mut dyn FnMut(Option<f64>, f64) -> Outcome,
    progress: &mut dyn FnMut(usize, &Trial),
) -> Found {
    let mut trials: Vec<Trial> = vec![];
    let mut run = |kind: &'static str, rate: Option<f64>, secs: f64, trials: &mut Vec<Trial>| {
        let t = Trial {
            kind,
            rate_pps: rate,
            out: trial(rate, secs),
        };
        progress(trials.len() + 1, &t);
        trials.push(t.clone());
        t
    };
    let warm = run("warmup", None, opts.warmup_s, &mut trials);
    let max_pps = warm.out.rx_packets as f64 / warm.out.duration_s.max(1e-9);
    let mut counted = 0;
    // Bounds from every search trial so far: the lowest rate beyond `limit`, and the
    // highest within it below that (a pass above a failure is noise: the failure counts).
    let bounds = |trials: &[Trial], limit: f64| -> (f64, Option<f64>) {
        let search = || {
            trials
                .iter()
                .filter(|t| t.kind != "warmup" && t.kind != "latency")
                .filter_map(|t| Some((t.rate_pps?, t.out.loss_ratio())))
        };
        let hi = search()
            .filter(|(_, l)| *l > limit)
            .map(|(r, _)| r)
            .reduce(f64::min);
        let lo = search()
            .filter(|(r, l)| *l <= limit && hi.is_none_or(|h| *r < h))
            .map(|(r, _)| r)
            .fold(0.0, f64::max);
        (lo, hi)
    };
    // Find a failing rate above everything: 1.25 M, doubled while it passes.
    let mut start = (max_pps * 1.25).max(1000.0);
    for _ in 0..4 {
        if counted >= opts.max_trials {
            break;
        }
        let t = run("ndr", Some(start), opts.trial_s, &mut trials);
        counted += 1;
        if t.out.loss_ratio() > 0.0 {
            break;
        }
        start *= 2.0;
    }
    let bisect = |kind: &'static str,
                  limit: f64,
                  trials: &mut Vec<Trial>,
                  counted: &mut usize,
                  run: &mut RunTrial| {
        loop {
            let (lo, hi) = bounds(trials, limit);
            let Some(hi) = hi else {
                return;
            };
            if *counted >= opts.max_trials || hi - lo <= opts.precision * hi {
                return;
            }
            // From nothing known to pass: a tenth of the failure, then halves.
            let mid = if lo == 0.0 { hi / 2.0 } else { (lo + hi) / 2.0 };
            run(kind, Some(mid), opts.trial_s, trials);
            *counted += 1;
        }
    };
    let mut ndr = 0.0;
    let mut verified = false;
    for _ in 0..3 {
        bisect("ndr", 0.0, &mut trials, &mut counted, &mut run);
        ndr = bounds(&trials, 0.0).0;
        if ndr == 0.0 {
            break;
        }
        let v = run("verify", Some(ndr), opts.trial_s, &mut trials);
        if v.out.loss_ratio() == 0.0 {
            verified = true;
            break;
        }
        // The verification lost: that rate is a failure now (the bounds see it) and the
        // search goes on below it.
        ndr = 0.0;
    }
    if !verified {
        // Three verifications lost: the best unverified pass, reported as such.
        ndr = bounds(&trials, 0.0).0;
    }
    // PDR: from the trials so far; above the NDR, never below it.
    if bounds(&trials, opts.pdr_loss).1.is_none() {
        let top = trials
            .iter()
            .filter_map(|t| t.rate_pps)
            .fold(start, f64::max);
        run("pdr", Some(top * 2.0), opts.trial_s, &mut trials);
        counted += 1;
    }
    bisect("pdr", opts.pdr_loss, &mut trials, &mut counted, &mut run);
    let pdr = bounds(&trials, opts.pdr_loss).0.max(ndr);
    let mut latency = vec![];
    if ndr > 0.0 && opts.latency {
        for f in [0.1, 0.5, 0.9] {
            let t = run("latency", Some(ndr * f), opts.trial_s, &mut trials);
            latency.push((f, t));
        }
    }
    let (bytes, pkts) = trials.iter().fold((0u64, 0u64), |(b, p), t| {
        (b + t.out.rx_bytes, p + t.out.rx_packets)
    });
    Found {
        ndr_pps: ndr,
        ndr_verified: verified,
        pdr_pps: pdr,
        bytes_per_packet: if pkts > 0 {
            bytes as f64 / pkts as f64
        } else {
            0.0
        },
        trials,
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated device: forwards up to `cap` packets/s, drops the excess; `noise` lost
    /// packets in trials at or above `noisy_above`.
    fn device(cap: f64, noise: u64, noisy_above: f64) -> impl FnMut(Option<f64>, f64) -> Outcome {
        move |rate, secs| {
            let r = rate.unwrap_or(cap);
            let tx = (r * secs) as u64;
            let mut rx = tx.min((cap * secs) as u64);
            if r >= noisy_above {
                rx = rx.saturating_sub(noise);
            }
            Outcome {
                duration_s: secs,
                tx_packets: tx,
                rx_packets: rx,
                rx_bytes: rx * 1400,
                latency_us: json!({"p50": 1.0, "p99": 2.0, "p999": 3.0, "max": 4.0}),
                tester_short: 0,
            }
        }
    }

    fn opts() -> Opts {
        Opts {
            trial_s: 1.0,
            max_trials: 30,
            precision: 0.01,
            pdr_loss: 0.005,
            warmup_s: 0.5,
            latency: true,
        }
    }

    #[test]
    fn ndr_and_pdr_of_a_device_with_a_known_capacity() {
        let mut d = device(1_000_000.0, 0, f64::INFINITY);
        let f = search(&opts(), &mut d, &mut |_, _| {});
        // Within the precision below the capacity; the PDR may exceed it by 0.5 %.
        assert!(
            f.ndr_pps <= 1_000_000.0 && f.ndr_pps >= 990_000.0,
            "{}",
            f.ndr_pps
        );
        assert!(f.ndr_verified);
        assert!(
            f.pdr_pps >= f.ndr_pps && f.pdr_pps <= 1_005_100.0,
            "{}",
            f.pdr_pps
        );
        // Verified at the NDR, bracketed by a failure within the precision above it.
        assert!(f.trials.iter().any(|t| t.kind == "verify"
            && t.rate_pps == Some(f.ndr_pps)
            && t.out.loss_ratio() == 0.0));
        let above = f
            .trials
            .iter()
            .filter(|t| t.kind == "ndr" && t.out.loss_ratio() > 0.0)
            .filter_map(|t| t.rate_pps)
            .fold(f64::INFINITY, f64::min);
        assert!(
            above > f.ndr_pps && above - f.ndr_pps <= 0.01 * above,
            "{above}"
        );
        assert_eq!(
            f.latency.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            [0.1, 0.5, 0.9]
        );
        let j = f.json(&opts());
        assert!(
            (j["ndr_gbps_inner"].as_f64().unwrap() - f.ndr_pps * 1400.0 * 8.0 / 1e9).abs() < 1e-9
        );
        assert!(j["latency_us_at"]["0.5"]["p99"].is_number());
    }

    #[test]
    fn a_lossy_verification_moves_the_ndr_down() {
        // Noise: 3 packets lost in any trial at or above 900 kpps, below the capacity.
        let mut d = device(1_000_000.0, 3, 900_000.0);
        let f = search(&opts(), &mut d, &mut |_, _| {});
        assert!(
            f.ndr_pps < 900_000.0 && f.ndr_pps > 880_000.0,
            "{}",
            f.ndr_pps
        );
        // The PDR ignores 3 packets in a million.
        assert!(f.pdr_pps > 990_000.0, "{}", f.pdr_pps);
    }

    #[test]
    fn a_pass_above_a_failure_does_not_make_the_failure_a_pass() {
        // Losses of 2 % in a band (800..870 kpps) below a clean stretch up to the capacity:
        // the rates above the band that pass are noise to the search, never the result.
        let mut d = move |rate: Option<f64>, secs: f64| {
            let r = rate.unwrap_or(1_000_000.0);
            let tx = (r * secs) as u64;
            let rx = if (800_000.0..870_000.0).contains(&r) {
                tx - tx / 50
            } else {
                tx.min((1_000_000.0 * secs) as u64)
            };
            Outcome {
                duration_s: secs,
                tx_packets: tx,
                rx_packets: rx,
                ..Default::default()
            }
        };
        let f = search(&opts(), &mut d, &mut |_, _| {});
        let lowest_fail = f
            .trials
            .iter()
            .filter(|t| t.kind != "warmup" && t.kind != "latency" && t.out.loss_ratio() > 0.005)
            .filter_map(|t| t.rate_pps)
            .fold(f64::INFINITY, f64::min);
        assert!(
            f.ndr_pps < lowest_fail && f.pdr_pps < lowest_fail,
            "{} {} {lowest_fail}",
            f.ndr_pps,
            f.pdr_pps
        );
    }

    #[test]
    fn a_device_that_loses_everything_has_no_ndr() {
        let mut d = |_: Option<f64>, secs: f64| Outcome {
            duration_s: secs,
            tx_packets: 1000,
            rx_packets: 0,
            ..Default::default()
        };
        let f = search(&opts(), &mut d, &mut |_, _| {});
        assert_eq!((f.ndr_pps, f.pdr_pps), (0.0, 0.0));
        assert!(f.latency.is_empty());
        assert!(f.trials.len() <= opts().max_trials + 4);
    }

    #[test]
    fn the_trial_budget_ends_the_search() {
        let mut o = opts();
        o.max_trials = 5;
        o.precision = 1e-9;
        let mut d = device(1_000_000.0, 0, f64::INFINITY);
        let f = search(&o, &mut d, &mut |_, _| {});
        let counted = f
            .trials
            .iter()
            .filter(|t| t.kind == "ndr" || t.kind == "pdr")
            .count();
        assert!(counted <= 5 + 1, "{counted}");
        assert!(f.ndr_pps > 0.0);
    }
}
