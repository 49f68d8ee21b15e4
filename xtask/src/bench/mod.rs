//! `cargo xtask bench`: plain forwarding, iptables SNAT (Neutron's rules), nftables masquerade
//! with a flowtable, this project's eBPF SNAT (d) and the same with its fast path (e) (each
//! through its own daemon's API), side by side, in
//! namespaces the bench creates and removes; writes `target/bench/report.{md,json}` and
//! `ratios.svg`. The bench only reports: no timing is asserted anywhere.
//!
//! Module map: `ns` (namespaces, signals), `topo` (the measured path per configuration),
//! `traffic` (generators), `testrun` (BPF_PROG_TEST_RUN cost, memory per session), `daemon`
//! (configurations (d) and (e), one daemon each, through their API), `scale` (the control
//! plane at N routers: create/delete per tenth, chatter, restarts, memory) with `probe` (its
//! UDP sequence stream, flood counter and drop counters), `report` (statistics and output).

mod agent_scale;
mod daemon;
mod machine;
mod ns;
mod operator;
mod probe;
mod profile;
mod report;
mod scale;
mod testrun;
mod topo;
mod traffic;

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use report::{Metric, Report};
use topo::{Kind, Topology};

/// Options of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Smoke run: one round, shortest durations, the scale run at 10 routers.
    #[arg(long)]
    pub quick: bool,
    /// Rounds; each round runs every configuration once, in rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds per TCP throughput run (iperf3 -t).
    #[arg(long, default_value_t = 3)]
    pub tcp_secs: u64,
    /// Seconds per packet-rate run (UDP pps, new flows, connect-request-close).
    #[arg(long, default_value_t = 2.0)]
    pub rate_secs: f64,
    /// Configurations to run: plain (a), iptables (b), nftables (c), ebpf (d: this project's
    /// eBPF SNAT, daemon with `[datapath] fast_path = false`), fast (e: the same with the fast
    /// path on, the product's default). (d) and (e) each get their own daemon; the control-plane
    /// timing runs on (e)'s when it is selected, else on (d)'s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,iptables,nftables,ebpf,fast"
    )]
    pub configs: Vec<String>,
    /// Data-path metrics to measure (tcp1, tcp8, udp, flows, crr).
    #[arg(long, value_delimiter = ',', default_value = "tcp1,tcp8,udp,flows,crr")]
    pub metrics: Vec<String>,
    /// Record `perf record -a -g` and the BPF programs' run time around each UDP pps and
    /// new-flow run, into target/bench/profile/ (installs perf and bpftool).
    #[arg(long)]
    pub profile: bool,
    /// Router counts of the scale runs (0 to skip): each N made, measured (chatter, restarts,
    /// memory) and deleted on its own. `--routers 10000` is opt-in (about ten minutes here).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub routers: Vec<usize>,
    /// Upper bound in seconds on making each batch; what was reached is reported.
    #[arg(long, default_value_t = 600)]
    pub routers_time_cap: u64,
    /// Seconds of each chatter window (stream loss, broadcast rate and drops).
    #[arg(long, default_value_t = 10.0)]
    pub chatter_secs: f64,
    /// Routers of the agent-mode scale run through a real neutron-server (0 to skip; opt-in:
    /// the neutron stack starts in about 1.5 min; at most 990, neutron's VXLAN range).
    #[arg(long, default_value_t = 0)]
    pub agent_routers: usize,
}

/// Clients making routers at once for the gateway-set latency under load, and routers each.
const PARALLEL_CLIENTS: usize = 8;
const PARALLEL_ROUTERS_EACH: usize = 12;

/// Commands the bench runs (and the packages providing them).
const BENCH_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("timeout", "coreutils"),
    ("iperf3", "iperf3"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
];

fn parse_kind(s: &str) -> Result<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| k.short() == s)
        .with_context(|| {
            format!("unknown configuration {s:?} (plain, iptables, nftables, ebpf, fast)")
        })
}

fn parse_metric(s: &str) -> Result<Metric> {
    // The per-CPU figures come with the udp and flows runs.
    Metric::ALL[..5]
        .iter()
        .copied()
        .find(|m| m.short() == s)
        .with_context(|| format!("unknown metric {s:?} (tcp1, tcp8, udp, flows, crr)"))
}

/// Durations of one run, after `--quick`.
struct Plan {
    rounds: u32,
    tcp_secs: u64,
    rate_secs: f64,
    kinds: Vec<Kind>,
    metrics: Vec<Metric>,
    routers: Vec<usize>,
    routers_cap: Duration,
    agent_routers: usize,
    chatter_secs: f64,
    /// `--profile`: where profiles go.
    profiler: Option<profile::Profiler>,
}

