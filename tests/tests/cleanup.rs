//! The kit removes every namespace and process a test made, even when the
//! test fails part-way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use keyline_tests::{bin, wait_for, Daemon, Lan, Netns, Scratch};

#[test]
fn namespaces_and_processes_are_removed_when_a_test_panics() {
    let scratch = Scratch::new("cleanup");
    let state = scratch.join("gw");
    let recorded = std::sync::Mutex::new((Vec::<String>::new(), 0u32));
    let result = std::panic::catch_unwind(|| {
        let lan = Lan::new(2).unwrap();
        let gw = Daemon::start(
            Some(&lan.hosts[0].ns.name),
            bin("keyline-gatewayd"),
            &state,
            &["run", "--no-mdns"],
        )
        .unwrap();
        wait_for("gateway up", Duration::from_secs(10), || {
            gw.json(&["status"]).ok()
        });
        *recorded.lock().unwrap() = (lan.names(), gw.pid().unwrap());
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let (names, pid) = recorded.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    for n in &names {
        assert!(!Netns::exists(n), "namespace {n} left behind");
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "gateway process {pid} left running"
    );
}
