//! Video calls between two office stations on a LAN of network
//! namespaces: each sends the moving test pattern (its frame counter and
//! send time painted into the picture) and writes the counters it reads
//! back from the pictures it decodes. Direct, and through the gateway's
//! forwarder: at least 95% of the frames sent are decoded, in order, the
//! glass-to-glass latency (send time in the picture to decode time) is
//! reported, and the audio beside the video stays clean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use keyline_tests::{bin, enrol, jnum, jstr, ok, wait_for, Daemon, Lan, Scratch};
use serde_json::Value;

fn status(d: &Daemon) -> Value {
    d.json(&["status"]).expect("agent status")
}

/// The counters and latencies (ms) of the pictures a station decoded.
fn decoded(path: &Path) -> (Vec<u32>, Vec<f64>) {
    let text = std::fs::read_to_string(path).expect("the decoded-frames log");
    let (mut counters, mut latency) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Ok(c), Ok(sent), Ok(dec)) = (
            f[0].parse::<u32>(),
            f[1].parse::<u64>(),
            f[2].parse::<u64>(),
        ) else {
            continue;
        };
        counters.push(c);
        latency.push(dec.saturating_sub(sent) as f64 / 1000.0);
    }
    (counters, latency)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn video_call(relay: bool, seconds: u64) {
    let scratch = Scratch::new(if relay { "video-relay" } else { "video" });
    let lan = Lan::new(3).expect("build the office LAN");
    let gw_args: &[&str] = if relay {
        &["run", "--internal-media", "relay"]
    } else {
        &[]
    };
    let gw = Daemon::start(
        Some(&lan.hosts[0].ns.name),
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        gw_args,
    )
    .expect("start gateway");
    let agent = |i: usize, name: &str, tone: &str| {
        let out = scratch.join(&format!("{name}-frames.csv"));
        Daemon::start(
            Some(&lan.hosts[i].ns.name),
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--audio-in",
                tone,
                "--audio-out",
                "null",
                "--video-in",
                "pattern",
                "--video-out",
                out.to_str().unwrap(),
                "--name",
                name,
            ],
        )
        .expect("start a station")
    };
    let mut a = agent(1, "alice", "tone:600");
    let mut b = agent(2, "bob", "tone:900");
    enrol(&gw, &a, "201");
    enrol(&gw, &b, "202");

    ok(&a, &["dial", "202"]);
    wait_for("202 to ring", Duration::from_secs(5), || {
        (jstr(&status(&b), &["call", "state"]).as_deref() == Some("alerting")).then_some(())
    });
    ok(&b, &["answer"]);
    for d in [&a, &b] {
        wait_for("media", Duration::from_secs(5), || {
            (jstr(&status(d), &["call", "state"]).as_deref() == Some("connected")).then_some(())
        });
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (sa, sb) = (status(&a), status(&b));
    let took = t0.elapsed().as_secs_f64();
    ok(&a, &["hangup"]);
    wait_for("202 to see the hang-up", Duration::from_secs(5), || {
        status(&b)["call"].is_null().then_some(())
    });
    let st = gw.json(&["status"]).expect("gateway status");
    let relayed_packets = jnum(&st, &["relay", "packets"]).unwrap_or(0.0);
    assert!(a.stop(), "alice did not stop cleanly:\n{}", a.log_text());
    assert!(b.stop(), "bob did not stop cleanly:\n{}", b.log_text());

    let mut report = String::new();
    for (who, s, log) in [
        ("alice", &sa, "bob-frames.csv"),
        ("bob", &sb, "alice-frames.csv"),
    ] {
        let v = &s["call"]["media"]["video"];
        let sent = jnum(v, &["frames_sent"]).unwrap();
        // The receiver of `who`'s pictures.
        let (counters, mut latency) = decoded(&scratch.join(log));
        assert!(
            sent >= 0.9 * 30.0 * took,
            "{who} sent {sent} frames in {took:.1} s: {v}"
        );
        assert!(
            counters.windows(2).all(|w| w[0] < w[1]),
            "{who}'s pictures decoded out of order or twice"
        );
        // Frames sent before the status snapshot, decoded by the end.
        let got = counters.iter().filter(|&&c| f64::from(c) < sent).count() as f64;
        assert!(
            got >= 0.95 * sent,
            "{who}: {got} of {sent} frames decoded (video {v})"
        );
        latency.sort_by(|x, y| x.total_cmp(y));
        report.push_str(&format!(
            "{who} -> other: {sent} frames sent, {got} decoded, glass to glass p50 {:.1} ms p99 {:.1} ms, {} kbit/s\n",
            pct(&latency, 0.5),
            pct(&latency, 0.99),
            jnum(v, &["kbps"]).unwrap_or(0.0),
        ));
        // The audio beside it stays clean.
        let m = &s["call"]["media"];
        let (played, lost) = (jnum(m, &["played"]).unwrap(), jnum(m, &["lost"]).unwrap());
        assert!(played > 40.0 * took, "too little audio: {m}");
        assert!(
            lost <= (played + lost) * 0.01,
            "audio lost {lost} of {played}: {m}"
        );
    }
    println!(
        "{} video call, {took:.1} s:\n{report}",
        if relay { "forwarded" } else { "direct" }
    );
    if relay {
        assert!(
            relayed_packets > 30.0 * took,
            "the forwarder moved {relayed_packets} packets"
        );
    } else {
        assert_eq!(relayed_packets, 0.0, "{st}");
    }
    drop(gw);
    drop(lan);
}

#[test]
fn a_direct_video_call_between_two_stations() {
    video_call(false, 20);
}

#[test]
fn a_video_call_through_the_gateway_forwarder() {
    video_call(true, 10);
}
