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

use super::{ns::sh, report::Metric, topo::Topology};

/// Commands `--profile` needs (and the packages providing them).
pub const COMMANDS: &[(&str, &str)] = &[("perf", "linux-perf"), ("bpftool", "bpftool")];

/// Sampling frequency of `perf record` (Hz per CPU).
const FREQ: &str = "1999";
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Profiles runs into `dir`.
pub struct Profiler {
    dir: PathBuf,
}

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
    prog_pins: Option<PathBuf>,
    before: Vec<ProgStat>,
    stats_were: Option<String>,
}

impl Profiler {
    pub fn new(dir: &Path) -> Result<Self> {
        let dir = dir.join("profile");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
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
            prog_pins: t.prog_pins.clone(),
            before,
            stats_were,
        })
    }
}

impl Running {
    /// Stops recording and writes the summaries; returns the per-program lines.
    pub fn finish(mut self, dir: &Path) -> Result<String> {
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
        let dir = dir.join("profile");
        std::fs::write(dir.join(format!("{}.txt", self.stem)), &report.stdout)?;
        if !text.is_empty() {
            std::fs::write(dir.join(format!("{}.bpf.txt", self.stem)), &text)?;
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

/// The daemon's programs (those using the SESSIONS map pinned under `pins`), with their run
/// counters. (`bpftool net show` of Debian's bpftool does not list TCX attachments.)
fn prog_stats(pins: &Path) -> Result<Vec<ProgStat>> {
    let pin = pins
        .join(format!("v{}", router_common::LAYOUT_VERSION))
        .join(router_common::maps::SESSIONS);
    let m = sh(Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&pin))?;
    let m: serde_json::Value = serde_json::from_slice(&m.stdout).context("bpftool map -j")?;
    let map_id = m["id"].as_u64().context("no id for the SESSIONS pin")?;
    let out = sh(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool prog -j")?;
    let mut stats = Vec::new();
    for p in v.as_array().into_iter().flatten() {
        let uses = p["map_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i.as_u64() == Some(map_id)));
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
