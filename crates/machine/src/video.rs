//! Camera video for WebRTC callers: one encoder per camera and resolution,
//! shared by every viewer that watches it at that resolution.
//!
//! A *broadcast* is one task that takes the camera's frames at its frame
//! rate ([`Camera::video_frame`]), converts them to I420, encodes them with
//! VP8 and hands each encoded frame to every viewer's track. It forces a
//! keyframe when a viewer joins or asks for one (PLI/FIR), and sets the
//! encoder's bitrate to the lowest of its viewers' estimates: each viewer's
//! estimate follows its receiver reports (down when more than 10 % of
//! packets are lost, up 5 % a report when under 2 %, never above the base
//! rate for the picture size) and is capped by its
//! REMB. The broadcast ends, and its encoder is dropped, when its last
//! viewer leaves (RemoveStream, or the viewer's connection closes).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tether_components::{Camera, Resources};
use tether_media::{I420, vp8};
use tether_transport::webrtc::{RtcPeer, VideoSender};

/// Frame rate when the camera does not say.
const DEFAULT_FPS: f32 = 30.0;
/// Highest frame rate streamed.
const MAX_FPS: f32 = 60.0;

/// Why a stream could not be added.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// The peer connection refused the track.
    #[error("adding the video track: {0}")]
    Track(String),
}

/// A stream's resolution (`None`: the camera's own).
pub type Size = Option<(u32, u32)>;

struct Viewer {
    /// The connection the viewer watches on.
    conn: u64,
    sender: VideoSender,
    /// Bitrate estimate, bit/s.
    estimate: u64,
    /// Feedback taken for the frame being encoded.
    pending: Option<tether_transport::webrtc::VideoFeedback>,
}

struct Broadcast {
    camera: String,
    size: Size,
    viewers: Mutex<Vec<Viewer>>,
    frames: AtomicU64,
}

#[derive(Default)]
struct HubState {
    broadcasts: HashMap<(String, Size), Arc<Broadcast>>,
    /// Resolutions set with SetStreamOptions, per (connection, camera).
    sizes: HashMap<(u64, String), (u32, u32)>,
}

/// Every camera stream of a machine.
pub struct VideoHub {
    resources: Arc<Resources>,
    state: Mutex<HubState>,
    encoders_started: AtomicU64,
}

impl std::fmt::Debug for VideoHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoHub").field("encoders", &self.encoders()).field("tracks", &self.tracks()).finish()
    }
}

/// The MediaStream id of a camera's track: its name with `:` written `+`
/// (what the Viam SDKs look for).
pub fn stream_id(camera: &str) -> String {
    camera.replace(':', "+")
}

impl VideoHub {
    /// A hub over the machine's components.
    pub fn new(resources: Arc<Resources>) -> Arc<Self> {
        Arc::new(Self { resources, state: Mutex::default(), encoders_started: AtomicU64::new(0) })
    }

    /// Encoders running now (one per camera and resolution being watched).
    pub fn encoders(&self) -> usize {
        self.state.lock().broadcasts.len()
    }

    /// Encoders started since the machine started.
    pub fn encoders_started(&self) -> u64 {
        self.encoders_started.load(Ordering::Relaxed)
    }

    /// Video tracks being fed now, over all connections.
    pub fn tracks(&self) -> usize {
        self.state.lock().broadcasts.values().map(|b| b.viewers.lock().len()).sum()
    }

    /// Frames encoded by the running encoder of `camera` (any resolution).
    pub fn frames(&self, camera: &str) -> u64 {
        self.state
            .lock()
            .broadcasts
            .values()
            .filter(|b| b.camera == camera)
            .map(|b| b.frames.load(Ordering::Relaxed))
            .sum()
    }

    /// The resolution a connection has chosen for a camera.
    pub fn size_for(&self, conn: u64, camera: &str) -> Size {
        self.state.lock().sizes.get(&(conn, camera.to_owned())).copied()
    }

    /// True when connection `conn` is watching `camera`.
    pub fn is_watching(&self, conn: u64, camera: &str) -> bool {
        self.state
            .lock()
            .broadcasts
            .values()
            .any(|b| b.camera == camera && b.viewers.lock().iter().any(|v| v.conn == conn && !v.sender.is_closed()))
    }

    /// Adds `camera`'s track to `peer` (connection `conn`); a connection
    /// already watching it keeps its track.
    pub fn add(
        self: &Arc<Self>,
        peer: &RtcPeer,
        conn: u64,
        camera: &str,
        cam: Arc<dyn Camera>,
    ) -> Result<(), VideoError> {
        if self.is_watching(conn, camera) {
            return Ok(());
        }
        let size = self.size_for(conn, camera);
        let sender = peer.add_video(&stream_id(camera)).map_err(|e| VideoError::Track(e.to_string()))?;
        let viewer = Viewer { conn, sender, estimate: 0, pending: None };
        tracing::info!(%camera, conn, ?size, "video track added");
        self.join(camera, size, viewer, cam);
        Ok(())
    }

