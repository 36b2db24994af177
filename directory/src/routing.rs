//! The directory's sans-IO routing core: which numbers exist and who owns
//! them, where each registered number rings now (bindings with a TTL),
//! server-side forwarding with cycle detection, and every call from CALL to
//! its end.
//!
//! Like [`keyline_proto::call`], it does no I/O and reads no clock: inputs
//! carry `now`, effects come out of [`Router::poll_action`], and
//! [`Router::poll_timeout`] says when [`Router::handle_timeout`] must next
//! run. Random tokens are passed in, so runs are reproducible.
//!
//! Every call placed by a logged-in caller, rung or not, comes out once as
//! an [`Action::Record`]: who called whom, how it ended, whether it was
//! answered and for how long; [`CallRecord::entries`] turns it into the
//! history each account involved keeps.
//!
//! Invariants: a binding always belongs to a live, logged-in session of the
//! account that owns the number; a ringing call always has a deadline; the
//! caller's number shown to the callee is always one of the caller's own.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyline_proto::dir::{
    CallId, CallPlan, CheckPlan, DirMsg, DirectPolicy, EndReason, ErrorCode, ForwardRule,
    ForwardWhen, ReqId, MAX_CANDIDATES, MAX_HOPS,
};

pub use crate::store::{CallEntry, CallOutcome};

/// A connection to the directory, numbered by the shell.
pub type SessionId = u64;

/// Tunables of the router.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a registration lasts unless refreshed.
    pub binding_ttl: Duration,
    /// How long a call rings before it ends with `NoAnswer`.
    pub ring_timeout: Duration,
    /// The direct-connect rule given to new calls.
    pub policy: DirectPolicy,
    /// With `DirectThenRelay`: how long the caller tries end to end.
    pub fallback_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            binding_ttl: Duration::from_secs(120),
            ring_timeout: Duration::from_secs(30),
            policy: DirectPolicy::DirectThenRelay,
            fallback_after: Duration::from_secs(3),
        }
    }
}

/// What the directory knows about a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberInfo {
    pub account: String,
    /// At most one rule of each kind, on or off.
    pub forwards: Vec<ForwardRule>,
    /// Do-not-disturb: calls follow a `busy` rule, or fail as offline
    /// with mail offered; the number never rings.
    pub dnd: bool,
}

impl NumberInfo {
    /// The target of the rule of kind `when`, if there is one and it is on.
    pub fn forward(&self, when: ForwardWhen) -> Option<&str> {
        self.forwards
            .iter()
            .find(|r| r.when == when && r.on)
            .map(|r| r.to.as_str())
    }
}

/// One call as the directory saw it, from the caller's request to its
/// end (or to its failure before anything rang).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The caller's number, asserted, and its account.
    pub from: String,
    pub from_account: String,
    /// The number dialled (an office's `OFFICE/EXT` as the office number)
    /// and its owner, when it is a known number.
    pub dialled: String,
    pub dialled_account: Option<String>,
    /// The number the call reached after server-side forwarding (the one
    /// that rang, or was offline or busy), and its owner; none for an
    /// unknown number or a loop.
    pub reached: Option<(String, String)>,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub ended: Instant,
    pub outcome: CallOutcome,
    /// Where the caller was sent on (a busy or no-answer rule, a
    /// redirect, a hand-off).
    pub forwarded_to: Option<String>,
    /// Whether the media went through the relay (answered calls only).
    pub relayed: Option<bool>,
}

impl CallRecord {
    /// The entries of each account's history: the caller's (outgoing, to
    /// the number dialled), the reached number's owner's (incoming), and,
    /// when server-side forwarding took the call from the dialled number
    /// to another account's, the dialled number's owner's (incoming,
    /// forwarded). `now_ms` is the wall clock at `now`.
    pub fn entries(&self, now: Instant, now_ms: i64) -> Vec<CallEntry> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let started_ms = now_ms.saturating_sub(ms(now.saturating_duration_since(self.started)));
        let duration_ms = self
            .answered
            .map(|at| ms(self.ended.saturating_duration_since(at)));
        let reached_other = self
            .reached
            .as_ref()
            .filter(|(n, _)| *n != self.dialled)
            .map(|(n, _)| n.clone());
        let entry = |account: &str, outgoing: bool, own: &str, other: &str| CallEntry {
            account: account.to_string(),
            outgoing,
            own_number: own.to_string(),
            other_number: other.to_string(),
            started_ms,
            answered: self.answered.is_some(),
            outcome: self.outcome,
            forwarded_to: self.forwarded_to.clone(),
            duration_ms,
            relayed: self.relayed,
        };
        let mut out = vec![CallEntry {
            forwarded_to: self.forwarded_to.clone().or(reached_other.clone()),
            ..entry(&self.from_account, true, &self.from, &self.dialled)
        }];
        if let Some((number, account)) = &self.reached {
            out.push(entry(account, false, number, &self.from));
        }
        if let (Some(account), Some(to)) = (&self.dialled_account, reached_other) {
            if self.reached.as_ref().is_none_or(|(_, a)| a != account) {
                out.push(CallEntry {
                    outcome: CallOutcome::Forwarded,
                    answered: false,
                    duration_ms: None,
                    relayed: None,
                    forwarded_to: Some(to),
                    ..entry(account, false, &self.dialled, &self.from)
                });
            }
        }
        out
    }
}

/// Where a dialled number ends up after server-side forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The number that rings.
    pub number: String,
    /// The numbers forwarded from, in order (the dialled one first).
    pub via: Vec<String>,
}

/// Why a number could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{} is not a known number", .number)]
    Unknown { number: String, via: Vec<String> },
    #[error("forwarding loop: {}", chain.join(" -> "))]
    Loop { chain: Vec<String> },
    #[error("too many forwards (more than {max}): {}", chain.join(" -> "))]
    TooManyHops { chain: Vec<String>, max: usize },
}

impl RouteError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RouteError::Unknown { .. } => ErrorCode::UnknownNumber,
            RouteError::Loop { .. } => ErrorCode::ForwardLoop,
            RouteError::TooManyHops { .. } => ErrorCode::TooManyHops,
        }
    }
}

