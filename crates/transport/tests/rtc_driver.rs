//! The peer driver's own work, without a second peer: STUN gathering's
//! retransmissions and deadline on paused time, and server-reflexive
//! candidates from a STUN server's answer.

use std::time::Duration;

use rtc::stun::message::{BINDING_SUCCESS, Message};
use rtc::stun::xoraddr::XorMappedAddress;
use tether_transport::webrtc::peer::{IceServer, PeerOptions};
use tether_transport::webrtc::{PeerEvent, RtcOptions, RtcPeer};
use tokio::net::UdpSocket;

fn options(stun: std::net::SocketAddr) -> PeerOptions {
    PeerOptions::default().with_ice_servers(vec![IceServer::url(format!("stun:{stun}"))])
}

/// Waits for GatheringComplete; returns the candidate lines seen before it.
async fn gather(peer: &RtcPeer) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match peer.next_event().await {
            Some(PeerEvent::LocalCandidate(c)) => lines.push(c.candidate),
            Some(PeerEvent::GatheringComplete) => return lines,
            Some(PeerEvent::Closed(reason)) => panic!("closed while gathering: {reason}"),
            None => panic!("closed while gathering"),
            _ => {}
        }
    }
}

/// A STUN server that never answers: the driver retransmits its binding
/// request every 250 ms and gives the server up after 3 s, then reports
/// gathering complete with host candidates only. On paused time, so the
/// figures are the driver's timers, not the box's load.
#[tokio::test(start_paused = true)]
async fn a_silent_stun_server_is_retried_then_given_up() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let counter = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let mut n = 0;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), server.recv_from(&mut buf)).await {
            n += 1;
        }
        n
    });
    let peer = RtcPeer::new(&options(addr), RtcOptions::default()).await.unwrap();
    let started = tokio::time::Instant::now();
    peer.create_offer().unwrap();
    let lines = gather(&peer).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2900) && took <= Duration::from_millis(3500), "gathering took {took:?}");
    assert!(lines.iter().all(|l| l.contains("typ host")), "{lines:?}");
    assert!(!lines.is_empty());
    peer.close();
    let requests = counter.await.unwrap();
    assert!((10..=14).contains(&requests), "{requests} binding requests in 3 s (one per 250 ms expected)");
}

/// A STUN server that answers: the mapped address becomes a
/// server-reflexive candidate, and gathering completes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_answer_becomes_a_server_reflexive_candidate() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let mut req = Message::new();
            req.raw = buf[..n].to_vec();
            if req.decode().is_err() {
                continue;
            }
            let mapped = XorMappedAddress { ip: "203.0.113.7".parse().unwrap(), port: 40_000 };
            let mut resp = Message::new();
            resp.build(&[Box::new(req.transaction_id), Box::new(BINDING_SUCCESS), Box::new(mapped)]).unwrap();
            let _ = server.send_to(&resp.raw, from).await;
        }
    });
    let peer = RtcPeer::new(&options(addr), RtcOptions::default()).await.unwrap();
    peer.create_offer().unwrap();
    let lines = tokio::time::timeout(Duration::from_secs(2), gather(&peer)).await.expect("gathering completes at once");
    let srflx: Vec<_> = lines.iter().filter(|l| l.contains("typ srflx")).collect();
    assert_eq!(srflx.len(), 1, "{lines:?}");
    assert!(srflx[0].contains("203.0.113.7 40000"), "{srflx:?}");
    assert!(srflx[0].contains("raddr 127.0.0.1"), "the base is the loopback socket: {srflx:?}");
    peer.close();
}
