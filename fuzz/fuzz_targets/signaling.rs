//! The signaling service (`proto.rpc.webrtc.v1.SignalingService` over a
//! `MemoryQueue`), driven in process through its tonic service with gRPC
//! frames built from the input: interleaved callers (`Call`, `CallUpdate`),
//! answerers (`Answer` streams fed message by message), `OptionalWebRTCConfig`,
//! arbitrary `rpc-host` metadata, known and bogus uuids, out-of-order stages,
//! huge strings, undecodable protobuf and broken gRPC framing.
//!
//! Runs on a current-thread runtime with paused time, so offer deadlines and
//! heartbeats cost nothing. Besides "never panics" it checks what callers and
//! answerers rely on:
//! * every handler returns (unary RPCs within the handler timeout);
//! * a Call stream carries one uuid, an init (the answerer's SDP) before any
//!   update, at most one init, ends with a status, and OK only after an init;
//!   it ends by its offer deadline (plus the server's bounded grace periods);
//! * an Answer stream sends heartbeats (empty uuid) only when asked, then
//!   one init (a caller's SDP), and then only that uuid, no update after done;
//!   once it has an offer it ends by the offer deadline; a caller assertion
//!   (servers that vouch for callers) goes only to the answerer it is keyed
//!   for and verifies for exactly that call, host and offer;
//! * once every client is gone, every answerer session is unregistered.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::{Result as AResult, Unstructured};
use bytes::Bytes;
use futures::channel::mpsc;
use http_body_util::{BodyExt, Full, StreamBody};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerResponse, AnswerResponseDoneStage, AnswerResponseErrorStage, AnswerResponseInitStage,
    AnswerResponseUpdateStage, CallRequest, CallResponse, CallUpdateRequest, CallUpdateResponse, IceCandidate,
    OptionalWebRtcConfigRequest, OptionalWebRtcConfigResponse, answer_request, answer_response, call_response,
    call_update_request, signaling_service_server::SignalingServiceServer,
};
use tether_signaling::{
    CallLimits, HostAllowList, KeyGrants, MemoryQueue, SignalingServer, TurnRestConfig, ice_server,
};
use tether_transport::auth::AuthEntity;
use tether_transport::identity::VouchKey;
use tether_transport::webrtc::sdp;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codegen::Service;

const SERVICE: &str = "/proto.rpc.webrtc.v1.SignalingService/";
const HOSTS: [&str; 3] = ["robot-main.abc.viam.cloud", "robot-2.local", "192.168.1.5:8080"];
const KEYS: [&str; 3] = ["user-key", "machine-key", "nobody"];
const MAX_OPS: usize = 64;
const MAX_CALLS: usize = 12;
const MAX_ANSWERERS: usize = 6;
/// Longest a unary handler may take (the server bounds them by 10 s).
const UNARY_BOUND: Duration = Duration::from_secs(15);
/// What a stream may take beyond its offer deadline (answerer error and
/// caller-gone notifications are bounded by 10 s, the grace by 0.5 s).
const STREAM_SLACK: Duration = Duration::from_secs(25);

type Svc = SignalingServiceServer<SignalingServer>;
/// The sending end of an Answer request body.
type Frames = mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, Infallible>>;

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
}

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build() else {
        return;
    };
    rt.block_on(run(data));
});

/// What the harness has seen and sent, shared with the stream readers.
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

/// One stream as its reader saw it.
#[derive(Default)]
struct StreamState {
    ended_at: Option<Instant>,
    /// When the stream got its offer (Answer) or was opened (Call).
    armed_at: Option<Instant>,
}

struct CallSide {
    reader: JoinHandle<()>,
    state: Arc<Mutex<StreamState>>,
    dropped: bool,
}

struct AnswerSide {
    tx: Option<Frames>,
    sent: Deframer,
    reader: JoinHandle<()>,
    state: Arc<Mutex<StreamState>>,
    dropped: bool,
}

