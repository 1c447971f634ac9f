//! `tether demo`: the whole stack in a few seconds, on embedded defaults.
//!
//! Everything runs on 127.0.0.1 and needs no internet:
//!
//! 1. a machine with one fake component of every kind, a 1 s heartbeat
//!    window and its embedded signaling service, on a free port;
//! 2. a client over WebRTC, signaled through the machine's own port (no
//!    STUN: host candidates are enough on one host);
//! 3. a client over direct gRPC (HTTP/2);
//! 4. the resource list;
//! 5. motor1 driven over WebRTC, its position advancing;
//! 6. a client *process* (`tether call ADDR motor1 set-power 0.5 --hold`)
//!    killed with SIGKILL, and the machine stopping the motor within the
//!    window (the delay measured from the machine's safety-stop feed);
//! 7. a client behind a TCP proxy whose link is cut for less than the window:
//!    it reconnects and resumes the same session, nothing is stopped;
//! 8. a cut longer than the window: the machine stops the motor, and the
//!    client reconnects and reports that its old session lapsed;
//!
//! then a summary of the measured numbers.
//!
//! `--json` prints one JSON object per line, each with `kind` (`step`,
//! `info`, `event`, `safety_stop`, `summary` or `error`), `step` (the step's
//! key) and `t_ms` (since the demo started). `event` lines carry a client's
//! connection event as the SDK serializes it (`event`: `reconnecting`,
//! `connected`, `session_resumed`, …) plus `client`; `safety_stop` lines
//! carry `resource`, `session`, `delay_ms` (from the SIGKILL or the cut to
//! the stop) and `after_deadline_ms` (from the session's deadline).

mod proxy;

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use tether_client::components::Motor;
use tether_client::{ConnectionEvent, DialConf, Options, ReconnectOptions, RobotClient};
use tether_machine::config::{Config, NetworkConfig};
use tether_machine::metrics::cause::{CONNECTION_LOST, SESSION_EXPIRED};
use tether_machine::models::Models;
use tether_machine::{Machine, SafetyStop};
use tether_transport::metrics::MetricsServeOptions;
use tether_transport::metrics::prometheus_client::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::term::{self, Paint, Tone};
use proxy::Proxy;

/// The machine's network settings (Viam's JSON shape): a 1 s heartbeat
/// window so that the safety stops show quickly, a WebRTC host name, and no
/// STUN server (there is no internet to ask, and one host needs none).
const NETWORK: &str = r#"{
  "sessions": {"heartbeat_window": "1s"},
  "hosts": ["tether-demo"],
  "ice_servers": []
}"#;
/// The WebRTC host name in [`NETWORK`].
const HOST: &str = "tether-demo";
/// The heartbeat window in [`NETWORK`].
const WINDOW: Duration = Duration::from_secs(1);
/// A link cut the session survives.
const SHORT_CUT: Duration = Duration::from_millis(300);
/// A link cut the session does not survive.
const LONG_CUT: Duration = Duration::from_millis(1600);
/// The whole demo gives up after this long.
const LIMIT: Duration = Duration::from_secs(50);
/// How long [`round_trip`] waits for a connection that is being redialed.
const ROUND_TRIP_PATIENCE: Duration = Duration::from_secs(25);
/// Steps, for the `[n/N]` progress.
const STEPS: usize = 8;

