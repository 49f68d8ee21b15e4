//! The resources behind the API: Neutron's semantics for networks, subnets, ports, routers,
//! floating IPs and port forwardings (validation, defaults, policy, conflicts) over the store,
//! and their JSON views. One table (`Kind`) drives routing, listing, paging and errors, so
//! every collection behaves alike.
//!
//! Every mutation receives the request's transaction and an `Effects` it must `touch` with each
//! network and router whose kernel state it may change *before* changing it; the caller then
//! realises the difference or rolls everything back.

mod attributes;
mod floatingips;
mod interfaces;
mod networks;
mod port_forwardings;
mod ports;
mod routers;
mod standard;
mod subnets;

use rusqlite::Connection;
use serde_json::Value;

pub use interfaces::change_interface;
pub use routers::change_extraroutes;
pub use standard::{
    add_tag, check_revision, clear_tags, if_match_revision, list_tags, remove_tag, set_tags,
    show_tag,
};

use super::{
    Ctx, Effects,
    input::{self, Obj},
    query,
    scope::{seen, visible},
};
use crate::{
    model::{Fault, FloatingIp, Network, Port, Router, Subnet},
    store::{self, floatingips as fstore},
};

/// The resource collections.
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
    /// `/v2.0/floatingips`
    FloatingIp,
    /// `/v2.0/floatingips/{id}/port_forwardings`: the only collection under a parent.
    PortForwarding,
}

impl Kind {
    /// Every collection, in the order the routes are added.
    pub const ALL: [Kind; 6] = [
        Kind::Network,
        Kind::Subnet,
        Kind::Port,
        Kind::Router,
        Kind::FloatingIp,
        Kind::PortForwarding,
    ];

    /// The JSON key of one resource (`network`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::Router => "router",
            Kind::FloatingIp => "floatingip",
            Kind::PortForwarding => "port_forwarding",
        }
    }

    /// The last path segment and the JSON key of a list (`networks`).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::Router => "routers",
            Kind::FloatingIp => "floatingips",
            Kind::PortForwarding => "port_forwardings",
        }
    }

    /// The collection's parent, when it lives under one (`floatingips/{id}/…`).
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::PortForwarding => Some(Kind::FloatingIp),
            _ => None,
        }
    }

    /// The store's name of the kind when it has Neutron's standard attributes (revision,
    /// timestamps, tags); port forwardings have none.
    pub fn standard_type(self) -> Option<&'static str> {
        match self {
            Kind::PortForwarding => None,
            _ => Some(self.collection()),
        }
    }

    /// The filters a list of this kind accepts.
    pub(super) fn filters(self) -> query::Filters {
        query::Filters {
            attributes: attributes::filterable(self),
            tagged: self.standard_type().is_some(),
        }
    }

    /// Neutron's 404 for a resource of this kind (`parent`: the id of its parent).
    pub fn not_found(self, parent: Option<&str>, id: &str) -> Fault {
        match self {
            Kind::FloatingIp => floatingips::fip_not_found(id),
            Kind::PortForwarding => port_forwardings::pf_not_found(parent.unwrap_or_default(), id),
            _ => Fault::not_found(self.singular(), id),
        }
    }
}

/// What every mutation of a resource works with: the request's transaction, the kernel
/// effects it must `touch` before changing anything, and the caller. One value, so a new
/// concern of every mutation is one field, not a new parameter of each resource function.
pub struct Cx<'a> {
    pub c: &'a Connection,
    pub fx: &'a mut Effects,
    pub ctx: &'a Ctx,
}

