//! The poll-mode runtime: one worker per core, each polling an inside (plaintext) port and an
//! outside (ESP) port in bursts, running the sans-IO ESP core on its own SAs.
//!
//! Design (see README, "Runtime"):
//! - **One writer per SA.** Each tunnel is owned by exactly one worker (`workers`): its
//!   SAs live only in that worker's tables, so the sequence counter and replay window of an
//!   SA are touched by one thread only. Another worker that receives a packet of such a
//!   tunnel (inside: by route; outside: by SPI, from `RemoteOutbound` / `RemoteInbound`)
//!   hands it to the owner in batches (`handoff`), within the same poll, never twice. A
//!   packet whose SPI no worker holds is counted `unknown_spi`.
//! - **Tables without locks.** A worker's tables (outbound: longest-prefix match of the inner
//!   destination -> slot; inbound: SPI -> slot, with a last-SPI cache) are read and written by
//!   that worker only. The control thread changes them with [`Command`]s over a channel; the
//!   worker applies them between bursts, so each change is atomic for the data path.
//!   Removed SAs are handed back on the `retired` channel and freed by the control thread,
//!   after the worker has moved past them.
//! - **Make-before-break.** A rekey installs the new inbound SA (`AddInbound`), then switches
//!   outbound (`SetOutbound`), and deletes the old inbound SA (`DelInbound`) only later; both
//!   inbound SAs decrypt meanwhile.
//! - **No lock, no allocation, no syscall per packet.** Buffers come from a pool; scratch
//!   vectors are reused; counters are plain integers owned by the worker and copied out on
//!   `Report`.

use crate::counters::{Counters, DropReason};
use crate::esp::{self, Outer};
use crate::frag::{ReasmLimits, Reassembler};
use crate::handoff::{Mesh, Path};
use crate::io::PacketIo;
use crate::pipeline::{self, OutboundCtx, Unprotected};
use crate::pkt::{BufPool, PacketBuf};
use crate::sa::{InboundSa, OutboundSa, SeqState};
use crate::wire;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Multiplicative hashing for the integer keys of the hot tables (SPIs and addresses are
/// chosen by us or configured, not by an attacker).
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.0 = (self.0 ^ x as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u128(&mut self, x: u128) {
        self.0 =
            ((x as u64) ^ ((x >> 64) as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// A traffic selector: inner destination prefix routed into a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selector {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Selector {
    pub fn host(addr: IpAddr) -> Self {
        Selector {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

/// Longest-prefix match with one hash map per prefix length in use.
#[derive(Debug, Default)]
struct Lpm {
    v4: Vec<(u8, IntMap<u32, usize>)>,
    v6: Vec<(u8, IntMap<u128, usize>)>,
    /// The last IPv4 destination looked up and its route (bursts of a flow repeat it);
    /// cleared on every change of the table.
    last4: Option<(u32, Option<usize>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - len as u32))
    }
}
fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - len as u32))
    }
}

impl Lpm {
    fn insert(&mut self, s: Selector, slot: usize) {
        self.last4 = None;
        match s.addr {
            IpAddr::V4(a) => {
                let len = s.prefix.min(32);
                let i = match self.v4.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v4.push((len, IntMap::default()));
                        self.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
                        self.v4
                            .iter()
                            .position(|(l, _)| *l == len)
                            .expect("just inserted")
                    }
                };
                self.v4[i].1.insert(mask4(u32::from(a), len), slot);
            }
            IpAddr::V6(a) => {
                let len = s.prefix.min(128);
                let i = match self.v6.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v6.push((len, IntMap::default()));
                        self.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
                        self.v6
                            .iter()
                            .position(|(l, _)| *l == len)
                            .expect("just inserted")
                    }
                };
                self.v6[i].1.insert(mask6(u128::from(a), len), slot);
            }
        }
    }
    fn remove_target(&mut self, slot: usize) {
        self.last4 = None;
        for (_, m) in &mut self.v4 {
            m.retain(|_, s| *s != slot);
        }
        for (_, m) in &mut self.v6 {
            m.retain(|_, s| *s != slot);
        }
        self.v4.retain(|(_, m)| !m.is_empty());
        self.v6.retain(|(_, m)| !m.is_empty());
    }
    /// [`Lpm::lookup`] with the one-entry cache of the last IPv4 destination.
    #[inline]
    fn lookup_cached(&mut self, pkt: &[u8]) -> Option<usize> {
        if pkt.first()? >> 4 == 4 {
            let a = u32::from(wire::Ipv4::new(pkt)?.dst());
            if let Some((k, r)) = self.last4
                && k == a
            {
                return r;
            }
            let r = self
                .v4
                .iter()
                .find_map(|(l, m)| m.get(&mask4(a, *l)).copied());
            self.last4 = Some((a, r));
            return r;
        }
        self.lookup(pkt)
    }
    #[inline]
    fn lookup(&self, pkt: &[u8]) -> Option<usize> {
        match pkt.first()? >> 4 {
            4 => {
                let a = u32::from(wire::Ipv4::new(pkt)?.dst());
                self.v4
                    .iter()
                    .find_map(|(l, m)| m.get(&mask4(a, *l)).copied())
            }
            6 if pkt.len() >= 40 => {
                let a = u128::from_be_bytes(pkt[24..40].try_into().ok()?);
                self.v6
                    .iter()
                    .find_map(|(l, m)| m.get(&mask6(a, *l)).copied())
            }
            _ => None,
        }
    }
}

