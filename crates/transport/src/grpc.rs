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

/// Makes every trailers-only gRPC answer (status in the response headers:
/// how every call that fails before its first message ends) say what
/// happened, in a bounded header: an UNIMPLEMENTED without a message names
/// the method (`unknown method /pkg.Service/Method`; tonic's router and
/// generated servers leave it empty, and the TypeScript SDK shows only the
/// message over WebRTC), any other non-OK status without a message names its
/// code, and a message longer than
/// [`MAX_STATUS_MESSAGE`](tether_wire::grpc::MAX_STATUS_MESSAGE) bytes (it
/// may quote a name the request chose) is cut.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatusHygieneLayer;

impl<S> tower_layer::Layer<S> for StatusHygieneLayer {
    type Service = StatusHygiene<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StatusHygiene { inner }
    }
}

/// The service of [`StatusHygieneLayer`].
#[derive(Clone, Debug)]
pub struct StatusHygiene<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for StatusHygiene<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = StatusHygieneFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let uri = req.uri().clone();
        StatusHygieneFuture { inner: self.inner.call(req), uri }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`StatusHygiene`].
    pub struct StatusHygieneFuture<F> {
        #[pin]
        inner: F,
        uri: http::Uri,
    }
}

impl<F, RB, E> std::future::Future for StatusHygieneFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        explain_status(resp.headers_mut(), this.uri.path());
        std::task::Poll::Ready(Ok(resp))
    }
}

/// Fills in or bounds the `grpc-message` of a non-OK `grpc-status` in
/// `headers` (see [`StatusHygieneLayer`]).
fn explain_status(headers: &mut HeaderMap, method: &str) {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    if code == 0 {
        return;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(tether_wire::grpc::percent_decode)
        .unwrap_or_default();
    let explained = if message.is_empty() {
        let method: String = method.chars().take(200).collect();
        Some(match tonic::Code::from_i32(code) {
            tonic::Code::Unimplemented => format!("unknown method {method}"),
            other => format!("{other:?} from {method}"),
        })
    } else {
        tether_wire::grpc::truncate_status_message(&message)
    };
    if let Some(text) = explained
        && let Ok(v) = http::HeaderValue::from_str(&tether_wire::grpc::percent_encode(&text))
    {
        headers.insert("grpc-message", v);
    }
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

    #[test]
    fn silent_and_long_statuses_are_explained_and_bounded() {
        let status = |code: &str, message: Option<String>| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", code.parse().unwrap());
            if let Some(m) = message {
                h.insert("grpc-message", tether_wire::grpc::percent_encode(&m).parse().unwrap());
            }
            explain_status(&mut h, "/pkg.Svc/Explode");
            status_from_headers(&h).unwrap()
        };
        assert_eq!(status("12", None).message(), "unknown method /pkg.Svc/Explode");
        assert_eq!(status("13", Some(String::new())).message(), "Internal from /pkg.Svc/Explode");
        assert_eq!(status("5", Some("no motor \"m\"".into())).message(), "no motor \"m\"");
        let long = status("5", Some(format!("no motor {:?}", "x".repeat(1 << 20))));
        assert!(long.message().len() < 1024, "{}", long.message().len());
        assert_eq!(long.code(), tonic::Code::NotFound);
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        explain_status(&mut ok, "/pkg.Svc/Fine");
        assert!(ok.get("grpc-message").is_none());
    }
}
