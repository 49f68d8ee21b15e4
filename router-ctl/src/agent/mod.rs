//! `router-ctl agent`: the L3 agent of an existing neutron-server, over RabbitMQ. The same
//! realiser and datapath as the daemon; the desired state comes from neutron-server's
//! `sync_routers` instead of the local store.
//!
//! Layout: `config` (the TOML), `transport` (oslo's transport URL), `envelope` (oslo.messaging's
//! wire format), `rpc` (the AMQP session: queues, calls, casts, answers), `plugin` (the calls
//! to neutron-server), `notify` (what it sends the agent), `mapping` (router dict →
//! `RouterSpec`), `numbers` (router numbers kept across restarts), `book` (the routers held,
//! realised), `report` (report_state), `resync` (full resyncs), `sweep` (the periodic sweep, a
//! safety net for lost notifications at a bounded cost to neutron-server), `worker` (syncs,
//! coalescing, drift repair).
//!
//! The agent survives RabbitMQ: when the connection dies, realised routers stay as they are
//! (the kernel keeps forwarding and translating), and it reconnects with backoff, then
//! resyncs. Shutdown, like the daemon's, leaves every kernel object in place.

pub mod book;
pub mod config;
pub mod envelope;
pub mod mapping;
pub mod notify;
pub mod numbers;
pub mod plugin;
pub mod report;
pub mod resync;
pub mod rpc;
pub mod sweep;
pub mod transport;
pub mod worker;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, watch};

use self::{
    book::Book, config::AgentConfig, numbers::Numbers, plugin::Plugin, rpc::Session,
    transport::Endpoints, worker::Worker,
};
use crate::{
    datapath::Datapath,
    metrics::{self, Metrics},
    realise::{Realiser, RealiserConfig},
};

/// `router-ctl agent` options; each overrides the config file.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file ([neutron] transport_url, host, …).
    #[arg(long)]
    pub config: PathBuf,
    /// Router numbers and ownership records [default: /var/lib/router-ctl-agent].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/router-ctl-agent].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
}

/// Longest wait between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    crate::daemon::init_tracing();
    let mut cfg = AgentConfig::load(&args.config)?;
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    if let Some(b) = args.bpffs {
        cfg.bpffs = b;
    }
    let host = cfg.host()?;
    let endpoints = Endpoints::parse(&cfg.neutron.transport_url)?;
    let (datapath, realiser) = crate::daemon::open_kernel(
        RealiserConfig {
            state_dir: cfg.state_dir.clone(),
            physical_networks: cfg.physical_networks.clone(),
            vxlan: cfg.vxlan.clone(),
            announcements: cfg.send_arp_for_ha,
        },
        &cfg.bpffs,
        &cfg.nat,
        cfg.datapath.fast_path,
    )?;
    let numbers = Numbers::open(&cfg.state_dir)?;
    let (rt, metrics) =
        crate::daemon::start_runtime(&realiser, &datapath, cfg.metadata.upstream.clone())?;
    let worker = Worker {
        book: Arc::new(Mutex::new(Book::new(realiser.clone(), numbers))),
        metrics: metrics.clone(),
        host: host.clone(),
        rpc_timeout: Duration::from_secs(cfg.neutron.rpc_timeout),
        resync_every: Duration::from_secs(cfg.neutron.resync_interval),
        reconcile_every: Duration::from_secs(cfg.reconcile_interval.max(1)),
        chunk: plugin::SYNC_CHUNK_MAX,
        admin_state_up: true,
        synced: false,
        sweep_after: None,
    };
    rt.block_on(serve(
        cfg, host, endpoints, worker, realiser, datapath, metrics,
    ))
}

