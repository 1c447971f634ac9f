//! Prometheus metrics shared by the machine and the signaling service: the
//! listener's connections (by transport, shed at the cap, incomplete
//! messages dropped), the process (resident memory, open files), a gauge
//! read at scrape time, and the small HTTP listener that serves
//! `GET /metrics`.
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client): an
//! explicit [`Registry`] per process or per test rather than a global
//! recorder, typed counters, gauges and histograms that cost an atomic each
//! and exist (unregistered) even when nobody scrapes, collectors for values
//! read at scrape time, and both text formats (OpenMetrics and Prometheus
//! 0.0.4) without hand formatting. It is re-exported as
//! [`prometheus_client`] so that embedders register into the same version.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tether_transport::metrics::{self, prometheus_client::registry::Registry};
//! let mut registry = Registry::default();
//! let server = metrics::ServerMetrics::default();
//! server.register(&mut registry);
//! metrics::register_process(&mut registry);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! tokio::spawn(metrics::serve(listener, std::sync::Arc::new(registry), Default::default()));
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use prometheus_client;

/// One label: `[(name, value)]`.
pub type Label = [(&'static str, &'static str); 1];

/// The transport label of a TCP connection's first request, or a WebRTC peer.
pub mod transport {
    /// gRPC over HTTP/2.
    pub const GRPC: &str = "grpc";
    /// gRPC-Web (HTTP/1.1 or HTTP/2, browsers and Node).
    pub const GRPC_WEB: &str = "grpc-web";
    /// gRPC over a WebRTC data channel.
    pub const WEBRTC: &str = "webrtc";
}

/// The metrics of [`crate::server::serve`]: cheap to clone (handles to the
/// same counters), and counting whether or not they are registered.
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    /// Connections by `transport` (label set at their first request).
    pub connections: Family<Label, Counter>,
    /// Connections open now by `transport` (counted from their first request).
    pub open: Family<Label, Gauge>,
    /// Connections closed at the cap by `reason` (`handshaking`,
    /// `unauthenticated`, `idle`) or refused (`refused`).
    pub shed: Family<Label, Counter>,
    /// Incomplete request messages dropped by `reason`: `budget` (the
    /// connection or listener budget was full; RESOURCE_EXHAUSTED) or
    /// `stalled` (no progress within the stall timeout).
    pub incomplete_dropped: Family<Label, Counter>,
}

impl ServerMetrics {
    /// Registers every family in `registry` (`tether_connections_*`,
    /// `tether_incomplete_messages_dropped`), each label value it can have
    /// at zero (so that rates work from the first scrape).
    pub fn register(&self, registry: &mut Registry) {
        for t in [transport::GRPC, transport::GRPC_WEB, transport::WEBRTC] {
            let _ = self.connections.get_or_create(&[("transport", t)]);
            let _ = self.open.get_or_create(&[("transport", t)]);
        }
        for reason in ["handshaking", "unauthenticated", "idle", "refused"] {
            let _ = self.shed.get_or_create(&[("reason", reason)]);
        }
        for reason in ["budget", "stalled"] {
            let _ = self.incomplete_dropped.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            "tether_connections",
            "Connections that sent a first request (TCP) or opened their data channel (WebRTC), by transport",
            self.connections.clone(),
        );
        registry.register("tether_connections_open", "Connections open now, by transport", self.open.clone());
        registry.register(
            "tether_connections_shed",
            "TCP connections closed at the connection cap (reason: handshaking, unauthenticated, idle) or refused \
             there (reason: refused)",
            self.shed.clone(),
        );
        registry.register(
            "tether_incomplete_messages_dropped",
            "Incomplete request messages dropped: over the memory budget (reason: budget) or without progress for \
             the stall timeout (reason: stalled)",
            self.incomplete_dropped.clone(),
        );
    }

    /// A connection of `transport` started; the returned guard counts it
    /// open until dropped.
    pub fn connection(&self, transport: &'static str) -> OpenConnection {
        let label = [("transport", transport)];
        self.connections.get_or_create(&label).inc();
        self.open.get_or_create(&label).inc();
        OpenConnection { open: self.open.clone(), label }
    }

    /// Counts one connection shed (or refused) at the cap.
    pub fn shed(&self, reason: &'static str) {
        self.shed.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts `n` incomplete messages dropped for `reason`.
    pub fn incomplete_dropped(&self, reason: &'static str, n: u64) {
        self.incomplete_dropped.get_or_create(&[("reason", reason)]).inc_by(n);
    }
}

/// An open connection in [`ServerMetrics::open`]; decrements it when dropped.
#[derive(Debug)]
pub struct OpenConnection {
    open: Family<Label, Gauge>,
    label: Label,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.get_or_create(&self.label).dec();
    }
}

/// A gauge (or, with [`GaugeFn::counter`], a counter) whose value is read
/// when scraped.
pub struct GaugeFn {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    value: Box<dyn Fn() -> i64 + Send + Sync>,
    counter: bool,
}

impl std::fmt::Debug for GaugeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaugeFn").field("name", &self.name).finish_non_exhaustive()
    }
}

impl GaugeFn {
    /// A gauge `name` (full name, no prefix added) whose value is `value()`.
    pub fn new(name: &'static str, help: &'static str, value: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self { name, help, unit: None, value: Box::new(value), counter: false }
    }

    /// A counter `name` (exposed as `name_total`) whose value is `value()`,
    /// for a count kept elsewhere (an atomic of another crate).
    pub fn counter(name: &'static str, help: &'static str, value: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        let value = move || i64::try_from(value()).unwrap_or(i64::MAX);
        Self { name, help, unit: None, value: Box::new(value), counter: true }
    }

