//! `espd export-config`: the customer-gateway side of a tunnel, as AWS's downloadable
//! configuration gives it: a strongSwan `swanctl.conf` (IKE/ESP proposals in strongSwan
//! syntax, lifetimes, DPD, PSK, addresses, selectors) and a vendor-neutral text with the same
//! facts (IKE, IPsec, tunnel interface with inside addresses and MTU, TCP MSS adjustment).
//!
//! Contract: pure functions of a validated [`Tunnel`]; the PSK appears in the output (as in
//! AWS's file), so callers write it to a file the operator asked for, never to a log.

use crate::config::{DpdAction, IkeVersion, NatT, Tunnel, esp_suite};
use engine::crypto::{Encryption, Integrity, Suite};
use engine::mtu::{self, OuterFamily};
use ike::algorithms::{Cipher, Hash};

/// strongSwan's name of an IKE DH group (RFC 3526 / 5903 / 5114 groups).
fn dh_name(g: u16) -> &'static str {
    match g {
        2 => "modp1024",
        5 => "modp1536",
        14 => "modp2048",
        15 => "modp3072",
        16 => "modp4096",
        17 => "modp6144",
        18 => "modp8192",
        19 => "ecp256",
        20 => "ecp384",
        21 => "ecp521",
        22 => "modp1024s160",
        23 => "modp2048s224",
        _ => "modp2048s256",
    }
}

fn enc_name(e: &str) -> &'static str {
    Cipher::from_name(e).map_or("", Cipher::strongswan)
}

fn integ_name(i: &str) -> &'static str {
    Hash::from_name(i).map_or("", Hash::strongswan)
}

/// strongSwan proposals for one phase: CBC ciphers with integrity, GCM ciphers separately
/// (with PRFs from the integrity list for IKE), each with the DH groups.
fn proposals(enc: &[String], integ: &[String], groups: &[u16], ike: bool) -> String {
    let dh: Vec<&str> = groups.iter().map(|g| dh_name(*g)).collect();
    let mut out = vec![];
    let cbc: Vec<&str> = enc
        .iter()
        .filter(|e| !Cipher::from_name(e).is_some_and(Cipher::is_aead))
        .map(|e| enc_name(e))
        .collect();
    let gcm: Vec<&str> = enc
        .iter()
        .filter(|e| Cipher::from_name(e).is_some_and(Cipher::is_aead))
        .map(|e| enc_name(e))
        .collect();
    let ints: Vec<&str> = integ.iter().map(|i| integ_name(i)).collect();
    if !cbc.is_empty() && !ints.is_empty() {
        out.push([cbc.clone(), ints.clone(), dh.clone()].concat().join("-"));
    }
    if !gcm.is_empty() {
        let prfs: Vec<String> = if ike {
            ints.iter().map(|i| format!("prf{i}")).collect()
        } else {
            vec![]
        };
        let prfs: Vec<&str> = prfs.iter().map(String::as_str).collect();
        out.push([gcm, prfs, dh].concat().join("-"));
    }
    out.join(",")
}

/// The best (lowest-overhead) ESP suite the tunnel allows, for the MTU advice.
fn best_suite(t: &Tunnel) -> Suite {
    let mut best: Option<(usize, Suite)> = None;
    for e in &t.phase2_encryption {
        // A validated config names only table entries: every candidate exists.
        let cands: Vec<Suite> = match esp_suite(e, None) {
            Some(gcm) => vec![gcm],
            None => t
                .phase2_integrity
                .iter()
                .filter_map(|i| esp_suite(e, Some(i)))
                .collect(),
        };
        for s in cands {
            let m = mtu::inner_mtu(s, t.nat_t == NatT::Force, OuterFamily::V4);
            if best.is_none_or(|(b, _)| m > b) {
                best = Some((m, s));
            }
        }
    }
    best.map(|(_, s)| s)
        .unwrap_or_else(|| Suite::new(Encryption::Aes128Cbc, Integrity::Sha1_96).expect("valid"))
}

