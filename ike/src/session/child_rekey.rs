//! CREATE_CHILD_SA rekeying a CHILD_SA (RFC 7296 section 1.3.3, collisions section
//! 2.8.1), both roles, with optional PFS.

use super::*;

impl IkeSa {
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
        if self.state != State::Established || self.request.is_some() {
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
        let task = Task::RekeyChild(Rekey {
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
            self.send_request(id, bytes, task, now),
        ]
    }

    pub(super) fn on_rekey_response(
        &mut self,
        raw: &[u8],
        m: &Message,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let Some((ps, task)) = self.accept_response(raw, m, now) else {
            return vec![];
        };
        let id = m.header.msg_id;
        let mut out = vec![Output::Log(format!(
            "AWS tunnel processed response (id={id}) for CREATE_CHILD_SA"
        ))];
        let Task::RekeyChild(rk) = task else {
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
        let e = Cipher::from_name(enc).map(Cipher::encr);
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
        let up = self.child_up(
            ck,
            true,
            ChildParts {
                spi_in: rk.new_in,
                spi_out: peer_spi,
                encryption: enc,
                integrity: integ_s,
                local_ts: tsi,
                remote_ts: tsr,
                switch_now: true,
            },
        );
        out.push(up);
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
        if self.request.is_some() {
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
        vec![self.send_request(id, bytes, Task::DeleteChild { spi_in }, now)]
    }

    pub(super) fn on_rekey_request(
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
                                let e = Cipher::from_name(&c.enc).map(Cipher::encr);
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
                                if let Some(Task::RekeyChild(rk)) = self.task()
                                    && rk.old_in == old.0
                                {
                                    self.peer_rekey = Some(PeerRekey {
                                        old_in: old.0,
                                        new_in,
                                        nonces: [ni.clone(), nr.clone()],
                                    });
                                }
                                let up = self.child_up(
                                    ck,
                                    false,
                                    ChildParts {
                                        spi_in: new_in,
                                        spi_out: peer_spi,
                                        encryption: &c.enc,
                                        integrity: c.integ.as_deref(),
                                        local_ts: ts_local,
                                        remote_ts: ts_remote,
                                        switch_now: false,
                                    },
                                );
                                out.push(up);
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
