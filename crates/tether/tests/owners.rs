//! Session ownership with real processes (issue 15 item 4): on an open
//! `tether machine`, client A — a `tether call … --hold` process — holds a
//! session with a motor running; client B, another host (it calls from
//! 127.0.0.2), lists the sessions without seeing A's id and keeps calling;
//! A is SIGKILLed and the machine stops the motor within the heartbeat
//! window plus 100 ms.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tether_proto::viam::component::motor::v1 as motorpb;
use tether_proto::viam::robot::v1 as pb;
use tether_transport::dial::{DirectConnection, DirectOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const WINDOW: Duration = Duration::from_millis(500);
const CONFIG: &str = r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"rdk:builtin:fake"}],
    "network":{"sessions":{"heartbeat_window":"500ms"},"ice_servers":[]}}"#;

/// A child process killed (SIGKILL) on drop, with its stdout as lines.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("TETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tether");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The rest of the first line starting with `prefix`.
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_sees_no_session_id_and_a_killed_holder_is_stopped_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("machine.json");
    std::fs::write(&config, CONFIG).unwrap();
    let machine = Proc::spawn(&["machine", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()]);
    let addr = machine.wait_for("listening on ");

    // A: a client process holding a session with the motor running.
    let mut holder = Proc::spawn(&["call", &addr, "motor1", "set-power", "0.5", "--hold"]);
    let sid = holder.wait_for("holding session ");
    assert!(uuid_like(&sid), "{sid}");

    // B: another host.
    let options = DirectOptions::default().with_local_address(Some([127, 0, 0, 2].into()));
    let b = DirectConnection::connect(&addr, &options).await.expect("connect from 127.0.0.2");
    let mut robot = pb::robot_service_client::RobotServiceClient::new(b.clone());
    let mut motor = motorpb::motor_service_client::MotorServiceClient::new(b);
    let sessions = robot.get_sessions(pb::GetSessionsRequest {}).await.unwrap().into_inner().sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions.iter().all(|s| s.id != sid && s.id.is_empty()), "B saw A's session id: {sessions:?}");
    let peer = sessions[0].peer_connection_info.clone().unwrap();
    assert!(peer.remote_address.unwrap_or_default().starts_with("127.0.0.1:"));
    // B cannot keep A's session alive either.
    let err = robot.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: sid.clone() }).await.unwrap_err();
    assert_eq!(err.message(), "SESSION_EXPIRED");

    // Still running a few windows later: A's heartbeats arrive.
    tokio::time::sleep(WINDOW * 3).await;
    let is_powered = motorpb::IsPoweredRequest { name: "motor1".into(), extra: None };
    assert!(motor.is_powered(is_powered.clone()).await.unwrap().into_inner().is_on);

    // SIGKILL A; B keeps calling (and keeps trying A's session id) until
    // the motor is off.
    let killed = Instant::now();
    holder.kill();
    let (mut calls, mut last_on) = (0u32, Duration::ZERO);
    let stopped = loop {
        // The motor was on at least as late as the call was sent, and off
        // at the latest when the answer came back.
        let sent = killed.elapsed();
        let on = motor.is_powered(is_powered.clone()).await.expect("B's call failed").into_inner().is_on;
        let answered = killed.elapsed();
        let _ = robot.send_session_heartbeat(pb::SendSessionHeartbeatRequest { id: sid.clone() }).await;
        robot.get_sessions(pb::GetSessionsRequest {}).await.expect("B's GetSessions failed");
        calls += 1;
        if !on {
            break answered;
        }
        last_on = sent;
        let now = killed.elapsed();
        assert!(now < Duration::from_secs(5), "motor still on {now:?} after A was killed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "A SIGKILLed: motor seen on at {last_on:?}, off at {stopped:?} (window {WINDOW:?}); B made {calls} rounds of calls meanwhile"
    );
    assert!(last_on <= WINDOW + Duration::from_millis(100), "motor still on {last_on:?} after the kill");
    assert!(stopped <= WINDOW + Duration::from_millis(150), "stop observed {stopped:?} after the kill");
    drop(machine);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
