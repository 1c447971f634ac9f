//! The signaling service's request handling (`SignalingServer` over a
//! `MemoryQueue`), driven directly: the handlers of `Call`, `CallUpdate`,
//! `Answer` and `OptionalWebRTCConfig` as the tonic service runs them
//! (`SignalingServer::handle_*`), and the sans-IO relays of Call and Answer
//! streams (`tether_signaling::core`) fed message by message, as the server's
//! stream tasks feed them. Interleaved callers and answerers, arbitrary
//! `rpc-host` metadata, auth entities, caller addresses, known and bogus
//! uuids, out-of-order stages, huge strings, undecodable protobuf and broken
//! gRPC framing (what tonic would refuse never reaches a handler; a broken
//! Answer stream ends it).
//!
//! No task, no tonic and no real time: one paused current-thread runtime,
//! reused across inputs, provides the clock (the queue's expiry and presence
//! run on it), and the harness jumps from one deadline to the next. Besides
//! "never panics" it checks what callers and answerers rely on:
//! * every handler returns at once (request handling never waits on the
//!   in-memory queue);
//! * a Call stream carries one uuid, an init (an answerer's SDP) before any
//!   update, at most one init, ends with a status, OK only after an init, and
//!   by its offer deadline (plus the caller-gone grace);
//! * an Answer stream sends heartbeats (empty uuid) only when asked, then
//!   one init (a caller's SDP), and then only that uuid, no update after done;
//!   once it has an offer it ends by the offer deadline; a caller assertion
//!   (servers that vouch for callers) goes only to the answerer it is keyed
//!   for and verifies for exactly that call, host and offer;
//! * nothing larger than the size limits is queued or relayed;
//! * the caps hold: unanswered offers per host never exceed the cap plus one
//!   per caller address holding one (a host's cap never refuses an address
//!   with no pending call for it), exchanges per caller address never exceed
//!   theirs, and the server counts exactly the exchanges the rules say are in
//!   progress;
//! * once every client is gone and the deadlines have passed, nothing is left:
//!   no offer, answerer session, pending offer or exchange.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Result as AResult, Unstructured};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerResponse, AnswerResponseDoneStage, AnswerResponseErrorStage, AnswerResponseInitStage,
    AnswerResponseUpdateStage, CallRequest, CallResponse, CallUpdateRequest, IceCandidate, OptionalWebRtcConfigRequest,
    answer_request, answer_response, call_response, call_update_request,
};
use tether_signaling::core::{AnswerRelay, CallEnd, CallRelay, CallStep, Heartbeat, message_before_offer};
use tether_signaling::{
    AnswererEvent, AnswererSession, CallLimits, Caller, CallerEvent, HostAllowList, KeyGrants, MAX_CANDIDATE_SIZE,
    MAX_SDP_SIZE, MAX_STATUS_MESSAGE, MemoryQueue, SignalingServer, TurnRestConfig, ice_server,
};
use tether_transport::auth::AuthEntity;
use tether_transport::identity::VouchKey;
use tether_transport::webrtc::sdp;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::MetadataMap;

const HOSTS: [&str; 3] = ["robot-main.abc.viam.cloud", "robot-2.local", "192.168.1.5:8080"];
const KEYS: [&str; 3] = ["user-key", "machine-key", "nobody"];
/// Callers take turns among these addresses (two share an IPv6 /64).
const ADDRESSES: [&str; 3] = ["192.0.2.1", "2001:db8::1", "2001:db8::2"];
const MAX_OPS: usize = 64;
const MAX_CALLS: usize = 12;
const MAX_ANSWERERS: usize = 6;
/// What a Call stream may take beyond its offer deadline (the server gives
/// a caller that hung up after the answer 0.5 s before telling the answerer).
const STREAM_SLACK: Duration = Duration::from_secs(1);
/// Time left after the last step for every deadline and grace to pass.
const SETTLE: Duration = Duration::from_secs(2);

/// `FUZZ_TRACE=1` prints what an input does (to debug a crash input).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            let t = START.with(|s| s.get().map(|t| t.elapsed()).unwrap_or_default());
            eprintln!("[{:>8.3}s] {}", t.as_secs_f64(), format_args!($($arg)*));
        }
    };
}

thread_local! {
    static START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// One paused runtime for every input: it only provides the clock (and
    /// runs the queue's janitor).
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(run(data)));
});

/// A future that must be ready at once (request handling over the in-memory
/// queue never waits).
fn now<F: std::future::Future>(what: &str, f: F) -> F::Output {
    f.now_or_never().unwrap_or_else(|| panic!("{what} waited for something"))
}

/// What the harness has seen and sent.
#[derive(Default)]
struct Log {
    /// Uuids seen on any stream (for CallUpdate and answerer messages).
    uuids: Vec<String>,
    /// SDPs of Call requests (what answerers may be offered).
    offers: Vec<String>,
    /// SDPs of answerer init stages (what callers may be answered).
    answers: Vec<String>,
}

impl Log {
    fn saw_uuid(&mut self, uuid: &str) {
        if !self.uuids.iter().any(|u| u == uuid) {
            self.uuids.push(uuid.to_owned());
        }
    }
}

