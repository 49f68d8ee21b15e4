//! The control plane at scale (issue #16), on the control-plane daemon: for each N, N routers
//! made as an operator would — one API client; per router a tenant network, its subnet, the
//! router, the interface and the gateway, every gateway on one shared external network — then,
//! with the N routers in place: the broadcast/multicast rate on the external network, the
//! drops and the loss of a steady UDP stream through one probe router; memory per router;
//! SIGTERM and `kill -9` restarts timed to the API answering and to the start-up resync having
//! confirmed every router, with the stream running across; finally the N routers deleted
//! (gateway clear, interface remove, router, subnet and network delete). Each N is made,
//! measured and deleted on its own.
//!
//! Timings are per router, reported per tenth of the batch so growth with N shows as a
//! difference between the first and the last tenth of the same run (the 2-core machine is
//! shared, so absolute figures drift; in-run comparisons do not).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kit::daemon::ApiClient;
use serde::Serialize;

use super::{
    daemon::{Env, percentile},
    ns::{self, Netns, check_interrupted},
    operator::{self, BUILD_UP_STEPS, Made, TEAR_DOWN_STEPS},
    probe::{self, Flood, Stream, StreamLoss},
    report::{self, StepStats},
};

/// The shared external network (the probe's), inside the bench's namespaces only.
const EXT_CIDR: &str = "10.200.0.0/16";
const EXT_GATEWAY: &str = "10.200.0.1";
/// Gateways per external network. A Linux bridge takes at most 1023 ports (the kernel's
/// `BR_MAX_PORTS`; the next `master` fails with EXFULL), and every gateway is a port of its
/// external network's bridge: past 1000 routers, the batch opens another external network
/// (10.201.0.0/16, 10.202.0.0/16, …) for each further thousand.
const GATEWAYS_PER_EXTERNAL: usize = 1000;
/// The stream's receiver on the external network (on-link for every router).
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 255, 254);
/// The probe router's tenant network and the stream's sender on it.
const PROBE_CIDR: &str = "10.250.0.0/24";
const PROBE_GATEWAY: &str = "10.250.0.1";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 5);
const STREAM_PORT: u16 = 20400;
/// Datagrams a second of the stream: one a millisecond, so a lost datagram is a lost ms.
const STREAM_PPS: u32 = 1000;

/// Per-router latency over one tenth of a batch.
#[derive(Clone, Debug, Serialize)]
pub struct Tenth {
    pub p50_secs: f64,
    pub p99_secs: f64,
}

/// Making or deleting the N routers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    /// Routers made (or deleted).
    pub done: usize,
    pub total_secs: f64,
    pub p50_secs: f64,
    pub p99_secs: f64,
    pub tenths: Vec<Tenth>,
    /// Per API call.
    pub steps: Vec<StepStats>,
    pub note: String,
}

impl Phase {
    /// Last tenth's p50 and p99 over the first's: 1.0 is flat.
    pub fn growth(&self) -> Option<(f64, f64)> {
        let (f, l) = (self.tenths.first()?, self.tenths.last()?);
        (self.tenths.len() >= 2 && f.p50_secs > 0.0 && f.p99_secs > 0.0)
            .then(|| (l.p50_secs / f.p50_secs, l.p99_secs / f.p99_secs))
    }

    /// Whether neither p50 nor p99 grew by more than 30 % from the first tenth to the last
    /// (the issue asks for a flat p99; p50 alone hid a p99 that doubled).
    pub fn flat(&self) -> bool {
        self.growth()
            .is_some_and(|(p50, p99)| p50 <= 1.3 && p99 <= 1.3)
    }
}

/// One restart with the N routers in place.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restart {
    /// `SIGTERM` or `kill -9`.
    pub how: String,
    /// From the signal to the old process gone.
    pub down_secs: f64,
    /// From the new process launched to its API answering.
    pub api_secs: Option<f64>,
    /// From the new process launched to its start-up resync done (every router confirmed).
    pub confirmed_secs: Option<f64>,
    /// The daemon's own line about the resync (routers, repaired, removed, failed, secs).
    pub resync: String,
    pub stream: Option<StreamLoss>,
    pub note: String,
}

/// The external network with the N routers on it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Chatter {
    /// Broadcast and multicast frames reaching the server's port on the external bridge.
    pub flood: Flood,
    /// Per-CPU backlog drops, host-wide, during the window.
    pub softnet_drops: u64,
    /// Transmit drops of the daemon namespace's links (taps, bridges) during the window.
    pub tx_drops: u64,
    pub stream: Option<StreamLoss>,
    pub note: String,
}

