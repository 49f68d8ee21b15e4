//! Errors as NeutronErrors, rollback when the realiser fails, list paging, address exhaustion.

use super::*;

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
        .post("ta", "networks", json!({"network": {"bogus": 1}}))
        .await;
    assert_eq!(st, 400);
    assert!(
        v["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains("Unrecognized attribute")
    );
    let (st, v) = t
        .post(
            "ta",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await;
    assert_eq!((st, err_type(&v)), (403, "PolicyNotAuthorized"));
    let nid = t.network("ta", json!({})).await;
    // A CIDR of the other family, and one with host bits set.
    for (version, cidr) in [(6, "10.1.0.0/24"), (4, "10.0.0.1/24")] {
        let body = json!({"subnet": {"network_id": nid, "ip_version": version, "cidr": cidr}});
        let (st, v) = t.post("ta", "subnets", body).await;
        assert_eq!(st, 400, "{v}");
    }
    // Another project's network is invisible.
    t.refused(
        "GET",
        &format!("/v2.0/networks/{nid}"),
        "tb",
        Value::Null,
        (404, "NetworkNotFound"),
    )
    .await;
    let (st, _) = t
        .req(
            "DELETE",
            &format!("/v2.0/networks/{nid}"),
            "tb",
            Value::Null,
        )
        .await;
    assert_eq!(st, 404);
    let v = t.get("/v2.0/networks", "tb").await;
    assert_eq!(v["networks"], json!([]));
    let v = t.get("/v2.0/networks?fields=id&fields=name", "ta").await;
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
    let before = t.get("/v2.0/routers", "ta").await;
    t.rec.fail_routers.store(true, Ordering::SeqCst);
    let v = t
        .refused(
            "POST",
            "/v2.0/routers",
            "ta",
            json!({"router": {"name": "x"}}),
            (500, "HTTPInternalServerError"),
        )
        .await;
    assert!(
        v["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains("injected failure")
    );
    assert_eq!(t.get("/v2.0/routers", "ta").await, before);
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
        t.network("ta", json!({ "name": name })).await;
    }
    let v = t
        .get(
            "/v2.0/networks?sort_key=name&limit=2&fields=name&fields=id",
            "ta",
        )
        .await;
    assert_eq!(names(&v, "networks", "name"), ["a", "b"]);
    assert_eq!(v["networks_links"][0]["rel"], "next");
    let v = t.next_page(&v, "networks", "ta").await;
    assert_eq!(names(&v, "networks", "name"), ["c"]);
    assert!(v.get("networks_links").is_none());
    let v = t
        .get("/v2.0/networks?sort_key=name&sort_dir=desc", "ta")
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

#[tokio::test]
async fn a_full_network_refuses_new_ports() {
    let t = T::new();
    let nid = t.network("ta", json!({})).await;
    let s = t.subnet("ta", &nid, "10.9.9.0/30").await;
    assert_eq!(
        s["subnet"]["allocation_pools"],
        json!([{"start": "10.9.9.2", "end": "10.9.9.2"}])
    );
    let p = t
        .create("ta", "ports", json!({"port": {"network_id": nid}}))
        .await;
    assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "10.9.9.2");
    t.refused(
        "POST",
        "/v2.0/ports",
        "ta",
        json!({"port": {"network_id": nid}}),
        (409, "IpAddressGenerationFailure"),
    )
    .await;
    // Explicitly no address is still allowed.
    t.create(
        "ta",
        "ports",
        json!({"port": {"network_id": nid, "fixed_ips": []}}),
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_is_read_again_only_after_a_commit() {
    let t = T::new();
    let networks = |c: &Connection| -> Result<i64, Fault> {
        Ok(c.query_row("SELECT COUNT(*) FROM networks", [], |r| r.get(0))?)
    };
    let first = t.state.read_if_changed(None, networks).unwrap();
    t.get("/v2.0/networks", "ta").await;
    let again = t
        .state
        .read_if_changed(Some(first.clone()), networks)
        .unwrap();
    assert!(
        Arc::ptr_eq(&first.value, &again.value),
        "nothing committed (a read commits nothing): the same snapshot"
    );
    t.network("ta", json!({})).await;
    let after = t.state.read_if_changed(Some(again), networks).unwrap();
    assert_eq!(
        (*first.value, *after.value),
        (0, 1),
        "read again after the commit"
    );
}
