//! gRPC at the HTTP level: the status of a response from its headers. The
//! message prefix itself is in [`tether_wire::grpc`].

use http::HeaderMap;
pub use tether_wire::grpc::{declared_len, first_frame};

/// Reads `grpc-status` (and the percent-decoded `grpc-message`) from a header
/// map: response headers of a trailers-only response, or trailers.
pub fn status_from_headers(headers: &HeaderMap) -> Option<tonic::Status> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(tether_wire::grpc::percent_decode)
        .unwrap_or_default();
    Some(tonic::Status::new(tonic::Code::from_i32(code), message))
}

/// The tonic status of a refusal of the sans-IO layer.
pub fn to_status(s: tether_wire::Status) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(s.code() as i32), s.message())
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
}
