//! `cargo xtask bench --profile`: where the CPU goes during the packet-rate runs.
//!
//! Around each UDP pps and new-flow run it records every CPU with `perf record -a -g` (kernel
//! symbols come from /proc/kallsyms; JIT-ed BPF programs show up as `bpf_prog_<tag>_<name>`)
//! and, for configurations whose programs are known (the daemon's), turns on
//! `kernel.bpf_stats_enabled` and reads each attached program's `run_cnt`/`run_time_ns` before
//! and after with `bpftool`. Results land in `target/bench/profile/`: the `perf.data` file, a
//! flat symbol profile (`perf report --no-children --sort sym`) and the per-program figures.
//! Profiling costs CPU itself (sampling, and two clock reads per program run with the BPF
//! statistics on), so figures of a profiled run only compare with each other.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use std::collections::BTreeMap;

use super::{
    ns::sh,
    report::Metric,
    topo::{Kind, Topology},
};

/// Commands `--profile` needs (and the packages providing them).
pub const COMMANDS: &[(&str, &str)] = &[("perf", "linux-perf"), ("bpftool", "bpftool")];

/// Sampling frequency of `perf record` (Hz per CPU).
const FREQ: &str = "1999";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Profiles runs into `dir`.
pub struct Profiler {
    dir: PathBuf,
    /// ns of CPU per packet by symbol, per (config, metric, round) profiled so far.
    per_packet: std::sync::Mutex<BTreeMap<(Kind, Metric, u32), PerPacket>>,
}

/// ns of CPU per delivered packet, by symbol, in the sender's context.
#[derive(Clone, Debug, Default)]
struct PerPacket {
    total: f64,
    by_sym: BTreeMap<String, f64>,
}

/// `comm` of the sending thread (threads inherit the bench binary's name).
const SENDER_COMM: &str = "xtask";

/// Counters of one attached program.
#[derive(Clone, Debug)]
struct ProgStat {
    id: u64,
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

/// A profile in progress (see `Profiler::start`).
pub struct Running {
    perf: Option<Child>,
    data: PathBuf,
    stem: String,
    what: (Kind, Metric, u32),
    prog_pins: Option<PathBuf>,
    before: Vec<ProgStat>,
    stats_were: Option<String>,
}

impl Profiler {
    pub fn new(dir: &Path) -> Result<Self> {
        let dir = dir.join("profile");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            per_packet: Default::default(),
        })
    }

    /// Starts recording for `metric` of round `round` on `t`.
    pub fn start(&self, t: &Topology, metric: Metric, round: u32) -> Result<Running> {
        let stem = format!("{}-{}-r{round}", t.kind.short(), metric.short());
        let data = self.dir.join(format!("{stem}.perf.data"));
        let mut stats_were = None;
        let mut before = Vec::new();
        if let Some(pins) = &t.prog_pins {
            stats_were = std::fs::read_to_string(BPF_STATS).ok();
            std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
            before = prog_stats(pins)?;
        }
        let perf = Command::new("perf")
            .args(["record", "-a", "-g", "-F", FREQ, "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        // perf needs a moment to open its events on every CPU.
        super::ns::sleep(Duration::from_millis(300))?;
        Ok(Running {
            perf: Some(perf),
            data,
            stem,
            what: (t.kind, metric, round),
            prog_pins: t.prog_pins.clone(),
            before,
            stats_were,
        })
    }
}

impl Running {
    /// Stops recording and writes the summaries (`delivered`: packets the run delivered);
    /// returns the per-program lines.
    pub fn finish(mut self, profiler: &Profiler, delivered: u64) -> Result<String> {
        let dir = profiler.dir.clone();
        self.stop_perf();
        let mut text = String::new();
        if let Some(pins) = &self.prog_pins {
            let after = prog_stats(pins)?;
            for a in &after {
                let Some(b) = self.before.iter().find(|b| b.id == a.id) else {
                    continue;
                };
                let runs = a.run_cnt.saturating_sub(b.run_cnt);
                let ns_total = a.run_time_ns.saturating_sub(b.run_time_ns);
                let per = if runs > 0 {
                    ns_total as f64 / runs as f64
                } else {
                    0.0
                };
                let _ = writeln!(text, "{:<12} runs {:>9}  {:>7.1} ns/run", a.name, runs, per);
            }
        }
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "sym",
                "--percent-limit",
                "0.3",
                "-g",
                "none",
                "-i",
            ])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("perf report")?;
        std::fs::write(dir.join(format!("{}.txt", self.stem)), &report.stdout)?;
        if !text.is_empty() {
            std::fs::write(dir.join(format!("{}.bpf.txt", self.stem)), &text)?;
        }
        if delivered > 0 {
            let pp = per_packet(&self.data, delivered)?;
            std::fs::write(
                dir.join(format!("{}.pkt.txt", self.stem)),
                render(&pp, delivered),
            )?;
            let mut all = profiler
                .per_packet
                .lock()
                .map_err(|_| anyhow::anyhow!("profile table poisoned"))?;
            all.insert(self.what, pp);
            let (_, metric, round) = self.what;
            let base = all.get(&(Kind::Plain, metric, round));
            for ((k, m, r), other) in all.iter() {
                if *k == Kind::Plain || *m != metric || *r != round {
                    continue;
                }
                if let Some(base) = base {
                    let name = format!("diff-{}-{}-r{round}.txt", k.short(), metric.short());
                    std::fs::write(dir.join(name), render_diff(base, other, *k))?;
                }
            }
        }
        Ok(text)
    }

    fn stop_perf(&mut self) {
        if let Some(mut p) = self.perf.take() {
            // SIGINT makes perf record flush and close its file.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
        if let Some(v) = self.stats_were.take() {
            let _ = std::fs::write(BPF_STATS, v.trim());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_perf();
    }
}

/// Samples of the sender's `comm` in `data`, by symbol, as ns per delivered packet.
fn per_packet(data: &Path, delivered: u64) -> Result<PerPacket> {
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--comm",
            SENDER_COMM,
            "--sort",
            "sym",
            "-g",
            "none",
            "-n",
            "--percent-limit",
            "0",
            "-i",
        ])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf report")?;
    let hz: f64 = FREQ.parse().unwrap_or(1999.0);
    let mut pp = PerPacket::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('#') {
            continue;
        }
        // "    1.23%   456  [k] symbol"
        let mut it = line.split_whitespace();
        let (Some(_pct), Some(n), Some(_mode)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let sym = it.collect::<Vec<_>>().join(" ");
        let ns = n as f64 / hz / delivered as f64 * 1e9;
        *pp.by_sym.entry(sym).or_default() += ns;
        pp.total += ns;
    }
    Ok(pp)
}

