//! Userspace side of the eBPF datapath: the embedded object, loading with pinned maps,
//! attaching to gateway devices, per-router NAT configuration (see `router`), sessions,
//! counters, GC.
//!
//! One loaded object serves every router of a daemon: per-router state lives in maps keyed by
//! the router's `dp_id`, and the programs are attached to each router's gateway tap (and, for
//! routers with floating IPs or port forwardings, the internal-side one to its `qr-` taps) as
//! tc filters (see `filter`); the fast path runs on the router's own devices inside its
//! namespace (see `fast`).

mod arp;
mod batch;
pub mod bpffs;
pub mod census;
pub mod counts;
mod fast;
pub mod filter;
pub mod fip;
mod hints;
mod mapped;
mod mirror;
mod router;
pub mod sessions;
mod tc_netlink;
mod unlist;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions},
};
use router_common::{
    FragKey, FragValue, RouterConfig, RouterStats, SessionKey, SessionValue, globals, maps,
    programs, stats::GlobalCounter,
};

use crate::config::NatConfig;
use tc_netlink::TcSocket;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (empty when the
/// binary was built without it).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-nat.o"));

/// Returns the embedded object, or an error explaining how to build it.
pub fn object() -> Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this router-ctl binary was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild"
        );
    }
    Ok(EBPF_OBJECT)
}

pub use crate::model::SessionInfo;
pub use router::RouterNat;

/// What one GC pass did (`Datapath::gc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Sessions removed because they idled past their state's timeout.
    pub expired: usize,
    /// Sessions dropped early (not assured, or a TCP connection closing:
    /// `sessions::droppable_early`) because the table or their router's share of it was
    /// crowded.
    pub dropped_early: usize,
    /// Entries (sessions and aliases) left in the table.
    pub entries: usize,
}

/// The typed maps and the loaded programs, behind the `Datapath` mutex.
struct Inner {
    ebpf: Ebpf,
    /// `ROUTER_CONFIG` (gateway tap ifindex → config), with its userspace copy.
    config: mirror::Mirrored<u32, RouterConfig>,
    /// `INTERNAL_CIDRS`, with its userspace copy.
    cidrs: mirror::Cidrs,
    sessions: HashMap<MapData, SessionKey, SessionValue>,
    fragments: HashMap<MapData, FragKey, FragValue>,
    /// `ROUTER_STATS`: one per-CPU slot per router number, zeroed when the router goes.
    stats: PerCpuArray<MapData, RouterStats>,
    global: PerCpuArray<MapData, u64>,
    /// Floating IPs, port forwardings and internal taps (see `fip`).
    floating: fip::Maps,
    /// `FAST_IFS` (router-namespace ifindex → fast-path device), with its userspace copy.
    fast: mirror::FastIfs,
    /// Next candidate of `spare_ifindex`.
    fast_next: u32,
}

/// The loaded datapath of one daemon.
pub struct Datapath {
    nat: NatConfig,
    bpffs: PathBuf,
    inner: Mutex<Inner>,
    /// A second handle on the pinned SESSIONS map for the GC, so its walk over every entry
    /// (two syscalls each) does not hold `inner` and stall the API's datapath calls.
    gc_sessions: Mutex<HashMap<MapData, SessionKey, SessionValue>>,
    /// A second handle on the pinned GLOBAL_STATS, for the GC's once-a-second read of the
    /// creation counter, likewise without `inner`.
    gc_global: PerCpuArray<MapData, u64>,
    /// A handle on the pinned `ARP_PEERS` for the announcer (see `arp`).
    arp_peers: arp::ArpPeers,
    /// TCX links pinned by an older daemon, removed as filters take over their devices.
    legacy: bpffs::LegacyLinks,
    /// `ALIAS_HINTS`, mapped: the GC clears the slots no alias hashes to any more.
    hints: hints::AliasHints,
    /// `ROUTER_SESSIONS`, mapped: the entries each router holds, as the datapath counts them
    /// and the GC corrects them.
    counts: counts::RouterSessions,
    /// The table's size and the per-router cap, as loaded.
    limits: sessions::Limits,
    /// Whether a GC pass has moved every router's count to what its walk found. Until one
    /// has, a count may read 0 for a router that holds entries (after a crash, or an upgrade
    /// from a datapath that did not count), so a flush walks the table whatever it says.
    counts_repaired: AtomicBool,
}

