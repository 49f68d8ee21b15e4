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
pub mod openstack;

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

// ---------------------------------------------------------------------------------------------
// Realiser harness (realise_* tests): a throwaway host namespace standing in for a daemon's
// namespace, a private state dir and bpffs, and a Realiser created inside that namespace whose
// objects are purged on drop, even on panic.

/// A directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A router on ifindex 1 (BPF TestRun runs skb programs on loopback) that SNATs `cidrs` to `gw`.
pub fn testrun_router(dp_id: u32, gw: [u8; 4], cidrs: &[&str]) -> router_ctl::datapath::RouterNat {
    router_ctl::datapath::RouterNat {
        dp_id,
        ifindex: 1,
        gateway_ip: gw.into(),
        enable_snat: true,
        internal_cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
    }
}

/// The datapath opened in `bpffs` (its own pins) with `router` configured.
pub fn open_datapath(
    bpffs: &Bpffs,
    nat: &router_ctl::config::NatConfig,
    router: &router_ctl::datapath::RouterNat,
) -> std::sync::Arc<router_ctl::datapath::Datapath> {
    let dp = router_ctl::datapath::Datapath::open(bpffs.path(), nat)
        .unwrap_or_else(|e| panic!("open datapath: {e:#}"));
    dp.configure_router(router).expect("configure router");
    dp
}

/// Map `name` pinned under the bpffs `bpffs` (current layout version), opened like any other
/// process would.
pub fn pinned_map(bpffs: &std::path::Path, name: &str) -> aya::maps::Map {
    let path = bpffs
        .join(format!("v{}", router_common::LAYOUT_VERSION))
        .join(name);
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("open pinned {}: {e}", path.display()));
    aya::maps::Map::from_map_data(data).expect("map")
}

/// The pinned SESSIONS map of datapath `dp`.
pub fn pinned_sessions(
    dp: &router_ctl::datapath::Datapath,
) -> aya::maps::HashMap<aya::maps::MapData, router_common::SessionKey, router_common::SessionValue>
{
    aya::maps::HashMap::try_from(pinned_map(dp.bpffs(), router_common::maps::SESSIONS))
        .expect("hash map")
}

/// A private bpffs mounted on a temp dir (`mount -t bpf bpf DIR`), unmounted on drop.
pub struct Bpffs {
    pub dir: TempDir,
}

impl Bpffs {
    pub fn new() -> Self {
        require_root();
        let dir = TempDir::new("bpffs");
        sh(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir.path));
        Self { dir }
    }
    pub fn path(&self) -> &std::path::Path {
        &self.dir.path
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir.path)
            .status();
    }
}

/// Runs `f` on a thread inside the named namespace `/run/netns/<name>` (one this test did not
/// necessarily create, e.g. a router namespace).
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

/// `ip -j -n <ns> <args>` parsed as JSON (an empty output is an empty array).
pub fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = sh(Command::new("ip").args(["-j", "-n", ns]).args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j output {text:?}: {e}"))
}

/// Whether `/run/netns/<name>` exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// A Realiser living in its own throwaway host namespace with a private state dir and bpffs.
/// Drop purges every object it created (router namespaces included), then removes the rest.
pub struct RealiserHost {
    pub realiser: Option<router_ctl::realise::Realiser>,
    pub host: Netns,
    pub state: TempDir,
    pub bpffs: Bpffs,
}

