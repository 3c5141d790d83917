//! IKEv1 (RFC 2409) with pre-shared keys as a sans-IO state machine beside IKEv2: one
//! [`Isakmp`] is one ISAKMP SA (phase 1, main mode) and the IPsec SAs its quick modes made
//! (phase 2), with NAT traversal (RFC 3947), DPD (RFC 3706), INFORMATIONAL deletes and
//! notifies, phase 1 and phase 2 rekeys, retransmission and duplicate handling.
//!
//! Contract (the same as [`crate::session`]): no I/O, no clock; the caller passes `now`
//! and a random generator in, and takes the same [`Output`]s out (datagrams, CHILD_SAs to
//! install, state changes, AWS log lines). Aggressive mode is refused. A message changes
//! state only once its HASH verified (main mode messages 1 to 4 carry none by design; they
//! only build a half-open SA the shell keeps aside until message 5 authenticates). A
//! responder's choice is accepted only when it is one of our transforms unchanged; a
//! peer's proposal is answered only from our own lists. Nothing panics on input.
//!
//! Layout: this module holds the SA's state, dispatch, encryption and timers; one module
//! per exchange: [`main_mode`], [`quick_mode`], [`informational`]. [`wire`] is the ISAKMP
//! codec, [`attrs`] the algorithm attributes, [`keys`] the key derivation.

pub mod attrs;
pub mod informational;
pub mod keys;
pub mod main_mode;
pub mod quick_mode;
pub mod wire;

use crate::dh::KeyPair;
use crate::keys::Prf;
use crate::session::{
    Config, Output, Phase, SpiTaken, State, nonce, random_spi32, random_spi64 as random_u64,
};
use attrs::{P1Suite, P2Suite};
use keys::P1Keys;
use std::net::IpAddr;
use wire::{Header, Raw, TransformV1, xchg};
use zeroize::Zeroizing;

/// Lifetimes we propose (AWS `phase1_lifetime_seconds`, `phase2_lifetime_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub phase1_s: u32,
    pub phase2_s: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            phase1_s: 28800,
            phase2_s: 3600,
        }
    }
}

/// Seconds an IPsec SA replaced by a rekey stays for the packets already on their way,
/// before we delete it (the peer may keep it until its own hard lifetime otherwise).
pub const REKEYED_LINGER_S: f64 = 10.0;
/// Seconds a replaced ISAKMP SA stays to answer a retransmission or a DELETE.
pub const RETIRED_LINGER_S: f64 = 60.0;
/// Quick modes in progress at most (ours and the peer's).
const MAX_QUICK_MODES: usize = 4;
/// Replies remembered for duplicate requests.
const MAX_REPLIES: usize = 8;
/// Live IPsec SA pairs at most: the tunnel's, a rekey's new one, and room for both sides
/// rekeying at once.
const MAX_IPSEC_SAS: usize = 4;

/// Where main mode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mm {
    /// Initiator: message 1, 3 or 5 sent.
    I1,
    I3,
    I5,
    /// Responder: message 2 or 4 sent.
    R2,
    R4,
    Done,
    Closed,
}

/// A message of ours that waits for an answer (retransmitted with backoff).
#[derive(Debug)]
struct Pending {
    msg_id: u32,
    bytes: Vec<u8>,
    nat_t: bool,
    sends: u32,
    due: f64,
}

/// One quick mode exchange (RFC 2409 section 5.5).
struct Qm {
    msg_id: u32,
    initiator: bool,
    /// The IV for the next message of this exchange.
    iv: [u8; 16],
    ni: Vec<u8>,
    nr: Vec<u8>,
    kp: Option<KeyPair>,
    spi_in: u32,
    /// Our transforms (initiator): the answer must be one of them.
    offered: Vec<TransformV1>,
    /// The inbound SPI of the IPsec SA this one replaces (our rekey).
    rekey_of: Option<u32>,
    ts_local: crate::msg::TrafficSelector,
    ts_remote: crate::msg::TrafficSelector,
    /// Responder: waiting for message 3.
    waiting_3: bool,
    last_rx: f64,
}

