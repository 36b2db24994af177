//! The switchboard's decisions about outside calls: what the directory
//! says about a trunk line's call (it rings, was answered, ended, was
//! handed on), when a call placed from here falls back to the directory's
//! relay, which calls coming in are parties an extension here handed on,
//! and when the directory must be told that a call ended here. The shell
//! only carries these out (directory requests, the forwarder).

use std::time::{Duration, Instant};

use super::{
    end_reason_of, outcome_of, Action, CallState, HandedOn, Line, Outcome, Switchboard, TrunkId,
    TrunkLine,
};
use crate::msg::{CallId, EndReason, FailReason};
use crate::number::Number;

/// How long a handed-on party has to call back in.
pub const HANDED_ON_WAIT: Duration = Duration::from_secs(30);

/// Most hand-offs waiting at once; the oldest is forgotten first.
const MAX_HANDED: usize = 1024;

/// A trunk line's outside call, as far as the directory is concerned.
#[derive(Debug, Default, Clone)]
pub(super) struct Outside {
    /// The directory's id of the call, once known.
    pub(super) dir_call: Option<u64>,
    /// The directory already knows the call is over (nothing to hang up).
    pub(super) dir_ended: bool,
    /// Answered, nothing heard from the far end yet: ask for the relay
    /// then.
    pub(super) fallback: Option<Instant>,
    /// A call placed because the far end handed our station on: the
    /// hand-off value to put in it.
    pub(super) follow: Option<u64>,
}

/// An outside party handed on to extension `to`.
#[derive(Debug, Clone)]
pub(super) struct Handed {
    /// The party's number: only it may use the hand-off.
    from: Number,
    to: String,
    back: HandedOn,
    until: Instant,
}

/// What the shell needs to know of an outside call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideCall {
    /// The trunk line standing for the far end.
    pub line: TrunkLine,
    /// The directory's id of the call, once known.
    pub dir_call: Option<u64>,
    /// For a call placed after the far end handed our station on: the
    /// hand-off value the directory gave.
    pub handoff: Option<u64>,
}

impl Switchboard {
    /// The outside side of call `id`, if it has a trunk line.
    pub fn outside_call(&self, id: CallId) -> Option<OutsideCall> {
        let line = self.calls.get(&id)?.trunk()?.clone();
        let o = &self.trunks.get(&line)?.outside;
        Some(OutsideCall {
            dir_call: o.dir_call,
            handoff: o.follow,
            line,
        })
    }

    /// The call whose trunk line is the directory's call `dir_call`.
    pub fn call_of_directory(&self, dir_call: u64) -> Option<CallId> {
        self.trunks
            .values()
            .find(|l| l.outside.dir_call == Some(dir_call))
            .and_then(|l| l.call)
    }

    fn outside_mut(&mut self, id: CallId) -> Option<&mut Outside> {
        let line = self.calls.get(&id)?.trunk()?.clone();
        self.trunks.get_mut(&line).map(|l| &mut l.outside)
    }

    /// The directory already knows that call `id` is over (it told us, or
    /// our hand-off or redirect ended it there).
    pub(super) fn directory_knows(&mut self, id: CallId) {
        if let Some(o) = self.outside_mut(id) {
            o.dir_ended = true;
            o.fallback = None;
        }
    }

    /// The directory already knows that the call of trunk line `t` is over
    /// (a hand-off ends it there). Returns the directory's id of the call.
    pub(super) fn directory_knows_line(&mut self, t: &TrunkLine) -> Option<u64> {
        let o = &mut self.trunks.get_mut(t)?.outside;
        o.dir_ended = true;
        o.fallback = None;
        o.dir_call
    }

    /// The far end of the outside call `id` rings; `dir_call` is the
    /// directory's id of the call.
    pub fn handle_outside_ringing(&mut self, id: CallId, dir_call: u64) {
        if let Some(o) = self.outside_mut(id) {
            o.dir_call = Some(dir_call);
            self.outside_rang(id);
        }
    }

