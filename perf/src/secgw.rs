//! The same working set for DPDK's `ipsec-secgw`: `perf oneway --export-secgw DIR` writes
//! the packets it replays (`packets.pcap`, Ethernet frames, for the `net_pcap` PMD's
//! `infinite_rx`) and an `ipsec-secgw` configuration (SP, SA and route rules) with the same
//! SPIs, keys and addresses, so both engines encrypt or decrypt the same bytes.
//! `perf/secgw/compare.py` runs both on one core and prints the ratio.
//!
//! Ports: 0 is the replayed pcap, 1 a `net_null` sink. In ipsec-secgw's words an
//! *unprotected* port faces the network ESP travels on: packets received there are decrypted,
//! packets received on a protected port are encrypted. So encrypt runs with port 1
//! unprotected (`-u 0x2`) and decrypt with port 0 unprotected (`-u 0x1`); `secgw.args` holds
//! the right mask. Every route leads to port 1. The keys written are the benchmark's
//! synthetic ones, never a tunnel's.

use engine::crypto::{Encryption, Integrity, Suite};
use engine::pcap::{LINKTYPE_ETHERNET, Writer};
use std::fmt::Write as _;
use std::io::BufWriter;
use std::net::Ipv4Addr;
use std::path::Path;

/// One tunnel's SA as `ipsec-secgw` needs it.
pub struct SecgwSa {
    pub spi: u32,
    pub enc_key: Vec<u8>,
    pub auth_key: Vec<u8>,
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    /// The inner destination the tunnel's selector matches (host route).
    pub inner_dst: Ipv4Addr,
}

fn hex(k: &[u8]) -> String {
    k.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `ipsec-secgw`'s algorithm words for a suite (examples/ipsec-secgw/sa.c keyword tables).
fn algo(suite: Suite, sa: &SecgwSa) -> String {
    let aead = match suite.enc {
        Encryption::Aes128Gcm16 => Some("aes-128-gcm"),
        Encryption::Aes256Gcm16 => Some("aes-256-gcm"),
        _ => None,
    };
    if let Some(a) = aead {
        // The key is the AES key followed by the 4-byte salt (RFC 4106 section 8.1), as
        // ipsec-secgw reads `aead_key`.
        return format!("aead_algo {a} aead_key {}", hex(&sa.enc_key));
    }
    let cipher = match suite.enc {
        Encryption::Aes128Cbc => "aes-128-cbc",
        _ => "aes-256-cbc",
    };
    let auth = match suite.integ {
        Integrity::Sha1_96 => "sha1-hmac",
        Integrity::Sha256_128 => "sha256-hmac",
        Integrity::Sha384_192 => "sha384-hmac",
        Integrity::Sha512_256 => "sha512-hmac",
        Integrity::None => "null",
    };
    format!(
        "cipher_algo {cipher} cipher_key {} auth_algo {auth} auth_key {}",
        hex(&sa.enc_key),
        hex(&sa.auth_key)
    )
}

/// The configuration text. Both directions are configured whatever the pcap holds
/// (ipsec-secgw refuses an unprotected port without inbound SAs): outbound SAs and policies
/// for the inner destinations, inbound SAs by the same SPIs, routes to port 1 for the
/// tunnel endpoint (encrypted packets) and for each inner destination (decrypted ones). `crypto_type` is each SA's
/// `type` word: `no-offload` (a crypto device queue) or `cpu-crypto` (a synchronous call).
pub fn config(suite: Suite, sas: &[SecgwSa], decrypt: bool, crypto_type: &str) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# written by `perf oneway --export-secgw`: {} {} tunnel(s), packets.pcap holds {}",
        suite,
        sas.len(),
        if decrypt { "ESP" } else { "inner packets" }
    );
    for dir in ["out", "in"] {
        for sa in sas {
            let _ = writeln!(
                c,
                "sp ipv4 {dir} esp protect {} pri 1 dst {}/32 sport 0:65535 dport 0:65535",
                sa.spi, sa.inner_dst
            );
        }
        for sa in sas {
            let _ = writeln!(
                c,
                "sa {dir} {} {} mode ipv4-tunnel src {} dst {} type {crypto_type}",
                sa.spi,
                algo(suite, sa),
                sa.outer_src,
                sa.outer_dst
            );
        }
    }
    let mut dsts: Vec<Ipv4Addr> = sas.iter().map(|s| s.outer_dst).collect();
    dsts.sort();
    dsts.dedup();
    for d in dsts {
        let _ = writeln!(c, "rt ipv4 dst {d}/32 port 1");
    }
    for sa in sas {
        let _ = writeln!(c, "rt ipv4 dst {}/32 port 1", sa.inner_dst);
    }
    c
}

