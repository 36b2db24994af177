//! Ring groups: reception (the office number) and the groups with an
//! extension of their own, rung all at once or in turn (hunt), members
//! dropping out, the first answer stopping the rest, and the mailbox that
//! takes what nobody answers.

use std::time::Instant;

use super::{outcome_of, Action, Call, CallRecord, CallState, GroupRing, Line, Switchboard};
use crate::msg::{CallId, EndReason, FailReason, ReqId};

impl Switchboard {
    /// `caller` (a station, or a trunk line for an outside caller) calls a
    /// ring group: its free members ring as `ring` says (the caller itself
    /// never rings); when none is free, the call goes to the group's
    /// mailbox, else fails busy (members exist but are taken) or
    /// unreachable.
    pub(super) fn ring_group(
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
    pub(super) fn advance_hunt(&mut self, now: Instant, id: CallId) -> bool {
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
    pub(super) fn ring_instead(&mut self, deadline: Instant, id: CallId, next: String) {
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

    /// Whether `ext` can ring now: online, in no call, not consulting, no
    /// do-not-disturb.
    pub(super) fn is_free(&self, ext: &str) -> bool {
        self.lines
            .get(ext)
            .is_some_and(|l| l.online && l.call.is_none() && l.consult.is_none() && !l.settings.dnd)
    }

    /// The mailbox for a group's calls nobody answers, if there is one
    /// that can take a message now.
    pub(super) fn group_mailbox(&self, ring: &GroupRing) -> Option<String> {
        ring.mailbox
            .clone()
            .filter(|mb| self.voicemail_on() && self.lines.contains_key(mb))
    }

    /// A member of a ringing group call drops out (declined, hung up, or
    /// went offline); the others keep ringing. `false` when `ext` is the
    /// only line still ringing for the call.
    pub(super) fn leave_group(&mut self, id: CallId, ext: &str) -> bool {
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
    pub(super) fn stop_group(&mut self, id: CallId, by: &Line) {
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
}
