//! The SDP encoding of the signaling protocol:
//! an SDP travels as standard base64 of `{"type": …, "sdp": …}` (keys in any
//! order, unknown keys ignored).
//!
//! ```
//! use tether_wire::sdp::{decode, encode, SdpKind};
//! let wire = encode(SdpKind::Offer, "v=0\r\n");
//! assert_eq!(decode(&wire).unwrap(), (SdpKind::Offer, "v=0\r\n".to_string()));
//! assert!(decode("not base64!").is_err());
//! ```

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The SDP types the protocol carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpKind {
    /// An offer.
    Offer,
    /// An answer.
    Answer,
    /// A provisional answer.
    Pranswer,
    /// A rollback.
    Rollback,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: SdpKind,
    sdp: String,
}

/// An SDP that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid SDP encoding: {0}")]
pub struct SdpError(String);

/// Largest encoded SDP accepted (offers are a few KiB).
pub const MAX_ENCODED_SDP: usize = 256 * 1024;

/// Encodes an SDP for the wire.
pub fn encode(kind: SdpKind, sdp: &str) -> String {
    let json = serde_json::to_vec(&Wire { kind, sdp: sdp.to_owned() }).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// Decodes an SDP from the wire.
pub fn decode(encoded: &str) -> Result<(SdpKind, String), SdpError> {
    if encoded.len() > MAX_ENCODED_SDP {
        return Err(SdpError(format!("{} bytes is too large", encoded.len())));
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| SdpError(format!("not base64: {e}")))?;
    let wire: Wire = serde_json::from_slice(&json).map_err(|e| SdpError(format!("not a JSON SDP object: {e}")))?;
    if !wire.sdp.starts_with("v=") {
        return Err(SdpError("the sdp field is not a session description".into()));
    }
    if let Some(c) = wire.sdp.lines().filter_map(|l| l.trim().strip_prefix("a=candidate:")).find_map(bad_component) {
        return Err(SdpError(format!("ICE candidate component {c} is outside 1..=256")));
    }
    Ok((wire.kind, wire.sdp))
}

/// The component id of a candidate line (`candidate:` prefix optional) if it
/// is outside 1..=256 (RFC 8445). webrtc-rs computes the priority of a
/// candidate announced with priority 0 as `… + 256 - component`, which
/// overflows (a panic with overflow checks) for larger ids; such candidates
/// are refused before they reach it. Lines it cannot parse are left to it.
pub fn bad_component(line: &str) -> Option<u16> {
    let value = line.strip_prefix("candidate:").unwrap_or(line);
    let component: u16 = value.split_whitespace().nth(1)?.parse().ok()?;
    (!(1..=256).contains(&component)).then_some(component)
}

/// The DTLS certificate fingerprints an SDP announces (`a=fingerprint:`
/// lines, session or media level), normalized (`sha-256 ab:cd:…`, lower
/// case), sorted and deduplicated. The DTLS handshake proves that the peer
/// holds a certificate with one of them, so they name the peer connection.
///
/// ```
/// use tether_wire::sdp::fingerprints;
/// let sdp = "v=0\r\na=fingerprint:SHA-256 AB:CD\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
/// assert_eq!(fingerprints(sdp), vec!["sha-256 ab:cd".to_string()]);
/// ```
pub fn fingerprints(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .filter_map(|v| {
            let mut parts = v.split_whitespace();
            let (alg, value) = (parts.next()?, parts.next()?);
            Some(format!("{} {}", alg.to_ascii_lowercase(), value.to_ascii_lowercase()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The session id of an SDP's origin line (`o=<user> <sess-id> <version> …`).
/// Every later offer of one peer connection keeps it (RFC 3264 §8, JSEP
/// §5.2.2), so together with [`fingerprints`] it names the connection an ICE
/// restart offer belongs to.
///
/// ```
/// use tether_wire::sdp::session_id;
/// assert_eq!(session_id("v=0\r\no=- 4215775240449105457 2 IN IP4 0.0.0.0\r\n"), Some("4215775240449105457"));
/// assert_eq!(session_id("v=0\r\no=-\r\n"), None);
/// ```
pub fn session_id(sdp: &str) -> Option<&str> {
    let origin = sdp.lines().find_map(|l| l.trim().strip_prefix("o="))?;
    origin.split_whitespace().nth(1).filter(|id| !id.is_empty() && id.len() <= 64)
}

/// The ICE username fragment of an SDP (`a=ice-ufrag:`, the first one,
/// session or media level): a new one in a later offer is an ICE restart.
///
/// ```
/// use tether_wire::sdp::ice_ufrag;
/// assert_eq!(ice_ufrag("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:AbCd\r\n"), Some("AbCd"));
/// assert_eq!(ice_ufrag("v=0\r\n"), None);
/// ```
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:")).map(str::trim).filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_either_key_order_and_extra_keys() {
        let b64 = base64::engine::general_purpose::STANDARD;
        for json in [r#"{"sdp":"v=0\r\n","type":"answer"}"#, r#"{"type":"answer","x":1,"sdp":"v=0\r\n"}"#] {
            assert_eq!(decode(&b64.encode(json)).unwrap(), (SdpKind::Answer, "v=0\r\n".into()));
        }
        assert!(decode(&b64.encode(r#"{"type":"nope","sdp":"v=0"}"#)).is_err());
        assert!(decode(&b64.encode(r#"{"type":"offer","sdp":"hello"}"#)).is_err());
        assert!(decode(&b64.encode("[]")).is_err());
    }

    #[test]
    fn candidates_with_impossible_components_are_refused() {
        // Found by fuzzing: webrtc-rs computes `256 - component` for a
        // candidate with priority 0, which overflowed (a panic in debug builds).
        assert_eq!(bad_component("candidate:1 511 udp 0 2001:db8::1 51001 typ host"), Some(511));
        assert_eq!(bad_component("1 0 udp 0 10.0.0.2 51001 typ host"), Some(0));
        assert_eq!(bad_component("candidate:1 256 udp 0 10.0.0.2 51001 typ host"), None);
        assert_eq!(bad_component("candidate:1 x udp 0 10.0.0.2 51001 typ host"), None); // left to the ICE stack
        let b64 = base64::engine::general_purpose::STANDARD;
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=candidate:1 300 udp 0 10.0.0.2 5 typ host\r\n";
        let err = decode(&b64.encode(format!(r#"{{"type":"offer","sdp":{sdp:?}}}"#))).unwrap_err();
        assert!(err.to_string().contains("component 300"), "{err}");
        let sdp = sdp.replace(" 300 ", " 1 ");
        assert!(decode(&b64.encode(format!(r#"{{"type":"offer","sdp":{sdp:?}}}"#))).is_ok());
    }
}
