//! The responder state machine fed arbitrary datagrams: the first as an IKE_SA_INIT request,
//! the rest to the SA it made (with its SPIs patched in, so they reach the exchanges). Never
//! a panic; no CHILD_SA comes out of messages that cannot know the pre-shared key.
#![no_main]
use espd_fuzz::{config, datagrams, rng};
use ike::session::{IkeSa, Output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = datagrams(data);
    let Some((first, rest)) = d.split_first() else {
        return;
    };
    let mut r = rng(1);
    let (sa, _) = IkeSa::respond(config("192.0.2.1", "192.0.2.2"), first, 0.0, &mut r);
    let Some(mut sa) = sa else { return };
    for (k, m) in rest.iter().enumerate() {
        let mut m = m.to_vec();
        if m.len() >= 16 {
            m[..8].copy_from_slice(&sa.spi_i.to_be_bytes());
            m[8..16].copy_from_slice(&sa.spi_r.to_be_bytes());
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
