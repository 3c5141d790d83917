//! IKEv2 messages on the wire (RFC 7296 section 3): the header, the generic payload chain
//! and every payload the AWS exchanges use, parsed with checked lengths and serialized back.
//!
//! Contract: [`Message::parse`] never panics; every malformed input (short buffer, a length
//! that disagrees with the header or the buffer, a bad substructure, an unknown payload
//! marked critical) is a [`ParseError`] naming what was wrong, so the state machine can
//! drop it or answer as section 2.21 says. The Encrypted payload (SK, section 3.14) stays
//! opaque here: [`Payload::Sk`] holds its first inner payload type and raw body (IV,
//! ciphertext, ICV) for the SA layer to decrypt, then [`parse_chain`] parses the plaintext.
//! [`Message::encode`] writes the header, payload headers and lengths.

use std::net::IpAddr;

/// Exchange types (section 3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Payload type numbers (section 3.2).
pub mod ptype {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// Header flags (section 3.1).
pub mod flags {
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

/// Protocol IDs (section 3.3.1).
pub mod proto {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Notify message types (section 3.10.1) used here.
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const NON_FIRST_FRAGMENTS_ALSO: u16 = 16395;
}

/// Transform types and IDs (section 3.3.2, IANA).
pub mod transform {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
    pub const ENCR_AES_CBC: u16 = 12;
    pub const ENCR_AES_GCM_16: u16 = 20;
    pub const PRF_HMAC_SHA1: u16 = 2;
    pub const PRF_HMAC_SHA2_256: u16 = 5;
    pub const PRF_HMAC_SHA2_384: u16 = 6;
    pub const PRF_HMAC_SHA2_512: u16 = 7;
    pub const AUTH_HMAC_SHA1_96: u16 = 2;
    pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
    pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
    pub const AUTH_HMAC_SHA2_512_256: u16 = 14;
    /// Key Length attribute (TV format: AF bit | 14).
    pub const ATTR_KEY_LENGTH: u16 = 0x800e;
}

/// Why a message was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message shorter than the 28-byte IKE header")]
    Short,
    #[error("IKE major version {0} (only 2 is supported)")]
    Version(u8),
    #[error("header length {header} disagrees with the datagram's {actual} bytes")]
    Length { header: u32, actual: usize },
    #[error("payload {ptype}: {what}")]
    Payload { ptype: u8, what: &'static str },
    #[error("unknown payload type {0} marked critical")]
    UnsupportedCritical(u8),
}

fn perr(ptype: u8, what: &'static str) -> ParseError {
    ParseError::Payload { ptype, what }
}

/// The fixed header (section 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next: u8,
    pub version: u8,
    pub exchange: u8,
    pub flags: u8,
    pub msg_id: u32,
    pub length: u32,
}

impl Header {
    pub const LEN: usize = 28;

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }
    pub fn from_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }

    /// Parses just the header (for SPI lookups before anything else).
    pub fn parse(b: &[u8]) -> Result<Header, ParseError> {
        if b.len() < Self::LEN {
            return Err(ParseError::Short);
        }
        let h = Header {
            spi_i: u64::from_be_bytes(b[0..8].try_into().map_err(|_| ParseError::Short)?),
            spi_r: u64::from_be_bytes(b[8..16].try_into().map_err(|_| ParseError::Short)?),
            next: b[16],
            version: b[17],
            exchange: b[18],
            flags: b[19],
            msg_id: u32::from_be_bytes(b[20..24].try_into().map_err(|_| ParseError::Short)?),
            length: u32::from_be_bytes(b[24..28].try_into().map_err(|_| ParseError::Short)?),
        };
        if h.version >> 4 != 2 {
            return Err(ParseError::Version(h.version >> 4));
        }
        Ok(h)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next);
        out.push(0x20);
        out.push(self.exchange);
        out.push(self.flags);
        out.extend_from_slice(&self.msg_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// One transform of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transform {
    pub ttype: u8,
    pub id: u16,
    /// Key Length attribute in bits (AES), if present.
    pub key_bits: Option<u16>,
}

