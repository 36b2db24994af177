//! Texts kept until their recipient reads them and voice messages in the
//! mailboxes, including the ones the directory delivers (kept once
//! however often it delivers them).

use super::*;

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

impl Db {
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
