//! INFORMATIONAL exchanges (RFC 2409 section 5.7, RFC 2408 sections 3.14, 3.15): DELETE of
//! the ISAKMP SA and of IPsec SAs, error notifies, and DPD (RFC 3706: R-U-THERE /
//! R-U-THERE-ACK with a sequence number).
//!
//! After phase 1 every informational message is encrypted and starts with HASH(1) =
//! prf(SKEYID_a, M-ID | N/D); one without a valid hash changes nothing. A notify in the
//! clear (before phase 1 keys exist) is logged and otherwise ignored: anyone can send one.

use super::wire::{self, Delete, Notify, Raw, notify, proto, pt, xchg};
use super::*;

/// The name of a notify type, for log lines.
pub fn notify_name(t: u16) -> String {
    match t {
        notify::INVALID_PAYLOAD_TYPE => "INVALID-PAYLOAD-TYPE".into(),
        notify::NO_PROPOSAL_CHOSEN => "NO-PROPOSAL-CHOSEN".into(),
        notify::PAYLOAD_MALFORMED => "PAYLOAD-MALFORMED".into(),
        notify::INVALID_ID_INFORMATION => "INVALID-ID-INFORMATION".into(),
        notify::INVALID_HASH_INFORMATION => "INVALID-HASH-INFORMATION".into(),
        notify::AUTHENTICATION_FAILED => "AUTHENTICATION-FAILED".into(),
        notify::RESPONDER_LIFETIME => "RESPONDER-LIFETIME".into(),
        notify::INITIAL_CONTACT => "INITIAL-CONTACT".into(),
        notify::R_U_THERE => "R-U-THERE".into(),
        notify::R_U_THERE_ACK => "R-U-THERE-ACK".into(),
        t => format!("notify type {t}"),
    }
}