/// One caller: its Call stream as the server serves it and as it reads it.
struct CallSide {
    /// The server's relay, until the stream ended and its answerer was told.
    relay: Option<CallRelay>,
    events: BoxStream<'static, AnswererEvent>,
    /// How the stream ended, and when the answerer is to be told.
    end: Option<(CallEnd, Instant)>,
    /// The exchange's uuid (as the server knows it from the start).
    exchange: String,
    host: String,
    address: String,
    opened: Instant,
    /// What the caller read: the uuid, whether it got the answer, when and
    /// how the stream ended.
    uuid: Option<String>,
    init: bool,
    ended: Option<(Instant, Option<Code>)>,
    hung_up: bool,
    /// The caller sent done or an error and the server took it (or it does
    /// not trickle: nothing to send).
    finished: bool,
    deadline: Instant,
}

enum Phase {
    Waiting,
    Exchange { relay: AnswerRelay, caller_events: BoxStream<'static, CallerEvent> },
    Ended,
}

/// One answerer: its Answer stream as the server serves it and as it reads it.
struct AnswerSide {
    session: Option<Box<dyn AnswererSession>>,
    heartbeat: Option<Heartbeat>,
    phase: Phase,
    entity: Option<AuthEntity>,
    /// The answerer's bytes so far (a frame may complete or swallow earlier ones).
    sent: Deframer,
    half_closed: bool,
    reader: AnswerReader,
    armed: Option<Instant>,
    ended: Option<Instant>,
}

/// An answerer reading its Answer stream.
struct AnswerReader {
    checks: AnswerChecks,
    uuid: Option<String>,
    done: bool,
    /// The answerer went away (reads nothing more).
    gone: bool,
}

/// What an Answer stream's reader knows about its answerer.
struct AnswerChecks {
    /// The answerer asked for heartbeats.
    heartbeats: bool,
    /// The key the server vouches for callers with towards this answerer.
    vouch: Option<VouchKey>,
    /// The answerer's hosts.
    hosts: Vec<String>,
}

struct World {
    server: SignalingServer,
    queue: MemoryQueue,
    limits: CallLimits,
    /// The server vouches for callers (towards answerers authenticated as KEYS[1]).
    vouch: bool,
    deadline: Duration,
    log: Log,
    calls: Vec<CallSide>,
    answerers: Vec<AnswerSide>,
    /// Calls attempted.
    attempts: usize,
}

async fn run(data: &[u8]) {
    START.with(|s| s.set(Some(Instant::now())));
    let mut u = Unstructured::new(data);
    let Ok(mut world) = World::new(&mut u) else { return };
    for _ in 0..MAX_OPS {
        if u.is_empty() || world.step(&mut u).await.is_err() {
            break;
        }
        world.check_limits();
    }
    world.finish().await;
}

impl World {
    fn new(u: &mut Unstructured) -> AResult<World> {
        let queue = if u.arbitrary()? { MemoryQueue::with_online_grace(Duration::ZERO) } else { MemoryQueue::new() };
        let deadline = Duration::from_millis(u.int_in_range(0..=12_000)?);
        let mut b = SignalingServer::builder(Arc::new(queue.clone()))
            .offer_deadline(deadline)
            .heartbeat_interval(Duration::from_millis(u.int_in_range(20..=30_000)?));
        if u.ratio(1, 4)? {
            let n = u.int_in_range(0..=HOSTS.len())?;
            b = b.allowed_hosts(HostAllowList::new(HOSTS[..n].iter().copied()));
        }
        if u.ratio(1, 4)? {
            let grants = KeyGrants::new()
                .grant_call(KEYS[0], HOSTS[..2].iter().copied())
                .grant_answer(KEYS[1], HOSTS[..2].iter().copied());
            b = b.authorizer(Arc::new(grants));
        }
        if u.ratio(1, 3)? {
            b = b.ice_server(ice_server(["stun:stun.example.com:3478"], "", ""));
        }
        if u.ratio(1, 3)? {
            let ttl = Duration::from_secs(u.int_in_range(0..=7 * 24 * 3600)?);
            b = b.turn(TurnRestConfig::new(["turn:turn.example.com:3478?transport=udp"], "s3cret").ttl(ttl));
        }
        // The default limits, or small ones.
        let mut limits = CallLimits::default();
        if u.ratio(1, 4)? {
            let rate = if u.arbitrary()? { Some(u.int_in_range(0..=4)?) } else { None };
            let pending = if u.arbitrary()? { Some(u.int_in_range(0..=3)?) } else { None };
            let per_address = if u.arbitrary()? { Some(u.int_in_range(0..=3)?) } else { None };
            limits = limits
                .with_rate_per_minute(rate)
                .with_max_pending_per_host(pending)
                .with_max_pending_per_address(per_address);
            b = b.call_limits(limits);
        }
        // Vouch for authenticated callers towards the answerer key KEYS[1].
        let vouch = u.ratio(1, 4)?;
        if vouch {
            b = b.vouch_keys(Arc::new(|answerer: &str| (answerer == KEYS[1]).then(vouch_key)));
        }
        trace!("deadline {deadline:?}, limits {limits:?}");
        Ok(World {
            server: b.build(),
            queue,
            limits,
            vouch,
            deadline,
            log: Log::default(),
            calls: Vec::new(),
            answerers: Vec::new(),
            attempts: 0,
        })
    }

