//! The phone core on a virtual clock: every behaviour the end-to-end tests
//! exercise, input by input, and a property test over random sequences.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// The media plan is opaque to the core; tests use a label.
type Plan = &'static str;

struct T {
    p: Phone<Plan>,
    now: Instant,
    ctl: Req,
}

impl T {
    fn new(flavor: Flavor) -> T {
        T::with(Config::new(flavor))
    }

    fn with(cfg: Config) -> T {
        T {
            p: Phone::new(cfg),
            now: Instant::now(),
            ctl: 1000,
        }
    }

    fn drain(&mut self) -> Vec<Output<Plan>> {
        std::iter::from_fn(|| self.p.poll_output()).collect()
    }

    /// A command; returns every output it caused.
    fn cmd(&mut self, c: Command) -> Vec<Output<Plan>> {
        self.ctl += 1;
        self.p.handle_command(self.now, self.ctl, c);
        self.drain()
    }

    fn link(&mut self, m: LinkIn<Plan>) -> Vec<Output<Plan>> {
        self.p.handle_link(self.now, m);
        self.drain()
    }

    fn media(&mut self, m: MediaIn) -> Vec<Output<Plan>> {
        self.p.handle_media(self.now, m);
        self.drain()
    }

    /// Advance the clock to `d` from now, firing due timers as a shell
    /// would (at each deadline in turn).
    fn advance(&mut self, d: Duration) -> Vec<Output<Plan>> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(t) = self.p.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.p.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = end;
        out
    }

    fn state(&self) -> Option<CallState> {
        self.p.call().map(|c| c.state)
    }

    fn key(&self) -> CallKey {
        self.p.call().unwrap().key
    }

    /// The request id of the last `Dial`/`Lookup`/`Transfer`/`Consult`
    /// sent in `out`.
    fn req(out: &[Output<Plan>]) -> Req {
        out.iter()
            .rev()
            .find_map(|o| match o {
                Output::Send(
                    LinkOut::Dial { req, .. }
                    | LinkOut::Lookup { req, .. }
                    | LinkOut::Transfer { req, .. }
                    | LinkOut::Consult { req, .. }
                    | LinkOut::ConsultComplete { req },
                ) => Some(*req),
                _ => None,
            })
            .unwrap()
    }

    /// An office station in a connected outgoing call 7 with 202.
    fn connected_out(flavor: Flavor) -> T {
        let mut t = T::new(flavor);
        let out = t.cmd(Command::Dial {
            number: "202".into(),
            lookup: false,
        });
        let req = T::req(&out);
        t.link(LinkIn::Ringing {
            req,
            call: 7,
            callee: "202".into(),
            via: vec![],
        });
        t.link(LinkIn::Answered {
            req: Some(req),
            call: 7,
            plan: "plan-7",
            relayed: false,
            peer: None,
        });
        let key = t.key();
        t.media(MediaIn::Up {
            key,
            relayed: false,
        });
        assert_eq!(t.state(), Some(CallState::Connected));
        t
    }
}

fn replies(out: &[Output<Plan>]) -> Vec<Result<Reply, String>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect()
}

fn sent(out: &[Output<Plan>]) -> Vec<LinkOut> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn sounds(out: &[Output<Plan>]) -> Vec<Sound> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sound(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn ended(out: &[Output<Plan>]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ended { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output<Plan>]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Call { call }) => Some(call.state.as_str().to_string()),
            Output::Event(Event::CallEnded { reason, .. }) => Some(format!("ended:{reason}")),
            _ => None,
        })
        .collect()
}

