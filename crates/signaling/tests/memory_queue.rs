//! Tests of the in-memory call queue through the `CallQueue` trait.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::IceCandidate;
use tether_signaling::{AnswererEvent, CallQueue, CallerEvent, MemoryQueue, OfferInit, QueueError};

const WAIT: Duration = Duration::from_secs(5);

fn offer(host: &str, sdp: &str, ttl: Duration) -> OfferInit {
    OfferInit { host: host.into(), sdp: sdp.into(), disable_trickle: false, ttl, caller: None, address: None }
}

fn cand(s: &str) -> IceCandidate {
    IceCandidate { candidate: s.into(), ..Default::default() }
}

fn err(msg: &str) -> RpcStatus {
    RpcStatus { code: 2, message: msg.into(), details: vec![] }
}

#[tokio::test]
async fn each_offer_is_claimed_exactly_once() {
    let queue = Arc::new(MemoryQueue::new());
    let q: Arc<dyn CallQueue> = queue.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let q = q.clone();
        let tx = tx.clone();
        workers.push(tokio::spawn(async move {
            let mut session = q.register_answerer(vec!["h".into()]).await.unwrap();
            loop {
                let ex = session.recv_offer().await.unwrap();
                ex.responder.respond(AnswererEvent::Answer(format!("answer-{}", ex.offer.sdp))).await.unwrap();
                ex.responder.respond(AnswererEvent::Done).await.unwrap();
                if tx.send(ex.offer.uuid.clone()).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut callers = Vec::new();
    for i in 0..50 {
        let q = q.clone();
        callers.push(tokio::spawn(async move {
            let mut h = q.send_offer(offer("h", &i.to_string(), WAIT)).await.unwrap();
            assert_eq!(h.events.next().await, Some(AnswererEvent::Answer(format!("answer-{i}"))));
            assert_eq!(h.events.next().await, Some(AnswererEvent::Done));
            assert_eq!(h.events.next().await, None);
            q.send_caller_event("h", &h.offer.uuid, CallerEvent::Done).await.unwrap();
            h.offer.uuid
        }));
    }
    let mut expected = HashSet::new();
    for c in callers {
        expected.insert(tokio::time::timeout(WAIT, c).await.unwrap().unwrap());
    }
    let mut claimed = Vec::new();
    for _ in 0..50 {
        claimed.push(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap());
    }
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), 50, "an offer was claimed twice");
    assert_eq!(unique, expected);
    assert!(tokio::time::timeout(Duration::from_millis(50), rx.recv()).await.is_err(), "extra claim");
    for w in workers {
        w.abort();
    }
    assert_eq!(queue.stats().offers, 0);
}

#[tokio::test]
async fn offers_only_go_to_answerers_of_their_host() {
    let q = MemoryQueue::new();
    let mut a = q.register_answerer(vec!["a".into()]).await.unwrap();
    let mut ab = q.register_answerer(vec!["x".into(), "b".into()]).await.unwrap();
    let _hb = q.send_offer(offer("b", "for-b", WAIT)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(50), a.recv_offer()).await.is_err());
    let ex = tokio::time::timeout(WAIT, ab.recv_offer()).await.unwrap().unwrap();
    assert_eq!(ex.offer.sdp, "for-b");
    assert_eq!(ex.offer.host, "b");
}

#[tokio::test]
async fn recv_offer_is_cancel_safe_and_caller_events_are_buffered() {
    let q = MemoryQueue::new();
    let mut s = q.register_answerer(vec!["h".into()]).await.unwrap();
    // Cancel a few waits.
    for _ in 0..3 {
        assert!(tokio::time::timeout(Duration::from_millis(10), s.recv_offer()).await.is_err());
    }
    let h = q.send_offer(offer("h", "o", WAIT)).await.unwrap();
    // The caller trickles before anybody claimed the offer.
    q.send_caller_event("h", &h.offer.uuid, CallerEvent::Candidate(cand("c1"))).await.unwrap();
    q.send_caller_event("h", &h.offer.uuid, CallerEvent::Candidate(cand("c2"))).await.unwrap();
    q.send_caller_event("h", &h.offer.uuid, CallerEvent::Done).await.unwrap();
    // A caller error after done is ignored.
    q.send_caller_event("h", &h.offer.uuid, CallerEvent::Error(err("late"))).await.unwrap();
    // Wrong host = unknown offer.
    assert!(matches!(
        q.send_caller_event("other", &h.offer.uuid, CallerEvent::Done).await,
        Err(QueueError::NoActiveOffer(_))
    ));

    let mut ex = tokio::time::timeout(WAIT, s.recv_offer()).await.unwrap().unwrap();
    assert_eq!(ex.offer.uuid, h.offer.uuid);
    let got: Vec<CallerEvent> = ex.caller_events.by_ref().collect().await;
    assert_eq!(got, vec![CallerEvent::Candidate(cand("c1")), CallerEvent::Candidate(cand("c2")), CallerEvent::Done]);
    ex.responder.respond(AnswererEvent::Answer("a".into())).await.unwrap();
    ex.responder.respond(AnswererEvent::Done).await.unwrap();
    // Both sides done: gone.
    assert_eq!(q.stats().offers, 0);
    assert!(matches!(
        q.send_caller_event("h", &h.offer.uuid, CallerEvent::Candidate(cand("x"))).await,
        Err(QueueError::NoActiveOffer(_))
    ));
}

#[tokio::test]
async fn unclaimed_offer_withdrawn_by_caller_error_is_not_delivered() {
    let q = MemoryQueue::new();
    let h = q.send_offer(offer("h", "o", WAIT)).await.unwrap();
    q.send_caller_event("h", &h.offer.uuid, CallerEvent::Error(err("caller went away"))).await.unwrap();
    assert_eq!(q.stats().offers, 0);
    let mut s = q.register_answerer(vec!["h".into()]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(50), s.recv_offer()).await.is_err());
}