    async fn step(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        match u.int_in_range(0..=11)? {
            0 | 1 if self.calls.len() < MAX_CALLS => self.call(u)?,
            2..=4 => self.call_update(u)?,
            5 if self.answerers.len() < MAX_ANSWERERS => self.open_answer(u)?,
            6..=8 => self.answer_send(u)?,
            9 => {
                // Half-close, or drop (cancel) a stream of either side.
                match u.int_in_range(0..=2)? {
                    0 => {
                        if let Some(i) = pick(u, self.answerers.len())? {
                            trace!("answerer #{i} half-closes");
                            self.answerers[i].half_closed = true;
                        }
                    }
                    1 => {
                        if let Some(i) = pick(u, self.answerers.len())? {
                            trace!("answerer #{i} goes away");
                            let a = &mut self.answerers[i];
                            a.reader.gone = true;
                            a.end(None);
                        }
                    }
                    _ => {
                        if let Some(i) = pick(u, self.calls.len())? {
                            trace!("caller #{i} goes away");
                            self.calls[i].hung_up = true;
                        }
                    }
                }
            }
            10 => self.config(u)?,
            _ => {
                let ms = match u.int_in_range(0..=3)? {
                    0 => 0,
                    1 => u.int_in_range(1..=100)?,
                    2 => u.int_in_range(100..=2_000)?,
                    _ => u.int_in_range(2_000..=20_000)?,
                };
                trace!("sleep {ms} ms");
                self.advance(Duration::from_millis(ms)).await;
            }
        }
        self.pump();
        Ok(())
    }

    // ---- requests ----

    fn call(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let md = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let body = unary_body(u, |u| Ok(CallRequest { sdp: sdp(u)?, disable_trickle: u.ratio(1, 4)? }))?;
        let Some(req) = unary_message::<CallRequest>(&body) else {
            trace!("call: tonic refuses the body");
            return Ok(());
        };
        // Callers take turns among the addresses.
        let address = ADDRESSES[self.attempts % ADDRESSES.len()];
        self.attempts += 1;
        let caller = Caller { entity: entity.clone(), address: Some(address.parse::<IpAddr>().expect("address")) };
        let address = caller.address_key();
        let sdp = req.sdp.clone();
        // A caller that does not trickle has nothing more to send.
        let finished = req.disable_trickle;
        self.log.offers.push(sdp.clone());
        let t = Instant::now();
        let result = now("Call", self.server.handle_call(&md, caller, req, t));
        trace!("call #{} {:?} entity {entity:?} from {address}: {}", self.calls.len(), show(&md), ok(&result));
        match result {
            Ok((relay, events)) => {
                assert!(sdp.len() <= MAX_SDP_SIZE, "an offer of {} bytes was queued", sdp.len());
                let deadline = relay.deadline();
                assert!(deadline <= t + self.deadline, "offer deadline beyond the configured one");
                let (exchange, host) = (relay.uuid().to_owned(), relay.host().to_owned());
                self.calls.push(CallSide {
                    relay: Some(relay),
                    events,
                    end: None,
                    exchange,
                    host,
                    address,
                    opened: t,
                    uuid: None,
                    init: false,
                    ended: None,
                    hung_up: false,
                    finished,
                    deadline,
                });
            }
            Err(st) => {
                let allowed = [
                    Code::InvalidArgument,
                    Code::Unauthenticated,
                    Code::PermissionDenied,
                    Code::ResourceExhausted,
                    Code::NotFound,
                ];
                assert!(allowed.contains(&st.code()), "Call refused with {st:?}");
                if sdp.len() > MAX_SDP_SIZE {
                    assert!(st.code() != Code::NotFound && st.code() != Code::ResourceExhausted, "{st:?}");
                }
            }
        }
        Ok(())
    }

    fn call_update(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let md = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let log = &self.log;
        let body = unary_body(u, |u| {
            let update = match u.int_in_range(0..=4)? {
                0 | 1 => Some(call_update_request::Update::Candidate(candidate(u)?)),
                2 => Some(call_update_request::Update::Done(u.ratio(3, 4)?)),
                3 => Some(call_update_request::Update::Error(status(u)?)),
                _ => None,
            };
            Ok(CallUpdateRequest { uuid: uuid(u, log)?, update })
        })?;
        let Some(req) = unary_message::<CallUpdateRequest>(&body) else { return Ok(()) };
        let terminal =
            matches!(req.update, Some(call_update_request::Update::Done(true) | call_update_request::Update::Error(_)));
        let target = req.uuid.clone();
        trace!("call update {:?} entity {entity:?} {}", show(&md), short(&req));
        let entity = entity.map(AuthEntity);
        let result = now("CallUpdate", self.server.handle_call_update(&md, entity.as_ref(), req));
        trace!("call update -> {}", ok(&result));
        if result.is_ok() && terminal {
            // The server knows the caller is done with this exchange.
            let host = self.server.core().caller_host(&md).ok();
            for c in &mut self.calls {
                if c.exchange == target && host.as_deref() == Some(c.host.as_str()) {
                    c.finished = true;
                }
            }
        }
        Ok(())
    }

