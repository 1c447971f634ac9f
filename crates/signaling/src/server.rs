//! [`SignalingServer`]: `proto.rpc.webrtc.v1.SignalingService` over a
//! [`CallQueue`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerResponse, CallRequest, CallResponse, CallUpdateRequest, CallUpdateResponse, IceServer,
    OptionalWebRtcConfigRequest, OptionalWebRtcConfigResponse,
    signaling_service_server::{SignalingService, SignalingServiceServer},
};
use tether_transport::auth::AuthEntity;
use tether_transport::identity::VouchKey;
use tether_transport::server::ConnectionInfo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authorizer, Role};
use crate::core::{CallEnd, CallRelay, CallStep, Heartbeat, SignalingCore, message_before_offer};
use crate::host::HostAllowList;
use crate::ice::TurnRestConfig;
use crate::limits::{CallLimits, Caller, LimitStats};
use crate::queue::{AnswererEvent, AnswererExchange, AnswererSession, CallQueue, CallerEvent, QueueError};

/// Default interval of heartbeats to answerers that allow them.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Heartbeat intervals are clamped below this (micro-rdk drops an Answer
/// stream that is silent for 30 s).
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(29);
/// Default lifetime of an offer (the whole signaling exchange).
pub const DEFAULT_OFFER_DEADLINE: Duration = Duration::from_secs(10);
/// Offer deadlines are clamped to at most this.
pub const MAX_OFFER_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// Message of the NOT_FOUND returned to callers of a host without answerers.
pub const HOST_OFFLINE: &str = "host appears to be offline; ensure machine is online and try again";
/// Metadata key with which an answerer asks for heartbeats (value `true`).
pub const HEARTBEATS_ALLOWED: &str = "heartbeats-allowed";

/// Bound of unary handlers (CallUpdate) and of best-effort notifications.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffered messages per outgoing stream.
const STREAM_BUFFER: usize = 32;
/// A caller that drops its Call stream after receiving the answer is given
/// this long for a racing `CallUpdate{done}` to land before the answerer is
/// told that the caller went away (Go callers close their signaling
/// connection as soon as the data channel opens).
const CALLER_GONE_GRACE: Duration = Duration::from_millis(500);

/// Configuration of a [`SignalingServer`]; see [`SignalingServerBuilder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct SignalingConfig {
    /// Interval of heartbeats on Answer streams with `heartbeats-allowed: true`.
    pub heartbeat_interval: Duration,
    /// Lifetime of an offer, from `Call` until the exchange must be over.
    pub offer_deadline: Duration,
    /// Hosts this server serves; `None` = any host.
    pub allowed_hosts: Option<HostAllowList>,
    /// Static ICE servers returned by OptionalWebRTCConfig and in offers.
    pub ice_servers: Vec<IceServer>,
    /// TURN servers with shared-secret credentials, minted per request.
    pub turn: Vec<TurnRestConfig>,
    /// Authorization hook consulted for every host of every request.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Per-caller rate limit and per-host pending cap of `Call`.
    pub call_limits: CallLimits,
    /// Keys to vouch for authenticated callers with, per answerer entity
    /// (see [`tether_transport::identity`]).
    pub vouch_keys: Option<VouchKeys>,
    /// Refuse every `Answer` RPC: the only answerer is in this process and
    /// takes offers from the queue itself (a machine's embedded signaler).
    pub in_process_answerers_only: bool,
}

/// Message of the PERMISSION_DENIED with which an embedded signaler refuses
/// `Answer` streams.
pub const ANSWERS_IN_PROCESS: &str =
    "this signaling service answers only for the machine it runs in; no Answer stream may register here";

/// Finds the key with which to vouch for callers towards the answerer that
/// authenticated as the given entity (`None`: do not vouch).
pub type VouchKeys = Arc<dyn Fn(&str) -> Option<VouchKey> + Send + Sync>;

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            offer_deadline: DEFAULT_OFFER_DEADLINE,
            allowed_hosts: None,
            ice_servers: Vec::new(),
            turn: Vec::new(),
            authorizer: None,
            call_limits: CallLimits::default(),
            vouch_keys: None,
            in_process_answerers_only: false,
        }
    }
}

impl std::fmt::Debug for SignalingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalingConfig")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("offer_deadline", &self.offer_deadline)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("ice_servers", &self.ice_servers)
            .field("turn", &self.turn)
            .field("authorizer", &self.authorizer.is_some())
            .field("call_limits", &self.call_limits)
            .field("vouch_keys", &self.vouch_keys.is_some())
            .field("in_process_answerers_only", &self.in_process_answerers_only)
            .finish()
    }
}

