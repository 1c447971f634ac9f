//! The machine's side of signaling: keep `Answer` streams open to a
//! signaling service, and turn each offer into a peer connection that serves
//! the machine's router over its data channel.
//!
//! Each worker holds one *waiting* `Answer` stream; as soon as an offer
//! arrives the exchange moves to its own task and the worker opens a fresh
//! stream, so concurrent calls are never serialized behind one stream.
//! Lost signaling connections are re-established with capped, jittered
//! exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use super::framing::Limits;
use super::peer::{PeerOptions, new_peer, open_lost};
use super::pipe::Pipe;
use super::sdp::{self, SdpKind};
use crate::auth::AuthEntity;
use crate::dial::{Credentials, HeaderStamp, SharedHeaders};
use crate::identity::VouchKey;
use crate::server::{ConnectionInfo, HttpService, TransportKind, next_connection_id};

/// Settings of an answerer.
#[derive(Clone, Debug)]
pub struct AnswererConfig {
    /// Signaling service address (`host:port` or URL).
    pub signaling_address: String,
    /// Every host name this machine answers for (1–5).
    pub hosts: Vec<String>,
    /// Credentials for the signaling service, if it requires them.
    pub credentials: Option<Credentials>,
    /// A ready access token for the signaling service (instead of credentials).
    pub token: Option<String>,
    /// Peer connection settings.
    pub peer: PeerOptions,
    /// Number of concurrently waiting `Answer` streams.
    pub workers: usize,
    /// Framing limits of served connections.
    pub limits: Limits,
    /// Identity given to calls over WebRTC when the signaling exchange does
    /// not name the caller.
    pub entity: Option<String>,
    /// Key to verify the signaler's caller assertions with (see
    /// [`crate::identity`]). Derived from `credentials` when they are an API
    /// key and this is `None`.
    pub vouch: Option<VouchKey>,
    /// Refuse offers whose caller the signaler did not vouch for (a machine
    /// that requires authentication must not let anonymous peers in).
    pub require_vouched: bool,
    /// Counters shared by every answerer of a machine.
    pub stats: Arc<AnswererStats>,
}

/// Live counts of an answerer's work (for leak checks and status).
#[derive(Debug, Default)]
pub struct AnswererStats {
    /// Offers being answered (signaling exchange and ICE in progress).
    pub exchanges: std::sync::atomic::AtomicUsize,
    /// Connected peers being served.
    pub peers: std::sync::atomic::AtomicUsize,
}

impl AnswererStats {
    /// `(exchanges, peers)` now.
    pub fn snapshot(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Acquire;
        (self.exchanges.load(Acquire), self.peers.load(Acquire))
    }
}

/// Increments a counter for as long as it lives.
struct Gauge<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Gauge<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl AnswererConfig {
    /// An answerer for `hosts` at `signaling_address` with defaults.
    pub fn new(signaling_address: impl Into<String>, hosts: Vec<String>) -> Self {
        Self {
            signaling_address: signaling_address.into(),
            hosts,
            credentials: None,
            token: None,
            peer: PeerOptions::default(),
            workers: 2,
            limits: Limits::default(),
            entity: None,
            vouch: None,
            require_vouched: false,
            stats: Arc::default(),
        }
    }
}

/// Something that happened to a peer connection served by the answerer.
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// The data channel opened; calls on it carry this connection info.
    Opened(ConnectionInfo),
    /// The connection is gone (closed, ICE failed or consent lost): every
    /// call on it was cancelled.
    Closed(ConnectionInfo),
}

/// Receives [`PeerEvent`]s.
pub type PeerEvents = Arc<dyn Fn(PeerEvent) + Send + Sync>;

type Signaling = pb::signaling_service_client::SignalingServiceClient<HeaderStamp<tonic::transport::Channel>>;

