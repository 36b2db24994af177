//! The directory's durable data (accounts, numbers, session tokens,
//! forwarding rules and do-not-disturb, invite codes, held-back numbers,
//! stored mail), behind the [`Store`] trait so that the server never knows
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

use keyline_proto::dir::{ForwardRule, MailId, MailKind};
use serde::Serialize;

pub mod copy;
mod postgres;
mod sqlite;

pub(crate) use self::postgres::redact as redact_url;
pub use self::postgres::{PostgresStore, POSTGRES_MIGRATIONS};
pub use self::sqlite::{migrate, migrate_from, SqliteStore, MIGRATIONS, SCHEMA};

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

/// A number, its owner, its forwarding rule and whether it is set to
/// do-not-disturb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRow {
    pub number: String,
    pub account: String,
    pub forward: Option<ForwardRule>,
    pub dnd: bool,
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
    /// Set the password hash and end every session but `keep` (a token hash).
    fn set_password(&self, id: &str, pw_hash: &str, keep: Option<&str>) -> StoreResult<()>;
    /// Every number with its owner and rule.
    fn numbers(&self) -> StoreResult<Vec<NumberRow>>;
    /// Set or clear a forwarding rule; the target must be a known number.
    fn set_forward(&self, number: &str, rule: Option<&ForwardRule>, now_ms: i64)
        -> StoreResult<()>;
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
