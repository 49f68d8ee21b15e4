//! API unit tests through the axum service (no network, no root): validation, defaults,
//! policy, and rollback when the realiser fails (a recording realiser stands in for the kernel
//! side here; the daemon contract tests in `tests/` exercise the real one).

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::body::Body;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    /// Every router spec applied, in order.
    applied: Mutex<Vec<RouterSpec>>,
    fail_routers: AtomicBool,
}

impl Realise for Recorder {
    fn apply_network(&self, n: &NetworkSpec) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("apply_network {}", n.id));
        Ok(())
    }
    fn remove_network(&self, id: &str) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove_network {id}"));
        Ok(())
    }
    fn apply_router(&self, s: &RouterSpec) -> anyhow::Result<()> {
        self.calls.lock().unwrap().push(format!(
            "apply_router {} if={} gw={}",
            s.id,
            s.interfaces.len(),
            s.gateway.is_some()
        ));
        self.applied.lock().unwrap().push(s.clone());
        if self.fail_routers.load(Ordering::SeqCst) {
            anyhow::bail!("injected failure");
        }
        Ok(())
    }
    fn remove_router(&self, id: &str, dp: u32) -> anyhow::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove_router {id} {dp}"));
        Ok(())
    }
}

struct T {
    _dir: tempfile::TempDir,
    state: ApiState,
    rec: Arc<Recorder>,
}

