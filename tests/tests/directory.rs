//! `keyline-directory` as an administrator and systemd see it: the account
//! and forwarding CLI (with and without a running daemon), `--json`
//! output, `--check-config`, the notify lifecycle (READY, the WATCHDOG
//! cadence, RELOADING with a bad and a good file, STOPPING, exit 0 on
//! SIGTERM; SIGTERM with an answered call whose two ends are told, and the
//! database intact afterwards), and a directory that answers bad protocol
//! input with clear errors. Loopback only.
//!
//! The calling, mail, relay and forwarding flows are tested with the
//! client library in `directory/tests/e2e.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyline_net::{endpoint, Identity};
use keyline_proto::codec::{read_frame, write_frame};
use keyline_proto::dir::{DirMsg, EndReason, ErrorCode};
use keyline_proto::msg::Role;
use keyline_proto::{MAX_MESSAGE, PROTOCOL_VERSION};
use keyline_tests::{bin, jnum, jstr, wait_for, Daemon, Scratch};
use serde_json::Value;

const PW: &str = "correct horse battery";

fn dir_cmd(state: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin("keyline-directory"))
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        // The command may refuse (a bad number) and exit before it reads
        // the password: a broken pipe here is its answer, not a failure.
        let _ = writeln!(child.stdin.take().unwrap(), "{s}");
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn accounts_and_forwards_from_the_cli_with_and_without_a_daemon() {
    let scratch = Scratch::new("dcli");
    let state = scratch.join("dir");
    // Before the first start: the database is made on demand.
    let o = dir_cmd(
        &state,
        &[
            "user",
            "add",
            "alice",
            "--number",
            "+82 2 555 0100",
            "--number",
            "앨리스",
        ],
        Some(PW),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("+8225550100"));
    let o = dir_cmd(
        &state,
        &["user", "add", "bob", "--number", "+8225550100"],
        Some(PW),
    );
    assert!(!o.status.success());
    assert!(
        err(&o).contains("already belongs to account alice"),
        "{}",
        err(&o)
    );
    let o = dir_cmd(
        &state,
        &["user", "add", "bob", "--number", "bob"],
        Some("short"),
    );
    assert!(err(&o).contains("too short"), "{}", err(&o));
    let o = dir_cmd(
        &state,
        &["user", "add", "bob", "--number", "b\u{200B}ob"],
        Some(PW),
    );
    assert!(err(&o).contains("invisible"), "{}", err(&o));
    let o = dir_cmd(&state, &["status"], None);
    assert!(err(&o).contains("cannot reach the daemon"), "{}", err(&o));

    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    let st = wait_for("the directory", Duration::from_secs(15), || {
        d.json(&["status"]).ok()
    });
    assert_eq!(
        jstr(&st, &["direct_connect"]).as_deref(),
        Some("direct-then-relay")
    );
    assert_eq!(jnum(&st, &["binding_ttl_secs"]), Some(120.0));
    assert_eq!(jnum(&st, &["numbers"]), Some(2.0));
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0));
    assert_eq!(jstr(&st, &["fingerprint"]).map(|f| f.len()), Some(64));

    // While it runs: the daemon sees the new account and rule at once.
    let o = dir_cmd(
        &state,
        &["user", "add", "bob", "--number", "Bob Smith"],
        Some(PW),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(jnum(&d.json(&["status"]).unwrap(), &["numbers"]), Some(3.0));
    let users = d.json(&["users"]).unwrap();
    let ids: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["alice", "bob"]);
    assert_eq!(users["users"][1]["numbers"][0], "bobsmith");
    let o = d.ctl(&[
        "forward",
        "set",
        "앨리스",
        "--to",
        "BOB SMITH",
        "--when",
        "unregistered",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let o = d.ctl(&["forward", "set", "앨리스", "--to", "nobody"]);
    assert!(err(&o).contains("not a known number"), "{}", err(&o));
    let fw = d.json(&["forward", "list"]).unwrap();
    assert_eq!(fw["forwards"][0]["to"], "bobsmith");
    assert_eq!(fw["forwards"][0]["when"], "unregistered");
    let human = d.ctl(&["users"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("앨리스"));
    assert!(d.json(&["bindings"]).unwrap()["bindings"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(d.json(&["mail", "list"]).unwrap()["mail"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(d.json(&["calls"]).unwrap()["calls"]
        .as_array()
        .unwrap()
        .is_empty());
    let o = dir_cmd(&state, &["user", "passwd", "bob"], Some("another password"));
    assert!(o.status.success(), "{}", err(&o));
    let o = dir_cmd(&state, &["user", "rm", "bob"], None);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(jnum(&d.json(&["status"]).unwrap(), &["numbers"]), Some(2.0));
    assert!(d.json(&["forward", "list"]).unwrap()["forwards"]
        .as_array()
        .unwrap()
        .is_empty());
    let o = dir_cmd(&state, &["user", "rm", "bob"], None);
    assert!(err(&o).contains("no account bob"), "{}", err(&o));
}

#[test]
fn check_config_names_the_bad_field() {
    let scratch = Scratch::new("dcfg");
    let good = scratch.join("good.toml");
    std::fs::write(
        &good,
        "direct_connect = \"relay\"\n[mail]\nquota_messages = 10\n",
    )
    .unwrap();
    let o = dir_cmd(
        &scratch.join("s"),
        &["--check-config", good.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", err(&o));
    for (text, field) in [
        ("direct_connect = \"sometimes\"\n", "direct_connect"),
        ("binding_ttl_secs = 1\n", "binding_ttl_secs"),
        ("[mail]\nquota_bytez = 1\n", "quota_bytez"),
        ("listen = \"nowhere\"\n", "listen"),
    ] {
        let bad = scratch.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let o = dir_cmd(
            &scratch.join("s"),
            &["check-config", bad.to_str().unwrap()],
            None,
        );
        assert!(!o.status.success(), "{text}");
        assert!(err(&o).contains(field), "{text}: {}", err(&o));
    }
}

fn notifications(sock: &UnixDatagram, until: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let s = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = s.contains(until);
            got.push(s);
            if done {
                return got;
            }
        }
    }
    panic!("no {until} within {timeout:?}; got {got:?}");
}

/// WATCHDOG=1 arrives at about half of WATCHDOG_USEC (`interval`): at
/// least four pings in 6.5 half-intervals, each gap between a quarter and
/// just under the whole interval. Messages queued before the measurement
/// are dropped, so every ping is stamped as it arrives.
fn check_watchdog_cadence(sock: &UnixDatagram, interval: Duration) {
    let mut buf = [0u8; 4096];
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let half = interval / 2;
    let until = Instant::now() + half * 13 / 2;
    let mut pings = Vec::new();
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
    }
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("directory watchdog gaps (WATCHDOG_USEC {interval:?}): {gaps:?}");
    assert!(
        pings.len() >= 4,
        "only {} watchdog pings in {:?}",
        pings.len(),
        half * 13 / 2
    );
    for gap in gaps {
        assert!(
            gap > interval / 4 && gap < interval * 39 / 40,
            "watchdog gap {gap:?} (WATCHDOG_USEC {interval:?})"
        );
    }
}

#[test]
fn systemd_lifecycle_reload_and_stop() {
    let scratch = Scratch::new("dlife");
    let state = scratch.join("dir");
    let cfg = scratch.join("directory.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\n").unwrap();
    let notify_path = scratch.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let log = std::fs::File::create(scratch.join("dir.log")).unwrap();
    let mut child = Command::new(bin("keyline-directory"))
        .arg("--state")
        .arg(&state)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = kill_on_panic(child.id());
    let got = notifications(&sock, "READY=1", Duration::from_secs(15));
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
    check_watchdog_cadence(&sock, Duration::from_millis(400));
    let ctl = |args: &[&str]| -> Value {
        let o = dir_cmd(&state, args, None);
        assert!(o.status.success(), "{}", err(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    assert_eq!(
        ctl(&["status", "--json"])["direct_connect"],
        "direct-then-relay"
    );

    // A bad file is refused and the old configuration kept.
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ndirect_connect = \"teleport\"\n",
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let got = notifications(&sock, "READY=1", Duration::from_secs(5));
    assert!(got.iter().any(|m| m.contains("RELOADING=1")), "{got:?}");
    assert!(
        got.iter()
            .any(|m| m.contains("keeping the old one") && m.contains("direct_connect")),
        "{got:?}"
    );
    let st = ctl(&["status", "--json"]);
    assert_eq!(st["direct_connect"], "direct-then-relay");
    assert!(
        st["last_reload"]
            .as_str()
            .unwrap()
            .contains("keeping the old one"),
        "{st}"
    );

    // A good one applies.
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ndirect_connect = \"relay\"\nbinding_ttl_secs = 60\n",
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    notifications(&sock, "READY=1", Duration::from_secs(5));
    let st = ctl(&["status", "--json"]);
    assert_eq!(st["direct_connect"], "relay");
    assert_eq!(st["binding_ttl_secs"], 60);

    // SIGTERM: STOPPING, exit 0 within 5 s.
    let t = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    notifications(&sock, "STOPPING=1", Duration::from_secs(5));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(guard);
}

/// Kills the process on drop if the test failed before stopping it.
struct Killer(u32);

fn kill_on_panic(pid: u32) -> Killer {
    Killer(pid)
}

impl Drop for Killer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

async fn raw_connect(
    addr: SocketAddr,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let id = Identity::generate("raw").unwrap();
    let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
    let cfg = endpoint::client_config(&id, None).unwrap();
    let conn = ep
        .connect_with(cfg, addr, endpoint::SERVER_NAME)
        .unwrap()
        .await
        .expect("connect to the directory");
    let (send, recv) = conn.open_bi().await.unwrap();
    (ep, conn, send, recv)
}

async fn next(recv: &mut quinn::RecvStream) -> DirMsg {
    let body = tokio::time::timeout(Duration::from_secs(5), read_frame(recv, MAX_MESSAGE))
        .await
        .expect("a reply in time")
        .unwrap()
        .expect("a frame");
    DirMsg::from_cbor(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_protocol_input_gets_clear_errors() {
    let scratch = Scratch::new("dproto");
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    let addr: SocketAddr = wait_for("the directory", Duration::from_secs(15), || {
        jstr(&d.json(&["status"]).ok()?, &["listen"])?.parse().ok()
    });
    let hello = |version| DirMsg::Hello {
        version,
        role: Role::Gateway,
        name: Some("office".into()),
        client: None,
    };

    // A newer protocol version is refused with a reason.
    let (_ep, conn, mut send, mut recv) = raw_connect(addr).await;
    write_frame(&mut send, &hello(PROTOCOL_VERSION + 1), MAX_MESSAGE)
        .await
        .unwrap();
    match next(&mut recv).await {
        DirMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::Version);
            assert!(message.contains("not supported"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");

    // Unknown kinds and requests before login are answered, not fatal.
    let (_ep, conn, mut send, mut recv) = raw_connect(addr).await;
    write_frame(&mut send, &hello(PROTOCOL_VERSION), MAX_MESSAGE)
        .await
        .unwrap();
    match next(&mut recv).await {
        DirMsg::Welcome {
            observed, ttl_secs, ..
        } => {
            assert_eq!(observed.parse::<SocketAddr>().unwrap().ip(), addr.ip());
            assert_eq!(ttl_secs, 120);
        }
        other => panic!("{other:?}"),
    }
    // {"t": "teleport"}, a kind this directory does not know.
    let mut body = vec![0xa1, 0x61, b't', 0x68];
    body.extend_from_slice(b"teleport");
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    send.write_all(&frame).await.unwrap();
    assert!(matches!(
        next(&mut recv).await,
        DirMsg::Error {
            code: ErrorCode::UnknownKind,
            ..
        }
    ));
    write_frame(
        &mut send,
        &DirMsg::Call {
            req: 7,
            number: "anyone".into(),
            from: None,
            candidates: vec![],
            hops: 0,
            media_fp: None,
            handoff: None,
        },
        MAX_MESSAGE,
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut recv).await,
        DirMsg::CallFailed {
            req: 7,
            code: ErrorCode::NotLoggedIn,
            ..
        }
    ));
    write_frame(
        &mut send,
        &DirMsg::Register {
            req: 8,
            numbers: vec![],
            candidates: vec!["not an address".into()],
        },
        MAX_MESSAGE,
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut recv).await,
        DirMsg::Error {
            req: Some(8),
            code: ErrorCode::BadAddress,
            ..
        }
    ));
    // A number that cannot be one is named as such, whatever else the
    // request carries.
    write_frame(
        &mut send,
        &DirMsg::Register {
            req: 10,
            numbers: vec!["\u{202e}1001".into()],
            candidates: vec!["also not an address".into()],
        },
        MAX_MESSAGE,
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut recv).await,
        DirMsg::Error {
            req: Some(10),
            code: ErrorCode::InvalidNumber,
            ..
        }
    ));
    write_frame(&mut send, &DirMsg::Ping { n: 9 }, MAX_MESSAGE)
        .await
        .unwrap();
    assert_eq!(next(&mut recv).await, DirMsg::Pong { n: 9 });

    // Garbage ends the connection; the directory carries on.
    send.write_all(&[0, 0, 0, 3, 0xff, 0x00, 0x13])
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("dropped");
    assert!(d.json(&["status"]).is_ok());
}

/// A terminal speaking the directory protocol on its own QUIC connection,
/// so the test sees exactly what the directory sends.
struct Term {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    addr: SocketAddr,
}

impl Term {
    /// Connect, log in as `account` and register all its numbers.
    async fn online(dir: SocketAddr, account: &str) -> Term {
        let (ep, conn, send, recv) = raw_connect(dir).await;
        let addr = ep.local_addr().unwrap();
        let mut t = Term {
            _ep: ep,
            conn,
            send,
            recv,
            addr,
        };
        t.say(DirMsg::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Terminal,
            name: Some(account.into()),
            client: None,
        })
        .await;
        t.wait("welcome", |m| matches!(m, DirMsg::Welcome { .. }))
            .await;
        t.say(DirMsg::Login {
            req: 1,
            account: account.into(),
            password: PW.into(),
        })
        .await;
        t.wait("logged in", |m| {
            matches!(m, DirMsg::LoggedIn { req: 1, .. })
        })
        .await;
        t.say(DirMsg::Register {
            req: 2,
            numbers: vec![],
            candidates: vec![addr.to_string()],
        })
        .await;
        t.wait("registered", |m| {
            matches!(m, DirMsg::Registered { req: Some(2), .. })
        })
        .await;
        t
    }

    async fn say(&mut self, msg: DirMsg) {
        write_frame(&mut self.send, &msg, MAX_MESSAGE)
            .await
            .unwrap();
    }

    /// The next message `pred` accepts, skipping others.
    async fn wait(&mut self, what: &str, pred: impl Fn(&DirMsg) -> bool) -> DirMsg {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let body = tokio::time::timeout(left, read_frame(&mut self.recv, MAX_MESSAGE))
                .await
                .unwrap_or_else(|_| panic!("no {what} within 5 s"))
                .unwrap()
                .unwrap_or_else(|| panic!("stream ended waiting for {what}"));
            let msg = DirMsg::from_cbor(&body).unwrap();
            if pred(&msg) {
                return msg;
            }
        }
    }

    /// Everything the directory sends until it closes the connection (or
    /// `limit` passes).
    async fn drain(mut self, limit: Duration) -> Vec<DirMsg> {
        let mut got = Vec::new();
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, read_frame(&mut self.recv, MAX_MESSAGE)).await {
                Ok(Ok(Some(body))) => got.push(DirMsg::from_cbor(&body).unwrap()),
                // End of stream, connection closed, or time is up.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            }
        }
        drop(self.conn);
        got
    }
}

/// A directory with accounts alice (2001) and bob (2002); its scratch
/// space, the daemon and its QUIC address.
fn alice_and_bob(tag: &str) -> (Scratch, Daemon, SocketAddr) {
    let scratch = Scratch::new(tag);
    let state = scratch.join("dir");
    for (id, number) in [("alice", "2001"), ("bob", "2002")] {
        let o = dir_cmd(&state, &["user", "add", id, "--number", number], Some(PW));
        assert!(o.status.success(), "{}", err(&o));
    }
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    let st = tokio::task::block_in_place(|| {
        wait_for("the directory", Duration::from_secs(15), || {
            d.json(&["status"]).ok()
        })
    });
    let addr = jstr(&st, &["listen"]).unwrap().parse().unwrap();
    (scratch, d, addr)
}

/// Looking a number up fast enough must not knock its endpoint offline:
/// Bob reads nothing while Alice floods look-ups of his number; the
/// directory drops the EXPECT hints it cannot queue for him, and his
/// connection and binding stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_flood_does_not_disconnect_the_number_looked_up() {
    let (_scratch, d, addr) = alice_and_bob("dflood");
    let mut a = Term::online(addr, "alice").await;
    let mut b = Term::online(addr, "bob").await;
    // Alice looks Bob up 20,000 times, 64 at a time, as a client does;
    // Bob reads nothing, so his stream's flow control stops the
    // directory's writer to him and his queue fills with EXPECTs.
    let mut found = 0u32;
    for round in 0..(20_000 / 64) {
        for i in 0..64u64 {
            a.say(DirMsg::Lookup {
                req: 100 + round * 64 + i,
                number: "2002".into(),
            })
            .await;
        }
        for _ in 0..64 {
            a.wait("found", |m| matches!(m, DirMsg::Found { .. })).await;
            found += 1;
        }
    }
    assert_eq!(found, 20_000 / 64 * 64);
    assert!(
        b.conn.close_reason().is_none(),
        "{:?}",
        b.conn.close_reason()
    );
    // Bob is still there: he reads his way through what was queued and
    // gets the answer to a request of his own.
    b.say(DirMsg::Ping { n: 9 }).await;
    b.wait("pong", |m| matches!(m, DirMsg::Pong { n: 9 })).await;
    let bindings = d.json(&["bindings"]).unwrap();
    assert!(bindings.to_string().contains("2002"), "{bindings}");
}

/// A client may send requests faster than it reads the answers: the
/// directory stops reading its requests while the answers wait (QUIC flow
/// control then holds the client back) instead of dropping the client for
/// an overflowing queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_is_held_back_not_dropped() {
    let (_scratch, _d, addr) = alice_and_bob("dslow");
    let a = Term::online(addr, "alice").await;
    let _b = Term::online(addr, "bob").await;
    const N: u64 = 50_000;
    let Term {
        conn,
        mut send,
        mut recv,
        ..
    } = a;
    // All the requests in one go, while nothing is read for a second.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend(
                keyline_proto::codec::encode_frame(
                    &DirMsg::Lookup {
                        req: 1000 + i,
                        number: "2002".into(),
                    },
                    MAX_MESSAGE,
                )
                .unwrap(),
            );
        }
        send.write_all(&batch)
            .await
            .expect("the requests are taken");
        send
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut next_req = 1000;
    while next_req < 1000 + N {
        match next(&mut recv).await {
            DirMsg::Found { req, .. } => {
                assert_eq!(req, next_req, "answers come in order");
                next_req += 1;
            }
            other => panic!("{other:?} (after {} answers)", next_req - 1000),
        }
    }
    let _send = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer finished")
        .unwrap();
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
}