// The daemon shares one `Arc<Datapath>` between its API tasks, the realiser and the GC loop.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Datapath>();
};

/// The hooks of the gateway tap: program, attach point, and its name in errors.
const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (programs::SNAT_OUT, TcAttachType::Ingress, "ingress"),
    (programs::SNAT_IN, TcAttachType::Egress, "egress"),
];

/// Programs of the router's internal side (`qr-` taps of routers with floating IPs or port
/// forwardings), same layout as `HOOKS`.
const INTERNAL_HOOKS: [(&str, TcAttachType, &str); 1] =
    [(programs::INTERNAL_IN, TcAttachType::Egress, "egress")];

/// The fast path, on the ingress of a router's `qr-`/`qg-` devices inside its namespace,
/// same layout as `HOOKS`.
const FAST_HOOKS: [(&str, TcAttachType, &str); 1] =
    [(programs::FAST_FWD, TcAttachType::Ingress, "ingress")];

/// Filters an earlier version attached that this one does not: removed on detach.
const LEGACY_HOOKS: [(&str, TcAttachType, &str); 1] =
    [(programs::INTERNAL_OUT, TcAttachType::Ingress, "ingress")];

/// Every map of the object, pinned by name (also what tests pin to play an older daemon).
pub const MAP_NAMES: [&str; 13] = [
    maps::INTERNAL_IFS,
    maps::FAST_IFS,
    maps::FLOATING_IPS,
    maps::PORT_FORWARDINGS,
    maps::ROUTER_CONFIG,
    maps::INTERNAL_CIDRS,
    maps::SESSIONS,
    maps::FRAGMENTS,
    maps::ROUTER_STATS,
    maps::GLOBAL_STATS,
    maps::ALIAS_HINTS,
    maps::ROUTER_SESSIONS,
    maps::ARP_PEERS,
];

