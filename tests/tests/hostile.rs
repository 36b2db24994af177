//! An independent hostile client against the real daemons, while a real
//! call goes on.
//!
//! `tests/hostile/hostile.py` speaks the directory's protocol as
//! `docs/protocol.md` describes it, on another QUIC stack (Python's
//! aioquic), and the gateway's station protocol. It attacks both from a
//! namespace of its own, from several addresses (garbage and truncated
//! frames, length prefixes past the limit, unknown kinds, wrong types,
//! deep nesting, odd numbers, wrong-state and forged requests, unread
//! streams, a thousand and more idle connections, handshake, login and
//! enrolment floods), and asserts every refusal it expects.
//!
//! ```text
//!                    internet bridge 10.86.0.0/24
//!   directory .1   gateway .2   alice .3   bob .4   attacker .5 (+.20-.27, .30-.31)   probe .6
//! ```
//!
//! Meanwhile Alice and Bob (two `keyline-agent terminal`s) are in a call
//! with audio both ways, and a legitimate client (the same Python
//! implementation, as another account) looks a number up every 10 ms.
//! The test checks: every attack's expected refusal happened; the call's
//! audio never dropped out; the look-ups' p99 during the attack stayed
//! within twice that before it; both daemons are still up, answer, and
//! their memory stayed bounded; neither logged a panic.
//!
//! The attacker runs at a lower CPU priority (`nice`): on a machine of two
//! cores it would otherwise take the CPU the daemons and the probe need,
//! which a stranger on another machine does not. It is skipped, with a
//! message, only when neither `tests/hostile/.venv` nor the system's
//! `python3` has aioquic and cbor2 (`scripts/install-deps.sh --test`
//! installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyline_tests::{
    add_account, bin, jnum, jstr, ok, start_terminal, status, terminal_registered, unique,
    wait_for, Bridge, Daemon, Netns, Scratch,
};
use serde_json::Value;

/// The least look-up p99 the one during the attack is compared with (see
/// where it is used).
const P99_FLOOR_US: u64 = 5_000;

const PW: &str = "correct horse battery";
const NET: &str = "10.86.0";
const DIR_PORT: u16 = 7480;
const GW_PORT: u16 = 7470;
const MAX_PENDING: usize = 40;

/// A child process killed (by its pid) on drop.
struct Kid(Option<Child>);

