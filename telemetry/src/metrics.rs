//! AWS-style tunnel metrics in the Prometheus text format (shared/spec/logs-metrics.md
//! section 4): `TunnelState` per tunnel and per connection (the mean of its tunnels),
//! `TunnelDataIn` (inner bytes after decryption) and `TunnelDataOut` (inner bytes before
//! encryption), packets, wire bytes and drops by reason; and a minimal HTTP endpoint.
//!
//! Contract: [`render`] is a pure function of the snapshot it is given; [`serve`] runs one
//! thread that answers `GET /metrics` on a local address by calling the snapshot function.

use engine::counters::{Counters, DropReason};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the Prometheus text exposition of these tunnels.
pub fn render(tunnels: &[TunnelSnapshot]) -> String {
    let mut o = String::new();
    let l = |t: &TunnelSnapshot| {
        format!(
            "vpn_id=\"{}\",tunnel_ip=\"{}\",tunnel=\"{}\"",
            esc(&t.vpn_id),
            esc(&t.tunnel_ip),
            esc(&t.name)
        )
    };
    let mut series = |name: &str, kind: &str, help: &str, f: &dyn Fn(&TunnelSnapshot) -> String| {
        head(&mut o, name, kind, help);
        for t in tunnels {
            let _ = writeln!(o, "{name}{{{}}} {}", l(t), f(t));
        }
    };
    series(
        "vpn_tunnel_state",
        "gauge",
        "AWS TunnelState: 1 = UP, 0 = DOWN.",
        &|t| (t.up as u8).to_string(),
    );
    series(
        "vpn_tunnel_data_in_bytes_total",
        "counter",
        "AWS TunnelDataIn: inner bytes received, after decryption.",
        &|t| t.inb.inner_bytes.to_string(),
    );
    series(
        "vpn_tunnel_data_out_bytes_total",
        "counter",
        "AWS TunnelDataOut: inner bytes sent, before encryption.",
        &|t| t.out.inner_bytes.to_string(),
    );
    series(
        "vpn_tunnel_packets_in_total",
        "counter",
        "Inner packets received from the tunnel.",
        &|t| t.inb.packets.to_string(),
    );
    series(
        "vpn_tunnel_packets_out_total",
        "counter",
        "Inner packets sent into the tunnel.",
        &|t| t.out.packets.to_string(),
    );
    series(
        "vpn_tunnel_wire_bytes_in_total",
        "counter",
        "Outer (ESP) bytes received.",
        &|t| t.inb.outer_bytes.to_string(),
    );
    series(
        "vpn_tunnel_wire_bytes_out_total",
        "counter",
        "Outer (ESP) bytes sent.",
        &|t| t.out.outer_bytes.to_string(),
    );
    series(
        "vpn_tunnel_nat_t_detected",
        "gauge",
        "AWS TunnelCGWNATTDetectionStatus.",
        &|t| (t.nat_t as u8).to_string(),
    );
    series(
        "vpn_tunnel_dpd_enabled",
        "gauge",
        "AWS TunnelDPDEnabled.",
        &|t| (t.dpd_enabled as u8).to_string(),
    );
    series(
        "vpn_tunnel_mss_clamped_total",
        "counter",
        "TCP SYNs whose MSS was lowered.",
        &|t| (t.out.mss_clamped + t.inb.mss_clamped).to_string(),
    );
    series(
        "vpn_tunnel_frag_before_encrypt_packets_total",
        "counter",
        "Inner packets fragmented before encryption.",
        &|t| t.out.frag_before_encrypt_packets.to_string(),
    );
    head(
        &mut o,
        "vpn_tunnel_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for t in tunnels {
        for r in DropReason::ALL {
            let n = t.out.dropped(*r) + t.inb.dropped(*r);
            if n > 0 {
                let _ = writeln!(
                    o,
                    "vpn_tunnel_drops_total{{{},reason=\"{}\"}} {n}",
                    l(t),
                    r.name()
                );
            }
        }
    }
    // IKE: phase states (one-hot), rekeys, collisions, DPD timeouts.
    let ike: Vec<(String, &IkeSnapshot)> = tunnels
        .iter()
        .filter_map(|t| Some((l(t), t.ike.as_ref()?)))
        .collect();
    if !ike.is_empty() {
        head(
            &mut o,
            "vpn_tunnel_ike_phase_state",
            "gauge",
            "IKE phase 1 / phase 2 state as the tunnel log reports it (one-hot).",
        );
        for (lab, k) in &ike {
            for (phase, cur) in [("1", k.phase1), ("2", k.phase2)] {
                for st in PHASE_STATES {
                    let _ = writeln!(
                        o,
                        "vpn_tunnel_ike_phase_state{{{lab},phase=\"{phase}\",state=\"{st}\"}} {}",
                        (st == cur) as u8
                    );
                }
            }
        }
        head(
            &mut o,
            "vpn_tunnel_rekeys_total",
            "counter",
            "Rekeys done, by phase and by who started them.",
        );
        for (lab, k) in &ike {
            for (p, phase) in ["1", "2"].iter().enumerate() {
                for (w, who) in ["local", "peer"].iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "vpn_tunnel_rekeys_total{{{lab},phase=\"{phase}\",initiator=\"{who}\"}} {}",
                        k.rekeys[p][w]
                    );
                }
            }
        }
        // One counter per tunnel: (name, help, extra labels and value).
        type One = (
            &'static str,
            &'static str,
            fn(&IkeSnapshot) -> (String, u64),
        );
        let ones: [One; 3] = [
            (
                "vpn_tunnel_rekey_collisions_total",
                "Simultaneous rekeys (CHILD_SA and IKE SA).",
                |k| (String::new(), k.collisions),
            ),
            (
                "vpn_tunnel_dpd_timeouts_total",
                "Peers declared dead by DPD, with the action applied.",
                |k| (format!(",action=\"{}\"", k.dpd_action), k.dpd_timeouts),
            ),
            (
                "vpn_tunnel_ike_messages_dropped_total",
                "IKE messages of the tunnel's IKE SAs dropped (bad ICV, malformed, unexpected).",
                |k| (String::new(), k.messages_dropped),
            ),
        ];
        for (name, help, value) in ones {
            head(&mut o, name, "counter", help);
            for (lab, k) in &ike {
                let (extra, v) = value(k);
                let _ = writeln!(o, "{name}{{{lab}{extra}}} {v}");
            }
        }
    }
    // Connection level: the mean of the tunnel states (0.5 = one of two tunnels up).
    let mut conns: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for t in tunnels {
        let e = conns.entry(&t.vpn_id).or_default();
        e.0 += t.up as u32;
        e.1 += 1;
    }
    head(
        &mut o,
        "vpn_connection_tunnel_state",
        "gauge",
        "AWS TunnelState per connection: mean of its tunnels.",
    );
    for (c, (up, n)) in conns {
        let _ = writeln!(
            o,
            "vpn_connection_tunnel_state{{vpn_id=\"{}\"}} {}",
            esc(c),
            up as f64 / n as f64
        );
    }
    o
}

