//! The window's only IO: two kinds of connection to the agent's control
//! socket. One background thread holds the `subscribe` stream (and
//! reconnects by itself when the agent is absent or restarts); each
//! request goes on a short connection of its own, so a slow `dial` never
//! holds up a `hangup`. Whatever arrives is queued for the model and the
//! window is woken; nothing runs while nothing happens.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::model::{Input, Req};

/// Inputs waiting for the window (the event stream blocks when full, and
/// the agent drops a subscriber that falls 256 events behind).
const INPUT_QUEUE: usize = 512;

/// Requests in flight at once; more are refused with a message.
const MAX_IN_FLIGHT: usize = 8;

/// How long a request may take (a dial waits for the far end to ring).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How often to look for an absent agent.
const RETRY: Duration = Duration::from_secs(1);

/// Longest reply line read (the agent's lists stay far below).
const MAX_LINE: u64 = 4 * 1024 * 1024;

/// Wakes the window (egui's `request_repaint`).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The window's end of its connection to the agent.
pub struct AgentIo {
    sock: PathBuf,
    inputs: Receiver<Input>,
    tx: SyncSender<Input>,
    wake: Wake,
    in_flight: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for AgentIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIo").field("sock", &self.sock).finish()
    }
}

impl Drop for AgentIo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl AgentIo {
    /// Start following the agent whose control socket is `sock`.
    pub fn start(sock: PathBuf, wake: Wake) -> AgentIo {
        let (tx, inputs) = sync_channel(INPUT_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (sock, tx, wake, stop) = (sock.clone(), tx.clone(), wake.clone(), stop.clone());
            std::thread::Builder::new()
                .name("agent-events".into())
                .spawn(move || follow(&sock, &tx, &wake, &stop))
                .ok();
        }
        AgentIo {
            sock,
            inputs,
            tx,
            wake,
            in_flight: Arc::new(AtomicUsize::new(0)),
            stop,
        }
    }

    /// What arrived since the last call.
    pub fn try_recv(&self) -> Option<Input> {
        self.inputs.try_recv().ok()
    }

    /// Wait up to `timeout` for the next input (tests).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Input> {
        self.inputs.recv_timeout(timeout).ok()
    }

    /// Send `req` on a connection of its own; its reply comes back as an
    /// [`Input::Reply`].
    pub fn send(&self, req: Req) {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = self.tx.try_send(Input::Reply {
                req,
                result: Err("too many requests are waiting for the phone service".into()),
            });
            (self.wake)();
            return;
        }
        let (sock, tx, wake, in_flight) = (
            self.sock.clone(),
            self.tx.clone(),
            self.wake.clone(),
            self.in_flight.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("agent-request".into())
            .spawn(move || {
                let result = request(&sock, &req.to_json());
                in_flight.fetch_sub(1, Ordering::SeqCst);
                // A full queue means the window is not reading at all.
                match tx.try_send(Input::Reply { req, result }) {
                    Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                }
                wake();
            });
        if spawned.is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One request and its reply line.
pub fn request(sock: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| absent_reason(sock, &e))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("the phone service closed the connection: {e}"))?;
    let mut reply = String::new();
    BufReader::new(s.take(MAX_LINE))
        .read_line(&mut reply)
        .map_err(|e| format!("no answer from the phone service: {e}"))?;
    if reply.is_empty() {
        return Err("the phone service closed the connection".into());
    }
    serde_json::from_str(&reply).map_err(|e| format!("the phone service said something odd: {e}"))
}

/// Why the agent is absent, in words.
fn absent_reason(sock: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("no agent answers at {}", sock.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("not allowed to use {}", sock.display())
        }
        _ => format!("{}: {e}", sock.display()),
    }
}

/// Hold the event stream for as long as the window lives, reconnecting
/// whenever it breaks.
fn follow(sock: &Path, tx: &SyncSender<Input>, wake: &Wake, stop: &AtomicBool) {
    let put = |i: Input| {
        let ok = tx.send(i).is_ok();
        wake();
        ok
    };
    if !put(Input::Connecting) {
        return;
    }
    let mut last_absent: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        match subscribe(sock) {
            Ok(reader) => {
                if !put(Input::AgentUp) {
                    return;
                }
                let why = stream(reader, &put);
                match why {
                    Some(why) => {
                        if !put(Input::AgentAbsent(why.clone())) {
                            return;
                        }
                        last_absent = Some(why);
                    }
                    None => return,
                }
            }
            Err(why) => {
                if last_absent.as_ref() != Some(&why) {
                    if !put(Input::AgentAbsent(why.clone())) {
                        return;
                    }
                    last_absent = Some(why);
                }
            }
        }
        std::thread::sleep(RETRY);
    }
}

/// Connect and subscribe; the stream after the subscription's reply.
fn subscribe(sock: &Path) -> Result<BufReader<UnixStream>, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| absent_reason(sock, &e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"{\"cmd\": \"subscribe\"}\n")
        .map_err(|e| format!("the phone service closed the connection: {e}"))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("no answer from the phone service: {e}"))?;
    let v: Value = serde_json::from_str(&line)
        .map_err(|_| "the phone service closed the connection".to_string())?;
    if v.get("subscribed") != Some(&Value::Bool(true)) {
        return Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the phone service refused to send its events")
            .to_string());
    }
    r.get_ref()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    Ok(r)
}

/// Pass on events until the stream ends: why it ended, or `None` when the
/// window is gone.
fn stream(mut r: BufReader<UnixStream>, put: &impl Fn(Input) -> bool) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE).read_line(&mut line) {
            Ok(0) => return Some("the phone service stopped".into()),
            Ok(_) => {}
            Err(e) => return Some(format!("lost the phone service: {e}")),
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v.get("event").and_then(Value::as_str) == Some("dropped") {
            return Some("the phone service dropped this window (it read too slowly)".into());
        }
        if !put(Input::Event(v)) {
            return None;
        }
    }
}
