//! Main mode with pre-shared keys (RFC 2409 section 5.4), both roles, with NAT detection
//! and the float to port 4500 (RFC 3947 sections 3 and 4):
//!
//! ```text
//! 1  HDR, SA, VID(NAT-T), VID(DPD)        ->
//! 2                                       <- HDR, SA, VID...
//! 3  HDR, KE, Ni, NAT-D, NAT-D            ->
//! 4                                       <- HDR, KE, Nr, NAT-D, NAT-D
//! 5  HDR*, IDii, HASH_I [, N(INITIAL-CONTACT)] ->   (port 4500 when a NAT was seen)
//! 6                                       <- HDR*, IDir, HASH_R
//! ```
//!
//! HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b), HASH_R likewise with
//! the halves swapped and IDir_b. Aggressive mode is refused.

use super::attrs::{self, P1Suite};
use super::wire::{self, Delete, Header, Id, Notify, ProposalV1, Raw, notify, proto, pt, xchg};
use super::*;

impl Isakmp {
    /// Starts a new ISAKMP SA as initiator (main mode message 1).
    pub fn initiate(
        cfg: Config,
        life: Lifetimes,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Isakmp, Vec<Output>), String> {
        Isakmp::start(cfg, life, true, now, fill)
    }

    pub(super) fn start(
        cfg: Config,
        life: Lifetimes,
        first: bool,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(Isakmp, Vec<Output>), String> {
        let offered = attrs::p1_transforms(&cfg.p1_enc, &cfg.p1_integ, &cfg.p1_dh, life.phase1_s);
        if offered.is_empty() {
            return Err(
                "no IKEv1 phase 1 transform (IKEv1 needs AES128 or AES256 in phase1_encryption)"
                    .into(),
            );
        }
        let ci = random_u64(fill);
        let mut sa = Isakmp::new(cfg, life, true, ci, 0, now);
        sa.send_initial_contact = first;
        sa.sai_b = wire::encode_sa(&[ProposalV1 {
            num: 1,
            protocol: proto::ISAKMP,
            spi: vec![],
            transforms: offered.clone(),
        }]);
        sa.offered = offered;
        let bytes = wire::encode_plain(
            sa.header(xchg::MAIN, 0, false),
            &[
                Raw::new(pt::SA, sa.sai_b.clone()),
                Raw::new(pt::VID, wire::VID_NATT.to_vec()),
                Raw::new(pt::VID, wire::VID_DPD.to_vec()),
            ],
        );
        let out = sa.send_waiting(0, bytes, now);
        Ok((sa, vec![out]))
    }

    /// Answers main mode message 1 as responder: the new half-open SA and message 2, or
    /// only a NO-PROPOSAL-CHOSEN notify / a refusal and a log line.
    pub fn respond(
        cfg: Config,
        life: Lifetimes,
        raw: &[u8],
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> (Option<Isakmp>, Vec<Output>) {
        let Ok(h) = Header::parse(raw) else {
            return (None, vec![]);
        };
        if h.exchange == xchg::AGGRESSIVE {
            return (
                None,
                vec![Output::Log(format!(
                    "engine: IKEv1 Aggressive Mode refused from {} (AWS accepts Main Mode only)",
                    cfg.peer_addr
                ))],
            );
        }
        if h.exchange != xchg::MAIN
            || h.cr != 0
            || h.msg_id != 0
            || h.flags & wire::FLAG_ENCRYPTED != 0
        {
            return (None, vec![]);
        }
        let Ok(ps) = wire::parse_chain(h.next, &raw[Header::LEN..]) else {
            return (None, vec![]);
        };
        let find = |t: u8| ps.iter().find(|(p, _)| p.ptype == t).map(|(p, _)| &p.body);
        let Some(sa_body) = find(pt::SA) else {
            return (None, vec![]);
        };
        let Ok(props) = wire::parse_sa(sa_body) else {
            return (None, vec![]);
        };
        // Every transform of every ISAKMP proposal, with what it is.
        let cands: Vec<(&ProposalV1, &TransformV1, P1Suite)> = props
            .iter()
            .filter(|p| p.protocol == proto::ISAKMP)
            .flat_map(|p| p.transforms.iter().map(move |t| (p, t)))
            .filter_map(|(p, t)| attrs::p1_suite(t).map(|s| (p, t, s)))
            .collect();
        let offers: Vec<(String, Option<String>, Option<u16>)> = cands
            .iter()
            .map(|(_, _, s)| {
                (
                    s.cipher.name().to_string(),
                    Some(s.hash.name().to_string()),
                    Some(s.group),
                )
            })
            .collect();
        let enc: Vec<String> = cfg
            .p1_enc
            .iter()
            .filter(|e| !e.contains("GCM"))
            .cloned()
            .collect();
        let Some(k) = attrs::choose(&offers, &enc, &cfg.p1_integ, &cfg.p1_dh, true) else {
            let mut b = vec![0u8; 8];
            fill(&mut b);
            let hdr = Header {
                cr: u64::from_be_bytes(b.try_into().unwrap_or([1; 8])) | 1,
                exchange: xchg::INFO,
                msg_id: random_msg_id(fill),
                ..h
            };
            let n = Notify {
                protocol: proto::ISAKMP,
                ntype: notify::NO_PROPOSAL_CHOSEN,
                spi: vec![],
                data: vec![],
            };
            let reply = wire::encode_plain(hdr, &[Raw::new(pt::N, n.encode())]);
            return (
                None,
                vec![
                    Output::Send {
                        data: reply,
                        nat_t: false,
                    },
                    Output::Log("No Proposal Match Found by AWS".into()),
                ],
            );
        };
        let (prop, t, suite) = cands[k];
        let cr = random_u64(fill);
        let mut sa = Isakmp::new(cfg, life, false, h.ci, cr, now);
        sa.suite = Some(suite);
        sa.sai_b = sa_body.clone();
        for v in ps.iter().filter(|(p, _)| p.ptype == pt::VID) {
            sa.peer_natt |= v.0.body == wire::VID_NATT;
            sa.peer_dpd |= v.0.body.get(..16) == Some(&wire::VID_DPD[..]);
        }
        let mut payloads = vec![Raw::new(
            pt::SA,
            wire::encode_sa(&[ProposalV1 {
                num: prop.num,
                protocol: proto::ISAKMP,
                spi: vec![],
                transforms: vec![t.clone()],
            }]),
        )];
        if sa.peer_natt {
            payloads.push(Raw::new(pt::VID, wire::VID_NATT.to_vec()));
        }
        payloads.push(Raw::new(pt::VID, wire::VID_DPD.to_vec()));
        let bytes = wire::encode_plain(sa.header(xchg::MAIN, 0, false), &payloads);
        let out = sa.reply(raw, bytes);
        (Some(sa), vec![out])
    }

    /// hash(CKY-I | CKY-R | IP | port) with the negotiated hash (RFC 3947 section 3.2). The
    /// port is 500: a peer whose port a NAT changed is behind a NAT either way.
    fn natd_hash(&self, addr: IpAddr) -> Vec<u8> {
        let ip = match addr {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        let (ci, cr) = (self.ci.to_be_bytes(), self.cr.to_be_bytes());
        keys::hash(self.prf(), &[&ci, &cr, &ip, &500u16.to_be_bytes()])
    }

    /// NAT-D payloads: the peer's address first, then ours (a hash that cannot match when
    /// NAT-T is forced, so that the peer floats and encapsulates).
    fn nat_d(&self) -> Vec<Raw> {
        let src = if self.cfg.force_nat_t {
            vec![0u8; self.prf().len()]
        } else {
            self.natd_hash(self.cfg.local_addr)
        };
        vec![
            Raw::new(pt::NATD, self.natd_hash(self.cfg.peer_addr)),
            Raw::new(pt::NATD, src),
        ]
    }

    /// Compares the peer's NAT-D payloads with what we see: their first names us, the
    /// rest name them; a difference on either side is a NAT.
    fn check_nat_d(&mut self, ps: &[(Raw, usize)]) {
        if !self.peer_natt {
            return;
        }
        let theirs: Vec<&Vec<u8>> = ps
            .iter()
            .filter(|(p, _)| p.ptype == pt::NATD)
            .map(|(p, _)| &p.body)
            .collect();
        let Some(first) = theirs.first() else {
            return;
        };
        let behind_nat = **first != self.natd_hash(self.cfg.local_addr);
        let peer = self.natd_hash(self.cfg.peer_addr);
        let peer_natted = !theirs[1..].iter().any(|t| **t == peer);
        self.nat_detected = behind_nat || peer_natted || self.cfg.force_nat_t;
    }

    fn id_body(&self) -> Vec<u8> {
        Id::addr(self.cfg.local_addr).encode()
    }

    /// HASH_I (we_initiator) or HASH_R over an ID body.
    fn auth_hash(&self, initiator_side: bool, id_b: &[u8]) -> Zeroizing<Vec<u8>> {
        let k = self.keys.as_ref().map(|k| &k.skeyid[..]).unwrap_or(&[]);
        let (ci, cr) = (self.ci.to_be_bytes(), self.cr.to_be_bytes());
        if initiator_side {
            self.prf()
                .prf(k, &[&self.gxi, &self.gxr, &ci, &cr, &self.sai_b, id_b])
        } else {
            self.prf()
                .prf(k, &[&self.gxr, &self.gxi, &cr, &ci, &self.sai_b, id_b])
        }
    }

    /// Computes g^xy and the phase 1 keys from the peer's KE and nonce.
    fn derive(&mut self, peer_ke: &[u8]) -> Result<(), String> {
        let (Some(kp), Some(s)) = (self.dh.as_ref(), self.suite) else {
            return Err("no DH key pair".into());
        };
        let gxy = kp.shared(peer_ke).map_err(|e| e.to_string())?;
        if self.initiator {
            self.gxr = peer_ke.to_vec();
        } else {
            self.gxi = peer_ke.to_vec();
        }
        let key_len = usize::from(s.cipher.transform().1 / 8);
        self.keys = Some(keys::phase1_keys(
            s.hash.prf(),
            &self.cfg.psk,
            &self.ni,
            &self.nr,
            &gxy,
            self.ci,
            self.cr,
            key_len,
        ));
        self.iv = keys::iv_of(s.hash.prf(), &[&self.gxi, &self.gxr]);
        Ok(())
    }

    pub(super) fn on_main_mode(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let plain = h.flags & wire::FLAG_ENCRYPTED == 0;
        match (self.mm, plain) {
            (Mm::I1, true) => self.on_mm2(raw, h, now, fill),
            (Mm::R2, true) => self.on_mm3(raw, h, now, fill),
            (Mm::I3, true) => self.on_mm4(raw, h, now, fill),
            (Mm::R4, false) => self.on_mm5(raw, h, now, fill),
            (Mm::I5, false) => self.on_mm6(raw, h, now, fill),
            _ => {
                self.dropped += 1;
                vec![]
            }
        }
    }

    fn plain_payloads(&mut self, raw: &[u8], h: &Header) -> Option<Vec<(Raw, usize)>> {
        let r = wire::parse_chain(h.next, &raw[Header::LEN..]).ok();
        if r.is_none() {
            self.dropped += 1;
        }
        r
    }

    /// Message 3 or 4: its payloads, the KE data and the nonce (8 to 256 bytes, RFC 2409
    /// section 5); None (counted) without them.
    #[allow(clippy::type_complexity)]
    fn ke_nonce(
        &mut self,
        raw: &[u8],
        h: &Header,
    ) -> Option<(Vec<(Raw, usize)>, Vec<u8>, Vec<u8>)> {
        let ps = self.plain_payloads(raw, h)?;
        let body = |t: u8| {
            ps.iter()
                .find(|(p, _)| p.ptype == t)
                .map(|(p, _)| p.body.clone())
        };
        match (body(pt::KE), body(pt::NONCE)) {
            (Some(ke), Some(n)) if (8..=256).contains(&n.len()) => Some((ps, ke, n)),
            _ => {
                self.dropped += 1;
                None
            }
        }
    }

    fn on_mm2(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.plain_payloads(raw, h) else {
            return vec![];
        };
        let chosen = ps
            .iter()
            .find(|(p, _)| p.ptype == pt::SA)
            .and_then(|(p, _)| wire::parse_sa(&p.body).ok())
            .filter(|props| props.len() == 1 && props[0].transforms.len() == 1)
            .and_then(|props| {
                let t = props[0].transforms[0].clone();
                self.offered.iter().any(|o| o.same_as(&t)).then_some(t)
            })
            .and_then(|t| attrs::p1_suite(&t));
        let Some(suite) = chosen.filter(|_| h.cr != 0) else {
            self.dropped += 1;
            return vec![];
        };
        self.cr = h.cr;
        self.suite = Some(suite);
        for (v, _) in ps.iter().filter(|(p, _)| p.ptype == pt::VID) {
            self.peer_natt |= v.body == wire::VID_NATT;
            self.peer_dpd |= v.body.get(..16) == Some(&wire::VID_DPD[..]);
        }
        let kp = match KeyPair::generate(suite.group, fill) {
            Ok(k) => k,
            Err(e) => return self.close(format!("phase 1 DH group {}: {e}", suite.group)),
        };
        self.ni = nonce(fill);
        self.gxi = kp.public.clone();
        let mut payloads = vec![
            Raw::new(pt::KE, kp.public.clone()),
            Raw::new(pt::NONCE, self.ni.clone()),
        ];
        self.dh = Some(kp);
        if self.peer_natt {
            payloads.extend(self.nat_d());
        }
        self.mm = Mm::I3;
        let bytes = wire::encode_plain(self.header(xchg::MAIN, 0, false), &payloads);
        vec![self.send_waiting(0, bytes, now)]
    }

    fn on_mm3(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let (Some((ps, ke, ni)), Some(s)) = (self.ke_nonce(raw, h), self.suite) else {
            return vec![];
        };
        let kp = match KeyPair::generate(s.group, fill) {
            Ok(k) => k,
            Err(e) => return self.close(format!("phase 1 DH group {}: {e}", s.group)),
        };
        self.gxr = kp.public.clone();
        self.dh = Some(kp);
        self.ni = ni;
        self.nr = nonce(fill);
        if self.derive(&ke).is_err() {
            self.dh = None;
            self.keys = None;
            self.dropped += 1;
            return vec![];
        }
        self.check_nat_d(&ps);
        let mut payloads = vec![
            Raw::new(pt::KE, self.gxr.clone()),
            Raw::new(pt::NONCE, self.nr.clone()),
        ];
        if self.peer_natt {
            payloads.extend(self.nat_d());
        }
        self.mm = Mm::R4;
        self.last_rx = now;
        let bytes = wire::encode_plain(self.header(xchg::MAIN, 0, false), &payloads);
        vec![self.reply(raw, bytes)]
    }

    fn on_mm4(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        _fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some((ps, ke, nr)) = self.ke_nonce(raw, h) else {
            return vec![];
        };
        self.nr = nr;
        if self.derive(&ke).is_err() {
            self.keys = None;
            self.dropped += 1;
            return vec![];
        }
        self.check_nat_d(&ps);
        let id_b = self.id_body();
        let hash_i = self.auth_hash(true, &id_b);
        let mut payloads = vec![Raw::new(pt::ID, id_b), Raw::new(pt::HASH, hash_i.to_vec())];
        if self.send_initial_contact {
            let n = Notify {
                protocol: proto::ISAKMP,
                ntype: notify::INITIAL_CONTACT,
                spi: [self.ci.to_be_bytes(), self.cr.to_be_bytes()].concat(),
                data: vec![],
            };
            payloads.push(Raw::new(pt::N, n.encode()));
        }
        self.mm = Mm::I5;
        let iv = self.iv;
        let (bytes, next_iv) = match self.seal(xchg::MAIN, 0, &payloads, &iv) {
            Ok(x) => x,
            Err(e) => return self.close(e),
        };
        self.iv = next_iv;
        vec![self.send_waiting(0, bytes, now)]
    }

    /// The peer's identity and HASH in message 5 or 6; None (counted, and the PSK line
    /// logged once) when they do not decrypt or verify.
    fn check_auth(&mut self, raw: &[u8], h: &Header) -> Option<(Parsed, [u8; 16])> {
        let peer_side = !self.initiator;
        let ok = self.open(raw, h, &self.iv.clone()).and_then(|(p, iv)| {
            let id = p.find(pt::ID)?.to_vec();
            let got = p.find(pt::HASH)?.to_vec();
            let want = self.auth_hash(peer_side, &id);
            crate::keys::ct_eq(&want, &got).then_some((p, iv))
        });
        if ok.is_none() {
            self.dropped += 1;
        }
        ok
    }

    /// Message 5 or 6 did not decrypt to a verified HASH: the PSKs differ (or someone
    /// forged it). Logged once per SA; the responder also tells the peer once, in the clear
    /// (it cannot read what our key would encrypt), with AUTHENTICATION-FAILED. Nothing else
    /// changes: the peer's retransmission may still verify.
    fn psk_mismatch(&mut self, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if std::mem::replace(&mut self.psk_mismatch_logged, true) {
            return vec![];
        }
        let mut out = vec![];
        if !self.initiator {
            let n = Notify {
                protocol: proto::ISAKMP,
                ntype: notify::AUTHENTICATION_FAILED,
                spi: [self.ci.to_be_bytes(), self.cr.to_be_bytes()].concat(),
                data: vec![],
            };
            let h = self.header(xchg::INFO, random_msg_id(fill), false);
            out.push(Output::Send {
                data: wire::encode_plain(h, &[Raw::new(pt::N, n.encode())]),
                nat_t: self.floated(),
            });
        }
        out.push(Output::Log(
            "AWS tunnel payload decryption was unsuccessful due to invalid Pre-shared Key".into(),
        ));
        out
    }

    fn on_mm5(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some((p, iv)) = self.check_auth(raw, h) else {
            return self.psk_mismatch(fill);
        };
        self.verified += 1;
        self.last_rx = now;
        self.iv = iv;
        self.initial_contact = p
            .all(pt::N)
            .filter_map(|b| Notify::parse(b).ok())
            .any(|n| n.ntype == notify::INITIAL_CONTACT);
        let id_b = self.id_body();
        let hash_r = self.auth_hash(false, &id_b);
        let payloads = [Raw::new(pt::ID, id_b), Raw::new(pt::HASH, hash_r.to_vec())];
        self.mm = Mm::Done;
        let (bytes, last) = match self.seal(xchg::MAIN, 0, &payloads, &iv) {
            Ok(x) => x,
            Err(e) => return self.close(e),
        };
        self.iv = last;
        let mut out = vec![self.reply(raw, bytes)];
        out.extend(self.established());
        out
    }

    fn on_mm6(
        &mut self,
        raw: &[u8],
        h: &Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some((_, last)) = self.check_auth(raw, h) else {
            return self.psk_mismatch(fill);
        };
        self.verified += 1;
        self.last_rx = now;
        self.iv = last;
        self.mm = Mm::Done;
        self.pending.retain(|p| p.msg_id != 0);
        let mut out = self.established();
        if self.send_initial_contact {
            // A first ISAKMP SA of ours: the IPsec SA follows at once.
            out.extend(self.start_quick_mode(None, now, fill));
        }
        out
    }

    fn established(&mut self) -> Vec<Output> {
        let s = self.suite.map_or(String::new(), |s| {
            format!("{}/{}/DH group {}", s.cipher.name(), s.hash.name(), s.group)
        });
        vec![
            Output::IkeUp,
            Output::Log(format!(
                "engine: IKEv1 Main Mode complete ({s}){}",
                if self.nat_detected {
                    ", NAT-T: floated to port 4500"
                } else {
                    ""
                }
            )),
        ]
    }

    /// INFORMATIONAL { D(ISAKMP) } of this SA (not retransmitted: RFC 2408 has no answer).
    pub(super) fn delete_isakmp(&mut self, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.mm != Mm::Done {
            return vec![];
        }
        let d = Delete {
            protocol: proto::ISAKMP,
            spis: vec![[self.ci.to_be_bytes(), self.cr.to_be_bytes()].concat()],
        };
        self.informational(Raw::new(pt::D, d.encode()), fill)
            .into_iter()
            .collect()
    }
}

impl Isakmp {
    /// The peer's lifetime of this ISAKMP SA when shorter than ours (it rekeys by it).
    pub fn p1_lifetime(&self) -> u32 {
        self.suite
            .and_then(|s| s.life_s)
            .map_or(self.life.phase1_s, |l| l.min(self.life.phase1_s))
    }
}
