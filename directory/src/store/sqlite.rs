//! The SQLite store: WAL mode, schema versioned with `PRAGMA
//! user_version`. A new database gets [`SCHEMA`] in one go; an older one is
//! brought up to date by [`MIGRATIONS`]; a test checks that both give the
//! same schema.

mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex};

use keyline_proto::dir::{ForwardRule, ForwardWhen, MailId, MailKind};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    check_rules, now_ms, sort_rules, Account, CallEntry, CallOutcome, CallRetention, Invite,
    MailMeta, NewMail, NumberRow, NumberStatus, Quota, Store, StoreError, StoreResult, WebSession,
    WEB_SESSION_TOUCH_MS,
};
pub use schema::{migrate, migrate_from, MIGRATIONS, SCHEMA};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        use anyhow::Context;
        let mut conn =
            Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        // First, so that another process opening it too is waited for.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        set_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn).with_context(|| format!("upgrading {}", path.display()))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn open_in_memory() -> anyhow::Result<SqliteStore> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("database lock poisoned".into()))?;
        f(&mut c)
    }
}

/// `PRAGMA journal_mode = WAL`. Switching a new database's mode needs it
/// whole, and SQLite answers "database is locked" at once rather than
/// wait while another process opening it holds it, so this retries for
/// up to 5 s.
pub fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
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

/// A forwarding rule from columns `rule, target, enabled` starting at
/// `at` (none for a kind this program does not know).
fn rule_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Option<ForwardRule>> {
    let rule: String = r.get(at)?;
    Ok(match ForwardWhen::parse(&rule) {
        Some(when) => Some(ForwardRule {
            when,
            to: r.get(at + 1)?,
            on: r.get(at + 2)?,
        }),
        None => None,
    })
}

/// `number` and the targets of `rules` are known numbers, and the rules
/// pass [`check_rules`].
fn known_numbers(tx: &Connection, number: &str, rules: &[ForwardRule]) -> StoreResult<()> {
    let known = |n: &str| -> StoreResult<bool> {
        Ok(tx
            .query_row("SELECT 1 FROM numbers WHERE number = ?1", [n], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .is_some())
    };
    if !known(number)? {
        return Err(StoreError::NotFound(format!(
            "{number} is not a known number"
        )));
    }
    for r in rules {
        if !known(&r.to)? {
            return Err(StoreError::NotFound(format!(
                "forward target {} is not a known number",
                r.to
            )));
        }
    }
    check_rules(number, rules)
}

fn insert_rule(tx: &Connection, number: &str, r: &ForwardRule, now_ms: i64) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO forwards (number, rule, target, set_ms, enabled) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (number, rule) DO UPDATE SET target = excluded.target,
            set_ms = excluded.set_ms, enabled = excluded.enabled",
        params![number, r.when.as_str(), r.to, now_ms, r.on],
    )?;
    Ok(())
}

fn kind_str(k: MailKind) -> &'static str {
    k.as_str()
}

fn meta_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MailMeta> {
    let kind: String = r.get(4)?;
    Ok(MailMeta {
        id: r.get::<_, i64>(0)? as MailId,
        account: r.get(1)?,
        to: r.get(2)?,
        from: r.get(3)?,
        kind: if kind == "voice" { "voice" } else { "text" },
        size: r.get::<_, i64>(5)? as u64,
        at_ms: r.get(6)?,
    })
}

fn number_status_in(c: &Connection, number: &str, now_ms: i64) -> StoreResult<NumberStatus> {
    let owned: Option<i64> = c
        .query_row("SELECT 1 FROM numbers WHERE number = ?1", [number], |r| {
            r.get(0)
        })
        .optional()?;
    if owned.is_some() {
        return Ok(NumberStatus::Taken);
    }
    let held: Option<i64> = c
        .query_row(
            "SELECT until_ms FROM held_numbers WHERE number = ?1 AND until_ms > ?2",
            params![number, now_ms],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match held {
        Some(until_ms) => NumberStatus::Held { until_ms },
        None => NumberStatus::Free,
    })
}

