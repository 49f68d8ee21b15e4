//! Two `router-ctl agent` nodes under one real neutron-server: the stock scheduler spreads
//! routers over them, and when a node dies (agent killed, its L2 agent silent, its kernel state
//! gone) `allow_automatic_l3agent_failover` moves its router to the other node, which serves it
//! within `agent_down_time` and one sync.

use std::time::{Duration, Instant};

use tests::{
    netns::unique,
    neutron::{AGENT_DOWN_TIME, id_of, node::AgentNode, traffic::wait_source_seen},
};

use super::common::{UPSTREAM, agent_test, at, external, gateway_ip, tenant, vm, wait};

#[test]
fn two_agents_share_routers_and_fail_over() {
    agent_test(|cloud, site| {
        let tag = unique("");
        let mut nodes = Vec::new();
        for (i, ip, other) in [
            (1, "10.99.0.11", "10.99.0.12"),
            (2, "10.99.0.12", "10.99.0.11"),
        ] {
            let host = format!("netnode-{i}-{tag}");
            nodes.push(Some(site.agent_node(
                cloud,
                &host,
                ip,
                &["10.99.0.100", other],
            )));
        }
        let logs = |nodes: &[Option<AgentNode>]| {
            nodes
                .iter()
                .flatten()
                .map(|n| format!("--- agent {}:\n{}", n.host, n.log()))
                .collect::<String>()
        };

        let public = external(cloud);
        // Router A on the flat tenant network (the one the failover moves), B on a VXLAN one.
        let nets = [
            tenant(cloud, None, "10.41.0.0/24"),
            tenant(cloud, Some(541), "10.42.0.0/24"),
        ];
        let mut routers = Vec::new();
        for net in &nets {
            let r = id_of(&cloud.create("router", &[&unique("r")]));
            site.qrouters.0.push(r.clone());
            cloud.add_router_subnet(&r, &net.subnet_id());
            let gw = gateway_ip(&cloud.set_gateway(&r, &public.id()));
            routers.push((r, gw));
        }
        let hosts: Vec<Vec<String>> = routers.iter().map(|(r, _)| cloud.router_hosts(r)).collect();
        assert_eq!(hosts[0].len(), 1, "{hosts:?}");
        assert_eq!(hosts[1].len(), 1, "{hosts:?}");
        assert_ne!(
            hosts[0], hosts[1],
            "the stock scheduler spreads two routers over two agents"
        );

        let vms: Vec<_> = nets
            .iter()
            .map(|n| vm(cloud, &site.compute, n, &["10.99.0.11", "10.99.0.12"]).0)
            .collect();
        for (vmns, (_, gw)) in vms.iter().zip(&routers) {
            let seen = wait_source_seen(&vmns.name, at(UPSTREAM), Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&nodes)));
            assert_eq!(&seen, gw);
        }

        // The node holding router A dies.
        let (ra, gwa) = routers[0].clone();
        let dead = nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.host == hosts[0][0]))
            .expect("router A's node");
        let survivor = nodes[1 - dead]
            .as_ref()
            .map(|n| n.host.clone())
            .expect("survivor");
        let t0 = Instant::now();
        if let Some(n) = nodes[dead].take() {
            n.die(std::slice::from_ref(&ra));
        }
        let limit = Duration::from_secs(AGENT_DOWN_TIME + 90);
        wait(
            "router A rescheduled to the survivor",
            limit,
            || logs(&nodes),
            || cloud.router_hosts(&ra) == vec![survivor.clone()],
        );
        let moved = t0.elapsed();
        let seen = wait_source_seen(&vms[0].name, at(UPSTREAM), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("after failover: {e:#}\n{}", logs(&nodes)));
        assert_eq!(
            seen, gwa,
            "router A served by the survivor with the same gateway address"
        );
        eprintln!(
            "failover: router moved after {moved:?}, served after {:?} (agent_down_time {AGENT_DOWN_TIME} s)",
            t0.elapsed()
        );
        // Router B, on the survivor all along, never stopped.
        let seen = wait_source_seen(&vms[1].name, at(UPSTREAM), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(seen, routers[1].1);
    });
}
