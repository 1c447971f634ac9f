//! The component services over a real loopback connection: request decoding,
//! status codes and the arm's bidirectional trajectory stream.

use std::time::Duration;

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::arm::v1::move_through_joint_positions_streamed_request::{
    Init, Message as In, TrajectoryBatch,
};
use tether_proto::viam::component::arm::v1::move_through_joint_positions_streamed_response::Message as Out;
use tether_proto::viam::component::arm::v1::{self as arm, arm_service_client::ArmServiceClient};
use tether_proto::viam::component::camera::v1::{self as camera, camera_service_client::CameraServiceClient};
use tether_proto::viam::component::gantry::v1::{self as gantry, gantry_service_client::GantryServiceClient};
use tether_proto::viam::component::servo::v1::{self as servo, servo_service_client::ServoServiceClient};
use tether_proto::viam::component::switch::v1::{self as switch, switch_service_client::SwitchServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

use crate::Machine;
use crate::config::Config;
use crate::models::Models;

struct Running {
    channel: Channel,
    machine: Machine,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Running {
    let cfg = Config::from_json(
        r#"{"components": [
            {"name": "arm1", "api": "rdk:component:arm", "model": "rdk:builtin:fake",
             "attributes": {"speed_degs_per_sec": 600}},
            {"name": "camera1", "api": "rdk:component:camera", "model": "fake"},
            {"name": "gantry1", "api": "rdk:component:gantry", "model": "fake",
             "attributes": {"lengths_mm": [100, 200]}},
            {"name": "servo1", "api": "rdk:component:servo", "model": "fake"},
            {"name": "switch1", "api": "rdk:component:switch", "model": "fake"}
        ]}"#,
    )
    .unwrap();
    let machine = Machine::from_config(&cfg, &Models::builtin()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (m, token) = (machine.clone(), shutdown.clone());
    tokio::spawn(async move { m.serve(listener, Default::default(), token).await });
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Running { channel, machine, shutdown }
}

fn batch(points: &[(u64, f64)]) -> arm::MoveThroughJointPositionsStreamedRequest {
    arm::MoveThroughJointPositionsStreamedRequest {
        name: String::new(),
        message: Some(In::Batch(TrajectoryBatch {
            points: points
                .iter()
                .map(|(ms, j0)| arm::TrajectoryPoint {
                    time: Some(Duration::from_millis(*ms).try_into().unwrap()),
                    positions: Some(arm::JointPositions { values: vec![*j0, 0.0, 0.0, 0.0, 0.0, 0.0] }),
                    constraints: None,
                })
                .collect(),
        })),
    }
}

fn init() -> arm::MoveThroughJointPositionsStreamedRequest {
    arm::MoveThroughJointPositionsStreamedRequest { name: "arm1".into(), message: Some(In::Init(Init { extra: None })) }
}

type StreamRequest = arm::MoveThroughJointPositionsStreamedRequest;

/// A request stream fed through a channel.
fn outbound() -> (tokio::sync::mpsc::Sender<StreamRequest>, impl futures::Stream<Item = StreamRequest> + Send + 'static)
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    (tx, futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

async fn joint0(client: &mut ArmServiceClient<Channel>) -> f64 {
    let r = client
        .get_joint_positions(arm::GetJointPositionsRequest { name: "arm1".into(), extra: None })
        .await
        .unwrap()
        .into_inner();
    r.positions.unwrap().values[0]
}

#[tokio::test]
async fn arm_streamed_trajectory_acks_batches_and_ends_at_the_last_point() {
    let r = start().await;
    let mut client = ArmServiceClient::new(r.channel.clone());
    let (tx, requests) = outbound();
    tx.send(init()).await.unwrap();
    tx.send(batch(&[(0, 0.0), (100, 10.0)])).await.unwrap();
    let mut responses = client.move_through_joint_positions_streamed(requests).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert!(matches!(first.message, Some(Out::Ack(_))));
    tx.send(batch(&[(200, 20.0), (300, 30.0)])).await.unwrap();
    let second = responses.message().await.unwrap().unwrap();
    assert!(matches!(second.message, Some(Out::Ack(_))));
    drop(tx);
    // The stream ends cleanly once the last point is reached.
    assert!(responses.message().await.unwrap().is_none());
    assert_eq!(joint0(&mut client).await, 30.0);
    let moving = client.is_moving(arm::IsMovingRequest { name: "arm1".into() }).await.unwrap().into_inner();
    assert!(!moving.is_moving);
}

#[tokio::test]
async fn arm_streamed_trajectory_errors_and_cancellation() {
    let r = start().await;
    let mut client = ArmServiceClient::new(r.channel.clone());

    // No init first.
    let (tx, requests) = outbound();
    let mut b = batch(&[(0, 0.0)]);
    b.name = "arm1".into();
    tx.send(b).await.unwrap();
    let e = client.move_through_joint_positions_streamed(requests).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Unknown arm.
    let (tx, requests) = outbound();
    tx.send(StreamRequest { name: "nope".into(), ..init() }).await.unwrap();
    let e = client.move_through_joint_positions_streamed(requests).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // A bad point fails the stream.
    let (tx, requests) = outbound();
    tx.send(init()).await.unwrap();
    tx.send(batch(&[(0, 0.0), (0, 5.0)])).await.unwrap();
    let mut responses = client.move_through_joint_positions_streamed(requests).await.unwrap().into_inner();
    let e = loop {
        match responses.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("expected an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Dropping the call mid-trajectory stops the arm.
    let (tx, requests) = outbound();
    tx.send(init()).await.unwrap();
    tx.send(batch(&[(0, 0.0), (10_000, 100.0)])).await.unwrap();
    let mut responses = client.move_through_joint_positions_streamed(requests).await.unwrap().into_inner();
    responses.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(responses);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let moving = client.is_moving(arm::IsMovingRequest { name: "arm1".into() }).await.unwrap().into_inner();
    assert!(!moving.is_moving);
    let stopped_at = joint0(&mut client).await;
    assert!(stopped_at > 0.0 && stopped_at < 10.0, "{stopped_at}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(joint0(&mut client).await, stopped_at);
}

#[tokio::test]
async fn arm_unary_calls() {
    let r = start().await;
    let mut client = ArmServiceClient::new(r.channel.clone());
    let e = client
        .move_to_position(arm::MoveToPositionRequest { name: "arm1".into(), to: None, extra: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let to = common::Pose { x: 400.0, y: 0.0, z: 300.0, o_x: 0.0, o_y: 0.0, o_z: 1.0, theta: 0.0 };
    client
        .move_to_position(arm::MoveToPositionRequest { name: "arm1".into(), to: Some(to), extra: None })
        .await
        .unwrap();
    let pose = client
        .get_end_position(arm::GetEndPositionRequest { name: "arm1".into(), extra: None })
        .await
        .unwrap()
        .into_inner()
        .pose
        .unwrap();
    assert!((pose.x - 400.0).abs() < 1e-6 && (pose.z - 300.0).abs() < 1e-6, "{pose:?}");
    let e = client
        .move_to_joint_positions(arm::MoveToJointPositionsRequest {
            name: "arm1".into(),
            positions: Some(arm::JointPositions { values: vec![1.0] }),
            extra: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client.get_kinematics(common::GetKinematicsRequest { name: "arm1".into(), extra: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let models = client.get3_d_models(common::Get3DModelsRequest { name: "arm1".into(), extra: None }).await.unwrap();
    assert!(models.into_inner().models.is_empty());
    let status = client.get_status(common::GetStatusRequest { name: "arm1".into() }).await.unwrap().into_inner();
    assert!(status.result.unwrap().fields.contains_key("joint_positions"));

    // A safety-style stop through the resource table halts a move.
    let mut c2 = client.clone();
    let mv = tokio::spawn(async move {
        c2.move_to_joint_positions(arm::MoveToJointPositionsRequest {
            name: "arm1".into(),
            positions: Some(arm::JointPositions { values: vec![300.0, 0.0, 0.0, 0.0, 0.0, 0.0] }),
            extra: None,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(r.machine.resources().stop("arm1").await);
    let e = mv.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Cancelled);
}

#[tokio::test]
async fn camera_images_over_the_wire() {
    let r = start().await;
    let mut client = CameraServiceClient::new(r.channel.clone());
    let got = client
        .get_images(camera::GetImagesRequest { name: "camera1".into(), filter_source_names: vec![], extra: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.images.len(), 1);
    assert_eq!(got.images[0].source_name, "camera1");
    assert_eq!(got.images[0].mime_type, "image/jpeg");
    assert!(got.response_metadata.and_then(|m| m.captured_at).is_some());
    let img = image::load_from_memory_with_format(&got.images[0].image, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (320, 240));

    let filtered = client
        .get_images(camera::GetImagesRequest {
            name: "camera1".into(),
            filter_source_names: vec!["other".into()],
            extra: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.images.is_empty());

    let png = client
        .get_image(camera::GetImageRequest { name: "camera1".into(), mime_type: "image/png".into(), extra: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(png.mime_type, "image/png");
    assert!(image::load_from_memory_with_format(&png.image, image::ImageFormat::Png).is_ok());
    let e = client
        .get_image(camera::GetImageRequest { name: "camera1".into(), mime_type: "image/gif".into(), extra: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let props =
        client.get_properties(camera::GetPropertiesRequest { name: "camera1".into() }).await.unwrap().into_inner();
    assert_eq!(props.mime_types, vec!["image/jpeg", "image/png"]);
    assert_eq!(props.intrinsic_parameters.map(|i| i.width_px), Some(320));
    let pc = client
        .get_point_cloud(camera::GetPointCloudRequest { name: "camera1".into(), mime_type: String::new(), extra: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pc.mime_type, "pointcloud/pcd");
}

#[tokio::test]
async fn invalid_arguments_and_unknown_names() {
    let r = start().await;
    let mut servo = ServoServiceClient::new(r.channel.clone());
    let e = servo.r#move(servo::MoveRequest { name: "servo1".into(), angle_deg: 181, extra: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = servo.r#move(servo::MoveRequest { name: "camera1".into(), angle_deg: 10, extra: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let mut gantry = GantryServiceClient::new(r.channel.clone());
    let e = gantry
        .move_to_position(gantry::MoveToPositionRequest {
            name: "gantry1".into(),
            positions_mm: vec![50.0, 250.0],
            speeds_mm_per_sec: vec![],
            extra: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let lengths = gantry.get_lengths(gantry::GetLengthsRequest { name: "gantry1".into(), extra: None }).await.unwrap();
    assert_eq!(lengths.into_inner().lengths_mm, vec![100.0, 200.0]);
    let k = gantry.get_kinematics(common::GetKinematicsRequest { name: "gantry1".into(), extra: None }).await.unwrap();
    let k = k.into_inner();
    assert_eq!(k.format, common::KinematicsFileFormat::Sva as i32);
    let json: serde_json::Value = serde_json::from_slice(&k.kinematics_data).unwrap();
    assert_eq!(json["joints"].as_array().map(Vec::len), Some(2));

    let mut sw = SwitchServiceClient::new(r.channel.clone());
    let e = sw.set_position(switch::SetPositionRequest { name: "switch1".into(), position: 3, extra: None }).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    let n = sw
        .get_number_of_positions(switch::GetNumberOfPositionsRequest { name: "switch1".into(), extra: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.number_of_positions, 3);
    assert_eq!(n.labels.len(), 3);
}

#[test]
fn driver_errors_keep_their_code_and_message() {
    use tether_components::{Error, ErrorKind};
    for kind in ErrorKind::ALL {
        let e = Error::new(kind, format!("{kind} from the driver"));
        let s = super::status(e.clone());
        // The variants of ErrorKind and tonic::Code have the same names.
        assert_eq!(format!("{:?}", s.code()), format!("{kind:?}"));
        assert_eq!(s.message(), e.message());
        assert_eq!(super::driver_error(&s), e);
    }
    let ok = tonic::Status::new(Code::Ok, "odd");
    assert_eq!(super::driver_error(&ok).kind(), ErrorKind::Unknown);
}

#[test]
fn config_errors_name_the_component_field() {
    let build = |json: &str| Config::from_json(json).unwrap().build(&Models::builtin()).unwrap_err();
    let e = build(r#"{"components": [{"name": "m", "api": "rdk:component:motor", "model": "acme:x:y"}]}"#);
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("components[0].model", r#"no model "acme:x:y" for rdk:component:motor"#)
    );
    let e = build(
        r#"{"components": [{"name": "m", "api": "rdk:component:motor", "model": "fake", "attributes": {"max_rpm": "x"}}]}"#,
    );
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("components[0].attributes", r#"attribute "max_rpm" must be a number"#)
    );
}
