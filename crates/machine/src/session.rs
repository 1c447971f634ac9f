//! Sessions and safety monitoring, independent of any transport.
//!
//! A client starts a session, then heartbeats within the session's window.
//! Safety-monitored calls carrying the session id make that session the
//! *last caller* of the resource they name. When a session's deadline passes
//! without a heartbeat, the manager hands the resources whose last caller it
//! was to a stop callback.
//!
//! Expiry is event driven: one task sleeps until the earliest deadline (kept in
//! an ordered set), so a stop is issued within about a millisecond of the
//! deadline however many sessions exist.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tether_machine::session::{SessionManager, PeerInfo};
//! let (manager, mut expired) = SessionManager::with_channel(Duration::from_millis(100));
//! let (id, window) = manager.start("", "", PeerInfo::default()).unwrap();
//! assert_eq!(window, Duration::from_millis(100));
//! manager.associate("motor1", Some(id));
//! let stop = expired.recv().await.unwrap();
//! assert_eq!(stop.id, id);
//! assert_eq!(stop.resources, vec!["motor1".to_string()]);
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// Smallest heartbeat window a machine may be configured with.
pub const MIN_WINDOW: Duration = Duration::from_millis(30);
/// Largest heartbeat window a machine may be configured with.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Window used when none is configured.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(2);

/// Errors of session operations, mapped to gRPC statuses by the servers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The id is not a UUID (or several ids were sent).
    #[error("invalid session id {0:?}")]
    Malformed(String),
    /// Unknown, expired, or owned by another identity.
    #[error("SESSION_EXPIRED")]
    Expired,
}

impl From<SessionError> for tonic::Status {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Malformed(_) => tonic::Status::invalid_argument(e.to_string()),
            SessionError::Expired => tonic::Status::invalid_argument(tether_wire::metadata::SESSION_EXPIRED),
        }
    }
}

/// How a session's last heartbeat reached the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// True for WebRTC, false for direct gRPC.
    pub webrtc: bool,
    /// Remote address, if known.
    pub remote: Option<SocketAddr>,
    /// Local address, if known.
    pub local: Option<SocketAddr>,
}

/// A snapshot of one live session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Session id.
    pub id: Uuid,
    /// Owner ([`crate::monitor::identity`]).
    pub owner: String,
    /// The session's window.
    pub window: Duration,
    /// Where the last heartbeat came from.
    pub peer: PeerInfo,
    /// When it lapses unless heartbeated (last heartbeat + window).
    pub deadline: Instant,
}

/// A session that lapsed, and the resources it was the last caller of.
#[derive(Clone, Debug)]
pub struct Expired {
    /// Session id.
    pub id: Uuid,
    /// Owner of the session.
    pub owner: String,
    /// Where its last heartbeat came from.
    pub peer: PeerInfo,
    /// Resource names to stop, sorted.
    pub resources: Vec<String>,
    /// The deadline that passed.
    pub deadline: Instant,
}

/// Called (on the expiry task) for every lapsed session. It must not block:
/// spawn the actual stops.
pub type ExpiryHandler = Arc<dyn Fn(Expired) + Send + Sync>;

struct Session {
    owner: String,
    deadline: Instant,
    window: Duration,
    peer: PeerInfo,
}

/// Who last called a safety-monitored method on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A call bound to this session.
    Session(Uuid),
    /// A sessionless call over this peer connection (WebRTC): the resource is
    /// stopped when the connection dies, since no session will.
    Connection(u64),
}

#[derive(Default)]
struct State {
    sessions: HashMap<Uuid, Session>,
    deadlines: BTreeSet<(Instant, Uuid)>,
    last_caller: HashMap<String, Caller>,
}

struct Inner {
    state: Mutex<State>,
    wake: Notify,
    window: Duration,
    on_expiry: ExpiryHandler,
}

/// The session manager. Cheap to clone; the expiry task ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager").field("window", &self.inner.window).finish_non_exhaustive()
    }
}

/// Whether two owners (see [`crate::monitor::identity`]) are the same, in
/// constant time.
pub fn owners_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Parses a session id as sent by a client.
pub fn parse_id(s: &str) -> Result<Uuid, SessionError> {
    Uuid::parse_str(s.trim()).map_err(|_| SessionError::Malformed(s.chars().take(64).collect()))
}

impl SessionManager {
    /// A manager whose sessions get `window`, calling `on_expiry` for each
    /// lapsed session. Must be called inside a tokio runtime.
    pub fn new(window: Duration, on_expiry: ExpiryHandler) -> Self {
        let inner = Arc::new(Inner { state: Mutex::new(State::default()), wake: Notify::new(), window, on_expiry });
        let task = tokio::spawn(expiry_task(inner.clone()));
        Self { inner, _task: Arc::new(AbortOnDrop(task.abort_handle())) }
    }

