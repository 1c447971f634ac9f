//! End-to-end tests of tether live in `tests/`: each starts a real machine (and, where needed, a
//! signaling service) on loopback and drives it with the client SDK or with raw protocol peers.
//! This library is empty on purpose; the crate exists so that the tests depend on every layer
//! without any product crate depending on the others for its tests.
