//! gRPC-Web (binary and text) and CORS on the same port as HTTP/2 gRPC.

mod common;

use base64::Engine;
use common::*;
use prost::Message;
use tether_proto::viam::robot::v1 as pb;

fn parse_web_body(body: &[u8]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut messages = Vec::new();
    let mut trailers = None;
    let mut rest = body;
    while rest.len() >= 5 {
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if flag & 0x80 != 0 {
            trailers = Some(String::from_utf8_lossy(payload).into_owned());
        } else {
            messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    (messages, trailers)
}

#[tokio::test]
async fn grpc_web_binary_and_text() {
    let m = start(motor_config("2s")).await;
    let path = "/viam.robot.v1.RobotService/ResourceNames";
    let r = h1_request(
        m.addr,
        "POST",
        path,
        frame(&pb::ResourceNamesRequest {}.encode_to_vec()),
        &[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ("origin", "http://page.local")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["access-control-allow-origin"], "http://page.local");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let (messages, trailers) = parse_web_body(&r.body);
    let names = pb::ResourceNamesResponse::decode(messages[0].as_slice()).unwrap();
    assert_eq!(names.resources.len(), 2);
    assert!(trailers.unwrap().contains("grpc-status:0"));

    // Text mode: base64 both ways.
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = h1_request(
        m.addr,
        "POST",
        path,
        b64.encode(frame(&pb::ResourceNamesRequest {}.encode_to_vec())).into_bytes(),
        &[("content-type", "application/grpc-web-text"), ("accept", "application/grpc-web-text")],
    )
    .await;
    assert_eq!(r.status, 200);
    // Each chunk (message, trailers) is base64-encoded on its own, padding
    // included, so decode group by group.
    let decoded: Vec<u8> = r.body.chunks(4).flat_map(|g| b64.decode(g).unwrap()).collect();
    let (messages, _) = parse_web_body(&decoded);
    assert_eq!(pb::ResourceNamesResponse::decode(messages[0].as_slice()).unwrap().resources.len(), 2);

    // Errors keep their code in gRPC-Web too.
    let r = h1_request(
        m.addr,
        "POST",
        "/viam.component.motor.v1.MotorService/SetPower",
        frame(
            &tether_proto::viam::component::motor::v1::SetPowerRequest {
                name: "nope".into(),
                power_pct: 0.1,
                extra: None,
            }
            .encode_to_vec(),
        ),
        &[("content-type", "application/grpc-web+proto")],
    )
    .await;
    let code = r.headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned()).or_else(|| {
        parse_web_body(&r.body)
            .1
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("grpc-status:").map(|s| s.trim().to_owned())))
    });
    assert_eq!(code.as_deref(), Some("5"));
}

#[tokio::test]
async fn cors_preflight_echoes_origin_and_allows_credentials() {
    let m = start(motor_config("2s")).await;
    let r = h1_request(
        m.addr,
        "OPTIONS",
        "/viam.robot.v1.RobotService/ResourceNames",
        Vec::new(),
        &[
            ("origin", "http://localhost:5173"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-grpc-web,authorization,viam-sid"),
        ],
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.status);
    assert_eq!(r.headers["access-control-allow-origin"], "http://localhost:5173");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let allowed = r.headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("viam-sid") && allowed.contains("authorization"), "{allowed}");
}

#[tokio::test]
async fn reflection_serves_the_safety_option() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let m = start(motor_config("2s")).await;
    let robot = client(m.addr).await;
    let mut refl = ServerReflectionClient::new(robot.channel());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("viam.component.motor.v1.MotorService".into())),
        },
    ];
    let mut stream = refl.server_reflection_info(futures::stream::iter(requests)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else { panic!("list") };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"viam.component.motor.v1.MotorService"), "{names:?}");
    assert!(names.contains(&"viam.robot.v1.RobotService"));
    let second = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else { panic!("file") };
    // Decode the served file (options exactly as served) on top of its
    // dependencies, as a reflection client would.
    let mut pool = prost_reflect::DescriptorPool::new();
    for dep in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "viam/common/v1/common.proto",
    ] {
        let file = tether_proto::safety::pool().get_file_by_name(dep).unwrap();
        pool.add_file_descriptor_proto(file.file_descriptor_proto().clone()).unwrap();
    }
    let motor_file = files
        .file_descriptor_proto
        .iter()
        .find(|b| {
            prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap().name()
                == "viam/component/motor/v1/motor.proto"
        })
        .expect("the motor file is served");
    pool.decode_file_descriptor_proto(motor_file.as_slice()).unwrap();
    let monitored = tether_proto::safety::methods_of(&pool);
    assert!(monitored["/viam.component.motor.v1.MotorService/SetPower"].monitored);
    assert!(!monitored["/viam.component.motor.v1.MotorService/Stop"].monitored);
}
