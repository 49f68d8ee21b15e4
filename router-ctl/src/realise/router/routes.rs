//! The router's routes, per address family: the default route via the gateway's next hop
//! (with an on-link host route first when the next hop is outside the port's subnets), none
//! without a next hop of that family or without a gateway; and the extra routes (Neutron's
//! `routes`), each via its nexthop. Connected routes are the kernel's.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::{
    model::spec::RouterSpec,
    net::link::{self, errno},
    realise::Realiser,
};

/// Whether the daemon owns `r` as an extra route: a static route via a gateway that is not
/// the default route (the default, on-link and connected routes are handled apart; `ip route
/// add` makes `proto boot` routes, so an operator's own routes are left alone).
fn is_extra_route(r: &link::Route) -> bool {
    r.gateway.is_some()
        && !r.is_default()
        && r.protocol == RouteProtocol::Static
        && r.scope == RouteScope::Universe
}

/// The extra routes to install: the first nexthop of each destination (Neutron accepts
/// several; one kernel route per destination keeps the pass stable), none while the router is
/// administratively down.
fn wanted_extra_routes(spec: &RouterSpec) -> Vec<(IpNet, IpAddr)> {
    let mut out: Vec<(IpNet, IpAddr)> = Vec::new();
    if !spec.admin_state_up {
        return out;
    }
    for r in &spec.routes {
        if !out.iter().any(|(d, _)| *d == r.destination) {
            out.push((r.destination, r.nexthop));
        }
    }
    out
}

/// Adds `dst` via `nexthop` (the kernel picks the device on the nexthop's subnet). False when
/// the kernel refuses for a reason a later pass resolves: the nexthop is not on a configured
/// device yet (ENETUNREACH), or another route holds the destination (EEXIST: never replace a
/// connected route).
async fn add_via_route(h: &Handle, dst: IpNet, nexthop: IpAddr) -> Result<bool> {
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .and_then(|b| b.gateway(nexthop))
        .with_context(|| format!("route {dst} via {nexthop}"))?
        .build();
    match h.route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno(&e), Some(libc::ENETUNREACH | libc::EEXIST)) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("adding route {dst} via {nexthop}")),
    }
}

impl Realiser {
    /// Per address family, the default route via the gateway's next hop (with an on-link host
    /// route first when the next hop is outside the port's subnets); no default route of a family
    /// without a next hop of it, nor without a gateway. Only the router's own namespace is touched.
    pub(super) async fn process_routes(
        &self,
        h: &Handle,
        spec: &RouterSpec,
        gw_index: Option<u32>,
    ) -> Result<Vec<String>> {
        let mut changes = Vec::new();
        let routes = link::main_routes(h).await?;
        // (next hop, gateway device) of each family.
        let targets: Vec<(IpAddr, u32)> = match (&spec.gateway, gw_index) {
            (Some(gw), Some(idx)) if spec.admin_state_up => {
                gw.next_hops.iter().map(|nh| (*nh, idx)).collect()
            }
            _ => Vec::new(),
        };
        // On-link host routes to off-subnet next hops.
        let onlink: Vec<(IpNet, u32)> = targets
            .iter()
            .filter(|(nh, _)| spec.gateway.as_ref().is_some_and(|g| !g.port.on_link(*nh)))
            .map(|(nh, idx)| (IpNet::from(*nh), *idx))
            .collect();
        for r in &routes {
            let is_our_onlink = r.is_host()
                && r.gateway.is_none()
                && r.scope == RouteScope::Link
                && r.protocol == RouteProtocol::Static
                && gw_index.is_some()
                && r.oif == gw_index;
            if is_our_onlink && !onlink.iter().any(|(dst, _)| *dst == r.dst) {
                link::delete_route(h, r).await?;
                changes.push(format!("route {} removed", r.dst));
            }
        }
        for (dst, idx) in &onlink {
            if !routes
                .iter()
                .any(|r| r.dst == *dst && r.oif == Some(*idx) && r.gateway.is_none())
            {
                link::replace_link_route(h, *dst, *idx).await?;
                changes.push(format!("route {dst} on-link"));
            }
        }
        let extra = wanted_extra_routes(spec);
        for r in routes.iter().filter(|r| is_extra_route(r)) {
            if !extra
                .iter()
                .any(|(d, nh)| *d == r.dst && r.gateway == Some(*nh))
            {
                link::delete_route(h, r).await?;
                changes.push(format!("route {} removed", r.dst));
            }
        }
        for (dst, nh) in &extra {
            if routes
                .iter()
                .any(|r| r.dst == *dst && r.gateway == Some(*nh))
            {
                continue;
            }
            if add_via_route(h, *dst, *nh).await? {
                changes.push(format!("route {dst} via {nh}"));
            } else {
                tracing::debug!("router {}: route {dst} via {nh} deferred", spec.id);
            }
        }
        for v4 in [true, false] {
            let defaults: Vec<&link::Route> = routes
                .iter()
                .filter(|r| r.is_default() && r.dst.addr().is_ipv4() == v4)
                .collect();
            match targets.iter().find(|(nh, _)| nh.is_ipv4() == v4) {
                Some((nh, idx)) => {
                    let good = defaults.len() == 1
                        && defaults[0].gateway == Some(*nh)
                        && defaults[0].oif == Some(*idx);
                    if !good {
                        for r in &defaults {
                            link::delete_route(h, r).await?;
                        }
                        link::replace_default_route(h, *nh, *idx).await?;
                        changes.push(format!("default via {nh}"));
                    }
                }
                None => {
                    // A default route learnt from the upstream router's advertisements (a `qg-`
                    // with IPv6 but no configured next hop accepts them: `ipv6`) stays.
                    for r in defaults.iter().filter(|r| r.protocol != RouteProtocol::Ra) {
                        link::delete_route(h, r).await?;
                        changes.push("default route removed".into());
                    }
                }
            }
        }
        Ok(changes)
    }
}
