//! Row 7: sessions at scale. A `tether machine` process (window 2 s); the
//! bench starts N sessions over a handful of HTTP/2 connections and
//! heartbeats each at window/5 (400 ms) from its own task, phases spread
//! evenly. Over the measured interval: the machine's CPU (from
//! /proc/<pid>/stat) and RSS, the heartbeat round trip, and every heartbeat
//! that failed — a session the machine let lapse while its client was
//! heartbeating is a spurious expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use futures::{StreamExt, TryStreamExt};
use tether_proto::viam::robot::v1::robot_service_client::RobotServiceClient;
use tether_proto::viam::robot::v1::{GetSessionsRequest, SendSessionHeartbeatRequest, StartSessionRequest};
use tonic::transport::Channel;

use super::procs::{CpuMeter, Scratch, Server, machine_config, rss};
use super::stats::{quantile, sorted, us};
use super::{Row, Scale};

const WINDOW: Duration = Duration::from_secs(2);
const CONNECTIONS: usize = 16;

type Client = RobotServiceClient<Channel>;

async fn heartbeat(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client.send_session_heartbeat(SendSessionHeartbeatRequest { id: id.to_owned() }).await.map(drop)
}

/// Row 7.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(1_000, 10_000);
    let interval = WINDOW / 5;
    let (warm, measured) = (Duration::from_secs(scale.pick(1, 3)), Duration::from_secs(scale.pick(3, 12)));
    let scratch = Scratch::new("sessions")?;
    let window = format!("{}ms", WINDOW.as_millis());
    let config = machine_config(&[("motor1", "motor")], &window, &["bench"]);
    let machine = Server::machine(&scratch, &config, "127.0.0.1:0", "warn").await?;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(super::procs::channel(&machine.addr).await?);
    }
    let client =
        |i: usize| RobotServiceClient::new(channels[i % CONNECTIONS].clone()).max_decoding_message_size(64 << 20);

    // Baseline: one session's heartbeat round trip on an otherwise idle machine.
    let mut c = client(0);
    let id = c.start_session(StartSessionRequest { resume: String::new() }).await?.into_inner().id;
    for _ in 0..100 {
        heartbeat(&mut c, &id).await?;
    }
    let mut idle = Vec::new();
    for _ in 0..scale.pick(300, 1000) {
        let t = Instant::now();
        heartbeat(&mut c, &id).await?;
        idle.push(us(t.elapsed()));
    }
    let idle = sorted(idle);
    let idle_meter = CpuMeter::start(machine.pid)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_cpu = idle_meter.cores()?;
    let idle_rss = rss(machine.pid)?;

    // N sessions, started 64 at a time.
    let ids: Vec<String> =
        futures::stream::iter(0..n)
            .map(|i| {
                let mut c = client(i);
                async move {
                    c.start_session(StartSessionRequest { resume: String::new() }).await.map(|r| r.into_inner().id)
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;

    let errors = Arc::new(AtomicUsize::new(0));
    let expired = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let measure_from = start + warm;
    let end = measure_from + measured;
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (mut c, id) = (client(i), id.clone());
            let (errors, expired) = (errors.clone(), expired.clone());
            let phase = interval.mul_f64(i as f64 / n as f64);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start + phase, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut lat = Vec::new();
                loop {
                    let at = tick.tick().await;
                    if at >= end {
                        return lat;
                    }
                    let t = Instant::now();
                    match heartbeat(&mut c, &id).await {
                        Ok(()) if at >= measure_from => lat.push(us(t.elapsed())),
                        Ok(()) => {}
                        Err(s) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if s.message().contains(tether_wire::metadata::SESSION_EXPIRED) {
                                expired.fetch_add(1, Ordering::Relaxed);
                                return lat;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let meter = CpuMeter::start(machine.pid)?;
    let me = CpuMeter::start(std::process::id())?;
    tokio::time::sleep_until(end).await;
    let (cpu, my_cpu) = (meter.cores()?, me.cores()?);
    let (starved, my_starved) = (meter.starved(), me.starved());
    let loaded_rss = rss(machine.pid)?;
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let lat = sorted(lat);
    let live = client(0).get_sessions(GetSessionsRequest {}).await?.into_inner().sessions.len();
    machine.stop().await;
    ensure!(!lat.is_empty(), "no heartbeat was measured");

    let rate = lat.len() as f64 / measured.as_secs_f64();
    let nominal = n as f64 / interval.as_secs_f64();
    let (errors, expired) = (errors.load(Ordering::Relaxed), expired.load(Ordering::Relaxed));
    let what =
        format!("{n} sessions heartbeating every {} ms (window {} s)", interval.as_millis(), WINDOW.as_secs_f64());
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(vec![
        Row::new(7, format!("{what}: machine CPU"), cpu * 100.0, "% of a core")
            .baseline(format!("idle machine: {:.1} %", idle_cpu * 100.0))
            .note(format!(
                "{:.0} heartbeats/s achieved of {nominal:.0}/s nominal over {} s; {CONNECTIONS} HTTP/2 connections; \
                 the load generator (this process) used {:.0} % of a core on the same 2 cores; run-queue wait \
                 (runnable, no CPU free) per second: machine {starved:.0} ms, load generator {my_starved:.0} ms",
                rate,
                measured.as_secs(),
                my_cpu * 100.0
            )),
        Row::new(7, format!("{what}: machine RSS"), mib(loaded_rss), "MiB")
            .baseline(format!("idle machine: {:.1} MiB", mib(idle_rss)))
            .ratio(mib(loaded_rss) / mib(idle_rss))
            .note(format!(
                "≈ {:.0} bytes per session (RSS delta / sessions)",
                loaded_rss.saturating_sub(idle_rss) as f64 / n as f64
            )),
        Row::new(7, format!("{what}: heartbeat p99"), quantile(&lat, 0.99) / 1e3, "ms")
            .baseline(format!("one session on an idle machine: {:.3} ms", quantile(&idle, 0.99) / 1e3))
            .ratio(quantile(&lat, 0.99) / quantile(&idle, 0.99))
            .note(format!(
                "{} heartbeats; p50 {:.3} ms, max {:.1} ms; a session lapses only if a heartbeat is {} ms late",
                lat.len(),
                quantile(&lat, 0.5) / 1e3,
                lat.last().copied().unwrap_or_default() / 1e3,
                (WINDOW - interval).as_millis()
            )),
        Row::new(7, format!("{what}: spurious expiries"), expired as f64, "sessions")
            .baseline(format!("{n} sessions; {live} still live at the end"))
            .ratio(expired as f64 / n as f64)
            .goal(0.0)
            .note(format!("failed heartbeats of any kind: {errors}")),
    ])
}
