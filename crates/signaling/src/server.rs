//! [`SignalingServer`]: `proto.rpc.webrtc.v1.SignalingService` over a
//! [`CallQueue`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerRequestDoneStage, AnswerRequestErrorStage, AnswerRequestHeartbeatStage,
    AnswerRequestInitStage, AnswerRequestUpdateStage, AnswerResponse, CallRequest, CallResponse, CallResponseInitStage,
    CallResponseUpdateStage, CallUpdateRequest, CallUpdateResponse, IceCandidate, IceServer,
    OptionalWebRtcConfigRequest, OptionalWebRtcConfigResponse, WebRtcConfig, answer_request, answer_response,
    call_response, call_update_request,
    signaling_service_server::{SignalingService, SignalingServiceServer},
};
use tether_transport::auth::AuthEntity;
use tether_transport::identity::{CallerClaims, VouchKey};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::{Authorizer, Role};
use crate::grants::{CallLimits, PendingCalls, PendingSlot, RateLimiter};
use crate::host::{HOST_NOT_PRECONFIGURED, HostAllowList, multi_hosts, single_host};
use crate::ice::TurnRestConfig;
use crate::queue::{
    AnswererEvent, AnswererExchange, AnswererResponder, CallQueue, CallerEvent, CallerHandle, Offer, OfferInit,
    QueueError,
};

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

    /// Limits `Call`: per-caller rate (keyed by the authenticated entity, or
    /// the peer address without auth; RESOURCE_EXHAUSTED `request exceeds
    /// rate limit …`) and concurrent unanswered calls per host
    /// (RESOURCE_EXHAUSTED).
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
        let mut config = self.config;
        config.heartbeat_interval = config.heartbeat_interval.clamp(Duration::from_millis(1), MAX_HEARTBEAT_INTERVAL);
        config.offer_deadline = config.offer_deadline.min(MAX_OFFER_DEADLINE);
        let rate = config.call_limits.rate_per_minute.map(RateLimiter::new);
        SignalingServer {
            shared: Arc::new(Shared { queue: self.queue, config, rate, pending: PendingCalls::default() }),
        }
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
    config: SignalingConfig,
    rate: Option<RateLimiter>,
    pending: PendingCalls,
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
        &self.shared.config
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

impl Shared {
    fn check_hosts(&self, hosts: &[String]) -> Result<(), Status> {
        let allowed = &self.config.allowed_hosts;
        if allowed.as_ref().is_some_and(|list| hosts.iter().any(|h| !list.contains(h))) {
            return Err(Status::invalid_argument(HOST_NOT_PRECONFIGURED));
        }
        Ok(())
    }

    async fn authorize<T>(&self, request: &Request<T>, hosts: &[String], role: Role) -> Result<(), Status> {
        if let Some(authorizer) = &self.config.authorizer {
            let entity = request.extensions().get::<AuthEntity>();
            for h in hosts {
                authorizer.authorize(entity, h, role).await?;
            }
        }
        Ok(())
    }

    /// Static servers followed by TURN servers with fresh credentials.
    fn ice_servers(&self, host: &str) -> Vec<IceServer> {
        let now = SystemTime::now();
        let mut servers = self.config.ice_servers.clone();
        servers.extend(self.config.turn.iter().map(|t| t.ice_server(host, now)));
        servers
    }
}

/// Who a `Call` is rate-limited as: the authenticated entity, else the
/// peer's IP address.
fn caller_key<T>(request: &Request<T>) -> String {
    match request.extensions().get::<AuthEntity>() {
        Some(AuthEntity(e)) => format!("entity:{e}"),
        None => match request.remote_addr() {
            Some(addr) => format!("ip:{}", addr.ip()),
            None => "anonymous".to_owned(),
        },
    }
}

/// The monotonic instant of a wall-clock deadline (at most a day away).
fn to_instant(deadline: SystemTime) -> Instant {
    let left = deadline.duration_since(SystemTime::now()).unwrap_or_default().min(MAX_OFFER_DEADLINE);
    Instant::now() + left
}

fn rpc_status(code: Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus { code: code as i32, message: message.into(), details: Vec::new() }
}