/// Memory the N routers take, per router.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// Kernel memory (Slab + KernelStack + PageTables + Percpu of /proc/meminfo), KiB.
    pub kernel_kib_per_router: f64,
    /// The daemon's resident set, KiB.
    pub daemon_rss_kib_per_router: f64,
    pub daemon_rss_kib: u64,
    pub detail: String,
}

/// The daemon with the N routers realised and no API call: what its reconcile passes cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AtRest {
    pub secs: f64,
    /// CPU time of the daemon (all threads, user and system) per second of the window.
    pub daemon_cpu_ms_per_sec: f64,
    /// Reconcile passes in the window, those of them that were quiet (nothing changed since the
    /// last clean one: no outside walk), and their mean duration, from the daemon's metrics.
    pub passes: Option<u64>,
    pub quiet_passes: Option<u64>,
    pub pass_ms: Option<f64>,
    /// What the passes of the window repaired, removed and could not converge (items, from the
    /// daemon's metrics): a pass that changes anything makes the next one walk again.
    pub changed: Option<(u64, u64, u64)>,
}

/// The daemon's metrics endpoint (its default address, in its host namespace).
const METRICS_BASE: &str = "http://127.0.0.1:9180";

/// The reconcile figures of the daemon's metrics at one moment.
#[derive(Clone, Copy, Debug)]
struct PassCounters {
    passes: f64,
    quiet: f64,
    secs: f64,
    repaired: f64,
    removed: f64,
    failed: f64,
}

/// The reconcile figures of the daemon's metrics (None: no answer or no pass figures).
fn reconcile_counters(metrics: &ApiClient) -> Option<PassCounters> {
    let (status, body) = metrics.get("/metrics");
    let text = body.as_str().filter(|_| status == 200)?;
    // One unlabelled sample each: `name value`.
    let sample = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(PassCounters {
        passes: sample("router_ctl_reconcile_duration_seconds_count")?,
        quiet: sample("router_ctl_reconcile_quiet_passes_total").unwrap_or(0.0),
        secs: sample("router_ctl_reconcile_duration_seconds_sum")?,
        repaired: sample("router_ctl_reconcile_repaired_total").unwrap_or(0.0),
        removed: sample("router_ctl_reconcile_removed_total").unwrap_or(0.0),
        failed: sample("router_ctl_reconcile_failed_total").unwrap_or(0.0),
    })
}

/// How long the daemon is watched at rest: three reconcile passes (one every 5 s).
const AT_REST: Duration = Duration::from_secs(15);

/// Everything one N measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleRun {
    pub n: usize,
    pub create: Phase,
    pub chatter: Option<Chatter>,
    /// The same measured before the N routers were made (the probe router alone).
    pub chatter_before: Option<Chatter>,
    pub memory: Option<Memory>,
    pub at_rest: Option<AtRest>,
    pub restarts: Vec<Restart>,
    pub delete: Phase,
    pub note: String,
}

/// The probe path: the shared external network, the stream's server on it, one router with
/// the stream's client behind it.
pub struct Probe {
    ext: String,
    client: Netns,
    server: Netns,
    router: String,
}

/// Raises this process's open-file limit to its hard limit: the daemon (and its metadata
/// proxies, one listening socket per router) inherits it. The only limit the bench raises.
fn raise_nofile() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    format!(
        "RLIMIT_NOFILE of the bench and its daemon raised to {}",
        lim.rlim_cur
    )
}

impl Env {
    /// Builds the probe path (see `Probe`).
    pub fn probe(&mut self) -> Result<Probe> {
        let ext = self.network("scale-ext", true)?;
        self.subnet(&ext, EXT_CIDR, Some(EXT_GATEWAY))?;
        let net = self.network("scale-probe", false)?;
        let subnet = self.subnet(&net, PROBE_CIDR, Some(PROBE_GATEWAY))?;
        let router = self.router("scale-probe")?;
        self.add_interface(&router, &subnet)?;
        self.set_gateway(&router, &ext)?;
        let client = ns::new("scc")?;
        let server = ns::new("scs")?;
        self.plug(&net, CLIENT_IP, &client)?;
        self.plug(&ext, SERVER_IP, &server)?;
        let p = Probe {
            ext,
            client,
            server,
            router,
        };
        // The path carries the stream before anything is measured on it (a new gateway's first
        // ARP may need its one-second retransmission).
        let s = p.stream()?;
        ns::sleep(Duration::from_secs(3))?;
        let loss = s.finish()?;
        if loss.received == 0 {
            bail!("the probe stream does not get through ({loss:?})");
        }
        Ok(p)
    }

