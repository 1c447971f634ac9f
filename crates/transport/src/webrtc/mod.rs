//! gRPC over WebRTC data channels on the sans-IO `rtc` core (webrtc-rs
//! 0.21), driven by tether's own event loop.
//!
//! One task per peer connection ([`driver`]) owns the `rtc` state, the UDP
//! sockets and the data-channel framing state of the role it plays: the
//! machine's side serves an [`HttpService`](crate::server::HttpService) over
//! the `data` channel ([`serve`]), the client's side is a `tower::Service`
//! that tonic-generated clients run over unchanged ([`channel`]). Calls reach
//! the loop through the shared state and wakers, not through a task and a
//! channel per call.
//!
//! Each turn of the loop feeds what arrived (datagrams, timer expiries, work
//! queued by calls) into the state, moves data-channel packets between the
//! framing and the `rtc` core, and sends every datagram the turn produced
//! before it sleeps.

//!
//! The signaling roles that set a connection up (the machine's answerer,
//! the client's caller) live in `tether-signaling`; [`peer`] has the options
//! they share, [`sdp`] the wire form of descriptions and candidates.

pub mod channel;
pub mod driver;
pub mod media;
pub mod peer;
pub mod raw;
pub mod sdp;
pub mod serve;
mod turn_tcp;

pub use channel::RtcChannel;
pub use driver::{PeerError, PeerEvent, RtcOptions, RtcPeer, host_addresses};
pub use media::{CallPeer, RtpPacket, VideoFeedback, VideoReceiver, VideoSender, Vp8Assembler, Vp8Frame};
pub use raw::RawChannel;

use std::net::SocketAddr;

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
