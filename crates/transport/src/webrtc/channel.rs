//! The client's side of the `data` channel as a `tower::Service`: the
//! tonic-generated clients run over it unchanged, as over an HTTP/2 channel.
//!
//! A call starts its stream in the framing under the peer's lock and waits
//! for its events on a waker; its request messages go straight into the
//! framing while the stream has fewer than [`STREAM_WINDOW`] bytes queued.
//! Only a request body that is not complete when the call starts (client
//! streaming) gets a task of its own to feed it. When the connection dies
//! every call in flight fails at once with UNAVAILABLE.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName};
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use std::time::Duration;
use tether_wire::framing::Metadata;
use tether_wire::framing::{ClientConn, ClientEvent, Limits};
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;

use super::driver::{Endpoint, RtcPeer, Shared};
use super::serve::STREAM_WINDOW;
use crate::BoxError;

#[derive(Default)]
struct ClientStream {
    events: VecDeque<ClientEvent>,
    waker: Option<Waker>,
    send_waker: Option<Waker>,
}

/// The client role's part of the peer state.
pub(crate) struct ClientSide {
    conn: ClientConn,
    streams: HashMap<u64, ClientStream>,
}

impl ClientSide {
    pub(crate) fn on_message(&mut self, packet: &[u8], wake: &mut Vec<Waker>) {
        if let Err(e) = self.conn.handle_incoming(packet) {
            tracing::debug!("dropped a data channel message: {e}");
        }
        self.dispatch(wake);
    }

    fn dispatch(&mut self, wake: &mut Vec<Waker>) {
        while let Some(event) = self.conn.poll_event() {
            let id = match &event {
                ClientEvent::Headers { stream, .. }
                | ClientEvent::Message { stream, .. }
                | ClientEvent::Trailers { stream, .. } => *stream,
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.events.push_back(event);
                wake.extend(s.waker.take());
            }
        }
    }

    pub(crate) fn poll_transmit(&mut self, wake: &mut Vec<Waker>) -> Option<Bytes> {
        let (stream, packet) = self.conn.poll_transmit_stream()?;
        if self.conn.queued(stream) <= STREAM_WINDOW
            && let Some(s) = self.streams.get_mut(&stream)
        {
            wake.extend(s.send_waker.take());
        }
        Some(packet)
    }

    pub(crate) fn on_close(&mut self, wake: &mut Vec<Waker>) {
        self.conn.close_all(tether_wire::Code::Unavailable, closed_status().message());
        self.dispatch(wake);
        for s in self.streams.values_mut() {
            wake.extend(s.send_waker.take());
        }
    }
}

/// gRPC over a peer's `data` channel. Cheap to clone.
#[derive(Clone)]
pub struct RtcChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RtcChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcChannel").field("closed", &self.is_closed()).finish()
    }
}

impl RtcPeer {
    /// Makes this peer's `data` channel carry our calls.
    pub fn channel(&self, limits: Limits) -> RtcChannel {
        let side = ClientSide { conn: ClientConn::new(limits), streams: HashMap::new() };
        let shared = self.shared.clone();
        self.shared.with(|inner, wake| inner.attach(Endpoint::Client(side), &shared, wake));
        RtcChannel { shared: self.shared.clone() }
    }
}

impl RtcChannel {
    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }
}

/// Runs `f` on the client side (None once the connection is closed).
fn with_side<R>(shared: &Shared, f: impl FnOnce(&mut ClientSide, &mut Vec<Waker>) -> R) -> Option<R> {
    shared.with(|inner, wake| {
        if inner.closed.is_some() {
            return None;
        }
        match &mut inner.endpoint {
            Endpoint::Client(side) => Some(f(side, wake)),
            _ => None,
        }
    })
}

