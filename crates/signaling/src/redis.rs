//! [`RedisQueue`]: a [`CallQueue`] shared by many signaling instances through
//! one Redis server, so that `tether signaling --redis redis://…` can run as
//! N instances behind a load balancer.
//!
//! A caller whose `Call` lands on instance B reaches a machine whose `Answer`
//! stream is held by instance A: the offer, the claim and every exchange
//! message live in Redis; the instances only talk to Redis, never to each
//! other. The design follows goutils' MongoDB-backed queue (an
//! operator id per instance, online tracking with expiring entries, an atomic
//! claim, per-call records that expire) with Redis primitives.
//!
//! # Keys and channels
//!
//! Every name starts with the key prefix ([`DEFAULT_KEY_PREFIX`],
//! `tether:sig`, written `P` below):
//!
//! | name | type | content | lifetime |
//! |---|---|---|---|
//! | `P:call:<uuid>` | hash | the call record: `host`, `sdp`, `trickle`, `created`/`deadline`/`margin` (ms, Redis clock), `caller` (instance id), `entity` (the caller's authenticated entity, empty if none), `answerer` + `session` (set by the claim), `cn`/`an` (events per side), `cfin`/`afin` (side finished), `ended` (why the exchange is over) | offer deadline + [`DEFAULT_RECORD_SLACK`] |
//! | `P:call:<uuid>:c` | stream | caller → answerer events (field `e`: a protobuf `CallUpdateRequest`), in order | same as the record |
//! | `P:call:<uuid>:a` | stream | answerer → caller events (field `e`: a protobuf `AnswerResponse`), in order | same as the record |
//! | `P:pending:<host>` | list | uuids of unclaimed offers for the host, oldest first (may hold stale ids, skipped by the claim) | refreshed to the longest offer's record lifetime |
//! | `P:claim:<token>` | string | uuid claimed with this claim token (makes a retried claim idempotent) | 60 s |
//! | `P:online:<host>` | string | id of an instance holding an `Answer` stream for the host: **the host is online iff this key exists** | presence TTL ([`DEFAULT_PRESENCE_TTL`]), refreshed every [`DEFAULT_REFRESH_INTERVAL`] by each instance with a waiting answerer for the host |
//! | `P:instance:<id>` | string | liveness of a signaling instance | presence TTL, refreshed like `online` |
//! | channel `P:offers` | pub/sub | a host name: an offer was queued (or released) for it | – |
//! | channel `P:events:<id>` | pub/sub | a call uuid: the call has news for instance `<id>` (an event on the stream it reads, or the exchange ended) | – |
//!
//! # How a call flows
//!
//! * **Caller (`send_offer`)**: one Lua script writes the record, appends the
//!   uuid to `P:pending:<host>` and publishes the host on `P:offers`. A reader
//!   task then follows `P:call:<uuid>:a`.
//! * **Answerer (`recv_offer`)**: waits for a `P:offers` message for one of
//!   its hosts (or the poll interval), then runs the claim script, which pops
//!   the oldest live offer of its hosts and sets `answerer`/`session`. A
//!   reader task then follows `P:call:<uuid>:c` **from its first entry**, so
//!   candidates the caller trickled before the claim are not lost.
//! * **Events** (`send_caller_event`, [`AnswererResponder::respond`]): one
//!   script checks the record (host, claim token, side not finished, event
//!   bound), `XADD`s the event to that side's stream and publishes the uuid on
//!   the reading instance's `P:events:<id>` channel.
//! * **Readers** read their stream with `XRANGE` after the last id they saw,
//!   together with the record's state, in one script. Pub/sub is only a
//!   wake-up: the data is in the streams, so a notification that is lost (not
//!   yet subscribed, reconnecting) only delays delivery until the next poll
//!   ([`DEFAULT_POLL_INTERVAL`]); nothing is lost between claim and subscribe.
//!
//! # Atomicity and exactly-once claims
//!
//! Redis runs a Lua script atomically, so the claim script's "find the oldest
//! unclaimed live offer, pop it, mark it claimed" is the single point of
//! mutual exclusion: two answerers, on any instances, can never both claim
//! one offer (an already-claimed or withdrawn record is skipped). A claim is
//! made with a fresh *claim token*; the script records `P:claim:<token>`, so
//! retrying after a lost reply returns the same offer instead of claiming a
//! second one. Claims run in a task detached from `recv_offer`, which keeps
//! `recv_offer` cancel safe: a claim whose answerer is gone before it was
//! handed over is *released* (pushed back to the front of the pending list
//! and re-announced), so it is answered by somebody else rather than lost.
//! Events of one side are ordered by their stream ids; a side's terminal
//! event (`Done`, `Error`) is its last.
//!
//! # Faults
//!
//! * **An answerer disconnects after the claim**: its responder is dropped
//!   without a terminal event; a script marks the exchange `ended` and the
//!   caller's stream ends (the server turns that into UNAVAILABLE before the
//!   answer, OK after it), exactly like the in-memory queue.
//! * **An instance dies mid-exchange**: its `P:instance:<id>` key expires
//!   within the presence TTL. The peer side's reader checks the liveness of
//!   the instance on the other end on every poll: a caller whose answerer's
//!   instance is gone gets an UNAVAILABLE error event (*retryable*), an
//!   answerer whose caller's instance is gone gets a caller error. Its hosts
//!   go offline when their `online` keys expire (unless the machine
//!   reconnected through another instance, which refreshes them). The offer
//!   is never re-queued once handed to an answerer, so nothing is answered
//!   twice; nothing ends silently.
//! * **Redis restarts**: the [`ConnectionManager`] reconnects by itself (with
//!   RESP3 it notices a dropped connection even when idle); the instance
//!   re-subscribes its channels, wakes every waiter, and its refresh loop
//!   re-creates the `instance` and `online` keys within one refresh interval.
//!   Waiting answerers keep their `Answer` streams and simply retry their
//!   claims. Exchanges in flight during the restart lose their records (the
//!   readers see them gone), so their callers get a retryable error.
//! * **Redis unreachable**: `send_offer` fails with UNAVAILABLE (retryable);
//!   `is_answerer_online` fails open so that callers get that UNAVAILABLE and
//!   not a misleading NOT_FOUND. Every Redis operation is bounded in time.
//!
//! # Requirements
//!
//! Redis ≥ 6 (RESP3 push messages; Debian's `redis-server` is fine), one
//! primary (the scripts build key names, so Redis Cluster is not supported),
//! instances with roughly synchronized clocks (deadlines are computed with the
//! Redis server's clock and handed over as durations, so skew only shifts the
//! wall-clock deadline shown to answerers). Every instance sharing a Redis and
//! a key prefix must have a unique instance id.
//!
//! # Why the `redis` crate
//!
//! `redis` (redis-rs) is the most widely used Rust client and is maintained by
//! Redis. Its [`ConnectionManager`] is a multiplexed, cloneable tokio
//! connection that reconnects automatically with exponential back-off, and
//! with RESP3 it carries pub/sub push messages on the same connection: no
//! dedicated subscriber connection to babysit, and its `Disconnection` push
//! tells us when to re-subscribe and re-poll. [`Script`] runs scripts with
//! `EVALSHA` and transparently reloads them after `NOSCRIPT` — which is what
//! happens after a Redis restart flushed the script cache. We need a handful
//! of commands and four-odd scripts, so the crate is built with only
//! `tokio-comp`, `connection-manager` and `script`. `fred` was the
//! alternative (built-in reconnect policies and resubscription too), but its
//! larger client model buys nothing here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerResponse, AnswerResponseDoneStage, AnswerResponseErrorStage, AnswerResponseInitStage,
    AnswerResponseUpdateStage, CallUpdateRequest, answer_response, call_update_request,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::memory::MAX_EVENTS_PER_SIDE;
