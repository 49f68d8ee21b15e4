//! Neutron's discovery documents: API versions (`GET /`), the v2.0 resource index, and the
//! extensions — listing exactly what this server implements, since clients probe them to
//! decide which attributes to send.

use axum::{Json, extract::Path, http::HeaderMap};
use serde_json::{Value, json};

use super::Ctx;
use crate::model::Fault;

/// (alias, name, description, updated) of every implemented extension.
pub const EXTENSIONS: &[(&str, &str, &str, &str)] = &[
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway (with floating IPs).",
        "2012-07-20T10:00:00-00:00",
    ),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the external gateway",
        "2013-03-28T10:00:00-00:00",
    ),
    (
        "extraroute",
        "Neutron Extra Route",
        "Extra routes configuration for L3 router",
        "2013-02-01T10:00:00-00:00",
    ),
    (
        "extraroute-atomic",
        "Atomically add/remove extra routes",
        "Edit extra routes of a router on server side by atomically adding/removing extra routes",
        "2019-07-10T00:00:00+00:00",
    ),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
        "2013-01-14T10:00:00-00:00",
    ),
    (
        "provider",
        "Provider Network",
        "Expose mapping of virtual networks to physical networks (flat and local network types)",
        "2012-09-07T10:00:00-00:00",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
        "2016-09-09T09:09:09-09:09",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes",
        "2016-02-10T10:00:00-00:00",
    ),
    (
        "floating-ip-port-forwarding",
        "Floating IP Port Forwarding",
        "Allow to forward a port of a Floating IP to a port of a fixed IP.",
        "2019-04-04T10:00:00-00:00",
    ),
    (
        "standard-attr-tag",
        "Tag support for resources with standard attribute: network, subnet, port, router, floatingip",
        "Enables to set tag on resources with standard attribute.",
        "2017-01-01T00:00:00-00:00",
    ),
    (
        "tag-creation",
        "Tag creation extension",
        "Allow to create multiple tags for a resource",
        "2024-23-07T10:00:00-00:00",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
        "2016-04-11T10:00:00-00:00",
    ),
    (
        "revision-if-match",
        "If-Match constraints based on revision_number",
        "Extension indicating that If-Match based on revision_number is supported.",
        "2016-12-11T00:00:00-00:00",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
        "2016-09-12T10:00:00-00:00",
    ),
    (
        "net-mtu",
        "Network MTU",
        "Provides MTU attribute for a network resource.",
        "2015-03-25T10:00:00-00:00",
    ),
    (
        "net-mtu-writable",
        "Network MTU (writable)",
        "Provides a writable MTU attribute for a network resource.",
        "2017-07-12T00:00:00-00:00",
    ),
    (
        "filter-validation",
        "Filter parameters validation",
        "Provides validation on filter parameters.",
        "2018-07-04T10:00:00-00:00",
    ),
];

/// `http://<Host header>`: the address the client used, for links.
pub fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost:9696");
    format!("http://{host}")
}

/// `GET /` (no token needed): the API versions.
pub async fn versions(headers: HeaderMap) -> Json<Value> {
    Json(json!({"versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/v2.0/", base(&headers))}],
    }]}))
}

/// `GET /v2.0`: the resource collections.
pub async fn index(_ctx: Ctx, headers: HeaderMap) -> Json<Value> {
    let b = base(&headers);
    let resources: Vec<Value> = [
        ("network", "networks"),
        ("subnet", "subnets"),
        ("port", "ports"),
        ("router", "routers"),
        ("floatingip", "floatingips"),
    ]
    .iter()
    .map(|(name, coll)| {
        json!({"name": name, "collection": coll,
                   "links": [{"rel": "self", "href": format!("{b}/v2.0/{coll}")}]})
    })
    .collect();
    Json(json!({ "resources": resources }))
}

fn ext_view(e: &(&str, &str, &str, &str)) -> Value {
    json!({"alias": e.0, "name": e.1, "description": e.2, "updated": e.3, "links": []})
}

/// `GET /v2.0/extensions`.
pub async fn extensions(_ctx: Ctx) -> Json<Value> {
    Json(json!({"extensions": EXTENSIONS.iter().map(ext_view).collect::<Vec<_>>()}))
}

/// `GET /v2.0/extensions/{alias}`.
pub async fn extension(_ctx: Ctx, Path(alias): Path<String>) -> Result<Json<Value>, Fault> {
    EXTENSIONS
        .iter()
        .find(|e| e.0 == alias)
        .map(|e| Json(json!({"extension": ext_view(e)})))
        .ok_or_else(|| {
            Fault::new(
                404,
                "HTTPNotFound",
                format!("Extension with alias {alias} does not exist"),
            )
        })
}
