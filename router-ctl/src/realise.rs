//! Realisation: converges the kernel (bridges, router namespaces, veths, addresses, routes,
//! gratuitous ARP, datapath config) to the desired state computed by the store.
//!
//! Synchronous by design: the API calls it from a blocking task while it holds the store's
//! transaction, so a kernel failure rolls the database back. Work inside a router namespace runs
//! on a thread that entered it (setns is per thread) with a netlink socket created there; work in
//! the daemon's namespace runs on a thread that entered the namespace recorded at `new`.
//!
//! Every kernel object is recorded under `<state-dir>/owned/` before it is created (see
//! `net::owned`); reconcile and purge delete only recorded objects. A call that fails midway
//! deletes the objects it created before returning the error.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

pub mod floating;

use crate::{
    datapath::{Datapath, RouterNat, filter},
    model::spec::{DesiredState, NetworkSpec, PortSpec, RouterSpec, names},
    net::{
        LinkState, arp,
        link::{self, LinkKind},
        neigh,
        ns::{self, NetnsHandle, in_netns, with_netlink},
        owned::{Kind, Owned},
    },
};

/// What the realiser needs from the daemon's configuration.
#[derive(Clone, Debug)]
pub struct RealiserConfig {
    /// Where the record of kernel objects this daemon created lives (reconcile removes only those).
    pub state_dir: PathBuf,
    /// `provider:physical_network` → host interface.
    pub physical_networks: std::collections::BTreeMap<String, String>,
}

/// How long after an `apply_*`/`remove_*` call reconcile leaves that object alone, by default
/// none: the daemon takes its desired-state snapshot and runs reconcile under the store lock,
/// so no API call can slip in between. A caller whose snapshot may predate API calls sets a
/// grace with `set_reconcile_grace`.
pub const DEFAULT_RECONCILE_GRACE: Duration = Duration::ZERO;

/// Converges kernel state; one per daemon.
pub struct Realiser {
    cfg: RealiserConfig,
    datapath: Arc<Datapath>,
    /// The daemon's own namespace, recorded at `new`.
    daemon_ns: NetnsHandle,
    owned: Owned,
    /// Sends gratuitous ARPs in the background.
    announcer: arp::Announcer,
    /// Serialises kernel changes: API calls with each other and with each reconcile step.
    op: Mutex<()>,
    /// What the last successful converge of each router left in the datapath.
    memo: Mutex<HashMap<String, RouterMemo>>,
    /// Objects applied/removed recently through the API (reconcile grace, see
    /// `DEFAULT_RECONCILE_GRACE`).
    recent: Mutex<Recent>,
    /// Told about routers coming up and going (metadata proxies); set once by the daemon.
    router_hook: std::sync::OnceLock<Arc<dyn floating::RouterHook>>,
    /// Reconcile passes so far (every `FULL_CHECK_EVERY`th is a full one).
    passes: AtomicU64,
    /// Whether routers' devices run the fast path (`[datapath] fast_path`).
    fast_path: AtomicBool,
}

/// One reconcile pass in this many enters every router namespace; the others check routers
/// from the daemon's namespace only (cheap with 1000 routers), which already sees a deleted
/// namespace or device.
pub const FULL_CHECK_EVERY: u64 = 10;

/// Ifindexes tried for a new router port before leaving the choice to the kernel.
const SPARE_IFINDEX_TRIES: usize = 8;

#[derive(Clone, Debug, Default)]
struct RouterMemo {
    /// Taps of the router's ports (daemon namespace).
    taps: BTreeSet<String>,
    /// Gateway tap the datapath is attached to, with its ifindex.
    attached: Option<(String, u32)>,
    /// NAT configuration last written.
    nat: Option<RouterNat>,
    /// Floating IPs and internal hooks last written.
    floating: Option<floating::Applied>,
    /// The spec this router was last fully converged to.
    spec: Option<RouterSpec>,
    /// Devices of the router namespace running the fast path: name → (ifindex, MAC) there.
    fast: BTreeMap<String, (u32, [u8; 6])>,
    /// With the fast path off: the filters an earlier run may have left were removed.
    fast_off: bool,
}

#[derive(Debug)]
struct Recent {
    grace: Duration,
    applied: HashMap<String, Instant>,
    removed: HashMap<String, Instant>,
}

impl Recent {
    fn within(&self, map: &HashMap<String, Instant>, key: &str) -> bool {
        map.get(key).is_some_and(|t| t.elapsed() < self.grace)
    }
    fn prune(&mut self) {
        let g = self.grace;
        self.applied.retain(|_, t| t.elapsed() < g);
        self.removed.retain(|_, t| t.elapsed() < g);
    }
}

/// What a reconcile pass changed.
#[derive(Clone, Debug, Default)]
pub struct ReconcileReport {
    /// Objects created or corrected, one line each (e.g. `router <id>: netns …, veth …`).
    pub repaired: Vec<String>,
    /// Owned objects deleted because the desired state no longer holds them.
    pub removed: Vec<String>,
    /// Objects that could not be converged, with the error (the pass goes on with the others).
    pub failed: Vec<String>,
}

/// Kernel objects a call created, deleted again if the call fails.
#[derive(Debug)]
enum Created {
    Netns(String),
    Tap(String),
    Attached(String),
}

/// One router port as the realiser lays it out.
struct PortPlan<'a> {
    port: &'a PortSpec,
    inner: String,
    tap: String,
    bridge: String,
    gateway: bool,
}

fn plan(spec: &RouterSpec) -> Vec<PortPlan<'_>> {
    let mut out: Vec<PortPlan<'_>> = spec
        .interfaces
        .iter()
        .map(|p| PortPlan {
            port: p,
            inner: names::internal_dev(&p.port_id),
            tap: names::tap_dev(&p.port_id),
            bridge: names::bridge(&p.network_id),
            gateway: false,
        })
        .collect();
    if let Some(gw) = &spec.gateway {
        out.push(PortPlan {
            port: &gw.port,
            inner: names::gateway_dev(&gw.port.port_id),
            tap: names::tap_dev(&gw.port.port_id),
            bridge: names::bridge(&gw.port.network_id),
            gateway: true,
        });
    }
    out
}

/// Ids become file and device names: keep them to a safe alphabet.
fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 200
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("invalid {what} id {id:?}: expected 1-200 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn validate_port(p: &PortSpec) -> Result<()> {
    validate_id("port", &p.port_id)?;
    validate_id("network", &p.network_id)?;
    if p.mac[0] & 1 != 0 || p.mac == [0; 6] {
        bail!(
            "port {}: MAC {} is not a unicast address",
            p.port_id,
            fmt_mac(&p.mac)
        );
    }
    for a in &p.addresses {
        let ip = a.addr();
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            bail!("port {}: address {a} is not a unicast address", p.port_id);
        }
    }
    Ok(())
}

