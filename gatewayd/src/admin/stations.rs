//! The stations page: stations waiting for approval (approve, deny) and
//! the enrolled ones (revoke, change extension), refusals shown next to
//! their row's field.

use super::*;

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

/// The stations page's live part.
pub(super) async fn live_part<O: Office>(
    st: &AdminState<O>,
    s: &Session,
) -> Result<Response, String> {
    stations_data(st, s)
        .await
        .map(|s| html(StatusCode::OK, StationsLive { s }))
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

pub(super) async fn stations<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
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

pub(super) async fn approve<O: Office>(
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

pub(super) async fn deny<O: Office>(
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

pub(super) async fn revoke<O: Office>(
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

pub(super) async fn set_extension<O: Office>(
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
