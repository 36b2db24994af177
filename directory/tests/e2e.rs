//! End-to-end tests of the real `keyline-directory` binary with the client
//! library on real QUIC, loopback (127.0.0.1) only: logins and rate
//! limits, calls by non-Latin numbers with direct media, the caller's
//! asserted number, forwarding and redirects, mail across a `kill -9`,
//! binding expiry and migration, look-up only, and the relay rules.
//!
//! Run after `cargo build --workspace --bins` (as `make test` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyline_directory::client::{
    accept_media, CallError, CallOptions, DirClient, Event, MediaPlan, Progress,
};
use keyline_net::Identity;
use keyline_proto::dir::{EndReason, ErrorCode, ForwardRule, ForwardWhen, MailKind};
use keyline_tests::{bin, jnum, jstr, number as n, wait_for, Daemon, Scratch};
use serde_json::Value;
use tokio::sync::mpsc;

const PW: &str = "correct horse battery";

fn start_dir(scratch: &Scratch, name: &str, extra: &[&str]) -> (Daemon, SocketAddr) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start_dir_args(scratch, name, &args)
}

fn start_dir_args(scratch: &Scratch, name: &str, args: &[&str]) -> (Daemon, SocketAddr) {
    let d = Daemon::start(None, bin("keyline-directory"), &scratch.join(name), args).unwrap();
    let addr = wait_for("the directory to start", Duration::from_secs(15), || {
        jstr(&d.json(&["status"]).ok()?, &["listen"])?.parse().ok()
    });
    (d, addr)
}

