//! Authentication as the wire contract describes it: a client
//! exchanges credentials for a JWT with `proto.rpc.v1.AuthService/Authenticate`
//! and then sends `authorization: Bearer <token>` on every other call.
//!
//! ```
//! use tether_transport::auth::{ApiKey, Authority};
//! let authority = Authority::new("my-machine", vec![ApiKey { id: "key-id".into(), key: "s3cret".into() }]);
//! let token = authority.authenticate("key-id", "api-key", "s3cret").unwrap();
//! assert_eq!(authority.verify(&token).unwrap().sub, "key-id");
//! assert_eq!(authority.authenticate("key-id", "api-key", "wrong").unwrap_err().code(), tonic::Code::Unauthenticated);
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tether_proto::proto::rpc::v1 as pb;
use tokio::time::Instant;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Credential type of API keys; the entity is the key id.
pub const API_KEY: &str = "api-key";
/// gRPC path of the one method that needs no token.
pub const AUTHENTICATE_PATH: &str = "/proto.rpc.v1.AuthService/Authenticate";
/// How long an access token is valid when nothing else is configured: a
/// day (see docs/SECURITY.md, "Tokens").
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest token lifetime (tokens carry whole seconds).
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// Longest token lifetime.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// One API key: its id (the entity clients authenticate as) and secret.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ApiKey {
    /// The key id (entity).
    pub id: String,
    /// The secret.
    pub key: String,
}

/// Claims of the access tokens tether mints.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Claims {
    /// The authenticated entity (API key id).
    pub sub: String,
    /// Audiences: the names of the machine (or service) that minted it; it
    /// accepts only tokens for exactly its own names.
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expiry (seconds since the epoch); the token is refused once the clock
    /// is past this second.
    pub exp: u64,
    /// Token id.
    pub jti: String,
    /// Credential type the token was minted for.
    pub rpc_creds_type: String,
}

impl Claims {
    /// The claims of `token` *without checking its signature*: for a client
    /// that wants to know when its own token expires (never for a decision
    /// of trust).
    pub fn peek(token: &str) -> Option<Claims> {
        jsonwebtoken::dangerous::insecure_decode::<Claims>(token).ok().map(|d| d.claims)
    }

    /// `exp - iat`: how long the token was minted to live.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(self.iat))
    }
}

/// The authenticated identity of a call, inserted into request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthEntity(pub String);

/// Throttling of failed `Authenticate` calls per remote address (IPv4
/// address, IPv6 /64): the first `burst` failures are checked at once; after
/// that each further attempt waits `base × 2^n` (capped at `max`) after the
/// previous one, and attempts in between are refused with
/// RESOURCE_EXHAUSTED without being checked against the keys. A success
/// forgets the address; so does `forget_after` without a failure. At most
/// `max_addresses` are tracked (the least recently active are dropped
/// first).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ThrottleOptions {
    /// Failures allowed before backing off.
    pub burst: u32,
    /// First backoff after the burst.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
    /// An address with no failure for this long starts afresh.
    pub forget_after: Duration,
    /// Most addresses tracked at once.
    pub max_addresses: usize,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        Self {
            burst: 10,
            base: Duration::from_millis(250),
            max: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            max_addresses: 10_000,
        }
    }
}

/// Settings of an [`Authority`] besides its names and keys.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthOptions {
    /// Lifetime of the tokens it mints (whole seconds, within
    /// [[`MIN_TOKEN_LIFETIME`], [`MAX_TOKEN_LIFETIME`]]).
    pub token_lifetime: Duration,
    /// HS256 signing secret; `None` (the default) draws a random one, so
    /// tokens die with the process. Set it only to share tokens between
    /// processes that serve the *same* names (replicas); the audience still
    /// keeps other names' tokens out.
    pub signing_secret: Option<[u8; 32]>,
    /// Throttling of failed `Authenticate` calls.
    pub throttle: ThrottleOptions,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self { token_lifetime: DEFAULT_TOKEN_LIFETIME, signing_secret: None, throttle: ThrottleOptions::default() }
    }
}

impl AuthOptions {
    /// Sets [`Self::token_lifetime`].
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sets [`Self::signing_secret`].
    pub fn with_signing_secret(mut self, secret: [u8; 32]) -> Self {
        self.signing_secret = Some(secret);
        self
    }