    /// A manager that reports expiries on a channel (handy in tests).
    pub fn with_channel(window: Duration) -> (Self, tokio::sync::mpsc::UnboundedReceiver<Expired>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let manager = Self::new(
            window,
            Arc::new(move |e| {
                let _ = tx.send(e);
            }),
        );
        (manager, rx)
    }

    /// The window every new session gets.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// `StartSession`: resumes `resume` when it names a live session of the
    /// same owner (extending it), else creates a new session. A malformed
    /// `resume` is an error and creates nothing.
    pub fn start(&self, owner: &str, resume: &str, peer: PeerInfo) -> Result<(Uuid, Duration), SessionError> {
        let now = Instant::now();
        let resume = if resume.is_empty() { None } else { Some(parse_id(resume)?) };
        let mut st = self.inner.state.lock();
        if let Some(id) = resume
            && let Some(window) = Self::touch(&mut st, id, owner, now, Some(peer.clone()))
        {
            return Ok((id, window));
        }
        let mut id = Uuid::new_v4();
        while st.sessions.contains_key(&id) {
            id = Uuid::new_v4();
        }
        let window = self.inner.window;
        let deadline = now + window;
        let first = st.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        st.sessions.insert(id, Session { owner: owner.to_owned(), deadline, window, peer });
        st.deadlines.insert((deadline, id));
        drop(st);
        if first {
            self.inner.wake.notify_one();
        }
        Ok((id, window))
    }

    /// Pushes a live session's deadline out; `None` when it is unknown,
    /// lapsed or owned by someone else.
    fn touch(st: &mut State, id: Uuid, owner: &str, now: Instant, peer: Option<PeerInfo>) -> Option<Duration> {
        let session = st.sessions.get_mut(&id)?;
        if session.deadline <= now || !owners_match(&session.owner, owner) {
            return None;
        }
        let old = session.deadline;
        session.deadline = now + session.window;
        if let Some(peer) = peer {
            session.peer = peer;
        }
        let (new, window) = (session.deadline, session.window);
        st.deadlines.remove(&(old, id));
        st.deadlines.insert((new, id));
        Some(window)
    }

    /// `SendSessionHeartbeat` (and the implicit heartbeat of a monitored call).
    pub fn heartbeat(&self, id: &str, owner: &str, peer: Option<PeerInfo>) -> Result<Uuid, SessionError> {
        let id = parse_id(id)?;
        let mut st = self.inner.state.lock();
        Self::touch(&mut st, id, owner, Instant::now(), peer).map(|_| id).ok_or(SessionError::Expired)
    }

    /// Ends a session now, as if its deadline had passed (an operator kicking
    /// a client): its resources are stopped by the expiry task. False when
    /// the session does not exist.
    pub fn expire_now(&self, id: Uuid) -> bool {
        let now = Instant::now();
        let mut st = self.inner.state.lock();
        let Some(session) = st.sessions.get_mut(&id) else {
            return false;
        };
        let old = std::mem::replace(&mut session.deadline, now);
        st.deadlines.remove(&(old, id));
        st.deadlines.insert((now, id));
        drop(st);
        self.inner.wake.notify_one();
        true
    }

    /// Records the last caller of `resource`: a session, or `None` for a
    /// sessionless call (which disassociates the resource).
    pub fn associate(&self, resource: &str, session: Option<Uuid>) {
        self.associate_caller(resource, session.map(Caller::Session));
    }

    /// Records any kind of last caller (`None`: nobody to stop it for).
    pub fn associate_caller(&self, resource: &str, caller: Option<Caller>) {
        let mut st = self.inner.state.lock();
        match caller {
            Some(c) => {
                st.last_caller.insert(resource.to_owned(), c);
            }
            None => {
                st.last_caller.remove(resource);
            }
        }
    }

    /// The session that last called a monitored method on `resource`.
    pub fn last_caller(&self, resource: &str) -> Option<Uuid> {
        match self.inner.state.lock().last_caller.get(resource) {
            Some(Caller::Session(id)) => Some(*id),
            _ => None,
        }
    }

    /// The last caller of `resource`, of any kind.
    pub fn last_caller_of(&self, resource: &str) -> Option<Caller> {
        self.inner.state.lock().last_caller.get(resource).copied()
    }

