//! Routers: `/v2.0/routers` and their `external_gateway_info`.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{
    floatingips, new_id,
    ports::{allocate_fixed_ips, fixed_ips_view},
    subnets::overlaps,
};
use crate::{
    api::{
        Ctx, Effects,
        input::{self, FixedIpRequest, Obj},
        scope::visible,
    },
    model::{Fault, Network, OWNER_ROUTER_GATEWAY, Port, Router, Subnet},
    store,
};

pub(super) fn router_view(c: &Connection, r: &Router) -> Result<Value, Fault> {
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

pub(super) fn create_router(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    o: &Obj,
) -> Result<String, Fault> {
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
pub(super) fn router_subnets(c: &Connection, r: &Router) -> Result<Vec<(Subnet, String)>, Fault> {
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
        Some(id) => store::get_port(c, id)?,
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

pub(super) fn update_router(
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

pub(super) fn delete_router(
    c: &Connection,
    fx: &mut Effects,
    ctx: &Ctx,
    id: &str,
) -> Result<(), Fault> {
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
