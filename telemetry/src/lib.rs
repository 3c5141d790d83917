//! `telemetry`: what espd and the `perf` rig export about their tunnels.
//!
//! - [`metrics`]: AWS-style tunnel metrics in the Prometheus text format;
//! - [`http`]: the `/metrics` HTTP endpoint (hyper on a one-thread tokio runtime);
//! - [`serve`]: the bounds every local server applies to its clients (the metrics endpoint
//!   and espd's control socket).
//!
//! Contract: no packet-path code; rendering is a pure function of a snapshot, and serving
//! runs on threads of its own.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod http;
pub mod metrics;
pub mod serve;
