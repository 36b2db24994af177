//! What the benchmark harness's end-to-end tests share.

use std::path::Path;

use serde_json::Value;

/// The value at `path` in `v` (`Null` where it is missing).
pub fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |cur, p| &cur[p])
}

/// `keyline-bench` and the directory holding the daemons beside it; panics
/// naming the first daemon missing.
pub fn bench_and_daemons(daemons: &[&str]) -> &'static Path {
    let exe = Path::new(env!("CARGO_BIN_EXE_keyline-bench"));
    let bin_dir = exe.parent().expect("the binaries' directory");
    for daemon in daemons {
        assert!(
            bin_dir.join(daemon).exists(),
            "{} is missing: run `cargo build --workspace --bins` first (make test does)",
            bin_dir.join(daemon).display()
        );
    }
    exe
}
