//! The directory's durable data (accounts, numbers, session tokens,
//! forwarding rules and do-not-disturb, invite codes, held-back numbers,
//! stored mail, call history), behind the [`Store`] trait so that the server never knows
//! which database holds it. Methods are synchronous; the server calls them
//! off the async runtime through [`blocking`].
//!
//! Two implementations pass one conformance suite
//! (`directory/tests/store_conformance.rs`):
//! - [`SqliteStore`] (`sqlite`): one file in the state directory, the
//!   embedded single-node default;
//! - [`PostgresStore`] (`postgres`): `[store] postgres = "postgresql://…"`,
//!   a small pool of synchronous connections that reconnects after a
//!   server restart.
//!
//! [`copy`] moves everything from an SQLite file into PostgreSQL
//! (`keyline-directory migrate --from-sqlite`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use keyline_proto::dir::{ForwardRule, ForwardWhen, MailId, MailKind};
use serde::Serialize;

pub mod copy;
mod postgres;
mod sqlite;

pub(crate) use self::postgres::redact as redact_url;
pub use self::postgres::{PostgresStore, POSTGRES_MIGRATIONS};
pub use self::sqlite::{migrate, migrate_from, set_wal, SqliteStore, MIGRATIONS, SCHEMA};

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An account with its numbers (default caller number first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: String,
    #[serde(skip)]
    pub pw_hash: String,
    pub numbers: Vec<String>,
    pub created_ms: i64,
    /// May use the operator pages (`keyline-directory user admin ID`).
    pub admin: bool,
}

/// Whether a number can be taken by a new account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberStatus {
    Free,
    Taken,
    /// Given up with a deleted account; free again after this time.
    Held {
        until_ms: i64,
    },
}

/// An invite code (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invite {
    pub code_hash: String,
    pub created_ms: i64,
    pub used_by: Option<String>,
}

/// A number, its owner, its forwarding rules and whether it is set to
/// do-not-disturb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRow {
    pub number: String,
    pub account: String,
    /// At most one rule of each kind, on or off, in
    /// [`ForwardWhen::ALL`] order.
    pub forwards: Vec<ForwardRule>,
    pub dnd: bool,
}

/// Put rules in [`ForwardWhen::ALL`] order.
pub(crate) fn sort_rules(rules: &mut [ForwardRule]) {
    rules.sort_by_key(|r| ForwardWhen::ALL.iter().position(|w| *w == r.when));
}

/// The checks every store makes before it keeps `rules` for `number`:
/// one rule of each kind at most, none to the number itself. (That the
/// targets are known numbers needs the database.)
pub(crate) fn check_rules(number: &str, rules: &[ForwardRule]) -> StoreResult<()> {
    for (i, r) in rules.iter().enumerate() {
        if r.to == number {
            return Err(StoreError::Invalid(format!(
                "{number} cannot forward to itself"
            )));
        }
        if rules[..i].iter().any(|o| o.when == r.when) {
            return Err(StoreError::Invalid(format!(
                "{number} has two '{}' rules",
                r.when.as_str()
            )));
        }
    }
    Ok(())
}

/// One account's view of one call: a call between two accounts is kept
/// twice, once for each (outgoing for the caller, incoming for the
/// callee), so each can be trimmed on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallEntry {
    pub account: String,
    /// This account placed the call.
    pub outgoing: bool,
    /// This account's number (the caller's asserted number, or the
    /// number that was dialled).
    pub own_number: String,
    /// The other party's number.
    pub other_number: String,
    pub started_ms: i64,
    pub answered: bool,
    pub outcome: CallOutcome,
    /// Where the call was sent on, when it was forwarded or redirected.
    pub forwarded_to: Option<String>,
    /// From the answer to the end, when it was answered.
    pub duration_ms: Option<i64>,
    /// Whether the media went through the directory's relay, when known.
    pub relayed: Option<bool>,
}

