//! Access tokens (issue 15 item 5): expiry, the audience (a token is good
//! on the machine that minted it only), `Authenticate` throttling per
//! address, and a client that renews its token without anybody noticing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tether_client::components::Motor;
use tether_client::{Credentials, DialConf, Options, RobotClient};
use tether_machine::{Machine, MachineOptions};
use tether_proto::proto::rpc::v1 as authpb;
use tether_proto::viam::robot::v1 as pb;
use tether_transport::dial::{DirectConnection, DirectOptions, HeaderStamp, SharedHeaders};
use tokio_util::sync::CancellationToken;

const KEY_ID: &str = "fleet-key";
const KEY: &str = "fleet-secret";

fn keyed_config(extra_auth: &str, hosts: &str, window: &str) -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"sessions":{{"heartbeat_window":"{window}"}},"hosts":[{hosts}],"ice_servers":[]}},
            "auth":{{"handlers":[{{"type":"api-key","config":{{"keys":[{{"id":"{KEY_ID}","key":"{KEY}"}}]}}}}]{extra_auth}}}}}"#
    ))
}

/// A machine built from `cfg`, with a signing secret shared with other
/// machines if given, served on loopback.
async fn start_machine(
    cfg: tether_machine::config::Config,
    secret: Option<[u8; 32]>,
) -> (SocketAddr, Machine, CancellationToken) {
    let resources = cfg.build(&tether_machine::models::Models::builtin()).unwrap();
    let mut options = MachineOptions::default();
    options.heartbeat_window = cfg.heartbeat_window();
    options.api_keys = cfg.api_keys();
    options.webrtc = cfg.webrtc_settings();
    options.auth = match secret {
        Some(secret) => cfg.auth_options().with_signing_secret(secret),
        None => cfg.auth_options(),
    };
    let machine = Machine::new(resources, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(machine.serve(listener, Default::default(), shutdown.clone()));
    (addr, machine, shutdown)
}

async fn connect_from(addr: SocketAddr, local: Option<IpAddr>) -> DirectConnection {
    DirectConnection::connect(&addr.to_string(), &DirectOptions::default().with_local_address(local)).await.unwrap()
}

async fn authenticate(conn: &DirectConnection, key: &str) -> Result<String, tonic::Status> {
    tether_transport::dial::authenticate(conn.clone(), &Credentials::api_key(KEY_ID, key)).await
}

/// GetVersion with `token` as the bearer.
async fn call_with(conn: &DirectConnection, token: &str) -> Result<(), tonic::Status> {
    let headers = SharedHeaders::default();
    headers.set_bearer(token).unwrap();
    let mut robot = pb::robot_service_client::RobotServiceClient::new(HeaderStamp::new(conn.clone(), headers));
    robot.get_version(pb::GetVersionRequest {}).await.map(drop)
}

#[tokio::test]
async fn a_token_minted_by_another_machine_is_refused() {
    // Same API key, same signing secret (replicas would share it), other
    // host name: only the audience tells the tokens apart.
    let shared = Some([42; 32]);
    let (a_addr, _a, _a_stop) = start_machine(keyed_config("", r#""bot-a""#, "2s"), shared).await;
    let (b_addr, _b, _b_stop) = start_machine(keyed_config("", r#""bot-b""#, "2s"), shared).await;
    let (a, b) = (connect_from(a_addr, None).await, connect_from(b_addr, None).await);
    let token = authenticate(&a, KEY).await.unwrap();
    call_with(&a, &token).await.expect("the token works where it was minted");
    let err = call_with(&b, &token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("for another machine"), "{}", err.message());
    println!("machine B refuses machine A's token: {}", err.message());

    // With the default random secret, B refuses it by its signature too.
    let (c_addr, _c, _c_stop) = start_machine(keyed_config("", r#""bot-a""#, "2s"), None).await;
    let err = call_with(&connect_from(c_addr, None).await, &token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn a_token_past_its_exp_is_refused() {
    let (addr, machine, _stop) = start_machine(keyed_config(r#","token_lifetime":"1s""#, r#""bot""#, "2s"), None).await;
    assert_eq!(machine.token_lifetime(), Some(Duration::from_secs(1)));
    let conn = connect_from(addr, None).await;
    let token = authenticate(&conn, KEY).await.unwrap();
    call_with(&conn, &token).await.unwrap();
    let claims = tether_transport::auth::Claims::peek(&token).unwrap();
    assert_eq!(claims.exp - claims.iat, 1);
    // Valid through its `exp` second, refused after it.
    let started = Instant::now();
    let err = loop {
        match call_with(&conn, &token).await {
            Ok(()) => {
                assert!(started.elapsed() < Duration::from_secs(3), "a 1 s token still accepted after 3 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().starts_with("access token expired"), "{}", err.message());
    println!("a 1 s token was refused {:?} after it was minted: {}", started.elapsed(), err.message());
}

/// 2,000 wrong keys from 127.0.0.1 within 10 s: at most 100 are checked
/// against the keys, a right key from 127.0.0.2 gets through at once, and
/// 127.0.0.1 can authenticate again once its backoff is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_are_throttled_per_address() {
    let (addr, machine, _stop) = start_machine(keyed_config("", r#""bot""#, "2s"), None).await;
    let attacker = connect_from(addr, Some([127, 0, 0, 1].into())).await;
    let started = Instant::now();
    let mut attempts = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(4500));
    for _ in 0..2000 {
        tick.tick().await;
        let conn = attacker.clone();
        attempts.push(tokio::spawn(async move { authenticate(&conn, "guess").await }));
        if attempts.len() == 1000 {
            // Half way through the flood: the owner, from another address.
            let owner = connect_from(addr, Some([127, 0, 0, 2].into())).await;
            let t = Instant::now();
            let token = authenticate(&owner, KEY).await.expect("a right key from another address");
            let took = t.elapsed();
            call_with(&owner, &token).await.unwrap();
            println!("during the flood, a right key from 127.0.0.2 authenticated in {took:?}");
            assert!(took < Duration::from_secs(1), "took {took:?}");
        }
    }
    let (mut unauthenticated, mut throttled) = (0u64, 0u64);
    for a in attempts {
        let status = a.await.unwrap().expect_err("a wrong key was accepted");
        match status.code() {
            tonic::Code::Unauthenticated => unauthenticated += 1,
            tonic::Code::ResourceExhausted => {
                throttled += 1;
                let m = status.message();
                assert!(m.starts_with("too many failed authentications from 127.0.0.1; retry in "), "{m}");
            }
            other => panic!("unexpected {other:?}: {}", status.message()),
        }
    }
    let flood = started.elapsed();
    let stats = machine.auth_stats().unwrap();
    println!(
        "2000 wrong keys in {flood:?}: {} checked against the keys, {throttled} refused unchecked (limit 100)",
        stats.key_checks - 1
    );
    assert!(flood < Duration::from_secs(10), "the flood took {flood:?}");
    // One check was the owner's.
    assert_eq!(stats.key_checks - 1, unauthenticated);
    assert!(unauthenticated <= 100, "{unauthenticated} wrong keys checked");
    assert_eq!(unauthenticated + throttled, 2000);
    assert_eq!(stats.throttled, throttled);

    // Still throttled right after the flood; the right key works once the
    // backoff it was told is over.
    let err = authenticate(&attacker, KEY).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let wait: u64 = err.message().rsplit(' ').nth(1).unwrap().parse().unwrap();
    assert!(wait <= 60_000, "{wait} ms");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    let token = authenticate(&attacker, KEY).await.expect("the right key after the backoff");
    call_with(&attacker, &token).await.unwrap();
    println!("127.0.0.1 authenticated again after a backoff of {wait} ms");
}

/// The client renews its token before it expires, over direct gRPC: with
/// 2 s tokens a session and a motor run for 10 s without an error, a new
/// session or a safety stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_tokens_keep_a_direct_client_running() {
    let (addr, machine, _stop) =
        start_machine(keyed_config(r#","token_lifetime":"2s""#, r#""bot""#, "500ms"), None).await;
    let conf = DialConf::direct(addr.to_string()).with_credentials(Credentials::api_key(KEY_ID, KEY));
    keeps_running(&machine, conf, 4).await;
}

/// The same over WebRTC, where no token travels on the data channel: the
/// connection keeps the caller its signaler authenticated. Half way through,
/// long after the first token expired, the connection drops; the client
/// redials (authenticating afresh) and resumes its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_tokens_keep_a_webrtc_client_running() {
    let (addr, machine, _stop) = start_machine(keyed_config(r#","token_lifetime":"2s""#, r#""bot""#, "2s"), None).await;
    let conf = DialConf::webrtc("bot", addr.to_string())
        .with_webrtc(|c| c.ice_servers = Vec::new())
        .with_credentials(Credentials::api_key(KEY_ID, KEY));
    keeps_running(&machine, conf, 2).await;
}

async fn keeps_running(machine: &Machine, conf: DialConf, min_tokens: u64) {
    let webrtc = matches!(conf, DialConf::WebRtc(_));
    let mut stops = machine.safety_stops();
    let robot = RobotClient::connect(conf, Options::default()).await.unwrap();
    let mut events = robot.events();
    let motor = Motor::from_robot(&robot.wait_for_ready(), "motor1");
    motor.set_power(0.5).await.unwrap();
    let sid = robot.session_id().unwrap();
    let started = Instant::now();
    let (mut calls, mut dropped) = (0, false);
    while started.elapsed() < Duration::from_secs(10) {
        if webrtc && !dropped && started.elapsed() > Duration::from_secs(5) {
            robot.webrtc().unwrap().close().await;
            dropped = true;
            // Calls made before the client notices the drop fail as on any
            // lost link; wait until it has.
            let mut state = robot.state();
            state.wait_for(|s| *s != tether_client::ConnectionState::Connected).await.unwrap();
        }
        let powered = motor.is_powered().await.unwrap_or_else(|e| panic!("call {calls} failed: {e}"));
        assert_eq!(powered, (true, 0.5), "call {calls}");
        motor.set_power(0.5).await.unwrap_or_else(|e| panic!("set_power after {calls} calls failed: {e}"));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(robot.session_id().as_deref(), Some(sid.as_str()), "the session changed");
    assert!(stops.try_recv().is_err(), "a safety stop happened");
    let minted = machine.auth_stats().unwrap().minted;
    println!(
        "{calls} calls in 10 s with 2 s tokens ({}): {minted} tokens minted",
        if webrtc { "webrtc" } else { "direct" }
    );
    assert!(minted >= min_tokens, "only {minted} tokens minted in 10 s");
    if webrtc {
        let mut resumed = false;
        while let Ok(e) = events.try_recv() {
            resumed |= matches!(e, tether_client::ConnectionEvent::SessionResumed { .. });
        }
        assert!(resumed, "the client did not resume its session after the drop");
    }
    robot.close().await;
}

/// The Authenticate request as the wire carries it, to check what the
/// throttle does with a request that names no credentials type.
#[tokio::test]
async fn authenticate_without_credentials_is_invalid_and_not_counted() {
    let (addr, machine, _stop) = start_machine(keyed_config("", r#""bot""#, "2s"), None).await;
    let conn = connect_from(addr, None).await;
    let mut auth = authpb::auth_service_client::AuthServiceClient::new(conn);
    let err =
        auth.authenticate(authpb::AuthenticateRequest { entity: KEY_ID.into(), credentials: None }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(machine.auth_stats().unwrap().key_checks, 0);
}

/// A machine answering at an external signaler whose tokens live 1 s: when
/// an `Answer` stream is refused for an expired token the machine
/// authenticates again at once, never reports the signaler unreachable, and
/// every caller is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_signalers_short_tokens_do_not_interrupt_answering() {
    use std::sync::Arc;
    use tether_signaling::{KeyGrants, MemoryQueue, SignalingServer};
    use tether_transport::auth::{ApiKey, AuthLayer, AuthOptions, AuthServer, Authority};
    const BOT: &str = "short-token-bot";
    let keys = vec![
        ApiKey { id: "alice".into(), key: "alice-secret".into() },
        ApiKey { id: "bot-machine".into(), key: "machine-secret".into() },
    ];
    let options = AuthOptions::default().with_token_lifetime(Duration::from_secs(1));
    let authority = Arc::new(Authority::with_options(vec!["tether-signaling".into()], keys, options));
    let grants = KeyGrants::new().grant_call("alice", [BOT]).grant_answer("bot-machine", [BOT]);
    let server = SignalingServer::builder(Arc::new(MemoryQueue::new())).authorizer(Arc::new(grants)).build();
    let routes = tonic::service::Routes::new(server.into_service())
        .add_service(AuthServer::new(authority.clone()).into_service());
    let svc = tower::ServiceBuilder::new().layer(AuthLayer::new(Some(authority.clone()))).service(routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sig = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(tether_transport::server::serve(
        listener,
        tower::util::BoxCloneSyncService::new(svc),
        Default::default(),
        stop.clone(),
    ));
    let m = start(config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"hosts":["{BOT}"],"ice_servers":[],"signaling":["http://{sig}"],
                        "signaling_api_key":{{"id":"bot-machine","key":"machine-secret"}}}}}}"#
    )))
    .await;
    let conf = DialConf::webrtc(BOT, sig.to_string())
        .with_webrtc(|c| c.ice_servers = Vec::new())
        .with_credentials(Credentials::api_key("alice", "alice-secret"));
    // Wait until the machine answers there, then watch for any other report.
    let robot = connect_when_registered(conf.clone(), 60).await.unwrap();
    robot.close().await;
    let unreachable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (_, mut status) in m.machine.signaling_status() {
        let flag = unreachable.clone();
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                if matches!(*status.borrow(), tether_machine::RemoteStatus::Unreachable(_)) {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    for round in 0..4 {
        // Every token the machine holds has expired by now.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let t = Instant::now();
        let robot = RobotClient::connect(conf.clone(), Options::default())
            .await
            .unwrap_or_else(|e| panic!("round {round}: caller not answered: {e}"));
        assert_eq!(robot.resource_names().await.unwrap().len(), 1);
        let took = t.elapsed();
        robot.close().await;
        println!("round {round}: answered through a signaler with 1 s tokens in {took:?}");
        assert!(took < Duration::from_secs(3), "round {round} took {took:?}");
    }
    assert!(!unreachable.load(std::sync::atomic::Ordering::Relaxed), "the machine reported the signaler unreachable");
    assert!(authority.stats().minted >= 8, "{:?}", authority.stats());
}