use crate::queue::{
    AnswererEvent, AnswererExchange, AnswererResponder, AnswererSession, CallQueue, CallerEvent, CallerHandle, Offer,
    OfferInit, QueueError,
};

/// Default prefix of every Redis key and channel.
pub const DEFAULT_KEY_PREFIX: &str = "tether:sig";
/// Default lifetime of the `online` and `instance` presence keys: a dead
/// instance's machines go offline (and its exchanges fail) this long after
/// its last refresh.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(5);
/// Default interval at which an instance refreshes its presence keys.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Default interval at which waiters re-check Redis without a notification
/// (the safety net under pub/sub, and the peer-liveness check).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default time call records outlive their offer deadline.
pub const DEFAULT_RECORD_SLACK: Duration = Duration::from_secs(2);

/// Longest accepted offer lifetime (longer ones are clamped).
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest "close to expiry" window: answerers do not claim offers with less
/// than min(20 % of the deadline, this) left.
const MAX_CLAIM_MARGIN: Duration = Duration::from_secs(2);
/// Upper bound of one Redis operation as seen by a caller of the queue.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Lifetime of a claim token record.
const CLAIM_TOKEN_TTL: Duration = Duration::from_secs(60);
/// A detached claim whose session is gone stops retrying after this long.
const CLAIM_GIVE_UP: Duration = Duration::from_secs(30);
/// Stream entries read per poll.
const READ_BATCH: usize = 64;
/// Longest uuid accepted from a caller (ours are 36 characters).
const MAX_UUID_LEN: usize = 64;
/// Longest instance id.
const MAX_INSTANCE_ID_LEN: usize = 128;
/// Back-off bounds of retried Redis operations.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Options of a [`RedisQueue`].
///
/// ```
/// use std::time::Duration;
/// use tether_signaling::RedisQueueOptions;
///
/// let opts = RedisQueueOptions::default().with_instance_id("signaling-1".into());
/// assert_eq!(opts.presence_ttl, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisQueueOptions {
    /// Unique id of this instance among those sharing the Redis and prefix
    /// (default: [`default_instance_id`]).
    pub instance_id: String,
    /// Prefix of every key and channel (default [`DEFAULT_KEY_PREFIX`]).
    pub key_prefix: String,
    /// Lifetime of presence keys (default [`DEFAULT_PRESENCE_TTL`]); at least
    /// twice the refresh interval.
    pub presence_ttl: Duration,
    /// Presence refresh interval (default [`DEFAULT_REFRESH_INTERVAL`]).
    pub refresh_interval: Duration,
    /// Poll interval of waiters (default [`DEFAULT_POLL_INTERVAL`]).
    pub poll_interval: Duration,
    /// How long call records outlive their deadline (default
    /// [`DEFAULT_RECORD_SLACK`]).
    pub record_slack: Duration,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `RedisQueueOptions::default()`).
impl RedisQueueOptions {
    /// Sets [`Self::instance_id`].
    pub fn with_instance_id(mut self, instance_id: String) -> Self {
        self.instance_id = instance_id;
        self
    }

    /// Sets [`Self::key_prefix`].
    pub fn with_key_prefix(mut self, key_prefix: String) -> Self {
        self.key_prefix = key_prefix;
        self
    }

    /// Sets [`Self::presence_ttl`].
    pub fn with_presence_ttl(mut self, presence_ttl: Duration) -> Self {
        self.presence_ttl = presence_ttl;
        self
    }

    /// Sets [`Self::refresh_interval`].
    pub fn with_refresh_interval(mut self, refresh_interval: Duration) -> Self {
        self.refresh_interval = refresh_interval;
        self
    }

    /// Sets [`Self::poll_interval`].
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Sets [`Self::record_slack`].
    pub fn with_record_slack(mut self, record_slack: Duration) -> Self {
        self.record_slack = record_slack;
        self
    }
}

impl Default for RedisQueueOptions {
    fn default() -> Self {
        RedisQueueOptions {
            instance_id: default_instance_id(),
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            presence_ttl: DEFAULT_PRESENCE_TTL,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            record_slack: DEFAULT_RECORD_SLACK,
        }
    }
}

impl RedisQueueOptions {
    fn validate(mut self) -> Result<Self, RedisQueueError> {
        let id = &self.instance_id;
        if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RedisQueueError::InvalidOptions(format!(
                "instance id must be 1 to {MAX_INSTANCE_ID_LEN} characters without whitespace, got {id:?}"
            )));
        }
        if self.key_prefix.chars().any(char::is_control) {
            return Err(RedisQueueError::InvalidOptions("key prefix must not contain control characters".into()));
        }
        let ms = Duration::from_millis(1);
        self.refresh_interval = self.refresh_interval.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self.presence_ttl = self.presence_ttl.clamp(self.refresh_interval * 2, Duration::from_secs(600));
        self.poll_interval = self.poll_interval.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self.record_slack = self.record_slack.clamp(ms, Duration::from_secs(600));
        Ok(self)
    }
}

/// `<hostname>-<8 random hex digits>`: readable in Redis, unique per process.
pub fn default_instance_id() -> String {
    let clean = |h: String| -> Option<String> {
        let h: String =
            h.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).take(64).collect();
        (!h.is_empty()).then_some(h)
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .and_then(clean)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().and_then(clean))
        .unwrap_or_else(|| "signaling".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &random[..8])
}

