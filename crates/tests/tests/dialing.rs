//! Dialing behaviour: the first dial is retried on the reconnection schedule
//! (a machine that comes up late is reached without caller code), errors
//! that cannot heal end the dial at once, the `should_retry` hook decides
//! when set, an abort handle stops a dial in progress, and a failed WebRTC
//! dial falls back to a direct one where enabled.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tether_client::{
    AbortHandle, ConnectionEvent, Credentials, DialConf, DirectFallback, Method, Options, ReconnectOptions, RobotClient,
};
use tokio::net::TcpListener;

/// A TCP proxy to `upstream` that counts the connections it accepts (one
/// per dial attempt: each attempt opens a fresh connection).
struct CountingProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { addr, accepted }
    }

    fn count(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A loopback address nothing listens on (yet).
async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn keyed_config() -> tether_machine::config::Config {
    config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"hosts":["test-machine"],"ice_servers":[]},
            "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"key-id","key":"right-secret"}]}}]}}"#,
    )
}

fn webrtc_config() -> tether_machine::config::Config {
    config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"hosts":["test-machine"],"ice_servers":[]}}"#,
    )
}

/// Starts a machine on `addr` after `delay`.
fn start_late(cfg: tether_machine::config::Config, addr: SocketAddr, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let machine =
            tether_machine::Machine::from_config(&cfg, &tether_machine::models::Models::builtin()).expect("config");
        let listener = TcpListener::bind(addr).await.expect("bind the late machine's port");
        machine.serve(listener, Default::default(), tokio_util::sync::CancellationToken::new()).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_dial_reaches_a_machine_that_comes_up_two_seconds_late() {
    let addr = free_addr().await;
    let machine = start_late(webrtc_config(), addr, Duration::from_secs(2));
    let started = Instant::now();
    let robot = RobotClient::connect(DialConf::direct(addr.to_string()), Options::default())
        .await
        .expect("the first dial is retried until the machine is up");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "connected before the machine existed? {took:?}");
    assert!(took < Duration::from_secs(8), "the retry schedule took {took:?}");
    assert_eq!(robot.resource_names().await.unwrap().len(), 1);
    robot.close().await;
    machine.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_webrtc_dial_reaches_a_machine_that_comes_up_two_seconds_late() {
    let addr = free_addr().await;
    let machine = start_late(webrtc_config(), addr, Duration::from_secs(2));
    let conf = DialConf::webrtc("test-machine", addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let robot = RobotClient::connect(conf, Options::default()).await.expect("the first WebRTC dial is retried");
    assert!(robot.webrtc().is_some());
    assert_eq!(robot.resource_names().await.unwrap().len(), 1);
    robot.close().await;
    machine.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_not_retried() {
    let m = start(keyed_config()).await;
    let proxy = CountingProxy::start(m.addr).await;
    let wrong = Credentials::api_key("key-id", "wrong-secret");

    // Direct: one attempt, UNAUTHENTICATED.
    let conf = DialConf::direct(proxy.addr.to_string()).with_credentials(wrong.clone());
    let started = Instant::now();
    let err = RobotClient::connect(conf, Options::default()).await.expect_err("a wrong key cannot connect");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(proxy.count(), 1, "the machine saw {} dial attempts", proxy.count());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    // WebRTC through the machine's signaler: the same.
    let conf = DialConf::webrtc("test-machine", proxy.addr.to_string())
        .with_webrtc(|c| c.ice_servers = Vec::new())
        .with_credentials(wrong);
    let err = RobotClient::connect(conf, Options::default()).await.expect_err("a wrong key cannot connect");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(proxy.count(), 2, "the machine saw {} WebRTC dial attempts", proxy.count() - 1);

    // The right key still connects.
    let conf =
        DialConf::direct(proxy.addr.to_string()).with_credentials(Credentials::api_key("key-id", "right-secret"));
    RobotClient::connect(conf, Options::default()).await.expect("the right key connects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_not_retried() {
    let m = start(webrtc_config()).await;
    let proxy = CountingProxy::start(m.addr).await;
    let conf = DialConf::webrtc("no-such-host", proxy.addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let err = RobotClient::connect(conf, Options::default()).await.expect_err("unknown host");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("host not preconfigured"), "{err}");
    assert_eq!(proxy.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_should_retry_hook_decides() {
    // Nothing listens: every attempt fails with UNAVAILABLE. The hook allows
    // one retry, so there are exactly two attempts.
    let addr = free_addr().await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let options = Options::default().with_should_retry(move |e| {
        let mut v = seen.lock().unwrap();
        v.push(e.code());
        v.len() < 2
    });
    let err = RobotClient::connect(DialConf::direct(addr.to_string()), options).await.expect_err("nobody listens");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert_eq!(*asked.lock().unwrap(), [tonic::Code::Unavailable, tonic::Code::Unavailable]);

    // The hook replaces the built-in rule: it may retry a wrong key.
    let m = start(keyed_config()).await;
    let proxy = CountingProxy::start(m.addr).await;
    let conf = DialConf::direct(proxy.addr.to_string()).with_credentials(Credentials::api_key("key-id", "nope"));
    let options = Options::default()
        .with_reconnect(ReconnectOptions::default().with_max_attempts(3))
        .with_should_retry(|e| e.code() == tonic::Code::Unauthenticated);
    let err = RobotClient::connect(conf, options).await.expect_err("wrong key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(proxy.count(), 3, "max_attempts counts the first attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abort_handle_stops_a_dial_in_progress() {
    // A listener that accepts and never answers: each attempt hangs in the
    // HTTP/2 handshake until its dial timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let abort = AbortHandle::new();
    let options = Options::default().with_abort(abort.clone());
    let conf = DialConf::direct(addr.to_string()).with_dial_timeout(Duration::from_secs(30));
    let dial = tokio::spawn(RobotClient::connect(conf, options));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one attempt in progress");
    assert!(!dial.is_finished());
    let aborted = Instant::now();
    abort.abort();
    let result = tokio::time::timeout(Duration::from_secs(2), dial).await.expect("the abort ends the dial").unwrap();
    let err = result.expect_err("an aborted dial fails");
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err}");
    assert!(err.message().contains("aborted"), "{err}");
    assert!(aborted.elapsed() < Duration::from_millis(500), "took {:?}", aborted.elapsed());

    // Between attempts too (nothing listens; backoff sleeps are cut short).
    let addr = free_addr().await;
    let abort = AbortHandle::new();
    let options = Options::default().with_abort(abort.clone()).with_reconnect(
        ReconnectOptions::default().with_max_attempts(1000).with_max_wait(Some(Duration::from_secs(5))),
    );
    let dial = tokio::spawn(RobotClient::connect(DialConf::direct(addr.to_string()), options));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    abort.abort();
    let err = tokio::time::timeout(Duration::from_secs(1), dial).await.expect("aborted").unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webrtc_dial_falls_back_to_direct_where_enabled() {
    // WebRTC is off on this machine: its signaler knows no host.
    let m = start(config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"disable_webrtc":true}}"#,
    ))
    .await;
    let webrtc = |host: String, fallback: DirectFallback| {
        DialConf::webrtc(host, m.addr.to_string()).with_webrtc(|c| {
            c.ice_servers = Vec::new();
            c.direct_fallback = fallback;
        })
    };

    // An explicit fallback address.
    let robot =
        RobotClient::connect(webrtc("test-machine".into(), DirectFallback::To(m.addr.to_string())), Options::default())
            .await
            .expect("falls back to a direct dial");
    assert!(robot.webrtc().is_none(), "connected over WebRTC?");
    assert_eq!(robot.resource_names().await.unwrap().len(), 1);
    robot.close().await;

    // The default (as the TypeScript SDK): a local host name is dialed directly.
    let local = format!("localhost:{}", m.addr.port());
    let robot = RobotClient::connect(webrtc(local.clone(), DirectFallback::Auto), Options::default())
        .await
        .expect("a local host falls back by default");
    assert!(robot.webrtc().is_none());
    let mut events = robot.events();
    robot.close().await;
    let e = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert_eq!(e.name(), "disconnecting");

    // …but not when turned off, nor for a host that is not local.
    let err = RobotClient::connect(webrtc(local, DirectFallback::Never), Options::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = RobotClient::connect(webrtc("test-machine".into(), DirectFallback::Auto), Options::default())
        .await
        .unwrap_err();
    assert!(err.message().contains("host not preconfigured"), "{err}");

    // A fallback that fails too reports both.
    let nowhere = free_addr().await;
    let options = Options::default().with_reconnect(ReconnectOptions::default().with_max_attempts(2));
    let err = RobotClient::connect(webrtc("test-machine".into(), DirectFallback::To(nowhere.to_string())), options)
        .await
        .unwrap_err();
    assert!(err.message().contains("WebRTC:") && err.message().contains("direct fallback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_whose_ice_cannot_connect_falls_back_to_direct() {
    // The machine answers, but relay-only without any TURN server gathers
    // no candidate: ICE cannot connect and the dial times out.
    let m = start(webrtc_config()).await;
    let conf = DialConf::webrtc("test-machine", m.addr.to_string())
        .with_webrtc(|c| {
            c.ice_servers = Vec::new();
            c.force_relay = true;
            c.direct_fallback = DirectFallback::To(m.addr.to_string());
        })
        .with_dial_timeout(Duration::from_secs(2));
    let options = Options::default().with_reconnect(ReconnectOptions::default().with_max_attempts(1));
    let started = Instant::now();
    let robot = RobotClient::connect(conf, options).await.expect("falls back to direct");
    assert!(robot.webrtc().is_none(), "connected over WebRTC without candidates?");
    assert!(started.elapsed() >= Duration::from_secs(2), "the WebRTC attempt ended early: {:?}", started.elapsed());
    let mut events = robot.events();
    assert_eq!(robot.resource_names().await.unwrap().len(), 1);
    // Reconnections stay on the transport that connected.
    drop(m);
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("events").expect("open");
        if let ConnectionEvent::Dialing { method, .. } = e {
            assert_eq!(method, Method::Grpc);
            break;
        }
    }
    robot.close().await;
}

#[test]
fn dialing_events_name_the_method_as_the_typescript_sdk() {
    let e = ConnectionEvent::Dialing { method: Method::Grpc, attempt: 1 };
    assert_eq!(serde_json::to_value(&e).unwrap()["method"], "grpc");
    #[allow(deprecated)]
    let old = Method::Direct;
    assert_eq!(old, Method::Grpc);
}
