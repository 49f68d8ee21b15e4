//! Network namespaces the bench creates for itself, removed on drop (also after an error or
//! Ctrl-C), plus commands and threads inside them.
//!
//! Every namespace is named `xb<pid>-<tag>` so a later run can recognise and remove leftovers of
//! a bench that was killed hard (SIGKILL), and so nothing outside the bench is ever touched.

use std::{
    fs::File,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace the bench creates.
const PREFIX: &str = "xb";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT/SIGTERM so that the bench unwinds through its guards (which delete the
/// namespaces and stop the daemon) instead of dying with its topology still in place.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Fails once the user asked to stop; loops call it between steps.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, returning early with an error when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Runs a command; on failure the error carries its command line and output.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Removes namespaces left by earlier bench runs whose process is gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // Only `xb<digits>-<tag>`: the dash keeps names of other tools starting with "xb" out.
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("bench: removing stale namespace {name}");
        kill_pids(&name);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    sweep_stale_daemon_dirs();
}

/// Leftovers of a killed bench's daemons: their `qrouter-` namespaces (listed in the temp
/// directory's `routers` file as they were created), its bpffs mount and the directory.
fn sweep_stale_daemon_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `xbench-<pid>-<tag>` (one per daemon), or `xbench-<pid>` from older runs.
        let Some(pid) = name
            .strip_prefix("xbench-")
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("bench: removing leftovers of bench run {pid}");
        let dir = e.path();
        for id in std::fs::read_to_string(dir.join(ROUTERS_FILE))
            .unwrap_or_default()
            .lines()
        {
            let ns = format!("qrouter-{}", id.trim());
            if !id.trim().is_empty() && std::path::Path::new("/run/netns").join(&ns).exists() {
                kill_pids(&ns);
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        let _ = nix::mount::umount2(&dir.join("bpf"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// File in the daemon's temp directory listing the ids of the routers the bench created.
pub const ROUTERS_FILE: &str = "routers";

fn kill_pids(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid that lives in our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A named namespace deleted (with every process in it killed) on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// Creates `xb<pid>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        // A leftover of this very process (an earlier failed step) would make `add` fail.
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            kill_pids(&name);
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `program` inside the namespace (network namespace only: nsenter keeps mounts and bpffs).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args` with a hard time limit (coreutils `timeout`).
    pub fn run(&self, limit: Duration, program: &str, args: &[&str]) -> Result<Output> {
        let mut c = Command::new("timeout");
        c.arg(format!("{}", limit.as_secs().max(1)))
            .arg("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program)
            .args(args);
        sh(&mut c)
    }

    /// Starts a background process in the namespace, killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let child = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(ChildGuard(child))
    }

    /// Writes a sysctl of this namespace (`/proc/sys/net/...` resolves to the opener's netns).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.enter(move || {
            std::fs::write(&path, value.as_bytes()).with_context(|| format!("writing {path}"))
        })?
    }

    /// Runs `f` on a fresh thread that joined this namespace (setns is per thread); sockets
    /// created there belong to the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let h = self.spawn_thread(f)?;
        h.join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// Spawns a thread inside this namespace.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let name = self.name.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let h = std::thread::spawn(move || {
            let r = setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {name}"));
            let ok = r.is_ok();
            let _ = tx.send(r);
            if !ok {
                // The caller got the error through the channel and never joins this thread;
                // end it without running `f` (and without a panic message).
                std::panic::resume_unwind(Box::new(()));
            }
            f()
        });
        rx.recv().context("namespace thread vanished")??;
        Ok(h)
    }

    /// Interface counters (`rx_packets`) of `dev`, read through `ip -j -s link`.
    pub fn rx_packets(&self, dev: &str) -> Result<u64> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .with_context(|| format!("no rx counter for {dev} in {}", self.name))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        kill_pids(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth pair with `a` in `ns_a` and `b` in `ns_b`, created directly inside them (never in
/// the caller's namespace), both up.
pub fn veth(ns_a: &Ns, a: &str, ns_b: &Ns, b: &str) -> Result<()> {
    ns_a.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name,
    ])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}
