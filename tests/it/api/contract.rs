//! Contract tests of the Neutron v2.0 API against a real daemon (its own throwaway host
//! namespace, state dir and bpffs): every endpoint, Neutron's defaults and status codes, every
//! error type, project isolation with configured tokens, persistence across `kill -9`, and a
//! property test that no request body makes the daemon answer 500 or change state on error.
//!
//! Run: `cargo build -p router-ctl --bins && cargo test -p tests --test api_contract -- --test-threads=1`

use proptest::prelude::*;
use router_ctl::fuzz::{self, arb_json, body_for, targets};
use serde_json::{Value, json};
use tests::{
    Netns,
    daemon::{ApiClient, Daemon, expect, expect_err, expect_err_of},
};

fn err_type(v: &Value) -> String {
    v["NeutronError"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("not a NeutronError body: {v}"))
        .to_string()
}

/// A request the API must refuse: method, path, body (`Value::Null`: none), then the status
/// and NeutronError type it must answer.
type Refused<'a> = (&'a str, &'a str, Value, u16, &'a str);

/// Sends each request in turn and asserts its NeutronError (`expect_err` for each row).
#[track_caller]
fn expect_refused(c: &ApiClient, table: &[Refused]) {
    for (method, path, body, status, kind) in table {
        let body = (!body.is_null()).then(|| body.to_string());
        let what = format!("{method} {path} {}:", body.as_deref().unwrap_or(""));
        expect_err_of(&what, c.raw(method, path, body.as_deref()), *status, kind);
    }
}

/// `PUT path body`, asserting 200; returns the body.
#[track_caller]
fn put_ok(c: &ApiClient, path: &str, body: Value) -> Value {
    expect(c.put(path, &body), 200)
}

/// `POST path body`, asserting 201; returns the body.
#[track_caller]
fn post_ok(c: &ApiClient, path: &str, body: Value) -> Value {
    expect(c.post(path, &body), 201)
}

/// `DELETE /v2.0/coll/id`, asserting 409 with Neutron error `kind`: the object is still in
/// use.
#[track_caller]
fn delete_in_use(c: &ApiClient, coll: &str, id: &str, kind: &str) {
    expect_err(c.delete(&format!("/v2.0/{coll}/{id}")), 409, kind);
}

/// `DELETE /v2.0/coll/id`, asserting 204, and a `GET` of it then answering 404 `kind`.
#[track_caller]
fn delete_gone(c: &ApiClient, coll: &str, id: &str, kind: &str) {
    expect(c.delete(&format!("/v2.0/{coll}/{id}")), 204);
    expect_err(c.get(&format!("/v2.0/{coll}/{id}")), 404, kind);
}

/// `PUT /v2.0/routers/router/add_router_interface body`, asserting 200; returns the
/// interface info.
#[track_caller]
fn add_interface(c: &ApiClient, router: &str, body: Value) -> Value {
    put_ok(
        c,
        &format!("/v2.0/routers/{router}/add_router_interface"),
        body,
    )
}

/// `PUT /v2.0/routers/router/remove_router_interface body`, asserting 200.
#[track_caller]
fn remove_interface(c: &ApiClient, router: &str, body: Value) -> Value {
    put_ok(
        c,
        &format!("/v2.0/routers/{router}/remove_router_interface"),
        body,
    )
}

fn id(v: &Value, kind: &str) -> String {
    v[kind]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {kind}.id in {v}"))
        .to_string()
}

/// The ids of the objects in list answer `v` of collection `coll`.
fn list_ids<'a>(v: &'a Value, coll: &str) -> Vec<&'a str> {
    list_field(v, coll, "id")
}

/// Attribute `field` of each object in list `list` of answer `v`, in the answer's order.
fn list_field<'a>(v: &'a Value, list: &str, field: &str) -> Vec<&'a str> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no list {list} in {v}"))
        .iter()
        .map(|n| {
            n[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {n}"))
        })
        .collect()
}

fn create(c: &ApiClient, coll: &str, kind: &str, body: Value) -> String {
    let v = post_ok(c, &format!("/v2.0/{coll}"), json!({ kind: body }));
    id(&v, kind)
}

/// `PUT /v2.0/coll/id {kind: body}`, asserting 200; returns the body.
#[track_caller]
fn update(c: &ApiClient, coll: &str, kind: &str, id: &str, body: Value) -> Value {
    put_ok(c, &format!("/v2.0/{coll}/{id}"), json!({ kind: body }))
}

/// `PUT /v2.0/coll/id {kind: body}`, asserting a 400 HTTPBadRequest (an attribute that may not
/// change).
#[track_caller]
fn update_refused(c: &ApiClient, coll: &str, kind: &str, id: &str, body: Value) {
    let put = c.put(&format!("/v2.0/{coll}/{id}"), &json!({ kind: body }));
    expect_err(put, 400, "HTTPBadRequest");
}

/// `PUT /v2.0/routers/id {"router": body}`, asserting 200; returns the body.
#[track_caller]
fn update_router(c: &ApiClient, id: &str, body: Value) -> Value {
    update(c, "routers", "router", id, body)
}

/// Sets router `id`'s `external_gateway_info` to `info`, asserting 200; returns the
/// gateway info the router now has.
#[track_caller]
fn set_gateway(c: &ApiClient, id: &str, info: Value) -> Value {
    update_router(c, id, json!({ "external_gateway_info": info }))["router"]
        ["external_gateway_info"]
        .clone()
}