/// Errors creating a [`RedisQueue`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisQueueError {
    /// The options are unusable.
    #[error("invalid redis queue options: {0}")]
    InvalidOptions(String),
    /// The URL is not a Redis URL.
    #[error("invalid redis URL: {0}")]
    InvalidUrl(String),
    /// Redis could not be reached or refused the set-up.
    #[error("cannot connect to redis: {0}")]
    Connect(String),
}

/// A [`CallQueue`] shared by many signaling instances through Redis (see the
/// [module documentation](crate::redis) for keys, atomicity and faults).
///
/// Cheap to clone; background tasks (presence refresh, notification
/// dispatch) stop when the last clone is dropped.
///
/// ```no_run
/// use std::sync::Arc;
/// use tether_signaling::{RedisQueue, RedisQueueOptions, SignalingServer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = RedisQueue::connect("redis://127.0.0.1:6379/", RedisQueueOptions::default()).await?;
/// let signaling = SignalingServer::new(Arc::new(queue));
/// # let _ = signaling; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("options", &self.inner.opts).finish_non_exhaustive()
    }
}

struct Inner {
    conn: ConnectionManager,
    opts: RedisQueueOptions,
    keys: Keys,
    local: Mutex<Local>,
    /// Stops the background tasks when the queue is dropped.
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Which stream a reader follows (named after its writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    /// `P:call:<uuid>:c`, read by the answerer's instance.
    Caller,
    /// `P:call:<uuid>:a`, read by the caller's instance.
    Answerer,
}

impl Side {
    fn tag(self) -> &'static str {
        match self {
            Side::Caller => "c",
            Side::Answerer => "a",
        }
    }

    /// The record field naming the instance at the other end of the stream.
    fn writer_field(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Answerer => "answerer",
        }
    }
}

/// Instance-local bookkeeping: who waits for which notification.
#[derive(Default)]
struct Local {
    next_id: u64,
    /// Answerer sessions: their hosts and wake-up.
    sessions: HashMap<u64, (Vec<String>, Arc<Notify>)>,
    /// Local sessions per host (hosts to keep online).
    hosts: HashMap<String, usize>,
    /// Readers by (uuid, stream).
    watchers: HashMap<(String, Side), Arc<Notify>>,
}

impl Local {
    fn wake_all(&self) {
        for (_, n) in self.sessions.values() {
            n.notify_one();
        }
        for n in self.watchers.values() {
            n.notify_one();
        }
    }
}

/// Key and channel names.
struct Keys {
    /// `<prefix>:`
    p: String,
}

impl Keys {
    fn call(&self, uuid: &str) -> String {
        format!("{}call:{uuid}", self.p)
    }
    fn stream(&self, uuid: &str, side: Side) -> String {
        format!("{}call:{uuid}:{}", self.p, side.tag())
    }
    fn pending(&self, host: &str) -> String {
        format!("{}pending:{host}", self.p)
    }
    fn online(&self, host: &str) -> String {
        format!("{}online:{host}", self.p)
    }
    fn instance_prefix(&self) -> String {
        format!("{}instance:", self.p)
    }
    fn instance(&self, id: &str) -> String {
        format!("{}instance:{id}", self.p)
    }
    fn offers_channel(&self) -> String {
        format!("{}offers", self.p)
    }
    fn events_prefix(&self) -> String {
        format!("{}events:", self.p)
    }
    fn events_channel(&self, id: &str) -> String {
        format!("{}events:{id}", self.p)
    }
}

// ---- Lua scripts (each runs atomically in Redis) ----

/// Current time in ms on the Redis server's clock.
const NOW_MS: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Queue an offer. KEYS: record, pending list, own instance key.
/// ARGV: host, sdp, trickle, ttl ms, margin ms, keep ms, instance id,
/// presence ms, offers channel, uuid, caller entity.
static OFFER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'host', ARGV[1], 'sdp', ARGV[2], 'trickle', ARGV[3], 'created', string.format('%d', now),
  'deadline', string.format('%d', now + tonumber(ARGV[4])), 'margin', ARGV[5], 'caller', ARGV[7], 'entity', ARGV[11],
  'cn', 0, 'an', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('RPUSH', KEYS[2], ARGV[10])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[8])
redis.call('PUBLISH', ARGV[9], ARGV[1])
return 1
"
    ))
});

/// Claim the oldest live unclaimed offer of some hosts. KEYS: pending lists.
/// ARGV: prefix, instance id, claim token, presence ms, token ttl ms.
/// Returns false or {uuid, host, sdp, trickle, ms left, caller entity}.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW_MS}{}",
        r"
local P = ARGV[1]
local tokkey = P .. 'claim:' .. ARGV[3]
redis.call('SET', P .. 'instance:' .. ARGV[2], ARGV[2], 'PX', ARGV[4])
local function result(id)
  local v = redis.call('HMGET', P .. 'call:' .. id, 'host', 'sdp', 'trickle', 'deadline', 'session', 'entity')
  if not v[1] or v[5] ~= ARGV[3] then return false end
  return {id, v[1], v[2], v[3], string.format('%d', (tonumber(v[4]) or now) - now), v[6] or ''}
end
local prev = redis.call('GET', tokkey)
if prev then return result(prev) end
local best, bestkey, bestcreated
for _, key in ipairs(KEYS) do
  while true do
    local id = redis.call('LINDEX', key, 0)
    if not id then break end
    local v = redis.call('HMGET', P .. 'call:' .. id, 'created', 'deadline', 'margin', 'answerer', 'ended')
    local created, deadline, margin = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]) or 0
    if created and deadline and not v[4] and not v[5] and now + margin < deadline then
      if not best or created < bestcreated then best, bestkey, bestcreated = id, key, created end
      break
    end
    redis.call('LPOP', key)
  end
end
if not best then return false end
redis.call('LPOP', bestkey)
redis.call('HSET', P .. 'call:' .. best, 'answerer', ARGV[2], 'session', ARGV[3])
redis.call('SET', tokkey, best, 'PX', ARGV[5])
return result(best)
",
    ))
});

