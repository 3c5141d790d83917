//! AWS-style tunnel metrics in the OpenMetrics / Prometheus text format, encoded by the
//! official client crate (`prometheus-client`) (shared/spec/logs-metrics.md section 4): `TunnelState` per tunnel and per connection (the mean of its tunnels),
//! `TunnelDataIn` (inner bytes after decryption) and `TunnelDataOut` (inner bytes before
//! encryption), packets, wire bytes and drops by reason. [`crate::http`] serves it.
//!
//! Contract: [`render`] is a pure function of the snapshot it is given.

use engine::counters::{Counters, DropReason};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// One tunnel's state and counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct TunnelSnapshot {
    pub vpn_id: String,
    pub tunnel_ip: String,
    pub name: String,
    pub up: bool,
    pub nat_t: bool,
    pub dpd_enabled: bool,
    /// Traffic sent into the tunnel (counted before encryption).
    pub out: Counters,
    /// Traffic received from the tunnel (counted after decryption).
    pub inb: Counters,
    /// IKE state and events (tunnels negotiated by IKE only).
    pub ike: Option<IkeSnapshot>,
    /// Dynamic routing: whether the tunnel's BGP session is Established.
    pub bgp_established: Option<bool>,
}

/// IKE state and events of one negotiated tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IkeSnapshot {
    /// Phase 1 / phase 2 states as the tunnel log names them (`Established`, ...).
    pub phase1: &'static str,
    pub phase2: &'static str,
    /// Rekeys done, by [phase 1, phase 2] and [started by us, started by the peer].
    pub rekeys: [[u64; 2]; 2],
    /// Rekey collisions (CHILD_SA and IKE SA, RFC 7296 section 2.8.1 / 2.8.2).
    pub collisions: u64,
    /// Peers declared dead by DPD, and the configured action applied.
    pub dpd_timeouts: u64,
    pub dpd_action: &'static str,
    /// IKE messages the tunnel's IKE SAs dropped (bad ICV, malformed, unexpected).
    pub messages_dropped: u64,
    /// The current IKE SA's SPIs (initiator's, responder's), for `show`; not a metric.
    pub spis: Option<(u64, u64)>,
}

/// The states `vpn_tunnel_ike_phase_state` reports, one-hot.
const PHASE_STATES: [&str; 4] = ["Established", "Rekeying", "Negotiating", "Down"];

/// A series' labels, in the order they are printed.
pub type Labels = Vec<(&'static str, String)>;

/// Label values escaped for the text format (the client crate writes them as given).
fn escaped(mut l: Labels) -> Labels {
    for (_, v) in &mut l {
        if v.contains(['\\', '"', '\n']) {
            *v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
        }
    }
    l
}

/// One scrape: metric families built from a snapshot and encoded by the official Prometheus
/// client (`prometheus-client`, OpenMetrics text). Counter names are given with their
/// `_total` suffix, as they appear in the output.
#[derive(Default)]
pub struct Exposition {
    reg: Registry,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exposition")
    }
}

impl Exposition {
    /// A counter family (`name` ends in `_total`).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let fam = Family::<Labels, Counter>::default();
        for (l, v) in samples {
            fam.get_or_create(&escaped(l)).inc_by(v);
        }
        let base = name.strip_suffix("_total").unwrap_or(name);
        // The client adds the final period of the help text itself.
        self.reg.register(base, help.trim_end_matches('.'), fam);
    }

    /// One counter without labels (`name` ends in `_total`).
    pub fn counter_one(&mut self, name: &str, help: &str, v: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.reg.register(base, help.trim_end_matches('.'), c);
    }

    /// A gauge family of whole numbers.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) {
        let fam = Family::<Labels, Gauge>::default();
        for (l, v) in samples {
            fam.get_or_create(&escaped(l)).set(v);
        }
        self.reg.register(name, help.trim_end_matches('.'), fam);
    }

    /// A gauge family of fractions.
    pub fn gauge_f64(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let fam = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (l, v) in samples {
            fam.get_or_create(&escaped(l)).set(v);
        }
        self.reg.register(name, help.trim_end_matches('.'), fam);
    }

    /// The OpenMetrics text of every family (ends with `# EOF`).
    pub fn text(&self) -> String {
        let mut o = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut o, &self.reg);
        o
    }
}

