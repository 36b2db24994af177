//! `keyline-bench soak`: a real `keyline-directory` with many registered
//! terminals and a real `keyline-gatewayd` with many stations, churned at
//! a steady rate for a long while (issue 15), watched for leaks.
//!
//! Churn, in both halves: connect, register, call, answer, talk (media
//! datagrams through the directory's relay or the gateway's forwarder),
//! transfer, hang up, disconnect, reconnect ([`terminals`], [`stations`]).
//! Some calls are meant to fail (a busy target, an unknown number, one
//! nobody registered): those are counted apart from failures nobody
//! asked for.
//!
//! Every interval it prints, and at the end it reports, calls completed
//! and failed (by reason), each daemon's resident memory (VmRSS from
//! `/proc/PID/status`), open descriptors (`/proc/PID/fd`) and CPU, and
//! the load's own CPU.
//!
//! Verdicts. Memory and descriptors are compared at two quiet moments:
//! after the warm-up and at the end, new calls are held back until every
//! call in flight has ended and both daemons say no call and no relay is
//! left (a call in progress holds sockets and buffers, so levels taken
//! mid-call depend on how many calls happen to be up). Each daemon's
//! level at the end must be within 5% above its level after the
//! warm-up (a fall is reported, not failed: nothing leaked). And no call
//! may have failed for a reason other than those the load asked for
//! (registration refreshes and reconnections count too). Any verdict
//! failed: the program exits non-zero and says which.

mod media;
mod stations;
mod tally;
mod terminals;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::daemons::{poll, tail, Control, Daemon};
use crate::directory::{add_account, proc_cpu, start_directory_with, PW};
use crate::util::{self, round, Scratch};
use stations::{GwLoad, Waiting};
use tally::Snapshot;
use terminals::DirLoad;

/// Growth allowed between the level after the warm-up and the end.
///
/// Descriptors are compared quiet against quiet (after the warm-up, at
/// the end). Memory is compared against the highest reading of the first
/// half of the run after the warm-up: the warm-up's quiet moment has not
/// yet seen the allocator hold the working set of calls in progress, and
/// a leak shows as growth past that level in the second half.
pub const FLAT: f64 = 0.05;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub duration: Duration,
    pub warmup: Duration,
    pub interval: Duration,
    pub terminals: usize,
    pub stations: usize,
    /// Jobs started per second in each half (each job is two calls).
    pub dir_rate: f64,
    pub gw_rate: f64,
    /// How long each call talks.
    pub talk: Duration,
    /// Terminals sharing one directory account.
    pub per_account: usize,
    /// Keep the daemons' state directories and logs.
    pub keep: bool,
}

/// One daemon's readings at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Proc {
    rss_kib: u64,
    fds: u64,
    cpu_s: f64,
}

fn fds(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count() as u64)
}

