//! `espd run`: the gateway. An XDP program on each interface steers ESP (outside) and
//! tunnel-bound traffic (inside) to the AF_XDP socket of the receiving queue, polled by the
//! pinned worker that holds that queue; everything else (ARP, ND, IKE, SSH, traffic for the
//! gateway) stays with the kernel.
//!
//! Contract: [`run`] validates everything before it touches the machine (config, control
//! socket, interfaces, queues, keys), so a bad start leaves nothing behind; once up it
//! runs until SIGINT/SIGTERM and then detaches (bpf_links close with their descriptors, so
//! a crash detaches too). SIGHUP re-reads the file and applies the static SA changes
//! (added, removed and changed SAs; unchanged SAs keep their sequence numbers and replay
//! windows, so their traffic is not disturbed); any other change needs a restart and is
//! reported. The control socket answers `espd show`.
//!
//! Threads: one pinned worker per entry of `cores` (at most one per queue of the interface
//! with fewer queues; queue q belongs to worker q % n on both interfaces). Tunnel t's SAs
//! belong to worker t % n (`engine::workers`): a worker that receives a packet of another
//! worker's SA hands it over through a ring (`engine::handoff`), so each SA has one writer.
//! One control thread (this one: neighbour refresh, retired SAs, signals, reloads, sequence
//! marks), the
//! IKE thread (`espd::ike_ctl`) and its DH thread (so DH work never delays the rest), a thread per
//! control-socket or metrics client (bounded: `telemetry::serve`). Every capability is dropped
//! before any of them starts (`espd::privs`).

use crate::config::{self, Config, Gateway, Tunnel, XdpMode};
use crate::diag::{self, Notify};
use crate::seqstore::SeqStore;
use crate::tunnel_log::{self, PhaseState, Record, TunnelLog};
use afxdp::neigh::{NeighShared, Resolver};
use afxdp::xsk::{self, XskConfig};
use afxdp::{self, MultiQueuePort, NextHops, PortStats};
use engine::counters::{Counters, DropReason};
use engine::crypto::Backend;
use engine::frag::ReasmLimits;
use engine::pkt::BufPool;
use engine::replay::ReplayWindow;
use engine::runtime::{Command, Selector, Worker, WorkerConfig, WorkerReport};
use engine::sa::{Direction, InboundSa, InnerPolicy, OutboundSa, SaConfig};
use engine::workers::WorkerSet;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry::metrics::{self, TunnelSnapshot};
use xdp_prog::{Role, Steering};

/// Options of `espd run` besides the file.
#[derive(Debug, Default, Clone)]
pub struct RunOpts {
    /// Write every SA's keys in Wireshark `esp_sa` format here (debugging only; logged).
    pub export_keys: Option<PathBuf>,
    /// Raised to stop (tests; signals do the same).
    pub stop: Option<Arc<AtomicBool>>,
}

/// What can stop `espd run` from starting, as one message.
pub type Error = String;

/// One SA's identity and content, to tell unchanged SAs from changed ones on reload.
fn fingerprint(s: &SaConfig) -> String {
    format!(
        "{:?}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{:?}|{}|{:?}",
        s.direction,
        s.spi,
        s.suite,
        hex::encode(&*s.enc_key),
        hex::encode(&*s.int_key),
        s.tunnel_src,
        s.tunnel_dst,
        s.nat_t,
        s.natt_sport,
        s.natt_dport,
        s.esn,
        s.df_policy,
        s.replay_window,
        s.inner_mtu,
    )
}

/// The persisted sequence marks of the static SAs (see [`crate::seqstore`]): outbound marks
/// are raised ahead of the worker, inbound tops written as they move.
struct SeqMarks {
    store: SeqStore,
    /// (tunnel, outbound, SPI) -> (tunnel name, SA, stored mark).
    sas: HashMap<(u32, bool, u32), (String, SaConfig, u64)>,
    last_in_write: Instant,
}

impl SeqMarks {
    fn open(g: &Gateway) -> Result<SeqMarks, Error> {
        Ok(SeqMarks {
            store: SeqStore::open(Path::new(&g.state_directory), g.seq_persist_step)?,
            sas: HashMap::new(),
            last_in_write: Instant::now(),
        })
    }

    /// An outbound SA starts after its stored mark (if its keys are the same) and may send
    /// up to a new mark, written before it is used.
    fn resume_out(&mut self, tunnel: u32, name: &str, sa: &mut OutboundSa) -> Result<(), Error> {
        if let Some(m) = self.store.load(name, &sa.cfg) {
            sa.advance_to(m.saturating_add(1));
        }
        let mark = self.store.next_mark(sa.next_seq(), sa.cfg.esn);
        self.store.store(name, &sa.cfg, mark).map_err(|e| {
            format!(
                "tunnel {name:?}: SA {:?}: cannot persist its sequence number: {e}",
                sa.cfg.name
            )
        })?;
        sa.set_seq_limit(mark);
        self.sas.insert(
            (tunnel, true, sa.cfg.spi),
            (name.to_string(), sa.cfg.clone(), mark),
        );
        Ok(())
    }

    /// An inbound SA counts everything up to its stored top as received.
    fn resume_in(&mut self, tunnel: u32, name: &str, sa: &mut InboundSa) {
        let top = self.store.load(name, &sa.cfg).unwrap_or(0);
        if top > 0 {
            sa.replay = ReplayWindow::resume(sa.cfg.replay_window, sa.cfg.esn, top);
        }
        self.sas.insert(
            (tunnel, false, sa.cfg.spi),
            (name.to_string(), sa.cfg.clone(), top),
        );
    }

    /// Raises the marks of outbound SAs that have used half their reservation (written,
    /// then the worker is told), and writes moved inbound tops once a second.
    fn advance(&mut self, r: &WorkerReport, handle: &WorkerSet, force: bool) {
        let write_in = force || self.last_in_write.elapsed() >= Duration::from_secs(1);
        if write_in {
            self.last_in_write = Instant::now();
        }
        let half = self.store.step / 2;
        for s in &r.sas {
            let Some((name, cfg, mark)) = self.sas.get_mut(&(s.tunnel, s.outbound, s.spi)) else {
                continue;
            };
            if s.outbound {
                if s.seq.saturating_add(half) <= *mark {
                    if s.seq_limit < *mark {
                        // Written already (a reload re-reserved): let the worker use it.
                        handle.send(Command::SetSeqLimit {
                            tunnel: s.tunnel,
                            spi: s.spi,
                            limit: *mark,
                        });
                    }
                    continue;
                }
                let next = self
                    .store
                    .next_mark(mark.saturating_add(1).max(s.seq), cfg.esn);
                if next <= *mark {
                    continue; // the end of the sequence space: the SA must be rekeyed
                }
                match self.store.store(name, cfg, next) {
                    Ok(()) => {
                        *mark = next;
                        handle.send(Command::SetSeqLimit {
                            tunnel: s.tunnel,
                            spi: s.spi,
                            limit: next,
                        });
                    }
                    Err(e) => tracing::error!(
                        "tunnel {name:?}: cannot persist the sequence mark ({e}); the SA stops at {mark} (seq_not_persisted) until it can"
                    ),
                }
            } else if write_in && s.seq > *mark {
                match self.store.store(name, cfg, s.seq) {
                    Ok(()) => *mark = s.seq,
                    Err(e) => {
                        tracing::warn!("tunnel {name:?}: cannot persist the replay window top: {e}")
                    }
                }
            }
        }
    }
}

/// Metadata of a configured tunnel that `show` and the metrics need.
#[derive(Clone, Debug)]
struct TunnelMeta {
    index: u32,
    name: String,
    connection: String,
    outside_ip: IpAddr,
    peer_ip: Option<IpAddr>,
    nat_t: bool,
    dpd_enabled: bool,
    selectors: Vec<Selector>,
    /// (direction, spi) -> fingerprint of the installed static SAs.
    sas: BTreeMap<(bool, u32), String>,
    /// IKE state and events (IKE-negotiated tunnels), refreshed twice a second.
    ike: Option<metrics::IkeSnapshot>,
    /// Dynamic routing: the BGP session's state as BIRD says (`Established`, `Active`,
    /// ...; empty until known), and the CGW's inside address it peers with.
    bgp: Option<(String, IpAddr)>,
}

struct Shared {
    handle: WorkerSet,
    tunnels: Mutex<Vec<TunnelMeta>>,
    /// Per-queue counters of each interface.
    inside: Vec<Arc<PortStats>>,
    outside: Vec<Arc<PortStats>>,
    ifnames: [String; 2],
    /// Socket descriptors of each interface's queues.
    xsk_fds: [Vec<i32>; 2],
    steer: [Arc<Steering>; 2],
    started: Instant,
    modes: String,
    /// The IKE shell's gateway-wide counters, refreshed twice a second.
    ike: Mutex<crate::ike_ctl::IkeCounters>,
    /// Rekeys asked for over the control socket: (tunnel index, IKE SA rather than CHILD_SA).
    rekeys: Mutex<Vec<(u32, bool)>>,
    /// What the metrics endpoint and the control socket did with their clients.
    metrics_clients: Arc<telemetry::http::ClientStats>,
    control_clients: Arc<telemetry::serve::Gate>,
    /// The dynamic (BGP) routes in the data plane.
    routes: crate::tunif::RouteList,
    /// The paths BIRD learned over each dynamic tunnel's session (tunnel index, path):
    /// AS path and learned-at for `espd show routes`, refreshed every 2 s.
    bgp_paths: Mutex<Vec<(u32, crate::bgpd::BgpPath)>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Inside traffic to the customer side goes into the tunnel: its static routes when it has
/// some, else its `local_*_network_cidr` (AWS's meaning), the IPv4 or the IPv6 one per the
/// tunnel's inside IP version.
fn selectors_of(t: &Tunnel) -> Vec<Selector> {
    let sel = |c: config::Cidr| Selector {
        addr: c.addr,
        prefix: c.len,
    };
    if !t.static_routes.is_empty() {
        return t.static_routes.iter().copied().map(sel).collect();
    }
    vec![sel(match t.tunnel_inside_ip_version {
        config::IpVersion::V4 => t.local_ipv4_network_cidr,
        config::IpVersion::V6 => t.local_ipv6_network_cidr,
    })]
}

fn os_seed() -> Result<[u8; 32], Error> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| format!("cannot read the OS random generator: {e}"))?;
    Ok(s)
}

