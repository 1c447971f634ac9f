//! Video tracks on a peer connection, and renegotiation over the
//! `negotiation` channel (webrtc-rpc §3.6).
//!
//! The machine adds a VP8 track for a camera to a caller's connection with
//! [`RtcPeer::add_video`]; the returned [`VideoSender`] takes encoded
//! frames, packetizes them (RFC 7741) into the track, and reports what the
//! receiver said (picture loss, its bitrate estimate, loss fraction).
//! Dropping it removes the track. Each change is offered to the peer as a
//! description on the `negotiation` channel — base64 of the JSON
//! `{type, sdp}`, or raw JSON to a peer that speaks that dialect — and both
//! roles answer the peer's offers. The machine never yields to a peer's
//! offer while its own is out (the browser's implicit rollback resolves
//! such glare in our favour); later changes wait for the answer.
//!
//! A receiving peer asks for a stream's packets with [`RtcPeer::video_receiver`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Poll, Waker};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Attribute, Interceptor, Packet as ChainPacket, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{configure_nack, configure_rtcp_reports};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};

use super::driver::{Inner, PeerError, RtcPeer, Shared, now};

/// An RTP packet (re-exported from the `rtc` core).
pub use rtc::rtp::Packet as RtpPacket;

/// The payload type we register VP8 under.
const VP8_PAYLOAD_TYPE: u8 = 96;
/// Largest RTP payload: datagrams stay under a 1,280-byte path MTU with
/// headers, SRTP and TURN framing.
const RTP_MTU: usize = 1100;
/// Packets kept per receiver that the application has not read.
const RECEIVE_QUEUE: usize = 4096;
/// Tracks whose packets are held before the track is announced.
const UNANNOUNCED_TRACKS: usize = 8;
/// Packets held per such track.
const UNANNOUNCED_PACKETS: usize = 512;
/// Largest renegotiation message accepted (descriptions are a few KiB).
const MAX_DESCRIPTION: usize = 64 << 10;

fn vp8_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.into(), parameter: parameter.into() };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![fb("goog-remb", ""), fb("ccm", "fir"), fb("nack", ""), fb("nack", "pli")],
    }
}

/// The media engine and interceptors of a peer that carries video: VP8,
/// NACK (retransmit what the receiver missed, ask for what we missed) and
/// RTCP sender and receiver reports.
pub(crate) fn media_engine() -> Result<(MediaEngine, Registry), PeerError> {
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PAYLOAD_TYPE },
            RtpCodecKind::Video,
        )
        .map_err(|e| PeerError::Rtc(e.to_string()))?;
    // Application-ward of the reports and NACK interceptors, which act on
    // the packets first.
    let registry = Registry::new().with(Slot::from(FEEDBACK_SLOT), FeedbackToApp::default());
    let registry = configure_nack(registry, &mut engine);
    let registry = configure_rtcp_reports(registry);
    Ok((engine, registry))
}

/// Where [`FeedbackToApp`] sits in the interceptor chain.
const FEEDBACK_SLOT: usize = 14_000;

/// Inbound RTCP stays inside `rtc`'s interceptor chain unless an
/// interceptor marks it for the application. This one marks what the
/// video sender acts on: picture loss (PLI), full intra requests (FIR),
/// receiver estimates (REMB) and receiver reports (loss). Others (NACK,
/// sender reports, ...) stay with the interceptors.
#[derive(Default)]
struct FeedbackToApp {
    reads: std::collections::VecDeque<TaggedPacket>,
    writes: std::collections::VecDeque<TaggedPacket>,
}

fn wanted(packets: &[Box<dyn rtc::rtcp::packet::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
            || any.is::<ReceiverEstimatedMaximumBitrate>()
            || any.is::<ReceiverReport>()
    })
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let ChainPacket::Rtcp(packets) = &msg.message.packet
            && wanted(packets)
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }

    fn handle_timeout(&mut self, _now: std::time::Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<std::time::Instant> {
        None
    }
}

