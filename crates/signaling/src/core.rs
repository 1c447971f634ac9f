//! The sans-IO core of [`SignalingServer`](crate::SignalingServer): every
//! decision the server takes about a request or a message, with no task, no
//! timer and no IO of its own (the one await: [`AnswerRelay::on_answerer`]
//! hands the answerer's events to the call queue's responder, as the
//! [`CallQueue`](crate::CallQueue) seam requires).
//!
//! * [`SignalingCore`] validates requests (`rpc-host` metadata, the host
//!   allow-list, sizes), admits calls under the [`CallLimits`](crate::CallLimits)
//!   and builds what goes into the call queue and out to answerers;
//! * [`CallRelay`] is one caller's `Call` stream: which answerer events become
//!   which `CallResponse`s, in what order, and how the stream ends;
//! * [`AnswerRelay`] is one answerer's `Answer` stream once it has an offer:
//!   stage ordering and uuids of the answerer's messages, what reaches the
//!   caller, what the answerer is sent of the caller's events;
//! * [`Heartbeat`] schedules heartbeats on idle `Answer` streams.
//!
//! The server runs these from its tasks, with the [`CallQueue`](crate::CallQueue)
//! between callers and answerers; the `signaling` fuzz target runs them
//! directly over a [`MemoryQueue`](crate::MemoryQueue), thousands of inputs a
//! second. Time is an argument ([`tokio::time::Instant`], so a paused runtime
//! drives it).

use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerRequestDoneStage, AnswerRequestErrorStage, AnswerRequestHeartbeatStage,
    AnswerRequestInitStage, AnswerRequestUpdateStage, AnswerResponse, CallRequest, CallResponse, CallResponseInitStage,
    CallResponseUpdateStage, CallUpdateRequest, IceCandidate, IceServer, OptionalWebRtcConfigResponse, WebRtcConfig,
    answer_request, answer_response, call_response, call_update_request,
};
use tether_transport::auth::AuthEntity;
use tether_transport::identity::CallerClaims;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::SignalingConfig;
use crate::auth::Role;
use crate::host::{HOST_NOT_PRECONFIGURED, multi_hosts, single_host};
use crate::limits::{Admitted, Caller, LimitStats, Limits, Slot, bounded_status, check_candidate, check_sdp};
use crate::queue::{AnswererEvent, AnswererExchange, AnswererResponder, CallerEvent, Offer, OfferInit, QueueError};
use crate::server::{ANSWERS_IN_PROCESS, HEARTBEATS_ALLOWED, MAX_HEARTBEAT_INTERVAL, MAX_OFFER_DEADLINE};

/// An answerer that runs out of events within this much of its offer's
/// deadline ran out because of the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// The decisions of one signaling server: its configuration and limits.
#[derive(Debug)]
pub struct SignalingCore {
    config: SignalingConfig,
    limits: Limits,
}

impl SignalingCore {
    /// A core with `config` (heartbeat interval clamped to 1 ms ..= 29 s,
    /// offer deadline to at most a day).
    pub fn new(mut config: SignalingConfig) -> Self {
        config.heartbeat_interval = config.heartbeat_interval.clamp(Duration::from_millis(1), MAX_HEARTBEAT_INTERVAL);
        config.offer_deadline = config.offer_deadline.min(MAX_OFFER_DEADLINE);
        let limits = Limits::new(config.call_limits);
        SignalingCore { config, limits }
    }

    /// The effective configuration.
    pub fn config(&self) -> &SignalingConfig {
        &self.config
    }

    fn check_hosts(&self, hosts: &[String]) -> Result<(), Status> {
        let allowed = &self.config.allowed_hosts;
        if allowed.as_ref().is_some_and(|list| hosts.iter().any(|h| !list.contains(h))) {
            return Err(Status::invalid_argument(HOST_NOT_PRECONFIGURED));
        }
        Ok(())
    }

    /// The one host of a `Call` or `CallUpdate`, if it is served here.
    pub fn caller_host(&self, md: &MetadataMap) -> Result<String, Status> {
        let host = single_host(md)?;
        self.check_hosts(std::slice::from_ref(&host))?;
        Ok(host)
    }

    /// The hosts of an `Answer` stream, if answerers may register here for
    /// all of them.
    pub fn answer_hosts(&self, md: &MetadataMap) -> Result<Vec<String>, Status> {
        if self.config.in_process_answerers_only {
            return Err(Status::permission_denied(ANSWERS_IN_PROCESS));
        }
        let hosts = multi_hosts(md)?;
        self.check_hosts(&hosts)?;
        Ok(hosts)
    }

