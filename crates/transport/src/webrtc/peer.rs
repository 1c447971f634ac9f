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
    /// `force_p2p`, the TURN URI override and the TURN URL rewrites,
    /// applied to `ice_servers` when the peer connection is made.
    pub turn: TurnOptions,
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

    /// Sets [`Self::turn`].
    pub fn with_turn(mut self, turn: TurnOptions) -> Self {
        self.turn = turn;
        self
    }

    /// The options a peer connection is made with: [`Self::turn`] applied to
    /// [`Self::ice_servers`] (a warning when relay-only and `force_p2p` are
    /// both set: no candidate can then connect).
    pub fn effective(&self) -> PeerOptions {
        if self.turn.force_p2p && self.relay_only {
            tracing::warn!("force_relay and force_p2p are both set: no candidate can connect");
        }
        if self.turn.is_noop() {
            return self.clone();
        }
        let mut o = self.clone();
        o.ice_servers = self.turn.apply(std::mem::take(&mut o.ice_servers));
        o.turn = TurnOptions::default();
        o
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
            turn: TurnOptions::default(),
        }
    }
}

/// `turn:` or `turns:` (TURN over TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnScheme {
    /// `turn:`
    Turn,
    /// `turns:`
    Turns,
}

impl TurnScheme {
    fn as_str(self) -> &'static str {
        match self {
            TurnScheme::Turn => "turn",
            TurnScheme::Turns => "turns",
        }
    }

    /// The RFC 7065 default port of the scheme.
    fn default_port(self) -> u16 {
        match self {
            TurnScheme::Turn => 3478,
            TurnScheme::Turns => 5349,
        }
    }
}

impl std::str::FromStr for TurnScheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().trim_end_matches(':').to_ascii_lowercase().as_str() {
            "turn" => Ok(TurnScheme::Turn),
            "turns" => Ok(TurnScheme::Turns),
            other => Err(format!("TURN scheme {other:?} is neither \"turn\" nor \"turns\"")),
        }
    }
}

/// `?transport=udp` or `?transport=tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// UDP.
    Udp,
    /// TCP (and TLS for `turns:`).
    Tcp,
}

impl TurnTransport {
    fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for TurnTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(TurnTransport::Udp),
            "tcp" => Ok(TurnTransport::Tcp),
            other => Err(format!("TURN transport {other:?} is neither \"udp\" nor \"tcp\"")),
        }
    }
}

/// A TURN URL taken apart (RFC 7065: `turn[s]:host[:port][?transport=udp|tcp]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUrl {
    /// `turn` or `turns`.
    pub scheme: TurnScheme,
    /// Host name or address (IPv6 in brackets), lower-cased.
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The transport (`udp` for `turn:`, `tcp` for `turns:` when the URL has none).
    pub transport: TurnTransport,
}

impl TurnUrl {
    /// Parses a TURN URL; `None` for anything else (STUN URLs included).
    ///
    /// ```
    /// use tether_transport::webrtc::peer::{TurnScheme, TurnTransport, TurnUrl};
    /// let u = TurnUrl::parse("turn:Example.com?transport=tcp").unwrap();
    /// assert_eq!((u.scheme, u.host.as_str(), u.port, u.transport), (TurnScheme::Turn, "example.com", 3478, TurnTransport::Tcp));
    /// assert_eq!(TurnUrl::parse("turns:10.0.0.1").unwrap().to_string(), "turns:10.0.0.1:5349?transport=tcp");
    /// assert!(TurnUrl::parse("stun:10.0.0.1:3478").is_none());
    /// ```
    pub fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once(':')?;
        let scheme: TurnScheme = scheme.parse().ok()?;
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            // `[::1]` alone has colons but no port.
            Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().ok()?)),
            _ => (hostport, None),
        };
        if host.is_empty() || host.contains('@') {
            return None;
        }
        let mut transport = match scheme {
            TurnScheme::Turn => TurnTransport::Udp,
            TurnScheme::Turns => TurnTransport::Tcp,
        };
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            if let Some((k, v)) = kv.split_once('=')
                && k.eq_ignore_ascii_case("transport")
            {
                transport = v.parse().ok()?;
            }
        }
        Some(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or_else(|| scheme.default_port()),
            transport,
        })
    }
}

