//! `tether demo` and `tether call ADDR watch`, end to end with the built
//! binary: the demo's JSON report, and watch's live connection events while
//! a `tether machine` child process is killed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// A child process, killed when dropped, with its stdout as lines.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("TETHER_LOG", "error")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tether {args:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Self { child, lines, stderr }
    }

    /// The next stdout line, or None when the limit passes or stdout ends.
    fn line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The next stdout line as a JSON object.
    #[track_caller]
    fn json_line(&self, limit: Duration) -> serde_json::Value {
        let line = self.line(limit).unwrap_or_else(|| panic!("no line within {limit:?}"));
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(value.is_object(), "not an object: {line}");
        value
    }

    /// Reads JSON lines until one has `event` = `name`; returns it and the
    /// events before it.
    #[track_caller]
    fn wait_for_event(&self, name: &str, limit: Duration) -> (serde_json::Value, Vec<serde_json::Value>) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.line(left) else {
                panic!("no {name:?} event within {limit:?}; saw {seen:?}");
            };
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(value["event"].is_string(), "every line has an event field: {line}");
            if value["event"] == name {
                return (value, seen);
            }
            seen.push(value);
        }
    }

    /// Waits for the process to exit on its own.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything written on stderr (after the process has exited).
    fn stderr(&mut self) -> String {
        self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `tether machine` on a free port; returns it and its address.
fn machine(config: Option<&str>) -> (Proc, String, Option<tempfile::NamedTempFile>) {
    let file = config.map(|c| {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, c.as_bytes()).expect("write config");
        f
    });
    let mut args = vec!["machine", "--listen", "127.0.0.1:0"];
    if let Some(f) = &file {
        args.extend(["--config", f.path().to_str().expect("utf-8 path")]);
    }
    let m = Proc::spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.line(left) {
            Some(line) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let addr = addr.trim().to_owned();
                    return (m, addr, file);
                }
            }
            None => panic!("tether machine did not report its address"),
        }
    }
}

// ---------------------------------------------------------------------------
// tether demo
// ---------------------------------------------------------------------------

#[test]
fn demo_json_shows_the_stop_and_the_resumed_session_within_a_minute() {
    let started = Instant::now();
    let mut demo = Proc::spawn(&["demo", "--json"]);
    let status = demo.wait(Duration::from_secs(60));
    let took = started.elapsed();
    let mut lines = Vec::new();
    while let Ok(line) = demo.lines.recv_timeout(Duration::from_secs(1)) {
        lines.push(line);
    }
    let stderr = demo.stderr();
    let Some(status) = status else {
        demo.kill();
        panic!("tether demo did not finish within 60 s; output so far:\n{}", lines.join("\n"));
    };
    assert!(status.success(), "tether demo failed ({status}):\n{}\nstderr: {stderr}", lines.join("\n"));
    assert!(took < Duration::from_secs(60), "took {took:?}");

    let values: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))).collect();
    for v in &values {
        assert!(v["kind"].is_string() && v["step"].is_string() && v["t_ms"].is_number(), "{v}");
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| values.iter().find(|v| pred(v)).cloned();

    // The killed client process: the machine stopped motor1, with the delay.
    let stop = find(&|v| v["kind"] == "safety_stop" && v["step"] == "kill")
        .unwrap_or_else(|| panic!("no safety_stop in the kill step:\n{}", lines.join("\n")));
    assert_eq!(stop["resource"], "motor1", "{stop}");
    let delay = stop["delay_ms"].as_f64().expect("delay_ms");
    assert!(delay > 0.0 && delay < 3000.0, "{stop}");
    assert!(stop["after_deadline_ms"].is_number(), "{stop}");

    // The short cut: the same session resumed.
    let resumed = find(&|v| v["kind"] == "event" && v["event"] == "session_resumed")
        .unwrap_or_else(|| panic!("no session_resumed event:\n{}", lines.join("\n")));
    assert_eq!(resumed["step"], "short_cut", "{resumed}");
    assert!(resumed["id"].is_string(), "{resumed}");
    let reconnecting = find(&|v| v["event"] == "reconnecting" && v["step"] == "short_cut");
    assert!(reconnecting.is_some(), "no reconnecting event in the short cut");

    // The long cut: stopped at expiry, and the client says its session lapsed.
    assert!(find(&|v| v["kind"] == "safety_stop" && v["step"] == "long_cut").is_some());
    let lapsed = find(&|v| v["event"] == "session_lapsed").expect("a session_lapsed event");
    assert_eq!(lapsed["old"], resumed["id"], "{lapsed}");

    // Where its metrics are, and what they counted: the killed client's and the long cut's
    // sessions expired and stopped the motor; the short cut's resumed.
    let url = find(&|v| v["metrics"].is_string()).expect("a line with the metrics URL");
    let url = url["metrics"].as_str().unwrap_or_default();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"), "{url}");
    let counted = find(&|v| v["sessions_expired"].is_number()).expect("a line with the metrics' counts");
    assert!(counted["sessions_expired"].as_u64() >= Some(2), "{counted}");
    assert!(counted["safety_stops_session_expired"].as_u64() >= Some(2), "{counted}");
    assert!(counted["sessions_resumed"].as_u64() >= Some(1), "{counted}");

    let summary = values.last().expect("output");
    assert_eq!(summary["kind"], "summary", "{summary}");
    assert!(summary["kill_to_stop_ms"].is_number() && summary["short_cut_session_resumed"] == true, "{summary}");
}

