//! ICE candidates from the wire, the way both our answerer and our dialer
//! take them: `IceCandidate` (protobuf, or just its candidate line) →
//! `candidate_init` → the `rtc` core's candidate parser (what
//! `RtcPeer::add_remote_candidate` hands it, including the priority
//! computation). Errors, never panics; the wire conversion round-trips;
//! candidates ICE cannot take (component id outside 1..=256) are dropped on
//! our side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rtc::ice::candidate::unmarshal_candidate;
use rtc::peer_connection::transport::RTCIceCandidate;
use tether_proto::proto::rpc::webrtc::v1::IceCandidate;
use tether_transport::webrtc::sdp::{candidate_init, candidate_to_pb};

fuzz_target!(|data: &[u8]| {
    let wire = match data.split_first() {
        // A NUL byte, then an encoded IceCandidate.
        Some((0, rest)) => match IceCandidate::decode(rest) {
            Ok(c) => c,
            Err(_) => return,
        },
        // Just the candidate line, as browsers send it.
        _ => IceCandidate {
            candidate: String::from_utf8_lossy(data).into_owned(),
            sdp_mid: Some("0".to_owned()),
            sdpm_line_index: Some(0),
            username_fragment: None,
        },
    };
    let Some(init) = candidate_init(&wire) else { return };
    let back = candidate_to_pb(&init);
    assert_eq!(back.candidate, wire.candidate);
    assert_eq!(back.sdp_mid, wire.sdp_mid);
    assert_eq!(back.username_fragment, wire.username_fragment);
    assert_eq!(back.sdpm_line_index, wire.sdpm_line_index.filter(|i| *i <= u32::from(u16::MAX)));

    // What the core does with the line.
    let value = init.candidate.strip_prefix("candidate:").unwrap_or(&init.candidate);
    if value.is_empty() {
        return;
    }
    if let Ok(parsed) = unmarshal_candidate(value) {
        // What got through must be a component ICE handles (1..=256), as
        // the core itself read it.
        assert!((1..=256).contains(&parsed.component()), "component {} got through", parsed.component());
        let _ = parsed.marshal();
        let _ = RTCIceCandidate::from(&parsed).to_json();
    }
});