/// Control-plane commands, applied by the worker between bursts, in order.
pub enum Command {
    /// Installs the tunnel's outbound SA and selectors, or switches it to a new SA
    /// (make-before-break: the new inbound SA must already be installed at the peer).
    SetOutbound {
        tunnel: u32,
        sa: Box<OutboundSa>,
        selectors: Vec<Selector>,
    },
    /// Adds an inbound SA; several may be live for one tunnel during a rekey.
    AddInbound { tunnel: u32, sa: Box<InboundSa> },
    /// Routes `selectors` into the first usable tunnel of `tunnels` (preference order): a
    /// connection's preferred tunnel while it is UP, the other one while it is DOWN, and back.
    SetRoute {
        selectors: Vec<Selector>,
        tunnels: Vec<u32>,
    },
    /// Marks a tunnel UP or DOWN (DPD clear, hard expiry: decided by the control plane). A
    /// tunnel without an outbound SA is DOWN anyway.
    SetTunnelState { tunnel: u32, up: bool },
    /// Removes the inbound SA with this SPI.
    DelInbound { spi: u32 },
    /// Raises the highest sequence number the tunnel's outbound SA (with this SPI) may
    /// send: the control thread has persisted the mark (static SAs across restarts).
    SetSeqLimit { tunnel: u32, spi: u32, limit: u64 },
    /// Removes a tunnel's outbound SA, its selectors and all its inbound SAs.
    DelTunnel { tunnel: u32 },
    /// Forgets the replay window of an inbound SA. Only for rigs that replay the same
    /// capture in a loop (`perf oneway --direction decrypt`); never sent by the control plane.
    ResetReplay { spi: Option<u32> },
    /// Replies once every earlier command has been applied.
    Barrier(Sender<()>),
    /// Replies with the counters (and per-tunnel counters when asked).
    Report {
        per_tunnel: bool,
        reply: Sender<WorkerReport>,
    },
    /// Tells a worker that another worker (`owner`) holds this tunnel's outbound SA: its
    /// routes (and `selectors`, as `SetOutbound` makes them) hand packets to the owner.
    RemoteOutbound {
        tunnel: u32,
        owner: usize,
        selectors: Vec<Selector>,
    },
    /// Tells a worker that another worker (`owner`) holds the inbound SA with this SPI:
    /// ESP with it is handed over.
    RemoteInbound { tunnel: u32, spi: u32, owner: usize },
    /// The gateway's own address on a tunnel (its inside address, AWS side): decrypted
    /// packets for it go to the control thread's local queue instead of the inside port
    /// (None: removes it).
    SetLocalAddr {
        tunnel: u32,
        addr: Option<std::net::Ipv4Addr>,
    },
    /// Replaces the dynamic (BGP-learned) routes: each prefix to its tunnels, equal-cost
    /// (ECMP by flow hash over the usable ones). Routes of a previous set that are not in
    /// this one are withdrawn; static routes are untouched (the longest prefix wins).
    SetDynamicRoutes { routes: Vec<(Selector, Vec<u32>)> },
    /// Encrypts one packet from the gateway itself (BGP, an answer to a ping of its tunnel
    /// address) on the tunnel's outbound SA, whatever the selectors say.
    Transmit { tunnel: u32, packet: PacketBuf },
    /// Ends the poll loop.
    Stop,
}

/// Packets between the workers and the control thread's tunnel interfaces: (tunnel,
/// packet), bounded (a full queue drops and counts).
pub type LocalQueue = Arc<crossbeam_queue::ArrayQueue<(u32, PacketBuf)>>;

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::SetOutbound { tunnel, sa, .. } => {
                write!(f, "SetOutbound({tunnel}, spi {:#x})", sa.cfg.spi)
            }
            Command::AddInbound { tunnel, sa } => {
                write!(f, "AddInbound({tunnel}, spi {:#x})", sa.cfg.spi)
            }
            Command::SetRoute { tunnels, .. } => write!(f, "SetRoute({tunnels:?})"),
            Command::SetTunnelState { tunnel, up } => {
                write!(f, "SetTunnelState({tunnel}, up={up})")
            }
            Command::DelInbound { spi } => write!(f, "DelInbound({spi:#x})"),
            Command::SetSeqLimit { tunnel, spi, limit } => {
                write!(f, "SetSeqLimit({tunnel}, spi {spi:#x}, {limit})")
            }
            Command::DelTunnel { tunnel } => write!(f, "DelTunnel({tunnel})"),
            Command::ResetReplay { spi } => write!(f, "ResetReplay({spi:?})"),
            Command::Barrier(_) => f.write_str("Barrier"),
            Command::Report { .. } => f.write_str("Report"),
            Command::RemoteOutbound { tunnel, owner, .. } => {
                write!(f, "RemoteOutbound({tunnel}, worker {owner})")
            }
            Command::RemoteInbound { tunnel, spi, owner } => {
                write!(f, "RemoteInbound({tunnel}, spi {spi:#x}, worker {owner})")
            }
            Command::SetLocalAddr { tunnel, addr } => write!(f, "SetLocalAddr({tunnel}, {addr:?})"),
            Command::SetDynamicRoutes { routes } => write!(f, "SetDynamicRoutes({})", routes.len()),
            Command::Transmit { tunnel, packet } => {
                write!(f, "Transmit({tunnel}, {} bytes)", packet.len())
            }
            Command::Stop => f.write_str("Stop"),
        }
    }
}

/// An SA the worker no longer uses, handed back to be freed off the data path.
#[derive(Debug)]
pub enum Retired {
    Out(Box<OutboundSa>),
    In(Box<InboundSa>),
}

/// Events for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An outbound SA crossed its soft sequence-number limit: rekey it.
    SoftLimit { tunnel: u32, spi: u32 },
}

/// Traffic of one tunnel: inner bytes as AWS `TunnelDataIn` / `TunnelDataOut` count them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    pub out: Counters,
    pub inb: Counters,
}

/// A worker's counters, copied out on request.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub worker: usize,
    /// The CPU it is pinned to.
    pub core: Option<usize>,
    /// Packets received from the inside and the outside port.
    pub rx_in: u64,
    pub rx_out: u64,
    /// Packets handed to the worker owning their SA, taken from other workers, and dropped
    /// because the ring to the owner was full (also counted as `handoff_full`).
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub handoff_drops: u64,
    /// Everything: worker-level drops plus every SA's counters (live and retired).
    pub total: Counters,
    pub tx_out: u64,
    pub tx_in: u64,
    pub outbound_sas: usize,
    pub inbound_sas: usize,
    /// Receive-burst occupancy: bucket i counts bursts of [2^(i-1), 2^i) packets (bucket 0: empty).
    pub burst_hist: [u64; 10],
    pub polls: u64,
    pub pool_grown: u64,
    pub pool_free: usize,
    /// Buffers freed instead of pooled (the free list was full, or they were over-size).
    pub pool_freed: u64,
    pub per_tunnel: Vec<(u32, TunnelCounters)>,
    /// Live SAs (when per-tunnel detail was asked for).
    pub sas: Vec<SaReport>,
}