    /// Registers it in `registry`.
    pub fn register(self, registry: &mut Registry) {
        registry.register_collector(Box::new(self));
    }
}

impl Collector for GaugeFn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.value)();
        if self.counter {
            let counter = ConstCounter::new(u64::try_from(value).unwrap_or(0));
            let metric = encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), counter.metric_type())?;
            return counter.encode(metric);
        }
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), gauge.metric_type())?;
        gauge.encode(metric)
    }
}

/// Resident memory of this process in bytes (`VmRSS` of /proc/self/status).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// File descriptors this process has open (entries of /proc/self/fd).
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle itself is one of the entries.
    Some((entries.count() as u64).saturating_sub(1))
}

fn gauge_value(v: Option<u64>) -> i64 {
    v.and_then(|v| i64::try_from(v).ok()).unwrap_or(-1)
}

/// Registers `process_resident_memory_bytes`, `process_open_fds` and
/// `process_max_fds` (the names Prometheus' own clients use), read from
/// /proc and the open-files limit at each scrape (-1 where unreadable).
pub fn register_process(registry: &mut Registry) {
    GaugeFn::new("process_resident_memory_bytes", "Resident memory size in bytes", || {
        gauge_value(resident_memory_bytes())
    })
    .register(registry);
    GaugeFn::new("process_open_fds", "Number of open file descriptors", || gauge_value(open_fds())).register(registry);
    GaugeFn::new("process_max_fds", "Soft limit on open file descriptors", || {
        gauge_value(crate::limits::nofile().ok().map(|n| n.soft))
    })
    .register(registry);
}

/// Options of [`serve`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MetricsServeOptions {
    /// Scrapes served at once; more connections are closed at accept.
    pub max_connections: usize,
    /// Header read timeout of a request; a connection idle this long is closed.
    pub timeout: Duration,
    /// Stops the listener.
    pub shutdown: CancellationToken,
}

impl Default for MetricsServeOptions {
    fn default() -> Self {
        Self { max_connections: 16, timeout: Duration::from_secs(10), shutdown: CancellationToken::new() }
    }
}

impl MetricsServeOptions {
    /// Sets [`Self::shutdown`].
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }
}

/// The OpenMetrics content type (chosen when the scraper's `Accept` asks
/// for it, as Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `registry` for a request that sent `accept`:
/// OpenMetrics text when it is accepted, else Prometheus text 0.0.4.
pub fn render(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut out = String::new();
    let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    let result = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
    };
    if let Err(e) = result {
        // Writing into a String fails only if a collector fails.
        tracing::warn!("encoding metrics: {e}");
    }
    let content_type =
        if openmetrics { OPENMETRICS_CONTENT_TYPE } else { prometheus_client::encoding::prometheus_text::CONTENT_TYPE };
    (content_type, out)
}

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at GET /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET /metrics\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = render(registry, accept);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Serves `GET /metrics` (HTTP/1.1, plaintext) on `listener` until
/// `options.shutdown`: the exposition of `registry`, 404 on other paths,
/// 405 on other methods. Meant for a scraper on a private address; it never
/// shares the machine's port, so the limits and auth of that port do not
/// apply to it, and it serves at most `options.max_connections` at once.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, options: MetricsServeOptions) {
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    loop {
        let (stream, remote) = tokio::select! {
            _ = options.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "metrics listener: too many scrapers at once; closed");
            continue;
        };
        let registry = registry.clone();
        let (timeout, shutdown) = (options.timeout, options.shutdown.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(&registry, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%remote, "metrics connection ended: {e}");
                },
                _ = shutdown.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// Binds `addr` and serves [`serve`] on it in a task; returns the bound
/// address (so `127.0.0.1:0` works).
pub async fn spawn(
    addr: &str,
    registry: Arc<Registry>,
    options: MetricsServeOptions,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, registry, options));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_open_until_dropped() {
        let m = ServerMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let a = m.connection(transport::GRPC);
        let _b = m.connection(transport::GRPC_WEB);
        drop(a);
        m.shed("handshaking");
        m.incomplete_dropped("budget", 3);
        let (ty, text) = render(&registry, None);
        assert!(ty.starts_with("text/plain; version=0.0.4"), "{ty}");
        for line in [
            "tether_connections_total{transport=\"grpc\"} 1",
            "tether_connections_total{transport=\"grpc-web\"} 1",
            "tether_connections_open{transport=\"grpc\"} 0",
            "tether_connections_open{transport=\"grpc-web\"} 1",
            "tether_connections_shed_total{reason=\"handshaking\"} 1",
            "tether_incomplete_messages_dropped_total{reason=\"budget\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let (ty, text) = render(&registry, Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"));
        assert_eq!(ty, OPENMETRICS_CONTENT_TYPE);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn process_gauges_read_proc() {
        let rss = resident_memory_bytes().expect("VmRSS readable");
        assert!(rss > 1 << 20, "{rss}");
        assert!(open_fds().expect("/proc/self/fd readable") > 2);
        let mut registry = Registry::default();
        register_process(&mut registry);
        let (_, text) = render(&registry, None);
        let value = |name: &str| -> i64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
            line.split(' ').nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
        };
        assert!(value("process_resident_memory_bytes") > 1 << 20);
        assert!(value("process_open_fds") > 2);
        assert!(value("process_max_fds") >= value("process_open_fds"));
    }
}
