//! The one seam for plain HTTP on the gRPC port: requests that are not gRPC,
//! gRPC-Web or a CORS preflight go to a fallback service the caller supplies
//! (the machine hands in its control page). The transport never sees what the
//! fallback serves.

use http::{Method, Request, header};
use tower::ServiceExt;

use super::HttpService;

/// True for requests the gRPC side answers: a `content-type` of
/// `application/grpc…` (gRPC, gRPC-Web binary and text), an `x-grpc-web`
/// header, or a CORS preflight (the CORS layer in front of gRPC-Web answers
/// those).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let grpc_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc")));
    let preflight = req.method() == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    grpc_type || headers.contains_key("x-grpc-web") || preflight
}

/// `grpc` for gRPC traffic ([`is_grpc`]), `fallback` for every other
/// request (e.g. a browser's `GET /`).
pub fn with_fallback(grpc: HttpService, fallback: HttpService) -> HttpService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<tonic::body::Body>| {
        let svc = if is_grpc(&req) { grpc.clone() } else { fallback.clone() };
        svc.oneshot(req)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn classifies_grpc_and_plain_requests() {
        assert!(is_grpc(&req(Method::POST, &[("content-type", "application/grpc")])));
        assert!(is_grpc(&req(Method::POST, &[("content-type", "application/grpc-web+proto")])));
        assert!(is_grpc(&req(Method::POST, &[("content-type", "Application/GRPC-web-text")])));
        assert!(is_grpc(&req(Method::POST, &[("x-grpc-web", "1")])));
        assert!(is_grpc(&req(Method::OPTIONS, &[("access-control-request-method", "POST")])));
        assert!(!is_grpc(&req(Method::GET, &[])));
        assert!(!is_grpc(&req(Method::GET, &[("accept", "text/html")])));
        assert!(!is_grpc(&req(Method::POST, &[("content-type", "application/json")])));
        assert!(!is_grpc(&req(Method::POST, &[("content-type", "application/gr")])));
        assert!(!is_grpc(&req(Method::OPTIONS, &[])));
    }
}
