//! The stylesheet both sites serve at `/assets/keyline.css`.

use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The sites' one stylesheet (light and dark, readable contrast).
pub const CSS: &str = include_str!("../assets/keyline.css");

/// `CSS` as a response, cacheable for an hour.
pub fn css_response() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        CSS,
    )
        .into_response()
}