    /// Sets [`Self::throttle`].
    pub fn with_throttle(mut self, throttle: ThrottleOptions) -> Self {
        self.throttle = throttle;
        self
    }
}

/// Counters of an [`Authority`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// `Authenticate` attempts whose credentials were compared with the keys.
    pub key_checks: u64,
    /// Attempts refused by the throttle without a check.
    pub throttled: u64,
    /// Tokens minted.
    pub minted: u64,
    /// Addresses the throttle tracks now.
    pub tracked_addresses: usize,
}

/// Mints and verifies access tokens for a set of API keys.
pub struct Authority {
    /// Sorted, deduplicated.
    audience: Vec<String>,
    keys: HashMap<String, String>,
    kid: String,
    lifetime: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    throttle: Throttle,
    key_checks: AtomicU64,
    minted: AtomicU64,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `text` cut to `max` bytes on a character boundary, for status messages.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Authority {
    /// An authority for one name with the default [`AuthOptions`] (random
    /// signing secret, tokens valid for [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn new(audience: impl Into<String>, keys: Vec<ApiKey>) -> Self {
        Self::with_options(vec![audience.into()], keys, AuthOptions::default())
    }

    /// An authority for the names `audience` (a machine's host names: its
    /// tokens carry them, and it accepts no token minted for other names).
    pub fn with_options(audience: Vec<String>, keys: Vec<ApiKey>, options: AuthOptions) -> Self {
        let secret: [u8; 32] = options.signing_secret.unwrap_or_else(rand::random);
        let mut audience = audience;
        audience.sort();
        audience.dedup();
        let lifetime = options.token_lifetime.clamp(MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
        Self {
            audience,
            keys: keys.into_iter().map(|k| (k.id, k.key)).collect(),
            kid: uuid::Uuid::new_v4().to_string(),
            lifetime: Duration::from_secs(lifetime.as_secs_f64().ceil() as u64),
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            throttle: Throttle::new(options.throttle),
            key_checks: AtomicU64::new(0),
            minted: AtomicU64::new(0),
        }
    }

    /// The lifetime of the tokens it mints.
    pub fn token_lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The names its tokens are for.
    pub fn audience(&self) -> &[String] {
        &self.audience
    }

    /// Counters (key checks, throttled attempts, tokens minted).
    pub fn stats(&self) -> AuthStats {
        AuthStats {
            key_checks: self.key_checks.load(Ordering::Relaxed),
            throttled: self.throttle.refused.load(Ordering::Relaxed),
            minted: self.minted.load(Ordering::Relaxed),
            tracked_addresses: self.throttle.len(),
        }
    }

    /// Checks credentials and returns an access token (no throttling: see
    /// [`Self::authenticate_from`]).
    pub fn authenticate(&self, entity: &str, creds_type: &str, payload: &str) -> Result<String, Status> {
        if creds_type != API_KEY {
            return Err(Status::invalid_argument(format!(
                "do not know how to handle credential type {:?}",
                bounded(creds_type, 64)
            )));
        }
        self.key_checks.fetch_add(1, Ordering::Relaxed);
        let known = self.keys.get(entity);
        // Compare against a dummy when the entity is unknown so timing does
        // not reveal which key ids exist.
        let expected = known.map(String::as_bytes).unwrap_or(b"\0unknown-entity\0");
        let matches: bool = expected.ct_eq(payload.as_bytes()).into();
        if known.is_none() || !matches {
            return Err(Status::unauthenticated("invalid credentials"));
        }
        self.mint(entity, creds_type)
    }

    /// [`Self::authenticate`] for a caller at `remote`, throttled per address
    /// ([`ThrottleOptions`]): while the address backs off, RESOURCE_EXHAUSTED
    /// and no check against the keys.
    pub fn authenticate_from(
        &self,
        remote: Option<IpAddr>,
        entity: &str,
        creds_type: &str,
        payload: &str,
    ) -> Result<String, Status> {
        if creds_type != API_KEY {
            return self.authenticate(entity, creds_type, payload);
        }
        let key = remote.map(address_key).unwrap_or_else(|| "unknown".to_owned());
        self.throttle.admit(&key)?;
        let result = self.authenticate(entity, creds_type, payload);
        self.throttle.finish(&key, result.is_ok());
        result
    }

    /// Mints a token for `entity` without checking credentials: for the
    /// machine's own components (its answerer talking to its embedded
    /// signaler).
    pub fn mint(&self, entity: &str, creds_type: &str) -> Result<String, Status> {
        let iat = now_secs();
        let claims = Claims {
            sub: entity.to_owned(),
            aud: self.audience.clone(),
            iss: self.audience.first().cloned().unwrap_or_default(),
            iat,
            exp: iat + self.lifetime.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            rpc_creds_type: creds_type.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Status::internal(format!("minting token: {e}")))?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(token)
    }

    /// Verifies a token minted by this authority (or one sharing its signing
    /// secret) for exactly its names, and not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, Status> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        validation.validate_exp = true;
        // The same clock mints and checks: no skew to allow for.
        validation.leeway = 0;
        let data = match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => data,
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                // The signature is good (it is checked first): say when.
                validation.validate_exp = false;
                let exp = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
                    .map(|d| d.claims.exp)
                    .unwrap_or(0);
                let ago = now_secs().saturating_sub(exp);
                return Err(Status::unauthenticated(format!(
                    "access token expired {ago} s ago (tokens here live {} s); authenticate again",
                    self.lifetime.as_secs()
                )));
            }
            Err(e) => return Err(Status::unauthenticated(format!("invalid access token: {e}"))),
        };
        let mut aud = data.claims.aud.clone();
        aud.sort();
        aud.dedup();
        if aud != self.audience {
            return Err(Status::unauthenticated(bounded(
                &format!(
                    "access token is for another machine ({:?}, this one is {:?}); authenticate with this machine",
                    aud, self.audience
                ),
                400,
            )));
        }
        if data.claims.sub.is_empty() {
            return Err(Status::unauthenticated("invalid access token: empty subject"));
        }
        Ok(data.claims)
    }

    /// The key to vouch for callers with, towards an answerer that
    /// authenticated as `entity` (see [`crate::identity`]); `None` for an
    /// unknown entity (e.g. a machine's internal answerer).
    pub fn vouch_key(&self, entity: &str) -> Option<crate::identity::VouchKey> {
        self.keys.get(entity).map(|secret| crate::identity::VouchKey::from_secret(secret))
    }

    /// Checks an `authorization` header value and returns the entity.
    pub fn check_header(&self, value: Option<&str>) -> Result<AuthEntity, Status> {
        let value = value.ok_or_else(|| Status::unauthenticated("authentication required"))?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("expected authorization header with prefix: Bearer "))?;
        Ok(AuthEntity(self.verify(token.trim())?.sub))
    }
}

