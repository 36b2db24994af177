use super::*;
use keyline_proto::dir::MAX_HOPS;
use keyline_proto::number::Number;

#[test]
fn addresses_are_written_as_to_string_writes_them() {
    let samples = [
        "0.0.0.0:0",
        "127.0.0.1:1",
        "10.20.30.40:65535",
        "255.255.255.255:9",
        "192.168.1.100:40000",
        "[::1]:5060",
        "[fe80::1]:7",
    ];
    for s in samples {
        let a: SocketAddr = s.parse().expect("sample");
        assert_eq!(addr_string(&a), a.to_string());
    }
    for k in 0..5000u32 {
        let v = k.wrapping_mul(2_654_435_761);
        let a = SocketAddr::from((v.to_be_bytes(), (v >> 7) as u16));
        assert_eq!(addr_string(&a), a.to_string());
    }
}
use proptest::prelude::*;

/// `s` as a number (test input is always valid).
fn n(s: &str) -> Number {
    Number::parse(s).expect("a valid number")
}

fn t0() -> Instant {
    Instant::now()
}

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn ni(account: &str, forward: Option<(ForwardWhen, &str)>) -> NumberInfo {
    NumberInfo {
        dnd: false,
        account: account.into(),
        forwards: forward
            .map(|(when, to)| ForwardRule::new(when, to))
            .into_iter()
            .collect(),
    }
}

fn table(entries: &[(&str, NumberInfo)]) -> HashMap<String, NumberInfo> {
    entries
        .iter()
        .map(|(n, i)| (n.to_string(), i.clone()))
        .collect()
}

#[test]
fn resolve_follows_rules_and_detects_loops() {
    let t = table(&[
        ("a", ni("x", Some((ForwardWhen::Always, "b")))),
        ("b", ni("y", Some((ForwardWhen::Unregistered, "c")))),
        ("c", ni("z", None)),
        ("l1", ni("x", Some((ForwardWhen::Always, "l2")))),
        ("l2", ni("x", Some((ForwardWhen::Always, "l1")))),
        ("self", ni("x", Some((ForwardWhen::Always, "self")))),
        ("dangling", ni("x", Some((ForwardWhen::Always, "nobody")))),
    ]);
    let info = |n: &str| t.get(n);
    let r = resolve("a", MAX_HOPS, info, |_| false).expect("resolves");
    assert_eq!(r.number, "c");
    assert_eq!(r.via, vec!["a", "b"]);
    let r = resolve("a", MAX_HOPS, info, |n| n == "b").expect("resolves");
    assert_eq!((r.number.as_str(), r.via.len()), ("b", 1));
    let e = resolve("l1", MAX_HOPS, info, |_| false).expect_err("loop");
    assert_eq!(
        e,
        RouteError::Loop {
            chain: vec!["l1".into(), "l2".into(), "l1".into()]
        }
    );
    assert!(e.to_string().contains("l1 -> l2 -> l1"), "{e}");
    assert!(matches!(
        resolve("self", MAX_HOPS, info, |_| false),
        Err(RouteError::Loop { .. })
    ));
    assert!(matches!(
        resolve("dangling", MAX_HOPS, info, |_| false),
        Err(RouteError::Unknown { number, .. }) if number == "nobody"
    ));
    assert!(matches!(
        resolve("zzz", MAX_HOPS, info, |_| false),
        Err(RouteError::Unknown { .. })
    ));
}

#[test]
fn resolve_stops_after_max_hops() {
    // n0 -> n1 -> ... -> n9, no loop.
    let entries: Vec<(String, NumberInfo)> = (0..10)
        .map(|i| {
            let next = format!("n{}", i + 1);
            (
                format!("n{i}"),
                if i < 9 {
                    ni("x", Some((ForwardWhen::Always, &next)))
                } else {
                    ni("x", None)
                },
            )
        })
        .collect();
    let t: HashMap<String, NumberInfo> = entries.into_iter().collect();
    let info = |n: &str| t.get(n);
    assert_eq!(
        resolve("n4", MAX_HOPS, info, |_| false)
            .expect("5 hops are fine")
            .number,
        "n9"
    );
    let e = resolve("n3", MAX_HOPS, info, |_| false).expect_err("6 hops");
    assert!(matches!(e, RouteError::TooManyHops { .. }), "{e:?}");
    assert_eq!(e.code(), ErrorCode::TooManyHops);
}

proptest! {
    /// Whatever the rules, resolution terminates; success ends on a
    /// number without an applicable rule, within the hop limit and with
    /// no number visited twice; a loop error names a real cycle.
    #[test]
    fn resolve_is_total_and_sound(
        rules in prop::collection::vec((0usize..8, prop::option::of((any::<bool>(), 0usize..9))), 1..8),
        bound in prop::collection::vec(any::<bool>(), 9),
        start in 0usize..9,
    ) {
        let mut t: HashMap<String, NumberInfo> = HashMap::new();
        for (n, rule) in &rules {
            t.insert(format!("n{n}"), ni("x", rule.map(|(always, to)| {
                (if always { ForwardWhen::Always } else { ForwardWhen::Unregistered }, if to == 8 { "n8" } else { ["n0","n1","n2","n3","n4","n5","n6","n7"][to] })
            })));
        }
        let is_bound = |n: &str| n[1..].parse::<usize>().map(|i| bound[i]).unwrap_or(false);
        let start = format!("n{start}");
        match resolve(&start, MAX_HOPS, |n| t.get(n), is_bound) {
            Ok(r) => {
                prop_assert!(r.via.len() <= MAX_HOPS);
                let mut seen = r.via.clone();
                seen.push(r.number.clone());
                let uniq: BTreeSet<&String> = seen.iter().collect();
                prop_assert_eq!(uniq.len(), seen.len());
                let last = &t[&r.number];
                let applies = last.forwards.iter().any(|f| match f.when {
                    ForwardWhen::Always => true,
                    ForwardWhen::Unregistered => !is_bound(&r.number),
                    ForwardWhen::Busy => last.dnd,
                    ForwardWhen::NoAnswer => false,
                });
                prop_assert!(!applies);
                prop_assert_eq!(r.via.first().unwrap_or(&r.number), &start);
            }
            Err(RouteError::Loop { chain }) => {
                let last = chain.last().cloned().unwrap_or_default();
                prop_assert!(chain[..chain.len() - 1].contains(&last));
            }
            Err(RouteError::TooManyHops { chain, .. }) => prop_assert!(chain.len() > MAX_HOPS),
            Err(RouteError::Unknown { number, .. }) => prop_assert!(!t.contains_key(&number)),
        }
    }
}

