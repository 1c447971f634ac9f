//! Peer connections as tether uses them: the two pre-negotiated channels
//! (`data` id 0 and `negotiation` id 1, ordered and reliable), IPv4 UDP,
//! mDNS candidates resolved (Chrome hides host addresses behind `.local`
//! names), and ICE timeouts short enough to notice a dead peer in seconds.

use std::sync::Arc;
use std::time::Duration;

use webrtc::api::APIBuilder;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;

/// Default STUN server of the Viam SDKs.
pub const DEFAULT_STUN: &str = "stun:global.stun.twilio.com:3478";

/// One STUN or TURN server.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, …
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default)]
    pub username: String,
    /// TURN credential.
    #[serde(default)]
    pub credential: String,
}

impl IceServer {
    /// A server without credentials.
    pub fn url(url: impl Into<String>) -> Self {
        Self { urls: vec![url.into()], ..Default::default() }
    }

    /// Parses a URL, taking credentials from a `scheme:user:pass@host:port…`
    /// form (as the CLIs accept them); anything else is a bare URL.
    ///
    /// ```
    /// use tether_transport::webrtc::peer::IceServer;
    /// let s = IceServer::parse("turn:u:p@10.0.0.1:3478?transport=udp");
    /// assert_eq!((s.urls[0].as_str(), s.username.as_str(), s.credential.as_str()), ("turn:10.0.0.1:3478?transport=udp", "u", "p"));
    /// assert_eq!(IceServer::parse("stun:10.0.0.1:3478"), IceServer::url("stun:10.0.0.1:3478"));
    /// ```
    pub fn parse(url: &str) -> Self {
        if let Some((scheme, rest)) = url.split_once(':')
            && let Some((creds, host)) = rest.split_once('@')
            && let Some((user, pass)) = creds.split_once(':')
        {
            return Self {
                urls: vec![format!("{scheme}:{host}")],
                username: user.to_owned(),
                credential: pass.to_owned(),
            };
        }
        Self::url(url)
    }

    /// True when every URL is a TURN URL.
    pub fn is_turn(&self) -> bool {
        !self.urls.is_empty() && self.urls.iter().all(|u| u.starts_with("turn:") || u.starts_with("turns:"))
    }
}

impl From<&tether_proto::proto::rpc::webrtc::v1::IceServer> for IceServer {
    fn from(s: &tether_proto::proto::rpc::webrtc::v1::IceServer) -> Self {
        Self { urls: s.urls.clone(), username: s.username.clone(), credential: s.credential.clone() }
    }
}

impl From<&IceServer> for tether_proto::proto::rpc::webrtc::v1::IceServer {
    fn from(s: &IceServer) -> Self {
        Self { urls: s.urls.clone(), username: s.username.clone(), credential: s.credential.clone() }
    }
}

/// How a peer connection is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerOptions {
    /// STUN/TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Only relay (TURN) candidates.
    pub relay_only: bool,
    /// No network activity for this long → disconnected (treated as dead).
    pub disconnected_timeout: Duration,
    /// … and failed after this long.
    pub failed_timeout: Duration,
    /// Keepalive (ICE binding requests) interval; must be well below
    /// `disconnected_timeout` so a live peer always answers in time.
    pub keepalive: Duration,
    /// Include loopback host candidates (for same-host use and tests).
    pub include_loopback: bool,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `PeerOptions::default()`).
impl PeerOptions {
    /// Sets [`Self::ice_servers`].
    pub fn with_ice_servers(mut self, ice_servers: Vec<IceServer>) -> Self {
        self.ice_servers = ice_servers;
        self
    }

    /// Sets [`Self::relay_only`].
    pub fn with_relay_only(mut self, relay_only: bool) -> Self {
        self.relay_only = relay_only;
        self
    }

    /// Sets [`Self::disconnected_timeout`].
    pub fn with_disconnected_timeout(mut self, disconnected_timeout: Duration) -> Self {
        self.disconnected_timeout = disconnected_timeout;
        self
    }

    /// Sets [`Self::failed_timeout`].
    pub fn with_failed_timeout(mut self, failed_timeout: Duration) -> Self {
        self.failed_timeout = failed_timeout;
        self
    }

    /// Sets [`Self::keepalive`].
    pub fn with_keepalive(mut self, keepalive: Duration) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Sets [`Self::include_loopback`].
    pub fn with_include_loopback(mut self, include_loopback: bool) -> Self {
        self.include_loopback = include_loopback;
        self
    }
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            ice_servers: vec![IceServer::url(DEFAULT_STUN)],
            relay_only: false,
            disconnected_timeout: Duration::from_secs(3),
            failed_timeout: Duration::from_secs(5),
            keepalive: Duration::from_millis(500),
            include_loopback: true,
        }
    }
}

