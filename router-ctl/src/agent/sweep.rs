//! The periodic sweep: every `resync_interval`, a safety net for a notification lost on the
//! way, at a cost to neutron-server that does not grow with the routers hosted here.
//!
//! Why not a full resync: a full fetch costs neutron-server ≈ 25–30 ms of its time a router
//! (`sync_routers` and one `get_network_details` a network: 5–6.5 s for 200 routers on the
//! bench's VM). With thousands of routers a periodic one would take longer than the interval,
//! and neutron-server would never rest from a net for an event that rarely happens — the
//! "full resyncs that take over an hour" of the L3 agent at scale. Neutron's own L3 agent has
//! no periodic full sync at all; this agent keeps full syncs for when they are needed (start,
//! `revived`, set up again, reconnected) and sweeps in between.
//!
//! A pass asks `get_router_ids` (one call: which routers are scheduled here), then
//! - fetches the routers scheduled here that it has never heard of (a lost
//!   `router_added_to_agent`), at most [`SWEEP_ROUTERS`];
//! - tears down the routers it knows that are no longer scheduled here (a lost removal);
//! - fetches again the next known routers, in id order after where the last pass stopped, up
//!   to [`SWEEP_ROUTERS`] in all (a lost `routers_updated`), with their networks' segments.
//!
//! So a pass costs about one `sync_routers` chunk at any N, and every router is looked at again
//! once every ⌈N / `SWEEP_ROUTERS`⌉ passes. Like the full resync it replaced, it runs beside the
//! notifications, and a router a notice names while it runs is left to the notice (see
//! `resync::plan`).

use std::{
    collections::BTreeSet,
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde_json::Value;

use super::{
    mapping,
    plugin::Plugin,
    resync::{self, Fetched},
    rpc::Session,
};

/// Routers a pass fetches at most: new ones first, then known ones in turn. 64 routers' dicts
/// and networks are ≈ 2 s of neutron-server's time on the bench's VM, every `resync_interval`
/// (120 s by default): a few percent of one RPC worker, whatever the number of routers.
pub const SWEEP_ROUTERS: usize = 64;

/// What a pass does, decided from the routers scheduled here and those the agent knows.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Routers whose dicts are fetched: the new ones, then the ones revisited.
    pub fetch: Vec<String>,
    /// How many of `fetch` are new (scheduled here, never heard of).
    pub new: usize,
    /// Known routers no longer scheduled here.
    pub gone: Vec<String>,
    /// Where the next pass goes on from (the last router revisited).
    pub after: Option<String>,
}

/// Plans a pass. `known`: every router the agent holds, numbered or could not serve;
/// `scheduled`: `get_router_ids`'s answer; `after`: where the last pass stopped; `budget`:
/// routers to fetch at most.
pub fn plan(
    known: &BTreeSet<String>,
    scheduled: &BTreeSet<String>,
    after: Option<&str>,
    budget: usize,
) -> Plan {
    let mut fetch: Vec<String> = scheduled.difference(known).take(budget).cloned().collect();
    let new = fetch.len();
    let gone = known.difference(scheduled).cloned().collect();
    let both: Vec<&String> = known.intersection(scheduled).collect();
    let turn = (budget - new).min(both.len());
    // Sorted: the first one past `after`, wrapping around.
    let start = after.map_or(0, |a| both.partition_point(|id| id.as_str() <= a));
    fetch.extend((0..turn).map(|i| both[(start + i) % both.len()].clone()));
    let after = if turn > 0 {
        fetch.last().cloned()
    } else {
        after.map(str::to_string)
    };
    Plan {
        fetch,
        new,
        gone,
        after,
    }
}

/// What a pass fetched.
pub struct Swept {
    pub plan: Plan,
    /// Routers scheduled here.
    pub scheduled: usize,
    /// The dicts of `plan.fetch` neutron-server returned (those still hosted here), with
    /// their networks' segments.
    pub fetched: Fetched,
}

/// Runs a pass's calls: the router ids, the planned dicts, their networks' segments.
async fn fetch(
    plugin: &Plugin<'_>,
    chunk: usize,
    known: &BTreeSet<String>,
    after: Option<&str>,
) -> Result<Swept> {
    let started = Instant::now();
    let scheduled: BTreeSet<String> = plugin.get_router_ids().await?.into_iter().collect();
    let plan = plan(known, &scheduled, after, SWEEP_ROUTERS);
    let fetched = resync::fetch_dicts(plugin, &plan.fetch, chunk, started).await?;
    Ok(Swept {
        plan,
        scheduled: scheduled.len(),
        fetched,
    })
}

/// A pass's fetch in flight beside the notifications, and the routers notices named since it
/// began.
pub struct InFlight<'s> {
    fetch: Pin<Box<dyn Future<Output = Result<Swept>> + Send + 's>>,
    pub touched: BTreeSet<String>,
}

