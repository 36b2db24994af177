//! The directory's web site (issue 19): sign up for an ID and a number,
//! set up the phone software, and manage the account (password, ID,
//! devices, forwarding, mail) from a browser. Served over HTTPS by the
//! directory's own process from the same store and the same hub as the
//! QUIC protocol, so a rule set here is what the next call follows, a
//! password changed here is refused at the next terminal login, and a
//! device signed out here loses its binding at once.
//!
//! HTTPS, sessions, CSRF tokens, security headers and the language come
//! from `keyline-web`; pages are askama templates (auto-escaped) in
//! `directory/templates/`, English and Korean ([`text`]).

mod calls;
#[cfg(test)]
mod tests;
mod text;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use askama::Template;
use axum::extract::{ConnectInfo, Path as UrlPath, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use keyline_proto::dir::{ForwardRule, ForwardWhen, MailId};
use keyline_proto::number;
use keyline_web::session::{cookie_value, random_token, Session, Sessions};
use keyline_web::Lang;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::text::{pick, Text};
use crate::auth;
use crate::config::Signup;
use crate::server::{query_hub, Device, Event, Query, Shared};
use crate::store::{self, NumberStatus, StoreError};

/// The cookie of a logged-in browser.
const SESSION_COOKIE: &str = "kl_session";
/// The cookie that carries the CSRF token of the forms shown before
/// logging in (sign up, log in): the form must carry the same value.
const FORM_COOKIE: &str = "kl_form";
/// Longest text message shown in the inbox.
const TEXT_SHOWN: usize = 4096;
/// Addresses the availability check remembers.
const CHECKERS: usize = 10_000;

/// What the handlers share.
pub(crate) struct Web {
    shared: Arc<Shared>,
    sessions: Sessions,
    /// Availability checks per address in the current minute.
    checks: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// SHA-256 of offered packages by path, with the size and modification
    /// time they were computed for.
    digests: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

type App = Arc<Web>;

impl Web {
    pub(crate) fn new(shared: Arc<Shared>) -> Web {
        let idle = Duration::from_secs(shared.cfg().web.session_idle_mins * 60);
        Web {
            shared,
            sessions: Sessions::new(SESSION_COOKIE, idle),
            checks: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
        }
    }
}

/// Start the site if the configuration asks for it; the task ends once
/// `stop` turns true and requests in flight are done.
pub(crate) async fn start(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>> {
    let cfg = shared.cfg();
    if !cfg.web.enabled {
        return Ok(None);
    }
    let addr = cfg.web.listen_addr(cfg.listen);
    let (certs, key, hsts) = match (&cfg.web.cert, &cfg.web.key) {
        (Some(c), Some(k)) => {
            let (certs, key) = keyline_web::tls::load_pem(c, k)?;
            (certs, key, true)
        }
        _ => (vec![shared.id.cert.clone()], shared.id.key(), false),
    };
    let tls = keyline_web::tls::server_config(certs, key)?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // Only the default address may be busy without stopping the
        // directory: calls matter more than the site.
        Err(e) if cfg.web.listen.is_none() => {
            tracing::warn!(
                "web site: TCP {addr} is not free ({e}); serving no site (set [web] listen)"
            );
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("web site: binding TCP {addr}")),
    };
    let local = listener.local_addr()?;
    let _ = shared.web_addr.set(local);
    let app = router(Arc::new(Web::new(shared)), hsts);
    let mut stop = stop;
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tracing::info!("web site on https://{local}/");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) =
            keyline_web::serve_https(listener, tls, app, keyline_web::Limits::default(), shutdown)
                .await
        {
            tracing::warn!("web site stopped: {e}");
        }
    })))
}

/// Every page and form of the site.
pub(crate) fn router(web: App, hsts: bool) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/lang/{code}", get(set_lang))
        .route("/signup", get(signup_page).post(signup))
        .route("/signup/check", get(check))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/setup", get(setup))
        .route("/setup/keyline-terminal.toml", get(config_file))
        .route("/packages/{name}", get(package))
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/account/id", post(change_id))
        .route("/account/forward", post(set_forward))
        .route("/account/calls", get(calls::calls))
        .route("/account/dnd", post(set_dnd))
        .route("/account/numbers", post(add_number))
        .route("/account/numbers/remove", post(remove_number))
        .route("/account/devices/{sid}/signout", post(sign_out_device))
        .route("/account/mail/{id}", get(mail_body))
        .route("/account/mail/{id}/delete", post(delete_mail))
        .route("/account/delete", post(delete_account))
        .route("/admin", get(admin))
        .route("/admin/invites", post(create_invite))
        .route(
            "/assets/keyline.css",
            get(|| async { keyline_web::assets::css_response() }),
        )
        .route("/assets/signup.js", get(signup_js))
        .fallback(not_found_handler)
        .layer(keyline_web::headers::layer(hsts))
        .with_state(web)
}

// ---------------------------------------------------------------------
// Pages and their common parts

/// What the layout shows on every page.
pub(crate) struct Page {
    t: &'static Text,
    lang: &'static str,
    title: String,
    user: Option<String>,
    csrf: String,
    admin: bool,
    here: String,
    notice: Option<String>,
}

impl Page {
    fn new(lang: Lang, title: &str, session: Option<&Session>, here: &str) -> Page {
        Page {
            t: Text::of(lang),
            lang: lang.code(),
            title: title.to_string(),
            user: session.map(|s| s.user.clone()),
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
            admin: false,
            here: here.to_string(),
            notice: None,
        }
    }
}

fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!("web: rendering a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be shown",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomeT {
    p: Page,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageT {
    p: Page,
    text: String,
}

fn message(lang: Lang, status: StatusCode, title: &str, text: &str) -> Response {
    render(
        status,
        &MessageT {
            p: Page::new(lang, title, None, "/"),
            text: text.to_string(),
        },
    )
}

fn not_found(lang: Lang) -> Response {
    let t = Text::of(lang);
    message(lang, StatusCode::NOT_FOUND, t.not_found, t.not_found_text)
}

fn forbidden(lang: Lang) -> Response {
    let t = Text::of(lang);
    message(lang, StatusCode::FORBIDDEN, t.forbidden, t.forbidden_text)
}

fn failed(lang: Lang, what: impl std::fmt::Display) -> Response {
    tracing::warn!("web: {what}");
    let t = Text::of(lang);
    message(
        lang,
        StatusCode::INTERNAL_SERVER_ERROR,
        t.error_title,
        &what.to_string(),
    )
}

/// A new password that could not be hashed: busy (503, try again) or a
/// failure.
fn hashing_failed(lang: Lang, e: &anyhow::Error) -> Response {
    if let Some(crate::hashing::Refused::Busy) = e.downcast_ref::<crate::hashing::Refused>() {
        let t = Text::of(lang);
        return message(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            t.error_title,
            &pick(
                lang,
                "The service is busy. Please try again in a moment; nothing was changed.",
                "서비스가 바쁩니다. 잠시 후 다시 시도해 주세요. 아무것도 바뀌지 않았습니다.",
            ),
        );
    }
    failed(lang, format!("{e:#}"))
}

async fn not_found_handler(headers: HeaderMap) -> Response {
    not_found(Lang::from_headers(&headers))
}

async fn signup_js() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        include_str!("../../assets/signup.js"),
    )
        .into_response()
}

