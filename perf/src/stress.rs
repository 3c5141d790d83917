//! `perf stress --dut ADDR`: many emulated customer gateways against a device under test
//! (a gateway we did not necessarily build: `espd run`, strongSwan, ...).
//!
//! Each emulated gateway brings up an IKEv2 tunnel (PSK, the AWS algorithm names) from its
//! own outside address (`--local`, one per tunnel, or fewer addresses each carrying several
//! IKE SAs) to the DUT, with the `ike` crate's initiator over plain UDP sockets; UDP
//! encapsulation is forced (NAT-T), so ESP goes out of the same port-4500 socket as IKE and
//! needs no raw socket. Then it sends UDP packets through every tunnel, round robin, at
//! `--rate` (or searches the NDR through the DUT with `--ndr`): each carries the tunnel's
//! number, a sequence number and a timestamp, and goes to a sink of ours on the DUT's
//! inside network (`--sink ADDR:PORT`, in network namespace `--sink-netns` if given), which
//! counts them per tunnel and measures latency. The IKE SAs stay alive meanwhile: the DUT's
//! rekeys and liveness checks are answered, and a rekeyed CHILD_SA's new outbound SA takes
//! over as RFC 7296 section 2.8 says.
//!
//! Reported: tunnels up and the setup rate, setup failures by reason, rekeys survived, and
//! per-tunnel sent / received / lost, with latency percentiles.

use crate::ndr;
use engine::crypto::{Backend, Encryption, Integrity, Suite};
use engine::pkt::PacketBuf;
use engine::sa::{Direction, OutboundSa, SaConfig};
use engine::wire;
use ike::msg::TrafficSelector;
use ike::session::{Config as IkeConfig, IkeSa, Output};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `perf stress` was asked to do.
#[derive(Clone, Debug)]
pub struct Opts {
    pub dut: Ipv4Addr,
    /// Outside addresses of the emulated gateways (tunnel i uses `locals[i % len]`).
    pub locals: Vec<Ipv4Addr>,
    pub tunnels: usize,
    pub psk: String,
    pub p1_enc: Vec<String>,
    pub p1_integ: Vec<String>,
    pub p1_dh: Vec<u16>,
    /// PFS groups accepted when the DUT rekeys a CHILD_SA.
    pub p2_dh: Vec<u16>,
    pub p2_enc: Vec<String>,
    pub p2_integ: Vec<String>,
    /// The emulated gateways' inside network (traffic selectors and source addresses).
    pub cgw_net: (Ipv4Addr, u8),
    /// The DUT's inside network (traffic selectors); the sink is in it.
    pub dut_net: (Ipv4Addr, u8),
    pub sink: SocketAddrV4,
    pub sink_netns: Option<String>,
    /// Packets per second over all tunnels (None: as fast as possible).
    pub rate: Option<f64>,
    pub duration: f64,
    /// Inner IP packet bytes.
    pub size: usize,
    /// IKE SAs being set up at once.
    pub concurrency: usize,
    /// Seconds to wait for all tunnels.
    pub setup_timeout: f64,
    pub backend: Backend,
    pub ndr: Option<ndr::Opts>,
}

const MAGIC: u32 = 0x4553_5053; // "ESPS"
/// Learning frames (RFC 2544 section 23): one per tunnel before the traffic, so that the DUT
/// resolves the sink's address first; the sink does not count them.
const LEARN: u32 = 0x4553_504c; // "ESPL"
const HDR: usize = 28;
const BODY: usize = 24;

