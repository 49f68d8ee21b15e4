//! Networks and their subnets in the store.

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;
use rusqlite::{Connection, Row, params};

use super::{Table, addr_of, addr_val, query_all, text_err};
use crate::model::{Fault, Ipv6Mode, Network, Subnet};

// ---------------------------------------------------------------- networks

const NET_COLS: &str = "id, name, description, project_id, admin_state_up, external, physical_network, shared, status, mtu";

fn network_row(r: &Row) -> rusqlite::Result<Network> {
    Ok(Network {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        project_id: r.get(3)?,
        admin_state_up: r.get(4)?,
        external: r.get(5)?,
        physical_network: r.get(6)?,
        shared: r.get(7)?,
        status: r.get(8)?,
        mtu: r.get(9)?,
    })
}

const NETWORKS: Table<Network> = Table::whole("networks", NET_COLS, network_row);

/// Adds a network row.
pub fn insert_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    NETWORKS.insert(
        conn,
        params![
            n.id,
            n.name,
            n.description,
            n.project_id,
            n.admin_state_up,
            n.external,
            n.physical_network,
            n.shared,
            n.status,
            n.mtu
        ],
    )
}

/// Rewrites the mutable columns of `n`.
pub fn update_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    conn.execute(
        "UPDATE networks SET name=?2, description=?3, admin_state_up=?4, external=?5, shared=?6, status=?7, mtu=?8 WHERE id=?1",
        params![n.id, n.name, n.description, n.admin_state_up, n.external, n.shared, n.status, n.mtu],
    )?;
    Ok(())
}

/// The network, None when unknown.
pub fn get_network(conn: &Connection, id: &str) -> Result<Option<Network>, Fault> {
    NETWORKS.get(conn, id)
}

/// Every network in creation order.
pub fn list_networks(conn: &Connection) -> Result<Vec<Network>, Fault> {
    NETWORKS.select(conn, "", [])
}

/// Deletes the network and its subnets (callers check for ports first).
pub fn delete_network(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM subnets WHERE network_id=?1", [id])?;
    conn.execute("DELETE FROM networks WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- subnets

const SUBNET_COLS: &str = "id, network_id, name, description, project_id, cidr, gateway_ip, enable_dhcp, dns_nameservers, ipv6_ra_mode, ipv6_address_mode";

/// An IPv6 mode column (NULL: none).
fn mode_of(r: &Row, col: usize) -> rusqlite::Result<Option<Ipv6Mode>> {
    match r.get::<_, Option<String>>(col)? {
        None => Ok(None),
        Some(s) => Ipv6Mode::parse(&s)
            .map(Some)
            .ok_or_else(|| text_err(col, format!("bad IPv6 mode {s}"))),
    }
}

fn subnet_row(r: &Row) -> rusqlite::Result<Subnet> {
    let cidr: String = r.get(5)?;
    let cidr = IpNet::from_str(&cidr).map_err(|e| text_err(5, e.to_string()))?;
    let gw: Option<[u8; 16]> = r.get(6)?;
    let dns: String = r.get(8)?;
    Ok(Subnet {
        id: r.get(0)?,
        network_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        project_id: r.get(4)?,
        cidr,
        gateway_ip: gw.map(addr_of),
        allocation_pools: Vec::new(),
        enable_dhcp: r.get(7)?,
        dns_nameservers: dns
            .split(',')
            .filter_map(|s| IpAddr::from_str(s).ok())
            .collect(),
        ipv6_ra_mode: mode_of(r, 9)?,
        ipv6_address_mode: mode_of(r, 10)?,
    })
}

const SUBNETS: Table<Subnet> = Table {
    name: "subnets",
    cols: SUBNET_COLS,
    row: subnet_row,
    complete: load_pools,
};

fn load_pools(conn: &Connection, s: &mut Subnet) -> Result<(), Fault> {
    let sql = "SELECT first_ip, last_ip FROM allocation_pools WHERE subnet_id=?1 ORDER BY seq";
    s.allocation_pools = query_all(conn, sql, [&s.id], |r| {
        Ok((addr_of(r.get(0)?), addr_of(r.get(1)?)))
    })?;
    Ok(())
}

fn write_pools(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    conn.execute("DELETE FROM allocation_pools WHERE subnet_id=?1", [&s.id])?;
    for (i, (a, b)) in s.allocation_pools.iter().enumerate() {
        conn.execute(
            "INSERT INTO allocation_pools (subnet_id, seq, first_ip, last_ip) VALUES (?1,?2,?3,?4)",
            params![s.id, i as i64, addr_val(*a), addr_val(*b)],
        )?;
    }
    Ok(())
}

fn dns_text(s: &Subnet) -> String {
    s.dns_nameservers
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds a subnet and its pools.
pub fn insert_subnet(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    SUBNETS.insert(
        conn,
        params![
            s.id,
            s.network_id,
            s.name,
            s.description,
            s.project_id,
            s.cidr.to_string(),
            s.gateway_ip.map(addr_val),
            s.enable_dhcp,
            dns_text(s),
            s.ipv6_ra_mode.map(Ipv6Mode::as_str),
            s.ipv6_address_mode.map(Ipv6Mode::as_str)
        ],
    )?;
    write_pools(conn, s)
}

/// Rewrites the mutable columns and the pools of `s`.
pub fn update_subnet(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    conn.execute(
        "UPDATE subnets SET name=?2, description=?3, gateway_ip=?4, enable_dhcp=?5, dns_nameservers=?6 WHERE id=?1",
        params![
            s.id,
            s.name,
            s.description,
            s.gateway_ip.map(addr_val),
            s.enable_dhcp,
            dns_text(s)
        ],
    )?;
    write_pools(conn, s)
}

/// The subnet with its pools, None when unknown.
pub fn get_subnet(conn: &Connection, id: &str) -> Result<Option<Subnet>, Fault> {
    SUBNETS.get(conn, id)
}

/// Every subnet in creation order.
pub fn list_subnets(conn: &Connection) -> Result<Vec<Subnet>, Fault> {
    SUBNETS.select(conn, "", [])
}

/// The network's subnets in creation order (the order addresses are taken from).
pub fn network_subnets(conn: &Connection, network_id: &str) -> Result<Vec<Subnet>, Fault> {
    SUBNETS.select(conn, "WHERE network_id=?1", [network_id])
}

/// Deletes the subnet and its pools (callers check for allocations first).
pub fn delete_subnet(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM subnets WHERE id=?1", [id])?;
    Ok(())
}

/// How many addresses are allocated from the subnet.
pub fn subnet_ip_count(conn: &Connection, subnet_id: &str) -> Result<u64, Fault> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM fixed_ips WHERE subnet_id=?1",
        [subnet_id],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
