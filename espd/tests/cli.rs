//! The `espd` binary's file contracts: `espd mtu --json` keys and values, every SA file in
//! configs/ loads, the bundled sample captures round-trip through `espd pcap`, and the
//! control commands' errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn espd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_espd"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn mtu_json_contract() {
    let out = espd().args(["mtu", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 20);
    for r in rows {
        for k in [
            "encryption",
            "integrity",
            "nat_t",
            "mtu",
            "mss_ipv4",
            "mss_ipv6_in_ipv4",
        ] {
            assert!(r.get(k).is_some(), "missing {k}");
        }
    }
    let find = |e: &str, i: &str, n: bool| {
        rows.iter()
            .find(|r| r["encryption"] == e && r["integrity"] == i && r["nat_t"] == n)
            .unwrap()["mtu"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(find("aes128-gcm16", "none", false), 1446);
    assert_eq!(find("aes256-cbc", "sha512-256", true), 1406);
}

#[test]
fn every_sa_file_in_configs_loads() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && std::fs::read_to_string(&p).unwrap().contains("[[sa]]")
        {
            espd::static_sa::load_sa_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2);
}

/// Runs `espd pcap OP --json EXTRA --sa SA --in IN --out OUT`; returns the JSON and stderr.
fn pcap_json(
    op: &str,
    extra: &[&str],
    sa: &Path,
    input: &Path,
    output: &Path,
) -> (serde_json::Value, String) {
    let out = espd()
        .args(["pcap", op, "--json"])
        .args(extra)
        .arg("--sa")
        .arg(sa)
        .arg("--in")
        .arg(input)
        .arg("--out")
        .arg(output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

#[test]
fn sample_captures_roundtrip() {
    let dir = std::env::temp_dir().join(format!("espd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sa = root().join("configs/static-sa.toml");
    // Decrypt what scapy encrypted (11 packets and one replay).
    let (v, _) = pcap_json(
        "decrypt",
        &[],
        &sa,
        &root().join("configs/pcap/esp-from-scapy.pcap"),
        &dir.join("inner.pcap"),
    );
    assert_eq!(v["sas"][0]["packets"], 11);
    assert_eq!(v["sas"][0]["drops"]["replay"], 1);
    // Encrypt the plaintext sample: the 3000-byte datagram becomes 3 ESP packets.
    let (v, stderr) = pcap_json(
        "encrypt",
        &["--backend", "rustcrypto"],
        &sa,
        &root().join("configs/pcap/inner.pcap"),
        &dir.join("esp.pcap"),
    );
    assert_eq!(v["sas"][0]["packets"], 14);
    assert_eq!(v["sas"][0]["frag_before_encrypt_fragments"], 3);
    assert_eq!(v["sas"][0]["mss_clamped"], 1);
    assert!(
        stderr.contains("sa \"a-to-b\" out spi 0x0a0b0c0d aes128-gcm16"),
        "{stderr}"
    );
    let pcap = engine::pcap::read(&dir.join("esp.pcap")).unwrap();
    assert!(pcap.records.iter().all(|r| r.data.len() - 14 <= 1500));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn errors_name_file_sa_key() {
    let dir = std::env::temp_dir().join(format!("espd-cli-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "[[sa]]\nname = \"x\"\ndirection = \"out\"\nspi = 0x100\nencryption = \"aes128-cbc\"\nintegrity = \"sha256-128\"\nenc_key = \"00\"\nint_key = \"00\"\ntunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n",
    )
    .unwrap();
    let out = espd()
        .args(["pcap", "encrypt", "--sa"])
        .arg(&f)
        .args(["--in", "/nonexistent", "--out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bad.toml: sa[0] \"x\": enc_key: 1 bytes is the wrong length for aes128-cbc; allowed: 16 bytes"), "{e}");
    assert!(
        e.contains("int_key: 1 bytes is the wrong length for sha256-128; allowed: 32 bytes"),
        "{e}"
    );
    let out = espd()
        .args(["pcap", "encrypt", "--backend", "openssl", "--sa"])
        .arg(&f)
        .args(["--in", "x", "--out", "y"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed: auto, rustcrypto, ipsec-mb"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rekey_and_show_say_what_is_wrong() {
    let out = espd()
        .args(["rekey", "t1", "--what", "phase3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("rekey --what \"phase3\": allowed: ike, child"),
        "{e}"
    );
    let out = espd()
        .args(["rekey", "t1", "--socket", "/nonexistent/espd.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot reach espd at control socket /nonexistent/espd.sock"),
        "{e}"
    );
}

/// `espd man` renders the espd(1) page with every subcommand; `espd completions` covers
/// them too (clap generates both from the same definition as the parser).
#[test]
fn man_page_and_completions() {
    let out = espd().arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.contains(".TH espd 1"), "{man}");
    for sub in [
        "run",
        "show",
        "rekey",
        "pcap",
        "mtu",
        "crypto",
        "check\\-config",
        "export\\-config",
    ] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = espd().args(["completions", shell]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success() && text.contains("export-config"),
            "{shell}"
        );
    }
    let out = espd().args(["completions", "tcsh"]).output().unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// The systemd unit in configs/ calls espd with arguments espd accepts: each Exec line, run
/// with a config path that does not exist, fails on the file (not on its arguments).
#[test]
fn systemd_unit_arguments_parse() {
    let unit = std::fs::read_to_string(root().join("configs/espd.service")).unwrap();
    assert!(unit.contains("Type=notify"));
    let mut n = 0;
    for line in unit.lines() {
        let Some(cmd) = line
            .strip_prefix("ExecStart=")
            .or_else(|| line.strip_prefix("ExecStartPre="))
        else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/espd"));
        let args: Vec<String> = words
            .map(|w| w.replace("/etc/espd/espd.toml", "/nonexistent/espd.toml"))
            .collect();
        let out = espd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains("/nonexistent/espd.toml") && !err.contains("Usage:"),
            "{args:?}: {err}"
        );
        n += 1;
    }
    assert_eq!(n, 2, "ExecStartPre and ExecStart");
}
