//! Unit tests of outside calls, ring groups, mailboxes, forwarding and
//! transfers to outside numbers, and parties handed on.

use std::time::Duration;

use super::*;

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

/// Whether the switchboard holds the trunk line `l`.
trait HasLine<L> {
    fn has_line(&self, l: &L) -> bool;
}

impl HasLine<TrunkLine> for Switchboard {
    fn has_line(&self, l: &TrunkLine) -> bool {
        self.trunks.contains_key(l)
    }
}

impl HasLine<Line> for Switchboard {
    fn has_line(&self, l: &Line) -> bool {
        self.line(l).is_some()
    }
}

/// The trunk line of the directory's incoming call `dc` from `n`.
fn tin(dc: u64, n: &str) -> TrunkLine {
    TrunkLine {
        id: TrunkId::In(dc),
        number: Number::parse(n).expect("number"),
    }
}

/// The trunk line of the outside call `id` placed to `n`.
fn tout(id: CallId, n: &str) -> Line {
    Line::Trunk(TrunkLine {
        id: TrunkId::Out(id),
        number: Number::parse(n).expect("number"),
    })
}

fn record(acts: &[Action]) -> Option<&CallRecord> {
    acts.iter().find_map(|a| match a {
        Action::Record(r) => Some(r),
        _ => None,
    })
}

#[test]
fn trunk_names_show_their_number() {
    let t = tout(12, "bob~x");
    assert!(t.is_trunk() && !Line::station("201").is_trunk());
    assert_eq!(t.shown(), "bob~x");
    assert_eq!(Line::station("201").shown(), "201");
    assert_eq!(t.to_string(), "bob~x");
    assert!(Line::station("201") == "201" && t != "bob~x");
}

#[test]
fn an_outside_call_rings_a_trunk_and_answers_once_the_far_end_rings() {
    let (mut sb, now) = board(&["201"]);
    sb.handle_dial(now, "201", 1, "김민준");
    let acts = drain(&mut sb);
    let trunk = tout(1, "김민준");
    assert_eq!(
        acts,
        vec![Action::Ring {
            callee: trunk.clone(),
            call: 1,
            from: "201".into()
        }]
    );
    sb.handle_outside_ringing(1, 1000 + 1);
    assert_eq!(
        drain(&mut sb),
        vec![Action::Ringing {
            caller: "201".into(),
            req: 1,
            call: 1,
            callee: "김민준".into()
        }]
    );
    sb.answer(now, &trunk, 1).expect("answer");
    assert!(drain(&mut sb).contains(&Action::Connected {
        call: 1,
        caller: "201".into(),
        callee: trunk.clone()
    }));
    sb.handle_hangup(now, "201", 1).expect("hangup");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: trunk.clone(),
        call: 1,
        reason: EndReason::Hangup
    }));
    let r = record(&acts).expect("record");
    assert_eq!((r.caller.as_str(), r.callee.as_str()), ("201", "김민준"));
    assert_eq!(r.outcome, Outcome::Answered);
    // The trunk line is gone with its call; the station is free again.
    assert!(!sb.has_line(&trunk));
    sb.handle_dial(now, "201", 2, "bob");
    assert!(matches!(&drain(&mut sb)[0], Action::Ring { .. }));
}

#[test]
fn a_failed_outside_call_answers_the_dial_and_frees_the_line() {
    let (mut sb, now) = board(&["201"]);
    sb.handle_dial(now, "201", 5, "nobody");
    drain(&mut sb);
    sb.handle_outside_failed(now, 1, FailReason::UnknownNumber);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::DialFailed {
        caller: "201".into(),
        req: 5,
        reason: FailReason::UnknownNumber
    }));
    assert_eq!(
        record(&acts).map(|r| r.outcome),
        Some(Outcome::UnknownNumber)
    );
    assert_eq!(sb.lines.len(), 1);
    assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
    // After it rang, a decline ends the call for the caller.
    sb.handle_dial(now, "201", 6, "carol");
    sb.handle_outside_ringing(2, 1000 + 2);
    drain(&mut sb);
    sb.handle_outside_failed(now, 2, FailReason::Declined);
    assert!(drain(&mut sb).contains(&Action::Ended {
        to: "201".into(),
        call: 2,
        reason: EndReason::Rejected
    }));
    // Busy and no answer after it rang say so.
    for (id, why, end, outcome) in [
        (3, FailReason::Busy, EndReason::Busy, Outcome::Busy),
        (
            4,
            FailReason::NoAnswer,
            EndReason::NoAnswer,
            Outcome::NoAnswer,
        ),
    ] {
        sb.handle_dial(now, "201", 7, "carol");
        sb.handle_outside_ringing(id, 1000 + id);
        drain(&mut sb);
        sb.handle_outside_failed(now, id, why);
        let acts = drain(&mut sb);
        assert!(acts.contains(&Action::Ended {
            to: "201".into(),
            call: id,
            reason: end
        }));
        assert_eq!(record(&acts).map(|r| r.outcome), Some(outcome));
    }
}

