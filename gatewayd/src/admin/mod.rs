//! The admin site: HTTPS with the gateway's own certificate (TLS 1.3), one
//! password (argon2id, `keyline-gatewayd admin passwd`), sessions and CSRF
//! tokens from `keyline_web`, a login rate limit, and pages that change
//! nothing themselves: every change is a [`Request`] to the same
//! dispatcher the CLI uses ([`Office::dispatch`]). Live parts follow the
//! gateway's event stream through server-sent events.

pub mod access;
pub mod csv;
mod dialplan;
pub mod lan;
pub mod limiter;
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
use crate::server::Shared;
use access::Access;
use limiter::{Failed, Limiter};

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
        .route("/", get(dashboard::<O>))
        .route("/login", get(login_page::<O>).post(login::<O>))
        .route("/logout", post(logout::<O>))
        .route("/stations", get(stations::<O>))
        .route("/stations/approve", post(approve::<O>))
        .route("/stations/deny", post(deny::<O>))
        .route("/stations/revoke", post(revoke::<O>))
        .route("/stations/extension", post(set_extension::<O>))
        .route("/calls", get(calls::<O>))
        .route("/calls/hangup", post(hangup::<O>))
        .route("/cdr", get(cdr::<O>))
        .route("/cdr.csv", get(cdr_csv::<O>))
        .route("/cdr/{id}", get(cdr_one::<O>))
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
        .route("/live/{part}", get(live::<O>))
        .route("/events", get(events::<O>))
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

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    /// The login form's own token (see [`LOGIN_COOKIE`]).
    login_csrf: &'a str,
    notice: Option<&'a str>,
    error: Option<&'a str>,
}

const NO_PASSWORD: &str = "The admin site is off until an admin password is set: on the gateway, run `keyline-gatewayd admin passwd`.";

async fn login_page<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    if st.office.password_hash().await.is_none() {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Log in", NO_PASSWORD);
    }
    login_form(StatusCode::OK, &headers, None)
}

/// The cookie that carries the login form's CSRF token (there is no
/// session yet): the form's hidden field must equal it.
const LOGIN_COOKIE: &str = "keyline_admin_login";

/// The login form's token: the browser's, when it has a well-formed one.
fn login_token(headers: &HeaderMap) -> Option<String> {
    keyline_web::session::cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn login_form(status: StatusCode, headers: &HeaderMap, error: Option<&str>) -> Response {
    let token = login_token(headers).unwrap_or_else(keyline_web::session::random_token);
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/login; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
    );
    let mut r = html(
        status,
        LoginPage {
            title: "Log in",
            here: "login",
            csrf: None,
            login_csrf: &token,
            notice: None,
            error,
        },
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn wait_words(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60);
    if mins <= 1 {
        "a minute".into()
    } else {
        format!("{mins} minutes")
    }
}

async fn login<O: Office>(
    State(st): St<O>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let ip: IpAddr = peer.ip();
    let Some(hash) = st.office.password_hash().await else {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Log in", NO_PASSWORD);
    };
    let token_ok = match (login_token(&headers), form.get("csrf")) {
        (Some(c), Some(f)) => same_token(&c, f),
        _ => false,
    };
    if !token_ok {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is missing its security token (or it is stale). Go back, reload the page and try again.",
        );
    }
    let locked = st
        .limiter
        .lock()
        .ok()
        .and_then(|l| l.locked(Instant::now(), ip));
    if let Some(wait) = locked {
        return login_form(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Some(&format!(
                "Too many wrong passwords from your address: locked out. Try again in {}.",
                wait_words(wait)
            )),
        );
    }
    let pw = form.get("password").cloned().unwrap_or_default();
    let ok = if pw.is_empty() || pw.len() > MAX_PASSWORD {
        false
    } else {
        let Ok(_permit) = st.checks.acquire().await else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Log in",
                "The gateway is stopping.",
            );
        };
        tokio::task::spawn_blocking(move || verify_password(&hash, &pw))
            .await
            .unwrap_or(false)
    };
    if ok {
        if let Ok(mut l) = st.limiter.lock() {
            l.success(ip);
        }
        let (_, cookie) = st.sessions.login("admin");
        tracing::info!("admin site: logged in from {peer}");
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
    }
    st.office.metrics().login_failures.increment(1);
    let failed = st
        .limiter
        .lock()
        .map(|mut l| l.failure(Instant::now(), ip))
        .unwrap_or(Failed::Left(0));
    match failed {
        Failed::Left(n) => login_form(
            StatusCode::UNAUTHORIZED,
            &headers,
            Some(&format!(
                "Wrong password. {n} more {} before a lockout.",
                if n == 1 { "try" } else { "tries" }
            )),
        ),
        Failed::LockedOut(wait) => {
            st.office.metrics().lockouts.increment(1);
            tracing::warn!("admin site: {peer} locked out after wrong passwords");
            login_form(
                StatusCode::TOO_MANY_REQUESTS,
                &headers,
                Some(&format!(
                    "Too many wrong passwords from your address: locked out. Try again in {}.",
                    wait_words(wait)
                )),
            )
        }
    }
}

