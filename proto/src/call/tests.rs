//! Unit tests of forwarding, feature codes, no-answer moves, pick-up and
//! short codes.

use super::*;

fn board(lines: &[&str]) -> (Switchboard, Instant) {
    let now = Instant::now();
    let mut sb = Switchboard::new(Config::default());
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

fn fwd_always(sb: &mut Switchboard, ext: &str, to: &str) {
    sb.set_settings(
        ext,
        LineSettings {
            forward_always: Some(to.into()),
            ..LineSettings::default()
        },
    );
}

#[test]
fn forward_chains_are_followed_and_loops_refused() {
    let lines = ["201", "202", "203", "204", "205", "206", "207", "208"];
    let (mut sb, now) = board(&lines);
    fwd_always(&mut sb, "202", "203");
    fwd_always(&mut sb, "203", "204");
    sb.handle_dial(now, "201", 1, "202");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ring {
        callee: "204".into(),
        call: 1,
        from: "201".into()
    }));
    // A circle.
    fwd_always(&mut sb, "205", "206");
    fwd_always(&mut sb, "206", "205");
    sb.handle_dial(now, "207", 2, "205");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::ForwardLoop,
            ..
        }
    )));
    // Back to the caller is a loop too.
    fwd_always(&mut sb, "208", "207");
    sb.handle_dial(now, "207", 3, "208");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::ForwardLoop,
            ..
        }
    )));
}

#[test]
fn too_many_hops_is_a_loop() {
    let lines: Vec<String> = (201..=210).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (mut sb, now) = board(&refs);
    for w in lines[1..].windows(2) {
        fwd_always(&mut sb, &w[0], &w[1]);
    }
    sb.handle_dial(now, "201", 1, "202");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::ForwardLoop,
            ..
        }
    )));
}

#[test]
fn feature_codes_change_settings_and_report() {
    let (mut sb, now) = board(&["201", "202"]);
    sb.handle_dial(now, "201", 1, "*72202");
    let acts = drain(&mut sb);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Settings { ext, settings, before }
        if ext == "201" && before.forward_always.is_none() && settings.forward_always.as_deref() == Some("202"))));
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Feature { req: 1, .. })));
    sb.handle_dial(now, "201", 2, "*72299");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::UnknownNumber,
            ..
        }
    )));
    sb.handle_dial(now, "202", 3, "*78");
    drain(&mut sb);
    sb.handle_dial(now, "201", 4, "202");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::DoNotDisturb,
            ..
        }
    )));
}

#[test]
fn no_answer_moves_the_call_and_keeps_one_record() {
    let (mut sb, now) = board(&["201", "202", "203"]);
    sb.set_settings(
        "202",
        LineSettings {
            forward_no_answer: Some("203".into()),
            ..LineSettings::default()
        },
    );
    sb.handle_dial(now, "201", 1, "202");
    drain(&mut sb);
    let t = sb.poll_timeout().expect("deadline");
    sb.handle_timeout(t);
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Forwarded {
        caller: "201".into(),
        call: 1,
        to: "203".into()
    }));
    assert!(!acts.iter().any(|a| matches!(a, Action::Record(_))));
    // 202 is free again; 203 rings and can answer.
    assert!(sb.handle_answer(t, "203", 1).is_ok());
    sb.handle_hangup(t, "201", 1).expect("hangup");
    let records = drain(&mut sb)
        .into_iter()
        .filter(|a| matches!(a, Action::Record(_)))
        .count();
    assert_eq!(records, 1);
}

#[test]
fn pickup_takes_the_ringing_call() {
    let (mut sb, now) = board(&["201", "202", "204"]);
    sb.handle_dial(now, "201", 1, "202");
    drain(&mut sb);
    sb.handle_dial(now, "204", 9, "*8");
    let acts = drain(&mut sb);
    assert!(acts.contains(&Action::Ended {
        to: "202".into(),
        call: 1,
        reason: EndReason::AnsweredElsewhere
    }));
    assert!(acts.contains(&Action::Connected {
        call: 1,
        caller: "201".into(),
        callee: "204".into()
    }));
    // 202 is free for a new call.
    sb.handle_dial(now, "202", 2, "201");
    assert!(drain(&mut sb).iter().any(|a| matches!(
        a,
        Action::DialFailed {
            reason: FailReason::Busy,
            ..
        }
    )));
}

#[test]
fn short_codes_dial_their_number() {
    let (mut sb, now) = board(&["201", "203"]);
    sb.set_speed_dial("*1", Some("203"));
    sb.handle_dial(now, "201", 1, "*1");
    assert!(drain(&mut sb)
        .iter()
        .any(|a| matches!(a, Action::Ring { callee, .. } if callee == "203")));
}