#[tokio::test]
async fn answerer_going_away_ends_the_exchange() {
    let q = MemoryQueue::new();
    let mut s = q.register_answerer(vec!["h".into()]).await.unwrap();
    let mut h = q.send_offer(offer("h", "o", WAIT)).await.unwrap();
    let ex = s.recv_offer().await.unwrap();
    drop(ex);
    assert_eq!(tokio::time::timeout(WAIT, h.events.next()).await.unwrap(), None);
    assert_eq!(q.stats().offers, 0);
}

#[tokio::test]
async fn answerer_error_ends_the_exchange_for_both_sides() {
    let q = MemoryQueue::new();
    let mut s = q.register_answerer(vec!["h".into()]).await.unwrap();
    let mut h = q.send_offer(offer("h", "o", WAIT)).await.unwrap();
    let mut ex = s.recv_offer().await.unwrap();
    ex.responder.respond(AnswererEvent::Error(err("no"))).await.unwrap();
    assert_eq!(h.events.next().await, Some(AnswererEvent::Error(err("no"))));
    assert_eq!(h.events.next().await, None);
    assert_eq!(ex.caller_events.next().await, None);
    assert_eq!(q.stats().offers, 0);
}

#[tokio::test]
async fn expired_offers_are_removed_and_streams_end() {
    let q = MemoryQueue::new();
    let _s = q.register_answerer(vec!["busy".into()]).await.unwrap();
    let mut h = q.send_offer(offer("busy", "o", Duration::from_millis(50))).await.unwrap();
    assert_eq!(q.stats().offers, 1);
    // Nobody claims it; the janitor (or lazy sweep) drops it shortly after the deadline.
    assert_eq!(tokio::time::timeout(WAIT, h.events.next()).await.unwrap(), None);
    assert_eq!(q.stats().offers, 0);
    assert_eq!(q.stats().pending, 0);
}

#[tokio::test]
async fn online_tracking_with_grace() {
    let q = MemoryQueue::with_online_grace(Duration::from_millis(100));
    assert!(!q.is_answerer_online("h").await);
    let s1 = q.register_answerer(vec!["h".into(), "h2".into()]).await.unwrap();
    let s2 = q.register_answerer(vec!["h".into()]).await.unwrap();
    assert!(q.is_answerer_online("h").await);
    assert!(q.is_answerer_online("h2").await);
    assert!(!q.is_answerer_online("h3").await);
    drop(s1);
    assert!(q.is_answerer_online("h").await);
    drop(s2);
    // Within the grace period: still online.
    assert!(q.is_answerer_online("h").await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!q.is_answerer_online("h").await);
    assert!(!q.is_answerer_online("h2").await);
    let stats = q.stats();
    assert_eq!((stats.sessions, stats.tracked_hosts), (0, 0));
}

#[tokio::test]
async fn events_per_offer_are_bounded() {
    let q = MemoryQueue::new();
    let h = q.send_offer(offer("h", "o", WAIT)).await.unwrap();
    let mut last = Ok(());
    for i in 0..=tether_signaling::MAX_EVENTS_PER_SIDE {
        last = q.send_caller_event("h", &h.offer.uuid, CallerEvent::Candidate(cand(&i.to_string()))).await;
    }
    assert!(matches!(last, Err(QueueError::TooManyUpdates(_))));
}
