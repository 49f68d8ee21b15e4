//! Floating IPs and port forwardings through the shared resource table: sorting and paging.

use super::*;

#[tokio::test]
async fn floatingips_and_port_forwardings_sort_and_paginate() {
    let t = T::new();
    let ext_id = t
        .network("adm", json!({"name": "public", "router:external": true}))
        .await;
    let body = json!({"subnet": {"network_id": ext_id, "ip_version": 4, "cidr": "192.0.2.0/24"}});
    t.create("adm", "subnets", body).await;
    let net_id = t.network("ta", json!({"name": "private"})).await;
    let body = json!({"subnet": {"network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/24"}});
    let sub_id = id(&t.create("ta", "subnets", body).await, "subnet");
    let body = json!({"router": {"external_gateway_info": {"network_id": ext_id}}});
    let rid = id(&t.create("ta", "routers", body).await, "router");
    t.router_interface(&rid, "add", &sub_id, 200).await;
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
    let v = t.get(q, "ta").await;
    assert_eq!(names(&v, "floatingips", "description"), ["a", "b"]);
    assert_eq!(v["floatingips_links"][0]["rel"], "next");
    let v = t.next_page(&v, "floatingips", "ta").await;
    assert_eq!(names(&v, "floatingips", "description"), ["c"]);
    assert!(v.get("floatingips_links").is_none());
    let q = "/v2.0/floatingips?sort_key=description&sort_dir=desc";
    let v = t.get(q, "ta").await;
    assert_eq!(names(&v, "floatingips", "description"), ["c", "b", "a"]);
    let q = format!("/v2.0/floatingips?sort_key=description&marker={}", fips[1]);
    let v = t.get(&q, "ta").await;
    assert_eq!(names(&v, "floatingips", "description"), ["b", "c"]);
    let q = "/v2.0/floatingips?marker=00000000-0000-0000-0000-000000000000";
    t.refused("GET", q, "ta", Value::Null, (404, "FloatingIPNotFound"))
        .await;

    let pfs = format!("/v2.0/floatingips/{}/port_forwardings", fips[0]);
    for (ext_port, desc) in [(3000, "z"), (1000, "x"), (2000, "y")] {
        let body = json!({"port_forwarding": {"protocol": "tcp", "external_port": ext_port,
            "internal_port": ext_port + 1, "internal_port_id": vm_id, "description": desc}});
        t.ok("POST", &pfs, "ta", body, 201).await;
    }
    let q = format!("{pfs}?sort_key=external_port&limit=2");
    let v = t.get(&q, "ta").await;
    assert_eq!(names(&v, "port_forwardings", "description"), ["x", "y"]);
    let next = v["port_forwardings_links"][0]["href"].as_str().unwrap();
    let next = &next[next.find("/v2.0").unwrap()..];
    assert!(next.starts_with(&format!("{pfs}?")), "{next}");
    let v = t.get(next, "ta").await;
    assert_eq!(names(&v, "port_forwardings", "description"), ["z"]);
    let q = format!("{pfs}?sort_key=external_port&sort_dir=desc&fields=description");
    let v = t.get(&q, "ta").await;
    assert_eq!(
        v["port_forwardings"],
        json!([{"description": "z"}, {"description": "y"}, {"description": "x"}])
    );
    let q = format!("{pfs}?marker=00000000-0000-0000-0000-000000000000");
    t.refused(
        "GET",
        &q,
        "ta",
        Value::Null,
        (404, "PortForwardingNotFound"),
    )
    .await;
    // Another project sees neither the floating IP nor its forwardings.
    t.refused("GET", &pfs, "tb", Value::Null, (404, "FloatingIPNotFound"))
        .await;
}