    fn config(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let md = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let body = unary_body(u, |_| Ok(OptionalWebRtcConfigRequest {}))?;
        if unary_message::<OptionalWebRtcConfigRequest>(&body).is_none() {
            return Ok(());
        }
        let entity = entity.map(AuthEntity);
        let result = now("OptionalWebRTCConfig", self.server.handle_config(&md, entity.as_ref()));
        trace!("config {:?} -> {}", show(&md), ok(&result));
        if let Ok(resp) = result {
            assert!(resp.config.is_some(), "OptionalWebRTCConfig without a config");
        }
        Ok(())
    }

    fn open_answer(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let mut md = metadata(u, self.deadline)?;
        let heartbeats = u.ratio(1, 2)?;
        if heartbeats {
            md.insert("heartbeats-allowed", "true".parse().expect("value"));
        } else if u.ratio(1, 8)? {
            md.insert("heartbeats-allowed", "TRUE".parse().expect("value"));
        }
        let entity = entity(u)?;
        let vouch = (self.vouch && entity.as_deref() == Some(KEYS[1])).then(vouch_key);
        // The hosts as the server reads them (for checking caller assertions).
        let hosts: Vec<String> = md
            .get_all("rpc-host")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes()).split(',').map(|h| h.trim().to_owned()).collect::<Vec<_>>()
            })
            .collect();
        let entity = entity.map(AuthEntity);
        let result = now("Answer", self.server.handle_answer(&md, entity.as_ref(), Instant::now()));
        trace!("answer #{} {:?} entity {entity:?}: {}", self.answerers.len(), show(&md), ok(&result));
        if let Ok((session, heartbeat)) = result {
            assert_eq!(heartbeat.is_some(), heartbeats, "heartbeats only when asked for");
            self.answerers.push(AnswerSide {
                session: Some(session),
                heartbeat,
                phase: Phase::Waiting,
                entity,
                sent: Deframer::default(),
                half_closed: false,
                reader: AnswerReader {
                    checks: AnswerChecks { heartbeats, vouch, hosts },
                    uuid: None,
                    done: false,
                    gone: false,
                },
                armed: None,
                ended: None,
            });
        }
        Ok(())
    }

    fn answer_send(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let Some(i) = pick(u, self.answerers.len())? else { return Ok(()) };
        let log = &self.log;
        let frame = framed(u, |u| {
            let stage = match u.int_in_range(0..=9)? {
                0..=2 => Some(answer_response::Stage::Init(AnswerResponseInitStage { sdp: sdp(u)? })),
                3..=5 => Some(answer_response::Stage::Update(AnswerResponseUpdateStage {
                    candidate: if u.ratio(7, 8)? { Some(candidate(u)?) } else { None },
                })),
                6 | 7 => Some(answer_response::Stage::Done(AnswerResponseDoneStage {})),
                8 => Some(answer_response::Stage::Error(AnswerResponseErrorStage {
                    status: if u.ratio(7, 8)? { Some(status(u)?) } else { None },
                })),
                _ => None,
            };
            Ok(AnswerResponse { uuid: uuid(u, log)?, stage })
        })?;
        let a = &mut self.answerers[i];
        if a.reader.gone || a.half_closed {
            return Ok(());
        }
        let msgs = a.sent.push::<AnswerResponse>(&frame);
        trace!("answerer #{i} sends {} bytes: {}", frame.len(), short(&msgs));
        for m in msgs {
            if a.ended.is_some() {
                break;
            }
            let m = match m {
                Ok(m) => m,
                Err(()) => {
                    // tonic fails the inbound stream; the server ends the Answer stream.
                    a.end(None);
                    break;
                }
            };
            if let Some(answer_response::Stage::Init(init)) = &m.stage {
                self.log.answers.push(init.sdp.clone());
            }
            match &mut a.phase {
                Phase::Waiting => a.end(Some(message_before_offer().code())),
                Phase::Exchange { relay, .. } if relay.responding() => {
                    match now("an answerer message", relay.on_answerer(m)) {
                        Ok(false) => {}
                        Ok(true) => a.end(Some(Code::Ok)),
                        Err(st) => a.end(Some(st.code())),
                    }
                }
                // The server no longer reads the stream.
                _ => {}
            }
        }
        Ok(())
    }

    // ---- what the server's stream tasks do ----

    /// Runs every stream until nothing more happens at this instant.
    fn pump(&mut self) {
        let t = Instant::now();
        loop {
            let mut progress = false;
            for i in 0..self.answerers.len() {
                progress |= self.pump_answerer(i, t);
            }
            for i in 0..self.calls.len() {
                progress |= self.pump_call(i, t);
            }
            if !progress {
                break;
            }
        }
    }

    /// One Call stream: `true` if something happened.
    fn pump_call(&mut self, i: usize, t: Instant) -> bool {
        let c = &mut self.calls[i];
        let Some(relay) = c.relay.as_mut() else { return false };
        if let Some((end, at)) = &c.end {
            // Ended; the answerer is told after the grace.
            if t < *at {
                return false;
            }
            now("telling the answerer", self.server.notify_answerer(relay, end));
            c.relay = None;
            return true;
        }
        let step = if c.hung_up {
            CallStep::End(CallEnd::CallerGone)
        } else if t >= relay.deadline() {
            CallStep::End(CallEnd::Deadline)
        } else {
            match c.events.next().now_or_never() {
                Some(ev) => relay.on_event(ev, t),
                None => return false,
            }
        };
        match step {
            CallStep::Send(msgs) => {
                for m in msgs {
                    c.read(m, &mut self.log);
                }
            }
            CallStep::End(end) => {
                trace!("caller #{i}'s stream ends: {end:?}");
                self.server.core().end_call(relay, &end);
                if !c.hung_up {
                    assert!(c.ended.is_none(), "a Call stream ended twice");
                    c.ended = Some((t, end.status().map(|s| s.code())));
                    let status = end.status().map_or(Code::Ok, |s| s.code());
                    assert!(status != Code::Ok || c.init, "Call stream ended OK without an answer");
                }
                let grace = if end == CallEnd::CallerGone && relay.answered() {
                    Duration::from_millis(500).min(relay.deadline().saturating_duration_since(t))
                } else {
                    Duration::ZERO
                };
                c.end = Some((end, t + grace));
            }
        }
        true
    }

    /// One Answer stream: `true` if something happened.
    fn pump_answerer(&mut self, i: usize, t: Instant) -> bool {
        let a = &mut self.answerers[i];
        if a.ended.is_some() {
            return false;
        }
        let log = &mut self.log;
        if let Some(h) = &mut a.heartbeat
            && h.due() <= t
        {
            a.reader.read(h.fire(t), log);
        }
        match &mut a.phase {
            Phase::Waiting => {
                let Some(session) = a.session.as_mut() else { return false };
                match session.recv_offer().now_or_never() {
                    Some(Ok(exchange)) => {
                        // The exchange ends with its Call stream's deadline (the server
                        // derives the same instant from the offer's wall-clock deadline,
                        // which would make the harness depend on real time).
                        let uuid = &exchange.offer.uuid;
                        let call = self.calls.iter().find(|c| &c.exchange == uuid);
                        let deadline = call.expect("an offer no caller made").deadline;
                        let (relay, caller_events, init) =
                            self.server.core().start_answer(exchange, a.entity.as_ref(), deadline);
                        a.armed = Some(t);
                        assert!(relay.deadline() <= t + self.deadline, "exchange deadline beyond the offer's");
                        a.phase = Phase::Exchange { relay, caller_events };
                        a.reader.read(init, log);
                    }
                    Some(Err(e)) => a.end(Some(tonic::Status::from(e).code())),
                    // Half-closed before any offer: nobody to answer.
                    None if a.half_closed => a.end(None),
                    None => return false,
                }
                true
            }
            Phase::Exchange { relay, caller_events } => {
                if t >= relay.deadline() {
                    if let Some(last) = relay.on_deadline() {
                        a.reader.read(last, log);
                    }
                    a.end(Some(Code::Ok));
                    return true;
                }
                if a.half_closed && relay.responding() {
                    relay.on_half_close();
                }
                let mut progress = false;
                while relay.wants_caller_events() {
                    let Some(ev) = caller_events.next().now_or_never() else { break };
                    progress = true;
                    for m in relay.on_caller(ev) {
                        a.reader.read(m, log);
                    }
                }
                if relay.is_over() {
                    a.end(Some(Code::Ok));
                    return true;
                }
                progress
            }
            Phase::Ended => false,
        }
    }

    /// Lets `d` pass, stopping at every deadline and grace on the way.
    async fn advance(&mut self, d: Duration) {
        let target = Instant::now() + d;
        loop {
            let next = self.next_stop().filter(|&t| t <= target).unwrap_or(target);
            let t = Instant::now();
            if next > t {
                tokio::time::advance(next - t).await;
            }
            self.pump();
            if next >= target {
                return;
            }
        }
    }

    /// The next instant at which some stream has something to do.
    fn next_stop(&self) -> Option<Instant> {
        let t = Instant::now();
        let calls = self.calls.iter().filter_map(|c| match (&c.relay, &c.end) {
            (Some(_), Some((_, at))) => Some(*at),
            (Some(r), None) => Some(r.deadline()),
            _ => None,
        });
        let answers = self.answerers.iter().filter_map(|a| match &a.phase {
            Phase::Exchange { relay, .. } if a.ended.is_none() => Some(relay.deadline()),
            _ => None,
        });
        calls.chain(answers).filter(|&at| at > t).min()
    }

    // ---- checks ----

    /// The caps hold, and the server counts what the rules say.
    fn check_limits(&self) {
        let t = Instant::now();
        let mut pending: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pending_addresses: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut exchanges: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.calls {
            if c.relay.as_ref().is_some_and(|r| !r.answered()) && c.end.is_none() {
                *pending.entry(c.host.as_str()).or_default() += 1;
                pending_addresses.entry(c.host.as_str()).or_default().insert(c.address.as_str());
            }
            // In progress: the stream is served, or it ended answered and
            // OK (the caller still to send done) and the deadline is ahead.
            let open = c.end.is_none();
            let waiting = matches!(c.end, Some((CallEnd::Finished, _))) && !c.finished;
            if (open || waiting) && t < c.deadline {
                *exchanges.entry(c.address.as_str()).or_default() += 1;
            }
        }
        if let Some(max) = self.limits.max_pending_per_host {
            // Past the cap only as an address's first pending call for the host.
            let over = |host: &str, n: usize| n > max + pending_addresses.get(host).map_or(0, BTreeSet::len);
            assert!(
                !pending.iter().any(|(host, &n)| over(host, n)),
                "pending offers per host over {max} plus one per address: {pending:?} {pending_addresses:?}"
            );
        }
        if let Some(max) = self.limits.max_pending_per_address {
            assert!(exchanges.values().all(|&n| n <= max), "exchanges per address over {max}: {exchanges:?}");
            let counted = self.server.limit_stats().exchanges;
            let expected: usize = exchanges.values().sum();
            assert_eq!(counted, expected, "the server counts {counted} exchanges, the rules say {expected}");
        }
        let counted = self.server.limit_stats().pending_offers;
        if self.limits.max_pending_per_host.is_some() {
            assert_eq!(counted, pending.values().sum::<usize>(), "pending offers counted");
        }
    }

    /// Liveness checks, then every client goes away, and nothing is left.
    async fn finish(mut self) {
        self.advance(self.deadline + STREAM_SLACK).await;
        for c in &self.calls {
            if !c.hung_up {
                let ended = c.ended.map(|(t, _)| t);
                assert!(
                    ended.is_some_and(|e| e <= c.opened + self.deadline),
                    "a Call stream outlived its offer deadline ({:?}): opened {:?}, ended {ended:?}",
                    self.deadline,
                    c.opened
                );
            }
        }
        for a in self.answerers.iter().filter(|a| !a.reader.gone) {
            if let Some(armed) = a.armed {
                assert!(
                    a.ended.is_some_and(|e| e <= armed + self.deadline),
                    "an Answer stream outlived its offer deadline ({:?}): offer at {armed:?}, ended {:?}",
                    self.deadline,
                    a.ended
                );
            }
        }
        // Everybody leaves.
        for c in &mut self.calls {
            c.hung_up = true;
        }
        for a in &mut self.answerers {
            a.reader.gone = true;
            a.end(None);
        }
        self.pump();
        self.advance(self.deadline + SETTLE).await;
        assert!(self.calls.iter().all(|c| c.relay.is_none()), "a Call stream is still served");
        let q = self.queue.stats();
        assert_eq!((q.offers, q.pending, q.sessions), (0, 0, 0), "left in the queue: {q:?}");
        let l = self.server.limit_stats();
        assert_eq!((l.pending_offers, l.exchanges), (0, 0), "left counted: {l:?}");
    }
}

