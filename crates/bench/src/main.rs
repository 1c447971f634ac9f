//! `tether-bench`: one markdown table of the stack's performance, each row
//! measured side by side with its baseline in the same run on the same box,
//! as a ratio where lower is better and, where the project has one, a goal
//! the ratio must not exceed.
//!
//! Rows (see docs/PERFORMANCE.md for what each number means):
//!
//! 1. unary latency, direct HTTP/2, vs a raw tonic client/server (the floor);
//! 2. unary latency over WebRTC vs direct;
//! 3. WebRTC connect time by phase, in a network namespace, vs the Viam
//!    Python SDK's connect and a Chromium↔Chromium data channel;
//! 4. bulk GetImage (1 and 8 MiB) over WebRTC vs the raw data channel of the
//!    same stack, and vs direct HTTP/2;
//! 5. 64 concurrent streams on one WebRTC connection; small-call latency
//!    under a bulk transfer (head-of-line blocking);
//! 6. safety stop latency after SIGKILL of a client process (2 s, 30 ms);
//! 7. 10,000 heartbeating sessions against one machine process;
//! 8. signaling exchanges per second, memory per registered machine;
//! 9. machine memory per WebRTC connection (vs per direct connection);
//! 10. the real Viam Python SDK vs tether's client, direct and WebRTC;
//! 11. camera video over WebRTC: capture-to-decoded latency (our client and
//!     Chromium), frames delivered, machine CPU per viewer, RPC latency
//!     while a stream plays.
//!
//! Rows that need something absent (root for network namespaces, the Python
//! venv, Chromium) are printed as `skipped: <reason>`.
//!
//! Rows 3 and 6-11 start `tether` child processes (`tether machine`,
//! `tether signaling`, `tether call`): the binary is `$TETHER_BIN`, else the
//! `tether` next to this executable (`cargo build --release -p tether
//! -p tether-bench` puts both in target/release/).

// A binary: its items are documented where it helps, not for an API.
#![allow(missing_docs)]

mod bulk;
mod connect;
mod floor;
mod inproc;
mod latency;
mod memory;
mod netns;
mod procs;
mod profile;
mod python;
mod safety;
mod sessions;
mod signaling;
mod stats;
mod video;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Arguments of `tether-bench`.
#[derive(Parser, Debug)]
#[command(
    name = "tether-bench",
    version,
    about = "Measure the tether stack against its baselines (raw tonic, the raw data channel, Chromium, the Viam \
             Python SDK) and print one markdown table"
)]
pub struct BenchArgs {
    /// Every row at reduced counts (the whole table in under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Also write the rows to FILE as JSON: {"rows": [{"name", "value", "unit", "baseline", "ratio", "goal"}]}.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only these rows: comma-separated row numbers (1-11) or names (unary-direct, unary-webrtc, connect, bulk,
    /// concurrency, safety, sessions, signaling, memory, python, video).
    #[arg(long, value_name = "ROWS")]
    pub only: Option<String>,
    /// Internal: run the namespace rows (3, 10) here, inside the bench's network namespace, whose machine
    /// address is this IP; write the rows to --json.
    #[arg(long, hide = true, value_name = "IP")]
    pub in_netns: Option<String>,
    /// Internal: serve an in-process machine and make N unary calls over WebRTC (for profilers).
    #[arg(long, hide = true, value_name = "N")]
    pub profile_unary: Option<usize>,
}

/// The row groups, by number and name.
const GROUPS: [(u8, &str); 11] = [
    (1, "unary-direct"),
    (2, "unary-webrtc"),
    (3, "connect"),
    (4, "bulk"),
    (5, "concurrency"),
    (6, "safety"),
    (7, "sessions"),
    (8, "signaling"),
    (9, "memory"),
    (10, "python"),
    (11, "video"),
];

