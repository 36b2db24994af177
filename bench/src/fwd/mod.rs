//! The forwarding suites, `relay` and `baseline`: the same load, the same
//! ramp and the same figures for the gateway's media relay
//! (`keyline_net::relay`, the code `keyline-gatewayd` runs) and for the
//! simplest fast plain-UDP forwarder ([`child`]).
//!
//! Each forwarder runs alone in a child process pinned to one core; the
//! load generator ([`loadgen`]) runs in this process pinned to another.
//! The number of concurrent calls doubles until a step loses more than
//! 0.1% of its packets or adds more than 5 ms at p99 to the one-way
//! latency measured without a forwarder at the same load; bisection then
//! narrows the limit. A failing step is retried once, so one hiccup of a
//! shared machine does not end the ramp.

pub mod child;
pub mod loadgen;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::util::{self, round};
use loadgen::{CallTargets, GenResult, LoadGen, Mark, Phases};

/// Most loss a held step may show.
pub const MAX_LOSS: f64 = 0.001;
/// Most added p99 one-way latency a held step may show, µs.
pub const MAX_ADDED_P99_US: f64 = 5000.0;
/// Generator schedule slip (p99, µs) beyond which its figures are suspect.
const MAX_SEND_LAG_US: f64 = 2000.0;

/// Which forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Relay,
    /// The relay with the gateway's Prometheus recorder installed and
    /// scraped every second.
    RelayMetrics,
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::RelayMetrics => "relay_metrics",
            Kind::Baseline => "baseline",
        }
    }

    fn subcommand(self) -> &'static str {
        match self {
            Kind::Relay | Kind::RelayMetrics => "serve-relay",
            Kind::Baseline => "serve-baseline",
        }
    }
}

/// A forwarder's own view of itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildStats {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub packets: u64,
    pub dropped: u64,
    pub allocations: u64,
}

/// A forwarder child process; killed on drop.
#[derive(Debug)]
pub struct ForwarderProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ForwarderProc {
    pub fn spawn(kind: Kind, cpu: Option<usize>, workers: usize) -> Result<ForwarderProc> {
        let exe = std::env::current_exe().context("locating keyline-bench")?;
        let mut cmd = Command::new(exe);
        cmd.arg(kind.subcommand());
        if let Some(c) = cpu {
            cmd.arg("--cpu").arg(c.to_string());
        }
        if matches!(kind, Kind::Relay | Kind::RelayMetrics) {
            cmd.arg("--workers").arg(workers.to_string());
        }
        if kind == Kind::RelayMetrics {
            cmd.arg("--metrics");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting keyline-bench {}", kind.subcommand()))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut p = ForwarderProc {
            child,
            stdin,
            stdout,
        };
        let hello = p.read_line()?;
        if !hello.starts_with("ready") {
            bail!("the {} forwarder said {hello:?}", kind.name());
        }
        Ok(p)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .context("reading from the forwarder")?;
        if n == 0 {
            bail!("the forwarder exited");
        }
        Ok(line.trim_end().to_string())
    }

    fn command(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}").context("writing to the forwarder")?;
        self.stdin.flush()?;
        self.read_line()
    }

    /// Make `n` more calls between `caller` and `callee`.
    pub fn alloc(
        &mut self,
        n: usize,
        caller: SocketAddrV4,
        callee: SocketAddrV4,
    ) -> Result<Vec<CallTargets>> {
        let reply = self.command(&format!("alloc {n} {caller} {callee}"))?;
        let mut words = reply.split_whitespace();
        if words.next() != Some("ok") {
            bail!("allocation failed: {reply}");
        }
        let addrs: Vec<SocketAddrV4> = words
            .map(|w| match w.parse::<SocketAddr>() {
                Ok(SocketAddr::V4(a)) => Ok(a),
                _ => bail!("bad address {w:?} from the forwarder"),
            })
            .collect::<Result<_>>()?;
        if addrs.len() != 2 * n {
            bail!("asked for {n} calls, got {} addresses", addrs.len());
        }
        Ok(addrs
            .chunks(2)
            .map(|p| CallTargets {
                from_caller: p[0],
                from_callee: p[1],
            })
            .collect())
    }

    pub fn stats(&mut self) -> Result<ChildStats> {
        let line = self.command("stats")?;
        let v: Value = serde_json::from_str(&line).context("forwarder stats")?;
        let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(ChildStats {
            cpu: Duration::from_micros(g("cpu_us")),
            rss_kib: g("rss_kib"),
            packets: g("packets"),
            dropped: g("dropped"),
            allocations: g("allocations"),
        })
    }
}

