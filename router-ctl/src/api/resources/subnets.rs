//! Subnets: `/v2.0/subnets`, IPv4 and IPv6 (Neutron's `ipv6_ra_mode`/`ipv6_address_mode`
//! rules), with Neutron's pool, gateway and DNS validation.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{Cx, new_id};
use crate::{
    api::{
        input::{self, Obj},
        scope::owned,
    },
    model::{Fault, Ipv6Mode, Network, Subnet, host_range, ip_at, ip_index},
    store,
};

pub(super) fn subnet_view(s: &Subnet) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "network_id": s.network_id,
        "tenant_id": s.project_id,
        "project_id": s.project_id,
        "ip_version": s.ip_version(),
        "cidr": s.cidr.to_string(),
        "gateway_ip": s.gateway_ip.map(|g| g.to_string()),
        "allocation_pools": s.allocation_pools.iter()
            .map(|(a, b)| json!({"start": a.to_string(), "end": b.to_string()}))
            .collect::<Vec<_>>(),
        "enable_dhcp": s.enable_dhcp,
        "dns_nameservers": s.dns_nameservers.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "host_routes": [],
        "ipv6_ra_mode": s.ipv6_ra_mode.map(Ipv6Mode::as_str),
        "ipv6_address_mode": s.ipv6_address_mode.map(Ipv6Mode::as_str),
        "subnetpool_id": null,
    })
}