#[test]
fn a_call_goes_dialing_ringing_connecting_connected_and_ends() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: " 202 ".into(),
        lookup: false,
    });
    assert_eq!(
        sent(&out),
        vec![LinkOut::Dial {
            req: T::req(&out),
            number: "202".into(),
            handoff: None
        }]
    );
    assert!(replies(&out).is_empty(), "the reply waits for the gateway");
    assert_eq!(events(&out), ["dialing"]);
    let req = T::req(&out);
    let out = t.link(LinkIn::Ringing {
        req,
        call: 7,
        callee: "202".into(),
        via: vec![],
    });
    assert_eq!(sounds(&out), [Sound::Ringback]);
    assert_eq!(
        replies(&out),
        [Ok(Reply::Call {
            call: Some(7),
            callee: Some("202".into()),
            state: Some(CallState::Ringing),
            lookup: false
        })]
    );
    let out = t.link(LinkIn::Answered {
        req: None,
        call: 7,
        plan: "p",
        relayed: true,
        peer: None,
    });
    assert_eq!(sounds(&out), [Sound::Silence]);
    assert!(matches!(
        out.iter().find(|o| matches!(o, Output::StartMedia { .. })),
        Some(Output::StartMedia {
            call: 7,
            plan: "p",
            ..
        })
    ));
    assert_eq!(t.state(), Some(CallState::Connecting));
    let key = t.key();
    let out = t.media(MediaIn::Up {
        key,
        relayed: false,
    });
    assert_eq!(events(&out), ["connected"]);
    assert!(
        t.p.call().unwrap().relayed,
        "relayed stays as the plan said"
    );
    let out = t.cmd(Command::Hangup);
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 7 }]);
    assert_eq!(ended(&out), ["local-hangup"]);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StopMedia { key: k } if *k == key)));
    assert!(t.p.call().is_none());
    assert_eq!(t.p.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn an_incoming_call_rings_and_is_answered() {
    let mut t = T::new(Flavor::Office);
    let out = t.link(LinkIn::Incoming {
        call: 3,
        from: "201".into(),
        from_name: Some("Alice".into()),
        number: None,
        via: vec![],
    });
    assert_eq!(sounds(&out), [Sound::Ring]);
    assert_eq!(t.state(), Some(CallState::Alerting));
    let out = t.cmd(Command::Answer);
    assert_eq!(sent(&out), [LinkOut::Answer { call: 3 }]);
    assert_eq!(t.state(), Some(CallState::Answering));
    t.link(LinkIn::Answered {
        req: None,
        call: 3,
        plan: "p",
        relayed: false,
        peer: None,
    });
    let key = t.key();
    t.media(MediaIn::Up {
        key,
        relayed: false,
    });
    assert_eq!(t.state(), Some(CallState::Connected));
    assert_eq!(t.p.call().unwrap().peer_name.as_deref(), Some("Alice"));
}

#[test]
fn declining_a_ringing_call_rejects_it() {
    let mut t = T::new(Flavor::Office);
    t.link(LinkIn::Incoming {
        call: 3,
        from: "201".into(),
        from_name: None,
        number: None,
        via: vec![],
    });
    let out = t.cmd(Command::Hangup);
    assert_eq!(sent(&out), [LinkOut::Reject { call: 3 }]);
    assert_eq!(sounds(&out), [Sound::Silence]);
    assert_eq!(ended(&out), ["local-hangup"]);
}

#[test]
fn a_second_call_while_busy_is_refused_and_the_first_goes_on() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.link(LinkIn::Incoming {
        call: 9,
        from: "203".into(),
        from_name: None,
        number: None,
        via: vec![],
    });
    assert_eq!(sent(&out), [LinkOut::Reject { call: 9 }]);
    assert_eq!(t.p.call().unwrap().id, Some(7));

    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.link(LinkIn::Incoming {
        call: 9,
        from: "1003".into(),
        from_name: None,
        number: Some("1001".into()),
        via: vec![],
    });
    assert_eq!(sent(&out), [LinkOut::Busy { call: 9 }]);
}

#[test]
fn dialling_twice_or_answering_nothing_is_refused_clearly() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "203".into(),
        lookup: false,
    });
    assert_eq!(
        replies(&out),
        [Err("already in a call; hang up first".to_string())]
    );
    assert!(sent(&out).is_empty());
    let out = t.cmd(Command::Answer);
    assert_eq!(replies(&out), [Err("no call is ringing".to_string())]);
    let mut idle = T::new(Flavor::Office);
    let out = idle.cmd(Command::Hangup);
    assert_eq!(replies(&out), [Err("no call to hang up".to_string())]);
    let out = idle.cmd(Command::Dial {
        number: "  ".into(),
        lookup: false,
    });
    assert_eq!(replies(&out), [Err("dial needs a number".to_string())]);
    let out = idle.cmd(Command::Dial {
        number: "1002".into(),
        lookup: true,
    });
    assert!(replies(&out)[0]
        .as_ref()
        .unwrap_err()
        .contains("standalone terminals"));
}

#[test]
fn an_unknown_number_fails_the_dial_with_the_reason() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "299".into(),
        lookup: false,
    });
    let req = T::req(&out);
    let out = t.link(LinkIn::Failed {
        req,
        message: "no such extension".into(),
        ended: "unknown".into(),
    });
    assert_eq!(
        replies(&out),
        [Err("cannot call 299: no such extension".to_string())]
    );
    assert_eq!(ended(&out), ["unknown"]);
    assert!(t.p.call().is_none());
}

#[test]
fn a_silent_link_times_the_dial_out() {
    let mut t = T::new(Flavor::Office);
    t.cmd(Command::Dial {
        number: "202".into(),
        lookup: false,
    });
    let out = t.advance(Duration::from_secs(11));
    assert_eq!(
        replies(&out),
        [Err(
            "the gateway did not answer the dial request within 10 s".to_string()
        )]
    );
    assert!(t.p.call().is_none(), "{out:?}");
    // A late Ringing for it is hung up, not taken as a call.
    let req = 1;
    let out = t.link(LinkIn::Ringing {
        req,
        call: 5,
        callee: "202".into(),
        via: vec![],
    });
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 5 }]);
    assert!(t.p.call().is_none());
}

