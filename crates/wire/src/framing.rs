//! gRPC over a WebRTC data channel, as a sans-IO state machine.
//!
//! Bytes in, events out; calls in, data-channel messages out. No sockets, no
//! clocks, no tasks: the transport feeds every received data-channel message
//! to `handle_incoming`, drains `poll_event`, and sends whatever
//! `poll_transmit` yields when the channel has room.
//!
//! * Every data-channel message is one serialized `Request` (client → server)
//!   or `Response` (server → client). A gRPC message is cut into packets whose
//!   encoded frame stays within [`Limits::max_packet`] (16 KiB by default: the
//!   Python SDK's webrtc-rs closes the channel on 64 KiB messages); inbound
//!   packets up to [`Limits::max_inbound_packet`] (256 KiB) are accepted.
//! * Reassembled messages are capped at [`Limits::max_message`] (32 MiB); an
//!   overflow fails *that stream* with RESOURCE_EXHAUSTED instead of hanging.
//! * Outbound packets of different streams are interleaved round-robin, so a
//!   large response never holds up a small one (no head-of-line blocking).
//! * A stream whose consumer falls behind by more than
//!   [`Limits::max_stream_buffer`] bytes is failed alone; the others go on.
//! * Bytes of partially received request messages are bounded per
//!   connection ([`Limits::max_partial_bytes`]): over it, the stream with the
//!   largest partial message fails with RESOURCE_EXHAUSTED. A partial
//!   message that makes no progress for [`Limits::partial_stall`] fails its
//!   stream with DEADLINE_EXCEEDED when the transport calls
//!   [`ServerConn::reset_stalled`] (time is an argument, as everywhere here).
//!
//! The server accepts every client dialect the wire contract lists: stream
//! ids from 0 or 1, `eos` on every packet (Go), no `eos` at all for unary
//! calls (TypeScript), or a separate `eos` frame (rust-utils).
//!
//! ```
//! use tether_wire::framing::{ClientConn, ClientEvent, Code, Limits, ServerConn, ServerEvent};
//! let mut client = ClientConn::new(Limits::default());
//! let mut server = ServerConn::new(Limits::default());
//! let id = client.start_call("/pkg.Svc/Echo", &[], None).unwrap();
//! client.send_message(id, b"hello", true).unwrap();
//! while let Some(packet) = client.poll_transmit() { server.handle_incoming(&packet).unwrap(); }
//! assert!(matches!(server.poll_event(), Some(ServerEvent::Call { method, .. }) if method == "/pkg.Svc/Echo"));
//! let Some(ServerEvent::Message { message, .. }) = server.poll_event() else { panic!() };
//! server.send_message(id, &message);
//! server.send_trailers(id, Code::Ok, "", &[]);
//! while let Some(packet) = server.poll_transmit() { client.handle_incoming(&packet).unwrap(); }
//! assert!(matches!(client.poll_event(), Some(ClientEvent::Headers { .. })));
//! assert!(matches!(client.poll_event(), Some(ClientEvent::Message { message, .. }) if &message[..] == b"hello"));
//! assert!(matches!(client.poll_event(), Some(ClientEvent::Trailers { code: Code::Ok, .. })));
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use crate::status::{Code, Status};
use bytes::{Bytes, BytesMut};
use prost::Message as _;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1 as pb;

/// Metadata as ordered `(key, value)` pairs (keys lower-case).
pub type Metadata = Vec<(String, String)>;

/// Bounds of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest data-channel message we send (whole encoded frame).
    pub max_packet: usize,
    /// Largest data-channel message we accept.
    pub max_inbound_packet: usize,
    /// Largest reassembled gRPC message, either way.
    pub max_message: usize,
    /// Most concurrently open streams.
    pub max_streams: usize,
    /// Most bytes of received messages a stream may have waiting for its
    /// consumer (see `release`).
    pub max_stream_buffer: usize,
    /// Most bytes of partially received request messages, over all streams
    /// of a server connection.
    pub max_partial_bytes: usize,
    /// How long a partially received request message may go without a new
    /// packet (see [`ServerConn::reset_stalled`]).
    pub partial_stall: Duration,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `Limits::default()`).
impl Limits {
    /// Sets [`Self::max_packet`].
    pub fn with_max_packet(mut self, max_packet: usize) -> Self {
        self.max_packet = max_packet;
        self
    }

    /// Sets [`Self::max_inbound_packet`].
    pub fn with_max_inbound_packet(mut self, max_inbound_packet: usize) -> Self {
        self.max_inbound_packet = max_inbound_packet;
        self
    }

    /// Sets [`Self::max_message`].
    pub fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets [`Self::max_streams`].
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
        self
    }

    /// Sets [`Self::max_partial_bytes`].
    pub fn with_max_partial_bytes(mut self, max_partial_bytes: usize) -> Self {
        self.max_partial_bytes = max_partial_bytes;
        self
    }

    /// Sets [`Self::partial_stall`].
    pub fn with_partial_stall(mut self, partial_stall: Duration) -> Self {
        self.partial_stall = partial_stall;
        self
    }

    /// Sets [`Self::max_stream_buffer`].
    pub fn with_max_stream_buffer(mut self, max_stream_buffer: usize) -> Self {
        self.max_stream_buffer = max_stream_buffer;
        self
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: 16 * 1024,
            max_inbound_packet: 256 * 1024,
            max_message: crate::MAX_MESSAGE_SIZE,
            max_streams: 256,
            max_stream_buffer: 2 * crate::MAX_MESSAGE_SIZE,
            // One message of the largest size plus 4 MiB for other calls, as
            // on the HTTP/2 listener.
            max_partial_bytes: crate::MAX_MESSAGE_SIZE + (4 << 20),
            partial_stall: Duration::from_secs(30),
        }
    }
}

/// A data-channel message that could not be used at all. The connection can
/// go on; the message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not a valid protobuf frame.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// Over [`Limits::max_inbound_packet`].
    #[error("data channel message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame names no stream.
    #[error("frame without a stream id")]
    NoStream,
}

/// Room left for the frame wrapper when cutting a message into packets:
/// stream id (≤ 13 bytes), oneof and packet headers (≤ 12), eom/eos (≤ 4).
const FRAME_OVERHEAD: usize = 40;

