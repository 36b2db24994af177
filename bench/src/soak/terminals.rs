//! The directory half of the soak: terminals registered with a real
//! `keyline-directory`, and calls among them at a steady rate.
//!
//! The terminals are the `directory` suite's kind of load client (one
//! quinn endpoint for all, an identity and a connection each, the
//! protocol spoken on the control stream with the client library's codec
//! and batching), so that ten thousand fit beside the directory on two
//! cores. An idle terminal waits in a pool; a job takes three (A, B, C):
//!
//! 1. A calls B, B answers, both talk through the directory's relay;
//! 2. now and then C calls B while it talks and B answers busy (a failure
//!    the load asks for), or C calls a number nobody has or one nobody
//!    registered (asked for too);
//! 3. B hands A on to C (`Transfer`): A is `Redirected` and calls C, C
//!    answers, they talk, one of them hangs up;
//! 4. A disconnects and connects again (resumes its session with its
//!    token and registers its number afresh).
//!
//! A job that fails counts one failed call by its reason and connects all
//! three terminals again, so that nothing left over from it reaches the
//! next. Idle terminals refresh their registration at half its lifetime,
//! as the client library does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyline_dirclient::wire::{self, Incoming, MsgReader, MsgWriter};
use keyline_net::{endpoint, Identity};
use keyline_proto::dir::{CallId, CallPlan, DirMsg, ReqId};
use keyline_proto::msg::Role;
use keyline_proto::PROTOCOL_VERSION;
use tokio::time::Instant;

use super::media;
use super::tally::{Fail, InFlight, Tally};

/// How long one step (a reply, a ring, a connect) may take.
const STEP: Duration = Duration::from_secs(10);
/// A number nobody has (the "unknown number" the load asks for).
pub(crate) const UNKNOWN: &str = "59999999";
/// Stale registrations refreshed per pass, at most.
const REFRESH_BATCH: usize = 500;

