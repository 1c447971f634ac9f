//! gRPC over WebRTC data channels.

pub mod framing;
