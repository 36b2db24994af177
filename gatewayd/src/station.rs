//! One station's connection, from hello to goodbye: enrolment (an unknown
//! certificate waits for the admin's decision, bounded by `max_pending`),
//! then its control stream — requests passed to the switch task as
//! [`Event`]s, what the switch sends it written back — and what the
//! gateway answers itself: texts, contacts, voicemail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keyline_net::{pairing_code, peer_fingerprint};
use keyline_proto::codec::{read_frame, write_frame, CodecError};
use keyline_proto::msg::{CallId, FailReason, Msg, ReqId, Role};
use keyline_proto::{number, MAX_MESSAGE, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};

use crate::api::Event as ApiEvent;
use crate::config::Config;
use crate::db::{now_ms, Db};
use crate::shared::{Approved, Decision, Event, Shared};

async fn send_msg(send: &mut quinn::SendStream, msg: &Msg) -> Result<()> {
    write_frame(send, msg, MAX_MESSAGE)
        .await
        .context("writing to the station")
}

/// What a station's next frame was.
enum Incoming {
    Msg(Msg),
    /// A well-formed message of a kind we do not know: answer, carry on.
    Unknown(String),
    Closed,
}

async fn next_msg(recv: &mut quinn::RecvStream) -> Result<Incoming> {
    let Some(body) = read_frame(recv, MAX_MESSAGE).await? else {
        return Ok(Incoming::Closed);
    };
    match Msg::from_cbor(&body) {
        Ok(m) => Ok(Incoming::Msg(m)),
        Err(CodecError::UnknownKind(k)) => Ok(Incoming::Unknown(k)),
        // Kept a `CodecError` underneath, so callers can tell garbage
        // from a lost connection.
        Err(e) => Err(anyhow::Error::new(e).context("protocol violation")),
    }
}

/// Serve one station's connection from hello to goodbye.
pub(crate) async fn serve_station(shared: Arc<Shared>, conn: quinn::Connection) -> Result<()> {
    let fp = peer_fingerprint(&conn).context("the station presented no certificate")?;
    let addr = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("no control stream within 10 s")??;
    let name = match tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv))
        .await
        .context("no hello within 10 s")?
    {
        Ok(Incoming::Msg(Msg::MediaHello { call, token })) => {
            // A caller reaching a mailbox: the gateway is the media end.
            let hello = keyline_net::medialink::Hello::new(call, token, send);
            return crate::voicemail::serve(shared, conn, hello).await;
        }
        Ok(Incoming::Msg(Msg::Hello {
            version,
            role: Role::Agent,
            name,
        })) => {
            if version != PROTOCOL_VERSION {
                let _ = send_msg(
                    &mut send,
                    &Msg::Error {
                        req: None,
                        code: "version".into(),
                        message: format!(
                            "protocol version {version} is not supported (this gateway speaks {PROTOCOL_VERSION})"
                        ),
                    },
                )
                .await;
                conn.close(quinn::VarInt::from_u32(2), b"unsupported version");
                bail!("unsupported protocol version {version}");
            }
            name.map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
        }
        Ok(_) => {
            conn.close(quinn::VarInt::from_u32(1), b"expected hello");
            bail!("the first message was not a station hello");
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
            return Err(e);
        }
    };

    let db = shared.db.clone();
    let fp2 = fp.clone();
    let (row, denied) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((db.agent(&fp2)?, db.is_denied(&fp2)?))
    })
    .await??;
    let approved = match row {
        _ if denied => {
            let _ = send_msg(
                &mut send,
                &Msg::Error {
                    req: None,
                    code: "denied".into(),
                    message: "the office administrator refused this station".into(),
                },
            )
            .await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(quinn::VarInt::from_u32(6), b"denied");
            bail!("station {addr} was denied");
        }
        Some(r) if r.state == "approved" => {
            let db = shared.db.clone();
            let (fp2, a) = (fp.clone(), addr.to_string());
            let _ = tokio::task::spawn_blocking(move || db.touch(&fp2, &a)).await;
            Approved {
                ext: r.ext.context("approved station without extension")?,
                name: r.name,
            }
        }
        _ => match wait_for_approval(&shared, &fp, name, addr, &mut send, &mut recv).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Garbage from a waiting station is refused as it is from
                // any other, with a close that says why.
                if let Some(
                    CodecError::Malformed(_) | CodecError::TooLarge { .. } | CodecError::Encode(_),
                ) = e.downcast_ref::<CodecError>()
                {
                    conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
                }
                return Err(e);
            }
        },
    };

    send_msg(
        &mut send,
        &Msg::Registered {
            ext: approved.ext.clone(),
            name: approved.name.clone(),
        },
    )
    .await?;
    let ext = approved.ext.clone();
    tracing::info!("extension {ext} online from {addr}");
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if send_msg(&mut send, &m).await.is_err() {
                writer_conn.close(quinn::VarInt::from_u32(3), b"write failed");
                break;
            }
        }
    });
    shared
        .events
        .send(Event::Up {
            ext: ext.clone(),
            name: approved.name,
            conn: conn.clone(),
            tx: tx.clone(),
        })
        .await
        .context("switch stopped")?;

    let result = station_loop(&shared, &ext, &tx, &mut recv).await;
    if let Err(e) = &result {
        tracing::warn!("extension {ext} ({addr}): {e:#}; dropping it");
        conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
    }
    let _ = shared
        .events
        .send(Event::Down {
            ext: ext.clone(),
            conn_id: conn.stable_id(),
        })
        .await;
    tracing::info!("extension {ext} offline");
    result
}