/// One proposal of an SA payload (section 3.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalWire {
    pub num: u8,
    pub protocol: u8,
    /// Empty for the IKE SA in IKE_SA_INIT; 4 bytes for ESP; 8 for an IKE SA rekey.
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// One traffic selector (section 3.13.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    pub ip_proto: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

impl TrafficSelector {
    /// Every address of the family, every protocol and port.
    pub fn any(v6: bool) -> Self {
        if v6 {
            TrafficSelector {
                ip_proto: 0,
                start_port: 0,
                end_port: 65535,
                start: IpAddr::V6(0u128.into()),
                end: IpAddr::V6(u128::MAX.into()),
            }
        } else {
            TrafficSelector {
                ip_proto: 0,
                start_port: 0,
                end_port: 65535,
                start: IpAddr::V4(0u32.into()),
                end: IpAddr::V4(u32::MAX.into()),
            }
        }
    }
}

/// A payload. Unknown non-critical payloads are kept raw (and ignored by the SA layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<ProposalWire>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI {
        id_type: u8,
        data: Vec<u8>,
    },
    IdR {
        id_type: u8,
        data: Vec<u8>,
    },
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify {
        protocol: u8,
        spi: Vec<u8>,
        ntype: u16,
        data: Vec<u8>,
    },
    Delete {
        protocol: u8,
        spis: Vec<Vec<u8>>,
    },
    Vendor(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// Encrypted and authenticated: first inner payload type and the raw body.
    Sk {
        first: u8,
        body: Vec<u8>,
    },
    Other {
        ptype: u8,
        body: Vec<u8>,
    },
}

impl Payload {
    pub fn ptype(&self) -> u8 {
        match self {
            Payload::Sa(_) => ptype::SA,
            Payload::Ke { .. } => ptype::KE,
            Payload::IdI { .. } => ptype::IDI,
            Payload::IdR { .. } => ptype::IDR,
            Payload::Auth { .. } => ptype::AUTH,
            Payload::Nonce(_) => ptype::NONCE,
            Payload::Notify { .. } => ptype::NOTIFY,
            Payload::Delete { .. } => ptype::DELETE,
            Payload::Vendor(_) => ptype::VENDOR,
            Payload::TsI(_) => ptype::TSI,
            Payload::TsR(_) => ptype::TSR,
            Payload::Sk { .. } => ptype::SK,
            Payload::Other { ptype, .. } => *ptype,
        }
    }

