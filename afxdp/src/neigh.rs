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
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
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

/// NUD states with a usable link-layer address (`NUD_VALID` less `NUD_INCOMPLETE`; a
/// kernel state is a bit mask, so an entry can carry more than one).
const NUD_USABLE: u16 = 0x02 /*REACHABLE*/ | 0x04 /*STALE*/ | 0x08 /*DELAY*/ | 0x10 /*PROBE*/ | 0x40 /*NOARP*/ | 0x80 /*PERMANENT*/;

/// Dumps the kernel neighbour table of `ifindex` (rtnetlink `RTM_GETNEIGH`, encoded and
/// decoded by `netlink-packet-route`): usable entries only.
pub fn dump(ifindex: u32) -> io::Result<Map> {
    let mut map = Map::new();
    let req = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
    for m in crate::rtnl::dump(req, "RTM_GETNEIGH")? {
        if let RouteNetlinkMessage::NewNeighbour(m) = m {
            add_neighbour(&m, ifindex, &mut map);
        }
    }
    Ok(map)
}

/// Adds one `RTM_NEWNEIGH` entry of `ifindex` to `map` when it is usable and names both an
/// IP address and an Ethernet address.
fn add_neighbour(m: &NeighbourMessage, ifindex: u32, map: &mut Map) {
    if m.header.ifindex != ifindex || u16::from(m.header.state) & NUD_USABLE == 0 {
        return;
    }
    let (mut dst, mut ll) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                dst = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                dst = Some(IpAddr::V6(*ip))
            }
            NeighbourAttribute::LinkLayerAddress(mac) => ll = <[u8; 6]>::try_from(&mac[..]).ok(),
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::neighbour::NeighbourState;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn entry(
        ifindex: u32,
        state: NeighbourState,
        ip: NeighbourAddress,
        mac: &[u8],
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = ifindex;
        m.header.state = state;
        m.attributes = vec![
            NeighbourAttribute::Destination(ip),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        m
    }

    /// Usable entries of our interface with an IP and an Ethernet address are kept; other
    /// interfaces, failed or incomplete entries and non-Ethernet addresses are not.
    #[test]
    fn only_usable_entries_of_the_interface() {
        let mac = [2, 0, 0, 0, 0, 9];
        let v4 = NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 2));
        let v6 = NeighbourAddress::Inet6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let mut map = Map::new();
        for m in [
            entry(3, NeighbourState::Reachable, v4.clone(), &mac),
            entry(3, NeighbourState::Stale, v6.clone(), &mac),
            entry(
                4,
                NeighbourState::Reachable,
                NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 4)),
                &mac,
            ),
            entry(
                3,
                NeighbourState::Failed,
                NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 5)),
                &mac,
            ),
            entry(
                3,
                NeighbourState::Incomplete,
                NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 6)),
                &mac,
            ),
            entry(
                3,
                NeighbourState::Permanent,
                NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 7)),
                &[1, 2, 3, 4],
            ),
            // A kernel state is a mask: STALE | PERMANENT still has an address.
            entry(
                3,
                NeighbourState::Other(0x84),
                NeighbourAddress::Inet(Ipv4Addr::new(192, 0, 2, 8)),
                &mac,
            ),
        ] {
            add_neighbour(&m, 3, &mut map);
        }
        let mut got: Vec<_> = map.keys().map(|k| k.to_string()).collect();
        got.sort();
        assert_eq!(got, ["192.0.2.2", "192.0.2.8", "2001:db8::2"]);
        assert_eq!(map[&IpAddr::from(Ipv4Addr::new(192, 0, 2, 2))], mac);
    }

    /// A real dump from this host's kernel, checked against iproute2's (`ip neigh show nud
    /// all dev lo`): the same usable entries of the loopback interface (index 1).
    #[test]
    fn dump_of_loopback_matches_iproute2() {
        let ours: std::collections::BTreeSet<String> = dump(1)
            .unwrap()
            .into_iter()
            .map(|(ip, mac)| format!("{ip} {mac:02x?}"))
            .collect();
        let out = std::process::Command::new("ip")
            .args(["-o", "neigh", "show", "nud", "all", "dev", "lo"])
            .output()
            .expect("iproute2's ip (the test command installs it)");
        let usable = ["REACHABLE", "STALE", "DELAY", "PROBE", "NOARP", "PERMANENT"];
        let theirs: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| usable.iter().any(|u| l.split_whitespace().any(|w| w == *u)))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let mac = w
                    .iter()
                    .position(|x| *x == "lladdr")
                    .and_then(|i| w.get(i + 1))?;
                let bytes: Vec<u8> = mac
                    .split(':')
                    .map(|h| u8::from_str_radix(h, 16).ok())
                    .collect::<Option<_>>()?;
                (bytes.len() == 6).then(|| format!("{} {bytes:02x?}", w[0]))
            })
            .collect();
        assert_eq!(ours, theirs);
    }
}
