//! IKE_SA_INIT (RFC 7296 section 1.2): both roles, NAT detection (section 2.23),
//! INVALID_KE_PAYLOAD retry and COOKIE (section 2.6).

use super::*;

impl IkeSa {
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

    pub(super) fn nat_notifies(&self, spi_r: u64) -> Vec<Payload> {
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

    pub(super) fn send_init(
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
        Ok(vec![self.send_request(0, bytes, Task::IkeSaInit, now)])
    }

    /// The SA payload of our IKE_SA_INIT request (and what its response must choose from).
    pub(super) fn init_proposals(&self) -> Vec<ProposalWire> {
        build_proposals(
            proto::IKE,
            &[],
            &self.cfg.p1_enc,
            &self.cfg.p1_integ,
            &self.cfg.p1_dh,
            true,
        )
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
        let Some(encr) = Cipher::from_name(&c.enc).map(Cipher::encr) else {
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

    pub(super) fn detect_nat(&mut self, ps: &[Payload], spi_i: u64, spi_r: u64) {
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

    pub(super) fn on_init_response(
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
                    self.request = None;
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
            self.request = None;
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
        self.request = None;
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
        vec![self.send_request(id, bytes, Task::IkeAuth, now)]
    }
}
