//! The one dispatcher behind the control socket (every CLI subcommand) and
//! the admin site: a typed [`Request`] in, a typed [`Response`] or a
//! sentence for a person out. Changes go to SQLite first, then to the
//! switch task, then out as [`ApiEvent`]s.

use std::sync::Arc;

use keyline_net::control;
use keyline_proto::number;
use serde_json::{json, Value};

use crate::api::{
    parse_request, AgentInfo, CdrFilter, Event as ApiEvent, Request, Response, SpeedDial,
};
use crate::db::{NamedRingGroup, Put, RingGroup};
use crate::shared::{query_switch, Approved, Decision, Event, Query, QueryReply, Shared};

/// A reply for a person: the request did not happen.
pub type Refusal = String;

/// Held while the dial plan's extensions change (a ring group stored, the
/// extension range set, a station given an extension), so that a check
/// and the change it allows are not split by another change, and the
/// switch task hears of changes in the order they were stored.
static DIAL_PLAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serve one control-socket request line (already JSON).
pub async fn handle_control(shared: &Arc<Shared>, req: Value) -> Value {
    match parse_request(req) {
        Ok(r) => match dispatch(shared, r).await {
            Ok(resp) => resp.to_json(),
            Err(e) => control::error(e),
        },
        Err(e) => control::error(e),
    }
}

