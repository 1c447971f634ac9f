//! Rows 4 and 5: bulk GetImage throughput (1 and 8 MiB) over WebRTC, vs the
//! raw data channel of the same stack and vs direct HTTP/2; then many
//! concurrent streams on one WebRTC connection, and a small call's latency
//! while a bulk transfer runs on another stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use bytes::Bytes;
use tether_client::RobotClient;
use tether_client::components::{Camera, Motor};
use tether_transport::webrtc::RtcOptions;
use tether_transport::webrtc::peer::PeerOptions;
use tether_transport::webrtc::{PeerEvent, RawChannel, RtcPeer};
use tether_wire::framing::Limits;

use super::inproc::{self, InProcess};
use super::latency::{is_powered, sample, sample_within};
use super::stats::{median, quantile, sorted};
use super::{Row, Scale};

const MIB: usize = 1 << 20;
/// A larger data-channel high-water mark than the default
/// ([`RtcOptions::high_water`]): the experiment row shows what the default
/// buys a small call queued behind a bulk stream, and what it costs the bulk.
const LARGE_HIGH_WATER: usize = 1 << 20;

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
/// machine's), connected in-process with host candidates trickled both ways,
/// each with its `data` channel carrying raw messages.
pub(crate) async fn raw_pair() -> anyhow::Result<(RtcPeer, RawChannel, RtcPeer, RawChannel)> {
    raw_pair_with(RtcOptions::default()).await
}

/// Forwards `from`'s candidates to `to`; resolves when `from`'s channel is open.
async fn trickle_until_open(from: RtcPeer, to: RtcPeer) -> anyhow::Result<()> {
    while let Some(event) = from.next_event().await {
        match event {
            PeerEvent::LocalCandidate(c) => to.add_remote_candidate(&c)?,
            PeerEvent::Open => {
                // Keep forwarding late candidates in the background.
                tokio::spawn(async move {
                    while let Some(e) = from.next_event().await {
                        if let PeerEvent::LocalCandidate(c) = e {
                            let _ = to.add_remote_candidate(&c);
                        }
                    }
                });
                return Ok(());
            }
            PeerEvent::Closed(reason) => return Err(anyhow!("raw peer closed: {reason}")),
            _ => {}
        }
    }
    Err(anyhow!("raw peer closed"))
}

/// [`raw_pair`] with other [`RtcOptions`].
async fn raw_pair_with(rtc: RtcOptions) -> anyhow::Result<(RtcPeer, RawChannel, RtcPeer, RawChannel)> {
    let options = PeerOptions::default().with_ice_servers(Vec::new());
    let (a, b) = (RtcPeer::new(&options, rtc).await?, RtcPeer::new(&options, rtc).await?);
    let (ra, rb) = (a.raw(), b.raw());
    let answer = b.accept_offer(a.create_offer()?)?;
    a.accept_answer(answer)?;
    let open =
        async { tokio::try_join!(trickle_until_open(a.clone(), b.clone()), trickle_until_open(b.clone(), a.clone())) };
    tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .map_err(|_| anyhow!("raw data channel did not open"))??;
    Ok((a, ra, b, rb))
}

/// One-way throughput (MB/s) of `total` bytes in max-size packets over the
/// raw data channel: first send to last byte received.
async fn raw_throughput(total: usize) -> anyhow::Result<f64> {
    let (a, pa, b, pb) = raw_pair().await?;
    let packet = Bytes::from(vec![0x5au8; Limits::default().max_packet]);
    let count = total.div_ceil(packet.len());
    let outgoing = pa.clone();
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
            match pb.recv().await {
                Some(p) => received += p.len(),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), receive).await.map_err(|_| anyhow!("raw transfer stalled"))?;
    let secs = t.elapsed().as_secs_f64();
    sender.abort();
    ensure!(received >= want, "raw transfer ended after {received} of {want} bytes");
    a.close();
    b.close();
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
        let (mut rtc_cpu, mut rtc_bytes) = (Duration::ZERO, 0usize);
        for _ in 0..runs {
            // Machine and client both run in this process: its CPU time is
            // what moving the bytes over WebRTC costs both ends.
            let cpu = super::procs::cpu_time(std::process::id())?;
            rtc.push(get_images(&webrtc, camera, size, rounds).await?);
            rtc_cpu += super::procs::cpu_time(std::process::id())?.saturating_sub(cpu);
            rtc_bytes += size * rounds;
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
                     raw = {} MB in 16 KiB messages on the same stack's data channel (same driver, no framing) between two in-process peers",
                    size * rounds / 1_000_000
                )),
        );
        let cpu_per_gb = rtc_cpu.as_secs_f64() / (rtc_bytes as f64 / 1e9);
        rows.push(
            Row::new(4, format!("GetImage {mib} MiB over WebRTC: CPU-seconds per GB (machine + client)"), cpu_per_gb, "CPU-s/GB")
                .baseline("none (absolute; the ratio column repeats the value)")
                .ratio(cpu_per_gb)
                .goal(15.0)
                .note("user + system time of the bench process, which runs the machine and the client, over the timed WebRTC runs"),
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
    let ours = RtcOptions::default();
    let (queued, our_rate) = queued_behind_bulk(ours, limit).await?;
    let (large, large_rate) =
        queued_behind_bulk(RtcOptions::default().with_high_water(LARGE_HIGH_WATER), limit).await?;
    let p99 = |v: &[f64]| quantile(v, 0.99) / 1e3;
    rows.push(
        Row::new(
            5,
            "raw channel: 64 B round trip queued behind a bulk stream, default high-water mark: p99",
            p99(&queued),
            "ms",
        )
        .baseline(format!("{} KiB high-water mark: {:.2} ms", LARGE_HIGH_WATER >> 10, p99(&large)))
        .ratio(p99(&queued) / p99(&large))
        .note(format!(
            "the driver stops moving packets into the data channel while it buffers {} KiB (sent, not yet              acknowledged); whatever sits there is ahead of a small response on another stream, whatever the              framing's round robin does. p50 {:.2} vs {:.2} ms; bulk {our_rate:.1} MB/s with the default,              {large_rate:.1} MB/s with {} KiB",
            ours.high_water >> 10,
            quantile(&queued, 0.5) / 1e3,
            quantile(&large, 0.5) / 1e3,
            LARGE_HIGH_WATER >> 10,
        )),
    );
    Ok(rows)
}

/// Head-of-line blocking below the framing: the round trip of a 64-byte
/// message queued behind a one-way bulk stream of 16 KiB packets on the same
/// raw channel, with the driver's options given. Returns the round trips
/// (µs, sorted) and the bulk rate (MB/s).
async fn queued_behind_bulk(rtc: RtcOptions, limit: Duration) -> anyhow::Result<(Vec<f64>, f64)> {
    let (a, near, b, far) = raw_pair_with(rtc).await?;
    let received = Arc::new(AtomicU64::new(0));
    let far_task = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(m) = far.recv().await {
                if m.len() == 64 {
                    let _ = far.send(m).await;
                } else {
                    received.fetch_add(m.len() as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = {
        let (tx, stop) = (near.clone(), stop.clone());
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
        near.send(Bytes::from_static(&[1u8; 64])).await.map_err(|_| anyhow!("raw channel closed"))?;
        near.recv().await.ok_or_else(|| anyhow!("raw channel closed"))?;
        rtts.push(sent.elapsed().as_secs_f64() * 1e6);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (received.load(Ordering::Relaxed) - start_bytes) as f64 / t.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    bulk.abort();
    far_task.abort();
    a.close();
    b.close();
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
