//! Floating IPs (`/v2.0/floatingips`, part of Neutron's `router` extension) and their port
//! forwardings (`/v2.0/floatingips/{id}/port_forwardings`, extension
//! `floating-ip-port-forwarding`), with Neutron's semantics:
//!
//! - a floating IP is created on an external network, its address taken from the network's
//!   pools (or `floating_ip_address`) through a port with device owner `network:floatingip`;
//! - association (`port_id`, optional `fixed_ip_address`) needs the fixed IP's subnet attached
//!   to a router whose gateway is on the floating IP's network (409
//!   `ExternalGatewayForFloatingIPNotFound`), and one fixed IP has at most one floating IP (409);
//! - `router_id` is computed, `status` is ACTIVE while associated (or forwarding) else DOWN;
//! - a floating IP with port forwardings cannot be associated, and an associated one cannot
//!   get port forwardings (409), as in Neutron;
//! - every change touches the routers whose spec it alters, so the usual realise-or-roll-back
//!   of the API applies.

use std::net::IpAddr;

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{Cx, new_id, port_forwardings::pf_view};
use crate::{
    api::{
        Ctx, Effects,
        input::{self, NAME_MAX, Obj},
        scope::visible,
    },
    model::{Fault, FloatingIp, Network, OWNER_FLOATINGIP, OWNER_NETWORK_PREFIX, Port},
    store::{self, floatingips as fstore},
};

/// Neutron's 404 for a floating IP (its message has no final period, unlike the others).
pub(super) fn fip_not_found(id: &str) -> Fault {
    Fault::new(
        404,
        "FloatingIPNotFound",
        format!("Floating IP {id} could not be found"),
    )
}

pub(super) fn fip_view(c: &Connection, f: &FloatingIp) -> Result<Value, Fault> {
    let pfs = fstore::fip_port_forwardings(c, &f.id)?;
    let active = f.port_id.is_some() || !pfs.is_empty();
    Ok(json!({
        "id": f.id,
        "tenant_id": f.project_id,
        "project_id": f.project_id,
        "description": f.description,
        "floating_network_id": f.floating_network_id,
        "floating_ip_address": f.floating_ip.to_string(),
        "fixed_ip_address": f.fixed_ip.map(|a| a.to_string()),
        "port_id": f.port_id,
        "router_id": f.router_id,
        "status": if active { "ACTIVE" } else { "DOWN" },
        "port_forwardings": pfs.iter().map(pf_view).collect::<Vec<_>>(),
    }))
}

// ------------------------------------------------------------------ logic

/// The router that can serve a floating IP on `fnet` for `fixed` (an address of `port`): the
/// fixed IP's subnet is one of its interfaces and its gateway is on `fnet`.
pub(super) fn serving_router(
    c: &Connection,
    fnet: &str,
    port: &Port,
    fixed: IpAddr,
) -> Result<String, Fault> {
    let subnet = port
        .fixed_ips
        .iter()
        .find(|f| f.ip == fixed)
        .map(|f| f.subnet_id.clone())
        .unwrap_or_default();
    let r = fstore::serving_router(c, fnet, &subnet)?;
    r.ok_or_else(|| {
        Fault::conflict(
            "ExternalGatewayForFloatingIPNotFound",
            format!(
                "External network {fnet} is not reachable from subnet {subnet}. Therefore, cannot associate Port {} with a Floating IP.",
                port.id
            ),
        )
    })
}

/// The fixed IP of `port` to use: `requested` if it is one of the port's, else its first.
fn pick_fixed_ip(port: &Port, requested: Option<IpAddr>) -> Result<IpAddr, Fault> {
    match requested {
        Some(ip) if port.fixed_ips.iter().any(|f| f.ip == ip) => Ok(ip),
        Some(ip) => Err(Fault::bad_request(format!(
            "Bad floatingip request: Port {} does not have fixed ip {ip}.",
            port.id
        ))),
        // Floating IPs are IPv4 only (Neutron: "no fixed IPv4 addresses").
        None => port
            .fixed_ips
            .iter()
            .map(|f| f.ip)
            .find(IpAddr::is_ipv4)
            .ok_or_else(|| {
                Fault::new(400, "BadRequest", format!(
                    "Bad floatingip request: Cannot add floating IP to port {} that has no fixed IPv4 addresses.",
                    port.id
                ))
            }),
    }
}

