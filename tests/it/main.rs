//! The privileged integration tests as one binary. Each tier is a module, so a tier is a
//! test-name filter: `cargo xtask test testrun::` runs only the BPF TestRun tier.

/// BPF TestRun: exact packet in, exact packet out, through the real object.
mod testrun {
    mod arp;
    mod fast;
    mod fip;
    mod ipv6;
    mod nat;
    mod nat_props;
    mod portfill;
    mod quota;
    mod session_table;
}

/// Real traffic through namespaces, the daemon and its CLI.
mod e2e {
    mod agent_rpc;
    mod announcements;
    mod cli;
    mod cli_plug;
    mod crash;
    mod extraroute;
    mod fast_path;
    mod fip;
    mod ipv6;
    mod metrics;
    mod mtu;
    mod nat_fairness;
    mod nat_traffic;
    mod neutronclient;
    mod openstack_fip;
    mod session_pressure;
    mod smoke;
    mod snat_default;
    mod standard_attrs;
}

/// The Neutron REST API of a running daemon.
mod api {
    mod contract;
    mod daemon;
    mod floatingips;
    mod restart;
}

/// The realiser driven directly, in a throwaway host namespace.
mod realise {
    mod linkwatch;
    mod net;
    mod no_leak;
    mod router;
    mod routes;
    mod scale;
    mod segments;
    mod snat;
}

/// Agent mode against a real neutron-server 29, MariaDB and RabbitMQ (the neutron stack).
mod agent {
    mod common;
    mod failover;
    mod stack;
    mod traffic;
}
