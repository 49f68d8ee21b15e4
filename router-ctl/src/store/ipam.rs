//! IP address management: which addresses of a subnet are free, and picking one.

use std::net::IpAddr;

use rusqlite::{Connection, OptionalExtension, params};

use super::{addr_of, addr_val};
use ipnet::IpNet;

use crate::model::{Fault, Subnet, eui64_address, ip_at, ip_index};

// ---------------------------------------------------------------- IPAM

/// Whether `ip` is allocated to any port on the subnet.
pub fn ip_in_use(conn: &Connection, subnet_id: &str, ip: IpAddr) -> Result<bool, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT 1 FROM fixed_ips WHERE subnet_id=?1 AND ip=?2",
        params![subnet_id, addr_val(ip)],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// First address of the subnet's pools that is neither the gateway nor allocated; None when
/// the pools are exhausted. Walks the allocated addresses of each pool in order, so the cost
/// is the number of addresses in use, not the size of the pool.
pub fn first_free_ip(conn: &Connection, s: &Subnet) -> Result<Option<IpAddr>, Fault> {
    let mut st = conn.prepare_cached(
        "SELECT ip FROM fixed_ips WHERE subnet_id=?1 AND ip BETWEEN ?2 AND ?3 ORDER BY ip",
    )?;
    let gw = s.gateway_ip.map(ip_index);
    for (a, b) in &s.allocation_pools {
        let used = st.query_map(params![s.id, addr_val(*a), addr_val(*b)], |r| {
            r.get::<_, [u8; 16]>(0)
        })?;
        let (mut candidate, last) = (ip_index(*a), ip_index(*b));
        let mut used_iter = used.peekable();
        while candidate <= last {
            if Some(candidate) == gw {
                candidate += 1;
                continue;
            }
            match used_iter.peek() {
                Some(Ok(u)) if ip_index(addr_of(*u)) == candidate => {
                    used_iter.next();
                    candidate += 1;
                }
                Some(Ok(u)) if ip_index(addr_of(*u)) < candidate => {
                    used_iter.next();
                }
                Some(Err(_)) => {
                    if let Some(Err(e)) = used_iter.next() {
                        return Err(e.into());
                    }
                }
                _ => return Ok(ip_at(*a, candidate)),
            }
        }
    }
    Ok(None)
}

/// Picks the address for one fixed IP on `s`: `requested` if valid and free (the gateway
/// only when `allow_gateway`, i.e. for a router interface), else the first free one.
pub fn allocate_ip(
    conn: &Connection,
    s: &Subnet,
    requested: Option<IpAddr>,
    allow_gateway: bool,
) -> Result<IpAddr, Fault> {
    match requested {
        Some(ip) => {
            let hosts = crate::model::host_range(&s.cidr);
            let valid = s.cidr.contains(&ip) && hosts.is_some_and(|(a, b)| ip >= a && ip <= b);
            if !valid {
                return Err(Fault::new(
                    400,
                    "InvalidIpForSubnet",
                    format!("IP address {ip} is not a valid IP for the specified subnet."),
                ));
            }
            if (Some(ip) == s.gateway_ip && !allow_gateway) || ip_in_use(conn, &s.id, ip)? {
                return Err(in_use(s, ip));
            }
            Ok(ip)
        }
        None => first_free_ip(conn, s)?.ok_or_else(|| {
            Fault::conflict(
                "IpAddressGenerationFailure",
                format!(
                    "No more IP addresses available on network {}.",
                    s.network_id
                ),
            )
        }),
    }
}

/// The EUI-64 address of `mac` on an auto-address (SLAAC, DHCPv6-stateless) subnet, as
/// Neutron's IPAM computes it; 409 `IpAddressInUse` when a port already has it (same MAC).
pub fn auto_address(conn: &Connection, s: &Subnet, mac: &[u8; 6]) -> Result<IpAddr, Fault> {
    let IpNet::V6(prefix) = s.cidr else {
        return Err(Fault::internal("EUI-64 address asked of an IPv4 subnet"));
    };
    let ip = IpAddr::V6(eui64_address(&prefix, mac));
    if ip_in_use(conn, &s.id, ip)? {
        return Err(in_use(s, ip));
    }
    Ok(ip)
}

/// Neutron's `IpAddressInUse` for `ip` on the network of `s`.
fn in_use(s: &Subnet, ip: IpAddr) -> Fault {
    Fault::conflict(
        "IpAddressInUse",
        format!(
            "Unable to complete operation for network {}. The IP address {ip} is in use.",
            s.network_id
        ),
    )
}
