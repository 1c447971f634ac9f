//! The machine over WebRTC through its embedded signaler: the same router,
//! sessions and safety as over HTTP/2, plus connection-scoped safety.

mod common;

use std::time::Duration;

use common::*;
use tether_client::components::Motor;
use tether_client::{DialConf, Options, RobotClient};

fn webrtc_config(window: &str, extra: &str) -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}},
                           {{"name":"sensor1","api":"rdk:component:sensor","model":"rdk:builtin:fake"}}],
            "network":{{"sessions":{{"heartbeat_window":"{window}"}},"hosts":["test-machine"],"ice_servers":[]{extra}}}}}"#
    ))
}

fn dial(addr: std::net::SocketAddr, host: &str) -> DialConf {
    DialConf::webrtc(host, addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_sessions_and_stops_over_webrtc() {
    let m = start(webrtc_config("500ms", "")).await;
    let mut stops = m.machine.safety_stops();
    assert!(m.machine.webrtc_hosts().contains(&"test-machine".to_string()));
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.expect("webrtc dial");
    assert!(robot.webrtc().is_some());
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.5).await.unwrap();
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.5));
    let sid = robot.session_id().unwrap();
    let sessions = robot.sessions().await.unwrap();
    let me = sessions.iter().find(|s| s.id == sid).unwrap();
    assert_eq!(
        me.peer_connection_info.as_ref().unwrap().r#type,
        tether_proto::viam::robot::v1::PeerConnectionType::Webrtc as i32
    );
    // Status codes survive the data channel.
    let err = motor.set_power(3.0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = Motor::from_robot(&robot, "nope").stop().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Heartbeats over WebRTC keep it alive across windows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stops.try_recv().is_err());
    // A clean close: the session lapses, the motor stops.
    robot.close().await;
    let stop = tokio::time::timeout(Duration::from_secs(5), stops.recv()).await.unwrap().unwrap();
    assert_eq!(stop.resource, "motor1");
    assert_eq!(stop.session.map(|s| s.to_string()), Some(sid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessionless_webrtc_caller_is_stopped_when_its_connection_dies() {
    let m = start(webrtc_config("2s", "")).await;
    let mut stops = m.machine.safety_stops();
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default().with_disable_sessions(true))
        .await
        .unwrap();
    Motor::from_robot(&robot, "motor1").set_power(0.7).await.unwrap();
    assert_eq!(robot.session_id(), None);
    let closed_at = tokio::time::Instant::now();
    robot.webrtc().unwrap().close().await;
    let stop = tokio::time::timeout(Duration::from_secs(10), stops.recv()).await.expect("stopped").unwrap();
    assert_eq!(stop.resource, "motor1");
    assert!(stop.connection.is_some() && stop.session.is_none());
    let took = closed_at.elapsed();
    assert!(took < Duration::from_secs(2), "a clean close is noticed at once, took {took:?}");
    let observer = client(m.addr).await;
    assert!(!Motor::from_robot(&observer, "motor1").is_powered().await.unwrap().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_are_refused_by_the_embedded_signaler() {
    let m = start(webrtc_config("2s", "")).await;
    let err = RobotClient::connect(dial(m.addr, "someone-else"), Options::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("host not preconfigured"), "{err}");
    // Its listen address is one of its names too.
    let by_addr = m.addr.to_string();
    let robot = RobotClient::connect(dial(m.addr, &by_addr), Options::default()).await.unwrap();
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
}

fn full_config(extra: &str) -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}},
                           {{"name":"arm1","api":"rdk:component:arm","model":"rdk:builtin:fake"}},
                           {{"name":"generic1","api":"rdk:component:generic","model":"rdk:builtin:fake"}}],
            "network":{{"hosts":["test-machine"],"ice_servers":[]{extra}}}}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_large_messages_cancellation_and_deadlines_via_standalone_signaling() {
    let (sig, _sig_guard) = standalone_signaling(tether_signaling::MemoryQueue::new()).await;
    let _m = start(full_config(&format!(r#","signaling":["http://{sig}"]"#))).await;
    // The machine registers with the standalone signaler; retry until it has.
    let conf = DialConf::webrtc("test-machine", sig.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let robot = connect_when_registered(conf, 50).await.expect("dialed through the standalone signaler");

    // Large messages both ways (5 MiB echoed by DoCommand).
    let generic = tether_client::components::Generic::from_robot(&robot, "generic1");
    let big = "x".repeat(5 << 20);
    let echoed = generic.do_command_json(&serde_json::json!({ "blob": big })).await.unwrap();
    assert_eq!(echoed["blob"].as_str().map(str::len), Some(5 << 20));

    // Bidi streaming: a streamed arm trajectory with acks.
    use tether_proto::viam::component::arm::v1 as arm;
    let point = |t: i64, v: f64| arm::TrajectoryPoint {
        time: Some(prost_types::Duration { seconds: 0, nanos: (t * 1_000_000) as i32 }),
        positions: Some(arm::JointPositions { values: vec![v; 6] }),
        constraints: None,
    };
    let arm_client = tether_client::components::Arm::from_robot(&robot, "arm1");
    let acks = arm_client
        .move_through_joint_positions_streamed(vec![vec![point(0, 0.0), point(50, 1.0)], vec![point(100, 2.0)]])
        .await
        .unwrap();
    assert_eq!(acks, 2);

    // Many concurrent streams.
    let motor = Motor::from_robot(&robot, "motor1");
    let calls = (0..128).map(|_| {
        let motor = motor.clone();
        async move { motor.is_moving().await }
    });
    for r in futures::future::join_all(calls).await {
        assert!(!r.unwrap());
    }

    // Cancellation: dropping a long GoFor resets its stream; the handler is
    // cancelled and the fake stops the motor.
    let long = {
        let motor = motor.clone();
        tokio::spawn(async move { motor.go_for(100.0, 1000.0).await })
    };
    while !motor.is_moving().await.unwrap() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    long.abort();
    stops_within(&motor, Duration::from_secs(5)).await.expect("cancelling the call stops the motor");

    // Deadline: a call that outlives its timeout ends, and so does its motion.
    // The client's own timer fires first (the machine's starts when the request
    // arrives), and it resets the stream; the machine drops the handler in the
    // call's task, which may run after the next request is answered. So the
    // stop is awaited, not assumed at the instant the error returns.
    let mut stub =
        tether_proto::viam::component::motor::v1::motor_service_client::MotorServiceClient::new(robot.channel());
    let mut req = tonic::Request::new(tether_proto::viam::component::motor::v1::GoForRequest {
        name: "motor1".into(),
        rpm: 100.0,
        revolutions: 1000.0,
        extra: None,
    });
    req.set_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let err = stub.go_for(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    stops_within(&motor, Duration::from_secs(2)).await.expect("the motor stops once its call's deadline passed");
    robot.close().await;
}

/// Polls until the motor reports it is not moving; `Err` if it still moves
/// after `limit`.
async fn stops_within(motor: &Motor, limit: Duration) -> Result<(), tokio::time::error::Elapsed> {
    let stopped = async {
        while motor.is_moving().await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(limit, stopped).await
}

async fn eventually_idle(m: &TestMachine) {
    for _ in 0..300 {
        if m.machine.webrtc_stats() == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("peer connections leaked: {:?}", m.machine.webrtc_stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_data_channel_is_dropped_and_the_machine_keeps_serving() {
    let m = start(full_config("")).await;
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
    assert_eq!(robot.resource_names().await.unwrap().len(), 3);
    assert_eq!(m.machine.webrtc_stats(), (0, 1));
    let raw = robot.webrtc().unwrap();
    use prost::Message;
    use tether_proto::proto::rpc::webrtc::v1 as pb;
    // Not protobuf; a frame without a stream; messages for unknown streams; a
    // message packet without headers; an rst for a stream that never existed.
    let unknown = pb::Request {
        stream: Some(pb::Stream { id: 9_999 }),
        r#type: Some(pb::request::Type::Message(pb::RequestMessage {
            has_message: true,
            packet_message: Some(pb::PacketMessage { data: vec![1, 2, 3], eom: true }),
            eos: true,
        })),
    };
    let no_stream = pb::Request { stream: None, r#type: Some(pb::request::Type::RstStream(true)) };
    let rst = pb::Request { stream: Some(pb::Stream { id: 7_777 }), r#type: Some(pb::request::Type::RstStream(true)) };
    for packet in
        [vec![0xff; 100], no_stream.encode_to_vec(), unknown.encode_to_vec(), rst.encode_to_vec(), vec![0x0a, 0x80]]
    {
        raw.send_raw(bytes::Bytes::from(packet)).await.unwrap();
    }
    // An oversized request message (40 MiB in 16 KiB packets would take a
    // while; the limit check happens as it grows, so announce it through the
    // framing with a real call instead).
    let generic = tether_client::components::Generic::from_robot(&robot, "generic1");
    let err = generic.do_command_json(&serde_json::json!({ "blob": "y".repeat(33 << 20) })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // Still serving, on the same connection.
    assert_eq!(robot.resource_names().await.unwrap().len(), 3);
    Motor::from_robot(&robot, "motor1").set_power(0.2).await.unwrap();
    robot.close().await;
    eventually_idle(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signaling_input_and_a_caller_that_never_finishes_ice() {
    use tether_proto::proto::rpc::webrtc::v1 as pb;
    let m = start(full_config("")).await;
    let channel =
        tether_transport::dial::DirectConnection::connect(&m.addr.to_string(), &Default::default()).await.unwrap();
    let mut sig = pb::signaling_service_client::SignalingServiceClient::new(channel);
    let call = |sdp: &str, host: &str| {
        let mut req = tonic::Request::new(pb::CallRequest { sdp: sdp.into(), disable_trickle: false });
        req.metadata_mut().insert("rpc-host", host.parse().unwrap());
        req
    };
    // Unknown host.
    let err = sig.call(call("x", "nobody")).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "host not preconfigured"));
    // Bad SDP: the machine answers with an error, which reaches the caller.
    let mut stream = sig.call(call("bm90IGpzb24=", "test-machine")).await.unwrap().into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("error from answerer"), "{err:?}");

    // A real offer from a peer that then never does ICE: the machine answers,
    // waits until the offer's deadline, and cleans everything up.
    let peer = tether_transport::webrtc::RtcPeer::new(
        &tether_transport::webrtc::peer::PeerOptions::default().with_ice_servers(vec![]),
        Default::default(),
    )
    .await
    .unwrap();
    let offer = peer.create_offer().unwrap();
    let sdp = tether_transport::webrtc::sdp::encode(tether_transport::webrtc::sdp::SdpKind::Offer, &offer);
    peer.close(); // no ICE from our side
    let mut stream = sig.call(call(&sdp, "test-machine")).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.stage, Some(pb::call_response::Stage::Init(_))));
    assert_eq!(m.machine.webrtc_stats().0, 1, "the exchange is pending");
    drop(stream);
    eventually_idle(&m).await;
    // And the machine still answers a proper caller.
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
    assert_eq!(robot.resource_names().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_machine_requires_credentials_for_webrtc_too() {
    let m = start(config(
        r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"hosts":["auth-bot"],"ice_servers":[]},
            "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"k1","key":"s1"}]}}]}}"#,
    ))
    .await;
    // Signaling on the machine's port is behind the same authentication.
    let err = RobotClient::connect(dial(m.addr, "auth-bot"), Options::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let robot = RobotClient::connect(
        dial(m.addr, "auth-bot").with_credentials(tether_client::Credentials::api_key("k1", "s1")),
        Options::default(),
    )
    .await
    .unwrap();
    assert!(robot.webrtc().is_some());
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.4).await.unwrap();
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.4));
    assert!(robot.session_id().is_some());
}

/// A caller like the Python SDK: it writes its first call the instant its
/// side of the data channel opens, without waiting for the machine's `done`.
/// Returns whether GetVersion was answered (Ok(false): the connection was
/// closed instead); Err if neither happened within `limit` (a hang).
async fn eager_dial(addr: std::net::SocketAddr, limit: Duration) -> Result<bool, String> {
    use tether_proto::proto::rpc::webrtc::v1 as pb;
    use tether_proto::viam::robot::v1::{GetVersionRequest, robot_service_client::RobotServiceClient};
    use tether_transport::webrtc::sdp::{self, SdpKind};
    use tether_transport::webrtc::{PeerEvent, RtcPeer};
    let options = tether_transport::webrtc::peer::PeerOptions::default().with_ice_servers(vec![]);
    let peer = RtcPeer::new(&options, Default::default()).await.map_err(|e| e.to_string())?;
    let rpc = peer.channel(Default::default());
    peer.create_offer().map_err(|e| e.to_string())?;
    while !matches!(peer.next_event().await, Some(PeerEvent::GatheringComplete) | None) {}
    let local = peer.local_description().ok_or("no offer")?;
    let channel = tether_transport::dial::DirectConnection::connect(&addr.to_string(), &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut sig = pb::signaling_service_client::SignalingServiceClient::new(channel);
    let mut req =
        tonic::Request::new(pb::CallRequest { sdp: sdp::encode(SdpKind::Offer, &local), disable_trickle: true });
    req.metadata_mut().insert("rpc-host", "test-machine".parse().map_err(|_| "host")?);
    let mut answers = sig.call(req).await.map_err(|e| e.to_string())?.into_inner();
    let Some(pb::call_response::Stage::Init(init)) =
        answers.message().await.map_err(|e| e.to_string())?.and_then(|m| m.stage)
    else {
        return Err("no answer".into());
    };
    let (_, answer) = sdp::decode(&init.sdp).map_err(|e| e.to_string())?;
    let events = peer.clone();
    let outcome = async move {
        events.accept_answer(answer).map_err(|e| e.to_string())?;
        loop {
            match events.next_event().await {
                Some(PeerEvent::Open) => break,
                Some(PeerEvent::Closed(_)) | None => return Ok(false),
                _ => {}
            }
        }
        // The call goes out the instant our side is open. The machine
        // closing the connection fails it (UNAVAILABLE).
        Ok(RobotServiceClient::new(rpc).get_version(GetVersionRequest {}).await.is_ok())
    };
    let result = tokio::time::timeout(limit, outcome).await.map_err(|_| "hung".to_string())?;
    peer.close();
    drop(answers);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_writes_the_instant_its_channel_opens_never_hangs() {
    // webrtc-rs 0.17 (and `rtc` 0.21 when the machine answers as the DTLS
    // client) could lose the machine's side of the negotiated channel to such
    // a caller's first message. The machine answers as the DTLS/SCTP server,
    // so its side is open before the caller's: every dial is answered.
    let m = start(full_config("")).await;
    // The embedded signaler knows the host once the machine's answerers are in.
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
    robot.close().await;
    let (mut answered, mut closed) = (0, 0);
    for _ in 0..10 {
        let dials: Vec<_> = (0..4).map(|_| tokio::spawn(eager_dial(m.addr, Duration::from_secs(4)))).collect();
        for d in dials {
            match d.await.unwrap() {
                Ok(true) => answered += 1,
                Ok(false) => closed += 1,
                Err(e) => panic!("a dial neither got an answer nor was closed: {e}"),
            }
        }
    }
    assert_eq!(answered, 40, "{answered} of 40 eager dials answered ({closed} closed by the machine)");
    eventually_idle(&m).await;
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
    assert_eq!(robot.resource_names().await.unwrap().len(), 3);
}

/// Over the data channel too, an unknown method's UNIMPLEMENTED names the
/// method (the TypeScript SDK shows only the message over WebRTC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_over_webrtc_is_named_in_the_status() {
    let m = start(full_config("")).await;
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(robot.webrtc().unwrap().channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/nope.v1.Nothing/Here");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let err = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::Unimplemented, "unknown method /nope.v1.Nothing/Here"));
    robot.close().await;
}

/// On an open machine nobody can take the machine's calls at its embedded
/// signaler: an external `Answer` stream for its own name is refused, and
/// every caller reaches the real machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_answers_at_the_embedded_signaler() {
    use tether_proto::proto::rpc::webrtc::v1 as pb;
    let m = start(full_config("")).await;
    let conn =
        tether_transport::dial::DirectConnection::connect(&m.addr.to_string(), &Default::default()).await.unwrap();
    let mut signaling = pb::signaling_service_client::SignalingServiceClient::new(conn);
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AnswerResponse>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert("rpc-host", "test-machine".parse().unwrap());
    let err = signaling.answer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    for _ in 0..20 {
        let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options::default()).await.unwrap();
        assert_eq!(robot.resource_names().await.unwrap().len(), 3);
        robot.close().await;
    }
}
