//! The AWS algorithm names (tunnel options `phase1_encryption`, `phase2_integrity`, ...) and
//! what each is: one table, used by the configuration's validation, `espd export-config`,
//! the proposals we build and the choices we accept (RFC 7296 section 3.3.2, IANA IKEv2
//! transform ids; RFC 4106 for GCM, RFC 3602 for CBC, RFC 4868 / 2404 for the HMACs).
//!
//! Contract: names are matched without regard to case, plus the spellings AWS's console
//! also accepts (`AES-128`, `SHA-256`); every name has exactly one row and every row one
//! canonical name.

use crate::keys::{Encr, Integ, Prf};
use crate::msg::transform as tt;

/// An encryption algorithm (IKE SA or CHILD_SA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Cbc,
    Aes256Cbc,
    Aes128Gcm16,
    Aes256Gcm16,
}

/// An integrity algorithm; for the IKE SA it also names the PRF of the same hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha1,
    Sha2_256,
    Sha2_384,
    Sha2_512,
}

struct CipherRow {
    c: Cipher,
    aws: &'static str,
    alias: &'static str,
    id: u16,
    bits: u16,
    strongswan: &'static str,
}

const CIPHERS: [CipherRow; 4] = [
    CipherRow {
        c: Cipher::Aes128Cbc,
        aws: "AES128",
        alias: "AES-128",
        id: tt::ENCR_AES_CBC,
        bits: 128,
        strongswan: "aes128",
    },
    CipherRow {
        c: Cipher::Aes256Cbc,
        aws: "AES256",
        alias: "AES-256",
        id: tt::ENCR_AES_CBC,
        bits: 256,
        strongswan: "aes256",
    },
    CipherRow {
        c: Cipher::Aes128Gcm16,
        aws: "AES128-GCM-16",
        alias: "AES128-GCM-16",
        id: tt::ENCR_AES_GCM_16,
        bits: 128,
        strongswan: "aes128gcm16",
    },
    CipherRow {
        c: Cipher::Aes256Gcm16,
        aws: "AES256-GCM-16",
        alias: "AES256-GCM-16",
        id: tt::ENCR_AES_GCM_16,
        bits: 256,
        strongswan: "aes256gcm16",
    },
];

struct HashRow {
    h: Hash,
    aws: &'static str,
    alias: &'static str,
    integ: Integ,
    prf: Prf,
    strongswan: &'static str,
}

const HASHES: [HashRow; 4] = [
    HashRow {
        h: Hash::Sha1,
        aws: "SHA1",
        alias: "SHA-1",
        integ: Integ::Sha1_96,
        prf: Prf::Sha1,
        strongswan: "sha1",
    },
    HashRow {
        h: Hash::Sha2_256,
        aws: "SHA2-256",
        alias: "SHA-256",
        integ: Integ::Sha256_128,
        prf: Prf::Sha256,
        strongswan: "sha256",
    },
    HashRow {
        h: Hash::Sha2_384,
        aws: "SHA2-384",
        alias: "SHA-384",
        integ: Integ::Sha384_192,
        prf: Prf::Sha384,
        strongswan: "sha384",
    },
    HashRow {
        h: Hash::Sha2_512,
        aws: "SHA2-512",
        alias: "SHA-512",
        integ: Integ::Sha512_256,
        prf: Prf::Sha512,
        strongswan: "sha512",
    },
];

