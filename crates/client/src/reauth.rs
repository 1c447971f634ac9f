//! Fresh access tokens on a direct connection with credentials.
//!
//! A machine's tokens expire (`exp`, a day by default). [`Authed`] sits
//! between the session layer and the [`Link`]: a background task
//! authenticates again over the live connection when the current token
//! nears its end (a quarter of its lifetime before it, at most 5 minutes),
//! and a unary call that still comes back UNAUTHENTICATED (it raced the
//! expiry, or the machine restarted with a new signing secret) is
//! re-authenticated and sent once more. Callers and the session never see
//! the expiry.
//!
//! The token's lifetime is read from the token itself (`exp − iat`, without
//! checking its signature: only the machine can do that) and counted from
//! when the client got it, so the machine's and the client's clocks need not
//! agree.
//!
//! Over WebRTC no token travels on the data channel (the machine knows the
//! caller from the signaling exchange, for the life of the peer
//! connection), so there is nothing to refresh: every (re)dial
//! authenticates to the signaling service afresh.

use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tether_transport::BoxError;
use tether_transport::auth::Claims;
use tether_transport::dial::{Credentials, SharedHeaders};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt;
use tower_service::Service;

use crate::transport::{Link, Transport};

/// Longest margin before expiry at which a token is renewed.
const MAX_MARGIN: Duration = Duration::from_secs(300);
/// Pause before trying again after a failed renewal (e.g. while
/// reconnecting; the redial authenticates anyway).
const RETRY: Duration = Duration::from_millis(500);

/// The credentials and the token of one client.
#[derive(Debug)]
pub(crate) struct Tokens {
    creds: Credentials,
    headers: SharedHeaders,
    link: Link,
    /// Serialises renewals: concurrent calls that race the expiry share one.
    renewing: tokio::sync::Mutex<()>,
    /// The current token and when this client first saw it.
    seen: Mutex<Option<(String, Instant)>>,
}

impl Tokens {
    /// Tokens for `creds`, whose current bearer is in `headers` (the dial
    /// puts it there, also after every reconnection).
    pub(crate) fn new(creds: Credentials, headers: SharedHeaders, link: Link) -> Arc<Self> {
        Arc::new(Self { creds, headers, link, renewing: tokio::sync::Mutex::new(()), seen: Mutex::new(None) })
    }

    /// Keeps the token fresh until `closing`.
    pub(crate) fn spawn_refresher(self: &Arc<Self>, closing: CancellationToken) {
        tokio::spawn(refresher(Arc::downgrade(self), closing));
    }

    /// How long until the current token should be renewed (`None`: no
    /// token, or one without a lifetime).
    fn until_renewal(&self) -> Option<Duration> {
        let token = self.headers.bearer()?;
        let lifetime = Claims::peek(&token)?.lifetime();
        if lifetime.is_zero() {
            return None;
        }
        let now = Instant::now();
        let first_seen = {
            let mut seen = self.seen.lock();
            match &*seen {
                Some((t, at)) if *t == token => *at,
                _ => {
                    *seen = Some((token, now));
                    now
                }
            }
        };
        let margin = (lifetime / 4).min(MAX_MARGIN);
        Some((first_seen + lifetime - margin).saturating_duration_since(now))
    }

    /// Authenticates again over the current connection, unless the token
    /// is no longer `stale` (someone else renewed it, or a redial did).
    async fn renew(&self, stale: Option<&str>) -> Result<(), tonic::Status> {
        let _one = self.renewing.lock().await;
        if self.headers.bearer().as_deref() != stale {
            return Ok(());
        }
        let Some(Transport::Direct(stamp)) = self.link.current() else {
            return Err(tonic::Status::unavailable("not connected to the machine: cannot authenticate"));
        };
        // Authenticate refuses a request that already carries a token: go
        // around the header stamp.
        let token = tether_transport::dial::authenticate(stamp.inner().clone(), &self.creds).await?;
        self.headers.set_bearer(&token).map_err(|e| tonic::Status::internal(format!("unusable access token: {e}")))?;
        tracing::debug!("access token renewed");
        Ok(())
    }
}

async fn refresher(weak: Weak<Tokens>, closing: CancellationToken) {
    loop {
        let wait = match weak.upgrade() {
            Some(tokens) => tokens.until_renewal().unwrap_or(RETRY),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = closing.cancelled() => return,
        }
        let Some(tokens) = weak.upgrade() else { return };
        if tokens.until_renewal().is_some_and(|d| d.is_zero()) {
            let stale = tokens.headers.bearer();
            let renewed = tokio::select! {
                r = tokens.renew(stale.as_deref()) => r,
                _ = closing.cancelled() => return,
            };
            if let Err(status) = renewed {
                tracing::debug!(%status, "renewing the access token failed; trying again");
                drop(tokens);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = closing.cancelled() => return,
                }
            }
        }
    }
}

/// The [`Link`] with token renewal (a plain pass-through without
/// credentials or over WebRTC).
#[derive(Clone, Debug)]
pub(crate) struct Authed {
    link: Link,
    tokens: Option<Arc<Tokens>>,
}

