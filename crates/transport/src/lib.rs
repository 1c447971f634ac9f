//! The transport layer of tether.
//!
//! * [`server`]: serves one tower service (a tonic router) over HTTP/2 gRPC and
//!   gRPC-Web (HTTP/1.1, binary and text, CORS) on one port, with optional TLS.
//! * [`auth`]: API keys, JWT access tokens, the `AuthService` and the layer
//!   that requires `authorization: Bearer …` on every other call.
//! * [`dial`]: direct dialing of a machine (tonic channel plus credentials).
//! * [`metadata`]: the header names of the wire contract.
//! * [`identity`]: caller assertions, with which a signaler vouches to a
//!   machine for the authenticated caller of a WebRTC offer.
//!
//! The WebRTC transport and signaling client/answerer will live here too, so
//! that one tonic router and one set of generated clients run over every
//! transport.

pub mod auth;
pub mod dial;
pub mod grpc;
pub mod identity;
pub mod server;
pub mod webrtc;

pub use server::{ConnectionInfo, TransportKind};

pub use tether_wire::MAX_MESSAGE_SIZE;

/// Boxed error used across tower services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
