//! [`MemoryQueue`]: the in-process [`CallQueue`] (the embedded default).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
// tokio's clock (the system's, unless a test runtime pauses it), so that a
// paused runtime (the fuzz target) drives expiry and presence too.
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::queue::{
    AnswererEvent, AnswererExchange, AnswererResponder, AnswererSession, CallQueue, CallerEvent, CallerHandle, Offer,
    OfferInit, QueueError,
};

/// Default time a host stays "online" after its last `Answer` stream closed.
pub const DEFAULT_ONLINE_GRACE: Duration = Duration::from_secs(3);

/// Most events one side may push into one offer (a call has a few dozen
/// candidates at most; this bounds memory per offer).
pub const MAX_EVENTS_PER_SIDE: usize = 512;

/// Offers are dropped this long after their deadline, so that the handlers'
/// own deadline timers (which fire exactly at the deadline) win the race.
const EXPIRY_SLACK: Duration = Duration::from_millis(250);

/// Longest accepted offer lifetime (longer ones are clamped).
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How often the background janitor sweeps expired offers and stale hosts.
const JANITOR_INTERVAL: Duration = Duration::from_secs(1);

/// In-memory call queue.
///
/// * Every offer is claimed by exactly one answerer (FIFO per host among the
///   offers; whichever waiting answerer of the host wakes first claims it).
/// * Offers wait for an answerer until their deadline; caller events sent
///   before the claim are buffered and delivered after it. Nothing blocks:
///   events are buffered per offer (at most [`MAX_EVENTS_PER_SIDE`] per side).
/// * A host is online while an [`AnswererSession`] for it exists and for a
///   grace period after the last one closed ([`DEFAULT_ONLINE_GRACE`]).
/// * Finished offers are removed at once; expired ones lazily and by a
///   janitor task (started on first use, stopped when the queue is dropped).
///
/// ```
/// use std::sync::Arc;
/// use tether_signaling::{CallQueue, MemoryQueue};
///
/// let queue: Arc<dyn CallQueue> = Arc::new(MemoryQueue::new());
/// # let _ = queue;
/// ```
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

/// Counters of a [`MemoryQueue`] (after sweeping expired entries), for
/// diagnostics and leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryQueueStats {
    /// Offers still stored (waiting, or in an exchange).
    pub offers: usize,
    /// Offers not yet claimed by an answerer.
    pub pending: usize,
    /// Registered answerer sessions.
    pub sessions: usize,
    /// Hosts with presence information (online or within the grace period).
    pub tracked_hosts: usize,
}

struct Inner {
    state: Mutex<State>,
    online_grace: Duration,
    janitor_started: AtomicBool,
}

#[derive(Default)]
struct State {
    offers: HashMap<String, Entry>,
    /// Unclaimed offer uuids per host, oldest first (may contain stale ids).
    pending: HashMap<String, VecDeque<String>>,
    sessions: HashMap<u64, Arc<Notify>>,
    hosts: HashMap<String, Presence>,
    next_session: u64,
}

#[derive(Default)]
struct Presence {
    /// Sessions registered for the host.
    sessions: Vec<u64>,
    last_closed: Option<Instant>,
}

struct Entry {
    offer: Offer,
    created: Instant,
    deadline: Instant,
    claimed: bool,
    to_caller: Option<mpsc::UnboundedSender<AnswererEvent>>,
    to_answerer: Option<mpsc::UnboundedSender<CallerEvent>>,
    answerer_rx: Option<mpsc::UnboundedReceiver<CallerEvent>>,
    caller_events: usize,
    answerer_events: usize,
    caller_finished: bool,
    /// The caller finished with an error (withdraws an unclaimed offer).
    caller_failed: bool,
    answerer_finished: bool,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        now >= self.deadline + EXPIRY_SLACK
    }

    /// Finished entries can be dropped: both sides are done, or the caller
    /// gave up before anybody claimed the offer.
    fn finished(&self) -> bool {
        (self.caller_finished && self.answerer_finished) || (self.caller_failed && !self.claimed)
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue").field("online_grace", &self.inner.online_grace).finish_non_exhaustive()
    }
}

impl MemoryQueue {
    /// A queue with the default online grace period (3 s).
    pub fn new() -> Self {
        Self::with_online_grace(DEFAULT_ONLINE_GRACE)
    }