/// Builds a [`SignalingServer`].
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tether_signaling::{HostAllowList, MemoryQueue, SignalingServer, TurnRestConfig, ice_server};
///
/// let hosts = HostAllowList::new(["robot-main.abc.viam.cloud"]);
/// let server = SignalingServer::builder(Arc::new(MemoryQueue::new()))
///     .heartbeat_interval(Duration::from_secs(10))
///     .offer_deadline(Duration::from_secs(10))
///     .allowed_hosts(hosts.clone())
///     .ice_server(ice_server(["stun:stun.example.com:3478"], "", ""))
///     .turn(TurnRestConfig::new(["turn:turn.example.com:3478"], "secret"))
///     .build();
/// hosts.insert("192.168.1.5:8080"); // learned after binding
/// let _svc = server.into_service();
/// ```
#[derive(Debug)]
pub struct SignalingServerBuilder {
    queue: Arc<dyn CallQueue>,
    config: SignalingConfig,
}

impl SignalingServerBuilder {
    /// Heartbeat interval (default 15 s), clamped to 1 ms ..= 29 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }

    /// Offer deadline (default 10 s), clamped to at most a day.
    pub fn offer_deadline(mut self, deadline: Duration) -> Self {
        self.config.offer_deadline = deadline;
        self
    }

    /// Restricts the server to these hosts (shared, updatable at runtime);
    /// any other host gets INVALID_ARGUMENT `host not preconfigured`.
    pub fn allowed_hosts(mut self, hosts: HostAllowList) -> Self {
        self.config.allowed_hosts = Some(hosts);
        self
    }

    /// Adds a static ICE server.
    pub fn ice_server(mut self, server: IceServer) -> Self {
        self.config.ice_servers.push(server);
        self
    }

    /// Adds static ICE servers.
    pub fn ice_servers(mut self, servers: impl IntoIterator<Item = IceServer>) -> Self {
        self.config.ice_servers.extend(servers);
        self
    }

    /// Adds a TURN server with shared-secret (TURN REST) credentials.
    pub fn turn(mut self, turn: TurnRestConfig) -> Self {
        self.config.turn.push(turn);
        self
    }

    /// Sets the authorization hook.
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.config.authorizer = Some(authorizer);
        self
    }

    /// Limits `Call` (default [`CallLimits::default`]: pending offers per
    /// host and exchanges per caller address capped, no rate limit): per-caller
    /// rate (keyed by the authenticated entity, or the peer address without
    /// auth; RESOURCE_EXHAUSTED `request exceeds rate limit …`), concurrent
    /// unanswered calls per host and exchanges in progress per caller address
    /// (RESOURCE_EXHAUSTED `too many …`).
    pub fn call_limits(mut self, limits: CallLimits) -> Self {
        self.config.call_limits = limits;
        self
    }

    /// Vouches for authenticated callers: every offer from a caller with an
    /// [`AuthEntity`] reaches an authenticated answerer with a caller
    /// assertion signed by `keys(answerer entity)` (see
    /// [`tether_transport::identity`]), so the machine learns who is calling.
    pub fn vouch_keys(mut self, keys: VouchKeys) -> Self {
        self.config.vouch_keys = Some(keys);
        self
    }

    /// Refuses every `Answer` RPC (PERMISSION_DENIED): the server's only
    /// answerer runs in the same process and claims offers from the queue
    /// directly (see [`crate::answerer::spawn_local`]).
    pub fn in_process_answerers_only(mut self) -> Self {
        self.config.in_process_answerers_only = true;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: SignalingConfig) -> Self {
        self.config = config;
        self
    }

    /// The server.
    pub fn build(self) -> SignalingServer {
        let core = SignalingCore::new(self.config);
        SignalingServer { shared: Arc::new(Shared { queue: self.queue, core, metrics: Default::default() }) }
    }
}

/// The signaling service (`proto.rpc.webrtc.v1.SignalingService`).
///
/// Matches callers (`Call` + `CallUpdate`) with answerers (`Answer`) through
/// a [`CallQueue`] and hands out ICE servers (`OptionalWebRTCConfig`).
/// Cheap to clone; every clone serves the same queue and configuration.
///
/// ```no_run
/// use std::sync::Arc;
/// use tether_signaling::{MemoryQueue, SignalingServer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let signaling = SignalingServer::new(Arc::new(MemoryQueue::new()));
/// tonic::transport::Server::builder()
///     .add_service(signaling.into_service())
///     .serve("127.0.0.1:8080".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SignalingServer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Arc<dyn CallQueue>,
    core: SignalingCore,
    metrics: crate::metrics::SignalingMetrics,
}