#[test]
fn hanging_up_while_dialling_cancels_and_a_late_ringing_is_hung_up() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "202".into(),
        lookup: false,
    });
    let req = T::req(&out);
    let out = t.cmd(Command::Hangup);
    assert_eq!(sent(&out), [LinkOut::Cancel { req, call: None }]);
    assert_eq!(
        replies(&out),
        [Err("hung up".to_string()), Ok(Reply::Done {})]
    );
    let out = t.link(LinkIn::Ringing {
        req,
        call: 5,
        callee: "202".into(),
        via: vec![],
    });
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 5 }]);
}

#[test]
fn hanging_up_while_it_rings_cancels_with_the_call_id() {
    let mut t = T::new(Flavor::Terminal);
    let out = t.cmd(Command::Dial {
        number: "1002".into(),
        lookup: false,
    });
    let req = T::req(&out);
    t.link(LinkIn::Ringing {
        req,
        call: 5,
        callee: "1002".into(),
        via: vec![],
    });
    let out = t.cmd(Command::Hangup);
    assert_eq!(sent(&out), [LinkOut::Cancel { req, call: Some(5) }]);
    assert_eq!(sounds(&out), [Sound::Silence]);
}

#[test]
fn hold_and_resume_tell_the_gateway_and_the_media() {
    let mut t = T::connected_out(Flavor::Office);
    let key = t.key();
    let out = t.cmd(Command::Hold);
    assert_eq!(sent(&out), [LinkOut::Hold { call: 7, on: true }]);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::LocalHold { key: k, on: true } if *k == key)));
    assert_eq!(
        replies(&out),
        [Ok(Reply::Hold {
            call: 7,
            on_hold: true
        })]
    );
    assert!(t.p.call().unwrap().on_hold);
    let out = t.cmd(Command::Resume);
    assert_eq!(sent(&out), [LinkOut::Hold { call: 7, on: false }]);
    assert!(!t.p.call().unwrap().on_hold);

    // A terminal holds by itself: nothing goes to the directory.
    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.cmd(Command::Hold);
    assert!(sent(&out).is_empty());
    assert!(t.p.call().unwrap().on_hold);
}

#[test]
fn the_held_party_sees_it_and_cannot_hold_back() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.link(LinkIn::Held { call: 7, on: true });
    assert!(t.p.call().unwrap().held_by_peer);
    assert_eq!(events(&out), ["connected"]);
    let out = t.cmd(Command::Hold);
    assert_eq!(
        replies(&out),
        [Err("the other end holds this call".to_string())]
    );
    t.link(LinkIn::Held { call: 7, on: false });
    assert!(!t.p.call().unwrap().held_by_peer);
}

#[test]
fn hold_needs_a_connected_call() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Hold);
    assert_eq!(replies(&out), [Err("no connected call".to_string())]);
}

#[test]
fn a_blind_transfer_holds_then_hands_over() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Transfer {
        target: "203".into(),
    });
    let req = T::req(&out);
    assert_eq!(t.state(), Some(CallState::Transferring));
    assert!(t.p.call().unwrap().on_hold, "the other end hears music");
    let out = t.link(LinkIn::Transferring {
        req,
        call: 7,
        to: "203".into(),
    });
    assert_eq!(
        replies(&out),
        [Ok(Reply::Transferring {
            call: 7,
            transferring_to: "203".into()
        })]
    );
    let out = t.link(LinkIn::Ended {
        call: 7,
        reason: "transferred".into(),
        transferred: true,
    });
    assert_eq!(ended(&out), ["transferred"]);
    assert!(t.p.call().is_none());
}

#[test]
fn a_failed_transfer_gives_the_call_back() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Transfer {
        target: "203".into(),
    });
    let req = T::req(&out);
    let out = t.link(LinkIn::TransferFailed {
        req,
        call: 7,
        message: "203 is busy".into(),
    });
    assert_eq!(
        replies(&out),
        [Err("transfer failed: 203 is busy".to_string())]
    );
    assert_eq!(t.state(), Some(CallState::Connected));
    assert!(!t.p.call().unwrap().on_hold);
}

#[test]
fn a_transfer_refused_with_a_plain_failure_gives_the_call_back() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Transfer {
        target: "203".into(),
    });
    let req = T::req(&out);
    let out = t.link(LinkIn::Failed {
        req,
        message: "no".into(),
        ended: "failed".into(),
    });
    assert_eq!(replies(&out), [Err("no".to_string())]);
    assert_eq!(t.state(), Some(CallState::Connected));
    assert!(!t.p.call().unwrap().on_hold);
}

