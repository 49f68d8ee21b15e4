//! Configurations (d) and (e) and the control-plane timings, through the daemon. Each is its
//! own `router-ctl daemon` — (d) with `[datapath] fast_path = false`, (e) with `fast_path =
//! true` (the product's default) — in its own throwaway host namespace (started with
//! `nsenter --net=`), with a private bpffs mounted in its own temp directory and a temp state
//! directory; networks, subnets, routers, interfaces and the gateway are created with the
//! Neutron v2.0 API, and the client and server namespaces are plugged into the networks with
//! `router-ctl port create --netns`.
//!
//! Cleanup (also on error or Ctrl-C), per daemon: the daemon is stopped, every `qrouter-`
//! namespace of a router this bench created through it is deleted, its host namespace (bridges,
//! taps, links) goes, its bpffs is unmounted and its temp directory removed.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use kit::{
    daemon::{ApiClient, Daemon, DaemonOptions, Launch},
    netns::remove_netns,
};
use serde_json::{Value, json};

use super::{
    ns::{self, Netns, check_interrupted},
    report::{DaemonCounters, ParallelGatewayRun, Report},
    topo::{self, CLIENT_IP, Kind, Topology},
};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const PROBE_PORT: u16 = 20300;
/// The counter of packets the fast path forwarded.
const FAST_FORWARDED: &str = router_common::stats::Counter::FastForwarded.name();

/// Builds the eBPF object and `router-ctl` (release) with it embedded; returns the binary.
/// Done once for both daemons.
pub fn build(target_dir: &Path, workspace: &Path) -> Result<PathBuf> {
    let obj = crate::ebpf::build(target_dir)?;
    eprintln!("bench: building router-ctl (release) with the eBPF object");
    let mut cargo = crate::ebpf::clean_cargo();
    cargo
        .current_dir(workspace)
        .args(["build", "--release", "--package", "router-ctl", "--bins"])
        .env("ROUTER_EBPF_OBJECT", &obj);
    crate::run(&mut cargo)?;
    Ok(target_dir.join("release/router-ctl"))
}

/// The daemon's `[datapath] fast_path` setting for configuration `kind`: off for (d), on (the
/// product's default) for (e).
fn fast_path(kind: Kind) -> bool {
    kind == Kind::Fast
}

/// Short name of a daemon configuration in namespace and directory names.
fn tag(kind: Kind) -> &'static str {
    if fast_path(kind) { "fa" } else { "eb" }
}

/// One daemon under test and what the bench created through it.
pub struct Env {
    /// The configuration this daemon serves: `Kind::Ebpf` (d) or `Kind::Fast` (e).
    pub kind: Kind,
    // Drop order matters: the daemon (stopped, purged, its directory removed), then the
    // routers' namespaces (in `drop`), then the host namespace.
    daemon: Option<Daemon>,
    routers: Vec<String>,
    host: Netns,
    bin: PathBuf,
    api: ApiClient,
    /// Gateway-set → first translated packet, measured while building the path.
    gateway_delay: Option<Result<f64, String>>,
    /// Untranslated packets seen at the server while the gateway was being set.
    leak_note: Option<String>,
    /// The datapath counters right after the path was built, so the report can tell what the
    /// measured rounds added.
    baseline: Option<std::collections::BTreeMap<String, u64>>,
    /// Something the report should say about how this daemon was configured.
    pub config_note: Option<String>,
}

impl Drop for Env {
    fn drop(&mut self) {
        // SIGTERM, `daemon --purge` of what its state directory owns, the bpffs and directory.
        drop(self.daemon.take());
        // Belt and braces: the purge removes these too.
        for id in &self.routers {
            remove_netns(&router_netns(id));
        }
    }
}

/// The router namespace of router `id` (`router_ctl::model::spec::names`, which xtask does
/// not link).
fn router_netns(id: &str) -> String {
    format!("qrouter-{id}")
}