impl CallSide {
    /// The caller reads one message of its stream.
    fn read(&mut self, m: CallResponse, log: &mut Log) {
        if self.hung_up {
            return;
        }
        trace!("caller got {}", short(&m));
        assert!(!m.uuid.is_empty(), "CallResponse without a uuid");
        match &self.uuid {
            Some(u) => assert_eq!(u, &m.uuid, "CallResponse uuid changed"),
            None => {
                log.saw_uuid(&m.uuid);
                self.uuid = Some(m.uuid.clone());
            }
        }
        match m.stage {
            Some(call_response::Stage::Init(i)) => {
                assert!(!self.init, "second init on a Call stream");
                assert!(log.answers.contains(&i.sdp), "caller got an SDP no answerer sent");
                assert!(i.sdp.len() <= MAX_SDP_SIZE, "an answer of {} bytes was relayed", i.sdp.len());
                self.init = true;
            }
            Some(call_response::Stage::Update(up)) => {
                assert!(self.init, "update before init on a Call stream");
                let c = up.candidate.expect("update without a candidate on a Call stream");
                assert!(c.encoded_len() <= MAX_CANDIDATE_SIZE, "a candidate of {} bytes was relayed", c.encoded_len());
            }
            None => panic!("CallResponse without a stage"),
        }
    }
}

