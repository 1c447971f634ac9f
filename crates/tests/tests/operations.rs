//! Operation ids, listing and cancellation.

mod common;

use std::time::Duration;

use common::*;
use tether_client::components::Motor;

#[tokio::test]
async fn long_go_for_is_listed_and_cancellable() {
    let m = start(motor_config("2s")).await;
    let robot = client(m.addr).await;
    let motor = Motor::from_robot(&robot, "motor1");
    // 100 rpm max in the fake: 1000 revolutions would take 10 minutes.
    let long = {
        let motor = motor.clone();
        tokio::spawn(async move { motor.go_for(100.0, 1000.0).await })
    };
    let op = loop {
        let ops = robot.operations().await.unwrap();
        if let Some(op) = ops.into_iter().find(|o| o.method.ends_with("/GoFor")) {
            break op;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(op.session_id, robot.session_id());
    assert!(op.started.is_some());
    assert!(motor.is_moving().await.unwrap());
    robot.cancel_operation(&op.id).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), long).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled);
    assert!(!motor.is_moving().await.unwrap(), "a cancelled GoFor stops the motor");
    // Blocking on a finished or unknown operation returns at once.
    tokio::time::timeout(Duration::from_secs(1), robot.block_for_operation(&op.id)).await.unwrap().unwrap();
    robot.cancel_operation("not-an-id").await.unwrap();
    assert!(robot.operations().await.unwrap().iter().all(|o| o.id != op.id));
}

#[tokio::test]
async fn every_call_gets_an_opid_header() {
    let m = start(motor_config("2s")).await;
    let body = frame(&[]);
    let r = h2_call(m.addr, "/viam.robot.v1.RobotService/ResourceNames", body.clone(), &[]).await;
    let opid = r.headers["opid"].to_str().unwrap();
    uuid::Uuid::parse_str(opid).unwrap();
    // A client-chosen id is reused.
    let mine = uuid::Uuid::new_v4().to_string();
    let r = h2_call(m.addr, "/viam.robot.v1.RobotService/ResourceNames", body, &[("opid", &mine)]).await;
    assert_eq!(r.headers["opid"].to_str().unwrap(), mine);
}

#[tokio::test]
async fn stop_all_cancels_operations_and_stops_actuators() {
    let m = start(motor_config("2s")).await;
    let robot = client(m.addr).await;
    let m1 = Motor::from_robot(&robot, "motor1");
    let m2 = Motor::from_robot(&robot, "motor2");
    m2.set_power(0.7).await.unwrap();
    let long = {
        let m1 = m1.clone();
        tokio::spawn(async move { m1.go_for(50.0, 500.0).await })
    };
    while !m1.is_moving().await.unwrap() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    robot.stop_all().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), long).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled);
    assert!(!m1.is_moving().await.unwrap());
    assert!(!m2.is_powered().await.unwrap().0);
}