#[test]
fn hanging_up_the_held_call_leaves_the_consultation() {
    let mut t = T::connected_out(Flavor::Office);
    t.cmd(Command::Consult {
        target: "203".into(),
    });
    let out = t.cmd(Command::Hangup);
    assert_eq!(ended(&out), ["local-hangup"]);
    let c = t.p.call().expect("the consultation is the call now");
    assert_eq!(c.peer, "203");
    assert!(!c.consult);
    t.p.check_invariants().unwrap();
}

#[test]
fn a_confirmed_transfer_the_gateway_never_ends_is_over_after_the_guard() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Transfer {
        target: "203".into(),
    });
    let req = T::req(&out);
    t.link(LinkIn::Transferring {
        req,
        call: 7,
        to: "203".into(),
    });
    t.p.check_invariants().unwrap();
    let out = t.advance(Duration::from_secs(11));
    assert_eq!(ended(&out), ["transferred"]);
    assert!(t.p.call().is_none());
}

#[test]
fn media_failing_on_the_held_call_leaves_the_consultation() {
    let mut t = T::connected_out(Flavor::Office);
    let held = t.key();
    t.cmd(Command::Consult {
        target: "203".into(),
    });
    t.media(MediaIn::Failed {
        key: held,
        why: "gone".into(),
        ended: None,
    });
    t.p.check_invariants().unwrap();
    assert_eq!(t.p.call().map(|c| c.peer.as_str()), Some("203"));
}

#[test]
fn an_unanswered_transfer_request_gives_the_call_back() {
    let mut t = T::connected_out(Flavor::Office);
    t.cmd(Command::Transfer {
        target: "203".into(),
    });
    let out = t.advance(Duration::from_secs(11));
    assert!(replies(&out)[0]
        .as_ref()
        .unwrap_err()
        .contains("did not answer the transfer"));
    assert_eq!(t.state(), Some(CallState::Connected));
    assert!(!t.p.call().unwrap().on_hold);
}

#[test]
fn the_transferred_party_goes_on_with_the_new_peer() {
    let mut t = T::connected_out(Flavor::Office);
    let key = t.key();
    let out = t.link(LinkIn::Replaced {
        old: 7,
        new: 8,
        peer: "203".into(),
    });
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StopMedia { key: k } if *k == key)));
    assert!(ended(&out).is_empty(), "the call goes on");
    let c = t.p.call().unwrap();
    assert_eq!(
        (c.id, c.peer.as_str(), c.state),
        (Some(8), "203", CallState::Connecting)
    );
    t.link(LinkIn::Answered {
        req: None,
        call: 8,
        plan: "p8",
        relayed: false,
        peer: None,
    });
    t.media(MediaIn::Up {
        key,
        relayed: false,
    });
    assert_eq!(t.state(), Some(CallState::Connected));
}

#[test]
fn an_attended_transfer_consults_then_joins() {
    let mut t = T::connected_out(Flavor::Office);
    let main = t.key();
    let out = t.cmd(Command::Consult {
        target: "203".into(),
    });
    let req = T::req(&out);
    assert_eq!(
        sent(&out),
        [LinkOut::Consult {
            req,
            call: 7,
            target: "203".into()
        }]
    );
    assert!(t.p.call().unwrap().on_hold);
    t.link(LinkIn::Ringing {
        req,
        call: 11,
        callee: "203".into(),
        via: vec![],
    });
    let out = t.link(LinkIn::Answered {
        req: None,
        call: 11,
        plan: "p11",
        relayed: false,
        peer: None,
    });
    let ckey = t.p.consultation().unwrap().key;
    assert_ne!(ckey, main);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::StartMedia { key, call: 11, .. } if *key == ckey)));
    t.media(MediaIn::Up {
        key: ckey,
        relayed: false,
    });
    assert_eq!(
        t.p.consultation().unwrap().state,
        CallState::Connected,
        "consulting"
    );
    let out = t.cmd(Command::ConsultComplete);
    let req = T::req(&out);
    t.link(LinkIn::Transferring {
        req,
        call: 7,
        to: "203".into(),
    });
    let out = t.link(LinkIn::Ended {
        call: 11,
        reason: "transferred".into(),
        transferred: true,
    });
    assert_eq!(ended(&out), ["transferred"]);
    let out = t.link(LinkIn::Ended {
        call: 7,
        reason: "transferred".into(),
        transferred: true,
    });
    assert_eq!(ended(&out), ["transferred"]);
    assert!(t.p.call().is_none() && t.p.consultation().is_none());
}