/// A daemon of its own in a throwaway host namespace, and its admin client (dropped client
/// first, namespace last).
fn api() -> (Netns, Daemon, ApiClient) {
    let host = Netns::new("apih");
    let d = Daemon::start(&host);
    let c = d.client();
    (host, d, c)
}

fn ext_net(c: &ApiClient, cidr: &str, pool: (&str, &str)) -> (String, String) {
    let n = create(
        c,
        "networks",
        "network",
        json!({"name": "public", "router:external": true}),
    );
    let s = create(
        c,
        "subnets",
        "subnet",
        json!({"network_id": n, "ip_version": 4, "cidr": cidr,
               "allocation_pools": [{"start": pool.0, "end": pool.1}]}),
    );
    (n, s)
}

fn int_net(c: &ApiClient, cidr: &str) -> (String, String) {
    let n = create(c, "networks", "network", json!({"name": "private"}));
    let s = create(
        c,
        "subnets",
        "subnet",
        json!({"network_id": n, "ip_version": 4, "cidr": cidr}),
    );
    (n, s)
}

#[test]
fn discovery_documents_and_auth() {
    let host = Netns::new("apih");
    let d = Daemon::start(&host);
    let anon = d.client_as(None);
    let v = expect(anon.get("/"), 200);
    assert_eq!(v["versions"][0]["id"], "v2.0");
    assert_eq!(v["versions"][0]["status"], "CURRENT");
    expect_err(anon.get("/v2.0"), 401, "HTTPUnauthorized");
    expect_err(anon.get("/v2.0/networks"), 401, "HTTPUnauthorized");
    expect_err(
        d.client_as(Some("wrong")).get("/v2.0/routers.json"),
        401,
        "HTTPUnauthorized",
    );

    let v = expect(d.get("/v2.0"), 200);
    let mut colls = list_field(&v, "resources", "collection");
    colls.sort();
    assert_eq!(
        colls,
        ["floatingips", "networks", "ports", "routers", "subnets"]
    );
    let v = expect(d.get("/v2.0/extensions.json"), 200);
    let mut aliases = list_field(&v, "extensions", "alias");
    aliases.sort();
    assert_eq!(
        aliases,
        [
            "ext-gw-mode",
            "external-net",
            "extraroute",
            "extraroute-atomic",
            "filter-validation",
            "floating-ip-port-forwarding",
            "net-mtu",
            "net-mtu-writable",
            "project-id",
            "provider",
            "revision-if-match",
            "router",
            "standard-attr-description",
            "standard-attr-revisions",
            "standard-attr-tag",
            "standard-attr-timestamp",
            "tag-creation",
        ]
    );
    let v = expect(d.get("/v2.0/extensions/ext-gw-mode"), 200);
    assert_eq!(v["extension"]["alias"], "ext-gw-mode");
    expect_err(d.get("/v2.0/extensions/l3-ha"), 404, "HTTPNotFound");
    expect_err(d.get("/v2.0/qos/policies"), 404, "HTTPNotFound");

    // The generated token file is private to root.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.state_dir().join("admin-token"))
        .expect("admin-token")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn networks_crud_filters_and_fields() {
    let host = Netns::new("apih");
    // `public` maps to an uplink in the host namespace; the realiser enslaves it.
    host.ip(&[
        "link", "add", "uplk0", "type", "veth", "peer", "name", "uplk1",
    ]);
    let d = Daemon::start_configured(&host, "[physical_networks]\npublic = \"uplk0\"\n");
    let c = d.client();
    expect_err(
        c.post(
            "/v2.0/networks",
            &json!({"network": {"provider:physical_network": "elsewhere"}}),
        ),
        400,
        "InvalidInput",
    );
    let v = post_ok(
        &c,
        "/v2.0/networks.json",
        json!({"network": {"name": "ext", "router:external": true,
            "provider:network_type": "flat", "provider:physical_network": "public"}}),
    );
    let n = &v["network"];
    assert_eq!(n["admin_state_up"], true);
    assert_eq!(n["status"], "ACTIVE");
    assert_eq!(n["shared"], false);
    assert_eq!(n["subnets"], json!([]));
    assert_eq!(n["router:external"], true);
    assert_eq!(n["provider:physical_network"], "public");
    assert_eq!(n["provider:network_type"], "flat");
    assert_eq!(n["tenant_id"], n["project_id"]);
    let ext = id(&v, "network");
    let other = create(
        &c,
        "networks",
        "network",
        json!({"name": "int", "admin_state_up": false}),
    );

    let v = expect(c.get("/v2.0/networks?name=int"), 200);
    assert_eq!(v["networks"].as_array().expect("list").len(), 1);
    assert_eq!(v["networks"][0]["id"], other.as_str());
    assert_eq!(v["networks"][0]["admin_state_up"], false);
    let v = expect(c.get("/v2.0/networks.json?router:external=true"), 200);
    assert_eq!(list_ids(&v, "networks"), [ext.as_str()]);
    let v = expect(
        c.get(&format!("/v2.0/networks?fields=id&fields=name&id={ext}")),
        200,
    );
    assert_eq!(v["networks"], json!([{"id": ext, "name": "ext"}]));
    let v = expect(
        c.get(&format!("/v2.0/networks/{ext}.json?fields=router:external")),
        200,
    );
    assert_eq!(v["network"], json!({"router:external": true}));

    let v = update(
        &c,
        "networks",
        "network",
        &other,
        json!({"name": "renamed", "admin_state_up": true}),
    );
    assert_eq!(v["network"]["name"], "renamed");
    assert_eq!(v["network"]["admin_state_up"], true);
    let path = format!("/v2.0/networks/{other}");
    let physnet = json!({"network": {"provider:physical_network": "x"}});
    let vxlan = json!({"network": {"provider:network_type": "vxlan"}});
    expect_refused(
        &c,
        &[
            ("PUT", &path, physnet, 400, "HTTPBadRequest"),
            ("POST", "/v2.0/networks", vxlan, 400, "InvalidInput"),
        ],
    );

    expect(c.delete(&format!("/v2.0/networks/{other}.json")), 204);
    let rename = json!({"network": {"name": "x"}});
    expect_refused(
        &c,
        &[
            ("GET", &path, Value::Null, 404, "NetworkNotFound"),
            ("DELETE", &path, Value::Null, 404, "NetworkNotFound"),
            ("PUT", &path, rename, 404, "NetworkNotFound"),
        ],
    );

    // The external network's bridge had the uplink; deleting the network frees it at once
    // (the bridge itself is deleted later, by the reaper).
    let master = || {
        let l = tests::ip_json(&host.name, &["link", "show", "dev", "uplk0"]);
        l[0]["master"].as_str().map(str::to_string)
    };
    assert!(master().is_some(), "uplk0 is enslaved");
    expect(c.delete(&format!("/v2.0/networks/{ext}")), 204);
    assert_eq!(master(), None, "uplk0 is free");
}

#[test]
fn subnets_validation_and_ipam() {
    let (_host, _d, c) = api();
    let net = create(&c, "networks", "network", json!({"name": "n"}));
    let v = post_ok(
        &c,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.20.0.0/24", "name": "s"}}),
    );
    let s = &v["subnet"];
    assert_eq!(s["gateway_ip"], "10.20.0.1");
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.20.0.2", "end": "10.20.0.254"}])
    );
    assert_eq!(s["enable_dhcp"], true);
    assert_eq!(s["ip_version"], 4);
    assert_eq!(s["dns_nameservers"], json!([]));
    let sid = id(&v, "subnet");
    let v = expect(c.get(&format!("/v2.0/networks/{net}")), 200);
    assert_eq!(v["network"]["subnets"], json!([sid]));

    // Each refused subnet body, its status and NeutronError type.
    let pools = |pools: Value| {
        json!({"network_id": net, "ip_version": 4, "cidr": "10.30.0.0/24",
               "allocation_pools": pools})
    };
    let zero = "00000000-0000-0000-0000-000000000000";
    #[rustfmt::skip]
    let refused = [
        (json!({"network_id": net, "ip_version": 6, "cidr": "10.31.0.0/24"}), 400, "InvalidInput"),
        (json!({"network_id": net, "ip_version": 5, "cidr": "10.1.0.0/24"}), 400, "HTTPBadRequest"),
        (json!({"network_id": net, "ip_version": 4, "cidr": "10.1.0.1/24"}), 400, "HTTPBadRequest"),
        (json!({"network_id": net, "ip_version": 4, "cidr": "banana"}), 400, "HTTPBadRequest"),
        (json!({"network_id": net, "ip_version": 4}), 400, "HTTPBadRequest"),
        (json!({"network_id": net, "ip_version": 4, "cidr": "10.20.0.128/25"}),
            400, "InvalidInput"),
        (pools(json!([{"start": "10.30.0.1", "end": "10.30.0.9"}])),
            409, "GatewayConflictWithAllocationPools"),
        (pools(json!([{"start": "10.31.0.1", "end": "10.31.0.9"}])),
            400, "OutOfBoundsAllocationPool"),
        (pools(json!([{"start": "10.30.0.9", "end": "10.30.0.5"}])),
            400, "InvalidAllocationPool"),
        (pools(json!([{"start": "10.30.0.5", "end": "10.30.0.9"},
                      {"start": "10.30.0.9", "end": "10.30.0.20"}])),
            400, "OverlappingAllocationPools"),
        (json!({"network_id": zero, "ip_version": 4, "cidr": "10.30.0.0/24"}),
            404, "NetworkNotFound"),
        (json!({"network_id": "nope", "ip_version": 4, "cidr": "10.30.0.0/24"}),
            400, "HTTPBadRequest"),
    ];
    for (body, status, kind) in refused {
        let what = format!("POST /v2.0/subnets {body}:");
        expect_err_of(
            &what,
            c.post("/v2.0/subnets", &json!({"subnet": body})),
            status,
            kind,
        );
    }

    // No gateway, explicit pool, DNS.
    let v = post_ok(
        &c,
        "/v2.0/subnets",
        json!({"subnet": {"network_id": net, "ip_version": "4", "cidr": "10.40.0.0/29",
            "gateway_ip": null, "enable_dhcp": false, "dns_nameservers": ["192.0.2.53"]}}),
    );
    assert_eq!(v["subnet"]["gateway_ip"], Value::Null);
    assert_eq!(
        v["subnet"]["allocation_pools"],
        json!([{"start": "10.40.0.1", "end": "10.40.0.6"}])
    );
    let small = id(&v, "subnet");

    // IPAM: ports get the first free address; a requested one in use is 409; exhaustion 409.
    let p1 = post_ok(
        &c,
        "/v2.0/ports",
        json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": small}]}}),
    );
    assert_eq!(p1["port"]["fixed_ips"][0]["ip_address"], "10.40.0.1");
    assert!(
        p1["port"]["mac_address"]
            .as_str()
            .expect("mac")
            .starts_with("fa:16:3e:")
    );
    expect_err(
        c.post(
            "/v2.0/ports",
            &json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.40.0.1"}]}}),
        ),
        409,
        "IpAddressInUse",
    );
    for _ in 0..5 {
        post_ok(
            &c,
            "/v2.0/ports",
            json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": small}]}}),
        );
    }
    expect_err(
        c.post(
            "/v2.0/ports",
            &json!({"port": {"network_id": net, "fixed_ips": [{"subnet_id": small}]}}),
        ),
        409,
        "IpAddressGenerationFailure",
    );
    let v = expect(
        c.get(&format!("/v2.0/ports?fixed_ips=subnet_id%3D{small}")),
        200,
    );
    let mut ips: Vec<String> = v["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            p["fixed_ips"][0]["ip_address"]
                .as_str()
                .expect("ip")
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "every address handed out once: {ips:?}");

    delete_in_use(&c, "subnets", &small, "SubnetInUse");
    delete_in_use(&c, "networks", &net, "NetworkInUse");
    let v = update(
        &c,
        "subnets",
        "subnet",
        &sid,
        json!({"name": "t", "gateway_ip": "10.20.0.254",
        "allocation_pools": [{"start": "10.20.0.2", "end": "10.20.0.200"}]}),
    );
    assert_eq!(v["subnet"]["gateway_ip"], "10.20.0.254");
    update_refused(
        &c,
        "subnets",
        "subnet",
        &sid,
        json!({"cidr": "10.9.0.0/24"}),
    );
    delete_gone(&c, "subnets", &sid, "SubnetNotFound");
}

