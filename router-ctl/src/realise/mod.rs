//! Realisation: converges the kernel (bridges, router namespaces, veths, addresses, routes,
//! gratuitous ARP, datapath config) to the desired state computed by the store.
//!
//! Synchronous by design: the API calls it from a blocking task while it holds the store's
//! transaction, so a kernel failure rolls the database back. Work inside a router namespace runs
//! on a thread that entered it (setns is per thread) with a netlink socket created there; work in
//! the daemon's namespace runs on a thread that entered the namespace recorded at `new`.
//!
//! Every kernel object is recorded in `<state-dir>/owned.db` before it is created (see
//! `net::owned`); reconcile and purge delete only recorded objects. A call that fails midway
//! deletes the objects it created before returning the error.
//!
//! Layout: `network` (bridges), `router` (one router's pass, phase by phase), `reconcile` (the
//! periodic full pass), `purge` (removal of routers and of everything), `validate` (specs
//! checked before the kernel is touched).

mod audience;
mod network;
mod purge;
mod reaper;
mod reconcile;
mod router;
mod segment;
mod validate;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use anyhow::Result;

pub use self::{
    reconcile::{Current, ReconcileReport},
    router::namespace::METADATA_ADDR,
};
use crate::{
    datapath::{Datapath, RouterNat},
    model::spec::RouterSpec,
    net::{arp, ns::NetnsHandle, owned::Owned, ra},
};

/// What the realiser needs from the daemon's configuration.
#[derive(Clone, Debug)]
pub struct RealiserConfig {
    /// Where the record of kernel objects this daemon created lives (reconcile removes only those).
    pub state_dir: PathBuf,
    /// `provider:physical_network` → host interface.
    pub physical_networks: BTreeMap<String, String>,
    /// The VXLAN tunnel endpoint (agent mode); None: VXLAN networks are refused.
    pub vxlan: Option<crate::config::VxlanConfig>,
    /// Gratuitous ARPs per address announced (`send_arp_for_ha`).
    pub announcements: u32,
}

/// Something that follows routers' lives: the daemon's metadata proxies.
pub trait RouterHook: Send + Sync {
    /// The router's namespace is converged (called after every apply; idempotent).
    fn router_up(&self, router_id: &str, ns: &NetnsHandle) -> Result<()>;
    /// The router is being removed.
    fn router_down(&self, router_id: &str);
}

/// Converges kernel state; one per daemon.
pub struct Realiser {
    cfg: RealiserConfig,
    datapath: Arc<Datapath>,
    /// The daemon's own namespace, recorded at `new`.
    daemon_ns: NetnsHandle,
    owned: Owned,
    /// Sends gratuitous ARPs in the background.
    announcer: arp::Announcer,
    /// Router advertisements of the `qr-` ports on IPv6 subnets with `ipv6_ra_mode`.
    advertiser: ra::Advertiser,
    /// Serialises kernel changes: API calls with each other and with each reconcile step.
    op: Mutex<()>,
    /// Deletes retired bridges while no kernel change is under way.
    reaper: reaper::Reaper,
    /// What the last successful converge of each router left in the datapath.
    memo: Mutex<HashMap<String, RouterMemo>>,
    /// Told about routers coming up and going (metadata proxies); set once by the daemon.
    router_hook: OnceLock<Arc<dyn RouterHook>>,
    /// Reconcile passes so far (the first looks inside every router).
    passes: AtomicU64,
    /// Where the next pass's routers to look at from inside start (see `inside_slice`).
    inside_cursor: AtomicUsize,
    /// Whether routers' devices run the fast path (`[datapath] fast_path`).
    fast_path: AtomicBool,
    /// Set by `stop`: reconcile passes end after the object in hand.
    stopping: AtomicBool,
    /// The daemon namespace's links, kept from its notifications (see `net::linkwatch`); None
    /// when that could not be started.
    link_table: Option<crate::net::linkwatch::LinkTable>,
    /// Each network converged by this run, with the uplink its bridge was given (None: none),
    /// so retiring a bridge frees that device instead of asking the kernel for the bridge's
    /// ports (see `retire_bridge`).
    uplinks: Mutex<HashMap<String, Option<String>>>,
    /// The mount table's change signal (router namespaces are mounts); None when it could not
    /// be opened (every pass then walks everything).
    mounts: Option<crate::net::mounts::MountWatch>,
    /// What the last clean pass saw (see `reconcile::Seen`); None after a pass that changed or
    /// failed something.
    last_clean: Mutex<Option<reconcile::Seen>>,
}

/// Each reconcile pass enters one router namespace in this many (each router in turn, so every
/// router is looked at from inside once every this many passes), at most `INSIDE_CHECKS_MAX`;
/// the others are checked from the daemon's namespace only, which already sees a deleted
/// namespace or device.
pub const FULL_CHECK_EVERY: u64 = 10;

