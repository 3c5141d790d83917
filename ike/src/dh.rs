//! Diffie-Hellman for the KE payload (RFC 7296 section 3.4): key pairs and shared secrets
//! for every group AWS allows, with the public-value checks each group needs.
//!
//! Contract: [`KeyPair::generate`] takes its randomness from the caller (`fill`), so tests
//! are deterministic; public values and shared secrets have the fixed lengths RFC 7296
//! section 3.4 and RFC 5903 section 7 require (MODP: the prime's byte length, zero-padded;
//! ECP: x || y, and x alone as the shared secret). [`KeyPair::shared`] rejects a peer value
//! that is out of range (MODP: not in 2..p-2; RFC 5114 groups: not in the order-q subgroup,
//! RFC 6989 section 2.2) or not on the curve (ECP). Exponentiation is constant time
//! (crypto-bigint Montgomery form); secrets are zeroized on drop.

use crate::groups;
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, NonZero, Odd};
use zeroize::Zeroizing;

/// A group that cannot be used, or a peer value that fails its checks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("DH group {0} is not supported (AWS allows 2, 5, 14-24)")]
    Unsupported(u16),
    #[error("KE data of group {group} has {got} bytes, expected {want}")]
    Length { group: u16, got: usize, want: usize },
    #[error(
        "peer public value of group {0} is invalid (out of range, small subgroup, or not on the curve)"
    )]
    Invalid(u16),
}

enum Kind {
    /// p, g, optional subgroup order q (RFC 5114), exponent bits.
    Modp {
        p: String,
        g: &'static str,
        q: Option<&'static str>,
    },
    P256,
    P384,
    P521,
}

fn kind(group: u16) -> Option<Kind> {
    let m = |p: &str| Kind::Modp {
        p: p.to_string(),
        g: "02",
        q: None,
    };
    Some(match group {
        2 => m(groups::MODP_2),
        5 => m(groups::MODP_5),
        14 => m(groups::MODP_14),
        15 => m(groups::MODP_15),
        16 => m(groups::MODP_16),
        17 => m(groups::MODP_17),
        18 => m(groups::MODP_18),
        22 => Kind::Modp {
            p: groups::RFC5114_1024_P.into(),
            g: groups::RFC5114_1024_G,
            q: Some(groups::RFC5114_1024_Q),
        },
        23 => Kind::Modp {
            p: groups::RFC5114_2048_224_P.into(),
            g: groups::RFC5114_2048_224_G,
            q: Some(groups::RFC5114_2048_224_Q),
        },
        24 => Kind::Modp {
            p: groups::RFC5114_2048_256_P.into(),
            g: groups::RFC5114_2048_256_G,
            q: Some(groups::RFC5114_2048_256_Q),
        },
        19 => Kind::P256,
        20 => Kind::P384,
        21 => Kind::P521,
        _ => return None,
    })
}

fn hex_bytes(h: &str) -> Vec<u8> {
    let h = if h.len() % 2 == 1 {
        format!("0{h}")
    } else {
        h.to_string()
    };
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap_or(0))
        .collect()
}

fn big(bytes: &[u8], bits: u32) -> BoxedUint {
    BoxedUint::from_be_slice(bytes, bits).unwrap_or_else(|_| BoxedUint::zero_with_precision(bits))
}

/// Big-endian bytes of `x`, left-padded (or trimmed of leading zeros) to `len`.
fn to_len(x: &BoxedUint, len: usize) -> Vec<u8> {
    let b = x.to_be_bytes();
    if b.len() >= len {
        b[b.len() - len..].to_vec()
    } else {
        let mut v = vec![0; len - b.len()];
        v.extend_from_slice(&b);
        v
    }
}

struct Modp {
    p: BoxedUint,
    params: BoxedMontyParams,
    len: usize,
    bits: u32,
}

fn modp(p_hex: &str) -> Modp {
    let pb = hex_bytes(p_hex);
    let len = pb.len();
    let bits = (len * 8).next_multiple_of(64) as u32;
    let p = big(&pb, bits);
    let odd = Odd::new(p.clone()).expect("MODP primes are odd");
    Modp {
        params: BoxedMontyParams::new(odd),
        p,
        len,
        bits,
    }
}

fn pow(m: &Modp, base: &BoxedUint, exp: &BoxedUint) -> BoxedUint {
    BoxedMontyForm::new(base.clone(), m.params.clone())
        .pow(exp)
        .retrieve()
}

/// Our half of a key exchange.
pub struct KeyPair {
    pub group: u16,
    secret: Zeroizing<Vec<u8>>,
    /// The KE payload's data.
    pub public: Vec<u8>,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(group {}, secret <redacted>)", self.group)
    }
}

