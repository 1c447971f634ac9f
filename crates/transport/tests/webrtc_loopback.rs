//! gRPC over a real WebRTC data channel between two in-process peers on
//! loopback: the same tonic services and generated clients as over HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::proto::rpc::v1 as auth_pb;
use tether_transport::auth::{ApiKey, AuthServer, Authority};
use tether_transport::server::{ConnectionInfo, HttpService, TransportKind};
use tether_transport::webrtc::client::WebRtcChannel;
use tether_transport::webrtc::peer::{PeerOptions, new_peer};
use tether_transport::webrtc::pipe::Pipe;
use tether_wire::framing::Limits;
use tokio_util::sync::CancellationToken;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

fn service() -> HttpService {
    let authority = Arc::new(Authority::new("m", vec![ApiKey { id: "k".into(), key: "s".into() }]));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let routes = tonic::service::Routes::new(AuthServer::new(authority).into_service()).add_service(reflection);
    tower::util::BoxCloneSyncService::new(routes)
}

async fn gathered(pc: &webrtc::peer_connection::RTCPeerConnection) -> RTCSessionDescription {
    let mut done = pc.gathering_complete_promise().await;
    let _ = done.recv().await;
    pc.local_description().await.unwrap()
}

/// Connects a caller and an answerer (non-trickle), serving `svc` on the answerer.
async fn pair(svc: HttpService) -> (WebRtcChannel, CancellationToken, Arc<webrtc::peer_connection::RTCPeerConnection>) {
    let (pipe, shutdown, pc) = raw_pair(svc).await;
    (WebRtcChannel::new(pipe, Limits::default()), shutdown, pc)
}

/// Two connected peers (non-trickle), each with its `data` channel open
/// behind a [`Pipe`]: (caller, caller's pipe, answerer, answerer's pipe).
async fn connected() -> (tether_transport::webrtc::peer::Peer, Pipe, tether_transport::webrtc::peer::Peer, Pipe) {
    let options = PeerOptions::default().with_ice_servers(vec![]);
    let caller = new_peer(&options).await.unwrap();
    let answerer = new_peer(&options).await.unwrap();
    let caller_pipe = Pipe::attach(caller.data.clone());
    let answerer_pipe = Pipe::attach(answerer.data.clone());
    let offer = caller.pc.create_offer(None).await.unwrap();
    caller.pc.set_local_description(offer).await.unwrap();
    let offer = gathered(&caller.pc).await;
    answerer.pc.set_remote_description(offer).await.unwrap();
    let answer = answerer.pc.create_answer(None).await.unwrap();
    answerer.pc.set_local_description(answer).await.unwrap();
    let answer = gathered(&answerer.pc).await;
    caller.pc.set_remote_description(answer).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), caller_pipe.opened.cancelled()).await.expect("data channel opens");
    // Both sides: with webrtc-rs 0.17 a frame that reaches the answerer before
    // its own negotiated channel is open is lost (real clients wait for the
    // machine's `done`, which it sends once its side is open).
    tokio::time::timeout(Duration::from_secs(10), answerer_pipe.opened.cancelled()).await.expect("answerer side opens");
    (caller, caller_pipe, answerer, answerer_pipe)
}

