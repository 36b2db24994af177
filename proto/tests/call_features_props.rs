//! Property tests for the switchboard with every feature in play: random
//! dials (including feature codes, short codes and forwarding settings),
//! answers, rejects, hang-ups, holds, blind transfers, pick-ups, voicemail
//! and stations coming and going. Whatever happens, nothing panics, a line
//! is in at most one call (a transfer leg aside), and once time has passed
//! and every station has gone, no call is left and every call that was
//! created was recorded exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keyline_proto::call::{Action, Config, Switchboard};
use keyline_proto::msg::LineSettings;
use proptest::prelude::*;

const LINES: [&str; 5] = ["201", "202", "203", "204", "205"];
const RING: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Ev {
    Up(usize),
    Down(usize),
    Dial(usize, String),
    Answer(usize, u64),
    Reject(usize, u64),
    Hangup(usize, u64),
    Hold(usize, u64, bool),
    Transfer(usize, u64, usize),
    Consult(usize, u64, usize),
    Complete(usize),
    VoicemailDone(u64),
    Forward(usize, u8, Option<usize>),
    Advance(u64),
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..LINES.len()).prop_map(|i| LINES[i].to_string()),
        Just("299".to_string()),
        Just("*8".to_string()),
        Just("*78".to_string()),
        Just("*79".to_string()),
        Just("*1".to_string()),
        (0..LINES.len()).prop_map(|i| format!("*72{}", LINES[i])),
        Just("*73".to_string()),
    ]
}

fn event() -> impl Strategy<Value = Ev> {
    let l = 0..LINES.len();
    prop_oneof![
        l.clone().prop_map(Ev::Up),
        l.clone().prop_map(Ev::Down),
        (l.clone(), number()).prop_map(|(a, n)| Ev::Dial(a, n)),
        (l.clone(), 1..12u64).prop_map(|(a, c)| Ev::Answer(a, c)),
        (l.clone(), 1..12u64).prop_map(|(a, c)| Ev::Reject(a, c)),
        (l.clone(), 1..12u64).prop_map(|(a, c)| Ev::Hangup(a, c)),
        (l.clone(), 1..12u64, any::<bool>()).prop_map(|(a, c, on)| Ev::Hold(a, c, on)),
        (l.clone(), 1..12u64, l.clone()).prop_map(|(a, c, t)| Ev::Transfer(a, c, t)),
        (l.clone(), 1..12u64, l.clone()).prop_map(|(a, c, t)| Ev::Consult(a, c, t)),
        l.clone().prop_map(Ev::Complete),
        (1..12u64).prop_map(Ev::VoicemailDone),
        (l.clone(), 0..3u8, prop::option::of(l)).prop_map(|(a, k, t)| Ev::Forward(a, k, t)),
        (0..40_000u64).prop_map(Ev::Advance),
    ]
}

struct Run {
    sb: Switchboard,
    now: Instant,
    created: BTreeSet<u64>,
    recorded: BTreeMap<u64, usize>,
}

