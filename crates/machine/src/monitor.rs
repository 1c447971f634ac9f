//! The layer in front of every service on every transport: operation ids,
//! session binding of safety-monitored calls, and last-caller tracking.
//!
//! For a monitored method (option 84260 in the compiled descriptors) it reads
//! the first request message to learn the resource's `name`, validates the
//! `viam-sid` header against the session manager (an implicit heartbeat),
//! and records the session — or no session — as that resource's last caller
//! before the handler runs. The buffered message is then replayed to the
//! handler unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tether_transport::auth::AuthEntity;
use tether_transport::{ConnectionInfo, TransportKind, grpc};
use tether_wire::metadata;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

use crate::operations::{OperationGuard, Operations};
use crate::resource::Resources;
use crate::session::{Caller, PeerInfo, SessionError, SessionManager};

/// Facts about the current call, available to handlers as a request extension.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The operation id (also sent back as the `opid` header).
    pub operation: Option<Uuid>,
    /// The session the call is bound to (monitored calls only).
    pub session: Option<Uuid>,
    /// Cancelled when the operation is cancelled.
    pub cancel: CancellationToken,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// Everything the layer needs from the machine.
#[derive(Clone, Debug)]
pub struct MonitorState {
    /// Running operations.
    pub operations: Operations,
    /// Sessions and last callers.
    pub sessions: SessionManager,
    /// The machine's resources (to check that a name exists).
    pub resources: Arc<Resources>,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct MonitorLayer {
    state: MonitorState,
}

impl MonitorLayer {
    /// A layer over the machine's state.
    pub fn new(state: MonitorState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for MonitorLayer {
    type Service = Monitor<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Monitor { inner, state: self.state.clone() }
    }
}

/// Service produced by [`MonitorLayer`].
#[derive(Clone, Debug)]
pub struct Monitor<S> {
    inner: S,
    state: MonitorState,
}

/// The peer of a request, from its connection.
pub fn peer_of<B>(req: &Request<B>) -> PeerInfo {
    match req.extensions().get::<ConnectionInfo>() {
        Some(c) => PeerInfo { webrtc: c.kind == TransportKind::WebRtc, remote: c.remote, local: c.local },
        None => PeerInfo::default(),
    }
}

/// Who a request is, as far as sessions are concerned (see [`identity`]).
pub fn owner_of<B>(req: &Request<B>) -> String {
    identity(req.extensions().get::<AuthEntity>(), req.extensions().get::<ConnectionInfo>())
}

/// The identity that owns the sessions a caller starts: its authenticated
/// entity (an API key id, or the caller a signaler vouched for over
/// WebRTC), else — on a machine without auth — the host it calls from (the
/// IP address of the TCP peer or of the WebRTC peer's selected remote
/// candidate). A host, not a connection: the Viam Python SDK
/// heartbeats over a connection of its own, gRPC-Web clients spread calls
/// over pooled HTTP/1.1 connections, and a client resumes its session over a
/// new connection after a reconnect.
pub fn identity(entity: Option<&AuthEntity>, connection: Option<&ConnectionInfo>) -> String {
    match (entity, connection.and_then(|c| c.remote)) {
        (Some(e), _) => e.0.clone(),
        (None, Some(remote)) => {
            // The exact address (an IPv6 /64 is a whole LAN); IPv4-mapped
            // IPv6 as IPv4.
            let ip = match remote.ip() {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(remote.ip()),
                v4 => v4,
            };
            format!("host:{ip}")
        }
        (None, None) => "anonymous".to_owned(),
    }
}

fn untracked(path: &str) -> bool {
    path == "/viam.robot.v1.RobotService/GetOperations"
        || path == "/viam.robot.v1.RobotService/StreamStatus"
        || path.starts_with("/proto.rpc.webrtc.v1.SignalingService/")
        || path.starts_with("/grpc.reflection.v1alpha.")
}

fn session_header<B>(req: &Request<B>) -> Result<Option<Uuid>, SessionError> {
    let mut values = req.headers().get_all(metadata::SESSION_ID).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SessionError::Malformed("more than one viam-sid".into()));
    }
    let s = first.to_str().map_err(|_| SessionError::Malformed("non-ascii viam-sid".into()))?;
    crate::session::parse_id(s).map(Some)
}

impl<S> Service<Request<Body>> for Monitor<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(handle(inner, state, req))
    }
}