/// A router with accounts alice (아리랑, 2001) and bob (ボブ), each online.
fn two_online() -> (Router, Instant) {
    let now = t0();
    let mut r = Router::new(Config::default());
    r.set_numbers(
        now,
        table(&[
            ("아리랑", ni("alice", None)),
            ("2001", ni("alice", None)),
            ("ボブ", ni("bob", None)),
            ("carol", ni("carol", None)),
        ]),
    );
    r.handle_session_up(1, "fa".into(), addr(1001));
    r.handle_session_up(2, "fb".into(), addr(1002));
    r.handle_login(now, 1, "alice", vec!["아리랑".into(), "2001".into()]);
    r.handle_login(now, 2, "bob", vec!["ボブ".into()]);
    r.handle_register(now, 1, 1, vec![], vec![addr(5001)]);
    r.handle_register(now, 2, 1, vec![], vec![addr(5002)]);
    drain(&mut r);
    (r, now)
}

/// The actions so far; the invariants hold after every step.
pub(super) fn drain(r: &mut Router) -> Vec<Action> {
    if let Err(e) = r.check_invariants() {
        panic!("invariant broken: {e}\n{r:#?}");
    }
    std::iter::from_fn(|| r.poll_action()).collect()
}

pub(super) fn sent(actions: &[Action], to: SessionId) -> Vec<DirMsg> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: t, msg } if *t == to => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

/// The notices among `actions`, short: `bound N`, `unbound N: why`,
/// `ringing`, `answered`, `relayed`, `ended OUTCOME`.
fn notices(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notice(Notice::Bound { number, .. }) => Some(format!("bound {number}")),
            Action::Notice(Notice::Unbound { number, reason, .. }) => {
                Some(format!("unbound {number}: {reason}"))
            }
            Action::Notice(Notice::Ringing { from, number, .. }) => {
                Some(format!("ringing {from} -> {number}"))
            }
            Action::Notice(Notice::Answered { relayed, .. }) => {
                Some(format!("answered relayed={relayed}"))
            }
            Action::Notice(Notice::Relayed { .. }) => Some("relayed".into()),
            Action::Notice(Notice::Ended {
                outcome, relayed, ..
            }) => Some(format!("ended {} relayed={relayed:?}", outcome.as_str())),
            _ => None,
        })
        .collect()
}

/// A caller shows its account's first number as the order is now: another
/// number made first is what the next call shows.
#[test]
fn a_caller_shows_the_first_number_as_it_is_now() {
    let now = t0();
    let mut r = Router::new(Config::default());
    r.set_numbers(
        now,
        table(&[
            ("1001", ni("alice", None)),
            ("1011", ni("alice", None)),
            ("1002", ni("bob", None)),
            ("1003", ni("carol", None)),
        ]),
    );
    for (sid, account, numbers) in [
        (1, "alice", vec!["1001".to_string(), "1011".to_string()]),
        (2, "bob", vec!["1002".to_string()]),
        (3, "carol", vec!["1003".to_string()]),
    ] {
        r.handle_session_up(sid, format!("f{sid}"), addr(1000 + sid as u16));
        r.handle_login(now, sid, account, numbers);
        r.handle_register(now, sid, 1, vec![], vec![]);
    }
    drain(&mut r);
    let ring_from = |r: &mut Router, callee: SessionId| match &sent(&drain(r), callee)[0] {
        DirMsg::Ring { from, .. } => from.clone(),
        other => panic!("{other:?}"),
    };
    r.handle_call(now, 1, 2, &n("1002"), None, vec![], 0);
    assert_eq!(ring_from(&mut r, 2), "1001");
    // A number that is not alice's (any more) is left out.
    r.set_account_numbers("alice", &["1002".into(), "1011".into(), "1001".into()]);
    r.set_account_numbers("nobody", &["1003".into()]);
    r.handle_call(now, 1, 3, &n("1003"), None, vec![], 0);
    assert_eq!(ring_from(&mut r, 3), "1011");
}

