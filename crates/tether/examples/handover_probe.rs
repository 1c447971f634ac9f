//! What a network change costs a WebRTC client that drives a motor, for
//! measurements in network namespaces (crates/tether/tests/nat.rs moves the
//! client to another subnet while this runs).
//!
//! Dials `--host` through `--signaling` with a session, sets `--motor` to
//! 0.5 power, prints `ready <session id>` on stdout, then calls `is_powered`
//! back to back for `--seconds`, and prints one JSON object on stdout:
//!
//! - `gaps_ms`: every pause between two successful calls longer than
//!   `--gap-ms` (the outages), in order;
//! - `calls_ok`, `calls_failed`: calls that succeeded and failed;
//! - `events`: the client's connection events, by name, in order;
//! - `ice_restart_ms`: the `took_ms` of each `ice_restarted` event;
//! - `session_before`, `session_after`: the session id at the start and end;
//! - `powered_after`: whether the motor still ran at the end.
//!
//! `--no-ice-restart` turns the client's ICE restart off, so that a network
//! change is an outage that a full redial ends (the comparison the bench
//! row asks for).
//!
//! ```text
//! cargo run -p tether --example handover_probe -- --signaling http://203.0.113.1:8081 --host bot \
//!     --ice-server stun:203.0.113.1:3478 --seconds 10
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tether_client::components::Motor;
use tether_client::{ConnectionEvent, DialConf, IceRestartOptions, IceServer, Options, ReconnectOptions, RobotClient};

#[derive(Parser, Debug)]
#[command(about = "Measures the outage a network change causes; prints one JSON object")]
struct Args {
    /// Signaling service URL.
    #[arg(long)]
    signaling: String,
    /// The machine's host name at the signaling service.
    #[arg(long)]
    host: String,
    /// ICE server URL (repeatable).
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// How long to keep calling.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Pauses longer than this count as outages.
    #[arg(long, default_value_t = 150)]
    gap_ms: u64,
    /// The motor to drive.
    #[arg(long, default_value = "motor1")]
    motor: String,
    /// No ICE restart on a network change (a full redial instead).
    #[arg(long)]
    no_ice_restart: bool,
}

async fn run(args: &Args) -> Result<serde_json::Value, tether_client::Error> {
    let conf = DialConf::webrtc(args.host.clone(), args.signaling.clone())
        .with_webrtc(|c| c.ice_servers = args.ice_servers.iter().map(|u| IceServer::parse(u)).collect())
        .with_dial_timeout(Duration::from_secs(20));
    let options = Options::default()
        .with_ice_restart(IceRestartOptions::default().with_enabled(!args.no_ice_restart))
        .with_reconnect(
            ReconnectOptions::default().with_max_attempts(50).with_max_wait(Some(Duration::from_millis(500))),
        );
    let robot = RobotClient::connect(conf, options).await?;
    let mut events = robot.events();
    let session_before = robot.start_session().await?;
    let motor = Motor::from_robot(&robot, &args.motor);
    motor.set_power(0.5).await?;
    println!("ready {}", session_before.as_deref().unwrap_or("none"));

    let (mut calls_ok, mut calls_failed) = (0u64, 0u64);
    let mut gaps_ms = Vec::new();
    let started = Instant::now();
    let mut last_ok = Instant::now();
    while started.elapsed().as_secs_f64() < args.seconds {
        match tokio::time::timeout(Duration::from_secs(1), motor.is_powered()).await {
            Ok(Ok(_)) => {
                let gap = last_ok.elapsed();
                if gap > Duration::from_millis(args.gap_ms) {
                    gaps_ms.push(gap.as_secs_f64() * 1e3);
                }
                last_ok = Instant::now();
                calls_ok += 1;
            }
            Ok(Err(_)) | Err(_) => {
                calls_failed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let (mut names, mut ice_restart_ms) = (Vec::new(), Vec::new());
    while let Ok(e) = events.try_recv() {
        if let ConnectionEvent::IceRestarted { took_ms, .. } = &e {
            ice_restart_ms.push(*took_ms);
        }
        names.push(e.name());
    }
    let powered_after = motor.is_powered().await.map(|(on, _)| on).unwrap_or(false);
    let session_after = robot.session_id();
    robot.close().await;
    Ok(json!({
        "gaps_ms": gaps_ms,
        "calls_ok": calls_ok,
        "calls_failed": calls_failed,
        "events": names,
        "ice_restart_ms": ice_restart_ms,
        "session_before": session_before,
        "session_after": session_after,
        "powered_after": powered_after,
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(&args).await {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("handover_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
