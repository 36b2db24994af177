//! The `setup` suite: call set-up inside one office, with the real
//! `keyline-gatewayd` and two real `keyline-agent`s on loopback.
//!
//! The agents are driven through their control sockets (one JSON object
//! per line): dial → the callee alerts → answer → both ends connected and
//! hearing media → hang up, many times over. The figures are the agents'
//! own (`last_call.timing`: dial → ringing at the caller, answer → media
//! session up at each end) plus what this driver saw (dial request →
//! ringing reply; answer request → both ends have received audio, which
//! the agents count once per 20 ms frame, so that figure is coarse).
//!
//! The same office is then run with `--internal-media relay`: first
//! several calls at once, to see the gateway's resident memory per
//! relayed call, then the timing loop through the relay. Last, the same
//! timing loop across two offices ([`crate::offices`]).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::daemons::{poll, tail, Control, Daemon};
use crate::util::{self, round, Scratch, Summary};

/// How much of the suite to run.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    /// Calls in the timing loop with direct media.
    pub calls: usize,
    /// Calls in the timing loop through the relay.
    pub relay_calls: usize,
    /// Concurrent relayed calls for the memory figure.
    pub relay_pairs: usize,
    /// Calls in the timing loop across two offices.
    pub office_calls: usize,
    /// Wall-clock budget of one timing loop.
    pub budget: Duration,
}

/// Where the daemons are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub gatewayd: std::path::PathBuf,
    pub agent: std::path::PathBuf,
    pub directory: std::path::PathBuf,
}

pub(crate) struct Station {
    pub(crate) daemon: Daemon,
    pub(crate) ctl: Control,
    pub(crate) ext: String,
}

struct Office {
    gw: Daemon,
    gw_ctl: Control,
    stations: Vec<Station>,
}

const POLL: Duration = Duration::from_micros(250);
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Start a gateway and `agents` stations, approve each as 201, 202, …
fn start_office(bins: &Bins, dir: &Path, relay: bool, agents: usize) -> Result<Office> {
    let gw_state = dir.join("gw");
    let mut gw = Daemon::start(
        &bins.gatewayd,
        &gw_state,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--internal-media",
            if relay { "relay" } else { "direct" },
        ],
        &[],
    )?;
    let mut gw_ctl = Control::connect(&gw.control(), Duration::from_secs(10))
        .with_context(|| format!("the gateway did not start:\n{}", tail(&gw.log)))?;
    gw.check_alive()?;
    let listen = gw_ctl.status()?["listen"]
        .as_str()
        .context("gateway status without listen address")?
        .to_string();
    let stations = start_stations(bins, dir, &gw_state, &listen, agents)?;
    Ok(Office {
        gw,
        gw_ctl,
        stations,
    })
}

/// Start `agents` stations (state `DIR/a0`, `DIR/a1`, …) on the gateway at
/// `listen` (state `gw_state`), approve each as 201, 202, … and wait until
/// each is registered.
pub(crate) fn start_stations(
    bins: &Bins,
    dir: &Path,
    gw_state: &Path,
    listen: &str,
    agents: usize,
) -> Result<Vec<Station>> {
    let mut daemons = Vec::new();
    for i in 0..agents {
        daemons.push(Daemon::start(
            &bins.agent,
            &dir.join(format!("a{i}")),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                listen,
                "--audio-in",
                "silence",
                "--audio-out",
                "null",
                "--bind",
                "127.0.0.1:0",
            ],
            &[],
        )?);
    }
    let mut stations = Vec::new();
    for (i, mut d) in daemons.into_iter().enumerate() {
        let ext = (201 + i).to_string();
        let mut ctl = Control::connect(&d.control(), Duration::from_secs(10))
            .with_context(|| format!("agent {i} did not start:\n{}", tail(&d.log)))?;
        let code = poll(
            "a pairing code",
            Duration::from_secs(10),
            Duration::from_millis(5),
            || Ok(ctl.status()?["code"].as_str().map(str::to_string)),
        )?;
        let out = Command::new(&bins.gatewayd)
            .arg("--state")
            .arg(gw_state)
            .args(["approve", &code, "--ext", &ext])
            .output()
            .context("running keyline-gatewayd approve")?;
        if !out.status.success() {
            bail!(
                "approving {code}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        poll(
            "registration",
            Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                let s = ctl.status()?;
                Ok((s["state"] == "registered" && s["ext"] == ext.as_str()).then_some(()))
            },
        )?;
        d.check_alive()?;
        stations.push(Station {
            daemon: d,
            ctl,
            ext,
        });
    }
    Ok(stations)
}