    fn join(self: &Arc<Self>, camera: &str, size: Size, viewer: Viewer, cam: Arc<dyn Camera>) {
        let mut state = self.state.lock();
        let key = (camera.to_owned(), size);
        if let Some(b) = state.broadcasts.get(&key) {
            b.viewers.lock().push(viewer);
            return;
        }
        let b = Arc::new(Broadcast {
            camera: camera.to_owned(),
            size,
            viewers: Mutex::new(vec![viewer]),
            frames: AtomicU64::new(0),
        });
        state.broadcasts.insert(key, b.clone());
        self.encoders_started.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(run(Arc::downgrade(self), b, cam));
    }

    /// Removes `camera`'s track from connection `conn`; false if it had none.
    pub fn remove(&self, conn: u64, camera: &str) -> bool {
        let removed = self.take_viewer(conn, camera);
        if removed.is_some() {
            tracing::info!(%camera, conn, "video track removed");
        }
        removed.is_some()
    }

    fn take_viewer(&self, conn: u64, camera: &str) -> Option<Viewer> {
        let state = self.state.lock();
        for b in state.broadcasts.values().filter(|b| b.camera == camera) {
            let mut viewers = b.viewers.lock();
            if let Some(i) = viewers.iter().position(|v| v.conn == conn) {
                return Some(viewers.remove(i));
            }
        }
        None
    }

    /// Sets connection `conn`'s resolution for `camera` (`None`: the
    /// camera's own); a stream it is watching moves to an encoder of that
    /// size, keeping its track.
    pub fn set_size(self: &Arc<Self>, conn: u64, camera: &str, size: Size, cam: Arc<dyn Camera>) {
        {
            let mut state = self.state.lock();
            match size {
                Some(s) => state.sizes.insert((conn, camera.to_owned()), s),
                None => state.sizes.remove(&(conn, camera.to_owned())),
            };
        }
        if let Some(viewer) = self.take_viewer(conn, camera) {
            self.join(camera, size, viewer, cam);
        }
    }

    /// Forgets what connection `conn` chose (it closed).
    pub fn forget(&self, conn: u64) {
        self.state.lock().sizes.retain(|(c, _), _| *c != conn);
    }

    /// Stream names: every camera.
    pub fn names(&self) -> Vec<String> {
        self.resources
            .iter()
            .filter(|(_, c)| matches!(c, tether_components::Component::Camera(_)))
            .map(|(n, _)| stream_id(n))
            .collect()
    }
}

/// Per-viewer bitrate control from receiver feedback.
fn next_estimate(current: u64, base: u64, feedback: &tether_transport::webrtc::VideoFeedback) -> u64 {
    // Up to the base rate for the picture size (0.1 bit per pixel per frame):
    // more costs CPU and packets (and calls queued behind them) for little
    // a robot camera needs; down to an eighth of it on a lossy link.
    let (min, max) = ((base / 8).max(50_000), base);
    let mut est = if current == 0 { base } else { current };
    if let Some(lost) = feedback.fraction_lost {
        let loss = f64::from(lost) / 256.0;
        if loss > 0.10 {
            est = (est as f64 * (1.0 - 0.5 * loss)) as u64;
        } else if loss < 0.02 {
            est = est + est / 20;
        }
    }
    if let Some(remb) = feedback.estimate_bps {
        est = est.min(remb);
    }
    est.clamp(min, max)
}

/// Crops odd sides to even (the encoder's I420 needs even sides).
fn to_i420(frame: &tether_components::VideoFrame) -> Option<I420> {
    let (w, h) = (frame.width & !1, frame.height & !1);
    if (w, h) == (frame.width, frame.height) {
        return I420::from_rgb(&frame.rgb, w, h).ok();
    }
    let stride = frame.width as usize * 3;
    let cropped: Vec<u8> =
        frame.rgb.chunks(stride).take(h as usize).flat_map(|row| row[..w as usize * 3].to_vec()).collect();
    I420::from_rgb(&cropped, w, h).ok()
}

/// Converts, scales and encodes one frame (on a blocking thread): the
/// encoded frames and the base bitrate for the picture's size.
fn encode_frame(
    frame: &tether_components::VideoFrame,
    size: Size,
    fps: u32,
    encoder: &mut Option<vp8::Encoder>,
    key: bool,
    timestamp: u32,
) -> Result<(Vec<vp8::EncodedFrame>, u64), String> {
    let mut picture =
        to_i420(frame).ok_or_else(|| format!("unusable video frame ({}x{})", frame.width, frame.height))?;
    if let Some((w, h)) = size
        && let Ok(scaled) = picture.scaled(w & !1, h & !1)
    {
        picture = scaled;
    }
    let dims = (picture.width, picture.height);
    let config = vp8::EncoderConfig::new(dims.0, dims.1, fps);
    if encoder.as_ref().is_none_or(|e| e.size() != dims) {
        *encoder = Some(vp8::Encoder::new(config).map_err(|e| format!("no VP8 encoder: {e}"))?);
    }
    let enc = encoder.as_mut().ok_or("no VP8 encoder")?;
    let encoded = enc.encode(&picture, i64::from(timestamp), key).map_err(|e| format!("encoding failed: {e}"))?;
    Ok((encoded, u64::from(config.bitrate_kbps) * 1000))
}

