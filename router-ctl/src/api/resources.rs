//! The resources behind the API: Neutron's semantics for networks, subnets, ports and routers
//! (validation, defaults, policy, conflicts) over the store, and their JSON views.
//!
//! Every mutation receives the request's transaction and an `Effects` it must `touch` with each
//! network and router whose kernel state it may change *before* changing it; the caller then
//! realises the difference or rolls everything back.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::{
    Ctx, Effects,
    input::{self, FixedIpRequest, NAME_MAX, Obj},
    scope::{owned, seen, visible},
};
use crate::{
    model::{
        Fault, FixedIp, Network, OWNER_ROUTER_GATEWAY, OWNER_ROUTER_INTERFACE, Port, Router,
        Subnet, host_range, mac_to_string, parse_mac,
    },
    store,
};

/// The four resource collections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v2.0/networks`
    Network,
    /// `/v2.0/subnets`
    Subnet,
    /// `/v2.0/ports`
    Port,
    /// `/v2.0/routers`
    Router,
}

impl Kind {
    /// The JSON key of one resource (`network`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::Router => "router",
        }
    }
    /// The path segment and JSON key of a list (`networks`).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::Router => "routers",
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ------------------------------------------------------------------ views

fn network_view(ctx: &Ctx, n: &Network, subnets: Vec<String>) -> Value {
    let mut v = json!({
        "id": n.id,
        "name": n.name,
        "description": n.description,
        "tenant_id": n.project_id,
        "project_id": n.project_id,
        "admin_state_up": n.admin_state_up,
        "status": n.status,
        "subnets": subnets,
        "shared": n.shared,
        "router:external": n.external,
    });
    if ctx.admin
        && let Value::Object(o) = &mut v
    {
        o.insert(
            "provider:network_type".into(),
            json!(if n.physical_network.is_some() {
                "flat"
            } else {
                "local"
            }),
        );
        o.insert(
            "provider:physical_network".into(),
            json!(n.physical_network),
        );
        o.insert("provider:segmentation_id".into(), Value::Null);
    }
    v
}

fn subnet_view(s: &Subnet) -> Value {
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

fn fixed_ips_view(ips: &[FixedIp]) -> Value {
    Value::Array(
        ips.iter()
            .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip.to_string()}))
            .collect(),
    )
}

fn port_view(p: &Port) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "network_id": p.network_id,
        "tenant_id": p.project_id,
        "project_id": p.project_id,
        "mac_address": mac_to_string(&p.mac),
        "admin_state_up": p.admin_state_up,
        "status": p.status,
        "device_owner": p.device_owner,
        "device_id": p.device_id,
        "fixed_ips": fixed_ips_view(&p.fixed_ips),
    })
}

fn router_view(c: &Connection, r: &Router) -> Result<Value, Fault> {
    let gw = match &r.gw_port_id {
        Some(id) => match store::get_port(c, id)? {
            Some(p) => json!({
                "network_id": p.network_id,
                "enable_snat": r.enable_snat,
                "external_fixed_ips": fixed_ips_view(&p.fixed_ips),
            }),
            None => Value::Null,
        },
        None => Value::Null,
    };
    Ok(json!({
        "id": r.id,
        "name": r.name,
        "description": r.description,
        "tenant_id": r.project_id,
        "project_id": r.project_id,
        "admin_state_up": r.admin_state_up,
        "status": r.status,
        "external_gateway_info": gw,
    }))
}

// ------------------------------------------------------------------ dispatch

/// Every resource of `kind` the caller may see.
pub fn list(c: &Connection, ctx: &Ctx, kind: Kind) -> Result<Vec<Value>, Fault> {
    Ok(match kind {
        Kind::Network => {
            let subnets = store::list_subnets(c)?;
            seen(c, ctx, store::list_networks(c)?)?
                .iter()
                .map(|n| {
                    let ids = subnets
                        .iter()
                        .filter(|s| s.network_id == n.id)
                        .map(|s| s.id.clone())
                        .collect();
                    network_view(ctx, n, ids)
                })
                .collect()
        }
        Kind::Subnet => seen(c, ctx, store::list_subnets(c)?)?
            .iter()
            .map(subnet_view)
            .collect(),
        Kind::Port => seen(c, ctx, store::list_ports(c)?)?
            .iter()
            .map(port_view)
            .collect(),
        Kind::Router => seen(c, ctx, store::list_routers(c)?)?
            .iter()
            .map(|r| router_view(c, r))
            .collect::<Result<_, _>>()?,
    })
}