fn chunk_size(limits: &Limits) -> usize {
    limits.max_packet.saturating_sub(FRAME_OVERHEAD).max(1)
}

/// Splits `msg` into `(chunk, eom)` pieces; an empty message is one empty
/// chunk with `eom`.
fn chunks(msg: &[u8], size: usize) -> impl Iterator<Item = (&[u8], bool)> {
    let n = msg.len().div_ceil(size).max(1);
    (0..n).map(move |i| {
        let start = i * size;
        let end = (start + size).min(msg.len());
        (&msg[start..end], i + 1 == n)
    })
}

fn to_pb_metadata(md: &[(String, String)]) -> Option<pb::Metadata> {
    if md.is_empty() {
        return None;
    }
    let mut map: HashMap<String, pb::Strings> = HashMap::new();
    for (k, v) in md {
        map.entry(k.to_ascii_lowercase()).or_default().values.push(v.clone());
    }
    Some(pb::Metadata { md: map })
}

fn from_pb_metadata(md: Option<pb::Metadata>) -> Metadata {
    let mut out: Metadata = Vec::new();
    if let Some(md) = md {
        for (k, vs) in md.md {
            let k = k.to_ascii_lowercase();
            for v in vs.values {
                out.push((k.clone(), v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Appends packets to a buffer until `eom`.
#[derive(Debug, Default)]
struct Reassembly {
    buf: BytesMut,
}

enum Assembled {
    Partial,
    Complete(Bytes),
    TooLarge,
}

impl Reassembly {
    fn push(&mut self, data: &[u8], eom: bool, max: usize) -> Assembled {
        if self.buf.len() + data.len() > max {
            self.buf = BytesMut::new();
            return Assembled::TooLarge;
        }
        self.buf.extend_from_slice(data);
        if eom { Assembled::Complete(std::mem::take(&mut self.buf).freeze()) } else { Assembled::Partial }
    }
}

/// Outbound frames per stream, sent round-robin across streams.
#[derive(Debug, Default)]
struct Outbox {
    queues: HashMap<u64, (VecDeque<Bytes>, usize)>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Outbox {
    fn push(&mut self, stream: u64, frame: Bytes) {
        self.bytes += frame.len();
        let (q, n) = self.queues.entry(stream).or_default();
        if q.is_empty() {
            self.order.push_back(stream);
        }
        *n += frame.len();
        q.push_back(frame);
    }

    fn pop(&mut self) -> Option<(u64, Bytes)> {
        while let Some(stream) = self.order.pop_front() {
            let Some((q, n)) = self.queues.get_mut(&stream) else { continue };
            let Some(frame) = q.pop_front() else {
                self.queues.remove(&stream);
                continue;
            };
            *n -= frame.len();
            if q.is_empty() {
                self.queues.remove(&stream);
            } else {
                self.order.push_back(stream);
            }
            self.bytes -= frame.len();
            return Some((stream, frame));
        }
        None
    }

    fn queued(&self, stream: u64) -> usize {
        self.queues.get(&stream).map_or(0, |(_, n)| *n)
    }

    /// Drops what a stream still had queued (after a reset).
    fn discard(&mut self, stream: u64) {
        if let Some((_, n)) = self.queues.remove(&stream) {
            self.bytes -= n;
        }
    }
}

// ---------------------------------------------------------------- server side

/// What the server side learns from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A new call on `stream`.
    Call {
        /// Stream id.
        stream: u64,
        /// Full method path, `/package.Service/Method`.
        method: String,
        /// Request metadata.
        metadata: Metadata,
        /// Deadline relative to now (Go clients only).
        timeout: Option<Duration>,
    },
    /// One complete request message.
    Message {
        /// Stream id.
        stream: u64,
        /// The serialized message.
        message: Bytes,
    },
    /// The client will send no more messages.
    HalfClose {
        /// Stream id.
        stream: u64,
    },
    /// The call is over from the client's side (rst_stream) or failed in the
    /// framing (its trailers are already queued): stop the handler.
    Cancel {
        /// Stream id.
        stream: u64,
    },
}

#[derive(Debug, Default)]
struct ServerStream {
    reassembly: Reassembly,
    headers_sent: bool,
    recv_closed: bool,
    buffered: usize,
    /// When its partial message last grew (with [`ServerConn::handle_incoming_at`]).
    progress: Option<Instant>,
}

/// The server (answerer) side of one data channel.
#[derive(Debug)]
pub struct ServerConn {
    limits: Limits,
    streams: HashMap<u64, ServerStream>,
    events: VecDeque<ServerEvent>,
    out: Outbox,
    /// Partial messages dropped over a budget, and reset as stalled.
    partials_dropped: u64,
    partials_stalled: u64,
}

impl ServerConn {
    /// A connection with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            streams: HashMap::new(),
            events: VecDeque::new(),
            out: Outbox::default(),
            partials_dropped: 0,
            partials_stalled: 0,
        }
    }

    /// Number of open streams.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Ids of the open streams.
    pub fn stream_ids(&self) -> Vec<u64> {
        self.streams.keys().copied().collect()
    }

    /// Feeds one received data-channel message.
    pub fn handle_incoming(&mut self, packet: &[u8]) -> Result<(), FrameError> {
        self.incoming(packet, None)
    }

    /// [`Self::handle_incoming`] at `now`, which [`Self::reset_stalled`]
    /// measures partial messages' progress against.
    pub fn handle_incoming_at(&mut self, packet: &[u8], now: Instant) -> Result<(), FrameError> {
        self.incoming(packet, Some(now))
    }

    /// `(dropped over a budget, reset as stalled)` partial messages since
    /// the start.
    pub fn partials_failed(&self) -> (u64, u64) {
        (self.partials_dropped, self.partials_stalled)
    }

    /// Bytes of partially received request messages held now.
    pub fn partial_bytes(&self) -> usize {
        self.streams.values().map(|s| s.reassembly.buf.len()).sum()
    }

    /// The stream with the largest partial message and its size.
    pub fn largest_partial(&self) -> Option<(u64, usize)> {
        self.streams.iter().map(|(id, s)| (*id, s.reassembly.buf.len())).filter(|(_, n)| *n > 0).max_by_key(|(_, n)| *n)
    }

    /// Fails the stream with the largest partial message with
    /// RESOURCE_EXHAUSTED and `why`; the bytes it held.
    pub fn drop_largest_partial(&mut self, why: &str) -> Option<usize> {
        let (id, n) = self.largest_partial()?;
        self.partials_dropped += 1;
        self.fail(
            id,
            Code::ResourceExhausted,
            &format!("{why}; this stream's partial message ({n} bytes) was dropped"),
        );
        Some(n)
    }

    /// Fails (DEADLINE_EXCEEDED) every stream whose partial message has had
    /// no new packet since `now - limits.partial_stall`; how many. Only
    /// messages fed with [`Self::handle_incoming_at`] are timed.
    pub fn reset_stalled(&mut self, now: Instant) -> usize {
        let stall = self.limits.partial_stall;
        let stalled: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.reassembly.buf.is_empty() && s.progress.is_some_and(|p| now >= p + stall))
            .map(|(id, _)| *id)
            .collect();
        self.partials_stalled += stalled.len() as u64;
        for id in &stalled {
            let text =
                format!("request message made no progress for {stall:?} in the middle of a message; stream reset");
            self.fail(*id, Code::DeadlineExceeded, &text);
        }
        stalled.len()
    }

    /// When [`Self::reset_stalled`] next has something to do (`None`: no
    /// timed partial message).
    pub fn next_stall(&self) -> Option<Instant> {
        let stall = self.limits.partial_stall;
        self.streams
            .values()
            .filter(|s| !s.reassembly.buf.is_empty())
            .filter_map(|s| s.progress)
            .min()
            .map(|p| p + stall)
    }

    fn incoming(&mut self, packet: &[u8], now: Option<Instant>) -> Result<(), FrameError> {
        if packet.len() > self.limits.max_inbound_packet {
            return Err(FrameError::TooLarge(packet.len()));
        }
        let req = pb::Request::decode(packet).map_err(|e| FrameError::Decode(e.to_string()))?;
        let id = req.stream.ok_or(FrameError::NoStream)?.id;
        match req.r#type {
            None => Ok(()),
            Some(pb::request::Type::Headers(h)) => {
                self.on_headers(id, h);
                Ok(())
            }
            Some(pb::request::Type::Message(m)) => {
                self.on_message(id, m, now);
                Ok(())
            }
            Some(pb::request::Type::RstStream(_)) => {
                if self.streams.contains_key(&id) {
                    // The client is gone from this call: answer CANCELLED
                    // (it may ignore it) and stop the handler.
                    self.events.push_back(ServerEvent::Cancel { stream: id });
                    self.out.discard(id);
                    self.send_trailers(id, Code::Cancelled, "request cancelled", &[]);
                }
                Ok(())
            }
        }
    }

    fn on_headers(&mut self, id: u64, h: pb::RequestHeaders) {
        if self.streams.contains_key(&id) {
            self.fail(id, Code::InvalidArgument, "headers already received");
            return;
        }
        if self.streams.len() >= self.limits.max_streams {
            // Answer on a transient stream entry so headers precede trailers.
            self.streams.insert(id, ServerStream::default());
            self.send_trailers(id, Code::ResourceExhausted, "too many concurrent streams on this connection", &[]);
            return;
        }
        let timeout = h.timeout.and_then(|d| {
            let d = Duration::try_from(d).unwrap_or(Duration::ZERO);
            // Zero means no deadline (Go sends zero when its context has none).
            (!d.is_zero()).then_some(d)
        });
        self.streams.insert(id, ServerStream::default());
        self.events.push_back(ServerEvent::Call {
            stream: id,
            method: h.method,
            metadata: from_pb_metadata(h.metadata),
            timeout,
        });
    }

    fn on_message(&mut self, id: u64, m: pb::RequestMessage, now: Option<Instant>) {
        let max_message = self.limits.max_message;
        let max_buffer = self.limits.max_stream_buffer;
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.recv_closed {
            return;
        }
        if m.has_message {
            let Some(packet) = m.packet_message else {
                self.fail(id, Code::InvalidArgument, "message frame without a packet");
                return;
            };
            match stream.reassembly.push(&packet.data, packet.eom, max_message) {
                Assembled::Partial => {
                    if now.is_some() {
                        stream.progress = now;
                    }
                    let max = self.limits.max_partial_bytes;
                    while self.partial_bytes() > max {
                        let why = format!("partially received messages on this connection exceed {max} bytes");
                        if self.drop_largest_partial(&why).is_none() {
                            break;
                        }
                    }
                    return;
                }
                Assembled::TooLarge => {
                    let text = format!("request message exceeds the limit of {max_message} bytes");
                    self.fail(id, Code::ResourceExhausted, &text);
                    return;
                }
                Assembled::Complete(message) => {
                    stream.buffered += message.len();
                    if stream.buffered > max_buffer {
                        self.fail(
                            id,
                            Code::ResourceExhausted,
                            "stream receive buffer exhausted; the handler is too slow",
                        );
                        return;
                    }
                    self.events.push_back(ServerEvent::Message { stream: id, message });
                }
            }
        }
        if m.eos
            && let Some(stream) = self.streams.get_mut(&id)
        {
            stream.recv_closed = true;
            self.events.push_back(ServerEvent::HalfClose { stream: id });
        }
    }

    /// Fails a stream from the framing's side: the handler is cancelled and
    /// the client gets `code`.
    fn fail(&mut self, id: u64, code: Code, message: &str) {
        self.events.push_back(ServerEvent::Cancel { stream: id });
        self.out.discard(id);
        self.send_trailers(id, code, message, &[]);
    }

    /// The consumer of `stream` took `bytes` of received messages.
    pub fn release(&mut self, stream: u64, bytes: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.buffered = s.buffered.saturating_sub(bytes);
        }
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn push(&mut self, id: u64, r#type: pb::response::Type) {
        let frame = pb::Response { stream: Some(pb::Stream { id }), r#type: Some(r#type) };
        self.out.push(id, Bytes::from(frame.encode_to_vec()));
    }

    /// Sends response headers (only the first call per stream has effect).
    pub fn send_headers(&mut self, stream: u64, metadata: &[(String, String)]) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        if s.headers_sent {
            return;
        }
        s.headers_sent = true;
        self.push(stream, pb::response::Type::Headers(pb::ResponseHeaders { metadata: to_pb_metadata(metadata) }));
    }

    /// Sends one response message (headers first if not sent yet). Messages
    /// over the limit fail the stream with RESOURCE_EXHAUSTED instead.
    pub fn send_message(&mut self, stream: u64, message: &[u8]) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        if message.len() > self.limits.max_message {
            let text = format!(
                "response message of {} bytes exceeds the limit of {} bytes",
                message.len(),
                self.limits.max_message
            );
            self.fail(stream, Code::ResourceExhausted, &text);
            return;
        }
        self.send_headers(stream, &[]);
        let size = chunk_size(&self.limits);
        for (data, eom) in chunks(message, size) {
            let packet = pb::PacketMessage { data: data.to_vec(), eom };
            self.push(stream, pb::response::Type::Message(pb::ResponseMessage { packet_message: Some(packet) }));
        }
    }

    /// Ends a stream with a status (headers first if not sent yet) and
    /// forgets it.
    pub fn send_trailers(&mut self, stream: u64, code: Code, message: &str, metadata: &[(String, String)]) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        self.send_headers(stream, &[]);
        self.streams.remove(&stream);
        let status = (code != Code::Ok || !message.is_empty()).then(|| RpcStatus {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        });
        self.push(
            stream,
            pb::response::Type::Trailers(pb::ResponseTrailers { status, metadata: to_pb_metadata(metadata) }),
        );
    }

    /// True while the stream is open (trailers not yet queued).
    pub fn is_open(&self, stream: u64) -> bool {
        self.streams.contains_key(&stream)
    }

    /// The next data-channel message to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop().map(|(_, b)| b)
    }

    /// The next data-channel message to send, with the stream it belongs to.
    pub fn poll_transmit_stream(&mut self) -> Option<(u64, Bytes)> {
        self.out.pop()
    }

    /// Bytes queued for sending on `stream`.
    pub fn queued(&self, stream: u64) -> usize {
        self.out.queued(stream)
    }

    /// Bytes queued for sending in total.
    pub fn queued_total(&self) -> usize {
        self.out.bytes
    }
}

