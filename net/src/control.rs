//! The local control socket behind every CLI subcommand.
//!
//! A Unix stream socket in the state directory; one JSON object per line
//! each way. A request is `{"cmd": "...", ...}`; a reply is
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Only the
//! daemon's own user, root, and members of the daemon's group may connect
//! (the peer's credentials are checked on every connection).
//!
//! A daemon that publishes [`Events`] also takes `{"cmd": "subscribe"}`:
//! the reply `{"ok": true, "subscribed": true}` is followed by one event
//! object per line for as long as the connection stays open. Each
//! subscriber has a bounded queue ([`EVENT_QUEUE`]); one that reads too
//! slowly is sent `{"event": "dropped", ...}` and disconnected, and never
//! slows the daemon.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Largest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Name of the control socket inside a state directory.
pub const SOCKET_NAME: &str = "control.sock";

pub fn socket_path(state: &Path) -> PathBuf {
    state.join(SOCKET_NAME)
}

/// Bind the control socket, replacing a stale one left by a crash but
/// refusing to steal one a live process still serves.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another instance is already running (control socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    }
    Ok(l)
}

/// Events a subscriber may still have queued before it counts as too slow.
pub const EVENT_QUEUE: usize = 256;

/// One subscriber: its queue, and whether it was dropped for being slow.
struct Subscriber {
    tx: mpsc::Sender<Value>,
    lagged: Arc<AtomicBool>,
}

/// What a daemon publishes to `subscribe`rs: each gets every event, in
/// order, through its own bounded queue.
#[derive(Clone, Default)]
pub struct Events {
    subs: Arc<Mutex<Vec<Subscriber>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

impl Events {
    pub fn new() -> Events {
        Events::default()
    }

