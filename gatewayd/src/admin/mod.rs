//! The admin site: HTTPS with the gateway's own certificate (TLS 1.3), one
//! password (argon2id, `keyline-gatewayd admin passwd`), sessions and CSRF
//! tokens from `keyline_web`, a login rate limit, and pages that change
//! nothing themselves: every change is a [`Request`] to the same
//! dispatcher the CLI uses ([`Office::dispatch`]). Live parts follow the
//! gateway's event stream through server-sent events.
//!
//! `site` serves it and keeps the password, `login` the sessions,
//! `dashboard` the dashboard, the calls and the event stream, `stations`
//! the enrolments, `dialplan` and `voicemail` their pages, `cdr` the call
//! records (with `csv`), `access` and `lan` who may connect, `limiter`
//! the login rate limit.

pub mod access;
mod cdr;
pub mod csv;
mod dashboard;
mod dialplan;
pub mod lan;
pub mod limiter;
mod login;
mod site;
mod stations;
mod voicemail;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use keyline_web::session::{Session, Sessions};
use tokio::sync::{broadcast, Semaphore};

use crate::api::{CallInfo, CdrFilter, Request, Response as ApiResponse};
use crate::db::CdrRow;
use crate::metrics::Metrics;
use crate::shared::Shared;
use access::Access;
use limiter::{Failed, Limiter};

pub use cdr::CdrQuery;
pub use dashboard::DashData;
pub use site::{check_hash, set_password, start, OFF_HINT};
pub use stations::{EnrolledRow, FieldErr, PendingRow, StationsData};

/// The gateway as the admin site sees it: the dispatcher, the event
/// stream, the password. A test puts a fake in its place.
pub trait Office: Send + Sync + 'static {
    fn dispatch(&self, req: Request) -> impl Future<Output = Result<ApiResponse, String>> + Send;
    fn events(&self) -> broadcast::Receiver<String>;
    fn password_hash(&self) -> impl Future<Output = Option<String>> + Send;
    fn metrics(&self) -> &Metrics;
}

/// The running gateway.
#[derive(Debug, Clone)]
pub struct Live(pub Arc<Shared>);

impl Office for Live {
    fn dispatch(&self, req: Request) -> impl Future<Output = Result<ApiResponse, String>> + Send {
        let shared = self.0.clone();
        async move { crate::control::dispatch(&shared, req).await }
    }

    fn events(&self) -> broadcast::Receiver<String> {
        self.0.publisher.web()
    }

