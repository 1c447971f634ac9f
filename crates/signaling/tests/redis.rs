//! The Redis-backed call queue with a real `redis-server` (Debian package
//! `redis-server`): every test starts its own server on a free loopback port
//! (no persistence) and kills it at the end.
//!
//! End-to-end tests run two `SignalingServer` instances on one Redis, each on
//! its own tokio runtime and thread, so that "killing" an instance drops
//! everything it runs at once (its tasks, its sockets, its presence refresh),
//! as a crashed process would — no cleanup reaches Redis.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use tether_proto::proto::rpc::webrtc::v1::{CallResponse, answer_request, call_response, call_update_request::Update};
use tether_proto::proto::rpc::webrtc::v1::{IceCandidate, signaling_service_client::SignalingServiceClient};
use tether_signaling::{
    AnswererEvent, CallQueue, CallerEvent, OfferInit, RedisQueue, RedisQueueOptions, SignalingServer,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::Channel;

const HOST: &str = "robot-main.redis.viam.cloud";
const PRESENCE_TTL: Duration = Duration::from_millis(1500);

// ---- a private redis-server ----

struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn redis_server_binary() -> String {
    if let Ok(bin) = std::env::var("REDIS_SERVER") {
        return bin;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"]) {
        let p = std::path::Path::new(dir).join("redis-server");
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!(
        "redis-server not found: these tests need a real Redis. Install Debian's package \
         (`apt-get install redis-server`; scripts/test-all.sh does) or set REDIS_SERVER to the binary"
    );
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    async fn start() -> RedisServer {
        let mut server = RedisServer { port: free_port(), child: None };
        server.spawn().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new(redis_server_binary())
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning", "--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        // Ready when it answers PING.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {port} did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server at once (SIGKILL: nothing is saved anyway).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options(id: &str) -> RedisQueueOptions {
    RedisQueueOptions::default()
        .with_instance_id(id.into())
        .with_presence_ttl(PRESENCE_TTL)
        .with_refresh_interval(Duration::from_millis(250))
        .with_poll_interval(Duration::from_millis(200))
}

// ---- a signaling instance on its own runtime ----

struct Instance {
    addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    fn start(redis_url: String, id: &str) -> Instance {
        let id = id.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let queue = RedisQueue::connect(&redis_url, options(&id)).await.expect("connect to redis");
                let server = SignalingServer::builder(Arc::new(queue)).build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(server.into_service())
                        .serve_with_incoming(TcpListenerStream::new(listener)),
                );
                let _ = killed.await;
            });
            // Abrupt: every task and socket of the instance is dropped; a
            // cleanup task spawned while shutting down never runs.
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(15)).expect("instance did not start");
        Instance { addr, kill: Some(kill), thread: Some(thread) }
    }

    async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        SignalingServiceClient::new(channel)
    }

    /// Kills the instance (as a crash would).
    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- helpers ----

fn init_of(m: &CallResponse) -> &str {
    match &m.stage {
        Some(call_response::Stage::Init(i)) => &i.sdp,
        other => panic!("expected init, got {other:?}"),
    }
}

fn update_of(m: &CallResponse) -> &str {
    match &m.stage {
        Some(call_response::Stage::Update(u)) => &u.candidate.as_ref().unwrap().candidate,
        other => panic!("expected update, got {other:?}"),
    }
}

fn answer_update_of(m: &tether_proto::proto::rpc::webrtc::v1::AnswerRequest) -> &str {
    match &m.stage {
        Some(answer_request::Stage::Update(u)) => &u.candidate.as_ref().unwrap().candidate,
        other => panic!("expected update, got {other:?}"),
    }
}

