//! `keyline-bench`: how fast Keyline is and how its cost grows (issue 6).
//!
//! This crate owns the benchmark program and nothing else. It starts the
//! real daemons on loopback (127.0.0.1 only), or runs the exact code they
//! run, measures, prints a table and writes JSON under
//! `<target dir>/bench/` (`<UTC stamp>-<mode>.json` and `latest.json`).
//!
//! Suites (each a module, each a key under `suites` in the JSON):
//! - `relay` / `baseline` ([`fwd`]): the gateway's media forwarder
//!   (`keyline_net::relay`) and the simplest fast plain-UDP forwarder,
//!   loaded with Opus-sized datagrams until they break; calls held,
//!   packets/s, CPU per packet, added latency, memory per call, and the
//!   relay as ratios to the baseline;
//! - `setup` ([`setup`], [`offices`]): dial → ringing and answer → media
//!   over many calls between two real agents, through a real gateway
//!   (inside one office) and through two gateways and a real
//!   `keyline-directory` (across two offices);
//! - `startup` ([`startup`]): spawn → READY=1, idle memory, stop;
//! - `directory` ([`directory`]): the real `keyline-directory` under N
//!   concurrent QUIC clients: registrations/s, look-ups/s, and resident
//!   memory per binding at 100,000 bindings.
//! - `phone` ([`phone`], its own mode only: it needs Xvfb and a built
//!   `keyline-phone`): ring → window shown, the window's CPU idle and in a
//!   call, its memory.
//!
//! Modes: `all` (every suite, full size, bounded to about ten minutes),
//! `smoke` (every suite, tiny: a few seconds, for CI), or one suite by
//! name. A new suite is a module with a `run` returning its JSON, a
//! [`Suite`] variant, and its targets in [`report`].
//!
//! `soak` ([`soak`]) is not a suite but a long run: a real directory
//! with many terminals and a real gateway with many stations, churned at
//! a steady rate, watched for leaks; it exits non-zero when a verdict
//! fails (memory or descriptors not flat, a call failed unexpectedly).
//!
//! The hidden subcommands `serve-relay` and `serve-baseline` are the
//! forwarders under test, run as child processes so their CPU time and
//! memory are measured alone.

mod cluster;
mod daemons;
mod directory;
mod fwd;
mod offices;
mod phone;
mod rawdir;
mod report;
mod setup;
mod soak;
mod startup;
mod util;
mod video;
mod weblogin;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use directory::DirConfig;
use fwd::loadgen::Phases;
use fwd::{DirectCache, Kind, RampConfig};
use setup::{Bins, SetupConfig};
use startup::StartupConfig;
use video::VideoConfig;

#[derive(Parser, Debug)]
#[command(
    name = "keyline-bench",
    about = "Keyline benchmarks: media relay vs a plain-UDP forwarder, call set-up, start-up, memory and the directory",
    long_about = "Keyline benchmarks. Run as `cargo run --release -p keyline-bench -- <MODE>`. \
                  Everything runs on loopback; every mode stops by itself."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every suite at full size (a few minutes, at most about ten).
    All(Opts),
    /// Every suite, tiny (a few seconds): keeps the harness from rotting.
    Smoke(Opts),
    /// The gateway's media relay under a ramp of concurrent calls.
    Relay(Opts),
    /// The plain-UDP forwarder baseline under the same ramp.
    Baseline(Opts),
    /// Call set-up between two real agents: inside one office (one
    /// gateway), and across two offices (two gateways and a directory).
    Setup(Opts),
    /// Spawn → READY of the gateway and agent; idle memory.
    Startup(Opts),
    /// The directory: registrations/s and look-ups/s with N QUIC clients,
    /// memory per binding.
    Directory(Opts),
    /// The directory as a cluster (a real PostgreSQL and nats-server
    /// started here): one node's registrations/s, look-ups/s and CPU per
    /// request against the embedded single node in the same run, and
    /// dial → ring at the callee across two nodes.
    Cluster(Opts),
    /// The phone window under Xvfb: ring → window shown (p50/p99), its
    /// CPU idle and in a call, its memory.
    Phone(Opts),
    /// VP8 encode and decode CPU per frame at 640x480 and 1280x720, bytes
    /// per frame, and the in-process pipeline latency.
    Video(Opts),
    /// A long run against a real directory (many registered terminals)
    /// and a real gateway (many stations) with steady churn: calls, media,
    /// transfers, reconnections. Reports calls, memory, descriptors and
    /// CPU every interval; fails when memory or descriptors grow after the
    /// warm-up or a call fails for a reason the load did not ask for.
    Soak(SoakOpts),
    /// (internal) The relay under test, driven over stdin/stdout.
    #[command(hide = true)]
    ServeRelay {
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Install the gateway's metrics recorder and scrape it.
        #[arg(long)]
        metrics: bool,
    },
    /// (internal) The baseline forwarder, driven over stdin/stdout.
    #[command(hide = true)]
    ServeBaseline {
        #[arg(long)]
        cpu: Option<usize>,
    },
}

