//! Subnets: `/v2.0/subnets`, IPv4 only, with Neutron's pool, gateway and DNS validation.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{Cx, new_id};
use crate::{
    api::{
        input::{self, Obj},
        scope::owned,
    },
    model::{Fault, Network, Subnet, host_range, ip_at, ip_index},
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
        "ip_version": 4,
        "cidr": s.cidr.to_string(),
        "gateway_ip": s.gateway_ip.map(|g| g.to_string()),
        "allocation_pools": s.allocation_pools.iter()
            .map(|(a, b)| json!({"start": a.to_string(), "end": b.to_string()}))
            .collect::<Vec<_>>(),
        "enable_dhcp": s.enable_dhcp,
        "dns_nameservers": s.dns_nameservers.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "host_routes": [],
        "ipv6_ra_mode": null,
        "ipv6_address_mode": null,
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
    if cidr.contains(&g) && (g == cidr.network() || g == cidr.broadcast()) {
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
/// accepted (IPv4 only for now; IPv6 is refused with 400).
fn parse_cidr(o: &Obj) -> Result<IpNet, Fault> {
    match o.get("ip_version") {
        Some(Value::Number(n)) if n.as_i64() == Some(4) => {}
        Some(Value::String(s)) if s == "4" => {}
        Some(Value::Number(n)) if n.as_i64() == Some(6) => {
            return Err(Fault::invalid(
                "IPv6 subnets are not supported; ip_version must be 4",
            ));
        }
        Some(Value::String(s)) if s == "6" => {
            return Err(Fault::invalid(
                "IPv6 subnets are not supported; ip_version must be 4",
            ));
        }
        None => return Err(input::bad_attr("ip_version", "this attribute is required")),
        Some(v) => {
            return Err(input::bad_attr(
                "ip_version",
                format!("{v} is not in [4, 6]"),
            ));
        }
    }
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
    // IPv4 only for now, like `input::ip_value`.
    let cidr = match cidr_text.parse::<IpNet>() {
        Ok(n @ IpNet::V4(_)) => n,
        _ => {
            return Err(input::bad_attr(
                "cidr",
                format!("'{cidr_text}' is not a valid IPv4 subnet"),
            ));
        }
    };
    if cidr.trunc() != cidr {
        return Err(input::bad_attr(
            "cidr",
            format!(
                "'{cidr}' isn't a recognized IP subnet cidr, '{}' is recommended",
                cidr.trunc()
            ),
        ));
    }
    if cidr.prefix_len() > 30 {
        return Err(Fault::invalid(format!(
            "{cidr} is too small: the prefix length must be 30 or less"
        )));
    }
    Ok(cidr)
}

pub(super) fn create_subnet(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
    let network_id = input::req_uuid(o, "network_id")?;
    let cidr = parse_cidr(o)?;
    let project_id = input::owner(o, ctx, "create_subnet")?;
    let (name, description) = input::name_and_description(o)?;
    let enable_dhcp = input::opt_bool(o, "enable_dhcp")?.unwrap_or(true);
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
    store::insert_subnet(
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
    store::update_subnet(c, &s)
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