/// The sink on the DUT's inside network: packets and latency per tunnel.
struct Sink {
    received: Arc<Vec<AtomicU64>>,
    foreign: Arc<AtomicU64>,
    /// Datagrams the kernel dropped at the sink's socket (read when the sink ends).
    socket_dropped: Arc<AtomicU64>,
    latency: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Sink {
    fn start(o: &Opts, epoch: Instant) -> Result<Sink, String> {
        let received: Arc<Vec<AtomicU64>> =
            Arc::new((0..o.tunnels).map(|_| AtomicU64::new(0)).collect());
        let foreign = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(
            hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, f, l, s) = (
            received.clone(),
            foreign.clone(),
            latency.clone(),
            stop.clone(),
        );
        let socket_dropped = Arc::new(AtomicU64::new(0));
        let d = socket_dropped.clone();
        let (addr, netns) = (o.sink, o.sink_netns.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let ready = (|| {
                if let Some(n) = &netns {
                    enter_netns(n)?;
                }
                let sock = UdpSocket::bind(addr).map_err(|e| format!("--sink {addr}: {e}"))?;
                big_rcvbuf(&sock);
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(sock)
            })();
            let sock = match ready {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let mut buf = [0u8; 2048];
            let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .expect("bounds");
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else {
                    continue;
                };
                let now = epoch.elapsed().as_nanos() as u64;
                let b = &buf[..n];
                if n >= BODY && wire::be32(b, 0) == LEARN {
                    continue;
                }
                if n < BODY || wire::be32(b, 0) != MAGIC {
                    f.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t = wire::be32(b, 4) as usize;
                let ts = u64::from_be_bytes(b[16..24].try_into().expect("8 bytes"));
                match r.get(t) {
                    Some(c) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(now.saturating_sub(ts).max(1));
                    }
                    None => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if hist.len().is_multiple_of(4096) {
                    let _ = l.lock().map(|mut h| h.add(&hist));
                    hist.reset();
                }
            }
            let _ = l.lock().map(|mut h| h.add(&hist));
            // What the kernel dropped at our socket (a full receive buffer): loss of the
            // tester, not of the DUT.
            d.store(socket_drops(addr.port()), Ordering::Relaxed);
            Ok(())
        });
        rx.recv()
            .map_err(|_| "the sink thread ended".to_string())??;
        Ok(Sink {
            received,
            foreign,
            socket_dropped,
            latency,
            stop,
            thread: Some(thread),
        })
    }

    fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A receive buffer of 16 MiB (SO_RCVBUFFORCE as root, else as much as SO_RCVBUF gets).
fn big_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 16 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int option value and its size.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// The `drops` column of the calling thread's UDP socket bound to `port`
/// (/proc/thread-self/net/udp: the thread's network namespace).
fn socket_drops(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default();
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&want))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Moves the calling thread into network namespace `name` (`ip netns` names, under
/// /run/netns).
fn enter_netns(name: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let f = std::fs::File::open(&path).map_err(|e| format!("--sink-netns {path}: {e}"))?;
    // SAFETY: setns on a namespace file we hold open; it changes only this thread's
    // network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(format!(
            "--sink-netns {name}: setns: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn suite_of(enc: &str, integ: Option<&str>) -> Option<Suite> {
    let e = match enc {
        "AES128" => Encryption::Aes128Cbc,
        "AES256" => Encryption::Aes256Cbc,
        "AES128-GCM-16" => Encryption::Aes128Gcm16,
        "AES256-GCM-16" => Encryption::Aes256Gcm16,
        _ => return None,
    };
    let i = match integ {
        None => Integrity::None,
        Some("SHA1") => Integrity::Sha1_96,
        Some("SHA2-256") => Integrity::Sha256_128,
        Some("SHA2-384") => Integrity::Sha384_192,
        Some("SHA2-512") => Integrity::Sha512_256,
        Some(_) => return None,
    };
    Suite::new(e, i).ok()
}

fn ts(net: (Ipv4Addr, u8)) -> TrafficSelector {
    let base = u32::from(net.0);
    let mask = if net.1 == 0 {
        0
    } else {
        u32::MAX << (32 - net.1)
    };
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start: IpAddr::V4(Ipv4Addr::from(base & mask)),
        end: IpAddr::V4(Ipv4Addr::from((base & mask) | !mask)),
    }
}

/// One emulated gateway's tunnel.
struct Tunnel {
    local: Ipv4Addr,
    /// Inner source address (in the gateways' inside network).
    src: Ipv4Addr,
    sa: Option<IkeSa>,
    started: Option<f64>,
    up_at: Option<f64>,
    out: Option<OutboundSa>,
    /// A CHILD_SA the DUT rekeyed: used once the old one's DELETE arrives.
    pending: Option<OutboundSa>,
    rekeys: u32,
    failed: Option<String>,
    closed_after_up: Option<String>,
    sent: u64,
    seq: u64,
}

struct Rig {
    o: Opts,
    epoch: Instant,
    socks: HashMap<Ipv4Addr, (UdpSocket, UdpSocket)>,
    by_spi: HashMap<u64, usize>,
    tunnels: Vec<Tunnel>,
    next_rr: usize,
    buf: PacketBuf,
    send_errors: u64,
    esp_in: u64,
}

fn fill(b: &mut [u8]) {
    let _ = getrandom_fill(b);
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

impl Rig {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn ike_cfg(&self, t: &Tunnel) -> IkeConfig {
        IkeConfig {
            local_addr: IpAddr::V4(t.local),
            peer_addr: IpAddr::V4(self.o.dut),
            psk: zeroize::Zeroizing::new(self.o.psk.as_bytes().to_vec()),
            p1_enc: self.o.p1_enc.clone(),
            p1_integ: self.o.p1_integ.clone(),
            p1_dh: self.o.p1_dh.clone(),
            p2_enc: self.o.p2_enc.clone(),
            p2_integ: self.o.p2_integ.clone(),
            p2_dh: self.o.p2_dh.clone(),
            local_ts: ts(self.o.cgw_net),
            remote_ts: ts(self.o.dut_net),
            force_nat_t: true,
            retransmits: 4,
            retransmit_base_s: 1.0,
        }
    }

    fn start_tunnel(&mut self, i: usize) {
        let now = self.now();
        let cfg = self.ike_cfg(&self.tunnels[i]);
        match IkeSa::initiate(cfg, now, &mut fill) {
            Ok((sa, out)) => {
                if let Some(Output::Send { data, .. }) = out.first()
                    && data.len() >= 8
                {
                    let spi = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
                    self.by_spi.insert(spi, i);
                }
                self.tunnels[i].sa = Some(sa);
                self.tunnels[i].started = Some(now);
                self.apply(i, out);
            }
            Err(e) => self.tunnels[i].failed = Some(e),
        }
    }

    fn send_ike(&mut self, local: Ipv4Addr, data: &[u8], nat_t: bool) {
        let Some((s500, s4500)) = self.socks.get(&local) else {
            return;
        };
        let r = if nat_t {
            let mut d = vec![0u8; 4];
            d.extend_from_slice(data);
            s4500.send_to(&d, SocketAddrV4::new(self.o.dut, 4500))
        } else {
            s500.send_to(data, SocketAddrV4::new(self.o.dut, 500))
        };
        if r.is_err() {
            self.send_errors += 1;
        }
    }

    fn outbound(&self, i: usize, c: &ike::session::ChildSa) -> Result<OutboundSa, String> {
        let suite = suite_of(&c.encryption, c.integrity.as_deref())
            .ok_or_else(|| format!("unsupported ESP transform {}", c.encryption))?;
        let t = &self.tunnels[i];
        let mut cfg = SaConfig::new(
            format!("stress-{i}"),
            Direction::Out,
            c.spi_out,
            suite,
            c.enc_out.to_vec(),
            c.int_out.to_vec(),
            IpAddr::V4(t.local),
            IpAddr::V4(self.o.dut),
        );
        cfg.nat_t = true;
        cfg.natt_sport = 4500;
        cfg.natt_dport = 4500;
        let mut seed = [0u8; 32];
        fill(&mut seed);
        OutboundSa::new(cfg, self.o.backend, &seed).map_err(|e| e.to_string())
    }

    fn apply(&mut self, i: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send { data, nat_t } => {
                    let local = self.tunnels[i].local;
                    self.send_ike(local, &data, nat_t);
                }
                Output::ChildUp(c) => match self.outbound(i, &c) {
                    Ok(sa) => {
                        let now = self.now();
                        let t = &mut self.tunnels[i];
                        if t.out.is_none() {
                            t.out = Some(sa);
                            t.up_at = Some(now);
                        } else {
                            t.rekeys += 1;
                            if c.switch_now {
                                t.out = Some(sa);
                            } else {
                                t.pending = Some(sa);
                            }
                        }
                    }
                    Err(e) => self.tunnels[i].failed = Some(e),
                },
                Output::ChildDown { .. } => {
                    let t = &mut self.tunnels[i];
                    if let Some(p) = t.pending.take() {
                        t.out = Some(p);
                    }
                }
                Output::Closed(why) => {
                    let t = &mut self.tunnels[i];
                    if t.up_at.is_some() {
                        t.closed_after_up = Some(why);
                    } else {
                        t.failed = Some(why);
                    }
                    t.out = None;
                }
                Output::IkeUp | Output::Log(_) => {}
            }
        }
    }

