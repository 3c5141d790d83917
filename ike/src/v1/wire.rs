//! The ISAKMP wire format (RFC 2408 section 3) with the IPsec DOI (RFC 2407 section 4):
//! header, generic payload chain, and the bodies IKEv1 main mode, quick mode and
//! informational exchanges use (SA / proposal / transform with data attributes, KE, ID,
//! HASH, NONCE, N, D, VID, NAT-D of RFC 3947).
//!
//! Contract: parsing never panics and never allocates more than the datagram's size; a
//! length that does not fit is an error, not a truncation. A chain may be followed by
//! trailing bytes (the padding of a decrypted body, RFC 2408 section 3.5 leaves its content
//! open): [`parse_chain`] stops at the payload whose `next` is NONE.

use std::net::IpAddr;

/// Exchange types (RFC 2408 section 3.1, RFC 2409 section 5).
pub mod xchg {
    pub const MAIN: u8 = 2;
    pub const AGGRESSIVE: u8 = 4;
    pub const INFO: u8 = 5;
    pub const QUICK: u8 = 32;
}

/// Payload types (RFC 2408 section 3.1; NAT-D and NAT-OA from RFC 3947 section 3).
pub mod pt {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 1;
    pub const PROPOSAL: u8 = 2;
    pub const TRANSFORM: u8 = 3;
    pub const KE: u8 = 4;
    pub const ID: u8 = 5;
    pub const HASH: u8 = 8;
    pub const NONCE: u8 = 10;
    pub const N: u8 = 11;
    pub const D: u8 = 12;
    pub const VID: u8 = 13;
    pub const NATD: u8 = 20;
    pub const NATOA: u8 = 21;
}

/// Notify message types (RFC 2408 section 3.14.1, RFC 2407 section 4.6.3, RFC 3706).
pub mod notify {
    pub const INVALID_PAYLOAD_TYPE: u16 = 1;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const PAYLOAD_MALFORMED: u16 = 16;
    pub const INVALID_ID_INFORMATION: u16 = 18;
    pub const INVALID_HASH_INFORMATION: u16 = 23;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const RESPONDER_LIFETIME: u16 = 24576;
    pub const INITIAL_CONTACT: u16 = 24578;
    pub const R_U_THERE: u16 = 36136;
    pub const R_U_THERE_ACK: u16 = 36137;
}

/// Protocol ids (RFC 2407 section 4.4.1).
pub mod proto {
    pub const ISAKMP: u8 = 1;
    pub const ESP: u8 = 3;
}

/// Header flags (RFC 2408 section 3.1).
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// The IPsec DOI (RFC 2407 section 4.2) and SIT_IDENTITY_ONLY.
pub const DOI_IPSEC: u32 = 1;
pub const SIT_IDENTITY_ONLY: u32 = 1;

/// Vendor IDs: RFC 3947 NAT-T (MD5 of "RFC 3947") and RFC 3706 DPD (version 1.0).
pub const VID_NATT: [u8; 16] = [
    0x4a, 0x13, 0x1c, 0x81, 0x07, 0x03, 0x58, 0x45, 0x5c, 0x57, 0x28, 0xf2, 0x0e, 0x95, 0x45, 0x2f,
];
pub const VID_DPD: [u8; 16] = [
    0xaf, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01, 0x00,
];

/// At most this many payloads in a message, proposals in an SA, transforms in a proposal,
/// attributes in a transform: more is a hostile message.
pub const MAX_ITEMS: usize = 256;

/// Why a message could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than an ISAKMP header")]
    Short,
    #[error("not ISAKMP version 1.0 (version byte {0:#04x})")]
    Version(u8),
    #[error("header length {header} but datagram of {actual} bytes")]
    Length { header: u32, actual: usize },
    #[error("payload type {0}: {1}")]
    Payload(u8, &'static str),
}

/// The ISAKMP header (RFC 2408 section 3.1): the layout of the IKEv2 header, version 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ci: u64,
    pub cr: u64,
    pub next: u8,
    pub exchange: u8,
    pub flags: u8,
    pub msg_id: u32,
    pub length: u32,
}

impl Header {
    pub const LEN: usize = 28;

