//! Video for tether, without networking: pictures in the encoder's format
//! ([`I420`]), converted from and to packed RGB, scaled, and a real-time VP8
//! [`vp8::Encoder`] and [`vp8::Decoder`] over libvpx.
//!
//! Why VP8 through libvpx: every WebRTC browser decodes VP8 (it is one of
//! the two codecs RFC 7742 makes mandatory, and the one every Chromium
//! build has), libvpx is the reference implementation Chromium itself uses,
//! Debian packages it (`libvpx-dev`), and its real-time mode encodes a
//! 640x480 frame in a few milliseconds on one core.
//!
//! ```
//! use tether_media::{I420, vp8};
//! let rgb = vec![128u8; 64 * 48 * 3];
//! let picture = I420::from_rgb(&rgb, 64, 48).unwrap();
//! let mut encoder = vp8::Encoder::new(vp8::EncoderConfig::new(64, 48, 30)).unwrap();
//! let frames = encoder.encode(&picture, 0, true).unwrap();
//! assert!(frames.iter().any(|f| f.key));
//! let mut decoder = vp8::Decoder::new().unwrap();
//! let decoded = decoder.decode(&frames[0].data).unwrap().expect("a picture");
//! assert_eq!((decoded.width, decoded.height), (64, 48));
//! ```

pub mod ivf;
mod picture;
pub mod vp8;

pub use picture::{I420, PictureError};