impl Env {
    /// Starts the daemon of configuration `kind` (`Kind::Ebpf` or `Kind::Fast`) from `bin` and
    /// waits for its API.
    pub fn start(bin: &Path, kind: Kind) -> Result<Self> {
        let host = super::ns::new(&format!("host{}", tag(kind)))?;
        // Short UDP timeouts so the new-flow runs of earlier rounds are collected before the next.
        // The bench's one router may hold the whole table (the default `max_sessions`), as the
        // one conntrack table of (b) and (c) has no per-router share: the default cap, a quarter,
        // is a fairness policy (tests/it/e2e/nat_fairness.rs), and at this machine's rates a
        // new-flow run (`FLOW_CAP`) on top of the `TIME_WAIT` sessions the connect-request-close
        // run before it left reached it, so the datapath refused flows conntrack took.
        let nat = "[nat]\nudp_unreplied = 2\ngc_interval = 1\nmax_sessions = 262144\nmax_sessions_per_router = 262144\n";
        let datapath = format!("[datapath]\nfast_path = {}\n", fast_path(kind));
        let mut config_note = None;
        let daemon = match spawn(bin, &host, kind, format!("{nat}{datapath}")) {
            Ok(d) => d,
            // A daemon without the option rejects the section (unknown field). Without it the
            // fast path is never attached, so (d) is still what it claims; (e) is not.
            Err(e) if !fast_path(kind) && unknown_datapath_section(&e) => {
                config_note = Some(format!(
                    "{}: this daemon has no [datapath] fast_path option, so it ran without the section (no fast path there to switch off)",
                    kind.label()
                ));
                spawn(bin, &host, kind, nat.to_string())?
            }
            Err(e) if unknown_datapath_section(&e) => {
                return Err(e.context(
                    "this daemon has no [datapath] fast_path option, so the fast path cannot be switched on",
                ));
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            kind,
            api: daemon.client(),
            daemon: Some(daemon),
            routers: Vec::new(),
            host,
            bin: bin.to_path_buf(),
            gateway_delay: None,
            leak_note: None,
            baseline: None,
            config_note,
        })
    }