/// Give back a claim that never reached its answerer. ARGV: prefix, token,
/// offers channel. Returns 1 if re-queued.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local P = ARGV[1]
local tokkey = P .. 'claim:' .. ARGV[2]
local id = redis.call('GET', tokkey)
if not id then return 0 end
redis.call('DEL', tokkey)
local ck = P .. 'call:' .. id
local v = redis.call('HMGET', ck, 'session', 'an', 'ended', 'host')
if v[1] ~= ARGV[2] or (tonumber(v[2]) or 0) > 0 or v[3] or not v[4] then return 0 end
redis.call('HDEL', ck, 'answerer', 'session')
local pk = P .. 'pending:' .. v[4]
redis.call('LPUSH', pk, id)
local ttl = redis.call('PTTL', ck)
if ttl > 0 and redis.call('PTTL', pk) < ttl then redis.call('PEXPIRE', pk, ttl) end
redis.call('PUBLISH', ARGV[3], v[4])
return 1
",
    )
});

/// Append one event. KEYS: record, the side's stream. ARGV: side (c|a),
/// payload, kind (e = event, t = terminal, f = failure), max events, check
/// (host for c, claim token for a), events channel prefix, uuid.
/// Returns 'ok', 'gone' or 'full'.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local side, kind = ARGV[1], ARGV[3]
local v = redis.call('HMGET', KEYS[1], 'host', 'session', 'ended', side .. 'fin', side .. 'n', 'caller', 'answerer')
if not v[1] then return 'gone' end
if side == 'c' and v[1] ~= ARGV[5] then return 'gone' end
if side == 'a' and v[2] ~= ARGV[5] then return 'gone' end
if v[3] then return 'gone' end
if v[4] then
  if side == 'c' and kind ~= 'e' then return 'ok' end
  return 'gone'
end
if (tonumber(v[5]) or 0) >= tonumber(ARGV[4]) then return 'full' end
if side == 'c' and kind == 'f' and not v[7] then
  redis.call('HSET', KEYS[1], 'cfin', '1', 'ended', 'withdrawn by the caller')
  return 'ok'
end
redis.call('HINCRBY', KEYS[1], side .. 'n', 1)
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if kind ~= 'e' then redis.call('HSET', KEYS[1], side .. 'fin', '1') end
if side == 'a' and kind == 'f' then
  redis.call('HSET', KEYS[1], 'ended', 'answerer error')
  if v[7] then redis.call('PUBLISH', ARGV[6] .. v[7], ARGV[7]) end
end
local target = v[6]
if side == 'c' then target = v[7] end
if target then redis.call('PUBLISH', ARGV[6] .. target, ARGV[7]) end
return 'ok'
",
    )
});

/// The answerer went away without a terminal event: the exchange is over.
/// KEYS: record. ARGV: claim token, events channel prefix, uuid.
static GONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HMGET', KEYS[1], 'session', 'afin', 'ended', 'caller', 'answerer')
if v[1] ~= ARGV[1] or v[2] or v[3] then return 0 end
redis.call('HSET', KEYS[1], 'afin', '1', 'ended', 'answerer went away')
if v[4] then redis.call('PUBLISH', ARGV[2] .. v[4], ARGV[3]) end
if v[5] then redis.call('PUBLISH', ARGV[2] .. v[5], ARGV[3]) end
return 1
",
    )
});

/// Read a stream with the record's state. KEYS: record, stream. ARGV: first
/// id, count, field naming the writer's instance, instance key prefix.
/// Returns {entries, exists, ended, writer alive, writer id}; marks the
/// exchange ended when the writer's instance is gone.
static POLL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'host', 'ended', ARGV[3])
if not v[1] then return {entries, 0, '', 1, ''} end
local alive = 1
if v[3] then alive = redis.call('EXISTS', ARGV[4] .. v[3]) end
if alive == 0 and not v[2] then
  redis.call('HSET', KEYS[1], 'ended', 'signaling instance ' .. v[3] .. ' went away')
end
return {entries, 1, v[2] or '', alive, v[3] or ''}
",
    )
});

// ---- redis::Value helpers (never panic on unexpected replies) ----

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => string(other)?.trim().parse().ok(),
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// The stream id just after `id` (`ms-seq`), for an inclusive XRANGE start.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

// ---- event encoding: the wire messages, protobuf-encoded ----

/// An event stored in a stream.
trait StreamEvent: Sized + Send + 'static {
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn is_terminal(&self) -> bool;
    /// What the reader emits when the writer's instance died.
    fn writer_gone(instance: &str) -> Self;
}

fn encode_answerer(ev: &AnswererEvent) -> Vec<u8> {
    let stage = match ev {
        AnswererEvent::Answer(sdp) => answer_response::Stage::Init(AnswerResponseInitStage { sdp: sdp.clone() }),
        AnswererEvent::Candidate(c) => {
            answer_response::Stage::Update(AnswerResponseUpdateStage { candidate: Some(c.clone()) })
        }
        AnswererEvent::Done => answer_response::Stage::Done(AnswerResponseDoneStage {}),
        AnswererEvent::Error(st) => {
            answer_response::Stage::Error(AnswerResponseErrorStage { status: Some(st.clone()) })
        }
    };
    AnswerResponse { uuid: String::new(), stage: Some(stage) }.encode_to_vec()
}

fn encode_caller(ev: &CallerEvent) -> Vec<u8> {
    let update = match ev {
        CallerEvent::Candidate(c) => call_update_request::Update::Candidate(c.clone()),
        CallerEvent::Done => call_update_request::Update::Done(true),
        CallerEvent::Error(st) => call_update_request::Update::Error(st.clone()),
    };
    CallUpdateRequest { uuid: String::new(), update: Some(update) }.encode_to_vec()
}

fn status(code: tonic::Code, message: String) -> RpcStatus {
    RpcStatus { code: code as i32, message, details: Vec::new() }
}

impl StreamEvent for AnswererEvent {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(match AnswerResponse::decode(bytes).ok()?.stage? {
            answer_response::Stage::Init(i) => AnswererEvent::Answer(i.sdp),
            answer_response::Stage::Update(u) => AnswererEvent::Candidate(u.candidate?),
            answer_response::Stage::Done(_) => AnswererEvent::Done,
            answer_response::Stage::Error(e) => AnswererEvent::Error(e.status.unwrap_or_default()),
        })
    }

    fn is_terminal(&self) -> bool {
        AnswererEvent::is_terminal(self)
    }

    fn writer_gone(instance: &str) -> Self {
        AnswererEvent::Error(status(
            tonic::Code::Unavailable,
            format!("the signaling instance {instance:?} holding the answerer went away; try again"),
        ))
    }
}

