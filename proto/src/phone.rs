//! The sans-IO phone core: what one station (an office station or an
//! internet terminal) does with its calls.
//!
//! It owns the call in progress and an attended transfer's consultation
//! call, their typed [`CallState`], the requests waiting for the link's
//! answer, and every deadline (auto-answer, the media deadline, a
//! look-up-only call's ring timeout, request time-outs). It does no I/O
//! and reads no clock: each input carries `now`; effects come out of
//! [`Phone::poll_output`]; [`Phone::poll_timeout`] says when
//! [`Phone::handle_timeout`] must next be called. Drive it as quinn-proto
//! and str0m are driven: feed an input, then drain outputs until `None`.
//!
//! The link (the office gateway, or the internet directory) sits behind
//! [`LinkIn`] and [`LinkOut`]; each daemon mode is a thin adapter that
//! turns its wire messages into these and carries out the outputs (QUIC
//! media connections, sounds, files). The media plan is opaque here (`P`):
//! the core only hands it back in [`Output::StartMedia`].
//!
//! Invariants (held by the property test below): media is started only
//! for a call that exists; a call that has ended never has media again; a
//! call that waits on someone else (dialling, ringing in, answered without
//! media) always has a deadline, so no call is stuck; every command gets
//! exactly one reply.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::msg::CallId;

/// A request id on the link, and the id of a control command (the adapter
/// routes a [`Output::Reply`] back to whoever asked).
pub type Req = u64;

/// The station's own, local handle of a call (the link's id may come later
/// and change on a transfer).
pub type CallKey = u64;

/// Which link the station talks through; the few places they differ say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// An office station: the gateway switches the calls, offers hold,
    /// transfer and consultation, and losing it ends every call.
    Office,
    /// An internet terminal: the directory sets calls up; a connected call
    /// outlives the directory connection (its media is end to end).
    Terminal,
}

impl Flavor {
    fn link_name(self) -> &'static str {
        match self {
            Flavor::Office => "the gateway",
            Flavor::Terminal => "the directory",
        }
    }
}

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct Config {
    pub flavor: Flavor,
    /// Answer a ringing call by itself after this long.
    pub auto_answer: Option<Duration>,
    /// An answered call whose media is not up by then is given up.
    pub media_deadline: Duration,
    /// How long the link has to answer a request.
    pub request_timeout: Duration,
    /// How long an incoming look-up-only call rings.
    pub lookup_ring_timeout: Duration,
    /// A call that rings under the link's own ring timeout is given up
    /// after this long if the link never says how it went (a guard).
    pub ring_guard: Duration,
}

impl Config {
    pub fn new(flavor: Flavor) -> Config {
        Config {
            flavor,
            auto_answer: None,
            media_deadline: Duration::from_secs(15),
            request_timeout: match flavor {
                Flavor::Office => Duration::from_secs(10),
                Flavor::Terminal => Duration::from_secs(20),
            },
            lookup_ring_timeout: Duration::from_secs(30),
            ring_guard: Duration::from_secs(600),
        }
    }
}

/// Which end placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Where a call stands, as `status` and events show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Outgoing, asked of the link, not ringing yet.
    Dialing,
    /// Outgoing, the far end rings.
    Ringing,
    /// Incoming, ringing here.
    Alerting,
    /// Incoming, answered here, waiting for the link's go-ahead.
    Answering,
    /// Answered; the media connection is being made.
    Connecting,
    /// Media flows.
    Connected,
    /// A blind transfer of this call is under way.
    Transferring,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Dialing => "dialing",
            CallState::Ringing => "ringing",
            CallState::Alerting => "alerting",
            CallState::Answering => "answering",
            CallState::Connecting => "connecting",
            CallState::Connected => "connected",
            CallState::Transferring => "transferring",
        }
    }
}

/// One call as the station knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// The station's own handle.
    pub key: CallKey,
    /// The link's id (an outgoing call gets it when it rings; a
    /// look-up-only call never has one).
    pub id: Option<CallId>,
    pub peer: String,
    pub peer_name: Option<String>,
    pub direction: Direction,
    pub state: CallState,
    /// Our number that rang (incoming calls through the directory).
    pub number: Option<String>,
    /// Forwards the call went through.
    pub via: Vec<String>,
    /// Numbers an outgoing call was redirected from.
    pub redirected_from: Vec<String>,
    /// A look-up-only call (claim 3): no link call id.
    pub lookup: bool,
    /// Media runs through a forwarder or relay.
    pub relayed: bool,
    /// This end holds the call (the other end hears music).
    pub on_hold: bool,
    /// The other end holds the call.
    pub held_by_peer: bool,
    /// The consultation call of an attended transfer.
    pub consult: bool,
    #[serde(skip)]
    pub started: Instant,
    #[serde(skip)]
    pub ringing_at: Option<Instant>,
    #[serde(skip)]
    pub answered_at: Option<Instant>,
    #[serde(skip)]
    pub connected_at: Option<Instant>,
    /// The dial request of an outgoing call, until it is answered.
    #[serde(skip)]
    req: Option<Req>,
    /// When this call gives up waiting (see the module's invariants).
    #[serde(skip)]
    deadline: Option<(Instant, Deadline)>,
}

impl Call {
    fn new(key: CallKey, now: Instant, peer: String, direction: Direction) -> Call {
        Call {
            key,
            id: None,
            peer,
            peer_name: None,
            direction,
            state: match direction {
                Direction::In => CallState::Alerting,
                Direction::Out => CallState::Dialing,
            },
            number: None,
            via: Vec::new(),
            redirected_from: Vec::new(),
            lookup: false,
            relayed: false,
            on_hold: false,
            held_by_peer: false,
            consult: false,
            started: now,
            ringing_at: None,
            answered_at: None,
            connected_at: None,
            req: None,
            deadline: None,
        }
    }

