//! The agent's control API end to end: subscribers see the exact events of
//! a call on both stations, bad requests get clear errors and change
//! nothing, and another user is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyline_tests::{bin, ok, status, wait_for, wait_state, Daemon, LoopbackOffice};
use serde_json::Value;

/// `keyline-agent events --json` for station `d`, its lines on a channel.
struct Events {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Events {
    fn start(d: &Daemon) -> Events {
        let mut child = Command::new(bin("keyline-agent"))
            .arg("--state")
            .arg(&d.state)
            .args(["events", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keyline-agent events");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Events { child, rx }
    }

    /// The call events until (and with) the call's end, as
    /// `state[+hold marks]` and `ended:REASON`.
    fn call_until_ended(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Ok(ev) = self.rx.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            match ev["event"].as_str() {
                Some("call") => {
                    let c = &ev["call"];
                    let mut s = c["state"].as_str().unwrap().to_string();
                    if c["on_hold"] == true {
                        s.push_str("+holding");
                    }
                    if c["held_by_peer"] == true {
                        s.push_str("+held");
                    }
                    seen.push(s);
                }
                Some("call-ended") => {
                    seen.push(format!("ended:{}", ev["reason"].as_str().unwrap()));
                    return seen;
                }
                _ => {}
            }
        }
        panic!("no call-ended event; saw {seen:?}");
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw request line on the station's control socket.
fn raw(d: &Daemon, line: &str) -> Value {
    let mut s = UnixStream::connect(d.state.join("control.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn subscribers_see_every_step_of_a_call_and_bad_requests_change_nothing() {
    let office = LoopbackOffice::start("ctlapi", &[]);
    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:900", "--audio-out", "null"]);
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    let ea = Events::start(&a);
    let eb = Events::start(&b);
    // A subscriber that never reads does not hold anything up.
    let mut stalled = UnixStream::connect(a.state.join("control.sock")).unwrap();
    stalled.write_all(b"{\"cmd\": \"subscribe\"}\n").unwrap();
    // Give the subscribers a moment to connect (they print nothing until
    // something happens).
    std::thread::sleep(Duration::from_millis(1000));

    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    wait_state(&b, "connected");
    ok(&a, &["hold"]);
    wait_for("held", Duration::from_secs(5), || {
        (status(&b)["call"]["held_by_peer"] == true).then_some(())
    });
    ok(&a, &["resume"]);
    wait_for("resumed", Duration::from_secs(5), || {
        (status(&b)["call"]["held_by_peer"] == false).then_some(())
    });

    // Bad requests in the middle of the call: clear errors, nothing else.
    let r = raw(&a, "{not json\n");
    assert!(
        r["error"].as_str().unwrap().starts_with("bad request"),
        "{r}"
    );
    let r = raw(&a, "{\"cmd\": \"teleport\"}\n");
    assert_eq!(r["error"], "unknown command \"teleport\"");
    let r = raw(&a, "{\"cmd\": \"answer\"}\n");
    assert_eq!(r["error"], "no call is ringing");
    let r = raw(&a, "{\"cmd\": \"dial\", \"number\": \"\"}\n");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(status(&a)["call"]["state"], "connected");

    ok(&a, &["hangup"]);
    assert_eq!(
        ea.call_until_ended(),
        [
            "dialing",
            "ringing",
            "connecting",
            "connected",
            "connected+holding",
            "connected",
            "ended:local-hangup"
        ]
    );
    assert_eq!(
        eb.call_until_ended(),
        [
            "alerting",
            "answering",
            "connecting",
            "connected",
            "connected+held",
            "connected",
            "ended:hangup"
        ]
    );
    drop(stalled);
}

#[test]
fn another_user_is_refused() {
    let office = LoopbackOffice::start("ctluid", &[]);
    let a = office.agent("a", &["--audio-in", "silence", "--audio-out", "null"]);
    wait_for("the agent's socket", Duration::from_secs(10), || {
        a.state.join("control.sock").exists().then_some(())
    });
    // Open the way to the socket so that only the daemon's own check can
    // refuse (the state directory is private otherwise).
    let chmod = |mode: &str, p: &std::path::Path| {
        assert!(Command::new("chmod")
            .arg(mode)
            .arg(p)
            .status()
            .unwrap()
            .success());
    };
    let mut p = a.state.clone();
    while p.pop() && p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
        chmod("a+x", &p);
    }
    chmod("a+rx", &a.state);
    chmod("a+rw", &a.state.join("control.sock"));
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin("keyline-agent"))
        .arg("--state")
        .arg(&a.state)
        .args(["status", "--json"])
        .output()
        .expect("runuser");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may not control this daemon"), "{err}");
    // The daemon's own user still gets in.
    assert_eq!(status(&a)["ok"], true);
}
