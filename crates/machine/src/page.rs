//! The control page every machine serves on its own listener: `GET /` (the
//! page, built from `web/` into `assets/` by `web/build.mjs` and embedded in
//! the binary, precompressed as gzip and brotli), and `GET /tether/status`
//! (the connection view's JSON, [`crate::status`]), authenticated exactly
//! like the gRPC calls when the machine has API keys. The transport hands
//! this service every request that is not gRPC, gRPC-Web or a CORS preflight
//! ([`tether_transport::server::with_fallback`]).

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tether_transport::auth::Authority;
use tether_transport::server::{ConnectionHandle, HttpService};

use crate::session::SessionManager;
use crate::status::Status;

/// Path of the connection view's JSON.
pub const STATUS_PATH: &str = "/tether/status";

/// One embedded file in its three encodings.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    identity: &'static [u8],
    gzip: &'static [u8],
    br: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            identity: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file)),
            gzip: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file, ".gz")),
            br: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $file, ".br")),
        }
    };
}

static ASSETS: [Asset; 2] = [
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
];

/// Strong validators of the assets (FNV-1a of the uncompressed bytes).
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let h = a
                .identity
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
            format!("\"{h:016x}\"")
        })
        .collect()
});

/// The page may only talk to its own origin, run its own script (and the
/// SDK's heartbeat worker, a `blob:`), and never be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; worker-src blob:; connect-src 'self'; \
                   img-src 'self' blob: data:; media-src 'self' blob: mediastream:; style-src 'self' 'unsafe-inline'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The control page's URLs for a listener on `local` (every IPv4 address
/// of the host when it listens on all of them).
pub fn urls(local: std::net::SocketAddr, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    crate::webrtc::listen_hosts(local).into_iter().map(|h| format!("{scheme}://{h}/")).collect()
}

/// The page and the status endpoint as one service.
pub fn service(
    status: Status,
    sessions: SessionManager,
    authority: Option<Arc<Authority>>,
    webrtc: Arc<crate::webrtc::WebRtc>,
) -> HttpService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<tonic::body::Body>| {
        let response =
            respond(&req, &Ctx { status: &status, sessions: &sessions, webrtc: &webrtc }, authority.as_deref());
        async move { Ok::<_, Infallible>(response) }
    }))
}

type Resp = Response<tonic::body::Body>;

/// What the status endpoint reads.
struct Ctx<'a> {
    status: &'a Status,
    sessions: &'a SessionManager,
    webrtc: &'a crate::webrtc::WebRtc,
}

fn body(bytes: impl Into<Bytes>) -> tonic::body::Body {
    tonic::body::Body::new(http_body_util::Full::new(bytes.into()))
}

fn plain(code: StatusCode, text: &'static str) -> Resp {
    let mut r = Response::new(body(text));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if code == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

fn respond<B>(req: &Request<B>, ctx: &Ctx<'_>, authority: Option<&Authority>) -> Resp {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here (gRPC needs content-type application/grpc)\n",
        );
    }
    let path = req.uri().path();
    let mut response = if path == STATUS_PATH {
        status_response(req, ctx, authority)
    } else {
        let path = if path == "/index.html" { "/" } else { path };
        match ASSETS.iter().position(|a| a.path == path) {
            Some(i) => asset_response(req, i),
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    let h = response.headers_mut();
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if head {
        *response.body_mut() = tonic::body::Body::empty();
    }
    response
}

/// Picks `br`, then `gzip`, then none, from an `Accept-Encoding` value.
fn pick_encoding(accept: Option<&HeaderValue>) -> Option<&'static str> {
    let accept = accept.and_then(|v| v.to_str().ok())?;
    let accepted = |name: &str| {
        accept.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let zero_q = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
            coding.eq_ignore_ascii_case(name) && !zero_q
        })
    };
    if accepted("br") {
        Some("br")
    } else if accepted("gzip") {
        Some("gzip")
    } else {
        None
    }
}

fn asset_response<B>(req: &Request<B>, i: usize) -> Resp {
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let mut r = if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut r = Response::new(tonic::body::Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let encoding = pick_encoding(req.headers().get(header::ACCEPT_ENCODING));
        let bytes = match encoding {
            Some("br") => asset.br,
            Some(_) => asset.gzip,
            None => asset.identity,
        };
        let mut r = Response::new(body(Bytes::from_static(bytes)));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        if let Some(e) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
        }
        r
    };
    let h = r.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Revalidate every time: a 304 is cheap, and a new binary's page is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.path == "/" {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

fn json_response(code: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = Response::new(body(value.to_string()));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn status_response<B>(req: &Request<B>, ctx: &Ctx<'_>, authority: Option<&Authority>) -> Resp {
    let entity = match authority {
        None => None,
        Some(authority) => {
            let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match authority.check_header(header) {
                Ok(entity) => Some(entity.0),
                Err(e) => {
                    let mut r = json_response(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"error": e.message(), "auth_required": true}),
                    );
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
            }
        }
    };
    if let Some(connection) = req.extensions().get::<ConnectionHandle>() {
        connection.mark_authenticated();
    }
    let own = req.headers().get(tether_wire::metadata::SESSION_ID).and_then(|v| v.to_str().ok());
    let mut body = ctx.status.snapshot(ctx.sessions, entity.as_deref(), own);
    // The names the machine answers WebRTC calls for (empty: WebRTC is off), so the page dials one
    // of them however it was reached.
    body["webrtc_hosts"] = ctx.webrtc.allowed.hosts().into();
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_negotiation() {
        let pick = |s: &'static str| pick_encoding(Some(&HeaderValue::from_static(s)));
        assert_eq!(pick("gzip, deflate, br, zstd"), Some("br"));
        assert_eq!(pick("gzip"), Some("gzip"));
        assert_eq!(pick("br;q=0, gzip;q=0.5"), Some("gzip"));
        assert_eq!(pick("GZIP"), Some("gzip"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("gzip;q=0"), None);
        assert_eq!(pick_encoding(None), None);
    }

    #[test]
    fn embedded_gzip_copies_decompress_to_the_same_bytes() {
        use std::io::Read;
        for a in &ASSETS {
            assert!(!a.identity.is_empty(), "{} is empty", a.path);
            let mut gz = Vec::new();
            flate2::read::GzDecoder::new(a.gzip).read_to_end(&mut gz).unwrap();
            assert!(gz == a.identity, "{}.gz differs from {}", a.path, a.path);
            // The brotli copies are checked by `web/build.mjs --check` (node's zlib decodes them).
        }
    }
}