/// What a static tunnel's inbound SAs may deliver (RFC 4301 section 5.2): sources in the
/// customer side's CIDR (`local_*_network_cidr`, AWS's meaning), destinations in ours.
fn inner_policy(t: &Tunnel) -> InnerPolicy {
    let (c, a) = match t.tunnel_inside_ip_version {
        config::IpVersion::V4 => (t.local_ipv4_network_cidr, t.remote_ipv4_network_cidr),
        config::IpVersion::V6 => (t.local_ipv6_network_cidr, t.remote_ipv6_network_cidr),
    };
    InnerPolicy {
        src: vec![c.range()],
        dst: vec![a.range()],
    }
}

/// Builds the SAs of a tunnel (checks keys before anything is installed).
fn build_sas(t: &Tunnel, backend: Backend) -> Result<(Vec<OutboundSa>, Vec<InboundSa>), Error> {
    let (mut outs, mut ins) = (vec![], vec![]);
    for s in &t.sas {
        let e = |e: engine::crypto::KeyError| format!("tunnel {:?}: SA {:?}: {e}", t.name, s.name);
        match s.direction {
            Direction::Out => {
                outs.push(OutboundSa::new(s.clone(), backend, &os_seed()?).map_err(e)?)
            }
            Direction::In => {
                let mut sa = InboundSa::new(s.clone(), backend).map_err(e)?;
                sa.policy = Some(inner_policy(t));
                ins.push(sa);
            }
        }
    }
    if outs.len() > 1 {
        return Err(format!(
            "tunnel {:?}: has {} outbound SAs; a tunnel sends with one SA",
            t.name,
            outs.len()
        ));
    }
    Ok((outs, ins))
}

/// The control socket: refuses to start when another espd answers on it.
fn bind_control(path: &str, group: Option<&str>) -> Result<UnixListener, Error> {
    let p = Path::new(path);
    if p.exists() {
        if UnixStream::connect(p).is_ok() {
            return Err(format!(
                "control socket {path}: another espd is running (it answers there); stop it or set control_socket"
            ));
        }
        std::fs::remove_file(p)
            .map_err(|e| format!("control socket {path}: cannot remove the stale socket: {e}"))?;
    }
    if let Some(dir) = p.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        return Err(format!(
            "control socket {path}: directory {} does not exist",
            dir.display()
        ));
    }
    let l = UnixListener::bind(p).map_err(|e| format!("control socket {path}: {e}"))?;
    let mode = match group {
        None => 0o600,
        Some(g) => {
            let gid = group_id(g).ok_or_else(|| {
                let _ = std::fs::remove_file(p);
                format!("[gateway]: control_socket_group: group {g:?} does not exist")
            })?;
            std::os::unix::fs::chown(p, None, Some(gid))
                .map_err(|e| format!("control socket {path}: chown to group {g}: {e}"))?;
            0o660
        }
    };
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("control socket {path}: {e}"))?;
    Ok(l)
}

fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
}

/// Checks an explicit `worker_queues` map against the interfaces' RX queue counts: every
/// queue of each interface has a worker (a queue without one would have no socket, and its
/// packets would go to the kernel), and every worker has a queue on each interface (it
/// sends there). Queue numbers beyond an interface's count are allowed (the other
/// interface may have more queues).
fn check_queue_map(map: &[Vec<u32>], ifaces: &[(&str, &str, u32)]) -> Result<(), String> {
    for (key, name, q) in ifaces {
        let q = (*q).max(1);
        for n in 0..q {
            if !map.iter().any(|l| l.contains(&n)) {
                return Err(format!(
                    "queue {n} of {key} {name:?} ({q} RX queues) has no worker; list every queue 0..={}",
                    q - 1
                ));
            }
        }
        for (w, l) in map.iter().enumerate() {
            if !l.iter().any(|x| *x < q) {
                return Err(format!(
                    "worker {w} ({l:?}) has no queue of {key} {name:?} ({q} RX queues: 0..={})",
                    q - 1
                ));
            }
        }
    }
    Ok(())
}

fn xdp_mode(m: XdpMode) -> xdp_prog::Mode {
    match m {
        XdpMode::Native => xdp_prog::Mode::Native,
        XdpMode::Generic => xdp_prog::Mode::Generic,
        XdpMode::Auto => xdp_prog::Mode::Auto,
    }
}

fn load_config(path: &Path) -> Result<Config, Error> {
    config::load(path, &mut |b| {
        let _ = getrandom::fill(b);
    })
    .map_err(|e| e.to_string())
}

struct Logs(HashMap<String, TunnelLog>);

/// Phase 1 and phase 2 states of a log record.
type Phases = (PhaseState, PhaseState);

/// Both phases up or both down (static SAs, start and stop).
fn both(up: bool) -> Phases {
    let s = if up {
        PhaseState::Established
    } else {
        PhaseState::Down
    };
    (s, s)
}

impl Logs {
    fn open(cfg: &Config) -> Self {
        let mut m = HashMap::new();
        for t in cfg.tunnels.iter().filter(|t| t.log_enabled) {
            let dest = t.log_destination.as_deref().unwrap_or("stdout");
            match TunnelLog::open(dest, t.log_output_format) {
                Ok(l) => {
                    m.insert(t.name.clone(), l);
                }
                Err(e) => tracing::error!("tunnel {:?}: log_destination {dest}: {e}", t.name),
            }
        }
        Logs(m)
    }
    fn write(&mut self, t: &TunnelMeta, lab: bool, st: Phases, details: &str) {
        if let Some(l) = self.0.get_mut(&t.name) {
            let d = tunnel_log::details(details, lab.then_some("[lab: short lifetimes allowed]"));
            let _ = l.write(&Record {
                epoch_ms: now_ms(),
                vpn_connection_id: &t.connection,
                tunnel_outside_ip: &t.outside_ip.to_string(),
                dpd_enabled: t.dpd_enabled,
                nat_t_detected: t.nat_t,
                phase1: st.0,
                phase2: st.1,
                details: &d,
            });
        }
    }
}

