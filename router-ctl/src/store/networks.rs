//! Networks and their subnets in the store.

use rusqlite::{Connection, params};

use super::{
    addr_of, addr_val, query_all,
    record::{self, record},
};
use crate::model::{Fault, Network, Subnet};

// ---------------------------------------------------------------- networks

record! {
    Network in "networks" keyed by [id] {
        id, name, description, project_id, admin_state_up, external, physical_network, shared,
        status, mtu,
    }
    mutable [name, description, admin_state_up, external, shared, status, mtu]
}

/// Adds a network row.
pub fn insert_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    record::insert(conn, n)
}

/// Rewrites the mutable columns of `n`.
pub fn update_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    record::update(conn, n)
}

/// The network, None when unknown.
pub fn get_network(conn: &Connection, id: &str) -> Result<Option<Network>, Fault> {
    record::get(conn, id)
}

/// Every network in creation order.
pub fn list_networks(conn: &Connection) -> Result<Vec<Network>, Fault> {
    record::select(conn, "", [])
}

/// Deletes the network and its subnets (callers check for ports first).
pub fn delete_network(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM subnets WHERE network_id=?1", [id])?;
    conn.execute("DELETE FROM networks WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- subnets

record! {
    Subnet in "subnets" keyed by [id] {
        id, network_id, name, description, project_id, cidr, gateway_ip, enable_dhcp,
        dns_nameservers, ipv6_ra_mode, ipv6_address_mode,
    }
    mutable [name, description, gateway_ip, enable_dhcp, dns_nameservers]
    filled { allocation_pools: Vec::new() } by load_pools
}

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

/// Adds a subnet and its pools.
pub fn insert_subnet(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    record::insert(conn, s)?;
    write_pools(conn, s)
}

/// Rewrites the mutable columns and the pools of `s`.
pub fn update_subnet(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    record::update(conn, s)?;
    write_pools(conn, s)
}

/// The subnet with its pools, None when unknown.
pub fn get_subnet(conn: &Connection, id: &str) -> Result<Option<Subnet>, Fault> {
    record::get(conn, id)
}

/// Every subnet in creation order.
pub fn list_subnets(conn: &Connection) -> Result<Vec<Subnet>, Fault> {
    record::select(conn, "", [])
}

/// The network's subnets in creation order (the order addresses are taken from).
pub fn network_subnets(conn: &Connection, network_id: &str) -> Result<Vec<Subnet>, Fault> {
    record::select(conn, "WHERE network_id=?1", [network_id])
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
