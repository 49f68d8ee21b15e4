//! The periodic full pass: repairs what is missing, removes what this daemon created and the
//! desired state no longer holds, and never touches anything else.
//!
//! A pass plans from a snapshot of the desired state and acts through `Current`: the daemon's
//! implementation takes the store lock around each change and hands the pass the state the
//! store holds then, so API calls are serialised with the pass router by router instead of
//! waiting for the whole pass, and nothing an API call made or removed after the snapshot is
//! undone (whatever is recorded and not desired *now* is stale). A `DesiredState` is its own
//! `Current`: a caller that holds the store for the whole pass, or has no store.
//!
//! A pass that finds nothing changed since the last clean one skips its outside walk: the
//! same desired state (the caller's version of it), no link notification applied in the
//! daemon's namespace, no mount made or removed (router namespaces are mounts), no ownership
//! record written, and the last pass repaired, removed and failed nothing. Each of those is
//! how drift or a change shows from outside, so the walk could only find what the last one
//! found; the pass still looks at its few routers from inside (what only shows there). The
//! walk is the part of a pass that grows with the routers (≈ 35 ms of CPU a pass at 10 000 on
//! the bench's Xeon VM, every 5 s at rest).

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
};

use anyhow::Result;

use super::{
    FULL_CHECK_EVERY, INSIDE_CHECKS_MAX, Realiser, lock,
    router::{Look, plan},
    validate::validate_router,
};
use crate::{
    model::spec::{DesiredState, NetworkSpec, RouterSpec, Segment, names},
    net::{
        LinkState, linkwatch, ns,
        owned::{Kind, Record},
    },
};

/// What a pass saw of what moves when the desired state changes or a router drifts from
/// outside (with the mount table's own change signal, see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// The desired state's version (the store's commit counter the snapshot was read at).
    version: i64,
    /// The daemon namespace's link table: dumps and notifications applied.
    links: linkwatch::Counts,
    /// Ownership records written or forgotten.
    owned: u64,
}

/// The desired state as the store holds it at the moment of a change (see the module comment).
/// Each method runs `f` while no API call can change what it was given.
pub trait Current: Sync {
    /// `f` with router `id`'s spec (None: the router is gone).
    fn router(&self, id: &str, f: &mut dyn FnMut(Option<&RouterSpec>));
    /// `f` with network `id`'s spec (None: the network is gone).
    fn network(&self, id: &str, f: &mut dyn FnMut(Option<&NetworkSpec>));
}

impl Current for DesiredState {
    fn router(&self, id: &str, f: &mut dyn FnMut(Option<&RouterSpec>)) {
        f(self.routers.iter().find(|r| r.id == id))
    }
    fn network(&self, id: &str, f: &mut dyn FnMut(Option<&NetworkSpec>)) {
        f(self.networks.iter().find(|n| n.id == id))
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
    /// The pass ended early because the realiser was stopped (see `Realiser::stop`); every
    /// object it touched was finished.
    pub abandoned: bool,
    /// Nothing had changed since the last clean pass: only the routers of this pass's inside
    /// slice were looked at (see the module comment).
    pub quiet: bool,
}

/// `len` routers from `start` on, wrapping around the `n` desired.
#[derive(Clone, Copy, Debug)]
struct InsideSlice {
    start: usize,
    len: usize,
    n: usize,
}

impl InsideSlice {
    fn contains(&self, i: usize) -> bool {
        i < self.n && (i + self.n - self.start) % self.n < self.len
    }
}

/// What every phase of one pass works from (the snapshot and the store's view) and the report
/// they add to, handed from phase to phase.
struct Pass<'a> {
    desired: &'a DesiredState,
    current: &'a dyn Current,
    report: ReconcileReport,
    /// The daemon namespace's links as the network phase found them; the router phase reuses
    /// them when nothing was changed in between, and otherwise looks up what changed.
    links: Option<HashMap<String, LinkState>>,
}

impl Realiser {
    /// Full pass over `desired`. Takes the daemon namespace's links (dumped by the first pass,
    /// then kept current from the kernel's link notifications, see `net::linkwatch`);
    /// each router is then converged inside its own namespace. A router that fails is reported in
    /// `failed` and the pass goes on. Once the realiser is stopped the pass ends between two
    /// objects, never inside one (`abandoned` in the report).
    pub fn reconcile(&self, desired: &DesiredState) -> Result<ReconcileReport> {
        self.reconcile_with(desired, desired)
    }

