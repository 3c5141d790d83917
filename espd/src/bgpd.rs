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

/// Asks BIRD's control socket `ctl` for its BGP sessions (`show protocols`).
pub fn sessions(ctl: &Path) -> std::io::Result<Vec<Session>> {
    let mut s = UnixStream::connect(ctl)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"show protocols\n")?;
    let mut out = vec![];
    let mut greeted = false;
    for line in BufReader::new(s).lines() {
        let line = line?;
        // Replies are "NNNN-text" (more follow) or "NNNN text" (last); 0001 is the hello.
        let (code, rest) = line.split_at(line.len().min(5));
        if code.starts_with("0001") && !greeted {
            greeted = true;
            continue;
        }
        if code.starts_with("0000") {
            break;
        }
        let text = if code.len() == 5 && code.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
            rest
        } else {
            line.trim_start()
        };
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
    Ok(out)
}
