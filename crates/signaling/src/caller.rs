//! The caller role of signaling: ask the signaling service for ICE
//! servers, send an offer for a host, trickle candidates both ways, and end
//! up with a [`WebRtcChannel`] once the `data` channel opens.

use std::time::Duration;

use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tokio_util::sync::CancellationToken;

use tether_transport::dial::{Credentials, DialError, DirectConnection, DirectOptions, HeaderStamp, SharedHeaders};
use tether_transport::webrtc::peer::{IceServer, PeerOptions, TurnOptions, TurnScheme, TurnTransport};
use tether_transport::webrtc::sdp::{self, SdpKind};
use tether_transport::webrtc::{PeerError, RtcOptions};
use tether_transport::webrtc::{PeerEvent, RtcChannel, RtcPeer};
use tether_wire::framing::Limits;

/// How to dial a machine over WebRTC.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebRtcOptions {
    /// Signaling service (`host:port` or URL).
    pub signaling_address: String,
    /// The machine's host name as the signaler knows it (`rpc-host`).
    pub host: String,
    /// Credentials for the signaling service.
    pub credentials: Option<Credentials>,
    /// Our own ICE servers (the signaler's are appended).
    pub ice_servers: Vec<IceServer>,
    /// Only relay (TURN) candidates (the anchors' `forceRelay` / `force_relay`).
    pub force_relay: bool,
    /// Deprecated name of [`Self::force_relay`] (either turns it on).
    #[deprecated(note = "use force_relay")]
    pub relay_only: bool,
    /// Never relay: drop every TURN server.
    pub force_p2p: bool,
    /// Keep only this TURN server among all TURN URLs (ours and the
    /// signaler's), e.g. `turn:turn.example.com:3478` (see
    /// [`tether_transport::webrtc::peer::TurnOptions`] for the matching rule).
    pub turn_uri: Option<String>,
    /// Deprecated name of [`Self::turn_uri`] (used when `turn_uri` is unset).
    #[deprecated(note = "use turn_uri")]
    pub turn_uri_override: Option<String>,
    /// Rewrite every TURN URL to this scheme (`turn` or `turns`).
    pub turn_scheme: Option<TurnScheme>,
    /// Rewrite every TURN URL to this transport (`udp` or `tcp`).
    pub turn_transport: Option<TurnTransport>,
    /// Rewrite every TURN URL to this port.
    pub turn_port: Option<u16>,
    /// The caller's priority, sent as `a=x-priority:N` in the offer: a
    /// machine at its `max_webrtc_connections` may close an idle, sessionless
    /// connection of a lower priority to let this one in. Unset: none sent
    /// (the machine counts it as 0).
    pub priority: Option<i32>,
    /// Send a complete offer instead of trickling candidates.
    pub disable_trickle: bool,
    /// Whole-dial limit.
    pub dial_timeout: Duration,
    /// Extra CA for an `https://` signaling address.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Framing limits.
    pub limits: Limits,
    /// ICE timing.
    pub peer: PeerOptions,
}

impl WebRtcOptions {
    /// Defaults for dialing `host` through `signaling_address`.
    #[allow(deprecated)]
    pub fn new(signaling_address: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            signaling_address: signaling_address.into(),
            host: host.into(),
            credentials: None,
            ice_servers: vec![IceServer::url(tether_transport::webrtc::peer::DEFAULT_STUN)],
            force_relay: false,
            relay_only: false,
            force_p2p: false,
            turn_uri: None,
            turn_uri_override: None,
            turn_scheme: None,
            turn_transport: None,
            turn_port: None,
            priority: None,
            disable_trickle: false,
            dial_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
            limits: Limits::default(),
            peer: PeerOptions::default(),
        }
    }

    /// Whether only relay candidates are used (`force_relay`, or its
    /// deprecated name `relay_only`).
    #[allow(deprecated)]
    pub fn relay(&self) -> bool {
        self.force_relay || self.relay_only
    }

    /// The TURN filter and rewrites these options ask for.
    #[allow(deprecated)]
    pub fn turn_options(&self) -> TurnOptions {
        let mut t = TurnOptions::default();
        t.force_p2p = self.force_p2p;
        t.uri = self.turn_uri.clone().or_else(|| self.turn_uri_override.clone());
        t.scheme = self.turn_scheme;
        t.transport = self.turn_transport;
        t.port = self.turn_port;
        t
    }

    /// Settings that can never connect: a TURN URI that does not parse, or
    /// `force_relay` with `force_p2p` (a warning is logged, and the dial
    /// fails at once with INVALID_ARGUMENT).
    pub fn check(&self) -> Result<(), tonic::Status> {
        self.turn_options().validate().map_err(tonic::Status::invalid_argument)?;
        if self.relay() && self.force_p2p {
            tracing::warn!("force_relay and force_p2p are both set: no candidate can connect");
            return Err(tonic::Status::invalid_argument(
                "force_relay and force_p2p are both set: force_p2p drops every TURN server, and force_relay allows only relayed candidates",
            ));
        }
        Ok(())
    }
}

