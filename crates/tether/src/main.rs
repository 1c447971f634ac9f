//! `tether`: run a machine, call one, and demos.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod call;
mod machine;
mod signaling;

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
        /// Do not answer WebRTC calls.
        #[arg(long)]
        no_webrtc: bool,
    },
    /// Run a standalone signaling service.
    Signaling(signaling::SignalingArgs),
    /// Call a machine: list resources, drive components, read sensors.
    Call(call::CallArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| {
        // The WebRTC stack is chatty at info; keep its warnings and errors.
        tracing_subscriber::EnvFilter::new(
            "info,webrtc=warn,webrtc_ice=error,webrtc_sctp=error,webrtc_mdns=warn,webrtc_dtls=warn,webrtc_srtp=error",
        )
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Machine { listen, config, hosts, signaling, no_webrtc } => {
                machine::run(machine::MachineArgs { listen, config, hosts, signaling, no_webrtc }).await
            }
            Command::Signaling(args) => signaling::run(args).await,
            Command::Call(args) => call::run(args).await,
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
