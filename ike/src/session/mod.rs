//! One IKE SA as a sans-IO state machine (RFC 7296): IKE_SA_INIT (NAT detection,
//! INVALID_KE_PAYLOAD retry, COOKIE), IKE_AUTH with a pre-shared key and the first CHILD_SA
//! in tunnel mode, INFORMATIONAL (DELETE, liveness), retransmission with backoff and replay
//! of the cached response to a duplicate request.
//!
//! Contract: nothing here does I/O or reads a clock. The caller passes `now` (seconds) and a
//! random generator (`fill`) in, and takes [`Output`]s out: datagrams to send (to the peer,
//! on the port the SA uses), the CHILD_SA keys to install in the data plane, state changes
//! and AWS-style log lines. [`IkeSa::poll_timeout`] says when [`IkeSa::handle_timeout`] is
//! due. Malformed, unauthenticated or unexpected messages are dropped (and counted in
//! [`IkeSa::dropped`]) or answered as section 2.21 says; nothing panics on input. A
//! responder's choice is accepted only when it is one of our offers, transform by transform
//! (section 3.3.6), with selectors inside ours; anything else ends that exchange with a log
//! line (an IKE_SA_INIT closes the half-open SA, a CHILD_SA or IKE SA rekey keeps the old
//! SA). CREATE_CHILD_SA rekeys of CHILD and IKE SAs and their collisions run on this state.
//!
//! Layout (strongSwan's task-per-exchange shape): this module holds the SA's state, the
//! dispatch of incoming messages ([`IkeSa::handle`]), sealing and retransmission. Our one
//! outstanding request carries the exchange it belongs to as a `Task` (IKE_SA_INIT,
//! IKE_AUTH, liveness, CHILD_SA rekey or delete, IKE SA rekey or delete), so a response is
//! dispatched by what we asked, and one of another exchange type is dropped. Each
//! exchange is a module of its own ([`ike_sa_init`], [`ike_auth`], [`child_rekey`],
//! [`ike_rekey`], [`informational`]), and [`negotiate`] holds what they share about
//! proposals and selectors.

use crate::algorithms::{Cipher, Hash};
use crate::dh::{self, KeyPair};
use crate::keys::{self, ChildKeys, Encr, IkeKeys, Integ, Prf, SkCipher};
use crate::msg::{
    self, Header, Message, Payload, ProposalWire, TrafficSelector, Transform, exchange, flags,
    notify, proto, ptype, transform as tt,
};
use crate::proposal::{self, Proposal};
use std::net::IpAddr;
use zeroize::Zeroizing;

/// The value of a `Result<T, String>` from sealing a message, or: the IKE SA is closed with
/// the reason (a cipher that cannot be used; the checks on the chosen proposal make this
/// unreachable, but the crypto path stays total: never a panic on a peer's choice).
macro_rules! sealed {
    ($sa:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(why) => return $sa.close(why),
        }
    };
}

/// How long a replaced IKE SA is kept after a rekey, to answer a retransmitted DELETE or
/// request (longer while its own DELETE is still being retransmitted).
pub const RETIRED_LINGER_S: f64 = 60.0;
/// Replaced IKE SAs kept at most (the old one and a redundant one, with room to spare).
const MAX_RETIRED: usize = 4;

pub mod child_rekey;
pub mod ike_auth;
pub mod ike_rekey;
pub mod ike_sa_init;
pub mod informational;
pub mod negotiate;

use negotiate::*;

/// What an IKE SA is configured with (one AWS tunnel's phase 1 / phase 2 options).
#[derive(Clone)]
pub struct Config {
    pub local_addr: IpAddr,
    pub peer_addr: IpAddr,
    pub psk: Zeroizing<Vec<u8>>,
    /// AWS names, in AWS's ascending order (the responder's preference).
    pub p1_enc: Vec<String>,
    pub p1_integ: Vec<String>,
    pub p1_dh: Vec<u16>,
    pub p2_enc: Vec<String>,
    pub p2_integ: Vec<String>,
    /// Phase 2 DH groups (PFS for CHILD_SA rekeys; not used by the first CHILD_SA).
    pub p2_dh: Vec<u16>,
    /// Our side's and the peer's protected networks.
    pub local_ts: TrafficSelector,
    pub remote_ts: TrafficSelector,
    /// Force UDP encapsulation (NAT-T `force`): pretend a NAT in our NAT_DETECTION hash.
    pub force_nat_t: bool,
    /// Retransmissions of a request before the exchange fails.
    pub retransmits: u32,
    /// First retransmission timeout (seconds); doubles every time.
    pub retransmit_base_s: f64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Config({} -> {}, psk <redacted>)",
            self.local_addr, self.peer_addr
        )
    }
}

