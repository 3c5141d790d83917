//! AF_XDP packet I/O: [`XskPort`] implements [`PacketIo`] over one AF_XDP socket, so the
//! runtime and `perf` run on real interfaces unchanged.
//!
//! Contract: `rx_burst` takes up to `max` frames from the RX ring, strips Ethernet (IPv4 and
//! IPv6 only; other frames are counted `rx_non_ip` and returned), copies each IP packet into
//! a pool buffer and hands **every** frame back to the fill ring in the same call, whatever
//! happens to the packet. `tx_burst` writes each packet behind an Ethernet header (our MAC,
//! the next hop's MAC from the neighbour snapshot) into a free TX frame and kicks the kernel
//! once per burst when it asks (copy mode always does); a packet with no neighbour, no free
//! frame or too big for a frame is dropped and counted. Half the UMEM's frames receive, half
//! transmit. No allocation and no syscall per packet.

pub mod link;
pub mod neigh;
pub mod routes;
pub mod rtnl;
pub mod tun;
pub mod xsk;

use engine::io::PacketIo;
use engine::pkt::{BufPool, PacketBuf};
use neigh::{Mac, NeighShared, NeighView};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use xsk::{FRAME_SIZE, XdpDesc, Xsk, XskConfig};

/// Counters of one port (written by its worker once per burst, read by anyone).
#[derive(Debug, Default)]
pub struct PortStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames that were not IPv4/IPv6 (or too short): the XDP program should not steer them.
    pub rx_non_ip: AtomicU64,
    /// Packets dropped because the next hop's MAC is not known (yet).
    pub tx_no_neighbour: AtomicU64,
    /// Packets dropped because no TX frame or ring slot was free.
    pub tx_ring_full: AtomicU64,
    /// Packets bigger than a frame.
    pub tx_too_big: AtomicU64,
    /// TX wakeup syscalls.
    pub tx_kicks: AtomicU64,
}

impl PortStats {
    /// (name, value) pairs for reports.
    pub fn pairs(&self) -> [(&'static str, u64); 9] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("rx_packets", g(&self.rx_packets)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("tx_packets", g(&self.tx_packets)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("rx_non_ip", g(&self.rx_non_ip)),
            ("tx_no_neighbour", g(&self.tx_no_neighbour)),
            ("tx_ring_full", g(&self.tx_ring_full)),
            ("tx_too_big", g(&self.tx_too_big)),
            ("tx_kicks", g(&self.tx_kicks)),
        ]
    }
}

/// Where a port sends its packets at layer 2.
#[derive(Clone, Copy, Debug, Default)]
pub struct NextHops {
    /// Send every IPv4 packet to this router (else to the packet's own destination).
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// One AF_XDP socket as a port.
pub struct XskPort {
    xsk: Xsk,
    mac: Mac,
    hops: NextHops,
    neigh: NeighView,
    tx_frames: Vec<u64>,
    refill: Vec<u64>,
    rxd: Vec<XdpDesc>,
    txd: Vec<XdpDesc>,
    idle: u32,
    /// Packets waiting for their next hop's MAC (as the kernel's unresolved queue does),
    /// with the time they started waiting; sent when the resolver publishes the address.
    held: Vec<(std::time::Instant, PacketBuf)>,
    held_version: u64,
    pub stats: Arc<PortStats>,
}

/// Packets held for address resolution per port, and how long they may wait.
const HOLD_MAX: usize = 64;
const HOLD_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "XskPort({:?}, {} tx frames free)",
            self.xsk,
            self.tx_frames.len()
        )
    }
}

/// The MAC address of an interface (from sysfs).
pub fn if_mac(ifname: &str) -> std::io::Result<Mac> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(std::io::Error::other(format!(
            "{ifname}: no Ethernet address ({s:?})"
        )));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(std::io::Error::other)?;
    }
    Ok(mac)
}