    /// A peer connection died: returns (and forgets) the resources whose
    /// last caller was a sessionless call on it, sorted. The caller stops them.
    pub fn connection_closed(&self, connection: u64) -> Vec<String> {
        let mut st = self.inner.state.lock();
        let mut out = Vec::new();
        st.last_caller.retain(|resource, c| {
            if *c == Caller::Connection(connection) {
                out.push(resource.clone());
                false
            } else {
                true
            }
        });
        out.sort();
        out
    }

    /// Whether `id` is a live session of `owner`.
    pub fn is_owner(&self, id: Uuid, owner: &str) -> bool {
        let now = Instant::now();
        self.inner.state.lock().sessions.get(&id).is_some_and(|s| s.deadline > now && owners_match(&s.owner, owner))
    }

    /// Every live session, of every owner (`GetSessions` shows the ids of the
    /// caller's own only).
    pub fn list(&self) -> Vec<SessionInfo> {
        let now = Instant::now();
        let st = self.inner.state.lock();
        st.sessions
            .iter()
            .filter(|(_, s)| s.deadline > now)
            .map(|(id, s)| SessionInfo {
                id: *id,
                owner: s.owner.clone(),
                window: s.window,
                peer: s.peer.clone(),
                deadline: s.deadline,
            })
            .collect()
    }

    /// Number of live (not yet reaped) sessions.
    pub fn len(&self) -> usize {
        self.inner.state.lock().sessions.len()
    }

    /// True when no session exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every session whose deadline is at or before `now`.
    fn reap(st: &mut State, now: Instant) -> Vec<Expired> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = st.deadlines.first() {
            if deadline > now {
                break;
            }
            st.deadlines.pop_first();
            if let Some(s) = st.sessions.remove(&id) {
                out.push(Expired { id, owner: s.owner, peer: s.peer, resources: Vec::new(), deadline });
            }
        }
        if !out.is_empty() {
            let ids: HashMap<Uuid, usize> = out.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
            st.last_caller.retain(|resource, caller| match caller {
                Caller::Session(sid) => match ids.get(sid) {
                    Some(&i) => {
                        out[i].resources.push(resource.clone());
                        false
                    }
                    None => true,
                },
                Caller::Connection(_) => true,
            });
            for e in &mut out {
                e.resources.sort();
            }
        }
        out
    }
}

