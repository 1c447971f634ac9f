//! Connection events and reconnection settings.

use std::time::Duration;

use serde::Serialize;

/// How the client reaches the machine; serialized as the TypeScript SDK's
/// `MachineConnectionEvent.DIALING` names it (`grpc` or `webrtc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// gRPC over HTTP/2 (a direct dial).
    Grpc,
    /// gRPC over a WebRTC data channel.
    Webrtc,
}

#[allow(non_upper_case_globals)]
impl Method {
    /// The old name of [`Method::Grpc`] (it serialized as `direct`; it is
    /// `grpc` now, as in the TypeScript SDK's events).
    #[deprecated(note = "use Method::Grpc")]
    pub const Direct: Method = Method::Grpc;
}

/// Something that happened to the connection. Subscribe with
/// [`RobotClient::events`](crate::RobotClient::events); every event is also
/// logged with `tracing`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConnectionEvent {
    /// The first dial is starting.
    Connecting,
    /// A dial attempt is starting.
    Dialing {
        /// Transport being dialed.
        method: Method,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// The connection is up (first time or again).
    Connected {
        /// Transport in use.
        method: Method,
        /// Selected ICE candidate pair types, `local/remote` (WebRTC only),
        /// e.g. `host/host`, `srflx/prflx`, `relay/host`.
        candidate_pair: Option<String>,
        /// Round trip of one small call right after connecting.
        rtt_ms: Option<f64>,
        /// True after a reconnection.
        reconnected: bool,
    },
    /// The session that existed before a reconnection is still alive on the
    /// machine: nothing was stopped.
    SessionResumed {
        /// The session id (unchanged).
        id: String,
    },
    /// The old session lapsed during the outage (the machine stopped what it
    /// controlled); a new one replaces it.
    SessionLapsed {
        /// The lapsed session.
        old: String,
        /// The new session.
        new: String,
    },
    /// A camera stream was added to the new connection after a
    /// reconnection, by the client itself (frames flow again).
    StreamRestored {
        /// The camera.
        camera: String,
    },
    /// This host's addresses changed (a new network, a new lease) and ICE
    /// restarted on the same peer connection: the data channel, calls in
    /// flight, camera streams and the session carried on; nothing was
    /// redialed.
    IceRestarted {
        /// What changed, e.g. `10.3.0.2 appeared, 10.2.0.2 went away`, or
        /// `the machine was silent for 1.5 s`.
        reason: String,
        /// From noticing the change to ICE having a working pair again.
        took_ms: f64,
        /// The new selected pair's types, `local/remote`.
        candidate_pair: Option<String>,
    },
    /// An ICE restart found no working path within its bound
    /// ([`IceRestartOptions::limit`]); the connection is closed and a full
    /// reconnection follows (`reconnecting`).
    IceRestartFailed {
        /// What changed.
        reason: String,
        /// Why the restart failed.
        error: String,
    },
    /// The connection dropped; reconnection starts.
    Reconnecting {
        /// Why it dropped.
        error: Option<String>,
    },
    /// The next reconnection attempt is scheduled.
    RetryScheduled {
        /// The attempt that will run after the delay.
        attempt: u32,
        /// The delay, in milliseconds.
        delay_ms: u64,
    },
    /// Reconnection gave up.
    ReconnectionFailed {
        /// The last error.
        error: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The client is closing.
    Disconnecting,
    /// The client is disconnected for good (closed, or `no_reconnect`).
    Disconnected {
        /// Why, if not a clean close.
        error: Option<String>,
    },
}

impl ConnectionEvent {
    /// The event's name (`connected`, `reconnecting`, …), as in its JSON `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionEvent::Connecting => "connecting",
            ConnectionEvent::Dialing { .. } => "dialing",
            ConnectionEvent::Connected { .. } => "connected",
            ConnectionEvent::SessionResumed { .. } => "session_resumed",
            ConnectionEvent::SessionLapsed { .. } => "session_lapsed",
            ConnectionEvent::StreamRestored { .. } => "stream_restored",
            ConnectionEvent::IceRestarted { .. } => "ice_restarted",
            ConnectionEvent::IceRestartFailed { .. } => "ice_restart_failed",
            ConnectionEvent::Reconnecting { .. } => "reconnecting",
            ConnectionEvent::RetryScheduled { .. } => "retry_scheduled",
            ConnectionEvent::ReconnectionFailed { .. } => "reconnection_failed",
            ConnectionEvent::Disconnecting => "disconnecting",
            ConnectionEvent::Disconnected { .. } => "disconnected",
        }
    }
}

/// The connection's state, as a `watch` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Connected; calls go through.
    Connected,
    /// Lost; reconnecting. Calls fail fast with UNAVAILABLE unless they opted
    /// to wait.
    Reconnecting,
    /// Gone for good (closed, `no_reconnect`, or reconnection failed).
    Disconnected,
}

/// What a WebRTC connection does when this host's network changes.
///
/// The client polls its IPv4 addresses every [`Self::poll`]; when one that
/// the connection gathered on goes away or a new one appears, or when the
/// machine has not been heard from for [`Self::silence`] (the selected pair
/// stopped answering: a NAT that changed its mapping, a machine on a new
/// address), it restarts
/// ICE on the same peer connection through the signaling service (a new
/// offer with new ICE credentials; see
/// [`tether_signaling::caller::restart_ice`]) instead of waiting for the
/// link to be declared dead and redialing. Calls stall for the gap and then
/// complete; the session never lapses if the gap is shorter than its window.
/// If no working path is found within [`Self::limit`], the connection is
/// closed and the usual reconnection runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IceRestartOptions {
    /// Restart on a network change (default `true`); off, a network change
    /// is an outage like any other.
    pub enabled: bool,
    /// How often the addresses are checked (default 200 ms).
    pub poll: Duration,
    /// How long a restart may take before the client redials instead
    /// (default 2 s).
    pub limit: Duration,
    /// Restart when nothing has arrived from the machine for this long
    /// (default 1.5 s: three ICE keepalive intervals). Keep it below
    /// [`Liveness::timeout`], which declares the connection dead.
    pub silence: Duration,
}

