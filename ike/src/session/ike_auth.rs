//! IKE_AUTH (RFC 7296 section 1.2): pre-shared-key authentication (section 2.15) and the
//! first CHILD_SA, both roles.

use super::*;

impl IkeSa {
    /// The SA payload for the first CHILD_SA of our IKE_AUTH request (no DH: no PFS there).
    pub(super) fn auth_child_proposals(&self) -> Vec<ProposalWire> {
        build_proposals(
            proto::ESP,
            &self.child_spi.to_be_bytes(),
            &self.cfg.p2_enc,
            &self.cfg.p2_integ,
            &[],
            false,
        )
    }

    pub(super) fn verify_auth(&self, ps: &[Payload], peer_is_initiator: bool) -> bool {
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

    pub(super) fn child_keys(&self, enc: &str, integ: Option<&str>) -> Option<ChildKeys> {
        let e = Cipher::from_name(enc).map(Cipher::encr)?;
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

    pub(super) fn on_auth_request(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some(ps) = self.accept_request(raw, m, now) else {
            return vec![];
        };
        let id = m.header.msg_id;
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
                    let up = self.child_up(
                        ck,
                        false,
                        ChildParts {
                            spi_in: self.child_spi,
                            spi_out: peer_spi,
                            encryption: &c.enc,
                            integrity: c.integ.as_deref(),
                            local_ts: ts_local,
                            remote_ts: ts_remote,
                            switch_now: true,
                        },
                    );
                    out.push(up);
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

    pub(super) fn on_auth_response(&mut self, raw: &[u8], m: &Message, now: f64) -> Vec<Output> {
        let Some((ps, _)) = self.accept_response(raw, m, now) else {
            return vec![];
        };
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
            let up = self.child_up(
                ck,
                true,
                ChildParts {
                    spi_in: self.child_spi,
                    spi_out: peer_spi,
                    encryption: enc,
                    integrity: integ_s,
                    local_ts: tsi,
                    remote_ts: tsr,
                    switch_now: true,
                },
            );
            out.push(up);
        }
        out
    }

    /// The CHILD_SA of an IKE_AUTH response is refused (the IKE SA stays): the log lines.
    pub(super) fn phase2_refused(&mut self, mut out: Vec<Output>, why: &str) -> Vec<Output> {
        self.dropped += 1;
        out.push(Output::Log(why.to_string()));
        out.push(Output::Log(
            "AWS tunnel Phase 2 was unable to establish while keeping Phase 1".into(),
        ));
        out
    }
}