#[test]
fn ports_crud_and_conflicts() {
    let (_host, _d, c) = api();
    let (net, sub) = int_net(&c, "10.50.0.0/24");
    let v = post_ok(
        &c,
        "/v2.0/ports",
        json!({"port": {"network_id": net, "name": "vm1", "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [{"subnet_id": sub, "ip_address": "10.50.0.10"}], "device_id": "vm-1", "device_owner": "compute:nova"}}),
    );
    let p = &v["port"];
    assert_eq!(p["mac_address"], "fa:16:3e:00:00:01");
    assert_eq!(
        p["fixed_ips"],
        json!([{"subnet_id": sub, "ip_address": "10.50.0.10"}])
    );
    assert_eq!(p["admin_state_up"], true);
    assert_eq!(p["device_owner"], "compute:nova");
    let pid = id(&v, "port");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("POST", "/v2.0/ports",
            json!({"port": {"network_id": net, "mac_address": "fa:16:3e:00:00:01"}}),
            409, "MacAddressInUse"),
        ("POST", "/v2.0/ports",
            json!({"port": {"network_id": net, "mac_address": "01:00:5e:00:00:01"}}),
            400, "HTTPBadRequest"),
        ("POST", "/v2.0/ports",
            json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.50.0.1"}]}}),
            409, "IpAddressInUse"),
        ("POST", "/v2.0/ports",
            json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.99.0.1"}]}}),
            400, "InvalidIpForNetwork"),
    ];
    expect_refused(&c, refused);
    let v = expect(
        c.get(&format!("/v2.0/ports?network_id={net}&device_id=vm-1")),
        200,
    );
    assert_eq!(v["ports"].as_array().expect("ports").len(), 1);
    let v = expect(c.get("/v2.0/ports?fixed_ips=ip_address%3D10.50.0.10"), 200);
    assert_eq!(v["ports"][0]["id"], pid.as_str());
    let v = put_ok(
        &c,
        &format!("/v2.0/ports/{pid}.json"),
        json!({"port": {"name": "vm1b", "admin_state_up": false}}),
    );
    assert_eq!(v["port"]["name"], "vm1b");
    assert_eq!(v["port"]["admin_state_up"], false);
    let mac = json!({"mac_address": "fa:16:3e:00:00:02"});
    update_refused(&c, "ports", "port", &pid, mac);
    delete_gone(&c, "ports", &pid, "PortNotFound");
    // The address is free again.
    let v = post_ok(
        &c,
        "/v2.0/ports",
        json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": "10.50.0.10"}]}}),
    );
    assert_eq!(v["port"]["fixed_ips"][0]["ip_address"], "10.50.0.10");
}

#[test]
fn routers_interfaces_and_gateway() {
    let (_host, _d, c) = api();
    let (ext, ext_sub) = ext_net(&c, "192.0.2.0/24", ("192.0.2.10", "192.0.2.20"));
    let (net, sub) = int_net(&c, "10.60.0.0/24");
    let (net2, sub2) = int_net(&c, "10.61.0.0/24");
    let (_net3, sub3) = int_net(&c, "10.60.0.0/16");

    let v = post_ok(&c, "/v2.0/routers.json", json!({"router": {"name": "r1"}}));
    let r = &v["router"];
    assert_eq!(r["admin_state_up"], true);
    assert_eq!(r["status"], "ACTIVE");
    assert_eq!(r["external_gateway_info"], Value::Null);
    let rid = id(&v, "router");

    // Interface by subnet: the port holds the subnet's gateway_ip.
    let info = put_ok(
        &c,
        &format!("/v2.0/routers/{rid}/add_router_interface.json"),
        json!({"subnet_id": sub}),
    );
    assert_eq!(info["id"], rid.as_str());
    assert_eq!(info["subnet_id"], sub.as_str());
    assert_eq!(info["subnet_ids"], json!([sub]));
    assert_eq!(info["network_id"], net.as_str());
    assert_eq!(info["tenant_id"], info["project_id"]);
    let if_port = info["port_id"].as_str().expect("port_id").to_string();
    let v = expect(c.get(&format!("/v2.0/ports/{if_port}")), 200);
    assert_eq!(v["port"]["fixed_ips"][0]["ip_address"], "10.60.0.1");
    assert_eq!(v["port"]["device_owner"], "network:router_interface");
    assert_eq!(v["port"]["device_id"], rid.as_str());
    delete_in_use(&c, "ports", &if_port, "L3PortInUse");

    // Same subnet again: 409. Overlapping subnet: 400. Both ids or neither: 400.
    let (st, v) = c.put(
        &format!("/v2.0/routers/{rid}/add_router_interface"),
        &json!({"subnet_id": sub}),
    );
    assert_eq!(st, 409, "{v}");
    let add = format!("/v2.0/routers/{rid}/add_router_interface");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("PUT", &add, json!({"subnet_id": sub3}), 400, "BadRequest"),
        ("PUT", &add, json!({}), 400, "BadRequest"),
        ("PUT", &add, json!({"subnet_id": sub2, "port_id": if_port}), 400, "BadRequest"),
        ("PUT", &add, json!({"subnet_id": "00000000-0000-0000-0000-000000000000"}),
            404, "SubnetNotFound"),
        ("PUT", &add, json!({"network_id": net2}), 400, "HTTPBadRequest"),
    ];
    expect_refused(&c, refused);

    // Interface by port.
    let v = post_ok(
        &c,
        "/v2.0/ports",
        json!({"port": {"network_id": net2, "fixed_ips": [{"ip_address": "10.61.0.5"}]}}),
    );
    let p2 = id(&v, "port");
    let info = add_interface(&c, &rid, json!({"port_id": p2}));
    assert_eq!(info["port_id"], p2.as_str());
    assert_eq!(info["subnet_id"], sub2.as_str());
    expect_err(
        c.put(
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &json!({"port_id": p2}),
        ),
        409,
        "PortInUse",
    );

    delete_in_use(&c, "routers", &rid, "RouterInUse");

    // Gateway: non-external network refused; the real call of the seed; fixed IPs; clear.
    let router = format!("/v2.0/routers/{rid}");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("PUT", &router, json!({"router": {"external_gateway_info": {"network_id": net2}}}),
            400, "BadRequest"),
        ("PUT", &router, json!({"router": {"external_gateway_info": {"enable_snat": false}}}),
            400, "HTTPBadRequest"),
    ];
    expect_refused(&c, refused);
    let v = put_ok(
        &c,
        &format!("/v2.0/routers/{rid}.json"),
        json!({"router": {"external_gateway_info": {"network_id": ext, "enable_snat": false}}}),
    );
    let gw = &v["router"]["external_gateway_info"];
    assert_eq!(gw["network_id"], ext.as_str());
    assert_eq!(gw["enable_snat"], false);
    assert_eq!(
        gw["external_fixed_ips"],
        json!([{"subnet_id": ext_sub, "ip_address": "192.0.2.10"}])
    );
    let v = expect(c.get(&format!("/v2.0/routers/{rid}")), 200);
    assert_eq!(
        v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "192.0.2.10"
    );
    let v = expect(
        c.get(&format!(
            "/v2.0/ports?device_owner=network:router_gateway&device_id={rid}"
        )),
        200,
    );
    assert_eq!(v["ports"].as_array().expect("ports").len(), 1);
    // Changing only SNAT keeps the address; requesting one moves it.
    let gw = set_gateway(&c, &rid, json!({"network_id": ext, "enable_snat": true}));
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(gw["external_fixed_ips"][0]["ip_address"], "192.0.2.10");
    let gw = set_gateway(
        &c,
        &rid,
        json!({"network_id": ext,
            "external_fixed_ips": [{"subnet_id": ext_sub, "ip_address": "192.0.2.15"}]}),
    );
    assert_eq!(gw["external_fixed_ips"][0]["ip_address"], "192.0.2.15");
    // Another router cannot take the same address.
    let r2 = create(&c, "routers", "router", json!({"name": "r2"}));
    expect_err(
        c.put(
            &format!("/v2.0/routers/{r2}"),
            &json!({"router": {"external_gateway_info": {"network_id": ext,
            "external_fixed_ips": [{"ip_address": "192.0.2.15"}]}}}),
        ),
        409,
        "IpAddressInUse",
    );
    delete_in_use(&c, "networks", &ext, "NetworkInUse");
    let gw = set_gateway(&c, &rid, json!({}));
    assert_eq!(gw, Value::Null);
    let gw = set_gateway(&c, &rid, json!({"network_id": ext}));
    assert_eq!(gw["enable_snat"], true);
    let v = update_router(
        &c,
        &rid,
        json!({"external_gateway_info": null, "name": "r1b"}),
    );
    assert_eq!(v["router"]["external_gateway_info"], Value::Null);
    assert_eq!(v["router"]["name"], "r1b");
    // `routes` (extraroute): an empty list is always valid.
    let v = put_ok(
        &c,
        &format!("/v2.0/routers/{rid}"),
        json!({"router": {"routes": []}}),
    );
    assert_eq!(v["router"]["routes"], json!([]));

    // Remove interfaces: unknown ones are 404; by port and by subnet.
    let remove2 = format!("/v2.0/routers/{r2}/remove_router_interface");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("PUT", &remove2, json!({"port_id": p2}), 404, "RouterInterfaceNotFound"),
        ("PUT", &remove2, json!({"subnet_id": sub}), 404, "RouterInterfaceNotFoundForSubnet"),
    ];
    expect_refused(&c, refused);
    let info = remove_interface(&c, &rid, json!({"port_id": p2}));
    assert_eq!(info["port_id"], p2.as_str());
    let info = put_ok(
        &c,
        &format!("/v2.0/routers/{rid}/remove_router_interface.json"),
        json!({"subnet_id": sub}),
    );
    assert_eq!(info["port_id"], if_port.as_str());
    expect_err(
        c.get(&format!("/v2.0/ports/{if_port}")),
        404,
        "PortNotFound",
    );

    // Router create with a gateway, list filter, delete.
    let v = post_ok(
        &c,
        "/v2.0/routers",
        json!({"router": {"name": "r3", "external_gateway_info": {"network_id": ext}}}),
    );
    assert_eq!(
        v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "192.0.2.10"
    );
    let r3 = id(&v, "router");
    let v = expect(c.get("/v2.0/routers?name=r3&fields=id"), 200);
    assert_eq!(v["routers"], json!([{"id": r3}]));
    for r in [&rid, &r2, &r3] {
        expect(c.delete(&format!("/v2.0/routers/{r}")), 204);
    }
    expect_err(
        c.get(&format!("/v2.0/routers/{rid}")),
        404,
        "RouterNotFound",
    );
    expect(c.delete(&format!("/v2.0/networks/{ext}")), 204);
}