#[test]
fn cancelling_a_consultation_takes_the_call_off_hold() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Consult {
        target: "203".into(),
    });
    let req = T::req(&out);
    t.link(LinkIn::Ringing {
        req,
        call: 11,
        callee: "203".into(),
        via: vec![],
    });
    let out = t.cmd(Command::ConsultCancel);
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 11 }]);
    assert!(t.p.consultation().is_none());
    assert!(!t.p.call().unwrap().on_hold);
    assert_eq!(t.state(), Some(CallState::Connected));
}

#[test]
fn the_held_party_leaving_makes_the_consultation_the_call() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.cmd(Command::Consult {
        target: "203".into(),
    });
    let req = T::req(&out);
    t.link(LinkIn::Ringing {
        req,
        call: 11,
        callee: "203".into(),
        via: vec![],
    });
    let out = t.link(LinkIn::Ended {
        call: 7,
        reason: "hangup".into(),
        transferred: false,
    });
    assert_eq!(ended(&out), ["hangup"]);
    let c = t.p.call().unwrap();
    assert_eq!((c.id, c.consult), (Some(11), false));
    assert!(t.p.consultation().is_none());
}

#[test]
fn a_terminal_refuses_an_attended_transfer_and_hands_off_blind() {
    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.cmd(Command::Consult {
        target: "1003".into(),
    });
    assert!(replies(&out)[0]
        .as_ref()
        .unwrap_err()
        .contains("needs an office gateway"));
    let out = t.cmd(Command::Transfer {
        target: "1003".into(),
    });
    let req = T::req(&out);
    assert_eq!(
        t.state(),
        Some(CallState::Connected),
        "no hold: it hands on"
    );
    let out = t.link(LinkIn::Transferring {
        req,
        call: 7,
        to: "1003".into(),
    });
    assert_eq!(ended(&out), ["transferred"]);
    assert!(t.p.call().is_none());
}

#[test]
fn a_hand_off_is_followed_by_calling_the_new_number() {
    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.link(LinkIn::HandedOn {
        call: 7,
        number: "1003".into(),
        handoff: Some(42),
    });
    assert_eq!(ended(&out), ["transferred"]);
    let req = T::req(&out);
    assert_eq!(
        sent(&out),
        [LinkOut::Dial {
            req,
            number: "1003".into(),
            handoff: Some(42)
        }]
    );
    assert_eq!(t.state(), Some(CallState::Dialing));
    // Nobody asked for it, so nobody is answered.
    let out = t.link(LinkIn::Ringing {
        req,
        call: 12,
        callee: "1003".into(),
        via: vec![],
    });
    assert!(replies(&out).is_empty());
    assert_eq!(t.state(), Some(CallState::Ringing));
}

#[test]
fn a_redirected_call_follows_and_remembers_where_from() {
    let mut t = T::new(Flavor::Terminal);
    let out = t.cmd(Command::Dial {
        number: "1002".into(),
        lookup: false,
    });
    let req = T::req(&out);
    t.link(LinkIn::Redirected {
        req,
        from: "1002".into(),
        to: "1003".into(),
    });
    let c = t.p.call().unwrap();
    assert_eq!(c.peer, "1003");
    assert_eq!(c.redirected_from, ["1002"]);
    // Answered at once, without a ringing report: the dial is answered.
    let out = t.link(LinkIn::Answered {
        req: Some(req),
        call: 20,
        plan: "p",
        relayed: false,
        peer: Some("1003".into()),
    });
    assert_eq!(
        replies(&out),
        [Ok(Reply::Call {
            call: Some(20),
            callee: Some("1003".into()),
            state: Some(CallState::Connecting),
            lookup: false
        })]
    );
}

#[test]
fn a_forwarded_call_shows_the_new_peer() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "202".into(),
        lookup: false,
    });
    let req = T::req(&out);
    t.link(LinkIn::Ringing {
        req,
        call: 7,
        callee: "202".into(),
        via: vec![],
    });
    t.link(LinkIn::Forwarded {
        call: 7,
        to: "203".into(),
    });
    assert_eq!(t.p.call().unwrap().peer, "203");
}

#[test]
fn a_vanished_peer_ends_the_call_and_the_link_is_told() {
    let mut t = T::connected_out(Flavor::Terminal);
    let key = t.key();
    let out = t.media(MediaIn::Closed {
        key,
        by_peer: false,
    });
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 7 }]);
    assert_eq!(ended(&out), ["media-lost"]);
    let mut t = T::connected_out(Flavor::Terminal);
    let key = t.key();
    let out = t.media(MediaIn::Closed { key, by_peer: true });
    assert_eq!(ended(&out), ["hangup"]);
}

