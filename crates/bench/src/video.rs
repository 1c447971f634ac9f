//! Row 11: camera video over WebRTC. A `tether machine` process with a fake
//! 640x480 camera at 30 fps; viewers are our client (which decodes every
//! frame and reads the frame code: frame number and capture time) and,
//! where root and Chromium are available, the real TypeScript SDK in
//! Chromium (`interop/ts/bench/video.mjs`, in a private network namespace),
//! which reads the frame code from each presented frame.
//!
//! - capture → decoded (our client) and capture → presented (Chromium):
//!   the capture time in the picture to the reader's clock, one host;
//! - frames delivered / frames captured over the window: distinct frame
//!   numbers read / (last − first + 1);
//! - machine CPU with one viewer and with four viewers of the same camera
//!   (one shared encoder);
//! - an RPC's p99 on the same connection while the stream plays vs idle.

use std::time::{Duration, Instant};

use tether_client::components::Motor;
use tether_client::{Options, RobotClient};
use tether_components::frame_code::{self, FrameCode};

use super::inproc::webrtc_conf;
use super::procs::{CpuMeter, Scratch, Server, repo_root};
use super::stats::{quantile, sorted};
use super::{Row, Scale};

const FPS: u32 = 30;

fn config() -> String {
    serde_json::json!({
        "components": [
            {"name": "camera1", "api": "rdk:component:camera", "model": "fake",
             "attributes": {"width_px": 640, "height_px": 480, "frame_rate": FPS}},
            {"name": "motor1", "api": "rdk:component:motor", "model": "fake"}
        ],
        "network": {"hosts": ["bench"], "ice_servers": []}
    })
    .to_string()
}

/// What one viewer saw.
struct Watched {
    /// Capture → decoded, ms.
    latencies: Vec<f64>,
    /// Distinct frame numbers / (last − first + 1).
    delivered: f64,
    frames: usize,
}

