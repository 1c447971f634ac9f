//! The wire form of session descriptions and candidates (the SDP encoding
//! itself is in [`tether_wire::sdp`]).

pub use tether_wire::sdp::{
    MAX_ENCODED_SDP, SdpError, SdpKind, bad_component, decode, encode, fingerprints, ice_ufrag, session_id,
};

use rtc::peer_connection::transport::RTCIceCandidateInit;
use tether_proto::proto::rpc::webrtc::v1 as pb;

/// A candidate from the wire in the `rtc` core's form; `None` for empty
/// (end-of-candidates) entries and for candidates with a component id
/// outside 1..=256 (the wire allows them, ICE does not).
pub fn candidate_init(c: &pb::IceCandidate) -> Option<RTCIceCandidateInit> {
    if c.candidate.trim().is_empty() {
        return None;
    }
    if let Some(component) = bad_component(&c.candidate) {
        tracing::debug!(component, "ignoring an ICE candidate with a component id outside 1..=256");
        return None;
    }
    Some(RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdpm_line_index.and_then(|i| u16::try_from(i).ok()),
        username_fragment: c.username_fragment.clone(),
        ..Default::default()
    })
}

/// A candidate of the `rtc` core in wire form.
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
        let init = candidate_init(&pb).unwrap();
        assert_eq!(candidate_to_pb(&init), pb);
        assert!(candidate_init(&pb::IceCandidate { candidate: " ".into(), ..pb.clone() }).is_none());
        let huge = pb::IceCandidate { sdpm_line_index: Some(70_000), ..pb };
        assert_eq!(candidate_init(&huge).unwrap().sdp_mline_index, None);
    }

    #[test]
    fn candidates_with_impossible_components_are_refused() {
        let pb = |line: &str| pb::IceCandidate { candidate: line.into(), ..Default::default() };
        assert!(candidate_init(&pb("candidate:1 511 udp 0 2001:db8::1 51001 typ host")).is_none());
        assert!(candidate_init(&pb("candidate:1 256 udp 0 10.0.0.2 51001 typ host")).is_some());
    }
}
