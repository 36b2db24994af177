//! A real call between two office workstations through the gateway, on a
//! LAN made of network namespaces: the three programs meet through mDNS,
//! the admin approves both stations by their pairing codes, 201 calls 202,
//! and each side's recording must carry the other's tones in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{bin, jnum, jstr, wait_for, Daemon, Lan, Scratch};
use serde_json::Value;

fn status(d: &Daemon) -> Value {
    d.json(&["status"]).expect("agent status")
}

fn office_call(relay: bool) {
    let scratch = Scratch::new(if relay { "relay" } else { "direct" });
    let lan = Lan::new(3).expect("build the office LAN");
    let (gw_ns, a_ns, b_ns) = (
        lan.hosts[0].ns.name.clone(),
        lan.hosts[1].ns.name.clone(),
        lan.hosts[2].ns.name.clone(),
    );
    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);

    let mut gw_args = vec![];
    if relay {
        gw_args = vec!["run", "--internal-media", "relay"];
    }
    let gw = Daemon::start(
        Some(&gw_ns),
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &gw_args,
    )
    .expect("start gateway");
    let agent = |ns: &str, name: &str, input: &str| {
        let out = scratch.join(&format!("{name}-heard.wav"));
        Daemon::start(
            Some(ns),
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--audio-in",
                scratch.join(input).to_str().unwrap(),
                "--audio-out",
                out.to_str().unwrap(),
                "--name",
                name,
            ],
        )
        .expect("start agent")
    };
    let mut a = agent(&a_ns, "alice", "a.wav");
    let mut b = agent(&b_ns, "bob", "b.wav");

    // Both stations find the gateway by mDNS and show a pairing code.
    let code = |d: &Daemon| {
        wait_for("a pairing code", Duration::from_secs(20), || {
            let s = d.json(&["status"]).ok()?;
            jstr(&s, &["code"])
        })
    };
    let (ca, cb) = (code(&a), code(&b));
    // The gateway lists the same codes as waiting.
    let agents = gw.json(&["agents"]).expect("gateway agents");
    let codes: Vec<String> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| jstr(x, &["code"]))
        .collect();
    assert!(codes.contains(&ca) && codes.contains(&cb), "{agents}");
    // An unapproved station cannot place calls.
    let out = a.ctl(&["dial", "202"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("approv"));

    assert!(gw.ctl(&["approve", &ca, "--ext", "201"]).status.success());
    assert!(gw.ctl(&["approve", &cb, "--ext", "202"]).status.success());
    for (d, ext) in [(&a, "201"), (&b, "202")] {
        wait_for("registration", Duration::from_secs(10), || {
            (jstr(&status(d), &["ext"]).as_deref() == Some(ext)).then_some(())
        });
    }

    let out = a.ctl(&["dial", "202"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("202 to ring", Duration::from_secs(5), || {
        (jstr(&status(&b), &["call", "state"]).as_deref() == Some("alerting")).then_some(())
    });
    assert_eq!(jstr(&status(&b), &["call", "peer"]).as_deref(), Some("201"));
    assert!(b.ctl(&["answer"]).status.success());
    for d in [&a, &b] {
        wait_for("media", Duration::from_secs(5), || {
            (jstr(&status(d), &["call", "state"]).as_deref() == Some("connected")).then_some(())
        });
    }
    let calls = gw.json(&["calls"]).expect("calls");
    assert_eq!(calls["calls"][0]["relayed"], Value::Bool(relay), "{calls}");
    std::thread::sleep(Duration::from_millis(u64::from(STEP_MS) * 5 + 800));
    assert!(a.ctl(&["hangup"]).status.success());
    let last = wait_for("202 to see the hang-up", Duration::from_secs(5), || {
        let s = status(&b);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&last, &["ended"]).as_deref(), Some("hangup"));
    let a_last = status(&a)["last_call"].clone();

    // At most 1% of frames lost, each way.
    for l in [&last, &a_last] {
        let played = jnum(l, &["media", "played"]).unwrap();
        let lost = jnum(l, &["media", "lost"]).unwrap();
        assert!(played > 150.0, "too little audio: {l}");
        assert!(
            lost <= (played + lost) * 0.01,
            "lost {lost} of {played}: {l}"
        );
    }

    if relay {
        let st = gw.json(&["status"]).expect("gateway status");
        let pkts = jnum(&st, &["relay", "packets"]).unwrap();
        let sent =
            jnum(&a_last, &["media", "sent"]).unwrap() + jnum(&last, &["media", "sent"]).unwrap();
        // A sender that runs late packs the frames it has into one QUIC
        // packet, so this is a floor, not an equality.
        assert!(
            pkts * 4.0 >= sent,
            "the forwarder moved {pkts} packets for {sent} media frames: {st}"
        );
    } else {
        let st = gw.json(&["status"]).expect("gateway status");
        assert_eq!(jnum(&st, &["relay", "packets"]), Some(0.0), "{st}");
    }

    // The call record.
    let cdr = wait_for("the call record", Duration::from_secs(5), || {
        let c = gw.json(&["cdr"]).ok()?;
        let rows = c["cdr"].as_array()?.clone();
        rows.into_iter().find(|r| r["outcome"] == "answered")
    });
    assert_eq!(
        (cdr["caller"].as_str(), cdr["callee"].as_str()),
        (Some("201"), Some("202"))
    );
    let (s, an, e) = (
        cdr["start_ms"].as_i64().unwrap(),
        cdr["answer_ms"].as_i64().unwrap(),
        cdr["end_ms"].as_i64().unwrap(),
    );
    assert!(s <= an && an < e && e - an >= 3000, "{cdr}");

    // Stop the stations so their recordings are complete, then listen.
    assert!(a.stop(), "alice did not stop cleanly:\n{}", a.log_text());
    assert!(b.stop(), "bob did not stop cleanly:\n{}", b.log_text());
    assert_eq!(heard(&scratch.join("alice-heard.wav")), B_TONES.to_vec());
    assert_eq!(heard(&scratch.join("bob-heard.wav")), A_TONES.to_vec());
    drop(gw);
    drop(lan);
}

#[test]
fn internal_call_direct_over_mdns_lan() {
    office_call(false);
}

#[test]
fn internal_call_through_the_gateway_relay() {
    office_call(true);
}