impl StreamEvent for CallerEvent {
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(match CallUpdateRequest::decode(bytes).ok()?.update? {
            call_update_request::Update::Candidate(c) => CallerEvent::Candidate(c),
            call_update_request::Update::Done(true) => CallerEvent::Done,
            call_update_request::Update::Done(false) => return None,
            call_update_request::Update::Error(st) => CallerEvent::Error(st),
        })
    }

    fn is_terminal(&self) -> bool {
        CallerEvent::is_terminal(self)
    }

    fn writer_gone(instance: &str) -> Self {
        CallerEvent::Error(status(
            tonic::Code::Unavailable,
            format!("the signaling instance {instance:?} holding the caller went away"),
        ))
    }
}

/// A claimed offer and the token it was claimed with.
struct Claimed {
    offer: Offer,
    token: String,
    /// Local end of the record's life (deadline + slack).
    until: Instant,
}

impl RedisQueue {
    /// Connects to Redis at `url` (`redis://[user:pass@]host[:port][/db]`,
    /// `rediss://` needs a TLS-enabled build of the `redis` crate and is not
    /// enabled here), subscribes to this instance's channels and starts the
    /// presence refresh. Fails if Redis cannot be reached now; afterwards the
    /// queue reconnects by itself.
    pub async fn connect(url: &str, options: RedisQueueOptions) -> Result<Self, RedisQueueError> {
        let opts = options.validate()?;
        let info = url.into_connection_info().map_err(|e| RedisQueueError::InvalidUrl(e.to_string()))?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| RedisQueueError::InvalidUrl(e.to_string()))?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF / 2)
            // Few retries per reconnection: while Redis is down, operations
            // fail fast (callers get a prompt UNAVAILABLE); the next
            // operation (at the latest the presence refresh) starts a new
            // reconnection.
            .set_number_of_retries(3);
        let connect = redis::aio::ConnectionManager::new_with_config(client, config);
        let conn = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| RedisQueueError::Connect("timed out".into()))?
            .map_err(|e| RedisQueueError::Connect(e.to_string()))?;
        let keys = Keys { p: format!("{}:", opts.key_prefix) };
        let inner =
            Arc::new(Inner { conn, opts, keys, local: Mutex::new(Local::default()), cancel: CancellationToken::new() });
        inner.subscribe().await.map_err(|e| RedisQueueError::Connect(e.to_string()))?;
        inner.refresh().await.map_err(|e| RedisQueueError::Connect(e.to_string()))?;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(dispatch(weak.clone(), push_rx, inner.cancel.clone()));
        tokio::spawn(refresh_loop(weak, inner.cancel.clone()));
        tracing::info!(instance = %inner.opts.instance_id, prefix = %inner.opts.key_prefix, "redis call queue connected");
        Ok(RedisQueue { inner })
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.inner.opts.instance_id
    }

    /// The effective options.
    pub fn options(&self) -> &RedisQueueOptions {
        &self.inner.opts
    }
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn subscribe(&self) -> redis::RedisResult<()> {
        let channels = [self.keys.offers_channel(), self.keys.events_channel(&self.opts.instance_id)];
        self.conn().subscribe(&channels).await
    }

    /// Refreshes this instance's presence and that of its local hosts.
    async fn refresh(&self) -> redis::RedisResult<()> {
        let hosts: Vec<String> = self.local.lock().hosts.keys().cloned().collect();
        self.mark_online(&hosts).await
    }

    async fn mark_online(&self, hosts: &[String]) -> redis::RedisResult<()> {
        let id = &self.opts.instance_id;
        let px = ms(self.opts.presence_ttl);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.keys.instance(id)).arg(id).arg("PX").arg(px).ignore();
        for h in hosts {
            pipe.cmd("SET").arg(self.keys.online(h)).arg(id).arg("PX").arg(px).ignore();
        }
        pipe.exec_async(&mut self.conn()).await
    }

    /// Routes one pub/sub message.
    fn route(&self, channel: &[u8], payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else { return };
        let local = self.local.lock();
        if channel == self.keys.offers_channel().as_bytes() {
            for (hosts, notify) in local.sessions.values() {
                if hosts.iter().any(|h| h == payload) {
                    notify.notify_one();
                }
            }
        } else {
            for side in [Side::Caller, Side::Answerer] {
                if let Some(n) = local.watchers.get(&(payload.to_string(), side)) {
                    n.notify_one();
                }
            }
        }
    }

    /// Runs one claim attempt with `token`.
    async fn claim(&self, hosts: &[String], token: &str) -> Result<Option<Claimed>, QueueError> {
        let mut inv = CLAIM.prepare_invoke();
        for h in hosts {
            inv.key(self.keys.pending(h));
        }
        inv.arg(&self.keys.p)
            .arg(&self.opts.instance_id)
            .arg(token)
            .arg(ms(self.opts.presence_ttl))
            .arg(ms(CLAIM_TOKEN_TTL));
        let reply: Value = bounded(inv.invoke_async(&mut self.conn())).await?;
        let Some(v) = array(&reply) else { return Ok(None) };
        let [uuid, host, sdp, trickle, left, entity] = v else {
            return Err(QueueError::Unavailable("unexpected claim reply".into()));
        };
        let (Some(uuid), Some(host), Some(sdp), Some(left)) = (string(uuid), string(host), string(sdp), int(left))
        else {
            return Err(QueueError::Unavailable("unexpected claim reply".into()));
        };
        let left = Duration::from_millis(left.max(0).unsigned_abs()).min(MAX_TTL);
        let offer = Offer {
            uuid,
            host,
            sdp,
            disable_trickle: bytes(trickle) == Some(b"1"),
            deadline: SystemTime::now() + left,
            caller: string(entity).filter(|e| !e.is_empty()),
            address: None,
        };
        Ok(Some(Claimed { offer, token: token.to_string(), until: Instant::now() + left + self.opts.record_slack }))
    }

    /// Gives a claim back to the queue (best effort, retried briefly).
    async fn release(&self, token: &str) {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut inv = RELEASE.prepare_invoke();
            inv.arg(&self.keys.p).arg(token).arg(self.keys.offers_channel());
            match bounded(inv.invoke_async::<i64>(&mut self.conn())).await {
                Ok(n) => {
                    if n == 1 {
                        tracing::debug!(%token, "released an undelivered claim");
                    }
                    return;
                }
                Err(e) if started.elapsed() < CLAIM_GIVE_UP && !self.cancel.is_cancelled() => {
                    tracing::debug!(error = %e, "releasing a claim failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %token, "could not release a claim; its offer will expire");
                    return;
                }
            }
        }
    }

    /// Appends one event of `side` to call `uuid`.
    async fn push(&self, uuid: &str, side: Side, payload: Vec<u8>, kind: &str, check: &str) -> Result<(), QueueError> {
        let mut inv = PUSH.prepare_invoke();
        inv.key(self.keys.call(uuid))
            .key(self.keys.stream(uuid, side))
            .arg(side.tag())
            .arg(payload)
            .arg(kind)
            .arg(MAX_EVENTS_PER_SIDE)
            .arg(check)
            .arg(self.keys.events_prefix())
            .arg(uuid);
        let reply: Value = bounded(inv.invoke_async(&mut self.conn())).await?;
        match bytes(&reply) {
            Some(b"ok") => Ok(()),
            Some(b"full") => Err(QueueError::TooManyUpdates(uuid.to_string())),
            _ => Err(QueueError::NoActiveOffer(uuid.to_string())),
        }
    }

    /// Marks the exchange over because its answerer went away.
    async fn gone(&self, uuid: &str, token: &str) -> Result<(), QueueError> {
        let mut inv = GONE.prepare_invoke();
        inv.key(self.keys.call(uuid)).arg(token).arg(self.keys.events_prefix()).arg(uuid);
        bounded(inv.invoke_async::<i64>(&mut self.conn())).await.map(|_| ())
    }

    /// One read of `side`'s stream from `start` (inclusive).
    async fn poll(&self, uuid: &str, side: Side, start: &str) -> Result<Poll, QueueError> {
        let mut inv = POLL.prepare_invoke();
        inv.key(self.keys.call(uuid))
            .key(self.keys.stream(uuid, side))
            .arg(start)
            .arg(READ_BATCH)
            .arg(side.writer_field())
            .arg(self.keys.instance_prefix());
        let reply: Value = bounded(inv.invoke_async(&mut self.conn())).await?;
        let bad = || QueueError::Unavailable("unexpected poll reply".into());
        let [entries, exists, ended, alive, writer] = array(&reply).ok_or_else(bad)? else { return Err(bad()) };
        let mut out = Vec::new();
        for entry in array(entries).ok_or_else(bad)? {
            let Some([id, fields, ..]) = array(entry) else { return Err(bad()) };
            let id = string(id).ok_or_else(bad)?;
            out.push((id, field(fields, b"e").unwrap_or_default()));
        }
        Ok(Poll {
            entries: out,
            exists: int(exists) == Some(1),
            ended: string(ended).filter(|s| !s.is_empty()),
            writer_alive: int(alive) != Some(0),
            writer: string(writer).unwrap_or_default(),
        })
    }

    /// Stores an offer and starts following the answerer's events.
    async fn offer(self: &Arc<Self>, init: OfferInit) -> Result<CallerHandle, QueueError> {
        let inner = self;
        let ttl = init.ttl.min(MAX_TTL);
        let margin = (ttl / 5).min(MAX_CLAIM_MARGIN);
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut inv = OFFER.prepare_invoke();
        inv.key(inner.keys.call(&uuid))
            .key(inner.keys.pending(&init.host))
            .key(inner.keys.instance(&inner.opts.instance_id))
            .arg(&init.host)
            .arg(init.sdp.as_bytes())
            .arg(if init.disable_trickle { "1" } else { "0" })
            .arg(ms(ttl))
            .arg(ms(margin))
            .arg(ms(ttl + inner.opts.record_slack))
            .arg(&inner.opts.instance_id)
            .arg(ms(inner.opts.presence_ttl))
            .arg(inner.keys.offers_channel())
            .arg(&uuid)
            .arg(init.caller.as_deref().unwrap_or(""));
        let deadline = SystemTime::now() + ttl;
        let until = Instant::now() + ttl + inner.opts.record_slack;
        match bounded(inv.invoke_async::<i64>(&mut inner.conn())).await {
            Ok(1) => {}
            Ok(_) => return Err(QueueError::Unavailable("offer uuid collision".into())),
            Err(e) => {
                // The reply may have been lost after the offer was stored:
                // withdraw it so that no answerer picks up a call nobody follows.
                let inner = inner.clone();
                let (host, id) = (init.host.clone(), uuid.clone());
                tokio::spawn(async move { inner.withdraw(&host, &id).await });
                return Err(e);
            }
        }
        let offer = Offer {
            uuid: uuid.clone(),
            host: init.host,
            sdp: init.sdp,
            disable_trickle: init.disable_trickle,
            deadline,
            caller: init.caller,
            address: init.address,
        };
        let events = spawn_reader::<AnswererEvent>(inner, &uuid, Side::Answerer, until);
        Ok(CallerHandle { offer, events })
    }

    /// Withdraws an offer whose caller is gone (best effort).
    async fn withdraw(&self, host: &str, uuid: &str) {
        let st = status(tonic::Code::Unavailable, "the caller's offer failed".into());
        if let Err(e) = self.push(uuid, Side::Caller, encode_caller(&CallerEvent::Error(st)), "f", host).await {
            tracing::debug!(%uuid, error = %e, "could not withdraw an offer");
        }
    }

    fn watch(&self, uuid: &str, side: Side) -> Arc<Notify> {
        self.local.lock().watchers.entry((uuid.to_string(), side)).or_insert_with(|| Arc::new(Notify::new())).clone()
    }

    fn unwatch(&self, uuid: &str, side: Side) {
        self.local.lock().watchers.remove(&(uuid.to_string(), side));
    }
}

