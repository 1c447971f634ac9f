//! One peer connection: the `rtc` state, its UDP sockets and the framing
//! endpoint, owned by one driver task.
//!
//! [`RtcPeer`] is the handle. Everything it does (descriptions, remote
//! candidates, closing) takes the state's lock for a moment and wakes the
//! driver; the driver's loop is the only code that does I/O:
//!
//! 1. feed every datagram that has arrived (a batch per wake-up) and every
//!    expired timer into the state;
//! 2. run a *turn*: move framing packets into the `data` channel while it
//!    buffers less than [`RtcOptions::high_water`], hand received channel
//!    messages to the framing, collect events, and repeat until nothing moves;
//! 3. send every datagram the turn produced and write what it queued on
//!    TURN streams, then sleep until a socket or TURN stream is readable, a
//!    call queues work, or the earliest timer.
//!
//! Candidates: one socket per local IPv4 address (host candidates, loopback
//! included when [`PeerOptions::include_loopback`], and held back from a
//! remote peer with [`PeerOptions::loopback_only_for_local_peers`]),
//! server-reflexive candidates from a STUN binding request per socket and
//! STUN server, relayed candidates from TURN servers reached over UDP, TCP
//! or TLS ([`super::turn_tcp`] carries the stream ones), and `.local` remote
//! candidates resolved over mDNS (the `rtc` core builds the queries; the
//! driver opens the multicast socket when the first one goes out).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rtc::data_channel::{RTCDataChannelId, RTCDataChannelInit};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::{SctpMaxMessageSize, SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, CandidateServerReflexiveConfig, RTCIceCandidate, RTCIceCandidateInit,
    RTCIceServer,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::stun::message::{BINDING_REQUEST, Getter, Message, TransactionId};
use rtc::stun::xoraddr::XorMappedAddress;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::SelectedPair;
use super::channel::ClientSide;
use super::peer::PeerOptions;
use super::raw::RawSide;
use super::serve::ServerSide;
use super::turn_tcp::{self, Incoming, Transport, TurnStream};

/// Size asked for each UDP socket's send and receive buffers. With Linux's
/// default (208 KiB) a data-channel burst overflows the receiver's buffer on
/// loopback and SCTP recovers slowly; the kernel caps the request at
/// `net.core.{r,w}mem_max`, which is all the fallback there is to do.
const SOCKET_BUFFER: usize = 4 << 20;
/// The largest datagram read. WebRTC keeps datagrams under the path MTU
/// (SCTP packets here are at most 1,200 bytes, TURN adds a few dozen); a
/// larger one is truncated and fails its integrity check. The buffer is per
/// connection, so it is sized for what arrives, not for UDP's maximum
/// (64 KiB of it was a fifth of an idle connection's memory).
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read per wake-up before the state runs a turn.
const RECV_BATCH: usize = 64;
/// How long a STUN binding request for a server-reflexive candidate is
/// retried before that server is given up on.
const STUN_DEADLINE: Duration = Duration::from_secs(3);
/// Interval between STUN retransmissions.
const STUN_RETRY: Duration = Duration::from_millis(250);
/// Messages sent on the `negotiation` channel per round when ICE connects
/// again after a restart (see [`Inner::nudge`]).
const NUDGES: usize = 4;
/// When the rounds go out, after ICE connects again: the peer may not have
/// a path for its acknowledgements yet at the first.
const NUDGE_ROUNDS: [Duration; 3] = [Duration::ZERO, Duration::from_millis(50), Duration::from_millis(200)];
/// Their size: more than half an SCTP packet, so that no two share one.
const NUDGE_SIZE: usize = 700;

/// How often ICE sends connectivity checks while it looks for a pair. The
/// `rtc` default is 200 ms: a check that a NAT drops (the first one through
/// a port-restricted NAT usually is: hole punching) then costs 200 ms,
/// at connect and at every ICE restart. Browsers pace checks at 50 ms.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per pair before it is given up: with [`ICE_CHECK_INTERVAL`], the
/// same 1.4 s as `rtc`'s defaults (7 at 200 ms).
const ICE_MAX_BINDING_REQUESTS: u16 = 28;

/// The `max-message-size` we advertise: messages up to this size are
/// received whole (our own framing never sends more than 16 KiB at once).
pub const MAX_MESSAGE_SIZE: u32 = 256 << 10;

/// What [`RtcPeer`] adds to [`PeerOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RtcOptions {
    /// Stop moving framing packets into the `data` channel while it buffers
    /// this many bytes (sent but not yet acknowledged, or not yet sent).
    /// Small keeps a small call from waiting long behind a bulk transfer on
    /// another stream; large keeps a long path full.
    pub high_water: usize,
    /// The connection can carry video (VP8, with NACK and RTCP reports):
    /// what [`RtcPeer::add_video`] and [`RtcPeer::video_receiver`] need.
    /// Off, a peer has no media engine or interceptors (less memory).
    pub media: bool,
}

impl Default for RtcOptions {
    fn default() -> Self {
        Self { high_water: 256 << 10, media: false }
    }
}

impl RtcOptions {
    /// Sets [`Self::high_water`].
    pub fn with_high_water(mut self, bytes: usize) -> Self {
        self.high_water = bytes;
        self
    }

    /// Sets [`Self::media`].
    pub fn with_media(mut self, media: bool) -> Self {
        self.media = media;
        self
    }
}

/// What a peer connection reports to the code that set it up (signaling).
#[derive(Clone, Debug, PartialEq)]
pub enum PeerEvent {
    /// A local candidate to trickle to the peer.
    LocalCandidate(pb::IceCandidate),
    /// Every local candidate has been reported.
    GatheringComplete,
    /// ICE found a working candidate pair.
    IceConnected,
    /// DTLS is up (the peer connection is `connected`).
    Connected,
    /// The `data` channel is open: calls can flow.
    Open,
    /// The connection is gone (ICE failed or disconnected, the channel or
    /// the connection closed); nothing more follows.
    Closed(String),
}

/// The role the `data` channel plays: nothing yet (messages wait), the
/// machine's server, or the client's calls.
pub(crate) enum Endpoint {
    Detached(VecDeque<Bytes>),
    Server(ServerSide),
    Client(ClientSide),
    Raw(RawSide),
}

impl Endpoint {
    fn on_message(&mut self, message: Bytes, shared: &Arc<Shared>, wake: &mut Vec<Waker>) {
        match self {
            Self::Detached(early) => early.push_back(message),
            Self::Server(s) => s.on_message(&message, shared),
            Self::Client(c) => c.on_message(&message, wake),
            Self::Raw(r) => r.on_message(message, wake),
        }
    }

    /// The next framing packet to send, if any.
    fn poll_transmit(&mut self, wake: &mut Vec<Waker>) -> Option<Bytes> {
        match self {
            Self::Detached(_) => None,
            Self::Server(s) => s.poll_transmit(wake),
            Self::Client(c) => c.poll_transmit(wake),
            Self::Raw(r) => r.poll_transmit(wake),
        }
    }

    fn on_close(&mut self, wake: &mut Vec<Waker>) {
        match self {
            Self::Detached(_) => {}
            Self::Server(s) => s.on_close(wake),
            Self::Client(c) => c.on_close(wake),
            Self::Raw(r) => r.on_close(wake),
        }
    }
}

struct StunQuery {
    socket: usize,
    server: SocketAddr,
    url: String,
    tid: TransactionId,
    request: Vec<u8>,
    next_send: Instant,
    give_up: Instant,
}