async fn station_loop(
    shared: &Arc<Shared>,
    ext: &str,
    tx: &mpsc::Sender<Msg>,
    recv: &mut quinn::RecvStream,
) -> Result<()> {
    loop {
        let msg = match next_msg(recv).await {
            Ok(Incoming::Msg(m)) => m,
            Ok(Incoming::Unknown(kind)) => {
                let _ = tx.try_send(Msg::Error {
                    req: None,
                    code: "unknown-kind".into(),
                    message: format!("unknown message kind {kind:?}"),
                });
                continue;
            }
            Ok(Incoming::Closed) => return Ok(()),
            Err(e) => {
                // A reset or lost connection is not a protocol violation.
                if let Some(CodecError::Io(_) | CodecError::Closed) = e.downcast_ref::<CodecError>()
                {
                    return Ok(());
                }
                return Err(e);
            }
        };
        let msg = match msg {
            Msg::Ping { n } => {
                let _ = tx.try_send(Msg::Pong { n });
                continue;
            }
            Msg::Dial { req, number } => match number::canonicalize(&number) {
                Ok(n) => Msg::Dial { req, number: n },
                Err(e) => {
                    let _ = tx.try_send(Msg::DialFailed {
                        req,
                        reason: FailReason::InvalidNumber,
                        message: e.to_string(),
                    });
                    continue;
                }
            },
            m @ (Msg::Answer { .. }
            | Msg::Reject { .. }
            | Msg::Hangup { .. }
            | Msg::Hold { .. }
            | Msg::ConsultComplete { .. }) => m,
            Msg::Consult { req, call, target } => match transfer_target(tx, req, call, &target) {
                Some(target) => Msg::Consult { req, call, target },
                None => continue,
            },
            Msg::Transfer { req, call, target } => match transfer_target(tx, req, call, &target) {
                Some(target) => Msg::Transfer { req, call, target },
                None => continue,
            },
            Msg::SendText { req, to, body } => {
                let reply = send_text(shared, ext, &to, &body).await;
                let _ = tx.try_send(match reply {
                    Ok(id) => Msg::TextSent { req, id },
                    Err(e) => Msg::Error {
                        req: Some(req),
                        code: "text".into(),
                        message: format!("{e:#}"),
                    },
                });
                continue;
            }
            Msg::VoicemailList { req } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let items =
                    tokio::task::spawn_blocking(move || crate::voicemail::list(&sh, &me)).await;
                let _ = tx.try_send(match items {
                    Ok(Ok(items)) => Msg::Voicemails { req, items },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                });
                continue;
            }
            Msg::VoicemailFetch { req, id, offset } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let got = tokio::task::spawn_blocking(move || {
                    crate::voicemail::chunk(&sh, &me, id, offset)
                })
                .await;
                let reply = match got {
                    Ok(Ok((total, data))) => Msg::VoicemailChunk {
                        req,
                        id,
                        offset,
                        total,
                        data,
                    },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                };
                // Chunks are large: wait for room rather than drop one.
                let _ = tx.send(reply).await;
                if offset == 0 {
                    let _ = shared
                        .events
                        .send(Event::MessageWaiting {
                            ext: ext.to_string(),
                        })
                        .await;
                }
                continue;
            }
            Msg::VoicemailDelete { req, id } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let done = tokio::task::spawn_blocking(move || {
                    crate::voicemail::delete(&sh, &me, id)?;
                    crate::voicemail::list(&sh, &me)
                })
                .await;
                let _ = tx.try_send(match done {
                    Ok(Ok(items)) => Msg::Voicemails { req, items },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                });
                let _ = shared
                    .events
                    .send(Event::MessageWaiting {
                        ext: ext.to_string(),
                    })
                    .await;
                continue;
            }
            Msg::ContactList { req } => {
                let (db, me) = (shared.db.clone(), ext.to_string());
                let items = tokio::task::spawn_blocking(move || contacts(&db, &me)).await;
                let _ = tx.try_send(match items {
                    Ok(Ok(items)) => Msg::Contacts { req, items },
                    Ok(Err(e)) => contacts_error(req, e),
                    Err(e) => contacts_error(req, e.into()),
                });
                continue;
            }
            Msg::TextRead { ids } => {
                let db = shared.db.clone();
                let me = ext.to_string();
                let _ = tokio::task::spawn_blocking(move || db.mark_read(&me, &ids)).await;
                continue;
            }
            other => {
                let _ = tx.try_send(Msg::Error {
                    req: None,
                    code: "unexpected".into(),
                    message: format!("a station may not send {:?}", other.kind()),
                });
                continue;
            }
        };
        shared
            .events
            .send(Event::FromStation {
                ext: ext.to_string(),
                msg,
            })
            .await
            .context("switch stopped")?;
    }
}