/// One resource the caller may see.
pub fn show(c: &Connection, ctx: &Ctx, kind: Kind, id: &str) -> Result<Value, Fault> {
    match kind {
        Kind::Network => {
            let n = visible::<Network>(c, ctx, id)?;
            let subnets = store::network_subnets(c, id)?
                .into_iter()
                .map(|s| s.id)
                .collect();
            Ok(network_view(ctx, &n, subnets))
        }
        Kind::Subnet => Ok(subnet_view(&visible::<Subnet>(c, ctx, id)?)),
        Kind::Port => Ok(port_view(&visible::<Port>(c, ctx, id)?)),
        Kind::Router => router_view(c, &visible::<Router>(c, ctx, id)?),
    }
}

/// Creates a resource from its validated body; returns its view.
pub fn create(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    kind: Kind,
    o: Obj,
) -> Result<Value, Fault> {
    let id = match kind {
        Kind::Network => create_network(c, fx, ctx, &o)?,
        Kind::Subnet => create_subnet(c, fx, ctx, &o)?,
        Kind::Port => create_port(c, ctx, &o)?,
        Kind::Router => create_router(c, fx, ctx, &o)?,
    };
    show(c, ctx, kind, &id)
}

/// Updates a resource the caller owns; returns its view.
pub fn update(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    o: Obj,
) -> Result<Value, Fault> {
    match kind {
        Kind::Network => update_network(c, fx, ctx, id, &o)?,
        Kind::Subnet => update_subnet(c, fx, ctx, id, &o)?,
        Kind::Port => update_port(c, ctx, id, &o)?,
        Kind::Router => update_router(c, fx, ctx, id, &o)?,
    }
    show(c, ctx, kind, id)
}

/// Deletes a resource the caller owns.
pub fn delete(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
) -> Result<(), Fault> {
    match kind {
        Kind::Network => delete_network(c, fx, ctx, id),
        Kind::Subnet => delete_subnet(c, ctx, id),
        Kind::Port => delete_port(c, fx, ctx, id),
        Kind::Router => delete_router(c, fx, ctx, id),
    }
}

// ------------------------------------------------------------------ networks

fn create_network(c: &Connection, fx: &mut Effects, ctx: &Ctx, o: &Obj) -> Result<String, Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "admin_state_up",
            "tenant_id",
            "project_id",
            "shared",
            "router:external",
            "provider:network_type",
            "provider:physical_network",
            "provider:segmentation_id",
        ],
    )?;
    let project_id = input::owner(o, ctx, "create_network")?;
    let (name, description) = input::name_and_description(o)?;
    let admin_state_up = input::opt_bool(o, "admin_state_up")?.unwrap_or(true);
    let shared = input::opt_bool(o, "shared")?.unwrap_or(false);
    let external = input::opt_bool(o, "router:external")?.unwrap_or(false);
    let physical_network = match o.get("provider:physical_network") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Some(s.clone()),
        Some(v) => {
            return Err(input::bad_attr(
                "provider:physical_network",
                format!("'{v}' is not a valid physical network name"),
            ));
        }
    };
    let network_type = input::opt_string(o, "provider:network_type", 32)?;
    match (network_type.as_deref(), &physical_network) {
        (None, _) | (Some("flat"), Some(_)) | (Some("local"), None) => {}
        (Some("flat"), None) => {
            return Err(Fault::invalid(
                "physical_network required for flat provider network",
            ));
        }
        (Some("local"), Some(_)) => {
            return Err(Fault::invalid(
                "physical_network not allowed for local provider network",
            ));
        }
        (Some(t), _) => {
            return Err(Fault::invalid(format!(
                "network_type value '{t}' not supported (only flat and local)"
            )));
        }
    }
    match o.get("provider:segmentation_id") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(Fault::invalid(
                "segmentation_id is not supported by flat and local networks",
            ));
        }
    }
    if !ctx.admin {
        if external {
            return Err(Fault::policy("create_network:router:external"));
        }
        if shared {
            return Err(Fault::policy("create_network:shared"));
        }
        if o.keys().any(|k| k.starts_with("provider:")) {
            return Err(Fault::policy("create_network:provider:physical_network"));
        }
    }
    let id = new_id();
    fx.touch_network(c, &id)?;
    store::insert_network(
        c,
        &Network {
            id: id.clone(),
            name,
            description,
            project_id,
            admin_state_up,
            external,
            physical_network,
            shared,
            status: "ACTIVE".into(),
        },
    )?;
    Ok(id)
}