    /// Every N of `counts`, made, measured and deleted in turn.
    pub fn scale(&mut self, counts: &[usize], cap: Duration, chatter_secs: f64) -> Vec<ScaleRun> {
        let limits = raise_nofile();
        let probe = match self.probe() {
            Ok(p) => p,
            Err(e) => {
                return vec![ScaleRun {
                    note: format!("probe path not built: {e:#}"),
                    ..Default::default()
                }];
            }
        };
        let mut runs = Vec::new();
        for &n in counts.iter().filter(|n| **n > 0) {
            if check_interrupted().is_err() {
                break;
            }
            let mut run = self.scale_run(&probe, n, cap, chatter_secs);
            let limits = if runs.is_empty() { limits.as_str() } else { "" };
            run.note = [limits, run.note.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            runs.push(run);
        }
        runs
    }

    fn scale_run(&mut self, probe: &Probe, n: usize, cap: Duration, secs: f64) -> ScaleRun {
        eprintln!(
            "bench: scale: {n} routers, {} external network(s)",
            n.div_ceil(GATEWAYS_PER_EXTERNAL).max(1)
        );
        let mut run = ScaleRun {
            n,
            ..Default::default()
        };
        run.chatter_before = Some(self.chatter(probe, secs));
        let before = self.memory_now();
        let mut exts = vec![probe.ext.clone()];
        let (made, create) = self.create_batch(n, &mut exts, cap);
        eprintln!(
            "bench:   created {}/{n} in {:.1} s (p50 {:.1} ms, p99 {:.1} ms) {}",
            create.done,
            create.total_secs,
            create.p50_secs * 1e3,
            create.p99_secs * 1e3,
            create.note
        );
        run.create = create;
        if !made.is_empty() && check_interrupted().is_ok() {
            // Settle: announcements of the last routers and the first reconcile pass.
            let _ = ns::sleep(Duration::from_secs(2));
            run.memory = Some(self.memory_after(before, made.len()));
            run.at_rest = self.at_rest();
            if let Some(r) = &run.at_rest {
                eprintln!(
                    "bench:   at rest: daemon CPU {:.1} ms/s over {:.0} s; reconcile passes {:?} (quiet {:?}), {:?} ms each; repaired / removed / failed {:?}",
                    r.daemon_cpu_ms_per_sec, r.secs, r.passes, r.quiet_passes, r.pass_ms, r.changed
                );
                let walked = r.passes.zip(r.quiet_passes).is_some_and(|(n, q)| n > q);
                if (walked || r.changed.is_some_and(|c| c != (0, 0, 0)))
                    && let Some(l) = self.last_pass_line()
                {
                    eprintln!("bench:   daemon: {l}");
                }
            }
            let c = self.chatter(probe, secs);
            eprintln!(
                "bench:   chatter: {:.1} frames/s, {} backlog drops, stream lost {:?}",
                c.flood.per_sec(),
                c.softnet_drops,
                c.stream.as_ref().map(|s| s.lost)
            );
            run.chatter = Some(c);
            for kill9 in [false, true] {
                if check_interrupted().is_err() {
                    break;
                }
                let r = self.restart(probe, kill9);
                eprintln!(
                    "bench:   restart ({}): API {:?} s, confirmed {:?} s, stream lost {:?} {}",
                    r.how,
                    r.api_secs,
                    r.confirmed_secs,
                    r.stream.as_ref().map(|s| s.lost),
                    r.note
                );
                run.restarts.push(r);
            }
        }
        run.delete = self.delete_batch(made);
        for ext in exts.iter().skip(1) {
            if let Err(e) = self.call("DELETE", &format!("/networks/{ext}"), None) {
                run.note = format!("external network {ext} not deleted: {e:#}");
            }
        }
        eprintln!(
            "bench:   deleted {} in {:.1} s (p50 {:.1} ms, p99 {:.1} ms) {}",
            run.delete.done,
            run.delete.total_secs,
            run.delete.p50_secs * 1e3,
            run.delete.p99_secs * 1e3,
            run.delete.note
        );
        run
    }

    /// Router `i` of a batch (tenant network 10.<i/250>.<i%250>.0/24): the seconds each of its
    /// five calls took, in `BUILD_UP_STEPS` order.
    fn make_one(&mut self, i: usize, ext: &str) -> Result<(Made, Vec<f64>)> {
        let mut laps = Laps::start();
        let cidr = format!("10.{}.{}.0/24", i / 250, i % 250);
        let mut router = None;
        let made = operator::build_up(
            &*self,
            &format!("sc-{i}"),
            &cidr,
            ext,
            &mut laps,
            &mut |r| router = Some(r.to_string()),
        );
        if let Some(r) = router {
            self.note_router(&r)?;
        }
        Ok((made?.0, laps.steps))
    }

    /// Deletes one router of a batch the way an operator tears it down.
    fn delete_one(&mut self, m: &Made) -> Result<Vec<f64>> {
        let mut laps = Laps::start();
        operator::tear_down(self, m, &mut laps)?;
        self.forget_router(&m.router);
        Ok(laps.steps)
    }

    /// Another external network for the next [`GATEWAYS_PER_EXTERNAL`] gateways of a batch:
    /// `10.<200 + k>.0.0/16` for the k-th.
    fn next_external(&mut self, k: usize) -> Result<String> {
        let ext = self.network(&format!("scale-ext-{k}"), true)?;
        let cidr = format!("10.{}.0.0/16", 200 + k);
        let gw = format!("10.{}.0.1", 200 + k);
        self.subnet(&ext, &cidr, Some(&gw))?;
        Ok(ext)
    }

    fn create_batch(
        &mut self,
        n: usize,
        exts: &mut Vec<String>,
        cap: Duration,
    ) -> (Vec<Made>, Phase) {
        timed_batch(0..n, Some(cap), &BUILD_UP_STEPS, |i| {
            let k = i / GATEWAYS_PER_EXTERNAL;
            if k == exts.len() {
                // Not timed (the router's time is its calls'): an external network per
                // thousand routers is set-up, not routers.
                let e = self
                    .next_external(k)
                    .with_context(|| format!("external network {k} not made"))?;
                exts.push(e);
            }
            self.make_one(i, &exts[k])
        })
    }

    fn delete_batch(&mut self, made: Vec<Made>) -> Phase {
        timed_batch(made.iter(), None, &TEAR_DOWN_STEPS, |m| {
            self.delete_one(m).map(|steps| ((), steps))
        })
        .1
    }

    /// Broadcast/multicast rate at the server's port, drops and the stream's loss over `secs`.
    fn chatter(&self, probe: &Probe, secs: f64) -> Chatter {
        let mut c = Chatter::default();
        let stream = probe.stream();
        let soft = probe::softnet_drops();
        let tx = probe::tx_drops(self.host()).unwrap_or(0);
        match probe::count_flood(&probe.server, secs) {
            Ok(f) => c.flood = f,
            Err(e) => c.note = format!("flood not counted: {e:#}"),
        }
        c.softnet_drops = probe::softnet_drops().saturating_sub(soft);
        c.tx_drops = probe::tx_drops(self.host()).unwrap_or(0).saturating_sub(tx);
        match stream.and_then(Stream::finish) {
            Ok(s) => c.stream = Some(s),
            Err(e) => c.note = format!("stream: {e:#}"),
        }
        c
    }

    /// Stops the daemon (`kill9`: SIGKILL, else SIGTERM) with the stream running, starts it
    /// again and times its API answering and its start-up resync.
    fn restart(&mut self, probe: &Probe, kill9: bool) -> Restart {
        let mut r = Restart {
            how: if kill9 { "kill -9" } else { "SIGTERM" }.into(),
            ..Default::default()
        };
        let stream = match probe.stream() {
            Ok(s) => s,
            Err(e) => {
                r.note = format!("stream not started: {e:#}");
                return r;
            }
        };
        let _ = ns::sleep(Duration::from_millis(500));
        let d = self.daemon_mut();
        let resyncs = d.resyncs();
        let t = Instant::now();
        if kill9 {
            d.kill9();
        } else {
            let st = d.stop();
            if !st.success() {
                r.note = format!("exit after SIGTERM: {st}");
            }
        }
        r.down_secs = t.elapsed().as_secs_f64();
        let t0 = Instant::now();
        d.restart_unready();
        let api = self.api_client();
        let deadline = t0 + Duration::from_secs(120);
        let path = format!("/v2.0/routers/{}", probe.router);
        while Instant::now() < deadline && check_interrupted().is_ok() {
            if r.api_secs.is_none() && api.try_raw("GET", &path, None).is_ok_and(|(s, _)| s == 200)
            {
                r.api_secs = Some(t0.elapsed().as_secs_f64());
            }
            if r.confirmed_secs.is_none() && self.daemon().resyncs() > resyncs {
                r.confirmed_secs = Some(t0.elapsed().as_secs_f64());
            }
            if r.api_secs.is_some() && r.confirmed_secs.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r.resync = self
            .daemon()
            .log()
            .lines()
            .rev()
            .find(|l| l.contains(kit::daemon::RESYNC_DONE))
            .map(|l| {
                l.split_once(kit::daemon::RESYNC_DONE)
                    .map_or(l, |(_, rest)| rest)
                    .trim()
                    .to_string()
            })
            .map(|l| strip_ansi(&l))
            .unwrap_or_default();
        let _ = ns::sleep(Duration::from_secs(1));
        match stream.finish() {
            Ok(s) => r.stream = Some(s),
            Err(e) => r.note = format!("stream: {e:#}"),
        }
        r
    }

    fn memory_now(&self) -> (u64, u64) {
        let rss = self.daemon().pid().map_or(0, daemon_rss_kib);
        (kernel_kib(), rss)
    }

    /// The daemon's last log line about a reconcile pass that changed something, failed, or
    /// walked (that one with `RUST_LOG=info,router_ctl::realise::reconcile=debug`, saying what
    /// moved), without colours and cut to 600 characters.
    fn last_pass_line(&self) -> Option<String> {
        let log = self.daemon().log();
        let line = log.lines().rev().find(|l| {
            l.contains("reconciled")
                || l.contains("could not converge")
                || l.contains("reconcile pass walks")
        })?;
        Some(strip_ansi(line).chars().take(600).collect())
    }

    /// The daemon's CPU time over `AT_REST` with nothing asked of it (None: no daemon).
    fn at_rest(&self) -> Option<AtRest> {
        let pid = self.daemon().pid()?;
        let metrics = ApiClient::new(self.host(), METRICS_BASE, None);
        let m0 = reconcile_counters(&metrics);
        let (t0, c0) = (Instant::now(), daemon_cpu_secs(pid)?);
        let _ = ns::sleep(AT_REST);
        let (secs, c1) = (t0.elapsed().as_secs_f64(), daemon_cpu_secs(pid)?);
        let m1 = reconcile_counters(&metrics);
        let window = m0.zip(m1);
        let passes = window.map(|(a, b)| {
            let n = b.passes - a.passes;
            (
                n as u64,
                (b.quiet - a.quiet) as u64,
                (n > 0.0).then(|| (b.secs - a.secs) * 1e3 / n),
            )
        });
        Some(AtRest {
            secs,
            daemon_cpu_ms_per_sec: (c1 - c0) * 1e3 / secs,
            passes: passes.map(|p| p.0),
            quiet_passes: passes.map(|p| p.1),
            pass_ms: passes.and_then(|p| p.2),
            changed: window.map(|(a, b)| {
                (
                    (b.repaired - a.repaired) as u64,
                    (b.removed - a.removed) as u64,
                    (b.failed - a.failed) as u64,
                )
            }),
        })
    }

    fn memory_after(&self, before: (u64, u64), n: usize) -> Memory {
        let (kernel, rss) = self.memory_now();
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n.max(1) as f64;
        Memory {
            kernel_kib_per_router: per(kernel, before.0),
            daemon_rss_kib_per_router: per(rss, before.1),
            daemon_rss_kib: rss,
            detail: format!(
                "kernel {} → {} KiB, daemon RSS {} → {rss} KiB over {n} routers (each: a namespace, two veth pairs, its lo; BPF maps are sized at load and do not grow per router)",
                before.0, kernel, before.1
            ),
        }
    }
}

impl Probe {
    fn stream(&self) -> Result<Stream> {
        Stream::start(
            &self.client,
            &self.server,
            SocketAddrV4::new(SERVER_IP, STREAM_PORT),
            STREAM_PPS,
        )
    }
}

/// Per-router latencies of a batch and of each of its steps (API calls, waits).
#[derive(Default)]
pub(super) struct Timed {
    lat: Vec<f64>,
    steps: Vec<Vec<f64>>,
}

impl Timed {
    pub(super) fn push(&mut self, secs: f64, steps: &[f64]) {
        self.lat.push(secs);
        self.steps
            .resize_with(steps.len().max(self.steps.len()), Vec::new);
        for (acc, v) in self.steps.iter_mut().zip(steps) {
            acc.push(*v);
        }
    }

    pub(super) fn phase(mut self, total: Duration, names: &[&str], note: String) -> Phase {
        self.steps.resize_with(names.len(), Vec::new);
        let n = self.lat.len();
        let tenths = by_tenth(&self.lat);
        let steps = names
            .iter()
            .zip(self.steps.iter_mut())
            .map(|(name, v)| {
                // Tenths before the percentiles: those sort `v` in place.
                let tenths = by_tenth(v);
                StepStats {
                    call: (*name).to_string(),
                    first_tenth_p50_secs: tenths.first().map(|t| t.p50_secs),
                    last_tenth_p50_secs: tenths.last().map(|t| t.p50_secs),
                    first_tenth_p99_secs: tenths.first().map(|t| t.p99_secs),
                    last_tenth_p99_secs: tenths.last().map(|t| t.p99_secs),
                    mean_secs: v.iter().sum::<f64>() / v.len().max(1) as f64,
                    p50_secs: percentile(v, 0.50),
                    p99_secs: percentile(v, 0.99),
                }
            })
            .collect();
        Phase {
            done: n,
            total_secs: total.as_secs_f64(),
            p50_secs: percentile(&mut self.lat, 0.50),
            p99_secs: percentile(&mut self.lat, 0.99),
            tenths,
            steps,
            note,
        }
    }
}

/// p50/p99 of each tenth of `lat`, in order; none below ten values.
fn by_tenth(lat: &[f64]) -> Vec<Tenth> {
    if lat.len() < 10 {
        return Vec::new();
    }
    lat.chunks(lat.len().div_ceil(10))
        .map(|c| {
            let mut c = c.to_vec();
            Tenth {
                p50_secs: percentile(&mut c, 0.50),
                p99_secs: percentile(&mut c, 0.99),
            }
        })
        .collect()
}

/// A stopwatch over the steps of one router's creation or deletion: each `lap` records the
/// seconds since the previous one.
pub(super) struct Laps {
    t: Instant,
    pub steps: Vec<f64>,
}

impl Laps {
    pub fn start() -> Self {
        Self {
            t: Instant::now(),
            steps: Vec::new(),
        }
    }

    pub fn lap(&mut self) {
        self.steps.push(self.t.elapsed().as_secs_f64());
        self.t = Instant::now();
    }
}

/// Runs `one` over `items` in order until all are done, `cap` has passed, the run is
/// interrupted or one fails (said in the phase's note); each item's latency is the sum of the
/// steps `one` timed. Returns what `one` made and the phase.
pub(super) fn timed_batch<I, R, S: AsRef<[f64]>>(
    items: impl IntoIterator<Item = I>,
    cap: Option<Duration>,
    names: &[&str],
    mut one: impl FnMut(I) -> Result<(R, S)>,
) -> (Vec<R>, Phase) {
    let start = Instant::now();
    let mut made = Vec::new();
    let mut timed = Timed::default();
    let mut note = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(cap) = cap.filter(|c| start.elapsed() > *c) {
            note = format!("stopped at the {} s cap", cap.as_secs());
            break;
        }
        if check_interrupted().is_err() {
            note = "interrupted".into();
            break;
        }
        match one(item) {
            Ok((r, steps)) => {
                let steps = steps.as_ref();
                timed.push(steps.iter().sum(), steps);
                made.push(r);
            }
            Err(e) => {
                note = format!("failed after {i} routers: {e:#}");
                break;
            }
        }
    }
    (made, timed.phase(start.elapsed(), names, note))
}

/// `line` without terminal colour sequences (the daemon's log colours its fields).
pub(super) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ending with a letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Kernel memory now: Slab + KernelStack + PageTables + Percpu of /proc/meminfo, KiB.
fn kernel_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .filter(|l| {
            ["Slab:", "KernelStack:", "PageTables:", "Percpu:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU time process `pid` has used so far, all threads, user and system (`/proc/<pid>/stat`
/// fields 14 and 15, in clock ticks), seconds.
fn daemon_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// VmRSS of process `pid`, KiB.
fn daemon_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Restart targets of the issue: confirmed within 5 s at 1000 routers, 30 s at 10 000.
fn confirm_target(n: usize) -> f64 {
    if n <= 1000 { 5.0 } else { 30.0 }
}

/// Create targets: 15 s for 1000 routers, 3 min for 10 000 (15 ms and 18 ms a router).
fn create_target(n: usize) -> f64 {
    if n <= 1000 {
        0.015 * n as f64
    } else {
        0.018 * n as f64
    }
}

/// Appends the scale section of the report.
pub fn markdown(runs: &[ScaleRun], s: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(s, "\n## Control plane at scale (issue #16)\n");
    if runs.is_empty() {
        let _ = writeln!(s, "Not run (--routers 0).");
        return;
    }
    let _ = writeln!(
        s,
        "One API client; per router a tenant network, subnet, router, interface and gateway, every gateway on one external network ({EXT_CIDR}; past {GATEWAYS_PER_EXTERNAL} routers one more external network per thousand, as a Linux bridge takes at most 1023 ports); a UDP stream of {STREAM_PPS} datagrams/s runs through one more router. Per tenth: p50/p99 ms per router over that tenth of the batch, in order (growth with N shows as first vs last tenth of the same run).\n"
    );
    let ms = |v: f64| format!("{:.1}", v * 1e3);
    let tenths = |p: &Phase| {
        p.tenths
            .iter()
            .map(|t| format!("{}/{}", ms(t.p50_secs), ms(t.p99_secs)))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let _ = writeln!(
        s,
        "| N | phase | done | total s | p50 ms | p99 ms | per tenth p50/p99 ms | last/first tenth p50 / p99 | verdict |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs.iter().filter(|r| r.n > 0) {
        let create_ok = r.create.done == r.n && r.create.total_secs <= create_target(r.n);
        let v = format!(
            "{} (≤ {:.0} s), {}",
            if create_ok { "PASS" } else { "FAIL" },
            create_target(r.n),
            if r.create.flat() { "flat" } else { "grows" }
        );
        let g = |p: &Phase| {
            p.growth()
                .map(|(p50, p99)| format!("{p50:.2}× / {p99:.2}×"))
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "| {} | create | {} | {:.1} | {} | {} | {} | {} | {v} |",
            r.n,
            r.create.done,
            r.create.total_secs,
            ms(r.create.p50_secs),
            ms(r.create.p99_secs),
            tenths(&r.create),
            g(&r.create)
        );
        let same = r.create.p50_secs > 0.0 && r.delete.p50_secs <= 1.3 * r.create.p50_secs;
        let _ = writeln!(
            s,
            "| {} | delete | {} | {:.1} | {} | {} | {} | {} | {} ({:.2}× create p50), {} |",
            r.n,
            r.delete.done,
            r.delete.total_secs,
            ms(r.delete.p50_secs),
            ms(r.delete.p99_secs),
            tenths(&r.delete),
            g(&r.delete),
            if same && r.delete.done == r.create.done {
                "PASS"
            } else {
                "FAIL"
            },
            r.delete.p50_secs / r.create.p50_secs.max(1e-9),
            if r.delete.flat() { "flat" } else { "grows" }
        );
    }
    let _ = writeln!(
        s,
        "\nPer API call, largest N made in full:\n\n{}",
        report::STEP_HEADER
    );
    // A batch stopped early (time cap, error) has too few calls of its later steps to stand
    // for its N; the largest complete one does.
    let complete = runs
        .iter()
        .filter(|r| r.n > 0 && r.create.done == r.n)
        .max_by_key(|r| r.n);
    if let Some(r) = complete.or_else(|| runs.iter().max_by_key(|r| r.n)) {
        report::step_rows(s, r.create.steps.iter().chain(&r.delete.steps));
    }
    restarts_markdown(runs, s);
    chatter_markdown(runs, s);
    let _ = writeln!(
        s,
        "\nMemory per router:\n\n| N | kernel KiB/router | daemon RSS KiB/router | daemon RSS MiB | detail |\n|---|---|---|---|---|"
    );
    for r in runs.iter().filter(|r| r.n > 0) {
        if let Some(m) = &r.memory {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {:.1} | {} |",
                r.n,
                m.kernel_kib_per_router,
                m.daemon_rss_kib_per_router,
                m.daemon_rss_kib as f64 / 1024.0,
                m.detail
            );
        }
    }
    if runs.iter().any(|r| r.at_rest.is_some()) {
        let _ = writeln!(
            s,
            "\nAt rest (the N routers realised, no API call; reconcile passes every 5 s; quiet: nothing changed since the last clean pass, so no outside walk):\n\n| N | daemon CPU ms/s | window s | passes (quiet) | ms a pass | repaired / removed / failed |\n|---|---|---|---|---|---|"
        );
        for r in runs {
            if let Some(a) = &r.at_rest {
                let opt = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {:.0} | {} ({}) | {} | {} |",
                    r.n,
                    a.daemon_cpu_ms_per_sec,
                    a.secs,
                    opt(a.passes),
                    opt(a.quiet_passes),
                    a.pass_ms.map_or("—".to_string(), |v| format!("{v:.1}")),
                    a.changed
                        .map_or("—".to_string(), |(r, d, f)| format!("{r} / {d} / {f}")),
                );
            }
        }
    }
    for r in runs {
        if !r.note.is_empty() {
            let _ = writeln!(s, "\nN = {}: {}", r.n, r.note);
        }
    }
}

impl Env {
    /// A client of the running daemon (after a restart too: same port and token).
    fn api_client(&self) -> kit::daemon::ApiClient {
        self.daemon().client()
    }
}

/// What a stream lost, as a table cell.
fn loss(l: &Option<StreamLoss>) -> String {
    match l {
        Some(l) => format!(
            "{} of {} (longest gap {:.0} ms)",
            l.lost, l.sent, l.longest_gap_ms
        ),
        None => "—".into(),
    }
}

/// `note` after `sep`, or nothing.
fn suffix(sep: &str, note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!("{sep}{note}")
    }
}

/// The restart rows of the scale section.
fn restarts_markdown(runs: &[ScaleRun], s: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\nRestarts with the N routers in place (the stream runs across; API: launch → first answer; confirmed: launch → start-up resync done):\n\n| N | how | down s | API s | confirmed s | daemon's resync line | stream lost | verdict |\n|---|---|---|---|---|---|---|---|"
    );
    for r in runs.iter().filter(|r| r.n > 0) {
        for x in &r.restarts {
            let ok = x.api_secs.is_some_and(|a| a <= 2.0)
                && x.confirmed_secs.is_some_and(|c| c <= confirm_target(r.n))
                && x.stream.as_ref().is_some_and(|l| l.lost == 0);
            let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("—".into());
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} (API ≤ 2 s, confirmed ≤ {:.0} s, 0 lost){} |",
                r.n,
                x.how,
                x.down_secs,
                f(x.api_secs),
                f(x.confirmed_secs),
                x.resync,
                loss(&x.stream),
                if ok { "PASS" } else { "FAIL" },
                confirm_target(r.n),
                suffix("; ", &x.note)
            );
        }
    }
}