/// A running metrics endpoint.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `GET /metrics` on `addr` (e.g. `127.0.0.1:9100`; port 0 picks one) with the text
/// `snapshot` returns; other paths get 404.
pub fn serve(
    addr: &str,
    snapshot: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<Server> {
    serve_on(TcpListener::bind(addr)?, snapshot)
}

/// [`serve`] on a listener bound already (`espd run` binds before it drops privileges).
pub fn serve_on(
    listener: TcpListener,
    snapshot: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let limits = crate::serve::Limits::default();
    let gate = Arc::new(crate::serve::Gate::default());
    let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            if st.load(Ordering::Relaxed) {
                break;
            }
            let Ok(c) = conn else { continue };
            // Each client on its own thread, bounded in number, size and time: a slow or
            // stuck client cannot delay a scrape.
            let snapshot = snapshot.clone();
            let end_of_head = |b: &[u8]| {
                b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n")
            };
            gate.serve(c, limits, end_of_head, move |mut c, req| {
                let (status, body) = if req.starts_with(b"GET /metrics") {
                    ("200 OK", snapshot())
                } else {
                    ("404 Not Found", "not found: try /metrics\n".to_string())
                };
                let _ = write!(
                    c,
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    })?;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

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
    fn serves_http() {
        let s = serve("127.0.0.1:0", Arc::new(|| "x 1\n".to_string())).unwrap();
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        std::io::Read::read_to_string(&mut c, &mut r).unwrap();
        assert!(
            r.starts_with("HTTP/1.0 200 OK") && r.ends_with("x 1\n"),
            "{r}"
        );
    }
}
