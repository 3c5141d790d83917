//! Sequence numbers of static SAs across restarts, written ahead to the state directory.
//!
//! Why: a static SA's keys outlive the process. With AES-GCM a (key, nonce) pair must never
//! repeat (RFC 4106 section 8: a repeat gives away the GHASH key, and with it forgeries), and
//! the ESP IV of our GCM SAs is the sequence number; with any cipher the peer's replay
//! window drops numbers it has already seen (RFC 4303 section 3.3.3). So an outbound SA must
//! never start again at its configured `seq`, and an inbound SA must not forget what it has
//! accepted.
//!
//! Contract: one small file per static SA, named by tunnel, direction and SPI, holding a
//! hash of the SA's identity and keys (never a key byte) and one number.
//! - Outbound: the number is the highest sequence number the SA may send. It is written
//!   (temporary file, fsync, rename, fsync of the directory) *before* the worker is allowed
//!   to use it, in steps of `step` numbers ahead; a crash skips at most `step` numbers and
//!   never repeats one. After a restart the SA starts after the stored mark.
//! - Inbound: the number is the highest sequence number accepted. It is written every
//!   second while it moves and at a clean shutdown; after a restart every number up to it
//!   counts as received (a crash can forget at most the last second of arrivals: that much
//!   recorded traffic could be replayed once, which the README states).
//!
//! A file whose hash does not match (new keys, another SA) is ignored and replaced.

use engine::sa::{Direction, SaConfig};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Default state directory (`[gateway] state_directory`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/espd";
/// Default write-ahead step of outbound marks (`[gateway] seq_persist_step`).
pub const DEFAULT_STEP: u64 = 1 << 22;

/// The state directory.
#[derive(Debug, Clone)]
pub struct SeqStore {
    dir: PathBuf,
    /// Numbers reserved ahead per write of an outbound mark.
    pub step: u64,
}

/// A hash of what makes two SAs the same sequence space: direction, SPI, suite, ESN and
/// keys. SHA-256 with a domain label; the keys cannot be recovered from it.
fn identity(cfg: &SaConfig) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"espd sequence state v1\0");
    h.update([cfg.direction as u8, cfg.esn as u8]);
    h.update(cfg.spi.to_be_bytes());
    h.update(cfg.suite.enc.name().as_bytes());
    h.update(cfg.suite.integ.name().as_bytes());
    h.update((cfg.enc_key.len() as u32).to_be_bytes());
    h.update(&*cfg.enc_key);
    h.update(&*cfg.int_key);
    hex::encode(h.finalize())
}

impl SeqStore {
    /// Opens (creating it, mode 0700) the state directory and checks that it can be written.
    pub fn open(dir: &Path, step: u64) -> Result<SeqStore, String> {
        use std::os::unix::fs::DirBuilderExt;
        let what = |e: std::io::Error| {
            format!(
                "state_directory {:?}: {e}; static SAs keep their sequence numbers there across restarts (set [gateway] state_directory to a writable directory)",
                dir.display()
            )
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(what)?;
        let probe = dir.join(".espd-write-test");
        std::fs::write(&probe, b"").map_err(what)?;
        let _ = std::fs::remove_file(&probe);
        Ok(SeqStore {
            dir: dir.to_path_buf(),
            step: step.max(1),
        })
    }

    fn path(&self, tunnel: &str, cfg: &SaConfig) -> PathBuf {
        let safe: String = tunnel
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = match cfg.direction {
            Direction::Out => "out",
            Direction::In => "in",
        };
        self.dir
            .join(format!("seq-{safe}-{dir}-{:08x}.state", cfg.spi))
    }

    /// The stored number of this SA, if the file is there and is for the same keys.
    pub fn load(&self, tunnel: &str, cfg: &SaConfig) -> Option<u64> {
        let text = std::fs::read_to_string(self.path(tunnel, cfg)).ok()?;
        let mut id = None;
        let mut mark = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("identity", v)) => id = Some(v.trim().to_string()),
                Some(("mark", v)) => mark = v.trim().parse::<u64>().ok(),
                _ => {}
            }
        }
        (id? == identity(cfg)).then_some(mark?)
    }

    /// Writes this SA's number durably (temporary file, fsync, rename, directory fsync).
    pub fn store(&self, tunnel: &str, cfg: &SaConfig, mark: u64) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(tunnel, cfg);
        let tmp = path.with_extension("tmp");
        let e = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(e)?;
        write!(
            f,
            "espd sequence state v1\nidentity {}\nmark {mark}\n",
            identity(cfg)
        )
        .map_err(e)?;
        f.sync_all().map_err(e)?;
        std::fs::rename(&tmp, &path).map_err(e)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The next outbound mark for an SA that will send from `next_seq`: `step` numbers
    /// ahead, never past the sequence space.
    pub fn next_mark(&self, next_seq: u64, esn: bool) -> u64 {
        let max = if esn { u64::MAX } else { u32::MAX as u64 };
        next_seq.saturating_add(self.step - 1).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::crypto::Suite;

    fn cfg(dir: Direction, key: u8) -> SaConfig {
        SaConfig::new(
            "t1-out",
            dir,
            0x1234,
            Suite::all()[0],
            vec![key; 20],
            vec![],
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
        )
    }

    #[test]
    fn marks_round_trip_only_for_the_same_keys_and_never_hold_a_key() {
        let d = std::env::temp_dir().join(format!("espd-seqstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = SeqStore::open(&d, 1000).unwrap();
        let out = cfg(Direction::Out, 7);
        assert_eq!(s.load("t1", &out), None);
        s.store("t1", &out, 5000).unwrap();
        assert_eq!(s.load("t1", &out), Some(5000));
        // Another key, another direction, another tunnel: not this SA's mark.
        assert_eq!(s.load("t1", &cfg(Direction::Out, 8)), None);
        assert_eq!(s.load("t1", &cfg(Direction::In, 7)), None);
        assert_eq!(s.load("t2", &out), None);
        let text = std::fs::read_to_string(s.path("t1", &out)).unwrap();
        assert!(!text.contains(&hex::encode(&*out.enc_key)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path("t1", &out))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert_eq!(s.next_mark(1, false), 1000);
        assert_eq!(s.next_mark(u32::MAX as u64 - 5, false), u32::MAX as u64);
        let _ = std::fs::remove_dir_all(&d);
    }
}
