//! The answerer role: a machine takes offers for its names and turns each into a peer connection
//! that serves the machine's router over its data channel.
//!
//! Offers reach an answerer from one of two places:
//!
//! * **in process** ([`spawn_local`]): the machine's embedded signaler keeps its calls in a
//!   [`CallQueue`] in the same process; the answerer registers its names with that queue and
//!   claims offers from it directly. No HTTP connection, token or assertion is involved: the
//!   signaler that authenticated the caller is this process, so the offer's caller *is* the
//!   caller.
//! * **over gRPC** ([`spawn_remote`]): the answerer holds `Answer` streams to an external
//!   signaling service. Each worker keeps one *waiting* stream; when an offer arrives the
//!   exchange moves to its own task and the worker opens a fresh stream, so concurrent calls
//!   never queue behind one stream. Lost connections are re-established with capped, jittered
//!   exponential backoff; a signaler the machine cannot reach is logged at WARN once per change
//!   of state and reported through [`RemoteStatus`].
//!
//! Both feed the same exchange: decode the offer, answer it, trickle candidates both ways, send
//! `done` once our side of the `data` channel is open, then serve the router until the peer dies.
//!
//! Each exchange gathers with the machine's own ICE servers merged with those of the signaler
//! the offer came through, as goutils' answerer does: an external signaler's, from
//! `OptionalWebRTCConfig` (asked on every connection to it) and from the offer's init stage
//! (fresh TURN credentials per offer); the embedded signaler's through
//! [`AnswererConfig::signaler_ice`]. A machine behind a symmetric NAT with no TURN server of its
//! own thus still gets a relay candidate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_transport::auth::AuthEntity;
use tether_transport::dial::{Credentials, DirectConnection, DirectOptions, HeaderStamp, SharedHeaders};
use tether_transport::identity::VouchKey;
use tether_transport::server::{ConnectionInfo, HttpService, TransportKind, next_connection_id};
use tether_transport::webrtc::RtcOptions;
use tether_transport::webrtc::peer::{IceServer, PeerOptions};
use tether_transport::webrtc::sdp::{self, SdpKind};
use tether_transport::webrtc::{PeerEvent as RtcEvent, RtcPeer, SelectedPair};
use tether_wire::framing::Limits;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::queue::{AnswererEvent, AnswererResponder, CallQueue, CallerEvent, QueueError};

/// What every answerer of a machine shares, wherever its offers come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AnswererConfig {
    /// Every host name this machine answers for.
    pub hosts: Vec<String>,
    /// Peer connection settings.
    pub peer: PeerOptions,
    /// Framing limits of served connections.
    pub limits: Limits,
    /// Identity given to calls over WebRTC when the signaler does not name
    /// the caller.
    pub entity: Option<String>,
    /// Refuse offers whose caller the signaler did not authenticate (a
    /// machine that requires authentication must not let anonymous peers in).
    pub require_caller: bool,
    /// Counters shared by every answerer of a machine.
    pub stats: Arc<AnswererStats>,
    /// The machine's limit on WebRTC connections, shared by every answerer
    /// (`None`: no limit). A caller's priority is its offer's `a=x-priority`.
    pub slots: Option<Arc<crate::slots::ConnectionSlots>>,
    /// Most offers in negotiation at once (answered or being answered, ICE
    /// and DTLS not done yet) over every answerer sharing `stats`. Beyond
    /// it, a new offer whose caller address already holds the most is
    /// refused; any other sheds the oldest offer of the address holding the
    /// most (so a flood from a few addresses sheds its own offers, never a
    /// lone real caller's). Either fails with RESOURCE_EXHAUSTED. Offers from external signalers carry no address
    /// and count as one. Default [`DEFAULT_MAX_NEGOTIATING`].
    pub max_negotiating: usize,
    /// The ICE servers the in-process signaler hands out for a host (for
    /// [`spawn_local`]; an external signaler's come over the wire).
    pub signaler_ice: Option<SignalerIce>,
    /// The machine's open connections, which ICE restart offers reach
    /// (shared by every answerer of a machine: a restart may come through
    /// another signaler than the first offer).
    pub live: Arc<LivePeers>,
}

/// The open WebRTC connections of a machine, by the session id of the offer
/// that set each up (`o=` line), so that a later offer of the same peer
/// connection — an ICE restart after the caller's network changed — goes to
/// that connection instead of making a new one.
///
/// An offer is taken as a restart only when its session id, its DTLS
/// fingerprints and its caller's entity are all the connection's, and its
/// ICE credentials are new. The fingerprints name the caller's DTLS
/// certificate, which the connection's handshake proved it holds; someone
/// else's offer with a copied session id gets a connection of its own.
#[derive(Default)]
pub struct LivePeers {
    peers: parking_lot::Mutex<HashMap<String, LivePeer>>,
}

impl std::fmt::Debug for LivePeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePeers").field("count", &self.peers.lock().len()).finish()
    }
}

struct LivePeer {
    peer: RtcPeer,
    fingerprints: Vec<String>,
    entity: Option<AuthEntity>,
    ufrag: Option<String>,
    info: ConnectionInfo,
}