/// Every binding made or lost and every step of a call is a notice,
/// once; refreshes and failed attempts are none.
#[test]
fn notices_tell_bindings_and_each_step_of_a_call() {
    let now = t0();
    let mut r = Router::new(Config::default());
    r.set_numbers(
        now,
        table(&[("1001", ni("alice", None)), ("1002", ni("bob", None))]),
    );
    r.handle_session_up(1, "fa".into(), addr(1001));
    r.handle_session_up(2, "fb".into(), addr(1002));
    r.handle_login(now, 1, "alice", vec!["1001".into()]);
    r.handle_login(now, 2, "bob", vec!["1002".into()]);
    r.handle_register(now, 1, 1, vec![], vec![]);
    r.handle_register(now, 2, 1, vec![], vec![]);
    assert_eq!(notices(&drain(&mut r)), ["bound 1001", "bound 1002"]);
    // A refresh, and a register refused, are no notices.
    r.handle_register(now + Duration::from_secs(10), 1, 2, vec![], vec![]);
    r.handle_register(now, 1, 3, vec![n("1002")], vec![]);
    assert_eq!(notices(&drain(&mut r)), Vec::<String>::new());
    // A call from ringing to its end.
    r.handle_call(now, 1, 4, &n("1002"), None, vec![], 0);
    let acts = drain(&mut r);
    let call = match &sent(&acts, 2)[0] {
        DirMsg::Ring { call, .. } => *call,
        other => panic!("{other:?}"),
    };
    assert_eq!(notices(&acts), ["ringing 1001 -> 1002"]);
    r.handle_answer(now, 2, 5, call, "tok".into());
    assert_eq!(notices(&drain(&mut r)), ["answered relayed=false"]);
    // The caller's direct path fails: the relay takes over.
    r.handle_fallback(now, 1, 6, call);
    drain(&mut r);
    r.handle_relay_ready(now, call, addr(7001), addr(7002));
    assert_eq!(notices(&drain(&mut r)), ["relayed"]);
    r.handle_hangup(now + Duration::from_secs(5), 1, call);
    assert_eq!(
        notices(&drain(&mut r)),
        ["ended answered relayed=Some(true)"]
    );
    // A call nobody answers, then an unknown number (no notice).
    r.handle_call(now, 1, 7, &n("1002"), None, vec![], 0);
    drain(&mut r);
    r.handle_timeout(now + Duration::from_secs(31));
    assert_eq!(notices(&drain(&mut r)), ["ended no-answer relayed=None"]);
    r.handle_call(now, 1, 8, &n("9999"), None, vec![], 0);
    assert_eq!(notices(&drain(&mut r)), Vec::<String>::new());
    // Bindings go: unregistered, moved, displaced, disconnected, expired.
    r.handle_unregister(now, 2, 9, vec![]);
    assert_eq!(notices(&drain(&mut r)), ["unbound 1002: unregistered"]);
    r.handle_register(now, 2, 10, vec![], vec![]);
    r.handle_session_moved(now, 2, addr(2002));
    assert_eq!(notices(&drain(&mut r)), ["bound 1002", "bound 1002"]);
    r.handle_session_up(3, "fb2".into(), addr(1003));
    r.handle_login(now, 3, "bob", vec!["1002".into()]);
    r.handle_register(now, 3, 1, vec![], vec![]);
    assert_eq!(
        notices(&drain(&mut r)),
        [
            "unbound 1002: another endpoint registered the number",
            "bound 1002"
        ]
    );
    r.handle_session_down(now, 3);
    assert_eq!(
        notices(&drain(&mut r)),
        ["unbound 1002: the endpoint disconnected"]
    );
    r.handle_timeout(now + Duration::from_secs(10) + Config::default().binding_ttl);
    assert_eq!(
        notices(&drain(&mut r)),
        ["unbound 1001: the registration expired (not refreshed in time)"]
    );
}

#[test]
fn register_reports_observed_and_rejects_foreign_numbers() {
    let now = t0();
    let mut r = Router::new(Config::default());
    r.set_numbers(now, table(&[("1", ni("a", None)), ("2", ni("b", None))]));
    r.handle_session_up(1, "f".into(), addr(9));
    r.handle_register(now, 1, 1, vec![], vec![]);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::NotLoggedIn,
            ..
        }
    ));
    r.handle_login(now, 1, "a", vec!["1".into()]);
    r.handle_register(now, 1, 2, vec![n("2")], vec![]);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::NotYourNumber,
            ..
        }
    ));
    r.handle_register(now, 1, 3, vec![], vec![addr(7), addr(9)]);
    match &sent(&drain(&mut r), 1)[0] {
        DirMsg::Registered {
            req,
            numbers,
            observed,
            candidates,
            ttl_secs,
        } => {
            assert_eq!(*req, Some(3));
            assert_eq!(numbers, &vec!["1".to_string()]);
            assert_eq!(observed, "127.0.0.1:9");
            assert_eq!(
                candidates,
                &vec!["127.0.0.1:7".to_string(), "127.0.0.1:9".to_string()]
            );
            assert_eq!(*ttl_secs, 120);
        }
        other => panic!("{other:?}"),
    }
}

/// Unregistering another account's number is refused and changes
/// nothing (it used to answer ok).
#[test]
fn unregister_refuses_another_accounts_number() {
    let (mut r, now) = two_online();
    r.handle_unregister(now, 1, 5, vec![n("ボブ")]);
    match &sent(&drain(&mut r), 1)[0] {
        DirMsg::Error {
            req: Some(5),
            code: ErrorCode::NotYourNumber,
            message,
            ..
        } => assert!(
            message.contains("ボブ is not a number of account"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.binding("ボブ").map(|b| b.session), Some(2));
    r.handle_unregister(now, 1, 6, vec![n("nobody's")]);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::NotYourNumber,
            ..
        }
    ));
    r.handle_unregister(now, 1, 7, vec![n("아리랑")]);
    assert_eq!(sent(&drain(&mut r), 1)[0], DirMsg::Ok { req: 7 });
    assert!(r.binding("아리랑").is_none());
    assert!(r.binding("ボブ").is_some());
    r.handle_session_up(3, "f".into(), addr(3));
    r.handle_unregister(now, 3, 8, vec![]);
    assert!(matches!(
        &sent(&drain(&mut r), 3)[0],
        DirMsg::Error {
            code: ErrorCode::NotLoggedIn,
            ..
        }
    ));
}