async fn expiry_task(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut st = inner.state.lock();
            let expired = SessionManager::reap(&mut st, Instant::now());
            let next = st.deadlines.first().map(|(d, _)| *d);
            drop(st);
            for e in expired {
                tracing::info!(
                    session = %e.id,
                    webrtc = e.peer.webrtc,
                    remote = ?e.peer.remote,
                    resources = ?e.resources,
                    "session expired"
                );
                (inner.on_expiry)(e);
            }
            next
        };
        // Sleep until the earliest deadline, or until a session gets a
        // deadline earlier than any known one.
        match next {
            Some(until) => tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = inner.wake.notified() => {}
            },
            None => inner.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2000);

    fn peer() -> PeerInfo {
        PeerInfo::default()
    }

    #[tokio::test(start_paused = true)]
    async fn expires_exactly_at_deadline_and_stops_last_callers() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let start = Instant::now();
        let (id, window) = m.start("", "", peer()).unwrap();
        assert_eq!(window, W);
        m.associate("motor1", Some(id));
        m.associate("base1", Some(id));
        let e = rx.recv().await.unwrap();
        let elapsed = Instant::now() - start;
        assert!(elapsed >= W && elapsed <= W + Duration::from_millis(2), "expired after {elapsed:?}");
        assert_eq!(e.id, id);
        assert_eq!(e.resources, vec!["base1".to_string(), "motor1".to_string()]);
        assert!(m.is_empty());
        assert_eq!(m.last_caller("motor1"), None);
        assert_eq!(m.heartbeat(&id.to_string(), "", None), Err(SessionError::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_session_alive() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let (id, _) = m.start("", "", peer()).unwrap();
        for _ in 0..20 {
            tokio::time::sleep(W / 2).await;
            m.heartbeat(&id.to_string(), "", None).unwrap();
        }
        assert!(rx.try_recv().is_err());
        let before = Instant::now();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.id, id);
        assert!(Instant::now() - before <= W + Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn resume_returns_same_id_only_for_live_same_owner() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let (id, _) = m.start("alice", "", peer()).unwrap();
        tokio::time::sleep(W - Duration::from_millis(10)).await;
        let (again, _) = m.start("alice", &id.to_string(), peer()).unwrap();
        assert_eq!(again, id);
        // Someone else resuming alice's session gets a fresh one.
        let (other, _) = m.start("bob", &id.to_string(), peer()).unwrap();
        assert_ne!(other, id);
        assert_eq!(m.heartbeat(&id.to_string(), "bob", None), Err(SessionError::Expired));
        assert!(m.heartbeat(&id.to_string(), "alice", None).is_ok());
        // Malformed resume creates nothing.
        let n = m.len();
        assert!(matches!(m.start("alice", "not-a-uuid", peer()), Err(SessionError::Malformed(_))));
        assert_eq!(m.len(), n);
        // After lapsing, resume makes a new session.
        let lapsed = rx.recv().await.unwrap();
        assert!(lapsed.id == id || lapsed.id == other);
        tokio::time::sleep(W * 2).await;
        let (fresh, _) = m.start("alice", &id.to_string(), peer()).unwrap();
        assert_ne!(fresh, id);
    }

    #[tokio::test(start_paused = true)]
    async fn last_caller_is_overwritten_and_cleared() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let (a, _) = m.start("", "", peer()).unwrap();
        let (b, _) = m.start("", "", peer()).unwrap();
        m.associate("motor1", Some(a));
        m.associate("motor1", Some(b));
        m.associate("arm1", Some(a));
        m.associate("arm1", None);
        assert_eq!(m.last_caller("motor1"), Some(b));
        assert_eq!(m.last_caller("arm1"), None);
        // Keep b alive, let a lapse: nothing of a's is stopped.
        tokio::time::sleep(W / 2).await;
        m.heartbeat(&b.to_string(), "", None).unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.id, a);
        assert!(e.resources.is_empty());
        let e = rx.recv().await.unwrap();
        assert_eq!(e.id, b);
        assert_eq!(e.resources, vec!["motor1".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn sessionless_webrtc_callers_are_stopped_with_their_connection() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let (s, _) = m.start("", "", peer()).unwrap();
        m.associate_caller("motor1", Some(Caller::Connection(7)));
        m.associate_caller("motor2", Some(Caller::Connection(8)));
        m.associate_caller("base1", Some(Caller::Connection(7)));
        // A later session call takes base1 over.
        m.associate("base1", Some(s));
        assert_eq!(m.connection_closed(7), vec!["motor1".to_string()]);
        assert_eq!(m.connection_closed(7), Vec::<String>::new());
        assert_eq!(m.last_caller_of("motor2"), Some(Caller::Connection(8)));
        // Session expiry does not touch connection-owned resources.
        let e = rx.recv().await.unwrap();
        assert_eq!(e.resources, vec!["base1".to_string()]);
        assert_eq!(m.last_caller_of("motor2"), Some(Caller::Connection(8)));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_ids() {
        let (m, _rx) = SessionManager::with_channel(W);
        assert!(matches!(m.heartbeat("xyz", "", None), Err(SessionError::Malformed(_))));
        let unknown = Uuid::new_v4().to_string();
        assert_eq!(m.heartbeat(&unknown, "", None), Err(SessionError::Expired));
        let status: tonic::Status = SessionError::Expired.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "SESSION_EXPIRED");
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_sessions_expire_on_time() {
        let (m, mut rx) = SessionManager::with_channel(W);
        let start = Instant::now();
        let mut ids = Vec::new();
        for i in 0..10_000 {
            let (id, _) = m.start(&format!("owner{}", i % 7), "", peer()).unwrap();
            m.associate(&format!("motor{i}"), Some(id));
            ids.push(id);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.list().len(), 10_000);
        // Keep the even ones alive past the first window.
        tokio::time::sleep(W / 2).await;
        for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            m.heartbeat(&id.to_string(), &format!("owner{}", i % 7), None).unwrap();
        }
        let mut lapsed = 0;
        while lapsed < 5_000 {
            let e = rx.recv().await.unwrap();
            assert!(Instant::now() - start <= W + Duration::from_millis(2));
            assert_eq!(e.resources.len(), 1);
            lapsed += 1;
        }
        assert_eq!(m.len(), 5_000);
        for _ in 0..5_000 {
            rx.recv().await.unwrap();
        }
        assert!(m.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_shorter_deadline_wakes_the_expiry_task() {
        // The task is asleep on no deadline at all; a new session must still
        // expire on time.
        let (m, mut rx) = SessionManager::with_channel(Duration::from_millis(30));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let (id, _) = m.start("", "", peer()).unwrap();
        let e = rx.recv().await.unwrap();
        assert_eq!(e.id, id);
        assert!(Instant::now() - t <= Duration::from_millis(32));
    }
}
