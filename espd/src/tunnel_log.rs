//! Per-tunnel activity logs in the AWS Site-to-Site VPN format (shared/spec/logs-metrics.md
//! section 1): `json` (one object per line, the later user guide's keys plus the connection
//! id and outside IP) or `text` (the user guide's field order, `details` last), written
//! immediately to a file or stdout. And the debug-only key export in Wireshark's `esp_sa`
//! format.
//!
//! Contract: records carry states and the AWS message text only; no field can hold a key or
//! a PSK. Key export happens only when asked for and is itself logged.

use engine::crypto::{Encryption, Integrity};
use engine::sa::SaConfig;
use std::io::Write;

/// IKE phase state as AWS logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseState {
    Established,
    Rekeying,
    Negotiating,
    Down,
}

impl PhaseState {
    pub fn name(self) -> &'static str {
        match self {
            PhaseState::Established => "Established",
            PhaseState::Rekeying => "Rekeying",
            PhaseState::Negotiating => "Negotiating",
            PhaseState::Down => "Down",
        }
    }
}

impl From<ike::session::Phase> for PhaseState {
    fn from(p: ike::session::Phase) -> Self {
        use ike::session::Phase;
        match p {
            Phase::Negotiating => PhaseState::Negotiating,
            Phase::Established => PhaseState::Established,
            Phase::Rekeying => PhaseState::Rekeying,
            Phase::Down => PhaseState::Down,
        }
    }
}

/// The `details` text of a record: a message of the AWS catalogue (section 2) byte for byte,
/// so that AWS log queries work unchanged; any other event prefixed `engine: ` (section 2.5)
/// so that it never collides with an AWS string, with `note` (e.g. the lab-lifetimes marker)
/// appended to engine events only.
pub fn details(text: &str, note: Option<&str>) -> String {
    const AWS: [&str; 4] = [
        "AWS tunnel ",
        "AWS: ",
        "No Proposal Match Found",
        "Peer is not responsive",
    ];
    if AWS.iter().any(|p| text.starts_with(p)) {
        return text.to_string();
    }
    match note {
        Some(n) => format!("engine: {text} {n}"),
        None => format!("engine: {text}"),
    }
}

/// Output format (`log_output_format`).
pub use crate::config::LogFormat;

/// One log record.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// Milliseconds since the UNIX epoch.
    pub epoch_ms: u64,
    pub vpn_connection_id: &'a str,
    pub tunnel_outside_ip: &'a str,
    pub dpd_enabled: bool,
    pub nat_t_detected: bool,
    pub phase1: PhaseState,
    pub phase2: PhaseState,
    pub details: &'a str,
}

/// `2024-12-01 13:20:00.123Z` (json `timestamp`) or `2024-12-01T13:20:00.123Z` (text).
pub fn timestamp(epoch_ms: u64, sep: char) -> String {
    let secs = epoch_ms / 1000;
    let ms = epoch_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}{sep}{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats one record.
pub fn format(r: &Record<'_>, f: LogFormat) -> String {
    match f {
        LogFormat::Json => serde_json::json!({
            "event_timestamp": r.epoch_ms,
            "timestamp": timestamp(r.epoch_ms, ' '),
            "vpn_connection_id": r.vpn_connection_id,
            "tunnel_outside_ip": r.tunnel_outside_ip,
            "dpd_enabled": r.dpd_enabled,
            "nat_t_detected": r.nat_t_detected,
            "ike_phase1_state": r.phase1.name(),
            "ike_phase2_state": r.phase2.name(),
            "details": r.details,
        })
        .to_string(),
        LogFormat::Text => format!(
            "{} {} {} dpd={} natt={} p1={} p2={} {}",
            timestamp(r.epoch_ms, 'T'),
            r.vpn_connection_id,
            r.tunnel_outside_ip,
            if r.dpd_enabled { "True" } else { "False" },
            if r.nat_t_detected { "True" } else { "False" },
            r.phase1.name(),
            r.phase2.name(),
            r.details
        ),
    }
}

/// A tunnel's log sink.
pub struct TunnelLog {
    out: Box<dyn Write + Send>,
    format: LogFormat,
}

impl std::fmt::Debug for TunnelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TunnelLog({:?})", self.format)
    }
}

impl TunnelLog {
    pub fn new(out: Box<dyn Write + Send>, format: LogFormat) -> Self {
        TunnelLog { out, format }
    }
    /// Opens `destination` for appending (`-` or `stdout`: standard output).
    pub fn open(destination: &str, format: LogFormat) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if destination == "-" || destination == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(destination)?,
            )
        };
        Ok(TunnelLog::new(out, format))
    }
    /// Writes one record now (AWS batches every 5 minutes; local readers should not wait).
    pub fn write(&mut self, r: &Record<'_>) -> std::io::Result<()> {
        let line = format(r, self.format);
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }
}

