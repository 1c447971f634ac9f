//! What the peer-connection tests share: peers without ICE servers, a
//! trickle from one peer to another, and an echoing gRPC service.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tether_transport::server::HttpService;
use tether_transport::webrtc::peer::PeerOptions;
use tether_transport::webrtc::{PeerEvent, RtcPeer};

/// Peers on loopback need no STUN server.
pub(crate) fn options() -> PeerOptions {
    PeerOptions::default().with_ice_servers(vec![])
}

/// Forwards `from`'s trickled candidates to `to` until `from` has none left.
pub(crate) fn trickle(from: RtcPeer, to: RtcPeer) {
    tokio::spawn(async move {
        while let Some(event) = from.next_event().await {
            match event {
                PeerEvent::LocalCandidate(c) => {
                    let _ = to.add_remote_candidate(&c);
                }
                PeerEvent::Closed(_) => return,
                _ => {}
            }
        }
    });
}

/// A raw gRPC service that answers every call, once its request body is
/// complete, with the request's bytes (all messages, as they came) and OK.
pub(crate) fn echo_service() -> HttpService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, tonic::Status>> =
            vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        let mut response =
            http::Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames))));
        response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(response)
    }))
}
