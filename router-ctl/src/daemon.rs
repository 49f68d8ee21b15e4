//! `router-ctl daemon`: loads config and datapath, serves the API at once, resyncs in the
//! background (the reconcile loop's first pass) and keeps reconciling until SIGTERM/SIGINT.
//!
//! Serving before the resync is safe: the resync takes the store lock per router (see
//! `realise::reconcile`), so an API call lands between two routers of the pass, never inside
//! one, and a router an API call converges first is simply found converged by the pass.
//!
//! Shutdown leaves every kernel object and pin in place: routers keep forwarding and sessions
//! keep translating while the daemon is down, and the next start resyncs. Only `--purge`
//! removes what this state directory owns. A shutdown never leaves a router half made: from
//! before the start-up resync on, SIGTERM and SIGINT are caught, a reconcile pass then ends
//! after the router in hand, and API calls in flight finish (the runtime waits for its
//! blocking tasks before the process exits).

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::broadcast;

use crate::{
    api::{self, ApiState},
    background::Background,
    config::{Config, TokenConfig},
    datapath::{self, Datapath, GcReport, sessions::GcPace},
    metrics::{self, Metrics},
    model::spec::{DesiredState, NetworkSpec, RouterSpec},
    realise::{Current, Realiser, RealiserConfig},
    store::{self, Store},
};

/// File in the state directory holding the generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Database file in the state directory.
pub const DB_FILE: &str = "router.db";
/// Project of the generated admin token.
pub const ADMIN_PROJECT: &str = "admin";

/// Daemon options; each overrides the config file.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file (every key optional).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// API listen address [default: 127.0.0.1:9696].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Database, admin token and ownership records [default: /var/lib/router-ctl].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/router-ctl].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Remove every kernel object and pin this state directory owns, then exit.
    #[arg(long)]
    pub purge: bool,
}

/// The configuration file with the command-line overrides applied.
pub fn effective_config(args: &DaemonArgs) -> anyhow::Result<Config> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(b) = &args.bpffs {
        cfg.bpffs = b.clone();
    }
    Ok(cfg)
}

/// The configured tokens, or (none configured) the admin token kept in the state directory,
/// generated with mode 0600 on first start.
pub fn load_tokens(cfg: &Config) -> anyhow::Result<BTreeMap<String, TokenConfig>> {
    if !cfg.tokens.is_empty() {
        return Ok(cfg.tokens.clone());
    }
    let token = admin_token(&cfg.state_dir)?;
    Ok(BTreeMap::from([(
        token,
        TokenConfig {
            project_id: ADMIN_PROJECT.to_string(),
            admin: true,
        },
    )]))
}

