//! Connect time and unary latency over WebRTC, for measurements in network
//! namespaces (crates/tether/tests/nat.rs compares a TURN relay reached over
//! UDP with one reached over TCP).
//!
//! Dials `--host` through `--signaling` `--connects` times (each: a fresh
//! client, dial and the first `is_powered` call, then close), then makes
//! `--calls` `is_powered` calls one after another on one more connection,
//! and prints one JSON object on stdout:
//! `{"connect_ms": [...], "unary_us": [...sorted], "local_type", "remote_type"}`.
//!
//! ```text
//! cargo run -p tether --example relay_probe -- --signaling http://203.0.113.1:8081 --host bot \
//!     --ice-server 'turn:u:p@203.0.113.1:3478?transport=tcp' --relay-only
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tether_client::components::Motor;
use tether_client::{DialConf, IceServer, Options, RobotClient};

#[derive(Parser, Debug)]
#[command(about = "Measures WebRTC connect time and unary latency; prints one JSON object")]
struct Args {
    /// Signaling service URL.
    #[arg(long)]
    signaling: String,
    /// The machine's host name at the signaling service.
    #[arg(long)]
    host: String,
    /// ICE server URL (repeatable); `turn:user:pass@host:port?…` for credentials.
    #[arg(long = "ice-server", value_name = "URL")]
    ice_servers: Vec<String>,
    /// Relayed candidates only.
    #[arg(long)]
    relay_only: bool,
    /// Connections to time.
    #[arg(long, default_value_t = 5)]
    connects: usize,
    /// Unary calls to time on the last connection.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// The motor to ask.
    #[arg(long, default_value = "motor1")]
    motor: String,
}

fn conf(args: &Args) -> DialConf {
    DialConf::webrtc(args.host.clone(), args.signaling.clone())
        .with_webrtc(|c| {
            c.ice_servers = args.ice_servers.iter().map(|u| IceServer::parse(u)).collect();
            c.force_relay = args.relay_only;
        })
        .with_dial_timeout(Duration::from_secs(20))
}

async fn run(args: &Args) -> Result<serde_json::Value, tether_client::Error> {
    let options = Options::default().with_disable_sessions(true);
    let mut connect_ms = Vec::new();
    for _ in 0..args.connects {
        let started = Instant::now();
        let robot = RobotClient::connect(conf(args), options.clone()).await?;
        Motor::from_robot(&robot, &args.motor).is_powered().await?;
        connect_ms.push(started.elapsed().as_secs_f64() * 1e3);
        robot.close().await;
    }
    let robot = RobotClient::connect(conf(args), options).await?;
    let motor = Motor::from_robot(&robot, &args.motor);
    let mut unary_us = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let started = Instant::now();
        motor.is_powered().await?;
        unary_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    unary_us.sort_by(f64::total_cmp);
    let pair = match robot.webrtc() {
        Some(w) => w.selected_pair().await,
        None => None,
    };
    robot.close().await;
    Ok(json!({
        "connect_ms": connect_ms,
        "unary_us": unary_us,
        "local_type": pair.as_ref().map(|p| p.local_type.clone()),
        "remote_type": pair.as_ref().map(|p| p.remote_type.clone()),
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
            eprintln!("relay_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
