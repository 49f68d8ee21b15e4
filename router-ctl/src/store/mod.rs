//! Desired state in SQLite (`<state-dir>/router.db`): versioned migrations, one transaction per
//! change, IP allocation that can never hand out an address twice.
//!
//! Functions take a `&Connection`: pass the open `Transaction` (it derefs to one) so every
//! read and write of a request sees and changes the same snapshot. Uniqueness is enforced by
//! the schema itself (`UNIQUE(subnet_id, ip)`, `UNIQUE(mac)`, `UNIQUE(dp_id)`), the checks in
//! this module only turn those cases into Neutron's errors before the constraint fires.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use rusqlite::{Connection, Row, Transaction};

mod attrs;
pub mod floatingips;
mod ipam;
mod networks;
mod ports;
mod routers;
mod spec;

pub use attrs::{
    add_tag, mark_changed, remove_tag, replace_tags, settle_revisions, standard_attrs,
    standard_attrs_of_type, tags,
};
pub use ipam::*;
pub use networks::*;
pub use ports::*;
pub use routers::*;
pub use spec::{Scope, desired_state, network_spec, router_spec, router_specs};

use crate::model::{Fault, spec::DesiredState};

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
    // v4: extra routes of routers.
    routers::ROUTES_MIGRATION,
    // v5: standard attributes (revisions, timestamps, tags) and the network MTU.
    attrs::MIGRATION,
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

/// A table read as one model type: its name, its columns (in the mapper's order), the mapper
/// of a row, and what completes a row from other tables (a subnet's pools, a port's fixed IPs).
struct Table<T: 'static> {
    name: &'static str,
    cols: &'static str,
    row: fn(&Row) -> rusqlite::Result<T>,
    complete: fn(&Connection, &mut T) -> Result<(), Fault>,
}

impl<T> Table<T> {
    /// A table whose rows are whole (nothing to complete).
    const fn whole(
        name: &'static str,
        cols: &'static str,
        row: fn(&Row) -> rusqlite::Result<T>,
    ) -> Self {
        Self {
            name,
            cols,
            row,
            complete: |_, _| Ok(()),
        }
    }

    /// The rows that `filter` (a `WHERE` clause, or empty) selects with `p`, in creation order.
    fn select<P: rusqlite::Params>(
        &self,
        conn: &Connection,
        filter: &str,
        p: P,
    ) -> Result<Vec<T>, Fault> {
        let sql = format!(
            "SELECT {} FROM {} {filter} ORDER BY rowid",
            self.cols, self.name
        );
        let mut out = query_all(conn, &sql, p, self.row)?;
        for x in &mut out {
            (self.complete)(conn, x)?;
        }
        Ok(out)
    }

    /// The row with this id, None when unknown.
    fn get(&self, conn: &Connection, id: &str) -> Result<Option<T>, Fault> {
        Ok(self.select(conn, "WHERE id=?1", [id])?.pop())
    }
}

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

/// An address column's value as the model carries it.
fn addr_of(v: i64) -> IpAddr {
    IpAddr::V4(ip_of(v))
}

/// The column value of an address. Address columns are IPv4 integers (their order is what
/// IPAM walks); an IPv6 address needs a migration to a wider encoding first (16-byte
/// big-endian BLOBs would keep the order), so until then it is refused here.
fn addr_val(ip: IpAddr) -> Result<i64, Fault> {
    match ip {
        IpAddr::V4(a) => Ok(ip_val(a)),
        IpAddr::V6(a) => Err(Fault::invalid(format!(
            "{a}: IPv6 addresses cannot be stored yet"
        ))),
    }
}

fn text_err(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, msg.into())
}

#[cfg(test)]
mod tests;
