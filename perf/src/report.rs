//! `perf report FILE.json... --out DIR`: the results of `perf ndr`, `loopback`, `oneway` and
//! `crypto --json` as one self-contained `DIR/index.html` (no script, no network): a table
//! of the runs side by side (machine, commit, setup, headline numbers) and SVG plots drawn
//! with `plotters`:
//!
//! - rate vs inner packet size, one series per (kind, transform, file);
//! - NDR and PDR bars, one pair per `perf ndr` result;
//! - latency percentiles (p50, p99, p99.9) vs load (% of NDR), per `perf ndr` result;
//! - the search trace of each `perf ndr` result: offered rate per trial, passing trials as
//!   filled circles, lossy ones as open circles.
//!
//! Each file holds one JSON object, or several (one per line). Text stays text in the SVG
//! (no font library), so tests read axis titles and series names from it.

use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;

/// One result and where it came from.
#[derive(Clone, Debug)]
pub struct Run {
    /// The file's name without its directory and `.json`, with the object's index when the
    /// file holds several.
    pub label: String,
    /// The file's name without its directory and `.json`: series over several results of
    /// one file (a loopback run per packet size) are named by it.
    pub file: String,
    pub v: Value,
}

/// Reads the result files.
pub fn load(paths: &[std::path::PathBuf]) -> Result<Vec<Run>, String> {
    let mut runs = vec![];
    for p in paths {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
        let stem = p
            .file_name()
            .map(|s| {
                let s = s.to_string_lossy();
                s.strip_suffix(".jsonl")
                    .or_else(|| s.strip_suffix(".json"))
                    .unwrap_or(&s)
                    .to_string()
            })
            .unwrap_or_default();
        let objs: Vec<Value> = match serde_json::from_str::<Value>(&text) {
            Ok(v) => vec![v],
            Err(_) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
                .map(|(i, l)| {
                    serde_json::from_str(l)
                        .map_err(|e| format!("{}: line {}: not JSON: {e}", p.display(), i + 1))
                })
                .collect::<Result<_, _>>()?,
        };
        let n = objs.len();
        for (i, v) in objs.into_iter().enumerate() {
            if !v.is_object() || v.get("mode").and_then(Value::as_str).is_none() {
                return Err(format!(
                    "{}: not a perf result (an object with \"mode\": ndr, loopback, oneway or crypto)",
                    p.display()
                ));
            }
            let label = if n > 1 {
                format!("{stem}#{}", i + 1)
            } else {
                stem.clone()
            };
            runs.push(Run {
                label,
                file: stem.clone(),
                v,
            });
        }
    }
    if runs.is_empty() {
        return Err("no result files given".into());
    }
    Ok(runs)
}

fn mode(r: &Run) -> &str {
    r.v["mode"].as_str().unwrap_or("")
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: u32 = 860;
const H: u32 = 440;

/// A color per series, distinct for the first ten.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// A line chart (lines with points) of several series. `log_y`: a logarithmic y axis.
fn line_chart(title: &str, x_desc: &str, y_desc: &str, series: &Series, log_y: bool) -> String {
    let mut svg = String::new();
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    let mut y0 = f64::INFINITY;
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !x0.is_finite() {
        return svg;
    }
    if x1 - x0 < 1e-9 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = (x1 - x0) * 0.05;
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64);
        let style = |i: usize| color(i).stroke_width(2);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                let _ = chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .light_line_style(WHITE.mix(0.0))
                    .draw();
                for (i, (name, p)) in series.iter().enumerate() {
                    let c = color(i);
                    if let Ok(a) = chart.draw_series(LineSeries::new(p.iter().copied(), style(i))) {
                        a.label(name.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                        });
                    }
                    let _ = chart
                        .draw_series(p.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())));
                }
                let _ = chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw();
            }};
        }
        if log_y {
            let lo = (y0.max(1e-3) / 2.0).max(1e-3);
            if let Ok(c) = b.build_cartesian_2d(x0 - pad..x1 + pad, (lo..y1 * 2.0).log_scale()) {
                draw!(c);
            }
        } else if let Ok(c) = b.build_cartesian_2d(x0 - pad..x1 + pad, 0.0..y1 * 1.15) {
            draw!(c);
        }
        let _ = root.present();
    }
    svg
}

