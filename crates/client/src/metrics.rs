//! Counters of a [`RobotClient`](crate::RobotClient)'s connection for an
//! embedder that exports Prometheus metrics: drops, dial attempts,
//! reconnections, and whether the session survived them. They count the
//! [`ConnectionEvent`]s the client emits, whether or not anyone registers
//! them.
//!
//! ```no_run
//! # async fn run(robot: tether_client::RobotClient) {
//! use tether_transport::metrics::prometheus_client::registry::Registry;
//! let mut registry = Registry::default();
//! // One sub-registry per client when an app holds several.
//! robot.metrics().register(registry.sub_registry_with_label(("robot".into(), "arm-cell-1".into())));
//! assert_eq!(robot.metrics().reconnects.get(), 0);
//! # }
//! ```

use tether_transport::metrics::prometheus_client::metrics::counter::Counter;
use tether_transport::metrics::prometheus_client::registry::Registry;

use crate::events::ConnectionEvent;

/// The counters of one client.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    /// Dial attempts (the first dial and every reconnection attempt).
    pub dials: Counter,
    /// Connections that dropped (the client then reconnects, or ends with
    /// `no_reconnect`).
    pub drops: Counter,
    /// Reconnections that succeeded.
    pub reconnects: Counter,
    /// Outages after which the client gave up (`reconnection_failed`).
    pub reconnections_failed: Counter,
    /// Reconnections after which the machine still had the session.
    pub sessions_resumed: Counter,
    /// Reconnections after which the session had lapsed (the machine had
    /// stopped what it drove) and a new one was started.
    pub sessions_lapsed: Counter,
    /// Network changes survived by an ICE restart (no redial).
    pub ice_restarts: Counter,
    /// ICE restarts that found no path in time (a redial followed).
    pub ice_restarts_failed: Counter,
}

impl ClientMetrics {
    /// Registers the counters as `tether_client_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tether_client_dials",
            "Dial attempts, the first and every reconnection attempt",
            self.dials.clone(),
        );
        registry.register("tether_client_drops", "Connections to the machine that dropped", self.drops.clone());
        registry.register("tether_client_reconnects", "Reconnections that succeeded", self.reconnects.clone());
        registry.register(
            "tether_client_reconnections_failed",
            "Outages after which the client gave up reconnecting",
            self.reconnections_failed.clone(),
        );
        registry.register(
            "tether_client_sessions_resumed",
            "Reconnections after which the machine still had the client's session",
            self.sessions_resumed.clone(),
        );
        registry.register(
            "tether_client_sessions_lapsed",
            "Reconnections after which the session had lapsed (the machine stopped what it drove)",
            self.sessions_lapsed.clone(),
        );
        registry.register(
            "tether_client_ice_restarts",
            "Network changes the WebRTC connection survived by an ICE restart",
            self.ice_restarts.clone(),
        );
        registry.register(
            "tether_client_ice_restarts_failed",
            "ICE restarts that found no path in time (a full reconnection followed)",
            self.ice_restarts_failed.clone(),
        );
    }

    /// Counts `event`.
    pub(crate) fn count(&self, event: &ConnectionEvent) {
        let counter = match event {
            ConnectionEvent::Dialing { .. } => &self.dials,
            ConnectionEvent::Reconnecting { .. } => &self.drops,
            ConnectionEvent::Disconnected { error: Some(_) } => &self.drops,
            ConnectionEvent::Connected { reconnected: true, .. } => &self.reconnects,
            ConnectionEvent::ReconnectionFailed { .. } => &self.reconnections_failed,
            ConnectionEvent::SessionResumed { .. } => &self.sessions_resumed,
            ConnectionEvent::SessionLapsed { .. } => &self.sessions_lapsed,
            ConnectionEvent::IceRestarted { .. } => &self.ice_restarts,
            ConnectionEvent::IceRestartFailed { .. } => &self.ice_restarts_failed,
            _ => return,
        };
        counter.inc();
    }
}
