//! Hostile and malformed input gets a clear status and never stops the server.

mod common;

use common::*;
use tether_client::components::Motor;

#[tokio::test]
async fn malformed_unknown_and_out_of_range_inputs() {
    let m = start(motor_config("2s")).await;

    // Garbage where a protobuf should be.
    let garbage = frame(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    for path in ["/viam.component.motor.v1.MotorService/SetPower", "/viam.component.motor.v1.MotorService/IsPowered"] {
        let r = h2_call(m.addr, path, garbage.clone(), &[]).await;
        let s = r.grpc_status().expect("a status");
        assert!(matches!(s.code(), tonic::Code::Internal | tonic::Code::InvalidArgument), "{path}: {s:?}");
    }
    // A frame header promising more than was sent.
    let r = h2_call(m.addr, "/viam.component.motor.v1.MotorService/IsPowered", vec![0, 0, 0, 0, 50, 1, 2], &[]).await;
    assert_ne!(r.grpc_status().expect("a status").code(), tonic::Code::Ok);
    // A message larger than the 32 MiB limit is refused up front.
    let r =
        h2_call(m.addr, "/viam.component.motor.v1.MotorService/SetPower", vec![0, 0x7f, 0xff, 0xff, 0xff], &[]).await;
    assert_eq!(r.grpc_status().unwrap().code(), tonic::Code::ResourceExhausted);

    // Unknown service and method: UNIMPLEMENTED, with a message that names the method.
    let r = h2_call(m.addr, "/viam.component.motor.v1.MotorService/Explode", frame(&[]), &[]).await;
    let s = r.grpc_status().unwrap();
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    assert_eq!(s.message(), "unknown method /viam.component.motor.v1.MotorService/Explode");
    let r = h2_call(m.addr, "/nope.v1.Nothing/Here", frame(&[]), &[]).await;
    let s = r.grpc_status().unwrap();
    assert_eq!((s.code(), s.message()), (tonic::Code::Unimplemented, "unknown method /nope.v1.Nothing/Here"));

    let robot = client(m.addr).await;
    // Unknown component.
    let err = Motor::from_robot(&robot, "motor9").set_power(0.1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("motor9"));
    // A 1 MiB name is not echoed back whole: the status message stays under 1 KiB.
    let err = Motor::from_robot(&robot, &"m".repeat(1 << 20)).is_powered().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().len() <= 1024, "a {} byte status message", err.message().len());
    // Out of range and non-finite values.
    let motor = Motor::from_robot(&robot, "motor1");
    assert_eq!(motor.set_power(1.5).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(motor.set_power(f64::NAN).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(motor.go_for(f64::INFINITY, 1.0).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The machine still serves, and nothing was lost.
    motor.set_power(0.25).await.unwrap();
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.25));
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
}

#[tokio::test]
async fn unimplemented_robot_methods_say_so() {
    let m = start(motor_config("2s")).await;
    let robot = client(m.addr).await;
    let mut stub = tether_proto::viam::robot::v1::robot_service_client::RobotServiceClient::new(robot.channel());
    let err = stub.get_status(tether_proto::viam::robot::v1::GetStatusRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let v = robot.version().await.unwrap();
    assert_eq!(v.platform, "tether");
    let status = robot.machine_status().await.unwrap();
    assert_eq!(status.state, tether_proto::viam::robot::v1::get_machine_status_response::State::Running as i32);
    assert_eq!(status.resources.len(), 2);
}
