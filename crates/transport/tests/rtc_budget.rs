//! Memory budgets of the data-channel transport, between in-process peers on
//! loopback: a raw caller sends partial request messages (packets without
//! `eom`) and the served peer drops the largest over its own budget and over
//! the machine-wide one (RESOURCE_EXHAUSTED), resets a partial message that
//! stops making progress (DEADLINE_EXCEEDED), and every other stream and the
//! connection go on.

mod common;

use common::*;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_transport::server::{ConnectionInfo, TransportKind};
use tether_transport::webrtc::peer::PeerOptions;
use tether_transport::webrtc::serve::PartialBudget;
use tether_transport::webrtc::{RawChannel, RtcOptions, RtcPeer};
use tether_wire::Code;
use tether_wire::framing::Limits;

const KIB: usize = 1024;
const CHUNK: usize = 16 * KIB;

/// A raw caller connected to a peer serving the echo service with `limits`
/// and `budget`.
async fn connect(id: u64, limits: Limits, budget: Arc<PartialBudget>) -> (Caller, RtcPeer, RtcPeer) {
    let options = PeerOptions::default().with_ice_servers(vec![]);
    let caller = RtcPeer::new(&options, RtcOptions::default()).await.unwrap();
    let answerer = RtcPeer::new(&options, RtcOptions::default()).await.unwrap();
    let info = ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id };
    answerer.serve_with_budget(echo_service(), info, None, limits, budget);
    let raw = caller.raw();
    let answer = answerer.accept_offer(caller.create_offer().unwrap()).unwrap();
    caller.accept_answer(answer).unwrap();
    trickle(caller.clone(), answerer.clone());
    trickle(answerer.clone(), caller.clone());
    (Caller { raw, trailers: HashMap::new() }, caller, answerer)
}

/// A caller speaking the framing by hand.
struct Caller {
    raw: RawChannel,
    /// Final status per stream, as received.
    trailers: HashMap<u64, (i32, String)>,
}

impl Caller {
    async fn send(&self, stream: u64, r#type: pb::request::Type) {
        let frame = pb::Request { stream: Some(pb::Stream { id: stream }), r#type: Some(r#type) };
        self.raw.send(Bytes::from(frame.encode_to_vec())).await.expect("channel open");
    }

    async fn start(&self, stream: u64) {
        let headers = pb::RequestHeaders { method: "/test.Echo/Echo".into(), metadata: None, timeout: None };
        self.send(stream, pb::request::Type::Headers(headers)).await;
    }

    /// `len` bytes of a message in 16 KiB packets; `end` finishes the
    /// message and the request.
    async fn data(&self, stream: u64, len: usize, end: bool) {
        let mut left = len;
        while left > 0 || end {
            let n = left.min(CHUNK);
            left -= n;
            let last = end && left == 0;
            let packet = pb::PacketMessage { data: vec![7; n], eom: last };
            let m = pb::RequestMessage { has_message: true, packet_message: Some(packet), eos: last };
            self.send(stream, pb::request::Type::Message(m)).await;
            if left == 0 {
                break;
            }
        }
    }

    /// A whole call: headers, one small message, end.
    async fn call(&self, stream: u64) {
        self.start(stream).await;
        self.data(stream, 100, true).await;
    }

    /// Reads responses until `stream` has its trailers (at most `limit`).
    async fn status(&mut self, stream: u64, limit: Duration) -> (i32, String) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.trailers.contains_key(&stream) {
            let Ok(Some(bytes)) = tokio::time::timeout_at(deadline, self.raw.recv()).await else {
                panic!("no trailers for stream {stream} within {limit:?}; got {:?}", self.trailers);
            };
            let response = pb::Response::decode(bytes).expect("a response frame");
            let id = response.stream.map(|s| s.id).unwrap_or_default();
            if let Some(pb::response::Type::Trailers(t)) = response.r#type {
                let status = t.status.map(|s| (s.code, s.message)).unwrap_or((0, String::new()));
                self.trailers.insert(id, status);
            }
        }
        self.trailers[&stream].clone()
    }
}

