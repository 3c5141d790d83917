//! One rtnetlink dump request and its replies (encoded and decoded by
//! `netlink-packet-route`), for the neighbour table and the routing tables.

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr as NlAddr};
use std::io;

/// Sends `req` as a dump request and returns every message of the answer; `what` names the
/// request in errors.
pub fn dump(req: RouteNetlinkMessage, what: &str) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(req));
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut got = vec![];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        if n == 0 {
            return Ok(got);
        }
        let mut msgs = &buf[..n.min(buf.len())];
        while !msgs.is_empty() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(msgs)
                .map_err(|e| io::Error::other(format!("{what} reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(got),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("{what}: {e}")));
                }
                NetlinkPayload::InnerMessage(m) => got.push(m),
                _ => {}
            }
            if len == 0 || len > msgs.len() {
                return Ok(got);
            }
            msgs = &msgs[len.next_multiple_of(4).min(msgs.len())..];
        }
    }
}
