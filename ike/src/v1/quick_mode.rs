//! Quick mode (RFC 2409 section 5.5): the IPsec SA in tunnel mode, both roles, with PFS
//! when a phase 2 DH group is configured, the tunnel's networks as IDci / IDcr, the
//! encapsulation mode of RFC 3947 section 5 behind a NAT, and RESPONDER-LIFETIME
//! (RFC 2407 section 4.6.3.7).
//!
//! ```text
//! 1  HDR*, HASH(1), SA, Ni [, KE], IDci, IDcr   ->
//! 2                                             <- HDR*, HASH(2), SA, Nr [, KE], IDci, IDcr
//! 3  HDR*, HASH(3)                              ->
//! ```
//!
//! HASH(1) = prf(SKEYID_a, M-ID | the payloads after HASH), HASH(2) = prf(SKEYID_a, M-ID |
//! Ni_b | the payloads after HASH), HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b). The
//! responder installs the SA pair when it sends message 2 (the initiator starts using it
//! once message 3 is out); a rekey's old SA pair lingers for [`REKEYED_LINGER_S`] and is
//! then deleted by the rekey's initiator with an INFORMATIONAL DELETE (by the responder
//! after three times as long, if the initiator never does).

use super::attrs::{self, p2};
use super::wire::{self, Attr, Id, Notify, ProposalV1, Raw, notify, proto, pt, xchg};
use super::*;
use crate::session::ChildSa;

impl Isakmp {
    /// Rekeys the IPsec SA with inbound SPI `spi_in` (a new quick mode; the old SA pair
    /// stays until the new one is up, and a while after).
    pub fn rekey_child(
        &mut self,
        spi_in: u32,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if self.mm != Mm::Done || self.qms.iter().any(|q| q.initiator) {
            return vec![];
        }
        self.start_quick_mode(Some(spi_in), now, fill)
    }

    /// Starts a quick mode as initiator.
    pub(super) fn start_quick_mode(
        &mut self,
        rekey_of: Option<u32>,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if self.qms.len() >= MAX_QUICK_MODES {
            return vec![];
        }
        let msg_id = random_msg_id(fill);
        let group = self.p2_group.filter(|g| self.cfg.p2_dh.contains(g)).or(self
            .cfg
            .p2_dh
            .first()
            .copied());
        let kp = match group.map(|g| KeyPair::generate(g, fill)).transpose() {
            Ok(k) => k,
            Err(e) => return vec![Output::Log(format!("Quick Mode not started: {e}"))],
        };
        let encap = if self.nat_detected {
            p2::UDP_TUNNEL
        } else {
            p2::TUNNEL
        };
        let offered = attrs::p2_transforms(
            &self.cfg.p2_enc,
            &self.cfg.p2_integ,
            group,
            encap,
            self.life.phase2_s,
        );
        if offered.is_empty() {
            return vec![Output::Log(
                "Quick Mode not started: no phase 2 transform".into(),
            )];
        }
        let spi_in = self.new_spi(fill);
        let ni = nonce(fill);
        let (lt, rt) = (self.cfg.local_ts, self.cfg.remote_ts);
        let mut rest = vec![
            Raw::new(
                pt::SA,
                wire::encode_sa(&[ProposalV1 {
                    num: 1,
                    protocol: proto::ESP,
                    spi: spi_in.to_be_bytes().to_vec(),
                    transforms: offered.clone(),
                }]),
            ),
            Raw::new(pt::NONCE, ni.clone()),
        ];
        if let Some(k) = &kp {
            rest.push(Raw::new(pt::KE, k.public.clone()));
        }
        rest.push(Raw::new(pt::ID, Id::range(lt.start, lt.end, 0, 0).encode()));
        rest.push(Raw::new(pt::ID, Id::range(rt.start, rt.end, 0, 0).encode()));
        let mut rest_b = vec![];
        wire::encode_chain(&rest, &mut rest_b);
        let h1 = self.hash_a(&[&msg_id.to_be_bytes(), &rest_b]);
        let mut payloads = vec![Raw::new(pt::HASH, h1.to_vec())];
        payloads.extend(rest);
        let iv = self.iv_for(msg_id);
        let (bytes, next_iv) = match self.seal(xchg::QUICK, msg_id, &payloads, &iv) {
            Ok(x) => x,
            Err(e) => return vec![Output::Log(format!("Quick Mode not started: {e}"))],
        };
        self.qms.push(Qm {
            msg_id,
            initiator: true,
            iv: next_iv,
            ni,
            nr: vec![],
            kp,
            spi_in,
            offered,
            rekey_of,
            ts_local: lt,
            ts_remote: rt,
            waiting_3: false,
            last_rx: now,
        });
        vec![
            self.send_waiting(msg_id, bytes, now),
            Output::Log(format!(
                "engine: Quick Mode (id={msg_id}) sent{}",
                if rekey_of.is_some() {
                    ": AWS-initiated phase 2 rekey"
                } else {
                    ""
                }
            )),
        ]
    }

