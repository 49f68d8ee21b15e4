//! Neutron's standard attributes: `revision_number`, `created_at`/`updated_at` and `tags` of
//! networks, subnets, ports, routers and floating IPs, kept in one table keyed by resource id
//! (as Neutron's `standardattributes`).
//!
//! Triggers keep the rows: a resource row inserted gets its attributes, deleted loses them, and
//! any change to it — or to a row that revises it (Neutron's `revises_on_change`: a subnet
//! revises its network, a fixed IP its port, a router interface its router, a port forwarding
//! its floating IP and port, a tag its resource) — marks it changed. `settle` then bumps each
//! marked resource once, so a request that writes a row several times counts one revision, and
//! a resource created in the same transaction stays at 0.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::query_all;
use crate::model::{Fault, StandardAttrs};

// `dirty` values: 0 unchanged in this transaction, 1 changed, 2 created in it (kept as
// literals in the SQL: a partial index is matched against the statement's text).

/// Neutron's timestamp format, in SQL (UTC, whole seconds).
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%SZ','now')"
    };
}

/// The marking of resource `$id` (an expression over NEW/OLD) as changed.
macro_rules! mark {
    ($id:expr) => {
        concat!(
            "UPDATE standard_attrs SET dirty = 1 WHERE resource_id = ",
            $id,
            " AND dirty = 0;"
        )
    };
}

/// Triggers of a resource table `$t` that has standard attributes.
macro_rules! resource_triggers {
    ($t:literal) => {
        concat!(
            "CREATE TRIGGER ", $t, "_attrs_insert AFTER INSERT ON ", $t, " BEGIN ",
            "INSERT INTO standard_attrs (resource_id, resource_type, revision_number, created_at, updated_at, dirty) ",
            "VALUES (NEW.id, '", $t, "', 0, ", now!(), ", ", now!(), ", 2); END;\n",
            "CREATE TRIGGER ", $t, "_attrs_update AFTER UPDATE ON ", $t, " BEGIN ", mark!("NEW.id"), " END;\n",
            "CREATE TRIGGER ", $t, "_attrs_delete AFTER DELETE ON ", $t, " BEGIN ",
            "DELETE FROM standard_attrs WHERE resource_id = OLD.id; END;\n",
            "INSERT INTO standard_attrs (resource_id, resource_type, revision_number, created_at, updated_at, dirty) ",
            "SELECT id, '", $t, "', 0, ", now!(), ", ", now!(), ", 0 FROM ", $t, ";\n",
        )
    };
}

/// Triggers of a table `$t` whose rows revise the resource named by column `$col`.
macro_rules! revises {
    ($t:literal, $col:literal) => {
        concat!(
            "CREATE TRIGGER ",
            $t,
            "_revises_",
            $col,
            "_insert AFTER INSERT ON ",
            $t,
            " BEGIN ",
            mark!(concat!("NEW.", $col)),
            " END;\n",
            "CREATE TRIGGER ",
            $t,
            "_revises_",
            $col,
            "_update AFTER UPDATE ON ",
            $t,
            " BEGIN ",
            mark!(concat!("NEW.", $col)),
            mark!(concat!("OLD.", $col)),
            " END;\n",
            "CREATE TRIGGER ",
            $t,
            "_revises_",
            $col,
            "_delete AFTER DELETE ON ",
            $t,
            " BEGIN ",
            mark!(concat!("OLD.", $col)),
            " END;\n",
        )
    };
}

