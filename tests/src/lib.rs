//! The test kit: what the privileged tests, `cargo xtask bench` and `cargo xtask demo` share
//! to build and drive a router gateway on one machine: throwaway namespaces and commands in
//! them ([`netns`]), packet sockets ([`capture`]), a real daemon and its API client ([`daemon`]), exact packets
//! ([`packet`]), the usual topologies ([`topo`]), private bpffs mounts, tc filters and, with
//! the `ctl` feature, what needs `router-ctl` itself (the embedded object, datapaths for BPF
//! TestRun, the realiser harness). `ctl` is on by default; xtask leaves it off so that it
//! neither builds the daemon's library nor flips its build cache (the object it embeds).
//!
//! Every name carries the test process id so parallel runs never collide.

use std::process::Command;

pub mod capture;
pub mod daemon;
pub mod netns;
pub mod neutron;
pub mod openstack;
#[cfg(feature = "ctl")]
pub mod spec;
#[cfg(feature = "ctl")]
pub mod testrun;
#[cfg(feature = "ctl")]
pub mod topo;

pub use netns::{
    Netns, enter_named, ip, ip_json, neighbour, netns_exists, plug_into_bridge, require_root, sh,
    unique, veth,
};

#[cfg(feature = "ctl")]
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

#[cfg(feature = "ctl")]
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

#[cfg(feature = "ctl")]
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

#[cfg(feature = "ctl")]
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

#[cfg(feature = "ctl")]
/// A Realiser living in its own throwaway host namespace with a private state dir and bpffs.
/// Drop purges every object it created (router namespaces included), then removes the rest.
pub struct RealiserHost {
    pub realiser: Option<router_ctl::realise::Realiser>,
    pub host: Netns,
    pub state: TempDir,
    pub bpffs: Bpffs,
}

#[cfg(feature = "ctl")]
impl RealiserHost {
    /// `physical_networks`: (name, host interface) pairs for the config.
    pub fn new(physical_networks: &[(&str, &str)]) -> Self {
        Self::with_vxlan(physical_networks, None)
    }

    /// `new` with a VXLAN tunnel endpoint (`[vxlan]` of the agent's config).
    pub fn with_vxlan(
        physical_networks: &[(&str, &str)],
        vxlan: Option<router_ctl::config::VxlanConfig>,
    ) -> Self {
        let host = Netns::new("rh");
        let state = TempDir::new("rstate");
        let bpffs = Bpffs::new();
        let cfg = router_ctl::realise::RealiserConfig {
            state_dir: state.path.clone(),
            physical_networks: physical_networks
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            vxlan,
            announcements: router_ctl::net::arp::COUNT,
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

    /// Fresh local networks ([`network_spec`]), external or not as `external` says, applied in
    /// order: the networks most realiser tests start from.
    pub fn networks<const N: usize>(
        &self,
        external: [bool; N],
    ) -> [router_ctl::model::spec::NetworkSpec; N] {
        external.map(|e| {
            let n = network_spec(e);
            self.call(|r| r.apply_network(&n))
                .unwrap_or_else(|err| panic!("apply network {}: {err:#}", n.id));
            n
        })
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
            vxlan: None,
            announcements: router_ctl::net::arp::COUNT,
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

    /// The names the realiser has recorded as its own, of `kind` ("netns" or "link").
    pub fn owned(&self, kind: &str) -> Vec<String> {
        owned_names(&self.state.path, kind)
    }
}

/// The names recorded as its own by the daemon or realiser of `state_dir`, of `kind` ("netns"
/// or "link"), sorted.
#[cfg(feature = "ctl")]
pub fn owned_names(state_dir: &std::path::Path, kind: &str) -> Vec<String> {
    use router_ctl::net::owned::{Kind, Owned};
    let kind = match kind {
        "netns" => Kind::Netns,
        "link" => Kind::Link,
        other => panic!("no ownership records of kind {other}"),
    };
    let mut v = Owned::open(state_dir)
        .and_then(|o| o.names(kind))
        .expect("reading the ownership records");
    v.sort();
    v
}

#[cfg(feature = "ctl")]
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

#[cfg(feature = "ctl")]
/// A network spec with a fresh unique id and no physical network.
pub fn network_spec(external: bool) -> router_ctl::model::spec::NetworkSpec {
    router_ctl::model::spec::NetworkSpec {
        id: unique("n"),
        segment: router_ctl::model::spec::Segment::Local,
        external,
    }
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