#[test]
fn bindings_expire_unless_refreshed() {
    let (mut r, now) = two_online();
    let ttl = r.config().binding_ttl;
    assert_eq!(r.poll_timeout(), Some(now + ttl));
    // Alice refreshes at ttl/3; Bob does not.
    r.handle_register(now + ttl / 3, 1, 2, vec![], vec![]);
    drain(&mut r);
    r.handle_timeout(now + ttl);
    let acts = drain(&mut r);
    assert!(r.binding("ボブ").is_none());
    assert!(r.binding("아리랑").is_some());
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Unbound { numbers, .. } if numbers == &vec!["ボブ".to_string()])
    );
    assert_eq!(r.poll_timeout(), Some(now + ttl / 3 + ttl));
    r.handle_timeout(now + ttl / 3 + ttl);
    assert_eq!(r.bindings().count(), 0);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_gateway_vouches_for_its_stations_media_ends() {
    let (mut r, now) = two_online();
    let (fa2, fb2) = ("a2".repeat(32), "b2".repeat(32));
    let media = |fp: &str, port| MediaEnd {
        fp: fp.to_string(),
        addrs: vec![addr(port)],
    };
    r.handle_call_for(
        now,
        1,
        1,
        &n("ボブ"),
        None,
        vec![addr(6001)],
        0,
        Placing {
            media: Some(media(&fa2, 6001)),
            handoff: Some(42),
            check_key: Some("k".into()),
        },
    );
    let acts = drain(&mut r);
    let call = match &sent(&acts, 2)[0] {
        DirMsg::Ring {
            call,
            caller_fp,
            caller_candidates,
            handoff,
            ..
        } => {
            // The hand-off the caller follows reaches the callee.
            assert_eq!(*handoff, Some(42));
            // The station's fingerprint and the forwarder port, not
            // the gateway's own.
            assert_eq!(caller_fp, &fa2);
            assert_eq!(caller_candidates, &vec!["127.0.0.1:6001".to_string()]);
            *call
        }
        other => panic!("{other:?}"),
    };
    r.handle_answer_for(now, 2, 2, call, "tok".into(), Some(media(&fb2, 6002)));
    let acts = drain(&mut r);
    let DirMsg::Connect { plan, .. } = &sent(&acts, 1)[0] else {
        panic!("{acts:?}")
    };
    assert!(plan.dial && plan.peer_fp == fb2);
    assert_eq!(plan.peer_candidates, vec!["127.0.0.1:6002".to_string()]);
    let DirMsg::Connect { plan, .. } = &sent(&acts, 2)[0] else {
        panic!("{acts:?}")
    };
    assert!(!plan.dial && plan.peer_fp == fa2);
    // The relay forwards between the vouched media ends' ports.
    r.handle_fallback(now, 1, 3, call);
    let acts = drain(&mut r);
    assert!(acts.contains(&Action::AllocateRelay {
        call,
        caller: addr(6001),
        callee: addr(6002),
    }));
}

/// Two terminals get the same check key while the callee rings, each
/// with the other's candidates; a session that does not check, or a
/// call for a vouched media end (a gateway's station), gets none.
#[test]
fn both_terminals_get_a_check_plan_while_it_rings() {
    let (mut r, now) = two_online();
    let placing = |key: &str| Placing {
        check_key: Some(key.into()),
        ..Placing::default()
    };
    let ring_checks = |acts: &[Action]| {
        let ring = match &sent(acts, 2)[0] {
            DirMsg::Ring { checks, .. } => checks.clone(),
            other => panic!("{other:?}"),
        };
        let ringing = match &sent(acts, 1)[0] {
            DirMsg::Ringing { checks, .. } => checks.clone(),
            other => panic!("{other:?}"),
        };
        (ring, ringing)
    };
    r.handle_call_for(
        now,
        1,
        7,
        &n("ボブ"),
        None,
        vec![addr(5001)],
        0,
        placing("k1"),
    );
    let acts = drain(&mut r);
    assert_eq!(ring_checks(&acts), (None, None), "neither said it checks");
    r.allow_checks(1);
    r.allow_checks(2);
    r.handle_call_for(
        now,
        1,
        9,
        &n("ボブ"),
        None,
        vec![addr(5001)],
        0,
        placing("k2"),
    );
    let acts = drain(&mut r);
    let (ring, ringing) = ring_checks(&acts);
    let (ring, ringing) = (
        ring.expect("callee checks"),
        ringing.expect("caller checks"),
    );
    assert_eq!((ring.key.as_str(), ringing.key.as_str()), ("k2", "k2"));
    assert_eq!(ring.candidates, strings(&[addr(5001), addr(1001)]));
    assert_eq!(ringing.candidates, strings(&[addr(5002), addr(1002)]));
    // A gateway's station calling: the media end is not the session.
    let media = MediaEnd {
        fp: "fs".into(),
        addrs: vec![addr(6001)],
    };
    r.handle_call_for(
        now,
        2,
        10,
        &n("아리랑"),
        None,
        vec![addr(6001)],
        0,
        Placing {
            media: Some(media),
            check_key: Some("k3".into()),
            ..Placing::default()
        },
    );
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ring { checks: None, .. }
    ));
}

