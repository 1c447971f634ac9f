//! The machine's side of the `data` channel: the same tonic router as on
//! TCP, served over [`ServerConn`] inside the peer's state.
//!
//! Each call becomes an `http::Request` with a [`ConnectionInfo`] of kind
//! WebRTC (and the caller's identity, when known) in its extensions, and runs
//! as one task: the handler's future. Its request body reads messages
//! straight from the call's slot in the shared state; its response goes
//! straight into the framing, waiting (on a waker) while the stream has more
//! than [`STREAM_WINDOW`] bytes queued.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tether_wire::Code;
use tether_wire::framing::{Limits, ServerConn, ServerEvent};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt;

use super::driver::{Endpoint, Inner, RtcPeer, Shared};
use crate::auth::AuthEntity;
use crate::server::{ConnectionInfo, HttpService};
use tether_wire::framing::Metadata;

/// Response bytes one stream may have queued in the framing before its
/// handler waits.
pub const STREAM_WINDOW: usize = 1 << 20;

/// The default of [`PartialBudget::machine`]: bytes of partially received
/// request messages all served peers of a process may hold together (as the
/// HTTP/2 listener's budget).
pub const MACHINE_PARTIAL_BUDGET: usize = 64 << 20;

/// Bytes of partially received request messages held by the served peers
/// that share it (each peer's own bound is
/// [`Limits::max_partial_bytes`](tether_wire::framing::Limits)). Over the
/// budget, the peer holding the largest partial message fails that stream
/// with RESOURCE_EXHAUSTED; its other streams and every other peer go on.
#[derive(Debug)]
pub struct PartialBudget {
    limit: usize,
    peers: parking_lot::Mutex<HashMap<u64, PeerPartials>>,
    /// Partial messages dropped over a peer's or this budget.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Partial messages reset for making no progress.
    pub stalled: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct PeerPartials {
    total: usize,
    largest: usize,
    shared: Weak<Shared>,
}

impl PartialBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            peers: parking_lot::Mutex::new(HashMap::new()),
            dropped: Default::default(),
            stalled: Default::default(),
        })
    }

    /// The process-wide budget ([`MACHINE_PARTIAL_BUDGET`]) that
    /// [`RtcPeer::serve`] uses.
    pub fn machine() -> Arc<Self> {
        static MACHINE: std::sync::OnceLock<Arc<PartialBudget>> = std::sync::OnceLock::new();
        MACHINE.get_or_init(|| Self::new(MACHINE_PARTIAL_BUDGET)).clone()
    }

    /// Bytes held now over every peer.
    pub fn used(&self) -> usize {
        self.peers.lock().values().map(|p| p.total).sum()
    }

    /// Peer `id` now holds `total` bytes, `largest` in one message. Returns
    /// whether that peer must drop its own largest now; other peers that
    /// must are told on a task of their own (never under this peer's lock).
    fn update(&self, id: u64, total: usize, largest: usize, shared: &Arc<Shared>) -> bool {
        let mut peers = self.peers.lock();
        if total == 0 {
            peers.remove(&id);
            return false;
        }
        peers.insert(id, PeerPartials { total, largest, shared: Arc::downgrade(shared) });
        let mut own = false;
        while peers.values().map(|p| p.total).sum::<usize>() > self.limit {
            let Some((&victim, p)) = peers.iter_mut().filter(|(_, p)| p.largest > 0).max_by_key(|(_, p)| p.largest)
            else {
                break;
            };
            // Counted as freed now; the peer reports its real figures next.
            p.total -= p.largest.min(p.total);
            p.largest = 0;
            if victim == id {
                own = true;
            } else if let Some(other) = p.shared.upgrade() {
                let limit = self.limit;
                tokio::spawn(async move {
                    other.with(|inner, _| {
                        if let Endpoint::Server(side) = &mut inner.endpoint {
                            side.drop_largest(limit, &other);
                        }
                    })
                });
            }
        }
        own
    }

    fn remove(&self, id: u64) {
        self.peers.lock().remove(&id);
    }
}

struct ServerCall {
    /// Request messages not yet read by the handler.
    body: VecDeque<Bytes>,
    /// More request messages may come.
    body_open: bool,
    /// The method takes exactly one request message: its body ends after
    /// the first one, whether or not the client sends eos (the TypeScript
    /// SDK never does for unary calls, and tonic waits for the body's end).
    single_request: bool,
    body_waker: Option<Waker>,
    send_waker: Option<Waker>,
    cancel: CancellationToken,
}

