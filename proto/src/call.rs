//! The sans-IO call core: the gateway's switchboard for internal calls.
//!
//! It owns which lines (extensions) exist, which are connected, and every
//! call from dial to its final state. It does no I/O and reads no clock:
//! each `handle_*` input carries `now`, effects come out of
//! [`Switchboard::poll_action`], and [`Switchboard::poll_timeout`] says when
//! [`Switchboard::handle_timeout`] must next be called. The daemon is a thin
//! shell that feeds it network events and carries out its actions.
//!
//! Invariants: a line is in at most one call; every call that is created
//! produces exactly one [`Action::Record`] when it reaches a final state; a
//! ringing call always has a deadline, so no call rings forever.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::msg::{CallId, EndReason, FailReason, LineSettings, ReqId};
use crate::number::Number;

/// Most forwarding steps one call may take before it is a loop.
pub const MAX_FORWARD_HOPS: usize = 5;

/// What a station is told when it transfers a call to a ring group's
/// extension: groups are rung by dialling them, not by transfer.
pub const GROUP_TRANSFER_REFUSED: &str =
    "transfer to a ring group is not supported; transfer to one of its members";

/// Which outside call a trunk line stands for: one the office placed (the
/// switchboard's call id), or one the directory rang the office with (the
/// directory's call id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrunkId {
    /// Placed by the office for the switchboard's call.
    Out(CallId),
    /// Arrived from the directory with this directory call id.
    In(u64),
}

impl TrunkLine {
    /// The directory's call id of a call that came in from outside.
    pub fn dir_call(&self) -> Option<u64> {
        match self.id {
            TrunkId::In(id) => Some(id),
            TrunkId::Out(_) => None,
        }
    }
}

impl std::fmt::Display for TrunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrunkId::Out(id) => write!(f, "o{id}"),
            TrunkId::In(id) => write!(f, "d{id}"),
        }
    }
}

/// A trunk line: the switchboard's stand-in for the far end of one outside
/// call (through the directory). It exists only as long as its call and is
/// never dialled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrunkLine {
    pub id: TrunkId,
    /// The far end's number.
    pub number: Number,
}

/// An end of a call: a station by its extension, or a trunk line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Line {
    Station(String),
    Trunk(TrunkLine),
}

impl Line {
    /// The station with extension `ext`.
    pub fn station(ext: &str) -> Line {
        Line::Station(ext.to_string())
    }

    /// The station's extension; `None` for a trunk line.
    pub fn ext(&self) -> Option<&str> {
        match self {
            Line::Station(ext) => Some(ext),
            Line::Trunk(_) => None,
        }
    }

    /// The trunk line; `None` for a station.
    pub fn trunk(&self) -> Option<&TrunkLine> {
        match self {
            Line::Station(_) => None,
            Line::Trunk(t) => Some(t),
        }
    }

    pub fn is_trunk(&self) -> bool {
        matches!(self, Line::Trunk(_))
    }

    /// What the line is called for people and call records: an extension
    /// as it is, a trunk line as its outside number.
    pub fn shown(&self) -> &str {
        match self {
            Line::Station(ext) => ext,
            Line::Trunk(t) => t.number.as_str(),
        }
    }

    /// Whether this is the station `ext`.
    pub fn is(&self, ext: &str) -> bool {
        self.ext() == Some(ext)
    }
}

/// What people see: see [`Line::shown`].
impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.shown())
    }
}

/// A station by its extension.
impl From<&str> for Line {
    fn from(ext: &str) -> Line {
        Line::station(ext)
    }
}

/// A station by its extension.
impl From<String> for Line {
    fn from(ext: String) -> Line {
        Line::Station(ext)
    }
}

impl From<TrunkLine> for Line {
    fn from(t: TrunkLine) -> Line {
        Line::Trunk(t)
    }
}

/// A line is equal to a string when it is the station of that extension.
impl PartialEq<str> for Line {
    fn eq(&self, other: &str) -> bool {
        self.is(other)
    }
}

impl PartialEq<TrunkLine> for Line {
    fn eq(&self, other: &TrunkLine) -> bool {
        self.trunk() == Some(other)
    }
}

impl PartialEq<&str> for Line {
    fn eq(&self, other: &&str) -> bool {
        self.is(other)
    }
}

/// Tunables of the switchboard.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a call rings before it ends with `NoAnswer`.
    pub ring_timeout: Duration,
    /// Send unanswered, busy and unreachable calls to the callee's mailbox.
    pub voicemail: bool,
    /// Numbers that are not extensions go out through the directory.
    pub outside: bool,
    /// Numbers in this range (all digits) are extensions, known or not;
    /// they never go outside.
    pub extension_range: (u32, u32),
    /// Who rings for a call to the office number: these extensions, or
    /// every extension when empty (ring all; the first to answer takes it).
    pub reception: Vec<String>,
    /// Ring the reception group one member at a time, this long each, in
    /// order (hunt), instead of all at once.
    pub hunt_step: Option<Duration>,
    /// Whose mailbox takes calls to the office number that nobody answers
    /// (with `voicemail` on); `None`: they end unanswered.
    pub office_mailbox: Option<String>,
    /// Ring groups with an extension of their own (Sales, Support), each
    /// dialled like a station's extension.
    pub groups: Vec<RingGroup>,
}

/// A ring group with an extension of its own: a call to `ext` rings its
/// members all at once (first answer wins) or in turn (hunt), skipping
/// busy, offline and do-not-disturb ones; nobody answers → `mailbox`, or
/// the caller hears the group is unavailable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingGroup {
    /// The extension that rings the group (never a station's).
    pub ext: String,
    /// What people call it (Sales, Support).
    pub name: String,
    /// The extensions that ring, in order.
    pub members: Vec<String>,
    /// Ring one member at a time, this long each (hunt); `None`: all at
    /// once, for the ring timeout.
    pub hunt_step: Option<Duration>,
    /// Whose mailbox takes the calls nobody answers (with `voicemail` on).
    pub mailbox: Option<String>,
}

/// How a group call rings: which group, in turn or all at once, and where
/// its unanswered calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRing {
    /// The group's extension; `None`: reception (the office number).
    pub ext: Option<String>,
    /// One member at a time, this long each; `None`: all at once.
    pub step: Option<Duration>,
    /// Whose mailbox takes the call if nobody answers.
    pub mailbox: Option<String>,
}

impl Config {
    fn is_extension_number(&self, n: &str) -> bool {
        let (lo, hi) = self.extension_range;
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.parse::<u32>().is_ok_and(|v| (lo..=hi).contains(&v))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ring_timeout: Duration::from_secs(30),
            voicemail: false,
            outside: false,
            extension_range: (200, 499),
            reception: Vec::new(),
            hunt_step: None,
            office_mailbox: None,
            groups: Vec::new(),
        }
    }
}

/// Final outcome of a call, as written to the call record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Busy,
    UnknownNumber,
    Unreachable,
    NoAnswer,
    Rejected,
    Cancelled,
    Failed,
    /// The caller left a voicemail (or reached the mailbox).
    Voicemail,
    /// An outside caller was sent on to an outside number (forwarding).
    Redirected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::UnknownNumber => "unknown",
            Outcome::Unreachable => "unreachable",
            Outcome::NoAnswer => "no-answer",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Voicemail => "voicemail",
            Outcome::Redirected => "redirected",
        }
    }
}

/// One finished call, for the call-record table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call: Option<CallId>,
    pub caller: String,
    pub callee: String,
    pub started: Instant,
    pub answered: Option<Instant>,
    pub ended: Instant,
    pub outcome: Outcome,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the caller that the callee rings.
    Ringing {
        caller: Line,
        req: ReqId,
        call: CallId,
        callee: String,
    },
    /// Tell the caller its dial failed.
    DialFailed {
        caller: Line,
        req: ReqId,
        reason: FailReason,
    },
    /// Ring the callee.
    Ring {
        callee: Line,
        call: CallId,
        /// Who calls, as the callee sees it (a station's extension or an
        /// outside number).
        from: String,
    },
    /// The callee answered: set up media between the two and tell both.
    Connected {
        call: CallId,
        caller: Line,
        callee: Line,
    },
    /// Tell `to` that the call ended.
    Ended {
        to: Line,
        call: CallId,
        reason: EndReason,
    },
    /// A call reached its final state.
    Record(CallRecord),
    /// A feature code was applied for `caller`; tell it.
    Feature {
        caller: String,
        req: ReqId,
        message: String,
    },
    /// An extension's settings changed: store them and show the station.
    /// `before` is what they replaced, for the shell to restore (with
    /// [`Switchboard::set_settings`]) if the new ones cannot be stored.
    Settings {
        ext: String,
        settings: LineSettings,
        before: LineSettings,
    },
    /// The call was put on hold (or resumed) by the other end: tell `to`.
    Held { to: Line, call: CallId, on: bool },
    /// A blind transfer is under way: `to` (who asked) learns the target
    /// rings.
    Transferring {
        to: String,
        req: ReqId,
        call: CallId,
        target: String,
    },
    /// The transfer failed; the call is back with `to`. `note`, when
    /// there is one, says more than `reason` does (it is shown instead).
    TransferFailed {
        to: String,
        req: ReqId,
        call: CallId,
        reason: FailReason,
        note: Option<&'static str>,
    },
    /// `to`'s call `old` continues as `new` with `peer`.
    Replaced {
        to: Line,
        old: CallId,
        new: CallId,
        peer: String,
    },
    /// Connect `caller` to `mailbox`'s voicemail on the gateway itself.
    ToVoicemail {
        call: CallId,
        caller: Line,
        mailbox: String,
    },
    /// Nobody answered: the call now rings `to` (tell the caller).
    Forwarded {
        caller: Line,
        call: CallId,
        to: String,
    },
    /// The office forwards the outside caller on `caller` (a trunk line)
    /// to the outside number `to`: the caller's end is told to call it
    /// (a REDIRECT through the directory) and the office is out of the
    /// call. `req` is the trunk's request when the call never rang here.
    Redirect {
        caller: TrunkLine,
        req: Option<ReqId>,
        call: Option<CallId>,
        to: String,
    },
    /// A station handed the outside party on `line` (a trunk line) on to
    /// `to` (claim 5): the far end is told, through the directory, to call
    /// it directly; `internal`: `to` is an extension of this office (the
    /// far end calls `OFFICE/to`). The call is over here. When the far end
    /// calls back in, the shell passes [`HandedOn`] `{by, joins}` to
    /// [`Switchboard::handle_handed_on`].
    HandOff {
        line: TrunkLine,
        call: CallId,
        to: String,
        internal: bool,
        /// The extension that handed the party on.
        by: String,
        /// The consultation `by` ↔ `to` the party takes over (attended).
        joins: Option<CallId>,
        /// The directory's id of the outside call, if it is known.
        dir_call: Option<u64>,
    },
    /// The outside call `call` (the directory's `dir_call`) was answered
    /// and nothing came from the far end by the fallback deadline: ask the
    /// directory for its relay and aim the forwarder's outside side there.
    Fallback { call: CallId, dir_call: u64 },
    /// The outside call `call` ended here while the directory's `dir_call`
    /// goes on: hang it up at the directory.
    HangUpOutside { call: CallId, dir_call: u64 },
    /// `picker` took the ringing call `call` from `from` with the pick-up
    /// code; media set-up follows as a `Connected`.
    PickedUp {
        picker: String,
        req: ReqId,
        call: CallId,
        from: String,
    },
}

/// Why an input was refused. The switchboard's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no such call")]
    NoSuchCall,
    #[error("that call is not yours")]
    NotYours,
    #[error("the call is not ringing")]
    NotRinging,
    #[error("the call is not answered")]
    NotAnswered,
    #[error("the other end holds the call")]
    HeldByOther,
    #[error("a transfer of this call is already under way")]
    TransferPending,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Ringing {
        deadline: Instant,
    },
    Answered {
        at: Instant,
    },
    /// The caller talks to the callee's mailbox on the gateway.
    Voicemail {
        at: Instant,
    },
}

/// A call in progress.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: CallId,
    pub caller: Line,
    pub callee: Line,
    pub started: Instant,
    pub state: CallState,
    /// Extensions this call has rung, in order (for loop detection).
    pub rang: Vec<String>,
    /// The end that put the call on hold, if it is on hold.
    pub held_by: Option<String>,
    /// For a transfer leg still ringing: the call it will replace.
    pub replaces: Option<CallId>,
    /// For a call being transferred: who transfers it, and the leg that
    /// rings the target.
    pub transfer: Option<(String, CallId)>,
    /// For a consultation call: the held call it may be joined to.
    pub consult_of: Option<CallId>,
    /// For a held call: the consultation call its holder placed.
    pub consulting: Option<CallId>,
    /// Further lines ringing for this call besides `callee` (a call to the
    /// office number rings a group; the first to answer takes it).
    pub also: Vec<String>,
    /// An outside call not yet ringing at the far end: the caller's dial
    /// request, answered once the directory says it rings (or fails).
    pub dial_req: Option<ReqId>,
    /// A call to a ring group (the office number's reception or a group's
    /// extension): how it rings.
    pub group: Option<GroupRing>,
    /// A hunt group's members still to ring, in order.
    pub hunt: Vec<String>,
    /// An outside party handed on to `callee` by this extension: the call
    /// rings it instead if `callee` does not answer or declines.
    pub recall: Option<String>,
}

impl Call {
    /// The end of the call that is not `l`.
    pub fn other(&self, l: &Line) -> &Line {
        if self.caller == *l {
            &self.callee
        } else {
            &self.caller
        }
    }

    /// The station end of an outside call (or the caller of an inside
    /// one).
    pub fn station(&self) -> &Line {
        if self.caller.is_trunk() {
            &self.callee
        } else {
            &self.caller
        }
    }

    /// The trunk line of an outside call.
    pub fn trunk(&self) -> Option<&TrunkLine> {
        self.caller.trunk().or(self.callee.trunk())
    }

    /// A call in `state` between `caller` and `callee`, with nothing else
    /// going on (no hold, transfer, consultation, group or hunt).
    fn new(id: CallId, caller: Line, callee: Line, started: Instant, state: CallState) -> Call {
        Call {
            id,
            caller,
            callee,
            started,
            state,
            rang: Vec::new(),
            held_by: None,
            replaces: None,
            transfer: None,
            consult_of: None,
            consulting: None,
            also: Vec::new(),
            dial_req: None,
            group: None,
            hunt: Vec::new(),
            recall: None,
        }
    }
}

/// An outside party an extension here handed on to another one (claim 5)
/// calls back in: see [`Switchboard::handle_handed_on`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOn {
    /// The extension that handed the party on; the call comes back to it.
    pub by: String,
    /// For an attended transfer: the consultation between `by` and the
    /// target that the party takes over.
    pub joins: Option<CallId>,
}

#[derive(Debug, Default)]
struct LineState {
    online: bool,
    call: Option<CallId>,
    /// A consultation call placed while `call` is held.
    consult: Option<CallId>,
    settings: LineSettings,
    /// A trunk line's outside call (unused for stations).
    outside: trunk::Outside,
}

/// What a dialled feature code came to.
enum Feature {
    /// Applied; the caller has been told.
    Done,
    /// Refused.
    Fail(FailReason),
    /// A short code: dial this number instead.
    Dial(String),
}

