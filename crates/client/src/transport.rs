//! The transport under every client stub: an HTTP/2 channel or a WebRTC data
//! channel, behind one `tower::Service` so generated clients don't care.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use tether_rpc::BoxError;
use tether_rpc::dial::HeaderStamp;
use tether_rpc::webrtc::client::WebRtcChannel;
use tonic::body::Body;
use tower_service::Service;

/// A connection to a machine.
#[derive(Clone, Debug)]
pub enum Transport {
    /// gRPC over HTTP/2 (credentials stamped on each call).
    Direct(HeaderStamp<tonic::transport::Channel>),
    /// gRPC over a WebRTC data channel.
    WebRtc(WebRtcChannel),
}

impl Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Transport::WebRtc(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self {
            Transport::Direct(c) => {
                let fut = c.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Transport::WebRtc(c) => c.call(req),
        }
    }
}
