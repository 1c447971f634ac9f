//! [`KeyGrants`]: per-API-key host grants for an authenticated signaler, and
//! the call limits ([`CallLimits`]) that go with them.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;
use tether_transport::auth::AuthEntity;
use tokio::time::Instant;
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

/// Limits on `Call`, enforced by the signaling server when configured
/// ([`crate::SignalingServerBuilder::call_limits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallLimits {
    /// Calls per minute per caller (token bucket with a burst of the same
    /// size, refilled continuously); `None` = unlimited.
    pub rate_per_minute: Option<u32>,
    /// Concurrent unanswered calls per host; `None` = unlimited.
    pub max_pending_per_host: Option<usize>,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `CallLimits::default()`).
impl CallLimits {
    /// Sets [`Self::rate_per_minute`].
    pub fn with_rate_per_minute(mut self, rate_per_minute: Option<u32>) -> Self {
        self.rate_per_minute = rate_per_minute;
        self
    }

    /// Sets [`Self::max_pending_per_host`].
    pub fn with_max_pending_per_host(mut self, max_pending_per_host: Option<usize>) -> Self {
        self.max_pending_per_host = max_pending_per_host;
        self
    }
}

/// Buckets kept before idle (full) ones are pruned.
const PRUNE_AT: usize = 4096;

/// Per-caller token buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `caller`, or RESOURCE_EXHAUSTED.
    pub(crate) fn check(&self, caller: &str) -> Result<(), Status> {
        let capacity = f64::from(self.per_minute.max(1));
        let per_sec = f64::from(self.per_minute) / 60.0;
        let now = Instant::now();
        let refill = |tokens: f64, at: Instant| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * per_sec).min(capacity)
        };
        let mut buckets = self.buckets.lock();
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, (tokens, at)| refill(*tokens, *at) < capacity);
        }
        let (tokens, at) = buckets.entry(caller.to_owned()).or_insert((capacity, now));
        let available = refill(*tokens, *at);
        *at = now;
        if self.per_minute == 0 || available < 1.0 {
            *tokens = available;
            return Err(Status::resource_exhausted(format!(
                "request exceeds rate limit ({} calls per minute) for {caller:?}",
                self.per_minute
            )));
        }
        *tokens = available - 1.0;
        Ok(())
    }
}

/// Counts pending calls per host.
#[derive(Debug, Default)]
pub(crate) struct PendingCalls {
    per_host: std::sync::Arc<Mutex<HashMap<String, usize>>>,
}

/// A pending-call slot; released on drop.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    per_host: std::sync::Arc<Mutex<HashMap<String, usize>>>,
    host: String,
}

impl PendingCalls {
    /// A slot for `host`, or RESOURCE_EXHAUSTED when `max` are pending.
    pub(crate) fn acquire(&self, host: &str, max: usize) -> Result<PendingSlot, Status> {
        let mut map = self.per_host.lock();
        let n = map.entry(host.to_owned()).or_insert(0);
        if *n >= max {
            return Err(Status::resource_exhausted(format!("too many pending calls for host {host:?} (max {max})")));
        }
        *n += 1;
        Ok(PendingSlot { per_host: self.per_host.clone(), host: host.to_owned() })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut map = self.per_host.lock();
        if let Some(n) = map.get_mut(&self.host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.host);
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills() {
        let r = RateLimiter::new(60);
        for _ in 0..60 {
            r.check("a").unwrap();
        }
        assert_eq!(r.check("a").unwrap_err().code(), Code::ResourceExhausted);
        r.check("b").unwrap();
        tokio::time::advance(std::time::Duration::from_millis(1100)).await;
        r.check("a").unwrap();
        assert!(r.check("a").is_err());
        let zero = RateLimiter::new(0);
        assert!(zero.check("a").is_err());
    }

    #[test]
    fn pending_slots_release() {
        let p = PendingCalls::default();
        let a = p.acquire("h", 1).unwrap();
        assert!(p.acquire("h", 1).is_err());
        p.acquire("g", 1).unwrap();
        drop(a);
        p.acquire("h", 1).unwrap();
        assert!(p.per_host.lock().is_empty());
    }
}
