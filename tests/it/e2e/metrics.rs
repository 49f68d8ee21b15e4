//! The metrics endpoint of a live daemon: a router passing real SNAT traffic shows up in
//! a scrape by its Neutron id (translated packets, sessions, drops by reason), next to the
//! session table's fill, GC, reconcile and realisation histograms and API requests by status;
//! the Grafana dashboard in `deploy/` names only metrics a scrape has; `router-ctl top
//! --once` prints the router; a bad `[metrics] listen` is refused at start.
//!
//! The daemon runs in its own host namespace and its metrics listener is on that namespace's
//! loopback (never the root namespace's).

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::TcpListener,
    time::{Duration, Instant},
};

use router_ctl::{
    metrics::text::{self, Sample},
    model::spec::names,
};
use serde_json::Value;
use tests::{
    Netns,
    daemon::{ApiClient, Daemon, DaemonOptions},
    topo::RouterSite,
    unique,
};

/// A daemon whose metrics listen on a free port of its namespace's loopback, and a router
/// `r1` with a gateway whose VM reaches an "internet" namespace through SNAT ([`RouterSite`]).
/// Returns the site, a client of the metrics listener and the metrics URL.
fn topology() -> (RouterSite, ApiClient, String) {
    let host = Netns::new("meh");
    let port = host.enter(|| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("picking a port")
            .port()
    });
    let config = format!("reconcile_interval = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let site = RouterSite::start(host, DaemonOptions::config(config), "me", "10.31.0.0/24");
    site.d.cli_ok(&["gateway", "set", "r1", "public"]);
    let base = format!("http://127.0.0.1:{port}");
    let metrics = ApiClient::new(&site.host, &base, None);
    (site, metrics, format!("{base}/metrics"))
}

/// `GET /metrics` through `metrics`: the text (`site`'s daemon log on failure).
fn scrape_text(site: &RouterSite, metrics: &ApiClient) -> String {
    let (status, body) = metrics.get("/metrics");
    assert_eq!(status, 200, "{body}\n{}", site.d.log());
    match body {
        Value::String(t) => t,
        other => panic!("metrics are not text: {other}"),
    }
}

/// A sample that must have reached a floor: name, labels, floor.
type Floor<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// The value of the one sample `name` with every label of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