// ---------------------------------------------------------------- client side

/// What the client side learns from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Response headers.
    Headers {
        /// Stream id.
        stream: u64,
        /// Header metadata.
        metadata: Metadata,
    },
    /// One complete response message.
    Message {
        /// Stream id.
        stream: u64,
        /// The serialized message.
        message: Bytes,
    },
    /// The call ended; the stream is forgotten.
    Trailers {
        /// Stream id.
        stream: u64,
        /// Status code.
        code: Code,
        /// Status message.
        message: String,
        /// Trailer metadata.
        metadata: Metadata,
    },
}

#[derive(Debug, Default)]
struct ClientStream {
    reassembly: Reassembly,
    headers_received: bool,
    send_closed: bool,
    buffered: usize,
}

/// The client (caller) side of one data channel.
#[derive(Debug)]
pub struct ClientConn {
    limits: Limits,
    next_id: u64,
    streams: HashMap<u64, ClientStream>,
    events: VecDeque<ClientEvent>,
    out: Outbox,
}

impl ClientConn {
    /// A connection with these limits; stream ids start at 0.
    pub fn new(limits: Limits) -> Self {
        Self { limits, next_id: 0, streams: HashMap::new(), events: VecDeque::new(), out: Outbox::default() }
    }

    /// Number of open streams.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn push(&mut self, id: u64, r#type: pb::request::Type) {
        let frame = pb::Request { stream: Some(pb::Stream { id }), r#type: Some(r#type) };
        self.out.push(id, Bytes::from(frame.encode_to_vec()));
    }

