//! Test harness: a SignalingServer on loopback plus fake callers/answerers
//! built from the generated client.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::google::rpc::Status as RpcStatus;
use tether_proto::proto::rpc::webrtc::v1::{
    AnswerRequest, AnswerResponse, AnswerResponseDoneStage, AnswerResponseErrorStage, AnswerResponseInitStage,
    AnswerResponseUpdateStage, CallRequest, CallResponse, CallUpdateRequest, IceCandidate, answer_request,
    answer_response, call_update_request, signaling_service_client::SignalingServiceClient,
};
use tether_signaling::{MemoryQueue, SignalingServer, SignalingServerBuilder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub(crate) type Client = SignalingServiceClient<Channel>;

/// Upper bound for every single wait in the tests (they never get close).
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut).await.expect("timed out")
}

pub(crate) struct Harness {
    pub addr: SocketAddr,
    pub queue: MemoryQueue,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Harness {
    pub(crate) async fn start(configure: impl FnOnce(SignalingServerBuilder) -> SignalingServerBuilder) -> Harness {
        Self::start_with(MemoryQueue::new(), configure).await
    }

    pub(crate) async fn start_with(
        queue: MemoryQueue,
        configure: impl FnOnce(SignalingServerBuilder) -> SignalingServerBuilder,
    ) -> Harness {
        let server = configure(SignalingServer::builder(Arc::new(queue.clone()))).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Harness { addr, queue, shutdown: Some(tx) }
    }

    pub(crate) async fn client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        SignalingServiceClient::new(channel)
    }

    /// Waits until the queue holds no offers (sweeping as it goes).
    pub(crate) async fn wait_no_offers(&self) {
        within(async {
            while self.queue.stats().offers != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

pub(crate) fn with_hosts<T>(msg: T, hosts: &[&str]) -> Request<T> {
    let mut req = Request::new(msg);
    for h in hosts {
        req.metadata_mut().append("rpc-host", h.parse().unwrap());
    }
    req
}

pub(crate) fn candidate(s: &str) -> IceCandidate {
    IceCandidate {
        candidate: format!("candidate:{s} 1 UDP 2122260223 192.168.1.5 51000 typ host"),
        sdp_mid: Some("0".into()),
        sdpm_line_index: Some(0),
        username_fragment: None,
    }
}

pub(crate) fn rpc_status(code: tonic::Code, message: &str) -> RpcStatus {
    RpcStatus { code: code as i32, message: message.into(), details: vec![] }
}

// ---- caller ----

pub(crate) async fn call(client: &mut Client, host: &str, sdp: &str) -> Result<Streaming<CallResponse>, Status> {
    call_with(client, host, CallRequest { sdp: sdp.into(), disable_trickle: false }).await
}

pub(crate) async fn call_with(
    client: &mut Client,
    host: &str,
    req: CallRequest,
) -> Result<Streaming<CallResponse>, Status> {
    client.call(with_hosts(req, &[host])).await.map(|r| r.into_inner())
}

pub(crate) async fn update(
    client: &mut Client,
    host: &str,
    uuid: &str,
    update: call_update_request::Update,
) -> Result<(), Status> {
    let req = CallUpdateRequest { uuid: uuid.into(), update: Some(update) };
    client.call_update(with_hosts(req, &[host])).await.map(|_| ())
}

// ---- answerer ----

pub(crate) struct FakeAnswerer {
    pub tx: mpsc::Sender<AnswerResponse>,
    pub rx: Streaming<AnswerRequest>,
}

pub(crate) async fn answerer(client: &mut Client, hosts: &[&str], heartbeats: bool) -> Result<FakeAnswerer, Status> {
    let (tx, rx) = mpsc::channel(16);
    let mut req = with_hosts(ReceiverStream::new(rx), hosts);
    if heartbeats {
        req.metadata_mut().insert("heartbeats-allowed", "true".parse().unwrap());
    }
    let rx = client.answer(req).await?.into_inner();
    Ok(FakeAnswerer { tx, rx })
}

pub(crate) fn is_heartbeat(req: &AnswerRequest) -> bool {
    matches!(req.stage, Some(answer_request::Stage::Heartbeat(_)))
}

impl FakeAnswerer {
    /// Next message that is not a heartbeat; `Ok(None)` = stream ended OK.
    pub(crate) async fn next(&mut self) -> Result<Option<AnswerRequest>, Status> {
        within(async {
            loop {
                match self.rx.message().await? {
                    Some(m) if is_heartbeat(&m) => continue,
                    other => return Ok(other),
                }
            }
        })
        .await
    }

    pub(crate) async fn send(&self, uuid: &str, stage: answer_response::Stage) {
        self.tx.send(AnswerResponse { uuid: uuid.into(), stage: Some(stage) }).await.unwrap();
    }

    pub(crate) async fn send_init(&self, uuid: &str, sdp: &str) {
        self.send(uuid, answer_response::Stage::Init(AnswerResponseInitStage { sdp: sdp.into() })).await
    }

    pub(crate) async fn send_candidate(&self, uuid: &str, c: IceCandidate) {
        self.send(uuid, answer_response::Stage::Update(AnswerResponseUpdateStage { candidate: Some(c) })).await
    }

    pub(crate) async fn send_done(&self, uuid: &str) {
        self.send(uuid, answer_response::Stage::Done(AnswerResponseDoneStage {})).await
    }

    pub(crate) async fn send_error(&self, uuid: &str, status: RpcStatus) {
        self.send(uuid, answer_response::Stage::Error(AnswerResponseErrorStage { status: Some(status) })).await
    }

    /// Expects the init stage of an offer; returns the request.
    pub(crate) async fn expect_init(
        &mut self,
    ) -> (String, tether_proto::proto::rpc::webrtc::v1::AnswerRequestInitStage) {
        let m = self.next().await.unwrap().expect("stream ended before init");
        match m.stage {
            Some(answer_request::Stage::Init(init)) => (m.uuid, init),
            other => panic!("expected init, got {other:?}"),
        }
    }
}
