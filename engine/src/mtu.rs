//! Per-SA inner MTU and TCP MSS (shared/spec/mtu.md section 3): the largest inner packet that
//! fits one ESP packet on a 1500-byte outer path, never above AWS's 1446.
//!
//! `avail = path - outer_ip - (NAT-T ? 8 : 0) - 8 - IV - ICV`,
//! `inner_mtu = floor(avail / ALIGN) * ALIGN - 2`, capped at 1446.

use crate::crypto::Suite;

/// The outer path MTU AWS uses (no jumbo frames).
pub const PATH_MTU: usize = 1500;
/// AWS's maximum inner MTU.
pub const MAX_INNER_MTU: usize = 1446;

/// Outer IP family of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OuterFamily {
    V4,
    V6,
}

impl OuterFamily {
    pub fn header_len(self) -> usize {
        match self {
            OuterFamily::V4 => 20,
            OuterFamily::V6 => 40,
        }
    }
}

/// Inner MTU for a transform on a 1500-byte path, capped at 1446.
pub fn inner_mtu(suite: Suite, nat_t: bool, outer: OuterFamily) -> usize {
    inner_mtu_for_path(suite, nat_t, outer, PATH_MTU).min(MAX_INNER_MTU)
}

/// Inner MTU for an arbitrary outer path MTU, uncapped (the formula itself).
pub fn inner_mtu_for_path(suite: Suite, nat_t: bool, outer: OuterFamily, path: usize) -> usize {
    let avail = path.saturating_sub(
        outer.header_len() + if nat_t { 8 } else { 0 } + 8 + suite.iv_len() + suite.icv_len(),
    );
    let a = suite.block();
    (avail / a * a).saturating_sub(2)
}

/// MSS for inner IPv4 TCP (inner IPv4 20 + TCP 20).
pub fn mss_ipv4(mtu: usize) -> usize {
    mtu - 40
}

/// MSS for inner IPv6 TCP (inner IPv6 40 + TCP 20).
pub fn mss_ipv6(mtu: usize) -> usize {
    mtu - 60
}

/// Outer packet size for an inner packet of `inner` bytes.
pub fn outer_len(suite: Suite, nat_t: bool, outer: OuterFamily, inner: usize) -> usize {
    let ct = (inner + 2).div_ceil(suite.block()) * suite.block();
    outer.header_len() + if nat_t { 8 } else { 0 } + 8 + suite.iv_len() + ct + suite.icv_len()
}

/// One row of `espd mtu`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MtuRow {
    pub encryption: &'static str,
    pub integrity: &'static str,
    pub nat_t: bool,
    pub mtu: usize,
    pub mss_ipv4: usize,
    pub mss_ipv6_in_ipv4: usize,
}

/// The table for every suite and NAT-T state over an IPv4 outer path.
pub fn table() -> Vec<MtuRow> {
    let mut rows = vec![];
    for s in Suite::all() {
        for nat_t in [false, true] {
            let mtu = inner_mtu(s, nat_t, OuterFamily::V4);
            rows.push(MtuRow {
                encryption: s.enc.name(),
                integrity: s.integ.name(),
                nat_t,
                mtu,
                mss_ipv4: mss_ipv4(mtu),
                mss_ipv6_in_ipv4: mss_ipv6(mtu),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Encryption as E, Integrity as I};

    fn s(e: E, i: I) -> Suite {
        Suite::new(e, i).unwrap()
    }

    #[test]
    fn aws_table_all_eight_rows() {
        // shared/spec/mtu.md section 2, the AWS table (MTU, MSS IPv4, MSS IPv6-in-IPv4).
        let rows: [(Suite, bool, usize, usize, usize); 10] = [
            (s(E::Aes128Gcm16, I::None), false, 1446, 1406, 1386),
            (s(E::Aes128Gcm16, I::None), true, 1438, 1398, 1378),
            (s(E::Aes128Cbc, I::Sha1_96), false, 1438, 1398, 1378),
            (s(E::Aes128Cbc, I::Sha256_128), false, 1438, 1398, 1378),
            (s(E::Aes128Cbc, I::Sha1_96), true, 1422, 1382, 1362),
            (s(E::Aes128Cbc, I::Sha256_128), true, 1422, 1382, 1362),
            (s(E::Aes128Cbc, I::Sha384_192), false, 1422, 1382, 1362),
            (s(E::Aes128Cbc, I::Sha384_192), true, 1422, 1382, 1362),
            (s(E::Aes128Cbc, I::Sha512_256), false, 1422, 1382, 1362),
            (s(E::Aes128Cbc, I::Sha512_256), true, 1406, 1366, 1346),
        ];
        for (suite, nat, mtu, m4, m6) in rows {
            for suite in [
                suite,
                Suite {
                    enc: if suite.enc.is_gcm() {
                        E::Aes256Gcm16
                    } else {
                        E::Aes256Cbc
                    },
                    ..suite
                },
            ] {
                let got = inner_mtu(suite, nat, OuterFamily::V4);
                assert_eq!(
                    (got, mss_ipv4(got), mss_ipv6(got)),
                    (mtu, m4, m6),
                    "{suite} nat_t={nat}"
                );
                // Fact 45: inner_mtu fits in 1500, one more byte does not.
                assert!(outer_len(suite, nat, OuterFamily::V4, got) <= 1500);
                assert!(outer_len(suite, nat, OuterFamily::V4, got + 1) > 1500);
            }
        }
    }

    #[test]
    fn ipv6_outer_variants() {
        // shared/spec/mtu.md section 3.2.
        assert_eq!(
            inner_mtu(s(E::Aes128Gcm16, I::None), false, OuterFamily::V6),
            1426
        );
        assert_eq!(
            inner_mtu(s(E::Aes128Gcm16, I::None), true, OuterFamily::V6),
            1418
        );
        assert_eq!(
            inner_mtu(s(E::Aes128Cbc, I::Sha1_96), false, OuterFamily::V6),
            1422
        );
        assert_eq!(
            inner_mtu(s(E::Aes128Cbc, I::Sha256_128), false, OuterFamily::V6),
            1406
        );
        assert_eq!(
            inner_mtu(s(E::Aes256Cbc, I::Sha512_256), true, OuterFamily::V6),
            1390
        );
    }

    #[test]
    fn cap_holds_on_jumbo_underlay() {
        // Fact 46: never above 1446.
        for suite in Suite::all() {
            assert!(inner_mtu_for_path(suite, false, OuterFamily::V4, 9000) > 1446);
            assert!(inner_mtu(suite, false, OuterFamily::V4) <= 1446);
        }
    }
}
