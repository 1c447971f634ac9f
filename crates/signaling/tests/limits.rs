//! What one caller may cost a signaler: the caps on pending offers per host
//! and exchanges per caller address (on by default), the size limits of SDPs
//! and candidates, and the offer deadline that frees an abandoned exchange.
//!
//! The signaler is served as `tether signaling` and the machine serve it: by
//! `tether_transport::server::serve` (which tells the service the caller's
//! address) with tether's 32 MiB message limit; callers from another address
//! bind 127.0.0.2.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeAnswerer, answerer, call, call_with, candidate, update, within};
use futures::StreamExt;
use tether_proto::proto::rpc::webrtc::v1::{
    CallRequest, CallResponse, IceCandidate, answer_request, call_response, call_update_request::Update,
    signaling_service_client::SignalingServiceClient,
};
use tether_signaling::{
    AnswererEvent, CallLimits, CallQueue, DEFAULT_MAX_PENDING_PER_ADDRESS, LimitStats, MAX_CANDIDATE_SIZE,
    MAX_SDP_SIZE, MemoryQueue, MemoryQueueStats, SignalingServer, SignalingServerBuilder,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

const HOST: &str = "bot.loc.viam.cloud";

struct Signaler {
    addr: SocketAddr,
    server: SignalingServer,
    queue: MemoryQueue,
    shutdown: CancellationToken,
}

impl Drop for Signaler {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Signaler {
    async fn start(configure: impl FnOnce(SignalingServerBuilder) -> SignalingServerBuilder) -> Signaler {
        let queue = MemoryQueue::new();
        let server = configure(SignalingServer::builder(Arc::new(queue.clone()))).build();
        let svc = server
            .clone()
            .into_service()
            .max_decoding_message_size(tether_transport::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(tether_transport::MAX_MESSAGE_SIZE);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let options = tether_transport::server::ServeOptions::default();
        let serving = tether_transport::server::serve(
            listener,
            tower::util::BoxCloneSyncService::new(svc),
            options,
            shutdown.clone(),
        );
        tokio::spawn(serving);
        Signaler { addr, server, queue, shutdown }
    }

    /// A client on its own connection from `from` (127.0.0.1 when `None`).
    async fn client_from(&self, from: Option<&str>) -> SignalingServiceClient<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr)).unwrap();
        let endpoint = endpoint.local_address(from.map(|a| a.parse::<IpAddr>().unwrap()));
        SignalingServiceClient::new(endpoint.connect().await.unwrap())
    }

    async fn client(&self) -> SignalingServiceClient<Channel> {
        self.client_from(None).await
    }

    /// Answers every offer for HOST with `answer`, then done (as the
    /// machine's in-process answerer does); runs until the signaler drops.
    async fn answer_everything(&self) {
        let queue = self.queue.clone();
        let mut session = queue.register_answerer(vec![HOST.into()]).await.unwrap();
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let exchange = tokio::select! {
                    _ = stop.cancelled() => return,
                    x = session.recv_offer() => x.unwrap(),
                };
                tokio::spawn(async move {
                    let r = exchange.responder;
                    let _ = r.respond(AnswererEvent::Answer(format!("answer to {}", exchange.offer.sdp))).await;
                    let _ = r.respond(AnswererEvent::Done).await;
                    // Read what the caller sends until it is done (or the offer expires).
                    exchange.caller_events.for_each(|_| async {}).await;
                });
            }
        });
    }

    async fn wait_until(&self, what: &str, ok: impl Fn(MemoryQueueStats, LimitStats) -> bool) {
        let t0 = Instant::now();
        while !ok(self.queue.stats(), self.server.limit_stats()) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{what}: queue {:?}, limits {:?}",
                self.queue.stats(),
                self.server.limit_stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn init_of(m: &CallResponse) -> &str {
    match &m.stage {
        Some(call_response::Stage::Init(i)) => &i.sdp,
        other => panic!("expected init, got {other:?}"),
    }
}

/// The caller's first message is the answer to `offer`.
async fn expect_answer(stream: &mut Streaming<CallResponse>, offer: &str) -> String {
    let m = within(stream.message()).await.unwrap().expect("Call stream ended before the answer");
    assert_eq!(init_of(&m), format!("answer to {offer}"));
    m.uuid
}

/// 5,000 concurrent offers for one host from one address: the default cap
/// admits 32 and refuses the rest with RESOURCE_EXHAUSTED, and a caller
/// from another address is answered at once. (Before the per-address cap,
/// all 5,000 were queued and each held its exchange until the deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_flood_from_one_address_is_capped_and_another_address_gets_through() {
    const FLOOD: usize = 5_000;
    const CONNECTIONS: usize = 10;
    // Default limits (what every signaler, the machine's embedded one too,
    // runs with); a long deadline so that no admitted exchange expires
    // while the flood is sent.
    let sig = Signaler::start(|b| b.offer_deadline(Duration::from_secs(120))).await;
    sig.answer_everything().await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(sig.client().await);
    }
    let flood = (0..FLOOD).map(|i| {
        let mut c = clients[i % CONNECTIONS].clone();
        async move { call(&mut c, HOST, &format!("flood-{i}")).await }
    });
    let results = futures::future::join_all(flood).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(stream) => admitted.push(stream),
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                assert!(st.message().starts_with("too many calls in progress from 127.0.0.1"), "{st:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(admitted.len(), DEFAULT_MAX_PENDING_PER_ADDRESS, "offers admitted from one address");
    assert_eq!(refused, FLOOD - DEFAULT_MAX_PENDING_PER_ADDRESS);
    // The admitted ones were answered (the flood never sends done, so each
    // still counts against its address).
    for s in &mut admitted {
        let m = within(s.message()).await.unwrap().expect("answer");
        assert!(init_of(&m).starts_with("answer to flood-"), "{m:?}");
    }
    assert_eq!(sig.server.limit_stats().exchanges, DEFAULT_MAX_PENDING_PER_ADDRESS);
    assert!(call(&mut clients[0], HOST, "one more").await.is_err_and(|st| st.code() == Code::ResourceExhausted));

    // A legitimate caller from another address: answered within 5 s.
    let t0 = Instant::now();
    let mut legit = sig.client_from(Some("127.0.0.2")).await;
    let mut stream = within(call(&mut legit, HOST, "legit")).await.expect("a caller from another address is admitted");
    let uuid = expect_answer(&mut stream, "legit").await;
    assert!(t0.elapsed() < Duration::from_secs(5), "answered after {:?}", t0.elapsed());
    // Its done ends its exchange at once.
    update(&mut legit, HOST, &uuid, Update::Done(true)).await.unwrap();
    sig.wait_until("the legit exchange is released", |_, l| l.exchanges == DEFAULT_MAX_PENDING_PER_ADDRESS).await;
}

