//! Desired state handed from the store to the realiser: everything the kernel side needs to
//! build a network or a router, and nothing it does not (no names, no projects).
//!
//! The store computes these inside the transaction that changes them; the realiser never reads
//! the database.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Ipv6Mode;

/// A Neutron network, realised as the Linux bridge `brq<id[:11]>` in the daemon's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: String,
    /// How the bridge reaches the rest of the network: what is enslaved to it.
    pub segment: Segment,
    /// `router:external`
    pub external: bool,
}

/// A network's provider segment (`provider:network_type` and friends), as the linuxbridge
/// agent wired it: the device enslaved to the network's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `local`: the bridge alone.
    Local,
    /// `flat` on a physical network: the interface the config maps it to.
    Flat { physical_network: String },
    /// `vlan`: the subinterface `<iface>.<vlan_id>` of the mapped interface (802.1Q).
    Vlan {
        physical_network: String,
        vlan_id: u16,
    },
    /// `vxlan`: the device `vxlan-<vni>` on this node's tunnel endpoint.
    Vxlan { vni: u32 },
}

impl Segment {
    /// The API's two kinds: flat on a physical network, or local.
    pub fn flat_or_local(physical_network: Option<String>) -> Self {
        match physical_network {
            Some(physical_network) => Segment::Flat { physical_network },
            None => Segment::Local,
        }
    }

    /// The physical network the segment is on, if any.
    pub fn physical_network(&self) -> Option<&str> {
        match self {
            Segment::Flat { physical_network }
            | Segment::Vlan {
                physical_network, ..
            } => Some(physical_network),
            Segment::Local | Segment::Vxlan { .. } => None,
        }
    }
}

/// One port of a router (an internal interface or the gateway): the veth `qr-`/`qg-<port[:11]>`
/// inside the router namespace, its peer `tap<port[:11]>` in the network's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub port_id: String,
    pub network_id: String,
    pub mac: [u8; 6],
    /// The port's fixed IPs, each with the prefix length of its subnet (`10.0.0.1/24`): the
    /// addresses of its device, of either family.
    pub addresses: Vec<IpNet>,
    /// The MTU of the port's network: both ends of its veth pair carry it (as Neutron's L3
    /// agent plugs router ports with the network's MTU).
    pub mtu: u32,
    /// The IPv6 prefixes the router advertises on this port (its subnets with
    /// `ipv6_ra_mode`); used on interfaces only, never on the gateway.
    pub ra_prefixes: Vec<RaPrefix>,
}

/// One prefix of a router advertisement: a subnet with `ipv6_ra_mode`, whose mode decides the
/// flags (slaac: A; dhcpv6-stateless: A and O; dhcpv6-stateful: M, no A), as Neutron's radvd
/// configuration does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaPrefix {
    pub prefix: Ipv6Net,
    pub mode: Ipv6Mode,
}

impl PortSpec {
    /// Whether the port has an IPv6 address (else IPv6 is off on its device).
    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| matches!(a, IpNet::V6(_)))
    }

    /// The port's first IPv4 address: the one ARP announces and NAT uses.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.addresses.iter().find_map(|a| match a {
            IpNet::V4(v) => Some(*v),
            IpNet::V6(_) => None,
        })
    }

    /// Whether `ip` is on one of the port's subnets (an on-link next hop).
    pub fn on_link(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.contains(&ip))
    }
}

/// The external gateway of a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub port: PortSpec,
    /// `gateway_ip` of each external subnet the port has an address on: the next hop of the
    /// default route of its family (none: no default route of that family).
    pub next_hops: Vec<IpAddr>,
    pub enable_snat: bool,
}

impl GatewaySpec {
    /// The address SNAT translates to (and the datapath's gateway address): the port's IPv4
    /// address. Floating IPs and SNAT are IPv4 only.
    pub fn snat_ip(&self) -> Option<Ipv4Addr> {
        self.port.ipv4().map(|n| n.addr())
    }
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
    /// Extra routes (Neutron's `routes`), in the order the API keeps them.
    pub routes: Vec<RouteSpec>,
}

impl GatewaySpec {
    /// Whether the router has a default IPv6 route (an external v6 subnet with a gateway):
    /// then `qg-` accepts no router advertisements, as Neutron's L3 agent sets `accept_ra`.
    pub fn has_ipv6_next_hop(&self) -> bool {
        self.next_hops.iter().any(IpAddr::is_ipv6)
    }
}

/// An extra route of a router: `destination` via `nexthop`, a neighbour on one of the router's
/// subnets (the API checks it; the kernel finds the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub nexthop: IpAddr,
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
    /// IPv4 CIDRs of the internal interfaces: the sources SNAT applies to (IPv6 is routed
    /// without translation).
    pub fn internal_cidrs(&self) -> Vec<Ipv4Net> {
        self.interfaces
            .iter()
            .flat_map(|p| &p.addresses)
            .filter_map(|a| match a {
                IpNet::V4(v) => Some(v.trunc()),
                IpNet::V6(_) => None,
            })
            .collect()
    }
}

