//! Random sequences of inputs to the gateway's switchboard (lines coming and
//! going, dials, outside calls, answers, holds, transfers, consultations,
//! hand-offs, feature codes, settings, time passing, and what the directory
//! says of outside calls: ringing, answered with a fallback deadline, media
//! heard, ended, handed on, hand-offs sent and taken back, the uplink lost).
//! After every step the switchboard's invariants hold, no call is recorded
//! twice, no outside call is hung up twice and a fallback is asked for only
//! for a call in progress; at the end, once everyone hangs up, every line
//! goes down, the uplink goes and a day passes, no call is left and every
//! call that rang was recorded exactly once.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keyline_proto::call::{
    Action, Config, HandedOn, Line, RingGroup, Switchboard, TrunkId, TrunkLine,
};
use keyline_proto::msg::{FailReason, LineSettings};
use keyline_proto::number::Number;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const EXTS: [&str; 5] = ["201", "202", "203", "204", "205"];
const NUMBERS: [&str; 17] = [
    "201",
    "202",
    "203",
    "204",
    "205",
    "299",
    "1001",
    "김민준",
    "*8",
    "*72202",
    "*73",
    "*78",
    "*79",
    "*1",
    "",
    "0",
    "290",
];
const REASONS: [FailReason; 4] = [
    FailReason::Busy,
    FailReason::Unreachable,
    FailReason::UnknownNumber,
    FailReason::NoAnswer,
];

#[derive(Arbitrary, Debug)]
enum Op {
    Up(u8),
    Down(u8),
    Remove(u8),
    Dial {
        ext: u8,
        number: u8,
    },
    Inbound {
        trunk: u8,
        ext: Option<u8>,
        handoff: Option<u8>,
    },
    HandedOn {
        trunk: u8,
        ext: u8,
        by: u8,
        joins: Option<u8>,
    },
    Answer {
        ext: u8,
        call: u8,
    },
    Reject {
        ext: u8,
        call: u8,
    },
    Hangup {
        ext: u8,
        call: u8,
    },
    Hold {
        ext: u8,
        call: u8,
        on: bool,
    },
    Transfer {
        ext: u8,
        call: u8,
        number: u8,
    },
    Consult {
        ext: u8,
        call: u8,
        number: u8,
    },
    Complete {
        ext: u8,
    },
    OutsideRinging {
        call: u8,
    },
    OutsideAnswered {
        call: u8,
        fallback: Option<u8>,
    },
    OutsideMedia {
        call: u8,
    },
    OutsideAnswerFailed {
        call: u8,
    },
    DirectoryEnded {
        call: u8,
        reason: u8,
    },
    FarHandoff {
        call: u8,
        number: u8,
        handoff: Option<u8>,
    },
    HandoffSent {
        value: u8,
        from: u8,
        to: u8,
        by: u8,
    },
    UplinkDown,
    OutsideFailed {
        call: u8,
        reason: u8,
    },
    OutsideHandoff {
        call: u8,
        number: u8,
    },
    VoicemailDone {
        call: u8,
    },
    MediaFailed {
        call: u8,
    },
    Settings {
        ext: u8,
        always: Option<u8>,
        busy: Option<u8>,
        no_answer: Option<u8>,
        dnd: bool,
    },
    SpeedDial {
        number: Option<u8>,
    },
    Mailboxes(bool),
    Wait(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    voicemail: bool,
    outside: bool,
    reception: Vec<u8>,
    hunt: Option<u8>,
    office_mailbox: Option<u8>,
    ops: Vec<Op>,
}

fn ext(i: u8) -> &'static str {
    EXTS[usize::from(i) % EXTS.len()]
}

fn number(i: u8) -> &'static str {
    NUMBERS[usize::from(i) % NUMBERS.len()]
}

fn outside_number(i: u8) -> Number {
    let n = ["1001", "1002", "김민준"][usize::from(i) % 3];
    Number::parse(n).unwrap_or_else(|e| panic!("{n}: {e}"))
}

fn trunk(i: u8) -> TrunkLine {
    TrunkLine {
        id: TrunkId::In(u64::from(i % 4)),
        number: outside_number(i),
    }
}

/// The directory's id the run gives a call placed from here.
fn dir_call_of(call: u64) -> u64 {
    1000 + call
}

struct Run {
    sb: Switchboard,
    now: Instant,
    req: u64,
    /// Calls seen in actions, and how many records each has had.
    seen: BTreeMap<u64, u32>,
    /// Calls whose directory call was hung up.
    hung_up: BTreeSet<u64>,
}

impl Run {
    /// A call id: one the switchboard has (most of the time), else any.
    fn call(&self, i: u8) -> u64 {
        let ids: Vec<u64> = self.sb.calls().map(|c| c.id).collect();
        if ids.is_empty() || i >= 240 {
            u64::from(i % 16)
        } else {
            ids[usize::from(i) % ids.len()]
        }
    }

    fn next_req(&mut self) -> u64 {
        self.req += 1;
        self.req
    }

