//! Reconnection: drops are noticed, calls in flight fail with UNAVAILABLE,
//! the client redials with backoff, resumes its session, and reports it.
//! Drops are made with a TCP proxy between client and machine (the netns
//! suite does it with real link cuts).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tether_transport::metrics::prometheus_client::registry::Registry;

use common::*;
use parking_lot::Mutex;
use tether_client::components::Motor;
use tether_client::{ConnectionEvent, ConnectionState, DialConf, Options, ReconnectOptions, RobotClient};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// A TCP proxy whose connections can be cut and whose listener can be shut.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Arc::new(Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            conns: Arc::default(),
            accept: Mutex::new(None),
        });
        p.listen(listener);
        p
    }

    fn listen(self: &Arc<Self>, listener: TcpListener) {
        let conns = self.conns.clone();
        let upstream = self.upstream;
        *self.accept.lock() = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns.lock().push(task);
            }
        }));
    }

    /// Drops every proxied connection (both directions close).
    fn cut(&self) {
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Stops accepting (connections are refused) and cuts.
    fn down(&self) {
        if let Some(a) = self.accept.lock().take() {
            a.abort();
        }
        self.cut();
    }

    /// Accepts again on the same address.
    async fn up(self: &Arc<Self>) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.listen(listener);
    }
}

async fn next_event(rx: &mut broadcast::Receiver<ConnectionEvent>, limit: Duration) -> ConnectionEvent {
    tokio::time::timeout(limit, rx.recv()).await.expect("an event in time").expect("events open")
}

