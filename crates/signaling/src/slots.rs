//! A machine's limit on WebRTC connections (`max_webrtc_connections`), with
//! caller priorities.
//!
//! Every offer the answerer takes holds a [`Slot`] from the moment it is
//! admitted (before any peer connection is made) until its connection is
//! gone. When every slot is taken, a new caller gets in only by closing a
//! connected peer of a *lower* priority that is not in use (the machine's
//! [`InUse`] check: e.g. one holding a session, or one whose sessionless
//! calls drive an actuator, is never closed); the lowest priority goes
//! first, the oldest among equals. Otherwise the caller is refused with
//! RESOURCE_EXHAUSTED.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tether_transport::server::ConnectionInfo;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether a connected peer is in use (and so must never be closed to make
/// room for another caller).
pub type InUse = Arc<dyn Fn(&ConnectionInfo) -> bool + Send + Sync>;

struct Entry {
    priority: i32,
    since: Instant,
    /// Set once the data channel is open.
    info: Option<ConnectionInfo>,
    evict: CancellationToken,
}

#[derive(Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The slots of one machine, shared by all its answerers.
pub struct ConnectionSlots {
    limit: usize,
    in_use: InUse,
    state: Mutex<State>,
}

impl std::fmt::Debug for ConnectionSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlots").field("limit", &self.limit).field("taken", &self.len()).finish()
    }
}

impl ConnectionSlots {
    /// At most `limit` (≥ 1) connections; `in_use` protects peers from being closed.
    pub fn new(limit: usize, in_use: InUse) -> Arc<Self> {
        Arc::new(Self { limit: limit.max(1), in_use, state: Mutex::default() })
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Slots taken now (connections and exchanges in progress).
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// True when no slot is taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a slot for a caller of `priority`, closing the lowest-priority
    /// connected peer that is not in use if that is the only way; else
    /// RESOURCE_EXHAUSTED.
    pub fn admit(self: &Arc<Self>, priority: i32) -> Result<Slot, tonic::Status> {
        let mut st = self.state.lock();
        if st.entries.len() >= self.limit {
            let victim = st
                .entries
                .iter()
                .filter(|(_, e)| e.priority < priority)
                .filter(|(_, e)| e.info.as_ref().is_some_and(|info| !(self.in_use)(info)))
                .min_by_key(|(_, e)| (e.priority, e.since))
                .map(|(k, _)| *k);
            let Some(key) = victim else {
                return Err(tonic::Status::resource_exhausted(format!(
                    "this machine accepts at most {} WebRTC connections (max_webrtc_connections), and none \
                     of lower priority than this caller's ({priority}) is idle and without a session; \
                     try again later, or with a higher priority",
                    self.limit
                )));
            };
            if let Some(e) = st.entries.remove(&key) {
                tracing::info!(
                    remote = ?e.info.as_ref().and_then(|i| i.remote),
                    priority = e.priority,
                    caller_priority = priority,
                    "closing an idle, sessionless WebRTC connection to admit a caller of higher priority"
                );
                e.evict.cancel();
            }
        }
        let key = st.next;
        st.next += 1;
        let evict = CancellationToken::new();
        st.entries.insert(key, Entry { priority, since: Instant::now(), info: None, evict: evict.clone() });
        Ok(Slot { slots: self.clone(), key, evict })
    }
}

/// One taken slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    key: u64,
    evict: CancellationToken,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("key", &self.key).field("evicted", &self.evict.is_cancelled()).finish()
    }
}

impl Slot {
    /// The peer is connected (from now on it may be closed for a caller of
    /// higher priority, unless in use).
    pub fn connected(&self, info: ConnectionInfo) {
        if let Some(e) = self.slots.state.lock().entries.get_mut(&self.key) {
            e.info = Some(info);
        }
    }

    /// Cancelled when the connection was chosen to make room: close it.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.state.lock().entries.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tether_transport::server::TransportKind;

    fn info(id: u64) -> ConnectionInfo {
        ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id }
    }

    #[tokio::test]
    async fn full_slots_refuse_equal_priority_and_evict_the_lowest_idle_one() {
        let busy = Arc::new(AtomicU64::new(u64::MAX));
        let b = busy.clone();
        let slots = ConnectionSlots::new(2, Arc::new(move |i: &ConnectionInfo| i.id == b.load(Ordering::SeqCst)));
        let low = slots.admit(1).unwrap();
        let lowest = slots.admit(0).unwrap();
        // Not connected yet: nothing can be evicted.
        assert_eq!(slots.admit(5).unwrap_err().code(), tonic::Code::ResourceExhausted);
        low.connected(info(1));
        lowest.connected(info(2));
        // Equal priority never evicts.
        let refused = slots.admit(0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("max_webrtc_connections"), "{}", refused.message());
        // The in-use one is skipped: priority 0 is busy, so priority 1 goes.
        busy.store(2, Ordering::SeqCst);
        let high = slots.admit(5).unwrap();
        assert!(low.evicted().is_cancelled() && !lowest.evicted().is_cancelled());
        assert_eq!(slots.len(), 2);
        drop(low);
        assert_eq!(slots.len(), 2, "an evicted slot was already freed");
        high.connected(info(3));
        busy.store(u64::MAX, Ordering::SeqCst);
        let _higher = slots.admit(9).unwrap();
        assert!(lowest.evicted().is_cancelled());
        drop(high);
        assert_eq!(slots.len(), 1);
    }
}