struct World {
    svc: Svc,
    /// The server vouches for callers (towards answerers authenticated as KEYS[1]).
    vouch: bool,
    queue: MemoryQueue,
    log: Arc<Mutex<Log>>,
    deadline: Duration,
    calls: Vec<CallSide>,
    answerers: Vec<AnswerSide>,
}

async fn run(data: &[u8]) {
    START.with(|s| s.set(Some(Instant::now())));
    let mut u = Unstructured::new(data);
    let Ok(mut world) = World::new(&mut u) else { return };
    for _ in 0..MAX_OPS {
        if u.is_empty() || world.step(&mut u).await.is_err() {
            break;
        }
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
        if u.ratio(1, 4)? {
            let rate = if u.arbitrary()? { Some(u.int_in_range(0..=4)?) } else { None };
            let pending = if u.arbitrary()? { Some(u.int_in_range(0..=3)?) } else { None };
            b = b.call_limits(CallLimits::default().with_rate_per_minute(rate).with_max_pending_per_host(pending));
        }
        // Vouch for authenticated callers towards the answerer key KEYS[1].
        let vouch = u.ratio(1, 4)?;
        if vouch {
            b = b.vouch_keys(Arc::new(|answerer: &str| (answerer == KEYS[1]).then(vouch_key)));
        }
        Ok(World {
            svc: b.build().into_service(),
            vouch,
            queue,
            log: Arc::default(),
            deadline,
            calls: Vec::new(),
            answerers: Vec::new(),
        })
    }

    async fn step(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        match u.int_in_range(0..=11)? {
            0 | 1 if self.calls.len() < MAX_CALLS => self.call(u).await?,
            2..=4 => self.call_update(u).await?,
            5 if self.answerers.len() < MAX_ANSWERERS => self.open_answer(u).await?,
            6..=8 => self.answer_send(u)?,
            9 => {
                // Half-close, or drop (cancel) a stream of either side.
                match u.int_in_range(0..=2)? {
                    0 => {
                        if let Some(a) = pick(u, &mut self.answerers)? {
                            trace!("answerer {:x} half-closes", Arc::as_ptr(&a.state) as usize);
                            a.tx = None;
                        }
                    }
                    1 => {
                        if let Some(a) = pick(u, &mut self.answerers)? {
                            trace!("answerer {:x} goes away", Arc::as_ptr(&a.state) as usize);
                            a.tx = None;
                            a.reader.abort();
                            a.dropped = true;
                        }
                    }
                    _ => {
                        if let Some(c) = pick(u, &mut self.calls)? {
                            trace!("caller {:x} goes away", Arc::as_ptr(&c.state) as usize);
                            c.reader.abort();
                            c.dropped = true;
                        }
                    }
                }
            }
            10 => self.config(u).await?,
            _ => {
                let ms = match u.int_in_range(0..=3)? {
                    0 => 0,
                    1 => u.int_in_range(1..=100)?,
                    2 => u.int_in_range(100..=2_000)?,
                    _ => u.int_in_range(2_000..=20_000)?,
                };
                trace!("sleep {ms} ms");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        // Let the spawned server tasks and readers catch up.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn call(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let headers = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let body = unary_body(u, |u| Ok(CallRequest { sdp: sdp(u)?, disable_trickle: u.ratio(1, 4)? }))?;
        // Whatever the server may take from the body may be offered.
        for m in Deframer::default().push::<CallRequest>(&body) {
            self.log.lock().unwrap().offers.push(m.sdp);
        }
        trace!("call #{} {:?} entity {entity:?}", self.calls.len(), show(&headers));
        let req = request("Call", headers, entity, Full::new(body));
        let resp = unary(&mut self.svc, req).await;
        let state = Arc::new(Mutex::new(StreamState { armed_at: Some(Instant::now()), ..Default::default() }));
        let reader = tokio::spawn(read_call(resp, self.log.clone(), state.clone()));
        self.calls.push(CallSide { reader, state, dropped: false });
        Ok(())
    }

    async fn call_update(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let headers = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let log = self.log.clone();
        let body = unary_body(u, |u| {
            let update = match u.int_in_range(0..=4)? {
                0 | 1 => Some(call_update_request::Update::Candidate(candidate(u)?)),
                2 => Some(call_update_request::Update::Done(u.ratio(3, 4)?)),
                3 => Some(call_update_request::Update::Error(status(u)?)),
                _ => None,
            };
            Ok(CallUpdateRequest { uuid: uuid(u, &log)?, update })
        })?;
        let msgs = Deframer::default().push::<CallUpdateRequest>(&body);
        trace!("call update {:?} entity {entity:?} {}", show(&headers), short(&msgs));
        let req = request("CallUpdate", headers, entity, Full::new(body));
        let resp = unary(&mut self.svc, req).await;
        let status = read_stream::<CallUpdateResponse>(resp, |_| {}).await;
        trace!("call update -> {status:?}");
        assert!(status.is_some(), "CallUpdate ended without a status");
        Ok(())
    }

    async fn config(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let headers = metadata(u, self.deadline)?;
        let entity = entity(u)?;
        let body = unary_body(u, |_| Ok(OptionalWebRtcConfigRequest {}))?;
        trace!("config {:?} entity {entity:?}", show(&headers));
        let req = request("OptionalWebRTCConfig", headers, entity, Full::new(body));
        let resp = unary(&mut self.svc, req).await;
        let mut got = 0;
        let status = read_stream::<OptionalWebRtcConfigResponse>(resp, |m| {
            assert!(m.config.is_some(), "OptionalWebRTCConfig without a config");
            got += 1;
        })
        .await;
        trace!("config -> {status:?}");
        assert!(status.is_some(), "OptionalWebRTCConfig ended without a status");
        assert!(status != Some(0) || got == 1, "OptionalWebRTCConfig OK with {got} messages");
        Ok(())
    }

    async fn open_answer(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let mut headers = metadata(u, self.deadline)?;
        let heartbeats = u.ratio(1, 2)?;
        if heartbeats {
            headers.push(("heartbeats-allowed".into(), b"true".to_vec()));
        } else if u.ratio(1, 8)? {
            headers.push(("heartbeats-allowed".into(), b"TRUE".to_vec()));
        }
        let entity = entity(u)?;
        let vouch = (self.vouch && entity.as_deref() == Some(KEYS[1])).then(vouch_key);
        // The hosts as the server reads them (for checking caller assertions).
        let hosts: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k == "rpc-host")
            .flat_map(|(_, v)| String::from_utf8_lossy(v).split(',').map(|h| h.trim().to_owned()).collect::<Vec<_>>())
            .collect();
        let (tx, rx) = mpsc::unbounded();
        trace!("answer #{} {:?} entity {entity:?}", self.answerers.len(), show(&headers));
        let req = request("Answer", headers, entity, StreamBody::new(rx));
        let resp = unary(&mut self.svc, req).await;
        let state = Arc::new(Mutex::new(StreamState::default()));
        let checks = AnswerChecks { heartbeats, vouch, hosts };
        let reader = tokio::spawn(read_answer(resp, checks, self.log.clone(), state.clone()));
        self.answerers.push(AnswerSide { tx: Some(tx), sent: Deframer::default(), reader, state, dropped: false });
        Ok(())
    }

    fn answer_send(&mut self, u: &mut Unstructured<'_>) -> AResult<()> {
        let log = self.log.clone();
        let Some(a) = pick(u, &mut self.answerers)? else { return Ok(()) };
        let who = Arc::as_ptr(&a.state) as usize;
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
            Ok(AnswerResponse { uuid: uuid(u, &log)?, stage })
        })?;
        // The answerer's bytes form one stream: a frame may complete (or
        // swallow) earlier ones.
        let msgs = a.sent.push::<AnswerResponse>(&frame);
        trace!("answerer {who:x} sends {} bytes: {}", frame.len(), short(&msgs));
        for m in msgs {
            if let Some(answer_response::Stage::Init(init)) = m.stage {
                self.log.lock().unwrap().answers.push(init.sdp);
            }
        }
        if let Some(tx) = &a.tx {
            let _ = tx.unbounded_send(Ok(http_body::Frame::data(frame)));
        }
        Ok(())
    }

    /// Liveness checks, then every client goes away and every answerer
    /// session must be gone.
    async fn finish(mut self) {
        let limit = Instant::now() + self.deadline + STREAM_SLACK;
        let live = |w: &World| {
            w.calls.iter().filter(|c| !c.dropped).all(|c| c.state.lock().unwrap().ended_at.is_some())
                && w.answerers.iter().filter(|a| !a.dropped).all(|a| {
                    let st = a.state.lock().unwrap();
                    st.armed_at.is_none() || st.ended_at.is_some()
                })
        };
        while !live(&self) && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for c in self.calls.iter().filter(|c| !c.dropped) {
            let st = c.state.lock().unwrap();
            let (opened, ended) = (st.armed_at.unwrap_or(limit), st.ended_at);
            assert!(
                ended.is_some_and(|e| e <= opened + self.deadline + STREAM_SLACK),
                "a Call stream outlived its offer deadline ({:?}): opened {opened:?}, ended {ended:?}",
                self.deadline
            );
        }
        for a in self.answerers.iter().filter(|a| !a.dropped) {
            let st = a.state.lock().unwrap();
            if let Some(armed) = st.armed_at {
                assert!(
                    st.ended_at.is_some_and(|e| e <= armed + self.deadline + STREAM_SLACK),
                    "an Answer stream outlived its offer deadline ({:?}): offer at {armed:?}, ended {:?}",
                    self.deadline,
                    st.ended_at
                );
            }
        }
        // Everybody leaves.
        for c in &self.calls {
            c.reader.abort();
        }
        for a in &mut self.answerers {
            a.tx = None;
            a.reader.abort();
        }
        let limit = Instant::now() + self.deadline + STREAM_SLACK;
        while self.queue.stats().sessions != 0 && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(self.queue.stats().sessions, 0, "answerer sessions leaked after every stream closed");
    }
}

