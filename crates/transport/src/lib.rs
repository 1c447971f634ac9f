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
//! * [`webrtc`]: gRPC over a WebRTC data channel on webrtc-rs: peer
//!   connections, the pipe, and the server and client drivers of the sans-IO
//!   framing in `tether_wire::framing`, so that one tonic router and one set
//!   of generated clients run over every transport.
//! * [`grpc`]: the status of a gRPC response from its headers.
//! * [`limits`]: the open-files limit raised at start, and the connection cap
//!   derived from it.

pub mod auth;
pub mod dial;
pub mod grpc;
pub mod identity;
pub mod limits;
pub mod server;
pub mod webrtc;

pub use server::{ConnectionHandle, ConnectionInfo, TransportKind};

pub use tether_wire::MAX_MESSAGE_SIZE;

/// The multi-threaded tokio runtime tether's binaries run on: everything
/// enabled and, when built with `--cfg tokio_unstable` (tether's
/// `.cargo/config.toml` sets it), without tokio's LIFO slot.
///
/// Without the LIFO slot a task woken by another task's worker can be stolen
/// by an idle worker at once instead of waiting for the waker to yield. It
/// matters to webrtc-rs 0.17: its SCTP read loop wakes the task that opens
/// our negotiated data channels and then keeps reading; a caller's first
/// message processed in that gap loses the channel
/// ([`webrtc::peer::open_lost`]). Measured on a raw pair, a caller writing
/// the instant it opens: 7-12 of 400 opens lost with the slot, 0-3 of 800
/// without; unary latency unchanged within noise.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Boxed error used across tower services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
