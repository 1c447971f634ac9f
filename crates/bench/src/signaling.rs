//! Row 8: one `tether signaling` process (in-memory queue).
//!
//! * Memory per registered machine: M machines, each on its own connection
//!   holding two waiting `Answer` streams (as tether's answerer does), RSS
//!   delta / M.
//! * Exchanges per second: answerer "machines" and callers driven by this
//!   process with realistic messages but no ICE behind them. One exchange =
//!   `Call` with an offer → the answerer gets it and sends its answer and
//!   one candidate → the caller gets the answer, sends one candidate and
//!   `done` (two `CallUpdate`s) → the answerer gets both and sends `done` →
//!   the caller's `Call` stream ends OK. The answerer then opens a fresh
//!   `Answer` stream, as tether's does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_transport::webrtc::sdp::{self, SdpKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::connect::with_host;
use super::procs::{CpuMeter, Scratch, Server, rss};
use super::stats::{ms, quantile, sorted};
use super::{Row, Scale};

type Client = pb::signaling_service_client::SignalingServiceClient<Channel>;

/// An SDP of realistic size (a data-channel-only offer of webrtc-rs).
fn fake_sdp(kind: SdpKind) -> String {
    let text = "v=0\r\no=- 4215775240449105457 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 \
        1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09\r\n\
        a=extmap-allow-mixed\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
        a=ice-ufrag:hWzNXaRMvTdSMcVd\r\na=ice-pwd:wRWYlshtAomvNOBNzzOuTwqBNWQpJZoR\r\n";
    sdp::encode(kind, text)
}

fn candidate() -> pb::IceCandidate {
    pb::IceCandidate {
        candidate: "candidate:167090039 1 udp 2130706431 198.18.3.1 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdpm_line_index: Some(0),
        username_fragment: None,
    }
}

/// Opens an `Answer` stream for `host`; returns its sender and the inbound stream.
async fn open_answer(
    client: &mut Client,
    host: &str,
) -> anyhow::Result<(mpsc::Sender<pb::AnswerResponse>, tonic::Streaming<pb::AnswerRequest>)> {
    let (tx, rx) = mpsc::channel(8);
    let mut req = with_host(ReceiverStream::new(rx), host)?;
    req.metadata_mut().insert("heartbeats-allowed", tonic::metadata::MetadataValue::from_static("true"));
    let inbound = client.answer(req).await?.into_inner();
    Ok((tx, inbound))
}

/// One answerer worker: answer offers for `host` until `stop`.
async fn answerer(mut client: Client, host: String, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let answer = fake_sdp(SdpKind::Answer);
    while !stop.load(Ordering::Relaxed) {
        let (tx, mut inbound) = open_answer(&mut client, &host).await?;
        let uuid = loop {
            match inbound.message().await {
                Ok(Some(m)) => match m.stage {
                    Some(pb::answer_request::Stage::Init(_)) => break Some(m.uuid),
                    _ => continue,
                },
                _ => break None,
            }
        };
        let Some(uuid) = uuid else { continue };
        let respond = |stage| pb::AnswerResponse { uuid: uuid.clone(), stage: Some(stage) };
        let init = pb::answer_response::Stage::Init(pb::AnswerResponseInitStage { sdp: answer.clone() });
        let update = pb::answer_response::Stage::Update(pb::AnswerResponseUpdateStage { candidate: Some(candidate()) });
        if tx.send(respond(init)).await.is_err() || tx.send(respond(update)).await.is_err() {
            continue;
        }
        // The caller's candidate, then its done.
        while let Ok(Some(m)) = inbound.message().await {
            match m.stage {
                Some(pb::answer_request::Stage::Done(_)) | Some(pb::answer_request::Stage::Error(_)) => break,
                _ => {}
            }
        }
        let _ = tx.send(respond(pb::answer_response::Stage::Done(pb::AnswerResponseDoneStage {}))).await;
        drop(tx);
        while let Ok(Some(_)) = inbound.message().await {}
    }
    Ok(())
}

