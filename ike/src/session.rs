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

/// A CREATE_CHILD_SA we started (section 1.3.3) and its outcome.
#[derive(Debug)]
struct Rekey {
    id: u32,
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
    id: u32,
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
    /// Outstanding request: (id, bytes, sends so far, next retransmission time).
    pending: Option<(u32, Vec<u8>, u32, f64)>,
    /// Last response sent (id, bytes), for duplicate requests.
    last_resp: Option<(u32, Vec<u8>)>,
    child_spi: u32,
    /// Live CHILD_SAs: (our inbound SPI, our outbound SPI).
    children: Vec<(u32, u32)>,
    rekey: Option<Rekey>,
    peer_rekey: Option<PeerRekey>,
    /// Our inbound SPI whose DELETE exchange is outstanding.
    deleting: Option<u32>,
    /// Our outstanding IKE SA rekey.
    ike_rekey: Option<IkeRekey>,
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

fn enc_transform(name: &str) -> Option<Transform> {
    let (id, bits) = Cipher::from_name(name)?.transform();
    Some(Transform {
        ttype: tt::ENCR,
        id,
        key_bits: Some(bits),
    })
}

fn enc_name(t: &Transform) -> Option<&'static str> {
    Cipher::from_transform(t.id, t.key_bits).map(Cipher::name)
}

fn integ_of(name: &str) -> Option<(Integ, Prf)> {
    Hash::from_name(name).map(|h| (h.integ(), h.prf()))
}

fn integ_name(i: Integ) -> &'static str {
    Hash::from_integ(i).name()
}

fn is_gcm(name: &str) -> bool {
    Cipher::from_name(name).is_some_and(Cipher::is_aead)
}

/// The initiator's SA payload: a proposal of the CBC ciphers with integrity, and one of the
/// GCM ciphers (combined-mode ciphers must not share a proposal with integrity, section 3.3).
fn build_proposals(
    protocol: u8,
    spi: &[u8],
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    with_prf: bool,
) -> Vec<ProposalWire> {
    let mut out = vec![];
    for gcm in [false, true] {
        let encs: Vec<Transform> = enc
            .iter()
            .filter(|e| is_gcm(e) == gcm)
            .filter_map(|e| enc_transform(e))
            .collect();
        if encs.is_empty() {
            continue;
        }
        let mut ts = encs;
        if with_prf {
            ts.extend(
                integ
                    .iter()
                    .filter_map(|i| integ_of(i))
                    .map(|(_, p)| Transform {
                        ttype: tt::PRF,
                        id: p.id(),
                        key_bits: None,
                    }),
            );
        }
        if !gcm {
            ts.extend(
                integ
                    .iter()
                    .filter_map(|i| integ_of(i))
                    .map(|(i, _)| Transform {
                        ttype: tt::INTEG,
                        id: i.id(),
                        key_bits: None,
                    }),
            );
        }
        ts.extend(dh.iter().map(|g| Transform {
            ttype: tt::DH,
            id: *g,
            key_bits: None,
        }));
        if protocol == proto::ESP {
            ts.push(Transform {
                ttype: tt::ESN,
                id: 0,
                key_bits: None,
            });
        }
        out.push(ProposalWire {
            num: out.len() as u8 + 1,
            protocol,
            spi: spi.to_vec(),
            transforms: ts,
        });
    }
    out
}

/// The peer's proposals in AWS names (for [`proposal::select`]).
fn as_names(p: &ProposalWire) -> Proposal {
    let mut r = Proposal {
        encryption: vec![],
        integrity: vec![],
        dh: vec![],
    };
    for t in &p.transforms {
        match t.ttype {
            tt::ENCR => r.encryption.extend(enc_name(t).map(str::to_string)),
            tt::INTEG => r
                .integrity
                .extend(Integ::from_id(t.id).map(|i| integ_name(i).to_string())),
            tt::DH => r.dh.push(t.id),
            _ => {}
        }
    }
    r
}

/// The chosen transforms of one proposal (responder side), with the PRF for IKE.
struct Chosen {
    num: u8,
    spi: Vec<u8>,
    enc: String,
    integ: Option<String>,
    prf: Option<Prf>,
    dh: Option<u16>,
}

fn choose(
    props: &[ProposalWire],
    protocol: u8,
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    need_dh: bool,
) -> Option<Chosen> {
    let props: Vec<&ProposalWire> = props.iter().filter(|p| p.protocol == protocol).collect();
    let names: Vec<Proposal> = props.iter().map(|p| as_names(p)).collect();
    let c = proposal::select(enc, integ, dh, &names, need_dh)?;
    // The first offered proposal that has every chosen transform (and a PRF for IKE).
    for (p, n) in props.iter().zip(&names) {
        let has_enc = n
            .encryption
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&c.encryption));
        let has_int = c
            .integrity
            .as_ref()
            .is_none_or(|i| n.integrity.iter().any(|x| x.eq_ignore_ascii_case(i)));
        let has_dh = c.dh.is_none_or(|g| n.dh.contains(&g));
        if !(has_enc && has_int && has_dh) {
            continue;
        }
        let prf = if protocol == proto::IKE {
            // The lowest local integrity name whose PRF the peer offers.
            let offered: Vec<u16> = p
                .transforms
                .iter()
                .filter(|t| t.ttype == tt::PRF)
                .map(|t| t.id)
                .collect();
            let pick = integ
                .iter()
                .filter_map(|i| integ_of(i))
                .map(|(_, p)| p)
                .find(|p| offered.contains(&p.id()));
            match pick {
                Some(p) => Some(p),
                None => continue,
            }
        } else {
            None
        };
        return Some(Chosen {
            num: p.num,
            spi: p.spi.clone(),
            enc: c.encryption,
            integ: c.integrity,
            prf,
            dh: c.dh,
        });
    }
    None
}

fn chosen_proposal(c: &Chosen, protocol: u8, spi: &[u8]) -> ProposalWire {
    let mut ts = vec![enc_transform(&c.enc).expect("chosen from known names")];
    if let Some(p) = c.prf {
        ts.push(Transform {
            ttype: tt::PRF,
            id: p.id(),
            key_bits: None,
        });
    }
    if let Some(i) = c.integ.as_deref().and_then(integ_of) {
        ts.push(Transform {
            ttype: tt::INTEG,
            id: i.0.id(),
            key_bits: None,
        });
    }
    if let Some(g) = c.dh {
        ts.push(Transform {
            ttype: tt::DH,
            id: g,
            key_bits: None,
        });
    }
    if protocol == proto::ESP {
        ts.push(Transform {
            ttype: tt::ESN,
            id: 0,
            key_bits: None,
        });
    }
    ProposalWire {
        num: c.num,
        protocol,
        spi: spi.to_vec(),
        transforms: ts,
    }
}

/// Encryption, integrity, PRF and DH group of a chosen proposal.
type Choice = (Encr, Option<Integ>, Option<Prf>, Option<u16>);

/// Reads a responder's chosen proposal and checks it against what we offered (RFC 7296
/// section 3.3.6: the responder accepts a single proposal of ours, with one transform of
/// each type, each one of the transforms we put in that proposal). The chosen transforms
/// must come from one of our proposals, with the same protocol and every transform type it
/// has (so INTEG exactly when the cipher is not AEAD, a PRF for an IKE SA, a DH group when
/// we sent KE, ESN for ESP), and the SPI must have `spi_len` bytes. Anything else is a
/// hostile or broken peer: the caller ends the exchange with the reason returned here.
fn accept_choice(
    p: &ProposalWire,
    offered: &[ProposalWire],
    spi_len: usize,
) -> Result<Choice, String> {
    if p.spi.len() != spi_len {
        return Err(format!(
            "the chosen proposal has a {}-byte SPI, {spi_len} expected",
            p.spi.len()
        ));
    }
    let mut types: Vec<u8> = vec![];
    for t in &p.transforms {
        if types.contains(&t.ttype) {
            return Err(format!(
                "the chosen proposal has two transforms of type {}",
                t.ttype
            ));
        }
        types.push(t.ttype);
    }
    let fits = |q: &&ProposalWire| {
        q.protocol == p.protocol
            && p.transforms.iter().all(|t| q.transforms.contains(t))
            && q.transforms.iter().all(|t| types.contains(&t.ttype))
    };
    if !offered.iter().any(|q| fits(&q)) {
        return Err("the chosen proposal is not one we offered".into());
    }
    let (mut e, mut i, mut prf, mut dh) = (None, None, None, None);
    for t in &p.transforms {
        match t.ttype {
            tt::ENCR => e = Encr::from_transform(t.id, t.key_bits),
            tt::INTEG => i = Some(Integ::from_id(t.id).ok_or("unknown integrity transform")?),
            tt::PRF => prf = Some(Prf::from_id(t.id).ok_or("unknown PRF transform")?),
            tt::DH => dh = Some(t.id),
            _ => {}
        }
    }
    let e = e.ok_or("the chosen proposal has no usable encryption transform")?;
    if e.is_aead() == i.is_some() {
        return Err("the chosen proposal pairs its cipher with the wrong integrity".into());
    }
    if (p.protocol == proto::IKE) != prf.is_some() {
        return Err("the chosen proposal has the wrong PRF".into());
    }
    Ok((e, i, prf, dh))
}

