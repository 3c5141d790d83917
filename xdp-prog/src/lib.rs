//! `xdp-prog`: the XDP program that steers packets between the kernel and espd's AF_XDP
//! sockets (`src/bpf/steer.bpf.c`, compiled by clang at build time), and its loader.
//!
//! Contract:
//! - [`Steering::attach`] loads a private copy of the program and its maps for one interface
//!   and attaches it through a **bpf_link**: the kernel detaches it when the link's file
//!   descriptor closes, so a crashed or killed espd never leaves it behind. `Mode::Auto`
//!   tries native (driver) mode and falls back to generic (SKB) mode; [`Steering::mode`]
//!   says which one is in use.
//! - Outside role: ESP, ESP-in-UDP 4500 and outer fragments of ESP go to the AF_XDP socket
//!   of the receiving queue; IKE, NAT keepalives and everything else go to the kernel.
//!   Inside role: packets to a selector prefix ([`Steering::add_selector`]) that are not for
//!   one of the gateway's addresses ([`Steering::add_local`]) go to the socket.
//! - A queue without a socket ([`Steering::add_socket`]) passes its packets to the kernel.
//! - [`Steering::stats`] sums the per-CPU verdict counters.
//!
//! This crate is part of the I/O layer: its `unsafe` is the skeleton's and one
//! `bpf_link_create` call.
#![deny(unsafe_op_in_unsafe_fn)]

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use std::ffi::CString;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
#[allow(missing_docs, dead_code, non_camel_case_types)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
}
use skel::{SteerSkel, SteerSkelBuilder};

/// Which interface of the gateway the program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The ESP side (toward the peer gateway).
    Outside,
    /// The plaintext side (toward the protected hosts).
    Inside,
}

/// How to attach: the `xdp_mode` option of `[gateway]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Generic,
    /// Native, else generic.
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Mode::Native),
            "generic" => Ok(Mode::Generic),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!("\"{s}\" (allowed: native, generic, auto)")),
        }
    }
}

/// Verdicts counted by the program, in the order of its `stats` map.
pub const VERDICTS: [&str; 10] = [
    "xsk_esp",
    "xsk_natt",
    "xsk_fragment",
    "xsk_inside",
    "pass_ike",
    "pass_nat_keepalive",
    "pass_local",
    "pass_non_ip",
    "pass_other",
    "pass_malformed",
];

/// An error of loading, attaching or configuring the program, with what was being done.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error(format!("{what}: {e}"))
}

/// The interface index of `name`, or a clear error when it does not exist.
pub fn ifindex(name: &str) -> Result<u32, Error> {
    let c = CString::new(name).map_err(|_| Error(format!("interface name {name:?} is invalid")))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(Error(format!("interface \"{name}\" does not exist")));
    }
    Ok(i)
}

/// The program attached to one interface, with its maps. Dropping it detaches the program.
pub struct Steering {
    skel: SteerSkel<'static>,
    link: Option<OwnedFd>,
    role: Role,
    ifname: String,
    ifindex: u32,
    native: bool,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Steering({:?} on {} #{}, {})",
            self.role,
            self.ifname,
            self.ifindex,
            self.mode_name()
        )
    }
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

