//! The switchboard's vocabulary: lines (stations and trunk lines), its
//! tunables and ring groups, calls and their states, the actions the
//! shell carries out, outcomes, call records and errors.

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
    pub(super) fn is_extension_number(&self, n: &str) -> bool {
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
    /// [`Switchboard::set_settings`](super::Switchboard::set_settings)) if the new ones cannot be stored.
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
    /// [`Switchboard::handle_handed_on`](super::Switchboard::handle_handed_on).
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
    pub(super) fn new(
        id: CallId,
        caller: Line,
        callee: Line,
        started: Instant,
        state: CallState,
    ) -> Call {
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
/// calls back in: see [`Switchboard::handle_handed_on`](super::Switchboard::handle_handed_on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOn {
    /// The extension that handed the party on; the call comes back to it.
    pub by: String,
    /// For an attended transfer: the consultation between `by` and the
    /// target that the party takes over.
    pub joins: Option<CallId>,
}
