//! A client for fault-injection tests (crates/tether/tests/faults.rs runs it
//! inside a network namespace and cuts its network).
//!
//! It connects (directly to `ADDR`, or over WebRTC with `--signaling URL
//! --host NAME`), starts the motor with `set-power` (which starts a session),
//! and then, until killed, prints one JSON object per line on stdout (flushed
//! at once), each with an `event` field and `ts_ms` (wall clock, ms since the
//! Unix epoch, so a test can line events up with what it did):
//!
//! - `ready`: connected (`transport`: `direct` or `webrtc`) and the motor runs (`session`);
//! - every [`tether_client::ConnectionEvent`], as the SDK serializes it
//!   (`reconnecting`, `dialing`, `retry_scheduled`, `connected`,
//!   `session_resumed`, `session_lapsed`, `reconnection_failed`, `disconnected`, …);
//! - `tick` every `--tick-ms` (200): the result of one cheap call (`is_powered`):
//!   `ok`, `powered`, `session` (the client's current id), `connected`,
//!   `took_ms`, and on failure the gRPC `code` (`Unavailable`, …) and `error`;
//! - with `--in-flight-unary`: `unary_started`, then `unary_done` when the
//!   long `go_for` it started ends (`ok`, `code`, `error`, `took_ms`);
//! - with `--in-flight-stream`: `stream_started` once a reflection stream
//!   that never gets an answer is open, then `stream_done` when it ends.
//!
//! A failed first connection or `set-power` prints `{"event":"error",…}` and
//! exits with status 1.
//!
//! ```text
//! cargo run -p tether --example fault_client -- 10.0.0.2:8080 --liveness-timeout-ms 450
//! cargo run -p tether --example fault_client -- --signaling http://10.0.0.3:8081 --host bot
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::{Value, json};
use tether_client::components::Motor;
use tether_client::{DialConf, IceServer, Liveness, Options, ReconnectOptions, RobotClient};
use tokio::sync::broadcast::error::RecvError;

#[derive(Parser, Debug)]
#[command(about = "Connects, runs a motor, and prints connection events and call results as JSON lines")]
struct Args {
    /// Machine address (`host:port`) for a direct dial.
    address: Option<String>,
    /// Dial over WebRTC through this signaling service.
    #[arg(long, value_name = "URL")]
    signaling: Option<String>,
    /// The machine's host name for WebRTC signaling.
    #[arg(long, value_name = "NAME", default_value = "bot")]
    host: String,
    /// WebRTC: a STUN/TURN server URL (repeatable; default none, host candidates only).
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// Never reconnect.
    #[arg(long)]
    no_reconnect: bool,
    /// Reconnection attempts per outage.
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Cap on each delay between attempts, in ms.
    #[arg(long, value_name = "MS")]
    max_wait_ms: Option<u64>,
    /// A link silent this long is dead, in ms.
    #[arg(long, value_name = "MS")]
    liveness_timeout_ms: Option<u64>,
    /// Keepalive interval, in ms (default: the SDK's, or half the liveness timeout if that is shorter).
    #[arg(long, value_name = "MS")]
    liveness_interval_ms: Option<u64>,
    /// Limit on each dial, in ms.
    #[arg(long, value_name = "MS")]
    dial_timeout_ms: Option<u64>,
    /// The motor to drive.
    #[arg(long, default_value = "motor1")]
    motor: String,
    /// The power to set.
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true)]
    power: f64,
    /// Interval between ticks, in ms.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    tick_ms: u64,
    /// Also start a long `go_for` (10 rpm, 1000 revolutions) and report how it ends.
    #[arg(long)]
    in_flight_unary: bool,
    /// Also open a server-reflection stream that never gets an answer and report how it ends.
    #[arg(long)]
    in_flight_stream: bool,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Prints one JSON line (with `ts_ms`) and flushes it.