#[test]
fn call_rings_with_the_asserted_number_and_connects_directly() {
    let (mut r, now) = two_online();
    // Alice tries to show Bob's number: refused.
    r.handle_call(now, 1, 7, &n("ボブ"), Some(n("ボブ")), vec![], 0);
    let acts = drain(&mut r);
    assert!(sent(&acts, 2).is_empty());
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::NotYourNumber,
            ..
        }
    ));
    // She may pick her other number.
    r.handle_call(now, 1, 8, &n("ボブ"), Some(n("2001")), vec![addr(5001)], 0);
    let acts = drain(&mut r);
    let call = match &sent(&acts, 2)[0] {
        DirMsg::Ring {
            call,
            from,
            caller_fp,
            caller_candidates,
            ..
        } => {
            assert_eq!(from, "2001");
            assert_eq!(caller_fp, "fa");
            assert_eq!(
                caller_candidates,
                &vec!["127.0.0.1:5001".to_string(), "127.0.0.1:1001".to_string()]
            );
            *call
        }
        other => panic!("{other:?}"),
    };
    assert!(matches!(&sent(&acts, 1)[0], DirMsg::Ringing { req: 8, .. }));
    // Only the callee may answer.
    r.handle_answer(now, 1, 9, call, "tok".into());
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::NotYourCall,
            ..
        }
    ));
    r.handle_answer(now, 2, 9, call, "tok".into());
    let acts = drain(&mut r);
    let DirMsg::Connect { req, plan, .. } = &sent(&acts, 2)[0] else {
        panic!("{acts:?}")
    };
    assert_eq!(*req, Some(9));
    assert!(!plan.dial && plan.peer_fp == "fa" && plan.token == "tok" && plan.relay.is_none());
    let DirMsg::Connect { plan, .. } = &sent(&acts, 1)[0] else {
        panic!("{acts:?}")
    };
    assert!(plan.dial && plan.peer_fp == "fb");
    assert_eq!(
        plan.peer_candidates,
        vec!["127.0.0.1:5002".to_string(), "127.0.0.1:1002".to_string()]
    );
    assert!(!acts
        .iter()
        .any(|a| matches!(a, Action::AllocateRelay { .. })));
    // Default number when none is picked: the first registered one.
    r.handle_hangup(now, 2, call);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::Hangup,
            ..
        }
    ));
    r.handle_call(now, 1, 10, &n("ボブ"), None, vec![], 0);
    assert!(matches!(&sent(&drain(&mut r), 2)[0], DirMsg::Ring { from, .. } if from == "아리랑"));
}

#[test]
fn unreachable_unknown_and_forwarding() {
    let (mut r, now) = two_online();
    r.handle_call(now, 1, 1, &n("carol"), None, vec![], 0);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::Unreachable,
            mail: true,
            ..
        }
    ));
    r.handle_call(now, 1, 2, &n("nobody"), None, vec![], 0);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::UnknownNumber,
            ..
        }
    ));
    // carol is offline and forwards to Bob when unregistered.
    r.set_forwards(
        "carol",
        vec![ForwardRule::new(ForwardWhen::Unregistered, "ボブ")],
    );
    r.handle_call(now, 1, 3, &n("carol"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Ring { number, dialled, via, .. }
        if number == "ボブ" && dialled == "carol" && via == &vec!["carol".to_string()])
    );
    // A loop is refused with the chain.
    r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Always, "carol")]);
    r.set_forwards("carol", vec![ForwardRule::new(ForwardWhen::Always, "ボブ")]);
    r.handle_call(now, 1, 4, &n("carol"), None, vec![], 0);
    match &sent(&drain(&mut r), 1)[0] {
        DirMsg::CallFailed { code, message, .. } => {
            assert_eq!(*code, ErrorCode::ForwardLoop);
            assert!(message.contains("carol -> ボブ -> carol"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Redirect hops are capped.
    r.handle_call(now, 1, 5, &n("아리랑"), None, vec![], MAX_HOPS as u8);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::TooManyHops,
            ..
        }
    ));
    // Calling a number this same endpoint registered.
    r.handle_call(now, 1, 6, &n("2001"), None, vec![], 0);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::SelfCall,
            ..
        }
    ));
}

#[test]
fn decline_redirect_timeout_and_peer_loss() {
    let (mut r, now) = two_online();
    let ring = |r: &mut Router, req| {
        r.handle_call(now, 1, req, &n("ボブ"), None, vec![], 0);
        let acts = drain(r);
        match &sent(&acts, 1)[0] {
            DirMsg::Ringing { call, .. } => *call,
            other => panic!("{other:?}"),
        }
    };
    let c = ring(&mut r, 1);
    r.handle_decline(now, 2, 5, c, true);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::Busy,
            ..
        }
    ));
    assert!(matches!(&sent(&acts, 2)[0], DirMsg::Ok { req: 5 }));
    let c = ring(&mut r, 2);
    r.handle_redirect(now, 2, 6, c, &n("carol"));
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, .. } if number == "carol" && by == "ボブ")
    );
    assert!(r.call(c).is_none());
    let c = ring(&mut r, 3);
    r.handle_timeout(now + r.config().ring_timeout);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::NoAnswer,
            ..
        }
    ));
    assert!(matches!(
        &sent(&acts, 2)[0],
        DirMsg::Ended {
            reason: EndReason::NoAnswer,
            ..
        }
    ));
    assert!(r.call(c).is_none());
    let c = ring(&mut r, 4);
    r.handle_session_down(now, 2);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::PeerLost,
            ..
        }
    ));
    assert!(r.call(c).is_none());
    assert!(r.binding("ボブ").is_none());
}