impl WorkerReport {
    /// Adds another worker's report into this one (counters summed, per-tunnel counters
    /// merged, SAs listed together; `worker` and `core` stay this one's).
    pub fn merge(&mut self, o: &WorkerReport) {
        let r = self;
        r.total.merge(&o.total);
        r.tx_out += o.tx_out;
        r.tx_in += o.tx_in;
        r.rx_in += o.rx_in;
        r.rx_out += o.rx_out;
        r.handoff_out += o.handoff_out;
        r.handoff_in += o.handoff_in;
        r.handoff_drops += o.handoff_drops;
        r.outbound_sas += o.outbound_sas;
        r.inbound_sas += o.inbound_sas;
        for (a, b) in r.burst_hist.iter_mut().zip(o.burst_hist) {
            *a += b;
        }
        r.polls += o.polls;
        r.pool_grown += o.pool_grown;
        r.pool_free += o.pool_free;
        r.pool_freed += o.pool_freed;
        for (t, c) in &o.per_tunnel {
            match r.per_tunnel.iter_mut().find(|(x, _)| x == t) {
                Some((_, mine)) => {
                    mine.out.merge(&c.out);
                    mine.inb.merge(&c.inb);
                }
                None => r.per_tunnel.push((*t, c.clone())),
            }
        }
        r.per_tunnel.sort_by_key(|(t, _)| *t);
        r.sas.extend(o.sas.iter().cloned());
        r.sas.sort_by_key(|s| (s.tunnel, !s.outbound, s.spi));
    }
}

/// One live SA's state and counters.
#[derive(Clone, Debug)]
pub struct SaReport {
    pub tunnel: u32,
    pub name: String,
    pub outbound: bool,
    pub spi: u32,
    pub suite: String,
    /// Outbound: next sequence number to send; inbound: highest sequence number accepted.
    pub seq: u64,
    /// Outbound: the highest sequence number it may send (the persisted mark of a static
    /// SA; u64::MAX when nothing is persisted).
    pub seq_limit: u64,
    /// Inbound: replay window size.
    pub replay_window: u32,
    pub counters: Counters,
}

struct OutSlot {
    tunnel: u32,
    sa: Box<OutboundSa>,
}

/// Where a selector sends packets: the first usable tunnel of `tunnels`, or with `ecmp`
/// one of the usable ones by flow hash.
struct Route {
    tunnels: Vec<u32>,
    /// The tunnel that created the route with `SetOutbound` (removed with it), if any.
    owner: Option<u32>,
    /// Where the first tunnel that is UP is encrypted (recomputed on every table change).
    active: Option<Target>,
    /// A dynamic (BGP) route: equal-cost over every usable tunnel of `tunnels`.
    ecmp: bool,
    /// With `ecmp`, where each usable tunnel is encrypted (more than one: by flow hash).
    actives: Vec<Target>,
}

/// Who encrypts a route's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// This worker, with the SA in this outbound slot.
    Local(usize),
    /// The worker with this id (the tunnel's owner): hand the packet over.
    Remote(usize),
}

struct InSlot {
    tunnel: u32,
    sa: Box<InboundSa>,
}

/// Runtime settings of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: usize,
    /// CPU to pin to (None: not pinned).
    pub core: Option<usize>,
    /// Packets per receive burst (32..=256).
    pub burst: usize,
    pub reassembly: ReasmLimits,
    /// Adaptive polling: after 1024 empty polls, sleep this long between polls (0: pure
    /// busy polling, the lowest latency; a few tens of microseconds frees the core when idle).
    pub idle_sleep_us: u32,
    /// Reassemble decrypted inner fragments before sending them inside (the loopback rig's
    /// sinks want whole packets); off, fragments are forwarded and the hosts reassemble, as
    /// behind a router (`espd run`).
    pub reassemble_inner: bool,
    /// Act as a router on the way into the tunnel: lower the inner TTL / hop limit and
    /// answer ICMP Time Exceeded when it runs out (`espd run`); off for the loopback rig,
    /// whose sinks check packets byte for byte.
    pub decrement_ttl: bool,
    /// Finish TCP/UDP checksums that inside senders left for the NIC (veth and tap pass
    /// CHECKSUM_PARTIAL packets as they are; see `wire::complete_checksum`).
    pub complete_checksums: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: 0,
            core: None,
            burst: 64,
            reassembly: ReasmLimits::default(),
            idle_sleep_us: 0,
            reassemble_inner: true,
            decrement_ttl: false,
            complete_checksums: false,
        }
    }
}

/// One poll-mode worker with its two ports and its SAs.
pub struct Worker<I: PacketIo, O: PacketIo> {
    pub cfg: WorkerConfig,
    pub inside: I,
    pub outside: O,
    pub pool: BufPool,
    cmds: Receiver<Command>,
    retired: Sender<Retired>,
    events: Sender<Event>,
    outs: Vec<Option<OutSlot>>,
    out_free: Vec<usize>,
    tunnel_out: IntMap<u32, usize>,
    sel: Lpm,
    routes: Vec<Option<Route>>,
    route_free: Vec<usize>,
    down: std::collections::HashSet<u32, BuildHasherDefault<IntHasher>>,
    ins: Vec<Option<InSlot>>,
    in_free: Vec<usize>,
    spi_map: IntMap<u32, usize>,
    last_spi: Option<(u32, usize)>,
    reasm: Reassembler,
    outer_reasm: Reassembler,
    ctx: OutboundCtx,
    counters: Counters,
    retired_counters: IntMap<u32, TunnelCounters>,
    burst_hist: [u64; 10],
    polls: u64,
    tx_out_total: u64,
    tx_in_total: u64,
    epoch: Instant,
    // Scratch vectors, reused every burst.
    rx: Vec<PacketBuf>,
    run: Vec<PacketBuf>,
    tx: Vec<PacketBuf>,
    icmp: Vec<PacketBuf>,
    /// IKE and other non-ESP packets from the outside, for the control thread.
    pub to_control: Option<Arc<crossbeam_queue::ArrayQueue<PacketBuf>>>,
    /// Decrypted packets for the gateway's own tunnel addresses (`SetLocalAddr`), for the
    /// control thread (None: they go to the inside port like any other).
    pub to_local: Option<LocalQueue>,
    /// The gateway's own tunnel addresses (IPv4, as u32) and their tunnels.
    local_addrs: IntMap<u32, u32>,
    /// The routes `SetDynamicRoutes` made (replaced as a set).
    dynamic_routes: Vec<usize>,
    stopped: bool,
    /// The rings to and from the other workers (None: the only worker).
    mesh: Option<Mesh>,
    /// Scratch for packets a handoff lane refused.
    handoff_refused: Vec<PacketBuf>,
    /// Tunnels whose outbound SA another worker holds: tunnel -> owner.
    remote_out: IntMap<u32, usize>,
    /// Inbound SAs another worker holds: SPI -> (tunnel, owner).
    remote_in: IntMap<u32, (u32, usize)>,
    rx_in: u64,
    rx_out: u64,
    handoff_out: u64,
    handoff_in: u64,
    handoff_drops: u64,
}

