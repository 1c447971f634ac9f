//! WebRTC to a machine that serves TLS, through its own embedded signaler
//! (`https://` on the machine's port), and a machine whose external
//! signalers cannot be reached.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tether_client::components::Motor;
use tether_client::{Credentials, DialConf, Options, RobotClient};
use tether_machine::config::Config;
use tether_machine::models::Models;
use tether_machine::{Machine, RemoteStatus};
use tether_transport::auth::{ApiKey, AuthLayer, AuthServer, Authority};
use tether_transport::server::{ServeOptions, TlsConfig};
use tokio_util::sync::CancellationToken;

/// A CA made for the test and a certificate it issued for `localhost` and
/// 127.0.0.1, written to `dir`.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Pki { ca_pem: ca.pem(), cert, key }
}

/// Starts `cfg` on 127.0.0.1 with TLS from `pki`.
async fn start_tls(cfg: &Config, pki: &Pki) -> (Machine, u16, CancellationToken) {
    let machine = Machine::from_config(cfg, &Models::builtin()).unwrap();
    let tls = TlsConfig::from_pem_files(&pki.cert, &pki.key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let (m, s) = (machine.clone(), shutdown.clone());
    tokio::spawn(async move { m.serve(listener, ServeOptions::default().with_tls(Some(tls)), s).await });
    (machine, port, shutdown)
}

fn tls_config(pki: &Pki, auth: &str) -> Config {
    common::config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"fake"}}],
            "network":{{"hosts":["tls-bot"],"ice_servers":[],"tls_cert_file":{:?},"tls_key_file":{:?}}}{auth}}}"#,
        pki.cert, pki.key
    ))
}

/// Dials `tls-bot` over WebRTC through the machine's own `https://` port,
/// drives the motor and checks that the calls went over a peer connection.
async fn drive_over_webrtc(machine: &Machine, port: u16, pki: &Pki, creds: Option<Credentials>) {
    let mut conf = DialConf::webrtc("tls-bot", format!("https://localhost:{port}"))
        .with_tls_ca_pem(pki.ca_pem.clone())
        .with_webrtc(|c| c.ice_servers = Vec::new());
    if let Some(creds) = creds {
        conf = conf.with_credentials(creds);
    }
    let robot = RobotClient::connect(conf, Options::default()).await.unwrap();
    assert!(robot.webrtc().is_some(), "the client must be on WebRTC");
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.4).await.unwrap();
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.4));
    assert_eq!(machine.webrtc_stats().1, 1, "the machine serves one WebRTC peer");
    motor.stop().await.unwrap();
    robot.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_machine_with_api_keys_answers_webrtc_through_its_own_signaler() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let auth = r#","auth":{"handlers":[{"type":"api-key","config":{"keys":[{"id":"k","key":"s"}]}}]}"#;
    let (machine, port, shutdown) = start_tls(&tls_config(&pki, auth), &pki).await;
    drive_over_webrtc(&machine, port, &pki, Some(Credentials::api_key("k", "s"))).await;

    // Without credentials the embedded signaler refuses the call.
    let conf = DialConf::webrtc("tls-bot", format!("https://localhost:{port}"))
        .with_tls_ca_pem(pki.ca_pem.clone())
        .with_webrtc(|c| c.ice_servers = Vec::new());
    let err = RobotClient::connect(conf, Options::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_machine_without_auth_answers_webrtc_through_its_own_signaler() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (machine, port, shutdown) = start_tls(&tls_config(&pki, ""), &pki).await;
    drive_over_webrtc(&machine, port, &pki, None).await;
    shutdown.cancel();
}

/// Serves `svc` on a free loopback port (TLS with `options`' certificate).
async fn serve_on_loopback(
    svc: tether_transport::server::HttpService,
    options: ServeOptions,
) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_transport::server::serve(listener, svc, options, shutdown.clone()));
    (addr, shutdown)
}

fn signaling_routes() -> tonic::service::Routes {
    let signaling = tether_signaling::SignalingServer::new(Arc::new(tether_signaling::MemoryQueue::new()));
    tonic::service::Routes::new(signaling.into_service())
}

/// A signaling service that requires API keys (only `bot`/`bot-secret`).
async fn keyed_signaler() -> (SocketAddr, CancellationToken) {
    let authority =
        Arc::new(Authority::new("tether-signaling", vec![ApiKey { id: "bot".into(), key: "bot-secret".into() }]));
    let routes = signaling_routes().add_service(AuthServer::new(authority.clone()).into_service());
    let svc = tower::ServiceBuilder::new().layer(AuthLayer::new(Some(authority))).service(routes);
    serve_on_loopback(tower::util::BoxCloneSyncService::new(svc), ServeOptions::default()).await
}

/// A signaling service over TLS with a self-signed certificate nobody trusts.
async fn untrusted_tls_signaler(dir: &Path) -> (SocketAddr, CancellationToken) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("sig-cert.pem"), dir.join("sig-key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig::from_pem_files(&cert_path, &key_path).unwrap();
    let svc = tower::util::BoxCloneSyncService::new(signaling_routes());
    serve_on_loopback(svc, ServeOptions::default().with_tls(Some(tls))).await
}

/// Waits (bounded) until `status` is `Unreachable` and returns the reason.
async fn unreachable_reason(mut status: tokio::sync::watch::Receiver<RemoteStatus>) -> String {
    let reached = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let RemoteStatus::Unreachable(reason) = &*status.borrow_and_update() {
                return reason.clone();
            }
            if status.changed().await.is_err() {
                return "the answerer stopped".to_owned();
            }
        }
    });
    reached.await.expect("the machine reports the signaler as unreachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_external_signalers_are_reported_and_the_machine_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (keyed, _k) = keyed_signaler().await;
    let (untrusted, _u) = untrusted_tls_signaler(dir.path()).await;
    let cfg = common::config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"fake"}}],
            "network":{{"hosts":["ext-bot"],"ice_servers":[],
                        "signaling":["http://{keyed}","https://localhost:{}"],
                        "signaling_api_key":{{"id":"bot","key":"wrong-secret"}}}}}}"#,
        untrusted.port()
    ));
    let m = common::start(cfg).await;
    let status = m.machine.signaling_status();
    assert_eq!(status.len(), 2, "one answerer group per external signaler");
    let refused = unreachable_reason(status[0].1.clone()).await;
    assert!(refused.contains("Unauthenticated"), "{refused}");
    let tls = unreachable_reason(status[1].1.clone()).await;
    assert!(tls.to_lowercase().contains("certificate"), "{tls}");

    // The machine still serves direct callers and WebRTC callers of its
    // embedded signaler.
    let direct = common::client(m.addr).await;
    Motor::from_robot(&direct, "motor1").set_power(0.2).await.unwrap();
    let conf = DialConf::webrtc("ext-bot", m.addr.to_string()).with_webrtc(|c| c.ice_servers = Vec::new());
    let robot = RobotClient::connect(conf, Options::default()).await.unwrap();
    assert!(robot.webrtc().is_some());
    assert_eq!(Motor::from_robot(&robot, "motor1").is_powered().await.unwrap(), (true, 0.2));
    robot.close().await;
    direct.close().await;
}