/// Apply server-side forwarding to `start`: follow `always` rules (before
/// any other), `unregistered` rules of numbers that `bound` says have no
/// binding and `busy` rules of numbers set to do-not-disturb, at most
/// `max_hops` times, refusing cycles. Only rules that are on count. (`busy` rules otherwise, and `no-answer`
/// rules, apply once the number has rung: see [`Router::handle_decline`]
/// and [`Router::handle_timeout`].)
pub fn resolve<'a>(
    start: &str,
    max_hops: usize,
    info: impl Fn(&str) -> Option<&'a NumberInfo>,
    bound: impl Fn(&str) -> bool,
) -> Result<Resolved, RouteError> {
    let mut via: Vec<String> = Vec::new();
    let mut cur = start.to_string();
    loop {
        let Some(ni) = info(&cur) else {
            return Err(RouteError::Unknown { number: cur, via });
        };
        let next = ni
            .forward(ForwardWhen::Always)
            .or_else(|| {
                ni.forward(ForwardWhen::Unregistered)
                    .filter(|_| !bound(&cur))
            })
            .or_else(|| ni.forward(ForwardWhen::Busy).filter(|_| ni.dnd))
            .map(str::to_string);
        let Some(next) = next else {
            return Ok(Resolved { number: cur, via });
        };
        via.push(cur);
        if next == start || via.contains(&next) {
            let mut chain = via;
            chain.push(next);
            return Err(RouteError::Loop { chain });
        }
        if via.len() > max_hops {
            let mut chain = via;
            chain.push(next);
            return Err(RouteError::TooManyHops {
                chain,
                max: max_hops,
            });
        }
        cur = next;
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` on session `to`'s control stream.
    Send { to: SessionId, msg: DirMsg },
    /// Set up a forwarder between the two ends' observed addresses, then
    /// call [`Router::handle_relay_ready`] or [`Router::handle_relay_failed`].
    AllocateRelay {
        call: CallId,
        caller: SocketAddr,
        callee: SocketAddr,
    },
    /// Drop the forwarder of `call`, if any.
    ReleaseRelay { call: CallId },
    /// A call reached its end (for logs).
    Finished {
        call: CallId,
        from: String,
        number: String,
        answered: bool,
        reason: EndReason,
    },
    /// Keep this call in the history of the accounts involved.
    Record(Box<CallRecord>),
    /// Something an operator may watch (the control socket's events).
    Notice(Notice),
}

/// What the router tells the shell's event stream: numbers bound and
/// unbound, and each call's steps. A refreshed registration is no notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `number` now rings at session `session` (a new registration, one
    /// that displaced another endpoint's, or a registered endpoint that
    /// moved to `observed`).
    Bound {
        number: String,
        account: String,
        session: SessionId,
        observed: SocketAddr,
    },
    /// `number` no longer rings at `session`.
    Unbound {
        number: String,
        account: String,
        session: SessionId,
        reason: &'static str,
    },
    /// Call `call` from `from` rings `number` (dialled as `dialled`).
    Ringing {
        call: CallId,
        from: String,
        number: String,
        dialled: String,
    },
    /// The callee answered; the media goes end to end unless `relayed`.
    Answered {
        call: CallId,
        from: String,
        number: String,
        relayed: bool,
    },
    /// An answered call's media moved to the relay (the caller's
    /// fallback).
    Relayed {
        call: CallId,
        from: String,
        number: String,
    },
    /// The call is over.
    Ended {
        call: CallId,
        from: String,
        number: String,
        outcome: CallOutcome,
        reason: EndReason,
        /// Answered calls: whether the relay carried the media.
        relayed: Option<bool>,
    },
}

/// A connection as the router sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub fp: String,
    pub observed: SocketAddr,
    pub account: Option<String>,
    /// The account's numbers, default caller number first.
    pub numbers: Vec<String>,
    /// Whether the endpoint runs connectivity checks (a terminal).
    pub checks: bool,
}

/// Where a registered number rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub number: String,
    pub account: String,
    pub session: SessionId,
    /// The endpoint's own addresses.
    pub own: Vec<SocketAddr>,
    pub observed: SocketAddr,
    pub fp: String,
    pub expires: Instant,
    pub since: Instant,
}

impl Binding {
    /// Everything a caller is given: own addresses, then the observed one.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        with_observed(&self.own, self.observed)
    }
}

fn with_observed(own: &[SocketAddr], observed: SocketAddr) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = Vec::new();
    for a in own.iter().copied().chain(std::iter::once(observed)) {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

/// A media end an endpoint vouches for (a gateway's station behind its
/// forwarder): its certificate fingerprint and its addresses for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaEnd {
    pub fp: String,
    /// Non-empty (the server checks it); the first is the forwarder port.
    pub addrs: Vec<SocketAddr>,
}

impl MediaEnd {
    /// Its candidates as callers are given them, and the address its
    /// packets come from as the directory's relay sees them: the port the
    /// endpoint announced at the address the directory observes (a NAT
    /// that keeps ports keeps it reachable there).
    fn resolve(&self, observed: SocketAddr) -> (Vec<SocketAddr>, SocketAddr) {
        let port = self.addrs.first().map_or(observed.port(), |a| a.port());
        let seen = SocketAddr::new(observed.ip(), port);
        (with_observed(&self.addrs, seen), seen)
    }
}

fn strings(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(addr_string).collect()
}

/// `a.to_string()`, without the formatting machinery for IPv4 (every
/// look-up sends two or three addresses: this was 4% of its time).
fn addr_string(a: &SocketAddr) -> String {
    fn push_decimal(out: &mut String, mut n: u16) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            out.push(char::from(d));
        }
    }
    match a {
        SocketAddr::V4(v4) => {
            let mut out = String::with_capacity(21);
            for (k, octet) in v4.ip().octets().iter().enumerate() {
                if k > 0 {
                    out.push('.');
                }
                push_decimal(&mut out, u16::from(*octet));
            }
            out.push(':');
            push_decimal(&mut out, v4.port());
            out
        }
        SocketAddr::V6(_) => a.to_string(),
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Ringing { deadline: Instant },
    Answered { at: Instant },
}

/// Whether an answered call runs through the directory's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    None,
    /// Asked the shell for a forwarder; `fallback` is the caller's request
    /// when it came from a `Fallback`.
    Pending {
        fallback: Option<ReqId>,
    },
    Ready {
        caller_facing: SocketAddr,
        callee_facing: SocketAddr,
    },
}

/// A call in progress.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: CallId,
    pub caller: SessionId,
    pub callee: SessionId,
    /// The caller's number, asserted, and its account.
    pub from: String,
    pub caller_account: String,
    /// The accounts of the number dialled and of the one that rings.
    pub dialled_account: Option<String>,
    pub callee_account: String,
    /// The number that rings.
    pub number: String,
    pub dialled: String,
    /// The extension after `/` in the dialled number, for the office.
    pub ext: Option<String>,
    pub via: Vec<String>,
    pub caller_candidates: Vec<SocketAddr>,
    pub caller_fp: String,
    pub callee_fp: String,
    pub callee_candidates: Vec<SocketAddr>,
    /// Where each end's media packets come from, for the relay: the
    /// endpoint's observed address, or a vouched media end's.
    pub caller_media: SocketAddr,
    pub callee_media: SocketAddr,
    pub started: Instant,
    pub state: CallState,
    pub policy: DirectPolicy,
    pub token: Option<String>,
    pub relay: RelayState,
    answer_req: Option<ReqId>,
}

/// How a call is placed, beyond number and caller: for
/// [`Router::handle_call_for`].
#[derive(Debug, Default)]
pub struct Placing {
    /// The media end the caller vouches for (a gateway's station).
    pub media: Option<MediaEnd>,
    /// Passed on to the callee in `Ring` (see `DirMsg::Call`).
    pub handoff: Option<u64>,
    /// A fresh key for the call's connectivity checks: both ends get it
    /// (with each other's candidates) when it starts ringing, if both
    /// check ([`Router::allow_checks`]).
    pub check_key: Option<String>,
}

/// The directory's routing state.
#[derive(Debug)]
pub struct Router {
    cfg: Config,
    numbers: HashMap<String, NumberInfo>,
    sessions: HashMap<SessionId, Session>,
    bindings: HashMap<String, Binding>,
    /// Binding expiry index: (expires, number).
    expiry: BTreeSet<(Instant, String)>,
    calls: BTreeMap<CallId, Call>,
    actions: VecDeque<Action>,
    next_call: CallId,
}

fn err(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> DirMsg {
    DirMsg::Error {
        req,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

impl Router {
    pub fn new(cfg: Config) -> Router {
        Router {
            cfg,
            numbers: HashMap::new(),
            sessions: HashMap::new(),
            bindings: HashMap::new(),
            expiry: BTreeSet::new(),
            calls: BTreeMap::new(),
            actions: VecDeque::new(),
            next_call: 1,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// New settings apply to new bindings and calls; calls in progress
    /// keep the rule they started with.
    pub fn reconfigure(&mut self, cfg: Config) {
        self.cfg = cfg;
    }

    /// Replace the whole number table (after a reload from storage).
    /// Bindings of numbers that no longer belong to their session's
    /// account are dropped.
    pub fn set_numbers(&mut self, now: Instant, table: HashMap<String, NumberInfo>) {
        self.numbers = table;
        let stale: Vec<String> = self
            .bindings
            .values()
            .filter(|b| {
                self.numbers
                    .get(&b.number)
                    .is_none_or(|ni| ni.account != b.account)
            })
            .map(|b| b.number.clone())
            .collect();
        self.unbind(
            now,
            &stale,
            "the number was removed from the account",
            false,
        );
    }

    /// Replace one number's forwarding rules.
    pub fn set_forwards(&mut self, number: &str, rules: Vec<ForwardRule>) {
        if let Some(ni) = self.numbers.get_mut(number) {
            ni.forwards = rules;
        }
    }

    /// Set or clear one number's do-not-disturb.
    pub fn set_dnd(&mut self, number: &str, on: bool) {
        if let Some(ni) = self.numbers.get_mut(number) {
            ni.dnd = on;
        }
    }

    pub fn number(&self, number: &str) -> Option<&NumberInfo> {
        self.numbers.get(number)
    }

    pub fn numbers(&self) -> impl Iterator<Item = (&String, &NumberInfo)> {
        self.numbers.iter()
    }

    // ------------------------------------------------------------------
    // Sessions

    pub fn handle_session_up(&mut self, sid: SessionId, fp: String, observed: SocketAddr) {
        self.sessions.insert(
            sid,
            Session {
                fp,
                observed,
                account: None,
                numbers: Vec::new(),
                checks: false,
            },
        );
    }

    /// Session `sid` runs connectivity checks while its calls ring (it is
    /// a terminal, which is its own media end).
    pub fn allow_checks(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.checks = true;
        }
    }

    /// The session logged in as `account`, which owns `numbers`.
    pub fn handle_login(
        &mut self,
        now: Instant,
        sid: SessionId,
        account: &str,
        numbers: Vec<String>,
    ) {
        let previous = match self.sessions.get_mut(&sid) {
            Some(s) => {
                let prev = s.account.replace(account.to_string());
                s.numbers = numbers;
                prev
            }
            None => return,
        };
        if previous.is_some_and(|p| p != account) {
            // Logging in as someone else drops the old account's bindings.
            let mine: Vec<String> = self.bindings_of(sid).map(|b| b.number.clone()).collect();
            self.unbind(now, &mine, "logged in as another account", false);
        }
    }

    /// The session's connection now comes from `observed` (it migrated).
    pub fn handle_session_moved(&mut self, _now: Instant, sid: SessionId, observed: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.observed == observed {
            return;
        }
        s.observed = observed;
        let mut numbers = Vec::new();
        let mut own = Vec::new();
        let mut moved = Vec::new();
        for b in self.bindings.values_mut().filter(|b| b.session == sid) {
            b.observed = observed;
            numbers.push(b.number.clone());
            own = b.own.clone();
            moved.push(Notice::Bound {
                number: b.number.clone(),
                account: b.account.clone(),
                session: sid,
                observed,
            });
        }
        for n in moved {
            self.notice(n);
        }
        self.send(
            sid,
            DirMsg::Observed {
                addr: observed.to_string(),
            },
        );
        if !numbers.is_empty() {
            numbers.sort();
            self.send(
                sid,
                DirMsg::Registered {
                    req: None,
                    numbers,
                    observed: observed.to_string(),
                    candidates: strings(&with_observed(&own, observed)),
                    ttl_secs: self.cfg.binding_ttl.as_secs() as u32,
                },
            );
        }
    }

    /// The session's connection is gone: its bindings vanish, its calls end.
    pub fn handle_session_down(&mut self, now: Instant, sid: SessionId) {
        if self.sessions.remove(&sid).is_none() {
            return;
        }
        let mine: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.session == sid)
            .map(|b| b.number.clone())
            .collect();
        for n in mine {
            self.drop_binding(&n, "the endpoint disconnected");
        }
        let calls: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.caller == sid || c.callee == sid)
            .map(|c| c.id)
            .collect();
        for id in calls {
            self.end_call(now, id, Some(sid), EndReason::PeerLost);
        }
    }

    /// Log out every session of `account` (removed, or its password changed
    /// elsewhere): the shell closes them; here their bindings and calls end.
    pub fn sessions_of(&self, account: &str) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.account.as_deref() == Some(account))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sessions of `account` that hold at least one binding (where mail is
    /// delivered).
    pub fn registered_sessions_of(&self, account: &str) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = self
            .bindings
            .values()
            .filter(|b| b.account == account)
            .map(|b| b.session)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn session(&self, sid: SessionId) -> Option<&Session> {
        self.sessions.get(&sid)
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    // ------------------------------------------------------------------
    // Registration

    /// Bind `numbers` (all of the account's when empty) to the session, or
    /// refresh them.
    pub fn handle_register(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        numbers: Vec<String>,
        own: Vec<SocketAddr>,
    ) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(account) = s.account.clone() else {
            return self.send(sid, err(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        };
        if own.len() > MAX_CANDIDATES {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadAddress,
                    format!("too many candidate addresses (at most {MAX_CANDIDATES})"),
                ),
            );
        }
        let wanted = if numbers.is_empty() {
            s.numbers.clone()
        } else {
            numbers
        };
        for n in &wanted {
            let owned = self.numbers.get(n).is_some_and(|ni| ni.account == account);
            if !owned {
                return self.send(
                    sid,
                    err(
                        Some(req),
                        ErrorCode::NotYourNumber,
                        format!("{n} is not a number of account {account}"),
                    ),
                );
            }
        }
        let (fp, observed) = (s.fp.clone(), s.observed);
        let expires = now + self.cfg.binding_ttl;
        let mut displaced: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
        for n in &wanted {
            let (since, fresh) = match self.bindings.get(n) {
                Some(old) if old.session == sid => {
                    let since = old.since;
                    self.remove_binding(n);
                    (since, false)
                }
                Some(old) => {
                    displaced.entry(old.session).or_default().push(n.clone());
                    self.drop_binding(n, "another endpoint registered the number");
                    (now, true)
                }
                None => (now, true),
            };
            if fresh {
                self.notice(Notice::Bound {
                    number: n.clone(),
                    account: account.clone(),
                    session: sid,
                    observed,
                });
            }
            self.expiry.insert((expires, n.clone()));
            self.bindings.insert(
                n.clone(),
                Binding {
                    number: n.clone(),
                    account: account.clone(),
                    session: sid,
                    own: own.clone(),
                    observed,
                    fp: fp.clone(),
                    expires,
                    since,
                },
            );
        }
        for (old, numbers) in displaced {
            self.send(
                old,
                DirMsg::Unbound {
                    numbers,
                    reason: "another endpoint registered the number".into(),
                    expired: false,
                },
            );
        }
        self.send(
            sid,
            DirMsg::Registered {
                req: Some(req),
                numbers: wanted,
                observed: addr_string(&observed),
                candidates: strings(&with_observed(&own, observed)),
                ttl_secs: self.cfg.binding_ttl.as_secs() as u32,
            },
        );
    }

    /// Remove the session's bindings of `numbers` (all of them when empty).
    /// Unregister `numbers` (all of the session's when empty) of this
    /// session. A number of another account (or of none) is refused with
    /// `NotYourNumber` and nothing changes.
    pub fn handle_unregister(
        &mut self,
        _now: Instant,
        sid: SessionId,
        req: ReqId,
        numbers: Vec<String>,
    ) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let Some(account) = s.account.clone() else {
            return self.send(sid, err(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        };
        for n in &numbers {
            let owned = self.numbers.get(n).is_some_and(|ni| ni.account == account)
                || self.bindings.get(n).is_some_and(|b| b.session == sid);
            if !owned {
                return self.send(
                    sid,
                    err(
                        Some(req),
                        ErrorCode::NotYourNumber,
                        format!("{n} is not a number of account {account}"),
                    ),
                );
            }
        }
        let mine: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.session == sid && (numbers.is_empty() || numbers.contains(&b.number)))
            .map(|b| b.number.clone())
            .collect();
        for n in &mine {
            self.drop_binding(n, "unregistered");
        }
        self.send(sid, DirMsg::Ok { req });
    }

    pub fn binding(&self, number: &str) -> Option<&Binding> {
        self.bindings.get(number)
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    pub fn bindings_of(&self, sid: SessionId) -> impl Iterator<Item = &Binding> {
        self.bindings.values().filter(move |b| b.session == sid)
    }

    fn remove_binding(&mut self, number: &str) -> Option<Binding> {
        let b = self.bindings.remove(number)?;
        self.expiry.remove(&(b.expires, b.number.clone()));
        Some(b)
    }

    /// [`Self::remove_binding`], told as a [`Notice::Unbound`].
    fn drop_binding(&mut self, number: &str, reason: &'static str) -> Option<Binding> {
        let b = self.remove_binding(number)?;
        self.notice(Notice::Unbound {
            number: b.number.clone(),
            account: b.account.clone(),
            session: b.session,
            reason,
        });
        Some(b)
    }

    fn unbind(&mut self, _now: Instant, numbers: &[String], reason: &'static str, expired: bool) {
        let mut by_session: BTreeMap<SessionId, Vec<String>> = BTreeMap::new();
        for n in numbers {
            if let Some(b) = self.drop_binding(n, reason) {
                by_session.entry(b.session).or_default().push(b.number);
            }
        }
        for (sid, numbers) in by_session {
            self.send(
                sid,
                DirMsg::Unbound {
                    numbers,
                    reason: reason.to_string(),
                    expired,
                },
            );
        }
    }

    // ------------------------------------------------------------------
    // Look-up and calls

    /// Resolve `number` with forwarding as it stands now.
    pub fn resolve(&self, number: &str, max_hops: usize) -> Result<Resolved, RouteError> {
        resolve(
            number,
            max_hops,
            |n| self.numbers.get(n),
            |n| self.bindings.contains_key(n),
        )
    }

    /// What to resolve for a dialled number: the number itself when it
    /// exists, else, for `OFFICE/EXT`, the office number and the extension
    /// (the office's endpoint routes the extension itself).
    pub fn split_dialled(&self, number: &str) -> (String, Option<String>) {
        if self.numbers.contains_key(number) {
            return (number.to_string(), None);
        }
        match keyline_proto::number::split_extension(number) {
            (office, Some(ext)) if self.numbers.contains_key(office) => {
                (office.to_string(), Some(ext.to_string()))
            }
            _ => (number.to_string(), None),
        }
    }

    fn caller_number(
        &self,
        sid: SessionId,
        from: Option<String>,
    ) -> Result<String, (ErrorCode, String)> {
        let Some(s) = self.sessions.get(&sid) else {
            return Err((ErrorCode::NotLoggedIn, "log in first".into()));
        };
        let Some(account) = &s.account else {
            return Err((ErrorCode::NotLoggedIn, "log in first".into()));
        };
        match from {
            Some(f) if s.numbers.contains(&f) => Ok(f),
            Some(f) => Err((
                ErrorCode::NotYourNumber,
                format!("{f} is not a number of account {account}; a caller can only show its own"),
            )),
            None => {
                // The account's first number bound to this session (looked
                // up per number: the session's own few, not every binding).
                s.numbers
                    .iter()
                    .find(|n| {
                        self.bindings
                            .get(n.as_str())
                            .is_some_and(|b| b.session == sid)
                    })
                    .or_else(|| s.numbers.first())
                    .cloned()
                    .ok_or((
                        ErrorCode::NotYourNumber,
                        format!("account {account} has no number to call from"),
                    ))
            }
        }
    }

    /// Look-up only (claim 3): answer with the bound endpoint's addresses
    /// and tell that endpoint who is coming.
    pub fn handle_lookup(
        &mut self,
        _now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &str,
        token: String,
    ) {
        let from = match self.caller_number(sid, None) {
            Ok(f) => f,
            Err((code, m)) => return self.send(sid, err(Some(req), code, m)),
        };
        let (target, ext) = self.split_dialled(number);
        let r = match self.resolve(&target, MAX_HOPS) {
            Ok(r) => r,
            Err(e) => return self.send(sid, err(Some(req), e.code(), e.to_string())),
        };
        let Some(b) = self.bindings.get(&r.number) else {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::Unreachable,
                    format!("{} is not registered (its endpoint is offline)", r.number),
                ),
            );
        };
        let (callee, fp, cands) = (b.session, b.fp.clone(), b.candidates());
        let (caller_fp, caller_candidates) = match self.sessions.get(&sid) {
            // Where the caller's connection will come from: its registered
            // addresses, if it registered the number it calls from, and
            // where we see it.
            Some(s) => (
                s.fp.clone(),
                match self.bindings.get(&from).filter(|b| b.session == sid) {
                    Some(b) => strings(&b.candidates()),
                    None => vec![addr_string(&s.observed)],
                },
            ),
            None => (String::new(), Vec::new()),
        };
        self.send(
            callee,
            DirMsg::Expect {
                number: r.number.clone(),
                ext,
                from,
                caller_fp,
                token: token.clone(),
                caller_candidates,
            },
        );
        self.send(
            sid,
            DirMsg::Found {
                req,
                number: r.number,
                via: r.via,
                candidates: strings(&cands),
                fingerprint: fp,
                token,
            },
        );
    }

    /// `sid` calls `number` (canonical).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_call(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &str,
        from: Option<String>,
        own: Vec<SocketAddr>,
        hops: u8,
    ) {
        self.handle_call_for(now, sid, req, number, from, own, hops, Placing::default())
    }

    /// `sid` calls `number` with `media` as the media end it vouches for
    /// (a gateway placing a call for one of its stations).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_call_for(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        number: &str,
        from: Option<String>,
        own: Vec<SocketAddr>,
        hops: u8,
        placing: Placing,
    ) {
        let Placing {
            media,
            handoff,
            check_key,
        } = placing;
        let fail = |s: &mut Self, code: ErrorCode, n: &str, message: String, mail: bool| {
            s.send(
                sid,
                DirMsg::CallFailed {
                    req,
                    code,
                    number: n.to_string(),
                    message,
                    mail,
                },
            );
        };
        let from = match self.caller_number(sid, from) {
            Ok(f) => f,
            Err((code, m)) => return fail(self, code, number, m, false),
        };
        let caller_account = self
            .sessions
            .get(&sid)
            .and_then(|s| s.account.clone())
            .unwrap_or_default();
        // A call that fails before anything rings is kept too.
        let record = |s: &mut Self, outcome: CallOutcome, reached: Option<&str>| {
            let (dialled, _) = s.split_dialled(number);
            let owner = |n: &str| s.numbers.get(n).map(|ni| ni.account.clone());
            let rec = CallRecord {
                from: from.clone(),
                from_account: caller_account.clone(),
                dialled_account: owner(&dialled),
                reached: reached.and_then(|n| Some((n.to_string(), owner(n)?))),
                dialled,
                started: now,
                answered: None,
                ended: now,
                outcome,
                forwarded_to: None,
                relayed: None,
            };
            s.actions.push_back(Action::Record(Box::new(rec)));
        };
        if own.len() > MAX_CANDIDATES {
            return fail(
                self,
                ErrorCode::BadAddress,
                number,
                format!("too many candidate addresses (at most {MAX_CANDIDATES})"),
                false,
            );
        }
        let hops = hops as usize;
        if hops >= MAX_HOPS {
            record(self, CallOutcome::Failed, None);
            return fail(
                self,
                ErrorCode::TooManyHops,
                number,
                format!("too many redirects (more than {MAX_HOPS})"),
                false,
            );
        }
        let (target, ext) = self.split_dialled(number);
        let r = match self.resolve(&target, MAX_HOPS - hops) {
            Ok(r) => r,
            Err(e) => {
                let (n, outcome) = match &e {
                    RouteError::Unknown { number, .. } => {
                        (number.clone(), CallOutcome::UnknownNumber)
                    }
                    _ => (number.to_string(), CallOutcome::Failed),
                };
                record(self, outcome, None);
                return fail(self, e.code(), &n, e.to_string(), false);
            }
        };
        if self.numbers.get(&r.number).is_some_and(|ni| ni.dnd) {
            let m = format!(
                "{} does not want to be disturbed now; you may leave a voice mail or text",
                r.number
            );
            record(self, CallOutcome::Busy, Some(&r.number));
            return fail(self, ErrorCode::Unreachable, &r.number.clone(), m, true);
        }
        let Some(b) = self.bindings.get(&r.number) else {
            let m = if r.via.is_empty() {
                format!("{} is not registered (its endpoint is offline); you may leave a voice mail or text", r.number)
            } else {
                format!(
                    "{} (forwarded from {}) is not registered; you may leave a voice mail or text",
                    r.number,
                    r.via.join(", ")
                )
            };
            record(self, CallOutcome::Offline, Some(&r.number));
            return fail(self, ErrorCode::Unreachable, &r.number.clone(), m, true);
        };
        if b.session == sid {
            return fail(
                self,
                ErrorCode::SelfCall,
                &r.number.clone(),
                format!("{} is registered by this same endpoint", r.number),
                false,
            );
        }
        let (callee, callee_fp, callee_cands, callee_account) =
            (b.session, b.fp.clone(), b.candidates(), b.account.clone());
        let dialled_account = self.numbers.get(&target).map(|ni| ni.account.clone());
        let Some((callee_media, callee_checks)) =
            self.sessions.get(&callee).map(|s| (s.observed, s.checks))
        else {
            return;
        };
        let Some(caller) = self.sessions.get(&sid) else {
            return;
        };
        let (caller_candidates, caller_media, caller_fp) = match &media {
            Some(m) => {
                let (cands, seen) = m.resolve(caller.observed);
                (cands, seen, m.fp.clone())
            }
            None => (
                with_observed(&own, caller.observed),
                caller.observed,
                caller.fp.clone(),
            ),
        };
        // Checks only where both ends are their own media ends and the
        // rule allows a direct path at all.
        let check_key = check_key.filter(|_| {
            callee_checks
                && caller.checks
                && media.is_none()
                && self.cfg.policy != DirectPolicy::Relay
        });
        let id = self.next_call;
        self.next_call += 1;
        let call = Call {
            id,
            caller: sid,
            callee,
            from: from.clone(),
            caller_account,
            dialled_account,
            callee_account,
            number: r.number.clone(),
            dialled: number.to_string(),
            ext: ext.clone(),
            via: r.via.clone(),
            caller_candidates: caller_candidates.clone(),
            caller_fp,
            callee_fp,
            callee_candidates: callee_cands,
            caller_media,
            callee_media,
            started: now,
            state: CallState::Ringing {
                deadline: now + self.cfg.ring_timeout,
            },
            policy: self.cfg.policy,
            token: None,
            relay: RelayState::None,
            answer_req: None,
        };
        self.send(
            callee,
            DirMsg::Ring {
                call: id,
                from,
                number: r.number.clone(),
                ext: ext.clone(),
                dialled: number.to_string(),
                via: r.via.clone(),
                caller_fp: call.caller_fp.clone(),
                caller_candidates: strings(&caller_candidates),
                handoff,
                checks: check_key.as_ref().map(|key| {
                    Box::new(CheckPlan {
                        key: key.clone(),
                        candidates: strings(&caller_candidates),
                    })
                }),
            },
        );
        self.send(
            sid,
            DirMsg::Ringing {
                req,
                call: id,
                number: r.number,
                via: r.via,
                checks: check_key.map(|key| {
                    Box::new(CheckPlan {
                        key,
                        candidates: strings(&call.callee_candidates),
                    })
                }),
            },
        );
        self.notice(Notice::Ringing {
            call: id,
            from: call.from.clone(),
            number: call.number.clone(),
            dialled: call.dialled.clone(),
        });
        self.calls.insert(id, call);
    }

    fn ringing_call_of_callee(
        &self,
        sid: SessionId,
        id: CallId,
    ) -> Result<&Call, (ErrorCode, String)> {
        let c = self
            .calls
            .get(&id)
            .ok_or((ErrorCode::NoSuchCall, format!("no call {id}")))?;
        if c.callee != sid {
            return Err((
                ErrorCode::NotYourCall,
                format!("call {id} does not ring here"),
            ));
        }
        if !matches!(c.state, CallState::Ringing { .. }) {
            return Err((
                ErrorCode::BadCallState,
                format!("call {id} is no longer ringing"),
            ));
        }
        Ok(c)
    }

    /// The callee takes the call; `token` is a fresh secret for its media.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        token: String,
    ) {
        self.handle_answer_for(now, sid, req, id, token, None)
    }

    /// The callee takes the call with `media` as the media end it vouches
    /// for (a gateway's station answering through its forwarder).
    pub fn handle_answer_for(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        token: String,
        media: Option<MediaEnd>,
    ) {
        if let Err((code, m)) = self.ringing_call_of_callee(sid, id) {
            return self.send(sid, err(Some(req), code, m));
        }
        let observed = self.sessions.get(&sid).map(|s| s.observed);
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        if let (Some(m), Some(observed)) = (media, observed) {
            let (cands, seen) = m.resolve(observed);
            c.callee_fp = m.fp;
            c.callee_candidates = cands;
            c.callee_media = seen;
        }
        c.state = CallState::Answered { at: now };
        c.token = Some(token);
        c.answer_req = Some(req);
        if c.policy == DirectPolicy::Relay {
            c.relay = RelayState::Pending { fallback: None };
            self.actions.push_back(Action::AllocateRelay {
                call: id,
                caller: c.caller_media,
                callee: c.callee_media,
            });
            return;
        }
        self.send_connects(id);
    }

    fn send_connects(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        let token = c.token.clone().unwrap_or_default();
        let (to_caller, to_callee) = match &c.relay {
            RelayState::Ready {
                caller_facing,
                callee_facing,
            } => (
                Some(caller_facing.to_string()),
                Some(callee_facing.to_string()),
            ),
            _ => (None, None),
        };
        let fallback_after_ms = self.cfg.fallback_after.as_millis().min(u32::MAX as u128) as u32;
        let caller_plan = CallPlan {
            dial: true,
            peer_fp: c.callee_fp.clone(),
            peer_candidates: strings(&c.callee_candidates),
            token: token.clone(),
            policy: c.policy,
            relay: to_caller,
            fallback_after_ms,
        };
        let callee_plan = CallPlan {
            dial: false,
            peer_fp: c.caller_fp.clone(),
            peer_candidates: strings(&c.caller_candidates),
            token,
            policy: c.policy,
            relay: to_callee,
            fallback_after_ms,
        };
        let (caller, callee, req) = (c.caller, c.callee, c.answer_req);
        let answered = Notice::Answered {
            call: id,
            from: c.from.clone(),
            number: c.number.clone(),
            relayed: matches!(c.relay, RelayState::Ready { .. }),
        };
        self.notice(answered);
        self.send(
            callee,
            DirMsg::Connect {
                req,
                call: id,
                plan: callee_plan,
            },
        );
        self.send(
            caller,
            DirMsg::Connect {
                req: None,
                call: id,
                plan: caller_plan,
            },
        );
    }

    /// The callee declines (`busy`: because it is busy).
    pub fn handle_decline(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        busy: bool,
    ) {
        if let Err((code, m)) = self.ringing_call_of_callee(sid, id) {
            return self.send(sid, err(Some(req), code, m));
        }
        self.send(sid, DirMsg::Ok { req });
        if busy && self.forward_unanswered(now, id, ForwardWhen::Busy, false) {
            return;
        }
        let reason = if busy {
            EndReason::Busy
        } else {
            EndReason::Rejected
        };
        self.end_call(now, id, Some(sid), reason);
    }

    /// If the number ringing in call `id` has a `when` rule (`busy` or
    /// `no-answer`), send the caller on to its target as a redirect does
    /// and end the call (telling the callee when `tell_callee`).
    fn forward_unanswered(
        &mut self,
        now: Instant,
        id: CallId,
        when: ForwardWhen,
        tell_callee: bool,
    ) -> bool {
        let Some(c) = self.calls.get(&id) else {
            return false;
        };
        let to = match self.numbers.get(&c.number).and_then(|ni| ni.forward(when)) {
            Some(to) if to != c.number => to.to_string(),
            _ => return false,
        };
        let Some(c) = self.calls.remove(&id) else {
            return false;
        };
        if tell_callee {
            self.send(
                c.callee,
                DirMsg::Ended {
                    call: id,
                    reason: EndReason::NoAnswer,
                },
            );
        }
        self.send(
            c.caller,
            DirMsg::Redirected {
                call: id,
                number: to.clone(),
                by: c.number.clone(),
                handoff: None,
            },
        );
        self.finished(now, c, EndReason::Redirected, Some(to));
        true
    }

    /// The callee sends the caller to `number` (claim 7).
    pub fn handle_redirect(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        number: &str,
    ) {
        let c = match self.ringing_call_of_callee(sid, id) {
            Ok(c) => c,
            Err((code, m)) => return self.send(sid, err(Some(req), code, m)),
        };
        let (caller, by) = (c.caller, c.number.clone());
        self.send(sid, DirMsg::Ok { req });
        self.send(
            caller,
            DirMsg::Redirected {
                call: id,
                number: number.to_string(),
                by,
                handoff: None,
            },
        );
        // The caller learnt why from `Redirected`; end it quietly for both.
        if let Some(c) = self.calls.remove(&id) {
            self.finished(now, c, EndReason::Redirected, Some(number.to_string()));
        }
    }

    /// An end of an answered call hands the other end on to `number`
    /// (claim 5): the other end is told `Redirected` and calls it directly;
    /// the call ends for both.
    pub fn handle_transfer(
        &mut self,
        now: Instant,
        sid: SessionId,
        req: ReqId,
        id: CallId,
        number: &str,
        handoff: Option<u64>,
    ) {
        let Some(c) = self.calls.get(&id) else {
            return self.send(
                sid,
                err(Some(req), ErrorCode::NoSuchCall, format!("no call {id}")),
            );
        };
        let (other, by) = if c.callee == sid {
            (c.caller, c.number.clone())
        } else if c.caller == sid {
            (c.callee, c.from.clone())
        } else {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NotYourCall,
                    format!("call {id} is not yours"),
                ),
            );
        };
        if !matches!(c.state, CallState::Answered { .. }) {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    format!("call {id} is not answered; redirect a ringing call instead"),
                ),
            );
        }
        self.send(sid, DirMsg::Ok { req });
        self.send(
            other,
            DirMsg::Redirected {
                call: id,
                number: number.to_string(),
                by,
                handoff,
            },
        );
        if let Some(c) = self.calls.remove(&id) {
            self.finished(now, c, EndReason::Redirected, Some(number.to_string()));
        }
    }

    /// Either end hangs up (the caller cancels while it rings).
    pub fn handle_hangup(&mut self, now: Instant, sid: SessionId, id: CallId) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if c.caller != sid && c.callee != sid {
            return self.send(
                sid,
                err(
                    None,
                    ErrorCode::NotYourCall,
                    format!("call {id} is not yours"),
                ),
            );
        }
        let reason = match c.state {
            CallState::Ringing { .. } if c.caller == sid => EndReason::Cancelled,
            CallState::Ringing { .. } => EndReason::Rejected,
            CallState::Answered { .. } => EndReason::Hangup,
        };
        self.end_call(now, id, Some(sid), reason);
    }

    /// The caller's direct attempt failed: relay the call if the rule allows.
    pub fn handle_fallback(&mut self, _now: Instant, sid: SessionId, req: ReqId, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else {
            return self.send(
                sid,
                err(Some(req), ErrorCode::NoSuchCall, format!("no call {id}")),
            );
        };
        if c.caller != sid {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NotYourCall,
                    format!("only the calling end of call {id} may ask for the relay"),
                ),
            );
        }
        if !matches!(c.state, CallState::Answered { .. }) {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    format!("call {id} is not answered"),
                ),
            );
        }
        if c.policy == DirectPolicy::Direct {
            return self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::NoRelay,
                    "the direct-connect rule is 'direct': this directory offers no relay",
                ),
            );
        }
        match c.relay.clone() {
            RelayState::Ready { caller_facing, .. } => self.send(
                sid,
                DirMsg::RelayReady {
                    req: Some(req),
                    call: id,
                    relay: caller_facing.to_string(),
                },
            ),
            RelayState::Pending { .. } => self.send(
                sid,
                err(
                    Some(req),
                    ErrorCode::BadCallState,
                    "the relay is being set up",
                ),
            ),
            RelayState::None => {
                c.relay = RelayState::Pending {
                    fallback: Some(req),
                };
                self.actions.push_back(Action::AllocateRelay {
                    call: id,
                    caller: c.caller_media,
                    callee: c.callee_media,
                });
            }
        }
    }

    /// The forwarder asked for by [`Action::AllocateRelay`] is up.
    pub fn handle_relay_ready(
        &mut self,
        _now: Instant,
        id: CallId,
        caller_facing: SocketAddr,
        callee_facing: SocketAddr,
    ) {
        let Some(c) = self.calls.get_mut(&id) else {
            // The call ended meanwhile.
            self.actions.push_back(Action::ReleaseRelay { call: id });
            return;
        };
        let RelayState::Pending { fallback } = c.relay else {
            return;
        };
        c.relay = RelayState::Ready {
            caller_facing,
            callee_facing,
        };
        let (caller, callee) = (c.caller, c.callee);
        let relayed = Notice::Relayed {
            call: id,
            from: c.from.clone(),
            number: c.number.clone(),
        };
        match fallback {
            None => self.send_connects(id),
            Some(req) => {
                self.notice(relayed);
                self.send(
                    callee,
                    DirMsg::RelayReady {
                        req: None,
                        call: id,
                        relay: callee_facing.to_string(),
                    },
                );
                self.send(
                    caller,
                    DirMsg::RelayReady {
                        req: Some(req),
                        call: id,
                        relay: caller_facing.to_string(),
                    },
                );
            }
        }
    }

    /// The forwarder could not be set up.
    pub fn handle_relay_failed(&mut self, now: Instant, id: CallId, message: &str) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let RelayState::Pending { fallback } = c.relay else {
            return;
        };
        c.relay = RelayState::None;
        let caller = c.caller;
        match fallback {
            Some(req) => self.send(
                caller,
                err(
                    Some(req),
                    ErrorCode::RelayFailed,
                    format!("the relay could not be set up: {message}"),
                ),
            ),
            None => self.end_call(now, id, None, EndReason::MediaFailed),
        }
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    /// End call `id`; `by` (if any) is told nothing, the other end(s) are
    /// told `reason`.
    fn end_call(&mut self, now: Instant, id: CallId, by: Option<SessionId>, reason: EndReason) {
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        for end in [c.caller, c.callee] {
            if Some(end) != by {
                self.send(end, DirMsg::Ended { call: id, reason });
            }
        }
        self.finished(now, c, reason, None);
    }

    /// Call `c` is over: its relay goes, and it is logged and recorded.
    /// `forwarded_to`: where the caller was sent on, if it was.
    fn finished(&mut self, now: Instant, c: Call, reason: EndReason, forwarded_to: Option<String>) {
        if !matches!(c.relay, RelayState::None) {
            self.actions.push_back(Action::ReleaseRelay { call: c.id });
        }
        let answered = match c.state {
            CallState::Answered { at } => Some(at),
            CallState::Ringing { .. } => None,
        };
        let outcome = match (answered, reason) {
            (Some(_), _) => CallOutcome::Answered,
            (None, EndReason::Cancelled) => CallOutcome::Cancelled,
            (None, EndReason::Rejected) => CallOutcome::Declined,
            (None, EndReason::Busy) => CallOutcome::Busy,
            (None, EndReason::NoAnswer) => CallOutcome::NoAnswer,
            (None, EndReason::Redirected) => CallOutcome::Forwarded,
            (None, _) => CallOutcome::Failed,
        };
        let record = CallRecord {
            from: c.from.clone(),
            from_account: c.caller_account,
            dialled: self.split_dialled(&c.dialled).0,
            dialled_account: c.dialled_account,
            reached: Some((c.number.clone(), c.callee_account)),
            started: c.started,
            answered,
            ended: now,
            outcome,
            forwarded_to,
            // Direct unless the relay carried it (as far as the directory
            // can tell: a direct attempt that failed asks for the relay).
            relayed: answered.map(|_| matches!(c.relay, RelayState::Ready { .. })),
        };
        self.notice(Notice::Ended {
            call: c.id,
            from: c.from.clone(),
            number: c.number.clone(),
            outcome,
            reason,
            relayed: record.relayed,
        });
        self.actions.push_back(Action::Finished {
            call: c.id,
            from: c.from,
            number: c.number,
            answered: answered.is_some(),
            reason,
        });
        self.actions.push_back(Action::Record(Box::new(record)));
    }

    // ------------------------------------------------------------------
    // Time

    /// Ring timeouts fire and stale bindings vanish.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| matches!(c.state, CallState::Ringing { deadline } if deadline <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            if !self.forward_unanswered(now, id, ForwardWhen::NoAnswer, true) {
                self.end_call(now, id, None, EndReason::NoAnswer);
            }
        }
        let mut stale = Vec::new();
        while let Some(first) = self.expiry.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, n)) = self.expiry.pop_first() {
                stale.push(n);
            }
        }
        if !stale.is_empty() {
            self.unbind(
                now,
                &stale,
                "the registration expired (not refreshed in time)",
                true,
            );
        }
    }

    /// The earliest moment [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ring = self
            .calls
            .values()
            .filter_map(|c| match c.state {
                CallState::Ringing { deadline } => Some(deadline),
                CallState::Answered { .. } => None,
            })
            .min();
        let bind = self.expiry.first().map(|(t, _)| *t);
        match (ring, bind) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Checks the router's invariants, naming the first that is broken:
    ///
    /// - the expiry index lists exactly the bindings, each at its expiry;
    /// - a binding belongs to a session that exists and is logged in as the
    ///   account that owns the number;
    /// - a call has an owner at each end: both sessions exist, and they are
    ///   two (no call to oneself), and its id was handed out;
    /// - a ringing call has a deadline after it started; an answered one
    ///   has its media token; only an answered call has a relay (pending
    ///   or ready).
    ///
    /// That no binding outlives its expiry once [`Self::handle_timeout`]
    /// has run, and that every relay allocated belongs to a call, are the
    /// shell's to check (they need the time and the allocations); the unit
    /// tests check these after every step, the fuzz target after every
    /// input.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.expiry.len() != self.bindings.len() {
            return Err(format!(
                "{} expiry entries for {} bindings",
                self.expiry.len(),
                self.bindings.len()
            ));
        }
        for (at, number) in &self.expiry {
            match self.bindings.get(number) {
                Some(b) if b.expires == *at => {}
                Some(b) => {
                    return Err(format!(
                        "binding of {number} expires at {:?}, its index says {at:?}",
                        b.expires
                    ))
                }
                None => return Err(format!("expiry entry for {number}, which has no binding")),
            }
        }
        for (number, b) in &self.bindings {
            if &b.number != number {
                return Err(format!("binding of {} kept under {number}", b.number));
            }
            let Some(s) = self.sessions.get(&b.session) else {
                return Err(format!(
                    "binding of {number} to session {}, which is gone",
                    b.session
                ));
            };
            if s.account.as_deref() != Some(b.account.as_str()) {
                return Err(format!(
                    "binding of {number} for account {} on session {} logged in as {:?}",
                    b.account, b.session, s.account
                ));
            }
            if self.numbers.get(number).map(|ni| ni.account.as_str()) != Some(&b.account) {
                return Err(format!(
                    "binding of {number} for account {}, which does not own it",
                    b.account
                ));
            }
        }
        for (id, c) in &self.calls {
            if c.id != *id || *id >= self.next_call {
                return Err(format!(
                    "call {} kept under {id} (next id {})",
                    c.id, self.next_call
                ));
            }
            for (end, sid) in [("caller", c.caller), ("callee", c.callee)] {
                if !self.sessions.contains_key(&sid) {
                    return Err(format!("call {id}: its {end}'s session {sid} is gone"));
                }
            }
            if c.caller == c.callee {
                return Err(format!("call {id} from session {} to itself", c.caller));
            }
            match c.state {
                CallState::Ringing { deadline } => {
                    if deadline <= c.started {
                        return Err(format!(
                            "call {id} rings without a deadline after its start"
                        ));
                    }
                    if c.relay != RelayState::None {
                        return Err(format!("ringing call {id} has a relay: {:?}", c.relay));
                    }
                }
                CallState::Answered { .. } => {
                    if c.token.is_none() {
                        return Err(format!("answered call {id} has no media token"));
                    }
                }
            }
        }
        Ok(())
    }

    /// End every call and tell every session the directory is going away.
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            self.end_call(now, id, None, EndReason::Shutdown);
        }
        let sids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.send(
                sid,
                DirMsg::GoingAway {
                    message: "the directory is shutting down; reconnect later".into(),
                },
            );
        }
    }

    fn send(&mut self, to: SessionId, msg: DirMsg) {
        self.actions.push_back(Action::Send { to, msg });
    }

    fn notice(&mut self, n: Notice) {
        self.actions.push_back(Action::Notice(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_to_string_writes_them() {
        let samples = [
            "0.0.0.0:0",
            "127.0.0.1:1",
            "10.20.30.40:65535",
            "255.255.255.255:9",
            "192.168.1.100:40000",
            "[::1]:5060",
            "[fe80::1]:7",
        ];
        for s in samples {
            let a: SocketAddr = s.parse().expect("sample");
            assert_eq!(addr_string(&a), a.to_string());
        }
        for k in 0..5000u32 {
            let v = k.wrapping_mul(2_654_435_761);
            let a = SocketAddr::from((v.to_be_bytes(), (v >> 7) as u16));
            assert_eq!(addr_string(&a), a.to_string());
        }
    }
    use proptest::prelude::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn ni(account: &str, forward: Option<(ForwardWhen, &str)>) -> NumberInfo {
        NumberInfo {
            dnd: false,
            account: account.into(),
            forwards: forward
                .map(|(when, to)| ForwardRule::new(when, to))
                .into_iter()
                .collect(),
        }
    }

    fn table(entries: &[(&str, NumberInfo)]) -> HashMap<String, NumberInfo> {
        entries
            .iter()
            .map(|(n, i)| (n.to_string(), i.clone()))
            .collect()
    }

    #[test]
    fn resolve_follows_rules_and_detects_loops() {
        let t = table(&[
            ("a", ni("x", Some((ForwardWhen::Always, "b")))),
            ("b", ni("y", Some((ForwardWhen::Unregistered, "c")))),
            ("c", ni("z", None)),
            ("l1", ni("x", Some((ForwardWhen::Always, "l2")))),
            ("l2", ni("x", Some((ForwardWhen::Always, "l1")))),
            ("self", ni("x", Some((ForwardWhen::Always, "self")))),
            ("dangling", ni("x", Some((ForwardWhen::Always, "nobody")))),
        ]);
        let info = |n: &str| t.get(n);
        let r = resolve("a", MAX_HOPS, info, |_| false).expect("resolves");
        assert_eq!(r.number, "c");
        assert_eq!(r.via, vec!["a", "b"]);
        let r = resolve("a", MAX_HOPS, info, |n| n == "b").expect("resolves");
        assert_eq!((r.number.as_str(), r.via.len()), ("b", 1));
        let e = resolve("l1", MAX_HOPS, info, |_| false).expect_err("loop");
        assert_eq!(
            e,
            RouteError::Loop {
                chain: vec!["l1".into(), "l2".into(), "l1".into()]
            }
        );
        assert!(e.to_string().contains("l1 -> l2 -> l1"), "{e}");
        assert!(matches!(
            resolve("self", MAX_HOPS, info, |_| false),
            Err(RouteError::Loop { .. })
        ));
        assert!(matches!(
            resolve("dangling", MAX_HOPS, info, |_| false),
            Err(RouteError::Unknown { number, .. }) if number == "nobody"
        ));
        assert!(matches!(
            resolve("zzz", MAX_HOPS, info, |_| false),
            Err(RouteError::Unknown { .. })
        ));
    }

    #[test]
    fn resolve_stops_after_max_hops() {
        // n0 -> n1 -> ... -> n9, no loop.
        let entries: Vec<(String, NumberInfo)> = (0..10)
            .map(|i| {
                let next = format!("n{}", i + 1);
                (
                    format!("n{i}"),
                    if i < 9 {
                        ni("x", Some((ForwardWhen::Always, &next)))
                    } else {
                        ni("x", None)
                    },
                )
            })
            .collect();
        let t: HashMap<String, NumberInfo> = entries.into_iter().collect();
        let info = |n: &str| t.get(n);
        assert_eq!(
            resolve("n4", MAX_HOPS, info, |_| false)
                .expect("5 hops are fine")
                .number,
            "n9"
        );
        let e = resolve("n3", MAX_HOPS, info, |_| false).expect_err("6 hops");
        assert!(matches!(e, RouteError::TooManyHops { .. }), "{e:?}");
        assert_eq!(e.code(), ErrorCode::TooManyHops);
    }

    proptest! {
        /// Whatever the rules, resolution terminates; success ends on a
        /// number without an applicable rule, within the hop limit and with
        /// no number visited twice; a loop error names a real cycle.
        #[test]
        fn resolve_is_total_and_sound(
            rules in prop::collection::vec((0usize..8, prop::option::of((any::<bool>(), 0usize..9))), 1..8),
            bound in prop::collection::vec(any::<bool>(), 9),
            start in 0usize..9,
        ) {
            let mut t: HashMap<String, NumberInfo> = HashMap::new();
            for (n, rule) in &rules {
                t.insert(format!("n{n}"), ni("x", rule.map(|(always, to)| {
                    (if always { ForwardWhen::Always } else { ForwardWhen::Unregistered }, if to == 8 { "n8" } else { ["n0","n1","n2","n3","n4","n5","n6","n7"][to] })
                })));
            }
            let is_bound = |n: &str| n[1..].parse::<usize>().map(|i| bound[i]).unwrap_or(false);
            let start = format!("n{start}");
            match resolve(&start, MAX_HOPS, |n| t.get(n), is_bound) {
                Ok(r) => {
                    prop_assert!(r.via.len() <= MAX_HOPS);
                    let mut seen = r.via.clone();
                    seen.push(r.number.clone());
                    let uniq: BTreeSet<&String> = seen.iter().collect();
                    prop_assert_eq!(uniq.len(), seen.len());
                    let last = &t[&r.number];
                    let applies = last.forwards.iter().any(|f| match f.when {
                        ForwardWhen::Always => true,
                        ForwardWhen::Unregistered => !is_bound(&r.number),
                        ForwardWhen::Busy => last.dnd,
                        ForwardWhen::NoAnswer => false,
                    });
                    prop_assert!(!applies);
                    prop_assert_eq!(r.via.first().unwrap_or(&r.number), &start);
                }
                Err(RouteError::Loop { chain }) => {
                    let last = chain.last().cloned().unwrap_or_default();
                    prop_assert!(chain[..chain.len() - 1].contains(&last));
                }
                Err(RouteError::TooManyHops { chain, .. }) => prop_assert!(chain.len() > MAX_HOPS),
                Err(RouteError::Unknown { number, .. }) => prop_assert!(!t.contains_key(&number)),
            }
        }
    }

    /// A router with accounts alice (아리랑, 2001) and bob (ボブ), each online.
    fn two_online() -> (Router, Instant) {
        let now = t0();
        let mut r = Router::new(Config::default());
        r.set_numbers(
            now,
            table(&[
                ("아리랑", ni("alice", None)),
                ("2001", ni("alice", None)),
                ("ボブ", ni("bob", None)),
                ("carol", ni("carol", None)),
            ]),
        );
        r.handle_session_up(1, "fa".into(), addr(1001));
        r.handle_session_up(2, "fb".into(), addr(1002));
        r.handle_login(now, 1, "alice", vec!["아리랑".into(), "2001".into()]);
        r.handle_login(now, 2, "bob", vec!["ボブ".into()]);
        r.handle_register(now, 1, 1, vec![], vec![addr(5001)]);
        r.handle_register(now, 2, 1, vec![], vec![addr(5002)]);
        drain(&mut r);
        (r, now)
    }

    /// The actions so far; the invariants hold after every step.
    fn drain(r: &mut Router) -> Vec<Action> {
        if let Err(e) = r.check_invariants() {
            panic!("invariant broken: {e}\n{r:#?}");
        }
        std::iter::from_fn(|| r.poll_action()).collect()
    }

    fn sent(actions: &[Action], to: SessionId) -> Vec<DirMsg> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to: t, msg } if *t == to => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    /// The notices among `actions`, short: `bound N`, `unbound N: why`,
    /// `ringing`, `answered`, `relayed`, `ended OUTCOME`.
    fn notices(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notice(Notice::Bound { number, .. }) => Some(format!("bound {number}")),
                Action::Notice(Notice::Unbound { number, reason, .. }) => {
                    Some(format!("unbound {number}: {reason}"))
                }
                Action::Notice(Notice::Ringing { from, number, .. }) => {
                    Some(format!("ringing {from} -> {number}"))
                }
                Action::Notice(Notice::Answered { relayed, .. }) => {
                    Some(format!("answered relayed={relayed}"))
                }
                Action::Notice(Notice::Relayed { .. }) => Some("relayed".into()),
                Action::Notice(Notice::Ended {
                    outcome, relayed, ..
                }) => Some(format!("ended {} relayed={relayed:?}", outcome.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Every binding made or lost and every step of a call is a notice,
    /// once; refreshes and failed attempts are none.
    #[test]
    fn notices_tell_bindings_and_each_step_of_a_call() {
        let now = t0();
        let mut r = Router::new(Config::default());
        r.set_numbers(
            now,
            table(&[("1001", ni("alice", None)), ("1002", ni("bob", None))]),
        );
        r.handle_session_up(1, "fa".into(), addr(1001));
        r.handle_session_up(2, "fb".into(), addr(1002));
        r.handle_login(now, 1, "alice", vec!["1001".into()]);
        r.handle_login(now, 2, "bob", vec!["1002".into()]);
        r.handle_register(now, 1, 1, vec![], vec![]);
        r.handle_register(now, 2, 1, vec![], vec![]);
        assert_eq!(notices(&drain(&mut r)), ["bound 1001", "bound 1002"]);
        // A refresh, and a register refused, are no notices.
        r.handle_register(now + Duration::from_secs(10), 1, 2, vec![], vec![]);
        r.handle_register(now, 1, 3, vec!["1002".into()], vec![]);
        assert_eq!(notices(&drain(&mut r)), Vec::<String>::new());
        // A call from ringing to its end.
        r.handle_call(now, 1, 4, "1002", None, vec![], 0);
        let acts = drain(&mut r);
        let call = match &sent(&acts, 2)[0] {
            DirMsg::Ring { call, .. } => *call,
            other => panic!("{other:?}"),
        };
        assert_eq!(notices(&acts), ["ringing 1001 -> 1002"]);
        r.handle_answer(now, 2, 5, call, "tok".into());
        assert_eq!(notices(&drain(&mut r)), ["answered relayed=false"]);
        // The caller's direct path fails: the relay takes over.
        r.handle_fallback(now, 1, 6, call);
        drain(&mut r);
        r.handle_relay_ready(now, call, addr(7001), addr(7002));
        assert_eq!(notices(&drain(&mut r)), ["relayed"]);
        r.handle_hangup(now + Duration::from_secs(5), 1, call);
        assert_eq!(
            notices(&drain(&mut r)),
            ["ended answered relayed=Some(true)"]
        );
        // A call nobody answers, then an unknown number (no notice).
        r.handle_call(now, 1, 7, "1002", None, vec![], 0);
        drain(&mut r);
        r.handle_timeout(now + Duration::from_secs(31));
        assert_eq!(notices(&drain(&mut r)), ["ended no-answer relayed=None"]);
        r.handle_call(now, 1, 8, "9999", None, vec![], 0);
        assert_eq!(notices(&drain(&mut r)), Vec::<String>::new());
        // Bindings go: unregistered, moved, displaced, disconnected, expired.
        r.handle_unregister(now, 2, 9, vec![]);
        assert_eq!(notices(&drain(&mut r)), ["unbound 1002: unregistered"]);
        r.handle_register(now, 2, 10, vec![], vec![]);
        r.handle_session_moved(now, 2, addr(2002));
        assert_eq!(notices(&drain(&mut r)), ["bound 1002", "bound 1002"]);
        r.handle_session_up(3, "fb2".into(), addr(1003));
        r.handle_login(now, 3, "bob", vec!["1002".into()]);
        r.handle_register(now, 3, 1, vec![], vec![]);
        assert_eq!(
            notices(&drain(&mut r)),
            [
                "unbound 1002: another endpoint registered the number",
                "bound 1002"
            ]
        );
        r.handle_session_down(now, 3);
        assert_eq!(
            notices(&drain(&mut r)),
            ["unbound 1002: the endpoint disconnected"]
        );
        r.handle_timeout(now + Duration::from_secs(10) + Config::default().binding_ttl);
        assert_eq!(
            notices(&drain(&mut r)),
            ["unbound 1001: the registration expired (not refreshed in time)"]
        );
    }

    #[test]
    fn register_reports_observed_and_rejects_foreign_numbers() {
        let now = t0();
        let mut r = Router::new(Config::default());
        r.set_numbers(now, table(&[("1", ni("a", None)), ("2", ni("b", None))]));
        r.handle_session_up(1, "f".into(), addr(9));
        r.handle_register(now, 1, 1, vec![], vec![]);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::NotLoggedIn,
                ..
            }
        ));
        r.handle_login(now, 1, "a", vec!["1".into()]);
        r.handle_register(now, 1, 2, vec!["2".into()], vec![]);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::NotYourNumber,
                ..
            }
        ));
        r.handle_register(now, 1, 3, vec![], vec![addr(7), addr(9)]);
        match &sent(&drain(&mut r), 1)[0] {
            DirMsg::Registered {
                req,
                numbers,
                observed,
                candidates,
                ttl_secs,
            } => {
                assert_eq!(*req, Some(3));
                assert_eq!(numbers, &vec!["1".to_string()]);
                assert_eq!(observed, "127.0.0.1:9");
                assert_eq!(
                    candidates,
                    &vec!["127.0.0.1:7".to_string(), "127.0.0.1:9".to_string()]
                );
                assert_eq!(*ttl_secs, 120);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Unregistering another account's number is refused and changes
    /// nothing (it used to answer ok).
    #[test]
    fn unregister_refuses_another_accounts_number() {
        let (mut r, now) = two_online();
        r.handle_unregister(now, 1, 5, vec!["ボブ".into()]);
        match &sent(&drain(&mut r), 1)[0] {
            DirMsg::Error {
                req: Some(5),
                code: ErrorCode::NotYourNumber,
                message,
                ..
            } => assert!(
                message.contains("ボブ is not a number of account"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.binding("ボブ").map(|b| b.session), Some(2));
        r.handle_unregister(now, 1, 6, vec!["nobody's".into()]);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::NotYourNumber,
                ..
            }
        ));
        r.handle_unregister(now, 1, 7, vec!["아리랑".into()]);
        assert_eq!(sent(&drain(&mut r), 1)[0], DirMsg::Ok { req: 7 });
        assert!(r.binding("아리랑").is_none());
        assert!(r.binding("ボブ").is_some());
        r.handle_session_up(3, "f".into(), addr(3));
        r.handle_unregister(now, 3, 8, vec![]);
        assert!(matches!(
            &sent(&drain(&mut r), 3)[0],
            DirMsg::Error {
                code: ErrorCode::NotLoggedIn,
                ..
            }
        ));
    }

    #[test]
    fn bindings_expire_unless_refreshed() {
        let (mut r, now) = two_online();
        let ttl = r.config().binding_ttl;
        assert_eq!(r.poll_timeout(), Some(now + ttl));
        // Alice refreshes at ttl/3; Bob does not.
        r.handle_register(now + ttl / 3, 1, 2, vec![], vec![]);
        drain(&mut r);
        r.handle_timeout(now + ttl);
        let acts = drain(&mut r);
        assert!(r.binding("ボブ").is_none());
        assert!(r.binding("아리랑").is_some());
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Unbound { numbers, .. } if numbers == &vec!["ボブ".to_string()])
        );
        assert_eq!(r.poll_timeout(), Some(now + ttl / 3 + ttl));
        r.handle_timeout(now + ttl / 3 + ttl);
        assert_eq!(r.bindings().count(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_gateway_vouches_for_its_stations_media_ends() {
        let (mut r, now) = two_online();
        let (fa2, fb2) = ("a2".repeat(32), "b2".repeat(32));
        let media = |fp: &str, port| MediaEnd {
            fp: fp.to_string(),
            addrs: vec![addr(port)],
        };
        r.handle_call_for(
            now,
            1,
            1,
            "ボブ",
            None,
            vec![addr(6001)],
            0,
            Placing {
                media: Some(media(&fa2, 6001)),
                handoff: Some(42),
                check_key: Some("k".into()),
            },
        );
        let acts = drain(&mut r);
        let call = match &sent(&acts, 2)[0] {
            DirMsg::Ring {
                call,
                caller_fp,
                caller_candidates,
                handoff,
                ..
            } => {
                // The hand-off the caller follows reaches the callee.
                assert_eq!(*handoff, Some(42));
                // The station's fingerprint and the forwarder port, not
                // the gateway's own.
                assert_eq!(caller_fp, &fa2);
                assert_eq!(caller_candidates, &vec!["127.0.0.1:6001".to_string()]);
                *call
            }
            other => panic!("{other:?}"),
        };
        r.handle_answer_for(now, 2, 2, call, "tok".into(), Some(media(&fb2, 6002)));
        let acts = drain(&mut r);
        let DirMsg::Connect { plan, .. } = &sent(&acts, 1)[0] else {
            panic!("{acts:?}")
        };
        assert!(plan.dial && plan.peer_fp == fb2);
        assert_eq!(plan.peer_candidates, vec!["127.0.0.1:6002".to_string()]);
        let DirMsg::Connect { plan, .. } = &sent(&acts, 2)[0] else {
            panic!("{acts:?}")
        };
        assert!(!plan.dial && plan.peer_fp == fa2);
        // The relay forwards between the vouched media ends' ports.
        r.handle_fallback(now, 1, 3, call);
        let acts = drain(&mut r);
        assert!(acts.contains(&Action::AllocateRelay {
            call,
            caller: addr(6001),
            callee: addr(6002),
        }));
    }

    /// Two terminals get the same check key while the callee rings, each
    /// with the other's candidates; a session that does not check, or a
    /// call for a vouched media end (a gateway's station), gets none.
    #[test]
    fn both_terminals_get_a_check_plan_while_it_rings() {
        let (mut r, now) = two_online();
        let placing = |key: &str| Placing {
            check_key: Some(key.into()),
            ..Placing::default()
        };
        let ring_checks = |acts: &[Action]| {
            let ring = match &sent(acts, 2)[0] {
                DirMsg::Ring { checks, .. } => checks.clone(),
                other => panic!("{other:?}"),
            };
            let ringing = match &sent(acts, 1)[0] {
                DirMsg::Ringing { checks, .. } => checks.clone(),
                other => panic!("{other:?}"),
            };
            (ring, ringing)
        };
        r.handle_call_for(now, 1, 7, "ボブ", None, vec![addr(5001)], 0, placing("k1"));
        let acts = drain(&mut r);
        assert_eq!(ring_checks(&acts), (None, None), "neither said it checks");
        r.allow_checks(1);
        r.allow_checks(2);
        r.handle_call_for(now, 1, 9, "ボブ", None, vec![addr(5001)], 0, placing("k2"));
        let acts = drain(&mut r);
        let (ring, ringing) = ring_checks(&acts);
        let (ring, ringing) = (
            ring.expect("callee checks"),
            ringing.expect("caller checks"),
        );
        assert_eq!((ring.key.as_str(), ringing.key.as_str()), ("k2", "k2"));
        assert_eq!(ring.candidates, strings(&[addr(5001), addr(1001)]));
        assert_eq!(ringing.candidates, strings(&[addr(5002), addr(1002)]));
        // A gateway's station calling: the media end is not the session.
        let media = MediaEnd {
            fp: "fs".into(),
            addrs: vec![addr(6001)],
        };
        r.handle_call_for(
            now,
            2,
            10,
            "아리랑",
            None,
            vec![addr(6001)],
            0,
            Placing {
                media: Some(media),
                check_key: Some("k3".into()),
                ..Placing::default()
            },
        );
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ring { checks: None, .. }
        ));
    }

    #[test]
    fn call_rings_with_the_asserted_number_and_connects_directly() {
        let (mut r, now) = two_online();
        // Alice tries to show Bob's number: refused.
        r.handle_call(now, 1, 7, "ボブ", Some("ボブ".into()), vec![], 0);
        let acts = drain(&mut r);
        assert!(sent(&acts, 2).is_empty());
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::NotYourNumber,
                ..
            }
        ));
        // She may pick her other number.
        r.handle_call(now, 1, 8, "ボブ", Some("2001".into()), vec![addr(5001)], 0);
        let acts = drain(&mut r);
        let call = match &sent(&acts, 2)[0] {
            DirMsg::Ring {
                call,
                from,
                caller_fp,
                caller_candidates,
                ..
            } => {
                assert_eq!(from, "2001");
                assert_eq!(caller_fp, "fa");
                assert_eq!(
                    caller_candidates,
                    &vec!["127.0.0.1:5001".to_string(), "127.0.0.1:1001".to_string()]
                );
                *call
            }
            other => panic!("{other:?}"),
        };
        assert!(matches!(&sent(&acts, 1)[0], DirMsg::Ringing { req: 8, .. }));
        // Only the callee may answer.
        r.handle_answer(now, 1, 9, call, "tok".into());
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::NotYourCall,
                ..
            }
        ));
        r.handle_answer(now, 2, 9, call, "tok".into());
        let acts = drain(&mut r);
        let DirMsg::Connect { req, plan, .. } = &sent(&acts, 2)[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(*req, Some(9));
        assert!(!plan.dial && plan.peer_fp == "fa" && plan.token == "tok" && plan.relay.is_none());
        let DirMsg::Connect { plan, .. } = &sent(&acts, 1)[0] else {
            panic!("{acts:?}")
        };
        assert!(plan.dial && plan.peer_fp == "fb");
        assert_eq!(
            plan.peer_candidates,
            vec!["127.0.0.1:5002".to_string(), "127.0.0.1:1002".to_string()]
        );
        assert!(!acts
            .iter()
            .any(|a| matches!(a, Action::AllocateRelay { .. })));
        // Default number when none is picked: the first registered one.
        r.handle_hangup(now, 2, call);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::Hangup,
                ..
            }
        ));
        r.handle_call(now, 1, 10, "ボブ", None, vec![], 0);
        assert!(
            matches!(&sent(&drain(&mut r), 2)[0], DirMsg::Ring { from, .. } if from == "아리랑")
        );
    }

    #[test]
    fn unreachable_unknown_and_forwarding() {
        let (mut r, now) = two_online();
        r.handle_call(now, 1, 1, "carol", None, vec![], 0);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::Unreachable,
                mail: true,
                ..
            }
        ));
        r.handle_call(now, 1, 2, "nobody", None, vec![], 0);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::UnknownNumber,
                ..
            }
        ));
        // carol is offline and forwards to Bob when unregistered.
        r.set_forwards(
            "carol",
            vec![ForwardRule::new(ForwardWhen::Unregistered, "ボブ")],
        );
        r.handle_call(now, 1, 3, "carol", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Ring { number, dialled, via, .. }
            if number == "ボブ" && dialled == "carol" && via == &vec!["carol".to_string()])
        );
        // A loop is refused with the chain.
        r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Always, "carol")]);
        r.set_forwards("carol", vec![ForwardRule::new(ForwardWhen::Always, "ボブ")]);
        r.handle_call(now, 1, 4, "carol", None, vec![], 0);
        match &sent(&drain(&mut r), 1)[0] {
            DirMsg::CallFailed { code, message, .. } => {
                assert_eq!(*code, ErrorCode::ForwardLoop);
                assert!(message.contains("carol -> ボブ -> carol"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Redirect hops are capped.
        r.handle_call(now, 1, 5, "아리랑", None, vec![], MAX_HOPS as u8);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::TooManyHops,
                ..
            }
        ));
        // Calling a number this same endpoint registered.
        r.handle_call(now, 1, 6, "2001", None, vec![], 0);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::SelfCall,
                ..
            }
        ));
    }

    #[test]
    fn decline_redirect_timeout_and_peer_loss() {
        let (mut r, now) = two_online();
        let ring = |r: &mut Router, req| {
            r.handle_call(now, 1, req, "ボブ", None, vec![], 0);
            let acts = drain(r);
            match &sent(&acts, 1)[0] {
                DirMsg::Ringing { call, .. } => *call,
                other => panic!("{other:?}"),
            }
        };
        let c = ring(&mut r, 1);
        r.handle_decline(now, 2, 5, c, true);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::Busy,
                ..
            }
        ));
        assert!(matches!(&sent(&acts, 2)[0], DirMsg::Ok { req: 5 }));
        let c = ring(&mut r, 2);
        r.handle_redirect(now, 2, 6, c, "carol");
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, .. } if number == "carol" && by == "ボブ")
        );
        assert!(r.call(c).is_none());
        let c = ring(&mut r, 3);
        r.handle_timeout(now + r.config().ring_timeout);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::NoAnswer,
                ..
            }
        ));
        assert!(matches!(
            &sent(&acts, 2)[0],
            DirMsg::Ended {
                reason: EndReason::NoAnswer,
                ..
            }
        ));
        assert!(r.call(c).is_none());
        let c = ring(&mut r, 4);
        r.handle_session_down(now, 2);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::PeerLost,
                ..
            }
        ));
        assert!(r.call(c).is_none());
        assert!(r.binding("ボブ").is_none());
    }

    #[test]
    fn busy_no_answer_and_do_not_disturb_forward_the_caller() {
        let (mut r, now) = two_online();
        let ring = |r: &mut Router, req| {
            r.handle_call(now, 1, req, "ボブ", None, vec![], 0);
            let acts = drain(r);
            match &sent(&acts, 1)[0] {
                DirMsg::Ringing { call, .. } => *call,
                other => panic!("{other:?}"),
            }
        };
        // Busy: Bob declines as busy and the caller is sent on to carol.
        r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Busy, "carol")]);
        let c = ring(&mut r, 1);
        r.handle_decline(now, 2, 5, c, false);
        let acts = drain(&mut r);
        assert!(
            matches!(
                &sent(&acts, 1)[0],
                DirMsg::Ended {
                    reason: EndReason::Rejected,
                    ..
                }
            ),
            "a plain decline is not busy: {acts:?}"
        );
        let c = ring(&mut r, 2);
        r.handle_decline(now, 2, 6, c, true);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, .. } if number == "carol" && by == "ボブ"),
            "{acts:?}"
        );
        assert_eq!(sent(&acts, 2), vec![DirMsg::Ok { req: 6 }]);
        assert!(r.call(c).is_none());
        // A busy rule does not apply to a call that times out.
        let c = ring(&mut r, 3);
        r.handle_timeout(now + r.config().ring_timeout);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::NoAnswer,
                ..
            }
        ));
        assert!(r.call(c).is_none());

        // No answer: at the ring timeout the callee stops ringing and the
        // caller is sent on.
        r.set_forwards(
            "ボブ",
            vec![ForwardRule::new(ForwardWhen::NoAnswer, "2001")],
        );
        let c = ring(&mut r, 4);
        r.handle_timeout(now + r.config().ring_timeout);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "2001"),
            "{acts:?}"
        );
        assert!(matches!(
            &sent(&acts, 2)[0],
            DirMsg::Ended {
                reason: EndReason::NoAnswer,
                ..
            }
        ));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Finished {
                reason: EndReason::Redirected,
                ..
            }
        )));
        assert!(r.call(c).is_none());

        // Do-not-disturb: nothing rings; the caller is offered mail.
        r.set_forwards("ボブ", vec![]);
        r.set_dnd("ボブ", true);
        r.handle_call(now, 1, 7, "ボブ", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(sent(&acts, 2).is_empty(), "{acts:?}");
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::CallFailed { code: ErrorCode::Unreachable, mail: true, message, .. } if message.contains("disturb")),
            "{acts:?}"
        );
        // ... or, with a busy rule, goes where it says at once.
        r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Busy, "아리랑")]);
        r.set_dnd("carol", true);
        r.handle_call(now, 2, 8, "carol", None, vec![], 0);
        assert!(matches!(
            &sent(&drain(&mut r), 2)[0],
            DirMsg::CallFailed { mail: true, .. }
        ));
        r.handle_call(now, 2, 9, "ボブ", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Ring { number, via, .. } if number == "아리랑" && via == &vec!["ボブ".to_string()]),
            "{acts:?}"
        );
        r.set_dnd("ボブ", false);
        assert!(!r.number("ボブ").is_some_and(|n| n.dnd));
    }

    fn records(actions: &[Action]) -> Vec<CallRecord> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(r) => Some((**r).clone()),
                _ => None,
            })
            .collect()
    }

    /// Busy, no-answer and offline rules of one number at once, each
    /// followed when its case comes, `always` before all of them while it
    /// is on and not at all when off; on the virtual clock.
    #[test]
    fn several_rules_of_one_number_each_followed() {
        let (mut r, now) = two_online();
        let rules = |always_on: bool| {
            vec![
                ForwardRule {
                    on: always_on,
                    ..ForwardRule::new(ForwardWhen::Always, "아리랑")
                },
                ForwardRule::new(ForwardWhen::Busy, "carol"),
                ForwardRule::new(ForwardWhen::NoAnswer, "2001"),
                ForwardRule::new(ForwardWhen::Unregistered, "carol"),
            ]
        };
        r.set_forwards("ボブ", rules(false));
        let ring = |r: &mut Router, req, at| {
            r.handle_call(at, 1, req, "ボブ", None, vec![], 0);
            let acts = drain(r);
            match &sent(&acts, 1)[0] {
                DirMsg::Ringing { call, number, .. } if number == "ボブ" => *call,
                other => panic!("{other:?}"),
            }
        };
        // Busy: carol.
        let c = ring(&mut r, 1, now);
        r.handle_decline(now, 2, 2, c, true);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "carol"),
            "{acts:?}"
        );
        // No answer: 2001, after the ring timeout and not before.
        let at = now + Duration::from_secs(1);
        let c = ring(&mut r, 3, at);
        r.handle_timeout(at + r.config().ring_timeout - Duration::from_millis(1));
        assert!(drain(&mut r).is_empty());
        assert!(r.call(c).is_some());
        r.handle_timeout(at + r.config().ring_timeout);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "2001"),
            "{acts:?}"
        );
        let rec = &records(&acts)[0];
        assert_eq!(rec.outcome, CallOutcome::Forwarded);
        assert_eq!(rec.forwarded_to.as_deref(), Some("2001"));
        // Always, once on, comes before them all: nothing rings at Bob.
        r.set_forwards("ボブ", rules(true));
        r.handle_call(at, 2, 4, "ボブ", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Ring { number, via, .. } if number == "아리랑" && via == &vec!["ボブ".to_string()]),
            "{acts:?}"
        );
        // Offline: Bob's endpoint gone, the next call rings carol's
        // number (offline too here: the caller is offered mail there).
        r.set_forwards("ボブ", rules(false));
        r.handle_session_down(at, 2);
        drain(&mut r);
        r.handle_call(at, 1, 5, "ボブ", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::CallFailed { number, code: ErrorCode::Unreachable, .. } if number == "carol"),
            "{acts:?}"
        );
        let rec = &records(&acts)[0];
        assert_eq!(rec.outcome, CallOutcome::Offline);
        assert_eq!(
            rec.reached,
            Some(("carol".to_string(), "carol".to_string()))
        );
    }

    /// Every call comes out once as a record: answered with its length and
    /// path, declined, cancelled, unknown, offline, forwarded; each account
    /// involved gets its own entry, and nobody else.
    #[test]
    fn every_call_is_recorded_once_as_the_directory_saw_it() {
        let (mut r, now) = two_online();
        let place = |r: &mut Router, req, number: &str, at| {
            r.handle_call(at, 1, req, number, None, vec![], 0);
            let acts = drain(r);
            match &sent(&acts, 1)[0] {
                DirMsg::Ringing { call, .. } => Some(*call),
                _ => {
                    assert_eq!(records(&acts).len(), 1, "{acts:?}");
                    None
                }
            }
        };
        // Answered for 75 s, then hung up.
        let c = place(&mut r, 1, "ボブ", now).expect("rings");
        let at = now + Duration::from_secs(2);
        r.handle_answer(at, 2, 2, c, "tok".into());
        drain(&mut r);
        let end = at + Duration::from_secs(75);
        r.handle_hangup(end, 1, c);
        let acts = drain(&mut r);
        let recs = records(&acts);
        assert_eq!(recs.len(), 1, "{acts:?}");
        let rec = &recs[0];
        assert_eq!(rec.outcome, CallOutcome::Answered);
        assert_eq!(rec.relayed, Some(false));
        assert_eq!(
            (rec.from.as_str(), rec.from_account.as_str()),
            ("아리랑", "alice")
        );
        // The wall clock: the call started 77 s before `end`.
        let entries = rec.entries(end, 1_000_000);
        assert_eq!(entries.len(), 2);
        let (out, inc) = (&entries[0], &entries[1]);
        assert!(out.outgoing && out.account == "alice" && out.other_number == "ボブ");
        assert!(!inc.outgoing && inc.account == "bob" && inc.other_number == "아리랑");
        assert_eq!(inc.own_number, "ボブ");
        for e in &entries {
            assert_eq!(e.started_ms, 1_000_000 - 77_000);
            assert_eq!(e.duration_ms, Some(75_000));
            assert!(e.answered);
        }
        // Declined, and cancelled by the caller: no length.
        let c = place(&mut r, 3, "ボブ", end).expect("rings");
        r.handle_decline(end, 2, 4, c, false);
        assert_eq!(records(&drain(&mut r))[0].outcome, CallOutcome::Declined);
        let c = place(&mut r, 5, "ボブ", end).expect("rings");
        r.handle_hangup(end, 1, c);
        let rec = &records(&drain(&mut r))[0];
        assert_eq!(rec.outcome, CallOutcome::Cancelled);
        assert!(rec.entries(end, 0).iter().all(|e| e.duration_ms.is_none()));
        // Unknown: only the caller's entry.
        assert!(place(&mut r, 6, "nobody", end).is_none());
        r.handle_call(end, 1, 7, "nobody", None, vec![], 0);
        let rec = &records(&drain(&mut r))[0];
        assert_eq!(rec.outcome, CallOutcome::UnknownNumber);
        assert_eq!(rec.entries(end, 0).len(), 1);
        // Offline carol: her entry says so.
        r.handle_call(end, 1, 8, "carol", None, vec![], 0);
        let rec = &records(&drain(&mut r))[0];
        assert_eq!(rec.outcome, CallOutcome::Offline);
        let es = rec.entries(end, 0);
        assert_eq!(es.len(), 2);
        assert_eq!(es[1].account, "carol");
        // Server-side forwarding from carol (always) to Bob: Alice sees
        // her call to carol forwarded to Bob, carol sees it forwarded,
        // Bob sees it ring him.
        r.set_forwards("carol", vec![ForwardRule::new(ForwardWhen::Always, "ボブ")]);
        let c = place(&mut r, 9, "carol", end).expect("rings at Bob");
        r.handle_decline(end, 2, 10, c, true);
        let rec = &records(&drain(&mut r))[0];
        assert_eq!(rec.outcome, CallOutcome::Busy);
        let es = rec.entries(end, 0);
        let accounts: Vec<&str> = es.iter().map(|e| e.account.as_str()).collect();
        assert_eq!(accounts, ["alice", "bob", "carol"]);
        assert_eq!(es[0].forwarded_to.as_deref(), Some("ボブ"));
        assert_eq!(es[2].outcome, CallOutcome::Forwarded);
        assert_eq!(es[2].other_number, "아리랑");
        // A lost connection ends an answered call: still recorded, once.
        r.set_forwards("carol", vec![]);
        let c = place(&mut r, 11, "ボブ", end).expect("rings");
        r.handle_answer(end, 2, 12, c, "tok".into());
        drain(&mut r);
        r.handle_session_down(end + Duration::from_secs(3), 2);
        let recs = records(&drain(&mut r));
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].outcome, CallOutcome::Answered);
        assert_eq!(recs[0].entries(end, 0)[0].duration_ms, Some(3_000));
    }

    #[test]
    fn relay_rule_and_fallback() {
        let (mut r, now) = two_online();
        let answered = |r: &mut Router, req| {
            r.handle_call(now, 1, req, "ボブ", None, vec![], 0);
            let acts = drain(r);
            let DirMsg::Ringing { call, .. } = &sent(&acts, 1)[0] else {
                panic!()
            };
            let call = *call;
            r.handle_answer(now, 2, req, call, "t".into());
            (call, drain(r))
        };
        // direct-then-relay: direct plans, then a fallback allocates.
        let (c, acts) = answered(&mut r, 1);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Connect { plan, .. } if plan.policy == DirectPolicy::DirectThenRelay && plan.fallback_after_ms == 3000)
        );
        r.handle_fallback(now, 2, 3, c);
        assert!(matches!(
            &sent(&drain(&mut r), 2)[0],
            DirMsg::Error {
                code: ErrorCode::NotYourCall,
                ..
            }
        ));
        r.handle_fallback(now, 1, 4, c);
        let acts = drain(&mut r);
        assert_eq!(
            acts,
            vec![Action::AllocateRelay {
                call: c,
                caller: addr(1001),
                callee: addr(1002)
            }]
        );
        r.handle_relay_ready(now, c, addr(40001), addr(40002));
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::RelayReady { req: Some(4), relay, .. } if relay == "127.0.0.1:40001")
        );
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::RelayReady { req: None, relay, .. } if relay == "127.0.0.1:40002")
        );
        r.handle_hangup(now, 1, c);
        assert!(drain(&mut r).contains(&Action::ReleaseRelay { call: c }));

        // relay: nothing is sent until the forwarder is up.
        r.reconfigure(Config {
            policy: DirectPolicy::Relay,
            ..Config::default()
        });
        let (c, acts) = answered(&mut r, 5);
        assert_eq!(acts.len(), 1, "{acts:?}");
        r.handle_relay_ready(now, c, addr(40003), addr(40004));
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Connect { plan, .. } if plan.relay.as_deref() == Some("127.0.0.1:40003"))
        );
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Connect { plan, .. } if plan.relay.as_deref() == Some("127.0.0.1:40004"))
        );

        // direct: no fallback.
        r.reconfigure(Config {
            policy: DirectPolicy::Direct,
            ..Config::default()
        });
        let (c, _) = answered(&mut r, 6);
        r.handle_fallback(now, 1, 7, c);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::NoRelay,
                ..
            }
        ));

        // A relay that fails to come up ends a relay-only call.
        r.reconfigure(Config {
            policy: DirectPolicy::Relay,
            ..Config::default()
        });
        let (c, _) = answered(&mut r, 8);
        r.handle_relay_failed(now, c, "no ports");
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::MediaFailed,
                ..
            }
        ));
    }

    #[test]
    fn lookup_tells_the_callee_who_comes() {
        let (mut r, now) = two_online();
        r.handle_lookup(now, 1, 3, "ボブ", "tk".into());
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Expect { from, caller_fp, token, .. } if from == "아리랑" && caller_fp == "fa" && token == "tk")
        );
        // And where the caller's connection comes from, to open its NAT.
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Expect { caller_candidates, .. }
                if caller_candidates == &vec![addr(5001).to_string(), addr(1001).to_string()]),
            "{acts:?}"
        );
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Found { fingerprint, candidates, .. } if fingerprint == "fb" && candidates.len() == 2)
        );
        r.handle_lookup(now, 1, 4, "carol", "tk".into());
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::Error {
                code: ErrorCode::Unreachable,
                ..
            }
        ));
    }

    #[test]
    fn a_second_registration_displaces_the_first_and_migration_updates() {
        let (mut r, now) = two_online();
        r.handle_session_up(3, "fa2".into(), addr(1003));
        r.handle_login(now, 3, "alice", vec!["아리랑".into(), "2001".into()]);
        r.handle_register(now, 3, 1, vec!["2001".into()], vec![]);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Unbound { numbers, .. } if numbers == &vec!["2001".to_string()])
        );
        assert_eq!(r.binding("2001").map(|b| b.session), Some(3));
        assert_eq!(r.binding("아리랑").map(|b| b.session), Some(1));
        r.handle_session_moved(now, 1, addr(2222));
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Observed { addr } if addr == "127.0.0.1:2222")
        );
        assert_eq!(r.binding("아리랑").map(|b| b.observed), Some(addr(2222)));
        assert_eq!(r.registered_sessions_of("alice"), vec![1, 3]);
    }

    #[test]
    fn office_number_with_extension_rings_the_office() {
        let (mut r, now) = two_online();
        r.handle_call(now, 1, 1, "ボブ/202", None, vec![], 0);
        let acts = drain(&mut r);
        assert!(
            matches!(&sent(&acts, 2)[0], DirMsg::Ring { number, ext, dialled, .. }
            if number == "ボブ" && ext.as_deref() == Some("202") && dialled == "ボブ/202"),
            "{acts:?}"
        );
        r.handle_call(now, 1, 2, "nobody/202", None, vec![], 0);
        assert!(matches!(
            &sent(&drain(&mut r), 1)[0],
            DirMsg::CallFailed {
                code: ErrorCode::UnknownNumber,
                ..
            }
        ));
        r.handle_lookup(now, 1, 3, "ボブ/7", "t".into());
        assert!(
            matches!(&sent(&drain(&mut r), 2)[0], DirMsg::Expect { ext, .. } if ext.as_deref() == Some("7"))
        );
    }

    #[test]
    fn shutdown_ends_everything() {
        let (mut r, now) = two_online();
        r.handle_call(now, 1, 1, "ボブ", None, vec![], 0);
        drain(&mut r);
        r.shutdown(now);
        let acts = drain(&mut r);
        assert!(matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::Shutdown,
                ..
            }
        ));
        assert!(sent(&acts, 2)
            .iter()
            .any(|m| matches!(m, DirMsg::GoingAway { .. })));
        assert_eq!(r.calls().count(), 0);
    }

    #[test]
    fn an_end_of_an_answered_call_hands_the_other_on() {
        let (mut r, now) = two_online();
        r.handle_call(now, 1, 1, "ボブ", None, vec![], 0);
        let call = match &sent(&drain(&mut r), 2)[0] {
            DirMsg::Ring { call, .. } => *call,
            other => panic!("{other:?}"),
        };
        // Not while it rings.
        r.handle_transfer(now, 2, 2, call, "carol", None);
        assert!(matches!(
            &sent(&drain(&mut r), 2)[0],
            DirMsg::Error {
                code: ErrorCode::BadCallState,
                ..
            }
        ));
        r.handle_answer(now, 2, 3, call, "t".into());
        drain(&mut r);
        // Not by a stranger.
        r.handle_session_up(3, "fc".into(), addr(1003));
        r.handle_transfer(now, 3, 4, call, "carol", None);
        assert!(matches!(
            &sent(&drain(&mut r), 3)[0],
            DirMsg::Error {
                code: ErrorCode::NotYourCall,
                ..
            }
        ));
        // Bob hands Alice on to carol: she is told, and the call is over.
        r.handle_transfer(now, 2, 5, call, "carol", Some(9));
        let acts = drain(&mut r);
        assert!(matches!(&sent(&acts, 2)[0], DirMsg::Ok { req: 5 }));
        assert!(
            matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, handoff: Some(9), .. } if number == "carol" && by == "ボブ")
        );
        assert!(r.call(call).is_none());
    }
}
