//! The API's vocabulary for property tests: arbitrary JSON made of the attribute names and
//! values the API knows, so that random bodies get past parsing into deep validation. Shared by
//! the API's unit property test and the privileged contract test against a running daemon
//! (feature `fuzz`), so both explore the same space.

use proptest::prelude::*;
use serde_json::{Value, json};

/// Attribute names of the API's resources (and one it does not know).
const KEYS: &[&str] = &[
    "name",
    "admin_state_up",
    "router:external",
    "shared",
    "network_id",
    "subnet_id",
    "port_id",
    "project_id",
    "tenant_id",
    "provider:physical_network",
    "ip_version",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "cidr",
    "gateway_ip",
    "allocation_pools",
    "start",
    "end",
    "fixed_ips",
    "ip_address",
    "mac_address",
    "external_gateway_info",
    "enable_snat",
    "external_fixed_ips",
    "dns_nameservers",
    "routes",
    "destination",
    "nexthop",
    "mtu",
    "tags",
    "ha",
    "distributed",
    "revision_number",
    "bogus",
];

/// Values that mean something to validation: prefixes and addresses of both families (valid,
/// reserved, overlapping), an IP version, an id, a MAC, IPv6 modes, a boolean as a string.
const VALUES: &[&str] = &[
    "10.0.0.0/24",
    "10.0.0.1",
    "10.0.0.0/31",
    "192.0.2.0/24",
    "4",
    "fd00::/64",
    "10.0.0.5",
    "10.9.0.0/16",
    "0.0.0.0/0",
    "127.0.0.0/8",
    "00000000-0000-0000-0000-000000000000",
    "fa:16:3e:00:00:01",
    "fd00:1::/64",
    "2001:db8::/32",
    "fd00:1::1",
    "::ffff:0:0/96",
    "slaac",
    "dhcpv6-stateful",
    "true",
];

/// Arbitrary JSON up to three levels deep whose leaves are scalars or [`VALUES`] and whose
/// objects are keyed by [`KEYS`].
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9:./ =-]{0,12}".prop_map(Value::String),
        prop::sample::select(VALUES).prop_map(|s| json!(s)),
    ];
    let keys = prop::sample::select(KEYS).prop_map(str::to_string);
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A runner of `cases` random cases that leaves no persistence file behind (a failure is
/// reported with its input in the panic).
pub fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// A request a property test sends: method, path, and the resource key its body is wrapped
/// under (empty: the body goes as it is).
pub type Target = (&'static str, String, &'static str);

/// The requests every API property test sends, against an existing network `net`, subnet
/// `sub` and router `router`: create and update of each resource, and the router's interface
/// actions.
pub fn targets(net: &str, sub: &str, router: &str) -> Vec<Target> {
    vec![
        ("POST", "/v2.0/networks".into(), "network"),
        ("POST", "/v2.0/subnets".into(), "subnet"),
        ("POST", "/v2.0/ports".into(), "port"),
        ("POST", "/v2.0/routers".into(), "router"),
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
    ]
}

/// The body sent to `target`: `body` under the target's resource key when `wrap` (the usual
/// envelope, so the attributes get validated), else bare (the envelope check itself).
pub fn body_for(target: &Target, body: Value, wrap: bool) -> Value {
    let key = target.2;
    if wrap && !key.is_empty() {
        json!({ key: body })
    } else {
        body
    }
}