fn vm_error(req: u64, e: anyhow::Error) -> Msg {
    Msg::Error {
        req: Some(req),
        code: "voicemail".into(),
        message: format!("{e:#}"),
    }
}

/// The office's contacts as station `me` sees them: every other approved
/// station (by extension) and every short code.
fn contacts(db: &Db, me: &str) -> Result<Vec<keyline_proto::msg::ContactInfo>> {
    use keyline_proto::msg::ContactInfo;
    let mut items: Vec<ContactInfo> = db
        .agents()?
        .into_iter()
        .filter(|a| a.state == "approved")
        .filter_map(|a| {
            let ext = a.ext?;
            (ext != me).then_some(ContactInfo {
                name: a.name,
                number: ext,
                code: None,
            })
        })
        .collect();
    items.extend(
        db.speed_dials()?
            .into_iter()
            .map(|(code, number)| ContactInfo {
                name: None,
                number,
                code: Some(code),
            }),
    );
    Ok(items)
}

fn contacts_error(req: u64, e: anyhow::Error) -> Msg {
    Msg::Error {
        req: Some(req),
        code: "contacts".into(),
        message: format!("{e:#}"),
    }
}

/// Longest text message accepted, in bytes.
const MAX_TEXT: usize = 4096;

/// A transfer or consultation target as the switchboard takes it
/// (canonical); an invalid one is refused to the station here.
fn transfer_target(
    tx: &mpsc::Sender<Msg>,
    req: ReqId,
    call: CallId,
    target: &str,
) -> Option<String> {
    match number::canonicalize(target) {
        Ok(t) => Some(t),
        Err(e) => {
            let _ = tx.try_send(Msg::TransferFailed {
                req,
                call,
                reason: FailReason::InvalidNumber,
                message: e.to_string(),
            });
            None
        }
    }
}

