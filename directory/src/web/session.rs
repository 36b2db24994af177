//! Who is logged in: the session cookie and its CSRF token, the cookie
//! that carries the CSRF token of the forms shown before logging in, and
//! logging in and out (password checks with the login limiter, shared
//! with the account page's forms).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keyline_web::session::{cookie_value, random_token, Session};
use keyline_web::Lang;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::text::{pick, Text};
use super::{clip, failed, forbidden, render, App, Page, Web};
use crate::auth;
use crate::store;

/// The cookie of a logged-in browser.
pub(super) const SESSION_COOKIE: &str = "kl_session";
/// The cookie that carries the CSRF token of the forms shown before
/// logging in (sign up, log in): the form must carry the same value.
const FORM_COOKIE: &str = "kl_form";

/// The CSRF token of the forms shown before logging in, and the cookie
/// to set when the browser has none yet.
pub(super) fn form_token(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
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

pub(super) fn form_token_ok(headers: &HeaderMap, sent: &str) -> bool {
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

pub(super) fn with_cookie(cookie: Option<HeaderValue>, resp: Response) -> Response {
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
pub(super) async fn authed(
    web: &Web,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Response> {
    let lang = Lang::from_headers(headers);
    let session = match web.sessions.get(headers).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(match csrf {
                None => Redirect::to("/login").into_response(),
                Some(_) => forbidden(lang),
            })
        }
        Err(e) => return Err(failed(lang, e)),
    };
    if let Some(token) = csrf {
        if !session.check_csrf(token) {
            return Err(forbidden(lang));
        }
    }
    Ok(session)
}

/// The signed-in visitor of a page: the handler runs only when the
/// session cookie names a live session; anyone else is sent to log in.
pub(super) struct SignedIn {
    pub(super) lang: Lang,
    pub(super) headers: HeaderMap,
    pub(super) session: Session,
}

impl FromRequestParts<App> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &App) -> Result<Self, Response> {
        let session = authed(web, &parts.headers, None).await?;
        Ok(SignedIn {
            lang: Lang::from_headers(&parts.headers),
            headers: parts.headers.clone(),
            session,
        })
    }
}

/// A form that carries the CSRF token of the session that posts it.
pub(super) trait CarriesCsrf {
    fn csrf(&self) -> &str;
}

impl CarriesCsrf for Vec<(String, String)> {
    fn csrf(&self) -> &str {
        self.iter()
            .find(|(k, _)| k == "csrf")
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A form posted by a signed-in visitor: the handler runs only when the
/// session is live and the form's CSRF token is the session's (anything
/// else is refused with 403 before the form is looked at).
pub(super) struct SignedForm<F> {
    pub(super) lang: Lang,
    pub(super) headers: HeaderMap,
    pub(super) session: Session,
    pub(super) form: F,
}

impl<F> FromRequest<App> for SignedForm<F>
where
    F: DeserializeOwned + CarriesCsrf + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, web: &App) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(form) = Form::<F>::from_request(req, web)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = authed(web, &headers, Some(form.csrf())).await?;
        Ok(SignedForm {
            lang: Lang::from_headers(&headers),
            headers,
            session,
            form,
        })
    }
}

/// The account behind a session is gone (deleted or renamed elsewhere).
pub(super) async fn gone(web: &Web, headers: &HeaderMap) -> Response {
    let cookie = web.sessions.logout(headers).await;
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginT {
    p: Page,
    csrf: String,
    id: String,
    error: Option<String>,
}

pub(super) async fn login_page(headers: HeaderMap) -> Response {
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
pub(super) struct LoginForm {
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
pub(super) enum Refused {
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
pub(super) async fn verify(
    web: &Web,
    ip: IpAddr,
    account: &str,
    password: String,
) -> Result<(), Refused> {
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
pub(super) fn refused(lang: Lang, r: Refused, wrong: (&str, &str)) -> (StatusCode, String) {
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

pub(super) async fn login(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = Lang::from_headers(&headers);
    if !form_token_ok(&headers, &f.csrf) {
        return forbidden(lang);
    }
    let checked = store::now_ms();
    match verify(&web, peer.ip(), &f.id, f.password).await {
        Ok(()) => match web.sessions.login(&f.id, checked).await {
            Ok((_, cookie)) => {
                ([(header::SET_COOKIE, cookie)], Redirect::to("/account")).into_response()
            }
            Err(e) => failed(lang, e),
        },
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
pub(super) struct CsrfForm {
    pub(super) csrf: String,
}

impl CarriesCsrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn logout(
    State(web): State<App>,
    SignedForm { headers, .. }: SignedForm<CsrfForm>,
) -> Response {
    let cookie = web.sessions.logout(&headers).await;
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
