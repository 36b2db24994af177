//! The smoke mode end to end, so the benchmark harness does not rot: every
//! suite runs tiny against the real daemons (built by `cargo build
//! --workspace --bins`, as `make test` does first) and must write JSON
//! whose figures are sane. The figures themselves are not judged here:
//! benchmarks are not tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

fn num(v: &Value, path: &[&str]) -> f64 {
    common::at(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

fn positive(v: &Value, path: &[&str]) {
    let x = num(v, path);
    assert!(x > 0.0, "{} = {x}, expected > 0", path.join("."));
}

#[test]
fn smoke_mode_writes_sane_json() {
    let exe =
        common::bench_and_daemons(&["keyline-gatewayd", "keyline-agent", "keyline-directory"]);
    let out = std::env::temp_dir().join(format!("keyline-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    let t0 = Instant::now();
    let run = Command::new(exe)
        .args(["smoke", "--no-build", "--no-rt", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "keyline-bench smoke failed:\n{stdout}\n{stderr}"
    );
    assert!(took < Duration::from_secs(60), "smoke took {took:?}");
    assert!(stdout.contains("Targets of issue 6"), "{stdout}");

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("latest.json")).unwrap()).unwrap();
    let stamped = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-smoke.json"))
        .count();
    assert_eq!(stamped, 1, "one timestamped JSON file");
    assert_eq!(doc["mode"], "smoke");
    assert_eq!(
        doc["errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        doc["errors"]
    );
    positive(&doc, &["machine", "cores"]);
    assert!(doc["machine"]["kernel"].is_string());

    let s = &doc["suites"];
    for fwd in ["relay", "relay_metrics", "baseline"] {
        let first = &s[fwd]["steps"][0];
        assert!(first.is_object(), "{fwd} has no steps: {}", s[fwd]);
        positive(first, &["calls"]);
        positive(first, &["forwarded_pps"]);
        positive(first, &["cpu_us_per_packet"]);
        positive(first, &["one_way_p50_us"]);
        positive(first, &["direct_p50_us"]);
        positive(first, &["raw", "received"]);
        positive(&s[fwd], &["rss_idle_kib"]);
        assert!(num(&s[fwd], &["rss_per_call_kib"]) >= 0.0);
    }
    assert!(s["relay_vs_baseline"].is_object());
    assert!(s["metrics_on_vs_off"]["cpu_per_packet_ratio"].is_number());

    for media in ["direct", "relay"] {
        let m = &s["setup"][media];
        positive(m, &["calls"]);
        assert_eq!(num(m, &["failed"]), 0.0, "{m}");
        positive(m, &["dial_to_ringing_ms", "p50"]);
        positive(m, &["answer_to_media_caller_ms", "p50"]);
        positive(m, &["answer_to_media_callee_ms", "p50"]);
        positive(m, &["gateway_rss_after_kib"]);
    }
    assert_eq!(num(&s["setup"]["direct"], &["calls"]), 20.0);
    let two = &s["setup"]["two_offices"];
    assert_eq!(num(two, &["calls"]), 5.0, "{two}");
    assert_eq!(num(two, &["failed"]), 0.0, "{two}");
    positive(two, &["dial_to_ringing_ms", "p50"]);
    positive(two, &["dial_to_ringing_ms", "p99"]);
    positive(two, &["answer_to_media_caller_ms", "p50"]);
    positive(two, &["answer_to_media_callee_ms", "p50"]);
    positive(two, &["answer_to_audio_both_ends_ms", "p99"]);
    positive(
        &s["setup"]["relay"]["gateway_memory"],
        &["gateway_rss_with_calls_kib"],
    );

    for daemon in ["gateway", "agent"] {
        for state in ["fresh_state", "existing_state"] {
            positive(&s["startup"][daemon][state], &["ready_ms", "p50"]);
            positive(&s["startup"][daemon][state], &["rss_idle_kib_max"]);
        }
    }

    let d = &s["directory"];
    assert!(d.is_object(), "no directory suite: {s}");
    assert!(d["persisted"].is_string());
    for op in ["registrations", "lookups"] {
        let l = &d["load"]["levels"][0][op];
        assert!(l.is_object(), "no {op} figures: {d}");
        positive(l, &["per_s"]);
        positive(l, &["latency_us", "p50"]);
        assert_eq!(num(l, &["errors"]), 0.0, "{l}");
        assert!(num(l, &["directory_cpu_cores"]) >= 0.0);
    }
    positive(d, &["registrations_per_s"]);
    positive(d, &["lookups_per_s"]);
    let m = &d["memory"];
    assert_eq!(num(m, &["bindings"]), 2000.0, "{m}");
    positive(m, &["rss_bound_kib"]);
    // RSS moves in pages and the allocator may reuse freed memory: at
    // 2,000 bindings the difference may round to nothing.
    assert!(num(d, &["rss_per_binding_bytes"]) >= 0.0);

    // Registrations beside logins on the directory's web site.
    let w = &d["load"]["registrations_beside_web_logins"];
    positive(w, &["alone", "per_s"]);
    positive(w, &["with_web_logins", "per_s"]);
    assert_eq!(num(w, &["with_web_logins", "errors"]), 0.0, "{w}");
    positive(w, &["ratio"]);
    let web = &w["web"];
    positive(web, &["logins_ok"]);
    // With no CPU to spare the directory turns logins away ("busy, try
    // again") rather than slow registrations; nothing else may fail.
    assert_eq!(
        num(web, &["failed"]),
        num(web, &["turned_away_busy"]),
        "{web}"
    );
    assert_eq!(num(web, &["refused_by_limiter"]), 0.0, "{web}");
    for page in ["get_login", "post_login", "get_account"] {
        positive(web, &["latency_ms", page, "p50"]);
        positive(web, &["latency_ms", page, "p99"]);
    }
    assert_eq!(
        d["registrations_beside_web_logins_ratio"], w["ratio"],
        "{d}"
    );

    let c = &s["cluster"];
    assert!(c.is_object(), "no cluster suite: {s}");
    for op in ["registrations_per_s", "lookups_per_s"] {
        positive(c, &[op, "cluster_node"]);
        positive(c, &[op, "single"]);
    }
    for side in ["across_nodes", "single"] {
        assert_eq!(num(c, &["dial_to_ring_ms", side, "calls"]), 20.0, "{c}");
        positive(c, &["dial_to_ring_ms", side, "p50_ms"]);
    }
    for op in ["registrations", "lookups"] {
        assert_eq!(num(&c["cluster"][op], &["errors"]), 0.0, "{c}");
    }
    for side in ["cluster_node", "single"] {
        assert_eq!(num(c, &["idle_terminal", side, "terminals"]), 20.0, "{c}");
        positive(c, &["idle_terminal", side, "rss_after_kib"]);
    }

    let targets = doc["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 13);
    for t in targets {
        assert!(t["value"].is_number(), "target without a value: {t}");
    }
    assert!(doc["not_measured"].is_array());
    let _ = std::fs::remove_dir_all(&out);
}
