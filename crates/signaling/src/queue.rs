//! The call queue: the seam between the signaling RPC handlers and whatever
//! matches callers with answerers (in memory today, a shared store later).
//!
//! The queue knows nothing about gRPC streams. It moves *offers* from callers
//! to answerers and relays the events of one exchange in both directions:
//!
//! * caller side: [`CallQueue::send_offer`] returns a [`CallerHandle`] (the
//!   uuid plus a stream of [`AnswererEvent`]s); the caller's candidates, done
//!   and error go in with [`CallQueue::send_caller_event`], addressed by
//!   `(host, uuid)` because they arrive on separate `CallUpdate` RPCs;
//! * answerer side: [`CallQueue::register_answerer`] marks the hosts online
//!   for as long as the returned [`AnswererSession`] lives, and
//!   [`AnswererSession::recv_offer`] claims one offer, returned as an
//!   [`AnswererExchange`] (the offer, a stream of [`CallerEvent`]s and an
//!   [`AnswererResponder`]).
//!
//! Delivery rules every implementation must keep: an offer is claimed by
//! exactly one answerer; events of one side reach the other side in order;
//! a terminal event (`Done` or `Error`) ends that side's event stream; an
//! answerer `Error`, or the answerer going away without a terminal event,
//! ends the whole exchange; when the offer is gone (finished or past its
//! deadline) both streams end.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::IceCandidate;

/// What a caller puts into the queue (one `Call` RPC).
#[derive(Clone, Debug, PartialEq)]
pub struct OfferInit {
    /// Target host (the caller's single `rpc-host`).
    pub host: String,
    /// Encoded SDP offer (opaque to the queue).
    pub sdp: String,
    /// The caller will not trickle candidates.
    pub disable_trickle: bool,
    /// Lifetime of the whole exchange, counted from now.
    pub ttl: Duration,
    /// The caller's authenticated entity, when the signaler authenticated it.
    pub caller: Option<String>,
    /// The caller's address as the limits count it
    /// ([`address_key`](crate::address_key)), when known: an in-process
    /// answerer shares its work fairly among addresses with it.
    pub address: Option<String>,
}

/// An offer as stored by the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    /// Identifier of the exchange, echoed by both sides.
    pub uuid: String,
    /// Target host.
    pub host: String,
    /// Encoded SDP offer.
    pub sdp: String,
    /// The caller will not trickle candidates.
    pub disable_trickle: bool,
    /// Wall-clock deadline of the exchange (creation time + ttl).
    pub deadline: SystemTime,
    /// The caller's authenticated entity, when the signaler authenticated it.
    pub caller: Option<String>,
    /// [`OfferInit::address`] (not carried through Redis: `None` for an
    /// offer claimed from a [`RedisQueue`](crate::RedisQueue)).
    pub address: Option<String>,
}

/// An event produced by the answerer, consumed by the caller's `Call` stream.
#[derive(Clone, Debug, PartialEq)]
pub enum AnswererEvent {
    /// The encoded SDP answer (exactly once, first).
    Answer(String),
    /// A trickled ICE candidate of the answerer.
    Candidate(IceCandidate),
    /// The answerer has nothing more to send (terminal).
    Done,
    /// The answerer failed (terminal).
    Error(RpcStatus),
}

/// An event produced by the caller (`CallUpdate`), consumed by the answerer.
#[derive(Clone, Debug, PartialEq)]
pub enum CallerEvent {
    /// A trickled ICE candidate of the caller.
    Candidate(IceCandidate),
    /// The caller has nothing more to send (terminal).
    Done,
    /// The caller failed or went away (terminal).
    Error(RpcStatus),
}

impl CallerEvent {
    /// `true` for `Done` and `Error`.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, CallerEvent::Candidate(_))
    }
}

impl AnswererEvent {
    /// `true` for `Done` and `Error`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, AnswererEvent::Done | AnswererEvent::Error(_))
    }
}

/// Errors of queue operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The uuid is unknown, finished or expired (or belongs to another host).
    #[error("no active offer for {0:?}")]
    NoActiveOffer(String),
    /// Too many events were pushed for one offer.
    #[error("too many updates for offer {0:?}")]
    TooManyUpdates(String),
    /// The backend is unavailable or failed.
    #[error("call queue unavailable: {0}")]
    Unavailable(String),
}

impl From<QueueError> for tonic::Status {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NoActiveOffer(_) => tonic::Status::not_found(e.to_string()),
            QueueError::TooManyUpdates(_) => tonic::Status::resource_exhausted(e.to_string()),
            QueueError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// The caller's view of a queued offer.
pub struct CallerHandle {
    /// The stored offer (uuid, deadline, …).
    pub offer: Offer,
    /// Events from the answerer, in order. Ends after a terminal event, when
    /// the answerer goes away without one, or when the offer expires.
    pub events: BoxStream<'static, AnswererEvent>,
}

impl std::fmt::Debug for CallerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerHandle").field("offer", &self.offer).finish_non_exhaustive()
    }
}

