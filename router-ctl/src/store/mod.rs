//! Desired state in SQLite (`<state-dir>/router.db`): versioned migrations, one transaction per
//! change, IP allocation that can never hand out an address twice.
//!
//! Functions take a `&Connection`: pass the open `Transaction` (it derefs to one) so every
//! read and write of a request sees and changes the same snapshot. Uniqueness is enforced by
//! the schema itself (`UNIQUE(subnet_id, ip)`, `UNIQUE(mac)`, `UNIQUE(dp_id)`), the checks in
//! this module only turn those cases into Neutron's errors before the constraint fires.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

pub mod floatingips;

use crate::model::{
    Fault, FixedIp, Network, Port, Router, Subnet, mac_to_string, parse_mac,
    spec::{DesiredState, GatewaySpec, NetworkSpec, PortSpec, RouterSpec},
};

/// Schema versions; `PRAGMA user_version` is the number applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    project_id TEXT NOT NULL,
    admin_state_up INTEGER NOT NULL,
    external INTEGER NOT NULL,
    physical_network TEXT,
    shared INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE subnets (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    project_id TEXT NOT NULL,
    cidr TEXT NOT NULL,
    gateway_ip INTEGER,
    enable_dhcp INTEGER NOT NULL,
    dns_nameservers TEXT NOT NULL DEFAULT ''
);
CREATE INDEX subnets_network ON subnets(network_id);
CREATE TABLE allocation_pools (
    subnet_id TEXT NOT NULL REFERENCES subnets(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    first_ip INTEGER NOT NULL,
    last_ip INTEGER NOT NULL,
    PRIMARY KEY (subnet_id, seq)
);
CREATE TABLE ports (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    project_id TEXT NOT NULL,
    mac TEXT NOT NULL UNIQUE,
    admin_state_up INTEGER NOT NULL,
    device_owner TEXT NOT NULL,
    device_id TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX ports_network ON ports(network_id);
CREATE INDEX ports_device ON ports(device_id);
CREATE TABLE fixed_ips (
    port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
    subnet_id TEXT NOT NULL REFERENCES subnets(id),
    ip INTEGER NOT NULL,
    UNIQUE (subnet_id, ip)
);
CREATE INDEX fixed_ips_port ON fixed_ips(port_id);
CREATE TABLE routers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    project_id TEXT NOT NULL,
    admin_state_up INTEGER NOT NULL,
    status TEXT NOT NULL,
    dp_id INTEGER NOT NULL UNIQUE,
    gw_port_id TEXT REFERENCES ports(id),
    enable_snat INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE router_interfaces (
    router_id TEXT NOT NULL REFERENCES routers(id),
    port_id TEXT NOT NULL UNIQUE REFERENCES ports(id),
    PRIMARY KEY (router_id, port_id)
);
"#,
    // v2: find a gateway port's router without scanning every router.
    r#"
CREATE INDEX routers_gw_port ON routers(gw_port_id);
"#,
    // v3: floating IPs and their port forwardings.
    floatingips::MIGRATION,
];

/// Highest datapath slot (exclusive): the datapath's per-router maps hold this many.
pub const MAX_DP_ID: u32 = router_common::MAX_ROUTERS;

/// The database of one daemon.
pub struct Store {
    conn: Connection,
    /// The database file (None: in memory), for extra read-only connections.
    path: Option<std::path::PathBuf>,
}

impl Store {
    /// Opens (creating) `path` and applies pending migrations.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Self::init(conn)?;
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    /// A read-only connection to the same file: in WAL mode it reads the last committed state
    /// without waiting for the writer (None for an in-memory store).
    pub fn reader(&self) -> anyhow::Result<Option<Connection>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Some(conn))
    }

    /// A private in-memory database (tests, tools).
    pub fn open_in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self { conn, path: None })
    }

    /// Starts the one transaction a change runs in (immediate: the writer lock is taken now).
    pub fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// Read access outside a transaction.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Everything that should be realised, for the reconcile loop.
    pub fn desired_state(&self) -> Result<DesiredState, Fault> {
        desired_state(&self.conn)
    }

    /// Schema version applied.
    pub fn schema_version(&self) -> rusqlite::Result<u32> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
    }
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let have: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let have = usize::try_from(have).unwrap_or(usize::MAX);
    if have > MIGRATIONS.len() {
        anyhow::bail!(
            "database schema version {have} is newer than this binary understands ({})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- conversions

/// Every row `sql` selects with `params`, mapped by `row`, through the statement cache.
fn query_all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    row: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Fault> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map(params, row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn ip_of(v: i64) -> Ipv4Addr {
    Ipv4Addr::from(v as u32)
}

fn ip_val(ip: Ipv4Addr) -> i64 {
    i64::from(u32::from(ip))
}

fn text_err(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, msg.into())
}

// ---------------------------------------------------------------- networks

const NET_COLS: &str =
    "id, name, description, project_id, admin_state_up, external, physical_network, shared, status";

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
    })
}

