//! `max_webrtc_connections` and caller priorities (`a=x-priority` in the
//! offer): a caller beyond the limit is refused with RESOURCE_EXHAUSTED; a
//! higher-priority one gets in by closing the lowest-priority idle,
//! sessionless connection; a connection holding a session, or whose
//! sessionless calls drive an actuator, is never closed.

mod common;

use std::time::Duration;

use common::*;
use tether_client::components::Motor;
use tether_client::{ConnectionEvent, DialConf, Options, ReconnectOptions, RobotClient};

fn limited_config(limit: usize) -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}},
                           {{"name":"motor2","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"sessions":{{"heartbeat_window":"1s"}},"hosts":["test-machine"],"ice_servers":[],
                        "max_webrtc_connections":{limit}}}}}"#
    ))
}

fn dial(addr: std::net::SocketAddr, priority: Option<i32>) -> DialConf {
    DialConf::webrtc("test-machine", addr.to_string()).with_webrtc(|c| {
        c.ice_servers = Vec::new();
        c.priority = priority;
    })
}

/// One attempt, no reconnection: a refused or closed client stays so.
fn once() -> Options {
    Options::default().with_reconnect(ReconnectOptions::default().with_no_reconnect(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_refused_higher_priority_evicts_only_idle_sessionless_peers() {
    let m = start(limited_config(2)).await;
    let mut stops = m.machine.safety_stops();

    // A: priority 0, sessionless, idle. B: priority 0, holds a session that runs motor1.
    let a = RobotClient::connect(dial(m.addr, None), once().with_disable_sessions(true)).await.expect("A connects");
    let mut a_events = a.events();
    assert_eq!(a.resource_names().await.unwrap().len(), 2);
    let b = RobotClient::connect(dial(m.addr, Some(0)), once()).await.expect("B connects");
    let b_motor = Motor::from_robot(&b, "motor1");
    b_motor.set_power(0.5).await.unwrap();
    let b_session = b.session_id().expect("B holds a session");

    // C, same priority: refused, with a message saying why.
    let err = RobotClient::connect(dial(m.addr, Some(0)), once()).await.expect_err("C is beyond the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("max_webrtc_connections"), "{err}");

    // D, priority 5: admitted by closing A (idle, sessionless, priority 0), not B.
    let d = RobotClient::connect(dial(m.addr, Some(5)), once().with_disable_sessions(true))
        .await
        .expect("a higher-priority caller gets in");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match a_events.recv().await {
                Ok(ConnectionEvent::Disconnected { .. }) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "A (idle, sessionless, lowest priority) was not closed");
    assert!(a.resource_names().await.is_err(), "A still works after being closed");
    assert_eq!(b_motor.is_powered().await.unwrap(), (true, 0.5), "B's motor was disturbed");
    assert_eq!(b.session_id().as_deref(), Some(b_session.as_str()));

    // D now drives motor2 without a session: in use as well. Nothing can be
    // closed for E, however high its priority.
    Motor::from_robot(&d, "motor2").set_power(0.3).await.unwrap();
    let err = RobotClient::connect(dial(m.addr, Some(1000)), once()).await.expect_err("E finds no idle peer");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // Over a few heartbeat windows nothing was stopped: B's session and D's
    // connection are intact.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(stops.try_recv().is_err(), "something was stopped");
    assert_eq!(b_motor.is_powered().await.unwrap(), (true, 0.5));
    assert_eq!(Motor::from_robot(&d, "motor2").is_powered().await.unwrap(), (true, 0.3));
    assert_eq!(b.session_id().as_deref(), Some(b_session.as_str()));

    // A slot freed by a client that leaves is free again.
    b_motor.stop().await.unwrap();
    b.close().await;
    let mut admitted = None;
    for _ in 0..50 {
        match RobotClient::connect(dial(m.addr, Some(0)), once()).await {
            Ok(f) => {
                admitted = Some(f);
                break;
            }
            // B's session holds its peer until the machine sees it closed.
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let f = admitted.expect("a freed slot is usable again");
    assert_eq!(f.resource_names().await.unwrap().len(), 2);
}