    /// The link's id for hang-ups: none for a look-up-only call.
    fn link_id(&self) -> Option<CallId> {
        self.id.filter(|_| !self.lookup)
    }

    /// Whether this call waits on someone else, and so must have a
    /// deadline (the invariant [`Phone::check_invariants`] checks).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.state,
            CallState::Dialing
                | CallState::Ringing
                | CallState::Alerting
                | CallState::Answering
                | CallState::Connecting
                | CallState::Transferring
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Answer by ourselves (auto-answer).
    AutoAnswer,
    /// An incoming look-up-only call rang out.
    LookupRing,
    /// The media did not come up in time.
    Media,
    /// The link never answered the dial (or the ring, or the answer).
    Link,
}

/// A user's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Dial {
        number: String,
        lookup: bool,
    },
    Answer,
    /// Hang up, cancel or decline the call in progress.
    Hangup,
    Hold,
    Resume,
    /// Blind transfer (or, for a terminal, hand-off) of the connected call.
    Transfer {
        target: String,
    },
    /// Attended transfer: hold the call and call `target` first.
    Consult {
        target: String,
    },
    ConsultComplete,
    ConsultCancel,
}

/// What a command achieved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A call was placed or answered, or rings.
    Call {
        call: Option<CallId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        callee: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<CallState>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        lookup: bool,
    },
    /// A call ringing elsewhere was picked up (`*8`).
    PickedUp {
        call: CallId,
        picked_up_from: String,
    },
    /// A feature code did its work.
    Feature {
        feature: String,
    },
    Transferring {
        call: CallId,
        transferring_to: String,
    },
    Hold {
        call: CallId,
        on_hold: bool,
    },
    Done {},
}

/// What the link tells the station.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkIn<P> {
    /// Our outgoing call `req` (or consultation) rings at `callee`.
    Ringing {
        req: Req,
        call: CallId,
        callee: String,
        via: Vec<String>,
    },
    /// Our outgoing call `req` was sent on from `from` to `to`.
    Redirected { req: Req, from: String, to: String },
    /// The callee of a look-up-only call `req` was found; its media is to
    /// be connected with `plan` (it rings by itself).
    Found {
        req: Req,
        callee: String,
        via: Vec<String>,
        plan: P,
    },
    /// Our request `req` failed. `ended`: how the call ended, for its
    /// record.
    Failed {
        req: Req,
        message: String,
        ended: String,
    },
    /// A feature code `req` did its work.
    Feature { req: Req, message: String },
    /// The call `req` dialled (`*8`) picked up `call`, ringing elsewhere.
    PickedUp {
        req: Req,
        call: CallId,
        from: String,
    },
    /// A call rings here.
    Incoming {
        call: CallId,
        from: String,
        from_name: Option<String>,
        number: Option<String>,
        via: Vec<String>,
    },
    /// A look-up-only caller will connect straight to us with `plan`.
    IncomingLookup {
        from: String,
        number: String,
        plan: P,
    },
    /// `call` was answered (by the far end, or our answer was taken):
    /// connect its media with `plan`. `peer`: who answered, if it differs.
    Answered {
        /// The dial request, when the call is ours (a terminal's dial is
        /// answered before its ringing may be reported).
        req: Option<Req>,
        call: CallId,
        plan: P,
        relayed: bool,
        peer: Option<String>,
    },
    /// Our answer of `call` was refused.
    AnswerFailed { call: CallId, message: String },
    /// `call` ended; `transferred`: it was handed on by us.
    Ended {
        call: CallId,
        reason: String,
        transferred: bool,
    },
    /// The other end put `call` on hold, or took it off.
    Held { call: CallId, on: bool },
    /// An unanswered outgoing `call` was forwarded to `to`.
    Forwarded { call: CallId, to: String },
    /// The far end handed `call` on to `number` (claim 5): we call it
    /// ourselves.
    HandedOn {
        call: CallId,
        number: String,
        handoff: Option<u64>,
    },
    /// The transfer `req` of `call` is under way.
    Transferring { req: Req, call: CallId, to: String },
    /// The transfer `req` of `call` failed; the call is back.
    TransferFailed {
        req: Req,
        call: CallId,
        message: String,
    },
    /// `old` goes on as `new` with `peer` (a transfer completed).
    Replaced {
        old: CallId,
        new: CallId,
        peer: String,
    },
    /// `call`'s media goes through the link's relay.
    Relayed { call: CallId },
    /// The link is gone.
    Down { reason: String },
}

/// What the station tells the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOut {
    Dial {
        req: Req,
        number: String,
        handoff: Option<u64>,
    },
    /// Ask only where `number` is (look-up-only call).
    Lookup {
        req: Req,
        number: String,
    },
    /// Give up the outgoing call `req` (and `call`, if it has an id).
    Cancel {
        req: Req,
        call: Option<CallId>,
    },
    Answer {
        call: CallId,
    },
    Reject {
        call: CallId,
    },
    /// Refuse a call that rings while we are in another.
    Busy {
        call: CallId,
    },
    Hangup {
        call: CallId,
    },
    Hold {
        call: CallId,
        on: bool,
    },
    Transfer {
        req: Req,
        call: CallId,
        target: String,
    },
    Consult {
        req: Req,
        call: CallId,
        target: String,
    },
    ConsultComplete {
        req: Req,
    },
    /// Take the held connections of the ringing look-up-only call `key`.
    AcceptLookup {
        key: CallKey,
    },
    /// Close the held connections of look-up-only call `key` unanswered.
    DeclineLookup {
        key: CallKey,
        why: LookupRefusal,
    },
}

/// Why a look-up-only call's held connection is closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupRefusal {
    Declined,
    NoAnswer,
}

/// The station's media for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaIn {
    /// Media flows for `key` (`relayed`: through a relay).
    Up { key: CallKey, relayed: bool },
    /// The media of `key` could not be made. `ended`: how the call ended
    /// when the reason is known (declined, busy), else media failure.
    Failed {
        key: CallKey,
        why: String,
        ended: Option<String>,
    },
    /// The media connection of `key` closed (`by_peer`: the other end
    /// closed it, which is its hang-up).
    Closed { key: CallKey, by_peer: bool },
}

