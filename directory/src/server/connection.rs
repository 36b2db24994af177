//! One endpoint's connection from hello to goodbye: its control stream
//! read and dispatched, its writer, its login deadline and migrations.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_net::peer_fingerprint;
use keyline_proto::codec::CodecError;
use keyline_proto::dir::{DirMsg, ErrorCode};
use keyline_proto::msg::Role;
use keyline_proto::PROTOCOL_VERSION;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use super::accounts::{
    account_info, change_password, forward_change, list_forwards, login, resume, ForwardChange,
};
use super::mail::{mail_uploads, mailman};
use super::session::{
    canon, clipped, error, parse_candidates, parse_media_end, quoted, Conn, LoggedIn,
    CONTROL_QUEUE, IN_FLIGHT,
};
use crate::api::EndpointKind;
use crate::auth;
use crate::routing::{MediaEnd, Placing, Request};
use crate::shared::{Event, Out, Shared};
use crate::store;
use crate::wire::{next_msg, send_msg, Incoming, MsgReader, MsgWriter, WRITE_BATCH};

/// Serve one endpoint's connection from hello to goodbye.
pub(super) async fn serve_conn(shared: Arc<Shared>, conn: quinn::Connection) -> Result<()> {
    let fp = peer_fingerprint(&conn).context("the endpoint presented no certificate")?;
    let observed = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("no control stream within 10 s")??;
    let hello = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv))
        .await
        .context("no hello within 10 s")?;
    let hello_name: Option<String>;
    let hello_client: Option<String>;
    let hello_role: Role;
    match hello {
        Ok(Incoming::Msg(DirMsg::Hello {
            version,
            role,
            name,
            client,
        })) => {
            if version != PROTOCOL_VERSION {
                let _ = send_msg(
                    &mut send,
                    &error(
                        None,
                        ErrorCode::Version,
                        format!("protocol version {version} is not supported (this directory speaks {PROTOCOL_VERSION})"),
                    ),
                )
                .await;
                let _ = send.finish();
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.close(quinn::VarInt::from_u32(2), b"unsupported version");
                anyhow::bail!("unsupported protocol version {version}");
            }
            if role == Role::Directory {
                conn.close(quinn::VarInt::from_u32(1), b"directories do not register");
                anyhow::bail!("a directory connected as an endpoint");
            }
            hello_name = name.map(|n| clipped(&n));
            hello_client = client.map(|n| clipped(&n));
            hello_role = role;
        }
        Ok(_) => {
            conn.close(quinn::VarInt::from_u32(1), b"expected hello");
            anyhow::bail!("the first message was not a hello");
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
            return Err(e.into());
        }
    }
    let cfg = shared.cfg();
    send_msg(
        &mut send,
        &DirMsg::Welcome {
            version: PROTOCOL_VERSION,
            observed: observed.to_string(),
            ttl_secs: cfg.binding_ttl_secs,
            policy: cfg.direct_connect,
        },
    )
    .await?;

    let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Out>(CONTROL_QUEUE);
    let (acct_tx, acct_rx) = watch::channel::<Option<LoggedIn>>(None);
    let wake = Arc::new(Notify::new());
    let drained = Arc::new(Notify::new());
    let moved = Arc::new(std::sync::Mutex::new(observed));
    tokio::spawn(writer(
        conn.clone(),
        send,
        (rx, drained.clone()),
        acct_rx.clone(),
        wake.clone(),
    ));
    tokio::spawn(mailman(
        shared.clone(),
        conn.clone(),
        acct_rx.clone(),
        wake.clone(),
    ));
    tokio::spawn(login_deadline(
        conn.clone(),
        acct_rx.clone(),
        cfg.login_deadline(),
    ));
    shared
        .hub
        .send(Event::Up {
            sid,
            fp,
            conn: conn.clone(),
            observed: moved.clone(),
            tx: tx.clone(),
            mail: wake,
            name: hello_name,
            client: hello_client,
            terminal: hello_role == Role::Terminal,
            kind: if hello_role == Role::Gateway {
                EndpointKind::Office
            } else {
                EndpointKind::Terminal
            },
        })
        .await
        .context("the directory is stopping")?;
    let c = Arc::new(Conn {
        sid,
        shared: shared.clone(),
        conn: conn.clone(),
        tx,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        drained,
        account: acct_tx,
        observed: moved,
    });
    tokio::spawn(mail_uploads(c.clone()));
    tracing::debug!("endpoint {observed} connected as session {sid}");

    let result = control_loop(&c, recv).await;
    match &result {
        Err(e) => {
            tracing::warn!("session {sid} ({observed}): {e:#}; dropping it");
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
        }
        // The control stream is the session: without it, nothing rings.
        Ok(()) => conn.close(quinn::VarInt::from_u32(0), b"control stream closed"),
    }
    let _ = shared.hub.send(Event::Down { sid }).await;
    result
}

