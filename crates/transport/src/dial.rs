//! The one HTTP/2 client of tether: [`DirectConnection`] (to a machine's
//! gRPC port or to a signaling service, plaintext or TLS with one rustls
//! client configuration), the credential exchange, and a service that stamps
//! the bearer token (and any extra headers) on every call.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use parking_lot::RwLock;
use tether_proto::proto::rpc::v1 as pb;
use tower_service::Service;

/// Credentials to authenticate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The entity, e.g. an API key id.
    pub entity: String,
    /// Credential type, e.g. [`crate::auth::API_KEY`].
    pub r#type: String,
    /// The secret.
    pub payload: String,
}

impl Credentials {
    /// API-key credentials: the key id is the entity.
    pub fn api_key(id: impl Into<String>, key: impl Into<String>) -> Self {
        Self { entity: id.into(), r#type: crate::auth::API_KEY.into(), payload: key.into() }
    }
}

/// Errors of dialing.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The address does not parse as a URI.
    #[error("invalid address {0:?}: {1}")]
    Address(String, String),
    /// The connection could not be made.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The connection timed out.
    #[error("connecting to {0} timed out after {1:?}")]
    Timeout(String, Duration),
    /// The machine refused the credentials (or another RPC failed).
    #[error("{0}")]
    Status(#[from] tonic::Status),
}

impl DialError {
    /// The gRPC status this error corresponds to.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            DialError::Status(s) => s.clone(),
            DialError::Address(..) => tonic::Status::invalid_argument(self.to_string()),
            DialError::Timeout(..) => tonic::Status::deadline_exceeded(self.to_string()),
            DialError::Connect(..) => tonic::Status::unavailable(self.to_string()),
        }
    }
}

/// Normalises `host:port` into an `http://` URI (keeps explicit schemes).
pub fn normalize_address(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Calls `Authenticate` and returns the access token.
pub async fn authenticate<T>(connection: T, creds: &Credentials) -> Result<String, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<crate::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<crate::BoxError> + Send,
{
    let mut client = pb::auth_service_client::AuthServiceClient::new(connection);
    let resp = client
        .authenticate(pb::AuthenticateRequest {
            entity: creds.entity.clone(),
            credentials: Some(pb::Credentials { r#type: creds.r#type.clone(), payload: creds.payload.clone() }),
        })
        .await?;
    Ok(resp.into_inner().access_token)
}

/// Headers shared by every clone of a [`HeaderStamp`] (e.g. the bearer token,
/// replaced after re-authentication).
#[derive(Clone, Debug, Default)]
pub struct SharedHeaders(Arc<RwLock<HeaderMap>>);

impl SharedHeaders {
    /// Sets (replaces) a header.
    pub fn set(&self, name: HeaderName, value: HeaderValue) {
        self.0.write().insert(name, value);
    }
    /// Sets `authorization: Bearer <token>`.
    pub fn set_bearer(&self, token: &str) -> Result<(), http::header::InvalidHeaderValue> {
        let v = HeaderValue::from_str(&format!("Bearer {token}"))?;
        self.set(HeaderName::from_static(tether_wire::metadata::AUTHORIZATION), v);
        Ok(())
    }
    /// Removes a header.
    pub fn remove(&self, name: &str) {
        self.0.write().remove(name);
    }
    /// The bearer token currently set, if any.
    pub fn bearer(&self) -> Option<String> {
        let map = self.0.read();
        let value = map.get(tether_wire::metadata::AUTHORIZATION)?.to_str().ok()?;
        value.strip_prefix("Bearer ").map(str::to_owned)
    }
    fn apply(&self, headers: &mut HeaderMap) {
        for (k, v) in self.0.read().iter() {
            headers.insert(k.clone(), v.clone());
        }
    }
}

/// Adds [`SharedHeaders`] to every request before passing it on.
#[derive(Clone, Debug)]
pub struct HeaderStamp<S> {
    inner: S,
    headers: SharedHeaders,
}

impl<S> HeaderStamp<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, headers: SharedHeaders) -> Self {
        Self { inner, headers }
    }

    /// The wrapped service, without the headers (e.g. to call
    /// `Authenticate`, which refuses a request that already has a token).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The headers it stamps.
    pub fn headers(&self) -> &SharedHeaders {
        &self.headers
    }
}

impl<S, B> Service<Request<B>> for HeaderStamp<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.headers.apply(req.headers_mut());
        self.inner.call(req)
    }
}

/// Settings of a direct HTTP/2 connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DirectOptions {
    /// Limit on TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval (also while idle).
    pub keepalive_interval: Duration,
    /// A PING unanswered this long declares the connection dead.
    pub keepalive_timeout: Duration,
    /// Extra CA certificate (PEM) for `https://` addresses.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Local address to connect from (default: the system's choice), e.g.
    /// a second loopback address.
    pub local_address: Option<std::net::IpAddr>,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `DirectOptions::default()`).
