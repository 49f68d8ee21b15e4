//! The agent's work while connected: a full resync at start, when report_state answers
//! `revived` and when the agent is set up again, awaited before anything else; otherwise the
//! routers that notifications named, several notifications for one router coalesced into one
//! `sync_routers`; every `resync_interval` a sweep that runs beside the notifications
//! (`sweep`); drift repair every `reconcile_interval`. The kernel work runs on blocking
//! threads; a lost connection ends the session without touching a realised router.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::{
    book::{Book, FipStatuses},
    envelope::Incoming,
    mapping,
    notify::{self, Notice},
    plugin::Plugin,
    resync::{self, Fetched},
    rpc::Session,
    sweep::{self, InFlight, Swept},
};
use crate::metrics::Metrics;

/// What the worker shares across sessions.
pub struct Worker {
    pub book: Arc<Mutex<Book>>,
    pub metrics: Arc<Metrics>,
    pub host: String,
    pub rpc_timeout: Duration,
    pub resync_every: Duration,
    pub reconcile_every: Duration,
    /// `sync_routers` chunk size (halved on timeouts, kept across syncs).
    pub chunk: usize,
    /// `agent_updated`'s last word.
    pub admin_state_up: bool,
    /// A full sync has completed in this process (drift repair waits for it).
    pub synced: bool,
    /// Where the next sweep goes on from (the last router the last one revisited).
    pub sweep_after: Option<String>,
}

/// Why a session's work ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection died (reconnect).
    Disconnected(String),
    /// Shutdown asked.
    Stopped,
}

/// Work to do before waiting again.
#[derive(Default)]
struct Pending {
    full: bool,
    update: BTreeSet<String>,
    remove: BTreeSet<String>,
}

impl Pending {
    /// Takes a notice in; notices for one router coalesce (a removal wins over an update that
    /// came before it, an update after a removal brings the router back). Returns the routers
    /// it named.
    fn take(&mut self, n: Notice, agent_up: &mut bool) -> Vec<String> {
        match n {
            Notice::RoutersUpdated(ids) | Notice::AddedToAgent(ids) => {
                for id in &ids {
                    self.remove.remove(id);
                    self.update.insert(id.clone());
                }
                ids
            }
            Notice::RouterDeleted(id) | Notice::RemovedFromAgent(id) => {
                self.update.remove(&id);
                self.remove.insert(id.clone());
                vec![id]
            }
            Notice::AgentUpdated { admin_state_up } => {
                if admin_state_up && !*agent_up {
                    self.full = true;
                }
                tracing::info!(admin_state_up, "agent updated");
                *agent_up = admin_state_up;
                Vec::new()
            }
        }
    }
}