mod features;
mod trunk;
pub use trunk::{OutsideCall, HANDED_ON_WAIT};

/// Where a dialled number leads once forwarding is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A station of this office, by extension.
    Station(String),
    /// An outside number (through the directory).
    Outside(Number),
}

impl Target {
    /// The target as a caller is told of it.
    fn shown(&self) -> &str {
        match self {
            Target::Station(ext) => ext,
            Target::Outside(n) => n.as_str(),
        }
    }
}

/// The gateway's call table.
#[derive(Debug)]
pub struct Switchboard {
    config: Config,
    /// The stations, by extension.
    lines: HashMap<String, LineState>,
    /// The trunk lines of outside calls in progress.
    trunks: HashMap<TrunkLine, LineState>,
    calls: BTreeMap<CallId, Call>,
    actions: VecDeque<Action>,
    next_id: CallId,
    speed_dials: HashMap<String, String>,
    /// Whether the mailboxes can take a message now (the shell says no
    /// while the disk is full).
    mailboxes_writable: bool,
    /// Outside parties handed on to an extension here, by the hand-off
    /// value the directory carries, until they call back in.
    handed: HashMap<u64, trunk::Handed>,
}

fn outcome_of(reason: FailReason) -> Outcome {
    match reason {
        FailReason::UnknownNumber => Outcome::UnknownNumber,
        FailReason::Unreachable => Outcome::Unreachable,
        FailReason::Busy | FailReason::DoNotDisturb => Outcome::Busy,
        FailReason::NoAnswer => Outcome::NoAnswer,
        FailReason::Declined => Outcome::Rejected,
        _ => Outcome::Failed,
    }
}

/// How a call that rang ends for the caller when the far end fails.
fn end_reason_of(reason: FailReason) -> EndReason {
    match reason {
        FailReason::Unreachable => EndReason::PeerLost,
        FailReason::NoAnswer => EndReason::NoAnswer,
        FailReason::Busy | FailReason::DoNotDisturb => EndReason::Busy,
        _ => EndReason::Rejected,
    }
}