#[derive(Args, Debug, Clone, Default)]
struct Opts {
    /// Where to write the JSON (default: <target dir>/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where keyline-gatewayd and keyline-agent are (default: next to
    /// this program).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` for the daemons first.
    #[arg(long)]
    no_build: bool,
    /// Do not pin the forwarder and the load generator to their own cores.
    #[arg(long)]
    no_pin: bool,
    /// Run at normal priority instead of SCHED_FIFO 10 (which keeps other
    /// work on a shared machine out of the figures; needs root and chrt).
    #[arg(long)]
    no_rt: bool,
    /// Worker threads of the relay's tokio runtime (keyline-gatewayd uses 2).
    #[arg(long, default_value_t = 2, value_name = "N")]
    relay_workers: usize,
    /// Most concurrent calls a forwarder ramp tries.
    #[arg(long, value_name = "N")]
    max_calls: Option<usize>,
    /// Calls in the set-up timing loop (direct media).
    #[arg(long, value_name = "N")]
    calls: Option<usize>,
    /// Calls in the set-up timing loop across two offices.
    #[arg(long, value_name = "N")]
    office_calls: Option<usize>,
    /// Concurrent QUIC clients loading the directory (default: 16, 64 and
    /// 256 in turn, 512 requests in flight in all).
    #[arg(long, value_name = "N")]
    dir_clients: Option<usize>,
    /// Requests each directory client keeps in flight (default: 512 / clients).
    #[arg(long, value_name = "N")]
    dir_depth: Option<usize>,
    /// Bindings for the directory's memory figure.
    #[arg(long, value_name = "N")]
    bindings: Option<usize>,
    /// Connected, registered, idle terminals for the cluster suite's
    /// memory and keep-alive figures (default 2,000).
    #[arg(long, value_name = "N")]
    idle_terminals: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct SoakOpts {
    /// How long to run, in minutes (fractions allowed).
    #[arg(long, value_name = "M", conflicts_with = "seconds")]
    minutes: Option<f64>,
    /// How long to run, in seconds (instead of --minutes; default 10 minutes).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Warm-up before the memory and descriptor levels are taken
    /// (default: a quarter of the run, between 5 and 60 s).
    #[arg(long, value_name = "S")]
    warmup_seconds: Option<f64>,
    /// Seconds between two reports.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    interval_seconds: f64,
    /// Terminals registered with the directory.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    terminals: usize,
    /// Stations enrolled with the gateway (at most 298).
    #[arg(long, default_value_t = 200, value_name = "N")]
    stations: usize,
    /// Jobs started per second among the terminals (each is two calls and
    /// a transfer).
    #[arg(long, default_value_t = 10.0, value_name = "R")]
    dir_rate: f64,
    /// Jobs started per second among the stations.
    #[arg(long, default_value_t = 2.0, value_name = "R")]
    gw_rate: f64,
    /// How long each call talks, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    talk_ms: u64,
    /// Terminals sharing one directory account.
    #[arg(long, default_value_t = 100, value_name = "N")]
    terminals_per_account: usize,
    /// Where to write the JSON (default: <target dir>/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Where keyline-directory and keyline-gatewayd are (default: next to
    /// this program).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` for the daemons first.
    #[arg(long)]
    no_build: bool,
    /// Keep the daemons' state directories and logs (they are kept
    /// anyway when the soak could not run).
    #[arg(long)]
    keep: bool,
}

/// A family of figures: a key under `suites` in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    Relay,
    RelayMetrics,
    Baseline,
    Setup,
    Startup,
    Directory,
    Cluster,
    Video,
    Phone,
}

