//! Caller identity over WebRTC: the signaler vouches for the caller it
//! authenticated, the machine verifies the assertion and owns sessions per
//! caller, and every way of getting this wrong is refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tether_client::components::Motor;
use tether_client::{Credentials, DialConf, Options, RobotClient};
use tether_proto::viam::robot::v1 as pb;
use tether_signaling::{KeyGrants, MemoryQueue, SignalingServer, VouchKeys};
use tether_transport::auth::{ApiKey, AuthLayer, AuthServer, Authority};
use tether_transport::identity::VouchKey;
use tokio_util::sync::CancellationToken;

const BOT: &str = "id-bot";

/// How the test signaler vouches for callers.
enum Vouching {
    /// With the answering machine's key (correct).
    Honest,
    /// With a key that is not the machine's (a forger).
    WrongKey,
    /// Not at all.
    Off,
}

/// An authorized standalone signaler: alice and bob may call BOT, the
/// machine key may answer for it, mallory's key may answer for nothing.
async fn signaler(vouching: Vouching) -> (SocketAddr, CancellationToken) {
    let keys = vec![
        ApiKey { id: "alice".into(), key: "alice-secret".into() },
        ApiKey { id: "bob".into(), key: "bob-secret".into() },
        ApiKey { id: "bot-machine".into(), key: "machine-secret".into() },
        ApiKey { id: "mallory".into(), key: "mallory-secret".into() },
    ];
    let authority = Arc::new(Authority::new("tether-signaling", keys));
    let grants =
        KeyGrants::new().grant_call("alice", [BOT]).grant_call("bob", [BOT]).grant_answer("bot-machine", [BOT]);
    let mut builder = SignalingServer::builder(Arc::new(MemoryQueue::new())).authorizer(Arc::new(grants));
    let lookup: Option<VouchKeys> = match vouching {
        Vouching::Honest => {
            let a = authority.clone();
            Some(Arc::new(move |answerer: &str| a.vouch_key(answerer)))
        }
        Vouching::WrongKey => Some(Arc::new(|_: &str| Some(VouchKey::from_secret("not the machine's secret")))),
        Vouching::Off => None,
    };
    if let Some(lookup) = lookup {
        builder = builder.vouch_keys(lookup);
    }
    let routes = tonic::service::Routes::new(builder.build().into_service())
        .add_service(AuthServer::new(authority.clone()).into_service());
    let svc = tower::ServiceBuilder::new().layer(AuthLayer::new(Some(authority))).service(routes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_transport::server::serve(
        listener,
        tower::util::BoxCloneSyncService::new(svc),
        Default::default(),
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// A machine answering for BOT at `sig` with the machine key; with `auth`
/// it also requires API keys of its own (and so vouched WebRTC callers).
async fn machine(sig: SocketAddr, auth: bool, signaling_key: (&str, &str)) -> TestMachine {
    let auth = if auth {
        r#","auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"direct","key":"direct-secret"}]}}]}"#
    } else {
        ""
    };
    let (id, key) = signaling_key;
    start(config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"hosts":["{BOT}"],"ice_servers":[],"signaling":["http://{sig}"],
                        "signaling_api_key":{{"id":"{id}","key":"{key}"}}}}{auth}}}"#
    )))
    .await
}

fn conf(sig: SocketAddr, who: &str, secret: &str) -> DialConf {
    DialConf::webrtc(BOT, sig.to_string())
        .with_webrtc(|c| c.ice_servers = Vec::new())
        .with_credentials(Credentials::api_key(who, secret))
}

/// Dials, retrying while the machine has not registered yet (NOT_FOUND).
async fn dial(sig: SocketAddr, who: &str, secret: &str) -> Result<RobotClient, tether_client::Error> {
    connect_when_registered(conf(sig, who, secret), 60).await
}

