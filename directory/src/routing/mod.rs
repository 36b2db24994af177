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
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyline_proto::dir::{
    CallId, DirMsg, DirectPolicy, EndReason, ErrorCode, ForwardRule, ForwardWhen, ReqId,
};
use keyline_proto::number::Number;
use serde::{Deserialize, Serialize};

pub use crate::store::{CallEntry, CallOutcome};

mod bindings;
mod calls;
mod record;
mod remote;
#[cfg(test)]
mod remote_tests;
mod resolve;
#[cfg(test)]
mod tests;

pub use record::CallRecord;
pub use remote::{is_registration_message, RemoteBinding};
pub use resolve::{resolve, Resolved, RouteError};

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

/// An account's numbers in order (the first is the one its callees see),
/// one allocation shared by every session of the account: an account of
/// 500 numbers with 2,000 sessions holds its list once, not 2,000 times.
pub type AccountNumbers = Arc<Vec<String>>;

/// A connection as the router sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub fp: String,
    pub observed: SocketAddr,
    pub account: Option<String>,
    /// The account's numbers, default caller number first; for a remote
    /// session, the numbers bound to it here. An account's sessions on
    /// this node share one list.
    pub numbers: AccountNumbers,
    /// Whether the endpoint runs connectivity checks (a terminal).
    pub checks: bool,
    /// The cluster node that holds the connection, when it is another
    /// node's ([`Router::handle_remote_bound`]); None for this node's own.
    pub remote: Option<String>,
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
    /// Held by another node of the cluster: told by that node, never
    /// announced here ([`Notice`]s are about this node's own bindings).
    pub remote: bool,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Default, Serialize, Deserialize)]
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

/// What a session asks of the router, parsed at the edge: numbers are
/// canonical [`Number`]s, addresses are parsed, and the random tokens the
/// request needs are drawn by the shell. The connection answers malformed
/// requests itself (an invalid number, a bad address), so every request
/// that reaches the router is well formed; whether it is allowed is the
/// router's to decide. For [`Router::handle_request`]. Serialisable: a
/// cluster node passes what its endpoint asks about a call to the node that
/// routes the call.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Bind `numbers` (all of the account's when empty) to the session.
    Register {
        req: ReqId,
        numbers: Vec<Number>,
        own: Vec<SocketAddr>,
    },
    /// Drop the session's bindings of `numbers` (all when empty).
    Unregister { req: ReqId, numbers: Vec<Number> },
    /// Look-up only (claim 3), with the token both ends will use.
    Lookup {
        req: ReqId,
        number: Number,
        token: String,
    },
    /// Place a call.
    Call {
        req: ReqId,
        number: Number,
        from: Option<Number>,
        own: Vec<SocketAddr>,
        hops: u8,
        placing: Placing,
    },
    /// Answer a ringing call, with the call's token.
    Answer {
        req: ReqId,
        call: CallId,
        token: String,
        media: Option<MediaEnd>,
    },
    /// Refuse a ringing call (`busy`: the callee is busy).
    Decline {
        req: ReqId,
        call: CallId,
        busy: bool,
    },
    /// Send the caller of a ringing call on to `number` (claim 7).
    Redirect {
        req: ReqId,
        call: CallId,
        number: Number,
    },
    /// Hand the other end of an answered call on to `number` (claim 5).
    Transfer {
        req: ReqId,
        call: CallId,
        number: Number,
        handoff: Option<u64>,
    },
    /// Either end hangs up.
    Hangup { call: CallId },
    /// The ends could not reach each other directly: relay the call.
    Fallback { req: ReqId, call: CallId },
}

impl Request {
    /// The call a request is about, for those about a call in progress.
    pub fn call(&self) -> Option<CallId> {
        match self {
            Request::Answer { call, .. }
            | Request::Decline { call, .. }
            | Request::Redirect { call, .. }
            | Request::Transfer { call, .. }
            | Request::Hangup { call }
            | Request::Fallback { call, .. } => Some(*call),
            Request::Register { .. }
            | Request::Unregister { .. }
            | Request::Lookup { .. }
            | Request::Call { .. } => None,
        }
    }
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

    /// Number calls from `base` on (the next call is `base + 1`). Each
    /// node of a cluster draws its own base, so call ids are unique
    /// across the nodes that pass calls to each other. Bases stay well
    /// below 2^62: a call's id is its media flow id, a QUIC varint.
    pub fn set_call_base(&mut self, base: CallId) {
        self.next_call = self.next_call.max(base.saturating_add(1));
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

    /// `account`'s numbers are now `numbers`, in order (the first is the
    /// one its callees see): its sessions on this node call from the new
    /// order from the next call on, as if they had logged in again.
    /// Numbers the account no longer owns in the number table (a removal
    /// that overtook this news) are left out.
    pub fn set_account_numbers(&mut self, account: &str, numbers: &[String]) {
        let owned: AccountNumbers = Arc::new(
            numbers
                .iter()
                .filter(|n| self.numbers.get(*n).is_some_and(|ni| ni.account == account))
                .cloned()
                .collect(),
        );
        for s in self.sessions.values_mut() {
            if s.remote.is_none() && s.account.as_deref() == Some(account) {
                s.numbers = owned.clone();
            }
        }
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
            if b.remote != s.remote.is_some() {
                return Err(format!(
                    "binding of {number}: remote {} on a session whose node is {:?}",
                    b.remote, s.remote
                ));
            }
            if s.account.as_deref() != Some(b.account.as_str()) {
                return Err(format!(
                    "binding of {number} for account {} on session {} logged in as {:?}",
                    b.account, b.session, s.account
                ));
            }
            // Another node's binding is as that node saw the number table;
            // the two tables meet again at the next reload.
            if !b.remote
                && self.numbers.get(number).map(|ni| ni.account.as_str()) != Some(&b.account)
            {
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
