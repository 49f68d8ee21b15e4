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
    pub metrics: MetricsConfig,
    pub quotas: QuotaConfig,
    /// Seconds between two reconcile passes (desired state from the DB → kernel).
    pub reconcile_interval: u64,
    /// Gratuitous ARPs sent for each address a router port takes, one second apart
    /// (Neutron's L3 agent option of the same name); 0: none. On a node with many routers
    /// on one external network each one is flooded to every gateway tap there.
    pub send_arp_for_ha: u32,
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
            metrics: MetricsConfig::default(),
            quotas: QuotaConfig::default(),
            reconcile_interval: 5,
            send_arp_for_ha: crate::net::arp::COUNT,
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
    /// Entries of the session table shared by every router (its `max_entries`; ≈ 96 B of
    /// kernel memory each, preallocated). A SNAT flow that could not keep its source port
    /// takes two.
    pub max_sessions: u32,
    /// Entries one router may hold; a router at it drops its own new flows
    /// (`drop_router_quota`). Unset: a quarter of `max_sessions`.
    pub max_sessions_per_router: Option<u32>,
    /// `enable_snat` of a gateway set without naming it (Neutron's `enable_snat_by_default`).
    pub enable_snat_by_default: bool,
}

/// Largest `[nat] max_sessions` accepted: 16 Mi entries, ≈ 1.5 GiB of kernel memory.
pub const MAX_SESSIONS_LIMIT: u32 = 1 << 24;

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
            max_sessions: router_common::MAX_SESSIONS,
            max_sessions_per_router: None,
        }
    }
}

impl NatConfig {
    /// Entries one router may hold: `max_sessions_per_router`, or a quarter of the table, so
    /// that one router never takes all of it and a flooding one leaves three quarters to the
    /// others.
    pub fn sessions_per_router(&self) -> u32 {
        self.max_sessions_per_router
            .unwrap_or((self.max_sessions / 4).max(1))
    }

    /// Refuses values the datapath cannot work with, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.port_min == 0 || self.port_min > self.port_max {
            bail!(
                "[nat] port_min/port_max: invalid NAT port range {}-{}: need 1 <= port_min <= port_max",
                self.port_min,
                self.port_max
            );
        }
        if self.max_sessions == 0 || self.max_sessions > MAX_SESSIONS_LIMIT {
            bail!(
                "[nat] max_sessions = {}: need 1 to {MAX_SESSIONS_LIMIT}",
                self.max_sessions
            );
        }
        match self.max_sessions_per_router {
            Some(0) => bail!("[nat] max_sessions_per_router = 0: need at least 1"),
            Some(n) if n > self.max_sessions => bail!(
                "[nat] max_sessions_per_router = {n} is above [nat] max_sessions = {}",
                self.max_sessions
            ),
            _ => Ok(()),
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

/// `[vxlan]`: this node's VXLAN tunnel endpoint (agent mode: networks of type `vxlan` become a
/// device `vxlan-<vni>` in their bridge, as the linuxbridge agent made them).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VxlanConfig {
    /// This node's tunnel address: an address of one of its interfaces, which carries the
    /// tunnel (and joins the multicast group).
    pub local_ip: std::net::Ipv4Addr,
    /// Multicast group flooding unknown destinations to every endpoint.
    #[serde(default)]
    pub group: Option<std::net::Ipv4Addr>,
    /// Or the other endpoints, flooded one by one (a static list, no multicast).
    #[serde(default)]
    pub peers: Vec<std::net::Ipv4Addr>,
    /// UDP port (IANA's 4789 by default; Linux's own default is 8472).
    #[serde(default = "VxlanConfig::default_port")]
    pub dstport: u16,
}

impl VxlanConfig {
    fn default_port() -> u16 {
        4789
    }