/// Arguments of `tether demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Print one JSON object per line (steps, measurements, connection
    /// events, safety stops, the summary) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tether demo`: exit 0 when every step did what it shows.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let report = Report::new(args.json);
    report.banner();
    match tokio::time::timeout(LIMIT, demo(&report)).await {
        Ok(Ok(numbers)) => {
            report.summary(&numbers);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            report.error(&e);
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            report.error(&anyhow!("the demo did not finish within {LIMIT:?}"));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What the demo measured.
#[derive(Debug, Default, Serialize)]
struct Numbers {
    webrtc_connect_ms: f64,
    webrtc_candidate_pair: Option<String>,
    webrtc_rtt_ms: f64,
    direct_connect_ms: f64,
    direct_rtt_ms: f64,
    /// Revolutions motor1 turned while driven at half power.
    motor_revolutions: f64,
    heartbeat_window_ms: f64,
    /// SIGKILL of the client process → the machine stopped motor1.
    kill_to_stop_ms: f64,
    /// The session's deadline → the stop.
    kill_stop_after_deadline_ms: f64,
    short_cut_ms: f64,
    /// The short cut → the client reconnected.
    short_cut_reconnect_ms: f64,
    short_cut_session_resumed: bool,
    short_cut_motor_kept_running: bool,
    long_cut_ms: f64,
    /// The long cut → the machine stopped motor1.
    long_cut_stop_ms: f64,
    long_cut_stop_after_deadline_ms: f64,
    /// The long cut → the client reconnected.
    long_cut_reconnect_ms: f64,
    long_cut_session_lapsed: bool,
    total_ms: f64,
}

/// The demo's steps, in order; returns the measurements.
async fn demo(report: &Report) -> anyhow::Result<Numbers> {
    let started = Instant::now();
    let mut n = Numbers { heartbeat_window_ms: millis(WINDOW), ..Default::default() };

    report.step("machine", "Start a machine: fake components, embedded signaling");
    let machine = DemoMachine::start(report).await?;

    report.step("webrtc", "Connect a client over WebRTC, through the machine's embedded signaler");
    let conf = DialConf::webrtc(HOST, machine.addr.to_string()).with_webrtc(|c| c.ice_servers.clear());
    let (webrtc, webrtc_events) = connect(report, "webrtc", conf, Options::default()).await?;
    n.webrtc_connect_ms = webrtc.connect_ms;
    n.webrtc_rtt_ms = webrtc.rtt_ms;
    n.webrtc_candidate_pair = webrtc.candidate_pair.clone();

    report.step("direct", "Connect a client over direct gRPC (HTTP/2)");
    let (direct, direct_events) =
        connect(report, "direct", DialConf::direct(machine.addr.to_string()), Options::default()).await?;
    n.direct_connect_ms = direct.connect_ms;
    n.direct_rtt_ms = direct.rtt_ms;

    report.step("resources", "List the machine's resources");
    list_resources(report, &webrtc.robot).await?;

    report.step("drive", "Drive motor1 over WebRTC");
    n.motor_revolutions = drive(report, &webrtc.robot).await?;

    report.step("kill", "Kill a client process (SIGKILL) while it drives motor1");
    let (kill_to_stop, stop) = kill_a_client(report, &machine, &direct.robot).await?;
    n.kill_to_stop_ms = millis(kill_to_stop);
    n.kill_stop_after_deadline_ms = millis(stop.delay);

    report.step("short_cut", "Cut a client's link for less than the heartbeat window");
    let mut roaming = Roaming::connect(report, &machine).await?;
    let short = roaming.short_cut(report, &machine).await?;
    n.short_cut_ms = millis(SHORT_CUT);
    n.short_cut_reconnect_ms = millis(short.reconnected_after);
    n.short_cut_session_resumed = true;
    n.short_cut_motor_kept_running = true;

    report.step("long_cut", "Cut it for longer than the window");
    let long = roaming.long_cut(report, &machine).await?;
    n.long_cut_ms = millis(LONG_CUT);
    n.long_cut_stop_ms = millis(long.stopped_after);
    n.long_cut_stop_after_deadline_ms = millis(long.after_deadline);
    n.long_cut_reconnect_ms = millis(long.reconnected_after);
    n.long_cut_session_lapsed = true;

    // Quietly: stop following events (closing would report `disconnecting`
    // for every client), then close the clients and stop the machine.
    drop((webrtc_events, direct_events, roaming.events));
    for robot in [&webrtc.robot, &direct.robot, &roaming.robot] {
        robot.close().await;
    }
    let m = machine.machine.metrics();
    let stops = |cause| m.safety_stops.get_or_create(&[("cause", cause)]).get();
    let (expired_stops, lost_stops) = (stops(SESSION_EXPIRED), stops(CONNECTION_LOST));
    report.note(
        format!(
            "metrics: {} sessions started, {} resumed, {} expired; {} safety stops (session expired), {} (connection lost)",
            m.sessions_started.get(),
            m.sessions_resumed.get(),
            m.sessions_expired.get(),
            expired_stops,
            lost_stops,
        ),
        json!({
            "sessions_started": m.sessions_started.get(),
            "sessions_resumed": m.sessions_resumed.get(),
            "sessions_expired": m.sessions_expired.get(),
            "safety_stops_session_expired": expired_stops,
            "safety_stops_connection_lost": lost_stops,
        }),
    );
    machine.stop().await;
    n.total_ms = millis(started.elapsed());
    Ok(n)
}

/// Milliseconds, to two decimals.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// A machine served in this process.
struct DemoMachine {
    machine: Machine,
    addr: SocketAddr,
    shutdown: CancellationToken,
    serving: JoinHandle<()>,
}

impl DemoMachine {
    /// Builds the fake machine with [`NETWORK`] and serves it on a free
    /// loopback port.
    async fn start(report: &Report) -> anyhow::Result<Self> {
        let network: NetworkConfig = serde_json::from_str(NETWORK).context("the demo's network config")?;
        let cfg = Config { network, ..Config::fake() };
        cfg.validate()?;
        let machine = Machine::from_config(&cfg, &Models::builtin())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let serving = {
            let (machine, shutdown) = (machine.clone(), shutdown.clone());
            tokio::spawn(async move { machine.serve(listener, Default::default(), shutdown).await })
        };
        // The answerer registers with the embedded signaler once serving
        // starts; a WebRTC dial before that is told the host is offline.
        let online = async {
            while !machine.signaling().queue().is_answerer_online(HOST).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), online)
            .await
            .map_err(|_| anyhow!("the machine's WebRTC answerer did not come online within 10 s"))?;
        let components = machine.resources().iter().count();
        report.ok(
            format!("listening on {addr}: {components} fake components, heartbeat window {} ms", WINDOW.as_millis()),
            json!({"addr": addr.to_string(), "components": components, "heartbeat_window_ms": millis(WINDOW)}),
        );
        report.note(
            format!("the same port serves gRPC, gRPC-Web and signaling; WebRTC calls for {HOST:?} are answered"),
            json!({"webrtc_host": HOST, "signaling": addr.to_string()}),
        );
        let page = format!("http://{addr}/");
        report.note(
            format!("control page: {page} (a browser sees and drives the machine there)"),
            json!({"control_page": page}),
        );
        // What `tether machine --metrics-listen ADDR` serves, on a port of its own.
        let mut registry = Registry::default();
        machine.register_metrics(&mut registry);
        tether_transport::metrics::register_process(&mut registry);
        let options = MetricsServeOptions::default().with_shutdown(shutdown.clone());
        let metrics = tether_transport::metrics::spawn("127.0.0.1:0", Arc::new(registry), options)
            .await
            .context("cannot listen for metrics on 127.0.0.1")?;
        report.note(
            format!("Prometheus metrics at http://{metrics}/metrics (tether machine --metrics-listen ADDR)"),
            json!({"metrics": format!("http://{metrics}/metrics")}),
        );
        Ok(Self { machine, addr, shutdown, serving })
    }

    /// Stops serving.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.serving).await;
    }
}