/// SIGTERM with an answered call between two terminals: STOPPING, both
/// ends told (`Ended` with reason shutdown, then `GoingAway`), exit 0
/// within 5 s, and the database intact: after a restart the accounts
/// still log in and the numbers are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_call_in_progress_tells_both_ends() {
    let scratch = Scratch::new("dterm");
    let state = scratch.join("dir");
    for (id, number) in [("alice", "2001"), ("bob", "2002")] {
        let o = dir_cmd(&state, &["user", "add", id, "--number", number], Some(PW));
        assert!(o.status.success(), "{}", err(&o));
    }
    let notify_path = scratch.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let mut d = Daemon::start_with_env(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    )
    .unwrap();
    tokio::task::block_in_place(|| notifications(&sock, "READY=1", Duration::from_secs(15)));
    let addr: SocketAddr = jstr(&d.json(&["status"]).unwrap(), &["listen"])
        .unwrap()
        .parse()
        .unwrap();

    // Alice calls Bob; Bob answers.
    let mut a = Term::online(addr, "alice").await;
    let mut b = Term::online(addr, "bob").await;
    a.say(DirMsg::Call {
        req: 3,
        number: "2002".into(),
        from: None,
        candidates: vec![a.addr.to_string()],
        hops: 0,
        media_fp: None,
        handoff: None,
    })
    .await;
    let call = match a
        .wait("ringing", |m| matches!(m, DirMsg::Ringing { req: 3, .. }))
        .await
    {
        DirMsg::Ringing { call, .. } => call,
        _ => unreachable!(),
    };
    b.wait(
        "the ring",
        |m| matches!(m, DirMsg::Ring { call: c, .. } if *c == call),
    )
    .await;
    b.say(DirMsg::Answer {
        req: 4,
        call,
        media_fp: None,
        candidates: vec![],
    })
    .await;
    b.wait("connect (callee)", |m| {
        matches!(m, DirMsg::Connect { req: Some(4), .. })
    })
    .await;
    a.wait(
        "connect (caller)",
        |m| matches!(m, DirMsg::Connect { call: c, .. } if *c == call),
    )
    .await;
    let calls = d.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"].as_array().unwrap().len(), 1, "{calls}");
    assert_eq!(calls["calls"][0]["state"], "answered", "{calls}");

    // SIGTERM while both ends listen.
    let a_heard = tokio::spawn(a.drain(Duration::from_secs(8)));
    let b_heard = tokio::spawn(b.drain(Duration::from_secs(8)));
    let t0 = Instant::now();
    let exited_ok = tokio::task::block_in_place(|| d.stop());
    let took = t0.elapsed();
    assert!(
        exited_ok,
        "the directory did not exit 0 within 5 s:\n{}",
        d.log_text()
    );
    eprintln!("directory with an answered call stopped in {took:?}");
    let got =
        tokio::task::block_in_place(|| notifications(&sock, "STOPPING=1", Duration::from_secs(1)));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    for (who, heard) in [("alice", a_heard), ("bob", b_heard)] {
        let heard = heard.await.unwrap();
        assert!(
            heard.iter().any(|m| matches!(
                m,
                DirMsg::Ended { call: c, reason: EndReason::Shutdown } if *c == call
            )),
            "{who} was not told the call ended for the shutdown: {heard:?}"
        );
        assert!(
            heard.iter().any(|m| matches!(m, DirMsg::GoingAway { .. })),
            "{who} was not told the directory is going away: {heard:?}"
        );
    }

    // The database survived: a restart finds both accounts, and they log in.
    let d2 = Daemon::start(
        None,
        bin("keyline-directory"),
        &state,
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .unwrap();
    let st = wait_for("the directory again", Duration::from_secs(15), || {
        d2.json(&["status"]).ok()
    });
    assert_eq!(jnum(&st, &["numbers"]), Some(2.0), "{st}");
    assert_eq!(jnum(&st, &["calls_active"]), Some(0.0), "{st}");
    let addr: SocketAddr = jstr(&st, &["listen"]).unwrap().parse().unwrap();
    for id in ["alice", "bob"] {
        let t = Term::online(addr, id).await;
        t.conn.close(0u32.into(), b"done");
    }
}

