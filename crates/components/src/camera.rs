//! Cameras (`rdk:component:camera`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use image::{ImageBuffer, Rgb, RgbImage};
use parking_lot::Mutex;
pub use tether_proto::viam::component::camera::v1::{DistortionParameters, ExtrinsicParameters, IntrinsicParameters};
use tokio::time::Instant;

use super::{Extra, Geometry, Result, Struct, num, to_struct};

/// JPEG.
pub const MIME_JPEG: &str = "image/jpeg";
/// PNG.
pub const MIME_PNG: &str = "image/png";
/// Point Cloud Data (PCD).
pub const MIME_PCD: &str = "pointcloud/pcd";

/// One encoded image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The camera source it came from. Empty means "the camera itself": the
    /// gRPC service fills in the camera's name.
    pub source_name: String,
    /// Encoding, e.g. `image/jpeg`.
    pub mime_type: String,
    /// Encoded bytes.
    pub data: Vec<u8>,
}

/// The result of [`Camera::images`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Images {
    /// One image per source.
    pub images: Vec<Image>,
    /// When they were captured.
    pub captured_at: Option<SystemTime>,
}

/// One uncompressed picture for video streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VideoFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Packed RGB, 3 bytes per pixel, rows top to bottom.
    pub rgb: Vec<u8>,
    /// When the picture was taken.
    pub captured_at: SystemTime,
}

/// What a camera can do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CameraProperties {
    /// Point clouds are available.
    pub supports_pcd: bool,
    /// Pinhole intrinsics.
    pub intrinsics: Option<IntrinsicParameters>,
    /// Lens distortion.
    pub distortion: Option<DistortionParameters>,
    /// Encodings the camera can produce.
    pub mime_types: Vec<String>,
    /// Frames per second.
    pub frame_rate: Option<f32>,
    /// Pose of the camera relative to its parent.
    pub extrinsics: Option<ExtrinsicParameters>,
}

/// A camera driver.
#[async_trait::async_trait]
pub trait Camera: Send + Sync + 'static {
    /// Images from the camera's sources; `filter_source_names` empty means
    /// all sources. (The service also drops images of other sources.)
    async fn images(&self, filter_source_names: Vec<String>, extra: Extra) -> Result<Images>;
    /// One image in `mime_type` (empty: the camera's choice) — the legacy
    /// `GetImage`. The default returns the first image of
    /// [`Camera::images`] if its encoding matches.
    async fn image(&self, mime_type: String, extra: Extra) -> Result<Image> {
        let image = self
            .images(Vec::new(), extra)
            .await?
            .images
            .into_iter()
            .next()
            .ok_or_else(|| crate::Error::unavailable("the camera returned no image"))?;
        let wanted = mime_type.strip_suffix("+lazy").unwrap_or(&mime_type);
        if wanted.is_empty() || wanted == image.mime_type {
            Ok(image)
        } else {
            Err(crate::Error::invalid_argument(format!(
                "mime type {mime_type:?} is not supported (this camera produces {})",
                image.mime_type
            )))
        }
    }
    /// The next picture for a video stream. The machine calls it at the
    /// stream's frame rate from one task per camera and encodes what it
    /// returns; the default decodes [`Camera::image`]. Cameras that have raw
    /// pictures should return them directly.
    async fn video_frame(&self) -> Result<VideoFrame> {
        let captured_at = SystemTime::now();
        let image = self.image(String::new(), None).await?;
        let decoded = image::load_from_memory(&image.data)
            .map_err(|e| crate::Error::internal(format!("decoding the camera's {} image: {e}", image.mime_type)))?
            .to_rgb8();
        Ok(VideoFrame { width: decoded.width(), height: decoded.height(), rgb: decoded.into_raw(), captured_at })
    }
    /// A point cloud in `mime_type` (empty: the camera's choice); returns
    /// the encoding and the bytes.
    async fn point_cloud(&self, _mime_type: String, _extra: Extra) -> Result<(String, Vec<u8>)> {
        Err(super::unimplemented("GetPointCloud"))
    }
    /// Capabilities and calibration.
    async fn properties(&self) -> Result<CameraProperties>;
    /// Physical geometry.
    async fn geometries(&self, _extra: Extra) -> Result<Vec<Geometry>> {
        Ok(Vec::new())
    }
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        Ok(Struct::default())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Encoding {
    Jpeg,
    Png,
}

