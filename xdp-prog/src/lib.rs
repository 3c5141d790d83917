//! `xdp-prog`: the XDP program (C, compiled by clang) that steers ESP, UDP 4500 and IKE to
//! AF_XDP sockets or the kernel, and its libbpf-rs loader.
//!
//! Empty until the AF_XDP issue lands; the engine's pcap and in-memory I/O need no XDP.