    /// The running daemon (present from `start` until drop).
    pub(super) fn daemon(&self) -> &Daemon {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| unreachable!("the daemon lives as long as Env"))
    }

    /// The running daemon, to stop and start it again (the scale runs' restarts).
    pub(super) fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon
            .as_mut()
            .unwrap_or_else(|| unreachable!("the daemon lives as long as Env"))
    }

    /// The daemon's host namespace.
    pub(super) fn host(&self) -> &Netns {
        &self.host
    }

    /// Router `id` was deleted through the API: nothing left to clean up on drop.
    pub(super) fn forget_router(&mut self, id: &str) {
        self.routers.retain(|r| r != id);
    }

    /// A Neutron API call; an error unless the daemon answered 2xx.
    pub(super) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(Value::to_string);
        let (status, v) = self
            .api
            .try_raw(method, &format!("/v2.0{path}"), body.as_deref())
            .with_context(|| format!("{method} {path}"))?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v)
    }

    pub(super) fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call("POST", path, Some(&body))
    }

    pub(super) fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.call("PUT", path, Some(&body))
    }

    pub(super) fn id(v: &Value, kind: &str) -> Result<String> {
        v[kind]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no {kind}.id in {v}"))
    }

    pub(super) fn network(&self, name: &str, external: bool) -> Result<String> {
        let mut n = json!({"name": name, "admin_state_up": true});
        if external {
            n["router:external"] = json!(true);
        }
        Self::id(&self.post("/networks", json!({ "network": n }))?, "network")
    }

    pub(super) fn subnet(&self, net: &str, cidr: &str, gateway: Option<&str>) -> Result<String> {
        let mut s =
            json!({"name": format!("{cidr}"), "network_id": net, "ip_version": 4, "cidr": cidr});
        if let Some(g) = gateway {
            s["gateway_ip"] = json!(g);
        }
        Self::id(&self.post("/subnets", json!({ "subnet": s }))?, "subnet")
    }

    pub(super) fn router(&mut self, name: &str) -> Result<String> {
        let id = Self::id(
            &self.post(
                "/routers",
                json!({"router": {"name": name, "admin_state_up": true}}),
            )?,
            "router",
        )?;
        self.note_router(&id)?;
        Ok(id)
    }

    /// Remembers router `id` for the clean-up: its namespace goes when this `Env` does, and it
    /// is recorded on disk too, so a later run can remove it if this one is killed.
    pub(super) fn note_router(&mut self, id: &str) -> Result<()> {
        self.routers.push(id.to_string());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon().dir().join(ns::ROUTERS_FILE))?;
        writeln!(f, "{id}")?;
        Ok(())
    }

    pub(super) fn add_interface(&self, router: &str, subnet: &str) -> Result<()> {
        self.put(
            &format!("/routers/{router}/add_router_interface"),
            json!({ "subnet_id": subnet }),
        )?;
        Ok(())
    }

    /// Sets the gateway; returns the router's external address.
    pub(super) fn set_gateway(&self, router: &str, ext_net: &str) -> Result<Option<Ipv4Addr>> {
        let v = self.put(
            &format!("/routers/{router}"),
            json!({"router": {"external_gateway_info": {"network_id": ext_net}}}),
        )?;
        Ok(
            v["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
                .as_str()
                .and_then(|s| s.parse().ok()),
        )
    }

    /// Plugs `ns` into `network` with address `ip` through the CLI's sandbox helper, run in the
    /// daemon's namespace.
    pub(super) fn plug(&self, network: &str, ip: Ipv4Addr, ns: &Netns) -> Result<()> {
        let ip = ip.to_string();
        let out = self
            .host
            .cmd(&self.bin)
            .args(["--url", &self.daemon().url(), "--token"])
            .arg(self.daemon().admin_token())
            .args([
                "port",
                "create",
                "--network",
                network,
                "--ip",
                &ip,
                "--netns",
                &ns.name,
            ])
            .output()
            .context("running router-ctl port create")?;
        if !out.status.success() {
            bail!(
                "router-ctl port create --netns {} failed: {}",
                ns.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Builds this daemon's path: external network 203.0.113.0/24 with the server plugged in,
    /// tenant network 10.1.0.0/24 with the client, a router with an interface, then the gateway
    /// — timing gateway set → first translated packet at the server on the way.
    pub fn build_path(&mut self) -> Result<Topology> {
        let client = topo::client_ns(tag(self.kind))?;
        let server = super::ns::new(&format!("s{}", tag(self.kind)))?;
        let ext = self.network("bench-ext", true)?;
        self.subnet(&ext, "203.0.113.0/24", Some("203.0.113.1"))?;
        let int = self.network("bench-int", false)?;
        let int_subnet = self.subnet(&int, "10.1.0.0/24", Some("10.1.0.1"))?;
        let router = self.router("bench")?;
        self.add_interface(&router, &int_subnet)?;
        self.plug(&int, CLIENT_IP, &client)?;
        self.plug(&ext, SERVER_IP, &server)?;

        // Probe: the client sends a small UDP packet every millisecond; the server notes when
        // the first one arrives (translated, since the server has no route to 10.x).
        let stop = Arc::new(AtomicBool::new(false));
        let sink = server.try_enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PROBE_PORT)))??;
        sink.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop_c = stop.clone();
        let sender = client.spawn_thread(move || -> std::io::Result<()> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            let dst = SocketAddr::from((SERVER_IP, PROBE_PORT));
            let end = Instant::now() + Duration::from_secs(20);
            while !stop_c.load(Ordering::SeqCst) && Instant::now() < end {
                let _ = s.send_to(b"probe", dst);
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })?;
        // Nothing may arrive before the gateway exists.
        let mut buf = [0u8; 64];
        let early = sink.recv_from(&mut buf).ok().map(|(_, a)| a);
        let t0 = Instant::now();
        let gw = self.set_gateway(&router, &ext);
        // The first packet carrying the gateway address ends the wait; packets that reach the
        // server still carrying the internal address are a leak and are counted.
        let mut first = None;
        let mut leaked = 0u32;
        let mut first_leak = None;
        while gw.is_ok() && t0.elapsed() < Duration::from_secs(15) {
            if let Ok((_, SocketAddr::V4(a))) = sink.recv_from(&mut buf) {
                let src = *a.ip();
                if gw.as_ref().ok().copied().flatten() == Some(src) {
                    first = Some(t0.elapsed());
                    break;
                }
                leaked += 1;
                first_leak.get_or_insert((t0.elapsed(), src));
            }
            if ns::check_interrupted().is_err() {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        let _ = sender.join();
        let gw = gw?;
        if let Some((at, src)) = first_leak {
            self.leak_note = Some(format!(
                "{leaked} probe packet(s) reached the external server UNTRANSLATED (source {src}) after gateway set, the first {:.1} ms after the call: the gateway route was usable before SNAT was in place",
                at.as_secs_f64() * 1000.0
            ));
        }
        self.gateway_delay = Some(match (early, first) {
            (Some(a), _) => Err(format!(
                "a probe reached the server before the gateway was set (from {a})"
            )),
            (None, Some(d)) => Ok(d.as_secs_f64()),
            (None, None) => {
                Err("no translated probe reached the server within 15 s of gateway set".into())
            }
        });
        check_interrupted()?;
        let mut t = Topology {
            kind: self.kind,
            client,
            server,
            server_ip: SERVER_IP,
            nat_ip: gw,
            iperf: None,
            prog_pins: Some(self.daemon().bpffs().to_path_buf()),
            note: None,
            _keep: Vec::new(),
        };
        t.check()?;
        let seen = super::traffic::observed_source(&t)?;
        if Some(seen) != gw {
            bail!(
                "the server sees the client as {seen}, not as the router's gateway address {gw:?}: SNAT is not happening"
            );
        }
        t.start_iperf()?;
        self.baseline = read_counters(self.daemon().bpffs()).ok();
        Ok(t)
    }

    /// Records the datapath's counters summed over routers (before the control-plane batches,
    /// these are the bench path's): drops explain shortfalls in the data-path figures, and
    /// `fast_forwarded` shows whether the fast path carried the traffic — it must have grown
    /// during (e)'s rounds and stayed 0 in (d).
    pub fn counters(&self, rep: &mut Report) {
        let label = self.kind.label();
        let c = match read_counters(self.daemon().bpffs()) {
            Ok(c) => c,
            Err(e) => {
                rep.notes
                    .push(format!("{label}: datapath counters not read: {e:#}"));
                return;
            }
        };
        let fast = |c: &std::collections::BTreeMap<String, u64>| {
            c.get(FAST_FORWARDED).copied().unwrap_or(0)
        };
        let during = fast(&c).saturating_sub(self.baseline.as_ref().map(fast).unwrap_or(0));
        let ran = rep.samples.contains_key(self.kind.short());
        if fast_path(self.kind) && ran && during == 0 {
            rep.errors.push(format!(
                "{label}: {FAST_FORWARDED} did not grow while traffic ran ({} in total): the fast path did not engage, so these figures are the slow path's",
                fast(&c)
            ));
        }
        if !fast_path(self.kind) && fast(&c) > 0 {
            rep.errors.push(format!(
                "{label}: {FAST_FORWARDED} = {} although the daemon ran with fast_path = false: the option did not switch the fast path off",
                fast(&c)
            ));
        }
        rep.daemon_counters.insert(
            self.kind.short().to_string(),
            DaemonCounters {
                configuration: label.to_string(),
                fast_path: fast_path(self.kind),
                counters: c,
                fast_forwarded_during_rounds: during,
            },
        );
    }

    /// Copies the gateway-delay measurement into the report.
    pub fn gateway_delay(&self, rep: &mut Report) {
        match &self.gateway_delay {
            Some(Ok(s)) => {
                rep.gateway_to_first_packet_secs = Some(*s);
                rep.gateway_delay_note.clear();
            }
            Some(Err(e)) => rep.gateway_delay_note = e.clone(),
            None => rep.gateway_delay_note = "the eBPF path was not built".into(),
        }
        if let Some(n) = &self.leak_note {
            rep.gateway_delay_note = n.clone();
        }
    }

    /// Reports untranslated probe packets seen while this daemon's gateway was being set (a
    /// leak, whichever daemon the gateway delay is taken from).
    pub fn leaks(&self, rep: &mut Report) {
        if let Some(n) = &self.leak_note {
            rep.notes.push(format!("{}: {n}", self.kind.label()));
        }
    }

    /// `clients` threads at once, each making `per_client` routers (tenant network + subnet,
    /// router, interface, gateway) on a fresh external network: the latency of the gateway set
    /// under that load, and how many calls of any kind failed.
    pub fn parallel_gateways(&mut self, clients: usize, per_client: usize, rep: &mut Report) {
        eprintln!("bench: {clients} clients in parallel, {per_client} routers each");
        let ext = match self.network("pg-ext", true).and_then(|n| {
            self.subnet(&n, "198.51.100.0/24", Some("198.51.100.1"))
                .map(|_| n)
        }) {
            Ok(n) => n,
            Err(e) => {
                rep.parallel_gateway = Some(ParallelGatewayRun {
                    clients,
                    routers: 0,
                    p50_secs: 0.0,
                    p99_secs: 0.0,
                    failures: 0,
                    note: format!("not run: {e:#}"),
                });
                return;
            }
        };
        let start = Instant::now();
        let runs: Vec<(Vec<f64>, Vec<String>, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let api = self.api.clone();
                    let ext = ext.clone();
                    s.spawn(move || parallel_client(&api, &ext, c, per_client))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (
                            Vec::new(),
                            Vec::new(),
                            vec!["client thread panicked".into()],
                        )
                    })
                })
                .collect()
        });
        let total = start.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        let mut errors = Vec::new();
        for (l, routers, e) in runs {
            lat.extend(l);
            self.routers.extend(routers);
            errors.extend(e);
        }
        let routers = lat.len();
        eprintln!(
            "bench:   {routers} gateways set in {total:.2} s, {} failed calls",
            errors.len()
        );
        rep.parallel_gateway = Some(ParallelGatewayRun {
            clients,
            routers,
            p50_secs: percentile(&mut lat, 0.50),
            p99_secs: percentile(&mut lat, 0.99),
            failures: errors.len(),
            note: errors.first().cloned().unwrap_or_default(),
        });
    }
}

