//! Project automation: `cargo xtask build-ebpf | test | demo | bench`.
mod bench;
mod demo;
mod demo_neutron;
mod ebpf;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test, demo and benchmark the router gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bootstrap nightly rust-src and bpf-linker if needed, then build the eBPF object.
    BuildEbpf,
    /// Build everything and run the whole suite (root required: the tests create namespaces).
    Test {
        /// Extra arguments for the test binaries: a test name filter such as a tier
        /// (`testrun::`, `e2e::`, `api::`, `realise::`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measure plain forwarding, iptables SNAT, nftables flowtable, the eBPF SNAT and its fast
    /// path side by side; writes target/bench/report.{md,json} and ratios.svg (root required).
    Bench(bench::BenchArgs),
    /// The README's first command: a router with a gateway, two VMs and an "internet" in
    /// throwaway namespaces, driven by `router-ctl` (root required).
    Demo(demo::DemoArgs),
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs a command, failing with its command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` must run as root: it creates network namespaces, veth pairs and loads eBPF programs (try `sudo -E cargo xtask {what}`)"
        );
    }
    Ok(())
}

/// Installs Debian packages whose commands are missing (tests and the demo build their
/// topology with iproute2 and probe it with ping; the bench adds its baselines).
pub fn ensure_commands(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    apt_install(&missing)
}

/// `apt-get install` of `packages`, with services kept from starting: MariaDB and RabbitMQ
/// must never run in the root namespace (the tests start private instances in a namespace of
/// their own), so a `policy-rc.d` that forbids starts is in place during the install unless
/// the machine has one already.
fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").arg("update").arg("-qq"))
        .with_context(|| format!("apt-get update failed (packages needed: {packages:?})"))?;
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask: no service starts during install\nexit 101\n",
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {packages:?} failed"));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// What the agent-mode tests and `demo --neutron` run: MariaDB and RabbitMQ from Debian
/// (started privately by the kit, never as services), Python with venv for neutron-server 29
/// and the `openstack` CLI (pip-installed under the target dir from the pinned requirements).
pub const NEUTRON_COMMANDS: &[(&str, &str)] = &[
    ("mariadbd", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("rabbitmq-server", "rabbitmq-server"),
    ("python3", "python3"),
    ("bridge", "iproute2"),
];

/// Installs what a neutron stack needs (Debian packages, then the venv).
pub fn ensure_neutron() -> Result<PathBuf> {
    ensure_commands(NEUTRON_COMMANDS)?;
    // Debian's python3 has venv only with python3-venv (ensurepip).
    let has_venv = Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_venv {
        apt_install(&["python3-venv"])?;
    }
    kit::neutron::venv::ensure()
}

/// Whether a test filter can select agent-mode tests (they need the neutron stack).
fn wants_neutron(args: &[String]) -> bool {
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|a| "agent::".contains(a.as_str()) || a.contains("agent"))
}

/// Commands the test suite and the demo run to build and probe their topology.
pub const TEST_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("hping3", "hping3"),
];

fn test(args: &[String]) -> Result<()> {
    require_root("test")?;
    ensure_commands(TEST_COMMANDS)?;
    let target = target_dir();
    let obj = ebpf::build(&target)?;
    let root = workspace_root();
    let cargo = |sub: &[&str]| {
        let mut c = ebpf::clean_cargo();
        c.current_dir(&root)
            .args(sub)
            .env("ROUTER_EBPF_OBJECT", &obj);
        c
    };
    // The daemon binary the integration tests start.
    run(&mut cargo(&["build", "--package", "router-ctl", "--bins"]))?;
    // Host unit tests (checksum math, port allocation, API validation...), in parallel.
    let mut unit = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "tests",
        "--exclude",
        "router-ebpf",
    ]);
    if !args.is_empty() {
        unit.arg("--").args(args);
    }
    run(&mut unit)?;
    // The agent tier runs against one neutron stack (MariaDB, RabbitMQ, neutron-server 29 in a
    // namespace of their own) started here for the whole run and stopped after it, even when
    // the tests fail; a test run on its own starts its own.
    let stack = if wants_neutron(args) {
        ensure_neutron()?;
        let t0 = std::time::Instant::now();
        let s = kit::neutron::Stack::start().context("starting the neutron stack")?;
        eprintln!("xtask: neutron stack up in {:?}", t0.elapsed());
        Some(s)
    } else {
        None
    };
    let mut privileged = cargo(&[
        "test",
        "--package",
        "tests",
        "--lib",
        "--test",
        "it",
        "--",
        "--test-threads=1",
    ]);
    privileged.args(args);
    if let Some(s) = &stack {
        privileged.env(kit::neutron::STACK_ENV, s.coordinates());
    }
    // Privileged tests: real object, namespaces, packets; one binary whose modules are the
    // tiers, so `args` may name a tier (`testrun::`). Serial: they share the kernel.
    // `--lib --test it`: no doc-test pass after the suite, so the run closes on its real count.
    let result = run(&mut privileged);
    drop(stack);
    result
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::BuildEbpf => {
            let obj = ebpf::build(&target_dir())?;
            println!("{}", obj.display());
            Ok(())
        }
        Cmd::Test { args } => test(&args),
        Cmd::Bench(args) => bench::run(&args, &target_dir(), &workspace_root()),
        Cmd::Demo(args) => demo::run_demo(args),
    }
}