    fn drain(&mut self) {
        if let Err(e) = self.sb.check_invariants() {
            panic!("invariant broken: {e}\n{:#?}", self.sb);
        }
        while let Some(action) = self.sb.poll_action() {
            if std::env::var_os("KEYLINE_FUZZ_TRACE").is_some() {
                println!("  -> {action:?}");
            }
            match action {
                Action::Ringing { call, .. }
                | Action::Ring { call, .. }
                | Action::Connected { call, .. } => {
                    self.seen.entry(call).or_insert(0);
                }
                // At most once per call. The same directory id may come
                // back for a later call (a restarted directory counts
                // from 1 again), so the call is the key, not the id.
                Action::HangUpOutside { call, dir_call } => {
                    assert!(
                        self.hung_up.insert(call),
                        "call {call} (directory call {dir_call}) hung up twice"
                    );
                }
                Action::Fallback { call, .. } => {
                    assert!(
                        self.sb.call(call).is_some(),
                        "a fallback for call {call}, which is over"
                    );
                }
                Action::Record(rec) => {
                    if let Some(id) = rec.call {
                        let n = self.seen.entry(id).or_insert(0);
                        *n += 1;
                        assert!(*n == 1, "call {id} recorded twice");
                    }
                    assert!(rec.ended >= rec.started, "a call ended before it began");
                }
                _ => {}
            }
        }
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Up(e) => {
                self.sb.add_line(ext(e));
                self.sb.handle_line_up(now, ext(e));
            }
            Op::Down(e) => self.sb.handle_line_down(now, ext(e)),
            Op::Remove(e) => self.sb.remove_line(now, ext(e)),
            Op::Dial { ext: e, number: n } => {
                let req = self.next_req();
                self.sb.handle_dial(now, ext(e), req, number(n));
            }
            Op::Inbound {
                trunk: t,
                ext: e,
                handoff,
            } => {
                self.sb
                    .handle_offered(now, trunk(t), e.map(ext), handoff.map(u64::from));
            }
            Op::HandedOn {
                trunk: t,
                ext: e,
                by,
                joins,
            } => {
                let req = self.next_req();
                let h = HandedOn {
                    by: ext(by).to_string(),
                    joins: joins.map(|j| self.call(j)),
                };
                self.sb.handle_handed_on(now, trunk(t), req, ext(e), h);
            }
            Op::Answer { ext: e, call } => {
                let _ = self.sb.handle_answer(now, ext(e), self.call(call));
            }
            Op::Reject { ext: e, call } => {
                let _ = self.sb.handle_reject(now, ext(e), self.call(call));
            }
            Op::Hangup { ext: e, call } => {
                let id = self.call(call);
                // Callers hang up too, outside ones through the directory.
                let who = if e >= 200 {
                    self.sb.call(id).map(|c| c.caller.clone())
                } else {
                    Some(Line::station(ext(e)))
                };
                match who {
                    Some(Line::Station(who)) => {
                        let _ = self.sb.handle_hangup(now, &who, id);
                    }
                    Some(Line::Trunk(t)) => {
                        if let Some(dc) = t.dir_call() {
                            self.sb
                                .handle_directory_ended(now, dc, FailReason::Unreachable);
                        }
                    }
                    None => {}
                }
            }
            Op::Hold { ext: e, call, on } => {
                let _ = self.sb.handle_hold(ext(e), self.call(call), on);
            }
            Op::Transfer {
                ext: e,
                call,
                number: n,
            } => {
                let req = self.next_req();
                let _ = self
                    .sb
                    .handle_transfer(now, ext(e), req, self.call(call), number(n));
            }
            Op::Consult {
                ext: e,
                call,
                number: n,
            } => {
                let req = self.next_req();
                let _ = self
                    .sb
                    .handle_consult(now, ext(e), req, self.call(call), number(n));
            }
            Op::Complete { ext: e } => {
                let req = self.next_req();
                let _ = self.sb.handle_consult_complete(now, ext(e), req);
            }
            Op::OutsideRinging { call } => {
                let id = self.call(call);
                self.sb.handle_outside_ringing(id, dir_call_of(id));
            }
            Op::OutsideAnswered { call, fallback } => {
                let id = self.call(call);
                let wait = fallback.map(|s| Duration::from_secs(u64::from(s % 8)));
                let _ = self
                    .sb
                    .handle_outside_answered(now, id, dir_call_of(id), wait);
            }
            Op::OutsideMedia { call } => self.sb.handle_outside_media(self.call(call)),
            Op::OutsideAnswerFailed { call } => {
                self.sb.handle_outside_answer_failed(now, self.call(call))
            }
            Op::DirectoryEnded { call, reason } => {
                let r = REASONS[usize::from(reason) % REASONS.len()];
                let id = self.call(call);
                let dc = self
                    .sb
                    .outside_call(id)
                    .and_then(|o| o.dir_call)
                    .unwrap_or(u64::from(call));
                self.sb.handle_directory_ended(now, dc, r);
            }
            Op::FarHandoff {
                call,
                number: n,
                handoff,
            } => {
                let id = self.call(call);
                let dc = self
                    .sb
                    .outside_call(id)
                    .and_then(|o| o.dir_call)
                    .unwrap_or(u64::from(call));
                if let Ok(number) = Number::parse(number(n)) {
                    self.sb
                        .handle_far_handoff(now, dc, number, handoff.map(u64::from));
                }
            }
            Op::HandoffSent {
                value,
                from,
                to,
                by,
            } => {
                let back = HandedOn {
                    by: ext(by).to_string(),
                    joins: None,
                };
                self.sb.handle_handoff_sent(
                    now,
                    u64::from(value),
                    outside_number(from),
                    ext(to),
                    back,
                );
            }
            Op::UplinkDown => self.sb.handle_uplink_down(now),
            Op::OutsideFailed { call, reason } => {
                let r = REASONS[usize::from(reason) % REASONS.len()];
                self.sb.handle_outside_failed(now, self.call(call), r);
            }
            Op::OutsideHandoff { call, number: n } => {
                if let Ok(number) = Number::parse(number(n)) {
                    let _ = self.sb.handle_outside_handoff(now, self.call(call), number);
                }
            }
            Op::VoicemailDone { call } => self.sb.handle_voicemail_done(now, self.call(call)),
            Op::MediaFailed { call } => self.sb.handle_media_failed(now, self.call(call)),
            Op::Settings {
                ext: e,
                always,
                busy,
                no_answer,
                dnd,
            } => {
                let s = LineSettings {
                    forward_always: always.map(|n| number(n).to_string()),
                    forward_busy: busy.map(|n| number(n).to_string()),
                    forward_no_answer: no_answer.map(|n| number(n).to_string()),
                    dnd,
                };
                self.sb.set_settings(ext(e), s);
            }
            Op::SpeedDial { number: n } => self.sb.set_speed_dial("*1", n.map(number)),
            Op::Mailboxes(w) => self.sb.set_mailboxes_writable(w),
            Op::Wait(secs) => {
                self.now += Duration::from_secs(u64::from(secs));
                self.sb.handle_timeout(self.now);
                // Whatever was due has been dealt with: the shell's timer
                // would otherwise fire again at once, for ever.
                if let Some(at) = self.sb.poll_timeout() {
                    assert!(at > self.now, "a deadline still due after handle_timeout");
                }
            }
        }
        self.drain();
    }
}

