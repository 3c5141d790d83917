//! Proposal selection as AWS does it (shared/spec/tunnel-options.md 4.3): the responder
//! walks its own configured lists in their documented ascending order and picks the first
//! value that appears in an acceptable peer proposal, whatever order the peer used;
//! encryption first, then integrity, then DH. No match: NO_PROPOSAL_CHOSEN.

/// One proposal: encryption, integrity (empty for AEAD ciphers), DH group (None: no PFS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub encryption: Vec<String>,
    pub integrity: Vec<String>,
    pub dh: Vec<u16>,
}

/// The chosen transforms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub encryption: String,
    /// None with an AEAD cipher.
    pub integrity: Option<String>,
    pub dh: Option<u16>,
}

fn is_aead(e: &str) -> bool {
    e.contains("GCM")
}

/// Picks from `offers` with the local lists (in AWS's ascending order: the order the config
/// layer keeps them in). `need_dh`: the exchange carries a KE payload (IKE SA, or a CHILD SA
/// with PFS).
pub fn select(
    local_enc: &[String],
    local_integ: &[String],
    local_dh: &[u16],
    offers: &[Proposal],
    need_dh: bool,
) -> Option<Choice> {
    for e in local_enc {
        let with_e: Vec<&Proposal> = offers
            .iter()
            .filter(|p| p.encryption.iter().any(|x| x.eq_ignore_ascii_case(e)))
            .collect();
        if with_e.is_empty() {
            continue;
        }
        let integ_choices: Vec<Option<&String>> = if is_aead(e) {
            vec![None]
        } else {
            local_integ.iter().map(Some).collect()
        };
        for i in integ_choices {
            let with_i: Vec<&&Proposal> = with_e
                .iter()
                .filter(|p| match i {
                    None => true,
                    Some(i) => p.integrity.iter().any(|x| x.eq_ignore_ascii_case(i)),
                })
                .collect();
            if with_i.is_empty() {
                continue;
            }
            if !need_dh {
                return Some(Choice {
                    encryption: e.clone(),
                    integrity: i.cloned(),
                    dh: None,
                });
            }
            for g in local_dh {
                if with_i.iter().any(|p| p.dh.contains(g)) {
                    return Some(Choice {
                        encryption: e.clone(),
                        integrity: i.cloned(),
                        dh: Some(*g),
                    });
                }
            }
        }
    }
    None
}

/// What the engine proposes when it initiates (or rekeys): its lists in order, so a peer
/// with AWS defaults ends on AES128 / SHA1 / group 2 (fact 13).
pub fn initiator_proposal(
    local_enc: &[String],
    local_integ: &[String],
    local_dh: &[u16],
) -> Proposal {
    Proposal {
        encryption: local_enc.to_vec(),
        integrity: local_integ.to_vec(),
        dh: local_dh.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    fn defaults() -> (Vec<String>, Vec<String>, Vec<u16>) {
        (
            crate::algorithms::Cipher::ALL
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            crate::algorithms::Hash::ALL
                .iter()
                .map(|h| h.name().to_string())
                .collect(),
            vec![2, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24],
        )
    }

    #[test]
    fn fact_12_lowest_local_value_whatever_the_peer_order() {
        let (e, i, d) = defaults();
        let offers = [
            Proposal {
                encryption: v(&["AES256"]),
                integrity: v(&["SHA2-256"]),
                dh: vec![14],
            },
            Proposal {
                encryption: v(&["AES128"]),
                integrity: v(&["SHA1"]),
                dh: vec![2],
            },
        ];
        let c = select(&e, &i, &d, &offers, true).unwrap();
        assert_eq!(
            c,
            Choice {
                encryption: "AES128".into(),
                integrity: Some("SHA1".into()),
                dh: Some(2)
            }
        );
    }

    #[test]
    fn narrowed_lists_and_gcm() {
        let offers = [Proposal {
            encryption: v(&["AES256-GCM-16", "AES128"]),
            integrity: v(&["SHA2-256"]),
            dh: vec![19, 14],
        }];
        let c = select(
            &v(&["AES256-GCM-16"]),
            &v(&["SHA2-256"]),
            &[14, 19],
            &offers,
            true,
        )
        .unwrap();
        assert_eq!(
            c,
            Choice {
                encryption: "AES256-GCM-16".into(),
                integrity: None,
                dh: Some(14)
            }
        );
        // A 3DES-only peer gets nothing (NO_PROPOSAL_CHOSEN).
        let (e, i, d) = defaults();
        let des = [Proposal {
            encryption: v(&["3DES"]),
            integrity: v(&["SHA1"]),
            dh: vec![2],
        }];
        assert_eq!(select(&e, &i, &d, &des, true), None);
        // Phase 2 without PFS: no group needed.
        let c = select(
            &e,
            &i,
            &d,
            &[Proposal {
                encryption: v(&["AES256"]),
                integrity: v(&["SHA2-512"]),
                dh: vec![],
            }],
            false,
        )
        .unwrap();
        assert_eq!(c.dh, None);
        assert_eq!(c.integrity.as_deref(), Some("SHA2-512"));
    }

    #[test]
    fn fact_13_engine_initiated_proposals() {
        let (e, i, d) = defaults();
        let p = initiator_proposal(&e, &i, &d);
        // A peer that accepts everything, answering with AWS's rule, picks AES128/SHA1/2.
        let c = select(&e, &i, &d, &[p], true).unwrap();
        assert_eq!(
            (c.encryption.as_str(), c.integrity.as_deref(), c.dh),
            ("AES128", Some("SHA1"), Some(2))
        );
        let p = initiator_proposal(&v(&["AES256"]), &v(&["SHA2-384"]), &[20]);
        assert_eq!(p.encryption, v(&["AES256"]));
        assert_eq!(p.dh, vec![20]);
    }
}
