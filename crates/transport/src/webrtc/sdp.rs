//! ICE candidates between their wire form and webrtc-rs's (the SDP encoding
//! itself is in [`tether_wire::sdp`]).

use tether_proto::proto::rpc::webrtc::v1 as pb;
pub use tether_wire::sdp::{MAX_ENCODED_SDP, SdpError, SdpKind, decode, encode, fingerprints};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;

/// Converts a wire candidate into webrtc-rs form; `None` for empty
/// (end-of-candidates) entries and for candidates with a component id
/// outside 1..=256 (which webrtc-rs mishandles).
pub fn candidate_from_pb(c: &pb::IceCandidate) -> Option<RTCIceCandidateInit> {
    if c.candidate.trim().is_empty() {
        return None;
    }
    if let Some(component) = tether_wire::sdp::bad_component(&c.candidate) {
        tracing::debug!(component, "ignoring an ICE candidate with a component id outside 1..=256");
        return None;
    }
    Some(RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdpm_line_index.and_then(|i| u16::try_from(i).ok()),
        username_fragment: c.username_fragment.clone(),
    })
}

/// Converts a webrtc-rs candidate into wire form.
pub fn candidate_to_pb(c: &RTCIceCandidateInit) -> pb::IceCandidate {
    pb::IceCandidate {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdpm_line_index: c.sdp_mline_index.map(u32::from),
        username_fragment: c.username_fragment.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_round_trip_and_empty_is_end_of_candidates() {
        let pb = pb::IceCandidate {
            candidate: "candidate:1 1 UDP 2122252543 10.0.0.2 51000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdpm_line_index: Some(0),
            username_fragment: None,
        };
        let init = candidate_from_pb(&pb).unwrap();
        assert_eq!(candidate_to_pb(&init), pb);
        assert!(candidate_from_pb(&pb::IceCandidate { candidate: " ".into(), ..pb.clone() }).is_none());
        let huge = pb::IceCandidate { sdpm_line_index: Some(70_000), ..pb };
        assert_eq!(candidate_from_pb(&huge).unwrap().sdp_mline_index, None);
    }

    #[test]
    fn candidates_with_impossible_components_are_refused() {
        let pb = |line: &str| pb::IceCandidate { candidate: line.into(), ..Default::default() };
        assert!(candidate_from_pb(&pb("candidate:1 511 udp 0 2001:db8::1 51001 typ host")).is_none());
        assert!(candidate_from_pb(&pb("candidate:1 256 udp 0 10.0.0.2 51001 typ host")).is_some());
    }
}