/// The server role's part of the peer state.
pub(crate) struct ServerSide {
    conn: ServerConn,
    calls: HashMap<u64, ServerCall>,
    svc: HttpService,
    info: ConnectionInfo,
    entity: Option<AuthEntity>,
    budget: Arc<PartialBudget>,
    /// [`ServerConn::partials_failed`] as last added to the budget's counters.
    counted: (u64, u64),
}

impl ServerSide {
    pub(crate) fn on_message(&mut self, packet: &[u8], shared: &Arc<Shared>) {
        if let Err(e) = self.conn.handle_incoming_at(packet, std::time::Instant::now()) {
            tracing::debug!("dropped a data channel message: {e}");
        }
        self.account(shared);
        self.drain(shared);
    }

    fn drain(&mut self, shared: &Arc<Shared>) {
        while let Some(event) = self.conn.poll_event() {
            self.on_event(event, shared);
        }
    }

    /// Reports this peer's partial messages to the machine-wide budget, and
    /// drops its largest while the budget says so.
    fn account(&mut self, shared: &Arc<Shared>) {
        let largest = |conn: &ServerConn| conn.largest_partial().map_or(0, |(_, n)| n);
        while self.budget.update(self.info.id, self.conn.partial_bytes(), largest(&self.conn), shared) {
            let why = format!("partially received messages on this machine exceed {} bytes", self.budget.limit);
            if self.conn.drop_largest_partial(&why).is_none() {
                break;
            }
        }
        let (dropped, stalled) = self.conn.partials_failed();
        use std::sync::atomic::Ordering::Relaxed;
        self.budget.dropped.fetch_add(dropped - self.counted.0, Relaxed);
        self.budget.stalled.fetch_add(stalled - self.counted.1, Relaxed);
        self.counted = (dropped, stalled);
    }

    /// Drops the largest partial message for the machine-wide budget.
    fn drop_largest(&mut self, limit: usize, shared: &Arc<Shared>) {
        let why = format!("partially received messages on this machine exceed {limit} bytes");
        self.conn.drop_largest_partial(&why);
        self.account(shared);
        self.drain(shared);
    }

    /// Resets stalled partial messages; when to look again.
    fn reset_stalled(&mut self, shared: &Arc<Shared>) -> Option<std::time::Instant> {
        if self.conn.reset_stalled(std::time::Instant::now()) > 0 {
            self.account(shared);
            self.drain(shared);
        }
        self.conn.next_stall()
    }

    pub(crate) fn poll_transmit(&mut self, wake: &mut Vec<Waker>) -> Option<Bytes> {
        let (stream, packet) = self.conn.poll_transmit_stream()?;
        if self.conn.queued(stream) <= STREAM_WINDOW
            && let Some(call) = self.calls.get_mut(&stream)
            && let Some(w) = call.send_waker.take()
        {
            wake.push(w);
        }
        Some(packet)
    }

    pub(crate) fn on_close(&mut self, wake: &mut Vec<Waker>) {
        self.budget.remove(self.info.id);
        for (_, mut call) in self.calls.drain() {
            call.cancel.cancel();
            wake.extend(call.body_waker.take());
            wake.extend(call.send_waker.take());
        }
    }

