//! What the fuzz targets share: a deterministic RNG, an IKE configuration with every AWS
//! algorithm, and a splitter that turns one fuzz input into several datagrams.

use ike::algorithms::{Cipher, Hash};
use ike::msg::TrafficSelector;
pub use ike::seeded::rng;
use ike::session::Config;
use zeroize::Zeroizing;

fn ciphers() -> Vec<String> {
    Cipher::ALL.iter().map(|c| c.name().to_string()).collect()
}

fn hashes() -> Vec<String> {
    Hash::ALL.iter().map(|h| h.name().to_string()).collect()
}

/// A tunnel's IKE configuration with every AWS algorithm and a cheap DH group first.
pub fn config(local: &str, peer: &str) -> Config {
    Config {
        local_addr: local.parse().unwrap(),
        peer_addr: peer.parse().unwrap(),
        psk: Zeroizing::new(b"fuzz.tunnel".to_vec()),
        p1_enc: ciphers(),
        p1_integ: hashes(),
        p1_dh: vec![19, 14],
        p2_enc: ciphers(),
        p2_integ: hashes(),
        p2_dh: vec![19],
        local_ts: TrafficSelector::any(false),
        remote_ts: TrafficSelector::any(false),
        force_nat_t: false,
        retransmits: 2,
        retransmit_base_s: 1.0,
    }
}

/// Splits an input into datagrams: each is a 2-byte big-endian length and that many bytes.
pub fn datagrams(mut data: &[u8]) -> Vec<&[u8]> {
    let mut v = vec![];
    while data.len() >= 2 && v.len() < 32 {
        let n = (usize::from(data[0]) << 8 | usize::from(data[1])).min(data.len() - 2);
        v.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    v
}
