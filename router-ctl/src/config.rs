//! Daemon configuration (`--config FILE`, TOML); every field has a default so an empty file,
//! or none, is a working single-host setup.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// API listen address (Neutron's port by default).
    pub listen: SocketAddr,
    /// Where `router.db` and `admin-token` live.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links (mounted if no bpffs is there).
    pub bpffs: PathBuf,
    /// `provider:physical_network` name → host interface enslaved to the network's bridge.
    pub physical_networks: BTreeMap<String, String>,
    /// API tokens → project and role. Empty: an admin token is generated in the state dir.
    pub tokens: BTreeMap<String, TokenConfig>,
    pub nat: NatConfig,
    pub metadata: MetadataConfig,
    pub datapath: DatapathConfig,
    pub quotas: QuotaConfig,
    /// Seconds between two reconcile passes (desired state from the DB → kernel).
    pub reconcile_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9696)),
            state_dir: PathBuf::from("/var/lib/router-ctl"),
            bpffs: PathBuf::from("/sys/fs/bpf/router-ctl"),
            physical_networks: BTreeMap::new(),
            tokens: BTreeMap::new(),
            nat: NatConfig::default(),
            metadata: MetadataConfig::default(),
            datapath: DatapathConfig::default(),
            quotas: QuotaConfig::default(),
            reconcile_interval: 5,
        }
    }
}

/// One API token.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub project_id: String,
    #[serde(default)]
    pub admin: bool,
}

/// SNAT port range and session timeouts (seconds), modelled on Linux conntrack defaults.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    pub port_min: u16,
    pub port_max: u16,
    pub tcp_syn_sent: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub tcp_time_wait: u64,
    pub udp_unreplied: u64,
    pub udp_replied: u64,
    pub icmp: u64,
    /// Seconds between two garbage-collection passes over the session table.
    pub gc_interval: u64,
    /// `enable_snat` of a gateway set without naming it (Neutron's `enable_snat_by_default`).
    pub enable_snat_by_default: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            port_min: 1024,
            port_max: 65535,
            tcp_syn_sent: 120,
            tcp_established: 432_000,
            tcp_closing: 10,
            tcp_time_wait: 120,
            udp_unreplied: 30,
            udp_replied: 120,
            icmp: 30,
            gc_interval: 10,
            enable_snat_by_default: true,
        }
    }
}

/// Datapath options.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Forward in eBPF (`fast_fwd`) inside each router namespace, past its IP stack; false
    /// leaves every packet to the namespace's own routing (see docs/ARCHITECTURE.md, "Fast
    /// path").
    pub fast_path: bool,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self { fast_path: true }
    }
}

/// Limits Neutron keeps outside its quota engine.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Extra routes per router (Neutron's `max_routes`).
    pub max_routes: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self { max_routes: 30 }
    }
}

/// Metadata proxy upstream (Nova's metadata API); none configured → 503.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub upstream: Option<String>,
}

impl Config {
    /// Reads `path`, or the defaults when `path` is None.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        match path {
            None => Ok(Self::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l3_options_default_as_neutron_and_parse() {
        let d = Config::default();
        assert!(d.nat.enable_snat_by_default);
        assert_eq!(d.quotas.max_routes, 30);
        let c: Config =
            toml::from_str("[nat]\nenable_snat_by_default = false\n[quotas]\nmax_routes = 5\n")
                .unwrap();
        assert!(!c.nat.enable_snat_by_default);
        assert_eq!(c.quotas.max_routes, 5);
        assert_eq!(c.nat.port_min, NatConfig::default().port_min);
        let example = include_str!("../../deploy/router-ctl.toml");
        toml::from_str::<Config>(example).unwrap();
    }
}