impl Switchboard {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            lines: HashMap::new(),
            trunks: HashMap::new(),
            calls: BTreeMap::new(),
            actions: VecDeque::new(),
            next_id: 1,
            speed_dials: HashMap::new(),
            mailboxes_writable: true,
            handed: HashMap::new(),
        }
    }

    /// Whether a message left now could be stored (the shell watches the
    /// disk). While not, calls that would go to a mailbox end as they
    /// would with voicemail off: unanswered, busy or unreachable.
    pub fn set_mailboxes_writable(&mut self, writable: bool) {
        self.mailboxes_writable = writable;
    }

    /// Voicemail is on and a message could be stored.
    fn voicemail_on(&self) -> bool {
        self.config.voicemail && self.mailboxes_writable
    }

    /// Load an extension's settings (e.g. from disk at start).
    pub fn set_settings(&mut self, ext: &str, settings: LineSettings) {
        self.lines.entry(ext.to_string()).or_default().settings = settings;
    }

    pub fn settings(&self, ext: &str) -> Option<&LineSettings> {
        self.lines.get(ext).map(|l| &l.settings)
    }

    /// Map a short code (`*0`–`*9`, `**NN`) to a number; `None` removes it.
    pub fn set_speed_dial(&mut self, code: &str, number: Option<&str>) {
        match number {
            Some(n) => {
                self.speed_dials.insert(code.to_string(), n.to_string());
            }
            None => {
                self.speed_dials.remove(code);
            }
        }
    }

    /// Change tunables (a configuration reload); ringing calls keep their
    /// deadlines.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// Number the next call `next` or higher (e.g. one past the highest id
    /// on disk), so ids stay unique across restarts.
    pub fn set_next_call_id(&mut self, next: CallId) {
        self.next_id = self.next_id.max(next);
    }

    /// Make an extension known (offline until [`Self::handle_line_up`]).
    pub fn add_line(&mut self, ext: &str) {
        self.lines.entry(ext.to_string()).or_default();
    }

    /// Forget an extension, ending its calls.
    pub fn remove_line(&mut self, now: Instant, ext: &str) {
        self.handle_line_down(now, ext);
        self.lines.remove(ext);
    }

    /// The extension's station connected.
    pub fn handle_line_up(&mut self, _now: Instant, ext: &str) {
        self.lines.entry(ext.to_string()).or_default().online = true;
    }

    /// The extension's station disconnected: its calls end.
    pub fn handle_line_down(&mut self, now: Instant, ext: &str) {
        let Some(line) = self.lines.get_mut(ext) else {
            return;
        };
        line.online = false;
        let (main, consult) = (line.call, line.consult);
        let me = Line::station(ext);
        if let Some(id) = consult {
            self.finish_by(now, id, &me, EndReason::PeerLost);
        }
        if let Some(id) = main {
            let is_caller = self.calls.get(&id).is_some_and(|c| c.caller == me);
            if is_caller || !(self.leave_group(id, ext) || self.advance_hunt(now, id)) {
                self.finish_by(now, id, &me, EndReason::PeerLost);
            }
        }
    }

    pub fn is_online(&self, ext: &str) -> bool {
        self.lines.get(ext).is_some_and(|l| l.online)
    }

    /// A station's or a trunk line's state.
    fn line(&self, l: &Line) -> Option<&LineState> {
        match l {
            Line::Station(ext) => self.lines.get(ext),
            Line::Trunk(t) => self.trunks.get(t),
        }
    }

    fn line_mut(&mut self, l: &Line) -> Option<&mut LineState> {
        match l {
            Line::Station(ext) => self.lines.get_mut(ext),
            Line::Trunk(t) => self.trunks.get_mut(t),
        }
    }

    /// Forget `l` if it is a trunk line (its call is over or refused).
    fn drop_trunk(&mut self, l: &Line) {
        if let Line::Trunk(t) = l {
            self.trunks.remove(t);
        }
    }

    /// The station `caller` dials `number` (already canonicalised).
    pub fn handle_dial(&mut self, now: Instant, caller: &str, req: ReqId, number: &str) {
        self.dial(now, &Line::station(caller), req, number)
    }

    /// `caller` (a station, or the trunk line of a call from outside)
    /// dials `number`.
    fn dial(&mut self, now: Instant, caller: &Line, req: ReqId, number: &str) {
        let fail = |s: &mut Self, reason: FailReason, outcome: Option<Outcome>| {
            s.actions.push_back(Action::DialFailed {
                caller: caller.clone(),
                req,
                reason,
            });
            if let Some(outcome) = outcome {
                s.actions.push_back(Action::Record(CallRecord {
                    call: None,
                    caller: caller.shown().to_string(),
                    callee: number.to_string(),
                    started: now,
                    answered: None,
                    ended: now,
                    outcome,
                }));
            }
        };
        match self.line(caller) {
            Some(l) if l.online => {
                if l.call.is_some() {
                    return fail(self, FailReason::AlreadyInCall, None);
                }
            }
            _ => return fail(self, FailReason::NotAllowed, None),
        }
        let station = match caller {
            Line::Station(ext) => ext.as_str(),
            Line::Trunk(_) if number.starts_with('*') => {
                // Feature codes are for the office's own stations.
                fail(self, FailReason::NotAllowed, Some(Outcome::Failed));
                self.drop_trunk(caller);
                return;
            }
            Line::Trunk(_) => "",
        };
        let dialled = if number.starts_with('*') {
            match self.feature(now, station, req, number) {
                Feature::Done => return,
                Feature::Fail(reason) => return fail(self, reason, None),
                Feature::Dial(n) => n,
            }
        } else {
            number.to_string()
        };
        let number = dialled.as_str();
        if caller.is(number) {
            return fail(self, FailReason::SelfCall, None);
        }
        if !self.lines.contains_key(number) {
            if let Some(g) = self.config.groups.iter().find(|g| g.ext == number) {
                let ring = GroupRing {
                    ext: Some(g.ext.clone()),
                    step: g.hunt_step,
                    mailbox: g.mailbox.clone(),
                };
                let members = g.members.clone();
                return self.ring_group(now, caller, req, members, ring);
            }
        }
        let (target, rang) = match self.route(caller, number, Vec::new(), true) {
            Ok(t) => t,
            Err(FailReason::Busy | FailReason::DoNotDisturb | FailReason::Unreachable)
                if self.voicemail_on() && self.lines.contains_key(number) =>
            {
                let id = self.next_id;
                self.next_id += 1;
                let call = Call::new(
                    id,
                    caller.clone(),
                    Line::station(number),
                    now,
                    CallState::Voicemail { at: now },
                );
                return self.straight_to_mailbox(
                    req,
                    Call {
                        rang: vec![number.to_string()],
                        ..call
                    },
                );
            }
            Err(reason) => {
                fail(self, reason, Some(outcome_of(reason)));
                self.drop_trunk(caller);
                return;
            }
        };
        let number = match (target, caller) {
            (Target::Station(ext), _) => ext,
            // An outside number, dialled or reached by forwarding.
            (Target::Outside(n), Line::Station(ext)) => {
                let ext = ext.clone();
                return self.dial_out(now, &ext, req, n);
            }
            (Target::Outside(_), Line::Trunk(_)) if rang.is_empty() => {
                // An outside caller may not call out through the office.
                fail(
                    self,
                    FailReason::UnknownNumber,
                    Some(Outcome::UnknownNumber),
                );
                self.drop_trunk(caller);
                return;
            }
            (Target::Outside(n), Line::Trunk(t)) => {
                // Forwarded outside: the caller's end is sent there directly.
                self.actions.push_back(Action::Redirect {
                    caller: t.clone(),
                    req: Some(req),
                    call: None,
                    to: n.to_string(),
                });
                self.actions.push_back(Action::Record(CallRecord {
                    call: None,
                    caller: caller.shown().to_string(),
                    callee: n.into_string(),
                    started: now,
                    answered: None,
                    ended: now,
                    outcome: Outcome::Redirected,
                }));
                self.drop_trunk(caller);
                return;
            }
        };
        let callee = Line::Station(number);
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + self.config.ring_timeout;
        self.calls.insert(
            id,
            Call {
                rang,
                ..Call::new(
                    id,
                    caller.clone(),
                    callee.clone(),
                    now,
                    CallState::Ringing { deadline },
                )
            },
        );
        for l in [caller, &callee] {
            if let Some(l) = self.line_mut(l) {
                l.call = Some(id);
            }
        }
        self.actions.push_back(Action::Ringing {
            caller: caller.clone(),
            req,
            call: id,
            callee: callee.shown().to_string(),
        });
        self.actions.push_back(Action::Ring {
            callee,
            call: id,
            from: caller.shown().to_string(),
        });
    }

    /// A dial (request `req`) that goes straight to a mailbox: `call` is
    /// in `Voicemail` state with the mailbox as its callee.
    fn straight_to_mailbox(&mut self, req: ReqId, call: Call) {
        let (id, caller, mailbox) = (call.id, call.caller.clone(), call.callee.clone());
        self.calls.insert(id, call);
        if let Some(l) = self.line_mut(&caller) {
            l.call = Some(id);
        }
        self.actions.push_back(Action::Ringing {
            caller: caller.clone(),
            req,
            call: id,
            callee: mailbox.shown().to_string(),
        });
        self.actions.push_back(Action::ToVoicemail {
            call: id,
            caller,
            mailbox: mailbox.shown().to_string(),
        });
    }

    /// The outside number `number` would go to, through the directory.
    fn outside(&self, number: &str) -> Option<Number> {
        let out = self.config.outside
            && !number.starts_with('*')
            && !self.config.is_extension_number(number)
            && !self.lines.contains_key(number)
            && !self.config.groups.iter().any(|g| g.ext == number);
        out.then(|| Number::parse(number).ok()).flatten()
    }

    /// Whether `number` would go out through the directory.
    fn is_outside(&self, number: &str) -> bool {
        self.outside(number).is_some()
    }

    /// A new trunk line for the outside `number` in call `id`.
    fn add_trunk_out(&mut self, id: CallId, number: Number) -> Line {
        let trunk = TrunkLine {
            id: TrunkId::Out(id),
            number,
        };
        self.trunks.insert(
            trunk.clone(),
            LineState {
                online: true,
                call: Some(id),
                ..LineState::default()
            },
        );
        Line::Trunk(trunk)
    }

    /// The station `caller` dials an outside number: the call rings a new
    /// trunk line, and the shell places the outside call when it sees the
    /// `Ring`. The caller hears back when the far end rings
    /// ([`Self::handle_outside_ringing`]) or the call fails
    /// ([`Self::handle_outside_failed`]).
    fn dial_out(&mut self, now: Instant, caller: &str, req: ReqId, number: Number) {
        let id = self.next_id;
        self.next_id += 1;
        let trunk = self.add_trunk_out(id, number);
        if let Some(l) = self.lines.get_mut(caller) {
            l.call = Some(id);
        }
        self.calls.insert(
            id,
            Call {
                dial_req: Some(req),
                ..self.ringing_call(id, Line::station(caller), trunk.clone(), now)
            },
        );
        self.actions.push_back(Action::Ring {
            callee: trunk,
            call: id,
            from: caller.to_string(),
        });
    }

    /// The far end of the answered outside call `id` handed our station on
    /// to the outside `number` (claim 5): the station goes on in a new
    /// outside call to it (`Replaced`, then the new call rings out).
    /// Returns the new call's id.
    pub fn handle_outside_handoff(
        &mut self,
        now: Instant,
        id: CallId,
        number: Number,
    ) -> Option<CallId> {
        let call = self.calls.get(&id)?;
        if !matches!(call.state, CallState::Answered { .. }) {
            self.handle_outside_failed(now, id, FailReason::Unreachable);
            return None;
        }
        let station = call.station().clone();
        let Line::Station(ext) = &station else {
            return None;
        };
        let ext = ext.clone();
        // The far end's transfer ended the call at the directory.
        self.directory_knows(id);
        if let Some(old) = self.calls.remove(&id) {
            self.close(now, old, Outcome::Answered);
        }
        let new = self.next_id;
        self.next_id += 1;
        let peer = number.to_string();
        let trunk = self.add_trunk_out(new, number);
        if let Some(l) = self.lines.get_mut(&ext) {
            l.call = Some(new);
        }
        self.calls.insert(
            new,
            self.ringing_call(new, station.clone(), trunk.clone(), now),
        );
        self.actions.push_back(Action::Replaced {
            to: station,
            old: id,
            new,
            peer,
        });
        self.actions.push_back(Action::Ring {
            callee: trunk,
            call: new,
            from: ext,
        });
        Some(new)
    }

    /// The far end of the outside call `id` rings (or answered before the
    /// directory said it rang): the caller hears it rings.
    fn outside_rang(&mut self, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if let Some(req) = call.dial_req.take() {
            self.actions.push_back(Action::Ringing {
                caller: call.caller.clone(),
                req,
                call: id,
                callee: call.callee.shown().to_string(),
            });
        }
    }

    /// The outside call `id` failed at the far end (unknown, busy,
    /// unreachable, declined, unanswered) or on the way there.
    pub fn handle_outside_failed(&mut self, now: Instant, id: CallId, reason: FailReason) {
        self.directory_knows(id);
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if !matches!(call.state, CallState::Ringing { .. }) {
            let trunk = call.callee.clone();
            return self.finish_by(now, id, &trunk, EndReason::PeerLost);
        }
        if call.replaces.is_some() {
            // A transfer to an outside number that did not go through:
            // the call goes back to whoever transferred it.
            let trunk = call.callee.clone();
            return self.abort_transfer_leg(now, id, Some(&trunk), end_reason_of(reason));
        }
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        match call.dial_req.take() {
            Some(req) => self.actions.push_back(Action::DialFailed {
                caller: call.caller.clone(),
                req,
                reason,
            }),
            None => self.actions.push_back(Action::Ended {
                to: call.caller.clone(),
                call: id,
                reason: end_reason_of(reason),
            }),
        }
        self.close(now, call, outcome_of(reason));
    }

    /// Open the trunk line `trunk` for a call arriving from outside;
    /// `false` when it is not one placed from outside or is already in
    /// use.
    fn add_trunk_in(&mut self, trunk: &TrunkLine) -> bool {
        let TrunkId::In(dir_call) = trunk.id else {
            return false;
        };
        if self.trunks.contains_key(trunk) || self.call_of_directory(dir_call).is_some() {
            return false;
        }
        self.trunks.insert(
            trunk.clone(),
            LineState {
                online: true,
                outside: trunk::Outside {
                    dir_call: Some(dir_call),
                    ..trunk::Outside::default()
                },
                ..LineState::default()
            },
        );
        true
    }

    fn refuse_trunk(&mut self, trunk: &TrunkLine, req: ReqId) {
        self.actions.push_back(Action::DialFailed {
            caller: Line::Trunk(trunk.clone()),
            req,
            reason: FailReason::NotAllowed,
        });
    }

    /// A call from outside (the trunk line `trunk`, with a
    /// [`TrunkId::In`]) arrives for extension `ext`, or for the office
    /// number when `ext` is `None`: then the reception group rings. Replies
    /// come as for a dial by `trunk` (`Ringing` or `DialFailed`).
    pub fn handle_inbound(
        &mut self,
        now: Instant,
        trunk: TrunkLine,
        req: ReqId,
        ext: Option<&str>,
    ) {
        if !self.add_trunk_in(&trunk) {
            return self.refuse_trunk(&trunk, req);
        }
        let trunk = Line::Trunk(trunk);
        if let Some(ext) = ext {
            return self.dial(now, &trunk, req, ext);
        }
        let group: Vec<String> = if self.config.reception.is_empty() {
            let mut all: Vec<String> = self.lines.keys().cloned().collect();
            all.sort();
            all
        } else {
            self.config.reception.clone()
        };
        let ring = GroupRing {
            ext: None,
            step: self.config.hunt_step,
            mailbox: self.config.office_mailbox.clone(),
        };
        self.ring_group(now, &trunk, req, group, ring);
    }

    /// `caller` (a station, or a trunk line for an outside caller) calls a
    /// ring group: its free members ring as `ring` says (the caller itself
    /// never rings); when none is free, the call goes to the group's
    /// mailbox, else fails busy (members exist but are taken) or
    /// unreachable.
    fn ring_group(
        &mut self,
        now: Instant,
        caller: &Line,
        req: ReqId,
        mut group: Vec<String>,
        ring: GroupRing,
    ) {
        let known = group
            .iter()
            .any(|m| !caller.is(m) && self.lines.contains_key(m));
        group.retain(|m| !caller.is(m) && self.is_free(m));
        let shown = ring.ext.clone();
        if group.is_empty() {
            if let Some(mb) = self.group_mailbox(&ring).filter(|mb| !caller.is(mb)) {
                let id = self.next_id;
                self.next_id += 1;
                let call = Call::new(
                    id,
                    caller.clone(),
                    Line::Station(mb),
                    now,
                    CallState::Voicemail { at: now },
                );
                return self.straight_to_mailbox(
                    req,
                    Call {
                        group: Some(ring),
                        ..call
                    },
                );
            }
            let reason = if known {
                FailReason::Busy
            } else {
                FailReason::Unreachable
            };
            self.actions.push_back(Action::DialFailed {
                caller: caller.clone(),
                req,
                reason,
            });
            self.actions.push_back(Action::Record(CallRecord {
                call: None,
                caller: caller.shown().to_string(),
                callee: shown.unwrap_or_default(),
                started: now,
                answered: None,
                ended: now,
                outcome: outcome_of(reason),
            }));
            self.drop_trunk(caller);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (step, hunt) = match ring.step {
            // Hunt: the first free member rings; the rest wait their turn.
            Some(step) => (step, group.split_off(1)),
            None => (self.config.ring_timeout, Vec::new()),
        };
        if let Some(l) = self.line_mut(caller) {
            l.call = Some(id);
        }
        for m in &group {
            if let Some(l) = self.lines.get_mut(m) {
                l.call = Some(id);
            }
        }
        let callee = group.remove(0);
        self.actions.push_back(Action::Ringing {
            caller: caller.clone(),
            req,
            call: id,
            callee: shown.unwrap_or_else(|| callee.clone()),
        });
        for m in std::iter::once(&callee).chain(group.iter()) {
            self.actions.push_back(Action::Ring {
                callee: Line::station(m),
                call: id,
                from: caller.shown().to_string(),
            });
        }
        self.calls.insert(
            id,
            Call {
                also: group,
                group: Some(ring),
                hunt,
                ..Call::new(
                    id,
                    caller.clone(),
                    Line::Station(callee),
                    now,
                    CallState::Ringing {
                        deadline: now + step,
                    },
                )
            },
        );
    }

    /// A hunt group's ringing member did not take the call: ring the next
    /// free one. `false` when nobody is left to try.
    fn advance_hunt(&mut self, now: Instant, id: CallId) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let Some(ring) = &call.group else {
            return false;
        };
        if !matches!(call.state, CallState::Ringing { .. }) {
            return false;
        }
        let step = ring.step.unwrap_or(self.config.ring_timeout);
        let mut queue = call.hunt.clone();
        let next = loop {
            if queue.is_empty() {
                return false;
            }
            let m = queue.remove(0);
            if self.is_free(&m) {
                break m;
            }
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        call.hunt = queue;
        self.ring_instead(now + step, id, next);
        true
    }

    /// Ringing call `id` stops ringing its callee and rings `next` until
    /// `deadline`.
    fn ring_instead(&mut self, deadline: Instant, id: CallId, next: String) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Ringing { deadline };
        let old = std::mem::replace(&mut call.callee, Line::station(&next));
        let from = call.caller.shown().to_string();
        if let Some(l) = self.line_mut(&old) {
            if l.call == Some(id) {
                l.call = None;
                self.actions.push_back(Action::Ended {
                    to: old,
                    call: id,
                    reason: EndReason::NoAnswer,
                });
            }
        }
        if let Some(l) = self.lines.get_mut(&next) {
            l.call = Some(id);
        }
        self.actions.push_back(Action::Ring {
            callee: Line::Station(next),
            call: id,
            from,
        });
    }

    /// A new call `id` from `caller` ringing `callee` until the ring
    /// timeout.
    fn ringing_call(&self, id: CallId, caller: Line, callee: Line, now: Instant) -> Call {
        Call::new(
            id,
            caller,
            callee,
            now,
            CallState::Ringing {
                deadline: now + self.config.ring_timeout,
            },
        )
    }

    /// Whether `ext` can ring now: online, in no call, not consulting, no
    /// do-not-disturb.
    fn is_free(&self, ext: &str) -> bool {
        self.lines
            .get(ext)
            .is_some_and(|l| l.online && l.call.is_none() && l.consult.is_none() && !l.settings.dnd)
    }

    /// The mailbox for a group's calls nobody answers, if there is one
    /// that can take a message now.
    fn group_mailbox(&self, ring: &GroupRing) -> Option<String> {
        ring.mailbox
            .clone()
            .filter(|mb| self.voicemail_on() && self.lines.contains_key(mb))
    }

    /// A member of a ringing group call drops out (declined, hung up, or
    /// went offline); the others keep ringing. `false` when `ext` is the
    /// only line still ringing for the call.
    fn leave_group(&mut self, id: CallId, ext: &str) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if !matches!(call.state, CallState::Ringing { .. }) || call.also.is_empty() {
            return false;
        }
        if call.callee.is(ext) {
            call.callee = Line::Station(call.also.remove(0));
        } else if let Some(i) = call.also.iter().position(|m| m == ext) {
            call.also.remove(i);
        } else {
            return false;
        }
        if let Some(l) = self.lines.get_mut(ext) {
            if l.call == Some(id) {
                l.call = None;
            }
        }
        true
    }

    /// The group call `id` was taken by `by`: the others stop ringing.
    fn stop_group(&mut self, id: CallId, by: &Line) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let others: Vec<Line> = std::mem::take(&mut call.also)
            .into_iter()
            .map(Line::Station)
            .chain(std::iter::once(std::mem::replace(
                &mut call.callee,
                by.clone(),
            )))
            .filter(|m| m != by)
            .collect();
        for m in others {
            if let Some(l) = self.line_mut(&m) {
                if l.call == Some(id) {
                    l.call = None;
                }
            }
            self.actions.push_back(Action::Ended {
                to: m,
                call: id,
                reason: EndReason::AnsweredElsewhere,
            });
        }
    }

    /// The station `ext`, the callee (or a member of the group it rings),
    /// takes the call.
    pub fn handle_answer(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        self.answer(now, &Line::station(ext), id)
    }

    fn answer(&mut self, now: Instant, who: &Line, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if call.callee != *who && !call.also.iter().any(|m| who.is(m)) {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Ringing { .. }) {
            return Err(CallError::NotRinging);
        }
        if call.dial_req.is_some() {
            // The far end answered before the directory said it rang.
            self.outside_rang(id);
        }
        self.stop_group(id, who);
        let call = self.calls.get_mut(&id).ok_or(CallError::NoSuchCall)?;
        call.state = CallState::Answered { at: now };
        let (caller, callee) = (call.caller.clone(), call.callee.clone());
        if let Some(orig) = call.replaces.take() {
            // A transfer completes: the transferred end now talks to the
            // target; the transferring end is done.
            if let Some(old) = self.calls.remove(&orig) {
                if let Some((by, _)) = &old.transfer {
                    self.actions.push_back(Action::Ended {
                        to: Line::station(by),
                        call: orig,
                        reason: EndReason::Transferred,
                    });
                }
                self.close(now, old, Outcome::Answered);
            }
            if let Some(l) = self.line_mut(&caller) {
                l.call = Some(id);
            }
            self.actions.push_back(Action::Replaced {
                to: caller.clone(),
                old: orig,
                new: id,
                peer: callee.shown().to_string(),
            });
        }
        self.actions.push_back(Action::Connected {
            call: id,
            caller,
            callee,
        });
        Ok(())
    }

    /// Whether `by` may hand on (or consult from) its call `id`: the call
    /// is `by`'s and answered, and no other hand-off is under way (one at a
    /// time: not from a consultation, nor while one is under way on this
    /// line). Returns the other end.
    fn may_hand_off(&self, by: &str, id: CallId) -> Result<Line, CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if !call.caller.is(by) && !call.callee.is(by) {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Answered { .. }) {
            return Err(CallError::NotAnswered);
        }
        if call.transfer.is_some()
            || call.consulting.is_some()
            || call.consult_of.is_some()
            || self.lines.get(by).is_some_and(|l| l.consult.is_some())
        {
            return Err(CallError::TransferPending);
        }
        Ok(if call.caller.is(by) {
            call.callee.clone()
        } else {
            call.caller.clone()
        })
    }

    /// A short code (`*0`–`*9`, `**NN`) as the number it stands for;
    /// anything else as it is.
    fn expand_short_code(&self, target: &str) -> String {
        self.speed_dials
            .get(target)
            .cloned()
            .unwrap_or_else(|| target.to_string())
    }

    /// `by` hands the other end of its answered call `id` on to `target`.
    /// The call stays as it is until the target answers; a busy, unknown or
    /// unanswered target gives the call back to `by`.
    pub fn handle_transfer(
        &mut self,
        now: Instant,
        by: &str,
        req: ReqId,
        id: CallId,
        target: &str,
    ) -> Result<(), CallError> {
        let other = self.may_hand_off(by, id)?;
        let target = &self.expand_short_code(target);
        let fail = |s: &mut Self, reason: FailReason| {
            let note = s.group_refusal(target, reason);
            s.actions.push_back(Action::TransferFailed {
                to: by.to_string(),
                req,
                call: id,
                reason,
                note,
            });
            Ok(())
        };
        if let Line::Trunk(line) = &other {
            // An outside party is handed on through the directory (claim
            // 5): it calls the target itself. An extension here must be
            // able to take the call now, since it cannot come back.
            let internal = self.lines.contains_key(target);
            if internal {
                match self.route(&other, target, Vec::new(), false) {
                    Ok((t, _)) if t == Target::Station(by.to_string()) => {
                        return fail(self, FailReason::SelfCall)
                    }
                    Ok(_) => {}
                    Err(reason) => return fail(self, reason),
                }
            } else if !self.is_outside(target) {
                return fail(self, FailReason::UnknownNumber);
            }
            let Some(call) = self.calls.remove(&id) else {
                return Err(CallError::NoSuchCall);
            };
            self.actions.push_back(Action::Transferring {
                to: by.to_string(),
                req,
                call: id,
                target: target.to_string(),
            });
            self.actions.push_back(Action::Ended {
                to: Line::station(by),
                call: id,
                reason: EndReason::Transferred,
            });
            let dir_call = self.directory_knows_line(line);
            self.actions.push_back(Action::HandOff {
                dir_call,
                line: line.clone(),
                call: id,
                to: target.to_string(),
                internal,
                by: by.to_string(),
                joins: None,
            });
            self.close(now, call, Outcome::Answered);
            return Ok(());
        }
        let (target, rang) = match self.route(&other, target, Vec::new(), true) {
            Ok((t, _)) if t == Target::Station(by.to_string()) => {
                return fail(self, FailReason::SelfCall)
            }
            Ok(t) => t,
            Err(reason) => return fail(self, reason),
        };
        let leg = self.next_id;
        self.next_id += 1;
        let shown = target.shown().to_string();
        let target = match target {
            Target::Station(ext) => Line::Station(ext),
            // To an outside number: the leg rings a trunk line.
            Target::Outside(n) => self.add_trunk_out(leg, n),
        };
        self.calls.insert(
            leg,
            Call {
                rang,
                replaces: Some(id),
                ..self.ringing_call(leg, other.clone(), target.clone(), now)
            },
        );
        if let Some(l) = self.line_mut(&target) {
            l.call = Some(leg);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.transfer = Some((by.to_string(), leg));
            c.held_by = Some(by.to_string());
        }
        self.actions.push_back(Action::Held {
            to: other.clone(),
            call: id,
            on: true,
        });
        self.actions.push_back(Action::Transferring {
            to: by.to_string(),
            req,
            call: id,
            target: shown,
        });
        self.actions.push_back(Action::Ring {
            callee: target,
            call: leg,
            from: other.shown().to_string(),
        });
        Ok(())
    }

    /// `by` holds its call `id` and calls `target` to consult (attended
    /// transfer). Refusals come back as `TransferFailed`.
    pub fn handle_consult(
        &mut self,
        now: Instant,
        by: &str,
        req: ReqId,
        id: CallId,
        target: &str,
    ) -> Result<(), CallError> {
        let other = self.may_hand_off(by, id)?;
        let target = &self.expand_short_code(target);
        let (target, rang) = match self.route(&Line::station(by), target, Vec::new(), true) {
            Ok((Target::Station(t), _)) if other.is(&t) => {
                self.actions.push_back(Action::TransferFailed {
                    to: by.to_string(),
                    req,
                    call: id,
                    reason: FailReason::SelfCall,
                    note: None,
                });
                return Ok(());
            }
            Ok(t) => t,
            Err(reason) => {
                let note = self.group_refusal(target, reason);
                self.actions.push_back(Action::TransferFailed {
                    to: by.to_string(),
                    req,
                    call: id,
                    reason,
                    note,
                });
                return Ok(());
            }
        };
        let c2 = self.next_id;
        self.next_id += 1;
        let target = match target {
            Target::Station(ext) => Line::Station(ext),
            // To an outside number: the consultation rings a trunk line.
            Target::Outside(n) => self.add_trunk_out(c2, n),
        };
        self.calls.insert(
            c2,
            Call {
                rang,
                consult_of: Some(id),
                ..self.ringing_call(c2, Line::station(by), target.clone(), now)
            },
        );
        if let Some(l) = self.line_mut(&target) {
            l.call = Some(c2);
        }
        if let Some(l) = self.lines.get_mut(by) {
            l.consult = Some(c2);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.consulting = Some(c2);
            c.held_by = Some(by.to_string());
        }
        self.actions.push_back(Action::Held {
            to: other,
            call: id,
            on: true,
        });
        self.actions.push_back(Action::Ringing {
            caller: Line::station(by),
            req,
            call: c2,
            callee: target.shown().to_string(),
        });
        self.actions.push_back(Action::Ring {
            callee: target,
            call: c2,
            from: by.to_string(),
        });
        Ok(())
    }

    /// `by` joins its held party to the party it consulted, and leaves.
    pub fn handle_consult_complete(
        &mut self,
        now: Instant,
        by: &str,
        req: ReqId,
    ) -> Result<(), CallError> {
        let c2 = self
            .lines
            .get(by)
            .and_then(|l| l.consult)
            .ok_or(CallError::NoSuchCall)?;
        let consult = self.calls.get(&c2).ok_or(CallError::NoSuchCall)?;
        if !matches!(consult.state, CallState::Answered { .. }) {
            return Err(CallError::NotAnswered);
        }
        let orig = consult.consult_of.ok_or(CallError::NoSuchCall)?;
        let target = consult.callee.clone();
        let held = self
            .calls
            .get(&orig)
            .map(|o| o.other(&Line::station(by)).clone())
            .ok_or(CallError::NoSuchCall)?;
        if target.is_trunk() {
            // The consulted party is outside: the consultation ends, and
            // the held party goes on to that number as in a blind
            // transfer (an outside party calls it directly; an extension's
            // call is placed here and comes back if it is not answered).
            self.complete_towards_outside(now, by, req, orig, c2, target.shown());
            return Ok(());
        }
        if let Line::Trunk(line) = &held {
            // An outside party is held: it is handed on through the
            // directory (claim 5) and takes the consultation over when it
            // calls in (`handle_handed_on`).
            let Some(old) = self.calls.remove(&orig) else {
                return Err(CallError::NoSuchCall);
            };
            self.actions.push_back(Action::Ended {
                to: Line::station(by),
                call: orig,
                reason: EndReason::Transferred,
            });
            let dir_call = self.directory_knows_line(line);
            self.actions.push_back(Action::HandOff {
                dir_call,
                line: line.clone(),
                call: orig,
                to: target.shown().to_string(),
                internal: true,
                by: by.to_string(),
                joins: Some(c2),
            });
            // Unlinked first: the consultation is not the holder's to keep.
            let old = Call {
                consulting: None,
                ..old
            };
            self.close(now, old, Outcome::Answered);
            if let Some(c) = self.calls.get_mut(&c2) {
                c.consult_of = None;
            }
            if let Some(l) = self.lines.get_mut(by) {
                l.call = Some(c2);
                l.consult = None;
            }
            self.actions.push_back(Action::Feature {
                caller: by.to_string(),
                req,
                message: format!(
                    "{held} is being handed on to {target}; stay on the line until they arrive"
                ),
            });
            return Ok(());
        }
        let Some(old) = self.calls.remove(&orig) else {
            return Err(CallError::NoSuchCall);
        };
        let other = old.other(&Line::station(by)).clone();
        self.actions.push_back(Action::Ended {
            to: Line::station(by),
            call: orig,
            reason: EndReason::Transferred,
        });
        // Unlinked first: the consultation goes on between the other two.
        let old = Call {
            consulting: None,
            ..old
        };
        self.close(now, old, Outcome::Answered);
        if let Some(c) = self.calls.get_mut(&c2) {
            c.caller = other.clone();
            c.consult_of = None;
        }
        if let Some(l) = self.lines.get_mut(by) {
            l.consult = None;
        }
        if let Some(l) = self.line_mut(&other) {
            l.call = Some(c2);
        }
        self.actions.push_back(Action::Ended {
            to: Line::station(by),
            call: c2,
            reason: EndReason::Transferred,
        });
        self.actions.push_back(Action::Feature {
            caller: by.to_string(),
            req,
            message: format!("{other} is now talking to {target}"),
        });
        self.actions.push_back(Action::Replaced {
            to: other.clone(),
            old: orig,
            new: c2,
            peer: target.shown().to_string(),
        });
        self.actions.push_back(Action::Replaced {
            to: target.clone(),
            old: c2,
            new: c2,
            peer: other.shown().to_string(),
        });
        self.actions.push_back(Action::Connected {
            call: c2,
            caller: other,
            callee: target,
        });
        Ok(())
    }

    /// Attended transfer to an outside number: end the consultation `c2`
    /// and hand the held call `orig` on to the number.
    fn complete_towards_outside(
        &mut self,
        now: Instant,
        by: &str,
        req: ReqId,
        orig: CallId,
        c2: CallId,
        target: &str,
    ) {
        if let Some(c) = self.calls.remove(&c2) {
            self.actions.push_back(Action::Ended {
                to: Line::station(by),
                call: c2,
                reason: EndReason::Transferred,
            });
            self.actions.push_back(Action::Ended {
                to: c.callee.clone(),
                call: c2,
                reason: EndReason::Hangup,
            });
            // Unlinked first, so closing it does not take the held call
            // off hold.
            let c = Call {
                consult_of: None,
                ..c
            };
            self.close(now, c, Outcome::Answered);
        }
        if let Some(o) = self.calls.get_mut(&orig) {
            o.consulting = None;
        }
        if let Some(l) = self.lines.get_mut(by) {
            l.consult = None;
        }
        if let Err(e) = self.handle_transfer(now, by, req, orig, target) {
            self.actions.push_back(Action::TransferFailed {
                to: by.to_string(),
                req,
                call: orig,
                reason: match e {
                    CallError::NoSuchCall => FailReason::Unreachable,
                    _ => FailReason::NotAllowed,
                },
                note: None,
            });
        }
    }

    /// An outside party that extension `h.by` handed on to extension `ext`
    /// (claim 5) calls back in on the trunk line `trunk`. With `h.joins`
    /// still a consultation between the two, the party takes it over at
    /// once (attended transfer: `ext` gets `Replaced`, then `Connected`).
    /// Otherwise `ext` rings, and the call comes back to `h.by` if `ext`
    /// is busy, does not answer or declines. Replies as for
    /// [`Self::handle_inbound`].
    pub fn handle_handed_on(
        &mut self,
        now: Instant,
        trunk: TrunkLine,
        req: ReqId,
        ext: &str,
        h: HandedOn,
    ) {
        let joinable = h.joins.and_then(|c2| {
            let c = self.calls.get(&c2)?;
            let pair = (c.caller.is(&h.by) && c.callee.is(ext))
                || (c.caller.is(ext) && c.callee.is(&h.by));
            (pair && matches!(c.state, CallState::Answered { .. }) && c.held_by.is_none())
                .then_some(c2)
        });
        let (callee, recall) = match joinable {
            Some(c2) => return self.take_over_consultation(now, trunk, req, ext, &h.by, c2),
            None if self.is_free(ext) => (ext.to_string(), Some(h.by.clone())),
            None if self.is_free(&h.by) && h.by != ext => (h.by.clone(), None),
            // Nobody to take it back: as any call for `ext` (its
            // forwarding, its mailbox, or busy).
            None => return self.handle_inbound(now, trunk, req, Some(ext)),
        };
        if !self.add_trunk_in(&trunk) {
            return self.refuse_trunk(&trunk, req);
        }
        let trunk = Line::Trunk(trunk);
        let id = self.next_id;
        self.next_id += 1;
        for l in [&trunk, &Line::station(&callee)] {
            if let Some(l) = self.line_mut(l) {
                l.call = Some(id);
            }
        }
        self.calls.insert(
            id,
            Call {
                recall,
                ..self.ringing_call(id, trunk.clone(), Line::station(&callee), now)
            },
        );
        self.actions.push_back(Action::Ringing {
            caller: trunk.clone(),
            req,
            call: id,
            callee: callee.clone(),
        });
        self.actions.push_back(Action::Ring {
            callee: Line::Station(callee),
            call: id,
            from: trunk.shown().to_string(),
        });
    }

    /// The handed-on party on `trunk` takes over the answered consultation
    /// `c2` between `by` and `ext`: `by` drops out, `ext` talks to it.
    fn take_over_consultation(
        &mut self,
        now: Instant,
        trunk: TrunkLine,
        req: ReqId,
        ext: &str,
        by: &str,
        c2: CallId,
    ) {
        if !self.add_trunk_in(&trunk) {
            return self.refuse_trunk(&trunk, req);
        }
        let trunk = Line::Trunk(trunk);
        let Some(old) = self.calls.remove(&c2) else {
            return;
        };
        self.actions.push_back(Action::Ended {
            to: Line::station(by),
            call: c2,
            reason: EndReason::Transferred,
        });
        self.close(now, old, Outcome::Answered);
        let id = self.next_id;
        self.next_id += 1;
        for l in [&trunk, &Line::station(ext)] {
            if let Some(l) = self.line_mut(l) {
                l.call = Some(id);
            }
        }
        self.calls.insert(
            id,
            Call::new(
                id,
                trunk.clone(),
                Line::station(ext),
                now,
                CallState::Answered { at: now },
            ),
        );
        self.actions.push_back(Action::Ringing {
            caller: trunk.clone(),
            req,
            call: id,
            callee: ext.to_string(),
        });
        self.actions.push_back(Action::Replaced {
            to: Line::station(ext),
            old: c2,
            new: id,
            peer: trunk.shown().to_string(),
        });
        self.actions.push_back(Action::Connected {
            call: id,
            caller: trunk,
            callee: Line::station(ext),
        });
    }

    /// A handed-on call's target did not take it: ring the extension that
    /// handed it on instead, if it is free. `true` when the call moved.
    fn recall(&mut self, now: Instant, id: CallId) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let Some(back) = call.recall.clone() else {
            return false;
        };
        if !self.is_free(&back) || !matches!(call.state, CallState::Ringing { .. }) {
            return false;
        }
        if let Some(call) = self.calls.get_mut(&id) {
            call.recall = None;
        }
        self.ring_instead(now + self.config.ring_timeout, id, back);
        true
    }

    /// A transfer leg ended before the target answered: give the call back.
    fn abort_transfer_leg(
        &mut self,
        now: Instant,
        leg: CallId,
        by: Option<&Line>,
        reason: EndReason,
    ) {
        let Some(l) = self.calls.remove(&leg) else {
            return;
        };
        if by != Some(&l.callee) {
            self.actions.push_back(Action::Ended {
                to: l.callee.clone(),
                call: leg,
                reason,
            });
        }
        let (fail, outcome) = match reason {
            EndReason::NoAnswer => (FailReason::NoAnswer, Outcome::NoAnswer),
            EndReason::Rejected => (FailReason::Declined, Outcome::Rejected),
            EndReason::Busy => (FailReason::Busy, Outcome::Busy),
            EndReason::PeerLost => (FailReason::Unreachable, Outcome::Unreachable),
            _ => (FailReason::Unreachable, Outcome::Cancelled),
        };
        if let Some(orig) = l.replaces {
            if let Some(c) = self.calls.get_mut(&orig) {
                if let Some((tby, _)) = c.transfer.take() {
                    c.held_by = None;
                    let other = c.other(&Line::station(&tby)).clone();
                    self.actions.push_back(Action::TransferFailed {
                        to: tby,
                        req: 0,
                        call: orig,
                        reason: fail,
                        note: None,
                    });
                    self.actions.push_back(Action::Held {
                        to: other,
                        call: orig,
                        on: false,
                    });
                }
            }
        }
        self.close(now, l, outcome);
    }

    /// The callee declines a ringing call.
    pub fn handle_reject(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if !call.callee.is(ext) && !call.also.iter().any(|m| m == ext) {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Ringing { .. }) {
            return Err(CallError::NotRinging);
        }
        if self.leave_group(id, ext) || self.advance_hunt(now, id) || self.recall(now, id) {
            return Ok(());
        }
        self.finish_by(now, id, &Line::station(ext), EndReason::Rejected);
        Ok(())
    }

    /// Either end, the station `ext`, hangs up (or the caller cancels
    /// while it rings).
    pub fn handle_hangup(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        self.hangup(now, &Line::station(ext), id)
    }

    fn hangup(&mut self, now: Instant, who: &Line, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if call.caller != *who && call.callee != *who && !call.also.iter().any(|m| who.is(m)) {
            return Err(CallError::NotYours);
        }
        let reason = match call.state {
            CallState::Ringing { .. } if call.caller == *who => EndReason::Cancelled,
            CallState::Ringing { .. } => EndReason::Rejected,
            CallState::Answered { .. } | CallState::Voicemail { .. } => EndReason::Hangup,
        };
        if let (false, Line::Station(ext)) = (call.caller == *who, who) {
            if self.leave_group(id, ext) || self.advance_hunt(now, id) || self.recall(now, id) {
                return Ok(());
            }
        }
        self.finish_by(now, id, who, reason);
        Ok(())
    }

    /// An end of an answered call puts it on hold (`on`) or resumes it.
    /// A held call has no deadline: it stays until someone hangs up.
    pub fn handle_hold(&mut self, ext: &str, id: CallId, on: bool) -> Result<(), CallError> {
        let call = self.calls.get_mut(&id).ok_or(CallError::NoSuchCall)?;
        if !call.caller.is(ext) && !call.callee.is(ext) {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Answered { .. }) {
            return Err(CallError::NotAnswered);
        }
        match (&call.held_by, on) {
            (Some(by), true) if by != ext => return Err(CallError::HeldByOther),
            (Some(by), false) if by != ext => return Err(CallError::HeldByOther),
            _ => {}
        }
        call.held_by = on.then(|| ext.to_string());
        let other = call.other(&Line::station(ext)).clone();
        self.actions.push_back(Action::Held {
            to: other,
            call: id,
            on,
        });
        Ok(())
    }

    /// The mailbox finished recording (length limit or silence): end the
    /// call for the caller.
    pub fn handle_voicemail_done(&mut self, now: Instant, id: CallId) {
        if !self
            .calls
            .get(&id)
            .is_some_and(|c| matches!(c.state, CallState::Voicemail { .. }))
        {
            return;
        }
        if let Some(call) = self.calls.remove(&id) {
            self.actions.push_back(Action::Ended {
                to: call.caller.clone(),
                call: id,
                reason: EndReason::Hangup,
            });
            self.close(now, call, Outcome::Voicemail);
        }
    }

    /// Media for an answered call could not be set up: end it for both.
    pub fn handle_media_failed(&mut self, now: Instant, id: CallId) {
        if self.calls.get(&id).is_some_and(|c| c.replaces.is_some()) {
            // A transfer leg failed: the call goes back to whoever
            // transferred it.
            return self.abort_transfer_leg(now, id, None, EndReason::MediaFailed);
        }
        if let Some(call) = self.calls.remove(&id) {
            for ext in [&call.caller, &call.callee] {
                self.actions.push_back(Action::Ended {
                    to: ext.clone(),
                    call: id,
                    reason: EndReason::MediaFailed,
                });
            }
            self.close(now, call, Outcome::Failed);
        }
    }

    /// End every call, telling both ends (the gateway is stopping).
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            if let Some(call) = self.calls.remove(&id) {
                for ext in [&call.caller, &call.callee] {
                    self.actions.push_back(Action::Ended {
                        to: ext.clone(),
                        call: id,
                        reason: EndReason::Shutdown,
                    });
                }
                let outcome = match call.state {
                    CallState::Answered { .. } => Outcome::Answered,
                    CallState::Voicemail { .. } => Outcome::Voicemail,
                    CallState::Ringing { .. } => Outcome::Failed,
                };
                self.close(now, call, outcome);
            }
        }
    }

    /// Time has passed: ring timeouts fire, outside calls that heard
    /// nothing from the far end fall back to the relay, hand-offs nobody
    /// used are forgotten.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.trunk_timeouts(now);
        let expired: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| matches!(c.state, CallState::Ringing { deadline } if deadline <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            if self.recall(now, id)
                || self.advance_hunt(now, id)
                || self.forward_unanswered(now, id)
            {
                continue;
            }
            if self.calls.get(&id).is_some_and(|c| c.replaces.is_some()) {
                self.abort_transfer_leg(now, id, None, EndReason::NoAnswer);
                continue;
            }
            let mailbox = self.calls.get(&id).and_then(|c| {
                if let Some(ring) = &c.group {
                    self.group_mailbox(ring).filter(|mb| !c.caller.is(mb))
                } else if c.also.is_empty() {
                    c.callee.ext().map(str::to_string)
                } else {
                    None
                }
            });
            if let (true, Some(mailbox)) = (self.voicemail_on(), mailbox) {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.state = CallState::Voicemail { at: now };
                    let ringing: Vec<Line> = std::mem::take(&mut c.also)
                        .into_iter()
                        .map(Line::Station)
                        .chain(std::iter::once(std::mem::replace(
                            &mut c.callee,
                            Line::station(&mailbox),
                        )))
                        .collect();
                    let caller = c.caller.clone();
                    for m in ringing {
                        if let Some(l) = self.line_mut(&m) {
                            if l.call == Some(id) {
                                l.call = None;
                            }
                        }
                        self.actions.push_back(Action::Ended {
                            to: m,
                            call: id,
                            reason: EndReason::NoAnswer,
                        });
                    }
                    self.actions.push_back(Action::ToVoicemail {
                        call: id,
                        caller,
                        mailbox,
                    });
                    continue;
                }
            }
            if let Some(call) = self.calls.remove(&id) {
                for ext in [&call.caller, &call.callee] {
                    self.actions.push_back(Action::Ended {
                        to: ext.clone(),
                        call: id,
                        reason: EndReason::NoAnswer,
                    });
                }
                self.close(now, call, Outcome::NoAnswer);
            }
        }
    }

    /// A ringing call timed out: move it to the callee's no-answer target
    /// if it has one that can ring. `true` when the call moved on.
    fn forward_unanswered(&mut self, now: Instant, id: CallId) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        if !call.also.is_empty() {
            return false;
        }
        let Some(next) = self
            .line(&call.callee)
            .and_then(|l| l.settings.forward_no_answer.clone())
        else {
            return false;
        };
        let (caller, old, rang) = (call.caller.clone(), call.callee.clone(), call.rang.clone());
        let Ok((target, rang)) = self.route(&caller, &next, rang, true) else {
            return false;
        };
        if let Some(l) = self.line_mut(&old) {
            if l.call == Some(id) {
                l.call = None;
            }
        }
        let shown = target.shown().to_string();
        let target = match (target, &caller) {
            (Target::Station(ext), _) => Line::Station(ext),
            (Target::Outside(n), Line::Trunk(t)) => {
                // An outside caller forwarded outside: send it there.
                self.actions.push_back(Action::Ended {
                    to: old,
                    call: id,
                    reason: EndReason::Forwarded,
                });
                self.directory_knows(id);
                self.actions.push_back(Action::Redirect {
                    caller: t.clone(),
                    req: None,
                    call: Some(id),
                    to: n.into_string(),
                });
                if let Some(call) = self.calls.remove(&id) {
                    self.close(now, call, Outcome::Redirected);
                }
                return true;
            }
            (Target::Outside(n), Line::Station(_)) => self.add_trunk_out(id, n),
        };
        if let Some(l) = self.line_mut(&target) {
            l.call = Some(id);
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.callee = target.clone();
            c.rang = rang;
            c.state = CallState::Ringing {
                deadline: now + self.config.ring_timeout,
            };
        }
        self.actions.push_back(Action::Ended {
            to: old,
            call: id,
            reason: EndReason::Forwarded,
        });
        self.actions.push_back(Action::Forwarded {
            caller: caller.clone(),
            call: id,
            to: shown,
        });
        self.actions.push_back(Action::Ring {
            callee: target,
            call: id,
            from: caller.shown().to_string(),
        });
        true
    }

    /// Why a transfer to `target` failed, when "unknown number" would
    /// mislead: a ring group's extension is known, but a transfer (or a
    /// consultation) rings single extensions only.
    fn group_refusal(&self, target: &str, reason: FailReason) -> Option<&'static str> {
        (reason == FailReason::UnknownNumber && self.config.groups.iter().any(|g| g.ext == target))
            .then_some(GROUP_TRANSFER_REFUSED)
    }

    /// Follow forwarding rules from `number` to the extension that should
    /// ring now. `rang` holds the extensions this call has already rung.
    /// With `outside_ok`, an outside number (dialled or a forward target)
    /// is a target too: the caller makes it an outside call.
    fn route(
        &self,
        caller: &Line,
        number: &str,
        mut rang: Vec<String>,
        outside_ok: bool,
    ) -> Result<(Target, Vec<String>), FailReason> {
        let mut cur = number.to_string();
        loop {
            if rang.len() > MAX_FORWARD_HOPS || rang.contains(&cur) {
                return Err(FailReason::ForwardLoop);
            }
            let Some(line) = self.lines.get(&cur) else {
                if let Some(n) = self.outside(&cur).filter(|_| outside_ok) {
                    return Ok((Target::Outside(n), rang));
                }
                return Err(FailReason::UnknownNumber);
            };
            if caller.is(&cur) {
                // Forwarded back to whoever is calling.
                return Err(if rang.is_empty() {
                    FailReason::SelfCall
                } else {
                    FailReason::ForwardLoop
                });
            }
            rang.push(cur.clone());
            let s = &line.settings;
            let next = if let Some(f) = &s.forward_always {
                f.clone()
            } else if s.dnd {
                return Err(FailReason::DoNotDisturb);
            } else if line.call.is_some() {
                match &s.forward_busy {
                    Some(f) => f.clone(),
                    None => return Err(FailReason::Busy),
                }
            } else if !line.online {
                match &s.forward_no_answer {
                    Some(f) => f.clone(),
                    None => return Err(FailReason::Unreachable),
                }
            } else {
                return Ok((Target::Station(cur), rang));
            };
            cur = next;
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest moment [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|c| match c.state {
                CallState::Ringing { deadline } => Some(deadline),
                CallState::Answered { .. } | CallState::Voicemail { .. } => None,
            })
            .chain(self.trunk_deadline())
            .min()
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    /// `by` ended the call: tell the other end and record it.
    fn finish_by(&mut self, now: Instant, id: CallId, by: &Line, reason: EndReason) {
        if self.calls.get(&id).is_some_and(|c| c.replaces.is_some()) {
            return self.abort_transfer_leg(now, id, Some(by), reason);
        }
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if let Some((tby, leg)) = &call.transfer {
            if by.is(tby) {
                // The transferring end walks away: the transfer goes on
                // without a way back.
                let other = call.other(by).clone();
                if let Some(l) = self.calls.get_mut(leg) {
                    l.replaces = None;
                }
                if let Some(line) = self.line_mut(&other) {
                    line.call = Some(*leg);
                }
                self.close(now, call, Outcome::Answered);
                return;
            }
            // The transferred end hung up: the target stops ringing.
            let leg = *leg;
            if let Some(l) = self.calls.remove(&leg) {
                self.actions.push_back(Action::Ended {
                    to: l.callee.clone(),
                    call: leg,
                    reason: EndReason::Cancelled,
                });
                self.close(now, l, Outcome::Cancelled);
            }
        }
        if matches!(call.state, CallState::Voicemail { .. }) {
            // Only the caller is in a call with a mailbox; the gateway's
            // recorder sees the media connection close.
            return self.close(now, call, Outcome::Voicemail);
        }
        self.actions.push_back(Action::Ended {
            to: call.other(by).clone(),
            call: id,
            reason,
        });
        let outcome = match (call.state, reason) {
            (CallState::Answered { .. }, _) => Outcome::Answered,
            (_, EndReason::Cancelled) => Outcome::Cancelled,
            (_, EndReason::Rejected) => Outcome::Rejected,
            (_, EndReason::PeerLost) if *by == call.callee => Outcome::Unreachable,
            (_, EndReason::PeerLost) => Outcome::Cancelled,
            _ => Outcome::Failed,
        };
        self.close(now, call, outcome);
    }

    fn close(&mut self, now: Instant, call: Call, outcome: Outcome) {
        for end in [&call.caller, &call.callee] {
            let mut hang_up = None;
            if let Some(l) = self.line_mut(end) {
                if l.call == Some(call.id) {
                    l.call = None;
                }
                if l.consult == Some(call.id) {
                    l.consult = None;
                }
                if !l.outside.dir_ended {
                    hang_up = l.outside.dir_call;
                }
            }
            if let Some(dir_call) = hang_up {
                // The directory does not know yet: the far end is hung up
                // on.
                self.actions.push_back(Action::HangUpOutside {
                    call: call.id,
                    dir_call,
                });
            }
            self.drop_trunk(end);
        }
        if let Some(c2) = call.consulting {
            // The held call ended, however it ended: the consultation
            // becomes the holder's only call.
            if let Some(c) = self.calls.get_mut(&c2) {
                c.consult_of = None;
                let holder = c.caller.clone();
                if let Some(l) = self.line_mut(&holder) {
                    l.call = Some(c2);
                    l.consult = None;
                }
            }
        }
        if let Some((_, leg)) = &call.transfer {
            // The call being transferred ended (however it ended) while
            // the target still rings: the target stops ringing.
            if self
                .calls
                .get(leg)
                .is_some_and(|l| l.replaces == Some(call.id))
            {
                if let Some(l) = self.calls.remove(leg) {
                    self.actions.push_back(Action::Ended {
                        to: l.callee.clone(),
                        call: l.id,
                        reason: EndReason::Cancelled,
                    });
                    self.close(now, l, Outcome::Cancelled);
                }
            }
        }
        if let Some(orig) = call.replaces {
            // A transfer leg gone without an answer: the call it would
            // have replaced is no longer being transferred.
            if let Some(o) = self.calls.get_mut(&orig) {
                if o.transfer.as_ref().is_some_and(|(_, leg)| *leg == call.id) {
                    o.transfer = None;
                }
            }
        }
        for m in &call.also {
            // The rest of a ringing group stops ringing.
            if let Some(l) = self.lines.get_mut(m) {
                if l.call == Some(call.id) {
                    l.call = None;
                }
            }
            self.actions.push_back(Action::Ended {
                to: Line::station(m),
                call: call.id,
                reason: match outcome {
                    Outcome::NoAnswer => EndReason::NoAnswer,
                    _ => EndReason::Cancelled,
                },
            });
        }
        if let Some(orig) = call.consult_of {
            // The consultation is over: the held call comes back.
            if let Some(o) = self.calls.get_mut(&orig) {
                o.consulting = None;
                o.held_by = None;
                let other = o.other(&call.caller).clone();
                self.actions.push_back(Action::Held {
                    to: other,
                    call: orig,
                    on: false,
                });
            }
        }
        let answered = match call.state {
            CallState::Answered { at } | CallState::Voicemail { at } => Some(at),
            CallState::Ringing { .. } => None,
        };
        self.actions.push_back(Action::Record(CallRecord {
            call: Some(call.id),
            caller: call.caller.shown().to_string(),
            callee: call.callee.shown().to_string(),
            started: call.started,
            answered,
            ended: now,
            outcome,
        }));
    }

    /// Check the switchboard's invariants (for tests and fuzzing): every
    /// line's call and consultation exist and name the line as a party;
    /// every call's links (the leg it replaces, its transfer leg, its
    /// consultation) point at calls that exist; a call's parties differ;
    /// a ringing call has a deadline (so [`Self::poll_timeout`] will end it).
    pub fn check_invariants(&self) -> Result<(), String> {
        let stations = self.lines.iter().map(|(ext, l)| (Line::station(ext), l));
        let trunks = self.trunks.iter().map(|(t, l)| (Line::Trunk(t.clone()), l));
        for (ext, line) in stations.chain(trunks) {
            for (what, id) in [("call", line.call), ("consultation", line.consult)] {
                let Some(id) = id else { continue };
                let Some(call) = self.calls.get(&id) else {
                    return Err(format!("line {ext:?}'s {what} {id} does not exist"));
                };
                let party = call.caller == ext
                    || call.callee == ext
                    || call.also.iter().any(|a| ext.is(a))
                    || call.transfer.as_ref().is_some_and(|(by, _)| ext.is(by));
                if !party {
                    return Err(format!(
                        "line {ext:?}'s {what} {id} is between {:?} and {:?}",
                        call.caller, call.callee
                    ));
                }
            }
            if line.call.is_some() && line.call == line.consult {
                return Err(format!("line {ext:?} consults in its own call"));
            }
        }
        for (t, line) in &self.trunks {
            // A trunk line lives exactly as long as its call.
            let end = Line::Trunk(t.clone());
            let Some(call) = line.call.and_then(|id| self.calls.get(&id)) else {
                return Err(format!("trunk line {t:?} is in no call"));
            };
            if call.caller != end && call.callee != end {
                return Err(format!(
                    "trunk line {t:?} is not an end of call {}",
                    call.id
                ));
            }
        }
        for call in self.calls.values() {
            let id = call.id;
            if call.caller == call.callee {
                return Err(format!("call {id} is between {:?} and itself", call.caller));
            }
            if call.caller.is_trunk() && call.callee.is_trunk() {
                return Err(format!("call {id} has two outside ends"));
            }
            for end in [&call.caller, &call.callee] {
                if let Line::Trunk(t) = end {
                    if self.trunks.get(t).and_then(|l| l.call) != Some(id) {
                        return Err(format!("call {id}'s trunk line {t:?} is not in it"));
                    }
                }
            }
            let links = [
                ("replaces", call.replaces),
                ("transfer leg", call.transfer.as_ref().map(|(_, leg)| *leg)),
                ("consultation of", call.consult_of),
                ("consultation", call.consulting),
            ];
            for (what, link) in links {
                if let Some(other) = link {
                    if other == id {
                        return Err(format!("call {id}'s {what} is itself"));
                    }
                    if !self.calls.contains_key(&other) {
                        return Err(format!("call {id}'s {what} {other} does not exist"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(lines: &[&str]) -> (Switchboard, Instant) {
        let now = Instant::now();
        let mut sb = Switchboard::new(Config::default());
        for l in lines {
            sb.add_line(l);
            sb.handle_line_up(now, l);
        }
        (sb, now)
    }

    fn drain(sb: &mut Switchboard) -> Vec<Action> {
        if let Err(e) = sb.check_invariants() {
            panic!("invariant broken: {e}\n{sb:#?}");
        }
        std::iter::from_fn(|| sb.poll_action()).collect()
    }

    fn fwd_always(sb: &mut Switchboard, ext: &str, to: &str) {
        sb.set_settings(
            ext,
            LineSettings {
                forward_always: Some(to.into()),
                ..LineSettings::default()
            },
        );
    }

    #[test]
    fn forward_chains_are_followed_and_loops_refused() {
        let lines = ["201", "202", "203", "204", "205", "206", "207", "208"];
        let (mut sb, now) = board(&lines);
        fwd_always(&mut sb, "202", "203");
        fwd_always(&mut sb, "203", "204");
        sb.handle_dial(now, "201", 1, "202");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ring {
            callee: "204".into(),
            call: 1,
            from: "201".into()
        }));
        // A circle.
        fwd_always(&mut sb, "205", "206");
        fwd_always(&mut sb, "206", "205");
        sb.handle_dial(now, "207", 2, "205");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::ForwardLoop,
                ..
            }
        )));
        // Back to the caller is a loop too.
        fwd_always(&mut sb, "208", "207");
        sb.handle_dial(now, "207", 3, "208");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::ForwardLoop,
                ..
            }
        )));
    }

    #[test]
    fn too_many_hops_is_a_loop() {
        let lines: Vec<String> = (201..=210).map(|n| n.to_string()).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (mut sb, now) = board(&refs);
        for w in lines[1..].windows(2) {
            fwd_always(&mut sb, &w[0], &w[1]);
        }
        sb.handle_dial(now, "201", 1, "202");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::ForwardLoop,
                ..
            }
        )));
    }

    #[test]
    fn feature_codes_change_settings_and_report() {
        let (mut sb, now) = board(&["201", "202"]);
        sb.handle_dial(now, "201", 1, "*72202");
        let acts = drain(&mut sb);
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Settings { ext, settings, before }
            if ext == "201" && before.forward_always.is_none() && settings.forward_always.as_deref() == Some("202"))));
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Feature { req: 1, .. })));
        sb.handle_dial(now, "201", 2, "*72299");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::UnknownNumber,
                ..
            }
        )));
        sb.handle_dial(now, "202", 3, "*78");
        drain(&mut sb);
        sb.handle_dial(now, "201", 4, "202");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::DoNotDisturb,
                ..
            }
        )));
    }

    #[test]
    fn no_answer_moves_the_call_and_keeps_one_record() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        sb.set_settings(
            "202",
            LineSettings {
                forward_no_answer: Some("203".into()),
                ..LineSettings::default()
            },
        );
        sb.handle_dial(now, "201", 1, "202");
        drain(&mut sb);
        let t = sb.poll_timeout().expect("deadline");
        sb.handle_timeout(t);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Forwarded {
            caller: "201".into(),
            call: 1,
            to: "203".into()
        }));
        assert!(!acts.iter().any(|a| matches!(a, Action::Record(_))));
        // 202 is free again; 203 rings and can answer.
        assert!(sb.handle_answer(t, "203", 1).is_ok());
        sb.handle_hangup(t, "201", 1).expect("hangup");
        let records = drain(&mut sb)
            .into_iter()
            .filter(|a| matches!(a, Action::Record(_)))
            .count();
        assert_eq!(records, 1);
    }

    #[test]
    fn pickup_takes_the_ringing_call() {
        let (mut sb, now) = board(&["201", "202", "204"]);
        sb.handle_dial(now, "201", 1, "202");
        drain(&mut sb);
        sb.handle_dial(now, "204", 9, "*8");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::AnsweredElsewhere
        }));
        assert!(acts.contains(&Action::Connected {
            call: 1,
            caller: "201".into(),
            callee: "204".into()
        }));
        // 202 is free for a new call.
        sb.handle_dial(now, "202", 2, "201");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::Busy,
                ..
            }
        )));
    }

    #[test]
    fn short_codes_dial_their_number() {
        let (mut sb, now) = board(&["201", "203"]);
        sb.set_speed_dial("*1", Some("203"));
        sb.handle_dial(now, "201", 1, "*1");
        assert!(drain(&mut sb)
            .iter()
            .any(|a| matches!(a, Action::Ring { callee, .. } if callee == "203")));
    }
}

