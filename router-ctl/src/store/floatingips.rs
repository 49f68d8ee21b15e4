//! Floating IPs and their port forwardings in the store.
//!
//! A floating IP holds its address through a port on the external network (device owner
//! `network:floatingip`, device id = the floating IP's id), as Neutron does, so the address can
//! never be handed out twice. `router_id` is computed at association (or when the first port
//! forwarding is created) and stored. The schema refuses two floating IPs for one fixed IP and
//! duplicate port forwardings; the API turns those cases into Neutron's 409s first.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Scope, addr_val, record};
use crate::model::{
    Fault, FloatingIp, PortForwarding,
    spec::{FloatingIpSpec, PortForwardingSpec},
};

/// Schema v3 (appended to the store's migrations).
pub const MIGRATION: &str = r#"
CREATE TABLE floatingips (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    floating_network_id TEXT NOT NULL REFERENCES networks(id),
    floating_port_id TEXT NOT NULL REFERENCES ports(id),
    floating_ip INTEGER NOT NULL,
    port_id TEXT,
    fixed_ip INTEGER,
    router_id TEXT,
    UNIQUE (port_id, fixed_ip)
);
CREATE INDEX floatingips_router ON floatingips(router_id);
CREATE INDEX floatingips_port ON floatingips(port_id);
CREATE TABLE port_forwardings (
    id TEXT PRIMARY KEY,
    floatingip_id TEXT NOT NULL REFERENCES floatingips(id) ON DELETE CASCADE,
    protocol TEXT NOT NULL,
    external_port INTEGER NOT NULL,
    internal_port_id TEXT NOT NULL,
    internal_ip INTEGER NOT NULL,
    internal_port INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    UNIQUE (floatingip_id, protocol, external_port),
    UNIQUE (internal_ip, internal_port, protocol)
);
CREATE INDEX port_forwardings_port ON port_forwardings(internal_port_id);
"#;

/// Floating IPs associated with `port_id`.
pub fn port_floatingips(conn: &Connection, port_id: &str) -> Result<Vec<FloatingIp>, Fault> {
    record::select(conn, "WHERE port_id=?1", [&port_id])
}

/// Floating IPs served by `router_id` (associated, or holding port forwardings).
pub fn router_floatingips(conn: &Connection, router_id: &str) -> Result<Vec<FloatingIp>, Fault> {
    record::select(conn, "WHERE router_id=?1", [&router_id])
}

/// The floating IP already associated with `(port_id, fixed_ip)`, if any.
pub fn fip_of_fixed_ip(
    conn: &Connection,
    port_id: &str,
    fixed_ip: IpAddr,
) -> Result<Option<String>, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT id FROM floatingips WHERE port_id=?1 AND fixed_ip=?2",
        params![port_id, addr_val(fixed_ip)],
        |r| r.get(0),
    )
    .optional()?)
}

/// Deletes the floating IP row (its port forwardings go with it; the caller deletes its port).
pub fn delete_floatingip(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "DELETE FROM port_forwardings WHERE floatingip_id=?1",
        [id],
    )?;
    super::execute(conn, "DELETE FROM floatingips WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- port forwardings

pub fn get_port_forwarding(
    conn: &Connection,
    fip_id: &str,
    id: &str,
) -> Result<Option<PortForwarding>, Fault> {
    Ok(record::select(conn, "WHERE id=?1 AND floatingip_id=?2", [id, fip_id])?.pop())
}

pub fn fip_port_forwardings(conn: &Connection, fip_id: &str) -> Result<Vec<PortForwarding>, Fault> {
    record::select(conn, "WHERE floatingip_id=?1", [fip_id])
}

/// Port forwardings whose internal port is `port_id`.
pub fn port_port_forwardings(
    conn: &Connection,
    port_id: &str,
) -> Result<Vec<PortForwarding>, Fault> {
    record::select(conn, "WHERE internal_port_id=?1", [port_id])
}

/// Another port forwarding that `p` would duplicate (same floating IP, protocol and external
/// port, or same internal address, port and protocol), so the API can answer Neutron's 409
/// before the schema's UNIQUE constraints fire.
pub fn duplicate_port_forwarding(
    conn: &Connection,
    p: &PortForwarding,
) -> Result<Option<String>, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT id FROM port_forwardings WHERE id<>?1 AND protocol=?2 AND
               ((floatingip_id=?3 AND external_port=?4) OR (internal_ip=?5 AND internal_port=?6))",
        params![
            p.id,
            p.protocol,
            p.floatingip_id,
            p.external_port,
            addr_val(p.internal_ip),
            p.internal_port
        ],
        |r| r.get(0),
    )
    .optional()?)
}

