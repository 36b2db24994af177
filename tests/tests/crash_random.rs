//! Crashes at random moments (issue 15). One office on loopback, with the
//! real programs: a `keyline-directory`, a `keyline-gatewayd` registered
//! with it as the office number, four stations (`keyline-agent run`) and an
//! internet terminal (`keyline-agent terminal`). A scripted office day runs
//! over and over: accounts added on the directory, forwarding set and
//! cleared there, forwarding, do-not-disturb and a short code changed on
//! the gateway, a call dialled, answered and hung up, a blind transfer, a
//! voice message left for a station that does not answer, a call to the
//! terminal through the directory, and texts: to the terminal (kept by the
//! directory until delivered), from the terminal to the office, and between
//! stations.
//!
//! Twenty times, at a random moment of that day (a seeded RNG picks the
//! victim and the delay; `KEYLINE_CRASH_SEED` replays a run,
//! `KEYLINE_CRASH_ROUNDS` changes the number of rounds), the directory, the
//! gateway or one of the agents is killed with SIGKILL and started again
//! on the same state. After each:
//!
//! - `PRAGMA integrity_check` is `ok` on the killed daemon's database
//!   (opened read-only while it is down) and on every database after the
//!   restart;
//! - every station, the terminal and the office's uplink are registered
//!   again within 5 s of the restarted daemon answering its control socket
//!   (measured; the distribution is printed at the end);
//! - nothing is lost or duplicated: every operation whose reply came back
//!   is there exactly once, the one the crash interrupted once or not at
//!   all (never twice, never half): accounts, the directory's forwarding,
//!   the gateway's settings (in its database and as the station sees
//!   them), short codes, call records, voice messages (each row's file is
//!   a whole Ogg Opus file), texts and mail (delivered once, by the
//!   directory, to the terminal's mailbox or the office).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyline_tests::{
    add_account, bin, enrol, free_udp_port, jnum, jstr, wait_for, Daemon, Scratch,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";
/// The office's number on the directory.
const OFFICE: &str = "5550100";
/// The terminal's number.
const TERM: &str = "1001";
/// A number whose forwarding the day changes on the directory.
const CAROL: &str = "7000";
/// The stations: 201 calls and changes its settings, 202 answers by hand
/// and transfers, 203 answers by itself (the transfer's target) and leaves
/// voice messages, 204 never answers (its mailbox takes them; it is the
/// office mailbox too).
const EXTS: [&str; 4] = ["201", "202", "203", "204"];
const ROUNDS: usize = 20;
/// Everyone must be registered again this soon after the restarted daemon
/// answers (the bound).
const REREGISTER: Duration = Duration::from_secs(5);
/// How long a step's single command may take on a loaded machine.
const CMD_LIMIT: Duration = Duration::from_secs(10);
/// How long a step waits for a call to change state.
const STATE_LIMIT: Duration = Duration::from_secs(8);

/// A small seeded generator (SplitMix64): the run is replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Who is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Dir,
    Gw,
    Station(usize),
    Term,
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Dir => "directory".into(),
            Who::Gw => "gateway".into(),
            Who::Station(i) => format!("station {}", EXTS[i]),
            Who::Term => "terminal".into(),
        }
    }
}

/// Why a step stopped early.
#[derive(Debug)]
enum Stop {
    /// The crash happened during it: what it did last is in flight.
    Killed,
    /// It failed with no crash to blame: the test fails.
    Failed(String),
}

type Step = Result<(), Stop>;

/// Where a CLI finds its daemon: cheap to copy into polling threads.
#[derive(Debug, Clone)]
struct Ctl {
    bin: PathBuf,
    state: PathBuf,
}

impl Ctl {
    /// Run `args`, with `stdin` as its input; its standard output. Gives
    /// up after `limit`, or half a second after `killed` is set.
    fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        limit: Duration,
        killed: &AtomicBool,
    ) -> Result<String, Stop> {
        let mut child = Command::new(&self.bin)
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run a CLI");
        if let (Some(s), Some(mut i)) = (stdin, child.stdin.take()) {
            let _ = writeln!(i, "{s}");
        }
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let mut since_kill: Option<Instant> = None;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait for a CLI") {
                break Some(st);
            }
            if killed.load(Ordering::SeqCst)
                && since_kill.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_millis(500)
            {
                break None;
            }
            if start.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if killed.load(Ordering::SeqCst) {
                Stop::Killed
            } else {
                Stop::Failed(format!("{args:?}: no answer within {limit:?}"))
            });
        };
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        if status.success() {
            Ok(out)
        } else if killed.load(Ordering::SeqCst) {
            Err(Stop::Killed)
        } else {
            Err(Stop::Failed(format!("{args:?}: {}", err.trim())))
        }
    }

    /// `args --json`, parsed.
    fn json(&self, args: &[&str], killed: &AtomicBool) -> Result<Value, Stop> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a, None, CMD_LIMIT, killed)?;
        serde_json::from_str(&out).map_err(|e| Stop::Failed(format!("{args:?}: {e}: {out}")))
    }

    /// `status --json` right now, if the daemon answers.
    fn status(&self) -> Option<Value> {
        self.json(&["status"], &AtomicBool::new(false)).ok()
    }
}

/// A daemon the test can kill and start again with the same arguments.
struct Proc {
    name: String,
    ctl: Ctl,
    args: Vec<String>,
    d: Daemon,
    starts: u32,
}

impl Proc {
    fn start(name: &str, program: &str, state: PathBuf, args: &[&str]) -> Proc {
        let b = bin(program);
        let d = Daemon::start(None, b.clone(), &state, args).expect("start a daemon");
        Proc {
            name: name.to_string(),
            ctl: Ctl { bin: b, state },
            args: args.iter().map(|s| s.to_string()).collect(),
            d,
            starts: 1,
        }
    }

