//! Small helpers shared by the suites: percentiles, `/proc` readings, CPU
//! pinning, the machine description and where the Keyline binaries are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

/// Percentiles of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarise `v` (sorted in place). Nearest-rank percentiles.
    pub fn of(v: &mut [f64]) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Summary {
            n: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Resident set size of a process, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    proc_status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Resident set size of this process, in KiB.
pub fn self_rss_kib() -> Result<u64> {
    proc_status_kib("/proc/self/status", "VmRSS:")
}

fn proc_status_kib(path: &str, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in {path}"))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("bad {key} line in {path}: {line}"))
}

/// CPU time (user + system) this process has used, all threads.
pub fn self_cpu() -> Result<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// Pin the calling thread (and the threads it starts afterwards) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))?;
    Ok(())
}

/// Put the calling thread under SCHED_FIFO at `prio` (with `chrt`); the
/// threads and processes it starts afterwards inherit it. Keeps other work
/// on a shared machine from landing in the figures. `false` when not
/// possible (not root, no `chrt`).
pub fn make_realtime(prio: u8) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let tid = nix::unistd::gettid().as_raw().to_string();
    Command::new("chrt")
        .args(["-f", "-p", &prio.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Load average and CPU steal so far, to judge how quiet the machine was.
pub fn load_snapshot() -> Value {
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| {
        t.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
    });
    let steal_ticks = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(8))
            .and_then(|x| x.parse::<u64>().ok())
    });
    json!({"loadavg_1m": load, "steal_ticks": steal_ticks})
}

/// Raise the soft open-file limit to the hard one: a forwarder holding
/// thousands of calls needs two sockets for each.
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    Ok(hard)
}

/// Number of CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// What the figures were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string());
    let mem_total = proc_status_kib("/proc/meminfo", "MemTotal:").ok();
    json!({
        "cores": cores(),
        "cpu_model": model,
        "kernel": kernel,
        "mem_total_kib": mem_total,
        "arch": std::env::consts::ARCH,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// The workspace this benchmark was built from.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `git rev-parse --short HEAD` and whether the tree has changes; `null`s
/// when git or the repository is absent.
pub fn git_revision() -> Value {
    let dir = workspace_dir();
    let run = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rev = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = rev
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    json!({"rev": rev, "dirty": dirty})
}

/// The directory holding the Keyline binaries: `--bin-dir`, else the one
/// this benchmark was started from (`target/<profile>/`).
pub fn bin_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating keyline-bench")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("keyline-bench has no parent directory")
}

/// Path of the Keyline binary `name` in `dir`, which must exist.
pub fn keyline_bin(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p keyline-gatewayd -p keyline-agent -p keyline-directory` \
             (or let keyline-bench build it: drop --no-build), or point --bin-dir at it",
            p.display()
        );
    }
    Ok(p)
}

/// Build the daemons the suites start, with the same cargo, profile and
/// target directory as this binary, so the figures are for the current
/// source. Only when run through cargo (`CARGO` set).
pub fn build_daemons(bin_dir: &Path) -> Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    let target = bin_dir.parent().context("binary directory has no parent")?;
    eprintln!(
        "keyline-bench: building keyline-gatewayd, keyline-agent and keyline-directory ({})",
        if release { "release" } else { "debug" }
    );
    let mut cmd = Command::new(cargo);
    // keyline-bench is in the set so that dependency features unify as they
    // did for `cargo run -p keyline-bench`: otherwise each of the two builds
    // undoes the other's and the daemons are rebuilt on every run.
    cmd.current_dir(workspace_dir())
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "-q"])
        .args([
            "-p",
            "keyline-gatewayd",
            "-p",
            "keyline-agent",
            "-p",
            "keyline-directory",
            "-p",
            "keyline-bench",
        ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the daemons failed");
    }
    Ok(())
}

/// Where results go: `--out`, else `<target dir>/bench/`.
pub fn out_dir(given: Option<&Path>, bin_dir: &Path) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    bin_dir
        .parent()
        .map(|t| t.join("bench"))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// A scratch directory removed on drop (kept, and named, after a failure
/// so the daemons' logs can be read).
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("keyline-bench-{}-{tag}{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep: false })
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("keyline-bench: logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Round to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Summary::of(&mut []).n, 0);
        let mut one = [7.0];
        assert_eq!(Summary::of(&mut one).p99, 7.0);
    }
}