/// Hostile input of any length gets a short answer and the session goes
/// on: a look-up of "1002" and 10,000 combining accents was answered by
/// closing the connection ("write failed"), since the error quoted the
/// whole input, escaped (70 KB), over the 64 KiB frame limit. Now numbers
/// over the input limit are refused before any work with a short error,
/// and errors quote at most the first 32 characters of what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_numbers_get_short_errors_and_the_session_goes_on() {
    let (_scratch, d, addr) = alice_and_bob("dhuge");
    let mut a = Term::online(addr, "alice").await;
    let accents = format!("1002{}", "\u{301}".repeat(10_000));
    // 1,000 bytes: under the input limit, refused for its length once
    // canonical, and quoted only in part.
    let under = format!("1002{}", "\u{301}".repeat(498));
    let bidi = format!("{}\u{202e}", "1".repeat(900));
    let short = |m: &str| m.len() < 512;
    for (req, number, says) in [
        (10, &accents, "too long"),
        (11, &under, "too long"),
        (12, &bidi, "disallowed character"),
    ] {
        a.say(DirMsg::Lookup {
            req,
            number: number.clone(),
        })
        .await;
        match a
            .wait("an error", |m| matches!(m, DirMsg::Error { .. }))
            .await
        {
            DirMsg::Error {
                req: r,
                code,
                message,
                ..
            } => {
                assert_eq!(r, Some(req));
                assert_eq!(code, ErrorCode::InvalidNumber);
                assert!(short(&message), "{} bytes: {message}", message.len());
                assert!(message.contains(says), "{message}");
            }
            _ => unreachable!(),
        }
    }
    // A call gives the number back clipped.
    a.say(DirMsg::Call {
        req: 20,
        number: accents.clone(),
        from: None,
        candidates: vec![],
        hops: 0,
        media_fp: None,
        handoff: None,
    })
    .await;
    match a
        .wait("call failed", |m| matches!(m, DirMsg::CallFailed { .. }))
        .await
    {
        DirMsg::CallFailed {
            req,
            code,
            number,
            message,
            ..
        } => {
            assert_eq!((req, code), (20, ErrorCode::InvalidNumber));
            assert!(number.chars().count() <= 64, "{number}");
            assert!(short(&message), "{message}");
        }
        _ => unreachable!(),
    }
    // Long candidates, fingerprints and unknown kinds are quoted in part.
    let long = "9".repeat(30_000);
    a.say(DirMsg::Register {
        req: 30,
        numbers: vec![],
        candidates: vec![long.clone()],
    })
    .await;
    match a
        .wait("bad address", |m| matches!(m, DirMsg::Error { .. }))
        .await
    {
        DirMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::BadAddress);
            assert!(short(&message), "{} bytes", message.len());
        }
        _ => unreachable!(),
    }
    // {"t": "\u{301}" x 20,000}: a kind nobody knows, 40 KB long.
    let kind = "\u{301}".repeat(20_000);
    let mut body = vec![0xa1, 0x61, b't', 0x79];
    body.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    body.extend_from_slice(kind.as_bytes());
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    a.send.write_all(&frame).await.unwrap();
    match a
        .wait("unknown kind", |m| matches!(m, DirMsg::Error { .. }))
        .await
    {
        DirMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::UnknownKind);
            assert!(short(&message), "{} bytes", message.len());
        }
        _ => unreachable!(),
    }
    // A login with a 60 KB account name: refused, briefly.
    a.say(DirMsg::Login {
        req: 40,
        account: "é".repeat(30_000),
        password: "x".into(),
    })
    .await;
    match a
        .wait("refused", |m| matches!(m, DirMsg::Error { .. }))
        .await
    {
        DirMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::BadCredentials);
            assert!(short(&message), "{} bytes", message.len());
        }
        _ => unreachable!(),
    }
    // The session is still there, and still registered.
    a.say(DirMsg::Ping { n: 50 }).await;
    a.wait("pong", |m| matches!(m, DirMsg::Pong { n: 50 }))
        .await;
    assert!(
        a.conn.close_reason().is_none(),
        "{:?}",
        a.conn.close_reason()
    );
    let bindings = d.json(&["bindings"]).unwrap();
    assert!(bindings.to_string().contains("2001"), "{bindings}");
}