/// How a terminal logs in.
#[derive(Clone, Copy)]
pub(crate) enum Login<'a> {
    Password(&'a str),
    Token(&'a str),
}

/// A control connection to the directory.
struct Link {
    conn: quinn::Connection,
    out: MsgWriter,
    inp: MsgReader,
}

/// One registered terminal.
pub(crate) struct Term {
    pub number: String,
    token: String,
    cfg: quinn::ClientConfig,
    link: Link,
    next_req: ReqId,
    registered: Instant,
}

/// What the directory half shares between its tasks.
pub(crate) struct DirLoad {
    pub tally: Tally,
    pool: Mutex<VecDeque<Term>>,
    ep: quinn::Endpoint,
    dir: SocketAddr,
    own: String,
    /// Numbers of accounts that nobody registers (for "unreachable").
    spare: Vec<String>,
    talk: Duration,
    ttl: Mutex<Duration>,
    pub paused: AtomicBool,
    pub stopping: AtomicBool,
    /// Terminals out of the pool for a refresh.
    refreshing: AtomicUsize,
    /// Terminals given up on (they could not connect again).
    pub lost: AtomicUsize,
}

fn kebab<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// What a message the caller of [`Term::expect`] did not claim means.
fn unclaimed(m: &DirMsg, what: &str) -> Option<Fail> {
    let fail = |reason: String| Some(Fail::new(reason, format!("{m:?} while waiting for {what}")));
    match m {
        // Refreshes, address changes, pings: not a step of a call.
        DirMsg::Registered { req: None, .. }
        | DirMsg::Observed { .. }
        | DirMsg::Pong { .. }
        | DirMsg::Ok { .. } => None,
        DirMsg::Ended { reason, .. } => fail(format!("ended: {}", kebab(reason))),
        DirMsg::CallFailed { code, .. } => fail(format!("call failed: {}", kebab(code))),
        DirMsg::Error { code, .. } => fail(format!("error: {}", kebab(code))),
        DirMsg::Unbound { .. } => fail("binding lost".into()),
        DirMsg::GoingAway { .. } => fail("directory going away".into()),
        other => fail(format!("unexpected {}", other.kind())),
    }
}

impl Link {
    async fn send(&mut self, msg: &DirMsg) -> Result<(), Fail> {
        let res = tokio::time::timeout(STEP, async {
            self.out.push(msg).await?;
            self.out.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fail::new("connection lost", format!("sending: {e}"))),
            Err(_) => Err(Fail::new(
                "timeout",
                format!("sending {} for {STEP:?}", msg.kind()),
            )),
        }
    }

    /// Read until `claim` takes a message (its value) or refuses one (the
    /// failure); what it leaves is judged by [`unclaimed`].
    async fn expect<T>(
        &mut self,
        what: &str,
        mut claim: impl FnMut(&DirMsg) -> Option<Result<T, Fail>>,
    ) -> Result<T, Fail> {
        let deadline = Instant::now() + STEP;
        loop {
            let next = tokio::time::timeout_at(deadline, self.inp.next()).await;
            let m = match next {
                Err(_) => return Err(Fail::new("timeout", format!("waiting for {what}"))),
                Ok(Err(e)) => {
                    return Err(Fail::new(
                        "connection lost",
                        format!("waiting for {what}: {e}"),
                    ))
                }
                Ok(Ok(Incoming::Closed)) => {
                    return Err(Fail::new(
                        "connection lost",
                        format!("the directory closed the stream while waiting for {what}"),
                    ))
                }
                Ok(Ok(Incoming::Unknown(k))) => {
                    return Err(Fail::new("unknown message", format!("kind {k:?}")))
                }
                Ok(Ok(Incoming::Msg(m))) => m,
            };
            if let Some(r) = claim(&m) {
                return r;
            }
            if let Some(f) = unclaimed(&m, what) {
                return Err(f);
            }
        }
    }
}

/// Connect on `ep`, say hello, log in and register `number`. The link,
/// the session token and the registration's lifetime.
async fn connect(
    ep: &quinn::Endpoint,
    dir: SocketAddr,
    cfg: &quinn::ClientConfig,
    own: &str,
    account: &str,
    login: Login<'_>,
    number: &str,
) -> Result<(Link, String, Duration), Fail> {
    let started = Instant::now();
    let connecting = ep
        .connect_with(cfg.clone(), dir, endpoint::SERVER_NAME)
        .map_err(|e| Fail::new("connect: refused", e.to_string()))?;
    let conn = match tokio::time::timeout(STEP, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Fail::new("connect: handshake failed", e.to_string())),
        Err(_) => return Err(Fail::new("connect: timeout", "QUIC handshake")),
    };
    let (send, recv) = match tokio::time::timeout(STEP, conn.open_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Fail::new("connect: no stream", e.to_string())),
        Err(_) => return Err(Fail::new("connect: timeout", "opening the control stream")),
    };
    let mut l = Link {
        conn,
        out: MsgWriter::new(send),
        inp: MsgReader::new(recv),
    };
    l.send(&DirMsg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Terminal,
        name: Some(number.to_string()),
        client: None,
    })
    .await?;
    let shook = started.elapsed();
    let ttl = l
        .expect("welcome", |m| match m {
            DirMsg::Welcome { ttl_secs, .. } => Some(Ok(Duration::from_secs(u64::from(*ttl_secs)))),
            _ => None,
        })
        .await
        .map_err(|f| {
            // What the connection went through, for the report.
            Fail::new(
                f.reason,
                format!(
                    "{}; handshake {shook:.1?}; {}",
                    f.detail,
                    conn_story(&l.conn)
                ),
            )
        })?;
    let ask = match login {
        Login::Password(password) => DirMsg::Login {
            req: 1,
            account: account.to_string(),
            password: password.to_string(),
        },
        Login::Token(token) => DirMsg::Resume {
            req: 1,
            token: token.to_string(),
        },
    };
    l.send(&ask).await?;
    let token = l
        .expect("logged-in", |m| match m {
            DirMsg::LoggedIn { req: 1, token, .. } => Some(Ok(token.clone())),
            DirMsg::Error {
                req: Some(1),
                code,
                message,
                ..
            } => Some(Err(Fail::new(
                format!("connect: login refused ({})", kebab(code)),
                message.clone(),
            ))),
            _ => None,
        })
        .await?;
    register(&mut l, 2, number, own).await?;
    Ok((l, token, ttl))
}