/// Current CLOCK_MONOTONIC in ns: the clock of the datapath's `last_seen_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lifts RLIMIT_MEMLOCK for kernels that still charge BPF memory to it (< 5.11).
fn raise_memlock() {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Map `name` pinned in the version directory `dir`, as a second handle on a map the loaded
/// object holds (for work that must not wait for the datapath lock).
fn open_pinned(dir: &Path, name: &str) -> Result<aya::maps::Map> {
    let pin = dir.join(name);
    MapData::from_pin(&pin)
        .map_err(anyhow::Error::from)
        .and_then(|m| Ok(aya::maps::Map::from_map_data(m)?))
        .with_context(|| format!("opening {} a second time", pin.display()))
}

fn ifindex_of(dev: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(dev)
        .with_context(|| format!("no device {dev} in this network namespace"))
}

impl Datapath {
    /// Loads the embedded object with its maps pinned under `bpffs` (mounting a bpffs there if
    /// none is mounted), reusing pins left by a previous run of this daemon.
    pub fn open(bpffs: &Path, nat: &NatConfig) -> Result<Arc<Self>> {
        nat.validate()?;
        let obj = object()?;
        raise_memlock();
        bpffs::ensure_mounted(bpffs)?;
        let dir = bpffs::version_dir(bpffs);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let legacy = bpffs::LegacyLinks::scan(bpffs)?;
        for stale in bpffs::remove_stale_maps(bpffs)? {
            tracing::info!(
                "removed the map pins of an earlier layout in {}",
                stale.display()
            );
        }
        let carried = resize::take_if_resized(&dir.join(maps::SESSIONS), nat.max_sessions)?;
        let pins: Vec<(&str, PathBuf)> = MAP_NAMES.iter().map(|n| (*n, dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let quota = u64::from(nat.sessions_per_router());
        loader
            .map_max_entries(maps::SESSIONS, nat.max_sessions)
            .override_global(globals::MAX_SESSIONS_PER_ROUTER, &quota, true);
        let mut ebpf = loader
            .load(obj)
            .map_err(|e| anyhow!("loading the eBPF object: {e:#}"))?;
        for name in HOOKS
            .iter()
            .chain(INTERNAL_HOOKS.iter())
            .chain(FAST_HOOKS.iter())
            .map(|(name, _, _)| *name)
        {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a classifier"))?;
            prog.load()
                .map_err(|e| anyhow!("the verifier rejected {name}: {e:#}"))?;
        }
        let fast = mirror::FastIfs::new(take(&mut ebpf, maps::FAST_IFS)?)?;
        let alias_hints = ebpf
            .take_map(maps::ALIAS_HINTS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::ALIAS_HINTS))
            .and_then(hints::AliasHints::new)?;
        let counts = ebpf
            .take_map(maps::ROUTER_SESSIONS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", maps::ROUTER_SESSIONS))
            .and_then(counts::RouterSessions::new)?;
        let fast_next = Self::first_spare(&fast);
        let inner = Inner {
            config: mirror::Mirrored::new(take(&mut ebpf, maps::ROUTER_CONFIG)?)?,
            cidrs: mirror::Cidrs::new(take(&mut ebpf, maps::INTERNAL_CIDRS)?)?,
            sessions: take(&mut ebpf, maps::SESSIONS)?,
            fragments: take(&mut ebpf, maps::FRAGMENTS)?,
            stats: take(&mut ebpf, maps::ROUTER_STATS)?,
            global: take(&mut ebpf, maps::GLOBAL_STATS)?,
            floating: fip::Maps::take(&mut ebpf)?,
            fast,
            fast_next,
            ebpf,
        };
        let mut inner = inner;
        if let Some(entries) = carried {
            resize::put_back(&mut inner.sessions, entries, nat.max_sessions);
        }
        let gc_sessions = HashMap::try_from(open_pinned(&dir, maps::SESSIONS)?)?;
        let gc_global = PerCpuArray::try_from(open_pinned(&dir, maps::GLOBAL_STATS)?)?;
        let arp_peers = HashMap::try_from(open_pinned(&dir, maps::ARP_PEERS)?)?;
        Ok(Arc::new(Self {
            nat: nat.clone(),
            bpffs: bpffs.to_path_buf(),
            inner: Mutex::new(inner),
            gc_sessions: Mutex::new(gc_sessions),
            gc_global,
            arp_peers,
            legacy,
            hints: alias_hints,
            counts,
            limits: sessions::Limits::new(nat),
            counts_repaired: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain map handles behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The NAT settings this datapath was opened with.
    pub fn nat_config(&self) -> &NatConfig {
        &self.nat
    }

    /// Attaches the NAT programs to `dev` (a gateway tap in the calling thread's namespace,
    /// which must be the daemon's) as tc filters; idempotent. Returns the ifindex.
    ///
    /// A new tap's hooks are bound to a pair of the daemon namespace's shared tap blocks,
    /// which hold the filters (`filter`, "Shared blocks"): one `clsact` with its two
    /// bindings, and the filters are added once per pair, not per tap. A filter left by an
    /// earlier run is kept and atomically switched to the program loaded now; a tap of an
    /// earlier version keeps its own blocks and filters.
    pub fn attach(&self, dev: &str) -> Result<u32> {
        let ifindex = ifindex_of(dev)?;
        let mut inner = self.lock();
        let mut tc = TcSocket::open().context("opening a netlink socket for tc")?;
        let (ingress, egress) = filter::tap_blocks(ifindex);
        let bound = tc
            .add_qdisc_on_blocks(ifindex, ingress, Some(egress))
            .map_err(|e| anyhow!("adding the clsact qdisc to {dev}: {e}"))?;
        for (name, attach_type, hook) in &HOOKS {
            let block = match attach_type {
                TcAttachType::Egress => egress,
                _ => ingress,
            };
            let prog: &mut SchedClassifier = inner
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            if let Err(e) =
                filter::attach_bound(&mut tc, prog, name, dev, *attach_type, block, bound)
            {
                // No half-attached tap: a binding this call made goes (a block's filter
                // stays for the taps that share it).
                if bound {
                    let _ = tc.remove_ingress_qdisc(ifindex);
                }
                return Err(e.context(format!("attaching {name} to {dev} ({hook})")));
            }
        }
        // The filters run now: a TCX link an older daemon pinned for this device can go.
        self.legacy.remove_device(dev)?;
        Ok(ifindex)
    }

    /// Installs one filter per hook on `dev`; on error, removes the filters this call created
    /// (no half-attached device) and leaves replaced ones running the new program.
    fn attach_hooks(
        &self,
        inner: &mut Inner,
        dev: &str,
        hooks: &[(&str, TcAttachType, &str)],
    ) -> Result<()> {
        filter::ensure_clsact(dev)?;
        let mut created = Vec::new();
        for (name, attach_type, hook) in hooks {
            let prog: &mut SchedClassifier = inner
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?
                .try_into()?;
            match filter::attach(prog, dev, *attach_type) {
                Ok(true) => created.push((*name, *attach_type)),
                Ok(false) => {}
                Err(e) => {
                    for (name, t) in &created {
                        let _ = filter::detach(dev, *t, name);
                    }
                    return Err(e.context(format!("attaching {name} to {dev} ({hook})")));
                }
            }
        }
        // The filters run now: a TCX link an older daemon pinned for this device can go.
        self.legacy.remove_device(dev)
    }

    /// Detaches the programs from `dev` (a tap of the calling thread's namespace): removes
    /// its `clsact` qdisc, with the filters of its own blocks and its bindings to the shared
    /// tap blocks (whose filters stay for the other taps; a filter cannot be removed for one
    /// device only). A missing device or qdisc is success.
    pub fn detach(&self, dev: &str) -> Result<()> {
        let _guard = self.lock();
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(dev) {
            TcSocket::open()
                .and_then(|mut tc| tc.remove_ingress_qdisc(ifindex))
                .map_err(|e| anyhow!("removing the clsact qdisc of {dev}: {e}"))?;
        }
        self.legacy.remove_device(dev)
    }

    /// Detaches the internal-side programs (and those of earlier versions) from `dev`, the tap
    /// of a `qr-` device; a missing device or filter is success. One filter dump per hook.
    pub fn detach_internal(&self, dev: &str) -> Result<()> {
        let _guard = self.lock();
        if nix::net::if_::if_nametoindex(dev).is_ok() {
            for (name, attach_type, _) in INTERNAL_HOOKS.iter().chain(LEGACY_HOOKS.iter()) {
                filter::detach(dev, *attach_type, name)?;
            }
        }
        self.legacy.remove_device(dev)
    }

    /// Whether every hook of tap `ifindex` runs this datapath's filter (`internal`: the hooks
    /// of an interface tap, else of a gateway tap); `h`: a netlink handle in the daemon's
    /// namespace. Reconcile uses it to find filters removed from outside (e.g.
    /// `tc qdisc del dev tap… clsact`), which would let packets leave untranslated.
    pub async fn hooks_in_place(
        h: &rtnetlink::Handle,
        ifindex: u32,
        internal: bool,
    ) -> Result<bool> {
        let hooks: &[(&str, TcAttachType, &str)] = if internal { &INTERNAL_HOOKS } else { &HOOKS };
        for (name, attach_type, _) in hooks {
            if !filter::in_place(h, ifindex, *attach_type, name).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Entries of the session table router `dp_id` holds (sessions and forward aliases), as
    /// counted against `[nat] max_sessions_per_router`.
    pub fn session_count(&self, dp_id: u32) -> u64 {
        self.counts.get(dp_id)
    }

    /// The table's size and the per-router cap this datapath was loaded with.
    pub fn limits(&self) -> sessions::Limits {
        self.limits
    }

    /// The router's sessions.
    pub fn sessions(&self, dp_id: u32) -> Result<Vec<SessionInfo>> {
        let inner = self.lock();
        let entries = read_sessions(&inner)?;
        Ok(sessions::join(&entries, dp_id, monotonic_ns()))
    }

    /// The router's counters summed over CPUs, by `router_common::stats::Counter` name.
    pub fn stats(&self, dp_id: u32) -> Result<BTreeMap<String, u64>> {
        let inner = self.lock();
        let per_cpu = inner
            .stats
            .get(&dp_id, 0)
            .with_context(|| format!("reading the counters of router number {dp_id}"))?;
        let mut sums = RouterStats::default();
        for s in per_cpu.iter() {
            sums.add(s);
        }
        Ok(sums.named().map(|(n, v)| (n.to_string(), v)).collect())
    }

    /// Counters not tied to a router summed over CPUs, by `router_common::stats::GlobalCounter`
    /// name.
    pub fn global_stats(&self) -> Result<BTreeMap<String, u64>> {
        let inner = self.lock();
        GlobalCounter::ALL
            .iter()
            .map(|c| Ok((c.name().to_string(), global_sum(&inner.global, *c)?)))
            .collect()
    }

    /// Sessions created so far, all routers, summed over CPUs
    /// (`GlobalCounter::SessionsCreated`): with the entries a GC pass left, an estimate of the
    /// table's fill between passes.
    pub fn sessions_created(&self) -> Result<u64> {
        global_sum(&self.gc_global, GlobalCounter::SessionsCreated)
    }

    /// What the GC's pace goes by (`sessions::GcPace`): the creation and refusal counters and
    /// whether some router holds its crowded share of entries. A few map reads and a scan of
    /// the mapped per-router counts; no walk of the table.
    pub fn pressure(&self) -> Result<sessions::Pressure> {
        let high = self.limits.router_high() as u64;
        Ok(sessions::Pressure {
            created: self.sessions_created()?,
            refused: global_sum(&self.gc_global, GlobalCounter::SessionsRefused)?,
            router_crowded: self
                .counts
                .all()
                .iter()
                .any(|n| *n >= high && *n < u64::MAX / 2),
        })
    }

    /// One GC pass: expires idle sessions by the configured timeouts and, when the table or a
    /// router's share of it is crowded, drops sessions that are not assured early
    /// (`sessions::early_drop`); then moves each router's entry count to what the pass found
    /// (`counts::correction`).
    ///
    /// Uses its own handle on the map, not the datapath lock: API calls proceed meanwhile
    /// (a session flushed or re-created concurrently is at worst removed once more, and a
    /// flow whose session went is given one again by its next outbound packet).
    pub fn gc(&self) -> Result<GcReport> {
        let map = self.gc_sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the snapshot: see `hints` and `counts`.
        let hinted = self.hints.set_slots();
        let counted = self.counts.all();
        let entries = read_session_map(&map)?;
        let mut doomed = sessions::expired(&entries, &self.nat, monotonic_ns());
        let expired = doomed
            .iter()
            .filter(|k| k.dir == router_common::DIR_IN)
            .count();
        let early = sessions::early_drop(&entries, &doomed, &self.limits);
        let dropped_early = early
            .iter()
            .filter(|k| k.dir == router_common::DIR_IN)
            .count();
        doomed.extend(early);
        let removed = batch::delete_all(IterableMap::map(&*map), &doomed)
            .context("deleting sessions (BPF_MAP_DELETE_BATCH)")?;
        self.hints
            .clear_unused(&hinted, &sessions::alias_slots(&entries, &doomed));
        self.correct_counts(&counted, &entries, &doomed);
        self.counts_repaired.store(true, Ordering::Release);
        Ok(GcReport {
            expired,
            dropped_early,
            entries: entries.len().saturating_sub(removed),
        })
    }

    /// Moves each router's count of entries (read as `counted` before the walk) to what the
    /// walk found (`entries`) less what the pass deleted (`doomed`).
    fn correct_counts(
        &self,
        counted: &[u64],
        entries: &StdHashMap<SessionKey, SessionValue>,
        doomed: &[SessionKey],
    ) {
        let mut found = vec![0u64; counted.len()];
        let mut deleted = vec![0u64; counted.len()];
        for k in entries.keys() {
            if let Some(n) = found.get_mut(usize::from(k.router_id)) {
                *n += 1;
            }
        }
        for k in doomed {
            if let Some(n) = deleted.get_mut(usize::from(k.router_id)) {
                *n += 1;
            }
        }
        for (r, before) in counted.iter().enumerate() {
            let d = counts::correction(*before, found[r], deleted[r]);
            if d != 0 {
                self.counts.add(r as u32, d);
            }
        }
    }

    /// Runs `program` once on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN and returns
    /// its verdict and the frame it left. The kernel runs it with loopback (ifindex 1) as the
    /// device, so a router configured on ifindex 1 is the one exercised. For tests and
    /// diagnostics; it touches the live maps.
    pub fn test_run(&self, program: &str, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.test_run_on(program, packet, 0)
    }

    /// `test_run` with the packet on device `ifindex` of the calling thread's namespace
    /// (0: loopback): the kernel takes the device from the context's `ifindex`, which is what
    /// `fast_fwd`'s FIB lookup and `FAST_IFS` entry go by.
    pub fn test_run_on(
        &self,
        program: &str,
        packet: &[u8],
        ifindex: u32,
    ) -> Result<(u32, Vec<u8>)> {
        // `struct __sk_buff` up to and including `ifindex` (offset 40); the kernel takes a
        // shorter context and requires every field it does not accept to be zero.
        const SKB_IFINDEX: usize = 40;
        let mut ctx = [0u8; SKB_IFINDEX + 4];
        ctx[SKB_IFINDEX..].copy_from_slice(&ifindex.to_ne_bytes());
        let mut inner = self.lock();
        let prog: &mut SchedClassifier = inner
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing"))?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        if ifindex != 0 {
            opts.ctx_in = Some(&ctx);
        }
        let res = prog.test_run(opts)?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Removes every pin of this datapath (maps, and TCX links of an older daemon) from the
    /// bpffs: the maps go away once this process and the filters still attached drop them. For
    /// uninstall and test cleanup (filters go with their devices, or with `detach`).
    pub fn purge(&self) -> Result<()> {
        let _guard = self.lock();
        bpffs::purge(&self.bpffs)
    }

    /// Devices still carrying a TCX link pinned by an older daemon (not yet taken over).
    /// The `ALIAS_HINTS` count of a SNAT flow's remote endpoint (`router_common::nat::alias_hint_slot`).
    pub fn alias_hint(&self, slot: u32) -> u64 {
        self.hints.get(slot)
    }

    pub fn legacy_links(&self) -> Vec<String> {
        self.legacy.devices()
    }

    /// The bpffs directory the pins live under.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }
}

/// Map deletes where "already gone" (e.g. removed by the GC meanwhile) is success.
fn remove_missing_ok(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn read_sessions(inner: &Inner) -> Result<StdHashMap<SessionKey, SessionValue>> {
    read_session_map(&inner.sessions)
}

fn read_session_map(
    map: &HashMap<MapData, SessionKey, SessionValue>,
) -> Result<StdHashMap<SessionKey, SessionValue>> {
    let entries = batch::read_all::<SessionKey, SessionValue>(IterableMap::map(map))
        .context("reading the session table (BPF_MAP_LOOKUP_BATCH)")?;
    Ok(entries.into_iter().collect())
}

/// `counter` of `GLOBAL_STATS` summed over CPUs (wrapping, as the datapath counts).
fn global_sum(map: &PerCpuArray<MapData, u64>, counter: GlobalCounter) -> Result<u64> {
    let per_cpu = map
        .get(&counter.key(), 0)
        .with_context(|| format!("reading the global counter {}", counter.name()))?;
    Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
}

/// A session table pinned by an earlier run with another `[nat] max_sessions`: aya would
/// reuse the pin whatever its size, so the table is carried over into a new one instead.
mod resize {
    use std::path::Path;

    use anyhow::{Context as _, Result};
    use aya::maps::{HashMap, MapData};
    use router_common::{SessionKey, SessionValue};

    /// The entries of the table pinned at `pin` if its size is not `want`, with the pin
    /// removed so the loader creates a table of the configured size; `None` when there is no
    /// pin or it has that size already (its sessions are simply kept).
    ///
    /// Programs of the earlier run keep translating with the old table until the realiser
    /// replaces them: sessions they create meanwhile are lost, and their flows get a session
    /// again from their next outbound packet.
    pub fn take_if_resized(
        pin: &Path,
        want: u32,
    ) -> Result<Option<Vec<(SessionKey, SessionValue)>>> {
        if !pin.exists() {
            return Ok(None);
        }
        let old = MapData::from_pin(pin)
            .with_context(|| format!("opening the pinned session table {}", pin.display()))?;
        let had = old.info()?.max_entries();
        if had == want {
            return Ok(None);
        }
        let entries = super::batch::read_all::<SessionKey, SessionValue>(&old)
            .context("reading the pinned session table (BPF_MAP_LOOKUP_BATCH)")?;
        std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
        tracing::info!(
            from = had,
            to = want,
            sessions = entries.len(),
            "[nat] max_sessions changed: carrying the session table over into one of the new size"
        );
        Ok(Some(entries))
    }

    /// Inserts the carried-over `entries` into the new table: sessions first, the most
    /// recently seen first, then forward aliases; what does not fit is dropped (an alias left
    /// without its session is an orphan the GC removes).
    pub fn put_back(
        map: &mut HashMap<MapData, SessionKey, SessionValue>,
        mut entries: Vec<(SessionKey, SessionValue)>,
        capacity: u32,
    ) {
        entries.sort_by_key(|(k, v)| {
            (
                k.dir != router_common::DIR_IN,
                std::cmp::Reverse(v.last_seen_ns),
            )
        });
        let total = entries.len();
        let kept = entries
            .into_iter()
            .take(capacity as usize)
            .take_while(|(k, v)| map.insert(k, v, 0).is_ok())
            .count();
        if kept < total {
            tracing::warn!(
                kept,
                dropped = total - kept,
                "the new session table is smaller than the sessions it had: the least recently seen went"
            );
        }
    }
}
