//! Machine configuration in Viam's JSON shape.
//!
//! ```
//! let cfg = tether_machine::config::Config::from_json(r#"{
//!   "components": [{"name": "m", "api": "rdk:component:motor", "model": "rdk:builtin:fake",
//!                   "attributes": {"max_rpm": 60}}],
//!   "network": {"bind_address": "127.0.0.1:0", "sessions": {"heartbeat_window": "500ms"}}
//! }"#).unwrap();
//! assert_eq!(cfg.heartbeat_window(), std::time::Duration::from_millis(500));
//!
//! let err = tether_machine::config::Config::from_json(
//!     r#"{"network": {"sessions": {"heartbeat_window": "10ms"}}}"#).unwrap_err();
//! assert!(err.to_string().contains("network.sessions.heartbeat_window"));
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tether_transport::auth::ApiKey;
use tether_transport::webrtc::peer::{IceServer, TurnOptions};

use crate::models::{ConstructError, Models};
use crate::resource::Resources;
use crate::session::{DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW};

/// A configuration error, naming the offending field.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `components[2].api`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// The whole machine config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Config {
    /// Components to build.
    #[serde(default)]
    pub components: Vec<ComponentConfig>,
    /// Listener, TLS and session settings.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Authentication; absent means an open machine (local development).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// One component.
#[derive(Clone, Debug, Deserialize)]
pub struct ComponentConfig {
    /// Unique name.
    #[serde(default)]
    pub name: String,
    /// API triplet, e.g. `rdk:component:motor`.
    #[serde(default)]
    pub api: Option<String>,
    /// Older shape: subtype only (`motor`), namespace `rdk` implied.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Model, e.g. `rdk:builtin:fake` (or just `fake`).
    #[serde(default)]
    pub model: String,
    /// Model attributes.
    #[serde(default)]
    pub attributes: serde_json::Value,
}

impl ComponentConfig {
    /// The subtype (`motor`, `arm`, …) this entry asks for.
    pub fn subtype(&self, index: usize) -> Result<String, ConfigError> {
        if let Some(api) = &self.api {
            let parts: Vec<&str> = api.split(':').collect();
            let valid = parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-'));
            if !valid {
                return Err(ConfigError::new(
                    format!("components[{index}].api"),
                    format!("{api:?} is not a namespace:type:subtype triplet"),
                ));
            }
            if parts[1] != "component" {
                return Err(ConfigError::new(
                    format!("components[{index}].api"),
                    format!("{api:?} is not a component API"),
                ));
            }
            return Ok(parts[2].to_owned());
        }
        match &self.kind {
            Some(k) if !k.is_empty() => Ok(k.clone()),
            _ => Err(ConfigError::new(format!("components[{index}].api"), "missing (e.g. \"rdk:component:motor\")")),
        }
    }
}

/// `network` section.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NetworkConfig {
    /// Address to listen on (default `0.0.0.0:8080`).
    #[serde(default)]
    pub bind_address: Option<String>,
    /// PEM certificate chain; with `tls_key_file` turns on TLS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Session settings.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Names the machine answers WebRTC calls for (besides every `ip:port`
    /// it listens on); default: the system host name.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// External signaling services to answer through.
    #[serde(default)]
    pub signaling: Vec<String>,
    /// The machine's API key (`{"id": …, "key": …}`) at the external
    /// signaling services; they vouch for callers with it.
    #[serde(default)]
    pub signaling_api_key: Option<ApiKey>,
    /// STUN/TURN servers the machine gathers candidates with (default: a
    /// public STUN server; `[]` for none).
    #[serde(default)]
    pub ice_servers: Option<Vec<IceServer>>,
    /// STUN/TURN servers the embedded signaler gives callers.
    #[serde(default)]
    pub caller_ice_servers: Vec<IceServer>,
    /// TURN servers with credentials derived from a shared secret (coturn's
    /// `use-auth-secret`), given to callers.
    #[serde(default)]
    pub turn: Option<TurnConfig>,
    /// Turn WebRTC (and the embedded signaler's answerers) off.
    #[serde(default)]
    pub disable_webrtc: bool,
    /// Most TCP connections open at once (default: three quarters of the
    /// open-files limit; see `tether_transport::server::ServeOptions`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most WebRTC connections at once (default: no limit). A caller beyond
    /// it is refused with RESOURCE_EXHAUSTED, unless its priority
    /// (`a=x-priority` in its offer) is higher than that of a connected peer
    /// which holds no session and drives no actuator: that one is closed.
    #[serde(default)]
    pub max_webrtc_connections: Option<usize>,
    /// Serve Prometheus metrics at `GET /metrics` on this `ip:port` (a
    /// separate plaintext listener; `tether machine --metrics-listen`).
    #[serde(default)]
    pub metrics_listen: Option<String>,
}

