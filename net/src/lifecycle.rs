//! The systemd lifecycle every daemon follows (`Type=notify`): READY once
//! listeners are bound and storage is open, STATUS lines, WATCHDOG pings
//! only while the event loop answers, RELOADING/READY around a SIGHUP
//! reload, STOPPING on the way out. Outside systemd (no `NOTIFY_SOCKET`)
//! every call is a no-op.
//!
//! Signals arrive as a typed [`Signal`], so a daemon's main loop is a
//! `match` rather than a handful of handlers.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: stop politely.
    Terminate,
    /// SIGINT: the same, from a terminal.
    Interrupt,
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// The signals a daemon listens for.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // The protocol is one assignment per line: a status must be one line.
    let lines: Vec<String> = states
        .iter()
        .map(|s| match s {
            NotifyState::Status(t) => t.replace('\n', " "),
            _ => String::new(),
        })
        .collect();
    let states: Vec<NotifyState<'_>> = states
        .iter()
        .zip(&lines)
        .map(|(s, line)| match s {
            NotifyState::Status(_) => NotifyState::Status(line),
            other => other.clone(),
        })
        .collect();
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=… alone.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 with MONOTONIC_USEC, as `Type=notify-reload` requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1 with a status line.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled()
}

/// Ping WATCHDOG=1 every half interval, but only when `healthy` answers
/// `true` within that half interval: a wedged event loop stops the pings
/// and systemd restarts the daemon.
pub fn spawn_watchdog<F, Fut>(healthy: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let half = interval / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::time::timeout(half, healthy()).await {
                Ok(true) => send(&[NotifyState::Watchdog]),
                _ => tracing::warn!("event loop unhealthy: withholding the watchdog ping"),
            }
        }
    });
}
