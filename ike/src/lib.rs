//! `ike`: the IKEv2 control plane (RFC 7296) as a sans-IO library: an [`session::IkeSa`]
//! takes datagrams, `now` and a random generator in, and gives datagrams, CHILD_SA keys,
//! state changes and AWS-style log lines out; `espd::ike_ctl` is the thin shell that owns
//! the sockets and clocks. IKEv1 is not implemented yet (its issue reuses the codec, crypto
//! and policy modules below).
//!
//! - [`session`]: one IKE SA, one module per exchange (`ike_sa_init`, `ike_auth`,
//!   `child_rekey`, `ike_rekey`, `informational`) and what they share (`negotiate`: the
//!   proposals we build and the choices we accept);
//! - [`msg`]: the wire codec (header, payloads, SK encryption framing);
//! - [`keys`], [`dh`], [`groups`]: key derivation, the SK ciphers, Diffie-Hellman;
//! - [`algorithms`]: the one table of AWS algorithm names;
//! - [`proposal`]: which algorithms the responder picks (the lowest local value first);
//! - [`rekey`]: when an SA is rekeyed (lifetime, margin, fuzz);
//! - [`dpd`]: when liveness checks are sent and the peer is declared dead;
//! - [`cookie`]: stateless COOKIEs under IKE_SA_INIT load;
//! - [`seeded`]: a deterministic RNG for tests, benches and fuzz targets.
//!
//! Nothing here depends on `engine`, so two IKE peers can be tested against each other in
//! one process with a fake clock.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod algorithms;
pub mod any;
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
pub mod v1;
