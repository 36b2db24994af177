//! The voicemail page: every mailbox's messages (played in the page,
//! deleted) and the greeting.

use super::*;

#[derive(Template)]
#[template(path = "voicemail.html")]
struct VoicemailPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    rows: Vec<crate::db::VoicemailRow>,
}

async fn voicemails<O: Office>(st: &AdminState<O>) -> Result<Vec<crate::db::VoicemailRow>, String> {
    match st.office.dispatch(Request::VoicemailList).await? {
        ApiResponse::Voicemails { voicemails } => Ok(voicemails),
        _ => Err("unexpected reply to voicemail-list".into()),
    }
}

async fn voicemail_page<O: Office>(
    st: &AdminState<O>,
    s: &Session,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    match voicemails(st).await {
        Ok(rows) => html(
            status,
            VoicemailPage {
                title: "Voicemail",
                here: "voicemail",
                csrf: Some(&s.csrf),
                notice,
                error,
                rows,
            },
        ),
        Err(e) => failed(e),
    }
}

pub(super) async fn voicemail<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    match session_or_login(&st, &headers) {
        Ok(s) => voicemail_page(&st, &s, StatusCode::OK, None, None).await,
        Err(r) => r,
    }
}

pub(super) async fn voicemail_delete<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match checked_form(&st, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req = need(&form, "mailbox", "The mailbox").and_then(|mailbox| {
        let id = need(&form, "id", "The message")?
            .parse::<u64>()
            .map_err(|_| "The message id is not a number.".to_string())?;
        Ok(Request::VoicemailDelete { mailbox, id })
    });
    let done = match req {
        Ok(r) => st.office.dispatch(r).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => voicemail_page(&st, &s, StatusCode::OK, Some("Deleted."), None).await,
        Err(e) => voicemail_page(&st, &s, StatusCode::UNPROCESSABLE_ENTITY, None, Some(&e)).await,
    }
}

/// Largest greeting upload, in bytes (a minute of 48 kHz 16-bit stereo WAV).
pub(super) const GREETING_UPLOAD_MAX: usize = 12 * 1024 * 1024;

pub(super) async fn voicemail_greeting<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let Some(s) = st.sessions.get(&headers) else {
        return Redirect::to("/login").into_response();
    };
    let (mut token, mut audio) = (None, None);
    loop {
        match form.next_field().await {
            Ok(Some(f)) => match f.name() {
                Some("csrf") => token = f.text().await.ok(),
                Some("greeting") => match f.bytes().await {
                    Ok(b) => audio = Some(b.to_vec()),
                    Err(e) => {
                        let msg = format!("The upload failed: {e}");
                        return voicemail_page(&st, &s, StatusCode::BAD_REQUEST, None, Some(&msg))
                            .await;
                    }
                },
                _ => {}
            },
            Ok(None) => break,
            Err(e) => {
                let msg = format!("The upload failed: {e}");
                return voicemail_page(&st, &s, StatusCode::BAD_REQUEST, None, Some(&msg)).await;
            }
        }
    }
    if !token.is_some_and(|t| s.check_csrf(&t)) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is missing its security token (or it is stale). Go back, reload the page and try again.",
        );
    }
    let Some(audio) = audio.filter(|a| !a.is_empty()) else {
        return voicemail_page(
            &st,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some("Choose a WAV or Ogg file to upload."),
        )
        .await;
    };
    match st.office.dispatch(Request::GreetingSet { audio }).await {
        Ok(ApiResponse::Greeting {
            greeting_secs: Some(secs),
        }) => {
            let n = format!("The new greeting ({secs:.1} s) is what callers hear now.");
            voicemail_page(&st, &s, StatusCode::OK, Some(&n), None).await
        }
        Ok(_) => voicemail_page(&st, &s, StatusCode::OK, Some("Greeting saved."), None).await,
        Err(e) => voicemail_page(&st, &s, StatusCode::UNPROCESSABLE_ENTITY, None, Some(&e)).await,
    }
}

pub(super) async fn voicemail_greeting_clear<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let s = match checked_form(&st, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match st.office.dispatch(Request::GreetingClear).await {
        Ok(_) => {
            voicemail_page(
                &st,
                &s,
                StatusCode::OK,
                Some("Callers hear the default greeting again."),
                None,
            )
            .await
        }
        Err(e) => voicemail_page(&st, &s, StatusCode::UNPROCESSABLE_ENTITY, None, Some(&e)).await,
    }
}

/// A message's Ogg Opus file, to play in the page.
pub(super) async fn voicemail_audio<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if st.sessions.get(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    }
    let row = match voicemails(&st).await {
        Ok(rows) => rows.into_iter().find(|v| v.id == id),
        Err(e) => return failed(e),
    };
    let Some(row) = row else {
        return (StatusCode::NOT_FOUND, "no such voicemail\n").into_response();
    };
    match tokio::fs::read(&row.path).await {
        Ok(bytes) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"))],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!("voicemail {id}: {}: {e}", row.path);
            (StatusCode::NOT_FOUND, "the message's file is gone\n").into_response()
        }
    }
}