/// Starts the answerer's workers; they run until `shutdown`.
pub fn spawn(mut config: AnswererConfig, svc: HttpService, events: PeerEvents, shutdown: CancellationToken) {
    if config.vouch.is_none()
        && let Some(creds) = config.credentials.as_ref().filter(|c| c.r#type == crate::auth::API_KEY)
    {
        config.vouch = Some(VouchKey::from_secret(&creds.payload));
    }
    let config = Arc::new(config);
    for worker in 0..config.workers.max(1) {
        tokio::spawn(run_worker(worker, config.clone(), svc.clone(), events.clone(), shutdown.clone()));
    }
}

/// Capped exponential backoff with full jitter, from 100 ms to 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100).saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(5));
    cap.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

async fn connect(config: &AnswererConfig) -> Result<Signaling, tonic::Status> {
    let channel = crate::dial::connect_channel(&config.signaling_address, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_status())?;
    let headers = SharedHeaders::default();
    if let Some(token) = &config.token {
        headers.set_bearer(token).map_err(|e| tonic::Status::internal(e.to_string()))?;
    } else if let Some(creds) = &config.credentials {
        let token = crate::dial::authenticate(channel.clone(), creds).await?;
        headers.set_bearer(&token).map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    Ok(pb::signaling_service_client::SignalingServiceClient::new(HeaderStamp::new(channel, headers)))
}

async fn run_worker(
    worker: usize,
    config: Arc<AnswererConfig>,
    svc: HttpService,
    events: PeerEvents,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let mut client = match tokio::select! { c = connect(&config) => c, _ = shutdown.cancelled() => return } {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(worker, "signaling connection failed: {e}");
                tokio::select! { _ = tokio::time::sleep(backoff(attempt)) => {}, _ = shutdown.cancelled() => return }
                attempt += 1;
                continue;
            }
        };
        // One Answer stream per offer, until the connection breaks.
        loop {
            let result = tokio::select! {
                r = wait_for_offer(&mut client, &config) => r,
                _ = shutdown.cancelled() => return,
            };
            match result {
                Ok(Some((uuid, init, tx, inbound))) => {
                    attempt = 0;
                    let exchange = Exchange {
                        uuid,
                        init,
                        tx,
                        inbound,
                        config: config.clone(),
                        svc: svc.clone(),
                        events: events.clone(),
                        shutdown: shutdown.clone(),
                    };
                    tokio::spawn(exchange.run());
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(worker, "answer stream ended: {e}");
                    break;
                }
            }
        }
        tokio::select! { _ = tokio::time::sleep(backoff(attempt)) => {}, _ = shutdown.cancelled() => return }
        attempt += 1;
    }
}

type Inbound = tonic::Streaming<pb::AnswerRequest>;

/// Opens an `Answer` stream and waits for an offer. `Ok(None)` when the
/// stream ended without one (the signaler recycles idle streams).
async fn wait_for_offer(
    client: &mut Signaling,
    config: &AnswererConfig,
) -> Result<Option<(String, pb::AnswerRequestInitStage, mpsc::Sender<pb::AnswerResponse>, Inbound)>, tonic::Status> {
    let (tx, rx) = mpsc::channel(32);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for host in &config.hosts {
        let v = tonic::metadata::MetadataValue::try_from(host.as_str())
            .map_err(|_| tonic::Status::invalid_argument(format!("bad host {host:?}")))?;
        request.metadata_mut().append(crate::metadata::RPC_HOST, v);
    }
    request.metadata_mut().insert("heartbeats-allowed", tonic::metadata::MetadataValue::from_static("true"));
    let mut inbound = client.answer(request).await?.into_inner();
    loop {
        let Some(msg) = inbound.message().await? else { return Ok(None) };
        match msg.stage {
            Some(pb::answer_request::Stage::Heartbeat(_)) | None => continue,
            Some(pb::answer_request::Stage::Init(init)) => return Ok(Some((msg.uuid, init, tx, inbound))),
            Some(_) => {
                let _ = tx
                    .send(error_response(&msg.uuid, tonic::Code::InvalidArgument, "expected an init stage first"))
                    .await;
                return Ok(None);
            }
        }
    }
}

fn error_response(uuid: &str, code: tonic::Code, message: &str) -> pb::AnswerResponse {
    pb::AnswerResponse {
        uuid: uuid.to_owned(),
        stage: Some(pb::answer_response::Stage::Error(pb::AnswerResponseErrorStage {
            status: Some(RpcStatus { code: code as i32, message: message.to_owned(), details: Vec::new() }),
        })),
    }
}

struct Exchange {
    uuid: String,
    init: pb::AnswerRequestInitStage,
    tx: mpsc::Sender<pb::AnswerResponse>,
    inbound: Inbound,
    config: Arc<AnswererConfig>,
    svc: HttpService,
    events: PeerEvents,
    shutdown: CancellationToken,
}

impl Exchange {
    fn deadline(&self) -> tokio::time::Instant {
        let now = std::time::SystemTime::now();
        let floor = tokio::time::Instant::now() + Duration::from_secs(5);
        match self.init.deadline.as_ref().and_then(|d| std::time::SystemTime::try_from(*d).ok()) {
            Some(d) => {
                let left = d.duration_since(now).unwrap_or(Duration::ZERO);
                (tokio::time::Instant::now() + left).max(floor)
            }
            None => tokio::time::Instant::now() + Duration::from_secs(10),
        }
    }

