//! Results of a bench run and their rendering: `report.md` (tables with verdicts against the
//! targets), `report.json` (every sample) and `ratios.svg` (ratios to plain forwarding).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::topo::Kind;

/// Data-path metrics measured for every configuration (higher is better for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Metric {
    Tcp1,
    Tcp8,
    UdpPps,
    NewFlows,
    Crr,
    /// UDP packets delivered per CPU-second spent in the sending context (see `traffic::Rate`).
    UdpPpsCpu,
    /// New flows delivered per CPU-second spent in the sending context.
    NewFlowsCpu,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Tcp1,
        Metric::Tcp8,
        Metric::UdpPps,
        Metric::NewFlows,
        Metric::Crr,
        Metric::UdpPpsCpu,
        Metric::NewFlowsCpu,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "TCP throughput, 1 stream",
            Metric::Tcp8 => "TCP throughput, 8 streams",
            Metric::UdpPps => "UDP 64-byte packets",
            Metric::NewFlows => "New flows (new 5-tuple per packet)",
            Metric::Crr => "TCP connect-request-close",
            Metric::UdpPpsCpu => "UDP 64-byte packets per CPU-second (sending context)",
            Metric::NewFlowsCpu => "New flows per CPU-second (sending context)",
        }
    }

    /// Name on the command line (`--metrics`) and in profile file names.
    pub fn short(self) -> &'static str {
        match self {
            Metric::Tcp1 => "tcp1",
            Metric::Tcp8 => "tcp8",
            Metric::UdpPps => "udp",
            Metric::NewFlows => "flows",
            Metric::Crr => "crr",
            Metric::UdpPpsCpu => "udp-cpu",
            Metric::NewFlowsCpu => "flows-cpu",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Tcp1 | Metric::Tcp8 => "Gbit/s",
            Metric::UdpPps => "pps",
            Metric::NewFlows => "flows/s",
            Metric::Crr => "conn/s",
            Metric::UdpPpsCpu => "pps per CPU",
            Metric::NewFlowsCpu => "flows/s per CPU",
        }
    }

    /// Minimum ratio to plain forwarding the eBPF datapath must reach, if any.
    pub fn target(self) -> Option<f64> {
        match self {
            Metric::Tcp1 | Metric::Tcp8 => Some(0.97),
            // The per-CPU-second rows are the same rates with the sender's CPU share factored
            // out, so they answer to the same targets.
            Metric::UdpPps | Metric::UdpPpsCpu => Some(0.95),
            Metric::NewFlows | Metric::NewFlowsCpu => Some(0.90),
            Metric::Crr => None,
        }
    }
}

/// Median, minimum and maximum of a sample set.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / median, in percent.
    pub spread_pct: f64,
    pub n: usize,
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let (min, max) = (v[0], v[n - 1]);
    let spread_pct = if median > 0.0 {
        (max - min) / median * 100.0
    } else {
        0.0
    };
    Some(Summary {
        median,
        min,
        max,
        spread_pct,
        n,
    })
}

/// Per-packet cost of the datapath program measured with BPF_PROG_TEST_RUN.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TestRunResult {
    /// ns per packet, established session (same packet repeated).
    pub established_ns: Option<f64>,
    /// ns per packet, established session, one run per packet (as the new-flow figure).
    pub established_single_ns: Option<f64>,
    /// ns per packet through `snat_in`, reply of the established session (repeat, average).
    pub inbound_established_ns: Option<f64>,
    /// Whether `snat_in` rewrote the reply's destination back to the internal address.
    pub inbound_translated: bool,
    /// ns per packet, each packet creating a session.
    pub new_flow_ns: Option<f64>,
    /// Whether the program actually rewrote the source to the gateway address.
    pub translated: bool,
    pub note: String,
    /// ns per packet through `fast_fwd` for a packet it forwards (repeat, kernel average).
    pub fast_forwarded_ns: Option<f64>,
    /// ns per packet through `fast_fwd` for a packet it leaves to the router (TTL 1).
    pub fast_to_router_ns: Option<f64>,
    /// How the fast path was measured, or why not.
    pub fast_note: String,
}

/// Kernel memory per NAT session.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryResult {
    /// eBPF session table: memlock per entry of the SESSIONS map × the entries new flows that
    /// keep their port left / their number.
    pub ebpf_bytes_per_session: Option<f64>,
    /// The same for flows all displaced from their first-choice port (two entries each).
    pub ebpf_worst_bytes_per_session: Option<f64>,
    pub ebpf_detail: String,
    /// Linux conntrack (iptables and nftables): nf_conntrack slab object size.
    pub conntrack_bytes_per_session: Option<f64>,
    pub conntrack_detail: String,
}

