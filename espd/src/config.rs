//! Tunnel configuration with the AWS Site-to-Site VPN option names (shared/spec/
//! tunnel-options.md): parsing, defaults (exactly AWS's), and validation of every range and
//! cross-option rule, all errors at once, each naming the file, the tunnel, the option, the
//! value and what is allowed. Unknown keys are errors (a typo must not become a default).
//!
//! Contract: [`load`] / [`parse`] return a [`Config`] only when the whole file is valid. The
//! only randomness is the PSK generated when none is configured; it comes from the caller's
//! generator (`fill`), so tests are deterministic.

use crate::static_sa;
use engine::crypto::{Encryption, Integrity, Suite};
use engine::sa::SaConfig;
use ike::algorithms::{Cipher, Hash};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use zeroize::Zeroizing;

/// IKE versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IkeVersion {
    V1,
    V2,
}

/// What to do when DPD declares the peer dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpdAction {
    Clear,
    None,
    Restart,
}

/// Who brings the tunnel up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupAction {
    Add,
    Start,
}

/// NAT traversal mode (engine option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatT {
    Auto,
    Off,
    Force,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// An IP prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`; rejects host bits set.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR: bad address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{s:?} is not a CIDR: prefix must be 0..={max}"))?;
        let c = Cidr { addr, len };
        if c.network() != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}/{len}?",
                c.network()
            ));
        }
        Ok(c)
    }
    /// The first and last address of the CIDR (an IKE traffic selector's range).
    pub fn range(&self) -> (IpAddr, IpAddr) {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                let s = u32::from(a) & m;
                (IpAddr::V4(s.into()), IpAddr::V4((s | !m).into()))
            }
            IpAddr::V6(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                let s = u128::from(a) & m;
                (IpAddr::V6(s.into()), IpAddr::V6((s | !m).into()))
            }
        }
    }
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len as u32)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len as u32)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }
    /// Whether `other` lies inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len
            && Cidr {
                addr: other.addr,
                len: self.len,
            }
            .network()
                == self.addr
            && self.addr.is_ipv4() == other.addr.is_ipv4()
    }
    /// The n-th address of the prefix (AWS side = 1, CGW side = 2: tunnel-options.md 4.8).
    pub fn host(&self, n: u32) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + n)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + n as u128)),
        }
    }
}

/// One tunnel, every option resolved (defaults applied).
#[derive(Clone)]
pub struct Tunnel {
    pub name: String,
    pub connection: String,
    pub outside_ip: IpAddr,
    pub peer_ip: Option<IpAddr>,
    pub nat_t: NatT,
    pub ike_versions: Vec<IkeVersion>,
    pub phase1_encryption: Vec<String>,
    pub phase2_encryption: Vec<String>,
    pub phase1_integrity: Vec<String>,
    pub phase2_integrity: Vec<String>,
    pub phase1_dh_groups: Vec<u16>,
    pub phase2_dh_groups: Vec<u16>,
    pub phase1_lifetime_s: u32,
    pub phase2_lifetime_s: u32,
    pub rekey_margin_s: u32,
    pub rekey_fuzz_pct: u32,
    pub replay_window_size: u32,
    pub dpd_timeout_s: u32,
    pub dpd_timeout_action: DpdAction,
    pub startup_action: StartupAction,
    pub pre_shared_key: Zeroizing<String>,
    /// True when the PSK was generated because none was configured.
    pub psk_generated: bool,
    pub tunnel_inside_cidr: Cidr,
    pub tunnel_inside_ipv6_cidr: Option<Cidr>,
    pub tunnel_inside_ip_version: IpVersion,
    pub local_ipv4_network_cidr: Cidr,
    pub remote_ipv4_network_cidr: Cidr,
    pub local_ipv6_network_cidr: Cidr,
    pub remote_ipv6_network_cidr: Cidr,
    pub log_enabled: bool,
    pub log_destination: Option<String>,
    pub log_output_format: LogFormat,
    pub tunnel_lifecycle_control: bool,
    /// Static routes (the tunnel's CIDR selectors) or BGP over the tunnel interface
    /// (connection options, the same on both tunnels of a connection).
    pub routing: Routing,
    pub amazon_side_asn: u32,
    pub customer_gateway_asn: u32,
    /// Prefixes the AWS side announces over BGP (the VPC CIDRs).
    pub bgp_advertise: Vec<Cidr>,
    /// TCP MD5 (RFC 2385) key of the BGP session, if any.
    pub bgp_md5_password: Option<Zeroizing<String>>,
    /// Static routing: the customer-side prefixes routed into the connection (AWS's static
    /// routes, at most 100); empty: the tunnel's `local_*_network_cidr`.
    pub static_routes: Vec<Cidr>,
    /// Static SAs attached to this tunnel (rigs without IKE).
    pub sas: Vec<SaConfig>,
    /// Lifetimes below the AWS minimums were allowed by `[lab]`.
    pub lab: bool,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.name)
            .field("connection", &self.connection)
            .field("outside_ip", &self.outside_ip)
            .field("peer_ip", &self.peer_ip)
            .field("pre_shared_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A connection's routing (`routing`, AWS `StaticRoutesOnly`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    Static,
    Dynamic,
}

/// ASNs an AWS gateway may have besides the private ranges: the legacy public Amazon ASNs
/// of limits-and-behaviour section 9 (7224, 9059, 10124, 17493).
pub const AMAZON_LEGACY_ASNS: [u32; 4] = [7224, 9059, 10124, 17493];
/// ASNs a customer gateway may not have: Amazon's (7224, 9059, 10124) and 17943
/// (reserved in ap-southeast-1), with 17493 (the FAQ's spelling of it).
pub const CGW_RESERVED_ASNS: [u32; 5] = [7224, 9059, 10124, 17943, 17493];

/// Checks an Amazon-side ASN: private 16-bit 64512-65534, private 32-bit
/// 4200000000-4294967294, or a legacy Amazon ASN.
pub fn check_amazon_asn(v: i64) -> Result<u32, String> {
    let ok = (64512..=65534).contains(&v)
        || (4_200_000_000..=4_294_967_294).contains(&v)
        || AMAZON_LEGACY_ASNS.iter().any(|a| i64::from(*a) == v);
    if ok {
        Ok(v as u32)
    } else {
        Err(format!(
            "{v} is not allowed; allowed: 64512..=65534, 4200000000..=4294967294 (private), or a legacy Amazon ASN (7224, 9059, 10124, 17493)"
        ))
    }
}

/// Checks a customer-gateway ASN: 1-2147483647, not a reserved one, not the 32-bit
/// private range (which AWS does not support for a CGW).
pub fn check_cgw_asn(v: i64) -> Result<u32, String> {
    if !(1..=2_147_483_647).contains(&v) {
        return Err(format!("{v} is out of range; allowed: 1..=2147483647"));
    }
    if CGW_RESERVED_ASNS.iter().any(|a| i64::from(*a) == v) {
        return Err(format!(
            "{v} is reserved (7224, 9059, 10124, 17943, 17493 are Amazon's); allowed: 1..=2147483647 except those"
        ));
    }
    Ok(v as u32)
}

