//! Arbitrary strings into the SDP decoder: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok((kind, sdp)) = tether_rpc::webrtc::sdp::decode(s) {
            let again = tether_rpc::webrtc::sdp::encode(kind, &sdp);
            assert_eq!(tether_rpc::webrtc::sdp::decode(&again).unwrap(), (kind, sdp));
        }
    }
});