/// One call's figures, ms.
#[derive(Debug, Default)]
struct Sample {
    dial_to_ringing: Option<f64>,
    dial_to_ringing_client: f64,
    answer_to_media_caller: Option<f64>,
    answer_to_media_callee: Option<f64>,
    answer_to_audio_client: f64,
}

fn call_state(s: &Value) -> Option<&str> {
    s["call"]["state"].as_str()
}

fn received(s: &Value) -> u64 {
    s["call"]["media"]["received"].as_u64().unwrap_or(0)
}

/// One call's ids: the caller's and the callee's (the same inside one
/// office; each gateway numbers its own calls across offices).
type CallIds = (u64, u64);

/// Ring `b` from `a` by dialling `number` and answer; the call ids, when
/// the answer was sent, and how long the dial request took (ms: the agent
/// answers it when the gateway says the call rings).
fn ring_and_answer(
    a: &mut Station,
    b: &mut Station,
    number: &str,
) -> Result<(CallIds, Instant, f64)> {
    let t0 = Instant::now();
    let r = a.ctl.ok(&json!({"cmd": "dial", "number": number}))?;
    let ringing_client = t0.elapsed().as_secs_f64() * 1000.0;
    let call = r["call"].as_u64().context("dial reply without call id")?;
    let callee_call = poll("the callee to alert", STEP_TIMEOUT, POLL, || {
        let s = b.ctl.status()?;
        Ok((call_state(&s) == Some("alerting")).then(|| s["call"]["id"].as_u64()))
    })?
    .context("the alerting call has no id")?;
    let answered = Instant::now();
    b.ctl.ok(&json!({"cmd": "answer"}))?;
    Ok(((call, callee_call), answered, ringing_client))
}

fn wait_audio(a: &mut Station, b: &mut Station) -> Result<()> {
    poll("audio at both ends", STEP_TIMEOUT, POLL, || {
        let (sa, sb) = (a.ctl.status()?, b.ctl.status()?);
        Ok((call_state(&sa) == Some("connected")
            && call_state(&sb) == Some("connected")
            && received(&sa) > 0
            && received(&sb) > 0)
            .then_some(()))
    })
}

fn hang_up(a: &mut Station, b: &mut Station) -> Result<(Value, Value)> {
    a.ctl.ok(&json!({"cmd": "hangup"}))?;
    poll("both ends idle", STEP_TIMEOUT, POLL, || {
        let (sa, sb) = (a.ctl.status()?, b.ctl.status()?);
        Ok((sa["call"].is_null() && sb["call"].is_null()).then_some((sa, sb)))
    })
    .map(|(sa, sb)| (sa["last_call"].clone(), sb["last_call"].clone()))
}

fn one_call(a: &mut Station, b: &mut Station, number: &str) -> Result<Sample> {
    let ((call, callee_call), answered, ringing_client) = ring_and_answer(a, b, number)?;
    wait_audio(a, b)?;
    let audio = answered.elapsed().as_secs_f64() * 1000.0;
    let (la, lb) = hang_up(a, b)?;
    if la["id"].as_u64() != Some(call) || lb["id"].as_u64() != Some(callee_call) {
        bail!("last_call is not call {call} / {callee_call}: {la} / {lb}");
    }
    Ok(Sample {
        dial_to_ringing: la["timing"]["dial_to_ringing_ms"].as_f64(),
        dial_to_ringing_client: ringing_client,
        answer_to_media_caller: la["timing"]["answer_to_media_ms"].as_f64(),
        answer_to_media_callee: lb["timing"]["answer_to_media_ms"].as_f64(),
        answer_to_audio_client: audio,
    })
}

