//! `router-ctl agent --config FILE` (TOML): where the agent keeps its state, how it reaches
//! neutron-server, and how this node wires networks. Unknown keys are refused at start, naming
//! the key; every key but `[neutron] transport_url` has a default.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::config::{DatapathConfig, MetadataConfig, MetricsConfig, NatConfig, VxlanConfig};

/// The agent's configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Router numbers and ownership records.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links (mounted if no bpffs is there).
    pub bpffs: PathBuf,
    pub neutron: NeutronConfig,
    /// `provider:physical_network` name → host interface (flat: enslaved; VLAN: its parent).
    pub physical_networks: BTreeMap<String, String>,
    /// This node's VXLAN tunnel endpoint; none: VXLAN networks are refused.
    pub vxlan: Option<VxlanConfig>,
    pub nat: NatConfig,
    pub datapath: DatapathConfig,
    pub metrics: MetricsConfig,
    pub metadata: MetadataConfig,
    /// Seconds between two drift-repair passes over the routers this agent holds.
    pub reconcile_interval: u64,
    /// Gratuitous ARPs sent for each address a router port takes, one second apart
    /// (Neutron's L3 agent option of the same name); 0: none. On a node with many routers
    /// on one external network each one is flooded to every gateway tap there.
    pub send_arp_for_ha: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/router-ctl-agent"),
            bpffs: PathBuf::from("/sys/fs/bpf/router-ctl-agent"),
            neutron: NeutronConfig::default(),
            physical_networks: BTreeMap::new(),
            vxlan: None,
            nat: NatConfig::default(),
            datapath: DatapathConfig::default(),
            metrics: MetricsConfig::default(),
            metadata: MetadataConfig::default(),
            reconcile_interval: 5,
            send_arp_for_ha: crate::net::arp::COUNT,
        }
    }
}

/// `[neutron]`: the RPC side.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NeutronConfig {
    /// oslo.messaging URL: `rabbit://user:pass@host:port[,user:pass@host2:port]/vhost`.
    pub transport_url: String,
    /// The agent's host in Neutron; None: this machine's hostname.
    pub host: Option<String>,
    /// Seconds between two `report_state` calls (Neutron's `report_interval`).
    pub report_interval: u64,
    /// Seconds between two periodic sweeps (`agent::sweep`: `get_router_ids`, the routers
    /// new or gone, the next few known ones fetched again).
    pub resync_interval: u64,
    /// Seconds an RPC call waits for its reply (oslo.messaging's `rpc_response_timeout`).
    pub rpc_timeout: u64,
    /// Availability zone reported with the agent's state.
    pub availability_zone: String,
}

impl Default for NeutronConfig {
    fn default() -> Self {
        Self {
            transport_url: "rabbit://guest:guest@127.0.0.1:5672/".into(),
            host: None,
            report_interval: 30,
            resync_interval: 120,
            rpc_timeout: 60,
            availability_zone: "nova".into(),
        }
    }
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        cfg.nat.validate()?;
        if let Some(v) = &cfg.vxlan {
            v.validate()?;
        }
        super::transport::Endpoints::parse(&cfg.neutron.transport_url)?;
        for (key, v) in [
            ("report_interval", cfg.neutron.report_interval),
            ("resync_interval", cfg.neutron.resync_interval),
            ("rpc_timeout", cfg.neutron.rpc_timeout),
        ] {
            if v == 0 {
                anyhow::bail!("[neutron] {key} = 0: need at least 1 second");
            }
        }
        Ok(cfg)
    }

    /// The agent's host name in Neutron.
    pub fn host(&self) -> anyhow::Result<String> {
        match &self.neutron.host {
            Some(h) if !h.trim().is_empty() => Ok(h.trim().to_string()),
            // The UTS hostname, as Python's socket.gethostname() gives the stock agent.
            _ => Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname (set [neutron] host)")?
                .trim()
                .to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
state_dir = "/var/lib/router-ctl-agent"
bpffs = "/sys/fs/bpf/router-ctl-agent"
[neutron]
transport_url = "rabbit://guest:guest@127.0.0.1:5672/"
host = "netnode-1"
report_interval = 30
[physical_networks]
public = "eth-pub"
tenant = "eth-ten"
[vxlan]
local_ip = "192.0.2.10"
group = "239.1.1.1"
[nat]
max_sessions = 1000
[metrics]
listen = ""
"#;

    #[test]
    fn the_issue_example_parses() {
        let c = AgentConfig::parse(EXAMPLE).expect("example");
        assert_eq!(c.host().unwrap(), "netnode-1");
        assert_eq!(c.physical_networks["tenant"], "eth-ten");
        let v = c.vxlan.expect("vxlan");
        assert_eq!(v.dstport, 4789);
        assert_eq!(v.group, Some("239.1.1.1".parse().unwrap()));
        assert_eq!(c.nat.max_sessions, 1000);
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.neutron.report_interval, 30);
    }

    #[test]
    fn the_deploy_example_parses() {
        AgentConfig::parse(include_str!("../../../deploy/router-ctl-agent.toml"))
            .expect("deploy/router-ctl-agent.toml");
    }

    fn refused(text: &str) -> String {
        format!("{:#}", AgentConfig::parse(text).expect_err(text))
    }

    #[test]
    fn bad_keys_and_values_are_refused_naming_them() {
        for (text, named) in [
            (
                "[neutron]\ntransport_ur = \"rabbit://h/\"\n",
                "transport_ur",
            ),
            // The daemon's API key is not an agent key.
            ("listen = \"127.0.0.1:9696\"\n", "listen"),
            ("[vxlan]\nlocal_ip = \"192.0.2.10\"\n", "[vxlan]"),
            (
                "[vxlan]\nlocal_ip = \"192.0.2.10\"\ngroup = \"192.0.2.1\"\n",
                "multicast",
            ),
            (
                "[neutron]\ntransport_url = \"http://h/\"\n",
                "transport_url",
            ),
            ("[neutron]\nreport_interval = 0\n", "report_interval"),
            ("[nat]\nmax_sessions = 0\n", "[nat] max_sessions"),
        ] {
            let e = refused(text);
            assert!(e.contains(named), "{text}: {e}");
        }
    }
}
