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
            "--packets",
            "1000",
        ]);
        for k in KEYS {
            assert!(v.get(k).is_some(), "missing key {k}");
        }
        assert!(v["mpps"].as_f64().unwrap() > 0.0);
        assert_eq!(v["drops"], 0, "{v}");
        assert_eq!(v["working_set_packets"], 1000, "{v}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(["oneway", "--packets", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--packets 0: allowed: 1..=1048576"));
}

/// --handoff: every packet crosses the handoff lanes on the encrypting side, nothing is
/// lost; one worker has no one to hand to.
#[test]
fn handoff_runs_count_what_crossed() {
    let v = perf(&[
        "loopback",
        "--workers",
        "2",
        "--tunnels",
        "4",
        "--handoff",
        "--duration",
        "0.5",
        "--json",
        "--packet-size",
        "256",
    ]);
    assert_eq!(v["handoff"], true, "{v}");
    assert_eq!(v["drops"], 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert!(v["handoff_packets"].as_u64().unwrap() > 0, "{v}");
    assert!(
        (v["handoff_share"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{v}"
    );
    let v = perf(&[
        "oneway",
        "--handoff",
        "--duration",
        "0.3",
        "--json",
        "--packet-size",
        "256",
    ]);
    assert_eq!(
        (v["workers"].as_u64(), v["drops"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    assert!(v["handoff_packets"].as_u64().unwrap() > 0, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(["loopback", "--handoff"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--handoff needs --workers 2 or more"));
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

fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(c, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains('{'))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[test]
fn metrics_are_scraped_during_a_loopback_run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args([
            "loopback",
            "--json",
            "--duration",
            "1.5",
            "--tunnels",
            "4",
            "--packet-size",
            "256",
            "--rate",
            "40000",
        ])
        .args([
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--metrics-linger",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // During the run: the counters move.
    let mut during = None;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(m) = scrape(port)
            && metric(&m, "vpn_tunnel_data_out_bytes_total") > 0
        {
            during = Some(m);
            break;
        }
    }
    let during = during.expect("metrics endpoint answered during the run");
    assert!(
        during.contains("vpn_connection_tunnel_state{vpn_id=\"vpn-loopback-0\"} 1"),
        "{during}"
    );
    assert_eq!(during.matches("vpn_tunnel_state{").count(), 4);
    // After the traffic stopped (the endpoint lingers): the totals are final.
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let after = scrape(port).expect("lingering endpoint");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data_out = metric(&after, "vpn_tunnel_data_out_bytes_total");
    let data_in = metric(&after, "vpn_tunnel_data_in_bytes_total");
    assert!(data_out > metric(&during, "vpn_tunnel_data_out_bytes_total"));
    // TunnelDataOut / TunnelDataIn equal the inner bytes the rig sent and received: 256 each.
    assert_eq!(data_out, v["inner_bytes_out"].as_u64().unwrap());
    assert_eq!(data_in, v["inner_bytes_in"].as_u64().unwrap());
    assert_eq!(data_in, v["rx_packets"].as_u64().unwrap() * 256);
    assert_eq!(
        metric(&after, "vpn_tunnel_packets_in_total"),
        v["rx_packets"].as_u64().unwrap()
    );
}

/// The AF_XDP gateway benchmark end to end (root only: namespaces, XDP, AF_XDP). Checks
/// behaviour, not speed: both modes carried traffic and the JSON has its keys.
#[test]
#[cfg(feature = "xdp")]
#[ignore = "needs root (XDP, AF_XDP, network namespaces); the test command runs it as root"]
fn xdp_gateway_benchmark_runs() {
    // The effective uid, from /proc (no libc in this test crate).
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        root,
        "needs root: run as root, or without --include-ignored"
    );
    let v = perf(&[
        "xdp-gateway",
        "--packet-size",
        "64",
        "--duration",
        "1",
        "--json",
    ]);
    let r = &v["xdp_gateway"][0];
    for k in [
        "packet_size",
        "transform",
        "plain_mpps",
        "esp_mpps",
        "ratio",
        "plain",
        "esp",
    ] {
        assert!(r.get(k).is_some(), "missing {k}: {v}");
    }
    assert!(r["plain"]["received"].as_u64().unwrap() > 1000, "{v}");
    assert!(r["esp"]["received"].as_u64().unwrap() > 1000, "{v}");
    assert!(r["ratio"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(r["workers"], 1, "{v}");
    assert_eq!(r["handoff_share"].as_f64(), Some(0.0), "{v}");
    // Two workers on two-queue veths: each tunnel's packets arrive on both queues, so about
    // half of what the workers receive is handed to the owner, and ESP still comes out.
    let v = perf(&[
        "xdp-gateway",
        "--packet-size",
        "64",
        "--duration",
        "1",
        "--workers",
        "2",
        "--json",
    ]);
    let r = &v["xdp_gateway"][0];
    assert_eq!(r["workers"], 2, "{v}");
    assert!(r["esp"]["received"].as_u64().unwrap() > 1000, "{v}");
    let share = r["handoff_share"].as_f64().unwrap();
    assert!((0.3..=0.7).contains(&share), "handoff share {share}: {v}");
}

/// `perf ike`: the rate run and the scale run report their keys and did real work.
#[test]
fn ike_benchmark_runs() {
    let v = perf(&["ike", "--groups", "19", "--seconds", "0.3", "--json"]);
    assert!(v["ike"][0]["established"].as_u64().unwrap() > 0, "{v}");
    assert!(v["ike"][0]["ike_sas_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // --version 1: IKEv1 rows (without and with PFS) beside the IKEv2 one.
    let v = perf(&[
        "ike",
        "--groups",
        "19",
        "--seconds",
        "0.2",
        "--version",
        "1",
        "--json",
    ]);
    let rows = v["ike"].as_array().unwrap();
    let versions: Vec<(u64, bool)> = rows
        .iter()
        .map(|r| (r["version"].as_u64().unwrap(), r["pfs"].as_bool().unwrap()))
        .collect();
    assert_eq!(versions, vec![(2, false), (1, false), (1, true)], "{v}");
    assert!(
        rows.iter().all(|r| r["established"].as_u64().unwrap() > 0),
        "{v}"
    );
    let v = perf(&["ike", "--scale", "20", "--hours", "24", "--json"]);
    assert_eq!(v["tunnels"], 20);
    // At AWS defaults every tunnel rekeys its CHILD_SA 24-26 times and its IKE SA 3 times a day.
    let c = v["child_rekeys"].as_u64().unwrap();
    assert!((20 * 24..=20 * 27).contains(&c), "{v}");
    assert_eq!(v["ike_rekeys"], 60, "{v}");
}

/// `oneway --export-secgw`: the pcap holds the replayed working set behind Ethernet
/// headers, and the configuration ipsec-secgw gets names the keys those packets were made
/// with: every exported ESP packet opens with an SA built from the `sa in` line's key.
#[test]
fn export_secgw_writes_packets_and_a_config_that_matches_them() {
    use engine::crypto::{Backend, Encryption, Integrity, Suite};
    use engine::pkt::PacketBuf;
    use engine::sa::{Direction, InboundSa, SaConfig};
    let dir = std::env::temp_dir().join(format!("perf-secgw-{}", std::process::id()));
    for (transform, suite, words) in [
        (
            "aes128-gcm16",
            Suite::new(Encryption::Aes128Gcm16, Integrity::None).unwrap(),
            ["aead_key", ""],
        ),
        (
            "aes128-cbc+sha1-96",
            Suite::new(Encryption::Aes128Cbc, Integrity::Sha1_96).unwrap(),
            ["cipher_key", "auth_key"],
        ),
    ] {
        let v = perf(&[
            "oneway",
            "--transform",
            transform,
            "--direction",
            "decrypt",
            "--packet-size",
            "64",
            "--packets",
            "8",
            "--duration",
            "0.2",
            "--export-secgw",
            dir.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(v["working_set_packets"], 8, "{v}");
        assert_eq!(
            std::fs::read_to_string(dir.join("secgw.args")).unwrap(),
            "-p 0x3 -u 0x1\n"
        );
        for (file, ty) in [("secgw.cfg", "no-offload"), ("secgw-cpu.cfg", "cpu-crypto")] {
            let cfg = std::fs::read_to_string(dir.join(file)).unwrap();
            let sa_in = cfg
                .lines()
                .find(|l| l.starts_with("sa in 268435456 "))
                .unwrap_or_else(|| panic!("{cfg}"));
            assert!(
                sa_in.ends_with(&format!(
                    "mode ipv4-tunnel src 192.0.2.1 dst 192.0.2.2 type {ty}"
                )),
                "{sa_in}"
            );
            assert!(
                cfg.contains("sp ipv4 in esp protect 268435456 pri 1 dst 16.0.0.0/32"),
                "{cfg}"
            );
            assert!(cfg.contains("rt ipv4 dst 16.0.0.0/32 port 1"), "{cfg}");
            assert!(cfg.contains("rt ipv4 dst 192.0.2.2/32 port 1"), "{cfg}");
            let key = |word: &str| -> Vec<u8> {
                if word.is_empty() {
                    return vec![];
                }
                let t: Vec<&str> = sa_in.split_whitespace().collect();
                let i = t.iter().position(|w| *w == word).unwrap();
                t[i + 1]
                    .split(':')
                    .map(|h| u8::from_str_radix(h, 16).unwrap())
                    .collect()
            };
            let cap = engine::pcap::read(&dir.join("packets.pcap")).unwrap();
            assert_eq!(cap.linktype, engine::pcap::LINKTYPE_ETHERNET);
            assert_eq!(cap.records.len(), 8);
            let cfg = SaConfig::new(
                "check",
                Direction::In,
                0x1000_0000,
                suite,
                key(words[0]),
                key(words[1]),
                "192.0.2.1".parse().unwrap(),
                "192.0.2.2".parse().unwrap(),
            );
            let mut sa = InboundSa::new(cfg, Backend::RustCrypto).unwrap();
            for r in &cap.records {
                assert_eq!(&r.data[12..14], &[0x08, 0x00]);
                assert_eq!(r.data[14 + 9], 50, "IPv4 carrying ESP");
                let mut p = PacketBuf::new();
                p.set(&r.data[14 + 20..]).unwrap();
                engine::esp::decapsulate(&mut sa, &mut p).expect("opens with the exported key");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