/// A working strongSwan `swanctl.conf` for the customer gateway of `t`.
pub fn strongswan(t: &Tunnel) -> String {
    let version = match t.ike_versions.as_slice() {
        [IkeVersion::V1] => 1,
        [IkeVersion::V2] => 2,
        _ => 0,
    };
    let cgw = t.peer_ip.map_or("%any".to_string(), |p| p.to_string());
    let aws = t.outside_ip;
    // IKEv1 has no AES-GCM for the IKE SA (validation keeps a CBC cipher for such tunnels).
    let p1_enc: Vec<String> = t
        .phase1_encryption
        .iter()
        .filter(|e| version != 1 || !Cipher::from_name(e).is_some_and(Cipher::is_aead))
        .cloned()
        .collect();
    let ike = proposals(&p1_enc, &t.phase1_integrity, &t.phase1_dh_groups, true);
    let esp = proposals(
        &t.phase2_encryption,
        &t.phase2_integrity,
        &t.phase2_dh_groups,
        false,
    );
    let dpd_action = match t.dpd_timeout_action {
        DpdAction::Clear => "clear",
        DpdAction::None => "none",
        DpdAction::Restart => "restart",
    };
    // The CGW rekeys a little earlier than AWS would (AWS: lifetime - margin - fuzz).
    let ike_rekey = t.phase1_lifetime_s.saturating_sub(t.rekey_margin_s).max(1);
    let child_rekey = t.phase2_lifetime_s.saturating_sub(t.rekey_margin_s).max(1);
    let name = t.name.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
        "_",
    );
    let encap = if t.nat_t == NatT::Force { "yes" } else { "no" };
    let (lts, rts) = (t.local_ipv4_network_cidr, t.remote_ipv4_network_cidr);
    format!(
        "# Customer-gateway side of tunnel {name:?} (connection {conn:?}), generated by espd export-config.
# AWS side: {aws} (inside {aws_in}); customer gateway: {cgw} (inside {cgw_in}).
connections {{
  {name} {{
    version = {version}
    local_addrs = {cgw}
    remote_addrs = {aws}
    proposals = {ike}
    rekey_time = {ike_rekey}s
    over_time = {margin}s
    encap = {encap}
    mobike = no
    dpd_delay = 10s
    dpd_timeout = {dpd}s
    local {{
      auth = psk
      id = {cgw}
    }}
    remote {{
      auth = psk
      id = {aws}
    }}
    children {{
      {name}-net {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        rekey_time = {child_rekey}s
        life_time = {p2}s
        replay_window = {replay}
        dpd_action = {dpd_action}
        start_action = start
      }}
    }}
  }}
}}
secrets {{
  ike-{name} {{
    id-1 = {cgw}
    id-2 = {aws}
    secret = \"{psk}\"
  }}
}}
",
        conn = t.connection,
        aws_in = t.tunnel_inside_cidr.host(1),
        cgw_in = t.tunnel_inside_cidr.host(2),
        margin = t.rekey_margin_s,
        dpd = t.dpd_timeout_s,
        p2 = t.phase2_lifetime_s,
        replay = t.replay_window_size,
        psk = t.pre_shared_key.as_str(),
    )
}