/// A CHILD_SA ready for the data plane.
#[derive(Debug)]
pub struct ChildSa {
    /// SPI of our inbound SA (we chose it), and of our outbound SA (the peer chose it).
    pub spi_in: u32,
    pub spi_out: u32,
    /// AWS names of the chosen transforms.
    pub encryption: String,
    pub integrity: Option<String>,
    /// Keys of our inbound and outbound SAs (GCM: key | 4-byte salt).
    pub enc_in: Zeroizing<Vec<u8>>,
    pub int_in: Zeroizing<Vec<u8>>,
    pub enc_out: Zeroizing<Vec<u8>>,
    pub int_out: Zeroizing<Vec<u8>>,
    pub local_ts: TrafficSelector,
    pub remote_ts: TrafficSelector,
    /// UDP-encapsulate ESP (a NAT was detected, or forced).
    pub nat_t: bool,
    /// Send with the new outbound SA at once (IKE_AUTH, or we initiated the rekey). False
    /// for the responder of a rekey: the initiator may not have installed its new inbound SA
    /// yet, so keep sending with the old SA until its DELETE arrives (RFC 7296 section 2.8).
    pub switch_now: bool,
    /// The SA's lifetime when the negotiation set one shorter than configured (IKEv1:
    /// the peer's proposal or RESPONDER-LIFETIME); None: the configured phase 2 lifetime.
    pub lifetime_s: Option<u32>,
}

/// The negotiated parts of a new CHILD_SA (everything but its keys and NAT state).
pub(super) struct ChildParts<'a> {
    pub spi_in: u32,
    pub spi_out: u32,
    pub encryption: &'a str,
    pub integrity: Option<&'a str>,
    pub local_ts: TrafficSelector,
    pub remote_ts: TrafficSelector,
    pub switch_now: bool,
}

/// What the caller must do.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram to the peer (prefix the non-ESP marker when `nat_t` is true and
    /// the message goes to port 4500).
    Send { data: Vec<u8>, nat_t: bool },
    /// A CHILD_SA is established: install its SAs.
    ChildUp(Box<ChildSa>),
    /// The IKE SA is established.
    IkeUp,
    /// The IKE SA is gone (failed or deleted); with the reason, for the logs.
    Closed(String),
    /// A line for the tunnel log (AWS wording where AWS has one).
    Log(String),
    /// A CHILD_SA is gone (deleted after a rekey, or by the peer): remove our inbound SA
    /// with this SPI (the outbound side already moved to the new SA).
    ChildDown { spi_in: u32 },
}

/// Our outstanding request (we keep a window of one, RFC 7296 section 2.3): the datagram,
/// its retransmission state, and the exchange it belongs to.
#[derive(Debug)]
struct Request {
    id: u32,
    bytes: Vec<u8>,
    /// Sends so far, and when the next retransmission is due.
    sends: u32,
    due: f64,
    task: Task,
}

/// The exchange our outstanding request belongs to (strongSwan's active task), with what
/// its response is checked against.
#[derive(Debug)]
enum Task {
    /// IKE_SA_INIT (section 1.2).
    IkeSaInit,
    /// IKE_AUTH (section 1.2).
    IkeAuth,
    /// An empty INFORMATIONAL (liveness check, section 1.4).
    Liveness,
    /// INFORMATIONAL { D(IKE) } of this IKE SA (a replaced SA's DELETE).
    DeleteIke,
    /// CREATE_CHILD_SA rekeying a CHILD_SA (section 1.3.3).
    RekeyChild(Rekey),
    /// INFORMATIONAL { D(ESP) } of the CHILD_SA with this inbound SPI (section 1.4.1).
    DeleteChild { spi_in: u32 },
    /// CREATE_CHILD_SA rekeying this IKE SA (section 1.3.2).
    RekeyIke(IkeRekey),
}

