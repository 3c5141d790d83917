//! `ike`: the IKEv2 (and IKEv1 main mode) control plane, built as a sans-IO library (quinn
//! style: `handle_datagram(now, bytes)`, `handle_timeout(now)`, `poll_transmit()`,
//! `poll_timeout()`, `poll_event()`) plus a thin thread in `espd`.
//!
//! This crate is empty until the control-plane issue lands: the data plane takes static SAs
//! (see `engine::sa`) meanwhile. Nothing here depends on `engine`, so two IKE peers can be
//! tested against each other in one process with a fake clock.