/// Inside IP version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// A whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub allow_short_lifetimes: bool,
    pub tunnels: Vec<Tunnel>,
    /// The `[gateway]` table (needed by `espd run`).
    pub gateway: Option<Gateway>,
}

/// XDP attach mode (`xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
    Auto,
}

/// `complete_checksums`: whether the inside path finishes TCP/UDP checksums that senders
/// left for the NIC (CHECKSUM_PARTIAL from a veth or tap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    /// On when the inside interface is a veth or tun/tap, off for a physical NIC.
    Auto,
    On,
    Off,
}

/// The `[gateway]` table: how `espd run` attaches to the machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    pub inside_interface: String,
    pub outside_interface: String,
    /// CPU ids of the data-path workers (one per RX queue).
    pub cores: Vec<usize>,
    pub xdp_mode: XdpMode,
    /// Router for inside traffic (default: the packet's destination is on-link).
    pub inside_next_hop: Option<IpAddr>,
    /// Router for ESP traffic (default: the peer is on-link).
    pub outside_next_hop: Option<IpAddr>,
    /// Unix control socket for `espd show`.
    pub control_socket: String,
    /// Group allowed to use the control socket (default: root only).
    pub control_socket_group: Option<String>,
    /// Prometheus endpoint, e.g. "127.0.0.1:9100" (off by default).
    pub metrics_listen: Option<String>,
    /// Crypto backend: auto, ipsec-mb, rustcrypto.
    pub backend: String,
    /// Try AF_XDP zero-copy before copy mode.
    pub zero_copy: bool,
    /// UMEM frames per socket (power of two).
    pub frames: u32,
    /// Packets per burst.
    pub burst: usize,
    /// Microseconds a worker sleeps between polls once idle (0: busy polling).
    pub idle_sleep_us: u32,
    /// Run the IKEv2 control plane for tunnels without static SAs (false: static SAs only,
    /// UDP 500/4500 left to another daemon).
    pub ike: bool,
    /// Bounds of the reassembly of outer (ESP) fragments, which anyone can send.
    pub reassembly: ReassemblyOpts,
    /// Free packet buffers a worker keeps (more are freed, and counted).
    pub pool_max_free: usize,
    /// Where static SAs' sequence numbers are kept across restarts.
    pub state_directory: String,
    /// Sequence numbers an outbound static SA reserves per write of its mark.
    pub seq_persist_step: u64,
    /// `ike_*` bounds of unauthenticated IKE state.
    pub ike_limits: crate::ike_ctl::IkeLimits,
    /// Finish partial TCP/UDP checksums of inside senders.
    pub complete_checksums: ChecksumMode,
    /// Packets per handoff ring between two workers (one per ordered pair and direction).
    pub handoff_ring: usize,
    /// Explicit queue map: entry i lists the RX queues worker i (on `cores[i]`) polls, on
    /// both interfaces. None: queue q goes to worker q mod the number of workers.
    pub worker_queues: Option<Vec<Vec<u32>>>,
    /// A TUN interface per tunnel (`espd<index>`) holding the tunnel's AWS-side inside
    /// address: the kernel (ping, BGP) reaches the peer's inside address through it.
    pub tunnel_interfaces: bool,
    /// Who runs BIRD for dynamic routing: espd (supervised) or the operator (external).
    pub bird: BirdMode,
    /// The BIRD binary (supervised).
    pub bird_binary: String,
    /// BIRD's control socket when external (for the BGP session states), if any.
    pub bird_control_socket: Option<String>,
}

/// `[gateway] bird`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BirdMode {
    Supervised,
    External,
}

/// `reassembly_*` options of `[gateway]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReassemblyOpts {
    pub max_datagrams: usize,
    pub max_bytes: usize,
    pub max_fragments: u32,
    pub max_per_source: u32,
    pub timeout_s: f64,
}

/// Keys a `[gateway]` table may have.
pub const GATEWAY_KEYS: &[&str] = &[
    "inside_interface",
    "outside_interface",
    "cores",
    "xdp_mode",
    "inside_next_hop",
    "outside_next_hop",
    "control_socket",
    "control_socket_group",
    "metrics_listen",
    "backend",
    "zero_copy",
    "frames",
    "burst",
    "idle_sleep_us",
    "ike",
    "reassembly_max_datagrams",
    "reassembly_max_bytes",
    "reassembly_max_fragments",
    "reassembly_max_per_source",
    "reassembly_timeout_s",
    "pool_max_free",
    "state_directory",
    "seq_persist_step",
    "ike_cookie_rate",
    "ike_half_open_cookie",
    "ike_half_open_per_source",
    "ike_half_open_per_tunnel",
    "complete_checksums",
    "handoff_ring",
    "worker_queues",
    "tunnel_interfaces",
    "bird",
    "bird_binary",
    "bird_control_socket",
];

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/espd.sock";

/// `worker_queues`: one non-empty list of distinct RX queue numbers (0..=63) per entry of
/// `cores`, no queue in two lists. Whether every queue of each interface is covered is
/// checked at start, when the interfaces' queue counts are known.
fn queue_map(cx: &mut Ctx, v: &toml::Value, workers: usize) -> Option<Vec<Vec<u32>>> {
    const KEY: &str = "worker_queues";
    let Some(lists) = v.as_array() else {
        cx.err(
            KEY,
            format!("{v} is not a list of queue lists, e.g. [[0, 2], [1, 3]]"),
        );
        return None;
    };
    if lists.len() != workers {
        cx.err(
            KEY,
            format!(
                "{v} has {} list(s); allowed: one per entry of cores ({workers})",
                lists.len()
            ),
        );
        return None;
    }
    let mut map = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for (w, l) in lists.iter().enumerate() {
        let Some(qs) = l.as_array().filter(|a| !a.is_empty()) else {
            cx.err(
                KEY,
                format!("entry {w} ({l}) is not a non-empty list of queue numbers"),
            );
            return None;
        };
        let mut v = vec![];
        for q in qs {
            match q.as_integer() {
                Some(n) if (0..64).contains(&n) => {
                    if !seen.insert(n as u32) {
                        cx.err(
                            KEY,
                            format!("queue {n} is given to two workers; allowed: one"),
                        );
                        return None;
                    }
                    v.push(n as u32);
                }
                _ => {
                    cx.err(
                        KEY,
                        format!("entry {w}: {q} is not a queue number; allowed: 0..=63"),
                    );
                    return None;
                }
            }
        }
        map.push(v);
    }
    Some(map)
}

