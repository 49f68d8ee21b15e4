//! Full resyncs: fetching every router hosted here (router ids, chunked `sync_routers`, the
//! segments of their networks).
//!
//! A full resync is awaited before anything else (at start, on `revived`, when the agent is
//! set up again, after a reconnect): its fetch is neutron-server's time and grows with the
//! routers hosted (≈ 5 s for 200 on the bench's VM). Between them, the periodic sweep
//! (`sweep`) runs beside the notifications at a bounded cost.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt as _;
use serde_json::Value;

use super::{mapping, plugin::Plugin};
use crate::model::spec::Segment;

/// How many `get_network_details` calls are in flight at once. One after another, a restart
/// with 200 routers spent 2.8–3.3 s of its fetch on 201 round trips through RabbitMQ. RabbitMQ
/// spreads concurrent calls over neutron-server's RPC workers: with two workers, eight at a
/// time took 2.1 s. A server with a single worker gains nothing (its one process is the bound),
/// and a handful in flight keeps the queue short for the notifications' calls.
const DETAILS_IN_FLIGHT: usize = 8;

/// Router dicts and their networks' segments, as a full resync or a sweep fetched them.
pub struct Fetched {
    pub dicts: Vec<Value>,
    /// The `sync_routers` chunk size to start with next time.
    pub chunk: usize,
    /// The segment of every network the dicts name that neutron-server could describe.
    pub segments: HashMap<String, Segment>,
    /// When the fetch began (for the `fetch_ms` / `took_ms` of the log line).
    pub started: Instant,
    /// Time spent on the router ids and dicts, and on the networks' segments (logged apart,
    /// so a slow resync shows which calls bound it).
    pub routers_ms: u64,
    pub networks_ms: u64,
}

/// Fetches every router hosted here, and the segments of all their networks (a network
/// neutron-server cannot describe stays unknown; its routers are then refused with that
/// reason when applied).
pub async fn fetch_all(plugin: &Plugin<'_>, chunk: usize) -> Result<Fetched> {
    let started = Instant::now();
    let ids = plugin.get_router_ids().await?;
    fetch_dicts(plugin, &ids, chunk, started).await
}

/// The dicts of routers `ids` (chunked `sync_routers`) and the segments of their networks;
/// `started`: when the fetch began (its `get_router_ids` included).
pub async fn fetch_dicts(
    plugin: &Plugin<'_>,
    ids: &[String],
    chunk: usize,
    started: Instant,
) -> Result<Fetched> {
    let (dicts, chunk) = if ids.is_empty() {
        (Vec::new(), chunk)
    } else {
        plugin.sync_routers(ids, chunk).await?
    };
    let routers_ms = millis(started.elapsed());
    let mut networks: Vec<String> = dicts.iter().flat_map(mapping::network_ids).collect();
    networks.sort();
    networks.dedup();
    let details = Instant::now();
    let segments = fetch_segments(plugin, networks).await;
    Ok(Fetched {
        dicts,
        chunk,
        segments,
        started,
        routers_ms,
        networks_ms: millis(details.elapsed()),
    })
}

/// The segments of `networks`, `DETAILS_IN_FLIGHT` calls at a time. A network neutron-server
/// cannot describe (the call fails, or its answer has no usable segment) is left out, logged.
pub async fn fetch_segments(
    plugin: &Plugin<'_>,
    networks: Vec<String>,
) -> HashMap<String, Segment> {
    let mut answers = futures::stream::iter(networks)
        .map(|net| async move {
            let details = plugin.get_network_details(&net).await;
            (net, details)
        })
        .buffer_unordered(DETAILS_IN_FLIGHT);
    let mut segments = HashMap::new();
    while let Some((net, details)) = answers.next().await {
        match details {
            Ok(d) => match mapping::segment_of(&d) {
                Ok(s) => {
                    segments.insert(net, s);
                }
                Err(e) => tracing::error!(network = net, "{e}"),
            },
            Err(e) => tracing::warn!(network = net, "get_network_details: {e:#}"),
        }
    }
    segments
}

/// Milliseconds of `d`, for the sync log lines.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
