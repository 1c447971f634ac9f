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

/// The candidate lines a peer reports within `for_`.
async fn candidates_within(peer: &RtcPeer, for_: Duration) -> Vec<String> {
    let mut lines = Vec::new();
    let _ = tokio::time::timeout(for_, async {
        while let Some(e) = peer.next_event().await {
            if let PeerEvent::LocalCandidate(c) = e {
                lines.push(c.candidate);
            }
        }
    })
    .await;
    lines
}

fn candidate(line: &str) -> tether_proto::proto::rpc::webrtc::v1::IceCandidate {
    tether_proto::proto::rpc::webrtc::v1::IceCandidate { candidate: line.into(), ..Default::default() }
}

fn loopback(lines: &[String]) -> bool {
    lines.iter().any(|l| l.contains(" 127.0.0.1 "))
}

/// An answerer that offers loopback only to local peers: a caller whose
/// candidates show it runs on this host (here a real peer in this process)
/// gets the `127.0.0.1` candidate; a remote caller (a private address that
/// is not ours, plus its own loopback, as a tether client offers) gets none,
/// neither trickled nor in the local description. Without the option the
/// remote caller gets it too (the check can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_candidates_go_to_local_peers_only() {
    let no_servers = || PeerOptions::default().with_ice_servers(Vec::new());
    let ours_non_loopback = if_addrs::get_if_addrs()
        .unwrap()
        .iter()
        .any(|i| matches!(i.ip(), std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_link_local()));

    // A local caller: a real offerer on this host.
    let caller = RtcPeer::new(&no_servers(), RtcOptions::default()).await.unwrap();
    let offer = caller.create_offer().unwrap();
    let caller_lines = gather(&caller).await;
    let answerer =
        RtcPeer::new(&no_servers().with_loopback_only_for_local_peers(true), RtcOptions::default()).await.unwrap();
    answerer.accept_offer(offer.clone()).unwrap();
    let before = candidates_within(&answerer, Duration::from_millis(200)).await;
    assert!(!loopback(&before), "loopback offered before the caller showed where it is: {before:?}");
    for line in &caller_lines {
        answerer.add_remote_candidate(&candidate(line)).unwrap();
    }
    let after = candidates_within(&answerer, Duration::from_millis(300)).await;
    assert!(
        loopback(&after),
        "a local caller did not get the loopback candidate: {after:?} (caller: {caller_lines:?})"
    );
    answerer.close();

    // A remote caller.
    let remote = [
        "candidate:1 1 udp 2122252543 198.51.100.7 50000 typ host",
        "candidate:2 1 udp 2122252543 127.0.0.1 50001 typ host",
    ];
    for (only_local, expect_loopback) in [(true, !ours_non_loopback), (false, true)] {
        let answerer =
            RtcPeer::new(&no_servers().with_loopback_only_for_local_peers(only_local), RtcOptions::default())
                .await
                .unwrap();
        answerer.accept_offer(offer.clone()).unwrap();
        for line in remote {
            answerer.add_remote_candidate(&candidate(line)).unwrap();
        }
        let lines = candidates_within(&answerer, Duration::from_millis(300)).await;
        assert_eq!(loopback(&lines), expect_loopback, "only_local={only_local}: {lines:?}");
        let description = answerer.local_description().unwrap();
        assert_eq!(description.contains(" 127.0.0.1 "), expect_loopback, "only_local={only_local}: {description}");
        answerer.close();
    }
    caller.close();
}