#[test]
fn numbers_in_the_extension_range_never_go_outside() {
    let (mut sb, now) = board(&["201"]);
    sb.handle_dial(now, "201", 1, "250");
    assert!(drain(&mut sb).contains(&Action::DialFailed {
        caller: "201".into(),
        req: 1,
        reason: FailReason::UnknownNumber
    }));
    // Nor does anything when the gateway has no directory.
    let (mut sb, now) = board(&["201"]);
    sb.set_config(Config::default());
    sb.handle_dial(now, "201", 1, "bob");
    assert!(drain(&mut sb).contains(&Action::DialFailed {
        caller: "201".into(),
        req: 1,
        reason: FailReason::UnknownNumber
    }));
}

#[test]
fn a_call_to_the_office_rings_every_free_station_and_the_first_answer_wins() {
    let (mut sb, now) = board(&["201", "202", "203", "204"]);
    sb.set_settings(
        "203",
        LineSettings {
            dnd: true,
            ..LineSettings::default()
        },
    );
    sb.handle_line_down(now, "204");
    let trunk = tin(9, "alice");
    sb.handle_inbound(now, trunk.clone(), 9, None);
    let acts = drain(&mut sb);
    let rung: Vec<&str> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Ring { callee, from, .. } if from == "alice" => Some(callee.shown()),
            _ => None,
        })
        .collect();
    assert_eq!(rung, vec!["201", "202"]);
    assert!(matches!(&acts[0], Action::Ringing { caller, req: 9, .. } if *caller == trunk));
    sb.handle_answer(now, "202", 1).expect("answer");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "201".into(),
        call: 1,
        reason: EndReason::AnsweredElsewhere
    }));
    assert!(acts.contains(&Action::Connected {
        call: 1,
        caller: trunk.clone().into(),
        callee: "202".into()
    }));
    assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
    // 202 is busy with the caller: handing it on to 202 itself fails
    // and keeps the call.
    sb.handle_transfer(now, "202", 3, 1, "202")
        .expect("refused cleanly");
    assert!(drain(&mut sb)
        .iter()
        .any(|a| matches!(a, Action::TransferFailed { .. })));
    assert!(sb.call(1).is_some());
    sb.hangup(now, &Line::from(trunk.clone()), 1)
        .expect("hangup");
    assert!(drain(&mut sb).contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::Hangup
    }));
    assert!(!sb.has_line(&trunk));
}

#[test]
fn a_group_keeps_ringing_until_the_last_member_declines() {
    let (mut sb, now) = board(&["201", "202"]);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, None);
    drain(&mut sb);
    sb.handle_reject(now, "201", 1).expect("reject");
    assert!(drain(&mut sb).is_empty());
    assert!(sb.lines.get("201").is_some_and(|l| l.call.is_none()));
    sb.handle_reject(now, "202", 1).expect("reject");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: trunk.clone().into(),
        call: 1,
        reason: EndReason::Rejected
    }));
    // Nobody free: busy at once.
    sb.handle_dial(now, "201", 2, "202");
    drain(&mut sb);
    let t2 = tin(2, "alice");
    sb.handle_inbound(now, t2.clone(), 2, None);
    assert!(drain(&mut sb).contains(&Action::DialFailed {
        caller: t2.clone().into(),
        req: 2,
        reason: FailReason::Busy
    }));
    assert!(!sb.has_line(&t2));
}

#[test]
fn a_ringing_group_call_ends_everywhere_when_the_caller_gives_up() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, None);
    drain(&mut sb);
    sb.handle_line_down(now, "203");
    assert!(
        drain(&mut sb).is_empty(),
        "one member going away is not the end"
    );
    sb.hangup(now, &Line::from(trunk.clone()), 1)
        .expect("cancel");
    let acts = drain(&mut sb);
    for ext in ["201", "202"] {
        assert!(acts
            .iter()
            .any(|a| matches!(a, Action::Ended { to, call: 1, .. } if to == ext)));
    }
    assert!(sb.lines.values().all(|l| l.call.is_none()) && sb.trunks.is_empty());
}

#[test]
fn an_outside_caller_may_dial_an_extension_but_not_a_feature_code() {
    let (mut sb, now) = board(&["201", "202"]);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ring {
        callee: "202".into(),
        call: 1,
        from: "alice".into()
    }));
    let t2 = tin(2, "mallory");
    sb.handle_inbound(now, t2.clone(), 2, Some("*72999"));
    assert!(drain(&mut sb).contains(&Action::DialFailed {
        caller: t2.clone().into(),
        req: 2,
        reason: FailReason::NotAllowed
    }));
    assert!(sb
        .settings("201")
        .is_some_and(|s| s.forward_always.is_none()));
    // Nor an outside number through the office.
    let t3 = tin(3, "mallory");
    sb.handle_inbound(now, t3.clone(), 3, Some("premium-line"));
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::UnknownNumber,
            ..
        }
    )));
    assert!(!sb.has_line(&t3));
}

