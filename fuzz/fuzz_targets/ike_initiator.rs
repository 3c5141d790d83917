//! The initiator state machine fed arbitrary responses (its SPI patched in): never a panic,
//! whatever the peer chooses; no CHILD_SA from a peer that cannot know the pre-shared key.
#![no_main]
use espd_fuzz::{config, datagrams, rng};
use ike::session::{IkeSa, Output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = rng(2);
    let Ok((mut sa, _)) = IkeSa::initiate(config("192.0.2.1", "192.0.2.2"), 0.0, &mut r) else {
        return;
    };
    for (k, m) in datagrams(data).into_iter().enumerate() {
        let mut m = m.to_vec();
        if m.len() >= 8 {
            m[..8].copy_from_slice(&sa.spi_i.to_be_bytes());
        }
        for o in sa.handle(&m, k as f64, &mut r) {
            assert!(
                !matches!(o, Output::ChildUp(_)),
                "a CHILD_SA without the PSK"
            );
        }
        let _ = sa.handle_timeout(k as f64 + 0.5);
    }
});
