//! The periodic full pass: repairs what is missing, removes what this daemon created and the
//! desired state no longer holds, and never touches anything else.
//!
//! The daemon takes the desired state and runs the pass under the store lock, so no API call
//! lands between the snapshot and the pass: whatever is recorded and not desired is stale.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
};

use anyhow::Result;

use super::{FULL_CHECK_EVERY, Realiser, lock, router::plan, validate::validate_router};
use crate::{
    model::spec::{DesiredState, RouterSpec, names},
    net::{
        LinkState, ns,
        owned::{Kind, Record},
    },
};

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
}

impl Realiser {
    /// Full pass over `desired`. Dumps the daemon namespace's links and /run/netns once; each
    /// router is then converged inside its own namespace. A router that fails is reported in
    /// `failed` and the pass goes on. Once the realiser is stopped the pass ends between two
    /// objects, never inside one (`abandoned` in the report).
    pub fn reconcile(&self, desired: &DesiredState) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        self.reconcile_networks(desired, &mut report)?;
        self.remove_stale_routers(desired, &mut report)?;
        self.reconcile_routers(desired, &mut report)?;
        if !self.abandon(&mut report) {
            self.remove_stale_links(desired, &mut report)?;
        }
        Ok(report)
    }

    /// Whether the pass is to end here (stopped); notes it in the report.
    fn abandon(&self, report: &mut ReconcileReport) -> bool {
        report.abandoned |= self.stopping();
        report.abandoned
    }

    fn reconcile_networks(
        &self,
        desired: &DesiredState,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let links = self.dump_daemon_links()?;
        for net in &desired.networks {
            if self.abandon(report) {
                return Ok(());
            }
            let _g = self.lock_op();
            match self.converge_network(net, Some(&links)) {
                Ok(true) => report.repaired.push(names::bridge(&net.id)),
                Ok(false) => {}
                Err(e) => report.failed.push(format!("network {}: {e:#}", net.id)),
            }
        }
        Ok(())
    }

    /// Routers this daemon created that are no longer desired.
    fn remove_stale_routers(
        &self,
        desired: &DesiredState,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let desired_ns: HashSet<String> = desired
            .routers
            .iter()
            .map(|r| names::router_netns(&r.id))
            .collect();
        for (name, record) in self.owned.list(Kind::Netns)? {
            if desired_ns.contains(&name) {
                continue;
            }
            if self.abandon(report) {
                return Ok(());
            }
            let Some(Record::Router { router_id, dp_id }) = record else {
                report
                    .failed
                    .push(format!("record of {name} is unreadable"));
                continue;
            };
            let _g = self.lock_op();
            match self.remove_router_locked(&router_id, dp_id) {
                Ok(()) => report.removed.push(name),
                Err(e) => report.failed.push(format!("{name}: {e:#}")),
            }
        }
        Ok(())
    }

    /// Desired routers. Most passes only check from outside (namespace mounted, taps present,
    /// up and enslaved, which also proves the veth peers inside exist); every
    /// `FULL_CHECK_EVERY`th pass, and whenever that check fails, a router is converged from
    /// inside its namespace (addresses, routes, sysctls).
    fn reconcile_routers(
        &self,
        desired: &DesiredState,
        report: &mut ReconcileReport,
    ) -> Result<()> {
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
            if self.abandon(report) {
                return Ok(());
            }
            if let Err(e) = validate_router(r) {
                report.failed.push(format!("router {}: {e:#}", r.id));
                continue;
            }
            let _g = self.lock_op();
            if !full && self.looks_converged(r, &links) {
                continue;
            }
            match self.process_router(r, Some(&links)) {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => {
                    report
                        .repaired
                        .push(format!("router {}: {}", r.id, changes.join(", ")))
                }
                Err(e) => report.failed.push(format!("router {}: {e:#}", r.id)),
            }
        }
        Ok(())
    }

    /// Devices of the daemon namespace this daemon created and nothing desires any more.
    fn remove_stale_links(
        &self,
        desired: &DesiredState,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let mut desired_links: HashSet<String> = desired
            .networks
            .iter()
            .map(|n| names::bridge(&n.id))
            .chain(desired.networks.iter().filter_map(|n| self.made_uplink(n)))
            .collect();
        for r in &desired.routers {
            desired_links.extend(plan(r).into_iter().map(|p| p.tap));
        }
        let _g = self.lock_op();
        let stale: Vec<String> = self
            .owned
            .names(Kind::Link)?
            .into_iter()
            .filter(|name| !desired_links.contains(name))
            .collect();
        if !stale.is_empty() {
            self.delete_daemon_links(&stale)?;
            report.removed.extend(stale);
        }
        Ok(())
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