    /// A queue whose hosts stay online for `grace` after their last answerer
    /// session closed.
    pub fn with_online_grace(grace: Duration) -> Self {
        MemoryQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                online_grace: grace,
                janitor_started: AtomicBool::new(false),
            }),
        }
    }

    /// Counters after removing expired offers and stale hosts.
    pub fn stats(&self) -> MemoryQueueStats {
        let mut st = self.inner.state.lock();
        st.sweep(Instant::now(), self.inner.online_grace);
        MemoryQueueStats {
            offers: st.offers.len(),
            pending: st.offers.values().filter(|e| !e.claimed).count(),
            sessions: st.sessions.len(),
            tracked_hosts: st.hosts.len(),
        }
    }

    fn start_janitor(&self) {
        if self.inner.janitor_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.janitor_started.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(JANITOR_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.state.lock().sweep(Instant::now(), inner.online_grace);
            }
        });
    }
}

impl State {
    fn sweep(&mut self, now: Instant, grace: Duration) {
        self.offers.retain(|_, e| !e.expired(now) && !e.finished());
        let offers = &self.offers;
        self.pending.retain(|_, q| {
            q.retain(|id| offers.get(id).is_some_and(|e| !e.claimed));
            !q.is_empty()
        });
        self.hosts.retain(|_, p| {
            !p.sessions.is_empty() || p.last_closed.is_some_and(|t| now.saturating_duration_since(t) < grace)
        });
    }

    fn remove_if_finished(&mut self, uuid: &str) {
        if self.offers.get(uuid).is_some_and(Entry::finished) {
            self.offers.remove(uuid);
        }
    }

    /// Claims the oldest live offer for any of `hosts`.
    fn claim(&mut self, hosts: &[String], now: Instant) -> Option<(Offer, mpsc::UnboundedReceiver<CallerEvent>)> {
        let mut best: Option<(Instant, &String)> = None;
        for host in hosts {
            let Some(q) = self.pending.get_mut(host) else { continue };
            // Drop stale ids at the front.
            while let Some(id) = q.front() {
                match self.offers.get(id) {
                    Some(e) if !e.claimed && !e.caller_failed && now < e.deadline => break,
                    _ => {
                        q.pop_front();
                    }
                }
            }
            let older =
                q.front().and_then(|id| self.offers.get(id)).filter(|e| best.is_none_or(|(t, _)| e.created < t));
            if let Some(e) = older {
                best = Some((e.created, host));
            }
        }
        let host = best?.1.clone();
        let uuid = self.pending.get_mut(&host)?.pop_front()?;
        let entry = self.offers.get_mut(&uuid)?;
        entry.claimed = true;
        let rx = entry.answerer_rx.take()?;
        Some((entry.offer.clone(), rx))
    }
}

#[async_trait]
impl CallQueue for MemoryQueue {
    async fn send_offer(&self, init: OfferInit) -> Result<CallerHandle, QueueError> {
        self.start_janitor();
        let now = Instant::now();
        let ttl = init.ttl.min(MAX_TTL);
        let uuid = uuid::Uuid::new_v4().to_string();
        let offer = Offer {
            uuid: uuid.clone(),
            host: init.host.clone(),
            sdp: init.sdp,
            disable_trickle: init.disable_trickle,
            deadline: SystemTime::now() + ttl,
            caller: init.caller,
            address: init.address,
        };
        let (to_caller, caller_rx) = mpsc::unbounded_channel();
        let (to_answerer, answerer_rx) = mpsc::unbounded_channel();
        let entry = Entry {
            offer: offer.clone(),
            created: now,
            deadline: now + ttl,
            claimed: false,
            to_caller: Some(to_caller),
            to_answerer: Some(to_answerer),
            answerer_rx: Some(answerer_rx),
            caller_events: 0,
            answerer_events: 0,
            caller_finished: false,
            caller_failed: false,
            answerer_finished: false,
        };
        let waiters: Vec<Arc<Notify>> = {
            let mut st = self.inner.state.lock();
            st.offers.insert(uuid.clone(), entry);
            st.pending.entry(init.host.clone()).or_default().push_back(uuid);
            match st.hosts.get(&init.host) {
                Some(p) => p.sessions.iter().filter_map(|id| st.sessions.get(id).cloned()).collect(),
                None => Vec::new(),
            }
        };
        for w in waiters {
            w.notify_one();
        }
        Ok(CallerHandle { offer, events: UnboundedReceiverStream::new(caller_rx).boxed() })
    }

