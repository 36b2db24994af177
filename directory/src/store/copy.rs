//! Moving a single-node directory's SQLite file into PostgreSQL
//! (`keyline-directory migrate --from-sqlite FILE`).
//!
//! Every row of every table is copied as it is (session tokens with their
//! expiry, password-change times, positions of numbers, held-back numbers,
//! spent invite codes, message ids and bodies) in one PostgreSQL
//! transaction, so a failure leaves the database as it was. The copy is
//! then read back: every table's rows must equal the source's, and the
//! bodies of a sample of messages must be byte for byte the same.
//!
//! The call history comes too, row for row with its ids, so that every
//! account's web page shows the same calls after the move.
//!
//! Browser sessions of the web site are not copied: after the move, people
//! log in to the site again (their phones' session tokens do come).

use anyhow::{bail, Context, Result};
use keyline_proto::dir::MailId;
use rusqlite::OptionalExtension;
use serde::Serialize;

use super::{PostgresStore, SqliteStore, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: String,
    pub pw_hash: String,
    pub created_ms: i64,
    pub pw_changed_ms: i64,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRecord {
    pub number: String,
    pub account: String,
    pub position: i64,
    pub dnd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: String,
    pub account: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRecord {
    pub number: String,
    pub rule: String,
    pub target: String,
    pub set_ms: i64,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    pub code_hash: String,
    pub created_ms: i64,
    pub used_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRecord {
    pub number: String,
    pub until_ms: i64,
}

/// A message without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRecord {
    pub id: i64,
    pub account: String,
    pub to: String,
    pub from: String,
    pub kind: String,
    pub size: i64,
    pub created_ms: i64,
}

/// One entry of an account's call history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub id: i64,
    pub account: String,
    pub outgoing: bool,
    pub own_number: String,
    pub other_number: String,
    pub started_ms: i64,
    pub answered: bool,
    pub outcome: String,
    pub forwarded_to: Option<String>,
    pub duration_ms: Option<i64>,
    pub relayed: Option<bool>,
}

/// Every row of a directory's database but the message bodies, each table
/// in the order of its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    pub accounts: Vec<AccountRecord>,
    pub numbers: Vec<NumberRecord>,
    pub sessions: Vec<SessionRecord>,
    pub forwards: Vec<ForwardRecord>,
    pub invites: Vec<InviteRecord>,
    pub held: Vec<HeldRecord>,
    pub mail: Vec<MailRecord>,
    pub calls: Vec<CallRow>,
    /// The highest message id ever given (deleted messages included), so
    /// that the copy never gives an id twice.
    pub last_mail_id: i64,
}

/// Rows per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub accounts: usize,
    pub numbers: usize,
    pub sessions: usize,
    pub forwards: usize,
    pub invites: usize,
    pub held_numbers: usize,
    pub mail: usize,
    pub mail_bytes: u64,
    pub calls: usize,
}

impl Counts {
    pub fn total_rows(&self) -> usize {
        self.accounts
            + self.numbers
            + self.sessions
            + self.forwards
            + self.invites
            + self.held_numbers
            + self.mail
            + self.calls
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} accounts, {} numbers, {} forwarding rules, {} session tokens, {} invite codes, {} held-back numbers, {} messages ({} bytes), {} calls in the history",
            self.accounts,
            self.numbers,
            self.forwards,
            self.sessions,
            self.invites,
            self.held_numbers,
            self.mail,
            self.mail_bytes,
            self.calls
        )
    }
}

impl Dump {
    pub fn counts(&self) -> Counts {
        Counts {
            accounts: self.accounts.len(),
            numbers: self.numbers.len(),
            sessions: self.sessions.len(),
            forwards: self.forwards.len(),
            invites: self.invites.len(),
            held_numbers: self.held.len(),
            mail: self.mail.len(),
            mail_bytes: self.mail.iter().map(|m| m.size.max(0) as u64).sum(),
            calls: self.calls.len(),
        }
    }

