//! Extra routes end to end (`extraroute`, `extraroute-atomic`), driven by the stock `openstack`
//! CLI against a live daemon: a VM on one tenant subnet reaches a network that sits behind an
//! "appliance VM" on another subnet of the same router, only while the router has a route to
//! it via the appliance.
//!
//! ```text
//!  vm 10.61.0.x ── r1 (qrouter-) ── 10.62.0.y appliance ── 172.31.0.1 | 172.31.0.9 far
//!                  172.31.0.0/24 via 10.62.0.y    (forwards)
//! ```

use std::net::Ipv4Addr;

use router_ctl::model::spec::names;
use serde_json::{Value, json};
use tests::{Netns, openstack::Cloud, unique, veth};

const FAR: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 9);

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn ping(ns: &Netns, to: Ipv4Addr) -> bool {
    (0..3).any(|_| {
        ns.try_run("ping", &["-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    })
}

/// The routes via a gateway in the router's namespace, as `dst via nexthop`.
fn kernel_routes(router_id: &str) -> Vec<String> {
    let v = tests::ip_json(&names::router_netns(router_id), &["-4", "route", "show"]);
    v.as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["gateway"].is_string() && r["dst"] != "default")
        .map(|r| format!("{} via {}", s(&r["dst"]), s(&r["gateway"])))
        .collect()
}

#[test]
fn extra_route_via_an_appliance_vm() {
    let cloud = Cloud::start("erh");
    let d = &cloud.d;
    let os = |args: &[&str]| cloud.os(args);
    for (net, sub, cidr) in [("a", "suba", "10.61.0.0/24"), ("b", "subb", "10.62.0.0/24")] {
        os(&["network", "create", net, "-f", "json"]);
        os(&[
            "subnet",
            "create",
            "--network",
            net,
            "--subnet-range",
            cidr,
            sub,
            "-f",
            "json",
        ]);
    }
    let router = os(&["router", "create", "r1", "-f", "json"]);
    let router_id = s(&router["id"]);
    assert_eq!(router["routes"], json!([]), "{router}");
    os(&["router", "add", "subnet", "r1", "suba"]);
    os(&["router", "add", "subnet", "r1", "subb"]);

    let plug = |net: &str, prefix: &str| {
        let ns = Netns {
            name: unique(prefix),
        };
        let port = d.cli_json(&["port", "create", "--network", net, "--netns", &ns.name]);
        let ip = s(&port["fixed_ips"][0]["ip_address"]);
        (ns, ip)
    };
    let (vm, _) = plug("a", "erv");
    let (appliance, appliance_ip) = plug("b", "era");
    // Behind the appliance: a network the router does not know.
    let far = Netns::new("erf");
    veth(&appliance, "inside", &far, "eth0");
    appliance.ip(&["addr", "add", "172.31.0.1/24", "dev", "inside"]);
    appliance.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    far.ip(&["addr", "add", &format!("{FAR}/24"), "dev", "eth0"]);
    far.ip(&["route", "add", "default", "via", "172.31.0.1"]);
    assert!(
        ping(&appliance, FAR),
        "the appliance reaches its own network"
    );
    assert!(!ping(&vm, FAR), "no route yet");

    let via = format!("destination=172.31.0.0/24,gateway={appliance_ip}");
    os(&["router", "set", "--route", &via, "r1"]);
    let r = os(&["router", "show", "r1", "-f", "json"]);
    assert_eq!(
        r["routes"],
        json!([{"destination": "172.31.0.0/24", "nexthop": appliance_ip}]),
        "{r}"
    );
    assert_eq!(
        kernel_routes(&router_id),
        vec![format!("172.31.0.0/24 via {appliance_ip}")]
    );
    assert!(
        ping(&vm, FAR),
        "the VM reaches the far network via the appliance\n{}",
        d.log()
    );
    // The fast path follows the route (its FIB lookup sees it): both directions pass it.
    let fast = || {
        d.cli_json(&["stats", "r1"])["fast_forwarded"]
            .as_u64()
            .expect("counter")
    };
    let before = fast();
    vm.run("ping", &["-c", "5", "-i", "0.2", &FAR.to_string()]);
    assert!(
        fast() >= before + 10,
        "fast-path forwards: {} → {}",
        before,
        fast()
    );

    // The atomic calls: add a second route, take it out again; the first one stays.
    let second = format!("destination=172.30.0.0/16,gateway={appliance_ip}");
    os(&[
        "router", "add", "route", "--route", &second, "r1", "-f", "json",
    ]);
    let r = os(&["router", "show", "r1", "-f", "json"]);
    assert_eq!(r["routes"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(kernel_routes(&router_id).len(), 2);
    os(&[
        "router", "remove", "route", "--route", &second, "r1", "-f", "json",
    ]);
    assert_eq!(
        kernel_routes(&router_id),
        vec![format!("172.31.0.0/24 via {appliance_ip}")]
    );

    // The appliance's subnet is needed by the route: its interface stays.
    let (_, ports) = d.get(&format!("/v2.0/ports?device_id={router_id}"));
    let subnets = os(&["subnet", "show", "subb", "-f", "json"]);
    let (st, v) = d.put(
        &format!("/v2.0/routers/{router_id}/remove_router_interface"),
        &json!({"subnet_id": subnets["id"]}),
    );
    assert_eq!(st, 409, "{v}");
    assert_eq!(
        v["NeutronError"]["type"], "RouterInterfaceInUseByRoute",
        "{v}"
    );
    let (_, after) = d.get(&format!("/v2.0/ports?device_id={router_id}"));
    assert_eq!(ports, after);
    // A nexthop off the router's subnets is refused, and nothing changes.
    let (st, v) = d.put(
        &format!("/v2.0/routers/{router_id}"),
        &json!({"router": {"routes": [{"destination": "172.29.0.0/24", "nexthop": "10.9.9.9"}]}}),
    );
    assert_eq!(
        (st, &v["NeutronError"]["type"]),
        (400, &json!("InvalidRoutes")),
        "{v}"
    );
    assert_eq!(kernel_routes(&router_id).len(), 1);

    // Clearing the routes cuts the far network off again.
    os(&["router", "set", "--no-route", "r1"]);
    let r = os(&["router", "show", "r1", "-f", "json"]);
    assert_eq!(r["routes"], json!([]), "{r}");
    assert_eq!(kernel_routes(&router_id), Vec::<String>::new());
    assert!(!ping(&vm, FAR), "no route, no way");

    // router-ctl's own spelling of the same calls.
    let r = d.cli_json(&["router", "set", "r1", "--route", &via]);
    assert_eq!(r["routes"].as_array().map(Vec::len), Some(1), "{r}");
    let r = d.cli_json(&["router", "set", "r1", "--no-route"]);
    assert_eq!(r["routes"], json!([]), "{r}");
}