impl Task {
    /// The exchange, for log lines.
    fn exchange(&self) -> &'static str {
        match self {
            Task::IkeSaInit => "IKE_SA_INIT",
            Task::IkeAuth => "IKE_AUTH",
            Task::RekeyChild(_) | Task::RekeyIke(_) => "CREATE_CHILD_SA",
            Task::Liveness | Task::DeleteIke | Task::DeleteChild { .. } => "INFORMATIONAL",
        }
    }
}

/// A CREATE_CHILD_SA we started (section 1.3.3) and its outcome.
#[derive(Debug)]
struct Rekey {
    /// Our inbound SPI of the CHILD_SA being rekeyed, and of the new one.
    old_in: u32,
    new_in: u32,
    ni: Vec<u8>,
    kp: Option<KeyPair>,
    /// The proposals we sent: the response must choose from them.
    offered: Vec<ProposalWire>,
}

/// The peer's rekey of the same CHILD_SA while ours was outstanding (a collision).
#[derive(Debug)]
struct PeerRekey {
    old_in: u32,
    new_in: u32,
    nonces: [Vec<u8>; 2],
}

/// An IKE SA rekey we started (section 1.3.2).
#[derive(Debug)]
struct IkeRekey {
    /// Our SPI of the new IKE SA.
    spi: u64,
    ni: Vec<u8>,
    kp: KeyPair,
    /// The proposals we sent: the response must choose from them.
    offered: Vec<ProposalWire>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    InitSent,
    AuthSent,
    /// Responder waiting for IKE_AUTH.
    InitDone,
    Established,
    Closed,
}

/// Chosen IKE SA transforms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IkeSuite {
    encr: Encr,
    integ: Option<Integ>,
    prf: Prf,
    /// The IKE SA's DH group (for logs and IKE SA rekeys).
    pub(crate) dh: u16,
}

/// Whether an inbound SPI is already installed on the gateway (see [`IkeSa::set_spi_taken`]).
pub type SpiTaken = std::sync::Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// One IKE SA.
pub struct IkeSa {
    cfg: Config,
    pub initiator: bool,
    pub state: State,
    pub spi_i: u64,
    pub spi_r: u64,
    suite: Option<IkeSuite>,
    dh: Option<KeyPair>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<IkeKeys>,
    /// Our first message (IKE_SA_INIT request or response), signed in AUTH.
    first_msg: Vec<u8>,
    /// The peer's first message.
    peer_first: Vec<u8>,
    cookie: Option<Vec<u8>>,
    /// Next message ID we send a request with / expect a request with.
    next_req_id: u32,
    next_peer_id: u32,
    /// Our one outstanding request and the exchange it belongs to.
    request: Option<Request>,
    /// Last response sent (id, bytes), for duplicate requests.
    last_resp: Option<(u32, Vec<u8>)>,
    child_spi: u32,
    /// Live CHILD_SAs: (our inbound SPI, our outbound SPI).
    children: Vec<(u32, u32)>,
    peer_rekey: Option<PeerRekey>,
    /// IKE SAs this one replaced (the old one, a redundant one after a collision), each kept
    /// until the given time, and while its own request is outstanding, to answer or finish its
    /// DELETE (or replay a lost response).
    retired: Vec<(Box<IkeSa>, f64)>,
    /// This context is a replaced IKE SA: CREATE_CHILD_SA requests get TEMPORARY_FAILURE
    /// (section 2.25.2).
    retiring: bool,
    /// The new IKE SA the peer made with a rekey request we answered while our own IKE SA
    /// rekey was outstanding (section 2.8.2): which one survives is decided once ours ends.
    peer_ike_new: Option<Box<IkeSa>>,
    /// IKE SA rekeys done.
    pub ike_rekeys: u32,
    /// Rekey collisions seen (CHILD_SA and IKE SA, section 2.8.1 / 2.8.2).
    pub collisions: u32,
    /// An authenticated request carried an unknown payload marked critical (section 2.5).
    unsupported_critical: Option<u8>,
    pub nat_detected: bool,
    /// Messages dropped (malformed, bad ICV, unexpected).
    pub dropped: u64,
    /// Says whether an inbound SPI is taken elsewhere (the gateway's other SAs): ours are
    /// drawn until one is free.
    spi_taken: Option<SpiTaken>,
    /// Messages that authenticated (their ICV verified). The shell changes what it knows of
    /// the peer (its port after a NAT-T float, DPD liveness) only when this moves.
    pub verified: u64,
    pub last_rx: f64,
}