impl LivePeers {
    /// How many connections can be restarted.
    pub fn len(&self) -> usize {
        self.peers.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(
        &self,
        offer_sdp: &str,
        peer: &RtcPeer,
        entity: Option<&AuthEntity>,
        info: &ConnectionInfo,
    ) -> Option<String> {
        let id = sdp::session_id(offer_sdp)?.to_owned();
        let live = LivePeer {
            peer: peer.clone(),
            fingerprints: sdp::fingerprints(offer_sdp),
            entity: entity.cloned(),
            ufrag: sdp::ice_ufrag(offer_sdp).map(str::to_owned),
            info: info.clone(),
        };
        let mut peers = self.peers.lock();
        // A session id already taken (a replayed offer) keeps its first owner.
        if peers.contains_key(&id) {
            return None;
        }
        peers.insert(id.clone(), live);
        Some(id)
    }

    fn remove(&self, id: &str) {
        self.peers.lock().remove(id);
    }

    /// The connection `offer_sdp` restarts, if it is one (see the type's docs).
    fn restart_target(&self, offer_sdp: &str, entity: Option<&AuthEntity>) -> Option<(RtcPeer, ConnectionInfo)> {
        let id = sdp::session_id(offer_sdp)?;
        let mut peers = self.peers.lock();
        let live = peers.get(id)?;
        if live.peer.closed().is_cancelled() {
            peers.remove(id);
            return None;
        }
        let ufrag = sdp::ice_ufrag(offer_sdp).map(str::to_owned);
        let same_caller = live.fingerprints == sdp::fingerprints(offer_sdp) && live.entity.as_ref() == entity;
        if !same_caller || live.fingerprints.is_empty() || ufrag.is_none() || live.ufrag == ufrag {
            return None;
        }
        let live = peers.get_mut(id)?;
        live.ufrag = ufrag;
        Some((live.peer.clone(), live.info.clone()))
    }
}

/// The ICE servers a signaler hands out for a host, asked per offer (TURN
/// credentials are minted fresh).
#[derive(Clone)]
pub struct SignalerIce(Arc<IceFn>);

type IceFn = dyn Fn(&str) -> Vec<pb::IceServer> + Send + Sync;

impl SignalerIce {
    /// Wraps `f`, called with the offer's host.
    pub fn new(f: impl Fn(&str) -> Vec<pb::IceServer> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for SignalerIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalerIce(..)")
    }
}

/// `ours` followed by the URLs of `theirs` that `ours` does not have yet
/// (entries left without a URL are dropped).
pub fn merge_ice_servers(ours: &[IceServer], theirs: &[pb::IceServer]) -> Vec<IceServer> {
    let mut merged = ours.to_vec();
    for server in theirs {
        let mut server = IceServer::from(server);
        server.urls.retain(|u| !merged.iter().any(|m| m.urls.iter().any(|v| v.eq_ignore_ascii_case(u))));
        if !server.urls.is_empty() {
            merged.push(server);
        }
    }
    merged
}

/// The default of [`AnswererConfig::max_negotiating`]: a real caller
/// negotiates in well under a second, so 32 at once is a burst of dozens of
/// dashboards; each holds a peer's UDP sockets and CPU for its handshakes,
/// which a flood of offers that never finish ICE would otherwise pile up
/// until their deadlines.
pub const DEFAULT_MAX_NEGOTIATING: usize = 32;

impl AnswererConfig {
    /// An answerer for `hosts` with defaults.
    pub fn new(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            peer: PeerOptions::default(),
            limits: Limits::default(),
            entity: None,
            require_caller: false,
            stats: Arc::default(),
            slots: None,
            max_negotiating: DEFAULT_MAX_NEGOTIATING,
            signaler_ice: None,
            live: Arc::default(),
        }
    }
}

/// An external signaling service to hold `Answer` streams to.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoteSignaler {
    /// Signaling service address (`host:port` or URL).
    pub address: String,
    /// Credentials for the signaling service, if it requires them.
    pub credentials: Option<Credentials>,
    /// Key to verify the signaler's caller assertions with (see
    /// [`tether_transport::identity`]). Derived from `credentials` when they
    /// are an API key and this is `None`.
    pub vouch: Option<VouchKey>,
    /// Number of concurrently waiting `Answer` streams.
    pub workers: usize,
    /// Connection settings (timeouts, an extra CA for `https://`).
    pub connection: DirectOptions,
}

impl RemoteSignaler {
    /// The signaler at `address`, without credentials.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            credentials: None,
            vouch: None,
            workers: 2,
            connection: DirectOptions::default(),
        }
    }
}

/// Live counts of an answerer's work (for leak checks and status).
#[derive(Debug, Default)]
pub struct AnswererStats {
    /// Offers being answered (signaling exchange and ICE in progress).
    pub exchanges: AtomicUsize,
    /// Connected peers being served.
    pub peers: AtomicUsize,
    /// Offers shed in negotiation for newer ones (see
    /// [`AnswererConfig::max_negotiating`]).
    pub shed: AtomicU64,
    /// The offers in negotiation, oldest first, with their caller address:
    /// cancelled to shed one.
    negotiating: parking_lot::Mutex<std::collections::BTreeMap<u64, (Option<String>, CancellationToken)>>,
    next: AtomicU64,
}

/// An offer in negotiation: counted in [`AnswererStats::exchanges`] and
/// registered to be shed, until dropped (the peer connected, or failed).
struct Negotiating<'a> {
    stats: &'a AnswererStats,
    _gauge: Gauge<'a>,
    id: u64,
    shed: CancellationToken,
}