#[test]
fn media_that_never_comes_up_fails_the_call() {
    let mut t = T::new(Flavor::Terminal);
    t.link(LinkIn::Incoming {
        call: 3,
        from: "1002".into(),
        from_name: None,
        number: Some("1001".into()),
        via: vec![],
    });
    t.cmd(Command::Answer);
    t.link(LinkIn::Answered {
        req: None,
        call: 3,
        plan: "p",
        relayed: false,
        peer: None,
    });
    let out = t.advance(Duration::from_secs(14));
    assert!(ended(&out).is_empty());
    let out = t.advance(Duration::from_secs(2));
    assert_eq!(sent(&out), [LinkOut::Hangup { call: 3 }]);
    assert_eq!(ended(&out), ["media-failed"]);
}

#[test]
fn media_for_a_call_that_is_over_is_dropped() {
    let mut t = T::connected_out(Flavor::Office);
    let key = t.key();
    t.cmd(Command::Hangup);
    let out = t.media(MediaIn::Up {
        key,
        relayed: false,
    });
    assert!(matches!(out.as_slice(), [Output::StopMedia { key: k }] if *k == key));
    assert!(t.p.call().is_none());
}

#[test]
fn auto_answer_answers_after_its_delay() {
    let mut cfg = Config::new(Flavor::Office);
    cfg.auto_answer = Some(Duration::from_secs(2));
    let mut t = T::with(cfg);
    t.link(LinkIn::Incoming {
        call: 3,
        from: "201".into(),
        from_name: None,
        number: None,
        via: vec![],
    });
    assert!(sent(&t.advance(Duration::from_secs(1))).is_empty());
    let out = t.advance(Duration::from_secs(1));
    assert_eq!(sent(&out), [LinkOut::Answer { call: 3 }]);
    assert_eq!(t.state(), Some(CallState::Answering));
}

#[test]
fn a_lookup_only_call_rings_out_after_its_timeout() {
    let mut t = T::new(Flavor::Terminal);
    let out = t.link(LinkIn::IncomingLookup {
        from: "1002".into(),
        number: "1001".into(),
        plan: "lp",
    });
    assert_eq!(sounds(&out), [Sound::Ring]);
    let key = t.key();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::StartMedia {
            call: 0,
            plan: "lp",
            ..
        }
    )));
    let out = t.advance(Duration::from_secs(31));
    assert_eq!(
        sent(&out),
        [LinkOut::DeclineLookup {
            key,
            why: LookupRefusal::NoAnswer
        }]
    );
    assert_eq!(ended(&out), ["no-answer"]);
}

#[test]
fn a_lookup_only_call_is_answered_declined_or_given_up() {
    let mut t = T::new(Flavor::Terminal);
    t.link(LinkIn::IncomingLookup {
        from: "1002".into(),
        number: "1001".into(),
        plan: "lp",
    });
    let key = t.key();
    let out = t.cmd(Command::Answer);
    assert_eq!(sent(&out), [LinkOut::AcceptLookup { key }]);
    t.media(MediaIn::Up {
        key,
        relayed: false,
    });
    assert_eq!(t.state(), Some(CallState::Connected));
    let out = t.cmd(Command::Hangup);
    assert!(sent(&out).is_empty(), "closing the media is the hang-up");

    let mut t = T::new(Flavor::Terminal);
    t.link(LinkIn::IncomingLookup {
        from: "1002".into(),
        number: "1001".into(),
        plan: "lp",
    });
    let key = t.key();
    let out = t.cmd(Command::Hangup);
    assert_eq!(
        sent(&out),
        [LinkOut::DeclineLookup {
            key,
            why: LookupRefusal::Declined
        }]
    );

    let mut t = T::new(Flavor::Terminal);
    t.link(LinkIn::IncomingLookup {
        from: "1002".into(),
        number: "1001".into(),
        plan: "lp",
    });
    let key = t.key();
    let out = t.media(MediaIn::Closed { key, by_peer: true });
    assert_eq!(ended(&out), ["cancelled"]);

    // Busy: the caller's connection is refused when it comes.
    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.link(LinkIn::IncomingLookup {
        from: "1003".into(),
        number: "1001".into(),
        plan: "lp2",
    });
    assert!(matches!(
        out.as_slice(),
        [Output::RefuseLookup { plan: "lp2" }]
    ));
}

#[test]
fn placing_a_lookup_only_call() {
    let mut t = T::new(Flavor::Terminal);
    let out = t.cmd(Command::Dial {
        number: "1002".into(),
        lookup: true,
    });
    let req = T::req(&out);
    assert_eq!(
        sent(&out),
        [LinkOut::Lookup {
            req,
            number: "1002".into()
        }]
    );
    let out = t.link(LinkIn::Found {
        req,
        callee: "1002".into(),
        via: vec![],
        plan: "fp",
    });
    assert_eq!(sounds(&out), [Sound::Ringback]);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::StartMedia {
            call: 0,
            plan: "fp",
            ..
        }
    )));
    let key = t.key();
    let out = t.media(MediaIn::Failed {
        key,
        why: "declined".into(),
        ended: Some("rejected".into()),
    });
    assert!(sent(&out).is_empty(), "a look-up-only call has no link id");
    assert_eq!(ended(&out), ["rejected"]);

    let mut t = T::new(Flavor::Terminal);
    let out = t.cmd(Command::Dial {
        number: "9999".into(),
        lookup: true,
    });
    let req = T::req(&out);
    let out = t.link(LinkIn::Failed {
        req,
        message: "9999 is not a number here".into(),
        ended: "unknown".into(),
    });
    assert_eq!(
        replies(&out),
        [Err(
            "cannot look up 9999: 9999 is not a number here".to_string()
        )]
    );
}

