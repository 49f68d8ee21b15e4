//! Routers: the external gateway, interfaces, extra routes, legacy (non-HA, centralised) routers.

use super::*;

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

    let net_id = t.network("ta", json!({"name": "private"})).await;
    let s = t.subnet("ta", &net_id, "10.0.0.0/24").await;
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
    t.router_interface(&rid, "add", &sub_id, 409).await;
    t.refused(
        "DELETE",
        &format!("/v2.0/routers/{rid}"),
        "ta",
        Value::Null,
        (409, "RouterInUse"),
    )
    .await;

    // Non-admin may set the gateway but not enable_snat.
    t.refused(
        "PUT",
        &format!("/v2.0/routers/{rid}.json"),
        "ta",
        json!({"router": {"external_gateway_info": {"network_id": ext_id, "enable_snat": false}}}),
        (403, "PolicyNotAuthorized"),
    )
    .await;
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

    t.router_interface(&rid, "remove", &sub_id, 200).await;
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

/// An external network 192.0.2.0/24 and a router `ta` owns with an interface on 10.0.0.0/24
/// and one on 10.1.0.0/24: (router id, external network id, the two subnet ids).
async fn routed_router(t: &T) -> (String, String, [String; 2]) {
    let ext = t.external_network().await;
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
        t.router_interface(&rid, "add", &sid, 200).await;
        subs.push(sid);
    }
    (rid, ext, [subs[0].clone(), subs[1].clone()])
}

#[tokio::test]
async fn extra_routes_follow_neutron() {
    let t = T::new();
    let (rid, _, [sub_a, sub_b]) = routed_router(&t).await;
    let path = format!("/v2.0/routers/{rid}");
    let r = t.get(&path, "ta").await;
    assert_eq!(r["router"]["routes"], json!([]));

    // POST may not carry routes.
    let (st, v) = t
        .post("ta", "routers", json!({"router": {"routes": []}}))
        .await;
    assert_eq!((st, err_type(&v)), (400, "HTTPBadRequest"), "{v}");

    let route = |d: &str, n: &str| json!({"destination": d, "nexthop": n});
    let put = |routes: Value| json!({"router": {"routes": routes}});
    let before = t.get(&path, "ta").await["router"]["revision_number"]
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

    // Each refusal: a 400 of its Neutron type, and nothing stored or realised.
    for (routes, kind) in [
        (json!([route("172.17.0.0/24", "10.9.0.5")]), "InvalidRoutes"),
        (json!([route("172.17.0.0/24", "10.1.0.1")]), "InvalidRoutes"),
        (json!([route("10.0.0.128/25", "10.1.0.5")]), "InvalidRoutes"),
        (
            json!([route("172.17.0.1/24", "10.1.0.5")]),
            "HTTPBadRequest",
        ),
        (json!([route("172.17.0.0/24", "nope")]), "HTTPBadRequest"),
        (json!([route("fd00::/64", "10.1.0.5")]), "HTTPBadRequest"),
        (json!([route("0.0.0.0/0", "10.1.0.5")]), "HTTPBadRequest"),
        (json!([route("127.0.0.0/8", "10.1.0.5")]), "HTTPBadRequest"),
        (json!([{"destination": "172.17.0.0/24"}]), "HTTPBadRequest"),
        (
            json!([
                route("172.17.0.0/24", "10.1.0.5"),
                route("172.17.0.0/24", "10.1.0.5")
            ]),
            "HTTPBadRequest",
        ),
        (json!("x"), "HTTPBadRequest"),
    ] {
        let (st, v) = t.req("PUT", &path, "ta", put(routes.clone())).await;
        assert_eq!((st, err_type(&v)), (400, kind), "{routes}: {v}");
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
    let r = t.get(&path, "ta").await;
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
    t.refused(
        "PUT",
        &add,
        "ta",
        put(json!([route("172.19.0.0/16", "10.7.0.7")])),
        (400, "InvalidRoutes"),
    )
    .await;

    // An interface a nexthop needs stays; the other one goes.
    let v = t.router_interface(&rid, "remove", &sub_b, 409).await;
    assert_eq!(err_type(&v), "RouterInterfaceInUseByRoute", "{v}");
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
    t.router_interface(&rid, "remove", &sub_b, 200).await;
    t.router_interface(&rid, "remove", &sub_a, 409).await;

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
    let v = t
        .refused(
            "PUT",
            &path,
            "ta",
            json!({"router": {"routes": routes}}),
            (400, "RoutesExhausted"),
        )
        .await;
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
    t.refused(
        "PUT",
        &path,
        "ta",
        json!({"router": {"external_gateway_info": null}}),
        (400, "InvalidRoutes"),
    )
    .await;
    let r = t.get(&path, "ta").await;
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
    let path = format!("/v2.0/routers/{rid}");
    let v = t.get(&path, "adm").await;
    assert_eq!(v["router"]["distributed"], false);
    // (method, path, token, the value asked for, the status and error type wanted)
    let refusals = [
        (
            "POST",
            "/v2.0/routers",
            "adm",
            json!(true),
            (400, Some("BadRequest")),
        ),
        (
            "POST",
            "/v2.0/routers",
            "ta",
            json!(false),
            (403, Some("PolicyNotAuthorized")),
        ),
        ("PUT", path.as_str(), "adm", json!(true), (400, None)),
        ("PUT", path.as_str(), "adm", json!("maybe"), (400, None)),
    ];
    for key in ["ha", "distributed"] {
        for (method, path, token, value, (status, kind)) in &refusals {
            let body = json!({"router": {key: value}});
            let (st, v) = t.req(method, path, token, body).await;
            assert_eq!(st, *status, "{method} {path} {key}={value}: {v}");
            if let Some(kind) = kind {
                assert_eq!(err_type(&v), *kind, "{method} {path} {key}={value}");
            }
        }
    }
    let v = t.get("/v2.0/routers", "adm").await;
    assert_eq!(v["routers"].as_array().unwrap().len(), 2);
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
    let s = t.get(&format!("/v2.0/subnets/{sub}"), "ta").await;
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
