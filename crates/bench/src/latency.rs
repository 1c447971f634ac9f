//! Rows 1 and 2: unary IsPowered latency. Three paths measured in
//! interleaved runs on one runtime (so drift from other load on the box hits
//! all three alike): the raw tonic floor, tether's client → machine over
//! direct HTTP/2, and the same over WebRTC.

use std::future::Future;
use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use tether_client::components::Motor;
use tether_transport::webrtc::{RawChannel, RtcPeer};

use super::floor::{self, FloorServer};
use super::inproc::{self, InProcess};
use super::stats::{Runs, us};
use super::{Row, Scale, Selection};

/// Times `n` sequential calls of `call` (µs each).
pub(crate) async fn sample<F, Fut>(n: usize, call: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    sample_within(n, std::time::Duration::MAX, call).await
}

/// Like [`sample`], but stops early once `limit` has passed.
pub(crate) async fn sample_within<F, Fut>(n: usize, limit: std::time::Duration, mut call: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    while out.len() < n && started.elapsed() < limit {
        let t = Instant::now();
        call().await?;
        out.push(us(t.elapsed()));
    }
    Ok(out)
}

/// One IsPowered over a tether client.
pub(crate) async fn is_powered(motor: &Motor) -> anyhow::Result<()> {
    motor.is_powered().await?;
    Ok(())
}

/// A ping-pong endpoint on the raw data channel of this stack: the near side
/// sends `out` messages, the far side answers every `out` received with
/// `back` messages. 1 → 1 is the transport's round trip; 3 → 3 has the
/// shape of a unary call as tether's client sends it (request headers, the
/// message, a separate end-of-stream frame; response headers, message,
/// trailers), 2 → 3 the shape with end-of-stream on the message (as Go
/// clients send unary calls) — all without any framing or gRPC work.
struct RawPing {
    near: RawChannel,
    out: usize,
    back: usize,
    _far: tokio::task::JoinHandle<()>,
    _peers: (RtcPeer, RtcPeer),
}