impl Encoding {
    fn parse(mime_type: &str) -> Result<Self> {
        match mime_type.strip_suffix("+lazy").unwrap_or(mime_type) {
            "" | MIME_JPEG => Ok(Self::Jpeg),
            MIME_PNG => Ok(Self::Png),
            other => Err(crate::Error::invalid_argument(format!(
                "mime type {other:?} is not supported (supported: {MIME_JPEG}, {MIME_PNG})"
            ))),
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => MIME_JPEG,
            Self::Png => MIME_PNG,
        }
    }
}

/// Frame number and encoded bytes of the last frame, per encoding.
type FrameCache = HashMap<Encoding, (u64, Vec<u8>)>;

/// A simulated camera producing a test pattern that changes every frame: a
/// colour gradient whose blue channel drifts, a white bar sweeping across
/// the picture every 4 s, and along the top the [frame code](crate::frame_code)
/// (frame number and capture time, readable from decoded pixels).
/// Still images (`GetImage`) advance at `frame_rate` per second since the
/// camera was created and are JPEG (default) or PNG; video frames
/// ([`Camera::video_frame`]) are numbered one up per frame produced. Point
/// clouds are a small plane (ASCII PCD, mm) that bobs up and down.
#[derive(Clone, Debug)]
pub struct FakeCamera {
    width: u32,
    height: u32,
    frame_rate: f64,
    started: Instant,
    /// The last encoded frame per encoding.
    cache: Arc<Mutex<FrameCache>>,
    /// Video frames produced so far.
    video_frames: Arc<std::sync::atomic::AtomicU32>,
}

impl Default for FakeCamera {
    fn default() -> Self {
        Self::new(320, 240, 10.0)
    }
}

impl FakeCamera {
    /// Largest accepted width or height.
    pub const MAX_SIDE: u32 = 4096;

    /// A fake camera; sides are clamped to `1..=MAX_SIDE`.
    pub fn new(width: u32, height: u32, frame_rate: f64) -> Self {
        Self {
            width: width.clamp(1, Self::MAX_SIDE),
            height: height.clamp(1, Self::MAX_SIDE),
            frame_rate: if frame_rate.is_finite() && frame_rate > 0.0 { frame_rate } else { 10.0 },
            started: Instant::now(),
            cache: Arc::default(),
            video_frames: Arc::default(),
        }
    }

    /// The number of the current frame.
    pub fn frame(&self) -> u64 {
        // Saturating float-to-int conversion.
        (self.started.elapsed().as_secs_f64() * self.frame_rate).floor() as u64
    }