    /// The far end of the outside call `id` placed from here answered
    /// (the directory's `dir_call`). With `fallback`, the call asks for
    /// the directory's relay ([`Action::Fallback`]) if nothing has come
    /// from the far end ([`Self::handle_outside_media`]) that long after.
    pub fn handle_outside_answered(
        &mut self,
        now: Instant,
        id: CallId,
        dir_call: u64,
        fallback: Option<Duration>,
    ) -> Result<(), super::CallError> {
        let call = self.calls.get(&id).ok_or(super::CallError::NoSuchCall)?;
        let Line::Trunk(trunk) = &call.callee else {
            return Err(super::CallError::NotYours);
        };
        let trunk = Line::Trunk(trunk.clone());
        self.answer(now, &trunk, id)?;
        if let Some(o) = self.outside_mut(id) {
            o.dir_call = Some(dir_call);
            o.fallback = fallback.map(|wait| now + wait);
        }
        Ok(())
    }

    /// Media came from the far end of the outside call `id`: it needs no
    /// relay.
    pub fn handle_outside_media(&mut self, id: CallId) {
        if let Some(o) = self.outside_mut(id) {
            o.fallback = None;
        }
    }

    /// Answering the outside call `id` at the directory failed: the call
    /// ends (the directory has ended it already).
    pub fn handle_outside_answer_failed(&mut self, now: Instant, id: CallId) {
        self.directory_knows(id);
        self.handle_media_failed(now, id);
    }

    /// The directory ended its call `dir_call` (the far end hung up, or
    /// the call failed there).
    pub fn handle_directory_ended(&mut self, now: Instant, dir_call: u64, reason: FailReason) {
        if let Some(id) = self.call_of_directory(dir_call) {
            self.trunk_gone(now, id, reason);
        }
    }

    /// The connection to the directory is gone: every outside call went
    /// with it.
    pub fn handle_uplink_down(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.trunks.values().filter_map(|l| l.call).collect();
        for id in ids {
            self.trunk_gone(now, id, FailReason::Unreachable);
        }
    }

    /// The far end of outside call `id` is gone: a call still ringing out
    /// fails, any other ends as if the far end hung up.
    fn trunk_gone(&mut self, now: Instant, id: CallId, reason: FailReason) {
        self.directory_knows(id);
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let ringing_out = call.callee.is_trunk() && matches!(call.state, CallState::Ringing { .. });
        if ringing_out {
            return self.handle_outside_failed(now, id, reason);
        }
        let Some(trunk) = call.trunk().cloned() else {
            return;
        };
        // Only refused for a call that is not the trunk's, which it is.
        let _ = self.hangup(now, &Line::Trunk(trunk), id);
    }

    /// The directory rings the office: a call from `trunk` (its
    /// [`TrunkId::In`] is the directory's call id, also the request the
    /// replies carry) for extension `ext`, or the office number. With
    /// `handoff`, the caller may be a party an extension here handed on
    /// ([`Action::HandOff`], [`Self::handle_handoff_sent`]): it is taken as
    /// such only once, in time, from the party's own number and for the
    /// extension it was sent to; otherwise it is an ordinary call.
    pub fn handle_offered(
        &mut self,
        now: Instant,
        trunk: TrunkLine,
        ext: Option<&str>,
        handoff: Option<u64>,
    ) {
        let TrunkId::In(req) = trunk.id else {
            return self.refuse_trunk(&trunk, 0);
        };
        let handed = handoff
            .and_then(|h| self.handed.remove(&h))
            .filter(|h| h.from == trunk.number && ext == Some(h.to.as_str()) && now < h.until);
        match handed {
            Some(h) => self.handle_handed_on(now, trunk, req, &h.to, h.back),
            None => self.handle_inbound(now, trunk, req, ext),
        }
    }

