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
//!
//! This module holds what every page shares (the [`Web`] state, the
//! router, serving, the layout and the error pages); the pages live in
//! [`session`] (cookies, CSRF, logging in and out), [`signup`],
//! [`setup`], [`account`], [`numbers`] (forwarding, do-not-disturb, the
//! account's numbers), [`mail`], [`calls`] and [`admin`].

mod account;
mod admin;
mod calls;
mod logins;
mod mail;
mod numbers;
mod session;
mod setup;
mod signup;
#[cfg(test)]
mod tests;
mod text;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use askama::Template;
use axum::extract::{Path as UrlPath, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use keyline_web::session::Session;
use keyline_web::Lang;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::text::{pick, Text};
use crate::shared::{Event, Shared};
use crate::store;

/// What the handlers share.
pub(crate) struct Web {
    shared: Arc<Shared>,
    sessions: logins::Logins,
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
        let sessions = logins::Logins::new(shared.store.clone(), idle);
        Web {
            shared,
            sessions,
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
        .route("/signup", get(signup::signup_page).post(signup::signup))
        .route("/signup/check", get(signup::check))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/setup", get(setup::setup))
        .route("/setup/keyline-terminal.toml", get(setup::config_file))
        .route("/packages/{name}", get(setup::package))
        .route("/account", get(account::account))
        .route("/account/password", post(account::change_password))
        .route("/account/id", post(account::change_id))
        .route("/account/forward", post(numbers::set_forward))
        .route("/account/calls", get(calls::calls))
        .route("/account/dnd", post(numbers::set_dnd))
        .route("/account/numbers", post(numbers::add_number))
        .route("/account/numbers/remove", post(numbers::remove_number))
        .route("/account/numbers/first", post(numbers::show_number))
        .route(
            "/account/devices/{sid}/signout",
            post(account::sign_out_device),
        )
        .route("/account/mail/{id}", get(mail::mail_body))
        .route("/account/mail/{id}/delete", post(mail::delete_mail))
        .route("/account/delete", post(account::delete_account))
        .route("/admin", get(admin::admin))
        .route("/admin/invites", post(admin::create_invite))
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
    // The home page shows without a session when the store cannot say.
    let session = web.sessions.get(&headers).await.unwrap_or_default();
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

fn clip(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
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
