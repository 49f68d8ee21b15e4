//! Domain model: Neutron resources as the API and the store see them, the error every layer
//! answers with (`Fault`, rendered as a NeutronError body), and the desired kernel state
//! (`spec`) that the realiser converges to.

pub mod spec;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use serde::Serialize;

use ipnet::IpNet;

/// Neutron's `device_owner` of a router's internal interface port.
pub const OWNER_ROUTER_INTERFACE: &str = "network:router_interface";
/// Neutron's `device_owner` of a router's external gateway port.
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
/// Neutron's `device_owner` of the port holding a floating IP's address.
pub const OWNER_FLOATINGIP: &str = "network:floatingip";
/// Prefix of every `device_owner` Neutron's own services use: such ports (router, DHCP,
/// floating IP) never get a floating IP.
pub const OWNER_NETWORK_PREFIX: &str = "network:";

/// A failed request as Neutron reports it: HTTP status, exception type name, message.
///
/// Store and API share it so a constraint found deep in the store reaches the client with
/// Neutron's code and type, not as a generic error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} ({status}): {message}")]
pub struct Fault {
    pub status: u16,
    pub kind: String,
    pub message: String,
}

impl Fault {
    pub fn new(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_string(),
            message: message.into(),
        }
    }
    /// 400 for a request the API cannot understand or accept.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "HTTPBadRequest", message)
    }
    /// 400 `InvalidInput`, Neutron's answer to a value that fails validation.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "InvalidInput",
            format!("Invalid input for operation: {}.", message.into()),
        )
    }
    /// 404 `<Resource>NotFound` with Neutron's wording.
    pub fn not_found(resource: &str, id: &str) -> Self {
        let kind = format!("{}NotFound", capitalise(resource));
        Self {
            status: 404,
            kind,
            message: format!("{} {id} could not be found.", capitalise(resource)),
        }
    }
    /// 409 with a Neutron exception name.
    pub fn conflict(kind: &str, message: impl Into<String>) -> Self {
        Self::new(409, kind, message)
    }
    /// 403 `PolicyNotAuthorized` for `rule`.
    pub fn policy(rule: &str) -> Self {
        Self::new(
            403,
            "PolicyNotAuthorized",
            format!("({rule}) is disallowed by policy"),
        )
    }
    /// 500 for a genuine internal failure (database or kernel), with its message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "HTTPInternalServerError", message)
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(err, _) = &e
            && err.code == rusqlite::ErrorCode::ConstraintViolation
        {
            return Fault::conflict("Conflict", format!("Database constraint violated: {e}"));
        }
        Fault::internal(format!("database error: {e}"))
    }
}

/// A Neutron network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub admin_state_up: bool,
    /// `router:external`
    pub external: bool,
    /// `provider:physical_network`
    pub physical_network: Option<String>,
    pub shared: bool,
    pub status: String,
    /// The largest IP packet the network carries (`mtu`, Neutron's `net-mtu-writable`).
    pub mtu: u32,
}

/// The attributes Neutron gives every standard resource (networks, subnets, ports, routers,
/// floating IPs): how often it changed, when, and the user's tags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandardAttrs {
    /// 0 at creation, +1 per request that changed the resource (`If-Match` compares it).
    pub revision_number: i64,
    /// `2026-12-04T21:40:00Z`
    pub created_at: String,
    /// As `created_at`, of the last change.
    pub updated_at: String,
    /// Sorted.
    pub tags: Vec<String>,
}

/// A subnet of a network. Addresses carry their family; the API accepts IPv4 only for now
/// (`api::input`), so every stored subnet is IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub cidr: IpNet,
    pub gateway_ip: Option<IpAddr>,
    /// Inclusive ranges IPs are allocated from, in order.
    pub allocation_pools: Vec<(IpAddr, IpAddr)>,
    pub enable_dhcp: bool,
    pub dns_nameservers: Vec<IpAddr>,
    /// IPv6 subnets: who sends router advertisements and with which flags (None: not this
    /// router; an upstream router may).
    pub ipv6_ra_mode: Option<Ipv6Mode>,
    /// IPv6 subnets: how ports get their addresses (SLAAC and DHCPv6-stateless: EUI-64 of the
    /// port's MAC, computed by IPAM as Neutron does).
    pub ipv6_address_mode: Option<Ipv6Mode>,
}

