//! `tether call ADDR watch`: stays connected and prints the connection's
//! events as they happen, with a liveness probe every couple of seconds.
//!
//! Human output is one line per event (`12:34:56.789 ↻ connection lost;
//! reconnecting`, UTC like the logs); on a terminal the latest probe is a
//! status line redrawn in place under them, elsewhere each probe is a line.
//! `--json` prints exactly one JSON object per line: the client's
//! [`ConnectionEvent`] as serialized (its `event` field names it) plus `ts`,
//! and `{"event": "liveness", "ok": …, "rtt_ms": …}` for the probes.
//!
//! The command runs until Ctrl-C (exit 0). When the client gives up — a
//! `reconnection_failed` event, or a drop with `--no-reconnect` — it exits 1.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use tether_client::{ConnectionEvent, ConnectionState, DialConf, Method, Options, RobotClient};
use tokio::sync::broadcast::error::RecvError;

use super::{CallArgs, Failure};
use crate::term::{self, Paint, Tone};

/// How often the liveness probe runs.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe that takes longer than this counts as failed.
const PROBE_LIMIT: Duration = Duration::from_secs(2);
/// After Ctrl-C, how long to wait for the client's `disconnected` event.
const CLOSE_LIMIT: Duration = Duration::from_millis(500);

/// Runs the watch until Ctrl-C or until the client gives up.
pub(super) async fn run(args: &CallArgs, conf: DialConf, options: Options) -> Result<(), Failure> {
    if args.hold || args.out.is_some() || args.mime.is_some() {
        return Err(Failure::invalid("watch takes none of --hold, --out, --mime"));
    }
    let method = match &conf {
        DialConf::WebRtc(_) => Method::Webrtc,
        _ => Method::Grpc,
    };
    let mut out = Printer::new(args.json);
    if !args.json {
        let heading = format!("watching {} over {} (Ctrl-C to stop)", args.address, term::method_name(method));
        out.line(&out.paint.paint(Tone::Bold, heading))?;
    }
    let robot = RobotClient::connect(conf, options).await?;
    // `connect` has already emitted connecting/dialing/connected; a receiver
    // only sees events from now on. Say how the connection came up with the
    // same event, measured the same way.
    let mut events = robot.events();
    out.event(&connected_now(&robot).await)?;

    let mut probes = tokio::time::interval_at(tokio::time::Instant::now() + PROBE_EVERY, PROBE_EVERY);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                robot.close().await;
                return drain_until_disconnected(&mut events, &mut out).await;
            }
            received = events.recv() => match received {
                Ok(event) => {
                    out.event(&event)?;
                    give_up_after(&event)?;
                }
                Err(RecvError::Lagged(missed)) => {
                    eprintln!("warning: missed {missed} connection events (output too slow)");
                }
                Err(RecvError::Closed) => {
                    return Err(Failure::new(tonic::Code::Unavailable, "the client closed its event stream"));
                }
            },
            _ = probes.tick() => {
                // While reconnecting a probe would only fail fast; the events
                // already say what is going on.
                if *robot.state().borrow() == ConnectionState::Connected {
                    let rtt = probe(&robot).await;
                    out.liveness(&rtt)?;
                }
            }
        }
    }
}

/// Fails the command when `event` means the client has given up.
fn give_up_after(event: &ConnectionEvent) -> Result<(), Failure> {
    match event {
        ConnectionEvent::ReconnectionFailed { error, attempts } => Err(Failure::new(
            tonic::Code::Unavailable,
            format!("reconnection failed after {attempts} attempts: {error}"),
        )),
        ConnectionEvent::Disconnected { error: Some(error) } => {
            Err(Failure::new(tonic::Code::Unavailable, format!("disconnected: {error}")))
        }
        _ => Ok(()),
    }
}

/// After `close()`: prints the remaining events (`disconnecting`,
/// `disconnected`) for a moment.
async fn drain_until_disconnected(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
    out: &mut Printer,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + CLOSE_LIMIT;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        out.event(&event)?;
        if matches!(event, ConnectionEvent::Disconnected { .. }) {
            break;
        }
    }
    out.finish()
}