fn update_network(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    id: &str,
    o: &Obj,
) -> Result<(), Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "admin_state_up",
            "shared",
            "router:external",
        ],
    )?;
    let mut n = owned::<Network>(c, ctx, id, "update_network")?;
    input::set_string(o, "name", &mut n.name)?;
    input::set_string(o, "description", &mut n.description)?;
    if let Some(v) = input::opt_bool(o, "admin_state_up")? {
        n.admin_state_up = v;
    }
    if let Some(v) = input::opt_bool(o, "shared")? {
        if !ctx.admin && v != n.shared {
            return Err(Fault::policy("update_network:shared"));
        }
        n.shared = v;
    }
    if let Some(v) = input::opt_bool(o, "router:external")? {
        if !ctx.admin && v != n.external {
            return Err(Fault::policy("update_network:router:external"));
        }
        if n.external
            && !v
            && store::network_ports(c, id)?
                .iter()
                .any(|p| p.device_owner == OWNER_ROUTER_GATEWAY)
        {
            return Err(Fault::conflict(
                "NetworkInUse",
                format!(
                    "Unable to complete operation on network {id}. There are one or more router gateways on the network."
                ),
            ));
        }
        n.external = v;
    }
    fx.touch_network(c, id)?;
    store::update_network(c, &n)
}

fn delete_network(c: &Connection, fx: &mut Effects, ctx: &Ctx, id: &str) -> Result<(), Fault> {
    owned::<Network>(c, ctx, id, "delete_network")?;
    if !store::network_ports(c, id)?.is_empty() {
        return Err(Fault::conflict(
            "NetworkInUse",
            format!(
                "Unable to complete operation on network {id}. There are one or more ports still in use on the network."
            ),
        ));
    }
    fx.touch_network(c, id)?;
    store::delete_network(c, id)
}

// ------------------------------------------------------------------ subnets

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn parse_pools(o: &Obj, cidr: &Ipv4Net) -> Result<Option<Vec<(Ipv4Addr, Ipv4Addr)>>, Fault> {
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
fn default_pools(cidr: &Ipv4Net, gw: Option<Ipv4Addr>) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let Some((a, b)) = host_range(cidr) else {
        return Vec::new();
    };
    match gw {
        Some(g) if g >= a && g <= b => {
            let (a, b, g) = (u32::from(a), u32::from(b), u32::from(g));
            let mut out = Vec::new();
            if g > a {
                out.push((Ipv4Addr::from(a), Ipv4Addr::from(g - 1)));
            }
            if g < b {
                out.push((Ipv4Addr::from(g + 1), Ipv4Addr::from(b)));
            }
            out
        }
        _ => vec![(a, b)],
    }
}

fn check_gateway(
    cidr: &Ipv4Net,
    gw: Option<Ipv4Addr>,
    pools: &[(Ipv4Addr, Ipv4Addr)],
) -> Result<(), Fault> {
    let Some(g) = gw else { return Ok(()) };
    if cidr.contains(&g) && (g == cidr.network() || g == cidr.broadcast()) {
        return Err(input::bad_attr(
            "gateway_ip",
            format!("'{g}' is the network or broadcast address of {cidr}"),
        ));
    }
    if g.is_unspecified() || g.is_broadcast() || g.is_multicast() {
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

fn parse_gateway(o: &Obj) -> Result<Option<Option<Ipv4Addr>>, Fault> {
    match o.get("gateway_ip") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => Ok(Some(Some(input::ip_value("gateway_ip", v)?))),
    }
}

fn parse_dns(o: &Obj) -> Result<Option<Vec<Ipv4Addr>>, Fault> {
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

fn create_subnet(c: &Connection, fx: &mut Effects, ctx: &Ctx, o: &Obj) -> Result<String, Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "network_id",
            "tenant_id",
            "project_id",
            "ip_version",
            "cidr",
            "gateway_ip",
            "allocation_pools",
            "enable_dhcp",
            "dns_nameservers",
        ],
    )?;
    let network_id = input::req_uuid(o, "network_id")?;
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
    let cidr: Ipv4Net = cidr_text.parse().map_err(|_| {
        input::bad_attr("cidr", format!("'{cidr_text}' is not a valid IPv4 subnet"))
    })?;
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

fn update_subnet(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    id: &str,
    o: &Obj,
) -> Result<(), Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "gateway_ip",
            "allocation_pools",
            "enable_dhcp",
            "dns_nameservers",
        ],
    )?;
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

