//! Which attributes each collection has and how a request may use them: neutron-lib's
//! attribute maps (`allow_post`, `allow_put`, `is_filter`) for the attributes shown here. One
//! table per kind, so a new attribute is one line that says everything about it.

use super::Kind;

/// A `POST` may set the attribute (`allow_post`).
const POST: u8 = 1;
/// A `PUT` may change it (`allow_put`).
const PUT: u8 = 2;
/// A list may be filtered on it (`is_filter`).
const FILTER: u8 = 4;

/// An attribute and what may use it (`POST`, `PUT`, `FILTER`).
type Attr = (&'static str, u8);

/// The attributes of every kind with Neutron's standard attributes.
const COMMON: &[Attr] = &[
    ("id", FILTER),
    ("tenant_id", FILTER | POST),
    ("project_id", FILTER | POST),
    ("description", FILTER | POST | PUT),
    ("revision_number", FILTER),
];

const NETWORK: &[Attr] = &[
    ("name", FILTER | POST | PUT),
    ("admin_state_up", FILTER | POST | PUT),
    ("status", FILTER),
    ("shared", FILTER | POST | PUT),
    ("router:external", FILTER | POST | PUT),
    ("provider:network_type", FILTER | POST),
    ("provider:physical_network", FILTER | POST),
    ("provider:segmentation_id", FILTER | POST),
    ("mtu", FILTER | POST | PUT),
];

const SUBNET: &[Attr] = &[
    ("name", FILTER | POST | PUT),
    ("ip_version", FILTER | POST),
    ("network_id", FILTER | POST),
    ("subnetpool_id", FILTER),
    ("cidr", FILTER | POST),
    ("gateway_ip", FILTER | POST | PUT),
    ("allocation_pools", POST | PUT),
    ("enable_dhcp", FILTER | POST | PUT),
    ("dns_nameservers", POST | PUT),
    ("ipv6_ra_mode", FILTER | POST),
    ("ipv6_address_mode", FILTER | POST),
    ("shared", FILTER),
];

const PORT: &[Attr] = &[
    ("name", FILTER | POST | PUT),
    ("network_id", FILTER | POST),
    ("admin_state_up", FILTER | POST | PUT),
    ("mac_address", FILTER | POST),
    ("fixed_ips", FILTER | POST),
    ("device_id", FILTER | POST | PUT),
    ("device_owner", FILTER | POST | PUT),
    ("status", FILTER),
];

const ROUTER: &[Attr] = &[
    ("name", FILTER | POST | PUT),
    ("admin_state_up", FILTER | POST | PUT),
    ("external_gateway_info", POST | PUT),
    ("routes", PUT),
];

const FLOATING_IP: &[Attr] = &[
    ("floating_ip_address", FILTER | POST),
    ("floating_network_id", FILTER | POST),
    ("subnet_id", POST),
    ("router_id", FILTER),
    ("port_id", FILTER | POST | PUT),
    ("fixed_ip_address", FILTER | POST | PUT),
    ("status", FILTER),
];

/// Port forwardings have no standard attributes, so their own `id` and `description`.
const PORT_FORWARDING: &[Attr] = &[
    ("id", FILTER),
    ("protocol", FILTER | POST | PUT),
    ("external_port", FILTER | POST | PUT),
    ("internal_port_id", FILTER | POST | PUT),
    ("internal_ip_address", POST | PUT),
    ("internal_port", POST | PUT),
    ("description", FILTER | POST | PUT),
];

/// The attributes of `kind` that `by` (`POST`, `PUT` or `FILTER`) allows.
fn allowed(kind: Kind, by: u8) -> Vec<&'static str> {
    let own = match kind {
        Kind::Network => NETWORK,
        Kind::Subnet => SUBNET,
        Kind::Port => PORT,
        Kind::Router => ROUTER,
        Kind::FloatingIp => FLOATING_IP,
        Kind::PortForwarding => PORT_FORWARDING,
    };
    let common = if kind.standard_type().is_some() {
        COMMON
    } else {
        &[]
    };
    common
        .iter()
        .chain(own)
        .filter(|(_, uses)| uses & by != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The attributes a list of `kind` may be filtered on.
pub(super) fn filterable(kind: Kind) -> Vec<&'static str> {
    allowed(kind, FILTER)
}

/// The attributes a `POST` (`create`) or a `PUT` of `kind` may carry.
pub(super) fn writable(kind: Kind, create: bool) -> Vec<&'static str> {
    allowed(kind, if create { POST } else { PUT })
}
