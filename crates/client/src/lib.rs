//! Client SDK for Viam-compatible machines.
//!
//! [`RobotClient`] dials a machine, keeps a session alive automatically (it
//! starts one lazily on the first safety-monitored call, heartbeats at
//! window/5 and attaches `viam-sid` to monitored calls only), and hands out
//! typed component clients that use the tonic-generated stubs unchanged.
//!
//! ```no_run
//! # async fn run() -> Result<(), tether_client::Error> {
//! use tether_client::{DialConf, Options, RobotClient, components::Motor};
//! let robot = RobotClient::connect(DialConf::direct("127.0.0.1:8080"), Options::default()).await?;
//! for name in robot.resource_names().await? {
//!     println!("{}:{}:{}/{}", name.namespace, name.r#type, name.subtype, name.name);
//! }
//! let motor = Motor::from_robot(&robot, "motor1");
//! motor.set_power(0.5).await?; // starts a session; the machine stops the motor if we vanish
//! assert!(motor.is_powered().await?.0);
//! motor.stop().await?;
//! robot.close().await;
//! # Ok(()) }
//! ```

use std::time::Duration;

pub mod components;
mod error;
mod events;
pub mod metrics;
mod reauth;
mod robot;
mod session;
mod stream;
mod transport;

pub use components::convert;
pub use error::Error;
pub use events::{
    AbortHandle, ConnectionEvent, ConnectionState, IceRestartOptions, Liveness, Method, ReconnectOptions, ShouldRetry,
};
pub use robot::RobotClient;
pub use session::SessionChannel;
pub use stream::{VideoSample, VideoStream};
pub use tether_proto::viam::common::v1::ResourceName;
pub use tether_transport::dial::Credentials;
pub use tether_transport::webrtc::peer::{IceServer, TurnScheme, TurnTransport};
pub use transport::{Link, Transport, WaitForReady};

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach a machine.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DialConf {
    /// Direct gRPC over HTTP/2 to the machine's address.
    Direct {
        /// `host:port`, or a URL (`http://…`).
        address: String,
        /// Credentials to authenticate with (`Authenticate`, then a bearer token).
        credentials: Option<Credentials>,
        /// Limit on connecting and authenticating.
        dial_timeout: Duration,
        /// Extra CA certificate (PEM) to trust for `https://` addresses.
        tls_ca_pem: Option<Vec<u8>>,
    },
    /// gRPC over a WebRTC data channel, brokered by a signaling service (the
    /// machine's own port serves one). Reaches machines behind NATs.
    WebRtc(Box<WebRtcConf>),
}

/// Settings of a WebRTC dial.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebRtcConf {
    /// The machine's host name as signaling knows it.
    pub host: String,
    /// Signaling service address (`host:port` or URL).
    pub signaling_address: String,
    /// Our ICE servers (default: `stun:global.stun.twilio.com:3478`); the
    /// signaler's are appended.
    pub ice_servers: Vec<IceServer>,
    /// Only use TURN relays (the anchors' `force_relay`).
    pub force_relay: bool,
    /// Deprecated name of [`Self::force_relay`] (either turns it on).
    #[deprecated(note = "use force_relay")]
    pub relay_only: bool,
    /// Never use TURN relays: every TURN server (ours and the signaler's) is
    /// dropped. With `force_relay` too nothing can connect: the dial fails
    /// at once with INVALID_ARGUMENT (and a warning is logged).
    pub force_p2p: bool,
    /// Keep only this TURN server among all TURN URLs, matched by scheme,
    /// host, port and transport (each with its default when left out:
    /// port 3478 for `turn:`, 5349 for `turns:`, `udp` for `turn:`, `tcp`
    /// for `turns:`), e.g. `turn:turn.example.com:3478`.
    pub turn_uri: Option<String>,
    /// Deprecated name of [`Self::turn_uri`] (used when `turn_uri` is unset).
    #[deprecated(note = "use turn_uri")]
    pub turn_uri_override: Option<String>,
    /// Rewrite every TURN URL left to this scheme (`turn`/`turns`).
    pub turn_scheme: Option<TurnScheme>,
    /// Rewrite every TURN URL left to this transport (`udp`/`tcp`).
    pub turn_transport: Option<TurnTransport>,
    /// Rewrite every TURN URL left to this port.
    pub turn_port: Option<u16>,
    /// Our priority, sent to the machine in the offer (`a=x-priority:N`, as
    /// the TypeScript SDK's `priority`): a machine at its
    /// `max_webrtc_connections` lets a caller in by closing an idle,
    /// sessionless connection of a lower priority. Unset: none sent (0).
    pub priority: Option<i32>,
    /// What to do when the first WebRTC dial fails (every attempt of it).
    pub direct_fallback: DirectFallback,
    /// Send a complete offer instead of trickling ICE candidates.
    pub disable_trickle: bool,
    /// Limit on the whole dial.
    pub dial_timeout: Duration,
    /// Credentials for the signaling service.
    pub credentials: Option<Credentials>,
    /// Extra CA certificate (PEM) for an `https://` signaling address.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl WebRtcConf {
    /// Defaults for `host` via `signaling_address`.
    #[allow(deprecated)]
    pub fn new(host: impl Into<String>, signaling_address: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            signaling_address: signaling_address.into(),
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
            direct_fallback: DirectFallback::default(),
            disable_trickle: false,
            dial_timeout: Duration::from_secs(10),
            credentials: None,
            tls_ca_pem: None,
        }
    }

    #[allow(deprecated)]
    pub(crate) fn options(&self) -> tether_signaling::caller::WebRtcOptions {
        let mut o = tether_signaling::caller::WebRtcOptions::new(&self.signaling_address, &self.host);
        o.credentials = self.credentials.clone();
        o.ice_servers = self.ice_servers.clone();
        o.force_relay = self.force_relay || self.relay_only;
        o.force_p2p = self.force_p2p;
        o.turn_uri = self.turn_uri.clone().or_else(|| self.turn_uri_override.clone());
        o.turn_scheme = self.turn_scheme;
        o.turn_transport = self.turn_transport;
        o.turn_port = self.turn_port;
        o.priority = self.priority;
        o.disable_trickle = self.disable_trickle;
        o.dial_timeout = self.dial_timeout;
        o.tls_ca_pem = self.tls_ca_pem.clone();
        o
    }

    /// The direct dial (and its address) to fall back to when WebRTC fails, if any.
    pub(crate) fn fallback(&self) -> Option<(DialConf, String)> {
        let address = match &self.direct_fallback {
            DirectFallback::Never => return None,
            DirectFallback::To(address) => address.clone(),
            DirectFallback::Auto if self.host.to_ascii_lowercase().contains("local") => self.host.clone(),
            DirectFallback::Auto => return None,
        };
        let conf = DialConf::Direct {
            address: address.clone(),
            credentials: self.credentials.clone(),
            dial_timeout: self.dial_timeout,
            tls_ca_pem: self.tls_ca_pem.clone(),
        };
        Some((conf, address))
    }
}

