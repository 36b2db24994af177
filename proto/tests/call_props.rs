//! Deterministic tests of the sans-IO call core (`keyline_proto::call`).
//!
//! Time is virtual: a base `Instant` taken once plus offsets. Nothing sleeps.
//! The unit scenarios pin the observable behaviour of each input; the
//! property tests drive random event sequences through a [`Switchboard`],
//! predict the exact actions of every step from the state visible before it,
//! and check the documented invariants after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keyline_proto::call::{
    Action, Call, CallError, CallRecord, CallState, Config, Outcome, Switchboard,
};
use keyline_proto::msg::{CallId, EndReason, FailReason, ReqId};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const RING: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A switchboard with a virtual clock.
struct Bench {
    sb: Switchboard,
    t0: Instant,
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        let t0 = Instant::now();
        Self {
            sb: Switchboard::new(Config {
                ring_timeout: RING,
                voicemail: false,
                ..Config::default()
            }),
            t0,
            now: t0,
        }
    }

    /// A bench whose `lines` are known and online.
    fn with_lines(lines: &[&str]) -> Self {
        let mut b = Self::new();
        for ext in lines {
            b.sb.add_line(ext);
            b.sb.handle_line_up(b.now, ext);
        }
        b
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.sb.poll_action()).collect()
    }

    fn dial(&mut self, from: &str, req: ReqId, to: &str) -> Vec<Action> {
        self.sb.handle_dial(self.now, from, req, to);
        self.actions()
    }

    /// `from` dials `to`, which must start ringing; returns the call id.
    fn place(&mut self, from: &str, to: &str) -> CallId {
        let acts = self.dial(from, 99, to);
        let id = match acts.first() {
            Some(Action::Ringing { call, .. }) => *call,
            other => panic!("expected Ringing, got {other:?} (all: {acts:?})"),
        };
        assert_eq!(acts, vec![ringing(from, 99, id, to), ring(to, id, from)]);
        id
    }

    /// `from` calls `to` and `to` answers; returns the call id.
    fn connect(&mut self, from: &str, to: &str) -> CallId {
        let id = self.place(from, to);
        self.sb.handle_answer(self.now, to, id).expect("answer");
        assert_eq!(self.actions(), vec![connected(id, from, to)]);
        id
    }

    fn snapshot(&self) -> Vec<Snap> {
        self.sb.calls().map(Snap::of).collect()
    }

    fn state(&self, id: CallId) -> Option<CallState> {
        self.sb.call(id).map(|c| c.state)
    }
}

/// A comparable copy of a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    id: CallId,
    caller: String,
    callee: String,
    started: Instant,
    state: CallState,
}

impl Snap {
    fn of(c: &Call) -> Self {
        Self {
            id: c.id,
            caller: c.caller.shown().to_string(),
            callee: c.callee.shown().to_string(),
            started: c.started,
            state: c.state,
        }
    }

    fn involves(&self, ext: &str) -> bool {
        self.caller == ext || self.callee == ext
    }

    fn other(&self, ext: &str) -> &str {
        if self.caller == ext {
            &self.callee
        } else {
            &self.caller
        }
    }

    fn answered_at(&self) -> Option<Instant> {
        match self.state {
            CallState::Answered { at } | CallState::Voicemail { at } => Some(at),
            CallState::Ringing { .. } => None,
        }
    }

    fn is_ringing(&self) -> bool {
        matches!(self.state, CallState::Ringing { .. })
    }

    /// The record this call produces when it ends at `ended`.
    fn record(&self, ended: Instant, outcome: Outcome) -> Action {
        Action::Record(CallRecord {
            call: Some(self.id),
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            started: self.started,
            answered: self.answered_at(),
            ended,
            outcome,
        })
    }
}

fn ringing(caller: &str, req: ReqId, call: CallId, callee: &str) -> Action {
    Action::Ringing {
        caller: caller.into(),
        req,
        call,
        callee: callee.into(),
    }
}

fn ring(callee: &str, call: CallId, from: &str) -> Action {
    Action::Ring {
        callee: callee.into(),
        call,
        from: from.into(),
    }
}

fn connected(call: CallId, caller: &str, callee: &str) -> Action {
    Action::Connected {
        call,
        caller: caller.into(),
        callee: callee.into(),
    }
}

fn ended(to: &str, call: CallId, reason: EndReason) -> Action {
    Action::Ended {
        to: to.into(),
        call,
        reason,
    }
}

fn dial_failed(caller: &str, req: ReqId, reason: FailReason) -> Action {
    Action::DialFailed {
        caller: caller.into(),
        req,
        reason,
    }
}

fn failed_record(caller: &str, callee: &str, at: Instant, outcome: Outcome) -> Action {
    Action::Record(CallRecord {
        call: None,
        caller: caller.into(),
        callee: callee.into(),
        started: at,
        answered: None,
        ended: at,
        outcome,
    })
}

fn records(acts: &[Action]) -> Vec<&CallRecord> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Record(r) => Some(r),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Unit scenarios
// ---------------------------------------------------------------------------

#[test]
fn dial_rings_caller_and_callee() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let acts = b.dial("201", 7, "202");
    assert_eq!(acts.len(), 2, "{acts:?}");
    let Action::Ringing { call: id, .. } = acts[0] else {
        panic!("expected Ringing first: {acts:?}");
    };
    assert_eq!(
        acts,
        vec![ringing("201", 7, id, "202"), ring("202", id, "201")]
    );
    let calls = b.snapshot();
    assert_eq!(
        calls,
        vec![Snap {
            id,
            caller: "201".into(),
            callee: "202".into(),
            started: b.t0,
            state: CallState::Ringing {
                deadline: b.t0 + RING
            },
        }]
    );
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + RING));
}

