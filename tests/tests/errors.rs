//! Bad input gets a clear error and disturbs nothing: unknown and busy
//! extensions, ring timeouts, a client that sends garbage, a station that
//! vanishes mid-call. On loopback, without mDNS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keyline_net::{endpoint, Identity};
use keyline_proto::codec::{read_frame, write_frame};
use keyline_proto::msg::{Msg, Role};
use keyline_proto::{MAX_MESSAGE, PROTOCOL_VERSION};
use keyline_tests::{bin, jnum, jstr, wait_for, Daemon, Scratch};
use serde_json::Value;

fn status(d: &Daemon) -> Value {
    d.json(&["status"]).expect("status")
}

fn state(d: &Daemon) -> Option<String> {
    jstr(&status(d), &["call", "state"])
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Connect as a fresh, unknown station and send `payload` raw on the
/// control stream after a proper hello; report how the gateway closed us.
async fn garbage_client(gw: SocketAddr, payload: Vec<u8>, hello_first: bool) -> String {
    let id = Identity::generate("garbage").unwrap();
    let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
    let cfg = endpoint::client_config(&id, None).unwrap();
    let conn = ep
        .connect_with(cfg, gw, endpoint::SERVER_NAME)
        .unwrap()
        .await
        .expect("connect to the gateway");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    if hello_first {
        write_frame(
            &mut send,
            &Msg::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Agent,
                name: Some("garbage".into()),
            },
            MAX_MESSAGE,
        )
        .await
        .unwrap();
        let first = read_frame(&mut recv, MAX_MESSAGE).await.unwrap().unwrap();
        assert!(matches!(Msg::from_cbor(&first), Ok(Msg::Pending { .. })));
    }
    send.write_all(&payload).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the gateway should drop a client that sends garbage");
    ep.close(0u32.into(), b"");
    reason.to_string()
}