fn show(headers: &[(String, Vec<u8>)]) -> Vec<(&str, String)> {
    headers.iter().map(|(k, v)| (k.as_str(), short(&String::from_utf8_lossy(v)))).collect()
}

/// A message's debug form, cut short.
fn short(m: &impl std::fmt::Debug) -> String {
    let s = format!("{m:?}");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn pick<'a, T>(u: &mut Unstructured, items: &'a mut [T]) -> AResult<Option<&'a mut T>> {
    if items.is_empty() {
        return Ok(None);
    }
    let i = u.choose_index(items.len())?;
    Ok(items.get_mut(i))
}

// ---- input shapes ----

/// A string: mostly short, sometimes huge.
fn string(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => String::new(),
        1 => "x".repeat(u.int_in_range(1_000..=300_000)?),
        _ => u.arbitrary()?,
    })
}

/// `rpc-host` values (and sometimes a `grpc-timeout`) as raw header bytes.
fn metadata(u: &mut Unstructured, deadline: Duration) -> AResult<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
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
        out.push(("rpc-host".to_owned(), v));
    }
    if u.ratio(1, 16)? {
        let v = match u.int_in_range(0..=2)? {
            0 => format!("{}m", deadline.as_millis() + 1),
            1 => "1n".to_owned(),
            _ => u.arbitrary()?,
        };
        out.push(("grpc-timeout".to_owned(), v.into_bytes()));
    }
    Ok(out)
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
fn uuid(u: &mut Unstructured, log: &Mutex<Log>) -> AResult<String> {
    let known = log.lock().unwrap().uuids.clone();
    Ok(match u.int_in_range(0..=7)? {
        0 => String::new(),
        1 => "00000000-0000-0000-0000-000000000000".to_owned(),
        2 => string(u)?,
        _ if known.is_empty() => string(u)?,
        _ => u.choose(&known)?.clone(),
    })
}