/// The value of field `name` of a stream entry (a flat field/value list, or
/// a map).
fn field(fields: &Value, name: &[u8]) -> Option<Vec<u8>> {
    let value = match fields {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| bytes(k) == Some(name)).map(|(_, v)| v),
        other => array(other)?.chunks_exact(2).find(|kv| bytes(&kv[0]) == Some(name)).map(|kv| &kv[1]),
    };
    value.and_then(bytes).map(<[u8]>::to_vec)
}

struct Poll {
    entries: Vec<(String, Vec<u8>)>,
    exists: bool,
    ended: Option<String>,
    writer_alive: bool,
    /// Instance id of the stream's writer (empty if unknown yet).
    writer: String,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Bounds a Redis operation in time and maps its error.
async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, QueueError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(QueueError::Unavailable("redis operation timed out".into())),
    }
}

/// Routes push messages; on a disconnection wakes everybody and
/// re-subscribes.
async fn dispatch(weak: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<PushInfo>, cancel: CancellationToken) {
    loop {
        let push = tokio::select! {
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let Some(inner) = weak.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                if let [channel, payload, ..] = push.data.as_slice()
                    && let (Some(channel), Some(payload)) = (bytes(channel), bytes(payload))
                {
                    inner.route(channel, payload);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!(instance = %inner.opts.instance_id, "redis connection lost; reconnecting");
                inner.local.lock().wake_all();
                tokio::spawn(resubscribe(weak.clone(), cancel.clone()));
            }
            _ => {}
        }
    }
}