impl Cipher {
    /// Every cipher, in the order AWS lists them.
    pub const ALL: [Cipher; 4] = [
        Cipher::Aes128Cbc,
        Cipher::Aes256Cbc,
        Cipher::Aes128Gcm16,
        Cipher::Aes256Gcm16,
    ];
    const fn row(self) -> &'static CipherRow {
        &CIPHERS[self as usize]
    }
    /// By AWS name or alias, any case.
    pub fn from_name(name: &str) -> Option<Cipher> {
        CIPHERS
            .iter()
            .find(|r| r.aws.eq_ignore_ascii_case(name) || r.alias.eq_ignore_ascii_case(name))
            .map(|r| r.c)
    }
    /// By IKEv2 transform id and key length.
    pub fn from_transform(id: u16, bits: Option<u16>) -> Option<Cipher> {
        CIPHERS
            .iter()
            .find(|r| r.id == id && Some(r.bits) == bits)
            .map(|r| r.c)
    }
    /// The AWS name (`AES128-GCM-16`).
    pub const fn name(self) -> &'static str {
        self.row().aws
    }
    /// The accepted alternative spelling (`AES-128`), or the name itself.
    pub const fn alias(self) -> &'static str {
        self.row().alias
    }
    /// Transform type 1 id and key length in bits.
    pub fn transform(self) -> (u16, u16) {
        (self.row().id, self.row().bits)
    }
    /// Combined-mode (AEAD): no integrity transform goes with it.
    pub fn is_aead(self) -> bool {
        self.row().id == tt::ENCR_AES_GCM_16
    }
    /// The IKE SA's cipher (`keys::Encr`).
    pub fn encr(self) -> Encr {
        if self.is_aead() {
            Encr::AesGcm16(self.row().bits)
        } else {
            Encr::AesCbc(self.row().bits)
        }
    }
    /// strongSwan's proposal keyword.
    pub fn strongswan(self) -> &'static str {
        self.row().strongswan
    }
}

impl Hash {
    pub const ALL: [Hash; 4] = [Hash::Sha1, Hash::Sha2_256, Hash::Sha2_384, Hash::Sha2_512];
    const fn row(self) -> &'static HashRow {
        &HASHES[self as usize]
    }
    /// By AWS name or alias, any case.
    pub fn from_name(name: &str) -> Option<Hash> {
        HASHES
            .iter()
            .find(|r| r.aws.eq_ignore_ascii_case(name) || r.alias.eq_ignore_ascii_case(name))
            .map(|r| r.h)
    }
    /// The hash of an integrity transform.
    pub fn from_integ(i: Integ) -> Hash {
        HASHES
            .iter()
            .find(|r| r.integ == i)
            .map_or(Hash::Sha1, |r| r.h)
    }
    pub const fn name(self) -> &'static str {
        self.row().aws
    }
    pub const fn alias(self) -> &'static str {
        self.row().alias
    }
    /// The integrity transform (truncated HMAC).
    pub fn integ(self) -> Integ {
        self.row().integ
    }
    /// The PRF of the same hash (IKE SA).
    pub fn prf(self) -> Prf {
        self.row().prf
    }
    pub fn strongswan(self) -> &'static str {
        self.row().strongswan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row is where its enum value says, names round-trip, and no name or transform
    /// is claimed twice.
    #[test]
    fn one_row_per_algorithm() {
        for c in Cipher::ALL {
            assert_eq!(c.row().c, c);
            assert_eq!(Cipher::from_name(c.name()), Some(c));
            assert_eq!(Cipher::from_name(&c.name().to_lowercase()), Some(c));
            assert_eq!(Cipher::from_name(c.alias()), Some(c));
            let (id, bits) = c.transform();
            assert_eq!(Cipher::from_transform(id, Some(bits)), Some(c));
            assert_eq!(Encr::from_transform(id, Some(bits)), Some(c.encr()));
        }
        for h in Hash::ALL {
            assert_eq!(h.row().h, h);
            assert_eq!(Hash::from_name(h.name()), Some(h));
            assert_eq!(Hash::from_name(h.alias()), Some(h));
            assert_eq!(Hash::from_integ(h.integ()), h);
        }
        assert_eq!(Cipher::from_name("AES192"), None);
        assert_eq!(Cipher::from_transform(tt::ENCR_AES_CBC, Some(192)), None);
        assert_eq!(Cipher::from_transform(tt::ENCR_AES_CBC, None), None);
        assert_eq!(Hash::from_name("MD5"), None);
        assert!(Cipher::Aes256Gcm16.is_aead() && !Cipher::Aes256Cbc.is_aead());
    }
}
