//! Camera video over WebRTC with our client: frames whose numbers (read
//! from the decoded pixels) increase, a stream that comes back by itself
//! after the connection dies, encoders and tracks that go with their last
//! viewer, and the errors of bad requests.

mod common;

use std::time::Duration;

use common::*;
use tether_client::{ConnectionEvent, DialConf, Options, ReconnectOptions, RobotClient, VideoStream};
use tether_components::frame_code;
use tether_media::vp8;
use tether_proto::proto::stream::v1 as pb;

fn camera_config() -> tether_machine::config::Config {
    config(
        r#"{"components":[{"name":"camera1","api":"rdk:component:camera","model":"rdk:builtin:fake",
                           "attributes":{"width_px":320,"height_px":240,"frame_rate":30}},
                          {"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
            "network":{"hosts":["video-bot"],"ice_servers":[]}}"#,
    )
}

fn dial(addr: std::net::SocketAddr) -> DialConf {
    DialConf::webrtc("video-bot", addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new())
}

/// Reads `n` frames, decoding each; returns their frame numbers and the
/// connection each came over.
async fn frame_numbers(stream: &mut VideoStream, n: usize) -> Vec<(u32, u32)> {
    let mut decoder = vp8::Decoder::new().unwrap();
    frames_with(stream, &mut decoder, n).await
}