/// Length of the KE data of a group.
pub fn public_len(group: u16) -> Option<usize> {
    Some(match kind(group)? {
        Kind::Modp { p, .. } => p.len() / 2,
        Kind::P256 => 64,
        Kind::P384 => 96,
        Kind::P521 => 132,
    })
}

impl KeyPair {
    /// A fresh key pair of `group` with randomness from `fill`.
    pub fn generate(group: u16, fill: &mut dyn FnMut(&mut [u8])) -> Result<KeyPair, DhError> {
        let k = kind(group).ok_or(DhError::Unsupported(group))?;
        match k {
            Kind::Modp { p, g, q } => {
                let m = modp(&p);
                // Exponent: below q for RFC 5114 groups; 512 random bits otherwise (twice
                // the strength of the biggest group, as RFC 3526 section 8 suggests).
                let mut x = Zeroizing::new(vec![0u8; 64]);
                let xb = match q {
                    Some(q) => {
                        let qb = hex_bytes(q);
                        let qbits = (qb.len() * 8 + 64).next_multiple_of(64) as u32;
                        let mut r = Zeroizing::new(vec![0u8; qb.len() + 8]);
                        fill(&mut r);
                        let qn = NonZero::new(big(&qb, qbits)).expect("q is not zero");
                        let v = big(&r, qbits).rem(&qn);
                        Zeroizing::new(to_len(&v, qb.len()))
                    }
                    None => {
                        fill(&mut x);
                        x.clone()
                    }
                };
                let e = big(&xb, (xb.len() * 8).next_multiple_of(64) as u32);
                let gv = big(&hex_bytes(g), m.bits);
                let y = pow(&m, &gv, &e);
                Ok(KeyPair {
                    group,
                    public: to_len(&y, m.len),
                    secret: xb,
                })
            }
            Kind::P256 => ec_generate::<p256::NistP256>(group, 32, fill),
            Kind::P384 => ec_generate::<p384::NistP384>(group, 48, fill),
            Kind::P521 => ec_generate::<p521::NistP521>(group, 66, fill),
        }
    }