    pub(super) fn on_quick_mode(
        &mut self,
        raw: &[u8],
        h: &wire::Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if h.msg_id == 0 {
            self.dropped += 1;
            return vec![];
        }
        match self.qms.iter().position(|q| q.msg_id == h.msg_id) {
            Some(k) if self.qms[k].initiator => self.on_qm2(k, raw, h, now),
            Some(k) if self.qms[k].waiting_3 => self.on_qm3(k, raw, h, now),
            Some(_) => {
                self.dropped += 1;
                vec![]
            }
            None => self.on_qm1(raw, h, now, fill),
        }
    }

    /// The KEYMAT of both directions: (inbound enc, inbound integ, outbound enc, outbound
    /// integ) for the SA pair with these SPIs.
    #[allow(clippy::type_complexity)]
    fn ipsec_keys(
        &self,
        s: &attrs::P2Suite,
        gxy: Option<&[u8]>,
        spi_in: u32,
        spi_out: u32,
        ni: &[u8],
        nr: &[u8],
    ) -> [Zeroizing<Vec<u8>>; 4] {
        let enc_len =
            usize::from(s.cipher.transform().1 / 8) + if s.cipher.is_aead() { 4 } else { 0 };
        let int_len = s.integ.map_or(0, |h| h.integ().key_len());
        let d = self.keys.as_ref().map(|k| &k.skeyid_d[..]).unwrap_or(&[]);
        let km = |spi| {
            keys::keymat(
                self.prf(),
                d,
                gxy,
                proto::ESP,
                spi,
                ni,
                nr,
                enc_len + int_len,
            )
        };
        let (i, o) = (km(spi_in), km(spi_out));
        let part =
            |k: &Zeroizing<Vec<u8>>, a: usize, n: usize| Zeroizing::new(k[a..a + n].to_vec());
        [
            part(&i, 0, enc_len),
            part(&i, enc_len, int_len),
            part(&o, 0, enc_len),
            part(&o, enc_len, int_len),
        ]
    }

    /// A new IPsec SA pair: recorded, older pairs set to linger, and the output.
    fn child_up(
        &mut self,
        c: ChildParts,
        k: [Zeroizing<Vec<u8>>; 4],
        ts: (crate::msg::TrafficSelector, crate::msg::TrafficSelector),
        switch_now: bool,
        now: f64,
    ) -> Vec<Output> {
        // The rekey's initiator deletes the old pair; the responder only when the initiator
        // never does (some keep old SAs until they expire), three times later.
        let linger = if switch_now {
            REKEYED_LINGER_S
        } else {
            3.0 * REKEYED_LINGER_S
        };
        for (spi_in, _) in &self.children {
            if !self.lingering.iter().any(|l| l.0 == *spi_in) {
                self.lingering.push((*spi_in, now + linger));
            }
        }
        self.children.push((c.spi_in, c.spi_out));
        self.p2_group = c.suite.group;
        let [enc_in, int_in, enc_out, int_out] = k;
        vec![Output::ChildUp(Box::new(ChildSa {
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            encryption: c.suite.cipher.name().to_string(),
            integrity: c.suite.integ.map(|h| h.name().to_string()),
            enc_in,
            int_in,
            enc_out,
            int_out,
            local_ts: ts.0,
            remote_ts: ts.1,
            nat_t: self.nat_detected,
            switch_now,
            lifetime_s: c.lifetime_s,
        }))]
    }

