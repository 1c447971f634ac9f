//! Session ownership on a machine without auth (issue 15 item 4) and the
//! status messages a request can shape (item 6).
//!
//! On an open machine a caller is the host it calls from (see
//! `tether_machine::monitor::identity`); the tests put the other caller on
//! a second loopback address, 127.0.0.2.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use tether_client::components::Motor;
use tether_client::{DialConf, Options, RobotClient};
use tether_proto::viam::component::motor::v1 as motorpb;
use tether_proto::viam::robot::v1 as pb;
use tether_transport::dial::{DirectConnection, DirectOptions};

type Robot = pb::robot_service_client::RobotServiceClient<DirectConnection>;

fn open_config(window: &str) -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"sessions":{{"heartbeat_window":"{window}"}},"hosts":["test-machine"],"ice_servers":[]}}}}"#
    ))
}

/// A raw connection from `local` (a second loopback address plays another host).
async fn raw_from(addr: SocketAddr, local: [u8; 4]) -> DirectConnection {
    let options = DirectOptions::default().with_local_address(Some(local.into()));
    DirectConnection::connect(&addr.to_string(), &options).await.expect("connect from a second loopback address")
}

async fn sessions_of(robot: &mut Robot) -> Vec<pb::Session> {
    robot.get_sessions(pb::GetSessionsRequest {}).await.unwrap().into_inner().sessions
}

fn heartbeat(id: &str) -> pb::SendSessionHeartbeatRequest {
    pb::SendSessionHeartbeatRequest { id: id.to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sessions_and_operations_show_only_the_callers_own_session_ids() {
    let m = start(open_config("2s")).await;
    let a = client(m.addr).await;
    let motor = Motor::from_robot(&a, "motor1");
    motor.set_power(0.5).await.unwrap();
    let sid = a.session_id().unwrap();

    // The owner sees its id.
    let own = a.sessions().await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].id, sid);

    // Another host sees that a session exists, and its peer, but not its id.
    let mut b: Robot = pb::robot_service_client::RobotServiceClient::new(raw_from(m.addr, [127, 0, 0, 2]).await);
    let listed = sessions_of(&mut b).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "", "another caller's session id was shown");
    let peer = listed[0].peer_connection_info.as_ref().unwrap();
    assert_eq!(peer.r#type, pb::PeerConnectionType::Grpc as i32);
    assert!(peer.remote_address.as_deref().unwrap_or("").starts_with("127.0.0.1:"), "{peer:?}");

    // An operation of the session: its id only for the owner.
    let long = {
        let motor = motor.clone();
        tokio::spawn(async move { motor.go_for(1.0, 100.0).await })
    };
    let ops = loop {
        let ops = b.get_operations(pb::GetOperationsRequest {}).await.unwrap().into_inner().operations;
        if ops.iter().any(|o| o.method.ends_with("/GoFor")) {
            break ops;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let go_for = ops.iter().find(|o| o.method.ends_with("/GoFor")).unwrap();
    assert_eq!(go_for.session_id, None, "another caller saw the operation's session id");
    let mine = a.operations().await.unwrap();
    let go_for = mine.iter().find(|o| o.method.ends_with("/GoFor")).unwrap();
    assert_eq!(go_for.session_id.as_deref(), Some(sid.as_str()));
    a.cancel_operation(&go_for.id).await.unwrap();
    let _ = long.await;
    a.close().await;
}

/// A third party that learned A's session id (it cannot from GetSessions)
/// still cannot heartbeat it, use it or resume it; its heartbeats do not
/// keep A's motor running once A is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_partys_heartbeat_is_refused_and_does_not_extend_the_session() {
    const WINDOW: Duration = Duration::from_millis(500);
    let m = start(open_config("500ms")).await;
    let mut stops = m.machine.safety_stops();
    let a = client(m.addr).await;
    Motor::from_robot(&a, "motor1").set_power(0.5).await.unwrap();
    let sid = a.session_id().unwrap();

    let third = raw_from(m.addr, [127, 0, 0, 2]).await;
    let mut robot: Robot = pb::robot_service_client::RobotServiceClient::new(third.clone());
    let err = robot.send_session_heartbeat(heartbeat(&sid)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "SESSION_EXPIRED"));
    // viam-sid on a monitored call.
    let mut motor = motorpb::motor_service_client::MotorServiceClient::new(third.clone());
    let mut req = tonic::Request::new(motorpb::SetPowerRequest { name: "motor1".into(), power_pct: 1.0, extra: None });
    req.metadata_mut().insert("viam-sid", sid.parse().unwrap());
    let err = motor.set_power(req).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "SESSION_EXPIRED"));
    // Resume: a session of its own, not A's.
    let other = robot.start_session(pb::StartSessionRequest { resume: sid.clone() }).await.unwrap().into_inner();
    assert_ne!(other.id, sid);
    assert_eq!(m.machine.sessions().last_caller("motor1").map(|s| s.to_string()), Some(sid.clone()));

    // The same host on a connection of its own may heartbeat (the Python
    // SDK heartbeats over a second connection; see monitor::identity).
    let mut same_host: Robot =
        pb::robot_service_client::RobotServiceClient::new(raw_from(m.addr, [127, 0, 0, 1]).await);
    same_host.send_session_heartbeat(heartbeat(&sid)).await.unwrap();

    // A goes silent; the third party keeps heartbeating A's session.
    let pounding = tokio::spawn(async move {
        let mut refused = 0;
        loop {
            match robot.send_session_heartbeat(heartbeat(&sid)).await {
                Err(e) if e.message() == "SESSION_EXPIRED" => refused += 1,
                other => panic!("a third party's heartbeat was not refused: {other:?}"),
            }
            if refused >= 1000 {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let silent = Instant::now();
    a.close().await;
    let stop = tokio::time::timeout(Duration::from_secs(5), stops.recv()).await.expect("the motor was never stopped");
    let stop = stop.unwrap();
    let after = silent.elapsed();
    assert_eq!(stop.resource, "motor1");
    println!("A silent: motor stopped {after:?} later (window {WINDOW:?}) while a third party heartbeated its session");
    assert!(after <= WINDOW + Duration::from_millis(100), "stopped {after:?} after A went silent");
    pounding.abort();
}

/// Over WebRTC the caller is the host of the peer's selected candidate:
/// another host sees no id; the WebRTC client sees its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_callers_session_id_is_hidden_from_other_hosts() {
    let m = start(open_config("2s")).await;
    let conf = DialConf::webrtc("test-machine", m.addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let a = RobotClient::connect(conf, Options::default()).await.unwrap();
    Motor::from_robot(&a, "motor1").set_power(0.5).await.unwrap();
    let sid = a.session_id().unwrap();
    assert!(a.sessions().await.unwrap().iter().any(|s| s.id == sid), "the WebRTC caller cannot see its own id");
    let mut b: Robot = pb::robot_service_client::RobotServiceClient::new(raw_from(m.addr, [127, 0, 0, 2]).await);
    let listed = sessions_of(&mut b).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "");
    assert_eq!(listed[0].peer_connection_info.as_ref().unwrap().r#type, pb::PeerConnectionType::Webrtc as i32);
    let err = b.send_session_heartbeat(heartbeat(&sid)).await.unwrap_err();
    assert_eq!(err.message(), "SESSION_EXPIRED");
    a.close().await;
}

/// grpc-status and grpc-message of a gRPC-Web response (trailers-only in
/// the headers, or the trailer frame of the body).
fn web_status(r: &RawResponse) -> (i32, String) {
    if let Some(s) = tether_transport::grpc::status_from_headers(&r.headers) {
        return (s.code() as i32, s.message().to_owned());
    }
    let mut rest = &r.body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest[0] & 0x80 != 0 {
            let mut headers = http::HeaderMap::new();
            for line in String::from_utf8_lossy(&rest[5..5 + len]).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    headers
                        .insert(http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(), v.trim().parse().unwrap());
                }
            }
            let s = tether_transport::grpc::status_from_headers(&headers).expect("a status in the trailers");
            return (s.code() as i32, s.message().to_owned());
        }
        rest = &rest[5 + len..];
    }
    panic!("no grpc-status in the gRPC-Web response: {r:?}");
}