/// Re-subscribes after a reconnection (retrying until it works), then wakes
/// every waiter to catch up on what was published meanwhile.
async fn resubscribe(weak: Weak<Inner>, cancel: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match tokio::time::timeout(OP_TIMEOUT, inner.subscribe()).await {
            Ok(Ok(())) => {
                tracing::info!(instance = %inner.opts.instance_id, "redis connection re-established");
                // Presence first, so that callers see the hosts again at once.
                let _ = tokio::time::timeout(OP_TIMEOUT, inner.refresh()).await;
                inner.local.lock().wake_all();
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "re-subscribing failed; retrying"),
            Err(_) => tracing::debug!("re-subscribing timed out; retrying"),
        }
        drop(inner);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Refreshes presence keys every refresh interval.
async fn refresh_loop(weak: Weak<Inner>, cancel: CancellationToken) {
    let period = match weak.upgrade() {
        Some(inner) => inner.opts.refresh_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        match tokio::time::timeout(OP_TIMEOUT, inner.refresh()).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(instance = %inner.opts.instance_id, "presence refresh works again");
                    failing = false;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(instance = %inner.opts.instance_id, error = %e, "presence refresh failed");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(instance = %inner.opts.instance_id, "presence refresh timed out");
                }
                failing = true;
            }
        }
    }
}

/// Follows one stream of a call and forwards its events, in order, until a
/// terminal event, the end of the exchange, the writer's instance dying, the
/// record's expiry, or the receiver going away.
async fn read_stream<E: StreamEvent>(
    inner: Arc<Inner>,
    uuid: String,
    side: Side,
    until: Instant,
    tx: mpsc::UnboundedSender<E>,
) {
    let notify = inner.watch(&uuid, side);
    let _unwatch = Unwatch { inner: inner.clone(), uuid: uuid.clone(), side };
    let mut start = "-".to_string();
    let mut backoff = MIN_BACKOFF;
    loop {
        let wait = match inner.poll(&uuid, side, &start).await {
            Ok(poll) => {
                backoff = MIN_BACKOFF;
                let full = poll.entries.len() >= READ_BATCH;
                for (id, data) in poll.entries {
                    start = match next_id(&id) {
                        Some(n) => n,
                        None => {
                            tracing::warn!(%uuid, %id, "unexpected stream id");
                            return;
                        }
                    };
                    let Some(event) = E::decode(&data) else {
                        tracing::warn!(%uuid, "undecodable exchange event; skipped");
                        continue;
                    };
                    let terminal = event.is_terminal();
                    if tx.send(event).is_err() || terminal {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !poll.writer_alive {
                    tracing::info!(%uuid, instance = %poll.writer, "the other side's signaling instance went away");
                    let _ = tx.send(E::writer_gone(&poll.writer));
                    return;
                }
                if !poll.exists || poll.ended.is_some() {
                    return;
                }
                inner.opts.poll_interval
            }
            Err(e) => {
                tracing::debug!(%uuid, error = %e, "reading exchange events failed; retrying");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(until) => return,
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

struct Unwatch {
    inner: Arc<Inner>,
    uuid: String,
    side: Side,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        self.inner.unwatch(&self.uuid, self.side);
    }
}

fn spawn_reader<E: StreamEvent>(
    inner: &Arc<Inner>,
    uuid: &str,
    side: Side,
    until: Instant,
) -> futures::stream::BoxStream<'static, E> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_stream::<E>(inner.clone(), uuid.to_string(), side, until, tx));
    UnboundedReceiverStream::new(rx).boxed()
}

/// Spawns a claim for `hosts`; the result comes through the receiver. A
/// claim whose receiver is gone is released.
fn spawn_claim(inner: Arc<Inner>, hosts: Vec<String>) -> oneshot::Receiver<Option<Claimed>> {
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let token = uuid::Uuid::new_v4().to_string();
        let mut backoff = MIN_BACKOFF;
        let mut attempted = false;
        loop {
            if tx.is_closed() {
                // Nobody waits any more: make sure that an earlier attempt
                // whose reply was lost does not keep an offer.
                if attempted {
                    inner.release(&token).await;
                }
                return;
            }
            attempted = true;
            match inner.claim(&hosts, &token).await {
                Ok(claimed) => {
                    if let Err(Some(c)) = tx.send(claimed) {
                        inner.release(&c.token).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "claiming an offer failed; retrying");
                    tokio::select! {
                        _ = tx.closed() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });
    rx
}

#[async_trait]
impl CallQueue for RedisQueue {
    async fn send_offer(&self, init: OfferInit) -> Result<CallerHandle, QueueError> {
        // In a task of its own: if this future is dropped (the caller went
        // away) while Redis is storing the offer, the offer is withdrawn
        // rather than left for an answerer with nobody to talk to.
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let host = init.host.clone();
            if let Err(Ok(handle)) = tx.send(inner.offer(init).await) {
                let uuid = handle.offer.uuid.clone();
                drop(handle);
                inner.withdraw(&host, &uuid).await;
            }
        });
        rx.await.unwrap_or_else(|_| Err(QueueError::Unavailable("offer task failed".into())))
    }

    async fn send_caller_event(&self, host: &str, uuid: &str, event: CallerEvent) -> Result<(), QueueError> {
        if uuid.is_empty() || uuid.len() > MAX_UUID_LEN {
            return Err(QueueError::NoActiveOffer(uuid.to_string()));
        }
        let kind = match &event {
            CallerEvent::Candidate(_) => "e",
            CallerEvent::Done => "t",
            CallerEvent::Error(_) => "f",
        };
        self.inner.push(uuid, Side::Caller, encode_caller(&event), kind, host).await
    }

    async fn register_answerer(&self, hosts: Vec<String>) -> Result<Box<dyn AnswererSession>, QueueError> {
        let inner = &self.inner;
        let notify = Arc::new(Notify::new());
        let id = {
            let mut local = inner.local.lock();
            local.next_id += 1;
            let id = local.next_id;
            local.sessions.insert(id, (hosts.clone(), notify.clone()));
            for h in &hosts {
                *local.hosts.entry(h.clone()).or_default() += 1;
            }
            id
        };
        // Online at once; if Redis is unreachable now, the refresh loop
        // re-establishes the registration once it is back.
        if let Err(e) = bounded(inner.mark_online(&hosts)).await {
            tracing::warn!(error = %e, ?hosts, "could not mark hosts online yet");
        }
        Ok(Box::new(RedisSession { inner: inner.clone(), id, hosts, notify, inflight: None }))
    }

    async fn is_answerer_online(&self, host: &str) -> bool {
        let mut conn = self.inner.conn();
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.inner.keys.online(host));
        match bounded(cmd.query_async::<i64>(&mut conn)).await {
            Ok(n) => n > 0,
            // Fail open: the offer then fails with a retryable UNAVAILABLE
            // rather than a misleading NOT_FOUND.
            Err(e) => {
                tracing::debug!(error = %e, %host, "online check failed");
                true
            }
        }
    }
}

/// One `Answer` stream's registration.
struct RedisSession {
    inner: Arc<Inner>,
    id: u64,
    hosts: Vec<String>,
    notify: Arc<Notify>,
    /// The claim in flight (kept across cancelled `recv_offer` calls).
    inflight: Option<oneshot::Receiver<Option<Claimed>>>,
}

#[async_trait]
impl AnswererSession for RedisSession {
    async fn recv_offer(&mut self) -> Result<AnswererExchange, QueueError> {
        loop {
            let rx = self.inflight.get_or_insert_with(|| spawn_claim(self.inner.clone(), self.hosts.clone()));
            // Cancel safe: the receiver (and so the claim) stays in `self`.
            let res = rx.await;
            self.inflight = None;
            if let Ok(Some(claimed)) = res {
                return Ok(exchange(&self.inner, claimed));
            }
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(self.inner.opts.poll_interval) => {}
            }
        }
    }
}

impl Drop for RedisSession {
    fn drop(&mut self) {
        {
            let mut local = self.inner.local.lock();
            local.sessions.remove(&self.id);
            for h in &self.hosts {
                if let Some(n) = local.hosts.get_mut(h) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        // No refresh any more: the host goes offline when its
                        // key expires (a grace period for reconnecting answerers).
                        local.hosts.remove(h);
                    }
                }
            }
        }
        if let Some(mut rx) = self.inflight.take() {
            // After close() the claim task cannot hand over any more (it
            // releases itself); a claim handed over before is released here.
            rx.close();
            if let Ok(Some(claimed)) = rx.try_recv()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let inner = self.inner.clone();
                rt.spawn(async move { inner.release(&claimed.token).await });
            }
        }
    }
}

