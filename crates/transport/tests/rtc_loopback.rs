//! gRPC over the `rtc`-core peer connection between two in-process peers on
//! loopback, with candidates trickled both ways: the same tonic services and
//! generated clients as over HTTP/2.

mod common;

use common::*;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tether_proto::proto::rpc::v1 as auth_pb;
use tether_transport::auth::{ApiKey, AuthServer, Authority};
use tether_transport::server::{ConnectionInfo, HttpService, TransportKind};
use tether_transport::webrtc::RtcOptions;
use tether_transport::webrtc::{RtcChannel, RtcPeer};
use tether_wire::framing::Limits;

/// The auth service and reflection (a bidirectional streaming method).
fn auth_service() -> HttpService {
    let authority = Arc::new(Authority::new("m", vec![ApiKey { id: "k".into(), key: "s".into() }]));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let routes = tonic::service::Routes::new(AuthServer::new(authority).into_service()).add_service(reflection);
    tower::util::BoxCloneSyncService::new(routes)
}

/// A caller whose channel carries calls to an answerer serving `svc`;
/// returns as soon as the descriptions are exchanged (calls made before the
/// channel opens wait for it).
async fn connect(svc: HttpService) -> (RtcChannel, RtcPeer, RtcPeer) {
    let caller = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let answerer = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let info = ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id: 1 };
    answerer.serve(svc, info, None, Limits::default());
    let channel = caller.channel(Limits::default());
    let offer = caller.create_offer().unwrap();
    let answer = answerer.accept_offer(offer).unwrap();
    caller.accept_answer(answer).unwrap();
    trickle(caller.clone(), answerer.clone());
    trickle(answerer.clone(), caller.clone());
    (channel, caller, answerer)
}

async fn echo(channel: RtcChannel, payload: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(8 << 20);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec: tonic_prost::ProstCodec<Vec<u8>, Vec<u8>> = tonic_prost::ProstCodec::default();
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Echo");
    grpc.unary(tonic::Request::new(payload), path, codec).await.map(|r| r.into_inner())
}

fn authenticate(key: &str) -> auth_pb::AuthenticateRequest {
    auth_pb::AuthenticateRequest {
        entity: "k".into(),
        credentials: Some(auth_pb::Credentials { r#type: "api-key".into(), payload: key.into() }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_keep_their_status_codes() {
    let (channel, _caller, _answerer) = connect(auth_service()).await;
    let mut client = auth_pb::auth_service_client::AuthServiceClient::new(channel);
    let ok = tokio::time::timeout(Duration::from_secs(10), client.authenticate(authenticate("s")))
        .await
        .expect("answered")
        .unwrap();
    assert!(!ok.into_inner().access_token.is_empty());
    let bad = client.authenticate(authenticate("wrong")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated, "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_messages_cross_both_ways() {
    let (channel, caller, _answerer) = connect(echo_service()).await;
    let payload: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let back = tokio::time::timeout(Duration::from_secs(20), echo(channel, payload.clone()))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echo differs from what was sent");
    let pair = caller.selected_pair().expect("a selected pair");
    assert_eq!(pair.local_type, "host", "{pair:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_all_complete() {
    let (channel, _caller, _answerer) = connect(echo_service()).await;
    let calls = (0..64u32).map(|i| {
        let channel = channel.clone();
        async move { (i, echo(channel, vec![i as u8; 1000 + i as usize * 997]).await) }
    });
    let results = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls)).await.expect("done");
    for (i, r) in results {
        let back = r.unwrap();
        assert_eq!(back, vec![i as u8; 1000 + i as usize * 997]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_with_unavailable_when_the_peer_goes_away() {
    let (channel, _caller, answerer) = connect(echo_service()).await;
    echo(channel.clone(), b"first".to_vec()).await.unwrap();
    answerer.close();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match echo(channel.clone(), b"again".to_vec()).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the caller notices within the ICE timeouts");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(channel.is_closed());
}

/// A caller that sends the instant its side of the channel opens never
/// loses the channel or its first call (webrtc-rs 0.17 lost it when that
/// first message beat the answerer's own open of the negotiated channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_at_open_is_answered_every_time() {
    for i in 0..200 {
        let (channel, caller, answerer) = connect(echo_service()).await;
        let back = tokio::time::timeout(Duration::from_secs(10), echo(channel, vec![7; 100]))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: the first call was never answered"))
            .unwrap();
        assert_eq!(back, vec![7; 100]);
        caller.close();
        answerer.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_without_eos_are_answered() {
    // The TypeScript SDK sends headers and one message for a unary call, and
    // never eos; the handler must run anyway.
    use prost::Message;
    use tether_wire::framing::{ClientConn, ClientEvent};
    let caller = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let answerer = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let info = ConnectionInfo { kind: TransportKind::WebRtc, remote: None, local: None, id: 1 };
    answerer.serve(auth_service(), info, None, Limits::default());
    let raw = caller.raw();
    let answer = answerer.accept_offer(caller.create_offer().unwrap()).unwrap();
    caller.accept_answer(answer).unwrap();
    trickle(caller.clone(), answerer.clone());
    trickle(answerer.clone(), caller.clone());

    let mut conn = ClientConn::new(Limits::default());
    let id = conn.start_call("/proto.rpc.v1.AuthService/Authenticate", &[], None).unwrap();
    conn.send_message(id, &authenticate("s").encode_to_vec(), false).unwrap();
    while let Some(p) = conn.poll_transmit() {
        raw.send(p).await.unwrap();
    }
    let mut events = Vec::new();
    while !matches!(events.last(), Some(ClientEvent::Trailers { .. })) {
        let packet = tokio::time::timeout(Duration::from_secs(10), raw.recv()).await.expect("answered").unwrap();
        conn.handle_incoming(&packet).unwrap();
        events.extend(std::iter::from_fn(|| conn.poll_event()));
    }
    assert!(matches!(events[0], ClientEvent::Headers { .. }), "{events:?}");
    let ClientEvent::Message { message, .. } = &events[1] else { panic!("{events:?}") };
    assert!(!auth_pb::AuthenticateResponse::decode(message.as_ref()).unwrap().access_token.is_empty());
    assert!(matches!(events[2], ClientEvent::Trailers { code: tether_wire::Code::Ok, .. }), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_streams_run_concurrently() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (channel, _caller, _answerer) = connect(auth_service()).await;
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
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all).await.expect("every stream ends");
}

/// Messages above 64 KiB (webrtc-rs 0.17 closed the channel on them) arrive
/// whole: the driver advertises a 256 KiB `max-message-size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_above_64_kib_arrive_whole() {
    let caller = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let answerer = RtcPeer::new(&options(), RtcOptions::default()).await.unwrap();
    let (a, b) = (caller.raw(), answerer.raw());
    let offer = caller.create_offer().unwrap();
    assert!(offer.contains("a=max-message-size:262144"), "{offer}");
    let answer = answerer.accept_offer(offer).unwrap();
    caller.accept_answer(answer).unwrap();
    trickle(caller.clone(), answerer.clone());
    trickle(answerer.clone(), caller.clone());
    for size in [65_536usize, 200_000] {
        let message: Bytes = (0..size).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
        a.send(message.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), b.recv()).await.expect("delivered").unwrap();
        assert_eq!(got.len(), size);
        assert!(got == message, "a {size}-byte message arrived changed");
    }
}
