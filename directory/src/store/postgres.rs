//! The PostgreSQL store (`[store] postgres = "postgresql://…"`).
//!
//! Synchronous, like the trait: each connection is a `postgres::Client`
//! (tokio-postgres driven by a small runtime of its own), used from the
//! server's `spawn_blocking` threads, never from its event loop. A pool
//! keeps up to `max` connections; a request takes one, or opens one, or
//! waits for one to come back.
//!
//! A connection that fails (PostgreSQL restarted, the network went) is
//! dropped together with every idle one, which died with it: the request
//! gets a [`StoreError::Backend`] that says so, and the next request
//! connects afresh. Nothing is retried behind the caller's back except a
//! transaction PostgreSQL rolled back itself for a serialization conflict,
//! which by definition changed nothing.
//!
//! Multi-statement changes run as SERIALIZABLE transactions, so they keep
//! the meaning they have in SQLite (where one writer runs at a time): an
//! account's quota, a number's owner or hold, a rule's target are checked
//! and changed as one step even with several directory nodes writing.
//!
//! Schema: [`POSTGRES_MIGRATIONS`], applied in order under an advisory
//! lock; `schema_version` holds how many have run.

mod schema;

use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keyline_proto::dir::{ForwardRule, ForwardWhen, MailId};
use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};

use super::{
    check_rules, now_ms, sort_rules, Account, CallEntry, CallOutcome, CallRetention, Invite,
    MailMeta, NewMail, NumberRow, NumberStatus, Quota, Store, StoreError, StoreResult, WebSession,
    WEB_SESSION_TOUCH_MS,
};
use schema::migrate;
pub use schema::POSTGRES_MIGRATIONS;

/// How many times a transaction PostgreSQL cancelled for a serialization
/// conflict or a deadlock is run again (after a short random pause).
const CONFLICT_RETRIES: usize = 20;

/// How long a request waits for a free connection when all are in use.
const CHECKOUT_WAIT: Duration = Duration::from_secs(10);

/// A connection idle for longer is checked (an empty query) before it is
/// used: a restart of PostgreSQL while nobody asked anything then costs
/// no request. (No restart takes less; one during a request costs that
/// request an error.)
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How long that check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The PostgreSQL store; see the module documentation.
pub struct PostgresStore {
    config: postgres::Config,
    /// Where it points, without a password, for messages.
    target: String,
    max: usize,
    pool: Mutex<Pool>,
    returned: Condvar,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pool {
    /// Idle connections, each with the time it came back.
    idle: Vec<(Client, Instant)>,
    /// Connections open, idle or in use.
    open: usize,
    /// Bumped when a connection is found dead: connections taken out
    /// before are not put back.
    generation: u64,
}

impl Drop for Pool {
    /// A client blocks on its own runtime when dropped, which panics on a
    /// tokio worker (the directory's last reference to its store can go
    /// there at shutdown): idle clients are closed on a plain thread then.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.idle);
        if idle.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let closer = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(idle));
        if let Err(e) = closer {
            tracing::warn!("closing the PostgreSQL connections: {e}");
        }
    }
}

/// What an operation can fail with before it becomes a [`StoreError`]:
/// a database error keeps its SQLSTATE (for retries and messages).
#[derive(Debug)]
enum Fail {
    Store(StoreError),
    Pg(postgres::Error),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

type R<T> = Result<T, Fail>;

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}: {}", db.severity(), db.message()),
        None => {
            let mut s = format!("PostgreSQL: {e}");
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A connection URL or key-value string without its password.
pub(crate) fn redact(url: &str) -> String {
    if let Some(scheme) = url.find("://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut out = match base.rfind('@') {
            Some(at) if at > scheme => {
                let user = base[scheme + 3..at].split(':').next().unwrap_or("");
                format!("{}{}@{}", &base[..scheme + 3], user, &base[at + 1..])
            }
            _ => base.to_string(),
        };
        if let Some(q) = query {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|kv| !kv.starts_with("password="))
                .collect();
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept.join("&"));
            }
        }
        return out;
    }
    url.split_whitespace()
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

impl PostgresStore {
    /// Check a connection string without connecting (for `check-config`).
    pub fn check_url(url: &str) -> Result<(), String> {
        let c = postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        if c.get_ssl_mode() == postgres::config::SslMode::Require {
            return Err("sslmode=require: TLS to PostgreSQL is not supported yet; \
                 use a Unix socket or loopback"
                .into());
        }
        Ok(())
    }

