//! Helpers for end-to-end tests: an in-process machine on a loopback port and
//! raw HTTP/2 and HTTP/1.1 calls for inputs the typed clients cannot make.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_machine::Machine;
use tether_machine::config::Config;
use tether_machine::models::Models;
use tokio_util::sync::CancellationToken;

pub(crate) struct TestMachine {
    pub addr: SocketAddr,
    pub machine: Machine,
    shutdown: CancellationToken,
}

impl Drop for TestMachine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn start(cfg: Config) -> TestMachine {
    start_with(cfg, Default::default()).await
}

/// [`start`] with the listener's options (limits, TLS).
pub(crate) async fn start_with(cfg: Config, options: tether_transport::server::ServeOptions) -> TestMachine {
    // TETHER_LOG=debug shows what the machine does during a test.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let machine = Machine::from_config(&cfg, &Models::builtin()).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    // `serve` registers the machine's names before it returns its future.
    tokio::spawn(machine.serve(listener, options, shutdown.clone()));
    TestMachine { addr, machine, shutdown }
}

pub(crate) fn config(json: &str) -> Config {
    Config::from_json(json).expect("valid test config")
}

pub(crate) fn motor_config(window: &str) -> Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}},
                           {{"name":"motor2","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"sessions":{{"heartbeat_window":"{window}"}}}}}}"#
    ))
}

/// Frames one gRPC message.
pub(crate) fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// grpc-status from trailers, or from headers (trailers-only).
    pub(crate) fn grpc_status(&self) -> Option<tonic::Status> {
        self.trailers
            .as_ref()
            .and_then(tether_transport::grpc::status_from_headers)
            .or_else(|| tether_transport::grpc::status_from_headers(&self.headers))
    }
}

/// A raw gRPC call over HTTP/2.
pub(crate) async fn h2_call(addr: SocketAddr, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body))).expect("request")).await.expect("send");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    RawResponse { status: parts.status, headers: parts.headers, body: collected.to_bytes(), trailers }
}

/// A raw HTTP/1.1 request (gRPC-Web or CORS preflight).
pub(crate) async fn h1_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> RawResponse {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("h1 handshake");
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body))).expect("request")).await.expect("send");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    RawResponse { status: parts.status, headers: parts.headers, body: collected.to_bytes(), trailers }
}

pub(crate) async fn client(addr: SocketAddr) -> tether_client::RobotClient {
    tether_client::RobotClient::connect(tether_client::DialConf::direct(addr.to_string()), Default::default())
        .await
        .expect("connect")
}

/// A standalone signaling service on loopback over `queue` (keep a clone of
/// the queue to look into it); cancel the token to stop it.
pub(crate) async fn standalone_signaling(queue: tether_signaling::MemoryQueue) -> (SocketAddr, CancellationToken) {
    let server = tether_signaling::SignalingServer::new(std::sync::Arc::new(queue));
    let svc = tower::util::BoxCloneSyncService::new(tonic::service::Routes::new(server.into_service()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_transport::server::serve(listener, svc, Default::default(), shutdown.clone()));
    (addr, shutdown)
}

/// Dials `conf`, retrying every 100 ms (at most `attempts` times) while the
/// signaler answers NOT_FOUND: the machine has not registered there yet.
/// Any other outcome is returned as it is.
pub(crate) async fn connect_when_registered(
    conf: tether_client::DialConf,
    attempts: usize,
) -> Result<tether_client::RobotClient, tether_client::Error> {
    let mut last = None;
    for _ in 0..attempts {
        match tether_client::RobotClient::connect(conf.clone(), tether_client::Options::default()).await {
            Err(e) if e.code() == tonic::Code::NotFound => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A self-signed certificate for `localhost`, as PEM files in `dir`
/// (`{prefix}cert.pem`, `{prefix}key.pem`).
pub(crate) struct SelfSigned {
    /// The certificate, to trust it (`DialConf::with_tls_ca_pem`).
    pub pem: String,
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

impl SelfSigned {
    pub(crate) fn new(dir: &std::path::Path, prefix: &str) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let (cert_path, key_path) = (dir.join(format!("{prefix}cert.pem")), dir.join(format!("{prefix}key.pem")));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write certificate");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        Self { pem: cert.cert.pem(), cert_path, key_path }
    }

    /// The listener's TLS settings for this certificate.
    pub(crate) fn tls(&self) -> tether_transport::server::TlsConfig {
        tether_transport::server::TlsConfig::from_pem_files(&self.cert_path, &self.key_path).expect("TLS config")
    }
}
