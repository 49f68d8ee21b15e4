//! Router interfaces: `PUT /v2.0/routers/{id}/add_router_interface` and
//! `remove_router_interface`, by subnet or by port.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{
    Cx, floatingips, new_id,
    ports::is_router_port,
    routers::{overlap_error, router_subnets},
    subnets::overlaps,
};
use crate::{
    api::{
        Ctx, Effects,
        input::{self, Obj},
        scope::visible,
    },
    model::{Fault, FixedIp, Network, OWNER_ROUTER_INTERFACE, Port, Router, Subnet},
    store,
};

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

/// `PUT /v2.0/routers/{id}/add_router_interface` (`add`) or `remove_router_interface`, by
/// subnet or by port.
pub fn change_interface(cx: Cx, router_id: &str, o: &Obj, add: bool) -> Result<Value, Fault> {
    let Cx { c, fx, ctx } = cx;
    input::only(o, &["subnet_id", "port_id"])?;
    let subnet_id = input::opt_uuid(o, "subnet_id")?;
    let port_id = input::opt_uuid(o, "port_id")?;
    let r = visible::<Router>(c, ctx, router_id)?;
    let change = Change {
        c,
        fx,
        ctx,
        r: &r,
        subnet_id,
        port_id,
    };
    if add {
        add_interface(change)
    } else {
        remove_interface(change)
    }
}

/// One interface change on router `r`, by subnet and/or port, in the request's transaction.
struct Change<'a> {
    c: &'a Connection,
    fx: &'a mut Effects,
    ctx: &'a Ctx,
    r: &'a Router,
    subnet_id: Option<String>,
    port_id: Option<String>,
}

fn add_interface(change: Change) -> Result<Value, Fault> {
    let (c, fx, ctx, r) = (change.c, change.fx, change.ctx, change.r);
    let (subnet_id, port_id) = (change.subnet_id, change.port_id);
    let router_id = r.id.as_str();
    let existing = router_subnets(c, r)?;
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
            let shared = store::get::<Network>(c, &s.network_id)?.is_some_and(|n| n.shared);
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
            store::insert(c, &port)?;
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
            let s = store::get::<Subnet>(c, &p.fixed_ips[0].subnet_id)?
                .ok_or_else(|| Fault::not_found("subnet", &p.fixed_ips[0].subnet_id))?;
            check(&s)?;
            p.device_owner = OWNER_ROUTER_INTERFACE.into();
            p.device_id = r.id.clone();
            p.status = "ACTIVE".into();
            store::update(c, &p)?;
            p
        }
    };
    store::add_interface(c, &r.id, &port.id)?;
    Ok(interface_info(r, &port))
}

/// Neutron's `RouterInterfaceInUseByRoute`: an extra route's nexthop on the interface's
/// subnet would lose its way out.
fn check_routes_removal(c: &Connection, router_id: &str, port: &Port) -> Result<(), Fault> {
    let routes = store::router_routes(c, router_id)?;
    for f in &port.fixed_ips {
        let Some(s) = store::get::<Subnet>(c, &f.subnet_id)? else {
            continue;
        };
        if routes.iter().any(|r| s.cidr.contains(&r.nexthop)) {
            return Err(Fault::conflict(
                "RouterInterfaceInUseByRoute",
                format!(
                    "Router interface for subnet {} on router {router_id} cannot be deleted, as it is required by one or more routes.",
                    s.id
                ),
            ));
        }
    }
    Ok(())
}

fn remove_interface(change: Change) -> Result<Value, Fault> {
    let (c, fx, ctx, r) = (change.c, change.fx, change.ctx, change.r);
    let (subnet_id, port_id) = (change.subnet_id, change.port_id);
    let router_id = r.id.as_str();
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
    floatingips::check_interface_removal(c, router_id, &port)?;
    check_routes_removal(c, router_id, &port)?;
    fx.touch_router(c, router_id)?;
    store::remove_interface(c, router_id, &port.id)?;
    store::delete_port(c, &port.id)?;
    Ok(interface_info(r, &port))
}
