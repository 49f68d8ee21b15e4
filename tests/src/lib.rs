//! Helpers for the privileged integration tests: root check, throwaway network namespaces that
//! are removed even when a test panics, commands inside them, and unique names.
//!
//! Tests use `ip` from iproute2 to build *their own* topology; the product itself never shells
//! out. Every name carries the test process id so parallel runs never collide.

use std::{
    fs::File,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

pub mod daemon;

use nix::sched::{CloneFlags, setns};

/// Panics with a clear message when not root: privileged tests never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (network namespaces, veth, eBPF); run `sudo -E cargo xtask test`"
        );
    }
}

/// A short name unique to this process and call: `<prefix><pid36><n>`, at most 15 bytes so it
/// also fits an interface name when `prefix` is at most 4 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!("{prefix}{}{}", base36(pid), base36(n))
}

fn base36(mut v: u32) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(D[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `ip <args>` in the root of this test's view (used only to create and move test devices).
pub fn ip(args: &[&str]) -> Output {
    sh(Command::new("ip").args(args))
}

/// A named network namespace (`/run/netns/<name>`) deleted on drop, with every process the
/// test started in it killed first.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `unique(prefix)` with `lo` up.
    pub fn new(prefix: &str) -> Self {
        require_root();
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside this namespace (network namespace only, via nsenter, so the
    /// mount namespace and any bpffs stay shared).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args` inside the namespace and returns its output, panicking on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        sh(self.cmd(program).args(args))
    }

    /// Runs `program args` inside the namespace and returns its output whatever the status.
    pub fn try_run(&self, program: &str, args: &[&str]) -> Output {
        self.cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"))
    }

    /// Runs `f` on a thread that entered this namespace (setns is per thread); use it for aya
    /// attachment and sockets that must live in the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Interface index of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let path = format!("/sys/class/net/{dev}/ifindex");
        // /sys shows the mount's netns; read it via a namespaced thread instead.
        self.enter(|| {
            let name = std::ffi::CString::new(dev).unwrap_or_default();
            // SAFETY: valid NUL-terminated string.
            let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(idx != 0, "no device {dev} ({path}) in {}", self.name);
            idx
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything left running in the namespace, then delete it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair `a`/`b` with `a` in `ns_a` and `b` in `ns_b`, both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) {
    ns_a.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name,
    ]);
    ns_a.ip(&["link", "set", a, "up"]);
    ns_b.ip(&["link", "set", b, "up"]);
}

/// Loads the real embedded datapath object (panics with the build hint when it is a stub).
pub fn load_object() -> aya::Ebpf {
    let obj = router_ctl::datapath::object().unwrap_or_else(|e| panic!("{e:#}"));
    aya::EbpfLoader::new()
        .load(obj)
        .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"))
}
