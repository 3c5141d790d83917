//! Least privilege for `espd run`: once the XDP programs are attached, the AF_XDP sockets
//! made and UDP 500/4500 (and the metrics port) bound, nothing the daemon still does needs
//! a capability (rekeys, reloads, neighbour dumps and the control socket work on what is
//! already open, or on files root owns), so every capability is dropped: effective,
//! permitted, inheritable, ambient and the bounding set, with `no_new_privs`, before any
//! other thread starts (capabilities are per thread on Linux).
//!
//! Contract: [`drop_all`] is called on the main thread before the worker, control and
//! metrics threads are spawned; it fails (and espd does not start) when the kernel refuses.
//! Files that hold or control keys: [`check_not_writable_by_others`] refuses a config or
//! key-export file that group or others may write.

use std::path::Path;

const PR_SET_NO_NEW_PRIVS: libc::c_int = 38;
const PR_CAPBSET_DROP: libc::c_int = 24;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability of the calling thread (and so of threads it starts later).
pub fn drop_all() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe { libc::prctl(PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above; clearing the ambient set may fail on old kernels, which is harmless.
    unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    for cap in 0..=last_cap() {
        // SAFETY: as above. Without CAP_SETPCAP (not root) this fails with EPERM: the
        // bounding set then stays, but capset below still empties what the thread holds.
        unsafe { libc::prctl(PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs of the version-3 layout, which
    // `hdr` and `data` are, both alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The calling thread's effective capabilities, from /proc (0 once dropped).
pub fn effective() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

/// Refuses a file that group or others may write (whoever can write a config or key file
/// controls the tunnels' keys). `what` names the file's role in the message.
pub fn check_not_writable_by_others(path: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(()); // a missing file is reported by whoever opens it
    };
    let mode = m.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {}: mode {:o} lets group or others write it, and whoever can write it controls the tunnels' keys; run chmod go-w {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_files_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("espd-privs-{}.toml", std::process::id()));
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_not_writable_by_others(&p, "config").is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_not_writable_by_others(&p, "config").unwrap_err();
        assert!(e.contains("mode 666") && e.contains("chmod go-w"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    /// In a thread of its own (capabilities are per thread): after the drop, none is left.
    #[test]
    fn drop_leaves_no_capability() {
        std::thread::spawn(|| {
            drop_all().unwrap();
            assert_eq!(effective(), Some(0));
            // Binding a privileged port now fails even as root.
            if let Ok(s) = std::fs::read_to_string("/proc/self/status")
                && s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            {
                assert!(std::net::UdpSocket::bind("127.0.0.1:999").is_err());
            }
        })
        .join()
        .unwrap();
    }
}