/// Measures metric `m` (with its per-CPU-second companion for the packet rates) on `t`,
/// recording the samples or the failure. `flow_run` numbers new-flow runs (a fresh source
/// address each).
fn measure(
    t: &Topology,
    plan: &Plan,
    m: Metric,
    round: u32,
    flow_run: u32,
    rep: &mut Report,
) -> Result<()> {
    let k = t.kind;
    // `--profile`: record around the packet-rate runs.
    let profiled = |m: Metric, f: &dyn Fn() -> Result<traffic::Rate>| -> Result<traffic::Rate> {
        let Some(p) = &plan.profiler else {
            return f();
        };
        let running = p.start(t, m, round)?;
        let r = f();
        let delivered = r.as_ref().map(|r| r.delivered).unwrap_or(0);
        let progs = running.finish(p, delivered)?;
        for l in progs.lines() {
            eprintln!("bench:     (bpf) {l}");
        }
        r
    };
    let record = |m: Metric, r: Result<f64>, rep: &mut Report| -> Result<()> {
        match r {
            Ok(v) => {
                eprintln!(
                    "bench:   {:<10} {:<36} {}",
                    k.short(),
                    m.label(),
                    report::fmt_num(v)
                );
                rep.add(k, m, round, v);
            }
            Err(e) => {
                ns::check_interrupted()?;
                eprintln!("bench:   {:<10} {:<36} failed: {e:#}", k.short(), m.label());
                rep.errors
                    .push(format!("{}: {}: {e:#}", k.label(), m.label()));
            }
        }
        Ok(())
    };
    // A packet rate and its per-CPU-second companion, from one run.
    let record_rate =
        |m: Metric, cpu_m: Metric, r: Result<traffic::Rate>, rep: &mut Report| -> Result<()> {
            if let Ok(r) = &r
                && r.delivered < r.sent
            {
                eprintln!(
                    "bench:     ({}: {} sent, {} delivered)",
                    m.short(),
                    r.sent,
                    r.delivered
                );
            }
            let cpu = r
                .as_ref()
                .map(|r| r.per_cpu_sec)
                .map_err(|e| anyhow::anyhow!("{e:#}"));
            record(m, r.map(|r| r.per_sec), rep)?;
            record(cpu_m, cpu, rep)
        };
    match m {
        Metric::Tcp1 => record(m, traffic::tcp_gbps(t, 1, plan.tcp_secs), rep),
        Metric::Tcp8 => record(m, traffic::tcp_gbps(t, 8, plan.tcp_secs), rep),
        Metric::UdpPps => {
            let r = profiled(m, &|| traffic::udp_pps(t, plan.rate_secs));
            record_rate(m, Metric::UdpPpsCpu, r, rep)
        }
        Metric::NewFlows => {
            let r = profiled(m, &|| {
                traffic::new_flows(t, plan.rate_secs, traffic::flow_source(flow_run))
            });
            record_rate(m, Metric::NewFlowsCpu, r, rep)
        }
        Metric::Crr => {
            let crr = traffic::crr(t, plan.rate_secs, 2).map(|r| {
                if r.failed > 0 {
                    eprintln!("bench:     (crr: {} ok, {} failed)", r.ok, r.failed);
                }
                r.per_sec
            });
            record(m, crr, rep)
        }
        // Companions of the packet rates, recorded with them.
        Metric::UdpPpsCpu | Metric::NewFlowsCpu => Ok(()),
    }
}

