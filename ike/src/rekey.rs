//! Rekey time (shared/spec/tunnel-options.md 4.4):
//! `rekey_at = lifetime - margin - uniform(0, margin * fuzz / 100)` seconds after the SA was
//! created, a fresh draw per SA and per rekey, from the locally configured lifetimes (not
//! the peer's). A floor of a few seconds keeps extreme settings from rekeying in a storm.

/// Smallest rekey time in seconds (the suggestion of 4.4: no rekey storm).
pub const FLOOR_S: f64 = 2.0;

/// Seconds after SA creation at which to rekey. `u` is a uniform draw in [0, 1).
pub fn rekey_at(lifetime_s: u32, margin_s: u32, fuzz_pct: u32, u: f64) -> f64 {
    let margin = margin_s as f64;
    let window = margin * fuzz_pct.min(100) as f64 / 100.0;
    (lifetime_s as f64 - margin - u.clamp(0.0, 1.0 - f64::EPSILON) * window)
        .max(FLOOR_S.min(lifetime_s as f64))
}

/// The window `[earliest, latest]` the rekey falls in.
pub fn window(lifetime_s: u32, margin_s: u32, fuzz_pct: u32) -> (f64, f64) {
    (
        rekey_at(lifetime_s, margin_s, fuzz_pct, 1.0),
        rekey_at(lifetime_s, margin_s, fuzz_pct, 0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_18_default_windows() {
        // Phase 2 defaults: [3060 s, 3330 s]; phase 1 defaults: [28260 s, 28530 s].
        let (a, b) = window(3600, 270, 100);
        assert!((a - 3060.0).abs() < 1e-6 && b == 3330.0, "{a} {b}");
        let (a, b) = window(28_800, 270, 100);
        assert!((a - 28_260.0).abs() < 1e-6 && b == 28_530.0);
        // Fuzz 0: exactly lifetime - margin.
        assert_eq!(window(3600, 270, 0), (3330.0, 3330.0));
        // The worked examples of 4.4.
        let (a, b) = window(3600, 270, 50);
        assert!((a - 3195.0).abs() < 1e-6 && b == 3330.0);
        let (a, b) = window(3600, 540, 100);
        assert!((a - 2520.0).abs() < 1e-6 && b == 3060.0);
        // Maximum margin: the floor keeps it off zero.
        assert_eq!(window(3600, 1800, 100).0, FLOOR_S);
    }

    #[test]
    fn fuzz_is_uniform_over_the_window() {
        // A deterministic generator: the draws fill the window evenly (10 buckets).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            let t = rekey_at(3600, 270, 100, u);
            assert!((3060.0..=3330.0).contains(&t));
            buckets[(((3330.0 - t) / 27.0) as usize).min(9)] += 1;
        }
        for b in buckets {
            assert!((9_000..11_000).contains(&b), "{buckets:?}");
        }
    }
}