fn read_proc(pid: u32) -> Result<Proc> {
    Ok(Proc {
        rss_kib: util::rss_kib(pid)?,
        fds: fds(pid)?,
        cpu_s: proc_cpu(pid)?.as_secs_f64(),
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Both daemons, the load generator and both halves' counters.
#[derive(Debug, Clone)]
struct Sample {
    at_s: f64,
    dir: Proc,
    gw: Proc,
    load_cpu_s: f64,
    load_rss_kib: u64,
    dirt: Snapshot,
    gwt: Snapshot,
    loadavg: Option<f64>,
    /// UDP datagrams the kernel dropped for want of receive buffer room,
    /// machine-wide, since boot (`RcvbufErrors` in `/proc/net/snmp`).
    udp_rcvbuf_errors: Option<u64>,
}

impl Sample {
    fn json(&self, prev: Option<&Sample>) -> Value {
        let cores = |now: f64, before: f64| {
            prev.map(|p| round((now - before) / (self.at_s - p.at_s).max(1e-3), 2))
        };
        let p = |x: &Proc, before: Option<&Proc>| {
            json!({
                "rss_kib": x.rss_kib,
                "fds": x.fds,
                "cpu_s": round(x.cpu_s, 2),
                "cpu_cores": before.and_then(|b| cores(x.cpu_s, b.cpu_s)),
            })
        };
        json!({
            "at_s": round(self.at_s, 1),
            "directory": p(&self.dir, prev.map(|s| &s.dir)),
            "gateway": p(&self.gw, prev.map(|s| &s.gw)),
            "load": {
                "cpu_s": round(self.load_cpu_s, 2),
                "cpu_cores": prev.and_then(|s| cores(self.load_cpu_s, s.load_cpu_s)),
                "rss_kib": self.load_rss_kib,
            },
            "directory_calls": self.dirt.json(),
            "gateway_calls": self.gwt.json(),
            "loadavg_1m": self.loadavg,
            "udp_rcvbuf_errors": self.udp_rcvbuf_errors,
        })
    }

    /// One line for the terminal.
    fn line(&self, prev: Option<&Sample>, quiet: &str) -> String {
        let cores = |now: f64, before: f64| match prev {
            Some(p) => format!("{:.2}", (now - before) / (self.at_s - p.at_s).max(1e-3)),
            None => "-".into(),
        };
        let half = |t: &Snapshot, before: Option<&Snapshot>| {
            format!(
                "{} ok (+{}), asked {}, FAILED {}",
                t.completed,
                t.completed - before.map_or(0, |b| b.completed),
                t.asked_total(),
                t.unexpected_total()
            )
        };
        format!(
            "{:>6.0}s{quiet} | dir calls {} | gw calls {} | directory {:.1} MiB {} fd {} cores | gateway {:.1} MiB {} fd {} cores | load {} cores | loadavg {} | UDP dropped {}",
            self.at_s,
            half(&self.dirt, prev.map(|p| &p.dirt)),
            half(&self.gwt, prev.map(|p| &p.gwt)),
            mib(self.dir.rss_kib),
            self.dir.fds,
            cores(self.dir.cpu_s, prev.map_or(0.0, |p| p.dir.cpu_s)),
            mib(self.gw.rss_kib),
            self.gw.fds,
            cores(self.gw.cpu_s, prev.map_or(0.0, |p| p.gw.cpu_s)),
            cores(self.load_cpu_s, prev.map_or(0.0, |p| p.load_cpu_s)),
            self.loadavg.map_or("-".into(), |l| format!("{l:.1}")),
            match (self.udp_rcvbuf_errors, prev.and_then(|p| p.udp_rcvbuf_errors)) {
                (Some(now), Some(before)) => format!("+{}", now.saturating_sub(before)),
                (Some(now), None) => now.to_string(),
                _ => "-".into(),
            },
        )
    }
}

/// `Udp: RcvbufErrors` from `/proc/net/snmp`.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The running soak: daemons, their control sockets, both loads.
struct Rig {
    started: Instant,
    dir: Daemon,
    dir_ctl: Control,
    gw: Daemon,
    gw_ctl: Control,
    dl: Arc<DirLoad>,
    gl: Arc<GwLoad>,
}

impl Rig {
    fn sample(&mut self) -> Result<Sample> {
        self.dir.check_alive()?;
        self.gw.check_alive()?;
        Ok(Sample {
            at_s: self.started.elapsed().as_secs_f64(),
            dir: read_proc(self.dir.pid()?)?,
            gw: read_proc(self.gw.pid()?)?,
            load_cpu_s: util::self_cpu()?.as_secs_f64(),
            load_rss_kib: util::self_rss_kib()?,
            dirt: self.dl.tally.snapshot(),
            gwt: self.gl.tally.snapshot(),
            loadavg: loadavg(),
            udp_rcvbuf_errors: udp_rcvbuf_errors(),
        })
    }

    /// Hold new calls back until every call has ended and both daemons
    /// hold no call and no relay; then the sample (and the daemons'
    /// counts, for the report).
    fn quiesce(&mut self, what: &str) -> Result<(Sample, Value)> {
        self.dl.paused.store(true, Ordering::Relaxed);
        self.gl.paused.store(true, Ordering::Relaxed);
        let t = Instant::now();
        poll(
            &format!("the calls in flight to end ({what})"),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || Ok((self.dl.busy() == 0 && self.gl.busy() == 0).then_some(())),
        )?;
        let (idle_t, idle_s) = (self.dl.idle(), self.gl.idle());
        let (dir_ctl, gw_ctl) = (&mut self.dir_ctl, &mut self.gw_ctl);
        let counts = poll(
            &format!("both daemons to hold no call ({what})"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let d = dir_ctl.status()?;
                let g = gw_ctl.status()?;
                let quiet = d["calls_active"] == 0
                    && d["relays_active"] == 0
                    && g["calls_active"] == 0
                    && g["relay"]["active"] == 0;
                Ok(quiet.then(|| {
                    json!({
                        "directory": {
                            "sessions": d["sessions"], "bindings": d["bindings"],
                            "calls_active": d["calls_active"], "relays_active": d["relays_active"],
                            "relay": d["relay"],
                            "terminals_idle": idle_t,
                        },
                        "gateway": {
                            "stations_online": g["stations_online"],
                            "calls_active": g["calls_active"], "relay": g["relay"],
                            "stations_idle": idle_s,
                        },
                    })
                }))
            },
        )?;
        // Let dropped allocations' sockets close (their tasks end when
        // next polled).
        std::thread::sleep(Duration::from_millis(500));
        let s = self.sample()?;
        eprintln!(
            "keyline-bench soak: quiet after {:.1} s ({what})",
            t.elapsed().as_secs_f64()
        );
        Ok((s, counts))
    }

    fn resume(&self) {
        self.dl.paused.store(false, Ordering::Relaxed);
        self.gl.paused.store(false, Ordering::Relaxed);
    }
}

/// Start the directory (relay for every call) with its accounts.
fn start_dir(
    bin: &Path,
    scratch: &Scratch,
    cfg: &SoakConfig,
) -> Result<(
    Daemon,
    Control,
    std::net::SocketAddr,
    Vec<terminals::Account>,
)> {
    let state = scratch.join("directory");
    let accounts = terminals::accounts(cfg.terminals, cfg.per_account);
    let t = Instant::now();
    let with_numbers: Vec<(String, Vec<String>)> = accounts
        .iter()
        .map(|a| {
            let mut ns = a.numbers.clone();
            ns.push(a.spare.clone());
            (a.id.clone(), ns)
        })
        .collect();
    // The first creates the database; the rest two at a time.
    if let Some((first, rest)) = with_numbers.split_first() {
        add_account(bin, &state, &first.0, &first.1)?;
        for pair in rest.chunks(2) {
            std::thread::scope(|s| -> Result<()> {
                let hs: Vec<_> = pair
                    .iter()
                    .map(|(id, ns)| {
                        let state = &state;
                        s.spawn(move || add_account(bin, state, id, ns))
                    })
                    .collect();
                for h in hs {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a user add thread panicked"))??;
                }
                Ok(())
            })?;
        }
    }
    eprintln!(
        "keyline-bench soak: {} directory accounts made in {:.1} s",
        accounts.len(),
        t.elapsed().as_secs_f64()
    );
    let (d, ctl, addr) = start_directory_with(bin, &state, &["--direct-connect", "relay"])?;
    Ok((d, ctl, addr, accounts))
}

fn start_gw(
    bin: &Path,
    scratch: &Scratch,
) -> Result<(Daemon, Control, std::net::SocketAddr, String)> {
    let state = scratch.join("gateway");
    let mut gw = Daemon::start(
        bin,
        &state,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--internal-media",
            "relay",
            "--no-voicemail",
        ],
        &[],
    )?;
    let mut ctl = Control::connect(&gw.control(), Duration::from_secs(15))
        .with_context(|| format!("the gateway did not start:\n{}", tail(&gw.log)))?;
    gw.check_alive()?;
    let st = ctl.status()?;
    let addr = st["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("gateway status without a listen address")?;
    let fp = st["fingerprint"]
        .as_str()
        .context("gateway status without a fingerprint")?
        .to_string();
    Ok((gw, ctl, addr, fp))
}

/// Enrol `n` stations, at most 50 waiting at once (the gateway keeps at
/// most 100 waiting).
fn enrol(
    rt: &tokio::runtime::Runtime,
    ctl: &mut Control,
    gw: std::net::SocketAddr,
    gw_fp: &str,
    n: usize,
) -> Result<Vec<stations::Station>> {
    let mut out = Vec::with_capacity(n);
    let exts: Vec<String> = (0..n)
        .map(|i| (stations::FIRST_EXT + i).to_string())
        .collect();
    for batch in exts.chunks(50) {
        let waiting: Vec<Waiting> = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, ext) in batch.iter().enumerate() {
                let (fp, ext) = (gw_fp.to_string(), ext.clone());
                set.spawn(async move { (i, Waiting::start(gw, &fp, ext).await) });
            }
            let mut got = Vec::new();
            while let Some(r) = set.join_next().await {
                let (i, w) = r.context("a station task failed")?;
                got.push((i, w?));
            }
            got.sort_by_key(|(i, _)| *i);
            anyhow::Ok(got.into_iter().map(|(_, w)| w).collect())
        })?;
        for w in &waiting {
            ctl.ok(&json!({"cmd": "approve", "code": w.code, "ext": w.ext, "name": null}))?;
        }
        let done: Vec<stations::Station> = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for w in waiting {
                set.spawn(w.registered());
            }
            let mut got = Vec::new();
            while let Some(r) = set.join_next().await {
                got.push(r.context("a station task failed")??);
            }
            anyhow::Ok(got)
        })?;
        out.extend(done);
    }
    Ok(out)
}

