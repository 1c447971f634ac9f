//! gRPC over WebRTC data channels: the peer and pipe plumbing and the
//! server and client drivers over the sans-IO framing. The signaling roles
//! that set a connection up (the machine's answerer, the client's caller)
//! live in `tether-signaling`.

pub mod client;
pub mod peer;
pub mod pipe;
pub mod sdp;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::peer_connection::RTCPeerConnection;

/// The selected ICE candidate pair of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedPair {
    /// Our address.
    pub local: Option<SocketAddr>,
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Our candidate type: `host`, `srflx`, `prflx` or `relay`.
    pub local_type: String,
    /// The peer's candidate type.
    pub remote_type: String,
}

fn kind(t: RTCIceCandidateType) -> String {
    match t {
        RTCIceCandidateType::Host => "host",
        RTCIceCandidateType::Srflx => "srflx",
        RTCIceCandidateType::Prflx => "prflx",
        RTCIceCandidateType::Relay => "relay",
        RTCIceCandidateType::Unspecified => "unspecified",
    }
    .to_owned()
}

/// The connection's selected candidate pair, once ICE has chosen one.
pub async fn selected_pair(pc: &Arc<RTCPeerConnection>) -> Option<SelectedPair> {
    let pair = pc.sctp().transport().ice_transport().get_selected_candidate_pair().await?;
    let addr = |a: &str, p: u16| format!("{a}:{p}").parse().ok();
    Some(SelectedPair {
        local: addr(&pair.local.address, pair.local.port),
        remote: addr(&pair.remote.address, pair.remote.port),
        local_type: kind(pair.local.typ),
        remote_type: kind(pair.remote.typ),
    })
}