impl Interceptor for FeedbackToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// What a receiver has reported about one track since the last look.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct VideoFeedback {
    /// A picture loss indication or full intra request arrived: send a keyframe.
    pub keyframe: bool,
    /// The receiver's latest bandwidth estimate (REMB), bits per second.
    pub estimate_bps: Option<u64>,
    /// The latest loss fraction from a receiver report, out of 256.
    pub fraction_lost: Option<u8>,
}

struct SenderState {
    key: u64,
    sender: RTCRtpSenderId,
    track_id: String,
    ssrc: u32,
    seq: u16,
    payloader: rtc::rtp::codec::vp8::Vp8Payloader,
    /// The peer has answered an offer that has this track.
    negotiated: bool,
    feedback: VideoFeedback,
}

#[derive(Default)]
struct Inbound {
    packets: VecDeque<RtpPacket>,
    waker: Option<Waker>,
    /// Packets dropped because the application did not read them.
    dropped: u64,
}

/// The media half of a peer's state.
pub(crate) struct MediaState {
    /// The `negotiation` channel.
    pub(crate) channel: rtc::data_channel::RTCDataChannelId,
    open: bool,
    /// A change waits to be offered.
    want_offer: bool,
    /// Our offer is out and not yet answered.
    offer_out: bool,
    /// The peer sends raw JSON descriptions (the Python SDK's dialect).
    raw_json: bool,
    next_key: u64,
    senders: Vec<SenderState>,
    /// Remote track id → its stream id.
    tracks: HashMap<String, String>,
    /// Stream id → packets waiting for the application.
    inbound: HashMap<String, Inbound>,
    /// Packets of tracks not yet announced (the core reports a track once
    /// its first packet has been read), by track id.
    unannounced: HashMap<String, VecDeque<RtpPacket>>,
    /// Descriptions exchanged (ours and theirs), for tests and logs.
    pub(crate) renegotiations: u64,
}

impl MediaState {
    pub(crate) fn new(channel: rtc::data_channel::RTCDataChannelId) -> Self {
        Self {
            channel,
            open: false,
            want_offer: false,
            offer_out: false,
            raw_json: false,
            next_key: 1,
            senders: Vec::new(),
            tracks: HashMap::new(),
            inbound: HashMap::new(),
            unannounced: HashMap::new(),
            renegotiations: 0,
        }
    }

