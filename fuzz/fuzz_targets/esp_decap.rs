//! ESP decapsulation on arbitrary bytes, for every suite: never a panic, and every packet
//! is accounted for (delivered, or counted under exactly one drop reason).
#![no_main]
use engine::crypto::{Backend, Suite};
use engine::esp;
use engine::pkt::PacketBuf;
use engine::sa::{Direction, InboundSa, SaConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = esp::classify_outer(data);
    for suite in Suite::all() {
        let ek = vec![7u8; suite.enc.enc_key_len()];
        let ik = vec![9u8; suite.integ.key_len()];
        let cfg = SaConfig::new(
            "in",
            Direction::In,
            0x1234,
            suite,
            ek,
            ik,
            "192.0.2.2".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        );
        let mut sa = InboundSa::new(cfg, Backend::RustCrypto).unwrap();
        let mut p = PacketBuf::from_slice(data);
        let _ = esp::decapsulate(&mut sa, &mut p);
        assert_eq!(sa.counters.packets + sa.counters.total_drops(), 1);
    }
});
