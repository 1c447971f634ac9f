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

/// Percent-encodes a `grpc-message` value as gRPC over HTTP/2 asks: every
/// byte outside printable ASCII, and `%` itself, becomes `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The longest status message tether sends, in bytes: messages often quote
/// what the request said (a resource name, a method), and a request must
/// not be able to make a response header of any size.
pub const MAX_STATUS_MESSAGE: usize = 512;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes (at a character
/// boundary), saying how much was cut; `None` when it is short enough.
pub fn truncate_status_message(message: &str) -> Option<String> {
    if message.len() <= MAX_STATUS_MESSAGE {
        return None;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}… ({} more bytes cut)", &message[..end], message.len() - end))
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
    fn percent_coding() {
        assert_eq!(percent_decode("SESSION%20EXPIRED%"), "SESSION EXPIRED%");
        let text = "no motor \"m\u{e9}\" at 100%\n";
        assert_eq!(percent_encode(text), "no motor \"m%C3%A9\" at 100%25%0A");
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_status_message("short"), None);
        let long = "\u{e9}".repeat(MAX_STATUS_MESSAGE);
        let cut = truncate_status_message(&long).unwrap();
        assert!(cut.len() <= MAX_STATUS_MESSAGE + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("({} more bytes cut)", long.len() - MAX_STATUS_MESSAGE)));
    }
}