    /// Opens a quick mode message with `iv` and checks that it starts with a HASH equal to
    /// prf(SKEYID_a, `prefix` | the payloads after it).
    pub(super) fn open_hashed(
        &mut self,
        raw: &[u8],
        h: &wire::Header,
        iv: &[u8; 16],
        prefix: &[&[u8]],
    ) -> Option<(Parsed, [u8; 16])> {
        let r = self.open(raw, h, iv).filter(|(p, _)| {
            let Some((first, _)) = p.payloads.first() else {
                return false;
            };
            if first.ptype != pt::HASH {
                return false;
            }
            let mut parts: Vec<&[u8]> = prefix.to_vec();
            parts.push(p.after_first());
            crate::keys::ct_eq(&self.hash_a(&parts), &first.body)
        });
        match r {
            Some(x) => {
                self.verified += 1;
                Some(x)
            }
            None => {
                self.dropped += 1;
                None
            }
        }
    }

    fn on_qm1(
        &mut self,
        raw: &[u8],
        h: &wire::Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let iv = self.iv_for(h.msg_id);
        let Some((p, next_iv)) = self.open_hashed(raw, h, &iv, &[&h.msg_id.to_be_bytes()]) else {
            return vec![];
        };
        self.last_rx = now;
        if self.qms.len() >= MAX_QUICK_MODES {
            return vec![];
        }
        // Payload types RFC 2408 / 3947 do not define (private use, 128 and up, is skipped).
        if let Some((bad, _)) = p
            .payloads
            .iter()
            .find(|(x, _)| (22..128).contains(&x.ptype))
        {
            let why = format!("Quick Mode with payload type {}", bad.ptype);
            return self.notify_error(notify::INVALID_PAYLOAD_TYPE, &why, fill);
        }
        // One SA pair per tunnel (AWS), two while a rekey settles: more is refused.
        if self.children.len() >= MAX_IPSEC_SAS {
            return self.notify_error(
                notify::NO_PROPOSAL_CHOSEN,
                "another IPsec SA refused (one SA pair per tunnel, and its rekey)",
                fill,
            );
        }
        let (Some(sa_b), Some(ni)) = (p.find(pt::SA), p.find(pt::NONCE)) else {
            return self.notify_error(
                notify::PAYLOAD_MALFORMED,
                "Quick Mode without SA or nonce",
                fill,
            );
        };
        let ni = ni.to_vec();
        let ids: Vec<Vec<u8>> = p.all(pt::ID).map(<[u8]>::to_vec).collect();
        let Ok(props) = wire::parse_sa(sa_b) else {
            return self.notify_error(notify::PAYLOAD_MALFORMED, "Quick Mode SA malformed", fill);
        };
        if !(8..=256).contains(&ni.len()) {
            return self.notify_error(notify::PAYLOAD_MALFORMED, "Quick Mode nonce length", fill);
        }
        let cands: Vec<(&ProposalV1, &wire::TransformV1, attrs::P2Suite)> = props
            .iter()
            .filter(|p| p.protocol == proto::ESP && p.spi.len() == 4)
            .flat_map(|p| p.transforms.iter().map(move |t| (p, t)))
            .filter_map(|(p, t)| attrs::p2_suite(t).map(|s| (p, t, s)))
            .collect();
        // One KE per quick mode: it is of the group of the first transform (RFC 2409
        // section 5.5 has all transforms share it); others with another group are not
        // choosable.
        let ke_group = cands.first().and_then(|c| c.2.group);
        let cands: Vec<_> = cands
            .into_iter()
            .filter(|c| c.2.group == ke_group)
            .collect();
        let offers: Vec<(String, Option<String>, Option<u16>)> = cands
            .iter()
            .map(|(_, _, s)| {
                (
                    s.cipher.name().to_string(),
                    s.integ.map(|h| h.name().to_string()),
                    s.group,
                )
            })
            .collect();
        let need_dh = !self.cfg.p2_dh.is_empty();
        let chosen = attrs::choose(
            &offers,
            &self.cfg.p2_enc,
            &self.cfg.p2_integ,
            &self.cfg.p2_dh,
            need_dh,
        );
        let ke = p.find(pt::KE).map(<[u8]>::to_vec);
        let Some(k) = chosen.filter(|&k| {
            // The KE must be of the chosen group (and absent without PFS).
            match (cands[k].2.group, &ke) {
                (Some(g), Some(d)) => crate::dh::public_len(g) == Some(d.len()),
                (None, None) => true,
                _ => false,
            }
        }) else {
            let mut out = self.notify_error(notify::NO_PROPOSAL_CHOSEN, "", fill);
            out.push(Output::Log(
                "No Proposal Match Found. Notifying with \"No proposal chosen\"".into(),
            ));
            return out;
        };
        let (prop, t, suite) = (cands[k].0.clone(), cands[k].1.clone(), cands[k].2);
        // IDci names the peer's networks, IDcr ours: both within the tunnel's.
        let ts = match ids.as_slice() {
            [a, b] => Id::parse(a)
                .ok()
                .and_then(|a| ts_of(&a))
                .zip(Id::parse(b).ok().and_then(|b| ts_of(&b))),
            _ => None,
        };
        let Some((ts_remote, ts_local)) =
            ts.filter(|(r, l)| within(r, &self.cfg.remote_ts) && within(l, &self.cfg.local_ts))
        else {
            let mut out = self.notify_error(notify::INVALID_ID_INFORMATION, "", fill);
            out.push(Output::Log(
                "engine: Quick Mode IDs are not within the tunnel's networks: notifying INVALID-ID-INFORMATION"
                    .into(),
            ));
            return out;
        };
        let (kp, gxy) = match (suite.group, &ke) {
            (Some(g), Some(peer)) => {
                let Ok(kp) = KeyPair::generate(g, fill) else {
                    return vec![];
                };
                let Ok(gxy) = kp.shared(peer) else {
                    return self.notify_error(
                        notify::PAYLOAD_MALFORMED,
                        "Quick Mode KE invalid",
                        fill,
                    );
                };
                (Some(kp), Some(gxy))
            }
            _ => (None, None),
        };
        let spi_in = self.new_spi(fill);
        let spi_out = u32::from_be_bytes(prop.spi[..4].try_into().unwrap_or([0; 4]));
        let nr = nonce(fill);
        let ours = self.life.phase2_s;
        let lifetime = suite.life_s.map_or(ours, |l| l.min(ours));
        let mut rest = vec![
            Raw::new(
                pt::SA,
                wire::encode_sa(&[ProposalV1 {
                    num: prop.num,
                    protocol: proto::ESP,
                    spi: spi_in.to_be_bytes().to_vec(),
                    transforms: vec![t],
                }]),
            ),
            Raw::new(pt::NONCE, nr.clone()),
        ];
        if let Some(k) = &kp {
            rest.push(Raw::new(pt::KE, k.public.clone()));
        }
        for id in &ids {
            rest.push(Raw::new(pt::ID, id.clone()));
        }
        if suite.life_s.is_none_or(|l| l > ours) {
            let mut data = vec![];
            for a in [
                Attr::num(p2::LIFE_TYPE, attrs::p1::SECONDS),
                Attr::num(p2::LIFE_DURATION, ours),
            ] {
                data.extend_from_slice(&(a.ty | 0x8000).to_be_bytes());
                data.extend_from_slice(&a.value);
            }
            let n = Notify {
                protocol: proto::ESP,
                ntype: notify::RESPONDER_LIFETIME,
                spi: prop.spi.clone(),
                data,
            };
            rest.push(Raw::new(pt::N, n.encode()));
        }
        let mut rest_b = vec![];
        wire::encode_chain(&rest, &mut rest_b);
        let h2 = self.hash_a(&[&h.msg_id.to_be_bytes(), &ni, &rest_b]);
        let mut payloads = vec![Raw::new(pt::HASH, h2.to_vec())];
        payloads.extend(rest);
        let (bytes, iv3) = match self.seal(xchg::QUICK, h.msg_id, &payloads, &next_iv) {
            Ok(x) => x,
            Err(e) => return vec![Output::Log(e)],
        };
        let keys = self.ipsec_keys(
            &suite,
            gxy.as_deref().map(|v| &v[..]),
            spi_in,
            spi_out,
            &ni,
            &nr,
        );
        self.qms.push(Qm {
            msg_id: h.msg_id,
            initiator: false,
            iv: iv3,
            ni,
            nr,
            kp: None,
            spi_in,
            offered: vec![],
            rekey_of: None,
            ts_local,
            ts_remote,
            waiting_3: true,
            last_rx: now,
        });
        let first = self.children.is_empty();
        let mut out = vec![self.reply(raw, bytes.clone())];
        // Retransmitted until message 3 arrives.
        let nat_t = self.floated();
        self.pending.push(Pending {
            msg_id: h.msg_id,
            bytes,
            nat_t,
            sends: 1,
            due: now + self.cfg.retransmit_base_s,
        });
        out.extend(self.child_up(
            ChildParts {
                suite,
                spi_in,
                spi_out,
                lifetime_s: Some(lifetime),
            },
            keys,
            (ts_local, ts_remote),
            first,
            now,
        ));
        out
    }