/// [`accept_choice`] for an IKE SA: the PRF is there.
fn accept_ike_choice(
    p: &ProposalWire,
    offered: &[ProposalWire],
    spi_len: usize,
) -> Result<(Encr, Option<Integ>, Prf, Option<u16>), String> {
    match accept_choice(p, offered, spi_len)? {
        (e, i, Some(prf), dh) if p.protocol == proto::IKE => Ok((e, i, prf, dh)),
        _ => Err("the chosen proposal is not an IKE proposal".into()),
    }
}

/// The one proposal of a response's SA payload (section 3.3.6: exactly one); None without
/// an SA payload.
fn single_proposal(ps: &[Payload]) -> Option<Result<ProposalWire, String>> {
    Some(match msg::proposals(ps)?.as_slice() {
        [p] => Ok(p.clone()),
        v => Err(format!(
            "the response has {} proposals, one expected",
            v.len()
        )),
    })
}

/// Nonce lengths of section 2.10 (at least 16 octets, at most 256).
fn nonce_ok(n: &[u8]) -> bool {
    (16..=256).contains(&n.len())
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

fn random_spi64(fill: &mut dyn FnMut(&mut [u8])) -> u64 {
    loop {
        let mut b = [0u8; 8];
        fill(&mut b);
        let v = u64::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

fn random_spi32(fill: &mut dyn FnMut(&mut [u8])) -> u32 {
    loop {
        let mut b = [0u8; 4];
        fill(&mut b);
        let v = u32::from_be_bytes(b);
        if v >= 0x100 {
            return v;
        }
    }
}

fn nonce(fill: &mut dyn FnMut(&mut [u8])) -> Vec<u8> {
    let mut n = vec![0u8; 32];
    fill(&mut n);
    n
}

/// True when `inner` lies within `outer` (addresses and ports; protocol 0 = any).
fn ts_within(inner: &TrafficSelector, outer: &TrafficSelector) -> bool {
    let key = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    inner.start.is_ipv4() == outer.start.is_ipv4()
        && key(inner.start) >= key(outer.start)
        && key(inner.end) <= key(outer.end)
        && inner.start_port >= outer.start_port
        && inner.end_port <= outer.end_port
        && (outer.ip_proto == 0 || inner.ip_proto == outer.ip_proto)
}

/// Narrows the peer's proposed selectors to ours (section 2.9): the intersection when the
/// peer's first selector contains ours or lies within it; None otherwise (TS_UNACCEPTABLE).
fn narrow(peer: &[TrafficSelector], ours: &TrafficSelector) -> Option<TrafficSelector> {
    peer.iter().find_map(|p| {
        if ts_within(ours, p) {
            Some(*ours)
        } else if ts_within(p, ours) {
            Some(*p)
        } else {
            None
        }
    })
}

impl IkeSa {
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
            pending: None,
            last_resp: None,
            child_spi: 0,
            children: vec![],
            rekey: None,
            peer_rekey: None,
            deleting: None,
            ike_rekey: None,
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

    /// Starts an IKE SA as initiator: the IKE_SA_INIT request.
    pub fn initiate(
        cfg: Config,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(IkeSa, Vec<Output>), String> {
        let spi_i = random_spi64(fill);
        let mut sa = IkeSa::new(cfg, true, spi_i, 0, now);
        let group = *sa
            .cfg
            .p1_dh
            .first()
            .ok_or("no phase 1 DH group configured")?;
        let out = sa.send_init(group, now, fill)?;
        Ok((sa, out))
    }

    fn nat_notifies(&self, spi_r: u64) -> Vec<Payload> {
        let src = if self.cfg.force_nat_t {
            // A hash that cannot match: the peer sees a NAT in front of us (RFC 7296
            // section 2.23 allows faking it to force UDP encapsulation).
            vec![0u8; 20]
        } else {
            nat_hash(self.spi_i, spi_r, self.cfg.local_addr, 500)
        };
        vec![
            Payload::Notify {
                protocol: 0,
                spi: vec![],
                ntype: notify::NAT_DETECTION_SOURCE_IP,
                data: src,
            },
            Payload::Notify {
                protocol: 0,
                spi: vec![],
                ntype: notify::NAT_DETECTION_DESTINATION_IP,
                data: nat_hash(self.spi_i, spi_r, self.cfg.peer_addr, 500),
            },
        ]
    }

    fn send_init(
        &mut self,
        group: u16,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Vec<Output>, String> {
        // A retry with a COOKIE repeats the same KE and nonce (section 2.6); a new group
        // (INVALID_KE_PAYLOAD) or a first attempt draws fresh ones.
        let kp = match self.dh.take() {
            Some(k) if k.group == group && self.cookie.is_some() => k,
            _ => {
                self.ni = nonce(fill);
                KeyPair::generate(group, fill).map_err(|e| e.to_string())?
            }
        };
        let mut payloads = vec![];
        if let Some(c) = &self.cookie {
            payloads.push(Payload::Notify {
                protocol: 0,
                spi: vec![],
                ntype: notify::COOKIE,
                data: c.clone(),
            });
        }
        payloads.push(Payload::Sa(self.init_proposals()));
        payloads.push(Payload::Ke {
            group,
            data: kp.public.clone(),
        });
        payloads.push(Payload::Nonce(self.ni.clone()));
        payloads.extend(self.nat_notifies(0));
        let m = Message {
            header: self.header(exchange::IKE_SA_INIT, 0, false),
            payloads,
        };
        let bytes = m.encode();
        self.first_msg = bytes.clone();
        self.dh = Some(kp);
        self.next_req_id = 1;
        Ok(vec![self.send_request(0, bytes, now)])
    }

    /// The SA payload of our IKE_SA_INIT request (and what its response must choose from).
    fn init_proposals(&self) -> Vec<ProposalWire> {
        build_proposals(
            proto::IKE,
            &[],
            &self.cfg.p1_enc,
            &self.cfg.p1_integ,
            &self.cfg.p1_dh,
            true,
        )
    }

    /// The SA payload for the first CHILD_SA of our IKE_AUTH request (no DH: no PFS there).
    fn auth_child_proposals(&self) -> Vec<ProposalWire> {
        build_proposals(
            proto::ESP,
            &self.child_spi.to_be_bytes(),
            &self.cfg.p2_enc,
            &self.cfg.p2_integ,
            &[],
            false,
        )
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

    fn send_request(&mut self, id: u32, bytes: Vec<u8>, now: f64) -> Output {
        self.pending = Some((id, bytes.clone(), 1, now + self.cfg.retransmit_base_s));
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

    /// Answers an IKE_SA_INIT request as responder. Returns the new SA and what to send, or
    /// only a reply (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD) and a log line.
    pub fn respond(
        cfg: Config,
        raw: &[u8],
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> (Option<IkeSa>, Vec<Output>) {
        let m = match Message::parse(raw) {
            Ok(m) => m,
            Err(msg::ParseError::UnsupportedCritical(t)) => {
                // Section 2.5: reject the message with UNSUPPORTED_CRITICAL_PAYLOAD.
                let Ok(h) = Header::parse(raw) else {
                    return (None, vec![]);
                };
                if h.is_response() || h.exchange != exchange::IKE_SA_INIT {
                    return (None, vec![]);
                }
                let reply =
                    msg::init_notify_response(&h, notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t]);
                return (
                    None,
                    vec![Output::Send {
                        data: reply,
                        nat_t: false,
                    }],
                );
            }
            Err(_) => return (None, vec![]),
        };
        let h = m.header;
        if h.exchange != exchange::IKE_SA_INIT || h.is_response() || h.msg_id != 0 || h.spi_r != 0 {
            return (None, vec![]);
        }
        let err_reply = |nt: u16, data: Vec<u8>| Output::Send {
            data: msg::init_notify_response(&h, nt, data),
            nat_t: false,
        };
        let props = msg::proposals(&m.payloads).cloned();
        let ke = msg::ke(&m.payloads).map(|(g, d)| (g, d.to_vec()));
        let ni = msg::nonce(&m.payloads)
            .map(<[u8]>::to_vec)
            .filter(|n| nonce_ok(n));
        let (Some(props), Some((group, ke_data)), Some(ni)) = (props, ke, ni) else {
            return (None, vec![err_reply(notify::INVALID_SYNTAX, vec![])]);
        };
        let Some(c) = choose(
            &props,
            proto::IKE,
            &cfg.p1_enc,
            &cfg.p1_integ,
            &cfg.p1_dh,
            true,
        ) else {
            return (
                None,
                vec![
                    err_reply(notify::NO_PROPOSAL_CHOSEN, vec![]),
                    Output::Log("No Proposal Match Found by AWS".into()),
                    Output::Log(
                        "No Proposal Match Found. Notifying with \"No proposal chosen\"".into(),
                    ),
                ],
            );
        };
        let dh_group = c.dh.unwrap_or(group);
        if dh_group != group {
            return (
                None,
                vec![
                    err_reply(notify::INVALID_KE_PAYLOAD, dh_group.to_be_bytes().to_vec()),
                    Output::Log(format!(
                        "IKE_SA_INIT: KE of group {group}, the chosen group is {dh_group}: INVALID_KE_PAYLOAD sent"
                    )),
                ],
            );
        }
        // The KE length is checked before any key generation: a wrong-size KE costs the
        // peer a datagram and us nothing.
        if dh::public_len(group) != Some(ke_data.len()) {
            return (None, vec![err_reply(notify::INVALID_SYNTAX, vec![])]);
        }
        let Ok(kp) = KeyPair::generate(group, fill) else {
            return (None, vec![]);
        };
        let Ok(shared) = kp.shared(&ke_data) else {
            return (None, vec![err_reply(notify::INVALID_SYNTAX, vec![])]);
        };
        let spi_r = random_spi64(fill);
        let mut sa = IkeSa::new(cfg, false, h.spi_i, spi_r, now);
        sa.ni = ni;
        sa.nr = nonce(fill);
        sa.next_peer_id = 1;
        sa.detect_nat(&m.payloads, h.spi_i, 0);
        let Some(prf) = c.prf else {
            return (None, vec![]);
        };
        let Some(encr) = enc_transform(&c.enc).and_then(|t| Encr::from_transform(t.id, t.key_bits))
        else {
            return (None, vec![]);
        };
        let integ = c.integ.as_deref().and_then(integ_of).map(|x| x.0);
        sa.suite = Some(IkeSuite {
            encr,
            integ,
            prf,
            dh: group,
        });
        sa.keys = Some(keys::ike_keys(
            prf, encr, integ, &shared, &sa.ni, &sa.nr, h.spi_i, spi_r, None,
        ));
        let mut payloads = vec![
            Payload::Sa(vec![chosen_proposal(&c, proto::IKE, &[])]),
            Payload::Ke {
                group,
                data: kp.public.clone(),
            },
            Payload::Nonce(sa.nr.clone()),
        ];
        payloads.extend(sa.nat_notifies(spi_r));
        let reply = Message {
            header: sa.header(exchange::IKE_SA_INIT, 0, true),
            payloads,
        }
        .encode();
        sa.dh = Some(kp);
        sa.peer_first = raw.to_vec();
        sa.first_msg = reply.clone();
        sa.last_resp = Some((0, reply.clone()));
        (
            Some(sa),
            vec![Output::Send {
                data: reply,
                nat_t: false,
            }],
        )
    }

    fn detect_nat(&mut self, ps: &[Payload], spi_i: u64, spi_r: u64) {
        if self.cfg.force_nat_t {
            self.nat_detected = true;
            return;
        }
        let src = msg::find_notify(ps, notify::NAT_DETECTION_SOURCE_IP);
        let dst = msg::find_notify(ps, notify::NAT_DETECTION_DESTINATION_IP);
        let (Some(Payload::Notify { data: s, .. }), Some(Payload::Notify { data: d, .. })) =
            (src, dst)
        else {
            return;
        };
        let peer_ok = *s == nat_hash(spi_i, spi_r, self.cfg.peer_addr, 500);
        let me_ok = *d == nat_hash(spi_i, spi_r, self.cfg.local_addr, 500);
        self.nat_detected = !(peer_ok && me_ok);
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
            match &self.pending {
                Some((id, ..)) if *id == h.msg_id => {}
                _ => {
                    self.dropped += 1;
                    return vec![];
                }
            }
            let out = match (self.state, h.exchange) {
                (State::InitSent, exchange::IKE_SA_INIT) => {
                    self.on_init_response(raw, &m, now, fill)
                }
                (State::AuthSent, exchange::IKE_AUTH) => self.on_auth_response(raw, &m, now),
                (State::Established, exchange::INFORMATIONAL) => match self.decrypt(raw, &m) {
                    Some(_) => {
                        self.pending = None;
                        self.last_rx = now;
                        match self.deleting.take() {
                            Some(spi_in) => vec![Output::ChildDown { spi_in }],
                            None => vec![],
                        }
                    }
                    None => vec![],
                },
                (State::Established, exchange::CREATE_CHILD_SA)
                    if self.ike_rekey.as_ref().is_some_and(|r| r.id == h.msg_id) =>
                {
                    self.on_ike_rekey_response(raw, &m, now, fill)
                }
                (State::Established, exchange::CREATE_CHILD_SA) => {
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

    fn on_init_response(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if let Some(Payload::Notify { data, .. }) = m.notify(notify::INVALID_KE_PAYLOAD) {
            let g = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            match g.filter(|g| self.cfg.p1_dh.contains(g)) {
                Some(g) => {
                    self.pending = None;
                    let mut out = vec![Output::Log(format!(
                        "IKE_SA_INIT: the peer asked for DH group {g} (INVALID_KE_PAYLOAD): retrying"
                    ))];
                    out.extend(self.send_init(g, now, fill).unwrap_or_default());
                    return out;
                }
                None => {
                    return self.close(
                        "IKE_SA_INIT: INVALID_KE_PAYLOAD with a group we do not allow".into(),
                    );
                }
            }
        }
        if let Some(Payload::Notify { data, .. }) = m.notify(notify::COOKIE)
            && self.cookie.is_none()
        {
            self.cookie = Some(data.clone());
            self.pending = None;
            let g = self.dh.as_ref().map_or(0, |k| k.group);
            return self.send_init(g, now, fill).unwrap_or_default();
        }
        if m.notify(notify::NO_PROPOSAL_CHOSEN).is_some() {
            return self.close(
                "No Proposal Match Found. Notifying with \"No proposal chosen\" (phase 1: NO_PROPOSAL_CHOSEN from the CGW)"
                    .into(),
            );
        }
        let sa_p = single_proposal(&m.payloads);
        let ke = msg::ke(&m.payloads).map(|(g, d)| (g, d.to_vec()));
        let nr = msg::nonce(&m.payloads).map(<[u8]>::to_vec);
        let (Some(sa_p), Some((group, ke_data)), Some(nr)) = (sa_p, ke, nr) else {
            self.dropped += 1;
            return vec![];
        };
        let offered = self.init_proposals();
        let (encr, integ, prf, dh) = match sa_p.and_then(|p| accept_ike_choice(&p, &offered, 0)) {
            Ok(c) => c,
            Err(why) => {
                return self.close(format!(
                    "IKE_SA_INIT: {why}; the exchange is abandoned (hostile or broken responder)"
                ));
            }
        };
        let kp = match &self.dh {
            Some(k) if k.group == group && dh == Some(group) && nonce_ok(&nr) => k,
            _ => {
                return self.close(
                    "IKE_SA_INIT: the peer's KE group or nonce is not what we offered".into(),
                );
            }
        };
        let Ok(shared) = kp.shared(&ke_data) else {
            return self.close("IKE_SA_INIT: the peer's KE value is invalid".into());
        };
        self.spi_r = m.header.spi_r;
        self.nr = nr;
        self.suite = Some(IkeSuite {
            encr,
            integ,
            prf,
            dh: group,
        });
        self.keys = Some(keys::ike_keys(
            prf, encr, integ, &shared, &self.ni, &self.nr, self.spi_i, self.spi_r, None,
        ));
        self.peer_first = raw.to_vec();
        self.detect_nat(&m.payloads, self.spi_i, self.spi_r);
        self.pending = None;
        self.last_rx = now;
        // IKE_AUTH request.
        self.child_spi = self.new_spi(fill);
        let id_body = id_payload_body(self.cfg.local_addr);
        let k = self.keys.as_ref().expect("just set");
        let auth = keys::psk_auth(
            prf,
            &self.cfg.psk,
            &self.first_msg,
            &self.nr,
            &k.sk_pi,
            &id_body,
        );
        let inner = vec![
            Payload::IdI {
                id_type: id_body[0],
                data: id_body[4..].to_vec(),
            },
            Payload::Auth {
                method: 2,
                data: auth.to_vec(),
            },
            Payload::Notify {
                protocol: 0,
                spi: vec![],
                ntype: notify::INITIAL_CONTACT,
                data: vec![],
            },
            Payload::Sa(self.auth_child_proposals()),
            Payload::TsI(vec![self.cfg.local_ts]),
            Payload::TsR(vec![self.cfg.remote_ts]),
        ];
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(exchange::IKE_AUTH, id, false, &inner, fill)
        );
        self.state = State::AuthSent;
        vec![self.send_request(id, bytes, now)]
    }

    fn verify_auth(&self, ps: &[Payload], peer_is_initiator: bool) -> bool {
        let (Some((t, d)), Some(auth)) = (
            ps.iter().find_map(|p| match p {
                Payload::IdI { id_type, data } if peer_is_initiator => Some((*id_type, data)),
                Payload::IdR { id_type, data } if !peer_is_initiator => Some((*id_type, data)),
                _ => None,
            }),
            ps.iter().find_map(|p| match p {
                Payload::Auth { method: 2, data } => Some(data),
                _ => None,
            }),
        ) else {
            return false;
        };
        let (Some(k), Some(s)) = (&self.keys, self.suite) else {
            return false;
        };
        let mut body = vec![t, 0, 0, 0];
        body.extend_from_slice(d);
        let (sk_p, nonce) = if peer_is_initiator {
            (&k.sk_pi, &self.nr)
        } else {
            (&k.sk_pr, &self.ni)
        };
        let want = keys::psk_auth(s.prf, &self.cfg.psk, &self.peer_first, nonce, sk_p, &body);
        keys::ct_eq(&want, auth)
    }

    fn child_keys(&self, enc: &str, integ: Option<&str>) -> Option<ChildKeys> {
        let e = enc_transform(enc).and_then(|t| Encr::from_transform(t.id, t.key_bits))?;
        let il = integ.and_then(integ_of).map_or(0, |(i, _)| i.key_len());
        let s = self.suite?;
        Some(keys::child_keys(
            s.prf,
            &self.keys.as_ref()?.sk_d,
            None,
            &self.ni,
            &self.nr,
            e.key_len(),
            il,
        ))
    }

    fn on_auth_request(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.last_rx = now;
        let id = m.header.msg_id;
        self.next_peer_id = id + 1;
        if !self.verify_auth(&ps, true) {
            let bytes = sealed!(
                self,
                self.encrypted(
                    exchange::IKE_AUTH,
                    id,
                    true,
                    &notify_only(notify::AUTHENTICATION_FAILED, vec![]),
                    fill,
                )
            );
            let mut out = vec![
                self.send_response(id, bytes),
                Output::Log("AWS tunnel is sending AUTHENTICATION_FAILED as the response".into()),
            ];
            out.extend(self.close(format!(
                "AWS tunnel detected a pre-shared key mismatch with cgw: {}",
                self.cfg.peer_addr
            )));
            return out;
        }
        let mut out = vec![];
        // IKE SA is up; now the CHILD_SA.
        let props = msg::proposals(&ps).cloned();
        let tsi = msg::ts_i(&ps).map(<[_]>::to_vec);
        let tsr = msg::ts_r(&ps).map(<[_]>::to_vec);
        let my_id = id_payload_body(self.cfg.local_addr);
        let k = self.keys.as_ref().expect("keys after IKE_SA_INIT");
        let prf = self.suite.expect("suite").prf;
        let auth = keys::psk_auth(
            prf,
            &self.cfg.psk,
            &self.first_msg,
            &self.ni,
            &k.sk_pr,
            &my_id,
        );
        let mut inner = vec![
            Payload::IdR {
                id_type: my_id[0],
                data: my_id[4..].to_vec(),
            },
            Payload::Auth {
                method: 2,
                data: auth.to_vec(),
            },
        ];
        let chosen = props.as_ref().and_then(|p| {
            choose(
                p,
                proto::ESP,
                &self.cfg.p2_enc,
                &self.cfg.p2_integ,
                &[],
                false,
            )
        });
        // The initiator's TSi is its side = our remote; TSr = our local.
        let ts = match (&tsi, &tsr) {
            (Some(i), Some(r)) => narrow(i, &self.cfg.remote_ts).zip(narrow(r, &self.cfg.local_ts)),
            _ => None,
        };
        match (chosen, ts) {
            (None, _) => {
                inner.push(notify_only(notify::NO_PROPOSAL_CHOSEN, vec![]).remove(0));
                out.push(Output::Log(
                    "No Proposal Match Found. Notifying with \"No proposal chosen\"".into(),
                ));
                out.push(Output::Log(
                    "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
                ));
            }
            (Some(_), None) => {
                inner.push(notify_only(notify::TS_UNACCEPTABLE, vec![]).remove(0));
                out.push(Output::Log(
                    "AWS: Traffic Selector: TS_UNACCEPTABLE: sent to the initiator (its selectors are outside the tunnel's network CIDRs)".into(),
                ));
                out.push(Output::Log(
                    "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
                ));
            }
            (Some(c), Some((ts_remote, ts_local))) => {
                let peer_spi = u32::from_be_bytes(
                    c.spi
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .unwrap_or([0; 4]),
                );
                self.child_spi = self.new_spi(fill);
                if let Some(ck) = self.child_keys(&c.enc, c.integ.as_deref()) {
                    inner.push(Payload::Sa(vec![chosen_proposal(
                        &c,
                        proto::ESP,
                        &self.child_spi.to_be_bytes(),
                    )]));
                    inner.push(Payload::TsI(vec![ts_remote]));
                    inner.push(Payload::TsR(vec![ts_local]));
                    self.children.push((self.child_spi, peer_spi));
                    out.push(Output::ChildUp(Box::new(ChildSa {
                        spi_in: self.child_spi,
                        spi_out: peer_spi,
                        encryption: c.enc.clone(),
                        integrity: c.integ.clone(),
                        enc_in: ck.enc_i,
                        int_in: ck.int_i,
                        enc_out: ck.enc_r,
                        int_out: ck.int_r,
                        local_ts: ts_local,
                        remote_ts: ts_remote,
                        nat_t: self.nat_detected,
                        switch_now: true,
                    })));
                }
            }
        }
        let bytes = sealed!(
            self,
            self.encrypted(exchange::IKE_AUTH, id, true, &inner, fill)
        );
        self.state = State::Established;
        self.dh = None;
        let mut all = vec![self.send_response(id, bytes), Output::IkeUp];
        all.extend(out);
        all
    }

    fn on_auth_response(&mut self, raw: &[u8], m: &Message, now: f64) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.pending = None;
        self.last_rx = now;
        if msg::find_notify(&ps, notify::AUTHENTICATION_FAILED).is_some() {
            return self.close(format!(
                "AWS tunnel detected a pre-shared key mismatch with cgw: {} (AUTHENTICATION_FAILED received)",
                self.cfg.peer_addr
            ));
        }
        if !self.verify_auth(&ps, false) {
            return self.close(format!(
                "AWS tunnel detected a pre-shared key mismatch with cgw: {} (its AUTH payload does not verify)",
                self.cfg.peer_addr
            ));
        }
        self.state = State::Established;
        self.dh = None;
        let mut out = vec![Output::IkeUp];
        if msg::find_notify(&ps, notify::NO_PROPOSAL_CHOSEN).is_some() {
            out.push(Output::Log(
                "No Proposal Match Found. Notifying with \"No proposal chosen\" (phase 2, from the CGW)".into(),
            ));
            out.push(Output::Log(
                "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
            ));
            return out;
        }
        if msg::find_notify(&ps, notify::TS_UNACCEPTABLE).is_some() {
            out.push(Output::Log(
                "AWS: Traffic Selector: TS_UNACCEPTABLE: received from responder".into(),
            ));
            out.push(Output::Log(
                "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
            ));
            return out;
        }
        let sa_p = single_proposal(&ps);
        let tsi = msg::ts_i(&ps).and_then(|v| v.first().copied());
        let tsr = msg::ts_r(&ps).and_then(|v| v.first().copied());
        let (Some(p), Some(tsi), Some(tsr)) = (sa_p, tsi, tsr) else {
            out.push(Output::Log("IKE_AUTH: the response has no CHILD_SA".into()));
            return out;
        };
        let offered = self.auth_child_proposals();
        let (encr, integ, p) = match p.and_then(|p| accept_choice(&p, &offered, 4).map(|c| (c, p)))
        {
            Ok(((e, i, None, None), p)) => (e, i, p),
            Ok(_) => {
                return self
                    .phase2_refused(out, "IKE_AUTH: the chosen proposal is not one we offered");
            }
            Err(why) => return self.phase2_refused(out, &format!("IKE_AUTH: {why}")),
        };
        if !ts_within(&tsi, &self.cfg.local_ts) || !ts_within(&tsr, &self.cfg.remote_ts) {
            return self.phase2_refused(
                out,
                "AWS: Traffic Selector: TS_UNACCEPTABLE: the responder's selectors are wider than ours",
            );
        }
        // `encr` passed the offered-check: one of our ciphers.
        let enc = Cipher::from_transform(encr.id(), Some(encr.bits())).map_or("", Cipher::name);
        let integ_s = integ.map(integ_name);
        let peer_spi = u32::from_be_bytes(
            p.spi
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4]),
        );
        if let Some(ck) = self.child_keys(enc, integ_s) {
            self.children.push((self.child_spi, peer_spi));
            out.push(Output::ChildUp(Box::new(ChildSa {
                spi_in: self.child_spi,
                spi_out: peer_spi,
                encryption: enc.to_string(),
                integrity: integ_s.map(str::to_string),
                enc_in: ck.enc_r,
                int_in: ck.int_r,
                enc_out: ck.enc_i,
                int_out: ck.int_i,
                local_ts: tsi,
                remote_ts: tsr,
                nat_t: self.nat_detected,
                switch_now: true,
            })));
        }
        out
    }

    /// The CHILD_SA of an IKE_AUTH response is refused (the IKE SA stays): the log lines.
    fn phase2_refused(&mut self, mut out: Vec<Output>, why: &str) -> Vec<Output> {
        self.dropped += 1;
        out.push(Output::Log(why.to_string()));
        out.push(Output::Log(
            "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
        ));
        out
    }

    fn on_informational(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.last_rx = now;
        let id = m.header.msg_id;
        self.next_peer_id = id + 1;
        let mut out = vec![];
        let mut reply = vec![];
        let mut closing = false;
        for p in &ps {
            if let Payload::Delete { protocol, spis } = p {
                if *protocol == proto::IKE {
                    closing = true;
                    out.push(Output::Log(
                        "AWS tunnel received DELETE for IKE_SA from CGW".into(),
                    ));
                } else {
                    let mut ours = vec![];
                    for spi in spis {
                        out.push(Output::Log(format!(
                            "AWS tunnel received DELETE for Phase 2 SA with SPI: {}",
                            spi.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        )));
                        let Some(v) = spi.get(..4).and_then(|b| b.try_into().ok()) else {
                            continue;
                        };
                        let out_spi = u32::from_be_bytes(v);
                        if let Some(k) = self.children.iter().position(|c| c.1 == out_spi) {
                            let (spi_in, _) = self.children.remove(k);
                            if self.rekey.as_ref().is_some_and(|r| r.old_in == spi_in) {
                                out.push(Output::Log(
                                    "AWS tunnel detected a (CHILD_REKEY) collision as CHILD_DELETE"
                                        .into(),
                                ));
                            }
                            ours.push(spi_in.to_be_bytes().to_vec());
                            out.push(Output::ChildDown { spi_in });
                        }
                    }
                    if !ours.is_empty() {
                        reply.push(Payload::Delete {
                            protocol: *protocol,
                            spis: ours,
                        });
                    }
                }
            }
        }
        let bytes = sealed!(
            self,
            self.encrypted(exchange::INFORMATIONAL, id, true, &reply, fill)
        );
        out.insert(0, self.send_response(id, bytes));
        if closing && self.ike_rekey.is_some() {
            // Section 2.25.2: a DELETE of the IKE SA we are rekeying is answered as usual
            // and our rekey forgotten. If we answered the peer's own rekey meanwhile, the
            // peer finished it without noticing ours (section 2.8.2): its new SA lives on.
            self.ike_rekey = None;
            self.pending = None;
            if let Some(theirs) = self.peer_ike_new.take() {
                out.push(Output::Log(
                    "IKE SA rekey collision: the peer finished its rekey first and deleted the old IKE SA; ours is dropped"
                        .into(),
                ));
                out.extend(self.adopt(theirs, false, now, fill));
                if let Some((old, _)) = self.retired.last_mut() {
                    old.state = State::Closed;
                }
                return out;
            }
        }
        if closing {
            out.extend(self.close("the peer deleted the IKE SA".into()));
        }
        out
    }

    /// Sends a liveness check (empty INFORMATIONAL request, section 1.4).
    pub fn send_dpd(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.state != State::Established || self.pending.is_some() {
            return vec![];
        }
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(exchange::INFORMATIONAL, id, false, &[], fill)
        );
        vec![self.send_request(id, bytes, now)]
    }

    /// Deletes the IKE SA (and with it its CHILD_SAs).
    pub fn delete(&mut self, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.state != State::Established {
            return self.close("deleted before it was established".into());
        }
        let (_, bytes) = sealed!(self, self.ike_delete_request(fill));
        let mut out = vec![Output::Send {
            data: bytes,
            nat_t: self.nat_detected,
        }];
        out.extend(self.close("IKE SA deleted by us".into()));
        out
    }

    fn close(&mut self, why: String) -> Vec<Output> {
        self.state = State::Closed;
        self.pending = None;
        vec![Output::Log(why.clone()), Output::Closed(why)]
    }

    /// When `handle_timeout` must run next (None: nothing pending): our outstanding
    /// request, a replaced IKE SA's request, or the end of a replaced IKE SA's stay.
    pub fn poll_timeout(&self) -> Option<f64> {
        let own = self.pending.as_ref().map(|p| p.3);
        let retired = self
            .retired
            .iter()
            .map(|(o, until)| o.pending.as_ref().map_or(*until, |p| p.3))
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
            .retain(|(o, until)| o.pending.is_some() || now < *until);
        out.extend(self.retransmit(now));
        out
    }

    fn retransmit(&mut self, now: f64) -> Vec<Output> {
        let Some((id, bytes, sends, due)) = self.pending.take() else {
            return vec![];
        };
        if now < due {
            self.pending = Some((id, bytes, sends, due));
            return vec![];
        }
        if sends > self.cfg.retransmits {
            let what = match self.state {
                State::InitSent => "IKE_SA_INIT",
                State::AuthSent => "IKE_AUTH",
                _ => "request",
            };
            return self.close(format!("{what} timed out after {} retransmits", sends - 1));
        }
        let next = now + self.cfg.retransmit_base_s * f64::from(1u32 << sends.min(16));
        self.pending = Some((id, bytes.clone(), sends + 1, next));
        vec![Output::Send {
            data: bytes,
            nat_t: self.nat_detected,
        }]
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

impl IkeSa {
    /// Phase 1 (this IKE SA) and phase 2 (its CHILD_SAs) states: `Negotiating` until
    /// IKE_AUTH (and the first CHILD_SA) completes, `Rekeying` while a rekey of that phase is
    /// in progress (our exchange outstanding, or old and new CHILD_SAs both live until the
    /// old one's DELETE), `Down` once closed or without CHILD_SAs.
    pub fn phases(&self) -> (Phase, Phase) {
        let p1 = match self.state {
            State::InitSent | State::AuthSent | State::InitDone => Phase::Negotiating,
            State::Established if self.ike_rekey.is_some() || self.peer_ike_new.is_some() => {
                Phase::Rekeying
            }
            State::Established => Phase::Established,
            State::Closed => Phase::Down,
        };
        let p2 = match (self.children.len(), p1) {
            (0, Phase::Negotiating) => Phase::Negotiating,
            (0, _) | (_, Phase::Down) => Phase::Down,
            (n, _) if n > 1 || self.rekey.is_some() => Phase::Rekeying,
            _ => Phase::Established,
        };
        (p1, p2)
    }

    /// The DH group of the IKE SA, once chosen.
    pub fn dh_group(&self) -> Option<u16> {
        self.suite.map(|s| s.dh)
    }
}

impl IkeSa {
    /// Our inbound SPIs of the live CHILD_SAs.
    pub fn children(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.0).collect()
    }

    /// Starts a CHILD_SA rekey (CREATE_CHILD_SA with N(REKEY_SA), section 2.8), with PFS when
    /// a phase 2 DH group is configured (`group` overrides it after INVALID_KE_PAYLOAD).
    /// Nothing happens (and the caller retries later) while another request is outstanding.
    pub fn rekey_child(
        &mut self,
        old_in: u32,
        group: Option<u16>,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if self.state != State::Established || self.pending.is_some() {
            return vec![];
        }
        if !self.children.iter().any(|c| c.0 == old_in) {
            return vec![];
        }
        let new_in = self.new_spi(fill);
        let ni = nonce(fill);
        let group = group.or(self.cfg.p2_dh.first().copied());
        let kp = match group.map(|g| KeyPair::generate(g, fill)) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => return vec![Output::Log(format!("CHILD_SA rekey: {e}"))],
            None => None,
        };
        let dh: Vec<u16> = match group {
            Some(g) => {
                let mut v = vec![g];
                v.extend(self.cfg.p2_dh.iter().filter(|x| **x != g));
                v
            }
            None => vec![],
        };
        let offered = build_proposals(
            proto::ESP,
            &new_in.to_be_bytes(),
            &self.cfg.p2_enc,
            &self.cfg.p2_integ,
            &dh,
            false,
        );
        let mut inner = vec![
            Payload::Notify {
                protocol: proto::ESP,
                spi: old_in.to_be_bytes().to_vec(),
                ntype: notify::REKEY_SA,
                data: vec![],
            },
            Payload::Sa(offered.clone()),
            Payload::Nonce(ni.clone()),
        ];
        if let Some(k) = &kp {
            inner.push(Payload::Ke {
                group: k.group,
                data: k.public.clone(),
            });
        }
        inner.push(Payload::TsI(vec![self.cfg.local_ts]));
        inner.push(Payload::TsR(vec![self.cfg.remote_ts]));
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(exchange::CREATE_CHILD_SA, id, false, &inner, fill)
        );
        self.rekey = Some(Rekey {
            id,
            old_in,
            new_in,
            ni,
            kp,
            offered,
        });
        vec![
            Output::Log(format!(
                "AWS tunnel is sending request (id={id}) for CREATE_CHILD_SA"
            )),
            self.send_request(id, bytes, now),
        ]
    }

    fn on_rekey_response(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.pending = None;
        self.last_rx = now;
        let id = m.header.msg_id;
        let mut out = vec![Output::Log(format!(
            "AWS tunnel processed response (id={id}) for CREATE_CHILD_SA"
        ))];
        let Some(rk) = self.rekey.take().filter(|r| r.id == id) else {
            return out;
        };
        if let Some(Payload::Notify { data, .. }) =
            msg::find_notify(&ps, notify::INVALID_KE_PAYLOAD)
        {
            let g = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            if let Some(g) = g.filter(|g| self.cfg.p2_dh.contains(g)) {
                out.push(Output::Log(format!(
                    "CREATE_CHILD_SA: the peer asked for DH group {g} (INVALID_KE_PAYLOAD): retrying"
                )));
                out.extend(self.rekey_child(rk.old_in, Some(g), now, fill));
                return out;
            }
        }
        for (nt, what) in [
            (
                notify::NO_PROPOSAL_CHOSEN,
                "No Proposal Match Found. Notifying with \"No proposal chosen\" (rekey)",
            ),
            (
                notify::TS_UNACCEPTABLE,
                "AWS: Traffic Selector: TS_UNACCEPTABLE: received from responder",
            ),
            (
                notify::TEMPORARY_FAILURE,
                "CREATE_CHILD_SA: TEMPORARY_FAILURE from the peer (a rekey of its own is in progress)",
            ),
            (
                notify::CHILD_SA_NOT_FOUND,
                "CREATE_CHILD_SA: CHILD_SA_NOT_FOUND from the peer",
            ),
            (
                notify::INVALID_KE_PAYLOAD,
                "CREATE_CHILD_SA: INVALID_KE_PAYLOAD with a group we do not allow",
            ),
        ] {
            if msg::find_notify(&ps, nt).is_some() {
                out.push(Output::Log(what.into()));
                out.push(Output::Log(
                    "CHILD_SA rekey failed: the old SA stays until its hard lifetime; retrying"
                        .into(),
                ));
                return out;
            }
        }
        let sa_p = single_proposal(&ps);
        let nr = msg::nonce(&ps).map(<[u8]>::to_vec).filter(|n| nonce_ok(n));
        let ke = msg::ke(&ps).map(|(g, d)| (g, d.to_vec()));
        let tsi = msg::ts_i(&ps).and_then(|v| v.first().copied());
        let tsr = msg::ts_r(&ps).and_then(|v| v.first().copied());
        let (Some(p), Some(nr), Some(tsi), Some(tsr)) = (sa_p, nr, tsi, tsr) else {
            out.push(Output::Log(
                "CREATE_CHILD_SA: incomplete response; the old SA stays".into(),
            ));
            return out;
        };
        let (encr, integ, p) = match p
            .and_then(|p| accept_choice(&p, &rk.offered, 4).map(|c| (c, p)))
        {
            Ok(((e, i, None, dh), p)) if dh == rk.kp.as_ref().map(|k| k.group) => (e, i, p),
            Ok(_) => {
                out.push(Output::Log(
                    "CREATE_CHILD_SA: the chosen DH group is not the one we sent KE for; the old SA stays"
                        .into(),
                ));
                return out;
            }
            Err(why) => {
                out.push(Output::Log(format!(
                    "CREATE_CHILD_SA: {why}; the old SA stays"
                )));
                return out;
            }
        };
        if !ts_within(&tsi, &self.cfg.local_ts) || !ts_within(&tsr, &self.cfg.remote_ts) {
            out.push(Output::Log(
                "AWS: Traffic Selector: TS_UNACCEPTABLE: the responder's selectors are wider than ours; the old SA stays"
                    .into(),
            ));
            return out;
        }
        let shared = match (&rk.kp, ke) {
            (Some(kp), Some((g, ke))) if g == kp.group => match kp.shared(&ke) {
                Ok(s) => Some(s),
                Err(_) => {
                    out.push(Output::Log(
                        "CREATE_CHILD_SA: the peer's KE value is invalid".into(),
                    ));
                    return out;
                }
            },
            (None, None) => None,
            _ => {
                out.push(Output::Log(
                    "CREATE_CHILD_SA: PFS mismatch in the response".into(),
                ));
                return out;
            }
        };
        let enc = enc_name(&Transform {
            ttype: tt::ENCR,
            id: encr.id(),
            key_bits: Some(encr.bits()),
        })
        .unwrap_or("AES128");
        let integ_s = integ.map(integ_name);
        let peer_spi = u32::from_be_bytes(
            p.spi
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4]),
        );
        let (Some(s), Some(k)) = (self.suite, self.keys.as_ref()) else {
            return out;
        };
        let e = enc_transform(enc).and_then(|t| Encr::from_transform(t.id, t.key_bits));
        let il = integ.map_or(0, |i| i.key_len());
        let Some(e) = e else { return out };
        let ck = keys::child_keys(
            s.prf,
            &k.sk_d,
            shared.as_deref().map(|v| v.as_slice()),
            &rk.ni,
            &nr,
            e.key_len(),
            il,
        );
        self.children.push((rk.new_in, peer_spi));
        out.push(Output::ChildUp(Box::new(ChildSa {
            spi_in: rk.new_in,
            spi_out: peer_spi,
            encryption: enc.to_string(),
            integrity: integ_s.map(str::to_string),
            enc_in: ck.enc_r,
            int_in: ck.int_r,
            enc_out: ck.enc_i,
            int_out: ck.int_i,
            local_ts: tsi,
            remote_ts: tsr,
            nat_t: self.nat_detected,
            switch_now: true,
        })));
        // Collision (section 2.8.1): the SA made with the lowest of the four nonces is
        // redundant; its creator deletes it, the other side deletes the old SA.
        let mut delete = rk.old_in;
        if let Some(pr) = self.peer_rekey.take()
            && pr.old_in == rk.old_in
        {
            self.collisions += 1;
            let lowest = [&rk.ni, &nr, &pr.nonces[0], &pr.nonces[1]]
                .into_iter()
                .min()
                .cloned()
                .unwrap_or_default();
            if lowest == rk.ni || lowest == nr {
                delete = rk.new_in;
                out.push(Output::Log(
                    "AWS tunnel (CHILD_SA) redundant SA is being deleted due to detected collision"
                        .into(),
                ));
            } else {
                // The peer deletes its redundant SA; we delete the old one as usual.
                let _ = pr.new_in;
            }
        }
        out.extend(self.delete_child(delete, now, fill));
        out
    }

    /// Sends DELETE for one of our CHILD_SAs (our inbound SPI); `ChildDown` follows when the
    /// peer answers.
    pub fn delete_child(
        &mut self,
        spi_in: u32,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if self.pending.is_some() {
            return vec![];
        }
        let Some(k) = self.children.iter().position(|c| c.0 == spi_in) else {
            return vec![];
        };
        self.children.remove(k);
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(
                exchange::INFORMATIONAL,
                id,
                false,
                &[Payload::Delete {
                    protocol: proto::ESP,
                    spis: vec![spi_in.to_be_bytes().to_vec()],
                }],
                fill,
            )
        );
        self.deleting = Some(spi_in);
        vec![self.send_request(id, bytes, now)]
    }

    fn on_rekey_request(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.last_rx = now;
        let id = m.header.msg_id;
        self.next_peer_id = id + 1;
        let mut out = vec![Output::Log(format!(
            "AWS tunnel processed request (id={id}) for CREATE_CHILD_SA"
        ))];
        let props = msg::proposals(&ps).cloned();
        let rekey_of = ps.iter().find_map(|p| match p {
            Payload::Notify {
                ntype: notify::REKEY_SA,
                spi,
                ..
            } => spi
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes),
            _ => None,
        });
        let ni = msg::nonce(&ps).map(<[u8]>::to_vec).filter(|n| nonce_ok(n));
        let ke = msg::ke(&ps).map(|(g, d)| (g, d.to_vec()));
        if ke
            .as_ref()
            .is_some_and(|(g, d)| dh::public_len(*g).is_some_and(|n| n != d.len()))
        {
            // A KE of a group we know with the wrong length: malformed, before any key
            // generation (an unknown group is answered with INVALID_KE_PAYLOAD below).
            let inner = notify_only(notify::INVALID_SYNTAX, vec![]);
            let bytes = sealed!(
                self,
                self.encrypted(exchange::CREATE_CHILD_SA, id, true, &inner, fill)
            );
            out.push(self.send_response(id, bytes));
            return out;
        }
        let is_ike = props
            .as_ref()
            .is_some_and(|v| v.iter().any(|p| p.protocol == proto::IKE));
        if is_ike {
            return self.on_ike_rekey_request(id, props.unwrap_or_default(), ni, ke, out, fill);
        }
        let inner: Vec<Payload> = {
            let old = rekey_of.and_then(|spi| self.children.iter().find(|c| c.1 == spi).copied());
            let tsi = msg::ts_i(&ps).map(<[_]>::to_vec);
            let tsr = msg::ts_r(&ps).map(<[_]>::to_vec);
            let chosen = props.as_ref().and_then(|p| {
                choose(
                    p,
                    proto::ESP,
                    &self.cfg.p2_enc,
                    &self.cfg.p2_integ,
                    &self.cfg.p2_dh,
                    ke.is_some(),
                )
            });
            let ts = match (&tsi, &tsr) {
                (Some(i), Some(r)) => {
                    narrow(i, &self.cfg.remote_ts).zip(narrow(r, &self.cfg.local_ts))
                }
                _ => None,
            };
            match (rekey_of, old, chosen, ts, ni) {
                (Some(_), None, ..) => notify_only(notify::CHILD_SA_NOT_FOUND, vec![]),
                (None, ..) => {
                    out.push(Output::Log("CREATE_CHILD_SA for an additional CHILD_SA: answered NO_ADDITIONAL_SAS (one CHILD_SA per tunnel, as AWS)".into()));
                    notify_only(notify::NO_ADDITIONAL_SAS, vec![])
                }
                (_, _, None, ..) => {
                    out.push(Output::Log(
                        "No Proposal Match Found. Notifying with \"No proposal chosen\"".into(),
                    ));
                    notify_only(notify::NO_PROPOSAL_CHOSEN, vec![])
                }
                (_, _, _, None, _) => {
                    out.push(Output::Log(
                        "AWS: Traffic Selector: TS_UNACCEPTABLE: sent to the initiator".into(),
                    ));
                    notify_only(notify::TS_UNACCEPTABLE, vec![])
                }
                (_, _, _, _, None) => notify_only(notify::INVALID_SYNTAX, vec![]),
                (Some(_), Some(old), Some(c), Some((ts_remote, ts_local)), Some(ni)) => {
                    match (c.dh, &ke) {
                        (Some(g), Some((kg, _))) if g != *kg => {
                            notify_only(notify::INVALID_KE_PAYLOAD, g.to_be_bytes().to_vec())
                        }
                        _ => {
                            let nr = nonce(fill);
                            let kp = ke
                                .as_ref()
                                .and_then(|(g, _)| KeyPair::generate(*g, fill).ok());
                            let shared = match (&kp, &ke) {
                                (Some(kp), Some((_, d))) => kp.shared(d).ok(),
                                _ => None,
                            };
                            if ke.is_some() && shared.is_none() {
                                notify_only(notify::INVALID_SYNTAX, vec![])
                            } else {
                                let new_in = self.new_spi(fill);
                                let e = enc_transform(&c.enc)
                                    .and_then(|t| Encr::from_transform(t.id, t.key_bits));
                                let il = c
                                    .integ
                                    .as_deref()
                                    .and_then(integ_of)
                                    .map_or(0, |(i, _)| i.key_len());
                                let (Some(e), Some(s), Some(k)) =
                                    (e, self.suite, self.keys.as_ref())
                                else {
                                    return out;
                                };
                                let ck = keys::child_keys(
                                    s.prf,
                                    &k.sk_d,
                                    shared.as_deref().map(|v| v.as_slice()),
                                    &ni,
                                    &nr,
                                    e.key_len(),
                                    il,
                                );
                                let peer_spi = u32::from_be_bytes(
                                    c.spi
                                        .get(..4)
                                        .and_then(|s| s.try_into().ok())
                                        .unwrap_or([0; 4]),
                                );
                                let mut r = vec![
                                    Payload::Sa(vec![chosen_proposal(
                                        &c,
                                        proto::ESP,
                                        &new_in.to_be_bytes(),
                                    )]),
                                    Payload::Nonce(nr.clone()),
                                ];
                                if let Some(kp) = &kp {
                                    r.push(Payload::Ke {
                                        group: kp.group,
                                        data: kp.public.clone(),
                                    });
                                }
                                r.push(Payload::TsI(vec![ts_remote]));
                                r.push(Payload::TsR(vec![ts_local]));
                                self.children.push((new_in, peer_spi));
                                if self.rekey.as_ref().is_some_and(|rk| rk.old_in == old.0) {
                                    self.peer_rekey = Some(PeerRekey {
                                        old_in: old.0,
                                        new_in,
                                        nonces: [ni.clone(), nr.clone()],
                                    });
                                }
                                out.push(Output::ChildUp(Box::new(ChildSa {
                                    spi_in: new_in,
                                    spi_out: peer_spi,
                                    encryption: c.enc.clone(),
                                    integrity: c.integ.clone(),
                                    enc_in: ck.enc_i,
                                    int_in: ck.int_i,
                                    enc_out: ck.enc_r,
                                    int_out: ck.int_r,
                                    local_ts: ts_local,
                                    remote_ts: ts_remote,
                                    nat_t: self.nat_detected,
                                    switch_now: false,
                                })));
                                r
                            }
                        }
                    }
                }
            }
        };
        if msg::find_notify(&inner, notify::NO_PROPOSAL_CHOSEN).is_some()
            || msg::find_notify(&inner, notify::TS_UNACCEPTABLE).is_some()
        {
            out.push(Output::Log(
                "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
            ));
        }
        let bytes = sealed!(
            self,
            self.encrypted(exchange::CREATE_CHILD_SA, id, true, &inner, fill)
        );
        out.insert(
            1,
            Output::Log(format!(
                "AWS tunnel is sending response (id={id}) for CREATE_CHILD_SA"
            )),
        );
        out.insert(1, self.send_response(id, bytes));
        out
    }
}