/// How a call ended, as the directory saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallOutcome {
    /// Answered, then ended by either end.
    Answered,
    /// The callee declined.
    Declined,
    /// The callee was busy (or set to do-not-disturb).
    Busy,
    /// It rang until the ring timeout.
    NoAnswer,
    /// The caller gave up while it rang.
    Cancelled,
    /// The number has no live registration.
    Offline,
    /// No such number.
    UnknownNumber,
    /// Sent on to another number (a rule, a redirect or a hand-off).
    Forwarded,
    /// Anything else (a forwarding loop, media that could not be set up,
    /// the directory stopping, a lost connection).
    Failed,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Answered => "answered",
            CallOutcome::Declined => "declined",
            CallOutcome::Busy => "busy",
            CallOutcome::NoAnswer => "no-answer",
            CallOutcome::Cancelled => "cancelled",
            CallOutcome::Offline => "offline",
            CallOutcome::UnknownNumber => "unknown-number",
            CallOutcome::Forwarded => "forwarded",
            CallOutcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CallOutcome> {
        [
            CallOutcome::Answered,
            CallOutcome::Declined,
            CallOutcome::Busy,
            CallOutcome::NoAnswer,
            CallOutcome::Cancelled,
            CallOutcome::Offline,
            CallOutcome::UnknownNumber,
            CallOutcome::Forwarded,
            CallOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// How much call history is kept: for each account its newest
/// `per_account` entries, and none that started before `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRetention {
    pub per_account: u32,
    pub since_ms: i64,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    pub to: String,
    pub from: String,
    pub kind: MailKind,
    pub body: Vec<u8>,
    pub at_ms: i64,
}

/// Limits of one account's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub messages: u32,
    pub bytes: u64,
}

/// A stored message without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailMeta {
    pub id: MailId,
    pub account: String,
    pub to: String,
    pub from: String,
    pub kind: &'static str,
    pub size: u64,
    pub at_ms: i64,
}