async fn logout<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = checked_form(&st, &headers, &form) {
        return r;
    }
    let cookie = st.sessions.logout(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

// ---- dashboard and calls ----

/// What the dashboard shows.
pub struct DashData {
    office_number: String,
    uplink: String,
    uplink_error: Option<String>,
    stations_online: usize,
    calls: Vec<CallInfo>,
    disk: String,
    version: String,
    uptime: String,
    csrf: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    d: DashData,
}

#[derive(Template)]
#[template(path = "dashboard_live.html")]
struct DashboardLive {
    d: DashData,
}

#[derive(Template)]
#[template(path = "calls.html")]
struct CallsPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    d: DashData,
}

#[derive(Template)]
#[template(path = "calls_table.html")]
struct CallsLive {
    d: DashData,
}

fn bytes_words(b: u64) -> String {
    const G: f64 = 1024.0 * 1024.0 * 1024.0;
    if b as f64 >= G {
        format!("{:.1} GiB", b as f64 / G)
    } else {
        format!("{} MiB", b / (1024 * 1024))
    }
}

async fn dash_data<O: Office>(st: &AdminState<O>, s: &Session) -> Result<DashData, String> {
    let status = match st.office.dispatch(Request::Status).await? {
        ApiResponse::Status(s) => s,
        _ => return Err("unexpected reply to status".into()),
    };
    let calls = match st.office.dispatch(Request::Calls).await? {
        ApiResponse::Calls { calls } => calls,
        _ => return Err("unexpected reply to calls".into()),
    };
    let dir = &status.directory;
    let up = status.uptime_s;
    Ok(DashData {
        office_number: dir["numbers"][0]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "none".into()),
        uplink: dir["state"].as_str().unwrap_or("off").to_string(),
        uplink_error: dir["last_error"].as_str().map(str::to_string),
        stations_online: status.stations_online,
        calls,
        disk: status
            .disk
            .as_ref()
            .and_then(|d| d["free_bytes"].as_u64())
            .map(bytes_words)
            .unwrap_or_else(|| "-".into()),
        version: status.version.clone(),
        uptime: format!(
            "{}d {}h {}m",
            up / 86_400,
            up % 86_400 / 3600,
            up % 3600 / 60
        ),
        csrf: s.csrf.clone(),
    })
}

fn failed(e: String) -> Response {
    message(StatusCode::SERVICE_UNAVAILABLE, "Not available", &e)
}

async fn dashboard<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match dash_data(&st, &s).await {
        Ok(d) => html(
            StatusCode::OK,
            DashboardPage {
                title: "Dashboard",
                here: "dashboard",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                d,
            },
        ),
        Err(e) => failed(e),
    }
}

async fn calls<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match dash_data(&st, &s).await {
        Ok(d) => html(
            StatusCode::OK,
            CallsPage {
                title: "Live calls",
                here: "calls",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                d,
            },
        ),
        Err(e) => failed(e),
    }
}