/// Number of RX queues of an interface (from sysfs).
pub fn rx_queues(ifname: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

impl XskPort {
    /// Opens a socket on `queue` of the interface and fills its RX ring.
    pub fn open(
        ifname: &str,
        ifindex: u32,
        queue: u32,
        cfg: XskConfig,
        hops: NextHops,
        neigh: Arc<NeighShared>,
    ) -> std::io::Result<XskPort> {
        let mac = if_mac(ifname)?;
        let mut xsk = Xsk::open(ifindex, queue, cfg)?;
        let half = u64::from(cfg.frames / 2);
        let rx: Vec<u64> = (0..half).map(|i| i * FRAME_SIZE as u64).collect();
        let tx_frames: Vec<u64> = (half..u64::from(cfg.frames))
            .map(|i| i * FRAME_SIZE as u64)
            .collect();
        let filled = xsk.fill(&rx);
        debug_assert_eq!(filled, rx.len());
        Ok(XskPort {
            xsk,
            mac,
            hops,
            neigh: NeighView::new(neigh),
            tx_frames,
            refill: Vec::with_capacity(512),
            rxd: Vec::with_capacity(512),
            txd: Vec::with_capacity(512),
            idle: 0,
            held: Vec::with_capacity(HOLD_MAX),
            held_version: 0,
            stats: Arc::default(),
        })
    }

    /// The socket's descriptor (for the XSKMAP and `XDP_STATISTICS`).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.xsk.fd()
    }

    pub fn zero_copy(&self) -> bool {
        self.xsk.zero_copy()
    }

    pub fn mac(&self) -> Mac {
        self.mac
    }

    fn reap(&mut self) {
        self.xsk.complete(&mut self.tx_frames);
    }

    /// Retries held packets once the neighbour table changed; drops those that waited too
    /// long (counted `tx_no_neighbour`).
    fn retry_held(&mut self, pool: &mut BufPool) {
        self.neigh.refresh();
        if self.neigh.version() == self.held_version {
            if let Some((t, _)) = self.held.first()
                && t.elapsed() > HOLD_FOR
            {
                self.expire_held(pool);
            }
            return;
        }
        self.held_version = self.neigh.version();
        // Slow path (only while something waits for an address): a small allocation is fine.
        let mut again: Vec<PacketBuf> = self.held.drain(..).map(|(_, p)| p).collect();
        self.tx_burst(pool, &mut again);
    }

    fn expire_held(&mut self, pool: &mut BufPool) {
        let mut gone = 0;
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0.elapsed() > HOLD_FOR {
                pool.put(self.held.swap_remove(i).1);
                gone += 1;
            } else {
                i += 1;
            }
        }
        self.stats
            .tx_no_neighbour
            .fetch_add(gone, Ordering::Relaxed);
    }

    #[inline]
    fn next_hop(&self, pkt: &[u8]) -> Option<IpAddr> {
        match pkt.first()? >> 4 {
            4 if pkt.len() >= 20 => Some(match self.hops.v4 {
                Some(h) => IpAddr::V4(h),
                None => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&pkt[16..20]).ok()?)),
            }),
            6 if pkt.len() >= 40 => Some(match self.hops.v6 {
                Some(h) => IpAddr::V6(h),
                None => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?)),
            }),
            _ => None,
        }
    }
}

const ETH_HLEN: usize = 14;

impl PacketIo for XskPort {
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        self.reap();
        if !self.held.is_empty() {
            self.retry_held(pool);
        }
        self.rxd.clear();
        let n = self.xsk.recv(&mut self.rxd, max);
        if n == 0 {
            // Idle: push out TX descriptors a copy-mode kick left behind, and wake RX if the
            // kernel stopped for want of fill entries.
            self.idle = self.idle.wrapping_add(1);
            if self.idle & 63 == 0 {
                self.xsk.flush();
                if self.xsk.fill_needs_wakeup() {
                    self.xsk.kick_rx();
                }
            }
            return 0;
        }
        self.idle = 0;
        let (mut got, mut bytes, mut non_ip) = (0u64, 0u64, 0u64);
        for i in 0..n {
            let d = self.rxd[i];
            let f = self.xsk.frame(d.addr, d.len as usize);
            let ip = f.len() > ETH_HLEN && matches!((f[12], f[13]), (0x08, 0x00) | (0x86, 0xdd));
            if ip {
                let mut p = pool.get();
                if p.set(&f[ETH_HLEN..]).is_ok() {
                    bytes += (f.len() - ETH_HLEN) as u64;
                    got += 1;
                    out.push(p);
                } else {
                    non_ip += 1;
                    pool.put(p);
                }
            } else {
                non_ip += 1;
            }
            self.refill.push(d.addr);
        }
        // Every frame goes back to the kernel, whatever became of its packet.
        let back = self.xsk.fill(&self.refill);
        self.refill.drain(..back);
        if self.xsk.fill_needs_wakeup() {
            self.xsk.kick_rx();
        }
        self.stats.rx_packets.fetch_add(got, Ordering::Relaxed);
        self.stats.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        if non_ip > 0 {
            self.stats.rx_non_ip.fetch_add(non_ip, Ordering::Relaxed);
        }
        got as usize
    }

    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        if pkts.is_empty() {
            return 0;
        }
        self.reap();
        self.neigh.refresh();
        let room = self.xsk.tx_free(pkts.len() as u32) as usize;
        self.txd.clear();
        let (mut bytes, mut no_neigh, mut full, mut big) = (0u64, 0u64, 0u64, 0u64);
        for p in pkts.drain(..) {
            let b = p.bytes();
            let len = ETH_HLEN + b.len();
            if len > FRAME_SIZE {
                big += 1;
                pool.put(p);
                continue;
            }
            let Some(mac) = self.next_hop(b).and_then(|h| self.neigh.lookup(h)) else {
                if self.held.len() < HOLD_MAX && self.next_hop(b).is_some() {
                    if self.held.is_empty() {
                        self.held_version = self.neigh.version();
                    }
                    self.held.push((std::time::Instant::now(), p));
                } else {
                    no_neigh += 1;
                    pool.put(p);
                }
                continue;
            };
            if self.txd.len() >= room {
                full += 1;
                pool.put(p);
                continue;
            }
            let Some(addr) = self.tx_frames.pop() else {
                full += 1;
                pool.put(p);
                continue;
            };
            let v6 = b[0] >> 4 == 6;
            let f = self.xsk.frame_mut(addr);
            f[0..6].copy_from_slice(&mac);
            f[6..12].copy_from_slice(&self.mac);
            f[12..14].copy_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
            f[ETH_HLEN..len].copy_from_slice(b);
            bytes += b.len() as u64;
            self.txd.push(XdpDesc {
                addr,
                len: len as u32,
                options: 0,
            });
            pool.put(p);
        }
        let sent = self.txd.len();
        if sent > 0 {
            let mut kicks = u64::from(self.xsk.send(&self.txd));
            // Copy mode transmits a bounded batch per kick: kick until the ring drains (a
            // few syscalls per burst, never one per packet).
            let mut tries = 0;
            while kicks > 0 && self.xsk.tx_pending() && tries < 8 {
                self.xsk.flush();
                kicks += 1;
                tries += 1;
            }
            self.stats.tx_kicks.fetch_add(kicks, Ordering::Relaxed);
        }
        let s = &self.stats;
        s.tx_packets.fetch_add(sent as u64, Ordering::Relaxed);
        s.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        if no_neigh + full + big > 0 {
            s.tx_no_neighbour.fetch_add(no_neigh, Ordering::Relaxed);
            s.tx_ring_full.fetch_add(full, Ordering::Relaxed);
            s.tx_too_big.fetch_add(big, Ordering::Relaxed);
        }
        sent
    }

    fn tx_room(&self) -> usize {
        self.tx_frames.len()
    }
}