impl Default for IceRestartOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            poll: Duration::from_millis(200),
            limit: Duration::from_secs(2),
            silence: Duration::from_millis(1500),
        }
    }
}

/// Builder-style setters (the struct is `#[non_exhaustive]`).
impl IceRestartOptions {
    /// Sets [`Self::enabled`].
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets [`Self::poll`].
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Sets [`Self::limit`].
    pub fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Sets [`Self::silence`].
    pub fn with_silence(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }
}

/// Reconnection policy.
///
/// After a drop the first attempt runs at once; before attempt *k* ≥ 2 the
/// client waits `min(100 ms × 2^(k−2), max_wait)` with *equal jitter* (a
/// uniformly random time between half and all of that): 100, 200, 400, 800 ms, …
/// Equal jitter keeps the schedule exponential and bounded (at least half the
/// nominal delay, never more than it) while spreading the clients of a
/// restarted machine apart, so they don't all redial in the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// Never reconnect: a drop ends the client (one `disconnected` event).
    pub no_reconnect: bool,
    /// Attempts per outage (default 10).
    pub max_attempts: u32,
    /// Cap on each delay (default: none).
    pub max_wait: Option<Duration>,
}

/// Builder-style setters (the struct is `#[non_exhaustive]`: start from
/// `ReconnectOptions::default()`).
impl ReconnectOptions {
    /// Sets [`Self::no_reconnect`].
    pub fn with_no_reconnect(mut self, no_reconnect: bool) -> Self {
        self.no_reconnect = no_reconnect;
        self
    }

    /// Sets [`Self::max_attempts`].
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`Self::max_wait`].
    pub fn with_max_wait(mut self, max_wait: Option<Duration>) -> Self {
        self.max_wait = max_wait;
        self
    }
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self { no_reconnect: false, max_attempts: 10, max_wait: None }
    }
}

impl ReconnectOptions {
    /// The nominal (un-jittered) delay before `attempt` (1-based).
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let d = Duration::from_millis(100).saturating_mul(1u32 << (attempt - 2).min(20));
        match self.max_wait {
            Some(cap) => d.min(cap),
            None => d,
        }
    }

    /// The jittered delay before `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.nominal_delay(attempt);
        d / 2 + d.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// A caller-supplied rule for whether a failed dial attempt is retried (see
/// [`Options::should_retry`](crate::Options::should_retry)).
#[derive(Clone)]
pub struct ShouldRetry(std::sync::Arc<dyn Fn(&crate::Error) -> bool + Send + Sync>);

impl ShouldRetry {
    /// Wraps `f`: `true` retries, `false` ends the dial with that error.
    pub fn new(f: impl Fn(&crate::Error) -> bool + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    /// Asks the rule about `error`.
    pub fn check(&self, error: &crate::Error) -> bool {
        (self.0)(error)
    }
}

impl std::fmt::Debug for ShouldRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShouldRetry(..)")
    }
}

/// Stops dialing: [`AbortHandle::abort`] ends the dial in progress (and any
/// later one) of every client given a clone of it (the TypeScript SDK's
/// `reconnectAbortSignal`).
#[derive(Clone, Debug, Default)]
pub struct AbortHandle(tokio_util::sync::CancellationToken);

impl AbortHandle {
    /// A handle not yet aborted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Aborts.
    pub fn abort(&self) {
        self.0.cancel();
    }

    /// Whether [`Self::abort`] was called.
    pub fn is_aborted(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once aborted.
    pub async fn aborted(&self) {
        self.0.cancelled().await
    }
}

/// How fast a silently dead link is noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Keepalive interval: HTTP/2 PINGs (direct) or ICE binding requests (WebRTC).
    pub interval: Duration,
    /// No answer for this long: the connection is dead.
    pub timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { interval: Duration::from_millis(500), timeout: Duration::from_secs(3) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_from_100ms_and_is_capped() {
        let o = ReconnectOptions::default();
        let nominal: Vec<u64> = (1..=6).map(|a| o.nominal_delay(a).as_millis() as u64).collect();
        assert_eq!(nominal, [0, 100, 200, 400, 800, 1600]);
        let capped = ReconnectOptions { max_wait: Some(Duration::from_millis(300)), ..o };
        assert_eq!(capped.nominal_delay(5), Duration::from_millis(300));
        for a in 2..12 {
            let d = o.delay(a);
            let n = o.nominal_delay(a);
            assert!(d >= n / 2 && d <= n, "attempt {a}: {d:?} vs {n:?}");
        }
        assert_eq!(o.nominal_delay(40), o.nominal_delay(22));
    }

    #[test]
    fn events_serialize_with_an_event_field() {
        let e = ConnectionEvent::Dialing { method: Method::Webrtc, attempt: 2 };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "dialing", "method": "webrtc", "attempt": 2})
        );
        assert_eq!(e.name(), "dialing");
    }
}
