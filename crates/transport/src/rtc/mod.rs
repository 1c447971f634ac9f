//! gRPC over WebRTC data channels on the sans-IO `rtc` core, driven by
//! tether's own event loop.
//!
//! One task per peer connection ([`peer`]) owns the `rtc` state, the UDP
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

pub mod channel;
pub mod peer;
pub mod serve;

pub use channel::RtcChannel;
pub use peer::{PeerEvent, RtcPeer};
