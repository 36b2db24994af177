//! Dialling and routing: a station's or an outside caller's dial, feature
//! codes first, then a ring group's extension, else forwarding followed to
//! the line that rings (or a mailbox, or an outside number placed through
//! the directory); calls arriving from outside; a ringing call's
//! no-answer forwarding.

use std::time::Instant;

use super::{
    outcome_of, Action, Call, CallRecord, CallState, Feature, GroupRing, Line, LineState, Outcome,
    Switchboard, Target, TrunkId, TrunkLine, MAX_FORWARD_HOPS,
};
use crate::msg::{CallId, EndReason, FailReason, ReqId};
use crate::number::Number;

impl Switchboard {
    /// The station `caller` dials `number` (already canonicalised).
    pub fn handle_dial(&mut self, now: Instant, caller: &str, req: ReqId, number: &str) {
        self.dial(now, &Line::station(caller), req, number)
    }

    /// `caller` (a station, or the trunk line of a call from outside)
    /// dials `number`.
    pub(super) fn dial(&mut self, now: Instant, caller: &Line, req: ReqId, number: &str) {
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
    pub(super) fn straight_to_mailbox(&mut self, req: ReqId, call: Call) {
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
    pub(super) fn outside(&self, number: &str) -> Option<Number> {
        let out = self.config.outside
            && !number.starts_with('*')
            && !self.config.is_extension_number(number)
            && !self.lines.contains_key(number)
            && !self.config.groups.iter().any(|g| g.ext == number);
        out.then(|| Number::parse(number).ok()).flatten()
    }

    /// Whether `number` would go out through the directory.
    pub(super) fn is_outside(&self, number: &str) -> bool {
        self.outside(number).is_some()
    }

    /// A new trunk line for the outside `number` in call `id`.
    pub(super) fn add_trunk_out(&mut self, id: CallId, number: Number) -> Line {
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
    pub(super) fn dial_out(&mut self, now: Instant, caller: &str, req: ReqId, number: Number) {
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

    /// Open the trunk line `trunk` for a call arriving from outside;
    /// `false` when it is not one placed from outside or is already in
    /// use.
    pub(super) fn add_trunk_in(&mut self, trunk: &TrunkLine) -> bool {
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
                outside: super::trunk::Outside {
                    dir_call: Some(dir_call),
                    ..super::trunk::Outside::default()
                },
                ..LineState::default()
            },
        );
        true
    }

    pub(super) fn refuse_trunk(&mut self, trunk: &TrunkLine, req: ReqId) {
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

    /// A ringing call timed out: move it to the callee's no-answer target
    /// if it has one that can ring. `true` when the call moved on.
    pub(super) fn forward_unanswered(&mut self, now: Instant, id: CallId) -> bool {
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

    /// Follow forwarding rules from `number` to the extension that should
    /// ring now. `rang` holds the extensions this call has already rung.
    /// With `outside_ok`, an outside number (dialled or a forward target)
    /// is a target too: the caller makes it an outside call.
    pub(super) fn route(
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
}
