//! Contract tests of `/v2.0/floatingips` and `/v2.0/floatingips/{id}/port_forwardings` against
//! a real daemon (own host namespace, state dir and bpffs): Neutron's fields and defaults,
//! 400/403/404/409 with Neutron's error types, project isolation, and what other resources do
//! to floating IPs (port delete disassociates, a gateway in use cannot be cleared).

use serde_json::{Value, json};
use tests::{
    Netns,
    daemon::{ApiClient, Daemon, expect, expect_err},
};

fn create(c: &ApiClient, coll: &str, kind: &str, body: Value) -> Value {
    expect(
        c.post(&format!("/v2.0/{coll}"), &json!({ kind: body })),
        201,
    )[kind]
        .clone()
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

struct World {
    alice: ApiClient,
    bob: ApiClient,
    admin: ApiClient,
    ext: String,
    router: String,
    /// Alice's port behind the router, and one on a network no router reaches.
    p1: Value,
    p_far: Value,
    _d: Daemon,
    _host: Netns,
}

/// A network `name` with an IPv4 subnet on `cidr`; returns their ids.
fn network(c: &ApiClient, name: &str, cidr: &str) -> (String, String) {
    let net = id(&create(c, "networks", "network", json!({"name": name})));
    let sub = id(&create(
        c,
        "subnets",
        "subnet",
        json!({"network_id": net, "ip_version": 4, "cidr": cidr}),
    ));
    (net, sub)
}

fn world() -> World {
    let host = Netns::new("afh");
    let d = Daemon::start_with_projects(&host);
    let admin = d.client_as(Some("admin-secret"));
    let alice = d.client_as(Some("alice-secret"));
    let bob = d.client_as(Some("bob-secret"));
    let ext = id(&create(
        &admin,
        "networks",
        "network",
        json!({"name": "public", "router:external": true}),
    ));
    create(
        &admin,
        "subnets",
        "subnet",
        json!({"network_id": ext, "ip_version": 4, "cidr": "198.51.100.0/24",
               "allocation_pools": [{"start": "198.51.100.10", "end": "198.51.100.14"}]}),
    );
    let (net, sub) = network(&alice, "a", "10.61.0.0/24");
    let (far, _) = network(&alice, "far", "10.62.0.0/24");
    let router = id(&create(
        &alice,
        "routers",
        "router",
        json!({"name": "r", "external_gateway_info": {"network_id": ext}}),
    ));
    expect(
        alice.put(
            &format!("/v2.0/routers/{router}/add_router_interface"),
            &json!({"subnet_id": sub}),
        ),
        200,
    );
    let p1 = create(&alice, "ports", "port", json!({"network_id": net}));
    let p_far = create(&alice, "ports", "port", json!({"network_id": far}));
    World {
        alice,
        bob,
        admin,
        ext,
        router,
        p1,
        p_far,
        _d: d,
        _host: host,
    }
}

#[test]
fn floatingips_crud_errors_and_isolation() {
    let w = world();
    let (a, b) = (&w.alice, &w.bob);
    let fips = "/v2.0/floatingips";

    // Create: from the pool, unassociated, Neutron's fields.
    let f = create(
        a,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext}),
    );
    let fid = id(&f);
    assert_eq!(f["status"], "DOWN");
    assert_eq!(f["floating_network_id"], w.ext.as_str());
    assert_eq!(f["project_id"], "alice");
    assert_eq!(f["tenant_id"], "alice");
    assert!(f["router_id"].is_null() && f["port_id"].is_null() && f["fixed_ip_address"].is_null());
    let addr = f["floating_ip_address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(addr.starts_with("198.51.100.1"), "{addr}");
    // Its address is held by a port of the external network.
    let ports = expect(w.admin.get(&format!("/v2.0/ports?device_id={fid}")), 200);
    let fport = &ports["ports"][0];
    assert_eq!(fport["device_owner"], "network:floatingip", "{ports}");
    expect_err(
        w.admin.delete(&format!("/v2.0/ports/{}", id(fport))),
        409,
        "L3PortInUse",
    );

    // Bad requests.
    expect_err(
        a.post(fips, &json!({"floatingip": {}})),
        400,
        "HTTPBadRequest",
    );
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": w.ext, "bogus": 1}}),
        ),
        400,
        "HTTPBadRequest",
    );
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": "not-a-uuid"}}),
        ),
        400,
        "HTTPBadRequest",
    );
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": w.p1["network_id"]}}),
        ),
        400,
        "HTTPBadRequest",
    );
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": "9b3c8f2e-0000-4000-8000-000000000000"}}),
        ),
        404,
        "NetworkNotFound",
    );
    // Choosing the address is for admins; taken addresses are refused.
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": w.ext, "floating_ip_address": "198.51.100.14"}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    let chosen = create(
        &w.admin,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext, "floating_ip_address": "198.51.100.14"}),
    );
    assert_eq!(chosen["floating_ip_address"], "198.51.100.14");
    expect_err(
        w.admin.post(
            fips,
            &json!({"floatingip": {"floating_network_id": w.ext, "floating_ip_address": "198.51.100.14"}}),
        ),
        409,
        "IpAddressInUse",
    );

    // Association needs a router between the port's subnet and the external network.
    let item = format!("{fips}/{fid}");
    expect_err(
        a.put(&item, &json!({"floatingip": {"port_id": w.p_far["id"]}})),
        409,
        "ExternalGatewayForFloatingIPNotFound",
    );
    expect_err(
        a.put(
            &item,
            &json!({"floatingip": {"port_id": w.p1["id"], "fixed_ip_address": "10.61.0.250"}}),
        ),
        400,
        "HTTPBadRequest",
    );
    let f = expect(
        a.put(&item, &json!({"floatingip": {"port_id": w.p1["id"]}})),
        200,
    )["floatingip"]
        .clone();
    assert_eq!(f["status"], "ACTIVE");
    assert_eq!(f["router_id"], w.router.as_str());
    assert_eq!(f["port_id"], w.p1["id"]);
    assert_eq!(f["fixed_ip_address"], w.p1["fixed_ips"][0]["ip_address"]);
    // One fixed IP, one floating IP.
    expect_err(
        a.post(
            fips,
            &json!({"floatingip": {"floating_network_id": w.ext, "port_id": w.p1["id"]}}),
        ),
        409,
        "FloatingIPPortAlreadyAssociated",
    );
    // The interface it needs cannot be removed.
    let sub = w.p1["fixed_ips"][0]["subnet_id"].clone();
    expect_err(
        a.put(
            &format!("/v2.0/routers/{}/remove_router_interface", w.router),
            &json!({ "subnet_id": sub }),
        ),
        409,
        "RouterInterfaceInUseByFloatingIP",
    );
    // The gateway it needs cannot be cleared.
    expect_err(
        a.put(
            &format!("/v2.0/routers/{}", w.router),
            &json!({"router": {"external_gateway_info": {}}}),
        ),
        409,
        "RouterExternalGatewayInUseByFloatingIp",
    );

    // Another project sees nothing and can touch nothing.
    assert_eq!(expect(b.get(fips), 200)["floatingips"], json!([]));
    expect_err(b.get(&item), 404, "FloatingIPNotFound");
    expect_err(
        b.put(&item, &json!({"floatingip": {"port_id": null}})),
        404,
        "FloatingIPNotFound",
    );
    expect_err(b.delete(&item), 404, "FloatingIPNotFound");
    let bf = create(
        b,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext}),
    );
    expect_err(
        b.put(
            &format!("{fips}/{}", id(&bf)),
            &json!({"floatingip": {"port_id": w.p1["id"]}}),
        ),
        404,
        "PortNotFound",
    );
    // Filters and fields.
    let v = expect(
        a.get(&format!(
            "{fips}?port_id={}&fields=id",
            w.p1["id"].as_str().expect("id")
        )),
        200,
    );
    assert_eq!(v["floatingips"], json!([{"id": fid}]));

    // Pool exhausted: 5 addresses (router gateway, alice, admin, bob, one more).
    create(
        a,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext}),
    );
    expect_err(
        a.post(fips, &json!({"floatingip": {"floating_network_id": w.ext}})),
        409,
        "IpAddressGenerationFailure",
    );

    // Disassociate, re-associate, then delete the port: the association goes with it.
    let f =
        expect(a.put(&item, &json!({"floatingip": {"port_id": null}})), 200)["floatingip"].clone();
    assert_eq!(f["status"], "DOWN");
    assert!(f["router_id"].is_null() && f["fixed_ip_address"].is_null());
    expect(
        a.put(&item, &json!({"floatingip": {"port_id": w.p1["id"]}})),
        200,
    );
    expect(a.delete(&format!("/v2.0/ports/{}", id(&w.p1))), 204);
    let f = expect(a.get(&item), 200)["floatingip"].clone();
    assert!(f["port_id"].is_null() && f["router_id"].is_null(), "{f}");

    // Delete: gone, with its port; the address can be taken again.
    expect(a.delete(&item), 204);
    expect_err(a.get(&item), 404, "FloatingIPNotFound");
    expect_err(a.delete(&item), 404, "FloatingIPNotFound");
    let again = create(
        &w.admin,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext, "floating_ip_address": addr}),
    );
    assert_eq!(again["floating_ip_address"], addr.as_str());
    // Now the gateway is free to go.
    expect(
        a.put(
            &format!("/v2.0/routers/{}", w.router),
            &json!({"router": {"external_gateway_info": {}}}),
        ),
        200,
    );
}