impl RawPing {
    async fn start(out: usize, back: usize) -> anyhow::Result<Self> {
        let (a, near, b, far) = super::bulk::raw_pair().await?;
        let echo = tokio::spawn(async move {
            let mut got = 0;
            while let Some(m) = far.recv().await {
                got += 1;
                if got % out != 0 {
                    continue;
                }
                for _ in 0..back {
                    if far.send(m.clone()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Self { near, out, back, _far: echo, _peers: (a, b) })
    }

    /// One exchange of 64-byte messages.
    async fn ping(&mut self) -> anyhow::Result<()> {
        for _ in 0..self.out {
            let m = Bytes::from_static(&[7u8; 64]);
            self.near.send(m).await.map_err(|_| anyhow!("raw channel closed"))?;
        }
        for _ in 0..self.back {
            self.near.recv().await.ok_or_else(|| anyhow!("raw channel closed"))?;
        }
        Ok(())
    }

    async fn sample(&mut self, n: usize) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            self.ping().await?;
            out.push(us(t.elapsed()));
        }
        Ok(out)
    }
}

/// Warm-up calls, then `runs` × `n` timed calls of each of the three paths.
pub(crate) async fn rows(selection: &Selection, scale: Scale) -> anyhow::Result<Vec<Row>> {
    let (runs, n, warm) = scale.pick((3, 300, 100), (7, 2000, 500));
    let machine = InProcess::start(&inproc::config(&[("motor1", "motor")], &[], "2s")).await?;
    let floor = FloorServer::start().await?;
    let raw = floor.client().await?;
    let direct = machine.connect(machine.direct()).await?;
    let webrtc = machine.connect(machine.webrtc()).await?;
    let (dm, wm) = (Motor::from_robot(&direct, "motor1"), Motor::from_robot(&webrtc, "motor1"));
    let mut ping = RawPing::start(1, 1).await?;
    let mut shaped = RawPing::start(3, 3).await?;
    let mut eos = RawPing::start(2, 3).await?;
    let (mut r, mut rs, mut re) = (Runs::default(), Runs::default(), Runs::default());
    sample(warm, || floor::is_powered(&raw)).await?;
    sample(warm, || is_powered(&dm)).await?;
    sample(warm, || is_powered(&wm)).await?;
    ping.sample(warm).await?;
    shaped.sample(warm).await?;
    eos.sample(warm).await?;
    let (mut f, mut d, mut w) = (Runs::default(), Runs::default(), Runs::default());
    for _ in 0..runs {
        f.push(sample(n, || floor::is_powered(&raw)).await?);
        d.push(sample(n, || is_powered(&dm)).await?);
        w.push(sample(n, || is_powered(&wm)).await?);
        r.push(ping.sample(n).await?);
        rs.push(shaped.sample(n).await?);
        re.push(eos.sample(n).await?);
    }
    direct.close().await;
    webrtc.close().await;

    let mut rows = Vec::new();
    if selection.has(1) {
        rows.push(
            Row::new(1, "unary IsPowered p50, direct HTTP/2 (tether client → tether machine)", d.p50(), "µs")
                .baseline(format!("raw tonic client → server, same call: {:.1} µs", f.p50()))
                .ratio(d.p50() / f.p50())
                .goal(1.2)
                .note(format!("both in this process on loopback; {}; floor {}", d.describe(), f.describe())),
        );
        rows.push(
            Row::new(1, "unary IsPowered p99, direct HTTP/2", d.p99(), "µs")
                .baseline(format!("raw tonic p99: {:.1} µs", f.p99()))
                .ratio(d.p99() / f.p99())
                .goal(1.2),
        );
    }
    if selection.has(2) {
        rows.push(
            Row::new(2, "unary IsPowered p50 over WebRTC (same machine, same call)", w.p50(), "µs")
                .baseline(format!("direct HTTP/2 (row 1): {:.1} µs", d.p50()))
                .ratio(w.p50() / d.p50())
                .goal(1.5)
                .note(format!("data channel on loopback host candidates; {}", w.describe())),
        );
        rows.push(
            Row::new(2, "unary IsPowered p99 over WebRTC", w.p99(), "µs")
                .baseline(format!("direct HTTP/2 p99: {:.1} µs", d.p99()))
                .ratio(w.p99() / d.p99())
                .goal(1.5),
        );
        rows.push(
            Row::new(2, "unary IsPowered p50 over WebRTC vs the raw data channel", w.p50(), "µs")
                .baseline(format!("64-byte ping-pong on the raw data channel of the same stack: {:.1} µs", r.p50()))
                .ratio(w.p50() / r.p50())
                .note(format!(
                    "the transport's own floor: two in-process peers, the far one echoing; p99 {:.0} µs vs raw {:.0} µs",
                    w.p99(),
                    r.p99()
                )),
        );
        rows.push(
            Row::new(2, "unary IsPowered p50 over WebRTC vs a call-shaped raw exchange", w.p50(), "µs")
                .baseline(format!(
                    "raw data channel, 3 messages out and 3 back (the frames of a unary call as tether's client \
                     sends it, no framing or gRPC): {:.1} µs",
                    rs.p50()
                ))
                .ratio(w.p50() / rs.p50())
                .note(format!(
                    "what tether's framing, drivers and gRPC add on top of the messages a call needs; raw p99 {:.0} µs",
                    rs.p99()
                )),
        );
        rows.push(
            Row::new(2, "call-shaped raw exchange, 3 → 3 messages (today's client)", rs.p50(), "µs")
                .baseline(format!(
                    "2 → 3: end-of-stream on the request message instead of a frame of its own (as Go clients \
                     send unary calls): {:.1} µs",
                    re.p50()
                ))
                .ratio(rs.p50() / re.p50())
                .note("what dropping the separate end-of-stream frame of unary requests could save per call"),
        );
    }
    Ok(rows)
}
