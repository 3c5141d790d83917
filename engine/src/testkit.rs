//! Fixtures shared by the integration tests, the benches, the `perf` rig and the fuzz
//! targets: SA configs and pairs with patterned keys, and patterned inner packets.
//!
//! Contract: for tests and benchmarks only; the helpers panic on misuse instead of
//! returning errors.

use crate::crypto::{Backend, Suite};
use crate::sa::{Direction, InboundSa, OutboundSa, SaConfig};
use crate::wire;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn cfg(suite: Suite, dir: Direction, v6_outer: bool, nat_t: bool, esn: bool) -> SaConfig {
    let (src, dst): (IpAddr, IpAddr) = if v6_outer {
        (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
    } else {
        ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
    };
    let mut c = SaConfig::new(
        format!("{suite}"),
        dir,
        0x1000_0001,
        suite,
        (0..suite.enc.enc_key_len() as u8)
            .map(|i| i.wrapping_mul(7) ^ 0x5c)
            .collect(),
        (0..suite.integ.key_len() as u8)
            .map(|i| i.wrapping_mul(13) ^ 0x36)
            .collect(),
        src,
        dst,
    );
    c.nat_t = nat_t;
    c.esn = esn;
    c
}

/// A matching outbound / inbound pair.
pub fn pair(
    suite: Suite,
    backend: Backend,
    v6_outer: bool,
    nat_t: bool,
    esn: bool,
) -> (OutboundSa, InboundSa) {
    let o = OutboundSa::new(
        cfg(suite, Direction::Out, v6_outer, nat_t, esn),
        backend,
        &[3; 32],
    )
    .unwrap();
    let mut ic = cfg(suite, Direction::In, v6_outer, nat_t, esn);
    std::mem::swap(&mut ic.tunnel_src, &mut ic.tunnel_dst);
    let i = InboundSa::new(ic, backend).unwrap();
    (o, i)
}

/// An IPv4 UDP packet of `len` bytes with a patterned payload.
pub fn udp4(len: usize, df: bool, id: u16, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    wire::write_ipv4_header(
        &mut p,
        len as u16,
        id,
        df,
        64,
        wire::proto::UDP,
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(203, 0, 113, 1),
    );
    wire::put16(&mut p, 20, 1234);
    wire::put16(&mut p, 22, 5678);
    wire::put16(&mut p, 24, (len - 20) as u16);
    for (i, x) in p[28..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    p
}

/// An IPv6 UDP packet of `len` bytes.
pub fn udp6(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    let s: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
    let d: Ipv6Addr = "2001:db8:2::1".parse().unwrap();
    wire::write_ipv6_header(&mut p, (len - 40) as u16, wire::proto::UDP, 64, s, d);
    wire::put16(&mut p, 40, 1234);
    wire::put16(&mut p, 42, 5678);
    wire::put16(&mut p, 44, (len - 40) as u16);
    for (i, x) in p[48..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(17).wrapping_add(seed);
    }
    p
}

/// An IPv4 TCP SYN with an MSS option.
pub fn tcp_syn4(mss: u16) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    wire::write_ipv4_header(
        &mut p,
        44,
        1,
        true,
        64,
        wire::proto::TCP,
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(203, 0, 113, 1),
    );
    let t = &mut p[20..];
    wire::put16(t, 0, 40000);
    wire::put16(t, 2, 443);
    t[12] = 6 << 4; // 24-byte header
    t[13] = 0x02; // SYN
    wire::put16(t, 14, 65535);
    t[20] = 2;
    t[21] = 4;
    wire::put16(t, 22, mss);
    let acc = wire::pseudo_sum(&p[12..16], &p[16..20], wire::proto::TCP, 24);
    let c = wire::csum_fold(wire::csum_add(acc, &p[20..]));
    wire::put16(&mut p, 36, c);
    p
}

/// Strips the outer IP (and UDP) headers of an ESP packet produced by the engine.
pub fn esp_part(outer: &[u8]) -> usize {
    match crate::esp::classify_outer(outer).unwrap() {
        crate::esp::Outer::Esp { esp_off, .. } => esp_off,
        o => panic!("not ESP: {o:?}"),
    }
}
