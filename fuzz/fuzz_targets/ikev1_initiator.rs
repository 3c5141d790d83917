//! The IKEv1 initiator fed arbitrary answers (its initiator cookie patched in): never a
//! panic, whatever the peer chooses; no SA from a peer that cannot know the pre-shared key.
#![no_main]
use espd_fuzz::{config, datagrams, rng};
use ike::session::Output;
use ike::v1::{Isakmp, Lifetimes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = rng(2);
    let Ok((mut sa, _)) = Isakmp::initiate(
        config("192.0.2.1", "192.0.2.2"),
        Lifetimes::default(),
        0.0,
        &mut r,
    ) else {
        return;
    };
    for (k, m) in datagrams(data).into_iter().enumerate() {
        let mut m = m.to_vec();
        if m.len() >= 8 {
            m[..8].copy_from_slice(&sa.ci.to_be_bytes());
        }
        for o in sa.handle(&m, k as f64, &mut r) {
            assert!(
                !matches!(o, Output::ChildUp(_) | Output::IkeUp),
                "an SA without the PSK"
            );
        }
        let _ = sa.handle_timeout(k as f64 + 0.5, &mut r);
    }
});
