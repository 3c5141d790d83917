//! `perf` runs end to end (short durations): the JSON contract of loopback and oneway, zero
//! loss and zero drops in a clean run, every packet verified by the sink.

use std::process::Command;

fn perf(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perf {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const KEYS: &[&str] = &[
    "transform",
    "packet_size",
    "tunnels",
    "workers",
    "duration_s",
    "tx_packets",
    "rx_packets",
    "drops",
    "drops_by_reason",
    "mpps",
    "gbps_inner",
    "latency_us",
    "baseline_crypto_mpps",
    "ratio_to_baseline",
];

#[test]
fn loopback_clean_runs_deliver_everything() {
    for args in [
        vec!["--transform", "aes128-gcm16", "--packet-size", "64"],
        vec![
            "--transform",
            "aes256-cbc+sha256-128",
            "--packet-size",
            "imix",
            "--nat-t",
        ],
        vec![
            "--transform",
            "aes128-cbc+sha1-96",
            "--packet-size",
            "1400",
            "--tunnels",
            "1000",
            "--ipv6-outer",
        ],
        vec![
            "--transform",
            "aes256-gcm16",
            "--packet-size",
            "1500",
            "--workers",
            "2",
            "--rate",
            "20000",
        ],
    ] {
        let mut a = vec!["loopback", "--duration", "0.5", "--json"];
        a.extend(args.iter());
        let v = perf(&a);
        for k in KEYS {
            assert!(v.get(k).is_some(), "missing key {k} in {v}");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(v["latency_us"].get(k).is_some());
        }
        assert!(v["tx_packets"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["tx_packets"], v["rx_packets"], "{v}");
        assert_eq!(v["drops"], 0, "{v}");
        assert_eq!(v["out_of_order_gaps"], 0, "{v}");
    }
}

#[test]
fn oneway_both_directions() {
    for dir in ["encrypt", "decrypt"] {
        let v = perf(&[
            "oneway",
            "--direction",
            dir,
            "--duration",
            "0.3",
            "--json",
            "--packet-size",
            "512",
            "--tunnels",
            "10",
        ]);
        for k in KEYS {
            assert!(v.get(k).is_some(), "missing key {k}");
        }
        assert!(v["mpps"].as_f64().unwrap() > 0.0);
        assert_eq!(v["drops"], 0, "{v}");
    }
}

#[test]
fn bad_flags_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(["loopback", "--tunnels", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tunnels 0: allowed: 1..=100000"));
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(["loopback", "--transform", "aes128-ccm"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed: aes128-gcm16"));
}