impl Drop for DemoMachine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A connected client and how the connection came up.
struct Connected {
    robot: RobotClient,
    connect_ms: f64,
    rtt_ms: f64,
    candidate_pair: Option<String>,
}

/// Dials, measures, reports, and starts following the connection's events.
async fn connect(
    report: &Report,
    client: &'static str,
    conf: DialConf,
    options: Options,
) -> anyhow::Result<(Connected, Follower)> {
    let started = Instant::now();
    let robot =
        RobotClient::connect(conf, options).await.with_context(|| format!("the {client} client cannot connect"))?;
    let connect_ms = millis(started.elapsed());
    let events = Follower::start(report, client, &robot);
    let candidate_pair = match robot.webrtc() {
        Some(w) => w.selected_pair().await.map(|p| format!("{}/{}", p.local_type, p.remote_type)),
        None => None,
    };
    let rtt_ms = round_trip(&robot).await?;
    let pair = candidate_pair.as_ref().map(|p| format!(", candidate pair {p}")).unwrap_or_default();
    report.ok(
        format!("connected in {}{pair}; round trip {}", term::ms(connect_ms), term::ms(rtt_ms)),
        json!({"client": client, "connect_ms": connect_ms, "candidate_pair": candidate_pair, "rtt_ms": rtt_ms}),
    );
    Ok((Connected { robot, connect_ms, rtt_ms, candidate_pair }, events))
}