/// One ISAKMP SA and its IPsec SAs.
pub struct Isakmp {
    cfg: Config,
    life: Lifetimes,
    pub initiator: bool,
    pub ci: u64,
    pub cr: u64,
    mm: Mm,
    pub suite: Option<P1Suite>,
    /// The initiator's SA payload body (SAi_b, in both hashes).
    sai_b: Vec<u8>,
    offered: Vec<TransformV1>,
    dh: Option<KeyPair>,
    gxi: Vec<u8>,
    gxr: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<P1Keys>,
    /// Main mode's running IV, then the last phase 1 block (base of later IVs).
    iv: [u8; 16],
    peer_natt: bool,
    pub peer_dpd: bool,
    pub nat_detected: bool,
    /// Send INITIAL-CONTACT in message 5 (a first SA, not a rekey).
    send_initial_contact: bool,
    /// The peer sent INITIAL-CONTACT: SAs of an older ISAKMP SA are stale.
    pub initial_contact: bool,
    pending: Vec<Pending>,
    replies: Vec<([u8; 32], Vec<u8>, bool)>,
    qms: Vec<Qm>,
    /// Live IPsec SAs: (our inbound SPI, our outbound SPI).
    children: Vec<(u32, u32)>,
    /// IPsec SAs replaced by a rekey, deleted at the given time.
    lingering: Vec<(u32, f64)>,
    dpd_seq: u32,
    /// The PFS group of the last quick mode: a rekey proposes it (IKEv1 carries one KE, so
    /// a first quick mode can only offer the first configured group).
    p2_group: Option<u16>,
    /// Our phase 1 rekey: a new main mode in progress.
    next: Option<Box<Isakmp>>,
    /// ISAKMP SAs this one replaced, kept until the given time.
    retired: Vec<(Box<Isakmp>, f64)>,
    spi_taken: Option<SpiTaken>,
    psk_mismatch_logged: bool,
    pub ike_rekeys: u32,
    pub dropped: u64,
    pub verified: u64,
    pub last_rx: f64,
}

impl std::fmt::Debug for Isakmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Isakmp({:016x}/{:016x}, {:?}, {})",
            self.ci,
            self.cr,
            self.mm,
            if self.initiator {
                "initiator"
            } else {
                "responder"
            }
        )
    }
}

fn random_msg_id(fill: &mut dyn FnMut(&mut [u8])) -> u32 {
    loop {
        let mut b = [0u8; 4];
        fill(&mut b);
        let v = u32::from_be_bytes(b);
        if v != 0 {
            return v;
        }
    }
}

fn digest(raw: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(raw).into()
}

/// A parsed encrypted (or cleartext) message: payloads with their offsets in `plain`.
pub(crate) struct Parsed {
    pub plain: Vec<u8>,
    pub payloads: Vec<(Raw, usize)>,
}

impl Parsed {
    pub fn find(&self, t: u8) -> Option<&[u8]> {
        self.payloads
            .iter()
            .find(|(p, _)| p.ptype == t)
            .map(|(p, _)| &p.body[..])
    }
    pub fn all(&self, t: u8) -> impl Iterator<Item = &[u8]> {
        self.payloads
            .iter()
            .filter(move |(p, _)| p.ptype == t)
            .map(|(p, _)| &p.body[..])
    }
    /// The bytes of every payload after the first (a leading HASH covers them), without
    /// the padding.
    pub fn after_first(&self) -> &[u8] {
        let (Some((_, a)), Some((last, lo))) = (self.payloads.get(1), self.payloads.last()) else {
            return &[];
        };
        let end = lo + 4 + last.body.len();
        self.plain.get(*a..end).unwrap_or(&[])
    }
}

impl Isakmp {
    fn new(cfg: Config, life: Lifetimes, initiator: bool, ci: u64, cr: u64, now: f64) -> Isakmp {
        Isakmp {
            cfg,
            life,
            initiator,
            ci,
            cr,
            mm: if initiator { Mm::I1 } else { Mm::R2 },
            suite: None,
            sai_b: vec![],
            offered: vec![],
            dh: None,
            gxi: vec![],
            gxr: vec![],
            ni: vec![],
            nr: vec![],
            keys: None,
            iv: [0; 16],
            peer_natt: false,
            peer_dpd: false,
            nat_detected: false,
            send_initial_contact: false,
            initial_contact: false,
            pending: vec![],
            replies: vec![],
            qms: vec![],
            children: vec![],
            lingering: vec![],
            dpd_seq: 0,
            p2_group: None,
            next: None,
            retired: vec![],
            spi_taken: None,
            psk_mismatch_logged: false,
            ike_rekeys: 0,
            dropped: 0,
            verified: 0,
            last_rx: now,
        }
    }

