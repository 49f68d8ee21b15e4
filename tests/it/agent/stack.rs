//! The neutron stack alone: the stock `openstack` CLI against the real neutron-server 29
//! (networks of each type the agent tests use, a router with an interface and a gateway) and
//! an agent report over RabbitMQ showing up in `openstack network agent list`.

use tests::{
    neutron::{Cloud, Stack, id_of, report},
    unique,
};

#[test]
fn openstack_cli_round_trips_and_agent_reports() {
    let stack = Stack::for_test();
    let cloud = Cloud::new(&stack);
    let public = cloud.create(
        "network",
        &[
            "--external",
            "--provider-network-type",
            "flat",
            "--provider-physical-network",
            "public",
            &unique("pub"),
        ],
    );
    assert_eq!(public["router:external"], true, "{public}");
    assert_eq!(public["provider:network_type"], "flat", "{public}");
    let pub_sub = cloud.create(
        "subnet",
        &[
            "--network",
            &id_of(&public),
            "--subnet-range",
            "203.0.113.0/24",
            "--gateway",
            "203.0.113.1",
            "--allocation-pool",
            "start=203.0.113.20,end=203.0.113.40",
            "--no-dhcp",
            &unique("pubs"),
        ],
    );
    assert_eq!(pub_sub["cidr"], "203.0.113.0/24");
    let vx = cloud.create(
        "network",
        &[
            "--provider-network-type",
            "vxlan",
            "--provider-segment",
            "77",
            &unique("vx"),
        ],
    );
    assert_eq!(vx["provider:network_type"], "vxlan", "{vx}");
    assert_eq!(vx["provider:segmentation_id"], 77, "{vx}");
    let vx_sub = cloud.create(
        "subnet",
        &[
            "--network",
            &id_of(&vx),
            "--subnet-range",
            "10.77.0.0/24",
            "--no-dhcp",
            &unique("vxs"),
        ],
    );
    let router = cloud.create("router", &[&unique("r")]);
    let rid = id_of(&router);
    cloud.add_router_subnet(&rid, &id_of(&vx_sub));
    let shown = cloud.set_gateway(&rid, &id_of(&public));
    let gw = &shown["external_gateway_info"]["external_fixed_ips"][0]["ip_address"];
    let gw = gw
        .as_str()
        .unwrap_or_else(|| panic!("no gateway IP in {shown}"));
    assert!(gw.starts_with("203.0.113."), "{shown}");
    let ports = cloud.json(&["port", "list", "--router", &rid]);
    assert_eq!(ports.as_array().map(Vec::len), Some(2), "{ports}");

    // A faked L3 agent report, exactly as an agent sends it over RabbitMQ, shows in the list.
    let host = unique("fake-l3-");
    cloud.forget_agents_on_drop(&host);
    let answer = report::report_once(&stack, &host, "l3").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(answer.ends_with("new"), "{answer}");
    let agents = cloud.agents_on(&host);
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["Agent Type"], "L3 agent", "{agents:?}");
    assert_eq!(agents[0]["Alive"], true, "{agents:?}");
    // Bad input through the real API: a clear error, nothing changed.
    let out = stack
        .try_openstack(&["router", "add", "subnet", &rid, "no-such-subnet"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!out.status.success());
    let ports_after = cloud.json(&["port", "list", "--router", &rid]);
    assert_eq!(ports, ports_after);
}
