//! `tether`: run a machine, call one, and demos.

// A binary: its items are documented where it helps, not for an API.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod call;
mod demo;
mod machine;
mod malloc;
mod metrics;
mod signaling;
mod term;

#[derive(Parser, Debug)]
#[command(name = "tether", version, about = "A Viam-compatible robot connectivity stack")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a machine (the built-in fake machine unless --config is given).
    Machine {
        /// Address to listen on (overrides network.bind_address; default 0.0.0.0:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Machine config (Viam JSON shape).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A name this machine answers WebRTC calls for (repeatable; default:
        /// the system host name). Every ip:port it listens on is one too.
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// An external signaling service to answer WebRTC calls through
        /// (repeatable); the embedded one on the machine's port always runs.
        #[arg(long = "signaling", value_name = "URL")]
        signaling: Vec<String>,
        /// API key id this machine authenticates with at the --signaling
        /// services (they vouch for callers with it); needs --signaling-key.
        #[arg(long, value_name = "ID", requires = "signaling_key")]
        signaling_key_id: Option<String>,
        /// API key secret for --signaling-key-id.
        #[arg(long, value_name = "KEY", requires = "signaling_key_id")]
        signaling_key: Option<String>,
        /// Do not answer WebRTC calls.
        #[arg(long)]
        no_webrtc: bool,
        /// Most TCP connections open at once (overrides network.max_connections;
        /// default: three quarters of the open-files limit).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: Option<u32>,
        /// Most WebRTC connections at once (overrides
        /// network.max_webrtc_connections; default: no limit). Beyond it a
        /// caller with a higher `a=x-priority` replaces the lowest-priority
        /// sessionless idle one; others get RESOURCE_EXHAUSTED.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_webrtc_connections: Option<u32>,
        /// Lifetime of the access tokens the machine mints, as a Go duration
        /// (`1h`, `90s`; overrides auth.token_lifetime; default 24h).
        #[arg(long, value_name = "DURATION")]
        token_lifetime: Option<String>,
        /// Serve Prometheus metrics at GET /metrics on this ip:port
        /// (overrides network.metrics_listen).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// Run a standalone signaling service.
    Signaling(signaling::SignalingArgs),
    /// Call a machine: list resources, drive components, read sensors,
    /// watch the connection.
    Call(call::CallArgs),
    /// Show the whole stack in a few seconds: a machine, clients over WebRTC
    /// and direct gRPC, a killed client and cut connections.
    Demo(demo::DemoArgs),
}

/// Logs go to stderr, filtered by `TETHER_LOG` (an `EnvFilter` directive)
/// or else at `level`.
fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if level == "info" {
            // The WebRTC stack is chatty at info; keep its warnings and errors.
            "info,webrtc=warn,webrtc_ice=error,webrtc_sctp=error,webrtc_mdns=warn,webrtc_dtls=warn,webrtc_srtp=error"
                .to_owned()
        } else {
            // Quieter commands: the WebRTC stack's warnings (mostly about
            // connections being torn down) are noise there.
            format!(
                "{level},webrtc=error,webrtc_ice=error,webrtc_sctp=error,webrtc_mdns=error,webrtc_dtls=error,\
                 webrtc_srtp=error"
            )
        })
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers log what they do. A call prints its own results (and `watch`
    // the connection events the client logs at info); the demo narrates
    // everything, including the safety stops the machine warns about.
    init_tracing(match cli.command {
        Command::Machine { .. } | Command::Signaling(_) => "info",
        Command::Call(_) => "warn",
        Command::Demo(_) => "error",
    });
    // Before any thread starts: see malloc.rs.
    let thresholds = malloc::fix_thresholds();
    tracing::info!(?thresholds, mmap = malloc::MMAP_THRESHOLD, trim = malloc::TRIM_THRESHOLD, "malloc thresholds");
    // The runtime: see tether_transport::runtime.
    let runtime = match tether_transport::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Machine {
                listen,
                config,
                hosts,
                signaling,
                signaling_key_id,
                signaling_key,
                no_webrtc,
                max_connections,
                max_webrtc_connections,
                token_lifetime,
                metrics_listen,
            } => {
                let signaling_key = signaling_key_id.zip(signaling_key);
                let max_connections = max_connections.map(|n| n as usize);
                let max_webrtc_connections = max_webrtc_connections.map(|n| n as usize);
                machine::run(machine::MachineArgs {
                    listen,
                    config,
                    hosts,
                    signaling,
                    signaling_key,
                    no_webrtc,
                    max_connections,
                    max_webrtc_connections,
                    token_lifetime,
                    metrics_listen,
                })
                .await
            }
            Command::Signaling(args) => signaling::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