#[test]
fn losing_the_gateway_ends_every_call_but_a_terminal_keeps_a_connected_one() {
    let mut t = T::connected_out(Flavor::Office);
    let out = t.link(LinkIn::Down {
        reason: "timeout".into(),
    });
    assert_eq!(ended(&out), ["gateway-lost"]);

    let mut t = T::connected_out(Flavor::Terminal);
    let out = t.link(LinkIn::Down {
        reason: "timeout".into(),
    });
    assert!(ended(&out).is_empty());
    assert_eq!(t.state(), Some(CallState::Connected));

    let mut t = T::new(Flavor::Terminal);
    t.cmd(Command::Dial {
        number: "1002".into(),
        lookup: false,
    });
    let out = t.link(LinkIn::Down {
        reason: "timeout".into(),
    });
    assert_eq!(
        replies(&out),
        [Err("lost the connection to the directory".to_string())]
    );
    assert_eq!(ended(&out), ["directory-lost"]);
}

#[test]
fn a_feature_code_is_answered_and_leaves_no_call() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "*78".into(),
        lookup: false,
    });
    let req = T::req(&out);
    let out = t.link(LinkIn::Feature {
        req,
        message: "do not disturb on".into(),
    });
    assert_eq!(
        replies(&out),
        [Ok(Reply::Feature {
            feature: "do not disturb on".into()
        })]
    );
    assert!(t.p.call().is_none());
    assert!(ended(&out).is_empty(), "no call record for a feature code");
}

#[test]
fn a_pickup_turns_the_dial_into_the_picked_up_call() {
    let mut t = T::new(Flavor::Office);
    let out = t.cmd(Command::Dial {
        number: "*8".into(),
        lookup: false,
    });
    let req = T::req(&out);
    t.link(LinkIn::PickedUp {
        req,
        call: 4,
        from: "201".into(),
    });
    let c = t.p.call().unwrap();
    assert_eq!(
        (c.direction, c.state, c.id),
        (Direction::In, CallState::Answering, Some(4))
    );
}

#[test]
fn events_follow_a_whole_call() {
    let mut t = T::new(Flavor::Office);
    let mut all = Vec::new();
    let out = t.cmd(Command::Dial {
        number: "202".into(),
        lookup: false,
    });
    let req = T::req(&out);
    all.extend(events(&out));
    all.extend(events(&t.link(LinkIn::Ringing {
        req,
        call: 7,
        callee: "202".into(),
        via: vec![],
    })));
    all.extend(events(&t.link(LinkIn::Answered {
        req: None,
        call: 7,
        plan: "p",
        relayed: false,
        peer: None,
    })));
    let key = t.key();
    all.extend(events(&t.media(MediaIn::Up {
        key,
        relayed: false,
    })));
    all.extend(events(&t.cmd(Command::Hold)));
    all.extend(events(&t.cmd(Command::Resume)));
    all.extend(events(&t.cmd(Command::Hangup)));
    assert_eq!(
        all,
        [
            "dialing",
            "ringing",
            "connecting",
            "connected",
            "connected",
            "connected",
            "ended:local-hangup"
        ]
    );
}

// ---- property test ----

