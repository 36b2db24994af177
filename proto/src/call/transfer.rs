//! Handing a call on: blind transfer, consultation and attended transfer
//! (to an extension or an outside number), an outside party handed on
//! through the directory calling back in, and the call coming back when
//! the target does not take it.

use std::time::Instant;

use super::{
    Action, Call, CallError, CallState, HandedOn, Line, Outcome, Switchboard, Target, TrunkLine,
    GROUP_TRANSFER_REFUSED,
};
use crate::msg::{CallId, EndReason, FailReason, ReqId};

impl Switchboard {
    /// Whether `by` may hand on (or consult from) its call `id`: the call
    /// is `by`'s and answered, and no other hand-off is under way (one at a
    /// time: not from a consultation, nor while one is under way on this
    /// line). Returns the other end.
    pub(super) fn may_hand_off(&self, by: &str, id: CallId) -> Result<Line, CallError> {
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
    pub(super) fn expand_short_code(&self, target: &str) -> String {
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
    pub(super) fn complete_towards_outside(
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
    pub(super) fn take_over_consultation(
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
    pub(super) fn recall(&mut self, now: Instant, id: CallId) -> bool {
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
    pub(super) fn abort_transfer_leg(
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

    /// Why a transfer to `target` failed, when "unknown number" would
    /// mislead: a ring group's extension is known, but a transfer (or a
    /// consultation) rings single extensions only.
    pub(super) fn group_refusal(&self, target: &str, reason: FailReason) -> Option<&'static str> {
        (reason == FailReason::UnknownNumber && self.config.groups.iter().any(|g| g.ext == target))
            .then_some(GROUP_TRANSFER_REFUSED)
    }
}