/// Unregistering another account's number is refused with a clear error
/// and changes nothing (it used to answer ok).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_another_accounts_number_is_refused() {
    let (_scratch, d, addr) = alice_and_bob("dunreg");
    let mut a = Term::online(addr, "alice").await;
    let _b = Term::online(addr, "bob").await;
    a.say(DirMsg::Unregister {
        req: 5,
        numbers: vec!["2002".into()],
    })
    .await;
    match a.wait("an answer", |m| m.reply_to() == Some(5)).await {
        DirMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::NotYourNumber);
            assert_eq!(message, "2002 is not a number of account alice");
        }
        other => panic!("{other:?}"),
    }
    let bindings = d.json(&["bindings"]).unwrap();
    assert!(bindings.to_string().contains("2002"), "{bindings}");
    assert!(bindings.to_string().contains("2001"), "{bindings}");
    // Her own number: ok, and gone.
    a.say(DirMsg::Unregister {
        req: 6,
        numbers: vec!["2001".into()],
    })
    .await;
    assert_eq!(
        a.wait("an answer", |m| m.reply_to() == Some(6)).await,
        DirMsg::Ok { req: 6 }
    );
    let bindings = d.json(&["bindings"]).unwrap();
    assert!(!bindings.to_string().contains("2001"), "{bindings}");
    assert!(bindings.to_string().contains("2002"), "{bindings}");
}

