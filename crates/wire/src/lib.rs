//! tether's wire formats as plain state and functions: no sockets, no
//! runtime, no WebRTC stack. Everything here is fed bytes and values and
//! returns bytes, values and events, so that it can be tested and fuzzed on
//! its own and driven by any I/O layer.
//!
//! * [`framing`]: gRPC over a WebRTC data channel (the `Request`/`Response`
//!   envelopes, stream ids, packet splitting, per-stream budgets), a client
//!   and a server state machine;
//! * [`grpc`]: the gRPC message prefix and `grpc-message` decoding;
//! * [`sdp`]: the base64-JSON SDP encoding of the signaling protocol and the
//!   DTLS fingerprints an SDP announces;
//! * [`metadata`]: header names of the wire contract;
//! * [`identity`]: the claims of caller assertions and the checks that bind
//!   them to one call and one peer;
//! * [`Code`] and [`Status`]: gRPC status codes, without a gRPC runtime.

pub mod framing;
pub mod grpc;
pub mod identity;
pub mod metadata;
pub mod sdp;
mod status;

pub use status::{Code, Status};

/// The largest gRPC message accepted or sent by tether (32 MiB, the same on
/// every transport).
pub const MAX_MESSAGE_SIZE: usize = 32 << 20;
