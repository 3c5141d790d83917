//! The AWS algorithm names as IKEv1 transforms: phase 1 (RFC 2409 appendix A: Oakley
//! attributes of a KEY_IKE transform) and phase 2 (RFC 2407 section 4.5: IPsec DOI
//! attributes of an ESP transform; RFC 4106 section 8.4 for ESP_AES_GCM_16), and the
//! responder's choice among a peer's transforms by the AWS rule (`proposal::select`: our
//! lists in ascending order, the first value any offer has).
//!
//! Contract: a transform we cannot describe completely (an unknown attribute value, a key
//! length that is not 128 or 256, another authentication method) is never chosen; the
//! answer to a choice is the peer's transform unchanged.

use super::wire::{Attr, TransformV1};
use crate::algorithms::{Cipher, Hash};
use crate::proposal::{self, Proposal};

/// Phase 1 attribute types and values (RFC 2409 appendix A).
pub mod p1 {
    pub const KEY_IKE: u8 = 1;
    pub const ENCRYPTION: u16 = 1;
    pub const HASH: u16 = 2;
    pub const AUTH_METHOD: u16 = 3;
    pub const GROUP: u16 = 4;
    pub const LIFE_TYPE: u16 = 11;
    pub const LIFE_DURATION: u16 = 12;
    pub const KEY_LENGTH: u16 = 14;
    pub const AES_CBC: u32 = 7;
    pub const PSK: u32 = 1;
    pub const SECONDS: u32 = 1;
}

/// Phase 2 attribute types and values (RFC 2407 section 4.5, RFC 3947 section 5).
pub mod p2 {
    pub const LIFE_TYPE: u16 = 1;
    pub const LIFE_DURATION: u16 = 2;
    pub const GROUP: u16 = 3;
    pub const ENCAP: u16 = 4;
    pub const AUTH: u16 = 5;
    pub const KEY_LENGTH: u16 = 6;
    pub const ESP_AES_CBC: u8 = 12;
    pub const ESP_AES_GCM_16: u8 = 20;
    pub const TUNNEL: u32 = 1;
    pub const UDP_TUNNEL: u32 = 3;
    /// The draft-ietf-ipsec-nat-t-ike value some peers still send.
    pub const UDP_TUNNEL_DRAFT: u32 = 61443;
}

fn hash_id(h: Hash) -> u32 {
    match h {
        Hash::Sha1 => 2,
        Hash::Sha2_256 => 4,
        Hash::Sha2_384 => 5,
        Hash::Sha2_512 => 6,
    }
}

fn hash_of(id: u64) -> Option<Hash> {
    Hash::ALL.into_iter().find(|h| u64::from(hash_id(*h)) == id)
}

fn auth_id(h: Hash) -> u32 {
    match h {
        Hash::Sha1 => 2,
        Hash::Sha2_256 => 5,
        Hash::Sha2_384 => 6,
        Hash::Sha2_512 => 7,
    }
}

fn auth_of(id: u64) -> Option<Hash> {
    Hash::ALL.into_iter().find(|h| u64::from(auth_id(*h)) == id)
}

fn bits(c: Cipher) -> u32 {
    u32::from(c.transform().1)
}

/// A phase 1 suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P1Suite {
    /// AES-CBC only: IKEv1 has no AES-GCM for its own messages.
    pub cipher: Cipher,
    pub hash: Hash,
    pub group: u16,
    /// Life duration in seconds, as offered (None: no lifetime attribute).
    pub life_s: Option<u32>,
}

/// Our phase 1 transforms: every CBC cipher x hash x group of the lists, in their order.
pub fn p1_transforms(
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    life_s: u32,
) -> Vec<TransformV1> {
    let mut out = vec![];
    for c in enc.iter().filter_map(|e| Cipher::from_name(e)) {
        if c.is_aead() {
            continue;
        }
        for h in integ.iter().filter_map(|i| Hash::from_name(i)) {
            for g in dh {
                out.push(TransformV1 {
                    num: (out.len() + 1).min(255) as u8,
                    id: p1::KEY_IKE,
                    attrs: vec![
                        Attr::num(p1::ENCRYPTION, p1::AES_CBC),
                        Attr::num(p1::KEY_LENGTH, bits(c)),
                        Attr::num(p1::HASH, hash_id(h)),
                        Attr::num(p1::AUTH_METHOD, p1::PSK),
                        Attr::num(p1::GROUP, u32::from(*g)),
                        Attr::num(p1::LIFE_TYPE, p1::SECONDS),
                        Attr::num(p1::LIFE_DURATION, life_s),
                    ],
                });
            }
        }
    }
    out.truncate(255);
    out
}

