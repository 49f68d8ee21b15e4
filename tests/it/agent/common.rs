//! What the agent-mode tests share: the site around their network nodes, the networks they
//! make through the `openstack` CLI and a VM wired to one of them on the compute node.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tests::{
    daemon::router_ctl_bin,
    netns::{Netns, unique},
    neutron::{
        Cloud, Stack, id_of,
        networks::{self, Provider},
        node::{AgentNode, Compute, Fabric, RouterNamespaces},
        traffic::PeerEcho,
    },
};

/// The upstream router's address on the external network (its subnet's gateway).
pub const UPSTREAM: &str = "203.0.113.1";
/// The port of every probe server.
pub const PORT: u16 = 8080;

/// `ip:PORT`.
pub fn at(ip: &str) -> SocketAddr {
    format!("{ip}:{PORT}")
        .parse()
        .unwrap_or_else(|e| panic!("{ip}: {e}"))
}

/// Runs an agent test: as root, against the run's neutron stack (or one of the test's own),
/// with a [`Cloud`] that deletes what the test made and the [`Site`]. The site goes first,
/// then the cloud's undo list, then the stack, even when the test fails.
pub fn agent_test(test: impl FnOnce(&Cloud, &mut Site)) {
    tests::require_root();
    let stack = Stack::for_test();
    let cloud = Cloud::new(&stack);
    let mut site = Site::new();
    test(&cloud, &mut site);
}

/// The data plane around an agent test's network nodes: the fabric, the upstream router at
/// [`UPSTREAM`] with a probe server behind it, the compute node at 10.99.0.100, and the
/// qrouter namespaces of the test's routers (deleted even if an agent died). Fields are
/// dropped in order: the compute node first, the qrouter namespaces last.
pub struct Site {
    pub compute: Compute,
    _web: PeerEcho,
    pub upstream: Netns,
    pub fabric: Fabric,
    pub qrouters: RouterNamespaces,
}

impl Site {
    pub fn new() -> Self {
        let fabric = Fabric::new().unwrap_or_else(|e| panic!("{e:#}"));
        let upstream = fabric
            .upstream(&format!("{UPSTREAM}/24"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let web = PeerEcho::start(&upstream.name, PORT).unwrap_or_else(|e| panic!("{e:#}"));
        let compute = Compute::new(&fabric, "10.99.0.100").unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            compute,
            _web: web,
            upstream,
            fabric,
            qrouters: RouterNamespaces::default(),
        }
    }

    /// A network node `host` on the fabric at `ip` running `router-ctl agent`, tunnelling to
    /// `peers`, once neutron has registered it (its agents forgotten when `cloud` drops).
    pub fn agent_node(&self, cloud: &Cloud, host: &str, ip: &str, peers: &[&str]) -> AgentNode {
        cloud.forget_agents_on_drop(host);
        let mut node = AgentNode::start(
            cloud.stack,
            &self.fabric,
            &router_ctl_bin(),
            host,
            ip,
            peers,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        node.wait_registered(cloud.stack, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}"));
        node
    }
}

/// A network and its subnet as the CLI returned them.
pub struct Net {
    pub net: Value,
    pub subnet: Value,
}

impl Net {
    pub fn id(&self) -> String {
        id_of(&self.net)
    }
    pub fn subnet_id(&self) -> String {
        id_of(&self.subnet)
    }
}

/// The external network: flat on physnet `public`, 203.0.113.0/24 behind the upstream router.
pub fn external(cloud: &Cloud) -> Net {
    let net = cloud.create(
        "network",
        &networks::external_network_args(&unique("public")),
    );
    let subnet = cloud.create(
        "subnet",
        &networks::external_subnet_args(
            &unique("public-v4"),
            &id_of(&net),
            UPSTREAM,
            ("203.0.113.20", "203.0.113.80"),
        ),
    );
    Net { net, subnet }
}

/// A tenant network: flat on physnet `tenant` (`vni` None) or VXLAN with segment `vni`.
pub fn tenant(cloud: &Cloud, vni: Option<u32>, cidr: &str) -> Net {
    let provider = vni.map_or(Provider::Flat("tenant"), Provider::Vxlan);
    let name = unique("tenant");
    let net = cloud.create("network", &networks::network_args(&name, provider, false));
    let subnet = cloud.create(
        "subnet",
        &networks::subnet_args(&format!("{name}-v4"), &id_of(&net), cidr, None, None),
    );
    Net { net, subnet }
}

/// A VM on `net`: a Neutron port (its MAC and address) wired on the compute node, flooding to
/// `peers` for a VXLAN network. Returns the VM's namespace and the port.
pub fn vm(cloud: &Cloud, compute: &Compute, net: &Net, peers: &[&str]) -> (Netns, Value) {
    let port = cloud.create("port", &["--network", &net.id(), &unique("vm")]);
    let mac = port["mac_address"].as_str().expect("mac");
    let ip = port["fixed_ips"][0]["ip_address"].as_str().expect("ip");
    let prefix = net.subnet["cidr"]
        .as_str()
        .and_then(|c| c.split('/').nth(1))
        .expect("cidr");
    let gw = net.subnet["gateway_ip"].as_str().expect("gateway_ip");
    let mtu = net.net["mtu"].as_u64().unwrap_or(1500);
    let br = match net.net["provider:network_type"].as_str() {
        Some("vxlan") => {
            let vni = net.net["provider:segmentation_id"].as_u64().expect("vni");
            compute
                .vxlan_bridge(vni, peers)
                .unwrap_or_else(|e| panic!("{e:#}"))
        }
        _ => "br-flat".to_string(),
    };
    let ns = compute
        .vm(&br, mac, &format!("{ip}/{prefix}"), gw, mtu)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (ns, port)
}

/// The router's gateway address.
pub fn gateway_ip(router: &Value) -> String {
    router["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway IP in {router}"))
        .to_string()
}

/// Polls `f` every 500 ms for up to `limit`; panics with `what` and `log()` otherwise.
pub fn wait(what: &str, limit: Duration, log: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: not within {limit:?}\n{}", log());
}