#[test]
fn busy_no_answer_and_do_not_disturb_forward_the_caller() {
    let (mut r, now) = two_online();
    let ring = |r: &mut Router, req| {
        r.handle_call(now, 1, req, &n("ボブ"), None, vec![], 0);
        let acts = drain(r);
        match &sent(&acts, 1)[0] {
            DirMsg::Ringing { call, .. } => *call,
            other => panic!("{other:?}"),
        }
    };
    // Busy: Bob declines as busy and the caller is sent on to carol.
    r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Busy, "carol")]);
    let c = ring(&mut r, 1);
    r.handle_decline(now, 2, 5, c, false);
    let acts = drain(&mut r);
    assert!(
        matches!(
            &sent(&acts, 1)[0],
            DirMsg::Ended {
                reason: EndReason::Rejected,
                ..
            }
        ),
        "a plain decline is not busy: {acts:?}"
    );
    let c = ring(&mut r, 2);
    r.handle_decline(now, 2, 6, c, true);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, .. } if number == "carol" && by == "ボブ"),
        "{acts:?}"
    );
    assert_eq!(sent(&acts, 2), vec![DirMsg::Ok { req: 6 }]);
    assert!(r.call(c).is_none());
    // A busy rule does not apply to a call that times out.
    let c = ring(&mut r, 3);
    r.handle_timeout(now + r.config().ring_timeout);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::NoAnswer,
            ..
        }
    ));
    assert!(r.call(c).is_none());

    // No answer: at the ring timeout the callee stops ringing and the
    // caller is sent on.
    r.set_forwards(
        "ボブ",
        vec![ForwardRule::new(ForwardWhen::NoAnswer, "2001")],
    );
    let c = ring(&mut r, 4);
    r.handle_timeout(now + r.config().ring_timeout);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "2001"),
        "{acts:?}"
    );
    assert!(matches!(
        &sent(&acts, 2)[0],
        DirMsg::Ended {
            reason: EndReason::NoAnswer,
            ..
        }
    ));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Finished {
            reason: EndReason::Redirected,
            ..
        }
    )));
    assert!(r.call(c).is_none());

    // Do-not-disturb: nothing rings; the caller is offered mail.
    r.set_forwards("ボブ", vec![]);
    r.set_dnd("ボブ", true);
    r.handle_call(now, 1, 7, &n("ボブ"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(sent(&acts, 2).is_empty(), "{acts:?}");
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::CallFailed { code: ErrorCode::Unreachable, mail: true, message, .. } if message.contains("disturb")),
        "{acts:?}"
    );
    // ... or, with a busy rule, goes where it says at once.
    r.set_forwards("ボブ", vec![ForwardRule::new(ForwardWhen::Busy, "아리랑")]);
    r.set_dnd("carol", true);
    r.handle_call(now, 2, 8, &n("carol"), None, vec![], 0);
    assert!(matches!(
        &sent(&drain(&mut r), 2)[0],
        DirMsg::CallFailed { mail: true, .. }
    ));
    r.handle_call(now, 2, 9, &n("ボブ"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Ring { number, via, .. } if number == "아리랑" && via == &vec!["ボブ".to_string()]),
        "{acts:?}"
    );
    r.set_dnd("ボブ", false);
    assert!(!r.number("ボブ").is_some_and(|n| n.dnd));
}

fn records(actions: &[Action]) -> Vec<CallRecord> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

/// Busy, no-answer and offline rules of one number at once, each
/// followed when its case comes, `always` before all of them while it
/// is on and not at all when off; on the virtual clock.
#[test]
fn several_rules_of_one_number_each_followed() {
    let (mut r, now) = two_online();
    let rules = |always_on: bool| {
        vec![
            ForwardRule {
                on: always_on,
                ..ForwardRule::new(ForwardWhen::Always, "아리랑")
            },
            ForwardRule::new(ForwardWhen::Busy, "carol"),
            ForwardRule::new(ForwardWhen::NoAnswer, "2001"),
            ForwardRule::new(ForwardWhen::Unregistered, "carol"),
        ]
    };
    r.set_forwards("ボブ", rules(false));
    let ring = |r: &mut Router, req, at| {
        r.handle_call(at, 1, req, &n("ボブ"), None, vec![], 0);
        let acts = drain(r);
        match &sent(&acts, 1)[0] {
            DirMsg::Ringing { call, number, .. } if number == "ボブ" => *call,
            other => panic!("{other:?}"),
        }
    };
    // Busy: carol.
    let c = ring(&mut r, 1, now);
    r.handle_decline(now, 2, 2, c, true);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "carol"),
        "{acts:?}"
    );
    // No answer: 2001, after the ring timeout and not before.
    let at = now + Duration::from_secs(1);
    let c = ring(&mut r, 3, at);
    r.handle_timeout(at + r.config().ring_timeout - Duration::from_millis(1));
    assert!(drain(&mut r).is_empty());
    assert!(r.call(c).is_some());
    r.handle_timeout(at + r.config().ring_timeout);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, .. } if number == "2001"),
        "{acts:?}"
    );
    let rec = &records(&acts)[0];
    assert_eq!(rec.outcome, CallOutcome::Forwarded);
    assert_eq!(rec.forwarded_to.as_deref(), Some("2001"));
    // Always, once on, comes before them all: nothing rings at Bob.
    r.set_forwards("ボブ", rules(true));
    r.handle_call(at, 2, 4, &n("ボブ"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Ring { number, via, .. } if number == "아리랑" && via == &vec!["ボブ".to_string()]),
        "{acts:?}"
    );
    // Offline: Bob's endpoint gone, the next call rings carol's
    // number (offline too here: the caller is offered mail there).
    r.set_forwards("ボブ", rules(false));
    r.handle_session_down(at, 2);
    drain(&mut r);
    r.handle_call(at, 1, 5, &n("ボブ"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::CallFailed { number, code: ErrorCode::Unreachable, .. } if number == "carol"),
        "{acts:?}"
    );
    let rec = &records(&acts)[0];
    assert_eq!(rec.outcome, CallOutcome::Offline);
    assert_eq!(
        rec.reached,
        Some(("carol".to_string(), "carol".to_string()))
    );
}