/// A complete, minimal exchange: caller on `caller`, answerer already open.
async fn full_exchange(caller: &mut Client, ans: &mut FakeAnswerer, sdp: &str) {
    let mut call = within(call(caller, HOST, sdp)).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert_eq!(init.sdp, sdp);
    ans.send_init(&uuid, &format!("answer-to-{sdp}")).await;
    ans.send_done(&uuid).await;
    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!(init_of(&m), format!("answer-to-{sdp}"));
    assert!(within(call.message()).await.unwrap().is_none());
    update(caller, HOST, &uuid, Update::Done(true)).await.unwrap();
    assert!(matches!(ans.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
    assert!(ans.next().await.unwrap().is_none());
}

// ---- end to end: two instances ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_on_b_reaches_answerer_on_a_with_trickle_both_ways() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ans = answerer(&mut ca, &[HOST], true).await.unwrap();

    let mut call = within(call(&mut cb, HOST, "offer-sdp")).await.unwrap();
    let (uuid, init) = ans.expect_init().await;
    assert_eq!(init.sdp, "offer-sdp");
    assert!(init.deadline.is_some());

    // Caller candidates sent before the answer reach the answerer too.
    update(&mut cb, HOST, &uuid, Update::Candidate(candidate("c0"))).await.unwrap();
    ans.send_init(&uuid, "answer-sdp").await;
    ans.send_candidate(&uuid, candidate("a1")).await;
    ans.send_candidate(&uuid, candidate("a2")).await;
    let m = within(call.message()).await.unwrap().unwrap();
    assert_eq!((m.uuid.as_str(), init_of(&m)), (uuid.as_str(), "answer-sdp"));
    assert_eq!(update_of(&within(call.message()).await.unwrap().unwrap()), candidate("a1").candidate);
    assert_eq!(update_of(&within(call.message()).await.unwrap().unwrap()), candidate("a2").candidate);

    // No stickiness: a CallUpdate may land on any instance (here A and B).
    for (c, mut client) in [("c1", cb.clone()), ("c2", ca.clone()), ("c3", cb.clone())] {
        update(&mut client, HOST, &uuid, Update::Candidate(candidate(c))).await.unwrap();
    }
    for c in ["c0", "c1", "c2", "c3"] {
        let m = ans.next().await.unwrap().unwrap();
        assert_eq!((m.uuid.as_str(), answer_update_of(&m)), (uuid.as_str(), candidate(c).candidate.as_str()));
    }

    // Answerer done → Call ends OK; caller done → Answer ends OK.
    ans.send_done(&uuid).await;
    assert!(within(call.message()).await.unwrap().is_none(), "Call must end OK after answerer done");
    update(&mut cb, HOST, &uuid, Update::Done(true)).await.unwrap();
    assert!(matches!(ans.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
    assert!(ans.next().await.unwrap().is_none());
    // Late updates are OK; the record expires a little after the deadline.
    update(&mut cb, HOST, &uuid, Update::Candidate(candidate("late"))).await.unwrap();
    let mut r = redis.conn().await;
    let ttl: i64 = redis::cmd("PTTL").arg(format!("tether:sig:call:{uuid}")).query_async(&mut r).await.unwrap();
    assert!(ttl > 0 && ttl <= 12_000, "call record ttl {ttl} ms");
    let stream_ttl: i64 =
        redis::cmd("PTTL").arg(format!("tether:sig:call:{uuid}:a")).query_async(&mut r).await.unwrap();
    assert!(stream_ttl > 0 && stream_ttl <= 12_000, "stream ttl {stream_ttl} ms");
    let online: i64 = redis::cmd("PTTL").arg(format!("tether:sig:online:{HOST}")).query_async(&mut r).await.unwrap();
    assert!(online > 0 && online <= 1500, "online ttl {online} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_answerers_many_callers_each_offer_answered_once() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (ca, cb) = (a.client().await, b.client().await);
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel::<(String, &'static str)>();

    // Two machines' answer loops, one on each instance: answer every offer
    // with "answer-to-<offer>", reopen the stream after each exchange.
    let mut loops = Vec::new();
    for (client, name) in [(ca.clone(), "answerer-a"), (cb.clone(), "answerer-b")] {
        let served = served_tx.clone();
        let mut client = client;
        // Registered before any call is made.
        let mut first = Some(answerer(&mut client, &[HOST], false).await.unwrap());
        loops.push(tokio::spawn(async move {
            loop {
                let mut ans = match first.take() {
                    Some(ans) => ans,
                    None => match answerer(&mut client, &[HOST], false).await {
                        Ok(ans) => ans,
                        Err(_) => return,
                    },
                };
                let (uuid, sdp) = loop {
                    match ans.rx.message().await {
                        Ok(Some(m)) => match m.stage {
                            Some(answer_request::Stage::Init(i)) => break (m.uuid, i.sdp),
                            _ => continue,
                        },
                        _ => return,
                    }
                };
                let _ = served.send((uuid.clone(), name));
                ans.send_init(&uuid, &format!("answer-to-{sdp}")).await;
                ans.send_done(&uuid).await;
                while let Ok(Some(_)) = ans.rx.message().await {}
            }
        }));
    }
    drop(served_tx);

    let callers = 8;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = if i % 2 == 0 { cb.clone() } else { ca.clone() };
        tasks.push(tokio::spawn(async move {
            let sdp = format!("offer-{i}");
            let mut call = call(&mut client, HOST, &sdp).await.expect("call");
            let m = tokio::time::timeout(Duration::from_secs(8), call.message()).await.unwrap().unwrap().unwrap();
            assert_eq!(init_of(&m), format!("answer-to-{sdp}"), "caller {i} got another caller's answer");
            assert!(call.message().await.unwrap().is_none());
            update(&mut client, HOST, &m.uuid, Update::Done(true)).await.unwrap();
            m.uuid
        }));
    }
    let mut expected = HashSet::new();
    for t in tasks {
        expected.insert(tokio::time::timeout(Duration::from_secs(10), t).await.unwrap().unwrap());
    }
    let mut served = Vec::new();
    for _ in 0..callers {
        served.push(within(served_rx.recv()).await.unwrap());
    }
    let uuids: HashSet<String> = served.iter().map(|(u, _)| u.clone()).collect();
    assert_eq!(uuids.len(), callers, "an offer was answered twice: {served:?}");
    assert_eq!(uuids, expected);
    assert!(tokio::time::timeout(Duration::from_millis(300), served_rx.recv()).await.is_err(), "extra claim");
    for l in loops {
        l.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_host_is_not_found_fast_across_instances() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    let start = Instant::now();
    let err = within(call(&mut cb, HOST, "offer")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), tether_signaling::HOST_OFFLINE);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());

    // Online on A → B sees it at once.
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    full_exchange(&mut cb, &mut ans, "o1").await;

    // The machine leaves: offline within the presence TTL (plus a refresh).
    let left = Instant::now();
    loop {
        match within(call(&mut cb, HOST, "probe")).await {
            Err(e) if e.code() == Code::NotFound => break,
            Err(e) => panic!("unexpected {e:?}"),
            // Still in the grace period: the call waits; give up on it.
            Ok(stream) => drop(stream),
        }
        assert!(left.elapsed() < PRESENCE_TTL + Duration::from_secs(2), "host still online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.elapsed() >= Duration::from_millis(500), "offline too early: {:?}", left.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answerer_leaving_after_claim_fails_the_call_fast() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut cb, HOST, "offer")).await.unwrap();
    let _ = ans.expect_init().await;
    let start = Instant::now();
    drop(ans);
    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_going_away_is_reported_across_instances() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    let call = within(call(&mut cb, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    drop(call);
    let m = ans.next().await.unwrap().unwrap();
    assert_eq!(m.uuid, uuid);
    match m.stage {
        Some(answer_request::Stage::Error(e)) => assert_eq!(e.status.unwrap().code, Code::Cancelled as i32),
        other => panic!("expected error, got {other:?}"),
    }
    assert!(matches!(ans.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
    assert!(ans.next().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_answerer_instance_fails_the_call_and_the_machine_moves_to_b() {
    let redis = RedisServer::start().await;
    let mut a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    let mut call = within(call(&mut cb, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    update(&mut cb, HOST, &uuid, Update::Candidate(candidate("c1"))).await.unwrap();

    let killed = Instant::now();
    a.kill();
    // The caller gets a clear, retryable error once A's presence expired.
    let err = within(call.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // (Found by presence expiry: no cleanup of the killed instance reached Redis.)
    assert!(err.message().contains("signaling instance \"inst-a\""), "{err:?}");
    let took = killed.elapsed();
    assert!(took >= PRESENCE_TTL / 2 && took < PRESENCE_TTL + Duration::from_secs(2), "took {took:?}");
    // The machine's stream on A broke (after what A relayed before dying).
    within(async { while let Ok(Some(_)) = ans.rx.message().await {} }).await;

    // The machine re-registers through B; the next call succeeds.
    let mut ans = answerer(&mut cb, &[HOST], false).await.unwrap();
    full_exchange(&mut cb, &mut ans, "retry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_caller_instance_releases_the_answerer() {
    let redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let mut b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    let _call = within(call(&mut cb, HOST, "offer")).await.unwrap();
    let (uuid, _) = ans.expect_init().await;
    ans.send_init(&uuid, "answer").await;
    b.kill();
    // The answerer learns that the caller is gone (error, then done) and its
    // Answer stream ends, so it can take the next call.
    let m = ans.next().await.unwrap().unwrap();
    match m.stage {
        Some(answer_request::Stage::Error(e)) => assert_eq!(e.status.unwrap().code, Code::Unavailable as i32),
        other => panic!("expected error, got {other:?}"),
    }
    assert!(matches!(ans.next().await.unwrap().unwrap().stage, Some(answer_request::Stage::Done(_))));
    assert!(ans.next().await.unwrap().is_none());
    let mut ans = answerer(&mut ca, &[HOST], false).await.unwrap();
    full_exchange(&mut ca, &mut ans, "next").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_without_restarting_instances() {
    let mut redis = RedisServer::start().await;
    let a = Instance::start(redis.url(), "inst-a");
    let b = Instance::start(redis.url(), "inst-b");
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // The machine waits on A across the whole outage.
    let mut ans = answerer(&mut ca, &[HOST], true).await.unwrap();
    full_exchange(&mut cb, &mut ans, "before").await;
    let mut ans = answerer(&mut ca, &[HOST], true).await.unwrap();

    redis.kill();
    let down = Instant::now();
    // While Redis is down, callers get a prompt, retryable UNAVAILABLE (not NOT_FOUND).
    let start = Instant::now();
    let err = within(call(&mut cb, HOST, "during")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());

    // Same port, empty database: the instances reconnect by themselves and
    // A re-registers the waiting machine.
    redis.spawn().await;
    let mut r = redis.conn().await;
    let back = Instant::now();
    loop {
        let n: i64 = redis::cmd("EXISTS").arg(format!("tether:sig:online:{HOST}")).query_async(&mut r).await.unwrap();
        if n == 1 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "machine not re-registered after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("machine online again {:?} after the restart ({:?} after the kill)", back.elapsed(), down.elapsed());
    full_exchange(&mut cb, &mut ans, "after").await;

    // And new registrations on B work too.
    let mut ans = answerer(&mut cb, &[HOST], false).await.unwrap();
    full_exchange(&mut ca, &mut ans, "after-2").await;
}

// ---- the queue itself, two instances in one process ----

fn offer(host: &str, sdp: &str) -> OfferInit {
    OfferInit {
        host: host.into(),
        sdp: sdp.into(),
        disable_trickle: false,
        ttl: Duration::from_secs(10),
        caller: None,
        address: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_claims_are_exclusive_across_instances() {
    let redis = RedisServer::start().await;
    let qa: Arc<dyn CallQueue> = Arc::new(RedisQueue::connect(&redis.url(), options("qa")).await.unwrap());
    let qb: Arc<dyn CallQueue> = Arc::new(RedisQueue::connect(&redis.url(), options("qb")).await.unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for i in 0..6 {
        let q = if i % 2 == 0 { qa.clone() } else { qb.clone() };
        let tx = tx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let mut session = q.register_answerer(vec!["h".into()]).await.unwrap();
                // Cancel a few waits on the way: no claim may get lost.
                let ex = loop {
                    if let Ok(r) = tokio::time::timeout(Duration::from_millis(3), session.recv_offer()).await {
                        break r.unwrap();
                    }
                };
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
    for i in 0..40 {
        let q = if i % 3 == 0 { qa.clone() } else { qb.clone() };
        callers.push(tokio::spawn(async move {
            let mut h = q.send_offer(offer("h", &i.to_string())).await.unwrap();
            assert_eq!(h.events.next().await, Some(AnswererEvent::Answer(format!("answer-{i}"))));
            assert_eq!(h.events.next().await, Some(AnswererEvent::Done));
            assert_eq!(h.events.next().await, None);
            q.send_caller_event("h", &h.offer.uuid, CallerEvent::Done).await.unwrap();
            h.offer.uuid
        }));
    }
    let mut expected = HashSet::new();
    for c in callers {
        expected.insert(tokio::time::timeout(Duration::from_secs(10), c).await.unwrap().unwrap());
    }
    let mut claimed = Vec::new();
    for _ in 0..40 {
        claimed.push(within(rx.recv()).await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), 40, "an offer was claimed twice");
    assert_eq!(unique, expected);
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "extra claim");
    for w in workers {
        w.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_relays_many_events_in_order_and_respects_hosts() {
    let redis = RedisServer::start().await;
    let qa = RedisQueue::connect(&redis.url(), options("qa")).await.unwrap();
    let qb = RedisQueue::connect(&redis.url(), options("qb")).await.unwrap();
    assert!(!qb.is_answerer_online("h").await);
    let mut other = qa.register_answerer(vec!["other".into()]).await.unwrap();
    let mut session = qa.register_answerer(vec!["x".into(), "h".into()]).await.unwrap();
    assert!(qb.is_answerer_online("h").await && qb.is_answerer_online("x").await);

    let mut caller = qb.send_offer(offer("h", "o")).await.unwrap();
    let cand = |s: String| IceCandidate { candidate: s, ..Default::default() };
    // Before the claim.
    for i in 0..100 {
        qb.send_caller_event("h", &caller.offer.uuid, CallerEvent::Candidate(cand(format!("c{i}")))).await.unwrap();
    }
    // Wrong host = unknown offer; garbage uuids too.
    assert!(qb.send_caller_event("other", &caller.offer.uuid, CallerEvent::Done).await.is_err());
    assert!(qb.send_caller_event("h", &"x".repeat(1000), CallerEvent::Done).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(200), other.recv_offer()).await.is_err());

    let mut ex = within(session.recv_offer()).await.unwrap();
    assert_eq!((ex.offer.uuid.as_str(), ex.offer.host.as_str()), (caller.offer.uuid.as_str(), "h"));
    for i in 100..200 {
        qb.send_caller_event("h", &caller.offer.uuid, CallerEvent::Candidate(cand(format!("c{i}")))).await.unwrap();
    }
    qb.send_caller_event("h", &caller.offer.uuid, CallerEvent::Done).await.unwrap();
    // An error after done is ignored.
    qb.send_caller_event("h", &caller.offer.uuid, CallerEvent::Error(rpc_status(Code::Unknown, "late"))).await.unwrap();
    let got: Vec<CallerEvent> = within(ex.caller_events.by_ref().collect()).await;
    let mut want: Vec<CallerEvent> = (0..200).map(|i| CallerEvent::Candidate(cand(format!("c{i}")))).collect();
    want.push(CallerEvent::Done);
    assert_eq!(got, want);

    ex.responder.respond(AnswererEvent::Answer("a".into())).await.unwrap();
    for i in 0..150 {
        ex.responder.respond(AnswererEvent::Candidate(cand(format!("a{i}")))).await.unwrap();
    }
    ex.responder.respond(AnswererEvent::Done).await.unwrap();
    assert!(ex.responder.respond(AnswererEvent::Done).await.is_err());
    let got: Vec<AnswererEvent> = within(caller.events.by_ref().collect()).await;
    assert_eq!(got.len(), 152);
    assert_eq!(got[0], AnswererEvent::Answer("a".into()));
    assert_eq!(got[1], AnswererEvent::Candidate(cand("a0".into())));
    assert_eq!(got[150], AnswererEvent::Candidate(cand("a149".into())));
    assert_eq!(got[151], AnswererEvent::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_carries_the_callers_entity_across_instances() {
    // The answerer's instance vouches for the caller, who came in through the other one.
    let redis = RedisServer::start().await;
    let qa = RedisQueue::connect(&redis.url(), options("qa")).await.unwrap();
    let qb = RedisQueue::connect(&redis.url(), options("qb")).await.unwrap();
    let mut s = qa.register_answerer(vec!["h".into()]).await.unwrap();
    let h = qb.send_offer(OfferInit { caller: Some("alice".into()), ..offer("h", "o1") }).await.unwrap();
    let ex = within(s.recv_offer()).await.unwrap();
    assert_eq!((ex.offer.uuid.as_str(), ex.offer.caller.as_deref()), (h.offer.uuid.as_str(), Some("alice")));
    // An anonymous caller stays anonymous.
    let mut s = qa.register_answerer(vec!["h".into()]).await.unwrap();
    qb.send_offer(offer("h", "o2")).await.unwrap();
    assert_eq!(within(s.recv_offer()).await.unwrap().offer.caller, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_withdrawn_and_expired_offers_are_not_delivered() {
    let redis = RedisServer::start().await;
    let qa = RedisQueue::connect(&redis.url(), options("qa")).await.unwrap();
    let qb = RedisQueue::connect(&redis.url(), options("qb")).await.unwrap();
    // Withdrawn by the caller before anybody claimed it.
    let h = qb.send_offer(offer("h", "o")).await.unwrap();
    qb.send_caller_event("h", &h.offer.uuid, CallerEvent::Error(rpc_status(Code::Cancelled, "gone"))).await.unwrap();
    let mut s = qa.register_answerer(vec!["h".into()]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), s.recv_offer()).await.is_err());
    // Expired: the caller's stream ends, nobody gets it.
    let init = OfferInit { ttl: Duration::from_millis(100), ..offer("busy", "o") };
    let mut h = qb.send_offer(init).await.unwrap();
    assert_eq!(within(h.events.next()).await, None);
    let mut s = qa.register_answerer(vec!["busy".into()]).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), s.recv_offer()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_notifications_survive_a_redis_restart() {
    // A poll interval far beyond the waits below: only pub/sub wake-ups
    // (re-subscribed after the reconnection) can make these deliveries fast.
    let slow = |id: &str| options(id).with_poll_interval(Duration::from_secs(30));
    let mut redis = RedisServer::start().await;
    let qa = RedisQueue::connect(&redis.url(), slow("qa")).await.unwrap();
    let qb = RedisQueue::connect(&redis.url(), slow("qb")).await.unwrap();
    let fast = Duration::from_secs(2);

    let mut session = qa.register_answerer(vec!["h".into()]).await.unwrap();
    for round in ["before", "after"] {
        if round == "after" {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            redis.spawn().await;
            let t = Instant::now();
            while !qb.is_answerer_online("h").await {
                assert!(t.elapsed() < Duration::from_secs(5), "not re-registered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Both instances subscribed again by themselves.
            let mut r = redis.conn().await;
            loop {
                let v: Vec<redis::Value> =
                    redis::cmd("PUBSUB").arg("NUMSUB").arg("tether:sig:offers").query_async(&mut r).await.unwrap();
                if let Some(redis::Value::Int(2)) = v.get(1) {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(5), "not re-subscribed: {v:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Let the session settle into waiting for a notification.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut caller = qb.send_offer(offer("h", round)).await.unwrap();
        let mut ex = tokio::time::timeout(fast, session.recv_offer()).await.expect(round).unwrap();
        assert_eq!(ex.offer.sdp, round);
        ex.responder.respond(AnswererEvent::Answer("a".into())).await.unwrap();
        let got = tokio::time::timeout(fast, caller.events.next()).await.expect(round);
        assert_eq!(got, Some(AnswererEvent::Answer("a".into())));
        qb.send_caller_event("h", &caller.offer.uuid, CallerEvent::Done).await.unwrap();
        let got = tokio::time::timeout(fast, ex.caller_events.next()).await.expect(round);
        assert_eq!(got, Some(CallerEvent::Done));
        ex.responder.respond(AnswererEvent::Done).await.unwrap();
        drop(ex);
        session = qa.register_answerer(vec!["h".into()]).await.unwrap();
    }
}