    async fn run(mut self) {
        let config = self.config.clone();
        let exchanging = Gauge::new(&config.stats.exchanges);
        let deadline = self.deadline();
        let uuid = self.uuid.clone();
        let tx = self.tx.clone();
        if let Err(status) = self.answer(deadline, exchanging).await {
            tracing::debug!(%uuid, "answering failed: {status}");
            let _ = tx.send(error_response(&uuid, status.code(), status.message())).await;
            drop(tx);
            // Dropping the response stream would reset the RPC before the
            // error is delivered: let the signaler end it.
            let drain = async { while let Ok(Some(_)) = self.inbound.message().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
    }

    async fn answer(&mut self, deadline: tokio::time::Instant, exchanging: Gauge<'_>) -> Result<(), tonic::Status> {
        let (kind, offer) = sdp::decode(&self.init.sdp)?;
        if kind != SdpKind::Offer {
            return Err(tonic::Status::invalid_argument("expected an offer"));
        }
        let entity = self.caller_entity(&offer)?;
        let trickle = !self.init.optional_config.as_ref().is_some_and(|c| c.disable_trickle);
        let peer =
            new_peer(&self.config.peer).await.map_err(|e| tonic::Status::internal(format!("peer connection: {e}")))?;
        let pc = peer.pc.clone();
        let pipe = Pipe::attach(peer.data.clone());
        let failed = CancellationToken::new();
        let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
        pc.on_ice_candidate(Box::new(move |c| {
            let _ = cand_tx.send(c.and_then(|c| c.to_json().ok()));
            Box::pin(async {})
        }));
        {
            let failed = failed.clone();
            pc.on_peer_connection_state_change(Box::new(move |s| {
                if matches!(
                    s,
                    RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                        | RTCPeerConnectionState::Disconnected
                ) {
                    failed.cancel();
                }
                Box::pin(async {})
            }));
        }
        let setup = async {
            let offer = RTCSessionDescription::offer(offer)
                .map_err(|e| tonic::Status::invalid_argument(format!("bad offer: {e}")))?;
            pc.set_remote_description(offer)
                .await
                .map_err(|e| tonic::Status::invalid_argument(format!("bad offer: {e}")))?;
            let answer =
                pc.create_answer(None).await.map_err(|e| tonic::Status::internal(format!("creating answer: {e}")))?;
            let mut gathered = pc.gathering_complete_promise().await;
            pc.set_local_description(answer)
                .await
                .map_err(|e| tonic::Status::internal(format!("setting answer: {e}")))?;
            if !trickle {
                let _ = gathered.recv().await;
            }
            let local = pc.local_description().await.ok_or_else(|| tonic::Status::internal("no local description"))?;
            Ok::<_, tonic::Status>(local.sdp)
        };
        let answer_sdp = match tokio::time::timeout_at(deadline, setup).await {
            Ok(r) => r?,
            Err(_) => return Err(tonic::Status::deadline_exceeded("answering took too long")),
        };
        let init = pb::AnswerResponse {
            uuid: self.uuid.clone(),
            stage: Some(pb::answer_response::Stage::Init(pb::AnswerResponseInitStage {
                sdp: sdp::encode(SdpKind::Answer, &answer_sdp),
            })),
        };
        self.tx.send(init).await.map_err(|_| tonic::Status::unavailable("signaling stream closed"))?;

        let mut done_sent = false;
        let mut gathering_done = !trickle;
        let opened = pipe.opened.clone();
        let lost = open_lost(&peer.data, &peer.negotiation);
        tokio::pin!(lost);
        let mut open_was_lost = false;
        loop {
            tokio::select! {
                _ = opened.cancelled(), if !done_sent => {
                    self.send_done().await;
                    done_sent = true;
                    break;
                }
                c = cand_rx.recv(), if !gathering_done => match c {
                    Some(Some(c)) if trickle => {
                        let update = pb::AnswerResponse {
                            uuid: self.uuid.clone(),
                            stage: Some(pb::answer_response::Stage::Update(pb::AnswerResponseUpdateStage {
                                candidate: Some(sdp::candidate_to_pb(&c)),
                            })),
                        };
                        let _ = self.tx.send(update).await;
                    }
                    Some(Some(_)) => {}
                    Some(None) | None => gathering_done = true,
                },
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => self.on_caller_message(&pc, req).await?,
                    // The signaler ended the exchange; wait for the channel to open.
                    Ok(None) | Err(_) => {
                        tokio::select! {
                            _ = opened.cancelled() => { self.send_done().await; done_sent = true; break; }
                            _ = tokio::time::sleep_until(deadline) => {}
                            _ = failed.cancelled() => {}
                            _ = &mut lost => open_was_lost = true,
                        }
                        break;
                    }
                },
                _ = failed.cancelled() => break,
                _ = &mut lost => {
                    open_was_lost = true;
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.cancelled() => break,
            }
        }
        if open_was_lost {
            tracing::warn!(
                "the caller's first message overtook our side of the data channel open and was lost (webrtc-rs 0.17 \
                 negotiated-channel race); closing the connection so the caller fails fast instead of hanging"
            );
            let _ = pc.close().await;
            pipe.close();
            return Err(tonic::Status::unavailable(
                "the data channel could not be opened: the caller's first message arrived before it",
            ));
        }
        if !done_sent || !opened.is_cancelled() {
            let _ = pc.close().await;
            pipe.close();
            return Err(tonic::Status::deadline_exceeded("the data channel did not open in time"));
        }
        // Connected: serve the router on the data channel until the peer dies.
        let pair = super::selected_pair(&pc).await;
        let info = ConnectionInfo {
            kind: TransportKind::WebRtc,
            remote: pair.as_ref().and_then(|p| p.remote),
            local: pair.as_ref().and_then(|p| p.local),
            id: next_connection_id(),
        };
        tracing::info!(
            remote = ?info.remote,
            pair = ?pair.as_ref().map(|p| (&p.local_type, &p.remote_type)),
            caller = entity.as_ref().map(|e| e.0.as_str()),
            "webrtc peer connected"
        );
        drop(exchanging);
        let config = self.config.clone();
        let _serving = Gauge::new(&config.stats.peers);
        (self.events)(PeerEvent::Opened(info.clone()));
        let closed = pipe.closed.clone();
        let stop = CancellationToken::new();
        let serve = tokio::spawn(super::server::serve(
            pipe,
            self.svc.clone(),
            info.clone(),
            entity,
            self.config.limits,
            stop.clone(),
        ));
        // Let the signaler finish the exchange in the background.
        let mut inbound = std::mem::replace(&mut self.inbound, empty_inbound());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        });
        tokio::select! {
            _ = closed.cancelled() => {}
            _ = failed.cancelled() => {}
            _ = self.shutdown.cancelled() => {}
        }
        stop.cancel();
        let _ = serve.await;
        let _ = pc.close().await;
        tracing::info!(remote = ?info.remote, "webrtc peer disconnected");
        (self.events)(PeerEvent::Closed(info));
        Ok(())
    }