async fn handle<S>(mut inner: S, state: MonitorState, mut req: Request<Body>) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let path = req.uri().path().to_owned();
    let monitored = tether_proto::safety::is_monitored(&path);
    let mut session = None;
    if monitored {
        let sid = match session_header(&req) {
            Ok(sid) => sid,
            Err(e) => return Ok(Status::from(e).into_http()),
        };
        if let Some(sid) = sid {
            let owner = owner_of(&req);
            let peer = peer_of(&req);
            if let Err(e) = state.sessions.heartbeat(&sid.to_string(), &owner, Some(peer)) {
                return Ok(Status::from(e).into_http());
            }
            session = Some(sid);
        }
        let (parts, body) = req.into_parts();
        let (name, body) = match peek_name(body).await {
            Ok(v) => v,
            Err(status) => return Ok(status.into_http()),
        };
        req = Request::from_parts(parts, body);
        if let Some(name) = name.filter(|n| state.resources.contains(n)) {
            let caller = match (session, req.extensions().get::<ConnectionInfo>()) {
                (Some(id), _) => Some(Caller::Session(id)),
                // Sessionless over WebRTC: the connection's death stops it.
                (None, Some(c)) if c.kind == TransportKind::WebRtc => Some(Caller::Connection(c.id)),
                (None, _) => None,
            };
            state.sessions.associate_caller(&name, caller);
        }
    }

    let guard: Option<OperationGuard> = (!untracked(&path)).then(|| {
        let requested = req
            .headers()
            .get(metadata::OPERATION_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok());
        state.operations.register(requested, path.clone(), session)
    });
    let cancel = guard.as_ref().map(|g| g.cancel_token().clone()).unwrap_or_default();
    let operation = guard.as_ref().map(OperationGuard::id);
    req.extensions_mut().insert(CallContext { operation, session, cancel: cancel.clone() });

    let result = tokio::select! {
        r = inner.call(req) => r,
        _ = cancel.cancelled() => Ok(Status::cancelled("operation cancelled").into_http()),
    };
    let Ok(mut response) = result;
    if let Some(id) = operation
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        response.headers_mut().insert(metadata::OPERATION_ID, v);
    }
    Ok(match guard {
        Some(guard) => response.map(|b| Body::new(Guarded { inner: b, _guard: guard })),
        None => response,
    })
}

/// Reads request frames until the first gRPC message is complete and decodes
/// its `name` field. Returns a body that replays everything read.
async fn peek_name(mut body: Body) -> Result<(Option<String>, Body), Status> {
    let mut buf = BytesMut::new();
    let mut ended = false;
    loop {
        if let Some(len) = grpc::declared_len(&buf) {
            if len > tether_transport::MAX_MESSAGE_SIZE {
                return Err(Status::resource_exhausted(format!(
                    "request message of {len} bytes exceeds the limit of {} bytes",
                    tether_transport::MAX_MESSAGE_SIZE
                )));
            }
            if buf.len() >= 5 + len {
                break;
            }
        }
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(_) => {
                    ended = true;
                    break;
                }
            },
            Some(Err(e)) => return Err(Status::cancelled(format!("reading request: {e}"))),
        }
    }
    let name = grpc::first_frame(&buf).and_then(|(compressed, msg, _)| {
        if compressed { None } else { <NameOnly as prost::Message>::decode(msg).ok().map(|n| n.name) }
    });
    let prefix = buf.freeze();
    let rest = if ended { None } else { Some(body) };
    Ok((name, Body::new(Replay { prefix: Some(prefix).filter(|p| !p.is_empty()), rest })))
}

pin_project_lite::pin_project! {
    struct Replay {
        prefix: Option<Bytes>,
        #[pin]
        rest: Option<Body>,
    }
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match this.rest.as_mut().as_pin_mut() {
            None => Poll::Ready(None),
            Some(rest) => rest.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its operation registered until it is done.
    struct Guarded {
        #[pin]
        inner: Body,
        _guard: OperationGuard,
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(remote: &str, kind: TransportKind) -> ConnectionInfo {
        ConnectionInfo { kind, remote: Some(remote.parse().unwrap()), local: None, id: 1 }
    }

    #[test]
    fn an_identity_is_the_entity_else_the_calling_host() {
        let entity = AuthEntity("key-id".into());
        let a = from("10.0.0.5:40000", TransportKind::Grpc);
        assert_eq!(identity(Some(&entity), Some(&a)), "key-id");
        // Any connection of one host, over any transport, is one caller.
        assert_eq!(identity(None, Some(&a)), "host:10.0.0.5");
        assert_eq!(identity(None, Some(&from("10.0.0.5:40001", TransportKind::WebRtc))), "host:10.0.0.5");
        assert_eq!(identity(None, Some(&from("[::ffff:10.0.0.5]:1", TransportKind::Grpc))), "host:10.0.0.5");
        assert_ne!(identity(None, Some(&from("10.0.0.6:40000", TransportKind::Grpc))), "host:10.0.0.5");
        // Two hosts of one IPv6 /64 are two callers.
        let (x, y) = (from("[2001:db8::1]:1", TransportKind::Grpc), from("[2001:db8::2]:1", TransportKind::Grpc));
        assert_ne!(identity(None, Some(&x)), identity(None, Some(&y)));
        assert_eq!(identity(None, None), "anonymous");
    }
}
