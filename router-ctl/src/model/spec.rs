//! Desired state handed from the store to the realiser: everything the kernel side needs to
//! build a network or a router, and nothing it does not (no names, no projects).
//!
//! The store computes these inside the transaction that changes them; the realiser never reads
//! the database.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A Neutron network, realised as the Linux bridge `brq<id[:11]>` in the daemon's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: String,
    /// `provider:physical_network`; mapped by the config to a host interface to enslave.
    pub physical_network: Option<String>,
    /// `router:external`
    pub external: bool,
}

/// One port of a router (an internal interface or the gateway): the veth `qr-`/`qg-<port[:11]>`
/// inside the router namespace, its peer `tap<port[:11]>` in the network's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub port_id: String,
    pub network_id: String,
    pub mac: [u8; 6],
    /// The port's fixed IP and the prefix length of its subnet.
    pub ip: Ipv4Addr,
    pub subnet_cidr: Ipv4Net,
}

/// The external gateway of a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub port: PortSpec,
    /// `gateway_ip` of the external subnet: the default route's next hop (None: no route).
    pub next_hop: Option<Ipv4Addr>,
    pub enable_snat: bool,
}

/// A router: netns `qrouter-<id>`, its interfaces, its gateway and NAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    pub id: String,
    /// Small number naming the router in the datapath maps (unique per daemon, never reused
    /// while the router exists).
    pub dp_id: u32,
    pub admin_state_up: bool,
    pub interfaces: Vec<PortSpec>,
    pub gateway: Option<GatewaySpec>,
    /// Floating IPs on the router's external network (see `FloatingIpSpec`).
    pub floating_ips: Vec<FloatingIpSpec>,
    /// Port forwardings of those floating IPs.
    pub port_forwardings: Vec<PortForwardingSpec>,
}

/// A floating IP served by a router: its address sits on the gateway device (so the router
/// answers ARP for it); when associated, the datapath translates it 1:1 to `fixed_ip`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FloatingIpSpec {
    pub floating_ip: Ipv4Addr,
    /// None: not associated (held for port forwardings only).
    pub fixed_ip: Option<Ipv4Addr>,
}

/// A port forwarding: `floating_ip:external_port` ⇄ `internal_ip:internal_port` for one
/// protocol (IP protocol number: 6 TCP, 17 UDP).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortForwardingSpec {
    pub protocol: u8,
    pub floating_ip: Ipv4Addr,
    pub external_port: u16,
    pub internal_ip: Ipv4Addr,
    pub internal_port: u16,
}

impl RouterSpec {
    /// CIDRs of the internal interfaces: the sources SNAT applies to.
    pub fn internal_cidrs(&self) -> Vec<Ipv4Net> {
        self.interfaces
            .iter()
            .map(|p| p.subnet_cidr.trunc())
            .collect()
    }
}

/// Everything the daemon should have realised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub networks: Vec<NetworkSpec>,
    pub routers: Vec<RouterSpec>,
}

/// Kernel names derived from Neutron ids, as the L3 and linuxbridge agents name them.
pub mod names {
    /// Linux limits interface names to 15 bytes; Neutron keeps 11 characters of the id.
    const ID_LEN: usize = 11;

    fn short(id: &str) -> &str {
        &id[..id.len().min(ID_LEN)]
    }
    pub fn router_netns(router_id: &str) -> String {
        format!("qrouter-{router_id}")
    }
    pub fn bridge(network_id: &str) -> String {
        format!("brq{}", short(network_id))
    }
    pub fn internal_dev(port_id: &str) -> String {
        format!("qr-{}", short(port_id))
    }
    pub fn gateway_dev(port_id: &str) -> String {
        format!("qg-{}", short(port_id))
    }
    /// Bridge-side peer of a router port (what linuxbridge calls the tap).
    pub fn tap_dev(port_id: &str) -> String {
        format!("tap{}", short(port_id))
    }
}