    pub fn parse(b: &[u8]) -> Result<Header, WireError> {
        if b.len() < Self::LEN {
            return Err(WireError::Short);
        }
        if b[17] != 0x10 {
            return Err(WireError::Version(b[17]));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let h = Header {
            ci: u64_at(0),
            cr: u64_at(8),
            next: b[16],
            exchange: b[18],
            flags: b[19],
            msg_id: u32_at(20),
            length: u32_at(24),
        };
        if h.length as usize != b.len() {
            return Err(WireError::Length {
                header: h.length,
                actual: b.len(),
            });
        }
        Ok(h)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ci.to_be_bytes());
        out.extend_from_slice(&self.cr.to_be_bytes());
        out.push(self.next);
        out.push(0x10);
        out.push(self.exchange);
        out.push(self.flags);
        out.extend_from_slice(&self.msg_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// One payload: its type and body (without the 4-byte generic header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub ptype: u8,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn new(ptype: u8, body: Vec<u8>) -> Raw {
        Raw { ptype, body }
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Parses a payload chain starting with type `first`. Bytes after the last payload are
/// ignored (CBC padding). Returns each payload with its offset in `b` (for hashes that
/// cover "the rest of the message").
pub fn parse_chain(first: u8, mut b: &[u8]) -> Result<Vec<(Raw, usize)>, WireError> {
    let mut out = vec![];
    let mut t = first;
    let mut off = 0;
    while t != pt::NONE {
        if out.len() >= MAX_ITEMS {
            return Err(WireError::Payload(t, "too many payloads"));
        }
        if b.len() < 4 {
            return Err(WireError::Payload(t, "generic header truncated"));
        }
        let next = b[0];
        let len = be16(b, 2) as usize;
        if len < 4 || len > b.len() {
            return Err(WireError::Payload(t, "payload length out of bounds"));
        }
        out.push((Raw::new(t, b[4..len].to_vec()), off));
        off += len;
        b = &b[len..];
        t = next;
    }
    Ok(out)
}

/// Serializes a payload chain; returns the type of the first payload.
pub fn encode_chain(payloads: &[Raw], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(pt::NONE, |n| n.ptype);
        out.extend_from_slice(&[next, 0]);
        out.extend_from_slice(&((4 + p.body.len()) as u16).to_be_bytes());
        out.extend_from_slice(&p.body);
    }
    payloads.first().map_or(pt::NONE, |p| p.ptype)
}

/// A cleartext message: header and payloads (`next` and `length` computed).
pub fn encode_plain(mut h: Header, payloads: &[Raw]) -> Vec<u8> {
    let mut body = vec![];
    h.next = encode_chain(payloads, &mut body);
    h.flags &= !FLAG_ENCRYPTED;
    h.length = (Header::LEN + body.len()) as u32;
    let mut out = Vec::with_capacity(h.length as usize);
    h.write(&mut out);
    out.extend_from_slice(&body);
    out
}

/// A data attribute (RFC 2408 section 3.3): basic (TV, 2-byte value) or variable (TLV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ty: u16,
    pub value: Vec<u8>,
}

impl Attr {
    /// A basic attribute when the value fits in 16 bits, else variable.
    pub fn num(ty: u16, v: u32) -> Attr {
        let value = if v <= 0xffff {
            (v as u16).to_be_bytes().to_vec()
        } else {
            v.to_be_bytes().to_vec()
        };
        Attr { ty, value }
    }
    /// The value as a number (None when longer than 8 bytes or empty).
    pub fn as_u64(&self) -> Option<u64> {
        if self.value.is_empty() || self.value.len() > 8 {
            return None;
        }
        Some(
            self.value
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b)),
        )
    }
}

/// One transform (RFC 2408 section 3.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformV1 {
    pub num: u8,
    pub id: u8,
    pub attrs: Vec<Attr>,
}

impl TransformV1 {
    /// The value of attribute `ty`, if present and numeric.
    pub fn attr(&self, ty: u16) -> Option<u64> {
        self.attrs
            .iter()
            .find(|a| a.ty == ty)
            .and_then(Attr::as_u64)
    }
    /// Same id and the same attributes (the transform number aside): a responder's answer
    /// must be one of our transforms unchanged (RFC 2408 section 4.2).
    pub fn same_as(&self, o: &TransformV1) -> bool {
        if self.id != o.id || self.attrs.len() != o.attrs.len() {
            return false;
        }
        self.attrs
            .iter()
            .all(|a| o.attr(a.ty).is_some_and(|v| Some(v) == a.as_u64()))
    }
}

/// One proposal (RFC 2408 section 3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalV1 {
    pub num: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<TransformV1>,
}

