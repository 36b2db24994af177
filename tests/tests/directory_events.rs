//! The directory's control API end to end, with a real `keyline-directory`
//! and two real terminals on loopback: a subscriber sees the exact events
//! of a call between them (registered, ringing, answered, ended), in JSON
//! and in words; a subscriber that never reads is dropped and told so
//! while the call goes on; malformed and unknown requests get clear
//! errors and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyline_tests::{
    add_account, bin, call_state, jstr, ok, start_terminal, terminal_registered, wait_for,
    wait_state, Daemon, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";

/// `keyline-directory events [--json]` for the directory `d`, its lines
/// on a channel.
struct Events {
    child: Child,
    rx: mpsc::Receiver<String>,
    /// Every line read so far, in order.
    seen: std::cell::RefCell<Vec<String>>,
}

impl Events {
    fn start(d: &Daemon, json: bool) -> Events {
        let mut cmd = Command::new(bin("keyline-directory"));
        cmd.arg("--state").arg(&d.state).arg("events");
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keyline-directory events");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Events {
            child,
            rx,
            seen: Default::default(),
        }
    }

    /// Every line so far, up to and with the first one `last` accepts
    /// (waiting for it up to 30 s).
    fn until(&self, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut from = 0;
        loop {
            {
                let seen = self.seen.borrow();
                if let Some(i) = seen[from..].iter().position(|l| last(l)) {
                    return seen[..from + i + 1].to_vec();
                }
                from = seen.len();
            }
            assert!(
                Instant::now() < deadline,
                "the awaited event never came; saw {} lines, the last: {:?}",
                from,
                self.seen.borrow().last()
            );
            if let Ok(l) = self.rx.recv_timeout(Duration::from_millis(200)) {
                self.seen.borrow_mut().push(l);
            }
        }
    }

    /// Waits (up to 30 s) until `n` lines so far match `which`.
    fn count(&self, n: usize, which: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have = self.seen.borrow().iter().filter(|l| which(l)).count();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} lines came; the last: {:?}",
                self.seen.borrow().last()
            );
            if let Ok(l) = self.rx.recv_timeout(Duration::from_millis(200)) {
                self.seen.borrow_mut().push(l);
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw request line on the directory's control socket; its reply.
fn raw(d: &Daemon, line: &str) -> Value {
    let mut s = UnixStream::connect(d.state.join("control.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// Registers and unregisters all of `account`'s numbers `rounds` times
/// with the client library: two events per number and round.
/// `after_round` runs after each round with the rounds done so far.
fn churn(
    scratch: &Scratch,
    listen: &str,
    fp: &str,
    account: &str,
    rounds: usize,
    mut after_round: impl FnMut(usize),
) {
    use keyline_dirclient::client::DirClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(scratch.join("churn")).unwrap();
        let id = keyline_net::Identity::load_or_create(&scratch.join("churn"), "churn").unwrap();
        let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        let (c, _events) = DirClient::connect(&ep, &id, listen.parse().unwrap(), Some(fp.into()))
            .await
            .unwrap();
        c.login(account, PW).await.unwrap();
        for r in 1..=rounds {
            c.register(&[], Vec::new()).await.unwrap();
            c.unregister().await.unwrap();
            after_round(r);
        }
        c.close();
    });
}

/// The events about the two terminals' numbers and their calls, short.
fn ours(v: &Value) -> Option<String> {
    let ev = v["event"].as_str()?;
    let mine = |n: &Value| matches!(n.as_str(), Some("1001" | "1002"));
    match ev {
        "registered" if mine(&v["number"]) => Some(format!(
            "registered {} {} {}",
            v["number"].as_str()?,
            v["account"].as_str()?,
            v["kind"].as_str()?
        )),
        "unregistered" if mine(&v["number"]) => {
            Some(format!("unregistered {}", v["number"].as_str()?))
        }
        "call-ringing" => Some(format!(
            "ringing {} -> {}",
            v["caller"].as_str()?,
            v["callee"].as_str()?
        )),
        "call-answered" => Some(format!("answered relayed={}", v["relayed"])),
        "call-relayed" => Some("relayed".into()),
        "call-ended" => Some(format!(
            "ended {} {} relayed={}",
            v["outcome"].as_str()?,
            v["reason"].as_str()?,
            v["relayed"]
        )),
        _ => None,
    }
}

#[test]
fn a_call_between_two_terminals_is_told_step_by_step() {
    let scratch = Scratch::new("direvents");
    let dir = Daemon::start(
        None,
        bin("keyline-directory"),
        &scratch.join("dir"),
        &["serve", "--listen", "127.0.0.1:0"],
    )
    .expect("start the directory");
    let st = wait_for("the directory", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    assert_eq!(st["api"], 1, "{st}");
    let (listen, fp) = (
        jstr(&st, &["listen"]).unwrap(),
        jstr(&st, &["fingerprint"]).unwrap(),
    );
    add_account(&dir.state, "alice", &["1001"], PW);
    add_account(&dir.state, "bob", &["1002"], PW);
    // Carol's many numbers make many events at once.
    let many: Vec<String> = (0..20).map(|i| format!("30{i:02}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    add_account(&dir.state, "carol", &many, PW);

    let json = Events::start(&dir, true);
    let words = Events::start(&dir, false);
    // A subscriber that never reads after its first line.
    let mut stalled = UnixStream::connect(dir.state.join("control.sock")).unwrap();
    stalled.write_all(b"{\"cmd\": \"subscribe\"}\n").unwrap();
    // Its first line, byte by byte (nothing more is read).
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stalled.read_exact(&mut byte).unwrap();
        first.push(byte[0]);
    }
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(first["subscribed"], true, "{first}");
    // Give the two printers a moment to subscribe (they print nothing
    // until something happens).
    std::thread::sleep(Duration::from_millis(1000));

    let a = start_terminal(
        &scratch,
        None,
        &listen,
        &fp,
        "alice",
        PW,
        &["--bind", "127.0.0.1:0", "--audio-in", "silence"],
    );
    terminal_registered(&a);
    let b = start_terminal(
        &scratch,
        None,
        &listen,
        &fp,
        "bob",
        PW,
        &["--bind", "127.0.0.1:0", "--audio-in", "silence"],
    );
    terminal_registered(&b);

    ok(&a, &["dial", "1002"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    wait_state(&b, "connected");

    // Thousands of events while the call is up, in bursts of 20 the
    // readers keep up with (each round waits until both printers have
    // printed it, however busy the machine): the stalled subscriber falls
    // behind and is dropped; the call and the readers go on.
    churn(&scratch, &listen, &fp, "carol", 60, |r| {
        json.count(40 * r, |l| l.contains("\"number\":\"30"));
        words.count(40 * r, |l| l.starts_with("30"));
    });
    assert_eq!(call_state(&a).as_deref(), Some("connected"));
    assert_eq!(call_state(&b).as_deref(), Some("connected"));

    // Bad requests in the middle of the call: clear errors, nothing else.
    let r = raw(&dir, "{not json\n");
    assert!(
        r["error"].as_str().unwrap().starts_with("bad request"),
        "{r}"
    );
    let r = raw(&dir, "{\"cmd\": \"teleport\"}\n");
    assert_eq!(r["error"], "unknown command \"teleport\"");
    let r = raw(&dir, "{\"cmd\": \"reload\", \"logout\": 5}\n");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request: reload"),
        "{r}"
    );
    let r = raw(&dir, "{\"calls\": true}\n");
    assert_eq!(r["error"], "missing \"cmd\"");
    let calls = dir.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"].as_array().unwrap().len(), 1, "{calls}");
    assert_eq!(calls["calls"][0]["state"], "answered", "{calls}");
    assert_eq!(call_state(&a).as_deref(), Some("connected"));

    ok(&a, &["hangup"]);

    let seen: Vec<String> = json
        .until(|l| l.contains("\"call-ended\""))
        .iter()
        .filter_map(|l| ours(&serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            "registered 1001 alice terminal",
            "registered 1002 bob terminal",
            "ringing 1001 -> 1002",
            "answered relayed=false",
            "ended answered hangup relayed=false",
        ]
    );
    // The same in words.
    let said = words.until(|l| l.contains("ended:"));
    let said: Vec<&String> = said
        .iter()
        .filter(|l| l.contains("1001") && !l.starts_with("30") && !l.starts_with("disk"))
        .collect();
    assert!(
        said[0].starts_with("1001 (alice) registered by a terminal at 127.0.0.1:"),
        "{said:?}"
    );
    assert!(
        said.iter().any(|l| l.ends_with("1001 -> 1002 ringing")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l.ends_with("1001 -> 1002 answered (direct)")),
        "{said:?}"
    );
    assert!(
        said.last()
            .unwrap()
            .ends_with("1001 -> 1002 ended: answered (hangup, direct)"),
        "{said:?}"
    );

    // The stalled subscriber, reading at last, finds it was dropped.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut last = Value::Null;
    for l in BufReader::new(stalled).lines() {
        let Ok(l) = l else { break };
        last = serde_json::from_str(&l).unwrap();
    }
    assert_eq!(last["event"], "dropped", "{last}");
    assert!(last["reason"].as_str().unwrap().contains("too slow"));

    // The directory is unaffected.
    let st = dir.json(&["status"]).unwrap();
    assert_eq!(st["calls_active"], 0, "{st}");
    assert_eq!(st["bindings"], 2, "{st}");
    // The disk as the `disk` event tells it, for whoever subscribes later.
    assert!(
        st["disk"]["free_bytes"].as_u64().is_some_and(|f| f > 0),
        "{st}"
    );
    assert!(st["disk"]["low"].is_boolean(), "{st}");
}
