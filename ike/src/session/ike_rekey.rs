//! CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 section 1.3.2, collisions section
//! 2.8.2): the new SA adopts the CHILD_SAs and the old one is retired and deleted.

use super::*;

impl IkeSa {
    /// Starts an IKE SA rekey (CREATE_CHILD_SA with an IKE proposal, section 1.3.2).
    pub fn rekey_ike(&mut self, now: f64, fill: &mut dyn FnMut(&mut [u8])) -> Vec<Output> {
        if self.state != State::Established || self.request.is_some() {
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
        let task = Task::RekeyIke(IkeRekey {
            spi: new_spi,
            ni,
            kp,
            offered,
        });
        vec![
            Output::Log(format!(
                "AWS tunnel is sending request (id={id}) for CREATE_CHILD_SA (IKE SA rekey)"
            )),
            self.send_request(id, bytes, task, now),
        ]
    }

    /// A context for the IKE SA a rekey makes (section 2.18: SKEYSEED = prf(SK_d (old), g^ir
    /// (new) | Ni | Nr), message IDs from 0). Its nonces are kept for the collision rule.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rekeyed(
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
    pub(super) fn adopt(
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
    pub(super) fn retire(&mut self, mut old: Box<IkeSa>, now: f64) {
        old.retiring = true;
        if self.retired.len() >= MAX_RETIRED {
            self.retired.remove(0);
        }
        self.retired.push((old, now + RETIRED_LINGER_S));
    }

    /// Sends INFORMATIONAL { D(IKE) } on this IKE SA and waits for the answer.
    pub(super) fn request_ike_delete(
        &mut self,
        now: f64,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Vec<Output> {
        let (id, bytes) = sealed!(self, self.ike_delete_request(fill));
        vec![self.send_request(id, bytes, Task::DeleteIke, now)]
    }

    /// The next request of this IKE SA: INFORMATIONAL { D(IKE) } (message id, datagram).
    pub(super) fn ike_delete_request(
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
    pub(super) fn child_exchange_outstanding(&self) -> bool {
        matches!(
            self.task(),
            Some(Task::RekeyChild(_) | Task::DeleteChild { .. })
        )
    }

    /// A replaced IKE SA is asked to create or rekey an SA (section 2.25.2: the SA is being
    /// closed): TEMPORARY_FAILURE, the peer retries on the new IKE SA.
    pub(super) fn refuse_while_retiring(
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

    pub(super) fn on_ike_rekey_request(
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
                    let encr = Cipher::from_name(&c.enc).map(Cipher::encr);
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
            if matches!(self.task(), Some(Task::RekeyIke(_))) {
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

    pub(super) fn on_ike_rekey_response(
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
            "AWS tunnel processed response (id={id}) for CREATE_CHILD_SA (IKE SA rekey)"
        ))];
        let Task::RekeyIke(rk) = task else {
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
    pub(super) fn ike_rekey_result(
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
