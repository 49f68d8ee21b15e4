//! A network node and its surroundings for the agent-mode tests and the demo, all in
//! throwaway namespaces: the [`Fabric`] (the cloud's wires: a bridge each for the external
//! network, the flat tenant network and the VXLAN underlay), an [`AgentNode`] (a host namespace
//! plugged into the fabric running `router-ctl agent`, reaching RabbitMQ through a [`Relay`]
//! on its own loopback, with the harness reporting its L2 agent), and a [`Compute`] node whose
//! VMs join the tenant networks the way a compute node's L2 agent would wire them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Stack, relay::Relay, report::L2Report};
use crate::{
    Bpffs, TempDir,
    netns::{Netns, remove_netns, try_veth, unique},
};

/// The physnets every node maps (Neutron's `flat_networks`).
pub const PHYSNETS: [&str; 2] = ["public", "tenant"];
/// UDP port of the VXLAN tunnels (IANA's).
pub const VXLAN_PORT: &str = "4789";

/// The cloud's wires: one namespace holding bridge `pub` (the external network, where the
/// upstream router sits), `ten` (the flat tenant network) and `und` (the VXLAN underlay,
/// 10.99.0.0/24).
pub struct Fabric {
    pub ns: Netns,
}

impl Fabric {
    pub fn new() -> Result<Self> {
        let ns = Netns::try_named(&unique("fab"))?;
        for br in ["pub", "ten", "und"] {
            ns.try_ip(&["link", "add", br, "type", "bridge"])?;
            // No IGMP snooping: nothing here queries, and flooding is what a test fabric wants.
            ns.try_ip(&["link", "set", br, "type", "bridge", "mcast_snooping", "0"])?;
            ns.try_ip(&["link", "set", br, "up"])?;
        }
        Ok(Self { ns })
    }

    /// Plugs `dev` of namespace `ns` into bridge `br` (a veth whose fabric end is unique).
    pub fn plug(&self, br: &str, ns: &Netns, dev: &str) -> Result<()> {
        let outer = unique("f");
        try_veth(&self.ns, &outer, ns, dev)?;
        self.ns.try_ip(&["link", "set", &outer, "master", br])?;
        Ok(())
    }

    /// An "upstream" router namespace on the external network holding `addr` (CIDR).
    pub fn upstream(&self, addr: &str) -> Result<Netns> {
        let ns = Netns::try_named(&unique("up"))?;
        self.plug("pub", &ns, "eth0")?;
        ns.try_ip(&["addr", "add", addr, "dev", "eth0"])?;
        Ok(ns)
    }
}

/// The agent's `resync_interval` on a node: seconds between its periodic sweeps.
pub const SWEEP_INTERVAL_SECS: u64 = 30;

/// A network node: host namespace `eth-pub`/`eth-ten` on the fabric's bridges and `eth-tun`
/// (`tunnel_ip`) on its underlay; `router-ctl agent` runs in it with a private state dir and
/// bpffs. Drop stops the agent, the L2 reports and the relay, then removes the namespace.
pub struct AgentNode {
    /// The node's host name in Neutron.
    pub host: String,
    pub tunnel_ip: String,
    agent: Option<Child>,
    bin: PathBuf,
    l2: Option<L2Report>,
    relay: Option<Relay>,
    pub ns: Netns,
    bpffs: Bpffs,
    dir: TempDir,
}

impl AgentNode {
    /// Builds node `host` on `fabric` and starts its agent (`bin`: the router-ctl binary);
    /// `vxlan_peers`: the other tunnel endpoints (compute and network nodes).
    pub fn start(
        stack: &Stack,
        fabric: &Fabric,
        bin: &Path,
        host: &str,
        tunnel_ip: &str,
        vxlan_peers: &[&str],
    ) -> Result<Self> {
        let ns = Netns::try_named(&unique("agh"))?;
        let dir = TempDir::new("agent-node");
        let mut node = Self {
            host: host.to_string(),
            tunnel_ip: tunnel_ip.to_string(),
            agent: None,
            bin: bin.to_path_buf(),
            l2: None,
            relay: None,
            ns,
            bpffs: Bpffs::new(),
            dir,
        };
        fabric.plug("pub", &node.ns, "eth-pub")?;
        fabric.plug("ten", &node.ns, "eth-ten")?;
        fabric.plug("und", &node.ns, "eth-tun")?;
        node.ns
            .try_ip(&["addr", "add", &format!("{tunnel_ip}/24"), "dev", "eth-tun"])?;
        node.relay = Some(Relay::start(&node.ns.name, 5672, &stack.netns, 5672)?);
        node.l2 = Some(L2Report::start(stack, host, &PHYSNETS, Some(tunnel_ip))?);
        let peers: Vec<String> = vxlan_peers.iter().map(|p| format!("\"{p}\"")).collect();
        fs::write(
            node.config(),
            format!(
                "state_dir = {state:?}\nbpffs = {bpffs:?}\n\n[neutron]\ntransport_url = \"rabbit://guest:guest@127.0.0.1:5672/\"\nhost = \"{host}\"\nreport_interval = 4\nresync_interval = {SWEEP_INTERVAL_SECS}\nrpc_timeout = 30\n\n[physical_networks]\npublic = \"eth-pub\"\ntenant = \"eth-ten\"\n\n[vxlan]\nlocal_ip = \"{tunnel_ip}\"\npeers = [{peers}]\n\n[metrics]\nlisten = \"\"\n",
                state = node.dir.path.join("state"),
                bpffs = node.bpffs.path(),
                peers = peers.join(", "),
            ),
        )?;
        node.start_agent()?;
        Ok(node)
    }

