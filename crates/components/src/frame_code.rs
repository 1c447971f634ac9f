//! The frame code: a fake camera writes its frame number and capture time
//! into the top of every picture, so that any receiver (a browser, our
//! client, a bench) can read them back from decoded pixels and measure
//! frame loss and capture-to-display latency.
//!
//! The band is the top [`BAND_ROWS`] pixel rows, full width `W`, split into
//! 64 blocks side by side: block `i` covers columns
//! `[floor(i·W/64), floor((i+1)·W/64))`, white (255,255,255) for a 1 bit and
//! black for a 0. Blocks 0–31 hold the frame number (u32, most significant
//! bit first); blocks 32–63 the capture time in ms since the Unix epoch
//! modulo 2³², most significant bit first. A reader averages luma
//! (0.299 R + 0.587 G + 0.114 B) over rows 3–6 and the middle half of each
//! block's columns; a bit is 1 when that is at least 128.

use std::time::{SystemTime, UNIX_EPOCH};

/// Rows of the band.
pub const BAND_ROWS: u32 = 16;

/// What a band says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCode {
    /// The frame number.
    pub frame: u32,
    /// Capture time, ms since the Unix epoch modulo 2³².
    pub capture_ms: u32,
}

impl FrameCode {
    /// Milliseconds since the Unix epoch modulo 2³² of `t`.
    pub fn ms_of(t: SystemTime) -> u32 {
        t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u32).unwrap_or(0)
    }

    /// Now, in the capture-time unit.
    pub fn now_ms() -> u32 {
        Self::ms_of(SystemTime::now())
    }

    /// Capture-to-`now_ms` latency in ms (wrapping), valid when both clocks
    /// are the same.
    pub fn age_ms(&self, now_ms: u32) -> u32 {
        now_ms.wrapping_sub(self.capture_ms)
    }

    fn bits(&self) -> u64 {
        (u64::from(self.frame) << 32) | u64::from(self.capture_ms)
    }
}

fn block_columns(i: u32, width: u32) -> (u32, u32) {
    let w = u64::from(width);
    ((u64::from(i) * w / 64) as u32, (u64::from(i + 1) * w / 64) as u32)
}

/// Draws `code` into packed RGB (`width` x `height`, 3 bytes per pixel).
/// Pictures narrower than 64 pixels or shorter than [`BAND_ROWS`] get what
/// fits. Does nothing if the buffer is not that size.
pub fn draw(rgb: &mut [u8], width: u32, height: u32, code: FrameCode) {
    let (w, rows) = (width as usize, height.min(BAND_ROWS) as usize);
    if rgb.len() != w * height as usize * 3 {
        return;
    }
    let bits = code.bits();
    for i in 0..64u32 {
        let value = if (bits >> (63 - i)) & 1 == 1 { 255 } else { 0 };
        let (from, to) = block_columns(i, width);
        for row in 0..rows {
            let start = (row * w + from as usize) * 3;
            let end = (row * w + to as usize) * 3;
            rgb[start..end].fill(value);
        }
    }
}

/// Reads a band from packed RGB; `None` when the picture is too small to
/// hold one (narrower than 64 pixels or shorter than 7 rows) or the buffer
/// is not that size.
pub fn read(rgb: &[u8], width: u32, height: u32) -> Option<FrameCode> {
    let w = width as usize;
    if width < 64 || height < 7 || rgb.len() != w * height as usize * 3 {
        return None;
    }
    let mut bits = 0u64;
    for i in 0..64u32 {
        let (from, to) = block_columns(i, width);
        let quarter = (to - from) / 4;
        let (c0, c1) = (from + quarter, (to - quarter).max(from + quarter + 1));
        let (mut sum, mut n) = (0.0f64, 0u32);
        for row in 3..=6usize {
            for col in c0..c1 {
                let p = (row * w + col as usize) * 3;
                sum += 0.299 * f64::from(rgb[p]) + 0.587 * f64::from(rgb[p + 1]) + 0.114 * f64::from(rgb[p + 2]);
                n += 1;
            }
        }
        bits = (bits << 1) | u64::from(sum / f64::from(n.max(1)) >= 128.0);
    }
    Some(FrameCode { frame: (bits >> 32) as u32, capture_ms: bits as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_odd_widths() {
        for (w, h) in [(64, 16), (640, 480), (333, 20), (1279, 720)] {
            let mut rgb = vec![90u8; (w * h * 3) as usize];
            let code = FrameCode { frame: 0x8000_0001 ^ w, capture_ms: 0xdead_beef };
            draw(&mut rgb, w, h, code);
            assert_eq!(read(&rgb, w, h), Some(code), "{w}x{h}");
            // Nothing below the band is touched.
            assert!(rgb[(w * BAND_ROWS * 3) as usize..].iter().all(|&b| b == 90));
        }
        assert_eq!(read(&[0; 63 * 16 * 3], 63, 16), None);
    }

    #[test]
    fn block_zero_is_the_frame_numbers_top_bit() {
        let (w, h) = (128u32, 16u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        draw(&mut rgb, w, h, FrameCode { frame: 1 << 31, capture_ms: 1 });
        assert_eq!(&rgb[..6], &[255; 6], "block 0 (columns 0..2) is white");
        assert_eq!(rgb[6], 0, "block 1 is black");
        let last = ((w - 1) * 3) as usize;
        assert_eq!(rgb[last], 255, "block 63 (capture time's lowest bit) is white");
        assert_eq!(FrameCode { frame: 0, capture_ms: 10 }.age_ms(25), 15);
        assert_eq!(FrameCode { frame: 0, capture_ms: u32::MAX }.age_ms(4), 5);
    }
}
