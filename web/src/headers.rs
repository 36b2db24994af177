//! Security headers on every response.

use axum::http::header::{self, HeaderValue};
use axum::response::Response;
use tower::util::MapResponseLayer;

/// No inline script or style, nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; media-src 'self'; connect-src 'self'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

/// The layer that adds the headers: `router.layer(headers::layer(hsts))`.
/// `hsts` is for sites with a real certificate (browsers would pin a
/// self-signed one's refusal for a year).
pub fn layer(hsts: bool) -> MapResponseLayer<fn(Response) -> Response> {
    if hsts {
        MapResponseLayer::new(with_hsts as fn(Response) -> Response)
    } else {
        MapResponseLayer::new(without_hsts as fn(Response) -> Response)
    }
}

fn with_hsts(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    without_hsts(response)
}

fn without_hsts(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let html = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
