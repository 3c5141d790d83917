//! The IKEv1 responder fed arbitrary datagrams: the first as main mode message 1, the rest
//! to the ISAKMP SA it made (its cookies patched in, so they reach main mode, quick mode
//! and informational handling). Never a panic; no IPsec SA and no IKE SA from messages
//! that cannot know the pre-shared key.
#![no_main]
use espd_fuzz::{config, datagrams, rng};
use ike::session::Output;
use ike::v1::{Isakmp, Lifetimes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let d = datagrams(data);
    let Some((first, rest)) = d.split_first() else {
        return;
    };
    let mut r = rng(1);
    let (sa, _) = Isakmp::respond(
        config("192.0.2.1", "192.0.2.2"),
        Lifetimes::default(),
        first,
        0.0,
        &mut r,
    );
    let Some(mut sa) = sa else { return };
    for (k, m) in rest.iter().enumerate() {
        let mut m = m.to_vec();
        if m.len() >= 16 {
            m[..8].copy_from_slice(&sa.ci.to_be_bytes());
            m[8..16].copy_from_slice(&sa.cr.to_be_bytes());
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
