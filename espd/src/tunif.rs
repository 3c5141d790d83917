//! Tunnel interfaces of `espd run`: one TUN device per tunnel (`espd<index>`, the tunnel's
//! AWS-side inside address, /30, MTU 1399) so that the kernel, ping, tcpdump and a BGP
//! daemon reach the customer gateway's inside address through the tunnel, as on a
//! route-based VPN. Only the gateway's own traffic takes this path: the workers hand
//! decrypted packets for the inside address to a queue ([`engine::runtime::LocalQueue`]),
//! and this thread writes them into the tunnel's TUN device; what the kernel sends into a
//! device is encrypted on its tunnel (`Command::Transmit`). Transit traffic never comes
//! here.
//!
//! Contract: the devices are made before espd drops its capabilities ([`TunnelIfs::create`]);
//! the thread ([`TunnelIfs::spawn`]) never blocks for long (non-blocking reads, a 2 ms nap
//! when idle) and stops with the gateway. A device that cannot be made is a warning, not a
//! startup failure: transit traffic does not need it.

use afxdp::tun::Tun;
use engine::pkt::PacketBuf;
use engine::runtime::{Command, LocalQueue, Selector};
use engine::workers::WorkerSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// MTU of a tunnel interface: fits every AWS transform with NAT-T (shared/spec/mtu.md).
pub const MTU: u32 = 1399;
/// Packets the workers may queue for the tunnel interfaces.
pub const QUEUE: usize = 1024;

/// Counts of the tunnel interfaces (for `show counters` and the metrics).
#[derive(Debug, Default)]
pub struct TunIfStats {
    /// Packets the kernel sent into a device and we handed to the tunnel.
    pub to_tunnel: AtomicU64,
    /// Packets from the tunnel written into a device.
    pub to_kernel: AtomicU64,
    /// Packets dropped: not IPv4, or a device write failed.
    pub dropped: AtomicU64,
}

/// The dynamic routes installed: (prefix, tunnel indexes), shared with `espd show routes`.
pub type RouteList = Arc<std::sync::Mutex<Vec<(String, Vec<u32>)>>>;

/// The devices, by tunnel index.
pub struct TunnelIfs {
    devs: Vec<(u32, Tun)>,
    pub queue: LocalQueue,
    pub stats: Arc<TunIfStats>,
    /// Dynamic routing: the kernel table BGP's routes are read from (once a second) for the
    /// data plane, and the routes last installed.
    pub route_table: Option<u32>,
    routes: Vec<(Selector, Vec<u32>)>,
    /// The routes installed now, for `espd show routes`.
    pub installed: RouteList,
}

impl std::fmt::Debug for TunnelIfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelIfs({} devices)", self.devs.len())
    }
}

/// The device name of tunnel `index`.
pub fn name(index: u32) -> String {
    format!("espd{index}")
}

impl TunnelIfs {
    /// Makes a device for each (index, AWS-side inside address, prefix) and tells the
    /// workers the addresses are the gateway's own. Returns the devices and one warning per
    /// device that could not be made.
    pub fn create(tunnels: &[(u32, Ipv4Addr, u8)], h: &WorkerSet) -> (TunnelIfs, Vec<String>) {
        let mut devs = vec![];
        let mut warnings = vec![];
        for &(index, addr, prefix) in tunnels {
            match Tun::create(&name(index), addr, prefix, MTU) {
                Ok(t) => {
                    h.send(Command::SetLocalAddr {
                        tunnel: index,
                        addr: Some(addr),
                    });
                    devs.push((index, t));
                }
                Err(e) => warnings.push(format!(
                    "tunnel interface {} ({addr}/{prefix}): {e}; the tunnel carries transit traffic without it",
                    name(index)
                )),
            }
        }
        let ifs = TunnelIfs {
            devs,
            queue: Arc::new(crossbeam_queue::ArrayQueue::new(QUEUE)),
            stats: Arc::default(),
            route_table: None,
            routes: vec![],
            installed: Arc::default(),
        };
        (ifs, warnings)
    }

    /// The devices made (index, name).
    pub fn names(&self) -> Vec<(u32, String)> {
        self.devs
            .iter()
            .map(|(i, t)| (*i, t.name().to_string()))
            .collect()
    }

    /// Moves packets between the devices and the tunnels until `stop`; with a route table,
    /// follows it once a second.
    pub fn spawn(
        mut self,
        h: WorkerSet,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("espd-tunif".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut last = std::time::Instant::now() - std::time::Duration::from_secs(2);
                while !stop.load(Ordering::Relaxed) {
                    if self.route_table.is_some() && last.elapsed().as_millis() >= 1000 {
                        last = std::time::Instant::now();
                        self.sync_routes(&h);
                    }
                    if self.step(&h, &mut buf) == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            })
    }

    /// Reads the route table and, when it changed, installs its routes whose next hops are
    /// tunnel interfaces as the data plane's dynamic routes (ECMP over several).
    pub fn sync_routes(&mut self, h: &WorkerSet) {
        let Some(table) = self.route_table else {
            return;
        };
        let Ok(rs) = afxdp::routes::dump_table(table) else {
            return;
        };
        let mut routes: Vec<(Selector, Vec<u32>)> = rs
            .into_iter()
            .filter_map(|r| {
                let mut ts: Vec<u32> = r
                    .oifs
                    .iter()
                    .filter_map(|o| self.devs.iter().find(|(_, t)| t.ifindex() == *o))
                    .map(|(i, _)| *i)
                    .collect();
                ts.sort_unstable();
                ts.dedup();
                (!ts.is_empty()).then_some((
                    Selector {
                        addr: std::net::IpAddr::V4(r.prefix),
                        prefix: r.len,
                    },
                    ts,
                ))
            })
            .collect();
        routes.sort_by_key(|(s, t)| (s.addr, s.prefix, t.clone()));
        if routes == self.routes {
            return;
        }
        let shown: Vec<(String, Vec<u32>)> = routes
            .iter()
            .map(|(s, t)| (format!("{}/{}", s.addr, s.prefix), t.clone()))
            .collect();
        tracing::info!(
            "dynamic routes (BGP, table {table}): {}",
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown
                    .iter()
                    .map(|(p, t)| format!("{p} via tunnel(s) {t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        *self.installed.lock().unwrap_or_else(|e| e.into_inner()) = shown;
        h.send(Command::SetDynamicRoutes {
            routes: routes.clone(),
        });
        self.routes = routes;
    }

    /// One round: what the kernel sent into each device goes to its tunnel, what the
    /// workers queued goes into its device. Returns the packets moved.
    pub fn step(&self, h: &WorkerSet, buf: &mut [u8]) -> usize {
        let mut moved = 0;
        for (index, t) in &self.devs {
            // At most 64 a round per device: the others and the queue get their turn.
            for _ in 0..64 {
                let Ok(n) = t.recv(buf) else { break };
                moved += 1;
                if n < 20 || buf[0] >> 4 != 4 {
                    // IPv6 (router solicitations, MLD) and runts: the inside is IPv4.
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                h.send(Command::Transmit {
                    tunnel: *index,
                    packet: PacketBuf::from_slice(&buf[..n]),
                });
                self.stats.to_tunnel.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some((index, p)) = self.queue.pop() {
            moved += 1;
            let sent = self
                .devs
                .iter()
                .find(|(i, _)| *i == index)
                .is_some_and(|(_, t)| t.send(p.bytes()).is_ok());
            let c = if sent {
                &self.stats.to_kernel
            } else {
                &self.stats.dropped
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }
}