#[test]
fn projects_are_isolated_and_policy_is_enforced() {
    let host = Netns::new("apih");
    let d = Daemon::start_with_projects(&host);
    let admin = d.client();
    let alice = d.client_as(Some("alice-secret"));
    let bob = d.client_as(Some("bob-secret"));

    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("POST", "/v2.0/networks", json!({"network": {"router:external": true}}),
            403, "PolicyNotAuthorized"),
        ("POST", "/v2.0/networks", json!({"network": {"shared": true}}),
            403, "PolicyNotAuthorized"),
        ("POST", "/v2.0/networks",
            json!({"network": {"provider:physical_network": "x", "provider:network_type": "flat"}}),
            403, "PolicyNotAuthorized"),
        ("POST", "/v2.0/networks", json!({"network": {"project_id": "bob"}}),
            403, "PolicyNotAuthorized"),
    ];
    expect_refused(&alice, refused);

    let (ext, _) = ext_net(
        &admin,
        "198.51.100.0/24",
        ("198.51.100.10", "198.51.100.20"),
    );
    let (anet, asub) = int_net(&alice, "10.70.0.0/24");
    let ar = create(&alice, "routers", "router", json!({"name": "ar"}));
    let v = expect(alice.get(&format!("/v2.0/networks/{anet}")), 200);
    assert_eq!(v["network"]["project_id"], "alice");
    assert!(
        v["network"].get("provider:physical_network").is_none(),
        "provider attributes are admin-only"
    );

    // Bob sees the external network (and its subnet) but none of alice's resources.
    let v = expect(bob.get("/v2.0/networks"), 200);
    assert_eq!(list_ids(&v, "networks"), [ext.as_str()]);
    expect(bob.get(&format!("/v2.0/networks/{ext}")), 200);
    let (anet_path, ext_path) = (
        format!("/v2.0/networks/{anet}"),
        format!("/v2.0/networks/{ext}"),
    );
    let (asub_path, ar_path) = (
        format!("/v2.0/subnets/{asub}"),
        format!("/v2.0/routers/{ar}"),
    );
    let ar_add = format!("/v2.0/routers/{ar}/add_router_interface");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("GET", &anet_path, Value::Null, 404, "NetworkNotFound"),
        ("PUT", &anet_path, json!({"network": {"name": "x"}}), 404, "NetworkNotFound"),
        ("DELETE", &anet_path, Value::Null, 404, "NetworkNotFound"),
        ("GET", &asub_path, Value::Null, 404, "SubnetNotFound"),
        ("GET", &ar_path, Value::Null, 404, "RouterNotFound"),
        ("DELETE", &ar_path, Value::Null, 404, "RouterNotFound"),
        ("PUT", &ar_add, json!({"subnet_id": asub}), 404, "RouterNotFound"),
    ];
    expect_refused(&bob, refused);
    assert_eq!(expect(bob.get("/v2.0/routers"), 200)["routers"], json!([]));
    assert_eq!(expect(bob.get("/v2.0/ports"), 200)["ports"], json!([]));
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("PUT", &ext_path, json!({"network": {"name": "mine"}}), 403, "PolicyNotAuthorized"),
        ("DELETE", &ext_path, Value::Null, 403, "PolicyNotAuthorized"),
        ("POST", "/v2.0/subnets",
            json!({"subnet": {"network_id": ext, "ip_version": 4, "cidr": "203.0.113.0/24"}}),
            403, "PolicyNotAuthorized"),
    ];
    expect_refused(&bob, refused);
    // Bob's router cannot take alice's subnet.
    let br = create(&bob, "routers", "router", json!({"name": "br"}));
    expect_err(
        bob.put(
            &format!("/v2.0/routers/{br}/add_router_interface"),
            &json!({"subnet_id": asub}),
        ),
        404,
        "SubnetNotFound",
    );

    // The admin's external subnet is readable to alice but not hers to attach.
    let v = expect(alice.get(&format!("/v2.0/subnets?network_id={ext}")), 200);
    let ext_sub = v["subnets"][0]["id"]
        .as_str()
        .expect("external subnet visible")
        .to_string();
    expect_err(
        alice.put(
            &format!("/v2.0/routers/{ar}/add_router_interface"),
            &json!({"subnet_id": ext_sub}),
        ),
        404,
        "SubnetNotFound",
    );

    // Alice: interface, gateway on the admin's external network; SNAT and fixed IPs admin-only.
    add_interface(&alice, &ar, json!({"subnet_id": asub}));
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("PUT", &ar_path,
            json!({"router": {"external_gateway_info": {"network_id": ext, "enable_snat": false}}}),
            403, "PolicyNotAuthorized"),
        ("PUT", &ar_path,
            json!({"router": {"external_gateway_info": {"network_id": ext,
                "external_fixed_ips": [{"ip_address": "198.51.100.15"}]}}}),
            403, "PolicyNotAuthorized"),
    ];
    expect_refused(&alice, refused);
    let gw = set_gateway(&alice, &ar, json!({"network_id": ext}));
    assert_eq!(gw["enable_snat"], true);
    // The admin sees everything and may change SNAT on alice's router.
    let gw = set_gateway(
        &admin,
        &ar,
        json!({"network_id": ext, "enable_snat": false}),
    );
    assert_eq!(gw["enable_snat"], false);
    let v = expect(admin.get("/v2.0/routers"), 200);
    assert_eq!(v["routers"].as_array().expect("list").len(), 2);
    let v = expect(admin.get("/v2.0/routers?tenant_id=alice"), 200);
    assert_eq!(v["routers"].as_array().expect("list").len(), 1);
}