    /// Queue `event` for every subscriber; one whose queue is full is
    /// dropped (its stream says so and ends).
    pub fn publish(&self, event: Value) {
        let Ok(mut subs) = self.subs.lock() else {
            return;
        };
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.lagged.store(true, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// How many subscribers there are now (those gone are forgotten).
    pub fn subscribers(&self) -> usize {
        let Ok(mut subs) = self.subs.lock() else {
            return 0;
        };
        subs.retain(|s| !s.tx.is_closed());
        subs.len()
    }

    fn subscribe(&self) -> (mpsc::Receiver<Value>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        if let Ok(mut subs) = self.subs.lock() {
            subs.push(Subscriber {
                tx,
                lagged: lagged.clone(),
            });
        }
        (rx, lagged)
    }
}

/// Whether a peer with these credentials may use the socket: the daemon's
/// own user, root, or a member of the daemon's group (the socket is 0660).
fn peer_allowed(stream: &UnixStream) -> std::result::Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    let group = nix::unistd::getegid().as_raw();
    if cred.uid() == 0 || cred.uid() == me || cred.gid() == group {
        Ok(())
    } else {
        Err(format!(
            "user {} may not control this daemon (it runs as user {me})",
            cred.uid()
        ))
    }
}

/// Serve requests forever, each connection in its own task.
pub async fn serve<F, Fut>(listener: UnixListener, handler: F)
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Value> + Send + 'static,
{
    serve_inner(listener, None, handler).await
}

/// [`serve`], and stream `events` to connections that `subscribe`.
pub async fn serve_with_events<F, Fut>(listener: UnixListener, events: Events, handler: F)
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Value> + Send + 'static,
{
    serve_inner(listener, Some(events), handler).await
}

async fn serve_inner<F, Fut>(listener: UnixListener, events: Option<Events>, handler: F)
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Value> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handler = handler.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let refused = peer_allowed(&stream).err();
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            if let Some(why) = refused {
                tracing::warn!("control socket: {why}");
                // Take the request first, so the refusal is what the
                // client reads (not a broken pipe), then close.
                let _ = tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await;
                let _ = w.write_all(line(&error(why)).as_bytes()).await;
                return;
            }
            while let Ok(Some(req)) = lines.next_line().await {
                let reply = if req.len() > MAX_LINE {
                    error("request too large")
                } else {
                    match serde_json::from_str::<Value>(&req) {
                        Ok(req) if req.get("cmd").and_then(Value::as_str) == Some("subscribe") => {
                            match &events {
                                Some(ev) => {
                                    stream_events(ev, lines, w).await;
                                    return;
                                }
                                None => error("this daemon publishes no events"),
                            }
                        }
                        Ok(req) => handler(req).await,
                        Err(e) => error(format!("bad request: {e}")),
                    }
                };
                if w.write_all(line(&reply).as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn line(v: &Value) -> String {
    let mut out = v.to_string();
    out.push('\n');
    out
}

/// A subscribed connection: events until the client goes or lags.
async fn stream_events(
    events: &Events,
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    mut w: tokio::net::unix::OwnedWriteHalf,
) {
    let (mut rx, lagged) = events.subscribe();
    if w.write_all(line(&json!({"ok": true, "subscribed": true})).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    // Whatever else is already queued goes in the same
                    // write: one socket buffer entry per batch, not per
                    // event, so a reader that pauses briefly has far more
                    // room before it counts as slow.
                    let mut batch = line(&ev);
                    while batch.len() < 64 * 1024 {
                        let Ok(ev) = rx.try_recv() else { break };
                        batch.push_str(&line(&ev));
                    }
                    if w.write_all(batch.as_bytes()).await.is_err() {
                        return;
                    }
                }
                None => {
                    if lagged.load(Ordering::Relaxed) {
                        let notice = json!({
                            "event": "dropped",
                            "reason": format!("too slow: {EVENT_QUEUE} events were waiting"),
                        });
                        let _ = w.write_all(line(&notice).as_bytes()).await;
                    }
                    return;
                }
            },
            // The client closed its side (or sent something): a
            // subscription takes no further requests.
            l = lines.next_line() => match l {
                Ok(Some(_)) => {
                    let _ = w.write_all(line(&error("a subscribed connection takes no requests")).as_bytes()).await;
                }
                _ => return,
            },
        }
    }
}

/// Subscribe to the daemon's events: `on_event` gets each one until it
/// returns `false`, the daemon goes away, or it drops us.
pub async fn subscribe(path: &Path, mut on_event: impl FnMut(Value) -> bool) -> Result<()> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the daemon at {} (is it running, with the same --state?)",
            path.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    w.write_all(line(&json!({"cmd": "subscribe"})).as_bytes())
        .await?;
    let mut lines = BufReader::new(r).lines();
    let first = lines
        .next_line()
        .await?
        .context("the daemon closed the control connection")?;
    into_result(serde_json::from_str(&first).context("the daemon's reply is not JSON")?)?;
    while let Some(l) = lines.next_line().await? {
        let v: Value = serde_json::from_str(&l).context("an event is not JSON")?;
        let dropped = v.get("event").and_then(Value::as_str) == Some("dropped");
        if !on_event(v) || dropped {
            break;
        }
    }
    Ok(())
}

/// Send one request and wait (up to `timeout`) for its reply.
pub async fn request(path: &Path, req: &Value, timeout: Duration) -> Result<Value> {
    let fut = async {
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "cannot reach the daemon at {} (is it running, with the same --state?)",
                path.display()
            )
        })?;
        let (r, mut w) = stream.into_split();
        let mut line = req.to_string();
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        let mut lines = BufReader::new(r).lines();
        let reply = lines
            .next_line()
            .await?
            .context("the daemon closed the control connection")?;
        let v: Value = serde_json::from_str(&reply).context("the daemon's reply is not JSON")?;
        Ok::<Value, anyhow::Error>(v)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .context("the daemon did not answer in time")?
}

/// Turn a reply into `Ok(reply)` or an error carrying its message.
pub fn into_result(v: Value) -> Result<Value> {
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(v)
    } else {
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the daemon refused the request");
        bail!("{msg}")
    }
}

/// Parse a control-socket request into a daemon's typed request enum
/// (tagged by `cmd`): a missing or unknown `cmd` and a malformed request
/// get different, clear errors. Options the CLI was not given come as
/// null and are dropped, except for the commands in `keep_nulls`, where a
/// null means "clear this".
pub fn parse_typed<T: serde::de::DeserializeOwned>(
    v: Value,
    commands: &[&str],
    keep_nulls: &[&str],
) -> std::result::Result<T, String> {
    let cmd = match v.get("cmd") {
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err("\"cmd\" must be a string".into()),
        None => return Err("missing \"cmd\"".into()),
    };
    if !commands.contains(&cmd.as_str()) {
        return Err(format!("unknown command {cmd:?}"));
    }
    let v = match v {
        Value::Object(m) if !keep_nulls.contains(&cmd.as_str()) => {
            Value::Object(m.into_iter().filter(|(_, x)| !x.is_null()).collect())
        }
        other => other,
    };
    serde_json::from_value(v).map_err(|e| format!("bad request: {cmd}: {e}"))
}