/// The chatter rows of the scale section.
fn chatter_markdown(runs: &[ScaleRun], s: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\nChatter on the external network (frames the server's port receives; drops: the host's per-CPU backlogs, host-wide, and transmit drops of the daemon namespace's links):\n\n| N | when | bcast+mcast/s | ARP | IPv6 | other | backlog drops | link tx drops | stream lost | verdict |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs.iter().filter(|r| r.n > 0) {
        for (when, c) in [("before", &r.chatter_before), ("with N", &r.chatter)] {
            let Some(c) = c else { continue };
            let ok = c.stream.as_ref().is_some_and(|l| l.lost == 0);
            let _ = writeln!(
                s,
                "| {} | {when} | {:.1} | {} ({}) | {} | {} | {} | {} | {} | {}{} |",
                r.n,
                c.flood.per_sec(),
                c.flood.arp,
                c.flood.arp_gratuitous,
                c.flood.ipv6,
                c.flood.other,
                c.softnet_drops,
                c.tx_drops,
                loss(&c.stream),
                if ok { "PASS" } else { "FAIL" },
                suffix(" — ", &c.note)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_flat_only_if_p50_and_p99_both_stay() {
        let phase = |first: (f64, f64), last: (f64, f64)| Phase {
            tenths: vec![
                Tenth {
                    p50_secs: first.0,
                    p99_secs: first.1,
                },
                Tenth {
                    p50_secs: last.0,
                    p99_secs: last.1,
                },
            ],
            ..Phase::default()
        };
        assert!(phase((0.010, 0.020), (0.012, 0.025)).flat());
        assert!(
            !phase((0.010, 0.020), (0.012, 0.050)).flat(),
            "p99 grew 2.5×"
        );
        assert!(
            !phase((0.010, 0.020), (0.014, 0.020)).flat(),
            "p50 grew 1.4×"
        );
        assert!(!Phase::default().flat(), "no tenths, no verdict of flat");
    }

    #[test]
    fn cpu_time_of_a_process_grows_with_its_work() {
        // Work until the process's CPU time has moved by a few clock ticks, or 10 s have
        // passed: no assumption about how much CPU a busy CI machine grants per second.
        let pid = std::process::id();
        let before = daemon_cpu_secs(pid).expect("own /proc/<pid>/stat");
        let t = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && t.elapsed() < Duration::from_secs(10) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = daemon_cpu_secs(pid).expect("own /proc/<pid>/stat");
        }
        assert!(
            after - before >= 0.05,
            "{before} → {after} s after {:?} of work",
            t.elapsed()
        );
    }
}