#[test]
fn malformed_requests_are_400_neutron_errors() {
    let (_host, _d, c) = api();
    let net = create(&c, "networks", "network", json!({}));
    let r = create(&c, "routers", "router", json!({}));
    for (method, path) in [
        ("POST", "/v2.0/networks".to_string()),
        ("POST", "/v2.0/subnets".to_string()),
        ("POST", "/v2.0/ports".to_string()),
        ("POST", "/v2.0/routers".to_string()),
        ("PUT", format!("/v2.0/networks/{net}")),
        ("PUT", format!("/v2.0/routers/{r}")),
        ("PUT", format!("/v2.0/routers/{r}/add_router_interface")),
        ("PUT", format!("/v2.0/routers/{r}/remove_router_interface")),
    ] {
        for body in [
            "",
            "{",
            "[1]",
            "null",
            "\"x\"",
            "{\"network\": 5}",
            "{\"router\": {\"admin_state_up\": \"maybe\"}}",
        ] {
            let (st, v) = c.raw(method, &path, Some(body));
            assert_eq!(st, 400, "{method} {path} {body:?}: {v}");
            assert!(v["NeutronError"]["type"].is_string(), "{v}");
        }
    }
    let router = format!("/v2.0/routers/{r}");
    #[rustfmt::skip]
    let refused: &[Refused] = &[
        ("POST", "/v2.0/networks", json!({"network": {"name": 5}}), 400, "HTTPBadRequest"),
        ("POST", "/v2.0/networks", json!({"network": {"name": "x".repeat(300)}}),
            400, "HTTPBadRequest"),
        ("POST", "/v2.0/networks", json!({"network": {"admin_state_up": "perhaps"}}),
            400, "HTTPBadRequest"),
        ("POST", "/v2.0/networks", json!({"network": {"id": "x"}}), 400, "HTTPBadRequest"),
        ("POST", "/v2.0/networks", json!({"networks": [{}]}), 400, "HTTPBadRequest"),
        ("PUT", &router, json!({"router": {"external_gateway_info": 7}}), 400, "HTTPBadRequest"),
        ("PUT", &router, json!({"router": {"external_gateway_info": {"network_id": "zzz"}}}),
            400, "HTTPBadRequest"),
    ];
    expect_refused(&c, refused);
    let (st, v) = c.raw("PATCH", &format!("/v2.0/routers/{r}"), Some("{}"));
    assert_eq!(st, 405, "{v}");
}

