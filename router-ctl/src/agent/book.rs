//! The routers this agent holds: what was last realised for each (its mapped spec), their
//! numbers, and the segments of their networks. Every change goes through the realiser, on a
//! blocking thread (the realiser is synchronous); a router dict that cannot be mapped or
//! realised leaves the router as it was and the others go on.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use anyhow::Result;
use serde_json::{Map, Value};

use super::{
    mapping::{self, MapError, Mapped},
    numbers::Numbers,
};
use crate::{
    model::spec::{DesiredState, NetworkSpec, Segment},
    realise::{Realiser, ReconcileReport},
};

/// Floating IP statuses as Neutron names them.
pub const ACTIVE: &str = "ACTIVE";
pub const DOWN: &str = "DOWN";
pub const ERROR: &str = "ERROR";

/// The agent's routers.
pub struct Book {
    realiser: Arc<Realiser>,
    numbers: Numbers,
    /// Router id → what was last realised for it.
    held: BTreeMap<String, Mapped>,
    /// Routers whose dict could not be served and that hold nothing realised in this run:
    /// reconcile leaves the kernel alone while there are any (their previous state is kept).
    unserved: BTreeSet<String>,
    /// Network id → segment, from `get_network_details`.
    pub segments: HashMap<String, Segment>,
    /// Moves with every apply or removal (the desired state's version for reconcile passes,
    /// which skip their outside walk while nothing changed).
    version: i64,
}

/// What applying router dicts left to tell neutron-server: floating IP statuses that changed,
/// by router.
pub type FipStatuses = BTreeMap<String, Map<String, Value>>;

/// The counts report_state carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub routers: usize,
    pub ex_gw_ports: usize,
    pub interfaces: usize,
    pub floating_ips: usize,
}

impl Book {
    pub fn new(realiser: Arc<Realiser>, numbers: Numbers) -> Self {
        Self {
            realiser,
            numbers,
            held: BTreeMap::new(),
            unserved: BTreeSet::new(),
            segments: HashMap::new(),
            version: 0,
        }
    }