    /// The state in the IKEv2 shell's terms.
    pub fn state(&self) -> State {
        match self.mm {
            Mm::I1 | Mm::I3 => State::InitSent,
            Mm::I5 => State::AuthSent,
            Mm::R2 | Mm::R4 => State::InitDone,
            Mm::Done => State::Established,
            Mm::Closed => State::Closed,
        }
    }

    /// Tells the SA which inbound SPIs the gateway already uses.
    pub fn set_spi_taken(&mut self, taken: SpiTaken) {
        self.spi_taken = Some(taken);
    }

    fn new_spi(&self, fill: &mut dyn FnMut(&mut [u8])) -> u32 {
        let mut v = random_spi32(fill);
        for _ in 0..64 {
            let taken = self.children.iter().any(|c| c.0 == v)
                || self.qms.iter().any(|q| q.spi_in == v)
                || self.spi_taken.as_ref().is_some_and(|f| f(v));
            if !taken {
                break;
            }
            v = random_spi32(fill);
        }
        v
    }

    fn prf(&self) -> Prf {
        self.suite.map_or(Prf::Sha1, |s| s.hash.prf())
    }

    fn header(&self, exchange: u8, msg_id: u32, encrypted: bool) -> Header {
        Header {
            ci: self.ci,
            cr: self.cr,
            next: 0,
            exchange,
            flags: if encrypted { wire::FLAG_ENCRYPTED } else { 0 },
            msg_id,
            length: 0,
        }
    }

    /// An encrypted message; returns it and its last ciphertext block (the next IV).
    fn seal(
        &self,
        exchange: u8,
        msg_id: u32,
        payloads: &[Raw],
        iv: &[u8; 16],
    ) -> Result<(Vec<u8>, [u8; 16]), String> {
        let ka = &self.keys.as_ref().ok_or("no phase 1 keys yet")?.ka;
        let mut body = vec![];
        let first = wire::encode_chain(payloads, &mut body);
        let ct = keys::encrypt(ka, iv, &body).map_err(|e| format!("ISAKMP cipher: {e}"))?;
        let mut h = self.header(exchange, msg_id, true);
        h.next = first;
        h.length = (Header::LEN + ct.len()) as u32;
        let mut out = Vec::with_capacity(h.length as usize);
        h.write(&mut out);
        out.extend_from_slice(&ct);
        Ok((out, keys::last_block(&ct)))
    }

    /// Decrypts and parses a message body with `iv`; also returns the next IV. None when
    /// it does not decrypt to a payload chain (not yet a verdict on its HASH).
    fn open(&self, raw: &[u8], h: &Header, iv: &[u8; 16]) -> Option<(Parsed, [u8; 16])> {
        let ka = &self.keys.as_ref()?.ka;
        if h.flags & wire::FLAG_ENCRYPTED == 0 {
            return None;
        }
        let ct = &raw[Header::LEN..];
        let plain = keys::decrypt(ka, iv, ct)?;
        let payloads = wire::parse_chain(h.next, &plain).ok()?;
        Some((Parsed { plain, payloads }, keys::last_block(ct)))
    }

    /// A HASH payload computed with SKEYID_a over `parts`.
    fn hash_a(&self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let k = self.keys.as_ref().map(|k| &k.skeyid_a[..]).unwrap_or(&[]);
        self.prf().prf(k, parts)
    }

    /// The IV of the first message of a quick mode or informational exchange.
    fn iv_for(&self, msg_id: u32) -> [u8; 16] {
        keys::iv_of(self.prf(), &[&self.iv, &msg_id.to_be_bytes()])
    }

    fn send(&mut self, bytes: Vec<u8>, nat_t: bool) -> Output {
        Output::Send { data: bytes, nat_t }
    }

