//! Records the commit perf is built from (`perf ndr --json`'s machine.commit), when the
//! source is a git checkout; "unknown" otherwise.

fn main() {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        let c = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let dirty = std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        println!(
            "cargo:rustc-env=PERF_COMMIT={c}{}",
            if dirty { "-dirty" } else { "" }
        );
    }
    // Rebuilt when HEAD moves (a commit, a checkout).
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/index");
}