/// Store a text from `from` for the extension `to` and push it if online.
async fn send_text(shared: &Arc<Shared>, from: &str, to: &str, body: &str) -> Result<u64> {
    if body.trim().is_empty() {
        bail!("empty message");
    }
    if body.len() > MAX_TEXT {
        bail!(
            "message too long ({} bytes, at most {MAX_TEXT})",
            body.len()
        );
    }
    let to = number::canonicalize(to)?;
    let db = shared.db.clone();
    let known = {
        let (db, to) = (db.clone(), to.clone());
        tokio::task::spawn_blocking(move || db.agents())
            .await??
            .into_iter()
            .any(|a| a.ext.as_deref() == Some(to.as_str()))
    };
    if !known {
        return send_outside_text(shared, &to, body).await;
    }
    let (f, t, b) = (from.to_string(), to.clone(), body.to_string());
    let row = tokio::task::spawn_blocking(move || db.insert_text(&f, &t, &b)).await??;
    let id = row.id as u64;
    let _ = shared
        .events
        .send(Event::TextStored {
            to,
            text: Msg::Text {
                id,
                from: row.sender,
                body: row.body,
                sent_ms: row.sent_ms,
            },
        })
        .await;
    Ok(id)
}

/// A text for an outside number: the directory stores it until the
/// recipient is online, sent as the office number.
async fn send_outside_text(shared: &Arc<Shared>, to: &str, body: &str) -> Result<u64> {
    let [lo, hi] = shared.extension_range();
    let ext_shaped = to.bytes().all(|b| b.is_ascii_digit())
        && to.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
    let client = shared.dir_client.lock().ok().and_then(|c| c.clone());
    let Some(client) = client.filter(|_| !ext_shaped) else {
        bail!("unknown number {to}");
    };
    let to_number = keyline_dirclient::client::parse_number(to)?;
    let id = client
        .leave_mail(
            &to_number,
            keyline_proto::dir::MailKind::Text,
            body.as_bytes(),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{to}: {e}"))?;
    tracing::info!("text {id} for {to} left with the directory");
    Ok(id)
}

/// Hold an unapproved station until the admin approves its code. `None`
/// when it went away first.
async fn wait_for_approval(
    shared: &Arc<Shared>,
    fp: &str,
    name: Option<String>,
    addr: SocketAddr,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<Option<Approved>> {
    let code = pairing_code(fp, &shared.id.fingerprint);
    let enrolling = shared.enrolling.lock().await;
    let db = shared.db.clone();
    let name2 = name.clone();
    let (fp2, code2, a) = (fp.to_string(), code.clone(), addr.to_string());
    let mut waiting = waiting_stations(shared);
    waiting.push(fp.to_string());
    let (cfg, now) = (shared.cfg(), now_ms());
    let (cap, before) = (cfg.max_pending, now - forget_ms(&cfg));
    let left = tokio::task::spawn_blocking(move || {
        db.upsert_pending(&fp2, &code2, name.as_deref(), &a)?;
        db.prune_pending(before, cap, &waiting)
            .map(|(_, left)| left)
    })
    .await??;
    if left > cap {
        // As many stations as the gateway remembers are connected and
        // waiting: this one is turned away rather than one of them.
        let db = shared.db.clone();
        let fp2 = fp.to_string();
        tokio::task::spawn_blocking(move || db.forget_pending(&fp2)).await??;
        send_msg(
            send,
            &Msg::Error {
                req: None,
                code: "too-many-waiting".into(),
                message: format!(
                    "{cap} stations are already waiting for approval; try again later"
                ),
            },
        )
        .await?;
        let _ = send.finish();
        // Give the error a moment on the wire before the connection goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        bail!("{cap} stations already wait for approval: station {addr} turned away");
    }
    let (tx, mut rx) = oneshot::channel();
    if let Ok(mut p) = shared.pending.lock() {
        p.insert(fp.to_string(), tx);
    }
    drop(enrolling);
    shared.pending_changed();
    tracing::info!("station {addr} waits for approval with code {code}");
    send_msg(send, &Msg::Pending { code: code.clone() }).await?;
    shared.publisher.publish(&ApiEvent::EnrolmentPending {
        fingerprint: fp.to_string(),
        code,
        name: name2,
        addr: addr.to_string(),
    });
    let outcome = loop {
        tokio::select! {
            a = &mut rx => match a {
                Ok(Decision::Approved(a)) => break Some(a),
                Ok(Decision::Denied) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "denied".into(),
                        message: "the office administrator refused this station".into(),
                    }).await?;
                    let _ = send.finish();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(None);
                }
                Err(_) => break None,
            },
            m = next_msg(recv) => match m {
                Ok(Incoming::Msg(Msg::Dial { req, .. })) => {
                    send_msg(send, &Msg::DialFailed {
                        req,
                        reason: FailReason::NotAllowed,
                        message: "this station is waiting for approval".into(),
                    }).await?;
                }
                Ok(Incoming::Msg(Msg::Ping { n })) => send_msg(send, &Msg::Pong { n }).await?,
                Ok(Incoming::Msg(other)) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "not-approved".into(),
                        message: format!("{} is not allowed before approval", other.kind()),
                    }).await?;
                }
                Ok(Incoming::Unknown(kind)) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "unknown-kind".into(),
                        message: format!("unknown message kind {kind:?}"),
                    }).await?;
                }
                Ok(Incoming::Closed) => break None,
                Err(e) => {
                    pending_left(shared, fp).await;
                    return Err(e);
                }
            }
        }
    };
    if outcome.is_none() {
        pending_left(shared, fp).await;
    }
    Ok(outcome)
}