/// What a phase 1 transform is, when we can use it (PSK, AES-CBC 128/256, a known hash,
/// a group, lifetime in seconds if any).
pub fn p1_suite(t: &TransformV1) -> Option<P1Suite> {
    if t.id != p1::KEY_IKE {
        return None;
    }
    let mut s = (None, None, None, None, None, None);
    for a in &t.attrs {
        let v = a.as_u64()?;
        match a.ty {
            p1::ENCRYPTION if v == u64::from(p1::AES_CBC) => s.0 = Some(()),
            p1::KEY_LENGTH => {
                s.1 = Some(match v {
                    128 => Cipher::Aes128Cbc,
                    256 => Cipher::Aes256Cbc,
                    _ => return None,
                })
            }
            p1::HASH => s.2 = Some(hash_of(v)?),
            p1::AUTH_METHOD if v == u64::from(p1::PSK) => s.3 = Some(()),
            p1::GROUP => s.4 = Some(u16::try_from(v).ok()?),
            p1::LIFE_TYPE if v == u64::from(p1::SECONDS) => {}
            p1::LIFE_DURATION => s.5 = Some(u32::try_from(v).unwrap_or(u32::MAX)),
            _ => return None,
        }
    }
    let (Some(()), Some(cipher), Some(hash), Some(()), Some(group)) = (s.0, s.1, s.2, s.3, s.4)
    else {
        return None;
    };
    Some(P1Suite {
        cipher,
        hash,
        group,
        life_s: s.5,
    })
}

/// A phase 2 suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P2Suite {
    pub cipher: Cipher,
    /// None with GCM.
    pub integ: Option<Hash>,
    /// PFS group.
    pub group: Option<u16>,
    pub encap: u32,
    pub life_s: Option<u32>,
}

/// Our phase 2 transforms: every cipher x integrity (none with GCM), all with the PFS group
/// (one KE per quick mode) and the encapsulation mode.
pub fn p2_transforms(
    enc: &[String],
    integ: &[String],
    group: Option<u16>,
    encap: u32,
    life_s: u32,
) -> Vec<TransformV1> {
    let mut out = vec![];
    for c in enc.iter().filter_map(|e| Cipher::from_name(e)) {
        let hashes: Vec<Option<Hash>> = if c.is_aead() {
            vec![None]
        } else {
            integ
                .iter()
                .filter_map(|i| Hash::from_name(i))
                .map(Some)
                .collect()
        };
        for h in hashes {
            let mut attrs = vec![
                Attr::num(p2::LIFE_TYPE, p1::SECONDS),
                Attr::num(p2::LIFE_DURATION, life_s),
            ];
            if let Some(g) = group {
                attrs.push(Attr::num(p2::GROUP, u32::from(g)));
            }
            attrs.push(Attr::num(p2::ENCAP, encap));
            if let Some(h) = h {
                attrs.push(Attr::num(p2::AUTH, auth_id(h)));
            }
            attrs.push(Attr::num(p2::KEY_LENGTH, bits(c)));
            out.push(TransformV1 {
                num: (out.len() + 1).min(255) as u8,
                id: if c.is_aead() {
                    p2::ESP_AES_GCM_16
                } else {
                    p2::ESP_AES_CBC
                },
                attrs,
            });
        }
    }
    out.truncate(255);
    out
}

