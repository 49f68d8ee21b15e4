//! IPv6 inside a router namespace: routed, never translated. The namespace forwards IPv6; a
//! port with an IPv6 address has IPv6 on (no duplicate address detection holding its
//! addresses back, `accept_ra` as Neutron's L3 agent sets it), a port without one has it off,
//! so it sends no router solicitation, MLD report or DAD probe (with a thousand routers on one
//! external bridge those add up: issue #16). The `qr-` ports of subnets with `ipv6_ra_mode`
//! advertise their prefixes (`net::ra`).
//!
//! `accept_ra`: 0 everywhere except on a `qg-` that has an IPv6 address but no IPv6 default
//! route from the spec (its external subnet has no `gateway_ip`): there it is 2 (accept while
//! forwarding), so the upstream router's advertisements give the default route, as Neutron's
//! agent does for a gateway without an IPv6 gateway. With a configured next hop the static
//! default route is the only one.

use anyhow::Result;

use super::PortPlan;
use crate::{
    model::spec::RouterSpec,
    net::{LinkState, link::Ipv6Conf, ra::RaPort, sysctl},
};

/// Namespace-wide IPv6 settings, written with the other sysctls when the namespace is made
/// (before any port device exists, so a new device starts with IPv6 off and never speaks
/// until `configure_device` decides) and by reconcile.
pub(super) const SYSCTLS: [(&str, &str); 4] = [
    ("ipv6/conf/default/disable_ipv6", "1"),
    ("ipv6/conf/default/accept_dad", "0"),
    ("ipv6/conf/default/accept_ra", "0"),
    ("ipv6/conf/all/forwarding", "1"),
];

/// Whether this kernel has IPv6 (else there is nothing to set).
pub(super) fn available() -> bool {
    sysctl::exists("ipv6/conf")
}

/// The device settings of one port, on the namespace's thread, before its addresses are
/// converged and before it comes up: DAD and `accept_ra` first, then IPv6 on or off. Only what
/// differs from the device's settings in the dump `l` is written.
pub(super) fn configure_port(spec: &RouterSpec, p: &PortPlan<'_>, l: &LinkState) -> Result<()> {
    if l.ipv6.is_none() && !available() {
        return Ok(());
    }
    let key = |k: &str| format!("ipv6/conf/{}/{k}", p.inner);
    let now = l.ipv6;
    let differs = |f: fn(&Ipv6Conf) -> i32, want: i32| now.is_none_or(|c| f(&c) != want);
    if !p.port.has_ipv6() {
        if differs(|c| i32::from(c.disable_ipv6), 1) {
            sysctl::write(&key("disable_ipv6"), "1")?;
        }
        return Ok(());
    }
    let accept_ra = p.gateway
        && spec
            .gateway
            .as_ref()
            .is_some_and(|g| !g.has_ipv6_next_hop());
    let accept_ra = if accept_ra { 2 } else { 0 };
    if differs(|c| c.accept_dad, 0) {
        sysctl::write(&key("accept_dad"), "0")?;
    }
    if differs(|c| c.accept_ra, accept_ra) {
        sysctl::write(&key("accept_ra"), &accept_ra.to_string())?;
    }
    if differs(|c| i32::from(c.disable_ipv6), 0) {
        sysctl::write(&key("disable_ipv6"), "0")?;
    }
    Ok(())
}

/// The devices that advertise while the router is up: its interfaces with prefixes to
/// advertise.
pub(super) fn advertising<'a>(
    spec: &'a RouterSpec,
    ports: &'a [PortPlan<'a>],
) -> impl Iterator<Item = &'a str> + 'a {
    ports
        .iter()
        .filter(move |p| spec.admin_state_up && !p.gateway && !p.port.ra_prefixes.is_empty())
        .map(|p| p.inner.as_str())
}

/// What the router advertises: each present interface (never the gateway) with prefixes to
/// advertise, while the router is up.
pub(super) fn advertised(
    spec: &RouterSpec,
    ports: &[PortPlan<'_>],
    present: &std::collections::HashMap<String, LinkState>,
) -> Vec<RaPort> {
    let advertising: Vec<&str> = advertising(spec, ports).collect();
    ports
        .iter()
        .filter(|p| advertising.contains(&p.inner.as_str()))
        .filter_map(|p| {
            let l = present.get(&p.inner)?;
            Some(RaPort {
                dev: p.inner.clone(),
                ifindex: l.index,
                mac: p.port.mac,
                mtu: p.port.mtu,
                prefixes: p.port.ra_prefixes.clone(),
            })
        })
        .collect()
}
