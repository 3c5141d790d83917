//! Tunnel configuration: every file in configs/ loads; AWS defaults are exact; a table of
//! invalid variants each gets its specific error naming the file, tunnel, option and what is
//! allowed. Numbers refer to the testable facts of shared/spec/README.md.

use espd::config::{self, Config, DpdAction, IkeVersion, StartupAction};

const BASE: &str = r#"
[[tunnel]]
name = "t1"
connection = "c"
outside_ip = "192.0.2.1"
peer_ip = "198.51.100.2"
pre_shared_key = "a.b_c123"
#T1

[[tunnel]]
name = "t2"
connection = "c"
outside_ip = "192.0.2.5"
pre_shared_key = "second.key"
"#;

fn fill(b: &mut [u8]) {
    // Deterministic "randomness" for tests (an LCG per thread).
    thread_local!(static X: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9) });
    X.with(|x| {
        for out in b.iter_mut() {
            x.set(
                x.get()
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
            *out = (x.get() >> 33) as u8;
        }
    });
}

fn parse(text: &str) -> Result<Config, String> {
    config::parse(text, "test.toml", &mut fill).map_err(|e| e.to_string())
}

/// BASE with extra lines in tunnel t1.
fn with(lines: &str) -> Result<Config, String> {
    parse(&BASE.replace("#T1", lines))
}

fn err(lines: &str) -> String {
    with(lines).expect_err(lines)
}