/// Create an account in one transaction. With `held_at`, numbers held
/// back at that time are refused; with `invite`, that unused code is
/// spent.
fn create_account(
    c: &mut Connection,
    id: &str,
    pw_hash: &str,
    numbers: &[String],
    now_ms: i64,
    held_at: Option<i64>,
    invite: Option<&str>,
) -> StoreResult<()> {
    if numbers.is_empty() {
        return Err(StoreError::Invalid(
            "an account needs at least one number".into(),
        ));
    }
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let exists: Option<i64> = tx
        .query_row("SELECT 1 FROM accounts WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::Exists(format!("account {id} already exists")));
    }
    for n in numbers {
        let owner: Option<String> = tx
            .query_row("SELECT account FROM numbers WHERE number = ?1", [n], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(o) = owner {
            return Err(StoreError::Exists(format!(
                "number {n} already belongs to account {o}"
            )));
        }
        if let Some(at) = held_at {
            if let NumberStatus::Held { .. } = number_status_in(&tx, n, at)? {
                return Err(StoreError::Exists(format!(
                    "number {n} belonged to a deleted account and is held back for now"
                )));
            }
        }
    }
    if let Some(code) = invite {
        let n = tx.execute(
            "UPDATE invites SET used_by = ?2 WHERE code_hash = ?1 AND used_by IS NULL",
            params![code, id],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(
                "the invite code is unknown or already used".into(),
            ));
        }
    }
    tx.execute(
        "INSERT INTO accounts (id, pw_hash, created_ms, pw_changed_ms) VALUES (?1, ?2, ?3, ?3)",
        params![id, pw_hash, now_ms],
    )?;
    for (i, n) in numbers.iter().enumerate() {
        tx.execute(
            "INSERT INTO numbers (number, account, position) VALUES (?1, ?2, ?3)",
            params![n, id, i as i64],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Invalid(format!("number {n} is given twice"))
            }
            other => other.into(),
        })?;
        tx.execute("DELETE FROM held_numbers WHERE number = ?1", [n])?;
    }
    tx.commit()?;
    Ok(())
}

/// Delete an account (see [`Store::remove_account`]); with `hold_until`,
/// its numbers are held back until then.
fn delete_account(c: &mut Connection, id: &str, hold_until: Option<i64>) -> StoreResult<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Rules of other numbers that forward here would dangle.
    tx.execute(
        "DELETE FROM forwards WHERE target IN (SELECT number FROM numbers WHERE account = ?1)",
        [id],
    )?;
    if let Some(until) = hold_until {
        tx.execute(
            "INSERT INTO held_numbers (number, until_ms)
             SELECT number, ?2 FROM numbers WHERE account = ?1
             ON CONFLICT (number) DO UPDATE SET until_ms = excluded.until_ms",
            params![id, until],
        )?;
    }
    let n = tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no account {id}")));
    }
    tx.commit()?;
    Ok(())
}

const META_COLS: &str = "id, account, to_number, from_number, kind, size, created_ms";

impl Store for SqliteStore {
    fn add_account(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        self.with(|c| create_account(c, id, pw_hash, numbers, now_ms, None, None))
    }

    fn sign_up(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
        invite: Option<&str>,
    ) -> StoreResult<()> {
        self.with(|c| create_account(c, id, pw_hash, numbers, now_ms, Some(now_ms), invite))
    }

    fn remove_account_holding(&self, id: &str, hold_until_ms: i64) -> StoreResult<()> {
        self.with(|c| delete_account(c, id, Some(hold_until_ms)))
    }