    /// Width and height.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Draws frame number `frame` with the capture time `capture_ms` in its
    /// frame code.
    pub fn render(&self, frame: u64, capture_ms: u32) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let t = frame as f64 / self.frame_rate;
        let blue = ((t * 40.0) % 256.0) as u8;
        let bar_width = (w / 16).max(1);
        let bar_x = ((t / 4.0).fract() * f64::from(w)) as u32;
        let mut img = ImageBuffer::from_fn(w, h, |x, y| {
            if x >= bar_x && x < bar_x + bar_width {
                return Rgb([255, 255, 255]);
            }
            let r = (u64::from(x) * 255 / u64::from(w.max(2) - 1)) as u8;
            let g = (u64::from(y) * 255 / u64::from(h.max(2) - 1)) as u8;
            Rgb([r, g, blue])
        });
        let code = crate::frame_code::FrameCode { frame: frame as u32, capture_ms };
        crate::frame_code::draw(&mut img, w, h, code);
        img
    }

    fn encode(&self, frame: u64, encoding: Encoding) -> Result<Vec<u8>> {
        let cached = self.cache.lock().get(&encoding).filter(|(f, _)| *f == frame).map(|(_, b)| b.clone());
        if let Some(bytes) = cached {
            return Ok(bytes);
        }
        let img = self.render(frame, crate::frame_code::FrameCode::now_ms());
        let mut out = Vec::new();
        let encoded = match encoding {
            Encoding::Jpeg => img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)),
            Encoding::Png => img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out)),
        };
        encoded.map_err(|e| crate::Error::internal(format!("encoding the frame: {e}")))?;
        self.cache.lock().insert(encoding, (frame, out.clone()));
        Ok(out)
    }

    fn capture(&self, encoding: Encoding) -> Result<Image> {
        Ok(Image {
            source_name: String::new(),
            mime_type: encoding.mime().into(),
            data: self.encode(self.frame(), encoding)?,
        })
    }
}

#[async_trait::async_trait]
impl Camera for FakeCamera {
    async fn images(&self, _filter_source_names: Vec<String>, _extra: Extra) -> Result<Images> {
        let captured_at = SystemTime::now();
        Ok(Images { images: vec![self.capture(Encoding::Jpeg)?], captured_at: Some(captured_at) })
    }

    async fn image(&self, mime_type: String, _extra: Extra) -> Result<Image> {
        self.capture(Encoding::parse(&mime_type)?)
    }

