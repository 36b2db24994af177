//! The call records: the search form, one record, and the CSV export.

use super::*;

/// The call-record search as the form sends it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CdrQuery {
    #[serde(default)]
    number: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl CdrQuery {
    fn filter(&self) -> Result<CdrFilter, String> {
        let day = |s: &str, what: &str| -> Result<Option<i64>, String> {
            if s.trim().is_empty() {
                return Ok(None);
            }
            csv::day_start_ms(s)
                .map(Some)
                .ok_or_else(|| format!("{what}: {s:?} is not a date (YYYY-MM-DD)"))
        };
        Ok(CdrFilter {
            number: Some(self.number.trim().to_string()).filter(|n| !n.is_empty()),
            outcome: Some(self.outcome.trim().to_string()).filter(|o| !o.is_empty()),
            from_ms: day(&self.from, "From")?,
            // Through the end of the "to" day.
            to_ms: day(&self.to, "To")?.map(|t| t + 86_400_000),
            id: None,
        })
    }

    fn query_string(&self) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        format!(
            "number={}&outcome={}&from={}&to={}",
            enc(&self.number),
            enc(&self.outcome),
            enc(&self.from),
            enc(&self.to)
        )
    }
}

#[derive(Template)]
#[template(path = "cdr.html")]
struct CdrPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    q: CdrQuery,
    query: String,
    outcomes: &'static [&'static str],
    rows: Vec<CdrRow>,
}

#[derive(Template)]
#[template(path = "cdr_one.html")]
struct CdrOnePage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    r: CdrRow,
}

/// Most records a search or an export returns.
const CDR_LIMIT: u32 = 10_000;

async fn search<O: Office>(st: &AdminState<O>, filter: CdrFilter) -> Result<Vec<CdrRow>, String> {
    match st
        .office
        .dispatch(Request::Cdr {
            limit: CDR_LIMIT,
            filter,
        })
        .await?
    {
        ApiResponse::Cdr { cdr } => Ok(cdr),
        _ => Err("unexpected reply to cdr".into()),
    }
}

pub(super) async fn cdr<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Query(q): Query<CdrQuery>,
) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (rows, error) = match q.filter() {
        Ok(f) => match search(&st, f).await {
            Ok(rows) => (rows, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        Err(e) => (Vec::new(), Some(e)),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let query = q.query_string();
    html(
        status,
        CdrPage {
            title: "Call records",
            here: "cdr",
            csrf: Some(&s.csrf),
            notice: None,
            error: error.as_deref(),
            q,
            query,
            outcomes: crate::metrics::OUTCOMES,
            rows,
        },
    )
}

pub(super) async fn cdr_csv<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Query(q): Query<CdrQuery>,
) -> Response {
    if let Err(r) = session_or_login(&st, &headers) {
        return r;
    }
    let rows = match q.filter() {
        Ok(f) => search(&st, f).await,
        Err(e) => Err(e),
    };
    match rows {
        Ok(rows) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"calls.csv\""),
                ),
            ],
            csv::csv(&rows),
        )
            .into_response(),
        Err(e) => message(StatusCode::UNPROCESSABLE_ENTITY, "Export CSV", &e),
    }
}

pub(super) async fn cdr_one<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let filter = CdrFilter {
        id: Some(id),
        ..CdrFilter::default()
    };
    match search(&st, filter).await.map(|mut v| v.pop()) {
        Ok(Some(r)) => html(
            StatusCode::OK,
            CdrOnePage {
                title: "Call record",
                here: "cdr",
                csrf: Some(&s.csrf),
                notice: None,
                error: None,
                r,
            },
        ),
        Ok(None) => message(
            StatusCode::NOT_FOUND,
            "Call record",
            "There is no such call record.",
        ),
        Err(e) => failed(e),
    }
}