#[test]
fn port_forwardings_crud_and_conflicts() {
    let w = world();
    let a = &w.alice;
    let f = create(
        a,
        "floatingips",
        "floatingip",
        json!({"floating_network_id": w.ext}),
    );
    let fid = id(&f);
    let coll = format!("/v2.0/floatingips/{fid}/port_forwardings");
    let p1 = id(&w.p1);
    let pf = |body: Value| a.post(&coll, &json!({ "port_forwarding": body }));

    let created = expect(
        pf(json!({"protocol": "tcp", "external_port": 2222, "internal_port_id": p1, "internal_port": 22})),
        201,
    )["port_forwarding"]
        .clone();
    assert_eq!(
        created["internal_ip_address"],
        w.p1["fixed_ips"][0]["ip_address"]
    );
    assert_eq!(created["external_port"], 2222);
    let pid = id(&created);
    let f = expect(a.get(&format!("/v2.0/floatingips/{fid}")), 200)["floatingip"].clone();
    assert_eq!(f["router_id"], w.router.as_str(), "{f}");
    assert_eq!(f["status"], "ACTIVE");

    // Duplicates.
    expect_err(
        pf(
            json!({"protocol": "tcp", "external_port": 2222, "internal_port_id": p1, "internal_port": 80}),
        ),
        409,
        "DuplicatePortForwarding",
    );
    expect_err(
        pf(
            json!({"protocol": "tcp", "external_port": 2223, "internal_port_id": p1, "internal_port": 22}),
        ),
        409,
        "DuplicatePortForwarding",
    );
    // Same ports, other protocol: fine.
    expect(
        pf(
            json!({"protocol": "udp", "external_port": 2222, "internal_port_id": p1, "internal_port": 22}),
        ),
        201,
    );
    // Bad input.
    for body in [
        json!({"protocol": "icmp", "external_port": 1, "internal_port_id": p1, "internal_port": 1}),
        json!({"protocol": "tcp", "external_port": 0, "internal_port_id": p1, "internal_port": 1}),
        json!({"protocol": "tcp", "external_port": 70000, "internal_port_id": p1, "internal_port": 1}),
        json!({"protocol": "tcp", "external_port": 10, "internal_port_id": p1}),
        json!({"protocol": "tcp", "external_port": 10, "internal_port_id": p1, "internal_port": 1, "x": 1}),
        json!({"protocol": "tcp", "external_port": 10, "internal_port_id": p1, "internal_port": 1,
               "internal_ip_address": "10.61.0.250"}),
    ] {
        let (st, v) = pf(body.clone());
        assert_eq!(st, 400, "{body} → {v}");
    }
    // A port no router connects to this external network.
    expect_err(
        pf(
            json!({"protocol": "tcp", "external_port": 10, "internal_port_id": id(&w.p_far), "internal_port": 1}),
        ),
        409,
        "ExternalGatewayForFloatingIPNotFound",
    );
    // A floating IP with forwardings cannot be associated.
    expect_err(
        a.put(
            &format!("/v2.0/floatingips/{fid}"),
            &json!({"floatingip": {"port_id": p1}}),
        ),
        409,
        "FloatingIPPortForwardingConflict",
    );
    // Not found / other project.
    expect_err(w.bob.get(&coll), 404, "FloatingIPNotFound");
    expect_err(
        w.bob.post(&coll, &json!({"port_forwarding": {"protocol": "tcp", "external_port": 5, "internal_port_id": p1, "internal_port": 5}})),
        404,
        "FloatingIPNotFound",
    );
    expect_err(
        a.get(&format!("{coll}/9b3c8f2e-0000-4000-8000-000000000000")),
        404,
        "PortForwardingNotFound",
    );
    // List, show, update (into a duplicate: refused), delete.
    let list = expect(a.get(&coll), 200)["port_forwardings"].clone();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let item = format!("{coll}/{pid}");
    assert_eq!(
        expect(a.get(&item), 200)["port_forwarding"]["id"],
        pid.as_str()
    );
    let up = expect(
        a.put(&item, &json!({"port_forwarding": {"internal_port": 2022}})),
        200,
    );
    assert_eq!(up["port_forwarding"]["internal_port"], 2022);
    expect(
        pf(
            json!({"protocol": "tcp", "external_port": 3333, "internal_port_id": p1, "internal_port": 3022}),
        ),
        201,
    );
    expect_err(
        a.put(&item, &json!({"port_forwarding": {"internal_port": 3022}})),
        409,
        "DuplicatePortForwarding",
    );
    expect(a.delete(&item), 204);
    expect_err(a.delete(&item), 404, "PortForwardingNotFound");
    // Deleting the internal port removes its forwardings.
    expect(a.delete(&format!("/v2.0/ports/{p1}")), 204);
    assert_eq!(expect(a.get(&coll), 200)["port_forwardings"], json!([]));
    let f = expect(a.get(&format!("/v2.0/floatingips/{fid}")), 200)["floatingip"].clone();
    assert!(f["router_id"].is_null(), "{f}");
    let _ = &w.admin;
}
