//! Automatic sessions, as a tower service in front of the transport.
//!
//! Only safety-monitored methods (option 84260 in the compiled descriptors)
//! are touched: the first one starts a session (resuming the previous id if
//! there was one), every one carries `viam-sid`, and a unary call answered
//! `INVALID_ARGUMENT`/`SESSION_EXPIRED` resets the session and is retried once
//! with a fresh one. A background task heartbeats at window/5.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tether_proto::viam::robot::v1 as pb;
use tether_transport::{BoxError, grpc};
use tether_wire::metadata;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt;
use tower_service::Service;

// Under the sessions: the link with token renewal (crate::reauth).
pub(crate) use crate::reauth::Authed as Transport;

#[derive(Debug, Default)]
struct State {
    /// The live session, if one is believed active.
    active: Option<Active>,
    /// The last session id, kept for `resume` after a reset.
    last: Option<String>,
    /// The machine answered StartSession with UNIMPLEMENTED.
    unsupported: bool,
}

#[derive(Debug)]
struct Active {
    id: String,
    window: Duration,
    heartbeat: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    disabled: bool,
    state: Mutex<State>,
    /// Serialises StartSession so concurrent first calls share one session.
    starting: tokio::sync::Mutex<()>,
    closed: CancellationToken,
}

/// The client's transport with automatic sessions. Cheap to clone; all clones
/// share one session.
#[derive(Clone, Debug)]
pub struct SessionChannel {
    inner: Transport,
    shared: Arc<Shared>,
    wait: bool,
}

impl SessionChannel {
    pub(crate) fn new(inner: Transport, disabled: bool) -> Self {
        let shared = Arc::new(Shared {
            disabled,
            state: Mutex::new(State::default()),
            starting: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
        });
        Self { inner, shared, wait: false }
    }

    /// A clone whose calls wait for the connection while the client
    /// reconnects (instead of failing fast with UNAVAILABLE).
    pub fn waiting(&self, wait: bool) -> Self {
        Self { wait, ..self.clone() }
    }

    /// The session id kept for `resume` (the active one, or the last one).
    pub fn last_session_id(&self) -> Option<String> {
        let st = self.shared.state.lock();
        st.active.as_ref().map(|a| a.id.clone()).or_else(|| st.last.clone())
    }

    /// The current session id, if a session is active.
    pub fn session_id(&self) -> Option<String> {
        self.shared.state.lock().active.as_ref().map(|a| a.id.clone())
    }

    /// The window the machine gave the current session.
    pub fn heartbeat_window(&self) -> Option<Duration> {
        self.shared.state.lock().active.as_ref().map(|a| a.window)
    }

    /// Forgets the active session (keeping its id for `resume`) and stops
    /// heartbeating.
    pub fn reset(&self) {
        reset(&self.shared);
    }

    /// Stops heartbeating for good (the machine will let the session lapse).
    pub(crate) fn close(&self) {
        self.shared.closed.cancel();
        reset(&self.shared);
    }

    /// Returns the active session id, starting (or resuming) one if needed.
    /// `Ok(None)` when sessions are disabled or unsupported by the machine.
    pub async fn ensure_session(&self) -> Result<Option<String>, tonic::Status> {
        if self.shared.disabled {
            return Ok(None);
        }
        {
            let st = self.shared.state.lock();
            if st.unsupported {
                return Ok(None);
            }
            if let Some(a) = &st.active {
                return Ok(Some(a.id.clone()));
            }
        }
        let _starting = self.shared.starting.lock().await;
        let resume = {
            let st = self.shared.state.lock();
            if let Some(a) = &st.active {
                return Ok(Some(a.id.clone()));
            }
            st.last.clone().unwrap_or_default()
        };
        let mut robot = pb::robot_service_client::RobotServiceClient::new(self.inner.clone());
        let resp = match robot.start_session(pb::StartSessionRequest { resume }).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                self.shared.state.lock().unsupported = true;
                return Ok(None);
            }
            Err(s) => return Err(s),
        };
        let window = resp
            .heartbeat_window
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| tonic::Status::internal("StartSession response has no heartbeat_window"))?;
        let heartbeat = self.shared.closed.child_token();
        {
            let mut st = self.shared.state.lock();
            if let Some(old) = st.active.take() {
                old.heartbeat.cancel();
            }
            st.active = Some(Active { id: resp.id.clone(), window, heartbeat: heartbeat.clone() });
            st.last = Some(resp.id.clone());
        }
        tracing::debug!(session = %resp.id, ?window, "session started");
        tokio::spawn(heartbeat_loop(self.inner.clone(), self.shared.clone(), resp.id.clone(), window, heartbeat));
        Ok(Some(resp.id))
    }
}