#[test]
fn calls_do_not_go_to_a_mailbox_that_cannot_store_a_message() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    sb.set_config(Config {
        voicemail: true,
        ..Config::default()
    });
    sb.set_mailboxes_writable(false);
    // Unanswered: ends as no answer, no mailbox.
    sb.handle_dial(now, "201", 1, "202");
    drain(&mut sb);
    sb.handle_timeout(now + Config::default().ring_timeout);
    let acts = drain(&mut sb);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::ToVoicemail { .. })),
        "{acts:?}"
    );
    assert!(acts.contains(&Action::Ended {
        to: "201".into(),
        call: 1,
        reason: EndReason::NoAnswer
    }));
    // Busy: the caller hears busy.
    sb.handle_dial(now, "201", 2, "202");
    drain(&mut sb);
    sb.handle_answer(now, "202", 2).expect("answer");
    drain(&mut sb);
    sb.handle_dial(now, "203", 3, "202");
    let acts = drain(&mut sb);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            Action::DialFailed {
                reason: FailReason::Busy,
                ..
            }
        )),
        "{acts:?}"
    );
    // Room again: the busy line's mailbox takes the next caller.
    sb.set_mailboxes_writable(true);
    sb.handle_dial(now, "203", 4, "202");
    let acts = drain(&mut sb);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::ToVoicemail { mailbox, .. } if mailbox == "202")),
        "{acts:?}"
    );
}

#[test]
fn office_calls_nobody_answers_go_to_the_office_mailbox() {
    let (mut sb, now) = board(&["201", "202"]);
    sb.set_config(Config {
        outside: true,
        voicemail: true,
        office_mailbox: Some("201".into()),
        ..Config::default()
    });
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, None);
    drain(&mut sb);
    sb.handle_timeout(now + Config::default().ring_timeout);
    let acts = drain(&mut sb);
    for ext in ["201", "202"] {
        assert!(acts.contains(&Action::Ended {
            to: ext.into(),
            call: 1,
            reason: EndReason::NoAnswer
        }));
    }
    assert!(acts.contains(&Action::ToVoicemail {
        call: 1,
        caller: trunk.clone().into(),
        mailbox: "201".into()
    }));
    assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
    // Nobody free: straight to the mailbox.
    sb.handle_dial(now, "201", 2, "202");
    drain(&mut sb);
    let t2 = tin(2, "bob");
    sb.handle_inbound(now, t2.clone(), 2, None);
    let acts = drain(&mut sb);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::ToVoicemail { caller, mailbox, .. } if *caller == t2 && mailbox == "201"
    )));
    sb.handle_voicemail_done(now, 3);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: t2.clone().into(),
        call: 3,
        reason: EndReason::Hangup
    }));
    assert!(!sb.has_line(&t2));
}

fn fwd(sb: &mut Switchboard, ext: &str, always: Option<&str>, no_answer: Option<&str>) {
    sb.set_settings(
        ext,
        LineSettings {
            forward_always: always.map(str::to_string),
            forward_no_answer: no_answer.map(str::to_string),
            ..LineSettings::default()
        },
    );
}

#[test]
fn forwards_to_outside_numbers_dial_out_or_redirect_the_outside_caller() {
    let (mut sb, now) = board(&["201", "202"]);
    // *72 takes an outside number when the office has a directory.
    sb.handle_dial(now, "202", 1, "*72김민준");
    drain(&mut sb);
    assert_eq!(
        sb.settings("202").and_then(|s| s.forward_always.clone()),
        Some("김민준".to_string())
    );
    // An internal caller is taken out through the directory.
    sb.handle_dial(now, "201", 2, "202");
    let acts = drain(&mut sb);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Ring { callee, from, .. } if callee.shown() == "김민준" && callee.is_trunk() && from == "201"
    )));
    sb.handle_hangup(now, "201", 1).expect("cancel");
    drain(&mut sb);
    // An outside caller is sent there directly (client-side forwarding).
    let trunk = tin(7, "alice");
    sb.handle_inbound(now, trunk.clone(), 7, Some("202"));
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Redirect {
        caller: trunk.clone(),
        req: Some(7),
        call: None,
        to: "김민준".into()
    }));
    assert_eq!(record(&acts).map(|r| r.outcome), Some(Outcome::Redirected));
    assert!(!sb.has_line(&trunk));
    // On no answer, likewise.
    fwd(&mut sb, "202", None, Some("bob"));
    let t2 = tin(8, "alice");
    sb.handle_inbound(now, t2.clone(), 8, Some("202"));
    drain(&mut sb);
    sb.handle_timeout(now + Config::default().ring_timeout);
    let acts = drain(&mut sb);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Redirect { caller, req: None, call: Some(_), to } if *caller == t2 && to == "bob"
    )));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Ended { to, reason: EndReason::Forwarded, .. } if to == "202"
    )));
    assert!(sb.lines.values().all(|l| l.call.is_none()) && sb.trunks.is_empty());
    // An internal caller rings out after the no-answer time.
    sb.handle_dial(now, "201", 9, "202");
    let id = match &drain(&mut sb)[0] {
        Action::Ringing { call, .. } => *call,
        other => panic!("{other:?}"),
    };
    sb.handle_timeout(now + Config::default().ring_timeout * 2);
    let acts = drain(&mut sb);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Ring { callee, call, .. } if *call == id && callee.shown() == "bob"
    )));
    // The caller is not picked up by *8 while it rings outside.
    sb.handle_dial(now, "202", 10, "*8");
    assert!(drain(&mut sb)
        .iter()
        .any(|a| matches!(a, Action::DialFailed { .. })));
}