/// A peer connection with its two channels.
pub struct Peer {
    /// The connection.
    pub pc: Arc<RTCPeerConnection>,
    /// `data` (id 0): gRPC frames.
    pub data: Arc<RTCDataChannel>,
    /// `negotiation` (id 1): renegotiation SDPs.
    pub negotiation: Arc<RTCDataChannel>,
}

/// The webrtc-rs settings [`new_peer`] uses for `options`.
fn setting_engine(options: &PeerOptions) -> SettingEngine {
    let mut settings = SettingEngine::default();
    settings.set_ice_timeouts(
        Some(options.disconnected_timeout),
        Some(options.failed_timeout),
        Some(options.keepalive),
    );
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::QueryOnly);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_include_loopback_candidate(options.include_loopback);
    // webrtc-ice waits 1 s before it will nominate a peer-reflexive pair and
    // 500 ms for a server-reflexive one, even when nothing better can come.
    // A caller's host candidates often reach us only as prflx (mDNS-obscured
    // or learned from its first check before its trickled candidate arrives):
    // the stock wait put ~30 % of loopback dials at ~1 s (p90 1,013 -> 7 ms
    // without it, by the bench's connect row, docs/PERFORMANCE.md). Through
    // NATs the pair is srflx: `tether call` over STUN between two NATed
    // namespaces went from 0.65 s to 0.27-0.47 s (tests/nat.rs).
    // Higher-priority (host) pairs are checked first, so they still win where
    // they work. Relayed pairs keep their wait (2 s) unless relay-only, so a
    // direct path gets its chance.
    settings.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
    settings.set_srflx_acceptance_min_wait(Some(Duration::ZERO));
    if options.relay_only {
        settings.set_relay_acceptance_min_wait(Some(Duration::ZERO));
    }
    settings
}

/// Creates a peer connection and both negotiated channels.
pub async fn new_peer(options: &PeerOptions) -> Result<Peer, webrtc::Error> {
    let api = APIBuilder::new().with_setting_engine(setting_engine(options)).build();
    let config = RTCConfiguration {
        ice_servers: options
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
        ice_transport_policy: if options.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        },
        ..Default::default()
    };
    let pc = Arc::new(api.new_peer_connection(config).await?);
    let data = pc
        .create_data_channel(
            "data",
            Some(RTCDataChannelInit { ordered: Some(true), negotiated: Some(0), ..Default::default() }),
        )
        .await?;
    let negotiation = pc
        .create_data_channel(
            "negotiation",
            Some(RTCDataChannelInit { ordered: Some(true), negotiated: Some(1), ..Default::default() }),
        )
        .await?;
    Ok(Peer { pc, data, negotiation })
}

/// Resolves if webrtc-rs lost our side of the negotiated `data` channel,
/// which then never opens.
///
/// webrtc-rs 0.17 (upstream issue webrtc-rs/webrtc#821) opens pre-negotiated
/// channels only after the SCTP association is up. If the remote's first
/// message on that stream is processed in between, the stream is created as
/// an inbound one, its first message is consumed as a malformed DCEP open,
/// and our open fails with "there already exists a stream with identifier":
/// the channel stays `connecting` forever and the message is gone. It happens
/// when the caller writes the instant its side opens (the Python SDK does) and
/// the machine's task that opens the channel is scheduled late. There is no
/// way to recover the stream through the public API, so the answerer closes
/// the connection at once instead of leaving the caller's first call hanging
/// until the dial deadline.
///
/// Detection: webrtc-rs opens the channels one after the other in creation
/// order, `data` then `negotiation`, and carries on after a failure; so when
/// `negotiation` opens, `data`'s open is over, and `data` still `connecting`
/// means it failed. (Callers write nothing on `negotiation` first, so it is
/// not lost itself; if it were, the dial deadline still ends the exchange.)
/// Takes over `negotiation`'s open handler.
pub async fn open_lost(data: &RTCDataChannel, negotiation: &RTCDataChannel) {
    use webrtc::data_channel::data_channel_state::RTCDataChannelState;
    let opened = tokio_util::sync::CancellationToken::new();
    {
        let opened = opened.clone();
        // Fires at once if it is already open.
        negotiation.on_open(Box::new(move || {
            opened.cancel();
            Box::pin(async {})
        }));
    }
    opened.cancelled().await;
    if data.ready_state() != RTCDataChannelState::Connecting {
        std::future::pending::<()>().await;
    }
}