/// One line of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// The row group (1-11).
    pub row: u8,
    /// What was measured.
    pub name: String,
    /// The measurement (`null` when skipped).
    pub value: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// What it is compared with, and that baseline's value.
    pub baseline: String,
    /// value vs baseline, defined so that lower is better (`null`: no baseline).
    pub ratio: Option<f64>,
    /// The bound `ratio` must not exceed (`null`: reported only).
    pub goal: Option<f64>,
    /// Why the row was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How it was measured, or what a miss means.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Row {
    /// A measured row.
    pub fn new(row: u8, name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            row,
            name: name.into(),
            value: Some(value),
            unit: unit.to_owned(),
            baseline: String::new(),
            ratio: None,
            goal: None,
            skipped: None,
            note: String::new(),
        }
    }

    /// A row that could not be measured here.
    pub fn skipped(row: u8, name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { value: None, skipped: Some(reason.into()), ..Self::new(row, name, 0.0, "") }
    }

    /// Names the baseline (with its value).
    pub fn baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    /// Sets the ratio (lower is better).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    /// Sets the goal for the ratio.
    pub fn goal(mut self, goal: f64) -> Self {
        self.goal = Some(goal);
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Whether the goal is met (`None` without a goal or a ratio).
    pub fn met(&self) -> Option<bool> {
        Some(self.ratio? <= self.goal?)
    }
}

/// Which row groups run.
#[derive(Clone, Debug)]
pub struct Selection(Vec<u8>);

impl Selection {
    /// `None` = every row; else comma-separated numbers or (parts of) names.
    fn parse(only: Option<&str>) -> anyhow::Result<Self> {
        let Some(only) = only else { return Ok(Self(GROUPS.iter().map(|g| g.0).collect())) };
        let mut ids = Vec::new();
        for f in only.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let before = ids.len();
            for (id, name) in GROUPS {
                if f.parse::<u8>().ok() == Some(id) || (f.parse::<u8>().is_err() && name.contains(f)) {
                    ids.push(id);
                }
            }
            if ids.len() == before {
                bail!("--only {f:?} names no row (rows: 1-11 or {})", GROUPS.map(|g| g.1).join(", "));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(Self(ids))
    }

    /// Whether group `id` runs.
    pub fn has(&self, id: u8) -> bool {
        self.0.contains(&id)
    }

    /// As an `--only` value.
    fn to_arg(&self, ids: &[u8]) -> String {
        self.0.iter().filter(|i| ids.contains(i)).map(u8::to_string).collect::<Vec<_>>().join(",")
    }
}

/// Counts: `--quick` or full.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub quick: bool,
}

impl Scale {
    /// `quick` under --quick, else `full`.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Row groups that start `tether` child processes.
const NEED_TETHER: [u8; 7] = [3, 6, 7, 8, 9, 10, 11];

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    // The rows print what they measure; logs only for errors unless TETHER_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // The same runtime as the tether binary's: the in-process machines and
    // clients must behave as the product does.
    let runtime = match tether_transport::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench.
async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = args.profile_unary {
        return profile::run(n).await;
    }
    let selection = Selection::parse(args.only.as_deref())?;
    if NEED_TETHER.iter().any(|id| selection.has(*id)) {
        procs::tether_bin()?;
    }
    let scale = Scale { quick: args.quick };
    if let Some(ip) = &args.in_netns {
        // The child half of rows 3 and 10, inside the namespace.
        let rows = netns::inside(&selection, scale, ip).await;
        write_json(args.json.as_deref().context("--in-netns needs --json")?, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let load_before = procs::load_average();
    let mut rows = Vec::new();
    let groups: [(&[u8], &str); 9] = [
        (&[1, 2], "unary latency"),
        (&[4], "bulk throughput"),
        (&[5], "concurrency"),
        (&[6], "safety stops"),
        (&[7], "sessions at scale"),
        (&[8], "signaling"),
        (&[9], "memory per connection"),
        (&[3, 10], "network namespace: connect time, Python SDK"),
        (&[11], "camera video"),
    ];
    for (ids, title) in groups {
        if !ids.iter().any(|i| selection.has(*i)) {
            continue;
        }
        eprintln!("bench: {title} (row {}) …", selection.to_arg(ids).replace(',', ", "));
        let t = Instant::now();
        let result = match ids[0] {
            1 => latency::rows(&selection, scale).await,
            4 => bulk::rows(scale).await,
            5 => bulk::concurrency_rows(scale).await,
            6 => safety::rows(scale).await,
            7 => sessions::rows(scale).await,
            8 => signaling::rows(scale).await,
            9 => memory::rows(scale).await,
            11 => video::rows(scale).await,
            _ => netns::rows(&selection, scale).await,
        };
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("bench: {title} failed: {e:#}");
                for id in ids.iter().filter(|i| selection.has(**i)) {
                    rows.push(Row::skipped(*id, title, format!("failed: {e:#}")));
                }
            }
        }
        eprintln!("bench: {title} took {:.1} s", t.elapsed().as_secs_f64());
    }
    rows.sort_by_key(|r| r.row);
    let load = (load_before, procs::load_average());
    print!("{}", render(&rows, &args, started.elapsed().as_secs_f64(), load));
    if let Some(path) = &args.json {
        write_json(path, &rows)?;
    }
    let failed = rows.iter().any(|r| r.skipped.as_deref().is_some_and(|s| s.starts_with("failed")));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Serialize, Deserialize)]