    /// The payload's body (after the 4-byte generic header).
    fn body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => {
                for (i, p) in props.iter().enumerate() {
                    let start = out.len();
                    out.push(if i + 1 == props.len() { 0 } else { 2 });
                    out.push(0);
                    out.extend_from_slice(&[0, 0]);
                    out.push(p.num);
                    out.push(p.protocol);
                    out.push(p.spi.len() as u8);
                    out.push(p.transforms.len() as u8);
                    out.extend_from_slice(&p.spi);
                    for (j, t) in p.transforms.iter().enumerate() {
                        out.push(if j + 1 == p.transforms.len() { 0 } else { 3 });
                        out.push(0);
                        let len: u16 = if t.key_bits.is_some() { 12 } else { 8 };
                        out.extend_from_slice(&len.to_be_bytes());
                        out.push(t.ttype);
                        out.push(0);
                        out.extend_from_slice(&t.id.to_be_bytes());
                        if let Some(k) = t.key_bits {
                            out.extend_from_slice(&transform::ATTR_KEY_LENGTH.to_be_bytes());
                            out.extend_from_slice(&k.to_be_bytes());
                        }
                    }
                    let len = (out.len() - start) as u16;
                    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI { id_type, data } | Payload::IdR { id_type, data } => {
                out.extend_from_slice(&[*id_type, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(d) | Payload::Vendor(d) => out.extend_from_slice(d),
            Payload::Notify {
                protocol,
                spi,
                ntype,
                data,
            } => {
                out.push(*protocol);
                out.push(spi.len() as u8);
                out.extend_from_slice(&ntype.to_be_bytes());
                out.extend_from_slice(spi);
                out.extend_from_slice(data);
            }
            Payload::Delete { protocol, spis } => {
                out.push(*protocol);
                out.push(spis.first().map_or(0, |s| s.len() as u8));
                out.extend_from_slice(&(spis.len() as u16).to_be_bytes());
                for s in spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::TsI(ts) | Payload::TsR(ts) => {
                out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
                for t in ts {
                    let (ty, len): (u8, u16) = if t.start.is_ipv4() { (7, 16) } else { (8, 40) };
                    out.push(ty);
                    out.push(t.ip_proto);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&t.start_port.to_be_bytes());
                    out.extend_from_slice(&t.end_port.to_be_bytes());
                    for a in [t.start, t.end] {
                        match a {
                            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                        }
                    }
                }
            }
            Payload::Sk { body, .. } | Payload::Other { body, .. } => out.extend_from_slice(body),
        }
    }
}

/// Payload types this implementation understands (anything else critical is refused).
fn known(t: u8) -> bool {
    matches!(t, 33..=48 | 53)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse_sa(b: &[u8]) -> Result<Vec<ProposalWire>, ParseError> {
    let e = |w| perr(ptype::SA, w);
    let mut props = vec![];
    let mut rest = b;
    loop {
        if rest.len() < 8 {
            return Err(e("proposal shorter than 8 bytes"));
        }
        let last = rest[0];
        let len = be16(rest, 2) as usize;
        if len < 8 || len > rest.len() {
            return Err(e("proposal length out of bounds"));
        }
        let p = &rest[..len];
        let spi_size = p[6] as usize;
        let n_tr = p[7] as usize;
        if 8 + spi_size > len {
            return Err(e("SPI longer than the proposal"));
        }
        let mut prop = ProposalWire {
            num: p[4],
            protocol: p[5],
            spi: p[8..8 + spi_size].to_vec(),
            transforms: Vec::with_capacity(n_tr.min(64)),
        };
        let mut t = &p[8 + spi_size..];
        for k in 0..n_tr {
            if t.len() < 8 {
                return Err(e("transform shorter than 8 bytes"));
            }
            let tlen = be16(t, 2) as usize;
            if tlen < 8 || tlen > t.len() {
                return Err(e("transform length out of bounds"));
            }
            if (k + 1 == n_tr) != (t[0] == 0) {
                return Err(e(
                    "transform count disagrees with the last-substructure marks",
                ));
            }
            let mut key_bits = None;
            let mut a = &t[8..tlen];
            while a.len() >= 4 {
                let at = be16(a, 0);
                if at & 0x8000 != 0 {
                    if at == transform::ATTR_KEY_LENGTH {
                        key_bits = Some(be16(a, 2));
                    }
                    a = &a[4..];
                } else {
                    let l = be16(a, 2) as usize;
                    if 4 + l > a.len() {
                        return Err(e("transform attribute length out of bounds"));
                    }
                    a = &a[4 + l..];
                }
            }
            if !a.is_empty() {
                return Err(e("trailing bytes in transform attributes"));
            }
            prop.transforms.push(Transform {
                ttype: t[4],
                id: be16(t, 6),
                key_bits,
            });
            t = &t[tlen..];
        }
        if !t.is_empty() {
            return Err(e("bytes after the last transform"));
        }
        props.push(prop);
        rest = &rest[len..];
        match last {
            0 if rest.is_empty() => return Ok(props),
            2 if !rest.is_empty() => continue,
            _ => return Err(e("last-proposal mark disagrees with the payload length")),
        }
    }
}

fn parse_ts(t: u8, b: &[u8]) -> Result<Vec<TrafficSelector>, ParseError> {
    let e = |w| perr(t, w);
    if b.len() < 4 {
        return Err(e("shorter than 4 bytes"));
    }
    let n = b[0] as usize;
    let mut rest = &b[4..];
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        if rest.len() < 8 {
            return Err(e("selector shorter than 8 bytes"));
        }
        let len = be16(rest, 2) as usize;
        let (alen, ok) = match rest[0] {
            7 => (4, len == 16),
            8 => (16, len == 40),
            _ => return Err(e("unknown selector type")),
        };
        if !ok || len > rest.len() {
            return Err(e("selector length wrong for its type"));
        }
        let addr = |o: usize| -> IpAddr {
            if alen == 4 {
                IpAddr::V4(
                    <[u8; 4]>::try_from(&rest[o..o + 4])
                        .unwrap_or_default()
                        .into(),
                )
            } else {
                IpAddr::V6(
                    <[u8; 16]>::try_from(&rest[o..o + 16])
                        .unwrap_or_default()
                        .into(),
                )
            }
        };
        out.push(TrafficSelector {
            ip_proto: rest[1],
            start_port: be16(rest, 4),
            end_port: be16(rest, 6),
            start: addr(8),
            end: addr(8 + alen),
        });
        rest = &rest[len..];
    }
    if !rest.is_empty() {
        return Err(e("bytes after the last selector"));
    }
    Ok(out)
}

fn parse_payload(t: u8, b: &[u8]) -> Result<Payload, ParseError> {
    let need = |n: usize, w| if b.len() < n { Err(perr(t, w)) } else { Ok(()) };
    Ok(match t {
        ptype::SA => Payload::Sa(parse_sa(b)?),
        ptype::KE => {
            need(4, "shorter than 4 bytes")?;
            Payload::Ke {
                group: be16(b, 0),
                data: b[4..].to_vec(),
            }
        }
        ptype::IDI | ptype::IDR => {
            need(4, "shorter than 4 bytes")?;
            let (id_type, data) = (b[0], b[4..].to_vec());
            if t == ptype::IDI {
                Payload::IdI { id_type, data }
            } else {
                Payload::IdR { id_type, data }
            }
        }
        ptype::AUTH => {
            need(4, "shorter than 4 bytes")?;
            Payload::Auth {
                method: b[0],
                data: b[4..].to_vec(),
            }
        }
        ptype::NONCE => {
            if !(16..=256).contains(&b.len()) {
                return Err(perr(t, "nonce must be 16..256 bytes (section 3.9)"));
            }
            Payload::Nonce(b.to_vec())
        }
        ptype::NOTIFY => {
            need(4, "shorter than 4 bytes")?;
            let spi_len = b[1] as usize;
            need(4 + spi_len, "SPI longer than the payload")?;
            Payload::Notify {
                protocol: b[0],
                ntype: be16(b, 2),
                spi: b[4..4 + spi_len].to_vec(),
                data: b[4 + spi_len..].to_vec(),
            }
        }
        ptype::DELETE => {
            need(4, "shorter than 4 bytes")?;
            let (size, n) = (b[1] as usize, be16(b, 2) as usize);
            if b.len() != 4 + size * n {
                return Err(perr(
                    t,
                    "SPI size x count disagrees with the payload length",
                ));
            }
            Payload::Delete {
                protocol: b[0],
                spis: if size == 0 {
                    vec![]
                } else {
                    b[4..].chunks(size).map(<[u8]>::to_vec).collect()
                },
            }
        }
        ptype::VENDOR => Payload::Vendor(b.to_vec()),
        ptype::TSI => Payload::TsI(parse_ts(t, b)?),
        ptype::TSR => Payload::TsR(parse_ts(t, b)?),
        _ => Payload::Other {
            ptype: t,
            body: b.to_vec(),
        },
    })
}

/// Parses a payload chain starting with type `first` (a message body or SK plaintext).
pub fn parse_chain(first: u8, mut b: &[u8]) -> Result<Vec<Payload>, ParseError> {
    let mut out = vec![];
    let mut t = first;
    while t != ptype::NONE {
        if b.len() < 4 {
            return Err(perr(t, "generic header truncated"));
        }
        let next = b[0];
        let critical = b[1] & 0x80 != 0;
        let len = be16(b, 2) as usize;
        if len < 4 || len > b.len() {
            return Err(perr(t, "payload length out of bounds"));
        }
        let body = &b[4..len];
        if t == ptype::SK {
            // The last payload of the message by rule (section 3.14).
            out.push(Payload::Sk {
                first: next,
                body: body.to_vec(),
            });
            return Ok(out);
        }
        if !known(t) && critical {
            return Err(ParseError::UnsupportedCritical(t));
        }
        out.push(parse_payload(t, body)?);
        b = &b[len..];
        t = next;
    }
    Ok(out)
}

/// Serializes a payload chain; returns the type of the first payload.
pub fn encode_chain(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let start = out.len();
        let next = match p {
            // SK's "next payload" field is its first inner payload.
            Payload::Sk { first, .. } => *first,
            _ => payloads.get(i + 1).map_or(ptype::NONE, Payload::ptype),
        };
        out.extend_from_slice(&[next, 0, 0, 0]);
        p.body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map_or(ptype::NONE, Payload::ptype)
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses a datagram (without the non-ESP marker of port 4500).
    pub fn parse(b: &[u8]) -> Result<Message, ParseError> {
        let header = Header::parse(b)?;
        if header.length as usize != b.len() {
            return Err(ParseError::Length {
                header: header.length,
                actual: b.len(),
            });
        }
        let payloads = parse_chain(header.next, &b[Header::LEN..])?;
        Ok(Message { header, payloads })
    }

    /// Serializes (the header's `next` and `length` are computed).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(512);
        let first = encode_chain(&self.payloads, &mut body);
        let mut h = self.header;
        h.next = first;
        h.length = (Header::LEN + body.len()) as u32;
        let mut out = Vec::with_capacity(h.length as usize);
        h.write(&mut out);
        out.extend_from_slice(&body);
        out
    }

    /// The first notify of type `t`.
    pub fn notify(&self, t: u16) -> Option<&Payload> {
        find_notify(&self.payloads, t)
    }
}

/// An unencrypted IKE_SA_INIT response holding one notify (errors and COOKIE, sent without
/// creating state, section 2.21.1): the request's header with the responder SPI cleared.
pub fn init_notify_response(request: &Header, ntype: u16, data: Vec<u8>) -> Vec<u8> {
    Message {
        header: Header {
            spi_r: 0,
            flags: flags::RESPONSE,
            ..*request
        },
        payloads: vec![Payload::Notify {
            protocol: 0,
            spi: vec![],
            ntype,
            data,
        }],
    }
    .encode()
}

/// The proposals of the first SA payload.
pub fn proposals(ps: &[Payload]) -> Option<&Vec<ProposalWire>> {
    ps.iter().find_map(|p| match p {
        Payload::Sa(v) => Some(v),
        _ => None,
    })
}

/// The first Nonce payload's data.
pub fn nonce(ps: &[Payload]) -> Option<&[u8]> {
    ps.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_slice()),
        _ => None,
    })
}

