//! Prometheus metrics of a [`Machine`](crate::Machine): sessions, safety
//! stops with their deadline-to-stopped latency, WebRTC peers by selected ICE
//! candidate pair, plus (registered by [`Machine::register_metrics`](crate::Machine::register_metrics))
//! its listener's connections and its embedded signaler.

use std::collections::HashMap;

use parking_lot::Mutex;
use tether_transport::metrics::prometheus_client::metrics::counter::Counter;
use tether_transport::metrics::prometheus_client::metrics::family::Family;
use tether_transport::metrics::prometheus_client::metrics::histogram::Histogram;
use tether_transport::metrics::prometheus_client::registry::Registry;
use tether_transport::metrics::{Label, OpenConnection, ServerMetrics};
use tether_transport::webrtc::SelectedPair;

/// Upper bounds (seconds) of the safety-stop latency histogram: a stop is
/// normally done within a couple of milliseconds of the deadline.
const STOP_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

fn stop_histogram() -> Histogram {
    Histogram::new(STOP_BUCKETS)
}

/// The `cause` label of a safety stop.
pub mod cause {
    /// The controlling session's heartbeat deadline passed.
    pub const SESSION_EXPIRED: &str = "session_expired";
    /// The peer connection of a sessionless WebRTC caller died.
    pub const CONNECTION_LOST: &str = "connection_lost";
}

/// The metrics of one machine; counting whether or not they are registered.
#[derive(Debug)]
pub struct MachineMetrics {
    /// The TCP listener's connections (given to `serve` by [`crate::Machine::serve`]); WebRTC peers count here too.
    pub server: ServerMetrics,
    /// Sessions started (new ids).
    pub sessions_started: Counter,
    /// `StartSession` calls that resumed a live session.
    pub sessions_resumed: Counter,
    /// Sessions that ended because their deadline passed (the only way a
    /// session ends).
    pub sessions_expired: Counter,
    /// Resources stopped by the machine, by `cause`.
    pub safety_stops: Family<Label, Counter>,
    /// Seconds from the deadline (or the connection's death being noticed)
    /// to the resource stopped, by `cause`.
    pub stop_latency: Family<Label, Histogram, fn() -> Histogram>,
    /// WebRTC peers connected, by the selected pair's `local` and `remote`
    /// candidate types (`host`, `srflx`, `prflx`, `relay`).
    pub webrtc_pairs: Family<[(&'static str, &'static str); 2], Counter>,
    /// The open WebRTC peers (counted in `server` as `webrtc` until closed).
    peers: Mutex<HashMap<u64, OpenConnection>>,
}

impl Default for MachineMetrics {
    fn default() -> Self {
        Self {
            server: ServerMetrics::default(),
            sessions_started: Counter::default(),
            sessions_resumed: Counter::default(),
            sessions_expired: Counter::default(),
            safety_stops: Family::default(),
            stop_latency: Family::new_with_constructor(stop_histogram),
            webrtc_pairs: Family::default(),
            peers: Mutex::default(),
        }
    }
}

/// A candidate type as a label value (`other` for anything unexpected).
fn candidate_type(t: &str) -> &'static str {
    match t {
        "host" => "host",
        "srflx" => "srflx",
        "prflx" => "prflx",
        "relay" => "relay",
        _ => "other",
    }
}

impl MachineMetrics {
    /// Registers the machine's own families (`tether_sessions_*`,
    /// `tether_safety_stop*`, `tether_webrtc_peers_by_pair`, which appears with
    /// the first peer) and the
    /// listener's (`tether_connections*`, `tether_incomplete_messages_dropped`).
    pub fn register(&self, registry: &mut Registry) {
        self.server.register(registry);
        for c in [cause::SESSION_EXPIRED, cause::CONNECTION_LOST] {
            let _ = self.safety_stops.get_or_create(&[("cause", c)]);
            let _ = self.stop_latency.get_or_create(&[("cause", c)]);
        }
        registry.register(
            "tether_sessions_started",
            "Sessions started (new session ids)",
            self.sessions_started.clone(),
        );
        registry.register(
            "tether_sessions_resumed",
            "StartSession calls that resumed a live session (a client back within its window)",
            self.sessions_resumed.clone(),
        );
        registry.register(
            "tether_sessions_expired",
            "Sessions ended because no heartbeat came within their window (the only way a session ends)",
            self.sessions_expired.clone(),
        );
        registry.register(
            "tether_safety_stops",
            "Resources stopped by the machine, by cause (session_expired, connection_lost)",
            self.safety_stops.clone(),
        );
        registry.register(
            "tether_safety_stop_latency_seconds",
            "Seconds from a session's deadline (or a peer connection's death being noticed) to the resource stopped",
            self.stop_latency.clone(),
        );
        registry.register(
            "tether_webrtc_peers_by_pair",
            "WebRTC peers connected, by the selected ICE candidate pair's local and remote candidate types",
            self.webrtc_pairs.clone(),
        );
    }

    /// A resource was stopped for `cause`, `delay` after its deadline.
    pub(crate) fn safety_stop(&self, cause: &'static str, delay: std::time::Duration) {
        let label = [("cause", cause)];
        self.safety_stops.get_or_create(&label).inc();
        self.stop_latency.get_or_create(&label).observe(delay.as_secs_f64());
    }

    /// A WebRTC peer `id` opened its data channel on `pair`.
    pub(crate) fn peer_opened(&self, id: u64, pair: Option<&SelectedPair>) {
        let (local, remote) = match pair {
            Some(p) => (candidate_type(&p.local_type), candidate_type(&p.remote_type)),
            None => ("other", "other"),
        };
        self.webrtc_pairs.get_or_create(&[("local", local), ("remote", remote)]).inc();
        let open = self.server.connection(tether_transport::metrics::transport::WEBRTC);
        self.peers.lock().insert(id, open);
    }

    /// The WebRTC peer `id` is gone.
    pub(crate) fn peer_closed(&self, id: u64) {
        self.peers.lock().remove(&id);
    }
}