    /// The hosts of an `OptionalWebRTCConfig`, if they are served here.
    pub fn config_hosts(&self, md: &MetadataMap) -> Result<Vec<String>, Status> {
        let hosts = multi_hosts(md)?;
        self.check_hosts(&hosts)?;
        Ok(hosts)
    }

    /// Consults the authorization hook (if any) for every host.
    pub async fn authorize(&self, entity: Option<&AuthEntity>, hosts: &[String], role: Role) -> Result<(), Status> {
        if let Some(authorizer) = &self.config.authorizer {
            for h in hosts {
                authorizer.authorize(entity, h, role).await?;
            }
        }
        Ok(())
    }

    /// Admits a `Call` (after its host and authorization): the offer's size,
    /// then the call limits. The returned slots go to [`Self::start_call`].
    pub fn admit_call(&self, host: &str, caller: &Caller, req: &CallRequest, now: Instant) -> Result<Admitted, Status> {
        check_sdp(&req.sdp, "offer")?;
        self.limits.admit(host, caller, now)
    }

    /// What an admitted `Call` puts into the queue.
    pub fn offer_init(&self, host: String, caller: &Caller, req: CallRequest) -> OfferInit {
        OfferInit {
            host,
            sdp: req.sdp,
            disable_trickle: req.disable_trickle,
            ttl: self.config.offer_deadline,
            caller: caller.entity.clone(),
            address: caller.address.map(crate::limits::address_key),
        }
    }

    /// The relay of a queued offer's `Call` stream, holding the call's
    /// slots; its exchange ends at `deadline`.
    pub fn start_call(&self, offer: &Offer, admitted: Admitted, deadline: Instant) -> CallRelay {
        // A caller that does not trickle has nothing more to send.
        self.limits.started(&offer.uuid, &offer.host, deadline, offer.disable_trickle, admitted.address);
        CallRelay {
            uuid: offer.uuid.clone(),
            host: offer.host.clone(),
            deadline,
            answered: false,
            early: Vec::new(),
            host_slot: admitted.host,
        }
    }

    /// The `Call` stream of `relay` ended with `end`.
    pub fn end_call(&self, relay: &CallRelay, end: &CallEnd) {
        // Answered and not hung up: the caller still finishes the exchange
        // (its done), and its address is charged until then.
        self.limits.call_ended(&relay.uuid, matches!(end, CallEnd::Finished));
    }

    /// Validates a `CallUpdate`: the uuid and caller event to relay, or
    /// `None` when there is nothing to relay (`done: false`).
    pub fn caller_update(&self, req: CallUpdateRequest) -> Result<Option<(String, CallerEvent)>, Status> {
        let event = match req.update {
            Some(call_update_request::Update::Candidate(c)) => {
                check_candidate(&c, "caller")?;
                CallerEvent::Candidate(c)
            }
            Some(call_update_request::Update::Done(true)) => CallerEvent::Done,
            Some(call_update_request::Update::Done(false)) => return Ok(None),
            Some(call_update_request::Update::Error(s)) => CallerEvent::Error(bounded_status(s)),
            None => return Err(Status::invalid_argument("expected an update")),
        };
        Ok(Some((req.uuid, event)))
    }

    /// The caller of `uuid` for `host` sent a terminal event (and the queue
    /// took it, or the exchange was over already).
    pub fn caller_finished(&self, host: &str, uuid: &str) {
        self.limits.caller_done(host, uuid);
    }

    /// Heartbeats for an `Answer` stream with this metadata (`None`: the
    /// answerer did not ask for them).
    pub fn heartbeats(&self, md: &MetadataMap, now: Instant) -> Option<Heartbeat> {
        let asked = md.get_all(HEARTBEATS_ALLOWED).iter().any(|v| v.to_str().is_ok_and(|s| s == "true"));
        asked.then(|| Heartbeat::new(self.config.heartbeat_interval, now))
    }

    /// Static ICE servers followed by TURN servers with fresh credentials;
    /// every TURN-over-UDP URL gets a TCP copy ([`crate::with_tcp_copies`]).
    pub fn ice_servers(&self, host: &str) -> Vec<IceServer> {
        let now = SystemTime::now();
        let mut servers = self.config.ice_servers.clone();
        servers.extend(self.config.turn.iter().map(|t| t.ice_server(host, now)));
        for s in &mut servers {
            s.urls = crate::with_tcp_copies(&s.urls);
        }
        servers
    }

