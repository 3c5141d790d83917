//! The static `[[sa]]` file (`espd pcap`, `espd run --sa-file`, rigs and tests): a stable
//! contract, parsed and validated into [`engine::sa::SaConfig`]s.
//!
//! Contract: [`load_sa_file`] / [`parse_sa_toml`] reject a bad file with every error at once,
//! each naming the file, the SA, the key, the value and what is allowed. Keys are held in
//! `Zeroizing` buffers and never printed.

use engine::crypto::{Encryption, Integrity, Suite};
use engine::replay;
use engine::sa::{DfPolicy, Direction, SaConfig};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sa: Vec<RawSa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    name: Option<String>,
    direction: Option<String>,
    spi: Option<i64>,
    encryption: Option<String>,
    integrity: Option<String>,
    enc_key: Option<String>,
    int_key: Option<String>,
    tunnel_src: Option<String>,
    tunnel_dst: Option<String>,
    nat_t: Option<bool>,
    natt_sport: Option<i64>,
    natt_dport: Option<i64>,
    esn: Option<bool>,
    replay_window: Option<i64>,
    seq: Option<i64>,
    df_policy: Option<String>,
    mss_clamp: Option<bool>,
    inner_mtu: Option<i64>,
    soft_seq_percent: Option<i64>,
}

/// All the errors of one file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads and validates a static SA file.
pub fn load_sa_file(path: &Path) -> Result<Vec<SaConfig>, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse_sa_toml(&text, &path.display().to_string())
}

fn hex_key(v: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let s: String = v
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let s = s.strip_prefix("0x").unwrap_or(&s);
    hex::decode(s)
        .map(Zeroizing::new)
        .map_err(|_| "is not a hex string".to_string())
}

