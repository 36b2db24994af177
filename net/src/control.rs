//! The local control socket behind every CLI subcommand.
//!
//! A Unix stream socket in the state directory; one JSON object per line
//! each way. A request is `{"cmd": "...", ...}`; a reply is
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

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

/// Serve requests forever, each connection in its own task.
pub async fn serve<F, Fut>(listener: UnixListener, handler: F)
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
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = if line.len() > MAX_LINE {
                    json!({"ok": false, "error": "request too large"})
                } else {
                    match serde_json::from_str::<Value>(&line) {
                        Ok(req) => handler(req).await,
                        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
                    }
                };
                let mut out = reply.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
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

/// An error reply.
pub fn error(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}
