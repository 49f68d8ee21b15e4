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

use std::net::Ipv4Addr;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Value, json};

use super::{
    ApiState, Ctx, Effects,
    input::{self, NAME_MAX, Obj},
    scope::{seen, visible},
};
use crate::{
    model::{Fault, Port},
    store::{
        self,
        floatingips::{self as fstore, FloatingIp, PortForwarding},
    },
};

/// Neutron's `device_owner` of the port holding a floating IP's address.
pub const OWNER_FLOATINGIP: &str = "network:floatingip";

/// Neutron's 404 for a floating IP (its message has no final period, unlike the others).
pub(super) fn fip_not_found(id: &str) -> Fault {
    Fault::new(
        404,
        "FloatingIPNotFound",
        format!("Floating IP {id} could not be found"),
    )
}

fn pf_not_found(fip: &str, id: &str) -> Fault {
    Fault::new(
        404,
        "PortForwardingNotFound",
        format!("Port Forwarding {id} could not be found for Floating IP {fip}"),
    )
}

/// The floating IP and its port forwarding `id`, if the caller may see the floating IP.
fn visible_pf(
    c: &Connection,
    ctx: &Ctx,
    fip_id: &str,
    id: &str,
) -> Result<(FloatingIp, PortForwarding), Fault> {
    let f = visible::<FloatingIp>(c, ctx, fip_id)?;
    let pf = fstore::get_port_forwarding(c, fip_id, id)?.ok_or_else(|| pf_not_found(fip_id, id))?;
    Ok((f, pf))
}

// ------------------------------------------------------------------ views

