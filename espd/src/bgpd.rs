//! BIRD beside `espd run`, supervised (the default for `routing = "dynamic"`): espd writes
//! the BIRD configuration of [`crate::bird::gateway_conf`] into `<state_directory>/bird/`
//! (private), and starts `espd bird-supervise`, a small process of its own that keeps BIRD
//! running: it starts `bird -f`, restarts it a second after it dies (logged), and stops it
//! when espd stops or dies (`PR_SET_PDEATHSIG`). The supervisor is started while espd still
//! has its capabilities, so BIRD (port 179, kernel routes) keeps what it needs across
//! restarts while espd itself runs with none. [`BirdState`] reads the sessions' states from
//! BIRD's control socket (its text protocol, the one `birdc` speaks).
//!
//! With `[gateway] bird = "external"` espd starts nothing: the operator runs BIRD with the
//! configuration `espd export-config --bird` writes; espd still follows the routes BIRD
//! puts in the kernel table.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    child: std::process::Child,
    /// BIRD's control socket.
    pub ctl: PathBuf,
}

impl Supervisor {
    /// Writes `conf` into `dir` and starts the supervisor of `bird`.
    pub fn start(bird: &str, conf: &str, dir: &Path) -> Result<Supervisor, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("bird.conf");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // BIRD checks its configuration first: a clear error now, not a restart loop.
        let check = std::process::Command::new(bird)
            .args(["-p", "-c"])
            .arg(&path)
            .output()
            .map_err(|e| {
                format!("{bird}: {e} (routing = \"dynamic\" needs BIRD 2: install bird2, or set [gateway] bird = \"external\")")
            })?;
        if !check.status.success() {
            return Err(format!(
                "{bird} -p -c {}: {}",
                path.display(),
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let ctl = dir.join("bird.ctl");
        let exe = std::env::current_exe().map_err(|e| format!("espd's own path: {e}"))?;
        let child = std::process::Command::new(exe)
            .arg("bird-supervise")
            .args(["--bird", bird, "--conf"])
            .arg(&path)
            .arg("--ctl")
            .arg(&ctl)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the BIRD supervisor: {e}"))?;
        Ok(Supervisor { child, ctl })
    }

    /// Stops the supervisor (and with it BIRD).
    pub fn stop(&mut self) {
        // SAFETY: sends a signal to our own child by its pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `espd bird-supervise`: keeps `bird -f -c conf -s ctl` running until SIGTERM or until
/// the parent (espd) is gone.
pub fn supervise(bird: &str, conf: &Path, ctl: &Path) -> Result<(), String> {
    // SAFETY: prctl with plain integer arguments; asks for SIGTERM when the parent dies.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let parent = std::os::unix::process::parent_id();
    let term = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(s, term.clone()).map_err(|e| e.to_string())?;
    }
    let gone = || term.load(Ordering::Relaxed) || std::os::unix::process::parent_id() != parent;
    let mut starts = 0u64;
    while !gone() {
        starts += 1;
        let mut child = std::process::Command::new(bird)
            .arg("-f")
            .arg("-c")
            .arg(conf)
            .arg("-s")
            .arg(ctl)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{bird}: {e}"))?;
        let status = loop {
            if gone() {
                // SAFETY: a signal to our own child by its pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
                return Ok(());
            }
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(e.to_string()),
            }
        };
        eprintln!(
            "espd bird-supervise: BIRD exited ({status}) after start {starts}; restarting in 1 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// BIRD's protocol name (`aws_<tunnel>`).
    pub name: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// `Established`, `Active`, `Connect`, `Idle`, ... with BIRD's last error if any.
    pub info: String,
}

impl Session {
    pub fn established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

/// One request on BIRD's control socket (the text protocol `birdc` speaks): the reply's
/// lines as (code, text). Replies are "NNNN-text" (more follow) or "NNNN text" (the last);
/// a line starting with a space continues the previous code; 0001 is the greeting, 0000
/// the end.
fn request(ctl: &Path, cmd: &str) -> std::io::Result<Vec<(u16, String)>> {
    let mut s = UnixStream::connect(ctl)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = vec![];
    let (mut greeted, mut code) = (false, 0u16);
    for line in BufReader::new(s).lines() {
        let line = line?;
        let b = line.as_bytes();
        let text = if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) {
            code = line[..4].parse().unwrap_or(0);
            if code == 1 && !greeted {
                greeted = true;
                continue;
            }
            if code == 0 {
                break;
            }
            &line[5..]
        } else if let Some(rest) = line.strip_prefix(' ') {
            rest
        } else {
            &line[..]
        };
        out.push((code, text.to_string()));
    }
    Ok(out)
}

/// Asks BIRD's control socket `ctl` for its BGP sessions (`show protocols`).
pub fn sessions(ctl: &Path) -> std::io::Result<Vec<Session>> {
    Ok(parse_sessions(&request(ctl, "show protocols")?))
}

fn parse_sessions(lines: &[(u16, String)]) -> Vec<Session> {
    let mut out = vec![];
    for (_, text) in lines {
        let cols: Vec<&str> = text.split_whitespace().collect();
        // Name Proto Table State Since Info...
        if cols.len() >= 4 && cols[1] == "BGP" {
            // "Since" is one token (14:50:01.456) or two (2026-12-02 14:50:01).
            let k = if cols.len() > 5 && cols[4].contains('-') && cols[5].contains(':') {
                6
            } else {
                5
            };
            let info = cols.get(k..).map(|c| c.join(" ")).unwrap_or_default();
            out.push(Session {
                name: cols[0].to_string(),
                state: cols[3].to_string(),
                info,
            });
        }
    }
    out
}

/// One path BIRD learned over BGP: the prefix, the session (protocol) it came from, since
/// when, its AS path, and whether BIRD prefers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpPath {
    pub prefix: String,
    pub protocol: String,
    /// BIRD's time of the route (`timeformat route iso long`: "2026-12-02 18:40:02").
    pub since: String,
    /// The AS path, space-separated ASNs (empty for a path from an iBGP-less origin).
    pub as_path: String,
    pub best: bool,
}

/// Asks BIRD for the paths it learned over BGP (`show route where source = RTS_BGP all`).
pub fn routes(ctl: &Path) -> std::io::Result<Vec<BgpPath>> {
    Ok(parse_routes(&request(
        ctl,
        "show route where source = RTS_BGP all",
    )?))
}

fn parse_routes(lines: &[(u16, String)]) -> Vec<BgpPath> {
    let mut out: Vec<BgpPath> = vec![];
    let mut prefix = String::new();
    for (code, text) in lines {
        match code {
            // "10.99.0.0/24   unicast [aws_t1 2026-12-02 18:40:02] * (100) [AS65000i]", or
            // the same without the prefix for the next path of that prefix.
            1007 => {
                let Some(open) = text.find('[') else {
                    continue;
                };
                if !text.starts_with(char::is_whitespace) {
                    match text.split_whitespace().next() {
                        Some(p) if p.contains('/') => prefix = p.to_string(),
                        _ => continue,
                    }
                }
                let Some(close) = text[open..].find(']').map(|c| open + c) else {
                    continue;
                };
                let mut inner = text[open + 1..close].split_whitespace();
                let protocol = inner.next().unwrap_or_default().to_string();
                let since = inner.collect::<Vec<_>>().join(" ");
                out.push(BgpPath {
                    prefix: prefix.clone(),
                    protocol,
                    since,
                    as_path: String::new(),
                    best: text[close + 1..].trim_start().starts_with('*'),
                });
            }
            1012 => {
                if let (Some(p), Some(path)) =
                    (out.last_mut(), text.trim().strip_prefix("BGP.as_path:"))
                {
                    p.as_path = path.trim().to_string();
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as BIRD 2.0.12 writes it, split the way [`request`] splits it.
    fn lines(reply: &str) -> Vec<(u16, String)> {
        let mut code = 0;
        reply
            .lines()
            .filter_map(|l| {
                let b = l.as_bytes();
                if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) {
                    code = l[..4].parse().unwrap();
                    Some((code, l[5..].to_string()))
                } else {
                    l.strip_prefix(' ').map(|r| (code, r.to_string()))
                }
            })
            .collect()
    }

    #[test]
    fn bgp_paths_with_their_session_time_and_as_path() {
        let reply = "1007-Table master4:\n \
            10.99.0.0/24         unicast [aws_aws_t1 2026-12-02 18:44:54] * (100) [AS65000i]\n \
            \tvia 169.254.10.2 on espd1\n\
            1008-\tType: BGP univ\n\
            1012-\tBGP.origin: IGP\n \
            \tBGP.as_path: 65000\n \
            \tBGP.next_hop: 169.254.10.2\n\
            1007-                     unicast [aws_aws_t2 2026-12-02 18:45:01] (100) [AS65000i]\n \
            \tvia 169.254.11.2 on espd2\n\
            1012-\tBGP.as_path: 65000 65010\n\
            1007-10.98.0.0/24         unicast [aws_aws_t2 2026-12-02 18:45:01] * (100) [AS65010i]\n\
            1012-\tBGP.as_path: 65010\n";
        let r = parse_routes(&lines(reply));
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(
            r[0],
            BgpPath {
                prefix: "10.99.0.0/24".into(),
                protocol: "aws_aws_t1".into(),
                since: "2026-12-02 18:44:54".into(),
                as_path: "65000".into(),
                best: true,
            }
        );
        assert_eq!(
            (
                r[1].prefix.as_str(),
                r[1].protocol.as_str(),
                r[1].as_path.as_str(),
                r[1].best
            ),
            ("10.99.0.0/24", "aws_aws_t2", "65000 65010", false)
        );
        assert_eq!(
            (r[2].prefix.as_str(), r[2].as_path.as_str()),
            ("10.98.0.0/24", "65010")
        );
    }

    #[test]
    fn sessions_with_either_time_format() {
        let reply = "2002-Name       Proto      Table      State  Since         Info\n\
            1002-device1    Device     ---        up     2026-12-02 18:44:54  \n \
            aws_t1     BGP        ---        up     2026-12-02 18:44:58  Established   \n \
            aws_t2     BGP        ---        start  18:44:54.123  Active        Socket: Connection refused\n";
        let s = parse_sessions(&lines(reply));
        assert_eq!(s.len(), 2);
        assert!(s[0].established());
        assert_eq!(s[1].state, "start");
        assert_eq!(s[1].info, "Active Socket: Connection refused");
    }
}