/// Whether a failed first WebRTC dial is followed by a direct gRPC dial.
/// Only the first dial falls back; reconnections redial the transport that
/// connected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectFallback {
    /// As the TypeScript SDK does: dial `host` directly when it names a
    /// machine on the local network, i.e. contains `local` (`localhost:8080`,
    /// `bot.local:8080`, `….local.viam.cloud:8080`); otherwise no fallback
    /// (the TypeScript SDK refuses a direct dial of any other host).
    #[default]
    Auto,
    /// Never fall back.
    Never,
    /// Fall back to a direct dial of this address (`host:port` or URL).
    To(String),
}

impl DialConf {
    /// A direct, unauthenticated dial with the default 10 s timeout.
    pub fn direct(address: impl Into<String>) -> Self {
        DialConf::Direct {
            address: address.into(),
            credentials: None,
            dial_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }

    /// A WebRTC dial of `host` through the signaling service at
    /// `signaling_address`, with defaults.
    pub fn webrtc(host: impl Into<String>, signaling_address: impl Into<String>) -> Self {
        DialConf::WebRtc(Box::new(WebRtcConf::new(host, signaling_address)))
    }

    /// Adds credentials.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        match &mut self {
            DialConf::Direct { credentials, .. } => *credentials = Some(creds),
            DialConf::WebRtc(c) => c.credentials = Some(creds),
        }
        self
    }

    /// Edits the WebRTC settings (no effect on a direct dial).
    pub fn with_webrtc(mut self, f: impl FnOnce(&mut WebRtcConf)) -> Self {
        if let DialConf::WebRtc(c) = &mut self {
            f(c);
        }
        self
    }

    /// Trusts an extra CA certificate (PEM) for TLS, e.g. a machine's
    /// self-signed certificate.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        match &mut self {
            DialConf::Direct { tls_ca_pem, .. } => *tls_ca_pem = Some(pem.into()),
            DialConf::WebRtc(c) => c.tls_ca_pem = Some(pem.into()),
        }
        self
    }

    /// Sets the dial timeout.
    pub fn with_dial_timeout(mut self, timeout: Duration) -> Self {
        match &mut self {
            DialConf::Direct { dial_timeout, .. } => *dial_timeout = timeout,
            DialConf::WebRtc(c) => c.dial_timeout = timeout,
        }
        self
    }
}

/// Client behaviour, for either dial configuration.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Options {
    /// Never start sessions. The machine then cannot stop this client's
    /// actuators when it disappears: only use this when something else
    /// guarantees safety.
    pub disable_sessions: bool,
    /// What to do when the connection drops.
    pub reconnect: ReconnectOptions,
    /// How fast a silently dead link is noticed.
    pub liveness: Liveness,
    /// Decides, after a failed dial attempt (first dial and reconnections),
    /// whether to try again. Default: [`Error::is_retryable`] (errors that
    /// cannot heal — UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT
    /// such as `host not preconfigured`, bad settings — end the dial at once).
    pub should_retry: Option<ShouldRetry>,
    /// Stops a dial in progress (the first one: `connect` returns CANCELLED
    /// `dial aborted`; a reconnection: it gives up, `reconnection_failed`,
    /// and the client is disconnected), and every later one.
    pub abort: Option<AbortHandle>,
    /// ICE restart on a network change (WebRTC only).
    pub ice_restart: IceRestartOptions,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `Options::default()`).
impl Options {
    /// Sets [`Self::disable_sessions`].
    pub fn with_disable_sessions(mut self, disable_sessions: bool) -> Self {
        self.disable_sessions = disable_sessions;
        self
    }

    /// Sets [`Self::reconnect`].
    pub fn with_reconnect(mut self, reconnect: ReconnectOptions) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets [`Self::liveness`].
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Sets [`Self::should_retry`].
    pub fn with_should_retry(mut self, f: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.should_retry = Some(ShouldRetry::new(f));
        self
    }

    /// Sets [`Self::abort`].
    pub fn with_abort(mut self, abort: AbortHandle) -> Self {
        self.abort = Some(abort);
        self
    }

    /// Sets [`Self::ice_restart`].
    pub fn with_ice_restart(mut self, ice_restart: IceRestartOptions) -> Self {
        self.ice_restart = ice_restart;
        self
    }

    /// Whether to try again after `error`.
    pub(crate) fn retry(&self, error: &Error) -> bool {
        match &self.should_retry {
            Some(f) => f.check(error),
            None => error.is_retryable(),
        }
    }
}