    /// Start it again on the same state; the log of the run before is
    /// kept beside it.
    fn restart(&mut self) {
        let log = self.d.log.clone();
        let _ = std::fs::rename(&log, log.with_extension(format!("log.{}", self.starts)));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.d = Daemon::start(None, self.ctl.bin.clone(), &self.ctl.state, &args)
            .expect("restart a daemon");
        self.starts += 1;
    }
}

/// Kills `pid` with SIGKILL `delay` after the day's step number `target`
/// starts (`started` is the number of the step running), unless dropped
/// first (a failed test must not kill a process id that might be reused).
struct Killer {
    handle: Option<JoinHandle<Option<Instant>>>,
    cancel: Arc<AtomicBool>,
}

impl Killer {
    fn start(
        pid: u32,
        started: Arc<AtomicU64>,
        target: u64,
        delay: Duration,
        killed: Arc<AtomicBool>,
    ) -> Killer {
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let handle = std::thread::spawn(move || {
            while started.load(Ordering::SeqCst) < target {
                if c.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if c.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // The flag first: whatever fails from here on failed because
            // of the crash.
            killed.store(true, Ordering::SeqCst);
            let st = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(st.success(), "kill -9 {pid} failed");
            Some(Instant::now())
        });
        Killer {
            handle: Some(handle),
            cancel,
        }
    }

    /// When the kill was sent.
    fn join(mut self) -> Instant {
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("the killer thread")
            .expect("killed")
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How many of something there must be: at least `acked` (their replies
/// came back), and at most that plus the ones in flight at a crash
/// (`maybe`) and those still in flight from the round before (`late`: a
/// voice message being stored, a record being written).
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    acked: u32,
    maybe: u32,
    late: u32,
}

impl Count {
    fn most(&self) -> u32 {
        self.acked + self.maybe + self.late
    }

    fn begin(&mut self) {
        self.maybe += 1;
    }

    fn ack(&mut self) {
        self.maybe -= 1;
        self.acked += 1;
    }

    fn check(&self, what: &str, seen: u32, problems: &mut Vec<String>) {
        if seen < self.acked {
            problems.push(format!(
                "{what}: {seen} found, {} acknowledged: LOST",
                self.acked
            ));
        } else if seen > self.most() {
            problems.push(format!(
                "{what}: {seen} found, at most {} possible ({} acknowledged, {} in flight): DUPLICATED",
                self.most(),
                self.acked,
                self.maybe + self.late
            ));
        }
    }

    /// What was seen is what there is from now on; what could still come
    /// from this round's crash may come until the next check.
    fn settle(&mut self, seen: u32) {
        let left = self.most().saturating_sub(seen);
        self.late = left.min(self.maybe);
        self.maybe = 0;
        self.acked = seen;
    }
}

/// A setting's value: `now`, or `then` if the change in flight at a crash
/// was applied.
#[derive(Debug, Clone)]
struct Setting {
    now: Value,
    then: Option<Value>,
}

impl Setting {
    fn new(v: Value) -> Setting {
        Setting { now: v, then: None }
    }

    fn begin(&mut self, v: Value) {
        self.then = Some(v);
    }

    fn ack(&mut self) {
        if let Some(v) = self.then.take() {
            self.now = v;
        }
    }

    fn check(&self, what: &str, seen: &Value, problems: &mut Vec<String>) {
        if seen != &self.now && Some(seen) != self.then.as_ref() {
            problems.push(format!(
                "{what}: {seen} found, expected {}{}",
                self.now,
                self.then
                    .as_ref()
                    .map(|t| format!(" (or {t}, in flight)"))
                    .unwrap_or_default()
            ));
        }
    }

    fn settle(&mut self, seen: Value) {
        self.now = seen;
        self.then = None;
    }
}

/// What the script knows was done.
#[derive(Debug)]
struct Model {
    accounts: BTreeMap<String, Count>,
    carol_forward: Setting,
    forward_201: Setting,
    dnd_201: Setting,
    speed_dial: Setting,
    /// Call records by (caller, callee).
    calls: BTreeMap<(String, String), Count>,
    /// Acknowledged call records by (caller, callee, outcome).
    outcomes: BTreeMap<(String, String, String), u32>,
    /// Voice messages by (mailbox, caller): 203 leaves them for 204, and a
    /// call the crash left ringing may end in its callee's mailbox.
    voicemail: BTreeMap<(String, String), Count>,
    /// Texts for the terminal (by body), for the office and for 203.
    mail: BTreeMap<String, Count>,
    office_texts: BTreeMap<String, Count>,
    texts: BTreeMap<String, Count>,
    /// Per kind of operation: acknowledged, in flight at a crash.
    tally: BTreeMap<&'static str, (u32, u32)>,
}

impl Model {
    fn new() -> Model {
        Model {
            accounts: BTreeMap::new(),
            carol_forward: Setting::new(Value::Null),
            forward_201: Setting::new(Value::Null),
            dnd_201: Setting::new(Value::Bool(false)),
            speed_dial: Setting::new(Value::Null),
            calls: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            voicemail: BTreeMap::new(),
            mail: BTreeMap::new(),
            office_texts: BTreeMap::new(),
            texts: BTreeMap::new(),
            tally: BTreeMap::new(),
        }
    }

    /// A call is being made: its record, and perhaps (if nobody answers)
    /// a voice message in the callee's mailbox.
    fn call_begin(&mut self, caller: &str, callee: &str) {
        self.calls
            .entry((caller.to_string(), callee.to_string()))
            .or_default()
            .begin();
        self.voicemail(callee, caller).begin();
    }

    fn voicemail(&mut self, mailbox: &str, caller: &str) -> &mut Count {
        self.voicemail
            .entry((mailbox.to_string(), caller.to_string()))
            .or_default()
    }

    /// The call is over, with `outcome` when the script knows it. One
    /// that went to the mailbox keeps its voice message in flight until
    /// the mailbox lists it; any other leaves none.
    fn call_acked(&mut self, caller: &str, callee: &str, outcome: Option<&str>) {
        self.calls
            .get_mut(&(caller.to_string(), callee.to_string()))
            .unwrap()
            .ack();
        if outcome != Some("voicemail") {
            self.voicemail(callee, caller).maybe -= 1;
        }
        if let Some(o) = outcome {
            *self
                .outcomes
                .entry((caller.to_string(), callee.to_string(), o.to_string()))
                .or_default() += 1;
        }
    }

    fn done(&mut self, kind: &'static str) {
        self.tally.entry(kind).or_default().0 += 1;
    }

    fn interrupted(&mut self, kind: &'static str) {
        self.tally.entry(kind).or_default().1 += 1;
    }
}

/// The office, the directory and the terminal, and the flag the killer
/// sets.
struct World {
    scratch: Scratch,
    dir: Proc,
    gw: Proc,
    stations: Vec<Proc>,
    term: Proc,
    killed: Arc<AtomicBool>,
    dir_db: PathBuf,
    gw_db: PathBuf,
    mailbox: PathBuf,
}

impl World {
    fn set_up() -> World {
        let scratch = Scratch::new("crash");
        let dir_state = scratch.join("dir");
        add_account(&dir_state, "office", &[OFFICE], PW);
        add_account(&dir_state, "alice", &[TERM], PW);
        add_account(&dir_state, "carol", &[CAROL], PW);
        let dir_addr = format!("127.0.0.1:{}", free_udp_port());
        let dir_cfg = scratch.join("directory.toml");
        std::fs::write(&dir_cfg, format!("listen = \"{dir_addr}\"\n")).unwrap();
        let dir = Proc::start(
            "directory",
            "keyline-directory",
            dir_state.clone(),
            &["serve", "--config", dir_cfg.to_str().unwrap()],
        );
        let st = wait_for("the directory", Duration::from_secs(20), || {
            dir.ctl.status()
        });
        let fp = jstr(&st, &["fingerprint"]).expect("directory fingerprint");

        let pw = scratch.join("password");
        std::fs::write(&pw, format!("{PW}\n")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // A short greeting (a beep) keeps a voice message short.
        let greeting = scratch.join("greeting.wav");
        keyline_media::write_wav(
            &greeting,
            &keyline_media::tone_sequence(&[(1000.0, 200), (0.0, 100)]),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let gw_cfg = scratch.join("gatewayd.toml");
        std::fs::write(
            &gw_cfg,
            format!(
                "listen = \"{listen}\"\nmdns = false\nring_timeout_secs = 2\n\
                 voicemail_silence_secs = 1\nvoicemail_max_secs = 5\n\
                 voicemail_greeting = \"{}\"\noffice_mailbox = \"204\"\n\
                 [directory]\naddress = \"{dir_addr}\"\nfingerprint = \"{fp}\"\n\
                 account = \"office\"\npassword_file = \"{}\"\n",
                greeting.display(),
                pw.display()
            ),
        )
        .unwrap();
        let gw_state = scratch.join("gw");
        let gw = Proc::start(
            "gateway",
            "keyline-gatewayd",
            gw_state.clone(),
            &["run", "--config", gw_cfg.to_str().unwrap()],
        );
        wait_for("the office to register", Duration::from_secs(20), || {
            (jstr(&gw.ctl.status()?, &["directory", "state"])? == "registered").then_some(())
        });

        let mut stations = Vec::new();
        for (i, ext) in EXTS.iter().enumerate() {
            let tone = format!("tone:{}", 400 + 100 * i);
            let mut args = vec![
                "run",
                "--no-mdns",
                "--gateway",
                &listen,
                "--audio-in",
                &tone,
                "--audio-out",
                "null",
            ];
            if *ext == "203" {
                args.extend_from_slice(&["--auto-answer", "0"]);
            }
            let p = Proc::start(
                &format!("station {ext}"),
                "keyline-agent",
                scratch.join(&format!("agent-{ext}")),
                &args,
            );
            enrol(&gw.d, &p.d, ext);
            stations.push(p);
        }
        let term_state = scratch.join("terminal");
        let term = Proc::start(
            "terminal",
            "keyline-agent",
            term_state.clone(),
            &[
                "terminal",
                "--directory",
                &dir_addr,
                "--directory-fp",
                &fp,
                "--account",
                "alice",
                "--password-file",
                pw.to_str().unwrap(),
                "--bind",
                "127.0.0.1:0",
                "--audio-in",
                "tone:900",
                "--audio-out",
                "null",
            ],
        );
        wait_for("the terminal to register", Duration::from_secs(20), || {
            (jstr(&term.ctl.status()?, &["state"])? == "registered").then_some(())
        });
        World {
            dir_db: dir_state.join("directory.sqlite"),
            gw_db: gw_state.join("gatewayd.sqlite"),
            mailbox: term_state.join("mail"),
            scratch,
            dir,
            gw,
            stations,
            term,
            killed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn proc(&self, w: Who) -> &Proc {
        match w {
            Who::Dir => &self.dir,
            Who::Gw => &self.gw,
            Who::Station(i) => &self.stations[i],
            Who::Term => &self.term,
        }
    }

    fn proc_mut(&mut self, w: Who) -> &mut Proc {
        match w {
            Who::Dir => &mut self.dir,
            Who::Gw => &mut self.gw,
            Who::Station(i) => &mut self.stations[i],
            Who::Term => &mut self.term,
        }
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn ctl(&self, w: Who, args: &[&str]) -> Result<String, Stop> {
        self.proc(w).ctl.run(args, None, CMD_LIMIT, &self.killed)
    }

    fn json(&self, w: Who, args: &[&str]) -> Result<Value, Stop> {
        self.proc(w).ctl.json(args, &self.killed)
    }

    fn st(&self, ext: &str) -> Who {
        Who::Station(EXTS.iter().position(|e| *e == ext).expect("an extension"))
    }

    /// Poll `f` until it gives a value; stop at once on a crash.
    fn until<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Result<Option<T>, Stop>,
    ) -> Result<T, Stop> {
        let deadline = Instant::now() + limit;
        loop {
            if self.killed() {
                return Err(Stop::Killed);
            }
            if let Some(v) = f()? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(if self.killed() {
                    Stop::Killed
                } else {
                    Stop::Failed(format!("no {what} within {limit:?}"))
                });
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    fn call_state(&self, w: Who) -> Result<Option<String>, Stop> {
        Ok(jstr(&self.json(w, &["status"])?, &["call", "state"]))
    }

    fn wait_state(&self, w: Who, state: &str) -> Result<(), Stop> {
        self.until(&format!("{} {state}", w.name()), STATE_LIMIT, || {
            Ok((self.call_state(w)?.as_deref() == Some(state)).then_some(()))
        })
    }

    fn wait_idle(&self, w: Who) -> Result<(), Stop> {
        self.until(&format!("{} idle", w.name()), STATE_LIMIT, || {
            Ok(self.json(w, &["status"])?["call"].is_null().then_some(()))
        })
    }

    /// Every agent: whoever is registered to take calls.
    fn agents(&self) -> Vec<Who> {
        let mut v: Vec<Who> = (0..EXTS.len()).map(Who::Station).collect();
        v.push(Who::Term);
        v
    }
}

/// The steps of the day, in order; the day starts over after the last.
const DAY: [&str; 12] = [
    "account",
    "station-forward",
    "call",
    "mail-to-terminal",
    "directory-forward",
    "transfer",
    "dnd",
    "text-to-office",
    "voicemail",
    "speed-dial",
    "outside-call",
    "text-between-stations",
];

fn step(w: &World, m: &mut Model, name: &'static str, n: u64) -> Step {
    let killed = &*w.killed;
    match name {
        "account" => {
            let id = format!("crash{n}");
            let number = format!("8{n:04}");
            m.accounts.entry(id.clone()).or_default().begin();
            w.dir.ctl.run(
                &["user", "add", &id, "--number", &number],
                Some(PW),
                CMD_LIMIT,
                killed,
            )?;
            m.accounts.get_mut(&id).unwrap().ack();
        }
        "directory-forward" => {
            if m.carol_forward.now.is_null() {
                m.carol_forward.begin(json!(TERM));
                w.ctl(Who::Dir, &["forward", "set", CAROL, "--to", TERM])?;
            } else {
                m.carol_forward.begin(Value::Null);
                w.ctl(Who::Dir, &["forward", "rm", CAROL])?;
            }
            m.carol_forward.ack();
        }
        "station-forward" => {
            let s = w.st("201");
            if m.forward_201.now.is_null() {
                m.forward_201.begin(json!("204"));
                w.ctl(s, &["dial", "*72204"])?;
            } else {
                m.forward_201.begin(Value::Null);
                w.ctl(s, &["dial", "*73"])?;
            }
            m.forward_201.ack();
        }
        "dnd" => {
            let s = w.st("201");
            if m.dnd_201.now == json!(false) {
                m.dnd_201.begin(json!(true));
                w.ctl(s, &["dial", "*78"])?;
            } else {
                m.dnd_201.begin(json!(false));
                w.ctl(s, &["dial", "*79"])?;
            }
            m.dnd_201.ack();
        }
        "speed-dial" => {
            if m.speed_dial.now.is_null() {
                m.speed_dial.begin(json!("203"));
                w.ctl(Who::Gw, &["speed-dial", "set", "*1", "203"])?;
            } else {
                m.speed_dial.begin(Value::Null);
                w.ctl(Who::Gw, &["speed-dial", "rm", "*1"])?;
            }
            m.speed_dial.ack();
        }
        "call" => {
            let (a, b) = (w.st("201"), w.st("202"));
            m.call_begin("201", "202");
            w.ctl(a, &["dial", "202"])?;
            w.wait_state(b, "alerting")?;
            w.ctl(b, &["answer"])?;
            w.wait_state(a, "connected")?;
            w.wait_state(b, "connected")?;
            w.ctl(a, &["hangup"])?;
            w.wait_idle(a)?;
            w.wait_idle(b)?;
            m.call_acked("201", "202", Some("answered"));
        }
        "transfer" => {
            let (a, b, c) = (w.st("201"), w.st("202"), w.st("203"));
            m.call_begin("201", "202");
            w.ctl(a, &["dial", "202"])?;
            w.wait_state(b, "alerting")?;
            w.ctl(b, &["answer"])?;
            w.wait_state(a, "connected")?;
            m.call_begin("201", "203");
            w.ctl(b, &["transfer", "203"])?;
            // 203 answers by itself; 201 is then talking to 203.
            w.until("201 talking to 203", STATE_LIMIT, || {
                let s = w.json(a, &["status"])?;
                Ok((jstr(&s, &["call", "peer"]).as_deref() == Some("203")
                    && jstr(&s, &["call", "state"]).as_deref() == Some("connected"))
                .then_some(()))
            })?;
            w.wait_idle(b)?;
            m.call_acked("201", "202", None);
            w.wait_state(c, "connected")?;
            w.ctl(c, &["hangup"])?;
            w.wait_idle(a)?;
            w.wait_idle(c)?;
            m.call_acked("201", "203", Some("answered"));
        }
        "voicemail" => {
            let (c, d) = (w.st("203"), w.st("204"));
            m.call_begin("203", "204");
            w.ctl(c, &["dial", "204"])?;
            w.wait_state(d, "alerting")?;
            // Nobody answers: after the ring timeout the mailbox does.
            w.wait_state(c, "connected")?;
            w.until("the gateway's mailbox", STATE_LIMIT, || {
                let calls = w.json(Who::Gw, &["calls"])?;
                Ok((calls["calls"][0]["state"] == "voicemail").then_some(()))
            })?;
            // The beep, then a second of 203's tone.
            std::thread::sleep(Duration::from_millis(1100));
            w.ctl(c, &["hangup"])?;
            w.wait_idle(c)?;
            m.call_acked("203", "204", Some("voicemail"));
            let want = m.voicemail("204", "203").acked + 1;
            w.until("the voice message in 204's mailbox", STATE_LIMIT, || {
                let list = w.json(d, &["voicemail", "list"])?;
                let n = list["voicemails"].as_array().map_or(0, |v| {
                    v.iter().filter(|x| x["from"] == "203").count() as u32
                });
                Ok((n >= want).then_some(()))
            })?;
            m.voicemail("204", "203").ack();
        }
        "outside-call" => {
            let a = w.st("201");
            m.call_begin("201", TERM);
            w.ctl(a, &["dial", TERM])?;
            w.wait_state(Who::Term, "alerting")?;
            w.ctl(Who::Term, &["answer"])?;
            w.wait_state(a, "connected")?;
            w.wait_state(Who::Term, "connected")?;
            w.ctl(Who::Term, &["hangup"])?;
            w.wait_idle(Who::Term)?;
            w.wait_idle(a)?;
            m.call_acked("201", TERM, Some("answered"));
        }
        "mail-to-terminal" => {
            let body = format!("mail-{n}");
            m.mail.entry(body.clone()).or_default().begin();
            w.ctl(w.st("201"), &["message", TERM, &body])?;
            m.mail.get_mut(&body).unwrap().ack();
        }
        "text-to-office" => {
            let body = format!("note-{n}");
            m.office_texts.entry(body.clone()).or_default().begin();
            w.ctl(Who::Term, &["message", OFFICE, &body])?;
            m.office_texts.get_mut(&body).unwrap().ack();
        }
        "text-between-stations" => {
            let body = format!("text-{n}");
            m.texts.entry(body.clone()).or_default().begin();
            w.ctl(w.st("202"), &["message", "203", &body])?;
            m.texts.get_mut(&body).unwrap().ack();
        }
        other => panic!("no step {other}"),
    }
    Ok(())
}

/// `PRAGMA integrity_check` on a database opened read-only.
fn integrity(path: &Path) -> Result<(), String> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get(0))
        .and_then(|r| r.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("{}: {}", path.display(), rows.join("; ")))
    }
}

/// Rows of a read-only query on a database.
fn query(path: &Path, sql: &str) -> Vec<Vec<Value>> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(x) => json!(x),
                    rusqlite::types::ValueRef::Real(x) => json!(x),
                    rusqlite::types::ValueRef::Text(t) => {
                        json!(String::from_utf8_lossy(t).to_string())
                    }
                    rusqlite::types::ValueRef::Blob(_) => json!("<blob>"),
                })
            })
            .collect::<rusqlite::Result<Vec<Value>>>()
    })
    .unwrap()
    .collect::<rusqlite::Result<Vec<_>>>()
    .unwrap()
}