impl AnswerReader {
    /// The answerer reads one message of its stream.
    fn read(&mut self, m: AnswerRequest, log: &mut Log) {
        if self.gone {
            return;
        }
        trace!("answerer got {}", short(&m));
        if let Some(answer_request::Stage::Heartbeat(_)) = m.stage {
            assert!(self.checks.heartbeats, "heartbeat to an answerer that did not allow them");
            assert!(m.uuid.is_empty(), "heartbeat with a uuid");
            return;
        }
        if let Some(answer_request::Stage::Init(i)) = &m.stage {
            assert!(self.uuid.is_none(), "second init on an Answer stream");
            assert!(!m.uuid.is_empty(), "init without a uuid");
            assert!(log.offers.contains(&i.sdp), "answerer got an SDP no caller sent");
            assert!(i.sdp.len() <= MAX_SDP_SIZE, "an offer of {} bytes was relayed", i.sdp.len());
            assert!(i.deadline.is_some(), "init without a deadline");
            if !i.tether_caller_assertion.is_empty() {
                let key = self.checks.vouch.as_ref().expect("a caller assertion for an answerer without a vouch key");
                // An assertion for an offer with fingerprints must verify for exactly this exchange.
                let fp = sdp::decode(&i.sdp).map(|(_, s)| sdp::fingerprints(&s)).unwrap_or_default();
                if !fp.is_empty() {
                    let verified = key.verify(&i.tether_caller_assertion, &self.checks.hosts, &m.uuid, &fp);
                    assert!(verified.is_ok(), "the signaler's caller assertion does not verify: {verified:?}");
                    trace!("caller assertion for {:?} verified", verified.map(|c| c.sub));
                }
            }
            log.saw_uuid(&m.uuid);
            self.uuid = Some(m.uuid);
            return;
        }
        let Some(want) = &self.uuid else { panic!("{:?} before init on an Answer stream", m.stage) };
        assert_eq!(want, &m.uuid, "Answer stream uuid changed");
        assert!(!self.done, "{:?} after done on an Answer stream", m.stage);
        match m.stage {
            Some(answer_request::Stage::Update(up)) => {
                let c = up.candidate.expect("update without a candidate on an Answer stream");
                assert!(c.encoded_len() <= MAX_CANDIDATE_SIZE, "a candidate of {} bytes was relayed", c.encoded_len());
            }
            Some(answer_request::Stage::Done(_)) => self.done = true,
            Some(answer_request::Stage::Error(e)) => assert!(e.status.is_some(), "error stage without a status"),
            _ => panic!("AnswerRequest without a stage"),
        }
    }
}