fn delete_subnet(c: &Connection, ctx: &Ctx, id: &str) -> Result<(), Fault> {
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

// ------------------------------------------------------------------ ports

/// Chooses the fixed IPs of a new port on `network_id`: as requested, else one from the first
/// subnet with a free address (none when the network has no subnet and `need` is false).
fn allocate_fixed_ips(
    c: &Connection,
    network_id: &str,
    requests: Option<&[FixedIpRequest]>,
    need: bool,
) -> Result<Vec<FixedIp>, Fault> {
    let subnets = store::network_subnets(c, network_id)?;
    let mut out: Vec<FixedIp> = Vec::new();
    match requests {
        // An empty list for a router gateway means "pick one", as no address is no gateway.
        Some(reqs) if !(reqs.is_empty() && need) => {
            for r in reqs {
                let subnet = match (&r.subnet_id, r.ip) {
                    (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).ok_or_else(|| {
                        Fault::invalid(format!("Failed to create port on network {network_id}, because fixed_ips included invalid subnet {sid}"))
                    })?,
                    (None, Some(ip)) => subnets.iter().find(|s| s.cidr.contains(&ip)).ok_or_else(|| {
                        Fault::new(400, "InvalidIpForNetwork", format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."))
                    })?,
                    (None, None) => return Err(Fault::invalid("fixed_ips entry without subnet_id or ip_address")),
                };
                if out
                    .iter()
                    .any(|f| f.subnet_id == subnet.id && r.ip.is_none())
                {
                    return Err(Fault::invalid(
                        "only one address per subnet may be requested without ip_address",
                    ));
                }
                let ip = store::allocate_ip(c, subnet, r.ip, false)?;
                if out.iter().any(|f| f.subnet_id == subnet.id && f.ip == ip) {
                    return Err(Fault::invalid(format!("duplicate fixed IP {ip}")));
                }
                out.push(FixedIp {
                    subnet_id: subnet.id.clone(),
                    ip,
                });
            }
        }
        _ => {
            let mut last_err = None;
            for s in &subnets {
                match store::allocate_ip(c, s, None, false) {
                    Ok(ip) => {
                        out.push(FixedIp {
                            subnet_id: s.id.clone(),
                            ip,
                        });
                        break;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            // No address at all: an error when one was needed or the subnets are full.
            if out.is_empty() && (need || last_err.is_some()) {
                return Err(last_err.unwrap_or_else(|| {
                    Fault::new(400, "BadRequest", format!("Bad router request: Network {network_id} has no IPv4 subnet to allocate an address from."))
                }));
            }
        }
    }
    Ok(out)
}

fn create_port(c: &Connection, ctx: &Ctx, o: &Obj) -> Result<String, Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "network_id",
            "tenant_id",
            "project_id",
            "admin_state_up",
            "mac_address",
            "fixed_ips",
            "device_id",
            "device_owner",
        ],
    )?;
    let network_id = input::req_uuid(o, "network_id")?;
    let project_id = input::owner(o, ctx, "create_port")?;
    let (name, description) = input::name_and_description(o)?;
    let admin_state_up = input::opt_bool(o, "admin_state_up")?.unwrap_or(true);
    let device_id = input::opt_string(o, "device_id", NAME_MAX)?.unwrap_or_default();
    let device_owner = input::opt_string(o, "device_owner", NAME_MAX)?.unwrap_or_default();
    let mac = match input::opt_string(o, "mac_address", 32)? {
        Some(s) => Some(
            parse_mac(&s)
                .filter(|m| m[0] & 1 == 0 && *m != [0; 6])
                .ok_or_else(|| {
                    input::bad_attr("mac_address", format!("'{s}' is not a valid MAC address"))
                })?,
        ),
        None => None,
    };
    let requests = match input::opt_list(o, "fixed_ips")? {
        Some(l) => Some(input::fixed_ip_requests("fixed_ips", l)?),
        None => None,
    };
    let net = visible::<Network>(c, ctx, &network_id)?;
    if !ctx.owns(&net.project_id) && !net.shared {
        return Err(Fault::policy("create_port"));
    }
    let mac = match mac {
        Some(m) => {
            if store::mac_in_use(c, &m)? {
                return Err(Fault::conflict(
                    "MacAddressInUse",
                    format!(
                        "Unable to complete operation for network {network_id}. The mac address {} is in use.",
                        mac_to_string(&m)
                    ),
                ));
            }
            m
        }
        None => store::generate_mac(c)?,
    };
    let fixed_ips = allocate_fixed_ips(c, &network_id, requests.as_deref(), false)?;
    let id = new_id();
    store::insert_port(
        c,
        &Port {
            id: id.clone(),
            network_id,
            name,
            description,
            project_id,
            mac,
            admin_state_up,
            device_owner,
            device_id,
            status: "DOWN".into(),
            fixed_ips,
        },
    )?;
    Ok(id)
}

fn is_router_port(c: &Connection, id: &str) -> Result<bool, Fault> {
    Ok(store::interface_router(c, id)?.is_some() || store::gateway_router(c, id)?.is_some())
}

fn l3_port_in_use(p: &Port) -> Fault {
    Fault::conflict(
        "L3PortInUse",
        format!(
            "Port {} has owner {} and therefore cannot be deleted directly via the port API.",
            p.id, p.device_owner
        ),
    )
}

fn update_port(c: &Connection, ctx: &Ctx, id: &str, o: &Obj) -> Result<(), Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "admin_state_up",
            "device_id",
            "device_owner",
        ],
    )?;
    let mut p = visible::<Port>(c, ctx, id)?;
    input::set_string(o, "name", &mut p.name)?;
    input::set_string(o, "description", &mut p.description)?;
    if let Some(v) = input::opt_bool(o, "admin_state_up")? {
        p.admin_state_up = v;
    }
    let owner = input::opt_string(o, "device_owner", NAME_MAX)?;
    let device = input::opt_string(o, "device_id", NAME_MAX)?;
    if (owner.as_ref().is_some_and(|v| *v != p.device_owner)
        || device.as_ref().is_some_and(|v| *v != p.device_id))
        && is_router_port(c, id)?
    {
        return Err(Fault::conflict(
            "PortInUse",
            format!(
                "Unable to complete operation on port {id} for network {}. Port already has an attached device {}.",
                p.network_id, p.device_id
            ),
        ));
    }
    if let Some(v) = owner {
        p.device_owner = v;
    }
    if let Some(v) = device {
        p.device_id = v;
    }
    store::update_port(c, &p)
}