impl<'s> InFlight<'s> {
    /// Starts a pass on `session` (the future owns what it needs but the session).
    pub fn start(
        session: &'s Session,
        host: String,
        timeout: Duration,
        chunk: usize,
        known: BTreeSet<String>,
        after: Option<String>,
    ) -> Self {
        let fetch = Box::pin(async move {
            let plugin = Plugin {
                session,
                host: &host,
                timeout,
            };
            fetch(&plugin, chunk, &known, after.as_deref()).await
        });
        InFlight {
            fetch,
            touched: BTreeSet::new(),
        }
    }

    /// The fetch's result, once it is in (cancel-safe: polling again goes on where it was).
    pub async fn done(&mut self) -> Result<Swept> {
        self.fetch.as_mut().await
    }
}

/// What a fetched pass settles, given the routers notices named since it began: the dicts to
/// apply and the routers to tear down — the ones gone from the schedule and the ones fetched
/// that neutron-server no longer returned (deleted or moved since it listed them) — none of
/// them a router a notice named (its notice brings a fresher dict, or its removal).
pub fn settle(
    plan: &Plan,
    dicts: Vec<Value>,
    touched: &BTreeSet<String>,
) -> (Vec<Value>, BTreeSet<String>) {
    let returned: BTreeSet<&str> = dicts.iter().filter_map(mapping::router_id).collect();
    let remove = plan
        .gone
        .iter()
        .chain(
            plan.fetch
                .iter()
                .filter(|id| !returned.contains(id.as_str())),
        )
        .filter(|id| !touched.contains(*id))
        .cloned()
        .collect();
    let dicts = dicts
        .into_iter()
        .filter(|d| mapping::router_id(d).is_none_or(|id| !touched.contains(id)))
        .collect();
    (dicts, remove)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn passes_take_the_known_routers_in_turn_each_once_a_round() {
        let known = set(&["a", "b", "c", "d", "e"]);
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let p = plan(&known, &known, after.as_deref(), 2);
            assert_eq!(p.fetch.len(), 2, "{p:?}");
            assert!(p.gone.is_empty() && p.new == 0);
            seen.extend(p.fetch.clone());
            after = p.after;
        }
        assert_eq!(
            seen,
            ["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"],
            "every router once every ⌈5 / 2⌉ passes, wrapping around"
        );
        // More budget than routers: each once.
        let p = plan(&known, &known, Some("c"), 64);
        assert_eq!(p.fetch, ["d", "e", "a", "b", "c"]);
        // The router the last pass stopped at was deleted meanwhile: go on after its place.
        let p = plan(&set(&["a", "b", "d"]), &set(&["a", "b", "d"]), Some("c"), 1);
        assert_eq!(
            (p.fetch, p.after),
            (vec!["d".to_string()], Some("d".into()))
        );
    }

    #[test]
    fn new_routers_come_first_and_gone_ones_are_torn_down() {
        let known = set(&["a", "b", "c"]);
        let scheduled = set(&["b", "c", "x", "y"]);
        let p = plan(&known, &scheduled, Some("b"), 3);
        assert_eq!(
            p.fetch,
            ["x", "y", "c"],
            "new first, then the next known one"
        );
        assert_eq!((p.new, p.gone.clone()), (2, vec!["a".to_string()]));
        assert_eq!(p.after.as_deref(), Some("c"));
        // New ones fill the budget: no turn this pass, and the next goes on where this one
        // would have.
        let p = plan(&known, &scheduled, Some("b"), 2);
        assert_eq!((p.fetch.len(), p.new), (2, 2));
        assert_eq!(p.after.as_deref(), Some("b"));
        // Nothing scheduled, nothing known: nothing to do.
        let p = plan(&BTreeSet::new(), &BTreeSet::new(), None, 64);
        assert!(p.fetch.is_empty() && p.gone.is_empty() && p.after.is_none());
    }

    #[test]
    fn a_pass_leaves_routers_named_meanwhile_to_their_notices() {
        let p = Plan {
            fetch: vec!["a".into(), "b".into(), "c".into(), "n".into()],
            new: 0,
            gone: vec!["g".into(), "h".into()],
            after: Some("n".into()),
        };
        // "c" was not returned (deleted since the ids were listed); "b" and "h" were named by
        // notices while the pass ran.
        let dicts = vec![json!({"id": "a"}), json!({"id": "b"}), json!({"id": "n"})];
        let (apply, remove) = settle(&p, dicts, &set(&["b", "h"]));
        let applied: Vec<&str> = apply.iter().filter_map(mapping::router_id).collect();
        assert_eq!(applied, ["a", "n"]);
        assert_eq!(remove, set(&["c", "g"]));
    }
}
