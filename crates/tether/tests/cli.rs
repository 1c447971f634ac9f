//! End-to-end tests of `tether call`: each test starts `tether machine` as a
//! child process (killed on drop) and runs the built binary against it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// Longest any single `tether call` may take in these tests.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// A running `tether machine`, killed when dropped.
struct Machine {
    child: Child,
    addr: String,
    _config: Option<tempfile::NamedTempFile>,
}

impl Machine {
    /// The built-in fake machine (one fake of every kind).
    fn fake() -> Self {
        Self::spawn(None)
    }

    /// A machine running `config` (Viam JSON).
    fn with_config(config: &str) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
        Self::spawn(Some(file))
    }

    fn spawn(config: Option<tempfile::NamedTempFile>) -> Self {
        Self::process(&["machine", "--listen", "127.0.0.1:0"], config.map(|f| ("--config", f)))
    }

    /// Any long-running `tether` command that prints `listening on ADDR`
    /// (a machine or a signaling service), with `file` passed as `flag FILE`.
    fn process(args: &[&str], file: Option<(&str, tempfile::NamedTempFile)>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        let config = file.map(|(flag, file)| {
            cmd.arg(flag).arg(file.path());
            file
        });
        let mut child = cmd
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tether machine");
        let stdout = child.stdout.take().expect("machine stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let machine = |addr| Machine { child, addr, _config: config };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => machine(addr),
            Err(_) => {
                let mut m = machine(String::new());
                let status = m.child.try_wait();
                panic!("tether machine did not report its address (exit: {status:?})");
            }
        }
    }

    /// Runs `tether call ADDR args…` to completion.
    fn call(&self, args: &[&str]) -> Out {
        let mut full = vec![self.addr.as_str()];
        full.extend_from_slice(args);
        call(&full)
    }

    /// Starts `tether call ADDR args…` without waiting (for `--hold`).
    fn spawn_call(&self, args: &[&str]) -> Held {
        let child = Command::new(BIN)
            .arg("call")
            .arg(&self.addr)
            .args(args)
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tether call");
        Held::new(child)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome of one `tether call`.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    fn success(&self) -> &str {
        assert!(self.ok(), "tether call failed: {self:?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as one JSON value.
    #[track_caller]
    fn json(&self) -> serde_json::Value {
        let out = self.success();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out:?}"))
    }

    /// Asserts failure with exit code 1 and `error: CODE:` on stderr.
    #[track_caller]
    fn failure(&self, code: &str) {
        assert_eq!(self.code, Some(1), "expected exit code 1: {self:?}");
        assert!(self.stderr.starts_with(&format!("error: {code}: ")), "expected error: {code}: … on stderr: {self:?}");
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `tether call args…` with a hard time limit.
fn call(args: &[&str]) -> Out {
    let mut child = Command::new(BIN)
        .arg("call")
        .args(args)
        .env("TETHER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tether call");
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + CALL_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tether call {args:?} did not finish within {CALL_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out { code: status.code(), stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// A `tether call … --hold` in the background, killed on drop.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn new(mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for the `holding session …` line and returns what follows it.
    fn holding(&mut self) -> String {
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("holding session ") {
                        return rest.to_owned();
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait();
                    let mut err = String::new();
                    if let Some(e) = self.child.stderr.as_mut()
                        && matches!(status, Ok(Some(_)))
                    {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("no `holding session` line (exit: {status:?}, stderr: {err})");
                }
            }
        }
    }

    /// SIGKILL, as if the client machine lost power.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const MOTOR_ONLY: &str = r#"{
  "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
  "network": {"sessions": {"heartbeat_window": "500ms"}}
}"#;

// ---------------------------------------------------------------------------
// Machine-level commands
// ---------------------------------------------------------------------------

#[test]
fn resources_lists_motor() {
    let m = Machine::fake();
    let out = m.call(&["resources"]);
    let lines: Vec<&str> = out.success().lines().collect();
    assert!(lines.contains(&"rdk:component:motor/motor1"), "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("rdk:component:")), "{lines:?}");

    let j = m.call(&["resources", "--json"]).json();
    let names: Vec<&str> =
        j["resources"].as_array().expect("resources array").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"motor1"), "{j}");
}

#[test]
fn machine_commands() {
    let m = Machine::fake();
    let status = m.call(&["status"]);
    let text = status.success();
    assert!(text.starts_with("state: running"), "{text}");
    assert!(text.contains("rdk:component:motor/motor1"), "{text}");
    let j = m.call(&["status", "--json"]).json();
    assert_eq!(j["state"], "running", "{j}");

    let v = m.call(&["version", "--json"]).json();
    assert!(v["platform"].is_string() && v["version"].is_string(), "{v}");
    assert!(m.call(&["version"]).success().contains("platform: "));

    assert!(m.call(&["sessions", "--json"]).json()["sessions"].is_array());
    assert!(m.call(&["operations", "--json"]).json()["operations"].is_array());
    assert_eq!(m.call(&["stop-all", "--json"]).json(), serde_json::json!({"ok": true}));
    assert!(m.call(&["stop-all"]).ok());
    // Machine commands take no stray arguments.
    m.call(&["resources", "extra"]).failure("InvalidArgument");
}

#[test]
fn webrtc_dial_options() {
    let m = Machine::fake();
    let webrtc = |extra: &[&str]| {
        let mut args = vec!["resources", "--webrtc", "--no-stun", "--no-reconnect"];
        args.extend_from_slice(extra);
        m.call(&args)
    };
    // force_p2p and a priority connect on one host (force_relay needs a TURN
    // server: the NAT suite covers it), and so do TURN filters and rewrites
    // when there is no TURN server to filter.
    webrtc(&["--force-p2p"]).success();
    webrtc(&["--priority", "-3"]).success();
    webrtc(&["--turn-uri", "turn:nowhere.example:3478", "--turn-scheme", "turns", "--turn-transport", "tcp"]).success();
    // Settings that can never work are refused at once, with the reason
    // (force_relay with force_p2p also logs a warning first). `--relay-only`
    // is the old name of --force-relay.
    for both in [["--force-relay", "--force-p2p"], ["--relay-only", "--force-p2p"]] {
        let out = webrtc(&both);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains("WARN") && out.stderr.contains("both set"), "no warning: {out:?}");
        assert!(out.stderr.contains("error: InvalidArgument: force_relay and force_p2p"), "{out:?}");
    }
    let out = webrtc(&["--turn-uri", "stun:x.example:3478"]);
    out.failure("InvalidArgument");
    assert!(out.stderr.contains("TURN URI"), "{out:?}");
    // Bad values: refused by the argument parser (exit 2) with the reason.
    for (flag, value, reason) in [
        ("--turn-scheme", "stun", "neither \"turn\" nor \"turns\""),
        ("--turn-transport", "sctp", "neither \"udp\" nor \"tcp\""),
        ("--turn-port", "0", "--turn-port"),
        ("--priority", "high", "--priority"),
    ] {
        let out = webrtc(&[flag, value]);
        assert!(matches!(out.code, Some(1 | 2)), "{flag} {value} was accepted: {out:?}");
        assert!(out.stderr.contains(reason), "{flag} {value}: {out:?}");
    }
    // … and by the trailing-option parser after negative arguments.
    m.call(&["motor1", "set-power", "-0.1", "--webrtc", "--turn-port", "0"]).failure("InvalidArgument");
    m.call(&["motor1", "set-power", "-0.1", "--webrtc", "--turn-scheme", "x"]).failure("InvalidArgument");
    m.call(&["motor1", "set-power", "-0.1", "--force-p2p", "--webrtc", "--no-stun", "--priority", "2"]).success();
    m.call(&["motor1", "stop"]).success();
}

// ---------------------------------------------------------------------------
// Motor, output formats, errors
// ---------------------------------------------------------------------------

/// `--max-webrtc-connections 1`: a second WebRTC caller is refused while
/// the first holds a session, and says why; direct gRPC is not counted.
#[test]
fn max_webrtc_connections_flag() {
    let m = Machine::process(&["machine", "--listen", "127.0.0.1:0", "--max-webrtc-connections", "1"], None);
    let webrtc = ["--webrtc", "--no-stun", "--no-reconnect"];
    let mut held = m.spawn_call(&[&["motor1", "set-power", "0.5", "--hold"][..], &webrtc[..]].concat());
    held.holding();
    let out = m.call(&[&["resources"][..], &webrtc[..]].concat());
    out.failure("ResourceExhausted");
    assert!(out.stderr.contains("max_webrtc_connections"), "{out:?}");
    m.call(&["resources"]).success();
    held.kill();
    // Its slot frees once the machine notices the peer is gone.
    assert!(
        eventually(Duration::from_secs(15), || m.call(&[&["resources"][..], &webrtc[..]].concat()).ok()),
        "the slot was not freed"
    );
}

#[test]
fn set_power_then_is_powered_shows_on() {
    let m = Machine::fake();
    // Without a session the motor keeps running after the call exits.
    let out = m.call(&["motor1", "set-power", "0.5", "--disable-sessions"]);
    assert!(out.success().contains("0.5"), "{out:?}");
    let out = m.call(&["motor1", "is-powered"]);
    assert!(out.success().starts_with("on"), "{out:?}");
    let j = m.call(&["motor1", "is-powered", "--json"]).json();
    assert_eq!(j["is_on"], true, "{j}");
    assert_eq!(j["power_pct"].as_f64(), Some(0.5), "{j}");
    assert!(m.call(&["motor1", "is-moving"]).success().starts_with("moving"));

    m.call(&["motor1", "stop"]).success();
    assert_eq!(m.call(&["motor1", "is-powered"]).success().trim(), "off");
    assert_eq!(m.call(&["motor1", "is-moving", "--json"]).json(), serde_json::json!({"is_moving": false}));
}

#[test]
fn motor_actions() {
    let m = Machine::fake();
    m.call(&["motor1", "go-to", "600", "1"]).success();
    let pos = m.call(&["motor1", "position", "--json"]).json();
    let p = pos["position"].as_f64().expect("position number");
    assert!((p - 1.0).abs() < 0.05, "{pos}");
    m.call(&["motor1", "go-for", "600", "-0.5"]).success();
    let p = m.call(&["motor1", "position", "--json"]).json()["position"].as_f64().expect("number");
    assert!((p - 0.5).abs() < 0.05, "{p}");
    m.call(&["motor1", "reset-zero"]).success();
    let p = m.call(&["motor1", "position", "--json"]).json()["position"].as_f64().expect("number");
    assert!(p.abs() < 0.05, "{p}");
    assert!(m.call(&["motor1", "properties", "--json"]).json()["position_reporting"].is_boolean());
    m.call(&["motor1", "set-rpm", "-30", "--disable-sessions"]).success();
    assert!(m.call(&["motor1", "is-moving"]).success().starts_with("moving"));
    m.call(&["motor1", "stop"]).success();
    assert!(m.call(&["motor1", "status", "--json"]).json()["status"].is_object());
    assert!(m.call(&["motor1", "geometries", "--json"]).json()["geometries"].is_array());
}

#[test]
fn json_output_is_one_object() {
    let m = Machine::fake();
    for args in [
        &["motor1", "set-power", "0.25", "--disable-sessions", "--json"][..],
        &["motor1", "position", "--json"],
        &["--json", "motor1", "is-powered"],
        &["motor1", "stop", "--json"],
    ] {
        let j = m.call(args).json();
        assert!(j.is_object(), "{args:?}: {j}");
    }
}

#[test]
fn unknown_component_is_not_found() {
    let m = Machine::fake();
    let out = m.call(&["nosuch", "is-powered"]);
    assert_ne!(out.code, Some(0));
    out.failure("NotFound");
    assert!(out.stderr.contains("nosuch"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn status_codes_reach_the_user() {
    let m = Machine::fake();
    // Rejected by the machine.
    let out = m.call(&["motor1", "set-power", "5"]);
    out.failure("InvalidArgument");
    assert!(out.stderr.contains("power"), "{out:?}");
    // Rejected locally.
    m.call(&["motor1", "set-power", "lots"]).failure("InvalidArgument");
    m.call(&["motor1", "set-power"]).failure("InvalidArgument");
    m.call(&["motor1", "stop", "now"]).failure("InvalidArgument");
    let out = m.call(&["motor1", "fly"]);
    out.failure("InvalidArgument");
    assert!(out.stderr.contains("set-power"), "actions are listed: {out:?}");
    m.call(&["motor1"]).failure("InvalidArgument");
    m.call(&["motor1", "is-powered", "--no-such-flag"]).failure("InvalidArgument");
}

#[test]
fn unreachable_machine_is_unavailable() {
    // Port 1 on loopback: connection refused.
    let out = call(&["127.0.0.1:1", "resources", "--timeout", "5"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("error: Unavailable: ") || out.stderr.starts_with("error: DeadlineExceeded: "),
        "{out:?}"
    );
}

#[test]
fn timeout_gives_deadline_exceeded() {
    let m = Machine::fake();
    // 1 rpm for 100 revolutions takes far longer than the limit.
    let started = Instant::now();
    let out = m.call(&["motor1", "go-for", "1", "100", "--timeout", "0.5"]);
    out.failure("DeadlineExceeded");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    m.call(&["motor1", "stop"]).success();
    m.call(&["motor1", "is-powered", "--timeout", "0"]).failure("InvalidArgument");
}

// ---------------------------------------------------------------------------
// --hold and sessions
// ---------------------------------------------------------------------------

#[test]
fn hold_keeps_the_session_until_killed() {
    let m = Machine::with_config(MOTOR_ONLY);
    let mut held = m.spawn_call(&["motor1", "set-power", "0.5", "--hold"]);
    let id = held.holding();
    assert!(!id.is_empty() && !id.starts_with("none"), "{id}");

    // Well past the 500 ms window the motor still runs: heartbeats flow.
    std::thread::sleep(Duration::from_millis(1500));
    let sessions = m.call(&["sessions", "--json"]).json();
    let ids: Vec<&str> =
        sessions["sessions"].as_array().into_iter().flatten().filter_map(|s| s["id"].as_str()).collect();
    assert!(ids.contains(&id.as_str()), "{sessions}");
    assert!(m.call(&["motor1", "is-powered"]).success().starts_with("on"));

    // Kill -9: no goodbye. The machine stops the motor within the window.
    held.kill();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || m.call(&["motor1", "is-powered"]).success().trim() == "off"),
        "motor still powered after the session lapsed"
    );
    assert!(killed.elapsed() < Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(5), || {
        let s = m.call(&["sessions", "--json"]).json();
        !s.to_string().contains(&id)
    }));
}

#[test]
fn hold_without_sessions_leaves_the_motor_running() {
    let m = Machine::with_config(MOTOR_ONLY);
    let mut held = m.spawn_call(&["motor1", "set-power", "0.5", "--disable-sessions", "--hold"]);
    let rest = held.holding();
    assert!(rest.starts_with("none"), "{rest}");
    held.kill();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(m.call(&["motor1", "is-powered"]).success().starts_with("on"));
    assert_eq!(m.call(&["sessions", "--json"]).json()["sessions"], serde_json::json!([]));
    m.call(&["motor1", "stop"]).success();
}

#[test]
fn a_session_ends_with_the_process() {
    let m = Machine::with_config(MOTOR_ONLY);
    // With a session (the default) and no --hold, the machine stops the motor
    // once the process has gone and the window has passed.
    m.call(&["motor1", "set-power", "0.5"]).success();
    assert!(eventually(Duration::from_secs(5), || m.call(&["motor1", "is-powered"]).success().trim() == "off"));
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

#[test]
fn api_key_credentials() {
    let m = Machine::with_config(
        r#"{
  "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
  "auth": {"handlers": [{"type": "api-key", "config": {"keys": [{"id": "cli-key", "key": "cli-secret"}]}}]}
}"#,
    );
    m.call(&["resources"]).failure("Unauthenticated");
    m.call(&["resources", "--api-key-id", "cli-key", "--api-key", "wrong"]).failure("Unauthenticated");
    let out = m.call(&["--api-key-id", "cli-key", "--api-key", "cli-secret", "resources"]);
    assert!(out.success().contains("rdk:component:motor/motor1"), "{out:?}");
    // Options may also follow the action's arguments.
    let out = m.call(&["motor1", "is-powered", "--api-key-id", "cli-key", "--api-key=cli-secret", "--json"]);
    assert_eq!(out.json()["is_on"], false);
    m.call(&["resources", "--api-key-id", "cli-key"]).failure("InvalidArgument");
}

// ---------------------------------------------------------------------------
// Authorized signaling, end to end: `tether signaling --auth`, a machine
// answering with its own key, `tether call` over WebRTC with users' keys
// ---------------------------------------------------------------------------

fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
    file
}

/// `tether signaling --auth FILE` on a free loopback port; its URL.
fn authorized_signaling(auth: &str) -> (Machine, String) {
    let sig = Machine::process(&["signaling", "--listen", "127.0.0.1:0"], Some(("--auth", temp_file(auth))));
    let url = format!("http://{}", sig.addr);
    (sig, url)
}

/// `tether call HOST args… --signaling URL --no-stun` (WebRTC through the service).
fn call_via(url: &str, host: &str, args: &[&str]) -> Out {
    let mut full = vec![host];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--signaling", url, "--no-stun", "--timeout", "20"]);
    call(&full)
}

/// `tether machine --host HOST` answering at `url` with the API key "bot".
fn machine_answering_as_bot(url: &str, host: &str) -> Machine {
    let args = ["machine", "--listen", "127.0.0.1:0", "--host", host, "--signaling", url];
    Machine::process(&[&args[..], &["--signaling-key-id", "bot", "--signaling-key", "bot-secret"]].concat(), None)
}

const SIGNALING_AUTH: &str = r#"{"keys": [
  {"id": "alice", "key": "alice-secret", "call": ["cli-bot", "ghost-bot"]},
  {"id": "eve", "key": "eve-secret", "call": ["other-bot"]},
  {"id": "bot", "key": "bot-secret", "answer": ["cli-bot"]}
]}"#;