    /// Wakes every receiver (the connection closed).
    pub(crate) fn on_close(&mut self, wake: &mut Vec<Waker>) {
        for inbound in self.inbound.values_mut() {
            wake.extend(inbound.waker.take());
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Description {
    #[serde(rename = "type")]
    typ: String,
    sdp: String,
}

/// Parses a renegotiation message: base64 of JSON (goutils, the TypeScript
/// SDK) or raw JSON (rust-utils). Returns the description and whether it
/// was raw.
fn parse_description(data: &[u8]) -> Result<(Description, bool), String> {
    if data.len() > MAX_DESCRIPTION {
        return Err(format!("{} bytes is more than the {MAX_DESCRIPTION} a description may have", data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_owned())?.trim();
    if text.starts_with('{') {
        let d = serde_json::from_str(text).map_err(|e| format!("bad JSON description: {e}"))?;
        return Ok((d, true));
    }
    let json =
        base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("neither JSON nor base64: {e}"))?;
    let d = serde_json::from_slice(&json).map_err(|e| format!("bad JSON description: {e}"))?;
    Ok((d, false))
}

impl Inner {
    fn send_description(&mut self, desc: &RTCSessionDescription) -> Result<(), PeerError> {
        let d = Description { typ: desc.sdp_type.to_string(), sdp: desc.sdp.clone() };
        let json = serde_json::to_string(&d).map_err(|e| PeerError::Rtc(e.to_string()))?;
        let text = if self.media.raw_json { json } else { base64::engine::general_purpose::STANDARD.encode(json) };
        let id = self.media.channel;
        let mut dc = self.pc.data_channel(id).ok_or_else(|| PeerError::Closed("no negotiation channel".into()))?;
        dc.send_text(now(), text).map_err(|e| PeerError::Rtc(e.to_string()))?;
        self.media.renegotiations += 1;
        Ok(())
    }

    /// Offers the current tracks to the peer, now if we can, or once the
    /// channel is open and no offer of ours is out.
    pub(crate) fn renegotiate(&mut self) {
        self.media.want_offer = true;
        if !self.media.open || self.media.offer_out || self.closed.is_some() {
            return;
        }
        self.media.want_offer = false;
        let result = (|| {
            let offer = self.pc.create_offer(None).map_err(|e| PeerError::Rtc(e.to_string()))?;
            self.pc.set_local_description(now(), offer.clone()).map_err(|e| PeerError::Rtc(e.to_string()))?;
            self.send_description(&offer)
        })();
        match result {
            Ok(()) => self.media.offer_out = true,
            Err(e) => tracing::warn!("renegotiation offer failed: {e}"),
        }
    }

    /// The `negotiation` channel opened.
    pub(crate) fn negotiation_open(&mut self) {
        self.media.open = true;
        if self.media.want_offer {
            self.renegotiate();
        }
    }

    /// A message on the `negotiation` channel. Garbage is logged and
    /// dropped; the connection keeps serving.
    pub(crate) fn on_negotiation(&mut self, data: &[u8]) {
        // Padding sent after an ICE restart (`Inner::nudge`).
        if data.first() == Some(&0) {
            return;
        }
        let (desc, raw) = match parse_description(data) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("dropping a renegotiation message: {e}");
                return;
            }
        };
        self.media.raw_json = raw;
        self.media.renegotiations += 1;
        let result = match desc.typ.as_str() {
            "offer" => {
                if self.media.offer_out {
                    // Glare: ours stands; the peer rolls back and answers it.
                    tracing::debug!("ignoring the peer's offer while ours is out");
                    return;
                }
                (|| {
                    let offer = RTCSessionDescription::offer(desc.sdp).map_err(|e| PeerError::Rtc(e.to_string()))?;
                    self.pc.set_remote_description(now(), offer).map_err(|e| PeerError::Rtc(e.to_string()))?;
                    let answer = self.pc.create_answer(None).map_err(|e| PeerError::Rtc(e.to_string()))?;
                    self.pc.set_local_description(now(), answer.clone()).map_err(|e| PeerError::Rtc(e.to_string()))?;
                    self.send_description(&answer)
                })()
            }
            "answer" if self.media.offer_out => {
                let applied = RTCSessionDescription::answer(desc.sdp)
                    .and_then(|a| self.pc.set_remote_description(now(), a))
                    .map_err(|e| PeerError::Rtc(e.to_string()));
                self.media.offer_out = false;
                if applied.is_ok() {
                    for s in &mut self.media.senders {
                        s.negotiated = true;
                        // A receiver that just got the track needs a keyframe.
                        s.feedback.keyframe = true;
                    }
                }
                if self.media.want_offer {
                    self.renegotiate();
                }
                applied
            }
            other => Err(PeerError::Rtc(format!("unexpected description type {other:?}"))),
        };
        if let Err(e) = result {
            tracing::warn!(kind = %desc.typ, "renegotiation failed: {e}");
        }
    }

    /// RTP for one of the peer's tracks.
    pub(crate) fn on_rtp(&mut self, track_id: &str, packet: RtpPacket, wake: &mut Vec<Waker>) {
        let Some(stream) = self.media.tracks.get(track_id) else {
            if self.media.unannounced.len() < UNANNOUNCED_TRACKS || self.media.unannounced.contains_key(track_id) {
                let q = self.media.unannounced.entry(track_id.to_owned()).or_default();
                if q.len() < UNANNOUNCED_PACKETS {
                    q.push_back(packet);
                }
            }
            return;
        };
        let Some(inbound) = self.media.inbound.get_mut(stream) else { return };
        if inbound.packets.len() >= RECEIVE_QUEUE {
            inbound.packets.pop_front();
            inbound.dropped += 1;
        }
        inbound.packets.push_back(packet);
        wake.extend(inbound.waker.take());
    }

    /// RTCP about one of our tracks.
    pub(crate) fn on_rtcp(&mut self, track_id: &str, packets: &[Box<dyn rtc::rtcp::packet::Packet>]) {
        let Some(s) = self.media.senders.iter_mut().find(|s| s.track_id == track_id) else { return };
        for p in packets {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                s.feedback.keyframe = true;
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                s.feedback.estimate_bps = Some(remb.bitrate.max(0.0) as u64);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>()
                && let Some(r) = rr.reports.iter().find(|r| r.ssrc == s.ssrc)
            {
                s.feedback.fraction_lost = Some(r.fraction_lost);
            }
        }
    }

    /// A remote track opened: remember its stream.
    pub(crate) fn on_remote_track(&mut self, track_id: String, stream_ids: &[String], wake: &mut Vec<Waker>) {
        let Some(stream) = stream_ids.first() else { return };
        self.media.tracks.insert(track_id.clone(), stream.clone());
        for packet in self.media.unannounced.remove(&track_id).unwrap_or_default() {
            self.on_rtp(&track_id, packet, wake);
        }
    }

    fn sender_mut(&mut self, key: u64) -> Option<&mut SenderState> {
        self.media.senders.iter_mut().find(|s| s.key == key)
    }
}

/// The peer connection a call arrived on: in the extensions of every
/// request served over a data channel, so that a handler (the stream
/// service) can add tracks to its caller's connection. Holds the connection
/// weakly.
#[derive(Clone)]
pub struct CallPeer(std::sync::Weak<Shared>);

impl std::fmt::Debug for CallPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CallPeer").field(&self.0.strong_count()).finish()
    }
}

