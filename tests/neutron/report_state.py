"""Report an agent's state to neutron-server the way the agent itself does.

`report_state` on topic `q-reports-plugin` (RPC API 1.4) over oslo.messaging, once or every
--interval seconds until killed. The test harness runs this on behalf of a test node's L2
agent: with ML2/openvswitch, neutron-server binds ports on a host only while an "Open vSwitch
agent" reports alive there (its bridge_mappings naming the physnets, its tunnel_types the
overlays). A real network node runs its own L2 agent; the test nodes have none.
"""
import argparse
import datetime
import sys
import time
import uuid

import oslo_messaging
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from oslo_config import cfg


def state(args, first):
    if args.kind == "ovs":
        mappings = dict(m.split("=", 1) for m in args.bridge_mapping)
        return {
            "binary": "neutron-openvswitch-agent",
            "host": args.host,
            "topic": "N/A",
            "agent_type": "Open vSwitch agent",
            "start_flag": first,
            "configurations": {
                "bridge_mappings": mappings,
                "tunnel_types": ["vxlan"] if args.tunnel_ip else [],
                "tunneling_ip": args.tunnel_ip,
                "l2_population": False,
                "integration_bridge": "br-int",
                "ovs_hybrid_plug": False,
                "enable_distributed_routing": False,
                "devices": 0,
                "reported_by": "router-ctl test harness on the node's behalf",
            },
        }
    return {
        "binary": "neutron-l3-agent",
        "host": args.host,
        "topic": "l3_agent",
        "agent_type": "L3 agent",
        "start_flag": first,
        "uuid": str(uuid.uuid4()),
        "configurations": {
            "agent_mode": "legacy",
            "routers": 0,
            "ex_gw_ports": 0,
            "interfaces": 0,
            "floating_ips": 0,
            "reported_by": "router-ctl test harness (a faked L3 agent)",
        },
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--kind", choices=["ovs", "l3"], required=True)
    p.add_argument("--bridge-mapping", action="append", default=[])
    p.add_argument("--tunnel-ip", default=None)
    p.add_argument("--interval", type=float, default=0, help="0: report once")
    args = p.parse_args()
    cfg.CONF([], project="report_state")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=args.url)
    # neutron sets control_exchange = neutron; the oslo.messaging default is "openstack".
    target = oslo_messaging.Target(
        exchange="neutron", topic="q-reports-plugin", version="1.4"
    )
    client = oslo_messaging.get_rpc_client(
        transport, target, serializer=n_rpc.RequestContextSerializer()
    )
    ctx = n_context.get_admin_context()
    first = True
    while True:
        now = datetime.datetime.now(datetime.timezone.utc)
        answer = client.prepare(timeout=30).call(
            ctx,
            "report_state",
            agent_state={"agent_state": state(args, first)},
            time=now.strftime("%Y-%m-%dT%H:%M:%S.%f"),
        )
        print(f"report_state {args.kind} {args.host}: {answer}", flush=True)
        first = False
        if args.interval <= 0:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
