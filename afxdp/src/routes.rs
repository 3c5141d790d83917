//! The IPv4 routes of one kernel routing table (rtnetlink `RTM_GETROUTE` dump): where a BGP
//! daemon puts what it learned, for the data plane. Each route is a prefix and the
//! interfaces of its next hops (several: ECMP).

use crate::rtnl;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use std::io;
use std::net::Ipv4Addr;

/// One route: prefix, length, next-hop interface indexes (sorted, distinct).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route4 {
    pub prefix: Ipv4Addr,
    pub len: u8,
    pub oifs: Vec<u32>,
}

/// The IPv4 unicast routes of kernel table `table`, sorted.
pub fn dump_table(table: u32) -> io::Result<Vec<Route4>> {
    let mut req = RouteMessage::default();
    req.header.address_family = netlink_packet_route::AddressFamily::Inet;
    let mut out = vec![];
    for m in rtnl::dump(RouteNetlinkMessage::GetRoute(req), "RTM_GETROUTE")? {
        if let RouteNetlinkMessage::NewRoute(m) = m
            && let Some(r) = route_of(&m, table)
        {
            out.push(r);
        }
    }
    out.sort();
    Ok(out)
}

/// The route of a `RTM_NEWROUTE` message when it is an IPv4 route of `table`.
fn route_of(m: &RouteMessage, table: u32) -> Option<Route4> {
    let mut t = u32::from(m.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oifs = vec![];
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(x) => t = *x,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::MultiPath(hops) => {
                oifs.extend(hops.iter().map(|h| h.interface_index));
            }
            _ => {}
        }
    }
    if t != table || m.header.address_family != netlink_packet_route::AddressFamily::Inet {
        return None;
    }
    oifs.sort_unstable();
    oifs.dedup();
    Some(Route4 {
        prefix: dst,
        len: m.header.destination_prefix_length,
        oifs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's local table (255) always holds 127.0.0.0/8 on `lo`.
    #[test]
    fn local_table_holds_loopback() {
        let r = dump_table(255).unwrap();
        assert!(
            r.iter().any(|x| x.prefix == Ipv4Addr::new(127, 0, 0, 0)
                && x.len == 8
                && x.oifs.len() == 1),
            "{r:?}"
        );
        assert!(r.iter().all(|x| x.len <= 32));
    }
}