#[test]
fn authorized_signaling_refusals_end_to_end() {
    let (_sig, url) = authorized_signaling(SIGNALING_AUTH);
    let _bot = machine_answering_as_bot(&url, "cli-bot");
    // The key "bot" may not answer for ghost-bot: this machine never comes online.
    let _ghost = machine_answering_as_bot(&url, "ghost-bot");
    let alice = ["--api-key-id", "alice", "--api-key", "alice-secret"];
    fn with<'a>(args: &[&'a str], creds: &[&'a str]) -> Vec<&'a str> {
        [args, creds].concat()
    }

    // Alice reaches cli-bot over WebRTC once its machine has registered.
    let mut out = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let o = call_via(&url, "cli-bot", &with(&["motor1", "set-power", "0.25"], &alice));
            let done = o.ok() || !o.stderr.starts_with("error: NotFound");
            out = Some(o);
            done
        }),
        "cli-bot never came online: {out:?}"
    );
    out.expect("called").success();
    let powered = call_via(&url, "cli-bot", &with(&["motor1", "is-powered", "--json"], &alice)).json();
    assert_eq!(powered["is_on"], true, "{powered}");

    // No credentials, a wrong secret, an unknown key: UNAUTHENTICATED.
    call_via(&url, "cli-bot", &["resources"]).failure("Unauthenticated");
    call_via(&url, "cli-bot", &["resources", "--api-key-id", "alice", "--api-key", "guess"]).failure("Unauthenticated");
    call_via(&url, "cli-bot", &["resources", "--api-key-id", "mallory", "--api-key", "x"]).failure("Unauthenticated");
    // A valid key without a grant for the host: PERMISSION_DENIED.
    let out = call_via(&url, "cli-bot", &["resources", "--api-key-id", "eve", "--api-key", "eve-secret"]);
    out.failure("PermissionDenied");
    assert!(out.stderr.contains("cli-bot"), "{out:?}");
    call_via(&url, "other-bot", &with(&["resources"], &alice)).failure("PermissionDenied");
    // A machine whose key may not answer for its host never registers:
    // offline. (A first dial retries NOT_FOUND, the machine may come online
    // any moment; one attempt shows the status.)
    let out = call_via(&url, "ghost-bot", &with(&["resources", "--no-reconnect"], &alice));
    out.failure("NotFound");
}

