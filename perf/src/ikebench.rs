//! `perf ike`: IKE SAs established per second on one core (both peers in this process, every
//! datagram delivered in memory), and `perf ike --scale N`: N tunnels established and rekeyed
//! on a fake clock over 24 simulated hours at the AWS default lifetimes, with the memory per
//! tunnel. Uses the sans-IO `ike` crate exactly as `espd run` does, minus the sockets.

use ike::msg::TrafficSelector;
use ike::seeded::rng;
use ike::session::{Config, IkeSa, Output, State};
use serde_json::json;
use std::net::IpAddr;
use std::time::Instant;
use zeroize::Zeroizing;

fn cfg(local: &str, peer: &str, group: u16) -> Config {
    let any = TrafficSelector::any(false);
    Config {
        local_addr: local.parse::<IpAddr>().expect("literal"),
        peer_addr: peer.parse::<IpAddr>().expect("literal"),
        psk: Zeroizing::new(b"bench.psk_0123".to_vec()),
        p1_enc: vec!["AES128".into()],
        p1_integ: vec!["SHA2-256".into()],
        p1_dh: vec![group],
        p2_enc: vec!["AES128-GCM-16".into()],
        p2_integ: vec!["SHA2-256".into()],
        p2_dh: vec![],
        local_ts: any,
        remote_ts: any,
        force_nat_t: false,
        retransmits: 3,
        retransmit_base_s: 1.0,
    }
}

fn sends(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn pump(a: &mut IkeSa, b: &mut IkeSa, first: Vec<Vec<u8>>, now: f64, r: &mut dyn FnMut(&mut [u8])) {
    let mut to_b = first;
    for _ in 0..16 {
        let mut to_a = vec![];
        for d in to_b.drain(..) {
            to_a.extend(sends(&b.handle(&d, now, r)));
        }
        if to_a.is_empty() {
            return;
        }
        for d in to_a {
            to_b.extend(sends(&a.handle(&d, now, r)));
        }
    }
}

/// One IKE SA with its first CHILD_SA, both peers.
fn establish(group: u16, r: &mut dyn FnMut(&mut [u8])) -> (IkeSa, IkeSa) {
    let (mut a, out) =
        IkeSa::initiate(cfg("192.0.2.1", "192.0.2.2", group), 0.0, r).expect("initiate");
    let first = sends(&out).remove(0);
    let (b, out) = IkeSa::respond(cfg("192.0.2.2", "192.0.2.1", group), &first, 0.0, r);
    let mut b = b.expect("responder");
    let resp = sends(&out);
    let mut to_b = vec![];
    for d in resp {
        to_b.extend(sends(&a.handle(&d, 0.0, r)));
    }
    pump(&mut a, &mut b, to_b, 0.0, r);
    assert_eq!(a.state, State::Established);
    (a, b)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// One IKEv1 ISAKMP SA (main mode) with its first IPsec SA (quick mode, PFS with the same
/// group when `pfs`), both peers.
fn establish_v1(group: u16, pfs: bool, r: &mut dyn FnMut(&mut [u8])) {
    use ike::v1::{Isakmp, Lifetimes};
    let c = |l, p| {
        let mut c = cfg(l, p, group);
        c.p2_enc = vec!["AES128".into()];
        c.p2_dh = if pfs { vec![group] } else { vec![] };
        c
    };
    let life = Lifetimes::default();
    let (mut a, out) =
        Isakmp::initiate(c("192.0.2.1", "192.0.2.2"), life, 0.0, r).expect("initiate");
    let first = sends(&out).remove(0);
    let (b, out) = Isakmp::respond(c("192.0.2.2", "192.0.2.1"), life, &first, 0.0, r);
    let mut b = b.expect("responder");
    let mut to_a = sends(&out);
    let mut children = 0;
    for _ in 0..8 {
        let mut to_b = vec![];
        for d in to_a.drain(..) {
            let o = a.handle(&d, 0.0, r);
            children += o.iter().filter(|x| matches!(x, Output::ChildUp(_))).count();
            to_b.extend(sends(&o));
        }
        for d in to_b {
            to_a.extend(sends(&b.handle(&d, 0.0, r)));
        }
        if to_a.is_empty() {
            break;
        }
    }
    assert!(a.state() == State::Established && children == 1);
}

/// IKE SAs per second per core for each group: IKEv2 (IKE_SA_INIT + IKE_AUTH with the first
/// CHILD_SA), and with `v1` beside it IKEv1 (main mode + quick mode, without and with PFS).
pub fn rate(groups: &[u16], secs: f64, v1: bool, json_out: bool) {
    let mut rows = vec![];
    let mut cases: Vec<(&str, u8)> = vec![("IKEv2: IKE_SA_INIT + IKE_AUTH with CHILD_SA", 2)];
    if v1 {
        cases.push(("IKEv1: main mode + quick mode", 1));
        cases.push(("IKEv1: main mode + quick mode with PFS (AWS)", 3));
    }
    for (what, kind) in cases {
        for &g in groups {
            let mut r = rng(u64::from(g));
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed().as_secs_f64() < secs {
                match kind {
                    2 => {
                        let _ = establish(g, &mut r);
                    }
                    k => establish_v1(g, k == 3, &mut r),
                }
                n += 1;
            }
            let per_s = n as f64 / t0.elapsed().as_secs_f64();
            rows.push((what, kind, g, n, per_s));
        }
    }
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(w, k, g, n, r)| {
                json!({"version": if *k == 2 { 2 } else { 1 }, "pfs": *k == 3, "exchanges": w,
                       "dh_group": g, "established": n, "ike_sas_per_s": r})
            })
            .collect();
        println!("{}", json!({ "ike": v }));
    } else {
        println!("IKE SAs established per second on one core (both peers in this process):");
        for (w, _, g, n, r) in rows {
            println!("  {w:<46} DH group {g:>2}: {r:>8.0} /s  ({n} in {secs} s)");
        }
    }
}