fn gateway(t: &toml::Table, origin: &str, errs: &mut Vec<String>) -> Option<Gateway> {
    let mut cx = Ctx {
        errs,
        label: format!("{origin}: [gateway]"),
    };
    for k in t.keys() {
        if !GATEWAY_KEYS.contains(&k.as_str()) {
            cx.err(
                k,
                format!("unknown option; allowed: {}", GATEWAY_KEYS.join(", ")),
            );
        }
    }
    let iface = |cx: &mut Ctx, key: &str| match string(cx, t, key) {
        Some(s) if !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ']) => s.to_string(),
        Some(s) => {
            cx.err(
                key,
                format!("{s:?} is not an interface name (1..15 characters)"),
            );
            String::new()
        }
        None => {
            cx.err(key, "missing; the interface name");
            String::new()
        }
    };
    let inside_interface = iface(&mut cx, "inside_interface");
    let outside_interface = iface(&mut cx, "outside_interface");
    if !inside_interface.is_empty() && inside_interface == outside_interface {
        cx.err(
            "outside_interface",
            format!("{outside_interface:?} is also the inside_interface; they must differ"),
        );
    }
    let cores = match t.get("cores") {
        None => vec![0],
        Some(toml::Value::Array(a)) if !a.is_empty() => {
            let mut v = vec![];
            for x in a {
                match x.as_integer() {
                    Some(c) if (0..1024).contains(&c) && !v.contains(&(c as usize)) => {
                        v.push(c as usize)
                    }
                    _ => cx.err(
                        "cores",
                        format!("{x} is not a distinct CPU id; allowed: 0..=1023"),
                    ),
                }
            }
            v
        }
        Some(v) => {
            cx.err("cores", format!("{v} is not a non-empty list of CPU ids"));
            vec![0]
        }
    };
    let xdp_mode = choice(
        &mut cx,
        t,
        "xdp_mode",
        XdpMode::Auto,
        &[
            ("native", XdpMode::Native),
            ("generic", XdpMode::Generic),
            ("auto", XdpMode::Auto),
        ],
    );
    let inside_next_hop = addr(&mut cx, t, "inside_next_hop");
    let outside_next_hop = addr(&mut cx, t, "outside_next_hop");
    let control_socket = string(&mut cx, t, "control_socket")
        .unwrap_or(DEFAULT_CONTROL_SOCKET)
        .to_string();
    let control_socket_group = string(&mut cx, t, "control_socket_group").map(str::to_string);
    let metrics_listen = string(&mut cx, t, "metrics_listen").map(str::to_string);
    if let Some(m) = &metrics_listen
        && m.parse::<std::net::SocketAddr>().is_err()
    {
        cx.err("metrics_listen", format!("{m:?} is not an address:port"));
    }
    let backend = choice(
        &mut cx,
        t,
        "backend",
        "auto",
        &[
            ("auto", "auto"),
            ("ipsec-mb", "ipsec-mb"),
            ("rustcrypto", "rustcrypto"),
        ],
    )
    .to_string();
    let zero_copy = boolean(&mut cx, t, "zero_copy", true);
    let frames = int(&mut cx, t, "frames", 4096, 256, 65536, " (a power of two)") as u32;
    if !frames.is_power_of_two() {
        cx.err(
            "frames",
            format!("{frames} is not a power of two; allowed: 256..=65536"),
        );
    }
    let burst = int(&mut cx, t, "burst", 64, 1, 256, "") as usize;
    let idle_sleep_us = int(&mut cx, t, "idle_sleep_us", 0, 0, 100_000, " microseconds") as u32;
    let reassembly = ReassemblyOpts {
        max_datagrams: int(&mut cx, t, "reassembly_max_datagrams", 1024, 1, 65536, "") as usize,
        max_bytes: int(
            &mut cx,
            t,
            "reassembly_max_bytes",
            16 << 20,
            65536,
            1 << 30,
            " bytes",
        ) as usize,
        max_fragments: int(&mut cx, t, "reassembly_max_fragments", 64, 2, 8192, "") as u32,
        max_per_source: int(&mut cx, t, "reassembly_max_per_source", 64, 1, 65536, "") as u32,
        timeout_s: int(&mut cx, t, "reassembly_timeout_s", 30, 1, 120, " seconds") as f64,
    };
    let pool_max_free = int(
        &mut cx,
        t,
        "pool_max_free",
        i64::from(frames) * 2,
        256,
        1 << 20,
        " buffers",
    ) as usize;
    let complete_checksums = choice(
        &mut cx,
        t,
        "complete_checksums",
        ChecksumMode::Auto,
        &[
            ("auto", ChecksumMode::Auto),
            ("on", ChecksumMode::On),
            ("off", ChecksumMode::Off),
        ],
    );
    let handoff_ring = int(&mut cx, t, "handoff_ring", 1024, 64, 65536, " packets") as usize;
    let worker_queues = t
        .get("worker_queues")
        .and_then(|v| queue_map(&mut cx, v, cores.len()));
    let tunnel_interfaces = boolean(&mut cx, t, "tunnel_interfaces", true);
    let bird = choice(
        &mut cx,
        t,
        "bird",
        BirdMode::Supervised,
        &[
            ("supervised", BirdMode::Supervised),
            ("external", BirdMode::External),
        ],
    );
    let bird_binary = string(&mut cx, t, "bird_binary")
        .unwrap_or("bird")
        .to_string();
    let bird_control_socket = string(&mut cx, t, "bird_control_socket").map(str::to_string);
    Some(Gateway {
        tunnel_interfaces,
        bird,
        bird_binary,
        bird_control_socket,
        complete_checksums,
        handoff_ring,
        worker_queues,
        inside_interface,
        outside_interface,
        cores,
        xdp_mode,
        inside_next_hop,
        outside_next_hop,
        control_socket,
        control_socket_group,
        metrics_listen,
        backend,
        zero_copy,
        frames,
        burst,
        idle_sleep_us,
        ike: boolean(&mut cx, t, "ike", true),
        reassembly,
        pool_max_free,
        state_directory: string(&mut cx, t, "state_directory")
            .unwrap_or(crate::seqstore::DEFAULT_STATE_DIR)
            .to_string(),
        seq_persist_step: int(
            &mut cx,
            t,
            "seq_persist_step",
            crate::seqstore::DEFAULT_STEP as i64,
            1024,
            1 << 30,
            " sequence numbers",
        ) as u64,
        ike_limits: {
            let d = crate::ike_ctl::IkeLimits::default();
            let mut n = |key: &str, def: usize, hi: i64, unit: &str| {
                int(&mut cx, t, key, def as i64, 1, hi, unit) as usize
            };
            crate::ike_ctl::IkeLimits {
                cookie_rate: n(
                    "ike_cookie_rate",
                    d.cookie_rate,
                    100_000,
                    " requests per second",
                ),
                half_open_cookie: n(
                    "ike_half_open_cookie",
                    d.half_open_cookie,
                    65_536,
                    " IKE SAs",
                ),
                half_open_per_source: n(
                    "ike_half_open_per_source",
                    d.half_open_per_source,
                    1024,
                    " IKE SAs",
                ),
                half_open_per_tunnel: n(
                    "ike_half_open_per_tunnel",
                    d.half_open_per_tunnel,
                    64,
                    " IKE SAs",
                ),
            }
        },
    })
}