impl<'a> Negotiating<'a> {
    /// Registers a new offer from `address`. Over `max` in negotiation, one
    /// goes: the new one if its address holds the most, else the oldest of
    /// the address that does.
    fn new(stats: &'a AnswererStats, max: usize, address: Option<String>) -> Self {
        let id = stats.next.fetch_add(1, Ordering::Relaxed);
        let shed = CancellationToken::new();
        let mut negotiating = stats.negotiating.lock();
        negotiating.insert(id, (address.clone(), shed.clone()));
        if negotiating.len() > max.max(1) {
            let mut counts: HashMap<&Option<String>, usize> = HashMap::new();
            for (a, _) in negotiating.values() {
                *counts.entry(a).or_default() += 1;
            }
            let own = counts.get(&address).copied().unwrap_or(0);
            let top = counts
                .iter()
                .filter(|(a, _)| ***a != address)
                .max_by_key(|(_, n)| **n)
                .map(|(a, n)| ((*a).clone(), *n));
            // The new offer's address holds the most already: refuse the new
            // one before it costs a peer. Else the oldest offer (the map is
            // in age order) of the address holding the most goes.
            let victim = match top {
                Some((top, n)) if n >= own => negotiating.iter().find(|(_, (a, _))| *a == top).map(|(k, _)| *k),
                _ => Some(id),
            };
            if let Some((_, token)) = victim.and_then(|v| negotiating.remove(&v)) {
                token.cancel();
                stats.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(negotiating);
        Self { stats, _gauge: Gauge::new(&stats.exchanges), id, shed }
    }
}

impl Drop for Negotiating<'_> {
    fn drop(&mut self) {
        self.stats.negotiating.lock().remove(&self.id);
    }
}

impl AnswererStats {
    /// `(exchanges, peers)` now.
    pub fn snapshot(&self) -> (usize, usize) {
        (self.exchanges.load(Ordering::Acquire), self.peers.load(Ordering::Acquire))
    }
}

/// Increments a counter for as long as it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        Self(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Something that happened to a peer connection served by the answerer.
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// The data channel opened; calls on it carry this connection info. The
    /// selected ICE candidate pair, when the stack reports one.
    Opened(ConnectionInfo, Option<SelectedPair>),
    /// The connection is gone (closed, ICE failed or consent lost): every
    /// call on it was cancelled.
    Closed(ConnectionInfo),
}

/// Receives [`PeerEvent`]s.
pub type PeerEvents = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// Whether an answerer reaches its external signaling service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteStatus {
    /// No attempt has finished yet.
    Connecting,
    /// An `Answer` stream is open: callers of the signaler reach the machine.
    Answering,
    /// The last attempt failed, for this reason (TLS, credentials, DNS, a
    /// refused `Answer`, …); the answerer keeps retrying.
    Unreachable(String),
}

/// The machine's side of one offer, however it arrived.
struct IncomingOffer {
    uuid: String,
    /// Encoded SDP offer.
    sdp: String,
    disable_trickle: bool,
    deadline: Option<SystemTime>,
    caller: Caller,
    /// The caller's address (in-process signaler only), for fair shedding.
    address: Option<String>,
    /// ICE servers the signaler handed out for this call.
    ice_servers: Vec<pb::IceServer>,
    caller_events: BoxStream<'static, CallerEvent>,
    responder: Box<dyn AnswererResponder>,
}

/// Who the signaler says is calling.
enum Caller {
    /// The in-process signaler's own word: the entity it authenticated
    /// (`None`: the call was not authenticated).
    Local(Option<String>),
    /// An external signaler's caller assertion (empty: none), to be verified
    /// with this key.
    Asserted(String, Option<VouchKey>),
}

/// Starts answering the offers for `config.hosts` that `queue` (the
/// in-process signaler's) receives; runs until `shutdown`.
pub fn spawn_local(
    queue: Arc<dyn CallQueue>,
    config: AnswererConfig,
    svc: HttpService,
    events: PeerEvents,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Context { config, svc, events, shutdown });
    tokio::spawn(async move {
        let mut attempt = 0u32;
        while !ctx.shutdown.is_cancelled() {
            let mut session = match queue.register_answerer(ctx.config.hosts.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot register with the embedded signaler: {e}");
                    if !ctx.pause(attempt).await {
                        return;
                    }
                    attempt += 1;
                    continue;
                }
            };
            loop {
                let exchange = tokio::select! {
                    x = session.recv_offer() => x,
                    _ = ctx.shutdown.cancelled() => return,
                };
                match exchange {
                    Ok(x) => {
                        attempt = 0;
                        let ice_servers =
                            ctx.config.signaler_ice.as_ref().map(|f| (f.0)(&x.offer.host)).unwrap_or_default();
                        let offer = IncomingOffer {
                            ice_servers,
                            uuid: x.offer.uuid,
                            sdp: x.offer.sdp,
                            disable_trickle: x.offer.disable_trickle,
                            deadline: Some(x.offer.deadline),
                            caller: Caller::Local(x.offer.caller),
                            address: x.offer.address,
                            caller_events: x.caller_events,
                            responder: x.responder,
                        };
                        tokio::spawn(ctx.clone().run(offer));
                    }
                    Err(e) => {
                        tracing::warn!("the embedded signaler's queue failed: {e}");
                        break;
                    }
                }
            }
            if !ctx.pause(attempt).await {
                return;
            }
            attempt += 1;
        }
    });
}

