//! Throwaway network namespaces and commands inside them, for the tests, the bench and the
//! demo. Each namespace is deleted on drop, every process in it killed first, even when its
//! owner panics or fails midway.
//!
//! Two flavours of every call: the plain one panics with the command and its output (tests
//! want a stack trace), the `try_` one returns an `anyhow::Result` (the bench and the demo
//! unwind through their guards and report). Topologies are built with iproute2; the product
//! itself never shells out.

use std::{
    ffi::OsStr,
    fs::File,
    io::Write as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
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

/// Runs a command; on failure the error carries its command line and output.
pub fn try_sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    try_sh(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ip <args>` in the caller's namespace (used only to create and move test devices).
pub fn ip(args: &[&str]) -> Output {
    sh(Command::new("ip").args(args))
}

/// `program` inside the named namespace `/run/netns/<name>` (network namespace only, via
/// nsenter, so the mount namespace and any bpffs stay shared; `ip netns exec` would remount
/// /sys and hide them).
pub fn netns_cmd(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{name}"))
        .arg("--")
        .arg(program);
    c
}

/// Whether `/run/netns/<name>` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Kills every process inside namespace `name`, then deletes it; quiet when it is gone.
pub fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: plain kill(2) of a process inside a namespace its caller owns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Runs `f` on a thread inside the named namespace `/run/netns/<name>`; an error when the
/// namespace cannot be entered or `f` panics.
pub fn try_enter_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
    })
}

/// Runs `f` on a thread inside the named namespace `/run/netns/<name>` (one the caller did
/// not necessarily create, e.g. a router namespace); a panic in `f` goes on in the caller.
pub fn enter_named<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A named network namespace (`/run/netns/<name>`) deleted on drop, with every process in it
/// killed first. A namespace made by someone else (the CLI's `port create --netns`) is adopted
/// by building the struct with its name.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace named `unique(prefix)` with `lo` up.
    pub fn new(prefix: &str) -> Self {
        require_root();
        Self::try_named(&unique(prefix)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Creates namespace `name` with `lo` up.
    pub fn try_named(name: &str) -> Result<Self> {
        try_sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes charge of namespace `name`, made (or to be made) by someone else, e.g. the CLI's
    /// `port create --netns`: it is removed on drop like one of ours.
    pub fn adopt(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    /// Keeps the namespace past this value (for a sandbox left running on purpose, removed
    /// later by name with [`remove_netns`]); returns its name.
    pub fn keep(self) -> String {
        let this = std::mem::ManuallyDrop::new(self);
        this.name.clone()
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A handle on this namespace for the daemon's own namespace workers (`in_netns`,
    /// `with_netlink`), as the realiser holds one per router.
    #[cfg(feature = "ctl")]
    pub fn handle(&self) -> router_ctl::net::NetnsHandle {
        router_ctl::net::NetnsHandle::open_named(&self.name)
            .unwrap_or_else(|e| panic!("opening namespace {}: {e:#}", self.name))
            .unwrap_or_else(|| panic!("namespace {} is gone", self.name))
    }

    /// `ip -n <ns> <args>`.
    pub fn try_ip(&self, args: &[&str]) -> Result<Output> {
        try_sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n <ns> <args>`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A veth pair `a`–`b` inside this namespace, both ends left down (a stand-in device the
    /// test hands to the code under test).
    pub fn veth_pair(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
    }

    /// A command that runs inside this namespace (see [`netns_cmd`]).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        netns_cmd(&self.name, program)
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

    /// Runs `program args` inside the namespace with a hard time limit (coreutils `timeout`).
    pub fn run_for(&self, limit: Duration, program: &str, args: &[&str]) -> Result<Output> {
        let mut c = Command::new("timeout");
        c.arg(format!("{}", limit.as_secs().max(1)))
            .arg("nsenter")
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program)
            .args(args);
        try_sh(&mut c)
    }

    /// Starts `program args` in the namespace with every stdio stream made by `io`.
    fn start(&self, program: &str, args: &[&str], io: fn() -> Stdio) -> Result<Child> {
        self.cmd(program)
            .args(args)
            .stdin(io())
            .stdout(io())
            .stderr(io())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))
    }

    /// Starts a background process in the namespace, killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        Ok(ChildGuard(self.start(program, args, Stdio::null)?))
    }

    /// Runs `program args` in the namespace with `input` on its standard input (rule sets for
    /// `iptables-restore`, `nft -f -`); an error with its stderr when it fails.
    pub fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> Result<()> {
        let mut child = self.start(program, args, Stdio::piped)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed in {}: {}\ninput:\n{input}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs `f` on a thread that entered this namespace (setns is per thread); use it for aya
    /// attachment and sockets that must live in the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        enter_named(&self.name, f)
    }

    /// `enter` that reports a failed setns or a panic in `f` as an error.
    pub fn try_enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        try_enter_named(&self.name, f)
    }

    /// Spawns a thread inside this namespace and returns once it is in (or failed to enter).
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

    /// Writes a sysctl of this namespace (`/proc/sys/net/...` resolves to the opener's netns).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.try_enter(|| std::fs::write(&path, value.as_bytes()))?
            .with_context(|| format!("writing {path} in {}", self.name))
    }

    /// Interface counters (`rx_packets`) of `dev`, read through `ip -j -s link`.
    pub fn rx_packets(&self, dev: &str) -> Result<u64> {
        let out = self.try_ip(&["-j", "-s", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .with_context(|| format!("no rx counter for {dev} in {}", self.name))
    }

    /// Whether device `dev` exists in this namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        self.try_ip(&["link", "show", dev]).is_ok()
    }

    /// Interface index of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        // /sys shows the mount's netns; ask from a thread inside the namespace instead.
        self.enter(|| {
            let name = std::ffi::CString::new(dev).unwrap_or_default();
            // SAFETY: valid NUL-terminated string.
            let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(idx != 0, "no device {dev} in {}", self.name);
            idx
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
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
pub fn try_veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    ns_a.try_ip(&[
        "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns_b.name,
    ])?;
    ns_a.try_ip(&["link", "set", a, "up"])?;
    ns_b.try_ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// `try_veth`, panicking on failure.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) {
    try_veth(ns_a, a, ns_b, b).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Plugs namespace `ns` into bridge `br` of namespace `host`: a veth whose inner end is `eth0`
/// in `ns` with `addr` (CIDR notation), its outer end `outer` enslaved to `br`, both up.
pub fn try_plug_into_bridge(host: &str, ns: &str, br: &str, outer: &str, addr: &str) -> Result<()> {
    let ip = |name: &str, args: &[&str]| try_sh(Command::new("ip").args(["-n", name]).args(args));
    ip(
        host,
        &[
            "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip(host, &["link", "set", outer, "master", br, "up"])?;
    ip(ns, &["addr", "add", addr, "dev", "eth0"])?;
    ip(ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Plugs `ns` into bridge `br` of `host` (see [`try_plug_into_bridge`]) under a unique outer
/// name, panicking on failure.
pub fn plug_into_bridge(host: &Netns, ns: &Netns, br: &str, addr: &str) {
    try_plug_into_bridge(&host.name, &ns.name, br, &unique("o"), addr)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Namespace `ns`'s neighbour entry for `ip` on `dev`: (link-layer address, first state word,
/// e.g. `REACHABLE`); None without one.
pub fn neighbour(ns: &str, dev: &str, ip: &str) -> Option<(String, String)> {
    let v = ip_json(ns, &["neigh", "show", "dev", dev]);
    v.as_array()?.iter().find_map(|n| {
        (n["dst"] == ip).then(|| {
            let word = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            let state = n["state"].as_array().and_then(|s| s.first());
            (
                word("lladdr"),
                state
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
    })
}

/// `ip -j -n <ns> <args>` parsed as JSON (an empty output is an empty array).
pub fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
    try_ip_json(ns, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ip_json` that returns `ip`'s failure (a device not made yet, say) instead of panicking.
pub fn try_ip_json(ns: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = try_sh(Command::new("ip").args(["-j", "-n", ns]).args(args))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).with_context(|| format!("ip -j output {text:?}"))
}