/// An open WebRTC connection to a machine.
#[derive(Clone)]
pub struct WebRtcConnection {
    /// gRPC over the data channel.
    pub channel: RtcChannel,
    peer: RtcPeer,
}

impl std::fmt::Debug for WebRtcConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcConnection").field("closed", &self.peer.closed().is_cancelled()).finish()
    }
}

impl WebRtcConnection {
    /// The peer connection (for media: [`RtcPeer::video_receiver`]).
    pub fn peer(&self) -> &RtcPeer {
        &self.peer
    }

    /// Cancelled when the connection dies (ICE disconnected/failed, channel
    /// closed) or is closed.
    pub fn closed(&self) -> &CancellationToken {
        self.peer.closed()
    }

    /// Closes the connection; calls in flight fail with UNAVAILABLE.
    pub async fn close(&self) {
        self.peer.close();
    }

    /// Sends one message on the `data` channel as it is, bypassing the
    /// framing (for diagnostics and robustness tests: the machine must drop
    /// what it cannot parse and keep serving).
    pub async fn send_raw(&self, packet: bytes::Bytes) -> Result<(), DialError> {
        self.peer.send_raw(&packet).map_err(|e| DialError::Connect("data channel".into(), e.to_string()))
    }

    /// The selected candidate pair.
    pub async fn selected_pair(&self) -> Option<tether_transport::webrtc::SelectedPair> {
        self.peer.selected_pair()
    }
}

/// Applies `force_p2p`, `turn_uri` and the TURN URL rewrites of `options`
/// to the server list (what the dial gathers with).
pub fn filter_ice_servers(servers: Vec<IceServer>, options: &WebRtcOptions) -> Vec<IceServer> {
    options.turn_options().apply(servers)
}

/// Appends `a=x-priority:N` to an SDP, as the TypeScript SDK adds its
/// `additionalSdpFields` (one `a=key:value` line at the end).
pub fn with_priority(sdp: String, priority: Option<i32>) -> String {
    let Some(p) = priority else { return sdp };
    let mut sdp = sdp;
    if !sdp.is_empty() && !sdp.ends_with('\n') {
        sdp.push_str("\r\n");
    }
    sdp.push_str(&format!("a={}:{p}\r\n", PRIORITY_ATTRIBUTE));
    sdp
}

/// The SDP attribute that carries a caller's priority.
pub const PRIORITY_ATTRIBUTE: &str = "x-priority";

/// The priority an offer carries (`a=x-priority:N`; 0 without one or when it
/// does not parse: the TypeScript SDK sends a number, so `2.0` counts as 2).
///
/// ```
/// use tether_signaling::caller::{priority_of, with_priority};
/// assert_eq!(priority_of(&with_priority("v=0\r\n".into(), Some(7))), 7);
/// assert_eq!(priority_of("v=0\r\na=x-priority:-3\r\n"), -3);
/// assert_eq!(priority_of("v=0\r\n"), 0);
/// ```
pub fn priority_of(sdp: &str) -> i32 {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=")?.strip_prefix(PRIORITY_ATTRIBUTE)?.strip_prefix(':'))
        .filter_map(|v| {
            let v = v.trim();
            v.parse::<i32>().ok().or_else(|| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.clamp(i32::MIN as f64, i32::MAX as f64) as i32)
            })
        })
        .next_back()
        .unwrap_or(0)
}

type Signaling = pb::signaling_service_client::SignalingServiceClient<HeaderStamp<DirectConnection>>;

