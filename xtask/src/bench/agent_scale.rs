//! Agent mode at scale (issue #16): N routers made and deleted through a real neutron-server
//! (the test kit's `Stack`: neutron-server 29, MariaDB and RabbitMQ in a namespace of their
//! own), realised by `router-ctl agent` on a network node namespace, the way an operator's
//! cloud drives it. Per router the same five calls as the daemon's scale run, timed at the
//! client (neutron-server's own time, RPC casts to the agent included), then the wait until
//! the agent has realised the router (its `qg-` device holds the gateway address in
//! `qrouter-<id>`): the agent's share, split out. With the N routers in place the agent is
//! killed (`kill -9`) and restarted; its full resync (ids, chunked `sync_routers`, segments,
//! then realising) is timed from its own log line, and the router namespaces are checked to
//! be the same ones (adopted, not rebuilt). Opt-in (`--agent-routers N`): the stack takes
//! about 1.5 min to start and neutron-server answers in tens of ms per call.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use kit::{
    netns::try_enter_named,
    neutron::{
        Stack,
        node::{AgentNode, Fabric, RouterNamespaces, SWEEP_INTERVAL_SECS},
    },
};

use super::{
    ns::check_interrupted,
    operator::{self, BUILD_UP_STEPS, Made, NeutronApi, TEAR_DOWN_STEPS},
    report,
    scale::{Laps, Phase, strip_ansi, timed_batch},
};

/// The external network of the agent run: flat on physnet `public`, room for 1000 gateways.
const EXT_CIDR: &str = "10.201.0.0/16";
const EXT_GATEWAY: &str = "10.201.0.1";
/// The network node's name as neutron knows it.
const HOST: &str = "benchnode-1";
/// How long one router may take to appear (or vanish) on the node before the run stops.
const REALISE_LIMIT: Duration = Duration::from_secs(60);

/// The calls and the wait of one router's creation, in order.
const CREATE_STEPS: [&str; 6] = [
    BUILD_UP_STEPS[0],
    BUILD_UP_STEPS[1],
    BUILD_UP_STEPS[2],
    BUILD_UP_STEPS[3],
    BUILD_UP_STEPS[4],
    "agent: gateway set → qg- address in qrouter",
];

/// The calls and the wait of one router's deletion, in order.
const DELETE_STEPS: [&str; 5] = [
    TEAR_DOWN_STEPS[0],
    TEAR_DOWN_STEPS[1],
    TEAR_DOWN_STEPS[2],
    TEAR_DOWN_STEPS[3],
    "agent: router delete → qrouter gone",
];

/// The agent's full resync after `kill -9` with the N routers in place.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentResync {
    /// From the new agent launched to its "full sync done" line.
    pub secs: Option<f64>,
    /// The line's fields: routers, fetch_ms (neutron-server's part), took_ms.
    pub line: String,
    /// Router namespaces that are the same ones after the restart (adopted) / all of them.
    pub adopted: usize,
    pub routers: usize,
    pub note: String,
}

/// The agent's periodic sweeps during the run (its `periodic sweep done` lines): what each
/// pass fetched and neutron-server's time for it, against the full resync's.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentSweeps {
    pub passes: usize,
    /// Routers one pass fetched, at most.
    pub fetched_max: u64,
    /// neutron-server's part of a pass (`fetch_ms`): median and largest.
    pub fetch_ms_p50: u64,
    pub fetch_ms_max: u64,
}

impl AgentSweeps {
    /// From an agent log.
    fn from_log(log: &str) -> Self {
        let field = |line: &str, key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        let mut fetch_ms = Vec::new();
        let mut fetched_max = 0;
        for l in log.lines().filter(|l| l.contains("periodic sweep done")) {
            let l = strip_ansi(l);
            fetched_max = fetched_max.max(field(&l, "fetched").unwrap_or(0));
            fetch_ms.extend(field(&l, "fetch_ms"));
        }
        fetch_ms.sort_unstable();
        Self {
            passes: fetch_ms.len(),
            fetched_max,
            fetch_ms_p50: fetch_ms.get(fetch_ms.len() / 2).copied().unwrap_or(0),
            fetch_ms_max: fetch_ms.last().copied().unwrap_or(0),
        }
    }
}