impl DirectOptions {
    /// Sets [`Self::connect_timeout`].
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`Self::keepalive_interval`].
    pub fn with_keepalive_interval(mut self, keepalive_interval: Duration) -> Self {
        self.keepalive_interval = keepalive_interval;
        self
    }

    /// Sets [`Self::keepalive_timeout`].
    pub fn with_keepalive_timeout(mut self, keepalive_timeout: Duration) -> Self {
        self.keepalive_timeout = keepalive_timeout;
        self
    }

    /// Sets [`Self::tls_ca_pem`].
    pub fn with_tls_ca_pem(mut self, tls_ca_pem: Option<Vec<u8>>) -> Self {
        self.tls_ca_pem = tls_ca_pem;
        self
    }

    /// Sets [`Self::local_address`].
    pub fn with_local_address(mut self, local_address: Option<std::net::IpAddr>) -> Self {
        self.local_address = local_address;
        self
    }
}

impl Default for DirectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
            local_address: None,
        }
    }
}

/// One HTTP/2 connection to a machine, as a `tower::Service` for tonic
/// stubs. Unlike a tonic `Channel` it never reconnects by itself: when the
/// connection ends (the machine shut down, or PINGs went unanswered)
/// [`DirectConnection::closed`] fires and every call fails with UNAVAILABLE,
/// so the owner can decide what to do.
#[derive(Clone, Debug)]
pub struct DirectConnection {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    closed: tokio_util::sync::CancellationToken,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(format!("{what}: {e}"))
}

impl DirectConnection {
    /// Connects to `addr` (`host:port`, `http://…` or `https://…`).
    pub async fn connect(addr: &str, options: &DirectOptions) -> Result<Self, DialError> {
        let uri: http::Uri = normalize_address(addr)
            .parse()
            .map_err(|e: http::uri::InvalidUri| DialError::Address(addr.to_owned(), e.to_string()))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let authority =
            uri.authority().cloned().ok_or_else(|| DialError::Address(addr.to_owned(), "no host".into()))?;
        let port = authority.port_u16().unwrap_or(if scheme == http::uri::Scheme::HTTPS { 443 } else { 80 });
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let target = uri.to_string();
        let work = async {
            let tcp = match options.local_address {
                None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
                Some(local) => connect_from(local, &host, port).await,
            }
            .map_err(|e| DialError::Connect(target.clone(), e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(options.keepalive_interval)
                .keep_alive_timeout(options.keepalive_timeout)
                .keep_alive_while_idle(true)
                .max_frame_size(1 << 20)
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(8 << 20);
            let closed = tokio_util::sync::CancellationToken::new();
            let sender = if scheme == http::uri::Scheme::HTTPS {
                let tls =
                    tls_connector(options.tls_ca_pem.as_deref()).map_err(|e| DialError::Connect(target.clone(), e))?;
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| DialError::Address(addr.to_owned(), e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| DialError::Connect(target.clone(), format!("tls: {e}")))?;
                let (sender, conn) = builder
                    .handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| DialError::Connect(target.clone(), source_chain(&e)))?;
                spawn_conn(conn, closed.clone());
                sender
            } else {
                let (sender, conn) = builder
                    .handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| DialError::Connect(target.clone(), source_chain(&e)))?;
                spawn_conn(conn, closed.clone());
                sender
            };
            Ok(Self { sender, scheme: scheme.clone(), authority: authority.clone(), closed })
        };
        match tokio::time::timeout(options.connect_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout(target.clone(), options.connect_timeout)),
        }
    }

    /// Cancelled when the connection has ended.
    pub fn closed(&self) -> &tokio_util::sync::CancellationToken {
        &self.closed
    }
}

/// A TCP connection to `host:port` from the local address `local`.
async fn connect_from(local: std::net::IpAddr, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for remote in tokio::net::lookup_host((host, port)).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if remote.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(remote).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("no address of {host} matches {local}"))))
}

fn spawn_conn<F, E>(conn: F, closed: tokio_util::sync::CancellationToken)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("direct connection ended: {e}");
        }
        closed.cancel();
    });
}

fn tls_connector(ca_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, String> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad CA certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("bad CA certificate: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

impl Service<Request<tonic::body::Body>> for DirectConnection {
    type Response = http::Response<tonic::body::Body>;
    type Error = crate::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, crate::BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        let closed = self.closed.clone();
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        Box::pin(async move {
            use http_body_util::BodyExt;
            if closed.is_cancelled() {
                return Ok(unavailable("connection closed", "the machine went away").into_http());
            }
            match sender.ready().await {
                Ok(()) => {}
                Err(e) => return Ok(unavailable("connection closed", e).into_http()),
            }
            match sender.send_request(req).await {
                Ok(resp) => Ok(resp
                    .map(|b| tonic::body::Body::new(b.map_err(|e| unavailable("connection lost during the call", e))))),
                Err(e) => Ok(unavailable("connection lost", e).into_http()),
            }
        })
    }
}