async fn hangup<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = checked_form(&st, &headers, &form) {
        return r;
    }
    let Some(call) = field(&form, "call").and_then(|c| c.parse::<u64>().ok()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Hang up",
            "Which call? The form named none.",
        );
    };
    match st.office.dispatch(Request::Hangup { call }).await {
        Ok(_) => Redirect::to(back(&form)).into_response(),
        Err(e) => message(StatusCode::CONFLICT, "Hang up", &e),
    }
}

/// Where a form goes back to: one of the site's own pages.
fn back(form: &HashMap<String, String>) -> &'static str {
    match form.get("back").map(String::as_str) {
        Some("/calls") => "/calls",
        Some("/stations") => "/stations",
        _ => "/",
    }
}

// ---- stations ----

pub struct PendingRow {
    code: String,
    name: String,
    addr: String,
}

pub struct EnrolledRow {
    ext: String,
    name: String,
    online: bool,
    addr: String,
}

pub struct StationsData {
    pending: Vec<PendingRow>,
    enrolled: Vec<EnrolledRow>,
    csrf: String,
    /// A refused Approve or change of extension, shown next to its row's
    /// extension field.
    err: Option<FieldErr>,
}

/// A refusal that belongs next to one row's field.
pub struct FieldErr {
    /// `approve` (a pending row, by pairing code) or `change` (an
    /// enrolled row, by extension).
    form: &'static str,
    key: String,
    msg: String,
    /// What was typed in the field, shown again.
    typed: String,
}

#[derive(Template)]
#[template(path = "stations.html")]
struct StationsPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    s: StationsData,
}

#[derive(Template)]
#[template(path = "stations_live.html")]
struct StationsLive {
    s: StationsData,
}

async fn stations_data<O: Office>(st: &AdminState<O>, s: &Session) -> Result<StationsData, String> {
    let agents = match st.office.dispatch(Request::Agents).await? {
        ApiResponse::Agents { agents, .. } => agents,
        _ => return Err("unexpected reply to agents".into()),
    };
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    Ok(StationsData {
        pending: agents
            .iter()
            .filter(|a| a.state == "pending" && a.waiting)
            .map(|a| PendingRow {
                code: dash(&a.code),
                name: dash(&a.name),
                addr: dash(&a.addr),
            })
            .collect(),
        enrolled: agents
            .iter()
            .filter(|a| a.state == "approved")
            .map(|a| EnrolledRow {
                ext: dash(&a.ext),
                name: dash(&a.name),
                online: a.online,
                addr: dash(&a.addr),
            })
            .collect(),
        csrf: s.csrf.clone(),
        err: None,
    })
}

async fn stations_page<O: Office>(
    st: &AdminState<O>,
    s: &Session,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    stations_page_at(st, s, status, notice, error, None).await
}

async fn stations_page_at<O: Office>(
    st: &AdminState<O>,
    s: &Session,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
    err: Option<FieldErr>,
) -> Response {
    match stations_data(st, s).await {
        Ok(data) => html(
            status,
            StationsPage {
                title: "Stations",
                here: "stations",
                csrf: Some(&s.csrf),
                notice,
                error,
                s: StationsData { err, ..data },
            },
        ),
        Err(e) => failed(e),
    }
}

async fn stations<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    match session_or_login(&st, &headers) {
        Ok(s) => stations_page(&st, &s, StatusCode::OK, None, None).await,
        Err(r) => r,
    }
}

