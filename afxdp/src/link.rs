//! What kind of link an interface is (rtnetlink `RTM_GETLINK`, `IFLA_INFO_KIND`): `veth`,
//! `tun` (tap devices too), `bridge`, ... or none for a physical NIC's driver.
//!
//! Contract: one request and its answer on a fresh netlink socket (control thread, at
//! start-up); the kernel's error when the interface does not exist.

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr as NlAddr};
use std::io;

/// The `IFLA_INFO_KIND` of interface `ifindex` (`"veth"`, `"tun"`, ...), or None when the
/// link has none (a physical NIC).
pub fn kind(ifindex: u32) -> io::Result<Option<String>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut &mut buf[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n.min(buf.len())])
        .map_err(|e| io::Error::other(format!("RTM_GETLINK reply: {e}")))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
            Ok(m.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                }),
                _ => None,
            }))
        }
        NetlinkPayload::Error(e) => Err(io::Error::other(format!(
            "RTM_GETLINK of interface {ifindex}: {e}"
        ))),
        _ => Err(io::Error::other("RTM_GETLINK: unexpected reply")),
    }
}

/// Whether senders on this kind of link may hand over TCP/UDP checksums for the NIC to
/// finish (CHECKSUM_PARTIAL): veth (containers) and tun/tap (VMs) pass them on as they are.
pub fn passes_partial_checksums(kind: Option<&str>) -> bool {
    matches!(kind, Some("veth" | "tun"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_kind_and_a_missing_link_is_an_error() {
        assert_eq!(kind(1).unwrap(), None, "lo is not a veth, tun or bridge");
        assert!(kind(0x7fff_fff0).is_err());
        assert!(passes_partial_checksums(Some("veth")));
        assert!(passes_partial_checksums(Some("tun")));
        assert!(!passes_partial_checksums(Some("bridge")));
        assert!(!passes_partial_checksums(None));
    }
}
