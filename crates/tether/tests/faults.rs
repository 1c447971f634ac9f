//! Fault injection with real network cuts: the client SDK's reconnection,
//! session resumption and call failures, with the built `tether` binary as
//! the machine and the signaling service and `examples/fault_client.rs` as
//! the client, each in its own network namespace.
//!
//! ```text
//!   machine 10.77.1.2 ──m0── router ──c0── client 10.77.2.2
//!                            s0 │
//!                      signaling 10.77.3.2:8081
//! ```
//!
//! The router only forwards (no NAT). Faults are made for real: the client's
//! link is taken down at the router (`ip link set c0 down`: the client's
//! interface loses carrier and everything it sends is silently lost), an
//! nftables rule on the router blackholes the client, and the machine and
//! signaling processes are SIGKILLed and started again on the same address.
//! The machine's heartbeat window is [`WINDOW`]; the client notices a silent
//! link after about [`LIVENESS_INTERVAL`] + [`LIVENESS_TIMEOUT`].
//!
//! The client prints every connection event and a `tick` (one small call)
//! every 200 ms as JSON lines with wall-clock timestamps, so delays are
//! measured from the moment the test made the fault to the line the client
//! printed (both clocks are the same host's).
//!
//! These tests need root, `ip` (iproute2) and `nft` (nftables), and the
//! example client: the test builds it with cargo when run by `cargo test`
//! (otherwise it must already exist: `cargo build -p tether --examples`).
//! They are `#[ignore]`d so that a plain `cargo test` works anywhere;
//! scripts/test-all.sh runs them with
//!
//! ```text
//! cargo test -p tether --test faults -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Set `TETHER_FAULTS_LOG` (e.g. `debug,webrtc_ice=info`) to pass a log
//! filter to every tether process and the client; the logs of a failed test
//! are printed with the failure. Namespaces are named
//! `ttflt-<pid>-<n>-<role>` and removed when the test ends, pass or fail.

mod netns;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns::{Lab, Proc, Suite, secs, serial, strip_ansi, tail};
use serde_json::Value;

const SUITE: Suite =
    Suite { prefix: "ttflt-", name: "fault-injection", extra_tools: &[], log_var: "TETHER_FAULTS_LOG" };

const MACHINE_ADDR: &str = "10.77.1.2:8080";
const CLIENT_IP: &str = "10.77.2.2";
const SIGNALING_LISTEN: &str = "10.77.3.2:8081";
const SIGNALING_URL: &str = "http://10.77.3.2:8081";

/// The machine's session heartbeat window (the client heartbeats every window/5).
const WINDOW: Duration = Duration::from_secs(2);
/// The client's keepalive interval (HTTP/2 PINGs, ICE binding requests).
const LIVENESS_INTERVAL: Duration = Duration::from_millis(150);
/// The client declares a link dead after this long without an answer.
const LIVENESS_TIMEOUT: Duration = Duration::from_millis(450);
/// A cut shorter than the window but longer than the client's detection time.
const SHORT_CUT: Duration = Duration::from_millis(800);
/// A cut longer than the window.
const LONG_CUT: Duration = Duration::from_millis(3500);
/// Dial limit for direct reconnection attempts. An attempt that starts while
/// the link is still down loses its SYN, and the kernel retries a SYN only
/// after 1 s: a short limit lets the next attempt go out as soon as the link
/// is back.
const DIRECT_DIAL_TIMEOUT_MS: &str = "400";
/// Longest wait for anything the client should print.
const EVENT_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Ns {
    Router,
    Machine,
    Client,
    Signaling,
}

impl netns::Role for Ns {
    fn role(&self) -> &str {
        match self {
            Ns::Router => "r",
            Ns::Machine => "m",
            Ns::Client => "c",
            Ns::Signaling => "s",
        }
    }
}

/// Wall-clock milliseconds since the epoch, as the client prints them.
fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

fn ms_between(from: f64, to: f64) -> Duration {
    Duration::from_secs_f64(((to - from) / 1e3).max(0.0))
}