    /// Refuses a configuration that could not flood, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (self.group, self.peers.is_empty()) {
            (Some(g), _) if !g.is_multicast() => {
                anyhow::bail!("[vxlan] group = \"{g}\" is not a multicast address")
            }
            (Some(_), false) => {
                anyhow::bail!("[vxlan] group and peers: give one of them, not both")
            }
            (None, true) => anyhow::bail!(
                "[vxlan] needs group (a multicast address) or peers (the other endpoints) to flood to"
            ),
            _ => Ok(()),
        }
    }
}

/// Metadata proxy upstream (Nova's metadata API); none configured → 503.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub upstream: Option<String>,
}

/// The metrics endpoint (Prometheus text at `GET /metrics`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where it listens, on its own port (loopback by default: widen it only for a scraper you
    /// trust); `""` in the file turns it off. An address that does not parse is refused at
    /// start, naming this key.
    #[serde(deserialize_with = "metrics_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9180))),
        }
    }
}

/// `[metrics] listen`: `""` → off, else an `address:port`.
fn metrics_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "[metrics] listen = {text:?} is not an address:port (e.g. \"127.0.0.1:9180\"; \"\" turns the metrics endpoint off)"
        ))
    })
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
                Self::parse(&text).with_context(|| format!("config {}", p.display()))
            }
        }
    }

    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses out-of-range values at start, with a message naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.nat.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        format!(
            "{:#}",
            Config::parse(text).expect_err(&format!("accepted {text:?}"))
        )
    }

    #[test]
    fn session_table_sizes_default_to_a_quarter_per_router() {
        let c = Config::parse("").expect("empty config");
        assert_eq!(c.nat.max_sessions, 262_144);
        assert_eq!(c.nat.sessions_per_router(), 65_536);
        let c = Config::parse("[nat]\nmax_sessions = 1000\n").expect("table only");
        assert_eq!(c.nat.sessions_per_router(), 250, "follows the table");
        let c = Config::parse("[nat]\nmax_sessions = 1000\nmax_sessions_per_router = 1000\n")
            .expect("one router may take it all if the operator says so");
        assert_eq!(c.nat.sessions_per_router(), 1000);
        let c = Config::parse("[nat]\nmax_sessions = 3\n").expect("tiny table");
        assert_eq!(c.nat.sessions_per_router(), 1, "never zero");
    }

    #[test]
    fn the_example_config_parses() {
        let c = Config::parse(include_str!("../../deploy/router-ctl.toml")).expect("example");
        assert_eq!(c.nat.max_sessions, 262_144);
        assert_eq!(c.nat.sessions_per_router(), 65_536);
    }

    #[test]
    fn send_arp_for_ha_is_neutrons_three_unless_set() {
        assert_eq!(Config::parse("").expect("empty").send_arp_for_ha, 3);
        let c = Config::parse("send_arp_for_ha = 0\n").expect("none at all");
        assert_eq!(c.send_arp_for_ha, 0);
        let e = Config::parse("send_arp_for_ha = -1\n").expect_err("negative");
        assert!(format!("{e:#}").contains("send_arp_for_ha"), "{e:#}");
    }

    #[test]
    fn out_of_range_sizes_are_refused_naming_the_key() {
        for (text, named) in [
            ("[nat]\nmax_sessions = 0\n", "[nat] max_sessions"),
            ("[nat]\nmax_sessions = 100000000\n", "[nat] max_sessions"),
            (
                "[nat]\nmax_sessions_per_router = 0\n",
                "[nat] max_sessions_per_router",
            ),
            (
                "[nat]\nmax_sessions_per_router = -1\n",
                "max_sessions_per_router",
            ),
            (
                "[nat]\nport_min = 2000\nport_max = 1000\n",
                "[nat] port_min",
            ),
        ] {
            let e = refused(text);
            assert!(e.contains(named), "{text}: {e}");
        }
        let e = refused("[nat]\nmax_sessions = 1000\nmax_sessions_per_router = 1001\n");
        assert!(
            e.contains("[nat] max_sessions_per_router = 1001")
                && e.contains("[nat] max_sessions = 1000"),
            "{e}"
        );
    }

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