fn validate_router(spec: &RouterSpec) -> Result<()> {
    validate_id("router", &spec.id)?;
    let mut devs = HashSet::new();
    for p in plan(spec) {
        validate_port(p.port)?;
        if !devs.insert(p.tap.clone()) {
            bail!(
                "router {}: two ports share the device name {} (port ids must differ in their first 11 characters)",
                spec.id,
                p.tap
            );
        }
    }
    if let Some(gw) = &spec.gateway {
        if gw.snat_ip().is_none() {
            bail!("router {}: the gateway port has no IPv4 address", spec.id);
        }
        for (i, nh) in gw.next_hops.iter().enumerate() {
            if gw.port.addresses.iter().any(|a| a.addr() == *nh) {
                bail!(
                    "router {}: the gateway's next hop {nh} is its own address",
                    spec.id
                );
            }
            if gw.next_hops[..i]
                .iter()
                .any(|o| o.is_ipv4() == nh.is_ipv4())
            {
                bail!("router {}: two next hops of one address family", spec.id);
            }
        }
    }
    Ok(())
}

/// What a router-namespace pass does besides configuring the present devices.
#[derive(Clone, Copy, Debug, Default)]
struct InsideMode {
    /// Delete `qr-`/`qg-` devices the spec does not have.
    prune: bool,
    /// Write the namespace's sysctls.
    sysctls: bool,
    /// A reconcile pass: check the fast-path filters and refresh stale neighbours.
    verify: bool,
}

/// What the router-namespace pass found and did.
#[derive(Default)]
struct InsideReport {
    /// Inner devices present after removing extras.
    present: HashSet<String>,
    /// Extra `qr-`/`qg-` devices deleted (their taps went with them).
    removed: Vec<String>,
    /// (device, mac, ip) to announce.
    announce: Vec<(String, [u8; 6], Ipv4Addr)>,
    /// Something was changed.
    changed: Vec<String>,
}