/// The median round trip of a few GetVersion calls, in milliseconds.
///
/// A fresh connection can still turn out dead (the client then says so with
/// `reconnecting` and redials by itself): a call that fails with
/// UNAVAILABLE is retried on a handle that waits for the connection, for
/// up to [`ROUND_TRIP_PATIENCE`].
async fn round_trip(robot: &RobotClient) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + ROUND_TRIP_PATIENCE;
    let waiting = robot.wait_for_ready();
    let mut samples = Vec::with_capacity(5);
    while samples.len() < 5 {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, waiting.version()).await {
            Ok(Ok(_)) => samples.push(millis(started.elapsed())),
            Ok(Err(e)) if e.code() == tonic::Code::Unavailable => samples.clear(),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("no answer to GetVersion within {ROUND_TRIP_PATIENCE:?}"),
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

async fn list_resources(report: &Report, robot: &RobotClient) -> anyhow::Result<()> {
    let mut names = robot.resource_names().await?;
    names.sort_by(|a, b| a.name.cmp(&b.name));
    ensure!(names.iter().any(|r| r.name == "motor1"), "the machine has no motor1");
    let listed: Vec<String> = names.iter().map(|r| format!("{} ({})", r.name, r.subtype)).collect();
    report.ok(
        format!("{} resources: {}", names.len(), listed.join(", ")),
        json!({"resources": names.iter().map(crate::call::fqname).collect::<Vec<_>>()}),
    );
    Ok(())
}

/// Sets motor1 to half power, reads its position advancing, stops it;
/// returns how far it turned.
async fn drive(report: &Report, robot: &RobotClient) -> anyhow::Result<f64> {
    let motor = Motor::from_robot(robot, "motor1");
    motor.set_power(0.5).await?;
    let session = robot.session_id().unwrap_or_else(|| "none".into());
    report.ok(
        format!("set power 0.5: a safety-monitored call, so the client started session {session}"),
        json!({"power": 0.5, "session": session}),
    );
    let mut positions = vec![motor.position().await?];
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        positions.push(motor.position().await?);
    }
    let turned = positions.last().copied().unwrap_or_default() - positions[0];
    ensure!(turned > 0.0, "motor1's position did not advance: {positions:?}");
    let shown: Vec<String> = positions.iter().map(|p| format!("{p:.2}")).collect();
    report.ok(
        format!("position {} revolutions: advancing", shown.join(" → ")),
        json!({"positions": positions, "revolutions": turned}),
    );
    motor.stop().await?;
    report.ok("stopped motor1", json!({"stopped": true}));
    Ok(turned)
}

/// Starts `tether call ADDR motor1 set-power 0.5 --hold` as a separate
/// process, SIGKILLs it, and waits for the machine to stop the motor.
/// Returns the time from the kill to the stop, and the stop.
async fn kill_a_client(
    report: &Report,
    machine: &DemoMachine,
    direct: &RobotClient,
) -> anyhow::Result<(Duration, SafetyStop)> {
    let exe = std::env::current_exe().context("cannot find the tether executable")?;
    let addr = machine.addr.to_string();
    let mut child = tokio::process::Command::new(exe)
        .args(["call", &addr, "motor1", "set-power", "0.5", "--hold"])
        .env("TETHER_LOG", "error")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a client process")?;
    let pid = child.id().unwrap_or_default();
    let stderr = child.stderr.take().map(|mut e| {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = e.read_to_string(&mut text).await;
            text
        })
    });
    let stdout = child.stdout.take().context("no stdout from the client process")?;
    let holding = async {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(id) = line.strip_prefix("holding session ") {
                return Ok(id.trim().to_owned());
            }
        }
        Err(anyhow!("it exited"))
    };
    let session = match tokio::time::timeout(Duration::from_secs(20), holding).await {
        Ok(Ok(session)) => session,
        outcome => {
            let _ = child.start_kill();
            let status = child.wait().await.ok();
            let stderr = match stderr {
                Some(task) => task.await.unwrap_or_default(),
                None => String::new(),
            };
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 20 s".to_owned(),
            };
            bail!("the client process did not start holding motor1 ({why}; status {status:?}): {}", stderr.trim());
        }
    };
    ensure!(!session.starts_with("none"), "the client process has no session ({session})");
    let motor = Motor::from_robot(direct, "motor1");
    let (on, power) = motor.is_powered().await?;
    ensure!(on, "motor1 is not powered after the client process set it");
    report.ok(
        format!(
            "process {pid} set motor1 to {power} and holds session {session}, heartbeating every {} ms",
            (WINDOW / 5).as_millis()
        ),
        json!({"pid": pid, "session": session, "power": power}),
    );

    let mut stops = machine.machine.safety_stops();
    child.start_kill().context("cannot kill the client process")?;
    let killed = Instant::now();
    report.note(format!("SIGKILL → process {pid}: no goodbye, no more heartbeats"), json!({"signal": "SIGKILL"}));
    let stop = wait_for_stop(&mut stops, &session, WINDOW + Duration::from_secs(3)).await?;
    let after_kill = killed.elapsed();
    let _ = child.wait().await;
    report.safety_stop(&stop, after_kill, "SIGKILL");
    let (on, _) = motor.is_powered().await?;
    ensure!(!on, "motor1 still reports power after the safety stop");
    report.ok("motor1 is off (read over the direct client)", json!({"is_powered": false}));
    Ok((after_kill, stop))
}