/// Adds a network row.
pub fn insert_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    conn.execute(
        &format!("INSERT INTO networks ({NET_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
        params![
            n.id,
            n.name,
            n.description,
            n.project_id,
            n.admin_state_up,
            n.external,
            n.physical_network,
            n.shared,
            n.status
        ],
    )?;
    Ok(())
}

/// Rewrites the mutable columns of `n`.
pub fn update_network(conn: &Connection, n: &Network) -> Result<(), Fault> {
    conn.execute(
        "UPDATE networks SET name=?2, description=?3, admin_state_up=?4, external=?5, shared=?6, status=?7 WHERE id=?1",
        params![n.id, n.name, n.description, n.admin_state_up, n.external, n.shared, n.status],
    )?;
    Ok(())
}

/// The network, None when unknown.
pub fn get_network(conn: &Connection, id: &str) -> Result<Option<Network>, Fault> {
    Ok(conn
        .query_row(
            &format!("SELECT {NET_COLS} FROM networks WHERE id=?1"),
            [id],
            network_row,
        )
        .optional()?)
}

/// Every network in creation order.
pub fn list_networks(conn: &Connection) -> Result<Vec<Network>, Fault> {
    let sql = format!("SELECT {NET_COLS} FROM networks ORDER BY rowid");
    query_all(conn, &sql, [], network_row)
}

