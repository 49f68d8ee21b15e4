//! The datapath's metrics, read from the per-CPU maps and the session table at each scrape.
//!
//! Per-router counters are exported by their `router_common::stats::Counter` name, so a
//! counter added there shows up here with no change: translated packets and bytes become
//! `router_ctl_router_{packets,bytes}_total{direction}`, every `drop_*` counter a `reason` of
//! `router_ctl_router_drops_total`, and any other counter `router_ctl_router_<name>_total`.

use std::{collections::BTreeMap, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::PREFIX;
use crate::{
    datapath::{Datapath, census::SessionCensus},
    realise::Realiser,
};

/// Who the datapath's router numbers are: (router id, datapath number) of every router.
pub trait RouterNumbers: Send + Sync + 'static {
    /// Every router the datapath holds state for, with its number.
    fn router_numbers(&self) -> Vec<(String, u32)>;
}

impl RouterNumbers for Realiser {
    fn router_numbers(&self) -> Vec<(String, u32)> {
        Realiser::router_numbers(self)
    }
}

/// Reads the datapath when the registry is encoded.
pub(super) struct DatapathCollector {
    datapath: Arc<Datapath>,
    routers: Arc<dyn RouterNumbers>,
}

impl std::fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathCollector").finish_non_exhaustive()
    }
}

impl DatapathCollector {
    pub(super) fn new(datapath: Arc<Datapath>, routers: Arc<dyn RouterNumbers>) -> Self {
        Self { datapath, routers }
    }

    /// Everything one scrape reports, read before any of it is encoded. A read that fails
    /// leaves its part out (logged): the rest of the scrape is still worth having.
    fn snapshot(&self) -> Snapshot {
        let mut routers: Vec<RouterSample> = self
            .routers
            .router_numbers()
            .into_iter()
            .filter_map(|(id, dp_id)| match self.datapath.stats(dp_id) {
                Ok(counters) => Some(RouterSample {
                    id,
                    dp_id,
                    counters,
                }),
                Err(e) => {
                    tracing::warn!("metrics: counters of router {id}: {e:#}");
                    None
                }
            })
            .collect();
        routers.sort_by(|a, b| a.id.cmp(&b.id));
        let census = self
            .datapath
            .session_census()
            .inspect_err(|e| tracing::warn!("metrics: session table: {e:#}"))
            .ok();
        let global = self
            .datapath
            .global_stats()
            .inspect_err(|e| tracing::warn!("metrics: global counters: {e:#}"))
            .unwrap_or_default();
        Snapshot {
            routers,
            census,
            global,
        }
    }
}

struct RouterSample {
    id: String,
    dp_id: u32,
    /// By `Counter` name, summed over CPUs.
    counters: BTreeMap<String, u64>,
}

struct Snapshot {
    routers: Vec<RouterSample>,
    census: Option<SessionCensus>,
    global: BTreeMap<String, u64>,
}

/// A per-router counter's extra label (`direction`, `reason`), if it has one.
type Extra = Option<(&'static str, String)>;

/// Where a per-router counter goes: metric name (without the prefix) and its extra label.
fn family_of(counter: &str) -> (String, Extra) {
    match counter {
        "out_packets" => ("router_packets".into(), Some(("direction", "out".into()))),
        "in_packets" => ("router_packets".into(), Some(("direction", "in".into()))),
        "out_bytes" => ("router_bytes".into(), Some(("direction", "out".into()))),
        "in_bytes" => ("router_bytes".into(), Some(("direction", "in".into()))),
        drop if drop.starts_with("drop_") => {
            ("router_drops".into(), Some(("reason", drop.to_string())))
        }
        other => (format!("router_{other}"), None),
    }
}

/// Help text of a per-router family.
fn help_of(family: &str) -> String {
    match family {
        "router_packets" => {
            "Packets translated by the router's NAT, by direction (out: SNAT, in: reverse).".into()
        }
        "router_bytes" => {
            "Bytes of the packets translated by the router's NAT, by direction.".into()
        }
        "router_drops" => {
            "Packets the router's datapath dropped, by reason (the counter's name).".into()
        }
        "router_fast_forwarded" => {
            "Packets the fast path forwarded past the router namespace's IP stack.".into()
        }
        other => format!(
            "The router's datapath counter {}.",
            other.trim_start_matches("router_")
        ),
    }
}

/// The gauge `{PREFIX}_{name}`, one value with no labels.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let name = format!("{PREFIX}_{name}");
    let m = encoder.encode_descriptor(&name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot();

        // Per-router counters, grouped by family: (family → [(router, extra label, value)]).
        let mut families: BTreeMap<String, Vec<(&str, Extra, u64)>> = BTreeMap::new();
        for r in &snap.routers {
            for (name, v) in &r.counters {
                let (family, extra) = family_of(name);
                families
                    .entry(family)
                    .or_default()
                    .push((r.id.as_str(), extra, *v));
            }
        }
        for (family, series) in &families {
            let name = format!("{PREFIX}_{family}");
            let mut m =
                encoder.encode_descriptor(&name, &help_of(family), None, MetricType::Counter)?;
            for (router, extra, v) in series {
                let c = ConstCounter::new(*v);
                match extra {
                    Some((k, val)) => {
                        let labels = [("router_id", *router), (*k, val.as_str())];
                        c.encode(m.encode_family(&labels)?)?;
                    }
                    None => c.encode(m.encode_family(&[("router_id", *router)])?)?,
                }
            }
        }

        if let Some(census) = &snap.census {
            let name = format!("{PREFIX}_router_sessions");
            let mut m = encoder.encode_descriptor(
                &name,
                "Sessions of the router in the session table (NAT, floating IP and port forwarding).",
                None,
                MetricType::Gauge,
            )?;
            for r in &snap.routers {
                let n = census.per_router.get(&r.dp_id).copied().unwrap_or(0);
                ConstGauge::new(n as i64)
                    .encode(m.encode_family(&[("router_id", r.id.as_str())])?)?;
            }
            gauge(
                &mut encoder,
                "session_table_entries",
                "Entries in the session table shared by every router (sessions, and a second entry for SNAT flows that changed port).",
                census.entries as i64,
            )?;
            gauge(
                &mut encoder,
                "session_table_capacity",
                "Size of the session table: no new flow gets a session once the entries reach it.",
                i64::from(census.capacity),
            )?;
        }

        gauge(
            &mut encoder,
            "routers",
            "Routers the datapath holds state for.",
            snap.routers.len() as i64,
        )?;

        for (counter, v) in &snap.global {
            let name = format!("{PREFIX}_datapath_{counter}");
            let help = format!("The datapath's counter {counter}, all routers.");
            let m = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use router_common::stats::Counter;

    use super::*;

    #[test]
    fn every_counter_has_a_family_and_drops_are_reasons() {
        let mut names = std::collections::BTreeSet::new();
        for c in Counter::ALL {
            let (family, extra) = family_of(c.name());
            if c.name().starts_with("drop_") {
                assert_eq!(family, "router_drops");
                assert_eq!(extra, Some(("reason", c.name().to_string())));
            }
            assert!(names.insert((family, extra)), "{} twice", c.name());
        }
        assert_eq!(
            family_of("out_packets"),
            ("router_packets".into(), Some(("direction", "out".into())))
        );
        assert_eq!(
            family_of("fast_forwarded"),
            ("router_fast_forwarded".into(), None)
        );
    }
}