fn delete_port(c: &Connection, fx: &mut Effects, ctx: &Ctx, id: &str) -> Result<(), Fault> {
    let p = visible::<Port>(c, ctx, id)?;
    if is_router_port(c, id)? {
        return Err(l3_port_in_use(&p));
    }
    super::floatingips::before_port_delete(c, fx, &p)?;
    store::delete_port(c, id)
}

// ------------------------------------------------------------------ routers

fn create_router(c: &Connection, fx: &mut Effects, ctx: &Ctx, o: &Obj) -> Result<String, Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "admin_state_up",
            "tenant_id",
            "project_id",
            "external_gateway_info",
        ],
    )?;
    let project_id = input::owner(o, ctx, "create_router")?;
    let (name, description) = input::name_and_description(o)?;
    let admin_state_up = input::opt_bool(o, "admin_state_up")?.unwrap_or(true);
    let gw = parse_gateway_info(o, ctx, "create_router")?;
    let id = new_id();
    fx.touch_router(c, &id)?;
    let mut r = Router {
        id: id.clone(),
        name,
        description,
        project_id,
        admin_state_up,
        status: "ACTIVE".into(),
        dp_id: store::free_dp_id(c)?,
        gw_port_id: None,
        enable_snat: true,
    };
    store::insert_router(c, &r)?;
    if let Some(gw) = gw {
        set_gateway(c, ctx, &mut r, gw)?;
        store::update_router(c, &r)?;
    }
    Ok(id)
}

/// A parsed `external_gateway_info`: None clears the gateway.
#[derive(Debug)]
struct GatewayRequest {
    network_id: String,
    enable_snat: Option<bool>,
    fixed_ips: Option<Vec<FixedIpRequest>>,
}