/// Every error of a file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// The AWS names, from `ike::algorithms` (the one table of them).
const ENCRYPTION: [&str; 4] = [
    Cipher::ALL[0].name(),
    Cipher::ALL[1].name(),
    Cipher::ALL[2].name(),
    Cipher::ALL[3].name(),
];
const INTEGRITY: [&str; 4] = [
    Hash::ALL[0].name(),
    Hash::ALL[1].name(),
    Hash::ALL[2].name(),
    Hash::ALL[3].name(),
];

/// The ESP suite of a CHILD_SA's AWS algorithm names (`None` for names outside the table
/// or a combination ESP does not have).
pub fn esp_suite(encryption: &str, integrity: Option<&str>) -> Option<Suite> {
    let enc = match Cipher::from_name(encryption)? {
        Cipher::Aes128Cbc => Encryption::Aes128Cbc,
        Cipher::Aes256Cbc => Encryption::Aes256Cbc,
        Cipher::Aes128Gcm16 => Encryption::Aes128Gcm16,
        Cipher::Aes256Gcm16 => Encryption::Aes256Gcm16,
    };
    let integ = match integrity.map(Hash::from_name) {
        None => Integrity::None,
        Some(None) => return None,
        Some(Some(Hash::Sha1)) => Integrity::Sha1_96,
        Some(Some(Hash::Sha2_256)) => Integrity::Sha256_128,
        Some(Some(Hash::Sha2_384)) => Integrity::Sha384_192,
        Some(Some(Hash::Sha2_512)) => Integrity::Sha512_256,
    };
    Suite::new(enc, integ).ok()
}
const DH1: [u16; 12] = [2, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
const DH2: [u16; 13] = [2, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
const RESERVED_INSIDE: [&str; 7] = [
    "169.254.0.0",
    "169.254.1.0",
    "169.254.2.0",
    "169.254.3.0",
    "169.254.4.0",
    "169.254.5.0",
    "169.254.169.252",
];

/// Keys a `[[tunnel]]` table may have.
pub const TUNNEL_KEYS: &[&str] = &[
    "name",
    "connection",
    "outside_ip",
    "peer_ip",
    "nat_t",
    "ike_versions",
    "phase1_encryption",
    "phase2_encryption",
    "phase1_integrity",
    "phase2_integrity",
    "phase1_dh_groups",
    "phase2_dh_groups",
    "phase1_lifetime_s",
    "phase2_lifetime_s",
    "rekey_margin_s",
    "rekey_fuzz_pct",
    "replay_window_size",
    "dpd_timeout_s",
    "dpd_timeout_action",
    "startup_action",
    "pre_shared_key",
    "tunnel_inside_cidr",
    "tunnel_inside_ipv6_cidr",
    "tunnel_inside_ip_version",
    "local_ipv4_network_cidr",
    "remote_ipv4_network_cidr",
    "local_ipv6_network_cidr",
    "remote_ipv6_network_cidr",
    "log_enabled",
    "log_destination",
    "log_output_format",
    "log_format",
    "tunnel_lifecycle_control",
    "routing",
    "amazon_side_asn",
    "customer_gateway_asn",
    "bgp_advertise",
    "bgp_md5_password",
    "static_routes",
    "sa",
];

/// Reads and validates a configuration file. `fill` provides random bytes (for PSKs that
/// are generated when none is configured).
pub fn load(path: &Path, fill: &mut dyn FnMut(&mut [u8])) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse(&text, &path.display().to_string(), fill)
}

/// A PSK as AWS generates one: 32 alphanumeric characters, never starting with `0`.
pub fn generate_psk(fill: &mut dyn FnMut(&mut [u8])) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    let mut b = [0u8; 1];
    while out.len() < 32 {
        fill(&mut b);
        // Rejection sampling: 248 = 4 * 62 keeps the distribution uniform.
        if b[0] >= 248 {
            continue;
        }
        let c = ALNUM[(b[0] % 62) as usize] as char;
        if out.is_empty() && c == '0' {
            continue;
        }
        out.push(c);
    }
    out
}

/// Checks the AWS PSK rules (tunnel-options.md 4.7).
pub fn check_psk(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if !(8..=64).contains(&n) {
        return Err(format!("{n} characters; allowed: 8..=64 characters"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_'))
    {
        return Err(format!(
            "character {c:?} is not allowed; allowed: letters, digits, '.' and '_'"
        ));
    }
    if p.starts_with('0') {
        return Err("must not start with '0'".into());
    }
    Ok(())
}

struct Ctx<'a> {
    errs: &'a mut Vec<String>,
    label: String,
}

impl Ctx<'_> {
    fn err(&mut self, key: &str, msg: impl fmt::Display) {
        self.errs.push(format!("{}: {key}: {msg}", self.label));
    }
}

fn int(
    cx: &mut Ctx,
    t: &toml::Table,
    key: &str,
    default: i64,
    lo: i64,
    hi: i64,
    unit: &str,
) -> i64 {
    match t.get(key) {
        None => default,
        Some(toml::Value::Integer(v)) if (lo..=hi).contains(v) => *v,
        Some(toml::Value::Integer(v)) => {
            cx.err(
                key,
                format!("{v} is out of range; allowed: {lo}..={hi}{unit}"),
            );
            default
        }
        Some(v) => {
            cx.err(
                key,
                format!("{v} is not a whole number; allowed: {lo}..={hi}{unit}"),
            );
            default
        }
    }
}

fn string<'t>(cx: &mut Ctx, t: &'t toml::Table, key: &str) -> Option<&'t str> {
    match t.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.as_str()),
        Some(v) => {
            cx.err(key, format!("{v} is not a string"));
            None
        }
    }
}

fn boolean(cx: &mut Ctx, t: &toml::Table, key: &str, default: bool) -> bool {
    match t.get(key) {
        None => default,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => {
            cx.err(key, format!("{v} is not true or false"));
            default
        }
    }
}

fn choice<T: Copy>(
    cx: &mut Ctx,
    t: &toml::Table,
    key: &str,
    default: T,
    options: &[(&str, T)],
) -> T {
    let Some(s) = string(cx, t, key) else {
        return default;
    };
    match options.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        Some((_, v)) => *v,
        None => {
            let allowed: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            cx.err(
                key,
                format!("{s:?} is not allowed; allowed: {}", allowed.join(", ")),
            );
            default
        }
    }
}

fn name_list(
    cx: &mut Ctx,
    t: &toml::Table,
    key: &str,
    allowed: &[&str],
    aliases: &[(&str, &str)],
) -> Vec<String> {
    let Some(v) = t.get(key) else {
        return allowed.iter().map(|s| s.to_string()).collect();
    };
    let Some(arr) = v.as_array() else {
        cx.err(
            key,
            format!(
                "{v} is not a list; allowed: a non-empty list of {}",
                allowed.join(", ")
            ),
        );
        return allowed.iter().map(|s| s.to_string()).collect();
    };
    let mut out = vec![];
    for x in arr {
        let s = x.as_str().unwrap_or("");
        let canon = aliases
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(s))
            .map(|(_, c)| *c)
            .unwrap_or(s);
        match allowed.iter().find(|a| a.eq_ignore_ascii_case(canon)) {
            Some(a) => {
                if !out.contains(&a.to_string()) {
                    out.push(a.to_string());
                }
            }
            None => cx.err(
                key,
                format!("{x} is not allowed; allowed: {}", allowed.join(", ")),
            ),
        }
    }
    if arr.is_empty() {
        cx.err(
            key,
            format!(
                "an empty list is not allowed; allowed: a non-empty list of {}",
                allowed.join(", ")
            ),
        );
    }
    // Keep AWS's documented order ("lowest" first, tunnel-options.md 4.3).
    out.sort_by_key(|s| allowed.iter().position(|a| a == s));
    out
}