#[test]
fn call_ids_are_fresh_and_respect_set_next_call_id() {
    let mut b = Bench::with_lines(&["201", "202", "203", "204"]);
    b.sb.set_next_call_id(40);
    let a = b.place("201", "202");
    let c = b.place("203", "204");
    assert_eq!(a, 40);
    assert_eq!(c, 41);
    // Lowering it never reuses ids.
    b.sb.set_next_call_id(1);
    b.sb.handle_hangup(b.now, "201", a).expect("cancel");
    b.actions();
    assert_eq!(b.place("201", "202"), 42);
}

#[test]
fn answer_connects() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.advance(secs(5));
    assert_eq!(b.sb.handle_answer(b.now, "202", id), Ok(()));
    assert_eq!(b.actions(), vec![connected(id, "201", "202")]);
    assert_eq!(
        b.state(id),
        Some(CallState::Answered { at: b.t0 + secs(5) })
    );
    assert_eq!(
        b.sb.poll_timeout(),
        None,
        "an answered call has no deadline"
    );
    // Answering twice is refused.
    assert_eq!(
        b.sb.handle_answer(b.now, "202", id),
        Err(CallError::NotRinging)
    );
    assert!(b.actions().is_empty());
}

fn hangup_after_answer(by: &str) {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.advance(secs(3));
    b.sb.handle_answer(b.now, "202", id).expect("answer");
    b.actions();
    b.advance(secs(60));
    b.sb.handle_hangup(b.now, by, id).expect("hangup");
    let other = if by == "201" { "202" } else { "201" };
    let acts = b.actions();
    assert_eq!(
        acts,
        vec![
            ended(other, id, EndReason::Hangup),
            Action::Record(CallRecord {
                call: Some(id),
                caller: "201".into(),
                callee: "202".into(),
                started: b.t0,
                answered: Some(b.t0 + secs(3)),
                ended: b.t0 + secs(63),
                outcome: Outcome::Answered,
            }),
        ]
    );
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(b.sb.calls().count(), 0);
    // Hanging up again is refused, with nothing emitted.
    assert_eq!(
        b.sb.handle_hangup(b.now, other, id),
        Err(CallError::NoSuchCall)
    );
    assert!(b.actions().is_empty());
    // Both lines are free again.
    b.place("202", "201");
}

#[test]
fn caller_hangs_up_after_answer() {
    hangup_after_answer("201");
}

#[test]
fn callee_hangs_up_after_answer() {
    hangup_after_answer("202");
}

#[test]
fn caller_cancels_while_ringing() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.advance(secs(4));
    b.sb.handle_hangup(b.now, "201", id).expect("cancel");
    assert_eq!(
        b.actions(),
        vec![
            ended("202", id, EndReason::Cancelled),
            Action::Record(CallRecord {
                call: Some(id),
                caller: "201".into(),
                callee: "202".into(),
                started: b.t0,
                answered: None,
                ended: b.t0 + secs(4),
                outcome: Outcome::Cancelled,
            }),
        ]
    );
    assert_eq!(b.sb.poll_timeout(), None);
    // The old deadline passing does nothing.
    b.sb.handle_timeout(b.t0 + RING + secs(1));
    assert!(b.actions().is_empty());
}

#[test]
fn callee_rejects() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    // Only the callee may reject.
    assert_eq!(
        b.sb.handle_reject(b.now, "201", id),
        Err(CallError::NotYours)
    );
    assert!(b.actions().is_empty());
    b.advance(secs(2));
    b.sb.handle_reject(b.now, "202", id).expect("reject");
    assert_eq!(
        b.actions(),
        vec![
            ended("201", id, EndReason::Rejected),
            Action::Record(CallRecord {
                call: Some(id),
                caller: "201".into(),
                callee: "202".into(),
                started: b.t0,
                answered: None,
                ended: b.t0 + secs(2),
                outcome: Outcome::Rejected,
            }),
        ]
    );
    assert_eq!(b.sb.calls().count(), 0);
}

#[test]
fn callee_hangup_while_ringing_is_a_reject() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.sb.handle_hangup(b.now, "202", id).expect("hangup");
    let acts = b.actions();
    assert_eq!(acts[0], ended("201", id, EndReason::Rejected));
    assert_eq!(records(&acts)[0].outcome, Outcome::Rejected);
}

#[test]
fn reject_after_answer_is_refused() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.connect("201", "202");
    let before = b.snapshot();
    assert_eq!(
        b.sb.handle_reject(b.now, "202", id),
        Err(CallError::NotRinging)
    );
    assert_eq!(
        b.sb.handle_reject(b.now, "202", 999),
        Err(CallError::NoSuchCall)
    );
    assert!(b.actions().is_empty());
    assert_eq!(b.snapshot(), before);
}

#[test]
fn ring_timeout_fires_exactly_at_the_deadline() {
    let mut b = Bench::with_lines(&["201", "202"]);
    b.advance(secs(1));
    let started = b.now;
    let id = b.place("201", "202");
    let deadline = started + RING;
    assert_eq!(b.sb.poll_timeout(), Some(deadline));

    // Early and late-but-before-deadline calls do nothing.
    b.sb.handle_timeout(started);
    b.sb.handle_timeout(deadline - ms(1));
    assert!(b.actions().is_empty());
    assert_eq!(b.state(id), Some(CallState::Ringing { deadline }));
    assert_eq!(b.sb.poll_timeout(), Some(deadline));

    b.sb.handle_timeout(deadline);
    assert_eq!(
        b.actions(),
        vec![
            ended("201", id, EndReason::NoAnswer),
            ended("202", id, EndReason::NoAnswer),
            Action::Record(CallRecord {
                call: Some(id),
                caller: "201".into(),
                callee: "202".into(),
                started,
                answered: None,
                ended: deadline,
                outcome: Outcome::NoAnswer,
            }),
        ]
    );
    assert_eq!(b.sb.calls().count(), 0);
    assert_eq!(b.sb.poll_timeout(), None);
    // Firing again is a no-op.
    b.sb.handle_timeout(deadline + secs(10));
    assert!(b.actions().is_empty());
}

