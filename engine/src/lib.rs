//! `engine`: the data plane of a poll-mode user-space IPsec ESP gateway (RFC 4303 tunnel
//! mode) built to terminate AWS Site-to-Site VPN tunnels.
//!
//! Layers, from the wire up (all sans-IO except `pcap` and `cli`):
//! - [`wire`]: checked header views, checksums, MSS clamping;
//! - [`crypto`]: the ESP transforms behind one trait, two backends (RustCrypto, ipsec-mb);
//! - [`replay`]: the anti-replay window with ESN;
//! - [`sa`]: static SA files and per-direction SA state;
//! - [`esp`]: encapsulation / decapsulation of packets and bursts, outer classification;
//! - [`frag`]: fragmentation before encryption, ICMP errors, reassembly;
//! - [`pipeline`]: the gateway order of those steps for one packet;
//! - [`mtu`]: per-SA inner MTU and MSS (the AWS table);
//! - [`counters`]: named drop reasons and counters;
//! - [`pkt`]: packet buffers with head/tailroom and a pool;
//! - [`seqstore`]: static SAs' sequence numbers written ahead to the state directory;
//! - [`pcap`], [`cli`]: file I/O and the `espd` commands.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod afxdp;
pub mod cli;
pub mod config;
pub mod counters;
pub mod crypto;
pub mod esp;
pub mod export;
pub mod frag;
pub mod gateway;
pub mod ike_ctl;
pub mod io;
pub mod metrics;
pub mod mtu;
pub mod pcap;
pub mod pipeline;
pub mod pkt;
pub mod privs;
pub mod replay;
pub mod runtime;
pub mod sa;
pub mod seqstore;
pub mod serve;
pub mod tunnel_log;
pub mod wire;
