//! What is offered and what is accepted: the SA payloads we build from the AWS names, the
//! responder's pick among a peer's proposals (lowest local value first), and the checks that
//! a peer's choice is one of our offers (RFC 7296 section 3.3.6) and its selectors inside
//! ours (section 2.9). Shared by every exchange that carries an SA payload.

use super::*;

pub(super) fn enc_transform(name: &str) -> Option<Transform> {
    let (id, bits) = Cipher::from_name(name)?.transform();
    Some(Transform {
        ttype: tt::ENCR,
        id,
        key_bits: Some(bits),
    })
}

pub(super) fn enc_name(t: &Transform) -> Option<&'static str> {
    Cipher::from_transform(t.id, t.key_bits).map(Cipher::name)
}

pub(super) fn integ_of(name: &str) -> Option<(Integ, Prf)> {
    Hash::from_name(name).map(|h| (h.integ(), h.prf()))
}

pub(super) fn integ_name(i: Integ) -> &'static str {
    Hash::from_integ(i).name()
}

pub(super) fn is_gcm(name: &str) -> bool {
    Cipher::from_name(name).is_some_and(Cipher::is_aead)
}

/// The initiator's SA payload: a proposal of the CBC ciphers with integrity, and one of the
/// GCM ciphers (combined-mode ciphers must not share a proposal with integrity, section 3.3).
pub(super) fn build_proposals(
    protocol: u8,
    spi: &[u8],
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    with_prf: bool,
) -> Vec<ProposalWire> {
    let mut out = vec![];
    for gcm in [false, true] {
        let encs: Vec<Transform> = enc
            .iter()
            .filter(|e| is_gcm(e) == gcm)
            .filter_map(|e| enc_transform(e))
            .collect();
        if encs.is_empty() {
            continue;
        }
        let mut ts = encs;
        if with_prf {
            ts.extend(
                integ
                    .iter()
                    .filter_map(|i| integ_of(i))
                    .map(|(_, p)| Transform {
                        ttype: tt::PRF,
                        id: p.id(),
                        key_bits: None,
                    }),
            );
        }
        if !gcm {
            ts.extend(
                integ
                    .iter()
                    .filter_map(|i| integ_of(i))
                    .map(|(i, _)| Transform {
                        ttype: tt::INTEG,
                        id: i.id(),
                        key_bits: None,
                    }),
            );
        }
        ts.extend(dh.iter().map(|g| Transform {
            ttype: tt::DH,
            id: *g,
            key_bits: None,
        }));
        if protocol == proto::ESP {
            ts.push(Transform {
                ttype: tt::ESN,
                id: 0,
                key_bits: None,
            });
        }
        out.push(ProposalWire {
            num: out.len() as u8 + 1,
            protocol,
            spi: spi.to_vec(),
            transforms: ts,
        });
    }
    out
}

/// The peer's proposals in AWS names (for [`proposal::select`]).
pub(super) fn as_names(p: &ProposalWire) -> Proposal {
    let mut r = Proposal {
        encryption: vec![],
        integrity: vec![],
        dh: vec![],
    };
    for t in &p.transforms {
        match t.ttype {
            tt::ENCR => r.encryption.extend(enc_name(t).map(str::to_string)),
            tt::INTEG => r
                .integrity
                .extend(Integ::from_id(t.id).map(|i| integ_name(i).to_string())),
            tt::DH => r.dh.push(t.id),
            _ => {}
        }
    }
    r
}

/// The chosen transforms of one proposal (responder side), with the PRF for IKE.
pub(super) struct Chosen {
    pub(super) num: u8,
    pub(super) spi: Vec<u8>,
    pub(super) enc: String,
    pub(super) integ: Option<String>,
    pub(super) prf: Option<Prf>,
    pub(super) dh: Option<u16>,
}

pub(super) fn choose(
    props: &[ProposalWire],
    protocol: u8,
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    need_dh: bool,
) -> Option<Chosen> {
    let props: Vec<&ProposalWire> = props.iter().filter(|p| p.protocol == protocol).collect();
    let names: Vec<Proposal> = props.iter().map(|p| as_names(p)).collect();
    let c = proposal::select(enc, integ, dh, &names, need_dh)?;
    // The first offered proposal that has every chosen transform (and a PRF for IKE).
    for (p, n) in props.iter().zip(&names) {
        let has_enc = n
            .encryption
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&c.encryption));
        let has_int = c
            .integrity
            .as_ref()
            .is_none_or(|i| n.integrity.iter().any(|x| x.eq_ignore_ascii_case(i)));
        let has_dh = c.dh.is_none_or(|g| n.dh.contains(&g));
        if !(has_enc && has_int && has_dh) {
            continue;
        }
        let prf = if protocol == proto::IKE {
            // The lowest local integrity name whose PRF the peer offers.
            let offered: Vec<u16> = p
                .transforms
                .iter()
                .filter(|t| t.ttype == tt::PRF)
                .map(|t| t.id)
                .collect();
            let pick = integ
                .iter()
                .filter_map(|i| integ_of(i))
                .map(|(_, p)| p)
                .find(|p| offered.contains(&p.id()));
            match pick {
                Some(p) => Some(p),
                None => continue,
            }
        } else {
            None
        };
        return Some(Chosen {
            num: p.num,
            spi: p.spi.clone(),
            enc: c.encryption,
            integ: c.integrity,
            prf,
            dh: c.dh,
        });
    }
    None
}

