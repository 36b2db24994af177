//! What Keyline's web sites share: the directory's public site and the
//! gateway's admin site are both served by this crate's HTTPS loop
//! (TLS 1.3 only, HTTP/1.1 and HTTP/2, header, body and idle deadlines, a
//! connection cap, graceful shutdown), with its in-memory sessions (HttpOnly,
//! Secure, SameSite=Strict cookies, a CSRF token each), its security headers
//! (a Content-Security-Policy that allows no inline script), its choice of
//! language (English or Korean), its stylesheet, and its server-sent events.
//!
//! It owns no pages and no data: each daemon keeps its own routes,
//! templates and store, and decides who may log in.

pub mod assets;
pub mod headers;
mod lang;
mod serve;
pub mod session;
pub mod sse;
pub mod tls;

pub use lang::Lang;
pub use serve::{serve_http, serve_https, Limits};