/// Every call comes out once as a record: answered with its length and
/// path, declined, cancelled, unknown, offline, forwarded; each account
/// involved gets its own entry, and nobody else.
#[test]
fn every_call_is_recorded_once_as_the_directory_saw_it() {
    let (mut r, now) = two_online();
    let place = |r: &mut Router, req, number: &str, at| {
        r.handle_call(at, 1, req, &n(number), None, vec![], 0);
        let acts = drain(r);
        match &sent(&acts, 1)[0] {
            DirMsg::Ringing { call, .. } => Some(*call),
            _ => {
                assert_eq!(records(&acts).len(), 1, "{acts:?}");
                None
            }
        }
    };
    // Answered for 75 s, then hung up.
    let c = place(&mut r, 1, "ボブ", now).expect("rings");
    let at = now + Duration::from_secs(2);
    r.handle_answer(at, 2, 2, c, "tok".into());
    drain(&mut r);
    let end = at + Duration::from_secs(75);
    r.handle_hangup(end, 1, c);
    let acts = drain(&mut r);
    let recs = records(&acts);
    assert_eq!(recs.len(), 1, "{acts:?}");
    let rec = &recs[0];
    assert_eq!(rec.outcome, CallOutcome::Answered);
    assert_eq!(rec.relayed, Some(false));
    assert_eq!(
        (rec.from.as_str(), rec.from_account.as_str()),
        ("아리랑", "alice")
    );
    // The wall clock: the call started 77 s before `end`.
    let entries = rec.entries(end, 1_000_000);
    assert_eq!(entries.len(), 2);
    let (out, inc) = (&entries[0], &entries[1]);
    assert!(out.outgoing && out.account == "alice" && out.other_number == "ボブ");
    assert!(!inc.outgoing && inc.account == "bob" && inc.other_number == "아리랑");
    assert_eq!(inc.own_number, "ボブ");
    for e in &entries {
        assert_eq!(e.started_ms, 1_000_000 - 77_000);
        assert_eq!(e.duration_ms, Some(75_000));
        assert!(e.answered);
    }
    // Declined, and cancelled by the caller: no length.
    let c = place(&mut r, 3, "ボブ", end).expect("rings");
    r.handle_decline(end, 2, 4, c, false);
    assert_eq!(records(&drain(&mut r))[0].outcome, CallOutcome::Declined);
    let c = place(&mut r, 5, "ボブ", end).expect("rings");
    r.handle_hangup(end, 1, c);
    let rec = &records(&drain(&mut r))[0];
    assert_eq!(rec.outcome, CallOutcome::Cancelled);
    assert!(rec.entries(end, 0).iter().all(|e| e.duration_ms.is_none()));
    // Unknown: only the caller's entry.
    assert!(place(&mut r, 6, "nobody", end).is_none());
    r.handle_call(end, 1, 7, &n("nobody"), None, vec![], 0);
    let rec = &records(&drain(&mut r))[0];
    assert_eq!(rec.outcome, CallOutcome::UnknownNumber);
    assert_eq!(rec.entries(end, 0).len(), 1);
    // Offline carol: her entry says so.
    r.handle_call(end, 1, 8, &n("carol"), None, vec![], 0);
    let rec = &records(&drain(&mut r))[0];
    assert_eq!(rec.outcome, CallOutcome::Offline);
    let es = rec.entries(end, 0);
    assert_eq!(es.len(), 2);
    assert_eq!(es[1].account, "carol");
    // Server-side forwarding from carol (always) to Bob: Alice sees
    // her call to carol forwarded to Bob, carol sees it forwarded,
    // Bob sees it ring him.
    r.set_forwards("carol", vec![ForwardRule::new(ForwardWhen::Always, "ボブ")]);
    let c = place(&mut r, 9, "carol", end).expect("rings at Bob");
    r.handle_decline(end, 2, 10, c, true);
    let rec = &records(&drain(&mut r))[0];
    assert_eq!(rec.outcome, CallOutcome::Busy);
    let es = rec.entries(end, 0);
    let accounts: Vec<&str> = es.iter().map(|e| e.account.as_str()).collect();
    assert_eq!(accounts, ["alice", "bob", "carol"]);
    assert_eq!(es[0].forwarded_to.as_deref(), Some("ボブ"));
    assert_eq!(es[2].outcome, CallOutcome::Forwarded);
    assert_eq!(es[2].other_number, "아리랑");
    // A lost connection ends an answered call: still recorded, once.
    r.set_forwards("carol", vec![]);
    let c = place(&mut r, 11, "ボブ", end).expect("rings");
    r.handle_answer(end, 2, 12, c, "tok".into());
    drain(&mut r);
    r.handle_session_down(end + Duration::from_secs(3), 2);
    let recs = records(&drain(&mut r));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].outcome, CallOutcome::Answered);
    assert_eq!(recs[0].entries(end, 0)[0].duration_ms, Some(3_000));
}

#[test]
fn relay_rule_and_fallback() {
    let (mut r, now) = two_online();
    let answered = |r: &mut Router, req| {
        r.handle_call(now, 1, req, &n("ボブ"), None, vec![], 0);
        let acts = drain(r);
        let DirMsg::Ringing { call, .. } = &sent(&acts, 1)[0] else {
            panic!()
        };
        let call = *call;
        r.handle_answer(now, 2, req, call, "t".into());
        (call, drain(r))
    };
    // direct-then-relay: direct plans, then a fallback allocates.
    let (c, acts) = answered(&mut r, 1);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Connect { plan, .. } if plan.policy == DirectPolicy::DirectThenRelay && plan.fallback_after_ms == 3000)
    );
    r.handle_fallback(now, 2, 3, c);
    assert!(matches!(
        &sent(&drain(&mut r), 2)[0],
        DirMsg::Error {
            code: ErrorCode::NotYourCall,
            ..
        }
    ));
    r.handle_fallback(now, 1, 4, c);
    let acts = drain(&mut r);
    assert_eq!(
        acts,
        vec![Action::AllocateRelay {
            call: c,
            caller: addr(1001),
            callee: addr(1002)
        }]
    );
    r.handle_relay_ready(now, c, addr(40001), addr(40002));
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::RelayReady { req: Some(4), relay, .. } if relay == "127.0.0.1:40001")
    );
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::RelayReady { req: None, relay, .. } if relay == "127.0.0.1:40002")
    );
    r.handle_hangup(now, 1, c);
    assert!(drain(&mut r).contains(&Action::ReleaseRelay { call: c }));

    // relay: nothing is sent until the forwarder is up.
    r.reconfigure(Config {
        policy: DirectPolicy::Relay,
        ..Config::default()
    });
    let (c, acts) = answered(&mut r, 5);
    assert_eq!(acts.len(), 1, "{acts:?}");
    r.handle_relay_ready(now, c, addr(40003), addr(40004));
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Connect { plan, .. } if plan.relay.as_deref() == Some("127.0.0.1:40003"))
    );
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Connect { plan, .. } if plan.relay.as_deref() == Some("127.0.0.1:40004"))
    );

    // direct: no fallback.
    r.reconfigure(Config {
        policy: DirectPolicy::Direct,
        ..Config::default()
    });
    let (c, _) = answered(&mut r, 6);
    r.handle_fallback(now, 1, 7, c);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::NoRelay,
            ..
        }
    ));

    // A relay that fails to come up ends a relay-only call.
    r.reconfigure(Config {
        policy: DirectPolicy::Relay,
        ..Config::default()
    });
    let (c, _) = answered(&mut r, 8);
    r.handle_relay_failed(now, c, "no ports");
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::MediaFailed,
            ..
        }
    ));
}

