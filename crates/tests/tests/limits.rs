//! The direct listener's limits, each with a short setting on an in-process
//! machine: the handshake deadline, the idle timeout, the stall timeout of a
//! request body, the budget of incomplete messages and the connection cap's
//! choice of whom to shed. The same limits at their defaults against a
//! `tether machine` process: crates/tether/tests/limits.rs.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_transport::server::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

const RESOURCE_NAMES: &str = "/viam.robot.v1.RobotService/ResourceNames";

/// An HTTP/2 connection whose streams the test opens by hand; the task ends
/// when the connection does.
async fn h2(addr: SocketAddr) -> (SendRequest<Body>, JoinHandle<Result<(), hyper::Error>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// A body that sends `chunks` and then nothing, forever.
fn hanging(chunks: Vec<Vec<u8>>) -> Body {
    let frames = futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c)))))
        .chain(futures::stream::pending());
    BodyExt::boxed(StreamBody::new(frames))
}

fn full(bytes: Vec<u8>) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(bytes)))
}

/// The prefix of a gRPC message of `len` bytes and the first `sent` of them.
fn partial(len: usize, sent: usize) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&u32::try_from(len).expect("length fits").to_be_bytes());
    v.resize(5 + sent, 0);
    v
}

/// Sends one gRPC request and returns its status code (or the HTTP/2 error).
async fn grpc(sender: &mut SendRequest<Body>, body: Body, bearer: Option<&str>) -> Result<tonic::Code, String> {
    let mut req = Request::post(RESOURCE_NAMES).header("content-type", "application/grpc").header("te", "trailers");
    if let Some(bearer) = bearer {
        req = req.header("authorization", bearer);
    }
    let resp = sender.send_request(req.body(body).expect("request")).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    if let Some(status) = tether_transport::grpc::status_from_headers(&parts.headers) {
        return Ok(status.code());
    }
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    Ok(collected.trailers().and_then(tether_transport::grpc::status_from_headers).map_or(tonic::Code::Ok, |s| s.code()))
}

/// The time until the peer closes `tcp` (FIN or RST), at most `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within.saturating_sub(started.elapsed()), tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn silent_and_slow_connections_are_closed_at_the_handshake_deadline() {
    let deadline = Duration::from_millis(500);
    let m = start_with(motor_config("2s"), ServeOptions::default().with_handshake_timeout(deadline)).await;
    let mut silent = TcpStream::connect(m.addr).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await.expect("closed");
    assert!(closed >= deadline - Duration::from_millis(50) && closed < Duration::from_secs(2), "{closed:?}");

    // An HTTP/1.1 head one byte every 50 ms: closed at the deadline though
    // bytes keep coming.
    let mut slow = TcpStream::connect(m.addr).await.unwrap();
    let started = Instant::now();
    let head = b"POST /viam.robot.v1.RobotService/ResourceNames HTTP/1.1\r\nhost: m\r\nx-padding: 0123456789\r\n\r\n";
    let mut closed = None;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        if let Some(t) = closed_within(&mut slow, Duration::from_millis(50)).await {
            closed = Some(started.elapsed() - Duration::from_millis(50) + t);
            break;
        }
    }
    let closed = closed.expect("the slow request was closed before its head was complete");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
}

#[tokio::test]
async fn a_silent_tls_connection_is_closed_at_the_handshake_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::new(dir.path(), "");
    let deadline = Duration::from_millis(500);
    let options = ServeOptions::default().with_tls(Some(cert.tls())).with_handshake_timeout(deadline);
    let m = start_with(motor_config("2s"), options).await;
    let mut silent = TcpStream::connect(m.addr).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await.expect("closed");
    assert!(closed >= deadline - Duration::from_millis(50) && closed < Duration::from_secs(2), "{closed:?}");
    // A TLS client gets through, and its connection outlives the deadline.
    let conf = tether_client::DialConf::direct(format!("https://localhost:{}", m.addr.port()))
        .with_tls_ca_pem(cert.pem.clone());
    let robot = tether_client::RobotClient::connect(conf, Default::default()).await.unwrap();
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
    tokio::time::sleep(deadline * 2).await;
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
    robot.close().await;
}

#[tokio::test]
async fn a_connection_that_made_a_request_outlives_the_handshake_deadline() {
    let deadline = Duration::from_millis(300);
    let m = start_with(motor_config("2s"), ServeOptions::default().with_handshake_timeout(deadline)).await;
    let (mut sender, conn) = h2(m.addr).await;
    assert_eq!(grpc(&mut sender, full(partial(0, 0)), None).await, Ok(tonic::Code::Ok));
    tokio::time::sleep(deadline * 3).await;
    assert!(!conn.is_finished());
    assert_eq!(grpc(&mut sender, full(partial(0, 0)), None).await, Ok(tonic::Code::Ok));
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_not_one_with_a_stream_in_flight() {
    let idle = Duration::from_millis(500);
    let m = start_with(motor_config("2s"), ServeOptions::default().with_idle_timeout(Some(idle))).await;
    let (mut quiet, quiet_conn) = h2(m.addr).await;
    let (mut busy, busy_conn) = h2(m.addr).await;
    assert_eq!(grpc(&mut quiet, full(partial(0, 0)), None).await, Ok(tonic::Code::Ok));
    // A request that never sends its message: in flight (and not stalled:
    // nothing of a message has arrived) for as long as the client likes.
    let in_flight = tokio::spawn(async move { grpc(&mut busy, hanging(Vec::new()), None).await });
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), quiet_conn).await.expect("the idle connection closes");
    assert!(ended.expect("task").is_ok(), "closed gracefully (GOAWAY)");
    assert!(started.elapsed() >= idle - Duration::from_millis(100), "{:?}", started.elapsed());
    tokio::time::sleep(idle * 3).await;
    assert!(!busy_conn.is_finished() && !in_flight.is_finished());
}