impl Drop for ForwarderProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a ramp runs.
#[derive(Debug, Clone)]
pub struct RampConfig {
    pub start: usize,
    pub max_calls: usize,
    /// Bisection steps after the first failure.
    pub refine: u32,
    /// Retry a failing step once.
    pub retry: bool,
    pub phases: Phases,
    /// Phases of the direct (no forwarder) reference runs.
    pub direct_phases: Phases,
    /// Wall-clock budget of one forwarder's ramp.
    pub budget: Duration,
    pub gen_cpu: Option<usize>,
    pub fwd_cpu: Option<usize>,
    pub relay_workers: usize,
    /// Stop before the forwarder's resident memory would pass this.
    pub mem_cap_kib: u64,
}

impl RampConfig {
    pub fn settings(&self) -> Value {
        json!({
            "start_calls": self.start,
            "max_calls": self.max_calls,
            "refine_steps": self.refine,
            "retry_failed_step": self.retry,
            "warmup_s": self.phases.warmup.as_secs_f64(),
            "measure_s": self.phases.measure.as_secs_f64(),
            "direct_measure_s": self.direct_phases.measure.as_secs_f64(),
            "frame_ms": loadgen::PERIOD.as_millis() as u64,
            "payload_bytes": [loadgen::MIN_SIZE, loadgen::MAX_SIZE],
            "max_loss": MAX_LOSS,
            "max_added_p99_ms": MAX_ADDED_P99_US / 1000.0,
            "generator_cpu": self.gen_cpu,
            "forwarder_cpu": self.fwd_cpu,
            "relay_worker_threads": self.relay_workers,
            "budget_s": self.budget.as_secs_f64(),
        })
    }
}

/// One load level through one forwarder.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub calls: usize,
    pub held: bool,
    /// Why it was not held, or why its figures are a lower bound.
    pub note: Option<String>,
    pub generator_limited: bool,
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub loss: f64,
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    pub one_way_p50_us: f64,
    pub one_way_p99_us: f64,
    pub direct_p50_us: f64,
    pub direct_p99_us: f64,
    /// Share of its core the forwarder used.
    pub cpu_util: f64,
    pub cpu_us_per_packet: f64,
    pub rss_kib: u64,
    pub forwarder_dropped: u64,
    pub raw: GenResult,
}

/// Reference runs without a forwarder, by call count.
pub type DirectCache = HashMap<usize, GenResult>;

/// The load levels a ramp climbs, in calls.
const LEVELS: &[usize] = &[
    10, 20, 40, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1600, 2000, 2400, 3200, 4000,
    4800, 6400, 8000, 12800,
];

/// The share of its core beyond which the generator's figures cannot be
/// trusted: the next level is not tried when it would pass this.
const GEN_MAX_CPU: f64 = 0.9;

/// One forwarder going up the ramp.
struct Lane {
    kind: Kind,
    fwd: ForwarderProc,
    idle: ChildStats,
    targets: Vec<CallTargets>,
    steps: Vec<Step>,
    best: Option<usize>,
    /// The first level not held because of the forwarder.
    fail: Option<usize>,
    done: bool,
    stop_reason: Option<String>,
    /// The ramp ended because the generator, not the forwarder, ran out.
    generator_limited: bool,
}