impl Worker {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one session until its connection dies or `stop` is set.
    pub async fn serve(
        &mut self,
        session: &Session,
        inbound: &mut mpsc::UnboundedReceiver<Incoming>,
        revived: &mut mpsc::UnboundedReceiver<()>,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut pending = Pending {
            full: true,
            ..Pending::default()
        };
        let mut resync = tokio::time::interval(self.resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut repair = tokio::time::interval(self.reconcile_every);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        repair.tick().await;
        let mut retry_at: Option<Instant> = None;
        // The sweep's fetch, when one is under way.
        let mut periodic: Option<InFlight<'_>> = None;
        loop {
            if pending.full {
                // A full sync is due before anything else: it supersedes the sweep.
                periodic = None;
            }
            if retry_at.is_none_or(|t| Instant::now() >= t) {
                retry_at = None;
                if let Err(e) = self.work(session, &mut pending).await {
                    tracing::warn!("sync failed (retried in 5 s): {e:#}");
                    retry_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            let wake = retry_at.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                why = session.closed() => return Ended::Disconnected(why),
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
                msg = inbound.recv() => {
                    let Some(first) = msg else { return Ended::Stopped };
                    let mut named = self.take(first, &mut pending);
                    // Everything already queued joins this round: coalescing.
                    while let Ok(m) = inbound.try_recv() {
                        named.extend(self.take(m, &mut pending));
                    }
                    if let Some(p) = periodic.as_mut() {
                        p.touched.extend(named);
                    }
                }
                Some(()) = revived.recv() => {
                    tracing::info!("neutron-server says the agent was revived: full resync");
                    pending.full = true;
                }
                _ = resync.tick() => {
                    if !pending.full && periodic.is_none() {
                        periodic = Some(InFlight::start(
                            session,
                            self.host.clone(),
                            self.rpc_timeout,
                            self.chunk,
                            self.book().known(),
                            self.sweep_after.clone(),
                        ));
                    }
                }
                fetched = async {
                    match periodic.as_mut() {
                        Some(p) => p.done().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let touched = periodic.take().map(|p| p.touched).unwrap_or_default();
                    let host = self.host.clone();
                    let plugin = Plugin {
                        session,
                        host: &host,
                        timeout: self.rpc_timeout,
                    };
                    let settled = match fetched {
                        Ok(f) => self.settle_sweep(&plugin, f, &touched).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = settled {
                        tracing::warn!("periodic sweep failed (tried again in resync_interval): {e:#}");
                    }
                }
                _ = repair.tick() => self.repair().await,
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Takes a message in; returns the routers it named.
    fn take(&mut self, m: Incoming, pending: &mut Pending) -> Vec<String> {
        match notify::parse(&m.method, &m.args) {
            Ok(n) => {
                tracing::debug!(?n, "notification");
                pending.take(n, &mut self.admin_state_up)
            }
            Err(e) => {
                tracing::warn!(method = m.method, "ignored a message: {e:#}");
                Vec::new()
            }
        }
    }

    /// Does what is pending: a full sync, else removals and updates. What fails stays pending.
    async fn work(&mut self, session: &Session, pending: &mut Pending) -> Result<()> {
        let host = self.host.clone();
        let plugin = Plugin {
            session,
            host: &host,
            timeout: self.rpc_timeout,
        };
        if pending.full {
            self.full_sync(&plugin).await?;
            pending.full = false;
            pending.update.clear();
            pending.remove.clear();
            return Ok(());
        }
        if !pending.remove.is_empty() {
            let ids = std::mem::take(&mut pending.remove);
            self.blocking(move |b| {
                for id in &ids {
                    b.remove(id);
                }
                FipStatuses::new()
            })
            .await?;
        }
        if !pending.update.is_empty() {
            let ids: Vec<String> = pending.update.iter().cloned().collect();
            let (dicts, chunk) = plugin.sync_routers(&ids, self.chunk).await?;
            self.chunk = chunk;
            self.learn_segments(&plugin, &dicts).await;
            let returned: BTreeSet<String> = dicts
                .iter()
                .filter_map(mapping::router_id)
                .map(str::to_string)
                .collect();
            let gone: Vec<String> = ids
                .iter()
                .filter(|i| !returned.contains(*i))
                .cloned()
                .collect();
            let statuses = self
                .blocking(move |b| {
                    // Not returned: deleted, or no longer hosted here.
                    for id in &gone {
                        b.remove(id);
                    }
                    b.apply_all(&dicts)
                })
                .await?;
            pending.update.clear();
            report_fips(&plugin, statuses).await;
        }
        Ok(())
    }

    /// Every router scheduled here, fetched and realised; the ones known and no longer
    /// scheduled here torn down; logs `full sync done` with the fetch's and the whole sync's
    /// time. Awaited before anything else, so no notice overtakes it.
    async fn full_sync(&mut self, plugin: &Plugin<'_>) -> Result<()> {
        let Fetched {
            dicts,
            chunk,
            segments,
            started,
            routers_ms,
            networks_ms,
        } = resync::fetch_all(plugin, self.chunk).await?;
        self.chunk = chunk;
        // neutron-server's share of the sync (router ids, chunked dicts, segments), logged
        // apart from the realising so an operator sees which side bounds a slow resync.
        let fetch_ms = started.elapsed().as_millis() as u64;
        let n = dicts.len();
        let segments_n = segments.len();
        let keep: BTreeSet<String> = dicts
            .iter()
            .filter_map(mapping::router_id)
            .map(str::to_string)
            .collect();
        self.book().segments = segments;
        let statuses = self
            .blocking(move |b| {
                b.remove_all_but(&keep);
                b.apply_all(&dicts)
            })
            .await?;
        report_fips(plugin, statuses).await;
        self.synced = true;
        tracing::info!(
            routers = n,
            fetch_ms,
            routers_ms,
            networks = segments_n,
            networks_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "full sync done"
        );
        Ok(())
    }

    /// Realises what a sweep fetched (see `sweep`): the dicts, but those of routers notices
    /// named since it began; the routers gone from the schedule, or no longer returned, torn
    /// down; the segments of the networks it fetched refreshed, and those no router is on
    /// forgotten. Logs `periodic sweep done` with what it did and neutron-server's time.
    async fn settle_sweep(
        &mut self,
        plugin: &Plugin<'_>,
        swept: Swept,
        touched: &BTreeSet<String>,
    ) -> Result<()> {
        let Swept {
            plan,
            scheduled,
            fetched:
                Fetched {
                    dicts,
                    chunk,
                    segments,
                    started,
                    routers_ms,
                    networks_ms,
                },
        } = swept;
        self.chunk = chunk;
        let fetch_ms = started.elapsed().as_millis() as u64;
        let fetched = dicts.len();
        let (dicts, remove) = sweep::settle(&plan, dicts, touched);
        let removed = remove.len();
        self.book().segments.extend(segments);
        let statuses = self
            .blocking(move |b| {
                for id in &remove {
                    b.remove(id);
                }
                let st = b.apply_all(&dicts);
                b.prune_segments();
                st
            })
            .await?;
        report_fips(plugin, statuses).await;
        self.sweep_after = plan.after;
        tracing::info!(
            scheduled,
            new = plan.new,
            revisited = plan.fetch.len() - plan.new,
            fetched,
            removed,
            left_to_notices = touched.len(),
            fetch_ms,
            routers_ms,
            networks_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "periodic sweep done"
        );
        Ok(())
    }

    /// Asks neutron-server for the segments of networks not seen yet; a network it cannot
    /// describe stays unknown (its routers are then refused with that reason).
    async fn learn_segments(&self, plugin: &Plugin<'_>, dicts: &[Value]) {
        let unknown = self.book().unknown_networks(dicts);
        if unknown.is_empty() {
            return;
        }
        let learnt = resync::fetch_segments(plugin, unknown).await;
        self.book().segments.extend(learnt);
    }

    /// Drift repair over what is held (after the first full sync).
    async fn repair(&self) {
        if !self.synced {
            return;
        }
        let book = self.book.clone();
        let metrics = self.metrics.clone();
        let r = tokio::task::spawn_blocking(move || {
            let b = book.lock().unwrap_or_else(|p| p.into_inner());
            let start = Instant::now();
            let r = crate::net::worker::inline(|| b.reconcile());
            if let Some(r) = &r {
                metrics.reconcile_pass(r.as_ref().ok(), start.elapsed());
            }
            r
        })
        .await;
        match r {
            Ok(Some(Ok(rep))) if !rep.repaired.is_empty() || !rep.removed.is_empty() => {
                tracing::info!(repaired = ?rep.repaired, removed = ?rep.removed, "reconciled")
            }
            Ok(Some(Err(e))) => tracing::warn!("reconcile failed: {e:#}"),
            Err(e) => tracing::error!("reconcile task failed: {e}"),
            _ => {}
        }
    }

    async fn blocking(
        &self,
        f: impl FnOnce(&mut Book) -> FipStatuses + Send + 'static,
    ) -> Result<FipStatuses> {
        let book = self.book.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
            // The realiser's work in the agent's own namespace runs on this thread.
            crate::net::worker::inline(|| f(&mut b))
        })
        .await?)
    }
}

/// Tells neutron-server the floating IP statuses that changed.
async fn report_fips(plugin: &Plugin<'_>, statuses: FipStatuses) {
    for (router, st) in statuses {
        match plugin.update_floatingip_statuses(&router, &st).await {
            Ok(()) => tracing::info!(router, statuses = ?st, "floating IP statuses reported"),
            Err(e) => tracing::warn!(router, "update_floatingip_statuses: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_for_one_router_coalesce() {
        let mut p = Pending::default();
        let mut up = true;
        p.take(
            Notice::RoutersUpdated(vec!["a".into(), "b".into()]),
            &mut up,
        );
        p.take(Notice::RoutersUpdated(vec!["a".into()]), &mut up);
        p.take(Notice::RouterDeleted("b".into()), &mut up);
        assert_eq!(p.update, BTreeSet::from(["a".to_string()]));
        assert_eq!(p.remove, BTreeSet::from(["b".to_string()]));
        p.take(Notice::AddedToAgent(vec!["b".into()]), &mut up);
        assert!(
            p.remove.is_empty() && p.update.len() == 2,
            "added back after the removal"
        );
        p.take(Notice::RemovedFromAgent("a".into()), &mut up);
        assert_eq!(p.remove, BTreeSet::from(["a".to_string()]));
        p.take(
            Notice::AgentUpdated {
                admin_state_up: false,
            },
            &mut up,
        );
        assert!(!p.full && !up);
        p.take(
            Notice::AgentUpdated {
                admin_state_up: true,
            },
            &mut up,
        );
        assert!(p.full && up, "set up again: full resync");
    }
}