struct JsonRows {
    rows: Vec<Row>,
}

fn write_json(path: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&JsonRows { rows: rows.to_vec() })?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// Reads rows written by [`write_json`] (the namespace child's).
fn read_json(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(serde_json::from_str::<JsonRows>(&text)?.rows)
}

/// A number with sensible precision.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The machine, the command and the table (markdown).
fn render(rows: &[Row], args: &BenchArgs, secs: f64, load: (f64, f64)) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "\n## tether-bench{}\n", if args.quick { " (--quick)" } else { "" });
    let _ = writeln!(out, "{}", host_description());
    let command: Vec<String> = std::env::args().collect();
    let _ = writeln!(out, "- command: `{}` ({secs:.0} s)", command.join(" "));
    let _ = writeln!(
        out,
        "- load average (1 min) before / after: {:.2} / {:.2} (other work on the box skews every row)\n",
        load.0, load.1
    );
    let _ = writeln!(out, "| # | measurement | value | baseline | ratio | goal | |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rows {
        let (value, ratio, goal, met) = match &r.skipped {
            Some(why) => (format!("skipped: {why}"), String::new(), String::new(), String::new()),
            None => (
                r.value.map(|v| format!("{} {}", num(v), r.unit)).unwrap_or_default(),
                r.ratio.map(|x| format!("{}x", num(x))).unwrap_or_else(|| "–".into()),
                r.goal.map(|g| format!("≤ {}x", num(g))).unwrap_or_else(|| "–".into()),
                match r.met() {
                    Some(true) => "✓".into(),
                    Some(false) => "✗ missed".into(),
                    None => String::new(),
                },
            ),
        };
        let baseline = if r.baseline.is_empty() { "–" } else { r.baseline.as_str() };
        let _ = writeln!(out, "| {} | {} | {value} | {baseline} | {ratio} | {goal} | {met} |", r.row, r.name);
    }
    let notes: Vec<&Row> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for r in notes {
            let _ = writeln!(out, "- **{} {}**: {}", r.row, r.name, r.note);
        }
    }
    out
}

/// CPU model, cores, memory, kernel.
fn host_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().to_owned()))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("- machine: {model}, {cores} cores, {mem} RAM, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        assert!(Selection::parse(None).unwrap().has(10));
        let s = Selection::parse(Some("1, 8,unary-webrtc")).unwrap();
        assert!(s.has(1) && s.has(2) && s.has(8) && !s.has(3));
        let s = Selection::parse(Some("unary")).unwrap();
        assert!(s.has(1) && s.has(2) && !s.has(4));
        assert!(Selection::parse(Some("nope")).is_err());
        assert_eq!(Selection::parse(Some("3,10,1")).unwrap().to_arg(&[3, 10]), "3,10");
    }

    #[test]
    fn rows_render() {
        let r = Row::new(1, "x", 12.345, "µs").baseline("y 10 µs").ratio(1.2345).goal(1.2);
        assert_eq!(r.met(), Some(false));
        let args = BenchArgs { quick: true, json: None, only: None, in_netns: None, profile_unary: None };
        let t = render(&[r, Row::skipped(3, "z", "no root")], &args, 1.0, (0.5, 0.5));
        assert!(t.contains("| 1 | x | 12.3 µs | y 10 µs | 1.23x | ≤ 1.20x | ✗ missed |"), "{t}");
        assert!(t.contains("skipped: no root"));
    }
}
