//! Small helpers for working with gRPC at the HTTP level.

use http::HeaderMap;

/// Reads `grpc-status` (and the percent-decoded `grpc-message`) from a header
/// map: response headers of a trailers-only response, or trailers.
pub fn status_from_headers(headers: &HeaderMap) -> Option<tonic::Status> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(percent_decode).unwrap_or_default();
    Some(tonic::Status::new(tonic::Code::from_i32(code), message))
}

fn percent_decode(s: &str) -> String {
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
    fn parses_status_and_decodes_message() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "3".parse().unwrap());
        h.insert("grpc-message", "SESSION%20EXPIRED%".parse().unwrap());
        let s = status_from_headers(&h).unwrap();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "SESSION EXPIRED%");
    }

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
}