/// Everything the agent-mode run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentScale {
    pub n: usize,
    pub create: Phase,
    pub resync: Option<AgentResync>,
    pub sweeps: AgentSweeps,
    pub delete: Phase,
    /// The stack's start-up, seconds.
    pub stack_secs: f64,
    pub note: String,
}

/// neutron-server's API, called from inside the stack's namespace (the client's sockets are
/// made there).
struct Neutron {
    url: String,
    http: reqwest::blocking::Client,
}

impl NeutronApi for Neutron {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/v2.0{path}", self.url);
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(m, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {v}");
        }
        Ok(v)
    }
}

impl Neutron {
    fn post(&self, what: &str, body: Value) -> Result<Value> {
        let v = self.call("POST", &format!("/{what}s"), Some(&body))?;
        Ok(v[what].clone())
    }
}

fn id(v: &Value) -> Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no id in {v}"))
}

/// Runs the agent-mode scale run with `n` routers (`bin`: router-ctl), making them for at
/// most `cap`.
pub fn run(bin: &Path, n: usize, cap: Duration) -> AgentScale {
    let mut out = AgentScale {
        n,
        ..Default::default()
    };
    if let Err(e) = run_inner(bin, cap, &mut out) {
        out.note = format!("{e:#}");
    }
    out
}

fn run_inner(bin: &Path, cap: Duration, out: &mut AgentScale) -> Result<()> {
    crate::ensure_neutron()?;
    let t0 = Instant::now();
    let stack = Stack::start()?;
    out.stack_secs = t0.elapsed().as_secs_f64();
    check_interrupted()?;
    // Dropped in reverse order: the router namespaces left by a failure, the node (its agent
    // killed), the fabric, then the stack.
    let fabric = Fabric::new()?;
    // The VXLAN flood list names a compute node that is not there: no VM joins the tenant
    // networks here, the agent only needs somewhere to flood to.
    let mut node = AgentNode::start(&stack, &fabric, bin, HOST, "10.99.0.11", &["10.99.0.100"])?;
    node.wait_registered(&stack, Duration::from_secs(90))?;
    let mut qrouters = RouterNamespaces::default();
    let netns = stack.netns.clone();
    let url = stack.api_url();
    let result = try_enter_named(&netns, || -> Result<()> {
        let api = Neutron {
            url,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .no_proxy()
                .build()?,
        };
        let ext = external(&api)?;
        let (made, create) = create_batch(&api, out.n, &ext, cap, &mut qrouters);
        out.create = create;
        if made.len() == out.n {
            out.resync = Some(resync(&mut node, &made));
        }
        out.delete = delete_batch(&api, &made);
        api.call("DELETE", &format!("/networks/{ext}"), None)
            .map(drop)
    })?;
    if result.is_err() {
        eprintln!("agent log tail:\n{}", tail(&node.log(), 30));
    }
    out.sweeps = AgentSweeps::from_log(&node.log());
    node.kill9();
    result
}

/// The external network and its subnet; returns the network's id.
fn external(api: &Neutron) -> Result<String> {
    let net = api.post(
        "network",
        json!({"network": {
            "name": "bench-public",
            "router:external": true,
            "provider:network_type": "flat",
            "provider:physical_network": "public",
        }}),
    )?;
    let net = id(&net)?;
    api.post(
        "subnet",
        json!({"subnet": {
            "network_id": net,
            "name": "bench-public-v4",
            "ip_version": 4,
            "cidr": EXT_CIDR,
            "gateway_ip": EXT_GATEWAY,
            "enable_dhcp": false,
        }}),
    )?;
    Ok(net)
}