/// The Wireshark/tshark `esp_sa` UAT line of an SA (debug key export, off by default).
pub fn esp_sa_line(sa: &SaConfig) -> String {
    let fam = if sa.tunnel_src.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let enc = match sa.suite.enc {
        Encryption::Aes128Gcm16 | Encryption::Aes256Gcm16 => "AES-GCM with 16 octet ICV [RFC4106]",
        Encryption::Aes128Cbc | Encryption::Aes256Cbc => "AES-CBC [RFC3602]",
    };
    let auth = match sa.suite.integ {
        Integrity::None => "NULL",
        Integrity::Sha1_96 => "HMAC-SHA-1-96 [RFC2404]",
        Integrity::Sha256_128 => "HMAC-SHA-256-128 [RFC4868]",
        Integrity::Sha384_192 => "HMAC-SHA-384-192 [RFC4868]",
        Integrity::Sha512_256 => "HMAC-SHA-512-256 [RFC4868]",
    };
    let ik = if sa.int_key.is_empty() {
        String::new()
    } else {
        format!("0x{}", hex::encode(&*sa.int_key))
    };
    format!(
        "\"{fam}\",\"{}\",\"{}\",\"{:#010x}\",\"{enc}\",\"0x{}\",\"{auth}\",\"{ik}\"",
        sa.tunnel_src,
        sa.tunnel_dst,
        sa.spi,
        hex::encode(&*sa.enc_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record<'static> {
        Record {
            epoch_ms: 1_733_059_200_123,
            vpn_connection_id: "vpn-0a1b2c3d",
            tunnel_outside_ip: "198.51.100.10",
            dpd_enabled: true,
            nat_t_detected: false,
            phase1: PhaseState::Established,
            phase2: PhaseState::Rekeying,
            details: "AWS tunnel is sending request (id=7) for CREATE_CHILD_SA",
        }
    }

    #[test]
    fn json_format_matches_the_spec_example() {
        // shared/spec/logs-metrics.md section 1.3.
        let v: serde_json::Value = serde_json::from_str(&format(&rec(), LogFormat::Json)).unwrap();
        let want: serde_json::Value = serde_json::from_str(r#"{"event_timestamp":1733059200123,"timestamp":"2024-12-01 13:20:00.123Z","vpn_connection_id":"vpn-0a1b2c3d","tunnel_outside_ip":"198.51.100.10","dpd_enabled":true,"nat_t_detected":false,"ike_phase1_state":"Established","ike_phase2_state":"Rekeying","details":"AWS tunnel is sending request (id=7) for CREATE_CHILD_SA"}"#).unwrap();
        assert_eq!(v, want);
    }

    #[test]
    fn text_format_matches_the_spec_example() {
        assert_eq!(
            format(&rec(), LogFormat::Text),
            "2024-12-01T13:20:00.123Z vpn-0a1b2c3d 198.51.100.10 dpd=True natt=False p1=Established p2=Rekeying AWS tunnel is sending request (id=7) for CREATE_CHILD_SA"
        );
    }

    #[test]
    fn aws_messages_stay_byte_for_byte_and_engine_events_are_prefixed() {
        for aws in [
            "AWS tunnel DPD timed out after 3 retransmits",
            "AWS tunnel is sending request (id=7) for CREATE_CHILD_SA",
            "AWS: Traffic Selector: TS_UNACCEPTABLE: received from responder",
            "No Proposal Match Found. Notifying with \"No proposal chosen\"",
            "No Proposal Match Found by AWS",
            "Peer is not responsive - Declaring peer dead",
        ] {
            assert_eq!(details(aws, Some("[lab]")), aws);
        }
        assert_eq!(
            details("IKE SA rekeyed", Some("[lab]")),
            "engine: IKE SA rekeyed [lab]"
        );
        assert_eq!(details("tunnel DOWN", None), "engine: tunnel DOWN");
        assert_eq!(details("AWSome", None), "engine: AWSome");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0, 'T'), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_000, ' '), "2000-02-29 00:00:00.000Z");
        assert_eq!(
            timestamp(4_102_444_799_999, 'T'),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn writes_lines_immediately() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let b = Buf::default();
        let mut l = TunnelLog::new(Box::new(b.clone()), LogFormat::Text);
        l.write(&rec()).unwrap();
        l.write(&rec()).unwrap();
        assert_eq!(
            String::from_utf8(b.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            2
        );
    }
}