#[test]
fn authorized_signaling_rate_limits_calls_per_key() {
    let auth = r#"{"keys": [{"id": "alice", "key": "alice-secret", "call": ["nobody-home"]},
                            {"id": "bob", "key": "bob-secret", "call": ["nobody-home"]}],
                   "rate_limit_per_minute": 2}"#;
    let (_sig, url) = authorized_signaling(auth);
    let as_key = |id: &str, key: &str| {
        call_via(&url, "nobody-home", &["resources", "--no-reconnect", "--api-key-id", id, "--api-key", key])
    };
    // Two calls per minute (one dial attempt each): both reach the (empty)
    // queue, the third is refused.
    as_key("alice", "alice-secret").failure("NotFound");
    as_key("alice", "alice-secret").failure("NotFound");
    let out = as_key("alice", "alice-secret");
    out.failure("ResourceExhausted");
    // The limit is per key: bob is unaffected.
    as_key("bob", "bob-secret").failure("NotFound");
}

// ---------------------------------------------------------------------------
// Other component kinds (the built-in fakes)
// ---------------------------------------------------------------------------

#[test]
fn arm_joints() {
    let m = Machine::fake();
    m.call(&["arm1", "move-joints", "10,20,30,0,0,0"]).success();
    let j = m.call(&["arm1", "joints", "--json"]).json();
    assert_eq!(j["positions"], serde_json::json!([10, 20, 30, 0, 0, 0]), "{j}");
    assert_eq!(m.call(&["arm1", "joints"]).success().trim(), "10, 20, 30, 0, 0, 0");
    // Negative numbers are arguments, not options.
    m.call(&["arm1", "move-joints", "-10,20,30,0,0,0", "--json"]).json();
    assert_eq!(m.call(&["arm1", "joints"]).success().trim(), "-10, 20, 30, 0, 0, 0");
    m.call(&["arm1", "move-through", "1,2,3,4,5,6", "6,5,4,3,2,1"]).success();
    assert_eq!(m.call(&["arm1", "joints"]).success().trim(), "6, 5, 4, 3, 2, 1");
    let pose = m.call(&["arm1", "pose", "--json"]).json();
    assert!(pose["pose"]["x"].is_number(), "{pose}");
    assert_eq!(m.call(&["arm1", "is-moving"]).success().trim(), "not moving");
    m.call(&["arm1", "stop"]).success();
    m.call(&["arm1", "move-joints", "1,x"]).failure("InvalidArgument");
}