#[test]
fn a_station_is_transferred_to_an_outside_number_or_given_back() {
    let (mut sb, now) = board(&["201", "202"]);
    sb.handle_dial(now, "201", 1, "202");
    sb.handle_answer(now, "202", 1).expect("answer");
    drain(&mut sb);
    // 202 hands 201 on to an outside number: a leg from 201 rings out.
    sb.handle_transfer(now, "202", 2, 1, "bob")
        .expect("transfer");
    let acts = drain(&mut sb);
    let (leg, trunk) = acts
        .iter()
        .find_map(|a| match a {
            Action::Ring { callee, call, from } if from == "201" => Some((*call, callee.clone())),
            _ => None,
        })
        .expect("a leg rings out");
    assert!(trunk.is_trunk());
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Transferring { target, .. } if target == "bob"
    )));
    // Busy out there: the call comes back to 202.
    sb.handle_outside_failed(now, leg, FailReason::Busy);
    let acts = drain(&mut sb);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::TransferFailed { to, call: 1, .. } if to == "202"
    )));
    assert!(sb.call(1).is_some());
    assert!(!sb.has_line(&trunk));
    // Again, and it answers: 201 continues with the outside party.
    sb.handle_transfer(now, "202", 3, 1, "bob")
        .expect("transfer");
    let acts = drain(&mut sb);
    let (leg, trunk) = acts
        .iter()
        .find_map(|a| match a {
            Action::Ring { callee, call, .. } if callee.is_trunk() => Some((*call, callee.clone())),
            _ => None,
        })
        .expect("a leg rings out");
    sb.handle_outside_ringing(leg, 1000 + leg);
    sb.answer(now, &trunk, leg).expect("answer");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Replaced {
        to: "201".into(),
        old: 1,
        new: leg,
        peer: "bob".into()
    }));
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::Transferred
    }));
    assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
}

fn rung(acts: &[Action]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Ring { callee, .. } => Some(callee.shown().to_string()),
            _ => None,
        })
        .collect()
}

/// A board with the ring group `600` (`members`, in turn `step` each
/// or all at once) and voicemail as asked.
fn group_board(
    lines: &[&str],
    members: &[&str],
    step: Option<Duration>,
    mailbox: Option<&str>,
    voicemail: bool,
) -> (Switchboard, Instant) {
    let (mut sb, now) = board(lines);
    sb.set_config(Config {
        outside: true,
        voicemail,
        groups: vec![RingGroup {
            ext: "600".into(),
            name: "Sales".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            hunt_step: step,
            mailbox: mailbox.map(str::to_string),
        }],
        ..Config::default()
    });
    (sb, now)
}

#[test]
fn a_transfer_to_a_groups_extension_says_so_and_keeps_the_call() {
    let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "203"], None, None, false);
    sb.handle_dial(now, "201", 1, "202");
    sb.handle_answer(now, "202", 1).expect("answer");
    drain(&mut sb);
    sb.handle_transfer(now, "202", 7, 1, "600")
        .expect("refused cleanly");
    assert!(drain(&mut sb).contains(&Action::TransferFailed {
        to: "202".into(),
        req: 7,
        call: 1,
        reason: FailReason::UnknownNumber,
        note: Some(GROUP_TRANSFER_REFUSED),
    }));
    assert!(sb.call(1).is_some());
    sb.handle_consult(now, "202", 8, 1, "600")
        .expect("refused cleanly");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::TransferFailed {
            note: Some(GROUP_TRANSFER_REFUSED),
            ..
        }
    )));
}