    /// `reconcile` planned from the snapshot `desired`, each change made through `current`
    /// (the store's state at that moment; see the module comment).
    pub fn reconcile_with(
        &self,
        desired: &DesiredState,
        current: &dyn Current,
    ) -> Result<ReconcileReport> {
        self.reconcile_versioned(desired, current, None)
    }

    /// `reconcile_with`, told the version of `desired` (it moves with every change of it):
    /// a pass that finds nothing changed since the last clean one walks only its inside slice
    /// (see the module comment). Without a version every pass walks everything.
    pub fn reconcile_versioned(
        &self,
        desired: &DesiredState,
        current: &dyn Current,
        version: Option<i64>,
    ) -> Result<ReconcileReport> {
        // Read before the pass: whatever changes during it makes the next pass's differ.
        let mounts_changed = self.mounts.as_ref().is_none_or(|m| m.changed());
        let seen = match (version, &self.link_table) {
            (Some(version), Some(t)) => Some(Seen {
                version,
                links: t.counts(),
                owned: self.owned.writes(),
            }),
            _ => None,
        };
        let last = lock(&self.last_clean).take();
        let quiet = !mounts_changed && seen.is_some() && last == seen;
        if !quiet {
            // What moved since the last clean pass (None: the last pass was not clean).
            tracing::debug!(mounts_changed, last_clean = ?last, now = ?seen, "reconcile pass walks");
        }
        let mut pass = Pass {
            desired,
            current,
            report: ReconcileReport {
                quiet,
                ..ReconcileReport::default()
            },
            links: None,
        };
        if quiet {
            self.reconcile_routers(&mut pass)?;
        } else {
            self.reconcile_networks(&mut pass)?;
            self.remove_stale_routers(&mut pass)?;
            self.reconcile_routers(&mut pass)?;
            if !self.abandon(&mut pass.report) {
                self.remove_stale_links(&mut pass)?;
            }
        }
        let r = &pass.report;
        if r.repaired.is_empty() && r.removed.is_empty() && r.failed.is_empty() && !r.abandoned {
            *lock(&self.last_clean) = seen;
        }
        Ok(pass.report)
    }

    /// Whether the pass is to end here (stopped); notes it in the report.
    fn abandon(&self, report: &mut ReconcileReport) -> bool {
        report.abandoned |= self.stopping();
        report.abandoned
    }

    fn reconcile_networks(&self, pass: &mut Pass<'_>) -> Result<()> {
        let links = self.daemon_links()?;
        for net in &pass.desired.networks {
            if self.abandon(&mut pass.report) {
                return Ok(());
            }
            // The snapshot's view first: a bridge that is up (and no uplink to check) needs no
            // look at the store.
            if matches!(net.segment, Segment::Local)
                && links.get(&names::bridge(&net.id)).is_some_and(|b| b.up)
            {
                // A local network's bridge has no uplink (what retiring it needs to know).
                lock(&self.uplinks).entry(net.id.clone()).or_insert(None);
                continue;
            }
            pass.current.network(&net.id, &mut |now| {
                let Some(net) = now else { return };
                let _g = self.lock_op();
                match self.converge_network(net, Some(&links)) {
                    Ok(true) => pass.report.repaired.push(names::bridge(&net.id)),
                    Ok(false) => {}
                    Err(e) => pass
                        .report
                        .failed
                        .push(format!("network {}: {e:#}", net.id)),
                }
            });
        }
        pass.links = Some(links);
        Ok(())
    }

    /// Routers this daemon created that the store no longer holds.
    fn remove_stale_routers(&self, pass: &mut Pass<'_>) -> Result<()> {
        let desired_ns: HashSet<String> = pass
            .desired
            .routers
            .iter()
            .map(|r| names::router_netns(&r.id))
            .collect();
        for name in self.owned.names(Kind::Netns)? {
            if desired_ns.contains(&name) {
                continue;
            }
            if self.abandon(&mut pass.report) {
                return Ok(());
            }
            // Forgotten since the listing (an API call removed the router): nothing to do.
            let Some(record) = self.owned.get(Kind::Netns, &name)? else {
                continue;
            };
            let Some(Record::Router { router_id, dp_id }) = record else {
                pass.report
                    .failed
                    .push(format!("record of {name} is unreadable"));
                continue;
            };
            // Made by an API call after the snapshot: not stale.
            pass.current.router(&router_id, &mut |now| {
                if now.is_some() {
                    return;
                }
                let _g = self.lock_op();
                match self.remove_router_locked(&router_id, dp_id) {
                    Ok(()) => pass.report.removed.push(name.clone()),
                    Err(e) => pass.report.failed.push(format!("{name}: {e:#}")),
                }
            });
        }
        Ok(())
    }

