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
    let robot = RobotClient::connect(dial(m.addr, "test-machine"), Options { disable_sessions: true }).await.unwrap();
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