impl std::fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}?transport={}", self.scheme.as_str(), self.host, self.port, self.transport.as_str())
    }
}

/// Which TURN servers a peer connection uses, and how their URLs are
/// rewritten; applied to the whole server list (ours and the signaler's).
///
/// In this order: `force_p2p` drops every TURN URL; otherwise `uri` keeps
/// only the TURN URLs equal to it (scheme, host, port and transport, each
/// with its RFC 7065 default when left out), then `scheme`, `transport` and
/// `port` replace those parts of every TURN URL left. STUN URLs are never
/// touched.
///
/// ```
/// use tether_transport::webrtc::peer::{IceServer, TurnOptions, TurnTransport};
/// let servers = vec![IceServer { urls: vec![
///     "stun:s.example:3478".into(),
///     "turn:a.example:3478?transport=udp".into(),
///     "turn:b.example:3478".into(),
/// ], ..Default::default() }];
/// let mut only_b = TurnOptions::default();
/// only_b.uri = Some("turn:b.example".into());
/// only_b.transport = Some(TurnTransport::Tcp);
/// only_b.port = Some(443);
/// assert_eq!(only_b.apply(servers.clone())[0].urls, ["stun:s.example:3478", "turn:b.example:443?transport=tcp"]);
/// let mut p2p = TurnOptions::default();
/// p2p.force_p2p = true;
/// assert_eq!(p2p.apply(servers)[0].urls, ["stun:s.example:3478"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TurnOptions {
    /// Never relay: drop every TURN server.
    pub force_p2p: bool,
    /// Keep only this TURN server (e.g. `turn:turn.example.com:3478`).
    pub uri: Option<String>,
    /// Rewrite every TURN URL to this scheme.
    pub scheme: Option<TurnScheme>,
    /// Rewrite every TURN URL to this transport.
    pub transport: Option<TurnTransport>,
    /// Rewrite every TURN URL to this port.
    pub port: Option<u16>,
}

/// Environment variables a machine reads its TURN overrides from.
pub const TURN_ENV: [&str; 4] = ["TURN_URI", "TURN_SCHEME", "TURN_TRANSPORT", "TURN_PORT"];

