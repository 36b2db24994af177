//! The terminal's mail: texts left with the directory for others, and
//! what the directory delivers to us, stored in the [`Mailbox`] as it
//! comes (then acknowledged) and read or played by the control commands
//! `messages` and `voicemail list|play`.

use std::sync::Arc;

use anyhow::{Context, Result};
use keyline_dirclient::client::{parse_number, DirClient, Mail};
use keyline_media::FRAME_SAMPLES;
use keyline_net::control;
use keyline_proto::dir::MailKind;
use serde_json::{json, Value};

use super::Terminal;
use crate::api::Request;

/// The mail commands of the control socket.
pub(super) async fn control(t: &Arc<Terminal>, req: Request) -> Value {
    match req {
        Request::Message { to, body } => {
            let Some(client) = t.lock().client.clone() else {
                return control::error("not connected to the directory");
            };
            let sent = match parse_number(&to) {
                Ok(n) => {
                    client
                        .leave_mail(&n, MailKind::Text, body.as_bytes(), None)
                        .await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(id) => json!({"ok": true, "id": id}),
                Err(e) => control::error(format!("message not left for {to}: {e}")),
            }
        }
        Request::Messages => {
            let mb = t.mailbox.clone();
            match tokio::task::spawn_blocking(move || mb.take_unread()).await {
                Ok(Ok(list)) => {
                    t.lock().unread = 0;
                    json!({"ok": true, "messages": list})
                }
                Ok(Err(e)) => control::error(format!("{e:#}")),
                Err(e) => control::error(format!("reading the mailbox: {e}")),
            }
        }
        Request::VoicemailList => {
            let mb = t.mailbox.clone();
            match tokio::task::spawn_blocking(move || mb.list()).await {
                Ok(Ok(list)) => {
                    let items: Vec<Value> = list
                        .into_iter()
                        .filter(|m| m.kind == "voice")
                        .map(|m| {
                            json!({"id": m.id, "from": m.from, "secs": m.seconds,
                                   "heard": m.read, "file": m.file})
                        })
                        .collect();
                    json!({"ok": true, "voicemails": items})
                }
                Ok(Err(e)) => control::error(format!("{e:#}")),
                Err(e) => control::error(format!("reading the mailbox: {e}")),
            }
        }
        Request::VoicemailPlay { id } => play_voicemail(t, id).await,
        Request::VoicemailDelete { .. } => control::error(
            "a terminal's voice mail is kept as files; delete them from the mailbox directory",
        ),
        other => control::error(format!("{:?} is not a mail command", other.name())),
    }
}

/// Save a delivered message to disk, then let the directory delete it.
pub(super) async fn store_mail(t: Arc<Terminal>, client: DirClient, m: Mail) {
    let mb = t.mailbox.clone();
    let id = m.id;
    let saved = tokio::task::spawn_blocking(move || {
        let s = mb.save(&m)?;
        let unread = mb.list()?.iter().filter(|m| !m.read).count();
        Ok::<_, anyhow::Error>((s, unread))
    })
    .await;
    match saved {
        Ok(Ok((s, unread))) => {
            match s.kind.as_str() {
                "text" => println!(
                    "message from {}: {}",
                    s.from,
                    s.body.as_deref().unwrap_or("")
                ),
                _ => println!("voice mail from {} ({})", s.from, s.file.display()),
            }
            {
                let mut st = t.lock();
                if unread > st.unread {
                    let message = serde_json::to_value(&s).unwrap_or(Value::Null);
                    st.station
                        .events
                        .publish(json!({"event": "message", "message": message}));
                }
                st.unread = unread;
            }
            if let Err(e) = client.ack_mail(id).await {
                // Redelivered next time; the mailbox recognises it.
                tracing::warn!("could not acknowledge message {id}: {e}");
            }
        }
        Ok(Err(e)) => tracing::warn!("message {id} not stored (the directory keeps it): {e:#}"),
        Err(e) => tracing::warn!("message {id} not stored: {e}"),
    }
}

/// Play stored voice mail `id` (or every unheard one) on the output.
async fn play_voicemail(t: &Arc<Terminal>, id: Option<u64>) -> Value {
    if t.lock().station.phone.call().is_some() {
        return control::error("hang up first");
    }
    let mb = t.mailbox.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<(Vec<Value>, Vec<i16>)> {
        let chosen: Vec<_> = mb
            .list()?
            .into_iter()
            .filter(|m| m.kind == "voice" && id.map_or(!m.read, |want| m.id == want))
            .collect();
        let mut pcm = Vec::new();
        for m in &chosen {
            pcm.extend(
                keyline_media::read_ogg_opus(&m.file)
                    .with_context(|| format!("voice mail {}", m.id))?,
            );
            pcm.extend(std::iter::repeat_n(0i16, FRAME_SAMPLES * 25));
        }
        let list = chosen
            .iter()
            .map(|m| json!({"id": m.id, "from": m.from}))
            .collect();
        Ok((list, pcm))
    })
    .await;
    let (list, pcm) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return control::error(format!("{e:#}")),
        Err(e) => return control::error(format!("reading the mailbox: {e}")),
    };
    if list.is_empty() {
        return match id {
            Some(id) => control::error(format!("no voice mail {id}")),
            None => control::error("no new voice mail"),
        };
    }
    let seconds = pcm.len() as f64 / 48_000.0;
    let task = t.audio.play(pcm);
    if let Some(old) = t.lock().playback.replace(task) {
        old.abort();
    }
    json!({"ok": true, "playing": list, "seconds": seconds})
}
