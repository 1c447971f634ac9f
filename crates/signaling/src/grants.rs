//! [`KeyGrants`]: per-API-key host grants for an authenticated signaler.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use tether_transport::auth::AuthEntity;
use tonic::Status;

use crate::auth::{Authorizer, Role};

/// What one key (entity) may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Hosts the key may call (`Call`, `CallUpdate`, `OptionalWebRTCConfig`).
    pub call: HashSet<String>,
    /// Hosts the key may answer for (a machine's own names).
    pub answer: HashSet<String>,
}

/// An [`Authorizer`] granting each API key id a set of hosts to call and a
/// set of hosts to answer for.
///
/// * no entity (unauthenticated request) → UNAUTHENTICATED;
/// * `Call`/`CallUpdate` to a host not in the key's `call` set, or `Answer`
///   for a host not in its `answer` set → PERMISSION_DENIED;
/// * `OptionalWebRTCConfig` is allowed for hosts in either set.
///
/// ```
/// use tether_signaling::KeyGrants;
///
/// let grants = KeyGrants::new()
///     .grant_call("user-key", ["robot-main.abc.viam.cloud"])
///     .grant_answer("machine-key", ["robot-main.abc.viam.cloud"]);
/// assert!(grants.may_call("user-key", "robot-main.abc.viam.cloud"));
/// assert!(!grants.may_answer("user-key", "robot-main.abc.viam.cloud"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeyGrants {
    keys: HashMap<String, Grant>,
}

impl KeyGrants {
    /// No grants (everything denied).
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `key` call `hosts` (added to what it already has).
    pub fn grant_call<I: IntoIterator<Item = S>, S: Into<String>>(mut self, key: impl Into<String>, hosts: I) -> Self {
        self.keys.entry(key.into()).or_default().call.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Lets `key` answer for `hosts` (added to what it already has).
    pub fn grant_answer<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        key: impl Into<String>,
        hosts: I,
    ) -> Self {
        self.keys.entry(key.into()).or_default().answer.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Whether `key` may call `host`.
    pub fn may_call(&self, key: &str, host: &str) -> bool {
        self.keys.get(key).is_some_and(|g| g.call.contains(host))
    }

    /// Whether `key` may answer for `host`.
    pub fn may_answer(&self, key: &str, host: &str) -> bool {
        self.keys.get(key).is_some_and(|g| g.answer.contains(host))
    }
}

#[async_trait]
impl Authorizer for KeyGrants {
    async fn authorize(&self, entity: Option<&AuthEntity>, host: &str, role: Role) -> Result<(), Status> {
        let Some(AuthEntity(key)) = entity else {
            return Err(Status::unauthenticated("authentication required"));
        };
        let ok = match role {
            Role::Caller => self.may_call(key, host),
            Role::Answerer => self.may_answer(key, host),
            Role::Config => self.may_call(key, host) || self.may_answer(key, host),
        };
        if ok {
            return Ok(());
        }
        let what = match role {
            Role::Caller | Role::Config => "call",
            Role::Answerer => "answer for",
        };
        Err(Status::permission_denied(format!("{key:?} may not {what} host {host:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[tokio::test]
    async fn grants() {
        let g = KeyGrants::new().grant_call("u", ["a"]).grant_answer("m", ["a"]);
        let u = AuthEntity("u".into());
        let m = AuthEntity("m".into());
        assert_eq!(g.authorize(None, "a", Role::Caller).await.unwrap_err().code(), Code::Unauthenticated);
        assert!(g.authorize(Some(&u), "a", Role::Caller).await.is_ok());
        assert!(g.authorize(Some(&u), "a", Role::Config).await.is_ok());
        assert!(g.authorize(Some(&m), "a", Role::Config).await.is_ok());
        assert_eq!(g.authorize(Some(&u), "b", Role::Caller).await.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(g.authorize(Some(&u), "a", Role::Answerer).await.unwrap_err().code(), Code::PermissionDenied);
        assert!(g.authorize(Some(&m), "a", Role::Answerer).await.is_ok());
        assert_eq!(g.authorize(Some(&m), "a", Role::Caller).await.unwrap_err().code(), Code::PermissionDenied);
    }
}
