//! Desired-state specs for the realiser tests, built as the store would build them: a port
//! with one address, a router with its interfaces and gateway, a gateway with SNAT on.

use router_ctl::model::spec::{GatewaySpec, PortSpec, RouterSpec};

use crate::unique;

/// A port with a fresh id on network `network_id`, MAC `mac`, the one address `addr`
/// (`ip/prefix_len`) and the default MTU.
pub fn port(network_id: &str, mac: [u8; 6], addr: &str) -> PortSpec {
    PortSpec {
        port_id: unique("p"),
        network_id: network_id.to_string(),
        mac,
        addresses: vec![addr.parse().expect("address")],
        mtu: 1500,
        ra_prefixes: vec![],
    }
}

/// An admin-up router with a fresh id, no floating IPs, port forwardings or extra routes.
pub fn router(dp_id: u32, interfaces: Vec<PortSpec>, gateway: Option<GatewaySpec>) -> RouterSpec {
    RouterSpec {
        id: unique("r"),
        dp_id,
        admin_state_up: true,
        interfaces,
        gateway,
        floating_ips: vec![],
        port_forwardings: vec![],
        routes: vec![],
    }
}

/// A gateway on `port` with SNAT on and one next hop.
pub fn gateway(port: PortSpec, next_hop: &str) -> GatewaySpec {
    GatewaySpec {
        port,
        next_hops: vec![next_hop.parse().expect("next hop")],
        enable_snat: true,
    }
}