/// Whether `client` is registered (again) after `victim` was restarted.
/// `term_regs`: the terminal's registrations before the crash.
fn registered(client: &str, victim: Who, ctls: &Ctls, term_regs: f64) -> bool {
    let dir_has = |number: &str| {
        ctls.dir
            .json(&["bindings"], &AtomicBool::new(false))
            .ok()
            .and_then(|b| {
                b["bindings"]
                    .as_array()
                    .map(|v| v.iter().any(|x| x["number"] == number))
            })
            .unwrap_or(false)
    };
    match client {
        "uplink" => {
            let Some(st) = ctls.gw.status() else {
                return false;
            };
            jstr(&st, &["directory", "state"]).as_deref() == Some("registered")
                && (victim != Who::Dir || dir_has(OFFICE))
        }
        "terminal" => {
            let Some(st) = ctls.term.status() else {
                return false;
            };
            let fresh = match victim {
                Who::Term => true,
                Who::Dir => jnum(&st, &["registrations"]).unwrap_or(0.0) > term_regs,
                _ => true,
            };
            jstr(&st, &["state"]).as_deref() == Some("registered")
                && fresh
                && (victim != Who::Dir || dir_has(TERM))
        }
        ext => {
            let i = EXTS.iter().position(|e| *e == ext).unwrap();
            let Some(st) = ctls.stations[i].status() else {
                return false;
            };
            if jstr(&st, &["state"]).as_deref() != Some("registered")
                || jstr(&st, &["ext"]).as_deref() != Some(ext)
            {
                return false;
            }
            if victim != Who::Gw {
                return true;
            }
            // The restarted gateway itself must see it.
            ctls.gw
                .json(&["agents"], &AtomicBool::new(false))
                .ok()
                .and_then(|a| {
                    a["agents"].as_array().map(|v| {
                        v.iter()
                            .any(|x| x["ext"] == ext && x["online"] == Value::Bool(true))
                    })
                })
                .unwrap_or(false)
        }
    }
}