#[cfg(test)]
mod handoff_tests {
    use super::*;

    /// Found by the property test: a consultation must not start another
    /// consultation (or a blind transfer) from the consultation call.
    #[test]
    fn one_hand_off_at_a_time() {
        let now = Instant::now();
        let mut sb = Switchboard::new(Config::default());
        for l in ["201", "202", "203", "204"] {
            sb.add_line(l);
            sb.handle_line_up(now, l);
        }
        sb.handle_dial(now, "203", 1, "201");
        sb.handle_answer(now, "201", 1).expect("answer");
        sb.handle_consult(now, "203", 2, 1, "202").expect("consult");
        sb.handle_answer(now, "202", 2).expect("answer consult");
        assert_eq!(
            sb.handle_consult(now, "203", 3, 2, "204"),
            Err(CallError::TransferPending)
        );
        assert_eq!(
            sb.handle_transfer(now, "203", 4, 2, "204"),
            Err(CallError::TransferPending)
        );
        assert_eq!(
            sb.handle_transfer(now, "203", 5, 1, "204"),
            Err(CallError::TransferPending)
        );
    }
}

#[cfg(test)]
mod trunk_tests {
    use super::*;

    fn board(lines: &[&str]) -> (Switchboard, Instant) {
        let now = Instant::now();
        let mut sb = Switchboard::new(Config {
            outside: true,
            ..Config::default()
        });
        for l in lines {
            sb.add_line(l);
            sb.handle_line_up(now, l);
        }
        (sb, now)
    }

