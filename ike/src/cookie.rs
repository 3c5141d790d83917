//! Stateless COOKIEs for a responder under load (RFC 7296 section 2.6): before spending a DH
//! computation and state on an IKE_SA_INIT, ask the initiator to prove it receives our
//! replies at its source address.
//!
//! Contract: [`Cookies::check`] is a pure function of the request, the source address and
//! the secret: `Ok(())` when the request carries the cookie we would issue, else `Err(reply)`
//! with the datagram to send back (an IKE_SA_INIT response holding only N(COOKIE)). Cookies
//! are `version (4 bytes) | SHA-256(Ni | IPi | SPIi | secret)`; [`Cookies::rotate`] starts a
//! new secret, and cookies of the previous one are still accepted.

use crate::msg::{self, Message, Payload, notify};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use zeroize::Zeroizing;

/// The responder's cookie secrets.
pub struct Cookies {
    version: u32,
    secret: Zeroizing<[u8; 32]>,
    previous: Option<(u32, Zeroizing<[u8; 32]>)>,
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cookies(version {}, secret <redacted>)", self.version)
    }
}

fn compute(version: u32, secret: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(ni);
    match ip {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(spi_i.to_be_bytes());
    h.update(secret);
    let mut c = version.to_be_bytes().to_vec();
    c.extend_from_slice(&h.finalize());
    c
}

impl Cookies {
    pub fn new(fill: &mut dyn FnMut(&mut [u8])) -> Cookies {
        let mut s = Zeroizing::new([0u8; 32]);
        fill(&mut *s);
        Cookies {
            version: 1,
            secret: s,
            previous: None,
        }
    }

    /// A new secret (call every few minutes); the previous one stays valid once more.
    pub fn rotate(&mut self, fill: &mut dyn FnMut(&mut [u8])) {
        let mut s = Zeroizing::new([0u8; 32]);
        fill(&mut *s);
        let old = std::mem::replace(&mut self.secret, s);
        self.previous = Some((self.version, old));
        self.version = self.version.wrapping_add(1);
    }

    /// Accepts an IKE_SA_INIT request that carries a valid cookie; otherwise returns the
    /// COOKIE response to send (None for datagrams that are not IKE_SA_INIT requests).
    pub fn check(&self, raw: &[u8], from: IpAddr) -> Result<(), Option<Vec<u8>>> {
        let Ok(m) = Message::parse(raw) else {
            return Err(None);
        };
        let h = m.header;
        if h.is_response() || h.exchange != msg::exchange::IKE_SA_INIT || h.msg_id != 0 {
            return Err(None);
        }
        let Some(ni) = m.payloads.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        }) else {
            return Err(None);
        };
        if let Some(Payload::Notify { data, .. }) = m.notify(notify::COOKIE) {
            let v = data
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let secret = match v {
                Some(v) if v == self.version => Some(&*self.secret),
                Some(v) => self.previous.as_ref().filter(|p| p.0 == v).map(|p| &*p.1),
                None => None,
            };
            if let (Some(v), Some(s)) = (v, secret)
                && crate::keys::ct_eq(data, &compute(v, s, ni, from, h.spi_i))
            {
                return Ok(());
            }
        }
        let cookie = compute(self.version, &*self.secret, ni, from, h.spi_i);
        Err(Some(msg::init_notify_response(&h, notify::COOKIE, cookie)))
    }
}