/// Bring a pair back to idle after a failed call.
fn reset(a: &mut Station, b: &mut Station) {
    for s in [&mut *a, &mut *b] {
        let _ = s.ctl.request(&json!({"cmd": "hangup"}));
    }
    let _ = poll("idle after a failure", STEP_TIMEOUT, POLL, || {
        let (sa, sb) = (a.ctl.status()?, b.ctl.status()?);
        Ok((sa["call"].is_null() && sb["call"].is_null()).then_some(()))
    });
}

fn summary(v: &mut [f64]) -> Value {
    let s = Summary::of(v);
    json!({
        "n": s.n,
        "p50": round(s.p50, 3),
        "p99": round(s.p99, 3),
        "max": round(s.max, 3),
        "mean": round(s.mean, 3),
    })
}

/// Place `calls` calls 201 → 202, one after another.
fn timing_loop(office: &mut Office, calls: usize, budget: Duration) -> Result<Value> {
    let gw_pid = office.gw.pid()?;
    let rss_before = util::rss_kib(gw_pid)?;
    let (first, rest) = office.stations.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut rest[0]);
    let number = b.ext.clone();
    let gw = &mut office.gw;
    let mut v = call_loop(a, b, &number, calls, budget, || gw.check_alive())?;
    v["gateway_rss_before_kib"] = json!(rss_before);
    v["gateway_rss_after_kib"] = json!(util::rss_kib(gw_pid)?);
    Ok(v)
}