/// Sounds the station makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sound {
    Ring,
    Ringback,
    Silence,
}

/// What happened, for subscribers of the control API.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A call appeared or changed (state, peer, hold, path).
    Call { call: Call },
    /// A call ended.
    CallEnded { call: Call, reason: String },
}

/// An effect for the adapter to carry out.
#[derive(Debug, Clone)]
pub enum Output<P> {
    Send(LinkOut),
    /// The answer to command `ctl`.
    Reply {
        ctl: Req,
        result: Result<Reply, String>,
    },
    /// Make the media connection of `key` (dial or await it, as `plan`
    /// says); report with [`MediaIn`].
    StartMedia {
        key: CallKey,
        call: CallId,
        plan: P,
    },
    /// Drop the media of `key` (the call goes on, or is over).
    StopMedia {
        key: CallKey,
    },
    /// A look-up-only caller (with this plan) we cannot take now: refuse
    /// its connection as busy when it comes.
    RefuseLookup {
        plan: P,
    },
    /// This end holds `key` (play hold music, mute playout) or not.
    LocalHold {
        key: CallKey,
        on: bool,
    },
    Sound(Sound),
    /// Call `key` ended; the adapter finishes its recording and keeps
    /// its record. (`StopMedia` for it precedes this.)
    Ended {
        call: Call,
        reason: String,
    },
    Event(Event),
}