    /// Connect, bring the schema up to date, and keep up to `max`
    /// connections.
    pub fn open(url: &str, max: usize) -> anyhow::Result<PostgresStore> {
        use anyhow::Context;
        Self::check_url(url).map_err(|e| anyhow::anyhow!("[store] postgres: {e}"))?;
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| anyhow::anyhow!("[store] postgres: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("keyline-directory");
        }
        config.keepalives(true);
        // Over TCP, a server that vanished without a word (a cut network)
        // costs a request half a minute, not the kernel's quarter hour.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if !url.contains("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        let store = PostgresStore {
            config,
            target: redact(url),
            max: max.max(1),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
        };
        let mut client = store
            .connect()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("connecting to {}", store.target))?;
        migrate(&mut client).with_context(|| format!("upgrading {}", store.target))?;
        if let Ok(mut p) = store.pool.lock() {
            p.open += 1;
        }
        store.checkin(client, 0, false);
        Ok(store)
    }

    /// Connect. Errors of requests name no host or database (they may
    /// reach clients); `open` adds them for the operator.
    fn connect(&self) -> Result<Client, String> {
        self.config
            .connect(NoTls)
            .map_err(|e| format!("cannot connect: {}", describe(&e)))
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Pool>> {
        self.pool
            .lock()
            .map_err(|_| StoreError::Backend("connection pool lock poisoned".into()))
    }

    /// Take an idle connection, open one, or wait for one.
    fn checkout(&self) -> StoreResult<(Client, u64)> {
        let mut p = self.lock()?;
        let deadline = Instant::now() + CHECKOUT_WAIT;
        loop {
            if let Some((mut c, since)) = p.idle.pop() {
                let generation = p.generation;
                if since.elapsed() < CHECK_IDLE_AFTER {
                    return Ok((c, generation));
                }
                drop(p);
                if c.is_valid(CHECK_TIMEOUT).is_ok() {
                    return Ok((c, generation));
                }
                // It died while idle, and so did the others.
                let stale = match self.pool.lock() {
                    Ok(mut p) => {
                        p.open = p.open.saturating_sub(1);
                        if p.generation == generation {
                            // Nobody noticed yet: the others go too.
                            p.generation += 1;
                            let idle = std::mem::take(&mut p.idle);
                            p.open = p.open.saturating_sub(idle.len());
                            idle
                        } else {
                            Vec::new()
                        }
                    }
                    Err(_) => Vec::new(),
                };
                drop((c, stale));
                p = self.lock()?;
                continue;
            }
            if p.open < self.max {
                p.open += 1;
                let generation = p.generation;
                drop(p);
                return match self.connect() {
                    Ok(c) => Ok((c, generation)),
                    Err(e) => {
                        if let Ok(mut p) = self.pool.lock() {
                            p.open = p.open.saturating_sub(1);
                        }
                        self.returned.notify_one();
                        Err(StoreError::Backend(e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Backend(format!(
                    "all {} connections to PostgreSQL are busy",
                    self.max
                )));
            }
            p = self
                .returned
                .wait_timeout(p, left)
                .map_err(|_| StoreError::Backend("connection pool lock poisoned".into()))?
                .0;
        }
    }

    /// Give a connection back; a dead one takes the idle ones with it.
    fn checkin(&self, client: Client, generation: u64, dead: bool) {
        let mut dropped = Vec::new();
        if let Ok(mut p) = self.pool.lock() {
            if dead {
                p.generation += 1;
                let idle = std::mem::take(&mut p.idle);
                p.open = p.open.saturating_sub(idle.len() + 1);
                dropped = idle.into_iter().map(|(c, _)| c).collect();
                dropped.push(client);
            } else if generation == p.generation && !client.is_closed() {
                p.idle.push((client, Instant::now()));
            } else {
                p.open = p.open.saturating_sub(1);
                dropped.push(client);
            }
        }
        self.returned.notify_all();
        // Closing a connection says goodbye to the server: not under the lock.
        drop(dropped);
    }

    /// Run `f` on a pooled connection.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> R<T>) -> StoreResult<T> {
        let (mut client, generation) = self.checkout()?;
        let result = f(&mut client);
        // A FATAL error (the server shutting down, a backend killed) ends
        // the session even before the client has seen the socket close.
        let fatal = matches!(&result, Err(Fail::Pg(e)) if e
            .as_db_error()
            .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC")));
        let dead = fatal || client.is_closed();
        self.checkin(client, generation, dead);
        match result {
            Ok(v) => Ok(v),
            Err(Fail::Store(e)) => Err(e),
            Err(Fail::Pg(e)) if dead || e.is_closed() => Err(StoreError::Backend(format!(
                "the connection to PostgreSQL was lost ({}); the request may not have been carried out, try again",
                describe(&e)
            ))),
            Err(Fail::Pg(e)) => Err(StoreError::Backend(describe(&e))),
        }
    }

    /// Run `f` in a SERIALIZABLE transaction, again when PostgreSQL
    /// cancels it for a conflict with another one.
    fn tx<T>(&self, f: impl FnMut(&mut Transaction<'_>) -> R<T>) -> StoreResult<T> {
        self.tx_at(IsolationLevel::Serializable, f)
    }

    /// Run `f` in a transaction at `level`, again when PostgreSQL cancels
    /// it for a serialization conflict or a deadlock.
    fn tx_at<T>(
        &self,
        level: IsolationLevel,
        mut f: impl FnMut(&mut Transaction<'_>) -> R<T>,
    ) -> StoreResult<T> {
        self.with(|c| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = c.build_transaction().isolation_level(level).start()?;
                let result = f(&mut tx).and_then(|v| tx.commit().map(|()| v).map_err(Fail::from));
                match result {
                    Err(Fail::Pg(e)) if is_conflict(&e) && attempt < CONFLICT_RETRIES => {
                        // Apart, so that the same ones do not meet again.
                        let us =
                            rand::Rng::gen_range(&mut rand::thread_rng(), 0..200 * attempt as u64);
                        std::thread::sleep(Duration::from_micros(us));
                    }
                    other => return other,
                }
            }
        })
    }

    /// Connect once and run `f` inside one transaction (copying data in).
    pub(crate) fn with_transaction<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut out = None;
        let mut err = None;
        self.with(|c| {
            let mut tx = c.transaction()?;
            match f(&mut tx) {
                Ok(v) => {
                    tx.commit()?;
                    out = Some(v);
                }
                Err(e) => err = Some(e),
            }
            Ok(())
        })?;
        match (out, err) {
            (Some(v), _) => Ok(v),
            (None, Some(e)) => Err(e),
            (None, None) => anyhow::bail!("the transaction did not run"),
        }
    }

    /// Run read-only `f` on a pooled connection (copying data out).
    pub(crate) fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> StoreResult<T> {
        self.with(|c| Ok(f(c)?))
    }

    /// How many connections are open (idle or in use), for tests.
    pub fn open_connections(&self) -> usize {
        self.pool.lock().map(|p| p.open).unwrap_or(0)
    }
}

fn meta(r: &Row) -> Result<MailMeta, postgres::Error> {
    let kind: String = r.try_get(4)?;
    Ok(MailMeta {
        id: r.try_get::<_, i64>(0)? as MailId,
        account: r.try_get(1)?,
        to: r.try_get(2)?,
        from: r.try_get(3)?,
        kind: if kind == "voice" { "voice" } else { "text" },
        size: r.try_get::<_, i64>(5)? as u64,
        at_ms: r.try_get(6)?,
    })
}

const META_COLS: &str = "id, account, to_number, from_number, kind, size, created_ms";

/// A forwarding rule from columns `rule, target, enabled` starting at
/// `at` (none for a kind this program does not know).
fn rule_row(r: &Row, at: usize) -> Result<Option<ForwardRule>, postgres::Error> {
    let rule: String = r.try_get(at)?;
    Ok(match ForwardWhen::parse(&rule) {
        Some(when) => Some(ForwardRule {
            when,
            to: r.try_get(at + 1)?,
            on: r.try_get(at + 2)?,
        }),
        None => None,
    })
}

/// `number` and the targets of `rules` are known numbers, and the rules
/// pass [`check_rules`].
fn known_numbers(tx: &mut Transaction<'_>, number: &str, rules: &[ForwardRule]) -> R<()> {
    const KNOWN: &str = "SELECT 1 FROM numbers WHERE number = $1";
    if !exists(tx, KNOWN, number)? {
        return Err(StoreError::NotFound(format!("{number} is not a known number")).into());
    }
    for r in rules {
        if !exists(tx, KNOWN, &r.to)? {
            return Err(StoreError::NotFound(format!(
                "forward target {} is not a known number",
                r.to
            ))
            .into());
        }
    }
    Ok(check_rules(number, rules)?)
}

fn insert_rule(tx: &mut Transaction<'_>, number: &str, r: &ForwardRule, now_ms: i64) -> R<()> {
    tx.execute(
        "INSERT INTO forwards (number, rule, target, set_ms, enabled) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (number, rule) DO UPDATE SET target = excluded.target,
            set_ms = excluded.set_ms, enabled = excluded.enabled",
        &[&number, &r.when.as_str(), &r.to, &now_ms, &r.on],
    )?;
    Ok(())
}

fn exists(tx: &mut Transaction<'_>, sql: &str, key: &str) -> R<bool> {
    Ok(tx.query_opt(sql, &[&key])?.is_some())
}

fn number_status_in(tx: &mut Transaction<'_>, number: &str, now_ms: i64) -> R<NumberStatus> {
    if exists(tx, "SELECT 1 FROM numbers WHERE number = $1", number)? {
        return Ok(NumberStatus::Taken);
    }
    let held = tx.query_opt(
        "SELECT until_ms FROM held_numbers WHERE number = $1 AND until_ms > $2",
        &[&number, &now_ms],
    )?;
    Ok(match held {
        Some(r) => NumberStatus::Held {
            until_ms: r.try_get(0)?,
        },
        None => NumberStatus::Free,
    })
}

/// See `create_account` in the SQLite store: the same checks, in one
/// transaction.
fn create_account(
    tx: &mut Transaction<'_>,
    id: &str,
    pw_hash: &str,
    numbers: &[String],
    now_ms: i64,
    held_at: Option<i64>,
    invite: Option<&str>,
) -> R<()> {
    if exists(tx, "SELECT 1 FROM accounts WHERE id = $1", id)? {
        return Err(StoreError::Exists(format!("account {id} already exists")).into());
    }
    for (i, n) in numbers.iter().enumerate() {
        if let Some(row) = tx.query_opt("SELECT account FROM numbers WHERE number = $1", &[n])? {
            let o: String = row.try_get(0)?;
            return Err(
                StoreError::Exists(format!("number {n} already belongs to account {o}")).into(),
            );
        }
        if numbers[..i].contains(n) {
            return Err(StoreError::Invalid(format!("number {n} is given twice")).into());
        }
        if let Some(at) = held_at {
            if let NumberStatus::Held { .. } = number_status_in(tx, n, at)? {
                return Err(StoreError::Exists(format!(
                    "number {n} belonged to a deleted account and is held back for now"
                ))
                .into());
            }
        }
    }
    if let Some(code) = invite {
        let n = tx.execute(
            "UPDATE invites SET used_by = $2 WHERE code_hash = $1 AND used_by IS NULL",
            &[&code, &id],
        )?;
        if n == 0 {
            return Err(
                StoreError::Invalid("the invite code is unknown or already used".into()).into(),
            );
        }
    }
    tx.execute(
        "INSERT INTO accounts (id, pw_hash, created_ms, pw_changed_ms) VALUES ($1, $2, $3, $3)",
        &[&id, &pw_hash, &now_ms],
    )?;
    for (i, n) in numbers.iter().enumerate() {
        tx.execute(
            "INSERT INTO numbers (number, account, position) VALUES ($1, $2, $3)",
            &[n, &id, &(i as i32)],
        )?;
        tx.execute("DELETE FROM held_numbers WHERE number = $1", &[n])?;
    }
    Ok(())
}

fn delete_account(tx: &mut Transaction<'_>, id: &str, hold_until: Option<i64>) -> R<()> {
    tx.execute(
        "DELETE FROM forwards WHERE target IN (SELECT number FROM numbers WHERE account = $1)",
        &[&id],
    )?;
    if let Some(until) = hold_until {
        tx.execute(
            "INSERT INTO held_numbers (number, until_ms)
             SELECT number, $2 FROM numbers WHERE account = $1
             ON CONFLICT (number) DO UPDATE SET until_ms = excluded.until_ms",
            &[&id, &until],
        )?;
    }
    let n = tx.execute("DELETE FROM accounts WHERE id = $1", &[&id])?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no account {id}")).into());
    }
    Ok(())
}

impl Store for PostgresStore {
    fn add_account(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        if numbers.is_empty() {
            return Err(StoreError::Invalid(
                "an account needs at least one number".into(),
            ));
        }
        self.tx(|tx| create_account(tx, id, pw_hash, numbers, now_ms, None, None))
    }

    fn sign_up(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
        invite: Option<&str>,
    ) -> StoreResult<()> {
        if numbers.is_empty() {
            return Err(StoreError::Invalid(
                "an account needs at least one number".into(),
            ));
        }
        self.tx(|tx| create_account(tx, id, pw_hash, numbers, now_ms, Some(now_ms), invite))
    }

    fn remove_account(&self, id: &str) -> StoreResult<()> {
        self.tx(|tx| delete_account(tx, id, None))
    }

    fn remove_account_holding(&self, id: &str, hold_until_ms: i64) -> StoreResult<()> {
        self.tx(|tx| delete_account(tx, id, Some(hold_until_ms)))
    }

    fn rename_account(&self, old: &str, new: &str) -> StoreResult<()> {
        self.tx(|tx| {
            if !exists(tx, "SELECT 1 FROM accounts WHERE id = $1", old)? {
                return Err(StoreError::NotFound(format!("no account {old}")).into());
            }
            if exists(tx, "SELECT 1 FROM accounts WHERE id = $1", new)? {
                return Err(StoreError::Exists(format!("account {new} already exists")).into());
            }
            tx.execute(
                "INSERT INTO accounts (id, pw_hash, created_ms, pw_changed_ms, admin)
                 SELECT $2, pw_hash, created_ms, pw_changed_ms, admin FROM accounts WHERE id = $1",
                &[&old, &new],
            )?;
            tx.execute(
                "UPDATE numbers SET account = $2 WHERE account = $1",
                &[&old, &new],
            )?;
            tx.execute(
                "UPDATE mail SET account = $2 WHERE account = $1",
                &[&old, &new],
            )?;
            tx.execute(
                "UPDATE calls SET account = $2 WHERE account = $1",
                &[&old, &new],
            )?;
            tx.execute(
                "UPDATE invites SET used_by = $2 WHERE used_by = $1",
                &[&old, &new],
            )?;
            tx.execute(
                "UPDATE web_sessions SET account = $2 WHERE account = $1",
                &[&old, &new],
            )?;
            tx.execute("DELETE FROM sessions WHERE account = $1", &[&old])?;
            tx.execute("DELETE FROM accounts WHERE id = $1", &[&old])?;
            Ok(())
        })
    }

    fn set_admin(&self, id: &str, admin: bool) -> StoreResult<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE accounts SET admin = $2 WHERE id = $1",
                &[&id, &admin],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no account {id}")).into());
            }
            Ok(())
        })
    }

    fn number_status(&self, number: &str, now_ms: i64) -> StoreResult<NumberStatus> {
        self.tx(|tx| number_status_in(tx, number, now_ms))
    }

    fn delete_token(&self, token_hash: &str) -> StoreResult<bool> {
        self.with(|c| {
            Ok(c.execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])? > 0)
        })
    }

    fn add_invite(&self, code_hash: &str, now_ms: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO invites (code_hash, created_ms) VALUES ($1, $2)",
                &[&code_hash, &now_ms],
            )?;
            Ok(())
        })
    }

    fn invites(&self) -> StoreResult<Vec<Invite>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT code_hash, created_ms, used_by FROM invites ORDER BY created_ms, code_hash",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(Invite {
                    code_hash: r.try_get(0)?,
                    created_ms: r.try_get(1)?,
                    used_by: r.try_get(2)?,
                });
            }
            Ok(out)
        })
    }

    fn set_dnd(&self, number: &str, on: bool) -> StoreResult<()> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE numbers SET dnd = $2 WHERE number = $1",
                &[&number, &on],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("{number} is not a known number")).into());
            }
            Ok(())
        })
    }

    fn add_number(&self, account: &str, number: &str, now_ms: i64) -> StoreResult<()> {
        self.tx(|tx| {
            if !exists(tx, "SELECT 1 FROM accounts WHERE id = $1", account)? {
                return Err(StoreError::NotFound(format!("no account {account}")).into());
            }
            match number_status_in(tx, number, now_ms)? {
                NumberStatus::Free => {}
                NumberStatus::Taken => {
                    return Err(StoreError::Exists(format!(
                        "number {number} already belongs to an account"
                    ))
                    .into())
                }
                NumberStatus::Held { .. } => {
                    return Err(StoreError::Exists(format!(
                        "number {number} belonged to a deleted account and is held back for now"
                    ))
                    .into())
                }
            }
            let next: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(position) + 1, 0) FROM numbers WHERE account = $1",
                    &[&account],
                )?
                .try_get(0)?;
            tx.execute(
                "INSERT INTO numbers (number, account, position) VALUES ($1, $2, $3)",
                &[&number, &account, &next],
            )?;
            tx.execute("DELETE FROM held_numbers WHERE number = $1", &[&number])?;
            Ok(())
        })
    }

    fn remove_number(
        &self,
        account: &str,
        number: &str,
        hold_until_ms: Option<i64>,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            let owner: Option<String> =
                match tx.query_opt("SELECT account FROM numbers WHERE number = $1", &[&number])? {
                    Some(r) => Some(r.try_get(0)?),
                    None => None,
                };
            if owner.as_deref() != Some(account) {
                return Err(StoreError::NotFound(format!(
                    "{number} is not a number of account {account}"
                ))
                .into());
            }
            let count: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM numbers WHERE account = $1",
                    &[&account],
                )?
                .try_get(0)?;
            if count <= 1 {
                return Err(
                    StoreError::Invalid("an account needs at least one number".into()).into(),
                );
            }
            tx.execute("DELETE FROM forwards WHERE target = $1", &[&number])?;
            tx.execute("DELETE FROM numbers WHERE number = $1", &[&number])?;
            if let Some(until) = hold_until_ms {
                tx.execute(
                    "INSERT INTO held_numbers (number, until_ms) VALUES ($1, $2)
                     ON CONFLICT (number) DO UPDATE SET until_ms = excluded.until_ms",
                    &[&number, &until],
                )?;
            }
            Ok(())
        })
    }

    fn set_first_number(&self, account: &str, number: &str) -> StoreResult<()> {
        self.tx(|tx| {
            let mut list = Vec::new();
            for r in tx.query(
                "SELECT number FROM numbers WHERE account = $1 ORDER BY position, number",
                &[&account],
            )? {
                list.push(r.try_get::<_, String>(0)?);
            }
            let Some(at) = list.iter().position(|n| n == number) else {
                return Err(StoreError::NotFound(format!(
                    "{number} is not a number of account {account}"
                ))
                .into());
            };
            let first = list.remove(at);
            list.insert(0, first);
            for (i, n) in list.iter().enumerate() {
                tx.execute(
                    "UPDATE numbers SET position = $2 WHERE number = $1",
                    &[n, &(i as i32)],
                )?;
            }
            Ok(())
        })
    }

    fn add_web_session(
        &self,
        s: &WebSession,
        max_per_account: usize,
        checked_ms: i64,
    ) -> StoreResult<()> {
        let keep = max_per_account.max(1) as i64;
        self.tx(|tx| {
            let changed: i64 = match tx.query_opt(
                "SELECT pw_changed_ms FROM accounts WHERE id = $1",
                &[&s.account],
            )? {
                Some(r) => r.try_get(0)?,
                None => {
                    return Err(StoreError::NotFound(format!("no account {}", s.account)).into())
                }
            };
            if changed > checked_ms {
                return Err(StoreError::Invalid(
                    "the password changed while it was checked; log in again".into(),
                )
                .into());
            }
            tx.execute(
                "INSERT INTO web_sessions (id_hash, account, csrf, created_ms, used_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&s.id_hash, &s.account, &s.csrf, &s.created_ms, &s.used_ms],
            )?;
            tx.execute(
                "DELETE FROM web_sessions WHERE account = $1 AND id_hash NOT IN
                 (SELECT id_hash FROM web_sessions WHERE account = $1
                  ORDER BY used_ms DESC, created_ms DESC LIMIT $2)",
                &[&s.account, &keep],
            )?;
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
            let Some(r) = c.query_opt(
                "SELECT account, csrf, created_ms, used_ms FROM web_sessions WHERE id_hash = $1",
                &[&id_hash],
            )?
            else {
                return Ok(None);
            };
            let mut s = WebSession {
                id_hash: id_hash.to_string(),
                account: r.try_get(0)?,
                csrf: r.try_get(1)?,
                created_ms: r.try_get(2)?,
                used_ms: r.try_get(3)?,
            };
            if now_ms - s.used_ms >= idle_ms {
                c.execute("DELETE FROM web_sessions WHERE id_hash = $1", &[&id_hash])?;
                return Ok(None);
            }
            if now_ms - s.used_ms >= WEB_SESSION_TOUCH_MS {
                c.execute(
                    "UPDATE web_sessions SET used_ms = $2 WHERE id_hash = $1",
                    &[&id_hash, &now_ms],
                )?;
                s.used_ms = now_ms;
            }
            Ok(Some(s))
        })
    }

    fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        self.with(|c| {
            c.execute("DELETE FROM web_sessions WHERE id_hash = $1", &[&id_hash])?;
            Ok(())
        })
    }

    fn end_web_sessions(&self, account: &str, except: Option<&str>) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM web_sessions WHERE account = $1 AND id_hash IS DISTINCT FROM $2",
                &[&account, &except],
            )? as usize)
        })
    }

    fn purge_web_sessions(&self, now_ms: i64, idle_ms: i64) -> StoreResult<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM web_sessions WHERE used_ms <= $1",
                &[&(now_ms - idle_ms)],
            )?;
            let left: i64 = c
                .query_one("SELECT COUNT(*) FROM web_sessions", &[])?
                .try_get(0)?;
            Ok(left as usize)
        })
    }

    fn account(&self, id: &str) -> StoreResult<Option<Account>> {
        self.with(|c| {
            // One statement, so the numbers belong to the account read.
            let rows = c.query(
                "SELECT a.pw_hash, a.created_ms, a.admin, n.number FROM accounts a
                 LEFT JOIN numbers n ON n.account = a.id WHERE a.id = $1 ORDER BY n.position",
                &[&id],
            )?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let mut a = Account {
                id: id.to_string(),
                pw_hash: first.try_get(0)?,
                numbers: Vec::with_capacity(rows.len()),
                created_ms: first.try_get(1)?,
                admin: first.try_get(2)?,
            };
            for r in &rows {
                if let Some(n) = r.try_get::<_, Option<String>>(3)? {
                    a.numbers.push(n);
                }
            }
            Ok(Some(a))
        })
    }

    fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT a.id, a.pw_hash, a.created_ms, n.number, a.admin FROM accounts a
                 LEFT JOIN numbers n ON n.account = a.id ORDER BY a.id, n.position",
                &[],
            )?;
            let mut out: Vec<Account> = Vec::new();
            for r in rows {
                let id: String = r.try_get(0)?;
                if out.last().is_none_or(|a| a.id != id) {
                    out.push(Account {
                        id,
                        pw_hash: r.try_get(1)?,
                        numbers: Vec::new(),
                        created_ms: r.try_get(2)?,
                        admin: r.try_get(4)?,
                    });
                }
                if let (Some(n), Some(a)) = (r.try_get::<_, Option<String>>(3)?, out.last_mut()) {
                    a.numbers.push(n);
                }
            }
            Ok(out)
        })
    }

    fn set_password(&self, id: &str, pw_hash: &str, keep: Option<&str>) -> StoreResult<()> {
        let changed = now_ms();
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE accounts SET pw_hash = $2, pw_changed_ms = $3 WHERE id = $1",
                &[&id, &pw_hash, &changed],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no account {id}")).into());
            }
            tx.execute(
                "DELETE FROM sessions WHERE account = $1 AND token_hash IS DISTINCT FROM $2",
                &[&id, &keep],
            )?;
            tx.execute("DELETE FROM web_sessions WHERE account = $1", &[&id])?;
            Ok(())
        })
    }

    fn numbers(&self) -> StoreResult<Vec<NumberRow>> {
        self.with(|c| {
            let mut rules: std::collections::HashMap<String, Vec<ForwardRule>> =
                std::collections::HashMap::new();
            for r in c.query("SELECT number, rule, target, enabled FROM forwards", &[])? {
                if let Some(rule) = rule_row(&r, 1)? {
                    rules.entry(r.try_get(0)?).or_default().push(rule);
                }
            }
            let rows = c.query(
                "SELECT number, account, dnd FROM numbers ORDER BY number",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let number: String = r.try_get(0)?;
                let mut forwards = rules.remove(&number).unwrap_or_default();
                sort_rules(&mut forwards);
                out.push(NumberRow {
                    number,
                    account: r.try_get(1)?,
                    forwards,
                    dnd: r.try_get(2)?,
                });
            }
            Ok(out)
        })
    }

    fn set_forward(
        &self,
        number: &str,
        rule: Option<&ForwardRule>,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.tx(|tx| {
            match rule {
                Some(r) => {
                    known_numbers(tx, number, std::slice::from_ref(r))?;
                    insert_rule(tx, number, r, now_ms)?;
                }
                None => {
                    known_numbers(tx, number, &[])?;
                    tx.execute("DELETE FROM forwards WHERE number = $1", &[&number])?;
                }
            }
            Ok(())
        })
    }

    fn set_forwards(&self, number: &str, rules: &[ForwardRule], now_ms: i64) -> StoreResult<()> {
        self.tx(|tx| {
            known_numbers(tx, number, rules)?;
            tx.execute("DELETE FROM forwards WHERE number = $1", &[&number])?;
            for r in rules {
                insert_rule(tx, number, r, now_ms)?;
            }
            Ok(())
        })
    }

    fn forward_off(&self, number: &str, when: Option<ForwardWhen>) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE forwards SET enabled = FALSE
                 WHERE number = $1 AND enabled AND ($2::TEXT IS NULL OR rule = $2)",
                &[&number, &when.map(ForwardWhen::as_str)],
            )? as usize)
        })
    }

    fn forwards(&self, number: &str) -> StoreResult<Vec<ForwardRule>> {
        self.with(|c| {
            let mut rules = Vec::new();
            for r in c.query(
                "SELECT rule, target, enabled FROM forwards WHERE number = $1",
                &[&number],
            )? {
                rules.extend(rule_row(&r, 0)?);
            }
            sort_rules(&mut rules);
            Ok(rules)
        })
    }

    fn add_calls(&self, entries: &[CallEntry], keep: CallRetention) -> StoreResult<()> {
        // READ COMMITTED, not SERIALIZABLE: a call's record decides
        // nothing, and the trims read whole ranges of the table, so any two
        // nodes writing records at once would conflict (under a load of
        // calls across two nodes, records were lost after every retry).
        // Here each writer keeps the newest of the rows it sees, so the
        // worst two can do is leave an account a record over its limit
        // until the next write.
        self.tx_at(IsolationLevel::ReadCommitted, |tx| {
            for e in entries {
                // An account deleted (or renamed) since the call keeps no
                // history. Its row is locked against that while the record
                // goes in: without the lock, a deletion not yet committed
                // would pass the check and then fail the foreign key.
                tx.execute(
                    "INSERT INTO calls (account, outgoing, own_number, other_number, started_ms,
                        answered, outcome, forwarded_to, duration_ms, relayed)
                     SELECT a.id, $2, $3, $4, $5, $6, $7, $8, $9, $10
                     FROM accounts a WHERE a.id = $1 FOR KEY SHARE",
                    &[
                        &e.account,
                        &e.outgoing,
                        &e.own_number,
                        &e.other_number,
                        &e.started_ms,
                        &e.answered,
                        &e.outcome.as_str(),
                        &e.forwarded_to,
                        &e.duration_ms,
                        &e.relayed,
                    ],
                )?;
                tx.execute(
                    "DELETE FROM calls WHERE account = $1 AND id NOT IN
                        (SELECT id FROM calls WHERE account = $1
                         ORDER BY started_ms DESC, id DESC LIMIT $2)",
                    &[&e.account, &i64::from(keep.per_account)],
                )?;
            }
            tx.execute("DELETE FROM calls WHERE started_ms < $1", &[&keep.since_ms])?;
            Ok(())
        })
    }

    fn calls(&self, account: &str, offset: u32, limit: u32) -> StoreResult<Vec<CallEntry>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT account, outgoing, own_number, other_number, started_ms, answered,
                    outcome, forwarded_to, duration_ms, relayed
                 FROM calls WHERE account = $1 ORDER BY started_ms DESC, id DESC
                 LIMIT $2 OFFSET $3",
                &[&account, &i64::from(limit), &i64::from(offset)],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let outcome: String = r.try_get(6)?;
                out.push(CallEntry {
                    account: r.try_get(0)?,
                    outgoing: r.try_get(1)?,
                    own_number: r.try_get(2)?,
                    other_number: r.try_get(3)?,
                    started_ms: r.try_get(4)?,
                    answered: r.try_get(5)?,
                    outcome: CallOutcome::parse(&outcome).unwrap_or(CallOutcome::Failed),
                    forwarded_to: r.try_get(7)?,
                    duration_ms: r.try_get(8)?,
                    relayed: r.try_get(9)?,
                });
            }
            Ok(out)
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
                "INSERT INTO sessions (token_hash, account, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
                &[&token_hash, &account, &now_ms, &expires_ms],
            )?;
            Ok(())
        })
    }

    fn token_account(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<String>> {
        self.with(|c| {
            match c.query_opt(
                "SELECT account FROM sessions WHERE token_hash = $1 AND expires_ms > $2",
                &[&token_hash, &now_ms],
            )? {
                Some(r) => Ok(Some(r.try_get(0)?)),
                None => Ok(None),
            }
        })
    }

    fn purge_tokens(&self, now_ms: i64) -> StoreResult<usize> {
        self.with(|c| {
            Ok(c.execute("DELETE FROM sessions WHERE expires_ms <= $1", &[&now_ms])? as usize)
        })
    }

    fn store_mail(&self, mail: &NewMail, quota: Quota) -> StoreResult<MailId> {
        let size = mail.body.len() as u64;
        self.tx(|tx| {
            let account: String = match tx.query_opt(
                "SELECT account FROM numbers WHERE number = $1",
                &[&mail.to],
            )? {
                Some(r) => r.try_get(0)?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "{} is not a known number",
                        mail.to
                    ))
                    .into())
                }
            };
            let row = tx.query_one(
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM mail WHERE account = $1",
                &[&account],
            )?;
            let (count, bytes): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if count as u64 >= u64::from(quota.messages) {
                return Err(StoreError::Quota(format!(
                    "the mailbox of {} is full ({} messages waiting, at most {})",
                    mail.to, count, quota.messages
                ))
                .into());
            }
            if bytes as u64 + size > quota.bytes {
                return Err(StoreError::Quota(format!(
                    "the mailbox of {} is full ({} bytes waiting, {} more would exceed {})",
                    mail.to, bytes, size, quota.bytes
                ))
                .into());
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO mail (account, to_number, from_number, kind, body, size, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &account,
                        &mail.to,
                        &mail.from,
                        &mail.kind.as_str(),
                        &mail.body,
                        &(size as i64),
                        &mail.at_ms,
                    ],
                )?
                .try_get(0)?;
            Ok(id as MailId)
        })
    }

    fn pending_mail(&self, account: &str) -> StoreResult<Vec<MailMeta>> {
        self.with(|c| {
            let rows = c.query(
                &format!("SELECT {META_COLS} FROM mail WHERE account = $1 ORDER BY id"),
                &[&account],
            )?;
            Ok(rows.iter().map(meta).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn mail_body(&self, id: MailId) -> StoreResult<Option<Vec<u8>>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.with(
            |c| match c.query_opt("SELECT body FROM mail WHERE id = $1", &[&id])? {
                Some(r) => Ok(Some(r.try_get(0)?)),
                None => Ok(None),
            },
        )
    }

    fn delete_mail(&self, account: &str, id: MailId) -> StoreResult<bool> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM mail WHERE id = $1 AND account = $2",
                &[&id, &account],
            )? > 0)
        })
    }

    fn all_mail(&self) -> StoreResult<Vec<MailMeta>> {
        self.with(|c| {
            let rows = c.query(&format!("SELECT {META_COLS} FROM mail ORDER BY id"), &[])?;
            Ok(rows.iter().map(meta).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every committed change is already durable in PostgreSQL: nothing to do.
    fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            redact("postgresql://kl:secret@db.example:5432/keyline"),
            "postgresql://kl@db.example:5432/keyline"
        );
        assert_eq!(
            redact("postgresql://kl@%2Frun%2Fpostgresql/keyline"),
            "postgresql://kl@%2Frun%2Fpostgresql/keyline"
        );
        assert_eq!(
            redact("postgresql://kl@h/k?password=secret&connect_timeout=3"),
            "postgresql://kl@h/k?connect_timeout=3"
        );
        assert_eq!(
            redact("postgresql://kl@h/k?password=secret"),
            "postgresql://kl@h/k"
        );
        assert_eq!(
            redact("host=/run/postgresql user=kl password=secret dbname=k"),
            "host=/run/postgresql user=kl dbname=k"
        );
        assert!(PostgresStore::check_url("postgresql://kl@localhost/keyline").is_ok());
        assert!(PostgresStore::check_url("postgresql://kl@localhost:notaport/k").is_err());
        let e = PostgresStore::check_url("postgresql://kl@db/k?sslmode=require").expect_err("tls");
        assert!(e.contains("TLS"), "{e}");
    }
}
