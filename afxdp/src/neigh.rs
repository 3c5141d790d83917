//! Next-hop MAC addresses from the kernel's neighbour table (rtnetlink `RTM_GETNEIGH` dump),
//! shared with the AF_XDP ports as an immutable snapshot.
//!
//! Contract: a [`Resolver`] (control thread, once a second or sooner) dumps the table of one
//! interface, publishes a new snapshot when it changed, and asks the kernel to resolve the
//! addresses ports reported missing by sending one empty UDP datagram to the discard port
//! (the kernel then runs ARP / neighbour discovery as for any packet). Ports read the
//! snapshot with [`NeighView::lookup`]: a version check per burst, a hash lookup per packet
//! with a one-entry cache, no lock on the data path except when a new snapshot is taken.

use crossbeam_queue::ArrayQueue;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub type Mac = [u8; 6];
type Map = HashMap<IpAddr, Mac>;

/// What ports and the resolver share.
#[derive(Debug)]
pub struct NeighShared {
    version: AtomicU64,
    map: RwLock<Arc<Map>>,
    /// Addresses a port needed and did not find (deduplicated by the resolver).
    wanted: ArrayQueue<IpAddr>,
}

impl NeighShared {
    pub fn new() -> Arc<NeighShared> {
        Arc::new(NeighShared {
            version: AtomicU64::new(0),
            map: RwLock::new(Arc::new(Map::new())),
            wanted: ArrayQueue::new(1024),
        })
    }

    /// Publishes a static entry (tests, or `*_next_hop_mac` options).
    pub fn insert(&self, ip: IpAddr, mac: Mac) {
        let mut g = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut m = (**g).clone();
        m.insert(ip, mac);
        *g = Arc::new(m);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A copy of the current table.
    pub fn snapshot(&self) -> Arc<Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A port's view of the table.
#[derive(Debug)]
pub struct NeighView {
    shared: Arc<NeighShared>,
    seen: u64,
    cur: Arc<Map>,
    last: Option<(IpAddr, Mac)>,
}

impl NeighView {
    pub fn new(shared: Arc<NeighShared>) -> NeighView {
        NeighView {
            cur: shared.snapshot(),
            seen: shared.version.load(Ordering::Acquire),
            shared,
            last: None,
        }
    }

    /// Takes the newest snapshot if the resolver published one (call once per burst).
    /// Returns whether it changed.
    #[inline]
    pub fn refresh(&mut self) -> bool {
        let v = self.shared.version.load(Ordering::Acquire);
        if v != self.seen {
            self.seen = v;
            self.cur = self.shared.snapshot();
            self.last = None;
            return true;
        }
        false
    }

    /// The snapshot version in use.
    pub fn version(&self) -> u64 {
        self.seen
    }

    /// The MAC of `ip`, or None (and `ip` is reported to the resolver).
    #[inline]
    pub fn lookup(&mut self, ip: IpAddr) -> Option<Mac> {
        if let Some((a, m)) = self.last
            && a == ip
        {
            return Some(m);
        }
        match self.cur.get(&ip) {
            Some(m) => {
                self.last = Some((ip, *m));
                Some(*m)
            }
            None => {
                let _ = self.shared.wanted.push(ip);
                None
            }
        }
    }
}

const RTM_GETNEIGH: u16 = 30;
const RTM_NEWNEIGH: u16 = 28;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// NUD states with a usable link-layer address.
const NUD_USABLE: u16 = 0x02 /*REACHABLE*/ | 0x04 /*STALE*/ | 0x08 /*DELAY*/ | 0x10 /*PROBE*/ | 0x40 /*NOARP*/ | 0x80 /*PERMANENT*/;

/// Dumps the kernel neighbour table of `ifindex`: usable entries only.
pub fn dump(ifindex: u32) -> io::Result<Map> {
    // SAFETY: plain socket creation; the result is checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // nlmsghdr (16) + ndmsg (12)
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: req is a readable buffer of its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut map = Map::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msg = &buf[..n as usize];
        while msg.len() >= 16 {
            let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap_or_default()) as usize;
            let ty = u16::from_ne_bytes([msg[4], msg[5]]);
            if len < 16 || len > msg.len() {
                return Ok(map);
            }
            match ty {
                NLMSG_DONE => return Ok(map),
                NLMSG_ERROR => return Err(io::Error::other("netlink error on RTM_GETNEIGH")),
                RTM_NEWNEIGH => parse_neigh(&msg[16..len], ifindex, &mut map),
                _ => {}
            }
            msg = &msg[len.next_multiple_of(4).min(msg.len())..];
        }
    }
}

