//! `tether machine`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tether_machine::config::{Config, DEFAULT_BIND};
use tether_machine::models::Models;
use tether_machine::{Machine, RemoteStatus};
use tether_transport::metrics::prometheus_client::registry::Registry;
use tether_transport::server::{ServeOptions, TlsConfig};
use tokio_util::sync::CancellationToken;

pub(crate) struct MachineArgs {
    pub listen: Option<String>,
    pub config: Option<PathBuf>,
    pub hosts: Vec<String>,
    pub signaling: Vec<String>,
    /// `(id, key)` at the external signaling services.
    pub signaling_key: Option<(String, String)>,
    pub no_webrtc: bool,
    pub max_connections: Option<usize>,
    pub max_webrtc_connections: Option<usize>,
    /// Go duration overriding `auth.token_lifetime`.
    pub token_lifetime: Option<String>,
    pub metrics_listen: Option<String>,
}

pub(crate) async fn run(args: MachineArgs) -> anyhow::Result<ExitCode> {
    let MachineArgs {
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
    } = args;
    // Before anything opens files: the connection cap is derived from it.
    tether_transport::limits::raise_nofile().context("reading the open-files limit")?;
    let mut cfg = match &config {
        Some(path) => Config::from_file(path)?,
        None => Config::fake(),
    };
    if !hosts.is_empty() {
        cfg.network.hosts = hosts;
    }
    cfg.network.signaling.extend(signaling);
    if let Some((id, key)) = signaling_key {
        cfg.network.signaling_api_key = Some(tether_transport::auth::ApiKey { id, key });
    }
    cfg.network.disable_webrtc |= no_webrtc;
    if max_connections.is_some() {
        cfg.network.max_connections = max_connections;
    }
    if max_webrtc_connections.is_some() {
        cfg.network.max_webrtc_connections = max_webrtc_connections;
    }
    if token_lifetime.is_some() {
        cfg.auth.get_or_insert_with(Default::default).token_lifetime = token_lifetime;
    }
    if metrics_listen.is_some() {
        cfg.network.metrics_listen = metrics_listen;
    }
    cfg.validate()?;
    let machine = Machine::from_config(&cfg, &Models::builtin())?;
    let addr = listen.or_else(|| cfg.network.bind_address.clone()).unwrap_or_else(|| DEFAULT_BIND.to_owned());
    let tls = match (&cfg.network.tls_cert_file, &cfg.network.tls_key_file) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key).map_err(|e| anyhow::anyhow!("{e}"))?),
        _ => None,
    };
    let listener = tether_transport::server::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let names: Vec<String> = machine.resources().iter().map(|(n, c)| format!("{n} ({})", c.subtype())).collect();
    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        auth = !cfg.api_keys().is_empty(),
        heartbeat_window = ?cfg.heartbeat_window(),
        token_lifetime = ?machine.token_lifetime(),
        "machine serving gRPC and gRPC-Web; components: {}",
        names.join(", ")
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    // Before "listening on": whoever waits for that line can scrape at once.
    if let Some(addr) = &cfg.network.metrics_listen {
        let mut registry = Registry::default();
        machine.register_metrics(&mut registry);
        crate::metrics::serve(addr, registry, shutdown.clone()).await?;
    }
    // A line on stdout that scripts and tests wait for.
    println!("listening on {local}");
    for url in tether_machine::page::urls(local, tls.is_some()) {
        println!("control page: {url}");
    }
    let options = ServeOptions::default().with_tls(tls).with_max_connections(cfg.network.max_connections);
    let serving = machine.serve(listener, options, shutdown);
    tokio::spawn(report_signalers(machine.clone()));
    serving.await;
    Ok(ExitCode::SUCCESS)
}

/// How long start-up waits for each external signaling service's first
/// verdict before it says "still connecting".
const FIRST_VERDICT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prints, once at start-up, whether the machine answers through each
/// external signaling service (the answerers keep retrying and log every
/// change at WARN/INFO).
async fn report_signalers(machine: Machine) {
    // `serve` has started the answerers: their status watches exist.
    let mut seen = std::collections::HashSet::new();
    for (url, mut status) in machine.signaling_status() {
        let verdict = tokio::time::timeout(FIRST_VERDICT, status.wait_for(|s| *s != RemoteStatus::Connecting)).await;
        let line = match verdict.ok().and_then(Result::ok).map(|s| s.clone()) {
            Some(RemoteStatus::Answering) => format!("signaling {url}: answering"),
            Some(RemoteStatus::Unreachable(reason)) => format!("signaling {url}: unreachable ({reason}); retrying"),
            _ => format!("signaling {url}: still connecting"),
        };
        if seen.insert(line.clone()) {
            println!("{line}");
        }
    }
}