impl RealiserHost {
    /// `physical_networks`: (name, host interface) pairs for the config.
    pub fn new(physical_networks: &[(&str, &str)]) -> Self {
        let host = Netns::new("rh");
        let state = TempDir::new("rstate");
        let bpffs = Bpffs::new();
        let cfg = router_ctl::realise::RealiserConfig {
            state_dir: state.path.clone(),
            physical_networks: physical_networks
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let nat = router_ctl::config::NatConfig::default();
        let realiser = host.enter(|| {
            let dp = router_ctl::datapath::Datapath::open(bpffs.path(), &nat)
                .unwrap_or_else(|e| panic!("opening the datapath: {e:#}"));
            router_ctl::realise::Realiser::new(cfg, dp)
                .unwrap_or_else(|e| panic!("creating the realiser: {e:#}"))
        });
        Self {
            realiser: Some(realiser),
            host,
            state,
            bpffs,
        }
    }

    pub fn r(&self) -> &router_ctl::realise::Realiser {
        self.realiser
            .as_ref()
            .unwrap_or_else(|| panic!("realiser dropped"))
    }

    /// Runs `f` with the realiser on a thread inside the host namespace.
    pub fn call<T: Send>(&self, f: impl FnOnce(&router_ctl::realise::Realiser) -> T + Send) -> T {
        let r = self.r();
        self.host.enter(|| f(r))
    }

    /// Simulates a daemon restart: drops the realiser and its datapath without purging, then
    /// opens new ones on the same state dir and bpffs (pins and kernel objects stay).
    pub fn restart(&mut self, physical_networks: &[(&str, &str)]) {
        drop(self.realiser.take());
        let cfg = router_ctl::realise::RealiserConfig {
            state_dir: self.state.path.clone(),
            physical_networks: physical_networks
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let nat = router_ctl::config::NatConfig::default();
        let bpffs = self.bpffs.path().to_path_buf();
        let realiser = self.host.enter(|| {
            let dp = router_ctl::datapath::Datapath::open(&bpffs, &nat)
                .unwrap_or_else(|e| panic!("reopening the datapath: {e:#}"));
            router_ctl::realise::Realiser::new(cfg, dp)
                .unwrap_or_else(|e| panic!("recreating the realiser: {e:#}"))
        });
        self.realiser = Some(realiser);
    }

    /// Plugs `ns` into bridge `br` of the host namespace (see [`plug_into_bridge`]).
    pub fn plug(&self, ns: &Netns, br: &str, addr: &str) {
        plug_into_bridge(&self.host, ns, br, addr);
    }

    /// Files recorded under `<state>/owned/<kind>`.
    pub fn owned(&self, kind: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state.path.join("owned").join(kind))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for RealiserHost {
    fn drop(&mut self) {
        if let Some(r) = self.realiser.take() {
            let res = self.host.enter(|| r.purge());
            if let Err(e) = res {
                eprintln!("purge failed: {e:#}");
            }
            drop(r);
        }
        // Belt and braces: namespaces recorded but left behind by a failed purge.
        for name in self.owned("netns") {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Packet builder for the BPF TestRun tests (exact frames with checksums computed in full).
pub mod packet;

/// A network spec with a fresh unique id and no physical network.
pub fn network_spec(external: bool) -> router_ctl::model::spec::NetworkSpec {
    router_ctl::model::spec::NetworkSpec {
        id: unique("n"),
        physical_network: None,
        external,
    }
}

/// Plugs `ns` into bridge `br` of namespace `host`: a veth whose inner end is `eth0` in `ns`
/// with `addr` (CIDR notation), its outer end (a unique name) enslaved to `br`, both up.
pub fn plug_into_bridge(host: &Netns, ns: &Netns, br: &str, addr: &str) {
    let outer = unique("o");
    host.ip(&[
        "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    host.ip(&["link", "set", &outer, "master", br, "up"]);
    ns.ip(&["addr", "add", addr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

/// One tc filter as `tc -j filter show` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    /// Priority (`pref`).
    pub pref: u64,
    /// Handle, as tc prints it (`0x1`).
    pub handle: String,
    /// Name of the BPF program the filter runs.
    pub prog: String,
    /// Kernel id of that program (a new daemon's program has a new id).
    pub prog_id: u64,
}

/// The BPF filters on the `hook` ("ingress" or "egress") of `dev` in namespace `ns`
/// (`tc -j filter show`, run inside the namespace; no clsact qdisc is no filter).
pub fn tc_filters(ns: &Netns, dev: &str, hook: &str) -> Vec<TcFilter> {
    tc_filters_in(&ns.name, dev, hook)
}

/// `tc_filters` for a namespace this test did not create (named under /run/netns).
pub fn tc_filters_in(ns_name: &str, dev: &str, hook: &str) -> Vec<TcFilter> {
    let out = sh(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns_name}"))
        .args(["tc", "-j", "filter", "show", "dev", dev, hook]));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc -j output {text:?}: {e}"));
    v.as_array()
        .unwrap_or_else(|| panic!("tc -j output is not an array: {text}"))
        .iter()
        // tc prints one header entry per (pref, protocol) and one entry per filter, with options.
        .filter_map(|f| {
            let o = f.get("options")?;
            Some(TcFilter {
                pref: f["pref"].as_u64().unwrap_or_else(|| panic!("pref in {f}")),
                handle: o["handle"].as_str().unwrap_or_default().to_string(),
                prog: o["prog"]["name"].as_str().unwrap_or_default().to_string(),
                prog_id: o["prog"]["id"].as_u64().unwrap_or_default(),
            })
        })
        .collect()
}