/// Streams camera1 for `secs`, decoding (our client).
async fn watch(robot: &RobotClient, secs: f64, decode: bool) -> anyhow::Result<Watched> {
    let mut stream = robot.stream("camera1").await?;
    let mut decoder = tether_media::vp8::Decoder::new()?;
    let (mut latencies, mut numbers) = (Vec::new(), Vec::new());
    let mut frames = 0usize;
    // The first second warms up (keyframe, bitrate settling).
    let warm = Instant::now() + Duration::from_secs(1);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs + 1.0);
    while let Ok(Some(sample)) = tokio::time::timeout_at(end, stream.next()).await {
        frames += 1;
        if !decode {
            continue;
        }
        if sample.key {
            decoder = tether_media::vp8::Decoder::new()?;
        }
        let Ok(Some(p)) = decoder.decode(&sample.data) else { continue };
        let Some(code) = frame_code::read(&p.to_rgb(), p.width, p.height) else { continue };
        if Instant::now() >= warm {
            latencies.push(f64::from(code.age_ms(FrameCode::now_ms())));
            numbers.push(code.frame);
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    let delivered = match (numbers.first(), numbers.last()) {
        (Some(a), Some(b)) => numbers.len() as f64 / f64::from(b - a + 1),
        _ => 0.0,
    };
    Ok(Watched { latencies: sorted(latencies), delivered, frames })
}

/// IsPowered round trips (µs) for `secs` on `robot`.
async fn rpc_p99(robot: &RobotClient, secs: f64) -> anyhow::Result<f64> {
    let motor = Motor::from_robot(robot, "motor1");
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        motor.is_powered().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(quantile(&sorted(samples), 0.99))
}

/// Chromium's view, from the TypeScript bench script (root and Chromium
/// needed): (capture→presented p50, p99, delivered ratio, frames).
async fn chromium(secs: f64) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
    anyhow::ensure!(nix_root(), "needs root (a network namespace for Chromium)");
    let ts = repo_root().join("interop/ts");
    anyhow::ensure!(ts.join("node_modules/playwright-core").exists(), "interop/ts has no node_modules (npm ci)");
    let out = tokio::process::Command::new("node")
        .current_dir(&ts)
        .args(["scripts/run-in-netns.mjs", "node", "bench/video.mjs", &format!("{secs}")])
        .env("TETHER_BIN", super::procs::tether_bin()?)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| {
        anyhow::anyhow!("bench/video.mjs printed no result: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let f = |k: &str| v[k].as_f64().ok_or_else(|| anyhow::anyhow!("no {k} in {line}"));
    Ok((f("p50")?, f("p99")?, f("delivered")?, f("presented")?, f("frames")?))
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Row 11.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let secs = scale.pick(3.0, 20.0);
    let scratch = Scratch::new("video")?;
    let machine = Server::machine(&scratch, &config(), "127.0.0.1:0", "warn").await?;
    let conf = webrtc_conf("bench", &machine.addr);
    let viewer = super::inproc::connect_when_online(conf.clone()).await?;
    let mut rows = Vec::new();

    // RPC p99 idle, on the connection that will carry the stream.
    let idle = rpc_p99(&viewer, scale.pick(1.0, 5.0)).await?;

    // One viewer (our client, decoding): latency, delivery, machine CPU.
    let meter = CpuMeter::start(machine.pid)?;
    let w = watch(&viewer, secs, true).await?;
    let one = meter.cores()?;
    let (p50, p99) = (quantile(&w.latencies, 0.5), quantile(&w.latencies, 0.99));
    rows.push(
        Row::new(11, "capture → decoded, our client, 640x480@30, loopback (p50)", p50, "ms")
            .baseline(format!("goal 50 ms; p99 {p99:.1} ms (goal 100); {} frames", w.frames))
            .ratio(p50 / 50.0)
            .goal(1.0),
    );
    rows.push(
        Row::new(11, format!("frames delivered / captured over {secs:.0} s, our client"), w.delivered, "")
            .baseline("goal ≥ 0.99")
            .ratio(if w.delivered > 0.0 { 0.99 / w.delivered } else { f64::INFINITY })
            .goal(1.0),
    );
    rows.push(
        Row::new(11, "machine CPU, one 640x480@30 viewer", one * 100.0, "% of a core")
            .baseline("goal ≤ 25 %")
            .ratio(one / 0.25)
            .goal(1.0)
            .note("capture (fake camera drawing), RGB→I420, VP8 encode, packetize, SRTP, send"),
    );

    // RPC p99 while the stream plays, same connection.
    let stream = viewer.stream("camera1").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = rpc_p99(&viewer, scale.pick(1.0, 5.0)).await?;
    drop(stream);
    rows.push(
        Row::new(11, "IsPowered p99 while the stream plays, same connection", busy / 1e3, "ms")
            .baseline(format!("idle: {:.2} ms", idle / 1e3))
            .ratio(busy / idle.max(1.0))
            .goal(2.0),
    );

    // Four viewers of one camera: one encoder, four tracks.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(RobotClient::connect(conf.clone(), Options::default()).await?);
    }
    let mut streams = Vec::new();
    for r in std::iter::once(&viewer).chain(others.iter()) {
        streams.push(r.stream("camera1").await?);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let meter = CpuMeter::start(machine.pid)?;
    let drain = async {
        loop {
            for s in &mut streams {
                let _ = tokio::time::timeout(Duration::from_millis(5), s.next()).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs_f64(scale.pick(2.0, 10.0)), drain).await;
    let four = meter.cores()?;
    rows.push(
        Row::new(11, "machine CPU, four viewers of one camera", four * 100.0, "% of a core")
            .baseline(format!("one viewer: {:.1} %", one * 100.0))
            .ratio(four / one.max(1e-6))
            .goal(1.3),
    );
    drop(streams);
    for r in others {
        r.close().await;
    }
    viewer.close().await;
    machine.stop().await;

    match chromium(secs).await {
        Ok((p50, p99, delivered, presented, frames)) => {
            rows.push(
                Row::new(11, "capture → presented in Chromium (TS SDK), 640x480@30 (p50)", p50, "ms")
                    .baseline(format!("goal 50 ms; p99 {p99:.0} ms (goal 100); {frames:.0} frames"))
                    .ratio(p50 / 50.0)
                    .goal(1.0),
            );
            rows.push(
                Row::new(11, "frames decoded / captured, Chromium (getStats framesDecoded)", delivered, "")
                    .baseline(format!("goal ≥ 0.99; presented and read back: {presented:.3}"))
                    .ratio(if delivered > 0.0 { 0.99 / delivered } else { f64::INFINITY })
                    .goal(1.0),
            );
        }
        Err(e) => rows.push(Row::skipped(11, "capture → presented in Chromium (TS SDK)", format!("{e:#}"))),
    }
    Ok(rows)
}
