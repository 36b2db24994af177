//! The `phone` suite: the real `keyline-phone` window under Xvfb (Mesa
//! renders on the CPU), in front of a real agent on a real gateway on
//! loopback.
//!
//! - ring → window shown: the agent's `call` event (state `alerting`, read
//!   by a subscriber of the bench's own) to the window being mapped, for a
//!   window started hidden as the session starts it (restarted for each
//!   sample); and to the title naming the caller, for a window already
//!   shown. The window is read with `xwininfo`/`xprop` in a loop, so each
//!   figure includes up to one poll (a few ms; `poll_ms` says how long one
//!   took).
//! - CPU of the window process (`/proc/PID/stat`): idle (registered, no
//!   call) and in a connected call, as a share of one core;
//! - its resident memory (VmRSS) idle and in the call.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::daemons::{poll, tail, Control, Daemon};
use crate::setup::{start_stations, Bins, Station};
use crate::util::{self, round, Scratch, Summary};

/// How much to measure.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    /// Rings to a hidden window (one window start each).
    pub hidden_rings: usize,
    /// Rings to a window already shown.
    pub shown_rings: usize,
    /// How long CPU is measured, idle and in the call.
    pub cpu_window: Duration,
}

/// A child process killed (by its pid) on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Xvfb on a display it picks itself.
fn xvfb() -> Result<(Kid, String)> {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "800x700x24",
            "-nolisten",
            "tcp",
            // Keep serving when the last window closes (a reset refuses
            // the next client meanwhile).
            "-noreset",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Xvfb (Debian xvfb)")?;
    let out = child.stdout.take().context("Xvfb's stdout")?;
    let kid = Kid(child);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .context("Xvfb's display number")?;
    let n: u32 = line.trim().parse().context("Xvfb's display number")?;
    let sock = format!("/tmp/.X11-unix/X{n}");
    poll(
        "the X server",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || Ok(Path::new(&sock).exists().then_some(())),
    )?;
    Ok((kid, format!(":{n}")))
}

fn x(display: &str, prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .env("DISPLAY", display)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The id and title of the window whose title starts with "Keyline".
fn keyline_window(display: &str) -> Option<(String, String)> {
    x(display, "xwininfo", &["-root", "-tree"])
        .lines()
        .find_map(|l| {
            let id = l.split_whitespace().next()?.to_string();
            let start = l.find("\"Keyline")?;
            let rest = &l[start + 1..];
            let title = &rest[..rest.find('"')?];
            Some((id, title.to_string()))
        })
}

fn mapped(display: &str, id: &str) -> bool {
    x(display, "xwininfo", &["-id", id]).contains("IsViewable")
}

fn title(display: &str, id: &str) -> String {
    x(display, "xprop", &["-id", id, "_NET_WM_NAME"])
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces).
    let rest = stat.rsplit(')').next().context("odd /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .zip(f.get(12).and_then(|s| s.parse::<f64>().ok()))
        .map(|(u, s)| u + s)
        .context("no utime/stime")?;
    // The kernel's USER_HZ is 100 on Linux.
    Ok(ticks / 100.0)
}

/// utime + stime of each thread of `pid`, by thread name, in seconds.
fn thread_secs(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let secs = std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| {
                let rest = st.rsplit(')').next()?.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
            })
            .unwrap_or(0.0);
        *out.entry(format!("{} ({tid})", name.trim())).or_default() += secs;
    }
    out
}

/// The share of one core `pid` used over `d`, and the threads that used
/// any of it.
fn cpu_share(pid: u32, d: Duration) -> Result<(f64, Value)> {
    let c0 = cpu_secs(pid)?;
    let th0 = thread_secs(pid);
    let t0 = Instant::now();
    std::thread::sleep(d);
    let c1 = cpu_secs(pid)?;
    let th1 = thread_secs(pid);
    let secs = t0.elapsed().as_secs_f64();
    let busy: serde_json::Map<String, Value> = th1
        .iter()
        .filter_map(|(k, v)| {
            let used = v - th0.get(k).copied().unwrap_or(0.0);
            (used > 0.0).then(|| (k.clone(), json!(round(used / secs * 100.0, 2))))
        })
        .collect();
    Ok(((c1 - c0) / secs, Value::Object(busy)))
}