/// The channels the control thread keeps for one worker.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pub cmds: Sender<Command>,
    pub retired: Receiver<Retired>,
    pub events: Receiver<Event>,
}

impl WorkerHandle {
    /// Sends a command; false if the worker is gone.
    pub fn send(&self, c: Command) -> bool {
        self.cmds.send(c).is_ok()
    }
    /// Waits until every command sent so far has been applied.
    pub fn barrier(&self) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Barrier(tx)) && rx.recv().is_ok()
    }
    /// Asks for a report and waits for it.
    pub fn report(&self, per_tunnel: bool) -> Option<WorkerReport> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.send(Command::Report {
            per_tunnel,
            reply: tx,
        }) {
            return None;
        }
        rx.recv().ok()
    }
    /// Frees the SAs the worker retired. Returns how many.
    pub fn reap(&self) -> usize {
        self.retired.try_iter().count()
    }
}

impl<I: PacketIo, O: PacketIo> Worker<I, O> {
    /// A worker and the handle the control thread uses to drive it.
    pub fn new(cfg: WorkerConfig, inside: I, outside: O, pool: BufPool) -> (Self, WorkerHandle) {
        let (ctx, crx) = crossbeam_channel::unbounded();
        let (rtx, rrx) = crossbeam_channel::unbounded();
        let (etx, erx) = crossbeam_channel::unbounded();
        let burst = cfg.burst.clamp(1, 256);
        let w = Worker {
            reasm: Reassembler::new(cfg.reassembly),
            outer_reasm: Reassembler::new(cfg.reassembly),
            cfg,
            inside,
            outside,
            pool,
            cmds: crx,
            retired: rtx,
            events: etx,
            outs: Vec::new(),
            out_free: Vec::new(),
            tunnel_out: IntMap::default(),
            sel: Lpm::default(),
            routes: Vec::new(),
            route_free: Vec::new(),
            down: Default::default(),
            ins: Vec::new(),
            in_free: Vec::new(),
            spi_map: IntMap::default(),
            last_spi: None,
            ctx: OutboundCtx::default(),
            counters: Counters::default(),
            retired_counters: IntMap::default(),
            burst_hist: [0; 10],
            polls: 0,
            tx_out_total: 0,
            tx_in_total: 0,
            epoch: Instant::now(),
            rx: Vec::with_capacity(burst * 2),
            run: Vec::with_capacity(burst * 2),
            tx: Vec::with_capacity(burst * 4),
            icmp: Vec::with_capacity(16),
            to_control: None,
            to_local: None,
            local_addrs: HashMap::default(),
            dynamic_routes: Vec::new(),
            stopped: false,
            mesh: None,
            handoff_refused: Vec::with_capacity(256),
            remote_out: IntMap::default(),
            remote_in: IntMap::default(),
            rx_in: 0,
            rx_out: 0,
            handoff_out: 0,
            handoff_in: 0,
            handoff_drops: 0,
        };
        (
            w,
            WorkerHandle {
                cmds: ctx,
                retired: rrx,
                events: erx,
            },
        )
    }

    /// Joins the worker to a mesh of workers (before it runs): packets of SAs another worker
    /// holds are handed to it, and theirs come here.
    pub fn set_mesh(&mut self, mesh: Mesh) {
        self.mesh = Some(mesh);
    }

    /// Stages a packet for the worker that owns its SA (published by `flush_handoffs`).
    #[inline]
    fn hand_over(&mut self, owner: usize, path: Path, p: PacketBuf) {
        let r = match &mut self.mesh {
            Some(m) => m.push(owner, path, p),
            None => Err(p),
        };
        match r {
            Ok(()) => self.handoff_out += 1,
            Err(p) => {
                self.counters.drop(DropReason::NoSa);
                self.pool.put(p);
            }
        }
    }

    /// Fills `self.rx` with up to `burst` packets from the port of `path` (inside for
    /// Encrypt, outside for Decrypt), then up to `burst` that other workers handed over on
    /// it, after ours. Returns (received, handed over).
    #[inline]
    fn receive(&mut self, path: Path, burst: usize) -> (usize, usize) {
        // Backpressure: take from the port only what the lanes to the other workers can
        // still hold, so a congested owner slows its feeders (their receive rings fill and
        // the NIC counts the drops) instead of them spending cycles to receive and drop.
        let take = match &self.mesh {
            Some(m) => burst.min(m.room(path)),
            None => burst,
        };
        let n = match path {
            Path::Encrypt => self.inside.rx_burst(&mut self.pool, &mut self.rx, take),
            Path::Decrypt => self.outside.rx_burst(&mut self.pool, &mut self.rx, take),
        };
        match path {
            Path::Encrypt => self.rx_in += n as u64,
            Path::Decrypt => self.rx_out += n as u64,
        }
        let handed = match &mut self.mesh {
            Some(m) => m.pull(path, &mut self.rx, burst),
            None => 0,
        };
        self.handoff_in += handed as u64;
        (n, handed)
    }

    /// Publishes the staged handoff batches; what the owners' full lanes refuse is dropped
    /// and counted.
    #[inline]
    fn flush_handoffs(&mut self) {
        let Some(m) = &mut self.mesh else { return };
        let mut dropped = std::mem::take(&mut self.handoff_refused);
        m.flush(&mut dropped);
        for p in dropped.drain(..) {
            self.handoff_out -= 1;
            self.handoff_drops += 1;
            self.counters.drop(DropReason::HandoffFull);
            self.pool.put(p);
        }
        self.handoff_refused = dropped;
    }

    fn retire_out(&mut self, slot: usize) {
        if let Some(s) = self.outs[slot].take() {
            self.retired_counters
                .entry(s.tunnel)
                .or_default()
                .out
                .merge(&s.sa.counters);
            let _ = self.retired.send(Retired::Out(s.sa));
            self.out_free.push(slot);
        }
    }

    fn retire_in(&mut self, slot: usize) {
        if let Some(s) = self.ins[slot].take() {
            self.spi_map.remove(&s.sa.cfg.spi);
            self.retired_counters
                .entry(s.tunnel)
                .or_default()
                .inb
                .merge(&s.sa.counters);
            let _ = self.retired.send(Retired::In(s.sa));
            self.in_free.push(slot);
        }
        self.last_spi = None;
    }

