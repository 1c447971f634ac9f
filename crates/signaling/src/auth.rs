//! The authorization hook: who may call or answer for which host.

use async_trait::async_trait;
use tether_transport::auth::AuthEntity;
use tonic::Status;

/// What a request wants to do with a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `Call` / `CallUpdate`: connect to the machine named by the host.
    Caller,
    /// `Answer`: accept calls for the host (the machine itself).
    Answerer,
    /// `OptionalWebRTCConfig`: fetch ICE servers (callers and answerers).
    Config,
}

/// Decides whether an authenticated entity may act on a host.
///
/// The signaling server consults it once per host of every request, after
/// `rpc-host` validation and the allow-list, with the [`AuthEntity`] that the
/// auth layer put into the request extensions (`None` when the server runs
/// without auth). Return `Err` with the status to send (usually
/// `PERMISSION_DENIED` or `UNAUTHENTICATED`).
///
/// ```
/// use async_trait::async_trait;
/// use tether_transport::auth::AuthEntity;
/// use tether_signaling::{Authorizer, Role};
///
/// struct OnlyAuthenticated;
///
/// #[async_trait]
/// impl Authorizer for OnlyAuthenticated {
///     async fn authorize(&self, entity: Option<&AuthEntity>, _host: &str, _role: Role) -> Result<(), tonic::Status> {
///         entity.map(|_| ()).ok_or_else(|| tonic::Status::unauthenticated("authentication required"))
///     }
/// }
/// ```
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` if `entity` may act as `role` for `host`.
    async fn authorize(&self, entity: Option<&AuthEntity>, host: &str, role: Role) -> Result<(), Status>;
}