const WEB: &[(&str, &str)] = &[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];

/// A 1 MiB unknown resource name → a status message of at most 1 KiB, and an
/// unknown method → UNIMPLEMENTED naming it, over HTTP/2, gRPC-Web and the
/// data channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_bounded_and_name_unknown_methods_on_every_transport() {
    let m = start(open_config("2s")).await;
    let name = "m".repeat(1 << 20);
    let is_powered = frame(&motorpb::IsPoweredRequest { name: name.clone(), extra: None }.encode_to_vec());
    const IS_POWERED: &str = "/viam.component.motor.v1.MotorService/IsPowered";
    const UNKNOWN: &str = "/nope.v1.Nothing/Here";

    // HTTP/2.
    let s = h2_call(m.addr, IS_POWERED, is_powered.clone(), &[]).await.grpc_status().unwrap();
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert!(s.message().len() <= 1024, "HTTP/2: a {} byte message", s.message().len());
    assert!(s.message().ends_with(" more bytes) not found"), "{}", s.message());
    println!("HTTP/2, 1 MiB name: NOT_FOUND with a {} byte message", s.message().len());
    let s = h2_call(m.addr, UNKNOWN, frame(&[]), &[]).await.grpc_status().unwrap();
    assert_eq!((s.code(), s.message()), (tonic::Code::Unimplemented, "unknown method /nope.v1.Nothing/Here"));

    // gRPC-Web (HTTP/1.1).
    let (code, message) = web_status(&h1_request(m.addr, "POST", IS_POWERED, is_powered.clone(), WEB).await);
    assert_eq!(code, tonic::Code::NotFound as i32);
    assert!(message.len() <= 1024, "gRPC-Web: a {} byte message", message.len());
    let (code, message) = web_status(&h1_request(m.addr, "POST", UNKNOWN, frame(&[]), WEB).await);
    assert_eq!((code, message.as_str()), (tonic::Code::Unimplemented as i32, "unknown method /nope.v1.Nothing/Here"));

    // WebRTC data channel.
    let conf = DialConf::webrtc("test-machine", m.addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let robot = RobotClient::connect(conf, Options::default()).await.unwrap();
    let err = Motor::from_robot(&robot, &name).is_powered().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().len() <= 1024, "WebRTC: a {} byte message", err.message().len());
    let mut grpc = tonic::client::Grpc::new(robot.webrtc().unwrap().channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let err =
        grpc.unary(tonic::Request::new(()), http::uri::PathAndQuery::from_static(UNKNOWN), codec).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::Unimplemented, "unknown method /nope.v1.Nothing/Here"));
    // A known service, unknown method.
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static("/viam.robot.v1.RobotService/Explode");
    let err = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Unimplemented, "unknown method /viam.robot.v1.RobotService/Explode")
    );
    robot.close().await;
}
