//! Networks: Neutron's `/v2.0/networks` with the provider and `router:external` attributes.

use serde_json::{Value, json};

use super::{Cx, new_id};
use crate::{
    api::{
        Ctx,
        input::{self, Obj},
        scope::owned,
    },
    model::{Fault, Network, OWNER_ROUTER_GATEWAY},
    store,
};

pub(super) fn network_view(ctx: &Ctx, n: &Network, subnets: Vec<String>) -> Value {
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
        "mtu": n.mtu,
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

/// The MTU of a network created without one (Neutron: the physical network's, 1500 by
/// default; 0 asks for it too).
pub const DEFAULT_MTU: u32 = 1500;

/// The largest MTU a network may ask for (Neutron: `global_physnet_mtu`; here jumbo frames).
pub const MAX_MTU: u32 = 9000;

/// The smallest: IPv4's minimum (RFC 791), below which the kernel drops a device's IPv4.
pub const MIN_MTU: u32 = 68;

/// `mtu` as Neutron's `net-mtu-writable` takes it: a non-negative integer (or its string),
/// 0 meaning the default, at most `MAX_MTU`.
fn opt_mtu(o: &crate::api::input::Obj) -> Result<Option<u32>, Fault> {
    let Some(v) = o.get("mtu") else {
        return Ok(None);
    };
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| input::bad_attr("mtu", format!("'{v}' is not an integer")))?;
    if n < 0 {
        return Err(input::bad_attr(
            "mtu",
            format!("'{n}' should be non-negative"),
        ));
    }
    if n == 0 {
        return Ok(Some(DEFAULT_MTU));
    }
    if n > i64::from(MAX_MTU) {
        return Err(Fault::invalid(format!(
            "Requested MTU is too big, maximum is {MAX_MTU}"
        )));
    }
    if n < i64::from(MIN_MTU) {
        return Err(input::bad_attr(
            "mtu",
            format!("'{n}' is too small - must be at least '{MIN_MTU}'"),
        ));
    }
    Ok(Some(n as u32))
}

pub(super) fn create_network(cx: Cx, o: &Obj) -> Result<String, Fault> {
    let Cx { c, fx, ctx } = cx;
    let mtu = opt_mtu(o)?.unwrap_or(DEFAULT_MTU);
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
    store::insert(
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
            mtu,
        },
    )?;
    Ok(id)
}

pub(super) fn update_network(cx: Cx, id: &str, o: &Obj) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
    let mtu = opt_mtu(o)?;
    let mut n = owned::<Network>(c, ctx, id, "update_network")?;
    if let Some(m) = mtu {
        n.mtu = m;
    }
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
    if mtu.is_some() {
        // The MTU is in the router ports' specs: their routers set it on `qr-`/`qg-`.
        for r in store::routers_on_network(c, id)? {
            fx.touch_router(c, &r)?;
        }
    }
    store::update(c, &n)
}

pub(super) fn delete_network(cx: Cx, id: &str) -> Result<(), Fault> {
    let Cx { c, fx, ctx } = cx;
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