impl Suite {
    const ALL: [Suite; 8] = [
        Suite::Relay,
        Suite::RelayMetrics,
        Suite::Baseline,
        Suite::Setup,
        Suite::Startup,
        Suite::Directory,
        Suite::Cluster,
        Suite::Video,
    ];

    fn name(self) -> &'static str {
        match self {
            Suite::Relay => "relay",
            Suite::RelayMetrics => "relay_metrics",
            Suite::Baseline => "baseline",
            Suite::Setup => "setup",
            Suite::Startup => "startup",
            Suite::Directory => "directory",
            Suite::Cluster => "cluster",
            Suite::Video => "video",
            Suite::Phone => "phone",
        }
    }

    fn needs_daemons(self) -> bool {
        matches!(
            self,
            Suite::Setup | Suite::Startup | Suite::Directory | Suite::Cluster | Suite::Phone
        )
    }
}

/// Full-size figures or a quick check that the harness works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Full,
    Smoke,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::ServeRelay {
            cpu,
            workers,
            metrics,
        } => fwd::child::serve_relay(cpu, workers, metrics),
        Cmd::ServeBaseline { cpu } => fwd::child::serve_baseline(cpu),
        Cmd::All(o) => bench("all", Scale::Full, &Suite::ALL, &o),
        Cmd::Smoke(o) => bench("smoke", Scale::Smoke, &Suite::ALL, &o),
        Cmd::Relay(o) => bench(
            "relay",
            Scale::Full,
            &[Suite::Relay, Suite::RelayMetrics],
            &o,
        ),
        Cmd::Baseline(o) => bench("baseline", Scale::Full, &[Suite::Baseline], &o),
        Cmd::Setup(o) => bench("setup", Scale::Full, &[Suite::Setup], &o),
        Cmd::Startup(o) => bench("startup", Scale::Full, &[Suite::Startup], &o),
        Cmd::Directory(o) => bench("directory", Scale::Full, &[Suite::Directory], &o),
        Cmd::Cluster(o) => bench("cluster", Scale::Full, &[Suite::Cluster], &o),
        Cmd::Video(o) => bench("video", Scale::Full, &[Suite::Video], &o),
        Cmd::Phone(o) => bench("phone", Scale::Full, &[Suite::Phone], &o),
        Cmd::Soak(o) => soak(&o),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyline-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The two CPUs for the generator and the forwarder, if there are two.
fn pick_cpus(no_pin: bool) -> (Option<usize>, Option<usize>) {
    if no_pin {
        return (None, None);
    }
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return (None, None);
    };
    let allowed: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .take(2)
        .collect();
    match allowed.as_slice() {
        [g, f] => (Some(*g), Some(*f)),
        _ => (None, None),
    }
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(4 << 20)
}