/// Starts the workers that hold `Answer` streams to `remote` for
/// `config.hosts` (1–5 names, the protocol's limit per stream); they run
/// until `shutdown`. The returned watch follows whether the signaler is
/// reachable.
pub fn spawn_remote(
    mut remote: RemoteSignaler,
    config: AnswererConfig,
    svc: HttpService,
    events: PeerEvents,
    shutdown: CancellationToken,
) -> watch::Receiver<RemoteStatus> {
    if remote.vouch.is_none()
        && let Some(creds) = remote.credentials.as_ref().filter(|c| c.r#type == tether_transport::auth::API_KEY)
    {
        remote.vouch = Some(VouchKey::from_secret(&creds.payload));
    }
    let (status_tx, status_rx) = watch::channel(RemoteStatus::Connecting);
    let (network_tx, network) = watch::channel(0u64);
    let worker = Arc::new(RemoteWorker { remote, status: status_tx, ice_servers: Default::default(), network });
    let ctx = Arc::new(Context { config, svc, events, shutdown: shutdown.clone() });
    for n in 0..worker.remote.workers.max(1) {
        tokio::spawn(worker.clone().run(n, ctx.clone()));
    }
    tokio::spawn(watch_addresses(network_tx, shutdown));
    status_rx
}

/// How often the answerer checks this host's addresses.
const ADDRESS_POLL: Duration = Duration::from_millis(200);

/// Bumps `network` whenever this host's IPv4 addresses change, until
/// `shutdown`: a connection to a signaler made from an address that went
/// away is dead, though nothing may say so for a long time, and a caller's
/// ICE restart (after the machine went silent to it) must reach us through
/// a live one.
async fn watch_addresses(network: watch::Sender<u64>, shutdown: CancellationToken) {
    let mut known = tether_transport::webrtc::host_addresses();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ADDRESS_POLL) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = tether_transport::webrtc::host_addresses();
        if now != known {
            tracing::info!(before = ?known, now = ?now, "this host's addresses changed: reconnecting to the signaling services");
            known = now;
            network.send_modify(|n| *n += 1);
        }
    }
}

/// Capped exponential backoff with full jitter, from 100 ms to 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100).saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(5));
    cap.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// What every exchange of one answerer needs.
struct Context {
    config: AnswererConfig,
    svc: HttpService,
    events: PeerEvents,
    shutdown: CancellationToken,
}

impl Context {
    /// Waits out the backoff of `attempt`; `false` on shutdown.
    async fn pause(&self, attempt: u32) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt)) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

type Signaling = pb::signaling_service_client::SignalingServiceClient<HeaderStamp<DirectConnection>>;
type Inbound = tonic::Streaming<pb::AnswerRequest>;

struct RemoteWorker {
    remote: RemoteSignaler,
    status: watch::Sender<RemoteStatus>,
    /// What the signaler's `OptionalWebRTCConfig` handed out, asked each
    /// time a connection to it is made.
    ice_servers: parking_lot::Mutex<Vec<pb::IceServer>>,
    /// Bumped when this host's addresses change ([`watch_addresses`]).
    network: watch::Receiver<u64>,
}

impl RemoteWorker {
    /// Records the signaler's state; logs only when it changes.
    fn report(&self, status: RemoteStatus) {
        let address = &self.remote.address;
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            match &status {
                RemoteStatus::Unreachable(reason) => {
                    tracing::warn!(signaling = %address, "cannot answer through this signaling service: {reason}");
                }
                RemoteStatus::Answering if matches!(current, RemoteStatus::Unreachable(_)) => {
                    tracing::info!(signaling = %address, "answering through this signaling service again");
                }
                _ => {}
            }
            *current = status;
            true
        });
    }

    async fn connect(&self) -> Result<Signaling, tonic::Status> {
        let remote = &self.remote;
        let conn = DirectConnection::connect(&remote.address, &remote.connection).await.map_err(|e| e.to_status())?;
        let headers = SharedHeaders::default();
        if let Some(creds) = &remote.credentials {
            let token = tether_transport::dial::authenticate(conn.clone(), creds).await?;
            headers.set_bearer(&token).map_err(|e| tonic::Status::internal(e.to_string()))?;
        }
        Ok(pb::signaling_service_client::SignalingServiceClient::new(HeaderStamp::new(conn, headers)))
    }

    async fn run(self: Arc<Self>, worker: usize, ctx: Arc<Context>) {
        let mut attempt = 0u32;
        loop {
            let mut client = match tokio::select! { c = self.connect() => c, _ = ctx.shutdown.cancelled() => return } {
                Ok(mut c) => {
                    self.fetch_ice_servers(&mut c, &ctx.config.hosts).await;
                    c
                }
                Err(e) => {
                    self.report(RemoteStatus::Unreachable(describe(&e)));
                    if !ctx.pause(attempt).await {
                        return;
                    }
                    attempt += 1;
                    continue;
                }
            };
            // One Answer stream per offer, until the connection breaks or
            // this host's addresses change (then at once a new connection).
            let mut token_worked = false;
            let mut network = self.network.clone();
            network.mark_unchanged();
            loop {
                let result = tokio::select! {
                    r = self.wait_for_offer(&mut client, &ctx.config.hosts) => r,
                    _ = network.changed() => {
                        tracing::debug!(worker, "the network changed: a new connection to the signaler");
                        token_worked = true;
                        break;
                    }
                    _ = ctx.shutdown.cancelled() => return,
                };
                match result {
                    Ok(Some(offer)) => {
                        attempt = 0;
                        token_worked = true;
                        tokio::spawn(ctx.clone().run(offer));
                    }
                    Ok(None) => token_worked = true,
                    // The signaler's token expired (it worked before):
                    // authenticate again at once, nothing is unreachable.
                    Err(e) if token_worked && e.code() == tonic::Code::Unauthenticated => {
                        tracing::debug!(worker, "answer stream refused ({e}); authenticating again");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(worker, "answer stream ended: {e}");
                        self.report(RemoteStatus::Unreachable(describe(&e)));
                        token_worked = false;
                        break;
                    }
                }
            }
            if token_worked {
                continue;
            }
            if !ctx.pause(attempt).await {
                return;
            }
            attempt += 1;
        }
    }

    /// Asks the signaler for the ICE servers it hands out (`OptionalWebRTCConfig`); a signaler
    /// without it (UNIMPLEMENTED) or failing it leaves the list as it was.
    async fn fetch_ice_servers(&self, client: &mut Signaling, hosts: &[String]) {
        let Some(host) = hosts.first() else { return };
        let Ok(v) = tonic::metadata::MetadataValue::try_from(host.as_str()) else { return };
        let mut request = tonic::Request::new(pb::OptionalWebRtcConfigRequest {});
        request.metadata_mut().insert(tether_wire::metadata::RPC_HOST, v);
        let asked = tokio::time::timeout(Duration::from_secs(10), client.optional_web_rtc_config(request)).await;
        match asked {
            Ok(Ok(r)) => {
                let servers = r.into_inner().config.map(|c| c.additional_ice_servers).unwrap_or_default();
                tracing::debug!(signaling = %self.remote.address, servers = servers.len(), "ICE servers from the signaler");
                *self.ice_servers.lock() = servers;
            }
            Ok(Err(e)) if e.code() == tonic::Code::Unimplemented => {}
            Ok(Err(e)) => tracing::debug!(signaling = %self.remote.address, "OptionalWebRTCConfig failed: {e}"),
            Err(_) => tracing::debug!(signaling = %self.remote.address, "OptionalWebRTCConfig timed out"),
        }
    }

    /// Opens an `Answer` stream and waits for an offer. `Ok(None)` when the
    /// stream ended without one (the signaler recycles idle streams).
    async fn wait_for_offer(
        &self,
        client: &mut Signaling,
        hosts: &[String],
    ) -> Result<Option<IncomingOffer>, tonic::Status> {
        let (tx, rx) = mpsc::channel(32);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for host in hosts {
            let v = tonic::metadata::MetadataValue::try_from(host.as_str())
                .map_err(|_| tonic::Status::invalid_argument(format!("bad host {host:?}")))?;
            request.metadata_mut().append(tether_wire::metadata::RPC_HOST, v);
        }
        request.metadata_mut().insert(crate::HEARTBEATS_ALLOWED, tonic::metadata::MetadataValue::from_static("true"));
        let mut inbound = client.answer(request).await?.into_inner();
        self.report(RemoteStatus::Answering);
        loop {
            let Some(msg) = inbound.message().await? else { return Ok(None) };
            match msg.stage {
                Some(pb::answer_request::Stage::Heartbeat(_)) | None => continue,
                Some(pb::answer_request::Stage::Init(init)) => {
                    let disable_trickle = init.optional_config.as_ref().is_some_and(|c| c.disable_trickle);
                    // The offer's servers (fresh credentials) first, then OptionalWebRTCConfig's.
                    let mut ice_servers =
                        init.optional_config.as_ref().map(|c| c.additional_ice_servers.clone()).unwrap_or_default();
                    ice_servers.extend(self.ice_servers.lock().iter().cloned());
                    let deadline = init.deadline.and_then(|d| SystemTime::try_from(d).ok());
                    return Ok(Some(IncomingOffer {
                        ice_servers,
                        uuid: msg.uuid.clone(),
                        sdp: init.sdp,
                        disable_trickle,
                        deadline,
                        caller: Caller::Asserted(init.tether_caller_assertion, self.remote.vouch.clone()),
                        address: None,
                        caller_events: caller_events(inbound),
                        responder: Box::new(GrpcResponder { uuid: msg.uuid, tx }),
                    }));
                }
                Some(_) => {
                    let _ = tx
                        .send(error_response(&msg.uuid, tonic::Code::InvalidArgument, "expected an init stage first"))
                        .await;
                    return Ok(None);
                }
            }
        }
    }
}