#[test]
fn poll_timeout_is_the_earliest_ringing_deadline() {
    let mut b = Bench::with_lines(&["201", "202", "203", "204", "205", "206"]);
    let first = b.place("201", "202");
    b.advance(secs(10));
    let second = b.place("203", "204");
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + RING));
    // Answering the earliest moves the deadline to the next one.
    b.sb.handle_answer(b.now, "202", first).expect("answer");
    b.actions();
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + secs(10) + RING));
    b.advance(secs(5));
    b.place("205", "206");
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + secs(10) + RING));
    b.sb.handle_timeout(b.t0 + secs(10) + RING);
    let acts = b.actions();
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(records(&acts)[0].call, Some(second));
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + secs(15) + RING));
    // The answered call never times out.
    b.sb.handle_timeout(b.t0 + secs(3600));
    let acts = b.actions();
    assert_eq!(records(&acts).len(), 1);
    assert!(b.sb.call(first).is_some());
    assert_eq!(b.sb.poll_timeout(), None);
}

#[test]
fn several_calls_can_time_out_at_once() {
    let mut b = Bench::with_lines(&["201", "202", "203", "204"]);
    let a = b.place("201", "202");
    b.advance(secs(1));
    let c = b.place("203", "204");
    b.sb.handle_timeout(b.t0 + secs(100));
    let acts = b.actions();
    let recs = records(&acts);
    let ids: BTreeSet<_> = recs.iter().map(|r| r.call).collect();
    assert_eq!(ids, BTreeSet::from([Some(a), Some(c)]));
    assert!(recs.iter().all(|r| r.outcome == Outcome::NoAnswer));
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(
                a,
                Action::Ended {
                    reason: EndReason::NoAnswer,
                    ..
                }
            ))
            .count(),
        4
    );
}

#[test]
fn busy_callee() {
    let mut b = Bench::with_lines(&["201", "202", "203"]);
    let id = b.place("201", "202");
    b.advance(secs(1));
    assert_eq!(
        b.dial("203", 5, "202"),
        vec![
            dial_failed("203", 5, FailReason::Busy),
            failed_record("203", "202", b.now, Outcome::Busy),
        ]
    );
    // Calling the caller of a ringing call is busy too.
    assert_eq!(
        b.dial("203", 6, "201"),
        vec![
            dial_failed("203", 6, FailReason::Busy),
            failed_record("203", "201", b.now, Outcome::Busy),
        ]
    );
    assert!(b.sb.call(id).is_some());
}

#[test]
fn third_line_gets_busy_and_the_call_is_undisturbed() {
    let mut b = Bench::with_lines(&["201", "202", "203"]);
    let id = b.connect("201", "202");
    let before = b.snapshot();
    b.advance(secs(7));
    for target in ["201", "202"] {
        assert_eq!(
            b.dial("203", 1, target),
            vec![
                dial_failed("203", 1, FailReason::Busy),
                failed_record("203", target, b.now, Outcome::Busy),
            ]
        );
    }
    // The third line may not touch the call either.
    assert_eq!(
        b.sb.handle_hangup(b.now, "203", id),
        Err(CallError::NotYours)
    );
    assert_eq!(
        b.sb.handle_answer(b.now, "203", id),
        Err(CallError::NotYours)
    );
    assert_eq!(
        b.sb.handle_reject(b.now, "203", id),
        Err(CallError::NotYours)
    );
    assert!(b.actions().is_empty());
    assert_eq!(b.snapshot(), before);
    // The call still ends normally.
    b.sb.handle_hangup(b.now, "202", id).expect("hangup");
    let acts = b.actions();
    assert_eq!(acts[0], ended("201", id, EndReason::Hangup));
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(records(&acts)[0].outcome, Outcome::Answered);
}

#[test]
fn unknown_number() {
    let mut b = Bench::with_lines(&["201"]);
    assert_eq!(
        b.dial("201", 3, "299"),
        vec![
            dial_failed("201", 3, FailReason::UnknownNumber),
            failed_record("201", "299", b.now, Outcome::UnknownNumber),
        ]
    );
    assert_eq!(b.sb.calls().count(), 0);
}

#[test]
fn offline_callee_is_unreachable() {
    let mut b = Bench::with_lines(&["201"]);
    b.sb.add_line("202");
    assert!(!b.sb.is_online("202"));
    assert_eq!(
        b.dial("201", 3, "202"),
        vec![
            dial_failed("201", 3, FailReason::Unreachable),
            failed_record("201", "202", b.now, Outcome::Unreachable),
        ]
    );
    // After going down it is unreachable again.
    b.sb.handle_line_up(b.now, "202");
    b.sb.handle_line_down(b.now, "202");
    assert_eq!(
        b.dial("201", 4, "202")[0],
        dial_failed("201", 4, FailReason::Unreachable)
    );
}

#[test]
fn self_call_is_refused_without_a_record() {
    let mut b = Bench::with_lines(&["201"]);
    assert_eq!(
        b.dial("201", 8, "201"),
        vec![dial_failed("201", 8, FailReason::SelfCall)]
    );
    assert_eq!(b.sb.calls().count(), 0);
}