/// What the directory keeps.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Create an account owning `numbers` (canonical, none owned yet).
    fn add_account(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
    ) -> StoreResult<()>;
    /// Delete an account with its numbers, rules, sessions and mail, and
    /// the rules of other numbers that forward to its numbers.
    fn remove_account(&self, id: &str) -> StoreResult<()>;
    fn account(&self, id: &str) -> StoreResult<Option<Account>>;
    fn accounts(&self) -> StoreResult<Vec<Account>>;
    /// Set the password hash and end every session but `keep` (a token
    /// hash), and every browser session of the web site (a password
    /// changed from a phone or the command line logs every browser out;
    /// the web form logs its own browser in again).
    fn set_password(&self, id: &str, pw_hash: &str, keep: Option<&str>) -> StoreResult<()>;
    /// Every number with its owner and rules.
    fn numbers(&self) -> StoreResult<Vec<NumberRow>>;
    /// Set the rule of kind `rule.when` of a known number (on or off; its
    /// rules of other kinds stay), or, with `None`, clear all its rules.
    /// The target must be a known number other than `number`.
    fn set_forward(&self, number: &str, rule: Option<&ForwardRule>, now_ms: i64)
        -> StoreResult<()>;
    /// Replace every rule of a known number with `rules` (at most one of
    /// each kind), all or nothing.
    fn set_forwards(&self, number: &str, rules: &[ForwardRule], now_ms: i64) -> StoreResult<()>;
    /// Turn the rule of kind `when` (or, with `None`, every rule) of
    /// `number` off; how many rules were on and are now off.
    fn forward_off(&self, number: &str, when: Option<ForwardWhen>) -> StoreResult<usize>;
    /// The rules of one number, in [`ForwardWhen::ALL`] order (none for an
    /// unknown number).
    fn forwards(&self, number: &str) -> StoreResult<Vec<ForwardRule>>;
    /// Keep `entries` (the views of one call), then trim the history of
    /// their accounts to `keep`.
    fn add_calls(&self, entries: &[CallEntry], keep: CallRetention) -> StoreResult<()>;
    /// `account`'s call history, newest first: at most `limit` entries
    /// after skipping `offset`.
    fn calls(&self, account: &str, offset: u32, limit: u32) -> StoreResult<Vec<CallEntry>>;
    fn insert_token(
        &self,
        token_hash: &str,
        account: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> StoreResult<()>;
    /// The account of an unexpired token.
    fn token_account(&self, token_hash: &str, now_ms: i64) -> StoreResult<Option<String>>;
    /// Forget expired tokens; how many went.
    fn purge_tokens(&self, now_ms: i64) -> StoreResult<usize>;
    /// Store a message for the owner of `mail.to`, within `quota`.
    fn store_mail(&self, mail: &NewMail, quota: Quota) -> StoreResult<MailId>;
    /// Messages waiting for `account`, oldest first.
    fn pending_mail(&self, account: &str) -> StoreResult<Vec<MailMeta>>;
    fn mail_body(&self, id: MailId) -> StoreResult<Option<Vec<u8>>>;
    /// Delete `account`'s message `id`; false when there was none.
    fn delete_mail(&self, account: &str, id: MailId) -> StoreResult<bool>;
    /// Every waiting message (metadata only).
    fn all_mail(&self) -> StoreResult<Vec<MailMeta>>;
    /// Make sure everything written is on disk (WAL checkpoint).
    fn flush(&self) -> StoreResult<()>;
    /// Create an account as [`Store::add_account`] does, but only while
    /// none of its numbers is held back, and spending `invite` (a code
    /// hash) when one is given: nothing is created if any of it fails.
    fn sign_up(
        &self,
        id: &str,
        pw_hash: &str,
        numbers: &[String],
        now_ms: i64,
        invite: Option<&str>,
    ) -> StoreResult<()>;
    /// Delete an account as [`Store::remove_account`] does, and keep its
    /// numbers from new accounts until `hold_until_ms`.
    fn remove_account_holding(&self, id: &str, hold_until_ms: i64) -> StoreResult<()>;
    /// Give account `old` the name `new`: its numbers, rules and mail
    /// stay, its session tokens end.
    fn rename_account(&self, old: &str, new: &str) -> StoreResult<()>;
    fn set_admin(&self, id: &str, admin: bool) -> StoreResult<()>;
    /// Whether `number` (canonical) can be taken now.
    fn number_status(&self, number: &str, now_ms: i64) -> StoreResult<NumberStatus>;
    /// Forget one session token; false when there was none.
    fn delete_token(&self, token_hash: &str) -> StoreResult<bool>;
    fn add_invite(&self, code_hash: &str, now_ms: i64) -> StoreResult<()>;
    fn invites(&self) -> StoreResult<Vec<Invite>>;
    /// Set or clear do-not-disturb on a known number.
    fn set_dnd(&self, number: &str, on: bool) -> StoreResult<()>;
    /// Give `account` one more number (canonical), last in its list, if
    /// nobody owns it and it is not held back at `now_ms`.
    fn add_number(&self, account: &str, number: &str, now_ms: i64) -> StoreResult<()>;
    /// Take `number` from `account` with its rule and the rules of other
    /// numbers that forward to it; the last number cannot be removed.
    /// With `hold_until_ms`, nobody can take it again before then.
    fn remove_number(
        &self,
        account: &str,
        number: &str,
        hold_until_ms: Option<i64>,
    ) -> StoreResult<()>;
    /// Make `number` (one of `account`'s) the first of its list: the
    /// number its callees see. The others keep their order after it.
    fn set_first_number(&self, account: &str, number: &str) -> StoreResult<()>;

    // Browser sessions of the web site, kept here so that every node of a
    // cluster knows them.
    /// Keep a new browser session; beyond `max_per_account` sessions of
    /// its account, the least recently used of them end. Refused
    /// (`Invalid`) when the account's password changed after `checked_ms`,
    /// when the password that let the person in was read: a login racing
    /// a password change gets no session.
    fn add_web_session(
        &self,
        s: &WebSession,
        max_per_account: usize,
        checked_ms: i64,
    ) -> StoreResult<()>;
    /// The session whose id hashes to `id_hash`, unless unknown or unused
    /// for `idle_ms` (then it is deleted). Using it counts: its last use is
    /// written again when older than [`WEB_SESSION_TOUCH_MS`].
    fn web_session(
        &self,
        id_hash: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> StoreResult<Option<WebSession>>;
    /// End one browser session (logging out).
    fn delete_web_session(&self, id_hash: &str) -> StoreResult<()>;
    /// End `account`'s browser sessions but `except` (an id hash); how
    /// many ended.
    fn end_web_sessions(&self, account: &str, except: Option<&str>) -> StoreResult<usize>;
    /// Forget sessions unused for `idle_ms`, and count those left.
    fn purge_web_sessions(&self, now_ms: i64, idle_ms: i64) -> StoreResult<usize>;
}

/// How stale a browser session's last use may be before a request writes
/// it again (one write a minute at most, not one per page).
pub const WEB_SESSION_TOUCH_MS: i64 = 60_000;

/// A browser logged in to the web site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// SHA-256 of the cookie's value, hex: the store never holds a value
    /// that would let a reader of the database log in.
    pub id_hash: String,
    pub account: String,
    /// The token every form of the session carries.
    pub csrf: String,
    pub created_ms: i64,
    pub used_ms: i64,
}

/// Run a storage call off the async runtime.
pub async fn blocking<T, F>(store: &Arc<dyn Store>, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
