//! Routers: `/v2.0/routers`, their `external_gateway_info` and their extra `routes`
//! (`extraroute`, and `extraroute-atomic`'s `add_extraroutes`/`remove_extraroutes`).

use std::net::IpAddr;

use ipnet::IpNet;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::{
    Cx, floatingips, new_id,
    ports::{allocate_fixed_ips, fixed_ips_view},
    subnets::overlaps,
};
use crate::{
    api::{
        Ctx,
        input::{self, FixedIpRequest, Obj},
        scope::visible,
    },
    model::{Fault, Network, OWNER_ROUTER_GATEWAY, Port, Router, Subnet, spec::RouteSpec},
    store,
};

pub(super) fn router_view(c: &Connection, r: &Router) -> Result<Value, Fault> {
    let gw = match &r.gw_port_id {
        Some(id) => match store::get::<Port>(c, id)? {
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
        "routes": routes_view(&store::router_routes(c, &r.id)?),
    }))
}

fn routes_view(routes: &[RouteSpec]) -> Value {
    routes
        .iter()
        .map(
            |r| json!({"destination": r.destination.to_string(), "nexthop": r.nexthop.to_string()}),
        )
        .collect()
}

pub(super) fn create_router(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
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
    store::insert(c, &r)?;
    if let Some(gw) = gw {
        set_gateway(c, ctx, &mut r, gw)?;
        store::update(c, &r)?;
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
pub(super) fn router_subnets(c: &Connection, r: &Router) -> Result<Vec<(Subnet, String)>, Fault> {
    let mut ports = store::router_interfaces(c, &r.id)?;
    if let Some(gw) = &r.gw_port_id
        && let Some(p) = store::get::<Port>(c, gw)?
    {
        ports.push(p);
    }
    let mut out = Vec::new();
    for p in ports {
        for f in &p.fixed_ips {
            if let Some(s) = store::get::<Subnet>(c, &f.subnet_id)? {
                out.push((s, p.id.clone()));
            }
        }
    }
    Ok(out)
}

pub(super) fn overlap_error(new: &Subnet, old: &Subnet) -> Fault {
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
        Some(id) => store::get::<Port>(c, id)?,
        None => None,
    };
    if let Some(p) = &current
        && req.as_ref().is_none_or(|q| q.network_id != p.network_id)
    {
        floatingips::check_gateway_removal(c, &r.id)?;
    }
    let Some(req) = req else {
        if let Some(p) = current {
            r.gw_port_id = None;
            store::update(c, r)?;
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
            store::update(c, &moved)?;
            moved.fixed_ips = allocate_fixed_ips(c, &net.id, Some(reqs), true, &p.mac)?;
            check_gateway_overlap(c, r, &moved)?;
            store::update(c, &moved)?;
        }
        r.enable_snat = req.enable_snat.unwrap_or(ctx.l3.enable_snat_by_default);
        return Ok(());
    }
    if let Some(p) = current {
        r.gw_port_id = None;
        store::update(c, r)?;
        store::delete_port(c, &p.id)?;
    }
    let mac = store::generate_mac(c)?;
    let fixed_ips = allocate_fixed_ips(c, &net.id, req.fixed_ips.as_deref(), true, &mac)?;
    let port = Port {
        id: new_id(),
        network_id: net.id.clone(),
        name: String::new(),
        description: String::new(),
        project_id: String::new(),
        mac,
        admin_state_up: true,
        device_owner: OWNER_ROUTER_GATEWAY.into(),
        device_id: r.id.clone(),
        status: "ACTIVE".into(),
        fixed_ips,
    };
    check_gateway_overlap(c, r, &port)?;
    store::insert(c, &port)?;
    r.gw_port_id = Some(port.id);
    r.enable_snat = req.enable_snat.unwrap_or(ctx.l3.enable_snat_by_default);
    Ok(())
}

fn check_gateway_overlap(c: &Connection, r: &Router, gw: &Port) -> Result<(), Fault> {
    let existing: Vec<Subnet> = store::router_interfaces(c, &r.id)?
        .iter()
        .flat_map(|p| p.fixed_ips.clone())
        .filter_map(|f| store::get::<Subnet>(c, &f.subnet_id).ok().flatten())
        .collect();
    for f in &gw.fixed_ips {
        if let Some(s) = store::get::<Subnet>(c, &f.subnet_id)?
            && let Some(old) = existing.iter().find(|o| overlaps(&o.cidr, &s.cidr))
        {
            return Err(overlap_error(&s, old));
        }
    }
    Ok(())
}

pub(super) fn update_router(cx: Cx, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let mut r = visible::<Router>(c, ctx, id)?;
    input::set_string(o, "name", &mut r.name)?;
    input::set_string(o, "description", &mut r.description)?;
    if let Some(v) = input::opt_bool(o, "admin_state_up")? {
        r.admin_state_up = v;
    }
    let gw = parse_gateway_info(o, ctx, "update_router")?;
    let routes = o.get("routes").map(|v| parse_routes(v, true)).transpose()?;
    fx.touch_router(c, id)?;
    let gateway_changed = gw.is_some();
    if let Some(gw) = gw {
        set_gateway(c, ctx, &mut r, gw)?;
    }
    store::update(c, &r)?;
    match routes {
        Some(routes) => set_routes(c, ctx, &r, &routes, gateway_changed),
        // A new gateway must still connect the routes it carried (Neutron's `_validate_gw_info`).
        None if gateway_changed => {
            let routes = store::router_routes(c, &r.id)?;
            if routes.is_empty() {
                return Ok(());
            }
            check_routes(c, &r, &routes, true)
        }
        None => Ok(()),
    }
}

/// `PUT /v2.0/routers/{id}/add_extraroutes` (`add`) or `remove_extraroutes`: the router's
/// routes with those of `body` (`{"routes": [...]}`) added or taken out, validated as a whole
/// as `PUT routes` is; returns `{"router": …}`. Removing a route the router lacks, or adding
/// one it has, is no error: the end state counts.
pub fn change_extraroutes(cx: Cx, id: &str, body: &Obj, add: bool) -> Result<Value, Fault> {
    let Cx { c, fx, ctx } = cx;
    input::only(body, &["routes"])?;
    let Some(v) = body.get("routes") else {
        return Err(input::bad_attr("routes", "this attribute is required"));
    };
    let given = parse_routes(v, false)?;
    let r = visible::<Router>(c, ctx, id)?;
    fx.touch_router(c, id)?;
    let mut routes = store::router_routes(c, id)?;
    if add {
        for g in given {
            if !routes.contains(&g) {
                routes.push(g);
            }
        }
    } else {
        routes.retain(|x| !given.contains(x));
    }
    set_routes(c, ctx, &r, &routes, false)?;
    Ok(json!({"router": router_view(c, &r)?}))
}

/// Validates `routes` against the router's ports and the quota, then stores them.
fn set_routes(
    c: &Connection,
    ctx: &Ctx,
    r: &Router,
    routes: &[RouteSpec],
    gateway_changed: bool,
) -> Result<(), Fault> {
    check_routes(c, r, routes, gateway_changed)?;
    if routes.len() > ctx.l3.max_routes {
        return Err(Fault::new(
            400,
            "RoutesExhausted",
            format!(
                "Unable to complete operation for {}. The number of routes exceeds the maximum {}.",
                r.id, ctx.l3.max_routes
            ),
        ));
    }
    store::set_router_routes(c, &r.id, routes)
}

/// Neutron's nexthop rules: each nexthop on a subnet of one of the router's ports (with a new
/// gateway, on any subnet of its network), and none of them the router's own address; and no
/// destination inside a subnet the router is attached to.
fn check_routes(
    c: &Connection,
    r: &Router,
    routes: &[RouteSpec],
    gateway_changed: bool,
) -> Result<(), Fault> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    let mut own: Vec<IpAddr> = Vec::new();
    let mut ports = store::router_interfaces(c, &r.id)?;
    if let Some(gw) = &r.gw_port_id
        && let Some(p) = store::get::<Port>(c, gw)?
    {
        if gateway_changed {
            cidrs.extend(
                store::network_subnets(c, &p.network_id)?
                    .iter()
                    .map(|s| s.cidr),
            );
        }
        ports.push(p);
    }
    // The subnets of the router's own addresses: a route inside one would take over part of a
    // connected network.
    let mut attached: Vec<IpNet> = Vec::new();
    for p in &ports {
        for f in &p.fixed_ips {
            if let Some(s) = store::get::<Subnet>(c, &f.subnet_id)? {
                attached.push(s.cidr);
            }
            own.push(f.ip);
        }
    }
    cidrs.extend(attached.iter().copied());
    for route in routes {
        let reason = if !cidrs.iter().any(|n| n.contains(&route.nexthop)) {
            "the nexthop is not connected with router".to_string()
        } else if own.contains(&route.nexthop) {
            "the nexthop is used by router".to_string()
        } else if let Some(n) = attached.iter().find(|n| n.contains(&route.destination)) {
            format!("the destination is within subnet {n} attached to the router")
        } else {
            continue;
        };
        return Err(Fault::new(
            400,
            "InvalidRoutes",
            format!(
                "Invalid format for routes: {}, {reason}",
                python_routes(routes)
            ),
        ));
    }
    Ok(())
}

