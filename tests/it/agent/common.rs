//! What the agent-mode tests share: the networks they make through the `openstack` CLI and a
//! VM wired to one of them on the compute node.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tests::{
    netns::{Netns, unique},
    neutron::{Cloud, id_of, node::Compute},
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
        &[
            "--external",
            "--provider-network-type",
            "flat",
            "--provider-physical-network",
            "public",
            &unique("public"),
        ],
    );
    let subnet = cloud.create(
        "subnet",
        &[
            "--network",
            &id_of(&net),
            "--subnet-range",
            "203.0.113.0/24",
            "--gateway",
            UPSTREAM,
            "--allocation-pool",
            "start=203.0.113.20,end=203.0.113.80",
            "--no-dhcp",
            &unique("public-v4"),
        ],
    );
    Net { net, subnet }
}

/// A tenant network: flat on physnet `tenant` (`vni` None) or VXLAN with segment `vni`.
pub fn tenant(cloud: &Cloud, vni: Option<u32>, cidr: &str) -> Net {
    let seg = vni.map(|v| v.to_string()).unwrap_or_default();
    let provider: Vec<&str> = match vni {
        None => vec![
            "--provider-network-type",
            "flat",
            "--provider-physical-network",
            "tenant",
        ],
        Some(_) => vec![
            "--provider-network-type",
            "vxlan",
            "--provider-segment",
            &seg,
        ],
    };
    let name = unique("tenant");
    let net = cloud.create("network", &[&provider[..], &[name.as_str()]].concat());
    let subnet = cloud.create(
        "subnet",
        &[
            "--network",
            &id_of(&net),
            "--subnet-range",
            cidr,
            "--no-dhcp",
            &format!("{name}-v4"),
        ],
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