/// One gRPC message frame: a well-formed message, raw bytes, or broken
/// framing.
fn framed<M: Message>(u: &mut Unstructured, make: impl FnOnce(&mut Unstructured) -> AResult<M>) -> AResult<Bytes> {
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
    Ok(Bytes::from(frame))
}

/// The body of a unary request: normally one frame; sometimes none, two, or
/// a truncated one.
fn unary_body<M: Message>(u: &mut Unstructured, make: impl FnOnce(&mut Unstructured) -> AResult<M>) -> AResult<Bytes> {
    let frame = framed(u, make)?;
    Ok(match u.int_in_range(0..=19)? {
        0 => Bytes::new(),
        1 => {
            let mut two = frame.to_vec();
            two.extend_from_slice(&frame);
            Bytes::from(two)
        }
        2 => {
            let cut = u.int_in_range(0..=frame.len())?;
            frame.slice(..cut)
        }
        _ => frame,
    })
}

/// Splits a gRPC byte stream into the messages a server could decode from it
/// (uncompressed frames that are complete and decode).
#[derive(Default)]
struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    fn push<M: Message + Default>(&mut self, bytes: &[u8]) -> Vec<M> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((compressed, message, n)) = tether_transport::grpc::first_frame(&self.buf) {
            if !compressed && let Ok(m) = M::decode(message) {
                out.push(m);
            }
            self.buf.drain(..n);
        }
        out
    }
}