fn group_list(cx: &mut Ctx, t: &toml::Table, key: &str, allowed: &[u16]) -> Vec<u16> {
    let all = || allowed.to_vec();
    let show = || {
        allowed
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(v) = t.get(key) else { return all() };
    let Some(arr) = v.as_array() else {
        cx.err(
            key,
            format!("{v} is not a list; allowed: a non-empty list of {}", show()),
        );
        return all();
    };
    let mut out = vec![];
    for x in arr {
        match x
            .as_integer()
            .and_then(|g| u16::try_from(g).ok())
            .filter(|g| allowed.contains(g))
        {
            Some(g) => {
                if !out.contains(&g) {
                    out.push(g)
                }
            }
            None => cx.err(
                key,
                format!("group {x} is not allowed; allowed: {}", show()),
            ),
        }
    }
    if arr.is_empty() {
        cx.err(
            key,
            format!(
                "an empty list is not allowed; allowed: a non-empty list of {}",
                show()
            ),
        );
    }
    out.sort();
    out
}

fn cidr(cx: &mut Ctx, t: &toml::Table, key: &str, default: &str) -> Cidr {
    let s = string(cx, t, key).unwrap_or(default).to_string();
    Cidr::parse(&s).unwrap_or_else(|m| {
        cx.err(key, m);
        Cidr::parse(default).expect("valid default")
    })
}

fn addr(cx: &mut Ctx, t: &toml::Table, key: &str) -> Option<IpAddr> {
    let s = string(cx, t, key)?;
    match s.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(key, format!("{s:?} is not an IP address"));
            None
        }
    }
}