/// One client of `parallel_gateways`: returns the gateway-set latencies, the routers made and
/// the calls that failed.
fn parallel_client(
    api: &ApiClient,
    ext: &str,
    c: usize,
    n: usize,
) -> (Vec<f64>, Vec<String>, Vec<String>) {
    let call = |method: &str, path: &str, body: Value| -> Result<Value> {
        let (status, v) = api
            .try_raw(method, &format!("/v2.0{path}"), Some(&body.to_string()))
            .with_context(|| format!("{method} {path}"))?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v)
    };
    // `POST /coll {kind: body}`; returns the new object's id.
    let create = |coll: &str, kind: &str, body: Value| -> Result<String> {
        let v = call("POST", &format!("/{coll}"), json!({ kind: body }))?;
        v[kind]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no {kind}.id in {v}"))
    };
    let (mut lat, mut routers, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let mut one = || -> Result<f64> {
            let name = format!("pg-{c}-{i}");
            let net = create("networks", "network", json!({ "name": name }))?;
            let cidr = format!("10.{}.{i}.0/24", 200 + c);
            let subnet = create(
                "subnets",
                "subnet",
                json!({"network_id": net, "ip_version": 4, "cidr": cidr}),
            )?;
            let router = create("routers", "router", json!({ "name": name }))?;
            routers.push(router.clone());
            call(
                "PUT",
                &format!("/routers/{router}/add_router_interface"),
                json!({"subnet_id": subnet}),
            )?;
            let t = Instant::now();
            call(
                "PUT",
                &format!("/routers/{router}"),
                json!({"router": {"external_gateway_info": {"network_id": ext}}}),
            )?;
            Ok(t.elapsed().as_secs_f64())
        };
        match one() {
            Ok(l) => lat.push(l),
            Err(e) => errors.push(format!("client {c}: {e:#}")),
        }
    }
    (lat, routers, errors)
}

