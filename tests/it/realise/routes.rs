//! Extra routes (`RouterSpec::routes`) in the router namespace against the real kernel: added
//! in the pass that makes their nexthop's device (from scratch and after a namespace was lost),
//! one per destination, stale ones the daemon owns (static, via a gateway, not the default)
//! removed, none while the router is down, and the default, connected and hand-made routes
//! left as they were.

use router_ctl::model::spec::{
    DesiredState, GatewaySpec, NetworkSpec, PortSpec, RouteSpec, RouterSpec, names,
};
use tests::{RealiserHost, ip_json, unique};

fn port(network: &NetworkSpec, m: u8, ip: &str, prefix: u8) -> PortSpec {
    PortSpec {
        port_id: unique("p"),
        network_id: network.id.clone(),
        mac: [0xfa, 0x16, 0x3e, 0x56, 0x78, m],
        addresses: vec![format!("{ip}/{prefix}").parse().expect("address")],
        mtu: 1500,
        ra_prefixes: vec![],
    }
}

fn route(destination: &str, nexthop: &str) -> RouteSpec {
    RouteSpec {
        destination: destination.parse().expect("destination"),
        nexthop: nexthop.parse().expect("nexthop"),
    }
}

/// IPv4 routes of the main table with a gateway, as `dst via gw`, sorted.
fn via_routes(ns: &str) -> Vec<String> {
    let mut out: Vec<String> = ip_json(ns, &["-4", "route", "show"])
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["gateway"].is_string())
        .map(|r| {
            format!(
                "{} via {}",
                r["dst"].as_str().expect("dst"),
                r["gateway"].as_str().expect("gateway")
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn extra_routes_converge_in_the_router_namespace() {
    let h = RealiserHost::new(&[]);
    let [ext, a, b] = h.networks([true, false, false]);
    let mut spec = RouterSpec {
        id: unique("r"),
        dp_id: 1,
        admin_state_up: true,
        interfaces: vec![port(&a, 1, "10.71.0.1", 24), port(&b, 2, "10.72.0.1", 24)],
        gateway: Some(GatewaySpec {
            port: port(&ext, 3, "203.0.113.10", 24),
            next_hops: vec!["203.0.113.1".parse().expect("next hop")],
            enable_snat: true,
        }),
        floating_ips: vec![],
        port_forwardings: vec![],
        routes: vec![
            route("172.31.0.0/24", "10.72.0.5"),
            route("172.30.0.0/16", "203.0.113.7"),
            // A second nexthop for one destination: the first one listed wins.
            route("172.31.0.0/24", "10.71.0.9"),
            // A connected network stays the kernel's.
            route("10.71.0.0/24", "10.72.0.5"),
        ],
    };
    let ns = names::router_netns(&spec.id);
    let default = "default via 203.0.113.1".to_string();
    let want = |extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.push(default.clone());
        v.sort();
        v
    };

    // From scratch: the devices of the nexthops are made in the same pass.
    h.call(|r| r.apply_router(&spec)).expect("apply");
    let first = want(&[
        "172.30.0.0/16 via 203.0.113.7",
        "172.31.0.0/24 via 10.72.0.5",
    ]);
    assert_eq!(via_routes(&ns), first);
    let connected = ip_json(&ns, &["-4", "route", "show", "10.71.0.0/24"]);
    assert_eq!(connected[0]["protocol"], "kernel", "{connected}");
    h.call(|r| r.apply_router(&spec)).expect("re-apply");
    assert_eq!(via_routes(&ns), first);

    // A route deleted from outside comes back. A static route via a gateway is the daemon's:
    // one it does not want goes; a route someone added with `ip route` (proto boot) stays.
    let ip_in = |args: &[&str]| tests::ip(&[&["-n", ns.as_str()], args].concat());
    ip_in(&["route", "del", "172.30.0.0/16"]);
    ip_in(&[
        "route",
        "add",
        "192.168.8.0/24",
        "via",
        "10.71.0.50",
        "proto",
        "static",
    ]);
    ip_in(&["route", "add", "192.168.9.0/24", "via", "10.71.0.50"]);
    h.call(|r| r.apply_router(&spec)).expect("repair");
    let mut with_manual = first.clone();
    with_manual.push("192.168.9.0/24 via 10.71.0.50".into());
    with_manual.sort();
    assert_eq!(via_routes(&ns), with_manual);
    ip_in(&["route", "del", "192.168.9.0/24"]);

    // Changed: the stale one goes, the new one comes, the default stays.
    spec.routes = vec![route("172.29.0.0/24", "10.71.0.9")];
    h.call(|r| r.apply_router(&spec)).expect("change");
    assert_eq!(via_routes(&ns), want(&["172.29.0.0/24 via 10.71.0.9"]));

    // Administratively down: no routes at all; up again: back.
    spec.admin_state_up = false;
    h.call(|r| r.apply_router(&spec)).expect("down");
    assert_eq!(via_routes(&ns), Vec::<String>::new());
    spec.admin_state_up = true;
    h.call(|r| r.apply_router(&spec)).expect("up");
    assert_eq!(via_routes(&ns), want(&["172.29.0.0/24 via 10.71.0.9"]));

    // A namespace lost from outside: reconcile rebuilds it with its routes.
    tests::ip(&["netns", "del", &ns]);
    let desired = DesiredState {
        networks: vec![ext.clone(), a.clone(), b.clone()],
        routers: vec![spec.clone()],
    };
    let rep = h.call(|r| r.reconcile(&desired)).expect("reconcile");
    assert!(rep.failed.is_empty(), "{rep:?}");
    assert_eq!(via_routes(&ns), want(&["172.29.0.0/24 via 10.71.0.9"]));

    // Cleared.
    spec.routes.clear();
    h.call(|r| r.apply_router(&spec)).expect("clear");
    assert_eq!(via_routes(&ns), want(&[]));
}