/// Queues one request message, waiting for room; false if the stream is gone.
async fn send_message(shared: &Shared, stream: u64, message: &[u8]) -> bool {
    let room = poll_fn(|cx: &mut Context<'_>| {
        let mut inner = shared.inner.lock();
        if inner.closed.is_some() {
            return Poll::Ready(false);
        }
        let Endpoint::Client(side) = &mut inner.endpoint else { return Poll::Ready(false) };
        let Some(s) = side.streams.get_mut(&stream) else { return Poll::Ready(false) };
        if side.conn.queued(stream) <= STREAM_WINDOW {
            return Poll::Ready(true);
        }
        s.send_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    if !room {
        return false;
    }
    with_side(shared, |side, wake| match side.conn.send_message(stream, message, false) {
        Ok(()) => true,
        Err(status) => {
            side.conn.reset(stream);
            if let Some(s) = side.streams.get_mut(&stream) {
                s.events.push_back(ClientEvent::Trailers {
                    stream,
                    code: status.code(),
                    message: status.message().to_owned(),
                    metadata: Vec::new(),
                });
                wake.extend(s.waker.take());
            }
            false
        }
    })
    .unwrap_or(false)
}

/// What reading the request body found.
enum Pumped {
    /// The body ended; the stream is half-closed.
    Done,
    /// The body is not complete yet.
    Pending(Body, BytesMut),
    /// The stream is gone.
    Gone,
}

/// Moves request messages into the framing for as long as the body yields
/// them without waiting (or, with `wait`, until it ends).
async fn pump(shared: &Shared, stream: u64, mut body: Body, mut buf: BytesMut, wait: bool) -> Pumped {
    loop {
        let frame = if wait {
            body.frame().await
        } else {
            match body.frame().now_or_never() {
                Some(f) => f,
                None => return Pumped::Pending(body, buf),
            }
        };
        match frame {
            None => {
                with_side(shared, |side, _| side.conn.half_close(stream));
                return Pumped::Done;
            }
            Some(Err(_)) => {
                with_side(shared, |side, _| {
                    side.conn.reset(stream);
                    side.streams.remove(&stream);
                });
                return Pumped::Gone;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                while let Some((_, message, total)) = crate::grpc::first_frame(&buf) {
                    if !send_message(shared, stream, message).await {
                        return Pumped::Gone;
                    }
                    buf.advance(total);
                }
            }
        }
    }
}

/// Resets the stream unless the call completed.
struct ResetOnDrop {
    shared: Arc<Shared>,
    stream: u64,
    armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let stream = self.stream;
            with_side(&self.shared, |side, _| {
                side.streams.remove(&stream);
                side.conn.reset(stream);
            });
        }
    }
}

/// The next event of `stream`; None if the connection closed without one.
fn poll_event(shared: &Shared, stream: u64, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
    let mut inner = shared.inner.lock();
    let closed = inner.closed.is_some();
    let Endpoint::Client(side) = &mut inner.endpoint else { return Poll::Ready(None) };
    let Some(s) = side.streams.get_mut(&stream) else { return Poll::Ready(None) };
    if let Some(e) = s.events.pop_front() {
        if matches!(e, ClientEvent::Trailers { .. }) {
            side.streams.remove(&stream);
        }
        return Poll::Ready(Some(e));
    }
    if closed {
        return Poll::Ready(None);
    }
    s.waker = Some(cx.waker().clone());
    Poll::Pending
}