/// Like [`pair`], but hands back the caller's raw pipe.
async fn raw_pair(svc: HttpService) -> (Pipe, CancellationToken, Arc<webrtc::peer_connection::RTCPeerConnection>) {
    let (caller, caller_pipe, answerer, answerer_pipe) = connected().await;
    let shutdown = CancellationToken::new();
    let info = ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id: 1 };
    tokio::spawn(tether_transport::webrtc::server::serve(
        answerer_pipe,
        svc,
        info,
        None,
        Limits::default(),
        shutdown.clone(),
    ));
    std::mem::forget(answerer.pc.clone());
    (caller_pipe, shutdown, caller.pc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_without_eos_are_answered() {
    // The TypeScript SDK sends headers and one message for a unary call, and
    // never eos; the handler must run anyway.
    use prost::Message;
    use tether_wire::framing::{ClientConn, ClientEvent};
    let (mut pipe, _shutdown, _pc) = raw_pair(service()).await;
    let mut conn = ClientConn::new(Limits::default());
    let id = conn.start_call("/proto.rpc.v1.AuthService/Authenticate", &[], None).unwrap();
    let req = auth_pb::AuthenticateRequest {
        entity: "k".into(),
        credentials: Some(auth_pb::Credentials { r#type: "api-key".into(), payload: "s".into() }),
    };
    conn.send_message(id, &req.encode_to_vec(), false).unwrap();
    while let Some(p) = conn.poll_transmit() {
        pipe.outgoing.send(p).await.unwrap();
    }
    let mut events = Vec::new();
    while !matches!(events.last(), Some(ClientEvent::Trailers { .. })) {
        let packet =
            tokio::time::timeout(Duration::from_secs(5), pipe.incoming.recv()).await.expect("answered").unwrap();
        conn.handle_incoming(&packet).unwrap();
        events.extend(std::iter::from_fn(|| conn.poll_event()));
    }
    assert!(matches!(events[0], ClientEvent::Headers { .. }));
    let ClientEvent::Message { message, .. } = &events[1] else { panic!("{events:?}") };
    assert!(!auth_pb::AuthenticateResponse::decode(message.as_ref()).unwrap().access_token.is_empty());
    assert!(matches!(events[2], ClientEvent::Trailers { code: tether_wire::Code::Ok, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_keep_their_status_codes() {
    let (channel, _shutdown, _pc) = pair(service()).await;
    let mut client = auth_pb::auth_service_client::AuthServiceClient::new(channel.clone());
    let ok = client
        .authenticate(auth_pb::AuthenticateRequest {
            entity: "k".into(),
            credentials: Some(auth_pb::Credentials { r#type: "api-key".into(), payload: "s".into() }),
        })
        .await
        .unwrap();
    assert!(!ok.into_inner().access_token.is_empty());
    let err = client
        .authenticate(auth_pb::AuthenticateRequest {
            entity: "k".into(),
            credentials: Some(auth_pb::Credentials { r#type: "api-key".into(), payload: "wrong".into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(err.message(), "invalid credentials");
    let err = client.authenticate(auth_pb::AuthenticateRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, "credentials required"));
    // Unknown method.
    let mut unknown = tether_proto::viam::robot::v1::robot_service_client::RobotServiceClient::new(channel.clone());
    let err = unknown.resource_names(tether_proto::viam::robot::v1::ResourceNamesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_streams_and_many_concurrent_calls() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (channel, _shutdown, _pc) = pair(service()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let channel = channel.clone();
        tasks.spawn(async move {
            let mut refl = ServerReflectionClient::new(channel);
            let reqs: Vec<_> = (0..3)
                .map(|_| ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(if i % 2 == 0 {
                        MessageRequest::ListServices(String::new())
                    } else {
                        MessageRequest::FileContainingSymbol("viam.robot.v1.RobotService".into())
                    }),
                })
                .collect();
            let mut stream = refl.server_reflection_info(futures::stream::iter(reqs)).await.unwrap().into_inner();
            let mut n = 0;
            while let Some(msg) = stream.message().await.unwrap() {
                match msg.message_response.unwrap() {
                    MessageResponse::ListServicesResponse(l) => assert!(!l.service.is_empty()),
                    MessageResponse::FileDescriptorResponse(f) => assert!(!f.file_descriptor_proto.is_empty()),
                    other => panic!("{other:?}"),
                }
                n += 1;
            }
            assert_eq!(n, 3);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_with_unavailable_when_the_peer_goes_away() {
    let (channel, shutdown, pc) = pair(service()).await;
    let mut client = auth_pb::auth_service_client::AuthServiceClient::new(channel.clone());
    shutdown.cancel();
    pc.close().await.unwrap();
    let err =
        tokio::time::timeout(Duration::from_secs(5), client.authenticate(auth_pb::AuthenticateRequest::default()))
            .await
            .expect("no hang")
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(channel.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_keep_their_order_between_the_direct_path_and_the_writer() {
    // 24 MiB in 16 KiB packets, sent faster than the channel drains: the
    // first ones go straight to the channel, later ones queue for the writer
    // while the channel buffers more than the high-water mark, then the direct path
    // opens again once it drains. Every packet must arrive, in order.
    const PACKET: usize = 16 << 10;
    const COUNT: u32 = 1536;
    let (_caller, near, _answerer, mut far) = connected().await;
    let sender = {
        let outgoing = near.outgoing.clone();
        tokio::spawn(async move {
            for i in 0..COUNT {
                let mut packet = vec![0u8; PACKET];
                packet[..4].copy_from_slice(&i.to_be_bytes());
                if i % 64 == 0 {
                    // Let the channel drain now and then so the direct path reopens.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                outgoing.send(bytes::Bytes::from(packet)).await.expect("pipe open");
            }
        })
    };
    for expected in 0..COUNT {
        let packet = tokio::time::timeout(Duration::from_secs(20), far.incoming.recv())
            .await
            .expect("packets keep flowing")
            .expect("channel open");
        assert_eq!(packet.len(), PACKET);
        let got = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        assert_eq!(got, expected, "packet {expected} arrived as {got}");
    }
    sender.await.unwrap();
}