impl Steering {
    /// Loads the program for `role` and attaches it to `ifname` in `mode`.
    pub fn attach(ifname: &str, role: Role, mode: Mode) -> Result<Steering, Error> {
        let ifindex = ifindex(ifname)?;
        // The skeleton borrows its object storage for its whole life; one small leak per
        // attached interface (a handful per process) keeps the type 'static.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = SteerSkelBuilder::default()
            .open(storage)
            .map_err(|e| err("opening the XDP object", e))?;
        let skel = open
            .load()
            .map_err(|e| err("loading the XDP program (needs root / CAP_BPF)", e))?;
        let mut s = Steering {
            skel,
            link: None,
            role,
            ifname: ifname.to_string(),
            ifindex,
            native: false,
        };
        let tries: &[(u32, bool)] = match mode {
            Mode::Native => &[(XDP_FLAGS_DRV_MODE, true)],
            Mode::Generic => &[(XDP_FLAGS_SKB_MODE, false)],
            Mode::Auto => &[(XDP_FLAGS_DRV_MODE, true), (XDP_FLAGS_SKB_MODE, false)],
        };
        let mut last = String::new();
        for &(flags, native) in tries {
            match s.link_create(flags) {
                Ok(fd) => {
                    s.link = Some(fd);
                    s.native = native;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(Error(format!(
            "attaching XDP to \"{ifname}\" ({} mode): {last}",
            match mode {
                Mode::Native => "native",
                Mode::Generic => "generic",
                Mode::Auto => "native, then generic",
            }
        )))
    }

    fn link_create(&self, flags: u32) -> Result<OwnedFd, String> {
        let prog = match self.role {
            Role::Outside => &self.skel.progs.xdp_outside,
            Role::Inside => &self.skel.progs.xdp_inside,
        };
        let prog_fd = prog.as_fd().as_raw_fd();
        // SAFETY: an all-zero bpf_link_create_opts is its documented "no options" value;
        // we then set its size and flags as libbpf's OPTS macros would.
        let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = flags;
        // SAFETY: prog_fd is a loaded program owned by self.skel; opts lives across the call.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(prog_fd, self.ifindex as i32, libbpf_sys::BPF_XDP, &opts)
        };
        if fd < 0 {
            return Err(std::io::Error::from_raw_os_error(-fd).to_string());
        }
        // SAFETY: bpf_link_create returned a fresh file descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// "native" or "generic".
    pub fn mode_name(&self) -> &'static str {
        if self.native { "native" } else { "generic" }
    }

    /// Whether the program runs in the driver (native mode).
    pub fn is_native(&self) -> bool {
        self.native
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Sends queue `queue`'s steered packets to the AF_XDP socket `fd`.
    pub fn add_socket(&self, queue: u32, fd: RawFd) -> Result<(), Error> {
        self.skel
            .maps
            .xsks_map
            .update(
                &queue.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| err(format!("registering the AF_XDP socket of queue {queue}"), e))
    }

    /// Steers packets to `net/prefix` (inside role).
    pub fn add_selector(&self, net: IpAddr, prefix: u8) -> Result<(), Error> {
        let (map, key) = match net {
            IpAddr::V4(a) => {
                let mut k = Vec::with_capacity(8);
                k.extend_from_slice(&u32::from(prefix).to_ne_bytes());
                k.extend_from_slice(&a.octets());
                (&self.skel.maps.sel_v4, k)
            }
            IpAddr::V6(a) => {
                let mut k = Vec::with_capacity(20);
                k.extend_from_slice(&u32::from(prefix).to_ne_bytes());
                k.extend_from_slice(&a.octets());
                (&self.skel.maps.sel_v6, k)
            }
        };
        map.update(&key, &[1], MapFlags::ANY)
            .map_err(|e| err(format!("adding selector {net}/{prefix}"), e))
    }

    /// Marks `addr` as the gateway's own: packets to it go to the kernel.
    pub fn add_local(&self, addr: IpAddr) -> Result<(), Error> {
        let r = match addr {
            IpAddr::V4(a) => self
                .skel
                .maps
                .local_v4
                .update(&a.octets(), &[1], MapFlags::ANY),
            IpAddr::V6(a) => self
                .skel
                .maps
                .local_v6
                .update(&a.octets(), &[1], MapFlags::ANY),
        };
        r.map_err(|e| err(format!("adding local address {addr}"), e))
    }

    /// The verdict counters, summed over CPUs, in the order of [`VERDICTS`].
    pub fn stats(&self) -> [u64; VERDICTS.len()] {
        let mut out = [0u64; VERDICTS.len()];
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(Some(per_cpu)) = self
                .skel
                .maps
                .stats
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            {
                *o = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8)?.try_into().ok())
                    .map(u64::from_ne_bytes)
                    .sum();
            }
        }
        out
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        // Closing the link fd detaches the program (bpf_link semantics).
        self.link.take();
    }
}
