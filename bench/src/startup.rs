//! The `startup` suite: process start → READY=1 on a `NOTIFY_SOCKET`
//! listener (what systemd waits for), with a fresh state directory (the
//! identity is made, the database created) and with an existing one;
//! the gateway's resident memory once idle; SIGTERM → exit.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::daemons::{tail, Daemon, Notify};
use crate::setup::Bins;
use crate::util::{self, round, Scratch, Summary};

/// How many starts of each kind.
#[derive(Debug, Clone)]
pub struct StartupConfig {
    pub runs: usize,
}

struct Start {
    ready_ms: f64,
    rss_ready_kib: u64,
    rss_idle_kib: u64,
    stop_ms: Option<f64>,
}

fn start_once(bin: &Path, state: &Path, args: &[&str], sock: &Path) -> Result<Start> {
    let notify = Notify::bind(sock)?;
    let mut d = Daemon::start(bin, state, args, &[("NOTIFY_SOCKET", sock)])?;
    let ready_at = notify
        .wait_for("READY=1", Duration::from_secs(10))
        .with_context(|| format!("{} never said READY:\n{}", bin.display(), tail(&d.log)))?;
    let pid = d.pid()?;
    let rss_ready_kib = util::rss_kib(pid)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle_kib = util::rss_kib(pid)?;
    d.check_alive()?;
    let stop_ms = d.stop().map(|t| t.as_secs_f64() * 1000.0);
    let _ = std::fs::remove_file(sock);
    Ok(Start {
        ready_ms: (ready_at - d.spawned).as_secs_f64() * 1000.0,
        rss_ready_kib,
        rss_idle_kib,
        stop_ms,
    })
}

fn summarise(starts: &[Start]) -> Value {
    let mut ready: Vec<f64> = starts.iter().map(|s| s.ready_ms).collect();
    let mut stop: Vec<f64> = starts.iter().filter_map(|s| s.stop_ms).collect();
    let r = Summary::of(&mut ready);
    let s = Summary::of(&mut stop);
    json!({
        "runs": starts.len(),
        "ready_ms": {"p50": round(r.p50, 2), "max": round(r.max, 2), "mean": round(r.mean, 2)},
        "rss_at_ready_kib_max": starts.iter().map(|s| s.rss_ready_kib).max(),
        "rss_idle_kib_max": starts.iter().map(|s| s.rss_idle_kib).max(),
        "rss_idle_kib_min": starts.iter().map(|s| s.rss_idle_kib).min(),
        "stop_ms": {"p50": round(s.p50, 2), "max": round(s.max, 2), "clean_exits": s.n},
    })
}

/// Run the suite.
pub fn run(bins: &Bins, cfg: &StartupConfig) -> Result<Value> {
    let mut scratch = Scratch::new("startup")?;
    let res = run_in(bins, cfg, &scratch);
    if res.is_err() {
        scratch.keep = true;
    }
    res
}

fn run_in(bins: &Bins, cfg: &StartupConfig, dir: &Scratch) -> Result<Value> {
    let runs = cfg.runs.max(1);
    eprintln!("keyline-bench startup: {runs} starts of each kind");
    let gw_args = ["run", "--listen", "127.0.0.1:0", "--no-mdns"];
    let agent_args = [
        "run",
        "--no-mdns",
        "--gateway",
        "127.0.0.1:9",
        "--audio-in",
        "silence",
        "--audio-out",
        "null",
        "--bind",
        "127.0.0.1:0",
    ];
    let sock = dir.join("notify.sock");
    let mut suite = json!({
        "note": "spawn → READY=1 on a NOTIFY_SOCKET listener; --no-mdns, loopback; RSS is VmRSS",
    });
    for (name, bin, args) in [
        ("gateway", &bins.gatewayd, &gw_args[..]),
        ("agent", &bins.agent, &agent_args[..]),
    ] {
        let mut fresh = Vec::new();
        for i in 0..runs {
            let state = dir.join(&format!("{name}-fresh{i}"));
            fresh.push(start_once(bin, &state, args, &sock)?);
        }
        let kept = dir.join(&format!("{name}-fresh0"));
        let mut existing = Vec::new();
        for _ in 0..runs {
            existing.push(start_once(bin, &kept, args, &sock)?);
        }
        suite[name] = json!({
            "fresh_state": summarise(&fresh),
            "existing_state": summarise(&existing),
        });
    }
    Ok(suite)
}