impl SignalingServer {
    /// A server with the default configuration.
    pub fn new(queue: Arc<dyn CallQueue>) -> Self {
        Self::builder(queue).build()
    }

    /// A builder over `queue`.
    pub fn builder(queue: Arc<dyn CallQueue>) -> SignalingServerBuilder {
        SignalingServerBuilder { queue, config: SignalingConfig::default() }
    }

    /// The effective configuration.
    pub fn config(&self) -> &SignalingConfig {
        self.shared.core.config()
    }

    /// The sans-IO core making the server's decisions (see [`crate::core`]).
    pub fn core(&self) -> &SignalingCore {
        &self.shared.core
    }

    /// The server's metrics (see [`Self::register_metrics`]).
    pub fn metrics(&self) -> &crate::metrics::SignalingMetrics {
        &self.shared.metrics
    }

    /// Counts a refused request of `rpc`.
    fn counted<T>(&self, rpc: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.shared.metrics.refused(rpc, status.code());
        }
        result
    }

    /// Counters of the call limits (pending offers and exchanges counted now).
    pub fn limit_stats(&self) -> LimitStats {
        self.shared.core.stats(Instant::now())
    }

    /// The call queue.
    pub fn queue(&self) -> &Arc<dyn CallQueue> {
        &self.shared.queue
    }

    /// The tonic service, ready for a router.
    pub fn into_service(self) -> SignalingServiceServer<SignalingServer> {
        SignalingServiceServer::new(self)
    }
}

/// Who placed a request: its authenticated entity and its peer's address
/// (from tether's server, which attaches a [`ConnectionInfo`], else from
/// tonic's own).
fn caller_of<T>(request: &Request<T>) -> Caller {
    let entity = request.extensions().get::<AuthEntity>().map(|e| e.0.clone());
    let address = request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.remote)
        .or_else(|| request.remote_addr())
        .map(|a| a.ip());
    Caller { entity, address }
}

/// The monotonic instant of a wall-clock deadline (at most a day away),
/// `now` being the monotonic now.
fn to_instant(deadline: SystemTime, now: Instant) -> Instant {
    let left = deadline.duration_since(SystemTime::now()).unwrap_or_default().min(MAX_OFFER_DEADLINE);
    now + left
}

enum Sent {
    Ok,
    Closed,
    TimedOut,
}

