//! The agent state `report_state` carries, as neutron-l3-agent reports it: Neutron lists the
//! agent as an "L3 agent" on this host, schedules routers to it while the reports keep coming,
//! and shows the configurations (mode, counts) in `openstack network agent show`.

use serde_json::{Value, json};

use super::book::Counts;

/// Neutron's name for this kind of agent (what its L3 schedulers look for).
pub const AGENT_TYPE: &str = "L3 agent";
/// The binary Neutron records; the stock agent's, since tools key on it.
pub const BINARY: &str = "neutron-l3-agent";

/// The `agent_state` of one report. `start_flag`: the first report of this process.
pub fn agent_state(host: &str, uuid: &str, az: &str, counts: Counts, start_flag: bool) -> Value {
    let mut s = json!({
        "agent_type": AGENT_TYPE,
        "binary": BINARY,
        "host": host,
        "topic": super::rpc::L3_AGENT_TOPIC,
        "availability_zone": az,
        "uuid": uuid,
        "configurations": {
            "agent_mode": "legacy",
            "handle_internal_only_routers": true,
            "interface_driver": "router-ctl",
            "log_agent_heartbeats": false,
            "extensions": [],
            "routers": counts.routers,
            "ex_gw_ports": counts.ex_gw_ports,
            "interfaces": counts.interfaces,
            "floating_ips": counts.floating_ips,
        },
    });
    if start_flag {
        s["start_flag"] = true.into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_has_what_neutron_reads() {
        let c = Counts {
            routers: 2,
            ex_gw_ports: 1,
            interfaces: 3,
            floating_ips: 4,
        };
        let s = agent_state("netnode-1", "u-1", "nova", c, true);
        assert_eq!(s["agent_type"], "L3 agent");
        assert_eq!(s["topic"], "l3_agent");
        assert_eq!(s["host"], "netnode-1");
        assert_eq!(s["start_flag"], true);
        let conf = &s["configurations"];
        assert_eq!(conf["agent_mode"], "legacy");
        assert_eq!(
            (conf["routers"].clone(), conf["ex_gw_ports"].clone()),
            (json!(2), json!(1))
        );
        assert_eq!(
            (conf["interfaces"].clone(), conf["floating_ips"].clone()),
            (json!(3), json!(4))
        );
        let later = agent_state("netnode-1", "u-1", "nova", c, false);
        assert!(
            later.get("start_flag").is_none(),
            "only on the first report"
        );
    }
}
