//! The gRPC message prefix (one byte of flags, four of big-endian length)
//! and the percent-encoding of `grpc-message`.

/// Decodes a percent-encoded `grpc-message` value (invalid escapes are kept
/// as they are, invalid UTF-8 is replaced).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first gRPC length-prefixed message in `buf`, if complete:
/// `(compressed, message bytes, total frame length)`.
pub fn first_frame(buf: &[u8]) -> Option<(bool, &[u8], usize)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let end = 5usize.checked_add(len)?;
    if buf.len() < end {
        return None;
    }
    Some((buf[0] & 1 == 1, &buf[5..end], end))
}

/// The declared length of the first frame (header only), if the 5-byte prefix is there.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 {
        return None;
    }
    Some(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let buf = [0u8, 0, 0, 0, 2, 10, 0, 99];
        let (c, m, n) = first_frame(&buf).unwrap();
        assert!(!c);
        assert_eq!(m, &[10, 0]);
        assert_eq!(n, 7);
        assert!(first_frame(&buf[..6]).is_none());
        assert_eq!(declared_len(&buf[..5]), Some(2));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("SESSION%20EXPIRED%"), "SESSION EXPIRED%");
    }
}