/// Parses and validates configuration text; `origin` names the file in messages.
pub fn parse(
    text: &str,
    origin: &str,
    fill: &mut dyn FnMut(&mut [u8]),
) -> Result<Config, ConfigErrors> {
    let root: toml::Table = text
        .parse()
        .map_err(|e| ConfigErrors(vec![format!("{origin}: {e}")]))?;
    let mut errs = vec![];
    for k in root.keys() {
        if k != "lab" && k != "tunnel" && k != "gateway" {
            errs.push(format!(
                "{origin}: unknown top-level key {k:?}; allowed: [lab], [gateway], [[tunnel]]"
            ));
        }
    }
    let mut lab = false;
    if let Some(l) = root.get("lab") {
        match l.as_table() {
            Some(t) => {
                for k in t.keys() {
                    if k != "allow_short_lifetimes" {
                        errs.push(format!(
                            "{origin}: [lab]: unknown key {k:?}; allowed: allow_short_lifetimes"
                        ));
                    }
                }
                let mut cx = Ctx {
                    errs: &mut errs,
                    label: format!("{origin}: [lab]"),
                };
                lab = boolean(&mut cx, t, "allow_short_lifetimes", false);
            }
            None => errs.push(format!("{origin}: lab must be a table")),
        }
    }
    let gw = match root.get("gateway") {
        None => None,
        Some(toml::Value::Table(t)) => gateway(t, origin, &mut errs),
        Some(_) => {
            errs.push(format!("{origin}: gateway must be a [gateway] table"));
            None
        }
    };
    let tables: Vec<&toml::Table> = match root.get("tunnel") {
        None => {
            errs.push(format!("{origin}: no [[tunnel]] tables"));
            vec![]
        }
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| {
                let t = v.as_table();
                if t.is_none() {
                    errs.push(format!("{origin}: every tunnel must be a [[tunnel]] table"));
                }
                t
            })
            .collect(),
        Some(_) => {
            errs.push(format!(
                "{origin}: tunnel must be an array of [[tunnel]] tables"
            ));
            vec![]
        }
    };
    let mut tunnels = vec![];
    for (i, t) in tables.iter().enumerate() {
        if let Some(tu) = tunnel(t, i, origin, lab, &mut errs, fill) {
            tunnels.push(tu);
        }
    }
    let mut cfg = Config {
        allow_short_lifetimes: lab,
        tunnels,
        gateway: None,
    };
    cfg.assign_inside_cidrs();
    let tunnels = cfg.tunnels;
    // Connections: exactly two tunnels each, unique names, unique inside CIDRs.
    let mut conns: BTreeMap<&str, Vec<&Tunnel>> = BTreeMap::new();
    for t in &tunnels {
        conns.entry(&t.connection).or_default().push(t);
    }
    for (c, ts) in &conns {
        // Connection options: the same on both tunnels.
        if let [a, b] = ts.as_slice() {
            for (key, same) in [
                ("routing", a.routing == b.routing),
                ("amazon_side_asn", a.amazon_side_asn == b.amazon_side_asn),
                (
                    "customer_gateway_asn",
                    a.customer_gateway_asn == b.customer_gateway_asn,
                ),
                ("bgp_advertise", a.bgp_advertise == b.bgp_advertise),
                ("static_routes", a.static_routes == b.static_routes),
            ] {
                if !same {
                    errs.push(format!(
                        "{origin}: connection {c:?}: {key}: tunnels {:?} and {:?} differ; it is a connection option, the same on both tunnels",
                        a.name, b.name
                    ));
                }
            }
        }
        if ts.len() != 2 {
            errs.push(format!(
                "{origin}: connection {c:?}: has {} tunnel(s) ({}); a VPN connection has exactly 2 tunnels",
                ts.len(),
                ts.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut names = HashSet::new();
    let mut inside = HashSet::new();
    for t in &tunnels {
        if !names.insert(&t.name) {
            errs.push(format!(
                "{origin}: tunnel {:?}: name: used by another tunnel; tunnel names must be unique",
                t.name
            ));
        }
        if !inside.insert(t.tunnel_inside_cidr) {
            errs.push(format!(
                "{origin}: tunnel {:?}: tunnel_inside_cidr: {} is used by another tunnel; inside CIDRs must be unique",
                t.name, t.tunnel_inside_cidr
            ));
        }
    }
    if errs.is_empty() {
        Ok(Config {
            allow_short_lifetimes: lab,
            tunnels,
            gateway: gw,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

fn tunnel(
    t: &toml::Table,
    i: usize,
    origin: &str,
    lab: bool,
    errs: &mut Vec<String>,
    fill: &mut dyn FnMut(&mut [u8]),
) -> Option<Tunnel> {
    let name = t.get("name").and_then(|v| v.as_str()).map(str::to_string);
    let label = match &name {
        Some(n) => format!("{origin}: tunnel {n:?}"),
        None => format!("{origin}: tunnel[{i}]"),
    };
    let mut cx = Ctx { errs, label };
    for k in t.keys() {
        if !TUNNEL_KEYS.contains(&k.as_str()) {
            cx.err(
                k,
                "unknown option; see shared/spec/tunnel-options.md for the option names",
            );
        }
    }
    let Some(name) = name else {
        cx.err("name", "missing; a unique tunnel name");
        return None;
    };
    let connection = string(&mut cx, t, "connection")
        .map(str::to_string)
        .unwrap_or_else(|| {
            cx.err(
                "connection",
                "missing; the VPN connection this tunnel belongs to (two tunnels each)",
            );
            String::new()
        });
    let outside_ip = addr(&mut cx, t, "outside_ip");
    if outside_ip.is_none() && !t.contains_key("outside_ip") {
        cx.err("outside_ip", "missing; this gateway's outside IPv4 address");
    }
    if let Some(IpAddr::V6(a)) = outside_ip {
        cx.err(
            "outside_ip",
            format!("{a} is IPv6; AWS outside addresses are always IPv4"),
        );
    }
    let peer_ip = addr(&mut cx, t, "peer_ip");
    let nat_t = choice(
        &mut cx,
        t,
        "nat_t",
        NatT::Auto,
        &[
            ("auto", NatT::Auto),
            ("off", NatT::Off),
            ("force", NatT::Force),
        ],
    );
    let ike_versions: Vec<IkeVersion> = {
        let l = name_list(&mut cx, t, "ike_versions", &["ikev1", "ikev2"], &[]);
        l.iter()
            .map(|v| {
                if v == "ikev1" {
                    IkeVersion::V1
                } else {
                    IkeVersion::V2
                }
            })
            .collect()
    };
    let enc_alias = Cipher::ALL.map(|c| (c.alias(), c.name()));
    let int_alias = Hash::ALL.map(|h| (h.alias(), h.name()));
    let phase1_encryption = name_list(&mut cx, t, "phase1_encryption", &ENCRYPTION, &enc_alias);
    let phase2_encryption = name_list(&mut cx, t, "phase2_encryption", &ENCRYPTION, &enc_alias);
    let phase1_integrity = name_list(&mut cx, t, "phase1_integrity", &INTEGRITY, &int_alias);
    let phase2_integrity = name_list(&mut cx, t, "phase2_integrity", &INTEGRITY, &int_alias);
    let phase1_dh_groups = group_list(&mut cx, t, "phase1_dh_groups", &DH1);
    let phase2_dh_groups = group_list(&mut cx, t, "phase2_dh_groups", &DH2);
    let (lo_life, lo_margin) = if lab { (2, 1) } else { (900, 60) };
    let p1 = int(
        &mut cx,
        t,
        "phase1_lifetime_s",
        28_800,
        lo_life,
        28_800,
        " seconds",
    ) as u32;
    let p2 = int(
        &mut cx,
        t,
        "phase2_lifetime_s",
        3_600,
        lo_life,
        3_600,
        " seconds",
    ) as u32;
    if p2 >= p1 {
        cx.err(
            "phase2_lifetime_s",
            format!(
                "{p2} is not below phase1_lifetime_s {p1}; phase 2 must be shorter than phase 1"
            ),
        );
    }
    let margin_hi = (p2 / 2) as i64;
    let rekey_margin_s = match t.get("rekey_margin_s") {
        None if 270 <= margin_hi => 270,
        None => {
            cx.err("rekey_margin_s", format!("the default 270 is above half of phase2_lifetime_s ({margin_hi}); set it to {lo_margin}..={margin_hi}"));
            margin_hi.max(lo_margin)
        }
        Some(_) => int(
            &mut cx,
            t,
            "rekey_margin_s",
            270,
            lo_margin,
            margin_hi.max(lo_margin),
            " seconds (60 to half of phase2_lifetime_s)",
        ),
    } as u32;
    let rekey_fuzz_pct = int(&mut cx, t, "rekey_fuzz_pct", 100, 0, 100, " percent") as u32;
    let replay_window_size =
        int(&mut cx, t, "replay_window_size", 1024, 64, 2048, " packets") as u32;
    let dpd_timeout_s = int(&mut cx, t, "dpd_timeout_s", 40, 30, 86_400, " seconds") as u32;
    let dpd_timeout_action = choice(
        &mut cx,
        t,
        "dpd_timeout_action",
        DpdAction::Clear,
        &[
            ("clear", DpdAction::Clear),
            ("none", DpdAction::None),
            ("restart", DpdAction::Restart),
        ],
    );
    let startup_action = choice(
        &mut cx,
        t,
        "startup_action",
        StartupAction::Add,
        &[("add", StartupAction::Add), ("start", StartupAction::Start)],
    );
    if startup_action == StartupAction::Start {
        if peer_ip.is_none() {
            cx.err("startup_action", "\"start\" needs peer_ip: the engine initiates towards the customer gateway's address");
        }
        if !ike_versions.contains(&IkeVersion::V2) {
            cx.err(
                "startup_action",
                "\"start\" needs ikev2 in ike_versions (AWS initiates with IKEv2 only)",
            );
        }
    }
    // IKEv1 protects its own messages with AES-CBC only (RFC 2409 has no AES-GCM): a
    // tunnel that allows only IKEv1 needs a CBC cipher in phase 1.
    if ike_versions == [IkeVersion::V1]
        && !phase1_encryption.is_empty()
        && phase1_encryption.iter().all(|e| e.contains("GCM"))
    {
        cx.err(
            "phase1_encryption",
            format!(
                "{phase1_encryption:?} with ike_versions = [\"ikev1\"]: IKEv1 needs AES128 or AES256 (AES-GCM is IKEv2 only)"
            ),
        );
    }
    let (pre_shared_key, psk_generated) = match string(&mut cx, t, "pre_shared_key") {
        Some(p) => {
            if let Err(m) = check_psk(p) {
                // Never echo the key itself.
                cx.err(
                    "pre_shared_key",
                    format!("the configured key is invalid: {m}"),
                );
            }
            (Zeroizing::new(p.to_string()), false)
        }
        None => (Zeroizing::new(generate_psk(fill)), true),
    };
    let tunnel_inside_ip_version = choice(
        &mut cx,
        t,
        "tunnel_inside_ip_version",
        IpVersion::V4,
        &[("ipv4", IpVersion::V4), ("ipv6", IpVersion::V6)],
    );
    let tunnel_inside_cidr = match string(&mut cx, t, "tunnel_inside_cidr") {
        None => Cidr {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            len: 0,
        }, // assigned below
        Some(s) => match Cidr::parse(s) {
            Ok(c) => {
                let link_local = Cidr::parse("169.254.0.0/16").expect("valid");
                if c.len != 30 || !link_local.contains(&c) {
                    cx.err(
                        "tunnel_inside_cidr",
                        format!("{c} is not allowed; allowed: a /30 inside 169.254.0.0/16"),
                    );
                } else if RESERVED_INSIDE
                    .iter()
                    .any(|r| c.addr == r.parse::<IpAddr>().expect("valid"))
                {
                    cx.err(
                        "tunnel_inside_cidr",
                        format!("{c} is reserved; reserved: 169.254.0.0/30 .. 169.254.5.0/30 and 169.254.169.252/30"),
                    );
                }
                c
            }
            Err(m) => {
                cx.err("tunnel_inside_cidr", m);
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    len: 0,
                }
            }
        },
    };
    let tunnel_inside_ipv6_cidr = match string(&mut cx, t, "tunnel_inside_ipv6_cidr") {
        None => None,
        Some(s) => match Cidr::parse(s) {
            Ok(c) => {
                if c.len != 126 || !Cidr::parse("fd00::/8").expect("valid").contains(&c) {
                    cx.err(
                        "tunnel_inside_ipv6_cidr",
                        format!("{c} is not allowed; allowed: a /126 inside fd00::/8"),
                    );
                }
                if tunnel_inside_ip_version != IpVersion::V6 {
                    cx.err(
                        "tunnel_inside_ipv6_cidr",
                        "only allowed with tunnel_inside_ip_version = \"ipv6\"",
                    );
                }
                Some(c)
            }
            Err(m) => {
                cx.err("tunnel_inside_ipv6_cidr", m);
                None
            }
        },
    };
    let local_ipv4_network_cidr = cidr(&mut cx, t, "local_ipv4_network_cidr", "0.0.0.0/0");
    let remote_ipv4_network_cidr = cidr(&mut cx, t, "remote_ipv4_network_cidr", "0.0.0.0/0");
    let local_ipv6_network_cidr = cidr(&mut cx, t, "local_ipv6_network_cidr", "::/0");
    let remote_ipv6_network_cidr = cidr(&mut cx, t, "remote_ipv6_network_cidr", "::/0");
    for (k, c, v6) in [
        ("local_ipv4_network_cidr", local_ipv4_network_cidr, false),
        ("remote_ipv4_network_cidr", remote_ipv4_network_cidr, false),
        ("local_ipv6_network_cidr", local_ipv6_network_cidr, true),
        ("remote_ipv6_network_cidr", remote_ipv6_network_cidr, true),
    ] {
        if c.addr.is_ipv6() != v6 {
            cx.err(k, format!("{c} is the wrong address family"));
        }
        if v6 && t.contains_key(k) && tunnel_inside_ip_version != IpVersion::V6 {
            cx.err(k, "only allowed with tunnel_inside_ip_version = \"ipv6\"");
        }
    }
    let log_enabled = boolean(&mut cx, t, "log_enabled", false);
    let log_destination = string(&mut cx, t, "log_destination").map(str::to_string);
    let fmt_key = if t.contains_key("log_format") {
        "log_format"
    } else {
        "log_output_format"
    };
    if t.contains_key("log_format") && t.contains_key("log_output_format") {
        cx.err(
            "log_format",
            "set either log_output_format or its alias log_format, not both",
        );
    }
    let log_output_format = choice(
        &mut cx,
        t,
        fmt_key,
        LogFormat::Json,
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    );
    let tunnel_lifecycle_control = boolean(&mut cx, t, "tunnel_lifecycle_control", false);
    let routing = choice(
        &mut cx,
        t,
        "routing",
        Routing::Dynamic,
        &[("static", Routing::Static), ("dynamic", Routing::Dynamic)],
    );
    let asn = |cx: &mut Ctx, key: &str, default: i64, check: fn(i64) -> Result<u32, String>| match t
        .get(key)
    {
        None => default as u32,
        Some(toml::Value::Integer(v)) => check(*v).unwrap_or_else(|m| {
            cx.err(key, m);
            default as u32
        }),
        Some(v) => {
            cx.err(key, format!("{v} is not a whole number"));
            default as u32
        }
    };
    let amazon_side_asn = asn(&mut cx, "amazon_side_asn", 64512, check_amazon_asn);
    let customer_gateway_asn = asn(&mut cx, "customer_gateway_asn", 65000, check_cgw_asn);
    if amazon_side_asn == customer_gateway_asn {
        cx.err(
            "customer_gateway_asn",
            format!("{customer_gateway_asn} is the Amazon-side ASN; the two must differ"),
        );
    }
    let bgp_advertise: Vec<Cidr> = match t.get("bgp_advertise") {
        None => vec![],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| match v.as_str().map(Cidr::parse) {
                Some(Ok(c)) if c.addr.is_ipv4() => Some(c),
                Some(Ok(c)) => {
                    cx.err(
                        "bgp_advertise",
                        format!("{c}: only IPv4 prefixes (IPv4 inside)"),
                    );
                    None
                }
                Some(Err(m)) => {
                    cx.err("bgp_advertise", m);
                    None
                }
                None => {
                    cx.err("bgp_advertise", format!("{v} is not a CIDR string"));
                    None
                }
            })
            .collect(),
        Some(v) => {
            cx.err("bgp_advertise", format!("{v} is not a list of CIDRs"));
            vec![]
        }
    };
    if bgp_advertise.len() > 100 {
        cx.err(
            "bgp_advertise",
            format!("{} prefixes; at most 100", bgp_advertise.len()),
        );
    }
    let bgp_md5_password = string(&mut cx, t, "bgp_md5_password").map(|p| {
        if p.is_empty() || p.len() > 80 || p.contains('"') || p.contains('\\') {
            cx.err(
                "bgp_md5_password",
                "must be 1 to 80 characters without quotes or backslashes",
            );
        }
        Zeroizing::new(p.to_string())
    });
    // Static routes: prefixes inside the tunnel's customer-side CIDR (the selectors would
    // drop the rest), of its inside IP version, at most 100 (AWS rejects the 101st).
    let local_cidr = match tunnel_inside_ip_version {
        IpVersion::V4 => local_ipv4_network_cidr,
        IpVersion::V6 => local_ipv6_network_cidr,
    };
    let static_routes: Vec<Cidr> = match t.get("static_routes") {
        None => vec![],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|v| match v.as_str().map(Cidr::parse) {
                Some(Ok(c)) if local_cidr.contains(&c) => Some(c),
                Some(Ok(c)) => {
                    cx.err(
                        "static_routes",
                        format!(
                            "{c} is outside the tunnel's customer-side network {local_cidr} (local_ipv{}_network_cidr): its traffic would not match the selectors",
                            if local_cidr.addr.is_ipv4() { 4 } else { 6 }
                        ),
                    );
                    None
                }
                Some(Err(m)) => {
                    cx.err("static_routes", m);
                    None
                }
                None => {
                    cx.err("static_routes", format!("{v} is not a CIDR string"));
                    None
                }
            })
            .collect(),
        Some(v) => {
            cx.err("static_routes", format!("{v} is not a list of CIDRs"));
            vec![]
        }
    };
    if static_routes.len() > 100 {
        cx.err(
            "static_routes",
            format!(
                "{} routes; at most 100 on a VPN connection (AWS rejects the 101st)",
                static_routes.len()
            ),
        );
    }
    if routing == Routing::Dynamic && t.contains_key("static_routes") {
        cx.err(
            "static_routes",
            format!(
                "with routing = \"dynamic\"{}: a BGP connection cannot also have static routes; set routing = \"static\"",
                if t.contains_key("routing") { "" } else { " (the default)" }
            ),
        );
    }
    if routing == Routing::Dynamic && tunnel_inside_ip_version == IpVersion::V6 {
        cx.err(
            "routing",
            format!(
                "\"dynamic\"{} with tunnel_inside_ip_version = \"ipv6\": BGP runs over IPv4 inside addresses only; set routing = \"static\"",
                if t.contains_key("routing") { "" } else { " (the default)" }
            ),
        );
    }
    if routing == Routing::Static
        && (t.contains_key("bgp_advertise") || t.contains_key("bgp_md5_password"))
    {
        cx.err(
            "routing",
            "\"static\" with bgp_* options: BGP runs only with routing = \"dynamic\"",
        );
    }
    let mut sas = vec![];
    if let Some(v) = t.get("sa") {
        // Static SAs in the [[sa]] format, nested as [[tunnel.sa]].
        let mut doc = toml::Table::new();
        doc.insert("sa".into(), v.clone());
        match static_sa::parse_sa_toml(&toml::to_string(&doc).unwrap_or_default(), &cx.label) {
            Ok(v) => sas = v,
            Err(e) => cx.errs.extend(e.0),
        }
    }
    let outside_ip = outside_ip?;
    Some(Tunnel {
        name,
        connection,
        outside_ip,
        peer_ip,
        nat_t,
        ike_versions,
        phase1_encryption,
        phase2_encryption,
        phase1_integrity,
        phase2_integrity,
        phase1_dh_groups,
        phase2_dh_groups,
        phase1_lifetime_s: p1,
        phase2_lifetime_s: p2,
        rekey_margin_s,
        rekey_fuzz_pct,
        replay_window_size,
        dpd_timeout_s,
        dpd_timeout_action,
        startup_action,
        pre_shared_key,
        psk_generated,
        tunnel_inside_cidr,
        tunnel_inside_ipv6_cidr,
        tunnel_inside_ip_version,
        local_ipv4_network_cidr,
        remote_ipv4_network_cidr,
        local_ipv6_network_cidr,
        remote_ipv6_network_cidr,
        log_enabled,
        log_destination,
        log_output_format,
        tunnel_lifecycle_control,
        routing,
        amazon_side_asn,
        customer_gateway_asn,
        bgp_advertise,
        bgp_md5_password,
        static_routes,
        sas,
        lab,
    })
}

impl Config {
    /// Assigns a /30 to every tunnel without a configured `tunnel_inside_cidr` (as AWS does),
    /// from 169.254.10.0/30 upwards, skipping used and reserved blocks.
    pub fn assign_inside_cidrs(&mut self) {
        let mut used: HashSet<IpAddr> = self
            .tunnels
            .iter()
            .filter(|t| t.tunnel_inside_cidr.len == 30)
            .map(|t| t.tunnel_inside_cidr.addr)
            .collect();
        let mut next = u32::from(Ipv4Addr::new(169, 254, 10, 0));
        for t in self
            .tunnels
            .iter_mut()
            .filter(|t| t.tunnel_inside_cidr.len != 30)
        {
            loop {
                let a = IpAddr::V4(Ipv4Addr::from(next));
                next += 4;
                if !used.contains(&a)
                    && !RESERVED_INSIDE
                        .iter()
                        .any(|r| r.parse::<IpAddr>().expect("valid") == a)
                {
                    used.insert(a);
                    t.tunnel_inside_cidr = Cidr { addr: a, len: 30 };
                    break;
                }
            }
        }
    }

    /// What is valid for AWS but will not work as the user may expect here, one line each
    /// (`espd check-config` prints them on stderr, `espd run` logs them): a tunnel that
    /// allows IKEv1 (besides IKEv2) with only AES-GCM in phase 1, which IKEv1 peers cannot
    /// use (they get NO-PROPOSAL-CHOSEN).
    pub fn warnings(&self) -> Vec<String> {
        self.tunnels
            .iter()
            .filter(|t| {
                t.sas.is_empty()
                    && t.ike_versions.contains(&IkeVersion::V1)
                    && t.phase1_encryption.iter().all(|e| e.contains("GCM"))
            })
            .map(|t| {
                format!(
                    "tunnel {:?}: phase1_encryption {:?}: IKEv1 peers get NO-PROPOSAL-CHOSEN (IKEv1 needs AES128 or AES256); IKEv2 peers are not affected",
                    t.name, t.phase1_encryption
                )
            })
            .collect()
    }

    /// One line per tunnel for `espd check-config` (no secrets).
    pub fn summary(&self) -> Vec<String> {
        self.tunnels
            .iter()
            .map(|t| {
                format!(
                    "tunnel {:?} connection {:?}: outside {} peer {} inside {} (aws {} cgw {}) ike {:?} p1 {}s p2 {}s margin {}s fuzz {}% replay {} dpd {}s/{:?} startup {:?} nat_t {:?} psk {} routing {} static SAs {}{}",
                    t.name,
                    t.connection,
                    t.outside_ip,
                    t.peer_ip.map_or("any".to_string(), |p| p.to_string()),
                    t.tunnel_inside_cidr,
                    t.tunnel_inside_cidr.host(1),
                    t.tunnel_inside_cidr.host(2),
                    t.ike_versions,
                    t.phase1_lifetime_s,
                    t.phase2_lifetime_s,
                    t.rekey_margin_s,
                    t.rekey_fuzz_pct,
                    t.replay_window_size,
                    t.dpd_timeout_s,
                    t.dpd_timeout_action,
                    t.startup_action,
                    t.nat_t,
                    if t.psk_generated { "generated" } else { "configured" },
                    match t.routing {
                        Routing::Static if t.static_routes.is_empty() => "static".to_string(),
                        Routing::Static => format!(
                            "static ({} route(s): {})",
                            t.static_routes.len(),
                            t.static_routes
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        Routing::Dynamic => format!(
                            "dynamic (BGP AS {} to AS {}, advertising {})",
                            t.amazon_side_asn,
                            t.customer_gateway_asn,
                            if t.bgp_advertise.is_empty() {
                                "nothing".to_string()
                            } else {
                                t.bgp_advertise
                                    .iter()
                                    .map(|c| c.to_string())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            }
                        ),
                    },
                    t.sas.len(),
                    if t.lab { " [lab: short lifetimes allowed]" } else { "" }
                )
            })
            .chain(self.gateway.iter().map(|g| {
                format!(
                    "gateway: inside {} outside {} cores {:?} xdp_mode {:?} control socket {}{}",
                    g.inside_interface,
                    g.outside_interface,
                    g.cores,
                    g.xdp_mode,
                    g.control_socket,
                    g.metrics_listen
                        .as_ref()
                        .map(|m| format!(" metrics {m}"))
                        .unwrap_or_default()
                )
            }))
            .collect()
    }
}