/// Makes one router as an operator would; returns it and its steps' seconds.
/// The router's namespace is added to `qrouters` (removed at the end even if the run fails)
/// as soon as neutron has the router.
fn make_one(
    api: &Neutron,
    i: usize,
    ext: &str,
    qrouters: &mut RouterNamespaces,
) -> Result<(Made, Vec<f64>)> {
    let mut laps = Laps::start();
    // A VXLAN network (the project network type); its VNI from neutron's 1:1000 range.
    let cidr = format!("10.{}.{}.0/24", 100 + i / 250, i % 250);
    let (made, gw) =
        operator::build_up(api, &format!("ab-{i}"), &cidr, ext, &mut laps, &mut |r| {
            qrouters.0.push(r.to_string())
        })?;
    let router = &made.router;
    wait_for(&format!("router {router} realised with {gw}"), || {
        gateway_realised(router, &gw)
    })?;
    laps.lap();
    Ok((made, laps.steps))
}

/// Tears one router down as an operator would; returns its steps' seconds.
fn delete_one(api: &Neutron, m: &Made) -> Result<Vec<f64>> {
    let mut laps = Laps::start();
    operator::tear_down(api, m, &mut laps)?;
    let r = &m.router;
    wait_for(&format!("router {r} removed from the node"), || {
        !Path::new(&format!("/run/netns/qrouter-{r}")).exists()
    })?;
    laps.lap();
    Ok(laps.steps)
}

fn create_batch(
    api: &Neutron,
    n: usize,
    ext: &str,
    cap: Duration,
    qrouters: &mut RouterNamespaces,
) -> (Vec<Made>, Phase) {
    timed_batch(0..n, Some(cap), &CREATE_STEPS, |i| {
        make_one(api, i, ext, qrouters)
    })
}

fn delete_batch(api: &Neutron, made: &[Made]) -> Phase {
    timed_batch(made, None, &DELETE_STEPS, |m| {
        delete_one(api, m).map(|steps| ((), steps))
    })
    .1
}

