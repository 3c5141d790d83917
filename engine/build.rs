//! Builds the Intel ipsec-mb shim when the library's header is installed (Debian
//! `libipsec-mb-dev`), and sets `cfg(espd_ipsec_mb)`. Without it the engine still builds and
//! uses the RustCrypto backend. `ESPD_NO_IPSEC_MB=1` forces the portable build.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(espd_ipsec_mb)");
    println!("cargo::rerun-if-changed=csrc/imb_shim.c");
    println!("cargo::rerun-if-env-changed=ESPD_NO_IPSEC_MB");
    println!("cargo::rerun-if-changed=/usr/include/intel-ipsec-mb.h");
    if std::env::var_os("ESPD_NO_IPSEC_MB").is_some_and(|v| v == "1") {
        println!("cargo::warning=ESPD_NO_IPSEC_MB=1: building without the ipsec-mb backend");
        return;
    }
    let header = [
        "/usr/include/intel-ipsec-mb.h",
        "/usr/local/include/intel-ipsec-mb.h",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    let Some(header) = header else {
        println!(
            "cargo::warning=intel-ipsec-mb.h not found (apt-get install libipsec-mb-dev): \
             building with the RustCrypto backend only"
        );
        return;
    };
    let inc = Path::new(header).parent().unwrap();
    cc::Build::new()
        .file("csrc/imb_shim.c")
        .include(inc)
        .opt_level(2)
        .warnings(true)
        .compile("espd_imb_shim");
    println!("cargo::rustc-link-lib=IPSec_MB");
    println!("cargo::rustc-cfg=espd_ipsec_mb");
}