fn render(pp: &PerPacket, delivered: u64) -> String {
    let mut s = format!(
        "# ns of CPU per delivered packet in the sender's context ({delivered} packets): {:.0} in total\n",
        pp.total
    );
    let mut v: Vec<_> = pp.by_sym.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    for (sym, ns) in v.iter().take(80) {
        let _ = writeln!(s, "{ns:8.1}  {sym}");
    }
    s
}

fn render_diff(plain: &PerPacket, other: &PerPacket, kind: Kind) -> String {
    let mut s = format!(
        "# ns of CPU per delivered packet: plain {:.0}, {} {:.0}, difference {:+.0}\n# plain  {:>6}  diff  symbol\n",
        plain.total,
        kind.short(),
        other.total,
        other.total - plain.total,
        kind.short()
    );
    let mut syms: Vec<&String> = plain.by_sym.keys().chain(other.by_sym.keys()).collect();
    syms.sort();
    syms.dedup();
    let get = |pp: &PerPacket, k: &String| pp.by_sym.get(k).copied().unwrap_or(0.0);
    syms.sort_by(|a, b| {
        let da = get(other, a) - get(plain, a);
        let db = get(other, b) - get(plain, b);
        db.total_cmp(&da)
    });
    for sym in syms.iter().take(60) {
        let (a, b) = (get(plain, sym), get(other, sym));
        let _ = writeln!(s, "{a:7.1} {b:7.1} {:+7.1}  {sym}", b - a);
    }
    s
}

/// The daemon's programs (those using the SESSIONS map pinned under `pins`), with their run
/// counters. (`bpftool net show` of Debian's bpftool does not list TCX attachments.)
fn prog_stats(pins: &Path) -> Result<Vec<ProgStat>> {
    // The NAT programs use SESSIONS; the fast path (`fast_fwd`) does not, but counts in
    // ROUTER_STATS like every program.
    let mut map_ids = Vec::new();
    for name in [
        router_common::maps::SESSIONS,
        router_common::maps::ROUTER_STATS,
    ] {
        let pin = pins
            .join(format!("v{}", router_common::LAYOUT_VERSION))
            .join(name);
        let m = sh(Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&pin))?;
        let m: serde_json::Value = serde_json::from_slice(&m.stdout).context("bpftool map -j")?;
        map_ids.push(
            m["id"]
                .as_u64()
                .with_context(|| format!("no id for the {name} pin"))?,
        );
    }
    let out = sh(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool prog -j")?;
    let mut stats = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let uses = p["map_ids"].as_array().is_some_and(|ids| {
            ids.iter()
                .any(|i| i.as_u64().is_some_and(|i| map_ids.contains(&i)))
        });
        if !uses {
            continue;
        }
        stats.push(ProgStat {
            id: p["id"].as_u64().unwrap_or(0),
            name: p["name"].as_str().unwrap_or("?").to_string(),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
        });
    }
    Ok(stats)
}