/// Rate vs inner packet size: loopback and oneway Mpps, `perf ndr`'s NDR, the crypto
/// baseline's seal rate, one series per (kind, transform, file).
fn rate_vs_size(runs: &[Run]) -> String {
    let mut series: Series = vec![];
    let mut add = |name: String, x: f64, y: f64| match series.iter_mut().find(|(n, _)| *n == name) {
        Some((_, p)) => p.push((x, y)),
        None => series.push((name, vec![(x, y)])),
    };
    for r in runs {
        let size = r.v["packet_size"]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .or_else(|| num(&r.v["packet_size"]));
        let t = r.v["transform"].as_str().unwrap_or("?");
        match (mode(r), size) {
            ("loopback" | "oneway", Some(x)) => {
                if let Some(y) = num(&r.v["mpps"]) {
                    add(format!("{} {t} [{}]", mode(r), r.file), x, y);
                }
            }
            ("ndr", Some(x)) => {
                if let Some(y) = num(&r.v["ndr_mpps"]) {
                    add(format!("NDR {t} [{}]", r.label), x, y);
                }
            }
            ("crypto", Some(x)) => {
                for row in r.v["rows"].as_array().into_iter().flatten() {
                    if let (Some(tr), Some(b), Some(y)) = (
                        row["transform"].as_str(),
                        row["backend"].as_str(),
                        num(&row["seal_mpps"]),
                    ) {
                        add(format!("crypto seal {tr} {b} [{}]", r.file), x, y);
                    }
                }
            }
            _ => {}
        }
    }
    for (_, p) in &mut series {
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    line_chart(
        "Rate vs packet size",
        "Inner packet size (bytes)",
        "Mpps",
        &series,
        false,
    )
}

/// NDR and PDR bars, one pair per `perf ndr` result.
fn ndr_bars(ndrs: &[&Run]) -> String {
    let mut svg = String::new();
    if ndrs.is_empty() {
        return svg;
    }
    let top = ndrs
        .iter()
        .filter_map(|r| num(&r.v["pdr_mpps"]))
        .fold(0.0, f64::max)
        .max(1e-6);
    let names: Vec<String> = ndrs
        .iter()
        .map(|r| {
            format!(
                "{} {} [{}]",
                r.v["transform"].as_str().unwrap_or("?"),
                r.v["packet_size"].as_str().unwrap_or("?"),
                r.label
            )
        })
        .collect();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = ndrs.len() as f64;
        let chart = ChartBuilder::on(&root)
            .caption("NDR and PDR", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..top * 1.2);
        if let Ok(mut chart) = chart {
            let labels = names.clone();
            let _ = chart
                .configure_mesh()
                .x_desc("Result")
                .y_desc("Mpps")
                .x_labels(ndrs.len() * 2 + 1)
                .x_label_formatter(&move |x: &f64| {
                    let i = x.floor() as usize;
                    if (x - x.floor() - 0.5).abs() < 0.01 && i < labels.len() {
                        labels[i].clone()
                    } else {
                        String::new()
                    }
                })
                .light_line_style(WHITE.mix(0.0))
                .draw();
            for (k, (name, key)) in [("NDR", "ndr_mpps"), ("PDR", "pdr_mpps")]
                .iter()
                .enumerate()
            {
                let c = color(k);
                let bars = ndrs.iter().enumerate().filter_map(|(i, r)| {
                    let y = num(&r.v[*key])?;
                    let x = i as f64 + 0.1 + 0.4 * k as f64;
                    Some(Rectangle::new([(x, 0.0), (x + 0.38, y)], c.filled()))
                });
                if let Ok(a) = chart.draw_series(bars) {
                    a.label(*name).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                    });
                }
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw();
        }
        let _ = root.present();
    }
    svg
}

/// Latency percentiles vs load (% of the NDR), per `perf ndr` result.
fn latency_vs_load(ndrs: &[&Run]) -> String {
    let mut series: Series = vec![];
    for r in ndrs {
        let Some(at) = r.v["latency_us_at"].as_object() else {
            continue;
        };
        for (q, name) in [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")] {
            let mut p: Vec<(f64, f64)> = at
                .iter()
                .filter_map(|(f, l)| Some((f.parse::<f64>().ok()? * 100.0, num(&l[q])?)))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            series.push((format!("{name} [{}]", r.label), p));
        }
    }
    line_chart(
        "Latency vs load",
        "Offered load (% of NDR)",
        "Latency (us, log scale)",
        &series,
        true,
    )
}

