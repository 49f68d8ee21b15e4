//! The desired kernel state built from the store: one builder (`router_specs`) over a scope
//! (one router or all of them), so what a mutation realises and what the reconcile loop
//! converges to can never differ. Its output, `model::spec`, is all the realiser sees: a spec
//! built elsewhere (from a Neutron server's `sync_routers`) goes through the same realiser.

use std::{collections::HashMap, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use rusqlite::{Connection, params_from_iter};

use super::{
    addr_of, floatingips, list, query_all,
    record::{self, text_err},
    routers::route_row,
};
use crate::model::{
    Fault, Ipv6Mode, Network, Router, parse_mac,
    spec::{
        DesiredState, GatewaySpec, NetworkSpec, PortSpec, RaPrefix, RouteSpec, RouterSpec, Segment,
    },
};

/// Which routers a build covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every router (the reconcile loop, the start-up resync).
    All,
    /// One router (a mutation's before and after).
    Router(&'a str),
}

impl<'a> Scope<'a> {
    /// `WHERE`-clause condition selecting the scope's rows by the router id in `column`
    /// (always true for `All`); its parameter is `?1`.
    pub(super) fn condition(self, column: &str) -> String {
        match self {
            Scope::All => "1".to_string(),
            Scope::Router(_) => format!("{column} = ?1"),
        }
    }

    /// The parameters of `condition`.
    pub(super) fn params(self) -> rusqlite::ParamsFromIter<Option<&'a str>> {
        params_from_iter(match self {
            Scope::All => None,
            Scope::Router(id) => Some(id),
        })
    }
}

/// The kernel-side description of the network, None when it does not exist.
pub fn network_spec(conn: &Connection, id: &str) -> Result<Option<NetworkSpec>, Fault> {
    Ok(super::get::<Network>(conn, id)?.map(network_spec_of))
}

fn network_spec_of(n: crate::model::Network) -> NetworkSpec {
    NetworkSpec {
        id: n.id,
        segment: Segment::flat_or_local(n.physical_network),
        external: n.external,
    }
}

/// The kernel-side description of the router, None when it does not exist.
pub fn router_spec(conn: &Connection, id: &str) -> Result<Option<RouterSpec>, Fault> {
    Ok(router_specs(conn, Scope::Router(id))?.pop())
}

/// Everything that should be realised: every network, and every router's spec as
/// `router_spec` gives it.
pub fn desired_state(conn: &Connection) -> Result<DesiredState, Fault> {
    Ok(DesiredState {
        networks: list::<Network>(conn)?
            .into_iter()
            .map(network_spec_of)
            .collect(),
        routers: router_specs(conn, Scope::All)?,
    })
}

/// A router port's spec and the next hops its subnets offer (their `gateway_ip`s).
type PortAddrs = (PortSpec, Vec<IpAddr>);

/// The specs of the routers in `scope`, in creation order, from a fixed number of queries
/// whatever the scope (a pass over a thousand routers stays cheap).
pub fn router_specs(conn: &Connection, scope: Scope<'_>) -> Result<Vec<RouterSpec>, Fault> {
    let sql = format!(
        "SELECT {} FROM routers WHERE {} ORDER BY rowid",
        record::columns::<Router>(""),
        scope.condition("id")
    );
    let routers: Vec<Router> = record::query(conn, &sql, scope.params())?;
    if routers.is_empty() {
        return Ok(Vec::new());
    }
    let ports = router_ports(conn, scope)?;
    let sql = format!(
        "SELECT router_id, port_id FROM router_interfaces WHERE {} ORDER BY rowid",
        scope.condition("router_id")
    );
    let mut interfaces: HashMap<String, Vec<PortSpec>> = HashMap::new();
    for (router, port) in query_all(conn, &sql, scope.params(), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        if let Some((spec, _)) = ports.get(&port) {
            interfaces.entry(router).or_default().push(spec.clone());
        }
    }
    let mut floating = floatingips::router_floating(conn, scope)?;
    let sql = format!(
        "SELECT router_id, destination, nexthop FROM router_routes WHERE {} ORDER BY rowid",
        scope.condition("router_id")
    );
    let mut routes: HashMap<String, Vec<RouteSpec>> = HashMap::new();
    for (router, route) in query_all(conn, &sql, scope.params(), route_row)? {
        routes.entry(router).or_default().push(route);
    }
    Ok(routers
        .into_iter()
        .map(|r| {
            let gateway =
                r.gw_port_id
                    .as_ref()
                    .and_then(|g| ports.get(g))
                    .map(|(port, next_hops)| GatewaySpec {
                        port: port.clone(),
                        next_hops: next_hops.clone(),
                        enable_snat: r.enable_snat,
                    });
            let (floating_ips, port_forwardings) = floating.remove(&r.id).unwrap_or_default();
            RouterSpec {
                interfaces: interfaces.remove(&r.id).unwrap_or_default(),
                routes: routes.remove(&r.id).unwrap_or_default(),
                id: r.id,
                dp_id: r.dp_id,
                admin_state_up: r.admin_state_up,
                gateway,
                floating_ips,
                port_forwardings,
            }
        })
        .collect())
}

/// Port id → spec (with its network's MTU) and next hops, for the interface and gateway ports
/// of the routers in `scope` that have at least one address.
fn router_ports(conn: &Connection, scope: Scope<'_>) -> Result<HashMap<String, PortAddrs>, Fault> {
    let sql = format!(
        "SELECT p.id, p.network_id, p.mac, f.ip, s.cidr, s.gateway_ip, n.mtu, s.ipv6_ra_mode
           FROM fixed_ips f
           JOIN ports p ON p.id = f.port_id JOIN subnets s ON s.id = f.subnet_id
           JOIN networks n ON n.id = p.network_id
         WHERE f.port_id IN (SELECT port_id FROM router_interfaces WHERE {}
                             UNION SELECT gw_port_id FROM routers WHERE {})
         ORDER BY f.rowid",
        scope.condition("router_id"),
        scope.condition("id"),
    );
    let rows = query_all(conn, &sql, scope.params(), |r| {
        let mac: String = r.get(2)?;
        let mac = parse_mac(&mac).ok_or_else(|| text_err(2, format!("bad mac {mac}")))?;
        let cidr: String = r.get(4)?;
        let cidr = IpNet::from_str(&cidr).map_err(|e| text_err(4, e.to_string()))?;
        let ip = addr_of(r.get(3)?);
        let gw: Option<[u8; 16]> = r.get(5)?;
        let address = IpNet::new(ip, cidr.prefix_len()).unwrap_or_else(|_| IpNet::from(ip));
        let ra = match (cidr, r.get::<_, Option<String>>(7)?) {
            (IpNet::V6(prefix), Some(m)) => {
                Ipv6Mode::parse(&m).map(|mode| RaPrefix { prefix, mode })
            }
            _ => None,
        };
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            mac,
            (address, ra),
            gw.map(addr_of),
            r.get::<_, u32>(6)?,
        ))
    })?;
    let mut out: HashMap<String, PortAddrs> = HashMap::new();
    for (id, network_id, mac, (address, ra), next_hop, mtu) in rows {
        let (spec, hops) = out.entry(id.clone()).or_insert_with(|| {
            let spec = PortSpec {
                port_id: id,
                network_id,
                mac,
                addresses: Vec::new(),
                mtu,
                ra_prefixes: Vec::new(),
            };
            (spec, Vec::new())
        });
        spec.addresses.push(address);
        spec.ra_prefixes.extend(ra);
        if let Some(h) = next_hop
            && !hops.contains(&h)
        {
            hops.push(h);
        }
    }
    Ok(out)
}