/// The vendor-neutral text: the facts a customer gateway needs, in the order of AWS's
/// generic configuration.
pub fn generic(t: &Tunnel) -> String {
    let s = best_suite(t);
    let nat = t.nat_t == NatT::Force;
    let m = mtu::inner_mtu(s, nat, OuterFamily::V4);
    let list = |v: &[String]| v.join(", ");
    let groups = |v: &[u16]| {
        v.iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "IPsec Tunnel {name} (connection {conn})

#1: Internet Key Exchange Configuration
  - IKE versions            : {ike:?}
  - Authentication method   : Pre-Shared Key
  - Pre-Shared Key          : {psk}
  - Encryption algorithms   : {e1}
  - Integrity algorithms    : {i1}
  - DH groups               : {g1}
  - Lifetime                : {p1} seconds
  - Mode                    : {mode}
  - DPD                     : every 10 seconds, peer dead after {dpd} seconds ({dpd_action:?})

#2: IPsec Configuration
  - Protocol                : esp, tunnel mode
  - Encryption algorithms   : {e2}
  - Integrity algorithms    : {i2}
  - Perfect Forward Secrecy : DH groups {g2}
  - Lifetime                : {p2} seconds
  - Rekey margin / fuzz     : {margin} seconds / {fuzz}%
  - Replay window           : {replay} packets
  - Fragment before encryption, clear DF (recommended)

#3: Tunnel Interface Configuration
  - Customer gateway outside address : {cgw}
  - AWS outside address              : {aws}
  - Customer gateway inside address  : {cgw_in}/30
  - AWS inside address               : {aws_in}/30
  - Local network (customer side)    : {lts}
  - Remote network (AWS side)        : {rts}
  - Tunnel interface MTU             : {m} bytes (for {s}{nat_s}; 1399 fits every transform)
  - TCP MSS adjustment               : {mss} bytes
{bgp}",
        name = t.name,
        conn = t.connection,
        ike = t.ike_versions,
        mode = match t.ike_versions.as_slice() {
            [IkeVersion::V1] => "IKEv1 main mode (aggressive mode is refused), quick mode with PFS",
            [IkeVersion::V2] => "IKEv2",
            _ => "IKEv2, or IKEv1 main mode (aggressive mode is refused) with quick mode and PFS",
        },
        psk = t.pre_shared_key.as_str(),
        e1 = list(&t.phase1_encryption),
        i1 = list(&t.phase1_integrity),
        g1 = groups(&t.phase1_dh_groups),
        p1 = t.phase1_lifetime_s,
        dpd = t.dpd_timeout_s,
        dpd_action = t.dpd_timeout_action,
        e2 = list(&t.phase2_encryption),
        i2 = list(&t.phase2_integrity),
        g2 = groups(&t.phase2_dh_groups),
        p2 = t.phase2_lifetime_s,
        margin = t.rekey_margin_s,
        fuzz = t.rekey_fuzz_pct,
        replay = t.replay_window_size,
        cgw = t.peer_ip.map_or("(any)".to_string(), |p| p.to_string()),
        aws = t.outside_ip,
        cgw_in = t.tunnel_inside_cidr.host(2),
        aws_in = t.tunnel_inside_cidr.host(1),
        lts = t.local_ipv4_network_cidr,
        rts = t.remote_ipv4_network_cidr,
        nat_s = if nat { " with NAT-T" } else { "" },
        mss = mtu::mss_ipv4(m),
        bgp = if t.routing == crate::config::Routing::Dynamic {
            format!(
                "
#4: Border Gateway Protocol (BGP) Configuration
  - Customer gateway ASN             : {cgw_asn}
  - Amazon-side ASN                  : {aws_asn}
  - Neighbor IP address              : {aws_in}
  - Hold time / keepalive            : 30 / 10 seconds
  - Prefixes AWS accepts at most     : 100 (more ends the session: Cease, maximum prefixes)
  - AWS announces                    : {adv} (MED 100)
  - Announce your networks to the neighbor; BIRD: espd export-config --peer bird
",
                cgw_asn = t.customer_gateway_asn,
                aws_asn = t.amazon_side_asn,
                aws_in = t.tunnel_inside_cidr.host(1),
                adv = if t.bgp_advertise.is_empty() {
                    "(nothing configured)".to_string()
                } else {
                    t.bgp_advertise
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            )
        } else {
            format!(
                "
#4: Static Routing Configuration
  - Routes into this connection      : {routes}
  - Your networks behind the tunnel  : {lts} (route {rts} into the tunnel interface)
",
                routes = if t.static_routes.is_empty() {
                    t.local_ipv4_network_cidr.to_string()
                } else {
                    t.static_routes
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                lts = t.local_ipv4_network_cidr,
                rts = t.remote_ipv4_network_cidr,
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IKEv1-only tunnel: `version = 1` and no AES-GCM among the IKE proposals (IKEv1 has
    /// none for its own messages), GCM kept for ESP; the generic text names main mode.
    #[test]
    fn ikev1_tunnel_exports_version_1_without_gcm_for_ike() {
        let text = "[[tunnel]]\nname = \"t1\"\nconnection = \"c\"\noutside_ip = \"192.0.2.1\"\npeer_ip = \"192.0.2.2\"\nike_versions = [\"ikev1\"]\npre_shared_key = \"lab.tunnel_one\"\n\n[[tunnel]]\nname = \"t2\"\nconnection = \"c\"\noutside_ip = \"192.0.2.1\"\npre_shared_key = \"lab.tunnel_two\"\n";
        let c = crate::config::parse(text, "t.toml", &mut |b: &mut [u8]| b.fill(7)).unwrap();
        let sw = strongswan(&c.tunnels[0]);
        assert!(sw.contains("version = 1"), "{sw}");
        let ike = sw
            .lines()
            .find(|l| l.trim().starts_with("proposals ="))
            .unwrap();
        assert!(!ike.contains("gcm"), "{ike}");
        let esp = sw
            .lines()
            .find(|l| l.trim().starts_with("esp_proposals ="))
            .unwrap();
        assert!(esp.contains("aes128gcm16"), "{esp}");
        assert!(generic(&c.tunnels[0]).contains("IKEv1 main mode (aggressive mode is refused)"));
        assert!(strongswan(&c.tunnels[1]).contains("version = 0"));
    }

    #[test]
    fn proposals_in_strongswan_syntax() {
        let e = vec!["AES128".to_string(), "AES256-GCM-16".to_string()];
        let i = vec!["SHA1".to_string(), "SHA2-256".to_string()];
        assert_eq!(
            proposals(&e, &i, &[2, 19], true),
            "aes128-sha1-sha256-modp1024-ecp256,aes256gcm16-prfsha1-prfsha256-modp1024-ecp256"
        );
        assert_eq!(
            proposals(&e, &i, &[14], false),
            "aes128-sha1-sha256-modp2048,aes256gcm16-modp2048"
        );
    }
}