    /// The first table whose rows differ from `other`'s, with the first
    /// row that differs.
    pub fn first_difference(&self, other: &Dump) -> Option<String> {
        fn cmp<T: PartialEq + std::fmt::Debug>(name: &str, a: &[T], b: &[T]) -> Option<String> {
            if a.len() != b.len() {
                return Some(format!("{name}: {} rows, copy has {}", a.len(), b.len()));
            }
            a.iter()
                .zip(b)
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!("{name}: {x:?} became {y:?}"))
        }
        cmp("accounts", &self.accounts, &other.accounts)
            .or_else(|| cmp("numbers", &self.numbers, &other.numbers))
            .or_else(|| cmp("sessions", &self.sessions, &other.sessions))
            .or_else(|| cmp("forwards", &self.forwards, &other.forwards))
            .or_else(|| cmp("invites", &self.invites, &other.invites))
            .or_else(|| cmp("held_numbers", &self.held, &other.held))
            .or_else(|| cmp("mail", &self.mail, &other.mail))
            .or_else(|| cmp("calls", &self.calls, &other.calls))
    }
}

/// What a copy moved and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub counts: Counts,
    /// Messages whose bodies were read back and compared.
    pub bodies_compared: usize,
    /// Rows deleted from the database first (with `replace`).
    pub replaced_rows: usize,
}

const SQLITE_QUERIES: [&str; 8] = [
    "SELECT id, pw_hash, created_ms, pw_changed_ms, admin FROM accounts ORDER BY id",
    "SELECT number, account, position, dnd FROM numbers ORDER BY number",
    "SELECT token_hash, account, created_ms, expires_ms FROM sessions ORDER BY token_hash",
    "SELECT number, rule, target, set_ms, enabled FROM forwards ORDER BY number, rule",
    "SELECT code_hash, created_ms, used_by FROM invites ORDER BY code_hash",
    "SELECT number, until_ms FROM held_numbers ORDER BY number",
    "SELECT id, account, to_number, from_number, kind, size, created_ms FROM mail ORDER BY id",
    "SELECT id, account, outgoing, own_number, other_number, started_ms, answered, outcome,
            forwarded_to, duration_ms, relayed FROM calls ORDER BY id",
];

