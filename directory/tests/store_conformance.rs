//! The store conformance suite: the same cases run against [`SqliteStore`]
//! and [`PostgresStore`] (a cluster the test makes with initdb), each case
//! on a fresh, empty store. Then what only PostgreSQL has: a restart while
//! the store is in use, and `migrate --from-sqlite` there and back.
#![allow(clippy::unwrap_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyline_directory::store::{
    self, copy, NewMail, NumberRow, NumberStatus, PostgresStore, Quota, SqliteStore, Store,
    StoreError,
};
use keyline_proto::dir::{ForwardRule, ForwardWhen, MailKind};
use keyline_tests::pg::PgCluster;

type Case = (&'static str, fn(&dyn Store));

const CASES: &[Case] = &[
    ("accounts_numbers_and_tokens", accounts_numbers_and_tokens),
    ("mail_quota_and_ack", mail_quota_and_ack),
    (
        "sign_up_invites_holds_renames_and_admins",
        sign_up_invites_holds_renames_and_admins,
    ),
    (
        "numbers_added_removed_and_do_not_disturb",
        numbers_added_removed_and_do_not_disturb,
    ),
    ("refusals_change_nothing", refusals_change_nothing),
    ("lists_are_ordered", lists_are_ordered),
    ("tokens_expire_and_end", tokens_expire_and_end),
    (
        "web_sessions_live_expire_and_end",
        web_sessions_live_expire_and_end,
    ),
    ("first_number_is_chosen", first_number_is_chosen),
    ("mail_bodies_and_ids", mail_bodies_and_ids),
    ("holds_expire", holds_expire),
    (
        "several_rules_per_number_on_and_off",
        several_rules_per_number_on_and_off,
    ),
    (
        "call_history_per_account_trimmed",
        call_history_per_account_trimmed,
    ),
    (
        "call_records_written_at_once_are_all_kept",
        call_records_written_at_once_are_all_kept,
    ),
    (
        "concurrent_writers_keep_the_rules",
        concurrent_writers_keep_the_rules,
    ),
];

/// Run every case on a store `make` gives it; report each case's time and
/// every failure (not only the first).
fn run_suite(name: &str, mut make: impl FnMut(&str) -> Box<dyn Store>) {
    let started = Instant::now();
    let mut failed = Vec::new();
    for (case, f) in CASES {
        let t = Instant::now();
        let s = make(case);
        let r = catch_unwind(AssertUnwindSafe(|| f(s.as_ref())));
        eprintln!(
            "{name}: {case} {} in {} ms",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_millis()
        );
        if r.is_err() {
            failed.push(*case);
        }
    }
    eprintln!(
        "{name}: {} cases in {} ms",
        CASES.len(),
        started.elapsed().as_millis()
    );
    assert!(failed.is_empty(), "{name}: failed cases: {failed:?}");
}

#[test]
fn sqlite_passes_the_suite() {
    run_suite("sqlite", |_| {
        Box::new(SqliteStore::open_in_memory().expect("in-memory SQLite"))
    });
}

#[test]
fn sqlite_file_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("keyline-sqlite-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut n = 0;
    run_suite("sqlite-file", |_| {
        n += 1;
        Box::new(SqliteStore::open(&dir.join(format!("{n}.sqlite"))).expect("SQLite file"))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn postgres_passes_the_suite() {
    let pg = PgCluster::start();
    let started = Instant::now();
    run_suite("postgres", |case| {
        pg.create_db(case);
        Box::new(PostgresStore::open(&pg.url(case), 8).expect("PostgreSQL store"))
    });
    eprintln!(
        "postgres suite with its databases: {} ms",
        started.elapsed().as_millis()
    );
}

// ---------------------------------------------------------------------
// The cases.

fn fwd(when: ForwardWhen, to: &str) -> ForwardRule {
    ForwardRule::new(when, to)
}

fn text(to: &str, body: &[u8]) -> NewMail {
    NewMail {
        to: to.into(),
        from: "x".into(),
        kind: MailKind::Text,
        body: body.to_vec(),
        at_ms: 3,
    }
}

fn accounts_numbers_and_tokens(s: &dyn Store) {
    s.add_account("alice", "h1", &["아리랑".into(), "2001".into()], 1)
        .expect("add");
    assert!(matches!(
        s.add_account("alice", "h", &["9".into()], 1),
        Err(StoreError::Exists(_))
    ));
    let e = s
        .add_account("bob", "h", &["2001".into()], 1)
        .expect_err("taken");
    assert!(e.to_string().contains("belongs to account alice"), "{e}");
    assert!(s.account("bob").expect("query").is_none());
    s.add_account("bob", "h2", &["ボブ".into()], 2)
        .expect("add");
    let a = s.account("alice").expect("query").expect("exists");
    assert_eq!(a.numbers, vec!["아리랑", "2001"]);
    assert_eq!(a.pw_hash, "h1");
    assert_eq!(a.created_ms, 1);
    assert!(!a.admin);
    assert_eq!(s.accounts().expect("list").len(), 2);
    assert_eq!(s.numbers().expect("numbers").len(), 3);

    s.insert_token("t1", "alice", 0, 100).expect("token");
    s.insert_token("t2", "alice", 0, 100).expect("token");
    assert_eq!(
        s.token_account("t1", 50).expect("q").as_deref(),
        Some("alice")
    );
    assert_eq!(s.token_account("t1", 100).expect("q"), None);
    s.set_password("alice", "h3", Some("t2")).expect("passwd");
    assert_eq!(s.account("alice").expect("q").expect("a").pw_hash, "h3");
    assert_eq!(s.token_account("t1", 50).expect("q"), None);
    assert_eq!(
        s.token_account("t2", 50).expect("q").as_deref(),
        Some("alice")
    );
    assert_eq!(s.purge_tokens(1000).expect("purge"), 1);

    s.set_forward("2001", Some(&fwd(ForwardWhen::Unregistered, "ボブ")), 5)
        .expect("forward");
    assert!(s
        .set_forward("2001", Some(&fwd(ForwardWhen::Always, "nobody")), 5)
        .is_err());
    let fwds: Vec<NumberRow> = s
        .numbers()
        .expect("n")
        .into_iter()
        .filter(|n| !n.forwards.is_empty())
        .collect();
    assert_eq!(fwds.len(), 1);
    assert_eq!(
        fwds[0].forwards,
        vec![fwd(ForwardWhen::Unregistered, "ボブ")]
    );
    // A rule of another kind goes beside it; all are cleared at once.
    s.set_forward("2001", Some(&fwd(ForwardWhen::Always, "ボブ")), 6)
        .expect("another kind");
    let row = |n: &str| {
        s.numbers()
            .expect("n")
            .into_iter()
            .find(|r| r.number == n)
            .expect("row")
    };
    assert_eq!(
        row("2001").forwards,
        vec![
            fwd(ForwardWhen::Always, "ボブ"),
            fwd(ForwardWhen::Unregistered, "ボブ")
        ]
    );
    s.set_forward("2001", None, 7).expect("clear");
    assert_eq!(row("2001").forwards, vec![]);
    // Bob's rule to Alice goes with Alice.
    s.set_forward("ボブ", Some(&fwd(ForwardWhen::Busy, "아리랑")), 8)
        .expect("bob forwards");

    s.remove_account("alice").expect("rm");
    assert!(matches!(
        s.remove_account("alice"),
        Err(StoreError::NotFound(_))
    ));
    let rows = s.numbers().expect("numbers");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].forwards, vec![], "a rule to a removed number stays");
    assert_eq!(s.token_account("t2", 50).expect("q"), None);
}

fn mail_quota_and_ack(s: &dyn Store) {
    s.add_account("bob", "h", &["ボブ".into(), "b2".into()], 1)
        .expect("add");
    let quota = Quota {
        messages: 2,
        bytes: 10,
    };
    let id1 = s.store_mail(&text("ボブ", b"hello"), quota).expect("store");
    let e = s
        .store_mail(&text("b2", b"toolong"), quota)
        .expect_err("bytes");
    assert!(matches!(e, StoreError::Quota(_)), "{e}");
    let id2 = s.store_mail(&text("b2", b"hi"), quota).expect("store");
    let e = s.store_mail(&text("ボブ", b"x"), quota).expect_err("count");
    assert!(e.to_string().contains("full"), "{e}");
    assert!(matches!(
        s.store_mail(&text("nobody", b"x"), quota),
        Err(StoreError::NotFound(_))
    ));
    let pending = s.pending_mail("bob").expect("pending");
    assert_eq!(
        pending.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![id1, id2]
    );
    assert_eq!(pending[0].to, "ボブ");
    assert_eq!(pending[0].from, "x");
    assert_eq!(pending[0].kind, "text");
    assert_eq!(pending[0].size, 5);
    assert_eq!(pending[0].at_ms, 3);
    assert_eq!(pending[0].account, "bob");
    assert_eq!(
        s.mail_body(id1).expect("body").as_deref(),
        Some(&b"hello"[..])
    );
    assert!(!s.delete_mail("alice", id1).expect("not hers"));
    assert!(s.delete_mail("bob", id1).expect("ack"));
    assert!(!s.delete_mail("bob", id1).expect("twice"));
    assert_eq!(s.mail_body(id1).expect("body"), None);
    assert_eq!(s.all_mail().expect("all").len(), 1);
    // Room again after the acknowledgement.
    s.store_mail(&text("ボブ", b"again"), quota)
        .expect("room again");
    assert!(s.pending_mail("nobody").expect("none").is_empty());
    s.flush().expect("flush");
}

fn sign_up_invites_holds_renames_and_admins(s: &dyn Store) {
    s.add_invite("code1", 1).expect("invite");
    s.sign_up("minjun", "h", &["김민준".into()], 10, Some("code1"))
        .expect("sign up");
    // A spent code, an unknown code: nothing is created.
    let e = s
        .sign_up("other", "h", &["o1".into()], 10, Some("code1"))
        .expect_err("spent");
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    let e = s
        .sign_up("other", "h", &["o1".into()], 10, Some("nosuch"))
        .expect_err("unknown");
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert!(s.account("other").expect("q").is_none());
    assert_eq!(
        s.invites().expect("invites")[0].used_by.as_deref(),
        Some("minjun")
    );
    assert_eq!(
        s.number_status("김민준", 10).expect("status"),
        NumberStatus::Taken
    );
    assert_eq!(
        s.number_status("o1", 10).expect("status"),
        NumberStatus::Free
    );

    // Renaming keeps numbers, rules and mail, and ends the tokens.
    s.add_account("bob", "h", &["b".into()], 1).expect("bob");
    s.set_forward("김민준", Some(&fwd(ForwardWhen::Always, "b")), 2)
        .expect("fwd");
    let quota = Quota {
        messages: 5,
        bytes: 100,
    };
    s.store_mail(&text("김민준", b"hi"), quota).expect("mail");
    s.insert_token("t", "minjun", 0, 1000).expect("token");
    s.set_admin("minjun", true).expect("admin before");
    assert!(matches!(
        s.rename_account("minjun", "bob"),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.rename_account("nobody", "x"),
        Err(StoreError::NotFound(_))
    ));
    s.rename_account("minjun", "mj").expect("rename");
    assert!(s.account("minjun").expect("q").is_none());
    let a = s.account("mj").expect("q").expect("renamed");
    assert_eq!(a.numbers, vec!["김민준"]);
    assert!(a.admin, "the operator flag goes with the account");
    assert_eq!(a.created_ms, 10);
    assert_eq!(s.pending_mail("mj").expect("mail").len(), 1);
    assert!(s.pending_mail("minjun").expect("mail").is_empty());
    assert_eq!(s.token_account("t", 1).expect("q"), None);
    assert!(s
        .numbers()
        .expect("n")
        .iter()
        .any(|n| !n.forwards.is_empty()));
    assert_eq!(
        s.invites().expect("invites")[0].used_by.as_deref(),
        Some("mj")
    );

    s.set_admin("mj", false).expect("admin off");
    assert!(!s.account("mj").expect("q").expect("a").admin);
    s.set_admin("mj", true).expect("admin");
    assert!(s.account("mj").expect("q").expect("a").admin);
    assert!(s.accounts().expect("all").iter().any(|a| a.admin));
    assert!(matches!(
        s.set_admin("nobody", true),
        Err(StoreError::NotFound(_))
    ));

    // Deleting with a hold keeps the number from new accounts until then.
    s.insert_token("t2", "mj", 0, 1000).expect("token");
    assert!(s.delete_token("t2").expect("delete"));
    assert!(!s.delete_token("t2").expect("again"));
    s.remove_account_holding("mj", 500).expect("delete");
    assert_eq!(
        s.number_status("김민준", 100).expect("status"),
        NumberStatus::Held { until_ms: 500 }
    );
    let e = s
        .sign_up("new", "h", &["김민준".into()], 100, None)
        .expect_err("held");
    assert!(e.to_string().contains("held back"), "{e}");
    // The operator's own command is not held back.
    s.sign_up("new", "h", &["김민준".into()], 501, None)
        .expect("after the hold");
    assert_eq!(
        s.number_status("김민준", 501).expect("status"),
        NumberStatus::Taken
    );
    // The mail went with the deleted account.
    assert!(s.all_mail().expect("all").is_empty());
}

fn numbers_added_removed_and_do_not_disturb(s: &dyn Store) {
    s.add_account("a", "h", &["a1".into()], 1).expect("a");
    s.add_account("b", "h", &["b1".into()], 1).expect("b");
    s.add_number("a", "에이", 2).expect("add");
    assert_eq!(
        s.account("a").expect("q").expect("a").numbers,
        vec!["a1", "에이"]
    );
    // Taken, held back, or no such account: nothing changes.
    assert!(matches!(
        s.add_number("a", "b1", 2),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        s.add_number("nobody", "n1", 2),
        Err(StoreError::NotFound(_))
    ));
    // Busy and no-answer rules are kept like the others.
    s.set_forward("b1", Some(&fwd(ForwardWhen::Busy, "에이")), 3)
        .expect("busy rule");
    s.set_forward("a1", Some(&fwd(ForwardWhen::NoAnswer, "b1")), 3)
        .expect("no-answer rule");
    s.set_dnd("a1", true).expect("dnd");
    assert!(matches!(
        s.set_dnd("nobody", true),
        Err(StoreError::NotFound(_))
    ));
    let rows = s.numbers().expect("numbers");
    let row = |n: &str| rows.iter().find(|r| r.number == n).expect("row").clone();
    assert!(row("a1").dnd);
    assert!(!row("에이").dnd);
    assert_eq!(row("a1").forwards, vec![fwd(ForwardWhen::NoAnswer, "b1")]);
    assert_eq!(row("b1").forwards, vec![fwd(ForwardWhen::Busy, "에이")]);
    s.set_dnd("a1", false).expect("dnd off");
    assert!(!s
        .numbers()
        .expect("numbers")
        .iter()
        .any(|r| r.number == "a1" && r.dnd));

    // Another account's number, and the last one, stay.
    assert!(matches!(
        s.remove_number("a", "b1", None),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.remove_number("b", "b1", None),
        Err(StoreError::Invalid(_))
    ));
    // Removed with a hold: the rule forwarding to it goes too.
    s.remove_number("a", "에이", Some(50)).expect("remove");
    assert_eq!(s.account("a").expect("q").expect("a").numbers, vec!["a1"]);
    assert!(s
        .numbers()
        .expect("numbers")
        .iter()
        .all(|r| r.number != "에이" && r.forwards.iter().all(|f| f.to != "에이")));
    assert_eq!(
        s.number_status("에이", 10).expect("status"),
        NumberStatus::Held { until_ms: 50 }
    );
    assert!(matches!(
        s.add_number("b", "에이", 10),
        Err(StoreError::Exists(_))
    ));
    s.add_number("b", "에이", 51).expect("after the hold");
    // Positions go on after the last: a removed number leaves no gap in order.
    s.add_number("b", "b3", 52).expect("third");
    assert_eq!(
        s.account("b").expect("q").expect("b").numbers,
        vec!["b1", "에이", "b3"]
    );
    // Removed without a hold: free at once.
    s.remove_number("b", "b3", None).expect("remove");
    assert_eq!(s.number_status("b3", 0).expect("s"), NumberStatus::Free);
}

fn refusals_change_nothing(s: &dyn Store) {
    assert!(matches!(
        s.add_account("a", "h", &[], 1),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.sign_up("a", "h", &[], 1, None),
        Err(StoreError::Invalid(_))
    ));
    // The same number twice: nothing is created.
    assert!(s
        .add_account("a", "h", &["1".into(), "1".into()], 1)
        .is_err());
    assert!(s.account("a").expect("q").is_none());
    assert_eq!(s.number_status("1", 1).expect("s"), NumberStatus::Free);
    s.add_account("a", "h", &["1".into(), "2".into()], 1)
        .expect("a");
    // A second number taken: the first is not given either.
    assert!(s
        .add_account("b", "h", &["3".into(), "2".into()], 1)
        .is_err());
    assert_eq!(s.number_status("3", 1).expect("s"), NumberStatus::Free);
    assert!(s.account("b").expect("q").is_none());
    // Forwarding: unknown number, unknown target, itself.
    assert!(matches!(
        s.set_forward("9", Some(&fwd(ForwardWhen::Always, "1")), 1),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.set_forward("9", None, 1),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.set_forward("1", Some(&fwd(ForwardWhen::Always, "9")), 1),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.set_forward("1", Some(&fwd(ForwardWhen::Always, "1")), 1),
        Err(StoreError::Invalid(_))
    ));
    // Two rules of one kind, or a set with one bad target: nothing kept.
    assert!(matches!(
        s.set_forwards(
            "1",
            &[fwd(ForwardWhen::Busy, "2"), fwd(ForwardWhen::Busy, "2")],
            1
        ),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.set_forwards(
            "1",
            &[fwd(ForwardWhen::Busy, "2"), fwd(ForwardWhen::Always, "9")],
            1
        ),
        Err(StoreError::NotFound(_))
    ));
    assert!(s
        .numbers()
        .expect("n")
        .iter()
        .all(|r| r.forwards.is_empty()));
    // Passwords and tokens of accounts that do not exist.
    assert!(matches!(
        s.set_password("nobody", "h", None),
        Err(StoreError::NotFound(_))
    ));
    assert!(s.insert_token("t", "nobody", 0, 10).is_err());
    assert_eq!(s.token_account("t", 1).expect("q"), None);
    assert!(matches!(
        s.remove_account_holding("nobody", 10),
        Err(StoreError::NotFound(_))
    ));
    // An invite code is made once.
    s.add_invite("c", 1).expect("invite");
    assert!(s.add_invite("c", 2).is_err());
    assert_eq!(s.invites().expect("invites").len(), 1);
    // Nothing but the account and its numbers came of all that.
    assert_eq!(s.accounts().expect("a").len(), 1);
    assert_eq!(s.numbers().expect("n").len(), 2);
    assert!(s.all_mail().expect("m").is_empty());
}

fn lists_are_ordered(s: &dyn Store) {
    // Accounts and numbers by code point, whatever the database's locale;
    // an account's numbers in the order given.
    for (id, n) in [
        ("zed", "Z9"),
        ("Bob", "b1"),
        ("alice", "가"),
        ("émile", "a1"),
        ("_x", "ア"),
    ] {
        s.add_account(id, "h", &[n.into()], 1).expect("add");
    }
    s.add_number("zed", "0", 2).expect("n");
    s.add_number("zed", "Z1", 2).expect("n");
    let ids: Vec<String> = s.accounts().expect("a").into_iter().map(|a| a.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids, vec!["Bob", "_x", "alice", "zed", "émile"]);
    let nums: Vec<String> = s
        .numbers()
        .expect("n")
        .into_iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(nums, vec!["0", "Z1", "Z9", "a1", "b1", "ア", "가"]);
    assert_eq!(
        s.account("zed").expect("q").expect("zed").numbers,
        vec!["Z9", "0", "Z1"]
    );
    let all = s.accounts().expect("a");
    let zed = all.iter().find(|a| a.id == "zed").expect("zed");
    assert_eq!(zed.numbers, vec!["Z9", "0", "Z1"]);
    s.add_invite("second", 20).expect("i");
    s.add_invite("first", 10).expect("i");
    let inv: Vec<String> = s
        .invites()
        .expect("i")
        .into_iter()
        .map(|i| i.code_hash)
        .collect();
    assert_eq!(inv, vec!["first", "second"]);
}

fn tokens_expire_and_end(s: &dyn Store) {
    s.add_account("a", "h", &["1".into()], 1).expect("a");
    s.add_account("b", "h", &["2".into()], 1).expect("b");
    s.insert_token("ta", "a", 0, 100).expect("t");
    s.insert_token("ta2", "a", 0, 300).expect("t");
    s.insert_token("tb", "b", 0, 200).expect("t");
    assert!(s.insert_token("ta", "b", 0, 100).is_err(), "a token twice");
    assert_eq!(s.token_account("ta", 99).expect("q").as_deref(), Some("a"));
    assert_eq!(s.token_account("ta", 100).expect("q"), None);
    assert_eq!(s.token_account("tb", 150).expect("q").as_deref(), Some("b"));
    assert_eq!(s.purge_tokens(100).expect("purge"), 1);
    assert_eq!(s.purge_tokens(100).expect("purge"), 0);
    // A password change with nothing kept ends them all, only for its account.
    s.set_password("a", "h2", None).expect("pw");
    assert_eq!(s.token_account("ta2", 150).expect("q"), None);
    assert_eq!(s.token_account("tb", 150).expect("q").as_deref(), Some("b"));
    s.remove_account("b").expect("rm");
    assert_eq!(s.token_account("tb", 150).expect("q"), None);
    assert_eq!(s.purge_tokens(i64::MAX).expect("purge"), 0);
}

fn web(id: &str, account: &str, at: i64) -> store::WebSession {
    store::WebSession {
        id_hash: id.to_string(),
        account: account.to_string(),
        csrf: format!("csrf-{id}"),
        created_ms: at,
        used_ms: at,
    }
}

fn web_sessions_live_expire_and_end(s: &dyn Store) {
    const IDLE: i64 = 1_000_000;
    let touch = store::WEB_SESSION_TOUCH_MS;
    s.add_account("a", "h", &["1".into()], 1).expect("a");
    s.add_account("b", "h", &["2".into()], 1).expect("b");
    s.add_web_session(&web("wa1", "a", 0), 3, i64::MAX)
        .expect("wa1");
    s.add_web_session(&web("wb1", "b", 0), 3, i64::MAX)
        .expect("wb1");
    assert!(
        s.add_web_session(&web("wa1", "b", 0), 3, i64::MAX).is_err(),
        "an id twice"
    );
    assert!(
        s.add_web_session(&web("wx", "nobody", 0), 3, i64::MAX)
            .is_err(),
        "no such account"
    );
    let got = s.web_session("wa1", 10, IDLE).expect("q").expect("live");
    assert_eq!(got, web("wa1", "a", 0), "read without a write");
    assert_eq!(s.web_session("nope", 10, IDLE).expect("q"), None);
    // Used after the touch interval: the last use is written again, so the
    // session outlives its first idle deadline.
    let got = s.web_session("wa1", touch, IDLE).expect("q").expect("live");
    assert_eq!(got.used_ms, touch);
    assert!(s.web_session("wa1", IDLE + 1, IDLE).expect("q").is_some());
    // Idle too long: gone, and gone for good.
    assert_eq!(s.web_session("wb1", IDLE, IDLE).expect("q"), None);
    assert_eq!(s.web_session("wb1", 0, IDLE).expect("q"), None);
    // The account's least recently used go beyond the cap.
    for (i, id) in ["wa2", "wa3", "wa4"].iter().enumerate() {
        let at = IDLE + 10 + i as i64;
        s.add_web_session(&web(id, "a", at), 3, i64::MAX)
            .expect("add");
    }
    let now = IDLE + 20;
    assert_eq!(s.web_session("wa1", now, IDLE).expect("q"), None, "capped");
    for id in ["wa2", "wa3", "wa4"] {
        assert!(s.web_session(id, now, IDLE).expect("q").is_some(), "{id}");
    }
    // Ending an account's sessions but one; others' stay.
    s.add_web_session(&web("wb2", "b", now), 3, i64::MAX)
        .expect("wb2");
    assert_eq!(s.end_web_sessions("a", Some("wa3")).expect("end"), 2);
    assert_eq!(s.web_session("wa2", now, IDLE).expect("q"), None);
    assert!(s.web_session("wa3", now, IDLE).expect("q").is_some());
    assert!(s.web_session("wb2", now, IDLE).expect("q").is_some());
    s.delete_web_session("wa3").expect("logout");
    assert_eq!(s.web_session("wa3", now, IDLE).expect("q"), None);
    // A password change ends the account's browser sessions, others' stay;
    // a login whose password was read before the change gets none.
    s.add_web_session(&web("wa6", "a", now), 3, i64::MAX)
        .expect("wa6");
    s.set_password("a", "h2", None).expect("pw");
    assert!(matches!(
        s.add_web_session(&web("wa7", "a", now), 3, 1),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.web_session("wa7", now, IDLE).expect("q"), None);
    assert_eq!(s.web_session("wa6", now, IDLE).expect("q"), None);
    assert!(s.web_session("wb2", now, IDLE).expect("q").is_some());
    // A renamed account keeps its sessions; a deleted one loses them.
    s.add_web_session(&web("wa5", "a", now), 3, i64::MAX)
        .expect("wa5");
    s.rename_account("a", "a2").expect("rename");
    let got = s.web_session("wa5", now, IDLE).expect("q").expect("kept");
    assert_eq!(got.account, "a2");
    s.remove_account("a2").expect("rm");
    assert_eq!(s.web_session("wa5", now, IDLE).expect("q"), None);
    assert_eq!(s.end_web_sessions("b", None).expect("end"), 1);
    // Purging forgets the idle and counts the rest.
    s.add_web_session(&web("wb3", "b", now), 3, i64::MAX)
        .expect("wb3");
    s.add_web_session(&web("wb4", "b", now + IDLE), 3, i64::MAX)
        .expect("wb4");
    assert_eq!(s.purge_web_sessions(now + IDLE, IDLE).expect("purge"), 1);
    assert_eq!(
        s.web_session("wb4", now + IDLE, IDLE)
            .expect("q")
            .map(|w| w.account)
            .as_deref(),
        Some("b")
    );
}

fn first_number_is_chosen(s: &dyn Store) {
    s.add_account("a", "h", &["1".into(), "2".into(), "3".into()], 1)
        .expect("a");
    s.add_account("b", "h", &["9".into()], 1).expect("b");
    let numbers = |id: &str| s.account(id).expect("q").expect("there").numbers;
    s.set_first_number("a", "3").expect("first");
    assert_eq!(numbers("a"), ["3", "1", "2"]);
    s.set_first_number("a", "2").expect("first");
    assert_eq!(numbers("a"), ["2", "3", "1"]);
    s.set_first_number("a", "2").expect("already first");
    assert_eq!(numbers("a"), ["2", "3", "1"]);
    assert!(
        matches!(s.set_first_number("a", "9"), Err(StoreError::NotFound(_))),
        "another account's number"
    );
    assert!(s.set_first_number("a", "7").is_err(), "no such number");
    assert_eq!(numbers("a"), ["2", "3", "1"]);
    assert_eq!(numbers("b"), ["9"]);
    // A number added later goes last; the first stays first.
    s.add_number("a", "4", 1).expect("add");
    assert_eq!(numbers("a"), ["2", "3", "1", "4"]);
}

fn mail_bodies_and_ids(s: &dyn Store) {
    s.add_account("v", "h", &["1".into()], 1).expect("a");
    let quota = Quota {
        messages: 10,
        bytes: 4 * 1024 * 1024,
    };
    // Every byte value, an empty body, and a voice message of 1 MiB.
    let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let id1 = s.store_mail(&text("1", &all), quota).expect("all bytes");
    let id2 = s.store_mail(&text("1", b""), quota).expect("empty");
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let id3 = s
        .store_mail(
            &NewMail {
                to: "1".into(),
                from: "아리랑".into(),
                kind: MailKind::Voice,
                body: big.clone(),
                at_ms: i64::MAX - 1,
            },
            quota,
        )
        .expect("voice");
    assert!(id1 < id2 && id2 < id3);
    assert_eq!(s.mail_body(id1).expect("b").as_deref(), Some(&all[..]));
    assert_eq!(s.mail_body(id2).expect("b").as_deref(), Some(&b""[..]));
    assert_eq!(s.mail_body(id3).expect("b"), Some(big));
    assert_eq!(s.mail_body(id3 + 1000).expect("b"), None);
    assert_eq!(s.mail_body(u64::MAX).expect("b"), None);
    assert!(!s.delete_mail("v", u64::MAX).expect("none"));
    let m = s.all_mail().expect("all");
    assert_eq!(m[2].kind, "voice");
    assert_eq!(m[2].size, 1024 * 1024);
    assert_eq!(m[2].at_ms, i64::MAX - 1);
    assert_eq!(m[2].from, "아리랑");
    // An id is never given twice, even after its message is gone.
    assert!(s.delete_mail("v", id3).expect("ack"));
    let id4 = s.store_mail(&text("1", b"later"), quota).expect("later");
    assert!(id4 > id3, "{id4} after {id3}");
}

fn holds_expire(s: &dyn Store) {
    s.add_account("a", "h", &["1".into(), "2".into()], 1)
        .expect("a");
    s.remove_number("a", "2", Some(100)).expect("rm");
    assert_eq!(
        s.number_status("2", 99).expect("s"),
        NumberStatus::Held { until_ms: 100 }
    );
    assert_eq!(s.number_status("2", 100).expect("s"), NumberStatus::Free);
    // add_account (the operator's command) is not held back; sign_up is.
    assert!(s.sign_up("b", "h", &["2".into()], 50, None).is_err());
    s.add_account("b", "h", &["2".into()], 50)
        .expect("operator");
    assert_eq!(s.number_status("2", 50).expect("s"), NumberStatus::Taken);
    // Taken again and removed again: the later hold wins.
    s.add_number("b", "3", 50).expect("3");
    s.remove_number("b", "2", Some(400)).expect("rm");
    assert_eq!(
        s.number_status("2", 200).expect("s"),
        NumberStatus::Held { until_ms: 400 }
    );
    s.remove_account_holding("b", 300).expect("rm b");
    assert_eq!(
        s.number_status("3", 299).expect("s"),
        NumberStatus::Held { until_ms: 300 }
    );
    assert_eq!(
        s.number_status("2", 350).expect("s"),
        NumberStatus::Held { until_ms: 400 }
    );
}

fn concurrent_writers_keep_the_rules(s: &dyn Store) {
    s.add_account("box", "h", &["1".into()], 1).expect("a");
    let quota = Quota {
        messages: 5,
        bytes: 1 << 20,
    };
    // Sixteen writers at once into a mailbox with room for five.
    let results: Vec<Result<u64, StoreError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| sc.spawn(move || s.store_mail(&text("1", format!("m{i}").as_bytes()), quota)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(stored, 5, "{results:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(StoreError::Quota(_)))));
    assert_eq!(s.pending_mail("box").expect("p").len(), 5);
    // Eight sign-ups for one number at once: one account gets it.
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| sc.spawn(move || s.sign_up(&format!("u{i}"), "h", &["77".into()], 5, None)))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(s.accounts().expect("a").len(), 2);
    // Rules set while their target goes: none is left pointing nowhere.
    for i in 0..8 {
        s.add_number("box", &format!("t{i}"), 5).expect("n");
    }
    std::thread::scope(|sc| {
        for i in 0..8 {
            sc.spawn(move || {
                let _ = s.set_forward("1", Some(&fwd(ForwardWhen::Always, &format!("t{i}"))), 6);
            });
            sc.spawn(move || {
                let _ = s.remove_number("box", &format!("t{i}"), None);
            });
        }
    });
    let rows = s.numbers().expect("n");
    for r in &rows {
        for f in &r.forwards {
            assert!(
                rows.iter().any(|t| t.number == f.to),
                "{} forwards to the removed {}",
                r.number,
                f.to
            );
        }
    }
}

/// Call records written at once by many writers (several directory
/// nodes, each with its batches) are all kept: each writer's trims of
/// old records never cost another's new ones.
fn call_records_written_at_once_are_all_kept(s: &dyn Store) {
    let accounts = ["a", "b", "c", "d"];
    for (i, a) in accounts.iter().enumerate() {
        s.add_account(a, "h", &[format!("{}", i + 1)], 1)
            .expect("account");
    }
    let keep = store::CallRetention {
        per_account: 1_000,
        since_ms: 1,
    };
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|w| {
                sc.spawn(move || {
                    for k in 0..40 {
                        let at = 1_000 + w * 100 + k;
                        let batch = [
                            call(accounts[(w + k) % 4], true, "9", at as i64),
                            call(accounts[(w + 1) % 4], false, "8", at as i64),
                        ];
                        s.add_calls(&batch, keep)?;
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let kept: usize = accounts
        .iter()
        .map(|a| s.calls(a, 0, 1_000).expect("calls").len())
        .sum();
    assert_eq!(kept, 8 * 40 * 2, "every record kept");
}

/// A number keeps one rule of each kind at once; each is turned off and
/// on without losing its target; a whole set is replaced at once.
fn several_rules_per_number_on_and_off(s: &dyn Store) {
    s.add_account("a", "h", &["1".into()], 1).expect("a");
    s.add_account("b", "h", &["2".into(), "3".into(), "4".into()], 1)
        .expect("b");
    s.set_forward("1", Some(&fwd(ForwardWhen::Busy, "2")), 2)
        .expect("busy");
    s.set_forward("1", Some(&fwd(ForwardWhen::NoAnswer, "3")), 2)
        .expect("no answer");
    s.set_forward("1", Some(&fwd(ForwardWhen::Unregistered, "4")), 2)
        .expect("offline");
    s.set_forward("1", Some(&fwd(ForwardWhen::Always, "2")), 2)
        .expect("always");
    let all = vec![
        fwd(ForwardWhen::Always, "2"),
        fwd(ForwardWhen::Busy, "2"),
        fwd(ForwardWhen::NoAnswer, "3"),
        fwd(ForwardWhen::Unregistered, "4"),
    ];
    assert_eq!(s.forwards("1").expect("rules"), all);
    // One kind set again: replaced in place, the others stay.
    s.set_forward("1", Some(&fwd(ForwardWhen::Busy, "3")), 3)
        .expect("busy again");
    assert_eq!(
        s.forwards("1").expect("rules")[1],
        fwd(ForwardWhen::Busy, "3")
    );
    assert_eq!(s.forwards("1").expect("rules").len(), 4);
    // Off: one kind, then all; the targets stay.
    assert_eq!(
        s.forward_off("1", Some(ForwardWhen::Always)).expect("off"),
        1
    );
    assert_eq!(
        s.forward_off("1", Some(ForwardWhen::Always)).expect("off"),
        0
    );
    let rules = s.forwards("1").expect("rules");
    assert!(!rules[0].on && rules[0].to == "2");
    assert!(rules[1..].iter().all(|r| r.on));
    assert_eq!(s.forward_off("1", None).expect("all off"), 3);
    assert!(s.forwards("1").expect("rules").iter().all(|r| !r.on));
    let row = s
        .numbers()
        .expect("n")
        .into_iter()
        .find(|r| r.number == "1")
        .expect("row");
    assert_eq!(row.forwards.len(), 4);
    // On again by setting it.
    s.set_forward("1", Some(&fwd(ForwardWhen::NoAnswer, "3")), 4)
        .expect("on");
    assert!(s.forwards("1").expect("rules")[2].on);
    // A whole set replaces every rule; an off rule keeps its target.
    let set = vec![
        fwd(ForwardWhen::Busy, "2"),
        ForwardRule {
            on: false,
            ..fwd(ForwardWhen::Unregistered, "3")
        },
    ];
    s.set_forwards("1", &set, 5).expect("set");
    assert_eq!(s.forwards("1").expect("rules"), set);
    s.set_forwards("1", &[], 5).expect("none");
    assert!(s.forwards("1").expect("rules").is_empty());
    assert!(s.forwards("nobody").expect("rules").is_empty());
    // A target that goes takes only the rules to it.
    s.set_forwards(
        "1",
        &[fwd(ForwardWhen::Busy, "2"), fwd(ForwardWhen::NoAnswer, "4")],
        6,
    )
    .expect("set");
    s.remove_number("b", "4", None).expect("remove");
    assert_eq!(
        s.forwards("1").expect("rules"),
        vec![fwd(ForwardWhen::Busy, "2")]
    );
}

fn call(account: &str, outgoing: bool, other: &str, at: i64) -> store::CallEntry {
    store::CallEntry {
        account: account.into(),
        outgoing,
        own_number: "1".into(),
        other_number: other.into(),
        started_ms: at,
        answered: at % 2 == 0,
        outcome: if at % 2 == 0 {
            store::CallOutcome::Answered
        } else {
            store::CallOutcome::NoAnswer
        },
        forwarded_to: (at == 3).then(|| "3003".to_string()),
        duration_ms: (at % 2 == 0).then_some(at * 100),
        relayed: (at % 2 == 0).then_some(at % 4 == 0),
    }
}

/// Each account sees only its own calls, newest first, a page at a time;
/// only the newest N and none older than the cut-off stay; the history
/// follows a renamed account and goes with a deleted one.
fn call_history_per_account_trimmed(s: &dyn Store) {
    s.add_account("a", "h", &["1".into()], 1).expect("a");
    s.add_account("b", "h", &["2".into()], 1).expect("b");
    let keep = store::CallRetention {
        per_account: 5,
        since_ms: 0,
    };
    for at in 1..=4 {
        s.add_calls(&[call("a", true, "2", at), call("b", false, "1", at)], keep)
            .expect("add");
    }
    let a = s.calls("a", 0, 10).expect("calls");
    assert_eq!(
        a.iter().map(|c| c.started_ms).collect::<Vec<_>>(),
        [4, 3, 2, 1]
    );
    assert!(a.iter().all(|c| c.account == "a" && c.outgoing));
    assert_eq!(a[0], call("a", true, "2", 4), "kept as given");
    assert_eq!(a[1].forwarded_to.as_deref(), Some("3003"));
    let b = s.calls("b", 1, 2).expect("page");
    assert_eq!(b.iter().map(|c| c.started_ms).collect::<Vec<_>>(), [3, 2]);
    assert!(b.iter().all(|c| c.account == "b" && !c.outgoing));
    assert!(s.calls("nobody", 0, 10).expect("none").is_empty());
    // An entry of an account that is gone is dropped, not an error.
    s.add_calls(&[call("gone", true, "1", 5)], keep)
        .expect("gone");
    // Only the newest five per account.
    for at in 5..=8 {
        s.add_calls(&[call("a", true, "2", at)], keep).expect("add");
    }
    let a = s.calls("a", 0, 10).expect("calls");
    assert_eq!(
        a.iter().map(|c| c.started_ms).collect::<Vec<_>>(),
        [8, 7, 6, 5, 4]
    );
    assert_eq!(s.calls("b", 0, 10).expect("b").len(), 4, "b's own stay");
    // None older than the cut-off, whoever's.
    s.add_calls(
        &[call("a", true, "2", 9)],
        store::CallRetention {
            per_account: 5,
            since_ms: 7,
        },
    )
    .expect("add");
    assert_eq!(
        s.calls("a", 0, 10)
            .expect("calls")
            .iter()
            .map(|c| c.started_ms)
            .collect::<Vec<_>>(),
        [9, 8, 7]
    );
    assert!(s.calls("b", 0, 10).expect("b").is_empty());
    // Renamed: the history follows; deleted: it goes.
    s.rename_account("a", "a2").expect("rename");
    assert_eq!(s.calls("a2", 0, 10).expect("calls").len(), 3);
    assert!(s.calls("a", 0, 10).expect("calls").is_empty());
    s.remove_account("a2").expect("rm");
    s.add_account("a2", "h", &["9".into()], 1).expect("again");
    assert!(s.calls("a2", 0, 10).expect("calls").is_empty());
}

// ---------------------------------------------------------------------
// PostgreSQL only.

/// Call records written while one of their accounts is being deleted in
/// another transaction: the record of the account that goes is dropped,
/// the other party's is kept, and the write is no error.
#[test]
fn postgres_call_records_beside_a_deletion() {
    let pg = PgCluster::start();
    pg.create_db("deleting");
    let store = PostgresStore::open(&pg.url("deleting"), 2).expect("open");
    store
        .add_account("going", "h", &["1".into()], 1)
        .expect("going");
    store
        .add_account("staying", "h", &["2".into()], 1)
        .expect("staying");
    let mut other =
        postgres::Client::connect(&pg.url("deleting"), postgres::NoTls).expect("connect");
    let mut deletion = other.transaction().expect("begin");
    deletion
        .execute("DELETE FROM accounts WHERE id = 'going'", &[])
        .expect("delete");
    let keep = store::CallRetention {
        per_account: 10,
        since_ms: 0,
    };
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            store.add_calls(
                &[call("going", true, "2", 5), call("staying", false, "1", 5)],
                keep,
            )
        });
        // The writer waits for the deletion's lock, then finds the
        // account gone.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "the write should wait for the deletion"
        );
        deletion.commit().expect("commit the deletion");
        writer.join().expect("thread").expect("no error");
    });
    assert_eq!(store.calls("staying", 0, 10).expect("calls").len(), 1);
    assert!(store.account("going").expect("query").is_none());
    assert!(store.calls("going", 0, 10).expect("calls").is_empty());
}

/// A PostgreSQL restart while the directory uses the store: the request
/// during the outage gets a clear error, the next one after the restart
/// succeeds, and nothing stored before is lost. Through `store::blocking`,
/// as the server calls it.
#[test]
fn postgres_restart_costs_a_request_not_data() {
    let mut pg = PgCluster::start();
    pg.create_db("restart");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&pg.url("restart"), 4).expect("open"));
    let quota = Quota {
        messages: 10,
        bytes: 1 << 20,
    };
    let body: Vec<u8> = (0..=255u8).collect();
    let b2 = body.clone();
    let mail_id = rt
        .block_on(store::blocking(&store, move |s| {
            s.add_account("alice", "h", &["1".into(), "2".into()], 1)?;
            s.add_account("bob", "h", &["3".into()], 1)?;
            s.set_forward("1", Some(&fwd(ForwardWhen::Busy, "3")), 2)?;
            s.set_dnd("2", true)?;
            s.insert_token("tok", "alice", 0, i64::MAX)?;
            s.store_mail(
                &NewMail {
                    to: "1".into(),
                    from: "3".into(),
                    kind: MailKind::Voice,
                    body: b2,
                    at_ms: 5,
                },
                quota,
            )
        }))
        .expect("stored before");
    // Several connections open, as under load.
    rt.block_on(async {
        let hs: Vec<_> = (0..8)
            .map(|_| store::blocking(&store, |s| s.account("alice")))
            .collect();
        for h in hs {
            h.await.expect("read");
        }
    });
    let before = rt
        .block_on(store::blocking(&store, |s| {
            Ok((s.accounts()?, s.numbers()?, s.all_mail()?))
        }))
        .expect("before");

    // A request in flight when PostgreSQL stops: it waits for a lock that
    // a prepared transaction holds. No session owns that lock, so the
    // shutdown cannot hand it to the waiter by ending its holder first
    // (as it could with a plain transaction in another session); the
    // waiter is cut off, and the lock outlives the restart until it is
    // rolled back below.
    let mut locker =
        postgres::Client::connect(&pg.url("restart"), postgres::NoTls).expect("connect");
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE; \
             PREPARE TRANSACTION 'hold-accounts'",
        )
        .expect("lock");
    drop(locker);
    let st = store.clone();
    let in_flight = rt.spawn(async move { store::blocking(&st, |s| s.account("alice")).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !in_flight.is_finished(),
        "the request should wait for the lock"
    );
    pg.stop_server();
    let e = rt
        .block_on(in_flight)
        .expect("join")
        .expect_err("cut off by the shutdown");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    eprintln!("in flight at the shutdown: {e}");
    assert!(
        e.to_string().contains("connection to PostgreSQL was lost"),
        "{e}"
    );

    // PostgreSQL is away: a request fails at once with a clear error.
    let t = Instant::now();
    let e = rt
        .block_on(store::blocking(&store, |s| s.account("alice")))
        .expect_err("no PostgreSQL");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("storage:") && msg.contains("PostgreSQL"),
        "{msg}"
    );
    // The connection that died took the idle ones with it: this request
    // tried a new one.
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    eprintln!("during the outage ({} ms): {msg}", t.elapsed().as_millis());
    // And again (now with no connection at all): the same kind of error.
    let e = rt
        .block_on(store::blocking(&store, |s| s.token_account("tok", 10)))
        .expect_err("still none");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");

    // Back: the next request reconnects and finds everything.
    pg.start_server();
    postgres::Client::connect(&pg.url("restart"), postgres::NoTls)
        .expect("connect")
        .batch_execute("ROLLBACK PREPARED 'hold-accounts'")
        .expect("release the lock");
    let t = Instant::now();
    let after = rt
        .block_on(store::blocking(&store, |s| {
            Ok((s.accounts()?, s.numbers()?, s.all_mail()?))
        }))
        .expect("the first request after the restart");
    eprintln!(
        "first request after the restart: {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(before, after);
    let (tok, got) = rt
        .block_on(store::blocking(&store, move |s| {
            Ok((s.token_account("tok", 10)?, s.mail_body(mail_id)?))
        }))
        .expect("after");
    assert_eq!(tok.as_deref(), Some("alice"));
    assert_eq!(got, Some(body.clone()));

    // A restart between requests (idle connections that died unseen)
    // costs no request at all.
    rt.block_on(async {
        let hs: Vec<_> = (0..4)
            .map(|_| store::blocking(&store, |s| s.account("bob")))
            .collect();
        for h in hs {
            h.await.expect("read");
        }
    });
    pg.stop_server();
    pg.start_server();
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(store::blocking(&store, move |s| {
        s.store_mail(&text("3", b"after"), quota)
    }))
    .expect("a write after a quiet restart");
    let n = rt
        .block_on(store::blocking(&store, |s| s.all_mail()))
        .expect("mail")
        .len();
    assert_eq!(n, 2);

    // A restart under load: writers go on through it; every write that
    // was acknowledged is there afterwards, every refusal is a storage
    // error, and every writer succeeds again once PostgreSQL is back. A
    // writer stops only once told to and after a write it began after
    // the restart went through (or after a minute, which fails the test):
    // on a busy machine, reconnecting six writers may take longer than
    // any fixed pause.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (store, stop, back) = (store.clone(), stop.clone(), back.clone());
            rt.spawn(async move {
                let (mut acked, mut refused, mut ok_after_restart) = (Vec::new(), 0, false);
                let give_up = Instant::now() + Duration::from_secs(60);
                let mut i = 0u32;
                while !(stop.load(std::sync::atomic::Ordering::Relaxed) && ok_after_restart)
                    && Instant::now() < give_up
                {
                    let token = format!("w{w}-{i}");
                    i += 1;
                    let t2 = token.clone();
                    let began_after_restart = back.load(std::sync::atomic::Ordering::Relaxed);
                    match store::blocking(&store, move |s| s.insert_token(&t2, "bob", 0, i64::MAX))
                        .await
                    {
                        Ok(()) => {
                            ok_after_restart |= began_after_restart;
                            acked.push(token);
                        }
                        Err(StoreError::Backend(_)) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (acked, refused, ok_after_restart)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    pg.stop_server();
    std::thread::sleep(Duration::from_millis(200));
    pg.start_server();
    back.store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut refused, mut recovered) = (Vec::new(), 0, 0);
    for w in writers {
        let (a, r, ok) = rt.block_on(w).expect("writer");
        acked.extend(a);
        refused += r;
        recovered += usize::from(ok);
    }
    eprintln!(
        "under load: {} writes acknowledged, {refused} refused during the restart, {recovered} of 6 writers succeeded again after it",
        acked.len()
    );
    assert!(refused > 0, "the restart cost no request: was it one?");
    assert_eq!(recovered, 6);
    let missing: Vec<String> = rt
        .block_on(store::blocking(&store, move |s| {
            let mut missing = Vec::new();
            for t in acked {
                if s.token_account(&t, 1)?.is_none() {
                    missing.push(t);
                }
            }
            Ok(missing)
        }))
        .expect("check");
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// Fill an SQLite store with something of everything.
fn fill(s: &SqliteStore) {
    let quota = Quota {
        messages: 100,
        bytes: 8 << 20,
    };
    for i in 0..40 {
        let id = format!("user{i:02}");
        let numbers = vec![format!("10{i:02}"), format!("번호{i}")];
        s.add_account(&id, &format!("$argon2id$h{i}"), &numbers, 1000 + i)
            .expect("account");
        s.insert_token(&format!("tok{i}"), &id, 5, 1_000_000 + i)
            .expect("token");
    }
    s.add_number("user01", "extra", 7).expect("number");
    s.set_forward("1000", Some(&fwd(ForwardWhen::Always, "1001")), 9)
        .expect("fwd");
    s.set_forward("번호2", Some(&fwd(ForwardWhen::NoAnswer, "extra")), 9)
        .expect("fwd");
    s.set_forward("1003", Some(&fwd(ForwardWhen::Unregistered, "1004")), 9)
        .expect("fwd");
    s.set_forward("1005", Some(&fwd(ForwardWhen::Busy, "1006")), 9)
        .expect("fwd");
    s.set_dnd("1007", true).expect("dnd");
    s.set_dnd("번호8", true).expect("dnd");
    s.set_admin("user00", true).expect("admin");
    s.set_password("user09", "$argon2id$new", Some("tok9"))
        .expect("pw");
    s.add_invite("inv-used", 10).expect("invite");
    s.add_invite("inv-free", 11).expect("invite");
    s.sign_up("signed", "h", &["가입".into()], 12, Some("inv-used"))
        .expect("sign up");
    s.remove_account_holding("user39", i64::MAX).expect("hold");
    s.remove_number("user38", "번호38", Some(99_999))
        .expect("hold");
    for i in 0..120u32 {
        let to = format!("10{:02}", i % 30);
        let body: Vec<u8> = (0..(i * 97 % 5000)).map(|b| (b ^ i) as u8).collect();
        let kind = if i % 3 == 0 {
            MailKind::Voice
        } else {
            MailKind::Text
        };
        s.store_mail(
            &NewMail {
                to,
                from: format!("from{i}"),
                kind,
                body,
                at_ms: 2000 + i64::from(i),
            },
            quota,
        )
        .expect("mail");
    }
    // The newest message delivered: its id must not come back.
    let last = s.all_mail().expect("mail").last().expect("some").clone();
    assert!(s.delete_mail(&last.account, last.id).expect("ack"));
    // Call history: 30 calls between pairs of accounts, both views kept;
    // the oldest of user02's trimmed by the retention, so the ids have a gap.
    let keep = store::CallRetention {
        per_account: 5,
        since_ms: 0,
    };
    for at in 0..30i64 {
        let a = format!("user{:02}", at % 4);
        let b = format!("user{:02}", 4 + at % 3);
        let mut theirs = call(&b, false, "1000", at);
        theirs.own_number = "1004".into();
        s.add_calls(&[call(&a, true, "1004", at), theirs], keep)
            .expect("calls");
    }
}

/// `migrate --from-sqlite`: into an empty database, refused into a full
/// one unless asked, every row and a sample of bodies equal; the copy
/// then works as a store; and through the real command.
#[test]
fn migrate_from_sqlite_round_trip() {
    let pg = PgCluster::start();
    pg.create_db("copy");
    let dir = std::env::temp_dir().join(format!("keyline-migrate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("directory.sqlite");
    let src = SqliteStore::open(&file).expect("sqlite");
    fill(&src);
    let dst = PostgresStore::open(&pg.url("copy"), 2).expect("pg");

    let t = Instant::now();
    let report = copy::sqlite_to_postgres(&src, &dst, false).expect("copy");
    eprintln!("copied {} in {} ms", report.counts, t.elapsed().as_millis());
    let want = copy::dump_sqlite(&src).expect("dump");
    assert_eq!(report.counts, want.counts());
    assert_eq!(report.counts.accounts, 40); // 40 made, one deleted, one signed up
    assert_eq!(report.counts.mail, 119);
    assert_eq!(report.counts.held_numbers, 3);
    assert_eq!(report.counts.forwards, 4);
    assert_eq!(report.counts.calls, 4 * 5 + 3 * 5);
    assert_eq!(report.bodies_compared, 64);
    let got = copy::dump_postgres(&dst).expect("dump");
    assert_eq!(got.first_difference(&want), None);
    assert_eq!(got, want);

    // The copy answers as the original does, through the trait.
    assert_eq!(src.accounts().expect("a"), dst.accounts().expect("a"));
    assert_eq!(src.numbers().expect("n"), dst.numbers().expect("n"));
    assert_eq!(src.invites().expect("i"), dst.invites().expect("i"));
    assert_eq!(src.all_mail().expect("m"), dst.all_mail().expect("m"));
    for a in ["user00", "user03", "user05", "user06"] {
        let mine = src.calls(a, 0, 100).expect("calls");
        assert!(!mine.is_empty(), "{a}");
        assert_eq!(mine, dst.calls(a, 0, 100).expect("calls"), "{a}");
    }
    for m in src.all_mail().expect("m") {
        assert_eq!(
            src.mail_body(m.id).expect("b"),
            dst.mail_body(m.id).expect("b")
        );
    }
    assert_eq!(
        dst.token_account("tok3", 10).expect("t").as_deref(),
        Some("user03")
    );
    assert_eq!(dst.token_account("tok8", 2_000_000).expect("t"), None);
    assert_eq!(
        dst.number_status("번호39", 5).expect("s"),
        NumberStatus::Held { until_ms: i64::MAX }
    );
    // New messages get new ids, after the delivered one's.
    let next = dst
        .store_mail(
            &text("1001", b"new"),
            Quota {
                messages: 100,
                bytes: 1 << 20,
            },
        )
        .expect("new mail");
    assert!(
        next as i64 > want.last_mail_id,
        "{next} vs {}",
        want.last_mail_id
    );
    // A new call gets a new id after the copied ones, and is kept.
    dst.add_calls(
        &[call("user10", true, "1000", 100)],
        store::CallRetention {
            per_account: 5,
            since_ms: 0,
        },
    )
    .expect("a call after the copy");
    let after = copy::dump_postgres(&dst).expect("dump");
    let newest = after.calls.last().expect("calls");
    assert_eq!(newest.account, "user10");
    assert!(newest.id > want.calls.last().expect("calls").id);

    // Not into a database that holds data, unless asked.
    let e = copy::sqlite_to_postgres(&src, &dst, false).expect_err("not empty");
    assert!(format!("{e:#}").contains("--replace"), "{e:#}");
    let r = copy::sqlite_to_postgres(&src, &dst, true).expect("replace");
    assert!(r.replaced_rows > 0);
    assert_eq!(copy::dump_postgres(&dst).expect("dump"), want);

    // The command: counts printed, refusal without --replace.
    pg.create_db("cmd");
    let conf = dir.join("directory.toml");
    std::fs::write(
        &conf,
        format!("[store]\npostgres = \"{}\"\n", pg.url("cmd")),
    )
    .expect("config");
    drop(src);
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyline-directory"))
            .args(["migrate", "--from-sqlite"])
            .arg(&file)
            .arg("--config")
            .arg(&conf)
            .args(extra)
            .env_remove("CONFIGURATION_DIRECTORY")
            .output()
            .expect("running keyline-directory migrate")
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("accounts          40"), "{stdout}");
    assert!(stdout.contains("messages          119"), "{stdout}");
    assert!(stdout.contains("calls in history  35"), "{stdout}");
    assert!(stdout.contains("64 message bodies compared"), "{stdout}");
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--replace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--replace", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["counts"]["mail"], 119);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pool from many threads at once, fewer connections than threads.
#[test]
fn postgres_pool_serves_more_threads_than_connections() {
    let pg = PgCluster::start();
    pg.create_db("pool");
    let s = PostgresStore::open(&pg.url("pool"), 3).expect("open");
    s.add_account("a", "h", &["1".into()], 1).expect("a");
    std::thread::scope(|sc| {
        for _ in 0..12 {
            sc.spawn(|| {
                for _ in 0..50 {
                    assert!(s.account("a").expect("q").is_some());
                }
            });
        }
    });
    assert!(s.open_connections() <= 3, "{}", s.open_connections());
    drop(s);
    // A missing database is an error at open, naming it.
    let e = PostgresStore::open(&pg.url("nosuchdb"), 1).expect_err("no db");
    assert!(format!("{e:#}").contains("nosuchdb"), "{e:#}");

    // Versioned schema: opening again changes nothing; several nodes
    // starting at once apply it once; a newer schema is refused.
    let version = |db: &str| -> i32 {
        let mut c = postgres::Client::connect(&pg.url(db), postgres::NoTls).expect("connect");
        c.query_one("SELECT version FROM schema_version", &[])
            .expect("version")
            .get(0)
    };
    assert_eq!(version("pool"), store::POSTGRES_MIGRATIONS.len() as i32);
    let again = PostgresStore::open(&pg.url("pool"), 1).expect("again");
    assert!(again.account("a").expect("q").is_some());
    pg.create_db("race");
    std::thread::scope(|sc| {
        for _ in 0..6 {
            sc.spawn(|| PostgresStore::open(&pg.url("race"), 1).expect("open at once"));
        }
    });
    assert_eq!(version("race"), store::POSTGRES_MIGRATIONS.len() as i32);
    let mut c = postgres::Client::connect(&pg.url("race"), postgres::NoTls).expect("connect");
    c.batch_execute("UPDATE schema_version SET version = 99")
        .expect("newer");
    let e = PostgresStore::open(&pg.url("race"), 1).expect_err("newer schema");
    assert!(
        format!("{e:#}").contains("newer than this program"),
        "{e:#}"
    );
}

/// The real directory on PostgreSQL: accounts made by the command go to
/// the database (no SQLite file appears), a terminal logs in and leaves
/// mail, and a PostgreSQL restart costs a resume a storage error that the
/// next try does not get.
#[test]
fn a_directory_on_postgres_serves_and_survives_a_restart() {
    use keyline_directory::client::DirClient;
    use keyline_proto::dir::ErrorCode;
    use keyline_tests::{bin, jnum, jstr, wait_for, Daemon, Scratch};
    use std::io::Write;

    const PW: &str = "correct horse battery";
    let mut pg = PgCluster::start();
    pg.create_db("serve");
    let scratch = Scratch::new("dirpg");
    let conf_dir = scratch.join("etc");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let conf = conf_dir.join("directory.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\npostgres = \"{}\"\npool_size = 4\n[web]\nenabled = false\n",
            pg.url("serve")
        ),
    )
    .expect("config");
    let conf_s = conf.to_string_lossy().to_string();
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", "127.0.0.1:0", "--config", &conf_s],
    )
    .expect("start the directory");
    let addr: std::net::SocketAddr =
        wait_for("the directory to start", Duration::from_secs(15), || {
            jstr(&d.json(&["status"]).ok()?, &["listen"])?.parse().ok()
        });
    for (id, number) in [("alice", "2001"), ("bob", "2002")] {
        let mut child = std::process::Command::new(&d.bin)
            .arg("--state")
            .arg(&d.state)
            .args(["user", "add", id, "--number", number])
            .env("CONFIGURATION_DIRECTORY", &conf_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("user add");
        writeln!(child.stdin.take().expect("stdin"), "{PW}").expect("password");
        let out = child.wait_with_output().expect("user add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !d.state.join("directory.sqlite").exists(),
        "the accounts went to an SQLite file"
    );
    let users = d.json(&["users"]).expect("users");
    assert_eq!(users["users"].as_array().map(Vec::len), Some(2), "{users}");

    // The harness's PostgreSQL calls block: the client runs on a runtime
    // of its own, entered only for its own steps.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let id = keyline_net::Identity::generate("t").expect("identity");
    let ep = rt
        .block_on(async { keyline_net::make_endpoint("127.0.0.1:0".parse().expect("addr"), &id) })
        .expect("ep");
    let (s, _c) = rt.block_on(async {
        let (c, ev) = DirClient::connect(&ep, &id, addr, None)
            .await
            .expect("connect");
        let s = c.login("bob", PW).await.expect("login");
        c.leave_mail(
            &keyline_tests::number("2001"),
            MailKind::Text,
            b"hello alice",
            None,
        )
        .await
        .expect("mail");
        (s, (c, ev))
    });
    assert_eq!(
        jnum(&d.json(&["status"]).expect("status"), &["mail_waiting"]),
        Some(1.0)
    );

    pg.stop_server();
    let (c2, _ev2) = rt.block_on(async {
        let (c2, ev2) = DirClient::connect(&ep, &id, addr, None)
            .await
            .expect("connect");
        let e = c2.resume(&s.token).await.expect_err("no PostgreSQL");
        assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
        eprintln!("resume during the outage: {e}");
        (c2, ev2)
    });
    pg.start_server();
    let r = rt
        .block_on(c2.resume(&s.token))
        .expect("resume after the restart");
    assert_eq!(r.account, "bob");
    let check = PostgresStore::open(&pg.url("serve"), 1).expect("open");
    let mail = check.all_mail().expect("mail");
    assert_eq!(mail.len(), 1);
    assert_eq!(
        check.mail_body(mail[0].id).expect("body").as_deref(),
        Some(&b"hello alice"[..])
    );
    drop(d);
}