    /// The answer to `OptionalWebRTCConfig` for `hosts`.
    pub fn webrtc_config(&self, hosts: &[String]) -> OptionalWebRtcConfigResponse {
        let host = hosts.first().map(String::as_str).unwrap_or_default();
        let config = WebRtcConfig { additional_ice_servers: self.ice_servers(host), disable_trickle: false };
        OptionalWebRtcConfigResponse { config: Some(config) }
    }

    /// An answerer (authenticated as `answerer`) claimed an offer: the
    /// exchange's relay (it ends at `deadline`), the caller's events and the
    /// init message the answerer is sent.
    pub fn start_answer(
        &self,
        exchange: AnswererExchange,
        answerer: Option<&AuthEntity>,
        deadline: Instant,
    ) -> (AnswerRelay, BoxStream<'static, CallerEvent>, AnswerRequest) {
        let AnswererExchange { offer, caller_events, responder } = exchange;
        let tether_caller_assertion = self.vouch(&offer, answerer);
        let init = AnswerRequest {
            uuid: offer.uuid.clone(),
            stage: Some(answer_request::Stage::Init(AnswerRequestInitStage {
                optional_config: Some(WebRtcConfig {
                    additional_ice_servers: self.ice_servers(&offer.host),
                    disable_trickle: offer.disable_trickle,
                }),
                deadline: Some(offer.deadline.into()),
                sdp: offer.sdp,
                tether_caller_assertion,
            })),
        };
        let relay = AnswerRelay {
            uuid: offer.uuid,
            deadline,
            responder: Some(responder),
            answered: false,
            caller_finished: false,
        };
        (relay, caller_events, init)
    }

    /// The caller assertion for `offer`, when the caller was authenticated
    /// and this answerer has a vouch key; empty otherwise.
    fn vouch(&self, offer: &Offer, answerer: Option<&AuthEntity>) -> String {
        let (Some(caller), Some(AuthEntity(answerer)), Some(keys)) = (&offer.caller, answerer, &self.config.vouch_keys)
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

    /// Counters of the limits at `now`.
    pub fn stats(&self, now: Instant) -> LimitStats {
        self.limits.stats(now)
    }
}

/// The status an `Answer` stream ends with when the answerer sends a message
/// before it was given an offer.
pub fn message_before_offer() -> Status {
    Status::invalid_argument("unexpected answerer message before an offer")
}

fn rpc_status(code: Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus { code: code as i32, message: message.into(), details: Vec::new() }
}

/// Heartbeats of an idle `Answer` stream: one every period, counted from the
/// previous one (a late one is not made up for).
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    period: Duration,
    next: Instant,
}

impl Heartbeat {
    /// The first heartbeat is due a period after `now`.
    pub fn new(period: Duration, now: Instant) -> Self {
        Heartbeat { period, next: now + period }
    }

    /// When the next heartbeat is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// The heartbeat due now (call at or after [`Self::due`]).
    pub fn fire(&mut self, now: Instant) -> AnswerRequest {
        self.next = now + self.period;
        AnswerRequest {
            uuid: String::new(),
            stage: Some(answer_request::Stage::Heartbeat(AnswerRequestHeartbeatStage {})),
        }
    }
}

/// How a `Call` stream ends.
#[derive(Clone, Debug, PartialEq)]
pub enum CallEnd {
    /// The answerer is done (or went away after answering): OK.
    Finished,
    /// The offer deadline passed.
    Deadline,
    /// The answerer failed.
    AnswererError(RpcStatus),
    /// The answerer went away (or finished) without answering.
    AnswererGone(&'static str),
    /// The caller hung up.
    CallerGone,
}

impl CallEnd {
    /// The status the caller's stream ends with (`None`: OK).
    pub fn status(&self) -> Option<Status> {
        match self {
            CallEnd::Finished | CallEnd::CallerGone => None,
            CallEnd::Deadline => {
                Some(Status::deadline_exceeded("offer deadline exceeded before the answerer finished"))
            }
            CallEnd::AnswererError(st) => {
                let code = match Code::from(st.code) {
                    Code::Ok => Code::Unknown,
                    c => c,
                };
                Some(Status::new(code, format!("error from answerer: {}", st.message)))
            }
            CallEnd::AnswererGone(why) => Some(Status::unavailable(*why)),
        }
    }

