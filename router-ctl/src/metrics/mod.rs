//! What an operator's monitoring scrapes: Prometheus text (`GET /metrics` on `[metrics]
//! listen`), encoded by `prometheus-client`.
//!
//! Two kinds of metrics: counts kept elsewhere, read at each scrape by a collector (the
//! datapath's counters and the session table from the maps, `collector`; the announcer's
//! gratuitous ARP frames, `announcements`; nothing polls them in between), and what the
//! daemon's own loops record as they run (GC passes, reconcile passes and the drift they
//! repaired, realisation latency, API requests by status), kept in [`Metrics`].
//!
//! Nothing here depends on the Neutron API: a process with a `Datapath` and a `Realiser` (the
//! daemon, or an agent) builds a [`Metrics`], serves it with `serve::serve`, and records into it.
//! `timed` (realisation latency of the API's calls) and `serve::serve_counted` plug into the
//! API from outside, as a wrapper and a tower layer.

mod announcements;
mod collector;
pub mod serve;
pub mod text;
pub mod timed;

use std::{borrow::Cow, sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

pub use self::collector::RouterNumbers;
use crate::{
    datapath::{Datapath, GcReport},
    realise::ReconcileReport,
};

/// Metric names start with this.
pub const PREFIX: &str = "router_ctl";

/// Label set of one realisation histogram: `operation`.
type OperationLabels = [(&'static str, &'static str); 1];
/// Label set of the API request counter: `method`, `code`.
type RequestLabels = [(&'static str, Cow<'static, str>); 2];

/// Latency buckets (seconds): 1 ms to about 65 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// The daemon's metrics: the registry a scrape encodes, and the instruments its loops record
/// into.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    gc_passes: Counter,
    gc_failures: Counter,
    gc_expired: Counter,
    gc_dropped_early: Counter,
    gc_duration: Histogram,
    reconcile_duration: Histogram,
    reconcile_failures: Counter,
    reconcile_repaired: Counter,
    reconcile_removed: Counter,
    reconcile_failed: Counter,
    reconcile_quiet: Counter,
    realise_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    api_requests: Family<RequestLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The instruments, registered; no datapath metrics until `collect_datapath`.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            gc_passes: Counter::default(),
            gc_failures: Counter::default(),
            gc_expired: Counter::default(),
            gc_dropped_early: Counter::default(),
            gc_duration: latency_buckets(),
            reconcile_duration: latency_buckets(),
            reconcile_failures: Counter::default(),
            reconcile_repaired: Counter::default(),
            reconcile_removed: Counter::default(),
            reconcile_failed: Counter::default(),
            reconcile_quiet: Counter::default(),
            realise_duration: Family::new_with_constructor(latency_buckets),
            api_requests: Family::default(),
        };
        let r = &mut m.registry;
        let name = |n: &str| format!("{PREFIX}_{n}");
        r.register(
            name("gc_passes"),
            "Session GC passes run",
            m.gc_passes.clone(),
        );
        r.register(
            name("gc_failures"),
            "Session GC passes that failed",
            m.gc_failures.clone(),
        );
        r.register(
            name("gc_sessions_expired"),
            "Sessions the GC removed because they idled past their state's timeout",
            m.gc_expired.clone(),
        );
        r.register(
            name("gc_sessions_dropped_early"),
            "Never-answered sessions the GC dropped early from a crowded table",
            m.gc_dropped_early.clone(),
        );
        r.register(
            name("gc_duration_seconds"),
            "Time one session GC pass took",
            m.gc_duration.clone(),
        );
        r.register(
            name("reconcile_duration_seconds"),
            "Time one reconcile pass (desired state from the database to the kernel) took",
            m.reconcile_duration.clone(),
        );
        r.register(
            name("reconcile_failures"),
            "Reconcile passes that stopped with an error",
            m.reconcile_failures.clone(),
        );
        r.register(
            name("reconcile_repaired"),
            "Kernel objects a reconcile pass found missing or changed from outside and repaired (drift)",
            m.reconcile_repaired.clone(),
        );
        r.register(
            name("reconcile_removed"),
            "Kernel objects this daemon created that a reconcile pass removed as no longer desired",
            m.reconcile_removed.clone(),
        );
        r.register(
            name("reconcile_failed"),
            "Objects a reconcile pass could not converge (the pass goes on with the others)",
            m.reconcile_failed.clone(),
        );
        r.register(
            name("reconcile_quiet_passes"),
            "Reconcile passes that found nothing changed since the last clean one (desired state, links, mounts, ownership records) and looked only at their few routers from inside",
            m.reconcile_quiet.clone(),
        );
        r.register(
            name("realise_duration_seconds"),
            "Time one realisation of an API change took, by operation",
            m.realise_duration.clone(),
        );
        r.register(
            name("api_requests"),
            "API requests answered, by method and status code",
            m.api_requests.clone(),
        );
        // Every operation's series exists from the start, so a dashboard's quantiles have
        // something to ask before the first change.
        for op in timed::OPERATIONS {
            drop(m.realise_duration.get_or_create(&[("operation", op)]));
        }
        m
    }

    /// Adds the datapath's counters and the session table, read from the maps at each
    /// scrape; `routers` names the routers the datapath knows by number.
    pub fn collect_datapath(&mut self, datapath: Arc<Datapath>, routers: Arc<dyn RouterNumbers>) {
        self.registry
            .register_collector(Box::new(collector::DatapathCollector::new(
                datapath, routers,
            )));
    }

    /// Adds the gratuitous ARP frames the realiser's announcer sent, by audience, read at
    /// each scrape.
    pub fn collect_announcements(&mut self, sent: Arc<crate::net::arp::Sent>) {
        self.registry
            .register_collector(Box::new(announcements::AnnouncementCollector::new(sent)));
    }

    /// The Prometheus text exposition (format 0.0.4). Blocking: the datapath collector reads
    /// the maps.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("encoding the metrics: {e}");
        }
        out
    }

    /// Records a GC pass that took `took` (`None`: it failed).
    pub fn gc_pass(&self, report: Option<&GcReport>, took: Duration) {
        self.gc_passes.inc();
        self.gc_duration.observe(took.as_secs_f64());
        match report {
            Some(r) => {
                self.gc_expired.inc_by(r.expired as u64);
                self.gc_dropped_early.inc_by(r.dropped_early as u64);
            }
            None => {
                self.gc_failures.inc();
            }
        }
    }

    /// Records a reconcile pass that took `took` (`None`: it stopped with an error).
    pub fn reconcile_pass(&self, report: Option<&ReconcileReport>, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
        match report {
            Some(r) => {
                self.reconcile_repaired.inc_by(r.repaired.len() as u64);
                self.reconcile_removed.inc_by(r.removed.len() as u64);
                self.reconcile_failed.inc_by(r.failed.len() as u64);
                if r.quiet {
                    self.reconcile_quiet.inc();
                }
            }
            None => {
                self.reconcile_failures.inc();
            }
        }
    }

    /// Records one realisation (`apply_router`, `remove_network`, ...) that took `took`.
    pub fn realised(&self, operation: &'static str, took: Duration) {
        self.realise_duration
            .get_or_create(&[("operation", operation)])
            .observe(took.as_secs_f64());
    }

    /// Counts one API request answered with `status`.
    pub fn api_request(&self, method: &axum::http::Method, status: axum::http::StatusCode) {
        // Known methods only, so a client cannot grow the label set.
        let method = match *method {
            axum::http::Method::GET => "GET",
            axum::http::Method::POST => "POST",
            axum::http::Method::PUT => "PUT",
            axum::http::Method::DELETE => "DELETE",
            axum::http::Method::HEAD => "HEAD",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&[
                ("method", Cow::Borrowed(method)),
                ("code", Cow::Owned(status.as_u16().to_string())),
            ])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_in_the_exposition() {
        let m = Metrics::new();
        m.gc_pass(
            Some(&GcReport {
                expired: 3,
                dropped_early: 1,
                entries: 10,
            }),
            Duration::from_millis(5),
        );
        m.gc_pass(None, Duration::from_millis(1));
        m.reconcile_pass(
            Some(&ReconcileReport {
                repaired: vec!["a".into(), "b".into()],
                ..Default::default()
            }),
            Duration::from_millis(30),
        );
        m.reconcile_pass(
            Some(&ReconcileReport {
                quiet: true,
                ..Default::default()
            }),
            Duration::from_millis(1),
        );
        m.realised("apply_router", Duration::from_millis(12));
        m.api_request(&axum::http::Method::POST, axum::http::StatusCode::CREATED);
        m.api_request(
            &axum::http::Method::PATCH,
            axum::http::StatusCode::NOT_FOUND,
        );
        let text = m.encode();
        let samples = text::parse(&text);
        let value = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
                .map(|s| s.value)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
        };
        assert_eq!(value("router_ctl_gc_passes_total", &[]), 2.0);
        assert_eq!(value("router_ctl_gc_failures_total", &[]), 1.0);
        assert_eq!(value("router_ctl_gc_sessions_expired_total", &[]), 3.0);
        assert_eq!(
            value("router_ctl_gc_sessions_dropped_early_total", &[]),
            1.0
        );
        assert_eq!(value("router_ctl_reconcile_repaired_total", &[]), 2.0);
        assert_eq!(value("router_ctl_reconcile_quiet_passes_total", &[]), 1.0);
        assert_eq!(
            value("router_ctl_reconcile_duration_seconds_count", &[]),
            2.0
        );
        assert_eq!(
            value(
                "router_ctl_realise_duration_seconds_bucket",
                &[("operation", "apply_router"), ("le", "+Inf")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "router_ctl_api_requests_total",
                &[("method", "POST"), ("code", "201")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "router_ctl_api_requests_total",
                &[("method", "other"), ("code", "404")]
            ),
            1.0
        );
        assert!(
            text.contains("# TYPE router_ctl_gc_duration_seconds histogram"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn listen_defaults_to_loopback_and_empty_turns_it_off() {
        let c = parse("").expect("empty config");
        assert_eq!(
            c.metrics.listen,
            Some("127.0.0.1:9180".parse().expect("address"))
        );
        let c = parse("[metrics]\nlisten = \"\"\n").expect("empty listen");
        assert_eq!(c.metrics.listen, None);
        let c = parse("[metrics]\nlisten = \"0.0.0.0:9100\"\n").expect("address");
        assert_eq!(
            c.metrics.listen,
            Some("0.0.0.0:9100".parse().expect("address"))
        );
    }

    #[test]
    fn a_bad_listen_address_is_refused_naming_the_key() {
        for bad in ["localhost", "127.0.0.1", "1.2.3.4:99999", "[::1]"] {
            let e = parse(&format!("[metrics]\nlisten = \"{bad}\"\n"))
                .expect_err("a bad address is refused");
            assert!(e.contains("[metrics] listen"), "{bad}: {e}");
        }
        let e = parse("[metrics]\nlisten = 9180\n").expect_err("not a string");
        assert!(e.contains("listen"), "{e}");
        let e = parse("[metrics]\nport = 1\n").expect_err("unknown key");
        assert!(e.contains("port"), "{e}");
    }
}
