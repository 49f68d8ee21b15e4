//! Checks of a spec before the kernel is touched: ids become file and device names, MACs,
//! addresses and MTUs must be ones a device can carry, device names must not collide.

use std::collections::HashSet;

use std::ops::RangeInclusive;

use anyhow::{Result, bail};

use super::router::plan;
use crate::model::{
    mac_to_string,
    spec::{PortSpec, RouterSpec},
};

/// Ids become file and device names: keep them to a safe alphabet.
pub(super) fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 200
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("invalid {what} id {id:?}: expected 1-200 characters of [A-Za-z0-9_-]");
    }
    Ok(())
}

/// MTUs a router port may have: IPv4's minimum (RFC 791) up to the largest a veth takes. The
/// API keeps networks to a narrower range; a spec from elsewhere is held to this one.
const PORT_MTU: RangeInclusive<u32> = 68..=65535;

fn validate_port(p: &PortSpec) -> Result<()> {
    validate_id("port", &p.port_id)?;
    validate_id("network", &p.network_id)?;
    if p.mac[0] & 1 != 0 || p.mac == [0; 6] {
        bail!(
            "port {}: MAC {} is not a unicast address",
            p.port_id,
            mac_to_string(&p.mac)
        );
    }
    if !PORT_MTU.contains(&p.mtu) {
        bail!(
            "port {}: MTU {} is outside {}..={}",
            p.port_id,
            p.mtu,
            PORT_MTU.start(),
            PORT_MTU.end()
        );
    }
    for a in &p.addresses {
        let ip = a.addr();
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            bail!("port {}: address {a} is not a unicast address", p.port_id);
        }
    }
    Ok(())
}

pub(super) fn validate_router(spec: &RouterSpec) -> Result<()> {
    validate_id("router", &spec.id)?;
    let mut devs = HashSet::new();
    for p in plan(spec) {
        validate_port(p.port)?;
        if !devs.insert(p.tap.clone()) {
            bail!(
                "router {}: two ports share the device name {} (port ids must differ in their first 11 characters)",
                spec.id,
                p.tap
            );
        }
    }
    if let Some(gw) = &spec.gateway {
        if gw.snat_ip().is_none() {
            bail!("router {}: the gateway port has no IPv4 address", spec.id);
        }
        for (i, nh) in gw.next_hops.iter().enumerate() {
            if gw.port.addresses.iter().any(|a| a.addr() == *nh) {
                bail!(
                    "router {}: the gateway's next hop {nh} is its own address",
                    spec.id
                );
            }
            if gw.next_hops[..i]
                .iter()
                .any(|o| o.is_ipv4() == nh.is_ipv4())
            {
                bail!("router {}: two next hops of one address family", spec.id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, mac: [u8; 6], addr: &str) -> PortSpec {
        PortSpec {
            port_id: id.into(),
            network_id: "net-1".into(),
            mac,
            addresses: vec![addr.parse().unwrap()],
            mtu: 1500,
            ra_prefixes: vec![],
        }
    }

    fn router(interfaces: Vec<PortSpec>) -> RouterSpec {
        RouterSpec {
            id: "router-1".into(),
            dp_id: 1,
            admin_state_up: true,
            interfaces,
            gateway: None,
            floating_ips: vec![],
            port_forwardings: vec![],
            routes: vec![],
        }
    }

    const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];

    #[test]
    fn valid_router_passes() {
        let r = router(vec![port("p1", MAC, "10.0.0.1/24")]);
        assert!(validate_router(&r).is_ok());
    }

    #[test]
    fn bad_specs_are_refused_before_touching_the_kernel() {
        let multicast = router(vec![port("p1", [1, 0, 0x5e, 0, 0, 1], "10.0.0.1/24")]);
        assert!(validate_router(&multicast).is_err());
        let zero = router(vec![port("p1", [0; 6], "10.0.0.1/24")]);
        assert!(validate_router(&zero).is_err());
        let unspecified = router(vec![port("p1", MAC, "0.0.0.0/24")]);
        assert!(validate_router(&unspecified).is_err());
        for mtu in [0, 67, 65536] {
            let mut p = port("p1", MAC, "10.0.0.1/24");
            p.mtu = mtu;
            assert!(validate_router(&router(vec![p])).is_err(), "MTU {mtu}");
        }
        let mut jumbo = port("p1", MAC, "10.0.0.1/24");
        jumbo.mtu = 9000;
        assert!(validate_router(&router(vec![jumbo])).is_ok());
        let clash = router(vec![
            port("abcdefghijk-1", MAC, "10.0.0.1/24"),
            port("abcdefghijk-2", MAC, "10.0.1.1/24"),
        ]);
        assert!(validate_router(&clash).is_err());
        let mut bad_id = router(vec![]);
        bad_id.id = "../etc".into();
        assert!(validate_router(&bad_id).is_err());
        let mut self_hop = router(vec![]);
        self_hop.gateway = Some(crate::model::spec::GatewaySpec {
            port: port("g1", MAC, "192.0.2.10/24"),
            next_hops: vec!["192.0.2.10".parse().unwrap()],
            enable_snat: true,
        });
        assert!(validate_router(&self_hop).is_err());
    }
}