fn admin_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join(format!("{ADMIN_TOKEN_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the daemon until a shutdown signal (or, with `--purge`, cleans up and returns).
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    init_tracing();
    let cfg = effective_config(&args)?;
    let (datapath, realiser) = open_kernel(
        RealiserConfig {
            state_dir: cfg.state_dir.clone(),
            physical_networks: cfg.physical_networks.clone(),
            vxlan: None,
            announcements: cfg.send_arp_for_ha,
        },
        &cfg.bpffs,
        &cfg.nat,
        cfg.datapath.fast_path,
    )?;
    if args.purge {
        return purge(&realiser, &datapath);
    }
    let tokens = load_tokens(&cfg)?;
    let store = Store::open(&cfg.state_dir.join(DB_FILE))
        .with_context(|| format!("opening {}", cfg.state_dir.join(DB_FILE).display()))?;
    // The runtime exists before the first resync: the metadata proxies it starts run on it.
    let (rt, metrics) = start_runtime(&realiser, &datapath, cfg.metadata.upstream.clone())?;
    // Signals are caught from here on, the start-up resync included: SIGTERM stops the
    // realiser's passes between two routers (the default action would end the process in the
    // middle of one and leave it half made until the next start).
    let signalled = {
        let _in_rt = rt.enter();
        let mut signals = Signals::new()?;
        let realiser = realiser.clone();
        rt.spawn(async move {
            signals.recv().await;
            tracing::info!("shutting down: the reconcile pass ends after the router in hand");
            realiser.stop();
        })
    };
    let state = ApiState::with_physical_networks(
        store,
        Arc::new(metrics::timed::Timed::new(
            realiser.clone(),
            metrics.clone(),
        )),
        tokens,
        cfg.physical_networks.keys().cloned().collect(),
        Some(datapath.clone()),
    )
    .with_l3(crate::api::L3Settings {
        enable_snat_by_default: cfg.nat.enable_snat_by_default,
        max_routes: cfg.quotas.max_routes,
    });
    rt.block_on(serve(cfg, state, realiser, datapath, metrics, signalled))
}

/// The kernel side both modes share: the datapath (pins under `bpffs`) and the realiser over
/// it, built on the calling thread, whose namespace the realiser remembers.
pub(crate) fn open_kernel(
    cfg: RealiserConfig,
    bpffs: &Path,
    nat: &crate::config::NatConfig,
    fast_path: bool,
) -> anyhow::Result<(Arc<Datapath>, Arc<Realiser>)> {
    // Before the first router's descriptors, while no thread would wait for it to grow.
    crate::fd_table::presize();
    datapath::object()?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    let datapath = Datapath::open(bpffs, nat).context("opening the datapath")?;
    let realiser = Arc::new(Realiser::new(cfg, datapath.clone()).context("starting the realiser")?);
    realiser
        .set_fast_path(fast_path)
        .context("turning the fast path off")?;
    Ok((datapath, realiser))
}

/// The async runtime, the metadata proxies hooked to the realiser (they run on it), and the
/// metrics reading the datapath.
pub(crate) fn start_runtime(
    realiser: &Arc<Realiser>,
    datapath: &Arc<Datapath>,
    metadata_upstream: Option<String>,
) -> anyhow::Result<(tokio::runtime::Runtime, Arc<Metrics>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    realiser.set_router_hook(crate::metadata::MetadataProxies::new(
        metadata_upstream,
        rt.handle().clone(),
    )?);
    let mut metrics = Metrics::new();
    metrics.collect_datapath(datapath.clone(), realiser.clone());
    metrics.collect_announcements(realiser.announcements_sent());
    Ok((rt, Arc::new(metrics)))
}

/// `--purge`: every kernel object the state directory's records name, then the pins.
fn purge(realiser: &Realiser, datapath: &Datapath) -> anyhow::Result<()> {
    let kernel = realiser.purge().context("removing kernel objects");
    let pins = datapath.purge().context("removing datapath pins");
    kernel?;
    pins?;
    println!("router-ctl daemon: purged");
    Ok(())
}

async fn serve(
    cfg: Config,
    state: ApiState,
    realiser: Arc<Realiser>,
    datapath: Arc<Datapath>,
    metrics: Arc<Metrics>,
    signalled: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let (shutdown_tx, _) = broadcast::channel::<()>(1);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match cfg.metrics.listen {
        Some(a) => Some(metrics::serve::listen(a).await?),
        None => None,
    };

    let passes = Background::start("reconcile")?;
    let reconcile = tokio::spawn(reconcile_loop(
        state.clone(),
        realiser,
        passes,
        Duration::from_secs(cfg.reconcile_interval.max(1)),
        metrics.clone(),
        shutdown_tx.subscribe(),
    ));
    let gc = tokio::spawn(gc_loop(
        datapath,
        Duration::from_secs(cfg.nat.gc_interval.max(1)),
        metrics.clone(),
        shutdown_tx.subscribe(),
    ));
    let mut api_shutdown = shutdown_tx.subscribe();
    let api = tokio::spawn(metrics::serve::serve_counted(
        listener,
        api::service(state),
        metrics.clone(),
        async move {
            let _ = api_shutdown.recv().await;
        },
    ));
    let metrics_server = metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "metrics at /metrics");
        }
        let mut stop = shutdown_tx.subscribe();
        tokio::spawn(metrics::serve::serve(l, metrics, async move {
            let _ = stop.recv().await;
        }))
    });

    println!("router-ctl daemon: listening on {addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "ready");

    signalled.await.context("waiting for a shutdown signal")?;
    tracing::info!("shutting down (kernel state and pins are kept)");
    let _ = shutdown_tx.send(());
    let drain = async {
        let _ = api.await;
        let _ = reconcile.await;
        let _ = gc.await;
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("open connections did not close within 5 s; exiting anyway");
    }
    Ok(())
}