/// The SA payload body (RFC 2408 section 3.4) with the IPsec DOI.
pub fn encode_sa(props: &[ProposalV1]) -> Vec<u8> {
    let mut b = vec![];
    b.extend_from_slice(&DOI_IPSEC.to_be_bytes());
    b.extend_from_slice(&SIT_IDENTITY_ONLY.to_be_bytes());
    for (i, p) in props.iter().enumerate() {
        let start = b.len();
        let more = if i + 1 < props.len() {
            pt::PROPOSAL
        } else {
            pt::NONE
        };
        b.extend_from_slice(&[more, 0, 0, 0, p.num, p.protocol, p.spi.len() as u8]);
        b.push(p.transforms.len() as u8);
        b.extend_from_slice(&p.spi);
        for (k, t) in p.transforms.iter().enumerate() {
            let ts = b.len();
            let more = if k + 1 < p.transforms.len() {
                pt::TRANSFORM
            } else {
                pt::NONE
            };
            b.extend_from_slice(&[more, 0, 0, 0, t.num, t.id, 0, 0]);
            for a in &t.attrs {
                if a.value.len() == 2 {
                    b.extend_from_slice(&(a.ty | 0x8000).to_be_bytes());
                    b.extend_from_slice(&a.value);
                } else {
                    b.extend_from_slice(&(a.ty & 0x7fff).to_be_bytes());
                    b.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    b.extend_from_slice(&a.value);
                }
            }
            let tl = (b.len() - ts) as u16;
            b[ts + 2..ts + 4].copy_from_slice(&tl.to_be_bytes());
        }
        let pl = (b.len() - start) as u16;
        b[start + 2..start + 4].copy_from_slice(&pl.to_be_bytes());
    }
    b
}

fn parse_attrs(mut b: &[u8]) -> Result<Vec<Attr>, WireError> {
    let mut out = vec![];
    while !b.is_empty() {
        if out.len() >= MAX_ITEMS || b.len() < 4 {
            return Err(WireError::Payload(pt::TRANSFORM, "attribute truncated"));
        }
        let t = be16(b, 0);
        if t & 0x8000 != 0 {
            out.push(Attr {
                ty: t & 0x7fff,
                value: b[2..4].to_vec(),
            });
            b = &b[4..];
        } else {
            let l = be16(b, 2) as usize;
            if 4 + l > b.len() {
                return Err(WireError::Payload(pt::TRANSFORM, "attribute length"));
            }
            out.push(Attr {
                ty: t,
                value: b[4..4 + l].to_vec(),
            });
            b = &b[4 + l..];
        }
    }
    Ok(out)
}

/// Parses an SA payload body (IPsec DOI, SIT_IDENTITY_ONLY only).
pub fn parse_sa(b: &[u8]) -> Result<Vec<ProposalV1>, WireError> {
    let e = |w| WireError::Payload(pt::SA, w);
    if b.len() < 8 {
        return Err(e("truncated"));
    }
    if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) != DOI_IPSEC {
        return Err(e("not the IPsec DOI"));
    }
    if u32::from_be_bytes([b[4], b[5], b[6], b[7]]) != SIT_IDENTITY_ONLY {
        return Err(e("situation not SIT_IDENTITY_ONLY"));
    }
    let mut rest = &b[8..];
    let mut props = vec![];
    loop {
        if props.len() >= MAX_ITEMS || rest.len() < 8 {
            return Err(e("proposal truncated"));
        }
        let more = rest[0];
        let len = be16(rest, 2) as usize;
        if len < 8 || len > rest.len() {
            return Err(e("proposal length"));
        }
        let p = &rest[..len];
        let (num, protocol, spi_len, n_t) = (p[4], p[5], p[6] as usize, p[7] as usize);
        if 8 + spi_len > len {
            return Err(e("SPI length"));
        }
        let spi = p[8..8 + spi_len].to_vec();
        let mut tb = &p[8 + spi_len..];
        let mut transforms = vec![];
        for k in 0..n_t {
            if tb.len() < 8 {
                return Err(e("transform truncated"));
            }
            let tmore = tb[0];
            let tl = be16(tb, 2) as usize;
            if tl < 8 || tl > tb.len() {
                return Err(e("transform length"));
            }
            transforms.push(TransformV1 {
                num: tb[4],
                id: tb[5],
                attrs: parse_attrs(&tb[8..tl])?,
            });
            tb = &tb[tl..];
            if (tmore == pt::NONE) != (k + 1 == n_t) {
                return Err(e("transform count"));
            }
        }
        props.push(ProposalV1 {
            num,
            protocol,
            spi,
            transforms,
        });
        rest = &rest[len..];
        if more == pt::NONE {
            return Ok(props);
        }
        if more != pt::PROPOSAL {
            return Err(e("next of a proposal"));
        }
    }
}