pub(super) async fn control_loop(c: &Arc<Conn>, recv: quinn::RecvStream) -> Result<()> {
    let mut reader = MsgReader::new(recv);
    loop {
        let msg = match reader.next().await {
            Ok(Incoming::Msg(m)) => m,
            Ok(Incoming::Unknown(kind)) => {
                c.reply(error(
                    None,
                    ErrorCode::UnknownKind,
                    format!("unknown message kind {}", quoted(&kind)),
                ));
                continue;
            }
            // The end of the stream (a partial frame included), or the
            // connection went.
            Ok(Incoming::Closed) | Err(CodecError::Io(_)) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("protocol violation: {e}")),
        };
        c.room().await;
        handle_msg(c, msg, Instant::now()).await?;
    }
}

/// Handle one message of a session's control stream, read at `read_at`.
/// The account requests, rare and with large futures (the store, the
/// password check), are boxed while they run: inline, they would size
/// every idle session's task for them.
pub(super) async fn handle_msg(c: &Arc<Conn>, msg: DirMsg, read_at: Instant) -> Result<()> {
    match msg {
        DirMsg::Ping { n } => c.reply(DirMsg::Pong { n }),
        DirMsg::Login {
            req,
            account,
            password,
        } => Box::pin(login(c, req, account, password)).await?,
        DirMsg::Resume { req, token } => Box::pin(resume(c, req, token)).await?,
        DirMsg::ChangePassword { req, old, new } => {
            Box::pin(change_password(c, req, old, new)).await?
        }
        DirMsg::SetForward { req, number, rule } => {
            Box::pin(forward_change(c, req, number, ForwardChange::Set(rule))).await?
        }
        DirMsg::ForwardOff { req, number, when } => {
            Box::pin(forward_change(c, req, number, ForwardChange::Off(when))).await?
        }
        DirMsg::ListForwards { req } => Box::pin(list_forwards(c, req)).await?,
        DirMsg::AccountQuery { req } => Box::pin(account_info(c, req)).await?,
        DirMsg::AckMail { req, id } => {
            let Some(who) = c.who() else {
                c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
                return Ok(());
            };
            let account = who.account.clone();
            match store::blocking(&c.shared.store, move |s| s.delete_mail(&account, id)).await {
                Ok(true) => c.reply(DirMsg::Ok { req }),
                Ok(false) => c.reply(error(
                    Some(req),
                    ErrorCode::NoSuchMail,
                    format!("no message {id} waits for account {}", who.account),
                )),
                Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
            }
        }
        DirMsg::Register {
            req,
            numbers,
            candidates,
        } => {
            c.shared.metrics.registrations.increment(1);
            // A refresh right after the endpoint moved: use its new address.
            c.report_move().await?;
            let numbers = match numbers.iter().map(|n| canon(n)).collect() {
                Ok(ns) => ns,
                Err(m) => {
                    c.reply(error(Some(req), ErrorCode::InvalidNumber, m));
                    return Ok(());
                }
            };
            match parse_candidates(&candidates) {
                Ok(own) => c.route(Request::Register { req, numbers, own }).await?,
                Err(m) => c.reply(error(Some(req), ErrorCode::BadAddress, m)),
            }
        }
        DirMsg::Unregister { req, numbers } => match numbers.iter().map(|n| canon(n)).collect() {
            Ok(numbers) => c.route(Request::Unregister { req, numbers }).await?,
            Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
        },
        DirMsg::Lookup { req, number } => {
            c.shared.metrics.lookups.increment(1);
            match canon(&number) {
                Ok(number) => {
                    let token = auth::new_call_token();
                    c.route(Request::Lookup { req, number, token }).await?
                }
                Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
            }
        }
        DirMsg::Call {
            req,
            number,
            from,
            candidates,
            hops,
            media_fp,
            handoff,
        } => {
            let fail = |code, message: String| DirMsg::CallFailed {
                req,
                code,
                number: clipped(&number),
                message,
                mail: false,
            };
            let n = match canon(&number) {
                Ok(n) => n,
                Err(m) => {
                    c.reply(fail(ErrorCode::InvalidNumber, m));
                    return Ok(());
                }
            };
            let from = match from.as_deref().map(canon).transpose() {
                Ok(f) => f,
                Err(m) => {
                    c.reply(fail(ErrorCode::InvalidNumber, m));
                    return Ok(());
                }
            };
            let own = match parse_media_end(&candidates, media_fp.as_deref()) {
                Ok(cs) => cs,
                Err(m) => {
                    c.reply(fail(ErrorCode::BadAddress, m));
                    return Ok(());
                }
            };
            let media = media_fp.map(|fp| MediaEnd {
                fp,
                addrs: own.clone(),
            });
            c.route_read_at(
                Request::Call {
                    req,
                    number: n,
                    from,
                    own,
                    hops,
                    placing: Placing {
                        media,
                        handoff,
                        check_key: Some(auth::new_call_token()),
                    },
                },
                read_at,
            )
            .await?
        }
        DirMsg::Answer {
            req,
            call,
            media_fp,
            candidates,
        } => match parse_media_end(&candidates, media_fp.as_deref()) {
            Ok(addrs) => {
                c.route(Request::Answer {
                    req,
                    call,
                    token: auth::new_call_token(),
                    media: media_fp.map(|fp| MediaEnd { fp, addrs }),
                })
                .await?
            }
            Err(m) => c.reply(error(Some(req), ErrorCode::BadAddress, m)),
        },
        DirMsg::Redirect { req, call, number } => match canon(&number) {
            Ok(number) => c.route(Request::Redirect { req, call, number }).await?,
            Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
        },
        DirMsg::Transfer {
            req,
            call,
            number,
            handoff,
        } => match canon(&number) {
            Ok(number) => {
                c.route(Request::Transfer {
                    req,
                    call,
                    number,
                    handoff,
                })
                .await?
            }
            Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
        },
        DirMsg::Reject { req, call } => {
            c.route(Request::Decline {
                req,
                call,
                busy: false,
            })
            .await?
        }
        DirMsg::Busy { req, call } => {
            c.route(Request::Decline {
                req,
                call,
                busy: true,
            })
            .await?
        }
        DirMsg::Hangup { call } => c.route(Request::Hangup { call }).await?,
        DirMsg::Fallback { req, call } => c.route(Request::Fallback { req, call }).await?,
        other => c.reply(error(
            other.reply_to(),
            ErrorCode::Unexpected,
            format!("an endpoint may not send {:?}", other.kind()),
        )),
    }
    Ok(())
}

