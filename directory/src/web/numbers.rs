//! The forms of the account page about numbers: each number's forwarding
//! rules and do-not-disturb, and adding or removing a number. A change
//! reaches the hub before the answer, so the next call follows it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyline_proto::dir::{ForwardRule, ForwardWhen};
use keyline_proto::number;
use keyline_web::Lang;
use serde::Deserialize;

use super::account::{account_page, AccountErrors, ForwardError};
use super::session::{gone, CarriesCsrf, SignedForm};
use super::signup::number_problem;
use super::text::{pick, Text};
use super::{clip, failed, not_found, reload, App, Web};
use crate::shared::Event;
use crate::store::{self, StoreError};

/// The forwarding form of one number: `csrf`, `number`, and for each
/// kind (`ForwardWhen::as_str`) `to-KIND` (the number, may be empty) and
/// `on-KIND` (present when the rule is on). Every rule of the number is
/// replaced at once; a kind with no number typed has no rule.
pub(super) async fn set_forward(
    State(web): State<App>,
    SignedForm {
        lang,
        headers,
        session,
        form: fields,
    }: SignedForm<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Ok(num) = number::canonicalize(&clip(field("number").unwrap_or(""), 256)) else {
        return not_found(lang);
    };
    let user = session.user.clone();
    let mine = match store::blocking(&web.shared.store, move |s| s.account(&user)).await {
        Ok(Some(a)) => a.numbers.contains(&num),
        Ok(None) => return gone(&web, &headers).await,
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
pub(super) struct NumberForm {
    csrf: String,
    number: String,
    on: String,
}

impl CarriesCsrf for NumberForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The canonical form of `typed` if it is one of `user`'s numbers;
/// otherwise the page to answer with (not found, or the store's error).
async fn own_number(web: &Web, lang: Lang, user: &str, typed: &str) -> Result<String, Response> {
    let Ok(num) = number::canonicalize(&clip(typed, 256)) else {
        return Err(not_found(lang));
    };
    let user = user.to_string();
    match store::blocking(&web.shared.store, move |s| s.account(&user)).await {
        Ok(Some(a)) if a.numbers.contains(&num) => Ok(num),
        Ok(_) => Err(not_found(lang)),
        Err(e) => Err(failed(lang, e)),
    }
}

pub(super) async fn set_dnd(
    State(web): State<App>,
    SignedForm {
        lang,
        session,
        form: f,
        ..
    }: SignedForm<NumberForm>,
) -> Response {
    let num = match own_number(&web, lang, &session.user, &f.number).await {
        Ok(n) => n,
        Err(r) => return r,
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

/// Make one of the account's numbers the first, the one its callees see.
pub(super) async fn show_number(
    State(web): State<App>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<NumberForm>,
) -> Response {
    let num = match own_number(&web, lang, &session.user, &f.number).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let (user, n2) = (session.user.clone(), num.clone());
    match store::blocking(&web.shared.store, move |s| s.set_first_number(&user, &n2)).await {
        Ok(()) => {}
        Err(StoreError::NotFound(_)) => return not_found(lang),
        Err(e) => return failed(lang, e),
    }
    // The account's endpoints, on every node, call from the new first
    // number from the next call on.
    let user = session.user.clone();
    match store::blocking(&web.shared.store, move |s| s.account(&user)).await {
        Ok(Some(a)) => {
            let _ = web
                .shared
                .hub
                .send(Event::AccountNumbers {
                    account: a.id,
                    numbers: a.numbers,
                })
                .await;
        }
        Ok(None) => return gone(&web, &headers).await,
        Err(e) => return failed(lang, e),
    }
    tracing::info!("web: {} shows {num} to callees", session.user);
    Redirect::to("/account?done=shown").into_response()
}

pub(super) async fn add_number(
    State(web): State<App>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<NumberForm>,
) -> Response {
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
        Err(StoreError::NotFound(_)) => return gone(&web, &headers).await,
        Err(e) => return failed(lang, e),
    }
    reload(&web.shared, None).await;
    tracing::info!("web: {} added the number {canon}", session.user);
    Redirect::to("/account?done=number-added").into_response()
}

pub(super) async fn remove_number(
    State(web): State<App>,
    SignedForm {
        lang,
        headers,
        session,
        form: f,
    }: SignedForm<NumberForm>,
) -> Response {
    let num = match own_number(&web, lang, &session.user, &f.number).await {
        Ok(n) => n,
        Err(r) => return r,
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