/// Packets kept per relay while the TURN server has not yet permitted
/// their destination.
const RELAY_QUEUE: usize = 64;
/// How long gathering waits for a TURN allocation.
const TURN_DEADLINE: Duration = Duration::from_secs(5);

/// One TURN server: its client state and the relayed address it gave us.
struct Turn {
    client: rtc::turn::client::Client,
    /// The UDP socket it is reached from, or (over TCP/TLS) whose address
    /// stands for the stream's.
    socket: usize,
    /// Over TCP or TLS: the driver's stream (index).
    stream: Option<usize>,
    server: SocketAddr,
    url: String,
    allocate: Option<TransactionId>,
    /// The relayed address, once allocated.
    relay: Option<SocketAddr>,
    /// Gathering stops waiting for this allocation then.
    give_up: Instant,
    /// Peers the server lets through, and those asked for.
    permitted: std::collections::HashSet<SocketAddr>,
    asked: std::collections::HashSet<SocketAddr>,
    /// Packets for peers not yet permitted.
    waiting: VecDeque<(SocketAddr, BytesMut)>,
}

impl Turn {
    /// Still gathering: neither allocated nor given up.
    fn gathering(&self, now: Instant) -> bool {
        self.relay.is_none() && self.allocate.is_some() && now < self.give_up
    }
}

/// The state the driver owns and calls touch through the lock.
pub(crate) struct Inner {
    pub(crate) pc: RTCPeerConnection,
    data: RTCDataChannelId,
    data_open: bool,
    high_water: usize,
    pub(crate) endpoint: Endpoint,
    events: VecDeque<PeerEvent>,
    /// Why the connection ended, once it has.
    pub(crate) closed: Option<String>,
    /// [`Shared::closed`], cancelled the moment the connection ends.
    closed_token: CancellationToken,
    /// Local addresses of the UDP sockets (index = socket).
    locals: Vec<SocketAddr>,
    stun: Vec<StunQuery>,
    turn: Vec<Turn>,
    /// Only relayed candidates are gathered (no host, no server-reflexive).
    relay_only: bool,
    host_candidates_added: bool,
    gathering_complete: bool,
    /// Datagrams the last turn produced: (socket, destination, payload).
    out: Vec<(Option<usize>, SocketAddr, BytesMut)>,
    /// TURN messages the last turn produced for stream servers: (stream, message).
    stream_out: Vec<(usize, BytesMut)>,
    /// The last peer address heard from on each local (or relayed) address:
    /// the selected pair's remote address when its candidate is an mDNS name
    /// (the `rtc` core resolves it but reports the name).
    last_peer: std::collections::HashMap<SocketAddr, SocketAddr>,
    /// Loopback host candidates held back until the peer shows it is local
    /// ([`PeerOptions::loopback_only_for_local_peers`]); `None` once decided.
    held_loopback: Option<Vec<SocketAddr>>,
    /// Remote candidates that arrived before the remote description.
    early_candidates: Vec<RTCIceCandidateInit>,
    include_loopback: bool,
    /// The STUN servers asked for server-reflexive candidates (again from
    /// new sockets after an ICE restart).
    stun_servers: Vec<(SocketAddr, String)>,
    /// Sockets bound since the driver started (an ICE restart on a new
    /// address), handed to the driver on its next wake-up; their addresses
    /// are already in `locals`, in the same order.
    new_sockets: Vec<UdpSocket>,
    /// `locals[..announced]` have had their host candidates added.
    announced: usize,
    /// The addresses gathered on when the connection was set up or last
    /// restarted: a change is a network change.
    gathered_ips: Vec<Ipv4Addr>,
    /// ICE has been connected before (a later `connected` follows a restart).
    ice_connected_once: bool,
    /// When the peer was last heard from (a datagram from it, direct or
    /// relayed, reached the ICE agent).
    last_heard: Instant,
    /// When the nudge rounds still to send are due (see [`Self::nudge`]).
    nudges: VecDeque<Instant>,
    /// Video tracks and renegotiation.
    pub(crate) media: super::media::MediaState,
    /// The connection was built with a media engine.
    pub(crate) media_enabled: bool,
}

/// The lock around [`Inner`] and the driver's wake-up.
pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    driver: Notify,
    events: Notify,
    pub(crate) closed: CancellationToken,
}

impl Shared {
    /// Wakes the driver: a call queued work.
    pub(crate) fn wake_driver(&self) {
        self.driver.notify_one();
    }

    /// Runs `f` on the state, then wakes the wakers it collected (outside
    /// the lock) and the driver.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Inner, &mut Vec<Waker>) -> R) -> R {
        let mut wake = Vec::new();
        let r = {
            let mut inner = self.inner.lock();
            f(&mut inner, &mut wake)
        };
        for w in wake {
            w.wake();
        }
        self.wake_driver();
        r
    }
}

/// A WebRTC peer connection with tether's two negotiated channels (`data`,
/// id 0, and `negotiation`, id 1, both ordered and reliable), driven by its
/// own task. Cheap to clone; the connection lives until [`RtcPeer::close`]
/// or until it dies.
#[derive(Clone)]
pub struct RtcPeer {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RtcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcPeer").field("closed", &self.shared.closed.is_cancelled()).finish()
    }
}

/// Why a peer connection could not be set up or a description was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No UDP socket could be opened.
    #[error("no UDP socket: {0}")]
    Io(#[from] std::io::Error),
    /// The `rtc` core refused (a bad description or candidate, a closed connection).
    #[error("{0}")]
    Rtc(String),
    /// The connection is closed.
    #[error("peer connection closed: {0}")]
    Closed(String),
}

fn rtc_err(e: impl std::fmt::Display) -> PeerError {
    PeerError::Rtc(e.to_string())
}

/// The time the `rtc` core is given: tokio's clock, so that tests on paused
/// time drive its timers too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn bind_udp(ip: IpAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps (or refuses) larger buffers.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    UdpSocket::from_std(socket.into())
}

/// The IPv4 addresses to gather host candidates on.
fn local_ips(include_loopback: bool) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() && !ip.is_link_local() => Some(ip),
            _ => None,
        })
        .filter(|ip| include_loopback || !ip.is_loopback())
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() && include_loopback {
        ips.push(Ipv4Addr::LOCALHOST);
    }
    ips
}

/// This host's IPv4 addresses that peer connections gather host candidates
/// on (loopback left out): what a watcher compares to notice a network
/// change.
pub fn host_addresses() -> Vec<Ipv4Addr> {
    local_ips(false)
}

