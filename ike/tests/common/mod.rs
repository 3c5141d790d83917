//! Helpers shared by the IKE integration tests: a seeded RNG, a config with every AWS
//! algorithm, and drivers that deliver datagrams between two peers of ours.
#![allow(dead_code)]

use ike::msg::TrafficSelector;
pub use ike::seeded::rng;
use ike::session::{ChildSa, Config, IkeSa, Output};
use std::net::IpAddr;
use zeroize::Zeroizing;

pub fn v(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| s.to_string()).collect()
}

pub fn net(a: &str, b: &str) -> TrafficSelector {
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
    }
}

pub fn cfg(local: &str, peer: &str) -> Config {
    Config {
        local_addr: local.parse::<IpAddr>().unwrap(),
        peer_addr: peer.parse::<IpAddr>().unwrap(),
        psk: Zeroizing::new(b"lab.tunnel_one".to_vec()),
        p1_enc: v(&["AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16"]),
        p1_integ: v(&["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"]),
        p1_dh: vec![14, 19],
        p2_enc: v(&["AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16"]),
        p2_integ: v(&["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"]),
        p2_dh: vec![],
        local_ts: net("0.0.0.0", "255.255.255.255"),
        remote_ts: net("0.0.0.0", "255.255.255.255"),
        force_nat_t: false,
        retransmits: 3,
        retransmit_base_s: 1.0,
    }
}

pub fn sends(out: &[Output]) -> Vec<Vec<u8>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

pub fn childs(out: Vec<Output>) -> Vec<ChildSa> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::ChildUp(c) => Some(*c),
            _ => None,
        })
        .collect()
}

pub fn logs(out: &[Output]) -> String {
    out.iter()
        .filter_map(|o| match o {
            Output::Log(l) | Output::Closed(l) => Some(l.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Run {
    pub a: IkeSa,
    pub b: Option<IkeSa>,
    pub a_out: Vec<Output>,
    pub b_out: Vec<Output>,
}

/// Runs the exchanges to completion, delivering every datagram once.
pub fn establish(ca: Config, cb: Config) -> Run {
    let mut ra = rng(1);
    let mut rb = rng(2);
    let (mut a, first) = IkeSa::initiate(ca, 0.0, &mut ra).unwrap();
    let mut a_out = vec![];
    let mut b_out = vec![];
    let mut to_b = sends(&first);
    a_out.extend(first);
    let mut b: Option<IkeSa> = None;
    for _round in 0..8 {
        let mut to_a = vec![];
        for d in to_b.drain(..) {
            let out = match b.as_mut() {
                Some(b) => b.handle(&d, 0.0, &mut rb),
                None => {
                    let (sa, out) = IkeSa::respond(cb.clone(), &d, 0.0, &mut rb);
                    b = sa;
                    out
                }
            };
            to_a.extend(sends(&out));
            b_out.extend(out);
        }
        if to_a.is_empty() {
            break;
        }
        for d in to_a {
            let out = a.handle(&d, 0.0, &mut ra);
            to_b.extend(sends(&out));
            a_out.extend(out);
        }
    }
    Run { a, b, a_out, b_out }
}

/// Delivers datagrams back and forth until both sides are quiet; returns all outputs.
pub fn pump(
    a: &mut IkeSa,
    b: &mut IkeSa,
    first_to_b: Vec<Vec<u8>>,
    now: f64,
    seed: u64,
) -> (Vec<Output>, Vec<Output>) {
    let (mut ra, mut rb) = (rng(seed), rng(seed + 1));
    let (mut a_out, mut b_out) = (vec![], vec![]);
    let mut to_b = first_to_b;
    for _ in 0..16 {
        let mut to_a = vec![];
        for d in to_b.drain(..) {
            let o = b.handle(&d, now, &mut rb);
            to_a.extend(sends(&o));
            b_out.extend(o);
        }
        if to_a.is_empty() {
            break;
        }
        for d in to_a {
            let o = a.handle(&d, now, &mut ra);
            to_b.extend(sends(&o));
            a_out.extend(o);
        }
    }
    (a_out, b_out)
}

pub fn downs(out: &[Output]) -> Vec<u32> {
    out.iter()
        .filter_map(|o| match o {
            Output::ChildDown { spi_in } => Some(*spi_in),
            _ => None,
        })
        .collect()
}