async fn run(hub: std::sync::Weak<VideoHub>, b: Arc<Broadcast>, cam: Arc<dyn Camera>) {
    let fps = match cam.properties().await {
        Ok(p) => p.frame_rate.filter(|f| f.is_finite() && *f > 0.0).unwrap_or(DEFAULT_FPS),
        Err(_) => DEFAULT_FPS,
    }
    .min(MAX_FPS);
    let mut tick = tokio::time::interval(Duration::from_secs_f32(1.0 / fps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut encoder: Option<vp8::Encoder> = None;
    let mut first: Option<SystemTime> = None;
    let mut failures = 0u32;
    tracing::info!(camera = %b.camera, size = ?b.size, fps, "video encoder started");
    loop {
        tick.tick().await;
        // Viewers whose connection closed leave; the last one out ends this.
        {
            let Some(hub) = hub.upgrade() else { return };
            let mut state = hub.state.lock();
            let mut viewers = b.viewers.lock();
            viewers.retain(|v| !v.sender.is_closed());
            if viewers.is_empty() {
                let key = (b.camera.clone(), b.size);
                if state.broadcasts.get(&key).is_some_and(|x| Arc::ptr_eq(x, &b)) {
                    state.broadcasts.remove(&key);
                }
                tracing::info!(camera = %b.camera, "video encoder stopped: no viewer left");
                return;
            }
        }
        let frame = match cam.video_frame().await {
            Ok(f) => f,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(camera = %b.camera, "no video frame ({failures} so far): {e}");
                }
                continue;
            }
        };
        // Feedback first: whether this frame must be a keyframe, and the
        // bitrate the slowest viewer can take.
        let (mut key, mut lowest) = (false, None::<u64>);
        {
            let mut viewers = b.viewers.lock();
            for v in viewers.iter_mut() {
                let feedback = v.sender.take_feedback();
                key |= feedback.keyframe;
                v.pending = Some(feedback);
            }
        }
        let start = *first.get_or_insert(frame.captured_at);
        let since = frame.captured_at.duration_since(start).unwrap_or_default();
        let timestamp = (since.as_micros() * 9 / 100) as u32;
        // Conversion and encoding (a few ms a frame) run off the runtime's
        // workers, so calls on the same machine are not queued behind them.
        let size_wanted = b.size;
        let fps_int = fps.round() as u32;
        let mut enc_slot = encoder.take();
        let work = tokio::task::spawn_blocking(move || {
            let result = encode_frame(&frame, size_wanted, fps_int, &mut enc_slot, key, timestamp);
            (enc_slot, result)
        });
        let (returned, result) = match work.await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(camera = %b.camera, "encoder task failed: {e}");
                continue;
            }
        };
        encoder = returned;
        let (encoded, base) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(camera = %b.camera, "{e}");
                continue;
            }
        };
        // Bitrate for the next frame: the lowest viewer estimate.
        {
            let mut viewers = b.viewers.lock();
            for v in viewers.iter_mut() {
                if let Some(feedback) = v.pending.take() {
                    v.estimate = next_estimate(v.estimate, base, &feedback);
                }
                lowest = Some(lowest.map_or(v.estimate, |l| l.min(v.estimate)));
            }
        }
        if let (Some(enc), Some(bps)) = (encoder.as_mut(), lowest)
            && let Err(e) = enc.set_bitrate_kbps((bps / 1000).clamp(30, u64::from(u32::MAX)) as u32)
        {
            tracing::debug!("bitrate change refused: {e}");
        }
        b.frames.fetch_add(1, Ordering::Relaxed);
        let viewers = b.viewers.lock();
        for f in &encoded {
            for v in viewers.iter() {
                if let Err(e) = v.sender.send_frame(&f.data, timestamp) {
                    tracing::trace!("frame not sent: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_transport::webrtc::VideoFeedback;

    #[test]
    fn bitrate_follows_loss_and_remb() {
        let base = 1_000_000;
        let mut fb = VideoFeedback::default();
        assert_eq!(next_estimate(0, base, &fb), base);
        fb.fraction_lost = Some(64); // 25 %
        let down = next_estimate(base, base, &fb);
        assert!(down < base * 9 / 10, "{down}");
        fb.fraction_lost = Some(0);
        assert!(next_estimate(down, base, &fb) > down);
        assert_eq!(next_estimate(base, base, &fb), base, "never above the base rate");
        fb.estimate_bps = Some(300_000);
        assert_eq!(next_estimate(base, base, &fb), 300_000);
        fb.estimate_bps = Some(1);
        assert_eq!(next_estimate(base, base, &fb), 125_000, "never under an eighth of the base");
    }

    #[test]
    fn stream_ids_use_plus_for_colons() {
        assert_eq!(stream_id("remote:camera1"), "remote+camera1");
        assert_eq!(stream_id("camera1"), "camera1");
    }
}
