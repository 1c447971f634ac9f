//! Serving a tower service (normally a tonic router wrapped in tether's
//! layers) over TCP: HTTP/2 gRPC and, on the same port, gRPC-Web over
//! HTTP/1.1 or HTTP/2 with CORS. TLS (rustls, ALPN `h2` + `http/1.1`) when a
//! certificate is configured.
//!
//! Each request carries a [`ConnectionInfo`] extension describing the
//! connection it arrived on, and a [`ConnectionHandle`] the auth layer marks
//! authenticated.
//!
//! Limits (defaults in [`ServeOptions`], reasons in docs/SECURITY.md, "Limits
//! and timeouts"): a connection cap derived from the open-files limit, at
//! which the oldest connection still in its handshake (or not
//! authenticated, or idle for a minute) is shed to admit the new one; a
//! handshake deadline (TLS, HTTP preface, first request headers); an HTTP/1.1
//! header read timeout; an idle timeout; HTTP/2 keep-alive pings; bounded
//! HTTP/2 windows; and a budget for the bytes of incomplete request messages
//! (per connection and per listener) with a stall timeout for a body that
//! stops in the middle of a message.

mod body;
mod fallback;
mod registry;

pub use fallback::{is_grpc, with_fallback};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::BoxError;

/// How a call reached the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// gRPC or gRPC-Web over a TCP connection.
    Grpc,
    /// gRPC over a WebRTC data channel.
    WebRtc,
}

/// Per-connection facts attached to every request as an extension.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// Transport of the connection.
    pub kind: TransportKind,
    /// Peer address.
    pub remote: Option<SocketAddr>,
    /// Our address.
    pub local: Option<SocketAddr>,
    /// Process-unique id of the connection (stable for its lifetime).
    pub id: u64,
}

/// The boxed HTTP service every transport serves.
pub type HttpService =
    tower::util::BoxCloneSyncService<Request<tonic::body::Body>, Response<tonic::body::Body>, Infallible>;

/// Wraps a gRPC service so it also answers gRPC-Web (binary and text) and
/// CORS preflights. The CORS policy echoes the page's `Origin` and allows
/// credentials, which browsers require for `credentials: "include"` fetches.
pub fn grpc_web(svc: HttpService) -> HttpService {
    let exposed: Vec<HeaderName> = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        tether_wire::metadata::OPERATION_ID,
        tether_wire::metadata::SAFETY_MONITORED_RESOURCES,
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list(exposed))
        .max_age(Duration::from_secs(24 * 60 * 60));
    let svc = tower::ServiceBuilder::new().layer(cors).layer(tonic_web::GrpcWebLayer::new()).service(svc);
    let svc =
        ServiceExt::<Request<tonic::body::Body>>::map_response(svc, |r: Response<_>| r.map(tonic::body::Body::new));
    tower::util::BoxCloneSyncService::new(svc)
}

/// TLS material for the listener.
#[derive(Clone)]
pub struct TlsConfig(Arc<tokio_rustls::rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("alpn", &self.0.alpn_protocols.len()).finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, BoxError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("reading certificate {}: {e}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("parsing certificate {}: {e}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("reading key {}: {e}", key.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

/// Options of [`serve`]. The defaults never cut a well-behaved client (a
/// session heartbeating every 400 ms, an application idle for an hour with
/// a live session, a 32 MiB message at a few hundred kB/s); docs/SECURITY.md
/// gives the reason for each.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Serve TLS instead of plaintext (h2c + HTTP/1.1).
    pub tls: Option<TlsConfig>,
    /// Most connections open at once; `None` (the default) derives it from
    /// the open-files soft limit when [`serve`] starts
    /// ([`crate::limits::default_max_connections`]). At the cap a new
    /// connection sheds the oldest one still in its handshake, else the
    /// oldest not authenticated, else the one idle longest (a minute at
    /// least); when none qualifies the new one is closed.
    pub max_connections: Option<usize>,
    /// From accept to the first request's headers (TLS handshake, HTTP/2
    /// preface, headers); also the HTTP/1.1 header read timeout of every
    /// request. Default 10 s.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight and none started for this long
    /// is closed gracefully (HTTP/2 GOAWAY); `None` never. Default 2 h.
    pub idle_timeout: Option<Duration>,
    /// A request body that stops in the middle of a message for this long
    /// fails (DEADLINE_EXCEEDED) and its stream is reset. Default 30 s.
    pub body_stall_timeout: Duration,
    /// HTTP/2 initial stream window (bytes a peer may send on one stream
    /// before we read them). Default 1 MiB.
    pub stream_window: u32,
    /// HTTP/2 initial connection window (the same for all streams of a
    /// connection together). Default 2 MiB.
    pub connection_window: u32,
    /// Bytes of incomplete request messages one connection may hold before
    /// its largest is dropped (RESOURCE_EXHAUSTED). Default 36 MiB: one
    /// message of the largest size (32 MiB) plus 4 MiB for other calls.
    pub connection_budget: usize,
    /// The same for all connections of the listener together. Default 64 MiB.
    pub listener_budget: usize,
    /// Where the listener counts its connections, sheds and dropped
    /// messages (fresh, unregistered counters by default).
    pub metrics: crate::metrics::ServerMetrics,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(2 * 60 * 60)),
            body_stall_timeout: Duration::from_secs(30),
            stream_window: 1 << 20,
            connection_window: 2 << 20,
            connection_budget: crate::MAX_MESSAGE_SIZE + (4 << 20),
            listener_budget: 64 << 20,
            metrics: crate::metrics::ServerMetrics::default(),
        }
    }
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `ServeOptions::default()`).
impl ServeOptions {
    /// Sets [`Self::tls`].
    pub fn with_tls(mut self, tls: Option<TlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`Self::max_connections`].
    pub fn with_max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`Self::handshake_timeout`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`Self::idle_timeout`].
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`Self::body_stall_timeout`].
    pub fn with_body_stall_timeout(mut self, timeout: Duration) -> Self {
        self.body_stall_timeout = timeout;
        self
    }

    /// Sets [`Self::stream_window`] and [`Self::connection_window`].
    pub fn with_windows(mut self, stream: u32, connection: u32) -> Self {
        self.stream_window = stream;
        self.connection_window = connection;
        self
    }

    /// Sets [`Self::metrics`].
    pub fn with_metrics(mut self, metrics: crate::metrics::ServerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets [`Self::connection_budget`] and [`Self::listener_budget`].
    pub fn with_budgets(mut self, connection: usize, listener: usize) -> Self {
        self.connection_budget = connection;
        self.listener_budget = listener;
        self
    }
}