/// Carry out one request.
pub async fn dispatch(shared: &Arc<Shared>, req: Request) -> Result<Response, Refusal> {
    match req {
        Request::Status => match query_switch(shared, Query::Status).await? {
            QueryReply::Status(mut s) => {
                let has = blocking(shared, |db| db.admin_password()).await?.is_some();
                if let Some(m) = s.admin.as_object_mut() {
                    m.insert("password_set".into(), has.into());
                    if !has {
                        m.insert("hint".into(), crate::admin::OFF_HINT.into());
                    }
                }
                Ok(Response::Status(s))
            }
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::AdminPasswd { hash } => {
            let admin_site = crate::admin::set_password(shared, hash).await?;
            Ok(Response::AdminPassword { admin_site })
        }
        Request::Calls => match query_switch(shared, Query::Calls).await? {
            QueryReply::Calls(calls) => Ok(Response::Calls { calls }),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::Agents => agents(shared).await,
        Request::Cdr { limit, filter } => cdr(shared, limit.min(100_000), filter).await,
        Request::Approve { code, ext, name } => approve(shared, code, ext, name).await,
        Request::Deny { code } => deny(shared, code).await,
        Request::Revoke { ext } => revoke(shared, ext).await,
        Request::SetExtension { ext, new_ext, name } => {
            set_extension(shared, ext, new_ext, name).await
        }
        Request::Hangup { call } => match query_switch(shared, Query::Hangup { call }).await? {
            QueryReply::Done(Ok(())) => Ok(Response::HungUp { call }),
            QueryReply::Done(Err(e)) => Err(e),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::SpeedDialSet { code, number } => speed_dial(shared, code, Some(number)).await,
        Request::SpeedDialRm { code } => speed_dial(shared, code, None).await,
        Request::SpeedDialList => {
            let rows = blocking(shared, |db| db.speed_dials()).await?;
            Ok(Response::SpeedDials {
                speed_dials: rows
                    .into_iter()
                    .map(|(code, number)| SpeedDial { code, number })
                    .collect(),
            })
        }
        Request::RingGroupSet {
            mode,
            step_secs,
            members,
            mailbox,
        } => {
            let group =
                check_ring_group(shared, &mode, step_secs, members, mailbox, &RECEPTION).await?;
            set_ring_group(shared, Some(group)).await
        }
        Request::RingGroupClear => set_ring_group(shared, None).await,
        Request::RingGroupAdd {
            ext,
            name,
            mode,
            step_secs,
            members,
            mailbox,
        } => {
            let asked = GroupAsked {
                ext,
                name: Some(name),
                mode,
                step_secs,
                members,
                mailbox,
            };
            put_ring_group(shared, Put::Add, asked).await
        }
        Request::RingGroupEdit {
            ext,
            name,
            mode,
            step_secs,
            members,
            mailbox,
        } => {
            let asked = GroupAsked {
                ext,
                name,
                mode,
                step_secs,
                members,
                mailbox,
            };
            put_ring_group(shared, Put::Edit, asked).await
        }
        Request::RingGroupRemove { ext } => remove_ring_group(shared, ext).await,
        Request::RingGroupList => Ok(Response::RingGroups {
            ring_groups: blocking(shared, |db| db.ring_groups()).await?,
        }),
        Request::ExtensionRangeSet { lo, hi } => set_extension_range(shared, Some([lo, hi])).await,
        Request::ExtensionRangeClear => set_extension_range(shared, None).await,
        Request::LineSettings => line_settings(shared).await,
        Request::VoicemailList => Ok(Response::Voicemails {
            voicemails: blocking(shared, |db| db.all_voicemails()).await?,
        }),
        Request::GreetingSet { audio } => {
            let dir = shared.state_dir.clone();
            let secs = blocking(shared, move |_| {
                crate::voicemail::store_greeting(&dir, &audio)
            })
            .await?;
            Ok(Response::Greeting {
                greeting_secs: Some(secs),
            })
        }
        Request::GreetingClear => {
            let path = crate::voicemail::greeting_path(&shared.state_dir);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {}: {e}", path.display())),
            }
            Ok(Response::Greeting {
                greeting_secs: None,
            })
        }
        Request::VoicemailDelete { mailbox, id } => {
            let (sh, m) = (shared.clone(), mailbox.clone());
            blocking(shared, move |_| crate::voicemail::delete(&sh, &m, id)).await?;
            // Its station's waiting count changes.
            let _ = shared
                .events
                .send(Event::MessageWaiting {
                    ext: mailbox.clone(),
                })
                .await;
            Ok(Response::Deleted { mailbox, id })
        }
        Request::SetLineSettings {
            ext,
            forward_always,
            forward_busy,
            forward_no_answer,
            dnd,
        } => {
            let target = |t: Option<String>, what: &str| -> Result<Option<String>, Refusal> {
                let Some(t) = t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) else {
                    return Ok(None);
                };
                match number::canonicalize(&t) {
                    Ok(n) if n.starts_with('*') => Err(format!(
                        "{what}: a feature code cannot be a forwarding target"
                    )),
                    Ok(n) if n == ext => Err(format!("{what}: {ext} cannot forward to itself")),
                    Ok(n) => Ok(Some(n)),
                    Err(e) => Err(format!("{what}: {t:?}: {e}")),
                }
            };
            let settings = keyline_proto::msg::LineSettings {
                forward_always: target(forward_always, "Forward always")?,
                forward_busy: target(forward_busy, "Forward when busy")?,
                forward_no_answer: target(forward_no_answer, "Forward on no answer")?,
                dnd,
            };
            set_line_settings(shared, ext, settings).await
        }
    }
}

async fn approved_extensions(shared: &Arc<Shared>) -> Result<Vec<String>, Refusal> {
    Ok(blocking(shared, |db| db.agents())
        .await?
        .into_iter()
        .filter(|a| a.state == "approved")
        .filter_map(|a| a.ext)
        .collect())
}

async fn line_settings(shared: &Arc<Shared>) -> Result<Response, Refusal> {
    let exts = approved_extensions(shared).await?;
    let stored: std::collections::HashMap<String, keyline_proto::msg::LineSettings> =
        blocking(shared, |db| db.all_settings())
            .await?
            .into_iter()
            .collect();
    Ok(Response::LineSettings {
        lines: exts
            .into_iter()
            .map(|ext| crate::api::LineSettingsInfo {
                settings: stored.get(&ext).cloned().unwrap_or_default(),
                ext,
            })
            .collect(),
    })
}

async fn set_line_settings(
    shared: &Arc<Shared>,
    ext: String,
    settings: keyline_proto::msg::LineSettings,
) -> Result<Response, Refusal> {
    let ext = number::canonicalize(&ext).map_err(|e| format!("{ext:?}: {e}"))?;
    if !approved_extensions(shared).await?.contains(&ext) {
        return Err(format!("{ext} is not an extension here"));
    }
    let (e, s) = (ext.clone(), settings.clone());
    blocking(shared, move |db| db.save_settings(&e, &s)).await?;
    match query_switch(
        shared,
        Query::Settings {
            ext: ext.clone(),
            settings: settings.clone(),
        },
    )
    .await?
    {
        QueryReply::Done(Ok(())) => {}
        QueryReply::Done(Err(e)) => return Err(e),
        other => return Err(format!("unexpected answer {other:?}")),
    }
    Ok(Response::LineSettings {
        lines: vec![crate::api::LineSettingsInfo { ext, settings }],
    })
}

/// Run `f` on the database off the event loop.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&crate::db::Db) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Refusal> {
    let db = shared.db.clone();
    match tokio::task::spawn_blocking(move || f(&db)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn agents(shared: &Arc<Shared>) -> Result<Response, Refusal> {
    let online = match query_switch(shared, Query::Online).await? {
        QueryReply::Online(o) => o,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let rows = blocking(shared, |db| {
        let mut rows = db.agents()?;
        rows.extend(db.denied()?);
        Ok(rows)
    })
    .await?;
    let waiting: Vec<String> = shared
        .pending
        .lock()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let agents = rows
        .into_iter()
        .map(|r| {
            let addr = r.ext.as_ref().and_then(|ext| {
                online
                    .iter()
                    .find(|(e, _)| e == ext)
                    .map(|(_, a)| a.clone())
            });
            AgentInfo {
                waiting: waiting.contains(&r.fingerprint),
                online: addr.is_some(),
                addr: addr.or(r.last_addr),
                code: (r.state == "pending").then_some(r.code),
                fingerprint: r.fingerprint,
                ext: r.ext,
                name: r.name,
                state: r.state,
            }
        })
        .collect();
    let discovered: Vec<Value> = shared
        .discovered
        .lock()
        .map(|d| {
            d.values()
                .map(
                    |f| json!({"name": f.fullname, "fingerprint": f.fingerprint, "addrs": f.addrs}),
                )
                .collect()
        })
        .unwrap_or_default();
    Ok(Response::Agents { agents, discovered })
}

async fn cdr(shared: &Arc<Shared>, limit: u32, filter: CdrFilter) -> Result<Response, Refusal> {
    if let Some(o) = &filter.outcome {
        const OUTCOMES: &[&str] = &[
            "answered",
            "busy",
            "unknown",
            "unreachable",
            "no-answer",
            "rejected",
            "cancelled",
            "failed",
            "voicemail",
            "redirected",
        ];
        if !OUTCOMES.contains(&o.as_str()) {
            return Err(format!("outcome {o:?}: use one of {}", OUTCOMES.join(", ")));
        }
    }
    let cdr = blocking(shared, move |db| db.cdr_search(limit, &filter)).await?;
    Ok(Response::Cdr { cdr })
}

/// An extension as the admin typed it: canonical and in the range.
fn extension(shared: &Shared, e: &str) -> Result<String, Refusal> {
    let [lo, hi] = shared.extension_range();
    match number::canonicalize(e) {
        Ok(c) if number::is_extension_like(&c) => {
            if c.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n)) {
                Ok(c)
            } else {
                Err(format!("extension {c} is outside the range {lo}-{hi}"))
            }
        }
        _ => Err(format!("{e:?} is not a valid extension (2 to 6 digits)")),
    }
}

/// A station's name as the admin typed it (none when blank).
fn station_name(name: Option<String>) -> Result<Option<String>, Refusal> {
    let Some(n) = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if n.chars().count() > 64 || n.chars().any(char::is_control) {
        return Err("a name is at most 64 characters, without control characters".into());
    }
    Ok(Some(n))
}

async fn approve(
    shared: &Arc<Shared>,
    code: String,
    ext: Option<String>,
    name: Option<String>,
) -> Result<Response, Refusal> {
    let name = station_name(name)?;
    let plan = DIAL_PLAN.lock().await;
    let ext = match ext.filter(|e| !e.trim().is_empty()) {
        Some(e) => Some(extension(shared, &e)?),
        None => None,
    };
    let [lo, hi] = shared.extension_range();
    let row = blocking(shared, move |db| {
        db.approve(&code, ext.as_deref(), name.as_deref(), (lo, hi))
    })
    .await?;
    drop(plan);
    let Some(ext) = row.ext.clone() else {
        return Err("approval stored no extension".into());
    };
    let _ = shared
        .events
        .send(Event::AddLine { ext: ext.clone() })
        .await;
    shared.publisher.publish(&ApiEvent::EnrolmentApproved {
        fingerprint: row.fingerprint.clone(),
        ext: ext.clone(),
        name: row.name.clone(),
    });
    let waiter = shared
        .pending
        .lock()
        .ok()
        .and_then(|mut p| p.remove(&row.fingerprint));
    shared.pending_changed();
    if let Some(w) = waiter {
        let _ = w.send(Decision::Approved(Approved {
            ext: ext.clone(),
            name: row.name.clone(),
        }));
    }
    Ok(Response::Approved {
        ext,
        name: row.name,
        fingerprint: row.fingerprint,
    })
}

async fn deny(shared: &Arc<Shared>, code: String) -> Result<Response, Refusal> {
    let c = code.clone();
    let fingerprint = blocking(shared, move |db| db.deny(&c)).await?;
    shared.publisher.publish(&ApiEvent::EnrolmentDenied {
        fingerprint: fingerprint.clone(),
        code,
    });
    let waiter = shared
        .pending
        .lock()
        .ok()
        .and_then(|mut p| p.remove(&fingerprint));
    shared.pending_changed();
    if let Some(w) = waiter {
        let _ = w.send(Decision::Denied);
    }
    Ok(Response::Denied { fingerprint })
}

async fn revoke(shared: &Arc<Shared>, ext: String) -> Result<Response, Refusal> {
    let e = ext.clone();
    let plan = DIAL_PLAN.lock().await;
    let (fingerprint, touched) = blocking(shared, move |db| db.revoke(&e)).await?;
    groups_touched(shared, touched).await;
    drop(plan);
    let why = "this station's extension was revoked";
    match query_switch(
        shared,
        Query::DropLine {
            ext: ext.clone(),
            why,
        },
    )
    .await?
    {
        QueryReply::Done(Ok(())) => {}
        QueryReply::Done(Err(e)) => return Err(e),
        other => return Err(format!("unexpected answer {other:?}")),
    }
    shared.publisher.publish(&ApiEvent::StationRevoked {
        fingerprint: fingerprint.clone(),
        ext: ext.clone(),
    });
    Ok(Response::Revoked { ext, fingerprint })
}

async fn set_extension(
    shared: &Arc<Shared>,
    ext: String,
    new_ext: Option<String>,
    name: Option<String>,
) -> Result<Response, Refusal> {
    let old = number::canonicalize(&ext).map_err(|e| format!("{ext:?}: {e}"))?;
    let new_ext = match new_ext.filter(|e| !e.trim().is_empty()) {
        Some(e) => Some(extension(shared, &e)?),
        None => None,
    };
    let name = station_name(name)?;
    if new_ext.is_none() && name.is_none() {
        return Err("give a new extension or a new name".into());
    }
    let plan = DIAL_PLAN.lock().await;
    let [lo, hi] = shared.extension_range();
    let (o, n, nm) = (old.clone(), new_ext.clone(), name.clone());
    let (row, touched) = blocking(shared, move |db| {
        db.set_extension(&o, n.as_deref(), nm.as_deref(), (lo, hi))
    })
    .await?;
    groups_touched(shared, touched).await;
    drop(plan);
    let Some(now_ext) = row.ext.clone() else {
        return Err("the station has no extension".into());
    };
    // The station reconnects and registers as what it is now.
    let why = "this station's extension or name changed";
    query_switch(
        shared,
        Query::DropLine {
            ext: old.clone(),
            why,
        },
    )
    .await?;
    let _ = shared
        .events
        .send(Event::AddLine {
            ext: now_ext.clone(),
        })
        .await;
    shared.publisher.publish(&ApiEvent::StationChanged {
        fingerprint: row.fingerprint.clone(),
        old_ext: old,
        ext: now_ext.clone(),
        name: row.name.clone(),
    });
    Ok(Response::Changed {
        ext: now_ext,
        name: row.name,
        fingerprint: row.fingerprint,
    })
}

/// Is `code` a short code: `*0`–`*9` or `**00`–`**99`?
pub fn is_speed_dial_code(code: &str) -> bool {
    let b = code.as_bytes();
    matches!(b, [b'*', d] if d.is_ascii_digit())
        || matches!(b, [b'*', b'*', d1, d2] if d1.is_ascii_digit() && d2.is_ascii_digit())
}

async fn speed_dial(
    shared: &Arc<Shared>,
    code: String,
    number: Option<String>,
) -> Result<Response, Refusal> {
    if !is_speed_dial_code(&code) {
        return Err(format!("{code:?} is not a short code (*0-*9 or **00-**99)"));
    }
    if code == "*8" {
        return Err("*8 is reserved for call pick-up".into());
    }
    let number = match number {
        Some(n) => match number::canonicalize(&n) {
            Ok(n) if !n.starts_with('*') => Some(n),
            Ok(_) => return Err("a short code cannot point at a feature code".into()),
            Err(e) => return Err(format!("{n:?}: {e}")),
        },
        None => None,
    };
    let (c, n) = (code.clone(), number.clone());
    let existed = blocking(shared, move |db| db.set_speed_dial(&c, n.as_deref())).await?;
    if !existed && number.is_none() {
        return Err(format!("no short code {code}"));
    }
    let _ = shared
        .events
        .send(Event::SpeedDial {
            code: code.clone(),
            number: number.clone(),
        })
        .await;
    Ok(Response::SpeedDial { code, number })
}

/// How refusals about a ring group's fields begin: for reception as the
/// `ring-group set` command has always said them, for the other groups
/// with the name of the admin site's field they are about.
struct Labels {
    mode: &'static str,
    step: &'static str,
    members: &'static str,
    mailbox: &'static str,
}

const RECEPTION: Labels = Labels {
    mode: "mode",
    step: "--step must be",
    members: "",
    mailbox: "office mailbox: ",
};

const GROUP: Labels = Labels {
    mode: "How the group rings:",
    step: "Seconds per member: must be",
    members: "Members: ",
    mailbox: "Mailbox: ",
};

/// A ring group as asked for, checked: every member an approved
/// extension, named once; the mailbox, if given, an approved extension.
async fn check_ring_group(
    shared: &Arc<Shared>,
    mode: &str,
    step: u64,
    raw: Vec<String>,
    mailbox: Option<String>,
    l: &Labels,
) -> Result<RingGroup, Refusal> {
    if mode != "all" && mode != "hunt" {
        return Err(format!("{} {mode:?}: use all or hunt", l.mode));
    }
    if !(1..=600).contains(&step) {
        return Err(format!("{} between 1 and 600 seconds", l.step));
    }
    if raw.is_empty() {
        return Err(format!(
            "{}name the extensions that ring, in order",
            l.members
        ));
    }
    let known: Vec<String> = blocking(shared, |db| db.agents())
        .await?
        .into_iter()
        .filter(|a| a.state == "approved")
        .filter_map(|a| a.ext)
        .collect();
    let mut members = Vec::new();
    let lm = l.members;
    for m in raw {
        let ext = number::canonicalize(&m).map_err(|e| format!("{lm}{m:?}: {e}"))?;
        if !known.contains(&ext) {
            return Err(format!("{lm}{ext} is not an extension here"));
        }
        if members.contains(&ext) {
            return Err(format!("{lm}{ext} is named twice"));
        }
        members.push(ext);
    }
    let lb = l.mailbox;
    let mailbox = match mailbox
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
    {
        None => None,
        Some(m) => {
            let ext = number::canonicalize(&m).map_err(|e| format!("{lb}{m:?}: {e}"))?;
            if !known.contains(&ext) {
                return Err(format!("{lb}{ext} is not an extension here"));
            }
            Some(ext)
        }
    };
    Ok(RingGroup {
        mode: mode.to_string(),
        members,
        step_secs: step,
        mailbox,
    })
}

async fn set_ring_group(
    shared: &Arc<Shared>,
    group: Option<RingGroup>,
) -> Result<Response, Refusal> {
    let g2 = group.clone();
    blocking(shared, move |db| db.set_ring_group(g2.as_ref())).await?;
    let _ = shared
        .events
        .send(Event::RingGroup {
            group: group.clone(),
        })
        .await;
    Ok(Response::RingGroup { ring_group: group })
}

/// A ring group with an extension of its own, as asked for.
struct GroupAsked {
    ext: String,
    /// None: keep the name it has (an edit).
    name: Option<String>,
    mode: String,
    step_secs: u64,
    members: Vec<String>,
    mailbox: Option<String>,
}

/// A ring group's name as the admin typed it.
fn group_name(name: &str) -> Result<String, Refusal> {
    let n = name.trim();
    if n.is_empty() {
        return Err("Name: a ring group needs a name".into());
    }
    if n.chars().count() > 64 || n.chars().any(char::is_control) {
        return Err("Name: at most 64 characters, without control characters".into());
    }
    Ok(n.to_string())
}

/// Add or change a ring group with an extension of its own: the name, the
/// members and the mailbox checked here; the extension (no station's, in
/// the range, free or the group's own) checked and stored in one
/// transaction. Then the switch task and subscribers hear of it.
async fn put_ring_group(
    shared: &Arc<Shared>,
    how: Put,
    asked: GroupAsked,
) -> Result<Response, Refusal> {
    let name = match (&asked.name, how) {
        (Some(n), _) => Some(group_name(n)?),
        (None, Put::Add) => return Err("Name: a ring group needs a name".into()),
        (None, Put::Edit) => None,
    };
    let raw = asked.ext.trim();
    let ext = match number::canonicalize(raw) {
        Ok(c) if number::is_extension_like(&c) => c,
        _ if raw.is_empty() => return Err("Extension: give the group's extension".into()),
        _ => {
            return Err(format!(
                "Extension: {raw:?} is not a valid extension (2 to 6 digits)"
            ))
        }
    };
    // Held from the member checks to the write, so a station renumbered
    // or revoked in between cannot leave a member that no longer exists.
    let plan = DIAL_PLAN.lock().await;
    let group = check_ring_group(
        shared,
        &asked.mode,
        asked.step_secs,
        asked.members,
        asked.mailbox,
        &GROUP,
    )
    .await?;
    let name = match name {
        Some(n) => n,
        None => {
            let groups = blocking(shared, |db| db.ring_groups()).await?;
            match groups.into_iter().find(|g| g.ext == ext) {
                Some(g) => g.name,
                None => return Err(format!("Extension: there is no ring group {ext}")),
            }
        }
    };
    let stored = NamedRingGroup { ext, name, group };
    let [lo, hi] = shared.extension_range();
    let g = stored.clone();
    blocking(shared, move |db| db.put_ring_group(&g, how, (lo, hi))).await?;
    saved_groups_changed(shared).await;
    drop(plan);
    Ok(Response::NamedRingGroup { ring_group: stored })
}

async fn remove_ring_group(shared: &Arc<Shared>, ext: String) -> Result<Response, Refusal> {
    let ext = ext.trim().to_string();
    let plan = DIAL_PLAN.lock().await;
    let e = ext.clone();
    if !blocking(shared, move |db| db.remove_ring_group(&e)).await? {
        return Err(format!("there is no ring group {ext}"));
    }
    saved_groups_changed(shared).await;
    drop(plan);
    Ok(Response::RingGroupRemoved { removed: ext })
}

/// A station's extension was freed or renumbered and the database
/// changed these ring groups with it: the switch task and subscribers hear
/// of it as after a ring-group command. The change is saved; a failure to
/// read it back is logged, not answered.
async fn groups_touched(shared: &Arc<Shared>, touched: crate::db::GroupsTouched) {
    if touched.reception {
        match blocking(shared, |db| db.ring_group()).await {
            Ok(group) => {
                let _ = shared.events.send(Event::RingGroup { group }).await;
            }
            Err(e) => tracing::warn!("reception changed but could not be read back: {e}"),
        }
    }
    if touched.named {
        saved_groups_changed(shared).await;
    }
}

/// [`groups_changed`] after a change that is already saved: a failure to
/// read the groups back is logged (the next change or a restart sends
/// them), and the request is still answered as done.
async fn saved_groups_changed(shared: &Arc<Shared>) {
    if let Err(e) = groups_changed(shared).await {
        tracing::warn!("ring groups saved but could not be read back to announce: {e}");
    }
}

/// The ring groups changed in the database: the switch task and
/// subscribers get all of them as they are now.
async fn groups_changed(shared: &Arc<Shared>) -> Result<(), Refusal> {
    let groups = blocking(shared, |db| db.ring_groups()).await?;
    let _ = shared
        .events
        .send(Event::RingGroups {
            groups: groups.clone(),
        })
        .await;
    shared.publisher.publish(&ApiEvent::RingGroups {
        ring_groups: groups,
    });
    Ok(())
}

/// Sane bounds for an extension range (as the configuration file's).
fn check_range([lo, hi]: [u32; 2]) -> Result<(), Refusal> {
    if lo < 10 || hi > 999_999 {
        return Err(format!(
            "the range {lo}-{hi} is out of bounds: extensions have 2 to 6 digits, from 10 to 999999"
        ));
    }
    if lo > hi {
        return Err(format!(
            "the range {lo}-{hi} is empty: the lowest must not be above the highest"
        ));
    }
    Ok(())
}

/// Set the extension range (`Some`) or go back to the configuration
/// file's (`None`): refused, with nothing saved, when the range that would
/// apply leaves an enrolled station or a ring group outside it.
async fn set_extension_range(
    shared: &Arc<Shared>,
    range: Option<[u32; 2]>,
) -> Result<Response, Refusal> {
    if let Some(r) = range {
        check_range(r)?;
    }
    let plan = DIAL_PLAN.lock().await;
    let file = shared.cfg().extension_range;
    blocking(shared, move |db| {
        db.set_extension_range(range.map(|[lo, hi]| (lo, hi)), (file[0], file[1]))
    })
    .await?;
    match shared.ext_range_set.write() {
        Ok(mut r) => *r = range,
        Err(_) => return Err("the gateway's state is unusable; restart it".into()),
    }
    let _ = shared.events.send(Event::ExtensionRange).await;
    drop(plan);
    let (extension_range, source) = shared.extension_range_and_source();
    shared.publisher.publish(&ApiEvent::ExtensionRange {
        extension_range,
        source: source.to_string(),
    });
    Ok(Response::ExtensionRange {
        extension_range,
        source: source.to_string(),
    })
}
