//! The gateway's SQLite store: enrolled agents and call records.
//!
//! WAL mode, schema versioned with `PRAGMA user_version`. Every write is a
//! short transaction; callers run them off the async runtime
//! (`spawn_blocking`), so a slow disk never stalls call control.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use keyline_proto::msg::LineSettings;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Schema migrations, applied in order; index + 1 is the `user_version`.
const MIGRATIONS: &[&str] = &[
    // 1: agents and call records.
    "CREATE TABLE agents (
        fingerprint TEXT PRIMARY KEY,
        ext TEXT UNIQUE,
        name TEXT,
        code TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'approved')),
        first_seen INTEGER NOT NULL,
        approved_at INTEGER,
        last_addr TEXT
    );
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id INTEGER,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        answered_ms INTEGER,
        ended_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL
    );
    CREATE INDEX calls_started ON calls (started_ms);",
    // 2: per-extension call handling, short codes, text messages.
    "CREATE TABLE line_settings (
        ext TEXT PRIMARY KEY,
        forward_always TEXT,
        forward_busy TEXT,
        forward_no_answer TEXT,
        dnd INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE speed_dials (
        code TEXT PRIMARY KEY,
        number TEXT NOT NULL
    );
    CREATE TABLE texts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        body TEXT NOT NULL,
        sent_ms INTEGER NOT NULL,
        read_ms INTEGER
    );
    CREATE INDEX texts_unread ON texts (recipient) WHERE read_ms IS NULL;",
    // 3: voicemail.
    "CREATE TABLE voicemails (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mailbox TEXT NOT NULL,
        caller TEXT NOT NULL,
        path TEXT NOT NULL,
        secs REAL NOT NULL,
        created_ms INTEGER NOT NULL,
        heard INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX voicemails_mailbox ON voicemails (mailbox);",
    // 4: the ring group for calls to the office number.
    "CREATE TABLE ring_group (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        mode TEXT NOT NULL CHECK (mode IN ('all', 'hunt')),
        members TEXT NOT NULL,
        step_secs INTEGER NOT NULL
    );",
    // 5: when a station waiting for approval was last connected, so the
    // ones that went away can be forgotten.
    "ALTER TABLE agents ADD COLUMN last_seen INTEGER;",
    // 6: the admin site's password (an argon2id PHC string).
    "CREATE TABLE admin (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        password_hash TEXT NOT NULL,
        set_ms INTEGER NOT NULL
    );
    CREATE TABLE denied (
        fingerprint TEXT PRIMARY KEY,
        name TEXT,
        code TEXT NOT NULL,
        last_addr TEXT,
        first_seen INTEGER NOT NULL,
        denied_ms INTEGER NOT NULL
    );",
    // 7: texts and voice messages the directory delivered to the office,
    // by the directory's id and time, so that one delivered again (the
    // gateway stopped between keeping it and acknowledging it) is kept
    // once.
    "CREATE TABLE delivered_mail (
        id INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (id, at_ms)
    );",
    // 8: the office mailbox set with the ring group (else the
    // configuration file's, else the first member).
    "ALTER TABLE ring_group ADD COLUMN mailbox TEXT;",
    // 9: several ring groups, each with an extension of its own; reception
    // (the office number's group) is the row keyed `reception` and keeps
    // what was set before. The extension range set from the admin site or
    // the command line (wins over the configuration file's).
    "CREATE TABLE ring_groups (
        key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('all', 'hunt')),
        members TEXT NOT NULL,
        step_secs INTEGER NOT NULL,
        mailbox TEXT
    );
    INSERT INTO ring_groups (key, name, mode, members, step_secs, mailbox)
        SELECT 'reception', 'Reception', mode, members, step_secs, mailbox FROM ring_group;
    DROP TABLE ring_group;
    CREATE TABLE extension_range (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        CHECK (lo <= hi)
    );",
];