impl TurnOptions {
    /// True when the options change nothing.
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }

    /// Checks `uri`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(uri) = &self.uri
            && TurnUrl::parse(uri).is_none()
        {
            return Err(format!(
                "TURN URI {uri:?} is not a turn:/turns: URL (turn[s]:host[:port][?transport=udp|tcp])"
            ));
        }
        Ok(())
    }

    /// The overrides from `TURN_URI`, `TURN_SCHEME`, `TURN_TRANSPORT` and
    /// `TURN_PORT` as `lookup` returns them (empty values are unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let o = Self {
            force_p2p: false,
            uri: get("TURN_URI"),
            scheme: get("TURN_SCHEME").map(|v| v.parse()).transpose().map_err(|e| format!("TURN_SCHEME: {e}"))?,
            transport: get("TURN_TRANSPORT")
                .map(|v| v.parse())
                .transpose()
                .map_err(|e| format!("TURN_TRANSPORT: {e}"))?,
            port: get("TURN_PORT")
                .map(|v| {
                    v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("TURN_PORT: {v:?} is not a port"))
                })
                .transpose()?,
        };
        o.validate().map_err(|e| format!("TURN_URI: {e}"))?;
        Ok(o)
    }

    /// The overrides from the process environment (see [`Self::from_lookup`]).
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Applies the options to `servers` (servers left without a URL are dropped).
    pub fn apply(&self, mut servers: Vec<IceServer>) -> Vec<IceServer> {
        let wanted = self.uri.as_deref().and_then(TurnUrl::parse);
        if self.uri.is_some() && wanted.is_none() {
            tracing::warn!(uri = ?self.uri, "the TURN URI override does not parse; no TURN server kept");
        }
        let mut matched = false;
        for s in &mut servers {
            let urls = std::mem::take(&mut s.urls);
            for url in urls {
                let Some(mut turn) = TurnUrl::parse(&url) else {
                    let is_turn = url.starts_with("turn:") || url.starts_with("turns:");
                    if !(is_turn && (self.force_p2p || self.uri.is_some())) {
                        s.urls.push(url);
                    }
                    continue;
                };
                if self.force_p2p {
                    continue;
                }
                if self.uri.is_some() {
                    if Some(&turn) != wanted.as_ref() {
                        continue;
                    }
                    matched = true;
                }
                if self.scheme.is_none() && self.transport.is_none() && self.port.is_none() {
                    s.urls.push(url);
                    continue;
                }
                if let Some(scheme) = self.scheme {
                    turn.scheme = scheme;
                }
                if let Some(transport) = self.transport {
                    turn.transport = transport;
                }
                if let Some(port) = self.port {
                    turn.port = port;
                }
                let rewritten = turn.to_string();
                if !s.urls.contains(&rewritten) {
                    s.urls.push(rewritten);
                }
            }
        }
        if let Some(uri) = &self.uri
            && !matched
            && !self.force_p2p
        {
            tracing::warn!(%uri, "no TURN server matches the TURN URI override; relaying is off for this connection");
        }
        servers.retain(|s| !s.urls.is_empty());
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn turn_overrides_from_the_environment() {
        let o = TurnOptions::from_lookup(env(&[
            ("TURN_URI", "turn:a.example"),
            ("TURN_SCHEME", "turns"),
            ("TURN_TRANSPORT", "TCP"),
            ("TURN_PORT", "443"),
        ]))
        .unwrap();
        assert_eq!(o.uri.as_deref(), Some("turn:a.example"));
        assert_eq!((o.scheme, o.transport, o.port), (Some(TurnScheme::Turns), Some(TurnTransport::Tcp), Some(443)));
        let servers = vec![IceServer {
            urls: vec!["turn:a.example:3478?transport=udp".into(), "turn:b.example:3478".into()],
            ..Default::default()
        }];
        assert_eq!(o.apply(servers)[0].urls, ["turns:a.example:443?transport=tcp"]);
        assert!(TurnOptions::from_lookup(env(&[])).unwrap().is_noop());
        assert!(TurnOptions::from_lookup(env(&[("TURN_PORT", "  ")])).unwrap().is_noop());
        for (k, v) in [("TURN_PORT", "0"), ("TURN_PORT", "x"), ("TURN_SCHEME", "stun"), ("TURN_TRANSPORT", "sctp")] {
            let e = TurnOptions::from_lookup(env(&[(k, v)])).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
        assert!(TurnOptions::from_lookup(env(&[("TURN_URI", "stun:x:3478")])).unwrap_err().contains("TURN_URI"));
    }

    #[test]
    fn turn_uri_matches_with_defaults_and_drops_the_rest() {
        let servers = || {
            vec![
                IceServer::url("stun:s.example:3478"),
                IceServer {
                    urls: vec![
                        "turn:t.example?transport=udp".into(),
                        "turn:t.example:3478?transport=tcp".into(),
                        "turns:t.example".into(),
                    ],
                    username: "u".into(),
                    credential: "p".into(),
                },
            ]
        };
        let only = |uri: &str| {
            let o = TurnOptions { uri: Some(uri.into()), ..Default::default() };
            o.apply(servers()).into_iter().flat_map(|s| s.urls).collect::<Vec<_>>()
        };
        assert_eq!(only("turn:T.example:3478"), ["stun:s.example:3478", "turn:t.example?transport=udp"]);
        assert_eq!(only("turn:t.example?transport=tcp"), ["stun:s.example:3478", "turn:t.example:3478?transport=tcp"]);
        assert_eq!(only("turns:t.example:5349?transport=tcp"), ["stun:s.example:3478", "turns:t.example"]);
        assert_eq!(only("turn:other.example"), ["stun:s.example:3478"]);
        // Credentials stay with the servers that keep a URL.
        let o = TurnOptions { uri: Some("turn:t.example".into()), ..Default::default() };
        assert_eq!(o.apply(servers())[1].username, "u");
        // Rewrites collapse duplicates.
        let o =
            TurnOptions { transport: Some(TurnTransport::Tcp), scheme: Some(TurnScheme::Turn), ..Default::default() };
        let urls: Vec<String> = o.apply(servers()).into_iter().flat_map(|s| s.urls).collect();
        assert_eq!(
            urls,
            ["stun:s.example:3478", "turn:t.example:3478?transport=tcp", "turn:t.example:5349?transport=tcp"]
        );
    }
}