    /// The agent's TOML configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.path.join("agent.toml")
    }

    /// Starts `router-ctl agent --config` in the host namespace (its log appended to
    /// `agent.log`).
    pub fn start_agent(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("agent.log"))?;
        let child = self
            .ns
            .cmd(&self.bin)
            .arg("agent")
            .arg("--config")
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} agent", self.bin.display()))?;
        self.agent = Some(child);
        Ok(())
    }

    /// `kill -9` of the agent (its routers, datapath pins and sessions stay).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the agent still runs.
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The whole node dies: agent killed, its L2 agent silent, its routers' namespaces and its
    /// host namespace gone with their kernel state.
    pub fn die(mut self, routers: &[String]) {
        self.kill9();
        if let Some(l2) = self.l2.take() {
            l2.stop();
        }
        for r in routers {
            remove_netns(&format!("qrouter-{r}"));
        }
    }

    /// Everything the agent logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path.join("agent.log")).unwrap_or_default()
    }

    /// Waits until neutron lists this node's L3 agent alive (the agent reported).
    pub fn wait_registered(&mut self, stack: &Stack, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        loop {
            let alive = stack
                .os(&[
                    "network",
                    "agent",
                    "list",
                    "--host",
                    &self.host,
                    "--agent-type",
                    "l3",
                    "-f",
                    "json",
                ])
                .is_ok_and(|v| {
                    v.as_array()
                        .is_some_and(|a| a.iter().any(|x| x["Alive"] == true))
                });
            if alive {
                return Ok(());
            }
            if !self.agent_running() {
                bail!("router-ctl agent on {} exited:\n{}", self.host, self.log());
            }
            if Instant::now() > end {
                bail!(
                    "the agent on {} did not register within {limit:?}:\n{}",
                    self.host,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.kill9();
        drop(self.l2.take());
        drop(self.relay.take());
    }
}

/// A compute node: `eth-ten` on the flat tenant network's bridge, `eth-tun` on the underlay
/// (10.99.0.100) with a bridge per VXLAN network; VMs are namespaces plugged into those bridges
/// with the address and MAC of a Neutron port, as a compute node's L2 agent would wire them.
pub struct Compute {
    pub ns: Netns,
    pub tunnel_ip: String,
}

impl Compute {
    pub fn new(fabric: &Fabric, tunnel_ip: &str) -> Result<Self> {
        let ns = Netns::try_named(&unique("cmp"))?;
        fabric.plug("ten", &ns, "eth-ten")?;
        fabric.plug("und", &ns, "eth-tun")?;
        ns.try_ip(&["addr", "add", &format!("{tunnel_ip}/24"), "dev", "eth-tun"])?;
        ns.try_ip(&["link", "add", "br-flat", "type", "bridge"])?;
        ns.try_ip(&["link", "set", "eth-ten", "master", "br-flat"])?;
        ns.try_ip(&["link", "set", "br-flat", "up"])?;
        Ok(Self {
            ns,
            tunnel_ip: tunnel_ip.to_string(),
        })
    }

    /// The bridge of VXLAN network `vni` (made on first use, flooding to `peers`).
    pub fn vxlan_bridge(&self, vni: u64, peers: &[&str]) -> Result<String> {
        let br = format!("br-vx{vni}");
        if self.ns.has_link(&br) {
            return Ok(br);
        }
        let dev = format!("vxlan-{vni}");
        self.ns.try_ip(&[
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "local",
            &self.tunnel_ip,
            "dstport",
            VXLAN_PORT,
            "dev",
            "eth-tun",
        ])?;
        for p in peers {
            let out = std::process::Command::new("bridge")
                .args([
                    "-n",
                    &self.ns.name,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    &dev,
                    "dst",
                    p,
                ])
                .output()?;
            if !out.status.success() {
                bail!(
                    "bridge fdb append {p}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.ns.try_ip(&["link", "add", &br, "type", "bridge"])?;
        self.ns
            .try_ip(&["link", "set", &dev, "master", &br, "up"])?;
        self.ns.try_ip(&["link", "set", &br, "up"])?;
        Ok(br)
    }

    /// A VM on bridge `br` with the port's `mac` and `cidr` address, default route via `gw`.
    pub fn vm(&self, br: &str, mac: &str, cidr: &str, gw: &str, mtu: u64) -> Result<Netns> {
        let vm = Netns::try_named(&unique("vm"))?;
        let outer = unique("t");
        try_veth(&self.ns, &outer, &vm, "eth0")?;
        self.ns.try_ip(&["link", "set", &outer, "master", br])?;
        let mtu = mtu.to_string();
        vm.try_ip(&["link", "set", "eth0", "down"])?;
        vm.try_ip(&["link", "set", "eth0", "address", mac, "mtu", &mtu, "up"])?;
        vm.try_ip(&["addr", "add", cidr, "dev", "eth0"])?;
        vm.try_ip(&["route", "add", "default", "via", gw])?;
        Ok(vm)
    }
}

/// Removes `qrouter-<id>` namespaces on drop: the routers a test made, wherever an agent
/// built them, when a failure left them behind.
#[derive(Default)]
pub struct RouterNamespaces(pub Vec<String>);

impl Drop for RouterNamespaces {
    fn drop(&mut self) {
        for r in &self.0 {
            remove_netns(&format!("qrouter-{r}"));
        }
    }
}
