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
//!
//! Its parts: `types` (lines, calls, actions, records, errors), `dial`
//! (dialling and routing), `groups` (ring groups and hunting), `transfer`
//! (blind and attended transfer, hand-offs), `features` (feature codes and
//! pick-up) and `trunk` (outside calls).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::msg::{CallId, EndReason, FailReason, LineSettings};
use crate::number::Number;

mod dial;
mod features;
mod groups;
mod transfer;
mod trunk;
mod types;

pub use trunk::{OutsideCall, HANDED_ON_WAIT};
pub use types::{
    Action, Call, CallError, CallRecord, CallState, Config, GroupRing, HandedOn, Line, Outcome,
    RingGroup, TrunkId, TrunkLine, GROUP_TRANSFER_REFUSED, MAX_FORWARD_HOPS,
};

#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trunk_tests;

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