/// Every RX queue of one interface, one socket each, polled by one worker (so a tunnel's
/// packets, spread over queues by RSS, still meet one writer per SA). Receive round-robins
/// over the queues starting at a rotating one (no queue starves); transmit uses the first
/// queue's socket.
pub struct MultiQueuePort {
    pub ports: Vec<XskPort>,
    /// The queue of each port.
    queues: Vec<u32>,
    next: usize,
}

impl std::fmt::Debug for MultiQueuePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MultiQueuePort({} queues)", self.ports.len())
    }
}

impl MultiQueuePort {
    /// Opens one socket per queue `0..queues` of the interface.
    pub fn open(
        ifname: &str,
        ifindex: u32,
        queues: u32,
        cfg: XskConfig,
        hops: NextHops,
        neigh: Arc<NeighShared>,
    ) -> std::io::Result<MultiQueuePort> {
        let all: Vec<u32> = (0..queues.max(1)).collect();
        Self::open_queues(ifname, ifindex, &all, cfg, hops, neigh)
    }

    /// Opens one socket per queue of `queues` (one worker's share of the interface);
    /// transmits on the first.
    pub fn open_queues(
        ifname: &str,
        ifindex: u32,
        queues: &[u32],
        cfg: XskConfig,
        hops: NextHops,
        neigh: Arc<NeighShared>,
    ) -> std::io::Result<MultiQueuePort> {
        if queues.is_empty() {
            return Err(std::io::Error::other(format!("{ifname}: no queue to open")));
        }
        let ports = queues
            .iter()
            .map(|&q| XskPort::open(ifname, ifindex, q, cfg, hops, neigh.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(MultiQueuePort {
            ports,
            queues: queues.to_vec(),
            next: 0,
        })
    }

    /// (queue, socket fd) of every queue.
    pub fn fds(&self) -> Vec<(u32, std::os::fd::RawFd)> {
        self.queues
            .iter()
            .copied()
            .zip(self.ports.iter().map(|p| p.fd()))
            .collect()
    }

    /// The queues this port polls.
    pub fn queues(&self) -> &[u32] {
        &self.queues
    }

    pub fn zero_copy(&self) -> bool {
        self.ports.iter().all(|p| p.zero_copy())
    }

    /// Per-queue counters.
    pub fn stats(&self) -> Vec<Arc<PortStats>> {
        self.ports.iter().map(|p| p.stats.clone()).collect()
    }
}

impl PacketIo for MultiQueuePort {
    fn rx_burst(&mut self, pool: &mut BufPool, out: &mut Vec<PacketBuf>, max: usize) -> usize {
        let k = self.ports.len();
        if k == 1 {
            return self.ports[0].rx_burst(pool, out, max);
        }
        let mut n = 0;
        for i in 0..k {
            let j = (self.next + i) % k;
            n += self.ports[j].rx_burst(pool, out, max - n);
            if n >= max {
                break;
            }
        }
        self.next = (self.next + 1) % k;
        n
    }

    fn tx_burst(&mut self, pool: &mut BufPool, pkts: &mut Vec<PacketBuf>) -> usize {
        self.ports[0].tx_burst(pool, pkts)
    }

    fn tx_room(&self) -> usize {
        self.ports[0].tx_room()
    }
}

/// The IP addresses configured on an interface (`getifaddrs`).
pub fn local_addrs(ifname: &str) -> Vec<IpAddr> {
    let mut out = vec![];
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if fam == libc::AF_INET {
            // SAFETY: the family is AF_INET, so this is a sockaddr_in.
            let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
        } else if fam == libc::AF_INET6 {
            // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
            let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            out.push(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)));
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}
