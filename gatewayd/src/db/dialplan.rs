//! The dial plan as stored: each line's forwarding and do-not-disturb,
//! speed dials, reception's ring group and the ring groups with
//! extensions of their own (kept apart from the stations' extensions), and
//! the extension range set here.

use super::*;

/// Which ring groups a station's new or freed extension changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupsTouched {
    /// Reception's row (the office number's group).
    pub reception: bool,
    /// One or more groups with an extension of their own.
    pub named: bool,
}

/// `members` with `old` replaced by `new`, or left out (`None`); a member
/// already there is not listed twice. Pure.
pub fn rename_member(members: &[String], old: &str, new: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(members.len());
    for m in members {
        let m = if m == old {
            match new {
                Some(n) => n.to_string(),
                None => continue,
            }
        } else {
            m.clone()
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// Replace (or remove) extension `old` in every ring group's members and
/// mailbox, reception's included, inside the caller's transaction.
pub(super) fn rename_in_groups(
    tx: &rusqlite::Transaction<'_>,
    old: &str,
    new: Option<&str>,
) -> Result<GroupsTouched> {
    let rows: Vec<(String, String, Option<String>)> = {
        let mut st = tx.prepare("SELECT key, members, mailbox FROM ring_groups")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut touched = GroupsTouched::default();
    for (key, members_json, mailbox) in rows {
        let members: Vec<String> = serde_json::from_str(&members_json)
            .with_context(|| format!("ring group {key}'s members {members_json:?}"))?;
        let now = rename_member(&members, old, new);
        let mailbox_now = match mailbox.as_deref() {
            Some(m) if m == old => new.map(str::to_string),
            _ => mailbox.clone(),
        };
        if now == members && mailbox_now == mailbox {
            continue;
        }
        tx.execute(
            "UPDATE ring_groups SET members = ?2, mailbox = ?3 WHERE key = ?1",
            params![key, serde_json::to_string(&now)?, mailbox_now],
        )?;
        if key == RECEPTION {
            touched.reception = true;
        } else {
            touched.named = true;
        }
    }
    Ok(touched)
}

/// The ring group set with `keyline-gatewayd ring-group`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RingGroup {
    /// `all` (every member at once) or `hunt` (in order).
    pub mode: String,
    pub members: Vec<String>,
    /// How long each member rings in hunt mode.
    pub step_secs: u64,
    /// Whose mailbox takes the office number's unanswered calls (wins
    /// over the configuration file's `office_mailbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
}

/// A ring group with an extension of its own (`ring-group add`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NamedRingGroup {
    /// The extension that rings the group.
    pub ext: String,
    pub name: String,
    #[serde(flatten)]
    pub group: RingGroup,
}

/// Whether a stored ring group is new or replaces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new group: its extension must be free.
    Add,
    /// A change to the group with this extension, which must exist.
    Edit,
}

/// What an extension range would leave outside it: enrolled stations'
/// and ring groups' extensions.
pub(super) fn outside_range(c: &Connection, (lo, hi): (u32, u32)) -> Result<Vec<String>> {
    let outside = |e: &str| !e.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
    let mut found = Vec::new();
    let mut st = c.prepare(
        "SELECT ext, name FROM agents WHERE state = 'approved' AND ext IS NOT NULL ORDER BY ext",
    )?;
    for row in st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })? {
        let (ext, name) = row?;
        if outside(&ext) {
            found.push(match name {
                Some(n) => format!("station {ext} ({n})"),
                None => format!("station {ext}"),
            });
        }
    }
    let mut st = c.prepare("SELECT key, name FROM ring_groups WHERE key <> ?1 ORDER BY key")?;
    for row in st.query_map([RECEPTION], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (ext, name) = row?;
        if outside(&ext) {
            found.push(format!("ring group {ext} ({name})"));
        }
    }
    Ok(found)
}