fn exchange(inner: &Arc<Inner>, claimed: Claimed) -> AnswererExchange {
    let Claimed { offer, token, until } = claimed;
    let caller_events = spawn_reader::<CallerEvent>(inner, &offer.uuid, Side::Caller, until);
    let responder =
        RedisResponder { inner: inner.clone(), uuid: offer.uuid.clone(), token, finished: AtomicBool::new(false) };
    AnswererExchange { offer, caller_events, responder: Box::new(responder) }
}

struct RedisResponder {
    inner: Arc<Inner>,
    uuid: String,
    token: String,
    finished: AtomicBool,
}

#[async_trait]
impl AnswererResponder for RedisResponder {
    async fn respond(&self, event: AnswererEvent) -> Result<(), QueueError> {
        if self.finished.load(Ordering::Acquire) {
            return Err(QueueError::NoActiveOffer(self.uuid.clone()));
        }
        let kind = match &event {
            AnswererEvent::Answer(_) | AnswererEvent::Candidate(_) => "e",
            AnswererEvent::Done => "t",
            AnswererEvent::Error(_) => "f",
        };
        let res = self.inner.push(&self.uuid, Side::Answerer, encode_answerer(&event), kind, &self.token).await;
        if event.is_terminal() && !matches!(res, Err(QueueError::Unavailable(_))) {
            self.finished.store(true, Ordering::Release);
        }
        res
    }
}

impl Drop for RedisResponder {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        // Going away without a terminal event ends the exchange. (In a
        // runtime that is shutting down this does nothing: the instance's
        // presence expiring tells the caller instead.)
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            let (uuid, token) = (self.uuid.clone(), self.token.clone());
            rt.spawn(async move {
                if let Err(e) = inner.gone(&uuid, &token).await {
                    tracing::debug!(%uuid, error = %e, "could not mark the exchange as abandoned");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_advance() {
        assert_eq!(next_id("5-0").as_deref(), Some("5-1"));
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id("nope"), None);
        assert_eq!(next_id("1-x"), None);
    }

    #[test]
    fn events_round_trip() {
        let c = tether_proto::proto::rpc::webrtc::v1::IceCandidate { candidate: "c".into(), ..Default::default() };
        for ev in [
            AnswererEvent::Answer("sdp".into()),
            AnswererEvent::Candidate(c.clone()),
            AnswererEvent::Done,
            AnswererEvent::Error(status(tonic::Code::ResourceExhausted, "busy".into())),
        ] {
            assert_eq!(<AnswererEvent as StreamEvent>::decode(&encode_answerer(&ev)), Some(ev));
        }
        for ev in [
            CallerEvent::Candidate(c),
            CallerEvent::Done,
            CallerEvent::Error(status(tonic::Code::Cancelled, "gone".into())),
        ] {
            assert_eq!(<CallerEvent as StreamEvent>::decode(&encode_caller(&ev)), Some(ev));
        }
        assert_eq!(<CallerEvent as StreamEvent>::decode(b"\xff\xff"), None);
        assert_eq!(<AnswererEvent as StreamEvent>::decode(&[]), None);
    }

    #[test]
    fn options_are_validated() {
        let bad = RedisQueueOptions::default().with_instance_id("has space".into());
        assert!(bad.validate().is_err());
        let bad = RedisQueueOptions::default().with_instance_id(String::new());
        assert!(bad.validate().is_err());
        let opts = RedisQueueOptions::default()
            .with_instance_id("a".into())
            .with_presence_ttl(Duration::from_millis(1))
            .with_refresh_interval(Duration::from_millis(100))
            .validate()
            .unwrap();
        assert_eq!(opts.presence_ttl, Duration::from_millis(200));
        let id = default_instance_id();
        assert!(!id.is_empty() && !id.contains(char::is_whitespace), "{id}");
    }
}