/// A request's connection as the server tracks it: attached to every request
/// served by [`serve`] as an extension. The auth layer calls
/// [`Self::mark_authenticated`] when a request passes it; a connection never
/// marked is shed before authenticated ones at the cap.
#[derive(Clone, Debug)]
pub struct ConnectionHandle(Arc<registry::ConnState>);

impl ConnectionHandle {
    /// Records that a request on this connection was authenticated (or that
    /// the server needs no authentication).
    pub fn mark_authenticated(&self) {
        self.0.mark_authenticated();
    }
}

/// The listen backlog of [`bind`]: connections the kernel completes before
/// [`serve`] accepts them. The standard library's 128 overflows when a few
/// hundred connections arrive at once (the kernel then drops their handshakes
/// and retries them for up to a minute); [`serve`] accepts and sheds faster
/// than that.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` (`ip:port` or `host:port`, the first
/// address that binds) with [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: no address"))))
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A process-unique connection id (TCP connections and peer connections share the sequence).
pub fn next_connection_id() -> u64 {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Everything the connections of one listener share.
struct Listener {
    svc: HttpService,
    options: ServeOptions,
    local: Option<SocketAddr>,
    registry: Arc<registry::Registry>,
    budget: Arc<body::Budget>,
    /// Seconds (since `started`) of the last "at the cap" warning.
    last_cap_warning: AtomicU64,
    started: tokio::time::Instant,
}

impl Listener {
    /// Warns about the cap at most once a minute.
    fn warn_at_cap(&self, what: std::fmt::Arguments<'_>) {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_cap_warning.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 60)
            && self.last_cap_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                cap = self.registry.cap(),
                shed = self.registry.shed_total.load(Ordering::Relaxed),
                refused = self.registry.refused_total.load(Ordering::Relaxed),
                "connection cap reached: {what}"
            );
        }
    }
}

/// Serves `svc` on `listener` until `shutdown` is cancelled. Every accepted
/// connection runs on its own task under the limits of `options`; a failing
/// connection never stops the server.
pub async fn serve(listener: TcpListener, svc: HttpService, options: ServeOptions, shutdown: CancellationToken) {
    let cap = options.max_connections.unwrap_or_else(crate::limits::current_max_connections);
    let shared = Arc::new(Listener {
        svc,
        local: listener.local_addr().ok(),
        registry: registry::Registry::new(cap),
        budget: body::Budget::with_metrics(options.connection_budget, options.listener_budget, options.metrics.clone()),
        options,
        last_cap_warning: AtomicU64::new(0),
        started: tokio::time::Instant::now(),
    });
    tracing::info!(local = ?shared.local, max_connections = cap, "connection cap");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors despite the cap (the process opened
                    // other files): back off instead of spinning on accept.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let id = next_connection_id();
        let state = match shared.registry.admit(id) {
            (registry::Admission::Refused, _) | (_, None) => {
                shared.options.metrics.shed("refused");
                shared.warn_at_cap(format_args!("refused {remote}: every connection is authenticated and busy"));
                drop(stream);
                continue;
            }
            (registry::Admission::Shed { victim, reason }, Some(state)) => {
                tracing::debug!(%remote, victim, ?reason, "connection cap reached: shed one");
                shared.options.metrics.shed(reason.label());
                shared.warn_at_cap(format_args!("shed a connection {reason} to admit {remote}"));
                state
            }
            (registry::Admission::Admitted, Some(state)) => state,
        };
        let _ = stream.set_nodelay(true);
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(shared.clone(), stream, remote, registry::Registered(state), shutdown.clone()));
    }
    // Give open connections a moment to finish in-flight calls, then close
    // whatever is left (long-lived streams such as signaling's Answer would
    // otherwise outlive the server).
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
}

