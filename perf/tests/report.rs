//! `perf report` on recorded results (tests/data: two `perf ndr` runs, three loopback runs
//! in one file, a oneway run, a crypto run): one self-contained index.html whose SVG plots
//! carry their axes and series as text, checked here rather than pixels.

use std::path::PathBuf;
use std::process::Command;

fn data(f: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(f)
        .to_string_lossy()
        .into_owned()
}

/// The `<svg>...</svg>` that follows a section's heading.
fn figure<'a>(html: &'a str, heading: &str) -> &'a str {
    let h = html
        .find(&format!("<h2>{heading}</h2>"))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let s = h + html[h..].find("<svg").expect("an svg");
    let e = s + html[s..].find("</svg>").expect("its end") + 6;
    &html[s..e]
}

/// The texts of an SVG's `<text>` elements (axis titles, tick labels, legend entries).
fn texts(svg: &str) -> Vec<String> {
    svg.split("</text>")
        .filter_map(|p| p.rsplit_once('>').map(|(_, t)| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .collect()
}

fn has(svg: &str, text: &str) -> bool {
    texts(svg).iter().any(|t| t == text)
}

#[test]
fn report_has_the_runs_side_by_side_and_the_plots() {
    let out = std::env::temp_dir().join(format!("perf-report-{}", std::process::id()));
    let files = [
        "ndr-gcm-1400.json",
        "ndr-cbc-512.json",
        "loopback-sizes.jsonl",
        "oneway-1400.json",
        "crypto-gcm.json",
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perf"));
    cmd.arg("report");
    for f in files {
        cmd.arg(data(f));
    }
    let r = cmd.arg("--out").arg(&out).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("(7 result(s))"));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Self-contained: no script, nothing loaded from elsewhere (the only URL is the SVG
    // namespace).
    assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains("href="));
    assert_eq!(
        html.matches("http").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
    );
    // The table: a column per result, with machine and commit rows.
    for col in [
        "ndr-gcm-1400",
        "ndr-cbc-512",
        "loopback-sizes#1",
        "loopback-sizes#3",
        "oneway-1400",
        "crypto-gcm",
    ] {
        assert!(html.contains(&format!("<th>{col}</th>")), "{col}");
    }
    assert!(html.contains("<th>commit</th>") && html.contains("<th>CPU flags</th>"));

    // Rate vs packet size: axes, a loopback series over three sizes, NDR and crypto points.
    let f = figure(&html, "Rate vs packet size");
    assert!(has(f, "Inner packet size (bytes)") && has(f, "Mpps"), "{f}");
    assert!(has(f, "loopback aes128-gcm16 [loopback-sizes]"));
    assert!(has(f, "NDR aes128-gcm16 [ndr-gcm-1400]"));
    assert!(has(f, "NDR aes256-cbc+sha256-128 [ndr-cbc-512]"));
    assert!(
        has(f, "crypto seal aes128-gcm16 ipsec-mb [crypto-gcm]")
            || has(f, "crypto seal aes128-gcm16 rustcrypto [crypto-gcm]")
    );
    assert!(has(f, "oneway aes128-gcm16 [oneway-1400]"));
    // A marker per point: the three loopback sizes (one series), two NDRs, the oneway
    // run, the crypto rows.
    let crypto: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("crypto-gcm.json")).unwrap()).unwrap();
    let rows = crypto["rows"].as_array().unwrap().len();
    assert_eq!(f.matches("<circle").count(), 3 + 2 + 1 + rows, "{f}");
    assert!(f.matches("<polyline").count() >= 4 + rows, "{f}");

    // NDR and PDR: two bars per ndr result, both result names on the axis.
    let f = figure(&html, "NDR and PDR");
    assert!(has(f, "NDR") && has(f, "PDR") && has(f, "Mpps"));
    assert!(
        has(f, "aes128-gcm16 1400 [ndr-gcm-1400]")
            && has(f, "aes256-cbc+sha256-128 512 [ndr-cbc-512]")
    );
    // Two bars per result plus the background, the legend's two swatches.
    assert!(f.matches("<rect").count() >= 4 + 2, "{f}");

    // Latency vs load: three percentiles per result, on a log axis over % of NDR.
    let f = figure(&html, "Latency vs load");
    assert!(has(f, "Offered load (% of NDR)") && has(f, "Latency (us, log scale)"));
    for q in ["p50", "p99", "p99.9"] {
        assert!(has(f, &format!("{q} [ndr-gcm-1400]")), "{q}");
    }

    // Search traces: one per ndr result, a marker per trial with a rate (the warm-up has
    // none), filled (no loss) or open (loss).
    for (name, file) in [
        ("ndr-gcm-1400", "ndr-gcm-1400.json"),
        ("ndr-cbc-512", "ndr-cbc-512.json"),
    ] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data(file)).unwrap()).unwrap();
        let with_rate = v["trials"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["rate_pps"].is_number())
            .count();
        let f = figure(&html, &format!("Search trace: {name}"));
        assert!(has(f, "Trial") && has(f, "Offered Mpps"));
        // The markers, plus the legend's two.
        assert_eq!(f.matches("<circle").count(), with_rate + 2, "{name}");
        assert!(has(f, "no loss") && has(f, "loss"));
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn report_names_a_bad_file() {
    let dir = std::env::temp_dir().join(format!("perf-report-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"no\": \"mode\"}").unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_perf"))
        .arg("report")
        .arg(&bad)
        .arg("--out")
        .arg(dir.join("o"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("bad.json: not a perf result"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