fn owner_of(m: &TestMachine, sid: &str) -> Option<String> {
    m.machine.sessions().list().into_iter().find(|s| s.id.to_string() == sid).map(|s| s.owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_sessions_belong_to_the_vouched_caller() {
    let (sig, _s) = signaler(Vouching::Honest).await;
    let m = machine(sig, true, ("bot-machine", "machine-secret")).await;
    let alice = dial(sig, "alice", "alice-secret").await.unwrap();
    let bob = dial(sig, "bob", "bob-secret").await.unwrap();
    assert!(alice.webrtc().is_some() && bob.webrtc().is_some());

    Motor::from_robot(&alice, "motor1").set_power(0.5).await.unwrap();
    Motor::from_robot(&bob, "motor1").is_powered().await.unwrap();
    let alice_sid = alice.session_id().unwrap();
    // Reads are not monitored: start bob's session explicitly.
    let bob_sid = bob.start_session().await.unwrap().unwrap();
    // The machine knows who is calling, though no credentials travel on the data channel.
    assert_eq!(owner_of(&m, &alice_sid).as_deref(), Some("alice"));
    assert_eq!(owner_of(&m, &bob_sid).as_deref(), Some("bob"));
    assert_eq!(m.machine.sessions().last_caller("motor1").map(|u| u.to_string()), Some(alice_sid.clone()));

    // Bob cannot heartbeat alice's session …
    let mut bob_robot = pb::robot_service_client::RobotServiceClient::new(bob.channel());
    let err =
        bob_robot.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: alice_sid.clone() }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "SESSION_EXPIRED"));
    // … nor resume it …
    let resumed =
        bob_robot.start_session(pb::StartSessionRequest { resume: alice_sid.clone() }).await.unwrap().into_inner();
    assert_ne!(resumed.id, alice_sid);
    assert_eq!(owner_of(&m, &resumed.id).as_deref(), Some("bob"));
    // … nor use it on a call (the raw data channel, no session layer in between).
    let raw = bob.webrtc().unwrap();
    let mut motor =
        tether_proto::viam::component::motor::v1::motor_service_client::MotorServiceClient::new(raw.channel.clone());
    let mut req = tonic::Request::new(tether_proto::viam::component::motor::v1::SetPowerRequest {
        name: "motor1".into(),
        power_pct: 1.0,
        extra: None,
    });
    req.metadata_mut().insert("viam-sid", alice_sid.parse().unwrap());
    let err = motor.set_power(req).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "SESSION_EXPIRED"));
    // Alice still owns her session and the motor; her own heartbeat works.
    assert_eq!(m.machine.sessions().last_caller("motor1").map(|u| u.to_string()), Some(alice_sid.clone()));
    let mut alice_robot = pb::robot_service_client::RobotServiceClient::new(alice.channel());
    alice_robot.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: alice_sid.clone() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_machine_still_learns_the_vouched_caller() {
    let (sig, _s) = signaler(Vouching::Honest).await;
    let m = machine(sig, false, ("bot-machine", "machine-secret")).await;
    let alice = dial(sig, "alice", "alice-secret").await.unwrap();
    Motor::from_robot(&alice, "motor1").set_power(0.2).await.unwrap();
    assert_eq!(owner_of(&m, &alice.session_id().unwrap()).as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_missing_assertion_is_refused_by_an_authenticated_machine() {
    // A signaler that signs with the wrong key: the machine rejects the offer.
    let (sig, _s) = signaler(Vouching::WrongKey).await;
    let m = machine(sig, true, ("bot-machine", "machine-secret")).await;
    let err = dial(sig, "alice", "alice-secret").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("caller assertion rejected: bad signature"), "{err}");
    drop(m);

    // A signaler that does not vouch: an authenticated machine lets no anonymous peer in.
    let (sig, _s) = signaler(Vouching::Off).await;
    let m = machine(sig, true, ("bot-machine", "machine-secret")).await;
    let err = dial(sig, "alice", "alice-secret").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("did not vouch"), "{err}");
    // Nothing was left behind on the machine (the refused exchange winds down on its own task).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.machine.webrtc_stats() != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.machine.webrtc_stats(), (0, 0));
    assert!(m.machine.sessions().list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_key_may_not_answer_for_a_host_it_does_not_own() {
    let (sig, _s) = signaler(Vouching::Honest).await;
    // Mallory's key is valid at the signaler but may answer for nothing:
    // the machine never comes online there.
    let _m = machine(sig, true, ("mallory", "mallory-secret")).await;
    // Absence needs time: give the refused answerer a chance to (wrongly) register.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = RobotClient::connect(conf(sig, "alice", "alice-secret"), Options::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_signaler_names_each_keyed_caller_to_its_machine() {
    let m = start(config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"hosts":["emb-bot"],"ice_servers":[]},
            "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"k1","key":"s1"},{"id":"k2","key":"s2"}]}}]}}"#,
    ))
    .await;
    let dial = |id: &str, key: &str| {
        DialConf::webrtc("emb-bot", m.addr.to_string())
            .with_webrtc(|c| c.ice_servers = Vec::new())
            .with_credentials(Credentials::api_key(id, key))
    };
    let one = RobotClient::connect(dial("k1", "s1"), Options::default()).await.unwrap();
    let two = RobotClient::connect(dial("k2", "s2"), Options::default()).await.unwrap();
    Motor::from_robot(&one, "motor1").set_power(0.3).await.unwrap();
    Motor::from_robot(&two, "motor1").is_powered().await.unwrap();
    let (sid1, sid2) = (one.session_id().unwrap(), two.start_session().await.unwrap().unwrap());
    assert_eq!(owner_of(&m, &sid1).as_deref(), Some("k1"));
    assert_eq!(owner_of(&m, &sid2).as_deref(), Some("k2"));
    let mut robot2 = pb::robot_service_client::RobotServiceClient::new(two.channel());
    let err = robot2.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: sid1 }).await.unwrap_err();
    assert_eq!(err.message(), "SESSION_EXPIRED");

    // A key holder cannot answer for the machine at its embedded signaler
    // (it would take the machine's calls).
    let channel =
        tether_transport::dial::DirectConnection::connect(&m.addr.to_string(), &Default::default()).await.unwrap();
    let token = tether_transport::dial::authenticate(channel.clone(), &Credentials::api_key("k2", "s2")).await.unwrap();
    let mut signaling =
        tether_proto::proto::rpc::webrtc::v1::signaling_service_client::SignalingServiceClient::new(channel);
    let (_tx, rx) = tokio::sync::mpsc::channel::<tether_proto::proto::rpc::webrtc::v1::AnswerResponse>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("rpc-host", "emb-bot".parse().unwrap());
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = signaling.answer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
}
