//! `router-ctl top`: a live table of the node's routers by translated packets per second,
//! with their sessions and drops, for an operator on the node.
//!
//! It reads the daemon's metrics endpoint (one request gives every router, sessions
//! included, which the per-router API views would need a request each for) and, when the API
//! answers, the routers' names. Rates are the difference of two scrapes. `--once` prints one
//! frame as plain text, rendered by the same code as the live view.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::{
    buffer::Buffer,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table, Widget as _},
};

use super::client::Client;
use crate::metrics::text::{self, Sample};

/// `router-ctl top` options.
#[derive(Clone, Debug, clap::Args)]
pub struct TopArgs {
    /// The daemon's metrics endpoint (`[metrics] listen`).
    #[arg(
        long,
        env = "ROUTER_CTL_METRICS_URL",
        default_value = "http://127.0.0.1:9180/metrics"
    )]
    pub metrics_url: String,
    /// Seconds between two refreshes (and between the two scrapes of `--once`).
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Prints one frame as plain text and exits (for scripts).
    #[arg(long)]
    pub once: bool,
}

/// One router's counters in a scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct RouterCounts {
    out_packets: f64,
    in_packets: f64,
    sessions: f64,
    drops: f64,
    fast: f64,
}

/// What `top` uses of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
struct Scrape {
    routers: BTreeMap<String, RouterCounts>,
    table_entries: f64,
    table_capacity: f64,
    gc_passes: f64,
    gc_expired: f64,
}