/// The search trace of one `perf ndr` result: offered rate per trial, filled when the trial
/// lost nothing, open when it lost packets.
fn trace(r: &Run) -> String {
    let mut svg = String::new();
    let trials: Vec<(f64, f64, bool, String)> = r.v["trials"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, t)| {
            Some((
                i as f64 + 1.0,
                num(&t["rate_pps"])? / 1e6,
                num(&t["loss_ratio"])? == 0.0,
                t["kind"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect();
    if trials.is_empty() {
        return svg;
    }
    let top = trials.iter().map(|t| t.1).fold(0.0, f64::max);
    let n = r.v["trials"].as_array().map_or(1, Vec::len) as f64;
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(format!("Search trace [{}]", r.label), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n + 1.0, 0.0..top * 1.15);
        if let Ok(mut chart) = chart {
            let _ = chart
                .configure_mesh()
                .x_desc("Trial")
                .y_desc("Offered Mpps")
                .light_line_style(WHITE.mix(0.0))
                .draw();
            let ndr = num(&r.v["ndr_mpps"]).unwrap_or(0.0);
            let green = color(2);
            let red = color(3);
            let _ = chart
                .draw_series(LineSeries::new(
                    vec![(0.0, ndr), (n + 1.0, ndr)],
                    green.mix(0.5),
                ))
                .map(|a| {
                    a.label("NDR").legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], green.mix(0.5))
                    })
                });
            if let Ok(a) = chart.draw_series(
                trials
                    .iter()
                    .filter(|t| t.2)
                    .map(|t| Circle::new((t.0, t.1), 5, green.filled())),
            ) {
                a.label("no loss")
                    .legend(move |(x, y)| Circle::new((x + 6, y), 5, green.filled()));
            }
            if let Ok(a) = chart.draw_series(
                trials
                    .iter()
                    .filter(|t| !t.2)
                    .map(|t| Circle::new((t.0, t.1), 5, red.stroke_width(2))),
            ) {
                a.label("loss")
                    .legend(move |(x, y)| Circle::new((x + 6, y), 5, red.stroke_width(2)));
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw();
        }
        let _ = root.present();
    }
    svg
}

/// One row of the table: a result's value as text.
type Cell = dyn Fn(&Value) -> String;

/// The runs side by side: one column per result.
fn table(runs: &[Run]) -> String {
    let rows: [(&str, &Cell); 12] = [
        ("kind", &|v| v["mode"].as_str().unwrap_or("").into()),
        ("transform", &|v| {
            v["transform"].as_str().unwrap_or("").into()
        }),
        ("packet size", &|v| match &v["packet_size"] {
            Value::String(s) => s.clone(),
            x => x.to_string(),
        }),
        (
            "tunnels / workers",
            &|v| match (v["tunnels"].as_u64(), v["workers"].as_u64()) {
                (Some(t), Some(w)) => format!("{t} / {w}"),
                _ => String::new(),
            },
        ),
        ("Mpps (loopback, oneway)", &|v| {
            num(&v["mpps"]).map_or(String::new(), |x| format!("{x:.4}"))
        }),
        (
            "NDR / PDR Mpps",
            &|v| match (num(&v["ndr_mpps"]), num(&v["pdr_mpps"])) {
                (Some(a), Some(b)) => format!("{a:.4} / {b:.4}"),
                _ => String::new(),
            },
        ),
        (
            "NDR / PDR Gbps inner",
            &|v| match (num(&v["ndr_gbps_inner"]), num(&v["pdr_gbps_inner"])) {
                (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
                _ => num(&v["gbps_inner"]).map_or(String::new(), |x| format!("{x:.2}")),
            },
        ),
        ("trials", &|v| {
            v["trials"]
                .as_array()
                .map_or(String::new(), |t| t.len().to_string())
        }),
        ("CPU", &|v| {
            v["machine"]["cpu_model"].as_str().unwrap_or("").into()
        }),
        ("CPU flags", &|v| {
            v["machine"]["cpu_flags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        }),
        ("backend", &|v| {
            v["machine"]["backend_detail"]
                .as_str()
                .or(v["backend"].as_str())
                .unwrap_or("")
                .into()
        }),
        ("commit", &|v| {
            v["machine"]["commit"].as_str().unwrap_or("").into()
        }),
    ];
    let mut o = String::from("<table>\n<tr><th></th>");
    for r in runs {
        let _ = write!(o, "<th>{}</th>", esc(&r.label));
    }
    o.push_str("</tr>\n");
    for (name, f) in rows {
        let _ = write!(o, "<tr><th>{}</th>", esc(name));
        for r in runs {
            let _ = write!(o, "<td>{}</td>", esc(&f(&r.v)));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    o
}

/// The whole page.
pub fn render(runs: &[Run]) -> String {
    let ndrs: Vec<&Run> = runs.iter().filter(|r| mode(r) == "ndr").collect();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<h1>espd perf report</h1>\n<p>{} result(s): {}</p>\n<h2>Runs side by side</h2>\n{}",
        runs.len(),
        esc(&runs
            .iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")),
        table(runs)
    );
    let mut section = |title: &str, svg: String| {
        if !svg.is_empty() {
            let _ = writeln!(body, "<h2>{}</h2>\n<figure>{svg}</figure>", esc(title));
        }
    };
    section("Rate vs packet size", rate_vs_size(runs));
    section("NDR and PDR", ndr_bars(&ndrs));
    section("Latency vs load", latency_vs_load(&ndrs));
    for r in &ndrs {
        section(&format!("Search trace: {}", r.label), trace(r));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>espd perf report</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
         figure{{margin:0}}</style></head>\n<body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(esc("<a&\"b>"), "&lt;a&amp;&quot;b&gt;");
    }
}
