//! Direct dialing: a tonic [`Channel`] to a machine's gRPC port, plus the
//! credential exchange and a service that stamps the bearer token (and any
//! extra headers) on every call.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use parking_lot::RwLock;
use tether_proto::proto::rpc::v1 as pb;
use tonic::transport::{Channel, Endpoint};
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

/// Opens an HTTP/2 channel to `addr` (eagerly, within `timeout`), with
/// keepalive pings so that a silently dead link is noticed. Plaintext (h2c)
/// for `host:port` and `http://`; TLS for `https://`.
pub async fn connect_channel(addr: &str, timeout: Duration) -> Result<Channel, DialError> {
    connect_channel_with(addr, timeout, None).await
}

/// [`connect_channel`], trusting `ca_pem` (a PEM CA certificate) in addition
/// to the web PKI roots for `https://` addresses.
pub async fn connect_channel_with(addr: &str, timeout: Duration, ca_pem: Option<&[u8]>) -> Result<Channel, DialError> {
    let uri = normalize_address(addr);
    let mut endpoint =
        Endpoint::from_shared(uri.clone()).map_err(|e| DialError::Address(addr.to_owned(), e.to_string()))?;
    if uri.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| DialError::Address(addr.to_owned(), source_chain(&e)))?;
    }
    let endpoint = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => Err(DialError::Timeout(uri, timeout)),
        Ok(Err(e)) => Err(DialError::Connect(uri, source_chain(&e))),
        Ok(Ok(ch)) => Ok(ch),
    }
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
pub async fn authenticate(channel: Channel, creds: &Credentials) -> Result<String, tonic::Status> {
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
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
        self.set(HeaderName::from_static(crate::metadata::AUTHORIZATION), v);
        Ok(())
    }
    /// Removes a header.
    pub fn remove(&self, name: &str) {
        self.0.write().remove(name);
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