/// A connection's own account of itself: its path and the frames and
/// datagrams it sent and received, for failures.
fn conn_story(c: &quinn::Connection) -> String {
    let s = c.stats();
    format!(
        "rtt {:.1?} (min {:.1?}), cwnd {}, packets sent {} lost {}, datagrams out {} in {}, \
         stream frames out {} in {}, acks out {} in {}, pings out {} in {}, crypto out {} in {}, \
         handshake_done in {}",
        s.path.rtt,
        s.path.min_rtt,
        s.path.cwnd,
        s.path.sent_packets,
        s.path.lost_packets,
        s.udp_tx.datagrams,
        s.udp_rx.datagrams,
        s.frame_tx.stream,
        s.frame_rx.stream,
        s.frame_tx.acks,
        s.frame_rx.acks,
        s.frame_tx.ping,
        s.frame_rx.ping,
        s.frame_tx.crypto,
        s.frame_rx.crypto,
        s.frame_rx.handshake_done,
    )
}

async fn register(l: &mut Link, req: ReqId, number: &str, own: &str) -> Result<(), Fail> {
    l.send(&DirMsg::Register {
        req,
        numbers: vec![number.to_string()],
        candidates: vec![own.to_string()],
    })
    .await?;
    l.expect("registered", |m| match m {
        DirMsg::Registered { req: Some(r), .. } if *r == req => Some(Ok(())),
        DirMsg::Error {
            req: Some(r),
            code,
            message,
            ..
        } if *r == req => Some(Err(Fail::new(
            format!("register refused ({})", kebab(code)),
            message.clone(),
        ))),
        _ => None,
    })
    .await
}

impl Term {
    fn req(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    /// Disconnect and connect again: resume with the token, register.
    async fn reconnect(&mut self, load: &DirLoad) -> Result<(), Fail> {
        self.link.conn.close(quinn::VarInt::from_u32(0), b"bye");
        let (link, token, _) = connect(
            &load.ep,
            load.dir,
            &self.cfg,
            &load.own,
            "",
            Login::Token(&self.token),
            &self.number,
        )
        .await?;
        self.link = link;
        self.token = token;
        self.next_req = 2;
        self.registered = Instant::now();
        Ok(())
    }

    async fn refresh(&mut self, own: &str) -> Result<(), Fail> {
        let req = self.req();
        register(&mut self.link, req, &self.number, own).await?;
        self.registered = Instant::now();
        Ok(())
    }

    /// Place a call to `number`: `Ok(Ok(call))` when it rings,
    /// `Ok(Err(code))` when the directory refuses it.
    async fn call(
        &mut self,
        number: &str,
        hops: u8,
        own: &str,
    ) -> Result<Result<CallId, String>, Fail> {
        let req = self.req();
        self.link
            .send(&DirMsg::Call {
                req,
                number: number.to_string(),
                from: None,
                candidates: vec![own.to_string()],
                hops,
                media_fp: None,
                handoff: None,
            })
            .await?;
        self.link
            .expect("ringing", |m| match m {
                DirMsg::Ringing { req: r, call, .. } if *r == req => Some(Ok(Ok(*call))),
                DirMsg::CallFailed { req: r, code, .. } if *r == req => Some(Ok(Err(kebab(code)))),
                _ => None,
            })
            .await
    }

    async fn ring(&mut self, call: CallId, from: &str) -> Result<(), Fail> {
        self.link
            .expect("ring", |m| match m {
                DirMsg::Ring {
                    call: c, from: f, ..
                } if *c == call => Some(if f == from {
                    Ok(())
                } else {
                    Err(Fail::new("ring: wrong caller", format!("{f}, not {from}")))
                }),
                _ => None,
            })
            .await
    }

    async fn connected(&mut self, call: CallId) -> Result<CallPlan, Fail> {
        self.link
            .expect("connect", |m| match m {
                DirMsg::Connect { call: c, plan, .. } if *c == call => Some(Ok(plan.clone())),
                _ => None,
            })
            .await
    }

    async fn ended(&mut self, call: CallId, want: &str) -> Result<(), Fail> {
        self.link
            .expect("ended", |m| match m {
                DirMsg::Ended { call: c, reason } if *c == call => {
                    let r = kebab(reason);
                    Some(if r == want {
                        Ok(())
                    } else {
                        Err(Fail::new(
                            format!("ended: {r}"),
                            format!("call {call}, expected {want}"),
                        ))
                    })
                }
                _ => None,
            })
            .await
    }

    async fn ok(&mut self, req: ReqId, what: &str) -> Result<(), Fail> {
        self.link
            .expect(what, |m| match m {
                DirMsg::Ok { req: r } if *r == req => Some(Ok(())),
                DirMsg::Error {
                    req: Some(r),
                    code,
                    message,
                    ..
                } if *r == req => Some(Err(Fail::new(
                    format!("{what} refused ({})", kebab(code)),
                    message.clone(),
                ))),
                _ => None,
            })
            .await
    }
}

/// `a` calls `b` (`hops` redirects followed so far) and `b` answers:
/// the call and where each end sends its media (the relay's two sides).
async fn ring_and_answer(
    load: &DirLoad,
    a: &mut Term,
    b: &mut Term,
    hops: u8,
) -> Result<(CallId, SocketAddr, SocketAddr), Fail> {
    let call = match a.call(&b.number, hops, &load.own).await? {
        Ok(call) => call,
        Err(code) => {
            return Err(Fail::new(
                format!("call failed: {code}"),
                format!("{} -> {}", a.number, b.number),
            ))
        }
    };
    b.ring(call, &a.number).await?;
    let req = b.req();
    b.link
        .send(&DirMsg::Answer {
            req,
            call,
            media_fp: None,
            candidates: Vec::new(),
        })
        .await?;
    let pb = b.connected(call).await?;
    let pa = a.connected(call).await?;
    let relay = |p: &CallPlan, who: &str| -> Result<SocketAddr, Fail> {
        p.relay
            .as_deref()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| Fail::new("plan: no relay", format!("the {who}'s plan: {p:?}")))
    };
    Ok((call, relay(&pa, "caller")?, relay(&pb, "callee")?))
}

