//! Serving a tower service (normally a tonic router wrapped in tether's
//! layers) over TCP: HTTP/2 gRPC and, on the same port, gRPC-Web over
//! HTTP/1.1 or HTTP/2 with CORS. TLS (rustls, ALPN `h2` + `http/1.1`) when a
//! certificate is configured.
//!
//! Each request carries a [`ConnectionInfo`] extension describing the
//! connection it arrived on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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

/// Options of [`serve`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Serve TLS instead of plaintext (h2c + HTTP/1.1).
    pub tls: Option<TlsConfig>,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `ServeOptions::default()`).
impl ServeOptions {
    /// Sets [`Self::tls`].
    pub fn with_tls(mut self, tls: Option<TlsConfig>) -> Self {
        self.tls = tls;
        self
    }
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A process-unique connection id (TCP connections and peer connections share the sequence).
pub fn next_connection_id() -> u64 {
    NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Serves `svc` on `listener` until `shutdown` is cancelled. Every accepted
/// connection runs on its own task; a failing connection never stops the
/// server.
pub async fn serve(listener: TcpListener, svc: HttpService, options: ServeOptions, shutdown: CancellationToken) {
    let local = listener.local_addr().ok();
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let info = ConnectionInfo { kind: TransportKind::Grpc, remote: Some(remote), local, id: next_connection_id() };
        let svc = svc.clone();
        let tls = options.tls.clone();
        let watcher = graceful.watcher();
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let svc = svc.map_request(move |req: Request<hyper::body::Incoming>| {
                let mut req = req.map(tonic::body::Body::new);
                req.extensions_mut().insert(info.clone());
                req
            });
            let hyper_svc = TowerToHyperService::new(svc);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(1024)
                .keep_alive_interval(Some(Duration::from_secs(10)))
                .keep_alive_timeout(Duration::from_secs(20));
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => match TlsAcceptor::from(tls.0).accept(stream).await {
                    Ok(tls_stream) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), hyper_svc);
                        watcher.watch(conn.into_owned()).await
                    }
                    Err(e) => Err(format!("tls handshake: {e}").into()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(%remote, "connection ended: {e}");
            }
        });
    }
    // Give open connections a moment to finish in-flight calls, then close
    // whatever is left (long-lived streams such as signaling's Answer would
    // otherwise outlive the server).
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    connections.abort_all();
}