    /// Starts a call; RESOURCE_EXHAUSTED when too many streams are open.
    pub fn start_call(
        &mut self,
        method: &str,
        metadata: &[(String, String)],
        timeout: Option<Duration>,
    ) -> Result<u64, Status> {
        if self.streams.len() >= self.limits.max_streams {
            return Err(Status::new(Code::ResourceExhausted, "too many concurrent streams on this connection"));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(id, ClientStream::default());
        let timeout = timeout.and_then(|t| prost_types::Duration::try_from(t).ok());
        self.push(
            id,
            pb::request::Type::Headers(pb::RequestHeaders {
                method: method.to_owned(),
                metadata: to_pb_metadata(metadata),
                timeout,
            }),
        );
        Ok(id)
    }

    /// Sends one request message; with `eos` it is also the last one (every
    /// packet then carries eos, as the Go client does for unary calls).
    pub fn send_message(&mut self, stream: u64, message: &[u8], eos: bool) -> Result<(), Status> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Err(Status::new(Code::FailedPrecondition, "stream is closed"));
        };
        if s.send_closed {
            return Err(Status::new(Code::FailedPrecondition, "stream already half-closed"));
        }
        if message.len() > self.limits.max_message {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "request message of {} bytes exceeds the limit of {} bytes",
                    message.len(),
                    self.limits.max_message
                ),
            ));
        }
        s.send_closed = eos;
        let size = chunk_size(&self.limits);
        for (data, eom) in chunks(message, size) {
            let packet = pb::PacketMessage { data: data.to_vec(), eom };
            self.push(
                stream,
                pb::request::Type::Message(pb::RequestMessage { has_message: true, packet_message: Some(packet), eos }),
            );
        }
        Ok(())
    }

    /// Ends the client's sending side.
    pub fn half_close(&mut self, stream: u64) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        if s.send_closed {
            return;
        }
        s.send_closed = true;
        let packet = pb::PacketMessage { data: Vec::new(), eom: true };
        self.push(
            stream,
            pb::request::Type::Message(pb::RequestMessage {
                has_message: false,
                packet_message: Some(packet),
                eos: true,
            }),
        );
    }

    /// Cancels a call: tells the server and forgets the stream.
    pub fn reset(&mut self, stream: u64) {
        if self.streams.remove(&stream).is_some() {
            self.out.discard(stream);
            self.push(stream, pb::request::Type::RstStream(true));
        }
    }

    /// The consumer of `stream` took `bytes` of received messages.
    pub fn release(&mut self, stream: u64, bytes: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.buffered = s.buffered.saturating_sub(bytes);
        }
    }

    fn fail(&mut self, id: u64, code: Code, message: String) {
        if self.streams.contains_key(&id) {
            self.reset(id);
            self.events.push_back(ClientEvent::Trailers { stream: id, code, message, metadata: Vec::new() });
        }
    }

    /// Feeds one received data-channel message.
    pub fn handle_incoming(&mut self, packet: &[u8]) -> Result<(), FrameError> {
        if packet.len() > self.limits.max_inbound_packet {
            return Err(FrameError::TooLarge(packet.len()));
        }
        let resp = pb::Response::decode(packet).map_err(|e| FrameError::Decode(e.to_string()))?;
        let id = resp.stream.ok_or(FrameError::NoStream)?.id;
        let max_message = self.limits.max_message;
        let max_buffer = self.limits.max_stream_buffer;
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(()) };
        match resp.r#type {
            None => {}
            Some(pb::response::Type::Headers(h)) if !stream.headers_received => {
                stream.headers_received = true;
                self.events.push_back(ClientEvent::Headers { stream: id, metadata: from_pb_metadata(h.metadata) });
            }
            Some(pb::response::Type::Headers(_)) => {}
            Some(pb::response::Type::Message(m)) => {
                if !stream.headers_received {
                    self.fail(id, Code::Internal, "protocol error: response message before headers".into());
                    return Ok(());
                }
                let Some(packet) = m.packet_message else { return Ok(()) };
                match stream.reassembly.push(&packet.data, packet.eom, max_message) {
                    Assembled::Partial => {}
                    Assembled::TooLarge => {
                        self.fail(
                            id,
                            Code::ResourceExhausted,
                            format!("response message exceeds the limit of {max_message} bytes"),
                        );
                    }
                    Assembled::Complete(message) => {
                        stream.buffered += message.len();
                        if stream.buffered > max_buffer {
                            self.fail(id, Code::ResourceExhausted, "stream receive buffer exhausted".into());
                        } else {
                            self.events.push_back(ClientEvent::Message { stream: id, message });
                        }
                    }
                }
            }
            Some(pb::response::Type::Trailers(t)) => {
                self.streams.remove(&id);
                self.out.discard(id);
                let (code, message) = match t.status {
                    None => (Code::Ok, String::new()),
                    Some(s) => (Code::from_i32(s.code), s.message),
                };
                self.events.push_back(ClientEvent::Trailers {
                    stream: id,
                    code,
                    message,
                    metadata: from_pb_metadata(t.metadata),
                });
            }
        }
        Ok(())
    }

    /// Fails every open stream (the channel died) with `code`.
    pub fn close_all(&mut self, code: Code, message: &str) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.streams.remove(&id);
            self.out.discard(id);
            self.events.push_back(ClientEvent::Trailers {
                stream: id,
                code,
                message: message.to_owned(),
                metadata: Vec::new(),
            });
        }
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next data-channel message to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop().map(|(_, b)| b)
    }

    /// The next data-channel message to send, with the stream it belongs to.
    pub fn poll_transmit_stream(&mut self) -> Option<(u64, Bytes)> {
        self.out.pop()
    }

    /// Bytes queued for sending on `stream`.
    pub fn queued(&self, stream: u64) -> usize {
        self.out.queued(stream)
    }

    /// Bytes queued for sending in total.
    pub fn queued_total(&self) -> usize {
        self.out.bytes
    }

    /// True while the stream is open.
    pub fn is_open(&self, stream: u64) -> bool {
        self.streams.contains_key(&stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: Option<u64>, t: pb::request::Type) -> Vec<u8> {
        pb::Request { stream: id.map(|id| pb::Stream { id }), r#type: Some(t) }.encode_to_vec()
    }

    fn headers(method: &str) -> pb::request::Type {
        pb::request::Type::Headers(pb::RequestHeaders { method: method.into(), metadata: None, timeout: None })
    }

    fn msg(data: &[u8], eom: bool, eos: bool) -> pb::request::Type {
        pb::request::Type::Message(pb::RequestMessage {
            has_message: true,
            packet_message: Some(pb::PacketMessage { data: data.to_vec(), eom }),
            eos,
        })
    }

    fn drain(server: &mut ServerConn) -> Vec<ServerEvent> {
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    fn responses(server: &mut ServerConn) -> Vec<pb::Response> {
        std::iter::from_fn(|| server.poll_transmit()).map(|b| pb::Response::decode(b).unwrap()).collect()
    }

    /// The status code of the trailers `responses` hold for `stream`.
    fn trailer_code(responses: &[pb::Response], stream: u64) -> Option<(i32, String)> {
        responses.iter().filter(|r| r.stream.as_ref().is_some_and(|s| s.id == stream)).find_map(|r| match &r.r#type {
            Some(pb::response::Type::Trailers(t)) => t.status.as_ref().map(|s| (s.code, s.message.clone())),
            _ => None,
        })
    }

    #[test]
    fn partial_messages_over_the_connection_budget_drop_the_largest() {
        let limits = Limits::default().with_max_partial_bytes(1000);
        let mut server = ServerConn::new(limits);
        for id in 1..=3 {
            server.handle_incoming(&req(Some(id), headers("/a.B/C"))).unwrap();
        }
        server.handle_incoming(&req(Some(1), msg(&[1; 300], false, false))).unwrap();
        server.handle_incoming(&req(Some(2), msg(&[2; 600], false, false))).unwrap();
        assert_eq!(server.partial_bytes(), 900);
        assert!(responses(&mut server).is_empty());
        // Stream 3's first 200 bytes take the connection over 1000: stream 2 (600) goes.
        server.handle_incoming(&req(Some(3), msg(&[3; 200], false, false))).unwrap();
        assert_eq!(server.partial_bytes(), 500);
        let out = responses(&mut server);
        let (code, text) = trailer_code(&out, 2).expect("stream 2 failed");
        assert_eq!(code, Code::ResourceExhausted as i32);
        assert!(text.contains("exceed 1000 bytes") && text.contains("600 bytes"), "{text}");
        assert!(trailer_code(&out, 1).is_none() && trailer_code(&out, 3).is_none());
        assert!(drain(&mut server).iter().any(|e| matches!(e, ServerEvent::Cancel { stream: 2 })));
        // The others complete.
        server.handle_incoming(&req(Some(1), msg(&[1; 10], true, true))).unwrap();
        let events = drain(&mut server);
        assert!(
            events.iter().any(|e| matches!(e, ServerEvent::Message { stream: 1, message } if message.len() == 310))
        );
        assert_eq!(server.partial_bytes(), 200);
        // Late packets of the dropped stream are ignored.
        server.handle_incoming(&req(Some(2), msg(&[2; 10], false, false))).unwrap();
        assert_eq!(server.partial_bytes(), 200);
    }

    #[test]
    fn a_partial_message_without_progress_is_reset() {
        let limits = Limits::default().with_partial_stall(Duration::from_secs(30));
        let mut server = ServerConn::new(limits);
        let t0 = Instant::now();
        for id in 1..=2 {
            server.handle_incoming_at(&req(Some(id), headers("/a.B/C")), t0).unwrap();
        }
        server.handle_incoming_at(&req(Some(1), msg(&[1; 100], false, false)), t0).unwrap();
        server.handle_incoming_at(&req(Some(2), msg(&[2; 100], false, false)), t0).unwrap();
        assert_eq!(server.next_stall(), Some(t0 + Duration::from_secs(30)));
        // Stream 2 makes progress at 20 s; stream 1 does not.
        let t20 = t0 + Duration::from_secs(20);
        server.handle_incoming_at(&req(Some(2), msg(&[2; 100], false, false)), t20).unwrap();
        assert_eq!(server.reset_stalled(t0 + Duration::from_secs(29)), 0);
        assert_eq!(server.reset_stalled(t0 + Duration::from_secs(30)), 1);
        let out = responses(&mut server);
        let (code, text) = trailer_code(&out, 1).expect("stream 1 reset");
        assert_eq!(code, Code::DeadlineExceeded as i32);
        assert!(text.contains("no progress for 30s"), "{text}");
        assert!(trailer_code(&out, 2).is_none());
        assert_eq!(server.next_stall(), Some(t20 + Duration::from_secs(30)));
        // A stream between messages (nothing partial) is never stalled.
        server.handle_incoming_at(&req(Some(2), msg(&[2; 1], true, false)), t20).unwrap();
        assert_eq!(server.next_stall(), None);
        assert_eq!(server.reset_stalled(t0 + Duration::from_secs(3600)), 0);
        assert!(server.is_open(2));
    }

    #[test]
    fn stream_id_zero_is_an_empty_submessage_and_accepted() {
        let bytes = req(Some(0), headers("/a.B/C"));
        assert_eq!(&bytes[..2], &[0x0a, 0x00]);
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&bytes).unwrap();
        assert!(matches!(&drain(&mut s)[..], [ServerEvent::Call { stream: 0, .. }]));
        assert_eq!(s.handle_incoming(&req(None, headers("/a.B/C"))), Err(FrameError::NoStream));
        assert!(matches!(s.handle_incoming(b"\xff\xff\xff"), Err(FrameError::Decode(_))));
    }

    #[test]
    fn all_three_unary_dialects() {
        // Go: eos on every packet of the message.
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&req(Some(1), headers("/a.B/C"))).unwrap();
        s.handle_incoming(&req(Some(1), msg(b"ab", false, true))).unwrap();
        s.handle_incoming(&req(Some(1), msg(b"cd", true, true))).unwrap();
        let ev = drain(&mut s);
        assert_eq!(ev[1], ServerEvent::Message { stream: 1, message: Bytes::from_static(b"abcd") });
        assert_eq!(ev[2], ServerEvent::HalfClose { stream: 1 });
        assert_eq!(ev.len(), 3);

        // TypeScript: no eos ever; the message alone is enough.
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&req(Some(0), headers("/a.B/C"))).unwrap();
        s.handle_incoming(&req(Some(0), msg(b"x", true, false))).unwrap();
        let ev = drain(&mut s);
        assert_eq!(ev[1], ServerEvent::Message { stream: 0, message: Bytes::from_static(b"x") });
        assert_eq!(ev.len(), 2);

        // rust-utils: message, then a separate eos frame without a packet.
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&req(Some(0), headers("/a.B/C"))).unwrap();
        s.handle_incoming(&req(Some(0), msg(b"", true, false))).unwrap();
        let eos =
            pb::request::Type::Message(pb::RequestMessage { has_message: false, packet_message: None, eos: true });
        s.handle_incoming(&req(Some(0), eos)).unwrap();
        let ev = drain(&mut s);
        assert_eq!(ev[1], ServerEvent::Message { stream: 0, message: Bytes::new() });
        assert_eq!(ev[2], ServerEvent::HalfClose { stream: 0 });
        // Messages after eos are ignored.
        s.handle_incoming(&req(Some(0), msg(b"late", true, false))).unwrap();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn headers_come_before_messages_and_trailers_and_ok_omits_status() {
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&req(Some(3), headers("/a.B/C"))).unwrap();
        s.send_message(3, b"reply");
        s.send_trailers(3, Code::Ok, "", &[("x-a".into(), "1".into())]);
        let r = responses(&mut s);
        assert!(matches!(r[0].r#type, Some(pb::response::Type::Headers(_))));
        assert!(matches!(r[1].r#type, Some(pb::response::Type::Message(_))));
        let Some(pb::response::Type::Trailers(t)) = &r[2].r#type else { panic!() };
        assert!(t.status.is_none());
        assert_eq!(t.metadata.as_ref().unwrap().md["x-a"].values, vec!["1".to_string()]);
        assert!(!s.is_open(3));
        // Errors keep code and message; trailers-only still gets headers first.
        s.handle_incoming(&req(Some(4), headers("/a.B/C"))).unwrap();
        s.send_trailers(4, Code::NotFound, "no such motor", &[]);
        let r = responses(&mut s);
        assert!(matches!(r[0].r#type, Some(pb::response::Type::Headers(_))));
        let Some(pb::response::Type::Trailers(t)) = &r[1].r#type else { panic!() };
        let st = t.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (Code::NotFound as i32, "no such motor"));
    }

    #[test]
    fn large_messages_are_cut_into_small_packets_and_reassembled() {
        let limits = Limits::default();
        let mut c = ClientConn::new(limits);
        let mut s = ServerConn::new(limits);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let id = c.start_call("/a.B/C", &[("viam-sid".into(), "abc".into())], Some(Duration::from_secs(3))).unwrap();
        c.send_message(id, &big, false).unwrap();
        c.half_close(id);
        while let Some(p) = c.poll_transmit() {
            assert!(p.len() <= limits.max_packet, "packet of {} bytes", p.len());
            s.handle_incoming(&p).unwrap();
        }
        let ev = drain(&mut s);
        let ServerEvent::Call { metadata, timeout, .. } = &ev[0] else { panic!() };
        assert_eq!(metadata, &vec![("viam-sid".to_string(), "abc".to_string())]);
        assert_eq!(*timeout, Some(Duration::from_secs(3)));
        assert_eq!(ev[1], ServerEvent::Message { stream: id, message: Bytes::from(big.clone()) });
        assert_eq!(ev[2], ServerEvent::HalfClose { stream: id });
        s.send_message(id, &big);
        s.send_trailers(id, Code::Ok, "", &[]);
        while let Some(p) = s.poll_transmit() {
            assert!(p.len() <= limits.max_packet);
            c.handle_incoming(&p).unwrap();
        }
        let ev: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(ev[1], ClientEvent::Message { stream: id, message: Bytes::from(big) });
        assert!(matches!(ev[2], ClientEvent::Trailers { code: Code::Ok, .. }));
        assert_eq!(c.open_streams(), 0);
    }

    #[test]
    fn oversized_message_fails_the_stream_with_resource_exhausted() {
        let limits = Limits { max_message: 1000, ..Limits::default() };
        let mut s = ServerConn::new(limits);
        s.handle_incoming(&req(Some(1), headers("/a.B/C"))).unwrap();
        s.handle_incoming(&req(Some(2), headers("/a.B/C"))).unwrap();
        for _ in 0..3 {
            s.handle_incoming(&req(Some(1), msg(&[0u8; 400], false, false))).unwrap();
        }
        let ev = drain(&mut s);
        assert!(ev.contains(&ServerEvent::Cancel { stream: 1 }));
        let r = responses(&mut s);
        let Some(pb::response::Type::Trailers(t)) = &r.last().unwrap().r#type else { panic!() };
        assert_eq!(t.status.as_ref().unwrap().code, Code::ResourceExhausted as i32);
        // The other stream is unaffected.
        s.handle_incoming(&req(Some(2), msg(b"ok", true, false))).unwrap();
        assert_eq!(drain(&mut s), vec![ServerEvent::Message { stream: 2, message: Bytes::from_static(b"ok") }]);
        // Inbound data-channel messages over the packet limit are refused.
        assert_eq!(
            s.handle_incoming(&vec![0u8; limits.max_inbound_packet + 1]),
            Err(FrameError::TooLarge(limits.max_inbound_packet + 1))
        );
    }

    #[test]
    fn small_replies_are_not_stuck_behind_a_bulk_one() {
        let mut s = ServerConn::new(Limits::default());
        s.handle_incoming(&req(Some(1), headers("/bulk"))).unwrap();
        s.handle_incoming(&req(Some(2), headers("/small"))).unwrap();
        s.send_message(1, &vec![7u8; 1 << 20]);
        s.send_message(2, b"tiny");
        s.send_trailers(2, Code::Ok, "", &[]);
        let order: Vec<u64> = std::iter::from_fn(|| s.poll_transmit())
            .map(|b| pb::Response::decode(b).unwrap().stream.unwrap().id)
            .collect();
        let last_small = order.iter().rposition(|&id| id == 2).unwrap();
        assert!(last_small < 8, "stream 2 finished only after {last_small} packets");
        assert!(order.len() > 60);
    }

    #[test]
    fn cancel_second_headers_and_stream_limits() {
        let mut s = ServerConn::new(Limits { max_streams: 2, ..Limits::default() });
        s.handle_incoming(&req(Some(1), headers("/a"))).unwrap();
        s.handle_incoming(&req(Some(1), headers("/a"))).unwrap();
        let ev = drain(&mut s);
        assert_eq!(ev.last(), Some(&ServerEvent::Cancel { stream: 1 }));
        let r = responses(&mut s);
        let Some(pb::response::Type::Trailers(t)) = &r.last().unwrap().r#type else { panic!() };
        assert_eq!(t.status.as_ref().unwrap().message, "headers already received");

        s.handle_incoming(&req(Some(2), headers("/a"))).unwrap();
        s.handle_incoming(&req(Some(3), headers("/a"))).unwrap();
        s.handle_incoming(&req(Some(4), headers("/a"))).unwrap();
        assert_eq!(s.open_streams(), 2);
        let r = responses(&mut s);
        let last = r.last().unwrap();
        assert_eq!(last.stream.unwrap().id, 4);
        let Some(pb::response::Type::Trailers(t)) = &last.r#type else { panic!() };
        assert_eq!(t.status.as_ref().unwrap().code, Code::ResourceExhausted as i32);

        s.handle_incoming(&req(Some(2), pb::request::Type::RstStream(true))).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![
                ServerEvent::Call { stream: 2, method: "/a".into(), metadata: vec![], timeout: None },
                ServerEvent::Call { stream: 3, method: "/a".into(), metadata: vec![], timeout: None },
                ServerEvent::Cancel { stream: 2 }
            ]
        );
        // Frames for unknown streams are dropped.
        s.handle_incoming(&req(Some(99), msg(b"x", true, true))).unwrap();
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn slow_consumer_fails_only_its_stream() {
        let mut s = ServerConn::new(Limits { max_stream_buffer: 100, ..Limits::default() });
        s.handle_incoming(&req(Some(1), headers("/a"))).unwrap();
        s.handle_incoming(&req(Some(2), headers("/a"))).unwrap();
        drain(&mut s);
        for _ in 0..2 {
            s.handle_incoming(&req(Some(1), msg(&[0; 40], true, false))).unwrap();
        }
        s.release(1, 40);
        s.handle_incoming(&req(Some(1), msg(&[0; 40], true, false))).unwrap();
        assert_eq!(drain(&mut s).len(), 3, "within budget after release");
        s.handle_incoming(&req(Some(1), msg(&[0; 40], true, false))).unwrap();
        assert_eq!(drain(&mut s), vec![ServerEvent::Cancel { stream: 1 }]);
        s.handle_incoming(&req(Some(2), msg(&[0; 40], true, false))).unwrap();
        assert!(matches!(drain(&mut s)[..], [ServerEvent::Message { stream: 2, .. }]));
    }

    #[test]
    fn client_side_protocol_errors_and_channel_death() {
        let mut c = ClientConn::new(Limits { max_streams: 1, ..Limits::default() });
        let id = c.start_call("/a", &[], None).unwrap();
        assert_eq!(c.start_call("/b", &[], None).unwrap_err().code(), Code::ResourceExhausted);
        // A message before headers fails the call.
        let m = pb::Response {
            stream: Some(pb::Stream { id }),
            r#type: Some(pb::response::Type::Message(pb::ResponseMessage {
                packet_message: Some(pb::PacketMessage { data: b"x".to_vec(), eom: true }),
            })),
        };
        c.handle_incoming(&m.encode_to_vec()).unwrap();
        assert!(matches!(c.poll_event(), Some(ClientEvent::Trailers { code: Code::Internal, .. })));
        let id = c.start_call("/a", &[], None).unwrap();
        c.close_all(Code::Unavailable, "data channel closed");
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Trailers {
                stream: id,
                code: Code::Unavailable,
                message: "data channel closed".into(),
                metadata: vec![]
            })
        );
        assert_eq!(c.open_streams(), 0);
    }
}

