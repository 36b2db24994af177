//! The operator pages (`/admin`, for admin accounts only; 404 for anyone
//! else): accounts with a search, numbers and their rules, who is online,
//! calls now, and invite codes.

use askama::Template;
use axum::extract::{Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use keyline_proto::number;
use keyline_web::session::Session;
use keyline_web::Lang;
use serde::Deserialize;
use serde_json::Value;

use super::session::{authed, CsrfForm};
use super::text::Text;
use super::{clip, failed, is_admin, not_found, render, utc, App, Page, Web};
use crate::auth;
use crate::shared::{query_hub, Query};
use crate::store;

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
pub(super) struct AdminQuery {
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
    let session = authed(web, headers, csrf).await?;
    if is_admin(web, Some(&session)).await {
        Ok(session)
    } else {
        Err(not_found(Lang::from_headers(headers)))
    }
}

pub(super) async fn admin(
    State(web): State<App>,
    headers: HeaderMap,
    UrlQuery(aq): UrlQuery<AdminQuery>,
) -> Response {
    match operator(&web, &headers, None).await {
        Ok(s) => admin_page(&web, &headers, &s, None, &aq.q).await,
        Err(r) => r,
    }
}

pub(super) async fn create_invite(
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