async fn wait_for(
    rx: &mut broadcast::Receiver<ConnectionEvent>,
    name: &str,
    limit: Duration,
) -> (ConnectionEvent, Vec<ConnectionEvent>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = next_event(rx, left).await;
        if e.name() == name {
            return (e, seen);
        }
        seen.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_drop_reconnects_and_resumes_the_same_session() {
    let m = start(motor_config("2s")).await;
    let mut stops = m.machine.safety_stops();
    let proxy = Proxy::start(m.addr).await;
    let robot = RobotClient::connect(DialConf::direct(proxy.addr.to_string()), Options::default()).await.unwrap();
    let mut events = robot.events();
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.5).await.unwrap();
    let sid = robot.session_id().unwrap();

    proxy.cut();
    let (e, _) = wait_for(&mut events, "reconnecting", Duration::from_secs(2)).await;
    assert!(matches!(e, ConnectionEvent::Reconnecting { .. }));
    let (e, _) = wait_for(&mut events, "connected", Duration::from_secs(5)).await;
    assert!(matches!(e, ConnectionEvent::Connected { reconnected: true, .. }), "{e:?}");
    let (e, _) = wait_for(&mut events, "session_resumed", Duration::from_secs(2)).await;
    assert_eq!(e, ConnectionEvent::SessionResumed { id: sid.clone() });
    // Same session, nothing stopped, and the old component client still works.
    assert_eq!(robot.session_id(), Some(sid));
    assert!(stops.try_recv().is_err());
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.5));
    assert_eq!(*robot.state().borrow(), ConnectionState::Connected);
    // The client's counters for an embedder, and the machine's, say the same.
    let mut registry = Registry::default();
    robot.metrics().register(&mut registry);
    let (_, text) = tether_transport::metrics::render(&registry, None);
    for line in
        ["tether_client_drops_total 1", "tether_client_reconnects_total 1", "tether_client_sessions_resumed_total 1"]
    {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert_eq!(robot.metrics().sessions_lapsed.get(), 0);
    assert!(robot.metrics().dials.get() >= 2);
    assert_eq!(m.machine.metrics().sessions_resumed.get(), 1);
    assert_eq!(m.machine.metrics().sessions_started.get(), 1);
    assert_eq!(m.machine.metrics().sessions_expired.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_lapses_the_session_and_the_client_says_so() {
    let m = start(motor_config("300ms")).await;
    let mut stops = m.machine.safety_stops();
    let proxy = Proxy::start(m.addr).await;
    let options = Options::default().with_reconnect(
        ReconnectOptions::default().with_max_wait(Some(Duration::from_millis(200))).with_max_attempts(50),
    );
    let robot = RobotClient::connect(DialConf::direct(proxy.addr.to_string()), options).await.unwrap();
    let mut events = robot.events();
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.5).await.unwrap();
    let old = robot.session_id().unwrap();

    proxy.down();
    // While reconnecting, calls fail fast with UNAVAILABLE ...
    wait_for(&mut events, "reconnecting", Duration::from_secs(2)).await;
    let err = motor.is_powered().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    // ... and the machine stops the motor when the session lapses.
    let stop = tokio::time::timeout(Duration::from_secs(3), stops.recv()).await.unwrap().unwrap();
    assert_eq!(stop.session.map(|s| s.to_string()), Some(old.clone()));
    // A caller that opts in waits for the connection instead.
    let waiting = {
        let motor = Motor::from_robot(&robot.wait_for_ready(), "motor1");
        tokio::spawn(async move { motor.is_powered().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.up().await;
    let (e, _) = wait_for(&mut events, "session_lapsed", Duration::from_secs(5)).await;
    let ConnectionEvent::SessionLapsed { old: reported, new } = e else { unreachable!() };
    assert_eq!(reported, old);
    assert_ne!(new, old);
    assert_eq!(waiting.await.unwrap().unwrap(), (false, 0.0), "the waiting call ran after reconnecting");
    let (client, machine) = (robot.metrics(), m.machine.metrics());
    assert_eq!((client.drops.get(), client.reconnects.get()), (1, 1));
    assert_eq!((client.sessions_resumed.get(), client.sessions_lapsed.get()), (0, 1));
    assert_eq!((machine.sessions_started.get(), machine.sessions_expired.get()), (2, 1));
    assert_eq!(machine.safety_stops.get_or_create(&[("cause", "session_expired")]).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_unary_and_stream_fail_with_unavailable() {
    let cfg = config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"fake"},
                          {"name":"arm1","api":"rdk:component:arm","model":"fake"}]}"#,
    );
    let m = start(cfg).await;
    let proxy = Proxy::start(m.addr).await;
    let robot = RobotClient::connect(DialConf::direct(proxy.addr.to_string()), Options::default()).await.unwrap();
    let motor = Motor::from_robot(&robot, "motor1");
    let unary = {
        let motor = motor.clone();
        tokio::spawn(async move { motor.go_for(10.0, 100.0).await })
    };
    let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(robot.channel());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stream_call = tokio::spawn(async move {
        let mut s = refl.server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        s.message().await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut_at = tokio::time::Instant::now();
    proxy.cut();
    let unary_err = tokio::time::timeout(Duration::from_secs(5), unary).await.expect("no hang").unwrap().unwrap_err();
    assert_eq!(unary_err.code(), tonic::Code::Unavailable, "{unary_err}");
    let stream_err =
        tokio::time::timeout(Duration::from_secs(5), stream_call).await.expect("no hang").unwrap().unwrap_err();
    assert_eq!(stream_err.code(), tonic::Code::Unavailable, "{stream_err}");
    assert!(cut_at.elapsed() < Duration::from_secs(2), "took {:?}", cut_at.elapsed());
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reconnect_gives_one_disconnected_event() {
    let m = start(motor_config("2s")).await;
    let proxy = Proxy::start(m.addr).await;
    let options = Options::default().with_reconnect(ReconnectOptions::default().with_no_reconnect(true));
    let robot = RobotClient::connect(DialConf::direct(proxy.addr.to_string()), options).await.unwrap();
    let mut events = robot.events();
    proxy.cut();
    let e = next_event(&mut events, Duration::from_secs(2)).await;
    assert!(matches!(e, ConnectionEvent::Disconnected { error: Some(_) }), "{e:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(events.try_recv().is_err(), "no retries");
    assert_eq!(*robot.state().borrow(), ConnectionState::Disconnected);
    assert_eq!(robot.resource_names().await.unwrap_err().code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attempts_against_a_dead_machine_then_reconnection_failed() {
    let m = start(motor_config("2s")).await;
    let proxy = Proxy::start(m.addr).await;
    let options = Options::default().with_reconnect(ReconnectOptions::default().with_max_attempts(3));
    let robot = RobotClient::connect(DialConf::direct(proxy.addr.to_string()), options).await.unwrap();
    let mut events = robot.events();
    let started = tokio::time::Instant::now();
    proxy.down();
    let (failed, seen) = wait_for(&mut events, "reconnection_failed", Duration::from_secs(5)).await;
    assert_eq!(failed.name(), "reconnection_failed");
    assert!(matches!(failed, ConnectionEvent::ReconnectionFailed { attempts: 3, .. }), "{failed:?}");
    let dials: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::Dialing { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(dials, vec![1, 2, 3]);
    let delays: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::RetryScheduled { delay_ms, .. } => Some(*delay_ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 2);
    assert!((50..=100).contains(&delays[0]) && (100..=200).contains(&delays[1]), "{delays:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(*robot.state().borrow(), ConnectionState::Disconnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_restart_is_survived_over_webrtc() {
    let cfg = || {
        config(
            r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"fake"}],
                "network":{"hosts":["restart-bot"],"ice_servers":[]}}"#,
        )
    };
    let first = start(cfg()).await;
    let addr = first.addr;
    let conf = DialConf::webrtc("restart-bot", addr.to_string()).with_webrtc(|c| c.ice_servers.clear());
    let options = Options::default().with_reconnect(
        ReconnectOptions::default().with_max_wait(Some(Duration::from_millis(300))).with_max_attempts(40),
    );
    let robot = RobotClient::connect(conf, options).await.unwrap();
    let mut events = robot.events();
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.3).await.unwrap();
    drop(first); // the machine goes away (its listener and answerers stop)
    wait_for(&mut events, "reconnecting", Duration::from_secs(10)).await;
    // A new machine process on the same address.
    let machine = tether_machine::Machine::from_config(&cfg(), &tether_machine::models::Models::builtin()).unwrap();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(async move { machine.serve(listener, Default::default(), shutdown).await });
    let (e, _) = wait_for(&mut events, "connected", Duration::from_secs(15)).await;
    assert!(matches!(e, ConnectionEvent::Connected { reconnected: true, method: tether_client::Method::Webrtc, .. }));
    let (e, _) = wait_for(&mut events, "session_lapsed", Duration::from_secs(5)).await;
    assert!(matches!(e, ConnectionEvent::SessionLapsed { .. }), "a restarted machine has no old session");
    assert_eq!(motor.is_powered().await.unwrap(), (false, 0.0));
    motor.set_power(0.1).await.unwrap();
}

/// A standalone signaling service that can be stopped and started again on
/// the same address.
async fn signaling_on(addr: SocketAddr) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let server = tether_signaling::SignalingServer::new(Arc::new(tether_signaling::MemoryQueue::new()));
    let svc = tower::util::BoxCloneSyncService::new(tonic::service::Routes::new(server.into_service()));
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(tether_transport::server::serve(listener, svc, Default::default(), shutdown.clone()));
    (addr, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_restart_is_survived_by_machine_and_client() {
    let (sig, sig_stop) = signaling_on("127.0.0.1:0".parse().unwrap()).await;
    let cfg = config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"fake"}}],
            "network":{{"hosts":["sig-bot"],"ice_servers":[],"signaling":["http://{sig}"]}}}}"#
    ));
    let m = start(cfg).await;
    let conf = DialConf::webrtc("sig-bot", sig.to_string()).with_webrtc(|c| c.ice_servers.clear());
    let options = Options::default().with_reconnect(
        ReconnectOptions::default().with_max_wait(Some(Duration::from_millis(300))).with_max_attempts(60),
    );
    let connect = || async {
        for _ in 0..100 {
            match RobotClient::connect(conf.clone(), options.clone()).await {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("could not dial through signaling");
    };
    let robot = connect().await;
    let mut events = robot.events();
    Motor::from_robot(&robot, "motor1").set_power(0.2).await.unwrap();

    // Signaling goes away: the established connection does not need it.
    sig_stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(Motor::from_robot(&robot, "motor1").is_powered().await.unwrap(), (true, 0.2));

    // Signaling comes back on the same address; the machine re-registers
    // with backoff and a new client can dial.
    let (_, _sig_stop2) = signaling_on(sig).await;
    let second = connect().await;
    assert_eq!(second.resource_names().await.unwrap().len(), 1);

    // The first client's connection dies (the machine drops its peers when
    // told to by the test); it redials through the restarted signaler.
    robot.webrtc().unwrap().close().await;
    let (e, _) = wait_for(&mut events, "connected", Duration::from_secs(15)).await;
    assert!(matches!(e, ConnectionEvent::Connected { reconnected: true, .. }), "{e:?}");
    let (e, _) = wait_for(&mut events, "session_resumed", Duration::from_secs(5)).await;
    assert!(matches!(e, ConnectionEvent::SessionResumed { .. }));
    assert_eq!(m.machine.resources().len(), 1);
}
