//! The live connections of one listener, their state, and which one to shed
//! when the cap is reached.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A connection that has served no request and started none for this long
/// can be shed at the cap even when it is authenticated: it holds no session
/// (a session's heartbeat window is at most a minute) and no stream.
pub(crate) const SHED_IDLE: Duration = Duration::from_secs(60);

/// One connection's state, shared by its task, its requests and the registry.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(crate) id: u64,
    accepted: Instant,
    /// The TLS handshake and the HTTP preface are done and the first request's
    /// headers have arrived.
    active: AtomicBool,
    /// A request on it passed the auth layer (or the server is open).
    authenticated: AtomicBool,
    /// Requests whose response has not been dropped yet.
    in_flight: AtomicUsize,
    /// Milliseconds after `accepted` of the last request start or end.
    last_activity_ms: AtomicU64,
    /// Cancelled to close the connection at once (shed).
    pub(crate) shed: CancellationToken,
    registry: Arc<Registry>,
}

impl ConnState {
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn accepted(&self) -> Instant {
        self.accepted
    }

    /// When the last request started or ended (acceptance if none did).
    pub(crate) fn last_activity(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A request arrived: the handshake is over. The guard counts it in
    /// flight until its response (or its future) is dropped.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        if !self.active.swap(true, Ordering::AcqRel) {
            self.registry.activated(self.id);
        }
        InFlight(self.clone())
    }

    pub(crate) fn mark_authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.registry.authenticated(self.id);
        }
    }
}

/// A request in flight on a connection (see [`ConnState::request_started`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Removes the connection from the registry when its task ends.
pub(crate) struct Registered(pub(crate) Arc<ConnState>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.registry.remove(self.0.id);
    }
}

/// What happened to a new connection at admission.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Below the cap.
    Admitted,
    /// At the cap: this connection was closed to make room.
    Shed { victim: u64, reason: ShedReason },
    /// At the cap and nothing could be shed: the new connection is refused.
    Refused,
}

/// Why a connection was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShedReason {
    /// It had not finished its handshake (no request headers yet).
    Handshaking,
    /// It had sent requests but none authenticated.
    Unauthenticated,
    /// Nothing in flight and no request for [`SHED_IDLE`].
    Idle,
}

impl ShedReason {
    /// The `reason` label of the shed counter.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ShedReason::Handshaking => "handshaking",
            ShedReason::Unauthenticated => "unauthenticated",
            ShedReason::Idle => "idle",
        }
    }
}

impl std::fmt::Display for ShedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShedReason::Handshaking => "that had not finished its handshake",
            ShedReason::Unauthenticated => "that had not authenticated",
            ShedReason::Idle => "idle for a minute or more",
        })
    }
}

#[derive(Default)]
struct Table {
    all: BTreeMap<u64, Arc<ConnState>>,
    /// Ids (oldest first) of connections without a request yet.
    handshaking: BTreeSet<u64>,
    /// Ids of connections with requests but none authenticated.
    unauthenticated: BTreeSet<u64>,
}

/// The connections of one listener.
pub(crate) struct Registry {
    cap: usize,
    table: Mutex<Table>,
    /// Connections shed or refused since the start.
    pub(crate) shed_total: AtomicU64,
    pub(crate) refused_total: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("cap", &self.cap).field("len", &self.len()).finish()
    }
}

