//! One endpoint's session as its tasks see it ([`Conn`]), and the
//! checks and error replies for what a client sends, and the sizes of a
//! session's queues.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use keyline_proto::dir::{DirMsg, ErrorCode, ReqId, MAX_CANDIDATES};
use keyline_proto::number::{self, Number};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

use crate::routing::{AccountNumbers, Request, SessionId};
use crate::shared::{Event, Out, Shared};

/// Messages queued for one endpoint's control stream before it counts as
/// gone (its own replies) or misses look-up hints (half of it).
pub(super) const CONTROL_QUEUE: usize = 256;

/// Requests of one session the hub may hold at once.
pub(super) const IN_FLIGHT: usize = 64;

/// Free places a session's queue must have before its next request is
/// read: room for the answers to every request in flight and this one,
/// with as much again for what other sessions send it.
pub(super) const ROOM: usize = 2 * IN_FLIGHT;

pub(super) fn error(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> DirMsg {
    DirMsg::Error {
        req,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

pub(super) fn parse_candidates(c: &[String]) -> Result<Vec<SocketAddr>, String> {
    if c.len() > MAX_CANDIDATES {
        return Err(format!(
            "too many candidate addresses (at most {MAX_CANDIDATES})"
        ));
    }
    c.iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| format!("candidate {} is not an IP:PORT address", quoted(a)))
        })
        .collect()
}

/// Candidates, and when an endpoint vouches for another media end, that
/// end's fingerprint (64 hex digits) with at least one address.
pub(super) fn parse_media_end(
    c: &[String],
    media_fp: Option<&str>,
) -> Result<Vec<SocketAddr>, String> {
    let addrs = parse_candidates(c)?;
    if let Some(fp) = media_fp {
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "media fingerprint {} is not a SHA-256 in hex (64 digits)",
                quoted(fp)
            ));
        }
        if addrs.is_empty() {
            return Err("a vouched media end needs at least one candidate address".into());
        }
    }
    Ok(addrs)
}

/// Characters of a client's input an error message quotes at most.
pub(super) const ECHO_CHARS: usize = 32;

/// `s` quoted (escaped) for an error message, cut after [`ECHO_CHARS`]
/// characters: an answer never grows with what the client sent.
pub(super) fn quoted(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(ECHO_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// `s` cut after [`MAX_CHARS`](number::MAX_CHARS) characters, for a field
/// that gives a client's input back.
pub(super) fn clipped(s: &str) -> String {
    s.chars().take(number::MAX_CHARS).collect()
}

/// `n` parsed as a [`Number`], or why not, quoting the client's input.
pub(super) fn canon(n: &str) -> Result<Number, String> {
    if n.len() > number::MAX_INPUT_BYTES {
        return Err(format!(
            "the number is too long ({} bytes; at most {} are accepted)",
            n.len(),
            number::MAX_INPUT_BYTES
        ));
    }
    Number::parse(n).map_err(|e| format!("{}: {e}", quoted(n)))
}

/// What one connection knows about itself.
pub(super) struct Conn {
    pub(super) sid: SessionId,
    pub(super) shared: Arc<Shared>,
    pub(super) conn: quinn::Connection,
    pub(super) tx: mpsc::Sender<Out>,
    /// Requests of this session the hub has not handled yet.
    pub(super) in_flight: Arc<Semaphore>,
    /// Signalled each time the writer takes messages from `tx`.
    pub(super) drained: Arc<Notify>,
    pub(super) account: watch::Sender<Option<LoggedIn>>,
    /// The address last told to the router (shared with the hub, whose
    /// sweep finds most moves).
    pub(super) observed: Arc<std::sync::Mutex<SocketAddr>>,
}

/// The logged-in account of a connection.
#[derive(Debug, Clone)]
pub(super) struct LoggedIn {
    pub(super) account: String,
    pub(super) numbers: AccountNumbers,
    pub(super) token_hash: String,
}

impl Conn {
    pub(super) fn reply(&self, msg: DirMsg) {
        if self.tx.try_send(Out::msg(msg)).is_err() {
            self.conn
                .close(quinn::VarInt::from_u32(5), b"control queue overflow");
        }
    }

    pub(super) fn who(&self) -> Option<LoggedIn> {
        self.account.borrow().clone()
    }

    /// Hand a routing request to the hub, once fewer than
    /// [`IN_FLIGHT`] of the session's requests wait there.
    pub(super) async fn route(&self, request: Request) -> Result<()> {
        self.route_read_at(request, Instant::now()).await
    }

    /// [`Conn::route`] for a request read off the stream at `read_at`.
    pub(super) async fn route_read_at(&self, request: Request, read_at: Instant) -> Result<()> {
        let held = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .context("the session is closing")?;
        self.hub(Event::Route {
            sid: self.sid,
            request,
            read_at,
            _held: held,
        })
        .await
    }

    /// Wait until the session's queue has [`ROOM`] free places: a client
    /// that sends requests faster than it reads the answers is not read
    /// from meanwhile (QUIC's flow control then holds it back), rather
    /// than dropped when its answers overflow the queue.
    pub(super) async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // A closed queue: the writer is gone, and so is the session.
            if self.tx.capacity() >= ROOM || self.tx.is_closed() {
                return;
            }
            drained.await;
        }
    }

    pub(super) async fn hub(&self, ev: Event) -> Result<()> {
        self.shared
            .hub
            .send(ev)
            .await
            .context("the directory is stopping")
    }

    /// Tell the hub the endpoint's address if it changed since the last
    /// report (a REGISTER right after a migration the watcher has not seen
    /// yet); nothing otherwise.
    pub(super) async fn report_move(&self) -> Result<()> {
        let now = self.conn.remote_address();
        let moved = {
            let mut last = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let moved = *last != now;
            *last = now;
            moved
        };
        if moved {
            self.hub(Event::Moved {
                sid: self.sid,
                observed: now,
            })
            .await?;
        }
        Ok(())
    }
}
