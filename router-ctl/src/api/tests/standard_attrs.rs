//! Standard attributes: tags, revision numbers and If-Match, timestamps, filter validation,
//! network MTU, the discovered extensions.

use super::*;

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
        .refused(
            "GET",
            &format!("{base}/blue"),
            "ta",
            Value::Null,
            (404, "TagNotFound"),
        )
        .await;
    assert_eq!(v["NeutronError"]["message"], "Tag blue could not be found.");
    // Adding a tag twice is no error and no second copy.
    t.ok("PUT", &format!("{base}/red"), "ta", Value::Null, 201)
        .await;
    let v = t.get(&base, "ta").await;
    assert_eq!(v, json!({"tags": ["red"]}));

    let v = t
        .ok("PUT", &base, "ta", json!({"tags": ["b", "a"]}), 200)
        .await;
    assert_eq!(v, json!({"tags": ["b", "a"]}));
    let v = t.get(&format!("/v2.0/networks/{nid}"), "ta").await;
    assert_eq!(v["network"]["tags"], json!(["a", "b"]));
    let v = t
        .ok("POST", &base, "ta", json!({"tags": ["c", "a"]}), 201)
        .await;
    assert_eq!(v, json!({"tags": ["c", "a"]}));
    let v = t.get(&base, "ta").await;
    assert_eq!(v, json!({"tags": ["a", "b", "c"]}));

    t.ok("DELETE", &format!("{base}/a"), "ta", Value::Null, 204)
        .await;
    t.refused(
        "DELETE",
        &format!("{base}/a"),
        "ta",
        Value::Null,
        (404, "TagNotFound"),
    )
    .await;
    t.ok("DELETE", &base, "ta", Value::Null, 204).await;
    let v = t.get(&base, "ta").await;
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
    t.refused(
        "PUT",
        &format!("{base}/{long}"),
        "ta",
        Value::Null,
        (400, "InvalidInput"),
    )
    .await;
    let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    t.refused(
        "PUT",
        &base,
        "ta",
        json!({"tags": many}),
        (400, "BadRequest"),
    )
    .await;
    let v = t.get(&base, "ta").await;
    assert_eq!(v, json!({"tags": []}), "rejected requests changed nothing");

    // Others' resources: invisible is 404, visible but not owned is 403.
    t.refused(
        "PUT",
        &format!("{base}/x"),
        "tb",
        Value::Null,
        (404, "NetworkNotFound"),
    )
    .await;
    let ext_id = t.network("adm", json!({"router:external": true})).await;
    let path = format!("/v2.0/networks/{ext_id}/tags");
    t.get(&path, "tb").await;
    t.refused(
        "PUT",
        &format!("{path}/x"),
        "tb",
        Value::Null,
        (403, "PolicyNotAuthorized"),
    )
    .await;
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
    let ext_id = t.external_network().await;
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
        let v = t.get(&format!("/v2.0/{coll}/{rid}"), "ta").await;
        assert!(v[kind]["tags"].as_array().unwrap().contains(&json!("blue")));
        assert_eq!(v[kind]["revision_number"], 1, "a tag change revises {coll}");
        let v = t.get(&format!("/v2.0/{coll}?tags=blue"), "ta").await;
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
    let s = t.subnet("ta", &nid, "10.0.0.0/24").await;
    let v = t.get(&path, "ta").await;
    assert_eq!(v["network"]["revision_number"], 2);

    // The same rename under a stale revision (refused) and the current one.
    let rename = json!({"network": {"name": "b"}});
    let (st, v) = if_match(&t, "PUT", &path, "revision_number=1", rename.clone()).await;
    assert_eq!(st, 412, "{v}");
    assert_eq!(err_type(&v), "RevisionNumberConstraintFailed");
    assert_eq!(
        v["NeutronError"]["message"],
        "Constrained to 1, but current revision is 2"
    );
    let v = t.get(&path, "ta").await;
    assert_eq!(
        v["network"]["name"], "a",
        "a failed constraint changes nothing"
    );
    let (st, v) = if_match(&t, "PUT", &path, "revision_number=2", rename).await;
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
    t.router_interface(&rid, "add", &id(&s, "subnet"), 200)
        .await;
    let v = t.get(&rpath, "ta").await;
    assert_eq!(v["router"]["revision_number"], 1);
    let (st, _) = if_match(&t, "DELETE", &rpath, "revision_number=0", Value::Null).await;
    assert_eq!(st, 412);
    let ext_id = t.external_network().await;
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
    t.get(&rpath, "ta").await;

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
    let v = t.get(&path, "ta").await;
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
        let v = t.get(&q(filter), "ta").await;
        assert_eq!(names(&v, "networks", "name"), want, "{filter}");
    }
    let v = t
        .get("/v2.0/networks?changed_since=2000-01-01T00:00:00", "ta")
        .await;
    assert_eq!(v["networks"].as_array().unwrap().len(), 4);
    let v = t
        .get("/v2.0/networks?changed_since=2999-01-01T00:00:00Z", "ta")
        .await;
    assert_eq!(v["networks"], json!([]));
    t.refused(
        "GET",
        "/v2.0/networks?changed_since=yesterday",
        "ta",
        Value::Null,
        (400, "InvalidInput"),
    )
    .await;
}

#[tokio::test]
async fn unknown_filters_are_refused_and_full_pages_link_on() {
    let t = T::new();
    for name in ["a", "b"] {
        t.network("ta", json!({ "name": name })).await;
    }
    let v = t
        .refused(
            "GET",
            "/v2.0/networks?bogus=1",
            "ta",
            Value::Null,
            (400, "HTTPBadRequest"),
        )
        .await;
    assert_eq!(
        v["NeutronError"]["message"],
        "['bogus'] is invalid attribute for filtering"
    );
    // Neutron does not filter routers on status, nor port forwardings on tags.
    t.ok("GET", "/v2.0/routers?status=ACTIVE", "ta", Value::Null, 400)
        .await;
    t.get("/v2.0/routers?name=x&tags=y", "ta").await;
    t.get("/v2.0/networks?mtu=1500&revision_number=0", "ta")
        .await;
    t.get("/v2.0/ports?device_id=x&fields=id", "ta").await;

    let v = t.get("/v2.0/networks?sort_key=name&limit=2", "ta").await;
    assert_eq!(names(&v, "networks", "name"), ["a", "b"]);
    // A full page links on.
    let v = t.next_page(&v, "networks", "ta").await;
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
            .post("ta", "networks", json!({"network": {"mtu": bad}}))
            .await;
        assert_eq!(st, 400, "{bad}");
    }
    let v = t.get(&path, "ta").await;
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
async fn discovery_lists_the_standard_attribute_extensions() {
    let t = T::new();
    let v = t.get("/v2.0/extensions", "ta").await;
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