    fn add_route(&mut self, tunnels: Vec<u32>, owner: Option<u32>) -> usize {
        let r = Route {
            tunnels,
            owner,
            active: None,
            ecmp: false,
            actives: Vec::new(),
        };
        match self.route_free.pop() {
            Some(i) => {
                self.routes[i] = Some(r);
                i
            }
            None => {
                self.routes.push(Some(r));
                self.routes.len() - 1
            }
        }
    }

    /// Recomputes which tunnel each route uses now (control path, between bursts).
    fn resolve_routes(&mut self) {
        // Where tunnel `t` is encrypted now, if it is UP and has an outbound SA somewhere.
        let target = |t: &u32| {
            if self.down.contains(t) {
                return None;
            }
            self.tunnel_out
                .get(t)
                .copied()
                .filter(|s| self.outs[*s].is_some())
                .map(Target::Local)
                .or_else(|| self.remote_out.get(t).map(|w| Target::Remote(*w)))
        };
        for r in self.routes.iter_mut().flatten() {
            if r.ecmp {
                r.actives = r.tunnels.iter().filter_map(target).collect();
            }
            r.active = r.tunnels.iter().find_map(target);
        }
    }

    /// The tunnel a route currently sends on, when this worker encrypts it (for tests and
    /// `show`).
    pub fn route_of(&self, pkt: &[u8]) -> Option<u32> {
        let r = self.routes[self.sel.lookup(pkt)?].as_ref()?;
        let t = match r.actives.len() {
            n if n > 1 => r.actives[wire::flow_hash(pkt) as usize % n],
            _ => r.active?,
        };
        let Target::Local(slot) = t else {
            return None;
        };
        self.outs[slot].as_ref().map(|s| s.tunnel)
    }