/// v5: standard attributes, tags, and the network MTU (after v4, which made `router_routes`:
/// an extra route revises its router, as Neutron's `RouterRoute` does).
pub(super) const MIGRATION: &str = concat!(
    "
CREATE TABLE standard_attrs (
    resource_id TEXT PRIMARY KEY,
    resource_type TEXT NOT NULL,
    revision_number INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX standard_attrs_dirty ON standard_attrs(dirty) WHERE dirty != 0;
CREATE TABLE tags (
    resource_id TEXT NOT NULL REFERENCES standard_attrs(resource_id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (resource_id, tag)
);
ALTER TABLE networks ADD COLUMN mtu INTEGER NOT NULL DEFAULT 1500;
",
    resource_triggers!("networks"),
    resource_triggers!("subnets"),
    resource_triggers!("ports"),
    resource_triggers!("routers"),
    resource_triggers!("floatingips"),
    revises!("subnets", "network_id"),
    revises!("fixed_ips", "port_id"),
    revises!("router_interfaces", "router_id"),
    revises!("port_forwardings", "floatingip_id"),
    revises!("port_forwardings", "internal_port_id"),
    revises!("tags", "resource_id"),
    revises!("router_routes", "router_id"),
);

/// Bumps the revision (and `updated_at`) of every resource changed in this transaction, once.
/// Every mutation calls it before it shows a resource and before it commits.
///
/// Both statements name the partial index's own condition (`dirty != 0`): SQLite uses a
/// partial index only for a WHERE that contains its condition as a term, and does not infer
/// it from `dirty = 1`, so without it each call read the whole table (five rows a router:
/// at 10 000 routers, milliseconds of page reads per API call).
pub fn settle_revisions(conn: &Connection) -> Result<(), Fault> {
    super::execute(
        conn,
        concat!(
            "UPDATE standard_attrs SET revision_number = revision_number + 1, updated_at = ",
            now!(),
            " WHERE dirty != 0 AND dirty = 1"
        ),
        [],
    )?;
    super::execute(
        conn,
        "UPDATE standard_attrs SET dirty = 0 WHERE dirty != 0",
        [],
    )?;
    Ok(())
}

/// Marks `resource_id` as changed by this transaction (for tables that revise a resource but
/// have no trigger here).
pub fn mark_changed(conn: &Connection, resource_id: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "UPDATE standard_attrs SET dirty = 1 WHERE resource_id = ?1 AND dirty = 0",
        [resource_id],
    )?;
    Ok(())
}

fn tags_by_resource(
    conn: &Connection,
    resource_type: Option<&str>,
) -> Result<HashMap<String, Vec<String>>, Fault> {
    let rows = query_all(
        conn,
        "SELECT t.resource_id, t.tag FROM tags t JOIN standard_attrs a USING (resource_id) \
         WHERE ?1 IS NULL OR a.resource_type = ?1 ORDER BY t.resource_id, t.tag",
        [resource_type],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (id, tag) in rows {
        out.entry(id).or_default().push(tag);
    }
    Ok(out)
}

/// The standard attributes of every resource of `resource_type` (the table name: `networks`).
pub fn standard_attrs_of_type(
    conn: &Connection,
    resource_type: &str,
) -> Result<HashMap<String, StandardAttrs>, Fault> {
    let mut tags = tags_by_resource(conn, Some(resource_type))?;
    let rows = query_all(
        conn,
        "SELECT resource_id, revision_number, created_at, updated_at FROM standard_attrs \
         WHERE resource_type = ?1",
        [resource_type],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        },
    )?;
    Ok(rows
        .into_iter()
        .map(|(id, revision_number, created_at, updated_at)| {
            let attrs = StandardAttrs {
                revision_number,
                created_at,
                updated_at,
                tags: tags.remove(&id).unwrap_or_default(),
            };
            (id, attrs)
        })
        .collect())
}

/// The standard attributes of one resource, None when it has none (unknown, or a kind
/// without them).
pub fn standard_attrs(
    conn: &Connection,
    resource_id: &str,
) -> Result<Option<StandardAttrs>, Fault> {
    let row = super::query_row(
        conn,
        "SELECT revision_number, created_at, updated_at FROM standard_attrs WHERE resource_id = ?1",
        [resource_id],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        },
    )
    .optional()?;
    let Some((revision_number, created_at, updated_at)) = row else {
        return Ok(None);
    };
    Ok(Some(StandardAttrs {
        revision_number,
        created_at,
        updated_at,
        tags: tags(conn, resource_id)?,
    }))
}

/// The tags of a resource, sorted.
pub fn tags(conn: &Connection, resource_id: &str) -> Result<Vec<String>, Fault> {
    query_all(
        conn,
        "SELECT tag FROM tags WHERE resource_id = ?1 ORDER BY tag",
        [resource_id],
        |r| r.get(0),
    )
}

/// Adds `tag` to a resource (no change when it has it already).
pub fn add_tag(conn: &Connection, resource_id: &str, tag: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "INSERT OR IGNORE INTO tags (resource_id, tag) VALUES (?1, ?2)",
        params![resource_id, tag],
    )?;
    Ok(())
}

/// Removes `tag` from a resource; false when it did not have it.
pub fn remove_tag(conn: &Connection, resource_id: &str, tag: &str) -> Result<bool, Fault> {
    Ok(super::execute(
        conn,
        "DELETE FROM tags WHERE resource_id = ?1 AND tag = ?2",
        params![resource_id, tag],
    )? > 0)
}

/// Replaces the tags of a resource by `tags` (only the differences are written, so setting
/// the same list is no change).
pub fn replace_tags(conn: &Connection, resource_id: &str, new: &[String]) -> Result<(), Fault> {
    let old = tags(conn, resource_id)?;
    for t in old.iter().filter(|t| !new.contains(t)) {
        remove_tag(conn, resource_id, t)?;
    }
    for t in new.iter().filter(|t| !old.contains(t)) {
        add_tag(conn, resource_id, t)?;
    }
    Ok(())
}
