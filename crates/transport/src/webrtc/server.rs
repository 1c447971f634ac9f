//! Serving the machine's HTTP service (the same tonic router as on TCP) over
//! a data channel: the I/O driver around [`ServerConn`].
//!
//! Each call becomes an `http::Request` carrying gRPC-framed messages, with a
//! [`ConnectionInfo`] of kind WebRTC (and the caller's identity, when known) in
//! its extensions; the response headers, messages and trailers go back as
//! `Response` frames. Calls run concurrently, each on its own task.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tether_wire::Code;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::ServiceExt;

use super::pipe::{Credit, Pipe};
use crate::auth::AuthEntity;
use crate::server::{ConnectionInfo, HttpService};
use tether_wire::framing::{Limits, Metadata, ServerConn, ServerEvent};

/// What the driver receives from call tasks.
enum Output {
    Headers(u64, Metadata),
    Message(u64, Bytes),
    Trailers(u64, Code, String, Metadata),
    /// The handler's request body consumed this many bytes.
    Release(u64, usize),
}

struct Call {
    /// Request messages for the handler; dropped at half-close.
    body: Option<mpsc::UnboundedSender<Bytes>>,
    /// The method takes exactly one request message: its body ends after
    /// the first one, whether or not the client sends eos (the TypeScript
    /// SDK never does for unary calls, and tonic waits for the body's end).
    single_request: bool,
    cancel: CancellationToken,
    credit: Arc<Credit>,
}