/// A `connected` event describing the connection as it is now.
async fn connected_now(robot: &RobotClient) -> ConnectionEvent {
    let (method, candidate_pair) = match robot.webrtc() {
        Some(w) => {
            let pair = w.selected_pair().await.map(|p| format!("{}/{}", p.local_type, p.remote_type));
            (Method::Webrtc, pair)
        }
        None => (Method::Grpc, None),
    };
    let rtt_ms = probe(robot).await.ok().map(|d| d.as_secs_f64() * 1e3);
    ConnectionEvent::Connected { method, candidate_pair, rtt_ms, reconnected: false }
}

/// One cheap call (GetVersion) and its round trip.
async fn probe(robot: &RobotClient) -> Result<Duration, String> {
    let started = Instant::now();
    match tokio::time::timeout(PROBE_LIMIT, robot.version()).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(Failure::from(e).to_string()),
        Err(_) => Err(format!("DeadlineExceeded: no answer within {PROBE_LIMIT:?}")),
    }
}

/// Writes event lines and the liveness status to stdout.
struct Printer {
    json: bool,
    paint: Paint,
    /// Redraw the liveness status in place (a terminal, human output).
    status_in_place: bool,
    /// A status line is on screen (without a newline) and must be cleared
    /// before the next line.
    status_shown: bool,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self { json, paint: Paint::stdout(), status_in_place: !json && term::stdout_is_terminal(), status_shown: false }
    }

    /// Prints one connection event.
    fn event(&mut self, event: &ConnectionEvent) -> Result<(), Failure> {
        let now = SystemTime::now();
        if self.json {
            let mut value =
                serde_json::to_value(event).map_err(|e| Failure::local(format!("cannot serialize an event: {e}")))?;
            if let Some(object) = value.as_object_mut() {
                object.insert("ts".into(), term::rfc3339(now).into());
            }
            return self.line(&value.to_string());
        }
        let (symbol, tone, text) = term::describe(event);
        let p = self.paint;
        self.line(&format!(
            "{} {} {}",
            p.paint(Tone::Dim, term::clock(now)),
            p.paint(tone, symbol),
            p.paint(tone, text)
        ))
    }

    /// Prints the outcome of a liveness probe.
    fn liveness(&mut self, rtt: &Result<Duration, String>) -> Result<(), Failure> {
        let now = SystemTime::now();
        if self.json {
            let value = match rtt {
                Ok(d) => serde_json::json!({
                    "event": "liveness", "ts": term::rfc3339(now), "ok": true, "rtt_ms": d.as_secs_f64() * 1e3,
                }),
                Err(e) => serde_json::json!({"event": "liveness", "ts": term::rfc3339(now), "ok": false, "error": e}),
            };
            return self.line(&value.to_string());
        }
        let p = self.paint;
        let text = match rtt {
            Ok(d) => p.paint(Tone::Dim, format!("alive, rtt {}", term::ms(d.as_secs_f64() * 1e3))),
            Err(e) => p.paint(Tone::Bad, format!("probe failed: {e}")),
        };
        let line = format!("{} {} {text}", p.paint(Tone::Dim, term::clock(now)), p.paint(Tone::Dim, "·"));
        if self.status_in_place { self.status(&line) } else { self.line(&line) }
    }

    /// Prints a line (clearing a status line first).
    fn line(&mut self, text: &str) -> Result<(), Failure> {
        let mut stdout = std::io::stdout().lock();
        let clear = if std::mem::take(&mut self.status_shown) { "\r\x1b[2K" } else { "" };
        writeln!(stdout, "{clear}{text}").and_then(|()| stdout.flush()).map_err(write_failed)
    }

    /// Ends a status line left on screen with a newline.
    fn finish(&mut self) -> Result<(), Failure> {
        if !std::mem::take(&mut self.status_shown) {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout).and_then(|()| stdout.flush()).map_err(write_failed)
    }

    /// Replaces the status line (terminal only).
    fn status(&mut self, text: &str) -> Result<(), Failure> {
        let mut stdout = std::io::stdout().lock();
        self.status_shown = true;
        write!(stdout, "\r\x1b[2K{text}").and_then(|()| stdout.flush()).map_err(write_failed)
    }
}

fn write_failed(e: std::io::Error) -> Failure {
    Failure::local(format!("cannot write to stdout: {e}"))
}
