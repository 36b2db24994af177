//! Stations ride out a gateway restart: they reconnect with backoff and come
//! back on their extensions without a new approval (both sides pinned each
//! other). An unattended station answers by itself with `--auto-answer`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::{bin, free_udp_port, jstr, wait_for, Daemon, Scratch};

#[test]
fn stations_come_back_after_a_gateway_restart_and_auto_answer() {
    let scratch = Scratch::new("reconnect");
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let gw_args = ["run", "--no-mdns", "--listen", listen.as_str()];
    let mut gw =
        Daemon::start(None, bin("keyline-gatewayd"), &scratch.join("gw"), &gw_args).unwrap();
    let agent = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--no-mdns",
            "--gateway",
            &listen,
            "--audio-in",
            "tone:500",
            "--audio-out",
            "null",
        ];
        args.extend_from_slice(extra);
        Daemon::start(None, bin("keyline-agent"), &scratch.join(name), &args).unwrap()
    };
    let a = agent("a", &["--auto-answer", "1"]);
    let b = agent("b", &[]);
    for (d, ext) in [(&a, "201"), (&b, "202")] {
        let code = wait_for("code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        assert!(gw.ctl(&["approve", &code, "--ext", ext]).status.success());
    }
    let registered = |d: &Daemon, ext: &str, secs: u64| {
        wait_for("registration", Duration::from_secs(secs), || {
            (jstr(&d.json(&["status"]).ok()?, &["ext"])? == ext).then_some(())
        })
    };
    registered(&a, "201", 10);
    registered(&b, "202", 10);

    assert!(gw.stop(), "gateway did not stop cleanly");
    wait_for("stations to notice", Duration::from_secs(5), || {
        (jstr(&a.json(&["status"]).ok()?, &["state"])? != "registered").then_some(())
    });
    let gw2 = Daemon::start(None, bin("keyline-gatewayd"), &scratch.join("gw"), &gw_args).unwrap();
    // Backoff is capped at 8 s; no approval is needed the second time.
    registered(&a, "201", 15);
    registered(&b, "202", 15);

    // 202 calls 201, which answers by itself after a second.
    let t0 = std::time::Instant::now();
    assert!(b.ctl(&["dial", "201"]).status.success());
    wait_for("auto-answer", Duration::from_secs(5), || {
        (jstr(&b.json(&["status"]).ok()?, &["call", "state"])? == "connected").then_some(())
    });
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "answered too early"
    );
    let calls = gw2.json(&["calls"]).unwrap();
    assert_eq!(calls["calls"][0]["state"], "answered", "{calls}");
}