/// When each `call` event of the agent at `sock` with state `alerting`
/// arrived (a subscriber of the bench's own, beside the window's).
fn alerts(sock: &Path) -> Result<Receiver<Instant>> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("{}", sock.display()))?;
    s.write_all(b"{\"cmd\": \"subscribe\"}\n")?;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["event"] == "call" && v["call"]["state"] == "alerting" && tx.send(at).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

struct Phone {
    kid: Kid,
    window: String,
}

fn start_phone(bin: &Path, state: &Path, display: &str, dir: &Path, hidden: bool) -> Result<Phone> {
    let log = std::fs::File::create(dir.join("phone.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--state")
        .arg(state)
        .args(["--lang", "en"])
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        // No desktop notifications here: the window alone is measured.
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if hidden {
        cmd.arg("--hidden");
    }
    let kid = Kid(cmd.spawn().context("starting keyline-phone")?);
    // Up, and following the agent (the title names the extension).
    let window = poll(
        "the phone window",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || Ok(keyline_window(display).filter(|(_, t)| t.contains("201"))),
    )
    .with_context(|| tail(&dir.join("phone.log")))?
    .0;
    Ok(Phone { kid, window })
}

/// B calls A; the time from A's alerting event to `shown`; A declines.
fn ring_once(
    a: &mut Station,
    b: &mut Station,
    alerts: &Receiver<Instant>,
    shown: impl Fn() -> bool,
) -> Result<(f64, f64)> {
    while alerts.try_recv().is_ok() {}
    b.ctl.ok(&json!({"cmd": "dial", "number": a.ext}))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut polls = 0u32;
    let poll_start = Instant::now();
    let at = loop {
        if shown() {
            break Instant::now();
        }
        polls += 1;
        if Instant::now() > deadline {
            bail!("the window did not show the ringing call within 10 s");
        }
    };
    let poll_ms = poll_start.elapsed().as_secs_f64() * 1000.0 / f64::from(polls.max(1));
    let event = alerts
        .recv_timeout(Duration::from_secs(5))
        .context("no alerting event from the agent")?;
    a.ctl.ok(&json!({"cmd": "hangup"}))?;
    poll(
        "both idle",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            Ok(
                (a.ctl.status()?["call"].is_null() && b.ctl.status()?["call"].is_null())
                    .then_some(()),
            )
        },
    )?;
    Ok((
        at.saturating_duration_since(event).as_secs_f64() * 1000.0,
        poll_ms,
    ))
}

fn summary(v: &mut [f64]) -> Value {
    let s = Summary::of(v);
    json!({"n": s.n, "p50": round(s.p50, 1), "p99": round(s.p99, 1), "max": round(s.max, 1)})
}

/// Run the suite with the window program at `phone`.
pub fn run(bins: &Bins, phone: &Path, cfg: &PhoneConfig) -> Result<Value> {
    let mut scratch = Scratch::new("phone")?;
    let res = run_in(bins, phone, cfg, &scratch);
    if res.is_err() {
        scratch.keep = true;
    }
    res
}

