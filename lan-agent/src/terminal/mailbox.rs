//! The terminal's mailbox on disk: texts and voice mail the directory
//! delivered. Each message is a body file (`.txt`, or `.ogg` for Ogg Opus
//! voice) and a `.json` description beside it, both written to a temporary
//! name, synced and renamed, so that a message is either whole on disk or
//! absent. Only then is it acknowledged to the directory, which deletes
//! its copy; a crash before that means a redelivery, which is recognised
//! (same id and time) and not stored twice.
//!
//! Blocking file I/O: call it from `spawn_blocking`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keyline_dirclient::client::Mail;
use keyline_proto::dir::MailKind;
use serde::{Deserialize, Serialize};

/// One stored message, as described by its `.json` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    /// The directory's id of the message.
    pub id: u64,
    /// The sender's number (asserted by the directory).
    pub from: String,
    /// Our number it was left for.
    pub to: String,
    /// `text` or `voice`.
    pub kind: String,
    /// When it was left, milliseconds since the Unix epoch.
    pub sent_ms: i64,
    /// The body file, inside the mailbox directory.
    pub file: PathBuf,
    /// The text of a text message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The length of a voice message, when it could be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Shown by `messages` already.
    #[serde(default)]
    pub read: bool,
}

#[derive(Debug, Clone)]
pub struct Mailbox {
    dir: PathBuf,
}

impl Mailbox {
    /// Open (creating it, private to the user) the mailbox directory.
    pub fn open(dir: &Path) -> Result<Mailbox> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the mailbox directory {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        Ok(Mailbox {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stem(m: &Mail) -> String {
        format!("{}-{}", m.at_ms, m.id)
    }

    /// Store a delivered message durably; on a redelivery, the copy
    /// already stored.
    pub fn save(&self, m: &Mail) -> Result<Stored> {
        let stem = Self::stem(m);
        let meta_path = self.dir.join(format!("{stem}.json"));
        if let Ok(old) = read_meta(&meta_path) {
            return Ok(old);
        }
        let (kind, ext) = match m.kind {
            MailKind::Text => ("text", "txt"),
            MailKind::Voice => ("voice", "ogg"),
        };
        let file = self.dir.join(format!("{stem}.{ext}"));
        write_atomic(&file, &m.body)?;
        let (body, seconds) = match m.kind {
            MailKind::Text => (Some(String::from_utf8_lossy(&m.body).into_owned()), None),
            MailKind::Voice => (
                None,
                keyline_media::read_ogg_opus_bytes(&m.body)
                    .ok()
                    .map(|pcm| pcm.len() as f64 / 48_000.0),
            ),
        };
        let stored = Stored {
            id: m.id,
            from: m.from.clone(),
            to: m.to.clone(),
            kind: kind.to_string(),
            sent_ms: m.at_ms,
            file,
            body,
            seconds,
            read: false,
        };
        write_meta(&meta_path, &stored)?;
        sync_dir(&self.dir);
        Ok(stored)
    }

    /// Every stored message, oldest first. Unreadable descriptions are
    /// skipped with a warning.
    pub fn list(&self) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir)
            .with_context(|| format!("reading the mailbox {}", self.dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match read_meta(&p) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!("skipping {}: {e:#}", p.display()),
            }
        }
        out.sort_by_key(|s| (s.sent_ms, s.id));
        Ok(out)
    }

    /// The unread messages, oldest first, now marked read.
    pub fn take_unread(&self) -> Result<Vec<Stored>> {
        let unread: Vec<Stored> = self.list()?.into_iter().filter(|s| !s.read).collect();
        for s in &unread {
            let mut r = s.clone();
            r.read = true;
            let path = self.dir.join(format!("{}-{}.json", s.sent_ms, s.id));
            write_meta(&path, &r)?;
        }
        Ok(unread)
    }
}

fn read_meta(path: &Path) -> Result<Stored> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_meta(path: &Path, s: &Stored) -> Result<()> {
    let mut text = serde_json::to_string_pretty(s).context("describing a message")?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Write `data` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mail(id: u64, kind: MailKind, body: &[u8]) -> Mail {
        Mail {
            id,
            from: "앨리스".into(),
            to: "1002".into(),
            kind,
            at_ms: 1_700_000_000_000 + id as i64,
            body: body.to_vec(),
        }
    }

    #[test]
    fn stores_once_lists_in_order_and_marks_read() {
        let dir = std::env::temp_dir().join(format!("kl-mailbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mb = Mailbox::open(&dir).unwrap();
        let t = mb
            .save(&mail(7, MailKind::Text, "다시 전화해".as_bytes()))
            .unwrap();
        assert_eq!(t.body.as_deref(), Some("다시 전화해"));
        assert!(t.file.exists());
        mb.save(&mail(3, MailKind::Voice, b"not really ogg"))
            .unwrap();
        // A redelivery is recognised.
        mb.save(&mail(7, MailKind::Text, b"changed?")).unwrap();
        let all = mb.list().unwrap();
        assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(all[1].body.as_deref(), Some("다시 전화해"));
        assert_eq!(mb.take_unread().unwrap().len(), 2);
        assert!(mb.take_unread().unwrap().is_empty());
        // A redelivery after reading does not make it unread again.
        mb.save(&mail(7, MailKind::Text, b"x")).unwrap();
        assert!(mb.take_unread().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
