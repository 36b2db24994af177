//! The SQLite store's schema: [`SCHEMA`] for a new database, the
//! [`MIGRATIONS`] that bring an older one up to date (`PRAGMA
//! user_version` counts them), and [`migrate`], which applies one or the
//! other under the write lock.

use rusqlite::Connection;

/// The current schema, for a new database.
pub const SCHEMA: &str = "
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    pw_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    pw_changed_ms INTEGER NOT NULL DEFAULT 0,
    admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE numbers (
    number TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    dnd INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX numbers_account ON numbers (account, position);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX sessions_account ON sessions (account);
CREATE TABLE forwards (
    number TEXT NOT NULL REFERENCES numbers (number) ON DELETE CASCADE,
    rule TEXT NOT NULL CHECK (rule IN ('always', 'unregistered', 'busy', 'no-answer')),
    target TEXT NOT NULL,
    set_ms INTEGER NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (number, rule)
);
CREATE TABLE mail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('voice', 'text')),
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX mail_account ON mail (account, id);
CREATE TABLE invites (
    code_hash TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    used_by TEXT
);
CREATE TABLE held_numbers (
    number TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
CREATE TABLE calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    outgoing INTEGER NOT NULL,
    own_number TEXT NOT NULL,
    other_number TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    answered INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    forwarded_to TEXT,
    duration_ms INTEGER,
    relayed INTEGER
);
CREATE INDEX calls_account ON calls (account, started_ms);
CREATE INDEX calls_started ON calls (started_ms);
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL
);
CREATE INDEX web_sessions_account ON web_sessions (account, used_ms);
CREATE INDEX web_sessions_used ON web_sessions (used_ms);
";

/// Migrations from older databases, applied in order; index + 1 is the
/// `user_version` each one produces.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, numbers and session tokens.
    "CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        pw_hash TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE numbers (
        number TEXT PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        position INTEGER NOT NULL
    );
    CREATE INDEX numbers_account ON numbers (account, position);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX sessions_account ON sessions (account);",
    // 2: server-side forwarding and stored mail; password change times.
    "ALTER TABLE accounts ADD COLUMN pw_changed_ms INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE forwards (
        number TEXT PRIMARY KEY REFERENCES numbers (number) ON DELETE CASCADE,
        rule TEXT NOT NULL CHECK (rule IN ('always', 'unregistered')),
        target TEXT NOT NULL,
        set_ms INTEGER NOT NULL
    );
    CREATE TABLE mail (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        to_number TEXT NOT NULL,
        from_number TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('voice', 'text')),
        body BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX mail_account ON mail (account, id);",
    // 3: the web site: operator accounts, invite codes, numbers held back
    // after an account is deleted.
    "ALTER TABLE accounts ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE invites (
        code_hash TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        used_by TEXT
    );
    CREATE TABLE held_numbers (
        number TEXT PRIMARY KEY,
        until_ms INTEGER NOT NULL
    );",
    // 4: forwarding on busy and on no answer (the rule's check widened,
    // which SQLite can only do by making the table again); do-not-disturb
    // per number.
    "CREATE TABLE forwards_new (
        number TEXT PRIMARY KEY REFERENCES numbers (number) ON DELETE CASCADE,
        rule TEXT NOT NULL CHECK (rule IN ('always', 'unregistered', 'busy', 'no-answer')),
        target TEXT NOT NULL,
        set_ms INTEGER NOT NULL
    );
    INSERT INTO forwards_new (number, rule, target, set_ms)
        SELECT number, rule, target, set_ms FROM forwards;
    DROP TABLE forwards;
    ALTER TABLE forwards_new RENAME TO forwards;
    ALTER TABLE numbers ADD COLUMN dnd INTEGER NOT NULL DEFAULT 0;",
    // 5: several forwarding rules per number, one of each kind, each on
    // or off; call history.
    "CREATE TABLE forwards_new (
        number TEXT NOT NULL REFERENCES numbers (number) ON DELETE CASCADE,
        rule TEXT NOT NULL CHECK (rule IN ('always', 'unregistered', 'busy', 'no-answer')),
        target TEXT NOT NULL,
        set_ms INTEGER NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (number, rule)
    );
    INSERT INTO forwards_new (number, rule, target, set_ms)
        SELECT number, rule, target, set_ms FROM forwards;
    DROP TABLE forwards;
    ALTER TABLE forwards_new RENAME TO forwards;
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        outgoing INTEGER NOT NULL,
        own_number TEXT NOT NULL,
        other_number TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        answered INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        forwarded_to TEXT,
        duration_ms INTEGER,
        relayed INTEGER
    );
    CREATE INDEX calls_account ON calls (account, started_ms);
    CREATE INDEX calls_started ON calls (started_ms);",
    // 6: the web site's browser sessions, shared by every node.
    "CREATE TABLE web_sessions (
        id_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        used_ms INTEGER NOT NULL
    );
    CREATE INDEX web_sessions_account ON web_sessions (account, used_ms);
    CREATE INDEX web_sessions_used ON web_sessions (used_ms);",
];

/// Bring `conn` to the current schema: [`SCHEMA`] for an empty database,
/// [`MIGRATIONS`] from an older version.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    // The write lock before the version is read: two processes opening a
    // new state directory at once (the daemon and `keyline-directory user
    // add`) make the schema once, one after the other.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let target = MIGRATIONS.len() as i64;
    if version > target {
        bail!("database schema version {version} is newer than this program ({target}); upgrade keyline");
    }
    if version == target {
        return Ok(());
    }
    if version == 0 {
        let tables: i64 = tx.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if tables == 0 {
            tx.execute_batch(SCHEMA).context("creating the schema")?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
            return Ok(());
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", target)?;
    tx.commit()?;
    Ok(())
}

/// Apply migrations `from`.. (tests use it to build old databases).
pub fn migrate_from(conn: &mut Connection, from: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
