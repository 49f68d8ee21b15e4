//! Desired state in SQLite (`<state-dir>/router.db`): versioned migrations, one transaction per
//! change, IP allocation that can never hand out an address twice.
//!
//! Functions take a `&Connection`: pass the open `Transaction` (it derefs to one) so every
//! read and write of a request sees and changes the same snapshot. Uniqueness is enforced by
//! the schema itself (`UNIQUE(subnet_id, ip)`, `UNIQUE(mac)`, `UNIQUE(dp_id)`), the checks in
//! this module only turn those cases into Neutron's errors before the constraint fires.

use std::path::Path;

use rusqlite::{Connection, Row, Transaction};

use record::{addr_of, addr_val};

mod attrs;
pub mod checkpoint;
pub mod floatingips;
mod ipam;
mod networks;
mod ports;
mod record;
mod routers;
mod spec;
mod tables;

pub use attrs::{
    add_tag, mark_changed, remove_tag, replace_tags, settle_revisions, standard_attrs,
    standard_attrs_of_type, tags,
};
pub use ipam::*;
pub use networks::*;
pub use ports::*;
pub use record::{Record, get, insert, list, update};
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
    // v6: addresses of either family (16-byte columns) and the subnets' IPv6 modes.
    IPV6_MIGRATION,
    // v7: where each allocation pool's free addresses begin.
    ipam::MIGRATION,
];

/// The SQL of an address column's IPv4 integer as its 16-byte value (`addr_val` of the
/// IPv4-mapped address).
macro_rules! v4_blob {
    ($col:literal) => {
        concat!("unhex(printf('00000000000000000000FFFF%08X', ", $col, "))")
    };
}

/// v6: every address column (`subnets.gateway_ip`, `allocation_pools`, `fixed_ips.ip`,
/// floating IPs and port forwardings) goes from an IPv4 integer to `addr_val`'s 16 bytes, in
/// place. SQLite keeps a BLOB as it is in a column declared INTEGER (that affinity converts
/// only text and reals), and the UNIQUE indexes stay valid: the mapping is one to one. The
/// triggers of `attrs` mark the rows changed; an encoding is no change of a resource, so the
/// marks are cleared again (no revision moves).
const IPV6_MIGRATION: &str = concat!(
    "UPDATE subnets SET gateway_ip = ",
    v4_blob!("gateway_ip"),
    " WHERE typeof(gateway_ip) = 'integer';\n",
    "UPDATE allocation_pools SET first_ip = ",
    v4_blob!("first_ip"),
    ", last_ip = ",
    v4_blob!("last_ip"),
    " WHERE typeof(first_ip) = 'integer';\n",
    "UPDATE fixed_ips SET ip = ",
    v4_blob!("ip"),
    " WHERE typeof(ip) = 'integer';\n",
    "UPDATE floatingips SET floating_ip = ",
    v4_blob!("floating_ip"),
    " WHERE typeof(floating_ip) = 'integer';\n",
    "UPDATE floatingips SET fixed_ip = ",
    v4_blob!("fixed_ip"),
    " WHERE typeof(fixed_ip) = 'integer';\n",
    "UPDATE port_forwardings SET internal_ip = ",
    v4_blob!("internal_ip"),
    " WHERE typeof(internal_ip) = 'integer';\n",
    "ALTER TABLE subnets ADD COLUMN ipv6_ra_mode TEXT;\n",
    "ALTER TABLE subnets ADD COLUMN ipv6_address_mode TEXT;\n",
    "UPDATE standard_attrs SET dirty = 0 WHERE dirty != 0;\n",
);

/// Highest datapath slot (exclusive): the datapath's per-router maps hold this many.
pub const MAX_DP_ID: u32 = router_common::MAX_ROUTERS;

/// The database of one daemon.
pub struct Store {
    // Dropped before `checkpointer`: the connection's WAL hook holds the thread's only
    // sender, so the thread ends and the join in its drop returns.
    conn: Connection,
    /// The database file (None: in memory), for extra read-only connections.
    path: Option<std::path::PathBuf>,
    /// Runs the WAL checkpoints off the committing connection (None: in memory).
    checkpointer: Option<checkpoint::Checkpointer>,
}

impl Store {
    /// Opens (creating) `path` and applies pending migrations.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_checkpointing_at(path, checkpoint::PAGES)
    }

    /// [`Store::open`], the checkpoint thread asked once the log holds `pages` pages.
    pub(crate) fn open_checkpointing_at(path: &Path, pages: u32) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Self::init(conn)?;
        store.checkpointer = Some(checkpoint::Checkpointer::start(
            &mut store.conn,
            path,
            pages,
        )?);
        store.path = Some(path.to_path_buf());
        Ok(store)
    }

    /// Checkpoints run so far (None: in memory, no log).
    pub fn checkpoints(&self) -> Option<&checkpoint::Counts> {
        self.checkpointer
            .as_ref()
            .map(checkpoint::Checkpointer::counts)
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
        keep_plans(&conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(Some(conn))
    }

    /// A private in-memory database (tests, tools).
    pub fn open_in_memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<Self> {
        conn.pragma_update(None, "foreign_keys", true)?;
        keep_plans(&conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn,
            path: None,
            checkpointer: None,
        })
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

    /// The connection itself (tests install a statement trace on it).
    #[cfg(test)]
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
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

/// Statements a connection keeps compiled: more than the store's distinct statements (about
/// 60, plus the API's list filters), so a router's calls never evict each other's.
const STATEMENTS: usize = 128;

/// Turns on SQLite's query planner stability guarantee, which is what lets the statement cache
/// work. Without it the planner marks a parameter compared with `=` outside the chosen index
/// (`whereLoopOutputAdjust` asks whether its value is 0 or 1), and `sqlite3_clear_bindings`,
/// which rusqlite calls on every statement it puts back in the cache, expires any statement
/// so marked: nearly every cached query was compiled again on its next use, a quarter of the
/// API's own CPU time. Plans that adapt to a bound value buy nothing here: there are no
/// `ANALYZE` statistics, and every look-up is by key.
fn keep_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
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

/// `Connection::execute` through the statement cache (which `Connection::execute` bypasses:
/// every call would compile its statement again).
fn execute<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache.
fn query_row<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    row: impl FnOnce(&Row) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, row)
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

#[cfg(test)]
mod tests;