/// Writes `packets.pcap` (each IPv4 packet behind an Ethernet header), `secgw.args` (the
/// application options that depend on the direction) and the two configurations `secgw.cfg` (no-offload: a crypto device queue) and `secgw-cpu.cfg` (cpu-crypto) into `dir`.
pub fn export(
    dir: &Path,
    suite: Suite,
    sas: &[SecgwSa],
    decrypt: bool,
    pkts: &[Vec<u8>],
) -> Result<(), String> {
    let at = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| format!("{p}: {e}")
    };
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let path = dir.join("packets.pcap");
    let f = std::fs::File::create(&path).map_err(at(&path))?;
    let mut w = Writer::new(BufWriter::new(f), LINKTYPE_ETHERNET, false).map_err(at(&path))?;
    // Destination 02:00:00:00:00:01 (the port), source 02:00:00:00:00:02, IPv4.
    let eth = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    for p in pkts {
        w.write(0, 0, &eth, p).map_err(at(&path))?;
    }
    w.finish().map_err(at(&path))?;
    let args = dir.join("secgw.args");
    let mask = if decrypt { "0x1" } else { "0x2" };
    std::fs::write(&args, format!("-p 0x3 -u {mask}\n")).map_err(at(&args))?;
    for (name, ty) in [("secgw.cfg", "no-offload"), ("secgw-cpu.cfg", "cpu-crypto")] {
        let p = dir.join(name);
        std::fs::write(&p, config(suite, sas, decrypt, ty)).map_err(at(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> SecgwSa {
        SecgwSa {
            spi: 0x1000_0000,
            enc_key: vec![0xab; 20],
            auth_key: vec![],
            outer_src: Ipv4Addr::new(192, 0, 2, 1),
            outer_dst: Ipv4Addr::new(192, 0, 2, 2),
            inner_dst: Ipv4Addr::new(16, 0, 0, 0),
        }
    }

    #[test]
    fn gcm_encrypt_config_names_the_aead_key_with_its_salt() {
        let s = Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap();
        let c = config(s, &[sa()], false, "cpu-crypto");
        assert!(c.contains("sp ipv4 out esp protect 268435456 pri 1 dst 16.0.0.0/32"));
        assert!(c.contains(&format!(
            "sa out 268435456 aead_algo aes-128-gcm aead_key {} mode ipv4-tunnel src 192.0.2.1 dst 192.0.2.2 type cpu-crypto",
            vec!["ab"; 20].join(":")
        )));
        assert!(c.contains("rt ipv4 dst 192.0.2.2/32 port 1"));
    }

    #[test]
    fn cbc_decrypt_config_routes_inner_packets_to_the_inside_port() {
        let s = Suite::new(Encryption::Aes128Cbc, Integrity::Sha1_96).unwrap();
        let mut a = sa();
        a.enc_key = vec![1; 16];
        a.auth_key = vec![2; 20];
        let c = config(s, &[a], true, "no-offload");
        assert!(c.contains("cipher_algo aes-128-cbc cipher_key 01:01"));
        assert!(c.contains("auth_algo sha1-hmac auth_key 02:02"));
        assert!(c.contains("sa in 268435456"));
        assert!(c.contains("rt ipv4 dst 16.0.0.0/32 port 1"));
    }
}