    fn drain(sb: &mut Switchboard) -> Vec<Action> {
        if let Err(e) = sb.check_invariants() {
            panic!("invariant broken: {e}\n{sb:#?}");
        }
        std::iter::from_fn(|| sb.poll_action()).collect()
    }

    /// Whether the switchboard holds the trunk line `l`.
    trait HasLine<L> {
        fn has_line(&self, l: &L) -> bool;
    }

    impl HasLine<TrunkLine> for Switchboard {
        fn has_line(&self, l: &TrunkLine) -> bool {
            self.trunks.contains_key(l)
        }
    }

    impl HasLine<Line> for Switchboard {
        fn has_line(&self, l: &Line) -> bool {
            self.line(l).is_some()
        }
    }

    /// The trunk line of the directory's incoming call `dc` from `n`.
    fn tin(dc: u64, n: &str) -> TrunkLine {
        TrunkLine {
            id: TrunkId::In(dc),
            number: Number::parse(n).expect("number"),
        }
    }

    /// The trunk line of the outside call `id` placed to `n`.
    fn tout(id: CallId, n: &str) -> Line {
        Line::Trunk(TrunkLine {
            id: TrunkId::Out(id),
            number: Number::parse(n).expect("number"),
        })
    }

    fn record(acts: &[Action]) -> Option<&CallRecord> {
        acts.iter().find_map(|a| match a {
            Action::Record(r) => Some(r),
            _ => None,
        })
    }