/// Waits for the machine to stop motor1 because `session` lapsed.
async fn wait_for_stop(
    stops: &mut broadcast::Receiver<SafetyStop>,
    session: &str,
    limit: Duration,
) -> anyhow::Result<SafetyStop> {
    let wait = async {
        loop {
            match stops.recv().await {
                Ok(stop) if stop.resource == "motor1" && stop.session.is_some_and(|s| s.to_string() == session) => {
                    return Ok(stop);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("the machine's safety-stop feed closed"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .map_err(|_| anyhow!("the machine did not stop motor1 within {limit:?} of session {session} going silent"))?
}

/// The client whose link the demo cuts: direct gRPC through a [`Proxy`],
/// with short reconnection delays.
struct Roaming {
    robot: RobotClient,
    proxy: Proxy,
    events: Follower,
    motor: Motor,
    session: String,
}

/// What a short cut showed.
struct ShortCut {
    reconnected_after: Duration,
}

/// What a long cut showed.
struct LongCut {
    stopped_after: Duration,
    after_deadline: Duration,
    reconnected_after: Duration,
}

impl Roaming {
    /// Connects through a new proxy and sets motor1 to half power.
    async fn connect(report: &Report, machine: &DemoMachine) -> anyhow::Result<Self> {
        let proxy = Proxy::start(machine.addr).await.context("cannot start the TCP proxy")?;
        // Retry at least every 100 ms (the default doubles up to 25.6 s
        // between the 10 attempts), and keep trying through the long cut.
        let options = Options::default().with_reconnect(
            ReconnectOptions::default().with_max_wait(Some(Duration::from_millis(100))).with_max_attempts(100),
        );
        let robot = RobotClient::connect(DialConf::direct(proxy.addr().to_string()), options)
            .await
            .context("the proxied client cannot connect")?;
        let events = Follower::start(report, "proxied", &robot);
        let motor = Motor::from_robot(&robot, "motor1");
        motor.set_power(0.5).await?;
        let session = robot.session_id().context("the proxied client started no session")?;
        report.ok(
            format!(
                "a third client connects through a TCP proxy on {} and sets motor1 to 0.5 (session {session})",
                proxy.addr()
            ),
            json!({"client": "proxied", "proxy": proxy.addr().to_string(), "session": session}),
        );
        Ok(Self { robot, proxy, events, motor, session })
    }

    /// Cuts the link for [`SHORT_CUT`]: the client reconnects, resumes its
    /// session, and the machine stops nothing.
    async fn short_cut(&mut self, report: &Report, machine: &DemoMachine) -> anyhow::Result<ShortCut> {
        let mut stops = machine.machine.safety_stops();
        let cut = self.cut(report, SHORT_CUT).await?;
        let (connected, _) = self.events.wait_for(&["connected"], Duration::from_secs(5)).await?;
        let (_, resumed) = self.events.wait_for(&["session_resumed", "session_lapsed"], Duration::from_secs(3)).await?;
        match resumed {
            ConnectionEvent::SessionResumed { id } if id == self.session => {}
            other => bail!("expected session {} to be resumed, got {other:?}", self.session),
        }
        while let Ok(stop) = stops.try_recv() {
            ensure!(stop.resource != "motor1", "the machine stopped motor1 during a {SHORT_CUT:?} cut");
        }
        let (on, power) = self.motor.is_powered().await?;
        ensure!(on, "motor1 stopped during a {SHORT_CUT:?} cut");
        report.ok(
            format!("same session {}, motor1 still running at {power}: the machine stopped nothing", self.session),
            json!({"session": self.session, "session_resumed": true, "is_powered": on, "power": power}),
        );
        Ok(ShortCut { reconnected_after: connected.saturating_duration_since(cut) })
    }

    /// Cuts the link for [`LONG_CUT`]: the machine stops motor1 when the
    /// session lapses; the client reconnects with a new session and says so.
    async fn long_cut(&mut self, report: &Report, machine: &DemoMachine) -> anyhow::Result<LongCut> {
        let mut stops = machine.machine.safety_stops();
        report.note(
            format!("✂ link cut for {} ms (window {} ms)", LONG_CUT.as_millis(), WINDOW.as_millis()),
            json!({"cut_ms": millis(LONG_CUT)}),
        );
        self.proxy.down();
        let cut = Instant::now();
        let stop = wait_for_stop(&mut stops, &self.session, LONG_CUT).await?;
        let stopped_after = cut.elapsed();
        report.safety_stop(&stop, stopped_after, "cut");
        tokio::time::sleep(LONG_CUT.saturating_sub(cut.elapsed())).await;
        self.restore(report, LONG_CUT).await?;
        let (connected, _) = self.events.wait_for(&["connected"], Duration::from_secs(5)).await?;
        let (_, lapsed) = self.events.wait_for(&["session_lapsed", "session_resumed"], Duration::from_secs(3)).await?;
        let new = match lapsed {
            ConnectionEvent::SessionLapsed { old, new } if old == self.session => new,
            other => bail!("expected session {} to have lapsed, got {other:?}", self.session),
        };
        let (on, _) = self.motor.is_powered().await?;
        ensure!(!on, "motor1 still runs after its session lapsed");
        report.ok(
            format!(
                "new session {new}; motor1 is off, and the app knows: it decides whether to drive again \
                 (the same Motor client works)"
            ),
            json!({"old_session": self.session, "new_session": new, "session_lapsed": true, "is_powered": on}),
        );
        self.session = new;
        Ok(LongCut {
            stopped_after,
            after_deadline: stop.delay,
            reconnected_after: connected.saturating_duration_since(cut),
        })
    }

    /// Cuts the link for `gap`, then restores it; returns when it was cut.
    async fn cut(&self, report: &Report, gap: Duration) -> anyhow::Result<Instant> {
        report.note(
            format!("✂ link cut for {} ms (window {} ms)", gap.as_millis(), WINDOW.as_millis()),
            json!({"cut_ms": millis(gap)}),
        );
        self.proxy.down();
        let cut = Instant::now();
        tokio::time::sleep(gap).await;
        self.restore(report, gap).await?;
        Ok(cut)
    }

    async fn restore(&self, report: &Report, gap: Duration) -> anyhow::Result<()> {
        self.proxy.up().await.context("cannot restore the proxy's listener")?;
        report.note(format!("link restored after {} ms", gap.as_millis()), json!({"restored_after_ms": millis(gap)}));
        Ok(())
    }
}

/// Prints a client's connection events as they happen and keeps them for
/// the steps that wait for one. Stops following when dropped.
struct Follower {
    events: mpsc::UnboundedReceiver<(Instant, ConnectionEvent)>,
    task: JoinHandle<()>,
}

impl Follower {
    fn start(report: &Report, client: &'static str, robot: &RobotClient) -> Self {
        let mut events = robot.events();
        let (tx, rx) = mpsc::unbounded_channel();
        let report = report.clone();
        let task = tokio::spawn(async move {
            let mut retries = Retries::default();
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let at = Instant::now();
                        report.event(client, &event, &mut retries);
                        let _ = tx.send((at, event));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self { events: rx, task }
    }

    /// The next event named one of `names` (earlier ones are skipped), and
    /// when it happened. Fails at once if reconnection gives up.
    async fn wait_for(&mut self, names: &[&str], limit: Duration) -> anyhow::Result<(Instant, ConnectionEvent)> {
        let wait = async {
            while let Some((at, event)) = self.events.recv().await {
                if names.contains(&event.name()) {
                    return Ok((at, event));
                }
                if let ConnectionEvent::ReconnectionFailed { error, attempts } = &event {
                    bail!("the client gave up reconnecting after {attempts} attempts: {error}");
                }
            }
            bail!("the client's events ended")
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| anyhow!("no {} event within {limit:?}", names.join(" or ")))?
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Dial attempts and backoff delays of a reconnection, shown to people as
/// one line instead of two per attempt.
#[derive(Default)]
struct Retries {
    dials: u32,
    delays_ms: Vec<u64>,
}

/// Prints the demo's lines, for people or as JSON. Cheap to clone.
#[derive(Clone)]
struct Report {
    inner: Arc<ReportInner>,
}

struct ReportInner {
    json: bool,
    paint: Paint,
    started: Instant,
    /// The current step's number and key.
    step: Mutex<(usize, &'static str)>,
}

/// Indentation of the lines under a step heading.
const INDENT: &str = "      ";

impl Report {
    fn new(json: bool) -> Self {
        Self {
            inner: Arc::new(ReportInner {
                json,
                paint: Paint::stdout(),
                started: Instant::now(),
                step: Mutex::new((0, "start")),
            }),
        }
    }

    fn paint(&self, tone: Tone, text: impl std::fmt::Display) -> String {
        self.inner.paint.paint(tone, text)
    }

    fn current_step(&self) -> (usize, &'static str) {
        *self.inner.step.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since the demo started, for people (`+1.23s`).
    fn clock(&self) -> String {
        format!("+{:.2}s", self.inner.started.elapsed().as_secs_f64())
    }

    /// Writes a line; JSON lines get `kind`, `step` and `t_ms` added.
    fn emit(&self, kind: &str, fields: Value, human: impl FnOnce() -> String) {
        let line = if self.inner.json {
            let mut object = serde_json::Map::new();
            object.insert("kind".into(), kind.into());
            object.insert("step".into(), self.current_step().1.into());
            object.insert("t_ms".into(), millis(self.inner.started.elapsed()).into());
            if let Value::Object(fields) = fields {
                object.extend(fields);
            }
            Value::Object(object).to_string()
        } else {
            human()
        };
        // Output that cannot be written (a closed pipe) is not worth failing
        // the demo for; the exit status still tells.
        let mut stdout = std::io::stdout().lock();
        let _ = std::io::Write::write_all(&mut stdout, format!("{line}\n").as_bytes());
        let _ = std::io::Write::flush(&mut stdout);
    }

    fn banner(&self) {
        self.emit("start", json!({"steps": STEPS}), || {
            format!(
                "{}\n{}",
                self.paint(Tone::Bold, "tether demo: a machine, its safety net, and clients that survive network cuts"),
                self.paint(Tone::Dim, "everything runs in this process and on 127.0.0.1; no internet needed"),
            )
        });
    }

    /// Starts step `key`.
    fn step(&self, key: &'static str, title: &str) {
        let n = {
            let mut step = self.inner.step.lock().unwrap_or_else(|p| p.into_inner());
            *step = (step.0 + 1, key);
            step.0
        };
        self.emit("step", json!({"n": n, "of": STEPS, "title": title}), || {
            format!(
                "\n{} {}  {}",
                self.paint(Tone::Info, format!("[{n}/{STEPS}]")),
                self.paint(Tone::Bold, title),
                self.paint(Tone::Dim, self.clock())
            )
        });
    }

    /// Something that worked as it should.
    fn ok(&self, text: impl Into<String>, fields: Value) {
        let text = text.into();
        self.emit("info", with_message(fields, &text), || format!("{INDENT}{} {text}", self.paint(Tone::Good, "✓")));
    }

    /// Something the demo does or observes.
    fn note(&self, text: impl Into<String>, fields: Value) {
        let text = text.into();
        self.emit("info", with_message(fields, &text), || format!("{INDENT}{} {text}", self.paint(Tone::Dim, "·")));
    }

    /// A client's connection event.
    fn event(&self, client: &str, event: &ConnectionEvent, retries: &mut Retries) {
        if self.inner.json {
            let fields = match serde_json::to_value(event) {
                Ok(Value::Object(mut fields)) => {
                    fields.insert("client".into(), client.into());
                    Value::Object(fields)
                }
                _ => json!({"client": client, "event": event.name()}),
            };
            return self.emit("event", fields, String::new);
        }
        match event {
            ConnectionEvent::Dialing { .. } => {
                retries.dials += 1;
                return;
            }
            ConnectionEvent::RetryScheduled { delay_ms, .. } => {
                retries.delays_ms.push(*delay_ms);
                return;
            }
            _ => {}
        }
        let prefix = format!("{INDENT}{} {}", self.paint(Tone::Dim, self.clock()), self.paint(Tone::Info, client));
        if retries.dials > 0 {
            let retries = std::mem::take(retries);
            let mut delays: Vec<String> = retries.delays_ms.iter().take(6).map(u64::to_string).collect();
            if retries.delays_ms.len() > delays.len() {
                delays.push("…".into());
            }
            let backoff = if delays.is_empty() {
                String::new()
            } else {
                format!(", waiting {} ms between them (jittered backoff)", delays.join(", "))
            };
            let text = format!("{} dial attempts{backoff}", retries.dials);
            self.emit("event", Value::Null, || {
                format!("{prefix} {} {}", self.paint(Tone::Dim, "…"), self.paint(Tone::Dim, text))
            });
        }
        let (symbol, tone, text) = term::describe(event);
        self.emit("event", Value::Null, || format!("{prefix} {} {}", self.paint(tone, symbol), self.paint(tone, text)));
    }

    /// The machine stopped motor1: `delay` after `cause` (the kill or the
    /// cut). The machine's own measure is how long after the session's
    /// deadline (its last heartbeat plus the window) the stop completed.
    fn safety_stop(&self, stop: &SafetyStop, delay: Duration, cause: &str) {
        let session = stop.session.map(|s| s.to_string());
        let fields = json!({
            "resource": stop.resource, "session": session, "cause": cause,
            "delay_ms": millis(delay), "after_deadline_ms": millis(stop.delay),
            "heartbeat_window_ms": millis(WINDOW),
        });
        self.emit("safety_stop", fields, || {
            format!(
                "{INDENT}{} the machine stopped {} {} after the {cause}: {} after the session's deadline \
                 (last heartbeat + {} ms window)",
                self.paint(Tone::Good, "■"),
                stop.resource,
                self.paint(Tone::Bold, term::ms(millis(delay))),
                self.paint(Tone::Bold, term::ms(millis(stop.delay))),
                WINDOW.as_millis(),
            )
        });
    }

    fn error(&self, error: &anyhow::Error) {
        self.emit("error", json!({"error": format!("{error:#}")}), || {
            format!("\n{} {}", self.paint(Tone::Bad, "✗ the demo failed:"), self.paint(Tone::Bad, format!("{error:#}")))
        });
    }

    fn summary(&self, n: &Numbers) {
        *self.inner.step.lock().unwrap_or_else(|p| p.into_inner()) = (STEPS, "summary");
        let fields = serde_json::to_value(n).unwrap_or(Value::Null);
        self.emit("summary", fields, || self.summary_table(n));
    }

    fn summary_table(&self, n: &Numbers) -> String {
        let window = term::ms(n.heartbeat_window_ms);
        let pair = n.webrtc_candidate_pair.as_deref().unwrap_or("?");
        let rows: Vec<(String, String, String)> = vec![
            (
                "WebRTC connect (signaling + ICE + DTLS)".into(),
                term::ms(n.webrtc_connect_ms),
                format!("candidate pair {pair}"),
            ),
            ("WebRTC round trip".into(), term::ms(n.webrtc_rtt_ms), "GetVersion, median of 5".into()),
            ("Direct gRPC connect".into(), term::ms(n.direct_connect_ms), String::new()),
            ("Direct gRPC round trip".into(), term::ms(n.direct_rtt_ms), "GetVersion, median of 5".into()),
            (
                "motor1 at half power, 1 s".into(),
                format!("{:.2} rev", n.motor_revolutions),
                "position advancing".into(),
            ),
            (
                "Killed client → motor1 stopped".into(),
                term::ms(n.kill_to_stop_ms),
                format!("window {window}; {} after the deadline", term::ms(n.kill_stop_after_deadline_ms)),
            ),
            (
                format!("{} cut → reconnected", term::ms(n.short_cut_ms)),
                term::ms(n.short_cut_reconnect_ms),
                "same session resumed, motor1 kept running".into(),
            ),
            (
                format!("{} cut → motor1 stopped", term::ms(n.long_cut_ms)),
                term::ms(n.long_cut_stop_ms),
                format!("{} after the deadline", term::ms(n.long_cut_stop_after_deadline_ms)),
            ),
            (
                format!("{} cut → reconnected", term::ms(n.long_cut_ms)),
                term::ms(n.long_cut_reconnect_ms),
                "old session lapsed, new session".into(),
            ),
            ("Whole demo".into(), format!("{:.1} s", n.total_ms / 1e3), String::new()),
        ];
        let label_width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let rule = "─".repeat(label_width + value_width + 48);
        let mut out = format!("\n{}\n  {}\n", self.paint(Tone::Bold, "Summary"), self.paint(Tone::Dim, &rule));
        for (label, value, note) in &rows {
            out.push_str(&format!(
                "  {label:<label_width$}  {}  {}\n",
                self.paint(Tone::Bold, format!("{value:>value_width$}")),
                self.paint(Tone::Dim, note)
            ));
        }
        out.push_str(&format!("  {}\n\n", self.paint(Tone::Dim, &rule)));
        out.push_str(&format!(
            "{} Next: run a machine with {} and watch a client's connection with {}",
            self.paint(Tone::Good, "✓ all steps passed."),
            self.paint(Tone::Info, "tether machine"),
            self.paint(Tone::Info, "tether call 127.0.0.1:8080 watch"),
        ));
        out
    }
}

/// `fields` plus `"message": text`.
fn with_message(fields: Value, text: &str) -> Value {
    let mut object = match fields {
        Value::Object(object) => object,
        _ => serde_json::Map::new(),
    };
    object.insert("message".into(), text.into());
    Value::Object(object)
}