// ---------------------------------------------------------------------------
// tether call ADDR watch
// ---------------------------------------------------------------------------

#[test]
fn watch_json_prints_connected_then_reconnecting_when_the_machine_dies() {
    let (mut m, addr, _config) = machine(None);
    let watch = Proc::spawn(&["call", &addr, "watch", "--json"]);
    let first = watch.json_line(Duration::from_secs(30));
    assert_eq!(first["event"], "connected", "{first}");
    assert_eq!(first["method"], "grpc", "{first}");
    assert_eq!(first["reconnected"], false, "{first}");
    assert!(first["ts"].is_string(), "{first}");

    m.kill();
    let (reconnecting, _) = watch.wait_for_event("reconnecting", Duration::from_secs(15));
    assert!(reconnecting["ts"].is_string(), "{reconnecting}");
    // `watch` is dropped (killed) here.
}

#[test]
fn watch_exits_non_zero_after_reconnection_failed() {
    let (mut m, addr, _config) = machine(None);
    let mut watch = Proc::spawn(&[
        "call",
        &addr,
        "watch",
        "--json",
        "--reconnect-max-attempts",
        "2",
        "--reconnect-max-wait-ms",
        "50",
    ]);
    assert_eq!(watch.json_line(Duration::from_secs(30))["event"], "connected");
    m.kill();
    let (failed, seen) = watch.wait_for_event("reconnection_failed", Duration::from_secs(15));
    assert_eq!(failed["attempts"], 2, "{failed}");
    // Count the dials of the outage that failed. (A first redial can race
    // the dying process and reach its listener: that outage then ends with a
    // `connected` that does not last, and a new `reconnecting`.)
    let outage = seen.iter().rposition(|e| e["event"] == "reconnecting").expect("a reconnecting event");
    let dials = seen[outage..].iter().filter(|e| e["event"] == "dialing").count();
    assert_eq!(dials, 2, "{seen:?}");
    let status = watch.wait(Duration::from_secs(10)).expect("watch exits after reconnection_failed");
    assert_eq!(status.code(), Some(1), "{status}");
    let stderr = watch.stderr();
    assert!(stderr.starts_with("error: Unavailable: reconnection failed after 2 attempts"), "{stderr}");
}

#[test]
fn watch_with_no_reconnect_ends_at_the_first_drop() {
    let (mut m, addr, _config) = machine(None);
    let mut watch = Proc::spawn(&["call", &addr, "watch", "--json", "--no-reconnect"]);
    assert_eq!(watch.json_line(Duration::from_secs(30))["event"], "connected");
    m.kill();
    let (disconnected, seen) = watch.wait_for_event("disconnected", Duration::from_secs(15));
    assert!(disconnected["error"].is_string(), "{disconnected}");
    assert!(seen.iter().all(|e| e["event"] != "reconnecting" && e["event"] != "dialing"), "{seen:?}");
    let status = watch.wait(Duration::from_secs(10)).expect("watch exits");
    assert_eq!(status.code(), Some(1), "{status}");
}

#[test]
fn watch_over_webrtc_names_the_transport_and_candidate_pair() {
    let (_m, addr, _config) = machine(Some(
        r#"{"components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
            "network": {"hosts": ["watch-bot"], "ice_servers": []}}"#,
    ));
    let watch = Proc::spawn(&["call", &addr, "watch", "--json", "--webrtc", "--host", "watch-bot", "--no-stun"]);
    let first = watch.json_line(Duration::from_secs(30));
    assert_eq!(first["event"], "connected", "{first}");
    assert_eq!(first["method"], "webrtc", "{first}");
    assert!(first["candidate_pair"].as_str().is_some_and(|p| p.contains('/')), "{first}");
}

#[test]
fn watch_prints_readable_lines_and_a_liveness_probe() {
    let (_m, addr, _config) = machine(None);
    let watch = Proc::spawn(&["call", &addr, "watch"]);
    let heading = watch.line(Duration::from_secs(30)).expect("a heading");
    assert!(heading.starts_with(&format!("watching {addr} over direct gRPC")), "{heading}");
    let connected = watch.line(Duration::from_secs(30)).expect("a connected line");
    assert!(connected.contains("● connected over direct gRPC, rtt "), "{connected}");
    assert!(!connected.contains('\x1b'), "no colours when stdout is not a terminal: {connected:?}");
    // Not a terminal: each probe (every 2 s) is a line of its own.
    let probe = watch.line(Duration::from_secs(10)).expect("a liveness line");
    assert!(probe.contains("alive, rtt "), "{probe}");
}
