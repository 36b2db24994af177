//! The call history page (`/account/calls`): this account's calls as the
//! directory saw them, newest first, a page at a time. Entries come from
//! the store (`Store::calls`), which only ever gives the account's own.

use askama::Template;
use axum::extract::{Query as UrlQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::session::SignedIn;
use super::text::Text;
use super::{failed, render, utc, App, Page};
use crate::store::{self, CallEntry, CallOutcome};

/// Calls shown on one page.
pub(super) const PAGE: u32 = 25;
/// Pages beyond this are not served (the history is bounded anyway).
const MAX_PAGE: u32 = 10_000;

#[derive(Template)]
#[template(path = "calls.html")]
struct CallsT {
    p: Page,
    calls: Vec<CallView>,
    /// Links to the neighbouring pages, when there are any.
    newer: Option<String>,
    older: Option<String>,
}

struct CallView {
    time: String,
    direction: &'static str,
    other: String,
    result: String,
    duration: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PageQuery {
    page: Option<u32>,
}

/// `ms` as `M:SS` (or `H:MM:SS`).
fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// What the Result column says about `c`.
fn result(t: &Text, c: &CallEntry) -> String {
    let mut r = match c.outcome {
        CallOutcome::Answered => t.outcome_answered.to_string(),
        CallOutcome::Declined => t.outcome_declined.to_string(),
        CallOutcome::Busy => t.outcome_busy.to_string(),
        CallOutcome::NoAnswer if !c.outgoing => t.outcome_missed.to_string(),
        CallOutcome::NoAnswer => t.outcome_no_answer.to_string(),
        CallOutcome::Cancelled if !c.outgoing => t.outcome_missed.to_string(),
        CallOutcome::Cancelled => t.outcome_cancelled.to_string(),
        CallOutcome::Offline => t.outcome_offline.to_string(),
        CallOutcome::UnknownNumber => t.outcome_unknown.to_string(),
        CallOutcome::Forwarded => t.outcome_forwarded.to_string(),
        CallOutcome::Failed => t.outcome_failed.to_string(),
    };
    if let Some(to) = &c.forwarded_to {
        if c.outcome == CallOutcome::Forwarded {
            r = format!("{r} {to}");
        } else {
            r = format!("{r} → {to}");
        }
    }
    if c.relayed == Some(true) {
        r = format!("{r} ({})", t.via_relay);
    }
    r
}

fn view(t: &Text, c: &CallEntry) -> CallView {
    CallView {
        time: utc(c.started_ms),
        direction: if c.outgoing { t.dir_out } else { t.dir_in },
        other: c.other_number.clone(),
        result: result(t, c),
        duration: c.duration_ms.map(duration).unwrap_or_else(|| "-".into()),
    }
}

pub(super) async fn calls(
    State(web): State<App>,
    SignedIn { lang, session, .. }: SignedIn,
    UrlQuery(q): UrlQuery<PageQuery>,
) -> Response {
    let t = Text::of(lang);
    let page = q.page.unwrap_or(0).min(MAX_PAGE);
    let user = session.user.clone();
    // One more than a page: whether there is an older one.
    let found = store::blocking(&web.shared.store, move |s| {
        s.calls(&user, page * PAGE, PAGE + 1)
    })
    .await;
    let mut entries = match found {
        Ok(e) => e,
        Err(e) => return failed(lang, e),
    };
    let more = entries.len() > PAGE as usize;
    entries.truncate(PAGE as usize);
    let link = |n: u32| format!("/account/calls?page={n}");
    render(
        StatusCode::OK,
        &CallsT {
            p: Page::new(lang, t.call_history, Some(&session), "/account/calls"),
            calls: entries.iter().map(|c| view(t, c)).collect(),
            newer: (page > 0).then(|| link(page - 1)),
            older: more.then(|| link(page + 1)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyline_web::Lang;

    fn entry(outgoing: bool, outcome: CallOutcome) -> CallEntry {
        CallEntry {
            account: "a".into(),
            outgoing,
            own_number: "1".into(),
            other_number: "2".into(),
            started_ms: 0,
            answered: outcome == CallOutcome::Answered,
            outcome,
            forwarded_to: None,
            duration_ms: None,
            relayed: None,
        }
    }

    #[test]
    fn results_and_durations_read_as_people_expect() {
        let t = Text::of(Lang::En);
        assert_eq!(duration(1_400), "0:01");
        assert_eq!(duration(61_000), "1:01");
        assert_eq!(duration(3_723_000), "1:02:03");
        assert_eq!(duration(-5), "0:00");
        assert_eq!(result(t, &entry(false, CallOutcome::Cancelled)), "Missed");
        assert_eq!(result(t, &entry(true, CallOutcome::Cancelled)), "Cancelled");
        let mut f = entry(true, CallOutcome::Forwarded);
        f.forwarded_to = Some("3003".into());
        assert_eq!(result(t, &f), "Forwarded to 3003");
        let mut a = entry(true, CallOutcome::Answered);
        a.relayed = Some(true);
        assert_eq!(result(t, &a), "Answered (through the relay)");
        let ko = Text::of(Lang::Ko);
        assert_eq!(result(ko, &entry(false, CallOutcome::NoAnswer)), "부재중");
    }
}