/// SIGTERM and SIGINT, caught from creation on (inside the runtime).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The clock of a periodic task: a tick that comes late delays the next ones (no burst of
/// passes to catch up after a long one).
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Waits for the next tick; false once the daemon is shutting down.
async fn next_tick(
    tick: &mut tokio::time::Interval,
    shutdown: &mut broadcast::Receiver<()>,
) -> bool {
    tokio::select! {
        _ = shutdown.recv() => false,
        _ = tick.tick() => true,
    }
}

/// The first pass (the start-up resync: every router converged from inside its namespace,
/// adopting what is in place), then one every `every`: planned from a snapshot of the store,
/// each change made under the store lock with the state it holds then (`StoreNow`), so API
/// calls wait for one router, not for the pass. The snapshot is read again only when
/// something was committed since the last one (reading it is O(routers): 180 ms a pass at
/// 10 000 routers, for nothing while no one calls the API).
///
/// While the API is busy (something was committed since the previous tick) a pass is put off,
/// up to `BUSY_DEFERRALS` ticks in a row: each call realises its own change, and a pass over
/// thousands of routers, its snapshot read again every time, took CPU and the operation lock
/// from the calls (10 000 routers made through the API: 166 s with a pass every 5 s, 137 s
/// without; per-router p99 40 → 27 ms). Drift is still repaired within
/// `(1 + BUSY_DEFERRALS) × every` under any load, within `every` when the API is quiet.
/// The passes run on `passes`, a thread below the API's priority (see `background`), so the
/// one that does come while the API is busy takes only the CPU the calls leave.
async fn reconcile_loop(
    state: ApiState,
    realiser: Arc<Realiser>,
    passes: Background,
    every: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut tick = ticker(every);
    let mut first = true;
    // The last snapshot, with the store's version it was read at.
    let mut snapshot: Option<api::Versioned<DesiredState>> = None;
    // The store's version at the previous tick, and the passes put off since the last one.
    let mut seen: Option<i64> = None;
    let mut deferred = 0;
    while next_tick(&mut tick, &mut shutdown).await {
        if !first {
            let now = store_version(&state).await;
            let busy = now.is_some() && now != seen;
            seen = now;
            if busy && deferred < BUSY_DEFERRALS {
                deferred += 1;
                continue;
            }
        }
        deferred = 0;
        let st = state.clone();
        let r = realiser.clone();
        let m = metrics.clone();
        let start = std::time::Instant::now();
        let last = snapshot.clone();
        let res = passes
            .run(move || {
                let read = st
                    .read_if_changed(last, store::desired_state)
                    .map_err(anyhow::Error::from)?;
                let desired = &read.value;
                let rep = r.reconcile_versioned(desired, &StoreNow(&st), read.version());
                m.reconcile_pass(rep.as_ref().ok(), start.elapsed());
                let routers = desired.routers.len();
                rep.map(|rep| (rep, routers, read))
            })
            .await
            .map(|res| {
                res.map(|(rep, routers, read)| {
                    snapshot = Some(read);
                    (rep, routers)
                })
            });
        match res {
            Ok(Ok((rep, _))) if first && rep.abandoned => {
                tracing::info!("start-up resync abandoned by the shutdown (kernel state is kept)");
                return;
            }
            Ok(Ok((rep, routers))) if first => tracing::info!(
                routers,
                repaired = rep.repaired.len(),
                removed = rep.removed.len(),
                failed = rep.failed.len(),
                secs = start.elapsed().as_secs_f64(),
                "start-up resync done"
            ),
            Ok(Ok((rep, _))) => {
                if rep.abandoned {
                    tracing::info!("reconcile pass abandoned by the shutdown");
                }
                if !rep.repaired.is_empty() || !rep.removed.is_empty() {
                    tracing::info!(repaired = ?rep.repaired, removed = ?rep.removed, "reconciled");
                }
                // What could not be converged comes back every pass (and keeps the next pass
                // walking everything): say what and why.
                if !rep.failed.is_empty() {
                    tracing::warn!(failed = ?rep.failed, "reconcile pass could not converge");
                }
            }
            Ok(Err(e)) if first => {
                tracing::warn!("start-up resync incomplete (the reconcile loop retries): {e:#}")
            }
            Ok(Err(e)) => tracing::warn!("reconcile failed: {e:#}"),
            Err(e) => tracing::error!("reconcile pass failed: {e:#}"),
        }
        if first {
            seen = store_version(&state).await;
        }
        first = false;
    }
}

