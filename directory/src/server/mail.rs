//! Stored mail: uploads on bidirectional streams, delivery on
//! unidirectional ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keyline_proto::dir::{DirMsg, ErrorCode, MailKind, OGG_MAGIC};
use tokio::sync::{watch, Notify};

use super::session::{canon, error, quoted, Conn, LoggedIn};
use crate::api::{self};
use crate::shared::{Event, Shared};
use crate::store::{self, NewMail, Quota, StoreError};
use crate::wire::{next_msg, read_body, send_msg, write_body, Incoming};

/// Delivers stored mail of the logged-in account on unidirectional
/// streams, each message once per connection, when woken (after the
/// session's first registration, or when new mail arrives for it).
pub(super) async fn mailman(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    account: watch::Receiver<Option<LoggedIn>>,
    wake: Arc<Notify>,
) {
    let mut sent: HashSet<u64> = HashSet::new();
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = conn.closed() => return,
        }
        let Some(who) = account.borrow().clone() else {
            continue;
        };
        let acct = who.account.clone();
        let pending = match store::blocking(&shared.store, move |s| s.pending_mail(&acct)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reading mail for {}: {e}", who.account);
                continue;
            }
        };
        let fresh: Vec<_> = pending
            .into_iter()
            .filter(|m| !sent.contains(&m.id))
            .collect();
        for m in fresh {
            let id = m.id;
            let body = match store::blocking(&shared.store, move |s| s.mail_body(id)).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("reading message {id}: {e}");
                    continue;
                }
            };
            let res = async {
                let mut s = conn.open_uni().await?;
                send_msg(
                    &mut s,
                    &DirMsg::Mail {
                        id,
                        from: m.from.clone(),
                        to: m.to.clone(),
                        kind: MailKind::parse(m.kind).unwrap_or(MailKind::Text),
                        at_ms: m.at_ms,
                        len: body.len() as u32,
                    },
                )
                .await?;
                write_body(&mut s, &body).await?;
                s.finish()?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match res {
                Ok(()) => {
                    sent.insert(id);
                    tracing::info!("delivered message {id} to {} ({} bytes)", m.to, body.len());
                    shared.publish(&api::Event::MailDelivered {
                        id,
                        to: m.to.clone(),
                        bytes: body.len() as u64,
                    });
                }
                Err(e) => {
                    tracing::info!("delivering message {id}: {e:#}");
                    break;
                }
            }
        }
    }
}

/// Takes mail uploads: each on its own bidirectional stream.
pub(super) async fn mail_uploads(c: Arc<Conn>) {
    loop {
        let Ok((mut send, mut recv)) = c.conn.accept_bi().await else {
            return;
        };
        // Boxed while it runs: inline, every idle session's task would be
        // sized for an upload.
        let reply =
            tokio::time::timeout(Duration::from_secs(60), Box::pin(upload(&c, &mut recv))).await;
        let reply = match reply {
            Ok(r) => r,
            Err(_) => error(
                None,
                ErrorCode::TooLarge,
                "the upload took longer than 60 s",
            ),
        };
        if send_msg(&mut send, &reply).await.is_ok() {
            let _ = send.finish();
        }
        let _ = recv.stop(quinn::VarInt::from_u32(0));
    }
}

pub(super) async fn upload(c: &Arc<Conn>, recv: &mut quinn::RecvStream) -> DirMsg {
    let (req, to, from, kind, len) = match next_msg(recv).await {
        Ok(Incoming::Msg(DirMsg::LeaveMail {
            req,
            to,
            from,
            kind,
            len,
        })) => (req, to, from, kind, len),
        Ok(Incoming::Msg(other)) => {
            return error(
                other.reply_to(),
                ErrorCode::Unexpected,
                format!(
                    "a mail stream starts with leave-mail, not {:?}",
                    other.kind()
                ),
            )
        }
        Ok(Incoming::Unknown(k)) => {
            return error(
                None,
                ErrorCode::UnknownKind,
                format!("unknown message kind {}", quoted(&k)),
            )
        }
        Ok(Incoming::Closed) | Err(_) => {
            return error(None, ErrorCode::Unexpected, "no leave-mail header")
        }
    };
    let Some(who) = c.who() else {
        return error(Some(req), ErrorCode::NotLoggedIn, "log in first");
    };
    let cfg = c.shared.cfg();
    let max = match kind {
        MailKind::Voice => cfg.mail.max_voice_bytes,
        MailKind::Text => cfg.mail.max_text_bytes,
    };
    if len > max {
        return error(
            Some(req),
            ErrorCode::TooLarge,
            format!(
                "the {} message has {len} bytes; at most {max} are accepted",
                kind.as_str()
            ),
        );
    }
    let to = match canon(&to).map(String::from) {
        Ok(t) => t,
        Err(m) => return error(Some(req), ErrorCode::InvalidNumber, m),
    };
    let from = match from.as_deref().map(canon).transpose() {
        Ok(Some(f)) if who.numbers.iter().any(|n| *n == *f) => f.into_string(),
        Ok(Some(f)) => {
            return error(
                Some(req),
                ErrorCode::NotYourNumber,
                format!("{f} is not a number of account {}", who.account),
            )
        }
        Ok(None) => match who.numbers.first() {
            Some(f) => f.clone(),
            None => {
                return error(
                    Some(req),
                    ErrorCode::NotYourNumber,
                    "the account has no number",
                )
            }
        },
        Err(m) => return error(Some(req), ErrorCode::InvalidNumber, m),
    };
    let body = match read_body(recv, len as usize).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                format!("reading the body: {e}"),
            )
        }
    };
    match kind {
        MailKind::Voice if !body.starts_with(OGG_MAGIC) => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                "a voice message must be Ogg Opus (it does not start with \"OggS\")",
            )
        }
        MailKind::Text if std::str::from_utf8(&body).is_err() || body.is_empty() => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                "a text message must be non-empty UTF-8",
            )
        }
        _ => {}
    }
    let quota = Quota {
        messages: cfg.mail.quota_messages,
        bytes: cfg.mail.quota_bytes,
    };
    let from_shown = from.clone();
    let mail = NewMail {
        to: to.clone(),
        from,
        kind,
        body,
        at_ms: store::now_ms(),
    };
    let to2 = to.clone();
    let res = store::blocking(&c.shared.store, move |s| {
        let id = s.store_mail(&mail, quota)?;
        let owner = s
            .numbers()?
            .into_iter()
            .find(|n| n.number == to2)
            .map(|n| n.account);
        Ok((id, owner))
    })
    .await;
    match res {
        Ok((id, owner)) => {
            tracing::info!("stored {} message {id} for {to}", kind.as_str());
            c.shared.publish(&api::Event::MailWaiting {
                id,
                from: from_shown,
                to: to.clone(),
                kind: kind.as_str().to_string(),
                bytes: u64::from(len),
            });
            if let Some(account) = owner {
                let _ = c.shared.hub.send(Event::MailArrived { account }).await;
            }
            DirMsg::MailStored { req, id, to }
        }
        Err(StoreError::Quota(m)) => error(Some(req), ErrorCode::QuotaExceeded, m),
        Err(StoreError::NotFound(m)) => error(Some(req), ErrorCode::UnknownNumber, m),
        Err(e) => error(Some(req), ErrorCode::Storage, e.to_string()),
    }
}