fn fip_view(c: &Connection, f: &FloatingIp) -> Result<Value, Fault> {
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

fn pf_view(p: &PortForwarding) -> Value {
    json!({
        "id": p.id,
        "protocol": p.protocol,
        "external_port": p.external_port,
        "internal_port": p.internal_port,
        "internal_ip_address": p.internal_ip.to_string(),
        "internal_port_id": p.internal_port_id,
        "description": p.description,
    })
}

// ------------------------------------------------------------------ logic

/// The router that can serve a floating IP on `fnet` for `fixed` (an address of `port`): the
/// fixed IP's subnet is one of its interfaces and its gateway is on `fnet`.
fn serving_router(
    c: &Connection,
    fnet: &str,
    port: &Port,
    fixed: Ipv4Addr,
) -> Result<String, Fault> {
    let subnet = port
        .fixed_ips
        .iter()
        .find(|f| f.ip == fixed)
        .map(|f| f.subnet_id.clone())
        .unwrap_or_default();
    let r: Option<String> = c
        .query_row(
            "SELECT r.id FROM routers r
               JOIN ports gp ON gp.id = r.gw_port_id
               JOIN router_interfaces i ON i.router_id = r.id
               JOIN fixed_ips f ON f.port_id = i.port_id
             WHERE gp.network_id = ?1 AND f.subnet_id = ?2
             ORDER BY r.rowid LIMIT 1",
            [fnet, subnet.as_str()],
            |row| row.get(0),
        )
        .optional()?;
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
fn pick_fixed_ip(port: &Port, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, Fault> {
    match requested {
        Some(ip) if port.fixed_ips.iter().any(|f| f.ip == ip) => Ok(ip),
        Some(ip) => Err(Fault::bad_request(format!(
            "Bad floatingip request: Port {} does not have fixed ip {ip}.",
            port.id
        ))),
        None => port.fixed_ips.first().map(|f| f.ip).ok_or_else(|| {
            Fault::bad_request(format!(
                "Bad floatingip request: Port {} does not have any fixed IPs.",
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
    fixed: Option<Ipv4Addr>,
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
        return fstore::update_floatingip(c, f);
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
    if port.device_owner.starts_with("network:") {
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
    fstore::update_floatingip(c, f)
}

fn create_fip(c: &Connection, fx: &mut Effects, ctx: &Ctx, o: &Obj) -> Result<String, Fault> {
    input::only(
        o,
        &[
            "floating_network_id",
            "floating_ip_address",
            "subnet_id",
            "port_id",
            "fixed_ip_address",
            "description",
            "tenant_id",
            "project_id",
        ],
    )?;
    let net_id = input::req_uuid(o, "floating_network_id")?;
    let project_id = input::owner(o, ctx, "create_floatingip")?;
    let description = input::opt_string(o, "description", NAME_MAX)?.unwrap_or_default();
    let subnet_id = input::opt_uuid(o, "subnet_id")?;
    let requested = o
        .get("floating_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ip_value("floating_ip_address", v))
        .transpose()?;
    let port_id = match o.get("port_id") {
        None | Some(Value::Null) => None,
        Some(_) => input::opt_uuid(o, "port_id")?,
    };
    let fixed = o
        .get("fixed_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ip_value("fixed_ip_address", v))
        .transpose()?;
    if requested.is_some() && !ctx.admin {
        // Neutron's default policy lets only admins pick the address.
        return Err(Fault::policy("create_floatingip:floating_ip_address"));
    }
    let net = match store::get_network(c, &net_id)? {
        Some(n) if n.external || ctx.owns(&n.project_id) || n.shared => n,
        _ => return Err(Fault::not_found("network", &net_id)),
    };
    if !net.external {
        return Err(Fault::bad_request(format!(
            "Bad floatingip request: Network {net_id} is not a valid external network."
        )));
    }
    let subnets: Vec<_> = store::network_subnets(c, &net_id)?
        .into_iter()
        .filter(|s| subnet_id.as_ref().is_none_or(|id| &s.id == id))
        .filter(|s| requested.is_none_or(|ip| s.cidr.contains(&ip)))
        .collect();
    if subnets.is_empty() {
        return Err(match (requested, subnet_id) {
            (Some(ip), _) => Fault::bad_request(format!(
                "Bad floatingip request: {ip} is not in any subnet of network {net_id}."
            )),
            (None, Some(s)) => Fault::not_found("subnet", &s),
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
    let id = uuid::Uuid::new_v4().to_string();
    let address = fixed_ips[0].ip;
    let port = Port {
        id: uuid::Uuid::new_v4().to_string(),
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
    store::insert_port(c, &port)?;
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
    fstore::insert_floatingip(c, &f)?;
    if let Some(p) = port_id {
        associate(c, fx, ctx, &mut f, Some(&p), fixed)?;
    } else if fixed.is_some() {
        return Err(Fault::bad_request(
            "Bad floatingip request: fixed_ip_address needs a port_id.",
        ));
    }
    Ok(id)
}

fn update_fip(c: &Connection, fx: &mut Effects, ctx: &Ctx, id: &str, o: &Obj) -> Result<(), Fault> {
    input::only(o, &["port_id", "fixed_ip_address", "description"])?;
    let mut f = visible::<FloatingIp>(c, ctx, id)?;
    if let Some(d) = input::opt_string(o, "description", NAME_MAX)? {
        f.description = d;
        fstore::update_floatingip(c, &f)?;
    }
    let fixed = o
        .get("fixed_ip_address")
        .filter(|v| !v.is_null())
        .map(|v| input::ip_value("fixed_ip_address", v))
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

fn delete_fip(c: &Connection, fx: &mut Effects, ctx: &Ctx, id: &str) -> Result<(), Fault> {
    let f = visible::<FloatingIp>(c, ctx, id)?;
    if let Some(r) = &f.router_id {
        fx.touch_router(c, r)?;
    }
    fstore::delete_floatingip(c, id)?;
    store::delete_port(c, &f.floating_port_id)
}

/// Hook of the ports API: a floating IP's own port cannot be deleted directly (409), and a
/// port that goes away takes its floating IP associations and port forwardings with it.
pub fn before_port_delete(c: &Connection, fx: &mut Effects, p: &Port) -> Result<(), Fault> {
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
        fstore::update_floatingip(c, &f)?;
    }
    for pf in fstore::port_port_forwardings(c, &p.id)? {
        if let Some(mut f) = fstore::get_floatingip(c, &pf.floatingip_id)? {
            if let Some(r) = &f.router_id {
                fx.touch_router(c, r)?;
            }
            fstore::delete_port_forwarding(c, &pf.id)?;
            if f.port_id.is_none() && fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
                f.router_id = None;
                fstore::update_floatingip(c, &f)?;
            }
        }
    }
    Ok(())
}

/// Hook of the routers API: the gateway of a router serving floating IPs cannot be removed
/// or moved (409, as Neutron).
pub fn check_gateway_removal(c: &Connection, router_id: &str) -> Result<(), Fault> {
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
pub fn check_interface_removal(c: &Connection, router_id: &str, iface: &Port) -> Result<(), Fault> {
    let subnets: Vec<&str> = iface
        .fixed_ips
        .iter()
        .map(|f| f.subnet_id.as_str())
        .collect();
    let in_subnets = |port_id: &str, ip: Ipv4Addr| -> Result<bool, Fault> {
        Ok(store::get_port(c, port_id)?.is_some_and(|p| {
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

// ------------------------------------------------------------------ port forwardings

/// A port number 1-65535 from `o[key]`.
fn port_number(o: &Obj, key: &str) -> Result<Option<u16>, Fault> {
    match o.get(key) {
        None => Ok(None),
        Some(v) => match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            Some(n) if (1..=65535).contains(&n) => Ok(Some(n as u16)),
            _ => Err(input::bad_attr(
                key,
                format!("'{v}' is not a valid port number (1-65535)"),
            )),
        },
    }
}

fn protocol(o: &Obj) -> Result<Option<String>, Fault> {
    match o.get("protocol") {
        None => Ok(None),
        Some(Value::String(s)) if fstore::protocol_number(s).is_some() => Ok(Some(s.clone())),
        Some(v) => Err(input::bad_attr(
            "protocol",
            format!("'{v}' is not in ['tcp', 'udp']"),
        )),
    }
}

const PF_FIELDS: [&str; 6] = [
    "protocol",
    "external_port",
    "internal_port_id",
    "internal_ip_address",
    "internal_port",
    "description",
];

/// Applies the fields of `o` to `pf` and checks the result (port, address, router,
/// duplicates). Returns the router that serves it.
fn check_pf(
    c: &Connection,
    ctx: &Ctx,
    f: &FloatingIp,
    pf: &mut PortForwarding,
    o: &Obj,
) -> Result<String, Fault> {
    if let Some(p) = protocol(o)? {
        pf.protocol = p;
    }
    if let Some(p) = port_number(o, "external_port")? {
        pf.external_port = p;
    }
    if let Some(p) = port_number(o, "internal_port")? {
        pf.internal_port = p;
    }
    input::set_string(o, "description", &mut pf.description)?;
    let port_changed = if let Some(p) = input::opt_uuid(o, "internal_port_id")? {
        let changed = p != pf.internal_port_id;
        pf.internal_port_id = p;
        changed
    } else {
        false
    };
    let requested = o
        .get("internal_ip_address")
        .map(|v| input::ip_value("internal_ip_address", v))
        .transpose()?;
    for (k, missing) in [
        ("protocol", pf.protocol.is_empty()),
        ("external_port", pf.external_port == 0),
        ("internal_port", pf.internal_port == 0),
        ("internal_port_id", pf.internal_port_id.is_empty()),
    ] {
        if missing {
            return Err(input::bad_attr(k, "this attribute is required"));
        }
    }
    if f.port_id.is_some() {
        return Err(Fault::conflict(
            "FloatingIPPortForwardingConflict",
            format!(
                "Floating IP {} is associated with port {} and cannot have port forwardings.",
                f.id,
                f.port_id.as_deref().unwrap_or_default()
            ),
        ));
    }
    let port = visible::<Port>(c, ctx, &pf.internal_port_id)?;
    let ip = match requested {
        Some(ip) => ip,
        None if port_changed || pf.internal_ip.is_unspecified() => port
            .fixed_ips
            .first()
            .map(|x| x.ip)
            .unwrap_or(pf.internal_ip),
        None => pf.internal_ip,
    };
    if !port.fixed_ips.iter().any(|x| x.ip == ip) {
        return Err(Fault::bad_request(format!(
            "Bad port_forwarding request: internal IP {ip} is not an address of port {}.",
            port.id
        )));
    }
    pf.internal_ip = ip;
    let router = serving_router(c, &f.floating_network_id, &port, ip)?;
    if let Some(r) = &f.router_id
        && r != &router
    {
        return Err(Fault::conflict(
            "ExternalGatewayForFloatingIPNotFound",
            format!(
                "Floating IP {} already forwards to router {r}; port {} is behind router {router}.",
                f.id, port.id
            ),
        ));
    }
    let dup: Option<String> = c
        .query_row(
            "SELECT id FROM port_forwardings WHERE id<>?1 AND protocol=?2 AND
               ((floatingip_id=?3 AND external_port=?4) OR (internal_ip=?5 AND internal_port=?6))",
            rusqlite::params![
                pf.id,
                pf.protocol,
                f.id,
                pf.external_port,
                i64::from(u32::from(pf.internal_ip)),
                pf.internal_port
            ],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(d) = dup {
        return Err(Fault::conflict(
            "DuplicatePortForwarding",
            format!(
                "A duplicate port forwarding entry ({d}) with the same floating IP, protocol and external port, or the same internal address, port and protocol, already exists."
            ),
        ));
    }
    Ok(router)
}

fn create_pf(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    fip_id: &str,
    o: &Obj,
) -> Result<PortForwarding, Fault> {
    input::only(o, &PF_FIELDS)?;
    let mut f = visible::<FloatingIp>(c, ctx, fip_id)?;
    let mut pf = PortForwarding {
        id: uuid::Uuid::new_v4().to_string(),
        floatingip_id: f.id.clone(),
        protocol: String::new(),
        external_port: 0,
        internal_port_id: String::new(),
        internal_ip: Ipv4Addr::UNSPECIFIED,
        internal_port: 0,
        description: String::new(),
    };
    let router = check_pf(c, ctx, &f, &mut pf, o)?;
    fx.touch_router(c, &router)?;
    fstore::insert_port_forwarding(c, &pf)?;
    if f.router_id.is_none() {
        f.router_id = Some(router);
        fstore::update_floatingip(c, &f)?;
    }
    Ok(pf)
}

fn update_pf(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    fip_id: &str,
    id: &str,
    o: &Obj,
) -> Result<PortForwarding, Fault> {
    input::only(o, &PF_FIELDS)?;
    let (f, mut pf) = visible_pf(c, ctx, fip_id, id)?;
    let router = check_pf(c, ctx, &f, &mut pf, o)?;
    fx.touch_router(c, &router)?;
    fstore::update_port_forwarding(c, &pf)?;
    Ok(pf)
}

fn delete_pf(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    fip_id: &str,
    id: &str,
) -> Result<(), Fault> {
    let (mut f, _) = visible_pf(c, ctx, fip_id, id)?;
    if let Some(r) = &f.router_id {
        fx.touch_router(c, r)?;
    }
    fstore::delete_port_forwarding(c, id)?;
    if f.port_id.is_none() && fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
        f.router_id = None;
        fstore::update_floatingip(c, &f)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ handlers

/// Adds the floating-IP and port-forwarding routes to the API router.
pub fn routes(r: Router<ApiState>) -> Router<ApiState> {
    r.route("/v2.0/floatingips", get(list).post(create))
        .route(
            "/v2.0/floatingips/{id}",
            get(show).put(update).delete(delete),
        )
        .route(
            "/v2.0/floatingips/{id}/port_forwardings",
            get(list_pf).post(create_pf_h),
        )
        .route(
            "/v2.0/floatingips/{id}/port_forwardings/{pf}",
            get(show_pf).put(update_pf_h).delete(delete_pf_h),
        )
}

fn filtered(items: Vec<Value>, uri: &Uri) -> Result<Vec<Value>, Fault> {
    let q = super::parse_query(uri)?;
    Ok(items
        .into_iter()
        .filter(|i| super::matches(i, &q.filters))
        .map(|i| super::project(i, &q.fields))
        .collect())
}

async fn list(State(s): State<ApiState>, ctx: Ctx, uri: Uri) -> Result<Response, Fault> {
    let items = s
        .read(move |c| {
            seen(c, &ctx, fstore::list_floatingips(c)?)?
                .iter()
                .map(|f| fip_view(c, f))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(json!({ "floatingips": filtered(items, &uri)? })).into_response())
}

async fn show(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, Fault> {
    let item = s
        .read(move |c| fip_view(c, &visible::<FloatingIp>(c, &ctx, &id)?))
        .await?;
    let q = super::parse_query(&uri)?;
    Ok(Json(json!({ "floatingip": super::project(item, &q.fields) })).into_response())
}

async fn create(State(s): State<ApiState>, ctx: Ctx, body: Bytes) -> Result<Response, Fault> {
    let o = input::resource_body(&body, "floatingip")?;
    let item = s
        .mutate(move |c, fx| {
            let id = create_fip(c, fx, &ctx, &o)?;
            fip_view(c, &visible::<FloatingIp>(c, &ctx, &id)?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "floatingip": item }))).into_response())
}

async fn update(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Fault> {
    let o = input::resource_body(&body, "floatingip")?;
    let item = s
        .mutate(move |c, fx| {
            update_fip(c, fx, &ctx, &id, &o)?;
            fip_view(c, &visible::<FloatingIp>(c, &ctx, &id)?)
        })
        .await?;
    Ok(Json(json!({ "floatingip": item })).into_response())
}

async fn delete(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, Fault> {
    s.mutate(move |c, fx| delete_fip(c, fx, &ctx, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_pf(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, Fault> {
    let items = s
        .read(move |c| {
            visible::<FloatingIp>(c, &ctx, &id)?;
            Ok(fstore::fip_port_forwardings(c, &id)?
                .iter()
                .map(pf_view)
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(json!({ "port_forwardings": filtered(items, &uri)? })).into_response())
}

async fn show_pf(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path((id, pf)): Path<(String, String)>,
) -> Result<Response, Fault> {
    let item = s
        .read(move |c| Ok(pf_view(&visible_pf(c, &ctx, &id, &pf)?.1)))
        .await?;
    Ok(Json(json!({ "port_forwarding": item })).into_response())
}

async fn create_pf_h(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Fault> {
    let o = input::resource_body(&body, "port_forwarding")?;
    let item = s
        .mutate(move |c, fx| create_pf(c, fx, &ctx, &id, &o).map(|p| pf_view(&p)))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "port_forwarding": item })),
    )
        .into_response())
}

async fn update_pf_h(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path((id, pf)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Fault> {
    let o = input::resource_body(&body, "port_forwarding")?;
    let item = s
        .mutate(move |c, fx| update_pf(c, fx, &ctx, &id, &pf, &o).map(|p| pf_view(&p)))
        .await?;
    Ok(Json(json!({ "port_forwarding": item })).into_response())
}

async fn delete_pf_h(
    State(s): State<ApiState>,
    ctx: Ctx,
    Path((id, pf)): Path<(String, String)>,
) -> Result<Response, Fault> {
    s.mutate(move |c, fx| delete_pf(c, fx, &ctx, &id, &pf))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