async fn talk(load: &DirLoad, call: CallId, a: SocketAddr, b: SocketAddr) -> Result<(), Fail> {
    let t = media::talk_udp(call, a, b, load.talk).await?;
    Tally::add(&load.tally.media_sent, t.sent);
    Tally::add(&load.tally.media_received, t.received);
    Ok(())
}

/// `c` calls `number` and the directory must refuse with `code`.
async fn probe_refused(load: &DirLoad, c: &mut Term, number: &str, code: &str) -> Result<(), Fail> {
    match c.call(number, 0, &load.own).await? {
        Err(got) if got == code => {
            load.tally.asked(code);
            Ok(())
        }
        Err(got) => Err(Fail::new(
            format!("call failed: {got}"),
            format!("calling {number}, expected {code}"),
        )),
        Ok(call) => Err(Fail::new(
            "probe rang",
            format!("call {call} to {number} rang; expected {code}"),
        )),
    }
}

/// One job's calls; `k` picks the probes.
async fn calls(load: &DirLoad, k: u64, t: &mut [Term; 3]) -> Result<(), Fail> {
    let [a, b, c] = t;
    if k % 8 == 3 {
        probe_refused(load, c, UNKNOWN, "unknown-number").await?;
    }
    if k % 8 == 7 {
        if let Some(n) = load.spare.get((k / 8) as usize % load.spare.len().max(1)) {
            probe_refused(load, c, n, "unreachable").await?;
        }
    }
    // A calls B, they talk.
    let (call, ma, mb) = ring_and_answer(load, a, b, 0).await?;
    talk(load, call, ma, mb).await?;
    if k % 4 == 1 {
        // C calls B, who is in a call: B answers busy.
        match c.call(&b.number, 0, &load.own).await? {
            Ok(second) => {
                b.ring(second, &c.number).await?;
                let req = b.req();
                b.link.send(&DirMsg::Busy { req, call: second }).await?;
                b.ok(req, "busy").await?;
                c.ended(second, "busy").await?;
                load.tally.asked("busy");
            }
            Err(code) => {
                return Err(Fail::new(
                    format!("call failed: {code}"),
                    format!("{} -> {} (busy probe)", c.number, b.number),
                ))
            }
        }
    }
    // B hands A on to C.
    let req = b.req();
    b.link
        .send(&DirMsg::Transfer {
            req,
            call,
            number: c.number.clone(),
            handoff: None,
        })
        .await?;
    b.ok(req, "transfer").await?;
    let to = a
        .link
        .expect("redirected", |m| match m {
            DirMsg::Redirected {
                call: x, number, ..
            } if *x == call => Some(Ok(number.clone())),
            _ => None,
        })
        .await?;
    if to != c.number {
        return Err(Fail::new(
            "redirected elsewhere",
            format!("to {to}, not {}", c.number),
        ));
    }
    Tally::add(&load.tally.completed, 1);
    // A calls C as it was told, they talk, one hangs up.
    let (call, ma, mc) = ring_and_answer(load, a, c, 1).await?;
    talk(load, call, ma, mc).await?;
    let (by, other) = if k % 2 == 0 { (a, c) } else { (c, a) };
    by.link.send(&DirMsg::Hangup { call }).await?;
    other.ended(call, "hangup").await?;
    Tally::add(&load.tally.completed, 1);
    Ok(())
}

