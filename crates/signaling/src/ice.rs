//! ICE servers handed out by `OptionalWebRTCConfig`, including TURN servers
//! with short-lived credentials derived from a shared secret (the "TURN REST
//! API" scheme that coturn implements as `use-auth-secret`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use tether_proto::proto::rpc::webrtc::v1::IceServer;

/// Default lifetime of TURN credentials (one day).
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longer credential lifetimes are clamped to this (a century), so that the
/// expiry stays a representable time whatever TTL a config asks for.
const MAX_TURN_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Short-lived TURN credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<unix expiry timestamp>:<user>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub credential: String,
    /// When the credentials stop working.
    pub expires: SystemTime,
}

/// Derives TURN REST credentials as coturn's `use-auth-secret` expects:
/// username = `<unix expiry>:<user>`, credential =
/// standard-base64(HMAC-SHA1(`secret`, username)). A `ttl` beyond a century
/// is clamped to one.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tether_signaling::turn_rest_credentials;
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_000);
/// let creds = turn_rest_credentials(b"secret", "robot", Duration::from_secs(60), now);
/// assert_eq!(creds.username, "1060:robot");
/// assert_eq!(creds.credential.len(), 28); // 20 bytes of SHA-1, base64
/// ```
pub fn turn_rest_credentials(secret: &[u8], user: &str, ttl: Duration, now: SystemTime) -> TurnCredentials {
    let expires = now.checked_add(ttl.min(MAX_TURN_TTL)).unwrap_or(now);
    let unix = expires.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let username = format!("{unix}:{user}");
    // HMAC accepts keys of any length, so this cannot fail; stay panic-free anyway.
    let credential = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    TurnCredentials { username, credential, expires }
}

/// A TURN server (one or more URLs) using credentials derived from a shared
/// secret.
///
/// ```
/// use std::time::Duration;
/// use tether_signaling::TurnRestConfig;
///
/// let turn = TurnRestConfig::new(["turn:turn.example.com:3478?transport=udp"], "s3cret")
///     .ttl(Duration::from_secs(3600))
///     .user("tether");
/// let server = turn.ice_server("robot.local", std::time::SystemTime::now());
/// assert!(server.username.ends_with(":tether"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TurnRestConfig {
    /// TURN URLs, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (`static-auth-secret`).
    pub secret: String,
    /// Lifetime of generated credentials ([`DEFAULT_TURN_TTL`] by default).
    pub ttl: Duration,
    /// The user part of the username; the request's first host if `None`.
    pub user: Option<String>,
}

impl std::fmt::Debug for TurnRestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRestConfig")
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("user", &self.user)
            .finish()
    }
}

impl TurnRestConfig {
    /// TURN `urls` sharing `secret`, default TTL, user = the requested host.
    pub fn new<I, S>(urls: I, secret: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TurnRestConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            secret: secret.into(),
            ttl: DEFAULT_TURN_TTL,
            user: None,
        }
    }

    /// Sets the credential lifetime.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets a fixed user part of the username.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The ICE server entry with fresh credentials; `host` is the user part
    /// unless a fixed user is configured.
    pub fn ice_server(&self, host: &str, now: SystemTime) -> IceServer {
        let user = self.user.as_deref().unwrap_or(host);
        let creds = turn_rest_credentials(self.secret.as_bytes(), user, self.ttl, now);
        IceServer { urls: self.urls.clone(), username: creds.username, credential: creds.credential }
    }
}

/// `urls` with a `?transport=tcp` copy after every TURN-over-UDP URL
/// (`turn:host:port` or `turn:host:port?transport=udp`) that has none yet,
/// as the Viam TypeScript SDK adds them: a client on a network that lets
/// only TCP out then still reaches the TURN server. `turns:` URLs (TLS) are
/// handed out only where configured.
///
/// ```
/// let urls = tether_signaling::with_tcp_copies(&["turn:t.example:3478?transport=udp".into(), "stun:s.example".into()]);
/// assert_eq!(urls, ["turn:t.example:3478?transport=udp", "turn:t.example:3478?transport=tcp", "stun:s.example"]);
/// ```
pub fn with_tcp_copies(urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(urls.len() * 2);
    for url in urls {
        out.push(url.clone());
        let Some(rest) = url.strip_prefix("turn:") else { continue };
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        let transport = params.iter().find_map(|p| p.strip_prefix("transport="));
        if transport.is_some_and(|t| !t.eq_ignore_ascii_case("udp")) {
            continue;
        }
        let mut tcp_params: Vec<&str> = params.into_iter().filter(|p| !p.starts_with("transport=")).collect();
        tcp_params.push("transport=tcp");
        let tcp = format!("turn:{address}?{}", tcp_params.join("&"));
        if !urls.iter().any(|u| u.eq_ignore_ascii_case(&tcp)) {
            out.push(tcp);
        }
    }
    out
}

/// A static ICE server entry (STUN, or TURN with fixed credentials).
///
/// ```
/// let stun = tether_signaling::ice_server(["stun:global.stun.twilio.com:3478"], "", "");
/// assert_eq!(stun.urls.len(), 1);
/// ```
pub fn ice_server<I, S>(urls: I, username: impl Into<String>, credential: impl Into<String>) -> IceServer
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    IceServer {
        urls: urls.into_iter().map(Into::into).collect(),
        username: username.into(),
        credential: credential.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_copies_of_udp_turn_urls_only() {
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(with_tcp_copies(&urls(&["turn:a:3478"])), urls(&["turn:a:3478", "turn:a:3478?transport=tcp"]));
        // Already there, TCP or TLS already, and STUN: nothing added.
        let given = urls(&[
            "turn:a:3478?transport=udp",
            "turn:a:3478?transport=tcp",
            "turns:a:5349",
            "turn:b:3478?transport=tcp",
            "stun:a:3478",
        ]);
        assert_eq!(with_tcp_copies(&given), given);
        assert_eq!(with_tcp_copies(&[]), Vec::<String>::new());
    }

    #[test]
    fn huge_ttls_are_clamped_not_a_panic() {
        // Found by fuzzing the config: `"turn": {"ttl": "3000000000000000h"}`.
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        for ttl in [Duration::from_secs(3_000_000_000_000_000 * 3600), Duration::MAX] {
            let creds = turn_rest_credentials(b"secret", "robot", ttl, now);
            assert_eq!(creds.expires, now + MAX_TURN_TTL);
            assert_eq!(creds.username, format!("{}:robot", 1_000 + MAX_TURN_TTL.as_secs()));
        }
    }
}
