//! The client side of gRPC over a data channel, as a `tower::Service`: the
//! tonic-generated clients run over it unchanged, exactly as over an HTTP/2
//! channel. Status codes and messages arrive intact; when the connection dies
//! every call in flight fails at once with UNAVAILABLE.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;

use super::pipe::{Credit, Pipe};
use crate::BoxError;
use tether_wire::framing::{ClientConn, ClientEvent, Limits, Metadata};

enum Command {
    Start {
        method: String,
        metadata: Metadata,
        timeout: Option<Duration>,
        events: mpsc::UnboundedSender<ClientEvent>,
        credit: Arc<Credit>,
        reply: oneshot::Sender<Result<u64, Status>>,
    },
    Message(u64, Bytes),
    HalfClose(u64),
    Reset(u64),
    Release(u64, usize),
}

struct Stream {
    events: mpsc::UnboundedSender<ClientEvent>,
    credit: Arc<Credit>,
}

/// gRPC over one data channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebRtcChannel {
    commands: mpsc::UnboundedSender<Command>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The status of every call on a dead connection.
pub fn closed_status() -> Status {
    Status::unavailable("webrtc connection closed")
}

impl WebRtcChannel {
    /// Starts the driver for `pipe`. The channel closes when the pipe does.
    pub fn new(pipe: Pipe, limits: Limits) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let closed = pipe.closed.clone();
        tokio::spawn(drive(pipe, rx, limits));
        Self { commands, closed }
    }

    /// Cancelled when the connection is gone.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

async fn drive(mut pipe: Pipe, mut commands: mpsc::UnboundedReceiver<Command>, limits: Limits) {
    let mut conn = ClientConn::new(limits);
    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let closed = pipe.closed.clone();
    loop {
        let flushed = pipe
            .outgoing
            .flush(|| {
                let (stream, packet) = conn.poll_transmit_stream()?;
                if let Some(s) = streams.get(&stream) {
                    s.credit.transmitted(conn.queued(stream));
                }
                Some(packet)
            })
            .await;
        if !flushed {
            break;
        }
        let pending = conn.queued_total() > 0;
        tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            packet = pipe.incoming.recv() => {
                let Some(packet) = packet else { break };
                if let Err(e) = conn.handle_incoming(&packet) {
                    tracing::debug!("dropped a data channel message: {e}");
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { break };
                apply(command, &mut conn, &mut streams);
                while let Ok(command) = commands.try_recv() {
                    apply(command, &mut conn, &mut streams);
                }
            }
            permit = pipe.outgoing.reserve(), if pending => {
                let Some(permit) = permit else { break };
                if let Some((stream, packet)) = conn.poll_transmit_stream() {
                    permit.send(packet);
                    if let Some(s) = streams.get(&stream) {
                        s.credit.transmitted(conn.queued(stream));
                    }
                }
            }
        }
        dispatch(&mut conn, &mut streams);
    }
    pipe.close();
    conn.close_all(tether_wire::Code::Unavailable, closed_status().message());
    dispatch(&mut conn, &mut streams);
    // Calls that start from now on fail at once.
    commands.close();
    while let Some(command) = commands.recv().await {
        if let Command::Start { reply, .. } = command {
            let _ = reply.send(Err(closed_status()));
        }
    }
}

fn apply(command: Command, conn: &mut ClientConn, streams: &mut HashMap<u64, Stream>) {
    match command {
        Command::Start { method, metadata, timeout, events, credit, reply } => {
            let result = conn.start_call(&method, &metadata, timeout).map_err(crate::grpc::to_status);
            if let Ok(id) = &result {
                streams.insert(*id, Stream { events, credit });
            }
            let _ = reply.send(result);
        }
        Command::Message(stream, message) => {
            let len = message.len();
            if let Err(status) = conn.send_message(stream, &message, false) {
                if let Some(s) = streams.remove(&stream) {
                    conn.reset(stream);
                    let _ = s.events.send(ClientEvent::Trailers {
                        stream,
                        code: status.code(),
                        message: status.message().to_owned(),
                        metadata: Vec::new(),
                    });
                }
                return;
            }
            if let Some(s) = streams.get(&stream) {
                s.credit.enqueued(len, conn.queued(stream));
            }
        }
        Command::HalfClose(stream) => conn.half_close(stream),
        Command::Reset(stream) => {
            streams.remove(&stream);
            conn.reset(stream);
        }
        Command::Release(stream, n) => conn.release(stream, n),
    }
}