fn ramp_config(scale: Scale, o: &Opts) -> RampConfig {
    let (gen_cpu, fwd_cpu) = pick_cpus(o.no_pin);
    let mem_cap_kib = (mem_available_kib() / 2).min(8 << 20);
    let ms = Duration::from_millis;
    match scale {
        Scale::Full => RampConfig {
            start: 50,
            max_calls: o.max_calls.unwrap_or(6400),
            refine: 3,
            retry: true,
            phases: Phases {
                warmup: ms(1000),
                measure: ms(5000),
                tail: ms(100),
                drain: ms(250),
            },
            direct_phases: Phases {
                warmup: ms(300),
                measure: ms(2500),
                tail: ms(100),
                drain: ms(250),
            },
            budget: Duration::from_secs(150),
            gen_cpu,
            fwd_cpu,
            relay_workers: o.relay_workers,
            mem_cap_kib,
        },
        Scale::Smoke => RampConfig {
            start: 10,
            max_calls: o.max_calls.unwrap_or(40),
            refine: 0,
            // A level a busy machine spoiled is tried once more.
            retry: true,
            phases: Phases {
                warmup: ms(100),
                measure: ms(300),
                tail: ms(50),
                drain: ms(100),
            },
            direct_phases: Phases {
                warmup: ms(100),
                measure: ms(200),
                tail: ms(50),
                drain: ms(100),
            },
            budget: Duration::from_secs(10),
            gen_cpu,
            fwd_cpu,
            relay_workers: o.relay_workers,
            mem_cap_kib,
        },
    }
}

fn setup_config(scale: Scale, o: &Opts) -> SetupConfig {
    match scale {
        Scale::Full => SetupConfig {
            calls: o.calls.unwrap_or(1000),
            relay_calls: 200,
            relay_pairs: 8,
            office_calls: o.office_calls.unwrap_or(300),
            budget: Duration::from_secs(150),
        },
        Scale::Smoke => SetupConfig {
            calls: o.calls.unwrap_or(20),
            relay_calls: 5,
            relay_pairs: 2,
            office_calls: o.office_calls.unwrap_or(5),
            budget: Duration::from_secs(20),
        },
    }
}

/// Clients × requests in flight per client for the directory: `--dir-clients`
/// or `clients`, each with `--dir-depth` or `in_flight / clients` requests.
fn dir_levels(o: &Opts, clients: &[usize], in_flight: usize) -> Vec<(usize, usize)> {
    let given = o.dir_clients.map(|n| vec![n.max(1)]);
    given
        .unwrap_or_else(|| clients.to_vec())
        .into_iter()
        .map(|n| (n, o.dir_depth.unwrap_or((in_flight / n).max(1))))
        .collect()
}

fn cluster_config(scale: Scale, o: &Opts) -> cluster::ClusterConfig {
    let ms = Duration::from_millis;
    let mut cfg = match scale {
        Scale::Full => cluster::ClusterConfig {
            clients: 64,
            depth: 8,
            warmup: ms(1000),
            measure: ms(5000),
            dials: 1000,
            idle: 2_000,
            idle_window: ms(5000),
        },
        Scale::Smoke => cluster::ClusterConfig {
            clients: 4,
            depth: 2,
            warmup: ms(200),
            measure: ms(500),
            dials: 20,
            idle: 20,
            idle_window: ms(500),
        },
    };
    if let Some(n) = o.idle_terminals {
        cfg.idle = n;
    }
    cfg
}

