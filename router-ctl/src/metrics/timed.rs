//! Realisation latency of the API's changes: a [`Realise`] that times each call of the one it
//! wraps into `router_ctl_realise_duration_seconds{operation}`.

use std::{sync::Arc, time::Instant};

use super::Metrics;
use crate::{
    api::Realise,
    model::spec::{NetworkSpec, RouterSpec},
};

/// The `operation` label values, one per `Realise` method.
pub const OPERATIONS: [&str; 4] = [
    "apply_network",
    "remove_network",
    "apply_router",
    "remove_router",
];

/// Times every call of `inner` (failed calls too: an operator wants to see slow failures).
pub struct Timed {
    inner: Arc<dyn Realise>,
    metrics: Arc<Metrics>,
}

impl Timed {
    /// `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn Realise>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn time<T>(&self, operation: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.metrics.realised(operation, start.elapsed());
        out
    }
}

impl Realise for Timed {
    fn apply_network(&self, net: &NetworkSpec) -> anyhow::Result<()> {
        self.time("apply_network", || self.inner.apply_network(net))
    }
    fn remove_network(&self, network_id: &str) -> anyhow::Result<()> {
        self.time("remove_network", || self.inner.remove_network(network_id))
    }
    fn apply_router(&self, spec: &RouterSpec) -> anyhow::Result<()> {
        self.time("apply_router", || self.inner.apply_router(spec))
    }
    fn remove_router(&self, router_id: &str, dp_id: u32) -> anyhow::Result<()> {
        self.time("remove_router", || {
            self.inner.remove_router(router_id, dp_id)
        })
    }
}
