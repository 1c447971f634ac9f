//! The floor of row 1: a raw tonic server answering
//! `MotorService/IsPowered` with a constant, and the plain tonic-generated
//! client over a plain `Channel`. Same messages, same HTTP/2 stack, none of
//! tether's layers (auth, session monitor, resource lookup; the client's
//! session channel and header stamping).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tether_proto::viam::component::motor::v1::{IsPoweredRequest, IsPoweredResponse};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, http};
use tonic::transport::{Channel, Endpoint, Server};

/// The service at the motor API's name that only knows IsPowered.
#[derive(Clone)]
struct Floor;

impl tonic::server::NamedService for Floor {
    const NAME: &'static str = "viam.component.motor.v1.MotorService";
}

struct IsPowered;

impl tonic::server::UnaryService<IsPoweredRequest> for IsPowered {
    type Response = IsPoweredResponse;
    type Future = std::future::Ready<Result<tonic::Response<IsPoweredResponse>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<IsPoweredRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(IsPoweredResponse { is_on: false, power_pct: 0.0 })))
    }
}

impl tower::Service<http::Request<Body>> for Floor {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != "/viam.component.motor.v1.MotorService/IsPowered" {
                return Ok(tonic::Status::unimplemented("floor serves IsPowered only").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(IsPowered, req).await)
        })
    }
}

/// A running floor server.
pub(crate) struct FloorServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl FloorServer {
    /// Serves on a free loopback port.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        // TCP_NODELAY on accepted connections, as tether's server sets it.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(Floor)
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shutdown })
    }

    /// The plain client, connected (with TCP_NODELAY, as tether's direct dial).
    pub(crate) async fn client(&self) -> anyhow::Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        Ok(endpoint.connect().await?)
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One IsPowered call over the plain client.
pub(crate) async fn is_powered(channel: &Channel) -> anyhow::Result<()> {
    use tether_proto::viam::component::motor::v1::motor_service_client::MotorServiceClient;
    let mut client = MotorServiceClient::new(channel.clone());
    client.is_powered(IsPoweredRequest { name: "motor1".into(), extra: None }).await?;
    Ok(())
}