impl Registry {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
            shed_total: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
        })
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn len(&self) -> usize {
        self.table.lock().all.len()
    }

    /// Registers a new connection, shedding one first when at the cap. On
    /// [`Admission::Refused`] the connection is not registered.
    pub(crate) fn admit(self: &Arc<Self>, id: u64) -> (Admission, Option<Arc<ConnState>>) {
        let state = Arc::new(ConnState {
            id,
            accepted: Instant::now(),
            active: AtomicBool::new(false),
            authenticated: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(0),
            shed: CancellationToken::new(),
            registry: self.clone(),
        });
        let mut table = self.table.lock();
        let mut admission = Admission::Admitted;
        if table.all.len() >= self.cap {
            match Self::victim(&table) {
                Some((victim, reason)) => {
                    if let Some(conn) = Self::remove_locked(&mut table, victim) {
                        conn.shed.cancel();
                    }
                    self.shed_total.fetch_add(1, Ordering::Relaxed);
                    admission = Admission::Shed { victim, reason };
                }
                None => {
                    self.refused_total.fetch_add(1, Ordering::Relaxed);
                    return (Admission::Refused, None);
                }
            }
        }
        table.handshaking.insert(id);
        table.all.insert(id, state.clone());
        (admission, Some(state))
    }

    /// The connection to shed: the oldest still handshaking, else the oldest
    /// unauthenticated, else the one idle longest (at least [`SHED_IDLE`]).
    fn victim(table: &Table) -> Option<(u64, ShedReason)> {
        if let Some(id) = table.handshaking.first() {
            return Some((*id, ShedReason::Handshaking));
        }
        if let Some(id) = table.unauthenticated.first() {
            return Some((*id, ShedReason::Unauthenticated));
        }
        let now = Instant::now();
        table
            .all
            .values()
            .filter(|c| c.in_flight() == 0 && now.saturating_duration_since(c.last_activity()) >= SHED_IDLE)
            .min_by_key(|c| c.last_activity())
            .map(|c| (c.id, ShedReason::Idle))
    }

    fn activated(&self, id: u64) {
        let mut table = self.table.lock();
        if table.handshaking.remove(&id) {
            let authenticated = table.all.get(&id).is_some_and(|c| c.authenticated.load(Ordering::Acquire));
            if !authenticated {
                table.unauthenticated.insert(id);
            }
        }
    }

    fn authenticated(&self, id: u64) {
        self.table.lock().unauthenticated.remove(&id);
    }

    fn remove(&self, id: u64) {
        Self::remove_locked(&mut self.table.lock(), id);
    }

    fn remove_locked(table: &mut Table, id: u64) -> Option<Arc<ConnState>> {
        table.handshaking.remove(&id);
        table.unauthenticated.remove(&id);
        table.all.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(registry: &Arc<Registry>, id: u64) -> (Admission, Registered) {
        let (admission, state) = registry.admit(id);
        (admission, Registered(state.expect("admitted")))
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_handshaking_then_unauthenticated_then_idle_then_refuses() {
        let registry = Registry::new(3);
        let (_, a) = admit(&registry, 1);
        let (_, b) = admit(&registry, 2);
        let (_, c) = admit(&registry, 3);
        // 1 authenticated and active, 2 active but unauthenticated, 3 handshaking.
        let ra = a.0.request_started();
        a.0.mark_authenticated();
        let rb = b.0.request_started();
        let (admission, d) = admit(&registry, 4);
        assert_eq!(admission, Admission::Shed { victim: 3, reason: ShedReason::Handshaking });
        assert!(c.0.shed.is_cancelled());
        // 4 is handshaking now: it goes next.
        let (admission, e) = admit(&registry, 5);
        assert_eq!(admission, Admission::Shed { victim: 4, reason: ShedReason::Handshaking });
        assert!(d.0.shed.is_cancelled());
        let re = e.0.request_started();
        e.0.mark_authenticated();
        let (admission, f) = admit(&registry, 6);
        assert_eq!(admission, Admission::Shed { victim: 2, reason: ShedReason::Unauthenticated });
        let rf = f.0.request_started();
        f.0.mark_authenticated();
        // Everyone authenticated with a request in flight: refused.
        assert_eq!(registry.admit(7).0, Admission::Refused);
        drop((ra, rb, re, rf));
        // Not idle long enough yet.
        tokio::time::advance(SHED_IDLE / 2).await;
        assert_eq!(registry.admit(8).0, Admission::Refused);
        tokio::time::advance(SHED_IDLE).await;
        let (admission, _g) = admit(&registry, 9);
        assert_eq!(admission, Admission::Shed { victim: 1, reason: ShedReason::Idle });
        assert_eq!(registry.shed_total.load(Ordering::Relaxed), 4);
        assert_eq!(registry.refused_total.load(Ordering::Relaxed), 2);
        drop((a, c));
        assert_eq!(registry.len(), 3);
    }
}
