//! Routers and their interfaces in the store.

use std::{collections::BTreeSet, net::IpAddr, str::FromStr};

use ipnet::IpNet;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    MAX_DP_ID, query_all,
    record::{self, text_err},
};
use crate::model::{Fault, Port, spec::RouteSpec};

/// Extra routes as text (`destination` a CIDR, `nexthop` an address): either family fits,
/// and nothing walks them in address order. Rows go with their router.
pub(super) const ROUTES_MIGRATION: &str = r#"
CREATE TABLE router_routes (
    router_id TEXT NOT NULL REFERENCES routers(id) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    nexthop TEXT NOT NULL,
    PRIMARY KEY (router_id, destination, nexthop)
);
"#;

// ---------------------------------------------------------------- routers

/// Smallest datapath slot no existing router holds (slots start at 1). Without holes (the
/// highest slot is the number of routers) that is the next one, found through the unique index
/// on `dp_id`; otherwise the slots are walked in order up to the first hole. Either way no
/// call looks at every router: a search for the smallest hole over all of them cost 1.6 ms a
/// router at 10 000, in every router creation.
pub fn free_dp_id(conn: &Connection) -> Result<u32, Fault> {
    let (max, count): (Option<i64>, i64) = super::query_row(
        conn,
        "SELECT (SELECT MAX(dp_id) FROM routers), (SELECT COUNT(*) FROM routers)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let id = match max {
        None => 1,
        Some(max) if max == count => max + 1,
        Some(_) => super::query_row(
            conn,
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM routers WHERE dp_id=1) THEN 1 ELSE
               (SELECT r.dp_id + 1 FROM routers r WHERE NOT EXISTS
                  (SELECT 1 FROM routers r2 WHERE r2.dp_id = r.dp_id + 1)
                ORDER BY r.dp_id LIMIT 1) END",
            [],
            |r| r.get(0),
        )?,
    };
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

/// Deletes the router, its interface rows and its routes (callers remove the ports).
pub fn delete_router(conn: &Connection, id: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "DELETE FROM router_interfaces WHERE router_id=?1",
        [id],
    )?;
    super::execute(conn, "DELETE FROM router_routes WHERE router_id=?1", [id])?;
    super::execute(conn, "DELETE FROM routers WHERE id=?1", [id])?;
    Ok(())
}

/// Records `port_id` as an interface of the router.
pub fn add_interface(conn: &Connection, router_id: &str, port_id: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "INSERT INTO router_interfaces (router_id, port_id) VALUES (?1, ?2)",
        [router_id, port_id],
    )?;
    Ok(())
}

/// Forgets the interface row (the caller deletes the port).
pub fn remove_interface(conn: &Connection, router_id: &str, port_id: &str) -> Result<(), Fault> {
    super::execute(
        conn,
        "DELETE FROM router_interfaces WHERE router_id=?1 AND port_id=?2",
        [router_id, port_id],
    )?;
    Ok(())
}

/// Interface ports of the router, in the order they were added.
pub fn router_interfaces(conn: &Connection, router_id: &str) -> Result<Vec<Port>, Fault> {
    let sql = format!(
        "SELECT {} FROM router_interfaces i JOIN ports p ON p.id = i.port_id WHERE i.router_id=?1 ORDER BY i.rowid",
        record::columns::<Port>("p.")
    );
    record::query(conn, &sql, [router_id])
}

/// The router an interface port belongs to.
pub fn interface_router(conn: &Connection, port_id: &str) -> Result<Option<String>, Fault> {
    Ok(super::query_row(
        conn,
        "SELECT router_id FROM router_interfaces WHERE port_id=?1",
        [port_id],
        |r| r.get(0),
    )
    .optional()?)
}

/// The router whose gateway port this is.
pub fn gateway_router(conn: &Connection, port_id: &str) -> Result<Option<String>, Fault> {
    Ok(super::query_row(
        conn,
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

// ---------------------------------------------------------------- extra routes

/// A `router_routes` row: (router id, route).
pub(super) fn route_row(r: &Row) -> rusqlite::Result<(String, RouteSpec)> {
    let dst: String = r.get(1)?;
    let nh: String = r.get(2)?;
    Ok((
        r.get(0)?,
        RouteSpec {
            destination: IpNet::from_str(&dst).map_err(|e| text_err(1, e.to_string()))?,
            nexthop: IpAddr::from_str(&nh).map_err(|e| text_err(2, e.to_string()))?,
        },
    ))
}

/// The router's extra routes, in the order they were set.
pub fn router_routes(conn: &Connection, router_id: &str) -> Result<Vec<RouteSpec>, Fault> {
    let rows = query_all(
        conn,
        "SELECT router_id, destination, nexthop FROM router_routes WHERE router_id=?1 ORDER BY rowid",
        [router_id],
        route_row,
    )?;
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// Replaces the router's extra routes with `routes` (the caller has validated them).
pub fn set_router_routes(
    conn: &Connection,
    router_id: &str,
    routes: &[RouteSpec],
) -> Result<(), Fault> {
    super::execute(
        conn,
        "DELETE FROM router_routes WHERE router_id=?1",
        [router_id],
    )?;
    let mut st = conn.prepare_cached(
        "INSERT INTO router_routes (router_id, destination, nexthop) VALUES (?1, ?2, ?3)",
    )?;
    for r in routes {
        st.execute(params![
            router_id,
            r.destination.to_string(),
            r.nexthop.to_string()
        ])?;
    }
    Ok(())
}