fn reset(shared: &Shared) {
    if let Some(a) = shared.state.lock().active.take() {
        a.heartbeat.cancel();
    }
}

async fn heartbeat_loop(inner: Transport, shared: Arc<Shared>, id: String, window: Duration, stop: CancellationToken) {
    let mut robot = pb::robot_service_client::RobotServiceClient::new(inner);
    let period = window / 5;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let call = robot.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: id.clone() });
        // A heartbeat that takes longer than the window is as good as lost.
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(window, call) => r,
        };
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                tracing::debug!(session = %id, %status, "heartbeat failed; session reset");
                let mut st = shared.state.lock();
                if status.code() == tonic::Code::Unimplemented {
                    st.unsupported = true;
                }
                if st.active.as_ref().is_some_and(|a| a.id == id) {
                    st.active = None;
                }
                return;
            }
            Err(_) => {
                tracing::debug!(session = %id, "heartbeat timed out; session reset");
                let mut st = shared.state.lock();
                if st.active.as_ref().is_some_and(|a| a.id == id) {
                    st.active = None;
                }
                return;
            }
        }
    }
}

fn with_sid(parts: &http::request::Parts, body: Body, sid: Option<&str>) -> Request<Body> {
    let mut req = Request::from_parts(parts.clone(), body);
    req.headers_mut().remove(metadata::SESSION_ID);
    if let Some(v) = sid.and_then(|s| HeaderValue::from_str(s).ok()) {
        req.headers_mut().insert(metadata::SESSION_ID, v);
    }
    req
}

fn is_session_expired(resp: &Response<Body>) -> bool {
    grpc::status_from_headers(resp.headers())
        .is_some_and(|s| s.code() == tonic::Code::InvalidArgument && s.message() == metadata::SESSION_EXPIRED)
}

impl Service<Request<Body>> for SessionChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if self.wait {
            req.extensions_mut().insert(crate::transport::WaitForReady);
        }
        let method = tether_proto::safety::method(req.uri().path());
        let monitored = !self.shared.disabled && method.is_some_and(|m| m.monitored);
        if !monitored {
            return self.inner.call(req);
        }
        let this = self.clone();
        let unary_request = method.is_some_and(|m| !m.client_streaming);
        Box::pin(async move {
            let sid = match this.ensure_session().await {
                Ok(sid) => sid,
                Err(status) => return Ok(status.into_http()),
            };
            let (parts, body) = req.into_parts();
            if !unary_request {
                let req = with_sid(&parts, body, sid.as_deref());
                return this.inner.clone().oneshot(req).await;
            }
            // Buffer the (single) request message so the call can be retried.
            let bytes: Bytes = match body.collect().await {
                Ok(c) => c.to_bytes(),
                Err(status) => return Ok(status.into_http()),
            };
            let first = this
                .inner
                .clone()
                .oneshot(with_sid(&parts, Body::new(http_body_util::Full::new(bytes.clone())), sid.as_deref()))
                .await?;
            if sid.is_none() || !is_session_expired(&first) {
                return Ok(first);
            }
            tracing::debug!("call answered SESSION_EXPIRED; starting a new session and retrying once");
            this.reset();
            let sid = match this.ensure_session().await {
                Ok(sid) => sid,
                Err(status) => return Ok(status.into_http()),
            };
            let retry = with_sid(&parts, Body::new(http_body_util::Full::new(bytes)), sid.as_deref());
            this.inner.clone().oneshot(retry).await
        })
    }
}
