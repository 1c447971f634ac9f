//! Row 9: the machine's memory per client connection. Two fresh `tether
//! machine` processes (so one transport's freed memory cannot hide the
//! other's), each warmed by one connection that comes and goes; then N
//! clients connect (each answers a GetVersion), and the RSS delta over N is
//! the memory per connection. Over the next seconds, with the N connections
//! idle, the machine's CPU shows the cost of keeping them alive (ICE
//! consent/keepalives every 500 ms; HTTP/2 PINGs every 500 ms).

use std::time::Duration;

use tether_client::{DialConf, Options, RobotClient};

use super::inproc::webrtc_conf;
use super::procs::{CpuMeter, Scratch, Server, machine_config, rss};
use super::{Row, Scale};

struct PerConnection {
    bytes: f64,
    idle_cpu: f64,
}

async fn measure(webrtc: bool, n: usize, scale: Scale) -> anyhow::Result<PerConnection> {
    let scratch = Scratch::new("memory")?;
    let config = machine_config(&[("motor1", "motor")], "2s", &["bench"]);
    let machine = Server::machine(&scratch, &config, "127.0.0.1:0", "error").await?;
    let conf = if webrtc { webrtc_conf("bench", &machine.addr) } else { DialConf::direct(machine.addr.clone()) };
    let warm = super::inproc::connect_when_online(conf.clone()).await?;
    warm.close().await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(scale.pick(300, 500))).await;
    let before = rss(machine.pid)?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(RobotClient::connect(conf.clone(), Options::default()).await?);
    }
    tokio::time::sleep(Duration::from_millis(scale.pick(500, 1000))).await;
    let after = rss(machine.pid)?;
    let meter = CpuMeter::start(machine.pid)?;
    tokio::time::sleep(Duration::from_millis(scale.pick(1000, 3000))).await;
    let idle_cpu = meter.cores()?;
    for c in &clients {
        c.close().await;
    }
    machine.stop().await;
    Ok(PerConnection { bytes: after.saturating_sub(before) as f64 / n as f64, idle_cpu })
}

/// Row 9.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let n = scale.pick(20, 100);
    let direct = measure(false, n, scale).await?;
    let webrtc = measure(true, n, scale).await?;
    let kib = |b: f64| b / 1024.0;
    Ok(vec![
        Row::new(9, format!("machine memory per WebRTC connection (RSS delta over {n})"), kib(webrtc.bytes), "KiB")
            .baseline(format!("per direct HTTP/2 connection: {:.1} KiB", kib(direct.bytes)))
            .ratio(webrtc.bytes / direct.bytes.max(1.0)),
        Row::new(9, format!("machine CPU with {n} idle WebRTC connections"), webrtc.idle_cpu * 100.0, "% of a core")
            .baseline(format!("{n} idle direct connections: {:.2} %", direct.idle_cpu * 100.0))
            .note("keepalives only: ICE binding requests every 500 ms per WebRTC peer, HTTP/2 PINGs from each direct client"),
    ])
}