/// `network.turn`.
#[derive(Clone, Debug, Deserialize)]
pub struct TurnConfig {
    /// TURN URLs.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server.
    pub secret: String,
    /// Lifetime of generated credentials (Go duration; default 24h).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// `network.sessions`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionsConfig {
    /// Go-style duration, e.g. `"2s"`; unset or zero means 2 s.
    #[serde(default)]
    pub heartbeat_window: Option<String>,
}

/// `auth` section.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthConfig {
    /// Credential handlers; only `api-key` is supported.
    #[serde(default)]
    pub handlers: Vec<AuthHandler>,
    /// Lifetime of the access tokens the machine mints (Go duration, within
    /// [1s, 720h]; default 24h).
    #[serde(default)]
    pub token_lifetime: Option<String>,
}

/// One auth handler.
#[derive(Clone, Debug, Deserialize)]
pub struct AuthHandler {
    /// Credential type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Handler settings.
    #[serde(default)]
    pub config: AuthHandlerConfig,
}

/// Settings of an `api-key` handler.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthHandlerConfig {
    /// The accepted keys.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// The default listen address.
pub const DEFAULT_BIND: &str = "0.0.0.0:8080";

impl Config {
    /// Parses and validates JSON.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = serde_json::from_str(text)
            .map_err(|e| ConfigError::new(format!("line {} column {}", e.line(), e.column()), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), format!("cannot read: {e}")))?;
        Self::from_json(&text)
    }

    /// The built-in fake machine: one fake of every component kind.
    pub fn fake() -> Self {
        let kinds = ["motor", "arm", "base", "gripper", "servo", "gantry", "button", "switch", "sensor", "camera"];
        Config {
            components: kinds
                .iter()
                .map(|k| ComponentConfig {
                    name: format!("{k}1"),
                    api: Some(format!("rdk:component:{k}")),
                    kind: None,
                    model: "rdk:builtin:fake".into(),
                    attributes: serde_json::Value::Null,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Builds every component the config lists with `models`; errors name
    /// the entry's field (`components[i].model`, `.attributes`, `.name`).
    pub fn build(&self, models: &Models) -> Result<Resources, ConfigError> {
        let mut resources = Resources::new();
        for (i, c) in self.components.iter().enumerate() {
            let subtype = c.subtype(i)?;
            let component = models.construct(&subtype, &c.model, &c.attributes).map_err(|e| match e {
                ConstructError::Attributes(message) => ConfigError::new(format!("components[{i}].attributes"), message),
                e => ConfigError::new(format!("components[{i}].model"), e.to_string()),
            })?;
            resources
                .insert(c.name.clone(), component)
                .map_err(|e| ConfigError::new(format!("components[{i}].name"), e))?;
        }
        Ok(resources)
    }

    /// Checks every field that can be checked without building components.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.window()?;
        if let Some(addr) = &self.network.bind_address
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new("network.bind_address", format!("{addr:?} is not an ip:port address")));
        }
        match (&self.network.tls_cert_file, &self.network.tls_key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new("network.tls_key_file", "required with tls_cert_file"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("network.tls_cert_file", "required with tls_key_file"));
            }
            _ => {}
        }
        if let Some(turn) = &self.network.turn {
            if turn.urls.is_empty() || turn.secret.is_empty() {
                return Err(ConfigError::new("network.turn", "urls and secret are required"));
            }
            if let Some(ttl) = &turn.ttl {
                parse_go_duration(ttl).map_err(|e| ConfigError::new("network.turn.ttl", e))?;
            }
        }
        if let Some(addr) = &self.network.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new("network.metrics_listen", format!("{addr:?} is not an ip:port address")));
        }
        if self.network.max_connections == Some(0) {
            return Err(ConfigError::new("network.max_connections", "must be at least 1"));
        }
        if self.network.max_webrtc_connections == Some(0) {
            return Err(ConfigError::new("network.max_webrtc_connections", "must be at least 1"));
        }
        // The machine's TURN overrides from its environment.
        TurnOptions::from_env().map_err(|e| ConfigError::new("environment", e))?;
        if self.network.hosts.len() > 5 * 8 || self.network.hosts.iter().any(|h| h.is_empty()) {
            return Err(ConfigError::new("network.hosts", "host names must be non-empty (at most 40)"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.components.iter().enumerate() {
            if c.name.is_empty() {
                return Err(ConfigError::new(format!("components[{i}].name"), "missing"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(ConfigError::new(format!("components[{i}].name"), format!("duplicate name {:?}", c.name)));
            }
            c.subtype(i)?;
            if c.model.is_empty() {
                return Err(ConfigError::new(format!("components[{i}].model"), "missing"));
            }
        }
        self.token_lifetime()?;
        if let Some(auth) = &self.auth {
            for (i, h) in auth.handlers.iter().enumerate() {
                if h.kind != tether_transport::auth::API_KEY {
                    return Err(ConfigError::new(
                        format!("auth.handlers[{i}].type"),
                        format!("unsupported credential type {:?} (supported: \"api-key\")", h.kind),
                    ));
                }
                if h.config.keys.is_empty() {
                    return Err(ConfigError::new(format!("auth.handlers[{i}].config.keys"), "no keys"));
                }
                for (j, k) in h.config.keys.iter().enumerate() {
                    if k.id.is_empty() || k.key.is_empty() {
                        return Err(ConfigError::new(
                            format!("auth.handlers[{i}].config.keys[{j}]"),
                            "id and key must be non-empty",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn window(&self) -> Result<Duration, ConfigError> {
        const FIELD: &str = "network.sessions.heartbeat_window";
        let Some(text) = &self.network.sessions.heartbeat_window else {
            return Ok(DEFAULT_WINDOW);
        };
        let d = parse_go_duration(text).map_err(|e| ConfigError::new(FIELD, e))?;
        if d.is_zero() {
            return Ok(DEFAULT_WINDOW);
        }
        if d < MIN_WINDOW || d > MAX_WINDOW {
            return Err(ConfigError::new(FIELD, format!("must be within [30ms, 1m], got {text}")));
        }
        Ok(d)
    }

    fn token_lifetime(&self) -> Result<Duration, ConfigError> {
        const FIELD: &str = "auth.token_lifetime";
        let Some(text) = self.auth.as_ref().and_then(|a| a.token_lifetime.as_ref()) else {
            return Ok(tether_transport::auth::DEFAULT_TOKEN_LIFETIME);
        };
        let d = parse_go_duration(text).map_err(|e| ConfigError::new(FIELD, e))?;
        use tether_transport::auth::{MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME};
        if d < MIN_TOKEN_LIFETIME || d > MAX_TOKEN_LIFETIME {
            return Err(ConfigError::new(FIELD, format!("must be within [1s, 720h], got {text}")));
        }
        Ok(d)
    }

    /// Token lifetime and the other settings of the machine's authority.
    pub fn auth_options(&self) -> tether_transport::auth::AuthOptions {
        tether_transport::auth::AuthOptions::default()
            .with_token_lifetime(self.token_lifetime().unwrap_or(tether_transport::auth::DEFAULT_TOKEN_LIFETIME))
    }

    /// The validated heartbeat window.
    pub fn heartbeat_window(&self) -> Duration {
        self.window().unwrap_or(DEFAULT_WINDOW)
    }

    /// The WebRTC settings this config describes.
    pub fn webrtc_settings(&self) -> crate::webrtc::WebRtcSettings {
        let n = &self.network;
        let mut s = crate::webrtc::WebRtcSettings { enabled: !n.disable_webrtc, ..Default::default() };
        if !n.hosts.is_empty() {
            s.hosts = n.hosts.clone();
        }
        s.signaling = n.signaling.clone();
        s.signaling_credentials = n
            .signaling_api_key
            .as_ref()
            .map(|k| tether_transport::dial::Credentials::api_key(k.id.clone(), k.key.clone()));
        if let Some(servers) = &n.ice_servers {
            s.ice_servers = servers.clone();
        }
        s.caller_ice_servers = n.caller_ice_servers.clone();
        s.max_connections = n.max_webrtc_connections;
        s.turn_overrides = TurnOptions::from_env().unwrap_or_else(|e| {
            tracing::warn!("ignoring the TURN overrides of the environment: {e}");
            TurnOptions::default()
        });
        s.turn = n.turn.as_ref().map(|t| {
            let mut turn = tether_signaling::TurnRestConfig::new(t.urls.clone(), t.secret.clone());
            if let Some(ttl) = t.ttl.as_deref().and_then(|d| parse_go_duration(d).ok()) {
                turn = turn.ttl(ttl);
            }
            turn
        });
        s
    }

    /// API keys from every `api-key` handler (empty = auth off).
    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.auth.iter().flat_map(|a| a.handlers.iter()).flat_map(|h| h.config.keys.iter().cloned()).collect()
    }
}

/// Parses a Go duration string (`300ms`, `1.5s`, `1m30s`, `2h`).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {text:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {text:?}")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_go_duration("30ms").unwrap(), Duration::from_millis(30));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_go_duration("2").is_err());
        assert!(parse_go_duration("2 parsecs").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn window_bounds_are_inclusive_and_enforced() {
        for (w, ok) in [("30ms", true), ("1m", true), ("29ms", false), ("61s", false), ("0s", true)] {
            let json = format!(r#"{{"network":{{"sessions":{{"heartbeat_window":"{w}"}}}}}}"#);
            let r = Config::from_json(&json);
            assert_eq!(r.is_ok(), ok, "{w}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.field, "network.sessions.heartbeat_window");
            }
        }
        assert_eq!(Config::from_json("{}").unwrap().heartbeat_window(), DEFAULT_WINDOW);
    }

    #[test]
    fn token_lifetime_is_parsed_and_bounded() {
        let cfg = |l: &str| Config::from_json(&format!(r#"{{"auth":{{"handlers":[],"token_lifetime":"{l}"}}}}"#));
        assert_eq!(cfg("2s").unwrap().auth_options().token_lifetime, Duration::from_secs(2));
        assert_eq!(cfg("1h").unwrap().auth_options().token_lifetime, Duration::from_secs(3600));
        for bad in ["500ms", "721h", "soon"] {
            assert_eq!(cfg(bad).unwrap_err().field, "auth.token_lifetime", "{bad}");
        }
        assert_eq!(
            Config::from_json("{}").unwrap().auth_options().token_lifetime,
            tether_transport::auth::DEFAULT_TOKEN_LIFETIME
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"components":[{"name":"a","api":"rdk:component:motor","model":"fake"},{"name":"a","api":"rdk:component:motor","model":"fake"}]}"#,
                "components[1].name",
            ),
            (r#"{"components":[{"name":"a","api":"motor","model":"fake"}]}"#, "components[0].api"),
            (r#"{"components":[{"name":"a","api":"rdk:component:motor"}]}"#, "components[0].model"),
            (r#"{"network":{"bind_address":"nowhere"}}"#, "network.bind_address"),
            (r#"{"network":{"max_connections":0}}"#, "network.max_connections"),
            (r#"{"network":{"metrics_listen":"localhost"}}"#, "network.metrics_listen"),
            (
                r#"{"auth":{"handlers":[{"type":"robot-secret","config":{"keys":[{"id":"a","key":"b"}]}}]}}"#,
                "auth.handlers[0].type",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(Config::from_json(json).unwrap_err().field, field, "{json}");
        }
        assert!(Config::from_json("{not json").unwrap_err().field.starts_with("line 1"));
        let cfg = Config::from_json(r#"{"network":{"max_connections":64}}"#).unwrap();
        assert_eq!(cfg.network.max_connections, Some(64));
    }

    #[test]
    fn fake_machine_has_every_kind() {
        let cfg = Config::fake();
        let names: Vec<_> = cfg.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["motor1", "arm1", "base1", "gripper1", "servo1", "gantry1", "button1", "switch1", "sensor1", "camera1"]
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn random_and_mutated_configs_never_panic() {
        // Deterministic xorshift mutations of a valid config: every result is
        // a clean Ok or a field-named error.
        let base =
            r#"{"components":[{"name":"m","api":"rdk:component:motor","model":"fake","attributes":{"max_rpm":60}}],
            "network":{"bind_address":"127.0.0.1:8080","sessions":{"heartbeat_window":"2s"},"hosts":["a"],
            "turn":{"urls":["turn:x:3478"],"secret":"s","ttl":"1h"}},
            "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"a","key":"b"}]}}]}}"#
                .as_bytes()
                .to_vec();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"{}[]\":,0123456789.-smhabcz ";
        for _ in 0..20_000 {
            let mut doc = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % doc.len();
                match next() % 3 {
                    0 => doc[i] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        doc.remove(i);
                    }
                    _ => doc.insert(i, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            if let Ok(text) = std::str::from_utf8(&doc) {
                match Config::from_json(text) {
                    Ok(cfg) => {
                        let _ = cfg.heartbeat_window();
                        let _ = cfg.webrtc_settings();
                    }
                    Err(e) => assert!(!e.field.is_empty(), "{e}"),
                }
            }
        }
    }
}