/// The labels every tunnel series carries.
fn tunnel_labels(t: &TunnelSnapshot) -> Labels {
    vec![
        ("vpn_id", t.vpn_id.clone()),
        ("tunnel_ip", t.tunnel_ip.clone()),
        ("tunnel", t.name.clone()),
    ]
}

fn with(mut l: Labels, extra: &[(&'static str, &str)]) -> Labels {
    l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    l
}

/// Adds the tunnel and connection families of these tunnels.
pub fn register(x: &mut Exposition, tunnels: &[TunnelSnapshot]) {
    let per = |f: &dyn Fn(&TunnelSnapshot) -> u64| -> Vec<(Labels, u64)> {
        tunnels.iter().map(|t| (tunnel_labels(t), f(t))).collect()
    };
    let flag = |f: &dyn Fn(&TunnelSnapshot) -> bool| -> Vec<(Labels, i64)> {
        tunnels
            .iter()
            .map(|t| (tunnel_labels(t), i64::from(f(t))))
            .collect()
    };
    x.gauge(
        "vpn_tunnel_state",
        "AWS TunnelState: 1 = UP, 0 = DOWN.",
        flag(&|t| t.up),
    );
    type Value<'a> = &'a dyn Fn(&TunnelSnapshot) -> u64;
    let counters: [(&str, &str, Value); 8] = [
        (
            "vpn_tunnel_data_in_bytes_total",
            "AWS TunnelDataIn: inner bytes received, after decryption.",
            &|t| t.inb.inner_bytes,
        ),
        (
            "vpn_tunnel_data_out_bytes_total",
            "AWS TunnelDataOut: inner bytes sent, before encryption.",
            &|t| t.out.inner_bytes,
        ),
        (
            "vpn_tunnel_packets_in_total",
            "Inner packets received from the tunnel.",
            &|t| t.inb.packets,
        ),
        (
            "vpn_tunnel_packets_out_total",
            "Inner packets sent into the tunnel.",
            &|t| t.out.packets,
        ),
        (
            "vpn_tunnel_wire_bytes_in_total",
            "Outer (ESP) bytes received.",
            &|t| t.inb.outer_bytes,
        ),
        (
            "vpn_tunnel_wire_bytes_out_total",
            "Outer (ESP) bytes sent.",
            &|t| t.out.outer_bytes,
        ),
        (
            "vpn_tunnel_mss_clamped_total",
            "TCP SYNs whose MSS was lowered.",
            &|t| t.out.mss_clamped + t.inb.mss_clamped,
        ),
        (
            "vpn_tunnel_frag_before_encrypt_packets_total",
            "Inner packets fragmented before encryption.",
            &|t| t.out.frag_before_encrypt_packets,
        ),
    ];
    for (name, help, f) in counters {
        x.counter(name, help, per(f));
    }
    x.gauge(
        "vpn_tunnel_nat_t_detected",
        "AWS TunnelCGWNATTDetectionStatus.",
        flag(&|t| t.nat_t),
    );
    x.gauge(
        "vpn_tunnel_dpd_enabled",
        "AWS TunnelDPDEnabled.",
        flag(&|t| t.dpd_enabled),
    );
    x.counter(
        "vpn_tunnel_drops_total",
        "Packets dropped, by reason.",
        tunnels.iter().flat_map(|t| {
            DropReason::ALL.iter().filter_map(move |r| {
                let n = t.out.dropped(*r) + t.inb.dropped(*r);
                (n > 0).then(|| (with(tunnel_labels(t), &[("reason", r.name())]), n))
            })
        }),
    );
    let bgp: Vec<(Labels, i64)> = tunnels
        .iter()
        .filter_map(|t| Some((tunnel_labels(t), i64::from(t.bgp_established?))))
        .collect();
    if !bgp.is_empty() {
        x.gauge(
            "vpn_tunnel_bgp_established",
            "Dynamic routing: 1 while the tunnel's BGP session is Established (then TunnelState follows it).",
            bgp,
        );
    }
    // IKE: phase states (one-hot), rekeys, collisions, DPD timeouts.
    let ike: Vec<(Labels, &IkeSnapshot)> = tunnels
        .iter()
        .filter_map(|t| Some((tunnel_labels(t), t.ike.as_ref()?)))
        .collect();
    if !ike.is_empty() {
        x.gauge(
            "vpn_tunnel_ike_phase_state",
            "IKE phase 1 / phase 2 state as the tunnel log reports it (one-hot).",
            ike.iter().flat_map(|(l, k)| {
                [("1", k.phase1), ("2", k.phase2)]
                    .into_iter()
                    .flat_map(move |(phase, cur)| {
                        PHASE_STATES.iter().map(move |st| {
                            (
                                with(l.clone(), &[("phase", phase), ("state", st)]),
                                i64::from(*st == cur),
                            )
                        })
                    })
            }),
        );
        x.counter(
            "vpn_tunnel_rekeys_total",
            "Rekeys done, by phase and by who started them.",
            ike.iter().flat_map(|(l, k)| {
                (0..2).flat_map(move |p| {
                    (0..2).map(move |w| {
                        (
                            with(
                                l.clone(),
                                &[
                                    ("phase", ["1", "2"][p]),
                                    ("initiator", ["local", "peer"][w]),
                                ],
                            ),
                            k.rekeys[p][w],
                        )
                    })
                })
            }),
        );
        x.counter(
            "vpn_tunnel_rekey_collisions_total",
            "Simultaneous rekeys (CHILD_SA and IKE SA).",
            ike.iter().map(|(l, k)| (l.clone(), k.collisions)),
        );
        x.counter(
            "vpn_tunnel_dpd_timeouts_total",
            "Peers declared dead by DPD, with the action applied.",
            ike.iter()
                .map(|(l, k)| (with(l.clone(), &[("action", k.dpd_action)]), k.dpd_timeouts)),
        );
        x.counter(
            "vpn_tunnel_ike_messages_dropped_total",
            "IKE messages of the tunnel's IKE SAs dropped (bad ICV, malformed, unexpected).",
            ike.iter().map(|(l, k)| (l.clone(), k.messages_dropped)),
        );
    }
    // Connection level: the mean of the tunnel states (0.5 = one of two tunnels up).
    let mut conns: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for t in tunnels {
        let e = conns.entry(&t.vpn_id).or_default();
        e.0 += t.up as u32;
        e.1 += 1;
    }
    x.gauge_f64(
        "vpn_connection_tunnel_state",
        "AWS TunnelState per connection: mean of its tunnels.",
        conns
            .into_iter()
            .map(|(c, (up, n))| (vec![("vpn_id", c.to_string())], up as f64 / n as f64)),
    );
}

/// Renders the exposition of these tunnels (OpenMetrics text, which Prometheus scrapes).
pub fn render(tunnels: &[TunnelSnapshot]) -> String {
    let mut x = Exposition::default();
    register(&mut x, tunnels);
    x.text()
}

pub use crate::http::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_state_is_the_mean_of_its_tunnels() {
        let mut a = TunnelSnapshot {
            vpn_id: "vpn-1".into(),
            tunnel_ip: "192.0.2.1".into(),
            name: "t1".into(),
            up: true,
            ..Default::default()
        };
        a.out.inner_bytes = 1234;
        a.inb.drops[DropReason::Replay as usize] = 2;
        let b = TunnelSnapshot {
            vpn_id: "vpn-1".into(),
            tunnel_ip: "192.0.2.5".into(),
            name: "t2".into(),
            up: false,
            ..Default::default()
        };
        let m = render(&[a, b]);
        assert!(
            m.contains("vpn_connection_tunnel_state{vpn_id=\"vpn-1\"} 0.5"),
            "{m}"
        );
        assert!(m.contains(
            "vpn_tunnel_state{vpn_id=\"vpn-1\",tunnel_ip=\"192.0.2.1\",tunnel=\"t1\"} 1"
        ));
        assert!(m.contains("vpn_tunnel_data_out_bytes_total{vpn_id=\"vpn-1\",tunnel_ip=\"192.0.2.1\",tunnel=\"t1\"} 1234"));
        assert!(m.contains("reason=\"replay\"} 2"));
        assert!(
            !m.contains("vpn_tunnel_ike_phase_state"),
            "static SAs: no IKE series"
        );
        // OpenMetrics framing from the client crate: one period per help text, counters
        // typed under their base name, and the final # EOF.
        assert!(m.contains("# HELP vpn_tunnel_state AWS TunnelState: 1 = UP, 0 = DOWN.\n"));
        assert!(
            m.contains("# TYPE vpn_tunnel_data_out_bytes counter\n"),
            "{m}"
        );
        assert!(m.ends_with("# EOF\n"), "{m}");
        assert!(!m.contains(".."), "{m}");
    }

    #[test]
    fn ike_series() {
        let t = TunnelSnapshot {
            vpn_id: "vpn-1".into(),
            tunnel_ip: "192.0.2.1".into(),
            name: "t1".into(),
            ike: Some(IkeSnapshot {
                phase1: "Established",
                phase2: "Rekeying",
                rekeys: [[1, 2], [3, 4]],
                collisions: 5,
                dpd_timeouts: 6,
                dpd_action: "restart",
                messages_dropped: 7,
                spis: None,
            }),
            ..Default::default()
        };
        let m = render(&[t]);
        let l = "vpn_id=\"vpn-1\",tunnel_ip=\"192.0.2.1\",tunnel=\"t1\"";
        for want in [
            format!("vpn_tunnel_ike_phase_state{{{l},phase=\"1\",state=\"Established\"}} 1"),
            format!("vpn_tunnel_ike_phase_state{{{l},phase=\"1\",state=\"Rekeying\"}} 0"),
            format!("vpn_tunnel_ike_phase_state{{{l},phase=\"2\",state=\"Rekeying\"}} 1"),
            format!("vpn_tunnel_ike_phase_state{{{l},phase=\"2\",state=\"Down\"}} 0"),
            format!("vpn_tunnel_rekeys_total{{{l},phase=\"1\",initiator=\"peer\"}} 2"),
            format!("vpn_tunnel_rekeys_total{{{l},phase=\"2\",initiator=\"local\"}} 3"),
            format!("vpn_tunnel_rekey_collisions_total{{{l}}} 5"),
            format!("vpn_tunnel_dpd_timeouts_total{{{l},action=\"restart\"}} 6"),
            format!("vpn_tunnel_ike_messages_dropped_total{{{l}}} 7"),
        ] {
            assert!(m.contains(&want), "{want}\n{m}");
        }
        assert_eq!(m.matches("vpn_tunnel_ike_phase_state{").count(), 8);
    }

    #[test]
    fn unlabelled_counter_has_no_braces() {
        let mut x = Exposition::default();
        x.counter_one("espd_things_total", "Things.", 24);
        let m = x.text();
        assert!(m.contains("\nespd_things_total 24\n"), "{m}");
    }

    #[test]
    fn label_values_are_escaped() {
        let t = TunnelSnapshot {
            vpn_id: "v\"1\\\n".into(),
            name: "t".into(),
            ..Default::default()
        };
        let m = render(&[t]);
        assert!(
            m.contains(r#"vpn_tunnel_state{vpn_id="v\"1\\\n",tunnel_ip="",tunnel="t"} 0"#),
            "{m}"
        );
    }
}