/// Carry out a stations form's request: back to the page with what came
/// of it (an error next to nothing saved).
/// `at`: where a refusal is shown: the form's name, the field naming its
/// row and the field typed in (else as a page notice).
async fn station_change<O: Office>(
    st: &AdminState<O>,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    at: Option<(&'static str, &str, &str)>,
    req: impl FnOnce(&HashMap<String, String>) -> Result<Request, String>,
    done: impl FnOnce(&ApiResponse) -> String,
) -> Response {
    let s = match checked_form(st, headers, form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = match req(form) {
        Ok(r) => st.office.dispatch(r).await,
        Err(e) => Err(e),
    };
    let e = match result {
        Ok(r) => return stations_page(st, &s, StatusCode::OK, Some(&done(&r)), None).await,
        Err(e) => e,
    };
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    match at.and_then(|(f, key, typed)| Some((f, field(form, key)?, typed))) {
        Some((f, key, typed)) => {
            let err = FieldErr {
                form: f,
                key,
                msg: e,
                typed: form.get(typed).cloned().unwrap_or_default(),
            };
            stations_page_at(st, &s, status, None, None, Some(err)).await
        }
        None => stations_page(st, &s, status, None, Some(&e)).await,
    }
}

fn need(form: &HashMap<String, String>, name: &str, what: &str) -> Result<String, String> {
    field(form, name).ok_or_else(|| format!("{what} is missing."))
}

async fn approve<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    station_change(
        &st,
        &headers,
        &form,
        Some(("approve", "code", "ext")),
        |f| {
            Ok(Request::Approve {
                code: need(f, "code", "The pairing code")?,
                ext: field(f, "ext"),
                name: field(f, "name"),
            })
        },
        |r| match r {
            ApiResponse::Approved { ext, .. } => format!("Approved as extension {ext}."),
            _ => "Approved.".into(),
        },
    )
    .await
}

async fn deny<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    station_change(
        &st,
        &headers,
        &form,
        None,
        |f| {
            Ok(Request::Deny {
                code: need(f, "code", "The pairing code")?,
            })
        },
        |_| "The station was denied.".into(),
    )
    .await
}

async fn revoke<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    station_change(
        &st,
        &headers,
        &form,
        None,
        |f| {
            Ok(Request::Revoke {
                ext: need(f, "ext", "The extension")?,
            })
        },
        |r| match r {
            ApiResponse::Revoked { ext, .. } => format!("Extension {ext} was revoked."),
            _ => "Revoked.".into(),
        },
    )
    .await
}

async fn set_extension<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    station_change(
        &st,
        &headers,
        &form,
        Some(("change", "ext", "new_ext")),
        |f| {
            Ok(Request::SetExtension {
                ext: need(f, "ext", "The extension")?,
                new_ext: field(f, "new_ext"),
                name: field(f, "name"),
            })
        },
        |r| match r {
            ApiResponse::Changed { ext, .. } => format!("Saved: the station is extension {ext}."),
            _ => "Saved.".into(),
        },
    )
    .await
}

// ---- live parts and events ----

async fn live<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Path(part): Path<String>,
) -> Response {
    let Some(s) = st.sessions.get(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    };
    let r = match part.as_str() {
        "dashboard" => dash_data(&st, &s)
            .await
            .map(|d| html(StatusCode::OK, DashboardLive { d })),
        "calls" => dash_data(&st, &s)
            .await
            .map(|d| html(StatusCode::OK, CallsLive { d })),
        "stations" => stations_data(&st, &s)
            .await
            .map(|s| html(StatusCode::OK, StationsLive { s })),
        "dialplan" => dialplan::live_part(&st, &s).await,
        _ => return (StatusCode::NOT_FOUND, "no such part\n").into_response(),
    };
    r.unwrap_or_else(failed)
}

async fn events<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    if st.sessions.get(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    }
    keyline_web::sse::from_broadcast(st.office.events()).into_response()
}

// ---- call records ----

/// The call-record search as the form sends it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CdrQuery {
    #[serde(default)]
    number: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl CdrQuery {
    fn filter(&self) -> Result<CdrFilter, String> {
        let day = |s: &str, what: &str| -> Result<Option<i64>, String> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            csv::day_start_ms(s)
                .map(Some)
                .ok_or_else(|| format!("{what}: {s:?} is not a date (YYYY-MM-DD)"))
        };
        Ok(CdrFilter {
            number: Some(self.number.trim().to_string()).filter(|n| !n.is_empty()),
            outcome: Some(self.outcome.trim().to_string()).filter(|o| !o.is_empty()),
            from_ms: day(&self.from, "From")?,
            // Through the end of the "to" day.
            to_ms: day(&self.to, "To")?.map(|t| t + 86_400_000),
            id: None,
        })
    }

    fn query_string(&self) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        format!(
            "number={}&outcome={}&from={}&to={}",
            enc(&self.number),
            enc(&self.outcome),
            enc(&self.from),
            enc(&self.to)
        )
    }
}

