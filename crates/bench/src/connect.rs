//! Row 3: WebRTC connect time by phase, against a `tether machine` process
//! inside the bench's network namespace.
//!
//! The phases come from an instrumented copy of the client's dial
//! (tether_signaling::caller::dial): the same steps through the same public
//! building blocks (signaling client, `RtcPeer` and its events, SDP helpers,
//! `RtcChannel`), with timestamps. Its total is reported next to the real
//! `RobotClient::connect`, so a drift between the two would show.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_proto::viam::robot::v1::{GetVersionRequest, robot_service_client::RobotServiceClient};
use tether_transport::webrtc::RtcOptions;
use tether_transport::webrtc::peer::{IceServer, PeerOptions};
use tether_transport::webrtc::sdp::{self, SdpKind};
use tether_transport::webrtc::{PeerEvent, RtcPeer};
use tether_wire::framing::Limits;

use super::stats::ms;

/// Milliseconds since the dial started at which each phase ended.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Phases {
    /// Signaling connected, ICE config asked, offer sent, answer applied.
    pub answer: f64,
    /// ICE connected (a candidate pair answered).
    pub ice: f64,
    /// DTLS handshake done (peer connection `connected`).
    pub dtls: f64,
    /// SCTP association up and the `data` channel open (our side).
    pub open: f64,
    /// The signaler ended the call (the machine's side is open too).
    pub ended: f64,
    /// A GetVersion answered over the channel.
    pub first_rpc: f64,
}

/// A signaling request addressed to `host` (the `rpc-host` header).
pub(super) fn with_host<T>(msg: T, host: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(tether_wire::metadata::RPC_HOST, host.parse().context("rpc-host")?);
    Ok(req)
}

/// Dials `host` through the signaler at `addr` step by step; returns the
/// phase times.
pub(crate) async fn instrumented_dial(addr: &str, host: &str) -> anyhow::Result<Phases> {
    let t0 = Instant::now();
    let since = |t: Instant| ms(t.saturating_duration_since(t0));
    let channel = super::procs::channel(addr).await?;
    let mut signaling = pb::signaling_service_client::SignalingServiceClient::new(channel);
    let mut ice_servers = Vec::new();
    if let Ok(r) = signaling.optional_web_rtc_config(with_host(pb::OptionalWebRtcConfigRequest {}, host)?).await
        && let Some(config) = r.into_inner().config
    {
        ice_servers.extend(config.additional_ice_servers.iter().map(IceServer::from));
    }
    let options = PeerOptions::default().with_ice_servers(ice_servers);
    let peer = RtcPeer::new(&options, RtcOptions::default()).await?;
    let rpc_channel = peer.channel(Limits::default());
    let offer = peer.create_offer()?;
    let call = pb::CallRequest { sdp: sdp::encode(SdpKind::Offer, &offer), disable_trickle: false };
    let mut answers = signaling.call(with_host(call, host)?).await?.into_inner();
    let first = answers.message().await?.context("the call ended before an answer")?;
    let uuid = first.uuid.clone();
    let Some(pb::call_response::Stage::Init(init)) = first.stage else { return Err(anyhow!("no answer first")) };
    let (_, answer) = sdp::decode(&init.sdp)?;
    peer.accept_answer(answer)?;
    let answered = Instant::now();

    let update = |u: pb::call_update_request::Update| {
        let (mut signaling, uuid, host) = (signaling.clone(), uuid.clone(), host.to_owned());
        async move {
            if let Ok(req) = with_host(pb::CallUpdateRequest { uuid, update: Some(u) }, &host) {
                let _ = signaling.call_update(req).await;
            }
        }
    };
    let mut pending = Vec::new();
    let mut done_sent = false;
    let mut answers_open = true;
    let (mut ice, mut dtls) = (None, None);
    let wait_open = async {
        loop {
            tokio::select! {
                ev = peer.next_event() => match ev {
                    Some(PeerEvent::Open) => break,
                    Some(PeerEvent::IceConnected) => ice = Some(Instant::now()),
                    Some(PeerEvent::Connected) => dtls = Some(Instant::now()),
                    Some(PeerEvent::LocalCandidate(c)) => {
                        if !done_sent {
                            pending.push(tokio::spawn(update(pb::call_update_request::Update::Candidate(c))));
                        }
                    }
                    Some(PeerEvent::GatheringComplete) => {
                        if !done_sent {
                            for p in std::mem::take(&mut pending) {
                                let _ = p.await;
                            }
                            tokio::spawn(update(pb::call_update_request::Update::Done(true)));
                            done_sent = true;
                        }
                    }
                    Some(PeerEvent::Closed(reason)) => return Err(anyhow!("the connection failed: {reason}")),
                    None => return Err(anyhow!("the connection closed")),
                },
                m = answers.message(), if answers_open => match m {
                    Ok(Some(resp)) => {
                        if let Some(pb::call_response::Stage::Update(u)) = resp.stage
                            && let Some(c) = u.candidate.as_ref()
                        {
                            let _ = peer.add_remote_candidate(c);
                        }
                    }
                    Ok(None) => answers_open = false,
                    Err(s) => return Err(anyhow!("signaling failed: {s}")),
                },
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), wait_open)
        .await
        .map_err(|_| anyhow!("the channel did not open"))??;
    let open = Instant::now();
    if !done_sent {
        let pending = std::mem::take(&mut pending);
        let done = update(pb::call_update_request::Update::Done(true));
        tokio::spawn(async move {
            for p in pending {
                let _ = p.await;
            }
            done.await;
        });
    }
    if answers_open {
        let ended = async { while let Ok(Some(_)) = answers.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
    }
    let ended = Instant::now();
    RobotServiceClient::new(rpc_channel).get_version(GetVersionRequest {}).await?;
    let rpc = Instant::now();
    if std::env::var_os("TETHER_BENCH_DEBUG").is_some() {
        eprintln!("bench: selected pair {:?}", peer.selected_pair());
    }
    peer.close();
    let (ice, dtls) = (ice.unwrap_or(open), dtls.unwrap_or(open));
    Ok(Phases {
        answer: since(answered),
        ice: since(ice).max(since(answered)),
        dtls: since(dtls).max(since(ice)),
        open: since(open),
        ended: since(ended),
        first_rpc: since(rpc),
    })
}
