//! The transport under every client stub. A [`Link`] holds the current
//! connection — HTTP/2 or a WebRTC data channel — and is swapped in place on
//! reconnection, so stubs and component clients made before a drop keep
//! working after it. While there is no connection, calls fail fast with
//! UNAVAILABLE, or wait for the connection if they carry [`WaitForReady`].

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use parking_lot::RwLock;
use tether_transport::BoxError;
use tether_transport::dial::{DirectConnection, HeaderStamp};
use tether_transport::webrtc::RtcChannel;
use tokio::sync::watch;
use tonic::body::Body;
use tower::ServiceExt;
use tower_service::Service;

use crate::events::ConnectionState;

/// One live connection to a machine.
#[derive(Clone, Debug)]
pub enum Transport {
    /// gRPC over HTTP/2 (credentials stamped on each call).
    Direct(HeaderStamp<DirectConnection>),
    /// gRPC over a WebRTC data channel.
    WebRtc(RtcChannel),
}

impl Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Direct(c) => c.poll_ready(cx),
            Transport::WebRtc(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self {
            Transport::Direct(c) => c.call(req),
            Transport::WebRtc(c) => c.call(req),
        }
    }
}

/// Marks a request (in its extensions) as willing to wait for a connection
/// while the client reconnects, instead of failing fast with UNAVAILABLE.
///
/// ```
/// let mut req = tonic::Request::new(());
/// req.extensions_mut().insert(tether_client::WaitForReady);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitForReady;

#[derive(Debug)]
struct LinkInner {
    current: RwLock<Option<Transport>>,
    state: watch::Sender<ConnectionState>,
}

/// The swappable transport shared by every stub of a client.
#[derive(Clone, Debug)]
pub struct Link {
    inner: Arc<LinkInner>,
}

impl Link {
    pub(crate) fn new(transport: Transport) -> Self {
        let (state, _) = watch::channel(ConnectionState::Connected);
        Self { inner: Arc::new(LinkInner { current: RwLock::new(Some(transport)), state }) }
    }

    pub(crate) fn set(&self, transport: Option<Transport>, state: ConnectionState) {
        *self.inner.current.write() = transport;
        self.inner.state.send_replace(state);
    }

    /// The connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    pub(crate) fn current(&self) -> Option<Transport> {
        self.inner.current.read().clone()
    }
}

fn not_connected(state: ConnectionState) -> Response<Body> {
    let message = match state {
        ConnectionState::Reconnecting => "not connected to the machine: reconnecting",
        _ => "not connected to the machine",
    };
    tonic::Status::unavailable(message).into_http()
}

impl Service<Request<Body>> for Link {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(t) = self.current() {
            return Box::pin(t.oneshot(req));
        }
        let wait = req.extensions().get::<WaitForReady>().is_some();
        let link = self.clone();
        Box::pin(async move {
            let mut state = link.state();
            loop {
                if let Some(t) = link.current() {
                    return t.oneshot(req).await;
                }
                let now = *state.borrow_and_update();
                if !wait || now == ConnectionState::Disconnected {
                    return Ok(not_connected(now));
                }
                if state.changed().await.is_err() {
                    return Ok(not_connected(ConnectionState::Disconnected));
                }
            }
        })
    }
}
