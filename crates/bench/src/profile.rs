//! `tether-bench --profile-unary N` (hidden): the WebRTC unary path alone,
//! for a profiler. An in-process machine, one WebRTC client, 200 warm-up
//! calls, then N IsPowered calls; prints the time per call. Used by
//! docs/perf (callgrind, perf).

use std::process::ExitCode;
use std::time::Instant;

use tether_client::components::Motor;

use super::inproc::{self, InProcess};

/// Runs the profile workload.
pub(crate) async fn run(n: usize) -> anyhow::Result<ExitCode> {
    let machine = InProcess::start(&inproc::config(&[("motor1", "motor")], &[], "2s")).await?;
    let robot = machine.connect(machine.webrtc()).await?;
    let motor = Motor::from_robot(&robot, "motor1");
    for _ in 0..200 {
        motor.is_powered().await?;
    }
    eprintln!("profile: warm; {n} calls");
    let t = Instant::now();
    for _ in 0..n {
        motor.is_powered().await?;
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    println!("{n} IsPowered calls over WebRTC: {per:.1} µs each");
    robot.close().await;
    Ok(ExitCode::SUCCESS)
}