#[test]
fn every_config_in_configs_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if p.extension().is_some_and(|x| x == "toml") && text.contains("[[tunnel]]") {
            config::load(&p, &mut fill).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn aws_defaults_exactly() {
    let c = with("").unwrap();
    let t = &c.tunnels[0];
    assert_eq!(t.dpd_timeout_s, 40); // fact 3
    assert_eq!(t.dpd_timeout_action, DpdAction::Clear); // fact 5
    assert_eq!(t.ike_versions, vec![IkeVersion::V1, IkeVersion::V2]); // fact 6
    assert_eq!(
        t.phase1_dh_groups,
        vec![2, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]
    ); // fact 8
    assert_eq!(
        t.phase2_dh_groups,
        vec![2, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]
    ); // fact 9
    assert_eq!(
        t.phase1_encryption,
        vec!["AES128", "AES256", "AES128-GCM-16", "AES256-GCM-16"]
    ); // fact 10
    assert_eq!(
        t.phase1_integrity,
        vec!["SHA1", "SHA2-256", "SHA2-384", "SHA2-512"]
    ); // fact 11
    assert_eq!((t.phase1_lifetime_s, t.phase2_lifetime_s), (28_800, 3_600)); // facts 14, 15
    assert_eq!((t.rekey_margin_s, t.rekey_fuzz_pct), (270, 100)); // facts 16, 17
    assert_eq!(t.replay_window_size, 1024); // fact 21
    assert_eq!(t.startup_action, StartupAction::Add); // fact 22
    assert_eq!(t.local_ipv4_network_cidr.to_string(), "0.0.0.0/0"); // fact 33
    assert_eq!(t.remote_ipv4_network_cidr.to_string(), "0.0.0.0/0");
    assert!(!t.log_enabled);
    assert_eq!(t.log_output_format, config::LogFormat::Json); // fact 53
    // Inside CIDRs assigned automatically, distinct, outside the reserved blocks.
    assert_eq!(t.tunnel_inside_cidr.len, 30);
    assert_ne!(
        c.tunnels[0].tunnel_inside_cidr,
        c.tunnels[1].tunnel_inside_cidr
    );
    // Fact 32: AWS side N+1, CGW N+2.
    assert_eq!(t.tunnel_inside_cidr.host(1).to_string(), "169.254.10.1");
}

#[test]
fn invalid_variants_get_their_specific_error() {
    let cases: &[(&str, &str)] = &[
        (
            "dpd_timeout_s = 29",
            "dpd_timeout_s: 29 is out of range; allowed: 30..=",
        ), // fact 3
        (
            "dpd_timeout_action = \"reboot\"",
            "dpd_timeout_action: \"reboot\" is not allowed; allowed: \"clear\", \"none\", \"restart\"",
        ),
        (
            "ike_versions = []",
            "ike_versions: an empty list is not allowed",
        ), // fact 6
        (
            "phase1_dh_groups = [1]",
            "phase1_dh_groups: group 1 is not allowed",
        ), // fact 8
        (
            "phase1_dh_groups = [5]",
            "phase1_dh_groups: group 5 is not allowed; allowed: 2, 14,",
        ),
        (
            "phase1_encryption = [\"3DES\"]",
            "phase1_encryption: \"3DES\" is not allowed; allowed: AES128, AES256",
        ), // fact 10
        (
            "phase2_encryption = [\"AES192\"]",
            "phase2_encryption: \"AES192\" is not allowed",
        ),
        (
            "phase2_integrity = [\"MD5\"]",
            "phase2_integrity: \"MD5\" is not allowed; allowed: SHA1, SHA2-256",
        ),
        (
            "phase1_lifetime_s = 899",
            "phase1_lifetime_s: 899 is out of range; allowed: 900..=28800 seconds",
        ), // fact 14
        (
            "phase1_lifetime_s = 28801",
            "phase1_lifetime_s: 28801 is out of range",
        ),
        (
            "phase1_lifetime_s = 900\nphase2_lifetime_s = 900",
            "phase2_lifetime_s: 900 is not below phase1_lifetime_s 900",
        ), // fact 15
        (
            "phase2_lifetime_s = 3601",
            "phase2_lifetime_s: 3601 is out of range; allowed: 900..=3600 seconds",
        ),
        (
            "phase1_lifetime_s = 1.5",
            "phase1_lifetime_s: 1.5 is not a whole number",
        ),
        (
            "rekey_margin_s = 1801",
            "rekey_margin_s: 1801 is out of range; allowed: 60..=1800",
        ), // fact 16
        ("rekey_margin_s = 59", "rekey_margin_s: 59 is out of range"),
        (
            "rekey_fuzz_pct = 101",
            "rekey_fuzz_pct: 101 is out of range; allowed: 0..=100 percent",
        ), // fact 17
        (
            "replay_window_size = 63",
            "replay_window_size: 63 is out of range; allowed: 64..=2048 packets",
        ), // fact 21
        (
            "replay_window_size = 2049",
            "replay_window_size: 2049 is out of range",
        ),
        (
            "startup_action = \"start\"\nike_versions = [\"ikev1\"]",
            "startup_action: \"start\" needs ikev2",
        ), // fact 24
        (
            "tunnel_inside_cidr = \"169.254.6.0/29\"",
            "tunnel_inside_cidr: 169.254.6.0/29 is not allowed; allowed: a /30 inside 169.254.0.0/16",
        ), // fact 28
        (
            "tunnel_inside_cidr = \"10.0.0.0/30\"",
            "tunnel_inside_cidr: 10.0.0.0/30 is not allowed",
        ),
        (
            "tunnel_inside_cidr = \"169.254.3.0/30\"",
            "tunnel_inside_cidr: 169.254.3.0/30 is reserved",
        ), // fact 29
        ("tunnel_inside_cidr = \"169.254.169.252/30\"", "is reserved"),
        (
            "tunnel_inside_cidr = \"169.254.10.1/30\"",
            "has host bits set; did you mean 169.254.10.0/30?",
        ),
        (
            "tunnel_inside_ipv6_cidr = \"fd00::/126\"",
            "tunnel_inside_ipv6_cidr: only allowed with tunnel_inside_ip_version = \"ipv6\"",
        ), // fact 31
        (
            "tunnel_inside_ip_version = \"ipv6\"\ntunnel_inside_ipv6_cidr = \"fe80::/126\"",
            "a /126 inside fd00::/8",
        ),
        (
            "log_output_format = \"xml\"",
            "log_output_format: \"xml\" is not allowed; allowed: \"json\", \"text\"",
        ), // fact 53
        (
            "replay_windw_size = 64",
            "replay_windw_size: unknown option",
        ),
        (
            "nat_t = \"maybe\"",
            "nat_t: \"maybe\" is not allowed; allowed: \"auto\", \"off\", \"force\"",
        ),
        (
            "remote_ipv4_network_cidr = \"10.0.0.0/33\"",
            "remote_ipv4_network_cidr: \"10.0.0.0/33\" is not a CIDR",
        ),
    ];
    for (lines, want) in cases {
        let e = err(lines);
        assert!(e.contains(want), "{lines:?}: want {want:?} in:\n{e}");
        assert!(e.contains("test.toml: tunnel \"t1\""), "{e}");
    }
    // Fact 68: an IPv6 outside address is rejected.
    let e = parse(&BASE.replace("outside_ip = \"192.0.2.1\"", "outside_ip = \"2001:db8::1\""))
        .unwrap_err();
    assert!(
        e.contains(
            "tunnel \"t1\": outside_ip: 2001:db8::1 is IPv6; AWS outside addresses are always IPv4"
        ),
        "{e}"
    );
    // All errors at once.
    let e = err("dpd_timeout_s = 29\nrekey_fuzz_pct = 101\nreplay_window_size = 9");
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn valid_edges_are_accepted() {
    for lines in [
        "dpd_timeout_s = 30",
        "phase1_lifetime_s = 900\nphase2_lifetime_s = 899\nrekey_margin_s = 60", // 899 < 900 fails the range
        "phase1_lifetime_s = 1000\nphase2_lifetime_s = 900\nrekey_margin_s = 450",
        "rekey_margin_s = 1800",
        "replay_window_size = 64",
        "replay_window_size = 2048",
        "rekey_fuzz_pct = 0",
        "phase1_integrity = [\"SHA-1\", \"sha2-256\"]",
        "dpd_timeout_action = \"Restart\"",
        "log_output_format = \"text\"",
        "startup_action = \"start\"",
        "tunnel_inside_cidr = \"169.254.6.0/30\"",
    ] {
        let r = with(lines);
        if lines.contains("899") {
            assert!(r.is_err(), "phase 2 of 899 is below its minimum");
        } else {
            r.unwrap_or_else(|e| panic!("{lines:?}: {e}"));
        }
    }
}

#[test]
fn psk_rules_facts_25_to_27() {
    for (psk, ok) in [
        ("abcdefg", false),
        ("abcdefgh", true),
        (&"a".repeat(64)[..], true),
        (&"a".repeat(65)[..], false),
        ("0abcdefgh", false),
        ("abc-defgh", false),
        ("abc defgh", false),
        ("abc!defgh", false),
        ("a.b_c123", true),
    ] {
        assert_eq!(config::check_psk(psk).is_ok(), ok, "{psk:?}");
        let r = parse(&BASE.replace("a.b_c123", psk));
        assert_eq!(r.is_ok(), ok, "{psk:?}: {r:?}");
        if let Err(e) = r {
            assert!(
                e.contains("pre_shared_key: the configured key is invalid"),
                "{e}"
            );
            assert!(!e.contains(psk), "the key itself must not be echoed: {e}");
        }
    }
    let c = parse(&BASE.replace("pre_shared_key = \"a.b_c123\"", "")).unwrap();
    let t = &c.tunnels[0];
    assert!(t.psk_generated);
    assert_eq!(t.pre_shared_key.len(), 32);
    assert!(t.pre_shared_key.chars().all(|c| c.is_ascii_alphanumeric()));
    assert!(!t.pre_shared_key.starts_with('0'));
    assert!(
        !format!("{t:?}").contains(t.pre_shared_key.as_str()),
        "Debug never prints the PSK"
    );
    for _ in 0..200 {
        let p = config::generate_psk(&mut fill);
        assert!(config::check_psk(&p).is_ok(), "{p}");
    }
}

#[test]
fn connections_have_exactly_two_tunnels_and_unique_inside_cidrs() {
    // Fact 1: one or three tunnels are rejected.
    let one = BASE.replace(
        "connection = \"c\"\noutside_ip = \"192.0.2.5\"",
        "connection = \"d\"\noutside_ip = \"192.0.2.5\"",
    );
    let e = parse(&one).unwrap_err();
    assert!(
        e.contains(
            "connection \"c\": has 1 tunnel(s) (t1); a VPN connection has exactly 2 tunnels"
        ),
        "{e}"
    );
    let three = format!(
        "{BASE}\n[[tunnel]]\nname = \"t3\"\nconnection = \"c\"\noutside_ip = \"192.0.2.9\"\n"
    );
    assert!(parse(&three).unwrap_err().contains("has 3 tunnel(s)"));
    // Fact 30: the same inside /30 twice.
    let dup = BASE
        .replace("#T1", "tunnel_inside_cidr = \"169.254.20.0/30\"")
        .replace(
            "pre_shared_key = \"second.key\"",
            "pre_shared_key = \"second.key\"\ntunnel_inside_cidr = \"169.254.20.0/30\"",
        );
    assert!(
        parse(&dup)
            .unwrap_err()
            .contains("tunnel_inside_cidr: 169.254.20.0/30 is used by another tunnel")
    );
}

#[test]
fn lab_allows_short_lifetimes_and_static_sas() {
    let short = "phase1_lifetime_s = 60\nphase2_lifetime_s = 20\nrekey_margin_s = 5";
    assert!(err(short).contains("phase1_lifetime_s: 60 is out of range"));
    let lab = format!(
        "[lab]\nallow_short_lifetimes = true\n{}",
        BASE.replace("#T1", short)
    );
    let c = parse(&lab).unwrap();
    assert!(c.tunnels[0].lab);
    assert!(c.summary()[0].contains("[lab: short lifetimes allowed]"));
    // Still phase 2 < phase 1 and margin <= phase 2 / 2.
    let bad = format!(
        "[lab]\nallow_short_lifetimes = true\n{}",
        BASE.replace(
            "#T1",
            "phase1_lifetime_s = 20\nphase2_lifetime_s = 20\nrekey_margin_s = 11"
        )
    );
    let e = parse(&bad).unwrap_err();
    assert!(
        e.contains("phase2_lifetime_s: 20 is not below phase1_lifetime_s 20")
            && e.contains("rekey_margin_s: 11 is out of range"),
        "{e}"
    );
    // A bad nested static SA is reported with its tunnel.
    let sa = BASE.replace(
        "#T1",
        "[[tunnel.sa]]\nname = \"x\"\ndirection = \"sideways\"",
    );
    assert!(
        parse(&sa)
            .unwrap_err()
            .contains("tunnel \"t1\": sa[0] \"x\": direction")
    );
}

#[test]
fn check_config_command() {
    let bin = env!("CARGO_BIN_EXE_espd");
    let ok = std::process::Command::new(bin)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/aws-vpn.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(out.lines().count(), 2);
    assert!(!out.contains("example.psk"), "no secrets in the summary");
    let dir = std::env::temp_dir().join(format!("espd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        BASE.replace("#T1", "dpd_timeout_s = 29\nstartup_action = \"begin\""),
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("2 error(s)") && e.contains("bad.toml: tunnel \"t1\": dpd_timeout_s: 29"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

const GATEWAY: &str = r#"
[gateway]
inside_interface = "eth1"
outside_interface = "eth0"
cores = [1]
xdp_mode = "generic"
"#;

#[test]
fn gateway_table_defaults_and_values() {
    let c = parse(&format!("{GATEWAY}\n{}", BASE.replace("#T1", ""))).unwrap();
    let g = c.gateway.expect("gateway");
    assert_eq!(
        (g.inside_interface.as_str(), g.outside_interface.as_str()),
        ("eth1", "eth0")
    );
    assert_eq!(g.cores, vec![1]);
    assert_eq!(g.xdp_mode, config::XdpMode::Generic);
    assert_eq!(g.control_socket, config::DEFAULT_CONTROL_SOCKET);
    assert_eq!(
        (g.frames, g.burst, g.idle_sleep_us, g.zero_copy, g.ike),
        (4096, 64, 0, true, true)
    );
    assert_eq!(g.backend, "auto");
    assert_eq!(g.complete_checksums, config::ChecksumMode::Auto);
    assert!(g.metrics_listen.is_none() && g.inside_next_hop.is_none());
    assert!(g.worker_queues.is_none());
    let m = parse(&format!(
        "{}\n{}",
        GATEWAY.replace(
            "cores = [1]",
            "cores = [1, 0]\nworker_queues = [[0, 2], [1, 3]]"
        ),
        BASE.replace("#T1", "")
    ))
    .unwrap();
    assert_eq!(
        m.gateway.expect("gateway").worker_queues,
        Some(vec![vec![0, 2], vec![1, 3]])
    );
    // Without the table a file is still a valid tunnel config (check-config, export-config).
    assert!(parse(&BASE.replace("#T1", "")).unwrap().gateway.is_none());
}

#[test]
fn gateway_table_errors_name_option_value_and_range() {
    let cases: &[(&str, &str)] = &[
        ("xdp_mode = \"generic\"", "xdp_mode = \"turbo\""),
        ("cores = [1]", "cores = []"),
        ("cores = [1]", "cores = [1, 1]"),
        (
            "outside_interface = \"eth0\"",
            "outside_interface = \"eth1\"",
        ),
        (
            "inside_interface = \"eth1\"",
            "inside_interface = \"this-name-is-too-long\"",
        ),
        ("cores = [1]", "cores = [1]\nframes = 1000"),
        ("cores = [1]", "cores = [1]\nburst = 0"),
        ("cores = [1]", "cores = [1]\nmetrics_listen = \"localhost\""),
        ("cores = [1]", "cores = [1]\nbackend = \"openssl\""),
        ("cores = [1]", "cores = [1]\ninside_next_hop = \"10.0.0\""),
        ("cores = [1]", "cores = [1]\nqueues = 4"),
        ("cores = [1]", "cores = [1]\ncomplete_checksums = \"yes\""),
        ("cores = [1]", "cores = [1, 2]\nworker_queues = [[0]]"),
        (
            "cores = [1]",
            "cores = [1, 2]\nworker_queues = [[0, 1], [1]]",
        ),
        ("cores = [1]", "cores = [1, 2]\nworker_queues = [[0], [64]]"),
        ("cores = [1]", "cores = [1, 2]\nworker_queues = [[0], []]"),
        ("cores = [1]", "cores = [1]\nworker_queues = 3"),
    ];
    let want = [
        "[gateway]: xdp_mode: \"turbo\" is not allowed; allowed: \"native\", \"generic\", \"auto\"",
        "[gateway]: cores: [] is not a non-empty list of CPU ids",
        "[gateway]: cores: 1 is not a distinct CPU id; allowed: 0..=1023",
        "[gateway]: outside_interface: \"eth1\" is also the inside_interface; they must differ",
        "[gateway]: inside_interface: \"this-name-is-too-long\" is not an interface name (1..15 characters)",
        "[gateway]: frames: 1000 is not a power of two; allowed: 256..=65536",
        "[gateway]: burst: 0 is out of range; allowed: 1..=256",
        "[gateway]: metrics_listen: \"localhost\" is not an address:port",
        "[gateway]: backend: \"openssl\" is not allowed; allowed: \"auto\", \"ipsec-mb\", \"rustcrypto\"",
        "[gateway]: inside_next_hop: \"10.0.0\" is not an IP address",
        "[gateway]: queues: unknown option; allowed: inside_interface",
        "[gateway]: complete_checksums: \"yes\" is not allowed; allowed: \"auto\", \"on\", \"off\"",
        "[gateway]: worker_queues: [[0]] has 1 list(s); allowed: one per entry of cores (2)",
        "[gateway]: worker_queues: queue 1 is given to two workers; allowed: one",
        "[gateway]: worker_queues: entry 1: 64 is not a queue number; allowed: 0..=63",
        "[gateway]: worker_queues: entry 1 ([]) is not a non-empty list of queue numbers",
        "[gateway]: worker_queues: 3 is not a list of queue lists, e.g. [[0, 2], [1, 3]]",
    ];
    for ((from, to), want) in cases.iter().zip(want) {
        let text = format!("{}\n{}", GATEWAY.replace(from, to), BASE.replace("#T1", ""));
        let e = parse(&text).expect_err(to);
        assert!(e.contains(&format!("test.toml: {want}")), "{to}: got\n{e}");
    }
}

/// A CIDR's address range (the IKE traffic selectors and the static tunnels' inner policy).
#[test]
fn cidr_ranges() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let c = |a: &str, len| config::Cidr { addr: ip(a), len };
    assert_eq!(
        c("10.2.0.77", 24).range(),
        (ip("10.2.0.0"), ip("10.2.0.255"))
    );
    assert_eq!(
        c("10.2.0.77", 0).range(),
        (ip("0.0.0.0"), ip("255.255.255.255"))
    );
    assert_eq!(
        c("10.2.0.77", 32).range(),
        (ip("10.2.0.77"), ip("10.2.0.77"))
    );
    assert_eq!(
        c("fd00:2::9", 64).range(),
        (ip("fd00:2::"), ip("fd00:2::ffff:ffff:ffff:ffff"))
    );
}

/// IKEv1 has no AES-GCM for its own messages: a tunnel that allows only IKEv1 needs a
/// CBC cipher in phase 1 (error), one that allows both gets a warning that IKEv1 peers
/// will not match; an IKEv1-only tunnel with CBC loads silently.
#[test]
fn ikev1_needs_a_cbc_cipher_in_phase_1() {
    assert!(
        with("ike_versions = [\"ikev1\"]")
            .unwrap()
            .warnings()
            .is_empty()
    );
    let e = err("ike_versions = [\"ikev1\"]\nphase1_encryption = [\"AES128-GCM-16\"]");
    assert!(
        e.contains("phase1_encryption") && e.contains("IKEv1 needs AES128 or AES256"),
        "{e}"
    );
    let w = with("phase1_encryption = [\"AES256-GCM-16\"]")
        .unwrap()
        .warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("IKEv1 peers get NO-PROPOSAL-CHOSEN"),
        "{}",
        w[0]
    );
    assert!(with("").unwrap().warnings().is_empty());
}

/// BGP connection options (limits-and-behaviour section 9): defaults (dynamic routing, as
/// AWS's `StaticRoutesOnly` = false; Amazon ASN 64512, CGW ASN 65000), the Amazon ASN's private ranges
/// and legacy ASNs, the CGW's range and reserved values, the two ASNs differing, bgp_* only
/// with dynamic routing, and the same values on both tunnels of a connection.
#[test]
fn bgp_connection_options() {
    let both = |lines: &str| {
        parse(&BASE.replace("#T1", lines).replace(
            "pre_shared_key = \"second.key\"",
            &format!("pre_shared_key = \"second.key\"\n{lines}"),
        ))
    };
    let c = with("").unwrap();
    let t = &c.tunnels[0];
    assert_eq!(t.routing, config::Routing::Dynamic);
    assert_eq!((t.amazon_side_asn, t.customer_gateway_asn), (64512, 65000));
    assert_eq!(
        both("routing = \"static\"").unwrap().tunnels[0].routing,
        config::Routing::Static
    );
    let c = both(
        "routing = \"dynamic\"\namazon_side_asn = 4200000001\ncustomer_gateway_asn = 65010\nbgp_advertise = [\"10.1.0.0/16\", \"10.3.0.0/24\"]",
    )
    .unwrap();
    let t = &c.tunnels[1];
    assert_eq!(t.routing, config::Routing::Dynamic);
    assert_eq!(
        (t.amazon_side_asn, t.customer_gateway_asn),
        (4200000001, 65010)
    );
    assert_eq!(t.bgp_advertise.len(), 2);
    assert!(both("routing = \"dynamic\"\namazon_side_asn = 7224").is_ok());
    for (lines, want) in [
        (
            "amazon_side_asn = 65535",
            "amazon_side_asn: 65535 is not allowed; allowed: 64512..=65534, 4200000000..=4294967294",
        ),
        (
            "amazon_side_asn = 65000",
            "customer_gateway_asn: 65000 is the Amazon-side ASN",
        ),
        (
            "amazon_side_asn = 100",
            "amazon_side_asn: 100 is not allowed",
        ),
        (
            "customer_gateway_asn = 7224",
            "customer_gateway_asn: 7224 is reserved",
        ),
        (
            "customer_gateway_asn = 17943",
            "customer_gateway_asn: 17943 is reserved",
        ),
        (
            "customer_gateway_asn = 4200000000",
            "customer_gateway_asn: 4200000000 is out of range; allowed: 1..=2147483647",
        ),
        (
            "customer_gateway_asn = 64512",
            "customer_gateway_asn: 64512 is the Amazon-side ASN; the two must differ",
        ),
        ("routing = \"bgp\"", "routing"),
        (
            "tunnel_inside_ip_version = \"ipv6\"",
            "routing: \"dynamic\" (the default) with tunnel_inside_ip_version = \"ipv6\": BGP runs over IPv4 inside addresses only; set routing = \"static\"",
        ),
        (
            "routing = \"dynamic\"\nbgp_advertise = [\"10.0.0.0/33\"]",
            "bgp_advertise",
        ),
        (
            "routing = \"static\"\nbgp_advertise = [\"10.0.0.0/8\"]",
            "routing: \"static\" with bgp_* options",
        ),
    ] {
        let e = both(lines).expect_err(lines);
        assert!(e.contains(want), "{lines}: {e}");
    }
    // A connection option set on one tunnel only.
    let e = with("routing = \"static\"").expect_err("one tunnel");
    assert!(
        e.contains("connection \"c\": routing: tunnels \"t1\" and \"t2\" differ"),
        "{e}"
    );
}

/// Static routes (a static connection's customer-side prefixes, AWS's limit of 100): a
/// connection option, inside the tunnel's customer-side CIDR, not with dynamic routing.
#[test]
fn static_routes_option() {
    let both = |lines: &str| {
        parse(&BASE.replace("#T1", lines).replace(
            "pre_shared_key = \"second.key\"",
            &format!("pre_shared_key = \"second.key\"\n{lines}"),
        ))
    };
    let c = both(
        "routing = \"static\"\nlocal_ipv4_network_cidr = \"10.2.0.0/16\"\nstatic_routes = [\"10.2.1.0/24\", \"10.2.200.0/22\"]",
    )
    .unwrap();
    assert_eq!(c.tunnels[0].static_routes.len(), 2);
    assert!(
        c.summary()[0].contains("routing static (2 route(s): 10.2.1.0/24 10.2.200.0/22)"),
        "{:?}",
        c.summary()
    );
    // None given: the CIDR is the route (no list).
    assert!(
        both("routing = \"static\"").unwrap().tunnels[0]
            .static_routes
            .is_empty()
    );
    let many: Vec<String> = (0..101).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
    for (lines, want) in [
        (
            "routing = \"static\"\nlocal_ipv4_network_cidr = \"10.2.0.0/16\"\nstatic_routes = [\"10.3.0.0/24\"]".to_string(),
            "static_routes: 10.3.0.0/24 is outside the tunnel's customer-side network 10.2.0.0/16 (local_ipv4_network_cidr)",
        ),
        (
            "static_routes = [\"10.3.0.0/24\"]".to_string(),
            "static_routes: with routing = \"dynamic\" (the default): a BGP connection cannot also have static routes",
        ),
        (
            format!("routing = \"static\"\nstatic_routes = [{}]", many.join(", ")),
            "static_routes: 101 routes; at most 100 on a VPN connection (AWS rejects the 101st)",
        ),
        (
            "routing = \"static\"\nstatic_routes = [\"10.3.0.1/24\"]".to_string(),
            "static_routes",
        ),
        (
            "routing = \"static\"\nstatic_routes = \"10.3.0.0/24\"".to_string(),
            "static_routes: \"10.3.0.0/24\" is not a list of CIDRs",
        ),
    ] {
        let e = both(&lines).expect_err(&lines);
        assert!(e.contains(want), "{lines}: {e}");
    }
    let e =
        with("routing = \"static\"\nstatic_routes = [\"10.3.0.0/24\"]").expect_err("one tunnel");
    assert!(
        e.contains("static_routes: tunnels \"t1\" and \"t2\" differ"),
        "{e}"
    );
}