    async fn send_caller_event(&self, host: &str, uuid: &str, event: CallerEvent) -> Result<(), QueueError> {
        let now = Instant::now();
        let mut st = self.inner.state.lock();
        let no_offer = || QueueError::NoActiveOffer(uuid.to_string());
        let entry = st.offers.get_mut(uuid).filter(|e| e.offer.host == host && !e.expired(now)).ok_or_else(no_offer)?;
        if entry.caller_finished {
            // A second terminal event (e.g. an error after done) is ignored.
            return if event.is_terminal() { Ok(()) } else { Err(no_offer()) };
        }
        if entry.caller_events >= MAX_EVENTS_PER_SIDE {
            return Err(QueueError::TooManyUpdates(uuid.to_string()));
        }
        entry.caller_events += 1;
        let terminal = event.is_terminal();
        entry.caller_failed = matches!(event, CallerEvent::Error(_));
        if let Some(tx) = &entry.to_answerer {
            // The answerer may be gone already; that is not the caller's problem.
            let _ = tx.send(event);
        }
        if terminal {
            entry.caller_finished = true;
            entry.to_answerer = None;
            st.remove_if_finished(uuid);
        }
        Ok(())
    }

    async fn register_answerer(&self, hosts: Vec<String>) -> Result<Box<dyn AnswererSession>, QueueError> {
        self.start_janitor();
        let notify = Arc::new(Notify::new());
        let id = {
            let mut st = self.inner.state.lock();
            st.next_session += 1;
            let id = st.next_session;
            st.sessions.insert(id, notify.clone());
            for h in &hosts {
                st.hosts.entry(h.clone()).or_default().sessions.push(id);
            }
            id
        };
        Ok(Box::new(MemorySession { inner: self.inner.clone(), id, hosts, notify }))
    }

    async fn is_answerer_online(&self, host: &str) -> bool {
        let st = self.inner.state.lock();
        st.hosts.get(host).is_some_and(|p| {
            !p.sessions.is_empty() || p.last_closed.is_some_and(|t| t.elapsed() < self.inner.online_grace)
        })
    }
}

struct MemorySession {
    inner: Arc<Inner>,
    id: u64,
    hosts: Vec<String>,
    notify: Arc<Notify>,
}

#[async_trait]
impl AnswererSession for MemorySession {
    async fn recv_offer(&mut self) -> Result<AnswererExchange, QueueError> {
        loop {
            // The claim and the return happen in one poll, so dropping this
            // future never loses an offer; a notification that arrives between
            // the check and the wait is kept as the Notify's permit.
            let claimed = self.inner.state.lock().claim(&self.hosts, Instant::now());
            if let Some((offer, rx)) = claimed {
                let responder = MemoryResponder { inner: self.inner.clone(), uuid: offer.uuid.clone() };
                return Ok(AnswererExchange {
                    offer,
                    caller_events: UnboundedReceiverStream::new(rx).boxed(),
                    responder: Box::new(responder),
                });
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        st.sessions.remove(&self.id);
        let now = Instant::now();
        for h in &self.hosts {
            if let Some(p) = st.hosts.get_mut(h) {
                p.sessions.retain(|s| *s != self.id);
                p.last_closed = Some(now);
            }
        }
    }
}

struct MemoryResponder {
    inner: Arc<Inner>,
    uuid: String,
}

#[async_trait]
impl AnswererResponder for MemoryResponder {
    async fn respond(&self, event: AnswererEvent) -> Result<(), QueueError> {
        let now = Instant::now();
        let mut st = self.inner.state.lock();
        let no_offer = || QueueError::NoActiveOffer(self.uuid.clone());
        let entry = st.offers.get_mut(&self.uuid).filter(|e| !e.expired(now)).ok_or_else(no_offer)?;
        if entry.answerer_finished {
            return Err(no_offer());
        }
        if entry.answerer_events >= MAX_EVENTS_PER_SIDE {
            return Err(QueueError::TooManyUpdates(self.uuid.clone()));
        }
        entry.answerer_events += 1;
        let terminal = event.is_terminal();
        let failed = matches!(event, AnswererEvent::Error(_));
        if let Some(tx) = &entry.to_caller {
            let _ = tx.send(event);
        }
        if failed {
            // The exchange is over for both sides: the caller's later
            // updates have nowhere to go.
            st.offers.remove(&self.uuid);
        } else if terminal {
            entry.answerer_finished = true;
            entry.to_caller = None;
            st.remove_if_finished(&self.uuid);
        }
        Ok(())
    }
}

impl Drop for MemoryResponder {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        // Going away without a terminal event ends the exchange: dropping the
        // entry ends both sides' event streams.
        if st.offers.get(&self.uuid).is_some_and(|e| !e.answerer_finished) {
            st.offers.remove(&self.uuid);
        }
    }
}
