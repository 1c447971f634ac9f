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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tether_proto::proto::rpc::v1 as pb;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Credential type of API keys; the entity is the key id.
pub const API_KEY: &str = "api-key";
/// gRPC path of the one method that needs no token.
pub const AUTHENTICATE_PATH: &str = "/proto.rpc.v1.AuthService/Authenticate";

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
    /// Audiences (the machine's names).
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Token id.
    pub jti: String,
    /// Credential type the token was minted for.
    pub rpc_creds_type: String,
}

/// The authenticated identity of a call, inserted into request extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthEntity(pub String);

/// Mints and verifies access tokens for a set of API keys.
pub struct Authority {
    audience: String,
    keys: HashMap<String, String>,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("audience", &self.audience)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new authority with a fresh random signing secret (HS256). Tokens do
    /// not survive a restart; clients authenticate again when they reconnect.
    pub fn new(audience: impl Into<String>, keys: Vec<ApiKey>) -> Self {
        let secret: [u8; 32] = rand::random();
        let kid = uuid::Uuid::new_v4().to_string();
        Self {
            audience: audience.into(),
            keys: keys.into_iter().map(|k| (k.id, k.key)).collect(),
            kid,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
        }
    }

    /// Checks credentials and returns an access token.
    pub fn authenticate(&self, entity: &str, creds_type: &str, payload: &str) -> Result<String, Status> {
        if creds_type != API_KEY {
            return Err(Status::invalid_argument(format!("do not know how to handle credential type {creds_type:?}")));
        }
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

    /// Mints a token for `entity` without checking credentials: for the
    /// machine's own components (its answerer talking to its embedded
    /// signaler).
    pub fn mint(&self, entity: &str, creds_type: &str) -> Result<String, Status> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = Claims {
            sub: entity.to_owned(),
            aud: vec![self.audience.clone()],
            iss: self.audience.clone(),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            rpc_creds_type: creds_type.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Status::internal(format!("minting token: {e}")))
    }

    /// Verifies a token minted by this authority.
    pub fn verify(&self, token: &str) -> Result<Claims, Status> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&self.audience]);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| Status::unauthenticated(format!("invalid access token: {e}")))?;
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
        let req = request.into_inner();
        let creds = req.credentials.ok_or_else(|| Status::invalid_argument("credentials required"))?;
        let access_token = self.authority.authenticate(&req.entity, &creds.r#type, &creds.payload)?;
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