/// Whether the daemon refused its config because it does not know the `[datapath]` section.
fn unknown_datapath_section(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("unknown field `datapath`")
}

/// Starts `bin daemon` with `config` in `host` (directory `xbench-<pid>-<tag>`, recognisable by
/// `ns::sweep_stale` once the run is gone) and waits until its API answers.
fn spawn(bin: &Path, host: &Netns, kind: Kind, config: String) -> Result<Daemon> {
    let dir = std::env::temp_dir().join(format!("xbench-{}-{}", std::process::id(), tag(kind)));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DaemonOptions::config(config);
    let launch = Launch {
        bin: Some(bin.to_path_buf()),
        dir: Some(dir),
        term_on_drop: true,
    };
    Daemon::try_start_with(host, opts, launch).context("starting router-ctl daemon")
}

/// Sums the datapath's per-router counters (ROUTER_STATS, pinned in the daemon's private
/// bpffs) over routers and CPUs.
fn read_counters(bpffs: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    use aya::maps::{Map, MapData, PerCpuArray};
    let pin = bpffs
        .join(format!("v{}", router_common::LAYOUT_VERSION))
        .join(router_common::maps::ROUTER_STATS);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: PerCpuArray<_, router_common::RouterStats> =
        PerCpuArray::try_from(Map::from_map_data(data)?)?;
    let mut sums = router_common::RouterStats::default();
    for item in map.iter() {
        for v in item?.iter() {
            sums.add(v);
        }
    }
    Ok(sums.named().map(|(n, v)| (n.to_string(), v)).collect())
}

/// The `p` quantile (nearest rank) of `v`, sorting it; 0 when empty.
pub(super) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}