/// The extensions of the ring groups (not reception).
pub(super) fn group_extensions(c: &Connection) -> Result<Vec<String>> {
    let mut st = c.prepare("SELECT key FROM ring_groups WHERE key <> ?1")?;
    let v = st
        .query_map([RECEPTION], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

impl Db {
    pub fn all_settings(&self) -> Result<Vec<(String, LineSettings)>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT ext, forward_always, forward_busy, forward_no_answer, dnd FROM line_settings",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        LineSettings {
                            forward_always: r.get(1)?,
                            forward_busy: r.get(2)?,
                            forward_no_answer: r.get(3)?,
                            dnd: r.get::<_, i64>(4)? != 0,
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn save_settings(&self, ext: &str, s: &LineSettings) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO line_settings (ext, forward_always, forward_busy, forward_no_answer, dnd)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (ext) DO UPDATE SET forward_always = excluded.forward_always,
                    forward_busy = excluded.forward_busy,
                    forward_no_answer = excluded.forward_no_answer, dnd = excluded.dnd",
                params![ext, s.forward_always, s.forward_busy, s.forward_no_answer, s.dnd as i64],
            )?;
            Ok(())
        })
    }

    pub fn ring_group(&self) -> Result<Option<RingGroup>> {
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT mode, members, step_secs, mailbox FROM ring_groups WHERE key = ?1",
                    [RECEPTION],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((mode, members, step, mailbox)) = row else {
                return Ok(None);
            };
            let members: Vec<String> = serde_json::from_str(&members)
                .with_context(|| format!("ring group members {members:?}"))?;
            Ok(Some(RingGroup {
                mode,
                members,
                step_secs: step.max(1) as u64,
                mailbox,
            }))
        })
    }

    /// Store the ring group, or remove it (`None`: the config file's
    /// `reception` applies again).
    pub fn set_ring_group(&self, g: Option<&RingGroup>) -> Result<()> {
        self.with(|c| {
            match g {
                Some(g) => c.execute(
                    "INSERT INTO ring_groups (key, name, mode, members, step_secs, mailbox)
                     VALUES (?5, 'Reception', ?1, ?2, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET mode = ?1, members = ?2, step_secs = ?3,
                     mailbox = ?4",
                    params![
                        g.mode,
                        serde_json::to_string(&g.members)?,
                        g.step_secs as i64,
                        g.mailbox,
                        RECEPTION
                    ],
                )?,
                None => c.execute("DELETE FROM ring_groups WHERE key = ?1", [RECEPTION])?,
            };
            Ok(())
        })
    }

    /// The ring groups with an extension of their own, by extension.
    pub fn ring_groups(&self) -> Result<Vec<NamedRingGroup>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT key, name, mode, members, step_secs, mailbox FROM ring_groups
                 WHERE key <> ?1 ORDER BY length(key), key",
            )?;
            let rows = st
                .query_map([RECEPTION], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(ext, name, mode, members, step, mailbox)| {
                    let members: Vec<String> = serde_json::from_str(&members)
                        .with_context(|| format!("ring group {ext}'s members {members:?}"))?;
                    Ok(NamedRingGroup {
                        ext,
                        name,
                        group: RingGroup {
                            mode,
                            members,
                            step_secs: step.max(1) as u64,
                            mailbox,
                        },
                    })
                })
                .collect()
        })
    }

    /// Store a ring group with an extension of its own, in one
    /// transaction with the checks that need the database: the extension
    /// is no station's, inside `range`, and free (`Put::Add`) or the
    /// group's own (`Put::Edit`). Errors start with the field they are
    /// about (`Extension:`).
    pub fn put_ring_group(&self, g: &NamedRingGroup, how: Put, range: (u32, u32)) -> Result<()> {
        let ext = g.ext.as_str();
        if !ext
            .parse::<u32>()
            .is_ok_and(|n| (range.0..=range.1).contains(&n))
        {
            bail!(
                "Extension: {ext} is outside the extension range {}-{}",
                range.0,
                range.1
            );
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let station: Option<Option<String>> = tx
                .query_row("SELECT name FROM agents WHERE ext = ?1", [ext], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(name) = station {
                match name {
                    Some(n) => bail!("Extension: {ext} is taken by the station {n}"),
                    None => bail!("Extension: {ext} is taken by a station"),
                }
            }
            let existing: Option<String> = tx
                .query_row("SELECT name FROM ring_groups WHERE key = ?1", [ext], |r| {
                    r.get(0)
                })
                .optional()?;
            match (how, existing) {
                (Put::Add, Some(name)) => {
                    bail!("Extension: {ext} is taken by the ring group {name}")
                }
                (Put::Edit, None) => bail!("Extension: there is no ring group {ext}"),
                _ => {}
            }
            tx.execute(
                "INSERT INTO ring_groups (key, name, mode, members, step_secs, mailbox)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET name = ?2, mode = ?3, members = ?4,
                 step_secs = ?5, mailbox = ?6",
                params![
                    ext,
                    g.name,
                    g.group.mode,
                    serde_json::to_string(&g.group.members)?,
                    g.group.step_secs as i64,
                    g.group.mailbox
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Remove the ring group with extension `ext`; `false` if there was
    /// none.
    pub fn remove_ring_group(&self, ext: &str) -> Result<bool> {
        if ext == RECEPTION {
            return Ok(false);
        }
        self.with(|c| Ok(c.execute("DELETE FROM ring_groups WHERE key = ?1", [ext])? > 0))
    }

    /// The extension range set here (it wins over the configuration
    /// file's), if one is.
    pub fn extension_range(&self) -> Result<Option<(u32, u32)>> {
        self.with(|c| {
            let row = c
                .query_row("SELECT lo, hi FROM extension_range WHERE id = 1", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?;
            Ok(match row {
                Some((lo, hi)) => Some((
                    u32::try_from(lo).context("stored extension range")?,
                    u32::try_from(hi).context("stored extension range")?,
                )),
                None => None,
            })
        })
    }

    /// Set the extension range (`Some`), or forget it so the file's
    /// (`file`) applies again (`None`). Refused, with nothing changed,
    /// when the range that would apply leaves an enrolled station or a
    /// ring group outside it.
    pub fn set_extension_range(&self, range: Option<(u32, u32)>, file: (u32, u32)) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            let (lo, hi) = range.unwrap_or(file);
            let outside = outside_range(&tx, (lo, hi))?;
            if !outside.is_empty() {
                bail!(
                    "the range {lo}-{hi} would leave {} outside it: change {} first",
                    outside.join(", "),
                    if outside.len() == 1 { "it" } else { "them" }
                );
            }
            match range {
                Some((lo, hi)) => tx.execute(
                    "INSERT INTO extension_range (id, lo, hi) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET lo = ?1, hi = ?2",
                    params![lo, hi],
                )?,
                None => tx.execute("DELETE FROM extension_range", [])?,
            };
            tx.commit()?;
            Ok(())
        })
    }

    pub fn speed_dials(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT code, number FROM speed_dials ORDER BY code")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Set (`Some`) or remove (`None`) a short code. `false` when removing
    /// a code that was not there.
    pub fn set_speed_dial(&self, code: &str, number: Option<&str>) -> Result<bool> {
        self.with(|c| {
            let n = match number {
                Some(n) => c.execute(
                    "INSERT INTO speed_dials (code, number) VALUES (?1, ?2)
                     ON CONFLICT (code) DO UPDATE SET number = excluded.number",
                    params![code, n],
                )?,
                None => c.execute("DELETE FROM speed_dials WHERE code = ?1", [code])?,
            };
            Ok(n > 0)
        })
    }
}