fn add_user(d: &Daemon, id: &str, numbers: &[&str]) {
    let mut cmd = Command::new(&d.bin);
    cmd.arg("--state").arg(&d.state).args(["user", "add", id]);
    for n in numbers {
        cmd.args(["--number", n]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PW}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status(d: &Daemon) -> Value {
    d.json(&["status"]).unwrap()
}

/// One process's endpoint and identity.
struct Ep {
    ep: quinn::Endpoint,
    id: Identity,
}

impl Ep {
    fn new(name: &str) -> Ep {
        let id = Identity::generate(name).unwrap();
        let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        Ep { ep, id }
    }

    fn addr(&self) -> SocketAddr {
        self.ep.local_addr().unwrap()
    }

    async fn connect(&self, dir: SocketAddr) -> (DirClient, mpsc::Receiver<Event>) {
        DirClient::connect(&self.ep, &self.id, dir, None)
            .await
            .expect("connect to the directory")
    }

    /// Connect, log in and register every number of `account`.
    async fn online(&self, dir: SocketAddr, account: &str) -> (DirClient, mpsc::Receiver<Event>) {
        let (c, ev) = self.connect(dir).await;
        c.login(account, PW).await.expect("login");
        let r = c.register(&[], vec![self.addr()]).await.expect("register");
        assert_eq!(r.observed, self.addr(), "the directory reports our address");
        (c, ev)
    }
}

async fn next_event(
    rx: &mut mpsc::Receiver<Event>,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

async fn ring(rx: &mut mpsc::Receiver<Event>) -> keyline_directory::client::IncomingCall {
    match next_event(rx, "a ring", |e| matches!(e, Event::Ring(_))).await {
        Event::Ring(r) => r,
        _ => unreachable!(),
    }
}

/// Accept media connections on `ep` until one matches `plan`, refusing
/// those `refuse` names.
async fn accept_one(
    ep: &quinn::Endpoint,
    plan: &MediaPlan,
    refuse: Option<SocketAddr>,
) -> quinn::Connection {
    loop {
        let incoming = tokio::time::timeout(Duration::from_secs(10), ep.accept())
            .await
            .expect("a media connection within 10 s")
            .expect("endpoint open");
        if Some(incoming.remote_address()) == refuse {
            incoming.refuse();
            continue;
        }
        let Ok(conn) = incoming.await else { continue };
        if let Ok(c) = accept_media(conn, plan).await {
            return c;
        }
    }
}

/// Datagrams both ways, each answered.
async fn exchange(a: &quinn::Connection, b: &quinn::Connection, n: usize) {
    for i in 0..n {
        let ping = format!("ping {i}");
        a.send_datagram(bytes::Bytes::from(ping.clone())).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.read_datagram())
            .await
            .expect("datagram in time")
            .expect("datagram");
        assert_eq!(&got[..], ping.as_bytes());
        let pong = format!("pong {i}");
        b.send_datagram(bytes::Bytes::from(pong.clone())).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.read_datagram())
            .await
            .expect("datagram in time")
            .expect("datagram");
        assert_eq!(&got[..], pong.as_bytes());
    }
}

/// Alice calls Bob; Bob answers; the media connection is made. Gives both
/// ends' media connections and whether it was relayed.
async fn call_and_connect(
    alice: (&Ep, &DirClient),
    bob: (&Ep, &DirClient, &mut mpsc::Receiver<Event>),
    number: &str,
    refuse_direct: bool,
) -> (
    Result<keyline_directory::client::MediaLink, keyline_directory::client::MediaError>,
    Option<quinn::Connection>,
) {
    let (a_ep, a) = alice;
    let (b_ep, b, b_ev) = bob;
    let caller = a.clone();
    let call = tokio::spawn({
        let number = n(number);
        async move { caller.call(&number, CallOptions::default()).await }
    });
    let r = ring(b_ev).await;
    let plan = b.answer(r.call).await.expect("answer");
    assert!(!plan.dial);
    assert_eq!(plan.peer_fp, a_ep.id.fingerprint);
    let connected = call.await.unwrap().expect("connected");
    assert_eq!(connected.plan.peer_fp, b_ep.id.fingerprint);
    assert_eq!(connected.plan.token, plan.token);
    let refuse = refuse_direct.then(|| a_ep.addr());
    let bep = b_ep.ep.clone();
    let bplan = plan.clone();
    let acceptor = tokio::spawn(async move { accept_one(&bep, &bplan, refuse).await });
    let link = a
        .dial_media(&a_ep.ep, &a_ep.id, &connected.plan, None)
        .await;
    let b_conn = if link.is_ok() {
        Some(
            tokio::time::timeout(Duration::from_secs(10), acceptor)
                .await
                .unwrap()
                .unwrap(),
        )
    } else {
        acceptor.abort();
        None
    };
    (link, b_conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_wrong_password_rate_limit_resume_and_password_change() {
    let scratch = Scratch::new("dlogin");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "alice", &["+1 555 0100"]);
    let ep = Ep::new("alice");
    let (c, _ev) = ep.connect(addr).await;
    let s = c.login("alice", PW).await.expect("login");
    assert_eq!(s.numbers, vec!["+15550100"]);
    assert_eq!(s.token.len(), 64);

    // The token resumes the session on a new connection.
    let (c3, _ev3) = ep.connect(addr).await;
    let r = c3.resume(&s.token).await.expect("resume");
    assert_eq!(r.account, "alice");
    let e = c3.resume("0000").await.expect_err("bad token");
    assert_eq!(e.code(), Some(ErrorCode::BadToken));

    // Password change from the client; the other session is ended.
    let e = c
        .change_password("not the password", "a new password")
        .await
        .expect_err("old wrong");
    assert_eq!(e.code(), Some(ErrorCode::BadCredentials));
    let e = c.change_password(PW, "short").await.expect_err("weak");
    assert_eq!(e.code(), Some(ErrorCode::WeakPassword));
    c.change_password(PW, "a new password")
        .await
        .expect("changed");
    tokio::time::timeout(Duration::from_secs(3), c3.connection().closed())
        .await
        .expect("the other session is logged out");
    let (c4, _ev4) = ep.connect(addr).await;
    c4.login("alice", "a new password")
        .await
        .expect("new password");
    let e = c4.login("alice", PW).await.expect_err("old password");
    assert_eq!(e.code(), Some(ErrorCode::BadCredentials));

    // Wrong passwords: refused, then rate-limited.
    let (c2, _ev2) = ep.connect(addr).await;
    let e = c2
        .login("alice", "wrong password")
        .await
        .expect_err("wrong");
    assert_eq!(e.code(), Some(ErrorCode::BadCredentials), "{e}");
    assert!(e.to_string().contains("wrong account or password"), "{e}");
    let e = c2.login("nobody", PW).await.expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::BadCredentials));
    for _ in 0..2 {
        let _ = c2.login("alice", "wrong password").await;
    }
    // The fifth failure in a row (the old password above was the first) locks.
    let e = c2
        .login("alice", "wrong password")
        .await
        .expect_err("locked");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    assert!(e.to_string().contains("too many failed logins"), "{e}");
    // Even the right password is refused while locked, with a retry time.
    match c2
        .login("alice", "a new password")
        .await
        .expect_err("still locked")
    {
        keyline_directory::client::ClientError::Refused {
            code: ErrorCode::RateLimited,
            retry_after: Some(t),
            message,
        } => {
            assert!(
                t > Duration::from_secs(20) && t <= Duration::from_secs(30),
                "{t:?}"
            );
            assert!(message.contains("try again in"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Locked out from this address only.
    let users = d.json(&["users"]).unwrap();
    assert!(users["users"][0]["locked_for_s"].is_null(), "{users}");
    assert_eq!(
        users["users"][0]["locked_from"][0]["address"].as_str(),
        Some("127.0.0.1"),
        "{users}"
    );
}

/// 100 logins with a wrong password for one account from one address,
/// all at once: the limiter reserves an attempt before the password is
/// checked, so no more passwords are checked than it allows (5), not one
/// per login that passed the check before the first failure was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_logins_check_no_more_passwords_than_the_limit() {
    let scratch = Scratch::new("dconc");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "alice", &["1001"]);
    let ep = Ep::new("mallory");
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(ep.connect(addr).await);
    }
    let logins: Vec<_> = clients
        .iter()
        .map(|(c, _)| {
            let c = c.clone();
            tokio::spawn(async move { c.login("alice", "wrong password").await })
        })
        .collect();
    let mut codes = std::collections::HashMap::new();
    for l in logins {
        let e = l.await.unwrap().expect_err("a wrong password");
        *codes.entry(format!("{:?}", e.code())).or_insert(0) += 1;
    }
    let checks = jnum(&status(&d), &["logins", "password_checks"]).unwrap();
    assert_eq!(checks, 5.0, "passwords checked; answers {codes:?}");
    assert_eq!(codes.get("Some(BadCredentials)"), Some(&4), "{codes:?}");
    assert_eq!(codes.get("Some(RateLimited)"), Some(&96), "{codes:?}");
    // Still locked: the right password from this address is refused
    // without a check.
    let e = clients[0].0.login("alice", PW).await.expect_err("locked");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    assert_eq!(jnum(&status(&d), &["logins", "password_checks"]), Some(5.0));
}

/// More logins at once than the hashing threads and their queue hold:
/// the rest are told at once that the directory is busy, with a retry
/// time, and that counts as no failure (every account logs in on its
/// retry); registrations are served all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_is_turned_away_busy_and_logs_in_on_retry() {
    let scratch = Scratch::new("dbusy");
    let cfg = scratch.join("dir.toml");
    std::fs::write(&cfg, "[login]\nhashing_threads = 1\nhashing_queue = 1\n").unwrap();
    let cfg_s = cfg.display().to_string();
    let (d, addr) = start_dir(&scratch, "dir", &["--config", &cfg_s]);
    let ids: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        add_user(&d, id, &[&format!("30{i:02}")]);
    }
    add_user(&d, "phone", &["4000"]);
    let st = status(&d);
    assert_eq!(jnum(&st, &["logins", "hashing_threads"]), Some(1.0), "{st}");

    // A phone already logged in keeps registering through the storm.
    let phone_ep = Ep::new("phone");
    let (phone, _pev) = phone_ep.connect(addr).await;
    phone.login("phone", PW).await.unwrap();
    phone.register(&[n("4000")], Vec::new()).await.unwrap();

    let ep = Ep::new("storm");
    let mut clients = Vec::new();
    for _ in &ids {
        clients.push(ep.connect(addr).await);
    }
    let logins: Vec<_> = clients
        .iter()
        .zip(&ids)
        .map(|((c, _), id)| {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.login(&id, PW).await })
        })
        .collect();
    let registering = {
        let phone = phone.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                phone.register(&[n("4000")], Vec::new()).await?;
            }
            Ok::<_, keyline_directory::client::ClientError>(())
        })
    };
    let mut busy = Vec::new();
    for (i, l) in logins.into_iter().enumerate() {
        match l.await.unwrap() {
            Ok(_) => {}
            Err(keyline_directory::client::ClientError::Refused {
                code: ErrorCode::RateLimited,
                retry_after: Some(t),
                message,
            }) => {
                assert!(message.contains("busy"), "{message}");
                assert_eq!(t, Duration::from_secs(1));
                busy.push(i);
            }
            Err(e) => panic!("login {i}: {e}"),
        }
    }
    registering
        .await
        .unwrap()
        .expect("registrations during the storm");
    // One thread and one place in the queue: some are turned away, and
    // at least one gets in.
    assert!(
        !busy.is_empty() && busy.len() < ids.len(),
        "one thread and one place in the queue: {busy:?}"
    );
    let st = status(&d);
    assert_eq!(
        jnum(&st, &["logins", "turned_away_busy"]),
        Some(busy.len() as f64),
        "{st}"
    );
    // No failure was recorded: each busy account logs in on its retry.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for &i in &busy {
        clients[i]
            .0
            .login(&ids[i], PW)
            .await
            .expect("logs in on retry");
    }
    let users = d.json(&["users"]).unwrap();
    for u in users["users"].as_array().unwrap() {
        assert!(
            u["locked_from"].as_array().is_none_or(|a| a.is_empty()),
            "{u}"
        );
    }
}