#[test]
fn a_hunt_groups_extension_rings_its_members_in_turn() {
    let step = Duration::from_secs(5);
    let (mut sb, now) = group_board(
        &["201", "202", "203"],
        &["202", "203"],
        Some(step),
        None,
        false,
    );
    sb.handle_dial(now, "201", 7, "600");
    let acts = drain(&mut sb);
    // The caller hears the group's extension ring, not an outside call.
    assert!(acts.contains(&Action::Ringing {
        caller: "201".into(),
        req: 7,
        call: 1,
        callee: "600".into()
    }));
    assert_eq!(rung(&acts), vec!["202"]);
    // Nothing more before the step is over.
    sb.handle_timeout(now + step - Duration::from_millis(1));
    assert!(drain(&mut sb).is_empty());
    assert_eq!(sb.poll_timeout(), Some(now + step));
    sb.handle_timeout(now + step);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::NoAnswer
    }));
    assert_eq!(rung(&acts), vec!["203"]);
    assert_eq!(sb.poll_timeout(), Some(now + step * 2));
    // 202 no longer rings for it: answering is refused.
    assert_eq!(
        sb.handle_answer(now + step, "202", 1),
        Err(CallError::NotYours)
    );
    sb.handle_answer(now + step, "203", 1).expect("answer");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Connected {
        call: 1,
        caller: "201".into(),
        callee: "203".into()
    }));
    sb.handle_hangup(now + step * 3, "201", 1).expect("hang up");
    let acts = drain(&mut sb);
    let r = record(&acts).expect("record");
    assert_eq!((r.callee.as_str(), r.outcome), ("203", Outcome::Answered));
}

#[test]
fn a_ring_all_groups_extension_rings_every_member_and_the_first_answer_wins() {
    let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "203"], None, None, false);
    sb.handle_dial(now, "201", 1, "600");
    let acts = drain(&mut sb);
    assert_eq!(rung(&acts), vec!["202", "203"]);
    sb.handle_answer(now, "203", 1).expect("answer");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::AnsweredElsewhere
    }));
    assert!(acts.contains(&Action::Connected {
        call: 1,
        caller: "201".into(),
        callee: "203".into()
    }));
    assert!(sb.lines.get("202").is_some_and(|l| l.call.is_none()));
}

#[test]
fn a_hunt_skips_busy_offline_and_dnd_members_then_goes_to_the_groups_mailbox() {
    let step = Duration::from_secs(4);
    let (mut sb, now) = group_board(
        &["201", "202", "203", "204", "205", "206", "209"],
        &["202", "203", "204", "205"],
        Some(step),
        Some("209"),
        true,
    );
    sb.handle_dial(now, "202", 1, "*78"); // do not disturb
    sb.handle_line_down(now, "203");
    sb.handle_dial(now, "204", 2, "206"); // busy in a call
    drain(&mut sb);
    sb.handle_dial(now, "201", 3, "600");
    let acts = drain(&mut sb);
    assert_eq!(rung(&acts), vec!["205"]);
    let id = sb
        .calls()
        .find(|c| c.caller == "201")
        .map(|c| c.id)
        .expect("the group call");
    // 205 does not answer and nobody else is free: the group's mailbox.
    sb.handle_timeout(now + step);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::ToVoicemail {
        call: id,
        caller: "201".into(),
        mailbox: "209".into()
    }));
    assert!(acts.contains(&Action::Ended {
        to: "205".into(),
        call: id,
        reason: EndReason::NoAnswer
    }));
}

#[test]
fn nobody_answering_a_group_without_a_mailbox_tells_the_caller() {
    let step = Duration::from_secs(3);
    // With voicemail on, a group without a mailbox still ends
    // unanswered: the members' own mailboxes do not take it.
    let (mut sb, now) = group_board(
        &["201", "202", "203"],
        &["202", "203"],
        Some(step),
        None,
        true,
    );
    sb.handle_dial(now, "201", 1, "600");
    drain(&mut sb);
    sb.handle_timeout(now + step);
    sb.handle_timeout(now + step * 2);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "201".into(),
        call: 1,
        reason: EndReason::NoAnswer
    }));
    assert!(!acts.iter().any(|a| matches!(a, Action::ToVoicemail { .. })));
    assert_eq!(record(&acts).map(|r| r.outcome), Some(Outcome::NoAnswer));
    assert_eq!(sb.calls().count(), 0);
}

#[test]
fn a_group_with_nobody_free_is_busy_unreachable_or_its_mailbox() {
    // Every member busy: busy.
    let (mut sb, now) = group_board(&["201", "202", "203"], &["202", "201"], None, None, false);
    sb.handle_dial(now, "202", 1, "203");
    drain(&mut sb);
    // The caller is a member: it does not ring itself.
    sb.handle_dial(now, "201", 2, "600");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::DialFailed {
        caller: "201".into(),
        req: 2,
        reason: FailReason::Busy
    }));
    assert_eq!(record(&acts).map(|r| r.callee.as_str()), Some("600"));
    // Members that are not stations here: unreachable.
    let (mut sb, now) = group_board(&["201"], &["298", "299"], None, None, false);
    sb.handle_dial(now, "201", 1, "600");
    assert!(drain(&mut sb).contains(&Action::DialFailed {
        caller: "201".into(),
        req: 1,
        reason: FailReason::Unreachable
    }));
    // With a mailbox: straight there.
    let (mut sb, now) = group_board(&["201", "202", "209"], &["202"], None, Some("209"), true);
    sb.handle_line_down(now, "202");
    sb.handle_dial(now, "201", 1, "600");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::ToVoicemail {
        call: 1,
        caller: "201".into(),
        mailbox: "209".into()
    }));
}

