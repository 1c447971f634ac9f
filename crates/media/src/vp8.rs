//! Real-time VP8 through libvpx: an [`Encoder`] that takes [`I420`]
//! pictures and gives encoded frames (keyframes on request, target bitrate
//! changeable between frames) and a [`Decoder`] that gives pictures back.
//!
//! This is the one module of tether that calls C: every `unsafe` block is a
//! libvpx call on a context this module owns, with the pointers it needs
//! kept alive and unmoved (boxed) for the context's life.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use std::ptr;

use vpx_sys as vpx;

use crate::I420;

/// The payload type-independent clock of VP8 over RTP (RFC 7741).
pub const RTP_CLOCK: u32 = 90_000;

/// A libvpx error, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libvpx: {0}")]
pub struct Error(String);

fn check(ctx: *mut vpx::vpx_codec_ctx_t, err: vpx::vpx_codec_err_t, what: &str) -> Result<(), Error> {
    if err == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: vpx_codec_err_to_string returns a static C string for any code;
    // vpx_codec_error_detail takes a context (or null) and returns null or a
    // string that lives as long as the context.
    let text = unsafe {
        let base = CStr::from_ptr(vpx::vpx_codec_err_to_string(err)).to_string_lossy().into_owned();
        let detail = if ctx.is_null() { ptr::null() } else { vpx::vpx_codec_error_detail(ctx) };
        if detail.is_null() { base } else { format!("{base} ({})", CStr::from_ptr(detail).to_string_lossy()) }
    };
    Err(Error(format!("{what}: {text}")))
}

/// How an [`Encoder`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncoderConfig {
    /// Picture width (even).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Frames per second the pictures come at.
    pub fps: u32,
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// A keyframe at least this often, in frames (0: only on request).
    pub keyframe_interval: u32,
}

impl EncoderConfig {
    /// `width` x `height` at `fps`, with a bitrate for that size (about 0.1
    /// bit per pixel per frame, at least 150 kbit/s) and a keyframe every
    /// 10 s.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let fps = fps.clamp(1, 120);
        let bits = u64::from(width) * u64::from(height) * u64::from(fps) / 10 / 1000;
        Self { width, height, fps, bitrate_kbps: bits.clamp(150, 8000) as u32, keyframe_interval: fps * 10 }
    }

    /// Sets [`Self::bitrate_kbps`].
    pub fn with_bitrate_kbps(mut self, kbps: u32) -> Self {
        self.bitrate_kbps = kbps;
        self
    }
}

/// One encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The VP8 frame (what one RTP frame's payloads carry, reassembled).
    pub data: Vec<u8>,
    /// A keyframe (decodable on its own).
    pub key: bool,
    /// The presentation time passed to [`Encoder::encode`].
    pub pts: i64,
}

/// A real-time VP8 encoder (one thread, CBR, error resilient, no lag).
pub struct Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    // libvpx keeps a pointer to the configuration it was initialised with.
    cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    width: u32,
    height: u32,
    /// Y, U and V back to back, as `vpx_img_wrap` wants them.
    buffer: Vec<u8>,
}

// SAFETY: a libvpx context has no thread affinity; `Encoder` is not `Sync`,
// so only one thread uses it at a time, and the pointers it holds point into
// its own boxes.
unsafe impl Send for Encoder {}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bitrate_kbps", &self.cfg.rc_target_bitrate)
            .finish()
    }
}