fn parse_neigh(m: &[u8], ifindex: u32, map: &mut Map) {
    if m.len() < 12 {
        return;
    }
    let ifi = i32::from_ne_bytes(m[4..8].try_into().unwrap_or_default());
    let state = u16::from_ne_bytes([m[8], m[9]]);
    if ifi as u32 != ifindex || state & NUD_USABLE == 0 {
        return;
    }
    let (mut dst, mut ll) = (None, None);
    let mut a = &m[12..];
    while a.len() >= 4 {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let ty = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
        if len < 4 || len > a.len() {
            break;
        }
        let v = &a[4..len];
        match (ty, v.len()) {
            (NDA_DST, 4) => {
                dst = Some(IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(v).unwrap_or_default(),
                )))
            }
            (NDA_DST, 16) => {
                dst = Some(IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(v).unwrap_or_default(),
                )))
            }
            (NDA_LLADDR, 6) => ll = <[u8; 6]>::try_from(v).ok(),
            _ => {}
        }
        a = &a[len.next_multiple_of(4).min(a.len())..];
    }
    if let (Some(d), Some(l)) = (dst, ll) {
        map.insert(d, l);
    }
}

/// Keeps one interface's snapshot current (control thread).
#[derive(Debug)]
pub struct Resolver {
    pub shared: Arc<NeighShared>,
    ifindex: u32,
    /// Addresses always kept resolved (peers, configured next hops).
    pub watch: Vec<IpAddr>,
    statics: Map,
}

impl Resolver {
    pub fn new(ifindex: u32, shared: Arc<NeighShared>) -> Resolver {
        Resolver {
            shared,
            ifindex,
            watch: vec![],
            statics: Map::new(),
        }
    }

    /// An entry that overrides the kernel's (`*_next_hop_mac` options, tests).
    pub fn add_static(&mut self, ip: IpAddr, mac: Mac) {
        self.statics.insert(ip, mac);
    }

    /// Whether a port is waiting for an address (refresh now rather than on the timer).
    pub fn has_wanted(&self) -> bool {
        !self.shared.wanted.is_empty()
    }

    /// One refresh: dump, publish if changed, prod the kernel for what is missing.
    pub fn tick(&mut self) -> io::Result<usize> {
        let mut map = dump(self.ifindex)?;
        map.extend(self.statics.iter().map(|(k, v)| (*k, *v)));
        let cur = self.shared.snapshot();
        if *cur != map {
            *self.shared.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map.clone());
            self.shared.version.fetch_add(1, Ordering::Release);
        }
        let mut missing: Vec<IpAddr> = self
            .watch
            .iter()
            .copied()
            .filter(|a| !map.contains_key(a))
            .collect();
        while let Some(a) = self.shared.wanted.pop() {
            if !map.contains_key(&a) && !missing.contains(&a) && missing.len() < 64 {
                missing.push(a);
            }
        }
        for a in &missing {
            solicit(*a);
        }
        Ok(missing.len())
    }
}

/// Makes the kernel resolve `ip`: an empty UDP datagram to its discard port (9).
fn solicit(ip: IpAddr) {
    let bind: SocketAddr = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], SocketAddr::new(ip, 9));
    }
}
