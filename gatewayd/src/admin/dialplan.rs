//! The dial plan page: the extension range (set here, else the
//! configuration file's) and the office mailbox, reception (the ring group
//! for the office number), the ring groups with extensions of their own
//! (a live part: it follows the event stream), speed dials, forwarding and
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

/// One ring group with an extension of its own, as the page lists it.
pub struct GroupRow {
    ext: String,
    name: String,
    members: String,
    how: String,
    mailbox: String,
}

/// The ring group form: empty to add one, filled to change one, or as
/// typed when it was refused, with each refusal next to its field.
#[derive(Default)]
pub struct GroupForm {
    /// The extension of the group being changed (empty: a new group).
    editing: String,
    ext: String,
    name: String,
    members: String,
    mode: String,
    step: String,
    mailbox: String,
    err_ext: Option<String>,
    err_name: Option<String>,
    err_members: Option<String>,
    err_mode: Option<String>,
    err_step: Option<String>,
    err_mailbox: Option<String>,
    /// A refusal about no one field (e.g. the group went away).
    err_other: Option<String>,
}

/// The dial plan's live part: the extension range and the ring groups.
#[derive(Default)]
pub struct DialPlanLive {
    /// The extension range, as `201-499`.
    ext_range: String,
    /// Where it comes from, in words.
    ext_range_source: String,
    groups: Vec<GroupRow>,
    csrf: String,
}

#[derive(Default)]
pub struct DialPlanData {
    csrf: String,
    /// The range and the groups (the page's live part).
    live: DialPlanLive,
    /// The range form's fields, as shown (the range in force, or as typed
    /// when refused).
    range_lo: String,
    range_hi: String,
    range_set_here: bool,
    err_range: Option<String>,
    group: GroupForm,
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
    /// The live part (`dialplan_live.html` is included as it is served
    /// alone, with `live`).
    live: DialPlanLive,
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
    let live = live_data(&status, s);
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
        range_set_here: status.extension_range_source == "set-here",
        live,
        range_lo: lo.to_string(),
        range_hi: hi.to_string(),
        group: GroupForm {
            mode: "all".into(),
            step: "15".into(),
            ..GroupForm::default()
        },
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

/// The live part's data from `status`.
fn live_data(status: &crate::api::Status, s: &Session) -> DialPlanLive {
    let [lo, hi] = status.extension_range;
    DialPlanLive {
        ext_range: format!("{lo}-{hi}"),
        ext_range_source: match status.extension_range_source.as_str() {
            "set-here" => "set here".into(),
            _ => "in the configuration file (extension_range)".into(),
        },
        groups: status
            .ring_groups
            .iter()
            .map(|g| GroupRow {
                ext: g.ext.clone(),
                name: g.name.clone(),
                members: g.group.members.join(", "),
                how: if g.group.mode == "hunt" {
                    format!("in turn, {} s each", g.group.step_secs)
                } else {
                    "all at once".into()
                },
                mailbox: g.group.mailbox.clone().unwrap_or_default(),
            })
            .collect(),
        csrf: s.csrf.clone(),
    }
}

/// The dial plan's live part alone (`/live/dialplan`).
pub(super) async fn live_part<O: Office>(
    st: &AdminState<O>,
    s: &Session,
) -> Result<Response, String> {
    let status = match st.office.dispatch(Request::Status).await? {
        ApiResponse::Status(s) => s,
        _ => return Err("unexpected reply to status".into()),
    };
    Ok(html(
        StatusCode::OK,
        DialPlanLivePart {
            live: live_data(&status, s),
        },
    ))
}

#[derive(Template)]
#[template(path = "dialplan_live.html")]
struct DialPlanLivePart {
    live: DialPlanLive,
}

/// The ring group form's members and office mailbox, as typed.
type RgTyped = (String, String);

/// Which part of the dial plan page a refusal belongs next to.
enum DpPart {
    RingGroup,
    /// A ring group with an extension of its own: the form as typed.
    Group(HashMap<String, String>),
    /// The extension range form, as typed.
    Range(HashMap<String, String>),
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
            DpPart::Group(form) => group_error(&mut d.group, &form, e),
            DpPart::Range(form) => {
                d.range_lo = form.get("lo").cloned().unwrap_or_default();
                d.range_hi = form.get("hi").cloned().unwrap_or_default();
                d.err_range = Some(e);
            }
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
            live: std::mem::take(&mut d.live),
            dp: d,
        },
    )
}

/// The group form filled with what was typed, the refusal next to the
/// field it names first (`Extension:`, `Name:`, …).
fn group_error(g: &mut GroupForm, form: &HashMap<String, String>, e: String) {
    let typed = |k: &str| form.get(k).cloned().unwrap_or_default();
    g.editing = typed("editing");
    g.ext = if g.editing.is_empty() {
        typed("ext")
    } else {
        g.editing.clone()
    };
    g.name = typed("name");
    g.members = typed("members");
    g.mode = typed("mode");
    g.step = typed("step_secs");
    g.mailbox = typed("mailbox");
    let slot = if e.starts_with("Extension:") {
        &mut g.err_ext
    } else if e.starts_with("Name:") {
        &mut g.err_name
    } else if e.starts_with("Members:") {
        &mut g.err_members
    } else if e.starts_with("How the group rings:") {
        &mut g.err_mode
    } else if e.starts_with("Seconds per member:") {
        &mut g.err_step
    } else if e.starts_with("Mailbox:") {
        &mut g.err_mailbox
    } else {
        &mut g.err_other
    };
    *slot = Some(e);
}