    /// Sends `bytes` and retransmits them until an answer to `msg_id` arrives.
    fn send_waiting(&mut self, msg_id: u32, bytes: Vec<u8>, now: f64) -> Output {
        let nat_t = self.floated();
        self.pending.retain(|p| p.msg_id != msg_id);
        self.pending.push(Pending {
            msg_id,
            bytes: bytes.clone(),
            nat_t,
            sends: 1,
            due: now + self.cfg.retransmit_base_s,
        });
        Output::Send { data: bytes, nat_t }
    }

    /// Sends a reply to the message `raw` (its duplicates get the same reply).
    fn reply(&mut self, raw: &[u8], bytes: Vec<u8>) -> Output {
        let nat_t = self.floated();
        if self.replies.len() >= MAX_REPLIES {
            self.replies.remove(0);
        }
        self.replies.push((digest(raw), bytes.clone(), nat_t));
        Output::Send { data: bytes, nat_t }
    }

    /// Messages go to port 4500 (with the non-ESP marker) from main mode message 5 on when
    /// a NAT was detected (RFC 3947 section 4).
    fn floated(&self) -> bool {
        self.nat_detected && !matches!(self.mm, Mm::I1 | Mm::I3 | Mm::R2)
    }

    fn close(&mut self, why: String) -> Vec<Output> {
        self.mm = Mm::Closed;
        self.pending.clear();
        vec![Output::Log(why.clone()), Output::Closed(why)]
    }

