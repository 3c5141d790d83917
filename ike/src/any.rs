//! One tunnel's IKE SA whatever the version: an IKEv2 [`IkeSa`] or an IKEv1 [`Isakmp`]
//! behind one interface, so the control-plane shell drives both the same way (the
//! datagram's version byte picks the responder, the tunnel's `ike_versions` the initiator).
//!
//! Contract: every method is the version's own, unchanged; where the versions differ
//! (phase 1 rekeys, which replace the ISAKMP SA but keep the IPsec SAs in IKEv1) the
//! difference is named here: [`Sa::take_over`].

use crate::session::{Config, IkeSa, Output, Phase, SpiTaken, State};
use crate::v1::{Isakmp, Lifetimes};

/// An IKE SA of either version.
#[derive(Debug)]
pub enum Sa {
    V2(IkeSa),
    V1(Isakmp),
}

/// What the shell needs of a datagram before choosing an SA: SPIs (cookies), the major
/// version and whether it is an IKEv2 response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek {
    pub spi_i: u64,
    pub spi_r: u64,
    pub major: u8,
    pub response: bool,
}

/// Reads the fixed header common to both versions (28 bytes; the version byte's major
/// half is 1 or 2); None for anything else.
pub fn peek(b: &[u8]) -> Option<Peek> {
    if b.len() < 28 {
        return None;
    }
    let major = b[17] >> 4;
    if !(1..=2).contains(&major) {
        return None;
    }
    let len = u32::from_be_bytes(b[24..28].try_into().ok()?) as usize;
    if len != b.len() {
        return None;
    }
    Some(Peek {
        spi_i: u64::from_be_bytes(b[0..8].try_into().ok()?),
        spi_r: u64::from_be_bytes(b[8..16].try_into().ok()?),
        major,
        response: major == 2 && b[19] & crate::msg::flags::RESPONSE != 0,
    })
}

macro_rules! both {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            Sa::V2($x) => $e,
            Sa::V1($x) => $e,
        }
    };
}

impl Sa {
    /// Starts an SA as initiator with IKE version `version` (1 or 2).
    pub fn initiate(
        version: u8,
        cfg: Config,
        life: Lifetimes,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Sa, Vec<Output>), String> {
        if version == 1 {
            Isakmp::initiate(cfg, life, now, fill).map(|(s, o)| (Sa::V1(s), o))
        } else {
            IkeSa::initiate(cfg, now, fill).map(|(s, o)| (Sa::V2(s), o))
        }
    }

    /// Answers a first message (IKE_SA_INIT request, main mode message 1) by its version.
    pub fn respond(
        cfg: Config,
        life: Lifetimes,
        raw: &[u8],
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> (Option<Sa>, Vec<Output>) {
        match peek(raw).map(|p| p.major) {
            Some(1) => {
                let (s, o) = Isakmp::respond(cfg, life, raw, now, fill);
                (s.map(Sa::V1), o)
            }
            _ => {
                let (s, o) = IkeSa::respond(cfg, raw, now, fill);
                (s.map(Sa::V2), o)
            }
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            Sa::V2(_) => 2,
            Sa::V1(_) => 1,
        }
    }

    pub fn handle(&mut self, raw: &[u8], now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        both!(self, s => s.handle(raw, now, fill))
    }
    pub fn state(&self) -> State {
        match self {
            Sa::V2(s) => s.state,
            Sa::V1(s) => s.state(),
        }
    }
    pub fn owns(&self, spi_i: u64, spi_r: u64) -> bool {
        both!(self, s => s.owns(spi_i, spi_r))
    }
    pub fn spis(&self) -> (u64, u64) {
        match self {
            Sa::V2(s) => (s.spi_i, s.spi_r),
            Sa::V1(s) => (s.ci, s.cr),
        }
    }
    pub fn initiator(&self) -> bool {
        both!(self, s => s.initiator)
    }
    pub fn nat_detected(&self) -> bool {
        both!(self, s => s.nat_detected)
    }
    pub fn verified(&self) -> u64 {
        both!(self, s => s.verified)
    }
    pub fn dropped(&self) -> u64 {
        both!(self, s => s.dropped)
    }
    pub fn ike_rekeys(&self) -> u32 {
        both!(self, s => s.ike_rekeys)
    }
    pub fn collisions(&self) -> u32 {
        match self {
            Sa::V2(s) => s.collisions,
            Sa::V1(_) => 0,
        }
    }
    pub fn last_rx(&self) -> f64 {
        both!(self, s => s.last_rx)
    }
    pub fn children(&self) -> Vec<u32> {
        both!(self, s => s.children())
    }
    pub fn phases(&self) -> (Phase, Phase) {
        both!(self, s => s.phases())
    }
    pub fn dh_group(&self) -> Option<u16> {
        both!(self, s => s.dh_group())
    }
    pub fn set_spi_taken(&mut self, taken: SpiTaken) {
        both!(self, s => s.set_spi_taken(taken))
    }
    pub fn poll_timeout(&self) -> Option<f64> {
        both!(self, s => s.poll_timeout())
    }
    pub fn handle_timeout(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        match self {
            Sa::V2(s) => s.handle_timeout(now),
            Sa::V1(s) => s.handle_timeout(now, fill),
        }
    }
    pub fn rekey_ike(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        both!(self, s => s.rekey_ike(now, fill))
    }
    pub fn rekey_child(
        &mut self,
        spi_in: u32,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        match self {
            Sa::V2(s) => s.rekey_child(spi_in, None, now, fill),
            Sa::V1(s) => s.rekey_child(spi_in, now, fill),
        }
    }
    pub fn send_dpd(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        both!(self, s => s.send_dpd(now, fill))
    }
    pub fn delete(&mut self, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        both!(self, s => s.delete(fill))
    }

    /// The tshark decryption table this SA's key line belongs in, and the line.
    pub fn wireshark_key_line(&self) -> Option<(&'static str, String)> {
        match self {
            Sa::V2(s) => s
                .wireshark_key_line()
                .map(|l| ("ikev2_decryption_table", l)),
            Sa::V1(s) => s
                .wireshark_key_line()
                .map(|l| ("ikev1_decryption_table", l)),
        }
    }

    /// The phase 1 lifetime the SA is rekeyed by (IKEv1: the peer's when shorter).
    pub fn p1_lifetime(&self, configured: u32) -> u32 {
        match self {
            Sa::V2(_) => configured,
            Sa::V1(s) => s.p1_lifetime().min(configured),
        }
    }

    /// This SA, just authenticated, replaces `old` (the tunnel's previous SA). Returns the
    /// inbound SPIs of `old`'s CHILD_SAs that must go. IKEv2: all of them (a new IKE SA
    /// from IKE_SA_INIT is a fresh start). IKEv1: none, when this is the peer's phase 1
    /// rekey (the IPsec SAs live on under the new ISAKMP SA), all with INITIAL-CONTACT.
    pub fn take_over(&mut self, old: Sa, now: f64) -> Vec<u32> {
        match (self, old) {
            (Sa::V1(new), Sa::V1(old)) if old.state() == State::Established => new.adopt(old, now),
            (_, old) => old.children(),
        }
    }
}
