//! Signing up (`/signup`): the form, the checks of an ID and a number
//! (also used by the account page), creating the account, and the
//! availability check the page makes as the person types, limited per
//! address.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use keyline_proto::number;
use keyline_web::Lang;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::session::{form_token, form_token_ok, with_cookie};
use super::text::{pick, Text};
use super::{clip, failed, forbidden, hashing_failed, reload, render, App, Page, Web};
use crate::auth;
use crate::config::Signup;
use crate::store::{self, NumberStatus, StoreError};

/// Addresses the availability check remembers.
const CHECKERS: usize = 10_000;

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

pub(super) async fn signup_page(State(web): State<App>, headers: HeaderMap) -> Response {
    let lang = Lang::from_headers(&headers);
    let (token, cookie) = form_token(&headers);
    with_cookie(
        cookie,
        render(StatusCode::OK, &SignupT::new(&web, lang, token)),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct SignupForm {
    csrf: String,
    id: String,
    password: String,
    repeat: String,
    number: String,
    invite: String,
}

/// Why `id` cannot be taken, if it cannot.
pub(super) async fn id_problem(web: &Web, lang: Lang, id: &str) -> Result<Option<String>, String> {
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
pub(super) async fn number_problem(
    web: &Web,
    lang: Lang,
    n: &str,
) -> Result<Result<String, String>, String> {
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

pub(super) async fn signup(
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
    match web.sessions.login(&f.id, store::now_ms()).await {
        Ok((_, cookie)) => (
            [(header::SET_COOKIE, cookie)],
            Redirect::to("/setup?welcome=1"),
        )
            .into_response(),
        // The account exists: the person logs in.
        Err(e) => {
            tracing::warn!("web: a session for new account {}: {e}", f.id);
            Redirect::to("/login").into_response()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CheckQuery {
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
pub(super) async fn check(
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