impl Encoder {
    /// Starts an encoder.
    pub fn new(config: EncoderConfig) -> Result<Self, Error> {
        let (w, h) = (config.width, config.height);
        if w < 2 || h < 2 || !w.is_multiple_of(2) || !h.is_multiple_of(2) || w > 8192 || h > 8192 {
            return Err(Error(format!("bad picture size {w}x{h} (sides must be even, 2..=8192)")));
        }
        // SAFETY: both structs are plain C data for which all-zero is a valid
        // value; libvpx fills the configuration with its defaults.
        let mut cfg: Box<vpx::vpx_codec_enc_cfg_t> = Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        let iface = unsafe { vpx::vpx_codec_vp8_cx() };
        // SAFETY: `cfg` is a valid, writable configuration.
        check(ptr::null_mut(), unsafe { vpx::vpx_codec_enc_config_default(iface, &mut *cfg, 0) }, "default config")?;
        cfg.g_w = w;
        cfg.g_h = h;
        cfg.g_threads = 1;
        cfg.g_timebase = vpx::vpx_rational { num: 1, den: RTP_CLOCK as c_int };
        cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.g_lag_in_frames = 0;
        cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = config.bitrate_kbps.max(30);
        // Never drop a frame to meet the rate: every captured frame is sent.
        cfg.rc_dropframe_thresh = 0;
        cfg.rc_resize_allowed = 0;
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_buf_sz = 1000;
        if config.keyframe_interval == 0 {
            cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_DISABLED;
        } else {
            cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_max_dist = config.keyframe_interval;
        }
        // SAFETY: all-zero is a valid uninitialised context.
        let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: `ctx` and `cfg` are boxed, so the pointers libvpx keeps stay
        // valid until `drop` destroys the context.
        let err =
            unsafe { vpx::vpx_codec_enc_init_ver(&mut *ctx, iface, &*cfg, 0, vpx::VPX_ENCODER_ABI_VERSION as c_int) };
        check(&mut *ctx, err, "encoder init")?;
        let mut encoder = Self { ctx, cfg, width: w, height: h, buffer: Vec::new() };
        // Real-time speed: -6 trades a little quality for about half the CPU
        // of the default real-time speed (what WebRTC uses at this size).
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int, -6)?;
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY as c_int, 0)?;
        Ok(encoder)
    }

    fn control(&mut self, id: c_int, value: c_int) -> Result<(), Error> {
        // SAFETY: an initialised context; these controls take one int.
        let err = unsafe { vpx::vpx_codec_control_(&mut *self.ctx, id, value) };
        check(&mut *self.ctx, err, "encoder control")
    }

    /// Width and height the encoder was made for.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The current target bitrate, kbit/s.
    pub fn bitrate_kbps(&self) -> u32 {
        self.cfg.rc_target_bitrate
    }

    /// Changes the target bitrate from the next frame on.
    pub fn set_bitrate_kbps(&mut self, kbps: u32) -> Result<(), Error> {
        let kbps = kbps.max(30);
        if kbps == self.cfg.rc_target_bitrate {
            return Ok(());
        }
        self.cfg.rc_target_bitrate = kbps;
        // SAFETY: an initialised context and its own (boxed) configuration.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(&mut *self.ctx, err, "bitrate change")
    }

    /// Encodes one picture at `pts` (in [`RTP_CLOCK`] ticks); `key` forces a
    /// keyframe. Returns what the encoder produced (one frame in real-time
    /// mode).
    pub fn encode(&mut self, picture: &I420, pts: i64, key: bool) -> Result<Vec<EncodedFrame>, Error> {
        if (picture.width, picture.height) != (self.width, self.height) {
            return Err(Error(format!(
                "picture is {}x{}, the encoder {}x{}",
                picture.width, picture.height, self.width, self.height
            )));
        }
        let n = (self.width * self.height) as usize;
        if picture.y.len() != n || picture.u.len() != n / 4 || picture.v.len() != n / 4 {
            return Err(Error("picture planes do not match its size".into()));
        }
        self.buffer.clear();
        self.buffer.extend_from_slice(&picture.y);
        self.buffer.extend_from_slice(&picture.u);
        self.buffer.extend_from_slice(&picture.v);
        // SAFETY: all-zero is a valid image header; vpx_img_wrap points it at
        // `buffer`, which holds exactly one I420 picture of this size and
        // outlives the encode call.
        let mut image: vpx::vpx_image_t = unsafe { MaybeUninit::zeroed().assume_init() };
        let wrapped = unsafe {
            vpx::vpx_img_wrap(
                &mut image,
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.width as c_uint,
                self.height as c_uint,
                1,
                self.buffer.as_mut_ptr(),
            )
        };
        if wrapped.is_null() {
            return Err(Error("vpx_img_wrap refused the picture".into()));
        }
        let flags: c_long = if key { vpx::VPX_EFLAG_FORCE_KF as c_long } else { 0 };
        // SAFETY: an initialised context and a wrapped image of its size.
        let err =
            unsafe { vpx::vpx_codec_encode(&mut *self.ctx, &image, pts, 1, flags, vpx::VPX_DL_REALTIME as c_ulong) };
        check(&mut *self.ctx, err, "encode")?;
        let mut out = Vec::new();
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: iterating the context's output; each packet is valid
            // until the next call on the context, and is copied before that.
            let pkt = unsafe { vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            let pkt = unsafe { &*pkt };
            if pkt.kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            // SAFETY: a frame packet's `frame` member is the active one.
            let frame = unsafe { pkt.data.frame };
            let data = if frame.buf.is_null() || frame.sz == 0 {
                Vec::new()
            } else {
                // SAFETY: libvpx gives `sz` readable bytes at `buf`.
                unsafe { std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize) }.to_vec()
            };
            out.push(EncodedFrame { data, key: frame.flags & vpx::VPX_FRAME_IS_KEY != 0, pts: frame.pts });
        }
        Ok(out)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// A VP8 decoder.