    /// Who is calling: the caller the signaler vouched for (verified against
    /// this offer), else the configured shared identity, unless vouching is
    /// required.
    fn caller_entity(&self, offer_sdp: &str) -> Result<Option<AuthEntity>, tonic::Status> {
        let assertion = &self.init.tether_caller_assertion;
        if let (false, Some(key)) = (assertion.is_empty(), &self.config.vouch) {
            let claims = key.verify(assertion, &self.config.hosts, &self.uuid, &sdp::fingerprints(offer_sdp))?;
            return Ok(Some(AuthEntity(claims.sub)));
        }
        if self.config.require_vouched {
            return Err(tonic::Status::permission_denied(
                "this machine requires authenticated callers, and the signaling service did not vouch for this one",
            ));
        }
        Ok(self.config.entity.clone().map(AuthEntity))
    }

    async fn send_done(&self) {
        let done = pb::AnswerResponse {
            uuid: self.uuid.clone(),
            stage: Some(pb::answer_response::Stage::Done(pb::AnswerResponseDoneStage {})),
        };
        let _ = self.tx.send(done).await;
    }

    async fn on_caller_message(
        &self,
        pc: &Arc<webrtc::peer_connection::RTCPeerConnection>,
        req: pb::AnswerRequest,
    ) -> Result<(), tonic::Status> {
        match req.stage {
            Some(pb::answer_request::Stage::Update(u)) => {
                if let Some(c) = u.candidate.as_ref().and_then(sdp::candidate_from_pb)
                    && let Err(e) = pc.add_ice_candidate(c).await
                {
                    tracing::debug!("ignoring a bad remote candidate: {e}");
                }
                Ok(())
            }
            Some(pb::answer_request::Stage::Error(e)) => {
                let status = e.status.unwrap_or_default();
                Err(tonic::Status::aborted(format!("caller failed: {}", status.message)))
            }
            _ => Ok(()),
        }
    }
}

fn empty_inbound() -> Inbound {
    tonic::Streaming::new_empty(tonic_prost::ProstDecoder::<pb::AnswerRequest>::default(), tonic::body::Body::empty())
}