/// Entry point of `cargo xtask bench`.
pub fn run(args: &BenchArgs, target_dir: &Path, workspace: &Path) -> Result<()> {
    crate::require_root("bench")?;
    crate::ensure_commands(BENCH_COMMANDS)?;
    ns::install_signal_handlers();
    ns::sweep_stale();
    let kinds = args
        .configs
        .iter()
        .map(|s| parse_kind(s))
        .collect::<Result<Vec<_>>>()?;
    let metrics = args
        .metrics
        .iter()
        .map(|s| parse_metric(s))
        .collect::<Result<Vec<_>>>()?;
    let out_dir = target_dir.join("bench");
    let profiler = if args.profile {
        crate::ensure_commands(profile::COMMANDS)?;
        Some(profile::Profiler::new(&out_dir)?)
    } else {
        None
    };
    let plan = Plan {
        rounds: if args.quick { 1 } else { args.rounds.max(1) },
        tcp_secs: if args.quick { 1 } else { args.tcp_secs.max(1) },
        rate_secs: if args.quick {
            0.5
        } else {
            args.rate_secs.max(0.2)
        },
        kinds,
        metrics,
        profiler,
        routers: if args.quick {
            vec![10]
        } else {
            args.routers.clone()
        },
        chatter_secs: if args.quick {
            2.0
        } else {
            args.chatter_secs.max(1.0)
        },
        agent_routers: args.agent_routers,
        routers_cap: Duration::from_secs(if args.quick {
            30
        } else {
            args.routers_time_cap
        }),
    };
    let mut rep = Report {
        machine: machine::facts(workspace),
        rounds: plan.rounds,
        control_plane_note: "not requested (--routers 0)".into(),
        gateway_delay_note: "the eBPF configuration was not requested".into(),
        ..Default::default()
    };
    rep.durations.insert("tcp".into(), plan.tcp_secs as f64);
    rep.durations.insert("rates".into(), plan.rate_secs);
    eprintln!("bench: machine {:?}", rep.machine);
    if rep.machine.get("cores").map(String::as_str) == Some("2")
        || rep.machine.get("cores").map(String::as_str) == Some("1")
    {
        rep.notes.push(
            "Few cores: sender, router and receiver share them, so absolute numbers are low and noisy; compare ratios.".into(),
        );
    }
    if plan.profiler.is_some() {
        rep.notes.push(
            "Profiled run (--profile): perf sampled every CPU during the UDP pps and new-flow runs and the BPF run-time statistics were on for (d) and (e); compare these figures only with each other. Profiles are in target/bench/profile/.".into(),
        );
    }
    let result = run_plan(&plan, &mut rep, target_dir, workspace);
    if let Err(e) = &result {
        rep.notes.push(format!("Run ended early: {e:#}"));
    }
    let md = rep.write(&out_dir)?;
    println!("{md}");
    eprintln!(
        "bench: wrote {}/report.md, report.json, ratios.svg",
        out_dir.display()
    );
    result
}

/// Starts one daemon per daemon-backed configuration that was asked for; returns them and,
/// for those that did not start, why (also recorded in the report).
fn start_daemons(
    plan: &Plan,
    rep: &mut Report,
    target_dir: &Path,
    workspace: &Path,
) -> Result<(BTreeMap<Kind, daemon::Env>, BTreeMap<Kind, String>)> {
    // One daemon per daemon-backed configuration that was asked for — (d) with the fast path
    // off, (e) with it on — each brought up once and reused across rounds. The control plane
    // alone needs a daemon too: the default one, (e)'s.
    let mut daemon_kinds: Vec<Kind> = [Kind::Ebpf, Kind::Fast]
        .into_iter()
        .filter(|k| plan.kinds.contains(k))
        .collect();
    if daemon_kinds.is_empty() && plan.routers.iter().any(|n| *n > 0) {
        daemon_kinds.push(Kind::Fast);
    }
    let mut envs: BTreeMap<Kind, daemon::Env> = BTreeMap::new();
    let mut not_started: BTreeMap<Kind, String> = BTreeMap::new();
    if !daemon_kinds.is_empty() {
        match daemon::build(target_dir, workspace) {
            Ok(bin) => {
                for &k in &daemon_kinds {
                    eprintln!("bench: starting the daemon of {}", k.label());
                    match daemon::Env::start(&bin, k) {
                        Ok(e) => {
                            if let Some(n) = &e.config_note {
                                rep.notes.push(n.clone());
                            }
                            envs.insert(k, e);
                        }
                        Err(e) => {
                            ns::check_interrupted()?;
                            not_started.insert(k, format!("{e:#}"));
                        }
                    }
                }
            }
            Err(e) => {
                ns::check_interrupted()?;
                for &k in &daemon_kinds {
                    not_started.insert(k, format!("building the daemon failed: {e:#}"));
                }
            }
        }
    }
    for (k, why) in &not_started {
        eprintln!("bench: daemon of {} unavailable: {why}", k.label());
        if plan.kinds.contains(k) {
            rep.not_run
                .insert(k.label().into(), format!("daemon did not start: {why}"));
        }
    }
    Ok((envs, not_started))
}

/// Builds this round's paths in `order`: fresh namespaces for (a)–(c), returned; (d) and (e)
/// built once through their daemons and kept in `topos` across rounds.
fn round_paths(
    order: &[Kind],
    round: u32,
    envs: &mut BTreeMap<Kind, daemon::Env>,
    topos: &mut BTreeMap<Kind, Topology>,
    rep: &mut Report,
) -> Result<BTreeMap<Kind, Topology>> {
    let mut fresh: BTreeMap<Kind, Topology> = BTreeMap::new();
    for &kind in order {
        ns::check_interrupted()?;
        match kind {
            Kind::Plain | Kind::Iptables | Kind::Nftables => {
                let tag = format!("{}{round}", &kind.short()[..2]);
                match topo::build_kernel(kind, &tag) {
                    Ok(t) => {
                        if let Some(n) = &t.note
                            && !rep.notes.contains(n)
                        {
                            rep.notes.push(n.clone());
                        }
                        fresh.insert(kind, t);
                    }
                    Err(e) => {
                        ns::check_interrupted()?;
                        eprintln!("bench: {} setup failed: {e:#}", kind.label());
                        rep.errors.push(format!("{}: setup: {e:#}", kind.label()));
                    }
                }
            }
            Kind::Ebpf | Kind::Fast => {
                let Some(env) = envs.get_mut(&kind) else {
                    continue;
                };
                if !topos.contains_key(&kind) && !rep.not_run.contains_key(kind.label()) {
                    match env.build_path() {
                        Ok(t) => {
                            topos.insert(kind, t);
                        }
                        Err(e) => {
                            ns::check_interrupted()?;
                            eprintln!("bench: {} path unavailable: {e:#}", kind.label());
                            rep.not_run.insert(kind.label().into(), format!("{e:#}"));
                        }
                    }
                }
            }
        }
    }
    Ok(fresh)
}