pub(super) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn parse_pools(o: &Obj, cidr: &IpNet) -> Result<Option<Vec<(IpAddr, IpAddr)>>, Fault> {
    let Some(list) = input::opt_list(o, "allocation_pools")? else {
        return Ok(None);
    };
    let hosts = host_range(cidr);
    let mut pools = Vec::new();
    for item in list {
        let Value::Object(p) = item else {
            return Err(input::bad_attr(
                "allocation_pools",
                format!("'{item}' is not a dictionary"),
            ));
        };
        input::only(p, &["start", "end"])
            .map_err(|e| input::bad_attr("allocation_pools", e.message))?;
        let (Some(s), Some(e)) = (p.get("start"), p.get("end")) else {
            return Err(input::bad_attr(
                "allocation_pools",
                "each pool needs start and end",
            ));
        };
        let (s, e) = (input::ip_value("start", s)?, input::ip_value("end", e)?);
        if s > e {
            return Err(Fault::new(
                400,
                "InvalidAllocationPool",
                format!("The allocation pool {s}-{e} is not valid."),
            ));
        }
        if !hosts.is_some_and(|(a, b)| s >= a && e <= b) {
            return Err(Fault::new(
                400,
                "OutOfBoundsAllocationPool",
                format!("The allocation pool {s}-{e} spans beyond the subnet cidr {cidr}."),
            ));
        }
        pools.push((s, e));
    }
    let mut sorted = pools.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        if w[1].0 <= w[0].1 {
            return Err(Fault::new(
                400,
                "OverlappingAllocationPools",
                format!(
                    "Found overlapping allocation pools: {}-{} and {}-{} for subnet {cidr}.",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
    Ok(Some(pools))
}

/// The host range of `cidr` minus the gateway (split around it), as Neutron defaults pools.
fn default_pools(cidr: &IpNet, gw: Option<IpAddr>) -> Vec<(IpAddr, IpAddr)> {
    let Some((a, b)) = host_range(cidr) else {
        return Vec::new();
    };
    match gw {
        Some(g) if g >= a && g <= b => {
            let (lo, hi, at) = (ip_index(a), ip_index(b), ip_index(g));
            let mut out = Vec::new();
            if at > lo
                && let Some(before) = ip_at(g, at - 1)
            {
                out.push((a, before));
            }
            if at < hi
                && let Some(after) = ip_at(g, at + 1)
            {
                out.push((after, b));
            }
            out
        }
        _ => vec![(a, b)],
    }
}

fn check_gateway(
    cidr: &IpNet,
    gw: Option<IpAddr>,
    pools: &[(IpAddr, IpAddr)],
) -> Result<(), Fault> {
    let Some(g) = gw else { return Ok(()) };
    let v4_broadcast = matches!(cidr, IpNet::V4(_)) && g == cidr.broadcast();
    if cidr.contains(&g) && (g == cidr.network() || v4_broadcast) {
        return Err(input::bad_attr(
            "gateway_ip",
            format!("'{g}' is the network or broadcast address of {cidr}"),
        ));
    }
    let broadcast = matches!(g, IpAddr::V4(a) if a.is_broadcast());
    if g.is_unspecified() || broadcast || g.is_multicast() {
        return Err(input::bad_attr(
            "gateway_ip",
            format!("'{g}' is not a valid gateway"),
        ));
    }
    if let Some((a, b)) = pools.iter().find(|(a, b)| g >= *a && g <= *b) {
        return Err(Fault::conflict(
            "GatewayConflictWithAllocationPools",
            format!("Gateway ip {g} conflicts with allocation pool {a}-{b}"),
        ));
    }
    Ok(())
}

fn parse_gateway(o: &Obj) -> Result<Option<Option<IpAddr>>, Fault> {
    match o.get("gateway_ip") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => Ok(Some(Some(input::ip_value("gateway_ip", v)?))),
    }
}

fn parse_dns(o: &Obj) -> Result<Option<Vec<IpAddr>>, Fault> {
    let Some(list) = input::opt_list(o, "dns_nameservers")? else {
        return Ok(None);
    };
    if list.len() > 5 {
        return Err(Fault::new(
            400,
            "DNSNameServersExhausted",
            "Unable to complete operation: exceeded maximum of 5 nameservers.",
        ));
    }
    let mut out = Vec::new();
    for v in list {
        let ip = input::ip_value("dns_nameservers", v)?;
        if out.contains(&ip) {
            return Err(input::bad_attr(
                "dns_nameservers",
                format!("duplicate nameserver '{ip}'"),
            ));
        }
        out.push(ip);
    }
    Ok(Some(out))
}

/// The `ip_version` and `cidr` of a new subnet, checked: the one place a subnet's family is
/// accepted (the family of `cidr` must be `ip_version`).
fn parse_cidr(o: &Obj) -> Result<IpNet, Fault> {
    let version = match o.get("ip_version") {
        Some(Value::Number(n)) if matches!(n.as_i64(), Some(4 | 6)) => n.as_i64(),
        Some(Value::String(s)) if s == "4" || s == "6" => s.parse().ok(),
        None => return Err(input::bad_attr("ip_version", "this attribute is required")),
        Some(v) => {
            return Err(input::bad_attr(
                "ip_version",
                format!("{v} is not in [4, 6]"),
            ));
        }
    };
    let cidr_text = match o.get("cidr") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(input::bad_attr("cidr", "this attribute is required")),
        Some(v) => {
            return Err(input::bad_attr(
                "cidr",
                format!("'{v}' is not a valid IP subnet"),
            ));
        }
    };
    let Ok(cidr) = cidr_text.parse::<IpNet>() else {
        return Err(input::bad_attr(
            "cidr",
            format!("'{cidr_text}' is not a valid IP subnet"),
        ));
    };
    let family = match cidr {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    };
    if version != Some(family) {
        return Err(Fault::invalid(format!(
            "Cidr {cidr} does not match the ip_version {}",
            version.unwrap_or(0)
        )));
    }
    if cidr.trunc() != cidr {
        return Err(input::bad_attr(
            "cidr",
            format!(
                "'{cidr}' isn't a recognized IP subnet cidr, '{}' is recommended",
                cidr.trunc()
            ),
        ));
    }
    let (max_len, what) = match cidr {
        IpNet::V4(_) => (30, "30"),
        IpNet::V6(_) => (126, "126"),
    };
    if cidr.prefix_len() > max_len {
        return Err(Fault::invalid(format!(
            "{cidr} is too small: the prefix length must be {what} or less"
        )));
    }
    // The store keeps IPv4 addresses IPv4-mapped (`store::addr_val`): an IPv6 subnet there
    // would be ambiguous, and Neutron refuses multicast subnets.
    let mapped: IpNet = "::ffff:0:0/96".parse().unwrap_or(cidr);
    if matches!(cidr, IpNet::V6(_)) && (overlaps(&cidr, &mapped) || cidr.network().is_multicast()) {
        return Err(Fault::invalid(format!(
            "{cidr} is not a usable IPv6 subnet (IPv4-mapped or multicast)"
        )));
    }
    Ok(cidr)
}

/// An optional `ipv6_ra_mode` / `ipv6_address_mode` value (null: none).
fn parse_mode(o: &Obj, key: &str) -> Result<Option<Ipv6Mode>, Fault> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if Ipv6Mode::parse(s).is_some() => Ok(Ipv6Mode::parse(s)),
        Some(v) => Err(input::bad_attr(
            key,
            format!("{v} is not in ['dhcpv6-stateful', 'dhcpv6-stateless', 'slaac', None]"),
        )),
    }
}

/// Neutron's `_validate_ipv6_attributes` for a new subnet: modes only on IPv6 subnets and
/// with DHCP enabled, equal when both are set, and a /64 for EUI-64 addresses.
fn check_ipv6_modes(
    cidr: &IpNet,
    ra: Option<Ipv6Mode>,
    address: Option<Ipv6Mode>,
    enable_dhcp: bool,
) -> Result<(), Fault> {
    if ra.is_none() && address.is_none() {
        return Ok(());
    }
    if matches!(cidr, IpNet::V4(_)) {
        return Err(Fault::invalid(
            "ipv6_ra_mode and ipv6_address_mode are only valid for IPv6 subnets",
        ));
    }
    if !enable_dhcp {
        return Err(Fault::invalid(
            "ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False",
        ));
    }
    if let (Some(r), Some(a)) = (ra, address)
        && r != a
    {
        return Err(Fault::invalid(format!(
            "ipv6_ra_mode set to '{}' with ipv6_address_mode set to '{}' is not valid. If both attributes are set, they must be the same value",
            r.as_str(),
            a.as_str()
        )));
    }
    let auto = |m: Option<Ipv6Mode>| matches!(m, Some(Ipv6Mode::Slaac | Ipv6Mode::Dhcpv6Stateless));
    if (auto(ra) || auto(address)) && cidr.prefix_len() != 64 {
        return Err(Fault::invalid(format!(
            "Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address format, which requires the prefix to be /64"
        )));
    }
    Ok(())
}