/// Associates `f` with `port_id` (None: disassociates), touching the routers concerned.
fn associate(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    f: &mut FloatingIp,
    port_id: Option<&str>,
    fixed: Option<IpAddr>,
) -> Result<(), Fault> {
    if let Some(r) = &f.router_id {
        fx.touch_router(c, r)?;
    }
    let Some(port_id) = port_id else {
        f.port_id = None;
        f.fixed_ip = None;
        if fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
            f.router_id = None;
        }
        return store::update(c, f);
    };
    if !fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
        return Err(Fault::conflict(
            "FloatingIPPortForwardingConflict",
            format!(
                "Floating IP {} has port forwardings and cannot be associated with a port.",
                f.id
            ),
        ));
    }
    let port = visible::<Port>(c, ctx, port_id)?;
    if port.device_owner.starts_with(OWNER_NETWORK_PREFIX) {
        return Err(Fault::bad_request(format!(
            "Bad floatingip request: Port {} has owner {} and cannot have a floating IP.",
            port.id, port.device_owner
        )));
    }
    let ip = pick_fixed_ip(&port, fixed)?;
    if let Some(other) = fstore::fip_of_fixed_ip(c, &port.id, ip)?
        && other != f.id
    {
        return Err(Fault::conflict(
            "FloatingIPPortAlreadyAssociated",
            format!(
                "Cannot associate floating IP {} ({}) with port {} using fixed IP {ip}, as that fixed IP already has a floating IP on external network {}.",
                f.floating_ip, f.id, port.id, f.floating_network_id
            ),
        ));
    }
    let router = serving_router(c, &f.floating_network_id, &port, ip)?;
    fx.touch_router(c, &router)?;
    f.port_id = Some(port.id);
    f.fixed_ip = Some(ip);
    f.router_id = Some(router);
    store::update(c, f)
}

