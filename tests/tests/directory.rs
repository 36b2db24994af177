//! `keyline-directory` as an administrator and systemd see it: the account
//! and forwarding CLI (with and without a running daemon), `--json`
//! output, `--check-config`, the notify lifecycle (READY, RELOADING with a
//! bad and a good file, STOPPING, exit 0 on SIGTERM), and a directory that
//! answers bad protocol input with clear errors. Loopback only.
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
use keyline_proto::dir::{DirMsg, ErrorCode};
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
        writeln!(child.stdin.take().unwrap(), "{s}").unwrap();
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
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = kill_on_panic(child.id());
    let got = notifications(&sock, "READY=1", Duration::from_secs(15));
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
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
