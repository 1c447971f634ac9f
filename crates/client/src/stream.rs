//! Camera video over the WebRTC connection: [`RobotClient::stream`].
//!
//! A stream asks the machine's StreamService to add the camera's track to
//! this client's peer connection, reassembles the VP8 frames from the
//! track's RTP packets and hands them out in order, from the first keyframe
//! on (asking the machine for one when it starts mid-stream). When the
//! connection drops and the client reconnects, the stream adds itself to
//! the new connection and says so with [`ConnectionEvent::StreamRestored`];
//! the anchors' apps rebuild their streams by hand.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::proto::stream::v1 as pb;
use tether_transport::webrtc::Vp8Assembler;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{ConnectionEvent, ConnectionState};
use crate::robot::{RobotClient, emit_event};
use crate::{Error, Result};

/// Frames buffered for a reader that falls behind; older ones are dropped.
const QUEUE: usize = 64;

/// One encoded video frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VideoSample {
    /// The VP8 frame.
    pub data: Bytes,
    /// Its RTP timestamp (90 kHz clock; differences are presentation time).
    pub rtp_timestamp: u32,
    /// A keyframe.
    pub key: bool,
    /// When its last packet arrived.
    pub received_at: Instant,
    /// Which connection it came over (1 for the first, +1 per reconnection).
    pub connection: u32,
}

/// A camera's video; frames arrive until it is dropped or the client closes.
/// Dropping it removes the track on the machine.
#[derive(Debug)]
pub struct VideoStream {
    camera: String,
    frames: mpsc::Receiver<VideoSample>,
    stop: CancellationToken,
    keyframe: std::sync::Arc<tokio::sync::Notify>,
}

impl VideoStream {
    /// The next frame; `None` once the stream has ended (the client closed,
    /// reconnection gave up, or the machine refused the stream again).
    pub async fn next(&mut self) -> Option<VideoSample> {
        self.frames.recv().await
    }

    /// The camera's name.
    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Asks the machine for a keyframe (an RTCP picture loss indication),
    /// e.g. after a decoder error; a keyframe follows within a frame or two.
    pub fn request_keyframe(&self) {
        self.keyframe.notify_one();
    }
}

impl Drop for VideoStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn stream_client(robot: &RobotClient) -> pb::stream_service_client::StreamServiceClient<crate::SessionChannel> {
    pb::stream_service_client::StreamServiceClient::new(robot.channel())
}

impl RobotClient {
    /// Starts `camera`'s video on this client's WebRTC connection. Fails
    /// with the machine's error (NOT_FOUND, INVALID_ARGUMENT for a
    /// non-camera) or FAILED_PRECONDITION when the client is connected
    /// directly (video needs WebRTC).
    pub async fn stream(&self, camera: &str) -> Result<VideoStream> {
        let stream_id = camera.replace(':', "+");
        let Some(conn) = self.webrtc() else {
            return Err(Error::from(tonic::Status::failed_precondition(
                "video needs a WebRTC connection; this client is connected directly",
            )));
        };
        let receiver = conn.peer().video_receiver(&stream_id);
        stream_client(self).add_stream(pb::AddStreamRequest { name: stream_id.clone() }).await?;
        let (tx, frames) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let keyframe = std::sync::Arc::new(tokio::sync::Notify::new());
        let task = Task { robot: self.clone(), camera: camera.to_owned(), stream_id, keyframe: keyframe.clone() };
        tokio::spawn(run(task, receiver, tx, stop.clone()));
        Ok(VideoStream { camera: camera.to_owned(), frames, stop, keyframe })
    }
}

async fn remove(robot: &RobotClient, stream_id: &str) {
    let name = stream_id.to_owned();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        stream_client(robot).remove_stream(pb::RemoveStreamRequest { name }),
    )
    .await;
}

/// What a stream's task holds besides its channels.
struct Task {
    robot: RobotClient,
    camera: String,
    stream_id: String,
    keyframe: std::sync::Arc<tokio::sync::Notify>,
}

async fn run(
    task: Task,
    mut receiver: tether_transport::webrtc::VideoReceiver,
    tx: mpsc::Sender<VideoSample>,
    stop: CancellationToken,
) {
    let Task { robot, camera, stream_id, keyframe } = task;
    let mut connection = 1u32;
    loop {
        // Frames until the connection goes away.
        let mut assembler = Vp8Assembler::default();
        let mut keyed = false;
        let mut asked = Instant::now();
        receiver.request_keyframe();
        loop {
            let packet = tokio::select! {
                p = receiver.next_packet() => p,
                _ = keyframe.notified() => {
                    receiver.request_keyframe();
                    continue;
                }
                // The stream was dropped (its token cancelled, its receiver
                // gone): take the track off the machine. Best effort: the
                // machine also drops it when the connection goes.
                _ = stop.cancelled() => return remove(&robot, &stream_id).await,
                _ = tx.closed() => return remove(&robot, &stream_id).await,
            };
            let Some(packet) = packet else { break };
            let Some(frame) = assembler.push(&packet) else { continue };
            keyed |= frame.key;
            if !keyed {
                if asked.elapsed() > Duration::from_millis(500) {
                    receiver.request_keyframe();
                    asked = Instant::now();
                }
                continue;
            }
            let sample = VideoSample {
                data: frame.data,
                rtp_timestamp: frame.timestamp,
                key: frame.key,
                received_at: Instant::now(),
                connection,
            };
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(sample) {
                return;
            }
        }
        // The connection died: wait for the client to reconnect, then add
        // the stream to the new connection.
        let mut state = robot.state();
        loop {
            if stop.is_cancelled() || tx.is_closed() {
                return;
            }
            let now = *state.borrow_and_update();
            if now == ConnectionState::Disconnected {
                return;
            }
            if now == ConnectionState::Connected
                && let Some(conn) = robot.webrtc()
                && !conn.closed().is_cancelled()
            {
                receiver = conn.peer().video_receiver(&stream_id);
                match stream_client(&robot).add_stream(pb::AddStreamRequest { name: stream_id.clone() }).await {
                    Ok(_) => {
                        connection += 1;
                        emit_event(&robot, ConnectionEvent::StreamRestored { camera: camera.clone() });
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {}
                    Err(s) => {
                        tracing::warn!(%camera, "the machine refused the stream after reconnecting: {s}");
                        return;
                    }
                }
            }
            tokio::select! {
                _ = state.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
