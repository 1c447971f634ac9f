//! Caller assertions, the claims part: what a signaling service states
//! about the caller of one WebRTC offer, and the checks that bind the
//! statement to one call and one peer. Signing and verifying the token that
//! carries the claims is `tether_transport::identity::VouchKey`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// JWT `typ` of caller assertions (so an access token can never pass as one).
pub const ASSERTION_TYPE: &str = "tether-caller+jwt";
/// Issuer claim of caller assertions.
pub const ISSUER: &str = "tether-signaling";
/// Clock skew tolerated between signaler and machine, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// What a caller assertion states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerClaims {
    /// The caller's authenticated entity (API key id).
    pub sub: String,
    /// The host the caller asked for (`rpc-host`).
    pub host: String,
    /// Uuid of the call.
    pub call: String,
    /// DTLS fingerprints of the caller's offer (see [`crate::sdp::fingerprints`]).
    pub fp: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl CallerClaims {
    /// Claims issued now, valid for `ttl_secs`.
    pub fn new(
        caller: impl Into<String>,
        host: impl Into<String>,
        call: impl Into<String>,
        fp: Vec<String>,
        ttl_secs: u64,
    ) -> Self {
        let iat = now_secs();
        Self {
            sub: caller.into(),
            host: host.into(),
            call: call.into(),
            fp,
            iss: ISSUER.to_owned(),
            iat,
            exp: iat.saturating_add(ttl_secs.max(1)),
        }
    }
}

impl CallerClaims {
    /// Checks that these (signature-verified) claims were issued for a call
    /// to one of `hosts` with uuid `call` whose offer announced
    /// `fingerprints`; the reason when they were not.
    pub fn check(&self, hosts: &[String], call: &str, fingerprints: &[String]) -> Result<(), &'static str> {
        if self.sub.is_empty() {
            return Err("empty subject");
        }
        if !hosts.iter().any(|h| h == &self.host) {
            return Err("issued for another host");
        }
        if self.call != call {
            return Err("issued for another call");
        }
        if self.fp.is_empty() || self.fp != fingerprints {
            return Err("issued for another peer (DTLS fingerprint mismatch)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_name_one_call_to_one_host_from_one_peer() {
        let fp = vec!["sha-256 01:02".to_owned()];
        let hosts = ["bot-a".to_owned()];
        let claims = CallerClaims::new("alice", "bot-a", "u1", fp.clone(), 30);
        assert!(claims.exp > claims.iat);
        assert_eq!(claims.check(&hosts, "u1", &fp), Ok(()));
        assert!(claims.check(&["bot-b".to_owned()], "u1", &fp).is_err());
        assert!(claims.check(&hosts, "u2", &fp).is_err());
        assert!(claims.check(&hosts, "u1", &[]).is_err());
        assert!(CallerClaims::new("", "bot-a", "u1", fp.clone(), 30).check(&hosts, "u1", &fp).is_err());
    }
}