#[test]
fn errors_are_clear_and_other_calls_are_undisturbed() {
    let scratch = Scratch::new("errors");
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--ring-timeout",
            "2",
            "--no-voicemail",
        ],
    )
    .unwrap();
    let gw_addr: SocketAddr = wait_for("gateway", Duration::from_secs(10), || {
        jstr(&gw.json(&["status"]).ok()?, &["listen"])?.parse().ok()
    });
    let agent = |name: &str, tone: &str| {
        Daemon::start(
            None,
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &gw_addr.to_string(),
                "--audio-in",
                tone,
                "--audio-out",
                "null",
            ],
        )
        .unwrap()
    };
    let a = agent("a", "tone:700");
    let b = agent("b", "tone:900");
    let mut c = agent("c", "tone:1100");
    for (d, ext) in [(&a, "201"), (&b, "202"), (&c, "203")] {
        let code = wait_for("pairing code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        let out = gw.ctl(&["approve", &code, "--ext", ext]);
        assert!(out.status.success(), "{}", stderr(&out));
        wait_for("registered", Duration::from_secs(10), || {
            (jstr(&status(d), &["ext"]).as_deref() == Some(ext)).then_some(())
        });
    }
    // Approving a code nobody shows, or a taken extension, is refused.
    let out = gw.ctl(&["approve", "000000"]);
    assert!(
        !out.status.success() && stderr(&out).contains("no station"),
        "{}",
        stderr(&out)
    );

    // Unknown extension: a clear error, and a call record.
    let out = a.ctl(&["dial", "299"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown number"), "{}", stderr(&out));
    // Not a number at all.
    let out = a.ctl(&["dial", "20\u{7}1"]);
    assert!(
        stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );

    // 201 calls 202; 203 then finds both busy.
    assert!(a.ctl(&["dial", "202"]).status.success());
    wait_for("ringing", Duration::from_secs(5), || {
        (state(&b).as_deref() == Some("alerting")).then_some(())
    });
    assert!(b.ctl(&["answer"]).status.success());
    wait_for("connected", Duration::from_secs(5), || {
        (state(&a).as_deref() == Some("connected")).then_some(())
    });
    for target in ["202", "201"] {
        let out = c.ctl(&["dial", target]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    }

    // Garbage from a stranger is dropped; the call carries on untouched.
    let before = jnum(&status(&a), &["call", "media", "received"]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut junk = 5u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0xff, 0xfe, 0x00, 0x13, 0x37]);
    let r1 = rt.block_on(garbage_client(gw_addr, junk.clone(), true));
    let r2 = rt.block_on(garbage_client(gw_addr, junk, false));
    let r3 = rt.block_on(garbage_client(
        gw_addr,
        u32::MAX.to_be_bytes().to_vec(),
        true,
    ));
    for r in [&r1, &r2, &r3] {
        assert!(r.contains("closed by peer"), "{r}");
    }
    // The call carries on: ten more frames arrive (a loaded machine gets
    // a few seconds).
    wait_for("media to keep arriving", Duration::from_secs(5), || {
        let after = jnum(&status(&a), &["call", "media", "received"])?;
        (after > before + 10.0).then_some(())
    });
    let s = status(&a);
    assert_eq!(jstr(&s, &["call", "state"]).as_deref(), Some("connected"));
    assert_eq!(
        gw.json(&["calls"]).unwrap()["calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert!(b.ctl(&["hangup"]).status.success());
    wait_for("201 told of the hang-up", Duration::from_secs(5), || {
        let s = status(&a);
        s["call"].is_null().then_some(())
    });

    // Nobody answers: the ring timeout (2 s here) ends the call for both.
    assert!(c.ctl(&["dial", "202"]).status.success());
    let last = wait_for("ring timeout", Duration::from_secs(6), || {
        let s = status(&c);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&last, &["ended"]).as_deref(), Some("no-answer"));
    assert!(status(&b)["call"].is_null());

    // A station that vanishes mid-call: the other end is told.
    assert!(a.ctl(&["dial", "203"]).status.success());
    wait_for("ringing", Duration::from_secs(5), || {
        (state(&c).as_deref() == Some("alerting")).then_some(())
    });
    assert!(c.ctl(&["answer"]).status.success());
    wait_for("connected", Duration::from_secs(5), || {
        (state(&a).as_deref() == Some("connected")).then_some(())
    });
    let pid = c.pid().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let _ = c.child.take().map(|mut ch| ch.wait());
    let last = wait_for("peer-lost", Duration::from_secs(20), || {
        let s = status(&a);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(
        jstr(&last, &["ended"]).as_deref(),
        Some("peer-lost"),
        "{last}"
    );

    let cdr = gw.json(&["cdr"]).unwrap();
    let outcomes: Vec<&str> = cdr["cdr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        [
            "unknown",
            "busy",
            "busy",
            "answered",
            "no-answer",
            "answered"
        ],
        "{cdr}"
    );
}

/// A raw station with a fresh certificate: says hello, gets its pairing
/// code (or the gateway's refusal) and stays connected until dropped.
struct Stranger {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    first: Msg,
}

impl Stranger {
    async fn hello(gw: SocketAddr) -> Stranger {
        let id = Identity::generate("stranger").unwrap();
        let ep = keyline_net::make_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        let cfg = endpoint::client_config(&id, None).unwrap();
        let conn = ep
            .connect_with(cfg, gw, endpoint::SERVER_NAME)
            .unwrap()
            .await
            .expect("connect to the gateway");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(
            &mut send,
            &Msg::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Agent,
                name: None,
            },
            MAX_MESSAGE,
        )
        .await
        .unwrap();
        let first =
            tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv, MAX_MESSAGE))
                .await
                .expect("an answer to hello")
                .unwrap()
                .unwrap();
        Stranger {
            ep,
            conn,
            _send: send,
            recv,
            first: Msg::from_cbor(&first).unwrap(),
        }
    }

    fn code(&self) -> String {
        match &self.first {
            Msg::Pending { code } => code.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn leave(self) {
        self.conn.close(0u32.into(), b"bye");
        self.ep.close(0u32.into(), b"bye");
    }
}

/// The pending stations the gateway lists: (code, waiting now).
fn pending(gw: &Daemon) -> Vec<(String, bool)> {
    let v = gw.json(&["agents"]).unwrap();
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "pending")
        .map(|a| {
            (
                a["code"].as_str().unwrap().to_string(),
                a["waiting"] == true,
            )
        })
        .collect()
}

/// Strangers that say hello and leave were all kept as pending
/// enrolments, for ever. Now at most `max_pending` are remembered (the
/// ones gone longest forgotten first), those gone more than
/// `pending_forget_secs` are forgotten, and a station connected and
/// waiting is always listed and can be approved; while `max_pending` are
/// connected and waiting, a newcomer is turned away with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_that_leave_are_forgotten_and_a_waiting_station_stays() {
    let scratch = Scratch::new("pending");
    let conf = scratch.join("gw.toml");
    std::fs::write(&conf, "pending_forget_secs = 2\nmax_pending = 5\n").unwrap();
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--config",
            conf.to_str().unwrap(),
        ],
    )
    .unwrap();
    let gw_addr: SocketAddr = tokio::task::block_in_place(|| {
        wait_for("gateway", Duration::from_secs(10), || {
            jstr(&gw.json(&["status"]).ok()?, &["listen"])?.parse().ok()
        })
    });
    let mut desk = Stranger::hello(gw_addr).await;
    let desk_code = desk.code();
    for _ in 0..20 {
        Stranger::hello(gw_addr).await.leave();
    }
    let listed = pending(&gw);
    assert!(listed.len() <= 5, "{listed:?}");
    assert!(listed.contains(&(desk_code.clone(), true)), "{listed:?}");
    // Gone for longer than pending_forget_secs: forgotten; the desk stays.
    let listed = tokio::task::block_in_place(|| {
        wait_for("strangers forgotten", Duration::from_secs(10), || {
            let l = pending(&gw);
            (l.len() == 1).then_some(l)
        })
    });
    assert_eq!(listed, vec![(desk_code.clone(), true)]);

    // Five connected and waiting: a sixth is turned away, clearly.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Stranger::hello(gw_addr).await);
    }
    let sixth = Stranger::hello(gw_addr).await;
    match &sixth.first {
        Msg::Error { code, message, .. } => {
            assert_eq!(code, "too-many-waiting");
            assert!(
                message.contains("already waiting for approval"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pending(&gw).len(), 5);

    // The desk is approved and registered.
    let out = gw.ctl(&["approve", &desk_code, "--ext", "201"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reg = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame(&mut desk.recv, MAX_MESSAGE),
    )
    .await
    .expect("registered in time")
    .unwrap()
    .unwrap();
    assert!(
        matches!(Msg::from_cbor(&reg), Ok(Msg::Registered { ref ext, .. }) if ext == "201"),
        "{:?}",
        Msg::from_cbor(&reg)
    );
    for o in others {
        o.leave();
    }
    sixth.leave();
}

/// Found by the hostile client (`tests/hostile.rs`): strangers saying
/// hello at the same moment were each counted against `max_pending`
/// before the others were listed as waiting, so more than `max_pending`
/// waited at once; and garbage from a waiting station dropped its
/// connection with no reason (code 0) instead of the protocol violation
/// (code 1) every other station is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_at_once_stay_within_max_pending_and_garbage_while_waiting_is_named() {
    let scratch = Scratch::new("pending-race");
    let conf = scratch.join("gw.toml");
    std::fs::write(&conf, "max_pending = 5\n").unwrap();
    let gw = Daemon::start(
        None,
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &[
            "run",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--config",
            conf.to_str().unwrap(),
        ],
    )
    .unwrap();
    let gw_addr: SocketAddr = tokio::task::block_in_place(|| {
        wait_for("gateway", Duration::from_secs(10), || {
            jstr(&gw.json(&["status"]).ok()?, &["listen"])?.parse().ok()
        })
    });
    let tasks: Vec<_> = (0..24)
        .map(|_| tokio::spawn(Stranger::hello(gw_addr)))
        .collect();
    let mut strangers = Vec::new();
    for t in tasks {
        strangers.push(t.await.unwrap());
    }
    let waiting = strangers
        .iter()
        .filter(|s| matches!(s.first, Msg::Pending { .. }))
        .count();
    let turned_away = strangers
        .iter()
        .filter(|s| matches!(&s.first, Msg::Error { code, .. } if code == "too-many-waiting"))
        .count();
    assert_eq!((waiting, turned_away), (5, 19), "at most max_pending wait");
    let listed = pending(&gw);
    assert!(listed.iter().filter(|(_, w)| *w).count() <= 5, "{listed:?}");

    // A waiting station sends garbage: closed, and told why.
    let idx = strangers
        .iter()
        .position(|s| matches!(s.first, Msg::Pending { .. }))
        .unwrap();
    let mut bad = strangers.swap_remove(idx);
    let mut garbage = 7u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x99]);
    bad._send.write_all(&garbage).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), bad.conn.closed())
        .await
        .expect("the gateway closes the connection");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), 1, "{c:?}");
            assert_eq!(&c.reason[..], b"protocol violation", "{c:?}");
        }
        other => panic!("{other:?}"),
    }
    bad.leave();
    for s in strangers {
        s.leave();
    }
}