/// What a phase 2 transform is, when we can use it.
pub fn p2_suite(t: &TransformV1) -> Option<P2Suite> {
    let gcm = match t.id {
        p2::ESP_AES_CBC => false,
        p2::ESP_AES_GCM_16 => true,
        _ => return None,
    };
    let (mut key, mut integ, mut group, mut encap, mut life) = (None, None, None, None, None);
    for a in &t.attrs {
        let v = a.as_u64()?;
        match a.ty {
            p2::LIFE_TYPE if v == u64::from(p1::SECONDS) => {}
            p2::LIFE_DURATION => life = Some(u32::try_from(v).unwrap_or(u32::MAX)),
            p2::GROUP => group = Some(u16::try_from(v).ok()?),
            p2::ENCAP => {
                let v = u32::try_from(v).ok()?;
                if ![p2::TUNNEL, p2::UDP_TUNNEL, p2::UDP_TUNNEL_DRAFT].contains(&v) {
                    return None;
                }
                encap = Some(v);
            }
            p2::AUTH => integ = Some(auth_of(v)?),
            p2::KEY_LENGTH => key = Some(v),
            _ => return None,
        }
    }
    let cipher = match (gcm, key?) {
        (false, 128) => Cipher::Aes128Cbc,
        (false, 256) => Cipher::Aes256Cbc,
        (true, 128) => Cipher::Aes128Gcm16,
        (true, 256) => Cipher::Aes256Gcm16,
        _ => return None,
    };
    if gcm == integ.is_some() {
        return None;
    }
    Some(P2Suite {
        cipher,
        integ,
        group,
        encap: encap?,
        life_s: life,
    })
}

/// The responder's choice (AWS rule) among `offers` (each transform a complete suite):
/// the index of the chosen transform. `need_dh`: the transform must carry a group from
/// `dh` (phase 1 always; phase 2 when PFS is configured).
pub fn choose(
    offers: &[(String, Option<String>, Option<u16>)],
    enc: &[String],
    integ: &[String],
    dh: &[u16],
    need_dh: bool,
) -> Option<usize> {
    let as_proposals: Vec<Proposal> = offers
        .iter()
        .map(|(e, i, g)| Proposal {
            encryption: vec![e.clone()],
            integrity: i.iter().cloned().collect(),
            dh: g.iter().copied().collect(),
        })
        .collect();
    let c = proposal::select(enc, integ, dh, &as_proposals, need_dh)?;
    offers.iter().position(|(e, i, g)| {
        e.eq_ignore_ascii_case(&c.encryption)
            && match (&c.integrity, i) {
                (None, _) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (Some(_), None) => false,
            }
            && (!need_dh || *g == c.dh)
            && (need_dh || g.is_none())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn phase1_transforms_round_trip_and_skip_gcm() {
        let ts = p1_transforms(
            &v(&["AES128", "AES256-GCM-16", "AES256"]),
            &v(&["SHA1", "SHA2-256"]),
            &[2, 14],
            28800,
        );
        assert_eq!(ts.len(), 8);
        let s = p1_suite(&ts[0]).unwrap();
        assert_eq!(
            s,
            P1Suite {
                cipher: Cipher::Aes128Cbc,
                hash: Hash::Sha1,
                group: 2,
                life_s: Some(28800)
            }
        );
        assert_eq!(p1_suite(&ts[7]).unwrap().cipher, Cipher::Aes256Cbc);
        // Another authentication method (RSA signatures = 3) is never usable.
        let mut rsa = ts[0].clone();
        rsa.attrs[3] = Attr::num(p1::AUTH_METHOD, 3);
        assert_eq!(p1_suite(&rsa), None);
    }

    #[test]
    fn phase2_transforms_round_trip() {
        let ts = p2_transforms(
            &v(&["AES128-GCM-16", "AES256"]),
            &v(&["SHA2-256"]),
            Some(14),
            p2::UDP_TUNNEL,
            3600,
        );
        assert_eq!(ts.len(), 2);
        let g = p2_suite(&ts[0]).unwrap();
        assert_eq!(
            (g.cipher, g.integ, g.group),
            (Cipher::Aes128Gcm16, None, Some(14))
        );
        let c = p2_suite(&ts[1]).unwrap();
        assert_eq!(c.integ, Some(Hash::Sha2_256));
        assert_eq!(c.life_s, Some(3600));
    }

    #[test]
    fn the_responder_takes_its_lowest_value() {
        let offers = vec![
            ("AES256".to_string(), Some("SHA2-256".to_string()), Some(14)),
            ("AES128".to_string(), Some("SHA1".to_string()), Some(2)),
        ];
        let all = v(&["AES128", "AES256"]);
        let hs = v(&["SHA1", "SHA2-256"]);
        assert_eq!(choose(&offers, &all, &hs, &[2, 14], true), Some(1));
        assert_eq!(
            choose(&offers, &v(&["AES256"]), &hs, &[2, 14], true),
            Some(0)
        );
        assert_eq!(choose(&offers, &all, &hs, &[19], true), None);
    }
}