/// An identification payload (RFC 2407 section 4.6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Id {
    pub id_type: u8,
    pub protocol: u8,
    pub port: u16,
    pub data: Vec<u8>,
}

/// ID types (RFC 2407 section 4.6.2.1).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const IPV4_ADDR_SUBNET: u8 = 4;
    pub const IPV6_ADDR: u8 = 5;
    pub const IPV6_ADDR_SUBNET: u8 = 6;
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

impl Id {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![self.id_type, self.protocol];
        b.extend_from_slice(&self.port.to_be_bytes());
        b.extend_from_slice(&self.data);
        b
    }
    pub fn parse(b: &[u8]) -> Result<Id, WireError> {
        if b.len() < 4 {
            return Err(WireError::Payload(pt::ID, "truncated"));
        }
        Ok(Id {
            id_type: b[0],
            protocol: b[1],
            port: be16(b, 2),
            data: b[4..].to_vec(),
        })
    }
    /// The ID of one address.
    pub fn addr(a: IpAddr) -> Id {
        match a {
            IpAddr::V4(v) => Id {
                id_type: id_type::IPV4_ADDR,
                protocol: 0,
                port: 0,
                data: v.octets().to_vec(),
            },
            IpAddr::V6(v) => Id {
                id_type: id_type::IPV6_ADDR,
                protocol: 0,
                port: 0,
                data: v.octets().to_vec(),
            },
        }
    }
    /// A range of addresses as quick mode carries it: a subnet when the range is one,
    /// else an address range.
    pub fn range(start: IpAddr, end: IpAddr, protocol: u8, port: u16) -> Id {
        let (t_sub, t_range, s, e) = match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (
                id_type::IPV4_ADDR_SUBNET,
                id_type::IPV4_ADDR_RANGE,
                s.octets().to_vec(),
                e.octets().to_vec(),
            ),
            (s, e) => {
                let o = |a: IpAddr| match a {
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets().to_vec(),
                    IpAddr::V6(v) => v.octets().to_vec(),
                };
                (
                    id_type::IPV6_ADDR_SUBNET,
                    id_type::IPV6_ADDR_RANGE,
                    o(s),
                    o(e),
                )
            }
        };
        // start..end is a subnet when start & !mask == 0 and end == start | !mask.
        let bits = s.len() * 8;
        let prefix = (0..=bits).find(|&p| {
            let mask = prefix_mask(s.len(), p);
            s.iter()
                .zip(&e)
                .zip(&mask)
                .all(|((a, b), m)| a & !m == 0 && *b == a | !m)
        });
        match prefix {
            Some(p) => {
                let mask = prefix_mask(s.len(), p);
                Id {
                    id_type: t_sub,
                    protocol,
                    port,
                    data: [s, mask].concat(),
                }
            }
            None => Id {
                id_type: t_range,
                protocol,
                port,
                data: [s, e].concat(),
            },
        }
    }
    /// The address range this ID names (first, last), for the types quick mode uses.
    pub fn to_range(&self) -> Option<(IpAddr, IpAddr)> {
        let d = &self.data;
        let (v4, v6) = (
            |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
            |b: &[u8]| <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        );
        let masked = |a: &[u8], m: &[u8], hi: bool| -> Vec<u8> {
            a.iter()
                .zip(m)
                .map(|(x, y)| if hi { x | !y } else { x & y })
                .collect()
        };
        match (self.id_type, d.len()) {
            (id_type::IPV4_ADDR, 4) => Some((v4(d)?, v4(d)?)),
            (id_type::IPV6_ADDR, 16) => Some((v6(d)?, v6(d)?)),
            (id_type::IPV4_ADDR_SUBNET, 8) => Some((
                v4(&masked(&d[..4], &d[4..], false))?,
                v4(&masked(&d[..4], &d[4..], true))?,
            )),
            (id_type::IPV6_ADDR_SUBNET, 32) => Some((
                v6(&masked(&d[..16], &d[16..], false))?,
                v6(&masked(&d[..16], &d[16..], true))?,
            )),
            (id_type::IPV4_ADDR_RANGE, 8) => Some((v4(&d[..4])?, v4(&d[4..])?)),
            (id_type::IPV6_ADDR_RANGE, 32) => Some((v6(&d[..16])?, v6(&d[16..])?)),
            _ => None,
        }
    }
}

