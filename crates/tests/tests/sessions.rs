//! Sessions and safety stops over a real HTTP/2 connection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tether_client::components::Motor;
use tether_client::{DialConf, Options, RobotClient};

#[tokio::test]
async fn monitored_call_starts_a_session_and_a_lapse_stops_the_motor() {
    let m = start(motor_config("300ms")).await;
    let mut stops = m.machine.safety_stops();
    let robot = client(m.addr).await;
    let motor = Motor::from_robot(&robot, "motor1");
    // Not monitored: no session yet.
    assert!(!motor.is_moving().await.unwrap());
    assert_eq!(robot.session_id(), None);
    motor.set_power(0.4).await.unwrap();
    let sid = robot.session_id().expect("a monitored call starts a session");
    assert_eq!(m.machine.sessions().last_caller("motor1").map(|u| u.to_string()), Some(sid.clone()));
    let sessions = robot.sessions().await.unwrap();
    assert!(sessions.iter().any(|s| s.id == sid));

    // Heartbeats keep it alive across several windows.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.4));
    assert!(stops.try_recv().is_err());

    // The client goes silent: the machine stops the motor at the deadline.
    let quiet = Instant::now();
    robot.close().await;
    let stop = tokio::time::timeout(Duration::from_secs(5), stops.recv()).await.expect("stopped").unwrap();
    let after = quiet.elapsed();
    assert_eq!(stop.session.map(|s| s.to_string()), Some(sid));
    assert_eq!(stop.resource, "motor1");
    assert!(stop.delay < Duration::from_millis(50), "stop {:?} after the deadline", stop.delay);
    assert!(after <= Duration::from_millis(300 + 300), "stopped {after:?} after the last heartbeat window began");
    let observer = client(m.addr).await;
    assert!(!Motor::from_robot(&observer, "motor1").is_powered().await.unwrap().0);
}

#[tokio::test]
async fn sessionless_call_takes_over_the_resource() {
    let m = start(motor_config("200ms")).await;
    let mut stops = m.machine.safety_stops();
    let with_session = client(m.addr).await;
    Motor::from_robot(&with_session, "motor1").set_power(0.3).await.unwrap();
    Motor::from_robot(&with_session, "motor2").set_power(0.3).await.unwrap();
    let without =
        RobotClient::connect(DialConf::direct(m.addr.to_string()), Options::default().with_disable_sessions(true))
            .await
            .unwrap();
    Motor::from_robot(&without, "motor1").set_power(0.6).await.unwrap();
    assert_eq!(without.session_id(), None);
    assert_eq!(m.machine.sessions().last_caller("motor1"), None);
    with_session.close().await;
    let stop = tokio::time::timeout(Duration::from_secs(3), stops.recv()).await.unwrap().unwrap();
    assert_eq!(stop.resource, "motor2");
    // motor1 was taken over by a sessionless caller: it keeps running (the
    // documented risk of disabling sessions).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(Motor::from_robot(&without, "motor1").is_powered().await.unwrap(), (true, 0.6));
    assert!(!Motor::from_robot(&without, "motor2").is_powered().await.unwrap().0);
}

#[tokio::test]
async fn expired_session_is_replaced_and_the_call_retried_once() {
    // A long window: the client's next heartbeat is far away, so it still
    // believes in its session when the machine has already ended it.
    let m = start(motor_config("20s")).await;
    let mut stops = m.machine.safety_stops();
    let robot = client(m.addr).await;
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.2).await.unwrap();
    let first = robot.session_id().unwrap();
    assert!(m.machine.sessions().expire_now(first.parse().unwrap()));
    let stop = tokio::time::timeout(Duration::from_secs(2), stops.recv()).await.unwrap().unwrap();
    assert_eq!(stop.resource, "motor1");
    // The machine answers SESSION_EXPIRED; the client starts a new session
    // and retries the call once, transparently.
    motor.set_power(0.5).await.unwrap();
    let second = robot.session_id().unwrap();
    assert_ne!(second, first);
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.5));
    assert_eq!(m.machine.sessions().last_caller("motor1").map(|u| u.to_string()), Some(second));
}

#[tokio::test]
async fn resume_keeps_the_same_session_within_the_window() {
    let m = start(motor_config("2s")).await;
    let robot = client(m.addr).await;
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.2).await.unwrap();
    let first = robot.session_id().unwrap();
    // Forget the session locally (as after a dropped connection); the next
    // monitored call resumes it because it is still alive on the machine.
    robot.channel().reset();
    motor.set_power(0.3).await.unwrap();
    assert_eq!(robot.session_id().unwrap(), first);
    assert_eq!(m.machine.sessions().len(), 1);
}

#[tokio::test]
async fn raw_calls_with_bad_session_ids_are_refused() {
    let m = start(motor_config("2s")).await;
    let body = frame(&prost::Message::encode_to_vec(&tether_proto::viam::component::motor::v1::SetPowerRequest {
        name: "motor1".into(),
        power_pct: 0.5,
        extra: None,
    }));
    let path = "/viam.component.motor.v1.MotorService/SetPower";

    let r = h2_call(m.addr, path, body.clone(), &[("viam-sid", "not-a-uuid")]).await;
    let s = r.grpc_status().unwrap();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("invalid session id"));

    let unknown = uuid::Uuid::new_v4().to_string();
    let r = h2_call(m.addr, path, body.clone(), &[("viam-sid", &unknown)]).await;
    let s = r.grpc_status().unwrap();
    assert_eq!((s.code(), s.message()), (tonic::Code::InvalidArgument, "SESSION_EXPIRED"));

    // Nothing ran: the motor is still off.
    let observer = client(m.addr).await;
    assert!(!Motor::from_robot(&observer, "motor1").is_powered().await.unwrap().0);

    // The viam-sid header is ignored on methods that are not monitored.
    let stop = frame(&prost::Message::encode_to_vec(&tether_proto::viam::component::motor::v1::StopRequest {
        name: "motor1".into(),
        extra: None,
    }));
    let r = h2_call(m.addr, "/viam.component.motor.v1.MotorService/Stop", stop, &[("viam-sid", "garbage")]).await;
    assert_eq!(r.grpc_status().unwrap().code(), tonic::Code::Ok);
}

#[tokio::test]
async fn ten_thousand_sessions_over_one_machine() {
    let m = start(motor_config("1m")).await;
    let robot = client(m.addr).await;
    let mut stub = tether_proto::viam::robot::v1::robot_service_client::RobotServiceClient::new(robot.channel());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut stub = stub.clone();
        tasks.spawn(async move {
            for _ in 0..100 {
                stub.start_session(tether_proto::viam::robot::v1::StartSessionRequest { resume: String::new() })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(m.machine.sessions().len(), 10_000);
    let listed = stub.get_sessions(tether_proto::viam::robot::v1::GetSessionsRequest {}).await.unwrap();
    assert_eq!(listed.into_inner().sessions.len(), 10_000);
}