/// `?edit=EXT`: the group form filled with that group, to change it.
#[derive(serde::Deserialize, Default)]
pub(super) struct EditQuery {
    #[serde(default)]
    edit: Option<String>,
}

pub(super) async fn dialplan<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Query(q): Query<EditQuery>,
) -> Response {
    let s = match session_or_login(&st, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(ext) = q.edit.filter(|e| !e.is_empty()) else {
        return dialplan_page(&st, &s, None, None).await;
    };
    let status = match st.office.dispatch(Request::Status).await {
        Ok(ApiResponse::Status(s)) => s,
        Ok(_) => return failed("unexpected reply to status".into()),
        Err(e) => return failed(e),
    };
    let Some(g) = status.ring_groups.iter().find(|g| g.ext == ext) else {
        return dialplan_page(
            &st,
            &s,
            None,
            Some((
                DpPart::Group(HashMap::new()),
                format!("There is no ring group {ext}."),
                None,
            )),
        )
        .await;
    };
    let mut form = HashMap::new();
    form.insert("editing".to_string(), g.ext.clone());
    form.insert("name".to_string(), g.name.clone());
    form.insert("members".to_string(), g.group.members.join(", "));
    form.insert("mode".to_string(), g.group.mode.clone());
    form.insert("step_secs".to_string(), g.group.step_secs.to_string());
    form.insert(
        "mailbox".to_string(),
        g.group.mailbox.clone().unwrap_or_default(),
    );
    let mut d = match dialplan_data(&st, &s).await {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    group_error(&mut d.group, &form, String::new());
    d.group.err_other = None;
    html(
        StatusCode::OK,
        DialPlanPage {
            title: "Dial plan",
            here: "dialplan",
            csrf: Some(&s.csrf),
            notice: None,
            error: None,
            live: std::mem::take(&mut d.live),
            dp: d,
        },
    )
}

/// The members field: extensions separated by commas or spaces.
fn members_typed(form: &HashMap<String, String>) -> Vec<String> {
    form.get("members")
        .map(|m| {
            m.split([',', ' '])
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Add a ring group (`editing` empty) or change the one being edited.
pub(super) async fn dp_group<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let step = match field(&form, "step_secs") {
        None => Ok(15),
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| format!("Seconds per member: {s:?} is not a number")),
    };
    let editing = field(&form, "editing");
    let name = form.get("name").cloned().unwrap_or_default();
    let mode = field(&form, "mode").unwrap_or_else(|| "all".into());
    let (members, mailbox) = (members_typed(&form), field(&form, "mailbox"));
    let done = match &editing {
        Some(e) => format!("Ring group {e} saved."),
        None => "Ring group added.".to_string(),
    };
    let req = step.map(|step_secs| match editing {
        Some(ext) => Request::RingGroupEdit {
            ext,
            name: Some(name),
            mode,
            step_secs,
            members,
            mailbox,
        },
        None => Request::RingGroupAdd {
            ext: form.get("ext").cloned().unwrap_or_default(),
            name,
            mode,
            step_secs,
            members,
            mailbox,
        },
    });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::Group(HashMap::new()),
        req,
        &done,
    )
    .await
}

pub(super) async fn dp_group_rm<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let req = need(&form, "ext", "The extension").map(|ext| Request::RingGroupRemove { ext });
    let done = format!(
        "Ring group {} removed.",
        form.get("ext").map(|e| e.trim()).unwrap_or_default()
    );
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::Group(HashMap::new()),
        req,
        &done,
    )
    .await
}

pub(super) async fn dp_range<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let bound = |k: &str, what: &str| -> Result<u32, String> {
        let v = field(&form, k).ok_or_else(|| format!("{what}: give a number"))?;
        v.parse::<u32>()
            .map_err(|_| format!("{what}: {v:?} is not a number"))
    };
    let req = bound("lo", "Lowest").and_then(|lo| {
        Ok(Request::ExtensionRangeSet {
            lo,
            hi: bound("hi", "Highest")?,
        })
    });
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::Range(HashMap::new()),
        req,
        "Extension range saved.",
    )
    .await
}

pub(super) async fn dp_range_clear<O: Office>(
    State(st): St<O>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    dp_change(
        &st,
        &headers,
        &form,
        DpPart::Range(HashMap::new()),
        Ok(Request::ExtensionRangeClear),
        "The configuration file's extension range applies again.",
    )
    .await
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
    let typed = form
        .get("members")
        .filter(|_| matches!(part, DpPart::RingGroup))
        .map(|m| {
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
        DpPart::Group(_) => DpPart::Group(form.clone()),
        DpPart::Range(_) => DpPart::Range(form.clone()),
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
    let members = members_typed(&form);
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