    fn on_event(&mut self, event: ServerEvent, shared: &Arc<Shared>) {
        match event {
            ServerEvent::Call { stream, method, metadata, timeout } => {
                let mut headers = HeaderMap::new();
                for (k, v) in &metadata {
                    if is_transport_header(k) {
                        continue;
                    }
                    if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                        headers.append(k, v);
                    }
                }
                headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
                let body = RequestBody { shared: shared.clone(), stream };
                let mut req = match Request::post(method.as_str()).body(Body::new(body)) {
                    Ok(r) => r,
                    Err(_) => {
                        self.conn.send_trailers(
                            stream,
                            Code::Unimplemented,
                            &format!("malformed method {method:?}"),
                            &[],
                        );
                        return;
                    }
                };
                *req.headers_mut() = headers;
                req.extensions_mut().insert(self.info.clone());
                req.extensions_mut().insert(super::media::CallPeer::of(shared));
                if let Some(e) = &self.entity {
                    req.extensions_mut().insert(e.clone());
                }
                let cancel = CancellationToken::new();
                let single_request = tether_proto::safety::method(&method).is_some_and(|m| !m.client_streaming);
                self.calls.insert(
                    stream,
                    ServerCall {
                        body: VecDeque::new(),
                        body_open: true,
                        single_request,
                        body_waker: None,
                        send_waker: None,
                        cancel: cancel.clone(),
                    },
                );
                tokio::spawn(run_call(shared.clone(), self.svc.clone(), req, stream, timeout, cancel));
            }
            ServerEvent::Message { stream, message } => {
                if let Some(call) = self.calls.get_mut(&stream)
                    && call.body_open
                {
                    call.body.push_back(message);
                    if call.single_request {
                        call.body_open = false;
                    }
                    if let Some(w) = call.body_waker.take() {
                        w.wake();
                    }
                }
            }
            ServerEvent::HalfClose { stream } => {
                if let Some(call) = self.calls.get_mut(&stream) {
                    call.body_open = false;
                    if let Some(w) = call.body_waker.take() {
                        w.wake();
                    }
                }
            }
            ServerEvent::Cancel { stream } => {
                if let Some(mut call) = self.calls.remove(&stream) {
                    call.cancel.cancel();
                    if let Some(w) = call.body_waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }
}

impl RtcPeer {
    /// Serves `svc` on the `data` channel until the connection closes. Calls
    /// in progress are cancelled when it does. Partial request messages
    /// count against [`PartialBudget::machine`].
    pub fn serve(&self, svc: HttpService, info: ConnectionInfo, entity: Option<AuthEntity>, limits: Limits) {
        self.serve_with_budget(svc, info, entity, limits, PartialBudget::machine());
    }

    /// [`Self::serve`] with partial request messages counted against
    /// `budget` (peers sharing one are bounded together).
    pub fn serve_with_budget(
        &self,
        svc: HttpService,
        info: ConnectionInfo,
        entity: Option<AuthEntity>,
        limits: Limits,
        budget: Arc<PartialBudget>,
    ) {
        let conn = ServerConn::new(limits);
        let side = ServerSide { conn, calls: HashMap::new(), svc, info, entity, budget, counted: (0, 0) };
        let shared = self.shared.clone();
        self.shared.with(|inner, wake| inner.attach(Endpoint::Server(side), &shared, wake));
        tokio::spawn(reset_stalled(Arc::downgrade(&self.shared), self.shared.closed.clone()));
    }
}

/// Resets the peer's stalled partial messages until it closes: at each
/// partial message's stall deadline, looking again at least every
/// [`STALL_CHECK`].
async fn reset_stalled(shared: Weak<Shared>, closed: CancellationToken) {
    let mut next: Option<std::time::Instant> = None;
    loop {
        let wait = next.map_or(STALL_CHECK, |at| at.saturating_duration_since(std::time::Instant::now()));
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(wait.min(STALL_CHECK)) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        next = shared.with(|inner, _| match &mut inner.endpoint {
            Endpoint::Server(side) => side.reset_stalled(&shared),
            _ => None,
        });
    }
}

/// How often a served peer looks for stalled partial messages at least.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Runs `f` on the server side of `shared`, if the call is still there.
fn with_call<R>(shared: &Shared, stream: u64, f: impl FnOnce(&mut ServerSide, &mut Vec<Waker>) -> R) -> Option<R> {
    shared.with(|inner: &mut Inner, wake| match &mut inner.endpoint {
        Endpoint::Server(side) if side.calls.contains_key(&stream) => Some(f(side, wake)),
        _ => None,
    })
}

async fn run_call(
    shared: Arc<Shared>,
    svc: HttpService,
    req: Request<Body>,
    stream: u64,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) {
    let work = forward(&shared, svc, req, stream);
    let result = match timeout {
        Some(t) => tokio::select! {
            r = tokio::time::timeout(t, work) => r.unwrap_or(Err((Code::DeadlineExceeded, "deadline exceeded".into()))),
            _ = cancel.cancelled() => return,
        },
        None => tokio::select! {
            r = work => r,
            _ = cancel.cancelled() => return,
        },
    };
    if let Err((code, message)) = result {
        finish(&shared, stream, code, &message, &[]);
    }
}

fn finish(shared: &Shared, stream: u64, code: Code, message: &str, metadata: &[(String, String)]) {
    with_call(shared, stream, |side, _| {
        side.conn.send_trailers(stream, code, message, metadata);
        side.calls.remove(&stream);
    });
}

/// Waits until the stream has room for more response bytes; false if the
/// call is gone.
async fn credit(shared: &Shared, stream: u64) -> bool {
    poll_fn(|cx: &mut Context<'_>| {
        let mut inner = shared.inner.lock();
        let Endpoint::Server(side) = &mut inner.endpoint else { return Poll::Ready(false) };
        if side.conn.queued(stream) <= STREAM_WINDOW {
            return Poll::Ready(side.calls.contains_key(&stream));
        }
        match side.calls.get_mut(&stream) {
            Some(call) => {
                call.send_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(false),
        }
    })
    .await
}

/// Runs one call through the service and streams its response back.
async fn forward(shared: &Shared, svc: HttpService, req: Request<Body>, stream: u64) -> Result<(), (Code, String)> {
    let Ok(response) = svc.oneshot(req).await;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = crate::grpc::status_from_headers(&parts.headers) {
        // Trailers-only response.
        let md = metadata_of(&parts.headers);
        with_call(shared, stream, |side, _| side.conn.send_headers(stream, &md));
        finish(shared, stream, Code::from_i32(status.code() as i32), status.message(), &[]);
        return Ok(());
    }
    let md = metadata_of(&parts.headers);
    with_call(shared, stream, |side, _| side.conn.send_headers(stream, &md));
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|s| (Code::from_i32(s.code() as i32), s.message().to_owned()))?;
        match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                while let Some((compressed, message, total)) = crate::grpc::first_frame(&buf) {
                    if compressed {
                        return Err((Code::Internal, "compressed responses are not supported over WebRTC".into()));
                    }
                    if !credit(shared, stream).await {
                        return Ok(());
                    }
                    let sent = with_call(shared, stream, |side, _| {
                        side.conn.send_message(stream, message);
                        if !side.conn.is_open(stream) {
                            // The framing failed the stream (message too large).
                            if let Some(call) = side.calls.remove(&stream) {
                                call.cancel.cancel();
                            }
                        }
                    });
                    if sent.is_none() {
                        return Ok(());
                    }
                    buf.advance(total);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let (code, message) = match crate::grpc::status_from_headers(&trailers) {
                        Some(s) => (Code::from_i32(s.code() as i32), s.message().to_owned()),
                        None => (Code::Unknown, "response trailers without grpc-status".into()),
                    };
                    finish(shared, stream, code, &message, &metadata_of(&trailers));
                    return Ok(());
                }
            }
        }
    }
    Err((Code::Internal, "response ended without trailers".into()))
}