impl<'a> Cx<'a> {
    pub fn new(c: &'a Connection, fx: &'a mut Effects, ctx: &'a Ctx) -> Self {
        Self { c, fx, ctx }
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The parent id a nested collection needs (routing guarantees it).
fn parent_id(kind: Kind, parent: Option<&str>) -> Result<&str, Fault> {
    parent.ok_or_else(|| Fault::internal(format!("{} without a parent", kind.collection())))
}

/// Every resource of `kind` the caller may see (under `parent` for a nested collection).
pub fn list(
    c: &Connection,
    ctx: &Ctx,
    kind: Kind,
    parent: Option<&str>,
) -> Result<Vec<Value>, Fault> {
    let mut items = views(c, ctx, kind, parent)?;
    standard::decorate_all(c, kind, &mut items)?;
    if kind == Kind::Router {
        items.iter_mut().for_each(|v| legacy_router(ctx, v));
    }
    Ok(items)
}

/// The views of `list`, before the standard attributes.
fn views(c: &Connection, ctx: &Ctx, kind: Kind, parent: Option<&str>) -> Result<Vec<Value>, Fault> {
    Ok(match kind {
        Kind::Network => {
            let subnets = store::list::<Subnet>(c)?;
            seen(c, ctx, store::list::<Network>(c)?)?
                .iter()
                .map(|n| {
                    let ids = subnets
                        .iter()
                        .filter(|s| s.network_id == n.id)
                        .map(|s| s.id.clone())
                        .collect();
                    networks::network_view(ctx, n, ids)
                })
                .collect()
        }
        Kind::Subnet => seen(c, ctx, store::list::<Subnet>(c)?)?
            .iter()
            .map(subnets::subnet_view)
            .collect(),
        Kind::Port => seen(c, ctx, store::list::<Port>(c)?)?
            .iter()
            .map(ports::port_view)
            .collect(),
        Kind::Router => seen(c, ctx, store::list::<Router>(c)?)?
            .iter()
            .map(|r| routers::router_view(c, r))
            .collect::<Result<_, _>>()?,
        Kind::FloatingIp => seen(c, ctx, store::list::<FloatingIp>(c)?)?
            .iter()
            .map(|f| floatingips::fip_view(c, f))
            .collect::<Result<_, _>>()?,
        Kind::PortForwarding => {
            let fip = parent_id(kind, parent)?;
            visible::<FloatingIp>(c, ctx, fip)?;
            fstore::fip_port_forwardings(c, fip)?
                .iter()
                .map(port_forwardings::pf_view)
                .collect()
        }
    })
}

/// One resource the caller may see.
pub fn show(
    c: &Connection,
    ctx: &Ctx,
    kind: Kind,
    parent: Option<&str>,
    id: &str,
) -> Result<Value, Fault> {
    let mut v = match kind {
        Kind::Network => {
            let n = visible::<Network>(c, ctx, id)?;
            let subnets = store::network_subnets(c, id)?
                .into_iter()
                .map(|s| s.id)
                .collect();
            networks::network_view(ctx, &n, subnets)
        }
        Kind::Subnet => subnets::subnet_view(&visible::<Subnet>(c, ctx, id)?),
        Kind::Port => ports::port_view(&visible::<Port>(c, ctx, id)?),
        Kind::Router => routers::router_view(c, &visible::<Router>(c, ctx, id)?)?,
        Kind::FloatingIp => floatingips::fip_view(c, &visible::<FloatingIp>(c, ctx, id)?)?,
        Kind::PortForwarding => {
            let fip = parent_id(kind, parent)?;
            let (_, pf) = port_forwardings::visible_pf(c, ctx, fip, id)?;
            port_forwardings::pf_view(&pf)
        }
    };
    standard::decorate_one(c, kind, id, &mut v)?;
    if kind == Kind::Router {
        legacy_router(ctx, &mut v);
    }
    Ok(v)
}

/// A router as Neutron shows a legacy one (neither HA nor distributed); those two attributes
/// are admin-only in Neutron's policy.
fn legacy_router(ctx: &Ctx, v: &mut Value) {
    if ctx.admin
        && let Value::Object(o) = v
    {
        o.insert("ha".into(), Value::Bool(false));
        o.insert("distributed".into(), Value::Bool(false));
    }
}

/// `ha` and `distributed` of a router body, taken out of it: admin-only (403 otherwise, as
/// Neutron's policy), and only `false` is possible here (400 otherwise).
fn take_legacy_router(ctx: &Ctx, o: &mut Obj, action: &str) -> Result<(), Fault> {
    for key in ["ha", "distributed"] {
        let Some(v) = o.remove(key) else {
            continue;
        };
        if !ctx.admin {
            return Err(Fault::policy(&format!("{action}:{key}")));
        }
        match input::to_bool(&v) {
            Some(false) => {}
            Some(true) => {
                return Err(Fault::new(
                    400,
                    "BadRequest",
                    format!(
                        "Bad router request: {key} routers are not supported by this deployment (legacy routers only)."
                    ),
                ));
            }
            None if v.is_null() => {}
            None => {
                return Err(input::bad_attr(
                    key,
                    format!("'{v}' cannot be converted to boolean"),
                ));
            }
        }
    }
    Ok(())
}

/// Creates a resource from its validated body; returns its view.
pub fn create(cx: Cx, kind: Kind, parent: Option<&str>, mut o: Obj) -> Result<Value, Fault> {
    let (c, ctx) = (cx.c, cx.ctx);
    if kind == Kind::Router {
        take_legacy_router(ctx, &mut o, "create_router")?;
    }
    let tags = match o.remove("tags") {
        Some(t) if kind.standard_type().is_some() => Some(standard::parse_tags(Some(&t))?),
        Some(_) => return Err(Fault::bad_request("Unrecognized attribute(s) 'tags'")),
        None => None,
    };
    let writable = attributes::writable(kind, true);
    let on_put = attributes::writable(kind, false);
    // Neutron's answer to an attribute that only a PUT may set.
    if let Some(k) = o
        .keys()
        .find(|k| !writable.contains(&k.as_str()) && on_put.contains(&k.as_str()))
    {
        return Err(Fault::bad_request(format!(
            "Attribute '{k}' not allowed in POST"
        )));
    }
    input::only(&o, &writable)?;
    let id = match kind {
        Kind::Network => networks::create_network(cx, &o)?,
        Kind::Subnet => subnets::create_subnet(cx, &o)?,
        Kind::Port => ports::create_port(cx, &o)?,
        Kind::Router => routers::create_router(cx, &o)?,
        Kind::FloatingIp => floatingips::create_fip(cx, &o)?,
        Kind::PortForwarding => port_forwardings::create_pf(cx, parent_id(kind, parent)?, &o)?,
    };
    standard::tags_on_create(c, kind, &id, tags)?;
    store::settle_revisions(c)?;
    show(c, ctx, kind, parent, &id)
}

/// Updates a resource the caller owns; returns its view.
pub fn update(
    cx: Cx,
    kind: Kind,
    parent: Option<&str>,
    id: &str,
    mut o: Obj,
) -> Result<Value, Fault> {
    let (c, ctx) = (cx.c, cx.ctx);
    if kind == Kind::Router {
        take_legacy_router(ctx, &mut o, "update_router")?;
    }
    input::only(&o, &attributes::writable(kind, false))?;
    match kind {
        Kind::Network => networks::update_network(cx, id, &o)?,
        Kind::Subnet => subnets::update_subnet(cx, id, &o)?,
        Kind::Port => ports::update_port(cx, id, &o)?,
        Kind::Router => routers::update_router(cx, id, &o)?,
        Kind::FloatingIp => floatingips::update_fip(cx, id, &o)?,
        Kind::PortForwarding => port_forwardings::update_pf(cx, parent_id(kind, parent)?, id, &o)?,
    }
    store::settle_revisions(c)?;
    show(c, ctx, kind, parent, id)
}

/// Deletes a resource the caller owns.
pub fn delete(cx: Cx, kind: Kind, parent: Option<&str>, id: &str) -> Result<(), Fault> {
    match kind {
        Kind::Network => networks::delete_network(cx, id),
        Kind::Subnet => subnets::delete_subnet(cx, id),
        Kind::Port => ports::delete_port(cx, id),
        Kind::Router => routers::delete_router(cx, id),
        Kind::FloatingIp => floatingips::delete_fip(cx, id),
        Kind::PortForwarding => port_forwardings::delete_pf(cx, parent_id(kind, parent)?, id),
    }
}
