//! gRPC over WebRTC data channels.

pub mod client;
pub mod framing;
pub mod peer;
pub mod pipe;
pub mod sdp;
pub mod server;