/// A verdict: what was judged, whether it held, and the figures.
fn verdict(name: &str, ok: bool, detail: String) -> Value {
    json!({"verdict": name, "ok": ok, "detail": detail})
}

/// The highest of `pick` over the samples of the first half of the run
/// after the warm-up (the quiet reading after the warm-up included).
fn first_half_peak(
    samples: &[Sample],
    warm: &Sample,
    end: &Sample,
    pick: fn(&Sample) -> u64,
) -> u64 {
    let mid = warm.at_s + (end.at_s - warm.at_s) / 2.0;
    samples
        .iter()
        .filter(|s| s.at_s >= warm.at_s && s.at_s <= mid)
        .map(pick)
        .chain([pick(warm)])
        .max()
        .unwrap_or(0)
}

/// The level at the end against a reference level (`reference` says
/// which).
fn flat(name: &str, reference: &str, warm: u64, end: u64, unit: &str) -> Value {
    let limit = (warm as f64 * (1.0 + FLAT)).floor() as u64;
    let change = if warm > 0 {
        (end as f64 - warm as f64) / warm as f64 * 100.0
    } else {
        0.0
    };
    verdict(
        name,
        end <= limit,
        format!(
            "{warm} {unit} {reference}, {end} {unit} at the end ({change:+.1}%; at most {limit} allowed)"
        ),
    )
}