/// The request body a handler reads: messages from the call's slot.
struct RequestBody {
    shared: Arc<Shared>,
    stream: u64,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let message = {
            let mut inner = self.shared.inner.lock();
            let Endpoint::Server(side) = &mut inner.endpoint else { return Poll::Ready(None) };
            let Some(call) = side.calls.get_mut(&self.stream) else { return Poll::Ready(None) };
            match call.body.pop_front() {
                Some(m) => {
                    side.conn.release(self.stream, m.len());
                    m
                }
                None if call.body_open => {
                    call.body_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                None => return Poll::Ready(None),
            }
        };
        // Releasing credit may have queued a window update.
        self.shared.wake_driver();
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        Poll::Ready(Some(Ok(Frame::data(framed.freeze()))))
    }
}

/// Headers that describe the transport, not the call; never passed on.
fn is_transport_header(key: &str) -> bool {
    key.starts_with(':')
        || matches!(
            key,
            "te" | "content-type"
                | "content-length"
                | "user-agent"
                | "grpc-timeout"
                | "grpc-encoding"
                | "grpc-accept-encoding"
                | "connection"
                | "host"
                | "authorization"
        )
}

fn metadata_of(headers: &HeaderMap) -> Metadata {
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !is_transport_header(k) && k != "grpc-status" && k != "grpc-message" && k != "grpc-status-details-bin"
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect()
}
