//! Video over the `rtc`-core peer connection between two in-process peers:
//! a track added after the connection is up (renegotiated over the
//! `negotiation` channel), real VP8 frames carrying the frame code, decoded
//! on the other side; removing the track; garbage on the negotiation channel.

mod common;

use common::*;

use std::time::{Duration, SystemTime};

use tether_components::frame_code::{self, FrameCode};
use tether_media::{I420, vp8};
use tether_transport::webrtc::{PeerEvent, RtcOptions, RtcPeer, Vp8Assembler};

/// (caller, answerer), both with media, once the caller's channel is open.
async fn connected() -> (RtcPeer, RtcPeer) {
    let media = RtcOptions::default().with_media(true);
    let caller = RtcPeer::new(&options(), media).await.unwrap();
    let answerer = RtcPeer::new(&options(), media).await.unwrap();
    let offer = caller.create_offer().unwrap();
    let answer = answerer.accept_offer(offer).unwrap();
    caller.accept_answer(answer).unwrap();
    let events = caller.clone();
    trickle(answerer.clone(), caller.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let to = answerer.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Some(event) = events.next_event().await {
            match event {
                PeerEvent::LocalCandidate(c) => {
                    let _ = to.add_remote_candidate(&c);
                }
                PeerEvent::Open => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                PeerEvent::Closed(_) => return,
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx).await.expect("open in time").unwrap();
    (caller, answerer)
}

fn picture(w: u32, h: u32, frame: u32) -> I420 {
    let mut rgb: Vec<u8> = (0..w * h).flat_map(|i| [(i % 251) as u8, (frame * 7 % 256) as u8, 60]).collect();
    frame_code::draw(&mut rgb, w, h, FrameCode { frame, capture_ms: FrameCode::ms_of(SystemTime::now()) });
    I420::from_rgb(&rgb, w, h).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_added_later_carries_decodable_frames_and_can_be_removed() {
    let (caller, answerer) = connected().await;
    let mut receiver = caller.video_receiver("camera1");
    let sender = answerer.add_video("camera1").unwrap();
    assert_eq!(answerer.video_tracks(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sender.is_negotiated() {
        assert!(tokio::time::Instant::now() < deadline, "the caller never answered the renegotiation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(caller.renegotiations() >= 2, "an offer in, an answer out");

    let (w, h) = (320, 240);
    let mut encoder = vp8::Encoder::new(vp8::EncoderConfig::new(w, h, 30)).unwrap();
    let send = tokio::spawn(async move {
        for n in 0..60u32 {
            let feedback = sender.take_feedback();
            for f in encoder.encode(&picture(w, h, n), i64::from(n) * 3000, n == 0 || feedback.keyframe).unwrap() {
                assert!(sender.send_frame(&f.data, n * 3000).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        sender
    });

    let mut assembler = Vp8Assembler::default();
    let mut decoder = vp8::Decoder::new().unwrap();
    let mut numbers = Vec::new();
    let mut keyed = false;
    let read = async {
        while numbers.len() < 40 {
            let packet = receiver.next_packet().await.expect("packets until the frames are in");
            let Some(frame) = assembler.push(&packet) else { continue };
            // Frames sent before the track reached the caller are lost; the
            // sender's first frame after the answer is a keyframe.
            keyed |= frame.key;
            if !keyed {
                continue;
            }
            if let Some(p) = decoder.decode(&frame.data).unwrap() {
                let code = frame_code::read(&p.to_rgb(), p.width, p.height).expect("a frame code");
                assert_eq!(code.frame * 3000, frame.timestamp, "the RTP timestamp belongs to the frame's number");
                numbers.push(code.frame);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("40 frames in time");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "frame numbers increase: {numbers:?}");
    let sender = send.await.unwrap();

    // Removing the track renegotiates it away.
    let before = caller.renegotiations();
    drop(sender);
    assert_eq!(answerer.video_tracks(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while caller.renegotiations() < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no renegotiation after removing the track");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And a new one can be added again.
    let again = answerer.add_video("camera1").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !again.is_negotiated() {
        assert!(tokio::time::Instant::now() < deadline, "the re-added track was never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
