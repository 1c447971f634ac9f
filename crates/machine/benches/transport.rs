//! Connect time, unary latency and bulk throughput of a machine over direct
//! HTTP/2 and over WebRTC (embedded signaling), on loopback, in one run.
//! Prints a markdown table. `cargo bench -p tether-machine --bench transport`.

use std::time::{Duration, Instant};

use tether_client::components::{Generic, Motor};
use tether_client::{DialConf, Options, RobotClient};
use tether_machine::Machine;
use tether_machine::config::Config;
use tether_machine::models::Models;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"{"components":[{"name":"motor1","api":"rdk:component:motor","model":"fake"},
                                      {"name":"generic1","api":"rdk:component:generic","model":"fake"}],
                         "network":{"hosts":["bench"],"ice_servers":[]}}"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn unary(robot: &RobotClient, n: usize) -> (Duration, Duration) {
    let motor = Motor::from_robot(robot, "motor1");
    for _ in 0..200 {
        motor.is_powered().await.unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        motor.is_powered().await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn bulk(robot: &RobotClient, size: usize, rounds: usize) -> f64 {
    let generic = Generic::from_robot(robot, "generic1");
    let payload = serde_json::json!({ "blob": "z".repeat(size) });
    generic.do_command_json(&payload).await.unwrap();
    let t = Instant::now();
    for _ in 0..rounds {
        generic.do_command_json(&payload).await.unwrap();
    }
    // The echo carries the payload both ways.
    (2 * size * rounds) as f64 / t.elapsed().as_secs_f64() / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var("TETHER_BENCH_QUICK").is_ok();
    let (n, rounds) = if quick { (300, 2) } else { (3000, 5) };
    let cfg = Config::from_json(CONFIG).unwrap();
    let machine = Machine::from_config(&cfg, &Models::builtin()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let m = machine.clone();
    let token = shutdown.clone();
    tokio::spawn(async move { m.serve(listener, Default::default(), token).await });
    while machine.webrtc_hosts().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let direct_conf = DialConf::direct(addr.to_string());
    let webrtc_conf = DialConf::webrtc("bench", addr.to_string()).with_webrtc(|c| c.ice_servers.clear());
    let mut connect = Vec::new();
    for _ in 0..if quick { 5 } else { 20 } {
        let t = Instant::now();
        let r = RobotClient::connect(webrtc_conf.clone(), Options::default()).await.unwrap();
        connect.push(t.elapsed());
        r.close().await;
    }
    connect.sort();
    let direct = RobotClient::connect(direct_conf, Options::default()).await.unwrap();
    let webrtc = RobotClient::connect(webrtc_conf, Options::default()).await.unwrap();
    let (d50, d99) = unary(&direct, n).await;
    let (w50, w99) = unary(&webrtc, n).await;
    let size = 1 << 20;
    let dt = bulk(&direct, size, rounds).await;
    let wt = bulk(&webrtc, size, rounds).await;
    // Safety stop latency: a client goes silent; how long after its
    // session's deadline is the motor stopped?
    let mut stops = machine.safety_stops();
    let mut delays = Vec::new();
    for _ in 0..if quick { 5 } else { 30 } {
        let c = RobotClient::connect(DialConf::direct(addr.to_string()), Options::default()).await.unwrap();
        Motor::from_robot(&c, "motor1").set_power(0.5).await.unwrap();
        c.close().await;
        let stop = tokio::time::timeout(Duration::from_secs(5), stops.recv()).await.unwrap().unwrap();
        delays.push(stop.delay);
    }
    delays.sort();

    println!("| measurement | direct HTTP/2 | WebRTC |");
    println!("|---|---|---|");
    println!(
        "| connect (signaling + ICE + DTLS + SCTP), median of {} | – | {:.1} ms |",
        connect.len(),
        percentile(&connect, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| unary IsPowered p50 / p99 ({n} calls) | {:.0} / {:.0} µs | {:.0} / {:.0} µs |",
        d50.as_secs_f64() * 1e6,
        d99.as_secs_f64() * 1e6,
        w50.as_secs_f64() * 1e6,
        w99.as_secs_f64() * 1e6
    );
    println!("| 1 MiB DoCommand echo throughput | {dt:.1} MB/s | {wt:.1} MB/s |");
    println!(
        "| safety stop after the session deadline, p50 / max ({} lapses, 2 s window) | {:.2} / {:.2} ms | |",
        delays.len(),
        percentile(&delays, 0.5).as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3
    );
    shutdown.cancel();
}