/// A request waiting for the link's answer.
#[derive(Debug, Clone)]
struct Pending {
    ctl: Option<Req>,
    kind: PendingKind,
    /// Put before a refusal's reason ("cannot call 202").
    what: String,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingKind {
    Dial,
    Consult,
    Transfer,
    ConsultComplete,
}

/// The phone core of one station.
#[derive(Debug)]
pub struct Phone<P> {
    cfg: Config,
    call: Option<Call>,
    consult: Option<Call>,
    next_key: CallKey,
    next_req: Req,
    pending: BTreeMap<Req, Pending>,
    /// Outgoing requests given up before the link named their call: a late
    /// `Ringing` for one is hung up.
    abandoned: HashSet<Req>,
    out: VecDeque<Output<P>>,
    /// A plan kept for an incoming look-up-only call.
    lookup_plan: Option<P>,
}

impl<P: Clone> Phone<P> {
    pub fn new(cfg: Config) -> Phone<P> {
        Phone {
            cfg,
            call: None,
            consult: None,
            next_key: 0,
            next_req: 0,
            pending: BTreeMap::new(),
            abandoned: HashSet::new(),
            out: VecDeque::new(),
            lookup_plan: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The call in progress.
    pub fn call(&self) -> Option<&Call> {
        self.call.as_ref()
    }

    /// The consultation call of an attended transfer.
    pub fn consultation(&self) -> Option<&Call> {
        self.consult.as_ref()
    }

    /// The call (main or consultation) with this key.
    pub fn call_by_key(&self, key: CallKey) -> Option<&Call> {
        [&self.call, &self.consult]
            .into_iter()
            .flatten()
            .find(|c| c.key == key)
    }

    /// A fresh request id for a link request the adapter makes itself
    /// (texts, voicemail), from the same sequence as the core's.
    pub fn next_request(&mut self) -> Req {
        self.next_req += 1;
        self.next_req
    }

    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// When [`Phone::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = [&self.call, &self.consult]
            .into_iter()
            .flatten()
            .filter_map(|c| c.deadline.map(|(t, _)| t));
        let reqs = self.pending.values().map(|p| p.deadline);
        calls.chain(reqs).min()
    }

    // ---- commands ----

    /// A user's command; its answer comes out as [`Output::Reply`] with
    /// `ctl`, now or when the link answers.
    pub fn handle_command(&mut self, now: Instant, ctl: Req, cmd: Command) {
        let r = match cmd {
            Command::Dial { number, lookup } => self.dial(now, Some(ctl), number, lookup, None),
            Command::Answer => self.answer(now),
            Command::Hangup => self.hangup(now),
            Command::Hold => self.hold(true),
            Command::Resume => self.hold(false),
            Command::Transfer { target } => self.transfer(now, ctl, target),
            Command::Consult { target } => self.consult(now, ctl, target),
            Command::ConsultComplete => self.consult_complete(now, ctl),
            Command::ConsultCancel => self.consult_cancel(now),
        };
        match r {
            Ok(Some(reply)) => self.reply(ctl, Ok(reply)),
            Ok(None) => {} // answered when the link answers
            Err(e) => self.reply(ctl, Err(e)),
        }
    }

    fn reply(&mut self, ctl: Req, result: Result<Reply, String>) {
        self.out.push_back(Output::Reply { ctl, result });
    }

    fn send(&mut self, m: LinkOut) {
        self.out.push_back(Output::Send(m));
    }

    fn sound(&mut self, s: Sound) {
        self.out.push_back(Output::Sound(s));
    }

    fn changed(&mut self, key: CallKey) {
        if let Some(c) = self.call_by_key(key).cloned() {
            self.out.push_back(Output::Event(Event::Call { call: c }));
        }
    }

    fn new_key(&mut self) -> CallKey {
        self.next_key += 1;
        self.next_key
    }

    fn park(&mut self, now: Instant, req: Req, ctl: Option<Req>, kind: PendingKind, what: String) {
        let deadline = now + self.cfg.request_timeout;
        self.pending.insert(
            req,
            Pending {
                ctl,
                kind,
                what,
                deadline,
            },
        );
    }

    fn dial(
        &mut self,
        now: Instant,
        ctl: Option<Req>,
        number: String,
        lookup: bool,
        handoff: Option<u64>,
    ) -> Result<Option<Reply>, String> {
        let number = number.trim().to_string();
        if number.is_empty() {
            return Err("dial needs a number".into());
        }
        if self.call.is_some() {
            return Err("already in a call; hang up first".into());
        }
        if lookup && self.cfg.flavor == Flavor::Office {
            return Err("look-up-only calls (dial --lookup) are for standalone terminals (keyline-agent terminal); an office station calls through its gateway".into());
        }
        let req = self.next_request();
        let key = self.new_key();
        let mut c = Call::new(key, now, number.clone(), Direction::Out);
        c.lookup = lookup;
        c.req = Some(req);
        c.deadline = Some((now + self.cfg.request_timeout, Deadline::Link));
        self.call = Some(c);
        let what = if lookup {
            format!("cannot look up {number}")
        } else {
            format!("cannot call {number}")
        };
        self.park(now, req, ctl, PendingKind::Dial, what);
        self.send(if lookup {
            LinkOut::Lookup { req, number }
        } else {
            LinkOut::Dial {
                req,
                number,
                handoff,
            }
        });
        self.changed(key);
        Ok(None)
    }

    fn answer(&mut self, now: Instant) -> Result<Option<Reply>, String> {
        let media_deadline = now + self.cfg.media_deadline;
        let request_deadline = now + self.cfg.request_timeout;
        let Some(c) = self
            .call
            .as_mut()
            .filter(|c| c.direction == Direction::In && c.state == CallState::Alerting)
        else {
            return Err("no call is ringing".into());
        };
        let key = c.key;
        if c.lookup {
            c.state = CallState::Connecting;
            c.answered_at = Some(now);
            c.deadline = Some((media_deadline, Deadline::Media));
            self.sound(Sound::Silence);
            self.send(LinkOut::AcceptLookup { key });
            self.changed(key);
            return Ok(Some(Reply::Call {
                call: None,
                callee: None,
                state: None,
                lookup: true,
            }));
        }
        let Some(call) = c.id else {
            return Err("no call is ringing".into());
        };
        c.state = CallState::Answering;
        c.deadline = Some((request_deadline, Deadline::Link));
        self.send(LinkOut::Answer { call });
        self.changed(key);
        Ok(Some(Reply::Call {
            call: Some(call),
            callee: None,
            state: None,
            lookup: false,
        }))
    }

    fn hangup(&mut self, now: Instant) -> Result<Option<Reply>, String> {
        let Some(c) = self.call.as_ref() else {
            return Err("no call to hang up".into());
        };
        let msg = match (c.direction, c.state) {
            (Direction::In, CallState::Alerting) if c.lookup => Some(LinkOut::DeclineLookup {
                key: c.key,
                why: LookupRefusal::Declined,
            }),
            (Direction::In, CallState::Alerting) => c.id.map(|call| LinkOut::Reject { call }),
            (Direction::Out, _) if c.answered_at.is_none() && c.req.is_some() => {
                c.req.map(|req| LinkOut::Cancel {
                    req,
                    call: c.link_id(),
                })
            }
            _ => c.link_id().map(|call| LinkOut::Hangup { call }),
        };
        let dial_req = c.req;
        if let Some(LinkOut::Cancel { req, call: None }) = &msg {
            self.abandoned.insert(*req);
        }
        if let Some(m) = msg {
            self.send(m);
        }
        // A dial still waiting for its reply is answered: hung up.
        if let Some(req) = dial_req {
            if let Some(p) = self.pending.remove(&req) {
                if let Some(ctl) = p.ctl {
                    self.reply(ctl, Err("hung up".into()));
                }
            }
        }
        self.end_main(now, "local-hangup");
        Ok(Some(Reply::Done {}))
    }

    /// The connected main call's link id, or why there is none.
    fn connected(&self, what: &str) -> Result<(CallKey, Option<CallId>), String> {
        self.call
            .as_ref()
            .filter(|c| c.state == CallState::Connected)
            .map(|c| (c.key, c.link_id()))
            .ok_or_else(|| format!("no connected call{what}"))
    }

    fn hold(&mut self, on: bool) -> Result<Option<Reply>, String> {
        let (key, id) = self.connected("")?;
        if self.call.as_ref().is_some_and(|c| c.held_by_peer) {
            return Err("the other end holds this call".into());
        }
        // The gateway is told, so that the other end sees it; a
        // terminal's hold is its own business.
        if let (Flavor::Office, Some(call)) = (self.cfg.flavor, id) {
            self.send(LinkOut::Hold { call, on });
        }
        self.set_hold(key, on);
        Ok(Some(Reply::Hold {
            call: id.unwrap_or(0),
            on_hold: on,
        }))
    }

    fn set_hold(&mut self, key: CallKey, on: bool) {
        let changed = [&mut self.call, &mut self.consult]
            .into_iter()
            .flatten()
            .find(|c| c.key == key)
            .is_some_and(|c| std::mem::replace(&mut c.on_hold, on) != on);
        if changed {
            self.out.push_back(Output::LocalHold { key, on });
            self.changed(key);
        }
    }

    fn transfer(
        &mut self,
        now: Instant,
        ctl: Req,
        target: String,
    ) -> Result<Option<Reply>, String> {
        let target = target.trim().to_string();
        if target.is_empty() {
            return Err("transfer needs a target number".into());
        }
        let (key, id) = self.connected(" to transfer")?;
        let Some(call) = id else {
            return Err("a look-up-only call cannot be handed on".into());
        };
        let req = self.next_request();
        let what = match self.cfg.flavor {
            Flavor::Office => String::new(),
            Flavor::Terminal => format!("cannot hand the call on to {target}"),
        };
        self.park(now, req, Some(ctl), PendingKind::Transfer, what);
        self.send(LinkOut::Transfer { req, call, target });
        if self.cfg.flavor == Flavor::Office {
            // The other end hears the hold music until the target answers.
            self.set_hold(key, true);
            let guard = now + self.cfg.request_timeout;
            if let Some(c) = self.call.as_mut() {
                c.state = CallState::Transferring;
                // The gateway ends our part once it has the call; a guard
                // if it never says.
                c.deadline = Some((guard, Deadline::Link));
            }
            self.changed(key);
        }
        Ok(None)
    }

    fn consult(&mut self, now: Instant, ctl: Req, target: String) -> Result<Option<Reply>, String> {
        if self.cfg.flavor == Flavor::Terminal {
            return Err(
                "an attended transfer needs an office gateway; a terminal hands calls on blind"
                    .into(),
            );
        }
        let target = target.trim().to_string();
        if target.is_empty() {
            return Err("consult needs a target number".into());
        }
        let (key, id) = self.connected(" to consult about")?;
        let Some(call) = id else {
            return Err("no connected call to consult about".into());
        };
        if self.consult.is_some() {
            return Err("already consulting".into());
        }
        let req = self.next_request();
        let ckey = self.new_key();
        let mut c = Call::new(ckey, now, target.clone(), Direction::Out);
        c.consult = true;
        c.req = Some(req);
        c.deadline = Some((now + self.cfg.request_timeout, Deadline::Link));
        self.consult = Some(c);
        self.park(
            now,
            req,
            Some(ctl),
            PendingKind::Consult,
            format!("cannot consult {target}"),
        );
        self.send(LinkOut::Consult { req, call, target });
        self.set_hold(key, true);
        self.changed(ckey);
        Ok(None)
    }

    fn consult_complete(&mut self, now: Instant, ctl: Req) -> Result<Option<Reply>, String> {
        if self.cfg.flavor == Flavor::Terminal {
            return Err(
                "an attended transfer needs an office gateway; a terminal hands calls on blind"
                    .into(),
            );
        }
        if self
            .consult
            .as_ref()
            .is_none_or(|c| c.state != CallState::Connected)
        {
            return Err("no answered consultation call to join".into());
        }
        let req = self.next_request();
        self.park(
            now,
            req,
            Some(ctl),
            PendingKind::ConsultComplete,
            "transfer failed".into(),
        );
        self.send(LinkOut::ConsultComplete { req });
        Ok(None)
    }

    fn consult_cancel(&mut self, now: Instant) -> Result<Option<Reply>, String> {
        if self.cfg.flavor == Flavor::Terminal {
            return Err(
                "an attended transfer needs an office gateway; a terminal hands calls on blind"
                    .into(),
            );
        }
        let Some(c) = self.consult.as_ref() else {
            return Err("no consultation call".into());
        };
        let msg = match c.link_id() {
            Some(call) => LinkOut::Hangup { call },
            None => match c.req {
                Some(req) => {
                    self.abandoned.insert(req);
                    LinkOut::Cancel { req, call: None }
                }
                None => return Err("no consultation call".into()),
            },
        };
        self.send(msg);
        self.end_consult(now, "local-hangup");
        Ok(Some(Reply::Done {}))
    }

    // ---- the link ----

    /// A message from the link.
    pub fn handle_link(&mut self, now: Instant, msg: LinkIn<P>) {
        match msg {
            LinkIn::Ringing {
                req,
                call,
                callee,
                via,
            } => self.on_ringing(now, req, call, callee, via),
            LinkIn::Redirected { req, from, to } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.req == Some(req)) {
                    c.redirected_from.push(from);
                    c.peer = to;
                    c.id = None;
                    c.state = CallState::Dialing;
                    let key = c.key;
                    self.changed(key);
                }
            }
            LinkIn::Found {
                req,
                callee,
                via,
                plan,
            } => {
                let Some(c) = self
                    .call
                    .as_mut()
                    .filter(|c| c.req == Some(req) && c.lookup)
                else {
                    return;
                };
                c.peer = callee.clone();
                c.via = via;
                c.state = CallState::Ringing;
                c.ringing_at = Some(now);
                // The callee rings for its ring timeout; our media
                // attempt waits as long, and a bit.
                c.deadline = Some((
                    now + self.cfg.lookup_ring_timeout + self.cfg.media_deadline,
                    Deadline::Media,
                ));
                let key = c.key;
                self.sound(Sound::Ringback);
                self.out
                    .push_back(Output::StartMedia { key, call: 0, plan });
                self.answer_pending(
                    req,
                    Ok(Reply::Call {
                        call: None,
                        callee: Some(callee),
                        state: Some(CallState::Ringing),
                        lookup: true,
                    }),
                );
                self.changed(key);
            }
            LinkIn::Failed {
                req,
                message,
                ended,
            } => self.on_failed(now, req, message, ended),
            LinkIn::Feature { req, message } => {
                if self.call.as_ref().is_some_and(|c| c.req == Some(req)) {
                    // A feature code is no call: forget it without a record.
                    self.call = None;
                }
                self.answer_pending(req, Ok(Reply::Feature { feature: message }));
            }
            LinkIn::PickedUp { req, call, from } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.req == Some(req)) {
                    c.id = Some(call);
                    c.peer = from.clone();
                    c.direction = Direction::In;
                    c.state = CallState::Answering;
                    c.req = None;
                    c.deadline = Some((now + self.cfg.request_timeout, Deadline::Link));
                    let key = c.key;
                    self.changed(key);
                }
                self.answer_pending(
                    req,
                    Ok(Reply::PickedUp {
                        call,
                        picked_up_from: from,
                    }),
                );
            }
            LinkIn::Incoming {
                call,
                from,
                from_name,
                number,
                via,
            } => {
                if self.call.is_some() {
                    // The link thinks we are free; we are not.
                    self.send(match self.cfg.flavor {
                        Flavor::Office => LinkOut::Reject { call },
                        Flavor::Terminal => LinkOut::Busy { call },
                    });
                    return;
                }
                let key = self.new_key();
                let mut c = Call::new(key, now, from, Direction::In);
                c.id = Some(call);
                c.peer_name = from_name;
                c.number = number;
                c.via = via;
                self.call = Some(c);
                let d = self.alerting_deadline(now);
                if let Some(c) = self.call.as_mut() {
                    c.deadline = d;
                }
                self.sound(Sound::Ring);
                self.changed(key);
            }
            LinkIn::IncomingLookup { from, number, plan } => {
                if self.call.is_some() {
                    self.out.push_back(Output::RefuseLookup { plan });
                    return;
                }
                let key = self.new_key();
                let mut c = Call::new(key, now, from, Direction::In);
                c.number = Some(number);
                c.lookup = true;
                self.call = Some(c);
                let d = self.alerting_deadline(now);
                if let Some(c) = self.call.as_mut() {
                    c.deadline = d;
                }
                self.lookup_plan = Some(plan.clone());
                self.sound(Sound::Ring);
                // The adapter waits for the caller's connection and holds
                // it unanswered while we ring.
                self.out
                    .push_back(Output::StartMedia { key, call: 0, plan });
                self.changed(key);
            }
            LinkIn::Answered {
                req,
                call,
                plan,
                relayed,
                peer,
            } => self.on_answered(now, req, call, plan, relayed, peer),
            LinkIn::AnswerFailed { call, message } => {
                if self.call.as_ref().is_some_and(|c| c.id == Some(call)) {
                    let _ = message;
                    self.end_main(now, "answer-failed");
                }
            }
            LinkIn::Ended {
                call,
                reason,
                transferred,
            } => self.on_ended(now, call, reason, transferred),
            LinkIn::Held { call, on } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.id == Some(call)) {
                    c.held_by_peer = on;
                    let key = c.key;
                    self.changed(key);
                }
            }
            LinkIn::Forwarded { call, to } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.id == Some(call)) {
                    c.peer = to;
                    let key = c.key;
                    self.changed(key);
                }
            }
            LinkIn::HandedOn {
                call,
                number,
                handoff,
            } => {
                if self.call.as_ref().is_some_and(|c| c.id == Some(call)) {
                    self.end_main(now, "transferred");
                    // We call the number we were handed to, ourselves.
                    let _ = self.dial(now, None, number, false, handoff);
                }
            }
            LinkIn::Transferring { req, call, to } => {
                let reply = Reply::Transferring {
                    call,
                    transferring_to: to,
                };
                self.answer_pending(req, Ok(reply));
                if self.cfg.flavor == Flavor::Terminal
                    && self.call.as_ref().is_some_and(|c| c.id == Some(call))
                {
                    // Handed on through the directory: our part is over.
                    self.end_main(now, "transferred");
                }
            }
            LinkIn::TransferFailed { req, call, message } => {
                if self
                    .consult
                    .as_ref()
                    .is_some_and(|c| c.req == Some(req) && c.id.is_none())
                {
                    self.end_consult(now, "failed");
                }
                // Our own transfer request failed, whichever call id the
                // link names.
                if self
                    .pending
                    .get(&req)
                    .is_some_and(|p| p.kind == PendingKind::Transfer)
                {
                    self.transfer_given_back();
                }
                if let Some(c) = self.call.as_mut().filter(|c| c.id == Some(call)) {
                    if c.state == CallState::Transferring {
                        c.deadline = None;
                    }
                    c.state = CallState::Connected;
                    let key = c.key;
                    self.set_hold(key, false);
                    self.changed(key);
                }
                let message = match self.pending.get(&req) {
                    Some(p) if !p.what.is_empty() => format!("{}: {message}", p.what),
                    _ => format!("transfer failed: {message}"),
                };
                self.answer_pending(req, Err(message));
            }
            LinkIn::Replaced { old, new, peer } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.id == Some(old)) {
                    c.id = Some(new);
                    c.peer = peer;
                    c.peer_name = None;
                    c.state = CallState::Connecting;
                    c.held_by_peer = false;
                    c.deadline = Some((now + self.cfg.request_timeout, Deadline::Link));
                    let key = c.key;
                    self.out.push_back(Output::StopMedia { key });
                    self.changed(key);
                }
            }
            LinkIn::Relayed { call } => {
                if let Some(c) = self.call.as_mut().filter(|c| c.id == Some(call)) {
                    c.relayed = true;
                    let key = c.key;
                    self.changed(key);
                }
            }
            LinkIn::Down { reason } => self.on_down(now, reason),
        }
    }

    /// An incoming call's deadline: auto-answer, else (look-up-only) the
    /// ring timeout, else the link's own ring timeout bounds it and ours
    /// is only a guard against a link that never says.
    fn alerting_deadline(&self, now: Instant) -> Option<(Instant, Deadline)> {
        Some(match self.cfg.auto_answer {
            Some(a) => (now + a, Deadline::AutoAnswer),
            None => self.ring_out(now),
        })
    }

    /// When an incoming call that is not answered rings out: a
    /// look-up-only call after its own ring timeout, one the link rings
    /// after the guard.
    fn ring_out(&self, now: Instant) -> (Instant, Deadline) {
        let lookup = self.call.as_ref().is_some_and(|c| c.lookup);
        if lookup {
            (now + self.cfg.lookup_ring_timeout, Deadline::LookupRing)
        } else {
            (now + self.cfg.ring_guard, Deadline::LookupRing)
        }
    }

    fn answer_pending(&mut self, req: Req, result: Result<Reply, String>) {
        if let Some(p) = self.pending.remove(&req) {
            if let Some(ctl) = p.ctl {
                self.reply(ctl, result);
            }
        }
    }

    fn on_ringing(
        &mut self,
        now: Instant,
        req: Req,
        call: CallId,
        callee: String,
        via: Vec<String>,
    ) {
        let ring_guard = self.cfg.ring_guard;
        if self.abandoned.remove(&req) {
            // We hung up before the link named the call.
            self.send(LinkOut::Hangup { call });
            return;
        }
        let key = [&mut self.call, &mut self.consult]
            .into_iter()
            .flatten()
            .find(|c| c.req == Some(req))
            .map(|c| {
                c.id = Some(call);
                c.state = CallState::Ringing;
                c.ringing_at.get_or_insert(now);
                c.peer = callee.clone();
                c.via = via;
                // The link's ring timeout ends it; this is a guard.
                c.deadline = Some((now + ring_guard, Deadline::Link));
                (c.key, c.consult)
            });
        if let Some((key, consult)) = key {
            if !consult {
                self.sound(Sound::Ringback);
            }
            self.changed(key);
        }
        self.answer_pending(
            req,
            Ok(Reply::Call {
                call: Some(call),
                callee: Some(callee),
                state: Some(CallState::Ringing),
                lookup: false,
            }),
        );
    }

    /// A blind transfer that failed or got no answer: the call is ours
    /// again, off hold.
    fn transfer_given_back(&mut self) {
        if let Some(c) = self
            .call
            .as_mut()
            .filter(|c| c.state == CallState::Transferring)
        {
            c.state = CallState::Connected;
            c.deadline = None;
            let key = c.key;
            self.set_hold(key, false);
            self.changed(key);
        }
    }

    fn on_failed(&mut self, now: Instant, req: Req, message: String, ended: String) {
        self.abandoned.remove(&req);
        // A link that refuses a transfer with a plain failure (not a
        // TransferFailed) still gives the call back.
        if self
            .pending
            .get(&req)
            .is_some_and(|p| p.kind == PendingKind::Transfer)
        {
            self.transfer_given_back();
        }
        if self.call.as_ref().is_some_and(|c| c.req == Some(req)) {
            self.end_main(now, &ended);
        }
        if self.consult.as_ref().is_some_and(|c| c.req == Some(req)) {
            self.end_consult(now, &ended);
        }
        let message = match self.pending.get(&req) {
            Some(p) if !p.what.is_empty() => format!("{}: {message}", p.what),
            _ => message,
        };
        self.answer_pending(req, Err(message));
    }

    fn on_answered(
        &mut self,
        now: Instant,
        req: Option<Req>,
        call: CallId,
        plan: P,
        relayed: bool,
        peer: Option<String>,
    ) {
        let media_deadline = now + self.cfg.media_deadline;
        let Some(c) = [&mut self.call, &mut self.consult]
            .into_iter()
            .flatten()
            .find(|c| c.id == Some(call) || (req.is_some() && c.req == req))
        else {
            return;
        };
        let req = c.req.take();
        c.id = Some(call);
        if let Some(p) = peer {
            c.peer = p;
        }
        c.state = CallState::Connecting;
        c.answered_at = Some(now);
        c.relayed |= relayed;
        c.deadline = Some((media_deadline, Deadline::Media));
        let (key, consult, peer) = (c.key, c.consult, c.peer.clone());
        if !consult {
            self.sound(Sound::Silence);
        }
        // A terminal's dial is answered only now (the far end took it
        // before ringing was reported, or the reply was pending).
        if let Some(req) = req {
            self.answer_pending(
                req,
                Ok(Reply::Call {
                    call: Some(call),
                    callee: Some(peer),
                    state: Some(CallState::Connecting),
                    lookup: false,
                }),
            );
        }
        self.out.push_back(Output::StartMedia { key, call, plan });
        self.changed(key);
    }

    fn on_ended(&mut self, now: Instant, call: CallId, reason: String, transferred: bool) {
        if self.consult.as_ref().is_some_and(|c| c.id == Some(call)) {
            self.end_consult(now, &reason);
            return;
        }
        if self.call.as_ref().is_none_or(|c| c.id != Some(call)) {
            return;
        }
        if transferred {
            // Joined to the consultation: both calls are over for us.
            if let Some(c) = self.consult.take() {
                self.finish(now, c, &reason);
            }
        }
        self.end_main(now, &reason);
    }

    fn on_down(&mut self, now: Instant, reason: String) {
        let lost = format!("lost the connection to {}", self.cfg.flavor.link_name());
        let reqs: Vec<Req> = self.pending.keys().copied().collect();
        for req in reqs {
            self.answer_pending(req, Err(lost.clone()));
        }
        self.abandoned.clear();
        let ended = match self.cfg.flavor {
            Flavor::Office => "gateway-lost",
            Flavor::Terminal => "directory-lost",
        };
        let _ = reason;
        if self.consult.is_some() {
            self.end_consult(now, ended);
        }
        // A terminal's connected call goes on: its media is end to end.
        let keep = self.cfg.flavor == Flavor::Terminal
            && self.call.as_ref().is_some_and(|c| c.connected_at.is_some());
        if self.call.is_some() && !keep {
            self.end_main(now, ended);
        }
    }

    // ---- media ----

    pub fn handle_media(&mut self, now: Instant, m: MediaIn) {
        match m {
            MediaIn::Up { key, relayed } => {
                let Some(c) = [&mut self.call, &mut self.consult]
                    .into_iter()
                    .flatten()
                    .find(|c| c.key == key && c.state != CallState::Alerting)
                else {
                    // Over already (or not answered): the adapter drops it.
                    self.out.push_back(Output::StopMedia { key });
                    return;
                };
                c.state = CallState::Connected;
                c.relayed |= relayed;
                c.deadline = None;
                c.answered_at.get_or_insert(now);
                c.connected_at.get_or_insert(now);
                if !c.consult {
                    self.sound(Sound::Silence);
                }
                self.changed(key);
            }
            MediaIn::Failed { key, why, ended } => {
                let _ = why;
                let ended = ended.unwrap_or_else(|| "media-failed".into());
                self.fail_call(now, key, &ended);
            }
            MediaIn::Closed { key, by_peer } => {
                let Some(c) = self.call_by_key(key) else {
                    return;
                };
                if c.lookup && c.state == CallState::Alerting {
                    // The caller gave up before we answered.
                    self.end_main(now, "cancelled");
                    return;
                }
                let ended = if by_peer { "hangup" } else { "media-lost" };
                self.fail_call(now, key, ended);
            }
        }
    }

    /// The media of `key` is gone: tell the link and end that call.
    fn fail_call(&mut self, now: Instant, key: CallKey, ended: &str) {
        let Some(c) = self.call_by_key(key) else {
            return;
        };
        let consult = c.consult;
        if let Some(call) = c.link_id() {
            self.send(LinkOut::Hangup { call });
        }
        if consult {
            self.end_consult(now, ended);
        } else {
            self.end_main(now, ended);
        }
    }

    // ---- time ----

    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Req> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            let kind = self.pending.get(&req).map(|p| p.kind);
            let what = match kind {
                Some(PendingKind::Dial) | Some(PendingKind::Consult) => "the dial request",
                Some(PendingKind::Transfer) => "the transfer",
                _ => "the request",
            };
            let msg = format!(
                "{} did not answer {what} within {} s",
                self.cfg.flavor.link_name(),
                self.cfg.request_timeout.as_secs()
            );
            self.answer_pending(req, Err(msg));
            // A transfer that got no answer gives the call back.
            if kind == Some(PendingKind::Transfer) {
                self.transfer_given_back();
            }
        }
        for key in [&self.call, &self.consult]
            .into_iter()
            .flatten()
            .filter(|c| c.deadline.is_some_and(|(t, _)| t <= now))
            .map(|c| c.key)
            .collect::<Vec<_>>()
        {
            let Some(what) = self.call_by_key(key).and_then(|c| c.deadline.map(|d| d.1)) else {
                continue;
            };
            match what {
                Deadline::AutoAnswer => {
                    if let Some(c) = self.call.as_mut().filter(|c| c.key == key) {
                        c.deadline = None;
                    }
                    let _ = self.answer(now);
                    // Not answerable (no id yet): let it ring out.
                    let ring_out = self.ring_out(now);
                    if let Some(c) = self
                        .call
                        .as_mut()
                        .filter(|c| c.key == key && c.deadline.is_none())
                    {
                        c.deadline = Some(ring_out);
                    }
                }
                Deadline::LookupRing => {
                    let lookup = self.call_by_key(key).is_some_and(|c| c.lookup);
                    if lookup {
                        self.send(LinkOut::DeclineLookup {
                            key,
                            why: LookupRefusal::NoAnswer,
                        });
                        self.end_main(now, "no-answer");
                    } else {
                        // The link's own ring timeout should have ended it.
                        if let Some(call) = self.call_by_key(key).and_then(Call::link_id) {
                            self.send(LinkOut::Reject { call });
                        }
                        self.end_main(now, "no-answer");
                    }
                }
                Deadline::Media => self.fail_call(now, key, "media-failed"),
                Deadline::Link => {
                    let Some(c) = self.call_by_key(key) else {
                        continue;
                    };
                    let consult = c.consult;
                    // A transfer the gateway confirmed but never ended
                    // our part of is over for us all the same.
                    let reason = if c.state == CallState::Transferring {
                        "transferred"
                    } else {
                        "failed"
                    };
                    let msg = match (c.link_id(), c.req) {
                        (Some(call), _) => Some(LinkOut::Hangup { call }),
                        (None, Some(req)) => {
                            self.abandoned.insert(req);
                            Some(LinkOut::Cancel { req, call: None })
                        }
                        (None, None) => None,
                    };
                    if let Some(m) = msg {
                        self.send(m);
                    }
                    if consult {
                        self.end_consult(now, "failed");
                    } else {
                        self.end_main(now, reason);
                    }
                }
            }
        }
    }

    // ---- ending ----

    fn end_main(&mut self, now: Instant, reason: &str) {
        let Some(c) = self.call.take() else {
            return;
        };
        self.lookup_plan = None;
        self.finish(now, c, reason);
        // The held call ended during a consultation: a transfer takes the
        // consultation with it; any other end leaves the consultation as
        // the only call, as the gateway's switchboard sees it too.
        if reason == "transferred" {
            self.end_consult(now, reason);
        } else if let Some(mut c) = self.consult.take() {
            c.consult = false;
            let key = c.key;
            self.call = Some(c);
            self.changed(key);
        }
    }

    /// The consultation ended: drop it and take the main call off hold.
    fn end_consult(&mut self, now: Instant, reason: &str) {
        let Some(c) = self.consult.take() else {
            return;
        };
        self.finish(now, c, reason);
        if let Some(key) = self.call.as_ref().map(|c| c.key) {
            self.set_hold(key, false);
        }
    }

    fn finish(&mut self, _now: Instant, c: Call, reason: &str) {
        if !c.consult {
            self.sound(Sound::Silence);
        }
        if c.on_hold {
            self.out.push_back(Output::LocalHold {
                key: c.key,
                on: false,
            });
        }
        self.out.push_back(Output::StopMedia { key: c.key });
        self.out.push_back(Output::Ended {
            call: c.clone(),
            reason: reason.to_string(),
        });
        self.out.push_back(Output::Event(Event::CallEnded {
            call: c,
            reason: reason.to_string(),
        }));
    }

    /// The plan of the ringing incoming look-up-only call.
    pub fn lookup_plan(&self) -> Option<&P> {
        self.lookup_plan.as_ref()
    }

    /// Check the module's invariants (for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        for c in [&self.call, &self.consult].into_iter().flatten() {
            if c.is_waiting() && c.deadline.is_none() && c.state != CallState::Alerting {
                return Err(format!("call {} is {:?} with no deadline", c.key, c.state));
            }
            if c.state == CallState::Alerting && c.deadline.is_none() {
                return Err(format!("call {} rings with no deadline", c.key));
            }
        }
        if self.consult.is_some() && self.call.is_none() {
            return Err("a consultation without a call".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
