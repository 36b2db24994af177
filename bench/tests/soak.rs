//! The soak, short: `keyline-bench soak` for 60 s (20 s of warm-up: the
//! directory's allocator is still taking on the calls' working set for
//! the first half minute, which made 30 s runs fail one time in three) against the real
//! `keyline-directory` and `keyline-gatewayd` (built by `cargo build
//! --workspace --bins`, as `make test` does first), at a scale two busy
//! cores carry in CI: 1,000 terminals and 50 stations (the full soak is
//! 10,000 and 200 for ten minutes; see the README's "Soak"). It must pass
//! its own verdicts (memory and descriptors flat after the warm-up, no
//! call failed for a reason the load did not ask for), and its report
//! must show the churn it claims: calls completed in both halves, the
//! failures the load asked for, reconnections, media both ways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

fn n(v: &Value, path: &[&str]) -> u64 {
    common::at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{} is not a count in {v}", path.join(".")))
}

#[test]
fn a_short_soak_passes_its_verdicts() {
    let exe = common::bench_and_daemons(&["keyline-gatewayd", "keyline-directory"]);
    let out = std::env::temp_dir().join(format!("keyline-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    let t0 = Instant::now();
    let run = Command::new(exe)
        .args([
            "soak",
            "--no-build",
            "--seconds",
            "60",
            "--warmup-seconds",
            "20",
            "--terminals",
            "1000",
            "--stations",
            "50",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "keyline-bench soak failed:\n{stdout}\n{stderr}"
    );
    assert!(took < Duration::from_secs(240), "the soak took {took:?}");
    assert!(
        stdout.contains("PASS no call failed unexpectedly"),
        "{stdout}"
    );

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("soak-latest.json")).unwrap())
            .unwrap();
    assert_eq!(doc["ok"], true, "{}", doc["verdicts"]);
    let verdicts = doc["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 6);
    assert!(verdicts.iter().all(|v| v["ok"] == true), "{verdicts:?}");
    for half in ["directory", "gateway"] {
        let c = &doc[half]["calls"];
        assert!(n(c, &["calls_completed"]) >= 10, "{half}: {c}");
        assert_eq!(n(c, &["failed_unexpectedly_total"]), 0, "{half}: {c}");
        assert!(n(c, &["failed_as_asked_total"]) > 0, "{half}: {c}");
        assert!(n(c, &["failed_as_asked", "busy"]) > 0, "{half}: {c}");
        assert!(n(c, &["reconnects"]) > 0, "{half}: {c}");
        let sent = n(c, &["media_datagrams_sent"]);
        assert!(sent > 0, "{half}: {c}");
        assert!(
            n(c, &["media_datagrams_received"]) * 10 >= sent * 9,
            "{half}: {c}"
        );
        for at in ["after_warmup", "at_end"] {
            assert!(n(&doc[half], &[at, "rss_kib"]) > 0, "{half}: {}", doc[half]);
            assert!(n(&doc[half], &[at, "fds"]) > 0, "{half}: {}", doc[half]);
        }
    }
    assert_eq!(n(&doc, &["directory", "quiet_at_end", "sessions"]), 1000);
    assert_eq!(n(&doc, &["directory", "quiet_at_end", "bindings"]), 1000);
    assert_eq!(n(&doc, &["gateway", "quiet_at_end", "stations_online"]), 50);
    assert!(doc["samples"].as_array().unwrap().len() >= 4);
    let _ = std::fs::remove_dir_all(&out);
}