/// What changed between two address sets (see [`RtcPeer::network_change`]).
fn describe_change(before: &[Ipv4Addr], now: &[Ipv4Addr]) -> Option<String> {
    let appeared: Vec<String> = now.iter().filter(|ip| !before.contains(ip)).map(|ip| ip.to_string()).collect();
    let gone: Vec<String> = before.iter().filter(|ip| !now.contains(ip)).map(|ip| ip.to_string()).collect();
    let mut parts = Vec::new();
    if !appeared.is_empty() {
        parts.push(format!("{} appeared", appeared.join(", ")));
    }
    if !gone.is_empty() {
        parts.push(format!("{} went away", gone.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A STUN or TURN server URL, resolved.
struct Resolved {
    url: String,
    addr: SocketAddr,
    /// The URL's host (the TLS server name of a `turns:` server).
    host: String,
    transport: Transport,
    username: String,
    credential: String,
}

/// The `stun:` and `turn:`/`turns:` servers of `options`, resolved to IPv4
/// addresses; others (`turns:` over UDP, i.e. DTLS) and unresolvable ones
/// are skipped with a note in the log.
async fn resolve_servers(options: &PeerOptions) -> (Vec<Resolved>, Vec<Resolved>) {
    let (mut stun, mut turn) = (Vec::new(), Vec::new());
    for server in &options.ice_servers {
        for url in &server.urls {
            let Some(parsed) = turn_tcp::parse_url(url) else {
                tracing::debug!(%url, "ICE server URL not supported; skipping it");
                continue;
            };
            if options.relay_only && !parsed.turn {
                continue;
            }
            let lookup = tokio::net::lookup_host(parsed.host_port.clone());
            let resolved = tokio::time::timeout(Duration::from_secs(2), lookup).await;
            let Some(addr) = resolved.ok().and_then(|r| r.ok()).and_then(|mut a| a.find(SocketAddr::is_ipv4)) else {
                tracing::debug!(%url, "ICE server not resolved; skipping it");
                continue;
            };
            let r = Resolved {
                url: url.clone(),
                addr,
                host: parsed.host,
                transport: parsed.transport,
                username: server.username.clone(),
                credential: server.credential.clone(),
            };
            if parsed.turn { turn.push(r) } else { stun.push(r) }
        }
    }
    (stun, turn)
}

fn setting_engine(options: &PeerOptions) -> SettingEngine {
    SettingEngineBuilder::new()
        .with_ice_timeouts(Some(options.disconnected_timeout), Some(options.failed_timeout), Some(options.keepalive))
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
        .with_include_loopback_candidate(options.include_loopback)
        // See crate::webrtc::peer: no wait before a peer-reflexive or
        // server-reflexive pair may be nominated; relayed pairs keep theirs
        // unless relay-only.
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_host_acceptance_min_wait(Some(Duration::ZERO))
        .with_relay_acceptance_min_wait(if options.relay_only { Some(Duration::ZERO) } else { None })
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::QueryOnly)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_MESSAGE_SIZE))
        // Never AES-256-GCM for SRTP: webrtc-rs 0.12 (the Viam Python SDK's
        // stack) panics deriving its keys (webrtc-rs#649). The core's default
        // list has it second; without it the choice is the same everywhere
        // else.
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        ])
        // As the answerer, be the DTLS (and so SCTP) server. The offerer
        // then starts both handshakes once its ICE has selected a pair,
        // which the answerer (controlled) has always done by then: an
        // answering DTLS client's first ClientHello could reach an offerer
        // whose ICE was not yet connected and be dropped (a 1 s
        // retransmission). And the SCTP server opens its negotiated channels
        // before its COOKIE-ACK goes out, so the offerer's first message can
        // never reach the answerer before the answerer's own `data` channel
        // exists: `rtc` 0.21, like webrtc-rs 0.17, drops such a message and
        // then fails to open the channel ("there already exists a stream
        // with identifier").
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Server)
        .build()
}

/// The STUN binding requests that find the server-reflexive address of the
/// socket at `local`: one per server it can reach (a loopback socket only a
/// loopback server, and the other way round).
fn stun_queries(socket: usize, local: SocketAddr, servers: &[(SocketAddr, String)], start: Instant) -> Vec<StunQuery> {
    let mut queries = Vec::new();
    for (server, url) in servers {
        if local.ip().is_loopback() != server.ip().is_loopback() {
            continue;
        }
        let mut msg = Message::new();
        if msg.build(&[Box::<TransactionId>::default(), Box::new(BINDING_REQUEST)]).is_err() {
            continue;
        }
        queries.push(StunQuery {
            socket,
            server: *server,
            url: url.clone(),
            tid: msg.transaction_id,
            request: msg.raw.clone(),
            next_send: start,
            give_up: start + STUN_DEADLINE,
        });
    }
    queries
}

fn new_turn(
    server: &Resolved,
    socket: usize,
    stream: Option<usize>,
    local: SocketAddr,
    now: Instant,
) -> Result<Turn, PeerError> {
    let config = rtc::turn::client::ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.addr.to_string(),
        local_addr: local,
        transport_protocol: if stream.is_some() { TransportProtocol::TCP } else { TransportProtocol::UDP },
        username: server.username.clone(),
        password: server.credential.clone(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        allocation_refresh_interval_cap: None,
    };
    let provider = rtc::crypto::default_provider().map_err(rtc_err)?;
    let mut client = rtc::turn::client::Client::new(config, provider).map_err(rtc_err)?;
    let allocate = client.allocate(now).map_err(rtc_err)?;
    Ok(Turn {
        client,
        socket,
        stream,
        server: server.addr,
        url: server.url.clone(),
        allocate: Some(allocate),
        relay: None,
        give_up: now + TURN_DEADLINE,
        permitted: Default::default(),
        asked: Default::default(),
        waiting: VecDeque::new(),
    })
}

impl RtcPeer {
    /// Opens the sockets, builds the connection with its two channels and
    /// starts the driver.
    pub async fn new(options: &PeerOptions, rtc_options: RtcOptions) -> Result<Self, PeerError> {
        let options = &options.effective();
        let ips = local_ips(options.include_loopback);
        let mut sockets = Vec::new();
        for ip in ips {
            match bind_udp(IpAddr::V4(ip)) {
                Ok(s) => sockets.push(s),
                Err(e) => tracing::debug!(%ip, "no UDP socket on this address: {e}"),
            }
        }
        if sockets.is_empty() {
            return Err(PeerError::Io(std::io::Error::other("no IPv4 address to bind a UDP socket to")));
        }
        let locals: Vec<SocketAddr> = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
        if locals.len() != sockets.len() {
            return Err(PeerError::Io(std::io::Error::other("a UDP socket has no local address")));
        }
        let (stun_servers, turn_servers) = resolve_servers(options).await;
        let gathered_ips: Vec<Ipv4Addr> = locals
            .iter()
            .filter_map(|l| match l.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect();

        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(
                options
                    .ice_servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone(),
                        credential: s.credential.clone(),
                    })
                    .collect(),
            )
            .build();
        let mut builder =
            RTCPeerConnectionBuilder::new().with_configuration(config).with_setting_engine(setting_engine(options));
        if rtc_options.media {
            let (engine, registry) = super::media::media_engine()?;
            builder = builder.with_media_engine(engine).with_interceptor_registry(registry);
        }
        let mut pc = builder.build(now()).map_err(rtc_err)?;
        let init = |id| RTCDataChannelInit { ordered: true, negotiated: Some(id), ..Default::default() };
        let data = pc.create_data_channel("data", Some(init(0))).map_err(rtc_err)?.id();
        let negotiation = pc.create_data_channel("negotiation", Some(init(1))).map_err(rtc_err)?.id();