/// A line's `ts_ms`.
#[track_caller]
fn ts(line: &Value) -> f64 {
    line["ts_ms"].as_f64().unwrap_or_else(|| panic!("no ts_ms in {line}"))
}

fn is(line: &Value, event: &str) -> bool {
    line["event"] == event
}

/// The example client, built if `cargo test` runs us (so it is never stale).
fn fault_client() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| netns::example("fault_client"))
}

/// The four namespaces.
struct Net {
    lab: Lab,
    machine_config: PathBuf,
}

impl Deref for Net {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for Net {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Net {
    fn new() -> Self {
        let lab = Lab::new(&SUITE, &["r", "m", "c", "s"]);
        let client = fault_client();
        for (host, router_if, subnet) in [(Ns::Machine, "m0", 1), (Ns::Client, "c0", 2), (Ns::Signaling, "s0", 3)] {
            lab.veth(
                Ns::Router,
                router_if,
                &format!("10.77.{subnet}.1/24"),
                host,
                "eth0",
                &format!("10.77.{subnet}.2/24"),
            );
            lab.ip_in(host, &["route", "add", "default", "via", &format!("10.77.{subnet}.1")]);
        }
        lab.exec(Ns::Router, Path::new("sh"), &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        let machine_config = lab.dir.path().join("machine.json");
        let config = serde_json::json!({
            "components": [
                {"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"},
                {"name": "motor2", "api": "rdk:component:motor", "model": "rdk:builtin:fake"},
            ],
            "network": {
                "ice_servers": [],
                "hosts": ["bot"],
                "sessions": {"heartbeat_window": format!("{}ms", WINDOW.as_millis())},
            },
        });
        std::fs::write(&machine_config, config.to_string()).expect("write machine config");
        assert!(client.is_file());
        Net { lab, machine_config }
    }

    /// Starts (or restarts) the machine on 10.77.1.2:8080, answering WebRTC
    /// calls through the standalone signaling service too.
    fn machine(&mut self) {
        let mut cmd = self.tether(Ns::Machine);
        cmd.args(["machine", "--listen", "0.0.0.0:8080", "--signaling", SIGNALING_URL, "--config"])
            .arg(&self.machine_config);
        let n = self.procs.iter().filter(|p| p.name.starts_with("machine")).count();
        let mut proc = self.spawn(&format!("machine-{n}"), cmd);
        proc.wait_for("listening on", false, Duration::from_secs(20));
        self.procs.push(proc);
    }

    /// SIGKILLs the running machine; the moment just before (fault times are
    /// taken before the fault, so measured delays are never too short).
    fn kill_machine(&mut self) -> f64 {
        let at = now_ms();
        self.latest_mut("machine-").kill();
        at
    }

    /// Starts (or restarts) `tether signaling` on 10.77.3.2:8081.
    fn signaling(&mut self) {
        let mut cmd = self.tether(Ns::Signaling);
        cmd.args(["signaling", "--listen", SIGNALING_LISTEN]);
        let n = self.procs.iter().filter(|p| p.name.starts_with("signaling")).count();
        let mut proc = self.spawn(&format!("signaling-{n}"), cmd);
        proc.wait_for("listening on", false, Duration::from_secs(20));
        self.procs.push(proc);
    }

    fn latest_mut(&mut self, prefix: &str) -> &mut Proc {
        self.procs.iter_mut().rev().find(|p| p.name.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}*"))
    }

    /// Every machine process's log, oldest first.
    fn machine_log(&self) -> String {
        self.procs.iter().filter(|p| p.name.starts_with("machine-")).map(Proc::stderr).collect::<Vec<_>>().join("\n")
    }

    /// Starts `fault_client ARGS` in the client namespace as `name` and
    /// waits for its `ready` line (connected, motor on, session started).
    fn client(&mut self, name: &str, args: &[&str]) -> Value {
        let mut cmd = self.command(Ns::Client, fault_client());
        cmd.args(args);
        self.log_filter(&mut cmd);
        let proc = self.spawn(name, cmd);
        self.procs.push(proc);
        let ready = self.wait_line(name, 0.0, EVENT_LIMIT, |l| is(l, "ready"));
        assert!(ready["session"].is_string(), "{name} started no session: {ready}");
        ready
    }

    /// A direct client with the suite's liveness settings plus `extra`.
    fn direct_client(&mut self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec![MACHINE_ADDR, "--dial-timeout-ms", DIRECT_DIAL_TIMEOUT_MS];
        args.extend(liveness_args());
        args.extend_from_slice(extra);
        self.client(name, &args)
    }

    /// The JSON lines client `name` printed so far (a partial last line is skipped).
    fn lines(&self, name: &str) -> Vec<Value> {
        let proc = self.proc(name).unwrap_or_else(|| panic!("no client {name}"));
        proc.stdout().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The lines printed at or after `since` (epoch ms).
    fn lines_since(&self, name: &str, since: f64) -> Vec<Value> {
        self.lines(name).into_iter().filter(|l| l["ts_ms"].as_f64().is_some_and(|t| t >= since)).collect()
    }

    /// Waits for the first line printed at or after `since` that matches.
    #[track_caller]
    fn wait_line(&mut self, name: &str, since: f64, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines_since(name, since).into_iter().find(|l| matches(l)) {
                return line;
            }
            let proc = self.proc_mut(name).unwrap_or_else(|| panic!("no client {name}"));
            if !proc.running() {
                panic!("{name} exited\nstdout:\n{}\nstderr:\n{}", tail(&proc.stdout(), 30), tail(&proc.stderr(), 30));
            }
            if Instant::now() > deadline {
                panic!("{name} printed no matching line within {limit:?}; it printed:\n{}", self.digest(name, since));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The client's lines since `since`, ticks condensed, for failure messages.
    fn digest(&self, name: &str, since: f64) -> String {
        let mut out = Vec::new();
        let mut ticks = 0;
        for l in self.lines_since(name, since) {
            if is(&l, "tick") && l["ok"] == true {
                ticks += 1;
                continue;
            }
            if ticks > 0 {
                out.push(format!("({ticks} ok ticks)"));
                ticks = 0;
            }
            out.push(l.to_string());
        }
        if ticks > 0 {
            out.push(format!("({ticks} ok ticks)"));
        }
        out.join("\n")
    }

    /// Waits until the machine logs `text`; the moment it was seen (epoch ms,
    /// polled every 5 ms).
    #[track_caller]
    fn wait_machine_log(&self, text: &str, limit: Duration) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            if self.machine_log().contains(text) {
                return now_ms();
            }
            if Instant::now() > deadline {
                panic!("the machine did not log {text:?} within {limit:?}:\n{}", tail(&self.machine_log(), 30));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the motor runs, asked on the machine itself (no session).
    fn motor_on(&self) -> bool {
        let mut cmd = self.tether(Ns::Machine);
        let args = ["call", "127.0.0.1:8080", "motor1", "is-powered", "--json", "--disable-sessions"];
        cmd.args(args);
        let v = self.finish(cmd, &args).json();
        v["is_on"].as_bool().unwrap_or_else(|| panic!("is-powered without is_on: {v}"))
    }

    /// Takes the client's link down at the router; the moment it went down.
    fn link_down(&self) -> f64 {
        let at = now_ms();
        self.ip_in(Ns::Router, &["link", "set", "c0", "down"]);
        at
    }

    fn link_up(&self) -> f64 {
        let at = now_ms();
        self.ip_in(Ns::Router, &["link", "set", "c0", "up"]);
        at
    }

    /// Drops everything the router forwards to or from the client.
    fn blackhole(&self) -> f64 {
        let at = now_ms();
        self.nft(
            Ns::Router,
            &format!(
                "table inet blackhole {{
                    chain forward {{
                        type filter hook forward priority filter - 10; policy accept;
                        ip saddr {CLIENT_IP} drop
                        ip daddr {CLIENT_IP} drop
                    }}
                }}"
            ),
        );
        at
    }

    fn unblackhole(&self) -> f64 {
        let at = now_ms();
        let nft = self.tools.nft.clone();
        self.exec(Ns::Router, &nft, &["delete", "table", "inet", "blackhole"]);
        at
    }

    /// Asserts that the machine never issued a safety stop.
    #[track_caller]
    fn assert_no_safety_stop(&self) {
        let log = self.machine_log();
        if let Some(line) = log.lines().find(|l| l.contains("safety stop")) {
            panic!("the machine issued a safety stop: {}", strip_ansi(line));
        }
    }
}

fn liveness_args() -> [&'static str; 4] {
    const TIMEOUT: &str = "450";
    const INTERVAL: &str = "150";
    debug_assert_eq!(TIMEOUT.parse::<u128>().ok(), Some(LIVENESS_TIMEOUT.as_millis()));
    debug_assert_eq!(INTERVAL.parse::<u128>().ok(), Some(LIVENESS_INTERVAL.as_millis()));
    ["--liveness-timeout-ms", TIMEOUT, "--liveness-interval-ms", INTERVAL]
}

/// The events (not ticks) among `lines`, by name.
fn event_names(lines: &[Value]) -> Vec<String> {
    lines.iter().filter(|l| !is(l, "tick")).filter_map(|l| l["event"].as_str().map(str::to_owned)).collect()
}

/// The longest any tick call took among `lines`.
fn slowest_tick(lines: &[Value]) -> Duration {
    let ms = lines.iter().filter(|l| is(l, "tick")).filter_map(|l| l["took_ms"].as_f64()).fold(0.0, f64::max);
    Duration::from_secs_f64(ms / 1e3)
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The client's link goes down for less than the heartbeat window (but long
/// enough for the client to notice): it reconnects, resumes the same
/// session, and the machine never stops the motor.
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn short_cut_resumes_the_session_and_the_motor_keeps_running() {
    let _serial = serial();
    let mut net = Net::new();
    net.machine();
    let ready = net.direct_client("client", &["--max-wait-ms", "200", "--max-attempts", "30"]);
    let sid = ready["session"].as_str().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(500));

    let down = net.link_down();
    std::thread::sleep(SHORT_CUT);
    let up = net.link_up();

    let resumed = net.wait_line("client", down, EVENT_LIMIT, |l| is(l, "session_resumed") || is(l, "session_lapsed"));
    let lines = net.lines_since("client", down);
    let reconnecting = lines.iter().find(|l| is(l, "reconnecting")).expect("a reconnecting event");
    let connected = lines.iter().find(|l| is(l, "connected")).expect("a connected event");
    println!(
        "[faults] short cut ({}, window {}): noticed after {}, reconnected {} after the link came back; {}",
        secs(ms_between(down, up)),
        secs(WINDOW),
        secs(ms_between(down, ts(reconnecting))),
        secs(ms_between(up, ts(connected))),
        resumed
    );
    assert_eq!(connected["reconnected"], true, "{connected}");
    assert!(is(&resumed, "session_resumed"), "the session lapsed after a cut shorter than the window: {resumed}");
    assert_eq!(resumed["id"], sid.as_str(), "{resumed}");

    // Past the point where the old session would have lapsed: still nothing stopped.
    let lapse_at = down + WINDOW.as_secs_f64() * 1e3 + 300.0;
    let ok = net.wait_line("client", lapse_at, EVENT_LIMIT, |l| is(l, "tick") && l["ok"] == true);
    assert_eq!(ok["powered"], true, "the motor stopped: {ok}");
    assert_eq!(ok["session"], sid.as_str(), "{ok}");
    net.assert_no_safety_stop();
    assert!(net.motor_on(), "the machine says the motor is off");
    let names = event_names(&net.lines_since("client", down));
    assert!(!names.iter().any(|n| n == "session_lapsed" || n == "disconnected"), "{names:?}");
}

/// The client's link goes down for longer than the window: the machine stops
/// the motor when the session lapses; when the link is back the client
/// reconnects with a new session and says that the old one lapsed.
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn long_cut_stops_the_motor_and_the_client_reports_the_lapse() {
    let _serial = serial();
    let mut net = Net::new();
    net.machine();
    let ready = net.direct_client("client", &["--max-wait-ms", "200", "--max-attempts", "40"]);
    let old = ready["session"].as_str().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(500));

    let down = net.link_down();
    let stopped = net.wait_machine_log("safety stop: session lapsed", LONG_CUT);
    let stop_delay = ms_between(down, stopped);
    assert!(!net.motor_on(), "the machine logged a safety stop but the motor runs");
    let left = LONG_CUT.saturating_sub(ms_between(down, now_ms()));
    std::thread::sleep(left);
    let up = net.link_up();

    let lapsed = net.wait_line("client", down, EVENT_LIMIT, |l| is(l, "session_lapsed") || is(l, "session_resumed"));
    let lines = net.lines_since("client", down);
    let connected = lines.iter().find(|l| is(l, "connected")).expect("a connected event");
    let attempts = lines.iter().filter(|l| is(l, "dialing")).count();
    println!(
        "[faults] long cut ({}, window {}): motor stopped {} after the link went down; client reconnected {} after \
         the link came back ({attempts} dial attempts); {lapsed}",
        secs(ms_between(down, up)),
        secs(WINDOW),
        secs(stop_delay),
        secs(ms_between(up, ts(connected))),
    );
    // The last heartbeat reached the machine at most one heartbeat period (window/5) before the cut.
    let earliest = WINDOW - WINDOW / 5 - Duration::from_millis(100);
    assert!(stop_delay >= earliest, "the motor stopped {stop_delay:?} after the cut, before the window {WINDOW:?}");
    assert!(stop_delay <= WINDOW + Duration::from_millis(600), "the motor stopped only after {stop_delay:?}");
    assert_eq!(connected["reconnected"], true, "{connected}");
    assert!(is(&lapsed, "session_lapsed"), "expected the old session to have lapsed: {lapsed}");
    assert_eq!(lapsed["old"], old.as_str(), "{lapsed}");
    assert!(lapsed["new"].is_string() && lapsed["new"] != lapsed["old"], "{lapsed}");
    let tick = net.wait_line("client", ts(&lapsed), EVENT_LIMIT, |l| is(l, "tick") && l["ok"] == true);
    assert_eq!(tick["powered"], false, "the motor runs again: {tick}");
    assert_eq!(tick["session"], lapsed["new"], "{tick}");
}

/// The machine process is SIGKILLed and started again on the same address:
/// the client notices at once, reconnects, and reports that its session
/// lapsed (the new process has none).
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn machine_restart_is_survived() {
    let _serial = serial();
    let mut net = Net::new();
    net.machine();
    let ready = net.direct_client("client", &["--max-wait-ms", "300", "--max-attempts", "50"]);
    let old = ready["session"].as_str().unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(300));

    let killed = net.kill_machine();
    let reconnecting = net.wait_line("client", killed, EVENT_LIMIT, |l| is(l, "reconnecting"));
    std::thread::sleep(Duration::from_millis(500));
    let restarting = now_ms();
    net.machine();
    let listening = now_ms();
    let lapsed = net.wait_line("client", killed, EVENT_LIMIT, |l| is(l, "session_lapsed") || is(l, "session_resumed"));
    let lines = net.lines_since("client", killed);
    let connected = lines.iter().rev().find(|l| is(l, "connected") && ts(l) <= ts(&lapsed)).expect("a connected event");
    let attempts = lines.iter().filter(|l| is(l, "dialing")).count();
    // A dial that reaches the dying process's listener (the kernel still
    // completes TCP handshakes for a moment) "connects" before the machine is back.
    let early = lines.iter().filter(|l| is(l, "connected") && ts(l) < restarting).count();
    println!(
        "[faults] machine SIGKILLed: noticed after {}; restarted (listening {} after the restart began); client \
         reconnected {} after that ({attempts} dial attempts, {early} `connected` before the restart); {lapsed}",
        secs(ms_between(killed, ts(&reconnecting))),
        secs(ms_between(restarting, listening)),
        secs(ms_between(listening, ts(connected))),
    );
    assert!(ms_between(killed, ts(&reconnecting)) < Duration::from_secs(1), "a closed connection is noticed at once");
    assert_eq!(connected["reconnected"], true, "{connected}");
    assert!(is(&lapsed, "session_lapsed"), "{lapsed}");
    assert_eq!(lapsed["old"], old.as_str(), "{lapsed}");
    assert_ne!(lapsed["new"], lapsed["old"], "{lapsed}");
    let tick = net.wait_line("client", ts(&lapsed), EVENT_LIMIT, |l| is(l, "tick") && l["ok"] == true);
    assert_eq!(tick["powered"], false, "a restarted machine's motor is off: {tick}");
}

/// The standalone signaling service is SIGKILLed and restarted: a connected
/// WebRTC client does not notice (its peer connection does not need
/// signaling); the machine registers with the new signaler again; and when
/// the client's link is then cut, the client redials through the restarted
/// signaler and the machine answers.
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn signaling_restart_is_survived_by_client_and_machine() {
    let _serial = serial();
    let mut net = Net::new();
    net.signaling();
    net.machine();
    let mut args = vec!["--signaling", SIGNALING_URL, "--host", "bot", "--dial-timeout-ms", "3000"];
    args.extend(liveness_args());
    args.extend(["--max-wait-ms", "300", "--max-attempts", "40"]);
    let ready = net.client("client", &args);
    assert_eq!(ready["transport"], "webrtc", "{ready}");

    let killed = now_ms();
    net.latest_mut("signaling-").kill();
    std::thread::sleep(Duration::from_millis(1000));
    let restarting = now_ms();
    net.signaling();
    // The machine registers again (its answerer redials with backoff): a new
    // WebRTC call through the restarted signaler gets an answer.
    let registered = loop {
        let mut cmd = net.tether(Ns::Client);
        let call =
            ["call", "bot", "version", "--signaling", SIGNALING_URL, "--host", "bot", "--no-stun", "--timeout", "3"];
        cmd.args(call);
        if net.finish(cmd, &call).ok {
            break now_ms();
        }
        assert!(ms_between(restarting, now_ms()) < Duration::from_secs(20), "the machine never answered again");
    };
    let lines = net.lines_since("client", killed);
    let names = event_names(&lines);
    assert!(names.is_empty(), "the connected client noticed the signaling restart: {names:?}");
    let failed_ticks = lines.iter().filter(|l| is(l, "tick") && l["ok"] != true).count();
    assert_eq!(failed_ticks, 0, "calls failed while signaling was down:\n{}", net.digest("client", killed));
    println!(
        "[faults] signaling SIGKILLed, restarted after {}: the WebRTC client kept working ({} ticks, none failed); \
         the machine answered through the new signaler {} after its restart",
        secs(ms_between(killed, restarting)),
        lines.iter().filter(|l| is(l, "tick")).count(),
        secs(ms_between(restarting, registered)),
    );

    // Now a drop: the client must redial through the restarted signaler.
    let down = net.link_down();
    std::thread::sleep(Duration::from_millis(1000));
    let up = net.link_up();
    let connected = net.wait_line("client", down, Duration::from_secs(20), |l| is(l, "connected"));
    let session = net.wait_line("client", down, EVENT_LIMIT, |l| is(l, "session_resumed") || is(l, "session_lapsed"));
    let lines = net.lines_since("client", down);
    let reconnecting = lines.iter().find(|l| is(l, "reconnecting")).expect("a reconnecting event");
    let attempts = lines.iter().filter(|l| is(l, "dialing")).count();
    println!(
        "[faults] WebRTC client link cut for {}: noticed after {}, reconnected through the restarted signaler {} \
         after the link came back ({attempts} dial attempts, {}); {session}",
        secs(ms_between(down, up)),
        secs(ms_between(down, ts(reconnecting))),
        secs(ms_between(up, ts(&connected))),
        connected["candidate_pair"],
    );
    assert_eq!(connected["reconnected"], true, "{connected}");
    assert_eq!(connected["method"], "webrtc", "{connected}");
    let tick = net.wait_line("client", ts(&session), EVENT_LIMIT, |l| is(l, "tick") && l["ok"] == true);
    assert_eq!(tick["session"], session["new"].as_str().or(session["id"].as_str()).unwrap_or_default(), "{tick}");
}

/// `--no-reconnect`: a drop gives exactly one `disconnected` event and no
/// attempts. `--max-attempts 3` against a machine that stays dead: exactly 3
/// attempts, delays on the documented schedule, then `reconnection_failed`.
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn no_reconnect_and_bounded_attempts_against_a_dead_machine() {
    let _serial = serial();
    let mut net = Net::new();
    net.machine();
    net.direct_client("once", &["--no-reconnect"]);
    net.direct_client("three", &["--max-attempts", "3"]);
    std::thread::sleep(Duration::from_millis(300));

    let killed = net.kill_machine();
    let disconnected = net.wait_line("once", killed, EVENT_LIMIT, |l| is(l, "disconnected"));
    let failed = net.wait_line("three", killed, EVENT_LIMIT, |l| is(l, "reconnection_failed"));
    // Anything more would show up now.
    std::thread::sleep(Duration::from_millis(1500));

    // --no-reconnect
    let once = net.lines_since("once", killed);
    let names = event_names(&once);
    assert_eq!(names, ["disconnected"], "expected exactly one event:\n{}", net.digest("once", killed));
    assert!(disconnected["error"].is_string(), "{disconnected}");
    let late: Vec<&Value> = once.iter().filter(|l| is(l, "tick") && ts(l) > ts(&disconnected) + 50.0).collect();
    assert!(!late.is_empty(), "no ticks after disconnecting");
    for t in &late {
        assert_eq!(t["code"], "Unavailable", "calls after the end fail with UNAVAILABLE: {t}");
        assert!(t["took_ms"].as_f64().unwrap_or(f64::MAX) < 100.0, "and fail fast: {t}");
    }
    println!(
        "[faults] --no-reconnect: one `disconnected` {} after the machine died, no attempts; later calls fail fast \
         with UNAVAILABLE",
        secs(ms_between(killed, ts(&disconnected)))
    );

    // --max-attempts 3
    let three = net.lines_since("three", killed);
    let events: Vec<&Value> = three.iter().filter(|l| !is(l, "tick")).collect();
    let dials: Vec<&Value> = events.iter().copied().filter(|l| is(l, "dialing")).collect();
    let attempts: Vec<u64> = dials.iter().filter_map(|l| l["attempt"].as_u64()).collect();
    assert_eq!(attempts, [1, 2, 3], "{}", net.digest("three", killed));
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert!(failed["error"].is_string(), "{failed}");
    let last = events.last().expect("events");
    assert!(is(last, "reconnection_failed"), "nothing after reconnection_failed: {}", net.digest("three", killed));
    let scheduled: Vec<&Value> = events.iter().copied().filter(|l| is(l, "retry_scheduled")).collect();
    assert_eq!(scheduled.len(), 2, "{}", net.digest("three", killed));
    let mut report = Vec::new();
    for (k, s) in (2u32..).zip(&scheduled) {
        // Equal jitter: between half and all of 100 ms × 2^(k−2).
        let nominal = 100.0 * f64::from(1u32 << (k - 2));
        let delay = s["delay_ms"].as_f64().unwrap_or(-1.0);
        assert_eq!(s["attempt"], k, "{s}");
        assert!(
            (nominal / 2.0..=nominal).contains(&delay),
            "attempt {k}: delay {delay} ms outside [{}, {nominal}]",
            nominal / 2.0
        );
        // Observed: from the scheduling to the dial it announced.
        let dial = dials[(k - 1) as usize];
        let observed = ts(dial) - ts(s);
        assert!(
            observed >= delay - 2.0 && observed <= delay + 100.0,
            "attempt {k}: announced {delay} ms, dialed after {observed:.1} ms"
        );
        report.push(format!("attempt {k}: {delay} ms scheduled (nominal {nominal} ms), dialed after {observed:.1} ms"));
    }
    println!(
        "[faults] --max-attempts 3 against a dead machine: 3 dials, reconnection_failed {} after it died; {}",
        secs(ms_between(killed, ts(&failed))),
        report.join("; ")
    );
}

/// Calls in flight when the link is blackholed (an nftables drop rule: no
/// close, no reset, nothing) fail with UNAVAILABLE within the liveness
/// timeout plus a margin and never hang: a long unary `go_for` over HTTP/2,
/// and a stream over WebRTC (ICE consent/keepalive timeout).
#[test]
#[ignore = "needs root, iproute2 and nftables; run by scripts/test-all.sh"]
fn in_flight_calls_fail_with_unavailable_when_the_link_is_blackholed() {
    let _serial = serial();
    let mut net = Net::new();
    net.signaling();
    net.machine();
    net.direct_client("unary", &["--in-flight-unary", "--max-wait-ms", "200", "--max-attempts", "40"]);
    // Its own motor: a set-power on motor1 would supersede the other client's go_for.
    let mut args = vec!["--signaling", SIGNALING_URL, "--host", "bot", "--in-flight-stream", "--motor", "motor2"];
    args.extend(["--dial-timeout-ms", "3000"]);
    args.extend(liveness_args());
    args.extend(["--max-wait-ms", "300", "--max-attempts", "40"]);
    net.client("stream", &args);
    net.wait_line("unary", 0.0, EVENT_LIMIT, |l| is(l, "unary_started"));
    net.wait_line("stream", 0.0, EVENT_LIMIT, |l| is(l, "stream_started"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!net.lines("unary").iter().any(|l| is(l, "unary_done")), "go_for ended early");
    assert!(!net.lines("stream").iter().any(|l| is(l, "stream_done")), "the stream ended early");

    let cut = net.blackhole();
    let unary = net.wait_line("unary", cut, EVENT_LIMIT, |l| is(l, "unary_done"));
    let stream = net.wait_line("stream", cut, EVENT_LIMIT, |l| is(l, "stream_done"));
    let unary_after = ms_between(cut, ts(&unary));
    let stream_after = ms_between(cut, ts(&stream));
    // Calls made during the blackhole must not hang either.
    std::thread::sleep(Duration::from_millis(600));
    let slowest = slowest_tick(&net.lines_since("unary", cut)).max(slowest_tick(&net.lines_since("stream", cut)));
    println!(
        "[faults] blackhole (nft drop): in-flight unary go_for failed after {} ({}), in-flight WebRTC stream after {} \
         ({}); slowest tick call during the outage {} (liveness {} + {})",
        secs(unary_after),
        unary["code"],
        secs(stream_after),
        stream["code"],
        secs(slowest),
        secs(LIVENESS_INTERVAL),
        secs(LIVENESS_TIMEOUT),
    );
    assert_eq!(unary["code"], "Unavailable", "{unary}");
    assert_eq!(stream["code"], "Unavailable", "{stream}");
    let detection = LIVENESS_INTERVAL + LIVENESS_TIMEOUT;
    assert!(unary_after <= detection + Duration::from_millis(600), "the unary call failed only after {unary_after:?}");
    assert!(stream_after <= detection + Duration::from_millis(1200), "the stream failed only after {stream_after:?}");
    assert!(slowest <= detection + Duration::from_millis(1200), "a call hung for {slowest:?}");

    // And after the blackhole is lifted both come back.
    let lifted = net.unblackhole();
    for name in ["unary", "stream"] {
        let c = net.wait_line(name, lifted, Duration::from_secs(20), |l| is(l, "connected"));
        assert_eq!(c["reconnected"], true, "{c}");
    }
}
