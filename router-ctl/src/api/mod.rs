//! Neutron v2.0-compatible REST API (axum): networks, subnets, ports, routers, extensions.