/// Writes the session's outgoing messages in order: everything queued
/// (at most [`WRITE_BATCH`] messages) goes out in one stream write per
/// wake-up, and `drained` is signalled each time messages are taken. The
/// first `Registered` after a login wakes mail delivery.
pub(super) async fn writer(
    conn: quinn::Connection,
    send: quinn::SendStream,
    (mut rx, drained): (mpsc::Receiver<Out>, Arc<Notify>),
    mut account: watch::Receiver<Option<LoggedIn>>,
    wake: Arc<Notify>,
) {
    // Grown by what arrives together, and shrunk after a small batch: a
    // quiet session keeps a few slots, not a whole batch's (12 KiB), and
    // a busy one keeps its room.
    const KEEP: usize = 4;
    let mut batch = Vec::new();
    let mut out = MsgWriter::new(send);
    loop {
        let taken = rx.recv_many(&mut batch, WRITE_BATCH).await;
        if taken == 0 {
            break;
        }
        drained.notify_waiters();
        let mut mail = false;
        let mut written = Ok(());
        for Out::Msg(m) in batch.drain(..) {
            if matches!(*m, DirMsg::Registered { .. }) && account.has_changed().unwrap_or(false) {
                // The session's first registration since it logged in.
                account.borrow_and_update();
                mail = true;
            }
            if written.is_ok() {
                written = out.push(&m).await.map_err(|e| (m.kind(), e));
            }
        }
        if written.is_ok() {
            written = out.flush().await.map_err(|e| ("batch", e));
        }
        if let Err((what, e)) = written {
            if !matches!(e, CodecError::Io(_)) {
                tracing::warn!("encoding {what:?}: {e}");
            }
            conn.close(quinn::VarInt::from_u32(3), b"write failed");
            break;
        }
        if taken <= KEEP {
            batch.shrink_to(KEEP);
        }
        if mail {
            wake.notify_one();
        }
    }
    // Whoever waits for room learns the queue is closed.
    drop(rx);
    drained.notify_waiters();
    out.finish();
}

/// Closes a connection that has not logged in within `after` of its
/// hello: an endpoint that only says hello holds memory for nothing.
/// Logged-in sessions stay as long as QUIC keeps them alive.
pub(super) async fn login_deadline(
    conn: quinn::Connection,
    mut account: watch::Receiver<Option<LoggedIn>>,
    after: Duration,
) {
    tokio::select! {
        r = tokio::time::timeout(after, account.wait_for(Option::is_some)) => {
            if r.is_err() {
                let secs = after.as_secs();
                tracing::info!(
                    "endpoint {} did not log in within {secs} s; closing",
                    conn.remote_address()
                );
                let reason = format!("no login within {secs} s");
                conn.close(quinn::VarInt::from_u32(7), reason.as_bytes());
            }
        }
        _ = conn.closed() => {}
    }
}