fn dispatch(conn: &mut ClientConn, streams: &mut HashMap<u64, Stream>) {
    while let Some(event) = conn.poll_event() {
        let id = match &event {
            ClientEvent::Headers { stream, .. } | ClientEvent::Message { stream, .. } => *stream,
            ClientEvent::Trailers { stream, .. } => *stream,
        };
        let done = matches!(event, ClientEvent::Trailers { .. });
        if let Some(s) = streams.get(&id) {
            let _ = s.events.send(event);
        }
        if done {
            streams.remove(&id);
        }
    }
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

pub(crate) fn request_metadata(headers: &HeaderMap) -> Metadata {
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

pub(crate) fn header_map(md: &Metadata) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in md {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.append(k, v);
        }
    }
    h
}

/// The tonic code of a code of the sans-IO layer.
pub(crate) fn tonic_code(code: tether_wire::Code) -> Code {
    Code::from_i32(code as i32)
}

pub(crate) fn trailers(code: Code, message: &str, md: &Metadata) -> HeaderMap {
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

impl Service<Request<Body>> for WebRtcChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let commands = self.commands.clone();
        let closed = self.closed.clone();
        Box::pin(async move {
            if closed.is_cancelled() {
                return Ok(closed_status().into_http());
            }
            let (parts, body) = req.into_parts();
            let timeout = parts.headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let credit = Arc::new(Credit::default());
            let (reply_tx, reply_rx) = oneshot::channel();
            let start = Command::Start {
                method: parts.uri.path().to_owned(),
                metadata: request_metadata(&parts.headers),
                timeout,
                events: events_tx,
                credit: credit.clone(),
                reply: reply_tx,
            };
            if commands.send(start).is_err() {
                return Ok(closed_status().into_http());
            }
            let stream = match reply_rx.await {
                Ok(Ok(id)) => id,
                Ok(Err(status)) => return Ok(status.into_http()),
                Err(_) => return Ok(closed_status().into_http()),
            };
            let guard = ResetOnDrop { commands: commands.clone(), stream, armed: true };
            tokio::spawn(pump_request(body, stream, commands.clone(), credit, closed.clone()));
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let first = match deadline {
                Some(d) => match tokio::time::timeout_at(d, events.recv()).await {
                    Ok(e) => e,
                    Err(_) => return Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                },
                None => events.recv().await,
            };
            match first {
                Some(ClientEvent::Headers { metadata, .. }) => {
                    let mut response = Response::new(Body::new(ResponseBody {
                        events,
                        stream,
                        commands,
                        guard: Some(guard),
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
                    let mut guard = guard;
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

/// Sends request messages as the body yields them, then half-closes.
async fn pump_request(
    mut body: Body,
    stream: u64,
    commands: mpsc::UnboundedSender<Command>,
    credit: Arc<Credit>,
    closed: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = closed.cancelled() => return,
        };
        match frame {
            None => break,
            Some(Err(_)) => {
                let _ = commands.send(Command::Reset(stream));
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                while let Some((_, message, total)) = crate::grpc::first_frame(&buf) {
                    let message = Bytes::copy_from_slice(message);
                    buf.advance(total);
                    if !credit.acquire(message.len(), &closed).await {
                        return;
                    }
                    if commands.send(Command::Message(stream, message)).is_err() {
                        return;
                    }
                }
            }
        }
    }
    let _ = commands.send(Command::HalfClose(stream));
}

struct ResetOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    stream: u64,
    armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.send(Command::Reset(self.stream));
        }
    }
}

struct ResponseBody {
    events: mpsc::UnboundedReceiver<ClientEvent>,
    stream: u64,
    commands: mpsc::UnboundedSender<Command>,
    guard: Option<ResetOnDrop>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ResponseBody {
    fn finish(&mut self) {
        self.done = true;
        if let Some(mut g) = self.guard.take() {
            g.armed = false;
        }
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
            self.finish();
            let _ = self.commands.send(Command::Reset(self.stream));
            let expired = trailers(Code::DeadlineExceeded, "deadline exceeded", &Vec::new());
            return Poll::Ready(Some(Ok(Frame::trailers(expired))));
        }
        match self.events.poll_recv(cx) {
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
                let _ = self.commands.send(Command::Release(self.stream, message.len()));
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