pub(super) fn create_subnet(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
    let network_id = input::req_uuid(o, "network_id")?;
    let cidr = parse_cidr(o)?;
    let project_id = input::owner(o, ctx, "create_subnet")?;
    let (name, description) = input::name_and_description(o)?;
    let enable_dhcp = input::opt_bool(o, "enable_dhcp")?.unwrap_or(true);
    let ipv6_ra_mode = parse_mode(o, "ipv6_ra_mode")?;
    let ipv6_address_mode = parse_mode(o, "ipv6_address_mode")?;
    check_ipv6_modes(&cidr, ipv6_ra_mode, ipv6_address_mode, enable_dhcp)?;
    let dns = parse_dns(o)?.unwrap_or_default();
    let gateway_ip = match parse_gateway(o)? {
        Some(g) => g,
        None => host_range(&cidr).map(|r| r.0),
    };
    let pools = match parse_pools(o, &cidr)? {
        Some(p) => p,
        None => default_pools(&cidr, gateway_ip),
    };
    check_gateway(&cidr, gateway_ip, &pools)?;
    let net = owned::<Network>(c, ctx, &network_id, "create_subnet")?;
    for other in store::network_subnets(c, &net.id)? {
        if overlaps(&other.cidr, &cidr) {
            return Err(Fault::invalid(format!(
                "Requested subnet with cidr: {cidr} for network: {} overlaps with another subnet",
                net.id
            )));
        }
    }
    let id = new_id();
    // A new subnet changes no router until a port uses it; touched for completeness.
    for r in store::routers_on_network(c, &net.id)? {
        fx.touch_router(c, &r)?;
    }
    store::insert(
        c,
        &Subnet {
            id: id.clone(),
            network_id: net.id,
            name,
            description,
            project_id,
            cidr,
            gateway_ip,
            allocation_pools: pools,
            enable_dhcp,
            dns_nameservers: dns,
            ipv6_ra_mode,
            ipv6_address_mode,
        },
    )?;
    Ok(id)
}

pub(super) fn update_subnet(cx: Cx, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let mut s = owned::<Subnet>(c, ctx, id, "update_subnet")?;
    input::set_string(o, "name", &mut s.name)?;
    input::set_string(o, "description", &mut s.description)?;
    if let Some(v) = input::opt_bool(o, "enable_dhcp")? {
        if !v && (s.ipv6_ra_mode.is_some() || s.ipv6_address_mode.is_some()) {
            // Neutron's `_validate_ipv6_update_dhcp`.
            return Err(Fault::invalid(
                "Cannot disable enable_dhcp with ipv6 attributes set",
            ));
        }
        s.enable_dhcp = v;
    }
    if let Some(v) = parse_dns(o)? {
        s.dns_nameservers = v;
    }
    if let Some(p) = parse_pools(o, &s.cidr)? {
        s.allocation_pools = p;
    }
    if let Some(g) = parse_gateway(o)? {
        if g != s.gateway_ip
            && let Some(old) = s.gateway_ip
            && store::ip_in_use(c, &s.id, old)?
        {
            return Err(Fault::conflict(
                "GatewayIpInUse",
                format!("Current gateway ip {old} already in use by a port. Unable to update."),
            ));
        }
        if let Some(new) = g
            && g != s.gateway_ip
            && store::ip_in_use(c, &s.id, new)?
        {
            return Err(Fault::conflict(
                "IpAddressInUse",
                format!(
                    "Unable to complete operation for network {}. The IP address {new} is in use.",
                    s.network_id
                ),
            ));
        }
        s.gateway_ip = g;
    }
    check_gateway(&s.cidr, s.gateway_ip, &s.allocation_pools)?;
    // The external subnet's gateway is the next hop of every router gatewayed on it.
    for r in store::routers_on_network(c, &s.network_id)? {
        fx.touch_router(c, &r)?;
    }
    store::update(c, &s)
}

pub(super) fn delete_subnet(cx: Cx, id: &str) -> Result<(), Fault> {
    let Cx { c, ctx, .. } = cx;
    owned::<Subnet>(c, ctx, id, "delete_subnet")?;
    if store::subnet_ip_count(c, id)? > 0 {
        return Err(Fault::conflict(
            "SubnetInUse",
            format!(
                "Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."
            ),
        ));
    }
    store::delete_subnet(c, id)
}