/// A status as one line for the log (tonic's Display adds details and
/// metadata).
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The caller's events of one exchange on an `Answer` stream.
fn caller_events(inbound: Inbound) -> BoxStream<'static, CallerEvent> {
    futures::stream::unfold(Some(inbound), |inbound| async move {
        let mut inbound = inbound?;
        loop {
            let msg = inbound.message().await.ok().flatten()?;
            let event = match msg.stage {
                Some(pb::answer_request::Stage::Update(u)) => match u.candidate {
                    Some(c) => CallerEvent::Candidate(c),
                    None => continue,
                },
                Some(pb::answer_request::Stage::Done(_)) => CallerEvent::Done,
                Some(pb::answer_request::Stage::Error(e)) => CallerEvent::Error(e.status.unwrap_or_default()),
                _ => continue,
            };
            // Keep reading after a terminal event: the signaler ends the
            // stream, and a dropped request stream would reset the RPC.
            return Some((event, Some(inbound)));
        }
    })
    .boxed()
}

/// Sends the answerer's events of one exchange on its `Answer` stream.
struct GrpcResponder {
    uuid: String,
    tx: mpsc::Sender<pb::AnswerResponse>,
}

#[async_trait]
impl AnswererResponder for GrpcResponder {
    async fn respond(&self, event: AnswererEvent) -> Result<(), QueueError> {
        use pb::answer_response::Stage;
        let stage = match event {
            AnswererEvent::Answer(sdp) => Stage::Init(pb::AnswerResponseInitStage { sdp }),
            AnswererEvent::Candidate(c) => Stage::Update(pb::AnswerResponseUpdateStage { candidate: Some(c) }),
            AnswererEvent::Done => Stage::Done(pb::AnswerResponseDoneStage {}),
            AnswererEvent::Error(status) => Stage::Error(pb::AnswerResponseErrorStage { status: Some(status) }),
        };
        let msg = pb::AnswerResponse { uuid: self.uuid.clone(), stage: Some(stage) };
        self.tx.send(msg).await.map_err(|_| QueueError::Unavailable("signaling stream closed".into()))
    }
}

fn error_response(uuid: &str, code: tonic::Code, message: &str) -> pb::AnswerResponse {
    pb::AnswerResponse {
        uuid: uuid.to_owned(),
        stage: Some(pb::answer_response::Stage::Error(pb::AnswerResponseErrorStage {
            status: Some(rpc_status(code, message)),
        })),
    }
}