    fn on_qm3(&mut self, k: usize, raw: &[u8], h: &wire::Header, now: f64) -> Vec<Output> {
        let iv = self.qms[k].iv;
        let Some((p, _)) = self.open(raw, h, &iv) else {
            self.dropped += 1;
            return vec![];
        };
        let q = &self.qms[k];
        let want = self.hash_a(&[&[0], &h.msg_id.to_be_bytes(), &q.ni, &q.nr]);
        if !p
            .payloads
            .first()
            .is_some_and(|(f, _)| f.ptype == pt::HASH && crate::keys::ct_eq(&want, &f.body))
        {
            self.dropped += 1;
            return vec![];
        }
        self.verified += 1;
        self.last_rx = now;
        self.qms.remove(k);
        self.pending.retain(|p| p.msg_id != h.msg_id);
        vec![Output::Log(format!(
            "engine: Quick Mode (id={}) complete",
            h.msg_id
        ))]
    }

    fn on_qm2(&mut self, k: usize, raw: &[u8], h: &wire::Header, now: f64) -> Vec<Output> {
        let iv = self.qms[k].iv;
        let ni = self.qms[k].ni.clone();
        let Some((p, next_iv)) = self.open_hashed(raw, h, &iv, &[&h.msg_id.to_be_bytes(), &ni])
        else {
            return vec![];
        };
        self.last_rx = now;
        let q = &self.qms[k];
        let chosen = p
            .find(pt::SA)
            .and_then(|b| wire::parse_sa(b).ok())
            .filter(|ps| {
                ps.len() == 1
                    && ps[0].protocol == proto::ESP
                    && ps[0].spi.len() == 4
                    && ps[0].transforms.len() == 1
            })
            .and_then(|ps| {
                let t = &ps[0].transforms[0];
                let s = attrs::p2_suite(t)?;
                q.offered.iter().any(|o| o.same_as(t)).then(|| {
                    (
                        s,
                        u32::from_be_bytes(ps[0].spi[..4].try_into().unwrap_or([0; 4])),
                    )
                })
            });
        let nr = p.find(pt::NONCE).map(<[u8]>::to_vec);
        let gxy = match (&q.kp, p.find(pt::KE)) {
            (Some(kp), Some(ke)) => kp.shared(ke).ok(),
            (None, None) => Some(Zeroizing::new(vec![])),
            _ => None,
        };
        // IDs, when echoed, are ours unchanged.
        let ids: Vec<&[u8]> = p.all(pt::ID).collect();
        let (lt, rt) = (q.ts_local, q.ts_remote);
        let ids_ok = ids.is_empty()
            || ids
                == [
                    &Id::range(lt.start, lt.end, 0, 0).encode()[..],
                    &Id::range(rt.start, rt.end, 0, 0).encode()[..],
                ];
        let (Some((suite, spi_out)), Some(nr), Some(gxy), true) = (chosen, nr, gxy, ids_ok) else {
            self.qms.remove(k);
            self.pending.retain(|p| p.msg_id != h.msg_id);
            return vec![Output::Log(
                "No Proposal Match Found by AWS: the Quick Mode answer is not one of our proposals; phase 2 not established, the current SAs stay"
                    .into(),
            )];
        };
        if !(8..=256).contains(&nr.len()) {
            self.dropped += 1;
            return vec![];
        }
        // RESPONDER-LIFETIME: the peer's shorter lifetime rules.
        let mut lifetime = suite.life_s.unwrap_or(self.life.phase2_s);
        for n in p.all(pt::N).filter_map(|b| Notify::parse(b).ok()) {
            if n.ntype == notify::RESPONDER_LIFETIME
                && let Some(l) = responder_lifetime(&n.data)
            {
                lifetime = lifetime.min(l);
            }
        }
        let q = self.qms.remove(k);
        self.pending.retain(|p| p.msg_id != h.msg_id);
        let h3 = self.hash_a(&[&[0], &h.msg_id.to_be_bytes(), &q.ni, &nr]);
        let bytes = match self.seal(
            xchg::QUICK,
            h.msg_id,
            &[Raw::new(pt::HASH, h3.to_vec())],
            &next_iv,
        ) {
            Ok((b, _)) => b,
            Err(e) => return vec![Output::Log(e)],
        };
        let g = (!gxy.is_empty()).then_some(&gxy[..]);
        let keys = self.ipsec_keys(&suite, g, q.spi_in, spi_out, &q.ni, &nr);
        let mut out = vec![self.reply(raw, bytes)];
        out.extend(self.child_up(
            ChildParts {
                suite,
                spi_in: q.spi_in,
                spi_out,
                lifetime_s: Some(lifetime),
            },
            keys,
            (q.ts_local, q.ts_remote),
            true,
            now,
        ));
        out
    }
}

/// The seconds of a RESPONDER-LIFETIME notify's attributes (other life types ignored).
fn responder_lifetime(mut b: &[u8]) -> Option<u32> {
    let mut secs = None;
    let mut seconds_type = true;
    while b.len() >= 4 {
        let t = u16::from_be_bytes([b[0], b[1]]);
        let (ty, val, used) = if t & 0x8000 != 0 {
            (t & 0x7fff, b[2..4].to_vec(), 4)
        } else {
            let l = usize::from(u16::from_be_bytes([b[2], b[3]]));
            if 4 + l > b.len() {
                return None;
            }
            (t, b[4..4 + l].to_vec(), 4 + l)
        };
        let v = Attr { ty, value: val }.as_u64();
        match ty {
            p2::LIFE_TYPE => seconds_type = v == Some(u64::from(attrs::p1::SECONDS)),
            p2::LIFE_DURATION if seconds_type => {
                secs = v.map(|v| u32::try_from(v).unwrap_or(u32::MAX))
            }
            _ => {}
        }
        b = &b[used..];
    }
    secs
}
