//! No API call of a router's lifecycle reads a table whole: the control plane's cost per call
//! must not grow with the number of routers (issue #16). SQLite counts, per statement, the
//! rows it stepped through in full-table scans (`SQLITE_STMTSTATUS_FULLSCAN_STEP`, trigger
//! programs included) and the automatic indexes it built for a join; a statement that scans a
//! table holding a row per router steps at least once per router.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rusqlite::{StatementStatus, trace::TraceEvent, trace::TraceEventCodes};

use super::*;

/// Routers made before the traced one: more rows than any per-router table scan could skip.
const ROUTERS: usize = 40;

/// The operator's sequence of the bench: network, subnet, router, interface, gateway. Returns
/// (router, network, subnet).
async fn make_router(t: &T, ext: &str, i: usize) -> (String, String, String) {
    let net = t.network("ta", json!({})).await;
    let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
    let sub = id(&t.subnet("ta", &net, &cidr).await, "subnet");
    let r = id(
        &t.create("ta", "routers", json!({"router": {}})).await,
        "router",
    );
    t.router_interface(&r, "add", &sub, 200).await;
    let gw = json!({"router": {"external_gateway_info": {"network_id": ext}}});
    t.ok("PUT", &format!("/v2.0/routers/{r}"), "adm", gw, 200)
        .await;
    (r, net, sub)
}

#[tokio::test]
async fn a_routers_lifecycle_scans_no_table() {
    let t = T::new();
    // (SQL, full-scan steps, automatic indexes) of every statement once `recording` is set.
    // The counters are a statement's since it was compiled, and a cached statement lives on
    // across calls, so each run's figure is the rise since its SQL's last run (traced from
    // the start for that reason).
    let seen: Arc<Mutex<Vec<(String, i32, i32)>>> = Arc::default();
    let recording = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = seen.clone();
    let on = recording.clone();
    let mut last: HashMap<String, (i32, i32)> = HashMap::new();
    t.state.with_store(|s| {
        s.conn_mut()
            .trace_v2(
                TraceEventCodes::SQLITE_TRACE_PROFILE,
                Some(move |e: TraceEvent<'_>| {
                    if let TraceEvent::Profile(st, _) = e {
                        let sql = st.sql().into_owned();
                        let now = (
                            st.get_status(StatementStatus::FullscanStep),
                            st.get_status(StatementStatus::AutoIndex),
                        );
                        let before = last.insert(sql.clone(), now).unwrap_or_default();
                        // Lower than before: another statement with the same SQL.
                        let rise = |n: i32, b: i32| if n >= b { n - b } else { n };
                        if on.load(std::sync::atomic::Ordering::Relaxed) {
                            sink.lock().unwrap().push((
                                sql,
                                rise(now.0, before.0),
                                rise(now.1, before.1),
                            ));
                        }
                    }
                }),
            )
            .unwrap()
    });
    let ext = t.external_network().await;
    for i in 0..ROUTERS {
        make_router(&t, &ext, i).await;
    }
    recording.store(true, std::sync::atomic::Ordering::Relaxed);

    let (r, net, sub) = make_router(&t, &ext, ROUTERS).await;
    t.get(&format!("/v2.0/routers/{r}"), "ta").await;
    let clear = json!({"router": {"external_gateway_info": {}}});
    t.ok("PUT", &format!("/v2.0/routers/{r}"), "adm", clear, 200)
        .await;
    t.router_interface(&r, "remove", &sub, 200).await;
    t.ok(
        "DELETE",
        &format!("/v2.0/routers/{r}"),
        "ta",
        Value::Null,
        204,
    )
    .await;
    t.ok(
        "DELETE",
        &format!("/v2.0/networks/{net}"),
        "ta",
        Value::Null,
        204,
    )
    .await;

    t.state.with_store(|s| {
        s.conn_mut()
            .trace_v2(TraceEventCodes::empty(), None::<fn(TraceEvent<'_>)>)
            .unwrap()
    });
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 20, "the trace saw the calls: {seen:?}");
    let scans: Vec<_> = seen
        .iter()
        .filter(|(_, steps, autoindex)| *steps as usize >= ROUTERS || *autoindex > 0)
        .collect();
    assert!(
        scans.is_empty(),
        "statements that read a table whole (SQL, rows stepped in full scans, automatic indexes), {ROUTERS} routers present:\n{}",
        scans
            .iter()
            .map(|(sql, s, a)| format!("  {s} {a} {sql}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