impl Authed {
    pub(crate) fn new(link: Link, tokens: Option<Arc<Tokens>>) -> Self {
        Self { link, tokens }
    }
}

fn is_unauthenticated(resp: &Response<Body>) -> bool {
    tether_transport::grpc::status_from_headers(resp.headers())
        .is_some_and(|s| s.code() == tonic::Code::Unauthenticated)
}

impl Service<Request<Body>> for Authed {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.link.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(tokens) = self.tokens.clone() else {
            return self.link.call(req);
        };
        // Only a call whose one request message can be sent again is
        // retried (a stream's messages are gone once sent).
        let unary = tether_proto::safety::method(req.uri().path()).is_some_and(|m| !m.client_streaming);
        if !unary {
            return self.link.call(req);
        }
        let link = self.link.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes: Bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let stamped = tokens.headers.bearer();
            let again = || Request::from_parts(parts.clone(), Body::new(http_body_util::Full::new(bytes.clone())));
            let first = link.clone().oneshot(again()).await?;
            if !is_unauthenticated(&first) {
                return Ok(first);
            }
            match tokens.renew(stamped.as_deref()).await {
                Ok(()) => {
                    tracing::debug!("call answered UNAUTHENTICATED; authenticated again and retrying once");
                    link.oneshot(again()).await
                }
                Err(status) => {
                    tracing::debug!(%status, "authenticating again failed");
                    Ok(first)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_machine::Machine;
    use tether_machine::config::Config;
    use tether_machine::models::Models;
    use tether_proto::viam::robot::v1 as pb;
    use tether_transport::dial::{DirectConnection, DirectOptions, HeaderStamp};

    const AUTH: &str = r#"{"components":[],"network":{"hosts":["bot"]},
        "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"k","key":"s"}]}}],"token_lifetime":"8s"}}"#;

    async fn machine() -> (Machine, std::net::SocketAddr, CancellationToken) {
        let machine = Machine::from_config(&Config::from_json(AUTH).unwrap(), &Models::builtin()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(machine.serve(listener, Default::default(), stop.clone()));
        (machine, addr, stop)
    }

    async fn authed(addr: std::net::SocketAddr, key: &str, token: &str) -> (Authed, SharedHeaders) {
        let conn = DirectConnection::connect(&addr.to_string(), &DirectOptions::default()).await.unwrap();
        let headers = SharedHeaders::default();
        headers.set_bearer(token).unwrap();
        let link = Link::new(Transport::Direct(HeaderStamp::new(conn, headers.clone())));
        let tokens = Tokens::new(Credentials::api_key("k", key), headers.clone(), link.clone());
        (Authed::new(link, Some(tokens)), headers)
    }

    #[tokio::test]
    async fn a_unary_call_refused_for_its_token_is_authenticated_again_and_retried_once() {
        let (machine, addr, _stop) = machine().await;
        // A token the machine does not accept (as after it expired).
        let (svc, headers) = authed(addr, "s", "stale.token.here").await;
        let mut robot = pb::robot_service_client::RobotServiceClient::new(svc.clone());
        robot.get_version(pb::GetVersionRequest {}).await.expect("retried with a fresh token");
        assert_eq!(machine.auth_stats().unwrap().minted, 1);
        let fresh = headers.bearer().unwrap();
        assert_ne!(fresh, "stale.token.here");
        // The fresh token is used from then on: no more authentication.
        robot.resource_names(pb::ResourceNamesRequest {}).await.unwrap();
        assert_eq!(machine.auth_stats().unwrap().minted, 1);

        // Wrong credentials: the call's own UNAUTHENTICATED comes back after
        // one attempt to authenticate.
        let (svc, _) = authed(addr, "wrong", "stale.token.here").await;
        let mut robot = pb::robot_service_client::RobotServiceClient::new(svc);
        let err = robot.get_version(pb::GetVersionRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().starts_with("invalid access token"), "{}", err.message());
        assert_eq!(machine.auth_stats().unwrap().key_checks, 2);
    }

    #[tokio::test]
    async fn renewal_is_due_a_quarter_of_the_lifetime_before_expiry() {
        let (_machine, addr, _stop) = machine().await;
        let conn = DirectConnection::connect(&addr.to_string(), &DirectOptions::default()).await.unwrap();
        let token = tether_transport::dial::authenticate(conn, &Credentials::api_key("k", "s")).await.unwrap();
        let (svc, headers) = authed(addr, "s", &token).await;
        let tokens = svc.tokens.clone().unwrap();
        let due = tokens.until_renewal().unwrap();
        assert!(due <= Duration::from_secs(6) && due > Duration::from_millis(5900), "{due:?}");
        tokens.spawn_refresher(CancellationToken::new());
        tokio::time::sleep(Duration::from_millis(6300)).await;
        assert_ne!(headers.bearer().unwrap(), token, "not renewed after 6.3 s of an 8 s token");
    }
}