#[test]
fn an_outside_caller_may_dial_a_groups_extension() {
    let (mut sb, now) = group_board(&["202", "203"], &["202", "203"], None, None, false);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, Some("600"));
    let acts = drain(&mut sb);
    assert_eq!(rung(&acts), vec!["202", "203"]);
    sb.handle_answer(now, "202", 1).expect("answer");
    assert!(drain(&mut sb).contains(&Action::Connected {
        call: 1,
        caller: trunk.clone().into(),
        callee: "202".into()
    }));
    // Nobody free: refused, and the trunk line is gone.
    let t2 = tin(2, "bob");
    sb.handle_line_down(now, "203");
    sb.handle_inbound(now, t2.clone(), 2, Some("600"));
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::DialFailed {
        caller: t2.clone().into(),
        req: 2,
        reason: FailReason::Busy
    }));
    assert!(!sb.has_line(&t2));
}

#[test]
fn a_hunt_group_rings_its_members_in_turn() {
    let (mut sb, now) = board(&["201", "202", "203", "204"]);
    let step = Duration::from_secs(5);
    sb.set_config(Config {
        outside: true,
        reception: vec!["202".into(), "203".into(), "201".into(), "204".into()],
        hunt_step: Some(step),
        ..Config::default()
    });
    sb.handle_dial(now, "201", 1, "*78"); // 201 does not want calls
    drain(&mut sb);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, None);
    let rung = |acts: &[Action]| -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Ring { callee, .. } => Some(callee.shown().to_string()),
                _ => None,
            })
            .collect()
    };
    let id = 1;
    assert_eq!(rung(&drain(&mut sb)), vec!["202"]);
    // 202 does not answer in time: 203's turn.
    sb.handle_timeout(now + step);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: id,
        reason: EndReason::NoAnswer
    }));
    assert_eq!(rung(&acts), vec!["203"]);
    // 203 declines: 201 is on do-not-disturb, so 204 rings at once.
    sb.handle_reject(now + step, "203", id).expect("reject");
    assert_eq!(rung(&drain(&mut sb)), vec!["204"]);
    sb.handle_answer(now + step, "204", id).expect("answer");
    assert!(drain(&mut sb).contains(&Action::Connected {
        call: id,
        caller: trunk.clone().into(),
        callee: "204".into()
    }));
    assert!(["202", "203"]
        .iter()
        .all(|e| sb.lines.get(*e).is_some_and(|l| l.call.is_none())));
    // Nobody left to try: the call ends unanswered.
    let t2 = tin(2, "bob");
    sb.handle_inbound(now, t2.clone(), 2, None);
    drain(&mut sb);
    sb.handle_timeout(now + step * 2);
    sb.handle_timeout(now + step * 3);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: t2.clone().into(),
        call: 2,
        reason: EndReason::NoAnswer
    }));
}

#[test]
fn an_outside_party_is_handed_on_through_the_directory() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
    sb.handle_answer(now, "202", 1).expect("answer");
    drain(&mut sb);
    // To an extension that can take it: the far end calls OFFICE/203.
    sb.handle_transfer(now, "202", 2, 1, "203")
        .expect("transfer");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::HandOff {
        dir_call: trunk.dir_call(),
        line: trunk.clone(),
        call: 1,
        to: "203".into(),
        internal: true,
        by: "202".into(),
        joins: None,
    }));
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::Transferred
    }));
    assert!(!sb.has_line(&trunk) && sb.call(1).is_none());
    // To a busy extension: refused, and the call stays.
    let t2 = tin(2, "bob");
    sb.handle_inbound(now, t2.clone(), 2, Some("202"));
    sb.handle_answer(now, "202", 2).expect("answer");
    sb.handle_dial(now, "201", 3, "203");
    drain(&mut sb);
    sb.handle_transfer(now, "202", 4, 2, "203")
        .expect("refused cleanly");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::TransferFailed {
            reason: FailReason::Busy,
            ..
        }
    )));
    assert!(sb.call(2).is_some());
    // To an outside number.
    sb.handle_transfer(now, "202", 5, 2, "carol")
        .expect("transfer");
    assert!(drain(&mut sb).contains(&Action::HandOff {
        dir_call: t2.dir_call(),
        line: t2.clone(),
        call: 2,
        to: "carol".into(),
        internal: false,
        by: "202".into(),
        joins: None,
    }));
}