    /// The shell handed the outside party `from` on to extension `to`
    /// ([`Action::HandOff`] with `internal`) with the hand-off `value` it
    /// drew: the party may call back in with it until
    /// [`HANDED_ON_WAIT`] has passed.
    pub fn handle_handoff_sent(
        &mut self,
        now: Instant,
        value: u64,
        from: Number,
        to: &str,
        back: HandedOn,
    ) {
        if self.handed.len() >= MAX_HANDED {
            let oldest = self
                .handed
                .iter()
                .min_by_key(|(_, h)| h.until)
                .map(|(v, _)| *v);
            if let Some(v) = oldest {
                self.handed.remove(&v);
            }
        }
        self.handed.insert(
            value,
            Handed {
                from,
                to: to.to_string(),
                back,
                until: now + HANDED_ON_WAIT,
            },
        );
    }

    /// The far end of the directory's call `dir_call` handed our station
    /// on to `number` (claim 5): the station goes on in a new outside call
    /// (see [`Self::handle_outside_handoff`]), which carries `handoff`.
    pub fn handle_far_handoff(
        &mut self,
        now: Instant,
        dir_call: u64,
        number: Number,
        handoff: Option<u64>,
    ) -> Option<CallId> {
        let id = self.call_of_directory(dir_call)?;
        let new = self.handle_outside_handoff(now, id, number)?;
        if let Some(o) = self.outside_mut(new) {
            o.follow = handoff;
        }
        Some(new)
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
    pub(super) fn outside_rang(&mut self, id: CallId) {
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

    /// The earliest fallback or hand-off expiry.
    pub(super) fn trunk_deadline(&self) -> Option<Instant> {
        let fallbacks = self.trunks.values().filter_map(|l| l.outside.fallback);
        let handed = self.handed.values().map(|h| h.until);
        fallbacks.chain(handed).min()
    }

    /// Fallbacks that are due ask for the relay; expired hand-offs go.
    pub(super) fn trunk_timeouts(&mut self, now: Instant) {
        self.handed.retain(|_, h| now < h.until);
        let mut due: Vec<(CallId, u64)> = Vec::new();
        for l in self.trunks.values_mut() {
            if l.outside.fallback.is_some_and(|at| at <= now) {
                l.outside.fallback = None;
                if let (Some(call), Some(dir_call)) = (l.call, l.outside.dir_call) {
                    due.push((call, dir_call));
                }
            }
        }
        due.sort_unstable();
        for (call, dir_call) in due {
            self.actions.push_back(Action::Fallback { call, dir_call });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallRecord, Config, Outcome};
    use crate::msg::EndReason;

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

    fn number(n: &str) -> Number {
        Number::parse(n).expect("number")
    }

    fn incoming(dc: u64, from: &str) -> TrunkLine {
        TrunkLine {
            id: TrunkId::In(dc),
            number: number(from),
        }
    }

    fn records(acts: &[Action]) -> Vec<&CallRecord> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Record(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn hang_ups(acts: &[Action]) -> Vec<u64> {
        acts.iter()
            .filter_map(|a| match a {
                Action::HangUpOutside { dir_call, .. } => Some(*dir_call),
                _ => None,
            })
            .collect()
    }

    /// 201 calls bob; the directory's call 70 rings and is answered.
    fn answered_out(fallback: Option<Duration>) -> (Switchboard, Instant) {
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 1, "bob");
        drain(&mut sb);
        sb.handle_outside_ringing(1, 70);
        drain(&mut sb);
        sb.handle_outside_answered(now, 1, 70, fallback)
            .expect("answered");
        drain(&mut sb);
        (sb, now)
    }

    #[test]
    fn an_answered_outside_call_that_hears_nothing_falls_back_at_its_deadline() {
        let wait = Duration::from_secs(3);
        let (mut sb, now) = answered_out(Some(wait));
        assert_eq!(sb.poll_timeout(), Some(now + wait));
        // Not before.
        sb.handle_timeout(now + wait - Duration::from_millis(1));
        assert!(drain(&mut sb).is_empty());
        sb.handle_timeout(now + wait);
        assert_eq!(
            drain(&mut sb),
            vec![Action::Fallback {
                call: 1,
                dir_call: 70
            }]
        );
        // Once: no deadline is left, and the call goes on.
        assert_eq!(sb.poll_timeout(), None);
        sb.handle_timeout(now + wait * 2);
        assert!(drain(&mut sb).is_empty());
        assert!(sb.call(1).is_some());
    }

    #[test]
    fn an_outside_call_that_hears_its_far_end_never_falls_back() {
        let wait = Duration::from_secs(3);
        let (mut sb, now) = answered_out(Some(wait));
        sb.handle_outside_media(1);
        assert_eq!(sb.poll_timeout(), None);
        sb.handle_timeout(now + wait);
        assert!(drain(&mut sb).is_empty());
        // Relay by policy: at once; direct only: never.
        let (mut sb, now) = answered_out(Some(Duration::ZERO));
        assert_eq!(sb.poll_timeout(), Some(now));
        sb.handle_timeout(now);
        assert!(drain(&mut sb).contains(&Action::Fallback {
            call: 1,
            dir_call: 70
        }));
        let (sb, _) = answered_out(None);
        assert_eq!(sb.poll_timeout(), None);
    }

    #[test]
    fn a_call_that_ends_before_its_fallback_leaves_no_deadline() {
        let (mut sb, now) = answered_out(Some(Duration::from_secs(3)));
        sb.handle_hangup(now, "201", 1).expect("hang up");
        let acts = drain(&mut sb);
        // The directory is told, once.
        assert_eq!(hang_ups(&acts), vec![70]);
        assert_eq!(sb.poll_timeout(), None);
        assert!(sb.outside_call(1).is_none());
    }

    #[test]
    fn the_directory_ending_a_call_ends_it_here_without_hanging_up_again() {
        // Answered: the station hears the far end hung up.
        let (mut sb, now) = answered_out(Some(Duration::from_secs(3)));
        sb.handle_directory_ended(now, 70, FailReason::Unreachable);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: 1,
            reason: EndReason::Hangup
        }));
        assert!(hang_ups(&acts).is_empty());
        assert_eq!(sb.poll_timeout(), None);
        // Still ringing out: the dial fails with the directory's reason.
        let (mut sb, now) = board(&["201"]);
        sb.handle_dial(now, "201", 1, "bob");
        sb.handle_outside_ringing(1, 71);
        drain(&mut sb);
        sb.handle_directory_ended(now, 71, FailReason::Busy);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: 1,
            reason: EndReason::Busy
        }));
        assert!(hang_ups(&acts).is_empty());
        assert_eq!(records(&acts)[0].outcome, Outcome::Busy);
        // An unknown directory call changes nothing.
        sb.handle_directory_ended(now, 999, FailReason::Busy);
        assert!(drain(&mut sb).is_empty());
    }

    #[test]
    fn losing_the_directory_ends_every_outside_call_and_no_other() {
        let (mut sb, now) = board(&["201", "202", "203", "204"]);
        sb.handle_dial(now, "201", 1, "bob");
        sb.handle_outside_ringing(1, 70);
        sb.handle_offered(now, incoming(80, "alice"), Some("202"), None);
        sb.handle_answer(now, "202", 2).expect("answer");
        sb.handle_dial(now, "203", 3, "204");
        drain(&mut sb);
        sb.handle_uplink_down(now);
        let acts = drain(&mut sb);
        for (to, call) in [("201", 1), ("202", 2)] {
            assert!(
                acts.iter().any(
                    |a| matches!(a, Action::Ended { to: t, call: c, .. } if t == to && *c == call)
                ),
                "{to} is told: {acts:#?}"
            );
        }
        assert!(hang_ups(&acts).is_empty());
        assert_eq!(records(&acts).len(), 2);
        assert!(sb.call(3).is_some(), "the inside call goes on");
        assert!(sb.trunks.is_empty());
    }

    /// 202 has the outside caller alice (directory call 80) and hands her
    /// on to 203; the shell sent the hand-off with the value 77.
    fn handed_on(now: Instant) -> Switchboard {
        let (mut sb, _) = board(&["201", "202", "203"]);
        sb.handle_offered(now, incoming(80, "alice"), Some("202"), None);
        sb.handle_answer(now, "202", 1).expect("answer");
        drain(&mut sb);
        sb.handle_transfer(now, "202", 5, 1, "203")
            .expect("transfer");
        let acts = drain(&mut sb);
        let handoff = acts.iter().find_map(|a| match a {
            Action::HandOff {
                line,
                to,
                internal,
                by,
                dir_call,
                ..
            } => Some((line.clone(), to.clone(), *internal, by.clone(), *dir_call)),
            _ => None,
        });
        assert_eq!(
            handoff,
            Some((
                incoming(80, "alice"),
                "203".to_string(),
                true,
                "202".to_string(),
                Some(80)
            ))
        );
        // The directory ends the call itself (the far end is redirected).
        assert!(hang_ups(&acts).is_empty());
        sb.handle_handoff_sent(
            now,
            77,
            number("alice"),
            "203",
            HandedOn {
                by: "202".into(),
                joins: None,
            },
        );
        sb
    }

    #[test]
    fn a_handed_on_party_is_taken_back_once_in_time_from_its_own_number() {
        let now = Instant::now();
        let mut sb = handed_on(now);
        let later = now + Duration::from_secs(5);
        sb.handle_offered(later, incoming(81, "alice"), Some("203"), Some(77));
        drain(&mut sb);
        let call = sb.calls().next().expect("the call").clone();
        assert!(call.callee.is("203"));
        // Handed on: unanswered, it comes back to 202.
        assert_eq!(call.recall.as_deref(), Some("202"));
        // The value was used: the same again is an ordinary call.
        sb.handle_directory_ended(later, 81, FailReason::Unreachable);
        drain(&mut sb);
        assert_eq!(sb.calls().count(), 0);
        sb.handle_offered(later, incoming(82, "alice"), Some("203"), Some(77));
        drain(&mut sb);
        let again = sb.calls().next().expect("the call");
        assert_eq!(again.recall, None);
    }

    #[test]
    fn a_forged_misdirected_or_stale_hand_off_is_an_ordinary_call() {
        let now = Instant::now();
        // Another number.
        let mut sb = handed_on(now);
        sb.handle_offered(now, incoming(81, "mallory"), Some("203"), Some(77));
        drain(&mut sb);
        assert!(sb.calls().all(|c| c.recall.is_none()));
        // Another extension.
        let mut sb = handed_on(now);
        sb.handle_offered(now, incoming(81, "alice"), Some("201"), Some(77));
        drain(&mut sb);
        assert!(sb.calls().all(|c| c.recall.is_none()));
        // Too late: the hand-off's deadline is the switchboard's, and it
        // is forgotten then.
        let mut sb = handed_on(now);
        assert_eq!(sb.poll_timeout(), Some(now + HANDED_ON_WAIT));
        sb.handle_timeout(now + HANDED_ON_WAIT);
        assert_eq!(sb.poll_timeout(), None);
        sb.handle_offered(
            now + HANDED_ON_WAIT,
            incoming(81, "alice"),
            Some("203"),
            Some(77),
        );
        drain(&mut sb);
        assert!(sb.calls().all(|c| c.recall.is_none()));
    }

    #[test]
    fn a_far_end_hand_off_places_a_new_call_carrying_its_value() {
        let (mut sb, now) = answered_out(None);
        let new = sb
            .handle_far_handoff(now, 70, number("carol"), Some(55))
            .expect("a new call");
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Replaced {
            to: "201".into(),
            old: 1,
            new,
            peer: "carol".into()
        }));
        // The old call ended at the directory already.
        assert!(hang_ups(&acts).is_empty());
        let out = sb.outside_call(new).expect("outside");
        assert_eq!(out.line.number, number("carol"));
        assert_eq!((out.handoff, out.dir_call), (Some(55), None));
        // A hand-off of a call the switchboard does not have is ignored.
        assert_eq!(sb.handle_far_handoff(now, 999, number("dave"), None), None);
    }
}