    /// Reads every socket, hands IKE to its SA, runs due timers.
    fn pump(&mut self) {
        let mut buf = [0u8; 65536];
        let locals: Vec<Ipv4Addr> = self.socks.keys().copied().collect();
        for l in locals {
            for port in [500u16, 4500] {
                loop {
                    let r = {
                        let (s500, s4500) = &self.socks[&l];
                        let s = if port == 500 { s500 } else { s4500 };
                        s.recv_from(&mut buf)
                    };
                    let Ok((n, from)) = r else {
                        break;
                    };
                    if from.ip() != IpAddr::V4(self.o.dut) {
                        continue;
                    }
                    let mut d = &buf[..n];
                    if port == 4500 {
                        if n < 4 || d[..4] != [0, 0, 0, 0] {
                            // ESP from the DUT (we send one way), or a keepalive.
                            self.esp_in += 1;
                            continue;
                        }
                        d = &d[4..];
                    }
                    if d.len() < 28 {
                        continue;
                    }
                    let spi_i = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
                    let spi_r = u64::from_be_bytes(d[8..16].try_into().expect("8 bytes"));
                    let i = match self.by_spi.get(&spi_i) {
                        Some(&i) => i,
                        None => {
                            // A rekeyed IKE SA has new SPIs (the rekey's initiator chose
                            // SPIi): find the tunnel whose SA owns them, once.
                            let Some(i) = self.tunnels.iter().position(|t| {
                                t.sa.as_ref().is_some_and(|sa| sa.owns(spi_i, spi_r))
                            }) else {
                                continue;
                            };
                            self.by_spi.insert(spi_i, i);
                            i
                        }
                    };
                    let now = self.now();
                    let out = match self.tunnels[i].sa.as_mut() {
                        Some(sa) => sa.handle(d, now, &mut fill),
                        None => continue,
                    };
                    self.apply(i, out);
                }
            }
        }
        let now = self.now();
        for i in 0..self.tunnels.len() {
            let due = self.tunnels[i].sa.as_ref().and_then(IkeSa::poll_timeout);
            if due.is_some_and(|d| now >= d) {
                let out = self.tunnels[i]
                    .sa
                    .as_mut()
                    .map(|s| s.handle_timeout(now))
                    .unwrap_or_default();
                self.apply(i, out);
            }
        }
    }

