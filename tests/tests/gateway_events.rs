//! The gateway's event stream end to end: `keyline-gatewayd events --json`
//! sees the exact events of two enrolments (pending, approved, online), a
//! call between the two stations (ringing, answered, ended with its
//! outcome) and a station leaving; a denied station is told so and stays
//! refused; the typed control API answers malformed and unknown requests
//! with clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyline_tests::{bin, jstr, ok, wait_for, wait_state, Daemon, LoopbackOffice};
use serde_json::Value;

/// `keyline-gatewayd events --json`, its lines on a channel.
struct GwEvents {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl GwEvents {
    fn start(gw: &Daemon) -> GwEvents {
        wait_for("the gateway's socket", Duration::from_secs(10), || {
            gw.state.join("control.sock").exists().then_some(())
        });
        let mut child = Command::new(bin("keyline-gatewayd"))
            .arg("--state")
            .arg(&gw.state)
            .args(["events", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keyline-gatewayd events");
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
        // The subscription is made before anything we wait for happens.
        std::thread::sleep(Duration::from_millis(500));
        GwEvents { child, rx }
    }

    /// The next `n` events that are about stations, enrolments or calls,
    /// each in a short form.
    fn next(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(ev) = self.rx.recv_timeout(left) else {
                panic!("only {seen:?} within 20 s");
            };
            if let Some(s) = short(&ev) {
                seen.push(s);
            }
        }
        seen
    }
}

impl Drop for GwEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event in a short form; `None` for kinds this test does not follow.
fn short(ev: &Value) -> Option<String> {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let c = &ev["call"];
    Some(match ev["event"].as_str()? {
        "enrolment-pending" => format!("pending:{}", s(&ev["code"])),
        "enrolment-approved" => format!("approved:{}:{}", s(&ev["ext"]), s(&ev["name"])),
        "enrolment-denied" => format!("denied:{}", s(&ev["code"])),
        "enrolment-left" => format!("left:{}", s(&ev["code"])),
        "station-online" => format!("online:{}:{}", s(&ev["ext"]), s(&ev["name"])),
        "station-offline" => format!("offline:{}", s(&ev["ext"])),
        "call" => {
            assert!(c["since_ms"].as_i64().unwrap() >= c["started_ms"].as_i64().unwrap());
            format!(
                "call:{}->{}({}):{}:{}",
                s(&c["caller"]),
                s(&c["callee"]),
                s(&c["callee_name"]),
                s(&c["state"]),
                if c["relayed"] == true {
                    "relayed"
                } else {
                    "direct"
                }
            )
        }
        "call-ended" => format!(
            "ended:{}->{}:{}",
            s(&c["caller"]),
            s(&c["callee"]),
            s(&ev["outcome"])
        ),
        _ => return None,
    })
}

fn code_of(d: &Daemon) -> String {
    wait_for("a pairing code", Duration::from_secs(10), || {
        jstr(&d.json(&["status"]).ok()?, &["code"])
    })
}

fn raw(gw: &Daemon, line: &str) -> Value {
    let mut s = UnixStream::connect(gw.state.join("control.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn the_gateway_streams_enrolments_calls_and_stations() {
    let office = LoopbackOffice::start("gwev", &[]);
    let ev = GwEvents::start(&office.gw);

    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let code_a = code_of(&a);
    assert_eq!(ev.next(1), [format!("pending:{code_a}")]);
    ok(
        &office.gw,
        &["approve", &code_a, "--ext", "201", "--name", "Alice"],
    );
    assert_eq!(ev.next(2), ["approved:201:Alice", "online:201:Alice"]);

    let b = office.agent("b", &["--audio-in", "tone:900", "--audio-out", "null"]);
    let code_b = code_of(&b);
    assert_eq!(ev.next(1), [format!("pending:{code_b}")]);
    ok(
        &office.gw,
        &["approve", &code_b, "--ext", "202", "--name", "Bob"],
    );
    assert_eq!(ev.next(2), ["approved:202:Bob", "online:202:Bob"]);
    keyline_tests::registered(&b, "202");

    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    ok(&a, &["hangup"]);
    assert_eq!(
        ev.next(3),
        [
            "call:201->202(Bob):ringing:direct",
            "call:201->202(Bob):answered:direct",
            "ended:201->202:answered",
        ]
    );
    // The record the event spoke of.
    let cdr = office.gw.json(&["cdr"]).unwrap();
    let last = cdr["cdr"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "answered");

    // A call the admin ends (the dispatcher's hang-up).
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    let calls = office.gw.json(&["calls"]).unwrap();
    let id = calls["calls"][0]["id"].as_u64().unwrap().to_string();
    ok(&office.gw, &["hangup", &id]);
    assert_eq!(
        ev.next(2),
        [
            "call:201->202(Bob):ringing:direct",
            "ended:201->202:cancelled"
        ]
    );

    drop(b);
    assert_eq!(ev.next(1), ["offline:202"]);

    // A station the admin refuses is told so, and stays refused.
    let c = office.agent("c", &["--audio-in", "silence", "--audio-out", "null"]);
    let code_c = code_of(&c);
    assert_eq!(ev.next(1), [format!("pending:{code_c}")]);
    ok(&office.gw, &["deny", &code_c]);
    assert_eq!(ev.next(1), [format!("denied:{code_c}")]);
    let agents = office.gw.json(&["agents"]).unwrap();
    let denied: Vec<&Value> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{agents}");
    assert_eq!(denied[0]["waiting"], false);

    // Bad requests: clear errors, and the gateway goes on.
    let r = raw(&office.gw, "{\"cmd\": \"teleport\"}\n");
    assert_eq!(r["error"], "unknown command \"teleport\"");
    let r = raw(&office.gw, "{\"cmd\": \"hangup\", \"call\": \"all\"}\n");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request: hangup"),
        "{r}"
    );
    let r = raw(&office.gw, "{\"cmd\": \"hangup\", \"call\": 999}\n");
    assert_eq!(r["error"], "no call 999 in progress");
    let r = raw(&office.gw, "{\"cmd\": \"status\"}\n");
    assert_eq!(r["ok"], true);
    assert_eq!(r["api"], 1);
    assert_eq!(r["stations_online"], 1);
}
