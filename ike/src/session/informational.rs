//! INFORMATIONAL (RFC 7296 section 1.4): DELETE of CHILD_SAs and of the IKE SA, liveness
//! checks (DPD), both roles.

use super::*;

impl IkeSa {
    pub(super) fn on_informational(
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
                            if let Some(Task::RekeyChild(r)) = self.task()
                                && r.old_in == spi_in
                            {
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
        if closing && matches!(self.task(), Some(Task::RekeyIke(_))) {
            // Section 2.25.2: a DELETE of the IKE SA we are rekeying is answered as usual
            // and our rekey forgotten. If we answered the peer's own rekey meanwhile, the
            // peer finished it without noticing ours (section 2.8.2): its new SA lives on.
            self.request = None;
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
        if self.state != State::Established || self.request.is_some() {
            return vec![];
        }
        let id = self.next_req_id;
        self.next_req_id += 1;
        let bytes = sealed!(
            self,
            self.encrypted(exchange::INFORMATIONAL, id, false, &[], fill)
        );
        vec![self.send_request(id, bytes, Task::Liveness, now)]
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
}