/// Everything in an SQLite store but the bodies.
pub fn dump_sqlite(src: &SqliteStore) -> Result<Dump, StoreError> {
    src.with(|c| {
        let q = &SQLITE_QUERIES;
        let mut d = Dump::default();
        let mut st = c.prepare(q[0])?;
        d.accounts = st
            .query_map([], |r| {
                Ok(AccountRecord {
                    id: r.get(0)?,
                    pw_hash: r.get(1)?,
                    created_ms: r.get(2)?,
                    pw_changed_ms: r.get(3)?,
                    admin: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[1])?;
        d.numbers = st
            .query_map([], |r| {
                Ok(NumberRecord {
                    number: r.get(0)?,
                    account: r.get(1)?,
                    position: r.get(2)?,
                    dnd: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[2])?;
        d.sessions = st
            .query_map([], |r| {
                Ok(SessionRecord {
                    token_hash: r.get(0)?,
                    account: r.get(1)?,
                    created_ms: r.get(2)?,
                    expires_ms: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[3])?;
        d.forwards = st
            .query_map([], |r| {
                Ok(ForwardRecord {
                    number: r.get(0)?,
                    rule: r.get(1)?,
                    target: r.get(2)?,
                    set_ms: r.get(3)?,
                    enabled: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[4])?;
        d.invites = st
            .query_map([], |r| {
                Ok(InviteRecord {
                    code_hash: r.get(0)?,
                    created_ms: r.get(1)?,
                    used_by: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[5])?;
        d.held = st
            .query_map([], |r| {
                Ok(HeldRecord {
                    number: r.get(0)?,
                    until_ms: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[6])?;
        d.mail = st
            .query_map([], |r| {
                Ok(MailRecord {
                    id: r.get(0)?,
                    account: r.get(1)?,
                    to: r.get(2)?,
                    from: r.get(3)?,
                    kind: r.get(4)?,
                    size: r.get(5)?,
                    created_ms: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut st = c.prepare(q[7])?;
        d.calls = st
            .query_map([], |r| {
                Ok(CallRow {
                    id: r.get(0)?,
                    account: r.get(1)?,
                    outgoing: r.get(2)?,
                    own_number: r.get(3)?,
                    other_number: r.get(4)?,
                    started_ms: r.get(5)?,
                    answered: r.get(6)?,
                    outcome: r.get(7)?,
                    forwarded_to: r.get(8)?,
                    duration_ms: r.get(9)?,
                    relayed: r.get(10)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let seq: Option<i64> = c
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'mail'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        d.last_mail_id = seq.unwrap_or(0).max(d.mail.last().map_or(0, |m| m.id));
        Ok(d)
    })
}

/// Everything in a PostgreSQL store but the bodies.
pub fn dump_postgres(dst: &PostgresStore) -> Result<Dump, StoreError> {
    dst.with_client(|c| {
        let q = &SQLITE_QUERIES;
        let mut d = Dump::default();
        for r in c.query(q[0], &[])? {
            d.accounts.push(AccountRecord {
                id: r.try_get(0)?,
                pw_hash: r.try_get(1)?,
                created_ms: r.try_get(2)?,
                pw_changed_ms: r.try_get(3)?,
                admin: r.try_get(4)?,
            });
        }
        for r in c.query(q[1], &[])? {
            d.numbers.push(NumberRecord {
                number: r.try_get(0)?,
                account: r.try_get(1)?,
                position: i64::from(r.try_get::<_, i32>(2)?),
                dnd: r.try_get(3)?,
            });
        }
        for r in c.query(q[2], &[])? {
            d.sessions.push(SessionRecord {
                token_hash: r.try_get(0)?,
                account: r.try_get(1)?,
                created_ms: r.try_get(2)?,
                expires_ms: r.try_get(3)?,
            });
        }
        for r in c.query(q[3], &[])? {
            d.forwards.push(ForwardRecord {
                number: r.try_get(0)?,
                rule: r.try_get(1)?,
                target: r.try_get(2)?,
                set_ms: r.try_get(3)?,
                enabled: r.try_get(4)?,
            });
        }
        for r in c.query(q[4], &[])? {
            d.invites.push(InviteRecord {
                code_hash: r.try_get(0)?,
                created_ms: r.try_get(1)?,
                used_by: r.try_get(2)?,
            });
        }
        for r in c.query(q[5], &[])? {
            d.held.push(HeldRecord {
                number: r.try_get(0)?,
                until_ms: r.try_get(1)?,
            });
        }
        for r in c.query(q[6], &[])? {
            d.mail.push(MailRecord {
                id: r.try_get(0)?,
                account: r.try_get(1)?,
                to: r.try_get(2)?,
                from: r.try_get(3)?,
                kind: r.try_get(4)?,
                size: r.try_get(5)?,
                created_ms: r.try_get(6)?,
            });
        }
        for r in c.query(q[7], &[])? {
            d.calls.push(CallRow {
                id: r.try_get(0)?,
                account: r.try_get(1)?,
                outgoing: r.try_get(2)?,
                own_number: r.try_get(3)?,
                other_number: r.try_get(4)?,
                started_ms: r.try_get(5)?,
                answered: r.try_get(6)?,
                outcome: r.try_get(7)?,
                forwarded_to: r.try_get(8)?,
                duration_ms: r.try_get(9)?,
                relayed: r.try_get(10)?,
            });
        }
        let r = c.query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM mail_id_seq",
            &[],
        )?;
        d.last_mail_id = r.try_get(0)?;
        Ok(d)
    })
}

/// Rows in a PostgreSQL store's tables.
pub fn postgres_rows(dst: &PostgresStore) -> Result<usize, StoreError> {
    dst.with_client(|c| {
        let r = c.query_one(
            "SELECT (SELECT COUNT(*) FROM accounts) + (SELECT COUNT(*) FROM numbers)
                  + (SELECT COUNT(*) FROM sessions) + (SELECT COUNT(*) FROM forwards)
                  + (SELECT COUNT(*) FROM invites) + (SELECT COUNT(*) FROM held_numbers)
                  + (SELECT COUNT(*) FROM mail) + (SELECT COUNT(*) FROM calls)",
            &[],
        )?;
        Ok(r.try_get::<_, i64>(0)?.max(0) as usize)
    })
}

/// Up to `n` messages spread over `mail`, the first and the last included.
fn sample(mail: &[MailRecord], n: usize) -> Vec<i64> {
    if mail.len() <= n {
        return mail.iter().map(|m| m.id).collect();
    }
    let step = (mail.len() - 1) as f64 / (n - 1) as f64;
    (0..n)
        .map(|i| mail[((i as f64 * step).round() as usize).min(mail.len() - 1)].id)
        .collect()
}

/// Bodies compared after a copy.
const BODY_SAMPLE: usize = 64;

/// Copy everything in `src` into `dst`, which must hold no rows unless
/// `replace` (then they are deleted first, in the same transaction), and
/// check the copy.
pub fn sqlite_to_postgres(src: &SqliteStore, dst: &PostgresStore, replace: bool) -> Result<Report> {
    let dump = dump_sqlite(src).context("reading the SQLite database")?;
    let existing = postgres_rows(dst).context("looking into PostgreSQL")?;
    if existing > 0 && !replace {
        bail!(
            "the PostgreSQL database already holds {existing} rows of directory data; \
             nothing was copied (give --replace to delete them and copy anyway)"
        );
    }
    dst.with_transaction(|tx| {
        if replace {
            tx.batch_execute(
                "TRUNCATE accounts, numbers, sessions, forwards, invites, held_numbers, mail,
                    calls, web_sessions RESTART IDENTITY",
            )?;
        } else {
            // Another copy or a directory may have written since we looked.
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM accounts", &[])?
                .try_get(0)?;
            if n > 0 {
                bail!("the PostgreSQL database gained accounts while copying; nothing was copied");
            }
        }
        let st = tx.prepare(
            "INSERT INTO accounts (id, pw_hash, created_ms, pw_changed_ms, admin)
             VALUES ($1, $2, $3, $4, $5)",
        )?;
        for a in &dump.accounts {
            tx.execute(
                &st,
                &[&a.id, &a.pw_hash, &a.created_ms, &a.pw_changed_ms, &a.admin],
            )
            .with_context(|| format!("account {}", a.id))?;
        }
        let st = tx.prepare(
            "INSERT INTO numbers (number, account, position, dnd) VALUES ($1, $2, $3, $4)",
        )?;
        for n in &dump.numbers {
            let position = i32::try_from(n.position)
                .with_context(|| format!("number {}: position {}", n.number, n.position))?;
            tx.execute(&st, &[&n.number, &n.account, &position, &n.dnd])
                .with_context(|| format!("number {}", n.number))?;
        }
        let st = tx.prepare(
            "INSERT INTO forwards (number, rule, target, set_ms, enabled)
             VALUES ($1, $2, $3, $4, $5)",
        )?;
        for f in &dump.forwards {
            tx.execute(&st, &[&f.number, &f.rule, &f.target, &f.set_ms, &f.enabled])
                .with_context(|| format!("forwarding rule of {}", f.number))?;
        }
        let st = tx.prepare(
            "INSERT INTO sessions (token_hash, account, created_ms, expires_ms)
             VALUES ($1, $2, $3, $4)",
        )?;
        for s in &dump.sessions {
            tx.execute(
                &st,
                &[&s.token_hash, &s.account, &s.created_ms, &s.expires_ms],
            )
            .with_context(|| format!("a session token of {}", s.account))?;
        }
        let st =
            tx.prepare("INSERT INTO invites (code_hash, created_ms, used_by) VALUES ($1, $2, $3)")?;
        for i in &dump.invites {
            tx.execute(&st, &[&i.code_hash, &i.created_ms, &i.used_by])
                .context("an invite code")?;
        }
        let st = tx.prepare("INSERT INTO held_numbers (number, until_ms) VALUES ($1, $2)")?;
        for h in &dump.held {
            tx.execute(&st, &[&h.number, &h.until_ms])
                .with_context(|| format!("held-back number {}", h.number))?;
        }
        let st = tx.prepare(
            "INSERT INTO mail (id, account, to_number, from_number, kind, body, size, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )?;
        for m in &dump.mail {
            // One body in memory at a time.
            let body = src
                .mail_body(m.id as MailId)
                .with_context(|| format!("reading message {}", m.id))?
                .with_context(|| format!("message {} vanished from the SQLite file", m.id))?;
            tx.execute(
                &st,
                &[
                    &m.id,
                    &m.account,
                    &m.to,
                    &m.from,
                    &m.kind,
                    &body,
                    &m.size,
                    &m.created_ms,
                ],
            )
            .with_context(|| format!("message {}", m.id))?;
        }
        let st = tx.prepare(
            "INSERT INTO calls (id, account, outgoing, own_number, other_number, started_ms,
                                answered, outcome, forwarded_to, duration_ms, relayed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )?;
        for k in &dump.calls {
            tx.execute(
                &st,
                &[
                    &k.id,
                    &k.account,
                    &k.outgoing,
                    &k.own_number,
                    &k.other_number,
                    &k.started_ms,
                    &k.answered,
                    &k.outcome,
                    &k.forwarded_to,
                    &k.duration_ms,
                    &k.relayed,
                ],
            )
            .with_context(|| format!("call {} of {}", k.id, k.account))?;
        }
        if let Some(last) = dump.calls.last() {
            // The identity goes on after the copied ids.
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('calls', 'id'), $1)",
                &[&last.id],
            )?;
        }
        if dump.last_mail_id > 0 {
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('mail', 'id'), $1)",
                &[&dump.last_mail_id],
            )?;
        }
        Ok(())
    })
    .context("copying into PostgreSQL (nothing was kept)")?;

    // Read it all back.
    let copy = dump_postgres(dst).context("reading the copy back")?;
    if let Some(diff) = dump.first_difference(&copy) {
        bail!("the copy differs from the SQLite file: {diff}");
    }
    if copy.last_mail_id < dump.last_mail_id {
        bail!(
            "the copy would give message id {} again",
            copy.last_mail_id + 1
        );
    }
    let ids = sample(&dump.mail, BODY_SAMPLE);
    for &id in &ids {
        let a = src.mail_body(id as MailId)?;
        let b = dst.mail_body(id as MailId)?;
        if a != b {
            bail!("the body of message {id} differs in the copy");
        }
    }
    Ok(Report {
        counts: copy.counts(),
        bodies_compared: ids.len(),
        replaced_rows: if replace { existing } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64) -> MailRecord {
        MailRecord {
            id,
            account: String::new(),
            to: String::new(),
            from: String::new(),
            kind: String::new(),
            size: 0,
            created_ms: 0,
        }
    }

    #[test]
    fn the_sample_spans_the_messages() {
        let mail: Vec<MailRecord> = (1..=1000).map(rec).collect();
        let s = sample(&mail, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(s.first(), Some(&1));
        assert_eq!(s.last(), Some(&1000));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample(&mail[..3], 64), vec![1, 2, 3]);
        assert!(sample(&[], 64).is_empty());
    }
}
