//! Pictures in I420 (8-bit Y, then U and V at half resolution each way):
//! what the encoder takes and the decoder gives.

/// Why a picture could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PictureError {
    /// A side is zero, odd or too large.
    #[error("bad picture size {0}x{1} (sides must be even, 2..=8192)")]
    Size(u32, u32),
    /// The buffer does not hold `width * height` pixels.
    #[error("buffer of {got} bytes for a {width}x{height} picture ({want} expected)")]
    Buffer {
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: usize,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// An I420 picture with tightly packed planes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420 {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Luma, `width * height` bytes.
    pub y: Vec<u8>,
    /// Blue-difference chroma, a quarter of that.
    pub u: Vec<u8>,
    /// Red-difference chroma, a quarter of that.
    pub v: Vec<u8>,
}

/// Largest accepted side.
const MAX_SIDE: u32 = 8192;

fn check_size(width: u32, height: u32) -> Result<(), PictureError> {
    if width < 2
        || height < 2
        || !width.is_multiple_of(2)
        || !height.is_multiple_of(2)
        || width > MAX_SIDE
        || height > MAX_SIDE
    {
        return Err(PictureError::Size(width, height));
    }
    Ok(())
}

// BT.601 limited range, in 8-bit fixed point (the coefficients scaled by 256).
fn luma(r: i32, g: i32, b: i32) -> u8 {
    (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16).clamp(0, 255) as u8
}

fn chroma(r: i32, g: i32, b: i32) -> (u8, u8) {
    let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
    let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
    (u.clamp(0, 255) as u8, v.clamp(0, 255) as u8)
}

impl I420 {
    /// A black picture.
    pub fn black(width: u32, height: u32) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let n = (width * height) as usize;
        Ok(Self { width, height, y: vec![16; n], u: vec![128; n / 4], v: vec![128; n / 4] })
    }

    /// Converts packed RGB (3 bytes per pixel, rows top to bottom). Chroma is
    /// the average of each 2x2 block.
    pub fn from_rgb(rgb: &[u8], width: u32, height: u32) -> Result<Self, PictureError> {
        check_size(width, height)?;
        let (w, h) = (width as usize, height as usize);
        if rgb.len() != w * h * 3 {
            return Err(PictureError::Buffer { got: rgb.len(), want: w * h * 3, width, height });
        }
        let mut y = vec![0u8; w * h];
        let mut u = vec![0u8; w * h / 4];
        let mut v = vec![0u8; w * h / 4];
        for (row, out) in y.chunks_exact_mut(w).enumerate() {
            let line = &rgb[row * w * 3..(row + 1) * w * 3];
            for (px, o) in line.chunks_exact(3).zip(out.iter_mut()) {
                *o = luma(i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            }
        }
        for cy in 0..h / 2 {
            for cx in 0..w / 2 {
                let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let i = ((cy * 2 + dy) * w + cx * 2 + dx) * 3;
                    r += i32::from(rgb[i]);
                    g += i32::from(rgb[i + 1]);
                    b += i32::from(rgb[i + 2]);
                }
                let (cu, cv) = chroma(r / 4, g / 4, b / 4);
                u[cy * (w / 2) + cx] = cu;
                v[cy * (w / 2) + cx] = cv;
            }
        }
        Ok(Self { width, height, y, u, v })
    }

    /// Converts to packed RGB.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut rgb = vec![0u8; w * h * 3];
        for row in 0..h {
            for col in 0..w {
                let c = (row / 2) * (w / 2) + col / 2;
                let y = (i32::from(self.y[row * w + col]) - 16) * 298;
                let (u, v) = (i32::from(self.u[c]) - 128, i32::from(self.v[c]) - 128);
                let i = (row * w + col) * 3;
                rgb[i] = ((y + 409 * v + 128) >> 8).clamp(0, 255) as u8;
                rgb[i + 1] = ((y - 100 * u - 208 * v + 128) >> 8).clamp(0, 255) as u8;
                rgb[i + 2] = ((y + 516 * u + 128) >> 8).clamp(0, 255) as u8;
            }
        }
        rgb
    }

    /// This picture scaled to `width` x `height` (nearest neighbour; the
    /// same size is a copy).
    pub fn scaled(&self, width: u32, height: u32) -> Result<Self, PictureError> {
        check_size(width, height)?;
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let plane = |src: &[u8], sw: u32, sh: u32, dw: u32, dh: u32| -> Vec<u8> {
            let mut out = Vec::with_capacity((dw * dh) as usize);
            for y in 0..dh {
                let sy = (u64::from(y) * u64::from(sh) / u64::from(dh)) as usize;
                for x in 0..dw {
                    let sx = (u64::from(x) * u64::from(sw) / u64::from(dw)) as usize;
                    out.push(src[sy * sw as usize + sx]);
                }
            }
            out
        };
        let (sw, sh) = (self.width, self.height);
        Ok(Self {
            width,
            height,
            y: plane(&self.y, sw, sh, width, height),
            u: plane(&self.u, sw / 2, sh / 2, width / 2, height / 2),
            v: plane(&self.v, sw / 2, sh / 2, width / 2, height / 2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_round_trip_is_close() {
        let (w, h) = (16u32, 8u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| if (i / 3) % 2 == 0 { 250 } else { 5 }).collect();
        let flat: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 40, 90]).collect();
        let back = I420::from_rgb(&flat, w, h).unwrap().to_rgb();
        for (a, b) in flat.iter().zip(&back) {
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 3, "{a} vs {b}");
        }
        assert!(I420::from_rgb(&rgb, w, h).is_ok());
        assert_eq!(I420::from_rgb(&rgb, 15, 8).unwrap_err(), PictureError::Size(15, 8));
        assert!(matches!(I420::from_rgb(&rgb[1..], w, h), Err(PictureError::Buffer { .. })));
    }

    #[test]
    fn scaling_keeps_content() {
        let white: Vec<u8> = vec![255; 8 * 8 * 3];
        let p = I420::from_rgb(&white, 8, 8).unwrap().scaled(4, 2).unwrap();
        assert_eq!((p.y.len(), p.u.len()), (8, 2));
        assert!(p.y.iter().all(|&y| y == 235));
    }
}