/// The first router (in creation order) with an interface on `subnet_id` and its gateway on
/// `network_id`: the one that can serve a floating IP of that network for an address there.
pub fn serving_router(
    conn: &Connection,
    network_id: &str,
    subnet_id: &str,
) -> Result<Option<String>, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT r.id FROM routers r
               JOIN ports gp ON gp.id = r.gw_port_id
               JOIN router_interfaces i ON i.router_id = r.id
               JOIN fixed_ips f ON f.port_id = i.port_id
             WHERE gp.network_id = ?1 AND f.subnet_id = ?2
             ORDER BY r.rowid LIMIT 1",
        [network_id, subnet_id],
        |row| row.get(0),
    )
    .optional()?)
}

pub fn delete_port_forwarding(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(conn, "DELETE FROM port_forwardings WHERE id=?1", [id])?;
    Ok(())
}

/// IP protocol number of a port forwarding's protocol name.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        _ => None,
    }
}

/// A router's floating IPs and port forwardings, as its spec holds them.
pub type RouterFloating = (Vec<FloatingIpSpec>, Vec<PortForwardingSpec>);

/// `ip` if IPv4: the datapath translates IPv4 only, so floating IPs and port forwardings are
/// IPv4 (the API accepts no other family for them).
fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The floating IPs and port forwardings of each router in `scope` that serves any, as its
/// spec holds them (sorted).
pub fn router_floating(
    conn: &Connection,
    scope: Scope<'_>,
) -> Result<HashMap<String, RouterFloating>, Fault> {
    let mut out: HashMap<String, RouterFloating> = HashMap::new();
    let filter = format!(
        "WHERE router_id IS NOT NULL AND {}",
        scope.condition("router_id")
    );
    let fips: Vec<FloatingIp> = record::select(conn, &filter, scope.params())?;
    let mut by_fip: HashMap<&str, (&str, Ipv4Addr)> = HashMap::new();
    for f in &fips {
        let (Some(r), Some(floating_ip)) = (&f.router_id, v4(f.floating_ip)) else {
            continue;
        };
        by_fip.insert(&f.id, (r, floating_ip));
        out.entry(r.clone()).or_default().0.push(FloatingIpSpec {
            floating_ip,
            fixed_ip: f.fixed_ip.and_then(v4).filter(|_| f.port_id.is_some()),
        });
    }
    let sql = format!(
        "SELECT {} FROM port_forwardings p JOIN floatingips f ON f.id = p.floatingip_id
         WHERE f.router_id IS NOT NULL AND {} ORDER BY p.rowid",
        record::columns::<PortForwarding>("p."),
        scope.condition("f.router_id")
    );
    for p in record::query::<PortForwarding, _>(conn, &sql, scope.params())? {
        let (Some((r, fip)), Some(protocol), Some(internal_ip)) = (
            by_fip.get(p.floatingip_id.as_str()),
            protocol_number(&p.protocol),
            v4(p.internal_ip),
        ) else {
            continue;
        };
        out.entry(r.to_string())
            .or_default()
            .1
            .push(PortForwardingSpec {
                protocol,
                floating_ip: *fip,
                external_port: p.external_port,
                internal_ip,
                internal_port: p.internal_port,
            });
    }
    for (f, p) in out.values_mut() {
        f.sort();
        p.sort();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Subnet,
        store::{
            self, Store,
            tests::{net, port, router, subnet},
        },
    };

    fn setup(s: &Store) -> (FloatingIp, PortForwarding) {
        let c = s.conn();
        store::insert(c, &net("ext", true)).expect("network");
        let sub = Subnet {
            gateway_ip: None,
            enable_dhcp: false,
            ..subnet("sub", "ext", "192.0.2.0/24", &[])
        };
        store::insert(c, &sub).expect("subnet");
        for (id, mac, ip) in [
            ("fport", 1u8, [192, 0, 2, 50]),
            ("vm", 2, [192, 0, 2, 5]),
            ("fport2", 3, [192, 0, 2, 51]),
        ] {
            let mac = [0xfa, 0x16, 0x3e, 0, 0, mac];
            store::insert(c, &port(id, "ext", mac, &[("sub", ip.into())])).expect("port");
        }
        store::insert(c, &router("r", 1, None)).expect("router");
        let f = FloatingIp {
            id: "f".into(),
            project_id: "p".into(),
            description: String::new(),
            floating_network_id: "ext".into(),
            floating_port_id: "fport".into(),
            floating_ip: [192, 0, 2, 50].into(),
            port_id: Some("vm".into()),
            fixed_ip: Some([192, 0, 2, 5].into()),
            router_id: Some("r".into()),
        };
        store::insert(c, &f).expect("fip");
        let pf = PortForwarding {
            id: "pf".into(),
            floatingip_id: "f".into(),
            protocol: "tcp".into(),
            external_port: 2222,
            internal_port_id: "vm".into(),
            internal_ip: [192, 0, 2, 5].into(),
            internal_port: 22,
            description: String::new(),
        };
        store::insert(c, &pf).expect("pf");
        (f, pf)
    }

    #[test]
    fn schema_refuses_duplicates_and_specs_agree() {
        let s = Store::open_in_memory().expect("store");
        let (f, pf) = setup(&s);
        let c = s.conn();
        assert_eq!(
            store::get::<FloatingIp>(c, "f").expect("get"),
            Some(f.clone())
        );
        assert_eq!(
            fip_of_fixed_ip(c, "vm", f.fixed_ip.expect("ip")).expect("q"),
            Some("f".into())
        );
        // One fixed IP, one floating IP.
        let mut twin = f.clone();
        twin.id = "f2".into();
        twin.floating_port_id = "fport2".into();
        twin.floating_ip = [192, 0, 2, 51].into();
        assert_eq!(store::insert(c, &twin).map_err(|e| e.status), Err(409));
        // Same FIP+protocol+external port, or same internal address+port+protocol.
        let mut dup = pf.clone();
        dup.id = "pf2".into();
        dup.internal_port = 23;
        assert_eq!(store::insert(c, &dup).map_err(|e| e.status), Err(409));
        let mut dup = pf.clone();
        dup.id = "pf3".into();
        dup.external_port = 2223;
        assert_eq!(store::insert(c, &dup).map_err(|e| e.status), Err(409));
        let mut other = pf.clone();
        other.id = "pf4".into();
        other.protocol = "udp".into();
        store::insert(c, &other).expect("same ports, other protocol");
        // The per-router and bulk views agree.
        let one = router_floating(c, Scope::Router("r")).expect("one");
        let all = router_floating(c, Scope::All).expect("all");
        assert_eq!(all, one);
        let one = &one["r"];
        assert_eq!(one.0.len(), 1);
        assert_eq!(one.1.len(), 2);
        assert_eq!(one.0[0].fixed_ip, Some([192, 0, 2, 5].into()));
        // Deleting the floating IP takes its forwardings.
        delete_floatingip(c, "f").expect("delete");
        assert!(fip_port_forwardings(c, "f").expect("list").is_empty());
        assert!(router_floating(c, Scope::All).expect("all").is_empty());
    }
}
