//! `router-ctl agent` as the L3 agent of a real neutron-server 29, driven only by the stock
//! `openstack` CLI: VMs on a flat and on a VXLAN tenant network reach the upstream router as
//! the router's gateway address, a floating IP reaches its VM inbound and goes ACTIVE, a TCP
//! flow survives `kill -9` of the agent and its restart, and unsetting the gateway and deleting
//! the router clean the node up.

use std::time::Duration;

use tests::{
    netns::{netns_exists, unique},
    neutron::{
        id_of,
        traffic::{PeerEcho, Probe, source_seen, wait_source_seen},
    },
};

use super::common::{PORT, UPSTREAM, agent_test, at, external, gateway_ip, tenant, vm, wait};

#[test]
fn agent_routes_snat_fip_and_survives_kill9() {
    agent_test(|cloud, site| {
        let host = unique("netnode-");
        let mut node = site.agent_node(cloud, &host, "10.99.0.11", &["10.99.0.100"]);

        let public = external(cloud);
        let flat = tenant(cloud, None, "10.31.0.0/24");
        let vx = tenant(cloud, Some(531), "10.32.0.0/24");
        let router = cloud.create("router", &[&unique("r")]);
        let rid = id_of(&router);
        site.qrouters.0.push(rid.clone());
        cloud.add_router_subnet(&rid, &flat.subnet_id());
        cloud.add_router_subnet(&rid, &vx.subnet_id());
        let router = cloud.set_gateway(&rid, &public.id());
        let gw = gateway_ip(&router);
        assert_eq!(
            cloud.router_hosts(&rid),
            vec![host.clone()],
            "scheduled to the agent"
        );

        let (vm_flat, _) = vm(cloud, &site.compute, &flat, &[]);
        let (vm_vx, vx_port) = vm(cloud, &site.compute, &vx, &["10.99.0.11"]);
        let qns = format!("qrouter-{rid}");
        wait(
            "the qrouter namespace",
            Duration::from_secs(90),
            || node.log(),
            || netns_exists(&qns),
        );
        for (name, vmns) in [("flat", &vm_flat), ("vxlan", &vm_vx)] {
            let seen = wait_source_seen(&vmns.name, at(UPSTREAM), Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{name} VM: {e:#}\nagent log:\n{}", node.log()));
            assert_eq!(
                seen, gw,
                "the {name} VM reaches the upstream as the gateway address"
            );
        }

        // A floating IP on the VXLAN VM: inbound reaches it, Neutron shows it ACTIVE, and the VM's
        // own traffic leaves with it.
        let fip = cloud.create("floating ip", &["--port", &id_of(&vx_port), &public.id()]);
        let fip_ip = fip["floating_ip_address"]
            .as_str()
            .expect("fip")
            .to_string();
        let _vm_web = PeerEcho::start(&vm_vx.name, PORT).unwrap_or_else(|e| panic!("{e:#}"));
        wait(
            "the floating IP ACTIVE",
            Duration::from_secs(60),
            || node.log(),
            || cloud.json(&["floating", "ip", "show", &id_of(&fip)])["status"] == "ACTIVE",
        );
        let inbound = wait_source_seen(&site.upstream.name, at(&fip_ip), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", node.log()));
        assert_eq!(
            inbound, UPSTREAM,
            "inbound to the floating IP keeps its source"
        );
        assert_eq!(
            source_seen(&vm_vx.name, at(UPSTREAM)).unwrap_or_else(|e| panic!("{e:#}")),
            fip_ip,
            "the VM's own traffic leaves with its floating IP"
        );

        // kill -9 and restart: an established flow goes on, before and after the restart.
        let mut flow =
            Probe::connect(&vm_flat.name, at(UPSTREAM)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(flow.ask().unwrap_or_else(|e| panic!("{e:#}")), gw);
        node.kill9();
        assert_eq!(
            flow.ask()
                .unwrap_or_else(|e| panic!("flow with the agent dead: {e:#}")),
            gw
        );
        node.start_agent().unwrap_or_else(|e| panic!("{e:#}"));
        node.wait_registered(cloud.stack, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e:#}"));
        // One resync later (the agent resyncs at start), the same connection still works.
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            flow.ask()
                .unwrap_or_else(|e| panic!("flow after restart: {e:#}\n{}", node.log())),
            gw,
            "the TCP flow survives kill -9 and restart with its translation"
        );
        assert!(node.agent_running(), "{}", node.log());

        // Gateway unset: the gateway device goes, the VMs lose the upstream.
        cloud.os(&["floating", "ip", "delete", &id_of(&fip)]);
        cloud.deleted(&id_of(&fip));
        cloud.os(&["router", "unset", "--external-gateway", &rid]);
        let has_qg = || {
            tests::ip_json(&qns, &["link", "show"])
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("qg-")))
        };
        wait(
            "the qg- device removed",
            Duration::from_secs(60),
            || node.log(),
            || !has_qg(),
        );
        assert!(
            source_seen(&vm_flat.name, at(UPSTREAM)).is_err(),
            "no upstream without a gateway"
        );

        // Router deleted: its namespace goes.
        cloud.os(&["router", "remove", "subnet", &rid, &flat.subnet_id()]);
        cloud.os(&["router", "remove", "subnet", &rid, &vx.subnet_id()]);
        cloud.os(&["router", "delete", &rid]);
        cloud.deleted(&rid);
        wait(
            "the qrouter namespace removed",
            Duration::from_secs(60),
            || node.log(),
            || !netns_exists(&qns),
        );
        let log = node.log();
        assert!(!log.contains("panicked"), "{log}");
    });
}