impl AnswerSide {
    /// The server ends the stream (with `status`, `None` when the answerer
    /// is gone or its stream broke): the session and the exchange go with it.
    fn end(&mut self, status: Option<Code>) {
        if self.ended.is_some() {
            return;
        }
        trace!("an Answer stream ends: {status:?}");
        self.ended = Some(Instant::now());
        self.phase = Phase::Ended;
        self.session = None;
        self.heartbeat = None;
    }
}

fn vouch_key() -> VouchKey {
    VouchKey::from_secret("fuzz-machine-secret")
}

fn ok<T, E: std::fmt::Debug>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => short(e),
    }
}

fn show(md: &MetadataMap) -> Vec<(String, String)> {
    md.as_ref().iter().map(|(k, v)| (k.to_string(), short(&String::from_utf8_lossy(v.as_bytes())))).collect()
}

/// A message's debug form, cut short.
fn short(m: &impl std::fmt::Debug) -> String {
    let s = format!("{m:?}");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn pick(u: &mut Unstructured, len: usize) -> AResult<Option<usize>> {
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(u.choose_index(len)?))
}

// ---- input shapes ----

/// A string: mostly short, sometimes long.
fn string(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => String::new(),
        1 => long_string(u)?,
        _ => u.arbitrary()?,
    })
}

/// A long string of one repeated character (multi-byte ones put the cut of
/// an overlong status message inside a character): half the time within a
/// few bytes of one of the signaler's size limits, otherwise of any length up
/// to twice the largest. Longer strings reach no other code; they only cost
/// copying.
fn long_string(u: &mut Unstructured) -> AResult<String> {
    let len = if u.arbitrary()? {
        let limit = *u.choose(&[MAX_CANDIDATE_SIZE, MAX_STATUS_MESSAGE, MAX_SDP_SIZE])?;
        limit - 8 + u.int_in_range(0..=16)?
    } else {
        u.int_in_range(1_000..=2 * MAX_SDP_SIZE)?
    };
    let c = *u.choose(&['x', 'é', '€', '🦀'])?;
    Ok(c.to_string().repeat(len.div_ceil(c.len_utf8())))
}

/// `rpc-host` values (and sometimes a `grpc-timeout`, which the handlers
/// ignore) as the metadata of a request; values that are not valid header
/// values are dropped, as HTTP/2 would.
fn metadata(u: &mut Unstructured, deadline: Duration) -> AResult<MetadataMap> {
    let mut out = http::HeaderMap::new();
    let mut add = |k: &'static str, v: &[u8]| {
        if let Ok(v) = http::HeaderValue::from_bytes(v) {
            out.append(k, v);
        }
    };
    let n = match u.int_in_range(0..=7)? {
        0 => 0,
        1 => u.int_in_range(2..=8)?,
        _ => 1,
    };
    for _ in 0..n {
        let v: Vec<u8> = match u.int_in_range(0..=11)? {
            0..=5 => u.choose(&HOSTS)?.as_bytes().to_vec(),
            6 => format!("{}, {}", u.choose(&HOSTS)?, u.choose(&HOSTS)?).into_bytes(),
            7 => HOSTS.join(",").repeat(u.int_in_range(1..=3)?).into_bytes(),
            8 => b" ".to_vec(),
            9 => "h".repeat(u.int_in_range(1..=20_000)?).into_bytes(),
            _ => u.arbitrary()?,
        };
        add("rpc-host", &v);
    }
    if u.ratio(1, 16)? {
        let v = match u.int_in_range(0..=2)? {
            0 => format!("{}m", deadline.as_millis() + 1),
            1 => "1n".to_owned(),
            _ => u.arbitrary()?,
        };
        add("grpc-timeout", v.as_bytes());
    }
    Ok(MetadataMap::from_headers(out))
}

