//! The transport layer of tether.
//!
//! * [`server`]: serves one tower service (a tonic router) over HTTP/2 gRPC and
//!   gRPC-Web (HTTP/1.1, binary and text, CORS) on one port, with optional TLS.
//! * [`auth`]: API keys, JWT access tokens, the `AuthService` and the layer
//!   that requires `authorization: Bearer …` on every other call.
//! * [`dial`]: tether's one HTTP/2 client, [`dial::DirectConnection`] (to
//!   machines and signaling services, plaintext or TLS), and the credential
//!   exchange.
//! * [`identity`]: signing and verifying caller assertions, with which an
//!   external signaling service vouches to a machine for the authenticated
//!   caller of a WebRTC offer (the claims are in `tether_wire::identity`).
//! * [`webrtc`]: gRPC over a WebRTC data channel: peer connections on the
//!   sans-IO `rtc` core, each driven by one task that also owns the sans-IO
//!   framing of `tether_wire::framing` for its role, so that one tonic router
//!   and one set of generated clients run over every transport.
//! * [`grpc`]: the status of a gRPC response from its headers.
//! * [`limits`]: the open-files limit raised at start, and the connection cap
//!   derived from it.
//! * [`metrics`]: Prometheus metrics of the listener and the process, and the
//!   `GET /metrics` listener.

pub mod auth;
pub mod dial;
pub mod grpc;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod webrtc;

pub use server::{ConnectionHandle, ConnectionInfo, TransportKind};

pub use tether_wire::MAX_MESSAGE_SIZE;

/// The multi-threaded tokio runtime tether's binaries run on: everything
/// enabled, nothing unstable.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Boxed error used across tower services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