/// The address a caller is counted as (throttled `Authenticate`s, the
/// signaler's per-address caps, an open machine's session owners): an IPv4
/// address as is (also when mapped into IPv6), an IPv6 address by its /64
/// prefix (one subscriber's network; anyone holding one has all of it).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{}/64", std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct Attempts {
    /// Failed checks, plus checks in flight (counted as failures until they
    /// end, so a burst of concurrent attempts cannot slip past).
    failures: u32,
    in_flight: u32,
    /// No check before this.
    next: Instant,
    last_failure: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
struct Throttle {
    options: ThrottleOptions,
    table: Mutex<HashMap<String, Attempts>>,
    refused: AtomicU64,
}

impl Throttle {
    fn new(options: ThrottleOptions) -> Self {
        Self { options, table: Mutex::new(HashMap::new()), refused: AtomicU64::new(0) }
    }

    fn len(&self) -> usize {
        self.table.lock().len()
    }

    fn backoff(&self, over: u32) -> Duration {
        let factor = 2u32.saturating_pow(over.min(30));
        self.options.base.saturating_mul(factor).min(self.options.max)
    }

    /// Admits one check for `key`, or refuses while it backs off.
    fn admit(&self, key: &str) -> Result<(), Status> {
        let now = Instant::now();
        let mut table = self.table.lock();
        if !table.contains_key(key) && table.len() >= self.options.max_addresses {
            self.make_room(&mut table, now);
        }
        let o = &self.options;
        let entry = table.entry(key.to_owned()).or_insert(Attempts {
            failures: 0,
            in_flight: 0,
            next: now,
            last_failure: now,
            last_seen: now,
        });
        if entry.in_flight == 0 && now.saturating_duration_since(entry.last_failure) >= o.forget_after {
            entry.failures = 0;
        }
        entry.last_seen = now;
        if now < entry.next {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let wait = entry.next - now;
            return Err(Status::resource_exhausted(format!(
                "too many failed authentications from {}; retry in {} ms",
                bounded(key, 64),
                wait.as_millis().max(1)
            )));
        }
        entry.in_flight += 1;
        let counted = entry.failures + entry.in_flight;
        if counted > o.burst {
            entry.next = now + self.backoff(counted - o.burst - 1);
        }
        Ok(())
    }

