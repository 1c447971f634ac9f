//! What the control page's connection view shows: the machine's clients
//! (transport, ICE pair, remote address, session or sessionless, heartbeat
//! age against the window) and its recent safety stops, as the JSON of
//! `GET /tether/status` (see [`crate::page`]).
//!
//! Clients are recorded from the calls themselves (a `map_request` in front
//! of the routes, after authentication, so only authenticated callers are
//! listed) and from the answerer's peer events. Session ids never leave the
//! machine: a session is shown by its transport, address and heartbeat age,
//! and only the caller's own session (named in its `viam-sid` header and
//! owned by its identity) is marked `yours`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tether_signaling::answerer::PeerEvent;
use tether_transport::server::{ConnectionInfo, TransportKind};
use tokio::time::Instant;

use crate::SafetyStop;
use crate::session::SessionManager;

/// Most connections tracked at once; past it the one idle longest is dropped.
pub const MAX_TRACKED: usize = 1024;
/// A gRPC / gRPC-Web connection is listed while its last call is this recent
/// (the Viam TypeScript SDK checks its connection every 10 s).
pub const GRPC_IDLE: Duration = Duration::from_secs(30);
/// Safety stops kept for the page.
pub const MAX_STOPS: usize = 32;

struct Conn {
    webrtc: bool,
    remote: Option<SocketAddr>,
    opened: Instant,
    last_call: Option<Instant>,
    calls: u64,
    ice_pair: Option<String>,
}

struct Stop {
    at: SystemTime,
    resource: String,
    cause: &'static str,
    delay: Duration,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    stops: VecDeque<Stop>,
}

/// The machine's record of its clients and safety stops; cheap to clone.
#[derive(Clone, Default)]
pub struct Status(Arc<Mutex<State>>);

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status").finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

impl Status {
    /// Records one call from the connection `info`. A WebRTC peer is listed
    /// from its `Opened` event to its `Closed` one only (a call racing the
    /// close cannot bring it back).
    pub fn record_call(&self, info: &ConnectionInfo) {
        let now = Instant::now();
        let mut st = self.0.lock();
        if info.kind == TransportKind::WebRtc && !st.conns.contains_key(&info.id) {
            return;
        }
        if !st.conns.contains_key(&info.id) && st.conns.len() >= MAX_TRACKED {
            prune(&mut st, now);
            if st.conns.len() >= MAX_TRACKED {
                let idlest = st.conns.iter().min_by_key(|(_, c)| c.last_call.unwrap_or(c.opened)).map(|(id, _)| *id);
                if let Some(id) = idlest {
                    st.conns.remove(&id);
                }
            }
        }
        let conn = st.conns.entry(info.id).or_insert_with(|| Conn {
            webrtc: info.kind == TransportKind::WebRtc,
            remote: info.remote,
            opened: now,
            last_call: None,
            calls: 0,
            ice_pair: None,
        });
        conn.last_call = Some(now);
        conn.calls += 1;
    }

    /// Follows the answerer's peer connections.
    pub fn peer_event(&self, event: &PeerEvent) {
        let mut st = self.0.lock();
        match event {
            PeerEvent::Opened(info, pair) => {
                let ice_pair = pair.as_ref().map(|p| format!("{}/{}", p.local_type, p.remote_type));
                let c = st.conns.entry(info.id).or_insert_with(|| Conn {
                    webrtc: true,
                    remote: info.remote,
                    opened: Instant::now(),
                    last_call: None,
                    calls: 0,
                    ice_pair: None,
                });
                c.ice_pair = ice_pair;
            }
            PeerEvent::Closed(info) => {
                st.conns.remove(&info.id);
            }
        }
    }

    /// Records a safety stop.
    pub fn record_stop(&self, stop: &SafetyStop) {
        let mut st = self.0.lock();
        if st.stops.len() >= MAX_STOPS {
            st.stops.pop_front();
        }
        let cause = if stop.session.is_some() { "session lapsed" } else { "peer connection lost" };
        st.stops.push_back(Stop { at: SystemTime::now(), resource: stop.resource.clone(), cause, delay: stop.delay });
    }

    /// The JSON of `GET /tether/status` for a caller authenticated as
    /// `entity` (`None` on an open machine) whose own session is `own_sid`.
    pub fn snapshot(&self, sessions: &SessionManager, entity: Option<&str>, own_sid: Option<&str>) -> Value {
        let now = Instant::now();
        let own = own_sid.and_then(|s| crate::session::parse_id(s).ok());
        let mut st = self.0.lock();
        prune(&mut st, now);
        let mut live = sessions.list();
        let mut clients = Vec::new();
        let mut conns: Vec<(&u64, &Conn)> = st.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        for (_, c) in conns {
            // A session belongs to the connection its last heartbeat came over.
            let pos =
                live.iter().position(|s| s.peer.webrtc == c.webrtc && c.remote.is_some() && s.peer.remote == c.remote);
            let session = pos.map(|i| live.swap_remove(i));
            clients.push(json!({
                "transport": if c.webrtc { "webrtc" } else { "grpc" },
                "remote": c.remote.map(|a| a.to_string()),
                "ice_pair": c.ice_pair,
                "connected_ms": ms(now.saturating_duration_since(c.opened)),
                "last_call_ms": c.last_call.map(|t| ms(now.saturating_duration_since(t))),
                "calls": c.calls,
                "session": session.as_ref().map(|s| session_json(s, now, entity, own)),
            }));
        }
        // Sessions whose connection is not (or no longer) tracked.
        for s in &live {
            clients.push(json!({
                "transport": if s.peer.webrtc { "webrtc" } else { "grpc" },
                "remote": s.peer.remote.map(|a| a.to_string()),
                "ice_pair": null,
                "connected_ms": null,
                "last_call_ms": null,
                "calls": null,
                "session": session_json(s, now, entity, own),
            }));
        }
        let stops: Vec<Value> = st
            .stops
            .iter()
            .rev()
            .map(|s| {
                json!({
                    "at_unix_ms": s.at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
                    "resource": s.resource,
                    "cause": s.cause,
                    "delay_ms": ms(s.delay),
                })
            })
            .collect();
        json!({
            "heartbeat_window_ms": ms(sessions.window()),
            "clients": clients,
            "safety_stops": stops,
        })
    }
}