/// Gateway sets while several clients make routers at once.
#[derive(Clone, Debug, Serialize)]
pub struct ParallelGatewayRun {
    pub clients: usize,
    /// Routers whose gateway was set.
    pub routers: usize,
    /// Latency of the gateway-set call, seconds.
    pub p50_secs: f64,
    pub p99_secs: f64,
    /// API calls of any kind that failed (none expected).
    pub failures: usize,
    /// The first failure, if any.
    pub note: String,
}

/// Latency of one kind of API call within a control-plane batch.
#[derive(Clone, Debug, Serialize)]
pub struct StepStats {
    pub call: String,
    pub p50_secs: f64,
    pub p99_secs: f64,
    pub mean_secs: f64,
    /// p50 over the first and the last tenth of the batch, in order: which call grows with N.
    pub first_tenth_p50_secs: Option<f64>,
    pub last_tenth_p50_secs: Option<f64>,
    /// p99 over the same tenths: whether a batch's growing tail is one call's or every call's
    /// (a stall of the machine lands on whichever call is running).
    pub first_tenth_p99_secs: Option<f64>,
    pub last_tenth_p99_secs: Option<f64>,
}

/// Header of the table `step_rows` fills.
pub const STEP_HEADER: &str = "| call | p50 ms | p99 ms | p50 ms, first → last tenth | p99 ms, first → last tenth |\n|---|---|---|---|---|";

/// Rows `| call | p50 ms | p99 ms | p50 first → last tenth | p99 first → last tenth |` of a
/// markdown table, one per step.
pub fn step_rows<'a>(s: &mut String, steps: impl IntoIterator<Item = &'a StepStats>) {
    let growth = |f: Option<f64>, l: Option<f64>| match (f, l) {
        (Some(f), Some(l)) => format!("{:.1} → {:.1}", f * 1e3, l * 1e3),
        _ => "—".into(),
    };
    for st in steps {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {} | {} |",
            st.call,
            st.p50_secs * 1e3,
            st.p99_secs * 1e3,
            growth(st.first_tenth_p50_secs, st.last_tenth_p50_secs),
            growth(st.first_tenth_p99_secs, st.last_tenth_p99_secs),
        );
    }
}

/// One daemon's datapath counters after the data-path rounds (summed over routers and CPUs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DaemonCounters {
    pub configuration: String,
    /// The daemon's `[datapath] fast_path` setting.
    pub fast_path: bool,
    pub counters: BTreeMap<String, u64>,
    /// How much `fast_forwarded` grew from the path being built to the end of the rounds.
    pub fast_forwarded_during_rounds: u64,
}

/// Everything one bench run produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, String>,
    pub rounds: u32,
    pub durations: BTreeMap<String, f64>,
    /// Samples per configuration and metric.
    pub samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    /// The round each sample of `samples` was taken in (same shape), for per-round ratios.
    pub sample_rounds: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
    /// Configurations that did not run, and why.
    pub not_run: BTreeMap<String, String>,
    /// Per-metric failures of configurations that otherwise ran.
    pub errors: Vec<String>,
    /// Counters of each daemon's datapath after the data-path rounds, by configuration
    /// (`ebpf` = (d), `fast` = (e)).
    pub daemon_counters: BTreeMap<String, DaemonCounters>,
    pub testrun: TestRunResult,
    pub memory: MemoryResult,
    /// The control plane at scale, one run per N (`scale`).
    pub scale: Vec<super::scale::ScaleRun>,
    pub control_plane_note: String,
    /// The same through a real neutron-server and `router-ctl agent` (`--agent-routers`).
    pub agent_scale: Option<super::agent_scale::AgentScale>,
    /// Gateway-set latency with several clients at once (after the control-plane batches).
    pub parallel_gateway: Option<ParallelGatewayRun>,
    /// Seconds from the gateway-set API call to the first translated packet at the server.
    pub gateway_to_first_packet_secs: Option<f64>,
    pub gateway_delay_note: String,
    /// The configuration whose daemon the gateway delay and the control plane were measured on.
    pub daemon_measured: String,
    pub notes: Vec<String>,
}

fn key(k: Kind) -> String {
    k.short().to_string()
}