impl Kid {
    fn wait_timeout(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile")
}

/// A Python that has aioquic and cbor2: the test set-up's venv, else the
/// system's.
fn python() -> Option<PathBuf> {
    let venv = hostile_dir().join(".venv/bin/python");
    let candidates = [venv, PathBuf::from("python3")];
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import aioquic, cbor2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn alive(d: &mut Daemon) -> bool {
    d.child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Nearest-rank percentile of `v` (sorted here), in microseconds.
fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

struct Hosts {
    dir: Netns,
    gw: Netns,
    alice: Netns,
    bob: Netns,
    attacker: Netns,
    probe: Netns,
    /// Deleted last.
    _net: Bridge,
}

impl Hosts {
    fn new() -> Hosts {
        let base = unique("h");
        let net = Bridge::new(&format!("{base}i")).expect("a bridge (the test needs root)");
        let host = |tag: &str, last: u8| {
            let ns = Netns::new(&format!("{base}{tag}")).unwrap();
            net.attach(&ns, "eth0", &format!("{NET}.{last}/24"))
                .unwrap();
            ns
        };
        let h = Hosts {
            dir: host("d", 1),
            gw: host("g", 2),
            alice: host("a", 3),
            bob: host("b", 4),
            attacker: host("x", 5),
            probe: host("p", 6),
            _net: net,
        };
        for last in (20..28).chain(30..32) {
            h.attacker
                .ip(&["addr", "add", &format!("{NET}.{last}/24"), "dev", "eth0"])
                .unwrap();
        }
        h
    }
}

fn terminal(scratch: &Scratch, ns: &Netns, fp: &str, account: &str, extra: &[&str]) -> Daemon {
    let dir = format!("{NET}.1:{DIR_PORT}");
    let d = start_terminal(scratch, Some(ns), &dir, fp, account, PW, extra);
    terminal_registered(&d);
    d
}

/// Audio packets Alice and Bob have received in their call so far.
fn received(a: &Daemon, b: &Daemon) -> Option<(f64, f64)> {
    let (sa, sb) = (status(a), status(b));
    Some((
        jnum(&sa, &["call", "media", "received"])?,
        jnum(&sb, &["call", "media", "received"])?,
    ))
}

#[test]
fn a_hostile_client_on_another_quic_stack_disturbs_nothing() {
    let Some(py) = python() else {
        println!(
            "SKIPPED: no Python with aioquic and cbor2 (run scripts/install-deps.sh --test, \
             which makes tests/hostile/.venv)"
        );
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new("hostile");
    let hosts = Hosts::new();

    // The directory, with a short login deadline so that idle sessions
    // are seen dropped within the test.
    let state = scratch.join("dir");
    for (account, number) in [
        ("alice", "1001"),
        ("bob", "1002"),
        ("office", "2000"),
        ("mallory", "3001"),
        ("victim", "3003"),
        ("probe", "3004"),
        ("target", "3005"),
    ] {
        add_account(&state, account, &[number], PW);
    }
    let cfg = scratch.join("directory.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{NET}.1:{DIR_PORT}\"\ndirect_connect = \"direct\"\nlogin_deadline_secs = 5\n"
        ),
    )
    .unwrap();
    let mut dir = Daemon::start(
        Some(&hosts.dir.name),
        bin("keyline-directory"),
        &state,
        &["serve", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the directory", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    let dir_fp = jstr(&st, &["fingerprint"]).expect("directory fingerprint");

    // The office gateway, registered as 2000.
    let office = scratch.join("office");
    std::fs::create_dir_all(&office).unwrap();
    let pw = office.join("directory.password");
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let gcfg = office.join("gatewayd.toml");
    std::fs::write(
        &gcfg,
        format!(
            "listen = \"{NET}.2:{GW_PORT}\"\nmdns = false\nmax_pending = {MAX_PENDING}\n\n\
             [directory]\naddress = \"{NET}.1:{DIR_PORT}\"\nfingerprint = \"{dir_fp}\"\n\
             account = \"office\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let mut gw = Daemon::start(
        Some(&hosts.gw.name),
        bin("keyline-gatewayd"),
        &office.join("gw"),
        &["run", "--config", gcfg.to_str().unwrap()],
    )
    .unwrap();
    wait_for("the office to register", Duration::from_secs(15), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(())
    });
    // The gateway names its fingerprint when it starts.
    let gw_fp = gw
        .log_text()
        .lines()
        .find_map(|l| l.split("fingerprint ").nth(1).map(|f| f.trim().to_string()))
        .filter(|f| f.len() == 64)
        .expect("the gateway's fingerprint in its log");

    // The legitimate call.
    let mut alice = terminal(
        &scratch,
        &hosts.alice,
        &dir_fp,
        "alice",
        &["--audio-in", "tone:600"],
    );
    let mut bob = terminal(
        &scratch,
        &hosts.bob,
        &dir_fp,
        "bob",
        &["--audio-in", "tone:900", "--auto-answer", "0"],
    );
    ok(&alice, &["dial", "1002"]);
    for d in [&alice, &bob] {
        wait_for("the call to connect", Duration::from_secs(15), || {
            (jstr(&status(d), &["call", "state"])? == "connected").then_some(())
        });
    }
    wait_for("media both ways", Duration::from_secs(10), || {
        let (ra, rb) = received(&alice, &bob)?;
        (ra > 25.0 && rb > 25.0).then_some(())
    });
    let calls = dir.json(&["calls"]).unwrap();
    let call_id = calls["calls"][0]["id"].as_u64().expect("the call's id");

    // The probe: legitimate look-ups throughout.
    let probe_out = scratch.join("probe.txt");
    let script = hostile_dir().join("hostile.py");
    let mut probe = Kid(Some(
        Command::new("ip")
            .args(["netns", "exec", &hosts.probe.name])
            .arg(&py)
            .arg(&script)
            .args([
                "probe",
                "--dir",
                &format!("{NET}.1:{DIR_PORT}"),
                "--dir-fp",
                &dir_fp,
                "--account",
                "probe",
                "--password",
                PW,
                "--target-account",
                "target",
                "--target-number",
                "3005",
                "--seconds",
                "120",
            ])
            .stdout(std::fs::File::create(&probe_out).unwrap())
            .stderr(std::fs::File::create(scratch.join("probe.err")).unwrap())
            .spawn()
            .expect("start the probe"),
    ));
    // Before: eight seconds of look-ups, with the call going on.
    let mut rss_dir = Vec::new();
    let mut rss_gw = Vec::new();
    let (dpid, gpid) = (dir.pid().unwrap(), gw.pid().unwrap());
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        rss_dir.push(rss_kib(dpid).unwrap_or(0));
        rss_gw.push(rss_kib(gpid).unwrap_or(0));
    }
    let (rss_dir0, rss_gw0) = (
        *rss_dir.iter().max().unwrap(),
        *rss_gw.iter().max().unwrap(),
    );
    let attack_from = now_ms();

    // The attack.
    let report = scratch.join("report.json");
    let sources: Vec<String> = (20..28).map(|i| format!("{NET}.{i}")).collect();
    let flood: Vec<String> = (30..32).map(|i| format!("{NET}.{i}")).collect();
    let mut attacker = Kid(Some(
        Command::new("ip")
            .args(["netns", "exec", &hosts.attacker.name, "nice", "-n", "19"])
            .arg(&py)
            .arg(&script)
            .args([
                "attack",
                "--dir",
                &format!("{NET}.1:{DIR_PORT}"),
                "--dir-fp",
                &dir_fp,
                "--gw",
                &format!("{NET}.2:{GW_PORT}"),
                "--gw-fp",
                &gw_fp,
                "--account",
                "mallory",
                "--password",
                PW,
                "--number",
                "3001",
                "--victim-number",
                "1001",
                "--office",
                "2000",
                "--flood-account",
                "victim",
                "--call-id",
                &call_id.to_string(),
                "--sources",
                &sources.join(","),
                "--flood-sources",
                &flood.join(","),
                "--idle",
                "1200",
                "--gw-idle",
                "200",
                "--enrol",
                &(MAX_PENDING * 2).to_string(),
                "--max-pending",
                &MAX_PENDING.to_string(),
                "--report",
                report.to_str().unwrap(),
            ])
            .stdout(std::fs::File::create(scratch.join("attack.txt")).unwrap())
            .stderr(std::fs::File::create(scratch.join("attack.err")).unwrap())
            .spawn()
            .expect("start the attacker"),
    ));
    // While it runs: the call's audio every second, and memory.
    let mut windows: Vec<(f64, f64, f64)> = Vec::new();
    let mut last = (Instant::now(), received(&alice, &bob).unwrap_or((0.0, 0.0)));
    let deadline = Instant::now() + Duration::from_secs(80);
    let exit = loop {
        if let Some(Ok(Some(s))) = attacker.0.as_mut().map(Child::try_wait) {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1000));
        rss_dir.push(rss_kib(dpid).unwrap_or(0));
        rss_gw.push(rss_kib(gpid).unwrap_or(0));
        let now = Instant::now();
        let r = received(&alice, &bob).unwrap_or((0.0, 0.0));
        let secs = now.duration_since(last.0).as_secs_f64();
        windows.push((secs, r.0 - last.1 .0, r.1 - last.1 .1));
        last = (now, r);
    };
    let attack_to = now_ms();
    let attack_text = std::fs::read_to_string(scratch.join("attack.txt")).unwrap_or_default();
    let attack_err = std::fs::read_to_string(scratch.join("attack.err")).unwrap_or_default();
    println!("{attack_text}");
    let exit = exit.unwrap_or_else(|| {
        panic!("the attacker did not finish within 80 s:\n{attack_text}\n{attack_err}")
    });
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{attack_err}"));
    let failed: Vec<&Value> = rep["results"]
        .as_array()
        .map(|v| v.iter().filter(|r| r["ok"] != Value::Bool(true)).collect())
        .unwrap_or_default();
    assert!(
        failed.is_empty() && exit.success(),
        "attacks whose expected refusal did not happen: {failed:#?}\n{attack_err}"
    );
    let checks = rep["results"].as_array().map_or(0, Vec::len);

    // A few more seconds of look-ups after, then the probe stops.
    std::thread::sleep(Duration::from_secs(1));
    drop(probe.0.take().map(|mut c| {
        let _ = c.kill();
        c.wait()
    }));
    let _ = probe.wait_timeout(Duration::from_secs(1));
    let lines = std::fs::read_to_string(&probe_out).unwrap_or_default();
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for l in lines.lines() {
        let mut it = l.split_whitespace();
        let (Some(t), Some(us)) = (
            it.next().and_then(|v| v.parse::<u64>().ok()),
            it.next().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if t < attack_from {
            before.push(us);
        } else if t <= attack_to {
            during.push(us);
        }
    }
    assert!(
        before.len() >= 100 && during.len() >= 300,
        "too few look-ups ({} before, {} during): {}",
        before.len(),
        during.len(),
        std::fs::read_to_string(scratch.join("probe.err")).unwrap_or_default()
    );
    let (p99_before, p99_during) = (percentile(&mut before, 0.99), percentile(&mut during, 0.99));
    let (p50_before, p50_during) = (percentile(&mut before, 0.5), percentile(&mut during, 0.5));
    println!(
        "look-ups: before p50 {p50_before} us p99 {p99_before} us ({} of them); \
         during p50 {p50_during} us p99 {p99_during} us ({} of them)",
        before.len(),
        during.len()
    );
    // The baseline has a floor: on a shared 2-core machine a quiet
    // directory's p99 alone ranges from 1.7 to 6.2 ms between runs
    // (scheduler noise, ~600 samples), so twice a lucky 1.7 ms would fail
    // on noise; a real stall (a blocked event loop, a queue behind the
    // attack) costs tens of milliseconds and still fails.
    let baseline = p99_before.max(P99_FLOOR_US);
    assert!(
        p99_during <= 2 * baseline,
        "look-up p99 {p99_during} us during the attack, more than twice {baseline} us \
         (before: {p99_before} us)"
    );

    // The call's audio: 50 packets a second each way, in every window.
    println!("audio per window (s, alice, bob): {windows:?}");
    for &(secs, ra, rb) in &windows {
        let want = 50.0 * secs * 0.7;
        assert!(
            ra >= want && rb >= want,
            "audio dropped out: {ra} and {rb} packets in {secs:.2} s (want {want:.0}): {windows:?}"
        );
    }
    for d in [&alice, &bob] {
        let s = status(d);
        assert_eq!(
            jstr(&s, &["call", "state"]).as_deref(),
            Some("connected"),
            "{s}"
        );
        let lost = jnum(&s, &["call", "media", "lost"]).unwrap_or(0.0);
        let got = jnum(&s, &["call", "media", "received"]).unwrap_or(0.0);
        assert!(lost <= got * 0.01, "lost {lost} of {got}: {s}");
    }

    // The daemons: up, answering, memory bounded, no panic.
    assert!(alive(&mut dir), "the directory died:\n{}", dir.log_text());
    assert!(alive(&mut gw), "the gateway died:\n{}", gw.log_text());
    let st = dir.json(&["status"]).expect("the directory answers");
    let gst = gw.json(&["status"]).expect("the gateway answers");
    assert_eq!(
        jstr(&gst, &["directory", "state"]).as_deref(),
        Some("registered"),
        "{gst}"
    );
    let (peak_dir, peak_gw) = (
        *rss_dir.iter().max().unwrap(),
        *rss_gw.iter().max().unwrap(),
    );
    println!(
        "memory: directory {rss_dir0} -> peak {peak_dir} KiB, gateway {rss_gw0} -> peak {peak_gw} KiB"
    );
    // Each password check is allowed ~19 MiB (argon2), four at once.
    assert!(
        peak_dir <= 2 * rss_dir0 + 96 * 1024,
        "directory memory {rss_dir0} -> {peak_dir} KiB"
    );
    assert!(
        peak_gw <= 2 * rss_gw0 + 64 * 1024,
        "gateway memory {rss_gw0} -> {peak_gw} KiB"
    );
    println!("directory admission after the attack: {}", st["admission"]);
    for (name, d) in [("directory", &dir), ("gateway", &gw)] {
        let log = d.log_text();
        assert!(!log.contains("panicked"), "the {name} panicked:\n{log}");
    }

    ok(&alice, &["hangup"]);
    wait_for("Bob to see the hang-up", Duration::from_secs(5), || {
        status(&bob)["call"].is_null().then_some(())
    });
    for d in [&mut alice, &mut bob, &mut gw, &mut dir] {
        assert!(d.stop(), "a daemon did not stop cleanly:\n{}", d.log_text());
    }
    drop(hosts);
    println!(
        "{checks} attack checks passed; the test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
