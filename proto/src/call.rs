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

use crate::msg::{CallId, EndReason, FailReason, ReqId};

/// Tunables of the switchboard.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a call rings before it ends with `NoAnswer`.
    pub ring_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ring_timeout: Duration::from_secs(30),
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
        caller: String,
        req: ReqId,
        call: CallId,
        callee: String,
    },
    /// Tell the caller its dial failed.
    DialFailed {
        caller: String,
        req: ReqId,
        reason: FailReason,
    },
    /// Ring the callee.
    Ring {
        callee: String,
        call: CallId,
        from: String,
    },
    /// The callee answered: set up media between the two and tell both.
    Connected {
        call: CallId,
        caller: String,
        callee: String,
    },
    /// Tell `to` that the call ended.
    Ended {
        to: String,
        call: CallId,
        reason: EndReason,
    },
    /// A call reached its final state.
    Record(CallRecord),
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
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Ringing { deadline: Instant },
    Answered { at: Instant },
}

/// A call in progress.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: CallId,
    pub caller: String,
    pub callee: String,
    pub started: Instant,
    pub state: CallState,
}

#[derive(Debug, Default)]
struct Line {
    online: bool,
    call: Option<CallId>,
}

/// The gateway's call table.
#[derive(Debug)]
pub struct Switchboard {
    config: Config,
    lines: HashMap<String, Line>,
    calls: BTreeMap<CallId, Call>,
    actions: VecDeque<Action>,
    next_id: CallId,
}

impl Switchboard {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            lines: HashMap::new(),
            calls: BTreeMap::new(),
            actions: VecDeque::new(),
            next_id: 1,
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
        if let Some(id) = line.call {
            self.finish_by(now, id, ext, EndReason::PeerLost);
        }
    }

    pub fn is_online(&self, ext: &str) -> bool {
        self.lines.get(ext).is_some_and(|l| l.online)
    }

    /// `caller` dials `number` (already canonicalised).
    pub fn handle_dial(&mut self, now: Instant, caller: &str, req: ReqId, number: &str) {
        let fail = |s: &mut Self, reason: FailReason, outcome: Option<Outcome>| {
            s.actions.push_back(Action::DialFailed {
                caller: caller.to_string(),
                req,
                reason,
            });
            if let Some(outcome) = outcome {
                s.actions.push_back(Action::Record(CallRecord {
                    call: None,
                    caller: caller.to_string(),
                    callee: number.to_string(),
                    started: now,
                    answered: None,
                    ended: now,
                    outcome,
                }));
            }
        };
        match self.lines.get(caller) {
            Some(l) if l.online => {
                if l.call.is_some() {
                    return fail(self, FailReason::AlreadyInCall, None);
                }
            }
            _ => return fail(self, FailReason::NotAllowed, None),
        }
        if number == caller {
            return fail(self, FailReason::SelfCall, None);
        }
        let Some(target) = self.lines.get(number) else {
            return fail(
                self,
                FailReason::UnknownNumber,
                Some(Outcome::UnknownNumber),
            );
        };
        if !target.online {
            return fail(self, FailReason::Unreachable, Some(Outcome::Unreachable));
        }
        if target.call.is_some() {
            return fail(self, FailReason::Busy, Some(Outcome::Busy));
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + self.config.ring_timeout;
        self.calls.insert(
            id,
            Call {
                id,
                caller: caller.to_string(),
                callee: number.to_string(),
                started: now,
                state: CallState::Ringing { deadline },
            },
        );
        for ext in [caller, number] {
            if let Some(l) = self.lines.get_mut(ext) {
                l.call = Some(id);
            }
        }
        self.actions.push_back(Action::Ringing {
            caller: caller.to_string(),
            req,
            call: id,
            callee: number.to_string(),
        });
        self.actions.push_back(Action::Ring {
            callee: number.to_string(),
            call: id,
            from: caller.to_string(),
        });
    }

    /// The callee takes the call.
    pub fn handle_answer(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get_mut(&id).ok_or(CallError::NoSuchCall)?;
        if call.callee != ext {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Ringing { .. }) {
            return Err(CallError::NotRinging);
        }
        call.state = CallState::Answered { at: now };
        self.actions.push_back(Action::Connected {
            call: id,
            caller: call.caller.clone(),
            callee: call.callee.clone(),
        });
        Ok(())
    }

    /// The callee declines a ringing call.
    pub fn handle_reject(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if call.callee != ext {
            return Err(CallError::NotYours);
        }
        if !matches!(call.state, CallState::Ringing { .. }) {
            return Err(CallError::NotRinging);
        }
        self.finish_by(now, id, ext, EndReason::Rejected);
        Ok(())
    }

    /// Either end hangs up (or the caller cancels while it rings).
    pub fn handle_hangup(&mut self, now: Instant, ext: &str, id: CallId) -> Result<(), CallError> {
        let call = self.calls.get(&id).ok_or(CallError::NoSuchCall)?;
        if call.caller != ext && call.callee != ext {
            return Err(CallError::NotYours);
        }
        let reason = match call.state {
            CallState::Ringing { .. } if call.caller == ext => EndReason::Cancelled,
            CallState::Ringing { .. } => EndReason::Rejected,
            CallState::Answered { .. } => EndReason::Hangup,
        };
        self.finish_by(now, id, ext, reason);
        Ok(())
    }

    /// Media for an answered call could not be set up: end it for both.
    pub fn handle_media_failed(&mut self, now: Instant, id: CallId) {
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
                    CallState::Ringing { .. } => Outcome::Failed,
                };
                self.close(now, call, outcome);
            }
        }
    }

    /// Time has passed: ring timeouts fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| matches!(c.state, CallState::Ringing { deadline } if deadline <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
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
                CallState::Answered { .. } => None,
            })
            .min()
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call(&self, id: CallId) -> Option<&Call> {
        self.calls.get(&id)
    }

    /// `by` ended the call: tell the other end and record it.
    fn finish_by(&mut self, now: Instant, id: CallId, by: &str, reason: EndReason) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        let other = if call.caller == by {
            &call.callee
        } else {
            &call.caller
        };
        self.actions.push_back(Action::Ended {
            to: other.clone(),
            call: id,
            reason,
        });
        let outcome = match (call.state, reason) {
            (CallState::Answered { .. }, _) => Outcome::Answered,
            (_, EndReason::Cancelled) => Outcome::Cancelled,
            (_, EndReason::Rejected) => Outcome::Rejected,
            (_, EndReason::PeerLost) if by == call.callee => Outcome::Unreachable,
            (_, EndReason::PeerLost) => Outcome::Cancelled,
            _ => Outcome::Failed,
        };
        self.close(now, call, outcome);
    }

    fn close(&mut self, now: Instant, call: Call, outcome: Outcome) {
        for ext in [&call.caller, &call.callee] {
            if let Some(l) = self.lines.get_mut(ext) {
                if l.call == Some(call.id) {
                    l.call = None;
                }
            }
        }
        let answered = match call.state {
            CallState::Answered { at } => Some(at),
            CallState::Ringing { .. } => None,
        };
        self.actions.push_back(Action::Record(CallRecord {
            call: Some(call.id),
            caller: call.caller,
            callee: call.callee,
            started: call.started,
            answered,
            ended: now,
            outcome,
        }));
    }
}