fn run_in(bins: &Bins, phone: &Path, cfg: &PhoneConfig, dir: &Scratch) -> Result<Value> {
    eprintln!(
        "keyline-bench phone: {} rings to a hidden window, {} to a shown one, CPU over {:?}",
        cfg.hidden_rings, cfg.shown_rings, cfg.cpu_window
    );
    let (_x, display) = xvfb()?;
    let gw_state = dir.join("gw");
    let mut gw = Daemon::start(
        &bins.gatewayd,
        &gw_state,
        &["run", "--listen", "127.0.0.1:0", "--no-mdns"],
        &[],
    )?;
    let mut gw_ctl = Control::connect(&gw.control(), Duration::from_secs(10))
        .with_context(|| format!("the gateway did not start:\n{}", tail(&gw.log)))?;
    gw.check_alive()?;
    let listen = gw_ctl.status()?["listen"]
        .as_str()
        .context("gateway status without listen address")?
        .to_string();
    let mut stations = start_stations(bins, &dir.path, &gw_state, &listen, 2)?;
    let (first, second) = stations.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut second[0]);
    let events = alerts(&a.daemon.control())?;
    let a_state: PathBuf = a.daemon.state.clone();

    // A hidden window, started afresh for each ring: event → mapped.
    let mut hidden = Vec::new();
    let mut poll_ms = Vec::new();
    for _ in 0..cfg.hidden_rings {
        let p = start_phone(phone, &a_state, &display, &dir.path, true)?;
        std::thread::sleep(Duration::from_millis(500));
        if mapped(&display, &p.window) {
            bail!("the window started with --hidden is shown");
        }
        let (ms, pm) = ring_once(a, b, &events, || mapped(&display, &p.window))?;
        hidden.push(ms);
        poll_ms.push(pm);
        drop(p.kid);
        poll(
            "the window gone",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(keyline_window(&display).is_none().then_some(())),
        )?;
    }

    // A window already shown: event → the title names the caller.
    let p = start_phone(phone, &a_state, &display, &dir.path, false)?;
    let pid = p.kid.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let (fresh_cpu, _) = cpu_share(pid, cfg.cpu_window)?;
    let mut shown = Vec::new();
    for _ in 0..cfg.shown_rings {
        let (ms, pm) = ring_once(a, b, &events, || {
            title(&display, &p.window).contains("Incoming")
        })?;
        shown.push(ms);
        poll_ms.push(pm);
        // The window settles back to idle before the next ring.
        poll(
            "the window idle",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok((!title(&display, &p.window).contains("Incoming")).then_some(())),
        )?;
    }

    // CPU and memory, idle and in a call.
    std::thread::sleep(Duration::from_secs(2));
    let (idle_cpu, idle_threads) = cpu_share(pid, cfg.cpu_window)?;
    let idle_rss = util::rss_kib(pid)?;
    b.ctl.ok(&json!({"cmd": "dial", "number": a.ext}))?;
    poll(
        "ringing",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok((a.ctl.status()?["call"]["state"] == "alerting").then_some(())),
    )?;
    a.ctl.ok(&json!({"cmd": "answer"}))?;
    poll(
        "connected",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok((a.ctl.status()?["call"]["state"] == "connected").then_some(())),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let (call_cpu, call_threads) = cpu_share(pid, cfg.cpu_window)?;
    let call_rss = util::rss_kib(pid)?;
    b.ctl.ok(&json!({"cmd": "hangup"}))?;
    drop(p.kid);
    Ok(json!({
        "note": "keyline-phone under Xvfb (Mesa on the CPU) before a real agent and gateway on loopback; \
                 ring = the agent's alerting event; shown = mapped (hidden window) or the title naming \
                 the caller (shown window), read by polling xwininfo/xprop; CPU = utime+stime of the \
                 window process as a share of one core",
        "ring_to_shown_hidden_ms": summary(&mut hidden),
        "ring_to_title_shown_ms": summary(&mut shown),
        "poll_ms": summary(&mut poll_ms),
        "cpu_idle_fresh_pct": round(fresh_cpu * 100.0, 2),
        "cpu_idle_pct": round(idle_cpu * 100.0, 2),
        "cpu_idle_threads_pct": idle_threads,
        "cpu_in_call_threads_pct": call_threads,
        "cpu_in_call_pct": round(call_cpu * 100.0, 2),
        "cpu_window_s": cfg.cpu_window.as_secs_f64(),
        "rss_idle_kib": idle_rss,
        "rss_in_call_kib": call_rss,
    }))
}

/// The suite's lines in the printed table.
pub fn table(s: &Value) -> String {
    if s.is_null() {
        return String::new();
    }
    let ms = |k: &str| {
        format!(
            "p50 {} ms, p99 {} ms (n {})",
            s[k]["p50"], s[k]["p99"], s[k]["n"]
        )
    };
    format!(
        "\nPhone window (keyline-phone under Xvfb, Mesa on the CPU)\n  \
         ring -> hidden window shown: {}\n  ring -> shown window names the caller: {}\n  \
         one poll of the X server: p50 {} ms\n  CPU: {}% idle when started, {}% idle after the rings, {}% in a call; \
         memory: {} MiB idle, {} MiB in a call\n",
        ms("ring_to_shown_hidden_ms"),
        ms("ring_to_title_shown_ms"),
        s["poll_ms"]["p50"],
        s["cpu_idle_fresh_pct"],
        s["cpu_idle_pct"],
        s["cpu_in_call_pct"],
        s["rss_idle_kib"].as_u64().map_or(0, |k| k / 1024),
        s["rss_in_call_kib"].as_u64().map_or(0, |k| k / 1024),
    )
}