    fn finish(&self, key: &str, ok: bool) {
        let now = Instant::now();
        let mut table = self.table.lock();
        let Some(entry) = table.get_mut(key) else { return };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if ok {
            if entry.in_flight == 0 {
                table.remove(key);
            } else {
                entry.failures = 0;
            }
        } else {
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
        }
    }

    /// Drops forgotten addresses; if that is not enough, the least recently
    /// active tenth of the table (addresses with checks in flight stay).
    fn make_room(&self, table: &mut HashMap<String, Attempts>, now: Instant) {
        let o = &self.options;
        table.retain(|_, a| {
            a.in_flight > 0 || now < a.next || now.saturating_duration_since(a.last_failure) < o.forget_after
        });
        if table.len() < o.max_addresses {
            return;
        }
        let mut seen: Vec<Instant> = table.values().filter(|a| a.in_flight == 0).map(|a| a.last_seen).collect();
        seen.sort_unstable();
        let drop = (o.max_addresses / 10).max(1).min(seen.len());
        if drop == 0 {
            return;
        }
        let cutoff = seen[drop - 1];
        table.retain(|_, a| a.in_flight > 0 || a.last_seen > cutoff);
    }
}

/// `proto.rpc.v1.AuthService` backed by an [`Authority`].
#[derive(Clone, Debug)]
pub struct AuthServer {
    authority: Arc<Authority>,
}