pub(super) fn chosen_proposal(c: &Chosen, protocol: u8, spi: &[u8]) -> ProposalWire {
    let mut ts = vec![enc_transform(&c.enc).expect("chosen from known names")];
    if let Some(p) = c.prf {
        ts.push(Transform {
            ttype: tt::PRF,
            id: p.id(),
            key_bits: None,
        });
    }
    if let Some(i) = c.integ.as_deref().and_then(integ_of) {
        ts.push(Transform {
            ttype: tt::INTEG,
            id: i.0.id(),
            key_bits: None,
        });
    }
    if let Some(g) = c.dh {
        ts.push(Transform {
            ttype: tt::DH,
            id: g,
            key_bits: None,
        });
    }
    if protocol == proto::ESP {
        ts.push(Transform {
            ttype: tt::ESN,
            id: 0,
            key_bits: None,
        });
    }
    ProposalWire {
        num: c.num,
        protocol,
        spi: spi.to_vec(),
        transforms: ts,
    }
}

/// Encryption, integrity, PRF and DH group of a chosen proposal.
pub(super) type Choice = (Encr, Option<Integ>, Option<Prf>, Option<u16>);

/// Reads a responder's chosen proposal and checks it against what we offered (RFC 7296
/// section 3.3.6: the responder accepts a single proposal of ours, with one transform of
/// each type, each one of the transforms we put in that proposal). The chosen transforms
/// must come from one of our proposals, with the same protocol and every transform type it
/// has (so INTEG exactly when the cipher is not AEAD, a PRF for an IKE SA, a DH group when
/// we sent KE, ESN for ESP), and the SPI must have `spi_len` bytes. Anything else is a
/// hostile or broken peer: the caller ends the exchange with the reason returned here.
pub(super) fn accept_choice(
    p: &ProposalWire,
    offered: &[ProposalWire],
    spi_len: usize,
) -> Result<Choice, String> {
    if p.spi.len() != spi_len {
        return Err(format!(
            "the chosen proposal has a {}-byte SPI, {spi_len} expected",
            p.spi.len()
        ));
    }
    let mut types: Vec<u8> = vec![];
    for t in &p.transforms {
        if types.contains(&t.ttype) {
            return Err(format!(
                "the chosen proposal has two transforms of type {}",
                t.ttype
            ));
        }
        types.push(t.ttype);
    }
    let fits = |q: &&ProposalWire| {
        q.protocol == p.protocol
            && p.transforms.iter().all(|t| q.transforms.contains(t))
            && q.transforms.iter().all(|t| types.contains(&t.ttype))
    };
    if !offered.iter().any(|q| fits(&q)) {
        return Err("the chosen proposal is not one we offered".into());
    }
    let (mut e, mut i, mut prf, mut dh) = (None, None, None, None);
    for t in &p.transforms {
        match t.ttype {
            tt::ENCR => e = Encr::from_transform(t.id, t.key_bits),
            tt::INTEG => i = Some(Integ::from_id(t.id).ok_or("unknown integrity transform")?),
            tt::PRF => prf = Some(Prf::from_id(t.id).ok_or("unknown PRF transform")?),
            tt::DH => dh = Some(t.id),
            _ => {}
        }
    }
    let e = e.ok_or("the chosen proposal has no usable encryption transform")?;
    if e.is_aead() == i.is_some() {
        return Err("the chosen proposal pairs its cipher with the wrong integrity".into());
    }
    if (p.protocol == proto::IKE) != prf.is_some() {
        return Err("the chosen proposal has the wrong PRF".into());
    }
    Ok((e, i, prf, dh))
}

/// [`accept_choice`] for an IKE SA: the PRF is there.
pub(super) fn accept_ike_choice(
    p: &ProposalWire,
    offered: &[ProposalWire],
    spi_len: usize,
) -> Result<(Encr, Option<Integ>, Prf, Option<u16>), String> {
    match accept_choice(p, offered, spi_len)? {
        (e, i, Some(prf), dh) if p.protocol == proto::IKE => Ok((e, i, prf, dh)),
        _ => Err("the chosen proposal is not an IKE proposal".into()),
    }
}

/// The one proposal of a response's SA payload (section 3.3.6: exactly one); None without
/// an SA payload.
pub(super) fn single_proposal(ps: &[Payload]) -> Option<Result<ProposalWire, String>> {
    Some(match msg::proposals(ps)?.as_slice() {
        [p] => Ok(p.clone()),
        v => Err(format!(
            "the response has {} proposals, one expected",
            v.len()
        )),
    })
}

/// Nonce lengths of section 2.10 (at least 16 octets, at most 256).
pub(super) fn nonce_ok(n: &[u8]) -> bool {
    (16..=256).contains(&n.len())
}

/// True when `inner` lies within `outer` (addresses and ports; protocol 0 = any).
pub(super) fn ts_within(inner: &TrafficSelector, outer: &TrafficSelector) -> bool {
    let key = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    inner.start.is_ipv4() == outer.start.is_ipv4()
        && key(inner.start) >= key(outer.start)
        && key(inner.end) <= key(outer.end)
        && inner.start_port >= outer.start_port
        && inner.end_port <= outer.end_port
        && (outer.ip_proto == 0 || inner.ip_proto == outer.ip_proto)
}

/// Narrows the peer's proposed selectors to ours (section 2.9): the intersection when the
/// peer's first selector contains ours or lies within it; None otherwise (TS_UNACCEPTABLE).
pub(super) fn narrow(peer: &[TrafficSelector], ours: &TrafficSelector) -> Option<TrafficSelector> {
    peer.iter().find_map(|p| {
        if ts_within(ours, p) {
            Some(*ours)
        } else if ts_within(p, ours) {
            Some(*p)
        } else {
            None
        }
    })
}