impl Scrape {
    fn from_samples(samples: &[Sample]) -> Self {
        let mut s = Self::default();
        for m in samples {
            let router = m.label("router_id").map(str::to_string);
            let r = || -> Option<String> { router.clone() };
            match (m.name.as_str(), r()) {
                ("router_ctl_router_packets_total", Some(id)) => {
                    let e = s.routers.entry(id).or_default();
                    match m.label("direction") {
                        Some("out") => e.out_packets = m.value,
                        Some("in") => e.in_packets = m.value,
                        _ => {}
                    }
                }
                ("router_ctl_router_sessions", Some(id)) => {
                    s.routers.entry(id).or_default().sessions = m.value;
                }
                ("router_ctl_router_drops_total", Some(id)) => {
                    s.routers.entry(id).or_default().drops += m.value;
                }
                ("router_ctl_router_fast_forwarded_total", Some(id)) => {
                    s.routers.entry(id).or_default().fast = m.value;
                }
                ("router_ctl_session_table_entries", None) => s.table_entries = m.value,
                ("router_ctl_session_table_capacity", None) => s.table_capacity = m.value,
                ("router_ctl_gc_passes_total", None) => s.gc_passes = m.value,
                ("router_ctl_gc_sessions_expired_total", None) => s.gc_expired = m.value,
                _ => {}
            }
        }
        s
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
struct RowData {
    id: String,
    name: String,
    pps_out: f64,
    pps_in: f64,
    sessions: f64,
    drops_per_s: f64,
    drops: f64,
    fast_per_s: f64,
}

/// Rows from two scrapes `secs` apart, busiest first (a counter that went down, as when a
/// router number is reused, counts as a restart from zero).
fn rows(
    prev: Option<&Scrape>,
    cur: &Scrape,
    secs: f64,
    names: &BTreeMap<String, String>,
) -> Vec<RowData> {
    let rate = |now: f64, before: Option<f64>| match before {
        Some(b) if secs > 0.0 => (if now >= b { now - b } else { now }) / secs,
        _ => 0.0,
    };
    let mut out: Vec<RowData> = cur
        .routers
        .iter()
        .map(|(id, c)| {
            let p = prev.and_then(|p| p.routers.get(id));
            RowData {
                id: id.clone(),
                name: names.get(id).cloned().unwrap_or_default(),
                pps_out: rate(c.out_packets, p.map(|p| p.out_packets)),
                pps_in: rate(c.in_packets, p.map(|p| p.in_packets)),
                sessions: c.sessions,
                drops_per_s: rate(c.drops, p.map(|p| p.drops)),
                drops: c.drops,
                fast_per_s: rate(c.fast, p.map(|p| p.fast)),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (b.pps_out + b.pps_in)
            .total_cmp(&(a.pps_out + a.pps_in))
            .then(b.sessions.total_cmp(&a.sessions))
            .then(a.id.cmp(&b.id))
    });
    out
}

/// A count as a short human number (1234 → 1.2k).
fn human(v: f64) -> String {
    let v = v.max(0.0);
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Everything one frame shows.
struct View<'a> {
    url: &'a str,
    scrape: &'a Scrape,
    rows: &'a [RowData],
    interval: f64,
    error: Option<String>,
    live: bool,
}

const COLUMNS: [(&str, u16); 8] = [
    ("ROUTER", 36),
    ("NAME", 16),
    ("PPS OUT", 9),
    ("PPS IN", 9),
    ("SESSIONS", 9),
    ("DROPS/S", 9),
    ("DROPS", 9),
    ("FAST/S", 9),
];

/// Width the table needs (columns and the one-space gaps between them).
fn table_width() -> u16 {
    COLUMNS.iter().map(|(_, w)| w + 1).sum()
}

fn render(v: &View<'_>, area: Rect, buf: &mut Buffer) {
    let [head, status, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(area);
    let s = v.scrape;
    let fill = if s.table_capacity > 0.0 {
        100.0 * s.table_entries / s.table_capacity
    } else {
        0.0
    };
    let mut title = format!(
        "router-ctl top: {} routers · session table {:.0}/{:.0} ({fill:.1}%) · GC {} passes, {} expired · every {}s",
        s.routers.len(),
        s.table_entries,
        s.table_capacity,
        human(s.gc_passes),
        human(s.gc_expired),
        v.interval,
    );
    if v.live {
        title.push_str(" · q quits");
    }
    Paragraph::new(Line::from(title)).render(head, buf);
    if let Some(e) = &v.error {
        Paragraph::new(Line::from(format!("{}: {e}", v.url))).render(status, buf);
    }
    let header = Row::new(COLUMNS.iter().map(|(h, _)| Cell::from(*h)))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = v.rows.iter().map(|r| {
        Row::new([
            Cell::from(r.id.clone()),
            Cell::from(r.name.clone()),
            Cell::from(human(r.pps_out)),
            Cell::from(human(r.pps_in)),
            Cell::from(human(r.sessions)),
            Cell::from(human(r.drops_per_s)),
            Cell::from(human(r.drops)),
            Cell::from(human(r.fast_per_s)),
        ])
    });
    Table::new(rows, COLUMNS.iter().map(|(_, w)| Constraint::Length(*w)))
        .header(header)
        .column_spacing(1)
        .render(body, buf);
}

/// The buffer as text lines, trailing blanks trimmed.
fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn scrape(http: &reqwest::blocking::Client, url: &str) -> Result<Scrape> {
    let resp = http
        .get(url)
        .send()
        .with_context(|| format!("no metrics at {url} (is [metrics] listen set?)"))?;
    let status = resp.status();
    let body = resp.text().context("reading the metrics")?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}");
    }
    Ok(Scrape::from_samples(&text::parse(&body)))
}

/// Router id → name, from the API; empty when it cannot be asked (top works without it).
fn names(api: Option<&Client>) -> BTreeMap<String, String> {
    let Some(c) = api else {
        return BTreeMap::new();
    };
    c.list(super::resolve::Resource::Router, &[])
        .map(|routers| {
            routers
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get("id")?.as_str()?.to_string(),
                        r.get("name")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `top`; `api`, when there is one, only names the routers.
pub fn run(args: &TopArgs, api: Option<&Client>) -> Result<()> {
    let interval = if args.interval.is_finite() && args.interval > 0.0 {
        args.interval
    } else {
        anyhow::bail!("--interval must be a positive number of seconds");
    };
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    if args.once {
        let first = scrape(&http, &args.metrics_url)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(interval));
        let cur = scrape(&http, &args.metrics_url)?;
        let names = names(api);
        let rows = rows(Some(&first), &cur, t0.elapsed().as_secs_f64(), &names);
        let view = View {
            url: &args.metrics_url,
            scrape: &cur,
            rows: &rows,
            interval,
            error: None,
            live: false,
        };
        let height = 3 + u16::try_from(rows.len()).unwrap_or(u16::MAX - 3);
        let mut buf = Buffer::empty(Rect::new(0, 0, table_width().max(120), height));
        render(&view, buf.area, &mut buf);
        print!("{}", buffer_text(&buf));
        return Ok(());
    }
    live(args, interval, &http, api)
}

/// The refreshing view, until q, Esc or Ctrl-C.
fn live(
    args: &TopArgs,
    interval: f64,
    http: &reqwest::blocking::Client,
    api: Option<&Client>,
) -> Result<()> {
    let mut terminal = ratatui::try_init().context("starting the terminal view")?;
    let result = (|| -> Result<()> {
        let mut names = names(api);
        let mut prev: Option<(Scrape, Instant)> = None;
        let mut shown = Scrape::default();
        let mut rows_now = Vec::new();
        loop {
            let error = match scrape(http, &args.metrics_url) {
                Ok(cur) => {
                    let now = Instant::now();
                    let secs = prev.as_ref().map_or(0.0, |(_, t)| (now - *t).as_secs_f64());
                    if cur.routers.keys().any(|id| !names.contains_key(id)) {
                        names = self::names(api);
                    }
                    rows_now = rows(prev.as_ref().map(|(p, _)| p), &cur, secs, &names);
                    shown = cur.clone();
                    prev = Some((cur, now));
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            };
            let view = View {
                url: &args.metrics_url,
                scrape: &shown,
                rows: &rows_now,
                interval,
                error,
                live: true,
            };
            terminal.draw(|f| render(&view, f.area(), f.buffer_mut()))?;
            let until = Instant::now() + Duration::from_secs_f64(interval);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::try_restore().context("restoring the terminal")?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
router_ctl_router_packets_total{router_id=\"a\",direction=\"out\"} 100
router_ctl_router_packets_total{router_id=\"a\",direction=\"in\"} 50
router_ctl_router_packets_total{router_id=\"b\",direction=\"out\"} 10
router_ctl_router_drops_total{router_id=\"a\",reason=\"drop_no_port\"} 2
router_ctl_router_drops_total{router_id=\"a\",reason=\"drop_table_full\"} 3
router_ctl_router_sessions{router_id=\"a\"} 7
router_ctl_router_sessions{router_id=\"b\"} 1
router_ctl_session_table_entries 9
router_ctl_session_table_capacity 262144
router_ctl_gc_passes_total 4
";

    #[test]
    fn rows_rank_routers_by_rate_and_sum_drops() {
        let cur = Scrape::from_samples(&text::parse(SCRAPE));
        assert_eq!(cur.routers["a"].drops, 5.0);
        let mut prev = cur.clone();
        prev.routers.get_mut("a").expect("a").out_packets = 96.0;
        prev.routers.get_mut("b").expect("b").out_packets = 0.0;
        let names = BTreeMap::from([("a".to_string(), "r-a".to_string())]);
        let r = rows(Some(&prev), &cur, 2.0, &names);
        assert_eq!(r[0].id, "b", "b went 10 packets in 2 s, a 4");
        assert_eq!(r[0].pps_out, 5.0);
        assert_eq!(r[1].name, "r-a");
        assert_eq!(r[1].sessions, 7.0);
    }

    #[test]
    fn a_frame_renders_as_plain_text() {
        let cur = Scrape::from_samples(&text::parse(SCRAPE));
        let r = rows(None, &cur, 0.0, &BTreeMap::new());
        let view = View {
            url: "x",
            scrape: &cur,
            rows: &r,
            interval: 1.0,
            error: None,
            live: false,
        };
        let mut buf = Buffer::empty(Rect::new(0, 0, 120, 5));
        render(&view, buf.area, &mut buf);
        let text = buffer_text(&buf);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("router-ctl top: 2 routers · session table 9/262144"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("ROUTER") && lines[2].contains("SESSIONS"),
            "{text}"
        );
        assert!(
            lines[3].starts_with('a') && lines[3].contains(" 7 "),
            "{text}"
        );
        assert_eq!(human(12_345.0), "12.3k");
    }
}