    /// Networks of `dicts` whose segment is not known yet.
    pub fn unknown_networks(&self, dicts: &[Value]) -> Vec<String> {
        let mut out: Vec<String> = dicts
            .iter()
            .flat_map(mapping::network_ids)
            .filter(|n| !self.segments.contains_key(n))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Realises each dict; routers whose dict fails keep their previous state.
    pub fn apply_all(&mut self, dicts: &[Value]) -> FipStatuses {
        self.version += 1;
        let mut out = FipStatuses::new();
        for d in dicts {
            if self.realiser.stopping() {
                break;
            }
            if let Some((router, st)) = self.apply(d)
                && !st.is_empty()
            {
                out.insert(router, st);
            }
        }
        out
    }

    /// Maps and realises one router dict; returns the floating IP statuses to report.
    fn apply(&mut self, dict: &Value) -> Option<(String, Map<String, Value>)> {
        let id = mapping::router_id(dict)?.to_string();
        let dp_id = match self.numbers.get_or_allocate(&id) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(router = id, "not realised: {e:#}");
                return None;
            }
        };
        let mapped = match mapping::map_router(dict, dp_id, &self.segments) {
            Ok(m) => m,
            Err(e) => {
                match &e {
                    MapError::Unsupported { .. } => tracing::error!("{e}; left unrealised"),
                    MapError::Invalid { .. } => tracing::error!("{e}; its previous state is kept"),
                }
                if !self.held.contains_key(&id) {
                    self.unserved.insert(id.clone());
                    self.forget_number_if_unbuilt(&id);
                }
                return None;
            }
        };
        let realised = self.realise(&mapped);
        if let Err(e) = &realised {
            tracing::error!(
                router = id,
                "realising failed (the reconcile pass retries): {e:#}"
            );
        }
        let statuses = fip_statuses(&mapped, realised.is_ok());
        if realised.is_ok() || !self.held.contains_key(&id) {
            self.held.insert(id.clone(), mapped);
        }
        self.unserved.remove(&id);
        Some((id, statuses))
    }

    fn realise(&self, m: &Mapped) -> Result<()> {
        for n in &m.networks {
            self.realiser.apply_network(n)?;
        }
        self.realiser.apply_router(&m.spec)
    }

    /// A router whose dict never mapped, from no earlier run either: nothing of it exists, so
    /// its number is not kept.
    fn forget_number_if_unbuilt(&mut self, id: &str) {
        if !crate::net::ns::exists(&crate::model::spec::names::router_netns(id)).unwrap_or(true) {
            let _ = self.numbers.release(id);
        }
    }

    /// Tears a router down completely (namespace, devices, NAT state and sessions), and the
    /// bridges no other router of this agent uses.
    pub fn remove(&mut self, id: &str) {
        self.version += 1;
        self.unserved.remove(id);
        let held = self.held.remove(id);
        let Some(dp_id) = self.numbers.get(id) else {
            return;
        };
        match self.realiser.remove_router(id, dp_id) {
            Ok(()) => {
                tracing::info!(router = id, "removed");
                if let Err(e) = self.numbers.release(id) {
                    tracing::warn!(router = id, "{e:#}");
                }
            }
            Err(e) => {
                tracing::error!(
                    router = id,
                    "removing failed (retried at the next sync): {e:#}"
                );
                return;
            }
        }
        for n in held.into_iter().flat_map(|m| m.networks) {
            if !self
                .held
                .values()
                .any(|m| m.networks.iter().any(|o| o.id == n.id))
                && let Err(e) = self.realiser.remove_network_spec(&n)
            {
                tracing::warn!(network = n.id, "removing its bridge: {e:#}");
            }
        }
    }

    /// Every router this agent knows of: held, numbered (built in this run or an earlier one),
    /// or whose dict it could not serve.
    pub fn known(&self) -> BTreeSet<String> {
        self.held
            .keys()
            .cloned()
            .chain(self.numbers.routers().map(|(id, _)| id.to_string()))
            .chain(self.unserved.iter().cloned())
            .collect()
    }

    /// Removes every router this agent knows of that is not in `keep` (a full sync's answer:
    /// routers deleted or moved to another agent meanwhile).
    pub fn remove_all_but(&mut self, keep: &BTreeSet<String>) {
        for id in self.known().difference(keep) {
            self.remove(id);
        }
    }

    /// Forgets the segments of networks no held router is on (a sweep adds the segments of
    /// the networks it fetched; without this, every network ever seen would stay).
    pub fn prune_segments(&mut self) {
        let used: BTreeSet<&str> = self
            .held
            .values()
            .flat_map(|m| m.networks.iter().map(|n| n.id.as_str()))
            .collect();
        self.segments.retain(|net, _| used.contains(net.as_str()));
    }

    /// The desired state of everything held.
    pub fn desired(&self) -> DesiredState {
        let mut networks: BTreeMap<String, NetworkSpec> = BTreeMap::new();
        for m in self.held.values() {
            for n in &m.networks {
                networks
                    .entry(n.id.clone())
                    .and_modify(|e| e.external |= n.external)
                    .or_insert_with(|| n.clone());
            }
        }
        DesiredState {
            networks: networks.into_values().collect(),
            routers: self.held.values().map(|m| m.spec.clone()).collect(),
        }
    }

    /// Drift repair over what is held; skipped while a router's dict is unserved (its kernel
    /// state from before is kept, and reconcile would remove it as stale).
    pub fn reconcile(&self) -> Option<Result<ReconcileReport>> {
        if !self.unserved.is_empty() {
            return None;
        }
        let desired = self.desired();
        Some(
            self.realiser
                .reconcile_versioned(&desired, &desired, Some(self.version)),
        )
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            routers: self.held.len(),
            ..Counts::default()
        };
        for m in self.held.values() {
            c.ex_gw_ports += usize::from(m.spec.gateway.is_some());
            c.interfaces += m.spec.interfaces.len();
            c.floating_ips += m.floating_ips.len();
        }
        c
    }
}

/// The statuses of the router's floating IPs that differ from what neutron-server holds:
/// ACTIVE when realised and associated on an up router, DOWN when not associated or the
/// router is down, ERROR when realising failed.
pub fn fip_statuses(m: &Mapped, realised: bool) -> Map<String, Value> {
    m.floating_ips
        .iter()
        .filter_map(|f| {
            let st = match (realised, f.associated && m.spec.admin_state_up) {
                (false, _) => ERROR,
                (true, true) => ACTIVE,
                (true, false) => DOWN,
            };
            (f.status != st).then(|| (f.id.clone(), Value::from(st)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::mapping::FloatingIp;

    #[test]
    fn floating_ip_statuses_follow_the_realisation() {
        let d: Value =
            serde_json::from_str(include_str!("testdata/sync_routers-sample.json")).unwrap();
        let segs = HashMap::from([
            (
                "3e025bba-07bc-4f6f-9919-aa6e4ffe1973".to_string(),
                Segment::Local,
            ),
            (
                "2c4d84de-adeb-4ab6-8c25-91d26b7261b9".to_string(),
                Segment::Local,
            ),
        ]);
        let mut m = mapping::map_router(&d, 1, &segs).unwrap();
        assert!(fip_statuses(&m, true).is_empty(), "ACTIVE already");
        assert_eq!(
            fip_statuses(&m, false)["635c7310-f5ab-45a7-b55b-8102d52c475e"],
            ERROR
        );
        m.spec.admin_state_up = false;
        assert_eq!(
            fip_statuses(&m, true)["635c7310-f5ab-45a7-b55b-8102d52c475e"],
            DOWN
        );
        m.spec.admin_state_up = true;
        m.floating_ips = vec![FloatingIp {
            id: "f2".into(),
            address: "203.0.113.14".parse().unwrap(),
            associated: false,
            status: "ACTIVE".into(),
        }];
        assert_eq!(fip_statuses(&m, true)["f2"], DOWN);
    }
}