// ---- requests and responses ----

fn request<B>(method: &str, headers: Vec<(String, Vec<u8>)>, entity: Option<String>, body: B) -> http::Request<B> {
    let mut req = http::Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.version_mut() = http::Version::HTTP_2;
    if let Ok(uri) = format!("http://signaling.test{SERVICE}{method}").parse() {
        *req.uri_mut() = uri;
    }
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (http::HeaderName::try_from(k), http::HeaderValue::from_bytes(&v)) {
            h.append(k, v);
        }
    }
    if let Some(e) = entity {
        req.extensions_mut().insert(AuthEntity(e));
    }
    req
}

/// Calls the service; the handler must return within [`UNARY_BOUND`].
async fn unary<B>(svc: &mut Svc, req: http::Request<B>) -> http::Response<tonic::body::Body>
where
    Svc: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
{
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(UNARY_BOUND, svc.call(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(never)) => match never {},
        Err(_) => panic!("{path}: handler did not return within {UNARY_BOUND:?}"),
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<i32> {
    tether_transport::grpc::status_from_headers(h).map(|s| s.code() as i32)
}

/// Reads a response to its end, handing every message to `on_msg`; the
/// gRPC status (`None` if the body ended without one).
async fn read_stream<M: Message + Default>(
    resp: http::Response<tonic::body::Body>,
    mut on_msg: impl FnMut(M),
) -> Option<i32> {
    let (parts, mut body) = resp.into_parts();
    if let Some(s) = grpc_status(&parts.headers) {
        return Some(s); // trailers-only
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(t) = frame.trailers_ref() {
            assert!(buf.is_empty(), "trailers in the middle of a message");
            return grpc_status(t);
        }
        if let Some(d) = frame.data_ref() {
            buf.extend_from_slice(d);
            while let Some((compressed, message, n)) = tether_transport::grpc::first_frame(&buf) {
                assert!(!compressed, "server sent a compressed message");
                on_msg(M::decode(message).expect("server sent an undecodable message"));
                buf.drain(..n);
            }
        }
    }
    None
}

/// Reads a Call stream and checks it.
async fn read_call(resp: http::Response<tonic::body::Body>, log: Arc<Mutex<Log>>, state: Arc<Mutex<StreamState>>) {
    let me = Arc::as_ptr(&state) as usize;
    let mut uuid: Option<String> = None;
    let mut init = false;
    let status = read_stream::<CallResponse>(resp, |m| {
        trace!("caller {me:x} got {}", short(&m));
        assert!(!m.uuid.is_empty(), "CallResponse without a uuid");
        match &uuid {
            Some(u) => assert_eq!(u, &m.uuid, "CallResponse uuid changed"),
            None => {
                log.lock().unwrap().saw_uuid(&m.uuid);
                uuid = Some(m.uuid.clone());
            }
        }
        match m.stage {
            Some(call_response::Stage::Init(i)) => {
                assert!(!init, "second init on a Call stream");
                assert!(log.lock().unwrap().answers.contains(&i.sdp), "caller got an SDP no answerer sent");
                init = true;
            }
            Some(call_response::Stage::Update(up)) => {
                assert!(init, "update before init on a Call stream");
                assert!(up.candidate.is_some(), "update without a candidate on a Call stream");
            }
            None => panic!("CallResponse without a stage"),
        }
    })
    .await;
    trace!("caller {me:x} ended: {status:?}");
    assert!(status.is_some(), "Call stream ended without a status");
    assert!(status != Some(0) || init, "Call stream ended OK without an answer");
    state.lock().unwrap().ended_at = Some(Instant::now());
}

/// Reads an Answer stream and checks it.
/// What an Answer stream's reader knows about its answerer.
struct AnswerChecks {
    /// The answerer asked for heartbeats.
    heartbeats: bool,
    /// The key the server vouches for callers with towards this answerer.
    vouch: Option<VouchKey>,
    /// The answerer's hosts.
    hosts: Vec<String>,
}

fn vouch_key() -> VouchKey {
    VouchKey::from_secret("fuzz-machine-secret")
}

async fn read_answer(
    resp: http::Response<tonic::body::Body>,
    checks: AnswerChecks,
    log: Arc<Mutex<Log>>,
    state: Arc<Mutex<StreamState>>,
) {
    let me = Arc::as_ptr(&state) as usize;
    let mut uuid: Option<String> = None;
    let mut done = false;
    let status = read_stream::<AnswerRequest>(resp, |m| {
        trace!("answerer {me:x} got {}", short(&m));
        if let Some(answer_request::Stage::Heartbeat(_)) = m.stage {
            assert!(checks.heartbeats, "heartbeat to an answerer that did not allow them");
            assert!(m.uuid.is_empty(), "heartbeat with a uuid");
            return;
        }
        if let Some(answer_request::Stage::Init(i)) = &m.stage {
            assert!(uuid.is_none(), "second init on an Answer stream");
            assert!(!m.uuid.is_empty(), "init without a uuid");
            assert!(log.lock().unwrap().offers.contains(&i.sdp), "answerer got an SDP no caller sent");
            assert!(i.deadline.is_some(), "init without a deadline");
            if !i.tether_caller_assertion.is_empty() {
                let key = checks.vouch.as_ref().expect("a caller assertion for an answerer without a vouch key");
                // An assertion for an offer with fingerprints must verify for exactly this exchange.
                let fp = sdp::decode(&i.sdp).map(|(_, s)| sdp::fingerprints(&s)).unwrap_or_default();
                if !fp.is_empty() {
                    let verified = key.verify(&i.tether_caller_assertion, &checks.hosts, &m.uuid, &fp);
                    assert!(verified.is_ok(), "the signaler's caller assertion does not verify: {verified:?}");
                    trace!("answerer {me:x}: caller assertion for {:?} verified", verified.map(|c| c.sub));
                }
            }
            log.lock().unwrap().saw_uuid(&m.uuid);
            uuid = Some(m.uuid);
            state.lock().unwrap().armed_at = Some(Instant::now());
            return;
        }
        let Some(want) = &uuid else { panic!("{:?} before init on an Answer stream", m.stage) };
        assert_eq!(want, &m.uuid, "Answer stream uuid changed");
        assert!(!done, "{:?} after done on an Answer stream", m.stage);
        match m.stage {
            Some(answer_request::Stage::Update(up)) => {
                assert!(up.candidate.is_some(), "update without a candidate on an Answer stream")
            }
            Some(answer_request::Stage::Done(_)) => done = true,
            Some(answer_request::Stage::Error(e)) => assert!(e.status.is_some(), "error stage without a status"),
            _ => panic!("AnswerRequest without a stage"),
        }
    })
    .await;
    trace!("answerer {me:x} ended: {status:?}");
    assert!(status.is_some(), "Answer stream ended without a status");
    state.lock().unwrap().ended_at = Some(Instant::now());
}
