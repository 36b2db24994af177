//! The dial plan page: the extension range and the office mailbox (the
//! configuration file's), reception (the ring group for the office
//! number; the switchboard has exactly one), speed dials, forwarding and
//! do-not-disturb per extension.

use super::*;

#[derive(Default)]
pub struct LineRow {
    ext: String,
    forward_always: String,
    forward_busy: String,
    forward_no_answer: String,
    dnd: bool,
    /// A refusal, next to the field it is about (`err_row`: the row's).
    err_fa: Option<String>,
    err_fb: Option<String>,
    err_fn: Option<String>,
    err_row: Option<String>,
}

#[derive(Default)]
pub struct DialPlanData {
    csrf: String,
    /// The extension range, as `201-499`.
    ext_range: String,
    /// Whose mailbox takes the office number's unanswered calls, and why.
    office_mailbox: String,
    ring_group_now: String,
    rg_members: String,
    rg_mode: String,
    rg_step: String,
    /// The office mailbox set with the ring group (empty: not set here).
    rg_mailbox: String,
    speed_dials: Vec<crate::api::SpeedDial>,
    lines: Vec<LineRow>,
    err_ring_group: Option<String>,
    err_speed_dial: Option<String>,
    /// The speed dial form as typed, when it was refused.
    sd_code: String,
    sd_number: String,
    /// A line-settings refusal for no row on the page.
    err_lines: Option<String>,
}

#[derive(Template)]
#[template(path = "dialplan.html")]
struct DialPlanPage<'a> {
    title: &'a str,
    here: &'a str,
    csrf: Option<&'a str>,
    notice: Option<&'a str>,
    error: Option<&'a str>,
    dp: DialPlanData,
}