#[test]
fn base_velocity() {
    let m = Machine::fake();
    m.call(&["base1", "set-velocity", "100", "-30", "--disable-sessions"]).success();
    assert_eq!(m.call(&["base1", "is-moving"]).success().trim(), "moving");
    m.call(&["base1", "stop"]).success();
    assert_eq!(m.call(&["base1", "is-moving"]).success().trim(), "not moving");
    m.call(&["base1", "move-straight", "10", "100"]).success();
    m.call(&["base1", "spin", "10", "90"]).success();
    let props = m.call(&["base1", "properties", "--json"]).json();
    assert!(props["width_meters"].is_number(), "{props}");
}

#[test]
fn servo_move() {
    let m = Machine::fake();
    m.call(&["servo1", "move", "90"]).success();
    assert_eq!(m.call(&["servo1", "position", "--json"]).json(), serde_json::json!({"position_deg": 90}));
    m.call(&["servo1", "move", "-5"]).failure("InvalidArgument");
}

#[test]
fn gripper_open_grab() {
    let m = Machine::fake();
    m.call(&["gripper1", "open"]).success();
    let j = m.call(&["gripper1", "grab", "--json"]).json();
    assert!(j["success"].is_boolean(), "{j}");
    assert!(m.call(&["gripper1", "is-holding", "--json"]).json()["is_holding_something"].is_boolean());
}