/// The store's commit counter (`ApiState::store_version`), read off the runtime's workers.
async fn store_version(state: &ApiState) -> Option<i64> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.store_version())
        .await
        .ok()
        .flatten()
}

/// Ticks of the reconcile loop a busy API may put a pass off in a row (see `reconcile_loop`).
const BUSY_DEFERRALS: u32 = 5;

/// The store as a reconcile pass's `Current`: each look holds the store lock for as long as
/// the pass acts on what it saw. A read that fails skips the object this pass (logged).
struct StoreNow<'a>(&'a ApiState);

impl Current for StoreNow<'_> {
    fn router(&self, id: &str, f: &mut dyn FnMut(Option<&RouterSpec>)) {
        self.0
            .with_store(|s| match store::router_spec(s.conn(), id) {
                Ok(spec) => f(spec.as_ref()),
                Err(e) => tracing::warn!("reconcile: reading router {id}: {e:?}"),
            })
    }

    fn network(&self, id: &str, f: &mut dyn FnMut(Option<&NetworkSpec>)) {
        self.0
            .with_store(|s| match store::network_spec(s.conn(), id) {
                Ok(spec) => f(spec.as_ref()),
                Err(e) => tracing::warn!("reconcile: reading network {id}: {e:?}"),
            })
    }
}

/// Runs the session GC: every `every`, and every second while the table or a router's share
/// of it is crowded or new flows are refused for want of room (`datapath::sessions::GcPace`).
pub(crate) async fn gc_loop(
    datapath: Arc<Datapath>,
    every: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut tick = ticker(GcPace::POLL);
    let limits = datapath.limits();
    let mut pace = GcPace::new(every, &limits);
    while next_tick(&mut tick, &mut shutdown).await {
        let dp = datapath.clone();
        let m = metrics.clone();
        // `pace` moves into the blocking task and comes back with its result.
        let pass = tokio::task::spawn_blocking(move || {
            let r = gc_if_due(&dp, &mut pace, &m);
            (pace, r)
        });
        pace = match pass.await {
            Ok((p, r)) => {
                match r {
                    Ok(Some(report)) => log_gc(&report, &limits),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("session gc failed: {e:#}"),
                }
                p
            }
            Err(e) => {
                tracing::error!("session gc task failed: {e}");
                GcPace::new(every, &limits)
            }
        };
    }
}

/// Runs a GC pass if `pace` says one is due; a failed pass counts as run (it is retried after
/// the interval, not every second).
fn gc_if_due(
    dp: &Datapath,
    pace: &mut GcPace,
    metrics: &Metrics,
) -> anyhow::Result<Option<GcReport>> {
    let pressure = dp.pressure()?;
    let now = std::time::Instant::now();
    if !pace.due(now, &pressure) {
        return Ok(None);
    }
    let report = dp.gc();
    metrics.gc_pass(report.as_ref().ok(), now.elapsed());
    pace.ran(now, &pressure, report.as_ref().map_or(0, |r| r.entries));
    report.map(Some)
}

/// Logs a GC pass: expiries at debug level, early drops and a table still crowded as warnings.
fn log_gc(r: &GcReport, limits: &datapath::sessions::Limits) {
    if r.expired > 0 {
        tracing::debug!(expired = r.expired, entries = r.entries, "session gc");
    }
    if r.dropped_early > 0 {
        tracing::warn!(
            dropped = r.dropped_early,
            entries = r.entries,
            "session table crowded: dropped sessions that were not assured early"
        );
    }
    if r.entries >= limits.table_high() {
        tracing::warn!(
            entries = r.entries,
            capacity = limits.capacity,
            "session table still crowded with answered sessions: new flows are dropped (drop_table_full) once it is full"
        );
    }
}