/// Connections that say hello and never log in were kept for ever (1,000
/// of them held about 108 KiB each). Now one that has not logged in
/// within login_deadline_secs is closed, saying why; a logged-in one
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_log_in_are_closed() {
    let scratch = Scratch::new("didle");
    let state = scratch.join("dir");
    let o = dir_cmd(
        &state,
        &["user", "add", "alice", "--number", "2001"],
        Some(PW),
    );
    assert!(o.status.success(), "{}", err(&o));
    let (d, addr) = serve_with_config(&scratch, &state, "login_deadline_secs = 2\n");
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (ep, conn, mut send, mut recv) = raw_connect(addr).await;
        write_frame(
            &mut send,
            &DirMsg::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Terminal,
                name: None,
                client: None,
            },
            MAX_MESSAGE,
        )
        .await
        .unwrap();
        assert!(matches!(next(&mut recv).await, DirMsg::Welcome { .. }));
        idle.push((ep, conn, send, recv));
    }
    let mut alice = Term::online(addr, "alice").await;
    assert_eq!(
        jnum(&d.json(&["status"]).unwrap(), &["sessions"]),
        Some(21.0)
    );
    let started = Instant::now();
    for (_ep, conn, _send, _recv) in &idle {
        let reason = tokio::time::timeout(Duration::from_secs(6), conn.closed())
            .await
            .expect("closed for want of a login");
        assert!(
            reason.to_string().contains("no login within 2 s"),
            "{reason}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Alice, logged in, stays well past the deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    alice.say(DirMsg::Ping { n: 1 }).await;
    alice
        .wait("pong", |m| matches!(m, DirMsg::Pong { n: 1 }))
        .await;
    assert!(alice.conn.close_reason().is_none());
    assert_eq!(
        jnum(&d.json(&["status"]).unwrap(), &["sessions"]),
        Some(1.0)
    );
}

/// The directory's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Write `buf` on `send` until the directory stops taking it or `limit`
/// passes; how many bytes it took.
async fn push(mut send: quinn::SendStream, buf: &[u8], limit: Duration) -> usize {
    let mut took = 0;
    let _ = tokio::time::timeout(limit, async {
        while took < buf.len() {
            match send.write(&buf[took..]).await {
                Ok(n) => took += n,
                Err(_) => break,
            }
        }
    })
    .await;
    // Keep the stream open (unfinished) while the others are measured.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(send);
    });
    took
}