fn rpc_status(code: tonic::Code, message: &str) -> RpcStatus {
    RpcStatus { code: code as i32, message: message.to_owned(), details: Vec::new() }
}

/// One caller event of an exchange: a candidate goes to `peer`; `true` once
/// the caller is done (or the signaler ended the exchange); its error ends
/// the exchange.
fn on_caller_event(peer: &RtcPeer, event: Option<CallerEvent>) -> Result<bool, tonic::Status> {
    match event {
        Some(CallerEvent::Candidate(c)) => {
            if let Err(e) = peer.add_remote_candidate(&c) {
                tracing::debug!("ignoring a bad remote candidate: {e}");
            }
            Ok(false)
        }
        Some(CallerEvent::Error(status)) => Err(tonic::Status::aborted(format!("caller failed: {}", status.message))),
        Some(CallerEvent::Done) | None => Ok(true),
    }
}

impl IncomingOffer {
    /// Lets the signaler finish the exchange in the background (see [`linger`]).
    fn finish_in_background(&mut self) {
        let events = std::mem::replace(&mut self.caller_events, futures::stream::empty().boxed());
        let responder = std::mem::replace(&mut self.responder, Box::new(Finished));
        tokio::spawn(linger(events, responder, Duration::from_secs(10)));
    }
}

/// Drains what is left of an exchange's caller events for at most `limit`,
/// keeping `responder` alive meanwhile (dropping it early would end the
/// exchange, or reset the `Answer` RPC, before the last event is delivered).
async fn linger(mut events: BoxStream<'static, CallerEvent>, responder: Box<dyn AnswererResponder>, limit: Duration) {
    let _ = tokio::time::timeout(limit, async { while events.next().await.is_some() {} }).await;
    drop(responder);
}