/// Some(None): clear; Some(Some(gw)): set; None: not in the body.
fn parse_gateway_info(
    o: &Obj,
    ctx: &Ctx,
    action: &str,
) -> Result<Option<Option<GatewayRequest>>, Fault> {
    let key = "external_gateway_info";
    let g = match o.get(key) {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Object(g)) if g.is_empty() => return Ok(Some(None)),
        Some(Value::Object(g)) => g,
        Some(v) => return Err(input::bad_attr(key, format!("'{v}' is not a dictionary"))),
    };
    input::only(g, &["network_id", "enable_snat", "external_fixed_ips"])
        .map_err(|e| input::bad_attr(key, e.message))?;
    let network_id = match g.get("network_id") {
        None | Some(Value::Null) if g.len() == 1 && g.contains_key("network_id") => {
            return Ok(Some(None));
        }
        None | Some(Value::Null) => return Err(input::bad_attr(key, "network_id is required")),
        Some(Value::String(s)) if input::is_uuid(s) => s.clone(),
        Some(v) => return Err(input::bad_attr(key, format!("'{v}' is not a valid UUID"))),
    };
    let enable_snat = match g.get("enable_snat") {
        None => None,
        Some(v) => Some(input::to_bool(v).ok_or_else(|| {
            input::bad_attr(
                key,
                format!("enable_snat '{v}' cannot be converted to boolean"),
            )
        })?),
    };
    let fixed_ips = match g.get("external_fixed_ips") {
        None => None,
        Some(Value::Array(a)) => Some(input::fixed_ip_requests("external_fixed_ips", a)?),
        Some(v) => {
            return Err(input::bad_attr(
                key,
                format!("external_fixed_ips '{v}' is not a list"),
            ));
        }
    };
    if !ctx.admin {
        if enable_snat.is_some() {
            return Err(Fault::policy(&format!(
                "{action}:external_gateway_info:enable_snat"
            )));
        }
        if fixed_ips.is_some() {
            return Err(Fault::policy(&format!(
                "{action}:external_gateway_info:external_fixed_ips"
            )));
        }
    }
    Ok(Some(Some(GatewayRequest {
        network_id,
        enable_snat,
        fixed_ips,
    })))
}

/// Subnets the router already has a port on (interfaces and gateway), with the port.
fn router_subnets(c: &Connection, r: &Router) -> Result<Vec<(Subnet, String)>, Fault> {
    let mut ports = store::router_interfaces(c, &r.id)?;
    if let Some(gw) = &r.gw_port_id
        && let Some(p) = store::get_port(c, gw)?
    {
        ports.push(p);
    }
    let mut out = Vec::new();
    for p in ports {
        for f in &p.fixed_ips {
            if let Some(s) = store::get_subnet(c, &f.subnet_id)? {
                out.push((s, p.id.clone()));
            }
        }
    }
    Ok(out)
}

fn overlap_error(new: &Subnet, old: &Subnet) -> Fault {
    Fault::new(
        400,
        "BadRequest",
        format!(
            "Bad router request: Cidr {} of subnet {} overlaps with cidr {} of subnet {}.",
            new.cidr, new.id, old.cidr, old.id
        ),
    )
}

/// Sets, changes or clears the gateway of `r` (the caller writes `r` back).
fn set_gateway(
    c: &Connection,
    ctx: &Ctx,
    r: &mut Router,
    req: Option<GatewayRequest>,
) -> Result<(), Fault> {
    let current = match &r.gw_port_id {
        Some(id) => store::get_port(c, id)?,
        None => None,
    };
    if let Some(p) = &current
        && req.as_ref().is_none_or(|q| q.network_id != p.network_id)
    {
        super::floatingips::check_gateway_removal(c, &r.id)?;
    }
    let Some(req) = req else {
        if let Some(p) = current {
            r.gw_port_id = None;
            store::update_router(c, r)?;
            store::delete_port(c, &p.id)?;
        }
        r.enable_snat = true;
        return Ok(());
    };
    let net = visible::<Network>(c, ctx, &req.network_id)?;
    if !net.external {
        return Err(Fault::new(
            400,
            "BadRequest",
            format!(
                "Bad router request: Network {} is not a valid external network.",
                net.id
            ),
        ));
    }
    if let Some(p) = &current
        && p.network_id == net.id
    {
        // Same network: only SNAT and, when asked for, the addresses change.
        if let Some(reqs) = &req.fixed_ips {
            let mut moved = p.clone();
            moved.fixed_ips.clear();
            store::update_port(c, &moved)?;
            moved.fixed_ips = allocate_fixed_ips(c, &net.id, Some(reqs), true)?;
            check_gateway_overlap(c, r, &moved)?;
            store::update_port(c, &moved)?;
        }
        if let Some(s) = req.enable_snat {
            r.enable_snat = s;
        }
        return Ok(());
    }
    if let Some(p) = current {
        r.gw_port_id = None;
        store::update_router(c, r)?;
        store::delete_port(c, &p.id)?;
    }
    let fixed_ips = allocate_fixed_ips(c, &net.id, req.fixed_ips.as_deref(), true)?;
    let port = Port {
        id: new_id(),
        network_id: net.id.clone(),
        name: String::new(),
        description: String::new(),
        project_id: String::new(),
        mac: store::generate_mac(c)?,
        admin_state_up: true,
        device_owner: OWNER_ROUTER_GATEWAY.into(),
        device_id: r.id.clone(),
        status: "ACTIVE".into(),
        fixed_ips,
    };
    check_gateway_overlap(c, r, &port)?;
    store::insert_port(c, &port)?;
    r.gw_port_id = Some(port.id);
    r.enable_snat = req.enable_snat.unwrap_or(true);
    Ok(())
}