impl CallPeer {
    pub(crate) fn of(shared: &Arc<Shared>) -> Self {
        Self(Arc::downgrade(shared))
    }

    /// The connection, while it exists.
    pub fn peer(&self) -> Option<RtcPeer> {
        self.0.upgrade().map(|shared| RtcPeer { shared })
    }
}

/// A video track on a peer connection, fed by the application. Dropping it
/// removes the track (and renegotiates).
pub struct VideoSender {
    shared: Arc<Shared>,
    key: u64,
    stream_id: String,
}

impl std::fmt::Debug for VideoSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoSender").field("stream_id", &self.stream_id).finish()
    }
}

impl RtcPeer {
    /// Adds a VP8 video track whose MediaStream id is `stream_id` and offers
    /// it to the peer over the `negotiation` channel.
    pub fn add_video(&self, stream_id: &str) -> Result<VideoSender, PeerError> {
        let key = self.shared.with(|inner, _| {
            inner.check_open()?;
            if !inner.media_enabled {
                return Err(PeerError::Rtc("this peer connection was made without media".into()));
            }
            let ssrc = rand::random::<u32>();
            let track_id = uuid::Uuid::new_v4().to_string();
            let track = MediaStreamTrack::new(
                stream_id.to_owned(),
                track_id.clone(),
                stream_id.to_owned(),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                    codec: vp8_codec(),
                    ..Default::default()
                }],
            );
            let sender = inner.pc.add_track(track).map_err(|e| PeerError::Rtc(e.to_string()))?;
            let key = inner.media.next_key;
            inner.media.next_key += 1;
            inner.media.senders.push(SenderState {
                key,
                sender,
                track_id,
                ssrc,
                seq: rand::random(),
                payloader: Default::default(),
                negotiated: false,
                feedback: VideoFeedback::default(),
            });
            inner.renegotiate();
            Ok(key)
        })?;
        Ok(VideoSender { shared: self.shared.clone(), key, stream_id: stream_id.to_owned() })
    }

    /// Sends `text` on the `negotiation` channel as it is (for robustness
    /// tests: the peer must log and drop what it cannot parse).
    pub fn send_negotiation_raw(&self, text: &str) -> Result<(), PeerError> {
        self.shared.with(|inner, _| {
            inner.check_open()?;
            let id = inner.media.channel;
            let mut dc = inner.pc.data_channel(id).ok_or_else(|| PeerError::Closed("no negotiation channel".into()))?;
            dc.send_text(now(), text.to_owned()).map_err(|e| PeerError::Rtc(e.to_string()))
        })
    }

    /// Video tracks this connection sends.
    pub fn video_tracks(&self) -> usize {
        self.shared.inner.lock().media.senders.len()
    }

    /// Descriptions exchanged on the `negotiation` channel so far.
    pub fn renegotiations(&self) -> u64 {
        self.shared.inner.lock().media.renegotiations
    }

    /// Receives the packets of the peer's tracks whose MediaStream id is
    /// `stream_id` (one receiver per stream; a second replaces the first).
    pub fn video_receiver(&self, stream_id: &str) -> VideoReceiver {
        self.shared.with(|inner, _| {
            inner.media.inbound.insert(stream_id.to_owned(), Inbound::default());
        });
        VideoReceiver { shared: self.shared.clone(), stream_id: stream_id.to_owned() }
    }
}

