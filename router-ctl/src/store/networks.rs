//! Networks and their subnets in the store.

use rusqlite::{Connection, params};

use super::{addr_of, addr_val, query_all, record};
use crate::model::{Fault, Subnet};

// ---------------------------------------------------------------- networks

/// Deletes the network and its subnets (callers check for ports first).
pub fn delete_network(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(conn, "DELETE FROM subnets WHERE network_id=?1", [id])?;
    super::execute(conn, "DELETE FROM networks WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- subnets

pub(super) fn load_pools(conn: &Connection, s: &mut Subnet) -> Result<(), Fault> {
    let sql = "SELECT first_ip, last_ip FROM allocation_pools WHERE subnet_id=?1 ORDER BY seq";
    s.allocation_pools = query_all(conn, sql, [&s.id], |r| {
        Ok((addr_of(r.get(0)?), addr_of(r.get(1)?)))
    })?;
    Ok(())
}

pub(super) fn write_pools(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    super::execute(
        conn,
        "DELETE FROM allocation_pools WHERE subnet_id=?1",
        [&s.id],
    )?;
    for (i, (a, b)) in s.allocation_pools.iter().enumerate() {
        super::execute(
            conn,
            "INSERT INTO allocation_pools (subnet_id, seq, first_ip, last_ip) VALUES (?1,?2,?3,?4)",
            params![s.id, i as i64, addr_val(*a), addr_val(*b)],
        )?;
    }
    Ok(())
}

/// The network's subnets in creation order (the order addresses are taken from).
pub fn network_subnets(conn: &Connection, network_id: &str) -> Result<Vec<Subnet>, Fault> {
    record::select(conn, "WHERE network_id=?1", [network_id])
}

/// Deletes the subnet and its pools (callers check for allocations first).
pub fn delete_subnet(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(conn, "DELETE FROM subnets WHERE id=?1", [id])?;
    Ok(())
}

/// How many addresses are allocated from the subnet.
pub fn subnet_ip_count(conn: &Connection, subnet_id: &str) -> Result<u64, Fault> {
    let n: i64 = super::query_row(
        conn,
        "SELECT COUNT(*) FROM fixed_ips WHERE subnet_id=?1",
        [subnet_id],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
