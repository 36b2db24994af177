//! The account's waiting mail on the web: a message's body (voice as Ogg
//! Opus, with byte ranges for the player; text as plain text) and
//! deleting a message, as a terminal's acknowledgement does.

use axum::extract::{Path as UrlPath, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyline_proto::dir::MailId;

use super::session::{CsrfForm, SignedForm, SignedIn};
use super::{failed, not_found, App, Web};
use crate::store;

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

pub(super) async fn mail_body(
    State(web): State<App>,
    SignedIn {
        lang,
        headers,
        session,
    }: SignedIn,
    UrlPath(id): UrlPath<String>,
) -> Response {
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

pub(super) async fn delete_mail(
    State(web): State<App>,
    UrlPath(id): UrlPath<String>,
    SignedForm { lang, session, .. }: SignedForm<CsrfForm>,
) -> Response {
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
