//! ICE restart on a live WebRTC connection (issue 17 item 4): a new offer
//! with new ICE credentials reaches the machine through signaling, the
//! machine recognizes its connection, and the same peer connection carries
//! on — calls in flight, the session and a running motor untouched. The
//! netns suite (`crates/tether/tests/nat.rs`) moves a client to another
//! subnet and lets the client restart by itself; here the restart is asked
//! for directly, on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tether_client::components::Motor;
use tether_client::{DialConf, IceRestartOptions, Options, RobotClient};
use tether_signaling::caller::{WebRtcOptions, restart_ice};
use tether_transport::webrtc::sdp;

const HOST: &str = "ice-restart-bot";

fn machine_config() -> tether_machine::config::Config {
    config(&format!(
        r#"{{"components":[{{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}}],
            "network":{{"hosts":["{HOST}"],"ice_servers":[],"sessions":{{"heartbeat_window":"1s"}}}}}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_the_connection_calls_in_flight_and_the_session() {
    let m = start(machine_config()).await;
    let conf = DialConf::webrtc(HOST, m.addr.to_string()).with_webrtc(|c| c.ice_servers.clear());
    // The client's own watcher stays out of this test: the restarts are ours.
    let options = Options::default().with_ice_restart(IceRestartOptions::default().with_enabled(false));
    let robot = RobotClient::connect(conf, options).await.unwrap();
    let session = robot.start_session().await.unwrap().expect("a session");
    let motor = Motor::from_robot(&robot, "motor1");
    motor.set_power(0.4).await.unwrap();
    let conn = robot.webrtc().expect("a WebRTC connection");
    let mut events = robot.events();

    // Calls keep going the whole time; none may fail.
    let calls = Arc::new(AtomicUsize::new(0));
    let caller = {
        let (motor, calls) = (motor.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let powered = motor.is_powered().await.expect("a call during the restarts failed");
                assert_eq!(powered, (true, 0.4));
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let signaling = WebRtcOptions::new(m.addr.to_string(), HOST);
    let mut ufrags = vec![sdp::ice_ufrag(&conn.peer().local_description().unwrap()).unwrap().to_owned()];
    for round in 1..=3 {
        let before = calls.load(Ordering::Relaxed);
        restart_ice(&signaling, &conn, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("restart {round} failed: {e}"));
        assert!(!conn.closed().is_cancelled(), "restart {round} closed the connection");
        let ufrag = sdp::ice_ufrag(&conn.peer().local_description().unwrap()).unwrap().to_owned();
        assert!(!ufrags.contains(&ufrag), "restart {round} kept old ICE credentials ({ufrag})");
        ufrags.push(ufrag);
        // Calls flow on the restarted path.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::Relaxed) < before + 5 {
            assert!(tokio::time::Instant::now() < deadline, "calls stopped after restart {round}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conn.selected_pair().await.is_some(), "no selected pair after restart {round}");
    }
    assert!(!caller.is_finished(), "the calling task ended: {:?}", caller.await);
    caller.abort();

    // The same session, the motor still running, and no reconnection.
    let sessions = robot.sessions().await.unwrap();
    assert!(sessions.iter().any(|s| s.id == session), "session {session} gone: {sessions:?}");
    assert_eq!(motor.is_powered().await.unwrap(), (true, 0.4));
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e.name(), "reconnecting" | "connected"), "the client reconnected: {e:?}");
    }
}