/// The key of reception's row in `ring_groups` (the others are keyed by
/// their extension, which is all digits).
const RECEPTION: &str = "reception";

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
fn rename_in_groups(
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
fn outside_range(c: &Connection, (lo, hi): (u32, u32)) -> Result<Vec<String>> {
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
fn group_extensions(c: &Connection) -> Result<Vec<String>> {
    let mut st = c.prepare("SELECT key FROM ring_groups WHERE key <> ?1")?;
    let v = st
        .query_map([RECEPTION], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// A stored voicemail.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VoicemailRow {
    pub id: i64,
    pub mailbox: String,
    pub caller: String,
    pub path: String,
    pub secs: f64,
    pub created_ms: i64,
    pub heard: bool,
}

/// A text message kept until its recipient reads it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TextRow {
    pub id: i64,
    pub sender: String,
    pub recipient: String,
    pub body: String,
    pub sent_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentRow {
    pub fingerprint: String,
    pub ext: Option<String>,
    pub name: Option<String>,
    pub code: String,
    pub state: String,
    pub first_seen_ms: i64,
    pub approved_at_ms: Option<i64>,
    pub last_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CdrRow {
    pub id: i64,
    pub call_id: Option<i64>,
    pub caller: String,
    pub callee: String,
    pub start_ms: i64,
    pub answer_ms: Option<i64>,
    pub end_ms: i64,
    pub outcome: String,
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    /// Call records not written yet (the disk was full), oldest first;
    /// written before the next one, or by [`Db::write_unwritten`].
    unwritten: Arc<Mutex<VecDeque<CdrRow>>>,
}

/// Call records kept in memory while the disk is full, at most.
pub const UNWRITTEN_MAX: usize = 10_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn =
            Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        // First, so that another process opening it too is waited for.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Db::with_connection(conn))
    }

    pub fn open_in_memory() -> Result<Db> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(Db::with_connection(conn))
    }

    fn with_connection(conn: Connection) -> Db {
        Db {
            conn: Arc::new(Mutex::new(conn)),
            unwritten: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("database lock poisoned"))?;
        f(&mut c)
    }

    pub fn agent(&self, fp: &str) -> Result<Option<AgentRow>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT fingerprint, ext, name, code, state, first_seen, approved_at, last_addr
                 FROM agents WHERE fingerprint = ?1",
                [fp],
                agent_row,
            )
            .optional()?)
        })
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT fingerprint, ext, name, code, state, first_seen, approved_at, last_addr
                 FROM agents ORDER BY ext IS NULL, ext, first_seen",
            )?;
            let rows = st
                .query_map([], agent_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Record a newly seen agent as pending (or refresh its address and
    /// when it was last seen).
    pub fn upsert_pending(
        &self,
        fp: &str,
        code: &str,
        name: Option<&str>,
        addr: &str,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO agents (fingerprint, name, code, state, first_seen, last_addr, last_seen)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?4)
                 ON CONFLICT (fingerprint) DO UPDATE SET last_addr = excluded.last_addr,
                    name = COALESCE(agents.name, excluded.name), last_seen = excluded.last_seen",
                params![fp, name, code, now_ms(), addr],
            )?;
            Ok(())
        })
    }

    /// A station waiting for approval disconnected (at `at_ms`).
    pub fn pending_left(&self, fp: &str, at_ms: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE agents SET last_seen = ?2 WHERE fingerprint = ?1 AND state = 'pending'",
                params![fp, at_ms],
            )?;
            Ok(())
        })
    }

    /// Forget stations waiting for approval that are not connected now
    /// (not in `waiting`) and were last seen before `before_ms`; then,
    /// while more than `cap` are left, the ones not connected that were
    /// seen longest ago. Gives how many were forgotten and how many still
    /// wait (more than `cap` only when that many are connected).
    pub fn prune_pending(
        &self,
        before_ms: i64,
        cap: usize,
        waiting: &[String],
    ) -> Result<(usize, usize)> {
        self.with(|c| {
            let tx = c.transaction()?;
            let rows: Vec<(String, i64)> = {
                let mut st = tx.prepare(
                    "SELECT fingerprint, COALESCE(last_seen, first_seen) FROM agents
                     WHERE state = 'pending' ORDER BY 2, fingerprint",
                )?;
                let v = st
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            let mut left = rows.len();
            let mut gone = Vec::new();
            for (fp, seen) in rows {
                if waiting.contains(&fp) {
                    continue;
                }
                if seen < before_ms || left > cap {
                    gone.push(fp);
                    left -= 1;
                }
            }
            for fp in &gone {
                tx.execute(
                    "DELETE FROM agents WHERE fingerprint = ?1 AND state = 'pending'",
                    [fp],
                )?;
            }
            tx.commit()?;
            Ok((gone.len(), left))
        })
    }

    /// Forget one station waiting for approval.
    pub fn forget_pending(&self, fp: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM agents WHERE fingerprint = ?1 AND state = 'pending'",
                [fp],
            )?;
            Ok(())
        })
    }

    pub fn touch(&self, fp: &str, addr: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE agents SET last_addr = ?2 WHERE fingerprint = ?1",
                params![fp, addr],
            )?;
            Ok(())
        })
    }

    /// Approve the pending agent showing `code`, giving it `ext` or the
    /// next free extension in `range`.
    pub fn approve(
        &self,
        code: &str,
        ext: Option<&str>,
        name: Option<&str>,
        range: (u32, u32),
    ) -> Result<AgentRow> {
        self.with(|c| {
            let tx = c.transaction()?;
            let fps: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT fingerprint FROM agents WHERE code = ?1 AND state = 'pending'",
                )?;
                let v = st
                    .query_map([code], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            let fp = match fps.as_slice() {
                [] => bail!("no station is waiting with pairing code {code}"),
                [one] => one.clone(),
                _ => bail!("pairing code {code} is ambiguous; restart one of the waiting stations"),
            };
            let taken: Vec<String> = {
                let mut st = tx.prepare("SELECT ext FROM agents WHERE ext IS NOT NULL")?;
                let v = st
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            let groups = group_extensions(&tx)?;
            let ext = match ext {
                Some(e) => {
                    if taken.iter().any(|t| t == e) {
                        bail!("extension {e} is already taken");
                    }
                    if groups.iter().any(|g| g == e) {
                        bail!("extension {e} is a ring group's");
                    }
                    e.to_string()
                }
                None => (range.0..=range.1)
                    .map(|n| n.to_string())
                    .find(|n| !taken.contains(n) && !groups.contains(n))
                    .context("no free extension left in the extension range")?,
            };
            tx.execute(
                "UPDATE agents SET ext = ?2, name = COALESCE(?3, name), state = 'approved',
                    approved_at = ?4 WHERE fingerprint = ?1",
                params![fp, ext, name, now_ms()],
            )?;
            let row = tx.query_row(
                "SELECT fingerprint, ext, name, code, state, first_seen, approved_at, last_addr
                 FROM agents WHERE fingerprint = ?1",
                [&fp],
                agent_row,
            )?;
            tx.commit()?;
            Ok(row)
        })
    }

    /// Write a call record. One that cannot be written now (a full disk)
    /// is kept, with any kept before it, and written first next time: the
    /// error says how many wait. At most [`UNWRITTEN_MAX`] are kept; past
    /// that the oldest go.
    pub fn insert_cdr(&self, row: &CdrRow) -> Result<()> {
        let mut waiting = self.unwritten_lock()?;
        waiting.push_back(row.clone());
        if waiting.len() > UNWRITTEN_MAX {
            waiting.pop_front();
            tracing::error!("more than {UNWRITTEN_MAX} call records unwritten: the oldest is lost");
        }
        self.write_waiting(&mut waiting)
    }

    /// Write the call records kept while the disk was full; how many.
    pub fn write_unwritten(&self) -> Result<usize> {
        let mut waiting = self.unwritten_lock()?;
        let n = waiting.len();
        if n > 0 {
            self.write_waiting(&mut waiting)?;
        }
        Ok(n)
    }

    /// Call records waiting to be written.
    pub fn unwritten_count(&self) -> usize {
        self.unwritten_lock().map(|w| w.len()).unwrap_or(0)
    }

    fn unwritten_lock(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<CdrRow>>> {
        self.unwritten
            .lock()
            .map_err(|_| anyhow::anyhow!("call record queue lock poisoned"))
    }

    /// All of `waiting` in one transaction, in order; kept on failure.
    fn write_waiting(&self, waiting: &mut VecDeque<CdrRow>) -> Result<()> {
        let written = self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO calls (call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for row in waiting.iter() {
                    st.execute(params![
                        row.call_id,
                        row.caller,
                        row.callee,
                        row.start_ms,
                        row.answer_ms,
                        row.end_ms,
                        row.outcome
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        });
        match written {
            Ok(()) => {
                waiting.clear();
                Ok(())
            }
            Err(e) => Err(e.context(format!(
                "{} call record(s) kept in memory until they can be written",
                waiting.len()
            ))),
        }
    }

    /// Refuse the station waiting with pairing `code`; its fingerprint.
    /// It stays refused (until revoked) if it comes back.
    pub fn deny(&self, code: &str) -> Result<String> {
        self.with(|c| {
            let tx = c.transaction()?;
            let fps: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT fingerprint FROM agents WHERE code = ?1 AND state = 'pending'",
                )?;
                let v = st
                    .query_map([code], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            let fp = match fps.as_slice() {
                [] => bail!("no station is waiting with pairing code {code}"),
                [one] => one.clone(),
                _ => bail!("pairing code {code} is ambiguous; restart one of the waiting stations"),
            };
            tx.execute(
                "INSERT OR REPLACE INTO denied (fingerprint, name, code, last_addr, first_seen, denied_ms)
                 SELECT fingerprint, name, code, last_addr, first_seen, ?2 FROM agents
                 WHERE fingerprint = ?1",
                params![fp, now_ms()],
            )?;
            tx.execute("DELETE FROM agents WHERE fingerprint = ?1", [&fp])?;
            tx.commit()?;
            Ok(fp)
        })
    }

    /// Whether the station with this fingerprint was denied.
    pub fn is_denied(&self, fp: &str) -> Result<bool> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT 1 FROM denied WHERE fingerprint = ?1", [fp], |_| {
                    Ok(())
                })
                .optional()?
                .is_some(),
            )
        })
    }

    /// Stations the admin denied (state `denied`).
    pub fn denied(&self) -> Result<Vec<AgentRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT fingerprint, name, code, first_seen, last_addr FROM denied
                 ORDER BY denied_ms",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(AgentRow {
                        fingerprint: r.get(0)?,
                        ext: None,
                        name: r.get(1)?,
                        code: r.get(2)?,
                        state: "denied".into(),
                        first_seen_ms: r.get(3)?,
                        approved_at_ms: None,
                        last_addr: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Forget the station with extension `ext` (approved or denied alike
    /// are looked up by extension; a denied one by fingerprint); its
    /// fingerprint, and which ring groups lost it (as a member or as
    /// their mailbox, in the same transaction). It must be approved again
    /// to come back.
    pub fn revoke(&self, ext: &str) -> Result<(String, GroupsTouched)> {
        self.with(|c| {
            let fp: Option<String> = c
                .query_row(
                    "SELECT fingerprint FROM agents WHERE ext = ?1",
                    [ext],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(fp) = fp else {
                bail!("no station has extension {ext}");
            };
            let tx = c.transaction()?;
            tx.execute("DELETE FROM agents WHERE fingerprint = ?1", [&fp])?;
            // A freed extension may go to a new station: no group keeps
            // ringing it or leaving messages in its mailbox.
            let touched = rename_in_groups(&tx, ext, None)?;
            tx.commit()?;
            Ok((fp, touched))
        })
    }

    /// Give the station with extension `ext` the extension `new_ext`
    /// (which must be free and in `range`) and/or the name `name`; ring
    /// groups that had `ext` as a member or mailbox have `new_ext` instead
    /// (same transaction), and which did is returned.
    pub fn set_extension(
        &self,
        ext: &str,
        new_ext: Option<&str>,
        name: Option<&str>,
        range: (u32, u32),
    ) -> Result<(AgentRow, GroupsTouched)> {
        if let Some(n) = new_ext {
            let in_range = n
                .parse::<u32>()
                .is_ok_and(|v| (range.0..=range.1).contains(&v));
            if !in_range {
                bail!("extension {n} is outside the range {}-{}", range.0, range.1);
            }
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let fp: Option<String> = tx
                .query_row(
                    "SELECT fingerprint FROM agents WHERE ext = ?1 AND state = 'approved'",
                    [ext],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(fp) = fp else {
                bail!("no station has extension {ext}");
            };
            if let Some(n) = new_ext.filter(|n| *n != ext) {
                let taken: Option<String> = tx
                    .query_row("SELECT fingerprint FROM agents WHERE ext = ?1", [n], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if taken.is_some() {
                    bail!("extension {n} is already taken");
                }
                if group_extensions(&tx)?.iter().any(|g| g == n) {
                    bail!("extension {n} is a ring group's");
                }
            }
            tx.execute(
                "UPDATE agents SET ext = COALESCE(?2, ext), name = COALESCE(?3, name)
                 WHERE fingerprint = ?1",
                params![fp, new_ext, name],
            )?;
            let touched = match new_ext.filter(|n| *n != ext) {
                Some(n) => rename_in_groups(&tx, ext, Some(n))?,
                None => GroupsTouched::default(),
            };
            let row = tx.query_row(
                "SELECT fingerprint, ext, name, code, state, first_seen, approved_at, last_addr
                 FROM agents WHERE fingerprint = ?1",
                [&fp],
                agent_row,
            )?;
            tx.commit()?;
            Ok((row, touched))
        })
    }

    /// The admin site's password hash, if one was set.
    pub fn admin_password(&self) -> Result<Option<String>> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT password_hash FROM admin WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    pub fn set_admin_password(&self, hash: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO admin (id, password_hash, set_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash,
                    set_ms = excluded.set_ms",
                params![hash, now_ms()],
            )?;
            Ok(())
        })
    }

    /// The newest `limit` call records that match `f`, oldest first.
    pub fn cdr_search(&self, limit: u32, f: &crate::api::CdrFilter) -> Result<Vec<CdrRow>> {
        if f == &crate::api::CdrFilter::default() {
            return self.cdr(limit);
        }
        let like = f.number.as_ref().map(|n| {
            let escaped = n
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome
                 FROM (SELECT * FROM calls
                       WHERE (?1 IS NULL OR caller LIKE ?1 ESCAPE '\\' OR callee LIKE ?1 ESCAPE '\\')
                         AND (?2 IS NULL OR started_ms >= ?2)
                         AND (?3 IS NULL OR started_ms < ?3)
                         AND (?4 IS NULL OR outcome = ?4)
                         AND (?5 IS NULL OR id = ?5)
                       ORDER BY id DESC LIMIT ?6) ORDER BY id",
            )?;
            let rows = st
                .query_map(
                    params![like, f.from_ms, f.to_ms, f.outcome, f.id, limit],
                    |r| {
                        Ok(CdrRow {
                            id: r.get(0)?,
                            call_id: r.get(1)?,
                            caller: r.get(2)?,
                            callee: r.get(3)?,
                            start_ms: r.get(4)?,
                            answer_ms: r.get(5)?,
                            end_ms: r.get(6)?,
                            outcome: r.get(7)?,
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn cdr(&self, limit: u32) -> Result<Vec<CdrRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, call_id, caller, callee, started_ms, answered_ms, ended_ms, outcome
                 FROM (SELECT * FROM calls ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )?;
            let rows = st
                .query_map([limit], |r| {
                    Ok(CdrRow {
                        id: r.get(0)?,
                        call_id: r.get(1)?,
                        caller: r.get(2)?,
                        callee: r.get(3)?,
                        start_ms: r.get(4)?,
                        answer_ms: r.get(5)?,
                        end_ms: r.get(6)?,
                        outcome: r.get(7)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .map(|mut rows| {
            // Newer than anything written: the ones still waiting (id 0).
            if let Ok(waiting) = self.unwritten_lock() {
                rows.extend(waiting.iter().cloned());
                let extra = rows.len().saturating_sub(limit as usize);
                rows.drain(..extra);
            }
            rows
        })
    }

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

    pub fn insert_text(&self, sender: &str, recipient: &str, body: &str) -> Result<TextRow> {
        self.with(|c| {
            let sent_ms = now_ms();
            c.execute(
                "INSERT INTO texts (sender, recipient, body, sent_ms) VALUES (?1, ?2, ?3, ?4)",
                params![sender, recipient, body, sent_ms],
            )?;
            Ok(TextRow {
                id: c.last_insert_rowid(),
                sender: sender.into(),
                recipient: recipient.into(),
                body: body.into(),
                sent_ms,
            })
        })
    }

    /// Keep a text the directory delivered (`mail`: its id and when it
    /// was left) once, however often it comes: a gateway stopped between
    /// keeping it and acknowledging it is given it again. `None` when it
    /// was kept before.
    pub fn insert_delivered_text(
        &self,
        mail: (u64, i64),
        sender: &str,
        recipient: &str,
        body: &str,
    ) -> Result<Option<TextRow>> {
        self.with(|c| {
            let tx = c.transaction()?;
            if !first_delivery(&tx, mail)? {
                return Ok(None);
            }
            let sent_ms = now_ms();
            tx.execute(
                "INSERT INTO texts (sender, recipient, body, sent_ms) VALUES (?1, ?2, ?3, ?4)",
                params![sender, recipient, body, sent_ms],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some(TextRow {
                id,
                sender: sender.into(),
                recipient: recipient.into(),
                body: body.into(),
                sent_ms,
            }))
        })
    }

    pub fn unread_texts(&self, recipient: &str) -> Result<Vec<TextRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, sender, recipient, body, sent_ms FROM texts
                 WHERE recipient = ?1 AND read_ms IS NULL ORDER BY id",
            )?;
            let rows = st
                .query_map([recipient], |r| {
                    Ok(TextRow {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        recipient: r.get(2)?,
                        body: r.get(3)?,
                        sent_ms: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Mark texts read, only those addressed to `recipient`.
    pub fn mark_read(&self, recipient: &str, ids: &[u64]) -> Result<usize> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut n = 0;
            for id in ids {
                n += tx.execute(
                    "UPDATE texts SET read_ms = ?3 WHERE id = ?1 AND recipient = ?2 AND read_ms IS NULL",
                    params![*id as i64, recipient, now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    pub fn insert_voicemail(
        &self,
        mailbox: &str,
        caller: &str,
        path: &str,
        secs: f64,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO voicemails (mailbox, caller, path, secs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mailbox, caller, path, secs, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// A message file found whole with no row at start-up (the gateway
    /// was killed between writing it and keeping its row): its row, with
    /// the time its name carries. Its id.
    pub fn insert_recovered_voicemail(
        &self,
        mailbox: &str,
        caller: &str,
        path: &str,
        secs: f64,
        created_ms: i64,
    ) -> Result<i64> {
        self.with(|c| {
            c.execute(
                "INSERT INTO voicemails (mailbox, caller, path, secs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mailbox, caller, path, secs, created_ms],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// The file of every voice message kept.
    pub fn all_voicemail_paths(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT path FROM voicemails")?;
            let rows = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(rows)
        })
    }

    /// Keep a voice message the directory delivered once, as
    /// [`Db::insert_delivered_text`]; its row id, `None` when it was kept
    /// before.
    pub fn insert_delivered_voicemail(
        &self,
        mail: (u64, i64),
        mailbox: &str,
        caller: &str,
        path: &str,
        secs: f64,
    ) -> Result<Option<i64>> {
        self.with(|c| {
            let tx = c.transaction()?;
            if !first_delivery(&tx, mail)? {
                return Ok(None);
            }
            // Its file was recovered at start-up (killed between the file
            // and this row): the row is there already.
            let recovered: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM voicemails WHERE path = ?1)",
                [path],
                |r| r.get(0),
            )?;
            if recovered {
                tx.commit()?;
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO voicemails (mailbox, caller, path, secs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![mailbox, caller, path, secs, now_ms()],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Some(id))
        })
    }

    /// Every mailbox's messages, newest first.
    pub fn all_voicemails(&self) -> Result<Vec<VoicemailRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, mailbox, caller, path, secs, created_ms, heard FROM voicemails
                 ORDER BY id DESC LIMIT 10000",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(VoicemailRow {
                        id: r.get(0)?,
                        mailbox: r.get(1)?,
                        caller: r.get(2)?,
                        path: r.get(3)?,
                        secs: r.get(4)?,
                        created_ms: r.get(5)?,
                        heard: r.get::<_, i64>(6)? != 0,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn voicemails(&self, mailbox: &str) -> Result<Vec<VoicemailRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, mailbox, caller, path, secs, created_ms, heard FROM voicemails
                 WHERE mailbox = ?1 ORDER BY id",
            )?;
            let rows = st
                .query_map([mailbox], |r| {
                    Ok(VoicemailRow {
                        id: r.get(0)?,
                        mailbox: r.get(1)?,
                        caller: r.get(2)?,
                        path: r.get(3)?,
                        secs: r.get(4)?,
                        created_ms: r.get(5)?,
                        heard: r.get::<_, i64>(6)? != 0,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn mark_heard(&self, mailbox: &str, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE voicemails SET heard = 1 WHERE id = ?1 AND mailbox = ?2",
                params![id, mailbox],
            )?;
            Ok(())
        })
    }

    /// Delete a voicemail of `mailbox`; its file path when it existed.
    pub fn delete_voicemail(&self, mailbox: &str, id: i64) -> Result<Option<String>> {
        self.with(|c| {
            let path: Option<String> = c
                .query_row(
                    "SELECT path FROM voicemails WHERE id = ?1 AND mailbox = ?2",
                    params![id, mailbox],
                    |r| r.get(0),
                )
                .optional()?;
            c.execute(
                "DELETE FROM voicemails WHERE id = ?1 AND mailbox = ?2",
                params![id, mailbox],
            )?;
            Ok(path)
        })
    }

    /// The highest call id ever recorded, so ids stay unique across restarts.
    pub fn max_call_id(&self) -> Result<u64> {
        self.with(|c| {
            let v: Option<i64> = c.query_row("SELECT MAX(call_id) FROM calls", [], |r| r.get(0))?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        fingerprint: r.get(0)?,
        ext: r.get(1)?,
        name: r.get(2)?,
        code: r.get(3)?,
        state: r.get(4)?,
        first_seen_ms: r.get(5)?,
        approved_at_ms: r.get(6)?,
        last_addr: r.get(7)?,
    })
}

/// Note a delivery of the directory's message `(id, at_ms)`; false when
/// it was delivered before.
fn first_delivery(tx: &rusqlite::Transaction<'_>, (id, at_ms): (u64, i64)) -> Result<bool> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO delivered_mail (id, at_ms) VALUES (?1, ?2)",
        params![id as i64, at_ms],
    )?;
    Ok(n == 1)
}

/// `PRAGMA journal_mode = WAL`. Switching a new database's mode needs it
/// whole, and SQLite answers "database is locked" at once rather than
/// wait while another process opening it holds it, so this retries for
/// up to 5 s.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Bring the database to the current schema, one migration per
/// transaction. Each takes the write lock before it reads the version, so
/// that two processes opening a new database at once (the daemon and
/// `keyline-gatewayd admin passwd` on a fresh appliance) apply each
/// migration once, one after the other.
fn migrate(conn: &mut Connection) -> Result<()> {
    let target = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > target {
            bail!("database schema version {version} is newer than this program ({target}); upgrade keyline");
        }
        let Some(sql) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", version + 1))?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database opened by several at once (the daemon and an admin
    /// command on a fresh appliance): every opener gets the full schema.
    #[test]
    fn a_new_database_opened_by_several_at_once_is_made_once() {
        for round in 0..20 {
            let dir =
                std::env::temp_dir().join(format!("kl-gwdb-race-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("gateway.sqlite");
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..4).map(|_| s.spawn(|| Db::open(&path))).collect();
                for o in opens {
                    let db = o.join().expect("thread").expect("open");
                    assert!(db.agents().expect("the agents table").is_empty());
                }
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn the_ring_group_keeps_its_office_mailbox() {
        let db = Db::open_in_memory().expect("db");
        assert_eq!(db.ring_group().expect("read"), None);
        let mut g = RingGroup {
            mode: "hunt".into(),
            members: vec!["202".into(), "201".into()],
            step_secs: 7,
            mailbox: Some("201".into()),
        };
        db.set_ring_group(Some(&g)).expect("store");
        assert_eq!(db.ring_group().expect("read").as_ref(), Some(&g));
        g.mailbox = None;
        db.set_ring_group(Some(&g)).expect("store");
        assert_eq!(db.ring_group().expect("read").as_ref(), Some(&g));
        db.set_ring_group(None).expect("clear");
        assert_eq!(db.ring_group().expect("read"), None);
    }

    #[test]
    fn approve_assigns_next_free_extension_and_refuses_conflicts() {
        let db = Db::open_in_memory().expect("db");
        db.upsert_pending("fa", "111111", Some("desk a"), "10.0.0.2:1")
            .expect("insert");
        db.upsert_pending("fb", "222222", None, "10.0.0.3:1")
            .expect("insert");
        db.upsert_pending("fc", "333333", None, "10.0.0.4:1")
            .expect("insert");
        let a = db
            .approve("111111", None, None, (201, 499))
            .expect("approve");
        assert_eq!(a.ext.as_deref(), Some("201"));
        assert_eq!(a.name.as_deref(), Some("desk a"));
        let b = db
            .approve("222222", Some("300"), Some("Bob"), (201, 499))
            .expect("approve");
        assert_eq!(
            (b.ext.as_deref(), b.name.as_deref()),
            (Some("300"), Some("Bob"))
        );
        let err = db
            .approve("333333", Some("300"), None, (201, 499))
            .expect_err("taken");
        assert!(err.to_string().contains("already taken"));
        let err = db
            .approve("999999", None, None, (201, 499))
            .expect_err("no such");
        assert!(err.to_string().contains("no station"));
        // approving twice is refused: the code is no longer pending
        assert!(db.approve("111111", None, None, (201, 499)).is_err());
    }

    /// Stations waiting for approval that went away are forgotten after a
    /// while, at most `cap` are kept (the ones gone longest go first), and
    /// a connected one is never forgotten; approved stations stay.
    #[test]
    fn pending_stations_that_left_are_pruned_and_capped() {
        let db = Db::open_in_memory().expect("db");
        for i in 0..6 {
            db.upsert_pending(&format!("f{i}"), &format!("{i}{i}{i}"), None, "10.0.0.2:1")
                .expect("insert");
        }
        db.approve("000", None, None, (201, 499)).expect("approve");
        let t = now_ms();
        // f1 left long ago, f2 a while ago, f3 just now; f4 and f5 wait.
        db.pending_left("f1", t - 10_000).expect("left");
        db.pending_left("f2", t - 5_000).expect("left");
        db.pending_left("f3", t).expect("left");
        let waiting = vec!["f4".to_string(), "f5".to_string()];
        assert_eq!(
            db.prune_pending(t - 8_000, 100, &waiting).expect("prune"),
            (1, 4)
        );
        // Over the cap: the one gone longest (f2) first, never f4 or f5.
        assert_eq!(db.prune_pending(0, 3, &waiting).expect("prune"), (1, 3));
        let mut left: Vec<String> = db
            .agents()
            .expect("agents")
            .into_iter()
            .map(|a| format!("{} {}", a.fingerprint, a.state))
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["f0 approved", "f3 pending", "f4 pending", "f5 pending"]
        );
        // Only connected ones left over the cap: kept, and counted.
        assert_eq!(db.prune_pending(0, 1, &waiting).expect("prune"), (1, 2));
        db.forget_pending("f5").expect("forget");
        assert_eq!(db.prune_pending(0, 1, &waiting).expect("prune"), (0, 1));
        assert!(db.approve("444", None, None, (201, 499)).is_ok());
    }

    #[test]
    fn cdr_roundtrip_and_file_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("kl-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.sqlite");
        let _ = std::fs::remove_file(&path);
        {
            let db = Db::open(&path).expect("open");
            db.insert_cdr(&CdrRow {
                id: 0,
                call_id: Some(7),
                caller: "201".into(),
                callee: "202".into(),
                start_ms: 1,
                answer_ms: Some(2),
                end_ms: 3,
                outcome: "answered".into(),
            })
            .expect("insert");
        }
        let db = Db::open(&path).expect("reopen");
        let rows = db.cdr(10).expect("cdr");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, "answered");
        assert_eq!(db.max_call_id().expect("max"), 7);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn call_records_wait_in_memory_while_the_database_is_full() {
        let db = Db::open_in_memory().expect("db");
        let row = |call: i64| CdrRow {
            id: 0,
            call_id: Some(call),
            caller: "201".into(),
            callee: "202".into(),
            start_ms: call,
            answer_ms: None,
            end_ms: call + 1,
            outcome: "no-answer".into(),
        };
        db.insert_cdr(&row(1)).expect("room");
        // SQLite's own limit on the file: inserts fail with "database or
        // disk is full", as on a full disk.
        let pages: i64 = db
            .with(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?))
            .expect("pages");
        db.with(|c| Ok(c.pragma_update(None, "max_page_count", pages)?))
            .expect("limit");
        let mut big = row(2);
        big.caller = "x".repeat(20_000);
        let err = db.insert_cdr(&big).expect_err("full");
        assert!(format!("{err:#}").contains("full"), "{err:#}");
        assert!(
            format!("{err:#}").contains("1 call record(s) kept"),
            "{err:#}"
        );
        let err = db.insert_cdr(&row(3)).expect_err("still full");
        assert!(
            format!("{err:#}").contains("2 call record(s) kept"),
            "{err:#}"
        );
        assert_eq!(db.unwritten_count(), 2);
        // Shown meanwhile, after the ones written.
        let shown: Vec<Option<i64>> = db.cdr(10).expect("cdr").iter().map(|r| r.call_id).collect();
        assert_eq!(shown, vec![Some(1), Some(2), Some(3)]);
        // Room again: written in order, nothing lost, nothing twice.
        db.with(|c| Ok(c.pragma_update(None, "max_page_count", 1_000_000)?))
            .expect("room");
        assert_eq!(db.write_unwritten().expect("write"), 2);
        assert_eq!(db.unwritten_count(), 0);
        let rows = db.cdr(10).expect("cdr");
        let ids: Vec<Option<i64>> = rows.iter().map(|r| r.call_id).collect();
        assert_eq!(ids, vec![Some(1), Some(2), Some(3)]);
        assert!(rows.iter().all(|r| r.id > 0));
        assert_eq!(db.write_unwritten().expect("nothing"), 0);
    }

    #[test]
    fn mail_the_directory_delivers_again_is_kept_once() {
        let db = Db::open_in_memory().expect("db");
        let at = 1_700_000_000_000;
        let first = db
            .insert_delivered_text((7, at), "1001", "204", "call me")
            .expect("keep");
        assert_eq!(first.map(|t| t.body).as_deref(), Some("call me"));
        // Delivered again (the gateway was killed before it acknowledged).
        let again = db
            .insert_delivered_text((7, at), "1001", "204", "call me")
            .expect("again");
        assert!(again.is_none());
        assert_eq!(db.unread_texts("204").expect("texts").len(), 1);
        // Another message is another message.
        assert!(db
            .insert_delivered_text((8, at), "1001", "204", "call me")
            .expect("another")
            .is_some());
        assert_eq!(db.unread_texts("204").expect("texts").len(), 2);

        let path = "/var/lib/keyline/voicemail/204/1-1001.opus";
        assert!(db
            .insert_delivered_voicemail((9, at), "204", "1001", path, 1.5)
            .expect("keep")
            .is_some());
        assert!(db
            .insert_delivered_voicemail((9, at), "204", "1001", path, 1.5)
            .expect("again")
            .is_none());
        assert_eq!(db.voicemails("204").expect("voicemails").len(), 1);
    }

    #[test]
    fn settings_speed_dials_and_texts() {
        let db = Db::open_in_memory().expect("db");
        let s = LineSettings {
            forward_busy: Some("205".into()),
            dnd: true,
            ..LineSettings::default()
        };
        db.save_settings("201", &s).expect("save");
        assert_eq!(
            db.all_settings().expect("load"),
            vec![("201".to_string(), s)]
        );
        db.set_speed_dial("*1", Some("+15550100")).expect("set");
        assert_eq!(
            db.speed_dials().expect("list"),
            vec![("*1".into(), "+15550100".into())]
        );
        assert!(db.set_speed_dial("*1", None).expect("rm"));
        assert!(!db.set_speed_dial("*1", None).expect("rm again"));
        let t = db.insert_text("201", "202", "hello").expect("text");
        assert_eq!(db.unread_texts("202").expect("unread").len(), 1);
        // Only the recipient can mark it read.
        assert_eq!(db.mark_read("203", &[t.id as u64]).expect("mark"), 0);
        assert_eq!(db.mark_read("202", &[t.id as u64]).expect("mark"), 1);
        assert!(db.unread_texts("202").expect("unread").is_empty());
    }

    /// A database upgraded through every migration has the same schema as
    /// a fresh one.
    #[test]
    fn upgraded_schema_equals_fresh_schema() {
        let schema = |c: &Connection| -> Vec<String> {
            let mut st = c
                .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
                .expect("prepare");
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows");
            rows
        };
        let mut old = Connection::open_in_memory().expect("db");
        old.execute_batch(MIGRATIONS[0]).expect("v1");
        old.pragma_update(None, "user_version", 1).expect("pragma");
        migrate(&mut old).expect("upgrade");
        let mut fresh = Connection::open_in_memory().expect("db");
        migrate(&mut fresh).expect("fresh");
        assert_eq!(schema(&old), schema(&fresh));
    }

    #[test]
    fn the_migration_carries_reception_into_the_ring_groups() {
        let mut conn = Connection::open_in_memory().expect("db");
        for sql in &MIGRATIONS[..8] {
            conn.execute_batch(sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", 8).expect("pragma");
        conn.execute(
            "INSERT INTO ring_group (id, mode, members, step_secs, mailbox)
             VALUES (1, 'hunt', '[\"203\",\"202\"]', 9, '202')",
            [],
        )
        .expect("old row");
        migrate(&mut conn).expect("upgrade");
        let db = Db::with_connection(conn);
        assert_eq!(
            db.ring_group().expect("read"),
            Some(RingGroup {
                mode: "hunt".into(),
                members: vec!["203".into(), "202".into()],
                step_secs: 9,
                mailbox: Some("202".into()),
            })
        );
        // Reception is not one of the groups with an extension.
        assert_eq!(db.ring_groups().expect("groups"), vec![]);
        assert_eq!(db.extension_range().expect("range"), None);
    }

    fn group(ext: &str, name: &str, members: &[&str]) -> NamedRingGroup {
        NamedRingGroup {
            ext: ext.into(),
            name: name.into(),
            group: RingGroup {
                mode: "all".into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                step_secs: 15,
                mailbox: None,
            },
        }
    }

    #[test]
    fn ring_groups_keep_their_extensions_apart_from_the_stations() {
        let db = Db::open_in_memory().expect("db");
        db.upsert_pending("fa", "111111", Some("Ann"), "10.0.0.2:1")
            .expect("insert");
        db.approve("111111", Some("202"), None, (201, 499))
            .expect("approve");
        let range = (201, 699);
        let sales = group("600", "Sales", &["202"]);
        db.put_ring_group(&sales, Put::Add, range).expect("add");
        // Reception beside them stays apart.
        let r = RingGroup {
            mode: "all".into(),
            members: vec!["202".into()],
            step_secs: 15,
            mailbox: None,
        };
        db.set_ring_group(Some(&r)).expect("reception");
        let e = db
            .put_ring_group(&group("600", "Other", &["202"]), Put::Add, range)
            .expect_err("taken");
        assert_eq!(
            e.to_string(),
            "Extension: 600 is taken by the ring group Sales"
        );
        let e = db
            .put_ring_group(&group("202", "Desk", &["202"]), Put::Add, range)
            .expect_err("a station's");
        assert_eq!(e.to_string(), "Extension: 202 is taken by the station Ann");
        let e = db
            .put_ring_group(&group("700", "Far", &["202"]), Put::Add, range)
            .expect_err("outside");
        assert_eq!(
            e.to_string(),
            "Extension: 700 is outside the extension range 201-699"
        );
        let e = db
            .put_ring_group(&group("610", "Support", &["202"]), Put::Edit, range)
            .expect_err("no such group");
        assert_eq!(e.to_string(), "Extension: there is no ring group 610");
        let mut changed = group("600", "Sales team", &["202"]);
        changed.group.mode = "hunt".into();
        changed.group.mailbox = Some("202".into());
        db.put_ring_group(&changed, Put::Edit, range).expect("edit");
        db.put_ring_group(&group("99", "Short", &["202"]), Put::Add, (10, 699))
            .expect("add");
        assert_eq!(
            db.ring_groups().expect("groups"),
            vec![group("99", "Short", &["202"]), changed]
        );
        assert_eq!(db.ring_group().expect("reception"), Some(r));
        // A station cannot take a group's extension, and the next free one
        // skips it.
        db.upsert_pending("fb", "222222", None, "10.0.0.3:1")
            .expect("insert");
        let e = db
            .approve("222222", Some("600"), None, range)
            .expect_err("a group's");
        assert!(e.to_string().contains("ring group"), "{e}");
        let e = db
            .set_extension("202", Some("600"), None, range)
            .expect_err("a group's");
        assert!(e.to_string().contains("ring group"), "{e}");
        let b = db
            .approve("222222", None, None, (600, 601))
            .expect("approve");
        assert_eq!(b.ext.as_deref(), Some("601"));
        assert!(db.remove_ring_group("600").expect("remove"));
        assert!(!db.remove_ring_group("600").expect("again"));
        assert!(!db.remove_ring_group(RECEPTION).expect("reception"));
        assert_eq!(db.ring_groups().expect("groups").len(), 1);
    }

    #[test]
    fn a_revoked_or_renumbered_extension_leaves_or_follows_the_ring_groups() {
        let db = Db::open_in_memory().expect("db");
        let range = (201, 699);
        for (fp, code, ext) in [("fa", "111111", "202"), ("fb", "222222", "203")] {
            db.upsert_pending(fp, code, None, "10.0.0.2:1")
                .expect("insert");
            db.approve(code, Some(ext), None, range).expect("approve");
        }
        let mut sales = group("600", "Sales", &["202", "203"]);
        sales.group.mailbox = Some("202".into());
        db.put_ring_group(&sales, Put::Add, range).expect("add");
        db.put_ring_group(&group("610", "Other", &["203"]), Put::Add, range)
            .expect("add");
        let reception = RingGroup {
            mode: "all".into(),
            members: vec!["203".into(), "202".into()],
            step_secs: 5,
            mailbox: Some("202".into()),
        };
        db.set_ring_group(Some(&reception)).expect("reception");

        // Renumbered: 202 becomes 250 in members and mailboxes.
        let (row, touched) = db
            .set_extension("202", Some("250"), None, range)
            .expect("renumber");
        assert_eq!(row.ext.as_deref(), Some("250"));
        assert_eq!(
            touched,
            GroupsTouched {
                reception: true,
                named: true
            }
        );
        let groups = db.ring_groups().expect("groups");
        assert_eq!(groups[0].group.members, vec!["250", "203"]);
        assert_eq!(groups[0].group.mailbox.as_deref(), Some("250"));
        assert_eq!(groups[1].group.members, vec!["203"]);
        let r = db.ring_group().expect("read").expect("reception");
        assert_eq!(r.members, vec!["203", "250"]);
        assert_eq!(r.mailbox.as_deref(), Some("250"));
        // A name alone touches no group.
        let (_, touched) = db
            .set_extension("250", None, Some("Ann"), range)
            .expect("rename");
        assert_eq!(touched, GroupsTouched::default());

        // Revoked: 250 leaves every group and mailbox; a new station given
        // 250 later is rung by none of them.
        let (fp, touched) = db.revoke("250").expect("revoke");
        assert_eq!(fp, "fa");
        assert!(touched.reception && touched.named);
        let groups = db.ring_groups().expect("groups");
        assert_eq!(groups[0].group.members, vec!["203"]);
        assert_eq!(groups[0].group.mailbox, None);
        let r = db.ring_group().expect("read").expect("reception");
        assert_eq!(r.members, vec!["203"]);
        assert_eq!(r.mailbox, None);
        // An extension in no group touches none; an unknown one changes
        // nothing.
        let (_, touched) = db
            .set_extension("203", Some("203"), None, range)
            .expect("same");
        assert_eq!(touched, GroupsTouched::default());
        assert!(db.revoke("250").is_err());
        assert_eq!(db.ring_groups().expect("groups"), groups);

        assert_eq!(
            rename_member(&["1".into(), "2".into()], "1", Some("2")),
            vec!["2"]
        );
    }

    #[test]
    fn a_range_that_leaves_someone_outside_is_refused_and_nothing_saved() {
        let db = Db::open_in_memory().expect("db");
        db.upsert_pending("fa", "111111", Some("Ann"), "10.0.0.2:1")
            .expect("insert");
        db.approve("111111", Some("205"), None, (201, 499))
            .expect("approve");
        db.put_ring_group(&group("450", "Sales", &["205"]), Put::Add, (201, 499))
            .expect("add");
        let file = (201, 499);
        let e = db
            .set_extension_range(Some((300, 399)), file)
            .expect_err("both outside");
        assert_eq!(
            e.to_string(),
            "the range 300-399 would leave station 205 (Ann), ring group 450 (Sales) outside it: change them first"
        );
        assert_eq!(db.extension_range().expect("range"), None);
        db.set_extension_range(Some((200, 459)), file).expect("set");
        assert_eq!(db.extension_range().expect("range"), Some((200, 459)));
        // Going back to a file's range that would leave 450 outside.
        let e = db
            .set_extension_range(None, (201, 299))
            .expect_err("group outside");
        assert!(e.to_string().contains("ring group 450 (Sales)"), "{e}");
        assert_eq!(db.extension_range().expect("range"), Some((200, 459)));
        db.set_extension_range(None, file).expect("clear");
        assert_eq!(db.extension_range().expect("range"), None);
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().expect("db");
        conn.pragma_update(None, "user_version", 99)
            .expect("pragma");
        assert!(migrate(&mut conn).is_err());
    }
}