#[tokio::test]
async fn a_body_stalled_mid_message_is_reset() {
    let stall = Duration::from_millis(500);
    let m = start_with(motor_config("2s"), ServeOptions::default().with_body_stall_timeout(stall)).await;
    let (mut sender, _conn) = h2(m.addr).await;
    let started = Instant::now();
    let code = grpc(&mut sender, hanging(vec![partial(1000, 100)]), None).await;
    assert_eq!(code, Ok(tonic::Code::DeadlineExceeded));
    assert!(started.elapsed() >= stall && started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // The connection serves on.
    assert_eq!(grpc(&mut sender, full(partial(0, 0)), None).await, Ok(tonic::Code::Ok));

    // gRPC-Web over HTTP/1.1: the body stops short of its message.
    let tcp = TcpStream::connect(m.addr).await.unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(RESOURCE_NAMES)
        .header("host", m.addr.to_string())
        .header("content-type", "application/grpc-web+proto")
        .header("content-length", "1005")
        .body(hanging(vec![partial(1000, 100)]))
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), h1.send_request(req)).await.expect("answered").unwrap();
    let status = tether_transport::grpc::status_from_headers(resp.headers()).expect("trailers-only status");
    // tonic-web turns every error of a request body into INTERNAL; the
    // message keeps what happened.
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains("request body made no progress for 500ms"), "{status:?}");
    assert!(started.elapsed() >= stall, "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_largest_incomplete_message_is_dropped_when_the_budget_is_full() {
    let budget = 1 << 20;
    let m = start_with(motor_config("2s"), ServeOptions::default().with_budgets(budget, budget)).await;
    let (mut big, _c1) = h2(m.addr).await;
    let (mut other, _c2) = h2(m.addr).await;
    let big = tokio::spawn(async move { grpc(&mut big, hanging(vec![partial(1 << 20, 800 << 10)]), None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!big.is_finished(), "800 KiB fit in the budget");
    // 300 KiB more on another connection: over the listener's budget, and the
    // 800 KiB message is the largest.
    let mut second = other.clone();
    let medium = tokio::spawn(async move { grpc(&mut second, hanging(vec![partial(1 << 20, 300 << 10)]), None).await });
    let code = tokio::time::timeout(Duration::from_secs(5), big).await.expect("dropped at once").unwrap();
    assert_eq!(code, Ok(tonic::Code::ResourceExhausted));
    assert!(!medium.is_finished());
    // A small call gets through all along.
    assert_eq!(grpc(&mut other, full(partial(0, 0)), None).await, Ok(tonic::Code::Ok));
}

#[tokio::test]
async fn at_the_cap_a_new_connection_sheds_the_oldest_handshaking_one() {
    let m = start_with(motor_config("2s"), ServeOptions::default().with_max_connections(Some(4))).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(m.addr).await.unwrap());
        // Accepted in this order.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let robot = client(m.addr).await;
    assert_eq!(robot.resource_names().await.unwrap().len(), 2);
    // The oldest silent one made room, long before its 10 s deadline.
    let shed = closed_within(&mut silent[0], Duration::from_secs(2)).await;
    assert!(shed.is_some(), "the oldest silent connection was shed");
    assert!(closed_within(&mut silent[1], Duration::from_millis(300)).await.is_none(), "only one was shed");
    robot.close().await;
}

#[tokio::test]
async fn at_the_cap_an_unauthenticated_connection_goes_before_an_authenticated_one() {
    let auth = r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
        "auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"key-id","key":"key-secret"}]}}]}}"#;
    let m = start_with(config(auth), ServeOptions::default().with_max_connections(Some(3))).await;
    let channel =
        tether_transport::dial::DirectConnection::connect(&m.addr.to_string(), &Default::default()).await.unwrap();
    let creds = tether_client::Credentials::api_key("key-id", "key-secret");
    let token = tether_transport::dial::authenticate(channel.clone(), &creds).await.unwrap();
    let bearer = format!("Bearer {token}");
    // `channel` holds the oldest connection (it only authenticated: not yet
    // an authenticated connection). Then one authenticated, one not.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut authed, authed_conn) = h2(m.addr).await;
    assert_eq!(grpc(&mut authed, full(partial(0, 0)), Some(&bearer)).await, Ok(tonic::Code::Ok));
    let (mut anon, anon_conn) = h2(m.addr).await;
    assert_eq!(grpc(&mut anon, full(partial(0, 0)), None).await, Ok(tonic::Code::Unauthenticated));
    // Two newcomers: the Authenticate-only connection goes, then the anonymous one.
    let (mut third, _c3) = h2(m.addr).await;
    assert_eq!(grpc(&mut third, full(partial(0, 0)), Some(&bearer)).await, Ok(tonic::Code::Ok));
    let (mut fourth, _c4) = h2(m.addr).await;
    assert_eq!(grpc(&mut fourth, full(partial(0, 0)), Some(&bearer)).await, Ok(tonic::Code::Ok));
    tokio::time::timeout(Duration::from_secs(2), anon_conn).await.expect("the anonymous connection was shed").ok();
    assert!(!authed_conn.is_finished());
    assert_eq!(grpc(&mut authed, full(partial(0, 0)), Some(&bearer)).await, Ok(tonic::Code::Ok));
    drop(channel);
}
