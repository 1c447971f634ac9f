//! `--metrics-listen`: the `GET /metrics` listener of `tether machine` and
//! `tether signaling`.

use std::sync::Arc;

use anyhow::Context;
use tether_transport::metrics::prometheus_client::registry::Registry;
use tether_transport::metrics::{MetricsServeOptions, register_process};
use tokio_util::sync::CancellationToken;

/// Adds the process's gauges to `registry`, serves it on `addr` until
/// `shutdown`, and prints (and logs) where.
pub(crate) async fn serve(addr: &str, mut registry: Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
    register_process(&mut registry);
    let options = MetricsServeOptions::default().with_shutdown(shutdown);
    let local = tether_transport::metrics::spawn(addr, Arc::new(registry), options)
        .await
        .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
    tracing::info!(address = %local, "Prometheus metrics at GET /metrics");
    // A line on stdout that scripts and tests wait for.
    println!("metrics on http://{local}/metrics");
    Ok(())
}
