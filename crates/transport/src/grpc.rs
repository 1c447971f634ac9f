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

/// Makes every gRPC answer's status say what happened, in a bounded header —
/// a trailers-only answer (status in the response headers: how every call
/// that fails before its first message ends), and the trailers of a
/// server-streaming method's response (a stream may fail after messages):
/// an UNIMPLEMENTED without a message names
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

impl<S, B> tower_service::Service<http::Request<B>> for StatusHygiene<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
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

impl<F, E> std::future::Future for StatusHygieneFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        let method = this.uri.path();
        if explain_status(resp.headers_mut(), method) {
            return std::task::Poll::Ready(Ok(resp));
        }
        // Only a server stream can end in an error after messages (a unary
        // error is trailers-only): only its body is wrapped, so other calls
        // cost no allocation.
        if tether_proto::safety::method(method).is_none_or(|m| m.server_streaming) {
            let method = method.to_owned();
            resp = resp.map(|body| tonic::body::Body::new(CheckedTrailers { inner: body, method }));
        }
        std::task::Poll::Ready(Ok(resp))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers go through [`explain_status`].
    struct CheckedTrailers {
        #[pin]
        inner: tonic::body::Body,
        method: String,
    }
}

impl http_body::Body for CheckedTrailers {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        std::task::Poll::Ready(frame.map(|f| {
            f.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    explain_status(&mut trailers, this.method);
                    http_body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Fills in or bounds the `grpc-message` of a non-OK `grpc-status` in
/// `headers` (see [`StatusHygieneLayer`]); false when `headers` carry no
/// status at all.
fn explain_status(headers: &mut HeaderMap, method: &str) -> bool {
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok())
    else {
        return false;
    };
    if code == 0 {
        return true;
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
    true
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

    /// A server stream that fails after a message: its trailers are
    /// explained and bounded too.
    #[tokio::test]
    async fn a_streams_trailers_are_explained_and_bounded() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let respond = |message: Option<String>| {
            tower::service_fn(move |_req: http::Request<()>| {
                let message = message.clone();
                async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "13".parse().unwrap());
                    if let Some(m) = message {
                        trailers.insert("grpc-message", tether_wire::grpc::percent_encode(&m).parse().unwrap());
                    }
                    let frames = vec![
                        Ok::<_, tonic::Status>(http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                        Ok(http_body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(body)))
                }
            })
        };
        let trailers_of = |svc, path: &'static str| async move {
            let layered = tower_layer::Layer::layer(&StatusHygieneLayer, svc);
            let resp = layered.oneshot(http::Request::post(path).body(()).unwrap()).await.unwrap();
            let collected = resp.into_body().collect().await.unwrap();
            status_from_headers(collected.trailers().unwrap()).unwrap()
        };
        let s = trailers_of(respond(None), "/nope.v1.Stream/Watch").await;
        assert_eq!(s.message(), "Internal from /nope.v1.Stream/Watch");
        let long = format!("camera {:?} went away", "c".repeat(1 << 20));
        let s = trailers_of(respond(Some(long)), "/viam.robot.v1.RobotService/StreamStatus").await;
        assert!(s.message().len() < 1024, "{}", s.message().len());
        // A unary method's body is passed through as it is.
        let s = trailers_of(respond(None), "/viam.robot.v1.RobotService/GetVersion").await;
        assert_eq!(s.message(), "");
    }
}