/// `routes` as Neutron prints the list in its messages (a Python repr).
fn python_routes(routes: &[RouteSpec]) -> String {
    let items: Vec<String> = routes.iter().map(python_route).collect();
    format!("[{}]", items.join(", "))
}

fn python_route(r: &RouteSpec) -> String {
    format!(
        "{{'destination': '{}', 'nexthop': '{}'}}",
        r.destination, r.nexthop
    )
}

/// A `routes` value as neutron-lib's `hostroutes` validator accepts it (null: no routes):
/// dictionaries of exactly `destination` (a network address with its prefix, not loopback)
/// and `nexthop`; IPv4 only for now. `unique`: a repeated route is refused (the attribute
/// itself; the atomic calls merge repeats instead).
pub(super) fn parse_routes(v: &Value, unique: bool) -> Result<Vec<RouteSpec>, Fault> {
    let key = "routes";
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(input::bad_attr(
                key,
                format!("Invalid data format for hostroute: '{other}'"),
            ));
        }
    };
    let mut out: Vec<RouteSpec> = Vec::new();
    for item in list {
        let keys_error = || {
            input::bad_attr(
                key,
                format!(
                    "Validation of dictionary's keys failed. Expected keys: {{'destination', 'nexthop'}} Provided keys: {item}"
                ),
            )
        };
        let Value::Object(o) = item else {
            return Err(input::bad_attr(
                key,
                format!(
                    "Invalid input. '{item}' must be a dictionary with keys: ['destination', 'nexthop']"
                ),
            ));
        };
        if o.len() != 2 || !o.contains_key("destination") || !o.contains_key("nexthop") {
            return Err(keys_error());
        }
        let destination = route_cidr(&o["destination"])?;
        let nexthop = input::ipv4_value("router", key, &o["nexthop"])?;
        let route = RouteSpec {
            destination,
            nexthop,
        };
        if out.contains(&route) {
            if unique {
                return Err(input::bad_attr(
                    key,
                    format!("Duplicate hostroute '{}'", python_route(&route)),
                ));
            }
            continue;
        }
        out.push(route);
    }
    Ok(out)
}

/// A route's destination: `a.b.c.d/n` with no host bits set, not loopback.
fn route_cidr(v: &Value) -> Result<IpNet, Fault> {
    let key = "routes";
    let Value::String(s) = v else {
        return Err(input::bad_attr(key, format!("'{v}' is not a valid CIDR")));
    };
    let net = match s.parse::<IpNet>() {
        Ok(n @ IpNet::V4(_)) if n.trunc() == n => n,
        Ok(IpNet::V6(_)) => {
            return Err(input::bad_attr(
                key,
                format!("'{s}' is not a valid IPv4 CIDR"),
            ));
        }
        _ => return Err(input::bad_attr(key, format!("'{s}' is not a valid CIDR"))),
    };
    if net.addr().is_loopback() {
        return Err(input::bad_attr(
            key,
            format!("'{s}' is not a routable CIDR"),
        ));
    }
    // The external gateway owns the default route; Neutron's agent would replace it.
    if net.prefix_len() == 0 {
        return Err(input::bad_attr(
            key,
            format!("'{s}' is the default route, which the external gateway sets"),
        ));
    }
    Ok(net)
}

pub(super) fn delete_router(cx: Cx, id: &str) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
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