    /// Desired routers. Most routers are only checked from outside (namespace mounted, taps
    /// present, up and enslaved, which also proves the veth peers inside exist); a few each
    /// pass (`inside_slice`; every router on the first), and any that fails that check, are
    /// converged from inside their namespace (addresses, routes, sysctls, filters) to the spec
    /// the store holds then. A quiet pass (`report.quiet`) looks at those few only.
    fn reconcile_routers(&self, pass: &mut Pass<'_>) -> Result<()> {
        let quiet = pass.report.quiet;
        let nth = self.passes.fetch_add(1, Ordering::Relaxed);
        let routers = &pass.desired.routers;
        let inside = self.inside_slice(routers.len());
        let unchanged = pass.report.repaired.is_empty() && pass.report.removed.is_empty();
        let links = match pass.links.take() {
            Some(links) if unchanged => links,
            // Only the slice's own bridges and taps: a copy of every link is what a quiet
            // pass spares.
            _ if quiet => {
                let names: Vec<String> = routers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| inside.contains(*i))
                    .flat_map(|(_, r)| plan(r).into_iter().flat_map(|p| [p.bridge, p.tap]))
                    .collect();
                self.lookup_daemon_links(&names)?
            }
            _ => self.daemon_links()?,
        };
        if nth > 0 {
            // Filters removed from outside: the converge below attaches them again. Only the
            // routers looked at from inside: a dump per tap under the lock, so all of them at
            // once would stall the API for a time that grows with the routers.
            let slice: Vec<RouterSpec> = routers
                .iter()
                .enumerate()
                .filter(|(i, _)| inside.contains(*i))
                .map(|(_, r)| r.clone())
                .collect();
            let _g = self.lock_op();
            match self.check_filters(&slice) {
                Ok(missing) => pass.report.repaired.extend(
                    missing
                        .into_iter()
                        .map(|(router, tap)| format!("router {router}: filters on {tap}")),
                ),
                Err(e) => pass
                    .report
                    .failed
                    .push(format!("checking the filters: {e:#}")),
            }
        }
        for (i, r) in routers.iter().enumerate() {
            if self.abandon(&mut pass.report) {
                return Ok(());
            }
            // The first pass (the start-up resync) looks inside every router.
            let full = nth == 0 || inside.contains(i);
            if !full && (quiet || self.looks_converged(r, &links)) {
                continue;
            }
            pass.current.router(&r.id, &mut |now| {
                // Removed or changed since the snapshot (and the daemon-namespace dump): the API
                // call that did it realised it; the next pass looks at it again.
                let Some(r) = now.filter(|now| *now == r) else {
                    return;
                };
                if let Err(e) = validate_router(r) {
                    pass.report.failed.push(format!("router {}: {e:#}", r.id));
                    return;
                }
                let _g = self.lock_op();
                let look = Look::Reconcile {
                    links: &links,
                    sysctls: nth > 0,
                };
                match self.process_router(r, look) {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => pass.report.repaired.push(format!(
                        "router {}: {}",
                        r.id,
                        changes.join(", ")
                    )),
                    Err(e) => pass.report.failed.push(format!("router {}: {e:#}", r.id)),
                }
            });
        }
        Ok(())
    }

    /// The routers (by position in the desired list) this pass looks at from inside: the next
    /// `n / FULL_CHECK_EVERY` (rounded up) after the last pass's, at most `INSIDE_CHECKS_MAX`,
    /// so every router is looked at once every `FULL_CHECK_EVERY` passes up to
    /// `FULL_CHECK_EVERY × INSIDE_CHECKS_MAX` routers, and a pass's inside work stays bounded
    /// beyond (each look costs milliseconds and enters a namespace).
    fn inside_slice(&self, n: usize) -> InsideSlice {
        let len = n
            .div_ceil(FULL_CHECK_EVERY as usize)
            .clamp(usize::from(n > 0), INSIDE_CHECKS_MAX);
        let start = self.inside_cursor.fetch_add(len, Ordering::Relaxed);
        InsideSlice {
            start: start.checked_rem(n).unwrap_or(0),
            len,
            n,
        }
    }

    /// Devices of the daemon namespace this daemon created and nothing desires any more: the
    /// snapshot names the candidates, and each is confirmed by the store's state of the one
    /// router or network its record names, at that moment. Never the whole state under the
    /// store lock: while routers are being made every tap made after the snapshot is a
    /// candidate, and reading the whole state to dismiss them held every API call for 70–180
    /// ms at 10 000 routers, once a pass.
    fn remove_stale_links(&self, pass: &mut Pass<'_>) -> Result<()> {
        for name in self.stale_links(pass.desired)? {
            if self.abandon(&mut pass.report) {
                return Ok(());
            }
            // Forgotten since the listing (deleted by an API call): nothing to do.
            let Some(record) = self.owned.get(Kind::Link, &name)? else {
                continue;
            };
            // Removed only if the object the record names, as the store holds it now, does not
            // want the device.
            match &record {
                Some(Record::Tap { router_id }) => pass.current.router(router_id, &mut |now| {
                    if !now.is_some_and(|r| plan(r).iter().any(|p| p.tap == name)) {
                        self.remove_stale_link(&name, &mut pass.report);
                    }
                }),
                Some(Record::Bridge { network_id } | Record::Uplink { network_id }) => {
                    pass.current.network(network_id, &mut |now| {
                        let wanted = now.is_some_and(|n| {
                            names::bridge(&n.id) == name
                                || self.made_uplink(n).as_deref() == Some(name.as_str())
                        });
                        if !wanted {
                            self.remove_stale_link(&name, &mut pass.report);
                        }
                    })
                }
                Some(Record::Router { .. }) | None => pass
                    .report
                    .failed
                    .push(format!("record of {name} is unreadable")),
            }
        }
        Ok(())
    }

    /// Deletes one stale device of the daemon namespace (the caller holds the store's state
    /// that says so).
    fn remove_stale_link(&self, name: &str, report: &mut ReconcileReport) {
        let _g = self.lock_op();
        match self.delete_daemon_links(&[name.to_string()]) {
            Ok(()) => report.removed.push(name.to_string()),
            Err(e) => report.failed.push(format!("{name}: {e:#}")),
        }
    }

    /// Recorded devices of the daemon namespace that `desired` does not have. Retired bridges
    /// are the reaper's (handed to it again: a daemon that stopped before deleting them left
    /// their records), never deleted by a pass.
    fn stale_links(&self, desired: &DesiredState) -> Result<Vec<String>> {
        let mut desired_links: HashSet<String> = desired
            .networks
            .iter()
            .map(|n| names::bridge(&n.id))
            .chain(desired.networks.iter().filter_map(|n| self.made_uplink(n)))
            .collect();
        for r in &desired.routers {
            desired_links.extend(plan(r).into_iter().map(|p| p.tap));
        }
        let (retired, stale): (Vec<String>, Vec<String>) = self
            .owned
            .names(Kind::Link)?
            .into_iter()
            .filter(|name| !desired_links.contains(name))
            .partition(|name| names::is_retired_bridge(name));
        for name in retired {
            self.reaper.retire(name);
        }
        Ok(stale)
    }

    /// The outside check of a router reconcile does between full passes: last converged to
    /// this very spec, namespace still mounted, every tap present, up, in its bridge, at its
    /// network's MTU, and the gateway tap still the device the datapath is attached to.
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
            if !tap.up || tap.controller != Some(br.index) || tap.mtu != Some(p.port.mtu) {
                return false;
            }
            if p.gateway && m.attached != Some((p.tap.clone(), tap.index)) {
                return false;
            }
        }
        drop(memo);
        matches!(ns::exists(&names::router_netns(&spec.id)), Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::InsideSlice;

    #[test]
    fn an_inside_slice_wraps_around_the_routers() {
        let s = InsideSlice {
            start: 23,
            len: 3,
            n: 25,
        };
        let hit: Vec<usize> = (0..30).filter(|&i| s.contains(i)).collect();
        assert_eq!(hit, [0, 23, 24]);
        let empty = InsideSlice {
            start: 0,
            len: 0,
            n: 0,
        };
        assert!(!empty.contains(0));
    }
}