/// Deletes the network and its subnets (callers check for ports first).
pub fn delete_network(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM subnets WHERE network_id=?1", [id])?;
    conn.execute("DELETE FROM networks WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- subnets

const SUBNET_COLS: &str =
    "id, network_id, name, description, project_id, cidr, gateway_ip, enable_dhcp, dns_nameservers";

fn subnet_row(r: &Row) -> rusqlite::Result<Subnet> {
    let cidr: String = r.get(5)?;
    let cidr = Ipv4Net::from_str(&cidr).map_err(|e| text_err(5, e.to_string()))?;
    let gw: Option<i64> = r.get(6)?;
    let dns: String = r.get(8)?;
    Ok(Subnet {
        id: r.get(0)?,
        network_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        project_id: r.get(4)?,
        cidr,
        gateway_ip: gw.map(ip_of),
        allocation_pools: Vec::new(),
        enable_dhcp: r.get(7)?,
        dns_nameservers: dns
            .split(',')
            .filter_map(|s| Ipv4Addr::from_str(s).ok())
            .collect(),
    })
}

fn load_pools(conn: &Connection, s: &mut Subnet) -> Result<(), Fault> {
    let sql = "SELECT first_ip, last_ip FROM allocation_pools WHERE subnet_id=?1 ORDER BY seq";
    s.allocation_pools = query_all(conn, sql, [&s.id], |r| {
        Ok((ip_of(r.get(0)?), ip_of(r.get(1)?)))
    })?;
    Ok(())
}

fn write_pools(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    conn.execute("DELETE FROM allocation_pools WHERE subnet_id=?1", [&s.id])?;
    for (i, (a, b)) in s.allocation_pools.iter().enumerate() {
        conn.execute(
            "INSERT INTO allocation_pools (subnet_id, seq, first_ip, last_ip) VALUES (?1,?2,?3,?4)",
            params![s.id, i as i64, ip_val(*a), ip_val(*b)],
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
    conn.execute(
        &format!("INSERT INTO subnets ({SUBNET_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
        params![
            s.id,
            s.network_id,
            s.name,
            s.description,
            s.project_id,
            s.cidr.to_string(),
            s.gateway_ip.map(ip_val),
            s.enable_dhcp,
            dns_text(s)
        ],
    )?;
    write_pools(conn, s)
}

/// Rewrites the mutable columns and the pools of `s`.
pub fn update_subnet(conn: &Connection, s: &Subnet) -> Result<(), Fault> {
    conn.execute(
        "UPDATE subnets SET name=?2, description=?3, gateway_ip=?4, enable_dhcp=?5, dns_nameservers=?6 WHERE id=?1",
        params![s.id, s.name, s.description, s.gateway_ip.map(ip_val), s.enable_dhcp, dns_text(s)],
    )?;
    write_pools(conn, s)
}

/// The subnet with its pools, None when unknown.
pub fn get_subnet(conn: &Connection, id: &str) -> Result<Option<Subnet>, Fault> {
    let s = conn
        .query_row(
            &format!("SELECT {SUBNET_COLS} FROM subnets WHERE id=?1"),
            [id],
            subnet_row,
        )
        .optional()?;
    match s {
        Some(mut s) => {
            load_pools(conn, &mut s)?;
            Ok(Some(s))
        }
        None => Ok(None),
    }
}

fn query_subnets(
    conn: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Subnet>, Fault> {
    let mut out = query_all(conn, sql, p, subnet_row)?;
    for s in &mut out {
        load_pools(conn, s)?;
    }
    Ok(out)
}

/// Every subnet in creation order.
pub fn list_subnets(conn: &Connection) -> Result<Vec<Subnet>, Fault> {
    query_subnets(
        conn,
        &format!("SELECT {SUBNET_COLS} FROM subnets ORDER BY rowid"),
        &[],
    )
}

/// The network's subnets in creation order (the order addresses are taken from).
pub fn network_subnets(conn: &Connection, network_id: &str) -> Result<Vec<Subnet>, Fault> {
    query_subnets(
        conn,
        &format!("SELECT {SUBNET_COLS} FROM subnets WHERE network_id=?1 ORDER BY rowid"),
        &[&network_id],
    )
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

// ---------------------------------------------------------------- IPAM

/// Whether `ip` is allocated to any port on the subnet.
pub fn ip_in_use(conn: &Connection, subnet_id: &str, ip: Ipv4Addr) -> Result<bool, Fault> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM fixed_ips WHERE subnet_id=?1 AND ip=?2",
            params![subnet_id, ip_val(ip)],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// First address of the subnet's pools that is neither the gateway nor allocated; None when
/// the pools are exhausted. Walks the allocated addresses of each pool in order, so the cost
/// is the number of addresses in use, not the size of the pool.
pub fn first_free_ip(conn: &Connection, s: &Subnet) -> Result<Option<Ipv4Addr>, Fault> {
    let mut st = conn.prepare_cached(
        "SELECT ip FROM fixed_ips WHERE subnet_id=?1 AND ip BETWEEN ?2 AND ?3 ORDER BY ip",
    )?;
    let gw = s.gateway_ip.map(u32::from);
    for (a, b) in &s.allocation_pools {
        let (a, b) = (u32::from(*a), u32::from(*b));
        let used = st.query_map(params![s.id, i64::from(a), i64::from(b)], |r| {
            r.get::<_, i64>(0)
        })?;
        let mut candidate = a;
        let mut used_iter = used.peekable();
        loop {
            if candidate > b {
                break;
            }
            if Some(candidate) == gw {
                candidate += 1;
                continue;
            }
            match used_iter.peek() {
                Some(Ok(u)) if *u as u32 == candidate => {
                    used_iter.next();
                    candidate += 1;
                }
                Some(Ok(u)) if (*u as u32) < candidate => {
                    used_iter.next();
                }
                Some(Err(_)) => {
                    if let Some(Err(e)) = used_iter.next() {
                        return Err(e.into());
                    }
                }
                _ => return Ok(Some(Ipv4Addr::from(candidate))),
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
    requested: Option<Ipv4Addr>,
    allow_gateway: bool,
) -> Result<Ipv4Addr, Fault> {
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
                return Err(Fault::conflict(
                    "IpAddressInUse",
                    format!(
                        "Unable to complete operation for network {}. The IP address {ip} is in use.",
                        s.network_id
                    ),
                ));
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

// ---------------------------------------------------------------- ports

const PORT_COLS: &str = "id, network_id, name, description, project_id, mac, admin_state_up, device_owner, device_id, status";

fn port_row(r: &Row) -> rusqlite::Result<Port> {
    let mac: String = r.get(5)?;
    let mac = parse_mac(&mac).ok_or_else(|| text_err(5, format!("bad mac {mac}")))?;
    Ok(Port {
        id: r.get(0)?,
        network_id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        project_id: r.get(4)?,
        mac,
        admin_state_up: r.get(6)?,
        device_owner: r.get(7)?,
        device_id: r.get(8)?,
        status: r.get(9)?,
        fixed_ips: Vec::new(),
    })
}

fn load_fixed_ips(conn: &Connection, p: &mut Port) -> Result<(), Fault> {
    let sql = "SELECT subnet_id, ip FROM fixed_ips WHERE port_id=?1 ORDER BY rowid";
    p.fixed_ips = query_all(conn, sql, [&p.id], |r| {
        Ok(FixedIp {
            subnet_id: r.get(0)?,
            ip: ip_of(r.get(1)?),
        })
    })?;
    Ok(())
}

/// Whether any port has this MAC.
pub fn mac_in_use(conn: &Connection, mac: &[u8; 6]) -> Result<bool, Fault> {
    Ok(conn
        .query_row(
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

/// Inserts the port and its fixed IPs (already chosen and checked by the caller; the
/// UNIQUE constraints still refuse a duplicate).
pub fn insert_port(conn: &Connection, p: &Port) -> Result<(), Fault> {
    conn.execute(
        &format!("INSERT INTO ports ({PORT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
        params![
            p.id,
            p.network_id,
            p.name,
            p.description,
            p.project_id,
            mac_to_string(&p.mac),
            p.admin_state_up,
            p.device_owner,
            p.device_id,
            p.status
        ],
    )?;
    write_fixed_ips(conn, p)
}

fn write_fixed_ips(conn: &Connection, p: &Port) -> Result<(), Fault> {
    conn.execute("DELETE FROM fixed_ips WHERE port_id=?1", [&p.id])?;
    for f in &p.fixed_ips {
        conn.execute(
            "INSERT INTO fixed_ips (port_id, subnet_id, ip) VALUES (?1,?2,?3)",
            params![p.id, f.subnet_id, ip_val(f.ip)],
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

/// Rewrites the mutable columns and fixed IPs of `p`.
pub fn update_port(conn: &Connection, p: &Port) -> Result<(), Fault> {
    conn.execute(
        "UPDATE ports SET name=?2, description=?3, admin_state_up=?4, device_owner=?5, device_id=?6, status=?7, mac=?8 WHERE id=?1",
        params![
            p.id,
            p.name,
            p.description,
            p.admin_state_up,
            p.device_owner,
            p.device_id,
            p.status,
            mac_to_string(&p.mac)
        ],
    )?;
    write_fixed_ips(conn, p)
}

/// The port with its fixed IPs, None when unknown.
pub fn get_port(conn: &Connection, id: &str) -> Result<Option<Port>, Fault> {
    let p = conn
        .query_row(
            &format!("SELECT {PORT_COLS} FROM ports WHERE id=?1"),
            [id],
            port_row,
        )
        .optional()?;
    match p {
        Some(mut p) => {
            load_fixed_ips(conn, &mut p)?;
            Ok(Some(p))
        }
        None => Ok(None),
    }
}

fn query_ports(
    conn: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Port>, Fault> {
    let mut out = query_all(conn, sql, p, port_row)?;
    for p in &mut out {
        load_fixed_ips(conn, p)?;
    }
    Ok(out)
}

/// Every port in creation order.
pub fn list_ports(conn: &Connection) -> Result<Vec<Port>, Fault> {
    query_ports(
        conn,
        &format!("SELECT {PORT_COLS} FROM ports ORDER BY rowid"),
        &[],
    )
}

/// The network's ports (a network with ports cannot be deleted).
pub fn network_ports(conn: &Connection, network_id: &str) -> Result<Vec<Port>, Fault> {
    query_ports(
        conn,
        &format!("SELECT {PORT_COLS} FROM ports WHERE network_id=?1 ORDER BY rowid"),
        &[&network_id],
    )
}

/// Deletes the port and frees its addresses.
pub fn delete_port(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM fixed_ips WHERE port_id=?1", [id])?;
    conn.execute("DELETE FROM ports WHERE id=?1", [id])?;
    Ok(())
}

// ---------------------------------------------------------------- routers

const ROUTER_COLS: &str =
    "id, name, description, project_id, admin_state_up, status, dp_id, gw_port_id, enable_snat";

fn router_row(r: &Row) -> rusqlite::Result<Router> {
    Ok(Router {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        project_id: r.get(3)?,
        admin_state_up: r.get(4)?,
        status: r.get(5)?,
        dp_id: r.get(6)?,
        gw_port_id: r.get(7)?,
        enable_snat: r.get(8)?,
    })
}

/// Smallest datapath slot no existing router holds (slots start at 1).
pub fn free_dp_id(conn: &Connection) -> Result<u32, Fault> {
    let id: i64 = conn.query_row(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM routers WHERE dp_id=1) THEN 1 ELSE
           (SELECT MIN(r.dp_id + 1) FROM routers r WHERE NOT EXISTS
              (SELECT 1 FROM routers r2 WHERE r2.dp_id = r.dp_id + 1)) END",
        [],
        |r| r.get(0),
    )?;
    if id <= 0 || id >= i64::from(MAX_DP_ID) {
        return Err(Fault::conflict(
            "OverQuota",
            format!(
                "Quota exceeded for resources: ['router'] (at most {})",
                MAX_DP_ID - 1
            ),
        ));
    }
    Ok(id as u32)
}

/// Adds a router row (its dp_id from `free_dp_id`).
pub fn insert_router(conn: &Connection, r: &Router) -> Result<(), Fault> {
    conn.execute(
        &format!("INSERT INTO routers ({ROUTER_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
        params![
            r.id,
            r.name,
            r.description,
            r.project_id,
            r.admin_state_up,
            r.status,
            r.dp_id,
            r.gw_port_id,
            r.enable_snat
        ],
    )?;
    Ok(())
}

/// Rewrites the mutable columns of `r` (dp_id never changes).
pub fn update_router(conn: &Connection, r: &Router) -> Result<(), Fault> {
    conn.execute(
        "UPDATE routers SET name=?2, description=?3, admin_state_up=?4, status=?5, gw_port_id=?6, enable_snat=?7 WHERE id=?1",
        params![r.id, r.name, r.description, r.admin_state_up, r.status, r.gw_port_id, r.enable_snat],
    )?;
    Ok(())
}

/// The router, None when unknown.
pub fn get_router(conn: &Connection, id: &str) -> Result<Option<Router>, Fault> {
    Ok(conn
        .query_row(
            &format!("SELECT {ROUTER_COLS} FROM routers WHERE id=?1"),
            [id],
            router_row,
        )
        .optional()?)
}

/// Every router in creation order.
pub fn list_routers(conn: &Connection) -> Result<Vec<Router>, Fault> {
    let sql = format!("SELECT {ROUTER_COLS} FROM routers ORDER BY rowid");
    query_all(conn, &sql, [], router_row)
}

/// Deletes the router and its interface rows (callers remove the ports).
pub fn delete_router(conn: &Connection, id: &str) -> Result<(), Fault> {
    conn.execute("DELETE FROM router_interfaces WHERE router_id=?1", [id])?;
    conn.execute("DELETE FROM routers WHERE id=?1", [id])?;
    Ok(())
}

/// Records `port_id` as an interface of the router.
pub fn add_interface(conn: &Connection, router_id: &str, port_id: &str) -> Result<(), Fault> {
    conn.execute(
        "INSERT INTO router_interfaces (router_id, port_id) VALUES (?1, ?2)",
        [router_id, port_id],
    )?;
    Ok(())
}

/// Forgets the interface row (the caller deletes the port).
pub fn remove_interface(conn: &Connection, router_id: &str, port_id: &str) -> Result<(), Fault> {
    conn.execute(
        "DELETE FROM router_interfaces WHERE router_id=?1 AND port_id=?2",
        [router_id, port_id],
    )?;
    Ok(())
}

/// Interface ports of the router, in the order they were added.
pub fn router_interfaces(conn: &Connection, router_id: &str) -> Result<Vec<Port>, Fault> {
    query_ports(
        conn,
        &format!(
            "SELECT {} FROM router_interfaces i JOIN ports p ON p.id = i.port_id WHERE i.router_id=?1 ORDER BY i.rowid",
            PORT_COLS
                .split(", ")
                .map(|c| format!("p.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &[&router_id],
    )
}

/// The router an interface port belongs to.
pub fn interface_router(conn: &Connection, port_id: &str) -> Result<Option<String>, Fault> {
    Ok(conn
        .query_row(
            "SELECT router_id FROM router_interfaces WHERE port_id=?1",
            [port_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// The router whose gateway port this is.
pub fn gateway_router(conn: &Connection, port_id: &str) -> Result<Option<String>, Fault> {
    Ok(conn
        .query_row(
            "SELECT id FROM routers WHERE gw_port_id=?1",
            [port_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Routers with an interface or the gateway on the network: those whose spec a change of the
/// network or its subnets can alter.
pub fn routers_on_network(conn: &Connection, network_id: &str) -> Result<BTreeSet<String>, Fault> {
    let mut st = conn.prepare_cached(
        "SELECT i.router_id FROM router_interfaces i JOIN ports p ON p.id=i.port_id WHERE p.network_id=?1
         UNION SELECT r.id FROM routers r JOIN ports p ON p.id=r.gw_port_id WHERE p.network_id=?1",
    )?;
    let rows = st.query_map([network_id], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

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
            addresses: vec![port_address(f.ip, &s.cidr)],
        },
        s,
    )))
}

/// A fixed IP as a port spec carries it: with its subnet's prefix length.
fn port_address(ip: Ipv4Addr, cidr: &Ipv4Net) -> IpNet {
    IpNet::V4(Ipv4Net::new(ip, cidr.prefix_len()).unwrap_or_else(|_| Ipv4Net::from(ip)))
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
            next_hops: subnet.gateway_ip.into_iter().map(IpAddr::V4).collect(),
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
                addresses: vec![port_address(ip_of(r.get(4)?), cidr)],
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
                        next_hops: next_hop.iter().copied().map(IpAddr::V4).collect(),
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

#[cfg(test)]
mod tests;