fn mkey(m: Metric) -> String {
    format!("{m:?}")
}

/// The series of configuration `k` and metric `m` in a table keyed like [`Report::samples`],
/// made empty when new.
fn series<T>(
    table: &mut BTreeMap<String, BTreeMap<String, Vec<T>>>,
    k: Kind,
    m: Metric,
) -> &mut Vec<T> {
    table.entry(key(k)).or_default().entry(mkey(m)).or_default()
}

impl Report {
    /// Records sample `v` of metric `m` for configuration `k`, taken in round `round`.
    pub fn add(&mut self, k: Kind, m: Metric, round: u32, v: f64) {
        series(&mut self.samples, k, m).push(v);
        series(&mut self.sample_rounds, k, m).push(round);
    }

    /// The samples of `k` for `m` with the round each was taken in.
    fn by_round(&self, k: Kind, m: Metric) -> Vec<(u32, f64)> {
        let vals = self.samples.get(&key(k)).and_then(|s| s.get(&mkey(m)));
        let rounds = self
            .sample_rounds
            .get(&key(k))
            .and_then(|s| s.get(&mkey(m)));
        match (vals, rounds) {
            (Some(v), Some(r)) => r.iter().copied().zip(v.iter().copied()).collect(),
            _ => Vec::new(),
        }
    }

    /// Per-round ratios of `k` over `base` for `m` (rounds where both have a sample and
    /// `base`'s is positive), summarised. A round runs each metric on every configuration in
    /// turn, so a ratio of two samples taken seconds apart cancels the machine's drift, which
    /// the ratio of two medians over the whole run does not.
    pub fn paired(&self, k: Kind, base: Kind, m: Metric) -> Option<Summary> {
        let b: BTreeMap<u32, f64> = self.by_round(base, m).into_iter().collect();
        let ratios: Vec<f64> = self
            .by_round(k, m)
            .into_iter()
            .filter_map(|(r, v)| b.get(&r).filter(|x| **x > 0.0).map(|x| v / x))
            .collect();
        summarize(&ratios)
    }

    pub fn summary(&self, k: Kind, m: Metric) -> Option<Summary> {
        summarize(self.samples.get(&key(k))?.get(&mkey(m))?)
    }

    /// Median over rounds of `k`'s sample over plain forwarding's in the same round.
    pub fn ratio(&self, k: Kind, m: Metric) -> Option<f64> {
        Some(self.paired(k, Kind::Plain, m)?.median)
    }

    fn verdict(&self, k: Kind, m: Metric) -> String {
        if self.summary(k, m).is_none() {
            return "not run".into();
        }
        let mut parts = Vec::new();
        let mut pass = true;
        let mut complete = true;
        match (m.target(), self.ratio(k, m)) {
            (Some(t), Some(r)) => {
                let ok = r >= t;
                pass &= ok;
                parts.push(format!(
                    "{r:.2}× plain (≥ {t:.2}× {})",
                    if ok { "met" } else { "missed" }
                ));
            }
            (Some(_), None) => {
                complete = false;
                parts.push("plain forwarding not measured".into());
            }
            (None, _) => {}
        }
        match self.paired(k, Kind::Iptables, m) {
            Some(ipt) => {
                let ok = ipt.median > 1.0;
                pass &= ok;
                parts.push(format!(
                    "{} iptables ({:.2}×)",
                    if ok { "beats" } else { "does not beat" },
                    ipt.median
                ));
            }
            None => {
                complete = false;
                parts.push("iptables not measured".into());
            }
        }
        let head = match (pass, complete) {
            (false, _) => "FAIL",
            (true, true) => "PASS",
            (true, false) => "INCOMPLETE",
        };
        format!("{head} — {}", parts.join(", "))
    }