pub(super) async fn dialplan_data<O: Office>(
    st: &AdminState<O>,
    s: &Session,
) -> Result<DialPlanData, String> {
    let status = match st.office.dispatch(Request::Status).await? {
        ApiResponse::Status(s) => s,
        _ => return Err("unexpected reply to status".into()),
    };
    let speed_dials = match st.office.dispatch(Request::SpeedDialList).await? {
        ApiResponse::SpeedDials { speed_dials } => speed_dials,
        _ => return Err("unexpected reply to speed-dial-list".into()),
    };
    let lines = match st.office.dispatch(Request::LineSettings).await? {
        ApiResponse::LineSettings { lines } => lines,
        _ => return Err("unexpected reply to line-settings".into()),
    };
    let rg = &status.ring_group;
    let members: Vec<String> = match &rg["members"] {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mode = rg["mode"].as_str().unwrap_or("all").to_string();
    let step = rg["step_secs"].as_u64().unwrap_or(15);
    let who = if members.is_empty() {
        "every extension".to_string()
    } else {
        members.join(", ")
    };
    let how = if mode == "hunt" {
        format!("in turn, {step} s each")
    } else {
        "all at once".into()
    };
    let from = match rg["source"].as_str() {
        Some("ring-group") => "set here",
        _ => "from the configuration file",
    };
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let [lo, hi] = status.extension_range;
    let office_mailbox = match (
        rg["office_mailbox"].as_str(),
        rg["office_mailbox_source"].as_str(),
    ) {
        (Some(m), Some("ring-group")) => format!("extension {m} (set here, with reception)"),
        (Some(m), Some("config")) => format!("extension {m} (office_mailbox in the configuration file)"),
        (Some(m), _) => format!("extension {m} (the first of reception)"),
        (None, _) => "none: unanswered calls to the office number get no voicemail (set office_mailbox or reception in the configuration file)".into(),
    };
    Ok(DialPlanData {
        csrf: s.csrf.clone(),
        ext_range: format!("{lo}-{hi}"),
        office_mailbox,
        ring_group_now: format!("{who} ring {how} ({from})."),
        rg_members: members.join(", "),
        rg_mode: mode,
        rg_step: step.to_string(),
        rg_mailbox: match rg["office_mailbox_source"].as_str() {
            Some("ring-group") => rg["office_mailbox"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        },
        speed_dials,
        lines: lines
            .iter()
            .map(|l| LineRow {
                ext: l.ext.clone(),
                forward_always: opt(&l.settings.forward_always),
                forward_busy: opt(&l.settings.forward_busy),
                forward_no_answer: opt(&l.settings.forward_no_answer),
                dnd: l.settings.dnd,
                ..LineRow::default()
            })
            .collect(),
        ..DialPlanData::default()
    })
}

/// The ring group form's members and office mailbox, as typed.
type RgTyped = (String, String);

/// Which part of the dial plan page a refusal belongs next to.
enum DpPart {
    RingGroup,
    /// The speed dial form: what was typed in it.
    SpeedDial(HashMap<String, String>),
    /// One extension's forwarding: the form as typed.
    Line(HashMap<String, String>),
}

/// Put a refused line-settings change next to its field (by the
/// dispatcher's field name at the start of the refusal), with what was
/// typed in that row.
fn line_error(d: &mut DialPlanData, form: &HashMap<String, String>, e: String) {
    let ext = form.get("ext").map(|x| x.trim()).unwrap_or_default();
    let Some(row) = d.lines.iter_mut().find(|l| l.ext == ext) else {
        // No such row (the extension went away): above the table.
        d.err_lines = Some(e);
        return;
    };
    let typed = |k: &str| form.get(k).cloned().unwrap_or_default();
    row.forward_always = typed("forward_always");
    row.forward_busy = typed("forward_busy");
    row.forward_no_answer = typed("forward_no_answer");
    row.dnd = form.get("dnd").is_some_and(|v| v == "on");
    if e.starts_with("Forward always:") {
        row.err_fa = Some(e);
    } else if e.starts_with("Forward when busy:") {
        row.err_fb = Some(e);
    } else if e.starts_with("Forward on no answer:") {
        row.err_fn = Some(e);
    } else {
        row.err_row = Some(e);
    }
}

async fn dialplan_page<O: Office>(
    st: &AdminState<O>,
    s: &Session,
    notice: Option<&str>,
    error: Option<(DpPart, String, Option<RgTyped>)>,
) -> Response {
    let mut d = match dialplan_data(st, s).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    if let Some((part, e, typed)) = error {
        match part {
            DpPart::RingGroup => {
                d.err_ring_group = Some(e);
                if let Some((members, mailbox)) = typed {
                    d.rg_members = members;
                    d.rg_mailbox = mailbox;
                }
            }
            DpPart::SpeedDial(form) => {
                d.err_speed_dial = Some(e);
                d.sd_code = form.get("code").cloned().unwrap_or_default();
                d.sd_number = form.get("number").cloned().unwrap_or_default();
            }
            DpPart::Line(form) => line_error(&mut d, &form, e),
        }
    }
    html(
        status,
        DialPlanPage {
            title: "Dial plan",
            here: "dialplan",
            csrf: Some(&s.csrf),
            notice,
            error: None,
            dp: d,
        },
    )
}

pub(super) async fn dialplan<O: Office>(State(st): St<O>, headers: HeaderMap) -> Response {
    match session_or_login(&st, &headers) {
        Ok(s) => dialplan_page(&st, &s, None, None).await,
        Err(r) => r,
    }
}

/// Carry out a dial-plan form: the page again, with a notice or the
/// refusal next to the form's fields (nothing saved).
async fn dp_change<O: Office>(
    st: &AdminState<O>,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    part: DpPart,
    req: Result<Request, String>,
    done: &str,
) -> Response {
    let s = match checked_form(st, headers, form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let typed = form.get("members").map(|m| {
        let mailbox = form.get("mailbox").cloned().unwrap_or_default();
        (m.clone(), mailbox)
    });
    let result = match req {
        Ok(r) => st.office.dispatch(r).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let part = match part {
        DpPart::Line(_) => DpPart::Line(form.clone()),
        DpPart::SpeedDial(_) => DpPart::SpeedDial(form.clone()),
        other => other,
    };
    match result {
        Ok(()) => dialplan_page(st, &s, Some(done), None).await,
        Err(e) => dialplan_page(st, &s, None, Some((part, e, typed))).await,
    }
}

pub(super) async fn dp_ring_group<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let members: Vec<String> = form
        .get("members")
        .map(|m| {
            m.split([',', ' '])
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let step = match field(&form, "step_secs") {
        None => Ok(15),
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| format!("Seconds each: {s:?} is not a number")),
    };
    let req = step.map(|step_secs| Request::RingGroupSet {
        mode: field(&form, "mode").unwrap_or_else(|| "all".into()),
        step_secs,
        members,
        mailbox: field(&form, "mailbox"),
    });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::RingGroup,
        req,
        "Ring group saved.",
    )
    .await
}

pub(super) async fn dp_ring_group_clear<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let done = "The configuration file's reception rings again.";
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::RingGroup,
        Ok(Request::RingGroupClear),
        done,
    )
    .await
}

pub(super) async fn dp_speed_dial<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let req = need(&form, "code", "The code").and_then(|code| {
        Ok(Request::SpeedDialSet {
            code,
            number: need(&form, "number", "The number")?,
        })
    });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::SpeedDial(HashMap::new()),
        req,
        "Speed dial saved.",
    )
    .await
}

pub(super) async fn dp_speed_dial_rm<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let req = need(&form, "code", "The code").map(|code| Request::SpeedDialRm { code });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::SpeedDial(HashMap::new()),
        req,
        "Speed dial removed.",
    )
    .await
}

pub(super) async fn dp_line<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let req = need(&form, "ext", "The extension").map(|ext| Request::SetLineSettings {
        ext,
        forward_always: field(&form, "forward_always"),
        forward_busy: field(&form, "forward_busy"),
        forward_no_answer: field(&form, "forward_no_answer"),
        dnd: form.get("dnd").is_some_and(|v| v == "on"),
    });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::Line(HashMap::new()),
        req,
        "Saved.",
    )
    .await
}