/// Runs the gateway of `path` until a stop signal. Every failure before it is up is one
/// clear message; nothing stays attached.
pub fn run(path: &Path, opts: RunOpts) -> Result<(), Error> {
    crate::privs::check_not_writable_by_others(path, "config file")?;
    if let Some(p) = &opts.export_keys {
        crate::privs::check_not_writable_by_others(p, "--export-keys file")?;
    }
    let cfg = load_config(path)?;
    let origin = path.display().to_string();
    for w in cfg.warnings() {
        tracing::warn!("{origin}: {w}");
    }
    let g: Gateway = cfg.gateway.clone().ok_or_else(|| {
        format!(
            "{origin}: espd run needs a [gateway] table (inside_interface, outside_interface, cores, xdp_mode)"
        )
    })?;
    let backend: Backend = g.backend.parse()?;
    if !backend.available() {
        return Err(format!(
            "{origin}: [gateway]: backend: {} is not available here",
            backend.name()
        ));
    }
    // Keys and SAs first: nothing is attached if one is bad.
    let mut planned = vec![];
    for (i, t) in cfg.tunnels.iter().enumerate() {
        let (o, inb) = build_sas(t, backend).map_err(|e| format!("{origin}: {e}"))?;
        planned.push((i as u32 + 1, t, o, inb));
    }
    // Sequence numbers of static SAs continue where the last run left them (written ahead:
    // a GCM nonce is never sent twice, even after a crash).
    let mut marks = SeqMarks::open(&g).map_err(|e| format!("{origin}: [gateway]: {e}"))?;
    for (idx, t, outs, ins) in &mut planned {
        for sa in outs.iter_mut() {
            marks
                .resume_out(*idx, &t.name, sa)
                .map_err(|e| format!("{origin}: {e}"))?;
        }
        for sa in ins.iter_mut() {
            marks.resume_in(*idx, &t.name, sa);
        }
    }
    let ctl = bind_control(&g.control_socket, g.control_socket_group.as_deref())?;
    let ctl_path = g.control_socket.clone();
    let cleanup_ctl = scopeguard(move || {
        let _ = std::fs::remove_file(&ctl_path);
    });
    let if_err = |key: &str, e: &dyn std::fmt::Display| format!("{origin}: [gateway]: {key}: {e}");
    let ifi_in =
        xdp_prog::ifindex(&g.inside_interface).map_err(|e| if_err("inside_interface", &e))?;
    let ifi_out =
        xdp_prog::ifindex(&g.outside_interface).map_err(|e| if_err("outside_interface", &e))?;
    let q_in = afxdp::rx_queues(&g.inside_interface) as u32;
    let q_out = afxdp::rx_queues(&g.outside_interface) as u32;
    for (key, name, q) in [
        ("inside_interface", &g.inside_interface, q_in),
        ("outside_interface", &g.outside_interface, q_out),
    ] {
        if q > 64 {
            return Err(if_err(
                key,
                &format!("{name:?} has {q} RX queues; at most 64 (ethtool -L {name} combined 64)"),
            ));
        }
    }
    // One worker per core, each with a share of both interfaces' queues: queue q -> worker
    // q % n, or the explicit `worker_queues` map. A worker needs a queue on each side to
    // send there, so without a map there are at most as many workers as the smaller
    // interface has queues.
    let (nworkers, map) = match &g.worker_queues {
        Some(m) => {
            check_queue_map(
                m,
                &[
                    ("inside_interface", &g.inside_interface, q_in),
                    ("outside_interface", &g.outside_interface, q_out),
                ],
            )
            .map_err(|e| format!("{origin}: [gateway]: worker_queues: {e}"))?;
            (m.len(), Some(m.clone()))
        }
        None => (
            g.cores
                .len()
                .min(q_in.max(1) as usize)
                .min(q_out.max(1) as usize),
            None,
        ),
    };
    if nworkers < g.cores.len() {
        tracing::warn!(
            "cores {:?}: {} worker(s), one per queue of the interface with fewer queues ({} inside, {} outside); add queues (ethtool -L IFACE combined N) to use every core",
            g.cores,
            nworkers,
            q_in,
            q_out
        );
    }
    let share = |q: u32, w: usize| -> Vec<u32> {
        match &map {
            Some(m) => m[w].iter().copied().filter(|x| *x < q.max(1)).collect(),
            None => (0..q.max(1))
                .filter(|x| *x as usize % nworkers == w)
                .collect(),
        }
    };
    let mode = xdp_mode(g.xdp_mode);
    let steer_out = Arc::new(
        Steering::attach(&g.outside_interface, Role::Outside, mode)
            .map_err(|e| if_err("outside_interface", &e))?,
    );
    let steer_in = Arc::new(
        Steering::attach(&g.inside_interface, Role::Inside, mode)
            .map_err(|e| if_err("inside_interface", &e))?,
    );
    for t in &cfg.tunnels {
        for s in selectors_of(t) {
            steer_in
                .add_selector(s.addr, s.prefix)
                .map_err(|e| if_err("inside_interface", &e))?;
        }
    }
    for a in afxdp::local_addrs(&g.inside_interface) {
        steer_in
            .add_local(a)
            .map_err(|e| if_err("inside_interface", &e))?;
    }
    let xcfg = XskConfig {
        frames: g.frames,
        ring: (g.frames / 2).clamp(64, 4096),
        zero_copy: g.zero_copy,
    };
    let neigh_in = NeighShared::new();
    let neigh_out = NeighShared::new();
    let mut ports = vec![];
    for w in 0..nworkers {
        let port_in = MultiQueuePort::open_queues(
            &g.inside_interface,
            ifi_in,
            &share(q_in, w),
            xcfg,
            hops(g.inside_next_hop),
            neigh_in.clone(),
        )
        .map_err(|e| if_err("inside_interface", &e))?;
        let port_out = MultiQueuePort::open_queues(
            &g.outside_interface,
            ifi_out,
            &share(q_out, w),
            xcfg,
            hops(g.outside_next_hop),
            neigh_out.clone(),
        )
        .map_err(|e| if_err("outside_interface", &e))?;
        for (q, fd) in port_in.fds() {
            steer_in
                .add_socket(q, fd)
                .map_err(|e| if_err("inside_interface", &e))?;
        }
        for (q, fd) in port_out.fds() {
            steer_out
                .add_socket(q, fd)
                .map_err(|e| if_err("outside_interface", &e))?;
        }
        ports.push((port_in, port_out));
    }
    let copy = |inside: bool| {
        if ports.iter().all(|p| {
            if inside {
                p.0.zero_copy()
            } else {
                p.1.zero_copy()
            }
        }) {
            "zero-copy"
        } else {
            "copy mode"
        }
    };
    // veth and tap senders leave TCP/UDP checksums for the NIC to finish (CHECKSUM_PARTIAL)
    // and AF_XDP hands us their bytes as they are: finish them on the way into the tunnel.
    let in_kind = afxdp::link::kind(ifi_in).unwrap_or_else(|e| {
        tracing::warn!(
            "inside_interface {}: link kind unknown: {e}",
            g.inside_interface
        );
        None
    });
    let complete_checksums = match g.complete_checksums {
        config::ChecksumMode::On => true,
        config::ChecksumMode::Off => false,
        config::ChecksumMode::Auto => afxdp::link::passes_partial_checksums(in_kind.as_deref()),
    };
    let modes = format!(
        "inside {} ({}XDP {}, AF_XDP {}, {} queue(s){}), outside {} (XDP {}, AF_XDP {}, {} queue(s))",
        g.inside_interface,
        in_kind
            .as_deref()
            .map(|k| format!("{k}, "))
            .unwrap_or_default(),
        steer_in.mode_name(),
        copy(true),
        q_in,
        if complete_checksums {
            ", partial checksums completed"
        } else {
            ""
        },
        g.outside_interface,
        steer_out.mode_name(),
        copy(false),
        q_out
    );
    let modes = format!(
        "{modes}; {nworkers} worker(s) on cores {:?}{}",
        &g.cores[..nworkers],
        match &map {
            Some(m) => format!(", worker_queues {m:?}"),
            None => String::new(),
        }
    );
    // Per-queue counters and sockets in queue order (each worker holds a share).
    let by_queue = |inside: bool| {
        let mut v: Vec<(u32, Arc<PortStats>, i32)> = vec![];
        for (pi, po) in &ports {
            let p = if inside { pi } else { po };
            for ((q, fd), st) in p.fds().into_iter().zip(p.stats()) {
                v.push((q, st, fd));
            }
        }
        v.sort_by_key(|x| x.0);
        v
    };
    let (qs_in, qs_out) = (by_queue(true), by_queue(false));
    let stats_in: Vec<Arc<PortStats>> = qs_in.iter().map(|x| x.1.clone()).collect();
    let stats_out: Vec<Arc<PortStats>> = qs_out.iter().map(|x| x.1.clone()).collect();
    let fds = [
        qs_in.iter().map(|x| x.2).collect(),
        qs_out.iter().map(|x| x.2).collect(),
    ];
    let wcfg = WorkerConfig {
        id: 0,
        core: Some(g.cores[0]),
        burst: g.burst,
        idle_sleep_us: g.idle_sleep_us,
        reassemble_inner: false,
        decrement_ttl: true,
        complete_checksums,
        reassembly: ReasmLimits {
            max_datagrams: g.reassembly.max_datagrams,
            max_bytes: g.reassembly.max_bytes,
            max_datagram: 65535,
            timeout: g.reassembly.timeout_s,
            max_fragments: g.reassembly.max_fragments,
            max_per_source: g.reassembly.max_per_source,
        },
    };
    // One pool behind the workers' local free lists: a buffer handed to another worker is
    // freed there and comes back through it (no allocation in steady state).
    let shared_bufs = engine::pkt::shared_pool(
        g.frames as usize * 2 * nworkers,
        engine::pkt::DEFAULT_CAPACITY,
    );
    let mut meshes = engine::handoff::mesh(nworkers, g.handoff_ring).into_iter();
    let mut workers = vec![];
    let mut handles = vec![];
    for (w, (port_in, port_out)) in ports.into_iter().enumerate() {
        let pool = BufPool::with_shared(shared_bufs.clone(), engine::pkt::DEFAULT_CAPACITY)
            .with_max_free(g.pool_max_free);
        let cfg = WorkerConfig {
            id: w,
            core: Some(g.cores[w]),
            ..wcfg.clone()
        };
        let (mut worker, h) = Worker::new(cfg, port_in, port_out, pool);
        if nworkers > 1
            && let Some(m) = meshes.next()
        {
            worker.set_mesh(m);
        }
        workers.push(worker);
        handles.push(h);
    }
    let handle = WorkerSet::new(handles);

    // Install the SAs and routes before the worker starts polling.
    let mut metas = vec![];
    let mut all_sas: Vec<SaConfig> = vec![];
    let mut resolver_out = Resolver::new(ifi_out, neigh_out);
    let mut resolver_in = Resolver::new(ifi_in, neigh_in);
    if let Some(h) = g.inside_next_hop {
        resolver_in.watch.push(h);
    }
    if let Some(h) = g.outside_next_hop {
        resolver_out.watch.push(h);
    }
    for (idx, t, outs, ins) in planned {
        let mut m = TunnelMeta {
            index: idx,
            name: t.name.clone(),
            connection: t.connection.clone(),
            outside_ip: t.outside_ip,
            peer_ip: t.peer_ip,
            nat_t: t.sas.iter().any(|s| s.nat_t),
            dpd_enabled: t.dpd_timeout_action != config::DpdAction::None,
            selectors: selectors_of(t),
            sas: BTreeMap::new(),
            ike: None,
            bgp: (t.routing == config::Routing::Dynamic)
                .then(|| (String::new(), t.tunnel_inside_cidr.host(2))),
        };
        for sa in ins {
            m.sas.insert((false, sa.cfg.spi), fingerprint(&sa.cfg));
            all_sas.push(sa.cfg.clone());
            handle.send(Command::AddInbound {
                tunnel: idx,
                sa: Box::new(sa),
            });
        }
        for sa in outs {
            m.sas.insert((true, sa.cfg.spi), fingerprint(&sa.cfg));
            all_sas.push(sa.cfg.clone());
            if g.outside_next_hop.is_none() {
                resolver_out.watch.push(sa.cfg.tunnel_dst);
            }
            handle.send(Command::SetOutbound {
                tunnel: idx,
                sa: Box::new(sa),
                selectors: vec![],
            });
        }
        metas.push(m);
    }
    // One route per connection: its first tunnel's selectors, tunnels in config order.
    let mut conns: BTreeMap<&str, Vec<&TunnelMeta>> = BTreeMap::new();
    for m in &metas {
        conns.entry(&m.connection).or_default().push(m);
    }
    for ts in conns.values() {
        // A dynamic connection's routes are what BGP learns (the tunnel interfaces'
        // thread follows BIRD's kernel table), not its CIDRs.
        if cfg
            .tunnels
            .iter()
            .any(|t| t.connection == ts[0].connection && t.routing == config::Routing::Dynamic)
        {
            continue;
        }
        handle.send(Command::SetRoute {
            selectors: ts[0].selectors.clone(),
            tunnels: ts.iter().map(|m| m.index).collect(),
        });
    }
    if let Some(p) = &opts.export_keys {
        let text: String = all_sas
            .iter()
            .map(|s| tunnel_log::esp_sa_line(s) + "\n")
            .collect();
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| format!("--export-keys {}: {e}", p.display()))?;
        }
        tracing::warn!(
            "keys of {} SA(s) exported to {} (--export-keys, for debugging with tshark); SAs negotiated by IKE are appended as they come, IKEv2 keys to {}.ikev2_decryption_table",
            all_sas.len(),
            p.display(),
            p.display()
        );
    }
    let _ = resolver_in.tick();
    let _ = resolver_out.tick();
    // IKE for the tunnels without static SAs (sockets bound now: a second IKE daemon on the
    // address is a startup error).
    let t0 = Instant::now();
    let indexed: Vec<(u32, &Tunnel)> = cfg
        .tunnels
        .iter()
        .enumerate()
        .filter(|_| g.ike)
        .map(|(i, t)| (i as u32 + 1, t))
        .collect();
    let mut ike = crate::ike_ctl::IkeCtl::new(&indexed, backend, opts.export_keys.clone(), 0.0)
        .map_err(|e| format!("{origin}: {e}"))?;
    ike.limits = g.ike_limits;
    for t in cfg.tunnels.iter().filter(|t| t.sas.is_empty()) {
        if let Some(p) = t.peer_ip
            && g.outside_next_hop.is_none()
        {
            resolver_out.watch.push(p);
        }
    }

    let stop = opts.stop.clone().unwrap_or_default();
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("installing signal handlers: {e}"))?;
    let metrics_listener = match &g.metrics_listen {
        Some(a) => Some(
            std::net::TcpListener::bind(a.as_str())
                .map_err(|e| format!("{origin}: [gateway]: metrics_listen {a}: {e}"))?,
        ),
        None => None,
    };
    // BIRD for dynamic routing, supervised by a process of ours started while we still
    // have our capabilities (BIRD needs port 179 and the kernel's routing tables).
    let dynamic = cfg
        .tunnels
        .iter()
        .any(|t| t.routing == config::Routing::Dynamic);
    let mut supervisor = None;
    let mut bird_ctl = g.bird_control_socket.as_ref().map(std::path::PathBuf::from);
    if dynamic && g.bird == config::BirdMode::Supervised {
        let conf = crate::bird::gateway_conf(&cfg).unwrap_or_default();
        let conf =
            format!("log stderr {{ info, remote, warning, error, auth, fatal, bug }};\n{conf}");
        let dir = Path::new(&g.state_directory).join("bird");
        let s = crate::bgpd::Supervisor::start(&g.bird_binary, &conf, &dir)
            .map_err(|e| format!("{origin}: [gateway]: bird = \"supervised\": {e}"))?;
        tracing::info!(
            "BIRD supervised for dynamic routing: configuration and control socket in {}",
            dir.display()
        );
        bird_ctl = Some(s.ctl.clone());
        supervisor = Some(s);
    }
    // Tunnel interfaces (TUN devices need CAP_NET_ADMIN: made now).
    let tunifs = if g.tunnel_interfaces {
        let list: Vec<(u32, std::net::Ipv4Addr, u8)> = cfg
            .tunnels
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.tunnel_inside_cidr.host(1) {
                IpAddr::V4(a) => Some((i as u32 + 1, a, t.tunnel_inside_cidr.len)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let (mut ifs, warnings) = crate::tunif::TunnelIfs::create(&list, &handle);
        if cfg
            .tunnels
            .iter()
            .any(|t| t.routing == config::Routing::Dynamic)
        {
            ifs.route_table = Some(crate::bird::ROUTE_TABLE);
        }
        for w in warnings {
            tracing::warn!("{w}");
        }
        for w in workers.iter_mut() {
            w.to_local = Some(ifs.queue.clone());
        }
        let names: Vec<String> = ifs.names().into_iter().map(|(_, n)| n).collect();
        if !names.is_empty() {
            tracing::info!(
                "tunnel interfaces: {} (the AWS-side inside addresses, MTU {})",
                names.join(", "),
                crate::tunif::MTU
            );
        }
        Some(ifs)
    } else {
        None
    };
    // Everything privileged is done (XDP attached, AF_XDP sockets made, UDP 500/4500 and
    // the metrics port bound): no capability is kept, before any other thread starts.
    crate::privs::drop_all().map_err(|e| format!("dropping capabilities: {e}"))?;
    tracing::info!(
        "capabilities dropped (no_new_privs; effective, permitted, bounding sets empty)"
    );
    let mut wthreads = vec![];
    for (i, worker) in workers.into_iter().enumerate() {
        let wstop = stop.clone();
        wthreads.push(
            std::thread::Builder::new()
                .name(format!("espd-worker-{i}"))
                .spawn(move || {
                    let w = worker.run(wstop);
                    drop(w);
                })
                .map_err(|e| format!("starting worker {i}: {e}"))?,
        );
    }
    handle.barrier();
    let routes = tunifs
        .as_ref()
        .map(|t| t.installed.clone())
        .unwrap_or_default();
    let tunif_thread = match tunifs {
        Some(ifs) => Some(
            ifs.spawn(handle.clone(), stop.clone())
                .map_err(|e| format!("starting the tunnel interface thread: {e}"))?,
        ),
        None => None,
    };

    let shared = Arc::new(Shared {
        handle: handle.clone(),
        tunnels: Mutex::new(metas),
        inside: stats_in,
        outside: stats_out,
        ifnames: [g.inside_interface.clone(), g.outside_interface.clone()],
        xsk_fds: fds,
        steer: [steer_in.clone(), steer_out.clone()],
        started: Instant::now(),
        modes: modes.clone(),
        ike: Mutex::new(Default::default()),
        rekeys: Mutex::new(vec![]),
        metrics_clients: Arc::default(),
        control_clients: Arc::default(),
        routes,
        bgp_paths: Mutex::new(vec![]),
    });
    let mut logs = Logs::open(&cfg);
    for m in shared
        .tunnels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let up = m.sas.keys().any(|(out, _)| *out);
        logs.write(
            m,
            cfg.allow_short_lifetimes,
            both(up),
            if up {
                "Static SAs installed: tunnel UP (espd run, no IKE)"
            } else {
                "No outbound SA: tunnel DOWN"
            },
        );
    }
    let ctl_thread = spawn_control(ctl, shared.clone(), stop.clone());
    let _metrics = match metrics_listener {
        Some(l) => {
            let s = shared.clone();
            Some(
                telemetry::http::serve_on(
                    l,
                    telemetry::serve::Limits::default(),
                    shared.metrics_clients.clone(),
                    Arc::new(move || render_metrics(&s)),
                )
                .map_err(|e| format!("{origin}: [gateway]: metrics_listen: {e}"))?,
            )
        }
        None => None,
    };
    let up = format!(
        "gateway up: {modes}; {} tunnel(s), backend {}; control socket {}{}",
        cfg.tunnels.len(),
        backend.name(),
        g.control_socket,
        g.metrics_listen
            .as_ref()
            .map(|a| format!(", metrics http://{a}/metrics"))
            .unwrap_or_default()
    );
    tracing::info!("{up}");
    diag::notify(Notify::Ready(&up));

    let (ike_thread, ike_logs) = spawn_ike(ike, shared.clone(), handle.clone(), stop.clone(), t0)?;
    let mut signals = signals;
    let mut last_tick = Instant::now();
    let mut last_marks = Instant::now();
    let mut last_bgp = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for sig in signals.pending() {
            match sig {
                signal_hook::consts::SIGHUP => {
                    diag::notify(Notify::Reloading);
                    let status = match reload(path, &shared, &g, backend, &mut marks) {
                        Ok(msg) => {
                            tracing::info!("SIGHUP: {msg}");
                            "reloaded"
                        }
                        Err(e) => {
                            tracing::error!(
                                "SIGHUP: reload failed, the running configuration stays:\n{e}"
                            );
                            "reload failed; the running configuration stays"
                        }
                    };
                    diag::notify(Notify::Ready(status));
                }
                _ => stop.store(true, Ordering::Relaxed),
            }
        }
        handle.reap();
        while let Ok((idx, st, line)) = ike_logs.try_recv() {
            let metas = shared.tunnels.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = metas.iter().find(|m| m.index == idx) {
                tracing::info!(target: "espd::tunnel", "tunnel {:?}: {line}", m.name);
                logs.write(m, cfg.allow_short_lifetimes, st, &line);
            }
        }
        if let Some(ctl) = &bird_ctl
            && last_bgp.elapsed() >= Duration::from_secs(2)
        {
            last_bgp = Instant::now();
            bgp_states(ctl, &cfg, &shared, &mut logs);
        }
        if last_marks.elapsed() >= Duration::from_millis(100) {
            last_marks = Instant::now();
            if let Some(r) = handle.report(true) {
                marks.advance(&r, &handle, false);
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(500)
            || resolver_in.has_wanted()
            || resolver_out.has_wanted()
        {
            let _ = resolver_in.tick();
            let _ = resolver_out.tick();
            last_tick = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    diag::notify(Notify::Stopping);
    tracing::info!("stopping: detaching XDP and closing sockets");
    if let Some(r) = handle.report(true) {
        marks.advance(&r, &handle, true);
    }
    let _ = ike_thread.join();
    if let Some(t) = tunif_thread {
        let _ = t.join();
    }
    if let Some(mut s) = supervisor {
        s.stop();
    }
    while let Ok((idx, st, line)) = ike_logs.try_recv() {
        let metas = shared.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = metas.iter().find(|m| m.index == idx) {
            logs.write(m, cfg.allow_short_lifetimes, st, &line);
        }
    }
    handle.send(Command::Stop);
    for t in wthreads {
        let _ = t.join();
    }
    let _ = ctl_thread.join();
    for m in shared
        .tunnels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        logs.write(
            m,
            cfg.allow_short_lifetimes,
            both(false),
            "espd stopped: tunnel DOWN",
        );
    }
    drop(cleanup_ctl);
    Ok(())
}

fn hops(h: Option<IpAddr>) -> NextHops {
    match h {
        Some(IpAddr::V4(a)) => NextHops {
            v4: Some(a),
            v6: None,
        },
        Some(IpAddr::V6(a)) => NextHops {
            v4: None,
            v6: Some(a),
        },
        None => NextHops::default(),
    }
}

/// The IKE shell on a thread of its own: its DH work (bounded per poll by
/// [`crate::ike_ctl::DH_BUDGET`]) cannot delay signals, reloads, sequence marks or
/// neighbour refreshes. Log lines go back to the main thread (which owns the tunnel logs);
/// counters and per-tunnel IKE state are published to `shared` twice a second.
fn spawn_ike(
    mut ike: crate::ike_ctl::IkeCtl,
    sh: Arc<Shared>,
    handle: WorkerSet,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> Result<
    (
        std::thread::JoinHandle<()>,
        crossbeam_channel::Receiver<crate::ike_ctl::LogLine>,
    ),
    Error,
> {
    // The responder's DH work on a thread of its own too (started here, after the
    // capabilities are gone, like every thread).
    ike.offload_dh(1)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let t = std::thread::Builder::new()
        .name("espd-ike".into())
        .spawn(move || {
            // The figures are published at once (so `rekey` and `show` know the tunnels from
            // the start), then twice a second.
            let mut last: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let now = t0.elapsed().as_secs_f64();
                for (idx, ike_sa) in
                    std::mem::take(&mut *sh.rekeys.lock().unwrap_or_else(|e| e.into_inner()))
                {
                    ike.rekey_now(idx, ike_sa, now);
                }
                for l in ike.poll(now, &handle) {
                    let _ = tx.send(l);
                }
                if last.is_none_or(|l| l.elapsed() >= Duration::from_millis(500)) {
                    last = Some(Instant::now());
                    *sh.ike.lock().unwrap_or_else(|e| e.into_inner()) = ike.counters;
                    let stats = ike.stats();
                    if !stats.is_empty() {
                        let mut metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
                        for (idx, st) in stats {
                            if let Some(m) = metas.iter_mut().find(|m| m.index == idx) {
                                m.ike = Some(st);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    t.map(|t| (t, rx))
        .map_err(|e| format!("starting the IKE thread: {e}"))
}

/// Runs `f` when dropped.
struct Guard<F: FnMut()>(F);
impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

/// Applies the static SA changes of the file (SIGHUP).
fn reload(
    path: &Path,
    sh: &Shared,
    g: &Gateway,
    backend: Backend,
    marks: &mut SeqMarks,
) -> Result<String, Error> {
    crate::privs::check_not_writable_by_others(path, "config file")?;
    let cfg = load_config(path)?;
    if cfg.gateway.as_ref() != Some(g) {
        return Err("the [gateway] table changed: restart espd to apply it".into());
    }
    let mut metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
    let names: Vec<&str> = metas.iter().map(|m| m.name.as_str()).collect();
    let new_names: Vec<&str> = cfg.tunnels.iter().map(|t| t.name.as_str()).collect();
    if names != new_names {
        return Err("tunnels were added, removed or renamed: restart espd to apply it".into());
    }
    for (m, t) in metas.iter().zip(&cfg.tunnels) {
        if m.selectors != selectors_of(t) {
            return Err(format!(
                "tunnel {:?}: network CIDRs or static routes changed: restart espd to apply it",
                t.name
            ));
        }
    }
    // Build everything first so a bad key changes nothing.
    let mut built = vec![];
    for (m, t) in metas.iter().zip(&cfg.tunnels) {
        let (mut outs, mut ins) = build_sas(t, backend)?;
        for sa in &mut outs {
            marks.resume_out(m.index, &t.name, sa)?;
        }
        for sa in &mut ins {
            marks.resume_in(m.index, &t.name, sa);
        }
        built.push((outs, ins));
    }
    let (mut added, mut removed, mut kept) = (0, 0, 0);
    for ((m, t), (outs, ins)) in metas.iter_mut().zip(&cfg.tunnels).zip(built) {
        let want: BTreeMap<(bool, u32), String> = t
            .sas
            .iter()
            .map(|s| ((s.direction == Direction::Out, s.spi), fingerprint(s)))
            .collect();
        // Inbound SAs that went away (a changed one is replaced in place by its AddInbound,
        // which keeps its replay window when its keys did not change).
        for k in m.sas.keys() {
            if !k.0 && !want.contains_key(k) {
                sh.handle.send(Command::DelInbound { spi: k.1 });
                removed += 1;
            }
        }
        let old_out: Option<(u32, String)> = m
            .sas
            .iter()
            .find(|(k, _)| k.0)
            .map(|(k, f)| (k.1, f.clone()));
        for sa in ins {
            let k = (false, sa.cfg.spi);
            if m.sas.get(&k) == want.get(&k) {
                kept += 1;
                continue;
            }
            sh.handle.send(Command::AddInbound {
                tunnel: m.index,
                sa: Box::new(sa),
            });
            added += 1;
        }
        match outs.into_iter().next() {
            Some(sa) => {
                if old_out.as_ref().map(|(spi, f)| (*spi, f.as_str()))
                    == Some((sa.cfg.spi, fingerprint(&sa.cfg).as_str()))
                {
                    kept += 1;
                } else {
                    sh.handle.send(Command::SetOutbound {
                        tunnel: m.index,
                        sa: Box::new(sa),
                        selectors: vec![],
                    });
                    added += 1;
                }
            }
            None if old_out.is_some() => {
                // No outbound SA any more: the tunnel goes DOWN; its inbound SAs stay.
                sh.handle.send(Command::SetTunnelState {
                    tunnel: m.index,
                    up: false,
                });
                removed += 1;
            }
            None => {}
        }
        if old_out.is_none() && want.keys().any(|k| k.0) {
            sh.handle.send(Command::SetTunnelState {
                tunnel: m.index,
                up: true,
            });
        }
        m.sas = want;
    }
    sh.handle.barrier();
    Ok(format!(
        "static SAs reloaded: {added} added or replaced, {removed} removed, {kept} unchanged"
    ))
}

fn reports(sh: &Shared) -> Option<WorkerReport> {
    sh.handle.report(true)
}

/// Each worker's own counters (no per-SA detail), in worker order.
fn worker_reports(sh: &Shared) -> Vec<WorkerReport> {
    sh.handle.reports(false).into_iter().flatten().collect()
}

/// One worker's line in `show counters --json` (`workers` array).
fn worker_json(w: &WorkerReport) -> serde_json::Value {
    json!({
        "worker": w.worker,
        "core": w.core,
        "rx_packets": w.rx_in + w.rx_out,
        "tx_packets": w.tx_in + w.tx_out,
        "rx_inside": w.rx_in, "rx_outside": w.rx_out,
        "tx_inside": w.tx_in, "tx_outside": w.tx_out,
        "handoff_out": w.handoff_out,
        "handoff_in": w.handoff_in,
        "handoff_drops": w.handoff_drops,
        "outbound_sas": w.outbound_sas, "inbound_sas": w.inbound_sas,
        "polls": w.polls,
        "checksums_completed": w.total.checksums_completed,
        "drops": drops_json(&w.total),
    })
}

/// Reads the BGP sessions' states from BIRD and logs their changes (engine events of the
/// tunnel log: BGP up / down with BIRD's reason).
fn bgp_states(ctl: &Path, cfg: &Config, sh: &Shared, logs: &mut Logs) {
    let Ok(sessions) = crate::bgpd::sessions(ctl) else {
        return;
    };
    let mut metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(paths) = crate::bgpd::routes(ctl) {
        // Each path by the tunnel whose session learned it.
        let by_tunnel = paths
            .into_iter()
            .filter_map(|p| {
                let t = cfg
                    .tunnels
                    .iter()
                    .find(|t| crate::bird::protocol_name(t) == p.protocol)?;
                let m = metas.iter().find(|m| m.name == t.name)?;
                Some((m.index, p))
            })
            .collect();
        *sh.bgp_paths.lock().unwrap_or_else(|e| e.into_inner()) = by_tunnel;
    }
    for m in metas.iter_mut() {
        let Some(t) = cfg.tunnels.iter().find(|t| t.name == m.name) else {
            continue;
        };
        let Some((state, peer)) = m.bgp.clone() else {
            continue;
        };
        let name = crate::bird::protocol_name(t);
        let Some(sess) = sessions.iter().find(|x| x.name == name) else {
            continue;
        };
        let now = if sess.established() {
            "Established".to_string()
        } else if sess.info.is_empty() {
            sess.state.clone()
        } else {
            sess.info.clone()
        };
        if now == state {
            continue;
        }
        let was_up = state == "Established";
        m.bgp = Some((now.clone(), peer));
        let line = if sess.established() {
            Some(format!(
                "engine: BGP session with {peer} Established (tunnel UP for routing)"
            ))
        } else if was_up {
            Some(format!(
                "engine: BGP session with {peer} down: {now} (its routes are withdrawn)"
            ))
        } else if now.contains("Error") || now.contains("limit") {
            // Why it does not come up (a wrong ASN, the prefix limit, a bad password).
            Some(format!(
                "engine: BGP session with {peer} not established: {now}"
            ))
        } else {
            None
        };
        if let Some(l) = line {
            tracing::info!(target: "espd::tunnel", "tunnel {:?}: {l}", m.name);
            let up = m.ike.is_some() || !m.sas.is_empty();
            logs.write(m, cfg.allow_short_lifetimes, both(up), &l);
        }
    }
}

fn snapshots(sh: &Shared) -> Vec<TunnelSnapshot> {
    let r = reports(sh).unwrap_or_default();
    let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
    metas
        .iter()
        .map(|m| {
            let c = r
                .per_tunnel
                .iter()
                .find(|(t, _)| *t == m.index)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            TunnelSnapshot {
                vpn_id: m.connection.clone(),
                tunnel_ip: m.outside_ip.to_string(),
                name: m.name.clone(),
                // With dynamic routing a tunnel is UP (AWS TunnelState 1) only while its
                // BGP session is Established.
                up: r.sas.iter().any(|s| s.tunnel == m.index && s.outbound)
                    && m.bgp.as_ref().is_none_or(|(s, _)| s == "Established"),
                nat_t: m.nat_t,
                dpd_enabled: m.dpd_enabled,
                out: c.out,
                inb: c.inb,
                ike: m.ike.clone(),
                bgp_established: m.bgp.as_ref().map(|(s, _)| s == "Established"),
            }
        })
        .collect()
}

/// The Prometheus text of the running gateway: the AWS tunnel metrics, then per SA
/// (packets, bytes, drops by reason, sequence number, replay window) and per worker
/// (polls, receive-burst occupancy) and per interface (XDP verdicts, port counters).
fn render_metrics(sh: &Shared) -> String {
    let mut x = metrics::Exposition::default();
    metrics::register(&mut x, &snapshots(sh));
    let r = reports(sh).unwrap_or_default();
    let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Dynamic routes (BGP) in the data plane, by tunnel (an ECMP route counts on each).
    let routes = sh.routes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let dynamic: Vec<&TunnelMeta> = metas.iter().filter(|m| m.bgp.is_some()).collect();
    if !dynamic.is_empty() {
        x.gauge(
            "vpn_tunnel_bgp_routes",
            "Prefixes learned over BGP that the data plane sends into the tunnel.",
            dynamic.iter().map(|m| {
                let n = routes
                    .iter()
                    .filter(|(_, ts)| ts.contains(&m.index))
                    .count();
                (
                    vec![
                        ("vpn_id", m.connection.clone()),
                        ("tunnel_ip", m.outside_ip.to_string()),
                        ("tunnel", m.name.clone()),
                    ],
                    n as i64,
                )
            }),
        );
    }
    let tname = |i: u32| {
        metas
            .iter()
            .find(|m| m.index == i)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let sa_l = |s: &engine::runtime::SaReport| -> metrics::Labels {
        vec![
            ("tunnel", tname(s.tunnel)),
            ("sa", s.name.clone()),
            ("spi", format!("{:#010x}", s.spi)),
            ("direction", (if s.outbound { "out" } else { "in" }).into()),
        ]
    };
    let sas = |inbound_only: bool, f: fn(&engine::runtime::SaReport) -> u64| {
        r.sas
            .iter()
            .filter(|s| !(inbound_only && s.outbound))
            .map(|s| (sa_l(s), f(s)))
            .collect::<Vec<_>>()
    };
    let gauge = |v: Vec<(metrics::Labels, u64)>| {
        v.into_iter()
            .map(|(l, n)| (l, i64::try_from(n).unwrap_or(i64::MAX)))
            .collect::<Vec<_>>()
    };
    x.counter(
        "espd_sa_packets_total",
        "Packets of the SA.",
        sas(false, |s| s.counters.packets),
    );
    x.counter(
        "espd_sa_inner_bytes_total",
        "Inner bytes of the SA.",
        sas(false, |s| s.counters.inner_bytes),
    );
    x.gauge(
        "espd_sa_sequence_number",
        "Outbound: next sequence number; inbound: highest accepted.",
        gauge(sas(false, |s| s.seq)),
    );
    x.gauge(
        "espd_sa_replay_window",
        "Inbound SA replay window size (packets).",
        gauge(sas(true, |s| u64::from(s.replay_window))),
    );
    x.counter(
        "espd_sa_drops_total",
        "Packets of the SA dropped, by reason.",
        r.sas.iter().flat_map(|s| {
            DropReason::ALL.iter().filter_map(move |reason| {
                let v = s.counters.dropped(*reason);
                (v > 0).then(|| {
                    let mut l = sa_l(s);
                    l.push(("reason", reason.name().into()));
                    (l, v)
                })
            })
        }),
    );
    let ws = worker_reports(sh);
    let per_worker = |f: fn(&WorkerReport) -> u64| {
        ws.iter()
            .map(|w| (vec![("worker", w.worker.to_string())], f(w)))
            .collect::<Vec<_>>()
    };
    x.counter(
        "espd_worker_polls_total",
        "Poll-loop iterations of the worker.",
        per_worker(|w| w.polls),
    );
    x.counter(
        "espd_worker_pool_grown_total",
        "Packet buffers allocated because the pool was empty.",
        per_worker(|w| w.pool_grown),
    );
    x.counter(
        "espd_worker_pool_freed_total",
        "Packet buffers freed instead of pooled (free list at its bound, or over-size).",
        per_worker(|w| w.pool_freed),
    );
    x.counter(
        "espd_worker_checksums_completed_total",
        "Partial TCP/UDP checksums of inside senders the worker finished.",
        per_worker(|w| w.total.checksums_completed),
    );
    x.counter(
        "espd_worker_local_packets_total",
        "Packets of the gateway's own tunnel addresses: decrypted for the tunnel interfaces (in), sent from them (out).",
        ws.iter().flat_map(|w| {
            [("in", w.total.local_in), ("out", w.total.local_out)].map(|(d, v)| {
                (
                    vec![
                        ("worker", w.worker.to_string()),
                        ("direction", d.to_string()),
                    ],
                    v,
                )
            })
        }),
    );
    x.counter(
        "espd_worker_packets_total",
        "Packets the worker received from and sent to its queues, by side and direction.",
        ws.iter().flat_map(|w| {
            [
                ("inside", "rx", w.rx_in),
                ("outside", "rx", w.rx_out),
                ("inside", "tx", w.tx_in),
                ("outside", "tx", w.tx_out),
            ]
            .map(|(side, dir, v)| {
                (
                    vec![
                        ("worker", w.worker.to_string()),
                        ("side", side.to_string()),
                        ("direction", dir.to_string()),
                    ],
                    v,
                )
            })
        }),
    );
    x.counter(
        "espd_worker_handoff_total",
        "Packets handed to the worker owning their SA (out), taken from other workers (in), and dropped because the ring to the owner was full (dropped).",
        ws.iter().flat_map(|w| {
            [
                ("out", w.handoff_out),
                ("in", w.handoff_in),
                ("dropped", w.handoff_drops),
            ]
            .map(|(k, v)| {
                (
                    vec![("worker", w.worker.to_string()), ("kind", k.to_string())],
                    v,
                )
            })
        }),
    );
    x.counter(
        "espd_worker_drops_total",
        "Packets the worker dropped (its own and its SAs'), by reason.",
        ws.iter().flat_map(|w| {
            DropReason::ALL.iter().filter_map(move |reason| {
                let v = w.total.dropped(*reason);
                (v > 0).then(|| {
                    (
                        vec![
                            ("worker", w.worker.to_string()),
                            ("reason", reason.name().to_string()),
                        ],
                        v,
                    )
                })
            })
        }),
    );
    x.counter(
        "espd_worker_bursts_total",
        "Polls by received burst size: bucket 0 empty, i: [2^(i-1), 2^i).",
        ws.iter().flat_map(|w| {
            w.burst_hist.iter().enumerate().map(|(i, v)| {
                (
                    vec![("worker", w.worker.to_string()), ("bucket", i.to_string())],
                    *v,
                )
            })
        }),
    );
    x.counter(
        "espd_xdp_verdicts_total",
        "Verdicts of the XDP steering program.",
        sh.steer.iter().enumerate().flat_map(|(i, st)| {
            xdp_prog::VERDICTS
                .iter()
                .zip(st.stats())
                .map(move |(k, v)| {
                    (
                        vec![
                            ("interface", sh.ifnames[i].clone()),
                            ("verdict", k.to_string()),
                        ],
                        v,
                    )
                })
        }),
    );
    let mut ports = vec![];
    for (i, queues) in [&sh.inside, &sh.outside].into_iter().enumerate() {
        let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
        for q in queues.iter() {
            for (k, v) in q.pairs() {
                *sum.entry(k).or_default() += v;
            }
        }
        for (k, v) in sum {
            ports.push((
                vec![
                    ("interface", sh.ifnames[i].clone()),
                    ("counter", k.to_string()),
                ],
                v,
            ));
        }
    }
    x.counter(
        "espd_port_packets_total",
        "AF_XDP port counters, summed over queues.",
        ports,
    );
    let k = *sh.ike.lock().unwrap_or_else(|e| e.into_inner());
    x.counter_one(
        "espd_ike_datagrams_total",
        "IKE messages received on the IKE sockets.",
        k.datagrams,
    );
    x.counter(
        "espd_ike_dropped_total",
        "IKE messages no IKE SA took, by reason.",
        [
            ("malformed", k.malformed),
            ("unknown_spi", k.unknown_spi),
            ("no_tunnel", k.no_tunnel),
        ]
        .map(|(reason, v)| (vec![("reason", reason.to_string())], v)),
    );
    for (name, help, v) in [
        (
            "espd_ike_cookies_sent_total",
            "COOKIE answers sent under IKE_SA_INIT load (RFC 7296 section 2.6).",
            k.cookies_sent,
        ),
        (
            "espd_ike_half_open_evicted_total",
            "Half-open IKE SAs dropped to make room for a newer one (ike_half_open_per_tunnel).",
            k.half_open_evicted,
        ),
        (
            "espd_ike_init_deferred_total",
            "New IKE_SA_INIT requests left to the peer's retransmission: the poll's DH budget was spent.",
            k.init_deferred,
        ),
    ] {
        x.counter_one(name, help, v);
    }
    let (m, c) = (&sh.metrics_clients, &sh.control_clients);
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    x.counter(
        "espd_local_clients_total",
        "Clients of the metrics endpoint and the control socket, by outcome (every client dropped is counted).",
        [
            ("metrics", "served", n(&m.served)),
            ("metrics", "evicted", n(&m.evicted)),
            ("metrics", "bad_request", n(&m.bad_requests)),
            ("metrics", "timed_out", n(&m.timed_out)),
            ("control", "refused", n(&c.refused)),
            ("control", "evicted", n(&c.evicted)),
            ("control", "bad_request", n(&c.bad_requests)),
        ]
        .map(|(server, outcome, v)| {
            (
                vec![("server", server.to_string()), ("outcome", outcome.to_string())],
                v,
            )
        }),
    );
    x.text()
}

fn drops_json(c: &Counters) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for r in DropReason::ALL {
        let v = c.dropped(*r);
        if v > 0 {
            m.insert(r.name().into(), v.into());
        }
    }
    m.into()
}

/// Answers one `show` request: `what` is tunnels, sas or counters.
fn show(sh: &Shared, what: &str, json: bool) -> String {
    match what {
        "tunnels" => {
            let ts = snapshots(sh);
            let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if json {
                let v: Vec<_> = ts
                    .iter()
                    .zip(&metas)
                    .map(|(t, m)| {
                        json!({
                            "name": t.name, "connection": t.vpn_id, "outside_ip": t.tunnel_ip,
                            "peer_ip": m.peer_ip.map(|p| p.to_string()),
                            "state": if t.up { "UP" } else { "DOWN" },
                            "bgp": m.bgp.as_ref().map(|(s, p)| json!({"state": s, "peer": p.to_string()})),
                            "nat_t": t.nat_t,
                            "tunnel_data_out_bytes": t.out.inner_bytes,
                            "tunnel_data_in_bytes": t.inb.inner_bytes,
                            "packets_out": t.out.packets, "packets_in": t.inb.packets,
                            "drops_out": drops_json(&t.out), "drops_in": drops_json(&t.inb),
                            "ike": t.ike.as_ref().map(|k| json!({
                                "phase1_state": k.phase1, "phase2_state": k.phase2,
                                "rekeys": {"phase1": {"local": k.rekeys[0][0], "peer": k.rekeys[0][1]},
                                           "phase2": {"local": k.rekeys[1][0], "peer": k.rekeys[1][1]}},
                                "rekey_collisions": k.collisions,
                                "dpd_timeouts": k.dpd_timeouts, "dpd_action": k.dpd_action,
                                "messages_dropped": k.messages_dropped,
                                "spi_i": k.spis.map(|s| format!("{:016x}", s.0)),
                                "spi_r": k.spis.map(|s| format!("{:016x}", s.1)),
                            })),
                        })
                    })
                    .collect();
                return serde_json::to_string_pretty(&json!({ "tunnels": v })).unwrap_or_default()
                    + "\n";
            }
            let mut o = format!(
                "{:<16} {:<12} {:<16} {:<16} {:<5} {:>14} {:>14} {:>8}\n",
                "TUNNEL", "CONNECTION", "OUTSIDE", "PEER", "STATE", "DATA_OUT", "DATA_IN", "DROPS"
            );
            for (t, m) in ts.iter().zip(&metas) {
                let _ = writeln!(
                    o,
                    "{:<16} {:<12} {:<16} {:<16} {:<5} {:>14} {:>14} {:>8}",
                    t.name,
                    t.vpn_id,
                    t.tunnel_ip,
                    m.peer_ip.map(|p| p.to_string()).unwrap_or("-".into()),
                    if t.up { "UP" } else { "DOWN" },
                    t.out.inner_bytes,
                    t.inb.inner_bytes,
                    t.out.total_drops() + t.inb.total_drops()
                );
            }
            o
        }
        "sas" => {
            let r = reports(sh).unwrap_or_default();
            let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let tname = |i: u32| {
                metas
                    .iter()
                    .find(|m| m.index == i)
                    .map(|m| m.name.clone())
                    .unwrap_or_default()
            };
            if json {
                let v: Vec<_> = r
                    .sas
                    .iter()
                    .map(|s| {
                        json!({
                            "tunnel": tname(s.tunnel), "name": s.name,
                            "direction": if s.outbound { "out" } else { "in" },
                            "spi": format!("{:#010x}", s.spi), "transform": s.suite,
                            "packets": s.counters.packets, "inner_bytes": s.counters.inner_bytes,
                            "outer_bytes": s.counters.outer_bytes,
                            "seq": s.seq, "replay_window": s.replay_window,
                            "drops": drops_json(&s.counters),
                        })
                    })
                    .collect();
                return serde_json::to_string_pretty(&json!({ "sas": v })).unwrap_or_default()
                    + "\n";
            }
            let mut o = format!(
                "{:<16} {:<20} {:<4} {:<10} {:<22} {:>12} {:>14} {:>12} {:>8}\n",
                "TUNNEL", "SA", "DIR", "SPI", "TRANSFORM", "PACKETS", "BYTES", "SEQ", "DROPS"
            );
            for s in &r.sas {
                let _ = writeln!(
                    o,
                    "{:<16} {:<20} {:<4} {:<10} {:<22} {:>12} {:>14} {:>12} {:>8}",
                    tname(s.tunnel),
                    s.name,
                    if s.outbound { "out" } else { "in" },
                    format!("{:#010x}", s.spi),
                    s.suite,
                    s.counters.packets,
                    s.counters.inner_bytes,
                    s.seq,
                    s.counters.total_drops()
                );
            }
            o
        }
        "counters" => {
            let r = reports(sh).unwrap_or_default();
            let ports: Vec<_> = [("inside", &sh.inside, 0usize), ("outside", &sh.outside, 1)]
                .into_iter()
                .map(|(n, queues, i)| {
                    let mut m = serde_json::Map::new();
                    m.insert("interface".into(), sh.ifnames[i].clone().into());
                    let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
                    for q in queues.iter() {
                        for (k, v) in q.pairs() {
                            *sum.entry(k).or_default() += v;
                        }
                    }
                    for (k, v) in sum {
                        m.insert(k.into(), v.into());
                    }
                    let per_queue: Vec<u64> = queues
                        .iter()
                        .map(|q| q.rx_packets.load(Ordering::Relaxed))
                        .collect();
                    m.insert("rx_packets_per_queue".into(), per_queue.into());
                    let mut x = xsk::XdpStats::default();
                    for fd in &sh.xsk_fds[i] {
                        if let Ok(s) = xsk::stats_of(*fd) {
                            x.rx_dropped += s.rx_dropped;
                            x.rx_ring_full += s.rx_ring_full;
                            x.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs;
                            x.tx_invalid_descs += s.tx_invalid_descs;
                        }
                    }
                    m.insert("xsk_rx_dropped".into(), x.rx_dropped.into());
                    m.insert("xsk_rx_ring_full".into(), x.rx_ring_full.into());
                    m.insert(
                        "xsk_rx_fill_ring_empty".into(),
                        x.rx_fill_ring_empty_descs.into(),
                    );
                    m.insert("xsk_tx_invalid_descs".into(), x.tx_invalid_descs.into());
                    let mut xdp = serde_json::Map::new();
                    for (k, v) in xdp_prog::VERDICTS.iter().zip(sh.steer[i].stats()) {
                        xdp.insert((*k).into(), v.into());
                    }
                    m.insert("xdp".into(), xdp.into());
                    (n, serde_json::Value::from(m))
                })
                .collect();
            let total = &r.total;
            let v = json!({
                "uptime_s": sh.started.elapsed().as_secs_f64(),
                "modes": sh.modes,
                "workers": worker_reports(sh).iter().map(worker_json).collect::<Vec<_>>(),
                "worker": {
                    "packets": total.packets, "drops": drops_json(total),
                    "tx_outside": r.tx_out, "tx_inside": r.tx_in,
                    "polls": r.polls, "burst_hist": r.burst_hist.to_vec(),
                    "outbound_sas": r.outbound_sas, "inbound_sas": r.inbound_sas,
                    "nat_keepalives": total.nat_keepalives, "ike_passed": total.ike_passed,
                    "reassembled": total.reassembled, "icmp_sent": total.icmp_sent,
                    "mss_clamped": total.mss_clamped,
                    "checksums_completed": total.checksums_completed,
                    "local_in": total.local_in, "local_out": total.local_out,
                    "frag_before_encrypt_fragments": total.frag_before_encrypt_fragments,
                    "pool_free": r.pool_free, "pool_grown": r.pool_grown,
                    "pool_freed": r.pool_freed,
                },
                ports[0].0: ports[0].1, ports[1].0: ports[1].1,
            });
            if json {
                return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
            }
            let mut o = String::new();
            flatten(&mut o, "", &v);
            o
        }
        "routes" => {
            let rows = route_rows(sh);
            if json {
                return serde_json::to_string_pretty(&serde_json::json!({ "routes": rows }))
                    .unwrap_or_default()
                    + "\n";
            }
            let mut o = String::new();
            for r in &rows {
                let names = |k: &str| -> Vec<String> {
                    r[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let tunnels = names("tunnels");
                let mut line = format!(
                    "{:<18} via {}",
                    r["prefix"].as_str().unwrap_or(""),
                    if tunnels.is_empty() {
                        "no tunnel up".to_string()
                    } else {
                        tunnels.join(", ")
                    }
                );
                if r["ecmp"] == true {
                    line.push_str(" (ECMP)");
                }
                let _ = write!(line, "  {}", r["source"].as_str().unwrap_or(""));
                for m in r["members"].as_array().into_iter().flatten() {
                    let _ = write!(
                        line,
                        "  [{}: AS path {}, learned {}]",
                        m["tunnel"].as_str().unwrap_or(""),
                        m["as_path"]
                            .as_str()
                            .filter(|p| !p.is_empty())
                            .unwrap_or("-"),
                        m["learned_at"].as_str().unwrap_or("-"),
                    );
                }
                let standby = names("standby");
                if !standby.is_empty() {
                    let _ = write!(line, "  (standby {})", standby.join(", "));
                }
                let _ = writeln!(o, "{line}");
            }
            if o.is_empty() {
                o.push_str("no routes\n");
            }
            o
        }
        _ => {
            format!("unknown request {what:?}; allowed: show tunnels|sas|counters|routes [json]\n")
        }
    }
}

/// The routes of `espd show routes`: what BGP put in the data plane (prefix, tunnels, ECMP,
/// and per tunnel the AS path and learned-at BIRD reports), then each static connection's
/// CIDR routes (the tunnel that carries them: the first with SAs; the others standby).
fn route_rows(sh: &Shared) -> Vec<serde_json::Value> {
    use serde_json::json;
    let snaps = snapshots(sh);
    let rs = sh.routes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let paths = sh
        .bgp_paths
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
    let name = |i: &u32| {
        metas
            .iter()
            .find(|m| m.index == *i)
            .map_or(i.to_string(), |m| m.name.clone())
    };
    let mut rows: Vec<serde_json::Value> = rs
        .iter()
        .map(|(p, ts)| {
            let members: Vec<_> = ts
                .iter()
                .map(|i| {
                    let path = paths
                        .iter()
                        .find(|(t, x)| t == i && x.prefix == *p)
                        .map(|(_, x)| x);
                    json!({
                        "tunnel": name(i),
                        "as_path": path.map(|x| x.as_path.clone()),
                        "learned_at": path.map(|x| x.since.clone()),
                        "best": path.map(|x| x.best),
                    })
                })
                .collect();
            json!({
                "prefix": p,
                "tunnels": ts.iter().map(name).collect::<Vec<_>>(),
                "ecmp": ts.len() > 1,
                "source": "bgp",
                "members": members,
            })
        })
        .collect();
    let mut conns: Vec<&str> = vec![];
    for m in metas.iter() {
        if !conns.contains(&m.connection.as_str()) {
            conns.push(&m.connection);
        }
    }
    for c in conns {
        let ts: Vec<&TunnelMeta> = metas.iter().filter(|m| m.connection == c).collect();
        if ts.iter().any(|m| m.bgp.is_some()) {
            continue;
        }
        let up = |m: &TunnelMeta| snaps.iter().any(|s| s.name == m.name && s.up);
        let active = ts.iter().find(|m| up(m));
        for sel in &ts[0].selectors {
            rows.push(json!({
                "prefix": format!("{}/{}", sel.addr, sel.prefix),
                "connection": c,
                "tunnels": active.map(|m| vec![m.name.clone()]).unwrap_or_default(),
                "standby": ts
                    .iter()
                    .filter(|m| Some(m.index) != active.map(|a| a.index))
                    .map(|m| m.name.clone())
                    .collect::<Vec<_>>(),
                "ecmp": false,
                "source": "static",
            }));
        }
    }
    rows
}

/// Queues a rekey of an IKE-negotiated tunnel for the IKE shell (run by the main loop).
fn request_rekey(sh: &Shared, tunnel: &str, ike: bool) -> String {
    let metas = sh.tunnels.lock().unwrap_or_else(|e| e.into_inner());
    let Some(m) = metas.iter().find(|m| m.name == tunnel) else {
        let names: Vec<&str> = metas.iter().map(|m| m.name.as_str()).collect();
        return format!(
            "error: no tunnel {tunnel:?}; tunnels: {}\n",
            names.join(", ")
        );
    };
    if m.ike.is_none() {
        return format!("error: tunnel {tunnel:?} is not negotiated by IKE (static SAs)\n");
    }
    sh.rekeys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((m.index, ike));
    format!(
        "rekey of the {} of tunnel {tunnel:?} requested\n",
        if ike { "IKE SA" } else { "CHILD_SA" }
    )
}

/// `a.b.c value` lines of a JSON object (the text form of `show counters`).
fn flatten(o: &mut String, prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(o, &p, v);
            }
        }
        _ => {
            let _ = writeln!(o, "{prefix} {v}");
        }
    }
}

fn spawn_control(
    l: UnixListener,
    sh: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let _ = l.set_nonblocking(true);
    let limits = telemetry::serve::Limits::default();
    let gate = sh.control_clients.clone();
    std::thread::Builder::new()
        .name("espd-control".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        // Each client on its own thread, bounded in number, size and time.
                        let sh = sh.clone();
                        let nl = |b: &[u8]| b.contains(&b'\n');
                        gate.serve(c, limits, nl, move |mut c, req| {
                            let line = String::from_utf8_lossy(&req);
                            let w: Vec<&str> = line.split_whitespace().collect();
                            let reply = match w.as_slice() {
                                ["show", what] => show(&sh, what, false),
                                ["show", what, "json"] => show(&sh, what, true),
                                ["rekey", tunnel, what @ ("ike" | "child")] => {
                                    request_rekey(&sh, tunnel, *what == "ike")
                                }
                                _ => "usage: show tunnels|sas|counters|routes [json] | rekey TUNNEL ike|child\n"
                                    .to_string(),
                            };
                            let _ = c.write_all(reply.as_bytes());
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .expect("spawning the control thread")
}

/// `espd show WHAT [--json]`: asks the running espd over its control socket.
pub fn show_client(socket: &str, what: &str, json: bool) -> Result<String, Error> {
    control_request(
        socket,
        &format!("show {what}{}", if json { " json" } else { "" }),
    )
}

/// Sends one request line over the control socket and returns the whole answer.
pub fn control_request(socket: &str, line: &str) -> Result<String, Error> {
    let mut c = UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach espd at control socket {socket}: {e} (is `espd run` running? set --socket)")
    })?;
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    writeln!(c, "{line}").map_err(|e| format!("control socket {socket}: {e}"))?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut c, &mut s)
        .map_err(|e| format!("control socket {socket}: {e}"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::check_queue_map;

    #[test]
    fn a_queue_map_covers_every_queue_and_gives_each_worker_both_sides() {
        let ifs = |a, b| {
            [
                ("inside_interface", "in0", a),
                ("outside_interface", "out0", b),
            ]
        };
        let m = vec![vec![0, 2], vec![1, 3]];
        assert_eq!(check_queue_map(&m, &ifs(4, 4)), Ok(()));
        // Queues past one interface's count serve the other one.
        assert_eq!(check_queue_map(&m, &ifs(4, 2)), Ok(()));
        assert_eq!(
            check_queue_map(&m, &ifs(5, 4)).unwrap_err(),
            "queue 4 of inside_interface \"in0\" (5 RX queues) has no worker; list every queue 0..=4"
        );
        assert_eq!(
            check_queue_map(&[vec![0], vec![1, 2]], &ifs(3, 1)).unwrap_err(),
            "worker 1 ([1, 2]) has no queue of outside_interface \"out0\" (1 RX queues: 0..=0)"
        );
    }
}
