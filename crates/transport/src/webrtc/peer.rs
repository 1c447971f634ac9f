//! What a peer connection is set up with: STUN/TURN servers, relay-only,
//! and ICE timeouts short enough to notice a dead peer in seconds.

use std::time::Duration;

/// Default STUN server of the Viam SDKs.
pub const DEFAULT_STUN: &str = "stun:global.stun.twilio.com:3478";

/// One STUN or TURN server.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`,
    /// `turn:host:port?transport=tcp`, `turns:host:port`.
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
    /// With [`Self::include_loopback`]: offer the loopback candidate only
    /// once the peer shows it runs on this host (one of its candidates has
    /// one of our own non-loopback addresses, or we have none and it offers
    /// a loopback one). A remote peer never gets it: its checks to our
    /// `127.0.0.1` cannot work, and a TURN server refuses permissions for it
    /// (coturn: `403 Forbidden IP`). On by default.
    pub loopback_only_for_local_peers: bool,
    /// Extra CA certificates (PEM) trusted for `turns:` servers, besides the
    /// web PKI roots and the file named by `SSL_CERT_FILE`.
    pub tls_ca_pem: Option<Vec<u8>>,
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

    /// Sets [`Self::loopback_only_for_local_peers`].
    pub fn with_loopback_only_for_local_peers(mut self, only: bool) -> Self {
        self.loopback_only_for_local_peers = only;
        self
    }

    /// Sets [`Self::tls_ca_pem`].
    pub fn with_tls_ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.tls_ca_pem = pem;
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
            loopback_only_for_local_peers: true,
            tls_ca_pem: None,
        }
    }
}