#[test]
fn dial_while_in_a_call_is_refused() {
    let mut b = Bench::with_lines(&["201", "202", "203"]);
    let id = b.place("201", "202");
    let before = b.snapshot();
    // As caller of a ringing call, as callee of a ringing call, then answered.
    assert_eq!(
        b.dial("201", 1, "203"),
        vec![dial_failed("201", 1, FailReason::AlreadyInCall)]
    );
    assert_eq!(
        b.dial("202", 2, "203"),
        vec![dial_failed("202", 2, FailReason::AlreadyInCall)]
    );
    assert_eq!(b.snapshot(), before);
    b.sb.handle_answer(b.now, "202", id).expect("answer");
    b.actions();
    let before = b.snapshot();
    assert_eq!(
        b.dial("201", 3, "203"),
        vec![dial_failed("201", 3, FailReason::AlreadyInCall)]
    );
    assert_eq!(
        b.dial("202", 4, "201"),
        vec![dial_failed("202", 4, FailReason::AlreadyInCall)]
    );
    assert_eq!(b.snapshot(), before);
}

#[test]
fn offline_or_unknown_caller_is_not_allowed() {
    let mut b = Bench::with_lines(&["202"]);
    b.sb.add_line("201");
    assert_eq!(
        b.dial("201", 1, "202"),
        vec![dial_failed("201", 1, FailReason::NotAllowed)]
    );
    assert_eq!(
        b.dial("299", 2, "202"),
        vec![dial_failed("299", 2, FailReason::NotAllowed)]
    );
    assert_eq!(b.sb.calls().count(), 0);
}

#[test]
fn answer_by_the_wrong_line_is_not_yours() {
    let mut b = Bench::with_lines(&["201", "202", "203"]);
    let id = b.place("201", "202");
    let before = b.snapshot();
    // The caller cannot answer its own call; nor can a stranger.
    assert_eq!(
        b.sb.handle_answer(b.now, "201", id),
        Err(CallError::NotYours)
    );
    assert_eq!(
        b.sb.handle_answer(b.now, "203", id),
        Err(CallError::NotYours)
    );
    assert_eq!(
        b.sb.handle_answer(b.now, "299", id),
        Err(CallError::NotYours)
    );
    assert_eq!(
        b.sb.handle_answer(b.now, "202", id + 1),
        Err(CallError::NoSuchCall)
    );
    assert!(b.actions().is_empty());
    assert_eq!(b.snapshot(), before);
    assert_eq!(b.sb.poll_timeout(), Some(b.t0 + RING));
    // The right line still can.
    b.sb.handle_answer(b.now, "202", id).expect("answer");
    assert_eq!(b.actions(), vec![connected(id, "201", "202")]);
}

#[test]
fn line_down_mid_call_ends_it_for_the_other() {
    for lost in ["201", "202"] {
        let mut b = Bench::with_lines(&["201", "202"]);
        let id = b.connect("201", "202");
        b.advance(secs(20));
        b.sb.handle_line_down(b.now, lost);
        let other = if lost == "201" { "202" } else { "201" };
        let acts = b.actions();
        assert_eq!(
            acts,
            vec![
                ended(other, id, EndReason::PeerLost),
                Action::Record(CallRecord {
                    call: Some(id),
                    caller: "201".into(),
                    callee: "202".into(),
                    started: b.t0,
                    answered: Some(b.t0),
                    ended: b.t0 + secs(20),
                    outcome: Outcome::Answered,
                }),
            ]
        );
        assert!(!b.sb.is_online(lost));
        assert!(b.sb.is_online(other));
        assert_eq!(b.sb.calls().count(), 0);
    }
}

#[test]
fn line_down_while_ringing() {
    // Callee lost: the caller is told and the record says unreachable.
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.sb.handle_line_down(b.now, "202");
    let acts = b.actions();
    assert_eq!(acts[0], ended("201", id, EndReason::PeerLost));
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(records(&acts)[0].outcome, Outcome::Unreachable);
    assert_eq!(b.sb.poll_timeout(), None);

    // Caller lost: the callee stops ringing.
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.place("201", "202");
    b.sb.handle_line_down(b.now, "201");
    let acts = b.actions();
    assert_eq!(acts[0], ended("202", id, EndReason::PeerLost));
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(records(&acts)[0].outcome, Outcome::Cancelled);
}

#[test]
fn remove_line_ends_its_call_and_forgets_it() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.connect("201", "202");
    b.sb.remove_line(b.now, "202");
    let acts = b.actions();
    assert_eq!(acts[0], ended("201", id, EndReason::PeerLost));
    assert_eq!(records(&acts).len(), 1);
    assert_eq!(
        b.dial("201", 1, "202"),
        vec![
            dial_failed("201", 1, FailReason::UnknownNumber),
            failed_record("201", "202", b.now, Outcome::UnknownNumber),
        ]
    );
}

#[test]
fn media_failure_ends_the_call_for_both() {
    let mut b = Bench::with_lines(&["201", "202"]);
    let id = b.connect("201", "202");
    b.advance(secs(1));
    b.sb.handle_media_failed(b.now, id);
    assert_eq!(
        b.actions(),
        vec![
            ended("201", id, EndReason::MediaFailed),
            ended("202", id, EndReason::MediaFailed),
            Action::Record(CallRecord {
                call: Some(id),
                caller: "201".into(),
                callee: "202".into(),
                started: b.t0,
                answered: Some(b.t0),
                ended: b.t0 + secs(1),
                outcome: Outcome::Failed,
            }),
        ]
    );
    // Unknown ids are ignored.
    b.sb.handle_media_failed(b.now, id);
    assert!(b.actions().is_empty());
}

