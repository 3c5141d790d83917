//! The IKE shell of `espd run`: UDP sockets on 500 and 4500 of each tunnel's outside
//! address (the XDP program passes IKE to the kernel), one `ike::any::Sa` (IKEv2 or IKEv1) per tunnel,
//! CHILD_SAs installed into the worker (inbound first, then outbound: make-before-break),
//! DPD with the tunnel's action, startup action `add` (wait) or `start` (initiate, retry).
//!
//! Contract: [`IkeCtl::poll`] is called by the control thread every few milliseconds with
//! the time; it never blocks (non-blocking sockets), reads every datagram waiting, runs the
//! timers, and returns the log lines to write. All protocol logic is in the sans-IO `ike`
//! crate; this file only moves bytes, keys and commands.

use crate::config::{self, DpdAction, StartupAction, Tunnel};
use crate::tunnel_log::PhaseState;
use engine::crypto::{Backend, Suite};
use engine::runtime::Command;
use engine::sa::{Direction, InboundSa, OutboundSa, SaConfig};
use engine::workers::WorkerSet;
use ike::any::Sa;
use ike::dpd::{Action as DpdStep, Dpd};
use ike::msg::{Header, TrafficSelector};
use ike::session::{ChildSa, Config as IkeConfig, Output, Phase};
use ike::v1::Lifetimes;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use telemetry::metrics::IkeSnapshot;
use zeroize::Zeroizing;

/// One tunnel negotiated by IKE.
struct TunnelIke {
    index: u32,
    name: String,
    outside: IpAddr,
    peer: Option<IpAddr>,
    cfg: IkeConfig,
    startup: StartupAction,
    dpd_action: DpdAction,
    dpd_timeout: u32,
    replay_window: u32,
    sa: Option<Sa>,
    /// IKE versions the tunnel allows (`ike_versions`): it answers either, and initiates
    /// with IKEv2 unless only IKEv1 is allowed.
    v1: bool,
    v2: bool,
    /// Messages of a version the tunnel does not allow were seen (logged once).
    other_version_logged: bool,
    /// The peer's port we talk to (500, or its NAT-T port after floating).
    peer_port: u16,
    dpd: Option<Dpd>,
    /// Inbound SPIs installed for this tunnel (removed when the SA goes).
    installed: Vec<u32>,
    next_start: Option<f64>,
    /// A DPD `restart` is under way: initiation is retried until an IKE SA is up.
    restarting: bool,
    up: bool,
    /// Lifetimes, margin and fuzz (AWS options) and the next rekey times.
    p1_life: u32,
    p2_life: u32,
    margin: u32,
    fuzz: u32,
    child_rekey_at: Option<f64>,
    ike_rekey_at: Option<f64>,
    ike_rekeys_seen: u32,
    /// Events for the metrics: rekeys by [IKE SA, CHILD_SA][local, peer], collisions (and
    /// the IKE SA's count last seen), DPD timeouts.
    rekeys: [[u64; 2]; 2],
    collisions: u64,
    collisions_seen: u32,
    dpd_timeouts: u64,
    /// Messages the tunnel's IKE SAs dropped (bad ICV, malformed, unexpected), and the
    /// current IKE SA's count last seen.
    ike_dropped: u64,
    ike_dropped_seen: u64,
    /// A new outbound SA waiting for the old SA's DELETE (we answered the rekey), with the
    /// time after which we switch anyway.
    pending_out: Option<(Box<OutboundSa>, f64)>,
    /// New IKE SAs peers are setting up (answered IKE_SA_INIT, not yet authenticated), with
    /// where their IKE_SA_INIT came from. One replaces `sa` only once it authenticates, so
    /// a spoofed IKE_SA_INIT cannot take a live or half-open SA down; at most
    /// `IkeLimits::half_open_per_tunnel`, the oldest evicted first.
    pending: Vec<(Sa, SocketAddr)>,
    /// When the current CHILD_SA was made (hard lifetime) and the last NAT keepalive sent.
    child_since: f64,
    last_keepalive: f64,
}

/// Bounds of the state unauthenticated IKE_SA_INIT requests can create (RFC 7296 section
/// 2.6): above any of them the responder asks for a COOKIE first, so no DH and no state is
/// spent on a source that cannot receive our answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IkeLimits {
    /// IKE_SA_INIT requests per second (`ike_cookie_rate`).
    pub cookie_rate: usize,
    /// Half-open IKE SAs on the whole gateway (`ike_half_open_cookie`).
    pub half_open_cookie: usize,
    /// Half-open IKE SAs from one source address (`ike_half_open_per_source`).
    pub half_open_per_source: usize,
    /// Half-open IKE SAs kept per tunnel; more evict the oldest (`ike_half_open_per_tunnel`).
    pub half_open_per_tunnel: usize,
}

impl Default for IkeLimits {
    fn default() -> Self {
        IkeLimits {
            cookie_rate: 50,
            half_open_cookie: 8,
            half_open_per_source: 2,
            half_open_per_tunnel: 4,
        }
    }
}

/// Seconds between NAT keepalives (RFC 3948 section 2.3 suggests 20).
const KEEPALIVE_S: f64 = 20.0;
/// A responder IKE SA that is not authenticated after this long is dropped (AWS logs it).
const HALF_OPEN_S: f64 = 30.0;

/// A line for the tunnel log: (tunnel index, (phase 1, phase 2) states, detail).
pub type LogLine = (u32, (PhaseState, PhaseState), String);

