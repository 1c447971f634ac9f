//! The control page and `/tether/status` on the machine's gRPC port (the
//! browser side is in interop/ts/test-page): plain GETs reach the page, gRPC
//! and gRPC-Web still reach the router, and the status JSON is authenticated
//! exactly like the calls and never names a session.

mod common;

use common::*;
use tether_client::components::Motor;
use tether_client::{Credentials, DialConf, Options, RobotClient};

const AUTH: &str = r#"{
  "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
  "network": {"sessions": {"heartbeat_window": "300ms"}},
  "auth": {"handlers": [{"type": "api-key", "config": {"keys": [
      {"id": "alice-key", "key": "alice-secret"},
      {"id": "bob-key", "key": "bob-secret"}]}}]}
}"#;

fn json(r: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&r.body)))
}

#[tokio::test]
async fn page_on_the_grpc_port_next_to_grpc_and_grpc_web() {
    let m = start(motor_config("2s")).await;
    let r = h1_request(m.addr, "GET", "/", Vec::new(), &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert!(r.headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let r = h1_request(m.addr, "GET", "/app.js", Vec::new(), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(r.headers.get("content-encoding").is_none());
    assert!(r.body.len() > 10_000, "app.js is {} bytes", r.body.len());
    assert_eq!(h1_request(m.addr, "GET", "/nope", Vec::new(), &[]).await.status, 404);
    assert_eq!(h1_request(m.addr, "DELETE", "/", Vec::new(), &[]).await.status, 405);

    // gRPC over HTTP/2 and a CORS preflight still reach the router.
    let robot = client(m.addr).await;
    assert_eq!(Motor::from_robot(&robot, "motor1").is_powered().await.unwrap(), (false, 0.0));
    let r = h1_request(
        m.addr,
        "OPTIONS",
        "/viam.robot.v1.RobotService/ResourceNames",
        Vec::new(),
        &[("origin", "http://page.local"), ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(r.headers["access-control-allow-origin"], "http://page.local");

    // Open machine: the status needs no token and lists the gRPC client.
    let s = json(&h1_request(m.addr, "GET", "/tether/status", Vec::new(), &[]).await);
    assert_eq!(s["heartbeat_window_ms"], 2000.0);
    let hosts: Vec<&str> = s["webrtc_hosts"].as_array().unwrap().iter().filter_map(|h| h.as_str()).collect();
    assert!(hosts.contains(&m.addr.to_string().as_str()), "{s}");
    assert!(
        s["clients"].as_array().unwrap().iter().any(|c| c["transport"] == "grpc" && c["calls"].as_u64() >= Some(1)),
        "{s}"
    );
}

#[tokio::test]
async fn status_is_authenticated_like_the_calls_and_names_no_session() {
    let m = start(config(AUTH)).await;
    let r = h1_request(m.addr, "GET", "/tether/status", Vec::new(), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(json(&r)["error"], "authentication required");
    let r = h1_request(m.addr, "GET", "/tether/status", Vec::new(), &[("authorization", "Bearer abc.def.ghi")]).await;
    assert_eq!(r.status, 401);
    assert!(json(&r)["error"].as_str().unwrap().starts_with("invalid access token"), "{}", json(&r));
    // The page itself is public: it holds no secret.
    assert_eq!(h1_request(m.addr, "GET", "/", Vec::new(), &[]).await.status, 200);

    // Alice drives the motor with a session; Bob looks.
    let alice = RobotClient::connect(
        DialConf::direct(m.addr.to_string()).with_credentials(Credentials::api_key("alice-key", "alice-secret")),
        Options::default(),
    )
    .await
    .unwrap();
    Motor::from_robot(&alice, "motor1").set_power(0.5).await.unwrap();
    let alice_sid = alice.session_id().unwrap();
    let channel =
        tether_transport::dial::DirectConnection::connect(&m.addr.to_string(), &Default::default()).await.unwrap();
    let token =
        tether_transport::dial::authenticate(channel, &Credentials::api_key("bob-key", "bob-secret")).await.unwrap();
    let bearer = format!("Bearer {token}");
    // Bob names Alice's session as his own: not marked his, and no id anywhere.
    let r = h1_request(
        m.addr,
        "GET",
        "/tether/status",
        Vec::new(),
        &[("authorization", &bearer), ("viam-sid", &alice_sid)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "no-store");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!text.contains(&alice_sid) && !text.contains("alice-key"), "{text}");
    let s = json(&r);
    let sessions: Vec<&serde_json::Value> =
        s["clients"].as_array().unwrap().iter().filter(|c| !c["session"].is_null()).collect();
    assert_eq!(sessions.len(), 1, "{s}");
    assert_eq!(sessions[0]["session"]["yours"], false);
    assert_eq!(sessions[0]["session"]["window_ms"], 300.0);

    // Alice goes away: her session lapses and the stop is listed with its cause.
    drop(alice);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = json(&h1_request(m.addr, "GET", "/tether/status", Vec::new(), &[("authorization", &bearer)]).await);
        if let Some(stop) = s["safety_stops"].as_array().unwrap().first() {
            assert_eq!(stop["resource"], "motor1");
            assert_eq!(stop["cause"], "session lapsed");
            assert!(stop["delay_ms"].as_f64().unwrap() < 1000.0, "{stop}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no safety stop listed: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