#[test]
fn state_survives_kill9_and_restart() {
    let (_host, mut d, c) = api();
    let (ext, _) = ext_net(&c, "203.0.113.0/24", ("203.0.113.10", "203.0.113.20"));
    let (_net, sub) = int_net(&c, "10.80.0.0/24");
    let r = create(&c, "routers", "router", json!({"name": "persist"}));
    add_interface(&c, &r, json!({"subnet_id": sub}));
    update_router(
        &c,
        &r,
        json!({"external_gateway_info": {"network_id": ext}}),
    );
    let snapshot = |c: &ApiClient| -> Vec<Value> {
        ["networks", "subnets", "ports", "routers"]
            .iter()
            .map(|k| expect(c.get(&format!("/v2.0/{k}")), 200))
            .collect()
    };
    let before = snapshot(&c);
    let token = d.admin_token();
    d.kill9();
    d.restart();
    assert_eq!(d.admin_token(), token);
    let c = d.client();
    assert_eq!(snapshot(&c), before);
    // Allocation continues past what was handed out before the restart.
    let r2 = create(&c, "routers", "router", json!({}));
    let v = update_router(
        &c,
        &r2,
        json!({"external_gateway_info": {"network_id": ext}}),
    );
    assert_eq!(
        v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "203.0.113.11"
    );
    // A clean stop exits 0.
    assert!(d.stop().success(), "{}", d.log());
}