/// Run the soak; the report (JSON). Verdicts are in `report["verdicts"]`.
pub fn run(dir_bin: &Path, gw_bin: &Path, cfg: &SoakConfig) -> Result<Value> {
    if cfg.stations < 3 || cfg.stations > stations::MAX_STATIONS {
        bail!(
            "--stations must be between 3 and {}",
            stations::MAX_STATIONS
        );
    }
    if cfg.terminals < 3 {
        bail!("--terminals must be at least 3");
    }
    if cfg.warmup >= cfg.duration {
        bail!(
            "the warm-up ({:?}) must be shorter than the soak ({:?})",
            cfg.warmup,
            cfg.duration
        );
    }
    let nofile = util::raise_nofile().unwrap_or(0);
    let mut scratch = Scratch::new("soak")?;
    scratch.keep = cfg.keep;
    let setup = Instant::now();
    let (dir, mut dir_ctl, dir_addr, accounts) = start_dir(dir_bin, &scratch, cfg)?;
    let dir_fp = dir_ctl.status()?["fingerprint"]
        .as_str()
        .context("directory status without a fingerprint")?
        .to_string();
    let (gw, mut gw_ctl, gw_addr, gw_fp) = start_gw(gw_bin, &scratch)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the load's runtime")?;
    let t = Instant::now();
    let dl = rt.block_on(terminals::online(
        dir_addr, &dir_fp, &accounts, PW, cfg.talk, 32,
    ))?;
    let terminals_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let st = enrol(&rt, &mut gw_ctl, gw_addr, &gw_fp, cfg.stations)?;
    let stations_s = t.elapsed().as_secs_f64();
    eprintln!(
        "keyline-bench soak: {} terminals registered in {terminals_s:.1} s, {} stations enrolled in {stations_s:.1} s",
        cfg.terminals, cfg.stations
    );
    let gl = GwLoad::new(st, gw_addr, cfg.talk);
    let mut rig = Rig {
        started: Instant::now(),
        dir,
        dir_ctl,
        gw,
        gw_ctl,
        dl: dl.clone(),
        gl: gl.clone(),
    };
    let res = soak(&rt, &mut rig, cfg);
    // Whatever happened: stop the load, close every connection, stop the
    // daemons (their logs stay when the soak failed to run).
    dl.stopping.store(true, Ordering::Relaxed);
    gl.stopping.store(true, Ordering::Relaxed);
    dl.close_all();
    gl.close_all();
    drop(rt);
    if res.is_err() {
        scratch.keep = true;
    }
    let (mut report, dir_pid, gw_pid) = (res?, rig.dir.pid().ok(), rig.gw.pid().ok());
    let dir_stop = rig.dir.stop();
    let gw_stop = rig.gw.stop();
    report["setup"] = json!({
        "accounts": accounts.len(),
        "terminals_registered_s": round(terminals_s, 1),
        "stations_enrolled_s": round(stations_s, 1),
        "setup_s": round(setup.elapsed().as_secs_f64() - rig.started.elapsed().as_secs_f64(), 1),
        "nofile_limit": nofile,
        "kept": scratch.keep.then(|| scratch.path.display().to_string()),
        "directory_pid": dir_pid,
        "gateway_pid": gw_pid,
    });
    report["daemons_stopped_cleanly"] = json!({
        "directory": dir_stop.is_some(),
        "gateway": gw_stop.is_some(),
    });
    Ok(report)
}