impl VideoSender {
    /// The MediaStream id of the track.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The peer has accepted the track: frames sent now reach it.
    pub fn is_negotiated(&self) -> bool {
        self.shared.inner.lock().media.senders.iter().any(|s| s.key == self.key && s.negotiated)
    }

    /// The connection closed (the track is gone with it).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Cancelled when the connection closes.
    pub fn closed(&self) -> tokio_util::sync::CancellationToken {
        self.shared.closed.clone()
    }

    /// Takes what the receiver reported since the last call.
    pub fn take_feedback(&self) -> VideoFeedback {
        self.shared
            .inner
            .lock()
            .media
            .senders
            .iter_mut()
            .find(|s| s.key == self.key)
            .map(|s| {
                let f = s.feedback;
                s.feedback.keyframe = false;
                f
            })
            .unwrap_or_default()
    }

    /// Sends one encoded VP8 frame with RTP timestamp `timestamp` (90 kHz).
    /// Returns false (and sends nothing) until the peer has accepted the track.
    pub fn send_frame(&self, frame: &[u8], timestamp: u32) -> Result<bool, PeerError> {
        let frame = Bytes::copy_from_slice(frame);
        self.shared.with(|inner, _| {
            inner.check_open()?;
            let t = now();
            let Some(s) = inner.sender_mut(self.key) else { return Err(PeerError::Closed("track removed".into())) };
            if !s.negotiated {
                return Ok(false);
            }
            let payloads = s.payloader.payload(RTP_MTU, &frame).map_err(|e| PeerError::Rtc(e.to_string()))?;
            let (sender, ssrc, first) = (s.sender, s.ssrc, s.seq);
            let count = payloads.len();
            // Wraps as RTP sequence numbers do (a frame is far fewer than 65,536 packets).
            s.seq = first.wrapping_add(count as u16);
            let Some(mut rtp) = inner.pc.rtp_sender(sender) else {
                return Err(PeerError::Closed("track removed".into()));
            };
            // The payload type the peer's answer settled on.
            let payload_type =
                rtp.get_parameters().rtp_parameters.codecs.first().map_or(VP8_PAYLOAD_TYPE, |c| c.payload_type);
            for (i, payload) in payloads.into_iter().enumerate() {
                let packet = RtpPacket {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        marker: i + 1 == count,
                        payload_type,
                        sequence_number: first.wrapping_add(i as u16),
                        timestamp,
                        ssrc,
                        ..Default::default()
                    },
                    payload,
                };
                rtp.write_rtp(t, packet).map_err(|e| PeerError::Rtc(e.to_string()))?;
            }
            Ok(true)
        })
    }
}