fn check_gateway_overlap(c: &Connection, r: &Router, gw: &Port) -> Result<(), Fault> {
    let existing: Vec<Subnet> = store::router_interfaces(c, &r.id)?
        .iter()
        .flat_map(|p| p.fixed_ips.clone())
        .filter_map(|f| store::get_subnet(c, &f.subnet_id).ok().flatten())
        .collect();
    for f in &gw.fixed_ips {
        if let Some(s) = store::get_subnet(c, &f.subnet_id)?
            && let Some(old) = existing.iter().find(|o| overlaps(&o.cidr, &s.cidr))
        {
            return Err(overlap_error(&s, old));
        }
    }
    Ok(())
}

fn update_router(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    id: &str,
    o: &Obj,
) -> Result<(), Fault> {
    input::only(
        o,
        &[
            "name",
            "description",
            "admin_state_up",
            "external_gateway_info",
        ],
    )?;
    let mut r = visible::<Router>(c, ctx, id)?;
    input::set_string(o, "name", &mut r.name)?;
    input::set_string(o, "description", &mut r.description)?;
    if let Some(v) = input::opt_bool(o, "admin_state_up")? {
        r.admin_state_up = v;
    }
    let gw = parse_gateway_info(o, ctx, "update_router")?;
    fx.touch_router(c, id)?;
    if let Some(gw) = gw {
        set_gateway(c, ctx, &mut r, gw)?;
    }
    store::update_router(c, &r)
}

fn delete_router(c: &Connection, fx: &mut Effects, ctx: &Ctx, id: &str) -> Result<(), Fault> {
    let mut r = visible::<Router>(c, ctx, id)?;
    if !store::router_interfaces(c, id)?.is_empty() {
        return Err(Fault::conflict(
            "RouterInUse",
            format!("Router {id} still has ports"),
        ));
    }
    fx.touch_router(c, id)?;
    set_gateway(c, ctx, &mut r, None)?;
    store::delete_router(c, id)
}

fn interface_info(r: &Router, p: &Port) -> Value {
    let subnet_ids: Vec<&str> = p.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    json!({
        "id": r.id,
        "tenant_id": r.project_id,
        "project_id": r.project_id,
        "port_id": p.id,
        "network_id": p.network_id,
        "subnet_id": subnet_ids.first().copied().unwrap_or_default(),
        "subnet_ids": subnet_ids,
    })
}

fn interface_target(o: &Obj) -> Result<(Option<String>, Option<String>), Fault> {
    input::only(o, &["subnet_id", "port_id"])?;
    let subnet_id = input::opt_uuid(o, "subnet_id")?;
    let port_id = input::opt_uuid(o, "port_id")?;
    Ok((subnet_id, port_id))
}

