//! `ike`: the IKEv2 (and IKEv1 main mode) control plane, built as a sans-IO library (quinn
//! style: `handle_datagram(now, bytes)`, `handle_timeout(now)`, `poll_transmit()`,
//! `poll_timeout()`, `poll_event()`) plus a thin thread in `espd`.
//!
//! The exchanges come with the control-plane issue. What is here already are the AWS rules
//! the state machine will apply, as pure functions of their inputs (time and randomness are
//! parameters), tested against the facts of `shared/spec/tunnel-options.md`:
//! - [`rekey`]: when an SA is rekeyed (lifetime, margin, fuzz);
//! - [`proposal`]: which algorithms the responder picks (the lowest local value first);
//! - [`dpd`]: when liveness checks are sent and the peer is declared dead.
//!
//! Nothing here depends on `engine`, so two IKE peers can be tested against each other in
//! one process with a fake clock.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod algorithms;
pub mod cookie;
pub mod dh;
pub mod dpd;
pub mod groups;
pub mod keys;
pub mod msg;
pub mod proposal;
pub mod rekey;
pub mod seeded;
pub mod session;