impl Isakmp {
    /// One encrypted INFORMATIONAL message carrying `payload` (None before phase 1 keys).
    pub(super) fn informational(
        &mut self,
        payload: Raw,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Option<Output> {
        self.keys.as_ref()?;
        let msg_id = random_msg_id(fill);
        let mut rest_b = vec![];
        let rest = [payload];
        wire::encode_chain(&rest, &mut rest_b);
        let h1 = self.hash_a(&[&msg_id.to_be_bytes(), &rest_b]);
        let [payload] = rest;
        let iv = self.iv_for(msg_id);
        let (bytes, _) = self
            .seal(
                xchg::INFO,
                msg_id,
                &[Raw::new(pt::HASH, h1.to_vec()), payload],
                &iv,
            )
            .ok()?;
        let nat_t = self.floated();
        Some(self.send(bytes, nat_t))
    }

    /// Tells the peer why its quick mode failed (an encrypted notify); logs `why` if any.
    pub(super) fn notify_error(
        &mut self,
        ntype: u16,
        why: &str,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let n = Notify {
            protocol: proto::ESP,
            ntype,
            spi: vec![],
            data: vec![],
        };
        let mut out: Vec<Output> = self
            .informational(Raw::new(pt::N, n.encode()), fill)
            .into_iter()
            .collect();
        if !why.is_empty() {
            out.push(Output::Log(format!(
                "engine: {why}: notifying {}",
                notify_name(ntype)
            )));
        }
        out
    }

    pub(super) fn on_informational(
        &mut self,
        raw: &[u8],
        h: &wire::Header,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        if h.flags & wire::FLAG_ENCRYPTED == 0 {
            // Unauthenticated: logged, nothing else.
            self.dropped += 1;
            let Ok(ps) = wire::parse_chain(h.next, &raw[wire::Header::LEN..]) else {
                return vec![];
            };
            return ps
                .iter()
                .filter(|(p, _)| p.ptype == pt::N)
                .filter_map(|(p, _)| Notify::parse(&p.body).ok())
                .map(|n| {
                    Output::Log(format!(
                        "engine: the peer notified {} in the clear (unauthenticated, ignored)",
                        notify_name(n.ntype)
                    ))
                })
                .take(4)
                .collect();
        }
        if self.mm != Mm::Done || h.msg_id == 0 {
            self.dropped += 1;
            return vec![];
        }
        let iv = self.iv_for(h.msg_id);
        let Some((p, _)) = self.open_hashed(raw, h, &iv, &[&h.msg_id.to_be_bytes()]) else {
            return vec![];
        };
        self.last_rx = now;
        let cookies = [self.ci.to_be_bytes(), self.cr.to_be_bytes()].concat();
        let mut out = vec![];
        let mut closing = false;
        for (pl, _) in p.payloads.iter().skip(1) {
            match pl.ptype {
                pt::N => {
                    let Ok(n) = Notify::parse(&pl.body) else {
                        continue;
                    };
                    match n.ntype {
                        notify::R_U_THERE if n.data.len() == 4 => {
                            let ack = Notify {
                                protocol: proto::ISAKMP,
                                ntype: notify::R_U_THERE_ACK,
                                spi: cookies.clone(),
                                data: n.data.clone(),
                            };
                            out.extend(self.informational(Raw::new(pt::N, ack.encode()), fill));
                        }
                        notify::R_U_THERE_ACK | notify::INITIAL_CONTACT => {}
                        t => {
                            // An error about our quick mode: it failed, the SAs stay.
                            let ours: Vec<u32> = self
                                .qms
                                .iter()
                                .filter(|q| q.initiator)
                                .map(|q| q.msg_id)
                                .collect();
                            self.qms.retain(|q| !q.initiator);
                            self.pending.retain(|p| !ours.contains(&p.msg_id));
                            out.push(Output::Log(if t == notify::NO_PROPOSAL_CHOSEN {
                                "No Proposal Match Found. Notifying with \"No proposal chosen\""
                                    .into()
                            } else {
                                format!(
                                    "engine: the peer notified {}{}",
                                    notify_name(t),
                                    if ours.is_empty() {
                                        ""
                                    } else {
                                        ": our Quick Mode failed, the current SAs stay"
                                    }
                                )
                            }));
                        }
                    }
                }
                pt::D => {
                    let Ok(d) = Delete::parse(&pl.body) else {
                        continue;
                    };
                    if d.protocol == proto::ISAKMP {
                        if d.spis.contains(&cookies) {
                            closing = true;
                            out.push(Output::Log(
                                "AWS tunnel received DELETE for IKE_SA from CGW".into(),
                            ));
                        }
                        continue;
                    }
                    for spi in d.spis.iter().filter(|s| s.len() == 4) {
                        let v = u32::from_be_bytes([spi[0], spi[1], spi[2], spi[3]]);
                        out.push(Output::Log(format!(
                            "AWS tunnel received DELETE for Phase 2 SA with SPI: {v:08x}"
                        )));
                        if let Some(k) = self.children.iter().position(|c| c.1 == v) {
                            let (spi_in, _) = self.children.remove(k);
                            self.lingering.retain(|l| l.0 != spi_in);
                            out.push(Output::ChildDown { spi_in });
                        }
                    }
                }
                _ => {}
            }
        }
        if closing {
            out.extend(self.close("the peer deleted the ISAKMP SA".into()));
        }
        out
    }

    /// Sends a DPD R-U-THERE (RFC 3706 section 5); its ACK counts as a verified message.
    pub fn send_dpd(&mut self, _now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.mm != Mm::Done {
            return vec![];
        }
        self.dpd_seq = self.dpd_seq.wrapping_add(1).max(1);
        let n = Notify {
            protocol: proto::ISAKMP,
            ntype: notify::R_U_THERE,
            spi: [self.ci.to_be_bytes(), self.cr.to_be_bytes()].concat(),
            data: self.dpd_seq.to_be_bytes().to_vec(),
        };
        self.informational(Raw::new(pt::N, n.encode()), fill)
            .into_iter()
            .collect()
    }

    /// Deletes one IPsec SA pair (ours by inbound SPI): DELETE to the peer, ChildDown.
    pub fn delete_child(&mut self, spi_in: u32, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        let Some(k) = self.children.iter().position(|c| c.0 == spi_in) else {
            return vec![];
        };
        self.children.remove(k);
        let d = Delete {
            protocol: proto::ESP,
            spis: vec![spi_in.to_be_bytes().to_vec()],
        };
        let mut out: Vec<Output> = self
            .informational(Raw::new(pt::D, d.encode()), fill)
            .into_iter()
            .collect();
        out.push(Output::ChildDown { spi_in });
        out.push(Output::Log(format!(
            "engine: IPsec SA in {spi_in:#010x} replaced by its rekey: deleted"
        )));
        out
    }

    /// Deletes everything: a DELETE for each IPsec SA, then for the ISAKMP SA.
    pub fn delete(&mut self, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.mm != Mm::Done {
            return self.close("deleted before it was established".into());
        }
        let mut out = vec![];
        if !self.children.is_empty() {
            let d = Delete {
                protocol: proto::ESP,
                spis: self
                    .children
                    .iter()
                    .map(|c| c.0.to_be_bytes().to_vec())
                    .collect(),
            };
            out.extend(self.informational(Raw::new(pt::D, d.encode()), fill));
        }
        out.extend(self.delete_isakmp(fill));
        out.extend(self.close("ISAKMP SA deleted by us".into()));
        out
    }
}