#[derive(Template)]
#[template(path = "cdr.html")]
struct CdrPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    q: CdrQuery,
    query: String,
    outcomes: &'static [&'static str],
    rows: Vec<CdrRow>,
}

#[derive(Template)]
#[template(path = "cdr_one.html")]
struct CdrOnePage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    r: CdrRow,
}

/// Most records a search or an export returns.
const CDR_LIMIT: u32 = 10_000;

async fn search<O: Office>(st: &AdminState<O>, filter: CdrFilter) -> Result<Vec<CdrRow>, String> {
    match st
        .office
        .dispatch(Request::Cdr {
            limit: CDR_LIMIT,
            filter,
        })
        .await?
    {
        ApiResponse::Cdr { cdr } => Ok(cdr),
        _ => Err("unexpected reply to cdr".into()),
    }
}

async fn cdr<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Query(q): Query<CdrQuery>,
) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (rows, error) = match q.filter() {
        Ok(f) => match search(&st, f).await {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        Err(e) => (Vec::new(), Some(e)),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let query = q.query_string();
    html(
        status,
        CdrPage {
            title: "Call records",
            here: "cdr",
            csrf: Some(&s.csrf),
            notice: None,
            error: error.as_deref(),
            q,
            query,
            outcomes: crate::metrics::OUTCOMES,
            rows,
        },
    )
}

async fn cdr_csv<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Query(q): Query<CdrQuery>,
) -> Response {
    if let Err(r) = session_or_login(&st, &headers) {
        return r;
    }
    let rows = match q.filter() {
        Ok(f) => search(&st, f).await,
        Err(e) => Err(e),
    };
    match rows {
        Ok(rows) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"calls.csv\""),
                ),
            ],
            csv::csv(&rows),
        )
            .into_response(),
        Err(e) => message(StatusCode::UNPROCESSABLE_ENTITY, "Export CSV", &e),
    }
}

async fn cdr_one<O: Office>(State(st): St<O>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let filter = CdrFilter {
        id: Some(id),
        ..CdrFilter::default()
    };
    match search(&st, filter).await.map(|mut v| v.pop()) {
        Ok(Some(r)) => html(
            StatusCode::OK,
            CdrOnePage {
                title: "Call record",
                here: "cdr",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                r,
            },
        ),
        Ok(None) => message(
            StatusCode::NOT_FOUND,
            "Call record",
            "There is no such call record.",
        ),
        Err(e) => failed(e),
    }
}

// ---- serving ----

/// How often the LAN side's addresses (and the password) are looked at
/// again, besides when `admin passwd` tells the gateway at once.
const RESCAN: Duration = Duration::from_secs(10);

/// What `status` says while there is no password.
pub const OFF_HINT: &str =
    "set a password with `keyline-gatewayd admin passwd` to turn the admin site on";

/// Serve the admin site for the running gateway, if it is on; what
/// `status` says about it is kept in `shared.admin`. The site does not
/// listen until an admin password exists: `admin passwd` on a running
/// gateway wakes it ([`password_set`]); it then listens on the LAN side's
/// addresses ([`lan`]; looked at again every [`RESCAN`], so an address
/// that comes or goes is followed), or on `[admin] listen`.
pub async fn start(shared: Arc<Shared>) -> anyhow::Result<()> {
    let cfg = shared.cfg().admin;
    if !cfg.enabled {
        set_status(
            &shared,
            serde_json::json!({"state": "off", "why": DISABLED_WHY}),
        );
        return Ok(());
    }
    let tls = keyline_web::tls::server_config(vec![shared.id.cert.clone()], shared.id.key())?;
    let app = router(
        Live(shared.clone()),
        Access::new(&cfg.allow),
        Duration::from_secs(cfg.session_idle_mins.saturating_mul(60)),
    );
    let mut site = Site {
        shared: shared.clone(),
        tls,
        app,
        open: HashMap::new(),
        said_off: false,
    };
    site.round().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESCAN) => {}
                _ = site.shared.admin_wake.notified() => {}
            }
            site.round().await;
        }
    });
    Ok(())
}