pub struct Decoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    _cfg: Box<vpx::vpx_codec_dec_cfg_t>,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Decoder {}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Starts a decoder.
    pub fn new() -> Result<Self, Error> {
        let cfg = Box::new(vpx::vpx_codec_dec_cfg_t { threads: 1, w: 0, h: 0 });
        // SAFETY: all-zero is a valid uninitialised context; both are boxed
        // for the context's life.
        let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        let err = unsafe {
            vpx::vpx_codec_dec_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_dx(),
                &*cfg,
                0,
                vpx::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        check(&mut *ctx, err, "decoder init")?;
        Ok(Self { ctx, _cfg: cfg })
    }

    /// Decodes one frame; `None` when it produced no picture. Corrupt input
    /// is an error, after which the decoder needs a keyframe.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<I420>, Error> {
        if data.is_empty() {
            return Ok(None);
        }
        let len = c_uint::try_from(data.len()).map_err(|_| Error("frame too large".into()))?;
        // SAFETY: an initialised context; libvpx reads `len` bytes of `data`.
        let err = unsafe { vpx::vpx_codec_decode(&mut *self.ctx, data.as_ptr(), len, ptr::null_mut(), 0) };
        check(&mut *self.ctx, err, "decode")?;
        let mut picture = None;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: iterating the context's output; the image is valid
            // until the next decode and is copied before that.
            let img = unsafe { vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            let img = unsafe { &*img };
            if img.fmt != vpx::vpx_img_fmt::VPX_IMG_FMT_I420 {
                return Err(Error(format!("decoded picture format {:?} is not I420", img.fmt)));
            }
            let (w, h) = (img.d_w as usize, img.d_h as usize);
            let copy = |plane: usize, pw: usize, ph: usize| -> Vec<u8> {
                let stride = img.stride[plane] as usize;
                let mut out = Vec::with_capacity(pw * ph);
                for row in 0..ph {
                    // SAFETY: libvpx's plane holds `ph` rows of `stride >= pw` bytes.
                    let line = unsafe { std::slice::from_raw_parts(img.planes[plane].add(row * stride), pw) };
                    out.extend_from_slice(line);
                }
                out
            };
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            // Odd sides (not produced by our encoder) are cropped to even.
            let (ew, eh) = (w & !1, h & !1);
            let mut y = copy(0, w, h);
            let (mut u, mut v) = (copy(1, cw, ch), copy(2, cw, ch));
            if (ew, eh) != (w, h) {
                y = (0..eh).flat_map(|r| y[r * w..r * w + ew].to_vec()).collect();
                u = (0..eh / 2).flat_map(|r| u[r * cw..r * cw + ew / 2].to_vec()).collect();
                v = (0..eh / 2).flat_map(|r| v[r * cw..r * cw + ew / 2].to_vec()).collect();
            }
            picture = Some(I420 { width: ew as u32, height: eh as u32, y, u, v });
        }
        Ok(picture)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32, shift: u32) -> I420 {
        let rgb: Vec<u8> =
            (0..h).flat_map(|y| (0..w).flat_map(move |x| [((x + shift) % 256) as u8, (y % 256) as u8, 100])).collect();
        I420::from_rgb(&rgb, w, h).unwrap()
    }

    #[test]
    fn encodes_and_decodes_a_moving_picture() {
        let (w, h) = (160, 120);
        let mut enc = Encoder::new(EncoderConfig::new(w, h, 30)).unwrap();
        let mut dec = Decoder::new().unwrap();
        let mut keys = 0;
        for i in 0..30 {
            let frames = enc.encode(&pattern(w, h, i * 4), i64::from(i) * 3000, i == 20).unwrap();
            assert_eq!(frames.len(), 1);
            if frames[0].key {
                keys += 1;
            }
            let picture = dec.decode(&frames[0].data).unwrap().expect("one picture per frame");
            assert_eq!((picture.width, picture.height), (w, h));
            // Lossy, but close: mean absolute luma error below 6.
            let want = pattern(w, h, i * 4);
            let err: u64 = picture.y.iter().zip(&want.y).map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
            assert!(err / u64::from(w * h) < 6, "frame {i}: mean error {}", err / u64::from(w * h));
        }
        assert_eq!(keys, 2, "the first frame and the forced one");
        enc.set_bitrate_kbps(200).unwrap();
        assert_eq!(enc.bitrate_kbps(), 200);
        assert!(enc.encode(&pattern(w, h, 0), 99_000, false).is_ok());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Encoder::new(EncoderConfig::new(15, 10, 30)).is_err());
        let mut enc = Encoder::new(EncoderConfig::new(16, 16, 30)).unwrap();
        assert!(enc.encode(&pattern(32, 32, 0), 0, false).is_err());
        let mut dec = Decoder::new().unwrap();
        assert!(dec.decode(&[0xff; 40]).is_err());
        assert_eq!(dec.decode(&[]).unwrap(), None);
    }
}