/// Parses and validates SA TOML text; `origin` names the file in messages.
pub fn parse_sa_toml(text: &str, origin: &str) -> Result<Vec<SaConfig>, ConfigErrors> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("{origin}: {e}")]))?;
    let mut errs = vec![];
    let mut out = vec![];
    if raw.sa.is_empty() {
        errs.push(format!("{origin}: no [[sa]] tables"));
    }
    for (i, r) in raw.sa.into_iter().enumerate() {
        let label = match &r.name {
            Some(n) => format!("{origin}: sa[{i}] \"{n}\""),
            None => format!("{origin}: sa[{i}]"),
        };
        let mut e = |key: &str, msg: String| errs.push(format!("{label}: {key}: {msg}"));
        let name = r.name.clone().unwrap_or_else(|| format!("sa{i}"));
        let direction = match r.direction.as_deref() {
            Some("out") => Some(Direction::Out),
            Some("in") => Some(Direction::In),
            Some(v) => {
                e(
                    "direction",
                    format!("{v:?} is not allowed; allowed: \"out\", \"in\""),
                );
                None
            }
            None => {
                e("direction", "missing; allowed: \"out\", \"in\"".into());
                None
            }
        };
        let spi = match r.spi {
            Some(v) if (256..=u32::MAX as i64).contains(&v) => Some(v as u32),
            Some(v) => {
                e(
                    "spi",
                    format!(
                        "{v:#x} is out of range; allowed: 0x100..=0xffffffff (1..255 are reserved, RFC 4303 section 2.1)"
                    ),
                );
                None
            }
            None => {
                e("spi", "missing; an integer such as 0x0a0b0c0d".into());
                None
            }
        };
        let enc = match r.encryption.as_deref().map(str::parse::<Encryption>) {
            Some(Ok(x)) => Some(x),
            Some(Err(m)) => {
                e("encryption", m);
                None
            }
            None => {
                e(
                    "encryption",
                    "missing; allowed: aes128-gcm16, aes256-gcm16, aes128-cbc, aes256-cbc".into(),
                );
                None
            }
        };
        let integ = match r.integrity.as_deref().map(str::parse::<Integrity>) {
            Some(Ok(x)) => Some(x),
            Some(Err(m)) => {
                e("integrity", m);
                None
            }
            None => {
                e(
                    "integrity",
                    "missing; allowed: none (GCM), sha1-96, sha256-128, sha384-192, sha512-256"
                        .into(),
                );
                None
            }
        };
        let suite = match (enc, integ) {
            (Some(a), Some(b)) => match Suite::new(a, b) {
                Ok(s) => Some(s),
                Err(m) => {
                    e("integrity", m);
                    None
                }
            },
            _ => None,
        };
        let enc_key = match r.enc_key.as_deref().map(hex_key) {
            Some(Ok(k)) => Some(k),
            Some(Err(m)) => {
                e("enc_key", m);
                None
            }
            None => {
                e("enc_key", "missing; hex".into());
                None
            }
        };
        let int_key = match r.int_key.as_deref().map(hex_key) {
            Some(Ok(k)) => Some(k),
            Some(Err(m)) => {
                e("int_key", m);
                None
            }
            None => Some(Zeroizing::new(vec![])),
        };
        if let (Some(s), Some(k)) = (suite, &enc_key)
            && k.len() != s.enc.enc_key_len()
        {
            let what = if s.enc.is_gcm() {
                "key followed by the 4-byte salt"
            } else {
                "the AES key"
            };
            e(
                "enc_key",
                format!(
                    "{} bytes is the wrong length for {}; allowed: {} bytes ({what})",
                    k.len(),
                    s.enc.name(),
                    s.enc.enc_key_len()
                ),
            );
        }
        if let (Some(s), Some(k)) = (suite, &int_key)
            && k.len() != s.integ.key_len()
        {
            let allowed = if s.integ == Integrity::None {
                "none (GCM takes no int_key)".to_string()
            } else {
                format!("{} bytes", s.integ.key_len())
            };
            e(
                "int_key",
                format!(
                    "{} bytes is the wrong length for {}; allowed: {allowed}",
                    k.len(),
                    s.integ.name()
                ),
            );
        }
        let mut addr = |key: &str, v: &Option<String>| match v.as_deref().map(str::parse::<IpAddr>)
        {
            Some(Ok(a)) => Some(a),
            Some(Err(_)) => {
                e(
                    key,
                    format!(
                        "{:?} is not an IPv4 or IPv6 address",
                        v.as_deref().unwrap_or("")
                    ),
                );
                None
            }
            None => {
                e(key, "missing; an IPv4 or IPv6 address".into());
                None
            }
        };
        let src = addr("tunnel_src", &r.tunnel_src);
        let dst = addr("tunnel_dst", &r.tunnel_dst);
        if let (Some(a), Some(b)) = (src, dst)
            && a.is_ipv4() != b.is_ipv4()
        {
            e(
                "tunnel_dst",
                format!("{b} is not the same address family as tunnel_src {a}"),
            );
        }
        let mut port = |key: &str, v: Option<i64>| match v {
            None => 4500u16,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                e(key, format!("{p} is out of range; allowed: 1..=65535"));
                4500
            }
        };
        let natt_sport = port("natt_sport", r.natt_sport);
        let natt_dport = port("natt_dport", r.natt_dport);
        let esn = r.esn.unwrap_or(false);
        let replay_window = match r.replay_window {
            None => replay::DEFAULT_WINDOW,
            Some(w) if (replay::MIN_WINDOW as i64..=replay::MAX_WINDOW as i64).contains(&w) => {
                w as u32
            }
            Some(w) => {
                e(
                    "replay_window",
                    format!("{w} is out of range; allowed: 64..=2048"),
                );
                replay::DEFAULT_WINDOW
            }
        };
        let max_seq: i64 = if esn { i64::MAX } else { u32::MAX as i64 };
        let seq = match r.seq {
            None => 1,
            Some(s) if (1..=max_seq).contains(&s) => s as u64,
            Some(s) => {
                e(
                    "seq",
                    format!("{s} is out of range; allowed: 1..={max_seq}"),
                );
                1
            }
        };
        let df_policy = match r.df_policy.as_deref() {
            None | Some("clear") => DfPolicy::Clear,
            Some("honor") => DfPolicy::Honor,
            Some(v) => {
                e(
                    "df_policy",
                    format!("{v:?} is not allowed; allowed: \"clear\", \"honor\""),
                );
                DfPolicy::Clear
            }
        };
        let inner_mtu = match r.inner_mtu {
            None => None,
            Some(m) if (1280..=1446).contains(&m) => Some(m as usize),
            Some(m) => {
                e(
                    "inner_mtu",
                    format!("{m} is out of range; allowed: 1280..=1446 (presets 1399, 1436)"),
                );
                None
            }
        };
        let soft_seq_percent = match r.soft_seq_percent {
            None => 90,
            Some(p) if (1..=99).contains(&p) => p as u8,
            Some(p) => {
                e(
                    "soft_seq_percent",
                    format!("{p} is out of range; allowed: 1..=99"),
                );
                90
            }
        };
        if let (
            Some(direction),
            Some(spi),
            Some(suite),
            Some(enc_key),
            Some(int_key),
            Some(src),
            Some(dst),
        ) = (direction, spi, suite, enc_key, int_key, src, dst)
        {
            out.push(SaConfig {
                name,
                direction,
                spi,
                suite,
                enc_key,
                int_key,
                tunnel_src: src,
                tunnel_dst: dst,
                nat_t: r.nat_t.unwrap_or(false),
                natt_sport,
                natt_dport,
                esn,
                replay_window,
                seq,
                df_policy,
                mss_clamp: r.mss_clamp.unwrap_or(true),
                inner_mtu,
                soft_seq_percent,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &out {
        if s.direction == Direction::In && !seen.insert(s.spi) {
            errs.push(format!("{origin}: sa \"{}\": spi: {:#010x} is used by another \"in\" SA; inbound SPIs must be unique", s.name, s.spi));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[sa]]
name = "t1-out"
direction = "out"
spi = 0x0a0b0c0d
encryption = "aes128-gcm16"
integrity = "none"
enc_key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"

[[sa]]
name = "t1-in"
direction = "in"
spi = 0x01020304
encryption = "aes256-cbc"
integrity = "sha512-256"
enc_key = "000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f"
int_key = "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
tunnel_src = "2001:db8::2"
tunnel_dst = "2001:db8::1"
nat_t = true
esn = true
replay_window = 64
"#;

    #[test]
    fn parses_good_file() {
        let v = parse_sa_toml(GOOD, "good.toml").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].spi, 0x0a0b0c0d);
        assert_eq!(v[0].inner_mtu(), 1446);
        assert_eq!(v[1].replay_window, 64);
        assert!(
            !format!("{:?}", v[1]).contains("000102"),
            "Debug must not print keys"
        );
    }

    #[test]
    fn every_error_named() {
        let bad = GOOD
            .replace("aes128-gcm16", "aes128-gcm8")
            .replace("replay_window = 64", "replay_window = 4096")
            .replace("\"2001:db8::1\"", "\"192.0.2.9\"");
        let e = parse_sa_toml(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "bad.toml: sa[0] \"t1-out\": encryption: unknown encryption \"aes128-gcm8\""
            ),
            "{e}"
        );
        assert!(
            e.contains("sa[1] \"t1-in\": replay_window: 4096 is out of range; allowed: 64..=2048"),
            "{e}"
        );
        assert!(e.contains("tunnel_dst"), "{e}");
    }

    #[test]
    fn key_length_errors() {
        let bad = GOOD.replace("0c0d0e0f10111213\"", "0c0d0e0f\"");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(
            e.contains("enc_key: 16 bytes is the wrong length for aes128-gcm16; allowed: 20 bytes"),
            "{e}"
        );
        let bad = GOOD.replace("integrity = \"none\"", "integrity = \"sha1-96\"");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(e.contains("integrity must be \"none\""), "{e}");
    }

    #[test]
    fn unknown_key_rejected() {
        let bad = GOOD.replace("esn = true", "esn = true\nreplay_windw = 5");
        let e = parse_sa_toml(&bad, "f").unwrap_err().to_string();
        assert!(e.contains("replay_windw"), "{e}");
    }
}