    /// Handles a datagram for this SA (the caller routed it here by cookies).
    pub fn handle(&mut self, raw: &[u8], now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        let Ok(h) = Header::parse(raw) else {
            self.dropped += 1;
            return vec![];
        };
        if let Some(k) = self
            .retired
            .iter()
            .position(|(o, _)| o.ci == h.ci && o.cr == h.cr)
        {
            // A replaced ISAKMP SA: a DELETE of an IPsec SA still reaches the live ones.
            let old = &mut self.retired[k].0;
            old.children = self.children.clone();
            let v0 = old.verified;
            let out = old.handle(raw, now, fill);
            self.verified += old.verified - v0;
            let left = std::mem::take(&mut old.children);
            self.children.retain(|c| left.contains(c));
            // Its end is not the tunnel's: the closing lines go with the Closed.
            let closed: Vec<String> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Closed(why) => Some(why.clone()),
                    _ => None,
                })
                .collect();
            return out
                .into_iter()
                .filter(|o| match o {
                    Output::Send { .. } | Output::ChildDown { .. } => true,
                    Output::Log(l) => !closed.contains(l),
                    _ => false,
                })
                .collect();
        }
        if self.next.as_ref().is_some_and(|n| n.owns(h.ci, h.cr)) {
            return self.handle_in_next(raw, now, fill);
        }
        // A retransmission of a message we answered gets the same answer (main mode
        // message 1 still without the responder cookie, too).
        let d = digest(raw);
        if let Some((_, bytes, nat_t)) = self.replies.iter().find(|r| r.0 == d) {
            return vec![Output::Send {
                data: bytes.clone(),
                nat_t: *nat_t,
            }];
        }
        if h.ci != self.ci || (h.cr != self.cr && self.mm != Mm::I1) {
            self.dropped += 1;
            return vec![];
        }
        match h.exchange {
            xchg::MAIN => self.on_main_mode(raw, &h, now, fill),
            xchg::QUICK if self.mm == Mm::Done => self.on_quick_mode(raw, &h, now, fill),
            xchg::INFO => self.on_informational(raw, &h, now, fill),
            _ => {
                self.dropped += 1;
                vec![]
            }
        }
    }

    /// A message for our phase 1 rekey; once it is established it replaces this SA.
    fn handle_in_next(
        &mut self,
        raw: &[u8],
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(n) = self.next.as_mut() else {
            return vec![];
        };
        let out = n.handle(raw, now, fill);
        self.after_next(out, now, fill)
    }

    /// Takes the outputs of our phase 1 rekey: when it is established, it becomes this SA
    /// (the IPsec SAs move over) and the old one is deleted; when it failed, it goes and
    /// the old SA stays.
    fn after_next(
        &mut self,
        out: Vec<Output>,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let state = self.next.as_ref().map(|n| n.mm);
        let mut res: Vec<Output> = vec![];
        match state {
            Some(Mm::Done) => {
                let Some(new) = self.next.take() else {
                    return res;
                };
                let mut old = std::mem::replace(self, *new);
                self.children = std::mem::take(&mut old.children);
                self.lingering = std::mem::take(&mut old.lingering);
                self.p2_group = old.p2_group;
                self.ike_rekeys = old.ike_rekeys + 1;
                self.spi_taken = old.spi_taken.clone();
                self.dropped += old.dropped;
                self.verified += old.verified;
                self.retired = std::mem::take(&mut old.retired);
                let g = self.suite.map_or(0, |s| s.group);
                res.extend(out.into_iter().filter(|o| matches!(o, Output::Send { .. })));
                res.push(Output::Log(format!(
                    "IKEv1 phase 1 rekeyed: new ISAKMP SA {:016x}/{:016x} (DH group {g})",
                    self.ci, self.cr
                )));
                res.extend(old.delete_isakmp(fill));
                old.mm = Mm::Closed;
                self.retired.push((Box::new(old), now + RETIRED_LINGER_S));
            }
            Some(Mm::Closed) => {
                self.next = None;
                res.extend(out.into_iter().filter_map(|o| match o {
                    Output::Closed(why) | Output::Log(why) => Some(Output::Log(format!(
                        "IKEv1 phase 1 rekey failed, the old ISAKMP SA stays: {why}"
                    ))),
                    Output::Send { .. } => Some(o),
                    _ => None,
                }));
            }
            _ => res.extend(out.into_iter().filter(|o| !matches!(o, Output::Closed(_)))),
        }
        res
    }

    /// Takes over from the ISAKMP SA `old` of the same tunnel (the peer rekeyed phase 1
    /// with a new main mode): its IPsec SAs live on under this one, unless the peer sent
    /// INITIAL-CONTACT (it restarted: they are stale, and returned for removal).
    pub fn adopt(&mut self, mut old: Isakmp, now: f64) -> Vec<u32> {
        if self.initial_contact {
            return old.children.iter().map(|c| c.0).collect();
        }
        self.children = std::mem::take(&mut old.children);
        self.lingering = std::mem::take(&mut old.lingering);
        self.p2_group = old.p2_group;
        self.ike_rekeys = old.ike_rekeys + 1;
        old.next = None;
        self.retired.push((Box::new(old), now + RETIRED_LINGER_S));
        vec![]
    }

    /// When [`Isakmp::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<f64> {
        let mut t = self
            .pending
            .iter()
            .map(|p| p.due)
            .chain(self.lingering.iter().map(|l| l.1))
            .chain(self.retired.iter().map(|r| r.1))
            .chain(self.next.as_ref().and_then(|n| n.poll_timeout()))
            .min_by(f64::total_cmp);
        // A responder's half-finished quick mode is dropped after a while.
        let q = self
            .qms
            .iter()
            .map(|q| q.last_rx + 60.0)
            .min_by(f64::total_cmp);
        if let Some(q) = q {
            t = Some(t.map_or(q, |t| t.min(q)));
        }
        t
    }

    /// Retransmits, gives up, deletes lingering IPsec SAs, forgets replaced ISAKMP SAs.
    pub fn handle_timeout(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        let mut out = vec![];
        if self.next.is_some() {
            let o = self
                .next
                .as_mut()
                .map(|n| n.handle_timeout(now, fill))
                .unwrap_or_default();
            out.extend(self.after_next(o, now, fill));
        }
        self.retired.retain(|(_, until)| now < *until);
        let due: Vec<u32> = self
            .lingering
            .iter()
            .filter(|l| now >= l.1)
            .map(|l| l.0)
            .collect();
        self.lingering.retain(|l| now < l.1);
        for spi_in in due {
            out.extend(self.delete_child(spi_in, fill));
        }
        self.qms.retain(|q| now < q.last_rx + 60.0);
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if now < p.due {
                i += 1;
                continue;
            }
            if p.sends > self.cfg.retransmits {
                let id = p.msg_id;
                let sends = p.sends - 1;
                self.pending.remove(i);
                if id == 0 {
                    let what = if self.mm == Mm::Done {
                        "Main Mode"
                    } else {
                        "Main Mode (phase 1)"
                    };
                    out.extend(self.close(format!("{what} timed out after {sends} retransmits")));
                    return out;
                }
                self.qms.retain(|q| q.msg_id != id);
                out.push(Output::Log(format!(
                    "Quick Mode (id={id}) timed out after {sends} retransmits: phase 2 not established, the current SAs stay"
                )));
                continue;
            }
            p.due = now + self.cfg.retransmit_base_s * f64::from(1u32 << p.sends.min(16));
            p.sends += 1;
            out.push(Output::Send {
                data: p.bytes.clone(),
                nat_t: p.nat_t,
            });
            i += 1;
        }
        out
    }

    /// Phase 1 and phase 2 states for the tunnel log.
    pub fn phases(&self) -> (Phase, Phase) {
        let p1 = match self.mm {
            Mm::Done if self.next.is_some() => Phase::Rekeying,
            Mm::Done => Phase::Established,
            Mm::Closed => Phase::Down,
            _ => Phase::Negotiating,
        };
        let ours = self.qms.iter().any(|q| q.initiator && q.rekey_of.is_some());
        let first = !self.qms.is_empty();
        (p1, Phase::phase2(self.children.len(), p1, first, ours))
    }

    pub fn dh_group(&self) -> Option<u16> {
        self.suite.map(|s| s.group)
    }

    /// Our inbound SPIs of the live IPsec SAs.
    pub fn children(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.0).collect()
    }

    /// Whether a datagram with these cookies belongs to this SA, its rekey or one it
    /// replaced.
    pub fn owns(&self, ci: u64, cr: u64) -> bool {
        (ci == self.ci && (cr == self.cr || cr == 0 || self.mm == Mm::I1))
            || self.next.as_ref().is_some_and(|n| n.owns(ci, cr))
            || self.retired.iter().any(|(o, _)| o.ci == ci && o.cr == cr)
    }

    /// The Wireshark/tshark `ikev1_decryption_table` line (initiator cookie, Ka), debug
    /// key export only.
    pub fn wireshark_key_line(&self) -> Option<String> {
        let k = self.keys.as_ref()?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Some(format!("{:016x},{}", self.ci, hex(&k.ka)))
    }

    /// Starts a phase 1 rekey (a new main mode; the IPsec SAs move to it once it is up).
    pub fn rekey_ike(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.mm != Mm::Done || self.next.is_some() {
            return vec![];
        }
        let mut cfg = self.cfg.clone();
        // The new SA floats like this one.
        cfg.force_nat_t = self.cfg.force_nat_t;
        match Isakmp::start(cfg, self.life, false, now, fill) {
            Ok((mut n, out)) => {
                n.spi_taken = self.spi_taken.clone();
                n.nat_detected = self.nat_detected;
                self.next = Some(Box::new(n));
                let mut o = vec![Output::Log(
                    "AWS-initiated IKEv1 phase 1 rekey: new Main Mode".into(),
                )];
                o.extend(out);
                o
            }
            Err(e) => vec![Output::Log(format!("phase 1 rekey not started: {e}"))],
        }
    }
}