/// An error reply.
pub fn error(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A socket in a fresh directory, served with `events` and a handler
    /// that answers `ping` only.
    async fn server(tag: &str, events: Events) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("kl-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = socket_path(&dir);
        let l = bind(&path).await.unwrap();
        tokio::spawn(serve_with_events(l, events, |req: Value| async move {
            match req["cmd"].as_str() {
                Some("ping") => json!({"ok": true, "pong": true}),
                Some(other) => error(format!("unknown command {other:?}")),
                None => error("missing \"cmd\""),
            }
        }));
        (dir, path)
    }

    async fn raw(path: &Path, text: &str) -> Value {
        let s = UnixStream::connect(path).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(text.as_bytes()).await.unwrap();
        let l = BufReader::new(r)
            .lines()
            .next_line()
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&l).unwrap()
    }

    #[tokio::test]
    async fn bad_requests_get_clear_errors_and_the_socket_goes_on() {
        let (dir, path) = server("bad", Events::new()).await;
        let r = raw(&path, "this is not json\n").await;
        assert!(
            r["error"].as_str().unwrap().starts_with("bad request"),
            "{r}"
        );
        let r = raw(&path, "{\"cmd\": \"frobnicate\"}\n").await;
        assert_eq!(r["error"], "unknown command \"frobnicate\"");
        let big = format!("{{\"cmd\": \"{}\"}}\n", "x".repeat(MAX_LINE + 1));
        let r = raw(&path, &big).await;
        assert_eq!(r["error"], "request too large");
        let r = request(&path, &json!({"cmd": "ping"}), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r["pong"], true);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn subscribers_get_every_event_in_order() {
        let events = Events::new();
        let (dir, path) = server("sub", events.clone()).await;
        let got = tokio::spawn({
            let path = path.clone();
            async move {
                let mut got = Vec::new();
                subscribe(&path, |v| {
                    got.push(v["n"].as_u64().unwrap());
                    got.len() < 100
                })
                .await
                .unwrap();
                got
            }
        });
        while events.subscribers() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for n in 0..100 {
            events.publish(json!({"event": "test", "n": n}));
        }
        let got = tokio::time::timeout(Duration::from_secs(5), got)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (0..100).collect::<Vec<u64>>());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_is_dropped_and_told() {
        let events = Events::new();
        let (dir, path) = server("slow", events.clone()).await;
        // Subscribes, then reads nothing for a while.
        let s = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"cmd\": \"subscribe\"}\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        let first: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(first["subscribed"], true);
        // A fast one beside it, which says how far it has read.
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fast = tokio::spawn({
            let (path, read) = (path.clone(), read.clone());
            async move {
                let mut n = 0u64;
                subscribe(&path, |_| {
                    n += 1;
                    read.store(n, Ordering::Relaxed);
                    n < 20_000
                })
                .await
                .unwrap();
                n
            }
        });
        while events.subscribers() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Far more than a socket buffer and the queue hold; publishing
        // never waits for the slow reader.
        let pad = "x".repeat(1000);
        let started = std::time::Instant::now();
        for n in 0..20_000u64 {
            events.publish(json!({"event": "test", "n": n, "pad": pad}));
            if n % 100 == 0 {
                // Let the fast reader keep within half its queue, however
                // busy the machine: it must get everything. The slow one
                // is never waited for.
                while n.saturating_sub(read.load(Ordering::Relaxed)) > EVENT_QUEUE as u64 / 2 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), fast)
                .await
                .unwrap()
                .unwrap(),
            20_000,
            "the fast subscriber got everything"
        );
        // Both are gone: one done (once the server sees it close), one
        // dropped.
        tokio::time::timeout(Duration::from_secs(5), async {
            while events.subscribers() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        // The slow one, reading at last, finds the notice at the end.
        let mut last = Value::Null;
        while let Ok(Some(l)) = lines.next_line().await {
            last = serde_json::from_str(&l).unwrap();
        }
        assert_eq!(last["event"], "dropped", "{last}");
        assert!(last["reason"].as_str().unwrap().contains("too slow"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