#[test]
fn lookup_tells_the_callee_who_comes() {
    let (mut r, now) = two_online();
    r.handle_lookup(now, 1, 3, &n("ボブ"), "tk".into());
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Expect { from, caller_fp, token, .. } if from == "아리랑" && caller_fp == "fa" && token == "tk")
    );
    // And where the caller's connection comes from, to open its NAT.
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Expect { caller_candidates, .. }
            if caller_candidates == &vec![addr(5001).to_string(), addr(1001).to_string()]),
        "{acts:?}"
    );
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Found { fingerprint, candidates, .. } if fingerprint == "fb" && candidates.len() == 2)
    );
    r.handle_lookup(now, 1, 4, &n("carol"), "tk".into());
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::Error {
            code: ErrorCode::Unreachable,
            ..
        }
    ));
}

#[test]
fn a_second_registration_displaces_the_first_and_migration_updates() {
    let (mut r, now) = two_online();
    r.handle_session_up(3, "fa2".into(), addr(1003));
    r.handle_login(now, 3, "alice", vec!["아리랑".into(), "2001".into()]);
    r.handle_register(now, 3, 1, vec![n("2001")], vec![]);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Unbound { numbers, .. } if numbers == &vec!["2001".to_string()])
    );
    assert_eq!(r.binding("2001").map(|b| b.session), Some(3));
    assert_eq!(r.binding("아리랑").map(|b| b.session), Some(1));
    r.handle_session_moved(now, 1, addr(2222));
    let acts = drain(&mut r);
    assert!(matches!(&sent(&acts, 1)[0], DirMsg::Observed { addr } if addr == "127.0.0.1:2222"));
    assert_eq!(r.binding("아리랑").map(|b| b.observed), Some(addr(2222)));
    assert_eq!(r.registered_sessions_of("alice"), vec![1, 3]);
}

#[test]
fn office_number_with_extension_rings_the_office() {
    let (mut r, now) = two_online();
    r.handle_call(now, 1, 1, &n("ボブ/202"), None, vec![], 0);
    let acts = drain(&mut r);
    assert!(
        matches!(&sent(&acts, 2)[0], DirMsg::Ring { number, ext, dialled, .. }
        if number == "ボブ" && ext.as_deref() == Some("202") && dialled == "ボブ/202"),
        "{acts:?}"
    );
    r.handle_call(now, 1, 2, &n("nobody/202"), None, vec![], 0);
    assert!(matches!(
        &sent(&drain(&mut r), 1)[0],
        DirMsg::CallFailed {
            code: ErrorCode::UnknownNumber,
            ..
        }
    ));
    r.handle_lookup(now, 1, 3, &n("ボブ/7"), "t".into());
    assert!(
        matches!(&sent(&drain(&mut r), 2)[0], DirMsg::Expect { ext, .. } if ext.as_deref() == Some("7"))
    );
}

#[test]
fn shutdown_ends_everything() {
    let (mut r, now) = two_online();
    r.handle_call(now, 1, 1, &n("ボブ"), None, vec![], 0);
    drain(&mut r);
    r.shutdown(now);
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[0],
        DirMsg::Ended {
            reason: EndReason::Shutdown,
            ..
        }
    ));
    assert!(sent(&acts, 2)
        .iter()
        .any(|m| matches!(m, DirMsg::GoingAway { .. })));
    assert_eq!(r.calls().count(), 0);
}

#[test]
fn an_end_of_an_answered_call_hands_the_other_on() {
    let (mut r, now) = two_online();
    r.handle_call(now, 1, 1, &n("ボブ"), None, vec![], 0);
    let call = match &sent(&drain(&mut r), 2)[0] {
        DirMsg::Ring { call, .. } => *call,
        other => panic!("{other:?}"),
    };
    // Not while it rings.
    r.handle_transfer(now, 2, 2, call, &n("carol"), None);
    assert!(matches!(
        &sent(&drain(&mut r), 2)[0],
        DirMsg::Error {
            code: ErrorCode::BadCallState,
            ..
        }
    ));
    r.handle_answer(now, 2, 3, call, "t".into());
    drain(&mut r);
    // Not by a stranger.
    r.handle_session_up(3, "fc".into(), addr(1003));
    r.handle_transfer(now, 3, 4, call, &n("carol"), None);
    assert!(matches!(
        &sent(&drain(&mut r), 3)[0],
        DirMsg::Error {
            code: ErrorCode::NotYourCall,
            ..
        }
    ));
    // Bob hands Alice on to carol: she is told, and the call is over.
    r.handle_transfer(now, 2, 5, call, &n("carol"), Some(9));
    let acts = drain(&mut r);
    assert!(matches!(&sent(&acts, 2)[0], DirMsg::Ok { req: 5 }));
    assert!(
        matches!(&sent(&acts, 1)[0], DirMsg::Redirected { number, by, handoff: Some(9), .. } if number == "carol" && by == "ボブ")
    );
    assert!(r.call(call).is_none());
}