/// The netmask of a `prefix`-bit prefix over `len` bytes.
fn prefix_mask(len: usize, prefix: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let ones = prefix.saturating_sub(i * 8).min(8);
            (0xffu16 << (8 - ones)) as u8
        })
        .collect()
}

/// A notification payload body (RFC 2408 section 3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub ntype: u16,
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl Notify {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = DOI_IPSEC.to_be_bytes().to_vec();
        b.extend_from_slice(&[self.protocol, self.spi.len() as u8]);
        b.extend_from_slice(&self.ntype.to_be_bytes());
        b.extend_from_slice(&self.spi);
        b.extend_from_slice(&self.data);
        b
    }
    pub fn parse(b: &[u8]) -> Result<Notify, WireError> {
        let e = WireError::Payload(pt::N, "truncated");
        if b.len() < 8 {
            return Err(e);
        }
        let spi_len = b[5] as usize;
        if 8 + spi_len > b.len() {
            return Err(e);
        }
        Ok(Notify {
            protocol: b[4],
            ntype: be16(b, 6),
            spi: b[8..8 + spi_len].to_vec(),
            data: b[8 + spi_len..].to_vec(),
        })
    }
}

/// A delete payload body (RFC 2408 section 3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub protocol: u8,
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = DOI_IPSEC.to_be_bytes().to_vec();
        let size = self.spis.first().map_or(0, Vec::len) as u8;
        b.extend_from_slice(&[self.protocol, size]);
        b.extend_from_slice(&(self.spis.len() as u16).to_be_bytes());
        for s in &self.spis {
            b.extend_from_slice(s);
        }
        b
    }
    pub fn parse(b: &[u8]) -> Result<Delete, WireError> {
        let e = WireError::Payload(pt::D, "truncated");
        if b.len() < 8 {
            return Err(e);
        }
        let (size, n) = (b[5] as usize, be16(b, 6) as usize);
        if size == 0 || 8 + size * n != b.len() {
            return Err(e);
        }
        Ok(Delete {
            protocol: b[4],
            spis: b[8..].chunks(size).map(<[u8]>::to_vec).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa_round_trip_with_basic_and_variable_attributes() {
        let p = ProposalV1 {
            num: 1,
            protocol: proto::ESP,
            spi: vec![1, 2, 3, 4],
            transforms: vec![
                TransformV1 {
                    num: 1,
                    id: 12,
                    attrs: vec![Attr::num(6, 128), Attr::num(2, 86400)],
                },
                TransformV1 {
                    num: 2,
                    id: 20,
                    attrs: vec![Attr::num(6, 256)],
                },
            ],
        };
        let b = encode_sa(std::slice::from_ref(&p));
        let back = parse_sa(&b).unwrap();
        assert_eq!(back, vec![p.clone()]);
        assert_eq!(back[0].transforms[0].attr(2), Some(86400));
        // Every truncation is an error, never a panic.
        for n in 0..b.len() {
            let _ = parse_sa(&b[..n]);
        }
    }

    #[test]
    fn ids_name_subnets_and_ranges() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        let id = Id::range(a("10.1.0.0"), a("10.1.255.255"), 0, 0);
        assert_eq!(id.id_type, id_type::IPV4_ADDR_SUBNET);
        assert_eq!(id.data, vec![10, 1, 0, 0, 255, 255, 0, 0]);
        assert_eq!(id.to_range(), Some((a("10.1.0.0"), a("10.1.255.255"))));
        let any = Id::range(a("0.0.0.0"), a("255.255.255.255"), 0, 0);
        assert_eq!(any.data, vec![0; 8]);
        let r = Id::range(a("10.0.0.5"), a("10.0.0.9"), 0, 0);
        assert_eq!(r.id_type, id_type::IPV4_ADDR_RANGE);
        assert_eq!(r.to_range(), Some((a("10.0.0.5"), a("10.0.0.9"))));
        let h = Id::range(a("10.0.0.5"), a("10.0.0.5"), 0, 0);
        assert_eq!(h.data, vec![10, 0, 0, 5, 255, 255, 255, 255]);
    }

    #[test]
    fn chain_ignores_padding_and_rejects_overruns() {
        let mut b = vec![];
        let first = encode_chain(
            &[Raw::new(pt::HASH, vec![1; 20]), Raw::new(pt::N, vec![2; 8])],
            &mut b,
        );
        b.extend_from_slice(&[0; 7]);
        let ps = parse_chain(first, &b).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].1, 24);
        b[2] = 0xff;
        assert!(parse_chain(first, &b).is_err());
    }
}