/// Datagrams on the IKE sockets, and those no IKE SA took (metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IkeCounters {
    /// IKE messages received (500, and 4500 with the non-ESP marker).
    pub datagrams: u64,
    /// Shorter than an IKE header or with a bad length.
    pub malformed: u64,
    /// SPIs of no IKE SA (not a new IKE_SA_INIT request).
    pub unknown_spi: u64,
    /// An IKE_SA_INIT request from an address no tunnel accepts.
    pub no_tunnel: u64,
    /// COOKIE answers sent under load instead of a DH (section 2.6).
    pub cookies_sent: u64,
    /// Half-open IKE SAs dropped to make room for a newer one (per-tunnel bound).
    pub half_open_evicted: u64,
    /// New IKE_SA_INIT requests left unanswered because this poll had spent its DH budget
    /// (`DH_BUDGET`): the peer retransmits; timers and established SAs keep running.
    pub init_deferred: u64,
}

/// IKE_SA_INIT requests waiting for a DH thread at most (see [`IkeCtl::offload_dh`]).
pub const DH_QUEUE: usize = 64;

/// A new IKE_SA_INIT request for a DH thread.
struct DhJob {
    tunnel: usize,
    local: IpAddr,
    from: SocketAddr,
    cfg: IkeConfig,
    life: Lifetimes,
    data: Vec<u8>,
    now: f64,
}

/// What a DH thread made of a request: (tunnel, local address, source, SA, outputs, now).
type DhDone = (usize, IpAddr, SocketAddr, Option<Sa>, Vec<Output>, f64);

/// The DH threads' queues.
struct DhPool {
    jobs: crossbeam_channel::Sender<DhJob>,
    done: crossbeam_channel::Receiver<DhDone>,
}

/// Time one poll may spend answering new IKE_SA_INIT requests (each costs a DH key pair):
/// past it, further new requests wait for the peer's retransmission, so a flood (with or
/// without cookies) cannot stall the timers, rekeys and DPD of the other tunnels, signals or
/// reloads for longer than this and one DH.
pub const DH_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

/// Every IKE-negotiated tunnel of the gateway.
pub struct IkeCtl {
    /// Gateway-wide counts of IKE datagrams.
    pub counters: IkeCounters,
    /// Inbound SPIs installed on the gateway (static SAs and CHILD_SAs): the SPIs the IKE
    /// SAs draw avoid them, so a new CHILD_SA never replaces another tunnel's SA.
    spis: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    /// Bounds of unauthenticated state (set from `[gateway]`).
    pub limits: IkeLimits,
    socks: HashMap<IpAddr, (UdpSocket, UdpSocket)>,
    /// Stateless cookies (RFC 7296 section 2.6), issued when IKE_SA_INIT requests arrive
    /// faster than `COOKIE_RATE` per second; the secret rotates every 5 minutes.
    cookies: ike::cookie::Cookies,
    cookie_rotated: f64,
    init_times: std::collections::VecDeque<f64>,
    tunnels: Vec<TunnelIke>,
    backend: Backend,
    export_keys: Option<std::path::PathBuf>,
    buf: Vec<u8>,
    /// When the current poll started (for `DH_BUDGET`).
    poll_started: std::time::Instant,
    /// DH threads, when `offload_dh` was called (`espd run`).
    dh_pool: Option<DhPool>,
}

impl std::fmt::Debug for IkeCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IkeCtl({} tunnels)", self.tunnels.len())
    }
}

fn fill(b: &mut [u8]) {
    let _ = getrandom::fill(b);
}

/// Seconds from now to the next rekey of an SA of this lifetime (AWS formula, fresh draw).
fn draw(life: u32, margin: u32, fuzz: u32) -> f64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    let u = (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    ike::rekey::rekey_at(life, margin, fuzz, u)
}