#[derive(Debug, Clone)]
enum Step {
    Cmd(Command),
    Link(LinkIn<Plan>),
    Media(MediaIn),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let call = 1u64..4;
    let req = 1u64..6;
    let key = 1u64..6;
    let text = prop_oneof![Just("202".to_string()), Just("203".to_string())];
    prop_oneof![
        (text.clone(), any::<bool>())
            .prop_map(|(number, lookup)| Step::Cmd(Command::Dial { number, lookup })),
        Just(Step::Cmd(Command::Answer)),
        Just(Step::Cmd(Command::Hangup)),
        Just(Step::Cmd(Command::Hold)),
        Just(Step::Cmd(Command::Resume)),
        text.clone()
            .prop_map(|target| Step::Cmd(Command::Transfer { target })),
        text.clone()
            .prop_map(|target| Step::Cmd(Command::Consult { target })),
        Just(Step::Cmd(Command::ConsultComplete)),
        Just(Step::Cmd(Command::ConsultCancel)),
        (req.clone(), call.clone()).prop_map(|(req, call)| Step::Link(LinkIn::Ringing {
            req,
            call,
            callee: "202".into(),
            via: vec![]
        })),
        req.clone().prop_map(|req| Step::Link(LinkIn::Failed {
            req,
            message: "no".into(),
            ended: "failed".into()
        })),
        req.clone().prop_map(|req| Step::Link(LinkIn::Found {
            req,
            callee: "202".into(),
            via: vec![],
            plan: "f"
        })),
        call.clone().prop_map(|call| Step::Link(LinkIn::Incoming {
            call,
            from: "201".into(),
            from_name: None,
            number: None,
            via: vec![]
        })),
        Just(Step::Link(LinkIn::IncomingLookup {
            from: "201".into(),
            number: "1001".into(),
            plan: "l"
        })),
        (
            proptest::option::of(req.clone()),
            call.clone(),
            any::<bool>()
        )
            .prop_map(|(req, call, relayed)| Step::Link(LinkIn::Answered {
                req,
                call,
                plan: "a",
                relayed,
                peer: None
            })),
        (call.clone(), any::<bool>()).prop_map(|(call, transferred)| Step::Link(LinkIn::Ended {
            call,
            reason: "hangup".into(),
            transferred
        })),
        (call.clone(), any::<bool>()).prop_map(|(call, on)| Step::Link(LinkIn::Held { call, on })),
        (req.clone(), call.clone()).prop_map(|(req, call)| Step::Link(LinkIn::Transferring {
            req,
            call,
            to: "203".into()
        })),
        (req.clone(), call.clone()).prop_map(|(req, call)| Step::Link(LinkIn::TransferFailed {
            req,
            call,
            message: "busy".into()
        })),
        (call.clone(), call.clone()).prop_map(|(old, new)| Step::Link(LinkIn::Replaced {
            old,
            new,
            peer: "203".into()
        })),
        call.clone().prop_map(|call| Step::Link(LinkIn::HandedOn {
            call,
            number: "203".into(),
            handoff: None
        })),
        Just(Step::Link(LinkIn::Down {
            reason: "gone".into()
        })),
        (key.clone(), any::<bool>())
            .prop_map(|(key, relayed)| Step::Media(MediaIn::Up { key, relayed })),
        key.clone().prop_map(|key| Step::Media(MediaIn::Failed {
            key,
            why: "x".into(),
            ended: None
        })),
        (key, any::<bool>())
            .prop_map(|(key, by_peer)| Step::Media(MediaIn::Closed { key, by_peer })),
        (0u64..40).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random inputs: no panic, never media for a call that does not
    /// exist, never a waiting call without a deadline, every command
    /// answered exactly once, and with enough time everything ends.
    #[test]
    fn random_inputs_keep_the_invariants(
        flavor in prop_oneof![Just(Flavor::Office), Just(Flavor::Terminal)],
        auto in proptest::option::of(1u64..5),
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let mut cfg = Config::new(flavor);
        cfg.auto_answer = auto.map(Duration::from_secs);
        let mut t = T::with(cfg);
        let mut asked = std::collections::BTreeSet::new();
        let mut answered = std::collections::BTreeSet::new();
        let mut ended_keys = std::collections::BTreeSet::new();
        let mut check = |t: &T, out: Vec<Output<Plan>>| -> Result<(), TestCaseError> {
            for o in out {
                match o {
                    Output::Reply { ctl, .. } => {
                        prop_assert!(answered.insert(ctl), "command {} answered twice", ctl);
                    }
                    Output::StartMedia { key, .. } => {
                        prop_assert!(t.p.call_by_key(key).is_some(), "media for no call");
                        prop_assert!(!ended_keys.contains(&key), "media after the end");
                    }
                    Output::Ended { call, .. } => {
                        prop_assert!(ended_keys.insert(call.key), "ended twice");
                    }
                    _ => {}
                }
            }
            t.p.check_invariants().map_err(TestCaseError::fail)?;
            Ok(())
        };
        for s in steps {
            let out = match s {
                Step::Cmd(c) => {
                    let out = t.cmd(c);
                    asked.insert(t.ctl);
                    out
                }
                Step::Link(m) => t.link(m),
                Step::Media(m) => t.media(m),
                Step::Wait(secs) => t.advance(Duration::from_secs(secs)),
            };
            check(&t, out)?;
        }
        // A long quiet time: whatever waited has given up by now, and
        // every command has had its answer.
        let out = t.advance(Duration::from_secs(3600));
        check(&t, out)?;
        if let Some(c) = t.p.call() {
            prop_assert!(c.state == CallState::Connected, "stuck in {:?}", c.state);
        }
        prop_assert_eq!(asked, answered);
    }
}