async fn home(State(web): State<App>, headers: HeaderMap) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = web.sessions.get(&headers);
    let mut p = Page::new(lang, Text::of(lang).site, session.as_ref(), "/");
    p.admin = is_admin(&web, session.as_ref()).await;
    render(StatusCode::OK, &HomeT { p })
}

#[derive(Deserialize)]
struct Back {
    #[serde(default)]
    back: String,
}

/// The language switch: a cookie, then back where the person was.
async fn set_lang(UrlPath(code): UrlPath<String>, UrlQuery(q): UrlQuery<Back>) -> Response {
    let Some(lang) = Lang::from_code(&code) else {
        return not_found(Lang::En);
    };
    let back = if q.back.starts_with('/') && !q.back.starts_with("//") && !q.back.contains('\\') {
        q.back
    } else {
        "/".to_string()
    };
    ([(header::SET_COOKIE, lang.cookie())], Redirect::to(&back)).into_response()
}

async fn is_admin(web: &Web, session: Option<&Session>) -> bool {
    let Some(s) = session else { return false };
    let user = s.user.clone();
    matches!(
        store::blocking(&web.shared.store, move |st| st.account(&user)).await,
        Ok(Some(a)) if a.admin
    )
}

/// The CSRF token of the forms shown before logging in, and the cookie
/// to set when the browser has none yet.
fn form_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(v) = cookie_value(headers, FORM_COOKIE).filter(|v| v.len() == 64) {
        return (v.to_string(), None);
    }
    let token = random_token();
    let cookie = HeaderValue::from_str(&format!(
        "{FORM_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok();
    (token, cookie)
}

fn form_token_ok(headers: &HeaderMap, sent: &str) -> bool {
    match cookie_value(headers, FORM_COOKIE) {
        Some(v) if v.len() == 64 => {
            v.len() == sent.len()
                && v.bytes()
                    .zip(sent.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        _ => false,
    }
}

fn with_cookie(cookie: Option<HeaderValue>, resp: Response) -> Response {
    let mut resp = resp;
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The logged-in session of a request, for a page (`csrf: None`) or a
/// form (its token must match); otherwise the response to give.
// The refusal is the response itself, built once per refused request.
#[allow(clippy::result_large_err)]
fn authed(web: &Web, headers: &HeaderMap, csrf: Option<&str>) -> Result<Session, Response> {
    let lang = Lang::from_headers(headers);
    let Some(session) = web.sessions.get(headers) else {
        return Err(match csrf {
            None => Redirect::to("/login").into_response(),
            Some(_) => forbidden(lang),
        });
    };
    if let Some(token) = csrf {
        if !session.check_csrf(token) {
            return Err(forbidden(lang));
        }
    }
    Ok(session)
}

fn clip(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

// ---------------------------------------------------------------------
// Sign up

#[derive(Template)]
#[template(path = "signup.html")]
struct SignupT {
    p: Page,
    mode: &'static str,
    csrf: String,
    id: String,
    number: String,
    invite: String,
    form_error: Option<String>,
    id_error: Option<String>,
    password_error: Option<String>,
    repeat_error: Option<String>,
    number_error: Option<String>,
    invite_error: Option<String>,
}

impl SignupT {
    fn new(web: &Web, lang: Lang, csrf: String) -> SignupT {
        SignupT {
            p: Page::new(lang, Text::of(lang).sign_up, None, "/signup"),
            mode: web.shared.cfg().web.signup.as_str(),
            csrf,
            id: String::new(),
            number: String::new(),
            invite: String::new(),
            form_error: None,
            id_error: None,
            password_error: None,
            repeat_error: None,
            number_error: None,
            invite_error: None,
        }
    }

    fn has_errors(&self) -> bool {
        self.form_error.is_some()
            || self.id_error.is_some()
            || self.password_error.is_some()
            || self.repeat_error.is_some()
            || self.number_error.is_some()
            || self.invite_error.is_some()
    }
}

async fn signup_page(State(web): State<App>, headers: HeaderMap) -> Response {
    let lang = Lang::from_headers(&headers);
    let (token, cookie) = form_token(&headers);
    with_cookie(
        cookie,
        render(StatusCode::OK, &SignupT::new(&web, lang, token)),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SignupForm {
    csrf: String,
    id: String,
    password: String,
    repeat: String,
    number: String,
    invite: String,
}

/// Why `id` cannot be taken, if it cannot.
async fn id_problem(web: &Web, lang: Lang, id: &str) -> Result<Option<String>, String> {
    if id.is_empty() {
        return Ok(Some(pick(lang, "Choose an ID.", "ID를 고르세요.")));
    }
    if id.chars().count() > auth::MAX_ACCOUNT {
        return Ok(Some(pick(
            lang,
            "The ID is too long (at most 64 characters).",
            "ID가 너무 깁니다 (64자 이하).",
        )));
    }
    if auth::check_account_id(id).is_err() {
        return Ok(Some(pick(
            lang,
            "The ID may not contain spaces or control characters.",
            "ID에는 공백이나 제어 문자를 쓸 수 없습니다.",
        )));
    }
    let id2 = id.to_string();
    match store::blocking(&web.shared.store, move |s| s.account(&id2)).await {
        Ok(Some(_)) => Ok(Some(pick(
            lang,
            "This ID is taken.",
            "이미 쓰이는 ID입니다.",
        ))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The canonical form of `n` if it can be taken, or why not.
async fn number_problem(web: &Web, lang: Lang, n: &str) -> Result<Result<String, String>, String> {
    if n.trim().is_empty() {
        return Ok(Err(pick(lang, "Choose a number.", "번호를 고르세요.")));
    }
    if n.len() > number::MAX_INPUT_BYTES {
        return Ok(Err(pick(
            lang,
            "The number is too long.",
            "번호가 너무 깁니다.",
        )));
    }
    let canon = match number::canonicalize(n) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(match lang {
                Lang::Ko => format!("쓸 수 없는 번호입니다: {e}"),
                Lang::En => format!("This number cannot be used: {e}"),
            }))
        }
    };
    let c2 = canon.clone();
    let now = store::now_ms();
    match store::blocking(&web.shared.store, move |s| s.number_status(&c2, now)).await {
        Ok(NumberStatus::Free) => Ok(Ok(canon)),
        Ok(NumberStatus::Taken) => Ok(Err(match lang {
            Lang::Ko => format!("{canon} 번호는 이미 쓰이고 있습니다."),
            Lang::En => format!("The number {canon} is taken."),
        })),
        Ok(NumberStatus::Held { .. }) => Ok(Err(match lang {
            Lang::Ko => format!("{canon} 번호는 지금 쓸 수 없습니다 (삭제된 계정의 번호)."),
            Lang::En => {
                format!("The number {canon} belonged to a deleted account and cannot be taken yet.")
            }
        })),
        Err(e) => Err(e.to_string()),
    }
}

async fn signup(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignupForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    if !form_token_ok(&headers, &f.csrf) {
        return forbidden(lang);
    }
    let mode = web.shared.cfg().web.signup;
    let mut page = SignupT::new(&web, lang, f.csrf.clone());
    if mode == Signup::Closed {
        return render(StatusCode::FORBIDDEN, &page);
    }
    page.id = clip(&f.id, auth::MAX_ACCOUNT + 8);
    page.number = clip(&f.number, 128);
    page.invite = clip(&f.invite, 64);
    match id_problem(&web, lang, &f.id).await {
        Ok(p) => page.id_error = p,
        Err(e) => return failed(lang, e),
    }
    if f.password.len() > auth::MAX_PASSWORD {
        page.password_error = Some(pick(
            lang,
            "The password is too long (at most 1024 bytes).",
            "비밀번호가 너무 깁니다 (1024바이트 이하).",
        ));
    } else if auth::check_new_password(&f.password).is_err() {
        page.password_error = Some(pick(
            lang,
            "The password must have at least 8 characters and no control characters.",
            "비밀번호는 8자 이상이어야 하고 제어 문자를 쓸 수 없습니다.",
        ));
    }
    if f.repeat != f.password {
        page.repeat_error = Some(pick(
            lang,
            "The passwords do not match.",
            "비밀번호가 서로 다릅니다.",
        ));
    }
    let canon = match number_problem(&web, lang, &f.number).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(m)) => {
            page.number_error = Some(m);
            None
        }
        Err(e) => return failed(lang, e),
    };
    let invite = if mode == Signup::Invite {
        let code = auth::normalise_invite_code(&f.invite);
        if code.is_empty() {
            page.invite_error = Some(pick(
                lang,
                "Enter your invite code.",
                "초대 코드를 넣으세요.",
            ));
        }
        Some(auth::token_hash(&code))
    } else {
        None
    };
    let Some(canon) = canon.filter(|_| !page.has_errors()) else {
        return render(StatusCode::UNPROCESSABLE_ENTITY, &page);
    };
    // Hashed on the same pool as every password check, below the event
    // loop's priority, so a flood of sign-ups cannot take the CPU the
    // registrations need.
    let hash = match web.shared.hash_password(f.password.clone()).await {
        Ok(h) => h,
        Err(e) => return hashing_failed(lang, &e),
    };
    let (id, numbers) = (f.id.clone(), vec![canon]);
    let created = store::blocking(&web.shared.store, move |s| {
        s.sign_up(&id, &hash, &numbers, store::now_ms(), invite.as_deref())
    })
    .await;
    match created {
        Ok(()) => {}
        Err(StoreError::Exists(m)) if m.starts_with("account") => {
            page.id_error = Some(pick(lang, "This ID is taken.", "이미 쓰이는 ID입니다."));
            return render(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
        Err(StoreError::Exists(_)) => {
            page.number_error = Some(pick(
                lang,
                "This number is taken.",
                "이미 쓰이는 번호입니다.",
            ));
            return render(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
        Err(StoreError::Invalid(_)) if mode == Signup::Invite => {
            page.invite_error = Some(pick(
                lang,
                "The invite code is unknown or already used.",
                "알 수 없거나 이미 쓴 초대 코드입니다.",
            ));
            return render(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
        Err(e) => return failed(lang, e),
    }
    tracing::info!("web: account {} signed up from {}", f.id, peer.ip());
    // The hub learns the number before the new phone registers it.
    reload(&web.shared, None).await;
    let (_, cookie) = web.sessions.login(&f.id);
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/setup?welcome=1"),
    )
        .into_response()
}

/// Have the hub re-read accounts and numbers, ending `logout`'s
/// sessions; returns once it has.
async fn reload(shared: &Shared, logout: Option<String>) {
    let (tx, rx) = oneshot::channel();
    if shared
        .hub
        .send(Event::Reload {
            logout,
            keep: None,
            done: Some(tx),
        })
        .await
        .is_ok()
    {
        let _ = rx.await;
    }
}

#[derive(Deserialize)]
struct CheckQuery {
    id: Option<String>,
    number: Option<String>,
}

#[derive(Serialize)]
struct Verdict {
    ok: bool,
    message: String,
}

impl Web {
    /// Whether `ip` may make one more availability check now.
    fn may_check(&self, ip: IpAddr) -> bool {
        let per_minute = self.shared.cfg().web.checks_per_minute;
        let now = Instant::now();
        let mut m = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CHECKERS {
            m.retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
            if m.len() >= CHECKERS {
                return false;
            }
        }
        let e = m.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        if e.1 >= per_minute {
            return false;
        }
        e.1 += 1;
        true
    }
}

/// The availability check the sign-up page makes as the person types.
async fn check(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    UrlQuery(q): UrlQuery<CheckQuery>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    if !web.may_check(peer.ip()) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from_static("60"))],
            Json(json!({"error": pick(lang, "Too many checks; wait a minute.", "확인이 너무 많습니다. 잠시 기다리세요.")})),
        )
            .into_response();
    }
    let mut out = json!({"id": null, "number": null});
    if let Some(id) = q.id.as_deref() {
        match id_problem(&web, lang, id).await {
            Ok(p) => {
                out["id"] = json!(Verdict {
                    ok: p.is_none(),
                    message: p.unwrap_or_else(|| pick(
                        lang,
                        "This ID is free.",
                        "쓸 수 있는 ID입니다."
                    )),
                })
            }
            Err(e) => return failed(lang, e),
        }
    }
    if let Some(n) = q.number.as_deref() {
        match number_problem(&web, lang, n).await {
            Ok(Ok(c)) => {
                out["number"] = json!(Verdict {
                    ok: true,
                    message: match lang {
                        Lang::Ko => format!("{c} 번호를 쓸 수 있습니다."),
                        Lang::En => format!("The number {c} is free."),
                    },
                })
            }
            Ok(Err(m)) => {
                out["number"] = json!(Verdict {
                    ok: false,
                    message: m
                })
            }
            Err(e) => return failed(lang, e),
        }
    }
    Json(out).into_response()
}

// ---------------------------------------------------------------------
// Log in and out

#[derive(Template)]
#[template(path = "login.html")]
struct LoginT {
    p: Page,
    csrf: String,
    id: String,
    error: Option<String>,
}

async fn login_page(headers: HeaderMap) -> Response {
    let lang = Lang::from_headers(&headers);
    let (token, cookie) = form_token(&headers);
    with_cookie(
        cookie,
        render(
            StatusCode::OK,
            &LoginT {
                p: Page::new(lang, Text::of(lang).log_in, None, "/login"),
                csrf: token,
                id: String::new(),
                error: None,
            },
        ),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    csrf: String,
    id: String,
    password: String,
}

/// "Try again in N s", in the page's language.
fn locked_message(lang: Lang, retry: Duration) -> String {
    let secs = retry.as_secs().max(1);
    match lang {
        Lang::Ko => format!("실패한 시도가 너무 많습니다. {secs}초 후에 다시 시도하세요."),
        Lang::En => format!("Too many failed attempts. Try again in {secs} s."),
    }
}

/// Why a password check of `account` was refused.
enum Refused {
    /// Wrong password (or no such account); the limiter's lock-out if the
    /// failure caused one.
    Wrong(Option<Duration>),
    /// Locked out before checking.
    Locked(Duration),
    /// The hashing pool's queue is full: try again in a moment.
    Busy,
    Failed(String),
}

/// Check `account`'s password with the same limiter (per account and
/// per address) and the same bounded hashing pool as the QUIC login.
async fn verify(web: &Web, ip: IpAddr, account: &str, password: String) -> Result<(), Refused> {
    if auth::check_account_id(account).is_err() {
        return Err(Refused::Wrong(None));
    }
    let shared = &web.shared;
    let reserved = match shared.reserve_login(account, ip) {
        Ok(r) => r,
        Err(locked) => return Err(Refused::Locked(locked.retry_after(Instant::now()))),
    };
    let acct = account.to_string();
    let row = match store::blocking(&shared.store, move |s| s.account(&acct)).await {
        Ok(r) => r,
        Err(e) => return Err(Refused::Failed(e.to_string())),
    };
    let ok = match shared
        .check_password(row.map(|r| r.pw_hash), password)
        .await
    {
        Ok(ok) => ok,
        // Not a failure of the password: the reservation is given back.
        Err(crate::hashing::Refused::Busy) => return Err(Refused::Busy),
        Err(e) => return Err(Refused::Failed(e.to_string())),
    };
    if ok {
        reserved.finish(true);
        Ok(())
    } else {
        tracing::info!("web: failed login for account {account:?} from {ip}");
        let locked = reserved.finish(false);
        Err(Refused::Wrong(
            locked.map(|l| l.retry_after(Instant::now())),
        ))
    }
}

/// The message and status for a refused password.
fn refused(lang: Lang, r: Refused, wrong: (&str, &str)) -> (StatusCode, String) {
    match r {
        Refused::Wrong(None) => (StatusCode::UNAUTHORIZED, pick(lang, wrong.0, wrong.1)),
        Refused::Wrong(Some(d)) | Refused::Locked(d) => {
            (StatusCode::TOO_MANY_REQUESTS, locked_message(lang, d))
        }
        Refused::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            pick(
                lang,
                "The service is busy. Please try again in a moment.",
                "서비스가 바쁩니다. 잠시 후 다시 시도해 주세요.",
            ),
        ),
        Refused::Failed(e) => {
            tracing::warn!("web: checking a password: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

async fn login(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    if !form_token_ok(&headers, &f.csrf) {
        return forbidden(lang);
    }
    match verify(&web, peer.ip(), &f.id, f.password).await {
        Ok(()) => {
            let (_, cookie) = web.sessions.login(&f.id);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response()
        }
        Err(r) => {
            let (status, msg) = refused(
                lang,
                r,
                ("Wrong ID or password.", "ID 또는 비밀번호가 틀렸습니다."),
            );
            render(
                status,
                &LoginT {
                    p: Page::new(lang, Text::of(lang).log_in, None, "/login"),
                    csrf: f.csrf,
                    id: clip(&f.id, auth::MAX_ACCOUNT),
                    error: Some(msg),
                },
            )
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(web): State<App>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = authed(&web, &headers, Some(&f.csrf)) {
        return r;
    }
    let cookie = web.sessions.logout(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

// ---------------------------------------------------------------------
// Set up the phone

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupT {
    p: Page,
    fingerprint: String,
    command: String,
    packages: Vec<PackageView>,
}

struct PackageView {
    name: String,
    size: String,
    sha256: String,
}

/// The host name the browser used, to put in the command and the file.
fn host_of(headers: &HeaderMap, uri: &Uri, fallback: IpAddr) -> String {
    let raw = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        raw.rsplit_once(':')
            .map_or(raw.clone(), |(h, _)| h.to_string())
    };
    let fine = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if fine {
        host
    } else if fallback.is_unspecified() {
        "localhost".into()
    } else {
        match fallback {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    }
}

/// `s` as one shell word.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "._-@+:/".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where the set-up page suggests keeping the password.
const PASSWORD_FILE: &str = "~/.config/keyline/password";

/// The settings a terminal needs for this account (no password).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct TerminalSettings {
    pub directory: String,
    pub directory_fp: String,
    pub account: String,
    pub numbers: Vec<String>,
    pub password_file: String,
}

async fn terminal_settings(
    web: &Web,
    headers: &HeaderMap,
    uri: &Uri,
    user: &str,
) -> Result<Option<TerminalSettings>, String> {
    let u = user.to_string();
    let Some(acct) = store::blocking(&web.shared.store, move |s| s.account(&u))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let local = web.shared.local_addr;
    Ok(Some(TerminalSettings {
        directory: format!("{}:{}", host_of(headers, uri, local.ip()), local.port()),
        directory_fp: web.shared.id.fingerprint.clone(),
        account: acct.id,
        numbers: acct.numbers,
        password_file: PASSWORD_FILE.into(),
    }))
}

fn command_for(s: &TerminalSettings) -> String {
    let mut c = format!(
        "keyline-agent terminal --directory {} --directory-fp {} --account {}",
        shell_word(&s.directory),
        shell_word(&s.directory_fp),
        shell_word(&s.account)
    );
    for n in &s.numbers {
        c.push_str(" --number ");
        c.push_str(&shell_word(n));
    }
    c.push_str(" --password-file ");
    c.push_str(s.password_file.as_str());
    c
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Done {
    welcome: Option<String>,
    done: Option<String>,
}

async fn setup(
    State(web): State<App>,
    headers: HeaderMap,
    uri: Uri,
    UrlQuery(q): UrlQuery<Done>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, None) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let settings = match terminal_settings(&web, &headers, &uri, &session.user).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(&web, &headers),
        Err(e) => return failed(lang, e),
    };
    let packages = match packages(&web).await {
        Ok(p) => p,
        Err(e) => return failed(lang, e),
    };
    let t = Text::of(lang);
    let mut p = Page::new(lang, t.setup, Some(&session), "/setup");
    p.admin = is_admin(&web, Some(&session)).await;
    if q.welcome.is_some() {
        p.notice = Some(t.welcome.to_string());
    }
    render(
        StatusCode::OK,
        &SetupT {
            p,
            fingerprint: settings.directory_fp.clone(),
            command: command_for(&settings),
            packages: packages
                .into_iter()
                .map(|(name, size, sha256)| PackageView {
                    name,
                    size: human_size(size),
                    sha256,
                })
                .collect(),
        },
    )
}

/// The account behind a session is gone (deleted or renamed elsewhere).
fn gone(web: &Web, headers: &HeaderMap) -> Response {
    let cookie = web.sessions.logout(headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

async fn config_file(State(web): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, None) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let settings = match terminal_settings(&web, &headers, &uri, &session.user).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(&web, &headers),
        Err(e) => return failed(lang, e),
    };
    let body = match toml::to_string(&settings) {
        Ok(b) => b,
        Err(e) => return failed(lang, e),
    };
    let text = format!(
        "# Keyline terminal settings for account {} at {}.\n\
         # No password is in this file: put it alone on the first line of\n\
         # {} (readable by you only).\n\
         # Start the terminal with:\n# {}\n\n{body}",
        settings.account,
        settings.directory,
        settings.password_file,
        command_for(&settings)
    );
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"keyline-terminal.toml\""),
            ),
        ],
        text,
    )
        .into_response()
}

/// The `.deb` files of the configured folder: name, size and SHA-256.
async fn packages(web: &Web) -> Result<Vec<(String, u64, String)>, String> {
    let Some(dir) = web.shared.cfg().web.packages.clone() else {
        return Ok(Vec::new());
    };
    let list = tokio::task::spawn_blocking(move || list_debs(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (path, size, mtime) in list {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let known = web
            .digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
            .filter(|(s, m, _)| *s == size && *m == mtime)
            .map(|(_, _, d)| d.clone());
        let digest = match known {
            Some(d) => d,
            None => {
                let p2 = path.clone();
                let d = tokio::task::spawn_blocking(move || sha256_file(&p2))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                web.digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.clone(), (size, mtime, d.clone()));
                d
            }
        };
        out.push((name, size, digest));
    }
    Ok(out)
}

fn list_debs(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".deb") || name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        out.push((
            entry.path(),
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!(
            "{:.1} MiB ({bytes} bytes)",
            bytes as f64 / (1024.0 * 1024.0)
        )
    } else if bytes >= 1024 {
        format!("{:.1} KiB ({bytes} bytes)", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

async fn package(
    State(web): State<App>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let Some(dir) = web.shared.cfg().web.packages.clone() else {
        return not_found(lang);
    };
    // Only a file the listing offers: a plain name ending in .deb.
    if name.contains('/') || name.contains('\\') || name.starts_with('.') || !name.ends_with(".deb")
    {
        return not_found(lang);
    }
    let path = dir.join(&name);
    match tokio::fs::read(&path).await {
        Ok(body) => {
            let disposition = HeaderValue::from_str(&format!(
                "attachment; filename=\"{}\"",
                name.replace('"', "")
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/vnd.debian.binary-package"),
                    ),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response()
        }
        Err(_) => not_found(lang),
    }
}

// ---------------------------------------------------------------------
// The account

#[derive(Template)]
#[template(path = "account.html")]
struct AccountT {
    p: Page,
    csrf: String,
    numbers: Vec<NumberView>,
    devices: Vec<DeviceView>,
    mail: Vec<MailView>,
    password_error: Option<String>,
    id_error: Option<String>,
    delete_error: Option<String>,
    new_number: String,
    add_error: Option<String>,
    remove_error: Option<String>,
}

struct NumberView {
    /// Its place in the list, from 1 (for element ids).
    index: usize,
    number: String,
    /// One row per kind, in `ForwardWhen::ALL` order.
    rules: Vec<RuleView>,
    dnd: bool,
}

/// One kind of forwarding rule of one number in the form.
struct RuleView {
    /// `ForwardWhen::as_str`: the fields are `on-KIND` and `to-KIND`.
    kind: &'static str,
    label: &'static str,
    on: bool,
    to: String,
    error: Option<String>,
}

fn when_label(t: &Text, when: ForwardWhen) -> &'static str {
    match when {
        ForwardWhen::Always => t.when_always,
        ForwardWhen::Busy => t.when_busy,
        ForwardWhen::NoAnswer => t.when_no_answer,
        ForwardWhen::Unregistered => t.when_offline,
    }
}

struct DeviceView {
    session: u64,
    address: String,
    name: String,
    numbers: String,
    refreshed: String,
}

struct MailView {
    id: MailId,
    from: String,
    to: String,
    voice: bool,
    text: String,
    at: String,
}

/// A forwarding form that was refused.
struct ForwardError {
    number: String,
    /// Every kind's rule as sent (on or not, the number typed).
    sent: Vec<(ForwardWhen, bool, String)>,
    /// The kind the message is about.
    kind: ForwardWhen,
    message: String,
}

/// Errors to show on the account page, by section.
#[derive(Default)]
struct AccountErrors {
    password: Option<String>,
    id: Option<String>,
    delete: Option<String>,
    /// A refused forwarding form: what was sent, to show it again.
    forward: Option<ForwardError>,
    /// The number typed to add and what is wrong with it.
    add: Option<(String, String)>,
    remove: Option<String>,
}

async fn devices_of(shared: &Shared, account: &str) -> Vec<Device> {
    let (tx, rx) = oneshot::channel();
    if shared
        .hub
        .send(Event::Devices {
            account: account.to_string(),
            reply: tx,
        })
        .await
        .is_err()
    {
        return Vec::new();
    }
    rx.await.unwrap_or_default()
}

/// `ms` since the epoch as a UTC date and time.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

async fn account_page(
    web: &Web,
    headers: &HeaderMap,
    session: &Session,
    status: StatusCode,
    notice: Option<&str>,
    errors: AccountErrors,
) -> Response {
    let lang = Lang::from_headers(headers);
    let t = Text::of(lang);
    let user = session.user.clone();
    let data = store::blocking(&web.shared.store, move |s| {
        let Some(acct) = s.account(&user)? else {
            return Ok(None);
        };
        let rules: HashMap<String, (Vec<ForwardRule>, bool)> = s
            .numbers()?
            .into_iter()
            .filter(|n| n.account == acct.id)
            .map(|n| (n.number, (n.forwards, n.dnd)))
            .collect();
        let mut mail = Vec::new();
        for m in s.pending_mail(&acct.id)? {
            let text = if m.kind == "text" {
                s.mail_body(m.id)?
                    .map(|b| clip(&String::from_utf8_lossy(&b), TEXT_SHOWN))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            mail.push((m, text));
        }
        Ok(Some((acct, rules, mail)))
    })
    .await;
    let (acct, rules, mail) = match data {
        Ok(Some(d)) => d,
        Ok(None) => return gone(web, headers),
        Err(e) => return failed(lang, e),
    };
    let devices = devices_of(&web.shared, &acct.id).await;
    let numbers = acct
        .numbers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (kept, dnd) = rules.get(n).cloned().unwrap_or_default();
            // What the person sent stays in a refused form.
            let refused = errors.forward.as_ref().filter(|f| f.number == *n);
            let rules = ForwardWhen::ALL
                .iter()
                .map(|&when| {
                    let (on, to) = match refused {
                        Some(f) => f
                            .sent
                            .iter()
                            .find(|(w, _, _)| *w == when)
                            .map(|(_, on, to)| (*on, to.clone()))
                            .unwrap_or_default(),
                        None => kept
                            .iter()
                            .find(|r| r.when == when)
                            .map(|r| (r.on, r.to.clone()))
                            .unwrap_or_default(),
                    };
                    RuleView {
                        kind: when.as_str(),
                        label: when_label(t, when),
                        on,
                        to,
                        error: refused
                            .filter(|f| f.kind == when)
                            .map(|f| f.message.clone()),
                    }
                })
                .collect();
            NumberView {
                index: i + 1,
                number: n.clone(),
                rules,
                dnd,
            }
        })
        .collect();
    let mut p = Page::new(lang, t.account, Some(session), "/account");
    p.admin = acct.admin;
    p.notice = notice.map(str::to_string);
    render(
        status,
        &AccountT {
            p,
            csrf: session.csrf.clone(),
            numbers,
            devices: devices
                .into_iter()
                .map(|d| DeviceView {
                    session: d.session,
                    address: d.address,
                    name: d.name.unwrap_or_default(),
                    numbers: if d.numbers.is_empty() {
                        t.not_registered.to_string()
                    } else {
                        d.numbers.join(", ")
                    },
                    refreshed: d
                        .refreshed_s_ago
                        .map(|s| format!("{s} {}", t.seconds_ago))
                        .unwrap_or_else(|| "-".into()),
                })
                .collect(),
            mail: mail
                .into_iter()
                .map(|(m, text)| MailView {
                    id: m.id,
                    from: m.from,
                    to: m.to,
                    voice: m.kind == "voice",
                    text,
                    at: utc(m.at_ms),
                })
                .collect(),
            password_error: errors.password,
            id_error: errors.id,
            delete_error: errors.delete,
            new_number: errors.add.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            add_error: errors.add.map(|a| a.1),
            remove_error: errors.remove,
        },
    )
}

async fn account(
    State(web): State<App>,
    headers: HeaderMap,
    UrlQuery(q): UrlQuery<Done>,
) -> Response {
    let session = match authed(&web, &headers, None) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = Text::of(Lang::from_headers(&headers));
    let notice = match q.done.as_deref() {
        Some("password") => Some(t.password_changed),
        Some("id") => Some(t.id_changed),
        Some("forward") => Some(t.forward_saved),
        Some("device") => Some(t.device_signed_out),
        Some("mail") => Some(t.mail_deleted),
        Some("dnd") => Some(t.dnd_saved),
        Some("number-added") => Some(t.number_added),
        Some("number-removed") => Some(t.number_removed),
        _ => None,
    };
    account_page(
        &web,
        &headers,
        &session,
        StatusCode::OK,
        notice,
        AccountErrors::default(),
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordForm {
    csrf: String,
    old: String,
    new: String,
}

async fn change_password(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bad = |msg: String| AccountErrors {
        password: Some(msg),
        ..AccountErrors::default()
    };
    if auth::check_new_password(&f.new).is_err() {
        let e = bad(pick(
            lang,
            "The new password must have 8 to 1024 characters and no control characters.",
            "새 비밀번호는 8자 이상 1024바이트 이하이고 제어 문자가 없어야 합니다.",
        ));
        return account_page(
            &web,
            &headers,
            &session,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            e,
        )
        .await;
    }
    if let Err(r) = verify(&web, peer.ip(), &session.user, f.old).await {
        let (status, msg) = refused(
            lang,
            r,
            ("The old password is wrong.", "이전 비밀번호가 틀렸습니다."),
        );
        return account_page(&web, &headers, &session, status, None, bad(msg)).await;
    }
    let hash = match web.shared.hash_password(f.new).await {
        Ok(h) => h,
        Err(e) => return hashing_failed(lang, &e),
    };
    let user = session.user.clone();
    if let Err(e) = store::blocking(&web.shared.store, move |s| {
        s.set_password(&user, &hash, None)
    })
    .await
    {
        return failed(lang, e);
    }
    // Every token is gone with the old password; terminals logged in
    // with it are told and closed.
    reload(&web.shared, Some(session.user.clone())).await;
    web.sessions.end_user(&session.user, Some(&session.id));
    tracing::info!("web: account {} changed its password", session.user);
    Redirect::to("/account?done=password").into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdForm {
    csrf: String,
    new_id: String,
    password: String,
}

async fn change_id(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<IdForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bad = |msg: String| AccountErrors {
        id: Some(msg),
        ..AccountErrors::default()
    };
    match id_problem(&web, lang, &f.new_id).await {
        Ok(None) => {}
        Ok(Some(m)) => {
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                bad(m),
            )
            .await
        }
        Err(e) => return failed(lang, e),
    }
    if let Err(r) = verify(&web, peer.ip(), &session.user, f.password).await {
        let (status, msg) = refused(
            lang,
            r,
            ("The password is wrong.", "비밀번호가 틀렸습니다."),
        );
        return account_page(&web, &headers, &session, status, None, bad(msg)).await;
    }
    let (old, new) = (session.user.clone(), f.new_id.clone());
    match store::blocking(&web.shared.store, move |s| s.rename_account(&old, &new)).await {
        Ok(()) => {}
        Err(StoreError::Exists(_)) => {
            let e = bad(pick(lang, "This ID is taken.", "이미 쓰이는 ID입니다."));
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                e,
            )
            .await;
        }
        Err(e) => return failed(lang, e),
    }
    reload(&web.shared, Some(session.user.clone())).await;
    web.sessions.end_user(&session.user, Some(&session.id));
    web.sessions.rename_user(&session.user, &f.new_id);
    tracing::info!("web: account {} is now {}", session.user, f.new_id);
    Redirect::to("/account?done=id").into_response()
}

/// The forwarding form of one number: `csrf`, `number`, and for each
/// kind (`ForwardWhen::as_str`) `to-KIND` (the number, may be empty) and
/// `on-KIND` (present when the rule is on). Every rule of the number is
/// replaced at once; a kind with no number typed has no rule.
async fn set_forward(
    State(web): State<App>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let session = match authed(&web, &headers, Some(field("csrf").unwrap_or(""))) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(num) = number::canonicalize(&clip(field("number").unwrap_or(""), 256)) else {
        return not_found(lang);
    };
    let user = session.user.clone();
    let mine = match store::blocking(&web.shared.store, move |s| s.account(&user)).await {
        Ok(Some(a)) => a.numbers.contains(&num),
        Ok(None) => return gone(&web, &headers),
        Err(e) => return failed(lang, e),
    };
    if !mine {
        return not_found(lang);
    }
    let sent: Vec<(ForwardWhen, bool, String)> = ForwardWhen::ALL
        .iter()
        .map(|&w| {
            let on = field(&format!("on-{}", w.as_str())).is_some();
            let to = field(&format!("to-{}", w.as_str())).unwrap_or("");
            (w, on, clip(to.trim(), 128))
        })
        .collect();
    let refuse = |kind: ForwardWhen, message: String| AccountErrors {
        forward: Some(ForwardError {
            number: num.clone(),
            sent: sent.clone(),
            kind,
            message,
        }),
        ..AccountErrors::default()
    };
    let mut rules = Vec::new();
    for (when, on, typed) in &sent {
        let raw = field(&format!("to-{}", when.as_str())).unwrap_or("");
        // A kind left empty and off has no rule; one that is on needs a
        // number.
        if typed.is_empty() && !*on {
            continue;
        }
        match number::canonicalize(typed) {
            Ok(to) if !typed.is_empty() && raw.len() <= number::MAX_INPUT_BYTES => {
                rules.push(ForwardRule {
                    when: *when,
                    to,
                    on: *on,
                })
            }
            _ => {
                let msg = pick(
                    lang,
                    "Enter the number calls should go to.",
                    "전화를 돌릴 번호를 넣으세요.",
                );
                return account_page(
                    &web,
                    &headers,
                    &session,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    None,
                    refuse(*when, msg),
                )
                .await;
            }
        }
    }
    let (n2, r2) = (num.clone(), rules.clone());
    let saved = store::blocking(&web.shared.store, move |s| {
        s.set_forwards(&n2, &r2, store::now_ms())?;
        s.forwards(&n2)
    })
    .await;
    let rules_now = match saved {
        Ok(r) => r,
        Err(e @ (StoreError::NotFound(_) | StoreError::Invalid(_))) => {
            // The rule the store refused: the one whose number it names.
            let kind = rules
                .iter()
                .find(|r| {
                    let m = e.to_string();
                    m.contains(&format!(" {} ", r.to)) || r.to == num
                })
                .map_or(ForwardWhen::Always, |r| r.when);
            let msg = match (&e, lang) {
                (StoreError::NotFound(_), Lang::Ko) => "그런 번호가 없습니다.".to_string(),
                (StoreError::NotFound(_), Lang::En) => "There is no such number.".to_string(),
                (_, Lang::Ko) => "번호를 자기 자신에게 돌릴 수 없습니다.".to_string(),
                (_, Lang::En) => "A number cannot forward to itself.".to_string(),
            };
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                refuse(kind, msg),
            )
            .await;
        }
        Err(e) => return failed(lang, e),
    };
    // The same event the QUIC protocol's SetForward gives the hub: the
    // next call follows it.
    if web
        .shared
        .hub
        .send(Event::ForwardChanged {
            number: num,
            rules: rules_now,
        })
        .await
        .is_err()
    {
        return failed(lang, "the directory is stopping");
    }
    Redirect::to("/account?done=forward").into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NumberForm {
    csrf: String,
    number: String,
    on: String,
}

/// The canonical form of `typed` if it is one of `user`'s numbers.
async fn own_number(web: &Web, user: &str, typed: &str) -> Result<Option<String>, String> {
    let Ok(num) = number::canonicalize(&clip(typed, 256)) else {
        return Ok(None);
    };
    let user = user.to_string();
    match store::blocking(&web.shared.store, move |s| s.account(&user)).await {
        Ok(Some(a)) => Ok(a.numbers.contains(&num).then_some(num)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn set_dnd(
    State(web): State<App>,
    headers: HeaderMap,
    Form(f): Form<NumberForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let num = match own_number(&web, &session.user, &f.number).await {
        Ok(Some(n)) => n,
        Ok(None) => return not_found(lang),
        Err(e) => return failed(lang, e),
    };
    let on = f.on == "1";
    let n2 = num.clone();
    match store::blocking(&web.shared.store, move |s| s.set_dnd(&n2, on)).await {
        Ok(()) => {}
        Err(StoreError::NotFound(_)) => return not_found(lang),
        Err(e) => return failed(lang, e),
    }
    // The hub re-reads the numbers before answering: the next call
    // follows the setting.
    reload(&web.shared, None).await;
    tracing::info!(
        "web: {} turned do-not-disturb {} for {num}",
        session.user,
        if on { "on" } else { "off" }
    );
    Redirect::to("/account?done=dnd").into_response()
}

async fn add_number(
    State(web): State<App>,
    headers: HeaderMap,
    Form(f): Form<NumberForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let wrong = |msg: String| AccountErrors {
        add: Some((clip(&f.number, 128), msg)),
        ..AccountErrors::default()
    };
    // The same checks as sign-up: canonical, free, not held back.
    let canon = match number_problem(&web, lang, &f.number).await {
        Ok(Ok(c)) => c,
        Ok(Err(m)) => {
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                wrong(m),
            )
            .await
        }
        Err(e) => return failed(lang, e),
    };
    let (user, c2) = (session.user.clone(), canon.clone());
    match store::blocking(&web.shared.store, move |s| {
        s.add_number(&user, &c2, store::now_ms())
    })
    .await
    {
        Ok(()) => {}
        Err(StoreError::Exists(_)) => {
            let e = wrong(pick(
                lang,
                "This number is taken.",
                "이미 쓰이는 번호입니다.",
            ));
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                e,
            )
            .await;
        }
        Err(StoreError::NotFound(_)) => return gone(&web, &headers),
        Err(e) => return failed(lang, e),
    }
    reload(&web.shared, None).await;
    tracing::info!("web: {} added the number {canon}", session.user);
    Redirect::to("/account?done=number-added").into_response()
}

async fn remove_number(
    State(web): State<App>,
    headers: HeaderMap,
    Form(f): Form<NumberForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let num = match own_number(&web, &session.user, &f.number).await {
        Ok(Some(n)) => n,
        Ok(None) => return not_found(lang),
        Err(e) => return failed(lang, e),
    };
    // Held back as a deleted account's numbers are, so that nobody else
    // takes it while callers still dial it for this person.
    let hold = web.shared.cfg().web.hold_numbers();
    let until = store::now_ms() + hold.as_millis() as i64;
    let (user, n2) = (session.user.clone(), num.clone());
    match store::blocking(&web.shared.store, move |s| {
        s.remove_number(&user, &n2, Some(until))
    })
    .await
    {
        Ok(()) => {}
        Err(StoreError::Invalid(_)) => {
            let e = AccountErrors {
                remove: Some(Text::of(lang).last_number.to_string()),
                ..AccountErrors::default()
            };
            return account_page(
                &web,
                &headers,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                e,
            )
            .await;
        }
        Err(StoreError::NotFound(_)) => return not_found(lang),
        Err(e) => return failed(lang, e),
    }
    // The hub drops the number's binding before answering.
    reload(&web.shared, None).await;
    tracing::info!("web: {} removed the number {num}", session.user);
    Redirect::to("/account?done=number-removed").into_response()
}

async fn sign_out_device(
    State(web): State<App>,
    headers: HeaderMap,
    UrlPath(sid): UrlPath<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(sid) = sid.parse::<u64>() else {
        return not_found(lang);
    };
    let (tx, rx) = oneshot::channel();
    if web
        .shared
        .hub
        .send(Event::SignOut {
            account: session.user.clone(),
            sid,
            reply: tx,
        })
        .await
        .is_err()
    {
        return failed(lang, "the directory is stopping");
    }
    match rx.await {
        Ok(Some(token_hash)) => {
            if let Err(e) =
                store::blocking(&web.shared.store, move |s| s.delete_token(&token_hash)).await
            {
                return failed(lang, e);
            }
            tracing::info!("web: {} signed out session {sid}", session.user);
            Redirect::to("/account?done=device").into_response()
        }
        Ok(None) => not_found(lang),
        Err(_) => failed(lang, "the directory is stopping"),
    }
}

/// A message of the session's account, or `None` (another account's
/// message is not found either).
async fn own_mail(web: &Web, user: &str, id: MailId) -> Result<Option<(bool, Vec<u8>)>, String> {
    let user = user.to_string();
    store::blocking(&web.shared.store, move |s| {
        let Some(meta) = s.pending_mail(&user)?.into_iter().find(|m| m.id == id) else {
            return Ok(None);
        };
        Ok(s.mail_body(id)?.map(|b| (meta.kind == "voice", b)))
    })
    .await
    .map_err(|e| e.to_string())
}

/// One byte range of a `Range: bytes=a-b` header, within `len`.
fn byte_range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        (len.saturating_sub(n), len - 1)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() {
            len - 1
        } else {
            b.parse::<usize>().ok()?.min(len - 1)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

async fn mail_body(
    State(web): State<App>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, None) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<MailId>() else {
        return not_found(lang);
    };
    let (voice, body) = match own_mail(&web, &session.user, id).await {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(lang),
        Err(e) => return failed(lang, e),
    };
    let ctype = if voice {
        HeaderValue::from_static("audio/ogg")
    } else {
        HeaderValue::from_static("text/plain; charset=utf-8")
    };
    let len = body.len();
    match byte_range(&headers, len) {
        Some((start, end)) => {
            let range = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"));
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
                    (header::CONTENT_RANGE, range),
                ],
                body[start..=end].to_vec(),
            )
                .into_response()
        }
        None => (
            [
                (header::CONTENT_TYPE, ctype),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            ],
            body,
        )
            .into_response(),
    }
}

async fn delete_mail(
    State(web): State<App>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<MailId>() else {
        return not_found(lang);
    };
    let user = session.user.clone();
    // The same deletion as the terminal's acknowledgement: once gone
    // here, it is never delivered.
    match store::blocking(&web.shared.store, move |s| s.delete_mail(&user, id)).await {
        Ok(true) => Redirect::to("/account?done=mail").into_response(),
        Ok(false) => not_found(lang),
        Err(e) => failed(lang, e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteForm {
    csrf: String,
    password: String,
}

async fn delete_account(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match authed(&web, &headers, Some(&f.csrf)) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = verify(&web, peer.ip(), &session.user, f.password).await {
        let (status, msg) = refused(
            lang,
            r,
            ("The password is wrong.", "비밀번호가 틀렸습니다."),
        );
        let e = AccountErrors {
            delete: Some(msg),
            ..AccountErrors::default()
        };
        return account_page(&web, &headers, &session, status, None, e).await;
    }
    let hold = web.shared.cfg().web.hold_numbers();
    let until = store::now_ms() + hold.as_millis() as i64;
    let user = session.user.clone();
    if let Err(e) = store::blocking(&web.shared.store, move |s| {
        s.remove_account_holding(&user, until)
    })
    .await
    {
        return failed(lang, e);
    }
    reload(&web.shared, Some(session.user.clone())).await;
    web.sessions.end_user(&session.user, None);
    tracing::info!("web: account {} deleted itself", session.user);
    let t = Text::of(lang);
    let cookie = web.sessions.logout(&headers);
    (
        [(header::SET_COOKIE, cookie)],
        message(lang, StatusCode::OK, t.delete_account, t.account_deleted),
    )
        .into_response()
}

// ---------------------------------------------------------------------
// Operator pages

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminT {
    p: Page,
    csrf: String,
    signup: &'static str,
    bindings: usize,
    calls: usize,
    relayed: u64,
    accounts: Vec<AdminAccount>,
    invites: Vec<(String, String, String)>,
    new_invite: Option<String>,
    /// The search typed, and how many accounts there are in all.
    q: String,
    total: usize,
    numbers: Vec<AdminNumber>,
    online: Vec<AdminBinding>,
    calls_now: Vec<AdminCall>,
}

struct AdminAccount {
    id: String,
    numbers: String,
    registered: String,
    admin: bool,
}

struct AdminNumber {
    number: String,
    account: String,
    rule: String,
    dnd: bool,
}

struct AdminBinding {
    number: String,
    account: String,
    address: String,
    since: u64,
    expires_in: u64,
}

struct AdminCall {
    from: String,
    number: String,
    state: String,
    seconds: u64,
    relayed: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AdminQuery {
    q: String,
}

/// Whether an account matches the operator's search: a part of its ID or
/// of one of its numbers, case and script folded as numbers are.
fn matches_search(q: &str, id: &str, numbers: &[String]) -> bool {
    let q = q.trim();
    if q.is_empty() {
        return true;
    }
    let folded = q.to_lowercase();
    let canon = number::canonicalize(q).unwrap_or_else(|_| folded.clone());
    id.to_lowercase().contains(&folded)
        || numbers
            .iter()
            .any(|n| n.contains(&canon) || n.contains(&folded))
}

async fn admin_page(
    web: &Web,
    headers: &HeaderMap,
    session: &Session,
    new_invite: Option<String>,
    q: &str,
) -> Response {
    let lang = Lang::from_headers(headers);
    let t = Text::of(lang);
    let data = store::blocking(&web.shared.store, |s| {
        Ok((s.accounts()?, s.invites()?, s.numbers()?))
    })
    .await;
    let (accounts, invites, numbers) = match data {
        Ok(d) => d,
        Err(e) => return failed(lang, e),
    };
    let q = clip(q, 128);
    let total = accounts.len();
    let accounts: Vec<_> = accounts
        .into_iter()
        .filter(|a| matches_search(&q, &a.id, &a.numbers))
        .collect();
    let numbers: Vec<AdminNumber> = numbers
        .into_iter()
        .filter(|n| accounts.iter().any(|a| a.id == n.account))
        .map(|n| AdminNumber {
            rule: n
                .forwards
                .iter()
                .map(|r| {
                    let off = if r.on { "" } else { " (off)" };
                    format!("{} → {}{off}", r.when.as_str(), r.to)
                })
                .collect::<Vec<_>>()
                .join(", "),
            number: n.number,
            account: n.account,
            dnd: n.dnd,
        })
        .collect();
    let online = query_hub(&web.shared, Query::Online).await;
    let status = query_hub(&web.shared, Query::Status).await;
    let calls = query_hub(&web.shared, Query::Calls).await;
    let bindings = query_hub(&web.shared, Query::Bindings).await;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let empty = Vec::new();
    let online_list: Vec<AdminBinding> = bindings["bindings"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|b| AdminBinding {
            number: s(&b["number"]),
            account: s(&b["account"]),
            address: s(&b["observed"]),
            since: n(&b["since_s"]),
            expires_in: n(&b["expires_in_s"]),
        })
        .collect();
    let calls_now: Vec<AdminCall> = calls["calls"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|c| AdminCall {
            from: s(&c["from"]),
            number: s(&c["number"]),
            state: s(&c["state"]),
            seconds: n(&c["seconds"]),
            relayed: c["relayed"].as_bool().unwrap_or(false),
        })
        .collect();
    let mut p = Page::new(lang, t.operator, Some(session), "/admin");
    p.admin = true;
    render(
        StatusCode::OK,
        &AdminT {
            p,
            csrf: session.csrf.clone(),
            signup: web.shared.cfg().web.signup.as_str(),
            bindings: n(&status["bindings"]) as usize,
            calls: calls["calls"].as_array().map_or(0, Vec::len),
            relayed: n(&status["relay"]["bytes"]),
            accounts: accounts
                .into_iter()
                .map(|a| AdminAccount {
                    registered: online["online"]
                        .get(&a.id)
                        .and_then(Value::as_array)
                        .map(|v| {
                            v.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default(),
                    numbers: a.numbers.join(", "),
                    id: a.id,
                    admin: a.admin,
                })
                .collect(),
            invites: invites
                .into_iter()
                .map(|i| {
                    (
                        clip(&i.code_hash, 16),
                        utc(i.created_ms),
                        i.used_by.unwrap_or_else(|| t.unused.to_string()),
                    )
                })
                .collect(),
            new_invite,
            q,
            total,
            numbers,
            online: online_list,
            calls_now,
        },
    )
}

/// The session of an operator, or 404 for anyone else.
async fn operator(web: &Web, headers: &HeaderMap, csrf: Option<&str>) -> Result<Session, Response> {
    let session = authed(web, headers, csrf)?;
    if is_admin(web, Some(&session)).await {
        Ok(session)
    } else {
        Err(not_found(Lang::from_headers(headers)))
    }
}

async fn admin(
    State(web): State<App>,
    headers: HeaderMap,
    UrlQuery(aq): UrlQuery<AdminQuery>,
) -> Response {
    match operator(&web, &headers, None).await {
        Ok(s) => admin_page(&web, &headers, &s, None, &aq.q).await,
        Err(r) => r,
    }
}

async fn create_invite(
    State(web): State<App>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    let session = match operator(&web, &headers, Some(&f.csrf)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let code = auth::new_invite_code();
    let hash = auth::token_hash(&code);
    if let Err(e) = store::blocking(&web.shared.store, move |s| {
        s.add_invite(&hash, store::now_ms())
    })
    .await
    {
        return failed(lang, e);
    }
    admin_page(&web, &headers, &session, Some(code), "").await
}