/// Run the ramp for each of `kinds`, interleaved level by level so that
/// both forwarders meet the same machine; one JSON value per kind.
pub fn run_suites(
    kinds: &[Kind],
    cfg: &RampConfig,
    direct: &mut DirectCache,
) -> Result<Vec<Value>> {
    std::thread::scope(|s| {
        s.spawn(|| ramp(kinds, cfg, direct))
            .join()
            .map_err(|_| anyhow::anyhow!("the forwarding ramp panicked"))?
    })
}

/// Measure `lane` at `n` calls (retrying a failure once when allowed).
fn measure(
    lane: &mut Lane,
    n: usize,
    gen: &mut LoadGen,
    cfg: &RampConfig,
    direct: &mut DirectCache,
    (caller, callee): (SocketAddrV4, SocketAddrV4),
) -> Result<Step> {
    if lane.targets.len() < n {
        let more = lane.fwd.alloc(n - lane.targets.len(), caller, callee)?;
        lane.targets.extend(more);
    }
    let d = match direct.get(&n) {
        Some(d) => d.clone(),
        None => {
            let t = gen.direct_targets(n)?;
            let r = gen.run(&t, cfg.direct_phases, |_| Ok(()))?;
            direct.insert(n, r.clone());
            r
        }
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let mut s0 = None;
        let mut s1 = None;
        let fwd = &mut lane.fwd;
        let r = gen.run(&lane.targets[..n], cfg.phases, |m| {
            let st = fwd.stats()?;
            match m {
                Mark::MeasureStart => s0 = Some(st),
                Mark::MeasureEnd => s1 = Some(st),
            }
            Ok(())
        })?;
        let (Some(s0), Some(s1)) = (s0, s1) else {
            bail!("the measured window was not marked");
        };
        let step = make_step(n, &r, &d, &s0, &s1);
        eprintln!(
            "  {:<8} {:>5} calls: {} loss {:.4}% added p50 {:.0} µs p99 {:.0} µs, cpu {:.0}% {:.2} µs/pkt, generator {:.0}%{}",
            lane.kind.name(),
            n,
            if step.held { "held" } else { "NOT held" },
            step.loss * 100.0,
            step.added_p50_us,
            step.added_p99_us,
            step.cpu_util * 100.0,
            step.cpu_us_per_packet,
            step.raw.generator_cpu * 100.0,
            step.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        if step.held || !cfg.retry || tries > 1 {
            return Ok(step);
        }
        // Keep the failed attempt on record, then try once more.
        lane.steps.push(step);
    }
}

fn ramp(kinds: &[Kind], cfg: &RampConfig, direct: &mut DirectCache) -> Result<Vec<Value>> {
    if let Some(c) = cfg.gen_cpu {
        util::pin_current_thread(c)?;
    }
    let _ = nix::sys::prctl::set_timerslack(1_000);
    let started = Instant::now();
    let mut gen = LoadGen::new()?;
    let ends = (gen.caller_addr()?, gen.callee_addr()?);
    let mut lanes = Vec::new();
    for &kind in kinds {
        let fwd = ForwarderProc::spawn(kind, cfg.fwd_cpu, cfg.relay_workers)?;
        lanes.push(Lane {
            kind,
            fwd,
            idle: ChildStats::default(),
            targets: Vec::new(),
            steps: Vec::new(),
            best: None,
            fail: None,
            done: false,
            stop_reason: None,
            generator_limited: false,
        });
    }
    std::thread::sleep(Duration::from_millis(100));
    for lane in &mut lanes {
        lane.idle = lane.fwd.stats()?;
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    eprintln!(
        "keyline-bench {}: ramping from {} calls",
        names.join(" + "),
        cfg.start
    );
    let mut levels: Vec<usize> = LEVELS
        .iter()
        .copied()
        .filter(|&n| n >= cfg.start && n < cfg.max_calls)
        .collect();
    levels.push(cfg.max_calls.max(cfg.start));
    let out_of_time = || started.elapsed() > cfg.budget;

    for (i, &n) in levels.iter().enumerate() {
        if lanes.iter().all(|l| l.done) {
            break;
        }
        if out_of_time() {
            for lane in lanes.iter_mut().filter(|l| !l.done) {
                lane.done = true;
                lane.stop_reason = Some("time budget reached".into());
            }
            break;
        }
        let mut gen_cpu: f64 = 0.0;
        for lane in lanes.iter_mut().filter(|l| !l.done) {
            if let Some(why) = memory_check(lane, n, cfg.mem_cap_kib)? {
                lane.done = true;
                lane.stop_reason = Some(why);
                continue;
            }
            let step = measure(lane, n, &mut gen, cfg, direct, ends)?;
            gen_cpu = gen_cpu.max(step.raw.generator_cpu);
            let (held, limited) = (step.held, step.generator_limited);
            lane.steps.push(step);
            if held {
                lane.best = Some(n);
            } else if limited {
                lane.done = true;
                lane.generator_limited = true;
                lane.stop_reason =
                    Some(format!("the load generator could not keep up at {n} calls"));
            } else {
                lane.done = true;
                lane.fail = Some(n);
            }
        }
        match levels.get(i + 1) {
            None => {
                for lane in lanes.iter_mut().filter(|l| !l.done) {
                    lane.done = true;
                    lane.stop_reason = Some(format!("held the most calls tried ({n})"));
                }
            }
            Some(&next) => {
                let predicted = gen_cpu * next as f64 / n as f64;
                if predicted > GEN_MAX_CPU {
                    for lane in lanes.iter_mut().filter(|l| !l.done) {
                        lane.done = true;
                        lane.generator_limited = true;
                        lane.stop_reason = Some(format!(
                            "the load generator would need {:.0}% of its core for {next} calls",
                            predicted * 100.0
                        ));
                    }
                }
            }
        }
    }
    // Narrow down where each forwarder that failed by itself breaks.
    for lane in &mut lanes {
        let Some(mut hi) = lane.fail else { continue };
        let mut lo = lane.best.unwrap_or(0);
        for _ in 0..cfg.refine {
            let gap = hi - lo;
            let mid = round_calls(lo + gap / 2);
            if gap <= (lo / 20).max(5) || mid <= lo || mid >= hi || out_of_time() {
                break;
            }
            if memory_check(lane, mid, cfg.mem_cap_kib)?.is_some() {
                break;
            }
            let step = measure(lane, mid, &mut gen, cfg, direct, ends)?;
            let held = step.held;
            lane.steps.push(step);
            if held {
                lo = mid;
                lane.best = Some(mid);
            } else {
                hi = mid;
            }
        }
        lane.stop_reason = Some(format!(
            "{hi} calls not held (loss > 0.1% or added p99 > 5 ms)"
        ));
    }
    let mut out = Vec::new();
    for lane in lanes {
        out.push(finish(lane, cfg, started)?);
    }
    Ok(out)
}

fn finish(mut lane: Lane, cfg: &RampConfig, started: Instant) -> Result<Value> {
    let fin = lane.fwd.stats()?;
    let allocated = fin.allocations;
    let rss_per_call = if allocated > 0 {
        fin.rss_kib.saturating_sub(lane.idle.rss_kib) as f64 / allocated as f64
    } else {
        0.0
    };
    let at_held = lane
        .best
        .and_then(|b| lane.steps.iter().rev().find(|s| s.calls == b && s.held));
    // Calls one core would hold: measured when the forwarder itself gave
    // out, else projected from its CPU use at the last level held.
    let projected = at_held
        .filter(|s| s.cpu_util > 0.0)
        .map(|s| (s.calls as f64 / s.cpu_util).floor());
    let (one_core, basis) = if lane.generator_limited || lane.fail.is_none() {
        (
            projected,
            "projected: calls / CPU share at the last level held",
        )
    } else {
        (lane.best.map(|b| b as f64), "measured")
    };
    eprintln!(
        "keyline-bench {}: held {} calls{}; {:.1} KiB resident per call",
        lane.kind.name(),
        lane.best.unwrap_or(0),
        if lane.generator_limited {
            " (the generator's limit, not the forwarder's)"
        } else {
            ""
        },
        rss_per_call
    );
    Ok(json!({
        "forwarder": lane.kind.name(),
        "held_calls": lane.best.unwrap_or(0),
        "generator_limited": lane.generator_limited,
        "calls_one_core": one_core,
        "calls_one_core_basis": basis,
        "calls_one_core_projected": projected,
        "stop_reason": lane.stop_reason,
        "at_held": at_held.map(step_summary),
        "rss_idle_kib": lane.idle.rss_kib,
        "rss_final_kib": fin.rss_kib,
        "calls_allocated": allocated,
        "rss_per_call_kib": round(rss_per_call, 2),
        "settings": cfg.settings(),
        "steps": lane.steps,
        "duration_s": round(started.elapsed().as_secs_f64(), 1),
    }))
}

/// Round a call count to a tidy number.
fn round_calls(n: usize) -> usize {
    match n {
        0..=99 => n,
        100..=999 => n / 10 * 10,
        _ => n / 50 * 50,
    }
}

/// `Some(reason)` when growing to `n` calls would pass the memory cap.
fn memory_check(lane: &mut Lane, n: usize, cap_kib: u64) -> Result<Option<String>> {
    let have = lane.targets.len();
    if n <= have || have == 0 {
        return Ok(None);
    }
    let now = lane.fwd.stats()?;
    let per_call = now.rss_kib.saturating_sub(lane.idle.rss_kib) as f64 / have as f64;
    let projected = now.rss_kib as f64 + per_call * (n - have) as f64;
    if projected > cap_kib as f64 {
        return Ok(Some(format!(
            "stopped before {n} calls: {:.0} MiB resident projected (cap {} MiB)",
            projected / 1024.0,
            cap_kib / 1024
        )));
    }
    Ok(None)
}

fn make_step(n: usize, r: &GenResult, d: &GenResult, s0: &ChildStats, s1: &ChildStats) -> Step {
    let wall = r.measure_s.max(1e-9);
    let packets = s1.packets.saturating_sub(s0.packets);
    let cpu = s1.cpu.saturating_sub(s0.cpu);
    let added_p50 = r.latency_us.p50 - d.latency_us.p50;
    let added_p99 = r.latency_us.p99 - d.latency_us.p99;
    let limited = r.send_errors > 0
        || d.send_errors > 0
        || r.generator_cpu > 0.9
        || d.loss > MAX_LOSS
        || r.send_lag_us.p99 > MAX_SEND_LAG_US
        || d.send_lag_us.p99 > MAX_SEND_LAG_US;
    let held = r.loss <= MAX_LOSS && added_p99 <= MAX_ADDED_P99_US && r.received > 0;
    let mut notes = Vec::new();
    if r.loss > MAX_LOSS {
        notes.push(format!("loss {:.3}%", r.loss * 100.0));
    }
    if added_p99 > MAX_ADDED_P99_US {
        notes.push(format!("added p99 {:.1} ms", added_p99 / 1000.0));
    }
    if limited {
        notes.push(format!(
            "generator-limited: send lag p99 {:.0} µs, {} send errors, direct loss {:.3}%",
            r.send_lag_us.p99.max(d.send_lag_us.p99),
            r.send_errors + d.send_errors,
            d.loss * 100.0
        ));
    }
    Step {
        calls: n,
        held,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        generator_limited: limited,
        offered_pps: round(r.sent as f64 / wall, 0),
        forwarded_pps: round(packets as f64 / wall, 0),
        loss: r.loss,
        added_p50_us: round(added_p50, 1),
        added_p99_us: round(added_p99, 1),
        one_way_p50_us: round(r.latency_us.p50, 1),
        one_way_p99_us: round(r.latency_us.p99, 1),
        direct_p50_us: round(d.latency_us.p50, 1),
        direct_p99_us: round(d.latency_us.p99, 1),
        cpu_util: round(cpu.as_secs_f64() / wall, 3),
        cpu_us_per_packet: if packets == 0 {
            0.0
        } else {
            round(cpu.as_secs_f64() * 1e6 / packets as f64, 3)
        },
        rss_kib: s1.rss_kib,
        forwarder_dropped: s1.dropped.saturating_sub(s0.dropped),
        raw: r.clone(),
    }
}

fn step_summary(s: &Step) -> Value {
    json!({
        "calls": s.calls,
        "forwarded_pps": s.forwarded_pps,
        "loss": s.loss,
        "added_p50_us": s.added_p50_us,
        "added_p99_us": s.added_p99_us,
        "cpu_util": s.cpu_util,
        "cpu_us_per_packet": s.cpu_us_per_packet,
    })
}

/// Relay figures as ratios to the baseline's. CPU per packet is compared
/// at the largest call count both held (the same offered load), and at
/// each one's own limit.
pub fn compare(relay: &Value, baseline: &Value) -> Value {
    let held = |v: &Value| v["held_calls"].as_f64().unwrap_or(0.0);
    let one_core = |v: &Value| v["calls_one_core"].as_f64().unwrap_or(0.0);
    let measured = |v: &Value| v["calls_one_core_basis"] == "measured";
    let steps_where = |v: &Value, held_only: bool| -> Vec<(u64, f64, f64, f64, f64)> {
        v["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| !held_only || s["held"] == true)
                    .filter_map(|s| {
                        Some((
                            s["calls"].as_u64()?,
                            s["cpu_us_per_packet"].as_f64()?,
                            s["added_p50_us"].as_f64()?,
                            s["added_p99_us"].as_f64()?,
                            s["cpu_util"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let steps = |v: &Value| steps_where(v, true);
    let (rs, bs) = (steps(relay), steps(baseline));
    let common = rs
        .iter()
        .filter_map(|r| bs.iter().find(|b| b.0 == r.0).map(|b| (r, b)))
        .max_by_key(|(r, _)| r.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(round(a / b, 3)) } else { None };
    let at = |v: &Value, k: &str| v["at_held"][k].as_f64().unwrap_or(0.0);
    // CPU per forwarded packet is measured at every step, held or not
    // (whether a step is held is about loss and latency, which a busy
    // machine spoils first). When the two ramps share no held step and
    // one of them held none, they are compared at the most calls both
    // ran with packets forwarded, at the same offered load, and the
    // basis says so.
    let (ra, ba) = (steps_where(relay, false), steps_where(baseline, false));
    let common_any = ra
        .iter()
        .filter(|r| r.1 > 0.0)
        .filter_map(|r| ba.iter().find(|b| b.0 == r.0 && b.1 > 0.0).map(|b| (r, b)))
        .max_by_key(|(r, _)| r.0);
    let at_limit = match (
        at(relay, "cpu_us_per_packet"),
        at(baseline, "cpu_us_per_packet"),
    ) {
        (r, b) if r > 0.0 => ratio(r, b),
        _ => None,
    };
    let (cpu_ratio, cpu_basis, cpu_us) = match (common, at_limit, common_any) {
        (Some((r, b)), _, _) if ratio(r.1, b.1).is_some() => (
            ratio(r.1, b.1),
            "the most calls both held",
            Some((r.0, r.1, b.1)),
        ),
        (_, Some(x), _) => (Some(x), "each at its own limit", None),
        (_, None, Some((r, b))) => (
            ratio(r.1, b.1),
            "the most calls both ran (not held by both: a disturbed run)",
            Some((r.0, r.1, b.1)),
        ),
        _ => (None, "no step of both forwarded packets", None),
    };
    json!({
        "held_calls_ratio": ratio(one_core(relay), one_core(baseline)),
        "held_calls_basis": if measured(relay) && measured(baseline) {
            "measured"
        } else {
            "projected from CPU use (a ramp was limited by the load generator)"
        },
        "held_measured_ratio": ratio(held(relay), held(baseline)),
        "reference_calls": common.map(|(r, _)| r.0),
        // At the most calls both ramps ran; when they share no step (a
        // short or disturbed run), at the steps each held.
        "cpu_per_packet_ratio": cpu_ratio,
        "cpu_per_packet_basis": cpu_basis,
        "cpu_per_packet_us": cpu_us.map(|(calls, r, b)| json!({"calls": calls, "relay": r, "baseline": b})),
        "cpu_util_ratio": common.and_then(|(r, b)| ratio(r.4, b.4)),
        "added_p50_ratio": common.and_then(|(r, b)| ratio(r.2, b.2)),
        "added_p99_ratio": common.and_then(|(r, b)| ratio(r.3, b.3)),
        "cpu_per_packet_at_limit_ratio": ratio(at(relay, "cpu_us_per_packet"), at(baseline, "cpu_us_per_packet")),
        "pps_at_limit_ratio": ratio(at(relay, "forwarded_pps"), at(baseline, "forwarded_pps")),
        "rss_per_call_ratio": ratio(
            relay["rss_per_call_kib"].as_f64().unwrap_or(0.0),
            baseline["rss_per_call_kib"].as_f64().unwrap_or(0.0)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(calls: u64, held: bool, cpu_us_per_packet: f64) -> Value {
        json!({
            "calls": calls,
            "held": held,
            "cpu_us_per_packet": cpu_us_per_packet,
            "added_p50_us": 100.0,
            "added_p99_us": 900.0,
            "cpu_util": 0.1,
        })
    }

    fn ramp(steps: Vec<Value>, at_held: Option<Value>) -> Value {
        json!({"held_calls": 0, "steps": steps, "at_held": at_held})
    }

    #[test]
    fn cpu_per_packet_is_compared_at_the_most_calls_both_held() {
        let relay = ramp(
            vec![
                step(10, true, 12.0),
                step(20, true, 13.0),
                step(40, false, 30.0),
            ],
            None,
        );
        let base = ramp(vec![step(10, true, 10.0), step(20, true, 10.0)], None);
        let c = compare(&relay, &base);
        assert_eq!(c["cpu_per_packet_ratio"], 1.3);
        assert_eq!(c["reference_calls"], 20);
        assert_eq!(c["cpu_per_packet_basis"], "the most calls both held");
        assert_eq!(c["cpu_per_packet_us"]["calls"], 20);
    }

    #[test]
    fn a_ramp_that_held_nothing_is_compared_at_the_most_calls_both_ran() {
        // A busy machine: the relay's only step (and its retry) lost a
        // packet, so neither a shared held step nor its own limit exists.
        let relay = ramp(vec![step(10, false, 11.0), step(10, false, 12.0)], None);
        let base = ramp(
            vec![step(10, true, 10.0), step(20, true, 8.0)],
            Some(json!({"cpu_us_per_packet": 8.0, "forwarded_pps": 1.0})),
        );
        let c = compare(&relay, &base);
        assert_eq!(c["reference_calls"], Value::Null);
        // The latest try at 10 calls.
        assert_eq!(c["cpu_per_packet_ratio"], 1.2);
        assert_eq!(c["cpu_per_packet_us"]["calls"], 10);
        assert!(c["cpu_per_packet_basis"]
            .as_str()
            .is_some_and(|b| b.contains("not held")));
        // Nothing forwarded by one of them: no figure, and the basis says why.
        let idle = ramp(vec![step(10, false, 0.0)], None);
        let c = compare(&idle, &base);
        assert_eq!(c["cpu_per_packet_ratio"], Value::Null);
        assert_eq!(
            c["cpu_per_packet_basis"],
            "no step of both forwarded packets"
        );
    }
}