/// The control request `admin-passwd`: check that `hash` is an argon2id
/// hash, store it, and wake the site; the site's state once it has looked
/// (within a few seconds).
pub async fn set_password(shared: &Arc<Shared>, hash: String) -> Result<serde_json::Value, String> {
    check_hash(&hash)?;
    let db = shared.db.clone();
    tokio::task::spawn_blocking(move || db.set_admin_password(&hash))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("storing the password: {e:#}"))?;
    tracing::info!("admin password set");
    let before = shared.admin_status();
    if let Some(off) = disabled_answer(shared.cfg().admin.enabled, &before) {
        // No site task runs to wake: say so at once.
        return Ok(off);
    }
    shared.admin_wake.notify_one();
    // The site answers at once when it was already on.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = shared.admin_status();
        // It has looked (its state changed), or was on already.
        if now != before || before["state"] == "listening" || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `admin-passwd` answers when the site is disabled in the config
/// (`[admin] enabled = false`, now or when the gateway started): the
/// password is stored, and no site will pick it up until it is enabled.
fn disabled_answer(enabled: bool, status: &serde_json::Value) -> Option<serde_json::Value> {
    let started_disabled = status["why"] == DISABLED_WHY;
    (!enabled || started_disabled).then(|| {
        serde_json::json!({
            "state": "off",
            "why": DISABLED_WHY,
            "note": "the password is stored; the admin site is disabled in the config: set [admin] enabled = true and restart the gateway",
        })
    })
}

/// Why the site is off when the config disables it.
const DISABLED_WHY: &str = "[admin] enabled = false";

/// A stored admin password must be an argon2id hash in PHC form.
pub fn check_hash(hash: &str) -> Result<(), String> {
    use argon2::password_hash::PasswordHash;
    if hash.len() > 512 {
        return Err("the password hash is too long".into());
    }
    match PasswordHash::new(hash) {
        Ok(h) if h.algorithm.as_str() == "argon2id" && h.hash.is_some() => Ok(()),
        Ok(h) => Err(format!(
            "the password hash must be argon2id with a hash, not {}",
            h.algorithm
        )),
        Err(e) => Err(format!("not a password hash (PHC string): {e}")),
    }
}

fn set_status(shared: &Shared, v: serde_json::Value) {
    if let Ok(mut a) = shared.admin.write() {
        *a = v;
    }
}

/// The admin site's listeners, one per address.
struct Site {
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    /// Each address listened on, with what stops its server.
    open: HashMap<SocketAddr, tokio::sync::oneshot::Sender<()>>,
    said_off: bool,
}