#[test]
fn gantry_move() {
    let m = Machine::fake();
    m.call(&["gantry1", "move", "1,2,3"]).success();
    let j = m.call(&["gantry1", "position", "--json"]).json();
    assert_eq!(j["positions_mm"], serde_json::json!([1, 2, 3]), "{j}");
    assert!(m.call(&["gantry1", "position"]).success().starts_with("1, 2, 3"));
    assert!(m.call(&["gantry1", "lengths", "--json"]).json()["lengths_mm"].is_array());
}

#[test]
fn button_and_switch() {
    let m = Machine::fake();
    m.call(&["button1", "push"]).success();
    // Buttons have no geometries.
    m.call(&["button1", "geometries"]).failure("InvalidArgument");
    m.call(&["switch1", "set-position", "1"]).success();
    assert_eq!(m.call(&["switch1", "position"]).success().trim(), "1");
    let j = m.call(&["switch1", "positions", "--json"]).json();
    assert!(j["number_of_positions"].as_u64().is_some_and(|n| n >= 2), "{j}");
}

#[test]
fn sensor_readings() {
    let m = Machine::fake();
    let j = m.call(&["sensor1", "readings", "--json"]).json();
    let readings = j["readings"].as_object().expect("readings object");
    assert!(!readings.is_empty(), "{j}");
    let text = m.call(&["sensor1", "readings"]);
    let first = readings.keys().next().map(String::as_str).unwrap_or_default();
    assert!(text.success().contains(&format!("{first}:")), "{text:?}");
}

