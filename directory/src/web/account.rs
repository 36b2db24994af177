//! The account page (`/account`): numbers with their forwarding rules,
//! devices, waiting mail, and the forms to change the password or the
//! ID, sign a device out and delete the account.

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Path as UrlPath, Query as UrlQuery, State};
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyline_proto::dir::{ForwardRule, ForwardWhen, MailId};
use keyline_web::session::Session;
use keyline_web::Lang;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::session::{gone, refused, verify, CarriesCsrf, CsrfForm, SignedForm, SignedIn};
use super::setup::Done;
use super::signup::id_problem;
use super::text::{pick, Text};
use super::{
    clip, failed, hashing_failed, message, not_found, reload, render, utc, App, Page, Web,
};
use crate::auth;
use crate::shared::{Device, Event, Shared, SignedOut};
use crate::store::{self, StoreError};

/// Longest text message shown in the inbox.
const TEXT_SHOWN: usize = 4096;

#[derive(Template)]
#[template(path = "account.html")]
struct AccountT {
    p: Page,
    csrf: String,
    numbers: Vec<NumberView>,
    devices: Vec<DeviceView>,
    /// This node is one of a cluster: devices show their node.
    clustered: bool,
    mail: Vec<MailView>,
    password_error: Option<String>,
    /// A wrong old password, beside its field.
    old_password_error: Option<String>,
    id_error: Option<String>,
    /// A wrong password in the ID form, beside its field.
    id_password_error: Option<String>,
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
    /// The program and version it runs.
    client: String,
    /// The directory node it is connected to, in a cluster.
    node: String,
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
pub(super) struct ForwardError {
    pub(super) number: String,
    /// Every kind's rule as sent (on or not, the number typed).
    pub(super) sent: Vec<(ForwardWhen, bool, String)>,
    /// The kind the message is about.
    pub(super) kind: ForwardWhen,
    pub(super) message: String,
}

/// Errors to show on the account page, by section.
#[derive(Default)]
pub(super) struct AccountErrors {
    pub(super) password: Option<String>,
    pub(super) old_password: Option<String>,
    pub(super) id: Option<String>,
    pub(super) id_password: Option<String>,
    pub(super) delete: Option<String>,
    /// A refused forwarding form: what was sent, to show it again.
    pub(super) forward: Option<ForwardError>,
    /// The number typed to add and what is wrong with it.
    pub(super) add: Option<(String, String)>,
    pub(super) remove: Option<String>,
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

pub(super) async fn account_page(
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
        Ok(None) => return gone(web, headers).await,
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
            clustered: web.shared.cluster.get().is_some(),
            devices: devices
                .into_iter()
                .map(|d| DeviceView {
                    session: d.session,
                    address: d.address,
                    name: d.name.unwrap_or_default(),
                    client: d.client.unwrap_or_else(|| "-".into()),
                    node: d
                        .node
                        .or_else(|| web.shared.cluster.get().map(|l| l.node.clone()))
                        .unwrap_or_default(),
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
            old_password_error: errors.old_password,
            id_error: errors.id,
            id_password_error: errors.id_password,
            delete_error: errors.delete,
            new_number: errors.add.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            add_error: errors.add.map(|a| a.1),
            remove_error: errors.remove,
        },
    )
}

pub(super) async fn account(
    State(web): State<App>,
    SignedIn {
        lang,
        headers,
        session,
    }: SignedIn,
    UrlQuery(q): UrlQuery<Done>,
) -> Response {
    let t = Text::of(lang);
    let notice = match q.done.as_deref() {
        Some("password") => Some(t.password_changed),
        Some("id") => Some(t.id_changed),
        Some("forward") => Some(t.forward_saved),
        Some("device") => Some(t.device_signed_out),
        Some("mail") => Some(t.mail_deleted),
        Some("dnd") => Some(t.dnd_saved),
        Some("shown") => Some(t.number_shown),
        Some("device-elsewhere") => Some(t.device_asked),
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
pub(super) struct PasswordForm {
    csrf: String,
    old: String,
    new: String,
}

impl CarriesCsrf for PasswordForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn change_password(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<PasswordForm>,
) -> Response {
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
        let e = AccountErrors {
            old_password: Some(msg),
            ..AccountErrors::default()
        };
        return account_page(&web, &headers, &session, status, None, e).await;
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
    // The store ended every browser session with the old password, this
    // one too: this browser gets a new one.
    tracing::info!("web: account {} changed its password", session.user);
    match web.sessions.login(&session.user, store::now_ms()).await {
        Ok((_, cookie)) => (
            [(header::SET_COOKIE, cookie)],
            Redirect::to("/account?done=password"),
        )
            .into_response(),
        Err(e) => failed(lang, e),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct IdForm {
    csrf: String,
    new_id: String,
    password: String,
}

impl CarriesCsrf for IdForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn change_id(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<IdForm>,
) -> Response {
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
        let e = AccountErrors {
            id_password: Some(msg),
            ..AccountErrors::default()
        };
        return account_page(&web, &headers, &session, status, None, e).await;
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
    // The store moved this account's browser sessions to the new ID.
    if let Err(e) = web.sessions.end_user(&f.new_id, Some(&session.id)).await {
        return failed(lang, e);
    }
    tracing::info!("web: account {} is now {}", session.user, f.new_id);
    Redirect::to("/account?done=id").into_response()
}

pub(super) async fn sign_out_device(
    State(web): State<App>,
    UrlPath(sid): UrlPath<String>,
    SignedForm { lang, session, .. }: SignedForm<CsrfForm>,
) -> Response {
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
        Ok(SignedOut::Here(token_hash)) => {
            if let Err(e) =
                store::blocking(&web.shared.store, move |s| s.delete_token(&token_hash)).await
            {
                return failed(lang, e);
            }
            tracing::info!("web: {} signed out session {sid}", session.user);
            Redirect::to("/account?done=device").into_response()
        }
        Ok(SignedOut::Elsewhere) => {
            tracing::info!(
                "web: {} asked the node of session {sid} to sign it out",
                session.user
            );
            Redirect::to("/account?done=device-elsewhere").into_response()
        }
        Ok(SignedOut::NotFound) => not_found(lang),
        Err(_) => failed(lang, "the directory is stopping"),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct DeleteForm {
    csrf: String,
    password: String,
}

impl CarriesCsrf for DeleteForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn delete_account(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<DeleteForm>,
) -> Response {
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
    // Deleting the account deleted its browser sessions with it.
    reload(&web.shared, Some(session.user.clone())).await;
    tracing::info!("web: account {} deleted itself", session.user);
    let t = Text::of(lang);
    let cookie = web.sessions.logout(&headers).await;
    (
        [(header::SET_COOKIE, cookie)],
        message(lang, StatusCode::OK, t.delete_account, t.account_deleted),
    )
        .into_response()
}