const ANSWER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_peers_budget_the_largest_partial_message_is_dropped() {
    let limits = Limits::default().with_max_partial_bytes(1024 * KIB);
    let budget = PartialBudget::new(64 << 20);
    let (mut c, _caller, _answerer) = connect(1, limits, budget.clone()).await;
    for stream in [1, 2, 3] {
        c.start(stream).await;
    }
    c.data(1, 600 * KIB, false).await;
    c.data(2, 300 * KIB, false).await;
    // Stream 3's 200 KiB take the peer over 1 MiB: stream 1 (the largest) goes.
    c.data(3, 200 * KIB, false).await;
    let (code, message) = c.status(1, ANSWER).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(message.contains("on this connection exceed 1048576 bytes"), "{message}");
    // The others finish, and new calls work on the same connection.
    c.data(2, 10, true).await;
    c.data(3, 10, true).await;
    assert_eq!(c.status(2, ANSWER).await.0, 0);
    assert_eq!(c.status(3, ANSWER).await.0, 0);
    c.call(5).await;
    assert_eq!(c.status(5, ANSWER).await.0, 0);
    assert_eq!(budget.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_machine_budget_the_largest_partial_message_of_any_peer_is_dropped() {
    let budget = PartialBudget::new(1024 * KIB);
    let (mut a, _ca, _aa) = connect(11, Limits::default(), budget.clone()).await;
    let (mut b, _cb, _ab) = connect(12, Limits::default(), budget.clone()).await;
    a.start(1).await;
    b.start(1).await;
    a.data(1, 700 * KIB, false).await;
    // Wait until the machine counts a's bytes, so that b's push goes over.
    let started = Instant::now();
    while budget.used() < 700 * KIB {
        assert!(started.elapsed() < ANSWER, "a's partial message never counted: {}", budget.used());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.data(1, 500 * KIB, false).await;
    // a holds the largest: its stream is reset, on the other peer's push.
    let (code, message) = a.status(1, ANSWER).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(message.contains("on this machine exceed 1048576 bytes"), "{message}");
    // b's message completes; both connections keep serving.
    b.data(1, 10, true).await;
    assert_eq!(b.status(1, ANSWER).await.0, 0);
    a.call(3).await;
    b.call(3).await;
    assert_eq!(a.status(3, ANSWER).await.0, 0);
    assert_eq!(b.status(3, ANSWER).await.0, 0);
    assert_eq!(budget.used(), 0);
    assert_eq!(budget.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_message_without_progress_is_reset_and_the_rest_goes_on() {
    let stall = Duration::from_secs(2);
    let limits = Limits::default().with_partial_stall(stall);
    let budget = PartialBudget::new(64 << 20);
    let (mut c, _caller, _answerer) = connect(21, limits, budget.clone()).await;
    c.start(1).await;
    c.start(2).await;
    let started = Instant::now();
    c.data(1, 100 * KIB, false).await;
    // Stream 2 trickles a packet every 500 ms for 4 s: slow, never stalled.
    let trickler = Caller { raw: c.raw.clone(), trailers: HashMap::new() };
    let trickling = tokio::spawn(async move {
        for _ in 0..8 {
            trickler.data(2, KIB, false).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let (code, message) = c.status(1, ANSWER).await;
    let after = started.elapsed();
    trickling.await.expect("trickling");
    assert!(!c.trailers.contains_key(&2), "the trickling stream was reset: {:?}", c.trailers.get(&2));
    println!("a partial message silent for {stall:?} was reset {after:.2?} after its last packet");
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("no progress for 2s"), "{message}");
    // Reset at its deadline (looked at least every second), plus slack.
    assert!(after >= stall && after < stall + Duration::from_millis(1500), "reset after {after:?}");
    c.data(2, KIB, true).await;
    assert_eq!(c.status(2, ANSWER).await.0, 0);
    c.call(3).await;
    assert_eq!(c.status(3, ANSWER).await.0, 0);
    assert_eq!(budget.stalled.load(std::sync::atomic::Ordering::Relaxed), 1);
}
