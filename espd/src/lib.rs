//! `espd`: the appliance around the data plane.
//!
//! - [`gateway`]: `espd run`: the XDP program, AF_XDP ports, pinned workers, the IKE and DH
//!   threads, SIGHUP reloads, the control socket, metrics and tunnel logs;
//! - [`ike_ctl`]: the IKE shell: drives `ike`'s sans-IO sessions per tunnel (timers,
//!   rekeys, DPD) and installs their CHILD_SAs in the workers;
//! - [`config`]: the tunnel configuration with the AWS option names and its validation;
//! - [`static_sa`]: the static `[[sa]]` file;
//! - [`seqstore`]: static SAs' sequence numbers written ahead to the state directory;
//! - [`export`]: customer-gateway configs (strongSwan, generic);
//! - [`bird`]: BGP with BIRD 2 over the tunnel interfaces (espd's side and the CGW's);
//! - [`bgpd`]: BIRD supervised beside `espd run`, and its sessions' states;
//! - [`tunnel_log`]: AWS-format tunnel logs;
//! - [`tunif`]: the tunnel interfaces (a TUN device per tunnel with its inside address);
//! - [`privs`]: dropping capabilities, checking file permissions;
//! - [`diag`]: the daemon's own diagnostics (`tracing`) and systemd readiness;
//! - [`cli`]: the offline commands (`espd pcap`, `espd mtu`, `espd crypto`).
//!
//! Contract: all I/O of the appliance (sockets, files, threads, clocks, signals) lives here
//! or in `afxdp`; the protocol cores it drives (`engine`, `ike`) take time and randomness
//! as parameters.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bgpd;
pub mod bird;
pub mod cli;
pub mod config;
pub mod diag;
pub mod export;
pub mod gateway;
pub mod ike_ctl;
pub mod privs;
pub mod seqstore;
pub mod static_sa;
pub mod tunif;
pub mod tunnel_log;
