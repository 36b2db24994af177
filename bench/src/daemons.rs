//! Real Keyline daemons on loopback: start them (optionally under a
//! `NOTIFY_SOCKET` listener, as systemd would), talk to their control
//! sockets, stop them — and never leave one behind.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// A running daemon, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub state: PathBuf,
    pub log: PathBuf,
    pub bin: PathBuf,
    /// When `spawn` was called.
    pub spawned: Instant,
}

impl Daemon {
    /// Start `bin --state STATE ARGS…`, logging to `STATE.log`.
    pub fn start(bin: &Path, state: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<Daemon> {
        let log = state.with_extension("log");
        let logf =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--state")
            .arg(state)
            .args(args)
            .env("KEYLINE_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            child: Some(child),
            state: state.to_path_buf(),
            log,
            bin: bin.to_path_buf(),
            spawned,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("the daemon was stopped")
    }

    /// Fail if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    self.bin.display(),
                    self.log.display(),
                    tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// The daemon's control socket.
    pub fn control(&self) -> PathBuf {
        self.state.join("control.sock")
    }

    /// SIGTERM and wait up to 5 s; how long it took to exit 0, if it did.
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let t0 = Instant::now();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success().then(|| t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A `NOTIFY_SOCKET` listener: what systemd would hear.
#[derive(Debug)]
pub struct Notify {
    sock: UnixDatagram,
}

impl Notify {
    pub fn bind(path: &Path) -> Result<Notify> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)
            .with_context(|| format!("binding the notify socket {}", path.display()))?;
        Ok(Notify { sock })
    }

    /// Wait for a message containing `needle`; when it arrived.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {needle:?} on the notify socket within {timeout:?}");
            }
            self.sock.set_read_timeout(Some(left))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let at = Instant::now();
                    if String::from_utf8_lossy(&buf[..n]).contains(needle) {
                        return Ok(at);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
        }
    }
}

/// A connection to a daemon's control socket: one JSON object per line
/// each way.
#[derive(Debug)]
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub path: PathBuf,
}

impl Control {
    /// Connect, retrying until the daemon has bound its socket.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Control> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(15)))?;
                    return Ok(Control {
                        reader: BufReader::new(s.try_clone()?),
                        writer: s,
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("connecting to {}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Send a request, return the reply (whether `ok` or not).
    pub fn request(&mut self, req: &Value) -> Result<Value> {
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("writing to {}", self.path.display()))?;
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .with_context(|| format!("reading from {}", self.path.display()))?;
        if n == 0 {
            bail!("{} closed the connection", self.path.display());
        }
        serde_json::from_str(&reply).context("the daemon's reply is not JSON")
    }

    /// A request that must succeed.
    pub fn ok(&mut self, req: &Value) -> Result<Value> {
        let v = self.request(req)?;
        if v["ok"] != true {
            bail!(
                "{} refused {req}: {}",
                self.path.display(),
                v["error"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(v)
    }

    pub fn status(&mut self) -> Result<Value> {
        self.ok(&json!({"cmd": "status"}))
    }
}

/// Poll `f` every `every` until it gives `Some`, or fail after `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}