impl Context {
    /// The exchange's deadline: the offer's, but at least 5 s from now.
    fn deadline(offer: &IncomingOffer) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match offer.deadline {
            Some(d) => {
                let left = d.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
                (now + left).max(now + Duration::from_secs(5))
            }
            None => now + Duration::from_secs(10),
        }
    }

    async fn run(self: Arc<Self>, mut offer: IncomingOffer) {
        let exchanging = Negotiating::new(&self.config.stats, self.config.max_negotiating, offer.address.clone());
        let deadline = Self::deadline(&offer);
        if let Err(status) = self.answer(&mut offer, deadline, exchanging).await {
            tracing::debug!(uuid = %offer.uuid, "answering failed: {status}");
            let _ = offer.responder.respond(AnswererEvent::Error(rpc_status(status.code(), status.message()))).await;
            // Let the signaler end the exchange.
            linger(offer.caller_events, offer.responder, Duration::from_secs(5)).await;
        }
    }

    /// The status of an offer shed in negotiation.
    fn shed_status(&self) -> tonic::Status {
        tonic::Status::resource_exhausted(format!(
            "the machine is negotiating {} newer offers; this one, its caller address's oldest, was dropped for them",
            self.config.max_negotiating
        ))
    }

    /// Who is calling: the caller the signaler authenticated (an external
    /// signaler's assertion is verified against this offer), else the
    /// configured shared identity, unless a caller is required.
    fn caller_entity(&self, offer: &IncomingOffer, offer_sdp: &str) -> Result<Option<AuthEntity>, tonic::Status> {
        match &offer.caller {
            Caller::Local(Some(caller)) => return Ok(Some(AuthEntity(caller.clone()))),
            Caller::Asserted(assertion, Some(key)) if !assertion.is_empty() => {
                let claims = key.verify(assertion, &self.config.hosts, &offer.uuid, &sdp::fingerprints(offer_sdp))?;
                return Ok(Some(AuthEntity(claims.sub)));
            }
            _ => {}
        }
        if self.config.require_caller {
            return Err(tonic::Status::permission_denied(
                "this machine requires authenticated callers, and the signaling service did not vouch for this one",
            ));
        }
        Ok(self.config.entity.clone().map(AuthEntity))
    }

    async fn answer(
        &self,
        offer: &mut IncomingOffer,
        deadline: tokio::time::Instant,
        exchanging: Negotiating<'_>,
    ) -> Result<(), tonic::Status> {
        let (kind, offer_sdp) = sdp::decode(&offer.sdp).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if kind != SdpKind::Offer {
            return Err(tonic::Status::invalid_argument("expected an offer"));
        }
        let entity = self.caller_entity(offer, &offer_sdp)?;
        // A later offer of a connection we serve: an ICE restart.
        if let Some((peer, info)) = self.config.live.restart_target(&offer_sdp, entity.as_ref()) {
            return self.restart(offer, &peer, &info, offer_sdp, deadline).await;
        }
        // Admission only for callers we accept, before any peer connection.
        let priority = crate::caller::priority_of(&offer_sdp);
        let slot = match &self.config.slots {
            Some(slots) => Some(slots.admit(priority)?),
            None => None,
        };
        let trickle = !offer.disable_trickle;
        // Shed while it waited for its turn: no peer for it.
        if exchanging.shed.is_cancelled() {
            return Err(self.shed_status());
        }
        let mut options = self.config.peer.clone();
        options.ice_servers = merge_ice_servers(&options.ice_servers, &offer.ice_servers);
        // The machine's connections can carry camera video (StreamService).
        let peer = RtcPeer::new(&options, RtcOptions::default().with_media(true))
            .await
            .map_err(|e| tonic::Status::internal(format!("peer connection: {e}")))?;
        let offer_sdp_kept = offer_sdp.clone();
        let result = tokio::select! {
            result = self.exchange(offer, &peer, offer_sdp, trickle, deadline) => result,
            _ = exchanging.shed.cancelled() => Err(self.shed_status()),
        };
        if let Err(status) = result {
            peer.close();
            return Err(status);
        }
        // Connected: serve the router on the data channel until the peer dies.
        let pair = peer.selected_pair();
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
            priority,
            "webrtc peer connected"
        );
        if let Some(slot) = &slot {
            slot.connected(info.clone());
        }
        let evicted = slot.as_ref().map(|s| s.evicted().clone()).unwrap_or_default();
        drop(exchanging);
        let _serving = Gauge::new(&self.config.stats.peers);
        let restartable = self.config.live.insert(&offer_sdp_kept, &peer, entity.as_ref(), &info);
        (self.events)(PeerEvent::Opened(info.clone(), pair));
        peer.serve(self.svc.clone(), info.clone(), entity, self.config.limits);
        // Let the signaler finish the exchange in the background.
        offer.finish_in_background();
        tokio::select! {
            _ = peer.closed().cancelled() => {}
            _ = self.shutdown.cancelled() => {}
            _ = evicted.cancelled() => {}
        }
        peer.close();
        if let Some(id) = restartable {
            self.config.live.remove(&id);
        }
        drop(slot);
        tracing::info!(remote = ?info.remote, "webrtc peer disconnected");
        (self.events)(PeerEvent::Closed(info));
        Ok(())
    }

    /// Answers an ICE restart offer of the connection `peer`: the answer
    /// carries new ICE credentials and our candidates; the caller's
    /// candidates go to the connection until it is done. The connection
    /// keeps serving throughout (its calls wait for the new path).
    async fn restart(
        &self,
        offer: &mut IncomingOffer,
        peer: &RtcPeer,
        info: &ConnectionInfo,
        offer_sdp: String,
        deadline: tokio::time::Instant,
    ) -> Result<(), tonic::Status> {
        tracing::info!(connection = info.id, remote = ?info.remote, "ICE restart offer for a connection we serve");
        let answer = peer
            .accept_offer(offer_sdp)
            .map_err(|e| tonic::Status::failed_precondition(format!("ICE restart refused: {e}")))?;
        offer
            .responder
            .respond(AnswererEvent::Answer(sdp::encode(SdpKind::Answer, &answer)))
            .await
            .map_err(|_| tonic::Status::unavailable("the signaling exchange ended before the answer was sent"))?;
        // Our new candidates (a socket on an address that appeared) go to
        // the caller until gathering is over or ICE works again.
        let (mut caller_done, mut gathered) = (false, false);
        while !(caller_done && gathered) {
            tokio::select! {
                ev = peer.next_event(), if !gathered => match ev {
                    Some(RtcEvent::LocalCandidate(c)) => {
                        let _ = offer.responder.respond(AnswererEvent::Candidate(c)).await;
                    }
                    Some(RtcEvent::GatheringComplete | RtcEvent::IceConnected) => gathered = true,
                    Some(RtcEvent::Connected | RtcEvent::Open) => {}
                    Some(RtcEvent::Closed(_)) | None => {
                        return Err(tonic::Status::unavailable("the connection closed during its ICE restart"));
                    }
                },
                ev = offer.caller_events.next(), if !caller_done => caller_done = on_caller_event(peer, ev)?,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = peer.closed().cancelled() => {
                    return Err(tonic::Status::unavailable("the connection closed during its ICE restart"));
                }
                _ = self.shutdown.cancelled() => return Err(tonic::Status::unavailable("the machine is shutting down")),
            }
        }
        let _ = offer.responder.respond(AnswererEvent::Done).await;
        offer.finish_in_background();
        Ok(())
    }

    /// Answers the offer and trickles candidates both ways until our side of
    /// the `data` channel is open (then `done` has been sent).
    async fn exchange(
        &self,
        offer: &mut IncomingOffer,
        peer: &RtcPeer,
        offer_sdp: String,
        trickle: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(), tonic::Status> {
        let setup = async {
            let answer =
                peer.accept_offer(offer_sdp).map_err(|e| tonic::Status::invalid_argument(format!("bad offer: {e}")))?;
            if trickle {
                return Ok::<_, tonic::Status>(answer);
            }
            // A caller that does not trickle needs every candidate in the answer.
            loop {
                match peer.next_event().await {
                    Some(RtcEvent::GatheringComplete) => break,
                    Some(RtcEvent::Closed(reason)) => {
                        return Err(tonic::Status::unavailable(format!(
                            "peer connection closed while gathering: {reason}"
                        )));
                    }
                    None => return Err(tonic::Status::unavailable("peer connection closed while gathering")),
                    _ => {}
                }
            }
            peer.local_description().ok_or_else(|| tonic::Status::internal("no local description"))
        };
        let answer_sdp = match tokio::time::timeout_at(deadline, setup).await {
            Ok(r) => r?,
            Err(_) => return Err(tonic::Status::deadline_exceeded("answering took too long")),
        };
        offer
            .responder
            .respond(AnswererEvent::Answer(sdp::encode(SdpKind::Answer, &answer_sdp)))
            .await
            .map_err(|_| tonic::Status::unavailable("the signaling exchange ended before the answer was sent"))?;

        let mut caller_done = false;
        loop {
            tokio::select! {
                ev = peer.next_event() => match ev {
                    Some(RtcEvent::LocalCandidate(c)) => {
                        if trickle {
                            let _ = offer.responder.respond(AnswererEvent::Candidate(c)).await;
                        }
                    }
                    Some(RtcEvent::GatheringComplete | RtcEvent::IceConnected | RtcEvent::Connected) => {}
                    Some(RtcEvent::Open) => {
                        let _ = offer.responder.respond(AnswererEvent::Done).await;
                        return Ok(());
                    }
                    Some(RtcEvent::Closed(reason)) => {
                        return Err(tonic::Status::unavailable(format!("the connection failed before the data channel opened: {reason}")));
                    }
                    None => return Err(tonic::Status::unavailable("the connection closed before the data channel opened")),
                },
                // The caller done, or the signaler ended the exchange: wait
                // for the channel to open.
                ev = offer.caller_events.next(), if !caller_done => caller_done = on_caller_event(peer, ev)?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(tonic::Status::deadline_exceeded("the data channel did not open in time"));
                }
                _ = self.shutdown.cancelled() => return Err(tonic::Status::unavailable("the machine is shutting down")),
            }
        }
    }
}