    /// Applies one command. Returns false on `Stop`.
    fn apply(&mut self, c: Command) -> bool {
        match c {
            Command::SetOutbound {
                tunnel,
                sa,
                selectors,
            } => {
                let mut sa = sa;
                let slot = match self.tunnel_out.get(&tunnel) {
                    Some(&slot) => {
                        // The same SA with the same keys (a reload that changed another
                        // field) keeps its sequence counter: a GCM nonce is never reused.
                        if let Some(old) = &self.outs[slot] {
                            sa.continue_from(&old.sa);
                        }
                        // Switch: the old SA is retired, the slot (and selectors) stay.
                        if let Some(old) = self.outs[slot].replace(OutSlot { tunnel, sa }) {
                            self.retired_counters
                                .entry(tunnel)
                                .or_default()
                                .out
                                .merge(&old.sa.counters);
                            let _ = self.retired.send(Retired::Out(old.sa));
                        }
                        slot
                    }
                    None => {
                        let s = OutSlot { tunnel, sa };
                        let slot = match self.out_free.pop() {
                            Some(i) => {
                                self.outs[i] = Some(s);
                                i
                            }
                            None => {
                                self.outs.push(Some(s));
                                self.outs.len() - 1
                            }
                        };
                        self.tunnel_out.insert(tunnel, slot);
                        slot
                    }
                };
                let _ = slot;
                if !selectors.is_empty() {
                    let r = self.add_route(vec![tunnel], Some(tunnel));
                    for s in selectors {
                        self.sel.insert(s, r);
                    }
                }
                self.resolve_routes();
            }
            Command::SetRoute { selectors, tunnels } => {
                let r = self.add_route(tunnels, None);
                for s in selectors {
                    self.sel.insert(s, r);
                }
                self.resolve_routes();
            }
            Command::SetTunnelState { tunnel, up } => {
                if up {
                    self.down.remove(&tunnel);
                } else {
                    self.down.insert(tunnel);
                }
                self.resolve_routes();
            }
            Command::AddInbound { tunnel, sa } => {
                let mut sa = sa;
                let spi = sa.cfg.spi;
                if let Some(&old) = self.spi_map.get(&spi) {
                    // Same SPI and keys: the replay window carries over.
                    if let Some(o) = &self.ins[old] {
                        sa.continue_from(&o.sa);
                    }
                    self.retire_in(old);
                }
                let s = InSlot { tunnel, sa };
                let slot = match self.in_free.pop() {
                    Some(i) => {
                        self.ins[i] = Some(s);
                        i
                    }
                    None => {
                        self.ins.push(Some(s));
                        self.ins.len() - 1
                    }
                };
                self.spi_map.insert(spi, slot);
            }
            Command::SetSeqLimit { tunnel, spi, limit } => {
                if let Some(&slot) = self.tunnel_out.get(&tunnel)
                    && let Some(s) = &mut self.outs[slot]
                    && s.sa.cfg.spi == spi
                {
                    s.sa.set_seq_limit(limit);
                }
            }
            Command::DelInbound { spi } => {
                if let Some(&slot) = self.spi_map.get(&spi) {
                    self.retire_in(slot);
                }
                self.remote_in.remove(&spi);
            }
            Command::RemoteOutbound {
                tunnel,
                owner,
                selectors,
            } => {
                self.remote_out.insert(tunnel, owner);
                if !selectors.is_empty() {
                    let r = self.add_route(vec![tunnel], Some(tunnel));
                    for s in selectors {
                        self.sel.insert(s, r);
                    }
                }
                self.resolve_routes();
            }
            Command::RemoteInbound { tunnel, spi, owner } => {
                self.remote_in.insert(spi, (tunnel, owner));
            }
            Command::DelTunnel { tunnel } => {
                if let Some(slot) = self.tunnel_out.remove(&tunnel) {
                    self.retire_out(slot);
                }
                self.remote_out.remove(&tunnel);
                self.remote_in.retain(|_, (t, _)| *t != tunnel);
                // Routes the tunnel created go with it; shared routes keep it in their
                // preference list (it is preferred again when it comes back).
                for r in 0..self.routes.len() {
                    if self.routes[r]
                        .as_ref()
                        .is_some_and(|x| x.owner == Some(tunnel))
                    {
                        self.routes[r] = None;
                        self.sel.remove_target(r);
                        self.route_free.push(r);
                    }
                }
                self.down.remove(&tunnel);
                self.resolve_routes();
                let slots: Vec<usize> = self
                    .ins
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.as_ref().is_some_and(|s| s.tunnel == tunnel))
                    .map(|(i, _)| i)
                    .collect();
                for s in slots {
                    self.retire_in(s);
                }
            }
            Command::ResetReplay { spi } => {
                for s in self.ins.iter_mut().flatten() {
                    if spi.is_none_or(|x| x == s.sa.cfg.spi) {
                        s.sa.replay =
                            crate::replay::ReplayWindow::new(s.sa.cfg.replay_window, s.sa.cfg.esn);
                    }
                }
            }
            Command::SetLocalAddr { tunnel, addr } => {
                self.local_addrs.retain(|_, t| *t != tunnel);
                if let Some(a) = addr {
                    self.local_addrs.insert(u32::from(a), tunnel);
                }
            }
            Command::Transmit { tunnel, packet } => self.transmit(tunnel, packet),
            Command::SetDynamicRoutes { routes } => {
                for r in std::mem::take(&mut self.dynamic_routes) {
                    self.routes[r] = None;
                    self.sel.remove_target(r);
                    self.route_free.push(r);
                }
                for (sel, tunnels) in routes {
                    let r = self.add_route(tunnels, None);
                    if let Some(x) = self.routes[r].as_mut() {
                        x.ecmp = true;
                    }
                    self.sel.insert(sel, r);
                    self.dynamic_routes.push(r);
                }
                self.resolve_routes();
            }
            Command::Barrier(tx) => {
                let _ = tx.send(());
            }
            Command::Report { per_tunnel, reply } => {
                let _ = reply.send(self.report(per_tunnel));
            }
            Command::Stop => return false,
        }
        true
    }

    /// The worker's counters now.
    pub fn report(&self, per_tunnel: bool) -> WorkerReport {
        let mut total = self.counters.clone();
        let mut tunnels: IntMap<u32, TunnelCounters> = IntMap::default();
        for (t, c) in &self.retired_counters {
            total.merge(&c.out);
            total.merge(&c.inb);
            if per_tunnel {
                tunnels.insert(*t, c.clone());
            }
        }
        for s in self.outs.iter().flatten() {
            total.merge(&s.sa.counters);
            if per_tunnel {
                tunnels
                    .entry(s.tunnel)
                    .or_default()
                    .out
                    .merge(&s.sa.counters);
            }
        }
        for s in self.ins.iter().flatten() {
            total.merge(&s.sa.counters);
            if per_tunnel {
                tunnels
                    .entry(s.tunnel)
                    .or_default()
                    .inb
                    .merge(&s.sa.counters);
            }
        }
        let mut per: Vec<(u32, TunnelCounters)> = tunnels.into_iter().collect();
        per.sort_by_key(|(t, _)| *t);
        let mut sas = vec![];
        if per_tunnel {
            for s in self.outs.iter().flatten() {
                sas.push(SaReport {
                    tunnel: s.tunnel,
                    name: s.sa.cfg.name.clone(),
                    outbound: true,
                    spi: s.sa.cfg.spi,
                    suite: s.sa.cfg.suite.to_string(),
                    seq: s.sa.next_seq(),
                    seq_limit: s.sa.seq_limit(),
                    replay_window: 0,
                    counters: s.sa.counters.clone(),
                });
            }
            for s in self.ins.iter().flatten() {
                sas.push(SaReport {
                    tunnel: s.tunnel,
                    name: s.sa.cfg.name.clone(),
                    outbound: false,
                    spi: s.sa.cfg.spi,
                    suite: s.sa.cfg.suite.to_string(),
                    seq: s.sa.replay.top(),
                    seq_limit: 0,
                    replay_window: s.sa.replay.window(),
                    counters: s.sa.counters.clone(),
                });
            }
            sas.sort_by_key(|r| (r.tunnel, !r.outbound, r.spi));
        }
        WorkerReport {
            worker: self.cfg.id,
            core: self.cfg.core,
            rx_in: self.rx_in,
            rx_out: self.rx_out,
            handoff_out: self.handoff_out,
            handoff_in: self.handoff_in,
            handoff_drops: self.handoff_drops,
            total,
            tx_out: self.tx_out_total,
            tx_in: self.tx_in_total,
            outbound_sas: self.outs.iter().flatten().count(),
            inbound_sas: self.ins.iter().flatten().count(),
            burst_hist: self.burst_hist,
            polls: self.polls,
            pool_grown: self.pool.grown,
            pool_free: self.pool.available(),
            pool_freed: self.pool.freed_over_cap + self.pool.freed_oversize,
            per_tunnel: per,
            sas,
        }
    }

    /// Applies pending commands (bounded per call). Returns false when told to stop.
    pub fn service_commands(&mut self) -> bool {
        for _ in 0..64 {
            match self.cmds.try_recv() {
                Ok(c) => {
                    if !self.apply(c) {
                        self.stopped = true;
                        return false;
                    }
                }
                Err(_) => break,
            }
        }
        true
    }

    #[inline]
    fn flush_out_run(&mut self, slot: usize) {
        if self.run.is_empty() {
            return;
        }
        let Some(s) = self.outs[slot].as_mut() else {
            for p in self.run.drain(..) {
                self.counters.drop(DropReason::NoSa);
                self.pool.put(p);
            }
            return;
        };
        let mut res = [Ok(SeqState::Ok); esp::MAX_BURST];
        let mut soft = false;
        while !self.run.is_empty() {
            let n = self.run.len().min(esp::MAX_BURST);
            esp::encapsulate_burst(&mut s.sa, &mut self.run[..n], &mut res[..n]);
            for (p, r) in self.run.drain(..n).zip(res.iter()) {
                match r {
                    Ok(st) => {
                        soft |= *st == SeqState::SoftLimit;
                        self.tx.push(p);
                    }
                    Err(_) => self.pool.put(p), // counted on the SA
                }
            }
        }
        if soft {
            let _ = self.events.send(Event::SoftLimit {
                tunnel: s.tunnel,
                spi: s.sa.cfg.spi,
            });
        }
    }

    /// One burst from the inside port: select the tunnel, clamp MSS, fragment oversize
    /// packets, encrypt runs of packets of the same SA as one crypto burst, send outside.
    fn poll_inside(&mut self, now: f64) -> usize {
        // Leave room for fragments (up to 3 per packet at 1500 bytes... 64 KiB datagrams are
        // rare; the ring drops and counts what does not fit).
        let burst = self.cfg.burst.min(self.outside.tx_room() / 2);
        if burst == 0 {
            return 0;
        }
        let (n, handed) = self.receive(Path::Encrypt, burst);
        let local = n;
        let mut run_slot = usize::MAX;
        let mut rx = std::mem::take(&mut self.rx);
        for (i, mut p) in rx.drain(..).enumerate() {
            let slot = match self.sel.lookup_cached(p.bytes()).and_then(|r| {
                let r = self.routes[r].as_ref()?;
                match r.actives.len() {
                    // ECMP: one flow always on the same tunnel (RFC 2992 hash-threshold
                    // in spirit: a hash of the flow picks the member).
                    n if n > 1 => Some(r.actives[wire::flow_hash(p.bytes()) as usize % n]),
                    _ => r.active,
                }
            }) {
                Some(Target::Local(slot)) => slot,
                Some(Target::Remote(owner)) if i < local => {
                    self.hand_over(owner, Path::Encrypt, p);
                    continue;
                }
                // Handed here, and routed to another worker again: the tables changed in
                // between (never handed twice).
                Some(Target::Remote(_)) => {
                    self.counters.drop(DropReason::NoSa);
                    self.pool.put(p);
                    continue;
                }
                None => {
                    let r = if wire::parse_ip(p.bytes()).is_some() {
                        DropReason::NoSa
                    } else {
                        DropReason::NotIp
                    };
                    self.counters.drop(r);
                    self.pool.put(p);
                    continue;
                }
            };
            if slot != run_slot {
                if run_slot != usize::MAX {
                    self.flush_out_run(run_slot);
                }
                run_slot = slot;
            }
            let Some(s) = self.outs[slot].as_mut() else {
                self.counters.drop(DropReason::NoSa);
                self.pool.put(p);
                continue;
            };
            let sa = &mut s.sa;
            let Some(ip) = wire::parse_ip(p.bytes()) else {
                sa.counters.drop(DropReason::Malformed);
                self.pool.put(p);
                continue;
            };
            p.truncate(ip.total_len);
            if self.cfg.complete_checksums
                && matches!(ip.proto, wire::proto::TCP | wire::proto::UDP)
                && wire::complete_checksum(p.bytes_mut()) == wire::Completion::Completed
            {
                self.counters.checksums_completed += 1;
            }
            let mut p = if self.cfg.decrement_ttl {
                match pipeline::forward_hop(
                    sa,
                    &mut self.ctx,
                    now,
                    p,
                    &mut self.pool,
                    &mut self.icmp,
                ) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                p
            };
            if p.len() > sa.inner_mtu {
                // Slow path: fragmentation or ICMP, one packet at a time, after the packets
                // before it (order within a flow is kept).
                self.flush_out_run(slot);
                let Some(s) = self.outs[slot].as_mut() else {
                    continue;
                };
                let sa = &mut s.sa;
                let tunnel = s.tunnel;
                let r = pipeline::protect(
                    sa,
                    &mut self.ctx,
                    now,
                    p,
                    &mut self.pool,
                    &mut self.tx,
                    &mut self.icmp,
                );
                if let pipeline::Protected::Sent {
                    soft_limit: true, ..
                } = r
                {
                    let _ = self.events.send(Event::SoftLimit {
                        tunnel,
                        spi: sa.cfg.spi,
                    });
                }
                continue;
            }
            if sa.cfg.mss_clamp && ip.proto == wire::proto::TCP {
                let mss = if ip.version == 4 {
                    sa.mss_ipv4()
                } else {
                    sa.mss_ipv6()
                };
                if let wire::MssClamp::Clamped(..) = wire::clamp_mss(p.bytes_mut(), mss) {
                    sa.counters.mss_clamped += 1;
                }
            }
            self.run.push(p);
        }
        self.rx = rx;
        self.flush_handoffs();
        if run_slot != usize::MAX {
            self.flush_out_run(run_slot);
        }
        if !self.tx.is_empty() {
            self.tx_out_total += self.outside.tx_burst(&mut self.pool, &mut self.tx) as u64;
        }
        if !self.icmp.is_empty() {
            self.tx_in_total += self.inside.tx_burst(&mut self.pool, &mut self.icmp) as u64;
        }
        n + handed
    }

    #[inline]
    fn in_slot(&mut self, spi: u32) -> Option<usize> {
        if let Some((s, slot)) = self.last_spi
            && s == spi
        {
            return Some(slot);
        }
        let slot = *self.spi_map.get(&spi)?;
        self.last_spi = Some((spi, slot));
        Some(slot)
    }

    fn flush_in_run(&mut self, slot: usize, now: f64) {
        if self.run.is_empty() {
            return;
        }
        let Some(s) = self.ins[slot].as_mut() else {
            for p in self.run.drain(..) {
                self.counters.drop(DropReason::UnknownSpi);
                self.pool.put(p);
            }
            return;
        };
        let mut res = [Ok(()); esp::MAX_BURST];
        while !self.run.is_empty() {
            let n = self.run.len().min(esp::MAX_BURST);
            esp::decapsulate_burst(&mut s.sa, &mut self.run[..n], &mut res[..n]);
            for (mut p, r) in self.run.drain(..n).zip(res.iter()) {
                if r.is_err() {
                    self.pool.put(p); // counted on the SA
                    continue;
                }
                let reasm = if self.cfg.reassemble_inner {
                    Some(&mut self.reasm)
                } else {
                    None
                };
                match pipeline::finish_inbound(&mut s.sa, reasm, now, &mut p) {
                    Ok(Unprotected::Inner) if !self.local_addrs.is_empty() => {
                        // For the gateway's own tunnel address: to the control thread.
                        let own = wire::parse_ip(p.bytes())
                            .filter(|ip| ip.version == 4)
                            .and_then(|_| p.bytes().get(16..20))
                            .and_then(|d| {
                                let a = u32::from_be_bytes(d.try_into().ok()?);
                                self.local_addrs.get(&a).copied()
                            });
                        match (own, &self.to_local) {
                            (Some(t), Some(q)) => match q.push((t, p)) {
                                Ok(()) => self.counters.local_in += 1,
                                Err((_, p)) => {
                                    self.counters.drop(DropReason::LocalFull);
                                    self.pool.put(p);
                                }
                            },
                            _ => self.tx.push(p),
                        }
                    }
                    Ok(Unprotected::Inner) => self.tx.push(p),
                    Ok(Unprotected::Held) | Err(_) => self.pool.put(p),
                }
            }
        }
    }

    /// One burst from the outside port: classify, look the SA up by SPI, decrypt runs of the
    /// same SA as one crypto burst, reassemble, send inside.
    fn poll_outside(&mut self, now: f64) -> usize {
        // Room for a burst of ours and, in a mesh, one handed over.
        let room = self.inside.tx_room() / if self.mesh.is_some() { 2 } else { 1 };
        let burst = self.cfg.burst.min(room);
        if burst == 0 {
            return 0;
        }
        let (n, handed) = self.receive(Path::Decrypt, burst);
        let local = n;
        let mut run_slot = usize::MAX;
        let mut rx = std::mem::take(&mut self.rx);
        for (i, mut p) in rx.drain(..).enumerate() {
            let mut class = esp::classify_outer(p.bytes());
            if class == Ok(Outer::Fragment) {
                let mut whole = PacketBuf::with_capacity(0);
                match self.outer_reasm.insert(now, p.bytes(), &mut whole) {
                    Ok(true) => {
                        self.counters.reassembled += 1;
                        self.pool.put(std::mem::replace(&mut p, whole));
                        class = esp::classify_outer(p.bytes());
                    }
                    Ok(false) => {
                        self.pool.put(p);
                        continue;
                    }
                    Err(r) => {
                        self.counters.drop(r);
                        self.pool.put(p);
                        continue;
                    }
                }
            }
            let (esp_off, spi) = match class {
                Ok(Outer::Esp { esp_off, spi, .. }) => (esp_off, spi),
                Ok(Outer::NatKeepalive) => {
                    self.counters.nat_keepalives += 1;
                    self.pool.put(p);
                    continue;
                }
                Ok(Outer::Ike) | Ok(Outer::Other) | Ok(Outer::Fragment) => {
                    self.counters.ike_passed += 1;
                    match &self.to_control {
                        Some(q) => {
                            if let Err(p) = q.push(p) {
                                self.pool.put(p);
                            }
                        }
                        None => self.pool.put(p),
                    }
                    continue;
                }
                Err(r) => {
                    self.counters.drop(r);
                    self.pool.put(p);
                    continue;
                }
            };
            let Some(slot) = self.in_slot(spi) else {
                if i < local
                    && let Some(&(_, owner)) = self.remote_in.get(&spi)
                {
                    self.hand_over(owner, Path::Decrypt, p);
                    continue;
                }
                self.counters.drop(DropReason::UnknownSpi);
                self.pool.put(p);
                continue;
            };
            if let Some(ip) = wire::parse_ip(p.bytes()) {
                p.truncate(ip.total_len);
            }
            if p.pull_front(esp_off).is_none() {
                self.counters.drop(DropReason::Malformed);
                self.pool.put(p);
                continue;
            }
            if slot != run_slot {
                if run_slot != usize::MAX {
                    self.flush_in_run(run_slot, now);
                }
                run_slot = slot;
            }
            self.run.push(p);
        }
        self.rx = rx;
        self.flush_handoffs();
        if run_slot != usize::MAX {
            self.flush_in_run(run_slot, now);
        }
        if !self.tx.is_empty() {
            self.tx_in_total += self.inside.tx_burst(&mut self.pool, &mut self.tx) as u64;
        }
        n + handed
    }

    /// One iteration of the poll loop: commands, a burst each way, timers. Returns the number
    /// of packets received. `now` is seconds on the caller's clock.
    pub fn poll_once(&mut self, now: f64) -> usize {
        if !self.service_commands() {
            return 0;
        }
        let a = self.poll_inside(now);
        let b = self.poll_outside(now);
        self.polls += 1;
        let n = a.max(b);
        let bucket = if n == 0 {
            0
        } else {
            (usize::BITS - n.leading_zeros()) as usize
        };
        self.burst_hist[bucket.min(9)] += 1;
        if self.polls.is_multiple_of(1024) {
            let t = self.reasm.expire(now) + self.outer_reasm.expire(now);
            self.counters.drops[DropReason::ReassemblyTimeout as usize] += t;
            let e = self.reasm.take_evicted() + self.outer_reasm.take_evicted();
            self.counters.drops[DropReason::ReassemblyOverflow as usize] += e;
        }
        a + b
    }

    /// Commands sent but not applied yet.
    pub fn pending_commands(&self) -> usize {
        self.cmds.len()
    }

    /// Encrypts and sends one packet of the gateway's own (`Command::Transmit`): the slow
    /// path (fragmentation, DF, ICMP as for any packet), sent at once. Without an outbound
    /// SA for the tunnel here it is dropped as `no_sa`.
    fn transmit(&mut self, tunnel: u32, packet: PacketBuf) {
        let Some(s) = self
            .tunnel_out
            .get(&tunnel)
            .and_then(|slot| self.outs[*slot].as_mut())
        else {
            self.counters.drop(DropReason::NoSa);
            return;
        };
        let now = self.epoch.elapsed().as_secs_f64();
        let (mut out, mut icmp) = (Vec::new(), Vec::new());
        let r = pipeline::protect(
            &mut s.sa,
            &mut self.ctx,
            now,
            packet,
            &mut self.pool,
            &mut out,
            &mut icmp,
        );
        if let pipeline::Protected::Sent { soft_limit, .. } = r {
            self.counters.local_out += 1;
            if soft_limit {
                let _ = self.events.send(Event::SoftLimit {
                    tunnel,
                    spi: s.sa.cfg.spi,
                });
            }
        }
        // An ICMP error about our own packet has no one to go to.
        for p in icmp {
            self.pool.put(p);
        }
        self.tx_out_total += self.outside.tx_burst(&mut self.pool, &mut out) as u64;
    }

    /// Whether a `Stop` command was applied.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Runs the poll loop on this thread (pinned to `cfg.core` when set) until `Stop` or
    /// `stop` is raised. Returns the worker so its ports and counters can be inspected.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Self {
        if let Some(core) = self.cfg.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let epoch = self.epoch;
        let mut idle = 0u32;
        let mut now = 0.0;
        let mut tick = 0u32;
        while !stop.load(Ordering::Relaxed) && !self.stopped {
            // The clock is read every 8 polls: timers (reassembly, ICMP pacing) are coarse.
            if tick & 7 == 0 {
                now = epoch.elapsed().as_secs_f64();
            }
            tick = tick.wrapping_add(1);
            if self.poll_once(now) == 0 {
                idle += 1;
                if idle > 1024 {
                    if self.cfg.idle_sleep_us > 0 {
                        std::thread::sleep(std::time::Duration::from_micros(
                            self.cfg.idle_sleep_us.into(),
                        ));
                    } else {
                        std::hint::spin_loop();
                    }
                }
            } else {
                idle = 0;
            }
        }
        // Apply what is left (reports, barriers) so no caller waits forever.
        while let Ok(c) = self.cmds.try_recv() {
            if !self.apply(c) {
                break;
            }
        }
        self
    }

    /// Sets the time origin of `run` (shared with generators that stamp packets).
    pub fn set_epoch(&mut self, epoch: Instant) {
        self.epoch = epoch;
    }
}
