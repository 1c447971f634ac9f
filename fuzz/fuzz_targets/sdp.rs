//! Arbitrary strings into the SDP decoder: errors, never panics; decode∘encode
//! round-trips. What decodes goes on to the `rtc` core's SDP parser and
//! candidate parser (what `RtcPeer::accept_offer`/`accept_answer` run on it),
//! and to what the machine's answerer reads off every offer to tell an ICE
//! restart of a live connection from a new one (`fingerprints`, `session_id`,
//! `ice_ufrag`). An input that is not an encoded SDP is also tried as a bare
//! SDP body: encoded, it must decode to itself (or be refused with a reason).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc::ice::candidate::unmarshal_candidate;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidate;
use tether_transport::webrtc::sdp::{MAX_ENCODED_SDP, SdpKind, decode, encode, fingerprints, ice_ufrag, session_id};

/// What `set_remote_description` does first: parse the SDP, then turn every
/// `a=candidate` of every media section into a candidate (with its priority).
fn parse(kind: SdpKind, sdp: &str) {
    restart_identity(sdp);
    let desc = match kind {
        SdpKind::Offer => RTCSessionDescription::offer(sdp.to_owned()),
        SdpKind::Answer => RTCSessionDescription::answer(sdp.to_owned()),
        SdpKind::Pranswer => RTCSessionDescription::pranswer(sdp.to_owned()),
        SdpKind::Rollback => return,
    };
    let Ok(parsed) = desc.and_then(|d| d.unmarshal()) else { return };
    for m in &parsed.media_descriptions {
        for a in m.attributes.iter().filter(|a| a.is_ice_candidate()) {
            if let Some(Ok(c)) = a.value.as_deref().map(unmarshal_candidate) {
                let _ = RTCIceCandidate::from(&c).to_json();
            }
        }
    }
}

/// The connection identity of an offer: fingerprints normalized (`alg
/// value`, lower case, no other whitespace), sorted and unique; a session id
/// and a ufrag that are non-empty pieces of the SDP's own text.
fn restart_identity(sdp: &str) {
    let prints = fingerprints(sdp);
    assert!(prints.windows(2).all(|w| w[0] < w[1]), "{prints:?}");
    for p in &prints {
        assert_eq!(p.split_whitespace().count(), 2, "{p:?}");
        assert_eq!(p.matches(' ').count(), 1, "{p:?}");
        assert!(!p.chars().any(|c| c.is_ascii_uppercase()), "{p:?}");
    }
    if let Some(id) = session_id(sdp) {
        assert!(!id.is_empty() && id.len() <= 64 && !id.contains(char::is_whitespace) && sdp.contains(id), "{id:?}");
    }
    if let Some(ufrag) = ice_ufrag(sdp) {
        assert!(!ufrag.is_empty() && ufrag.trim() == ufrag && sdp.contains(ufrag), "{ufrag:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match decode(s) {
        Ok((kind, sdp)) => {
            let again = encode(kind, &sdp);
            assert_eq!(decode(&again).ok(), Some((kind, sdp.clone())));
            parse(kind, &sdp);
        }
        Err(_) => {
            let wire = encode(SdpKind::Offer, s);
            match decode(&wire) {
                Ok(got) => {
                    assert_eq!(got, (SdpKind::Offer, s.to_owned()));
                    parse(SdpKind::Offer, s);
                }
                // Refused: not an SDP, too large, or a candidate ICE cannot take.
                Err(e) => assert!(
                    !s.starts_with("v=") || wire.len() > MAX_ENCODED_SDP || e.to_string().contains("component"),
                    "{s:?} did not round-trip: {e}"
                ),
            }
        }
    }
});
