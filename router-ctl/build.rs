//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is looked for at `$ROUTER_EBPF_OBJECT`, else at
//! `<target>/bpfel-unknown-none/release/router-nat`. When it is missing an empty stub is
//! embedded instead so that `cargo build`/`clippy`/`test` work without nightly or bpf-linker;
//! the daemon then refuses to start its datapath with a message saying how to build it.
#![expect(
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ROUTER_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("..").join("target"));
    let candidate = env::var_os("ROUTER_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir.join("bpfel-unknown-none/release/router-nat"));
    println!("cargo:rerun-if-changed={}", candidate.display());
    let dest = out.join("router-nat.o");
    match fs::read(&candidate) {
        Ok(bytes) => fs::write(&dest, bytes).expect("write embedded object"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found; embedding an empty stub (run `cargo xtask build-ebpf`)",
                candidate.display()
            );
            fs::write(&dest, []).expect("write stub object");
        }
    }
}