    /// What the answerer is told about the caller (`None`: nothing).
    pub fn notice(&self) -> Option<RpcStatus> {
        match self {
            CallEnd::Deadline => Some(rpc_status(Code::DeadlineExceeded, "caller's offer deadline exceeded")),
            CallEnd::CallerGone => Some(rpc_status(Code::Cancelled, "caller went away")),
            _ => None,
        }
    }
}

/// What a [`CallRelay`] does with an input.
#[derive(Debug, PartialEq)]
pub enum CallStep {
    /// Send these messages (possibly none) to the caller, in order.
    Send(Vec<CallResponse>),
    /// End the stream.
    End(CallEnd),
}

/// One caller's `Call` stream.
#[derive(Debug)]
pub struct CallRelay {
    uuid: String,
    host: String,
    deadline: Instant,
    answered: bool,
    /// Candidates that (against the protocol) arrive before the answer.
    early: Vec<IceCandidate>,
    /// The call's pending slot for its host, released once answered.
    host_slot: Option<Slot>,
}

impl CallRelay {
    /// The exchange's uuid.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The host called.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// When the exchange must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The caller has been sent the answer.
    pub fn answered(&self) -> bool {
        self.answered
    }

    fn update(&self, candidate: IceCandidate) -> CallResponse {
        CallResponse {
            uuid: self.uuid.clone(),
            stage: Some(call_response::Stage::Update(CallResponseUpdateStage { candidate: Some(candidate) })),
        }
    }

    /// The next answerer event (`None`: the answerer's events ended) at `now`.
    pub fn on_event(&mut self, event: Option<AnswererEvent>, now: Instant) -> CallStep {
        let mut out = Vec::new();
        match event {
            Some(AnswererEvent::Answer(sdp)) => {
                if self.answered {
                    tracing::warn!(uuid = %self.uuid, "answerer sent a second answer; ignored");
                    return CallStep::Send(out);
                }
                self.answered = true;
                // No longer pending once answered.
                self.host_slot = None;
                out.push(CallResponse {
                    uuid: self.uuid.clone(),
                    stage: Some(call_response::Stage::Init(CallResponseInitStage { sdp })),
                });
                let early = std::mem::take(&mut self.early);
                out.extend(early.into_iter().map(|c| self.update(c)));
            }
            Some(AnswererEvent::Candidate(c)) if self.answered => out.push(self.update(c)),
            Some(AnswererEvent::Candidate(c)) => self.early.push(c),
            Some(AnswererEvent::Done) if self.answered => return CallStep::End(CallEnd::Finished),
            Some(AnswererEvent::Done) => {
                return CallStep::End(CallEnd::AnswererGone("answerer finished without answering"));
            }
            Some(AnswererEvent::Error(st)) => return CallStep::End(CallEnd::AnswererError(st)),
            None if self.answered => return CallStep::End(CallEnd::Finished),
            None if now + DEADLINE_SLACK >= self.deadline => return CallStep::End(CallEnd::Deadline),
            None => return CallStep::End(CallEnd::AnswererGone("answerer went away before answering")),
        }
        CallStep::Send(out)
    }
}

/// What to do with a valid answerer message.
struct AnswerAction {
    /// Relay this to the caller.
    relay: Option<AnswererEvent>,
    /// End the `Answer` stream with OK afterwards.
    stop: bool,
}

/// One answerer's `Answer` stream, from the init of its offer on.
pub struct AnswerRelay {
    uuid: String,
    deadline: Instant,
    /// Relays the answerer's events to the caller; dropped once the answerer
    /// cannot respond any more (done, error, half-close, the caller's error),
    /// which tells the queue.
    responder: Option<Box<dyn AnswererResponder>>,
    answered: bool,
    /// The caller sent done or an error, or its events ended.
    caller_finished: bool,
}

impl std::fmt::Debug for AnswerRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerRelay")
            .field("uuid", &self.uuid)
            .field("deadline", &self.deadline)
            .field("responding", &self.responding())
            .field("answered", &self.answered)
            .field("caller_finished", &self.caller_finished)
            .finish()
    }
}

impl AnswerRelay {
    /// The exchange's uuid.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// When the exchange must be over.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the answerer's messages are still read.
    pub fn responding(&self) -> bool {
        self.responder.is_some()
    }

    /// Whether the caller's events are still relayed.
    pub fn wants_caller_events(&self) -> bool {
        !self.caller_finished
    }

    /// Both sides are finished: end the stream with OK.
    pub fn is_over(&self) -> bool {
        self.caller_finished && !self.responding()
    }

    fn request(&self, stage: answer_request::Stage) -> AnswerRequest {
        AnswerRequest { uuid: self.uuid.clone(), stage: Some(stage) }
    }

    fn done(&self) -> AnswerRequest {
        self.request(answer_request::Stage::Done(AnswerRequestDoneStage {}))
    }