impl Drop for VideoSender {
    fn drop(&mut self) {
        self.shared.with(|inner, _| {
            let Some(i) = inner.media.senders.iter().position(|s| s.key == self.key) else { return };
            let s = inner.media.senders.remove(i);
            if inner.closed.is_none() {
                if let Err(e) = inner.pc.remove_track(s.sender) {
                    tracing::debug!("removing a video track: {e}");
                }
                inner.renegotiate();
            }
        });
    }
}

/// The packets of one remote stream.
pub struct VideoReceiver {
    shared: Arc<Shared>,
    stream_id: String,
}

impl std::fmt::Debug for VideoReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoReceiver").field("stream_id", &self.stream_id).finish()
    }
}

impl VideoReceiver {
    /// The next RTP packet; `None` once the connection is closed.
    pub async fn next_packet(&mut self) -> Option<RtpPacket> {
        std::future::poll_fn(|cx| {
            let mut inner = self.shared.inner.lock();
            let closed = inner.closed.is_some();
            let Some(inbound) = inner.media.inbound.get_mut(&self.stream_id) else { return Poll::Ready(None) };
            if let Some(p) = inbound.packets.pop_front() {
                return Poll::Ready(Some(p));
            }
            if closed {
                return Poll::Ready(None);
            }
            inbound.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Packets dropped because they were not read in time.
    pub fn dropped(&self) -> u64 {
        self.shared.inner.lock().media.inbound.get(&self.stream_id).map_or(0, |i| i.dropped)
    }
}

impl Drop for VideoReceiver {
    fn drop(&mut self) {
        self.shared.inner.lock().media.inbound.remove(&self.stream_id);
    }
}

/// Reassembles VP8 frames from RTP packets in order (RFC 7741): a frame is
/// the payloads of the packets with one timestamp, complete at the marker
/// bit. A gap in sequence numbers drops the frame it falls in.
#[derive(Debug, Default)]
pub struct Vp8Assembler {
    timestamp: Option<u32>,
    next_seq: Option<u16>,
    frame: BytesMut,
    broken: bool,
    /// Frames dropped because a packet was missing.
    pub incomplete: u64,
}

impl Vp8Assembler {
    /// Feeds one packet; returns the frame when it completes one.
    pub fn push(&mut self, packet: &RtpPacket) -> Option<Vp8Frame> {
        use rtc::rtp::packetizer::Depacketizer;
        let h = &packet.header;
        if self.timestamp != Some(h.timestamp) {
            if self.timestamp.is_some() && !self.frame.is_empty() {
                self.incomplete += 1;
            }
            self.timestamp = Some(h.timestamp);
            self.frame.clear();
            self.broken = false;
        } else if self.next_seq != Some(h.sequence_number) {
            self.broken = true;
        }
        self.next_seq = Some(h.sequence_number.wrapping_add(1));
        let mut depacketizer = rtc::rtp::codec::vp8::Vp8Packet::default();
        match depacketizer.depacketize(&packet.payload) {
            Ok(payload) => {
                // A frame starts with a packet whose S bit is set and
                // partition index is 0.
                if self.frame.is_empty() && !(depacketizer.s == 1 && depacketizer.pid == 0) {
                    self.broken = true;
                }
                self.frame.extend_from_slice(&payload);
            }
            Err(_) => self.broken = true,
        }
        if !h.marker {
            return None;
        }
        let frame = std::mem::take(&mut self.frame).freeze();
        self.timestamp = None;
        if self.broken {
            self.incomplete += 1;
            return None;
        }
        // The frame tag's P bit (RFC 6386 §9.1) is 0 for a keyframe.
        let key = frame.first().is_some_and(|b| b & 1 == 0);
        Some(Vp8Frame { data: frame, timestamp: h.timestamp, key })
    }
}

/// One reassembled VP8 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vp8Frame {
    /// The frame.
    pub data: Bytes,
    /// Its RTP timestamp (90 kHz).
    pub timestamp: u32,
    /// A keyframe (decodable on its own).
    pub key: bool,
}

impl VideoReceiver {
    /// Asks the sender for a keyframe (an RTCP picture loss indication).
    pub fn request_keyframe(&self) {
        self.shared.with(|inner, _| {
            let Some((track, _)) = inner.media.tracks.iter().find(|(_, s)| **s == self.stream_id) else { return };
            let track = track.clone();
            let receivers: Vec<_> = inner.pc.get_receivers().collect();
            for id in receivers {
                let Some(mut r) = inner.pc.rtp_receiver(id) else { continue };
                let media_ssrc = r.track().ssrcs().next();
                if r.track().track_id() != &track {
                    continue;
                }
                if let Some(media_ssrc) = media_ssrc {
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
                    let _ = r.write_rtcp(now(), vec![Box::new(pli)]);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_in_both_dialects() {
        let json = r#"{"type":"offer","sdp":"v=0\r\n"}"#;
        let (d, raw) = parse_description(json.as_bytes()).unwrap();
        assert_eq!((d.typ.as_str(), d.sdp.as_str(), raw), ("offer", "v=0\r\n", true));
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let (d, raw) = parse_description(b64.as_bytes()).unwrap();
        assert_eq!((d.typ.as_str(), raw), ("offer", false));
        for bad in [&b"\xff\xfe"[..], b"not base64!", b"e30=", b"{\"type\":1}", &vec![b'a'; MAX_DESCRIPTION + 1][..]] {
            assert!(parse_description(bad).is_err(), "{:?}", String::from_utf8_lossy(&bad[..bad.len().min(20)]));
        }
    }

    #[test]
    fn the_assembler_drops_frames_with_a_gap_and_finds_keyframes() {
        use rtc::rtp::packetizer::Payloader as _;
        let mut payloader = rtc::rtp::codec::vp8::Vp8Payloader::default();
        // A keyframe's tag has the P bit clear; a delta frame's set.
        let key: Bytes = std::iter::once(0x10u8).chain(std::iter::repeat_n(7u8, 3000)).collect();
        let delta: Bytes = std::iter::once(0x11u8).chain(std::iter::repeat_n(9u8, 2500)).collect();
        let packets = |frame: &Bytes, ts: u32, seq: &mut u16, payloader: &mut rtc::rtp::codec::vp8::Vp8Payloader| {
            let parts = payloader.payload(RTP_MTU, frame).unwrap();
            let n = parts.len();
            parts
                .into_iter()
                .enumerate()
                .map(|(i, payload)| {
                    *seq = seq.wrapping_add(1);
                    RtpPacket {
                        header: rtc::rtp::header::Header {
                            marker: i + 1 == n,
                            sequence_number: *seq,
                            timestamp: ts,
                            ..Default::default()
                        },
                        payload,
                    }
                })
                .collect::<Vec<_>>()
        };
        let mut seq = u16::MAX - 1; // wraps inside the first frame
        let mut a = Vp8Assembler::default();
        let first = packets(&key, 0, &mut seq, &mut payloader);
        assert!(first.len() > 1);
        let got: Vec<_> = first.iter().filter_map(|p| a.push(p)).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].key);
        assert_eq!(got[0].data, key);
        // A delta frame with its second packet lost is dropped, not handed out.
        let mut second = packets(&delta, 3000, &mut seq, &mut payloader);
        second.remove(1);
        assert!(second.iter().all(|p| a.push(p).is_none()));
        assert_eq!(a.incomplete, 1);
        let third = packets(&delta, 6000, &mut seq, &mut payloader);
        let got: Vec<_> = third.iter().filter_map(|p| a.push(p)).collect();
        assert_eq!(got.len(), 1);
        assert!(!got[0].key);
        assert_eq!(got[0].timestamp, 6000);
    }
}
