//! Rows 4 and 5: bulk GetImage throughput (1 and 8 MiB) over WebRTC, vs the
//! raw data channel of the same stack and vs direct HTTP/2; then many
//! concurrent streams on one WebRTC connection, and a small call's latency
//! while a bulk transfer runs on another stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use bytes::Bytes;
use tether_client::RobotClient;
use tether_client::components::{Camera, Motor};
use tether_transport::webrtc::peer::{Peer, PeerOptions, new_peer};
use tether_transport::webrtc::pipe::{Pipe, PipeOptions};
use tether_wire::framing::Limits;

use super::inproc::{self, InProcess};
use super::latency::{is_powered, sample, sample_within};
use super::stats::{median, quantile, sorted};
use super::{Row, Scale};

const MIB: usize = 1 << 20;
/// Pipe's bounds before they were cut (crates/transport/src/webrtc/pipe.rs): the
/// experiment row shows what the cut bought.
const FORMER_WRITER_QUEUE: usize = 64;
const FORMER_HIGH_WATER: usize = 1 << 20;
const FORMER_LOW_WATER: usize = 256 << 10;

fn former_bounds() -> PipeOptions {
    PipeOptions::default().writer_queue(FORMER_WRITER_QUEUE).high_water(FORMER_HIGH_WATER).low_water(FORMER_LOW_WATER)
}

fn bulk_machine_config() -> String {
    inproc::config(&[("motor1", "motor")], &[("cam1m", MIB), ("cam8m", 8 * MIB)], "2s")
}

