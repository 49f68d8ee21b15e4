//! Port forwardings of a floating IP: `/v2.0/floatingips/{id}/port_forwardings`
//! (extension `floating-ip-port-forwarding`). A floating IP with port forwardings cannot be
//! associated with a port, and an associated one cannot get port forwardings (409).

use std::net::{IpAddr, Ipv4Addr};

use rusqlite::Connection;
use serde_json::{Value, json};

use super::{Cx, floatingips::serving_router, new_id};
use crate::{
    api::{
        Ctx,
        input::{self, Obj},
        scope::visible,
    },
    model::{Fault, FloatingIp, Port, PortForwarding},
    store::{self, floatingips as fstore},
};

pub(super) fn pf_not_found(fip: &str, id: &str) -> Fault {
    Fault::new(
        404,
        "PortForwardingNotFound",
        format!("Port Forwarding {id} could not be found for Floating IP {fip}"),
    )
}

/// The floating IP and its port forwarding `id`, if the caller may see the floating IP.
pub(super) fn visible_pf(
    c: &Connection,
    ctx: &Ctx,
    fip_id: &str,
    id: &str,
) -> Result<(FloatingIp, PortForwarding), Fault> {
    let f = visible::<FloatingIp>(c, ctx, fip_id)?;
    let pf = fstore::get_port_forwarding(c, fip_id, id)?.ok_or_else(|| pf_not_found(fip_id, id))?;
    Ok((f, pf))
}

pub(super) fn pf_view(p: &PortForwarding) -> Value {
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
        .map(|v| input::ipv4_value("port_forwarding", "internal_ip_address", v))
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
    let dup = fstore::duplicate_port_forwarding(c, pf)?;
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

pub(super) fn create_pf(cx: Cx, fip_id: &str, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
    let mut f = visible::<FloatingIp>(c, ctx, fip_id)?;
    let mut pf = PortForwarding {
        id: new_id(),
        floatingip_id: f.id.clone(),
        protocol: String::new(),
        external_port: 0,
        internal_port_id: String::new(),
        internal_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        internal_port: 0,
        description: String::new(),
    };
    let router = check_pf(c, ctx, &f, &mut pf, o)?;
    fx.touch_router(c, &router)?;
    store::insert(c, &pf)?;
    if f.router_id.is_none() {
        f.router_id = Some(router);
        store::update(c, &f)?;
    }
    Ok(pf.id)
}

pub(super) fn update_pf(cx: Cx, fip_id: &str, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let (f, mut pf) = visible_pf(c, ctx, fip_id, id)?;
    let router = check_pf(c, ctx, &f, &mut pf, o)?;
    fx.touch_router(c, &router)?;
    store::update(c, &pf)
}

pub(super) fn delete_pf(cx: Cx, fip_id: &str, id: &str) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let (mut f, _) = visible_pf(c, ctx, fip_id, id)?;
    if let Some(r) = &f.router_id {
        fx.touch_router(c, r)?;
    }
    fstore::delete_port_forwarding(c, id)?;
    if f.port_id.is_none() && fstore::fip_port_forwardings(c, &f.id)?.is_empty() {
        f.router_id = None;
        store::update(c, &f)?;
    }
    Ok(())
}