#[test]
fn a_station_handed_on_by_the_far_end_calls_the_new_number() {
    let (mut sb, now) = board(&["201"]);
    sb.handle_dial(now, "201", 1, "bob");
    sb.handle_outside_ringing(1, 1000 + 1);
    let trunk = tout(1, "bob");
    sb.answer(now, &trunk, 1).expect("answer");
    drain(&mut sb);
    sb.handle_outside_handoff(now, 1, Number::parse("carol").expect("number"));
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Replaced {
        to: "201".into(),
        old: 1,
        new: 2,
        peer: "carol".into()
    }));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Ring { callee, call: 2, from } if callee.shown() == "carol" && from == "201"
    )));
    assert_eq!(record(&acts).map(|r| r.callee.as_str()), Some("bob"));
    assert!(!sb.has_line(&trunk));
    assert_eq!(sb.lines.get("201").and_then(|l| l.call), Some(2));
}
/// alice (outside) talks to 202, which consults 203; 203 answers.
/// Returns (board, now, alice's line, the consultation's id).
fn consulting_with_outside_held() -> (Switchboard, Instant, TrunkLine, CallId) {
    let (mut sb, now) = board(&["201", "202", "203"]);
    let trunk = tin(1, "alice");
    sb.handle_inbound(now, trunk.clone(), 1, Some("202"));
    sb.handle_answer(now, "202", 1).expect("answer");
    sb.handle_consult(now, "202", 2, 1, "203").expect("consult");
    let c2 = sb
        .lines
        .get("202")
        .and_then(|l| l.consult)
        .expect("consulting");
    sb.handle_answer(now, "203", c2).expect("203 answers");
    drain(&mut sb);
    (sb, now, trunk, c2)
}

#[test]
fn the_held_call_failing_leaves_the_consultation_as_the_call() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    sb.handle_dial(now, "201", 1, "202");
    let id = drain(&mut sb)
        .iter()
        .find_map(|a| match a {
            Action::Ring { call, .. } => Some(*call),
            _ => None,
        })
        .expect("rings");
    sb.handle_answer(now, "202", id).expect("answer");
    sb.handle_consult(now, "202", 2, id, "203")
        .expect("consult");
    let c2 = sb
        .lines
        .get("202")
        .and_then(|l| l.consult)
        .expect("consulting");
    drain(&mut sb);
    sb.handle_media_failed(now, id);
    drain(&mut sb);
    assert_eq!(sb.lines.get("202").and_then(|l| l.call), Some(c2));
    assert_eq!(sb.call(c2).and_then(|c| c.consult_of), None);
}

#[test]
fn the_transferred_call_failing_stops_the_target_ringing() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    sb.handle_dial(now, "201", 1, "202");
    let id = drain(&mut sb)
        .iter()
        .find_map(|a| match a {
            Action::Ring { call, .. } => Some(*call),
            _ => None,
        })
        .expect("rings");
    sb.handle_answer(now, "202", id).expect("answer");
    sb.handle_transfer(now, "202", 2, id, "203")
        .expect("transfer");
    let leg = sb.call(id).and_then(|c| c.transfer.clone()).expect("leg").1;
    drain(&mut sb);
    sb.handle_media_failed(now, id);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "203".into(),
        call: leg,
        reason: EndReason::Cancelled,
    }));
    assert!(sb.call(leg).is_none());
    // And the other way: the ringing leg failing gives the call back.
    let (mut sb, now) = board(&["201", "202", "203"]);
    sb.handle_dial(now, "201", 1, "202");
    let id = drain(&mut sb)
        .iter()
        .find_map(|a| match a {
            Action::Ring { call, .. } => Some(*call),
            _ => None,
        })
        .expect("rings");
    sb.handle_answer(now, "202", id).expect("answer");
    sb.handle_transfer(now, "202", 2, id, "203")
        .expect("transfer");
    let leg = sb.call(id).and_then(|c| c.transfer.clone()).expect("leg").1;
    drain(&mut sb);
    sb.handle_media_failed(now, leg);
    drain(&mut sb);
    assert!(sb.call(id).is_some_and(|c| c.transfer.is_none()));
}

#[test]
fn an_attended_transfer_hands_an_outside_party_into_the_consultation() {
    let (mut sb, now, trunk, c2) = consulting_with_outside_held();
    sb.handle_consult_complete(now, "202", 3).expect("complete");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::HandOff {
        dir_call: trunk.dir_call(),
        line: trunk.clone(),
        call: 1,
        to: "203".into(),
        internal: true,
        by: "202".into(),
        joins: Some(c2),
    }));
    // 202 stays with 203 until alice arrives.
    assert_eq!(sb.lines.get("202").and_then(|l| l.call), Some(c2));
    assert!(sb.call(1).is_none());
    // alice calls OFFICE/203 with the hand-off: she takes 202's place.
    let back = tin(7, "alice");
    let h = HandedOn {
        by: "202".into(),
        joins: Some(c2),
    };
    sb.handle_handed_on(now, back.clone(), 7, "203", h);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: c2,
        reason: EndReason::Transferred
    }));
    let new = match acts.iter().find(|a| matches!(a, Action::Replaced { .. })) {
        Some(Action::Replaced { to, old, new, peer }) => {
            assert_eq!((to.shown(), *old, peer.as_str()), ("203", c2, "alice"));
            *new
        }
        _ => panic!("{acts:?}"),
    };
    assert!(acts.contains(&Action::Connected {
        call: new,
        caller: back.clone().into(),
        callee: "203".into()
    }));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Ringing { caller, req: 7, .. } if caller == &back)));
    assert_eq!(sb.lines.get("202").and_then(|l| l.call), None);
    assert_eq!(sb.lines.get("203").and_then(|l| l.call), Some(new));
    // Two records: the consultation and alice's first call.
    assert!(record(&acts).is_some());
}