fn cidr_ts(c: config::Cidr) -> TrafficSelector {
    let (start, end) = c.range();
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start,
        end,
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn suite_of(c: &ChildSa) -> Option<Suite> {
    config::esp_suite(&c.encryption, c.integrity.as_deref())
}

impl IkeCtl {
    /// Sets up IKE for every tunnel that has no static SAs. Fails when a
    /// socket cannot be bound (another IKE daemon on the address, or the address is not
    /// configured on this machine).
    pub fn new(
        tunnels: &[(u32, &Tunnel)],
        backend: Backend,
        export_keys: Option<std::path::PathBuf>,
        now: f64,
    ) -> Result<IkeCtl, String> {
        let mut ctl = IkeCtl {
            counters: IkeCounters::default(),
            spis: Default::default(),
            limits: IkeLimits::default(),
            socks: HashMap::new(),
            cookies: ike::cookie::Cookies::new(&mut fill),
            cookie_rotated: now,
            init_times: std::collections::VecDeque::new(),
            tunnels: vec![],
            backend,
            export_keys,
            buf: vec![0u8; 65536],
            poll_started: std::time::Instant::now(),
            dh_pool: None,
        };
        for (index, t) in tunnels {
            for s in t
                .sas
                .iter()
                .filter(|s| s.direction == engine::sa::Direction::In)
            {
                ctl.spi_set(s.spi, true);
            }
            if !t.sas.is_empty() {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = ctl.socks.entry(t.outside_ip) {
                let s500 = bind(t.outside_ip, 500).map_err(|e| {
                    format!("tunnel {:?}: IKE socket {}:500: {e}", t.name, t.outside_ip)
                })?;
                let s4500 = bind(t.outside_ip, 4500).map_err(|e| {
                    format!("tunnel {:?}: IKE socket {}:4500: {e}", t.name, t.outside_ip)
                })?;
                e.insert((s500, s4500));
            }
            let peer = t.peer_ip;
            let cfg = IkeConfig {
                local_addr: t.outside_ip,
                peer_addr: peer.unwrap_or(t.outside_ip),
                psk: Zeroizing::new(t.pre_shared_key.as_bytes().to_vec()),
                p1_enc: t.phase1_encryption.clone(),
                p1_integ: t.phase1_integrity.clone(),
                p1_dh: t.phase1_dh_groups.clone(),
                p2_enc: t.phase2_encryption.clone(),
                p2_integ: t.phase2_integrity.clone(),
                p2_dh: t.phase2_dh_groups.clone(),
                // Our side is AWS's: the remote (AWS) CIDR; the peer's is the local one.
                local_ts: cidr_ts(t.remote_ipv4_network_cidr),
                remote_ts: cidr_ts(t.local_ipv4_network_cidr),
                force_nat_t: t.nat_t == config::NatT::Force,
                retransmits: 4,
                retransmit_base_s: 1.0,
            };
            ctl.tunnels.push(TunnelIke {
                index: *index,
                name: t.name.clone(),
                outside: t.outside_ip,
                peer,
                cfg,
                startup: t.startup_action,
                dpd_action: t.dpd_timeout_action,
                dpd_timeout: t.dpd_timeout_s,
                replay_window: t.replay_window_size,
                sa: None,
                v1: t.ike_versions.contains(&config::IkeVersion::V1),
                v2: t.ike_versions.contains(&config::IkeVersion::V2),
                other_version_logged: false,
                peer_port: 500,
                dpd: None,
                installed: vec![],
                next_start: (t.startup_action == StartupAction::Start).then_some(now),
                restarting: false,
                up: false,
                p1_life: t.phase1_lifetime_s,
                p2_life: t.phase2_lifetime_s,
                margin: t.rekey_margin_s,
                fuzz: t.rekey_fuzz_pct,
                child_rekey_at: None,
                ike_rekey_at: None,
                ike_rekeys_seen: 0,
                rekeys: [[0; 2]; 2],
                collisions: 0,
                collisions_seen: 0,
                dpd_timeouts: 0,
                ike_dropped: 0,
                ike_dropped_seen: 0,
                pending_out: None,
                pending: vec![],
                child_since: 0.0,
                last_keepalive: 0.0,
            });
        }
        Ok(ctl)
    }

    fn spi_set(&self, spi: u32, taken: bool) {
        let mut s = self.spis.lock().unwrap_or_else(|e| e.into_inner());
        if taken {
            s.insert(spi);
        } else {
            s.remove(&spi);
        }
    }

    /// The predicate the IKE SAs draw their inbound SPIs against.
    fn spi_taken(&self) -> ike::session::SpiTaken {
        let s = self.spis.clone();
        std::sync::Arc::new(move |spi| s.lock().unwrap_or_else(|e| e.into_inner()).contains(&spi))
    }

    /// Tunnels handled here.
    pub fn tunnels(&self) -> Vec<u32> {
        self.tunnels.iter().map(|t| t.index).collect()
    }

    /// Makes tunnel `index`'s IKE SA (`ike`) or CHILD_SA rekey due now (the next `poll`
    /// starts it, or retries each second while another exchange is out).
    pub fn rekey_now(&mut self, index: u32, ike: bool, now: f64) {
        if let Some(t) = self.tunnels.iter_mut().find(|t| t.index == index) {
            if ike {
                t.ike_rekey_at = Some(now);
            } else {
                t.child_rekey_at = Some(now);
            }
        }
    }

    /// Each tunnel's IKE state and event counts, for the metrics.
    pub fn stats(&self) -> Vec<(u32, IkeSnapshot)> {
        self.tunnels
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (p1, p2) = self.states(i, true);
                let snap = IkeSnapshot {
                    phase1: p1.name(),
                    phase2: p2.name(),
                    rekeys: t.rekeys,
                    collisions: t.collisions,
                    dpd_timeouts: t.dpd_timeouts,
                    messages_dropped: t.ike_dropped,
                    spis: t.sa.as_ref().map(Sa::spis),
                    dpd_action: match t.dpd_action {
                        DpdAction::Clear => "clear",
                        DpdAction::None => "none",
                        DpdAction::Restart => "restart",
                    },
                };
                (t.index, snap)
            })
            .collect()
    }

    fn send(&self, t: &TunnelIke, data: &[u8], nat_t: bool) {
        let Some((s500, s4500)) = self.socks.get(&t.outside) else {
            return;
        };
        let Some(peer) = t.peer.or(Some(t.cfg.peer_addr)) else {
            return;
        };
        if nat_t || t.peer_port != 500 {
            let port = if t.peer_port == 500 {
                4500
            } else {
                t.peer_port
            };
            let mut m = Vec::with_capacity(data.len() + 4);
            m.extend_from_slice(&[0, 0, 0, 0]);
            m.extend_from_slice(data);
            let _ = s4500.send_to(&m, SocketAddr::new(peer, port));
        } else {
            let _ = s500.send_to(data, SocketAddr::new(peer, 500));
        }
    }

    /// Reads and discards every waiting datagram (tests: a peer that has gone away).
    pub fn drain(&mut self) {
        for (s500, s4500) in self.socks.values() {
            while s500.recv_from(&mut self.buf).is_ok() {}
            while s4500.recv_from(&mut self.buf).is_ok() {}
        }
    }

    /// Reads every waiting datagram, runs the timers; returns log lines.
    pub fn poll(&mut self, now: f64, h: &WorkerSet) -> Vec<LogLine> {
        let mut logs = vec![];
        self.poll_started = std::time::Instant::now();
        // Answers the DH threads finished since the last poll.
        let done: Vec<DhDone> = self
            .dh_pool
            .as_ref()
            .map(|p| p.done.try_iter().collect())
            .unwrap_or_default();
        for (i, local, from, sa, out, t) in done {
            self.responded(i, local, from, sa, out, t.max(now), h, &mut logs);
        }
        // An outbound SA near its sequence-number limit asks for a CHILD_SA rekey now.
        while let Some(engine::runtime::Event::SoftLimit { tunnel, .. }) = h.try_event() {
            if let Some(t) = self.tunnels.iter_mut().find(|t| t.index == tunnel) {
                t.child_rekey_at = Some(now);
            }
        }
        let addrs: Vec<IpAddr> = self.socks.keys().copied().collect();
        for a in addrs {
            for nat in [false, true] {
                loop {
                    let r = {
                        let (s500, s4500) = &self.socks[&a];
                        let s = if nat { s4500 } else { s500 };
                        s.recv_from(&mut self.buf)
                    };
                    let (n, from) = match r {
                        Ok(x) => x,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    };
                    let data = if nat {
                        // Non-ESP marker (RFC 3948 section 2.2); keepalives and stray ESP go.
                        if n < 4 + Header::LEN || self.buf[..4] != [0, 0, 0, 0] {
                            continue;
                        }
                        self.buf[4..n].to_vec()
                    } else {
                        self.buf[..n].to_vec()
                    };
                    self.on_datagram(a, from, &data, now, h, &mut logs);
                }
            }
        }
        for i in 0..self.tunnels.len() {
            self.timers(i, now, h, &mut logs);
        }
        if now - self.cookie_rotated > 300.0 {
            self.cookies.rotate(&mut fill);
            self.cookie_rotated = now;
        }
        logs
    }

    fn on_datagram(
        &mut self,
        local: IpAddr,
        from: SocketAddr,
        data: &[u8],
        now: f64,
        h: &WorkerSet,
        logs: &mut Vec<LogLine>,
    ) {
        self.counters.datagrams += 1;
        let Some(hdr) = ike::any::peek(data) else {
            self.counters.malformed += 1;
            return;
        };
        // A half-open SA of ours, an existing SA by SPI, else a new IKE_SA_INIT request for
        // a tunnel of this address pair.
        let pending = self.tunnels.iter().enumerate().find_map(|(i, t)| {
            t.pending
                .iter()
                .position(|(s, _)| s.owns(hdr.spi_i, hdr.spi_r))
                .map(|k| (i, k))
        });
        if let Some((i, k)) = pending {
            let (mut p, _) = self.tunnels[i].pending.remove(k);
            let out = p.handle(data, now, &mut fill);
            match p.state() {
                ike::session::State::Established => {
                    // The peer authenticated (a first SA, or a re-establishment with
                    // INITIAL_CONTACT): the new IKE SA takes over, and only now does the
                    // tunnel learn where the peer is; the old SA's inbound SAs go once the
                    // new CHILD_SA is installed.
                    let t = &mut self.tunnels[i];
                    let old = match t.sa.take() {
                        Some(o) => {
                            let v1_rekey = o.version() == 1
                                && p.version() == 1
                                && o.state() == ike::session::State::Established;
                            let stale = p.take_over(o, now);
                            if v1_rekey && stale.is_empty() {
                                // The peer's IKEv1 phase 1 rekey (a new main mode).
                                t.rekeys[0][1] += 1;
                            }
                            stale
                        }
                        None => vec![],
                    };
                    t.sa = Some(p);
                    t.peer_port = from.port();
                    if t.peer.is_none() {
                        t.cfg.peer_addr = from.ip();
                    }
                    self.apply(i, out, now, h, logs);
                    for spi in old {
                        h.send(Command::DelInbound { spi });
                        self.tunnels[i].installed.retain(|x| *x != spi);
                        self.spi_set(spi, false);
                    }
                }
                ike::session::State::Closed => {
                    let rest = self.reply_to(local, from, out);
                    let logs_only = rest
                        .into_iter()
                        .filter(|o| !matches!(o, Output::Closed(_)))
                        .collect();
                    self.apply(i, logs_only, now, h, logs);
                }
                _ => {
                    // Still half-open: answers go back to where this came from, the tunnel
                    // keeps what it knows of its peer.
                    let rest = self.reply_to(local, from, out);
                    self.tunnels[i].pending.push((p, from));
                    self.apply(i, rest, now, h, logs);
                }
            }
            return;
        }
        let i = self
            .tunnels
            .iter()
            .position(|t| t.sa.as_ref().is_some_and(|s| s.owns(hdr.spi_i, hdr.spi_r)));
        let i = match i {
            Some(i) => i,
            None => {
                if hdr.spi_r != 0 || hdr.response {
                    self.counters.unknown_spi += 1;
                    return;
                }
                let for_us =
                    |t: &TunnelIke| t.outside == local && t.peer.is_none_or(|p| p == from.ip());
                let allows = |t: &TunnelIke| if hdr.major == 1 { t.v1 } else { t.v2 };
                let Some(i) = self.tunnels.iter().position(|t| for_us(t) && allows(t)) else {
                    self.counters.no_tunnel += 1;
                    // A tunnel of this peer that does not allow the version: said once.
                    if let Some(k) = self
                        .tunnels
                        .iter()
                        .position(|t| for_us(t) && !t.other_version_logged)
                    {
                        self.tunnels[k].other_version_logged = true;
                        let line = format!(
                            "engine: IKEv{} from {} ignored: ike_versions does not allow it",
                            hdr.major,
                            from.ip()
                        );
                        logs.push((
                            self.tunnels[k].index,
                            self.states(k, self.tunnels[k].up),
                            line,
                        ));
                    }
                    return;
                };
                let life = Lifetimes {
                    phase1_s: self.tunnels[i].p1_life,
                    phase2_s: self.tunnels[i].p2_life,
                };
                if hdr.major == 1 {
                    // IKEv1 main mode message 1 costs no DH (message 3 does, once the peer
                    // has shown it receives our answers); one source holds few half-open SAs.
                    let from_source = self
                        .tunnels
                        .iter()
                        .flat_map(|t| &t.pending)
                        .filter(|(_, a)| a.ip() == from.ip())
                        .count();
                    if from_source >= self.limits.half_open_per_source {
                        self.counters.init_deferred += 1;
                        return;
                    }
                    let mut cfg = self.tunnels[i].cfg.clone();
                    cfg.peer_addr = from.ip();
                    let (sa, out) = Sa::respond(cfg, life, data, now, &mut fill);
                    self.responded(i, local, from, sa, out, now, h, logs);
                    return;
                }
                // Under a flood of IKE_SA_INIT, no DH and no state before a valid cookie.
                self.init_times.push_back(now);
                while self.init_times.front().is_some_and(|t| now - t > 1.0) {
                    self.init_times.pop_front();
                }
                // Half-open SAs on the gateway and from this source: cookies are asked for on
                // a small gateway too, and one source cannot hold every slot.
                let (half_open, from_source) = self
                    .tunnels
                    .iter()
                    .flat_map(|t| &t.pending)
                    .fold((0, 0), |(n, s), (_, a)| {
                        (n + 1, s + usize::from(a.ip() == from.ip()))
                    });
                let l = self.limits;
                if self.init_times.len() > l.cookie_rate
                    || half_open >= l.half_open_cookie
                    || from_source >= l.half_open_per_source
                {
                    match self.cookies.check(data, from.ip()) {
                        Ok(()) => {}
                        Err(reply) => {
                            if let (Some(r), Some((s500, s4500))) = (reply, self.socks.get(&local))
                            {
                                self.counters.cookies_sent += 1;
                                let _ = if from.port() == 500 {
                                    s500.send_to(&r, from)
                                } else {
                                    s4500.send_to(&[&[0u8; 4][..], &r].concat(), from)
                                };
                            }
                            return;
                        }
                    }
                }
                let mut cfg = self.tunnels[i].cfg.clone();
                cfg.peer_addr = from.ip();
                if let Some(pool) = &self.dh_pool {
                    // The DH threads answer it; the result is taken at the next polls.
                    let job = DhJob {
                        tunnel: i,
                        local,
                        from,
                        cfg,
                        life,
                        data: data.to_vec(),
                        now,
                    };
                    if pool.jobs.try_send(job).is_err() {
                        self.counters.init_deferred += 1;
                    }
                    return;
                }
                if self.poll_started.elapsed() > DH_BUDGET {
                    self.counters.init_deferred += 1;
                    return;
                }
                let (sa, out) = Sa::respond(cfg, life, data, now, &mut fill);
                self.responded(i, local, from, sa, out, now, h, logs);
                return;
            }
        };
        let Some(sa) = self.tunnels[i].sa.as_mut() else {
            return;
        };
        let v0 = sa.verified();
        let out = sa.handle(data, now, &mut fill);
        // Only a message that authenticated on an established SA moves what we know of the
        // peer: its port (a NAT-T float) and its liveness (DPD). A datagram with the right
        // SPIs but no valid ICV (anyone on the path can copy SPIs) changes nothing.
        if sa.verified() > v0 && sa.state() == ike::session::State::Established {
            let t = &mut self.tunnels[i];
            t.peer_port = from.port();
            if let Some(d) = t.dpd.as_mut() {
                d.on_receive(now);
            }
        }
        self.apply(i, out, now, h, logs);
    }

    /// The answer to a new IKE_SA_INIT request (made here or by a DH thread): the new SA is
    /// kept aside until it authenticates, so the tunnel's SA (live, half-open or ours being
    /// initiated) and what it knows of its peer stay as they are; the reply goes back to
    /// where the request came from.
    #[allow(clippy::too_many_arguments)]
    fn responded(
        &mut self,
        i: usize,
        local: IpAddr,
        from: SocketAddr,
        sa: Option<Sa>,
        out: Vec<Output>,
        now: f64,
        h: &WorkerSet,
        logs: &mut Vec<LogLine>,
    ) {
        if let Some(mut sa) = sa {
            sa.set_spi_taken(self.spi_taken());
            let t = &mut self.tunnels[i];
            if t.pending.len() >= self.limits.half_open_per_tunnel.max(1) {
                t.pending.remove(0);
                self.counters.half_open_evicted += 1;
            }
            t.pending.push((sa, from));
        }
        let rest = self.reply_to(local, from, out);
        self.apply(i, rest, now, h, logs);
    }

    /// Runs the responder's IKE_SA_INIT work (a DH key pair and shared secret per request,
    /// the one thing a stranger can make us compute) on `threads` threads of their own from
    /// now on, so it never delays the timers, rekeys and DPD of the tunnels. At most
    /// `DH_QUEUE` requests wait; more are left to the peers' retransmissions (counted in
    /// `init_deferred`). Tests that want one thread and a fake clock do not call this.
    pub fn offload_dh(&mut self, threads: usize) -> Result<(), String> {
        let (jobs, jobs_rx) = crossbeam_channel::bounded::<DhJob>(DH_QUEUE);
        let (done_tx, done) = crossbeam_channel::unbounded();
        for k in 0..threads.max(1) {
            let (rx, tx) = (jobs_rx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("espd-dh-{k}"))
                .spawn(move || {
                    for j in rx {
                        let (sa, out) = Sa::respond(j.cfg, j.life, &j.data, j.now, &mut fill);
                        if tx
                            .send((j.tunnel, j.local, j.from, sa, out, j.now))
                            .is_err()
                        {
                            break;
                        }
                    }
                })
                .map_err(|e| format!("starting a DH thread: {e}"))?;
        }
        self.dh_pool = Some(DhPool { jobs, done });
        Ok(())
    }

    /// Sends the datagrams of `out` back to `from` (answers to a peer the tunnel does not
    /// know yet); returns the other outputs.
    fn reply_to(&self, local: IpAddr, from: SocketAddr, out: Vec<Output>) -> Vec<Output> {
        let mut rest = vec![];
        for o in out {
            match o {
                Output::Send { data, .. } => {
                    if let Some((s500, s4500)) = self.socks.get(&local) {
                        let _ = if from.port() == 500 {
                            s500.send_to(&data, from)
                        } else {
                            s4500.send_to(&[&[0u8; 4][..], &data].concat(), from)
                        };
                    }
                }
                o => rest.push(o),
            }
        }
        rest
    }

    /// The phase states of a log line of tunnel `i` (log spec section 2.4): those of its IKE
    /// SA; `up == false` marks an event that takes the tunnel down, so both phases read
    /// `Down` unless a negotiation is under way. CHILD_SAs the data plane keeps without an
    /// IKE SA (DPD action none) read `Established`.
    fn states(&self, i: usize, up: bool) -> (PhaseState, PhaseState) {
        let t = &self.tunnels[i];
        let (p1, p2) = t.sa.as_ref().map_or((Phase::Down, Phase::Down), Sa::phases);
        let p2 = if p2 == Phase::Down && t.up && up {
            Phase::Established
        } else {
            p2
        };
        let (p1, p2) = if up {
            (p1, p2)
        } else {
            let neg = |p| {
                if p == Phase::Negotiating {
                    p
                } else {
                    Phase::Down
                }
            };
            (neg(p1), neg(p2))
        };
        (p1.into(), p2.into())
    }

    fn apply(
        &mut self,
        i: usize,
        out: Vec<Output>,
        now: f64,
        h: &WorkerSet,
        logs: &mut Vec<LogLine>,
    ) {
        for o in out {
            let idx = self.tunnels[i].index;
            match o {
                Output::Send { data, nat_t } => {
                    let t = &self.tunnels[i];
                    self.send(t, &data, nat_t);
                }
                Output::IkeUp => {
                    self.export_ike_keys(i);
                    let t = &mut self.tunnels[i];
                    // An IKEv1 SA that took over from the peer's phase 1 rekey carries the
                    // old SA's counts on.
                    if let Some(sa) = &t.sa {
                        t.ike_rekeys_seen = sa.ike_rekeys();
                        t.collisions_seen = sa.collisions();
                        t.ike_dropped_seen = sa.dropped();
                    }
                    t.dpd = Some(Dpd::new(now, t.dpd_timeout));
                    t.restarting = false;
                    let life =
                        t.sa.as_ref()
                            .map_or(t.p1_life, |s| s.p1_lifetime(t.p1_life));
                    t.ike_rekey_at = Some(now + draw(life, t.margin, t.fuzz));
                    let g = t.sa.as_ref().and_then(Sa::dh_group).unwrap_or(0);
                    let v = t.sa.as_ref().map_or(2, Sa::version);
                    logs.push((
                        idx,
                        self.states(i, true),
                        format!("IKE SA established (IKEv{v}, DH group {g})"),
                    ));
                }
                Output::ChildUp(c) => {
                    if !self.tunnels[i].installed.is_empty() {
                        // A rekey: ours when we switch at once (we started it).
                        let who = usize::from(!c.switch_now);
                        self.tunnels[i].rekeys[1][who] += 1;
                    }
                    let line = self.install(i, &c, h, now);
                    logs.push((idx, self.states(i, true), line));
                    let t = &mut self.tunnels[i];
                    t.up = true;
                    let life = c.lifetime_s.map_or(t.p2_life, |l| l.min(t.p2_life));
                    t.child_rekey_at = Some(now + draw(life, t.margin, t.fuzz));
                    t.child_since = now;
                }
                Output::ChildDown { spi_in } => {
                    self.switch_out(i, h);
                    h.send(Command::DelInbound { spi: spi_in });
                    self.tunnels[i].installed.retain(|s| *s != spi_in);
                    self.spi_set(spi_in, false);
                }
                Output::Log(l) => logs.push((idx, self.states(i, self.tunnels[i].up), l)),
                Output::Closed(why) => {
                    let t = &self.tunnels[i];
                    if t.dpd_action == DpdAction::None && t.up && why.contains("timed out") {
                        // DPD action `none`: an unanswered request ends the IKE SA, but the
                        // CHILD_SAs stay in the data plane (AWS takes no action).
                        logs.push((
                            idx,
                            self.states(i, true),
                            format!("IKE SA closed: {why}; DPD action none: CHILD_SAs kept"),
                        ));
                        self.tunnels[i].dpd = None;
                        continue;
                    }
                    self.teardown(i, h);
                    logs.push((idx, self.states(i, false), format!("IKE SA closed: {why}")));
                    let t = &mut self.tunnels[i];
                    // Startup `start`, and a DPD `restart` until it succeeds: try again.
                    if t.startup == StartupAction::Start || t.restarting {
                        t.next_start = Some(now + 5.0);
                    }
                }
            }
        }
    }

    /// Installs a CHILD_SA: inbound first, then the outbound switch (make-before-break).
    /// Appends the IKE SA's keys to `<export-keys>.ikev2_decryption_table` (IKEv1:
    /// `.ikev1_decryption_table`; debug only).
    fn export_ike_keys(&self, i: usize) {
        let (Some(p), Some((table, line))) = (
            &self.export_keys,
            self.tunnels[i].sa.as_ref().and_then(Sa::wireshark_key_line),
        ) else {
            return;
        };
        let mut path = p.as_os_str().to_owned();
        path.push(format!(".{table}"));
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    }

    fn switch_out(&mut self, i: usize, h: &WorkerSet) {
        if let Some((sa, _)) = self.tunnels[i].pending_out.take() {
            h.send(Command::SetOutbound {
                tunnel: self.tunnels[i].index,
                sa,
                selectors: vec![],
            });
        }
    }

    fn install(&mut self, i: usize, c: &ChildSa, h: &WorkerSet, now: f64) -> String {
        let t = &self.tunnels[i];
        let Some(suite) = suite_of(c) else {
            return format!("CHILD_SA with an unsupported transform {}", c.encryption);
        };
        let peer = t.cfg.peer_addr;
        let mk = |dir: Direction, spi: u32, ek: &[u8], ik: &[u8], src: IpAddr, dst: IpAddr| {
            let mut s = SaConfig::new(
                format!(
                    "{}-{}-{spi:08x}",
                    t.name,
                    if dir == Direction::Out { "out" } else { "in" }
                ),
                dir,
                spi,
                suite,
                ek.to_vec(),
                ik.to_vec(),
                src,
                dst,
            );
            s.nat_t = c.nat_t;
            if c.nat_t {
                s.natt_sport = 4500;
                s.natt_dport = if t.peer_port == 500 {
                    4500
                } else {
                    t.peer_port
                };
                if dir == Direction::In {
                    std::mem::swap(&mut s.natt_sport, &mut s.natt_dport);
                }
            }
            s.replay_window = t.replay_window.clamp(64, 2048);
            s
        };
        let ic = mk(
            Direction::In,
            c.spi_in,
            &c.enc_in,
            &c.int_in,
            peer,
            t.outside,
        );
        let oc = mk(
            Direction::Out,
            c.spi_out,
            &c.enc_out,
            &c.int_out,
            t.outside,
            peer,
        );
        if let Some(p) = &self.export_keys {
            let lines = format!(
                "{}\n{}\n",
                crate::tunnel_log::esp_sa_line(&ic),
                crate::tunnel_log::esp_sa_line(&oc)
            );
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()));
        }
        let mut seed = [0u8; 32];
        fill(&mut seed);
        let (Ok(mut inb), Ok(out)) = (
            InboundSa::new(ic, self.backend),
            OutboundSa::new(oc, self.backend, &seed),
        ) else {
            return "CHILD_SA keys rejected by the crypto backend".into();
        };
        // Only what the CHILD_SA's selectors allow comes out of it (RFC 4301 section 5.2).
        inb.policy = Some(engine::sa::InnerPolicy {
            src: vec![(c.remote_ts.start, c.remote_ts.end)],
            dst: vec![(c.local_ts.start, c.local_ts.end)],
        });
        let index = t.index;
        h.send(Command::AddInbound {
            tunnel: index,
            sa: Box::new(inb),
        });
        if c.switch_now {
            h.send(Command::SetOutbound {
                tunnel: index,
                sa: Box::new(out),
                selectors: vec![],
            });
        } else {
            self.switch_out(i, h);
            self.tunnels[i].pending_out = Some((Box::new(out), now + 2.0));
        }
        h.send(Command::SetTunnelState {
            tunnel: index,
            up: true,
        });
        // The old inbound SA stays until its DELETE exchange ends (ChildDown).
        self.tunnels[i].installed.push(c.spi_in);
        self.spi_set(c.spi_in, true);
        format!(
            "CHILD_SA established: ESP {}{} in {:#010x} out {:#010x}{}",
            c.encryption,
            c.integrity
                .as_deref()
                .map(|i| format!("/{i}"))
                .unwrap_or_default(),
            c.spi_in,
            c.spi_out,
            if c.nat_t {
                ", UDP-encapsulated (NAT-T)"
            } else {
                ""
            }
        )
    }

    fn teardown(&mut self, i: usize, h: &WorkerSet) {
        for spi in std::mem::take(&mut self.tunnels[i].installed) {
            self.spi_set(spi, false);
            self.tunnels[i].installed.push(spi);
        }
        let t = &mut self.tunnels[i];
        if !t.installed.is_empty() || t.up {
            h.send(Command::DelTunnel { tunnel: t.index });
        }
        t.installed.clear();
        t.up = false;
        t.dpd = None;
        t.pending_out = None;
        t.child_rekey_at = None;
        t.ike_rekey_at = None;
    }

    fn timers(&mut self, i: usize, now: f64, h: &WorkerSet, logs: &mut Vec<LogLine>) {
        let idx = self.tunnels[i].index;
        // Startup action `start` (and `restart` after DPD): initiate, retry until it works.
        if let Some(at) = self.tunnels[i].next_start
            && now >= at
            && self.tunnels[i].peer.is_some()
        {
            self.tunnels[i].next_start = None;
            self.tunnels[i].peer_port = 500;
            // IKEv2 unless the tunnel allows only IKEv1.
            let t = &self.tunnels[i];
            let version = if t.v2 { 2 } else { 1 };
            let life = Lifetimes {
                phase1_s: t.p1_life,
                phase2_s: t.p2_life,
            };
            match Sa::initiate(version, t.cfg.clone(), life, now, &mut fill) {
                Ok((mut sa, out)) => {
                    sa.set_spi_taken(self.spi_taken());
                    self.tunnels[i].sa = Some(sa);
                    let what = if version == 2 {
                        "Initiating IKE_SA_INIT"
                    } else {
                        "Initiating IKEv1 Main Mode"
                    };
                    logs.push((
                        idx,
                        self.states(i, false),
                        format!("{what} (startup action start, or DPD restart)"),
                    ));
                    self.apply(i, out, now, h, logs);
                }
                Err(e) => logs.push((idx, self.states(i, false), format!("cannot initiate: {e}"))),
            }
        }
        if self.tunnels[i]
            .pending_out
            .as_ref()
            .is_some_and(|p| now >= p.1)
        {
            self.switch_out(i, h);
        }
        // Half-open IKE SAs (the peer stopped after IKE_SA_INIT) go after 30 s.
        let before = self.tunnels[i].pending.len();
        let mut stale = vec![];
        self.tunnels[i].pending.retain(|(s, from)| {
            let keep = now - s.last_rx() < HALF_OPEN_S;
            if !keep {
                stale.push(from.ip());
            }
            keep
        });
        if self.tunnels[i].pending.len() < before {
            for peer in stale {
                logs.push((
                    idx,
                    self.states(i, self.tunnels[i].up),
                    format!(
                        "AWS tunnel Timeout: deleting un-established Phase 1 IKE_SA with cgw: {peer}"
                    ),
                ));
            }
        }
        // NAT keepalives while UDP-encapsulated (RFC 3948 section 2.3).
        let nat = self.tunnels[i].up && self.tunnels[i].sa.as_ref().is_some_and(Sa::nat_detected);
        if nat && now - self.tunnels[i].last_keepalive >= KEEPALIVE_S {
            self.tunnels[i].last_keepalive = now;
            let t = &self.tunnels[i];
            if let (Some((_, s4500)), Some(peer)) =
                (self.socks.get(&t.outside), t.peer.or(Some(t.cfg.peer_addr)))
            {
                let port = if t.peer_port == 500 {
                    4500
                } else {
                    t.peer_port
                };
                let _ = s4500.send_to(&[0xff], SocketAddr::new(peer, port));
            }
        }
        // Hard lifetime: a CHILD_SA that could not be rekeyed in time is deleted (the old SA
        // was kept and used until now).
        if self.tunnels[i].up
            && now - self.tunnels[i].child_since > f64::from(self.tunnels[i].p2_life)
        {
            logs.push((idx, self.states(i, false),
                "CHILD_SA reached its hard lifetime without a successful rekey: IKE SA and CHILD_SA deleted, tunnel DOWN".into(),
            ));
            let out = self.tunnels[i]
                .sa
                .as_mut()
                .map(|s| s.delete(&mut fill))
                .unwrap_or_default();
            self.apply(i, out, now, h, logs);
            self.teardown(i, h);
        }
        // Rekeys: CHILD_SA at lifetime - margin - fuzz, IKE SA likewise (AWS options).
        let (ike_due, child_due) = (self.tunnels[i].ike_rekey_at, self.tunnels[i].child_rekey_at);
        let seen = self.tunnels[i].sa.as_ref().map_or(0, Sa::ike_rekeys);
        if let Some(sa) = &self.tunnels[i].sa {
            let (initiator, collisions, dropped) = (sa.initiator(), sa.collisions(), sa.dropped());
            let t = &mut self.tunnels[i];
            t.ike_dropped += dropped.saturating_sub(t.ike_dropped_seen);
            t.ike_dropped_seen = dropped;
            // The side that made the new IKE SA is its initiator.
            t.rekeys[0][usize::from(!initiator)] +=
                u64::from(seen.saturating_sub(t.ike_rekeys_seen));
            t.collisions += u64::from(collisions.saturating_sub(t.collisions_seen));
            t.collisions_seen = collisions;
        }
        if seen != self.tunnels[i].ike_rekeys_seen {
            self.export_ike_keys(i);
            // The IKE SA was rekeyed (by either side): the timer starts again.
            let t = &mut self.tunnels[i];
            t.ike_rekeys_seen = seen;
            let life =
                t.sa.as_ref()
                    .map_or(t.p1_life, |s| s.p1_lifetime(t.p1_life));
            t.ike_rekey_at = Some(now + draw(life, t.margin, t.fuzz));
        } else if ike_due.is_some_and(|d| now >= d) {
            let out = self.tunnels[i]
                .sa
                .as_mut()
                .map(|s| s.rekey_ike(now, &mut fill))
                .unwrap_or_default();
            // Sent, or busy with another exchange: look again in a second.
            self.tunnels[i].ike_rekey_at = Some(now + 1.0);
            self.apply(i, out, now, h, logs);
        } else if child_due.is_some_and(|d| now >= d) {
            let cur = self.tunnels[i].installed.last().copied();
            let out = match (self.tunnels[i].sa.as_mut(), cur) {
                (Some(s), Some(spi)) => s.rekey_child(spi, now, &mut fill),
                _ => vec![],
            };
            // A failed rekey keeps the old SA and retries; success resets the timer.
            self.tunnels[i].child_rekey_at = Some(now + if out.is_empty() { 1.0 } else { 10.0 });
            self.apply(i, out, now, h, logs);
        }
        let due = self.tunnels[i].sa.as_ref().and_then(Sa::poll_timeout);
        if due.is_some_and(|d| now >= d) {
            let out = self.tunnels[i]
                .sa
                .as_mut()
                .map(|s| s.handle_timeout(now, &mut fill))
                .unwrap_or_default();
            self.apply(i, out, now, h, logs);
        }
        let step = self.tunnels[i].dpd.as_mut().map(|d| d.poll(now));
        match step {
            Some(DpdStep::SendCheck(_)) => {
                let out = self.tunnels[i]
                    .sa
                    .as_mut()
                    .map(|s| s.send_dpd(now, &mut fill))
                    .unwrap_or_default();
                self.apply(i, out, now, h, logs);
            }
            Some(DpdStep::Dead { retransmits }) => {
                let action = self.tunnels[i].dpd_action;
                self.tunnels[i].dpd_timeouts += 1;
                // With action none the SAs stay: the record keeps their states.
                // The AWS wording differs by version (log catalogue 2.1 / 2.2).
                let line = if self.tunnels[i]
                    .sa
                    .as_ref()
                    .is_some_and(|s| s.version() == 1)
                {
                    "Peer is not responsive - Declaring peer dead".to_string()
                } else {
                    format!("AWS tunnel DPD timed out after {retransmits} retransmits")
                };
                logs.push((idx, self.states(i, action == DpdAction::None), line));
                self.tunnels[i].dpd = None;
                match action {
                    DpdAction::None => {}
                    DpdAction::Clear => {
                        self.teardown(i, h);
                        self.tunnels[i].sa = None;
                        logs.push((
                            idx,
                            self.states(i, false),
                            "DPD action clear: SAs deleted, tunnel DOWN".into(),
                        ));
                    }
                    DpdAction::Restart => {
                        self.teardown(i, h);
                        self.tunnels[i].sa = None;
                        self.tunnels[i].next_start = Some(now);
                        self.tunnels[i].restarting = true;
                        logs.push((
                            idx,
                            self.states(i, false),
                            "DPD action restart: starting a new IKE SA".into(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}