/// [`frame_numbers`] with the caller's decoder (kept across calls).
async fn frames_with(stream: &mut VideoStream, decoder: &mut vp8::Decoder, n: usize) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            let sample = stream.next().await.expect("the stream ended early");
            if sample.key {
                *decoder = vp8::Decoder::new().unwrap();
            }
            let picture = decoder.decode(&sample.data).expect("decodable").expect("a picture");
            let code = frame_code::read(&picture.to_rgb(), picture.width, picture.height).expect("a frame code");
            out.push((code.frame, sample.connection));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("frames in time");
    out
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = tokio::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_receives_frames_whose_numbers_increase() {
    let m = start(camera_config()).await;
    let robot = RobotClient::connect(dial(m.addr), Options::default()).await.expect("webrtc dial");
    let mut stream = robot.stream("camera1").await.expect("AddStream");
    let got = frame_numbers(&mut stream, 45).await;
    let numbers: Vec<u32> = got.iter().map(|(n, _)| *n).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "frame numbers must increase: {numbers:?}");
    // At 30 fps with nothing lost, consecutive numbers (a gap now and then is allowed).
    let gaps = numbers.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert!(gaps <= 5, "{gaps} gaps in {numbers:?}");
    assert_eq!(m.machine.video().encoders(), 1);
    assert_eq!(m.machine.video().tracks(), 1);

    // A picture loss indication gets a keyframe at once (the encoder's own
    // keyframe interval is 10 s).
    for _ in 0..3 {
        stream.request_keyframe();
        let keyed = async {
            let mut frames = 0;
            loop {
                let s = stream.next().await.expect("frames");
                frames += 1;
                if s.key {
                    return frames;
                }
            }
        };
        let frames = tokio::time::timeout(Duration::from_secs(2), keyed).await.expect("a keyframe after PLI");
        assert!(frames <= 5, "the keyframe came {frames} frames after the PLI");
    }

    // A second viewer of the same camera shares the encoder.
    let robot2 = RobotClient::connect(dial(m.addr), Options::default()).await.expect("second dial");
    let mut stream2 = robot2.stream("camera1").await.expect("AddStream");
    frame_numbers(&mut stream2, 10).await;
    assert_eq!(m.machine.video().encoders(), 1, "one encoder per camera");
    assert_eq!(m.machine.video().tracks(), 2);

    // Dropping the stream removes its track; closing the last viewer's
    // connection drops the encoder.
    drop(stream2);
    let video = m.machine.video().clone();
    wait_until("the dropped stream's track removed", Duration::from_secs(5), || video.tracks() == 1).await;
    robot.close().await;
    wait_until("the encoder dropped with its last viewer", Duration::from_secs(10), || video.encoders() == 0).await;
    assert_eq!(video.tracks(), 0);
    assert_eq!(video.encoders_started(), 1);
    robot2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_comes_back_by_itself_after_the_connection_dies() {
    let m = start(camera_config()).await;
    let options = Options::default().with_reconnect(
        ReconnectOptions::default().with_max_wait(Some(Duration::from_millis(300))).with_max_attempts(40),
    );
    let robot = RobotClient::connect(dial(m.addr), options).await.expect("webrtc dial");
    let mut events = robot.events();
    let mut stream = robot.stream("camera1").await.expect("AddStream");
    let mut decoder = vp8::Decoder::new().unwrap();
    let before = frames_with(&mut stream, &mut decoder, 10).await;
    assert!(before.iter().all(|(_, c)| *c == 1));

    // The peer connection dies (as when the link is cut for longer than
    // ICE's liveness timeout); the client redials.
    robot.webrtc().expect("webrtc").close().await;
    let restored = async {
        loop {
            match events.recv().await {
                Ok(ConnectionEvent::StreamRestored { camera }) => return camera,
                Ok(_) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    };
    let camera = tokio::time::timeout(Duration::from_secs(20), restored).await.expect("stream_restored in time");
    assert_eq!(camera, "camera1");
    // Frames flow again over the new connection, without the test adding
    // the stream again, and the camera kept counting.
    let mut after = Vec::new();
    while after.len() < 10 {
        let got = frames_with(&mut stream, &mut decoder, 1).await;
        if got[0].1 == 2 {
            after.push(got[0].0);
        }
    }
    assert!(after[0] > before.last().unwrap().0, "{after:?} after {before:?}");
    assert!(after.windows(2).all(|w| w[0] < w[1]));
    // The old connection's track went with it: one encoder, one track.
    let video = m.machine.video().clone();
    wait_until("the dead connection's track dropped", Duration::from_secs(10), || video.tracks() == 1).await;
    assert_eq!(video.encoders(), 1);
    robot.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_say_what_went_wrong() {
    let m = start(camera_config()).await;
    // Over direct gRPC there is no peer connection to add a track to.
    let direct = RobotClient::connect(DialConf::direct(m.addr.to_string()), Options::default()).await.unwrap();
    let mut svc = pb::stream_service_client::StreamServiceClient::new(direct.channel());
    let e = svc.add_stream(pb::AddStreamRequest { name: "camera1".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("WebRTC"), "{}", e.message());
    let names = svc.list_streams(pb::ListStreamsRequest {}).await.unwrap().into_inner().names;
    assert_eq!(names, vec!["camera1".to_string()]);

    let robot = RobotClient::connect(dial(m.addr), Options::default()).await.unwrap();
    let mut svc = pb::stream_service_client::StreamServiceClient::new(robot.channel());
    let e = svc.add_stream(pb::AddStreamRequest { name: "motor1".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not a camera"), "{}", e.message());
    let e = svc.add_stream(pb::AddStreamRequest { name: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no camera named"), "{}", e.message());
    let long = "x".repeat(1 << 20);
    let e = svc.add_stream(pb::AddStreamRequest { name: long }).await.unwrap_err();
    assert!(e.message().len() < 1024, "a long name is not echoed whole ({} bytes)", e.message().len());
    let e = svc.remove_stream(pb::RemoveStreamRequest { name: "camera1".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = svc
        .set_stream_options(pb::SetStreamOptionsRequest {
            name: "camera1".into(),
            resolution: Some(pb::Resolution { width: -4, height: 10 }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let options = svc.get_stream_options(pb::GetStreamOptionsRequest { name: "camera1".into() }).await.unwrap();
    let sizes: Vec<(i32, i32)> = options.into_inner().resolutions.iter().map(|r| (r.width, r.height)).collect();
    assert_eq!(sizes, vec![(320, 240), (160, 120)]);

    // Garbage on the negotiation channel is dropped; the connection keeps
    // serving calls and streams.
    let peer = robot.webrtc().unwrap();
    for junk in [
        "not base64 at all!",
        "e30=",
        "{\"type\":\"pranswer\",\"sdp\":\"v=0\"}",
        "{\"type\":\"offer\",\"sdp\":\"garbage\"}",
    ] {
        peer.peer().send_negotiation_raw(junk).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(robot.version().await.is_ok(), "the connection still serves calls");
    let mut stream = robot.stream("camera1").await.expect("AddStream after garbage");
    frame_numbers(&mut stream, 5).await;

    // A smaller resolution: its own encoder, frames of that size.
    svc.set_stream_options(pb::SetStreamOptionsRequest {
        name: "camera1".into(),
        resolution: Some(pb::Resolution { width: 160, height: 120 }),
    })
    .await
    .unwrap();
    let mut decoder = vp8::Decoder::new().unwrap();
    let small = async {
        loop {
            let s = stream.next().await.expect("frames");
            if s.key {
                decoder = vp8::Decoder::new().unwrap();
            }
            if let Ok(Some(p)) = decoder.decode(&s.data)
                && (p.width, p.height) == (160, 120)
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), small).await.expect("160x120 frames after SetStreamOptions");
    // The 320x240 encoder stops at its next frame, having no viewer left.
    let video = m.machine.video().clone();
    wait_until("the 320x240 encoder stopped when its viewer moved", Duration::from_secs(5), || video.encoders() == 1)
        .await;
    robot.close().await;
    direct.close().await;
}
