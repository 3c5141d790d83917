//! A deterministic byte generator for tests, benchmarks and fuzz targets: the state
//! machines take their randomness as a parameter, and a seed makes a run repeatable.
//! Not for keys: xorshift is predictable.

/// A boxed random generator, as tests keep one per peer.
pub type Fill = Box<dyn FnMut(&mut [u8])>;

/// A `fill` function (as [`crate::session::IkeSa`] takes) drawing from xorshift64 seeded
/// with `seed`.
pub fn rng(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move |b: &mut [u8]| {
        for o in b {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *o = x as u8;
        }
    }
}