    /// Brings the tunnels up, `concurrency` at a time. Returns the seconds it took.
    fn setup(&mut self, progress: bool) -> f64 {
        let t0 = self.now();
        let mut next = 0;
        loop {
            let pending = self
                .tunnels
                .iter()
                .filter(|t| t.started.is_some() && t.up_at.is_none() && t.failed.is_none())
                .count();
            let mut room = self.o.concurrency.saturating_sub(pending);
            while room > 0 && next < self.tunnels.len() {
                self.start_tunnel(next);
                next += 1;
                room -= 1;
            }
            self.pump();
            let done = self
                .tunnels
                .iter()
                .filter(|t| t.up_at.is_some() || t.failed.is_some())
                .count();
            if done == self.tunnels.len() || self.now() - t0 > self.o.setup_timeout {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let took = self
            .tunnels
            .iter()
            .filter_map(|t| t.up_at)
            .fold(t0, f64::max)
            - t0;
        if progress {
            let up = self.tunnels.iter().filter(|t| t.up_at.is_some()).count();
            eprintln!("  {up}/{} tunnels up in {took:.2} s", self.tunnels.len());
        }
        took
    }

    /// One learning frame into every tunnel that is up, then a pause for the DUT to
    /// resolve where they go.
    fn learn(&mut self) {
        for i in 0..self.tunnels.len() {
            if self.tunnels[i].out.is_some() {
                self.send_frame(i, LEARN);
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            self.pump();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One packet into tunnel i.
    fn send_one(&mut self, i: usize) -> bool {
        self.send_frame(i, MAGIC)
    }

    fn send_frame(&mut self, i: usize, magic: u32) -> bool {
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        let size = self.o.size;
        let (dst, dport) = (*self.o.sink.ip(), self.o.sink.port());
        let t = &mut self.tunnels[i];
        let Some(sa) = t.out.as_mut() else {
            return false;
        };
        let b = &mut self.buf;
        b.clear();
        let Some(p) = b.push_back(size) else {
            return false;
        };
        wire::write_ipv4_header(
            p,
            size as u16,
            t.seq as u16,
            false,
            64,
            wire::proto::UDP,
            t.src,
            dst,
        );
        wire::put16(p, 20, 40000);
        wire::put16(p, 22, dport);
        wire::put16(p, 24, (size - 20) as u16);
        wire::put16(p, 26, 0);
        p[HDR..HDR + 4].copy_from_slice(&magic.to_be_bytes());
        p[HDR + 4..HDR + 8].copy_from_slice(&(i as u32).to_be_bytes());
        p[HDR + 8..HDR + 16].copy_from_slice(&t.seq.to_be_bytes());
        p[HDR + 16..HDR + 24].copy_from_slice(&now_ns.to_be_bytes());
        p[HDR + BODY..].fill(0);
        if engine::esp::encapsulate(sa, b).is_err() {
            return false;
        }
        if magic == MAGIC {
            t.seq += 1;
        }
        // The outer IPv4 and UDP headers are the kernel's: send the ESP from port 4500.
        let esp = &b.bytes()[HDR..];
        let Some((_, s4500)) = self.socks.get(&t.local) else {
            return false;
        };
        if s4500
            .send_to(esp, SocketAddrV4::new(self.o.dut, 4500))
            .is_ok()
        {
            if magic == MAGIC {
                t.sent += 1;
            }
            true
        } else {
            self.send_errors += 1;
            false
        }
    }

    /// Traffic at `rate` (None: as fast as possible) for `secs`, IKE served meanwhile.
    /// Returns the packets sent.
    fn traffic(&mut self, rate: Option<f64>, secs: f64) -> u64 {
        let up: Vec<usize> = (0..self.tunnels.len())
            .filter(|i| self.tunnels[*i].out.is_some())
            .collect();
        if up.is_empty() {
            std::thread::sleep(Duration::from_secs_f64(secs));
            return 0;
        }
        let t0 = self.now();
        let mut last = t0;
        let mut tokens = 0.0;
        let mut sent = 0u64;
        let mut last_pump = t0;
        loop {
            let now = self.now();
            if now - t0 >= secs {
                break;
            }
            let n = match rate {
                Some(r) => {
                    tokens += (now - last) * r;
                    last = now;
                    let n = tokens.min(256.0) as usize;
                    tokens -= n as f64;
                    n
                }
                None => 64,
            };
            for _ in 0..n {
                let i = up[self.next_rr % up.len()];
                self.next_rr += 1;
                if self.send_one(i) {
                    sent += 1;
                }
            }
            if now - last_pump > 0.01 {
                self.pump();
                last_pump = now;
            }
            if n == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        sent
    }
}

/// Runs `perf stress`; the result object.
pub fn run(o: Opts, progress: bool) -> Result<Value, String> {
    if o.size < HDR + BODY || o.size > 1400 {
        return Err(format!(
            "--packet-size {}: allowed: {}..=1400",
            o.size,
            HDR + BODY
        ));
    }
    let epoch = Instant::now();
    let mut sink = Sink::start(&o, epoch)?;
    let mut socks = HashMap::new();
    for l in &o.locals {
        let b = |port: u16| {
            let s = UdpSocket::bind(SocketAddrV4::new(*l, port))
                .map_err(|e| format!("--local {l}: UDP port {port}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(s)
        };
        socks.insert(*l, (b(500)?, b(4500)?));
    }
    let base = u32::from(o.cgw_net.0);
    let tunnels = (0..o.tunnels)
        .map(|i| Tunnel {
            local: o.locals[i % o.locals.len()],
            src: Ipv4Addr::from(base + 256 + i as u32),
            sa: None,
            started: None,
            up_at: None,
            out: None,
            pending: None,
            rekeys: 0,
            failed: None,
            closed_after_up: None,
            sent: 0,
            seq: 0,
        })
        .collect();
    let mut rig = Rig {
        o: o.clone(),
        epoch,
        socks,
        by_spi: HashMap::new(),
        tunnels,
        next_rr: 0,
        buf: PacketBuf::with_capacity(2048),
        send_errors: 0,
        esp_in: 0,
    };
    if progress {
        eprintln!(
            "perf stress: {} tunnel(s) from {} address(es) to {}, {} + {}, sink {}{}",
            o.tunnels,
            o.locals.len(),
            o.dut,
            o.p1_enc.join("/"),
            o.p2_enc.join("/"),
            o.sink,
            o.sink_netns
                .as_ref()
                .map_or(String::new(), |n| format!(" (netns {n})"))
        );
    }
    let setup_s = rig.setup(progress);
    rig.learn();
    let up = rig.tunnels.iter().filter(|t| t.up_at.is_some()).count();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for t in &rig.tunnels {
        if let Some(f) = &t.failed {
            *failures.entry(f.clone()).or_default() += 1;
        } else if t.up_at.is_none() {
            *failures
                .entry("not up within --setup-timeout".into())
                .or_default() += 1;
        }
    }
    let mut v = json!({
        "mode": "stress",
        "dut": o.dut.to_string(),
        "tunnels_requested": o.tunnels,
        "tunnels_up": up,
        "local_addresses": o.locals.len(),
        "setup_s": setup_s,
        "setup_rate_per_s": if setup_s > 0.0 { up as f64 / setup_s } else { 0.0 },
        "setup_failures": failures,
        "packet_size": o.size.to_string(),
        "transform": o.p2_enc.first().cloned().unwrap_or_default(),
    });
    let drain = |rig: &mut Rig, sink: &Sink, sent_total: u64| {
        // Wait until the sink stops counting (or has everything).
        let mut last = (sink.total(), Instant::now());
        while sink.total() < sent_total && last.1.elapsed() < Duration::from_millis(300) {
            rig.pump();
            std::thread::sleep(Duration::from_millis(5));
            let n = sink.total();
            if n != last.0 {
                last = (n, Instant::now());
            }
        }
    };
    if let Some(no) = &o.ndr {
        let mut trial = |rate: Option<f64>, secs: f64| {
            let before_rx = sink.total();
            let before_tx: u64 = rig.tunnels.iter().map(|t| t.sent).sum();
            let t0 = Instant::now();
            rig.traffic(rate, secs);
            let dur = t0.elapsed().as_secs_f64();
            let tx = rig.tunnels.iter().map(|t| t.sent).sum::<u64>() - before_tx;
            drain(&mut rig, &sink, before_rx + tx);
            let rx = sink.total() - before_rx;
            // Short of the rate by more than 2 %: the tester's limit, counted as loss.
            let want = rate.map_or(tx, |r| (r * dur) as u64);
            let short = if (tx as f64) < 0.98 * want as f64 {
                want - tx
            } else {
                0
            };
            ndr::Outcome {
                duration_s: dur,
                tx_packets: tx + short,
                rx_packets: rx.min(tx),
                rx_bytes: rx.min(tx) * o.size as u64,
                latency_us: Value::Null,
                tester_short: short,
            }
        };
        let mut prog = |n: usize, t: &ndr::Trial| {
            if progress {
                eprintln!(
                    "  trial {n:2} {:<7} {:>13} for {:.1} s: tx {} rx {} loss {:.4}%{}",
                    t.kind,
                    t.rate_pps
                        .map_or("max".into(), |r| format!("{:.4} Mpps", r / 1e6)),
                    t.out.duration_s,
                    t.out.tx_packets,
                    t.out.rx_packets,
                    100.0 * t.out.loss_ratio(),
                    if t.out.tester_short > 0 {
                        format!(" ({} not sent: the tester's limit)", t.out.tester_short)
                    } else {
                        String::new()
                    }
                );
            }
        };
        let found = ndr::search(no, &mut trial, &mut prog);
        let m = v.as_object_mut().expect("object");
        for (k, x) in found.json(no).as_object().cloned().unwrap_or_default() {
            m.insert(k, x);
        }
    } else {
        if progress {
            eprintln!(
                "  traffic: {} for {} s",
                o.rate
                    .map_or("as fast as possible".to_string(), |r| format!("{r} pps")),
                o.duration
            );
        }
        let sent = rig.traffic(o.rate, o.duration);
        drain(&mut rig, &sink, sent);
    }
    sink.finish();
    let per: Vec<Value> = rig
        .tunnels
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rx = sink.received[i].load(Ordering::Relaxed);
            json!({
                "tunnel": i, "local": t.local.to_string(), "up": t.up_at.is_some(),
                "setup_ms": match (t.started, t.up_at) { (Some(a), Some(b)) => Some((b - a) * 1e3), _ => None },
                "sent": t.sent, "received": rx, "lost": t.sent.saturating_sub(rx),
                "rekeys": t.rekeys, "closed_after_up": t.closed_after_up,
            })
        })
        .collect();
    let tx: u64 = rig.tunnels.iter().map(|t| t.sent).sum();
    let rx = sink.total();
    let h = sink.latency.lock().map(|h| h.clone()).ok();
    let m = v.as_object_mut().expect("object");
    m.insert("tx_packets".into(), tx.into());
    m.insert("rx_packets".into(), rx.into());
    m.insert(
        "loss_ratio".into(),
        if tx > 0 {
            (tx.saturating_sub(rx) as f64 / tx as f64).into()
        } else {
            0.0.into()
        },
    );
    m.insert(
        "tunnels_with_loss".into(),
        per.iter()
            .filter(|p| p["lost"].as_u64() > Some(0))
            .count()
            .into(),
    );
    m.insert(
        "rekeys_survived".into(),
        rig.tunnels
            .iter()
            .map(|t| u64::from(t.rekeys))
            .sum::<u64>()
            .into(),
    );
    m.insert(
        "closed_after_up".into(),
        rig.tunnels
            .iter()
            .filter(|t| t.closed_after_up.is_some())
            .count()
            .into(),
    );
    m.insert(
        "sink_foreign".into(),
        sink.foreign.load(Ordering::Relaxed).into(),
    );
    m.insert(
        "sink_socket_drops".into(),
        sink.socket_dropped.load(Ordering::Relaxed).into(),
    );
    m.insert("send_errors".into(), rig.send_errors.into());
    m.insert("esp_from_dut".into(), rig.esp_in.into());
    if let Some(h) = h {
        m.insert("latency_us".into(), crate::percentiles(&h));
    }
    m.insert("per_tunnel".into(), per.into());
    Ok(v)
}

/// Parses `a.b.c.d/n`.
pub fn net(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: not a.b.c.d/n"))?;
    let a: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?}: not an IPv4 address"))?;
    let l: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{s:?}: prefix length 0..=32"))?;
    Ok((a, l))
}

/// Expands `--local`: addresses and `a.b.c.d+N` (N consecutive addresses from a.b.c.d).
pub fn locals(s: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut v = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, n) = match part.split_once('+') {
            Some((a, n)) => (
                a,
                n.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=65536).contains(n))
                    .ok_or_else(|| format!("--local {part:?}: count 1..=65536"))?,
            ),
            None => (part, 1),
        };
        let a: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("--local {part:?}: not an IPv4 address"))?;
        for k in 0..n {
            v.push(Ipv4Addr::from(u32::from(a) + k));
        }
    }
    if v.is_empty() {
        return Err("--local: no address".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_and_networks() {
        assert_eq!(
            locals("192.0.2.10+3,192.0.2.50").unwrap(),
            ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.50"]
                .map(|a| a.parse::<Ipv4Addr>().unwrap())
        );
        assert!(locals("192.0.2.10+0").is_err());
        assert_eq!(
            net("10.2.0.0/16").unwrap(),
            (Ipv4Addr::new(10, 2, 0, 0), 16)
        );
        let t = ts((Ipv4Addr::new(10, 2, 3, 4), 16));
        assert_eq!(
            (t.start, t.end),
            (
                IpAddr::V4(Ipv4Addr::new(10, 2, 0, 0)),
                IpAddr::V4(Ipv4Addr::new(10, 2, 255, 255))
            )
        );
        assert!(suite_of("AES128-GCM-16", None).is_some());
        assert!(suite_of("AES256", Some("SHA2-256")).is_some());
        assert!(suite_of("3DES", None).is_none());
    }
}