/// The authenticated entity the auth layer would attach (never empty: it
/// refuses tokens with an empty subject).
fn entity(u: &mut Unstructured) -> AResult<Option<String>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(u.arbitrary::<String>()?).filter(|e| !e.is_empty()),
        _ => Some((*u.choose(&KEYS)?).to_owned()),
    })
}

/// A caller or answerer SDP field: the signaler relays it untouched (and
/// decodes an offer it vouches for), so anything goes (valid base64 JSON,
/// with or without a fingerprint, garbage, huge).
fn sdp(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=4)? {
        0 => sdp::encode(sdp::SdpKind::Offer, "v=0\r\n"),
        1 => sdp::encode(sdp::SdpKind::Offer, "v=0\r\na=fingerprint:sha-256 AB:CD:EF\r\n"),
        _ => string(u)?,
    })
}

fn candidate(u: &mut Unstructured) -> AResult<IceCandidate> {
    let candidate = match u.int_in_range(0..=3)? {
        0 => "candidate:1 1 UDP 2122260223 192.168.1.5 51000 typ host".to_owned(),
        1 => String::new(),
        _ => string(u)?,
    };
    Ok(IceCandidate {
        candidate,
        sdp_mid: u.arbitrary()?,
        sdpm_line_index: u.arbitrary()?,
        username_fragment: u.arbitrary()?,
    })
}

fn status(u: &mut Unstructured) -> AResult<RpcStatus> {
    let code = match u.int_in_range(0..=2)? {
        0 => 0,
        1 => u.int_in_range(1..=16)?,
        _ => u.arbitrary()?,
    };
    Ok(RpcStatus { code, message: string(u)?, details: Vec::new() })
}

/// A uuid some stream has seen, or a bogus one.
fn uuid(u: &mut Unstructured, log: &Log) -> AResult<String> {
    Ok(match u.int_in_range(0..=7)? {
        0 => String::new(),
        1 => "00000000-0000-0000-0000-000000000000".to_owned(),
        2 => string(u)?,
        _ if log.uuids.is_empty() => string(u)?,
        _ => u.choose(&log.uuids)?.clone(),
    })
}

/// One gRPC message frame: a well-formed message, raw bytes, or broken
/// framing.
fn framed<M: Message>(u: &mut Unstructured, make: impl FnOnce(&mut Unstructured) -> AResult<M>) -> AResult<Vec<u8>> {
    let payload = if u.ratio(7, 8)? { make(u)?.encode_to_vec() } else { u.arbitrary()? };
    let (flag, len) = match u.int_in_range(0..=15)? {
        0 => (1, payload.len() as u32), // "compressed" without an encoding
        1 => (0, u.arbitrary()?),       // a lying length
        2 => (u.arbitrary()?, payload.len() as u32),
        _ => (0, payload.len() as u32),
    };
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(flag);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// The body of a unary request: normally one frame; sometimes none, two, or
/// a truncated one.
fn unary_body<M: Message>(
    u: &mut Unstructured,
    make: impl FnOnce(&mut Unstructured) -> AResult<M>,
) -> AResult<Vec<u8>> {
    let frame = framed(u, make)?;
    Ok(match u.int_in_range(0..=19)? {
        0 => Vec::new(),
        1 => [frame.as_slice(), frame.as_slice()].concat(),
        2 => {
            let cut = u.int_in_range(0..=frame.len())?;
            frame[..cut].to_vec()
        }
        _ => frame,
    })
}

/// The message tonic hands a unary handler from `body`: its first frame,
/// if that is complete, uncompressed and decodes (tonic refuses the request
/// otherwise).
fn unary_message<M: Message + Default>(body: &[u8]) -> Option<M> {
    match Deframer::default().push::<M>(body).into_iter().next() {
        Some(Ok(m)) => Some(m),
        _ => None,
    }
}

/// Splits a gRPC byte stream into what a server reads from it: messages,
/// or `Err` for a frame tonic fails the stream on (compressed without an
/// encoding, an invalid flag, undecodable).
#[derive(Default)]
struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    fn push<M: Message + Default>(&mut self, bytes: &[u8]) -> Vec<Result<M, ()>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((_, message, n)) = tether_transport::grpc::first_frame(&self.buf) {
            // Flag 0: a message; 1: compressed (no encoding was negotiated); others are invalid.
            out.push(if self.buf[0] != 0 { Err(()) } else { M::decode(message).map_err(|_| ()) });
            self.buf.drain(..n);
        }
        out
    }
}