fn with_host<T>(msg: T, host: &str) -> Result<tonic::Request<T>, DialError> {
    let mut req = tonic::Request::new(msg);
    let v = tonic::metadata::MetadataValue::try_from(host)
        .map_err(|_| DialError::Address(host.to_owned(), "not a valid rpc-host".into()))?;
    req.metadata_mut().insert(tether_wire::metadata::RPC_HOST, v);
    Ok(req)
}

/// Dials `options.host` over WebRTC.
pub async fn dial(options: &WebRtcOptions) -> Result<WebRtcConnection, DialError> {
    match tokio::time::timeout(options.dial_timeout, dial_inner(options)).await {
        Ok(r) => r,
        Err(_) => {
            let mut target = format!("{} via {}", options.host, options.signaling_address);
            if options.force_p2p {
                target.push_str(" (force_p2p: TURN relays were not used)");
            } else if options.relay() {
                target.push_str(" (force_relay: only relayed candidates were used)");
            }
            Err(DialError::Timeout(target, options.dial_timeout))
        }
    }
}

/// A fresh connection to the signaling service of `options`, authenticated
/// when it has credentials.
async fn connect_signaling(options: &WebRtcOptions) -> Result<Signaling, DialError> {
    let connection =
        DirectOptions::default().with_connect_timeout(options.dial_timeout).with_tls_ca_pem(options.tls_ca_pem.clone());
    let channel = DirectConnection::connect(&options.signaling_address, &connection).await?;
    let headers = SharedHeaders::default();
    if let Some(creds) = &options.credentials {
        let token = tether_transport::dial::authenticate(channel.clone(), creds).await?;
        headers.set_bearer(&token).map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    Ok(pb::signaling_service_client::SignalingServiceClient::new(HeaderStamp::new(channel, headers)))
}

/// How long an ICE restart waits for the machine's answer before it sends
/// its offer again (the machine answers a restart within milliseconds).
const RESTART_ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Restarts ICE on `connection` (RFC 8445 §9) after a network change: a
/// new offer with new ICE credentials goes to the machine through a fresh
/// connection to the signaling service of `options` (the old one may be
/// bound to an address that is gone), the machine's answer and the
/// candidates of both sides follow, and this returns once ICE has a working
/// pair again. The peer connection, its DTLS and SCTP state, the calls in
/// flight (they resume where they stalled), the media tracks and the
/// session all carry on. Bounded by `limit`; on an error the connection is
/// left as it is (the caller decides whether to redial).
///
/// The machine must recognize the offer as its connection's: a tether
/// machine does (same `o=` session id, DTLS fingerprints and caller). Any
/// other answerer takes it for a new call, the DTLS handshake cannot
/// succeed, and this fails within `limit`.
pub async fn restart_ice(
    options: &WebRtcOptions,
    connection: &WebRtcConnection,
    limit: Duration,
) -> Result<(), DialError> {
    let host = options.host.clone();
    let work = async {
        let mut signaling = connect_signaling(options).await?;
        let peer = &connection.peer;
        let offer = peer.restart_ice().map_err(|e| DialError::Connect(host.clone(), e.to_string()))?;
        let call = pb::CallRequest { sdp: sdp::encode(SdpKind::Offer, &offer), disable_trickle: false };
        // An offer can go to an `Answer` stream the signaler still holds
        // for the machine although it is dead (the machine's own address
        // changed and it has answered from a new connection since): no
        // answer then comes. The same offer again goes to another stream.
        loop {
            let answers = signaling.call(with_host(call.clone(), &options.host)?).await?.into_inner();
            match signal(&mut signaling, options, peer, answers, false, Goal::IceConnected).await {
                Err(DialError::Timeout(what, wait)) => {
                    tracing::debug!("ICE restart: no answer within {wait:?} ({what}); offering again");
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Timeout(format!("ICE restart with {host}"), limit)),
    }
}

async fn dial_inner(options: &WebRtcOptions) -> Result<WebRtcConnection, DialError> {
    options.check()?;
    let mut signaling = connect_signaling(options).await?;

    // ICE servers: ours, then the signaler's (UNIMPLEMENTED = none).
    let mut servers = options.ice_servers.clone();
    match signaling.optional_web_rtc_config(with_host(pb::OptionalWebRtcConfigRequest {}, &options.host)?).await {
        Ok(r) => {
            if let Some(config) = r.into_inner().config {
                servers.extend(config.additional_ice_servers.iter().map(IceServer::from));
            }
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => return Err(s.into()),
    }
    let mut peer_options = options.peer.clone();
    peer_options.ice_servers = servers;
    // A private CA for the signaling service is trusted for `turns:` too
    // (the signaler's TURN servers are often the same deployment's).
    if peer_options.tls_ca_pem.is_none() {
        peer_options.tls_ca_pem = options.tls_ca_pem.clone();
    }
    peer_options.turn = options.turn_options();
    peer_options.relay_only = options.relay();

    let peer = RtcPeer::new(&peer_options, RtcOptions::default().with_media(true))
        .await
        .map_err(|e| DialError::Connect(options.host.clone(), e.to_string()))?;
    let result = exchange(&mut signaling, options, &peer).await;
    if result.is_err() {
        peer.close();
    }
    result.map_err(|e| with_route_hint(e, options))
}

/// What `force_p2p` or `force_relay` ruled out, if either is set.
fn route_hint(options: &WebRtcOptions) -> Option<&'static str> {
    if options.force_p2p {
        Some("force_p2p: TURN relays were not used, and no direct or server-reflexive path worked")
    } else if options.relay() {
        Some("force_relay: only relayed candidates were used, and no TURN relay worked")
    } else {
        None
    }
}

/// Why ICE failed, with what the options ruled out.
fn ice_failed(options: &WebRtcOptions) -> String {
    let mut why = String::from("ICE failed before the data channel opened");
    if let Some(hint) = route_hint(options) {
        why.push_str(&format!(" ({hint})"));
    }
    why
}

/// A connection that could not be made says what the options ruled out,
/// also when the machine's side noticed first (its ICE failure reaches us
/// as the signaling exchange's UNAVAILABLE).
fn with_route_hint(e: DialError, options: &WebRtcOptions) -> DialError {
    let Some(hint) = route_hint(options) else { return e };
    match e {
        DialError::Status(s) if s.code() == tonic::Code::Unavailable && !s.message().contains(hint) => {
            DialError::Status(tonic::Status::unavailable(format!("{} ({hint})", s.message())))
        }
        other => other,
    }
}

/// Runs `then` once every task in `pending` has finished.
async fn after(pending: Vec<tokio::task::JoinHandle<()>>, then: impl Future<Output = ()>) {
    for task in pending {
        let _ = task.await;
    }
    then.await;
}

async fn exchange(
    signaling: &mut Signaling,
    options: &WebRtcOptions,
    peer: &RtcPeer,
) -> Result<WebRtcConnection, DialError> {
    let host = options.host.clone();
    let connect_err = |e: PeerError| DialError::Connect(host.clone(), e.to_string());
    // Calls made on the channel before the data channel opens wait for it.
    let channel = peer.channel(options.limits);
    let mut offer = peer.create_offer().map_err(connect_err)?;
    if options.disable_trickle {
        loop {
            match peer.next_event().await {
                Some(PeerEvent::GatheringComplete) => break,
                Some(PeerEvent::Closed(reason)) => return Err(DialError::Connect(options.host.clone(), reason)),
                None => return Err(DialError::Connect(options.host.clone(), "closed while gathering".into())),
                _ => {}
            }
        }
        offer = peer.local_description().unwrap_or(offer);
    }
    let offer = with_priority(offer, options.priority);
    let call = pb::CallRequest { sdp: sdp::encode(SdpKind::Offer, &offer), disable_trickle: options.disable_trickle };
    let answers = signaling.call(with_host(call, &options.host)?).await?.into_inner();
    signal(signaling, options, peer, answers, options.disable_trickle, Goal::Open).await?;
    Ok(WebRtcConnection { channel, peer: peer.clone() })
}

/// What ends a signaling exchange for the caller.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The `data` channel opened (a new connection).
    Open,
    /// ICE has a working pair again (a restart).
    IceConnected,
}

/// The caller's side of one exchange after its offer went out: takes the
/// answer, trickles candidates both ways and returns once `goal` is reached.
async fn signal(
    signaling: &mut Signaling,
    options: &WebRtcOptions,
    peer: &RtcPeer,
    mut answers: tonic::Streaming<pb::CallResponse>,
    disable_trickle: bool,
    goal: Goal,
) -> Result<(), DialError> {
    // The first message must be the answer.
    let first = match goal {
        Goal::IceConnected => match tokio::time::timeout(RESTART_ANSWER_WAIT, answers.message()).await {
            Ok(m) => m?,
            Err(_) => return Err(DialError::Timeout("the machine's answer".into(), RESTART_ANSWER_WAIT)),
        },
        Goal::Open => answers.message().await?,
    };
    let first = first.ok_or_else(|| {
        DialError::Status(tonic::Status::unavailable("signaling ended the call before the machine answered"))
    })?;
    let uuid = first.uuid.clone();
    let Some(pb::call_response::Stage::Init(init)) = first.stage else {
        return Err(tonic::Status::internal("signaling sent a candidate before the answer").into());
    };
    let (kind, answer) = sdp::decode(&init.sdp).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    if kind != SdpKind::Answer {
        return Err(tonic::Status::internal("the machine did not send an answer").into());
    }
    peer.accept_answer(answer).map_err(|e| tonic::Status::internal(format!("bad answer: {e}")))?;

    let send_update = |update: pb::call_update_request::Update| {
        let mut signaling = signaling.clone();
        let uuid = uuid.clone();
        let host = options.host.clone();
        async move {
            let req = pb::CallUpdateRequest { uuid, update: Some(update) };
            match with_host(req, &host) {
                Ok(req) => {
                    if let Err(e) = signaling.call_update(req).await {
                        tracing::debug!("call update failed: {e}");
                    }
                }
                Err(e) => tracing::debug!("call update not sent: {e}"),
            }
        }
    };
    // Candidates go out concurrently, but `done` only once every candidate
    // update has been answered: the signaler relays nothing after `done`.
    let done = || pb::call_update_request::Update::Done(true);
    let mut pending: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut done_sent = disable_trickle;
    if done_sent {
        tokio::spawn(send_update(done()));
    }
    let mut answers_open = true;
    loop {
        tokio::select! {
            ev = peer.next_event() => match ev {
                Some(PeerEvent::Open) if goal == Goal::Open => break,
                Some(PeerEvent::IceConnected) if goal == Goal::IceConnected => break,
                Some(PeerEvent::LocalCandidate(c)) => {
                    if !done_sent {
                        pending.push(tokio::spawn(send_update(pb::call_update_request::Update::Candidate(c))));
                    }
                }
                Some(PeerEvent::GatheringComplete) => {
                    if !done_sent {
                        tokio::spawn(after(std::mem::take(&mut pending), send_update(done())));
                        done_sent = true;
                    }
                }
                Some(PeerEvent::IceConnected | PeerEvent::Connected | PeerEvent::Open) => {}
                Some(PeerEvent::Closed(_)) | None => {
                    return Err(DialError::Connect(options.host.clone(), ice_failed(options)));
                }
            },
            m = answers.message(), if answers_open => match m {
                Ok(Some(resp)) => {
                    if resp.uuid != uuid {
                        return Err(tonic::Status::internal("signaling mixed up two calls").into());
                    }
                    if let Some(pb::call_response::Stage::Update(u)) = resp.stage
                        && !disable_trickle
                        && let Some(c) = u.candidate.as_ref()
                        && let Err(e) = peer.add_remote_candidate(c)
                    {
                        tracing::debug!("ignoring a bad remote candidate: {e}");
                    }
                }
                Ok(None) => answers_open = false,
                Err(status) => {
                    let error = pb::call_update_request::Update::Error(RpcStatus {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        details: Vec::new(),
                    });
                    tokio::spawn(send_update(error));
                    return Err(status.into());
                }
            },
        }
    }
    if !done_sent {
        tokio::spawn(after(pending, send_update(done())));
    }
    // Like the TypeScript SDK, wait (briefly) for the signaler to end the
    // call, which it does once the machine reports done, i.e. once the
    // machine's side of the data channel is open too. A tether machine opens
    // its side first (it is the SCTP server), but a machine whose stack
    // answers as the DTLS client opens last, and a message that beats its
    // open of the negotiated channel can be lost.
    if answers_open && goal == Goal::Open {
        let ended = async { while let Ok(Some(_)) = answers.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
    }
    Ok(())
}