    /// Writes report.md, report.json and ratios.svg into `dir`; returns the markdown.
    pub fn write(&self, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let md = self.markdown();
        std::fs::write(dir.join("report.md"), &md)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("ratios.svg"), self.svg())?;
        Ok(md)
    }

    fn kinds_present(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.samples.contains_key(&key(*k)))
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Router gateway benchmark\n");
        let _ = writeln!(s, "## Machine\n");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(
            s,
            "- rounds: {} (configurations alternate within each round); durations: {}",
            self.rounds,
            self.durations
                .iter()
                .map(|(k, v)| format!("{k} {v} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "\nEach cell: median (min–max, spread = (max−min)/median) of the configuration's samples, then in bold its ratio to plain forwarding: the median over rounds of its sample over plain forwarding's sample of the same round (configurations alternate within a round, so the machine's drift between rounds cancels), with the lowest and highest per-round ratio. Verdicts use these ratios, against iptables too.\n"
        );
        let _ = writeln!(s, "## Data path\n");
        let kinds = self.kinds_present();
        // A verdict column for each of this project's configurations that ran ((d) when none).
        let mut judged: Vec<Kind> = [Kind::Ebpf, Kind::Fast]
            .into_iter()
            .filter(|k| kinds.contains(k))
            .collect();
        if judged.is_empty() {
            judged.push(Kind::Ebpf);
        }
        let _ = write!(s, "| Metric |");
        for k in &kinds {
            let _ = write!(s, " {} |", k.label());
        }
        for k in &judged {
            let _ = write!(s, " Verdict {} |", &k.label()[..3]);
        }
        let _ = writeln!(s);
        let _ = write!(s, "|---|");
        for _ in kinds.iter().chain(&judged) {
            let _ = write!(s, "---|");
        }
        let _ = writeln!(s);
        for m in Metric::ALL {
            let _ = write!(s, "| {} ({}) |", m.label(), m.unit());
            for k in &kinds {
                match self.summary(*k, m) {
                    Some(x) => {
                        let ratio = if *k == Kind::Plain {
                            String::new()
                        } else {
                            self.paired(*k, Kind::Plain, m)
                                .map(|r| {
                                    format!(" **{:.2}×** ({:.2}–{:.2})", r.median, r.min, r.max)
                                })
                                .unwrap_or_default()
                        };
                        let _ = write!(
                            s,
                            " {} ({}–{}, {:.0}%){ratio} |",
                            fmt_num(x.median),
                            fmt_num(x.min),
                            fmt_num(x.max),
                            x.spread_pct
                        );
                    }
                    None => {
                        let _ = write!(s, " — |");
                    }
                }
            }
            for k in &judged {
                let _ = write!(s, " {} |", self.verdict(*k, m));
            }
            let _ = writeln!(s);
        }
        if !self.not_run.is_empty() {
            let _ = writeln!(s, "\nNot run:\n");
            for (k, why) in &self.not_run {
                let _ = writeln!(s, "- **{k}**: {why}");
            }
        }
        for d in self.daemon_counters.values() {
            let nonzero: Vec<String> = d
                .counters
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "\n{} (daemon with fast_path = {}), datapath counters after the rounds (all routers, all CPUs; fast_forwarded grew by {} during the rounds): {}",
                d.configuration,
                d.fast_path,
                d.fast_forwarded_during_rounds,
                if nonzero.is_empty() {
                    "all zero".into()
                } else {
                    nonzero.join(", ")
                }
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nFailed measurements:\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {e}");
            }
        }

        let _ = writeln!(s, "\n## BPF TestRun (ns per packet)\n");
        let t = &self.testrun;
        let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into());
        let creation = match (t.new_flow_ns, t.established_single_ns) {
            (Some(n), Some(e)) => format!("{:.1}", n - e),
            _ => "—".into(),
        };
        let _ = writeln!(
            s,
            "| Path | ns/packet |\n|---|---|\n| snat_out: established session (repeat, kernel average) | {} |\n| snat_out: established session (one run per packet) | {} |\n| snat_out: new flow (one run per packet, session created) | {} |\n| → cost of creating a session | {creation} |\n| snat_in: reply of an established session (repeat, kernel average) | {} |\n| fast_fwd: forwarded packet (repeat, kernel average) | {} |\n| fast_fwd: packet left to the router (TTL 1, repeat) | {} |",
            f(t.established_ns),
            f(t.established_single_ns),
            f(t.new_flow_ns),
            f(t.inbound_established_ns),
            f(t.fast_forwarded_ns),
            f(t.fast_to_router_ns),
        );
        let _ = writeln!(
            s,
            "\nTranslated by the programs: snat_out {}, snat_in {}. {}",
            if t.translated { "yes" } else { "no" },
            if t.inbound_translated { "yes" } else { "no" },
            t.note
        );
        let _ = writeln!(s, "\nFast path: {}", t.fast_note);

        let _ = writeln!(s, "\n## Kernel memory per NAT session\n");
        let m = &self.memory;
        let verdict = match m.ebpf_bytes_per_session {
            Some(b) if b <= 128.0 => "PASS (≤ 128 bytes)",
            Some(_) => "FAIL (> 128 bytes)",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "| Datapath | bytes/session | Detail |\n|---|---|---|\n| eBPF SESSIONS map | {} | {} |\n| conntrack (iptables, nftables) | {} | {} |\n\nVerdict: {verdict}",
            m.ebpf_bytes_per_session
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "—".into()),
            m.ebpf_detail,
            m.conntrack_bytes_per_session
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "—".into()),
            m.conntrack_detail,
        );

        super::scale::markdown(&self.scale, &mut s);
        if !self.control_plane_note.is_empty() {
            let _ = writeln!(s, "\n{}", self.control_plane_note);
        }
        if let Some(p) = &self.parallel_gateway {
            let _ = writeln!(
                s,
                "\n{} clients in parallel, each making routers (network, subnet, router, interface, gateway): {} gateways set, gateway-set latency p50 {:.1} ms, p99 {:.1} ms; {} failed calls{}",
                p.clients,
                p.routers,
                p.p50_secs * 1e3,
                p.p99_secs * 1e3,
                p.failures,
                if p.note.is_empty() {
                    String::new()
                } else {
                    format!(" (first: {})", p.note)
                }
            );
        }
        super::agent_scale::markdown(&self.agent_scale, &mut s);
        let _ = writeln!(
            s,
            "\nGateway set → first translated packet at the server{}: {}",
            if self.daemon_measured.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.daemon_measured)
            },
            match self.gateway_to_first_packet_secs {
                Some(v) if self.gateway_delay_note.is_empty() => format!("{:.1} ms", v * 1000.0),
                Some(v) => format!("{:.1} ms (but: {})", v * 1000.0, self.gateway_delay_note),
                None => format!("not measured ({})", self.gateway_delay_note),
            }
        );
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// A horizontal bar chart: per metric, each configuration's ratio to plain forwarding.
    pub fn svg(&self) -> String {
        let kinds: Vec<Kind> = self
            .kinds_present()
            .into_iter()
            .filter(|k| *k != Kind::Plain)
            .collect();
        let colors = |k: Kind| match k {
            Kind::Iptables => "#d9534f",
            Kind::Nftables => "#f0ad4e",
            Kind::Ebpf => "#337ab7",
            Kind::Fast => "#5cb85c",
            Kind::Plain => "#777",
        };
        let bar_h = 14.0;
        let group_h = bar_h * kinds.len().max(1) as f64 + 16.0;
        let left = 260.0;
        let width = 880.0;
        let scale = 360.0; // px per 1.0×
        let top = 40.0;
        let height = top + group_h * Metric::ALL.len() as f64 + 40.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">Ratio to plain forwarding (median; 1.0 = no NAT)</text>"#
        );
        for (gi, m) in Metric::ALL.iter().enumerate() {
            let gy = top + gi as f64 * group_h;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}">{}</text>"#,
                gy + group_h / 2.0,
                esc(m.label())
            );
            for (bi, k) in kinds.iter().enumerate() {
                let y = gy + bi as f64 * bar_h;
                if let Some(r) = self.ratio(*k, *m) {
                    let w = (r.min(1.5) * scale).max(1.0);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{}" y="{}" font-size="10">{} {r:.2}×</text>"#,
                        bar_h - 2.0,
                        colors(*k),
                        left + w + 4.0,
                        y + bar_h - 4.0,
                        k.short()
                    );
                }
            }
            if let Some(t) = m.target() {
                let x = left + t * scale;
                let _ = writeln!(
                    s,
                    r##"<line x1="{x}" y1="{gy}" x2="{x}" y2="{}" stroke="#000" stroke-dasharray="3,2"/>"##,
                    gy + group_h - 14.0
                );
            }
        }
        let x1 = left + scale;
        let _ = writeln!(
            s,
            r##"<line x1="{x1}" y1="{top}" x2="{x1}" y2="{}" stroke="#777"/><text x="{}" y="{}" font-size="10">1.0× (dashed: target)</text>"##,
            height - 30.0,
            x1 - 40.0,
            height - 15.0
        );
        let _ = writeln!(s, "</svg>");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 3 significant digits with k/M suffixes.