        let start = now();
        let stun_servers: Vec<(SocketAddr, String)> = stun_servers.iter().map(|s| (s.addr, s.url.clone())).collect();
        let mut stun = Vec::new();
        for (socket, local) in locals.iter().enumerate() {
            stun.extend(stun_queries(socket, *local, &stun_servers, start));
        }
        let mut turn = Vec::new();
        let mut streams = Vec::new();
        let mut tls = None;
        for server in turn_servers {
            // Talk to the TURN server from a socket that can reach it.
            let socket =
                locals.iter().position(|l| l.ip().is_loopback() == server.addr.ip().is_loopback()).unwrap_or(0);
            let stream = match server.transport {
                Transport::Udp => None,
                Transport::Tcp => Some(TurnStream::connect(server.addr, &server.host, None)),
                Transport::Tls => {
                    let config = tls.get_or_insert_with(|| turn_tcp::tls_config(options.tls_ca_pem.as_deref()));
                    match config {
                        Ok(config) => Some(TurnStream::connect(server.addr, &server.host, Some(config.clone()))),
                        Err(e) => {
                            tracing::warn!(url = %server.url, "TURN over TLS not started: {e}");
                            continue;
                        }
                    }
                }
            };
            let index = stream.is_some().then_some(streams.len());
            match new_turn(&server, socket, index, locals[socket], start) {
                Ok(t) => {
                    turn.push(t);
                    streams.extend(stream);
                }
                Err(e) => tracing::warn!(url = %server.url, "TURN client not started: {e}"),
            }
        }
        let held_loopback = (options.include_loopback && options.loopback_only_for_local_peers).then(Vec::new);

