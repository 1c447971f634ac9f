//! Polls a sensor, drives a motor, and rebuilds its polling after a
//! reconnect using the connection events.
//!
//! ```sh
//! cargo run --release -p tether -- machine                           # a fake machine on :8080
//! cargo run -p tether-client --example poll_and_drive -- 127.0.0.1:8080
//! ```
//!
//! Stop the machine for a few seconds and start it again to watch the app
//! pause, reconnect and carry on. Ctrl-C stops the motor and exits.
//!
//! # The pattern
//!
//! The [`RobotClient`] survives drops by itself: it notices a dead link,
//! redials with backoff, resumes its session, and the component clients
//! made before the drop keep working. What it cannot know is the *app's*
//! own state — loops, streams, what the motors should be doing. The app
//! keeps that in step with the connection through [`RobotClient::events`]:
//!
//! * `reconnecting` — stop the polling task. Calls would fail fast with
//!   UNAVAILABLE until the link is back (or wait, on a
//!   [`RobotClient::wait_for_ready`] handle); there is no point in a loop of
//!   errors, and a stream would be dead anyway.
//! * `connected` (with `reconnected: true`) — start the polling again,
//!   from scratch.
//! * `session_resumed` — the outage was shorter than the heartbeat window:
//!   the machine stopped nothing; the motor is still doing what it was told.
//! * `session_lapsed` — the outage was longer: the machine has stopped every
//!   actuator this client drove (that is its safety net). If the app still
//!   wants the motor running it must say so again: *re-arm*.
//! * `reconnection_failed` / `disconnected` — the client gave up: exit (or
//!   build a new client).
//!
//! Subscribe to the events *before* starting the work they control, so that
//! nothing happens between the two unseen.

use std::time::Duration;

use tether_client::components::{Motor, Sensor};
use tether_client::{ConnectionEvent, ConnectionState, DialConf, Options, ReconnectOptions, RobotClient};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// How often the sensor is read.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How often the motor changes direction.
const FLIP_EVERY: Duration = Duration::from_secs(3);
/// The motor's power (the sign flips every [`FLIP_EVERY`]).
const POWER: f64 = 0.3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    // Keep trying for a while (about a minute, at most 4 s apart) so that a
    // machine restart is survived.
    let options = Options::default()
        .with_reconnect(ReconnectOptions::default().with_max_attempts(30).with_max_wait(Some(Duration::from_secs(4))));
    let robot = RobotClient::connect(DialConf::direct(address.clone()), options).await?;
    println!("connected to {address}");
    // Subscribe first, then start the work the events control.
    let mut events = robot.events();
    let mut app = App::new(&robot);
    app.arm().await;
    app.start_polling();

    let mut flip = tokio::time::interval_at(tokio::time::Instant::now() + FLIP_EVERY, FLIP_EVERY);
    // Flips missed while disconnected are skipped, not made up in a burst.
    flip.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            // Only while connected: a reversal the machine never heard of
            // would leave `power` saying one thing and the motor another.
            _ = flip.tick(), if robot.is_connected() => app.flip().await,
            received = events.recv() => match received {
                Ok(event) => match event {
                    ConnectionEvent::Reconnecting { .. } => {
                        println!("connection lost: pausing the polling");
                        app.stop_polling();
                    }
                    ConnectionEvent::Connected { reconnected: true, .. } => {
                        println!("reconnected: polling again");
                        app.start_polling();
                        // A full period before the next reversal, not a
                        // catch-up right away.
                        flip.reset();
                    }
                    ConnectionEvent::SessionResumed { id } => {
                        println!("session {id} resumed: the motor never stopped");
                    }
                    ConnectionEvent::SessionLapsed { old, new } => {
                        println!("session {old} lapsed, the machine stopped the motor; re-arming in session {new}");
                        app.arm().await;
                    }
                    ConnectionEvent::ReconnectionFailed { error, attempts } => {
                        break Err(anyhow::anyhow!("gave up after {attempts} reconnection attempts: {error}"));
                    }
                    ConnectionEvent::Disconnected { error } => {
                        break Err(anyhow::anyhow!("disconnected: {}", error.unwrap_or_default()));
                    }
                    _ => {}
                },
                // Too slow to keep up: some events are gone. Resynchronise
                // from the connection's current state instead.
                Err(RecvError::Lagged(_)) => match *robot.state().borrow() {
                    ConnectionState::Connected => app.start_polling(),
                    ConnectionState::Reconnecting | ConnectionState::Disconnected => app.stop_polling(),
                },
                Err(RecvError::Closed) => break Ok(()),
            },
        }
    };
    app.stop_polling();
    // Be explicit; the machine would also stop it once our session lapses.
    if let Err(e) = app.motor.stop().await {
        eprintln!("could not stop the motor: {e}");
    }
    robot.close().await;
    outcome
}

/// The application's state: what it polls and what it wants the motor to do.
struct App {
    sensor: Sensor,
    motor: Motor,
    /// The power the app wants; re-applied after a session lapsed.
    power: f64,
    /// The polling task, while it runs.
    poller: Option<JoinHandle<()>>,
}

impl App {
    fn new(robot: &RobotClient) -> Self {
        // Component clients are made once; they keep working across
        // reconnections.
        Self {
            sensor: Sensor::from_robot(robot, "sensor1"),
            motor: Motor::from_robot(robot, "motor1"),
            power: POWER,
            poller: None,
        }
    }

    /// (Re)applies the motor power the app wants. Safety-monitored, so the
    /// client starts (or uses) a session and the machine stops the motor if
    /// this program vanishes.
    async fn arm(&self) {
        match self.motor.set_power(self.power).await {
            Ok(()) => println!("motor1 power {}", self.power),
            Err(e) => eprintln!("could not set motor1's power: {e}"),
        }
    }

    /// Reverses the motor.
    async fn flip(&mut self) {
        self.power = -self.power;
        self.arm().await;
    }

    /// Starts polling the sensor (and the motor's position) every
    /// [`POLL_EVERY`], unless it already runs.
    fn start_polling(&mut self) {
        if self.poller.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let (sensor, motor) = (self.sensor.clone(), self.motor.clone());
        self.poller = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            loop {
                tick.tick().await;
                // Errors are reported, not fatal: a call can fail at the
                // moment the link drops, before `reconnecting` stops us.
                match (sensor.readings_json().await, motor.position().await) {
                    (Ok(readings), Ok(position)) => println!("sensor1 {readings}  motor1 at {position:.2} rev"),
                    (Err(e), _) | (_, Err(e)) => eprintln!("poll failed: {e}"),
                }
            }
        }));
    }

    /// Stops the polling task.
    fn stop_polling(&mut self) {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
    }
}