impl IkeSa {
    /// Whether a datagram with these SPIs belongs to this SA (or to the one it replaced).
    pub fn owns(&self, spi_i: u64, spi_r: u64) -> bool {
        (spi_i == self.spi_i
            && (spi_r == self.spi_r || spi_r == 0 || self.state == State::InitSent))
            || self
                .retired
                .iter()
                .any(|(o, _)| o.spi_i == spi_i && o.spi_r == spi_r)
    }

    /// Starts an IKE SA rekey (CREATE_CHILD_SA with an IKE proposal, section 1.3.2).
    pub fn rekey_ike(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.state != State::Established || self.pending.is_some() {
            return vec![];
        }
        let group = self.suite.map(|s| s.dh).unwrap_or(14);
        let Ok(kp) = KeyPair::generate(group, fill) else {
            return vec![];
        };
        let new_spi = random_spi64(fill);
        let ni = nonce(fill);
        let mut dh = vec![group];
        dh.extend(self.cfg.p1_dh.iter().filter(|g| **g != group));
        let offered = build_proposals(
            proto::IKE,
            &new_spi.to_be_bytes(),
            &self.cfg.p1_enc,
            &self.cfg.p1_integ,
            &dh,
            true,
        );
        let inner = vec![
            Payload::Sa(offered.clone()),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group,
                data: kp.public.clone(),
            },
        ];
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(exchange::CREATE_CHILD_SA, id, false, &inner, fill)
        );
        self.ike_rekey = Some(IkeRekey {
            id,
            spi: new_spi,
            ni,
            kp,
            offered,
        });
        vec![
            Output::Log(format!(
                "AWS tunnel is sending request (id={id}) for CREATE_CHILD_SA (IKE SA rekey)"
            )),
            self.send_request(id, bytes, now),
        ]
    }

    /// A context for the IKE SA a rekey makes (section 2.18: SKEYSEED = prf(SK_d (old), g^ir
    /// (new) | Ni | Nr), message IDs from 0). Its nonces are kept for the collision rule.
    #[allow(clippy::too_many_arguments)]
    fn rekeyed(
        &self,
        we_initiated: bool,
        spi_i: u64,
        spi_r: u64,
        suite: IkeSuite,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
        now: f64,
    ) -> Option<Box<IkeSa>> {
        let old_prf = self.suite.map(|s| s.prf).unwrap_or(suite.prf);
        let old_d = &self.keys.as_ref()?.sk_d;
        let keys = keys::ike_keys(
            suite.prf,
            suite.encr,
            suite.integ,
            shared,
            ni,
            nr,
            spi_i,
            spi_r,
            Some((old_prf, old_d)),
        );
        let mut n = Box::new(IkeSa::new(
            self.cfg.clone(),
            we_initiated,
            spi_i,
            spi_r,
            now,
        ));
        n.state = State::Established;
        n.suite = Some(suite);
        n.keys = Some(keys);
        n.ni = ni.to_vec();
        n.nr = nr.to_vec();
        n.nat_detected = self.nat_detected;
        n.spi_taken = self.spi_taken.clone();
        Some(n)
    }

    /// Makes `new` the live IKE SA: the CHILD_SAs, counters and replaced contexts move to
    /// it, and the current one is retired (sending its DELETE when `delete_old`: the side
    /// that created the surviving SA deletes the old one). The retired context keeps its
    /// message IDs and cached response, so a retransmitted request still gets its answer.
    fn adopt(
        &mut self,
        new: Box<IkeSa>,
        delete_old: bool,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let mut old = Box::new(std::mem::replace(self, *new));
        self.children = std::mem::take(&mut old.children);
        self.child_spi = old.child_spi;
        self.retired = std::mem::take(&mut old.retired);
        self.ike_rekeys = old.ike_rekeys + 1;
        self.collisions = old.collisions;
        self.dropped = old.dropped;
        self.verified += old.verified;
        self.last_rx = self.last_rx.max(old.last_rx);
        old.retiring = true;
        old.ike_rekey = None;
        old.peer_ike_new = None;
        let mut out = vec![];
        if delete_old {
            out.extend(old.request_ike_delete(now, fill));
        }
        self.retire(old, now);
        out.push(Output::Log(format!(
            "IKE SA rekeyed: new SPIs {:016x}/{:016x}",
            self.spi_i, self.spi_r
        )));
        out
    }

    /// Keeps a replaced IKE SA for `RETIRED_LINGER_S` (and while its request is out); at most
    /// `MAX_RETIRED`, so a peer rekeying in a loop cannot make them pile up.
    fn retire(&mut self, mut old: Box<IkeSa>, now: f64) {
        old.retiring = true;
        if self.retired.len() >= MAX_RETIRED {
            self.retired.remove(0);
        }
        self.retired.push((old, now + RETIRED_LINGER_S));
    }

    /// Sends INFORMATIONAL { D(IKE) } on this IKE SA and waits for the answer.
    fn request_ike_delete(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        let (id, bytes) = sealed!(self, self.ike_delete_request(fill));
        vec![self.send_request(id, bytes, now)]
    }

    /// The next request of this IKE SA: INFORMATIONAL { D(IKE) } (message id, datagram).
    fn ike_delete_request(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(u32, Vec<u8>), String> {
        let id = self.next_req_id;
        self.next_req_id += 1;
        let delete = [Payload::Delete {
            protocol: proto::IKE,
            spis: vec![],
        }];
        Ok((
            id,
            self.encrypted(exchange::INFORMATIONAL, id, false, &delete, fill)?,
        ))
    }

    /// Whether one of our CHILD_SA exchanges (rekey or delete) is outstanding.
    fn child_exchange_outstanding(&self) -> bool {
        self.pending.is_some() && (self.rekey.is_some() || self.deleting.is_some())
    }

    /// A replaced IKE SA is asked to create or rekey an SA (section 2.25.2: the SA is being
    /// closed): TEMPORARY_FAILURE, the peer retries on the new IKE SA.
    fn refuse_while_retiring(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if self.decrypt(raw, m).is_none() {
            return vec![];
        }
        self.last_rx = now;
        let id = m.header.msg_id;
        self.next_peer_id = id + 1;
        let inner = notify_only(notify::TEMPORARY_FAILURE, vec![]);
        let bytes = sealed!(
            self,
            self.encrypted(exchange::CREATE_CHILD_SA, id, true, &inner, fill)
        );
        vec![
            self.send_response(id, bytes),
            Output::Log(format!(
                "CREATE_CHILD_SA request (id={id}) on the replaced IKE SA: TEMPORARY_FAILURE"
            )),
        ]
    }

    fn on_ike_rekey_request(
        &mut self,
        id: u32,
        props: Vec<ProposalWire>,
        ni: Option<Vec<u8>>,
        ke: Option<(u16, Vec<u8>)>,
        mut out: Vec<Output>,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let c = choose(
            &props,
            proto::IKE,
            &self.cfg.p1_enc,
            &self.cfg.p1_integ,
            &self.cfg.p1_dh,
            true,
        );
        let now = self.last_rx;
        let mut made = None;
        let inner = match (c, ni, ke) {
            (None, ..) => {
                out.push(Output::Log(
                    "No Proposal Match Found. Notifying with \"No proposal chosen\" (IKE SA rekey)"
                        .into(),
                ));
                notify_only(notify::NO_PROPOSAL_CHOSEN, vec![])
            }
            (Some(_), None, _) | (Some(_), _, None) => notify_only(notify::INVALID_SYNTAX, vec![]),
            (Some(c), Some(ni), Some((g, data))) => {
                let want = c.dh.unwrap_or(g);
                if want != g {
                    notify_only(notify::INVALID_KE_PAYLOAD, want.to_be_bytes().to_vec())
                } else if self.child_exchange_outstanding() {
                    // Section 2.25: our CHILD_SA exchange finishes first, the peer retries.
                    notify_only(notify::TEMPORARY_FAILURE, vec![])
                } else {
                    let peer_spi = c
                        .spi
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    let encr =
                        enc_transform(&c.enc).and_then(|t| Encr::from_transform(t.id, t.key_bits));
                    let integ = c.integ.as_deref().and_then(integ_of).map(|x| x.0);
                    match (KeyPair::generate(g, fill), encr, c.prf) {
                        (Ok(kp), Some(encr), Some(prf)) => match kp.shared(&data) {
                            Ok(shared) => {
                                let my_spi = random_spi64(fill);
                                let nr = nonce(fill);
                                let suite = IkeSuite {
                                    encr,
                                    integ,
                                    prf,
                                    dh: g,
                                };
                                // The peer initiated this rekey: it is the new SA's initiator.
                                made = self.rekeyed(
                                    false, peer_spi, my_spi, suite, &shared, &ni, &nr, now,
                                );
                                vec![
                                    Payload::Sa(vec![chosen_proposal(
                                        &c,
                                        proto::IKE,
                                        &my_spi.to_be_bytes(),
                                    )]),
                                    Payload::Nonce(nr),
                                    Payload::Ke {
                                        group: g,
                                        data: kp.public.clone(),
                                    },
                                ]
                            }
                            Err(_) => notify_only(notify::INVALID_SYNTAX, vec![]),
                        },
                        _ => notify_only(notify::NO_PROPOSAL_CHOSEN, vec![]),
                    }
                }
            }
        };
        let bytes = sealed!(
            self,
            self.encrypted(exchange::CREATE_CHILD_SA, id, true, &inner, fill)
        );
        out.push(self.send_response(id, bytes));
        out.push(Output::Log(format!(
            "AWS tunnel is sending response (id={id}) for CREATE_CHILD_SA (IKE SA rekey)"
        )));
        if let Some(new) = made {
            if self.ike_rekey.is_some() {
                // Both sides rekey the IKE SA at once (section 2.8.2): which new SA survives
                // is decided by the nonces once our own exchange ends.
                out.push(Output::Log(
                    "AWS tunnel detected a (IKE_REKEY) collision: simultaneous IKE SA rekeys"
                        .into(),
                ));
                self.peer_ike_new = Some(new);
            } else {
                out.extend(self.adopt(new, false, now, fill));
            }
        }
        out
    }

    fn on_ike_rekey_response(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.decrypt(raw, m) else {
            return vec![];
        };
        self.pending = None;
        self.last_rx = now;
        let id = m.header.msg_id;
        let mut out = vec![Output::Log(format!(
            "AWS tunnel processed response (id={id}) for CREATE_CHILD_SA (IKE SA rekey)"
        ))];
        let Some(rk) = self.ike_rekey.take() else {
            return out;
        };
        let mine = self.ike_rekey_result(&ps, &rk, now);
        let theirs = self.peer_ike_new.take();
        match (mine, theirs) {
            (Ok(mine), None) => out.extend(self.adopt(mine, true, now, fill)),
            (Err(why), None) => out.push(Output::Log(why)),
            (Err(why), Some(theirs)) => {
                // Ours failed (or the peer, having finished first, refused it): the peer's
                // new IKE SA is the only one, and the peer deletes the old one.
                out.push(Output::Log(format!(
                    "{why}; the IKE SA the peer made by its rekey is kept"
                )));
                out.extend(self.adopt(theirs, false, now, fill));
            }
            (Ok(mine), Some(theirs)) => {
                // Section 2.8.2: the new IKE SA holding the lowest of the four nonces is
                // redundant and deleted by the side that created it (the initiator of its
                // exchange); the side that created the other one deletes the old IKE SA.
                self.collisions += 1;
                let lowest = |s: &IkeSa| s.ni.clone().min(s.nr.clone());
                out.push(Output::Log(
                    "AWS tunnel (IKE_SA) redundant SA is being deleted due to detected collision"
                        .into(),
                ));
                if lowest(&mine) < lowest(&theirs) {
                    out.extend(self.adopt(theirs, false, now, fill));
                    let mut mine = mine;
                    out.extend(mine.request_ike_delete(now, fill));
                    self.retire(mine, now);
                } else {
                    out.extend(self.adopt(mine, true, now, fill));
                    self.retire(theirs, now);
                }
            }
        }
        out
    }

    /// The new IKE SA from our rekey's response, or why there is none.
    fn ike_rekey_result(
        &self,
        ps: &[Payload],
        rk: &IkeRekey,
        now: f64,
    ) -> Result<Box<IkeSa>, String> {
        let (my_spi, ni, kp) = (rk.spi, &rk.ni, &rk.kp);
        for nt in [
            notify::NO_PROPOSAL_CHOSEN,
            notify::TEMPORARY_FAILURE,
            notify::INVALID_KE_PAYLOAD,
            notify::INVALID_SYNTAX,
        ] {
            if msg::find_notify(ps, nt).is_some() {
                return Err(format!(
                    "IKE SA rekey refused by the peer (notify {nt}); the old IKE SA stays, retrying later"
                ));
            }
        }
        let sa_p = single_proposal(ps);
        let nr = msg::nonce(ps).filter(|n| nonce_ok(n));
        let ke = msg::ke(ps);
        let (Some(p), Some(nr), Some((g, ke))) = (sa_p, nr, ke) else {
            return Err("IKE SA rekey: incomplete response; the old IKE SA stays".into());
        };
        let p = p.map_err(|why| format!("IKE SA rekey: {why}; the old IKE SA stays"))?;
        let (encr, integ, prf, dh) = accept_ike_choice(&p, &rk.offered, 8)
            .map_err(|why| format!("IKE SA rekey: {why}; the old IKE SA stays"))?;
        if dh != Some(kp.group) || g != kp.group {
            return Err(
                "IKE SA rekey: the chosen DH group is not the one we sent KE for; the old IKE SA stays"
                    .into(),
            );
        }
        let shared = kp
            .shared(ke)
            .map_err(|_| "IKE SA rekey: the peer's KE value is invalid".to_string())?;
        let peer_spi = p
            .spi
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let suite = IkeSuite {
            encr,
            integ,
            prf,
            dh: kp.group,
        };
        self.rekeyed(true, my_spi, peer_spi, suite, &shared, ni, nr, now)
            .ok_or_else(|| "IKE SA rekey: no keys".to_string())
    }
}

impl IkeSa {
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
