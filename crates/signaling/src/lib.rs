//! Signaling (in progress).
