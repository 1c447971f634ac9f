//! Caller identity over WebRTC: how a machine learns, verifiably, who placed
//! a call that reached it through a signaling service.
//!
//! The wire contract carries no credentials on the data channel :
//! upstream machines give every WebRTC peer one shared identity. tether's
//! signaling service, which has authenticated the caller, *vouches* for it:
//! with the offer it hands the answerer a caller assertion, a compact JWT
//!
//! * whose subject is the caller's authenticated entity (API key id),
//! * bound to the host called, the call uuid and the DTLS fingerprints of
//!   the offer (the DTLS handshake later proves the peer holds that
//!   certificate, so the assertion names exactly this peer connection),
//! * valid until the exchange's deadline,
//! * signed (HS256) with a [`VouchKey`] derived from the *answerer's* own API
//!   key secret, which only the answerer and the signaler that checks its
//!   credentials know.
//!
//! The assertion travels in the extension field `tether_caller_assertion`
//! of `AnswerRequestInitStage`; answerers that do not know it skip it, and
//! callers never see it, so real Viam SDKs are unaffected.
//!
//! ```
//! use tether_transport::identity::{CallerClaims, VouchKey};
//!
//! let key = VouchKey::from_secret("the machine's api key secret");
//! let fp = vec!["sha-256 ab:cd".to_string()];
//! let claims = CallerClaims::new("user-key", "my-bot", "call-uuid", fp.clone(), 60);
//! let token = key.sign(&claims).unwrap();
//!
//! let hosts = ["my-bot".to_string()];
//! assert_eq!(key.verify(&token, &hosts, "call-uuid", &fp).unwrap().sub, "user-key");
//! // Another call, another peer or another key: refused.
//! assert!(key.verify(&token, &hosts, "other-call", &fp).is_err());
//! assert!(key.verify(&token, &hosts, "call-uuid", &["sha-256 ff".to_string()]).is_err());
//! assert!(VouchKey::from_secret("guess").verify(&token, &hosts, "call-uuid", &fp).is_err());
//! ```

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::Sha256;
pub use tether_wire::identity::{ASSERTION_TYPE, CallerClaims};
use tether_wire::identity::{ISSUER, LEEWAY_SECS};
use tonic::Status;

/// Domain separation: the key that signs assertions is not the API key
/// secret itself.
const KDF_LABEL: &[u8] = b"tether caller assertion v1";

/// The key a signaler signs caller assertions with for one answerer, and the
/// answerer verifies them with: HMAC-SHA256 of a fixed label keyed by the
/// answerer's secret.
#[derive(Clone)]
pub struct VouchKey([u8; 32]);

impl std::fmt::Debug for VouchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VouchKey(..)")
    }
}

impl VouchKey {
    /// The key for an answerer that authenticates with `secret`.
    pub fn from_secret(secret: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(KDF_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    /// Signs an assertion.
    pub fn sign(&self, claims: &CallerClaims) -> Result<String, Status> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(ASSERTION_TYPE.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&self.0))
            .map_err(|e| Status::internal(format!("signing caller assertion: {e}")))
    }

    /// Verifies an assertion for a call to one of `hosts` with uuid `call`
    /// whose offer announced `fingerprints`. Every failure is
    /// PERMISSION_DENIED: the exchange is not the one the signaler vouched for.
    pub fn verify(
        &self,
        token: &str,
        hosts: &[String],
        call: &str,
        fingerprints: &[String],
    ) -> Result<CallerClaims, Status> {
        let deny = |why: &str| Status::permission_denied(format!("caller assertion rejected: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| deny("malformed"))?;
        if header.alg != Algorithm::HS256 || header.typ.as_deref() != Some(ASSERTION_TYPE) {
            return Err(deny("not a caller assertion"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<CallerClaims>(token, &DecodingKey::from_secret(&self.0), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => deny("expired"),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => deny("bad signature"),
                _ => deny("invalid"),
            })?
            .claims;
        claims.check(hosts, call, fingerprints).map_err(deny)?;
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Vec<String> {
        vec!["sha-256 01:02:03".to_owned()]
    }

    fn hosts() -> Vec<String> {
        vec!["bot-a".to_owned(), "bot-b".to_owned()]
    }

    #[test]
    fn roundtrip_names_the_caller() {
        let key = VouchKey::from_secret("s3cret");
        let token = key.sign(&CallerClaims::new("alice", "bot-b", "u1", fp(), 30)).unwrap();
        let claims = key.verify(&token, &hosts(), "u1", &fp()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.host.as_str()), ("alice", "bot-b"));
    }

    #[test]
    fn every_mismatch_is_permission_denied() {
        let key = VouchKey::from_secret("s3cret");
        let token = key.sign(&CallerClaims::new("alice", "bot-a", "u1", fp(), 30)).unwrap();
        let cases: Vec<(&str, Result<CallerClaims, Status>)> = vec![
            ("other key", VouchKey::from_secret("s3cret2").verify(&token, &hosts(), "u1", &fp())),
            ("other host", key.verify(&token, &["bot-c".to_owned()], "u1", &fp())),
            ("other call", key.verify(&token, &hosts(), "u2", &fp())),
            ("other peer", key.verify(&token, &hosts(), "u1", &["sha-256 ff".to_owned()])),
            ("no fingerprint", key.verify(&token, &hosts(), "u1", &[])),
            ("garbage", key.verify("not.a.jwt", &hosts(), "u1", &fp())),
            ("empty", key.verify("", &hosts(), "u1", &fp())),
        ];
        for (what, result) in cases {
            let err = result.expect_err(what);
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        }
    }

    #[test]
    fn expired_and_tampered_assertions_are_refused() {
        let key = VouchKey::from_secret("s3cret");
        let mut old = CallerClaims::new("alice", "bot-a", "u1", fp(), 30);
        old.iat -= 1000;
        old.exp = old.iat + 10;
        let token = key.sign(&old).unwrap();
        assert!(key.verify(&token, &hosts(), "u1", &fp()).unwrap_err().message().contains("expired"));

        // Swap the payload for one naming someone else, keep the signature.
        let good = key.sign(&CallerClaims::new("alice", "bot-a", "u1", fp(), 30)).unwrap();
        let forged = key.sign(&CallerClaims::new("mallory", "bot-a", "u1", fp(), 30)).unwrap();
        let g: Vec<&str> = good.split('.').collect();
        let f: Vec<&str> = forged.split('.').collect();
        let spliced = format!("{}.{}.{}", g[0], f[1], g[2]);
        assert!(key.verify(&spliced, &hosts(), "u1", &fp()).unwrap_err().message().contains("signature"));
    }

    #[test]
    fn an_access_token_is_not_an_assertion() {
        let authority = crate::auth::Authority::new(
            "bot-a",
            vec![crate::auth::ApiKey { id: "alice".into(), key: "s3cret".into() }],
        );
        let access = authority.authenticate("alice", crate::auth::API_KEY, "s3cret").unwrap();
        let key = VouchKey::from_secret("s3cret");
        assert_eq!(key.verify(&access, &hosts(), "u1", &fp()).unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn keys_differ_per_secret_and_are_stable() {
        assert_eq!(VouchKey::from_secret("a").0, VouchKey::from_secret("a").0);
        assert_ne!(VouchKey::from_secret("a").0, VouchKey::from_secret("b").0);
    }
}
