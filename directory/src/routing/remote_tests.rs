//! The router with bindings and sessions another cluster node holds, on
//! a virtual clock: calls to and from them, displacement both ways,
//! their end, and no notices or registration messages for them.

use super::tests::{drain, sent};
use super::*;

fn n(s: &str) -> Number {
    Number::parse(s).expect("a valid number")
}

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn info(account: &str) -> NumberInfo {
    NumberInfo {
        account: account.into(),
        forwards: Vec::new(),
        dnd: false,
    }
}

fn has_notice(actions: &[Action], pred: impl Fn(&Notice) -> bool) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Notice(x) if pred(x)))
}

fn remote(number: &str, account: &str, port: u16, ttl: Duration) -> RemoteBinding {
    RemoteBinding {
        number: n(number),
        account: account.into(),
        fp: format!("fp-{account}"),
        observed: addr(port),
        own: vec![addr(port + 1)],
        checks: true,
        ttl,
    }
}

const TTL: Duration = Duration::from_secs(120);
/// The remote session's number here.
const BOB: SessionId = 100;

/// Alice is this node's (session 1, number 1001); bob (1002) is node
/// n2's, known here as session [`BOB`].
fn setup() -> (Router, Instant) {
    let now = Instant::now();
    let mut r = Router::new(Config::default());
    r.set_call_base(7 << 32);
    r.set_numbers(
        now,
        [("1001", info("alice")), ("1002", info("bob"))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    r.handle_session_up(1, "fa".into(), addr(1000));
    r.handle_login(now, 1, "alice", vec!["1001".into()]);
    r.handle_register(now, 1, 1, vec![], vec![]);
    drain(&mut r);
    r.handle_remote_bound(now, BOB, "n2", remote("1002", "bob", 2000, TTL));
    let acts = drain(&mut r);
    assert!(
        acts.is_empty(),
        "a remote binding is no one's business here: {acts:?}"
    );
    (r, now)
}

#[test]
fn a_call_to_another_nodes_endpoint_rings_it_there_and_connects() {
    let (mut r, now) = setup();
    assert!(r.is_remote(BOB) && !r.is_remote(1));
    r.handle_call(now, 1, 5, &n("1002"), None, vec![addr(1001)], 0);
    let acts = drain(&mut r);
    let call = match sent(&acts, BOB).as_slice() {
        [DirMsg::Ring {
            call,
            caller_candidates,
            ..
        }, ..] => {
            assert!(caller_candidates.contains(&"127.0.0.1:1001".to_string()));
            *call
        }
        other => panic!("{other:?}"),
    };
    assert!(call > 7 << 32, "call ids from this node's base: {call}");
    assert!(matches!(&sent(&acts, 1)[0], DirMsg::Ringing { .. }));
    // Bob's node passes his answer back as his request.
    r.handle_request(
        now,
        BOB,
        Request::Answer {
            req: 9,
            call,
            token: "tok".into(),
            media: None,
        },
    );
    let acts = drain(&mut r);
    let to_alice = sent(&acts, 1);
    match to_alice.as_slice() {
        [DirMsg::Connect { plan, .. }] => {
            assert_eq!(plan.peer_fp, "fp-bob");
            assert!(plan.peer_candidates.contains(&"127.0.0.1:2001".to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert!(sent(&acts, BOB)
        .iter()
        .any(|m| matches!(m, DirMsg::Ok { req: 9 } | DirMsg::Connect { .. })));
    // Alice hangs up: bob is told, the call is recorded once, here.
    r.handle_hangup(now + Duration::from_secs(3), 1, call);
    let acts = drain(&mut r);
    assert!(matches!(&sent(&acts, BOB)[..], [DirMsg::Ended { .. }]));
    assert_eq!(
        acts.iter()
            .filter(|a| matches!(a, Action::Record(_)))
            .count(),
        1
    );
    // Bob's binding stays; his session with it.
    assert!(r.is_remote(BOB));
    assert_eq!(r.binding("1002").map(|b| b.session), Some(BOB));
}

#[test]
fn another_nodes_endpoint_gone_mid_call_ends_the_call_here() {
    let (mut r, now) = setup();
    r.handle_call(now, 1, 5, &n("1002"), None, vec![], 0);
    drain(&mut r);
    r.handle_session_down(now, BOB);
    let acts = drain(&mut r);
    assert!(sent(&acts, 1).iter().any(|m| matches!(
        m,
        DirMsg::Ended {
            reason: EndReason::PeerLost,
            ..
        }
    )));
    assert!(r.binding("1002").is_none());
    assert!(!r.is_remote(BOB), "forgotten");
    assert!(
        !has_notice(&acts, |x| matches!(x, Notice::Unbound { .. })),
        "another node's binding is that node's to announce"
    );
}

#[test]
fn the_later_registration_wins_across_nodes() {
    let (mut r, now) = setup();
    // Alice registers 1001 on n2 later: this node's binding gives way and
    // its endpoint is told, as on one node.
    r.handle_remote_bound(now, 101, "n2", remote("1001", "alice", 3000, TTL));
    let acts = drain(&mut r);
    assert!(matches!(
        &sent(&acts, 1)[..],
        [DirMsg::Unbound { numbers, expired: false, .. }] if numbers == &vec!["1001".to_string()]
    ));
    assert!(has_notice(
        &acts,
        |x| matches!(x, Notice::Unbound { number, .. } if number == "1001")
    ));
    assert_eq!(r.binding("1001").map(|b| b.session), Some(101));
    // And back: a registration here displaces the remote one silently
    // (its node learns it from the bucket), and the remote session with
    // nothing left here is forgotten.
    r.handle_register(now, 1, 2, vec![], vec![]);
    let acts = drain(&mut r);
    assert!(sent(&acts, 101).is_empty(), "{acts:?}");
    assert_eq!(r.binding("1001").map(|b| b.session), Some(1));
    assert!(!r.is_remote(101));
    // A remote binding moving between another node's endpoints.
    r.handle_remote_bound(now, 102, "n3", remote("1002", "bob", 4000, TTL));
    drain(&mut r);
    assert_eq!(r.binding("1002").map(|b| b.session), Some(102));
    assert!(
        !r.is_remote(BOB),
        "bob's old endpoint has nothing left here"
    );
}

#[test]
fn remote_bindings_are_refreshed_unbound_and_expire() {
    let (mut r, now) = setup();
    let later = now + Duration::from_secs(100);
    r.handle_remote_bound(later, BOB, "n2", remote("1002", "bob", 2000, TTL));
    drain(&mut r);
    // Refreshed at 100 s: still there at 150 s, gone at 221 s.
    r.handle_timeout(now + Duration::from_secs(150));
    drain(&mut r);
    assert!(r.binding("1002").is_some());
    r.handle_timeout(later + TTL + Duration::from_secs(1));
    let acts = drain(&mut r);
    assert!(r.binding("1002").is_none());
    assert!(
        sent(&acts, BOB).is_empty(),
        "no Unbound to another node's endpoint"
    );
    assert!(!r.is_remote(BOB));
    // Unbound by its node; another session's binding stays.
    r.handle_remote_bound(now, BOB, "n2", remote("1002", "bob", 2000, TTL));
    drain(&mut r);
    r.handle_remote_unbound(now, 555, "1002");
    assert!(r.binding("1002").is_some());
    r.handle_remote_unbound(now, BOB, "1002");
    drain(&mut r);
    assert!(r.binding("1002").is_none());
    assert!(!r.is_remote(BOB));
}

#[test]
fn a_remote_session_is_never_taken_for_a_local_one() {
    let (mut r, now) = setup();
    // The shell's mistake (a local session's number reused) changes
    // nothing.
    r.handle_remote_bound(now, 1, "n2", remote("1002", "bob", 2000, TTL));
    drain(&mut r);
    assert!(!r.is_remote(1));
    assert_eq!(r.binding("1002").map(|b| b.session), Some(BOB));
    // A message about registration is the holding node's.
    assert!(is_registration_message(&DirMsg::Unbound {
        numbers: vec![],
        reason: String::new(),
        expired: false
    }));
    assert!(!is_registration_message(&DirMsg::Ended {
        call: 1,
        reason: EndReason::Hangup
    }));
}
