//! Encrypt and decrypt bursts of 32 for each transform at 64, 512, 1400 bytes and IMIX, for
//! each backend, with the raw transform call on the same buffers as the baseline in the same
//! group. After criterion, a ratio table (ESP path / raw crypto) is printed from medians
//! measured in this process. Filter with the usual criterion argument, e.g.
//! `cargo bench -p benches -- aes128-gcm16`.

use benches::{BURST, Fixture, Size};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use engine::crypto::{Backend, Suite};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIZES: [Size; 4] = [
    Size::Fixed(64),
    Size::Fixed(512),
    Size::Fixed(1400),
    Size::Imix,
];

fn bench(c: &mut Criterion) {
    for suite in Suite::all() {
        for backend in Backend::available_all() {
            let mut g = c.benchmark_group(format!("{suite}/{}", backend.name()));
            g.warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(800))
                .sample_size(20);
            for size in SIZES {
                let mut f = Fixture::new(suite, backend, size);
                g.throughput(Throughput::Bytes(f.inner_bytes));
                g.bench_function(BenchmarkId::new("raw-seal", size.label()), |b| {
                    b.iter(|| black_box(&mut f).raw_seal())
                });
                g.bench_function(BenchmarkId::new("encap", size.label()), |b| {
                    b.iter(|| black_box(&mut f).encap())
                });
                g.bench_function(BenchmarkId::new("raw-open", size.label()), |b| {
                    b.iter(|| black_box(&mut f).raw_open())
                });
                g.bench_function(BenchmarkId::new("decap", size.label()), |b| {
                    b.iter(|| black_box(&mut f).decap())
                });
            }
            g.finish();
        }
    }
}

/// Median ns per call of `a` and of `b`, measured in alternating rounds of about 10 ms so
/// that noise from the machine (a shared VM) hits both alike.
fn paired_median_ns(mut a: impl FnMut(), mut b: impl FnMut(), rounds: usize) -> (f64, f64) {
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            a();
        }
        if t.elapsed() > Duration::from_millis(10) {
            break;
        }
        n *= 2;
    }
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_nanos() as f64 / n as f64
    };
    let (mut va, mut vb) = (vec![], vec![]);
    for _ in 0..rounds {
        va.push(time(&mut a));
        vb.push(time(&mut b));
    }
    va.sort_by(|x, y| x.partial_cmp(y).unwrap());
    vb.sort_by(|x, y| x.partial_cmp(y).unwrap());
    (va[rounds / 2], vb[rounds / 2])
}

fn ratio_report(filter: Option<&str>) {
    println!(
        "\nESP path vs raw crypto on the same buffers (burst of {BURST}, median of 11 alternating rounds; ratio = raw time / ESP time):"
    );
    println!(
        "{:<26} {:<10} {:>5} | {:>9} {:>9} {:>6} {:>7} | {:>9} {:>9} {:>6} {:>7}",
        "transform",
        "backend",
        "size",
        "seal ns",
        "encap ns",
        "ratio",
        "Gbps",
        "open ns",
        "decap ns",
        "ratio",
        "Mpps"
    );
    for suite in Suite::all() {
        for backend in Backend::available_all() {
            let name = format!("{suite}/{}", backend.name());
            if filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            for size in SIZES {
                let mut f = Fixture::new(suite, backend, size);
                let bytes = f.inner_bytes as f64;
                let f = std::cell::RefCell::new(&mut f);
                let (rs, en) =
                    paired_median_ns(|| f.borrow_mut().raw_seal(), || f.borrow_mut().encap(), 11);
                let (ro, de) =
                    paired_median_ns(|| f.borrow_mut().raw_open(), || f.borrow_mut().decap(), 11);
                println!(
                    "{:<26} {:<10} {:>5} | {:>9.0} {:>9.0} {:>5.0}% {:>7.2} | {:>9.0} {:>9.0} {:>5.0}% {:>7.2}",
                    suite.to_string(),
                    backend.name(),
                    size.label(),
                    rs / BURST as f64,
                    en / BURST as f64,
                    100.0 * rs / en,
                    bytes * 8.0 / en,
                    ro / BURST as f64,
                    de / BURST as f64,
                    100.0 * ro / de,
                    BURST as f64 * 1e3 / de
                );
            }
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    if std::env::var_os("ESPD_BENCH_RATIOS_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    ratio_report(filter.as_deref());
}
