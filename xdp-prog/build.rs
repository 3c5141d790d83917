//! Compiles `src/bpf/steer.bpf.c` with clang and generates its libbpf-rs skeleton.
use libbpf_cargo::SkeletonBuilder;
use std::path::PathBuf;

fn main() {
    let src = "src/bpf/steer.bpf.c";
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("steer.skel.rs");
    // Debian keeps <asm/types.h> in the multiarch directory.
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    SkeletonBuilder::new()
        .source(src)
        .clang_args([format!("-I/usr/include/{arch}"), "-O2".to_string()])
        .build_and_generate(&out)
        .unwrap_or_else(|e| {
            panic!("building {src} (needs clang and libelf-dev: apt-get install clang libelf-dev): {e:#}")
        });
    println!("cargo:rerun-if-changed={src}");
}