impl T {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("router.db")).unwrap();
        let rec = Arc::new(Recorder::default());
        let tokens = BTreeMap::from([
            (
                "adm".to_string(),
                TokenConfig {
                    project_id: "admin".into(),
                    admin: true,
                },
            ),
            (
                "ta".to_string(),
                TokenConfig {
                    project_id: "pa".into(),
                    admin: false,
                },
            ),
            (
                "tb".to_string(),
                TokenConfig {
                    project_id: "pb".into(),
                    admin: false,
                },
            ),
        ]);
        let state = ApiState::new(store, rec.clone(), tokens);
        Self {
            _dir: dir,
            state,
            rec,
        }
    }

    async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        self.raw_with(method, path, token, body, &[]).await
    }

    /// `raw` with extra request headers.
    async fn raw_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_string())).unwrap();
        let resp = service(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, v)
    }

    async fn req(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let b = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        self.raw(method, path, Some(token), &b).await
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value, want: u16) -> Value {
        let (s, v) = self.req(method, path, token, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    /// `POST /v2.0/{coll}` as `token`, asserting 201; returns the body.
    async fn create(&self, token: &str, coll: &str, body: Value) -> Value {
        self.ok("POST", &format!("/v2.0/{coll}"), token, body, 201)
            .await
    }
}

/// The id of the `kind` resource in a response body.
fn id(v: &Value, kind: &str) -> String {
    v[kind]["id"].as_str().unwrap().to_string()
}

fn err_type(v: &Value) -> &str {
    v["NeutronError"]["type"]
        .as_str()
        .unwrap_or("<no NeutronError>")
}

#[tokio::test]
async fn router_gateway_lifecycle() {
    let t = T::new();
    let ext = t
        .ok(
            "POST",
            "/v2.0/networks.json",
            "adm",
            json!({"network": {"name": "public", "router:external": true}}),
            201,
        )
        .await;
    let ext_id = id(&ext, "network");
    assert_eq!(ext["network"]["router:external"], true);
    assert_eq!(ext["network"]["admin_state_up"], true);
    assert_eq!(ext["network"]["status"], "ACTIVE");
    let body = json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "192.0.2.0/24",
        "allocation_pools": [{"start": "192.0.2.10", "end": "192.0.2.20"}]}});
    let sub = t.create("adm", "subnets", body).await;
    assert_eq!(sub["subnet"]["gateway_ip"], "192.0.2.1");
    assert_eq!(sub["subnet"]["enable_dhcp"], true);

    let net = t
        .create("ta", "networks", json!({"network": {"name": "private"}}))
        .await;
    let net_id = id(&net, "network");
    let s = t
        .create(
            "ta",
            "subnets",
            json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/24"}}),
        )
        .await;
    let sub_id = id(&s, "subnet");
    assert_eq!(
        s["subnet"]["allocation_pools"],
        json!([{"start": "10.0.0.2", "end": "10.0.0.254"}])
    );

    let r = t
        .create("ta", "routers", json!({"router": {"name": "r1"}}))
        .await;
    let rid = id(&r, "router");
    assert_eq!(r["router"]["external_gateway_info"], Value::Null);

    let info = t
        .ok(
            "PUT",
            &format!("/v2.0/routers/{rid}/add_router_interface.json"),
            "ta",
            json!({"subnet_id": sub_id}),
            200,
        )
        .await;
    assert_eq!(info["id"], rid.as_str());
    assert_eq!(info["subnet_id"], sub_id.as_str());
    assert_eq!(info["subnet_ids"], json!([sub_id]));
    assert_eq!(info["network_id"], net_id.as_str());
    let port = t
        .ok(
            "GET",
            &format!("/v2.0/ports/{}", info["port_id"].as_str().unwrap()),
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(port["port"]["fixed_ips"][0]["ip_address"], "10.0.0.1");
    assert_eq!(port["port"]["device_owner"], "network:router_interface");
    assert!(
        port["port"]["mac_address"]
            .as_str()
            .unwrap()
            .starts_with("fa:16:3e:")
    );

    // Second attach of the same subnet: 409; delete of a router with interfaces: 409.
    let (st, v) = t
        .req(
            "PUT",
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            "ta",
            json!({"subnet_id": sub_id}),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = t
        .req("DELETE", &format!("/v2.0/routers/{rid}"), "ta", Value::Null)
        .await;
    assert_eq!((st, err_type(&v)), (409, "RouterInUse"));

    // Non-admin may set the gateway but not enable_snat.
    let (st, v) = t
        .req("PUT", &format!("/v2.0/routers/{rid}.json"), "ta",
             json!({"router": {"external_gateway_info": {"network_id": ext_id, "enable_snat": false}}}))
        .await;
    assert_eq!((st, err_type(&v)), (403, "PolicyNotAuthorized"));
    let r = t
        .ok("PUT", &format!("/v2.0/routers/{rid}.json"), "adm",
            json!({"router": {"external_gateway_info": {"network_id": ext_id, "enable_snat": false}}}), 200)
        .await;
    let gw = &r["router"]["external_gateway_info"];
    assert_eq!(gw["network_id"], ext_id.as_str());
    assert_eq!(gw["enable_snat"], false);
    assert_eq!(gw["external_fixed_ips"][0]["ip_address"], "192.0.2.10");
    let calls = t.rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().unwrap(),
        &format!("apply_router {rid} if=1 gw=true")
    );

    let r = t
        .ok(
            "PUT",
            &format!("/v2.0/routers/{rid}"),
            "ta",
            json!({"router": {"external_gateway_info": {}}}),
            200,
        )
        .await;
    assert_eq!(r["router"]["external_gateway_info"], Value::Null);
    // The gateway address went back to the pool.
    let r = t
        .ok(
            "PUT",
            &format!("/v2.0/routers/{rid}"),
            "ta",
            json!({"router": {"external_gateway_info": {"network_id": ext_id}}}),
            200,
        )
        .await;
    assert_eq!(
        r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "192.0.2.10"
    );
    assert_eq!(r["router"]["external_gateway_info"]["enable_snat"], true);
    t.ok(
        "PUT",
        &format!("/v2.0/routers/{rid}"),
        "ta",
        json!({"router": {"external_gateway_info": null}}),
        200,
    )
    .await;

    t.ok(
        "PUT",
        &format!("/v2.0/routers/{rid}/remove_router_interface"),
        "ta",
        json!({"subnet_id": sub_id}),
        200,
    )
    .await;
    t.ok(
        "DELETE",
        &format!("/v2.0/routers/{rid}"),
        "ta",
        Value::Null,
        204,
    )
    .await;
    let calls = t.rec.calls.lock().unwrap().clone();
    assert!(
        calls
            .last()
            .unwrap()
            .starts_with(&format!("remove_router {rid}")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn errors_are_neutron_errors() {
    let t = T::new();
    let (st, v) = t.raw("GET", "/v2.0/networks", None, "").await;
    assert_eq!((st, err_type(&v)), (401, "HTTPUnauthorized"));
    let (st, _) = t.raw("GET", "/v2.0/networks", Some("nope"), "").await;
    assert_eq!(st, 401);
    let (st, v) = t.raw("GET", "/", None, "").await;
    assert_eq!(st, 200);
    assert_eq!(v["versions"][0]["id"], "v2.0");
    let (st, v) = t
        .raw("POST", "/v2.0/networks", Some("ta"), "{not json")
        .await;
    assert_eq!((st, err_type(&v)), (400, "HTTPBadRequest"));
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/networks",
            "ta",
            json!({"network": {"bogus": 1}}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(
        v["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains("Unrecognized attribute")
    );
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/networks",
            "ta",
            json!({"network": {"router:external": true}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (403, "PolicyNotAuthorized"));
    let net = t.create("ta", "networks", json!({"network": {}})).await;
    let nid = id(&net, "network");
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/subnets",
            "ta",
            json!({"subnet": {"network_id": nid, "ip_version": 6, "cidr": "fd00::/64"}}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = t
        .req(
            "POST",
            "/v2.0/subnets",
            "ta",
            json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.0.0.1/24"}}),
        )
        .await;
    assert_eq!(st, 400);
    // Another project's network is invisible.
    let (st, v) = t
        .req("GET", &format!("/v2.0/networks/{nid}"), "tb", Value::Null)
        .await;
    assert_eq!((st, err_type(&v)), (404, "NetworkNotFound"));
    let (st, _) = t
        .req(
            "DELETE",
            &format!("/v2.0/networks/{nid}"),
            "tb",
            Value::Null,
        )
        .await;
    assert_eq!(st, 404);
    let v = t.ok("GET", "/v2.0/networks", "tb", Value::Null, 200).await;
    assert_eq!(v["networks"], json!([]));
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?fields=id&fields=name",
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["networks"][0].as_object().unwrap().len(), 2);
    let (st, _) = t.req("GET", "/v2.0/nothing", "ta", Value::Null).await;
    assert_eq!(st, 404);
    // axum's own rejections come back as NeutronErrors too.
    let (st, v) = t.raw("GET", "/v2.0/networks/%FF%FE", Some("ta"), "").await;
    assert_eq!((st, err_type(&v)), (400, "HTTPBadRequest"));
    let big = format!("{{\"network\": {{\"name\": \"{}\"}}}}", "x".repeat(3 << 20));
    let (st, v) = t.raw("POST", "/v2.0/networks", Some("ta"), &big).await;
    assert_eq!((st, err_type(&v)), (413, "HTTPRequestEntityTooLarge"));
}

#[tokio::test]
async fn failed_realisation_changes_nothing() {
    let t = T::new();
    let before = t.ok("GET", "/v2.0/routers", "ta", Value::Null, 200).await;
    t.rec.fail_routers.store(true, Ordering::SeqCst);
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/routers",
            "ta",
            json!({"router": {"name": "x"}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (500, "HTTPInternalServerError"));
    assert!(
        v["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains("injected failure")
    );
    assert_eq!(
        t.ok("GET", "/v2.0/routers", "ta", Value::Null, 200).await,
        before
    );
    let calls = t.rec.calls.lock().unwrap().clone();
    // The half-made router was removed again.
    assert!(
        calls.last().unwrap().starts_with("remove_router"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn lists_sort_and_paginate_with_next_links() {
    let t = T::new();
    for name in ["c", "a", "b"] {
        t.create("ta", "networks", json!({"network": {"name": name}}))
            .await;
    }
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?sort_key=name&limit=2&fields=name&fields=id",
            "ta",
            Value::Null,
            200,
        )
        .await;
    let names: Vec<&str> = v["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let next = v["networks_links"][0]["href"].as_str().unwrap();
    assert_eq!(v["networks_links"][0]["rel"], "next");
    let path = &next[next.find("/v2.0").unwrap()..];
    let v = t.ok("GET", path, "ta", Value::Null, 200).await;
    let names: Vec<&str> = v["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"]);
    assert!(v.get("networks_links").is_none());
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?sort_key=name&sort_dir=desc",
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["networks"][0]["name"], "c");
    let (st, _) = t
        .req("GET", "/v2.0/networks?limit=x", "ta", Value::Null)
        .await;
    assert_eq!(st, 400);
    let (st, _) = t
        .req(
            "GET",
            "/v2.0/networks?marker=00000000-0000-0000-0000-000000000000",
            "ta",
            Value::Null,
        )
        .await;
    assert_eq!(st, 404);
}

/// Arbitrary JSON built from the API's own vocabulary, so bodies reach deep validation.
fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9:./ =-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("10.0.0.0/24"),
            Just("10.0.0.1"),
            Just("10.0.0.0/31"),
            Just("192.0.2.0/24"),
            Just("4"),
            Just("fd00::/64"),
            Just("10.0.0.5"),
            Just("10.9.0.0/16"),
            Just("0.0.0.0/0"),
            Just("127.0.0.0/8"),
            Just("00000000-0000-0000-0000-000000000000"),
            Just("fa:16:3e:00:00:01"),
        ]
        .prop_map(|s| json!(s)),
    ];
    let keys = prop_oneof![
        Just("name"),
        Just("admin_state_up"),
        Just("router:external"),
        Just("network_id"),
        Just("subnet_id"),
        Just("port_id"),
        Just("ip_version"),
        Just("cidr"),
        Just("gateway_ip"),
        Just("allocation_pools"),
        Just("start"),
        Just("end"),
        Just("fixed_ips"),
        Just("ip_address"),
        Just("mac_address"),
        Just("external_gateway_info"),
        Just("enable_snat"),
        Just("external_fixed_ips"),
        Just("dns_nameservers"),
        Just("routes"),
        Just("destination"),
        Just("nexthop"),
        Just("mtu"),
        Just("tags"),
        Just("ha"),
        Just("distributed"),
        Just("revision_number"),
        Just("bogus"),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(str::to_string), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_bodies_never_500_and_rejections_change_nothing() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = T::new();
    let (net, sub, router) = rt.block_on(async {
        let n = t
            .create(
                "adm",
                "networks",
                json!({"network": {"router:external": true}}),
            )
            .await;
        let net = id(&n, "network");
        let s = t
            .create(
                "adm",
                "subnets",
                json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.0.0.0/24"}}),
            )
            .await;
        let r = t.create("adm", "routers", json!({"router": {}})).await;
        (net, id(&s, "subnet"), id(&r, "router"))
    });
    let targets = [
        ("POST", "/v2.0/networks".to_string(), "network"),
        ("POST", "/v2.0/subnets".to_string(), "subnet"),
        ("POST", "/v2.0/ports".to_string(), "port"),
        ("POST", "/v2.0/routers".to_string(), "router"),
        ("PUT", format!("/v2.0/networks/{net}"), "network"),
        ("PUT", format!("/v2.0/subnets/{sub}"), "subnet"),
        ("PUT", format!("/v2.0/routers/{router}"), "router"),
        (
            "PUT",
            format!("/v2.0/routers/{router}/add_router_interface"),
            "",
        ),
        (
            "PUT",
            format!("/v2.0/routers/{router}/remove_router_interface"),
            "",
        ),
        (
            "PUT",
            format!("/v2.0/routers/{router}/add_extraroutes"),
            "router",
        ),
        (
            "PUT",
            format!("/v2.0/routers/{router}/remove_extraroutes"),
            "router",
        ),
        ("PUT", format!("/v2.0/networks/{net}/tags"), ""),
        ("POST", format!("/v2.0/routers/{router}/tags"), ""),
        ("PUT", format!("/v2.0/subnets/{sub}/tags/x"), ""),
        ("DELETE", format!("/v2.0/subnets/{sub}/tags/absent"), ""),
    ];
    let if_match = [
        None,
        Some("revision_number=0"),
        Some("revision_number=99"),
        Some("revision_number=x"),
        Some("W/\"revision_number=1\""),
        Some("revision_number=1, revision_number=2"),
        Some("*"),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(
                0..targets.len(),
                arb_json(),
                any::<bool>(),
                any::<bool>(),
                0..if_match.len(),
            ),
            |(i, body, wrap, admin, m)| {
                let (method, path, key) = &targets[i];
                let body = if wrap && !key.is_empty() {
                    json!({ *key: body })
                } else {
                    body
                };
                let token = if admin { "adm" } else { "ta" };
                rt.block_on(async {
                    let snapshot = || async {
                        let mut all = Vec::new();
                        for c in ["networks", "subnets", "ports", "routers"] {
                            all.push(
                                t.req("GET", &format!("/v2.0/{c}"), "adm", Value::Null)
                                    .await,
                            );
                        }
                        all
                    };
                    let before = snapshot().await;
                    let headers: Vec<(&str, &str)> =
                        if_match[m].map(|h| ("if-match", h)).into_iter().collect();
                    let (st, v) = t
                        .raw_with(method, path, Some(token), &body.to_string(), &headers)
                        .await;
                    prop_assert!(st < 500, "{method} {path} {body} → {st} {v}");
                    if st >= 400 {
                        prop_assert!(v["NeutronError"]["type"].is_string(), "{v}");
                        prop_assert!(
                            snapshot().await == before,
                            "rejected {method} {path} {body} changed state"
                        );
                    }
                    Ok(())
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_full_network_refuses_new_ports() {
    let t = T::new();
    let n = t.create("ta", "networks", json!({"network": {}})).await;
    let nid = id(&n, "network");
    let s = t
        .create(
            "ta",
            "subnets",
            json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.9.9.0/30"}}),
        )
        .await;
    assert_eq!(
        s["subnet"]["allocation_pools"],
        json!([{"start": "10.9.9.2", "end": "10.9.9.2"}])
    );
    let p = t
        .create("ta", "ports", json!({"port": {"network_id": nid}}))
        .await;
    assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "10.9.9.2");
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/ports",
            "ta",
            json!({"port": {"network_id": nid}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (409, "IpAddressGenerationFailure"));
    // Explicitly no address is still allowed.
    t.create(
        "ta",
        "ports",
        json!({"port": {"network_id": nid, "fixed_ips": []}}),
    )
    .await;
}

/// The names (`key`) of a list's items, in order.
fn names<'a>(v: &'a Value, coll: &str, key: &str) -> Vec<&'a str> {
    v[coll]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn floatingips_and_port_forwardings_sort_and_paginate() {
    let t = T::new();
    let ext = t
        .create(
            "adm",
            "networks",
            json!({"network": {"name": "public", "router:external": true}}),
        )
        .await;
    let ext_id = id(&ext, "network");
    let body = json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "192.0.2.0/24"}});
    t.create("adm", "subnets", body).await;
    let net = t
        .create("ta", "networks", json!({"network": {"name": "private"}}))
        .await;
    let net_id = id(&net, "network");
    let body = json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/24"}});
    let sub_id = id(&t.create("ta", "subnets", body).await, "subnet");
    let body = json!({"router": {"external_gateway_info": {"network_id": ext_id}}});
    let rid = id(&t.create("ta", "routers", body).await, "router");
    let path = format!("/v2.0/routers/{rid}/add_router_interface");
    t.ok("PUT", &path, "ta", json!({"subnet_id": sub_id}), 200)
        .await;
    let vm = t
        .create("ta", "ports", json!({"port": {"network_id": net_id}}))
        .await;
    let vm_id = id(&vm, "port");

    let mut fips = Vec::new();
    for d in ["c", "a", "b"] {
        let body = json!({"floatingip": {"floating_network_id": ext_id, "description": d}});
        fips.push(id(&t.create("ta", "floatingips", body).await, "floatingip"));
    }
    let q =
        "/v2.0/floatingips?sort_key=description&sort_dir=asc&limit=2&fields=id&fields=description";
    let v = t.ok("GET", q, "ta", Value::Null, 200).await;
    assert_eq!(names(&v, "floatingips", "description"), ["a", "b"]);
    assert_eq!(v["floatingips_links"][0]["rel"], "next");
    let next = v["floatingips_links"][0]["href"].as_str().unwrap();
    let v = t
        .ok(
            "GET",
            &next[next.find("/v2.0").unwrap()..],
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(names(&v, "floatingips", "description"), ["c"]);
    assert!(v.get("floatingips_links").is_none());
    let q = "/v2.0/floatingips?sort_key=description&sort_dir=desc";
    let v = t.ok("GET", q, "ta", Value::Null, 200).await;
    assert_eq!(names(&v, "floatingips", "description"), ["c", "b", "a"]);
    let q = format!("/v2.0/floatingips?sort_key=description&marker={}", fips[1]);
    let v = t.ok("GET", &q, "ta", Value::Null, 200).await;
    assert_eq!(names(&v, "floatingips", "description"), ["b", "c"]);
    let q = "/v2.0/floatingips?marker=00000000-0000-0000-0000-000000000000";
    let (st, v) = t.req("GET", q, "ta", Value::Null).await;
    assert_eq!((st, err_type(&v)), (404, "FloatingIPNotFound"));

    let pfs = format!("/v2.0/floatingips/{}/port_forwardings", fips[0]);
    for (ext_port, desc) in [(3000, "z"), (1000, "x"), (2000, "y")] {
        let body = json!({"port_forwarding": {"protocol": "tcp", "external_port": ext_port,
            "internal_port": ext_port + 1, "internal_port_id": vm_id, "description": desc}});
        t.ok("POST", &pfs, "ta", body, 201).await;
    }
    let q = format!("{pfs}?sort_key=external_port&limit=2");
    let v = t.ok("GET", &q, "ta", Value::Null, 200).await;
    assert_eq!(names(&v, "port_forwardings", "description"), ["x", "y"]);
    let next = v["port_forwardings_links"][0]["href"].as_str().unwrap();
    let next = &next[next.find("/v2.0").unwrap()..];
    assert!(next.starts_with(&format!("{pfs}?")), "{next}");
    let v = t.ok("GET", next, "ta", Value::Null, 200).await;
    assert_eq!(names(&v, "port_forwardings", "description"), ["z"]);
    let q = format!("{pfs}?sort_key=external_port&sort_dir=desc&fields=description");
    let v = t.ok("GET", &q, "ta", Value::Null, 200).await;
    assert_eq!(
        v["port_forwardings"],
        json!([{"description": "z"}, {"description": "y"}, {"description": "x"}])
    );
    let q = format!("{pfs}?marker=00000000-0000-0000-0000-000000000000");
    let (st, v) = t.req("GET", &q, "ta", Value::Null).await;
    assert_eq!((st, err_type(&v)), (404, "PortForwardingNotFound"));
    // Another project sees neither the floating IP nor its forwardings.
    let (st, v) = t.req("GET", &pfs, "tb", Value::Null).await;
    assert_eq!((st, err_type(&v)), (404, "FloatingIPNotFound"));
}

/// An external network 192.0.2.0/24 and a router `ta` owns with an interface on 10.0.0.0/24
/// and one on 10.1.0.0/24: (router id, external network id, the two subnet ids).
async fn routed_router(t: &T) -> (String, String, [String; 2]) {
    let ext = t
        .create(
            "adm",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await;
    let ext = id(&ext, "network");
    t.create(
        "adm",
        "subnets",
        json!({"subnet": {"network_id": ext, "ip_version": 4, "cidr": "192.0.2.0/24"}}),
    )
    .await;
    let r = t.create("ta", "routers", json!({"router": {}})).await;
    let rid = id(&r, "router");
    let mut subs = Vec::new();
    for cidr in ["10.0.0.0/24", "10.1.0.0/24"] {
        let n = t.create("ta", "networks", json!({"network": {}})).await;
        let s = t
            .create(
                "ta",
                "subnets",
                json!({"subnet": {"network_id": id(&n, "network"), "ip_version": 4, "cidr": cidr}}),
            )
            .await;
        let sid = id(&s, "subnet");
        t.ok(
            "PUT",
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            "ta",
            json!({"subnet_id": sid}),
            200,
        )
        .await;
        subs.push(sid);
    }
    (rid, ext, [subs[0].clone(), subs[1].clone()])
}

#[tokio::test]
async fn extra_routes_follow_neutron() {
    let t = T::new();
    let (rid, _, [sub_a, sub_b]) = routed_router(&t).await;
    let path = format!("/v2.0/routers/{rid}");
    let r = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(r["router"]["routes"], json!([]));

    // POST may not carry routes.
    let (st, v) = t
        .req(
            "POST",
            "/v2.0/routers",
            "ta",
            json!({"router": {"routes": []}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (400, "HTTPBadRequest"), "{v}");

    let route = |d: &str, n: &str| json!({"destination": d, "nexthop": n});
    let put = |routes: Value| json!({"router": {"routes": routes}});
    let before = t.ok("GET", &path, "ta", Value::Null, 200).await["router"]["revision_number"]
        .as_i64()
        .expect("revision_number");
    let r = t
        .ok(
            "PUT",
            &path,
            "ta",
            put(json!([route("172.16.0.0/24", "10.1.0.5")])),
            200,
        )
        .await;
    assert_eq!(
        r["router"]["routes"],
        json!([route("172.16.0.0/24", "10.1.0.5")])
    );
    // A routes change revises the router once, as Neutron's RouterRoute does.
    assert_eq!(r["router"]["revision_number"], json!(before + 1), "{r}");
    let calls = t.rec.calls.lock().unwrap().len();

    // Each refusal: its Neutron type, and nothing stored or realised.
    for (routes, status, kind) in [
        (
            json!([route("172.17.0.0/24", "10.9.0.5")]),
            400,
            "InvalidRoutes",
        ),
        (
            json!([route("172.17.0.0/24", "10.1.0.1")]),
            400,
            "InvalidRoutes",
        ),
        (
            json!([route("10.0.0.128/25", "10.1.0.5")]),
            400,
            "InvalidRoutes",
        ),
        (
            json!([route("172.17.0.1/24", "10.1.0.5")]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([route("172.17.0.0/24", "nope")]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([route("fd00::/64", "10.1.0.5")]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([route("0.0.0.0/0", "10.1.0.5")]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([route("127.0.0.0/8", "10.1.0.5")]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([{"destination": "172.17.0.0/24"}]),
            400,
            "HTTPBadRequest",
        ),
        (
            json!([
                route("172.17.0.0/24", "10.1.0.5"),
                route("172.17.0.0/24", "10.1.0.5")
            ]),
            400,
            "HTTPBadRequest",
        ),
        (json!("x"), 400, "HTTPBadRequest"),
    ] {
        let (st, v) = t.req("PUT", &path, "ta", put(routes.clone())).await;
        assert_eq!((st, err_type(&v)), (status, kind), "{routes}: {v}");
    }
    let (_, v) = t
        .req(
            "PUT",
            &path,
            "ta",
            put(json!([route("172.17.0.0/24", "10.9.0.5")])),
        )
        .await;
    assert_eq!(
        v["NeutronError"]["message"],
        "Invalid format for routes: [{'destination': '172.17.0.0/24', 'nexthop': '10.9.0.5'}], the nexthop is not connected with router"
    );
    let r = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(
        r["router"]["routes"],
        json!([route("172.16.0.0/24", "10.1.0.5")])
    );
    assert_eq!(t.rec.calls.lock().unwrap().len(), calls);

    // Atomic add merges (repeats are no error), remove ignores what is absent.
    let add = format!("/v2.0/routers/{rid}/add_extraroutes");
    let remove = format!("/v2.0/routers/{rid}/remove_extraroutes");
    let r = t
        .ok(
            "PUT",
            &add,
            "ta",
            put(json!([
                route("172.16.0.0/24", "10.1.0.5"),
                route("172.18.0.0/16", "10.0.0.7")
            ])),
            200,
        )
        .await;
    assert_eq!(
        r["router"]["routes"],
        json!([
            route("172.16.0.0/24", "10.1.0.5"),
            route("172.18.0.0/16", "10.0.0.7")
        ])
    );
    assert_eq!(r["router"]["id"], rid.as_str());
    let (st, v) = t
        .req(
            "PUT",
            &add,
            "ta",
            put(json!([route("172.19.0.0/16", "10.7.0.7")])),
        )
        .await;
    assert_eq!((st, err_type(&v)), (400, "InvalidRoutes"), "{v}");

    // An interface a nexthop needs stays; the other one goes.
    let (st, v) = t
        .req(
            "PUT",
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            "ta",
            json!({"subnet_id": sub_b}),
        )
        .await;
    assert_eq!(
        (st, err_type(&v)),
        (409, "RouterInterfaceInUseByRoute"),
        "{v}"
    );
    assert_eq!(
        v["NeutronError"]["message"],
        format!(
            "Router interface for subnet {sub_b} on router {rid} cannot be deleted, as it is required by one or more routes."
        )
    );

    let r = t
        .ok(
            "PUT",
            &remove,
            "ta",
            put(json!([
                route("172.16.0.0/24", "10.1.0.5"),
                route("1.2.3.0/24", "10.1.0.9")
            ])),
            200,
        )
        .await;
    assert_eq!(
        r["router"]["routes"],
        json!([route("172.18.0.0/16", "10.0.0.7")])
    );
    t.ok(
        "PUT",
        &format!("/v2.0/routers/{rid}/remove_router_interface"),
        "ta",
        json!({"subnet_id": sub_b}),
        200,
    )
    .await;
    let (st, _) = t
        .req(
            "PUT",
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            "ta",
            json!({"subnet_id": sub_a}),
        )
        .await;
    assert_eq!(st, 409);

    // null clears; the router's spec carries what the API holds.
    let r = t.ok("PUT", &path, "ta", put(Value::Null), 200).await;
    assert_eq!(r["router"]["routes"], json!([]));
    let spec = t
        .state
        .with_store(|s| store::router_spec(s.conn(), &rid))
        .unwrap();
    assert!(spec.unwrap().routes.is_empty());
}

#[tokio::test]
async fn extra_routes_quota_and_spec() {
    let mut t = T::new();
    t.state = t.state.clone().with_l3(L3Settings {
        max_routes: 2,
        ..L3Settings::default()
    });
    let (rid, _, _) = routed_router(&t).await;
    let routes: Vec<Value> = (0..3)
        .map(|i| json!({"destination": format!("172.16.{i}.0/24"), "nexthop": "10.0.0.9"}))
        .collect();
    let path = format!("/v2.0/routers/{rid}");
    let (st, v) = t
        .req("PUT", &path, "ta", json!({"router": {"routes": routes}}))
        .await;
    assert_eq!((st, err_type(&v)), (400, "RoutesExhausted"), "{v}");
    assert_eq!(
        v["NeutronError"]["message"],
        format!(
            "Unable to complete operation for {rid}. The number of routes exceeds the maximum 2."
        )
    );
    t.ok(
        "PUT",
        &path,
        "ta",
        json!({"router": {"routes": routes[..2]}}),
        200,
    )
    .await;
    let spec = t
        .state
        .with_store(|s| store::router_spec(s.conn(), &rid))
        .unwrap()
        .unwrap();
    assert_eq!(
        spec.routes,
        vec![
            crate::model::spec::RouteSpec {
                destination: "172.16.0.0/24".parse().unwrap(),
                nexthop: "10.0.0.9".parse().unwrap(),
            },
            crate::model::spec::RouteSpec {
                destination: "172.16.1.0/24".parse().unwrap(),
                nexthop: "10.0.0.9".parse().unwrap(),
            },
        ]
    );
}

#[tokio::test]
async fn gateway_update_without_enable_snat_sets_the_default() {
    for default in [true, false] {
        let mut t = T::new();
        t.state = t.state.clone().with_l3(L3Settings {
            enable_snat_by_default: default,
            ..L3Settings::default()
        });
        let (rid, ext, _) = routed_router(&t).await;
        let path = format!("/v2.0/routers/{rid}");
        let gw = |snat: Option<bool>| match snat {
            Some(s) => {
                json!({"router": {"external_gateway_info": {"network_id": ext, "enable_snat": s}}})
            }
            None => json!({"router": {"external_gateway_info": {"network_id": ext}}}),
        };
        let r = t.ok("PUT", &path, "adm", gw(None), 200).await;
        assert_eq!(r["router"]["external_gateway_info"]["enable_snat"], default);
        let r = t.ok("PUT", &path, "adm", gw(Some(!default)), 200).await;
        assert_eq!(
            r["router"]["external_gateway_info"]["enable_snat"],
            !default
        );
        // Same network again, flag not named: back to the default.
        let r = t.ok("PUT", &path, "adm", gw(None), 200).await;
        assert_eq!(r["router"]["external_gateway_info"]["enable_snat"], default);
        let spec = t
            .state
            .with_store(|s| store::router_spec(s.conn(), &rid))
            .unwrap()
            .unwrap();
        assert_eq!(spec.gateway.unwrap().enable_snat, default);
        // Changing anything else leaves it alone.
        t.ok("PUT", &path, "adm", gw(Some(!default)), 200).await;
        let r = t
            .ok("PUT", &path, "adm", json!({"router": {"name": "x"}}), 200)
            .await;
        assert_eq!(
            r["router"]["external_gateway_info"]["enable_snat"],
            !default
        );
    }
}

#[tokio::test]
async fn a_gateway_change_must_keep_the_routes_connected() {
    let t = T::new();
    let (rid, ext, _) = routed_router(&t).await;
    let path = format!("/v2.0/routers/{rid}");
    let gw = json!({"router": {"external_gateway_info": {"network_id": ext}}});
    t.ok("PUT", &path, "ta", gw, 200).await;
    let routes = json!([{"destination": "198.51.100.0/24", "nexthop": "192.0.2.77"}]);
    t.ok(
        "PUT",
        &path,
        "ta",
        json!({"router": {"routes": routes}}),
        200,
    )
    .await;
    // Clearing the gateway would strand the route via the external subnet (Neutron's
    // `_validate_gw_info`): refused, nothing changed.
    let (st, v) = t
        .req(
            "PUT",
            &path,
            "ta",
            json!({"router": {"external_gateway_info": null}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (400, "InvalidRoutes"), "{v}");
    let r = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(
        r["router"]["external_gateway_info"]["network_id"],
        ext.as_str()
    );
    // Both in one request: the routes go, then the gateway may.
    let r = t
        .ok(
            "PUT",
            &path,
            "ta",
            json!({"router": {"external_gateway_info": null, "routes": []}}),
            200,
        )
        .await;
    assert_eq!(r["router"]["external_gateway_info"], Value::Null);
    assert_eq!(r["router"]["routes"], json!([]));
}

/// `PUT`/`DELETE` with an `If-Match` header; returns (status, body).
async fn if_match(t: &T, method: &str, path: &str, rev: &str, body: Value) -> (u16, Value) {
    let b = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    t.raw_with(method, path, Some("ta"), &b, &[("if-match", rev)])
        .await
}

fn is_timestamp(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    let b = s.as_bytes();
    s.len() == 20
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19].contains(&i) || c.is_ascii_digit())
}

#[tokio::test]
async fn tags_lifecycle_as_neutron() {
    let t = T::new();
    let n = t.create("ta", "networks", json!({"network": {}})).await;
    let nid = id(&n, "network");
    assert_eq!(n["network"]["tags"], json!([]));
    let base = format!("/v2.0/networks/{nid}/tags");

    let (st, v) = t
        .req("PUT", &format!("{base}/red"), "ta", Value::Null)
        .await;
    assert_eq!(st, 201, "{v}");
    t.ok("GET", &format!("{base}/red"), "ta", Value::Null, 204)
        .await;
    let v = t
        .ok("GET", &format!("{base}/blue"), "ta", Value::Null, 404)
        .await;
    assert_eq!(err_type(&v), "TagNotFound");
    assert_eq!(v["NeutronError"]["message"], "Tag blue could not be found.");
    // Adding a tag twice is no error and no second copy.
    t.ok("PUT", &format!("{base}/red"), "ta", Value::Null, 201)
        .await;
    let v = t.ok("GET", &base, "ta", Value::Null, 200).await;
    assert_eq!(v, json!({"tags": ["red"]}));

    let v = t
        .ok("PUT", &base, "ta", json!({"tags": ["b", "a"]}), 200)
        .await;
    assert_eq!(v, json!({"tags": ["b", "a"]}));
    let v = t
        .ok(
            "GET",
            &format!("/v2.0/networks/{nid}"),
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["network"]["tags"], json!(["a", "b"]));
    let v = t
        .ok("POST", &base, "ta", json!({"tags": ["c", "a"]}), 201)
        .await;
    assert_eq!(v, json!({"tags": ["c", "a"]}));
    let v = t.ok("GET", &base, "ta", Value::Null, 200).await;
    assert_eq!(v, json!({"tags": ["a", "b", "c"]}));

    t.ok("DELETE", &format!("{base}/a"), "ta", Value::Null, 204)
        .await;
    let v = t
        .ok("DELETE", &format!("{base}/a"), "ta", Value::Null, 404)
        .await;
    assert_eq!(err_type(&v), "TagNotFound");
    t.ok("DELETE", &base, "ta", Value::Null, 204).await;
    let v = t.ok("GET", &base, "ta", Value::Null, 200).await;
    assert_eq!(v, json!({"tags": []}));

    // Neutron's validation: a list of unique strings of at most 255 characters, 50 at most.
    let long = "x".repeat(256);
    for bad in [
        json!({"tags": "a"}),
        json!({"tags": ["a", "a"]}),
        json!({"tags": [1]}),
        json!({"tags": [long]}),
        json!({"other": []}),
    ] {
        let v = t.ok("PUT", &base, "ta", bad.clone(), 400).await;
        assert_eq!(err_type(&v), "InvalidInput", "{bad}: {v}");
    }
    let v = t
        .ok("PUT", &format!("{base}/{long}"), "ta", Value::Null, 400)
        .await;
    assert_eq!(err_type(&v), "InvalidInput");
    let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    let v = t.ok("PUT", &base, "ta", json!({"tags": many}), 400).await;
    assert_eq!(err_type(&v), "BadRequest");
    let v = t.ok("GET", &base, "ta", Value::Null, 200).await;
    assert_eq!(v, json!({"tags": []}), "rejected requests changed nothing");

    // Others' resources: invisible is 404, visible but not owned is 403.
    let v = t
        .ok("PUT", &format!("{base}/x"), "tb", Value::Null, 404)
        .await;
    assert_eq!(err_type(&v), "NetworkNotFound");
    let ext = t
        .create(
            "adm",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await;
    let ext_id = id(&ext, "network");
    let path = format!("/v2.0/networks/{ext_id}/tags");
    t.ok("GET", &path, "tb", Value::Null, 200).await;
    let v = t
        .ok("PUT", &format!("{path}/x"), "tb", Value::Null, 403)
        .await;
    assert_eq!(err_type(&v), "PolicyNotAuthorized");
    // Port forwardings have no standard attributes, so no tags.
    t.ok(
        "GET",
        &format!("/v2.0/floatingips/{nid}/port_forwardings/{nid}/tags"),
        "ta",
        Value::Null,
        404,
    )
    .await;
}

#[tokio::test]
async fn every_standard_resource_has_tags_and_revisions() {
    let t = T::new();
    let ext = t
        .create(
            "adm",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await;
    let ext_id = id(&ext, "network");
    t.create(
        "adm",
        "subnets",
        json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "192.0.2.0/24"}}),
    )
    .await;
    let n = t.create("ta", "networks", json!({"network": {}})).await;
    let s = t
        .create(
            "ta",
            "subnets",
            json!({"subnet": {"network_id": id(&n, "network"), "ip_version": 4,
                "cidr": "10.0.0.0/24"}}),
        )
        .await;
    let p = t
        .create(
            "ta",
            "ports",
            json!({"port": {"network_id": id(&n, "network"), "tags": ["vm"]}}),
        )
        .await;
    let r = t.create("ta", "routers", json!({"router": {}})).await;
    let f = t
        .create(
            "ta",
            "floatingips",
            json!({"floatingip": {"floating_network_id": ext_id}}),
        )
        .await;
    for (coll, kind, v) in [
        ("subnets", "subnet", &s),
        ("ports", "port", &p),
        ("routers", "router", &r),
        ("floatingips", "floatingip", &f),
    ] {
        let item = &v[kind];
        assert_eq!(item["revision_number"], 0, "{coll}: {item}");
        assert!(is_timestamp(&item["created_at"]), "{coll}: {item}");
        assert!(is_timestamp(&item["updated_at"]), "{coll}: {item}");
        let rid = id(v, kind);
        t.ok(
            "PUT",
            &format!("/v2.0/{coll}/{rid}/tags/blue"),
            "ta",
            Value::Null,
            201,
        )
        .await;
        let v = t
            .ok(
                "GET",
                &format!("/v2.0/{coll}/{rid}"),
                "ta",
                Value::Null,
                200,
            )
            .await;
        assert!(v[kind]["tags"].as_array().unwrap().contains(&json!("blue")));
        assert_eq!(v[kind]["revision_number"], 1, "a tag change revises {coll}");
        let v = t
            .ok(
                "GET",
                &format!("/v2.0/{coll}?tags=blue"),
                "ta",
                Value::Null,
                200,
            )
            .await;
        assert_eq!(v[coll].as_array().unwrap().len(), 1, "{coll}: {v}");
    }
    assert_eq!(p["port"]["tags"], json!(["vm"]));
}

#[tokio::test]
async fn revisions_count_changes_and_if_match_guards_them() {
    let t = T::new();
    let n = t.create("ta", "networks", json!({"network": {}})).await;
    let nid = id(&n, "network");
    let path = format!("/v2.0/networks/{nid}");
    assert_eq!(n["network"]["revision_number"], 0);
    let v = t
        .ok("PUT", &path, "ta", json!({"network": {"name": "a"}}), 200)
        .await;
    assert_eq!(v["network"]["revision_number"], 1);
    // A subnet revises its network (Neutron's revises_on_change).
    let s = t
        .create(
            "ta",
            "subnets",
            json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.0.0.0/24"}}),
        )
        .await;
    let v = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(v["network"]["revision_number"], 2);

    let (st, v) = if_match(
        &t,
        "PUT",
        &path,
        "revision_number=1",
        json!({"network": {"name": "b"}}),
    )
    .await;
    assert_eq!(st, 412, "{v}");
    assert_eq!(err_type(&v), "RevisionNumberConstraintFailed");
    assert_eq!(
        v["NeutronError"]["message"],
        "Constrained to 1, but current revision is 2"
    );
    let v = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(
        v["network"]["name"], "a",
        "a failed constraint changes nothing"
    );
    let (st, v) = if_match(
        &t,
        "PUT",
        &path,
        "revision_number=2",
        json!({"network": {"name": "b"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["network"]["revision_number"], 3);
    for bad in ["revision_number=x", "revision_number=1, revision_number=2"] {
        let (st, v) = if_match(&t, "PUT", &path, bad, json!({"network": {}})).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert_eq!(err_type(&v), "BadRequest");
    }
    // Other etags are not revision constraints.
    let (st, _) = if_match(&t, "PUT", &path, "\"abc\"", json!({"network": {}})).await;
    assert_eq!(st, 200);

    // A router's interfaces and gateway revise it, once per request.
    let r = t.create("ta", "routers", json!({"router": {}})).await;
    let rid = id(&r, "router");
    let rpath = format!("/v2.0/routers/{rid}");
    t.ok(
        "PUT",
        &format!("{rpath}/add_router_interface"),
        "ta",
        json!({"subnet_id": id(&s, "subnet")}),
        200,
    )
    .await;
    let v = t.ok("GET", &rpath, "ta", Value::Null, 200).await;
    assert_eq!(v["router"]["revision_number"], 1);
    let (st, _) = if_match(&t, "DELETE", &rpath, "revision_number=0", Value::Null).await;
    assert_eq!(st, 412);
    let ext = t
        .create(
            "adm",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await;
    let ext_id = id(&ext, "network");
    t.create(
        "adm",
        "subnets",
        json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "192.0.2.0/24"}}),
    )
    .await;
    let body = json!({"router": {"external_gateway_info": {"network_id": ext_id}}});
    let v = t.ok("PUT", &rpath, "ta", body, 200).await;
    assert_eq!(
        v["router"]["revision_number"], 2,
        "setting the gateway revises once"
    );
    let v = t
        .ok(
            "PUT",
            &rpath,
            "ta",
            json!({"router": {"external_gateway_info": {}}}),
            200,
        )
        .await;
    assert_eq!(v["router"]["revision_number"], 3);
    t.ok("GET", &rpath, "ta", Value::Null, 200).await;

    // An invisible resource answers its 404, not its revision.
    let (st, v) = t
        .raw_with(
            "PUT",
            &path,
            Some("tb"),
            "{\"network\": {}}",
            &[("if-match", "revision_number=9")],
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let v = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert!(v["network"]["updated_at"].as_str() >= v["network"]["created_at"].as_str());
}

#[tokio::test]
async fn tag_filters_follow_neutron() {
    let t = T::new();
    for (name, tags) in [
        ("ab", json!(["a", "b"])),
        ("a", json!(["a"])),
        ("c", json!(["c"])),
        ("none", json!([])),
    ] {
        let n = t
            .create("ta", "networks", json!({"network": {"name": name}}))
            .await;
        let path = format!("/v2.0/networks/{}/tags", id(&n, "network"));
        t.ok("PUT", &path, "ta", json!({ "tags": tags }), 200).await;
    }
    let q = |f: &str| format!("/v2.0/networks?sort_key=name&{f}");
    for (filter, want) in [
        ("tags=a,b", vec!["ab"]),
        ("tags=a&tags=b", vec!["ab"]),
        ("tags=a", vec!["a", "ab"]),
        ("tags-any=a,c", vec!["a", "ab", "c"]),
        ("not-tags=a,b", vec!["a", "c", "none"]),
        ("not-tags-any=a", vec!["c", "none"]),
        ("tags=a&not-tags=b", vec!["a"]),
    ] {
        let v = t.ok("GET", &q(filter), "ta", Value::Null, 200).await;
        assert_eq!(names(&v, "networks", "name"), want, "{filter}");
    }
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?changed_since=2000-01-01T00:00:00",
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 4);
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?changed_since=2999-01-01T00:00:00Z",
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["networks"], json!([]));
    let v = t
        .ok(
            "GET",
            "/v2.0/networks?changed_since=yesterday",
            "ta",
            Value::Null,
            400,
        )
        .await;
    assert_eq!(err_type(&v), "InvalidInput");
}

#[tokio::test]
async fn unknown_filters_are_refused_and_full_pages_link_on() {
    let t = T::new();
    for name in ["a", "b"] {
        t.create("ta", "networks", json!({"network": {"name": name}}))
            .await;
    }
    let v = t
        .ok("GET", "/v2.0/networks?bogus=1", "ta", Value::Null, 400)
        .await;
    assert_eq!(err_type(&v), "HTTPBadRequest");
    assert_eq!(
        v["NeutronError"]["message"],
        "['bogus'] is invalid attribute for filtering"
    );
    // Neutron does not filter routers on status, nor port forwardings on tags.
    t.ok("GET", "/v2.0/routers?status=ACTIVE", "ta", Value::Null, 400)
        .await;
    t.ok("GET", "/v2.0/routers?name=x&tags=y", "ta", Value::Null, 200)
        .await;
    t.ok(
        "GET",
        "/v2.0/networks?mtu=1500&revision_number=0",
        "ta",
        Value::Null,
        200,
    )
    .await;
    t.ok(
        "GET",
        "/v2.0/ports?device_id=x&fields=id",
        "ta",
        Value::Null,
        200,
    )
    .await;

    let v = t
        .ok(
            "GET",
            "/v2.0/networks?sort_key=name&limit=2",
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(names(&v, "networks", "name"), ["a", "b"]);
    let next = v["networks_links"][0]["href"]
        .as_str()
        .expect("a full page links on");
    let v = t
        .ok(
            "GET",
            &next[next.find("/v2.0").unwrap()..],
            "ta",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["networks"], json!([]));
    assert!(v.get("networks_links").is_none());
}

#[tokio::test]
async fn network_mtu_as_neutron_net_mtu_writable() {
    let t = T::new();
    let n = t.create("ta", "networks", json!({"network": {}})).await;
    assert_eq!(n["network"]["mtu"], 1500);
    let n = t
        .create("ta", "networks", json!({"network": {"mtu": 9000}}))
        .await;
    assert_eq!(n["network"]["mtu"], 9000);
    let n = t
        .create("ta", "networks", json!({"network": {"mtu": 0}}))
        .await;
    assert_eq!(n["network"]["mtu"], 1500, "0 asks for the default");
    let path = format!("/v2.0/networks/{}", id(&n, "network"));
    let v = t
        .ok("PUT", &path, "ta", json!({"network": {"mtu": "1400"}}), 200)
        .await;
    assert_eq!(v["network"]["mtu"], 1400);
    for bad in [
        json!(9001),
        json!(-1),
        json!(67),
        json!("abc"),
        json!(true),
        json!(1.5),
    ] {
        let (st, v) = t
            .req("PUT", &path, "ta", json!({"network": {"mtu": bad}}))
            .await;
        assert_eq!(st, 400, "{bad}: {v}");
        let (st, _) = t
            .req(
                "POST",
                "/v2.0/networks",
                "ta",
                json!({"network": {"mtu": bad}}),
            )
            .await;
        assert_eq!(st, 400, "{bad}");
    }
    let v = t.ok("GET", &path, "ta", Value::Null, 200).await;
    assert_eq!(v["network"]["mtu"], 1400);
    let (_, v) = t
        .req("PUT", &path, "ta", json!({"network": {"mtu": 9001}}))
        .await;
    assert_eq!(err_type(&v), "InvalidInput");
    assert_eq!(
        v["NeutronError"]["message"],
        "Invalid input for operation: Requested MTU is too big, maximum is 9000."
    );
}

#[tokio::test]
async fn a_network_mtu_change_reapplies_its_routers() {
    let t = T::new();
    let (rid, ext, [sub, _]) = routed_router(&t).await;
    t.ok(
        "PUT",
        &format!("/v2.0/routers/{rid}"),
        "adm",
        json!({"router": {"external_gateway_info": {"network_id": ext}}}),
        200,
    )
    .await;
    let s = t
        .ok(
            "GET",
            &format!("/v2.0/subnets/{sub}"),
            "ta",
            Value::Null,
            200,
        )
        .await;
    let net = s["subnet"]["network_id"].as_str().unwrap().to_string();
    let last = |t: &T| t.rec.applied.lock().unwrap().last().cloned().unwrap();
    let mtus = |spec: &RouterSpec| -> Vec<(String, u32)> {
        spec.interfaces
            .iter()
            .chain(spec.gateway.iter().map(|g| &g.port))
            .map(|p| (p.network_id.clone(), p.mtu))
            .collect()
    };
    assert!(mtus(&last(&t)).iter().all(|(_, m)| *m == 1500));
    let applied = t.rec.applied.lock().unwrap().len();
    t.ok(
        "PUT",
        &format!("/v2.0/networks/{net}"),
        "ta",
        json!({"network": {"mtu": 1400}}),
        200,
    )
    .await;
    assert_eq!(t.rec.applied.lock().unwrap().len(), applied + 1);
    let spec = last(&t);
    assert_eq!(spec.id, rid);
    for (n, m) in mtus(&spec) {
        assert_eq!(m, if n == net { 1400 } else { 1500 }, "network {n}");
    }
    // The gateway's network too; a change that leaves the MTU alone applies nothing.
    t.ok(
        "PUT",
        &format!("/v2.0/networks/{ext}"),
        "adm",
        json!({"network": {"mtu": 9000}}),
        200,
    )
    .await;
    assert_eq!(last(&t).gateway.unwrap().port.mtu, 9000);
    let applied = t.rec.applied.lock().unwrap().len();
    for body in [json!({"mtu": 9000}), json!({"name": "renamed"})] {
        t.ok(
            "PUT",
            &format!("/v2.0/networks/{ext}"),
            "adm",
            json!({ "network": body }),
            200,
        )
        .await;
    }
    assert_eq!(t.rec.applied.lock().unwrap().len(), applied);
}

#[tokio::test]
async fn routers_are_legacy_routers() {
    let t = T::new();
    let r = t
        .create(
            "adm",
            "routers",
            json!({"router": {"ha": false, "distributed": "false"}}),
        )
        .await;
    assert_eq!(r["router"]["ha"], false);
    assert_eq!(r["router"]["distributed"], false);
    assert_eq!(r["router"]["status"], "ACTIVE");
    let r = t.create("ta", "routers", json!({"router": {}})).await;
    assert!(
        r["router"].get("ha").is_none(),
        "ha is admin-only in Neutron's policy"
    );
    let rid = id(&r, "router");
    let v = t
        .ok(
            "GET",
            &format!("/v2.0/routers/{rid}"),
            "adm",
            Value::Null,
            200,
        )
        .await;
    assert_eq!(v["router"]["distributed"], false);
    for key in ["ha", "distributed"] {
        let v = t
            .ok(
                "POST",
                "/v2.0/routers",
                "adm",
                json!({"router": {key: true}}),
                400,
            )
            .await;
        assert_eq!(err_type(&v), "BadRequest");
        let v = t
            .ok(
                "POST",
                "/v2.0/routers",
                "ta",
                json!({"router": {key: false}}),
                403,
            )
            .await;
        assert_eq!(err_type(&v), "PolicyNotAuthorized");
        t.ok(
            "PUT",
            &format!("/v2.0/routers/{rid}"),
            "adm",
            json!({"router": {key: true}}),
            400,
        )
        .await;
        t.ok(
            "PUT",
            &format!("/v2.0/routers/{rid}"),
            "adm",
            json!({"router": {key: "maybe"}}),
            400,
        )
        .await;
    }
    let v = t.ok("GET", "/v2.0/routers", "adm", Value::Null, 200).await;
    assert_eq!(v["routers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn discovery_lists_the_standard_attribute_extensions() {
    let t = T::new();
    let v = t
        .ok("GET", "/v2.0/extensions", "ta", Value::Null, 200)
        .await;
    let aliases: Vec<&str> = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alias"].as_str().unwrap())
        .collect();
    for a in [
        "standard-attr-tag",
        "standard-attr-revisions",
        "revision-if-match",
        "standard-attr-timestamp",
        "net-mtu",
        "net-mtu-writable",
        "filter-validation",
    ] {
        assert!(aliases.contains(&a), "{a} in {aliases:?}");
    }
    assert!(!aliases.contains(&"l3-ha") && !aliases.contains(&"dvr"));
}