#[test]
fn a_handed_on_caller_comes_back_when_the_target_does_not_answer() {
    let (mut sb, now) = board(&["202", "203"]);
    let h = || HandedOn {
        by: "202".into(),
        joins: None,
    };
    // 203 does not answer: 202 rings.
    let t1 = tin(1, "alice");
    sb.handle_handed_on(now, t1.clone(), 1, "203", h());
    let acts = drain(&mut sb);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Ring { callee, .. } if callee == "203")));
    let id = sb.lines.get("203").and_then(|l| l.call).expect("ringing");
    sb.handle_timeout(now + Duration::from_secs(60));
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "203".into(),
        call: id,
        reason: EndReason::NoAnswer
    }));
    assert!(acts.contains(&Action::Ring {
        callee: "202".into(),
        call: id,
        from: "alice".into()
    }));
    sb.handle_answer(now, "202", id).expect("202 takes it back");
    sb.handle_hangup(now, "202", id).expect("hang up");
    drain(&mut sb);
    // 203 declines: 202 rings at once.
    let t2 = tin(2, "bob");
    sb.handle_handed_on(now, t2.clone(), 2, "203", h());
    let id = sb.lines.get("203").and_then(|l| l.call).expect("ringing");
    drain(&mut sb);
    sb.handle_reject(now, "203", id).expect("decline");
    assert!(drain(&mut sb).contains(&Action::Ring {
        callee: "202".into(),
        call: id,
        from: "bob".into()
    }));
    sb.hangup(now, &Line::from(t2.clone()), id)
        .expect("bob gives up");
    drain(&mut sb);
    // 203 is busy by the time the caller arrives: 202 rings directly.
    sb.handle_dial(now, "203", 3, "alice");
    drain(&mut sb);
    let t3 = tin(3, "carol");
    sb.handle_handed_on(now, t3.clone(), 4, "203", h());
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::Ring { callee, from, .. } if callee == "202" && from == "carol"
    )));
}

#[test]
fn an_attended_transfer_to_an_outside_number_ends_the_consultation_first() {
    // Outside party held: it is handed on to the number directly.
    let (mut sb, now) = board(&["202"]);
    let alice = tin(1, "alice");
    sb.handle_inbound(now, alice.clone(), 1, Some("202"));
    sb.handle_answer(now, "202", 1).expect("answer");
    sb.handle_consult(now, "202", 2, 1, "carol")
        .expect("consult");
    let acts = drain(&mut sb);
    let carol = match acts
        .iter()
        .find(|a| matches!(a, Action::Ring { call: 2, .. }))
    {
        Some(Action::Ring { callee, .. }) if callee.shown() == "carol" => callee.clone(),
        _ => panic!("{acts:?}"),
    };
    sb.handle_outside_ringing(2, 1000 + 2);
    sb.answer(now, &carol, 2).expect("carol answers");
    drain(&mut sb);
    sb.handle_consult_complete(now, "202", 3).expect("complete");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: carol.clone(),
        call: 2,
        reason: EndReason::Hangup
    }));
    assert!(acts.contains(&Action::HandOff {
        dir_call: alice.dir_call(),
        line: alice,
        call: 1,
        to: "carol".into(),
        internal: false,
        by: "202".into(),
        joins: None,
    }));
    assert!(sb.calls().next().is_none());
    assert_eq!(sb.lines.get("202").and_then(|l| l.call), None);

    // An extension held: its call to the number is placed here.
    let (mut sb, now) = board(&["201", "202"]);
    sb.handle_dial(now, "201", 1, "202");
    sb.handle_answer(now, "202", 1).expect("answer");
    sb.handle_consult(now, "202", 2, 1, "carol")
        .expect("consult");
    let carol = tout(2, "carol");
    sb.handle_outside_ringing(2, 1000 + 2);
    sb.answer(now, &carol, 2).expect("carol answers");
    drain(&mut sb);
    sb.handle_consult_complete(now, "202", 3).expect("complete");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: carol,
        call: 2,
        reason: EndReason::Hangup
    }));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Ring { callee, from, .. } if callee.shown() == "carol" && from == "201"
    )));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Transferring { to, .. } if to == "202")));
}

#[test]
fn short_codes_work_as_transfer_targets() {
    let (mut sb, now) = board(&["201", "202"]);
    sb.set_speed_dial("*5", Some("carol"));
    let alice = tin(1, "alice");
    sb.handle_inbound(now, alice.clone(), 1, Some("202"));
    sb.handle_answer(now, "202", 1).expect("answer");
    drain(&mut sb);
    sb.handle_transfer(now, "202", 2, 1, "*5")
        .expect("transfer");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::HandOff { to, internal: false, .. } if to == "carol"
    )));
}