/// A 10 MiB SDP offer is refused to its caller before it is queued; the
/// answerer's Answer stream (a client with tonic's default 4 MiB decode
/// limit, which the offer used to break) keeps serving, and the next caller
/// is answered within 5 s.
#[tokio::test]
async fn huge_offer_is_refused_and_the_answerer_stream_survives() {
    let sig = Signaler::start(|b| b).await;
    let mut c = sig.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();

    let huge = "x".repeat(10 << 20);
    let st = within(call(&mut c, HOST, &huge)).await.expect_err("a 10 MiB offer is refused");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("offer SDP is 10485760 bytes"), "{st:?}");
    assert_eq!(sig.queue.stats().offers, 0, "the offer was queued");
    // Just under the limit is fine.
    let big = "y".repeat(MAX_SDP_SIZE);

    let t0 = Instant::now();
    let mut next = within(call(&mut c, HOST, &big)).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert_eq!(init.sdp, big, "the same Answer stream gets the next offer");
    ans.send_init(&uuid, "answer").await;
    let m = within(next.message()).await.unwrap().unwrap();
    assert_eq!(init_of(&m), "answer");
    assert!(t0.elapsed() < Duration::from_secs(5), "answered after {:?}", t0.elapsed());
}

fn huge_candidate() -> IceCandidate {
    let mut c = candidate("big");
    c.candidate.push_str(&" x".repeat(MAX_CANDIDATE_SIZE));
    c
}

/// Oversized candidates from the caller are refused (the exchange goes on);
/// an oversized answer or candidate from the answerer ends its stream with
/// INVALID_ARGUMENT and the caller learns why.
#[tokio::test]
async fn oversized_candidates_and_answers_are_refused() {
    let sig = Signaler::start(|b| b).await;
    let mut c = sig.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut caller = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    let st = update(&mut c, HOST, &uuid, Update::Candidate(huge_candidate())).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("ICE candidate is"), "{st:?}");
    update(&mut c, HOST, &uuid, Update::Candidate(candidate("c1"))).await.unwrap();
    let m = ans.next().await.unwrap().unwrap();
    assert!(matches!(&m.stage, Some(answer_request::Stage::Update(u)) if u.candidate == Some(candidate("c1"))));

    ans.send_init(&uuid, &"z".repeat(MAX_SDP_SIZE + 1)).await;
    let st = ans.next().await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let st = within(caller.message()).await.unwrap_err();
    assert!(st.message().contains("answerer protocol error: answer SDP is"), "{st:?}");

    // An answerer's oversized candidate, after a good answer.
    let mut ans: FakeAnswerer = answerer(&mut c, &[HOST], false).await.unwrap();
    let mut caller = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    assert_eq!(init_of(&within(caller.message()).await.unwrap().unwrap()), "answer");
    ans.send_candidate(&uuid, huge_candidate()).await;
    assert_eq!(ans.next().await.unwrap_err().code(), Code::InvalidArgument);
    let st = within(caller.message()).await.unwrap_err();
    assert!(st.message().contains("answerer protocol error: answerer ICE candidate is"), "{st:?}");
}

