//! Full resyncs: fetching every router hosted here (router ids, chunked `sync_routers`, the
//! segments of their networks) and what a fetch may still settle once it is in.
//!
//! Why the periodic resync runs beside the notifications: the fetch is neutron-server's time,
//! and it grows with the routers hosted (≈ 5 s for 200 routers on the bench's VM). Awaited in
//! the worker's loop, as the start-up sync is, it held back every notification that arrived
//! meanwhile, so every `resync_interval` a router change waited seconds to be realised (the
//! agent bench's p99 from gateway set to `qg-` address: 4.5–5.5 s against a p50 of 0.37 s).
//! Neutron's own L3 agent has no periodic full sync at all; this agent keeps one as a safety
//! net for a notification lost on the way, and lets notifications overtake it instead: a
//! router named by a notice after the fetch began is left out of the fetch's result (`plan`),
//! because its own `sync_routers` brings a fresher dict, or its removal is already pending.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt as _;
use serde_json::Value;

use super::{mapping, plugin::Plugin, rpc::Session};
use crate::model::spec::Segment;

/// How many `get_network_details` calls are in flight at once. One after another, a restart
/// with 200 routers spent 2.8–3.3 s of its fetch on 201 round trips through RabbitMQ. RabbitMQ
/// spreads concurrent calls over neutron-server's RPC workers: with two workers, eight at a
/// time took 2.1 s. A server with a single worker gains nothing (its one process is the bound),
/// and a handful in flight keeps the queue short for the notifications' calls.
const DETAILS_IN_FLIGHT: usize = 8;

/// Everything a full resync fetched.
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
    let (dicts, chunk) = plugin.sync_routers(&ids, chunk).await?;
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A periodic resync's fetch in flight beside the notifications, and the routers notices
/// named since it began.
pub struct InFlight<'s> {
    fetch: Pin<Box<dyn Future<Output = Result<Fetched>> + Send + 's>>,
    pub touched: BTreeSet<String>,
}

impl<'s> InFlight<'s> {
    /// Starts fetching on `session` (the future owns what it needs but the session).
    pub fn start(session: &'s Session, host: String, timeout: Duration, chunk: usize) -> Self {
        let fetch = Box::pin(async move {
            let plugin = Plugin {
                session,
                host: &host,
                timeout,
            };
            fetch_all(&plugin, chunk).await
        });
        InFlight {
            fetch,
            touched: BTreeSet::new(),
        }
    }

    /// The fetch's result, once it is in (cancel-safe: polling again goes on where it was).
    pub async fn done(&mut self) -> Result<Fetched> {
        self.fetch.as_mut().await
    }
}

/// What a fetch settles, given the routers notices named since it began: the dicts to apply
/// (not those routers': their notices bring fresher ones, or remove them) and the routers to
/// keep (the fetched ones and those: a router added after the fetch asked for the ids is not
/// in it, and must not be torn down for that).
pub fn plan(dicts: Vec<Value>, touched: &BTreeSet<String>) -> (Vec<Value>, BTreeSet<String>) {
    let mut keep = touched.clone();
    let dicts = dicts
        .into_iter()
        .filter(|d| match mapping::router_id(d) {
            Some(id) => {
                keep.insert(id.to_string());
                !touched.contains(id)
            }
            None => true,
        })
        .collect();
    (dicts, keep)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn routers_named_since_the_fetch_began_are_left_to_their_notices_and_kept() {
        let dicts = vec![json!({"id": "a"}), json!({"id": "b"}), json!({"id": "c"})];
        // "b" changed after the fetch began; "d" was added after it asked for the ids.
        let touched = BTreeSet::from(["b".to_string(), "d".to_string()]);
        let (apply, keep) = plan(dicts, &touched);
        let applied: Vec<&str> = apply.iter().filter_map(mapping::router_id).collect();
        assert_eq!(applied, ["a", "c"], "b's stale dict is not applied");
        assert_eq!(
            keep,
            BTreeSet::from(["a", "b", "c", "d"].map(String::from)),
            "nothing fetched or named since is torn down"
        );
    }

    #[test]
    fn with_no_notice_meanwhile_the_fetch_settles_everything() {
        let dicts = vec![json!({"id": "a"}), json!({"id": "b"})];
        let (apply, keep) = plan(dicts, &BTreeSet::new());
        assert_eq!(apply.len(), 2);
        assert_eq!(keep, BTreeSet::from(["a", "b"].map(String::from)));
    }
}