fn emit(mut value: Value) {
    if let Some(o) = value.as_object_mut() {
        o.insert("ts_ms".into(), json!(now_ms()));
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test is gone; nothing to do about it.
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}

/// `{"ok":false,"code":…,"error":…}` fields of a failure.
fn failure(e: &tether_client::Error) -> Value {
    json!({"ok": false, "code": format!("{:?}", e.code()), "error": e.to_string()})
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn options(args: &Args) -> Options {
    let mut reconnect = ReconnectOptions::default().with_no_reconnect(args.no_reconnect);
    if let Some(n) = args.max_attempts {
        reconnect.max_attempts = n;
    }
    if let Some(w) = args.max_wait_ms {
        reconnect.max_wait = Some(Duration::from_millis(w));
    }
    let mut liveness = Liveness::default();
    if let Some(t) = args.liveness_timeout_ms {
        liveness.timeout = Duration::from_millis(t);
        liveness.interval = liveness.interval.min(liveness.timeout / 2);
    }
    if let Some(i) = args.liveness_interval_ms {
        liveness.interval = Duration::from_millis(i);
    }
    Options::default().with_reconnect(reconnect).with_liveness(liveness)
}

fn dial_conf(args: &Args) -> Result<DialConf, String> {
    let mut conf = match (&args.signaling, &args.address) {
        (Some(signaling), _) => DialConf::webrtc(args.host.clone(), signaling.clone()).with_webrtc(|c| {
            c.ice_servers = args.ice_servers.iter().map(|u| IceServer::url(u.as_str())).collect();
        }),
        (None, Some(address)) => DialConf::direct(address.clone()),
        (None, None) => return Err("give an ADDRESS or --signaling URL".into()),
    };
    if let Some(t) = args.dial_timeout_ms {
        conf = conf.with_dial_timeout(Duration::from_millis(t));
    }
    Ok(conf)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=warn,webrtc_ice=error,webrtc_sctp=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let conf = match dial_conf(&args) {
        Ok(c) => c,
        Err(e) => {
            emit(json!({"event": "error", "stage": "arguments", "error": e}));
            return ExitCode::FAILURE;
        }
    };
    let robot = match RobotClient::connect(conf, options(&args)).await {
        Ok(r) => r,
        Err(e) => {
            emit(merge(json!({"event": "error", "stage": "connect"}), failure(&e)));
            return ExitCode::FAILURE;
        }
    };
    let mut events = robot.events();
    let motor = Motor::from_robot(&robot, &args.motor);
    if let Err(e) = motor.set_power(args.power).await {
        emit(merge(json!({"event": "error", "stage": "set_power"}), failure(&e)));
        return ExitCode::FAILURE;
    }
    let transport = if robot.webrtc().is_some() { "webrtc" } else { "direct" };
    emit(json!({"event": "ready", "session": robot.session_id(), "transport": transport}));

    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => emit(
                    serde_json::to_value(&e).unwrap_or_else(|e| json!({"event": "bad_event", "error": e.to_string()})),
                ),
                Err(RecvError::Lagged(n)) => emit(json!({"event": "lagged", "missed": n})),
                Err(RecvError::Closed) => return,
            }
        }
    });

    if args.in_flight_unary {
        let motor = motor.clone();
        tokio::spawn(async move {
            emit(json!({"event": "unary_started", "call": "go_for"}));
            let started = Instant::now();
            let result = motor.go_for(10.0, 1000.0).await;
            let took = json!({"event": "unary_done", "took_ms": ms(started.elapsed())});
            emit(match result {
                Ok(()) => merge(took, json!({"ok": true})),
                Err(e) => merge(took, failure(&e)),
            });
        });
    }

    if args.in_flight_stream {
        let channel = robot.channel();
        tokio::spawn(async move {
            use tonic_reflection::pb::v1::ServerReflectionRequest;
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            let started = Instant::now();
            let mut client = ServerReflectionClient::new(channel);
            let request = tokio_stream::pending::<ServerReflectionRequest>();
            let result = match client.server_reflection_info(request).await {
                Ok(response) => {
                    emit(json!({"event": "stream_started", "call": "server_reflection_info"}));
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status),
                        }
                    }
                }
                Err(status) => Err(status),
            };
            let took = json!({"event": "stream_done", "took_ms": ms(started.elapsed())});
            emit(match result {
                Ok(()) => merge(took, json!({"ok": true})),
                Err(status) => merge(took, failure(&tether_client::Error::Status(status))),
            });
        });
    }

    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let result = motor.is_powered().await;
        let common = json!({
            "event": "tick",
            "session": robot.session_id(),
            "connected": robot.is_connected(),
            "took_ms": ms(started.elapsed()),
        });
        emit(match result {
            Ok((on, power)) => merge(common, json!({"ok": true, "powered": on, "power": power})),
            Err(e) => merge(common, failure(&e)),
        });
    }
}