/// One complete exchange as the caller.
async fn call(client: &mut Client, host: &str, offer: &str) -> anyhow::Result<()> {
    let req = with_host(pb::CallRequest { sdp: offer.to_owned(), disable_trickle: false }, host)?;
    let mut stream = client.call(req).await?.into_inner();
    let first = stream.message().await?.ok_or_else(|| anyhow!("the call ended before the answer"))?;
    if !matches!(first.stage, Some(pb::call_response::Stage::Init(_))) {
        return Err(anyhow!("the first message was not the answer"));
    }
    let update = |u| pb::CallUpdateRequest { uuid: first.uuid.clone(), update: Some(u) };
    client.call_update(with_host(update(pb::call_update_request::Update::Candidate(candidate())), host)?).await?;
    client.call_update(with_host(update(pb::call_update_request::Update::Done(true)), host)?).await?;
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Row 8.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let scratch = Scratch::new("signaling")?;
    let server =
        Server::start(&["signaling", "--listen", "127.0.0.1:0"], "error", &scratch.path("signaling.log")).await?;
    let addr = server.addr.clone();
    let connect = || super::procs::channel(&addr);

    // Memory per registered machine.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = rss(server.pid)?;
    let machines = scale.pick(200, 1000);
    let mut registered = Vec::with_capacity(machines);
    for i in 0..machines {
        let mut client = Client::new(connect().await?);
        let host = format!("registered-{i}");
        for _ in 0..2 {
            registered.push(open_answer(&mut client, &host).await?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_machines = rss(server.pid)?;
    let per_machine = with_machines.saturating_sub(idle) as f64 / machines as f64;

    // Exchanges per second, with those machines still registered.
    let hosts = 32;
    let workers = 4;
    let callers = 64;
    let stop = Arc::new(AtomicBool::new(false));
    let mut answerers = Vec::new();
    for h in 0..hosts {
        let channel = connect().await?;
        for _ in 0..workers {
            let client = Client::new(channel.clone());
            answerers.push(tokio::spawn(answerer(client, format!("bench-{h}"), stop.clone())));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let caller_channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(connect().await?);
        }
        v
    };
    let (warm, measured) = (Duration::from_secs(1), Duration::from_secs(scale.pick(3, 10)));
    let started = tokio::time::Instant::now();
    let measure_from = started + warm;
    let end = measure_from + measured;
    let failures = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let mut client = Client::new(caller_channels[i % caller_channels.len()].clone());
            let host = format!("bench-{}", i % hosts);
            let failures = failures.clone();
            tokio::spawn(async move {
                let offer = fake_sdp(SdpKind::Offer);
                let mut lat = Vec::new();
                while tokio::time::Instant::now() < end {
                    let t = Instant::now();
                    let ok = tokio::time::timeout(Duration::from_secs(10), call(&mut client, &host, &offer)).await;
                    let now = tokio::time::Instant::now();
                    match ok {
                        Ok(Ok(())) if now >= measure_from && now <= end => lat.push(ms(t.elapsed())),
                        Ok(Ok(())) => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let meter = CpuMeter::start(server.pid)?;
    tokio::time::sleep_until(end).await;
    let cpu = meter.cores()?;
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    stop.store(true, Ordering::Relaxed);
    for a in &answerers {
        a.abort();
    }
    drop(registered);
    server.stop().await;
    let lat = sorted(lat);
    let rate = lat.len() as f64 / measured.as_secs_f64();
    let failures = failures.load(Ordering::Relaxed);
    Ok(vec![
        Row::new(8, "signaling: completed offer/answer exchanges per second, one instance", rate, "exchanges/s")
            .baseline("goal: 1,000/s")
            .ratio(1000.0 / rate)
            .goal(1.0)
            .note(format!(
                "{callers} concurrent callers on 4 connections, {hosts} answering hosts × {workers} Answer streams, \
                 {machines} more machines registered; exchange p50 {:.2} ms, p99 {:.2} ms; {failures} failed; \
                 signaling process CPU {:.0} % of a core (the load generator shares the 2 cores)",
                quantile(&lat, 0.5),
                quantile(&lat, 0.99),
                cpu * 100.0
            )),
        Row::new(8, "signaling: memory per registered machine", per_machine / 1024.0, "KiB")
            .baseline(format!("idle instance: {:.1} MiB", idle as f64 / (1 << 20) as f64))
            .note(format!(
                "RSS delta over {machines} machines, each its own HTTP/2 connection with 2 waiting Answer streams"
            )),
    ])
}