/// Fingerprints of the stations connected and waiting for approval.
fn waiting_stations(shared: &Shared) -> Vec<String> {
    shared
        .pending
        .lock()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn forget_ms(cfg: &Config) -> i64 {
    i64::try_from(cfg.pending_forget_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A station waiting for approval went away: no longer listed as
/// waiting, and remembered from now for `pending_forget_secs`.
async fn pending_left(shared: &Arc<Shared>, fp: &str) {
    if let Ok(mut p) = shared.pending.lock() {
        p.remove(fp);
    }
    shared.pending_changed();
    shared.publisher.publish(&ApiEvent::EnrolmentLeft {
        fingerprint: fp.to_string(),
        code: pairing_code(fp, &shared.id.fingerprint),
    });
    let db = shared.db.clone();
    let fp = fp.to_string();
    let at = now_ms();
    match tokio::task::spawn_blocking(move || db.pending_left(&fp, at)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("recording that a waiting station left: {e:#}"),
        Err(e) => tracing::warn!("recording that a waiting station left: {e}"),
    }
}

/// Forget stations that waited for approval and went away more than
/// `pending_forget_secs` ago, and keep at most `max_pending`; checked
/// every few seconds.
pub(crate) async fn prune_pending(shared: Arc<Shared>) {
    loop {
        let cfg = shared.cfg();
        let every = Duration::from_secs((cfg.pending_forget_secs / 4).clamp(1, 60));
        tokio::time::sleep(every).await;
        let waiting = waiting_stations(&shared);
        let (cap, before) = (cfg.max_pending, now_ms() - forget_ms(&cfg));
        let db = shared.db.clone();
        match tokio::task::spawn_blocking(move || db.prune_pending(before, cap, &waiting)).await {
            Ok(Ok((0, _))) => {}
            Ok(Ok((n, _))) => {
                tracing::info!("forgot {n} stations that waited for approval and left")
            }
            Ok(Err(e)) => tracing::warn!("forgetting stations that left: {e:#}"),
            Err(e) => tracing::warn!("forgetting stations that left: {e}"),
        }
    }
}