// ------------------------------------------------------------------ property test

#[test]
fn random_bodies_never_500_and_never_change_state_on_error() {
    let (_host, _d, c) = api();
    let (ext, _) = ext_net(&c, "192.0.2.0/24", ("192.0.2.10", "192.0.2.20"));
    let (net, sub) = int_net(&c, "10.90.0.0/24");
    let r = create(&c, "routers", "router", json!({}));
    let mut targets = targets(&net, &sub, &r);
    targets.push(("PUT", format!("/v2.0/networks/{ext}"), "network"));
    let snapshot = |c: &ApiClient| -> Vec<Value> {
        ["networks", "subnets", "ports", "routers"]
            .iter()
            .map(|k| expect(c.get(&format!("/v2.0/{k}")), 200))
            .collect()
    };
    fuzz::runner(64)
        .run(
            &(0..targets.len(), arb_json(), any::<bool>()),
            |(t, body, wrap)| {
                let (method, path, _) = &targets[t];
                let body = body_for(&targets[t], body, wrap);
                let before = snapshot(&c);
                let (st, v) = c.raw(method, path, Some(&body.to_string()));
                prop_assert!(st < 500, "{method} {path} {body} → {st} {v}");
                if st >= 400 {
                    prop_assert!(v["NeutronError"]["type"].is_string(), "{v}");
                    prop_assert_eq!(
                        snapshot(&c),
                        before,
                        "rejected {} {} {} changed state",
                        method,
                        path,
                        body
                    );
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn failed_realisation_leaves_neither_rows_nor_kernel_objects() {
    let host = Netns::new("apih");
    // `broken` maps to an interface that does not exist: the kernel side of the network fails.
    let d = Daemon::start_configured(&host, "[physical_networks]\nbroken = \"nosuchdev0\"\n");
    let c = d.client();
    let before = expect(c.get("/v2.0/networks"), 200);
    let (st, v) = c.post(
        "/v2.0/networks",
        &json!({"network": {"name": "b", "router:external": true,
                            "provider:network_type": "flat", "provider:physical_network": "broken"}}),
    );
    assert_eq!(st, 500, "{v}");
    assert_eq!(err_type(&v), "HTTPInternalServerError");
    assert!(
        v["NeutronError"]["message"]
            .as_str()
            .expect("message")
            .contains("nosuchdev0"),
        "the kernel's reason is in the message: {v}"
    );
    assert_eq!(expect(c.get("/v2.0/networks"), 200), before);
    let links = String::from_utf8_lossy(&host.ip(&["-o", "link", "show"]).stdout).to_string();
    assert!(!links.contains("brq"), "a bridge was left behind:\n{links}");
    // The daemon is still healthy and the next request works.
    create(&c, "networks", "network", json!({"name": "fine"}));
}

#[test]
fn concurrent_allocations_never_hand_out_an_address_twice() {
    let (_host, _d, c) = api();
    let (ext, _) = ext_net(&c, "192.0.2.0/24", ("192.0.2.10", "192.0.2.29"));
    let (net, _) = int_net(&c, "10.33.0.0/27");
    // 16 routers taking gateways and 16 ports, all at once.
    let routers: Vec<String> = (0..16)
        .map(|_| create(&c, "routers", "router", json!({})))
        .collect();
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for r in &routers {
            let c = c.clone();
            let ext = ext.clone();
            handles.push(s.spawn(move || {
                c.put(
                    &format!("/v2.0/routers/{r}"),
                    &json!({"router": {"external_gateway_info": {"network_id": ext}}}),
                )
            }));
        }
        for _ in 0..16 {
            let c = c.clone();
            let net = net.clone();
            handles.push(
                s.spawn(move || c.post("/v2.0/ports", &json!({"port": {"network_id": net}}))),
            );
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    for (st, v) in &results {
        assert!(*st == 200 || *st == 201, "{st} {v}");
    }
    let v = expect(c.get("/v2.0/ports"), 200);
    let mut ips: Vec<&str> = v["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .flat_map(|p| p["fixed_ips"].as_array().expect("fixed_ips").iter())
        .map(|f| f["ip_address"].as_str().expect("ip"))
        .collect();
    assert_eq!(ips.len(), 32);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 32, "an address was handed out twice");
}