/// One connection could pin about 250 MB: 100 unidirectional streams of
/// 1 MiB that the directory never accepts, and bidirectional streams
/// queued behind a stalled mail upload, each taking quinn's default 1.25 MB
/// window with no bound for the connection. Now a client may open no
/// unidirectional stream, four bidirectional ones, 256 KiB per stream and
/// 1 MiB in all, and send no datagrams; and the directory holds at most
/// max_connections connections, refusing the rest before the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_pin_memory_and_connections_are_limited() {
    let scratch = Scratch::new("dpin");
    let state = scratch.join("dir");
    let o = dir_cmd(
        &state,
        &["user", "add", "alice", "--number", "2001"],
        Some(PW),
    );
    assert!(o.status.success(), "{}", err(&o));
    let (d, addr) = serve_with_config(&scratch, &state, "max_connections = 5\n");
    let pid = d.pid().unwrap();

    let mut a = Term::online(addr, "alice").await;
    assert_eq!(a.conn.max_datagram_size(), None, "datagrams are refused");
    let before = rss_kib(pid);
    let mib = vec![0x55u8; 1 << 20];
    // 100 unidirectional streams of 1 MiB: none may even be opened.
    let uni = tokio::time::timeout(Duration::from_secs(2), a.conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was allowed");
    // A mail upload that stalls after its header, and bidirectional
    // streams of 1 MiB queued behind it.
    let (mut upload, _upload_recv) = a.conn.open_bi().await.unwrap();
    write_frame(
        &mut upload,
        &DirMsg::LeaveMail {
            req: 9,
            to: "2001".into(),
            from: None,
            kind: keyline_proto::dir::MailKind::Voice,
            len: 1 << 20,
        },
        MAX_MESSAGE,
    )
    .await
    .unwrap();
    let mut took = push(upload, &mib[..100 << 10], Duration::from_secs(1)).await;
    let mut opened = 0;
    let mut recvs = Vec::new();
    for _ in 0..100 {
        let Ok(Ok((send, recv))) =
            tokio::time::timeout(Duration::from_millis(300), a.conn.open_bi()).await
        else {
            break;
        };
        opened += 1;
        recvs.push(recv);
        took += push(send, &mib, Duration::from_millis(500)).await;
    }
    // The control stream, the upload and two more.
    assert_eq!(opened, 2, "bidirectional streams opened besides the upload");
    assert!(
        took <= (1 << 20) + (64 << 10),
        "the directory took {took} bytes on one connection"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grew = rss_kib(pid).saturating_sub(before);
    assert!(grew < 16 << 10, "the directory grew {grew} KiB");
    // The session still answers.
    a.say(DirMsg::Ping { n: 3 }).await;
    a.wait("pong", |m| matches!(m, DirMsg::Pong { n: 3 })).await;
    println!("one connection: {took} bytes taken, resident memory grew {grew} KiB");

    // Four more connections fill max_connections (5); a sixth is refused
    // before the handshake, and counted.
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(raw_connect(addr).await);
    }
    let id = Identity::generate("sixth").unwrap();
    let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
    let sixth = ep
        .connect_with(
            endpoint::client_config(&id, None).unwrap(),
            addr,
            endpoint::SERVER_NAME,
        )
        .unwrap()
        .await;
    assert!(sixth.is_err(), "a sixth connection was accepted");
    let st = d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["connections"]), Some(5.0), "{st}");
    assert_eq!(jnum(&st, &["max_connections"]), Some(5.0), "{st}");
    assert_eq!(jnum(&st, &["connections_refused"]), Some(1.0), "{st}");
    // One goes; a newcomer gets in.
    let (_ep, conn, _send, _recv) = more.pop().unwrap();
    conn.close(0u32.into(), b"bye");
    drop(conn);
    tokio::task::block_in_place(|| {
        wait_for("a free place", Duration::from_secs(15), || {
            (jnum(&d.json(&["status"]).ok()?, &["connections"])? < 5.0).then_some(())
        })
    });
    let again = ep
        .connect_with(
            endpoint::client_config(&id, None).unwrap(),
            addr,
            endpoint::SERVER_NAME,
        )
        .unwrap()
        .await;
    assert!(again.is_ok(), "{again:?}");
    drop(recvs);
}