#[test]
fn shutdown_ends_everything() {
    let mut b = Bench::with_lines(&["201", "202", "203", "204"]);
    let talking = b.connect("201", "202");
    b.advance(secs(2));
    let ringing_id = b.place("203", "204");
    b.advance(secs(2));
    b.sb.shutdown(b.now);
    let acts = b.actions();
    let mut told: Vec<(String, CallId)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Ended {
                to,
                call,
                reason: EndReason::Shutdown,
            } => Some((to.shown().to_string(), *call)),
            _ => None,
        })
        .collect();
    told.sort();
    assert_eq!(
        told,
        vec![
            ("201".to_string(), talking),
            ("202".to_string(), talking),
            ("203".to_string(), ringing_id),
            ("204".to_string(), ringing_id),
        ]
    );
    let recs = records(&acts);
    assert_eq!(recs.len(), 2);
    for r in recs {
        assert_eq!(r.ended, b.t0 + secs(4));
        if r.call == Some(talking) {
            assert_eq!(r.outcome, Outcome::Answered);
            assert_eq!(r.answered, Some(b.t0));
        } else {
            assert_eq!(r.call, Some(ringing_id));
            assert_eq!(r.outcome, Outcome::Failed);
            assert_eq!(r.answered, None);
        }
    }
    assert_eq!(acts.len(), 6, "{acts:?}");
    assert_eq!(b.sb.calls().count(), 0);
    assert_eq!(b.sb.poll_timeout(), None);
    // Lines are free again.
    b.place("201", "204");
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Known lines; index 4 is the unknown number.
const LINES: [&str; 4] = ["201", "202", "203", "204"];
const UNKNOWN: &str = "299";

fn line(i: usize) -> &'static str {
    LINES.get(i).copied().unwrap_or(UNKNOWN)
}

/// Which call an answer/reject/hangup names.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A raw id, often stale or never created.
    Raw(CallId),
    /// The call the acting line is in (else the latest created, else 0).
    Own,
    /// The latest created call (else 0).
    Latest,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Up(usize),
    Down(usize),
    Dial {
        from: usize,
        to: usize,
    },
    Answer(usize, Target),
    Reject(usize, Target),
    Hangup(usize, Target),
    MediaFailed(Target),
    /// Advance the clock by this many milliseconds, then `handle_timeout`.
    Advance(u64),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => (0u64..10).prop_map(Target::Raw),
        3 => Just(Target::Own),
        2 => Just(Target::Latest),
    ]
}

/// A line index: mostly a known line, sometimes the unknown number.
fn any_line() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0usize..4, 1 => Just(4usize)]
}

fn op() -> impl Strategy<Value = Op> {
    let ring_ms = u64::try_from(RING.as_millis()).expect("ring timeout in ms");
    prop_oneof![
        2 => (0usize..4).prop_map(Op::Up),
        1 => (0usize..5).prop_map(Op::Down),
        5 => (any_line(), any_line()).prop_map(|(from, to)| Op::Dial { from, to }),
        4 => (any_line(), target()).prop_map(|(l, t)| Op::Answer(l, t)),
        1 => (any_line(), target()).prop_map(|(l, t)| Op::Reject(l, t)),
        3 => (any_line(), target()).prop_map(|(l, t)| Op::Hangup(l, t)),
        1 => target().prop_map(Op::MediaFailed),
        3 => prop_oneof![
            4 => 0u64..3_000,
            2 => 0u64..40_000,
            1 => Just(0u64),
            1 => Just(ring_ms),
            1 => Just(ring_ms - 1),
        ]
        .prop_map(Op::Advance),
    ]
}

/// The test's own view of the world, checked against the switchboard.
struct Model {
    b: Bench,
    online: BTreeSet<&'static str>,
    /// Every call id created, in creation order (from `Action::Ringing`).
    created: Vec<CallId>,
    /// Every call id recorded (from `Action::Record` with `call: Some`).
    recorded: BTreeSet<CallId>,
    /// `Record` actions with `call: Some(_)` seen, duplicates included.
    record_count: usize,
    last_timeout: Option<Instant>,
    next_req: ReqId,
    /// Records without a call id (failed dials), by outcome.
    dial_failures: BTreeMap<&'static str, usize>,
}

fn call_of_action(a: &Action) -> Option<CallId> {
    match a {
        Action::Ringing { call, .. }
        | Action::Ring { call, .. }
        | Action::Connected { call, .. }
        | Action::Ended { call, .. }
        | Action::Forwarded { call, .. }
        | Action::Held { call, .. }
        | Action::Transferring { call, .. }
        | Action::TransferFailed { call, .. }
        | Action::ToVoicemail { call, .. }
        | Action::PickedUp { call, .. } => Some(*call),
        Action::Record(r) => r.call,
        Action::Replaced { new, .. } => Some(*new),
        Action::Redirect { call, .. } => *call,
        Action::HandOff { call, .. }
        | Action::Fallback { call, .. }
        | Action::HangUpOutside { call, .. } => Some(*call),
        Action::DialFailed { .. } | Action::Feature { .. } | Action::Settings { .. } => None,
    }
}