impl Run {
    fn drain(&mut self) {
        while let Some(a) = self.sb.poll_action() {
            match a {
                Action::Ringing { call, .. }
                | Action::Ring { call, .. }
                | Action::ToVoicemail { call, .. } => {
                    self.created.insert(call);
                }
                Action::Record(r) => {
                    if let Some(id) = r.call {
                        *self.recorded.entry(id).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }

    fn check_lines(&self) -> Result<(), TestCaseError> {
        for ext in LINES {
            let n = self
                .sb
                .calls()
                .filter(|c| c.replaces.is_none() || c.callee == ext)
                .filter(|c| c.consult_of.is_none() || c.callee == ext)
                .filter(|c| c.callee == ext || c.caller == ext)
                .filter(|c| {
                    // A mailbox is not in the call it records.
                    !(c.callee == ext
                        && matches!(c.state, keyline_proto::call::CallState::Voicemail { .. }))
                })
                .count();
            prop_assert!(n <= 1, "line {ext} is in {n} calls");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_call_ends_and_is_recorded_once(
        voicemail in any::<bool>(),
        events in prop::collection::vec(event(), 1..120),
    ) {
        let mut run = Run {
            sb: Switchboard::new(Config {
                ring_timeout: RING,
                voicemail,
                ..Config::default()
            }),
            now: Instant::now(),
            created: BTreeSet::new(),
            recorded: BTreeMap::new(),
        };
        run.sb.set_speed_dial("*1", Some("203"));
        for l in LINES {
            run.sb.add_line(l);
            run.sb.handle_line_up(run.now, l);
        }
        let mut req = 0;
        for ev in events {
            req += 1;
            let now = run.now;
            // Call numbers in events pick among the calls that exist now,
            // so answers, holds and transfers hit real calls.
            let ids: Vec<u64> = run.sb.calls().map(|c| c.id).collect();
            let pick = |k: u64| -> u64 {
                if ids.is_empty() { k } else { ids[(k as usize) % ids.len()] }
            };
            // And the acting line is, more often than not, an end of it.
            let end = |i: usize, c: u64| -> &'static str {
                match run.sb.call(c) {
                    Some(call) if i % 3 == 0 => LINES.iter().copied().find(|l| call.caller == *l).unwrap_or(LINES[i]),
                    Some(call) if i % 3 == 1 => LINES.iter().copied().find(|l| call.callee == *l).unwrap_or(LINES[i]),
                    _ => LINES[i],
                }
            };
            let ev = match ev {
                Ev::Answer(i, c) => { let c = pick(c); Ev::Answer(LINES.iter().position(|l| *l == end(1, c)).unwrap_or(i), c) }
                Ev::Reject(i, c) => { let c = pick(c); Ev::Reject(LINES.iter().position(|l| *l == end(1, c)).unwrap_or(i), c) }
                Ev::Hangup(i, c) => { let c = pick(c); Ev::Hangup(LINES.iter().position(|l| *l == end(i, c)).unwrap_or(i), c) }
                Ev::Hold(i, c, on) => { let c = pick(c); Ev::Hold(LINES.iter().position(|l| *l == end(i, c)).unwrap_or(i), c, on) }
                Ev::Transfer(i, c, t) => { let c = pick(c); Ev::Transfer(LINES.iter().position(|l| *l == end(i, c)).unwrap_or(i), c, t) }
                Ev::Consult(i, c, t) => {
                    let c = pick(c);
                    Ev::Consult(LINES.iter().position(|l| *l == end(i, c)).unwrap_or(i), c, t)
                }
                Ev::VoicemailDone(c) => Ev::VoicemailDone(pick(c)),
                other => other,
            };
            match ev {
                Ev::Up(i) => run.sb.handle_line_up(now, LINES[i]),
                Ev::Down(i) => run.sb.handle_line_down(now, LINES[i]),
                Ev::Dial(i, n) => run.sb.handle_dial(now, LINES[i], req, &n),
                Ev::Answer(i, c) => { let _ = run.sb.handle_answer(now, LINES[i], c); }
                Ev::Reject(i, c) => { let _ = run.sb.handle_reject(now, LINES[i], c); }
                Ev::Hangup(i, c) => { let _ = run.sb.handle_hangup(now, LINES[i], c); }
                Ev::Hold(i, c, on) => { let _ = run.sb.handle_hold(LINES[i], c, on); }
                Ev::Transfer(i, c, t) => {
                    let _ = run.sb.handle_transfer(now, LINES[i], req, c, LINES[t]);
                }
                Ev::Consult(i, c, t) => {
                    let _ = run.sb.handle_consult(now, LINES[i], req, c, LINES[t]);
                }
                Ev::Complete(i) => {
                    let _ = run.sb.handle_consult_complete(now, LINES[i], req);
                }
                Ev::VoicemailDone(c) => run.sb.handle_voicemail_done(now, c),
                Ev::Forward(i, kind, t) => {
                    let mut s = run.sb.settings(LINES[i]).cloned().unwrap_or_default();
                    let t = t.map(|t| LINES[t].to_string());
                    match kind {
                        0 => s.forward_always = t,
                        1 => s.forward_busy = t,
                        _ => s.forward_no_answer = t,
                    }
                    run.sb.set_settings(LINES[i], s);
                }
                Ev::Advance(ms) => {
                    run.now += Duration::from_millis(ms);
                    run.sb.handle_timeout(run.now);
                }
            }
            run.drain();
            run.check_lines()?;
        }
        // Let every ring run out (forward chains included), end voicemail,
        // then every station goes.
        for _ in 0..8 {
            run.now += RING + Duration::from_secs(1);
            run.sb.handle_timeout(run.now);
            run.drain();
        }
        let ids: Vec<u64> = run.sb.calls().map(|c| c.id).collect();
        for id in ids {
            run.sb.handle_voicemail_done(run.now, id);
        }
        for l in LINES {
            run.sb.handle_line_down(run.now, l);
        }
        run.drain();
        prop_assert_eq!(run.sb.calls().count(), 0, "calls left after everyone left");
        for (id, n) in &run.recorded {
            prop_assert_eq!(*n, 1, "call {} recorded {} times", id, n);
        }
        let recorded: BTreeSet<u64> = run.recorded.keys().copied().collect();
        prop_assert_eq!(recorded, run.created);
        let _ = LineSettings::default();
    }
}