/// Headers that describe the transport, not the call; never passed on.
pub(crate) fn is_transport_header(key: &str) -> bool {
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

/// Serves `svc` on the pipe until the channel closes or `shutdown` fires.
/// Every call in progress is cancelled when that happens.
pub async fn serve(
    mut pipe: Pipe,
    svc: HttpService,
    info: ConnectionInfo,
    entity: Option<AuthEntity>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut conn = ServerConn::new(limits);
    let mut calls: HashMap<u64, Call> = HashMap::new();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Output>();
    let closed = pipe.closed.clone();
    loop {
        // Hand queued packets on while that needs no waiting (straight to the
        // channel, or into the writer while it has room).
        let flushed = pipe
            .outgoing
            .flush(|| {
                let (stream, packet) = conn.poll_transmit_stream()?;
                if let Some(call) = calls.get(&stream) {
                    call.credit.transmitted(conn.queued(stream));
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
            _ = shutdown.cancelled() => break,
            packet = pipe.incoming.recv() => {
                let Some(packet) = packet else { break };
                if let Err(e) = conn.handle_incoming(&packet) {
                    tracing::debug!("dropped a data channel message: {e}");
                }
                while let Some(event) = conn.poll_event() {
                    handle_event(event, &mut conn, &mut calls, &svc, &info, &entity, &out_tx);
                }
            }
            output = out_rx.recv() => {
                let Some(output) = output else { break };
                apply_output(output, &mut conn, &mut calls);
                while let Ok(output) = out_rx.try_recv() {
                    apply_output(output, &mut conn, &mut calls);
                }
            }
            permit = pipe.outgoing.reserve(), if pending => {
                let Some(permit) = permit else { break };
                if let Some((stream, packet)) = conn.poll_transmit_stream() {
                    permit.send(packet);
                    if let Some(call) = calls.get(&stream) {
                        call.credit.transmitted(conn.queued(stream));
                    }
                }
            }
        }
    }
    for (_, call) in calls.drain() {
        call.cancel.cancel();
    }
    pipe.close();
}

fn apply_output(output: Output, conn: &mut ServerConn, calls: &mut HashMap<u64, Call>) {
    match output {
        Output::Headers(stream, md) => conn.send_headers(stream, &md),
        Output::Message(stream, msg) => {
            let len = msg.len();
            conn.send_message(stream, &msg);
            if let Some(call) = calls.get(&stream) {
                call.credit.enqueued(len, conn.queued(stream));
            }
            if !conn.is_open(stream) {
                // The framing failed the stream (message too large).
                if let Some(call) = calls.remove(&stream) {
                    call.cancel.cancel();
                }
            }
        }
        Output::Trailers(stream, code, message, md) => {
            conn.send_trailers(stream, code, &message, &md);
            calls.remove(&stream);
        }
        Output::Release(stream, n) => conn.release(stream, n),
    }
}

fn handle_event(
    event: ServerEvent,
    conn: &mut ServerConn,
    calls: &mut HashMap<u64, Call>,
    svc: &HttpService,
    info: &ConnectionInfo,
    entity: &Option<AuthEntity>,
    out: &mpsc::UnboundedSender<Output>,
) {
    match event {
        ServerEvent::Call { stream, method, metadata, timeout } => {
            let (body_tx, body_rx) = mpsc::unbounded_channel();
            let cancel = CancellationToken::new();
            let credit = Arc::new(Credit::default());
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
            let body = RequestBody { rx: body_rx, stream, out: out.clone() };
            let mut req = match Request::post(method.as_str()).body(Body::new(body)) {
                Ok(r) => r,
                Err(_) => {
                    conn.send_trailers(stream, Code::Unimplemented, &format!("malformed method {method:?}"), &[]);
                    return;
                }
            };
            *req.headers_mut() = headers;
            req.extensions_mut().insert(info.clone());
            if let Some(e) = entity {
                req.extensions_mut().insert(e.clone());
            }
            let single_request = tether_proto::safety::method(&method).is_some_and(|m| !m.client_streaming);
            calls.insert(
                stream,
                Call { body: Some(body_tx), single_request, cancel: cancel.clone(), credit: credit.clone() },
            );
            tokio::spawn(run_call(svc.clone(), req, stream, timeout, cancel, credit, out.clone()));
        }
        ServerEvent::Message { stream, message } => {
            if let Some(call) = calls.get_mut(&stream)
                && let Some(tx) = &call.body
            {
                let _ = tx.send(message);
                if call.single_request {
                    call.body = None;
                }
            }
        }
        ServerEvent::HalfClose { stream } => {
            if let Some(call) = calls.get_mut(&stream) {
                call.body = None;
            }
        }
        ServerEvent::Cancel { stream } => {
            if let Some(call) = calls.remove(&stream) {
                call.cancel.cancel();
            }
        }
    }
}

async fn run_call(
    svc: HttpService,
    req: Request<Body>,
    stream: u64,
    timeout: Option<Duration>,
    cancel: CancellationToken,
    credit: Arc<Credit>,
    out: mpsc::UnboundedSender<Output>,
) {
    let work = forward(svc, req, stream, &cancel, &credit, &out);
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
        let _ = out.send(Output::Trailers(stream, code, message, Vec::new()));
    }
}

pub(crate) fn metadata_of(headers: &HeaderMap) -> Metadata {
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !is_transport_header(k) && k != "grpc-status" && k != "grpc-message" && k != "grpc-status-details-bin"
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect()
}

/// Runs one call through the service and streams its response back.
async fn forward(
    svc: HttpService,
    req: Request<Body>,
    stream: u64,
    cancel: &CancellationToken,
    credit: &Credit,
    out: &mpsc::UnboundedSender<Output>,
) -> Result<(), (Code, String)> {
    let Ok(response) = svc.oneshot(req).await;
    let (parts, mut body) = response.into_parts();
    let _ = out.send(Output::Headers(stream, metadata_of(&parts.headers)));
    if let Some(status) = crate::grpc::status_from_headers(&parts.headers) {
        // Trailers-only response.
        let _ = out.send(Output::Trailers(
            stream,
            Code::from_i32(status.code() as i32),
            status.message().to_owned(),
            Vec::new(),
        ));
        return Ok(());
    }
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
                    let message = Bytes::copy_from_slice(message);
                    buf.advance(total);
                    if !credit.acquire(message.len(), cancel).await {
                        return Ok(());
                    }
                    let _ = out.send(Output::Message(stream, message));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let (code, message) = match crate::grpc::status_from_headers(&trailers) {
                        Some(s) => (Code::from_i32(s.code() as i32), s.message().to_owned()),
                        None => (Code::Unknown, "response trailers without grpc-status".into()),
                    };
                    let _ = out.send(Output::Trailers(stream, code, message, metadata_of(&trailers)));
                    return Ok(());
                }
            }
        }
    }
    Err((Code::Internal, "response ended without trailers".into()))
}

/// The request body a handler reads: gRPC-framed messages from the channel.
struct RequestBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    stream: u64,
    out: mpsc::UnboundedSender<Output>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                let _ = self.out.send(Output::Release(self.stream, message.len()));
                let mut framed = BytesMut::with_capacity(5 + message.len());
                framed.extend_from_slice(&[0]);
                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                framed.extend_from_slice(&message);
                Poll::Ready(Some(Ok(Frame::data(framed.freeze()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