    /// The shared secret g^ir with the peer's KE data.
    pub fn shared(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, DhError> {
        let group = self.group;
        let want = public_len(group).ok_or(DhError::Unsupported(group))?;
        if peer.len() != want {
            return Err(DhError::Length {
                group,
                got: peer.len(),
                want,
            });
        }
        match kind(group).ok_or(DhError::Unsupported(group))? {
            Kind::Modp { p, q, .. } => {
                let m = modp(&p);
                let y = big(peer, m.bits);
                // 1 < y < p - 1 (RFC 6989 section 2.1).
                let one = BoxedUint::one_with_precision(m.bits);
                let pm1 = m.p.wrapping_sub(&one);
                if y <= one || y >= pm1 {
                    return Err(DhError::Invalid(group));
                }
                if let Some(q) = q {
                    let qb = hex_bytes(q);
                    let qv = big(&qb, (qb.len() * 8).next_multiple_of(64) as u32);
                    if pow(&m, &y, &qv) != one {
                        return Err(DhError::Invalid(group));
                    }
                }
                let e = big(
                    &self.secret,
                    (self.secret.len() * 8).next_multiple_of(64) as u32,
                );
                Ok(Zeroizing::new(to_len(&pow(&m, &y, &e), m.len)))
            }
            Kind::P256 => ec_shared::<p256::NistP256>(group, &self.secret, peer),
            Kind::P384 => ec_shared::<p384::NistP384>(group, &self.secret, peer),
            Kind::P521 => ec_shared::<p521::NistP521>(group, &self.secret, peer),
        }
    }
}

use p256::elliptic_curve::sec1::{FromEncodedPoint, ModulusSize, ToEncodedPoint};
use p256::elliptic_curve::{AffinePoint, CurveArithmetic, FieldBytesSize, PublicKey, SecretKey};

fn ec_generate<C>(group: u16, n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<KeyPair, DhError>
where
    C: CurveArithmetic,
    AffinePoint<C>: FromEncodedPoint<C> + ToEncodedPoint<C>,
    FieldBytesSize<C>: ModulusSize,
{
    // Rejection sampling: a random scalar in 1..n-1 (a few tries at most; P-521's top byte
    // is masked to its 9 bits first).
    for _ in 0..64 {
        let mut s = Zeroizing::new(vec![0u8; n]);
        fill(&mut s);
        if n == 66 {
            s[0] &= 1;
        }
        if let Ok(sk) = SecretKey::<C>::from_slice(&s) {
            let pt = sk.public_key().to_encoded_point(false);
            return Ok(KeyPair {
                group,
                public: pt.as_bytes()[1..].to_vec(),
                secret: s,
            });
        }
    }
    Err(DhError::Invalid(group))
}

fn ec_shared<C>(group: u16, secret: &[u8], peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, DhError>
where
    C: CurveArithmetic,
    AffinePoint<C>: FromEncodedPoint<C> + ToEncodedPoint<C>,
    FieldBytesSize<C>: ModulusSize,
{
    let mut sec1 = Vec::with_capacity(peer.len() + 1);
    sec1.push(4);
    sec1.extend_from_slice(peer);
    let pk = PublicKey::<C>::from_sec1_bytes(&sec1).map_err(|_| DhError::Invalid(group))?;
    let sk = SecretKey::<C>::from_slice(secret).map_err(|_| DhError::Invalid(group))?;
    let shared = p256::elliptic_curve::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
    Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u8) -> impl FnMut(&mut [u8]) {
        let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move |b: &mut [u8]| {
            for o in b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *o = x as u8;
            }
        }
    }

    #[test]
    fn every_aws_group_agrees_on_a_secret() {
        for g in [2u16, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24] {
            let a = KeyPair::generate(g, &mut rng(1)).unwrap();
            let b = KeyPair::generate(g, &mut rng(2)).unwrap();
            assert_eq!(a.public.len(), public_len(g).unwrap(), "group {g}");
            let sa = a.shared(&b.public).unwrap();
            let sb = b.shared(&a.public).unwrap();
            assert_eq!(*sa, *sb, "group {g}");
            assert_ne!(a.public, b.public);
        }
    }

    #[test]
    fn bad_public_values_are_rejected() {
        for g in [2u16, 14, 22, 24] {
            let a = KeyPair::generate(g, &mut rng(3)).unwrap();
            let n = public_len(g).unwrap();
            let mut one = vec![0u8; n];
            one[n - 1] = 1;
            assert_eq!(a.shared(&one), Err(DhError::Invalid(g)));
            assert_eq!(
                a.shared(&vec![0xff; n]),
                Err(DhError::Invalid(g)),
                "{g}: >= p"
            );
            assert!(matches!(a.shared(&[1, 2, 3]), Err(DhError::Length { .. })));
        }
        // RFC 5114 groups: 2 is in range but (almost surely) not in the order-q subgroup.
        let a = KeyPair::generate(23, &mut rng(4)).unwrap();
        let mut two = vec![0u8; 256];
        two[255] = 2;
        assert_eq!(a.shared(&two), Err(DhError::Invalid(23)));
        for g in [19u16, 20, 21] {
            let a = KeyPair::generate(g, &mut rng(5)).unwrap();
            let mut off = a.public.clone();
            off[5] ^= 1;
            assert_eq!(
                a.shared(&off),
                Err(DhError::Invalid(g)),
                "group {g}: off the curve"
            );
        }
        assert_eq!(
            KeyPair::generate(1, &mut rng(1)).unwrap_err(),
            DhError::Unsupported(1)
        );
    }

    #[test]
    fn rfc5114_constants_are_consistent() {
        // g^q = 1 mod p, g != 1: the generator has the documented subgroup order.
        for (p, g, q) in [
            (
                groups::RFC5114_1024_P,
                groups::RFC5114_1024_G,
                groups::RFC5114_1024_Q,
            ),
            (
                groups::RFC5114_2048_224_P,
                groups::RFC5114_2048_224_G,
                groups::RFC5114_2048_224_Q,
            ),
            (
                groups::RFC5114_2048_256_P,
                groups::RFC5114_2048_256_G,
                groups::RFC5114_2048_256_Q,
            ),
        ] {
            let m = modp(p);
            let gv = big(&hex_bytes(g), m.bits);
            let qv = big(&hex_bytes(q), 320);
            assert_eq!(pow(&m, &gv, &qv), BoxedUint::one_with_precision(m.bits));
        }
    }

    /// RFC 5903 section 8.1: the ECP-256 test vector (initiator i, responder r).
    #[test]
    fn rfc5903_ecp256_known_answer() {
        let hex = |s: &str| hex_bytes(s);
        let i = hex("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433");
        let gi = hex(
            "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180\
                      5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        );
        let r = hex("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53");
        let gr = hex(
            "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63\
                      56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        );
        let gir = hex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE");
        let mut it = i.clone().into_iter();
        let a = KeyPair::generate(19, &mut |b: &mut [u8]| {
            b.iter_mut().for_each(|x| *x = it.next().unwrap_or(0))
        })
        .unwrap();
        assert_eq!(a.public, gi);
        let mut it = r.clone().into_iter();
        let b = KeyPair::generate(19, &mut |b: &mut [u8]| {
            b.iter_mut().for_each(|x| *x = it.next().unwrap_or(0))
        })
        .unwrap();
        assert_eq!(b.public, gr);
        assert_eq!(*a.shared(&gr).unwrap(), gir);
        assert_eq!(*b.shared(&gi).unwrap(), gir);
    }
}