/// Deterministic random-input tests: the same properties as the cargo-fuzz
/// targets (fuzz/), on the stable toolchain, so every `cargo test` runs them.
#[cfg(test)]
mod random_input {
    use super::*;

    /// xorshift64*: small, deterministic, good enough to mutate frames.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn valid_requests(rng: &mut Rng) -> Vec<Vec<u8>> {
        let id = rng.below(4) as u64;
        let mut c = ClientConn::new(Limits::default());
        c.next_id = id;
        let Ok(s) = c.start_call("/a.B/C", &[("k".into(), "v".into())], Some(Duration::from_millis(5))) else {
            return Vec::new();
        };
        let msg: Vec<u8> = (0..rng.below(40_000)).map(|_| rng.next() as u8).collect();
        let _ = c.send_message(s, &msg, rng.below(2) == 0);
        if rng.below(2) == 0 {
            c.half_close(s);
        }
        if rng.below(8) == 0 {
            c.reset(s);
        }
        std::iter::from_fn(|| c.poll_transmit()).map(|b| b.to_vec()).collect()
    }

    fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
        match rng.below(5) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
            1 => p.truncate(rng.below(p.len() + 1)),
            2 => p.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
            3 => p = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            _ => {}
        }
        p
    }

    #[test]
    fn server_survives_mutated_and_random_frames() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let limits =
            Limits { max_message: 64 * 1024, max_streams: 8, max_stream_buffer: 128 * 1024, ..Limits::default() };
        for _ in 0..300 {
            let mut s = ServerConn::new(limits);
            for _ in 0..rng.below(6) + 1 {
                for p in valid_requests(&mut rng) {
                    let p = mutate(&mut rng, p);
                    let _ = s.handle_incoming(&p);
                    while let Some(ev) = s.poll_event() {
                        match ev {
                            ServerEvent::Message { stream, message } => {
                                s.release(stream, message.len());
                                s.send_message(stream, &message[..message.len().min(1000)]);
                            }
                            ServerEvent::HalfClose { stream } => s.send_trailers(stream, Code::Ok, "", &[]),
                            _ => {}
                        }
                    }
                    while let Some(out) = s.poll_transmit() {
                        assert!(out.len() <= limits.max_packet);
                    }
                }
            }
            assert!(s.open_streams() <= limits.max_streams);
        }
    }

    #[test]
    fn client_gives_every_stream_exactly_one_end() {
        let mut rng = Rng(0xC11E_47F0_0000_0042);
        for _ in 0..300 {
            let mut c = ClientConn::new(Limits { max_message: 8192, ..Limits::default() });
            let ids: Vec<u64> = (0..4).filter_map(|_| c.start_call("/x.Y/Z", &[], None).ok()).collect();
            let mut ended = std::collections::HashSet::new();
            for _ in 0..rng.below(40) {
                let mut s = ServerConn::new(Limits::default());
                let id = ids[rng.below(ids.len())];
                let _ = s.handle_incoming(
                    &pb::Request {
                        stream: Some(pb::Stream { id }),
                        r#type: Some(pb::request::Type::Headers(pb::RequestHeaders::default())),
                    }
                    .encode_to_vec(),
                );
                let body: Vec<u8> = (0..rng.below(20_000)).map(|_| rng.next() as u8).collect();
                s.send_message(id, &body);
                if rng.below(2) == 0 {
                    s.send_trailers(id, Code::from_i32(rng.below(17) as i32), "x", &[]);
                }
                while let Some(p) = s.poll_transmit() {
                    let p = mutate(&mut rng, p.to_vec());
                    let _ = c.handle_incoming(&p);
                }
                while let Some(ev) = c.poll_event() {
                    if let ClientEvent::Trailers { stream, .. } = ev {
                        assert!(ended.insert(stream), "two ends for stream {stream}");
                    }
                }
            }
            c.close_all(Code::Unavailable, "closed");
            while let Some(ev) = c.poll_event() {
                if let ClientEvent::Trailers { stream, .. } = ev {
                    assert!(ended.insert(stream), "two ends for stream {stream}");
                }
            }
            assert_eq!(ended.len(), ids.len());
            assert_eq!(c.open_streams(), 0);
        }
    }
}