async fn serve(
    cfg: AgentConfig,
    host: String,
    endpoints: Endpoints,
    mut worker: Worker,
    realiser: Arc<Realiser>,
    datapath: Arc<Datapath>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (shutdown_tx, _) = broadcast::channel::<()>(1);
    let (stop_tx, mut stop) = watch::channel(false);
    {
        let mut signals = crate::daemon::Signals::new()?;
        let realiser = realiser.clone();
        tokio::spawn(async move {
            signals.recv().await;
            tracing::info!("shutting down (kernel state and pins are kept)");
            realiser.stop();
            let _ = stop_tx.send(true);
        });
    }
    let gc = tokio::spawn(crate::daemon::gc_loop(
        datapath,
        Duration::from_secs(cfg.nat.gc_interval.max(1)),
        metrics.clone(),
        shutdown_tx.subscribe(),
    ));
    if let Some(addr) = cfg.metrics.listen {
        let l = metrics::serve::listen(addr).await?;
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "metrics at /metrics");
        }
        let mut s = shutdown_tx.subscribe();
        tokio::spawn(metrics::serve::serve(l, metrics.clone(), async move {
            let _ = s.recv().await;
        }));
    }
    let (in_tx, mut inbound) = mpsc::unbounded_channel();
    let reporter = Reporter {
        host: host.clone(),
        uuid: uuid::Uuid::new_v4().to_string(),
        az: cfg.neutron.availability_zone.clone(),
        first: Arc::new(AtomicBool::new(true)),
        every: Duration::from_secs(cfg.neutron.report_interval),
        timeout: Duration::from_secs(cfg.neutron.rpc_timeout),
    };
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 0usize;
    println!(
        "router-ctl agent: host {host}, {} broker(s)",
        endpoints.0.len()
    );
    loop {
        if *stop.borrow() {
            break;
        }
        let ep = &endpoints.0[attempt % endpoints.0.len()];
        attempt += 1;
        let session = tokio::select! {
            s = Session::open(ep, &host, in_tx.clone()) => s,
            _ = stop.wait_for(|s| *s) => break,
        };
        let session = match session {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(
                    "cannot reach RabbitMQ at {}: {e:#}; retrying in {} s",
                    ep.masked,
                    backoff.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        tracing::info!(broker = session.broker, "connected to RabbitMQ");
        let (revived_tx, mut revived) = mpsc::unbounded_channel();
        // Registered (or alive again) before asking for routers: get_router_ids schedules
        // routers only to an agent neutron-server knows.
        reporter.report(&session, &worker.book, &revived_tx).await;
        let reports = tokio::spawn(reporter.clone().run(
            session.clone(),
            worker.book.clone(),
            revived_tx,
        ));
        let ended = worker
            .serve(&session, &mut inbound, &mut revived, &mut stop)
            .await;
        reports.abort();
        match ended {
            worker::Ended::Stopped => {
                session.close().await;
                break;
            }
            worker::Ended::Disconnected(why) => tracing::warn!(
                broker = session.broker,
                "lost RabbitMQ ({why}); routers stay as they are, reconnecting"
            ),
        }
    }
    let _ = shutdown_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), gc).await;
    Ok(())
}

/// The report_state loop of one session.
#[derive(Clone)]
struct Reporter {
    host: String,
    uuid: String,
    az: String,
    /// No report has succeeded yet in this process (`start_flag`).
    first: Arc<AtomicBool>,
    every: Duration,
    timeout: Duration,
}

impl Reporter {
    async fn run(
        self,
        session: Arc<Session>,
        book: Arc<Mutex<Book>>,
        revived: mpsc::UnboundedSender<()>,
    ) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the session's first report was made before the loop
        loop {
            tick.tick().await;
            self.report(&session, &book, &revived).await;
        }
    }

    /// One report; a `revived` answer asks the worker for a full resync.
    async fn report(
        &self,
        session: &Session,
        book: &Mutex<Book>,
        revived: &mpsc::UnboundedSender<()>,
    ) {
        {
            let counts = book.lock().unwrap_or_else(|p| p.into_inner()).counts();
            let first = self.first.load(Ordering::Relaxed);
            let state = report::agent_state(&self.host, &self.uuid, &self.az, counts, first);
            let plugin = Plugin {
                session,
                host: &self.host,
                timeout: self.timeout,
            };
            match plugin.report_state(state).await {
                Ok(answer) => {
                    self.first.store(false, Ordering::Relaxed);
                    tracing::debug!(answer, "report_state");
                    if answer == "revived" {
                        let _ = revived.send(());
                    }
                }
                Err(e) => tracing::warn!("report_state failed: {e}"),
            }
        }
    }
}