    /// Handles one answerer message: validates it and relays what it says
    /// to the caller (through the queue, within the deadline). `Ok(true)`:
    /// end the stream with OK; `Err`: the answerer broke the protocol (the
    /// caller has been told) or the queue failed; end the stream with it.
    pub async fn on_answerer(&mut self, resp: AnswerResponse) -> Result<bool, Status> {
        let result = match self.validate(resp) {
            Ok(action) => {
                let relayed = match action.relay {
                    Some(event) => self.relay(event).await,
                    None => Ok(()),
                };
                relayed.map(|()| action.stop)
            }
            Err(status) => Err(status),
        };
        if let Err(status) = &result {
            // Tell the caller (if it is still listening) that the answerer broke the protocol.
            let st = rpc_status(Code::Unknown, format!("answerer protocol error: {}", status.message()));
            let _ = self.respond(AnswererEvent::Error(st)).await;
        }
        result
    }

    /// Relays one event, dropping the responder after a terminal one.
    async fn relay(&mut self, event: AnswererEvent) -> Result<(), Status> {
        let terminal = event.is_terminal();
        let result = self.respond(event).await;
        if terminal {
            self.responder = None;
        }
        match result {
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

    async fn respond(&self, event: AnswererEvent) -> Result<(), QueueError> {
        let Some(responder) = &self.responder else { return Ok(()) };
        match tokio::time::timeout_at(self.deadline, responder.respond(event)).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Unavailable("timed out relaying to the caller".into())),
        }
    }

    /// What an answerer message means, if it is valid here.
    fn validate(&mut self, resp: AnswerResponse) -> Result<AnswerAction, Status> {
        if resp.uuid != self.uuid {
            return Err(Status::invalid_argument(format!("uuid mismatch; have={:?} want={:?}", resp.uuid, self.uuid)));
        }
        let (relay, stop) = match resp.stage {
            Some(answer_response::Stage::Init(init)) => {
                if self.answered {
                    return Err(Status::invalid_argument("got init stage more than once"));
                }
                check_sdp(&init.sdp, "answer")?;
                self.answered = true;
                (Some(AnswererEvent::Answer(init.sdp)), false)
            }
            Some(answer_response::Stage::Update(update)) => {
                if !self.answered {
                    return Err(Status::invalid_argument("got update stage before init stage"));
                }
                match update.candidate {
                    Some(c) => {
                        check_candidate(&c, "answerer")?;
                        (Some(AnswererEvent::Candidate(c)), false)
                    }
                    None => {
                        tracing::debug!(uuid = %self.uuid, "answerer update without a candidate; ignored");
                        (None, false)
                    }
                }
            }
            Some(answer_response::Stage::Done(_)) => {
                if !self.answered {
                    return Err(Status::invalid_argument("got done stage before init stage"));
                }
                (Some(AnswererEvent::Done), false)
            }
            Some(answer_response::Stage::Error(e)) => {
                let status = e.status.unwrap_or_else(|| rpc_status(Code::Unknown, "answerer error without a status"));
                // The answerer gave up; the caller learns it from its Call stream.
                (Some(AnswererEvent::Error(bounded_status(status))), true)
            }
            None => return Err(Status::invalid_argument("unknown answer stage")),
        };
        Ok(AnswerAction { relay, stop })
    }

    /// The answerer half-closed its stream: it cannot respond any more, but
    /// it may still read what the caller sends until the caller is done.
    pub fn on_half_close(&mut self) {
        self.responder = None;
    }

    /// The next caller event (`None`: the caller's events ended): the
    /// messages for the answerer, in order.
    pub fn on_caller(&mut self, event: Option<CallerEvent>) -> Vec<AnswerRequest> {
        match event {
            Some(CallerEvent::Candidate(c)) => {
                vec![self.request(answer_request::Stage::Update(AnswerRequestUpdateStage { candidate: Some(c) }))]
            }
            Some(CallerEvent::Error(st)) => {
                // The caller gave up: relay the error, then done, and end.
                self.caller_finished = true;
                self.responder = None;
                let error = self.request(answer_request::Stage::Error(AnswerRequestErrorStage { status: Some(st) }));
                vec![error, self.done()]
            }
            // Done, or the offer is gone.
            Some(CallerEvent::Done) | None => {
                self.caller_finished = true;
                vec![self.done()]
            }
        }
    }

    /// The deadline passed: the last message for the answerer (done, unless
    /// the caller finished already); the stream ends.
    pub fn on_deadline(&mut self) -> Option<AnswerRequest> {
        let last = (!self.caller_finished).then(|| self.done());
        self.caller_finished = true;
        self.responder = None;
        last
    }
}