/// `PUT /v2.0/routers/{id}/add_router_interface`.
pub fn add_interface(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    router_id: &str,
    o: &Obj,
) -> Result<Value, Fault> {
    let (subnet_id, port_id) = interface_target(o)?;
    let r = visible::<Router>(c, ctx, router_id)?;
    let existing = router_subnets(c, &r)?;
    let check = |s: &Subnet| -> Result<(), Fault> {
        for (old, port) in &existing {
            if old.id == s.id && Some(port) != r.gw_port_id.as_ref() {
                return Err(Fault::conflict(
                    "Conflict",
                    format!("Router {router_id} already has a port on subnet {}", s.id),
                ));
            }
            if overlaps(&old.cidr, &s.cidr) {
                return Err(overlap_error(s, old));
            }
        }
        Ok(())
    };
    fx.touch_router(c, router_id)?;
    let port = match (subnet_id, port_id) {
        (Some(_), Some(_)) => {
            return Err(Fault::new(
                400,
                "BadRequest",
                "Bad router request: Cannot specify both subnet-id and port-id.",
            ));
        }
        (None, None) => {
            return Err(Fault::new(
                400,
                "BadRequest",
                "Bad router request: Either subnet_id or port_id must be specified.",
            ));
        }
        (Some(sid), None) => {
            let s = visible::<Subnet>(c, ctx, &sid)?;
            // Another project's external subnet is readable, but not a place for interfaces.
            let shared = store::get_network(c, &s.network_id)?.is_some_and(|n| n.shared);
            if !ctx.owns(&s.project_id) && !shared {
                return Err(Fault::not_found("subnet", &sid));
            }
            let Some(gw) = s.gateway_ip else {
                return Err(Fault::new(
                    400,
                    "BadRequest",
                    "Bad router request: Subnet for router interface must have a gateway IP.",
                ));
            };
            check(&s)?;
            let ip = store::allocate_ip(c, &s, Some(gw), true)?;
            let port = Port {
                id: new_id(),
                network_id: s.network_id.clone(),
                name: String::new(),
                description: String::new(),
                project_id: s.project_id.clone(),
                mac: store::generate_mac(c)?,
                admin_state_up: true,
                device_owner: OWNER_ROUTER_INTERFACE.into(),
                device_id: r.id.clone(),
                status: "ACTIVE".into(),
                fixed_ips: vec![FixedIp {
                    subnet_id: s.id.clone(),
                    ip,
                }],
            };
            store::insert_port(c, &port)?;
            port
        }
        (None, Some(pid)) => {
            let mut p = visible::<Port>(c, ctx, &pid)?;
            if !p.device_id.is_empty() || is_router_port(c, &pid)? {
                return Err(Fault::conflict(
                    "PortInUse",
                    format!(
                        "Unable to complete operation on port {pid} for network {}. Port already has an attached device {}.",
                        p.network_id, p.device_id
                    ),
                ));
            }
            if p.fixed_ips.is_empty() {
                return Err(Fault::new(
                    400,
                    "BadRequest",
                    "Bad router request: Router port must have at least one fixed IP.",
                ));
            }
            if p.fixed_ips.len() > 1 {
                return Err(Fault::new(
                    400,
                    "BadRequest",
                    "Bad router request: Cannot have multiple IPv4 subnets on router port.",
                ));
            }
            let s = store::get_subnet(c, &p.fixed_ips[0].subnet_id)?
                .ok_or_else(|| Fault::not_found("subnet", &p.fixed_ips[0].subnet_id))?;
            check(&s)?;
            p.device_owner = OWNER_ROUTER_INTERFACE.into();
            p.device_id = r.id.clone();
            p.status = "ACTIVE".into();
            store::update_port(c, &p)?;
            p
        }
    };
    store::add_interface(c, &r.id, &port.id)?;
    Ok(interface_info(&r, &port))
}

/// `PUT /v2.0/routers/{id}/remove_router_interface`.
pub fn remove_interface(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    router_id: &str,
    o: &Obj,
) -> Result<Value, Fault> {
    let (subnet_id, port_id) = interface_target(o)?;
    let r = visible::<Router>(c, ctx, router_id)?;
    let interfaces = store::router_interfaces(c, router_id)?;
    let port = match (&subnet_id, &port_id) {
        (None, None) => {
            return Err(Fault::new(
                400,
                "BadRequest",
                "Bad router request: Either subnet_id or port_id must be specified.",
            ));
        }
        (_, Some(pid)) => {
            let p = interfaces.iter().find(|p| &p.id == pid).ok_or_else(|| {
                Fault::new(
                    404,
                    "RouterInterfaceNotFound",
                    format!("Router {router_id} does not have an interface with id {pid}"),
                )
            })?;
            if let Some(sid) = &subnet_id
                && !p.fixed_ips.iter().any(|f| &f.subnet_id == sid)
            {
                return Err(Fault::new(
                    400,
                    "SubnetMismatchForPort",
                    format!("Subnet on port {pid} does not match the requested subnet {sid}."),
                ));
            }
            p.clone()
        }
        (Some(sid), None) => {
            visible::<Subnet>(c, ctx, sid)?;
            interfaces
                .iter()
                .find(|p| p.fixed_ips.iter().any(|f| &f.subnet_id == sid))
                .cloned()
                .ok_or_else(|| {
                    Fault::new(
                        404,
                        "RouterInterfaceNotFoundForSubnet",
                        format!("Router {router_id} has no interface on subnet {sid}"),
                    )
                })?
        }
    };
    super::floatingips::check_interface_removal(c, router_id, &port)?;
    fx.touch_router(c, router_id)?;
    store::remove_interface(c, router_id, &port.id)?;
    store::delete_port(c, &port.id)?;
    Ok(interface_info(&r, &port))
}