fn dir_config(scale: Scale, o: &Opts) -> DirConfig {
    let ms = Duration::from_millis;
    match scale {
        Scale::Full => DirConfig {
            levels: dir_levels(o, &[16, 64, 256], 512),
            clients_per_account: 8,
            warmup: ms(1000),
            measure: ms(5000),
            bindings: o.bindings.unwrap_or(100_000),
            numbers_per_account: 2000,
            web_rate: 50.0,
            web_accounts: 64,
            web_addresses: 16,
        },
        Scale::Smoke => DirConfig {
            levels: dir_levels(o, &[4], 16),
            clients_per_account: 2,
            warmup: ms(200),
            measure: ms(500),
            bindings: o.bindings.unwrap_or(2000),
            numbers_per_account: 500,
            web_rate: 50.0,
            web_accounts: 8,
            web_addresses: 4,
        },
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn bench(mode: &str, scale: Scale, suites: &[Suite], o: &Opts) -> Result<()> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bin_dir = util::bin_dir(o.bin_dir.as_deref())?;
    let out_dir = util::out_dir(o.out.as_deref(), &bin_dir);
    let build_started = Instant::now();
    if suites.iter().any(|s| s.needs_daemons()) && !o.no_build && o.bin_dir.is_none() {
        util::build_daemons(&bin_dir)?;
    }
    let bins = if suites
        .iter()
        .any(|s| matches!(s, Suite::Setup | Suite::Startup | Suite::Phone))
    {
        Some(Bins {
            gatewayd: util::keyline_bin(&bin_dir, "keyline-gatewayd")?,
            agent: util::keyline_bin(&bin_dir, "keyline-agent")?,
            directory: util::keyline_bin(&bin_dir, "keyline-directory")?,
        })
    } else {
        None
    };
    let dir_bin = if suites.contains(&Suite::Directory) || suites.contains(&Suite::Cluster) {
        Some(util::keyline_bin(&bin_dir, "keyline-directory")?)
    } else {
        None
    };
    let build_s = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    // Everything started from here on (forwarders, the generator thread,
    // daemons) inherits the scheduling policy.
    let realtime = !o.no_rt && util::make_realtime(10);
    let mut doc = json!({
        "schema": 1,
        "tool": "keyline-bench",
        "mode": mode,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "started_unix": unix,
        "machine": util::machine(),
        "git": util::git_revision(),
        "scheduling": if realtime { "SCHED_FIFO 10 (chrt)" } else { "normal" },
        "load_at_start": util::load_snapshot(),
        "suites": {},
    });
    let mut errors: Vec<String> = Vec::new();
    // The forwarders run together, level by level, so that they meet the
    // same machine; then the suites that start daemons.
    let kinds: Vec<Kind> = suites
        .iter()
        .filter_map(|s| match s {
            Suite::Relay => Some(Kind::Relay),
            Suite::RelayMetrics => Some(Kind::RelayMetrics),
            Suite::Baseline => Some(Kind::Baseline),
            _ => None,
        })
        .collect();
    if !kinds.is_empty() {
        let mut direct = DirectCache::new();
        match fwd::run_suites(&kinds, &ramp_config(scale, o), &mut direct) {
            Ok(values) => {
                for (kind, v) in kinds.iter().zip(values) {
                    doc["suites"][kind.name()] = v;
                }
            }
            Err(e) => {
                eprintln!("keyline-bench: the forwarding suites failed: {e:#}");
                errors.push(format!("relay/baseline: {e:#}"));
            }
        }
    }
    for &suite in suites {
        let res: Result<Value> = match suite {
            Suite::Relay | Suite::RelayMetrics | Suite::Baseline => continue,
            Suite::Setup => bins
                .as_ref()
                .context("daemons not located")
                .and_then(|b| setup::run(b, &setup_config(scale, o))),
            Suite::Startup => bins.as_ref().context("daemons not located").and_then(|b| {
                startup::run(
                    b,
                    &StartupConfig {
                        runs: if scale == Scale::Smoke { 2 } else { 10 },
                    },
                )
            }),
            Suite::Directory => dir_bin
                .as_ref()
                .context("keyline-directory not located")
                .and_then(|b| directory::run(b, &dir_config(scale, o))),
            Suite::Cluster => dir_bin
                .as_ref()
                .context("keyline-directory not located")
                .and_then(|b| cluster::run(b, &cluster_config(scale, o))),
            Suite::Phone => bins.as_ref().context("daemons not located").and_then(|b| {
                phone::run(
                    b,
                    &util::keyline_bin(&bin_dir, "keyline-phone")?,
                    &phone::PhoneConfig {
                        hidden_rings: o.calls.unwrap_or(10),
                        shown_rings: o.calls.map_or(30, |n| n * 3),
                        cpu_window: Duration::from_secs(10),
                    },
                )
            }),
            Suite::Video => video::run(&VideoConfig {
                frames: if scale == Scale::Smoke { 20 } else { 300 },
            }),
        };
        match res {
            Ok(v) => doc["suites"][suite.name()] = v,
            Err(e) => {
                eprintln!("keyline-bench: the {} suite failed: {e:#}", suite.name());
                errors.push(format!("{}: {e:#}", suite.name()));
            }
        }
    }
    report::add_comparison(&mut doc);
    report::finish(&mut doc);
    doc["errors"] = json!(errors);
    doc["load_at_end"] = util::load_snapshot();
    doc["duration_s"] = json!(util::round(started.elapsed().as_secs_f64(), 1));
    doc["build_s"] = json!(util::round(build_s, 1));
    let path = report::write(&doc, &out_dir, &utc_stamp(unix), mode)?;
    print!("{}", report::table(&doc));
    println!(
        "\nJSON: {} (and latest.json beside it); measured in {:.0} s{}",
        path.display(),
        started.elapsed().as_secs_f64(),
        if build_s >= 1.0 {
            format!(" after {build_s:.0} s building the daemons")
        } else {
            String::new()
        }
    );
    if !errors.is_empty() {
        anyhow::bail!("{} suite(s) failed: {}", errors.len(), errors.join("; "));
    }
    Ok(())
}

fn soak(o: &SoakOpts) -> Result<()> {
    let secs = match (o.seconds, o.minutes) {
        (Some(s), _) => s,
        (None, Some(m)) => m * 60.0,
        (None, None) => 600.0,
    };
    if !(secs.is_finite() && secs >= 5.0) {
        anyhow::bail!("the soak must run at least 5 seconds");
    }
    let warmup = o.warmup_seconds.unwrap_or((secs / 4.0).clamp(5.0, 60.0));
    if !(warmup.is_finite() && warmup >= 0.0) {
        anyhow::bail!("--warmup-seconds must be a number of seconds");
    }
    if !(o.interval_seconds.is_finite() && o.interval_seconds >= 1.0) {
        anyhow::bail!("--interval-seconds must be at least 1");
    }
    if !(o.dir_rate > 0.0 && o.gw_rate > 0.0) {
        anyhow::bail!("--dir-rate and --gw-rate must be above 0");
    }
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bin_dir = util::bin_dir(o.bin_dir.as_deref())?;
    let out_dir = util::out_dir(o.out.as_deref(), &bin_dir);
    if !o.no_build && o.bin_dir.is_none() {
        util::build_daemons(&bin_dir)?;
    }
    let dir_bin = util::keyline_bin(&bin_dir, "keyline-directory")?;
    let gw_bin = util::keyline_bin(&bin_dir, "keyline-gatewayd")?;
    let cfg = soak::SoakConfig {
        duration: Duration::from_secs_f64(secs),
        warmup: Duration::from_secs_f64(warmup),
        interval: Duration::from_secs_f64(o.interval_seconds),
        terminals: o.terminals,
        stations: o.stations,
        dir_rate: o.dir_rate,
        gw_rate: o.gw_rate,
        talk: Duration::from_millis(o.talk_ms.max(20)),
        per_account: o.terminals_per_account,
        keep: o.keep,
    };
    let load_at_start = util::load_snapshot();
    let mut doc = soak::run(&dir_bin, &gw_bin, &cfg)?;
    doc["tool"] = json!("keyline-bench");
    doc["mode"] = json!("soak");
    doc["command"] = json!(std::env::args().collect::<Vec<_>>().join(" "));
    doc["started_unix"] = json!(unix);
    doc["machine"] = util::machine();
    doc["git"] = util::git_revision();
    doc["load_at_start"] = load_at_start;
    doc["load_at_end"] = util::load_snapshot();
    let path = soak::write(&doc, &out_dir, &utc_stamp(unix))?;
    print!("{}", soak::summary(&doc));
    println!(
        "\nJSON: {} (and soak-latest.json beside it)",
        path.display()
    );
    if doc["ok"] != true {
        let failed: Vec<String> = doc["verdicts"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["ok"] != true)
                    .map(|v| {
                        format!(
                            "{} ({})",
                            v["verdict"].as_str().unwrap_or("?"),
                            v["detail"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        anyhow::bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_767_225_599), "20251231T235959Z");
    }
}