async fn send_until<T>(tx: &mpsc::Sender<T>, msg: T, deadline: Instant) -> Sent {
    match tokio::time::timeout_at(deadline, tx.send(msg)).await {
        Ok(Ok(())) => Sent::Ok,
        Ok(Err(_)) => Sent::Closed,
        Err(_) => Sent::TimedOut,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The request handling of the four RPCs without tonic: what the service's
/// handlers run once they have taken the request apart, and what the
/// `signaling` fuzz target drives directly. None of these spawns a task or
/// waits for anything but the call queue (and the authorization hook).
impl SignalingServer {
    /// `Call` up to the queued offer: the host, authorization, admission
    /// (size, limits), the host's presence, the queue. Returns the relay of
    /// the caller's stream and the answerer's events to feed it.
    pub async fn handle_call(
        &self,
        md: &MetadataMap,
        caller: Caller,
        req: CallRequest,
        now: Instant,
    ) -> Result<(CallRelay, BoxStream<'static, AnswererEvent>), Status> {
        let (queue, core) = (&self.shared.queue, &self.shared.core);
        let host = core.caller_host(md)?;
        let entity = caller.entity.clone().map(AuthEntity);
        core.authorize(entity.as_ref(), std::slice::from_ref(&host), Role::Caller).await?;
        let admitted = core.admit_call(&host, &caller, &req, now)?;
        if !queue.is_answerer_online(&host).await {
            return Err(Status::not_found(HOST_OFFLINE));
        }
        let init = core.offer_init(host, &caller, req);
        // The offer lives `ttl` from now (its wall-clock deadline is for the answerer).
        let deadline = now + init.ttl;
        let handle = queue.send_offer(init).await.map_err(Status::from)?;
        let relay = core.start_call(&handle.offer, admitted, deadline);
        Ok((relay, handle.events))
    }

    /// After a `Call` stream ended with `end`: tells the answerer what it
    /// needs to know (the deadline passed, the caller went away).
    pub async fn notify_answerer(&self, relay: &CallRelay, end: &CallEnd) {
        let Some(st) = end.notice() else { return };
        let (host, uuid) = (relay.host(), relay.uuid());
        let send = self.shared.queue.send_caller_event(host, uuid, CallerEvent::Error(st));
        if let Ok(Err(e)) = tokio::time::timeout(HANDLER_TIMEOUT, send).await {
            tracing::debug!(%host, %uuid, error = %e, "could not tell the answerer about the caller");
        }
    }

    /// `CallUpdate`: relays the caller's candidate, done or error.
    pub async fn handle_call_update(
        &self,
        md: &MetadataMap,
        entity: Option<&AuthEntity>,
        req: CallUpdateRequest,
    ) -> Result<(), Status> {
        let (queue, core) = (&self.shared.queue, &self.shared.core);
        let host = core.caller_host(md)?;
        core.authorize(entity, std::slice::from_ref(&host), Role::Caller).await?;
        let Some((uuid, event)) = core.caller_update(req)? else { return Ok(()) };
        let terminal = event.is_terminal();
        match tokio::time::timeout(HANDLER_TIMEOUT, queue.send_caller_event(&host, &uuid, event)).await {
            Ok(Ok(())) => {}
            // Callers race with the end of the exchange; late updates are harmless.
            Ok(Err(QueueError::NoActiveOffer(uuid))) => {
                tracing::debug!(%host, %uuid, "call update for no active offer")
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Status::deadline_exceeded("timed out relaying the call update")),
        }
        if terminal {
            core.caller_finished(&host, &uuid);
        }
        Ok(())
    }

    /// `Answer` up to the registered answerer: its session (the hosts are
    /// online while it lives) and its heartbeats, if it asked for them.
    pub async fn handle_answer(
        &self,
        md: &MetadataMap,
        entity: Option<&AuthEntity>,
        now: Instant,
    ) -> Result<(Box<dyn AnswererSession>, Option<Heartbeat>), Status> {
        let (queue, core) = (&self.shared.queue, &self.shared.core);
        let hosts = core.answer_hosts(md)?;
        core.authorize(entity, &hosts, Role::Answerer).await?;
        let heartbeat = core.heartbeats(md, now);
        let session = queue.register_answerer(hosts).await.map_err(Status::from)?;
        Ok((session, heartbeat))
    }

    /// `OptionalWebRTCConfig`.
    pub async fn handle_config(
        &self,
        md: &MetadataMap,
        entity: Option<&AuthEntity>,
    ) -> Result<OptionalWebRtcConfigResponse, Status> {
        let core = &self.shared.core;
        let hosts = core.config_hosts(md)?;
        core.authorize(entity, &hosts, Role::Config).await?;
        Ok(core.webrtc_config(&hosts))
    }
}

#[tonic::async_trait]
impl SignalingService for SignalingServer {
    type CallStream = ReceiverStream<Result<CallResponse, Status>>;
    type AnswerStream = ReceiverStream<Result<AnswerRequest, Status>>;

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<Self::CallStream>, Status> {
        let caller = caller_of(&request);
        let (md, _, req) = request.into_parts();
        let (relay, events) = self.counted("call", self.handle_call(&md, caller, req, Instant::now()).await)?;
        self.shared.metrics.calls.inc();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_call(self.clone(), relay, events, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn call_update(&self, request: Request<CallUpdateRequest>) -> Result<Response<CallUpdateResponse>, Status> {
        let (md, ext, req) = request.into_parts();
        self.counted("call_update", self.handle_call_update(&md, ext.get::<AuthEntity>(), req).await)?;
        Ok(Response::new(CallUpdateResponse {}))
    }

    async fn answer(
        &self,
        request: Request<Streaming<AnswerResponse>>,
    ) -> Result<Response<Self::AnswerStream>, Status> {
        let (md, ext, inbound) = request.into_parts();
        let entity = ext.get::<AuthEntity>().cloned();
        let (session, heartbeat) =
            self.counted("answer", self.handle_answer(&md, entity.as_ref(), Instant::now()).await)?;
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let worker = AnswerWorker { server: self.clone(), out, inbound, heartbeat, entity };
        tokio::spawn(worker.run(session));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn optional_web_rtc_config(
        &self,
        request: Request<OptionalWebRtcConfigRequest>,
    ) -> Result<Response<OptionalWebRtcConfigResponse>, Status> {
        let (md, ext, _) = request.into_parts();
        Ok(Response::new(self.counted("config", self.handle_config(&md, ext.get::<AuthEntity>()).await)?))
    }
}

/// Serves one caller's `Call` stream: relays the answerer's events until the
/// exchange ends, then tells whoever needs to know.
async fn run_call(
    server: SignalingServer,
    mut relay: CallRelay,
    mut events: BoxStream<'static, AnswererEvent>,
    tx: mpsc::Sender<Result<CallResponse, Status>>,
) {
    let deadline = relay.deadline();
    let end = 'relay: loop {
        let step = tokio::select! {
            biased;
            _ = tx.closed() => CallStep::End(CallEnd::CallerGone),
            _ = tokio::time::sleep_until(deadline) => CallStep::End(CallEnd::Deadline),
            ev = events.next() => relay.on_event(ev, Instant::now()),
        };
        let msgs = match step {
            CallStep::End(end) => break end,
            CallStep::Send(msgs) => msgs,
        };
        for msg in msgs {
            match send_until(&tx, Ok(msg), deadline).await {
                Sent::Ok => {}
                Sent::Closed => break 'relay CallEnd::CallerGone,
                Sent::TimedOut => break 'relay CallEnd::Deadline,
            }
        }
    };
    server.shared.core.end_call(&relay, &end);
    server.shared.metrics.ended(&end);
    if let Some(status) = end.status() {
        let bound = if end == CallEnd::Deadline { Duration::from_secs(1) } else { HANDLER_TIMEOUT };
        let _ = send_until(&tx, Err(status), Instant::now() + bound).await;
    }
    drop(tx);
    if end == CallEnd::CallerGone && relay.answered() {
        // Let a racing CallUpdate{done} win (the queue ignores an error after done).
        tokio::time::sleep(CALLER_GONE_GRACE.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    server.notify_answerer(&relay, &end).await;
}

/// Serves one `Answer` stream: wait for an offer, relay one exchange.
struct AnswerWorker {
    server: SignalingServer,
    out: mpsc::Sender<Result<AnswerRequest, Status>>,
    inbound: Streaming<AnswerResponse>,
    heartbeat: Option<Heartbeat>,
    /// The answerer's authenticated entity.
    entity: Option<AuthEntity>,
}

impl AnswerWorker {
    async fn run(mut self, mut session: Box<dyn AnswererSession>) {
        let exchange = {
            let recv = session.recv_offer();
            tokio::pin!(recv);
            loop {
                let beat = self.heartbeat.map(|h| h.due());
                tokio::select! {
                    biased;
                    _ = self.out.closed() => return,
                    offer = &mut recv => match offer {
                        Ok(x) => break x,
                        Err(e) => {
                            self.fail(e.into()).await;
                            return;
                        }
                    },
                    msg = self.inbound.next() => match msg {
                        // Half-closed or broken before any offer: nobody to answer.
                        None | Some(Err(_)) => return,
                        Some(Ok(_)) => {
                            self.fail(message_before_offer()).await;
                            return;
                        }
                    },
                    _ = sleep_until(beat) => if !self.heartbeat() { return },
                }
            }
        };
        self.exchange(exchange).await;
        // The session (online presence) ends with the stream.
        drop(session);
    }

    /// Sends the heartbeat that is due unless the buffer is full; `false` if
    /// the answerer is gone.
    fn heartbeat(&mut self) -> bool {
        let Some(h) = &mut self.heartbeat else { return true };
        let msg = h.fire(Instant::now());
        !matches!(self.out.try_send(Ok(msg)), Err(mpsc::error::TrySendError::Closed(_)))
    }

    async fn fail(&self, status: Status) {
        let _ = send_until(&self.out, Err(status), Instant::now() + HANDLER_TIMEOUT).await;
    }

    async fn exchange(&mut self, exchange: AnswererExchange) {
        let deadline = to_instant(exchange.offer.deadline, Instant::now());
        let (mut relay, mut caller_events, init) =
            self.server.shared.core.start_answer(exchange, self.entity.as_ref(), deadline);
        if !matches!(send_until(&self.out, Ok(init), deadline).await, Sent::Ok) {
            return;
        }
        loop {
            if relay.is_over() {
                return;
            }
            let beat = self.heartbeat.map(|h| h.due());
            tokio::select! {
                biased;
                _ = self.out.closed() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(last) = relay.on_deadline() {
                        let _ = self.out.try_send(Ok(last));
                    }
                    return;
                }
                ev = caller_events.next(), if relay.wants_caller_events() => {
                    for m in relay.on_caller(ev) {
                        if !matches!(send_until(&self.out, Ok(m), deadline).await, Sent::Ok) {
                            return;
                        }
                    }
                }
                msg = self.inbound.next(), if relay.responding() => match msg {
                    Some(Ok(resp)) => match relay.on_answerer(resp).await {
                        Ok(false) => {}
                        Ok(true) => return,
                        Err(status) => {
                            self.fail(status).await;
                            return;
                        }
                    },
                    None => relay.on_half_close(),
                    Some(Err(_)) => return,
                },
                _ = sleep_until(beat) => if !self.heartbeat() { return },
            }
        }
    }
}
