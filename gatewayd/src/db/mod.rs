//! The gateway's SQLite store: enrolled agents and call records.
//!
//! WAL mode, schema versioned with `PRAGMA user_version`. Every write is a
//! short transaction; callers run them off the async runtime
//! (`spawn_blocking`), so a slow disk never stalls call control.
//!
//! Here: opening and migrating, enrolled and waiting stations, the admin
//! password. `cdr` has the call records (kept in memory while the disk is
//! full), `dialplan` line settings, speed dials, ring groups and the
//! extension range, `messages` texts and voicemail.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use keyline_directory::store::set_wal;
use keyline_proto::msg::LineSettings;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

mod cdr;
mod dialplan;
mod messages;

use dialplan::{group_extensions, rename_in_groups};
pub use dialplan::{rename_member, GroupsTouched, NamedRingGroup, Put, RingGroup};
pub use messages::{TextRow, VoicemailRow};

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
mod tests;
