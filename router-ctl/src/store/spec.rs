//! The desired kernel state built from the store.

use super::*;

// ---------------------------------------------------------------- specs

/// The kernel-side description of the network, None when it does not exist.
pub fn network_spec(conn: &Connection, id: &str) -> Result<Option<NetworkSpec>, Fault> {
    Ok(get_network(conn, id)?.map(|n| NetworkSpec {
        id: n.id,
        physical_network: n.physical_network,
        external: n.external,
    }))
}

fn port_spec(conn: &Connection, p: &Port) -> Result<Option<(PortSpec, Subnet)>, Fault> {
    let Some(f) = p.fixed_ips.first() else {
        return Ok(None);
    };
    let Some(s) = get_subnet(conn, &f.subnet_id)? else {
        return Ok(None);
    };
    Ok(Some((
        PortSpec {
            port_id: p.id.clone(),
            network_id: p.network_id.clone(),
            mac: p.mac,
            ip: f.ip,
            subnet_cidr: s.cidr,
        },
        s,
    )))
}

/// The kernel-side description of the router, None when it does not exist.
pub fn router_spec(conn: &Connection, id: &str) -> Result<Option<RouterSpec>, Fault> {
    let Some(r) = get_router(conn, id)? else {
        return Ok(None);
    };
    let mut interfaces = Vec::new();
    for p in router_interfaces(conn, id)? {
        if let Some((spec, _)) = port_spec(conn, &p)? {
            interfaces.push(spec);
        }
    }
    let mut gateway = None;
    if let Some(gw) = &r.gw_port_id
        && let Some(p) = get_port(conn, gw)?
        && let Some((port, subnet)) = port_spec(conn, &p)?
    {
        gateway = Some(GatewaySpec {
            port,
            next_hop: subnet.gateway_ip,
            enable_snat: r.enable_snat,
        });
    }
    let (floating_ips, port_forwardings) = floatingips::router_floating(conn, &r.id)?;
    Ok(Some(RouterSpec {
        id: r.id,
        dp_id: r.dp_id,
        admin_state_up: r.admin_state_up,
        interfaces,
        gateway,
        floating_ips,
        port_forwardings,
    }))
}

/// Everything that should be realised: the same specs `router_spec` gives one by one, built
/// from five whole-table queries so a pass over a thousand routers stays cheap.
pub fn desired_state(conn: &Connection) -> Result<DesiredState, Fault> {
    use std::collections::HashMap;

    let networks = list_networks(conn)?
        .into_iter()
        .map(|n| NetworkSpec {
            id: n.id,
            physical_network: n.physical_network,
            external: n.external,
        })
        .collect();

    // subnet id → (cidr, gateway)
    let mut subnets: HashMap<String, (Ipv4Net, Option<Ipv4Addr>)> = HashMap::new();
    {
        let mut st = conn.prepare_cached("SELECT id, cidr, gateway_ip FROM subnets")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let cidr: String = r.get(1)?;
            let cidr =
                Ipv4Net::from_str(&cidr).map_err(|e| Fault::from(text_err(1, e.to_string())))?;
            let gw: Option<i64> = r.get(2)?;
            subnets.insert(r.get(0)?, (cidr, gw.map(ip_of)));
        }
    }
    // port id → (its spec, the gateway of its subnet); first fixed IP as in `port_spec`.
    let mut ports: HashMap<String, (PortSpec, Option<Ipv4Addr>)> = HashMap::new();
    {
        let mut st = conn.prepare_cached(
            "SELECT p.id, p.network_id, p.mac, f.subnet_id, f.ip FROM fixed_ips f
             JOIN ports p ON p.id = f.port_id ORDER BY f.rowid",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            if ports.contains_key(&id) {
                continue;
            }
            let mac: String = r.get(2)?;
            let mac = parse_mac(&mac)
                .ok_or_else(|| Fault::from(text_err(2, format!("bad mac {mac}"))))?;
            let subnet_id: String = r.get(3)?;
            let Some((cidr, gw)) = subnets.get(&subnet_id) else {
                continue;
            };
            let spec = PortSpec {
                port_id: id.clone(),
                network_id: r.get(1)?,
                mac,
                ip: ip_of(r.get(4)?),
                subnet_cidr: *cidr,
            };
            ports.insert(id, (spec, *gw));
        }
    }
    // router id → interface port ids in the order they were added
    let mut interfaces: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut st =
            conn.prepare_cached("SELECT router_id, port_id FROM router_interfaces ORDER BY rowid")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            interfaces.entry(r.get(0)?).or_default().push(r.get(1)?);
        }
    }
    let mut floating = floatingips::all_router_floating(conn)?;
    let routers = list_routers(conn)?
        .into_iter()
        .map(|r| {
            let ifaces = interfaces
                .get(&r.id)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|p| ports.get(p).map(|(s, _)| s.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let gateway =
                r.gw_port_id
                    .as_ref()
                    .and_then(|g| ports.get(g))
                    .map(|(port, next_hop)| GatewaySpec {
                        port: port.clone(),
                        next_hop: *next_hop,
                        enable_snat: r.enable_snat,
                    });
            let (floating_ips, port_forwardings) = floating.remove(&r.id).unwrap_or_default();
            RouterSpec {
                id: r.id,
                dp_id: r.dp_id,
                admin_state_up: r.admin_state_up,
                interfaces: ifaces,
                gateway,
                floating_ips,
                port_forwardings,
            }
        })
        .collect();
    Ok(DesiredState { networks, routers })
}