/// Every `router_ctl_…` metric name in the PromQL of `dashboard` (panel targets and template
/// variable queries).
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(dashboard, &mut queries);
    assert!(queries.len() >= 5, "too few queries: {queries:?}");
    let mut names = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(at) = rest.find("router_ctl_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn metrics_report_a_router_passing_snat_traffic_and_the_dashboard_names_them() {
    let (t, metrics, metrics_url) = topology();
    let d = &t.d;
    let router_id = t.router_id();
    let r = router_id.as_str();

    // Real traffic: an open TCP connection with data both ways, and pings.
    let mut stream = t
        .connect(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the VM cannot reach the internet: {e}\n{}", d.log()));
    stream.write_all(b"hello").expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut server = loop {
        match t.accepted() {
            Some((s, _)) => break s,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("the server accepted nothing within 5 s"),
        }
    };
    server.write_all(b"world").expect("reply");
    let ping =
        t.vm.try_run("ping", &["-c", "3", "-i", "0.2", "-W", "2", "203.0.113.1"]);
    assert!(ping.status.success(), "ping through the router failed");
    // An API error, to be counted by status.
    let (status, _) = d.get("/v2.0/routers/no-such-router");
    assert_eq!(status, 404);

    let scrape = scrape_text(&t, &metrics);
    let s = text::parse(&scrape);
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{scrape}"))
    };
    let at_least = |floors: &[Floor]| {
        for (name, labels, floor) in floors {
            let v = get(name, labels);
            assert!(v >= *floor, "{name} {labels:?} = {v} < {floor}:\n{scrape}");
        }
    };
    let router = ("router_id", r);
    #[rustfmt::skip]
    at_least(&[
        ("router_ctl_router_packets_total", &[router, ("direction", "out")], 4.0),
        ("router_ctl_router_packets_total", &[router, ("direction", "in")], 4.0),
        ("router_ctl_router_sessions", &[router], 1.0),
        ("router_ctl_router_sessions_created_total", &[router], 2.0),
    ]);
    assert!(
        get(
            "router_ctl_router_bytes_total",
            &[router, ("direction", "out")]
        ) > 0.0
    );
    // Every drop reason is a series, zero or not.
    for reason in router_common::stats::Counter::NAMES
        .iter()
        .filter(|n| n.starts_with("drop_"))
    {
        get(
            "router_ctl_router_drops_total",
            &[router, ("reason", reason)],
        );
    }
    get("router_ctl_router_fast_forwarded_total", &[router]);
    let entries = get("router_ctl_session_table_entries", &[]);
    let capacity = get("router_ctl_session_table_capacity", &[]);
    assert!(
        entries >= 2.0 && capacity >= entries,
        "{entries}/{capacity}"
    );
    assert_eq!(get("router_ctl_routers", &[]), 1.0);
    assert!(get("router_ctl_datapath_packets_total", &[]) > 0.0);

    // The daemon's own records.
    #[rustfmt::skip]
    at_least(&[
        ("router_ctl_api_requests_total", &[("method", "POST"), ("code", "201")], 5.0),
        ("router_ctl_api_requests_total", &[("method", "GET"), ("code", "200")], 1.0),
        ("router_ctl_api_requests_total", &[("method", "GET"), ("code", "404")], 1.0),
        ("router_ctl_realise_duration_seconds_count", &[("operation", "apply_router")], 3.0),
        ("router_ctl_realise_duration_seconds_bucket",
            &[("operation", "apply_router"), ("le", "+Inf")], 3.0),
        ("router_ctl_reconcile_duration_seconds_count", &[], 1.0),
        ("router_ctl_gc_passes_total", &[], 1.0),
        // r1's gateway address, announced only to the internet host's port: no router here
        // asked for it.
        ("router_ctl_gratuitous_arp_frames_total", &[("audience", "ports")], 1.0),
    ]);
    get(
        "router_ctl_gratuitous_arp_frames_total",
        &[("audience", "everyone")],
    );
    for histogram in [
        "router_ctl_reconcile_duration_seconds",
        "router_ctl_realise_duration_seconds",
        "router_ctl_gc_duration_seconds",
    ] {
        assert!(
            scrape.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}:\n{scrape}"
        );
    }
    get("router_ctl_reconcile_repaired_total", &[]);
    get("router_ctl_gc_sessions_expired_total", &[]);

    // The dashboard asks only for metrics this scrape has.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let have: BTreeSet<&str> = s.iter().map(|s| s.name.as_str()).collect();
    let wanted = dashboard_metrics(&dashboard);
    assert!(wanted.len() >= 8, "{wanted:?}");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !have.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics a scrape does not have: {missing:?}\n{scrape}"
    );

    // `router-ctl top --once`: one frame, with the router by id and name.
    let frame = d.cli_ok(&[
        "top",
        "--once",
        "--interval",
        "0.5",
        "--metrics-url",
        &metrics_url,
    ]);
    let lines: Vec<&str> = frame.lines().collect();
    assert!(
        lines[0].starts_with("router-ctl top: 1 routers · session table"),
        "{frame}"
    );
    assert!(lines.iter().any(|l| l.starts_with("ROUTER")), "{frame}");
    let row = lines
        .iter()
        .find(|l| l.starts_with(r))
        .unwrap_or_else(|| panic!("no row for {r}:\n{frame}"));
    assert!(row.contains("r1"), "{frame}");
    drop((stream, server));

    // At rest, passes (one a second here) find nothing changed and skip their outside walk:
    // counted as quiet.
    await_counter(&t, &metrics, "router_ctl_reconcile_quiet_passes_total", 2.0);

    // Drift: the router's namespace deleted from outside is repaired, and counted, though the
    // passes before it were quiet (the mount table's change signal ends that).
    tests::ip(&["netns", "del", &names::router_netns(r)]);
    await_counter(&t, &metrics, "router_ctl_reconcile_repaired_total", 1.0);
}

/// Scrapes until the unlabelled counter `name` reaches `floor` (fails after 20 s, with the
/// daemon's log).
fn await_counter(site: &RouterSite, metrics: &ApiClient, name: &str, floor: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = text::parse(&scrape_text(site, metrics));
        if value(&s, name, &[]).is_some_and(|v| v >= floor) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {floor} within 20 s\n{}",
            site.d.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_bad_metrics_listen_address_is_refused_at_start() {
    let dir = std::env::temp_dir().join(unique("mcfg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("router-ctl.toml");
    std::fs::write(&config, "[metrics]\nlisten = \"localhost:80800\"\n").expect("config");
    // Refused before anything is opened; run in a namespace of its own all the same.
    let ns = Netns::new("mcf");
    let out = ns
        .cmd(tests::daemon::router_ctl_bin())
        .args(["daemon", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("running router-ctl daemon");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a bad address: {err}");
    assert!(err.contains("[metrics] listen"), "{err}");
    assert!(!dir.join("state").exists());
}

#[test]
fn metrics_listen_on_the_default_port_and_an_empty_address_turns_them_off() {
    let on_ns = Netns::new("mon");
    let on = Daemon::start(&on_ns);
    let (status, body) = ApiClient::new(&on_ns, "http://127.0.0.1:9180", None).get("/metrics");
    assert_eq!(status, 200, "{body}\n{}", on.log());
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("router_ctl_session_table_capacity")),
        "{body}"
    );

    let off_ns = Netns::new("mof");
    let off = Daemon::start_configured(&off_ns, "[metrics]\nlisten = \"\"\n");
    let tried =
        ApiClient::new(&off_ns, "http://127.0.0.1:9180", None).try_raw("GET", "/metrics", None);
    assert!(
        tried.is_err(),
        "metrics answered with listen = \"\": {tried:?}"
    );
    // The API is unaffected.
    assert_eq!(off.get("/v2.0/routers").0, 200);
    drop((off, on));
}
