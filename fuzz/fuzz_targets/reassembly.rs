//! Outer/inner reassembly fed arbitrary fragments under small limits: never a panic, the
//! table never holds more than its limits, and after the timeout it holds nothing.
#![no_main]
use engine::frag::{ReasmLimits, Reassembler};
use engine::pkt::PacketBuf;
use espd_fuzz::datagrams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ReasmLimits {
        max_datagrams: 4,
        max_bytes: 1 << 16,
        max_datagram: 65535,
        timeout: 30.0,
        max_fragments: 8,
        max_per_source: 2,
    };
    let mut r = Reassembler::new(limits);
    let mut out = PacketBuf::with_capacity(0);
    for (k, f) in datagrams(data).into_iter().enumerate() {
        let _ = r.insert(k as f64, f, &mut out);
        assert!(r.pending() <= limits.max_datagrams);
        assert!(r.stats.bytes <= limits.max_bytes);
    }
    r.expire(1e9);
    assert_eq!((r.pending(), r.stats.bytes), (0, 0));
});