/// One connection, from accept to close.
async fn connection(
    shared: Arc<Listener>,
    stream: TcpStream,
    remote: SocketAddr,
    registered: registry::Registered,
    shutdown: CancellationToken,
) {
    let state = registered.0.clone();
    let deadline = state.accepted() + shared.options.handshake_timeout;
    let result = match shared.options.tls.clone() {
        None => drive(&shared, stream, remote, &state, &shutdown).await,
        Some(tls) => {
            let accept = tokio::time::timeout_at(deadline, TlsAcceptor::from(tls.0).accept(stream));
            let tls_stream = tokio::select! {
                _ = state.shed.cancelled() => return,
                accepted = accept => accepted,
            };
            match tls_stream {
                Ok(Ok(tls_stream)) => drive(&shared, tls_stream, remote, &state, &shutdown).await,
                Ok(Err(e)) => Err(format!("tls handshake: {e}").into()),
                Err(_) => Err("tls handshake: deadline passed".into()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, "connection ended: {e}");
    }
    drop(registered);
}

/// Serves HTTP on `io` until the peer closes, a limit closes it, or the
/// server shuts down (gracefully: in-flight calls may finish).
async fn drive<I>(
    shared: &Arc<Listener>,
    io: I,
    remote: SocketAddr,
    state: &Arc<registry::ConnState>,
    shutdown: &CancellationToken,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = &shared.options;
    let info = ConnectionInfo { kind: TransportKind::Grpc, remote: Some(remote), local: shared.local, id: state.id };
    // Counted by transport from its first request until it closes.
    let counted = Arc::new(std::sync::OnceLock::new());
    let hyper_svc = {
        let shared = shared.clone();
        let state = state.clone();
        let counted = counted.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            counted.get_or_init(|| shared.options.metrics.connection(transport_label(&req)));
            let in_flight = state.request_started();
            let framing = body::Framing::of(req.headers().get(http::header::CONTENT_TYPE));
            let stall = shared.options.body_stall_timeout;
            let budget = shared.budget.clone();
            let mut req =
                req.map(|b| tonic::body::Body::new(body::GuardedBody::new(b, budget, state.id, framing, stall)));
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(ConnectionHandle(state.clone()));
            let call = shared.svc.clone().oneshot(req);
            async move {
                let response = call.await?;
                Ok::<_, Infallible>(response.map(|b| body::Tracked::new(b, in_flight)))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .initial_stream_window_size(options.stream_window)
        .initial_connection_window_size(options.connection_window)
        .adaptive_window(false)
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
    tokio::pin!(conn);
    let deadline = state.accepted() + options.handshake_timeout;
    let mut draining = false;
    loop {
        let idle_check = match options.idle_timeout {
            // With requests in flight, look again a whole timeout later: a
            // request's end moves the last activity past that anyway.
            Some(idle) if state.in_flight() > 0 => Some(tokio::time::Instant::now() + idle),
            Some(idle) => Some(state.last_activity() + idle),
            None => None,
        };
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = state.shed.cancelled() => return Err("shed at the connection cap".into()),
            // A precondition is evaluated once per loop: the first request
            // may have come since.
            _ = tokio::time::sleep_until(deadline), if !state.is_active() => {
                if !state.is_active() {
                    return Err("no request within the handshake deadline".into());
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = sleep_until_opt(idle_check), if !draining && idle_check.is_some() => {
                if let Some(idle) = options.idle_timeout
                    && state.in_flight() == 0
                    && state.last_activity().elapsed() >= idle
                {
                    tracing::debug!(%remote, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// The metrics label of a connection from its first request: gRPC-Web by
/// content type (or a CORS preflight, which only browsers send), else gRPC.
fn transport_label<B>(req: &Request<B>) -> &'static str {
    let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/grpc-web") || req.method() == http::Method::OPTIONS {
        crate::metrics::transport::GRPC_WEB
    } else {
        crate::metrics::transport::GRPC
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
