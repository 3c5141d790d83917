//! `engine`: the sans-IO data plane of a poll-mode user-space IPsec ESP gateway (RFC 4303
//! tunnel mode) built to terminate AWS Site-to-Site VPN tunnels.
//!
//! Contract: this crate does no network I/O of its own and depends on no I/O, daemon or CLI
//! crate (no libbpf, no AF_XDP, no IKE, no clap). Packets come and go through the
//! [`io::PacketIo`] trait; time and randomness are parameters. The AF_XDP ports live in the
//! `afxdp` crate, the daemon (config, IKE shell, control socket, logs) in `espd`.
//!
//! Layers, from the wire up:
//! - [`wire`]: checked header views, checksums, MSS clamping;
//! - [`crypto`]: the ESP transforms behind one trait, two backends (RustCrypto, ipsec-mb);
//! - [`replay`]: the anti-replay window with ESN;
//! - [`sa`]: an SA's parameters and per-direction state;
//! - [`esp`]: encapsulation / decapsulation of packets and bursts, outer classification;
//! - [`frag`]: fragmentation before encryption, ICMP errors, reassembly;
//! - [`pipeline`]: the gateway order of those steps for one packet;
//! - [`mtu`]: per-SA inner MTU and MSS (the AWS table);
//! - [`counters`]: named drop reasons and counters;
//! - [`pkt`]: packet buffers with head/tailroom and a pool;
//! - [`runtime`]: the pinned poll-mode worker, its SA tables and commands;
//! - [`handoff`]: the rings that carry a packet to the worker owning its SA;
//! - [`workers`]: a set of workers driven as one (SA ownership, command fan-out);
//! - [`io`]: the worker's I/O trait, the in-memory link and pcap-file ports;
//! - [`pcap`]: capture files;
//! - [`testkit`]: fixtures (SA pairs, patterned packets) for tests, benches and the rig.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod counters;
pub mod crypto;
pub mod esp;
pub mod frag;
pub mod handoff;
pub mod io;
pub mod mtu;
pub mod pcap;
pub mod pipeline;
pub mod pkt;
pub mod replay;
pub mod runtime;
pub mod sa;
pub mod testkit;
pub mod wire;
pub mod workers;