/// Wrong passwords from one address lock that address out of the account,
/// not the account's owner logging in from another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_one_address_do_not_lock_the_owner_out() {
    let scratch = Scratch::new("dlockout");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "alice", &["1001"]);
    let mallory_id = Identity::generate("mallory").unwrap();
    let mallory_ep =
        keyline_net::make_endpoint("127.0.0.2:0".parse().unwrap(), &mallory_id).unwrap();
    let (m, _mev) = DirClient::connect(&mallory_ep, &mallory_id, addr, None)
        .await
        .expect("connect from 127.0.0.2");
    let mut limited = false;
    for _ in 0..10 {
        let e = m.login("alice", "guess").await.expect_err("wrong");
        limited |= e.code() == Some(ErrorCode::RateLimited);
    }
    assert!(limited, "the guesses are rate-limited");
    let e = m.login("alice", PW).await.expect_err("still locked");
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    assert!(e.to_string().contains("from your address"), "{e}");

    // The owner, from 127.0.0.1, gets in.
    let alice = Ep::new("alice");
    let (a, _aev) = alice.connect(addr).await;
    let s = a.login("alice", PW).await.expect("the owner logs in");
    assert_eq!(s.numbers, vec!["1001"]);
    let users = d.json(&["users"]).unwrap();
    assert!(users["users"][0]["locked_for_s"].is_null(), "{users}");
    assert_eq!(
        users["users"][0]["locked_from"][0]["address"].as_str(),
        Some("127.0.0.2"),
        "{users}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_by_korean_number_connects_directly_with_the_asserted_number() {
    let scratch = Scratch::new("dcall");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "alice", &["아리랑", "2001"]);
    add_user(&d, "bob", &["김민준"]);
    let (a_ep, b_ep) = (Ep::new("alice"), Ep::new("bob"));
    let (a, _a_ev) = a_ep.online(addr, "alice").await;
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    let b_json = d.json(&["bindings"]).unwrap();
    assert_eq!(b_json["bindings"].as_array().unwrap().len(), 3, "{b_json}");

    // A caller cannot show someone else's number.
    let e = a
        .call(
            &n("김민준"),
            CallOptions {
                from: Some("김민준".into()),
                ..CallOptions::default()
            },
        )
        .await
        .expect_err("not hers");
    assert_eq!(e.code(), Some(ErrorCode::NotYourNumber), "{e}");
    assert!(e.to_string().contains("only show its own"), "{e}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_ev.recv())
            .await
            .is_err(),
        "the callee saw nothing"
    );

    // She may pick her other number.
    let caller = a.clone();
    let call = tokio::spawn(async move {
        caller
            .call(
                &n("김 민준"),
                CallOptions {
                    from: Some("2001".into()),
                    ..CallOptions::default()
                },
            )
            .await
    });
    let r = ring(&mut b_ev).await;
    assert_eq!(r.from, "2001");
    b.reject(r.call).await.expect("reject");
    let e = call.await.unwrap().expect_err("rejected");
    assert!(
        matches!(
            e,
            CallError::Ended {
                reason: EndReason::Rejected,
                ..
            }
        ),
        "{e}"
    );

    // By default the first registered number is shown; the callee answers
    // and the two connect end to end.
    let t0 = Instant::now();
    let (link, b_conn) =
        call_and_connect((&a_ep, &a), (&b_ep, &b, &mut b_ev), "김민준", false).await;
    let link = link.expect("direct media");
    assert!(!link.relayed);
    assert_eq!(link.remote, b_ep.addr());
    println!("call set-up to media on loopback: {:?}", t0.elapsed());
    let b_conn = b_conn.unwrap();
    exchange(&link.conn, &b_conn, 20).await;
    let st = status(&d);
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");
    assert_eq!(jnum(&st, &["calls_active"]), Some(1.0), "{st}");

    // Hang up: the other end is told.
    let calls = d.json(&["calls"]).unwrap();
    let id = calls["calls"][0]["id"].as_u64().unwrap();
    assert_eq!(calls["calls"][0]["from"], "아리랑");
    a.hangup(id).await.unwrap();
    match next_event(&mut b_ev, "ended", |e| matches!(e, Event::Ended { .. })).await {
        Event::Ended { reason, .. } => assert_eq!(reason, EndReason::Hangup),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_redirects_loops_and_unreachable() {
    let scratch = Scratch::new("dfwd");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    for (id, n) in [
        ("alice", "alice"),
        ("bob", "bob"),
        ("carol", "carol"),
        ("dave", "dave"),
        ("erin", "erin"),
    ] {
        add_user(&d, id, &[n]);
    }
    add_user(&d, "loops", &["x", "y"]);
    let (a_ep, b_ep, dv_ep) = (Ep::new("a"), Ep::new("b"), Ep::new("d"));
    let (a, _a_ev) = a_ep.online(addr, "alice").await;
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    let (dv, mut d_ev) = dv_ep.online(addr, "dave").await;

    // Unreachable: immediate, with the offer of mail.
    let t = Instant::now();
    let e = a
        .call(&n("erin"), CallOptions::default())
        .await
        .expect_err("offline");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    match &e {
        CallError::Failed {
            code,
            mail,
            message,
            ..
        } => {
            assert_eq!(*code, ErrorCode::Unreachable);
            assert!(*mail);
            assert!(message.contains("not registered"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = a
        .call(&n("nobody-at-all"), CallOptions::default())
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownNumber));

    // Carol, while her machine is off, forwards to Bob (set by herself).
    {
        let c_ep = Ep::new("c");
        let (c, _ev) = c_ep.connect(addr).await;
        c.login("carol", PW).await.unwrap();
        let e = c
            .set_forward(
                &n("bob"),
                Some(ForwardRule::new(ForwardWhen::Always, "carol")),
            )
            .await
            .expect_err("not her number");
        assert_eq!(e.code(), Some(ErrorCode::NotYourNumber));
        c.set_forward(
            &n("carol"),
            Some(ForwardRule::new(ForwardWhen::Unregistered, "bob")),
        )
        .await
        .expect("forward");
        c.close();
    }
    let caller = a.clone();
    let (ptx, mut prx) = mpsc::channel(8);
    let call = tokio::spawn(async move {
        caller
            .call(
                &n("carol"),
                CallOptions {
                    progress: Some(ptx),
                    ..CallOptions::default()
                },
            )
            .await
    });
    let r = ring(&mut b_ev).await;
    assert_eq!(
        (r.number.as_str(), r.dialled.as_str(), r.from.as_str()),
        ("bob", "carol", "alice")
    );
    assert_eq!(r.via, vec!["carol"]);
    assert!(matches!(prx.recv().await, Some(Progress::Ringing { number, .. }) if number == "bob"));
    b.answer(r.call).await.unwrap();
    let c = call.await.unwrap().expect("connected via forward");
    assert_eq!((c.number.as_str(), c.dialled.as_str()), ("bob", "carol"));
    a.hangup(c.call).await.unwrap();

    // OFFICE/EXT rings the office with the extension to route.
    let caller = a.clone();
    let call =
        tokio::spawn(async move { caller.call(&n("Bob / 202"), CallOptions::default()).await });
    let r = ring(&mut b_ev).await;
    assert_eq!(
        (r.number.as_str(), r.ext.as_deref(), r.dialled.as_str()),
        ("bob", Some("202"), "bob/202")
    );
    b.busy(r.call).await.unwrap();
    let e = call.await.unwrap().expect_err("busy");
    assert!(
        matches!(
            e,
            CallError::Ended {
                reason: EndReason::Busy,
                ..
            }
        ),
        "{e}"
    );

    // Client-side redirect: Bob sends the caller to Dave, who answers.
    let caller = a.clone();
    let call = tokio::spawn(async move { caller.call(&n("bob"), CallOptions::default()).await });
    let r = ring(&mut b_ev).await;
    b.redirect(r.call, &n("dave")).await.expect("redirect");
    let r = ring(&mut d_ev).await;
    assert_eq!(r.from, "alice");
    dv.answer(r.call).await.unwrap();
    let c = call.await.unwrap().expect("redirect followed");
    assert_eq!(c.number, "dave");
    assert_eq!(c.redirected_from, vec!["bob"]);
    assert_eq!(c.plan.peer_fp, dv_ep.id.fingerprint);
    a.hangup(c.call).await.unwrap();

    // Client-side loop: Bob -> Dave -> Bob.
    let caller = a.clone();
    let call = tokio::spawn(async move { caller.call(&n("bob"), CallOptions::default()).await });
    let r = ring(&mut b_ev).await;
    b.redirect(r.call, &n("dave")).await.unwrap();
    let r = ring(&mut d_ev).await;
    dv.redirect(r.call, &n("bob")).await.unwrap();
    let e = call.await.unwrap().expect_err("loop");
    assert!(
        matches!(&e, CallError::RedirectLoop { chain } if chain == &vec!["bob".to_string(), "dave".into(), "bob".into()]),
        "{e}"
    );
    assert!(e.to_string().contains("bob -> dave -> bob"), "{e}");

    // Server-side loop set by the admin: a clear error, nothing rings.
    for (from, to) in [("x", "y"), ("y", "x")] {
        let out = d.ctl(&["forward", "set", from, "--to", to]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fw = d.json(&["forward", "list"]).unwrap();
    assert_eq!(fw["forwards"].as_array().unwrap().len(), 3, "{fw}");
    let e = a
        .call(&n("x"), CallOptions::default())
        .await
        .expect_err("loop");
    assert_eq!(e.code(), Some(ErrorCode::ForwardLoop), "{e}");
    assert!(
        e.to_string().contains("forwarding loop: x -> y -> x"),
        "{e}"
    );
    let out = d.ctl(&["forward", "rm", "y"]);
    assert!(out.status.success());
    let e = a
        .call(&n("x"), CallOptions::default())
        .await
        .expect_err("y offline");
    assert_eq!(e.code(), Some(ErrorCode::Unreachable), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_kept_across_kill_9_and_deleted_only_after_ack() {
    let scratch = Scratch::new("dmail");
    let cfg = scratch.join("dir.toml");
    std::fs::write(
        &cfg,
        "[mail]\nquota_messages = 3\nmax_voice_bytes = 100000\n",
    )
    .unwrap();
    let cfg_s = cfg.display().to_string();
    let (mut d, addr) = start_dir(&scratch, "dir", &["--config", &cfg_s]);
    add_user(&d, "alice", &["alice"]);
    add_user(&d, "bob", &["бо б"]);
    let a_ep = Ep::new("a");
    let (a, _ev) = a_ep.connect(addr).await;
    a.login("alice", PW).await.unwrap();
    let mut voice = b"OggS".to_vec();
    voice.extend((0..50_000u32).map(|i| (i % 251) as u8));
    let e = a
        .leave_mail(&n("бо б"), MailKind::Voice, b"RIFF....", None)
        .await
        .expect_err("not ogg");
    assert_eq!(e.code(), Some(ErrorCode::BadMail), "{e}");
    assert!(e.to_string().contains("OggS"), "{e}");
    let e = a
        .leave_mail(&n("бо б"), MailKind::Voice, &vec![b'O'; 100_001], None)
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Some(ErrorCode::TooLarge), "{e}");
    assert!(e.to_string().contains("at most 100000"), "{e}");
    let e = a
        .leave_mail(&n("бо б"), MailKind::Text, b"hi", Some(&n("бо б")))
        .await
        .expect_err("not her number");
    assert_eq!(e.code(), Some(ErrorCode::NotYourNumber), "{e}");
    let v = a
        .leave_mail(&n("БО Б"), MailKind::Voice, &voice, None)
        .await
        .expect("voice");
    let t = a
        .leave_mail(&n("бо б"), MailKind::Text, "перезвони мне".as_bytes(), None)
        .await
        .expect("text");
    let t2 = a
        .leave_mail(&n("бо б"), MailKind::Text, b"again", None)
        .await
        .expect("text");
    let e = a
        .leave_mail(&n("бо б"), MailKind::Text, b"one too many", None)
        .await
        .expect_err("quota");
    assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded), "{e}");
    assert!(e.to_string().contains("full"), "{e}");
    let e = a
        .leave_mail(&n("nobody"), MailKind::Text, b"x", None)
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownNumber), "{e}");
    assert_eq!(
        d.json(&["mail", "list"]).unwrap()["mail"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // kill -9 and restart on the same state and port.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(d);
    let listen = addr.to_string();
    let (d2, addr2) = start_dir_args(
        &scratch,
        "dir",
        &["serve", "--listen", &listen, "--config", &cfg_s],
    );
    assert_eq!(addr2, addr);
    assert_eq!(
        d2.json(&["mail", "list"]).unwrap()["mail"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Bob registers: all three are delivered. He acknowledges two.
    let b_ep = Ep::new("b");
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Event::Mail(m) = next_event(&mut b_ev, "mail", |e| matches!(e, Event::Mail(_))).await
        {
            got.push(m);
        }
    }
    got.sort_by_key(|m| m.id);
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![v, t, t2]);
    assert_eq!(got[0].kind, MailKind::Voice);
    assert_eq!(got[0].body, voice);
    assert_eq!(got[0].from, "alice");
    assert_eq!(got[0].to, "боб");
    assert_eq!(got[1].body, "перезвони мне".as_bytes());
    b.ack_mail(v).await.expect("ack");
    b.ack_mail(t).await.expect("ack");
    let e = b.ack_mail(v).await.expect_err("twice");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchMail));
    b.close();
    drop(b);
    // The unacknowledged one is delivered again on the next registration.
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    match next_event(&mut b_ev, "mail again", |e| matches!(e, Event::Mail(_))).await {
        Event::Mail(m) => assert_eq!(m.id, t2),
        _ => unreachable!(),
    }
    b.ack_mail(t2).await.unwrap();
    assert!(d2.json(&["mail", "list"]).unwrap()["mail"]
        .as_array()
        .unwrap()
        .is_empty());

    // New mail for a registered callee arrives at once (Alice reconnects:
    // her connection died with the old process).
    drop(a);
    let (a, _ev) = a_ep.connect(addr).await;
    a.login("alice", PW).await.unwrap();
    a.leave_mail(&n("боб"), MailKind::Text, b"now", None)
        .await
        .expect("text");
    match next_event(&mut b_ev, "live mail", |e| matches!(e, Event::Mail(_))).await {
        Event::Mail(m) => assert_eq!(m.body, b"now"),
        _ => unreachable!(),
    }
}

/// A raw protocol client that registers once and never refreshes.
async fn register_without_refresh(ep: &Ep, dir: SocketAddr, account: &str) -> quinn::Connection {
    use keyline_directory::wire::{next_msg, send_msg, Incoming};
    use keyline_proto::dir::DirMsg;
    let cfg = keyline_net::endpoint::client_config(&ep.id, None).unwrap();
    let conn = ep
        .ep
        .connect_with(cfg, dir, keyline_net::endpoint::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let msgs = [
        DirMsg::Hello {
            version: keyline_proto::PROTOCOL_VERSION,
            role: keyline_proto::msg::Role::Terminal,
            name: None,
            client: None,
        },
        DirMsg::Login {
            req: 1,
            account: account.into(),
            password: PW.into(),
        },
        DirMsg::Register {
            req: 2,
            numbers: vec![],
            candidates: vec![],
        },
    ];
    for m in &msgs {
        send_msg(&mut send, m).await.unwrap();
    }
    for _ in 0..3 {
        match next_msg(&mut recv).await.unwrap() {
            Incoming::Msg(DirMsg::Error { message, .. }) => panic!("{message}"),
            Incoming::Msg(_) => {}
            other => panic!("{other:?}"),
        }
    }
    tokio::spawn(async move {
        // Keep reading so the stream stays open.
        while let Ok(Incoming::Msg(_)) = next_msg(&mut recv).await {}
        drop(send);
    });
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_expire_unless_refreshed_and_follow_an_address_change() {
    let scratch = Scratch::new("dttl");
    let (d, addr) = start_dir(&scratch, "dir", &["--binding-ttl", "5"]);
    add_user(&d, "stale", &["stale"]);
    add_user(&d, "fresh", &["fresh"]);
    add_user(&d, "caller", &["caller"]);
    let s_ep = Ep::new("s");
    let _raw = register_without_refresh(&s_ep, addr, "stale").await;
    let f_ep = Ep::new("f");
    let (f, mut f_ev) = f_ep.online(addr, "fresh").await;
    let c_ep = Ep::new("c");
    let (c, _c_ev) = c_ep.online(addr, "caller").await;
    let numbers = |d: &Daemon| -> Vec<String> {
        d.json(&["bindings"]).unwrap()["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["number"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(numbers(&d), vec!["caller", "fresh", "stale"]);
    let t0 = Instant::now();
    wait_for(
        "the stale binding to expire",
        Duration::from_secs(8),
        || (!numbers(&d).contains(&"stale".to_string())).then_some(()),
    );
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    let e = c
        .call(&n("stale"), CallOptions::default())
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Some(ErrorCode::Unreachable));
    // The library refreshes at TTL/3: still there well past the TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(numbers(&d).contains(&"fresh".to_string()));

    // The endpoint's address changes: re-registered within 2 s, callable.
    let new_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let new_addr = new_sock.local_addr().unwrap();
    f_ep.ep.rebind(new_sock).unwrap();
    f.set_candidates(vec![new_addr]);
    let t0 = Instant::now();
    wait_for(
        "the binding to follow the move",
        Duration::from_secs(2),
        || {
            let b = d.json(&["bindings"]).ok()?;
            let fresh = b["bindings"]
                .as_array()?
                .iter()
                .find(|x| x["number"] == "fresh")?
                .clone();
            (fresh["observed"].as_str()? == new_addr.to_string()).then_some(())
        },
    );
    println!(
        "re-registered after an address change in {:?}",
        t0.elapsed()
    );
    match next_event(&mut f_ev, "address changed", |e| {
        matches!(e, Event::AddressChanged { .. })
    })
    .await
    {
        Event::AddressChanged { observed } => assert_eq!(observed, new_addr),
        _ => unreachable!(),
    }
    let caller = c.clone();
    let call = tokio::spawn(async move { caller.call(&n("fresh"), CallOptions::default()).await });
    let r = ring(&mut f_ev).await;
    let plan = f.answer(r.call).await.unwrap();
    let connected = call.await.unwrap().unwrap();
    assert!(connected.plan.peer_candidates.contains(&new_addr));
    let fep = f_ep.ep.clone();
    let acc = tokio::spawn(async move { accept_one(&fep, &plan, None).await });
    let link = c
        .dial_media(&c_ep.ep, &c_ep.id, &connected.plan, None)
        .await
        .expect("media");
    let f_conn = acc.await.unwrap();
    exchange(&link.conn, &f_conn, 3).await;
}

/// An endpoint whose address changes and which says nothing (no
/// re-registration: a NAT that rebinds, say) is rebound at its new address
/// from the packets the directory sees, well before its registration's
/// next refresh (a third of the default minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_move_is_followed() {
    let scratch = Scratch::new("dquiet");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "roamer", &["roamer"]);
    let r_ep = Ep::new("r");
    let (_r, mut r_ev) = r_ep.online(addr, "roamer").await;
    let quiet_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quiet_addr = quiet_sock.local_addr().unwrap();
    r_ep.ep.rebind(quiet_sock).unwrap();
    let t0 = Instant::now();
    wait_for(
        "the binding to follow a silent move",
        Duration::from_secs(5),
        || {
            let b = d.json(&["bindings"]).ok()?;
            let r = b["bindings"]
                .as_array()?
                .iter()
                .find(|x| x["number"] == "roamer")?
                .clone();
            (r["observed"].as_str()? == quiet_addr.to_string()).then_some(())
        },
    );
    println!("a silent move was followed in {:?}", t0.elapsed());
    match next_event(&mut r_ev, "address changed", |e| {
        matches!(e, Event::AddressChanged { .. })
    })
    .await
    {
        Event::AddressChanged { observed } => assert_eq!(observed, quiet_addr),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_only_connects_straight_to_the_callee() {
    let scratch = Scratch::new("dlookup");
    let (d, addr) = start_dir(&scratch, "dir", &[]);
    add_user(&d, "alice", &["alice"]);
    add_user(&d, "bob", &["東京本社"]);
    let (a_ep, b_ep) = (Ep::new("a"), Ep::new("b"));
    let (a, _a_ev) = a_ep.online(addr, "alice").await;
    let (_b, mut b_ev) = b_ep.online(addr, "bob").await;
    let found = a.lookup(&n("東京本社")).await.expect("found");
    assert_eq!(found.plan.peer_fp, b_ep.id.fingerprint);
    assert!(found.plan.peer_candidates.contains(&b_ep.addr()));
    let (from, plan) =
        match next_event(&mut b_ev, "expect", |e| matches!(e, Event::Expect { .. })).await {
            Event::Expect { from, plan, .. } => (from, plan),
            _ => unreachable!(),
        };
    assert_eq!(from, "alice");
    assert_eq!(plan.peer_fp, a_ep.id.fingerprint);
    let bep = b_ep.ep.clone();
    let acc = tokio::spawn(async move { accept_one(&bep, &plan, None).await });
    let link = a
        .dial_media(&a_ep.ep, &a_ep.id, &found.plan, None)
        .await
        .expect("media");
    let b_conn = acc.await.unwrap();
    exchange(&link.conn, &b_conn, 3).await;
    assert_eq!(jnum(&status(&d), &["relay", "bytes"]), Some(0.0));
    let e = a.lookup(&n("nobody")).await.expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::UnknownNumber));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_rule_carries_and_meters_media() {
    let scratch = Scratch::new("drelay");
    let (d, addr) = start_dir(&scratch, "dir", &["--direct-connect", "relay"]);
    add_user(&d, "alice", &["alice"]);
    add_user(&d, "bob", &["bob"]);
    let (a_ep, b_ep) = (Ep::new("a"), Ep::new("b"));
    let (a, _a_ev) = a_ep.online(addr, "alice").await;
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    let (link, b_conn) = call_and_connect((&a_ep, &a), (&b_ep, &b, &mut b_ev), "bob", false).await;
    let link = link.expect("relayed media");
    assert!(link.relayed);
    assert_ne!(link.remote, b_ep.addr());
    let b_conn = b_conn.unwrap();
    assert_ne!(
        b_conn.remote_address(),
        a_ep.addr(),
        "the callee sees the relay"
    );
    exchange(&link.conn, &b_conn, 20).await;
    let st = status(&d);
    assert!(
        jnum(&st, &["relay", "bytes"]).unwrap() > 20.0 * 2.0 * 6.0,
        "{st}"
    );
    assert!(jnum(&st, &["relay", "packets"]).unwrap() >= 40.0, "{st}");
    assert_eq!(jnum(&st, &["relays_active"]), Some(1.0), "{st}");
    let calls = d.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"][0]["relayed"], Value::Bool(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_then_relay_falls_back_and_direct_fails_clearly() {
    let scratch = Scratch::new("dfall");
    let cfg = scratch.join("dir.toml");
    std::fs::write(&cfg, "fallback_after_ms = 700\n").unwrap();
    let cfg_s = cfg.display().to_string();
    let (d, addr) = start_dir(&scratch, "dir", &["--config", &cfg_s]);
    add_user(&d, "alice", &["alice"]);
    add_user(&d, "bob", &["bob"]);
    let (a_ep, b_ep) = (Ep::new("a"), Ep::new("b"));
    let (a, _a_ev) = a_ep.online(addr, "alice").await;
    let (b, mut b_ev) = b_ep.online(addr, "bob").await;
    // Bob's "firewall" refuses Alice's direct connection.
    let (link, b_conn) = call_and_connect((&a_ep, &a), (&b_ep, &b, &mut b_ev), "bob", true).await;
    let link = link.expect("fell back to the relay");
    assert!(link.relayed);
    match next_event(&mut b_ev, "relay", |e| matches!(e, Event::Relay { .. })).await {
        Event::Relay { relay, .. } => {
            assert_eq!(Some(relay), b_conn.as_ref().map(|c| c.remote_address()))
        }
        _ => unreachable!(),
    }
    exchange(&link.conn, b_conn.as_ref().unwrap(), 5).await;
    assert!(jnum(&status(&d), &["relay", "bytes"]).unwrap() > 0.0);

    // The same with the rule `direct`: a clear failure, nothing relayed.
    let (d2, addr2) = start_dir(&scratch, "dir2", &["--direct-connect", "direct"]);
    add_user(&d2, "alice", &["alice"]);
    add_user(&d2, "bob", &["bob"]);
    let (a2_ep, b2_ep) = (Ep::new("a2"), Ep::new("b2"));
    let (a2, _e) = a2_ep.online(addr2, "alice").await;
    let (b2, mut b2_ev) = b2_ep.online(addr2, "bob").await;
    let (link, _) = call_and_connect((&a2_ep, &a2), (&b2_ep, &b2, &mut b2_ev), "bob", true).await;
    let e = link.expect_err("direct only");
    assert!(e.to_string().contains("unreachable end to end"), "{e}");
    assert!(e.to_string().contains("'direct'"), "{e}");
    assert_eq!(jnum(&status(&d2), &["relay", "bytes"]), Some(0.0));
    let e = a2.fallback(1).await.expect_err("no relay");
    assert_eq!(e.code(), Some(ErrorCode::NoRelay), "{e}");
}