impl std::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IkeSa({:016x}/{:016x}, {:?}, {})",
            self.spi_i,
            self.spi_r,
            self.state,
            if self.initiator {
                "initiator"
            } else {
                "responder"
            }
        )
    }
}

/// The payloads of a response that is one IKE-level notification (an error or
/// TEMPORARY_FAILURE): N(type, data), no SPI.
fn notify_only(ntype: u16, data: Vec<u8>) -> Vec<Payload> {
    vec![Payload::Notify {
        protocol: 0,
        spi: vec![],
        ntype,
        data,
    }]
}

fn nat_hash(spi_i: u64, spi_r: u64, addr: IpAddr, port: u16) -> Vec<u8> {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(port.to_be_bytes());
    h.finalize().to_vec()
}

fn id_payload_body(addr: IpAddr) -> Vec<u8> {
    let mut b = vec![if addr.is_ipv4() { 1 } else { 5 }, 0, 0, 0];
    match addr {
        IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
    }
    b
}

pub(crate) fn random_spi64(fill: &mut dyn FnMut(&mut [u8])) -> u64 {
    loop {
        let mut b = [0u8; 8];
        fill(&mut b);
        let v = u64::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

pub(crate) fn random_spi32(fill: &mut dyn FnMut(&mut [u8])) -> u32 {
    loop {
        let mut b = [0u8; 4];
        fill(&mut b);
        let v = u32::from_be_bytes(b);
        if v >= 0x100 {
            return v;
        }
    }
}

pub(crate) fn nonce(fill: &mut dyn FnMut(&mut [u8])) -> Vec<u8> {
    let mut n = vec![0u8; 32];
    fill(&mut n);
    n
}

impl IkeSa {
    /// An authenticated response to our outstanding request: decrypted and verified (else
    /// dropped and counted by `decrypt`), the request no longer pending, the peer heard from.
    /// Returns the payloads and the exchange the request belonged to.
    fn accept_response(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
    ) -> Option<(Vec<Payload>, Task)> {
        let ps = self.decrypt(raw, m)?;
        let task = self.request.take()?.task;
        self.last_rx = now;
        Some((ps, task))
    }

    /// The exchange of our outstanding request, if any.
    fn task(&self) -> Option<&Task> {
        self.request.as_ref().map(|r| &r.task)
    }

    /// An authenticated request from the peer: decrypted and verified, the peer heard from,
    /// its next message ID the one after this.
    pub(super) fn accept_request(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
    ) -> Option<Vec<Payload>> {
        let ps = self.decrypt(raw, m)?;
        self.last_rx = now;
        self.next_peer_id = m.header.msg_id + 1;
        Some(ps)
    }

    /// The one place a CHILD_SA is assembled (IKE_AUTH and CREATE_CHILD_SA, both roles):
    /// KEYMAT holds the initiator-to-responder keys first (RFC 7296 section 2.17), so the
    /// side that started the exchange sends with the `_i` half and receives with the `_r`
    /// half. Records the SA among this IKE SA's children.
    pub(super) fn child_up(&mut self, ck: ChildKeys, we_initiated: bool, p: ChildParts) -> Output {
        self.children.push((p.spi_in, p.spi_out));
        let ChildKeys {
            enc_i,
            int_i,
            enc_r,
            int_r,
        } = ck;
        let ((enc_out, int_out), (enc_in, int_in)) = if we_initiated {
            ((enc_i, int_i), (enc_r, int_r))
        } else {
            ((enc_r, int_r), (enc_i, int_i))
        };
        Output::ChildUp(Box::new(ChildSa {
            spi_in: p.spi_in,
            spi_out: p.spi_out,
            encryption: p.encryption.to_string(),
            integrity: p.integrity.map(str::to_string),
            enc_in,
            int_in,
            enc_out,
            int_out,
            local_ts: p.local_ts,
            remote_ts: p.remote_ts,
            nat_t: self.nat_detected,
            switch_now: p.switch_now,
            lifetime_s: None,
        }))
    }

    fn new(cfg: Config, initiator: bool, spi_i: u64, spi_r: u64, now: f64) -> IkeSa {
        IkeSa {
            cfg,
            initiator,
            state: if initiator {
                State::InitSent
            } else {
                State::InitDone
            },
            spi_i,
            spi_r,
            suite: None,
            dh: None,
            ni: vec![],
            nr: vec![],
            keys: None,
            first_msg: vec![],
            peer_first: vec![],
            cookie: None,
            next_req_id: 0,
            next_peer_id: 0,
            request: None,
            last_resp: None,
            child_spi: 0,
            children: vec![],
            peer_rekey: None,
            retired: vec![],
            retiring: false,
            peer_ike_new: None,
            ike_rekeys: 0,
            collisions: 0,
            unsupported_critical: None,
            nat_detected: false,
            dropped: 0,
            verified: 0,
            spi_taken: None,
            last_rx: now,
        }
    }

    /// Tells the SA which inbound SPIs are installed elsewhere on the gateway: the CHILD_SA
    /// SPIs it draws avoid them (and its own), so a new SA never replaces another.
    pub fn set_spi_taken(&mut self, taken: SpiTaken) {
        self.spi_taken = Some(taken);
    }

    /// A random inbound SPI no SA of the gateway uses (at most 64 draws: with 2^32 values
    /// a gateway that is that full has bigger problems).
    fn new_spi(&self, fill: &mut dyn FnMut(&mut [u8])) -> u32 {
        let mut v = random_spi32(fill);
        for _ in 0..64 {
            let taken = self.children.iter().any(|c| c.0 == v)
                || self.spi_taken.as_ref().is_some_and(|f| f(v));
            if !taken {
                break;
            }
            v = random_spi32(fill);
        }
        v
    }

    fn header(&self, ex: u8, msg_id: u32, response: bool) -> Header {
        let mut f = 0;
        if self.initiator {
            f |= flags::INITIATOR;
        }
        if response {
            f |= flags::RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next: 0,
            version: 0x20,
            exchange: ex,
            flags: f,
            msg_id,
            length: 0,
        }
    }

    fn send_request(&mut self, id: u32, bytes: Vec<u8>, task: Task, now: f64) -> Output {
        self.request = Some(Request {
            id,
            bytes: bytes.clone(),
            sends: 1,
            due: now + self.cfg.retransmit_base_s,
            task,
        });
        Output::Send {
            data: bytes,
            nat_t: self.nat_detected,
        }
    }

    fn send_response(&mut self, id: u32, bytes: Vec<u8>) -> Output {
        self.last_resp = Some((id, bytes.clone()));
        Output::Send {
            data: bytes,
            nat_t: self.nat_detected,
        }
    }

    /// The cipher we send with / receive with.
    fn ciphers(&self) -> Result<(SkCipher, SkCipher), String> {
        let (Some(k), Some(s)) = (self.keys.as_ref(), self.suite) else {
            return Err("no IKE SA keys yet".into());
        };
        let bad = |e: keys::SkError| format!("IKE SA cipher: {e}");
        let i = SkCipher::new(s.encr, s.integ, &k.sk_ei, &k.sk_ai).map_err(bad)?;
        let r = SkCipher::new(s.encr, s.integ, &k.sk_er, &k.sk_ar).map_err(bad)?;
        Ok(if self.initiator { (i, r) } else { (r, i) })
    }

    /// An encrypted message with `inner` payloads.
    fn encrypted(
        &self,
        ex: u8,
        id: u32,
        response: bool,
        inner: &[Payload],
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Vec<u8>, String> {
        let (out, _) = self.ciphers()?;
        let mut plain = vec![];
        let first = msg::encode_chain(inner, &mut plain);
        let body_len = out.body_len(plain.len());
        let mut h = self.header(ex, id, response);
        h.next = ptype::SK;
        h.length = (Header::LEN + 4 + body_len) as u32;
        let mut m = Message {
            header: h,
            payloads: vec![],
        }
        .encode();
        // encode() recomputed next/length for an empty body: restore them, add the SK header.
        m[16] = ptype::SK;
        m[24..28].copy_from_slice(&h.length.to_be_bytes());
        m.extend_from_slice(&[first, 0]);
        m.extend_from_slice(&((4 + body_len) as u16).to_be_bytes());
        let mut iv = [0u8; 16];
        fill(&mut iv);
        let body = out
            .seal(&m, &plain, &iv)
            .map_err(|e| format!("IKE SA cipher: {e}"))?;
        m.extend_from_slice(&body);
        Ok(m)
    }

    /// Decrypts an SK message; None (and counted) when it does not authenticate.
    fn decrypt(&mut self, raw: &[u8], m: &Message) -> Option<Vec<Payload>> {
        let Some(Payload::Sk { first, body }) = m.payloads.last() else {
            self.dropped += 1;
            return None;
        };
        let Ok((_, inb)) = self.ciphers() else {
            self.dropped += 1;
            return None;
        };
        let head = &raw[..raw.len() - body.len()];
        let Some(plain) = inb.open(head, body) else {
            self.dropped += 1;
            return None;
        };
        self.verified += 1;
        match msg::parse_chain(*first, &plain) {
            Ok(ps) => Some(ps),
            Err(e) => {
                if let msg::ParseError::UnsupportedCritical(t) = e {
                    self.unsupported_critical = Some(t);
                }
                self.dropped += 1;
                None
            }
        }
    }

    /// Handles a datagram for this SA (the caller routed it here by SPI).
    pub fn handle(&mut self, raw: &[u8], now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        let Ok(m) = Message::parse(raw) else {
            self.dropped += 1;
            return vec![];
        };
        let h = m.header;
        if let Some(k) = self
            .retired
            .iter()
            .position(|(o, _)| h.spi_i == o.spi_i && h.spi_r == o.spi_r)
        {
            // A replaced IKE SA: it answers (or finishes) its DELETE. The CHILD_SAs live in
            // this one; a CHILD_SA DELETE the peer still sends on the old SA applies to them.
            let old = &mut self.retired[k].0;
            old.children = self.children.clone();
            let v0 = old.verified;
            let out = old.handle(raw, now, fill);
            self.verified += old.verified - v0;
            let left = std::mem::take(&mut old.children);
            self.last_rx = self.last_rx.max(old.last_rx);
            self.children.retain(|c| left.contains(c));
            return out
                .into_iter()
                .filter(|o| matches!(o, Output::Send { .. } | Output::ChildDown { .. }))
                .collect();
        }
        if h.spi_i != self.spi_i || (h.spi_r != self.spi_r && !(self.state == State::InitSent)) {
            self.dropped += 1;
            return vec![];
        }
        // Responses to our request.
        if h.is_response() {
            let Some(req) = self.request.as_ref().filter(|r| r.id == h.msg_id) else {
                self.dropped += 1;
                return vec![];
            };
            let out = match (self.state, h.exchange, &req.task) {
                (State::InitSent, exchange::IKE_SA_INIT, Task::IkeSaInit) => {
                    self.on_init_response(raw, &m, now, fill)
                }
                (State::AuthSent, exchange::IKE_AUTH, Task::IkeAuth) => {
                    self.on_auth_response(raw, &m, now)
                }
                (
                    State::Established,
                    exchange::INFORMATIONAL,
                    Task::Liveness | Task::DeleteIke | Task::DeleteChild { .. },
                ) => match self.accept_response(raw, &m, now) {
                    Some((_, Task::DeleteChild { spi_in })) => vec![Output::ChildDown { spi_in }],
                    _ => vec![],
                },
                (State::Established, exchange::CREATE_CHILD_SA, Task::RekeyIke(_)) => {
                    self.on_ike_rekey_response(raw, &m, now, fill)
                }
                (State::Established, exchange::CREATE_CHILD_SA, Task::RekeyChild(_)) => {
                    self.on_rekey_response(raw, &m, now, fill)
                }
                _ => {
                    self.dropped += 1;
                    vec![]
                }
            };
            return out;
        }
        // Requests from the peer: a retransmitted one gets the cached response again.
        if let Some((id, resp)) = &self.last_resp
            && *id == h.msg_id
        {
            return vec![Output::Send {
                data: resp.clone(),
                nat_t: self.nat_detected,
            }];
        }
        if h.msg_id != self.next_peer_id {
            self.dropped += 1;
            return vec![];
        }
        let out = match (self.state, h.exchange) {
            (State::InitDone, exchange::IKE_AUTH) => self.on_auth_request(raw, &m, now, fill),
            (State::Established, exchange::INFORMATIONAL) => {
                self.on_informational(raw, &m, now, fill)
            }
            (State::Established | State::Closed, exchange::CREATE_CHILD_SA) if self.retiring => {
                self.refuse_while_retiring(raw, &m, now, fill)
            }
            (State::Established, exchange::CREATE_CHILD_SA) => {
                self.on_rekey_request(raw, &m, now, fill)
            }
            _ => {
                self.dropped += 1;
                vec![]
            }
        };
        if let Some(t) = self.unsupported_critical.take()
            && out.is_empty()
            && self.keys.is_some()
        {
            // Authenticated, but with an unknown critical payload: reject the request
            // (section 2.5) so the peer does not retransmit it forever.
            let id = h.msg_id;
            self.next_peer_id = id + 1;
            let inner = notify_only(notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t]);
            let bytes = sealed!(self, self.encrypted(h.exchange, id, true, &inner, fill));
            return vec![
                self.send_response(id, bytes),
                Output::Log(format!(
                    "request {id} rejected: unsupported critical payload type {t}"
                )),
            ];
        }
        out
    }

    fn close(&mut self, why: String) -> Vec<Output> {
        self.state = State::Closed;
        self.request = None;
        vec![Output::Log(why.clone()), Output::Closed(why)]
    }

    /// When `handle_timeout` must run next (None: nothing pending): our outstanding
    /// request, a replaced IKE SA's request, or the end of a replaced IKE SA's stay.
    pub fn poll_timeout(&self) -> Option<f64> {
        let own = self.request.as_ref().map(|r| r.due);
        let retired = self
            .retired
            .iter()
            .map(|(o, until)| o.request.as_ref().map_or(*until, |r| r.due))
            .min_by(f64::total_cmp);
        match (own, retired) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Retransmits outstanding requests with exponential backoff, or gives up; forgets
    /// replaced IKE SAs whose time is over. A replaced IKE SA that gives up (its DELETE
    /// unanswered) just goes: the live SA is not affected.
    pub fn handle_timeout(&mut self, now: f64) -> Vec<Output> {
        let mut out = vec![];
        for (old, _) in &mut self.retired {
            out.extend(
                old.retransmit(now)
                    .into_iter()
                    .filter(|o| matches!(o, Output::Send { .. })),
            );
        }
        self.retired
            .retain(|(o, until)| o.request.is_some() || now < *until);
        out.extend(self.retransmit(now));
        out
    }

    fn retransmit(&mut self, now: f64) -> Vec<Output> {
        let Some(r) = self.request.as_mut() else {
            return vec![];
        };
        if now < r.due {
            return vec![];
        }
        if r.sends > self.cfg.retransmits {
            let why = format!(
                "{} timed out after {} retransmits (request id={})",
                r.task.exchange(),
                r.sends - 1,
                r.id
            );
            return self.close(why);
        }
        r.due = now + self.cfg.retransmit_base_s * f64::from(1u32 << r.sends.min(16));
        r.sends += 1;
        vec![Output::Send {
            data: r.bytes.clone(),
            nat_t: self.nat_detected,
        }]
    }
    /// Phase 1 (this IKE SA) and phase 2 (its CHILD_SAs) states: `Negotiating` until
    /// IKE_AUTH (and the first CHILD_SA) completes, `Rekeying` while a rekey of that phase is
    /// in progress (our exchange outstanding, or old and new CHILD_SAs both live until the
    /// old one's DELETE), `Down` once closed or without CHILD_SAs.
    pub fn phases(&self) -> (Phase, Phase) {
        let p1 = match self.state {
            State::InitSent | State::AuthSent | State::InitDone => Phase::Negotiating,
            State::Established
                if matches!(self.task(), Some(Task::RekeyIke(_)))
                    || self.peer_ike_new.is_some() =>
            {
                Phase::Rekeying
            }
            State::Established => Phase::Established,
            State::Closed => Phase::Down,
        };
        let rekeying = matches!(self.task(), Some(Task::RekeyChild(_)));
        (p1, Phase::phase2(self.children.len(), p1, false, rekeying))
    }

    /// The DH group of the IKE SA, once chosen.
    pub fn dh_group(&self) -> Option<u16> {
        self.suite.map(|s| s.dh)
    }
    /// Our inbound SPIs of the live CHILD_SAs.
    pub fn children(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.0).collect()
    }

    /// Whether a datagram with these SPIs belongs to this SA (or to the one it replaced).
    pub fn owns(&self, spi_i: u64, spi_r: u64) -> bool {
        (spi_i == self.spi_i
            && (spi_r == self.spi_r || spi_r == 0 || self.state == State::InitSent))
            || self
                .retired
                .iter()
                .any(|(o, _)| o.spi_i == spi_i && o.spi_r == spi_r)
    }

    /// The Wireshark/tshark `ikev2_decryption_table` line of this IKE SA (debug key export,
    /// off by default; byte fields are unquoted hex as the UAT parser wants).
    pub fn wireshark_key_line(&self) -> Option<String> {
        let (k, s) = (self.keys.as_ref()?, self.suite?);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let enc = match s.encr {
            Encr::AesCbc(b) => format!("AES-CBC-{b} [RFC3602]"),
            Encr::AesGcm16(b) => format!("AES-GCM-{b} with 16 octet ICV [RFC5282]"),
        };
        let integ = match s.integ {
            None => "NONE [RFC4306]",
            Some(Integ::Sha1_96) => "HMAC_SHA1_96 [RFC2404]",
            Some(Integ::Sha256_128) => "HMAC_SHA2_256_128 [RFC4868]",
            Some(Integ::Sha384_192) => "HMAC_SHA2_384_192 [RFC4868]",
            Some(Integ::Sha512_256) => "HMAC_SHA2_512_256 [RFC4868]",
        };
        Some(format!(
            "{:016x},{:016x},{},{},\"{enc}\",{},{},\"{integ}\"",
            self.spi_i,
            self.spi_r,
            hex(&k.sk_ei),
            hex(&k.sk_er),
            hex(&k.sk_ai),
            hex(&k.sk_ar)
        ))
    }
}

/// The state of a phase as the AWS tunnel log reports it (`ike_phase1_state` /
/// `ike_phase2_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Negotiating,
    Established,
    Rekeying,
    Down,
}

impl Phase {
    /// Phase 2's state from the live CHILD_SAs (IPsec SAs) and phase 1: `Negotiating` while
    /// the first is being made (`negotiating`: a first one is under way on an established
    /// phase 1), `Rekeying` with two live or our rekey out, `Down` without any.
    pub(crate) fn phase2(children: usize, p1: Phase, negotiating: bool, rekeying: bool) -> Phase {
        match (children, p1) {
            (0, Phase::Negotiating) => Phase::Negotiating,
            (0, _) if negotiating && p1 != Phase::Down => Phase::Negotiating,
            (0, _) | (_, Phase::Down) => Phase::Down,
            (n, _) if n > 1 || rekeying => Phase::Rekeying,
            _ => Phase::Established,
        }
    }
}
