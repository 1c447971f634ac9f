//! Every typed client against the built-in fake machine, in process.

use std::time::Duration;

use tether_machine::Machine;
use tether_machine::config::Config;
use tether_machine::models::Models;
use tether_proto::viam::component::arm::v1 as arm_pb;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{DialConf, Options, RobotClient};

struct Running {
    robot: RobotClient,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: Config) -> anyhow::Result<Running> {
    let machine = Machine::from_config(&config, &Models::builtin())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { machine.serve(listener, Default::default(), token).await });
    let robot = RobotClient::connect(DialConf::direct(addr.to_string()), Options::default()).await?;
    Ok(Running { robot, shutdown })
}

/// Names, for every kind in tether-components' list, this module's typed
/// client of the same name: a kind added there without a client here does
/// not compile.
macro_rules! clients_of_every_kind {
    ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
        $( let _: fn(&RobotClient, &str) -> $module::$kind = <$module::$kind as FromRobot>::from_robot; )*
    };
}

#[test]
fn every_kind_has_a_client() {
    tether_machine::components::for_each_kind!(clients_of_every_kind);
}

fn point(ms: u64, j0: f64) -> anyhow::Result<arm_pb::TrajectoryPoint> {
    Ok(arm_pb::TrajectoryPoint {
        time: Some(Duration::from_millis(ms).try_into()?),
        positions: Some(arm_pb::JointPositions { values: vec![j0, 0.0, 0.0, 0.0, 0.0, 0.0] }),
        constraints: None,
    })
}

#[tokio::test]
async fn arm_client() -> anyhow::Result<()> {
    let m = start(Config::fake()).await?;
    let arm = Arm::from_robot(&m.robot, "arm1");
    assert_eq!(arm.name(), "arm1");
    arm.move_to_joint_positions(&[10.0, 20.0, 30.0, 0.0, 0.0, 0.0]).await?;
    assert_eq!(arm.joint_positions().await?, [10.0, 20.0, 30.0, 0.0, 0.0, 0.0]);
    arm.move_through_joint_positions(&[vec![1.0; 6], vec![2.0; 6]], None).await?;
    assert_eq!(arm.joint_positions().await?, [2.0; 6]);
    let batches = vec![vec![point(0, 2.0)?, point(50, 5.0)?], vec![point(100, 8.0)?]];
    let acks = arm.move_through_joint_positions_streamed(batches).await?;
    assert!(acks <= 2, "{acks}");
    assert_eq!(arm.joint_positions().await?.first().copied(), Some(8.0));
    let _pose = arm.get_end_position().await?;
    assert!(!arm.is_moving().await?);
    arm.stop().await?;
    // Sessions were used for the monitored moves.
    assert!(m.robot.session_id().is_some());
    Ok(())
}

#[tokio::test]
async fn actuator_clients() -> anyhow::Result<()> {
    let m = start(Config::fake()).await?;
    let r = &m.robot;

    let base = Base::from_robot(r, "base1");
    base.set_velocity(convert::vector3(0.0, 100.0, 0.0), convert::vector3(0.0, 0.0, 10.0)).await?;
    assert!(base.is_moving().await?);
    base.stop().await?;
    assert!(!base.is_moving().await?);
    assert!(base.properties().await?.width_meters > 0.0);

    let gripper = Gripper::from_robot(r, "gripper1");
    gripper.open().await?;
    let _grabbed = gripper.grab().await?;
    let _holding = gripper.is_holding_something().await?;
    gripper.stop().await?;

    let servo = Servo::from_robot(r, "servo1");
    servo.move_to(45).await?;
    assert_eq!(servo.position().await?, 45);

    let gantry = Gantry::from_robot(r, "gantry1");
    gantry.move_to_position(&[1.0, 2.0, 3.0], &[]).await?;
    assert_eq!(gantry.position().await?, [1.0, 2.0, 3.0]);
    assert_eq!(gantry.lengths().await?.len(), 3);

    Button::from_robot(r, "button1").push().await?;

    let switch = Switch::from_robot(r, "switch1");
    let (count, _labels) = switch.number_of_positions().await?;
    assert!(count >= 2);
    switch.set_position(1).await?;
    assert_eq!(switch.position().await?, 1);
    Ok(())
}

#[tokio::test]
async fn sensor_camera_and_shared_rpcs() -> anyhow::Result<()> {
    let mut cfg = Config::fake();
    let generic = serde_json::json!(
        {"name": "generic1", "api": "rdk:component:generic", "model": "rdk:builtin:fake"});
    cfg.components.push(serde_json::from_value(generic)?);
    let m = start(cfg).await?;
    let r = &m.robot;

    let sensor = Sensor::from_robot(r, "sensor1");
    let readings = sensor.readings().await?;
    assert!(!readings.is_empty());
    assert!(sensor.readings_json().await?.is_object());

    let camera = Camera::from_robot(r, "camera1");
    let images = camera.images().await?;
    assert!(!images.images.is_empty());
    let props = camera.properties().await?;
    assert!(!props.mime_types.is_empty());
    match camera.image("image/jpeg").await {
        Ok(img) => assert!(img.image.starts_with(&[0xFF, 0xD8])),
        Err(e) => assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}"),
    }

    let g = Generic::from_robot(r, "generic1");
    let answer = g.do_command_json(&serde_json::json!({"a": 1})).await?;
    assert!(answer.is_object());
    let e = g.do_command_json(&serde_json::json!([1])).await.err().map(|e| e.code());
    assert_eq!(e, Some(tonic::Code::InvalidArgument));
    let _status = g.status().await?;

    // Unknown names keep the machine's status code.
    let e = Sensor::from_robot(r, "nope").readings().await.err().map(|e| e.code());
    assert!(matches!(e, Some(tonic::Code::NotFound | tonic::Code::Unknown)), "{e:?}");
    Ok(())
}
