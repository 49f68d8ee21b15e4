//! `cargo xtask build-ebpf`: bootstraps the eBPF toolchain and builds the datapath object.
//!
//! Bootstrap is idempotent and quick when already done: nightly's `rust-src`, and a
//! `bpf-linker` built against the nightly toolchain's own libLLVM (no prebuilt download is
//! available on this machine kind). Names are derived from `rustc +nightly --print sysroot`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{run, workspace_root};

/// The toolchain the eBPF crate builds with (`-Z build-std` needs nightly).
const NIGHTLY: &str = "nightly";
/// bpf-linker release line matching the LLVM of the nightly toolchain (LLVM 22).
const BPF_LINKER_VERSION: &str = "^0.13";
/// Name of the datapath binary in `router-ebpf`.
pub const OBJECT_NAME: &str = "router-nat";

/// Path of the built object for `target_dir`.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir
        .join("bpfel-unknown-none/release")
        .join(OBJECT_NAME)
}

/// A `cargo` command with the variables that the outer cargo/rustup set for xtask removed, so
/// that `+nightly` and our flags take effect.
pub fn clean_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .context("running `rustc +nightly --print sysroot` (is rustup on PATH?)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is missing: `rustc +nightly` failed ({}). Install it with `rustup toolchain install nightly`",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("rust-src for nightly is required by -Z build-std; fix: `rustup component add rust-src --toolchain nightly`")
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The libLLVM shared object shipped in the nightly sysroot, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`, and its LLVM major version.
fn nightly_libllvm(sysroot: &Path) -> Result<(PathBuf, String)> {
    let lib = sysroot.join("lib");
    let mut found = None;
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest.split('.').next().unwrap_or_default().to_string();
            found = Some((lib.join(&name), major));
        }
    }
    found.with_context(|| {
        format!(
            "no libLLVM.so.* in {}: the nightly toolchain ships none, so bpf-linker cannot be built against it",
            lib.display()
        )
    })
}

fn bpf_linker_works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_bpf_linker(sysroot: &Path, target_dir: &Path) -> Result<PathBuf> {
    let bin = cargo_bin_dir().join("bpf-linker");
    if bpf_linker_works(&bin) {
        return Ok(bin);
    }
    let (libllvm, major) = nightly_libllvm(sysroot)?;
    // LLVM_PREFIX layout bpf-linker's build expects: <prefix>/lib/libLLVM.so (+ the versioned name).
    let prefix = target_dir.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let file_name = libllvm.file_name().context("libLLVM has a file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}); about a minute",
        libllvm.display()
    );
    let install = |locked: bool| {
        let mut cmd = clean_cargo();
        cmd.args([&format!("+{NIGHTLY}"), "install", "bpf-linker"]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args([
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
        run(&mut cmd)
    };
    if let Err(e) = install(true) {
        // --locked can fail if the published lock file predates a yanked crate; retry without.
        eprintln!("xtask: `cargo install --locked` failed ({e:#}); retrying without --locked");
        install(false).context(
            "building bpf-linker failed; it needs network access to crates.io and the nightly toolchain's libLLVM",
        )?;
    }
    if !bpf_linker_works(&bin) {
        bail!(
            "bpf-linker was installed at {} but does not run",
            bin.display()
        );
    }
    Ok(bin)
}

/// Ensures the toolchain, then builds `router-ebpf` in release for `bpfel-unknown-none`.
/// Returns the path of the object.
pub fn build(target_dir: &Path) -> Result<PathBuf> {
    let root = workspace_root();
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    let linker = ensure_bpf_linker(&sysroot, target_dir)?;
    let linker_dir = linker.parent().context("bpf-linker has a directory")?;
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = clean_cargo();
    cmd.current_dir(&root)
        .args([
            &format!("+{NIGHTLY}"),
            "build",
            "--package",
            "router-ebpf",
            "--bin",
            OBJECT_NAME,
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env("PATH", path)
        // BTF for the maps and programs (verifier messages with source lines, bpftool dumps).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        );
    run(&mut cmd).context("building router-ebpf failed")?;
    let obj = object_path(target_dir);
    if !obj.is_file() {
        bail!("the build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}
