//! Feature codes a station dials: forwarding, do-not-disturb, speed
//! dials and pick-up (`*8`).

use std::time::Instant;

use super::{Action, CallState, Feature, Line, Switchboard};
use crate::msg::{EndReason, FailReason, ReqId};

impl Switchboard {
    /// Apply a feature code dialled by `caller`.
    pub(super) fn feature(
        &mut self,
        now: Instant,
        caller: &str,
        req: ReqId,
        code: &str,
    ) -> Feature {
        // *8 is pick-up (as users know it from other PBXs); it is never a
        // short code.
        if code == "*8" {
            return self.pickup(now, caller, req);
        }
        // Speed dial: *0–*9 and **NN.
        if let Some(n) = self.speed_dials.get(code) {
            return Feature::Dial(n.clone());
        }
        let is_speed = code.len() == 2 && code.as_bytes()[1].is_ascii_digit()
            || code.starts_with("**")
                && code.len() == 4
                && code[2..].bytes().all(|b| b.is_ascii_digit());
        if is_speed {
            return Feature::Fail(FailReason::UnknownNumber);
        }
        let before = self
            .lines
            .get(caller)
            .map(|l| l.settings.clone())
            .unwrap_or_default();
        let mut settings = before.clone();
        let target = |prefix: &str| code.strip_prefix(prefix).filter(|t| !t.is_empty());
        let message = if let Some(t) = target("*72") {
            if !self.lines.contains_key(t) && !self.is_outside(t) {
                return Feature::Fail(FailReason::UnknownNumber);
            }
            settings.forward_always = Some(t.to_string());
            format!("all calls now go to {t}")
        } else if code == "*73" {
            settings.forward_always = None;
            "forwarding of all calls is off".to_string()
        } else if let Some(t) = target("*90") {
            if !self.lines.contains_key(t) && !self.is_outside(t) {
                return Feature::Fail(FailReason::UnknownNumber);
            }
            settings.forward_busy = Some(t.to_string());
            format!("calls while busy now go to {t}")
        } else if code == "*91" {
            settings.forward_busy = None;
            "forwarding when busy is off".to_string()
        } else if let Some(t) = target("*52") {
            if !self.lines.contains_key(t) && !self.is_outside(t) {
                return Feature::Fail(FailReason::UnknownNumber);
            }
            settings.forward_no_answer = Some(t.to_string());
            format!("unanswered calls now go to {t}")
        } else if code == "*53" {
            settings.forward_no_answer = None;
            "forwarding when unanswered is off".to_string()
        } else if code == "*78" {
            settings.dnd = true;
            "do not disturb is on".to_string()
        } else if code == "*79" {
            settings.dnd = false;
            "do not disturb is off".to_string()
        } else {
            return Feature::Fail(FailReason::UnknownFeature);
        };
        self.set_settings(caller, settings.clone());
        self.actions.push_back(Action::Settings {
            ext: caller.to_string(),
            settings,
            before,
        });
        self.actions.push_back(Action::Feature {
            caller: caller.to_string(),
            req,
            message,
        });
        Feature::Done
    }

    /// `*8`: take the longest-ringing call meant for another extension.
    fn pickup(&mut self, now: Instant, picker: &str, req: ReqId) -> Feature {
        let Some(id) = self
            .calls
            .values()
            .filter(|c| {
                matches!(c.state, CallState::Ringing { .. })
                    && !c.callee.is(picker)
                    && !c.caller.is(picker)
                    && !c.callee.is_trunk()
            })
            .min_by_key(|c| c.started)
            .map(|c| c.id)
        else {
            return Feature::Fail(FailReason::Unreachable);
        };
        if self.calls.get(&id).is_some_and(|c| !c.also.is_empty()) {
            // A group call: the whole group stops ringing.
            self.stop_group(id, &Line::station(picker));
            if let Some(l) = self.lines.get_mut(picker) {
                l.call = Some(id);
            }
            let Some(call) = self.calls.get_mut(&id) else {
                return Feature::Fail(FailReason::Unreachable);
            };
            call.state = CallState::Answered { at: now };
            call.rang.push(picker.to_string());
            let caller = call.caller.clone();
            self.actions.push_back(Action::PickedUp {
                picker: picker.to_string(),
                req,
                call: id,
                from: caller.shown().to_string(),
            });
            self.actions.push_back(Action::Connected {
                call: id,
                caller,
                callee: Line::station(picker),
            });
            return Feature::Done;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return Feature::Fail(FailReason::Unreachable);
        };
        let old = std::mem::replace(&mut call.callee, Line::station(picker));
        call.state = CallState::Answered { at: now };
        call.rang.push(picker.to_string());
        let caller = call.caller.clone();
        if let Some(l) = self.line_mut(&old) {
            if l.call == Some(id) {
                l.call = None;
            }
        }
        if let Some(l) = self.lines.get_mut(picker) {
            l.call = Some(id);
        }
        self.actions.push_back(Action::Ended {
            to: old,
            call: id,
            reason: EndReason::AnsweredElsewhere,
        });
        self.actions.push_back(Action::PickedUp {
            picker: picker.to_string(),
            req,
            call: id,
            from: caller.shown().to_string(),
        });
        self.actions.push_back(Action::Connected {
            call: id,
            caller,
            callee: Line::station(picker),
        });
        Feature::Done
    }
}