fn session_json(s: &crate::session::SessionInfo, now: Instant, entity: Option<&str>, own: Option<uuid::Uuid>) -> Value {
    let age = s.window.saturating_sub(s.deadline.saturating_duration_since(now));
    json!({
        "heartbeat_age_ms": ms(age),
        "window_ms": ms(s.window),
        "yours": own == Some(s.id) && entity.is_none_or(|e| e == s.owner),
    })
}

/// Drops gRPC connections idle for [`GRPC_IDLE`] (their close is not seen
/// here; WebRTC peers leave on their `Closed` event).
fn prune(st: &mut State, now: Instant) {
    st.conns.retain(|_, c| c.webrtc || now.saturating_duration_since(c.last_call.unwrap_or(c.opened)) < GRPC_IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::PeerInfo;

    fn info(id: u64, kind: TransportKind, remote: &str) -> ConnectionInfo {
        ConnectionInfo { kind, remote: Some(remote.parse().unwrap()), local: None, id }
    }

    #[tokio::test(start_paused = true)]
    async fn lists_clients_sessions_and_stops_without_session_ids() {
        let (sessions, _expired) = SessionManager::with_channel(Duration::from_secs(2));
        let status = Status::default();
        let grpc = info(1, TransportKind::Grpc, "10.0.0.1:5000");
        let rtc = info(2, TransportKind::WebRtc, "10.0.0.2:6000");
        status.record_call(&grpc);
        let pair = tether_transport::webrtc::SelectedPair {
            local: None,
            remote: None,
            local_type: "host".into(),
            remote_type: "prflx".into(),
        };
        status.peer_event(&PeerEvent::Opened(rtc.clone(), Some(pair)));
        status.record_call(&rtc);
        let peer = PeerInfo { webrtc: true, remote: rtc.remote, local: None };
        let (mine, _) = sessions.start("alice", "", peer.clone()).unwrap();
        let (theirs, _) = sessions.start("bob", "", PeerInfo { webrtc: false, remote: None, local: None }).unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        status.record_stop(&SafetyStop {
            session: Some(theirs),
            connection: None,
            resource: "motor1".into(),
            delay: Duration::from_millis(3),
        });

        let snap = status.snapshot(&sessions, Some("alice"), Some(&mine.to_string()));
        let text = snap.to_string();
        assert!(!text.contains(&mine.to_string()) && !text.contains(&theirs.to_string()), "{text}");
        let clients = snap["clients"].as_array().unwrap();
        assert_eq!(clients.len(), 3, "{text}");
        assert_eq!(clients[0]["transport"], "grpc");
        assert_eq!(clients[0]["session"], Value::Null);
        assert_eq!(clients[1]["transport"], "webrtc");
        assert_eq!(clients[1]["ice_pair"], "host/prflx");
        assert_eq!(clients[1]["remote"], "10.0.0.2:6000");
        assert_eq!(clients[1]["session"]["yours"], true);
        assert_eq!(clients[1]["session"]["heartbeat_age_ms"], 500.0);
        assert_eq!(clients[1]["session"]["window_ms"], 2000.0);
        assert_eq!(clients[2]["session"]["yours"], false);
        assert_eq!(snap["safety_stops"][0]["resource"], "motor1");
        assert_eq!(snap["safety_stops"][0]["cause"], "session lapsed");
        assert_eq!(snap["safety_stops"][0]["delay_ms"], 3.0);

        // Another identity naming alice's session is not told it is theirs.
        let snap = status.snapshot(&sessions, Some("bob"), Some(&mine.to_string()));
        assert_eq!(snap["clients"][1]["session"]["yours"], false);

        // A closed peer leaves (a late call does not bring it back); an idle gRPC connection ages out.
        status.peer_event(&PeerEvent::Closed(rtc.clone()));
        status.record_call(&rtc);
        tokio::time::advance(GRPC_IDLE).await;
        let snap = status.snapshot(&sessions, None, None);
        assert_eq!(snap["clients"], json!([]), "{snap}");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let status = Status::default();
        for id in 0..(MAX_TRACKED as u64 + 50) {
            status.record_call(&info(id, TransportKind::Grpc, "10.0.0.1:1"));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(status.0.lock().conns.len(), MAX_TRACKED);
        for _ in 0..(MAX_STOPS + 5) {
            status.record_stop(&SafetyStop {
                session: None,
                connection: Some(1),
                resource: "m".into(),
                delay: Duration::ZERO,
            });
        }
        assert_eq!(status.0.lock().stops.len(), MAX_STOPS);
    }
}