#[test]
fn camera_image_to_file() {
    let m = Machine::fake();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("frame.jpg");
    let path_s = path.to_str().expect("utf-8 path");
    let out = m.call(&["camera1", "image", "--out", path_s]);
    assert!(out.success().contains("frame.jpg"), "{out:?}");
    let bytes = std::fs::read(&path).expect("image written");
    assert!(bytes.starts_with(&[0xFF, 0xD8]), "not a JPEG");

    let j = m.call(&["camera1", "image", "--json"]).json();
    assert_eq!(j["mime_type"], "image/jpeg", "{j}");
    assert!(j["bytes"].as_u64().is_some_and(|n| n > 0), "{j}");

    let imgs = dir.path().join("all");
    let j = m.call(&["camera1", "images", "--out", imgs.to_str().expect("utf-8"), "--json"]).json();
    assert!(!j["images"].as_array().expect("images").is_empty(), "{j}");
    assert!(std::fs::read_dir(&imgs).expect("images dir").count() > 0);
    assert!(m.call(&["camera1", "properties", "--json"]).json().is_object());
}

#[test]
fn generic_do_command() {
    let m = Machine::with_config(
        r#"{"components": [{"name": "generic1", "api": "rdk:component:generic", "model": "rdk:builtin:fake"}]}"#,
    );
    let j = m.call(&["generic1", "do-command", r#"{"a":1}"#, "--json"]).json();
    assert!(j["result"].is_object(), "{j}");
    let text = m.call(&["generic1", "do-command", r#"{"a": 1}"#]);
    assert!(text.success().trim_start().starts_with('{'), "{text:?}");
    m.call(&["generic1", "do-command", "[1]"]).failure("InvalidArgument");
    m.call(&["generic1", "status"]).success();
}

// ---------------------------------------------------------------------------
// WebRTC through the machine's embedded signaler
// ---------------------------------------------------------------------------

const WEBRTC_MOTOR: &str = r#"{
  "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
  "network": {"sessions": {"heartbeat_window": "500ms"}, "hosts": ["cli-bot"], "ice_servers": []}
}"#;

const WEBRTC: &[&str] = &["--webrtc", "--host", "cli-bot", "--no-stun"];

fn with_webrtc<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(WEBRTC);
    v
}

#[test]
fn webrtc_calls_work_and_a_killed_client_stops_its_motor() {
    let m = Machine::with_config(WEBRTC_MOTOR);
    let out = m.call(&with_webrtc(&["resources"]));
    assert!(out.success().contains("rdk:component:motor/motor1"));
    let err = m.call(&with_webrtc(&["motor1", "set-power", "7"]));
    assert!(err.stderr.contains("InvalidArgument"), "{err:?}");

    let mut held = m.spawn_call(&with_webrtc(&["motor1", "set-power", "0.5", "--hold"]));
    let id = held.holding();
    assert!(!id.starts_with("none"), "{id}");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(m.call(&["motor1", "is-powered"]).success().starts_with("on"), "heartbeats over WebRTC keep it alive");
    held.kill();
    let killed = Instant::now();
    assert!(eventually(Duration::from_secs(5), || m.call(&["motor1", "is-powered"]).success().trim() == "off"));
    eprintln!("webrtc client with a session SIGKILLed: motor stopped after {:?}", killed.elapsed());
}

#[test]
fn webrtc_sessionless_client_killed_is_stopped_by_connection_loss() {
    let m = Machine::with_config(WEBRTC_MOTOR);
    let mut held = m.spawn_call(&with_webrtc(&["motor1", "set-power", "0.5", "--disable-sessions", "--hold"]));
    assert!(held.holding().starts_with("none"));
    std::thread::sleep(Duration::from_millis(700));
    assert!(m.call(&["motor1", "is-powered"]).success().starts_with("on"), "no session, nothing lapses");
    held.kill();
    let killed = Instant::now();
    // No session to lapse: only the dead peer connection (ICE consent lost)
    // tells the machine. That takes a few seconds.
    assert!(eventually(Duration::from_secs(10), || m.call(&["motor1", "is-powered"]).success().trim() == "off"));
    let took = killed.elapsed();
    eprintln!("sessionless webrtc client SIGKILLed: motor stopped after {took:?}");
}

/// A machine whose external signaler refuses its key says so at start-up
/// (stdout) and logs it at WARN once, and keeps serving direct callers and
/// WebRTC callers of its embedded signaler.
#[test]
fn an_unreachable_external_signaler_is_reported_and_the_machine_keeps_serving() {
    let (_sig, url) = authorized_signaling(SIGNALING_AUTH);
    let mut child = Command::new(BIN)
        .args(["machine", "--listen", "127.0.0.1:0", "--host", "cli-bot", "--signaling", &url])
        .args(["--signaling-key-id", "bot", "--signaling-key", "not-the-secret"])
        .env("TETHER_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tether machine");
    let (tx, rx) = mpsc::channel::<(&str, String)>();
    for (name, pipe) in [
        ("stdout", Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>),
        ("stderr", Box::new(child.stderr.take().expect("stderr"))),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((name, line));
            }
        });
    }
    let mut machine = Machine { child, addr: String::new(), _config: None };
    let (mut report, mut warnings) = (None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while report.is_none() || warnings.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((name, line)) = rx.recv_timeout(left) else {
            panic!("no start-up report or WARN line: report {report:?}, warnings {warnings:?}");
        };
        match name {
            "stdout" if line.starts_with("listening on ") => machine.addr = line["listening on ".len()..].to_owned(),
            "stdout" if line.starts_with("signaling ") => report = Some(line),
            "stderr" if line.contains("WARN") && line.contains("cannot answer through this signaling service") => {
                warnings.push(line)
            }
            _ => {}
        }
    }
    let report = report.expect("report");
    assert!(report.contains(&url) && report.contains("unreachable") && report.contains("Unauthenticated"), "{report}");
    assert!(warnings[0].contains("Unauthenticated"), "{warnings:?}");
    // Still serving: directly, and over WebRTC through its own signaler.
    machine.call(&["motor1", "set-power", "0.5"]).success();
    let powered = machine.call(&["motor1", "is-powered", "--json", "--webrtc", "--no-stun"]).json();
    assert_eq!(powered["is_on"], true, "{powered}");
    // Retries of the same failure are not logged again.
    std::thread::sleep(Duration::from_secs(1));
    let again: Vec<String> =
        rx.try_iter().filter(|(n, l)| *n == "stderr" && l.contains("cannot answer")).map(|(_, l)| l).collect();
    assert!(again.is_empty(), "the same failure was logged again: {again:?}");
}