/// GetImage of `camera` `rounds` times; MB/s (10^6 bytes) of image bytes.
async fn get_images(robot: &RobotClient, camera: &str, size: usize, rounds: usize) -> anyhow::Result<f64> {
    let cam = Camera::from_robot(robot, camera);
    let t = Instant::now();
    let debug = std::env::var_os("TETHER_BENCH_DEBUG").is_some();
    for _ in 0..rounds {
        let c = Instant::now();
        let got = cam.image("image/jpeg").await?;
        if debug {
            eprintln!("bench: GetImage {camera}: {:.2} ms", c.elapsed().as_secs_f64() * 1e3);
        }
        ensure!(got.image.len() == size, "{camera} returned {} bytes, not {size}", got.image.len());
    }
    Ok((size * rounds) as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Two peers of this stack (the same settings as the client's and the
/// machine's), connected in-process with host candidates, each with its
/// `data` channel behind a [`Pipe`] (the same writer and back-pressure the
/// RPC drivers use).
pub(crate) async fn raw_pair() -> anyhow::Result<(Peer, Pipe, Peer, Pipe)> {
    raw_pair_with(PipeOptions::default()).await
}

/// [`raw_pair`] with other Pipe bounds.
async fn raw_pair_with(bounds: PipeOptions) -> anyhow::Result<(Peer, Pipe, Peer, Pipe)> {
    let options = PeerOptions::default().with_ice_servers(Vec::new());
    let (a, b) = (new_peer(&options).await?, new_peer(&options).await?);
    let (pa, pb) = (Pipe::attach_with(a.data.clone(), bounds), Pipe::attach_with(b.data.clone(), bounds));
    let offer = a.pc.create_offer(None).await?;
    let mut gathered = a.pc.gathering_complete_promise().await;
    a.pc.set_local_description(offer).await?;
    let _ = gathered.recv().await;
    b.pc.set_remote_description(a.pc.local_description().await.context("no offer")?).await?;
    let answer = b.pc.create_answer(None).await?;
    let mut gathered = b.pc.gathering_complete_promise().await;
    b.pc.set_local_description(answer).await?;
    let _ = gathered.recv().await;
    a.pc.set_remote_description(b.pc.local_description().await.context("no answer")?).await?;
    let open = async {
        pa.opened.cancelled().await;
        pb.opened.cancelled().await;
    };
    tokio::time::timeout(Duration::from_secs(10), open).await.map_err(|_| anyhow!("raw data channel did not open"))?;
    Ok((a, pa, b, pb))
}

/// One-way throughput (MB/s) of `total` bytes in max-size packets over the
/// raw data channel: first send to last byte received.
async fn raw_throughput(total: usize) -> anyhow::Result<f64> {
    let (a, pa, b, mut pb) = raw_pair().await?;
    let packet = Bytes::from(vec![0x5au8; Limits::default().max_packet]);
    let count = total.div_ceil(packet.len());
    let outgoing = pa.outgoing.clone();
    let t = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..count {
            if outgoing.send(packet.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut received = 0usize;
    let want = count * Limits::default().max_packet;
    let receive = async {
        while received < want {
            match pb.incoming.recv().await {
                Some(p) => received += p.len(),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), receive).await.map_err(|_| anyhow!("raw transfer stalled"))?;
    let secs = t.elapsed().as_secs_f64();
    sender.abort();
    ensure!(received >= want, "raw transfer ended after {received} of {want} bytes");
    let _ = a.pc.close().await;
    let _ = b.pc.close().await;
    Ok(want as f64 / secs / 1e6)
}

/// Row 4.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let runs = scale.pick(1, 5);
    let machine = InProcess::start(&bulk_machine_config()).await?;
    let direct = machine.connect(machine.direct()).await?;
    let webrtc = machine.connect(machine.webrtc()).await?;
    let mut rows = Vec::new();
    for (camera, size, rounds) in [("cam1m", MIB, scale.pick(8, 32)), ("cam8m", 8 * MIB, scale.pick(2, 6))] {
        // Warm-up: connection windows, allocator, the camera's first frame.
        get_images(&direct, camera, size, 1).await?;
        get_images(&webrtc, camera, size, 1).await?;
        let (mut raw, mut rtc, mut h2) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            rtc.push(get_images(&webrtc, camera, size, rounds).await?);
            h2.push(get_images(&direct, camera, size, rounds).await?);
            raw.push(raw_throughput(size * rounds).await?);
            // Let the torn-down raw peers' tasks finish before the next timed run.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (raw, rtc, h2) = (median(&raw), median(&rtc), median(&h2));
        let mib = size / MIB;
        rows.push(
            Row::new(4, format!("GetImage {mib} MiB over WebRTC: throughput"), rtc, "MB/s")
                .baseline(format!("raw data channel of the same stack, one way: {raw:.1} MB/s"))
                .ratio(raw / rtc)
                .goal(1.25)
                .note(format!(
                    "goal: ≥ 0.8x the raw channel, i.e. raw/RPC ≤ 1.25; median of {runs} runs × {rounds} calls; \
                     raw = {} MB in 16 KiB messages through the same Pipe (its direct path and writer) between two in-process peers",
                    size * rounds / 1_000_000
                )),
        );
        rows.push(
            Row::new(4, format!("GetImage {mib} MiB over WebRTC vs direct HTTP/2"), rtc, "MB/s")
                .baseline(format!("direct HTTP/2: {h2:.1} MB/s"))
                .ratio(h2 / rtc),
        );
    }
    direct.close().await;
    webrtc.close().await;
    Ok(rows)
}

/// Row 5.
pub(crate) async fn concurrency_rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let streams = 64;
    let secs = Duration::from_millis(scale.pick(1000, 5000));
    let machine = InProcess::start(&bulk_machine_config()).await?;
    let webrtc = machine.connect(machine.webrtc()).await?;
    let direct = machine.connect(machine.direct()).await?;
    let motor = Motor::from_robot(&webrtc, "motor1");
    sample(200, || is_powered(&motor)).await?;
    let mut rows = Vec::new();

    // Small calls: one stream, then 64 at once.
    let (one_rate, _) = call_rate(&webrtc, 1, secs).await?;
    let (rate, lat) = call_rate(&webrtc, streams, secs).await?;
    rows.push(
        Row::new(
            5,
            format!("{streams} concurrent IsPowered streams on one WebRTC connection: calls/s"),
            rate,
            "calls/s",
        )
        .baseline(format!("one stream: {one_rate:.0} calls/s"))
        .ratio(one_rate / rate)
        .note(format!(
            "{streams} tasks calling back to back for {:.1} s; per-call p50 {:.0} µs, p99 {:.0} µs",
            secs.as_secs_f64(),
            quantile(&lat, 0.5),
            quantile(&lat, 0.99)
        )),
    );

    // Bulk: one 1 MiB GetImage stream, then 64 at once.
    get_images(&webrtc, "cam1m", MIB, 2).await?;
    let one = get_images(&webrtc, "cam1m", MIB, scale.pick(8, 24)).await?;
    let t = Instant::now();
    let per_stream = scale.pick(1, 2);
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let robot = webrtc.clone();
            tokio::spawn(async move { get_images(&robot, "cam1m", MIB, per_stream).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let aggregate = (streams * per_stream * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;
    rows.push(
        Row::new(5, format!("{streams} concurrent GetImage 1 MiB streams on one WebRTC connection"), aggregate, "MB/s")
            .baseline(format!("one stream: {one:.1} MB/s"))
            .ratio(one / aggregate),
    );

    // Head-of-line blocking: a small call's latency while 8 MiB images stream.
    for (label, robot) in [("WebRTC", &webrtc), ("direct HTTP/2", &direct)] {
        let motor = Motor::from_robot(robot, "motor1");
        sample(100, || is_powered(&motor)).await?;
        let n = scale.pick(300, 1500);
        let idle = sorted(sample(n, || is_powered(&motor)).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let bulk = {
            let (robot, stop, bytes) = (robot.clone(), stop.clone(), bytes.clone());
            tokio::spawn(async move {
                let cam = Camera::from_robot(&robot, "cam8m");
                while !stop.load(Ordering::Relaxed) {
                    let image = cam.image("image/jpeg").await?;
                    bytes.fetch_add(image.image.len() as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        };
        // Let the transfer get going.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let limit = Duration::from_millis(scale.pick(1500, 8000));
        let loaded = sorted(sample_within(n, limit, || is_powered(&motor)).await?);
        let bulk_rate = bytes.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64() / 1e6;
        stop.store(true, Ordering::Relaxed);
        bulk.await??;
        let (p50, p99, i99) = (quantile(&loaded, 0.5), quantile(&loaded, 0.99), quantile(&idle, 0.99));
        rows.push(
            Row::new(5, format!("IsPowered p99 during an 8 MiB GetImage stream, {label}"), p99, "µs")
                .baseline(format!("idle p99 on the same connection: {i99:.0} µs"))
                .ratio(p99 / i99)
                .note(format!(
                    "{} calls (at most {n} or {:.1} s); p50 {p50:.0} µs loaded vs {:.0} µs idle; the bulk stream moved ~{bulk_rate:.0} MB/s \
                     meanwhile",
                    loaded.len(),
                    limit.as_secs_f64(),
                    quantile(&idle, 0.5)
                )),
        );
    }
    webrtc.close().await;
    direct.close().await;

    // Why: the buffering under the framing's round-robin scheduler.
    let limit = Duration::from_millis(scale.pick(1000, 5000));
    let bounds = PipeOptions::default();
    let (ours, our_rate) = queued_behind_bulk(bounds, limit).await?;
    let (former, former_rate) = queued_behind_bulk(former_bounds(), limit).await?;
    let p99 = |v: &[f64]| quantile(v, 0.99) / 1e3;
    rows.push(
        Row::new(5, "raw channel: 64 B round trip queued behind a bulk stream, Pipe's bounds: p99", p99(&ours), "ms")
            .baseline(format!(
                "Pipe's former bounds, {FORMER_WRITER_QUEUE} packets and {} KiB buffered: {:.2} ms",
                FORMER_HIGH_WATER >> 10,
                p99(&former)
            ))
            .ratio(p99(&ours) / p99(&former))
            .note(format!(
                "Pipe queues up to {} packets and lets the channel buffer {} KiB before pausing; whatever \
                 sits there is ahead of a small response on another stream, whatever the framing's round robin does. \
                 p50 {:.2} vs {:.2} ms; bulk {our_rate:.1} MB/s with Pipe's bounds, {former_rate:.1} MB/s with the \
                 former ones",
                bounds.writer_queue,
                bounds.high_water >> 10,
                quantile(&ours, 0.5) / 1e3,
                quantile(&former, 0.5) / 1e3
            )),
    );
    Ok(rows)
}

/// Head-of-line blocking below the framing: the round trip of a 64-byte
/// message queued behind a one-way bulk stream of 16 KiB packets in the same
/// Pipe, with the Pipe's bounds given. Returns the round trips (µs, sorted)
/// and the bulk rate (MB/s).
async fn queued_behind_bulk(bounds: PipeOptions, limit: Duration) -> anyhow::Result<(Vec<f64>, f64)> {
    let (a, mut near, b, mut far) = raw_pair_with(bounds).await?;
    let tx = near.outgoing.clone();
    let received = Arc::new(AtomicU64::new(0));
    let far_task = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(m) = far.incoming.recv().await {
                if m.len() == 64 {
                    let _ = far.outgoing.send(m).await;
                } else {
                    received.fetch_add(m.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = {
        let (tx, stop) = (tx.clone(), stop.clone());
        let packet = Bytes::from(vec![0x5au8; Limits::default().max_packet]);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if tx.send(packet.clone()).await.is_err() {
                    return;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let start_bytes = received.load(Ordering::Relaxed);
    let mut rtts = Vec::new();
    while t.elapsed() < limit {
        let sent = Instant::now();
        tx.send(Bytes::from_static(&[1u8; 64])).await.map_err(|_| anyhow!("raw channel closed"))?;
        near.incoming.recv().await.ok_or_else(|| anyhow!("raw channel closed"))?;
        rtts.push(sent.elapsed().as_secs_f64() * 1e6);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (received.load(Ordering::Relaxed) - start_bytes) as f64 / t.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    bulk.abort();
    far_task.abort();
    let _ = a.pc.close().await;
    let _ = b.pc.close().await;
    Ok((sorted(rtts), rate))
}

/// `tasks` tasks calling IsPowered back to back for `secs`: calls/s and
/// every call's latency (µs, sorted).
async fn call_rate(robot: &RobotClient, tasks: usize, secs: Duration) -> anyhow::Result<(f64, Vec<f64>)> {
    let deadline = Instant::now() + secs;
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let motor = Motor::from_robot(robot, "motor1");
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let c = Instant::now();
                    motor.is_powered().await?;
                    lat.push(c.elapsed().as_secs_f64() * 1e6);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let rate = all.len() as f64 / t.elapsed().as_secs_f64();
    Ok((rate, sorted(all)))
}