/// The most routers one reconcile pass looks at from inside: with more than
/// `FULL_CHECK_EVERY × INSIDE_CHECKS_MAX` routers a full round takes longer (at 10 000 routers
/// and a 5 s interval, 26 minutes) instead of each pass taking longer. What only shows inside a
/// namespace is changed by hand there; the Neutron L3 agent never looks again.
pub const INSIDE_CHECKS_MAX: usize = 32;

/// What the realiser last left in the kernel and datapath for one router.
#[derive(Clone, Debug, Default)]
struct RouterMemo {
    /// Taps of the router's ports (daemon namespace).
    taps: BTreeSet<String>,
    /// Gateway tap the datapath is attached to, with its ifindex.
    attached: Option<(String, u32)>,
    /// NAT configuration last written.
    nat: Option<RouterNat>,
    /// Floating IPs and internal hooks last written.
    floating: Option<router::floating::Applied>,
    /// The spec this router was last fully converged to.
    spec: Option<RouterSpec>,
    /// Devices of the router namespace running the fast path: name → (ifindex, MAC) there.
    fast: BTreeMap<String, (u32, [u8; 6])>,
    /// With the fast path off: the filters an earlier run may have left were removed.
    fast_off: bool,
    /// The namespace's fast-path block was dropped from the kernel's list of bound blocks by
    /// this run (`datapath::unlist`; a namespace an earlier version made still has its entry).
    unlisted: bool,
}

impl Realiser {
    /// Must be called from a thread in the daemon's own namespace; remembers it. Call it before
    /// the async runtime starts moving threads around (or from any thread of the daemon's
    /// namespace: every later call enters the recorded namespace itself).
    pub fn new(cfg: RealiserConfig, datapath: Arc<Datapath>) -> Result<Self> {
        let daemon_ns = NetnsHandle::current()?;
        let owned = Owned::open(&cfg.state_dir)?;
        let reaper = reaper::Reaper::start(&daemon_ns, owned.clone())?;
        let link_table = network::watch_links(&daemon_ns);
        let audience = audience::Routers {
            datapath: datapath.clone(),
            links: link_table.clone(),
        };
        let announcer = arp::Announcer::start(
            NetnsHandle::current()?,
            cfg.announcements,
            Box::new(audience),
        )?;
        Ok(Self {
            cfg,
            datapath,
            daemon_ns,
            owned,
            announcer,
            advertiser: ra::Advertiser::start()?,
            op: Mutex::new(()),
            reaper,
            memo: Mutex::new(HashMap::new()),
            uplinks: Mutex::new(HashMap::new()),
            router_hook: OnceLock::new(),
            passes: AtomicU64::new(0),
            inside_cursor: AtomicUsize::new(0),
            fast_path: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            link_table,
            mounts: crate::net::mounts::MountWatch::open()
                .inspect_err(|e| {
                    tracing::warn!("no mount watch ({e:#}): every reconcile pass walks everything")
                })
                .ok(),
            last_clean: Mutex::new(None),
        })
    }

    /// Turns the fast path on (the default) or off; call before the first converge. Off
    /// removes every `FAST_IFS` entry now, and each router's first converge removes the
    /// filters an earlier run attached.
    pub fn set_fast_path(&self, on: bool) -> Result<()> {
        self.fast_path.store(on, Ordering::Relaxed);
        if !on {
            self.datapath.clear_fast()?;
        }
        Ok(())
    }

    fn fast_path(&self) -> bool {
        self.fast_path.load(Ordering::Relaxed)
    }

    /// The datapath this realiser configures (sessions, stats and GC go to it directly).
    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    /// Registers the hook told about routers coming up and going (the metadata proxies).
    pub fn set_router_hook(&self, hook: Arc<dyn RouterHook>) {
        let _ = self.router_hook.set(hook);
    }

    /// The gratuitous ARP frames sent so far for this realiser's addresses, by how they went
    /// out (the metrics read it at each scrape).
    pub fn announcements_sent(&self) -> Arc<arp::Sent> {
        self.announcer.sent()
    }

    /// The routers converged so far as (router id, datapath number): how the metrics name a
    /// router whose counters the datapath keeps by number.
    pub fn router_numbers(&self) -> Vec<(String, u32)> {
        lock(&self.memo)
            .iter()
            .filter_map(|(id, m)| m.spec.as_ref().map(|s| (id.clone(), s.dp_id)))
            .collect()
    }

    /// Asks reconcile passes, the one running and any later one, to end after the network or
    /// router in hand: the daemon is shutting down, and a pass cut anywhere else would leave a
    /// router half made until the next start. API calls are not affected.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether `stop` was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The op lock; taking and releasing it tells the reaper a kernel change is under way.
    fn lock_op(&self) -> OpGuard<'_> {
        let guard = lock(&self.op);
        self.reaper.activity.touch();
        OpGuard {
            _guard: guard,
            activity: &self.reaper.activity,
        }
    }
}

/// The op lock held (see `Realiser::lock_op`).
struct OpGuard<'a> {
    _guard: MutexGuard<'a, ()>,
    activity: &'a reaper::Activity,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.activity.touch();
    }
}

/// Locks, ignoring poisoning (the protected data stays consistent: every update is one insert
/// or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