async fn connect_from(bind: &str, addr: SocketAddr) -> Result<quinn::Connection, String> {
    let id = Identity::generate("from").unwrap();
    let ep = keyline_net::make_endpoint(bind.parse().unwrap(), &id).unwrap();
    let conn = ep
        .connect_with(
            endpoint::client_config(&id, None).unwrap(),
            addr,
            endpoint::SERVER_NAME,
        )
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), conn).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Limits on the way in, per address: with loopback no longer exempt, one
/// address (127.0.0.1) holds at most three connections and the fourth is
/// refused before its handshake, while another (127.0.0.2) still gets in;
/// with `retry_above = 0` every new client proves its address with a QUIC
/// Retry first, which a real client does without noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let scratch = Scratch::new("dlim");
    let state = scratch.join("dir");
    let (d, addr) = serve_with_config(
        &scratch,
        &state,
        "max_connections = 100\n[limits]\nexempt = []\nmax_connections_per_address = 3\nretry_above = 0\n",
    );

    let mut held = Vec::new();
    for i in 0..3 {
        match connect_from("127.0.0.1:0", addr).await {
            Ok(c) => held.push(c),
            Err(e) => panic!("connection {i} from 127.0.0.1 refused: {e}"),
        }
    }
    let fourth = connect_from("127.0.0.1:0", addr).await;
    assert!(fourth.is_err(), "a fourth connection from 127.0.0.1 got in");
    let other = connect_from("127.0.0.2:0", addr).await;
    assert!(other.is_ok(), "127.0.0.2 was refused: {other:?}");

    let st = d.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["connections"]), Some(4.0), "{st}");
    assert_eq!(
        jnum(&st, &["admission", "refused_per_address"]),
        Some(1.0),
        "{st}"
    );
    assert!(
        jnum(&st, &["admission", "retries"]).unwrap_or(0.0) >= 5.0,
        "every client was asked to Retry: {st}"
    );
    assert_eq!(
        jnum(&st, &["limits", "max_connections_per_address"]),
        Some(3.0)
    );

    // One from 127.0.0.1 goes; another may come.
    let gone = held.pop().unwrap();
    gone.close(0u32.into(), b"bye");
    drop(gone);
    tokio::task::block_in_place(|| {
        wait_for("a free place", Duration::from_secs(15), || {
            (jnum(&d.json(&["status"]).ok()?, &["connections"])? < 4.0).then_some(())
        })
    });
    let again = connect_from("127.0.0.1:0", addr).await;
    assert!(again.is_ok(), "{again:?}");
}

