//! The neutron stack alone: the stock `openstack` CLI against the real neutron-server 29
//! (networks of each type the agent tests use, made by the same helpers; a router with an
//! interface and a gateway) and an agent report over RabbitMQ showing up in
//! `openstack network agent list`.

use tests::{
    neutron::{Cloud, Stack, id_of, report},
    unique,
};

use super::common::{external, gateway_ip, tenant};

#[test]
fn openstack_cli_round_trips_and_agent_reports() {
    let stack = Stack::for_test();
    let cloud = Cloud::new(&stack);
    let public = external(&cloud);
    assert_eq!(public.net["router:external"], true, "{}", public.net);
    assert_eq!(
        public.net["provider:network_type"], "flat",
        "{}",
        public.net
    );
    assert_eq!(public.subnet["cidr"], "203.0.113.0/24");
    let vx = tenant(&cloud, Some(77), "10.77.0.0/24");
    assert_eq!(vx.net["provider:network_type"], "vxlan", "{}", vx.net);
    assert_eq!(vx.net["provider:segmentation_id"], 77, "{}", vx.net);
    let router = cloud.create("router", &[&unique("r")]);
    let rid = id_of(&router);
    cloud.add_router_subnet(&rid, &vx.subnet_id());
    let shown = cloud.set_gateway(&rid, &public.id());
    assert!(gateway_ip(&shown).starts_with("203.0.113."), "{shown}");
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