impl Service<Request<Body>> for RtcChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let timeout = parts.headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
            let metadata = request_metadata(&parts.headers);
            let started = with_side(&shared, |side, _| {
                let id = side.conn.start_call(parts.uri.path(), &metadata, timeout).map_err(crate::grpc::to_status)?;
                side.streams.insert(id, ClientStream::default());
                Ok::<_, Status>(id)
            });
            let stream = match started {
                Some(Ok(id)) => id,
                Some(Err(status)) => return Ok(status.into_http()),
                None => return Ok(closed_status().into_http()),
            };
            let mut guard = ResetOnDrop { shared: shared.clone(), stream, armed: true };
            // Unary and server-streaming bodies are complete at once; only a
            // body still being produced gets a task to feed it.
            match pump(&shared, stream, body, BytesMut::new(), false).await {
                Pumped::Done | Pumped::Gone => {}
                Pumped::Pending(body, buf) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { pump(&shared, stream, body, buf, true).await });
                }
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let first = poll_fn(|cx| poll_event(&shared, stream, cx));
            let first = match deadline {
                Some(d) => match tokio::time::timeout_at(d, first).await {
                    Ok(e) => e,
                    Err(_) => return Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                },
                None => first.await,
            };
            match first {
                Some(ClientEvent::Headers { metadata, .. }) => {
                    guard.armed = false;
                    let mut response = Response::new(Body::new(ResponseBody {
                        guard: ResetOnDrop { shared: shared.clone(), stream, armed: true },
                        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                        done: false,
                    }));
                    *response.headers_mut() = header_map(&metadata);
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    Ok(response)
                }
                Some(ClientEvent::Trailers { code, message, metadata, .. }) => {
                    guard.armed = false;
                    let mut response = Status::new(tonic_code(code), message).into_http();
                    for (k, v) in header_map(&metadata) {
                        if let Some(k) = k {
                            response.headers_mut().append(k, v);
                        }
                    }
                    Ok(response)
                }
                Some(ClientEvent::Message { .. }) => {
                    Ok(Status::internal("protocol error: message before headers").into_http())
                }
                None => Ok(closed_status().into_http()),
            }
        })
    }
}

struct ResponseBody {
    guard: ResetOnDrop,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ResponseBody {
    fn finish(&mut self) {
        self.done = true;
        self.guard.armed = false;
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            // The guard resets the stream.
            self.done = true;
            let expired = trailers(Code::DeadlineExceeded, "deadline exceeded", &Vec::new());
            return Poll::Ready(Some(Ok(Frame::trailers(expired))));
        }
        let stream = self.guard.stream;
        match poll_event(&self.guard.shared, stream, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(Some(Ok(Frame::trailers(trailers(
                    Code::Unavailable,
                    closed_status().message(),
                    &Vec::new(),
                )))))
            }
            Poll::Ready(Some(ClientEvent::Message { message, .. })) => {
                with_side(&self.guard.shared, |side, _| side.conn.release(stream, message.len()));
                let mut framed = BytesMut::with_capacity(5 + message.len());
                framed.extend_from_slice(&[0]);
                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                framed.extend_from_slice(&message);
                Poll::Ready(Some(Ok(Frame::data(framed.freeze()))))
            }
            Poll::Ready(Some(ClientEvent::Trailers { code, message, metadata, .. })) => {
                self.finish();
                Poll::Ready(Some(Ok(Frame::trailers(trailers(tonic_code(code), &message, &metadata)))))
            }
            Poll::Ready(Some(ClientEvent::Headers { .. })) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The status of every call on a dead connection.
pub fn closed_status() -> Status {
    Status::unavailable("webrtc connection closed")
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn request_metadata(headers: &HeaderMap) -> Metadata {
    headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "te" | "content-type"
                    | "user-agent"
                    | "grpc-timeout"
                    | "authorization"
                    | "grpc-accept-encoding"
                    | "grpc-encoding"
            )
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect()
}

fn header_map(md: &Metadata) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in md {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.append(k, v);
        }
    }
    h
}

/// The tonic code of a code of the sans-IO layer.
fn tonic_code(code: tether_wire::Code) -> Code {
    Code::from_i32(code as i32)
}

fn trailers(code: Code, message: &str, md: &Metadata) -> HeaderMap {
    let mut h = header_map(md);
    h.insert("grpc-status", HeaderValue::from(code as i32));
    if !message.is_empty() {
        let encoded = percent_encode(message);
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert("grpc-message", v);
        }
    }
    h
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(percent_encode("a b%\n"), "a b%25%0A");
    }
}