/// `tunnels` tunnels (peer pairs) established, then 24 simulated hours at the AWS default
/// lifetimes (phase 1 28800 s, phase 2 3600 s, margin 270 s, fuzz 100 %).
pub fn scale(tunnels: usize, hours: f64, group: u16, json_out: bool) {
    let mut r = rng(7);
    let before = rss_kib();
    let t0 = Instant::now();
    let mut pairs: Vec<(IkeSa, IkeSa, f64, f64)> = Vec::with_capacity(tunnels);
    let draw = |r: &mut dyn FnMut(&mut [u8]), life: u32| {
        let mut b = [0u8; 8];
        r(&mut b);
        let u = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
        ike::rekey::rekey_at(life, 270, 100, u)
    };
    for _ in 0..tunnels {
        let (a, b) = establish(group, &mut r);
        let c = draw(&mut r, 3600);
        let i = draw(&mut r, 28800);
        pairs.push((a, b, c, i));
    }
    let established_s = t0.elapsed().as_secs_f64();
    let after = rss_kib();
    let (mut child_rekeys, mut ike_rekeys) = (0u64, 0u64);
    let end = hours * 3600.0;
    let t1 = Instant::now();
    for (a, b, next_c, next_i) in pairs.iter_mut() {
        loop {
            let now = next_c.min(*next_i);
            if now > end {
                break;
            }
            // As the shell does: timers run, replaced IKE SAs are forgotten after their stay.
            let late = a.handle_timeout(now).len() + b.handle_timeout(now).len();
            assert_eq!(late, 0, "nothing is left unanswered");
            if *next_i <= *next_c {
                let req = sends(&a.rekey_ike(now, &mut r));
                pump(a, b, req, now, &mut r);
                ike_rekeys += 1;
                *next_i = now + draw(&mut r, 28800);
            } else {
                let cur = a.children()[0];
                let req = sends(&a.rekey_child(cur, None, now, &mut r));
                pump(a, b, req, now, &mut r);
                child_rekeys += 1;
                *next_c = now + draw(&mut r, 3600);
            }
        }
        assert_eq!(a.children().len(), 1);
        assert_eq!(a.state, State::Established);
    }
    let rekey_s = t1.elapsed().as_secs_f64();
    let per_tunnel = (after.saturating_sub(before)) as f64 * 1024.0 / tunnels as f64;
    let per_tunnel_end = (rss_kib().saturating_sub(before)) as f64 * 1024.0 / tunnels as f64;
    if json_out {
        println!(
            "{}",
            json!({"tunnels": tunnels, "dh_group": group, "simulated_hours": hours,
                   "establish_s": established_s, "child_rekeys": child_rekeys,
                   "ike_rekeys": ike_rekeys, "rekey_s": rekey_s,
                   "rss_bytes_per_tunnel": per_tunnel,
                   "rss_bytes_per_tunnel_after_rekeys": per_tunnel_end})
        );
    } else {
        println!(
            "{tunnels} tunnels (both peers), DH group {group}: established in {established_s:.1} s; \
             {hours} simulated hours: {child_rekeys} CHILD_SA and {ike_rekeys} IKE SA rekeys in {rekey_s:.1} s; \
             memory {:.0} bytes per tunnel once established, {:.0} after the rekeys \
             (both peers' IKE SA state, RSS growth)",
            per_tunnel, per_tunnel_end
        );
    }
}
