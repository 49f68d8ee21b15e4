//! Property test: random bodies never cause a 500, and a rejected request changes nothing.

use super::*;

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
            Just("fd00:1::/64"),
            Just("2001:db8::/32"),
            Just("fd00:1::1"),
            Just("::ffff:0:0/96"),
            Just("slaac"),
            Just("dhcpv6-stateful"),
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
        Just("ipv6_ra_mode"),
        Just("ipv6_address_mode"),
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
        let net = t.network("adm", json!({"router:external": true})).await;
        let s = t.subnet("adm", &net, "10.0.0.0/24").await;
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