/// The `ChildSa` of a finished quick mode.
pub(crate) struct ChildParts {
    pub suite: P2Suite,
    pub spi_in: u32,
    pub spi_out: u32,
    pub lifetime_s: Option<u32>,
}

/// The protected networks of a quick mode's IDs.
pub(crate) fn ts_of(id: &wire::Id) -> Option<crate::msg::TrafficSelector> {
    let (start, end) = id.to_range()?;
    Some(crate::msg::TrafficSelector {
        ip_proto: id.protocol,
        start_port: if id.port == 0 { 0 } else { id.port },
        end_port: if id.port == 0 { 65535 } else { id.port },
        start,
        end,
    })
}

/// `inner` lies within `outer` (addresses; protocol and ports any or equal).
pub(crate) fn within(
    inner: &crate::msg::TrafficSelector,
    outer: &crate::msg::TrafficSelector,
) -> bool {
    let v = |a: IpAddr| match a {
        IpAddr::V4(x) => u128::from(u32::from(x)),
        IpAddr::V6(x) => u128::from(x),
    };
    inner.start.is_ipv4() == outer.start.is_ipv4()
        && v(inner.start) >= v(outer.start)
        && v(inner.end) <= v(outer.end)
        && v(inner.start) <= v(inner.end)
        && (outer.ip_proto == 0 || outer.ip_proto == inner.ip_proto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::TrafficSelector;

    fn cfg(local: &str, peer: &str) -> Config {
        Config {
            local_addr: local.parse().unwrap(),
            peer_addr: peer.parse().unwrap(),
            psk: Zeroizing::new(b"unit.psk".to_vec()),
            p1_enc: vec!["AES128".into()],
            p1_integ: vec!["SHA1".into()],
            p1_dh: vec![19],
            p2_enc: vec!["AES128".into()],
            p2_integ: vec!["SHA1".into()],
            p2_dh: vec![19],
            local_ts: TrafficSelector::any(false),
            remote_ts: TrafficSelector::any(false),
            force_nat_t: false,
            retransmits: 2,
            retransmit_base_s: 1.0,
        }
    }

    fn sends(out: &[Output]) -> Vec<Vec<u8>> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    fn logs(out: &[Output]) -> String {
        out.iter()
            .filter_map(|o| match o {
                Output::Log(l) => Some(l.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Delivers back and forth until quiet; returns B's outputs.
    fn pump(
        a: &mut Isakmp,
        b: &mut Isakmp,
        mut to_b: Vec<Vec<u8>>,
        r: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let mut b_out = vec![];
        for _ in 0..8 {
            let mut to_a = vec![];
            for d in to_b.drain(..) {
                let o = b.handle(&d, 0.0, r);
                to_a.extend(sends(&o));
                b_out.extend(o);
            }
            for d in to_a {
                to_b.extend(sends(&a.handle(&d, 0.0, r)));
            }
            if to_b.is_empty() {
                break;
            }
        }
        b_out
    }

    fn pair(r: &mut dyn FnMut(&mut [u8])) -> (Isakmp, Isakmp) {
        let life = Lifetimes::default();
        let (mut a, out) = Isakmp::initiate(cfg("192.0.2.1", "192.0.2.2"), life, 0.0, r).unwrap();
        let (b, out) =
            Isakmp::respond(cfg("192.0.2.2", "192.0.2.1"), life, &sends(&out)[0], 0.0, r);
        let mut b = b.unwrap();
        let mut to_b = vec![];
        for d in sends(&out) {
            to_b.extend(sends(&a.handle(&d, 0.0, r)));
        }
        pump(&mut a, &mut b, to_b, r);
        assert_eq!((a.children.len(), b.children.len()), (1, 1));
        (a, b)
    }

    /// An authenticated quick mode with a payload type no RFC defines gets
    /// INVALID-PAYLOAD-TYPE; more IPsec SAs than a tunnel and its rekeys need are refused.
    #[test]
    fn unknown_payloads_and_too_many_sas_are_refused() {
        let mut r = crate::seeded::rng(5);
        let (mut a, mut b) = pair(&mut r);
        let msg_id = 77u32;
        let rest = [
            Raw::new(wire::pt::NONCE, vec![1; 16]),
            Raw::new(50, vec![0; 4]),
        ];
        let mut rest_b = vec![];
        wire::encode_chain(&rest, &mut rest_b);
        let h1 = a.hash_a(&[&msg_id.to_be_bytes(), &rest_b]);
        let mut payloads = vec![Raw::new(wire::pt::HASH, h1.to_vec())];
        payloads.extend(rest);
        let iv = a.iv_for(msg_id);
        let (m, _) = a.seal(xchg::QUICK, msg_id, &payloads, &iv).unwrap();
        let out = b.handle(&m, 1.0, &mut r);
        assert!(
            logs(&out).contains("payload type 50: notifying INVALID-PAYLOAD-TYPE"),
            "{out:?}"
        );
        assert_eq!(sends(&out).len(), 1);
        // Three more pairs are taken (rekeys), a fifth is refused.
        for k in 0..4 {
            let out = a.start_quick_mode(None, 2.0, &mut r);
            let b_out = pump(&mut a, &mut b, sends(&out), &mut r);
            if k < 3 {
                assert_eq!(b.children.len(), k + 2, "{}", logs(&b_out));
            } else {
                assert_eq!(b.children.len(), 4);
                assert!(
                    logs(&b_out).contains("another IPsec SA refused"),
                    "{}",
                    logs(&b_out)
                );
            }
        }
    }
}