    fn password_hash(&self) -> impl Future<Output = Option<String>> + Send {
        let db = self.0.db.clone();
        async move {
            tokio::task::spawn_blocking(move || db.admin_password())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

/// Longest password taken, in bytes.
pub const MAX_PASSWORD: usize = 1024;
/// Shortest password `admin passwd` sets.
pub const MIN_PASSWORD: usize = 8;

/// An argon2id hash (PHC string) of a new admin password.
pub fn hash_password(pw: &str) -> anyhow::Result<String> {
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHasher, SaltString};
    if pw.chars().count() < MIN_PASSWORD {
        anyhow::bail!("the password must be at least {MIN_PASSWORD} characters");
    }
    if pw.len() > MAX_PASSWORD {
        anyhow::bail!("the password must be at most {MAX_PASSWORD} bytes");
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

fn verify_password(hash: &str, pw: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(pw.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// What every handler shares.
pub struct AdminState<O: Office> {
    office: O,
    sessions: Sessions,
    limiter: Mutex<Limiter>,
    access: Access,
    /// Password checks running at once, at most.
    checks: Semaphore,
}

type St<O> = State<Arc<AdminState<O>>>;

/// The site's routes, for `office`.
pub fn router<O: Office>(office: O, access: Access, idle: Duration) -> Router {
    let state = Arc::new(AdminState {
        office,
        sessions: Sessions::new("keyline_admin", idle),
        limiter: Mutex::new(Limiter::default()),
        access,
        checks: Semaphore::new(2),
    });
    Router::new()
        .route("/", get(dashboard::dashboard::<O>))
        .route(
            "/login",
            get(login::login_page::<O>).post(login::login::<O>),
        )
        .route("/logout", post(login::logout::<O>))
        .route("/stations", get(stations::stations::<O>))
        .route("/stations/approve", post(stations::approve::<O>))
        .route("/stations/deny", post(stations::deny::<O>))
        .route("/stations/revoke", post(stations::revoke::<O>))
        .route("/stations/extension", post(stations::set_extension::<O>))
        .route("/calls", get(dashboard::calls::<O>))
        .route("/calls/hangup", post(dashboard::hangup::<O>))
        .route("/cdr", get(cdr::cdr::<O>))
        .route("/cdr.csv", get(cdr::cdr_csv::<O>))
        .route("/cdr/{id}", get(cdr::cdr_one::<O>))
        .route("/dialplan", get(dialplan::dialplan::<O>))
        .route("/dialplan/ring-group", post(dialplan::dp_ring_group::<O>))
        .route(
            "/dialplan/ring-group-clear",
            post(dialplan::dp_ring_group_clear::<O>),
        )
        .route("/dialplan/speed-dial", post(dialplan::dp_speed_dial::<O>))
        .route(
            "/dialplan/speed-dial-rm",
            post(dialplan::dp_speed_dial_rm::<O>),
        )
        .route("/dialplan/line", post(dialplan::dp_line::<O>))
        .route("/dialplan/group", post(dialplan::dp_group::<O>))
        .route("/dialplan/group-rm", post(dialplan::dp_group_rm::<O>))
        .route("/dialplan/range", post(dialplan::dp_range::<O>))
        .route("/dialplan/range-clear", post(dialplan::dp_range_clear::<O>))
        .route("/voicemail", get(voicemail::voicemail::<O>))
        .route("/voicemail/delete", post(voicemail::voicemail_delete::<O>))
        .route(
            "/voicemail/greeting",
            post(voicemail::voicemail_greeting::<O>).layer(axum::extract::DefaultBodyLimit::max(
                voicemail::GREETING_UPLOAD_MAX,
            )),
        )
        .route(
            "/voicemail/greeting-clear",
            post(voicemail::voicemail_greeting_clear::<O>),
        )
        .route(
            "/voicemail/{id}/audio",
            get(voicemail::voicemail_audio::<O>),
        )
        .route("/live/{part}", get(dashboard::live::<O>))
        .route("/events", get(dashboard::events::<O>))
        .route(
            "/assets/keyline.css",
            get(|| async { keyline_web::assets::css_response() }),
        )
        .route("/assets/admin.js", get(script))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            only_allowed::<O>,
        ))
        .layer(keyline_web::headers::layer(true))
        .with_state(state)
}

/// Refuse addresses `[admin] allow` does not name (by default: not the LAN).
async fn only_allowed<O: Office>(
    State(st): St<O>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    if st.access.allows(peer.ip()) {
        next.run(req).await
    } else {
        tracing::info!("admin site: refused {peer} (not an allowed network)");
        (
            StatusCode::FORBIDDEN,
            "The admin site is not open to your address; see [admin] allow in the gateway's configuration.\n",
        )
            .into_response()
    }
}

async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        include_str!("../../assets/admin.js"),
    )
        .into_response()
}

fn html(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page could not be drawn: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    body: &'a str,
}

fn message(status: StatusCode, title: &str, body: &str) -> Response {
    html(
        status,
        MessagePage {
            title,
            here: "",
            csrf: None,
            notice: None,
            error: None,
            body,
        },
    )
}

/// The session of a logged-in admin, or where to go instead.
// The error is the handler's own reply, returned at once.
#[allow(clippy::result_large_err)]
fn session_or_login<O: Office>(
    st: &AdminState<O>,
    headers: &HeaderMap,
) -> Result<Session, Response> {
    st.sessions
        .get(headers)
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// A form's fields, after the session and its CSRF token are checked.
#[allow(clippy::result_large_err)]
fn checked_form<O: Office>(
    st: &AdminState<O>,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Session, Response> {
    let s = session_or_login(st, headers)?;
    match form.get("csrf") {
        Some(t) if s.check_csrf(t) => Ok(s),
        _ => Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is missing its security token (or it is stale). Go back, reload the page and try again.",
        )),
    }
}

fn field(form: &HashMap<String, String>, name: &str) -> Option<String> {
    form.get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn failed(e: String) -> Response {
    message(StatusCode::SERVICE_UNAVAILABLE, "Not available", &e)
}

/// Where a form goes back to: one of the site's own pages.
fn back(form: &HashMap<String, String>) -> &'static str {
    match form.get("back").map(String::as_str) {
        Some("/calls") => "/calls",
        Some("/stations") => "/stations",
        _ => "/",
    }
}

fn need(form: &HashMap<String, String>, name: &str, what: &str) -> Result<String, String> {
    field(form, name).ok_or_else(|| format!("{what} is missing."))
}

#[cfg(test)]
mod tests;