/// Everything the daemon should have realised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub networks: Vec<NetworkSpec>,
    pub routers: Vec<RouterSpec>,
}

/// Kernel names derived from Neutron ids, as the L3 and linuxbridge agents name them: made and
/// parsed here only.
pub mod names {
    /// Linux limits interface names to 15 bytes; Neutron keeps 11 characters of the id.
    const ID_LEN: usize = 11;

    const NETNS: &str = "qrouter-";
    const BRIDGE: &str = "brq";
    const RETIRED_BRIDGE: &str = "brd";
    const INTERNAL: &str = "qr-";
    const GATEWAY: &str = "qg-";
    const TAP: &str = "tap";
    const VXLAN: &str = "vxlan-";

    fn short(id: &str) -> &str {
        &id[..id.len().min(ID_LEN)]
    }
    /// The router's namespace.
    pub fn router_netns(router_id: &str) -> String {
        format!("{NETNS}{router_id}")
    }
    /// The network's bridge (linuxbridge's name, so tools that know Neutron find it).
    pub fn bridge(network_id: &str) -> String {
        format!("{BRIDGE}{}", short(network_id))
    }
    /// A network's bridge after its network was deleted, while the kernel takes it down in the
    /// background (`Realiser::remove_network`): the `brq` name is free again at once.
    pub fn retired_bridge(network_id: &str) -> String {
        format!("{RETIRED_BRIDGE}{}", short(network_id))
    }
    /// Whether `dev` is a retired bridge's name.
    pub fn is_retired_bridge(dev: &str) -> bool {
        dev.starts_with(RETIRED_BRIDGE)
    }
    /// A router interface's device inside the router namespace.
    pub fn internal_dev(port_id: &str) -> String {
        format!("{INTERNAL}{}", short(port_id))
    }
    /// The gateway's device inside the router namespace.
    pub fn gateway_dev(port_id: &str) -> String {
        format!("{GATEWAY}{}", short(port_id))
    }
    /// Bridge-side peer of a router port (what linuxbridge calls the tap).
    pub fn tap_dev(port_id: &str) -> String {
        format!("{TAP}{}", short(port_id))
    }

    /// The VXLAN device of a network's segment (the linuxbridge agent's name).
    pub fn vxlan_dev(vni: u32) -> String {
        format!("{VXLAN}{vni}")
    }
    /// The 802.1Q subinterface of `iface` for `vlan_id` (the linuxbridge agent's name); None
    /// when it would not fit the 15 bytes of an interface name.
    pub fn vlan_dev(iface: &str, vlan_id: u16) -> Option<String> {
        let name = format!("{iface}.{vlan_id}");
        (name.len() <= 15).then_some(name)
    }

    /// The router id of a `qrouter-` namespace name.
    pub fn parse_router_netns(name: &str) -> Option<&str> {
        name.strip_prefix(NETNS).filter(|id| !id.is_empty())
    }

    /// Whether `name` is a router port's tap (purge deletes taps before bridges).
    pub fn is_tap(name: &str) -> bool {
        name.starts_with(TAP)
    }

    /// A device of a router namespace this daemon makes: a port's `qr-`/`qg-` end.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RouterDev {
        /// The port id as the name keeps it (its first 11 characters).
        pub port: String,
        pub gateway: bool,
    }

    impl RouterDev {
        /// The device's own name.
        pub fn name(&self) -> String {
            if self.gateway {
                gateway_dev(&self.port)
            } else {
                internal_dev(&self.port)
            }
        }
        /// Its peer in the daemon's namespace.
        pub fn tap(&self) -> String {
            tap_dev(&self.port)
        }
    }

    /// The router port behind a router-namespace device name; None for any other device.
    pub fn parse_router_dev(name: &str) -> Option<RouterDev> {
        let (port, gateway) = match (name.strip_prefix(INTERNAL), name.strip_prefix(GATEWAY)) {
            (Some(p), _) => (p, false),
            (_, Some(p)) => (p, true),
            _ => return None,
        };
        (!port.is_empty()).then(|| RouterDev {
            port: port.to_string(),
            gateway,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_parse_back() {
            let id = "0123456789abcdef";
            let qg = parse_router_dev(&gateway_dev(id)).unwrap();
            assert!(qg.gateway);
            assert_eq!(qg.name(), "qg-0123456789a");
            assert_eq!(qg.tap(), tap_dev(id));
            let qr = parse_router_dev(&internal_dev(id)).unwrap();
            assert!(!qr.gateway);
            assert_eq!(qr.tap(), "tap0123456789a");
            assert_eq!(parse_router_dev("lo"), None);
            assert_eq!(parse_router_netns(&router_netns("r-1")), Some("r-1"));
            assert_eq!(parse_router_netns("other"), None);
            assert!(is_tap(&tap_dev(id)) && !is_tap(&bridge(id)));
            assert_eq!(vxlan_dev(16_777_215), "vxlan-16777215");
            assert_eq!(vlan_dev("eth-ten", 100).as_deref(), Some("eth-ten.100"));
            assert_eq!(vlan_dev("averylongname", 4094), None, "over 15 bytes");
        }
    }
}
