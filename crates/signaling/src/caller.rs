//! The caller role of signaling: ask the signaling service for ICE
//! servers, send an offer for a host, trickle candidates both ways, and end
//! up with a [`WebRtcChannel`] once the `data` channel opens.

use std::time::Duration;

use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tokio_util::sync::CancellationToken;

use tether_transport::dial::{Credentials, DialError, DirectConnection, DirectOptions, HeaderStamp, SharedHeaders};
use tether_transport::webrtc::peer::{IceServer, PeerOptions};
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
    /// Only relay (TURN) candidates.
    pub relay_only: bool,
    /// Never relay: drop every TURN server.
    pub force_p2p: bool,
    /// Keep only this TURN URL among TURN servers (e.g. `turn:turn.example.com:3478`).
    pub turn_uri_override: Option<String>,
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
    pub fn new(signaling_address: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            signaling_address: signaling_address.into(),
            host: host.into(),
            credentials: None,
            ice_servers: vec![IceServer::url(tether_transport::webrtc::peer::DEFAULT_STUN)],
            relay_only: false,
            force_p2p: false,
            turn_uri_override: None,
            disable_trickle: false,
            dial_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
            limits: Limits::default(),
            peer: PeerOptions::default(),
        }
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

/// Applies force_p2p / turn_uri_override / relay_only to the server list.
pub fn filter_ice_servers(mut servers: Vec<IceServer>, options: &WebRtcOptions) -> Vec<IceServer> {
    let is_turn = |u: &str| u.starts_with("turn:") || u.starts_with("turns:");
    if options.force_p2p {
        for s in &mut servers {
            s.urls.retain(|u| !is_turn(u));
        }
    } else if let Some(only) = &options.turn_uri_override {
        let norm = |u: &str| {
            let (base, transport) = u.split_once("?transport=").unwrap_or((u, "udp"));
            (base.to_ascii_lowercase(), transport.to_ascii_lowercase())
        };
        let wanted = norm(only);
        for s in &mut servers {
            s.urls.retain(|u| !is_turn(u) || norm(u) == wanted);
        }
    }
    servers.retain(|s| !s.urls.is_empty());
    servers
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
            Err(DialError::Timeout(format!("{} via {}", options.host, options.signaling_address), options.dial_timeout))
        }
    }
}

async fn dial_inner(options: &WebRtcOptions) -> Result<WebRtcConnection, DialError> {
    let connection =
        DirectOptions::default().with_connect_timeout(options.dial_timeout).with_tls_ca_pem(options.tls_ca_pem.clone());
    let channel = DirectConnection::connect(&options.signaling_address, &connection).await?;
    let headers = SharedHeaders::default();
    if let Some(creds) = &options.credentials {
        let token = tether_transport::dial::authenticate(channel.clone(), creds).await?;
        headers.set_bearer(&token).map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    let mut signaling: Signaling =
        pb::signaling_service_client::SignalingServiceClient::new(HeaderStamp::new(channel, headers));

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
    peer_options.ice_servers = filter_ice_servers(servers, options);
    peer_options.relay_only = options.relay_only;

    let peer = RtcPeer::new(&peer_options, RtcOptions::default().with_media(true))
        .await
        .map_err(|e| DialError::Connect(options.host.clone(), e.to_string()))?;
    let result = exchange(&mut signaling, options, &peer).await;
    if result.is_err() {
        peer.close();
    }
    result
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
    let call = pb::CallRequest { sdp: sdp::encode(SdpKind::Offer, &offer), disable_trickle: options.disable_trickle };
    let mut answers = signaling.call(with_host(call, &options.host)?).await?.into_inner();

    // The first message must be the answer.
    let first = answers.message().await?.ok_or_else(|| {
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
    let mut done_sent = options.disable_trickle;
    if done_sent {
        tokio::spawn(send_update(done()));
    }
    let mut answers_open = true;
    loop {
        tokio::select! {
            ev = peer.next_event() => match ev {
                Some(PeerEvent::Open) => break,
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
                Some(PeerEvent::IceConnected | PeerEvent::Connected) => {}
                Some(PeerEvent::Closed(_)) | None => {
                    return Err(DialError::Connect(options.host.clone(), "ICE failed before the data channel opened".into()));
                }
            },
            m = answers.message(), if answers_open => match m {
                Ok(Some(resp)) => {
                    if resp.uuid != uuid {
                        return Err(tonic::Status::internal("signaling mixed up two calls").into());
                    }
                    if let Some(pb::call_response::Stage::Update(u)) = resp.stage
                        && !options.disable_trickle
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
    if answers_open {
        let ended = async { while let Ok(Some(_)) = answers.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
    }
    Ok(WebRtcConnection { channel, peer: peer.clone() })
}