impl AuthServer {
    /// Wraps an authority.
    pub fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }

    /// The tonic service.
    pub fn into_service(self) -> pb::auth_service_server::AuthServiceServer<Self> {
        pb::auth_service_server::AuthServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthServer {
    async fn authenticate(
        &self,
        request: tonic::Request<pb::AuthenticateRequest>,
    ) -> Result<tonic::Response<pb::AuthenticateResponse>, Status> {
        let already = request
            .metadata()
            .get(tether_wire::metadata::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer "));
        if already {
            return Err(Status::invalid_argument("already authenticated; cannot re-authenticate"));
        }
        let remote = request.extensions().get::<crate::server::ConnectionInfo>().and_then(|c| c.remote).map(|a| a.ip());
        let req = request.into_inner();
        let creds = req.credentials.ok_or_else(|| Status::invalid_argument("credentials required"))?;
        let access_token = self.authority.authenticate_from(remote, &req.entity, &creds.r#type, &creds.payload)?;
        Ok(tonic::Response::new(pb::AuthenticateResponse { access_token }))
    }
}

/// Requires a valid bearer token on every call except `Authenticate`, and
/// records the caller's [`AuthEntity`] in the request extensions. Without an
/// authority (no auth configured) every call passes unauthenticated.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    authority: Option<Arc<Authority>>,
}

impl AuthLayer {
    /// A layer enforcing `authority`, or open when `None`.
    pub fn new(authority: Option<Arc<Authority>>) -> Self {
        Self { authority }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthMiddleware<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthMiddleware { inner, authority: self.authority.clone() }
    }
}

/// Service produced by [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthMiddleware<S> {
    inner: S,
    authority: Option<Arc<Authority>>,
}

impl<S, B> Service<Request<B>> for AuthMiddleware<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some(authority) = &self.authority
            && req.uri().path() != AUTHENTICATE_PATH
            && req.extensions().get::<AuthEntity>().is_none()
        {
            let header = req.headers().get(tether_wire::metadata::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match authority.check_header(header) {
                Ok(entity) => {
                    req.extensions_mut().insert(entity);
                }
                Err(status) => {
                    debug_assert_eq!(status.code(), Code::Unauthenticated);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        // The connection limits shed unauthenticated connections first
        // (crate::server); an open server authenticates everyone.
        if (self.authority.is_none() || req.uri().path() != AUTHENTICATE_PATH)
            && let Some(connection) = req.extensions().get::<crate::server::ConnectionHandle>()
        {
            connection.mark_authenticated();
        }
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ApiKey> {
        vec![ApiKey { id: "k".into(), key: "s3cret".into() }]
    }

    #[test]
    fn tokens_carry_iat_exp_and_the_names() {
        let a = Authority::with_options(
            vec!["bot-b".into(), "bot-a".into()],
            keys(),
            AuthOptions::default().with_token_lifetime(Duration::from_secs(90)),
        );
        let token = a.authenticate("k", API_KEY, "s3cret").unwrap();
        let claims = a.verify(&token).unwrap();
        assert_eq!(claims.aud, vec!["bot-a".to_string(), "bot-b".to_string()]);
        assert_eq!(claims.exp - claims.iat, 90);
        assert!(claims.iat.abs_diff(now_secs()) <= 1);
        assert_eq!(Claims::peek(&token).unwrap().lifetime(), Duration::from_secs(90));
        assert_eq!(a.stats().minted, 1);
    }

    #[test]
    fn a_token_for_other_names_is_refused_even_with_the_same_secret() {
        let options = AuthOptions::default().with_signing_secret([7; 32]);
        let a = Authority::with_options(vec!["bot-a".into()], keys(), options.clone());
        let b = Authority::with_options(vec!["bot-b".into()], keys(), options.clone());
        let token = a.authenticate("k", API_KEY, "s3cret").unwrap();
        let err = b.verify(&token).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("for another machine"), "{}", err.message());
        // A superset of the names is another machine too.
        let ab = Authority::with_options(vec!["bot-a".into(), "bot-b".into()], keys(), options);
        assert!(ab.verify(&token).is_err());
        // Another secret: refused by its signature.
        let c = Authority::new("bot-a", keys());
        assert!(c.verify(&token).unwrap_err().message().contains("InvalidSignature"));
    }

    #[test]
    fn an_expired_token_is_refused_and_says_so() {
        let a = Authority::new("bot", keys());
        let past = now_secs() - 100;
        let claims = Claims {
            sub: "k".into(),
            aud: vec!["bot".into()],
            iss: "bot".into(),
            iat: past - 60,
            exp: past,
            jti: "j".into(),
            rpc_creds_type: API_KEY.into(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(a.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &a.encoding).unwrap();
        let err = a.verify(&token).unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().starts_with("access token expired 10"), "{}", err.message());
        // A token without exp is refused.
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
            aud: Vec<&'a str>,
        }
        let token = jsonwebtoken::encode(&header, &NoExp { sub: "k", aud: vec!["bot"] }, &a.encoding).unwrap();
        assert_eq!(a.verify(&token).unwrap_err().code(), Code::Unauthenticated);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_per_address_and_a_success_resets() {
        let a = Authority::new("bot", keys());
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let mut refused = 0;
        // 2,000 wrong keys in 10 s from one address.
        for _ in 0..2000 {
            match a.authenticate_from(Some(one), "k", API_KEY, "wrong") {
                Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
                Err(s) => assert_eq!(s.code(), Code::Unauthenticated),
                Ok(_) => panic!("a wrong key was accepted"),
            }
            tokio::time::advance(Duration::from_millis(5)).await;
        }
        let checks = a.stats().key_checks;
        assert!(checks <= 20, "{checks} checks");
        assert_eq!(refused as u64 + checks, 2000);
        // Another address is not affected.
        assert!(a.authenticate_from(Some(two), "k", API_KEY, "s3cret").is_ok());
        // After the backoff the right key works, and resets the address.
        let err = a.authenticate_from(Some(one), "k", API_KEY, "s3cret").unwrap_err();
        assert!(err.message().contains("retry in"), "{}", err.message());
        tokio::time::advance(ThrottleOptions::default().max).await;
        assert!(a.authenticate_from(Some(one), "k", API_KEY, "s3cret").is_ok());
        assert_eq!(a.stats().tracked_addresses, 0);
        for _ in 0..10 {
            assert_eq!(a.authenticate_from(Some(one), "k", API_KEY, "x").unwrap_err().code(), Code::Unauthenticated);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_of_addresses_is_bounded() {
        let throttle = ThrottleOptions { max_addresses: 100, ..Default::default() };
        let a = Authority::with_options(vec!["bot".into()], keys(), AuthOptions::default().with_throttle(throttle));
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = a.authenticate_from(Some(ip), "k", API_KEY, "wrong");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(a.stats().tracked_addresses <= 100, "{:?}", a.stats());
        assert_eq!(a.stats().key_checks, 1000);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_eq!(address_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