/// A directory on loopback reading `config` (TOML) and its address, once
/// it answers `status`.
fn serve_with_config(
    scratch: &Scratch,
    state: &std::path::Path,
    config: &str,
) -> (Daemon, SocketAddr) {
    let conf = scratch.join("directory.toml");
    std::fs::write(&conf, config).unwrap();
    let d = Daemon::start(
        None,
        bin("keyline-directory"),
        state,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            conf.to_str().unwrap(),
        ],
    )
    .unwrap();
    let st = tokio::task::block_in_place(|| {
        wait_for("the directory", Duration::from_secs(15), || {
            d.json(&["status"]).ok()
        })
    });
    let addr: SocketAddr = jstr(&st, &["listen"]).unwrap().parse().unwrap();
    (d, addr)
}

/// Log in over QUIC with a fresh connection: the directory's answer to
/// the login (`LoggedIn` or an `Error`).
async fn quic_login(dir: SocketAddr, account: &str, password: &str) -> DirMsg {
    let (_ep, _conn, mut send, mut recv) = raw_connect(dir).await;
    let hello = DirMsg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Terminal,
        name: None,
        client: None,
    };
    write_frame(&mut send, &hello, MAX_MESSAGE).await.unwrap();
    assert!(matches!(next(&mut recv).await, DirMsg::Welcome { .. }));
    let login = DirMsg::Login {
        req: 1,
        account: account.into(),
        password: password.into(),
    };
    write_frame(&mut send, &login, MAX_MESSAGE).await.unwrap();
    loop {
        let m = next(&mut recv).await;
        if matches!(
            m,
            DirMsg::LoggedIn { req: 1, .. } | DirMsg::Error { req: Some(1), .. }
        ) {
            return m;
        }
    }
}

/// Post the directory site's sign-in form from loopback; the status code.
fn web_login(port: u16, account: &str, password: &str) -> u16 {
    // The form's token is the one its cookie carries (double submit).
    let token = "5e".repeat(32);
    let enc = keyline_tests::form_encode;
    let body = format!(
        "csrf={token}&id={}&password={}",
        enc(account),
        enc(password)
    );
    // The site speaks HTTPS only (its own certificate: -k).
    let out = std::process::Command::new("curl")
        .args(["-k", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "10", "-H"])
        .arg(format!("Cookie: kl_form={token}"))
        .arg("--data")
        .arg(&body)
        .arg(format!("https://127.0.0.1:{port}/login"))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    code.parse()
        .unwrap_or_else(|_| panic!("no HTTP status from curl: {code:?}"))
}

/// The web sign-in and the QUIC login count failures in one limiter:
/// wrong passwords on either path lock the other path out of that
/// account (from that address), and an account nobody guessed at still
/// gets in both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_and_quic_logins_share_one_limiter() {
    let scratch = Scratch::new("dlimiter");
    let state = scratch.join("dir");
    for (id, number) in [("alice", "2001"), ("bob", "2002"), ("carol", "2003")] {
        let o = dir_cmd(&state, &["user", "add", id, "--number", number], Some(PW));
        assert!(o.status.success(), "{}", err(&o));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let (d, addr) = serve_with_config(
        &scratch,
        &state,
        &format!(
            "[web]\nlisten = \"127.0.0.1:{port}\"\n\
             [login]\nmax_failures_per_account = 3\nmax_failures_per_address = 100\n\
             max_failures_account_wide = 100\nlockout_secs = 120\nmax_lockout_secs = 600\n"
        ),
    );
    let web = move |account: &'static str, pw: &'static str| {
        tokio::task::spawn_blocking(move || web_login(port, account, pw))
    };
    tokio::task::block_in_place(|| {
        wait_for("the web site", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
    });
    let rate_limited = |m: &DirMsg| {
        matches!(
            m,
            DirMsg::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    };

    // Wrong passwords over QUIC lock the web sign-in out of alice.
    for _ in 0..2 {
        let m = quic_login(addr, "alice", "wrong").await;
        assert!(
            matches!(
                m,
                DirMsg::Error {
                    code: ErrorCode::BadCredentials,
                    ..
                }
            ),
            "{m:?}"
        );
    }
    let m = quic_login(addr, "alice", "wrong").await;
    assert!(rate_limited(&m), "the third failure locks: {m:?}");
    assert_eq!(
        web("alice", PW).await.unwrap(),
        429,
        "web after QUIC failures"
    );

    // Wrong passwords on the web lock the QUIC login out of bob.
    assert_eq!(web("bob", "wrong").await.unwrap(), 401);
    assert_eq!(web("bob", "wrong").await.unwrap(), 401);
    assert_eq!(web("bob", "wrong").await.unwrap(), 429);
    let m = quic_login(addr, "bob", PW).await;
    assert!(rate_limited(&m), "QUIC after web failures: {m:?}");

    // Carol, whom nobody guessed at, gets in both ways from the same
    // address: the lock-outs are the accounts', and both paths work.
    let m = quic_login(addr, "carol", PW).await;
    assert!(matches!(m, DirMsg::LoggedIn { .. }), "{m:?}");
    assert_eq!(web("carol", PW).await.unwrap(), 303);
    drop(d);
}