fuzz_target!(|input: Input| {
    let config = Config {
        ring_timeout: Duration::from_secs(30),
        voicemail: input.voicemail,
        outside: input.outside,
        extension_range: (200, 299),
        reception: input
            .reception
            .iter()
            .take(4)
            .map(|&e| ext(e).to_string())
            .collect(),
        hunt_step: input
            .hunt
            .map(|s| Duration::from_secs(u64::from(s % 20) + 1)),
        office_mailbox: input.office_mailbox.map(|e| ext(e).to_string()),
        // A group with an extension of its own, made from the same bytes
        // as reception: dialling it (one of NUMBERS) rings its members.
        groups: vec![RingGroup {
            ext: "290".into(),
            name: "Sales".into(),
            members: input
                .reception
                .iter()
                .rev()
                .take(3)
                .map(|&e| ext(e).to_string())
                .collect(),
            hunt_step: input
                .hunt
                .map(|s| Duration::from_secs(u64::from(s % 7) + 1)),
            mailbox: input.office_mailbox.map(|e| ext(e).to_string()),
        }],
    };
    let mut run = Run {
        sb: Switchboard::new(config),
        now: Instant::now(),
        req: 0,
        seen: BTreeMap::new(),
        hung_up: BTreeSet::new(),
    };
    // KEYLINE_FUZZ_TRACE=1 prints each input as it is applied (to read a
    // crash's steps: run the target on the crash file).
    let trace = std::env::var_os("KEYLINE_FUZZ_TRACE").is_some();
    for op in input.ops.iter().take(200) {
        if trace {
            eprintln!("{op:?}");
        }
        run.step(op);
    }

    // Everyone hangs up, every line goes down, a day passes.
    let calls: Vec<(u64, Line, Line)> = run
        .sb
        .calls()
        .map(|c| (c.id, c.caller.clone(), c.callee.clone()))
        .collect();
    for (id, caller, callee) in calls {
        let now = run.now;
        for end in [caller, callee] {
            if let Some(ext) = end.ext() {
                let _ = run.sb.handle_hangup(now, ext, id);
            }
        }
        run.sb.handle_voicemail_done(now, id);
        run.drain();
    }
    let now = run.now;
    run.sb.handle_uplink_down(now);
    run.drain();
    for e in EXTS {
        let now = run.now;
        run.sb.handle_line_down(now, e);
        run.drain();
    }
    for _ in 0..4 {
        run.now += Duration::from_secs(86_400);
        let now = run.now;
        run.sb.handle_timeout(now);
        run.drain();
    }
    let left: Vec<_> = run.sb.calls().collect();
    assert!(left.is_empty(), "calls that never end: {left:#?}");
    for (id, records) in &run.seen {
        assert_eq!(*records, 1, "call {id} was recorded {records} times");
    }
});