    #[test]
    fn trunk_names_show_their_number() {
        let t = tout(12, "bob~x");
        assert!(t.is_trunk() && !Line::station("201").is_trunk());
        assert_eq!(t.shown(), "bob~x");
        assert_eq!(Line::station("201").shown(), "201");
        assert_eq!(t.to_string(), "bob~x");
        assert!(Line::station("201") == "201" && t != "bob~x");
    }

    #[test]
    fn an_outside_call_rings_a_trunk_and_answers_once_the_far_end_rings() {
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 1, "김민준");
        let acts = drain(&mut sb);
        let trunk = tout(1, "김민준");
        assert_eq!(
            acts,
            vec![Action::Ring {
                callee: trunk.clone(),
                call: 1,
                from: "201".into()
            }]
        );
        sb.handle_outside_ringing(1, 1000 + 1);
        assert_eq!(
            drain(&mut sb),
            vec![Action::Ringing {
                caller: "201".into(),
                req: 1,
                call: 1,
                callee: "김민준".into()
            }]
        );
        sb.answer(now, &trunk, 1).expect("answer");
        assert!(drain(&mut sb).contains(&Action::Connected {
            call: 1,
            caller: "201".into(),
            callee: trunk.clone()
        }));
        sb.handle_hangup(now, "201", 1).expect("hangup");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: trunk.clone(),
            call: 1,
            reason: EndReason::Hangup
        }));
        let r = record(&acts).expect("record");
        assert_eq!((r.caller.as_str(), r.callee.as_str()), ("201", "김민준"));
        assert_eq!(r.outcome, Outcome::Answered);
        // The trunk line is gone with its call; the station is free again.
        assert!(!sb.has_line(&trunk));
        sb.handle_dial(now, "201", 2, "bob");
        assert!(matches!(&drain(&mut sb)[0], Action::Ring { .. }));
    }

    #[test]
    fn a_failed_outside_call_answers_the_dial_and_frees_the_line() {
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 5, "nobody");
        drain(&mut sb);
        sb.handle_outside_failed(now, 1, FailReason::UnknownNumber);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::DialFailed {
            caller: "201".into(),
            req: 5,
            reason: FailReason::UnknownNumber
        }));
        assert_eq!(
            record(&acts).map(|r| r.outcome),
            Some(Outcome::UnknownNumber)
        );
        assert_eq!(sb.lines.len(), 1);
        assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
        // After it rang, a decline ends the call for the caller.
        sb.handle_dial(now, "201", 6, "carol");
        sb.handle_outside_ringing(2, 1000 + 2);
        drain(&mut sb);
        sb.handle_outside_failed(now, 2, FailReason::Declined);
        assert!(drain(&mut sb).contains(&Action::Ended {
            to: "201".into(),
            call: 2,
            reason: EndReason::Rejected
        }));
        // Busy and no answer after it rang say so.
        for (id, why, end, outcome) in [
            (3, FailReason::Busy, EndReason::Busy, Outcome::Busy),
            (
                4,
                FailReason::NoAnswer,
                EndReason::NoAnswer,
                Outcome::NoAnswer,
            ),
        ] {
            sb.handle_dial(now, "201", 7, "carol");
            sb.handle_outside_ringing(id, 1000 + id);
            drain(&mut sb);
            sb.handle_outside_failed(now, id, why);
            let acts = drain(&mut sb);
            assert!(acts.contains(&Action::Ended {
                to: "201".into(),
                call: id,
                reason: end
            }));
            assert_eq!(record(&acts).map(|r| r.outcome), Some(outcome));
        }
    }

    #[test]
    fn numbers_in_the_extension_range_never_go_outside() {
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 1, "250");
        assert!(drain(&mut sb).contains(&Action::DialFailed {
            caller: "201".into(),
            req: 1,
            reason: FailReason::UnknownNumber
        }));
        // Nor does anything when the gateway has no directory.
        let (mut sb, now) = board(&["201"]);
        sb.set_config(Config::default());
        sb.handle_dial(now, "201", 1, "bob");
        assert!(drain(&mut sb).contains(&Action::DialFailed {
            caller: "201".into(),
            req: 1,
            reason: FailReason::UnknownNumber
        }));
    }

    #[test]
    fn a_call_to_the_office_rings_every_free_station_and_the_first_answer_wins() {
        let (mut sb, now) = board(&["201", "202", "203", "204"]);
        sb.set_settings(
            "203",
            LineSettings {
                dnd: true,
                ..LineSettings::default()
            },
        );
        sb.handle_line_down(now, "204");
        let trunk = tin(9, "alice");
        sb.handle_inbound(now, trunk.clone(), 9, None);
        let acts = drain(&mut sb);
        let rung: Vec<&str> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Ring { callee, from, .. } if from == "alice" => Some(callee.shown()),
                _ => None,
            })
            .collect();
        assert_eq!(rung, vec!["201", "202"]);
        assert!(matches!(&acts[0], Action::Ringing { caller, req: 9, .. } if *caller == trunk));
        sb.handle_answer(now, "202", 1).expect("answer");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: 1,
            reason: EndReason::AnsweredElsewhere
        }));
        assert!(acts.contains(&Action::Connected {
            call: 1,
            caller: trunk.clone().into(),
            callee: "202".into()
        }));
        assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
        // 202 is busy with the caller: handing it on to 202 itself fails
        // and keeps the call.
        sb.handle_transfer(now, "202", 3, 1, "202")
            .expect("refused cleanly");
        assert!(drain(&mut sb)
            .iter()
            .any(|a| matches!(a, Action::TransferFailed { .. })));
        assert!(sb.call(1).is_some());
        sb.hangup(now, &Line::from(trunk.clone()), 1)
            .expect("hangup");
        assert!(drain(&mut sb).contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::Hangup
        }));
        assert!(!sb.has_line(&trunk));
    }

    #[test]
    fn a_group_keeps_ringing_until_the_last_member_declines() {
        let (mut sb, now) = board(&["201", "202"]);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, None);
        drain(&mut sb);
        sb.handle_reject(now, "201", 1).expect("reject");
        assert!(drain(&mut sb).is_empty());
        assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
        sb.handle_reject(now, "202", 1).expect("reject");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: trunk.clone().into(),
            call: 1,
            reason: EndReason::Rejected
        }));
        // Nobody free: busy at once.
        sb.handle_dial(now, "201", 2, "202");
        drain(&mut sb);
        let t2 = tin(2, "alice");
        sb.handle_inbound(now, t2.clone(), 2, None);
        assert!(drain(&mut sb).contains(&Action::DialFailed {
            caller: t2.clone().into(),
            req: 2,
            reason: FailReason::Busy
        }));
        assert!(!sb.has_line(&t2));
    }

    #[test]
    fn a_ringing_group_call_ends_everywhere_when_the_caller_gives_up() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, None);
        drain(&mut sb);
        sb.handle_line_down(now, "203");
        assert!(
            drain(&mut sb).is_empty(),
            "one member going away is not the end"
        );
        sb.hangup(now, &Line::from(trunk.clone()), 1)
            .expect("cancel");
        let acts = drain(&mut sb);
        for ext in ["201", "202"] {
            assert!(acts
                .iter()
                .any(|a| matches!(a, Action::Ended { to, call: 1, .. } if to == ext)));
        }
        assert!(sb.lines.values().all(|l| l.call.is_none()) && sb.trunks.is_empty());
    }

    #[test]
    fn an_outside_caller_may_dial_an_extension_but_not_a_feature_code() {
        let (mut sb, now) = board(&["201", "202"]);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ring {
            callee: "202".into(),
            call: 1,
            from: "alice".into()
        }));
        let t2 = tin(2, "mallory");
        sb.handle_inbound(now, t2.clone(), 2, Some("*72999"));
        assert!(drain(&mut sb).contains(&Action::DialFailed {
            caller: t2.clone().into(),
            req: 2,
            reason: FailReason::NotAllowed
        }));
        assert!(sb
            .settings("201")
            .is_some_and(|s| s.forward_always.is_none()));
        // Nor an outside number through the office.
        let t3 = tin(3, "mallory");
        sb.handle_inbound(now, t3.clone(), 3, Some("premium-line"));
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::UnknownNumber,
                ..
            }
        )));
        assert!(!sb.has_line(&t3));
    }

    #[test]
    fn calls_do_not_go_to_a_mailbox_that_cannot_store_a_message() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        sb.set_config(Config {
            voicemail: true,
            ..Config::default()
        });
        sb.set_mailboxes_writable(false);
        // Unanswered: ends as no answer, no mailbox.
        sb.handle_dial(now, "201", 1, "202");
        drain(&mut sb);
        sb.handle_timeout(now + Config::default().ring_timeout);
        let acts = drain(&mut sb);
        assert!(
            !acts.iter().any(|a| matches!(a, Action::ToVoicemail { .. })),
            "{acts:?}"
        );
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: 1,
            reason: EndReason::NoAnswer
        }));
        // Busy: the caller hears busy.
        sb.handle_dial(now, "201", 2, "202");
        drain(&mut sb);
        sb.handle_answer(now, "202", 2).expect("answer");
        drain(&mut sb);
        sb.handle_dial(now, "203", 3, "202");
        let acts = drain(&mut sb);
        assert!(
            acts.iter().any(|a| matches!(
                a,
                Action::DialFailed {
                    reason: FailReason::Busy,
                    ..
                }
            )),
            "{acts:?}"
        );
        // Room again: the busy line's mailbox takes the next caller.
        sb.set_mailboxes_writable(true);
        sb.handle_dial(now, "203", 4, "202");
        let acts = drain(&mut sb);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::ToVoicemail { mailbox, .. } if mailbox == "202")),
            "{acts:?}"
        );
    }

    #[test]
    fn office_calls_nobody_answers_go_to_the_office_mailbox() {
        let (mut sb, now) = board(&["201", "202"]);
        sb.set_config(Config {
            outside: true,
            voicemail: true,
            office_mailbox: Some("201".into()),
            ..Config::default()
        });
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, None);
        drain(&mut sb);
        sb.handle_timeout(now + Config::default().ring_timeout);
        let acts = drain(&mut sb);
        for ext in ["201", "202"] {
            assert!(acts.contains(&Action::Ended {
                to: ext.into(),
                call: 1,
                reason: EndReason::NoAnswer
            }));
        }
        assert!(acts.contains(&Action::ToVoicemail {
            call: 1,
            caller: trunk.clone().into(),
            mailbox: "201".into()
        }));
        assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
        // Nobody free: straight to the mailbox.
        sb.handle_dial(now, "201", 2, "202");
        drain(&mut sb);
        let t2 = tin(2, "bob");
        sb.handle_inbound(now, t2.clone(), 2, None);
        let acts = drain(&mut sb);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::ToVoicemail { caller, mailbox, .. } if *caller == t2 && mailbox == "201"
        )));
        sb.handle_voicemail_done(now, 3);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: t2.clone().into(),
            call: 3,
            reason: EndReason::Hangup
        }));
        assert!(!sb.has_line(&t2));
    }

    fn fwd(sb: &mut Switchboard, ext: &str, always: Option<&str>, no_answer: Option<&str>) {
        sb.set_settings(
            ext,
            LineSettings {
                forward_always: always.map(str::to_string),
                forward_no_answer: no_answer.map(str::to_string),
                ..LineSettings::default()
            },
        );
    }

    #[test]
    fn forwards_to_outside_numbers_dial_out_or_redirect_the_outside_caller() {
        let (mut sb, now) = board(&["201", "202"]);
        // *72 takes an outside number when the office has a directory.
        sb.handle_dial(now, "202", 1, "*72김민준");
        drain(&mut sb);
        assert_eq!(
            sb.settings("202").and_then(|s| s.forward_always.clone()),
            Some("김민준".to_string())
        );
        // An internal caller is taken out through the directory.
        sb.handle_dial(now, "201", 2, "202");
        let acts = drain(&mut sb);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Ring { callee, from, .. } if callee.shown() == "김민준" && callee.is_trunk() && from == "201"
        )));
        sb.handle_hangup(now, "201", 1).expect("cancel");
        drain(&mut sb);
        // An outside caller is sent there directly (client-side forwarding).
        let trunk = tin(7, "alice");
        sb.handle_inbound(now, trunk.clone(), 7, Some("202"));
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Redirect {
            caller: trunk.clone(),
            req: Some(7),
            call: None,
            to: "김민준".into()
        }));
        assert_eq!(record(&acts).map(|r| r.outcome), Some(Outcome::Redirected));
        assert!(!sb.has_line(&trunk));
        // On no answer, likewise.
        fwd(&mut sb, "202", None, Some("bob"));
        let t2 = tin(8, "alice");
        sb.handle_inbound(now, t2.clone(), 8, Some("202"));
        drain(&mut sb);
        sb.handle_timeout(now + Config::default().ring_timeout);
        let acts = drain(&mut sb);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Redirect { caller, req: None, call: Some(_), to } if *caller == t2 && to == "bob"
        )));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Ended { to, reason: EndReason::Forwarded, .. } if to == "202"
        )));
        assert!(sb.lines.values().all(|l| l.call.is_none()) && sb.trunks.is_empty());
        // An internal caller rings out after the no-answer time.
        sb.handle_dial(now, "201", 9, "202");
        let id = match &drain(&mut sb)[0] {
            Action::Ringing { call, .. } => *call,
            other => panic!("{other:?}"),
        };
        sb.handle_timeout(now + Config::default().ring_timeout * 2);
        let acts = drain(&mut sb);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Ring { callee, call, .. } if *call == id && callee.shown() == "bob"
        )));
        // The caller is not picked up by *8 while it rings outside.
        sb.handle_dial(now, "202", 10, "*8");
        assert!(drain(&mut sb)
            .iter()
            .any(|a| matches!(a, Action::DialFailed { .. })));
    }

    #[test]
    fn a_station_is_transferred_to_an_outside_number_or_given_back() {
        let (mut sb, now) = board(&["201", "202"]);
        sb.handle_dial(now, "201", 1, "202");
        sb.handle_answer(now, "202", 1).expect("answer");
        drain(&mut sb);
        // 202 hands 201 on to an outside number: a leg from 201 rings out.
        sb.handle_transfer(now, "202", 2, 1, "bob")
            .expect("transfer");
        let acts = drain(&mut sb);
        let (leg, trunk) = acts
            .iter()
            .find_map(|a| match a {
                Action::Ring { callee, call, from } if from == "201" => {
                    Some((*call, callee.clone()))
                }
                _ => None,
            })
            .expect("a leg rings out");
        assert!(trunk.is_trunk());
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Transferring { target, .. } if target == "bob"
        )));
        // Busy out there: the call comes back to 202.
        sb.handle_outside_failed(now, leg, FailReason::Busy);
        let acts = drain(&mut sb);
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::TransferFailed { to, call: 1, .. } if to == "202"
        )));
        assert!(sb.call(1).is_some());
        assert!(!sb.has_line(&trunk));
        // Again, and it answers: 201 continues with the outside party.
        sb.handle_transfer(now, "202", 3, 1, "bob")
            .expect("transfer");
        let acts = drain(&mut sb);
        let (leg, trunk) = acts
            .iter()
            .find_map(|a| match a {
                Action::Ring { callee, call, .. } if callee.is_trunk() => {
                    Some((*call, callee.clone()))
                }
                _ => None,
            })
            .expect("a leg rings out");
        sb.handle_outside_ringing(leg, 1000 + leg);
        sb.answer(now, &trunk, leg).expect("answer");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Replaced {
            to: "201".into(),
            old: 1,
            new: leg,
            peer: "bob".into()
        }));
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::Transferred
        }));
        assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
    }

    fn rung(acts: &[Action]) -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Ring { callee, .. } => Some(callee.shown().to_string()),
                _ => None,
            })
            .collect()
    }

    /// A board with the ring group `600` (`members`, in turn `step` each
    /// or all at once) and voicemail as asked.
    fn group_board(
        lines: &[&str],
        members: &[&str],
        step: Option<Duration>,
        mailbox: Option<&str>,
        voicemail: bool,
    ) -> (Switchboard, Instant) {
        let (mut sb, now) = board(lines);
        sb.set_config(Config {
            outside: true,
            voicemail,
            groups: vec![RingGroup {
                ext: "600".into(),
                name: "Sales".into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                hunt_step: step,
                mailbox: mailbox.map(str::to_string),
            }],
            ..Config::default()
        });
        (sb, now)
    }

    #[test]
    fn a_transfer_to_a_groups_extension_says_so_and_keeps_the_call() {
        let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "203"], None, None, false);
        sb.handle_dial(now, "201", 1, "202");
        sb.handle_answer(now, "202", 1).expect("answer");
        drain(&mut sb);
        sb.handle_transfer(now, "202", 7, 1, "600")
            .expect("refused cleanly");
        assert!(drain(&mut sb).contains(&Action::TransferFailed {
            to: "202".into(),
            req: 7,
            call: 1,
            reason: FailReason::UnknownNumber,
            note: Some(GROUP_TRANSFER_REFUSED),
        }));
        assert!(sb.call(1).is_some());
        sb.handle_consult(now, "202", 8, 1, "600")
            .expect("refused cleanly");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::TransferFailed {
                note: Some(GROUP_TRANSFER_REFUSED),
                ..
            }
        )));
    }

    #[test]
    fn a_hunt_groups_extension_rings_its_members_in_turn() {
        let step = Duration::from_secs(5);
        let (mut sb, now) = group_board(
            &["201", "202", "203"],
            &["202", "203"],
            Some(step),
            None,
            false,
        );
        sb.handle_dial(now, "201", 7, "600");
        let acts = drain(&mut sb);
        // The caller hears the group's extension ring, not an outside call.
        assert!(acts.contains(&Action::Ringing {
            caller: "201".into(),
            req: 7,
            call: 1,
            callee: "600".into()
        }));
        assert_eq!(rung(&acts), vec!["202"]);
        // Nothing more before the step is over.
        sb.handle_timeout(now + step - Duration::from_millis(1));
        assert!(drain(&mut sb).is_empty());
        assert_eq!(sb.poll_timeout(), Some(now + step));
        sb.handle_timeout(now + step);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::NoAnswer
        }));
        assert_eq!(rung(&acts), vec!["203"]);
        assert_eq!(sb.poll_timeout(), Some(now + step * 2));
        // 202 no longer rings for it: answering is refused.
        assert_eq!(
            sb.handle_answer(now + step, "202", 1),
            Err(CallError::NotYours)
        );
        sb.handle_answer(now + step, "203", 1).expect("answer");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Connected {
            call: 1,
            caller: "201".into(),
            callee: "203".into()
        }));
        sb.handle_hangup(now + step * 3, "201", 1).expect("hang up");
        let acts = drain(&mut sb);
        let r = record(&acts).expect("record");
        assert_eq!((r.callee.as_str(), r.outcome), ("203", Outcome::Answered));
    }

    #[test]
    fn a_ring_all_groups_extension_rings_every_member_and_the_first_answer_wins() {
        let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "203"], None, None, false);
        sb.handle_dial(now, "201", 1, "600");
        let acts = drain(&mut sb);
        assert_eq!(rung(&acts), vec!["202", "203"]);
        sb.handle_answer(now, "203", 1).expect("answer");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::AnsweredElsewhere
        }));
        assert!(acts.contains(&Action::Connected {
            call: 1,
            caller: "201".into(),
            callee: "203".into()
        }));
        assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
    }

    #[test]
    fn a_hunt_skips_busy_offline_and_dnd_members_then_goes_to_the_groups_mailbox() {
        let step = Duration::from_secs(4);
        let (mut sb, now) = group_board(
            &["201", "202", "203", "204", "205", "206", "209"],
            &["202", "203", "204", "205"],
            Some(step),
            Some("209"),
            true,
        );
        sb.handle_dial(now, "202", 1, "*78"); // do not disturb
        sb.handle_line_down(now, "203");
        sb.handle_dial(now, "204", 2, "206"); // busy in a call
        drain(&mut sb);
        sb.handle_dial(now, "201", 3, "600");
        let acts = drain(&mut sb);
        assert_eq!(rung(&acts), vec!["205"]);
        let id = sb
            .calls()
            .find(|c| c.caller == "201")
            .map(|c| c.id)
            .expect("the group call");
        // 205 does not answer and nobody else is free: the group's mailbox.
        sb.handle_timeout(now + step);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::ToVoicemail {
            call: id,
            caller: "201".into(),
            mailbox: "209".into()
        }));
        assert!(acts.contains(&Action::Ended {
            to: "205".into(),
            call: id,
            reason: EndReason::NoAnswer
        }));
    }

    #[test]
    fn nobody_answering_a_group_without_a_mailbox_tells_the_caller() {
        let step = Duration::from_secs(3);
        // With voicemail on, a group without a mailbox still ends
        // unanswered: the members' own mailboxes do not take it.
        let (mut sb, now) = group_board(
            &["201", "202", "203"],
            &["202", "203"],
            Some(step),
            None,
            true,
        );
        sb.handle_dial(now, "201", 1, "600");
        drain(&mut sb);
        sb.handle_timeout(now + step);
        sb.handle_timeout(now + step * 2);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: 1,
            reason: EndReason::NoAnswer
        }));
        assert!(!acts.iter().any(|a| matches!(a, Action::ToVoicemail { .. })));
        assert_eq!(record(&acts).map(|r| r.outcome), Some(Outcome::NoAnswer));
        assert_eq!(sb.calls().count(), 0);
    }

    #[test]
    fn a_group_with_nobody_free_is_busy_unreachable_or_its_mailbox() {
        // Every member busy: busy.
        let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "201"], None, None, false);
        sb.handle_dial(now, "202", 1, "203");
        drain(&mut sb);
        // The caller is a member: it does not ring itself.
        sb.handle_dial(now, "201", 2, "600");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::DialFailed {
            caller: "201".into(),
            req: 2,
            reason: FailReason::Busy
        }));
        assert_eq!(record(&acts).map(|r| r.callee.as_str()), Some("600"));
        // Members that are not stations here: unreachable.
        let (mut sb, now) = group_board(&["201"], &["298", "299"], None, None, false);
        sb.handle_dial(now, "201", 1, "600");
        assert!(drain(&mut sb).contains(&Action::DialFailed {
            caller: "201".into(),
            req: 1,
            reason: FailReason::Unreachable
        }));
        // With a mailbox: straight there.
        let (mut sb, now) = group_board(&["201", "202", "209"], &["202"], None, Some("209"), true);
        sb.handle_line_down(now, "202");
        sb.handle_dial(now, "201", 1, "600");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::ToVoicemail {
            call: 1,
            caller: "201".into(),
            mailbox: "209".into()
        }));
    }

    #[test]
    fn an_outside_caller_may_dial_a_groups_extension() {
        let (mut sb, now) = group_board(&["202", "203"], &["202", "203"], None, None, false);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, Some("600"));
        let acts = drain(&mut sb);
        assert_eq!(rung(&acts), vec!["202", "203"]);
        sb.handle_answer(now, "202", 1).expect("answer");
        assert!(drain(&mut sb).contains(&Action::Connected {
            call: 1,
            caller: trunk.clone().into(),
            callee: "202".into()
        }));
        // Nobody free: refused, and the trunk line is gone.
        let t2 = tin(2, "bob");
        sb.handle_line_down(now, "203");
        sb.handle_inbound(now, t2.clone(), 2, Some("600"));
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::DialFailed {
            caller: t2.clone().into(),
            req: 2,
            reason: FailReason::Busy
        }));
        assert!(!sb.has_line(&t2));
    }

    #[test]
    fn a_hunt_group_rings_its_members_in_turn() {
        let (mut sb, now) = board(&["201", "202", "203", "204"]);
        let step = Duration::from_secs(5);
        sb.set_config(Config {
            outside: true,
            reception: vec!["202".into(), "203".into(), "201".into(), "204".into()],
            hunt_step: Some(step),
            ..Config::default()
        });
        sb.handle_dial(now, "201", 1, "*78"); // 201 does not want calls
        drain(&mut sb);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, None);
        let rung = |acts: &[Action]| -> Vec<String> {
            acts.iter()
                .filter_map(|a| match a {
                    Action::Ring { callee, .. } => Some(callee.shown().to_string()),
                    _ => None,
                })
                .collect()
        };
        let id = 1;
        assert_eq!(rung(&drain(&mut sb)), vec!["202"]);
        // 202 does not answer in time: 203's turn.
        sb.handle_timeout(now + step);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: id,
            reason: EndReason::NoAnswer
        }));
        assert_eq!(rung(&acts), vec!["203"]);
        // 203 declines: 201 is on do-not-disturb, so 204 rings at once.
        sb.handle_reject(now + step, "203", id).expect("reject");
        assert_eq!(rung(&drain(&mut sb)), vec!["204"]);
        sb.handle_answer(now + step, "204", id).expect("answer");
        assert!(drain(&mut sb).contains(&Action::Connected {
            call: id,
            caller: trunk.clone().into(),
            callee: "204".into()
        }));
        assert!(["202", "203"]
            .iter()
            .all(|e| sb.lines.get(*e).is_some_and(|l| l.call.is_none())));
        // Nobody left to try: the call ends unanswered.
        let t2 = tin(2, "bob");
        sb.handle_inbound(now, t2.clone(), 2, None);
        drain(&mut sb);
        sb.handle_timeout(now + step * 2);
        sb.handle_timeout(now + step * 3);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: t2.clone().into(),
            call: 2,
            reason: EndReason::NoAnswer
        }));
    }

    #[test]
    fn an_outside_party_is_handed_on_through_the_directory() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
        sb.handle_answer(now, "202", 1).expect("answer");
        drain(&mut sb);
        // To an extension that can take it: the far end calls OFFICE/203.
        sb.handle_transfer(now, "202", 2, 1, "203")
            .expect("transfer");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::HandOff {
            dir_call: trunk.dir_call(),
            line: trunk.clone(),
            call: 1,
            to: "203".into(),
            internal: true,
            by: "202".into(),
            joins: None,
        }));
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: 1,
            reason: EndReason::Transferred
        }));
        assert!(!sb.has_line(&trunk) && sb.call(1).is_none());
        // To a busy extension: refused, and the call stays.
        let t2 = tin(2, "bob");
        sb.handle_inbound(now, t2.clone(), 2, Some("202"));
        sb.handle_answer(now, "202", 2).expect("answer");
        sb.handle_dial(now, "201", 3, "203");
        drain(&mut sb);
        sb.handle_transfer(now, "202", 4, 2, "203")
            .expect("refused cleanly");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::TransferFailed {
                reason: FailReason::Busy,
                ..
            }
        )));
        assert!(sb.call(2).is_some());
        // To an outside number.
        sb.handle_transfer(now, "202", 5, 2, "carol")
            .expect("transfer");
        assert!(drain(&mut sb).contains(&Action::HandOff {
            dir_call: t2.dir_call(),
            line: t2.clone(),
            call: 2,
            to: "carol".into(),
            internal: false,
            by: "202".into(),
            joins: None,
        }));
    }

    #[test]
    fn a_station_handed_on_by_the_far_end_calls_the_new_number() {
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 1, "bob");
        sb.handle_outside_ringing(1, 1000 + 1);
        let trunk = tout(1, "bob");
        sb.answer(now, &trunk, 1).expect("answer");
        drain(&mut sb);
        sb.handle_outside_handoff(now, 1, Number::parse("carol").expect("number"));
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Replaced {
            to: "201".into(),
            old: 1,
            new: 2,
            peer: "carol".into()
        }));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Ring { callee, call: 2, from } if callee.shown() == "carol" && from == "201"
        )));
        assert_eq!(record(&acts).map(|r| r.callee.as_str()), Some("bob"));
        assert!(!sb.has_line(&trunk));
        assert_eq!(sb.lines.get("201").and_then(|l| l.call), Some(2));
    }
    /// alice (outside) talks to 202, which consults 203; 203 answers.
    /// Returns (board, now, alice's line, the consultation's id).
    fn consulting_with_outside_held() -> (Switchboard, Instant, TrunkLine, CallId) {
        let (mut sb, now) = board(&["201", "202", "203"]);
        let trunk = tin(1, "alice");
        sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
        sb.handle_answer(now, "202", 1).expect("answer");
        sb.handle_consult(now, "202", 2, 1, "203").expect("consult");
        let c2 = sb
            .lines
            .get("202")
            .and_then(|l| l.consult)
            .expect("consulting");
        sb.handle_answer(now, "203", c2).expect("203 answers");
        drain(&mut sb);
        (sb, now, trunk, c2)
    }

    #[test]
    fn the_held_call_failing_leaves_the_consultation_as_the_call() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        sb.handle_dial(now, "201", 1, "202");
        let id = drain(&mut sb)
            .iter()
            .find_map(|a| match a {
                Action::Ring { call, .. } => Some(*call),
                _ => None,
            })
            .expect("rings");
        sb.handle_answer(now, "202", id).expect("answer");
        sb.handle_consult(now, "202", 2, id, "203")
            .expect("consult");
        let c2 = sb
            .lines
            .get("202")
            .and_then(|l| l.consult)
            .expect("consulting");
        drain(&mut sb);
        sb.handle_media_failed(now, id);
        drain(&mut sb);
        assert_eq!(sb.lines.get("202").and_then(|l| l.call), Some(c2));
        assert_eq!(sb.call(c2).and_then(|c| c.consult_of), None);
    }

    #[test]
    fn the_transferred_call_failing_stops_the_target_ringing() {
        let (mut sb, now) = board(&["201", "202", "203"]);
        sb.handle_dial(now, "201", 1, "202");
        let id = drain(&mut sb)
            .iter()
            .find_map(|a| match a {
                Action::Ring { call, .. } => Some(*call),
                _ => None,
            })
            .expect("rings");
        sb.handle_answer(now, "202", id).expect("answer");
        sb.handle_transfer(now, "202", 2, id, "203")
            .expect("transfer");
        let leg = sb.call(id).and_then(|c| c.transfer.clone()).expect("leg").1;
        drain(&mut sb);
        sb.handle_media_failed(now, id);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "203".into(),
            call: leg,
            reason: EndReason::Cancelled,
        }));
        assert!(sb.call(leg).is_none());
        // And the other way: the ringing leg failing gives the call back.
        let (mut sb, now) = board(&["201", "202", "203"]);
        sb.handle_dial(now, "201", 1, "202");
        let id = drain(&mut sb)
            .iter()
            .find_map(|a| match a {
                Action::Ring { call, .. } => Some(*call),
                _ => None,
            })
            .expect("rings");
        sb.handle_answer(now, "202", id).expect("answer");
        sb.handle_transfer(now, "202", 2, id, "203")
            .expect("transfer");
        let leg = sb.call(id).and_then(|c| c.transfer.clone()).expect("leg").1;
        drain(&mut sb);
        sb.handle_media_failed(now, leg);
        drain(&mut sb);
        assert!(sb.call(id).is_some_and(|c| c.transfer.is_none()));
    }

    #[test]
    fn an_attended_transfer_hands_an_outside_party_into_the_consultation() {
        let (mut sb, now, trunk, c2) = consulting_with_outside_held();
        sb.handle_consult_complete(now, "202", 3).expect("complete");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::HandOff {
            dir_call: trunk.dir_call(),
            line: trunk.clone(),
            call: 1,
            to: "203".into(),
            internal: true,
            by: "202".into(),
            joins: Some(c2),
        }));
        // 202 stays with 203 until alice arrives.
        assert_eq!(sb.lines.get("202").and_then(|l| l.call), Some(c2));
        assert!(sb.call(1).is_none());
        // alice calls OFFICE/203 with the hand-off: she takes 202's place.
        let back = tin(7, "alice");
        let h = HandedOn {
            by: "202".into(),
            joins: Some(c2),
        };
        sb.handle_handed_on(now, back.clone(), 7, "203", h);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "202".into(),
            call: c2,
            reason: EndReason::Transferred
        }));
        let new = match acts.iter().find(|a| matches!(a, Action::Replaced { .. })) {
            Some(Action::Replaced { to, old, new, peer }) => {
                assert_eq!((to.shown(), *old, peer.as_str()), ("203", c2, "alice"));
                *new
            }
            _ => panic!("{acts:?}"),
        };
        assert!(acts.contains(&Action::Connected {
            call: new,
            caller: back.clone().into(),
            callee: "203".into()
        }));
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Ringing { caller, req: 7, .. } if caller == &back)));
        assert_eq!(sb.lines.get("202").and_then(|l| l.call), None);
        assert_eq!(sb.lines.get("203").and_then(|l| l.call), Some(new));
        // Two records: the consultation and alice's first call.
        assert!(record(&acts).is_some());
    }

    #[test]
    fn a_handed_on_caller_comes_back_when_the_target_does_not_answer() {
        let (mut sb, now) = board(&["202", "203"]);
        let h = || HandedOn {
            by: "202".into(),
            joins: None,
        };
        // 203 does not answer: 202 rings.
        let t1 = tin(1, "alice");
        sb.handle_handed_on(now, t1.clone(), 1, "203", h());
        let acts = drain(&mut sb);
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Ring { callee, .. } if callee == "203")));
        let id = sb.lines.get("203").and_then(|l| l.call).expect("ringing");
        sb.handle_timeout(now + Duration::from_secs(60));
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "203".into(),
            call: id,
            reason: EndReason::NoAnswer
        }));
        assert!(acts.contains(&Action::Ring {
            callee: "202".into(),
            call: id,
            from: "alice".into()
        }));
        sb.handle_answer(now, "202", id).expect("202 takes it back");
        sb.handle_hangup(now, "202", id).expect("hang up");
        drain(&mut sb);
        // 203 declines: 202 rings at once.
        let t2 = tin(2, "bob");
        sb.handle_handed_on(now, t2.clone(), 2, "203", h());
        let id = sb.lines.get("203").and_then(|l| l.call).expect("ringing");
        drain(&mut sb);
        sb.handle_reject(now, "203", id).expect("decline");
        assert!(drain(&mut sb).contains(&Action::Ring {
            callee: "202".into(),
            call: id,
            from: "bob".into()
        }));
        sb.hangup(now, &Line::from(t2.clone()), id)
            .expect("bob gives up");
        drain(&mut sb);
        // 203 is busy by the time the caller arrives: 202 rings directly.
        sb.handle_dial(now, "203", 3, "alice");
        drain(&mut sb);
        let t3 = tin(3, "carol");
        sb.handle_handed_on(now, t3.clone(), 4, "203", h());
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::Ring { callee, from, .. } if callee == "202" && from == "carol"
        )));
    }

    #[test]
    fn an_attended_transfer_to_an_outside_number_ends_the_consultation_first() {
        // Outside party held: it is handed on to the number directly.
        let (mut sb, now) = board(&["202"]);
        let alice = tin(1, "alice");
        sb.handle_inbound(now, alice.clone(), 1, Some("202"));
        sb.handle_answer(now, "202", 1).expect("answer");
        sb.handle_consult(now, "202", 2, 1, "carol")
            .expect("consult");
        let acts = drain(&mut sb);
        let carol = match acts
            .iter()
            .find(|a| matches!(a, Action::Ring { call: 2, .. }))
        {
            Some(Action::Ring { callee, .. }) if callee.shown() == "carol" => callee.clone(),
            _ => panic!("{acts:?}"),
        };
        sb.handle_outside_ringing(2, 1000 + 2);
        sb.answer(now, &carol, 2).expect("carol answers");
        drain(&mut sb);
        sb.handle_consult_complete(now, "202", 3).expect("complete");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: carol.clone(),
            call: 2,
            reason: EndReason::Hangup
        }));
        assert!(acts.contains(&Action::HandOff {
            dir_call: alice.dir_call(),
            line: alice,
            call: 1,
            to: "carol".into(),
            internal: false,
            by: "202".into(),
            joins: None,
        }));
        assert!(sb.calls().next().is_none());
        assert_eq!(sb.lines.get("202").and_then(|l| l.call), None);

        // An extension held: its call to the number is placed here.
        let (mut sb, now) = board(&["201", "202"]);
        sb.handle_dial(now, "201", 1, "202");
        sb.handle_answer(now, "202", 1).expect("answer");
        sb.handle_consult(now, "202", 2, 1, "carol")
            .expect("consult");
        let carol = tout(2, "carol");
        sb.handle_outside_ringing(2, 1000 + 2);
        sb.answer(now, &carol, 2).expect("carol answers");
        drain(&mut sb);
        sb.handle_consult_complete(now, "202", 3).expect("complete");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: carol,
            call: 2,
            reason: EndReason::Hangup
        }));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Ring { callee, from, .. } if callee.shown() == "carol" && from == "201"
        )));
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Transferring { to, .. } if to == "202")));
    }

    #[test]
    fn short_codes_work_as_transfer_targets() {
        let (mut sb, now) = board(&["201", "202"]);
        sb.set_speed_dial("*5", Some("carol"));
        let alice = tin(1, "alice");
        sb.handle_inbound(now, alice.clone(), 1, Some("202"));
        sb.handle_answer(now, "202", 1).expect("answer");
        drain(&mut sb);
        sb.handle_transfer(now, "202", 2, 1, "*5")
            .expect("transfer");
        assert!(drain(&mut sb).iter().any(|a| matches!(
            a,
            Action::HandOff { to, internal: false, .. } if to == "carol"
        )));
    }
}