fn run_plan(plan: &Plan, rep: &mut Report, target_dir: &Path, workspace: &Path) -> Result<()> {
    // Declared before the topologies, so these drop after them.
    let (mut envs, not_started) = start_daemons(plan, rep, target_dir, workspace)?;
    // The control plane and the gateway delay run on the product's default configuration (e)
    // when its daemon is up, else on (d)'s.
    let cp_kind = [Kind::Fast, Kind::Ebpf]
        .into_iter()
        .find(|k| envs.contains_key(k));
    if cp_kind.is_none() && !not_started.is_empty() {
        let why = not_started.values().next().cloned().unwrap_or_default();
        rep.control_plane_note = format!("not run: daemon did not start: {why}");
        rep.gateway_delay_note = "daemon did not start".into();
    }
    let mut topos: BTreeMap<Kind, Topology> = BTreeMap::new();
    let mut flow_run = 0u32;
    for round in 0..plan.rounds {
        // Rotate the order each round so no configuration always runs first or last.
        let n = plan.kinds.len();
        let order: Vec<Kind> = (0..n)
            .map(|i| plan.kinds[(i + round as usize) % n])
            .collect();
        let fresh = round_paths(&order, round, &mut envs, &mut topos, rep)?;
        // Metric by metric, every configuration in turn: the samples a ratio pairs are taken
        // seconds apart, not a whole round's metrics apart, so the machine's drift (a shared
        // host's load moves by more than the configurations differ) mostly cancels.
        for &m in &plan.metrics {
            for &kind in &order {
                ns::check_interrupted()?;
                let Some(t) = fresh.get(&kind).or_else(|| topos.get(&kind)) else {
                    continue;
                };
                eprintln!(
                    "bench: round {}/{} — {} — {}",
                    round + 1,
                    plan.rounds,
                    m.label(),
                    kind.label()
                );
                if m == Metric::NewFlows {
                    flow_run += 1;
                }
                measure(t, plan, m, round, flow_run, rep)?;
            }
        }
        drop(fresh);
    }
    for (k, env) in &envs {
        env.leaks(rep);
        if topos.contains_key(k) {
            env.counters(rep);
        }
    }
    drop(topos);
    // Only the control plane's daemon is needed from here on.
    envs.retain(|k, _| Some(*k) == cp_kind);
    ns::check_interrupted()?;
    // Per-packet cost and memory do not depend on the daemon: they load the object directly.
    match testrun::object_path(target_dir, workspace) {
        Ok(obj) => {
            rep.testrun = testrun::measure(&obj, if plan.rounds == 1 { 20_000 } else { 200_000 });
            rep.memory = testrun::memory(&obj);
        }
        Err(e) => {
            rep.testrun.note = format!("not run: {e:#}");
            rep.memory.ebpf_detail = format!("not run: {e:#}");
        }
    }
    if rep.memory.conntrack_bytes_per_session.is_none() {
        testrun::conntrack_memory(&mut rep.memory);
    }
    ns::check_interrupted()?;
    if let Some(env) = cp_kind.and_then(|k| envs.get_mut(&k)) {
        env.gateway_delay(rep);
        ns::check_interrupted()?;
        let on = env.kind.label();
        rep.daemon_measured = on.to_string();
        if plan.routers.iter().any(|n| *n > 0) {
            rep.scale = env.scale(&plan.routers, plan.routers_cap, plan.chatter_secs);
            rep.control_plane_note = format!("Scale runs on the daemon of {on}.");
            ns::check_interrupted()?;
            env.parallel_gateways(PARALLEL_CLIENTS, PARALLEL_ROUTERS_EACH, rep);
        }
    }
    drop(envs);
    if plan.agent_routers > 0 {
        ns::check_interrupted()?;
        eprintln!(
            "bench: agent mode, {} routers through neutron-server",
            plan.agent_routers
        );
        let bin = daemon::build(target_dir, workspace)?;
        rep.agent_scale = Some(agent_scale::run(&bin, plan.agent_routers, plan.routers_cap));
    }
    Ok(())
}
