//! The dashboard and the calls page, with their live parts: the pages
//! redrawn when the gateway's event stream (server-sent events) says
//! something changed.

use super::*;

/// What the dashboard shows.
pub struct DashData {
    office_number: String,
    uplink: String,
    uplink_error: Option<String>,
    stations_online: usize,
    calls: Vec<CallInfo>,
    disk: String,
    version: String,
    uptime: String,
    csrf: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    d: DashData,
}

#[derive(Template)]
#[template(path = "dashboard_live.html")]
struct DashboardLive {
    d: DashData,
}

#[derive(Template)]
#[template(path = "calls.html")]
struct CallsPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    d: DashData,
}

#[derive(Template)]
#[template(path = "calls_table.html")]
struct CallsLive {
    d: DashData,
}

fn bytes_words(b: u64) -> String {
    const G: f64 = 1024.0 * 1024.0 * 1024.0;
    if b as f64 >= G {
        format!("{:.1} GiB", b as f64 / G)
    } else {
        format!("{} MiB", b / (1024 * 1024))
    }
}

async fn dash_data<O: Office>(st: &AdminState<O>, s: &Session) -> Result<DashData, String> {
    let status = match st.office.dispatch(Request::Status).await? {
        ApiResponse::Status(s) => s,
        _ => return Err("unexpected reply to status".into()),
    };
    let calls = match st.office.dispatch(Request::Calls).await? {
        ApiResponse::Calls { calls } => calls,
        _ => return Err("unexpected reply to calls".into()),
    };
    let dir = &status.directory;
    let up = status.uptime_s;
    Ok(DashData {
        office_number: dir["numbers"][0]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "none".into()),
        uplink: dir["state"].as_str().unwrap_or("off").to_string(),
        uplink_error: dir["last_error"].as_str().map(str::to_string),
        stations_online: status.stations_online,
        calls,
        disk: status
            .disk
            .as_ref()
            .and_then(|d| d["free_bytes"].as_u64())
            .map(bytes_words)
            .unwrap_or_else(|| "-".into()),
        version: status.version.clone(),
        uptime: format!(
            "{}d {}h {}m",
            up / 86_400,
            up % 86_400 / 3600,
            up % 3600 / 60
        ),
        csrf: s.csrf.clone(),
    })
}

pub(super) async fn dashboard<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match dash_data(&st, &s).await {
        Ok(d) => html(
            StatusCode::OK,
            DashboardPage {
                title: "Dashboard",
                here: "dashboard",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                d,
            },
        ),
        Err(e) => failed(e),
    }
}

pub(super) async fn calls<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match dash_data(&st, &s).await {
        Ok(d) => html(
            StatusCode::OK,
            CallsPage {
                title: "Live calls",
                here: "calls",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                d,
            },
        ),
        Err(e) => failed(e),
    }
}

pub(super) async fn hangup<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = checked_form(&st, &headers, &form) {
        return r;
    }
    let Some(call) = field(&form, "call").and_then(|c| c.parse::<u64>().ok()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Hang up",
            "Which call? The form named none.",
        );
    };
    match st.office.dispatch(Request::Hangup { call }).await {
        Ok(_) => Redirect::to(back(&form)).into_response(),
        Err(e) => message(StatusCode::CONFLICT, "Hang up", &e),
    }
}

pub(super) async fn live<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Path(part): Path<String>,
) -> Response {
    let Some(s) = st.sessions.get(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    };
    let r = match part.as_str() {
        "dashboard" => dash_data(&st, &s)
            .await
            .map(|d| html(StatusCode::OK, DashboardLive { d })),
        "calls" => dash_data(&st, &s)
            .await
            .map(|d| html(StatusCode::OK, CallsLive { d })),
        "stations" => stations::live_part(&st, &s).await,
        "dialplan" => dialplan::live_part(&st, &s).await,
        _ => return (StatusCode::NOT_FOUND, "no such part\n").into_response(),
    };
    r.unwrap_or_else(failed)
}

pub(super) async fn events<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    if st.sessions.get(&headers).is_none() {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    }
    keyline_web::sse::from_broadcast(st.office.events()).into_response()
}