impl Model {
    fn new(initially_up: &[bool]) -> Self {
        let mut b = Bench::new();
        let mut online = BTreeSet::new();
        for (i, ext) in LINES.iter().enumerate() {
            b.sb.add_line(ext);
            if initially_up.get(i).copied().unwrap_or(false) {
                b.sb.handle_line_up(b.now, ext);
                online.insert(*ext);
            }
        }
        Self {
            b,
            online,
            created: Vec::new(),
            recorded: BTreeSet::new(),
            record_count: 0,
            last_timeout: None,
            next_req: 1,
            dial_failures: BTreeMap::new(),
        }
    }

    fn call_of(&self, ext: &str) -> Option<Snap> {
        self.b.snapshot().into_iter().find(|c| c.involves(ext))
    }

    fn resolve(&self, ext: &str, t: Target) -> CallId {
        let latest = self.created.last().copied().unwrap_or(0);
        match t {
            Target::Raw(id) => id,
            Target::Own => self.call_of(ext).map_or(latest, |c| c.id),
            Target::Latest => latest,
        }
    }

    /// The expected result and actions of answer/reject/hangup on `id`.
    fn expect_end_input(
        &self,
        op: &Op,
        ext: &str,
        id: CallId,
    ) -> (Result<(), CallError>, Vec<Action>) {
        let now = self.b.now;
        let Some(c) = self.b.sb.call(id).map(Snap::of) else {
            return (Err(CallError::NoSuchCall), vec![]);
        };
        match op {
            Op::Answer(..) | Op::Reject(..) if c.callee != ext => {
                (Err(CallError::NotYours), vec![])
            }
            Op::Answer(..) | Op::Reject(..) if !c.is_ringing() => {
                (Err(CallError::NotRinging), vec![])
            }
            Op::Answer(..) => (Ok(()), vec![connected(id, &c.caller, &c.callee)]),
            Op::Reject(..) => (
                Ok(()),
                vec![
                    ended(&c.caller, id, EndReason::Rejected),
                    c.record(now, Outcome::Rejected),
                ],
            ),
            Op::Hangup(..) if !c.involves(ext) => (Err(CallError::NotYours), vec![]),
            Op::Hangup(..) => {
                let (reason, outcome) = match (c.is_ringing(), c.caller == ext) {
                    (false, _) => (EndReason::Hangup, Outcome::Answered),
                    (true, true) => (EndReason::Cancelled, Outcome::Cancelled),
                    (true, false) => (EndReason::Rejected, Outcome::Rejected),
                };
                (
                    Ok(()),
                    vec![ended(c.other(ext), id, reason), c.record(now, outcome)],
                )
            }
            _ => unreachable!("not an end input: {op:?}"),
        }
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let before = self.b.snapshot();
        let acts = match op {
            Op::Up(i) => {
                let ext = line(i);
                self.b.sb.handle_line_up(self.b.now, ext);
                self.online.insert(ext);
                let acts = self.b.actions();
                prop_assert_eq!(&acts, &vec![]);
                prop_assert_eq!(self.b.snapshot(), before, "line up changed calls");
                acts
            }
            Op::Down(i) => {
                let ext = line(i);
                let expected = match self.call_of(ext) {
                    Some(c) => {
                        let outcome = match (c.is_ringing(), c.callee == ext) {
                            (false, _) => Outcome::Answered,
                            (true, true) => Outcome::Unreachable,
                            (true, false) => Outcome::Cancelled,
                        };
                        vec![
                            ended(c.other(ext), c.id, EndReason::PeerLost),
                            c.record(self.b.now, outcome),
                        ]
                    }
                    None => vec![],
                };
                self.b.sb.handle_line_down(self.b.now, ext);
                self.online.remove(ext);
                let acts = self.b.actions();
                prop_assert_eq!(&acts, &expected, "line down {}", ext);
                acts
            }
            Op::Dial { from, to } => {
                let (from, to) = (line(from), line(to));
                let req = self.next_req;
                self.next_req += 1;
                let now = self.b.now;
                let fail = |reason| vec![dial_failed(from, req, reason)];
                let fail_rec = |reason, outcome| {
                    vec![
                        dial_failed(from, req, reason),
                        failed_record(from, to, now, outcome),
                    ]
                };
                let expected = if !self.online.contains(from) {
                    Some(fail(FailReason::NotAllowed))
                } else if self.call_of(from).is_some() {
                    Some(fail(FailReason::AlreadyInCall))
                } else if from == to {
                    Some(fail(FailReason::SelfCall))
                } else if !LINES.contains(&to) {
                    Some(fail_rec(FailReason::UnknownNumber, Outcome::UnknownNumber))
                } else if !self.online.contains(to) {
                    Some(fail_rec(FailReason::Unreachable, Outcome::Unreachable))
                } else if self.call_of(to).is_some() {
                    Some(fail_rec(FailReason::Busy, Outcome::Busy))
                } else {
                    None
                };
                self.b.sb.handle_dial(now, from, req, to);
                let acts = self.b.actions();
                match expected {
                    Some(expected) => {
                        prop_assert_eq!(&acts, &expected, "dial {} -> {}", from, to);
                        prop_assert_eq!(self.b.snapshot(), before, "failed dial changed calls");
                    }
                    None => {
                        let id = match acts.first() {
                            Some(Action::Ringing { call, .. }) => *call,
                            _ => {
                                return Err(TestCaseError::fail(format!(
                                    "dial {from} -> {to} should ring, got {acts:?}"
                                )))
                            }
                        };
                        prop_assert!(!self.created.contains(&id), "call id {} reused", id);
                        prop_assert!(
                            self.created.iter().all(|&c| c < id),
                            "call id {} not increasing",
                            id
                        );
                        prop_assert_eq!(
                            &acts,
                            &vec![ringing(from, req, id, to), ring(to, id, from)]
                        );
                        let mut expected_calls = before.clone();
                        expected_calls.push(Snap {
                            id,
                            caller: from.into(),
                            callee: to.into(),
                            started: now,
                            state: CallState::Ringing {
                                deadline: now + RING,
                            },
                        });
                        expected_calls.sort_by_key(|c| c.id);
                        prop_assert_eq!(self.b.snapshot(), expected_calls);
                    }
                }
                acts
            }
            Op::Answer(i, t) | Op::Reject(i, t) | Op::Hangup(i, t) => {
                let ext = line(i);
                let id = self.resolve(ext, t);
                let (want, expected) = self.expect_end_input(&op, ext, id);
                let now = self.b.now;
                let got = match op {
                    Op::Answer(..) => self.b.sb.handle_answer(now, ext, id),
                    Op::Reject(..) => self.b.sb.handle_reject(now, ext, id),
                    _ => self.b.sb.handle_hangup(now, ext, id),
                };
                let acts = self.b.actions();
                prop_assert_eq!(&got, &want, "{:?} by {} on call {}", op, ext, id);
                prop_assert_eq!(&acts, &expected, "{:?} by {} on call {}", op, ext, id);
                if got.is_err() {
                    prop_assert_eq!(self.b.snapshot(), before, "refused input changed state");
                } else if matches!(op, Op::Answer(..)) {
                    prop_assert_eq!(self.b.state(id), Some(CallState::Answered { at: now }));
                }
                acts
            }
            Op::MediaFailed(t) => {
                let id = self.resolve("", t);
                let expected = match self.b.sb.call(id).map(Snap::of) {
                    Some(c) => vec![
                        ended(&c.caller, id, EndReason::MediaFailed),
                        ended(&c.callee, id, EndReason::MediaFailed),
                        c.record(self.b.now, Outcome::Failed),
                    ],
                    None => vec![],
                };
                self.b.sb.handle_media_failed(self.b.now, id);
                let acts = self.b.actions();
                prop_assert_eq!(&acts, &expected, "media failed on {}", id);
                acts
            }
            Op::Advance(d) => {
                self.b.advance(ms(d));
                let now = self.b.now;
                let mut expected: Vec<Action> = before
                    .iter()
                    .filter(
                        |c| matches!(c.state, CallState::Ringing { deadline } if deadline <= now),
                    )
                    .flat_map(|c| {
                        [
                            ended(&c.caller, c.id, EndReason::NoAnswer),
                            ended(&c.callee, c.id, EndReason::NoAnswer),
                            c.record(now, Outcome::NoAnswer),
                        ]
                    })
                    .collect();
                self.b.sb.handle_timeout(now);
                self.last_timeout = Some(now);
                let acts = self.b.actions();
                // Order between calls is not part of the contract; order
                // within a call is (the sort is stable).
                expected.sort_by_key(call_of_action);
                let mut sorted = acts.clone();
                sorted.sort_by_key(call_of_action);
                prop_assert_eq!(&sorted, &expected, "timeout at +{:?}", now - self.b.t0);
                acts
            }
        };
        self.account(&acts)?;
        self.check_invariants()
    }