        let closed_token = CancellationToken::new();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                pc,
                data,
                data_open: false,
                high_water: rtc_options.high_water.max(1),
                endpoint: Endpoint::Detached(VecDeque::new()),
                events: VecDeque::new(),
                closed: None,
                closed_token: closed_token.clone(),
                locals,
                stun,
                turn,
                relay_only: options.relay_only,
                host_candidates_added: false,
                gathering_complete: false,
                out: Vec::new(),
                stream_out: Vec::new(),
                last_peer: Default::default(),
                held_loopback,
                early_candidates: Vec::new(),
                include_loopback: options.include_loopback,
                stun_servers,
                new_sockets: Vec::new(),
                announced: 0,
                gathered_ips,
                ice_connected_once: false,
                last_heard: start,
                nudges: VecDeque::new(),
                media: super::media::MediaState::new(negotiation),
                media_enabled: rtc_options.media,
            }),
            driver: Notify::new(),
            events: Notify::new(),
            closed: closed_token,
        });
        tokio::spawn(drive(shared.clone(), sockets, streams));
        Ok(Self { shared })
    }

    /// Creates the offer, sets it as the local description and returns its SDP.
    pub fn create_offer(&self) -> Result<String, PeerError> {
        self.shared.with(|inner, _| {
            inner.check_open()?;
            let offer = inner.pc.create_offer(None).map_err(rtc_err)?;
            inner.pc.set_local_description(now(), offer.clone()).map_err(rtc_err)?;
            inner.add_host_candidates();
            Ok(offer.sdp)
        })
    }

    /// Takes the peer's offer and returns our answer (set as the local
    /// description). An offer with new ICE credentials on a connection that
    /// has one already is an ICE restart: as in [`Self::restart_ice`],
    /// addresses that appeared since the last gathering get sockets and
    /// candidates (trickled as [`PeerEvent::LocalCandidate`]s).
    pub fn accept_offer(&self, sdp: String) -> Result<String, PeerError> {
        let (include_loopback, restart) = {
            let inner = self.shared.inner.lock();
            let ufrag = super::sdp::ice_ufrag;
            let restart = inner.pc.remote_description().is_some_and(|c| ufrag(&c.sdp) != ufrag(&sdp));
            (inner.include_loopback, restart)
        };
        let ips = if restart { Some(local_ips(include_loopback)) } else { None };
        self.shared.with(|inner, _| {
            inner.check_open()?;
            if let Some(ips) = ips {
                inner.regather(ips, now());
            }
            inner.note_remote_candidates(sdp.lines().filter_map(|l| l.strip_prefix("a=")));
            let offer = RTCSessionDescription::offer(sdp).map_err(rtc_err)?;
            inner.pc.set_remote_description(now(), offer).map_err(rtc_err)?;
            inner.add_early_candidates();
            let answer = inner.pc.create_answer(None).map_err(rtc_err)?;
            inner.pc.set_local_description(now(), answer.clone()).map_err(rtc_err)?;
            inner.add_host_candidates();
            Ok(answer.sdp)
        })
    }

    /// Takes the peer's answer to our offer.
    pub fn accept_answer(&self, sdp: String) -> Result<(), PeerError> {
        self.shared.with(|inner, _| {
            inner.check_open()?;
            inner.note_remote_candidates(sdp.lines().filter_map(|l| l.strip_prefix("a=")));
            let answer = RTCSessionDescription::answer(sdp).map_err(rtc_err)?;
            inner.pc.set_remote_description(now(), answer).map_err(rtc_err)?;
            inner.add_early_candidates();
            Ok(())
        })
    }

    /// The local description with every candidate gathered so far (what a
    /// peer that does not trickle needs once gathering is complete).
    pub fn local_description(&self) -> Option<String> {
        self.shared.inner.lock().pc.local_description().map(|d| d.sdp)
    }

    /// Adds a candidate the peer trickled. Empty and impossible candidates
    /// are ignored (components outside 1..=256, which the wire allows and ICE does not).
    pub fn add_remote_candidate(&self, candidate: &pb::IceCandidate) -> Result<(), PeerError> {
        let Some(init) = super::sdp::candidate_init(candidate) else { return Ok(()) };
        self.shared.with(|inner, _| {
            inner.check_open()?;
            inner.note_remote_candidates([init.candidate.as_str()]);
            if inner.pc.remote_description().is_none() {
                inner.early_candidates.push(init);
                return Ok(());
            }
            inner.pc.add_remote_candidate(init).map_err(rtc_err)
        })
    }

    /// The next event; `None` once the connection is closed and every event
    /// has been taken.
    pub async fn next_event(&self) -> Option<PeerEvent> {
        loop {
            let notified = self.shared.events.notified();
            {
                let mut inner = self.shared.inner.lock();
                if let Some(e) = inner.events.pop_front() {
                    return Some(e);
                }
                if inner.closed.is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Cancelled when the connection is gone.
    pub fn closed(&self) -> &CancellationToken {
        &self.shared.closed
    }

    /// Closes the connection: calls in flight fail with UNAVAILABLE.
    pub fn close(&self) {
        self.shared.with(|inner, wake| inner.close("closed locally", wake));
        self.shared.events.notify_waiters();
    }

    /// The selected candidate pair, once ICE has chosen one.
    pub fn selected_pair(&self) -> Option<SelectedPair> {
        let inner = self.shared.inner.lock();
        let sctp = inner.pc.sctp()?;
        let pair = sctp.transport().ice_transport().get_selected_candidate_pair()?;
        let addr = |c: &RTCIceCandidate| format!("{}:{}", c.address, c.port).parse().ok();
        let local = addr(pair.local());
        // An mDNS (`….local`) remote: the address its datagrams come from.
        let remote = addr(pair.remote()).or_else(|| local.and_then(|l| inner.last_peer.get(&l).copied()));
        Some(SelectedPair {
            local,
            remote,
            local_type: pair.local().typ.to_string(),
            remote_type: pair.remote().typ.to_string(),
        })
    }

    /// How the host's IPv4 addresses differ from those this connection
    /// gathered on (at setup or at its last ICE restart), e.g.
    /// `"10.3.0.2 appeared, 10.2.0.2 went away"`; `None` while they are the
    /// same. Cheap enough to poll (one `getifaddrs`).
    pub fn network_change(&self) -> Option<String> {
        let include_loopback = self.shared.inner.lock().include_loopback;
        let now_ips = local_ips(include_loopback);
        let inner = self.shared.inner.lock();
        describe_change(&inner.gathered_ips, &now_ips)
    }

    /// How long the peer has been silent: the time since a datagram from it
    /// last arrived (ICE keepalives arrive every
    /// [`PeerOptions::keepalive`] or so from a live peer, so several
    /// intervals of silence mean the selected pair stopped answering).
    pub fn silence(&self) -> Duration {
        now().saturating_duration_since(self.shared.inner.lock().last_heard)
    }

    /// Starts an ICE restart as the offerer (RFC 8445 §9; JSEP 4.1.8.1):
    /// binds sockets on addresses that appeared since the last gathering
    /// (their host and server-reflexive candidates follow as
    /// [`PeerEvent::LocalCandidate`]s), sets an offer with new ICE
    /// credentials as the local description and returns its SDP. DTLS, SCTP,
    /// the channels, calls in flight and media tracks carry on; once the
    /// peer's answer is taken ([`Self::accept_answer`]) ICE checks the new
    /// pairs and [`PeerEvent::IceConnected`] follows when one works.
    ///
    /// Relayed candidates are not allocated again: a TURN allocation made
    /// from an address that went away is lost.
    pub fn restart_ice(&self) -> Result<String, PeerError> {
        let include_loopback = self.shared.inner.lock().include_loopback;
        let ips = local_ips(include_loopback);
        self.shared.with(|inner, _| {
            inner.check_open()?;
            let t = now();
            inner.regather(ips, t);
            inner.pc.restart_ice();
            let offer = inner.pc.create_offer(None).map_err(rtc_err)?;
            inner.pc.set_local_description(t, offer.clone()).map_err(rtc_err)?;
            inner.add_host_candidates();
            Ok(offer.sdp)
        })
    }

    /// Sends one message on the `data` channel as it is, bypassing the
    /// framing (for robustness tests: the peer must drop what it cannot parse).
    pub fn send_raw(&self, packet: &[u8]) -> Result<(), PeerError> {
        self.shared.with(|inner, _| {
            inner.check_open()?;
            let id = inner.data;
            let mut dc = inner.pc.data_channel(id).ok_or_else(|| PeerError::Closed("no data channel".into()))?;
            dc.send(now(), BytesMut::from(packet)).map_err(rtc_err)
        })
    }
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<(), PeerError> {
        match &self.closed {
            Some(reason) => Err(PeerError::Closed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Gathers again for an ICE restart: STUN queries from every socket,
    /// sockets (and STUN queries) for the addresses in `ips` that have none;
    /// host candidates for new sockets follow
    /// with [`Self::add_host_candidates`] once the new local description is
    /// set. Events of the last gathering are dropped.
    fn regather(&mut self, ips: Vec<Ipv4Addr>, t: Instant) {
        // Server-reflexive addresses again from the sockets that are still
        // there: a NAT in the path may have given them a new mapping (a new
        // public address, or mappings dropped), which is why the selected
        // pair stopped answering.
        if !self.relay_only {
            for (index, local) in self.locals.clone().into_iter().enumerate() {
                if ips.iter().any(|ip| local.ip() == IpAddr::V4(*ip)) {
                    let queries = stun_queries(index, local, &self.stun_servers, t);
                    self.stun.extend(queries);
                }
            }
        }
        for ip in &ips {
            if self.locals.iter().any(|l| l.ip() == IpAddr::V4(*ip)) {
                continue;
            }
            let socket = match bind_udp(IpAddr::V4(*ip)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%ip, "no UDP socket on this address: {e}");
                    continue;
                }
            };
            let Ok(local) = socket.local_addr() else { continue };
            tracing::debug!(%local, "ICE restart: a socket on a new address");
            let index = self.locals.len();
            self.locals.push(local);
            self.new_sockets.push(socket);
            if !self.relay_only {
                let queries = stun_queries(index, local, &self.stun_servers, t);
                self.stun.extend(queries);
            }
        }
        self.gathered_ips = ips;
        self.events.retain(|e| matches!(e, PeerEvent::Closed(_)));
        self.host_candidates_added = false;
        self.gathering_complete = false;
    }

    /// One host candidate per socket not yet announced, once the local
    /// description is set.
    fn add_host_candidates(&mut self) {
        if self.host_candidates_added {
            return;
        }
        self.host_candidates_added = true;
        let fresh = self.locals[self.announced.min(self.locals.len())..].to_vec();
        self.announced = self.locals.len();
        let hosts = if self.relay_only { Vec::new() } else { fresh };
        for local in hosts {
            if local.ip().is_loopback()
                && let Some(held) = &mut self.held_loopback
            {
                held.push(local);
                continue;
            }
            self.add_host(local);
        }
        self.maybe_gathering_complete();
    }

    /// Whether a peer candidate at `ip` shows the peer runs on this host.
    fn is_local_peer(&self, ip: IpAddr) -> bool {
        let mut ours = self.locals.iter().map(SocketAddr::ip).filter(|l| !l.is_loopback()).peekable();
        if ours.peek().is_none() {
            return ip.is_loopback();
        }
        ours.any(|l| l == ip)
    }

    /// Looks at the peer's candidates (`candidate:…` attribute values, other
    /// lines ignored): a local peer gets the loopback candidates held back.
    fn note_remote_candidates<'a>(&mut self, candidates: impl IntoIterator<Item = &'a str>) {
        if self.held_loopback.is_none() {
            return;
        }
        let local = candidates.into_iter().any(|c| {
            let Some(fields) = c.strip_prefix("candidate:") else { return false };
            // foundation component transport priority address port typ …
            fields.split_whitespace().nth(4).and_then(|a| a.parse().ok()).is_some_and(|ip| self.is_local_peer(ip))
        });
        if !local {
            return;
        }
        let held = self.held_loopback.take().unwrap_or_default();
        tracing::debug!("the peer is on this host: offering loopback candidates too");
        for local in held {
            self.add_host(local);
        }
    }

    /// Adds the host candidate of the socket at `local`.
    fn add_host(&mut self, local: SocketAddr) {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host();
        self.add_local(candidate.map_err(rtc_err).and_then(|c| RTCIceCandidate::from(&c).to_json().map_err(rtc_err)));
    }

    fn add_local(&mut self, init: Result<RTCIceCandidateInit, PeerError>) {
        match init.and_then(|init| self.pc.add_local_candidate(init).map_err(rtc_err)) {
            Ok(()) => {}
            Err(e) => tracing::debug!("local candidate not added: {e}"),
        }
    }

    fn add_early_candidates(&mut self) {
        for c in std::mem::take(&mut self.early_candidates) {
            if let Err(e) = self.pc.add_remote_candidate(c) {
                tracing::debug!("ignoring a bad remote candidate: {e}");
            }
        }
    }

    fn maybe_gathering_complete(&mut self) {
        let t = now();
        if self.host_candidates_added
            && self.stun.is_empty()
            && !self.turn.iter().any(|turn| turn.gathering(t))
            && !self.gathering_complete
        {
            self.gathering_complete = true;
            // An empty candidate marks the end of gathering.
            let _ = self.pc.add_local_candidate(RTCIceCandidateInit::default());
        }
    }

    /// A STUN answer to one of our gathering queries (consumed), or not.
    fn stun_answer(&mut self, socket: usize, from: SocketAddr, data: &[u8]) -> bool {
        // A STUN message: two zero bits, then the magic cookie at offset 4.
        if self.stun.is_empty() || data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != [0x21, 0x12, 0xA4, 0x42] {
            return false;
        }
        let Some(i) = self
            .stun
            .iter()
            .position(|q| q.socket == socket && q.server == from && data.get(8..20) == Some(&q.tid.0[..]))
        else {
            return false;
        };
        let query = self.stun.remove(i);
        let mut msg = Message::new();
        msg.raw = data.to_vec();
        let mut mapped = XorMappedAddress::default();
        if msg.decode().is_ok() && mapped.get_from(&msg).is_ok() {
            let base = self.locals[socket];
            let candidate = CandidateServerReflexiveConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: mapped.ip.to_string(),
                    port: mapped.port,
                    component: 1,
                    ..Default::default()
                },
                rel_addr: base.ip().to_string(),
                rel_port: base.port(),
                url: Some(query.url.clone()),
            }
            .new_candidate_server_reflexive();
            let known = self.pc.sctp().is_some_and(|s| {
                s.transport()
                    .ice_transport()
                    .get_local_candidates()
                    .iter()
                    .any(|c| c.address == mapped.ip.to_string() && c.port == mapped.port)
            });
            if !known {
                self.add_local(
                    candidate.map_err(rtc_err).and_then(|c| RTCIceCandidate::from(&c).to_json().map_err(rtc_err)),
                );
            }
        }
        self.maybe_gathering_complete();
        true
    }

    /// Retransmits STUN queries that are due and drops those past their
    /// deadline. Returns the next time this needs to run.
    fn stun_timers(&mut self, now: Instant) -> Option<Instant> {
        let before = self.stun.len();
        self.stun.retain(|q| q.give_up > now);
        let mut next: Option<Instant> = None;
        for q in &mut self.stun {
            if q.next_send <= now {
                self.out.push((Some(q.socket), q.server, BytesMut::from(&q.request[..])));
                q.next_send = now + STUN_RETRY;
            }
            let t = q.next_send.min(q.give_up);
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        if self.stun.len() != before {
            self.maybe_gathering_complete();
        }
        next
    }

    /// A datagram from one of our TURN servers (consumed), or not.
    fn turn_read(&mut self, socket: usize, from: SocketAddr, data: BytesMut, now: Instant) -> Option<BytesMut> {
        let Some(turn) = self.turn.iter_mut().find(|t| t.stream.is_none() && t.socket == socket && t.server == from)
        else {
            return Some(data);
        };
        let read = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.locals[socket],
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        };
        if let Err(e) = turn.client.handle_read(read) {
            tracing::trace!(%from, "TURN message refused: {e}");
        }
        self.turn_events(now);
        None
    }

    /// What the TURN clients report: allocations (relay candidates),
    /// permissions (held packets go out) and relayed data (into ICE).
    fn turn_events(&mut self, now: Instant) {
        use rtc::turn::client::Event;
        for i in 0..self.turn.len() {
            while let Some(event) = self.turn[i].client.poll_event() {
                let turn = &mut self.turn[i];
                match event {
                    Event::AllocateResponse(tid, relay) if turn.allocate == Some(tid) => {
                        turn.allocate = None;
                        turn.relay = Some(relay);
                        tracing::debug!(url = %turn.url, %relay, "TURN allocation");
                        let base = self.locals[turn.socket];
                        let candidate = rtc::peer_connection::transport::CandidateRelayConfig {
                            base_config: CandidateConfig {
                                network: "udp".to_owned(),
                                address: relay.ip().to_string(),
                                port: relay.port(),
                                component: 1,
                                priority: turn_tcp::relay_priority(turn.stream.is_some()),
                                ..Default::default()
                            },
                            rel_addr: base.ip().to_string(),
                            rel_port: base.port(),
                            url: Some(turn.url.clone()),
                        }
                        .new_candidate_relay();
                        self.add_local(
                            candidate
                                .map_err(rtc_err)
                                .and_then(|c| RTCIceCandidate::from(&c).to_json().map_err(rtc_err)),
                        );
                        self.maybe_gathering_complete();
                    }
                    Event::AllocateError(tid, e) if turn.allocate == Some(tid) => {
                        turn.allocate = None;
                        tracing::warn!(url = %turn.url, "TURN allocation refused: {e}");
                        self.maybe_gathering_complete();
                    }
                    Event::TransactionTimeout(tid) if turn.allocate == Some(tid) => {
                        turn.allocate = None;
                        tracing::warn!(url = %turn.url, "TURN server did not answer the allocation");
                        self.maybe_gathering_complete();
                    }
                    Event::CreatePermissionResponse(_, peer) => {
                        turn.permitted.insert(peer);
                        turn.asked.remove(&peer);
                        if let Some(relay) = turn.relay {
                            let held: Vec<_> = turn.waiting.iter().filter(|(to, _)| *to == peer).cloned().collect();
                            turn.waiting.retain(|(to, _)| *to != peer);
                            if let Ok(mut r) = turn.client.relay(relay) {
                                for (to, data) in held {
                                    let _ = r.send_to(now, &data, to);
                                }
                            }
                        }
                    }
                    Event::CreatePermissionError(_, e) => {
                        tracing::debug!(url = %turn.url, "TURN permission refused: {e}")
                    }
                    Event::DataIndicationOrChannelData(_, from, data) => {
                        if let Some(relay) = turn.relay {
                            self.last_heard = now;
                            self.last_peer.insert(relay, from);
                            let read = TaggedBytesMut {
                                now,
                                transport: TransportContext {
                                    local_addr: relay,
                                    peer_addr: from,
                                    ecn: None,
                                    transport_protocol: TransportProtocol::UDP,
                                },
                                message: data,
                            };
                            if let Err(e) = self.pc.handle_read(read) {
                                tracing::trace!(%from, "relayed datagram refused: {e}");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends `data` to `to` through the relay whose address is `local`;
    /// false if `local` is not one of our relayed addresses.
    fn relay_send(&mut self, local: SocketAddr, to: SocketAddr, data: BytesMut, now: Instant) -> bool {
        let Some(turn) = self.turn.iter_mut().find(|t| t.relay == Some(local)) else { return false };
        if turn.permitted.contains(&to) {
            if let Ok(mut r) = turn.client.relay(local) {
                let _ = r.send_to(now, &data, to);
            }
            return true;
        }
        if turn.asked.insert(to)
            && let Ok(mut r) = turn.client.relay(local)
            && let Err(e) = r.create_permission(now, to)
        {
            tracing::debug!(%to, "TURN permission not requested: {e}");
        }
        if turn.waiting.len() >= RELAY_QUEUE {
            turn.waiting.pop_front();
        }
        turn.waiting.push_back((to, data));
        true
    }

    /// TURN timers that are due run; returns the next one.
    fn turn_timers(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut gave_up = false;
        for turn in &mut self.turn {
            if turn.client.poll_timeout().is_some_and(|t| t <= now) {
                let _ = turn.client.handle_timeout(now);
            }
            if turn.allocate.is_some() && now >= turn.give_up {
                gave_up = true;
            }
            let t =
                [turn.client.poll_timeout(), turn.gathering(now).then_some(turn.give_up)].into_iter().flatten().min();
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        self.turn_events(now);
        if gave_up {
            self.maybe_gathering_complete();
        }
        next
    }

    /// Datagrams (and stream messages) the TURN clients want sent to their servers.
    fn turn_writes(&mut self) {
        for turn in &mut self.turn {
            while let Some(w) = turn.client.poll_write() {
                match turn.stream {
                    Some(stream) => self.stream_out.push((stream, w.message)),
                    None => self.out.push((Some(turn.socket), w.transport.peer_addr, w.message)),
                }
            }
        }
    }

    /// A whole message from the TURN server on `stream`, or the stream's end.
    fn turn_stream_incoming(&mut self, stream: usize, incoming: Incoming, now: Instant) {
        let Some(turn) = self.turn.iter_mut().find(|t| t.stream == Some(stream)) else { return };
        match incoming {
            Incoming::Message(message) => {
                let read = TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.locals[turn.socket],
                        peer_addr: turn.server,
                        ecn: None,
                        transport_protocol: TransportProtocol::TCP,
                    },
                    message,
                };
                if let Err(e) = turn.client.handle_read(read) {
                    tracing::trace!(url = %turn.url, "TURN message refused: {e}");
                }
                self.turn_events(now);
            }
            Incoming::Closed(reason) => {
                if turn.allocate.take().is_some() {
                    tracing::warn!(url = %turn.url, "no TURN allocation: {reason}");
                    self.maybe_gathering_complete();
                } else {
                    tracing::debug!(url = %turn.url, "TURN stream ended: {reason}");
                }
            }
        }
    }

    /// Marks the connection closed (once), fails the endpoint's calls and
    /// closes the `rtc` state.
    pub(crate) fn close(&mut self, reason: &str, wake: &mut Vec<Waker>) {
        if self.closed.is_some() {
            return;
        }
        tracing::debug!("peer connection closed: {reason}");
        self.closed = Some(reason.to_owned());
        self.closed_token.cancel();
        self.endpoint.on_close(wake);
        self.media.on_close(wake);
        let _ = self.pc.close();
        self.events.push_back(PeerEvent::Closed(reason.to_owned()));
    }

    /// After ICE connects again (a restart), sends a few padding messages
    /// on the `negotiation` channel, each in an SCTP packet of its own, in a
    /// few rounds ([`NUDGE_ROUNDS`]).
    ///
    /// Whatever SCTP sent while there was no path (the old one gone, the new
    /// one not yet checked) is lost, and `rtc`'s SCTP waits for its
    /// retransmission timer — at least 1 s, doubled after each expiry —
    /// before sending it again: calls would stall that long after the path
    /// is back. Data sent after the loss makes the peer acknowledge with
    /// gaps, and three such acknowledgements retransmit the missing chunks
    /// at once (fast retransmit, RFC 4960 §7.2.4). The peer drops these
    /// messages (a first byte of 0 is no renegotiation message).
    fn nudge(&mut self, now: Instant) -> bool {
        if self.nudges.front().is_none_or(|t| *t > now) {
            return false;
        }
        self.nudges.pop_front();
        let id = self.media.channel;
        for _ in 0..NUDGES {
            let Some(mut dc) = self.pc.data_channel(id) else { return true };
            if let Err(e) = dc.send(now, BytesMut::zeroed(NUDGE_SIZE)) {
                tracing::debug!("nudge not sent: {e}");
                return true;
            }
        }
        tracing::debug!("ICE connected again: {NUDGES} nudges for SCTP's fast retransmit");
        true
    }

    /// One turn: framing ↔ channel, events, and the datagrams to send.
    fn turn(&mut self, shared: &Arc<Shared>, wake: &mut Vec<Waker>) {
        let now = now();
        let (mut flushes, mut flushed) = (0, false);
        loop {
            let mut progress = false;
            if self.data_open && self.closed.is_none() {
                let id = self.data;
                while let Some(mut dc) = self.pc.data_channel(id) {
                    if dc.outstanding_bytes() >= self.high_water {
                        break;
                    }
                    let Some(packet) = self.endpoint.poll_transmit(wake) else { break };
                    if let Err(e) = dc.send(now, BytesMut::from(&packet[..])) {
                        self.close(&format!("data channel send failed: {e}"), wake);
                        break;
                    }
                    progress = true;
                }
            }
            while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
                progress = true;
                match message {
                    RTCMessage::DataChannelMessage(id, msg) if id == self.data => {
                        self.endpoint.on_message(msg.data.freeze(), shared, wake);
                    }
                    RTCMessage::DataChannelMessage(id, msg) if id == self.media.channel => {
                        self.on_negotiation(&msg.data);
                    }
                    RTCMessage::RtpPacket(track, packet) => self.on_rtp(&track, packet, wake),
                    RTCMessage::RtcpPacket(track, packets) => self.on_rtcp(&track, &packets),
                    _ => {}
                }
            }
            while let Some(event) = self.pc.poll_event() {
                progress = true;
                self.on_event(event, wake);
            }
            if self.nudge(now) {
                progress = true;
            }
            if progress {
                flushed = false;
            } else {
                // Work around an `rtc` 0.21 behaviour: what a handler queues
                // while reacting to an internal event (the DTLS ClientHello
                // once ICE selects a pair, SCTP's INIT once DTLS is up) only
                // reaches `poll_write` on the handler's next `handle_timeout`.
                // Waiting for the timer cost ~200 ms per phase of the
                // handshake; the timers themselves check their deadlines, so
                // an early call only flushes. Once per quiet point, a few at
                // most per turn.
                if flushed || flushes == 4 {
                    break;
                }
                flushed = true;
                flushes += 1;
                let _ = self.pc.handle_timeout(now);
            }
        }
        while let Some(w) = self.pc.poll_write() {
            let (local, to) = (w.transport.local_addr, w.transport.peer_addr);
            if !self.turn.is_empty() && self.relay_send(local, to, w.message.clone(), now) {
                continue;
            }
            let socket = self.socket_for(local);
            self.out.push((socket, to, w.message));
        }
        self.turn_writes();
    }

    fn on_event(&mut self, event: RTCPeerConnectionEvent, wake: &mut Vec<Waker>) {
        match event {
            RTCPeerConnectionEvent::OnIceCandidateEvent(e) => {
                if let Ok(init) = e.candidate.to_json() {
                    if !self.include_loopback && init.candidate.contains(" 127.") {
                        return;
                    }
                    self.events.push_back(PeerEvent::LocalCandidate(super::sdp::candidate_to_pb(&init)));
                }
            }
            RTCPeerConnectionEvent::OnIceGatheringStateChangeEvent(
                rtc::peer_connection::state::RTCIceGatheringState::Complete,
            ) => self.events.push_back(PeerEvent::GatheringComplete),
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                rtc::peer_connection::state::RTCIceConnectionState::Connected,
            ) => {
                if self.ice_connected_once && self.data_open {
                    let t = now();
                    self.nudges = NUDGE_ROUNDS.iter().map(|d| t + *d).collect();
                }
                self.ice_connected_once = true;
                self.events.push_back(PeerEvent::IceConnected);
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected => self.events.push_back(PeerEvent::Connected),
                RTCPeerConnectionState::Failed => self.close("ICE failed", wake),
                RTCPeerConnectionState::Disconnected => self.close("ICE disconnected", wake),
                RTCPeerConnectionState::Closed => self.close("connection closed", wake),
                _ => {}
            },
            RTCPeerConnectionEvent::OnDataChannel(e) => match e {
                RTCDataChannelEvent::OnOpen(id) if id == self.data => {
                    self.data_open = true;
                    self.events.push_back(PeerEvent::Open);
                }
                RTCDataChannelEvent::OnClose(id) | RTCDataChannelEvent::OnError(id) if id == self.data => {
                    self.close("data channel closed", wake);
                }
                RTCDataChannelEvent::OnOpen(id) if id == self.media.channel => self.negotiation_open(),
                _ => {}
            },
            RTCPeerConnectionEvent::OnTrack(rtc::peer_connection::event::RTCTrackEvent::OnOpen(init)) => {
                self.on_remote_track(init.track_id, &init.stream_ids, wake);
            }
            _ => {}
        }
    }

    /// The socket whose address is `local` (the mDNS socket for none).
    fn socket_for(&self, local: SocketAddr) -> Option<usize> {
        self.locals
            .iter()
            .position(|l| *l == local)
            .or_else(|| self.locals.iter().position(|l| l.port() == local.port()))
    }

    /// Gives the `data` channel its role, handing it what arrived before.
    pub(crate) fn attach(&mut self, endpoint: Endpoint, shared: &Arc<Shared>, wake: &mut Vec<Waker>) {
        let early = match std::mem::replace(&mut self.endpoint, endpoint) {
            Endpoint::Detached(early) => early,
            _ => VecDeque::new(),
        };
        for message in early {
            self.endpoint.on_message(message, shared, wake);
        }
        if self.closed.is_some() {
            self.endpoint.on_close(wake);
        }
    }
}

/// The index [`poll_recv`] gives the mDNS socket.
const MDNS: usize = usize::MAX;

/// Waits for a datagram on any socket (the mDNS one, if open, as
/// [`MDNS`]): (socket, from, length) into `buf`.
fn poll_recv(
    sockets: &[UdpSocket],
    mdns: Option<&UdpSocket>,
    buf: &mut [u8],
    cx: &mut std::task::Context<'_>,
) -> Poll<(usize, SocketAddr, usize)> {
    let all = sockets.iter().enumerate().chain(mdns.map(|s| (MDNS, s)));
    for (i, s) in all {
        let mut rb = ReadBuf::new(buf);
        match s.poll_recv_from(cx, &mut rb) {
            Poll::Ready(Ok(from)) => return Poll::Ready((i, from, rb.filled().len())),
            Poll::Ready(Err(e)) => tracing::trace!("udp receive error: {e}"),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

fn mdns_socket_new() -> Option<UdpSocket> {
    let std = rtc::mdns::MulticastSocket::new().into_std().ok()?;
    std.set_nonblocking(true).ok()?;
    UdpSocket::from_std(std).ok()
}

/// What woke the driver.
enum Woke {
    Datagram(usize, SocketAddr, usize),
    Stream(usize, Incoming),
    Other,
}

async fn drive(shared: Arc<Shared>, mut sockets: Vec<UdpSocket>, mut streams: Vec<TurnStream>) {
    let mut mdns_socket: Option<UdpSocket> = None;
    let mut mdns: Option<SocketAddr> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::new();
    let mut stream_out = Vec::new();
    loop {
        let notified = shared.driver.notified();
        let (deadline, done) = {
            let mut wake = Vec::new();
            let (deadline, done, had_events) = {
                let mut inner = shared.inner.lock();
                // Sockets an ICE restart bound (indices continue `locals`).
                sockets.append(&mut inner.new_sockets);
                let t = now();
                if inner.pc.poll_timeout().is_some_and(|d| d <= t) {
                    let _ = inner.pc.handle_timeout(t);
                }
                let stun_next = inner.stun_timers(t);
                let turn_next = if inner.turn.is_empty() { None } else { inner.turn_timers(t) };
                inner.turn(&shared, &mut wake);
                std::mem::swap(&mut out, &mut inner.out);
                std::mem::swap(&mut stream_out, &mut inner.stream_out);
                let nudge_next = inner.nudges.front().copied();
                let deadline = [inner.pc.poll_timeout(), stun_next, turn_next, nudge_next].into_iter().flatten().min();
                (deadline, inner.closed.is_some(), !inner.events.is_empty())
            };
            for w in wake {
                w.wake();
            }
            if had_events || done {
                shared.events.notify_waiters();
            }
            (deadline, done)
        };
        for (socket, to, payload) in out.drain(..) {
            let s = match socket {
                Some(i) => sockets.get(i),
                None if to.port() == 5353 => {
                    if mdns_socket.is_none()
                        && let Some(s) = mdns_socket_new()
                    {
                        mdns = s.local_addr().ok();
                        mdns_socket = Some(s);
                    }
                    mdns_socket.as_ref()
                }
                None => sockets.first(),
            };
            let Some(s) = s else { continue };
            if let Err(e) = s.try_send_to(&payload, to) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    let _ = s.send_to(&payload, to).await;
                } else {
                    tracing::trace!(%to, "udp send error: {e}");
                }
            }
        }
        if !stream_out.is_empty() {
            for (stream, message) in stream_out.drain(..) {
                if let Some(s) = streams.get_mut(stream)
                    && !s.send(&message)
                {
                    tracing::trace!(server = %s.server, "TURN stream queue full or closed; message dropped");
                }
            }
            turn_tcp::write_streams(&mut streams);
        }
        if done {
            shared.closed.cancel();
            shared.events.notify_waiters();
            return;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            biased;
            (i, from, n) = poll_fn(|cx| poll_recv(&sockets, mdns_socket.as_ref(), &mut buf, cx)) => Woke::Datagram(i, from, n),
            (i, m) = poll_fn(|cx| turn_tcp::poll_streams(&mut streams, cx)) => Woke::Stream(i, m),
            _ = notified => Woke::Other,
            _ = sleep => Woke::Other,
        };
        let (i, from, n) = match woke {
            Woke::Datagram(i, from, n) => (i, from, n),
            Woke::Stream(i, first) => {
                let mut inner = shared.inner.lock();
                let t = now();
                inner.turn_stream_incoming(i, first, t);
                for _ in 1..RECV_BATCH {
                    let Some((i, m)) = turn_tcp::try_streams(&mut streams) else { break };
                    inner.turn_stream_incoming(i, m, t);
                }
                continue;
            }
            Woke::Other => continue,
        };
        let mut batch = vec![(i, from, BytesMut::from(&buf[..n]))];
        while batch.len() < RECV_BATCH {
            let got = sockets.iter().enumerate().chain(mdns_socket.as_ref().map(|s| (MDNS, s))).find_map(|(j, s)| {
                s.try_recv_from(&mut buf).ok().map(|(n, from)| (j, from, BytesMut::from(&buf[..n])))
            });
            match got {
                Some(g) => batch.push(g),
                None => break,
            }
        }
        let mut inner = shared.inner.lock();
        let t = now();
        for (i, from, data) in batch {
            let host = i != MDNS;
            if host && inner.stun_answer(i, from, &data) {
                continue;
            }
            let data = if host && !inner.turn.is_empty() {
                match inner.turn_read(i, from, data, t) {
                    Some(data) => data,
                    None => continue,
                }
            } else {
                data
            };
            let local = if host { inner.locals[i] } else { mdns.unwrap_or(inner.locals[0]) };
            if host {
                inner.last_peer.insert(local, from);
                inner.last_heard = t;
            }
            let read = TaggedBytesMut {
                now: t,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: data,
            };
            if let Err(e) = inner.pc.handle_read(read) {
                tracing::trace!(%from, "datagram refused: {e}");
            }
        }
    }
}