/// The responder of an exchange whose signaling part is over.
struct Finished;

#[async_trait]
impl AnswererResponder for Finished {
    async fn respond(&self, _event: AnswererEvent) -> Result<(), QueueError> {
        Err(QueueError::Unavailable("the signaling exchange is over".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(session: &str, fingerprint: &str, ufrag: &str) -> String {
        format!(
            "v=0\r\no=- {session} 2 IN IP4 0.0.0.0\r\ns=-\r\na=fingerprint:sha-256 {fingerprint}\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:p\r\n"
        )
    }

    #[tokio::test]
    async fn only_the_same_caller_with_new_ice_credentials_restarts_a_connection() {
        let options = PeerOptions::default().with_include_loopback(true);
        let peer = RtcPeer::new(&options, RtcOptions::default()).await.unwrap();
        let live = LivePeers::default();
        let info = ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id: 7 };
        let alice = Some(AuthEntity("alice".into()));
        let id = live.insert(&offer("42", "AA:BB", "u1"), &peer, alice.as_ref(), &info).unwrap();
        assert_eq!(id, "42");
        // A replayed first offer takes no second entry.
        assert!(live.insert(&offer("42", "CC:DD", "u9"), &peer, None, &info).is_none());
        let target = |sdp: &str, who: Option<&AuthEntity>| live.restart_target(sdp, who).map(|(_, i)| i.id);

        // Not a restart: the same credentials, another certificate, another
        // caller, another session, no session id at all.
        assert_eq!(target(&offer("42", "AA:BB", "u1"), alice.as_ref()), None);
        assert_eq!(target(&offer("42", "CC:DD", "u2"), alice.as_ref()), None);
        assert_eq!(target(&offer("42", "AA:BB", "u2"), None), None);
        assert_eq!(target(&offer("42", "AA:BB", "u2"), Some(&AuthEntity("mallory".into()))), None);
        assert_eq!(target(&offer("43", "AA:BB", "u2"), alice.as_ref()), None);
        assert_eq!(target("v=0\r\na=fingerprint:sha-256 AA:BB\r\na=ice-ufrag:u2\r\n", alice.as_ref()), None);
        // A restart, once per new set of credentials.
        assert_eq!(target(&offer("42", "aa:bb", "u2"), alice.as_ref()), Some(7));
        assert_eq!(target(&offer("42", "AA:BB", "u2"), alice.as_ref()), None);
        assert_eq!(target(&offer("42", "AA:BB", "u3"), alice.as_ref()), Some(7));
        // A closed connection is forgotten.
        peer.close();
        assert_eq!(target(&offer("42", "AA:BB", "u4"), alice.as_ref()), None);
        assert!(live.is_empty());
    }

    #[test]
    fn the_machines_servers_first_then_the_signalers_new_urls() {
        let ours = vec![IceServer::url("stun:stun.example:3478")];
        let theirs = vec![
            pb::IceServer {
                urls: vec!["turn:t.example:3478?transport=udp".into(), "turn:t.example:3478?transport=tcp".into()],
                username: "1:bot".into(),
                credential: "fresh".into(),
            },
            // The same TURN URLs again (OptionalWebRTCConfig after the offer's own), older credentials.
            pb::IceServer {
                urls: vec!["TURN:t.example:3478?transport=udp".into()],
                username: "0:bot".into(),
                credential: "old".into(),
            },
            pb::IceServer { urls: vec!["stun:stun.example:3478".into()], ..Default::default() },
        ];
        let merged = merge_ice_servers(&ours, &theirs);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0], ours[0]);
        assert_eq!(merged[1].urls.len(), 2);
        assert_eq!(merged[1].credential, "fresh");
        assert_eq!(merge_ice_servers(&ours, &[]), ours);
    }

    #[test]
    fn negotiations_over_the_bound_shed_the_busiest_address() {
        let stats = AnswererStats::default();
        let from = |a: &str| Some(a.to_owned());
        let a: Vec<_> = (0..3).map(|_| Negotiating::new(&stats, 3, from("a"))).collect();
        assert_eq!(stats.exchanges.load(Ordering::Relaxed), 3);
        // A lone caller from another address sheds a's oldest.
        let b = Negotiating::new(&stats, 3, from("b"));
        assert!(a[0].shed.is_cancelled() && !a[1].shed.is_cancelled() && !a[2].shed.is_cancelled());
        assert!(!b.shed.is_cancelled());
        // a, holding the most, gets its new offer refused; b is never touched.
        let a4 = Negotiating::new(&stats, 3, from("a"));
        assert!(a4.shed.is_cancelled() && !a[1].shed.is_cancelled() && !b.shed.is_cancelled());
        assert_eq!(stats.shed.load(Ordering::Relaxed), 2);
        // Offers from external signalers (no address) count as one address.
        let none = Negotiating::new(&stats, 3, None);
        assert!(a[1].shed.is_cancelled() && !none.shed.is_cancelled() && !b.shed.is_cancelled());
        drop((a, a4, b, none));
        assert!(stats.negotiating.lock().is_empty());
        assert_eq!(stats.exchanges.load(Ordering::Relaxed), 0);
    }
}