/// The answerer's side of one claimed offer.
pub struct AnswererExchange {
    /// The claimed offer.
    pub offer: Offer,
    /// Events from the caller, in order (including those sent before the
    /// claim). Ends after a terminal event or when the offer is gone.
    pub caller_events: BoxStream<'static, CallerEvent>,
    /// Sends the answerer's events to the caller. Dropping it without a
    /// terminal event tells the caller that the answerer went away.
    pub responder: Box<dyn AnswererResponder>,
}

impl std::fmt::Debug for AnswererExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswererExchange").field("offer", &self.offer).finish_non_exhaustive()
    }
}

/// Sends answerer events of one exchange towards the caller.
#[async_trait]
pub trait AnswererResponder: Send + Sync {
    /// Relays one event. After a terminal event further events fail with
    /// [`QueueError::NoActiveOffer`] or are ignored.
    async fn respond(&self, event: AnswererEvent) -> Result<(), QueueError>;
}

/// One open `Answer` stream, registered for a set of hosts. The hosts count
/// as online while it lives; dropping it unregisters.
#[async_trait]
pub trait AnswererSession: Send {
    /// Waits for an offer for any of the session's hosts and claims it.
    ///
    /// Must be cancel safe: dropping the future before it completes must not
    /// lose an offer.
    async fn recv_offer(&mut self) -> Result<AnswererExchange, QueueError>;
}

/// Matches callers with answerers: the seam for queue backends.
///
/// * caller side: [`send_offer`](CallQueue::send_offer) returns a
///   [`CallerHandle`] (uuid + stream of [`AnswererEvent`]s); candidates, done
///   and error go in with [`send_caller_event`](CallQueue::send_caller_event)
///   by `(host, uuid)`;
/// * answerer side: [`register_answerer`](CallQueue::register_answerer)
///   keeps the hosts online while the [`AnswererSession`] lives;
///   [`AnswererSession::recv_offer`] claims one offer as an
///   [`AnswererExchange`].
///
/// Rules every implementation keeps: an offer is claimed by exactly one
/// answerer; events reach the other side in order; a terminal event ends that
/// side's stream; an answerer error, or the answerer going away without a
/// terminal event, ends the exchange; past the deadline both streams end.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use futures::StreamExt;
/// use tether_signaling::{AnswererEvent, CallQueue, CallerEvent, MemoryQueue, OfferInit};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let queue: Arc<dyn CallQueue> = Arc::new(MemoryQueue::new());
/// let mut session = queue.register_answerer(vec!["robot.local".into()]).await.unwrap();
/// assert!(queue.is_answerer_online("robot.local").await);
///
/// let init = OfferInit { host: "robot.local".into(), sdp: "offer".into(), disable_trickle: false, ttl: Duration::from_secs(10), caller: None, address: None };
/// let mut caller = queue.send_offer(init).await.unwrap();
/// let mut exchange = session.recv_offer().await.unwrap();
/// assert_eq!(exchange.offer.uuid, caller.offer.uuid);
///
/// exchange.responder.respond(AnswererEvent::Answer("answer".into())).await.unwrap();
/// exchange.responder.respond(AnswererEvent::Done).await.unwrap();
/// assert_eq!(caller.events.next().await, Some(AnswererEvent::Answer("answer".into())));
/// assert_eq!(caller.events.next().await, Some(AnswererEvent::Done));
///
/// queue.send_caller_event("robot.local", &caller.offer.uuid, CallerEvent::Done).await.unwrap();
/// assert_eq!(exchange.caller_events.next().await, Some(CallerEvent::Done));
/// # }
/// ```
#[async_trait]
pub trait CallQueue: Send + Sync + 'static {
    /// Queues a caller's offer and returns its uuid and the answerer events.
    async fn send_offer(&self, init: OfferInit) -> Result<CallerHandle, QueueError>;

    /// Relays a caller event to the answerer of offer `uuid` for `host`.
    /// A caller error after the caller's done is ignored.
    async fn send_caller_event(&self, host: &str, uuid: &str, event: CallerEvent) -> Result<(), QueueError>;

    /// Registers an answerer (one `Answer` stream) for `hosts`.
    async fn register_answerer(&self, hosts: Vec<String>) -> Result<Box<dyn AnswererSession>, QueueError>;

    /// Whether some answerer for `host` is registered now or was very
    /// recently (answerers reopen their stream after every call).
    async fn is_answerer_online(&self, host: &str) -> bool;
}

impl std::fmt::Debug for dyn CallQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn CallQueue")
    }
}