/// `kill -9` of the agent with the routers in place, then a new agent: its full resync timed
/// from launch to its "full sync done" line; namespaces compared by inode.
fn resync(node: &mut AgentNode, made: &[Made]) -> AgentResync {
    let mut r = AgentResync {
        routers: made.len(),
        ..Default::default()
    };
    let inodes = |m: &Made| {
        std::fs::metadata(format!("/run/netns/qrouter-{}", m.router))
            .map(|md| md.ino())
            .ok()
    };
    let before: BTreeMap<&str, Option<u64>> = made
        .iter()
        .map(|m| (m.router.as_str(), inodes(m)))
        .collect();
    let syncs = |log: &str| log.matches("full sync done").count();
    node.kill9();
    let seen = syncs(&node.log());
    let t = Instant::now();
    if let Err(e) = node.start_agent() {
        r.note = format!("{e:#}");
        return r;
    }
    let limit = Duration::from_secs(60 + made.len() as u64 / 10);
    while t.elapsed() < limit && check_interrupted().is_ok() {
        let log = node.log();
        if syncs(&log) > seen {
            r.secs = Some(t.elapsed().as_secs_f64());
            r.line = log
                .lines()
                .rev()
                .find(|l| l.contains("full sync done"))
                .map(|l| {
                    let l = strip_ansi(l);
                    l.split("full sync done")
                        .nth(1)
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if r.secs.is_none() {
        r.note = format!("no full sync within {limit:?}");
    }
    r.adopted = made
        .iter()
        .filter(|m| before[m.router.as_str()].is_some() && inodes(m) == before[m.router.as_str()])
        .count();
    r
}

/// Whether `qrouter-<router>` holds `gw` on a `qg-` device.
fn gateway_realised(router: &str, gw: &str) -> bool {
    let ns = format!("qrouter-{router}");
    if !Path::new("/run/netns").join(&ns).exists() {
        return false;
    }
    Command::new("ip")
        .args(["-n", &ns, "-o", "-4", "addr", "show"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.contains(" qg-") && l.contains(&format!(" {gw}/")))
        })
}

/// Polls `done` every 10 ms for up to [`REALISE_LIMIT`].
fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + REALISE_LIMIT;
    while Instant::now() < end {
        if done() {
            return Ok(());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{what}: not within {REALISE_LIMIT:?}")
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Appends the agent-mode section of the report.
pub fn markdown(run: &Option<AgentScale>, s: &mut String) {
    use std::fmt::Write as _;
    let Some(r) = run else {
        return;
    };
    let _ = writeln!(
        s,
        "\n## Agent mode at scale: routers through neutron-server (issue #16)\n\nneutron-server 29 (1 API worker, 1 RPC worker; MariaDB, RabbitMQ) in a namespace of its own, started in {:.0} s; `router-ctl agent` as the L3 agent of one network node. Per router: VXLAN network, subnet, router, interface, gateway on one flat external network ({EXT_CIDR}), each call timed at the client (neutron-server's time), then the wait until the agent has the gateway address on the router's `qg-` device (the agent's time: RPC notification, `sync_routers`, realising).\n",
        r.stack_secs
    );
    let ms = |v: f64| format!("{:.1}", v * 1e3);
    let _ = writeln!(
        s,
        "| N | phase | done | total s | p50 ms | p99 ms | first/last tenth p50 ms |\n|---|---|---|---|---|---|---|"
    );
    for (name, p) in [("create", &r.create), ("delete", &r.delete)] {
        let tenth = |t: Option<&super::scale::Tenth>| t.map(|t| ms(t.p50_secs)).unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {name} | {} | {:.1} | {} | {} | {} / {} |",
            r.n,
            p.done,
            p.total_secs,
            ms(p.p50_secs),
            ms(p.p99_secs),
            tenth(p.tenths.first()),
            tenth(p.tenths.last()),
        );
    }
    let _ = writeln!(s, "\n{}", report::STEP_HEADER);
    report::step_rows(s, r.create.steps.iter().chain(&r.delete.steps));
    if let Some(x) = &r.resync {
        let _ = writeln!(
            s,
            "\nAgent `kill -9` and restart with {} routers: full resync done {} after launch ({}); {} of {} router namespaces adopted (same inode){}.",
            x.routers,
            x.secs
                .map(|v| format!("{v:.2} s"))
                .unwrap_or_else(|| "—".into()),
            x.line,
            x.adopted,
            x.routers,
            if x.note.is_empty() {
                String::new()
            } else {
                format!("; {}", x.note)
            }
        );
    }
    let w = &r.sweeps;
    let _ = writeln!(
        s,
        "\nPeriodic sweeps during the run (every {SWEEP_INTERVAL_SECS} s here, beside the notifications): {} passes, at most {} routers fetched by one, neutron-server's part p50 {} ms, largest {} ms (the full resync above fetched every router).",
        w.passes, w.fetched_max, w.fetch_ms_p50, w.fetch_ms_max
    );
    for note in [&r.create.note, &r.delete.note, &r.note] {
        if !note.is_empty() {
            let _ = writeln!(s, "\nNote: {note}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_are_read_from_the_agents_log_lines() {
        let log = "\
2026-12-07T17:00:00.1Z  INFO router_ctl::agent::worker: full sync done routers=200 fetch_ms=6500 took_ms=7300
2026-12-07T17:00:30.1Z  INFO router_ctl::agent::worker: periodic sweep done scheduled=200 new=0 revisited=64 fetched=64 removed=0 left_to_notices=0 fetch_ms=2100 routers_ms=900 networks_ms=1200 took_ms=2300
\x1b[2m2026-12-07T17:01:00.1Z\x1b[0m \x1b[32m INFO\x1b[0m periodic sweep done \x1b[3mscheduled\x1b[0m\x1b[2m=\x1b[0m200 \x1b[3mfetched\x1b[0m\x1b[2m=\x1b[0m70 \x1b[3mfetch_ms\x1b[0m\x1b[2m=\x1b[0m1800
2026-12-07T17:01:30.1Z  INFO router_ctl::agent::worker: periodic sweep done scheduled=200 new=0 revisited=64 fetched=64 removed=0 left_to_notices=1 fetch_ms=2500 routers_ms=900 networks_ms=1600 took_ms=2600
";
        let w = AgentSweeps::from_log(log);
        assert_eq!(w.passes, 3);
        assert_eq!(w.fetched_max, 70);
        assert_eq!((w.fetch_ms_p50, w.fetch_ms_max), (2100, 2500));
    }
}
