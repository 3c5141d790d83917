//! The daemon's own diagnostics and its systemd hand-shake. Not the AWS tunnel logs: those
//! keep their own format and destinations ([`crate::tunnel_log`]).
//!
//! Contract: [`init`] installs a `tracing` subscriber writing to stderr, once per process:
//! text (one line per event) or JSON (one object per line), filtered by the level given or,
//! when set, by `ESPD_LOG` in `tracing_subscriber::EnvFilter` syntax (`info`,
//! `espd=debug,espd::ike_ctl=trace`). Under systemd (`JOURNAL_STREAM` set) text lines carry
//! no timestamp or colour: journald adds its own. [`notify`] speaks the `sd_notify` protocol
//! when `NOTIFY_SOCKET` is set and does nothing otherwise; it never fails the caller.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing_subscriber::EnvFilter;

/// How diagnostics are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: allowed: text, json")),
        }
    }
}

/// Installs the subscriber. `level` is the default filter (`error`, `warn`, `info`,
/// `debug`, `trace`), overridden by `ESPD_LOG`.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("ESPD_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("ESPD_LOG={v:?}: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(false);
    let r = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text if journald => b.without_time().with_ansi(false).try_init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
    r.map_err(|e| format!("diagnostics: {e}"))
}

/// A state change for the service manager.
#[derive(Clone, Copy, Debug)]
pub enum Notify<'a> {
    /// Start-up done: the gateway forwards (`READY=1`), with a status line.
    Ready(&'a str),
    /// A SIGHUP reload begins (`RELOADING=1`).
    Reloading,
    /// Shutting down (`STOPPING=1`).
    Stopping,
}

/// Tells systemd (`Type=notify`) about `n`; a no-op outside systemd.
pub fn notify(n: Notify) {
    use sd_notify::NotifyState as S;
    let r = match n {
        Notify::Ready(status) => sd_notify::notify(false, &[S::Ready, S::Status(status)]),
        Notify::Reloading => match S::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(false, &[S::Reloading, now]),
            Err(_) => sd_notify::notify(false, &[S::Reloading]),
        },
        Notify::Stopping => sd_notify::notify(false, &[S::Stopping]),
    };
    if let Err(e) = r {
        tracing::debug!("sd_notify: {e}");
    }
}