/// The caller-facing status for an answerer's error.
fn answerer_error(st: &RpcStatus) -> Status {
    let code = match Code::from(st.code) {
        Code::Ok => Code::Unknown,
        c => c,
    };
    Status::new(code, format!("error from answerer: {}", st.message))
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

async fn tick(heartbeat: &mut Option<Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[tonic::async_trait]
impl SignalingService for SignalingServer {
    type CallStream = ReceiverStream<Result<CallResponse, Status>>;
    type AnswerStream = ReceiverStream<Result<AnswerRequest, Status>>;

    async fn call(&self, request: Request<CallRequest>) -> Result<Response<Self::CallStream>, Status> {
        let shared = &self.shared;
        let host = single_host(request.metadata())?;
        let hosts = [host];
        shared.check_hosts(&hosts)?;
        shared.authorize(&request, &hosts, Role::Caller).await?;
        let [host] = hosts;
        if let Some(rate) = &shared.rate {
            rate.check(&caller_key(&request))?;
        }
        let slot = match shared.config.call_limits.max_pending_per_host {
            Some(max) => Some(shared.pending.acquire(&host, max)?),
            None => None,
        };
        if !shared.queue.is_answerer_online(&host).await {
            return Err(Status::not_found(HOST_OFFLINE));
        }
        let caller_entity = request.extensions().get::<AuthEntity>().map(|e| e.0.clone());
        let req = request.into_inner();
        let init = OfferInit {
            host: host.clone(),
            sdp: req.sdp,
            disable_trickle: req.disable_trickle,
            ttl: shared.config.offer_deadline,
            caller: caller_entity,
        };
        let handle = shared.queue.send_offer(init).await.map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_call(shared.queue.clone(), host, handle, tx, slot));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn call_update(&self, request: Request<CallUpdateRequest>) -> Result<Response<CallUpdateResponse>, Status> {
        let shared = &self.shared;
        let host = single_host(request.metadata())?;
        let hosts = [host];
        shared.check_hosts(&hosts)?;
        shared.authorize(&request, &hosts, Role::Caller).await?;
        let [host] = hosts;
        let req = request.into_inner();
        let event = match req.update {
            Some(call_update_request::Update::Candidate(c)) => CallerEvent::Candidate(c),
            Some(call_update_request::Update::Done(true)) => CallerEvent::Done,
            Some(call_update_request::Update::Done(false)) => return Ok(Response::new(CallUpdateResponse {})),
            Some(call_update_request::Update::Error(s)) => CallerEvent::Error(s),
            None => return Err(Status::invalid_argument("expected an update")),
        };
        match tokio::time::timeout(HANDLER_TIMEOUT, shared.queue.send_caller_event(&host, &req.uuid, event)).await {
            Ok(Ok(())) => {}
            // Callers race with the end of the exchange; late updates are harmless.
            Ok(Err(QueueError::NoActiveOffer(uuid))) => {
                tracing::debug!(%host, %uuid, "call update for no active offer")
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Status::deadline_exceeded("timed out relaying the call update")),
        }
        Ok(Response::new(CallUpdateResponse {}))
    }

    async fn answer(
        &self,
        request: Request<Streaming<AnswerResponse>>,
    ) -> Result<Response<Self::AnswerStream>, Status> {
        let shared = &self.shared;
        if shared.config.in_process_answerers_only {
            return Err(Status::permission_denied(ANSWERS_IN_PROCESS));
        }
        let hosts = multi_hosts(request.metadata())?;
        shared.check_hosts(&hosts)?;
        shared.authorize(&request, &hosts, Role::Answerer).await?;
        let heartbeats =
            request.metadata().get_all(HEARTBEATS_ALLOWED).iter().any(|v| v.to_str().is_ok_and(|s| s == "true"));
        let session = shared.queue.register_answerer(hosts).await.map_err(Status::from)?;
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let heartbeat = heartbeats.then(|| {
            let period = shared.config.heartbeat_interval;
            let mut i = tokio::time::interval_at(Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let entity = request.extensions().get::<AuthEntity>().cloned();
        let worker =
            AnswerWorker { shared: self.shared.clone(), out, inbound: request.into_inner(), heartbeat, entity };
        tokio::spawn(worker.run(session));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn optional_web_rtc_config(
        &self,
        request: Request<OptionalWebRtcConfigRequest>,
    ) -> Result<Response<OptionalWebRtcConfigResponse>, Status> {
        let shared = &self.shared;
        let hosts = multi_hosts(request.metadata())?;
        shared.check_hosts(&hosts)?;
        shared.authorize(&request, &hosts, Role::Config).await?;
        let host = hosts.first().map(String::as_str).unwrap_or_default();
        let config = WebRtcConfig { additional_ice_servers: shared.ice_servers(host), disable_trickle: false };
        Ok(Response::new(OptionalWebRtcConfigResponse { config: Some(config) }))
    }
}

/// How a Call stream ends.
enum CallEnd {
    /// The answerer is done (or went away after answering): end with OK.
    Finished,
    Deadline,
    AnswererError(RpcStatus),
    /// The answerer went away (or finished) without answering.
    AnswererGone(&'static str),
    CallerGone,
}

/// Relays answerer events to one caller's `Call` stream.
async fn run_call(
    queue: Arc<dyn CallQueue>,
    host: String,
    handle: CallerHandle,
    tx: mpsc::Sender<Result<CallResponse, Status>>,
    mut pending: Option<PendingSlot>,
) {
    let CallerHandle { offer, mut events } = handle;
    let uuid = offer.uuid;
    let deadline = to_instant(offer.deadline);
    let mut answered = false;
    // Candidates that (against the protocol) arrive before the answer.
    let mut early: Vec<IceCandidate> = Vec::new();
    let update = |c: IceCandidate| CallResponse {
        uuid: uuid.clone(),
        stage: Some(call_response::Stage::Update(CallResponseUpdateStage { candidate: Some(c) })),
    };
    let end = 'relay: loop {
        let event = tokio::select! {
            biased;
            _ = tx.closed() => break CallEnd::CallerGone,
            _ = tokio::time::sleep_until(deadline) => break CallEnd::Deadline,
            ev = events.next() => ev,
        };
        let mut outgoing = Vec::new();
        match event {
            Some(AnswererEvent::Answer(sdp)) => {
                if answered {
                    tracing::warn!(%uuid, "answerer sent a second answer; ignored");
                    continue;
                }
                answered = true;
                // No longer pending once answered.
                drop(pending.take());
                outgoing.push(CallResponse {
                    uuid: uuid.clone(),
                    stage: Some(call_response::Stage::Init(CallResponseInitStage { sdp })),
                });
                outgoing.extend(early.drain(..).map(update));
            }
            Some(AnswererEvent::Candidate(c)) if answered => outgoing.push(update(c)),
            Some(AnswererEvent::Candidate(c)) => early.push(c),
            Some(AnswererEvent::Done) if answered => break CallEnd::Finished,
            Some(AnswererEvent::Done) => break CallEnd::AnswererGone("answerer finished without answering"),
            Some(AnswererEvent::Error(st)) => break CallEnd::AnswererError(st),
            None if answered => break CallEnd::Finished,
            None if Instant::now() + Duration::from_millis(50) >= deadline => break CallEnd::Deadline,
            None => break CallEnd::AnswererGone("answerer went away before answering"),
        }
        for msg in outgoing {
            match send_until(&tx, Ok(msg), deadline).await {
                Sent::Ok => {}
                Sent::Closed => break 'relay CallEnd::CallerGone,
                Sent::TimedOut => break 'relay CallEnd::Deadline,
            }
        }
    };
    let notify = match end {
        CallEnd::Finished => None,
        CallEnd::Deadline => {
            let status = Status::deadline_exceeded("offer deadline exceeded before the answerer finished");
            let _ = send_until(&tx, Err(status), Instant::now() + Duration::from_secs(1)).await;
            Some(rpc_status(Code::DeadlineExceeded, "caller's offer deadline exceeded"))
        }
        CallEnd::AnswererError(st) => {
            let _ = send_until(&tx, Err(answerer_error(&st)), Instant::now() + HANDLER_TIMEOUT).await;
            None
        }
        CallEnd::AnswererGone(why) => {
            let _ = send_until(&tx, Err(Status::unavailable(why)), Instant::now() + HANDLER_TIMEOUT).await;
            None
        }
        CallEnd::CallerGone => {
            if answered {
                // Let a racing CallUpdate{done} win (the queue ignores an error after done).
                tokio::time::sleep(CALLER_GONE_GRACE.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
            Some(rpc_status(Code::Cancelled, "caller went away"))
        }
    };
    if let Some(st) = notify {
        let send = queue.send_caller_event(&host, &uuid, CallerEvent::Error(st));
        if let Ok(Err(e)) = tokio::time::timeout(HANDLER_TIMEOUT, send).await {
            tracing::debug!(%host, %uuid, error = %e, "could not tell the answerer about the caller");
        }
    }
}

/// Serves one `Answer` stream: wait for an offer, relay one exchange.
struct AnswerWorker {
    shared: Arc<Shared>,
    out: mpsc::Sender<Result<AnswerRequest, Status>>,
    inbound: Streaming<AnswerResponse>,
    heartbeat: Option<Interval>,
    /// The answerer's authenticated entity.
    entity: Option<AuthEntity>,
}

/// What to do after an answerer message.
enum Next {
    Continue,
    /// End the RPC with OK.
    Stop,
}

impl AnswerWorker {
    async fn run(mut self, mut session: Box<dyn crate::queue::AnswererSession>) {
        let exchange = {
            let recv = session.recv_offer();
            tokio::pin!(recv);
            loop {
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
                            self.fail(Status::invalid_argument("unexpected answerer message before an offer")).await;
                            return;
                        }
                    },
                    _ = tick(&mut self.heartbeat) => if !self.heartbeat() { return },
                }
            }
        };
        self.exchange(exchange).await;
        // The session (online presence) ends with the stream.
        drop(session);
    }

    /// Sends a heartbeat unless the buffer is full; `false` if the answerer is gone.
    fn heartbeat(&self) -> bool {
        let msg = AnswerRequest {
            uuid: String::new(),
            stage: Some(answer_request::Stage::Heartbeat(AnswerRequestHeartbeatStage {})),
        };
        !matches!(self.out.try_send(Ok(msg)), Err(mpsc::error::TrySendError::Closed(_)))
    }

    /// The caller assertion for `offer`, when the caller was authenticated
    /// and this answerer has a vouch key; empty otherwise.
    fn vouch(&self, offer: &Offer) -> String {
        let (Some(caller), Some(AuthEntity(answerer)), Some(keys)) =
            (&offer.caller, &self.entity, &self.shared.config.vouch_keys)
        else {
            return String::new();
        };
        let Some(key) = keys(answerer) else { return String::new() };
        // An offer whose SDP cannot be read names no peer; the answerer
        // rejects it anyway.
        let fp = match tether_transport::webrtc::sdp::decode(&offer.sdp) {
            Ok((_, sdp)) => tether_transport::webrtc::sdp::fingerprints(&sdp),
            Err(_) => return String::new(),
        };
        let ttl = offer.deadline.duration_since(SystemTime::now()).unwrap_or_default().as_secs() + 1;
        match key.sign(&CallerClaims::new(caller.clone(), offer.host.clone(), offer.uuid.clone(), fp, ttl)) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(uuid = %offer.uuid, "could not vouch for the caller: {e}");
                String::new()
            }
        }
    }

    async fn fail(&self, status: Status) {
        let _ = send_until(&self.out, Err(status), Instant::now() + HANDLER_TIMEOUT).await;
    }

    async fn exchange(&mut self, exchange: AnswererExchange) {
        let AnswererExchange { offer, mut caller_events, responder } = exchange;
        let deadline = to_instant(offer.deadline);
        let uuid = offer.uuid.clone();
        let tether_caller_assertion = self.vouch(&offer);
        let init = AnswerRequest {
            uuid: uuid.clone(),
            stage: Some(answer_request::Stage::Init(AnswerRequestInitStage {
                sdp: offer.sdp,
                optional_config: Some(WebRtcConfig {
                    additional_ice_servers: self.shared.ice_servers(&offer.host),
                    disable_trickle: offer.disable_trickle,
                }),
                deadline: Some(offer.deadline.into()),
                tether_caller_assertion,
            })),
        };
        if !matches!(send_until(&self.out, Ok(init), deadline).await, Sent::Ok) {
            return;
        }
        let mut relay = Relay { uuid, deadline, responder: Some(responder), answered: false };
        let mut caller_finished = false;
        loop {
            if caller_finished && relay.responder.is_none() {
                return;
            }
            tokio::select! {
                biased;
                _ = self.out.closed() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    if !caller_finished {
                        let _ = self.out.try_send(Ok(relay.done()));
                    }
                    return;
                }
                ev = next_caller_event(&mut caller_events), if !caller_finished => {
                    let msgs = match ev {
                        Some(CallerEvent::Candidate(c)) => vec![relay.update(c)],
                        Some(CallerEvent::Error(st)) => {
                            // The caller gave up: relay the error, then done, and end.
                            caller_finished = true;
                            relay.responder = None;
                            vec![relay.error(st), relay.done()]
                        }
                        // Done, or the offer is gone.
                        Some(CallerEvent::Done) | None => {
                            caller_finished = true;
                            vec![relay.done()]
                        }
                    };
                    for m in msgs {
                        if !matches!(send_until(&self.out, Ok(m), deadline).await, Sent::Ok) {
                            return;
                        }
                    }
                }
                msg = self.inbound.next(), if relay.responder.is_some() => match msg {
                    Some(Ok(resp)) => match relay.handle(resp).await {
                        Ok(Next::Continue) => {}
                        Ok(Next::Stop) => return,
                        Err(status) => {
                            relay.tell_caller_protocol_error(&status).await;
                            self.fail(status).await;
                            return;
                        }
                    },
                    // Half-closed: the answerer cannot respond any more, but it
                    // may still read what the caller sends until the caller is done.
                    None => relay.responder = None,
                    Some(Err(_)) => return,
                },
                _ = tick(&mut self.heartbeat) => if !self.heartbeat() { return },
            }
        }
    }
}

async fn next_caller_event(events: &mut BoxStream<'static, CallerEvent>) -> Option<CallerEvent> {
    events.next().await
}

/// The answerer half of one exchange.
struct Relay {
    uuid: String,
    deadline: Instant,
    /// `None` once the answerer finished (done, error, half-close).
    responder: Option<Box<dyn AnswererResponder>>,
    answered: bool,
}

impl Relay {
    fn request(&self, stage: answer_request::Stage) -> AnswerRequest {
        AnswerRequest { uuid: self.uuid.clone(), stage: Some(stage) }
    }

    fn update(&self, candidate: IceCandidate) -> AnswerRequest {
        self.request(answer_request::Stage::Update(AnswerRequestUpdateStage { candidate: Some(candidate) }))
    }

    fn done(&self) -> AnswerRequest {
        self.request(answer_request::Stage::Done(AnswerRequestDoneStage {}))
    }

    fn error(&self, status: RpcStatus) -> AnswerRequest {
        self.request(answer_request::Stage::Error(AnswerRequestErrorStage { status: Some(status) }))
    }

    async fn respond(&mut self, event: AnswererEvent) -> Result<(), Status> {
        let terminal = event.is_terminal();
        let Some(responder) = &self.responder else { return Ok(()) };
        let res = match tokio::time::timeout_at(self.deadline, responder.respond(event)).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Unavailable("timed out relaying to the caller".into())),
        };
        if terminal {
            self.responder = None;
        }
        match res {
            Ok(()) => Ok(()),
            // The caller's side is finished or expired; keep the stream going
            // until the caller events end it.
            Err(QueueError::NoActiveOffer(_)) => {
                tracing::debug!(uuid = %self.uuid, "answerer event for an offer that is gone");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Validates and relays one answerer message.
    async fn handle(&mut self, resp: AnswerResponse) -> Result<Next, Status> {
        if resp.uuid != self.uuid {
            return Err(Status::invalid_argument(format!("uuid mismatch; have={:?} want={:?}", resp.uuid, self.uuid)));
        }
        match resp.stage {
            Some(answer_response::Stage::Init(init)) => {
                if self.answered {
                    return Err(Status::invalid_argument("got init stage more than once"));
                }
                self.answered = true;
                self.respond(AnswererEvent::Answer(init.sdp)).await?;
            }
            Some(answer_response::Stage::Update(update)) => {
                if !self.answered {
                    return Err(Status::invalid_argument("got update stage before init stage"));
                }
                match update.candidate {
                    Some(c) => self.respond(AnswererEvent::Candidate(c)).await?,
                    None => tracing::debug!(uuid = %self.uuid, "answerer update without a candidate; ignored"),
                }
            }
            Some(answer_response::Stage::Done(_)) => {
                if !self.answered {
                    return Err(Status::invalid_argument("got done stage before init stage"));
                }
                self.respond(AnswererEvent::Done).await?;
            }
            Some(answer_response::Stage::Error(e)) => {
                let status = e.status.unwrap_or_else(|| rpc_status(Code::Unknown, "answerer error without a status"));
                self.respond(AnswererEvent::Error(status)).await?;
                // The answerer gave up; the caller learns it from its Call stream.
                return Ok(Next::Stop);
            }
            None => return Err(Status::invalid_argument("unknown answer stage")),
        }
        Ok(Next::Continue)
    }

    /// Tells the caller (if it is still listening) that the answerer broke
    /// the protocol.
    async fn tell_caller_protocol_error(&mut self, status: &Status) {
        let st = rpc_status(Code::Unknown, format!("answerer protocol error: {}", status.message()));
        let _ = self.respond(AnswererEvent::Error(st)).await;
    }
}