/// A call abandoned by both sides after the answer (nobody sends done,
/// nobody hangs up): at its deadline both streams end and nothing of it is
/// left — no offer in the queue, no answerer session, no pending offer or
/// exchange counted against the host or the caller's address.
#[tokio::test]
async fn abandoned_exchange_is_freed_at_its_deadline() {
    let deadline = Duration::from_millis(600);
    let limits = CallLimits::default().with_max_pending_per_address(Some(1));
    let sig = Signaler::start(|b| b.offer_deadline(deadline).call_limits(limits)).await;
    let mut c = sig.client().await;
    let mut ans = answerer(&mut c, &[HOST], false).await.unwrap();
    let t0 = Instant::now();
    let mut caller = within(call(&mut c, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    assert_eq!(init_of(&within(caller.message()).await.unwrap().unwrap()), "answer");
    assert_eq!(sig.queue.stats().offers, 1);
    assert_eq!(sig.server.limit_stats().exchanges, 1);
    assert_eq!(call(&mut c, HOST, "second").await.unwrap_err().code(), Code::ResourceExhausted);

    // Silence. At the deadline the caller gets DEADLINE_EXCEEDED and the
    // answerer done, then its stream ends. Two timers share the deadline
    // (the caller's and the answerer's); when the caller's fires first the
    // answerer hears "caller's offer deadline exceeded" before its done.
    let st = within(caller.message()).await.unwrap_err();
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    let mut m = ans.next().await.unwrap().expect("done at the deadline");
    if let Some(answer_request::Stage::Error(e)) = &m.stage {
        let code = e.status.as_ref().map(|s| s.code);
        assert_eq!(code, Some(Code::DeadlineExceeded as i32), "{m:?}");
        m = ans.next().await.unwrap().expect("done after the deadline error");
    }
    assert!(matches!(m.stage, Some(answer_request::Stage::Done(_))), "{m:?}");
    assert!(ans.next().await.unwrap().is_none(), "the Answer stream ends");
    assert!(t0.elapsed() >= deadline);
    sig.wait_until("the abandoned exchange is freed", |q, l| {
        q == MemoryQueueStats { tracked_hosts: q.tracked_hosts, ..Default::default() } && l == LimitStats::default()
    })
    .await;
    // The caller's address may call again.
    let _ans = answerer(&mut c, &[HOST], false).await.unwrap();
    within(call(&mut c, HOST, "third")).await.unwrap();
}

/// A well-behaved caller does not hold its address's slot: done, an error,
/// hanging up before the answerer is done, or (without trickle) the end of
/// its Call stream releases it at once.
#[tokio::test]
async fn finished_exchanges_release_their_address_slot_at_once() {
    let limits = CallLimits::default().with_max_pending_per_address(Some(1));
    let sig = Signaler::start(|b| b.call_limits(limits)).await;
    sig.answer_everything().await;
    let mut c = sig.client().await;
    for (i, how) in ["done", "error", "no trickle", "done"].into_iter().enumerate() {
        let offer = format!("offer {i}");
        let req = CallRequest { sdp: offer.clone(), disable_trickle: how == "no trickle" };
        let mut stream = within(call_with(&mut c, HOST, req)).await.unwrap_or_else(|st| panic!("call {i}: {st:?}"));
        let uuid = expect_answer(&mut stream, &offer).await;
        match how {
            "done" => update(&mut c, HOST, &uuid, Update::Done(true)).await.unwrap(),
            "error" => {
                let st = common::rpc_status(Code::Aborted, "gave up");
                update(&mut c, HOST, &uuid, Update::Error(st)).await.unwrap()
            }
            // Nothing to send: the end of the Call stream (the answerer's done) is enough.
            _ => assert!(within(stream.message()).await.unwrap().is_none()),
        }
        sig.wait_until("the exchange is released", |_, l| l.exchanges == 0).await;
    }
    // Hanging up before the answer.
    let sig = Signaler::start(|b| b.call_limits(limits)).await;
    let _online = sig.queue.register_answerer(vec![HOST.into()]).await.unwrap();
    let stream = within(call(&mut sig.client().await, HOST, "offer")).await.unwrap();
    let stats = sig.server.limit_stats();
    assert_eq!((stats.pending_offers, stats.exchanges), (1, 1));
    drop(stream);
    sig.wait_until("the hung-up exchange is freed", |q, l| q.offers == 0 && l == LimitStats::default()).await;
}