/// The soak proper: load, samples, quiet points, verdicts.
fn soak(rt: &tokio::runtime::Runtime, rig: &mut Rig, cfg: &SoakConfig) -> Result<Value> {
    rt.spawn(rig.dl.clone().schedule(cfg.dir_rate));
    rt.spawn(rig.dl.clone().refresh());
    rt.spawn(rig.gl.clone().schedule(cfg.gw_rate));
    let start = rig.sample()?;
    println!("{}", start.line(None, ""));
    let mut samples = vec![start];
    let mut warm: Option<(Sample, Value)> = None;
    let mut next = cfg.interval;
    loop {
        let now = rig.started.elapsed();
        if now >= cfg.duration {
            break;
        }
        if warm.is_none() && now >= cfg.warmup {
            let (s, counts) = rig.quiesce("after the warm-up")?;
            println!("{}", s.line(samples.last(), " quiet, after warm-up"));
            samples.push(s.clone());
            warm = Some((s, counts));
            rig.resume();
            continue;
        }
        let wake = if warm.is_none() {
            next.min(cfg.warmup)
        } else {
            next
        }
        .min(cfg.duration);
        if wake > now {
            std::thread::sleep((wake - now).min(Duration::from_millis(500)));
            continue;
        }
        if rig.started.elapsed() >= next {
            let s = rig.sample()?;
            println!("{}", s.line(samples.last(), ""));
            samples.push(s);
            next += cfg.interval;
        }
    }
    let (end, end_counts) = rig.quiesce("at the end")?;
    println!("{}", end.line(samples.last(), " quiet, at the end"));
    samples.push(end.clone());
    let (warm, warm_counts) = warm.context("the soak ended before its warm-up did")?;

    let first = &samples[0];
    let span = (end.at_s - first.at_s).max(1e-3);
    let used =
        |a: f64, b: f64| json!({"cpu_s": round(a - b, 1), "cores": round((a - b) / span, 2)});
    let mut unexpected = end.dirt.unexpected.clone();
    for (k, v) in &end.gwt.unexpected {
        *unexpected.entry(format!("gateway: {k}")).or_default() += v;
    }
    let dir_unexp = end.dirt.unexpected_total();
    let gw_unexp = end.gwt.unexpected_total();
    let lost = rig.dl.lost.load(Ordering::Relaxed) + rig.gl.lost.load(Ordering::Relaxed);
    const PEAK: &str = "at the highest in the first half after the warm-up";
    const QUIET: &str = "after the warm-up";
    let dir_mem = first_half_peak(&samples, &warm, &end, |s| s.dir.rss_kib);
    let gw_mem = first_half_peak(&samples, &warm, &end, |s| s.gw.rss_kib);
    let verdicts = vec![
        flat("directory resident memory flat", PEAK, dir_mem, end.dir.rss_kib, "KiB"),
        flat("directory descriptors flat", QUIET, warm.dir.fds, end.dir.fds, "descriptors"),
        flat("gateway resident memory flat", PEAK, gw_mem, end.gw.rss_kib, "KiB"),
        flat("gateway descriptors flat", QUIET, warm.gw.fds, end.gw.fds, "descriptors"),
        verdict(
            "no call failed unexpectedly",
            dir_unexp == 0 && gw_unexp == 0 && lost == 0,
            format!(
                "directory: {dir_unexp} unexpected failures {:?}; gateway: {gw_unexp} {:?}; ends lost: {lost}",
                end.dirt.unexpected, end.gwt.unexpected
            ),
        ),
        verdict(
            "calls completed in both halves",
            end.dirt.completed > 0 && end.gwt.completed > 0,
            format!(
                "directory {}, gateway {}",
                end.dirt.completed, end.gwt.completed
            ),
        ),
    ];
    let ok = verdicts.iter().all(|v| v["ok"] == true);
    let mut series = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        series.push(s.json(i.checked_sub(1).and_then(|j| samples.get(j))));
    }
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    Ok(json!({
        "config": {
            "seconds": cfg.duration.as_secs_f64(),
            "warmup_s": cfg.warmup.as_secs_f64(),
            "interval_s": cfg.interval.as_secs_f64(),
            "terminals": cfg.terminals,
            "stations": cfg.stations,
            "directory_jobs_per_s": cfg.dir_rate,
            "gateway_jobs_per_s": cfg.gw_rate,
            "talk_ms": cfg.talk.as_millis() as u64,
            "terminals_per_account": cfg.per_account,
            "directory_media": "relay (every call)",
            "gateway_media": "relay (the gateway's forwarder)",
        },
        "ok": ok,
        "verdicts": verdicts,
        "directory": {
            "calls": end.dirt.json(),
            "after_warmup": {"rss_kib": warm.dir.rss_kib, "fds": warm.dir.fds, "at_s": round(warm.at_s, 1)},
            "at_end": {"rss_kib": end.dir.rss_kib, "fds": end.dir.fds, "at_s": round(end.at_s, 1)},
            "peak_rss_kib": peak(|s| s.dir.rss_kib),
            "peak_fds": peak(|s| s.dir.fds),
            "cpu": used(end.dir.cpu_s, first.dir.cpu_s),
            "quiet_after_warmup": warm_counts["directory"],
            "quiet_at_end": end_counts["directory"],
        },
        "gateway": {
            "calls": end.gwt.json(),
            "after_warmup": {"rss_kib": warm.gw.rss_kib, "fds": warm.gw.fds, "at_s": round(warm.at_s, 1)},
            "at_end": {"rss_kib": end.gw.rss_kib, "fds": end.gw.fds, "at_s": round(end.at_s, 1)},
            "peak_rss_kib": peak(|s| s.gw.rss_kib),
            "peak_fds": peak(|s| s.gw.fds),
            "cpu": used(end.gw.cpu_s, first.gw.cpu_s),
            "quiet_after_warmup": warm_counts["gateway"],
            "quiet_at_end": end_counts["gateway"],
        },
        "load": {
            "cpu": used(end.load_cpu_s, first.load_cpu_s),
            "rss_kib_at_end": end.load_rss_kib,
        },
        "unexpected_failures": unexpected,
        "samples": series,
    }))
}

