//! Rows 3 and 10 run in a private network namespace (root): the Viam Python
//! SDK's WebRTC library queries mDNS on every interface and a public STUN
//! server, and Chromium gathers no candidates without a default route. The
//! namespace has `lo` and a veth pair whose both ends stay inside
//! (198.18.3.1/24, 198.18.3.2/24) with a default route into it, as in
//! docs/interop-notes. `tether-bench` re-runs itself there (`ip netns exec …
//! tether-bench --in-netns IP --only 3,10 --json FILE`, with `TETHER_BIN` set
//! to the tether binary it found) and merges the rows.
//!
//! Inside: one `tether machine` process on 198.18.3.1; tether's own client
//! (in the bench process), the Python SDK and Chromium all measured against
//! it (Chromium against itself).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tether_client::components::Motor;
use tether_client::{DialConf, Options, RobotClient};

use super::connect::{Phases, instrumented_dial};
use super::latency::{is_powered, sample};
use super::procs::{Scratch, Server, TETHER_BIN, machine_config, tether_bin};
use super::python::{Browser, BrowserRun, Sdk, SdkTimes, which};
use super::stats::{Runs, median, ms, quantile, sorted};
use super::{Row, Scale, Selection, read_json};

const PREFIX: &str = "ttbench-";
const IP: &str = "198.18.3.1";
const PEER_IP: &str = "198.18.3.2";
/// Log line of the machine for each WebRTC peer it serves.
const PEER_CONNECTED: &str = "webrtc peer connected";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip").args(args).output().context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn pids_in(name: &str) -> Vec<i32> {
    std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn kill(pid: i32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// The bench's namespace; deleted (with whatever still runs in it) on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> anyhow::Result<Self> {
        // Namespaces of earlier runs that were killed: their pid is gone.
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next())
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    drop(Namespace { name });
                }
            }
        }
        let name = format!("{PREFIX}{}-{}", std::process::id(), rand::random::<u16>());
        ip(&["netns", "add", &name])?;
        let ns = Namespace { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", "tb0", "type", "veth", "peer", "name", "tb1"])?;
        ip(&["-n", n, "addr", "add", &format!("{IP}/24"), "dev", "tb0"])?;
        ip(&["-n", n, "addr", "add", &format!("{PEER_IP}/24"), "dev", "tb1"])?;
        ip(&["-n", n, "link", "set", "tb0", "up"])?;
        ip(&["-n", n, "link", "set", "tb1", "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", PEER_IP, "dev", "tb0"])?;
        Ok(ns)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for pid in pids_in(&self.name) {
            if pid as u32 != std::process::id() {
                kill(pid);
            }
        }
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|r| r.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

fn skipped(selection: &Selection, reason: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    if selection.has(3) {
        rows.push(Row::skipped(3, "WebRTC connect time by phase (network namespace)", reason));
    }
    if selection.has(10) {
        rows.push(Row::skipped(10, "Viam Python SDK vs tether client latency", reason));
    }
    rows
}

/// Rows 3 and 10: creates the namespace and runs the bench's child half in it.
pub(crate) async fn rows(selection: &Selection, scale: Scale) -> anyhow::Result<Vec<Row>> {
    if !is_root() {
        return Ok(skipped(selection, "needs root for a network namespace (ip netns)"));
    }
    if which("ip").is_none() {
        return Ok(skipped(selection, "no `ip` (iproute2) for a network namespace"));
    }
    let ns = Namespace::create()?;
    let scratch = Scratch::new("netns")?;
    let json = scratch.path("rows.json");
    let exe = std::env::current_exe().context("cannot find the tether-bench executable")?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(exe)
        .args(["--in-netns", IP, "--only", &selection.to_arg(&[3, 10]), "--json"])
        .arg(&json)
        .env(TETHER_BIN, tether_bin()?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if scale.quick {
        cmd.arg("--quick");
    }
    let status = tokio::time::timeout(Duration::from_secs(900), cmd.status())
        .await
        .map_err(|_| anyhow!("the namespace half did not finish within 15 minutes"))??;
    if !status.success() {
        bail!("the namespace half failed ({status})");
    }
    let rows = read_json(&json)?;
    drop(ns);
    Ok(rows)
}

/// The child half, inside the namespace.
pub(crate) async fn inside(selection: &Selection, scale: Scale, ip: &str) -> Vec<Row> {
    match inside_rows(selection, scale, ip).await {
        Ok(rows) => rows,
        Err(e) => skipped(selection, &format!("failed: {e:#}")),
    }
}

async fn inside_rows(selection: &Selection, scale: Scale, ip: &str) -> anyhow::Result<Vec<Row>> {
    let scratch = Scratch::new("ns-machine")?;
    let config = machine_config(&[("motor1", "motor")], "2s", &[]);
    let machine = Server::machine(&scratch, &config, &format!("{ip}:0"), "info").await?;
    // The Python SDK dials the address and names it as the host: do the same.
    let addr = machine.addr.clone();
    let webrtc = super::inproc::webrtc_conf(&addr, &addr);
    let direct = DialConf::direct(addr.clone());
    let sdk = Sdk::find();
    let mut rows = Vec::new();
    super::inproc::connect_when_online(webrtc.clone()).await?.close().await;

    // Row 3: tether's connect, by phase (instrumented dial) and whole (RobotClient::connect), interleaved.
    let connects = scale.pick(4, 20);
    let warm = scale.pick(1, 2);
    let mut phases: Vec<Phases> = Vec::new();
    let mut whole = Vec::new();
    if selection.has(3) {
        for i in 0..warm + connects {
            let p = instrumented_dial(&addr, &addr).await?;
            let t = Instant::now();
            let robot = RobotClient::connect(webrtc.clone(), Options::default()).await?;
            let total = ms(t.elapsed());
            robot.close().await;
            if std::env::var_os("TETHER_BENCH_DEBUG").is_some() {
                eprintln!("bench: dial {i}: {p:?}; RobotClient::connect {total:.2} ms");
            }
            if i >= warm {
                phases.push(p);
                whole.push(total);
            }
        }
    }

    // Row 10: tether's client, direct and over WebRTC.
    let (runs, calls, warmup) = scale.pick((2, 300, 100), (5, 1000, 300));
    let mut ours: Vec<(&str, Runs)> = Vec::new();
    if selection.has(10) {
        for (label, conf) in [("direct", &direct), ("WebRTC", &webrtc)] {
            let robot = RobotClient::connect(conf.clone(), Options::default()).await?;
            let motor = Motor::from_robot(&robot, "motor1");
            sample(warmup, || is_powered(&motor)).await?;
            let mut r = Runs::default();
            for _ in 0..runs {
                r.push(sample(calls, || is_powered(&motor)).await?);
            }
            robot.close().await;
            ours.push((label, r));
        }
    }

    // The Python SDK: WebRTC connects (row 3) and calls (row 10) in one process, then direct calls (row 10).
    let (py_webrtc, py_direct): (Result<SdkTimes, String>, Result<SdkTimes, String>) = match &sdk {
        Err(why) => (Err(why.clone()), Err(why.clone())),
        Ok(sdk) => {
            let (py_connects, py_calls) =
                (if selection.has(3) { connects } else { 0 }, if selection.has(10) { calls } else { 0 });
            let before = machine.log_count(PEER_CONNECTED);
            let args = [
                ("connects", py_connects),
                ("warm-connects", warm),
                ("calls", py_calls),
                ("runs", runs),
                ("warmup", warmup),
                ("timeout", scale.pick(3, 15)),
            ];
            let webrtc = match sdk.run(&addr, true, &args).await {
                Ok(t) => {
                    // Prove WebRTC: the machine served one peer per SDK dial (its log
                    // line may trail the SDK's exit a little).
                    let dials = (warm + py_connects).saturating_sub(t.failed_connects) + usize::from(py_calls > 0);
                    let served = || machine.log_count(PEER_CONNECTED).saturating_sub(before);
                    let give_up = Instant::now() + Duration::from_secs(2);
                    while served() < dials && Instant::now() < give_up {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let peers = served();
                    if peers >= dials {
                        Ok(t)
                    } else {
                        Err(format!(
                            "the SDK fell back to direct gRPC: the machine served {peers} WebRTC peers for {dials} dials"
                        ))
                    }
                }
                Err(e) => Err(format!("failed: {e:#}")),
            };
            let direct = if selection.has(10) {
                let a = [("calls", calls), ("runs", runs), ("warmup", warmup)];
                sdk.run(&addr, false, &a).await.map_err(|e| format!("failed: {e:#}"))
            } else {
                Err("not selected".into())
            };
            (webrtc, direct)
        }
    };

    if selection.has(3) {
        let browser = match Browser::find() {
            Ok(b) => b.run(connects, scale.pick(2, 3)).await.map_err(|e| format!("failed: {e:#}")),
            Err(why) => Err(why),
        };
        let lost_opens = machine.log_count("negotiated-channel race");
        rows.extend(connect_rows(&phases, &whole, &browser, &py_webrtc, lost_opens));
        rows.push(tail_row(&phases));
    }
    if selection.has(10) {
        rows.extend(sdk_rows(&ours, &py_direct, &py_webrtc));
    }
    machine.stop().await;
    Ok(rows)
}

fn connect_rows(
    phases: &[Phases],
    whole: &[f64],
    browser: &Result<Vec<BrowserRun>, String>,
    python: &Result<SdkTimes, String>,
    lost_opens: usize,
) -> Vec<Row> {
    let ours = |f: fn(&Phases) -> f64| median(&phases.iter().map(f).collect::<Vec<_>>());
    let theirs =
        |f: fn(&BrowserRun) -> f64| browser.as_ref().ok().map(|b| median(&b.iter().map(f).collect::<Vec<_>>()));
    let n = phases.len();
    let mut rows = Vec::new();
    // Phase durations: each is the median of (end of phase − end of the phase before) per dial.
    let split =
        |a: fn(&Phases) -> f64, b: fn(&Phases) -> f64| median(&phases.iter().map(|p| b(p) - a(p)).collect::<Vec<_>>());
    let split_b = |a: fn(&BrowserRun) -> f64, b: fn(&BrowserRun) -> f64| {
        browser.as_ref().ok().map(|r| median(&r.iter().map(|p| b(p) - a(p)).collect::<Vec<_>>()))
    };
    let phase_rows: [(&str, f64, Option<f64>, &str); 5] = [
        (
            "signaling: dial start → answer applied",
            ours(|p| p.answer),
            theirs(|b| b.signaling),
            "ours: HTTP/2 connect to the signaler, OptionalWebRTCConfig, peer + offer, Call, the machine's answer; \
             Chromium: offer/answer handed over in-page",
        ),
        ("ICE: answer → ICE connected", split(|p| p.answer, |p| p.ice), split_b(|b| b.signaling, |b| b.ice), ""),
        ("DTLS: ICE connected → DTLS connected", split(|p| p.ice, |p| p.dtls), split_b(|b| b.ice, |b| b.dtls), ""),
        (
            "SCTP: DTLS connected → data channel open",
            split(|p| p.dtls, |p| p.open),
            split_b(|b| b.dtls, |b| b.open),
            "",
        ),
        (
            "first RPC: channel open → GetVersion answered",
            split(|p| p.open, |p| p.first_rpc),
            split_b(|b| b.open, |b| b.first),
            "",
        ),
    ];
    let waited = split(|p| p.open, |p| p.ended);
    for (name, value, browser_value, note) in phase_rows {
        let note = if name.starts_with("first RPC") {
            format!(
                "ours: {waited:.2} ms of it wait for the signaler to end the call (the machine's side open, as the \
                 client's dial does), then GetVersion; Chromium: one message echoed by the other side"
            )
        } else {
            note.to_owned()
        };
        let mut row = Row::new(3, format!("WebRTC connect phase, {name}"), value, "ms");
        if let Some(b) = browser_value {
            row = row.baseline(format!("Chromium↔Chromium, same phase: {b:.2} ms"));
        }
        rows.push(row.note(note));
    }
    let open = ours(|p| p.open);
    let mut total = Row::new(3, "WebRTC connect: dial start → data channel open", open, "ms");
    total = match browser {
        Ok(b) => {
            let chrome = median(&b.iter().map(|r| r.open).collect::<Vec<_>>());
            total
                .baseline(format!("Chromium↔Chromium data channel open, same namespace: {chrome:.2} ms"))
                .ratio(open / chrome)
                .goal(1.5)
                .note(format!(
                    "median of {n} dials after warm-up dials, to a `tether machine` process in the namespace; \
                     Chromium: median of {} in-page connections (negotiated channel, raw-IP host candidates)",
                    b.len()
                ))
        }
        Err(why) => Row::skipped(3, "WebRTC connect to data channel open vs Chromium↔Chromium", why.clone()),
    };
    rows.push(total);
    let first = ours(|p| p.first_rpc);
    let connect = median(whole);
    rows.push(
        Row::new(3, "WebRTC connect: RobotClient::connect (dial + first RPC)", connect, "ms")
            .baseline(format!("the instrumented dial to first RPC: {first:.2} ms"))
            .ratio(connect / first)
            .note("the two should agree: the phases come from a step-by-step copy of the client's dial"),
    );
    rows.push(match python {
        Ok(t) if !t.connect_ms.is_empty() => {
            let py = median(&t.connect_ms);
            Row::new(3, "WebRTC connect vs the Viam Python SDK", connect, "ms")
                .baseline(format!("viam-sdk RobotClient.at_address over WebRTC (verified): {py:.1} ms"))
                .ratio(connect / py)
                .note(format!(
                    "median of {} SDK connects after warm-ups (p90 {:.1} ms); the SDK's connect also lists \
                     resources; SDK dials that failed: {} (after {}); data channels the machine lost in this run \
                     (webrtc-rs 0.17: the caller's first message beat the machine's own open of the negotiated \
                     channel; the machine then closes the connection at once): {lost_opens}",
                    t.connect_ms.len(),
                    quantile(&sorted(t.connect_ms.clone()), 0.9),
                    t.failed_connects,
                    if t.failed_ms.is_empty() {
                        "–".to_string()
                    } else {
                        t.failed_ms.iter().map(|ms| format!("{ms:.0} ms")).collect::<Vec<_>>().join(", ")
                    }
                ))
        }
        Ok(_) => Row::skipped(3, "WebRTC connect vs the Viam Python SDK", "the SDK made no timed connects"),
        Err(why) => Row::skipped(3, "WebRTC connect vs the Viam Python SDK", why.clone()),
    });
    rows
}

/// The slow dials. A tail near 1 s is webrtc-ice's peer-reflexive
/// nomination wait, which `new_peer` sets to 0.
fn tail_row(ours: &[Phases]) -> Row {
    let firsts = sorted(ours.iter().map(|x| x.first_rpc).collect());
    let slow = firsts.iter().filter(|x| **x > 100.0).count();
    let (p50, p90) = (quantile(&firsts, 0.5), quantile(&firsts, 0.9));
    Row::new(3, "WebRTC connect to first RPC: p90 (the slow tail)", p90, "ms")
        .baseline(format!("the median of the same dials: {p50:.1} ms"))
        .ratio(p90 / p50)
        .note(format!(
            "dials over 100 ms: {slow} of {} (max {:.0} ms). webrtc-ice 0.17 nominates a pair whose remote candidate \
             is peer-reflexive (the machine's check arrived before its trickled candidate) only after \
             prflx_acceptance_min_wait, 1 s by default; new_peer sets it to 0 on both ends, as browsers behave. A tail \
             near 1 s means that wait is back",
            firsts.len(),
            firsts.last().copied().unwrap_or_default()
        ))
}

fn sdk_rows(ours: &[(&str, Runs)], direct: &Result<SdkTimes, String>, webrtc: &Result<SdkTimes, String>) -> Vec<Row> {
    let mut rows = Vec::new();
    for ((label, mine), theirs) in ours.iter().zip([direct, webrtc]) {
        let name = |q: &str| format!("unary IsPowered {q}, {label}: tether client vs Viam Python SDK");
        match theirs {
            Ok(t) if !t.runs.is_empty() => {
                let mut py = Runs::default();
                for r in &t.runs {
                    py.push(r.clone());
                }
                rows.push(
                    Row::new(10, name("p50"), mine.p50(), "µs")
                        .baseline(format!("viam-sdk (Python) to the same machine: {:.0} µs", py.p50()))
                        .ratio(mine.p50() / py.p50())
                        .note(format!("tether {}; SDK {}", mine.describe(), py.describe())),
                );
                rows.push(
                    Row::new(10, name("p99"), mine.p99(), "µs")
                        .baseline(format!("viam-sdk (Python): {:.0} µs", py.p99()))
                        .ratio(mine.p99() / py.p99()),
                );
            }
            Ok(_) => rows.push(Row::skipped(10, name("p50/p99"), "the SDK made no timed calls")),
            Err(why) => rows.push(Row::skipped(10, name("p50/p99"), why.clone())),
        }
    }
    rows
}
