//! Every table a model type is stored in, with its columns in order, its key and the columns
//! an update may rewrite: the store's schema as the code sees it (the SQL schema is the
//! migrations in `mod.rs` and beside the tables' code).

use super::{networks, ports, record::record};
use crate::model::{FloatingIp, Network, Port, PortForwarding, Router, Subnet};

record! {
    Network in "networks" keyed by [id] {
        id, name, description, project_id, admin_state_up, external, physical_network, shared,
        status, mtu,
    }
    mutable [name, description, admin_state_up, external, shared, status, mtu]
}

record! {
    Subnet in "subnets" keyed by [id] {
        id, network_id, name, description, project_id, cidr, gateway_ip, enable_dhcp,
        dns_nameservers, ipv6_ra_mode, ipv6_address_mode,
    }
    mutable [name, description, gateway_ip, enable_dhcp, dns_nameservers]
    filled { allocation_pools: Vec::new() } by networks::load_pools, networks::write_pools
}

record! {
    Port in "ports" keyed by [id] {
        id, network_id, name, description, project_id, mac, admin_state_up, device_owner,
        device_id, status,
    }
    mutable [name, description, admin_state_up, device_owner, device_id, status, mac]
    filled { fixed_ips: Vec::new() } by ports::load_fixed_ips, ports::write_fixed_ips
}

record! {
    Router in "routers" keyed by [id] {
        id, name, description, project_id, admin_state_up, status, dp_id, gw_port_id, enable_snat,
    }
    mutable [name, description, admin_state_up, status, gw_port_id, enable_snat]
}

record! {
    FloatingIp in "floatingips" keyed by [id] {
        id, project_id, description, floating_network_id, floating_port_id, floating_ip, port_id,
        fixed_ip, router_id,
    }
    mutable [description, port_id, fixed_ip, router_id]
}

record! {
    PortForwarding in "port_forwardings" keyed by [id, floatingip_id] {
        id, floatingip_id, protocol, external_port, internal_port_id, internal_ip, internal_port,
        description,
    }
    mutable [protocol, external_port, internal_port_id, internal_ip, internal_port, description]
}