pub fn fmt_num(v: f64) -> String {
    let (x, suf) = if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if x.abs() >= 100.0 {
        format!("{x:.0}{suf}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}{suf}")
    } else {
        format!("{x:.2}{suf}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round `round` of metric `m`: one sample per configuration, (plain, iptables, eBPF).
    fn add_round(r: &mut Report, m: Metric, round: u32, (plain, ipt, ebpf): (f64, f64, f64)) {
        r.add(Kind::Plain, m, round, plain);
        r.add(Kind::Iptables, m, round, ipt);
        r.add(Kind::Ebpf, m, round, ebpf);
    }

    #[test]
    fn median_and_spread() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert!((s.spread_pct - 100.0).abs() < 1e-9);
        assert_eq!(summarize(&[1.0, 3.0]).unwrap().median, 2.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn verdict_compares_to_plain_and_iptables() {
        let mut r = Report::default();
        add_round(&mut r, Metric::UdpPps, 0, (100.0, 80.0, 96.0));
        assert!(r.verdict(Kind::Ebpf, Metric::UdpPps).starts_with("PASS"));
        // Two more rounds on a machine that got faster, then slower: 0.90x of plain in both.
        add_round(&mut r, Metric::UdpPps, 1, (200.0, 150.0, 180.0));
        add_round(&mut r, Metric::UdpPps, 2, (50.0, 40.0, 45.0));
        let v = r.verdict(Kind::Ebpf, Metric::UdpPps);
        assert!(v.starts_with("FAIL — 0.90× plain"), "{v}");
        assert!(v.contains("beats iptables (1.20×)"), "{v}");
        let md = r.markdown();
        assert!(md.contains("**0.90×** (0.90–0.96)"), "{md}");
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.contains("ebpf 0.90×"));
        // The per-CPU-second rows answer to the same target, not only to iptables.
        add_round(&mut r, Metric::NewFlowsCpu, 0, (100.0, 70.0, 85.0));
        assert!(
            r.verdict(Kind::Ebpf, Metric::NewFlowsCpu)
                .starts_with("FAIL")
        );
    }

    #[test]
    fn ratios_pair_samples_of_the_same_round() {
        let mut r = Report::default();
        // The machine doubles its speed each round; (d) is at 0.97x of plain in every round
        // it ran, and its third round failed.
        for (round, plain) in [(0, 100.0), (1, 200.0), (2, 400.0)] {
            r.add(Kind::Plain, Metric::NewFlows, round, plain);
        }
        r.add(Kind::Ebpf, Metric::NewFlows, 0, 97.0);
        r.add(Kind::Ebpf, Metric::NewFlows, 1, 194.0);
        // The medians alone (145.5 over 200) would say 0.73x.
        let p = r
            .paired(Kind::Ebpf, Kind::Plain, Metric::NewFlows)
            .expect("paired");
        assert_eq!(p.n, 2);
        assert!((p.median - 0.97).abs() < 1e-9, "{p:?}");
        assert!((r.ratio(Kind::Ebpf, Metric::NewFlows).expect("ratio") - 0.97).abs() < 1e-9);
        // No round in common: no ratio.
        r.add(Kind::Fast, Metric::NewFlows, 7, 1.0);
        assert!(r.ratio(Kind::Fast, Metric::NewFlows).is_none());
    }

    #[test]
    fn fast_path_gets_its_own_verdict_and_bar() {
        let mut r = Report::default();
        add_round(&mut r, Metric::Tcp1, 0, (10.0, 8.0, 9.0));
        r.add(Kind::Fast, Metric::Tcp1, 0, 9.8);
        assert!(r.verdict(Kind::Fast, Metric::Tcp1).starts_with("PASS"));
        assert!(r.verdict(Kind::Ebpf, Metric::Tcp1).starts_with("FAIL"));
        let md = r.markdown();
        assert!(md.contains("| Verdict (d) | Verdict (e) |"), "{md}");
        assert!(r.svg().contains("fast 0.98×"));
    }

    #[test]
    fn fast_fwd_rows_in_the_testrun_table_and_json() {
        let mut r = Report::default();
        r.testrun.fast_forwarded_ns = Some(214.05);
        r.testrun.fast_note = "not run: why".into();
        let md = r.markdown();
        assert!(
            md.contains("| fast_fwd: forwarded packet (repeat, kernel average) | 214.1 |"),
            "{md}"
        );
        assert!(
            md.contains("| fast_fwd: packet left to the router (TTL 1, repeat) | — |"),
            "{md}"
        );
        assert!(md.contains("Fast path: not run: why"), "{md}");
        let json = serde_json::to_value(&r).expect("report serialises");
        assert_eq!(json["testrun"]["fast_forwarded_ns"], 214.05);
        assert!(json["testrun"]["fast_to_router_ns"].is_null());
    }
}