/// Place `calls` calls from `a` to `number` (which rings `b`), one after
/// another; `alive` checks the daemons in between after a failure.
pub(crate) fn call_loop(
    a: &mut Station,
    b: &mut Station,
    number: &str,
    calls: usize,
    budget: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Value> {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(calls);
    let mut failures: Vec<String> = Vec::new();
    for i in 0..calls {
        if started.elapsed() > budget {
            eprintln!("  time budget reached after {i} calls");
            break;
        }
        match one_call(a, b, number) {
            Ok(s) => samples.push(s),
            Err(e) => {
                failures.push(format!("call {i}: {e:#}"));
                a.daemon.check_alive()?;
                b.daemon.check_alive()?;
                alive()?;
                reset(a, b);
                if failures.len() > (calls / 20).max(5) {
                    bail!("too many failed calls: {}", failures.join("; "));
                }
            }
        }
        if (i + 1) % 250 == 0 {
            eprintln!("  {} calls", i + 1);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let pick =
        |f: fn(&Sample) -> Option<f64>| -> Vec<f64> { samples.iter().filter_map(f).collect() };
    Ok(json!({
        "calls": samples.len(),
        "failed": failures.len(),
        "failures": failures.iter().take(5).collect::<Vec<_>>(),
        "dial_to_ringing_ms": summary(&mut pick(|s| s.dial_to_ringing)),
        "dial_to_ringing_client_ms": summary(&mut pick(|s| Some(s.dial_to_ringing_client))),
        "answer_to_media_caller_ms": summary(&mut pick(|s| s.answer_to_media_caller)),
        "answer_to_media_callee_ms": summary(&mut pick(|s| s.answer_to_media_callee)),
        "answer_to_audio_both_ends_ms": summary(&mut pick(|s| Some(s.answer_to_audio_client))),
        "calls_per_s": round(samples.len() as f64 / wall.max(1e-9), 2),
        "duration_s": round(wall, 1),
    }))
}

/// One round of `pairs` relayed calls at once, media flowing a second,
/// then hung up: the call ids, the gateway's resident memory during and
/// after, and the relay's packets.
fn relay_round(
    office: &mut Office,
    pairs: usize,
    gw_pid: u32,
) -> Result<(Vec<Value>, u64, u64, u64)> {
    let mut calls = Vec::new();
    for k in 0..pairs {
        let (first, rest) = office.stations[2 * k..].split_at_mut(1);
        let number = rest[0].ext.clone();
        calls.push(ring_and_answer(&mut first[0], &mut rest[0], &number)?.0 .0);
    }
    for k in 0..pairs {
        let (first, rest) = office.stations[2 * k..].split_at_mut(1);
        wait_audio(&mut first[0], &mut rest[0])?;
    }
    // Let media flow through every allocation for a while.
    std::thread::sleep(Duration::from_secs(1));
    let during = util::rss_kib(gw_pid)?;
    let st = office.gw_ctl.status()?;
    let active = st["relay"]["active"].as_u64().unwrap_or(0);
    let packets = st["relay"]["packets"].as_u64().unwrap_or(0);
    if active != pairs as u64 || packets == 0 {
        bail!("expected {pairs} active relayed calls with traffic, the gateway says {st}");
    }
    for k in 0..pairs {
        let (first, rest) = office.stations[2 * k..].split_at_mut(1);
        hang_up(&mut first[0], &mut rest[0])?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = util::rss_kib(gw_pid)?;
    Ok((
        calls.into_iter().map(|c| json!(c)).collect(),
        during,
        after,
        packets,
    ))
}

/// `pairs` relayed calls at once, twice; the gateway's resident memory
/// before, during and after each round. The first round's growth includes
/// what the gateway allocates once (buffers, tables, allocator arenas) and
/// keeps after hang-up; the second round's, measured from where the first
/// left it, is what each further relayed call costs.
fn relay_memory(office: &mut Office, pairs: usize) -> Result<Value> {
    let gw_pid = office.gw.pid()?;
    std::thread::sleep(Duration::from_millis(300));
    let registered = util::rss_kib(gw_pid)?;
    let (calls, during, after, packets) = relay_round(office, pairs, gw_pid)?;
    let (_, during2, after2, _) = relay_round(office, pairs, gw_pid)?;
    let per = |from: u64, to: u64| round(to.saturating_sub(from) as f64 / pairs.max(1) as f64, 1);
    Ok(json!({
        "relayed_calls": pairs,
        "calls": calls,
        "gateway_rss_registered_kib": registered,
        "gateway_rss_with_calls_kib": during,
        "gateway_rss_after_hangup_kib": after,
        "per_call_kib": per(registered, during),
        "second_round_rss_with_calls_kib": during2,
        "second_round_rss_after_hangup_kib": after2,
        "per_call_kib_second_round": per(after, during2),
        "relay_packets": packets,
    }))
}

/// Run the suite.
pub fn run(bins: &Bins, cfg: &SetupConfig) -> Result<Value> {
    let mut scratch = Scratch::new("setup")?;
    let res = run_in(bins, cfg, &scratch.path);
    if res.is_err() {
        scratch.keep = true;
    }
    res
}

fn run_in(bins: &Bins, cfg: &SetupConfig, dir: &Path) -> Result<Value> {
    eprintln!("keyline-bench setup: {} calls, direct media", cfg.calls);
    let direct = {
        let d = dir.join("direct");
        std::fs::create_dir_all(&d)?;
        let mut office = start_office(bins, &d, false, 2)?;
        let gw_idle = util::rss_kib(office.gw.pid()?)?;
        let mut v = timing_loop(&mut office, cfg.calls, cfg.budget)?;
        v["gateway_rss_registered_kib"] = json!(gw_idle);
        v
    };
    let pairs = cfg.relay_pairs.max(1);
    eprintln!(
        "keyline-bench setup: {pairs} relayed calls at once, then {} calls through the relay",
        cfg.relay_calls
    );
    let relayed = {
        let d = dir.join("relay");
        std::fs::create_dir_all(&d)?;
        let mut office = start_office(bins, &d, true, 2 * pairs)?;
        let memory = relay_memory(&mut office, pairs)?;
        let mut v = timing_loop(&mut office, cfg.relay_calls, cfg.budget)?;
        v["gateway_memory"] = memory;
        v
    };
    eprintln!(
        "keyline-bench setup: {} calls across two offices (two gateways through keyline-directory)",
        cfg.office_calls
    );
    let offices = {
        let d = dir.join("offices");
        std::fs::create_dir_all(&d)?;
        crate::offices::run_in(bins, &d, cfg.office_calls, cfg.budget)?
    };
    Ok(json!({
        "office": "one office on loopback: keyline-gatewayd and keyline-agent (--audio-in silence --audio-out null)",
        "direct": direct,
        "relay": relayed,
        "two_offices": offices,
    }))
}
