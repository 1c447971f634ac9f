//! TLS (rustls) on the machine's port, with API-key auth over it.

mod common;

use common::SelfSigned;
use tether_client::components::Motor;
use tether_client::{Credentials, DialConf, Options, RobotClient};
use tether_machine::Machine;
use tether_machine::config::Config;
use tether_machine::models::Models;
use tether_transport::server::ServeOptions;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn tls_with_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::new(dir.path(), "");
    let (cert_path, key_path) = (cert.cert_path.clone(), cert.key_path.clone());
    let cfg = Config::from_json(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"fake"}}],
            "network":{{"tls_cert_file":{:?},"tls_key_file":{:?}}},
            "auth":{{"handlers":[{{"type":"api-key","config":{{"keys":[{{"id":"k","key":"s"}}]}}}}]}}}}"#,
        cert_path, key_path
    ))
    .unwrap();
    let machine = Machine::from_config(&cfg, &Models::builtin()).unwrap();
    let tls = cert.tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    tokio::spawn(async move { machine.serve(listener, ServeOptions::default().with_tls(Some(tls)), shutdown).await });

    let conf = DialConf::direct(format!("https://localhost:{port}"))
        .with_tls_ca_pem(cert.pem.clone())
        .with_credentials(Credentials::api_key("k", "s"));
    let robot = RobotClient::connect(conf, Options::default()).await.unwrap();
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.3).await.unwrap();
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.3));

    // Plaintext to a TLS port fails cleanly, and an untrusted certificate is refused.
    let plain = RobotClient::connect(DialConf::direct(format!("127.0.0.1:{port}")), Options::default()).await;
    let failed = match plain {
        Err(_) => true,
        Ok(r) => r.resource_names().await.is_err(),
    };
    assert!(failed);
    let untrusted =
        RobotClient::connect(DialConf::direct(format!("https://localhost:{port}")), Options::default()).await;
    let failed = match untrusted {
        Err(_) => true,
        Ok(r) => r.resource_names().await.is_err(),
    };
    assert!(failed);
}