pub(super) fn create_fip(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
    let net_id = input::req_uuid(o, "floating_network_id")?;
    let project_id = input::owner(o, ctx, "create_floatingip")?;
    let description = input::opt_string(o, "description", NAME_MAX)?.unwrap_or_default();
    let subnet_id = input::opt_uuid(o, "subnet_id")?;
    let requested = o
        .get("floating_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ipv4_value("floatingip", "floating_ip_address", v))
        .transpose()?;
    let port_id = match o.get("port_id") {
        None | Some(Value::Null) => None,
        Some(_) => input::opt_uuid(o, "port_id")?,
    };
    let fixed = o
        .get("fixed_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ipv4_value("floatingip", "fixed_ip_address", v))
        .transpose()?;
    if requested.is_some() && !ctx.admin {
        // Neutron's default policy lets only admins pick the address.
        return Err(Fault::policy("create_floatingip:floating_ip_address"));
    }
    let net = match store::get::<Network>(c, &net_id)? {
        Some(n) if n.external || ctx.owns(&n.project_id) || n.shared => n,
        _ => return Err(Fault::not_found("network", &net_id)),
    };
    if !net.external {
        return Err(Fault::bad_request(format!(
            "Bad floatingip request: Network {net_id} is not a valid external network."
        )));
    }
    let fixed_ips = allocate_address(c, &net_id, subnet_id.as_ref(), requested)?;
    let id = new_id();
    let address = fixed_ips[0].ip;
    let port = Port {
        id: new_id(),
        network_id: net_id.clone(),
        name: String::new(),
        description: String::new(),
        project_id: String::new(),
        mac: store::generate_mac(c)?,
        admin_state_up: true,
        device_owner: OWNER_FLOATINGIP.into(),
        device_id: id.clone(),
        status: "N/A".into(),
        fixed_ips,
    };
    store::insert(c, &port)?;
    let mut f = FloatingIp {
        id: id.clone(),
        project_id,
        description,
        floating_network_id: net_id,
        floating_port_id: port.id,
        floating_ip: address,
        port_id: None,
        fixed_ip: None,
        router_id: None,
    };
    store::insert(c, &f)?;
    if let Some(p) = port_id {
        associate(c, fx, ctx, &mut f, Some(&p), fixed)?;
    } else if fixed.is_some() {
        return Err(Fault::bad_request(
            "Bad floatingip request: fixed_ip_address needs a port_id.",
        ));
    }
    Ok(id)
}

/// The floating IP's address on external network `net_id`: from `subnet_id` when given, else
/// from the first IPv4 subnet with room (the address `requested` when given), as Neutron
/// allocates it.
fn allocate_address(
    c: &rusqlite::Connection,
    net_id: &str,
    subnet_id: Option<&String>,
    requested: Option<std::net::IpAddr>,
) -> Result<Vec<crate::model::FixedIp>, Fault> {
    let all = store::network_subnets(c, net_id)?;
    if let Some(s) = all.iter().find(|s| subnet_id == Some(&s.id))
        && s.ip_version() != 4
    {
        return Err(Fault::new(
            400,
            "BadRequest",
            format!(
                "Bad floatingip request: Subnet {} is not an IPv4 subnet; floating IPs are IPv4 only.",
                s.id
            ),
        ));
    }
    if !all.is_empty() && all.iter().all(|s| s.ip_version() != 4) {
        return Err(Fault::new(
            400,
            "BadRequest",
            format!("Bad floatingip request: Network {net_id} does not contain any IPv4 subnet."),
        ));
    }
    let subnets: Vec<_> = all
        .into_iter()
        .filter(|s| s.ip_version() == 4)
        .filter(|s| subnet_id.is_none_or(|id| &s.id == id))
        .filter(|s| requested.is_none_or(|ip| s.cidr.contains(&ip)))
        .collect();
    if subnets.is_empty() {
        return Err(match (requested, subnet_id) {
            (Some(ip), _) => Fault::bad_request(format!(
                "Bad floatingip request: {ip} is not in any subnet of network {net_id}."
            )),
            (None, Some(s)) => Fault::not_found("subnet", s),
            (None, None) => Fault::bad_request(format!(
                "Bad floatingip request: Network {net_id} has no subnet."
            )),
        });
    }
    let mut fixed_ips = Vec::new();
    let mut last_err = None;
    for s in &subnets {
        match store::allocate_ip(c, s, requested, false) {
            Ok(ip) => {
                fixed_ips.push(crate::model::FixedIp {
                    subnet_id: s.id.clone(),
                    ip,
                });
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if fixed_ips.is_empty() {
        return Err(last_err.unwrap_or_else(|| Fault::internal("no subnet")));
    }
    Ok(fixed_ips)
}

pub(super) fn update_fip(cx: Cx, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let mut f = visible::<FloatingIp>(c, ctx, id)?;
    if let Some(d) = input::opt_string(o, "description", NAME_MAX)? {
        f.description = d;
        store::update(c, &f)?;
    }
    let fixed = o
        .get("fixed_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ipv4_value("floatingip", "fixed_ip_address", v))
        .transpose()?;
    match o.get("port_id") {
        None => {
            if fixed.is_some() {
                // A new fixed IP on the same port.
                let port = f.port_id.clone().ok_or_else(|| {
                    Fault::bad_request("Bad floatingip request: fixed_ip_address needs a port_id.")
                })?;
                associate(c, fx, ctx, &mut f, Some(&port), fixed)?;
            }
        }
        Some(Value::Null) => associate(c, fx, ctx, &mut f, None, None)?,
        Some(_) => {
            let p = input::opt_uuid(o, "port_id")?.unwrap_or_default();
            associate(c, fx, ctx, &mut f, Some(&p), fixed)?;
        }
    }
    Ok(())
}

pub(super) fn delete_fip(cx: Cx, id: &str) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let f = visible::<FloatingIp>(c, ctx, id)?;
    if let Some(r) = &f.router_id {
        fx.touch_router(c, r)?;
    }
    fstore::delete_floatingip(c, id)?;
    store::delete_port(c, &f.floating_port_id)
}

/// Hook of the ports API: a floating IP's own port cannot be deleted directly (409), and a
/// port that goes away takes its floating IP associations and port forwardings with it.
pub(super) fn before_port_delete(c: &Connection, fx: &mut Effects, p: &Port) -> Result<(), Fault> {
    if p.device_owner == OWNER_FLOATINGIP {
        return Err(Fault::conflict(
            "L3PortInUse",
            format!(
                "Port {} has owner {} and therefore cannot be deleted directly via the port API.",
                p.id, p.device_owner
            ),
        ));
    }
    for mut f in fstore::port_floatingips(c, &p.id)? {
        if let Some(r) = &f.router_id {
            fx.touch_router(c, r)?;
        }
        f.port_id = None;
        f.fixed_ip = None;
        if fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
            f.router_id = None;
        }
        store::update(c, &f)?;
    }
    for pf in fstore::port_port_forwardings(c, &p.id)? {
        if let Some(mut f) = store::get::<FloatingIp>(c, &pf.floatingip_id)? {
            if let Some(r) = &f.router_id {
                fx.touch_router(c, r)?;
            }
            fstore::delete_port_forwarding(c, &pf.id)?;
            if f.port_id.is_none() && fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
                f.router_id = None;
                store::update(c, &f)?;
            }
        }
    }
    Ok(())
}

/// Hook of the routers API: the gateway of a router serving floating IPs cannot be removed
/// or moved (409, as Neutron).
pub(super) fn check_gateway_removal(c: &Connection, router_id: &str) -> Result<(), Fault> {
    if !fstore::router_floatingips(c, router_id)?.is_empty() {
        return Err(Fault::conflict(
            "RouterExternalGatewayInUseByFloatingIp",
            format!(
                "Gateway cannot be updated for router {router_id}, since a gateway to external network is required by one or more floating IPs."
            ),
        ));
    }
    Ok(())
}

/// Hook of the router interface API: an interface whose subnet holds fixed IPs that the
/// router's floating IPs or port forwardings translate to cannot be removed (409, as Neutron).
pub(super) fn check_interface_removal(
    c: &Connection,
    router_id: &str,
    iface: &Port,
) -> Result<(), Fault> {
    let subnets: Vec<&str> = iface
        .fixed_ips
        .iter()
        .map(|f| f.subnet_id.as_str())
        .collect();
    let in_subnets = |port_id: &str, ip: IpAddr| -> Result<bool, Fault> {
        Ok(store::get::<Port>(c, port_id)?.is_some_and(|p| {
            p.fixed_ips
                .iter()
                .any(|f| f.ip == ip && subnets.contains(&f.subnet_id.as_str()))
        }))
    };
    for f in fstore::router_floatingips(c, router_id)? {
        let mut used = match (&f.port_id, f.fixed_ip) {
            (Some(p), Some(ip)) => in_subnets(p, ip)?,
            _ => false,
        };
        for pf in fstore::fip_port_forwardings(c, &f.id)? {
            used = used || in_subnets(&pf.internal_port_id, pf.internal_ip)?;
        }
        if used {
            return Err(Fault::conflict(
                "RouterInterfaceInUseByFloatingIP",
                format!(
                    "Router interface for subnet {} on router {router_id} cannot be deleted, as it is required by one or more floating IPs.",
                    subnets.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
