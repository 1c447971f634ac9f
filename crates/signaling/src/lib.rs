//! The WebRTC signaling service of tether (`proto.rpc.webrtc.v1.SignalingService`).
//!
//! Callers (browsers, SDKs) and answerers (machines) never talk to each other
//! before WebRTC is up; this service relays the SDP offer/answer and the
//! trickled ICE candidates between them:
//!
//! * [`SignalingServer`] implements the four RPCs (`Call`, `CallUpdate`,
//!   `Answer`, `OptionalWebRTCConfig`) with the wire behaviour browsers and
//!   the Viam SDKs rely on (stream ends right after the answerer's done,
//!   heartbeats with empty uuid, OK for late `CallUpdate`s, …);
//! * [`CallQueue`] is the seam that matches callers with answerers, with
//!   [`MemoryQueue`] as the in-process implementation (the embedded default)
//!   and `RedisQueue` (cargo feature `redis`) for many signaling instances
//!   sharing one Redis;
//! * [`HostAllowList`] restricts a server to some hosts (a machine's embedded
//!   signaler), [`Authorizer`] is the hook for per-entity host grants
//!   ([`KeyGrants`] grants API keys hosts to call and to answer for), and
//!   [`CallLimits`] caps pending offers per host and exchanges per caller
//!   address (on by default) and can rate-limit callers; offers, answers and
//!   candidates larger than [`MAX_SDP_SIZE`] / [`MAX_CANDIDATE_SIZE`] are
//!   refused before they are queued;
//! * [`core`] is the sans-IO decision logic the server runs (request
//!   validation, limits, stage ordering, relaying), callable without a
//!   runtime;
//! * [`metrics`]: calls, exchange outcomes, refusals, pending offers
//!   (`SignalingServer::register_metrics`);
//! * [`TurnRestConfig`] hands out TURN servers with shared-secret credentials;
//! * the two client roles of the protocol: [`answerer`] (a machine taking
//!   offers, from an in-process queue or over `Answer` streams) and
//!   [`caller`] (a client dialing a machine).
//!
//! ```no_run
//! use std::sync::Arc;
//! use tether_signaling::{HostAllowList, MemoryQueue, SignalingServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hosts = HostAllowList::new(["robot-main.abc.viam.cloud"]);
//! let signaling = SignalingServer::builder(Arc::new(MemoryQueue::new())).allowed_hosts(hosts).build();
//! tonic::transport::Server::builder().add_service(signaling.into_service()).serve("0.0.0.0:8080".parse()?).await?;
//! # Ok(()) }
//! ```

pub mod answerer;
mod auth;
pub mod caller;
pub mod core;
mod grants;
mod host;
mod ice;
mod limits;
mod memory;
pub mod metrics;
mod queue;
#[cfg(feature = "redis")]
pub mod redis;
mod server;
pub mod slots;

#[cfg(feature = "redis")]
pub use self::redis::{
    DEFAULT_KEY_PREFIX, DEFAULT_POLL_INTERVAL, DEFAULT_PRESENCE_TTL, DEFAULT_RECORD_SLACK, DEFAULT_REFRESH_INTERVAL,
    RedisQueue, RedisQueueError, RedisQueueOptions, default_instance_id,
};
pub use auth::{Authorizer, Role};
pub use grants::{Grant, KeyGrants};
pub use host::{HOST_NOT_PRECONFIGURED, HostAllowList, MAX_HOSTS, RPC_HOST};
pub use ice::{DEFAULT_TURN_TTL, TurnCredentials, TurnRestConfig, ice_server, turn_rest_credentials, with_tcp_copies};
pub use limits::{
    Admitted, CallLimits, Caller, DEFAULT_MAX_PENDING_PER_ADDRESS, DEFAULT_MAX_PENDING_PER_HOST, LimitStats,
    MAX_CANDIDATE_SIZE, MAX_SDP_SIZE, MAX_STATUS_DETAILS, MAX_STATUS_MESSAGE, Slot, address_key,
};
pub use memory::{DEFAULT_ONLINE_GRACE, MAX_EVENTS_PER_SIDE, MemoryQueue, MemoryQueueStats};
pub use queue::{
    AnswererEvent, AnswererExchange, AnswererResponder, AnswererSession, CallQueue, CallerEvent, CallerHandle, Offer,
    OfferInit, QueueError,
};
pub use server::{
    ANSWERS_IN_PROCESS, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_OFFER_DEADLINE, HEARTBEATS_ALLOWED, HOST_OFFLINE,
    MAX_HEARTBEAT_INTERVAL, MAX_OFFER_DEADLINE, SignalingConfig, SignalingServer, SignalingServerBuilder, VouchKeys,
};