impl Subnet {
    /// Neutron's `ip_version`.
    pub fn ip_version(&self) -> u8 {
        match self.cidr {
            IpNet::V4(_) => 4,
            IpNet::V6(_) => 6,
        }
    }

    /// Neutron's `is_auto_address_subnet`: ports take their EUI-64 address, not one from the
    /// pools (router interfaces excepted: they hold the gateway address).
    pub fn auto_address(&self) -> bool {
        let auto =
            |m: Option<Ipv6Mode>| matches!(m, Some(Ipv6Mode::Slaac | Ipv6Mode::Dhcpv6Stateless));
        matches!(self.cidr, IpNet::V6(_))
            && (auto(self.ipv6_address_mode) || auto(self.ipv6_ra_mode))
    }
}

/// Neutron's `ipv6_ra_mode` / `ipv6_address_mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ipv6Mode {
    Slaac,
    Dhcpv6Stateful,
    Dhcpv6Stateless,
}

impl Ipv6Mode {
    /// The API (and column) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slaac => "slaac",
            Self::Dhcpv6Stateful => "dhcpv6-stateful",
            Self::Dhcpv6Stateless => "dhcpv6-stateless",
        }
    }

    /// Parses the API spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Slaac, Self::Dhcpv6Stateful, Self::Dhcpv6Stateless]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Neutron's `get_ipv6_addr_by_EUI64`: the interface identifier made from the MAC (universal/
/// local bit flipped, `ff:fe` in the middle) after the /64 prefix.
pub fn eui64_address(prefix: &ipnet::Ipv6Net, mac: &[u8; 6]) -> Ipv6Addr {
    let mut o = prefix.network().octets();
    o[8..].copy_from_slice(&[
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    Ipv6Addr::from(o)
}

/// One address of a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip: IpAddr,
}

/// A Neutron port: a MAC and addresses on a network, owned by a device (here: routers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub mac: [u8; 6],
    pub admin_state_up: bool,
    pub device_owner: String,
    pub device_id: String,
    pub status: String,
    pub fixed_ips: Vec<FixedIp>,
}

/// A Neutron router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub admin_state_up: bool,
    pub status: String,
    /// Datapath slot (see `spec::RouterSpec::dp_id`).
    pub dp_id: u32,
    /// The external gateway port, if a gateway is set.
    pub gw_port_id: Option<String>,
    pub enable_snat: bool,
}

/// A floating IP as the API sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub project_id: String,
    pub description: String,
    pub floating_network_id: String,
    /// The port on the external network holding the address.
    pub floating_port_id: String,
    pub floating_ip: IpAddr,
    pub port_id: Option<String>,
    pub fixed_ip: Option<IpAddr>,
    pub router_id: Option<String>,
}

/// A port forwarding of a floating IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForwarding {
    pub id: String,
    pub floatingip_id: String,
    /// "tcp" or "udp"
    pub protocol: String,
    pub external_port: u16,
    pub internal_port_id: String,
    pub internal_ip: IpAddr,
    pub internal_port: u16,
    pub description: String,
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
    /// "snat", "floating_ip" or "port_forwarding"
    pub kind: String,
    /// e.g. "SYN_SENT", "ESTABLISHED", "CLOSING", "UNREPLIED", "REPLIED"
    pub state: String,
    /// Seconds since the last packet in either direction.
    pub idle_secs: u64,
}

/// `fa:16:3e:xx:xx:xx` text form of a MAC.
pub fn mac_to_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); None when malformed.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Host addresses of `cidr` as an inclusive range: the network address and (IPv4) the
/// broadcast address excluded, as Neutron allocates. None when there is no host address.
pub fn host_range(cidr: &IpNet) -> Option<(IpAddr, IpAddr)> {
    let (first, last) = match cidr {
        IpNet::V4(n) => (
            ip_index(n.network().into()),
            ip_index(n.broadcast().into()).saturating_sub(1),
        ),
        IpNet::V6(n) => (ip_index(n.network().into()), ip_index(n.broadcast().into())),
    };
    let first = first + 1;
    if last < first {
        return None;
    }
    Some((ip_at(cidr.addr(), first)?, ip_at(cidr.addr(), last)?))
}

/// The address as a number, for ranges and offsets in either family.
pub fn ip_index(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address numbered `n` in the family of `like` (None when out of that family's range).
pub fn ip_at(like: IpAddr, n: u128) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(n).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpAddr::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}