#[derive(Clone)]
struct Ctls {
    dir: Ctl,
    gw: Ctl,
    stations: Vec<Ctl>,
    term: Ctl,
}

/// Who has to register again when `victim` restarts.
fn affected(victim: Who) -> Vec<String> {
    match victim {
        Who::Dir => vec!["terminal".into(), "uplink".into()],
        Who::Gw => {
            let mut v: Vec<String> = EXTS.iter().map(|e| e.to_string()).collect();
            v.push("uplink".into());
            v
        }
        Who::Station(i) => vec![EXTS[i].to_string()],
        Who::Term => vec!["terminal".into()],
    }
}

/// Wait (each in a thread of its own) until every station, the terminal
/// and the uplink are registered; how long each took from `ready`.
fn reregistration(
    w: &World,
    victim: Who,
    ready: Instant,
    term_regs: f64,
) -> Vec<(String, Option<Duration>)> {
    let ctls = Ctls {
        dir: w.dir.ctl.clone(),
        gw: w.gw.ctl.clone(),
        stations: w.stations.iter().map(|p| p.ctl.clone()).collect(),
        term: w.term.ctl.clone(),
    };
    let mut clients: Vec<String> = EXTS.iter().map(|e| e.to_string()).collect();
    clients.push("terminal".into());
    clients.push("uplink".into());
    let handles: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let ctls = ctls.clone();
            std::thread::spawn(move || {
                let deadline = ready + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if registered(&c, victim, &ctls, term_regs) {
                        return (c, Some(ready.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (c, None)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// End whatever the crash left ringing or connected, and wait until no
/// call is left anywhere.
fn tidy(w: &World) {
    let never = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut busy = Vec::new();
        for a in w.agents() {
            let ctl = &w.proc(a).ctl;
            match ctl.json(&["status"], &never) {
                Ok(s) if s["call"].is_null() && s["consult"].is_null() => {}
                Ok(s) => {
                    busy.push(format!("{}: {}", a.name(), s["call"]));
                    let _ = ctl.run(&["hangup"], None, CMD_LIMIT, &never);
                }
                Err(e) => busy.push(format!("{}: {e:?}", a.name())),
            }
        }
        for who in [Who::Gw, Who::Dir] {
            match w.proc(who).ctl.json(&["calls"], &never) {
                Ok(c) if c["calls"].as_array().is_some_and(Vec::is_empty) => {}
                Ok(c) => busy.push(format!("{}: {}", who.name(), c["calls"])),
                Err(e) => busy.push(format!("{}: {e:?}", who.name())),
            }
        }
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "calls left over after the crash: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything the script knows against what the daemons and their
/// databases hold; then what was seen becomes what the script knows.
fn check(w: &World, m: &mut Model) -> Vec<String> {
    let never = AtomicBool::new(false);
    let mut problems = Vec::new();
    for db in [&w.dir_db, &w.gw_db] {
        if let Err(e) = integrity(db) {
            problems.push(format!("integrity_check: {e}"));
        }
    }

    // Accounts.
    let users = w.dir.ctl.json(&["users"], &never).expect("users");
    let ids: Vec<String> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_string))
        .collect();
    for (id, c) in m.accounts.iter_mut() {
        let seen = ids.iter().filter(|x| *x == id).count() as u32;
        c.check(&format!("account {id}"), seen, &mut problems);
        c.settle(seen);
    }

    // The directory's forwarding of CAROL.
    let fw = w
        .dir
        .ctl
        .json(&["forward", "list"], &never)
        .expect("forwards");
    let seen = fw["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["number"] == CAROL)
        .map(|f| f["to"].clone())
        .unwrap_or(Value::Null);
    m.carol_forward.check(
        &format!("directory forwarding of {CAROL}"),
        &seen,
        &mut problems,
    );
    m.carol_forward.settle(seen);

    // 201's settings: in the gateway's database (written off the switch
    // task: give it a moment) and as pushed to the station.
    let station = w.stations[0].ctl.json(&["status"], &never).expect("status");
    let pushed = (
        station["settings"]["forward_always"].clone(),
        station["settings"]["dnd"].clone(),
    );
    let stored = || {
        let rows = query(
            &w.gw_db,
            "SELECT forward_always, dnd FROM line_settings WHERE ext = '201'",
        );
        rows.first().map_or((Value::Null, json!(false)), |r| {
            (r[0].clone(), json!(r[1].as_i64() == Some(1)))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut db = stored();
    while db != pushed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        db = stored();
    }
    if db != pushed {
        problems.push(format!(
            "201's settings: the gateway stored {db:?}, the station was told {pushed:?}"
        ));
    }
    m.forward_201
        .check("201's forwarding (stored)", &db.0, &mut problems);
    m.dnd_201
        .check("201's do-not-disturb (stored)", &db.1, &mut problems);
    m.forward_201.settle(db.0);
    m.dnd_201.settle(db.1);

    // The short code.
    let sd =
        w.gw.ctl
            .json(&["speed-dial", "list"], &never)
            .expect("speed dials");
    let seen = sd["speed_dials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["code"] == "*1")
        .map(|s| s["number"].clone())
        .unwrap_or(Value::Null);
    m.speed_dial.check("short code *1", &seen, &mut problems);
    m.speed_dial.settle(seen);

    // Call records: each once; none written twice.
    let cdr =
        w.gw.ctl
            .json(&["cdr", "--limit", "100000"], &never)
            .expect("cdr");
    let rows = cdr["cdr"].as_array().unwrap();
    let mut seen_rows = std::collections::BTreeSet::new();
    for r in rows {
        let key = format!(
            "{} {} {} {} {} {}",
            r["caller"], r["callee"], r["start_ms"], r["answer_ms"], r["end_ms"], r["outcome"]
        );
        if !seen_rows.insert(key.clone()) {
            problems.push(format!("call record written twice: {key}"));
        }
    }
    let count = |caller: &str, callee: &str, outcome: Option<&str>| {
        rows.iter()
            .filter(|r| {
                r["caller"] == caller
                    && r["callee"] == callee
                    && outcome.is_none_or(|o| r["outcome"] == o)
            })
            .count() as u32
    };
    for ((a, b, o), n) in &m.outcomes {
        let seen = count(a, b, Some(o));
        if seen < *n {
            problems.push(format!(
                "call records {a} -> {b} {o}: {seen} found, {n} acknowledged: LOST"
            ));
        }
    }
    for ((a, b), c) in m.calls.iter_mut() {
        let seen = count(a, b, None);
        c.check(&format!("call records {a} -> {b}"), seen, &mut problems);
        c.settle(seen);
    }
    for r in rows {
        let pair = (
            r["caller"].as_str().unwrap_or("").to_string(),
            r["callee"].as_str().unwrap_or("").to_string(),
        );
        if !m.calls.contains_key(&pair) {
            problems.push(format!("a call record nobody made: {r}"));
        }
    }

    // Voice messages: each row's file a whole Ogg Opus file, and 204's
    // list (what its user sees) the rows of its mailbox.
    let stored = query(&w.gw_db, "SELECT mailbox, caller, path FROM voicemails");
    for ((mailbox, caller), c) in m.voicemail.iter_mut() {
        let seen = stored
            .iter()
            .filter(|r| r[0] == mailbox.as_str() && r[1] == caller.as_str())
            .count() as u32;
        c.check(
            &format!("voice messages from {caller} for {mailbox}"),
            seen,
            &mut problems,
        );
        c.settle(seen);
    }
    for r in &stored {
        let key = (
            r[0].as_str().unwrap_or("").to_string(),
            r[1].as_str().unwrap_or("").to_string(),
        );
        if !m.voicemail.contains_key(&key) {
            problems.push(format!("a voice message nobody left: {r:?}"));
        }
        let path = PathBuf::from(r[2].as_str().unwrap());
        match keyline_media::read_ogg_opus(&path) {
            Ok(pcm) if !pcm.is_empty() => {}
            Ok(_) => problems.push(format!("voice message {} is empty", path.display())),
            Err(e) => problems.push(format!("voice message {}: {e}", path.display())),
        }
    }
    let in_mailbox = || {
        let list = w.stations[3]
            .ctl
            .json(&["voicemail", "list"], &never)
            .expect("voicemail list");
        let listed = list["voicemails"].as_array().map_or(0, Vec::len);
        let rows = query(&w.gw_db, "SELECT id FROM voicemails WHERE mailbox = '204'").len();
        (listed, rows)
    };
    let (mut listed, mut rows) = in_mailbox();
    let deadline = Instant::now() + Duration::from_secs(2);
    while listed != rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        (listed, rows) = in_mailbox();
    }
    if listed != rows {
        problems.push(format!(
            "204 lists {listed} voice messages, its mailbox holds {rows}"
        ));
    }

    // Mail: the directory delivers what it holds once everyone is back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mail = w
            .dir
            .ctl
            .json(&["mail", "list"], &never)
            .expect("mail list");
        if mail["mail"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "the directory still holds mail 15 s after everyone was back: {}",
                mail["mail"]
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered: Vec<String> = std::fs::read_dir(&w.mailbox)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| {
                    let v: Value =
                        serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
                    v["body"].as_str().map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    for (body, c) in m.mail.iter_mut() {
        let seen = delivered.iter().filter(|b| *b == body).count() as u32;
        c.check(
            &format!("mail {body:?} at the terminal"),
            seen,
            &mut problems,
        );
        c.settle(seen);
    }
    let texts = query(&w.gw_db, "SELECT recipient, body FROM texts");
    let texts_for =
        |to: &str, body: &str| texts.iter().filter(|r| r[0] == to && r[1] == body).count() as u32;
    for (body, c) in m.office_texts.iter_mut() {
        let seen = texts_for("204", body);
        c.check(
            &format!("text {body:?} for the office"),
            seen,
            &mut problems,
        );
        c.settle(seen);
    }
    for (body, c) in m.texts.iter_mut() {
        let seen = texts_for("203", body);
        c.check(&format!("text {body:?} for 203"), seen, &mut problems);
        c.settle(seen);
    }
    problems
}

/// Voice message files no row names: what a crash during a recording
/// leaves (never shown to anyone).
fn orphan_recordings(w: &World) -> usize {
    let rows = query(&w.gw_db, "SELECT path FROM voicemails");
    let known: Vec<String> = rows
        .iter()
        .filter_map(|r| r[0].as_str().map(str::to_string))
        .collect();
    let Ok(boxes) = std::fs::read_dir(w.scratch.join("gw").join("voicemail")) else {
        return 0;
    };
    boxes
        .flatten()
        .filter_map(|b| std::fs::read_dir(b.path()).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| !known.contains(&e.path().display().to_string()))
        .count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[test]
fn sigkill_at_random_moments_of_an_office_day_loses_and_duplicates_nothing() {
    let t_test = Instant::now();
    let seed: u64 = std::env::var("KEYLINE_CRASH_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                ^ u64::from(std::process::id())
        });
    let rounds: usize = std::env::var("KEYLINE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(ROUNDS);
    eprintln!("crash_random: seed {seed} (replay with KEYLINE_CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = Rng(seed);
    let mut w = World::set_up();
    eprintln!("crash_random: set up in {:?}", t_test.elapsed());
    let mut m = Model::new();
    let mut at = 0usize;
    let mut n = 0u64;
    let started = Arc::new(AtomicU64::new(0));
    let mut times: Vec<(Who, String, Duration)> = Vec::new();
    // How long each step takes (a guess until it has been timed, then a
    // running average): the kill lands at a random moment of a step
    // picked at random, or just after it.
    let mut takes: BTreeMap<&str, (Duration, bool)> = DAY
        .iter()
        .map(|s| {
            let ms = match *s {
                "voicemail" => 3500,
                "transfer" => 300,
                "call" | "outside-call" => 200,
                _ => 30,
            };
            (*s, (Duration::from_millis(ms), false))
        })
        .collect();

    for round in 1..=rounds {
        let victim = match rng.below(3) {
            0 => Who::Dir,
            1 => Who::Gw,
            _ => match rng.below(EXTS.len() as u64 + 1) {
                i if (i as usize) < EXTS.len() => Who::Station(i as usize),
                _ => Who::Term,
            },
        };
        let ahead = rng.below(DAY.len() as u64);
        let target = n + 1 + ahead;
        let target_step = DAY[(at + ahead as usize) % DAY.len()];
        let delay = Duration::from_millis(rng.below(takes[target_step].0.as_millis() as u64 + 1));
        let term_regs = w
            .term
            .ctl
            .status()
            .and_then(|s| jnum(&s, &["registrations"]))
            .unwrap_or(0.0);
        w.killed.store(false, Ordering::SeqCst);
        let pid = w.proc(victim).d.pid().expect("a running victim");
        let killer = Killer::start(pid, started.clone(), target, delay, w.killed.clone());
        let t_round = Instant::now();

        // The day goes on until the crash.
        let mut during = String::from("before the first step");
        while !w.killed() {
            let name = DAY[at % DAY.len()];
            at += 1;
            n += 1;
            started.store(n, Ordering::SeqCst);
            let t_step = Instant::now();
            match step(&w, &mut m, name, n) {
                Ok(()) => {
                    m.done(name);
                    let (t, timed) = takes.get_mut(name).unwrap();
                    *t = if *timed {
                        (*t * 3 + t_step.elapsed()) / 4
                    } else {
                        t_step.elapsed()
                    };
                    *timed = true;
                    during = format!("after {name}");
                }
                Err(Stop::Killed) => {
                    during = format!("during {name}");
                    m.interrupted(name);
                    break;
                }
                Err(Stop::Failed(e)) => {
                    if w.killed() {
                        during = format!("during {name}");
                        m.interrupted(name);
                        break;
                    }
                    panic!("round {round} (seed {seed}): step {name} failed with no crash: {e}");
                }
            }
        }
        let t_kill = killer.join();
        let p = w.proc_mut(victim);
        let mut child = p.d.child.take().expect("the victim's process");
        let status = child.wait().expect("reap the victim");
        assert!(!status.success(), "{} exited by itself: {status:?}", p.name);

        // Its database, while it is down.
        let db = match victim {
            Who::Dir => Some(w.dir_db.clone()),
            Who::Gw => Some(w.gw_db.clone()),
            _ => None,
        };
        if let Some(db) = &db {
            if let Err(e) = integrity(db) {
                panic!(
                    "round {round} (seed {seed}): after killing the {}: {e}",
                    victim.name()
                );
            }
        }

        // Start it again; everyone registers again.
        w.proc_mut(victim).restart();
        let t_start = Instant::now();
        let ctl = w.proc(victim).ctl.clone();
        let ready = wait_for(
            &format!("the restarted {} to answer", victim.name()),
            Duration::from_secs(20),
            || ctl.status().map(|_| Instant::now()),
        );
        let regs = reregistration(&w, victim, ready, term_regs);
        let late: Vec<String> = regs
            .iter()
            .filter(|(_, t)| t.is_none_or(|t| t > REREGISTER))
            .map(|(c, t)| format!("{c}: {t:?}"))
            .collect();
        assert!(
            late.is_empty(),
            "round {round} (seed {seed}): after the {} was killed and started again, not \
             registered within {REREGISTER:?} of it being ready: {late:?} (logs in {})",
            victim.name(),
            w.scratch.path.display()
        );
        let mine = affected(victim);
        let mut took = Vec::new();
        for (c, t) in &regs {
            if mine.contains(c) {
                let t = t.unwrap();
                times.push((victim, c.clone(), t));
                took.push(format!("{c} {:.2}s", t.as_secs_f64()));
            }
        }

        tidy(&w);
        let problems = check(&w, &mut m);
        eprintln!(
            "round {round:2}: killed the {} {:.2}s into the round, {during} (aimed {:.2}s into {target_step}); ready {:.2}s after the \
             restart; registered again: {}; round took {:.1}s",
            victim.name(),
            (t_kill - t_round).as_secs_f64(),
            delay.as_secs_f64(),
            (ready - t_start).as_secs_f64(),
            took.join(", "),
            t_round.elapsed().as_secs_f64()
        );
        assert!(
            problems.is_empty(),
            "round {round} (seed {seed}), after killing the {} {during}:\n{}\n(logs in {})",
            victim.name(),
            problems.join("\n"),
            w.scratch.path.display()
        );
    }

    // What the day did, and how fast everyone came back.
    eprintln!(
        "operations (acknowledged, in flight at a crash): {:?}",
        m.tally
    );
    eprintln!(
        "held at the end: {} call records {:?}, voice messages {:?}, {} texts delivered to \
         the terminal, {} to the office, {} to 203, {} accounts",
        m.calls.values().map(|c| c.acked).sum::<u32>(),
        m.outcomes,
        m.voicemail
            .iter()
            .map(|(k, c)| (k.clone(), c.acked))
            .collect::<Vec<_>>(),
        m.mail.values().map(|c| c.acked).sum::<u32>(),
        m.office_texts.values().map(|c| c.acked).sum::<u32>(),
        m.texts.values().map(|c| c.acked).sum::<u32>(),
        m.accounts.values().map(|c| c.acked).sum::<u32>(),
    );
    eprintln!(
        "step times: {}",
        takes
            .iter()
            .map(|(k, (t, _))| format!("{k} {:.2}s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "voice message files with no row (recordings a crash cut short): {}",
        orphan_recordings(&w)
    );
    let mut all: Vec<Duration> = times.iter().map(|t| t.2).collect();
    all.sort();
    eprintln!(
        "re-registration after the restarted daemon was ready, {} measurements: min {:.2}s, \
         median {:.2}s, p90 {:.2}s, max {:.2}s",
        all.len(),
        percentile(&all, 0.0).as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64(),
        percentile(&all, 0.9).as_secs_f64(),
        percentile(&all, 1.0).as_secs_f64()
    );
    for kind in ["directory", "gateway", "station", "terminal"] {
        let mut v: Vec<f64> = times
            .iter()
            .filter(|(w, _, _)| w.name().starts_with(kind))
            .map(|t| t.2.as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        if !v.is_empty() {
            eprintln!(
                "  after a {kind} restart: {}",
                v.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    eprintln!("crash_random: {rounds} rounds in {:?}", t_test.elapsed());
}
