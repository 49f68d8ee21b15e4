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

/// v7: each pool remembers where its free addresses begin, so taking the first free address
/// reads from there instead of from the pool's start: before, every allocation walked every
/// address in use on the subnet, and 1000 gateways on one external subnet cost 1000 rows read
/// per gateway set (10 000 floating IPs, 10 000 rows per floating IP).
///
/// `next_ip` (NULL: the pool's first address) is a low-water mark: no address of the pool
/// below it is free, except the gateway. Allocation only raises it, to the address it hands
/// out (not past it: the caller may still not store that address, and then it must be found
/// again). The triggers lower it whenever an address is freed below it, on whatever path the
/// fixed IP goes (port delete, fixed IPs replaced, cascade), and drop it when the subnet's
/// gateway moves (the old gateway address may lie below it and is now free). Rewriting the
/// pools (`write_pools`) makes new rows without a mark. All of it is in the request's own
/// transaction, so a rolled-back request leaves the marks as they were.
pub(super) const MIGRATION: &str = "
ALTER TABLE allocation_pools ADD COLUMN next_ip BLOB;
CREATE TRIGGER fixed_ips_free_on_delete AFTER DELETE ON fixed_ips BEGIN
    UPDATE allocation_pools SET next_ip = OLD.ip
     WHERE subnet_id = OLD.subnet_id AND next_ip > OLD.ip
       AND OLD.ip BETWEEN first_ip AND last_ip;
END;
CREATE TRIGGER fixed_ips_free_on_update AFTER UPDATE OF subnet_id, ip ON fixed_ips BEGIN
    UPDATE allocation_pools SET next_ip = OLD.ip
     WHERE subnet_id = OLD.subnet_id AND next_ip > OLD.ip
       AND OLD.ip BETWEEN first_ip AND last_ip;
END;
CREATE TRIGGER subnets_gateway_moved AFTER UPDATE OF gateway_ip ON subnets
    WHEN OLD.gateway_ip IS NOT NEW.gateway_ip BEGIN
    UPDATE allocation_pools SET next_ip = NULL WHERE subnet_id = NEW.id;
END;
";

/// First address of the subnet's pools that is neither the gateway nor allocated; None when
/// the pools are exhausted. Each pool is read from its mark (`MIGRATION`) on, and the mark is
/// raised to what was found: the addresses read are those allocated since the last call, so
/// filling a pool costs O(1) a call however many addresses are in use.
pub fn first_free_ip(conn: &Connection, s: &Subnet) -> Result<Option<IpAddr>, Fault> {
    let gw = s.gateway_ip.map(ip_index);
    for &(a, b) in &s.allocation_pools {
        let (first, last) = (ip_index(a), ip_index(b));
        let from = pool_mark(conn, s, a, b)?.map_or(first, |m| ip_index(m).clamp(first, last));
        let free = first_free_from(conn, s, a, (from, last), gw)?;
        // An exhausted pool keeps its last address as the mark: the next call reads one row.
        raise_pool_mark(conn, s, (a, b), free.unwrap_or(last))?;
        if let Some(n) = free {
            return Ok(ip_at(a, n));
        }
    }
    Ok(None)
}

/// The first index in `from..=last` that is neither the gateway `gw` nor allocated on `s`
/// (`like`: an address of the pool's family).
fn first_free_from(
    conn: &Connection,
    s: &Subnet,
    like: IpAddr,
    (from, last): (u128, u128),
    gw: Option<u128>,
) -> Result<Option<u128>, Fault> {
    let (Some(lo), Some(hi)) = (ip_at(like, from), ip_at(like, last)) else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(
        "SELECT ip FROM fixed_ips WHERE subnet_id=?1 AND ip BETWEEN ?2 AND ?3 ORDER BY ip",
    )?;
    let mut used = st.query_map(params![s.id, addr_val(lo), addr_val(hi)], |r| {
        r.get::<_, [u8; 16]>(0)
    })?;
    let mut next_used = || -> Result<Option<u128>, Fault> {
        Ok(used.next().transpose()?.map(|u| ip_index(addr_of(u))))
    };
    let mut in_use = next_used()?;
    let mut candidate = from;
    while candidate <= last {
        match in_use {
            _ if Some(candidate) == gw => {}
            // Rows come in order, none below `from`: one behind is only ever the gateway's.
            Some(u) if u < candidate => {
                in_use = next_used()?;
                continue;
            }
            Some(u) if u == candidate => in_use = next_used()?,
            _ => return Ok(Some(candidate)),
        }
        let Some(next) = candidate.checked_add(1) else {
            break;
        };
        candidate = next;
    }
    Ok(None)
}

/// The mark of pool `a..=b` of `s` (None: unmarked, or the pool is not stored).
fn pool_mark(conn: &Connection, s: &Subnet, a: IpAddr, b: IpAddr) -> Result<Option<IpAddr>, Fault> {
    let mark = super::query_row(
        conn,
        "SELECT next_ip FROM allocation_pools WHERE subnet_id=?1 AND first_ip=?2 AND last_ip=?3",
        params![s.id, addr_val(a), addr_val(b)],
        |r| r.get::<_, Option<[u8; 16]>>(0),
    )
    .optional()?
    .flatten();
    Ok(mark.map(addr_of))
}

/// Raises the mark of pool `a..=b` of `s` to index `n` (never lowers it: only a freed address
/// does, through the triggers).
fn raise_pool_mark(
    conn: &Connection,
    s: &Subnet,
    (a, b): (IpAddr, IpAddr),
    n: u128,
) -> Result<(), Fault> {
    let Some(at) = ip_at(a, n) else {
        return Ok(());
    };
    super::execute(
        conn,
        "UPDATE allocation_pools SET next_ip=?4 \
         WHERE subnet_id=?1 AND first_ip=?2 AND last_ip=?3 AND (next_ip IS NULL OR next_ip < ?4)",
        params![s.id, addr_val(a), addr_val(b), addr_val(at)],
    )?;
    Ok(())
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