/// The first KE payload: DH group and key exchange data.
pub fn ke(ps: &[Payload]) -> Option<(u16, &[u8])> {
    ps.iter().find_map(|p| match p {
        Payload::Ke { group, data } => Some((*group, data.as_slice())),
        _ => None,
    })
}

/// The initiator's traffic selectors (TSi).
pub fn ts_i(ps: &[Payload]) -> Option<&[TrafficSelector]> {
    ps.iter().find_map(|p| match p {
        Payload::TsI(v) => Some(v.as_slice()),
        _ => None,
    })
}

/// The responder's traffic selectors (TSr).
pub fn ts_r(ps: &[Payload]) -> Option<&[TrafficSelector]> {
    ps.iter().find_map(|p| match p {
        Payload::TsR(v) => Some(v.as_slice()),
        _ => None,
    })
}

/// The first notify of type `t` in a payload list.
pub fn find_notify(ps: &[Payload], t: u16) -> Option<&Payload> {
    ps.iter()
        .find(|p| matches!(p, Payload::Notify { ntype, .. } if *ntype == t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            header: Header {
                spi_i: 0x0102030405060708,
                spi_r: 0,
                next: 0,
                version: 0x20,
                exchange: exchange::IKE_SA_INIT,
                flags: flags::INITIATOR,
                msg_id: 0,
                length: 0,
            },
            payloads: vec![
                Payload::Sa(vec![ProposalWire {
                    num: 1,
                    protocol: proto::IKE,
                    spi: vec![],
                    transforms: vec![
                        Transform {
                            ttype: transform::ENCR,
                            id: transform::ENCR_AES_CBC,
                            key_bits: Some(128),
                        },
                        Transform {
                            ttype: transform::PRF,
                            id: transform::PRF_HMAC_SHA2_256,
                            key_bits: None,
                        },
                        Transform {
                            ttype: transform::INTEG,
                            id: transform::AUTH_HMAC_SHA2_256_128,
                            key_bits: None,
                        },
                        Transform {
                            ttype: transform::DH,
                            id: 14,
                            key_bits: None,
                        },
                    ],
                }]),
                Payload::Ke {
                    group: 14,
                    data: vec![7; 256],
                },
                Payload::Nonce(vec![9; 32]),
                Payload::Notify {
                    protocol: 0,
                    spi: vec![],
                    ntype: notify::NAT_DETECTION_SOURCE_IP,
                    data: vec![1; 20],
                },
                Payload::TsI(vec![
                    TrafficSelector::any(false),
                    TrafficSelector::any(true),
                ]),
                Payload::Delete {
                    protocol: proto::ESP,
                    spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let b = m.encode();
        assert_eq!(
            b.len(),
            u32::from_be_bytes(b[24..28].try_into().unwrap()) as usize
        );
        let p = Message::parse(&b).unwrap();
        assert_eq!(p.payloads, m.payloads);
        assert_eq!(p.header.next, ptype::SA);
        assert_eq!(p.encode(), b);
    }

    #[test]
    fn every_truncation_and_every_length_byte_is_an_error_not_a_panic() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Message::parse(&b[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..b.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = b.clone();
                m[i] = v;
                let _ = Message::parse(&m); // must not panic
            }
        }
    }

    #[test]
    fn unknown_critical_payload_is_refused_and_non_critical_kept() {
        let mut m = sample();
        m.payloads.push(Payload::Other {
            ptype: 200,
            body: vec![1, 2, 3],
        });
        let mut b = m.encode();
        assert!(matches!(
            Message::parse(&b).unwrap().payloads.last(),
            Some(Payload::Other { ptype: 200, .. })
        ));
        // Set the critical bit of the last payload's generic header.
        let off = b.len() - 3 - 4;
        b[off + 1] |= 0x80;
        assert_eq!(
            Message::parse(&b),
            Err(ParseError::UnsupportedCritical(200))
        );
    }

    #[test]
    fn wrong_version_and_length_are_named() {
        let mut b = sample().encode();
        b[17] = 0x10;
        assert_eq!(Message::parse(&b), Err(ParseError::Version(1)));
        let mut b = sample().encode();
        b.push(0);
        assert!(matches!(Message::parse(&b), Err(ParseError::Length { .. })));
    }
}
