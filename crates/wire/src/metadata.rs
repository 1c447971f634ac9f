//! Header (metadata) names used on the wire.

/// Session id bound to safety-monitored calls.
pub const SESSION_ID: &str = "viam-sid";
/// Operation id, sent back in response headers (and reused when a client sends one).
pub const OPERATION_ID: &str = "opid";
/// Bearer token header.
pub const AUTHORIZATION: &str = "authorization";
/// Target machine host for signaling calls.
pub const RPC_HOST: &str = "rpc-host";
/// SDK identification (`<lang>;<sdk version>;<api version>`).
pub const CLIENT_TAG: &str = "viam_client";
/// Resources a handler monitored on behalf of the caller.
pub const SAFETY_MONITORED_RESOURCES: &str = "viam-smrn";
/// The status message of an unknown, expired or foreign session.
pub const SESSION_EXPIRED: &str = "SESSION_EXPIRED";