#[test]
fn camera_stream_reports_video_and_writes_a_playable_ivf() {
    let m = Machine::with_config(
        r#"{"components": [{"name": "camera1", "api": "rdk:component:camera", "model": "rdk:builtin:fake",
                            "attributes": {"width_px": 320, "height_px": 240, "frame_rate": 30}}],
            "network": {"hosts": ["cli-bot"], "ice_servers": []}}"#,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("camera1.ivf");
    let path_s = path.to_str().expect("utf-8 path");
    let out = m.call(&with_webrtc(&["camera1", "stream", "--seconds", "2", "--out", path_s, "--json"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(320), Some(240)), "{v}");
    let frames = v["frames"].as_u64().unwrap_or(0);
    assert!(frames >= 20, "{frames} frames in 2 s at 30 fps: {v}");
    assert!(v["keyframes"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(v["delay_ms_p50"].as_f64().is_some(), "the fake camera's frame code gives a delay: {v}");

    // The file: an IVF header, then every frame, each decodable in order.
    let bytes = std::fs::read(&path).expect("the IVF file");
    assert_eq!(&bytes[..4], b"DKIF");
    assert_eq!(&bytes[8..12], b"VP80");
    let mut decoder = tether_media::vp8::Decoder::new().expect("decoder");
    let (mut at, mut decoded) = (32usize, 0u64);
    while at + 12 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let frame = &bytes[at + 12..at + 12 + size];
        let picture = decoder.decode(frame).expect("decodable").expect("a picture");
        assert_eq!((picture.width, picture.height), (320, 240));
        decoded += 1;
        at += 12 + size;
    }
    assert_eq!(at, bytes.len(), "no trailing bytes");
    assert_eq!(decoded, frames);

    // Direct gRPC cannot carry video: a clear FailedPrecondition.
    let err = m.call(&["camera1", "stream", "--seconds", "1"]);
    assert_ne!(err.code, Some(0));
    assert!(err.stderr.contains("FailedPrecondition") && err.stderr.contains("WebRTC"), "{err:?}");
}