impl Site {
    /// Look at the password and the addresses, and listen where the site
    /// should and nowhere else.
    async fn round(&mut self) {
        let db = self.shared.db.clone();
        let read = match tokio::task::spawn_blocking(move || db.admin_password()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        let has_password = match read {
            Ok(p) => p.is_some(),
            Err(e) => {
                // A busy or failing database says nothing about the
                // password: keep listening (or not) as before.
                tracing::warn!(
                    "admin site: reading the admin password: {e}; listeners left as they are"
                );
                let now = unreadable_status(&self.shared.admin_status(), &e);
                set_status(&self.shared, now);
                return;
            }
        };
        if !has_password {
            self.close_all();
            if !self.said_off {
                tracing::info!(
                    "the admin site is off until an admin password is set: run `keyline-gatewayd admin passwd`"
                );
                self.said_off = true;
            }
            set_status(
                &self.shared,
                serde_json::json!({"state": "off", "why": "no admin password yet", "hint": OFF_HINT}),
            );
            return;
        }
        let cfg = self.shared.cfg();
        let (want, side) = match cfg.admin.listen {
            Some(a) => (vec![a], "[admin] listen"),
            None => {
                let toward = directory_ips(&cfg).await;
                let addrs = match tokio::task::spawn_blocking(lan::read).await {
                    Ok(Ok((ifaces, routes))) => {
                        let wan = lan::wan_interfaces(&routes, &toward);
                        let one_armed = lan::one_armed_interfaces(&routes);
                        lan::lan_addresses(&ifaces, &wan, &one_armed)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("admin site: reading the interfaces and routes: {e}; listening on loopback only");
                        vec![IpAddr::from([127, 0, 0, 1])]
                    }
                    Err(e) => {
                        tracing::warn!("admin site: {e}");
                        return;
                    }
                };
                let port = crate::config::DEFAULT_ADMIN_PORT;
                (
                    addrs
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                    "the LAN side",
                )
            }
        };
        self.open.retain(|addr, stop| {
            let keep = want.contains(addr) && !stop.is_closed();
            if !keep {
                tracing::info!("admin site: no longer listening on {addr}");
            }
            keep
        });
        let mut errors = Vec::new();
        for addr in &want {
            if self.open.contains_key(addr) {
                continue;
            }
            match self.listen(*addr).await {
                Ok(local) => tracing::info!("admin site at https://{} ({side})", show(local)),
                Err(e) => {
                    tracing::warn!("admin site: binding {addr}: {e}");
                    errors.push(format!("binding {addr}: {e}"));
                }
            }
        }
        let mut urls: Vec<String> = self
            .open
            .keys()
            .map(|a| format!("https://{}/", show(*a)))
            .collect();
        urls.sort();
        let status = match urls.first() {
            Some(first) => serde_json::json!({
                "state": "listening",
                "url": first,
                "urls": urls,
                "on": side,
                "errors": errors,
            }),
            None => serde_json::json!({
                "state": "off",
                "why": format!("it could not listen: {}", errors.join("; ")),
            }),
        };
        set_status(&self.shared, status);
        self.said_off = false;
    }

    /// Start serving on `addr`; the address actually bound.
    async fn listen(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tls, app) = (self.tls.clone(), self.app.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = keyline_web::serve_https(
                listener,
                tls,
                app,
                keyline_web::Limits::default(),
                shutdown,
            )
            .await
            {
                tracing::warn!("admin site on {local}: {e}");
            }
        });
        // Known by the address asked for (port 0 included), so the next
        // round finds it.
        self.open.insert(addr, stop);
        Ok(local)
    }

    fn close_all(&mut self) {
        for (addr, _stop) in self.open.drain() {
            tracing::info!("admin site: no longer listening on {addr}");
        }
    }
}

/// What `status` says when the password could not be read: the site's
/// state is unchanged (its listeners are kept), and why it was not looked
/// at again.
fn unreadable_status(before: &serde_json::Value, err: &str) -> serde_json::Value {
    let mut now = before.clone();
    let why = format!("the database could not be read: {err}");
    match now.as_object_mut() {
        Some(m) if m.get("state").and_then(|s| s.as_str()) == Some("listening") => {
            m.insert("db_error".into(), why.into());
        }
        Some(m) => {
            m.insert("why".into(), why.into());
            m.remove("hint");
        }
        None => now = serde_json::json!({"state": "off", "why": why}),
    }
    now
}

/// An address as it goes in a URL (`[v6]:port`).
fn show(a: SocketAddr) -> String {
    a.to_string()
}

/// The configured directory's addresses, whose route marks the WAN side
/// (none without a directory, or when its name does not resolve soon).
async fn directory_ips(cfg: &crate::config::Config) -> Vec<IpAddr> {
    let Some(d) = &cfg.directory else {
        return Vec::new();
    };
    let a = d.address.trim();
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return vec![sa.ip()];
    }
    if let Ok(ip) = a.trim_matches(['[', ']']).parse::<IpAddr>() {
        return vec![ip];
    }
    let host = if a.contains(':') {
        a.to_string()
    } else {
        format!("{a}:7480")
    };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(host)).await {
        Ok(Ok(addrs)) => addrs.map(|s| s.ip()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