    async fn video_frame(&self) -> Result<VideoFrame> {
        let frame = self.video_frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let captured_at = SystemTime::now();
        // Drawing a picture takes a millisecond or more: off the runtime's
        // workers, like the encoding that follows.
        let camera = self.clone();
        let draw = move || camera.render(u64::from(frame), crate::frame_code::FrameCode::ms_of(captured_at));
        let img = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread => {
                tokio::task::spawn_blocking(draw)
                    .await
                    .map_err(|e| crate::Error::internal(format!("drawing the frame: {e}")))?
            }
            _ => draw(),
        };
        Ok(VideoFrame { width: self.width, height: self.height, rgb: img.into_raw(), captured_at })
    }

    async fn point_cloud(&self, mime_type: String, _extra: Extra) -> Result<(String, Vec<u8>)> {
        let wanted = mime_type.strip_suffix("+lazy").unwrap_or(&mime_type);
        if !wanted.is_empty() && wanted != MIME_PCD {
            return Err(crate::Error::invalid_argument(format!(
                "point cloud mime type {mime_type:?} is not supported (supported: {MIME_PCD})"
            )));
        }
        let (cols, rows) = (8u32, 6u32);
        let n = cols * rows;
        let t = self.frame() as f64 / self.frame_rate;
        let z = 1000.0 + 50.0 * (std::f64::consts::TAU * t / 4.0).sin();
        let mut pcd = format!(
            "VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\nHEIGHT 1\n\
             VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA ascii\n"
        );
        for r in 0..rows {
            for c in 0..cols {
                let x = (f64::from(c) - f64::from(cols - 1) / 2.0) * 100.0;
                let y = (f64::from(r) - f64::from(rows - 1) / 2.0) * 100.0;
                let _ = writeln!(pcd, "{x} {y} {z:.3}");
            }
        }
        Ok((MIME_PCD.into(), pcd.into_bytes()))
    }

    async fn properties(&self) -> Result<CameraProperties> {
        let (w, h) = (f64::from(self.width), f64::from(self.height));
        Ok(CameraProperties {
            supports_pcd: true,
            intrinsics: Some(IntrinsicParameters {
                width_px: self.width,
                height_px: self.height,
                focal_x_px: w,
                focal_y_px: w,
                center_x_px: w / 2.0,
                center_y_px: h / 2.0,
            }),
            distortion: None,
            mime_types: vec![MIME_JPEG.into(), MIME_PNG.into()],
            frame_rate: Some(self.frame_rate as f32),
            extrinsics: None,
        })
    }

    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([
            ("width_px", num(f64::from(self.width))),
            ("height_px", num(f64::from(self.height))),
            ("frame_rate", num(self.frame_rate)),
            ("frame", num(self.frame() as f64)),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn frames_are_real_images_that_change() {
        let cam = FakeCamera::default();
        let first = cam.images(Vec::new(), None).await.unwrap();
        assert!(first.captured_at.is_some());
        let [img] = &first.images[..] else { panic!("one image expected") };
        assert_eq!(img.mime_type, MIME_JPEG);
        let a = image::load_from_memory_with_format(&img.data, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((a.width(), a.height()), (320, 240));

        // Within the same frame period the frame is the same.
        let again = cam.image(String::new(), None).await.unwrap();
        assert_eq!(again.data, img.data);

        tokio::time::sleep(Duration::from_millis(500)).await;
        let png = cam.image(MIME_PNG.into(), None).await.unwrap();
        assert_eq!(png.mime_type, MIME_PNG);
        let b = image::load_from_memory_with_format(&png.data, image::ImageFormat::Png).unwrap();
        assert_eq!((b.width(), b.height()), (320, 240));
        let code = crate::frame_code::read(b.as_rgb8().unwrap(), 320, 240).unwrap();
        assert_eq!(code.frame, 5, "PNG is lossless: the frame code reads back");
        assert_eq!(b.to_rgb8().into_raw(), cam.render(5, code.capture_ms).into_raw());
        assert_ne!(a.to_rgb8(), b.to_rgb8());
        let later = cam.images(Vec::new(), None).await.unwrap();
        assert_ne!(later.images[0].data, img.data);

        let e = cam.image("image/gif".into(), None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn properties_and_point_cloud() {
        let cam = FakeCamera::new(64, 48, 30.0);
        let p = cam.properties().await.unwrap();
        assert_eq!(p.intrinsics.map(|i| (i.width_px, i.height_px)), Some((64, 48)));
        assert_eq!(p.frame_rate, Some(30.0));
        let img = cam.image(MIME_JPEG.into(), None).await.unwrap();
        let d = image::load_from_memory(&img.data).unwrap();
        assert_eq!((d.width(), d.height()), (64, 48));
        let (mime, pcd) = cam.point_cloud(String::new(), None).await.unwrap();
        assert_eq!(mime, MIME_PCD);
        let text = String::from_utf8(pcd).unwrap();
        assert!(text.starts_with("VERSION .7\n"));
        assert_eq!(text.lines().count(), 10 + 48);
        assert!(cam.point_cloud("application/octet-stream".into(), None).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn video_frames_count_up_and_carry_their_capture_time() {
        let cam = FakeCamera::new(128, 32, 30.0);
        for want in 0..3 {
            let before = crate::frame_code::FrameCode::now_ms();
            let f = cam.video_frame().await.unwrap();
            assert_eq!((f.width, f.height, f.rgb.len()), (128, 32, 128 * 32 * 3));
            let code = crate::frame_code::read(&f.rgb, f.width, f.height).unwrap();
            assert_eq!(code.frame, want);
            assert!(code.capture_ms.wrapping_sub(before) < 1000);
        }
        // The default implementation decodes the still image.
        struct Still(FakeCamera);
        #[async_trait::async_trait]
        impl Camera for Still {
            async fn images(&self, f: Vec<String>, e: Extra) -> Result<Images> {
                self.0.images(f, e).await
            }
            async fn properties(&self) -> Result<CameraProperties> {
                self.0.properties().await
            }
        }
        let f = Still(cam).video_frame().await.unwrap();
        assert_eq!((f.width, f.height), (128, 32));
    }
}