/// The summary printed at the end.
pub fn summary(r: &Value) -> String {
    let mut o = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    o.push_str(&format!(
        "\nSoak: {:.0} s ({:.0} s warm-up), {} terminals on keyline-directory, {} stations on keyline-gatewayd\n",
        f(&r["config"]["seconds"]),
        f(&r["config"]["warmup_s"]),
        n(&r["config"]["terminals"]),
        n(&r["config"]["stations"]),
    ));
    for (name, key) in [("directory", "directory"), ("gateway", "gateway")] {
        let h = &r[key];
        let c = &h["calls"];
        o.push_str(&format!(
            "  {name:<9} calls completed {}, failed as asked {} {}, failed unexpectedly {} {}\n",
            n(&c["calls_completed"]),
            n(&c["failed_as_asked_total"]),
            c["failed_as_asked"],
            n(&c["failed_unexpectedly_total"]),
            c["failed_unexpectedly"],
        ));
        o.push_str(&format!(
            "  {:<9} memory {:.1} MiB after warm-up, {:.1} MiB at the end (peak {:.1}); descriptors {} -> {} (peak {}); CPU {:.1} s ({:.2} cores)\n",
            "",
            mib(n(&h["after_warmup"]["rss_kib"])),
            mib(n(&h["at_end"]["rss_kib"])),
            mib(n(&h["peak_rss_kib"])),
            n(&h["after_warmup"]["fds"]),
            n(&h["at_end"]["fds"]),
            n(&h["peak_fds"]),
            f(&h["cpu"]["cpu_s"]),
            f(&h["cpu"]["cores"]),
        ));
    }
    o.push_str(&format!(
        "  load      CPU {:.1} s ({:.2} cores), {:.0} MiB resident\n",
        f(&r["load"]["cpu"]["cpu_s"]),
        f(&r["load"]["cpu"]["cores"]),
        mib(n(&r["load"]["rss_kib_at_end"])),
    ));
    if let Some(vs) = r["verdicts"].as_array() {
        for v in vs {
            o.push_str(&format!(
                "  {} {}: {}\n",
                if v["ok"] == true { "PASS" } else { "FAIL" },
                v["verdict"].as_str().unwrap_or("?"),
                v["detail"].as_str().unwrap_or(""),
            ));
        }
    }
    if let Some(ex) = r["directory"]["calls"]["unexpected_examples"].as_array() {
        for e in ex.iter().take(5) {
            o.push_str(&format!(
                "  directory failure: {}\n",
                e.as_str().unwrap_or("?")
            ));
        }
    }
    if let Some(ex) = r["gateway"]["calls"]["unexpected_examples"].as_array() {
        for e in ex.iter().take(5) {
            o.push_str(&format!(
                "  gateway failure: {}\n",
                e.as_str().unwrap_or("?")
            ));
        }
    }
    o
}