impl DirLoad {
    fn put_back(&self, t: Term) {
        if let Ok(mut p) = self.pool.lock() {
            p.push_back(t);
        }
    }

    /// Connect `t` again, a few tries; `None`: given up (counted).
    async fn reconnect_or_lose(&self, mut t: Term) -> Option<Term> {
        for attempt in 0..3 {
            match t.reconnect(self).await {
                Ok(()) => {
                    Tally::add(&self.tally.reconnects, 1);
                    return Some(t);
                }
                Err(f) => {
                    self.tally.unexpected(&Fail::new(
                        format!("reconnect: {}", f.reason),
                        format!("{} (try {}): {}", t.number, attempt + 1, f.detail),
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.lost.fetch_add(1, Ordering::Relaxed);
        None
    }

    async fn job(self: Arc<Self>, k: u64, mut t: [Term; 3]) {
        let _running = InFlight::new(&self.tally);
        let res = calls(&self, k, &mut t).await;
        let [a, b, c] = t;
        match res {
            Ok(()) => {
                // A disconnects and comes back.
                self.put_back(b);
                self.put_back(c);
                if let Some(a) = self.reconnect_or_lose(a).await {
                    self.put_back(a);
                }
            }
            Err(f) => {
                self.tally.unexpected(&Fail::new(
                    f.reason,
                    format!(
                        "job {k} ({} {} {}): {}",
                        a.number, b.number, c.number, f.detail
                    ),
                ));
                for x in [a, b, c] {
                    if let Some(x) = self.reconnect_or_lose(x).await {
                        self.put_back(x);
                    }
                }
            }
        }
    }

    /// Start a job every `1/rate` s while there are three idle terminals.
    pub async fn schedule(self: Arc<Self>, rate: f64) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut k = 0u64;
        while !self.stopping.load(Ordering::Relaxed) {
            tick.tick().await;
            if self.paused.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed) {
                continue;
            }
            let three = self.pool.lock().ok().and_then(|mut p| {
                if p.len() < 3 {
                    return None;
                }
                Some([p.pop_front()?, p.pop_front()?, p.pop_front()?])
            });
            match three {
                Some(t) => {
                    k += 1;
                    tokio::spawn(self.clone().job(k, t));
                }
                None => Tally::add(&self.tally.skipped, 1),
            }
        }
    }

    /// Refresh idle terminals' registrations at half their lifetime.
    pub async fn refresh(self: Arc<Self>) {
        while !self.stopping.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let half = self
                .ttl
                .lock()
                .map(|t| *t / 2)
                .unwrap_or(Duration::from_secs(30));
            let now = Instant::now();
            let stale: Vec<Term> = match self.pool.lock() {
                Ok(mut p) => {
                    let mut out = Vec::new();
                    let mut keep = VecDeque::with_capacity(p.len());
                    for t in p.drain(..) {
                        if out.len() < REFRESH_BATCH && now - t.registered > half {
                            out.push(t);
                        } else {
                            keep.push_back(t);
                        }
                    }
                    *p = keep;
                    out
                }
                Err(_) => Vec::new(),
            };
            for mut t in stale {
                let me = self.clone();
                me.refreshing.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    match t.refresh(&me.own).await {
                        Ok(()) => {
                            Tally::add(&me.tally.refreshes, 1);
                            me.put_back(t);
                        }
                        Err(f) => {
                            me.tally.unexpected(&Fail::new(
                                format!("refresh: {}", f.reason),
                                format!("{}: {}", t.number, f.detail),
                            ));
                            if let Some(t) = me.reconnect_or_lose(t).await {
                                me.put_back(t);
                            }
                        }
                    }
                    me.refreshing.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    /// Jobs and refreshes running now.
    pub fn busy(&self) -> usize {
        self.tally.in_flight.load(Ordering::Relaxed) + self.refreshing.load(Ordering::Relaxed)
    }

    /// Terminals registered and idle now.
    pub fn idle(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Close every idle terminal's connection (at the end).
    pub fn close_all(&self) {
        if let Ok(mut p) = self.pool.lock() {
            for t in p.drain(..) {
                t.link.conn.close(quinn::VarInt::from_u32(0), b"soak over");
            }
        }
        self.ep.close(quinn::VarInt::from_u32(0), b"soak over");
    }
}

/// One account: its id, its terminals' numbers and the number nobody
/// registers.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub id: String,
    pub numbers: Vec<String>,
    pub spare: String,
}

/// Accounts for `terminals` terminals, `per` to an account.
pub(crate) fn accounts(terminals: usize, per: usize) -> Vec<Account> {
    let per = per.max(1);
    (0..terminals.div_ceil(per))
        .map(|k| Account {
            id: format!("soak{k}"),
            numbers: (k * per..((k + 1) * per).min(terminals))
                .map(|i| (50_000_000 + i).to_string())
                .collect(),
            spare: (60_000_000 + k).to_string(),
        })
        .collect()
}

/// Bring every account's terminals online (the first of each logs in
/// with the password, the others resume with its token), at most
/// `parallel` accounts at once; the load, ready to run.
pub(crate) async fn online(
    dir: SocketAddr,
    dir_fp: &str,
    accounts: &[Account],
    password: &str,
    talk: Duration,
    parallel: usize,
) -> anyhow::Result<Arc<DirLoad>> {
    use anyhow::Context;
    let ep = keyline_net::make_endpoint(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &Identity::generate("soak terminals")?,
    )?;
    let own = ep.local_addr()?.to_string();
    let load = Arc::new(DirLoad {
        tally: Tally::default(),
        pool: Mutex::new(VecDeque::new()),
        ep,
        dir,
        own,
        spare: accounts.iter().map(|a| a.spare.clone()).collect(),
        talk,
        ttl: Mutex::new(Duration::from_secs(60)),
        paused: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        refreshing: AtomicUsize::new(0),
        lost: AtomicUsize::new(0),
    });
    let total: usize = accounts.iter().map(|a| a.numbers.len()).sum();
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for a in accounts.iter().cloned() {
        let (load, done, gate) = (load.clone(), done.clone(), gate.clone());
        let (fp, pw) = (dir_fp.to_string(), password.to_string());
        tasks.spawn(async move {
            let _permit = gate.acquire().await?;
            let mut token: Option<String> = None;
            for n in &a.numbers {
                let id = Identity::generate(n)?;
                let cfg = endpoint::directory_client_config(
                    &id,
                    Some(fp.clone()),
                    Some(wire::ACK_EVERY),
                )?;
                let login = match &token {
                    None => Login::Password(&pw),
                    Some(t) => Login::Token(t),
                };
                // The directory checks only a few passwords at once and
                // asks the others to come back: they do, as a terminal would.
                let mut tries = 0;
                let (link, t, ttl) = loop {
                    match connect(&load.ep, load.dir, &cfg, &load.own, &a.id, login, n).await {
                        Ok(x) => break x,
                        Err(f) if f.reason.contains("rate-limited") && tries < 60 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(f) => {
                            anyhow::bail!("bringing {n} online: {}: {}", f.reason, f.detail)
                        }
                    }
                };
                if let Ok(mut x) = load.ttl.lock() {
                    *x = ttl;
                }
                token.get_or_insert(t.clone());
                load.put_back(Term {
                    number: n.clone(),
                    token: t,
                    cfg,
                    link,
                    next_req: 2,
                    registered: Instant::now(),
                });
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 1000 == 0 || d == total {
                    eprintln!(
                        "keyline-bench soak: {d} of {total} terminals registered ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a terminal task failed")??;
    }
    Ok(load)
}
