//! IVF, the simple container libvpx's tools write: a 32-byte file header,
//! then each frame behind a 12-byte header (size, timestamp). ffplay, VLC
//! and GStreamer open it.

use std::io::{self, Write};

/// Writes VP8 frames into an IVF file.
#[derive(Debug)]
pub struct IvfWriter<W: Write> {
    out: W,
    frames: u32,
}

impl<W: Write> IvfWriter<W> {
    /// Writes the header: `width` x `height`, timestamps in units of
    /// `1/timebase_den` s (frame counts are fixed up by [`Self::finish`]
    /// only for seekable writers; players do not need it).
    pub fn new(mut out: W, width: u16, height: u16, timebase_den: u32) -> io::Result<Self> {
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes()); // version
        h.extend_from_slice(&32u16.to_le_bytes()); // header size
        h.extend_from_slice(b"VP80");
        h.extend_from_slice(&width.to_le_bytes());
        h.extend_from_slice(&height.to_le_bytes());
        h.extend_from_slice(&timebase_den.to_le_bytes()); // rate
        h.extend_from_slice(&1u32.to_le_bytes()); // scale
        h.extend_from_slice(&0u32.to_le_bytes()); // frame count (unknown)
        h.extend_from_slice(&0u32.to_le_bytes()); // unused
        out.write_all(&h)?;
        Ok(Self { out, frames: 0 })
    }

    /// Appends one frame with presentation time `pts`.
    pub fn write_frame(&mut self, frame: &[u8], pts: u64) -> io::Result<()> {
        let size = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame larger than 4 GiB"))?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut w = IvfWriter::new(Vec::new(), 640, 480, 90_000).unwrap();
        w.write_frame(&[1, 2, 3], 3000).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], b"DKIF");
        assert_eq!(&bytes[8..12], b"VP80");
        assert_eq!(u16::from_le_bytes([bytes[12], bytes[13]]), 640);
        assert_eq!(bytes.len(), 32 + 12 + 3);
        assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(bytes[36..44].try_into().unwrap()), 3000);
    }
}