/// Write the report as `<stamp>-soak.json` and `soak-latest.json`.
pub fn write(doc: &Value, dir: &Path, stamp: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(doc)?;
    let path = dir.join(format!("{stamp}-soak.json"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let latest = dir.join("soak-latest.json");
    std::fs::write(&latest, &text).with_context(|| format!("writing {}", latest.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_allows_five_percent_of_growth_and_any_fall() {
        assert_eq!(flat("m", "then", 100, 105, "KiB")["ok"], true);
        assert_eq!(flat("m", "then", 100, 106, "KiB")["ok"], false);
        assert_eq!(flat("m", "then", 100, 60, "KiB")["ok"], true);
        // Few descriptors: 5% of 30 is one and a half, so one more passes
        // and two more do not.
        assert_eq!(flat("fd", "then", 30, 31, "descriptors")["ok"], true);
        assert_eq!(flat("fd", "then", 30, 32, "descriptors")["ok"], false);
    }

    #[test]
    fn accounts_hold_their_numbers_and_a_spare() {
        let a = terminals::accounts(250, 100);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].numbers.len(), 50);
        assert_eq!(a[0].numbers[0], "50000000");
        assert_eq!(a[2].numbers[49], "50000249");
        assert!(a.iter().all(|x| !x.numbers.contains(&x.spare)));
        assert!(a
            .iter()
            .all(|x| !x.numbers.iter().any(|n| n == terminals::UNKNOWN)));
    }
}
