//! Ports and their fixed IPs in the store.

use rusqlite::{Connection, OptionalExtension, params};

use super::{addr_of, addr_val, query_all, record};
use crate::model::{Fault, FixedIp, Port, mac_to_string};

// ---------------------------------------------------------------- ports

pub(super) fn load_fixed_ips(conn: &Connection, p: &mut Port) -> Result<(), Fault> {
    let sql = "SELECT subnet_id, ip FROM fixed_ips WHERE port_id=?1 ORDER BY rowid";
    p.fixed_ips = query_all(conn, sql, [&p.id], |r| {
        Ok(FixedIp {
            subnet_id: r.get(0)?,
            ip: addr_of(r.get(1)?),
        })
    })?;
    Ok(())
}

/// Whether any port has this MAC.
pub fn mac_in_use(conn: &Connection, mac: &[u8; 6]) -> Result<bool, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT 1 FROM ports WHERE mac=?1",
        [mac_to_string(mac)],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// A fresh `fa:16:3e:xx:xx:xx` MAC (Neutron's base MAC) not used by any port.
pub fn generate_mac(conn: &Connection) -> Result<[u8; 6], Fault> {
    for _ in 0..64 {
        let tail: [u8; 3] = rand::random();
        let mac = [0xfa, 0x16, 0x3e, tail[0], tail[1], tail[2]];
        if !mac_in_use(conn, &mac)? {
            return Ok(mac);
        }
    }
    Err(Fault::conflict(
        "MacAddressGenerationFailure",
        "Unable to generate unique mac.",
    ))
}

pub(super) fn write_fixed_ips(conn: &Connection, p: &Port) -> Result<(), Fault> {
    super::execute(conn, "DELETE FROM fixed_ips WHERE port_id=?1", [&p.id])?;
    for f in &p.fixed_ips {
        super::execute(
            conn,
            "INSERT INTO fixed_ips (port_id, subnet_id, ip) VALUES (?1,?2,?3)",
            params![p.id, f.subnet_id, addr_val(f.ip)],
        )
        .map_err(|e| match Fault::from(e) {
            f2 if f2.status == 409 => Fault::conflict(
                "IpAddressInUse",
                format!(
                    "Unable to complete operation for network {}. The IP address {} is in use.",
                    p.network_id, f.ip
                ),
            ),
            other => other,
        })?;
    }
    Ok(())
}

/// The network's ports (a network with ports cannot be deleted).
pub fn network_ports(conn: &Connection, network_id: &str) -> Result<Vec<Port>, Fault> {
    record::select(conn, "WHERE network_id=?1", [network_id])
}

/// Deletes the port and frees its addresses.
pub fn delete_port(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(conn, "DELETE FROM fixed_ips WHERE port_id=?1", [id])?;
    super::execute(conn, "DELETE FROM ports WHERE id=?1", [id])?;
    Ok(())
}