    /// Track created and recorded calls from the actions.
    fn account(&mut self, acts: &[Action]) -> Result<(), TestCaseError> {
        for a in acts {
            match a {
                Action::Ringing { call, .. } => self.created.push(*call),
                Action::Record(r) => {
                    prop_assert!(
                        r.started <= r.ended,
                        "record ends before it starts: {:?}",
                        r
                    );
                    prop_assert_eq!(r.ended, self.b.now, "record not ended now: {:?}", r);
                    if let Some(at) = r.answered {
                        prop_assert!(r.started <= at && at <= r.ended, "bad answer time {:?}", r);
                        prop_assert!(
                            matches!(r.outcome, Outcome::Answered | Outcome::Failed),
                            "answered call with outcome {:?}",
                            r.outcome
                        );
                    } else {
                        prop_assert_ne!(r.outcome, Outcome::Answered, "unanswered yet answered");
                    }
                    match r.call {
                        Some(id) => {
                            self.record_count += 1;
                            prop_assert!(
                                self.created.contains(&id),
                                "record of unknown call {}",
                                id
                            );
                            prop_assert!(self.recorded.insert(id), "call {} recorded twice", id);
                        }
                        None => {
                            prop_assert!(
                                matches!(
                                    r.outcome,
                                    Outcome::Busy | Outcome::UnknownNumber | Outcome::Unreachable
                                ),
                                "call-less record with outcome {:?}",
                                r.outcome
                            );
                            *self.dial_failures.entry(r.outcome.as_str()).or_default() += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        let calls = self.b.snapshot();
        let now = self.b.now;

        // Every line is in at most one call; parties are distinct and online.
        let mut seen: BTreeMap<&str, CallId> = BTreeMap::new();
        for c in &calls {
            prop_assert_ne!(&c.caller, &c.callee, "call {} with itself", c.id);
            for ext in [c.caller.as_str(), c.callee.as_str()] {
                if let Some(other) = seen.insert(ext, c.id) {
                    return Err(TestCaseError::fail(format!(
                        "line {ext} in calls {other} and {}",
                        c.id
                    )));
                }
                prop_assert!(LINES.contains(&ext), "unknown line {} in a call", ext);
                prop_assert!(
                    self.b.sb.is_online(ext),
                    "offline line {} in call {}",
                    ext,
                    c.id
                );
            }
            prop_assert!(c.started <= now);
            match c.state {
                CallState::Ringing { deadline } => {
                    prop_assert_eq!(deadline, c.started + RING);
                    if let Some(t) = self.last_timeout {
                        prop_assert!(deadline > t, "call {} outlived its deadline", c.id);
                    }
                }
                CallState::Answered { at } | CallState::Voicemail { at } => {
                    prop_assert!(c.started <= at && at <= now)
                }
            }
        }

        // The live calls are exactly those created and not yet recorded.
        let live: BTreeSet<CallId> = calls.iter().map(|c| c.id).collect();
        let open: BTreeSet<CallId> = self
            .created
            .iter()
            .copied()
            .filter(|id| !self.recorded.contains(id))
            .collect();
        prop_assert_eq!(live, open, "live calls differ from created minus recorded");

        // Online state agrees with the inputs.
        for ext in LINES {
            prop_assert_eq!(
                self.b.sb.is_online(ext),
                self.online.contains(ext),
                "online {}",
                ext
            );
        }
        prop_assert!(!self.b.sb.is_online(UNKNOWN));

        // The timer is set exactly when something rings, at the earliest
        // deadline, never at or before the last handled timeout, and never
        // more than a ring timeout ahead.
        let earliest = calls
            .iter()
            .filter_map(|c| match c.state {
                CallState::Ringing { deadline } => Some(deadline),
                CallState::Answered { .. } | CallState::Voicemail { .. } => None,
            })
            .min();
        let polled = self.b.sb.poll_timeout();
        prop_assert_eq!(
            polled,
            earliest,
            "poll_timeout is not the earliest deadline"
        );
        if let Some(d) = polled {
            prop_assert!(d <= now + RING);
            if let Some(t) = self.last_timeout {
                prop_assert!(d > t, "poll_timeout {:?} not after last timeout {:?}", d, t);
            }
        }
        Ok(())
    }

    /// Let every ringing call time out, then take every line down.
    fn wind_down(&mut self) -> Result<(), TestCaseError> {
        self.step(Op::Advance(RING.as_millis() as u64))?;
        prop_assert!(
            self.b
                .sb
                .calls()
                .all(|c| !matches!(c.state, CallState::Ringing { .. })),
            "a call still rings after the ring timeout"
        );
        prop_assert_eq!(self.b.sb.poll_timeout(), None);
        for i in 0..LINES.len() {
            self.step(Op::Down(i))?;
        }
        prop_assert_eq!(
            self.b.sb.calls().count(),
            0,
            "calls left with every line down"
        );
        prop_assert_eq!(self.b.sb.poll_timeout(), None);
        let created: BTreeSet<CallId> = self.created.iter().copied().collect();
        prop_assert_eq!(created.len(), self.created.len(), "duplicate Ringing ids");
        prop_assert_eq!(&self.recorded, &created, "not every call was recorded");
        prop_assert_eq!(self.record_count, self.created.len(), "record count");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Random event sequences: exact expected actions each step, invariants
    /// after each step, and every call recorded exactly once at the end.
    #[test]
    fn random_sequences_keep_the_invariants(
        up in proptest::collection::vec(proptest::bool::weighted(0.85), 4),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut m = Model::new(&up);
        m.check_invariants()?;
        for op in ops {
            m.step(op)?;
        }
        m.wind_down()?;
    }

    /// Same, ending with a shutdown instead of timeouts and line drops.
    #[test]
    fn shutdown_after_random_sequences_ends_everything(
        up in proptest::collection::vec(proptest::bool::weighted(0.85), 4),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let mut m = Model::new(&up);
        for op in ops {
            m.step(op)?;
        }
        let live = m.b.snapshot();
        m.b.sb.shutdown(m.b.now);
        let acts = m.b.actions();
        for c in &live {
            let outcome = if c.is_ringing() { Outcome::Failed } else { Outcome::Answered };
            let mine: Vec<Action> = acts
                .iter()
                .filter(|a| call_of_action(a) == Some(c.id))
                .cloned()
                .collect();
            prop_assert_eq!(
                mine,
                vec![
                    ended(&c.caller, c.id, EndReason::Shutdown),
                    ended(&c.callee, c.id, EndReason::Shutdown),
                    c.record(m.b.now, outcome),
                ]
            );
        }
        prop_assert_eq!(acts.len(), 3 * live.len());
        m.account(&acts)?;
        m.check_invariants()?;
        prop_assert_eq!(m.b.sb.calls().count(), 0);
        prop_assert_eq!(&m.recorded, &m.created.iter().copied().collect::<BTreeSet<_>>());
        prop_assert_eq!(m.record_count, m.created.len());
    }
}

/// A dense fixed scenario mirroring the property test, to keep a readable
/// regression for the record accounting.
#[test]
fn every_created_call_is_recorded_once() {
    let mut m = Model::new(&[true, true, true, true]);
    let ops = [
        Op::Dial { from: 0, to: 1 },
        Op::Dial { from: 2, to: 1 },
        Op::Dial { from: 2, to: 3 },
        Op::Answer(3, Target::Own),
        Op::Advance(29_999),
        Op::Advance(1),
        Op::Dial { from: 0, to: 1 },
        Op::Hangup(1, Target::Own),
        Op::Down(3),
        Op::Up(3),
        Op::Dial { from: 3, to: 0 },
        Op::MediaFailed(Target::Latest),
        Op::Dial { from: 0, to: 4 },
        Op::Dial { from: 0, to: 0 },
        Op::Dial { from: 1, to: 2 },
    ];
    for op in ops {
        m.step(op).expect("step");
    }
    m.wind_down().expect("wind down");
    assert_eq!(m.created.len(), 5);
    assert_eq!(m.dial_failures.get("busy"), Some(&1));
    assert_eq!(m.dial_failures.get("unknown"), Some(&1));
}