    fn rename_account(&self, old: &str, new: &str) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists = |id: &str| -> StoreResult<bool> {
                Ok(tx
                    .query_row("SELECT 1 FROM accounts WHERE id = ?1", [id], |r| {
                        r.get::<_, i64>(0)
                    })
                    .optional()?
                    .is_some())
            };
            if !exists(old)? {
                return Err(StoreError::NotFound(format!("no account {old}")));
            }
            if exists(new)? {
                return Err(StoreError::Exists(format!("account {new} already exists")));
            }
            tx.execute(
                "INSERT INTO accounts (id, pw_hash, created_ms, pw_changed_ms, admin)
                 SELECT ?2, pw_hash, created_ms, pw_changed_ms, admin FROM accounts WHERE id = ?1",
                params![old, new],
            )?;
            tx.execute(
                "UPDATE numbers SET account = ?2 WHERE account = ?1",
                params![old, new],
            )?;
            tx.execute(
                "UPDATE mail SET account = ?2 WHERE account = ?1",
                params![old, new],
            )?;
            tx.execute(
                "UPDATE calls SET account = ?2 WHERE account = ?1",
                params![old, new],
            )?;
            tx.execute(
                "UPDATE invites SET used_by = ?2 WHERE used_by = ?1",
                params![old, new],
            )?;
            tx.execute(
                "UPDATE web_sessions SET account = ?2 WHERE account = ?1",
                params![old, new],
            )?;
            tx.execute("DELETE FROM sessions WHERE account = ?1", [old])?;
            tx.execute("DELETE FROM accounts WHERE id = ?1", [old])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn set_admin(&self, id: &str, admin: bool) -> StoreResult<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE accounts SET admin = ?2 WHERE id = ?1",
                params![id, admin],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no account {id}")));
            }
            Ok(())
        })
    }

    fn number_status(&self, number: &str, now_ms: i64) -> StoreResult<NumberStatus> {
        self.with(|c| number_status_in(c, number, now_ms))
    }

    fn delete_token(&self, token_hash: &str) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])? > 0)
        })
    }

    fn add_invite(&self, code_hash: &str, now_ms: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO invites (code_hash, created_ms) VALUES (?1, ?2)",
                params![code_hash, now_ms],
            )?;
            Ok(())
        })
    }

    fn invites(&self) -> StoreResult<Vec<Invite>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT code_hash, created_ms, used_by FROM invites ORDER BY created_ms",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(Invite {
                        code_hash: r.get(0)?,
                        created_ms: r.get(1)?,
                        used_by: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn remove_account(&self, id: &str) -> StoreResult<()> {
        self.with(|c| delete_account(c, id, None))
    }

    fn set_dnd(&self, number: &str, on: bool) -> StoreResult<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE numbers SET dnd = ?2 WHERE number = ?1",
                params![number, on],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{number} is not a known number"
                )));
            }
            Ok(())
        })
    }

    fn add_number(&self, account: &str, number: &str, now_ms: i64) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM accounts WHERE id = ?1", [account], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no account {account}")));
            }
            match number_status_in(&tx, number, now_ms)? {
                NumberStatus::Free => {}
                NumberStatus::Taken => {
                    return Err(StoreError::Exists(format!(
                        "number {number} already belongs to an account"
                    )))
                }
                NumberStatus::Held { .. } => {
                    return Err(StoreError::Exists(format!(
                        "number {number} belonged to a deleted account and is held back for now"
                    )))
                }
            }
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM numbers WHERE account = ?1",
                [account],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO numbers (number, account, position) VALUES (?1, ?2, ?3)",
                params![number, account, next],
            )?;
            tx.execute("DELETE FROM held_numbers WHERE number = ?1", [number])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn remove_number(
        &self,
        account: &str,
        number: &str,
        hold_until_ms: Option<i64>,
    ) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT account FROM numbers WHERE number = ?1",
                    [number],
                    |r| r.get(0),
                )
                .optional()?;
            if owner.as_deref() != Some(account) {
                return Err(StoreError::NotFound(format!(
                    "{number} is not a number of account {account}"
                )));
            }
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM numbers WHERE account = ?1",
                [account],
                |r| r.get(0),
            )?;
            if count <= 1 {
                return Err(StoreError::Invalid(
                    "an account needs at least one number".into(),
                ));
            }
            // Rules of other numbers that forward here would dangle.
            tx.execute("DELETE FROM forwards WHERE target = ?1", [number])?;
            tx.execute("DELETE FROM numbers WHERE number = ?1", [number])?;
            if let Some(until) = hold_until_ms {
                tx.execute(
                    "INSERT INTO held_numbers (number, until_ms) VALUES (?1, ?2)
                     ON CONFLICT (number) DO UPDATE SET until_ms = excluded.until_ms",
                    params![number, until],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_first_number(&self, account: &str, number: &str) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut list: Vec<String> = {
                let mut q = tx.prepare(
                    "SELECT number FROM numbers WHERE account = ?1 ORDER BY position, number",
                )?;
                let rows = q.query_map([account], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let Some(at) = list.iter().position(|n| n == number) else {
                return Err(StoreError::NotFound(format!(
                    "{number} is not a number of account {account}"
                )));
            };
            let first = list.remove(at);
            list.insert(0, first);
            for (i, n) in list.iter().enumerate() {
                tx.execute(
                    "UPDATE numbers SET position = ?2 WHERE number = ?1",
                    params![n, i as i64],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn add_web_session(
        &self,
        s: &WebSession,
        max_per_account: usize,
        checked_ms: i64,
    ) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed: Option<i64> = tx
                .query_row(
                    "SELECT pw_changed_ms FROM accounts WHERE id = ?1",
                    [&s.account],
                    |r| r.get(0),
                )
                .optional()?;
            match changed {
                None => return Err(StoreError::NotFound(format!("no account {}", s.account))),
                Some(t) if t > checked_ms => {
                    return Err(StoreError::Invalid(
                        "the password changed while it was checked; log in again".into(),
                    ))
                }
                Some(_) => {}
            }
            tx.execute(
                "INSERT INTO web_sessions (id_hash, account, csrf, created_ms, used_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id_hash, s.account, s.csrf, s.created_ms, s.used_ms],
            )?;
            tx.execute(
                "DELETE FROM web_sessions WHERE account = ?1 AND id_hash NOT IN
                 (SELECT id_hash FROM web_sessions WHERE account = ?1
                  ORDER BY used_ms DESC, created_ms DESC LIMIT ?2)",
                params![s.account, max_per_account.max(1) as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn web_session(
        &self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> StoreResult<Option<WebSession>> {
        self.with(|c| {
            let found = c
                .query_row(
                    "SELECT account, csrf, created_ms, used_ms FROM web_sessions WHERE id_hash = ?1",
                    [id_hash],
                    |r| {
                        Ok(WebSession {
                            id_hash: id_hash.to_string(),
                            account: r.get(0)?,
                            csrf: r.get(1)?,
                            created_ms: r.get(2)?,
                            used_ms: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            let Some(mut s) = found else { return Ok(None) };
            if now_ms - s.used_ms >= idle_ms {
                c.execute("DELETE FROM web_sessions WHERE id_hash = ?1", [id_hash])?;
                return Ok(None);
            }
            if now_ms - s.used_ms >= WEB_SESSION_TOUCH_MS {
                c.execute(
                    "UPDATE web_sessions SET used_ms = ?2 WHERE id_hash = ?1",
                    params![id_hash, now_ms],
                )?;
                s.used_ms = now_ms;
            }
            Ok(Some(s))
        })
    }

    fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM web_sessions WHERE id_hash = ?1", [id_hash])?;
            Ok(())
        })
    }

    fn end_web_sessions(&self, account: &str, except: Option<&str>) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM web_sessions WHERE account = ?1 AND id_hash IS NOT ?2",
                params![account, except],
            )?)
        })
    }

    fn purge_web_sessions(&self, now_ms: i64, idle_ms: i64) -> StoreResult<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM web_sessions WHERE used_ms <= ?1",
                [now_ms - idle_ms],
            )?;
            let left: i64 = c.query_row("SELECT COUNT(*) FROM web_sessions", [], |r| r.get(0))?;
            Ok(left as usize)
        })
    }

    fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        self.with(|c| {
            let row: Option<(String, i64, bool)> = c
                .query_row(
                    "SELECT pw_hash, created_ms, admin FROM accounts WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((pw_hash, created_ms, admin)) = row else {
                return Ok(None);
            };
            let mut st = c.prepare_cached(
                "SELECT number FROM numbers WHERE account = ?1 ORDER BY position",
            )?;
            let numbers = st
                .query_map([id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Account {
                id: id.to_string(),
                pw_hash,
                numbers,
                created_ms,
                admin,
            }))
        })
    }

    fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT a.id, a.pw_hash, a.created_ms, n.number, a.admin FROM accounts a
                 LEFT JOIN numbers n ON n.account = a.id ORDER BY a.id, n.position",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out: Vec<Account> = Vec::new();
            for (id, pw_hash, created_ms, number, admin) in rows {
                if out.last().is_none_or(|a| a.id != id) {
                    out.push(Account {
                        id,
                        pw_hash,
                        numbers: Vec::new(),
                        created_ms,
                        admin,
                    });
                }
                if let (Some(n), Some(a)) = (number, out.last_mut()) {
                    a.numbers.push(n);
                }
            }
            Ok(out)
        })
    }

    fn set_password(&self, id: &str, pw_hash: &str, keep: Option<&str>) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE accounts SET pw_hash = ?2, pw_changed_ms = ?3 WHERE id = ?1",
                params![id, pw_hash, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no account {id}")));
            }
            tx.execute(
                "DELETE FROM sessions WHERE account = ?1 AND token_hash IS NOT ?2",
                params![id, keep],
            )?;
            tx.execute("DELETE FROM web_sessions WHERE account = ?1", [id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn numbers(&self) -> StoreResult<Vec<NumberRow>> {
        self.with(|c| {
            let mut rules: std::collections::HashMap<String, Vec<ForwardRule>> =
                std::collections::HashMap::new();
            let mut st = c.prepare("SELECT number, rule, target, enabled FROM forwards")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, rule_row(r, 1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            for (n, r) in rows {
                if let Some(r) = r {
                    rules.entry(n).or_default().push(r);
                }
            }
            let mut st = c.prepare("SELECT number, account, dnd FROM numbers ORDER BY number")?;
            let rows = st
                .query_map([], |r| {
                    Ok(NumberRow {
                        number: r.get(0)?,
                        account: r.get(1)?,
                        forwards: Vec::new(),
                        dnd: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|mut n| {
                    n.forwards = rules.remove(&n.number).unwrap_or_default();
                    sort_rules(&mut n.forwards);
                    n
                })
                .collect())
        })
    }

    fn set_forward(
        &self,
        number: &str,
        rule: Option<&ForwardRule>,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match rule {
                Some(r) => {
                    known_numbers(&tx, number, std::slice::from_ref(r))?;
                    insert_rule(&tx, number, r, now_ms)?;
                }
                None => {
                    known_numbers(&tx, number, &[])?;
                    tx.execute("DELETE FROM forwards WHERE number = ?1", [number])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_forwards(&self, number: &str, rules: &[ForwardRule], now_ms: i64) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            known_numbers(&tx, number, rules)?;
            tx.execute("DELETE FROM forwards WHERE number = ?1", [number])?;
            for r in rules {
                insert_rule(&tx, number, r, now_ms)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn forward_off(&self, number: &str, when: Option<ForwardWhen>) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE forwards SET enabled = 0
                 WHERE number = ?1 AND enabled = 1 AND (?2 IS NULL OR rule = ?2)",
                params![number, when.map(ForwardWhen::as_str)],
            )?)
        })
    }

    fn forwards(&self, number: &str) -> StoreResult<Vec<ForwardRule>> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT rule, target, enabled FROM forwards WHERE number = ?1")?;
            let rows = st
                .query_map([number], |r| rule_row(r, 0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut rules: Vec<ForwardRule> = rows.into_iter().flatten().collect();
            sort_rules(&mut rules);
            Ok(rules)
        })
    }

    fn add_calls(&self, entries: &[CallEntry], keep: CallRetention) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for e in entries {
                // An account deleted since the call keeps no history.
                tx.execute(
                    "INSERT INTO calls (account, outgoing, own_number, other_number, started_ms,
                        answered, outcome, forwarded_to, duration_ms, relayed)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
                     WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1)",
                    params![
                        e.account,
                        e.outgoing,
                        e.own_number,
                        e.other_number,
                        e.started_ms,
                        e.answered,
                        e.outcome.as_str(),
                        e.forwarded_to,
                        e.duration_ms,
                        e.relayed
                    ],
                )?;
                tx.execute(
                    "DELETE FROM calls WHERE account = ?1 AND id NOT IN
                        (SELECT id FROM calls WHERE account = ?1
                         ORDER BY started_ms DESC, id DESC LIMIT ?2)",
                    params![e.account, keep.per_account],
                )?;
            }
            tx.execute("DELETE FROM calls WHERE started_ms < ?1", [keep.since_ms])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn calls(&self, account: &str, offset: u32, limit: u32) -> StoreResult<Vec<CallEntry>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT account, outgoing, own_number, other_number, started_ms, answered,
                    outcome, forwarded_to, duration_ms, relayed
                 FROM calls WHERE account = ?1 ORDER BY started_ms DESC, id DESC
                 LIMIT ?2 OFFSET ?3",
            )?;
            let rows = st
                .query_map(params![account, limit, offset], |r| {
                    let outcome: String = r.get(6)?;
                    Ok(CallEntry {
                        account: r.get(0)?,
                        outgoing: r.get(1)?,
                        own_number: r.get(2)?,
                        other_number: r.get(3)?,
                        started_ms: r.get(4)?,
                        answered: r.get(5)?,
                        outcome: CallOutcome::parse(&outcome).unwrap_or(CallOutcome::Failed),
                        forwarded_to: r.get(7)?,
                        duration_ms: r.get(8)?,
                        relayed: r.get(9)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn insert_token(
        &self,
        token_hash: &str,
        account: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_hash, account, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, account, now_ms, expires_ms],
            )?;
            Ok(())
        })
    }

    fn token_account(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<String>> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT account FROM sessions WHERE token_hash = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![token_hash, now_ms], |r| r.get(0))
            .optional()?)
        })
    }

    fn purge_tokens(&self, now_ms: i64) -> StoreResult<usize> {
        self.with(|c| Ok(c.execute("DELETE FROM sessions WHERE expires_ms <= ?1", [now_ms])?))
    }

    fn store_mail(&self, mail: &NewMail, quota: Quota) -> StoreResult<MailId> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let account: Option<String> = tx
                .query_row(
                    "SELECT account FROM numbers WHERE number = ?1",
                    [&mail.to],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(account) = account else {
                return Err(StoreError::NotFound(format!(
                    "{} is not a known number",
                    mail.to
                )));
            };
            let (count, bytes): (i64, i64) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM mail WHERE account = ?1",
                [&account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if count as u64 >= u64::from(quota.messages) {
                return Err(StoreError::Quota(format!(
                    "the mailbox of {} is full ({} messages waiting, at most {})",
                    mail.to, count, quota.messages
                )));
            }
            let size = mail.body.len() as u64;
            if bytes as u64 + size > quota.bytes {
                return Err(StoreError::Quota(format!(
                    "the mailbox of {} is full ({} bytes waiting, {} more would exceed {})",
                    mail.to, bytes, size, quota.bytes
                )));
            }
            tx.execute(
                "INSERT INTO mail (account, to_number, from_number, kind, body, size, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    account,
                    mail.to,
                    mail.from,
                    kind_str(mail.kind),
                    mail.body,
                    size as i64,
                    mail.at_ms
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id as MailId)
        })
    }

    fn pending_mail(&self, account: &str) -> StoreResult<Vec<MailMeta>> {
        // The server asks after every registration (each refresh wakes the
        // session's mail delivery): keep the statement compiled.
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {META_COLS} FROM mail WHERE account = ?1 ORDER BY id"
            ))?;
            let rows = st
                .query_map([account], meta_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn mail_body(&self, id: MailId) -> StoreResult<Option<Vec<u8>>> {
        self.with(|c| {
            Ok(c.prepare_cached("SELECT body FROM mail WHERE id = ?1")?
                .query_row([id as i64], |r| r.get(0))
                .optional()?)
        })
    }

    fn delete_mail(&self, account: &str, id: MailId) -> StoreResult<bool> {
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM mail WHERE id = ?1 AND account = ?2",
                params![id as i64, account],
            )?;
            Ok(n > 0)
        })
    }

    fn all_mail(&self) -> StoreResult<Vec<MailMeta>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {META_COLS} FROM mail ORDER BY id"))?;
            let rows = st.query_map([], meta_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    fn flush(&self) -> StoreResult<()> {
        self.with(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .optional()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! The schema and its migrations; what the store does is tested
    //! against both stores by `tests/store_conformance.rs`.
    use super::*;

    /// A new state directory opened by several at once (the daemon and
    /// `keyline-directory user add`): each gets the whole schema, made once.
    #[test]
    fn a_new_database_opened_by_several_at_once_is_made_once() {
        for round in 0..20 {
            let dir =
                std::env::temp_dir().join(format!("kl-dirdb-race-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("directory.sqlite");
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| SqliteStore::open(&path)))
                    .collect();
                for o in opens {
                    let st = o.join().expect("thread").expect("open");
                    assert!(st.accounts().expect("the accounts table").is_empty());
                }
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Tables, columns, indexes and foreign keys, normalised.
    fn schema_of(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let mut st = conn
            .prepare("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .expect("prepare");
        let objs: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        for (ty, name, tbl) in objs {
            out.push(format!("{ty} {name} on {tbl}"));
            if ty == "table" {
                let mut st = conn
                    .prepare(&format!("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{name}')"))
                    .expect("prepare");
                let cols: Vec<String> = st
                    .query_map([], |r| {
                        Ok(format!(
                            "  col {} {} nn={} default={:?} pk={}",
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?
                        ))
                    })
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                out.extend(cols);
                let mut st = conn
                    .prepare(&format!("SELECT \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list('{name}')"))
                    .expect("prepare");
                let fks: Vec<String> = st
                    .query_map([], |r| {
                        Ok(format!(
                            "  fk {}.{} -> {} {}",
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(3)?
                        ))
                    })
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                out.extend(fks);
            }
            if ty == "index" {
                let mut st = conn
                    .prepare(&format!(
                        "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
                    ))
                    .expect("prepare");
                let cols: Vec<String> = st
                    .query_map([], |r| r.get::<_, String>(0))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                out.push(format!("  cols {}", cols.join(",")));
            }
        }
        out
    }

    #[test]
    fn upgraded_schema_equals_fresh_schema() {
        let mut fresh = Connection::open_in_memory().expect("db");
        migrate(&mut fresh).expect("fresh");
        let mut old = Connection::open_in_memory().expect("db");
        migrate_from(&mut old, 0).expect("all migrations");
        let v = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
                .expect("version")
        };
        assert_eq!(v(&fresh), MIGRATIONS.len() as i64);
        assert_eq!(v(&old), MIGRATIONS.len() as i64);
        let (a, b) = (schema_of(&fresh), schema_of(&old));
        assert!(a.len() > 20, "{a:?}");
        assert_eq!(a, b);
        // Only the check constraints and defaults live in the SQL text;
        // compare the constraints too.
        let checks = |c: &Connection| -> Vec<String> {
            let mut st = c
                .prepare("SELECT sql FROM sqlite_master WHERE sql LIKE '%CHECK%' ORDER BY name")
                .expect("prepare");
            st.query_map([], |r| r.get::<_, String>(0))
                .expect("query")
                .map(|s| {
                    let s = s.expect("row");
                    s.split("CHECK")
                        .skip(1)
                        .map(|p| p.split_whitespace().collect::<String>())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        };
        assert_eq!(checks(&fresh), checks(&old));
    }

    #[test]
    fn an_old_database_with_data_is_upgraded() {
        // A database that stopped at version 1 with an account in it.
        let mut c1 = Connection::open_in_memory().expect("db");
        c1.execute_batch(MIGRATIONS[0]).expect("v1");
        c1.pragma_update(None, "user_version", 1).expect("version");
        c1.execute(
            "INSERT INTO accounts (id, pw_hash, created_ms) VALUES ('a', 'h', 1)",
            [],
        )
        .expect("insert");
        migrate(&mut c1).expect("upgrade");
        let changed: i64 = c1
            .query_row(
                "SELECT pw_changed_ms FROM accounts WHERE id = 'a'",
                [],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(changed, 0);
        let mut newer = Connection::open_in_memory().expect("db");
        newer
            .pragma_update(None, "user_version", 99)
            .expect("pragma");
        assert!(migrate(&mut newer).is_err());
    }

    #[test]
    fn a_version_3_database_keeps_its_rules_through_the_upgrade() {
        let mut c = Connection::open_in_memory().expect("db");
        c.pragma_update(None, "foreign_keys", "ON").expect("fk");
        migrate_from(&mut c, 0).expect("all");
        c.pragma_update(None, "user_version", 3).expect("v3");
        // Undo migrations 4 to 6 by hand to have a version-3 database.
        c.execute_batch(
            "DROP TABLE web_sessions;
             DROP TABLE calls;
             DROP TABLE forwards;
             CREATE TABLE forwards (
                number TEXT PRIMARY KEY REFERENCES numbers (number) ON DELETE CASCADE,
                rule TEXT NOT NULL CHECK (rule IN ('always', 'unregistered')),
                target TEXT NOT NULL,
                set_ms INTEGER NOT NULL
             );
             ALTER TABLE numbers DROP COLUMN dnd;
             INSERT INTO accounts (id, pw_hash, created_ms) VALUES ('a', 'h', 1);
             INSERT INTO numbers (number, account, position) VALUES ('1', 'a', 0), ('2', 'a', 1);
             INSERT INTO forwards VALUES ('1', 'unregistered', '2', 5);",
        )
        .expect("v3 data");
        migrate(&mut c).expect("upgrade");
        let s = SqliteStore {
            conn: Arc::new(Mutex::new(c)),
        };
        let rows = s.numbers().expect("numbers");
        assert_eq!(
            rows[0].forwards,
            vec![ForwardRule::new(ForwardWhen::Unregistered, "2")]
        );
        assert!(!rows[0].dnd);
    }
}
