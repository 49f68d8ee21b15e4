//! The router's routes, per address family: the default route via the gateway's next hop
//! (with an on-link host route first when the next hop is outside the port's subnets), none
//! without a next hop of that family or without a gateway. Connected routes are the kernel's.

use std::net::IpAddr;

use anyhow::Result;
use ipnet::IpNet;
use netlink_packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::Handle;

use crate::{model::spec::RouterSpec, net::link, realise::Realiser};

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
                    for r in &defaults {
                        link::delete_route(h, r).await?;
                        changes.push("default route removed".into());
                    }
                }
            }
        }
        Ok(changes)
    }
}