impl Realiser {
    /// Must be called from a thread in the daemon's own namespace; remembers it. Call it before
    /// the async runtime starts moving threads around (or from any thread of the daemon's
    /// namespace: every later call enters the recorded namespace itself).
    pub fn new(cfg: RealiserConfig, datapath: Arc<Datapath>) -> Result<Self> {
        let daemon_ns = NetnsHandle::current()?;
        let owned = Owned::open(&cfg.state_dir)?;
        Ok(Self {
            cfg,
            datapath,
            daemon_ns,
            owned,
            announcer: arp::Announcer::start(NetnsHandle::current()?)?,
            op: Mutex::new(()),
            memo: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent {
                grace: DEFAULT_RECONCILE_GRACE,
                applied: HashMap::new(),
                removed: HashMap::new(),
            }),
            router_hook: std::sync::OnceLock::new(),
            passes: AtomicU64::new(0),
            fast_path: AtomicBool::new(true),
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

    /// How long reconcile leaves alone what an API call just applied or removed, for callers
    /// whose desired-state snapshot may predate API calls (see `DEFAULT_RECONCILE_GRACE`).
    pub fn set_reconcile_grace(&self, grace: Duration) {
        lock(&self.recent).grace = grace;
    }

    fn lock_op(&self) -> MutexGuard<'_, ()> {
        lock(&self.op)
    }

    fn mark_applied(&self, key: String) {
        let mut r = lock(&self.recent);
        r.removed.remove(&key);
        r.applied.insert(key, Instant::now());
    }

    fn recently_applied(&self, key: &str) -> bool {
        let r = lock(&self.recent);
        r.within(&r.applied, key)
    }

    fn recently_removed(&self, key: &str) -> bool {
        let r = lock(&self.recent);
        r.within(&r.removed, key)
    }

    fn mark_removed(&self, key: String) {
        let mut r = lock(&self.recent);
        r.applied.remove(&key);
        r.removed.insert(key, Instant::now());
    }

    // ---------------------------------------------------------------- networks

    /// Bridge for the network (and uplink enslaved); idempotent.
    pub fn apply_network(&self, net: &NetworkSpec) -> Result<()> {
        validate_id("network", &net.id)?;
        let _g = self.lock_op();
        self.mark_applied(format!("network:{}", net.id));
        self.converge_network(net, None).map(|_| ())
    }

    /// Returns whether anything was created or changed.
    fn converge_network(
        &self,
        net: &NetworkSpec,
        known: Option<&HashMap<String, LinkState>>,
    ) -> Result<bool> {
        // A physical network with no mapping gets a bridge without uplink (single-host setups,
        // tests); a mapping to a missing interface is an error below.
        let uplink = match &net.physical_network {
            None => None,
            Some(p) => {
                let u = self.cfg.physical_networks.get(p);
                if u.is_none() && known.is_none() {
                    tracing::warn!(
                        "network {}: physical network {p:?} is not mapped to a host interface in the configuration; its bridge has no uplink",
                        net.id
                    );
                }
                u
            }
        };
        let br = names::bridge(&net.id);
        // Steady state seen in a reconcile dump: nothing to do, no thread.
        if let Some(k) = known
            && let Some(b) = k.get(&br)
            && b.up
            && b.kind == LinkKind::Bridge
        {
            let uplink_ok = match uplink {
                None => true,
                Some(u) => k
                    .get(u.as_str())
                    .is_some_and(|l| l.controller == Some(b.index) && l.up),
            };
            if uplink_ok {
                return Ok(false);
            }
        }
        let owned = &self.owned;
        with_netlink(&self.daemon_ns, |h| async move {
            let mut changed = false;
            let mut created = false;
            let bridge = match link::get_link(&h, &br).await? {
                Some(l) => {
                    if l.kind != LinkKind::Bridge {
                        bail!("network {}: device {br} exists and is not a bridge", net.id);
                    }
                    l
                }
                None => {
                    owned.record(Kind::Link, &br, &format!("bridge {}", net.id))?;
                    match link::create_bridge(&h, &br).await {
                        Ok(_) => {}
                        Err(e) => {
                            let _ = owned.forget(Kind::Link, &br);
                            return Err(e);
                        }
                    }
                    created = true;
                    changed = true;
                    ns::disable_ipv6(&br);
                    link::get_link(&h, &br)
                        .await?
                        .ok_or_else(|| anyhow!("bridge {br} vanished after creation"))?
                }
            };
            let rest = async {
                if !bridge.up {
                    link::set_up(&h, bridge.index, true).await?;
                    changed = true;
                }
                if let Some(u) = uplink {
                    let up = link::get_link(&h, u).await?.ok_or_else(|| {
                        anyhow!(
                            "network {}: host interface {u} (physical network {:?}) does not exist",
                            net.id,
                            net.physical_network.as_deref().unwrap_or_default()
                        )
                    })?;
                    if up.controller != Some(bridge.index) {
                        link::set_controller(&h, up.index, bridge.index).await?;
                        changed = true;
                    }
                    if !up.up {
                        link::set_up(&h, up.index, true).await?;
                        changed = true;
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = rest.await {
                if created {
                    let _ = link::delete_link(&h, &br).await;
                    let _ = owned.forget(Kind::Link, &br);
                }
                return Err(e);
            }
            Ok(changed)
        })
    }

    /// Removes the network's bridge; missing is success.
    pub fn remove_network(&self, network_id: &str) -> Result<()> {
        validate_id("network", network_id)?;
        let _g = self.lock_op();
        self.mark_removed(format!("network:{network_id}"));
        let br = names::bridge(network_id);
        if !self.owned.contains(Kind::Link, &br) {
            return Ok(());
        }
        self.delete_daemon_links(&[br])
    }

    /// Deletes recorded devices of the daemon namespace, then their records.
    fn delete_daemon_links(&self, devs: &[String]) -> Result<()> {
        if devs.is_empty() {
            return Ok(());
        }
        with_netlink(&self.daemon_ns, |h| async move {
            for d in devs {
                link::delete_link(&h, d).await?;
            }
            Ok(())
        })?;
        for d in devs {
            self.owned.forget(Kind::Link, d)?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- routers

    /// Converges one router (namespace, interfaces, gateway, routes, NAT) to `spec`; idempotent.
    /// On error, the kernel objects this call created are deleted again.
    pub fn apply_router(&self, spec: &RouterSpec) -> Result<()> {
        validate_router(spec)?;
        let _g = self.lock_op();
        self.mark_applied(format!("router:{}", spec.id));
        let mut created = Vec::new();
        let res = self.converge_router(spec, None, &mut created);
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                self.rollback(spec, created);
                Err(e)
            }
        }
    }

    /// Deletes what a failed converge created, newest first.
    fn rollback(&self, spec: &RouterSpec, created: Vec<Created>) {
        let ns_gone = created.iter().any(|c| matches!(c, Created::Netns(_)));
        for c in created.into_iter().rev() {
            let r = match &c {
                Created::Attached(tap) => in_netns(&self.daemon_ns, || self.datapath.detach(tap)),
                Created::Tap(tap) => self.delete_daemon_links(std::slice::from_ref(tap)),
                Created::Netns(name) => {
                    ns::delete(name).and_then(|()| self.owned.forget(Kind::Netns, name))
                }
            };
            if let Err(e) = r {
                tracing::warn!("router {}: undoing {c:?}: {e:#}", spec.id);
            }
        }
        let memo = lock(&self.memo).remove(&spec.id);
        // Fast-path entries of devices that went with a namespace this call made.
        if ns_gone {
            for (idx, mac) in memo.iter().flat_map(|m| m.fast.values()) {
                if let Err(e) = self.datapath.forget_fast(*idx, *mac) {
                    tracing::warn!("router {}: undoing the fast path: {e:#}", spec.id);
                }
            }
        }
    }

    /// The heart of apply_router and of reconcile's repair. `known`: a dump of the daemon
    /// namespace's links taken by the caller (reconcile), to skip lookups in the steady state.
    /// Returns what was changed.
    fn converge_router(
        &self,
        spec: &RouterSpec,
        known: Option<&HashMap<String, LinkState>>,
        created: &mut Vec<Created>,
    ) -> Result<Vec<String>> {
        let ports = plan(spec);
        let ns_name = names::router_netns(&spec.id);
        let mut changes = Vec::new();

        // 1. Daemon side: the bridges must exist; note the taps.
        let mut wanted: Vec<String> = ports.iter().map(|p| p.bridge.clone()).collect();
        wanted.extend(ports.iter().map(|p| p.tap.clone()));
        let daemon_links: HashMap<String, LinkState> = match known {
            Some(k) => wanted
                .iter()
                .filter_map(|n| k.get(n).map(|l| (n.clone(), l.clone())))
                .collect(),
            None => self.lookup_daemon_links(&wanted)?,
        };
        for p in &ports {
            match daemon_links.get(&p.bridge) {
                Some(b) if b.kind == LinkKind::Bridge => {}
                _ => bail!(
                    "router {}: port {} is on network {} whose bridge {} does not exist (apply the network first)",
                    spec.id,
                    p.port.port_id,
                    p.port.network_id,
                    p.bridge
                ),
            }
        }

        // 2. The namespace.
        let record = format!("{} {}\n", spec.id, spec.dp_id);
        let router_ns = match NetnsHandle::open_named(&ns_name)? {
            Some(h) => {
                match self.owned.get(Kind::Netns, &ns_name)? {
                    None => bail!(
                        "router {}: namespace {ns_name} exists but was not created by this daemon",
                        spec.id
                    ),
                    // Keep the dp_id in the record current: reconcile and purge use it.
                    Some(c) if c != record => self.owned.record(Kind::Netns, &ns_name, &record)?,
                    Some(_) => {}
                }
                h
            }
            None => {
                self.owned.record(Kind::Netns, &ns_name, &record)?;
                match ns::create(&ns_name) {
                    Ok(_) => created.push(Created::Netns(ns_name.clone())),
                    Err(e) => {
                        let _ = self.owned.forget(Kind::Netns, &ns_name);
                        return Err(e);
                    }
                }
                changes.push(format!("netns {ns_name}"));
                NetnsHandle::open_named(&ns_name)?
                    .ok_or_else(|| anyhow!("namespace {ns_name} vanished after creation"))?
            }
        };

        // 3. Inside: namespace settings, extra devices out, configure what is present.
        let desired_inner: HashSet<String> = ports.iter().map(|p| p.inner.clone()).collect();
        // Sysctls: on a namespace made by this call, and on every reconcile.
        let sysctls = known.is_some()
            || created
                .iter()
                .any(|c| matches!(c, Created::Netns(n) if n == &ns_name));
        let mut inside = self.inside_pass(
            spec,
            &ports,
            &router_ns,
            &desired_inner,
            InsideMode {
                prune: true,
                sysctls,
                verify: known.is_some(),
            },
        )?;
        let removed_gw_taps: Vec<String> = inside
            .removed
            .iter()
            .filter(|d| d.starts_with("qg-"))
            .map(|d| format!("tap{}", &d[3..]))
            .collect();
        for d in &inside.removed {
            let tap = format!("tap{}", &d[3..]);
            self.owned.forget(Kind::Link, &tap)?;
            changes.push(format!("removed {d}"));
        }
        changes.append(&mut inside.changed);

        // 4. Daemon side: create missing veth pairs, fix taps, attach the datapath.
        let mut daemon_links = daemon_links;
        let needs_fix = |links: &HashMap<String, LinkState>, present: &HashSet<String>| {
            ports.iter().any(|p| {
                !present.contains(&p.inner)
                    || links.get(&p.tap).is_none_or(|t| {
                        !t.up || t.controller != links.get(&p.bridge).map(|b| b.index)
                    })
            })
        };
        if known.is_some() && needs_fix(&daemon_links, &inside.present) {
            // The caller's dump may predate an API call: look again before changing anything.
            daemon_links = self.lookup_daemon_links(&wanted)?;
        }
        // An inner device whose tap is gone is not ours any more (a veth takes its peer with
        // it): delete it and build the pair again.
        let orphans: Vec<String> = ports
            .iter()
            .filter(|p| inside.present.contains(&p.inner) && !daemon_links.contains_key(&p.tap))
            .map(|p| p.inner.clone())
            .collect();
        if !orphans.is_empty() {
            with_netlink(&router_ns, |h| {
                let orphans = &orphans;
                async move {
                    for d in orphans {
                        self.datapath.detach_fast(d)?;
                        link::delete_link(&h, d).await?;
                    }
                    Ok(())
                }
            })?;
            for d in &orphans {
                inside.present.remove(d);
                changes.push(format!("removed orphan {d}"));
            }
        }
        let missing: Vec<&PortPlan<'_>> = ports
            .iter()
            .filter(|p| !inside.present.contains(&p.inner))
            .collect();
        let tap_fix: Vec<&PortPlan<'_>> = ports
            .iter()
            .filter(|p| inside.present.contains(&p.inner))
            .filter(|p| {
                let br = daemon_links.get(&p.bridge).map(|b| b.index);
                daemon_links
                    .get(&p.tap)
                    .is_none_or(|t| !t.up || t.controller != br)
            })
            .collect();
        let configure_new = !missing.is_empty() || !tap_fix.is_empty();
        if configure_new {
            let made = self.daemon_ports(spec, &missing, &tap_fix, &router_ns, created)?;
            changes.extend(made.iter().map(|t| format!("veth {t}")));
        }

        // 5. Datapath.
        let mut memo = lock(&self.memo).get(&spec.id).cloned().unwrap_or_default();
        let gw_plan = ports.iter().find(|p| p.gateway);
        let stale_attach = memo
            .attached
            .as_ref()
            .filter(|(t, _)| gw_plan.is_none_or(|g| &g.tap != t))
            .map(|(t, _)| t.clone());
        let mut detach: Vec<String> = removed_gw_taps;
        if let Some(t) = stale_attach {
            detach.push(t);
        }
        detach.sort();
        detach.dedup();
        if gw_plan.is_none() && (memo.nat.is_some() || !detach.is_empty()) {
            self.datapath
                .remove_router(spec.dp_id)
                .with_context(|| format!("router {}: removing NAT state", spec.id))?;
            memo.nat = None;
            changes.push("nat removed".into());
        }
        if !detach.is_empty() {
            in_netns(&self.daemon_ns, || {
                for t in &detach {
                    self.datapath.detach(t)?;
                }
                Ok(())
            })?;
            memo.attached = None;
        }
        if let (Some(g), Some(gw)) = (gw_plan, &spec.gateway) {
            let recreated = changes.iter().any(|c| c == &format!("veth {}", g.tap));
            let current = daemon_links.get(&g.tap).map(|t| t.index);
            let ifindex = match &memo.attached {
                Some((t, idx))
                    if t == &g.tap && !recreated && current.is_none_or(|c| c == *idx) =>
                {
                    *idx
                }
                _ => {
                    let idx = in_netns(&self.daemon_ns, || self.datapath.attach(&g.tap))
                        .with_context(|| {
                            format!("router {}: attaching the datapath to {}", spec.id, g.tap)
                        })?;
                    // Undo only an attachment to a tap this call made (an existing gateway keeps
                    // its programs if a later step fails).
                    if recreated {
                        created.push(Created::Attached(g.tap.clone()));
                    }
                    memo.attached = Some((g.tap.clone(), idx));
                    idx
                }
            };
            let nat = RouterNat {
                dp_id: spec.dp_id,
                ifindex,
                gateway_ip: gw
                    .snat_ip()
                    .ok_or_else(|| anyhow!("router {}: no IPv4 gateway address", spec.id))?,
                enable_snat: gw.enable_snat,
                internal_cidrs: spec.internal_cidrs(),
            };
            if memo.nat.as_ref() != Some(&nat) {
                self.datapath
                    .configure_router(&nat)
                    .with_context(|| format!("router {}: configuring NAT", spec.id))?;
                // The first write after a start rewrites what the pinned maps already hold.
                if memo.nat.is_some() {
                    changes.push("nat configured".into());
                }
                memo.nat = Some(nat);
            }
        }
        let recreated: Vec<String> = changes
            .iter()
            .filter_map(|c| c.strip_prefix("veth ").map(str::to_string))
            .collect();
        let reset = changes.iter().any(|c| c == "nat removed");
        self.converge_floating(spec, &ports, &mut memo, &recreated, reset, &mut changes)?;
        memo.taps = ports.iter().map(|p| p.tap.clone()).collect();
        memo.spec = Some(spec.clone());
        lock(&self.memo).insert(spec.id.clone(), memo);

        // 6. Only now address, bring up and route the devices created in step 4: the NAT
        // programs are attached and know every internal CIDR, so no packet from an internal
        // source can leave through a new `qg-` (or from a new subnet) untranslated.
        if configure_new {
            let mut again = self.inside_pass(
                spec,
                &ports,
                &router_ns,
                &desired_inner,
                InsideMode::default(),
            )?;
            changes.append(&mut again.changed);
            inside.announce.append(&mut again.announce);
        }

        // 7. Announce new or changed addresses (background threads).
        if spec.admin_state_up {
            for (dev, mac, ip) in inside.announce {
                self.announcer.announce(ns_name.clone(), dev, mac, ip);
            }
        }
        if let Some(hook) = self.router_hook.get()
            && let Err(e) = hook.router_up(&spec.id, &router_ns)
        {
            tracing::warn!("router {}: metadata proxy: {e:#}", spec.id);
        }
        Ok(changes)
    }

    /// Looks up `names` in the daemon namespace.
    fn lookup_daemon_links(&self, names: &[String]) -> Result<HashMap<String, LinkState>> {
        with_netlink(&self.daemon_ns, |h| async move {
            let mut out = HashMap::new();
            for n in names {
                if let Some(l) = link::get_link(&h, n).await? {
                    out.insert(n.clone(), l);
                }
            }
            Ok(out)
        })
    }

    /// Daemon side of router ports: creates the veth pairs whose inner device is missing (tap in
    /// the bridge, inner device with the port MAC moved into the router namespace), fixes taps
    /// that are down or off their bridge. Returns the taps created.
    fn daemon_ports(
        &self,
        spec: &RouterSpec,
        missing: &[&PortPlan<'_>],
        fix: &[&PortPlan<'_>],
        router_ns: &NetnsHandle,
        created: &mut Vec<Created>,
    ) -> Result<Vec<String>> {
        let owned = &self.owned;
        let fast = self.fast_path();
        let mut made = Vec::new();
        let res = with_netlink(&self.daemon_ns, |h| {
            let made = &mut made;
            async move {
                for p in missing.iter().chain(fix.iter()) {
                    let bridge = link::get_link(&h, &p.bridge).await?.ok_or_else(|| {
                        anyhow!(
                            "router {}: bridge {} of network {} does not exist",
                            spec.id,
                            p.bridge,
                            p.port.network_id
                        )
                    })?;
                    let tap = link::get_link(&h, &p.tap).await?;
                    let recreate = missing.iter().any(|m| m.tap == p.tap) || tap.is_none();
                    if let Some(t) = &tap {
                        if !owned.contains(Kind::Link, &p.tap) {
                            bail!(
                                "router {}: device {} exists but was not created by this daemon",
                                spec.id,
                                p.tap
                            );
                        }
                        if recreate {
                            // Its peer is gone (namespace deleted from outside): start afresh.
                            link::delete_link(&h, &p.tap).await?;
                        } else {
                            if t.controller != Some(bridge.index) {
                                link::set_controller(&h, t.index, bridge.index).await?;
                            }
                            if !t.up {
                                link::set_up(&h, t.index, true).await?;
                            }
                            continue;
                        }
                    }
                    owned.record(Kind::Link, &p.tap, &format!("tap {}\n", spec.id))?;
                    let veth = |index| {
                        link::create_veth(
                            &h,
                            &p.tap,
                            bridge.index,
                            &p.inner,
                            p.port.mac,
                            router_ns,
                            index,
                        )
                    };
                    // With the fast path, an ifindex no other router device has (see
                    // `Datapath::spare_ifindex`); a few tries, then the kernel's choice.
                    let mut res = Err(link::VethError::IndexTaken);
                    if fast {
                        let mut after = 0;
                        for _ in 0..SPARE_IFINDEX_TRIES {
                            let tap = self.datapath.spare_ifindex(after);
                            let inner = self.datapath.spare_ifindex(tap);
                            res = veth(Some((tap, inner))).await;
                            if !matches!(res, Err(link::VethError::IndexTaken)) {
                                break;
                            }
                            after = inner;
                        }
                    }
                    if matches!(res, Err(link::VethError::IndexTaken)) {
                        res = veth(None).await;
                    }
                    if let Err(e) = res {
                        let _ = owned.forget(Kind::Link, &p.tap);
                        return Err(anyhow::Error::from(e)
                            .context(format!("router {}: port {}", spec.id, p.port.port_id)));
                    }
                    ns::disable_ipv6(&p.tap);
                    made.push(p.tap.clone());
                }
                Ok(())
            }
        });
        for t in &made {
            created.push(Created::Tap(t.clone()));
        }
        res.map(|()| made)
    }

    /// One netlink session inside the router namespace: `lo` up, sysctls, extra `qr-`/`qg-`
    /// devices deleted, every present port device configured (MAC, up, address, gateway
    /// routes) and put on the fast path (see `converge_fast` and `InsideMode`).
    ///
    /// Sysctls are written when the namespace is new and checked by reconcile, not on every
    /// API call: each `/proc/sys` look-up is O(namespaces) on the kernel side (the sysctl
    /// dentries of all namespaces share hash chains), ~8 per router change with 1000 routers.
    fn inside_pass(
        &self,
        spec: &RouterSpec,
        ports: &[PortPlan<'_>],
        router_ns: &NetnsHandle,
        desired_inner: &HashSet<String>,
        mode: InsideMode,
    ) -> Result<InsideReport> {
        let InsideMode {
            prune,
            sysctls,
            verify,
        } = mode;
        with_netlink(router_ns, |h| async move {
            let mut rep = InsideReport::default();
            if sysctls {
                for (k, v) in [
                    ("ipv4/ip_forward", "1"),
                    ("ipv4/conf/all/arp_ignore", "1"),
                    ("ipv4/conf/all/arp_announce", "2"),
                ]
                .into_iter()
                .chain(floating::SYSCTLS)
                {
                    ns::write_sysctl(k, v)?;
                }
            }
            let links = link::dump_links(&h).await?;
            if let Some(lo) = links.iter().find(|l| l.name == "lo")
                && !lo.up
            {
                link::set_up(&h, lo.index, true).await?;
                rep.changed.push("lo up".into());
            }
            if let Some(lo) = links.iter().find(|l| l.name == "lo")
                && floating::converge_metadata_addr(&h, lo.index).await?
            {
                rep.changed.push("metadata address".into());
            }
            let fip_addrs = floating::gateway_extras(spec);
            let mut by_name: HashMap<String, LinkState> = HashMap::new();
            for l in links {
                let ours = l.name.starts_with("qr-") || l.name.starts_with("qg-");
                if prune && ours && !desired_inner.contains(&l.name) {
                    if let Some(mac) = l.mac {
                        self.datapath.forget_fast(l.index, mac)?;
                    }
                    link::delete_link(&h, &l.name).await?;
                    rep.removed.push(l.name.clone());
                    continue;
                }
                by_name.insert(l.name.clone(), l);
            }
            let mut gw_index = None;
            // Present, up and addressed: (name, ifindex, MAC, gateway).
            let mut fast_ready = Vec::new();
            for p in ports {
                let Some(l) = by_name.get(&p.inner) else {
                    continue;
                };
                rep.present.insert(p.inner.clone());
                let mut announce = false;
                if l.mac != Some(p.port.mac) {
                    link::set_mac(&h, l.index, p.port.mac).await?;
                    rep.changed.push(format!("mac {}", p.inner));
                    announce = true;
                }
                if l.up != spec.admin_state_up {
                    if spec.admin_state_up && self.fast_path() {
                        // The clsact qdisc goes on while the device is down: grafting a
                        // qdisc onto an up device deactivates it for a moment
                        // (`qdisc_graft` → `dev_deactivate`), dropping what it sends then —
                        // the router's first ARP request, so the first packets of a new
                        // gateway waited a second for the retransmission. `converge_fast`
                        // adds the filter below.
                        filter::ensure_clsact(&p.inner)
                            .with_context(|| format!("router {}: device {}", spec.id, p.inner))?;
                    }
                    link::set_up(&h, l.index, spec.admin_state_up).await?;
                    rep.changed.push(format!("link {}", p.inner));
                    announce = true;
                }
                let extras: &[Ipv4Addr] = if p.gateway { &fip_addrs } else { &[] };
                let (addr_changed, added) =
                    floating::converge_addresses(&h, l.index, &p.port.addresses, extras)
                        .await
                        .with_context(|| format!("router {}: device {}", spec.id, p.inner))?;
                if addr_changed || !added.is_empty() {
                    rep.changed.push(format!("address {}", p.inner));
                }
                if addr_changed {
                    announce = true;
                }
                if announce {
                    // Gratuitous ARP is IPv4's; IPv6 neighbours learn by their own means.
                    if let Some(ip) = p.port.ipv4() {
                        rep.announce.push((p.inner.clone(), p.port.mac, ip.addr()));
                    }
                    for a in extras {
                        rep.announce.push((p.inner.clone(), p.port.mac, *a));
                    }
                } else {
                    // Floating IPs just added (associations): announce them.
                    for a in &added {
                        rep.announce.push((p.inner.clone(), p.port.mac, *a));
                    }
                }
                if p.gateway {
                    gw_index = Some(l.index);
                }
                if spec.admin_state_up {
                    fast_ready.push((p.inner.clone(), l.index, p.port.mac, p.gateway));
                }
            }
            let mut route_changes = converge_routes(&h, spec, gw_index).await?;
            rep.changed.append(&mut route_changes);
            let mut fast_changes = self
                .converge_fast(&h, spec, &fast_ready, &by_name, verify)
                .await?;
            rep.changed.append(&mut fast_changes);
            Ok(rep)
        })
    }

    /// The fast path of one router, on the thread of `inside_pass` (router namespace, `h`):
    /// every device of `ready` runs `fast_fwd` with its `FAST_IFS` entry, and devices that
    /// left it lose theirs. The memo makes it free when in place; `verify` (reconcile) asks
    /// the kernel whether each filter is still there, puts back one removed from outside, and
    /// refreshes the namespace's stale neighbours (see `net::neigh`). With the fast path off,
    /// the router's first converge removes any filter an earlier run left. A device the fast
    /// path cannot take stays on the slow path with a warning: the router works either way.
    async fn converge_fast(
        &self,
        h: &rtnetlink::Handle,
        spec: &RouterSpec,
        ready: &[(String, u32, [u8; 6], bool)],
        present: &HashMap<String, LinkState>,
        verify: bool,
    ) -> Result<Vec<String>> {
        let (known, fast_off) = lock(&self.memo)
            .get(&spec.id)
            .map(|m| (m.fast.clone(), m.fast_off))
            .unwrap_or_default();
        let mut changes = Vec::new();
        if !self.fast_path() {
            if !fast_off {
                for name in present
                    .keys()
                    .filter(|n| n.starts_with("qr-") || n.starts_with("qg-"))
                {
                    self.datapath.detach_fast(name)?;
                }
                let mut memo = lock(&self.memo);
                let m = memo.entry(spec.id.clone()).or_default();
                m.fast.clear();
                m.fast_off = true;
            }
            return Ok(changes);
        }
        let mut now = BTreeMap::new();
        for (name, ifindex, mac, gateway) in ready {
            let prev = known.get(name);
            if let Some((idx, old_mac)) = prev
                && idx != ifindex
            {
                // The device was made again: its old entry names an ifindex it no longer has.
                self.datapath.forget_fast(*idx, *old_mac)?;
            }
            let remembered = prev == Some(&(*ifindex, *mac))
                && self
                    .datapath
                    .fast_entry_ok(*ifindex, *mac, spec.dp_id, *gateway);
            if remembered && (!verify || Datapath::fast_in_place(h, *ifindex).await?) {
                now.insert(name.clone(), (*ifindex, *mac));
                continue;
            }
            match self.datapath.attach_fast(name, spec.dp_id, *gateway) {
                Ok(true) => {
                    now.insert(name.clone(), (*ifindex, *mac));
                    if remembered {
                        changes.push(format!("fast path {name}"));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("router {}: {name} stays on the slow path: {e:#}", spec.id)
                }
            }
        }
        for (name, (idx, mac)) in &known {
            if now.contains_key(name) {
                continue;
            }
            if present.get(name).is_some_and(|l| l.index == *idx) {
                self.datapath.detach_fast(name)?;
            } else {
                self.datapath.forget_fast(*idx, *mac)?;
            }
        }
        if verify && !now.is_empty() {
            let ifindexes: HashSet<u32> = now.values().map(|(idx, _)| *idx).collect();
            if let Err(e) = neigh::refresh_stale(h, &ifindexes).await {
                tracing::warn!("router {}: {e:#}", spec.id);
            }
        }
        let mut memo = lock(&self.memo);
        let m = memo.entry(spec.id.clone()).or_default();
        m.fast = now;
        m.fast_off = false;
        Ok(changes)
    }

    /// Removes the router's namespace and everything under it, its NAT config and sessions.
    pub fn remove_router(&self, router_id: &str, dp_id: u32) -> Result<()> {
        validate_id("router", router_id)?;
        let _g = self.lock_op();
        self.mark_removed(format!("router:{router_id}"));
        self.remove_router_locked(router_id, dp_id)
    }

    fn remove_router_locked(&self, router_id: &str, dp_id: u32) -> Result<()> {
        if let Some(hook) = self.router_hook.get() {
            hook.router_down(router_id);
        }
        let ns_name = names::router_netns(router_id);
        if !self.owned.contains(Kind::Netns, &ns_name) {
            // Not ours (or already gone): still drop any NAT state of the dp_id we were given.
            lock(&self.memo).remove(router_id);
            return self.datapath.remove_router(dp_id);
        }
        let memo = lock(&self.memo).remove(router_id).unwrap_or_default();
        let mut first_err: Option<anyhow::Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        keep(self.datapath.remove_router(dp_id));

        // Devices inside, hence their taps.
        let mut taps: BTreeSet<String> = memo.taps.clone();
        let mut gw_taps: BTreeSet<String> = memo.attached.iter().map(|(t, _)| t.clone()).collect();
        if let Some(h) = NetnsHandle::open_named(&ns_name)? {
            match with_netlink(&h, |h| async move {
                let links = link::dump_links(&h).await?;
                Ok(links
                    .into_iter()
                    .map(|l| l.name)
                    .filter(|n| n.starts_with("qr-") || n.starts_with("qg-"))
                    .collect::<Vec<_>>())
            }) {
                Ok(devs) => {
                    for d in devs {
                        let tap = format!("tap{}", &d[3..]);
                        if d.starts_with("qg-") {
                            gw_taps.insert(tap.clone());
                        }
                        taps.insert(tap);
                    }
                }
                Err(e) => keep(Err(e)),
            }
        }
        // Every tap: the gateway's carries the NAT programs, the `qr-` ones the internal hooks.
        keep(in_netns(&self.daemon_ns, || {
            for t in gw_taps.iter().chain(taps.iter()) {
                self.datapath.detach(t)?;
            }
            Ok(())
        }));
        let taps: Vec<String> = taps
            .into_iter()
            .filter(|t| self.owned.contains(Kind::Link, t))
            .collect();
        keep(self.delete_daemon_links(&taps));
        keep(ns::delete(&ns_name).and_then(|()| self.owned.forget(Kind::Netns, &ns_name)));
        match first_err {
            Some(e) => Err(e.context(format!("removing router {router_id}"))),
            None => Ok(()),
        }
    }

    // ---------------------------------------------------------------- reconcile

    /// Full pass: repairs what is missing, removes what this daemon created and the desired
    /// state no longer holds; never touches anything else. Dumps the daemon namespace's links
    /// and /run/netns once; each router is then converged inside its own namespace. A router
    /// that fails is reported in `failed` and the pass goes on.
    pub fn reconcile(&self, desired: &DesiredState) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        lock(&self.recent).prune();

        // Networks.
        let links = self.dump_daemon_links()?;
        for net in &desired.networks {
            if self.recently_removed(&format!("network:{}", net.id)) {
                continue;
            }
            let _g = self.lock_op();
            match self.converge_network(net, Some(&links)) {
                Ok(true) => report.repaired.push(names::bridge(&net.id)),
                Ok(false) => {}
                Err(e) => report.failed.push(format!("network {}: {e:#}", net.id)),
            }
        }

        // Routers this daemon created that are no longer desired.
        let desired_ns: HashSet<String> = desired
            .routers
            .iter()
            .map(|r| names::router_netns(&r.id))
            .collect();
        for (name, content) in self.owned.list(Kind::Netns)? {
            if desired_ns.contains(&name) {
                continue;
            }
            let mut it = content.split_whitespace();
            let (Some(id), Some(dp)) = (it.next(), it.next().and_then(|d| d.parse::<u32>().ok()))
            else {
                report
                    .failed
                    .push(format!("record of {name} is unreadable: {content:?}"));
                continue;
            };
            if self.recently_applied(&format!("router:{id}")) {
                continue;
            }
            let _g = self.lock_op();
            match self.remove_router_locked(id, dp) {
                Ok(()) => report.removed.push(name),
                Err(e) => report.failed.push(format!("{name}: {e:#}")),
            }
        }

        // Desired routers. Most passes only check from outside (namespace mounted, taps present,
        // up and enslaved, which also proves the veth peers inside exist); every
        // `FULL_CHECK_EVERY`th pass, and whenever that check fails, a router is converged from
        // inside its namespace (addresses, routes, sysctls).
        let links = self.dump_daemon_links()?;
        let full = self
            .passes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FULL_CHECK_EVERY);
        if full {
            // Filters removed from outside: the converge below attaches them again.
            let _g = self.lock_op();
            match self.check_filters(&desired.routers) {
                Ok(missing) => report.repaired.extend(
                    missing
                        .into_iter()
                        .map(|(router, tap)| format!("router {router}: filters on {tap}")),
                ),
                Err(e) => report.failed.push(format!("checking the filters: {e:#}")),
            }
        }
        for r in &desired.routers {
            if self.recently_removed(&format!("router:{}", r.id)) {
                continue;
            }
            if let Err(e) = validate_router(r) {
                report.failed.push(format!("router {}: {e:#}", r.id));
                continue;
            }
            let _g = self.lock_op();
            if !full && self.looks_converged(r, &links) {
                continue;
            }
            let mut created = Vec::new();
            match self.converge_router(r, Some(&links), &mut created) {
                Ok(changes) => {
                    if !changes.is_empty() {
                        report
                            .repaired
                            .push(format!("router {}: {}", r.id, changes.join(", ")));
                    }
                }
                Err(e) => {
                    self.rollback(r, created);
                    report.failed.push(format!("router {}: {e:#}", r.id));
                }
            }
        }

        // Devices of the daemon namespace this daemon created and nothing desires any more.
        let mut desired_links: HashSet<String> = desired
            .networks
            .iter()
            .map(|n| names::bridge(&n.id))
            .collect();
        for r in &desired.routers {
            desired_links.extend(plan(r).into_iter().map(|p| p.tap));
        }
        let _g = self.lock_op();
        let mut stale = Vec::new();
        for (name, content) in self.owned.list(Kind::Link)? {
            if desired_links.contains(&name) {
                continue;
            }
            let mut it = content.split_whitespace();
            let key = match (it.next(), it.next()) {
                (Some("bridge"), Some(id)) => format!("network:{id}"),
                (Some("tap"), Some(id)) => format!("router:{id}"),
                _ => String::new(),
            };
            if self.recently_applied(&key) {
                continue;
            }
            stale.push(name);
        }
        if !stale.is_empty() {
            self.delete_daemon_links(&stale)?;
            report.removed.extend(stale);
        }
        Ok(report)
    }

    /// The outside check of a router reconcile does between full passes: last converged to
    /// this very spec, namespace still mounted, every tap present, up, in its bridge, and the
    /// gateway tap still the device the datapath is attached to.
    fn looks_converged(&self, spec: &RouterSpec, links: &HashMap<String, LinkState>) -> bool {
        let memo = lock(&self.memo);
        let Some(m) = memo.get(&spec.id) else {
            return false;
        };
        if m.spec.as_ref() != Some(spec) {
            return false;
        }
        for p in plan(spec) {
            let Some(br) = links.get(&p.bridge).filter(|b| b.up) else {
                return false;
            };
            let Some(tap) = links.get(&p.tap) else {
                return false;
            };
            if !tap.up || tap.controller != Some(br.index) {
                return false;
            }
            if p.gateway && m.attached != Some((p.tap.clone(), tap.index)) {
                return false;
            }
        }
        drop(memo);
        matches!(ns::exists(&names::router_netns(&spec.id)), Ok(true))
    }

    fn dump_daemon_links(&self) -> Result<HashMap<String, LinkState>> {
        with_netlink(&self.daemon_ns, |h| async move {
            Ok(link::dump_links(&h)
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect())
        })
    }

    /// Removes every object this daemon created (router namespaces with their NAT state,
    /// taps, bridges) and their records. For `router-ctl daemon --purge` and test cleanup.
    pub fn purge(&self) -> Result<()> {
        let mut first_err: Option<anyhow::Error> = None;
        for (name, content) in self.owned.list(Kind::Netns)? {
            let mut it = content.split_whitespace();
            let id = it
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| name.strip_prefix("qrouter-").unwrap_or(&name).to_string());
            let dp = it.next().and_then(|d| d.parse::<u32>().ok());
            let _g = self.lock_op();
            let r = match dp {
                Some(dp) => self.remove_router_locked(&id, dp),
                None => ns::delete(&name).and_then(|()| self.owned.forget(Kind::Netns, &name)),
            };
            if let Err(e) = r {
                tracing::warn!("purging {name}: {e:#}");
                first_err.get_or_insert(e);
            }
        }
        let _g = self.lock_op();
        let links: Vec<String> = self
            .owned
            .list(Kind::Link)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        // Taps first, then bridges.
        let (taps, rest): (Vec<String>, Vec<String>) =
            links.into_iter().partition(|n| n.starts_with("tap"));
        for batch in [taps, rest] {
            if let Err(e) = self.delete_daemon_links(&batch) {
                tracing::warn!("purging devices: {e:#}");
                first_err.get_or_insert(e);
            }
        }
        lock(&self.memo).clear();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Per address family, the default route via the gateway's next hop (with an on-link host
/// route first when the next hop is outside the port's subnets); no default route of a family
/// without a next hop of it, nor without a gateway. Only the router's own namespace is touched.
async fn converge_routes(
    h: &rtnetlink::Handle,
    spec: &RouterSpec,
    gw_index: Option<u32>,
) -> Result<Vec<String>> {
    use netlink_packet_route::route::{RouteProtocol, RouteScope};
    let mut changes = Vec::new();
    let routes = link::main_routes(h).await?;
    // (next hop, gateway device) of each family.
    let targets: Vec<(std::net::IpAddr, u32)> = match (&spec.gateway, gw_index) {
        (Some(gw), Some(idx)) if spec.admin_state_up => {
            gw.next_hops.iter().map(|nh| (*nh, idx)).collect()
        }
        _ => Vec::new(),
    };
    // On-link host routes to off-subnet next hops.
    let onlink: Vec<(ipnet::IpNet, u32)> = targets
        .iter()
        .filter(|(nh, _)| spec.gateway.as_ref().is_some_and(|g| !g.port.on_link(*nh)))
        .map(|(nh, idx)| (ipnet::IpNet::from(*nh), *idx))
        .collect();
    for r in &routes {
        let is_our_onlink = r.is_host()
            && r.gateway.is_none()
            && r.scope == RouteScope::Link
            && r.protocol == RouteProtocol::Static
            && gw_index.is_some()
            && r.oif == gw_index;
        if is_our_onlink && !onlink.iter().any(|(dst, _)| *dst == r.dst) {
            link::delete_route(h, r).await?;
            changes.push(format!("route {} removed", r.dst));
        }
    }
    for (dst, idx) in &onlink {
        if !routes
            .iter()
            .any(|r| r.dst == *dst && r.oif == Some(*idx) && r.gateway.is_none())
        {
            link::replace_link_route(h, *dst, *idx).await?;
            changes.push(format!("route {dst} on-link"));
        }
    }
    for v4 in [true, false] {
        let defaults: Vec<&link::Route> = routes
            .iter()
            .filter(|r| r.is_default() && r.dst.addr().is_ipv4() == v4)
            .collect();
        match targets.iter().find(|(nh, _)| nh.is_ipv4() == v4) {
            Some((nh, idx)) => {
                let good = defaults.len() == 1
                    && defaults[0].gateway == Some(*nh)
                    && defaults[0].oif == Some(*idx);
                if !good {
                    for r in &defaults {
                        link::delete_route(h, r).await?;
                    }
                    link::replace_default_route(h, *nh, *idx).await?;
                    changes.push(format!("default via {nh}"));
                }
            }
            None => {
                for r in &defaults {
                    link::delete_route(h, r).await?;
                    changes.push("default route removed".into());
                }
            }
        }
    }
    Ok(changes)
}

/// Locks, ignoring poisoning (the protected data stays consistent: every update is one insert
/// or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, mac: [u8; 6], addr: &str) -> PortSpec {
        PortSpec {
            port_id: id.into(),
            network_id: "net-1".into(),
            mac,
            addresses: vec![addr.parse().unwrap()],
        }
    }

    fn router(interfaces: Vec<PortSpec>) -> RouterSpec {
        RouterSpec {
            id: "router-1".into(),
            dp_id: 1,
            admin_state_up: true,
            interfaces,
            gateway: None,
            floating_ips: vec![],
            port_forwardings: vec![],
        }
    }

    const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];

    #[test]
    fn valid_router_passes() {
        let r = router(vec![port("p1", MAC, "10.0.0.1/24")]);
        assert!(validate_router(&r).is_ok());
    }

    #[test]
    fn bad_specs_are_refused_before_touching_the_kernel() {
        let multicast = router(vec![port("p1", [1, 0, 0x5e, 0, 0, 1], "10.0.0.1/24")]);
        assert!(validate_router(&multicast).is_err());
        let zero = router(vec![port("p1", [0; 6], "10.0.0.1/24")]);
        assert!(validate_router(&zero).is_err());
        let unspecified = router(vec![port("p1", MAC, "0.0.0.0/24")]);
        assert!(validate_router(&unspecified).is_err());
        let clash = router(vec![
            port("abcdefghijk-1", MAC, "10.0.0.1/24"),
            port("abcdefghijk-2", MAC, "10.0.1.1/24"),
        ]);
        assert!(validate_router(&clash).is_err());
        let mut bad_id = router(vec![]);
        bad_id.id = "../etc".into();
        assert!(validate_router(&bad_id).is_err());
        let mut self_hop = router(vec![]);
        self_hop.gateway = Some(crate::model::spec::GatewaySpec {
            port: port("g1", MAC, "192.0.2.10/24"),
            next_hops: vec!["192.0.2.10".parse().unwrap()],
            enable_snat: true,
        });
        assert!(validate_router(&self_hop).is_err());
    }

    #[test]
    fn plan_names_devices_like_neutron() {
        let mut r = router(vec![port("0123456789abcdef", MAC, "10.0.0.1/24")]);
        r.gateway = Some(crate::model::spec::GatewaySpec {
            port: port("fedcba9876543210", MAC, "192.0.2.10/24"),
            next_hops: vec![],
            enable_snat: true,
        });
        let p = plan(&r);
        assert_eq!(p[0].inner, "qr-0123456789a");
        assert_eq!(p[0].tap, "tap0123456789a");
        assert_eq!(p[0].bridge, "brqnet-1");
        assert!(!p[0].gateway);
        assert_eq!(p[1].inner, "qg-fedcba98765");
        assert!(p[1].gateway);
    }
}
