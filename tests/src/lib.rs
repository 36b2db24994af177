//! The end-to-end test kit: network namespaces that make an office LAN on
//! one machine, the real Keyline binaries started inside them, and guards
//! that remove every namespace and process a test made, even when it
//! fails. Tests never send traffic outside loopback or these namespaces.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for namespaces.
pub fn unique(tag: &str) -> String {
    format!(
        "kl{}{}{}",
        std::process::id() % 100_000,
        tag,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `text` as a number, for the tests' literals (a test that wants to see
/// a bad number refused parses it itself).
pub fn number(text: &str) -> keyline_proto::number::Number {
    keyline_proto::number::Number::parse(text).expect("a valid number")
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name]).context(
            "creating a network namespace (the end-to-end tests need root and iproute2)",
        )?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// An office LAN: a bridge in its own namespace and one namespace per host,
/// each joined to the bridge by a veth pair, addresses in 10.77.0.0/24.
#[derive(Debug)]
pub struct Lan {
    // Hosts first: they are dropped (deleted) before the bridge.
    pub hosts: Vec<Host>,
    pub bridge: Netns,
}

#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub ip: String,
}

impl Lan {
    pub fn new(hosts: usize) -> Result<Lan> {
        let base = unique("");
        let bridge = Netns::new(&format!("{base}br"))?;
        let b = bridge.name.clone();
        ip(&["-n", &b, "link", "add", "br0", "type", "bridge"])?;
        // mDNS must flood before any IGMP report is seen.
        ip(&[
            "-n",
            &b,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &b, "link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            bridge,
        };
        for i in 0..hosts {
            let ns = Netns::new(&format!("{base}h{i}"))?;
            let v = format!("v{i}");
            ip(&[
                "-n", &b, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ])?;
            ip(&["-n", &b, "link", "set", &v, "master", "br0", "up"])?;
            let addr = format!("10.77.0.{}", i + 1);
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &ns.name,
                "link",
                "set",
                "eth0",
                "up",
                "multicast",
                "on",
            ])?;
            ip(&["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            lan.hosts.push(Host { ns, ip: addr });
        }
        Ok(lan)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.ns.name.clone()).collect();
        v.push(self.bridge.name.clone());
        v
    }
}

/// A scratch directory, removed on drop unless the test failed (then its
/// logs stay for inspection and the path is printed).
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("keyline-e2e-{}", unique(tag)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running daemon, stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    pub state: PathBuf,
    pub log: PathBuf,
    pub bin: PathBuf,
}

impl Daemon {
    /// Start `bin args…` inside `ns` (or here when `None`), logging to
    /// `<state>.log`.
    pub fn start(ns: Option<&str>, bin: PathBuf, state: &Path, args: &[&str]) -> Result<Daemon> {
        Daemon::start_with_env(ns, bin, state, args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(
        ns: Option<&str>,
        bin: PathBuf,
        state: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let log = state.with_extension("log");
        let logf = std::fs::File::create(&log)?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("--state")
            .arg(state)
            .args(args)
            .env("KEYLINE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            child: Some(child),
            state: state.to_path_buf(),
            log,
            bin,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Run a CLI subcommand against this daemon's control socket.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run the CLI")
    }

    /// Run a `--json` subcommand and parse its output.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ctl(&a);
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                self.bin.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// SIGTERM and wait up to 5 s; true when it exited 0 in time.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One value of an HTML form, URL-encoded (`application/x-www-form-
/// urlencoded`: letters, digits and `-_.~` as they are, every other byte
/// as `%XX`).
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Poll `f` until it returns `Some`, or fail after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `v[a][b]…` as a string, if present.
pub fn jstr(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_string)
}

/// `v[a][b]…` as a number, if present.
pub fn jnum(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// Run a CLI command that must succeed; its standard output.
pub fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.ctl(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run a CLI command that must fail; its standard error.
pub fn fails(d: &Daemon, args: &[&str]) -> String {
    let out = d.ctl(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A station's `status --json`.
pub fn status(d: &Daemon) -> Value {
    d.json(&["status"]).expect("status")
}

/// The state of a station's call in progress.
pub fn call_state(d: &Daemon) -> Option<String> {
    jstr(&status(d), &["call", "state"])
}

/// Wait until a station's call is in `state`.
pub fn wait_state(d: &Daemon, state: &str) {
    wait_for(state, Duration::from_secs(6), || {
        (call_state(d).as_deref() == Some(state)).then_some(())
    });
}

/// Wait until a station has no call; its last call.
pub fn idle(d: &Daemon) -> Value {
    wait_for("idle", Duration::from_secs(6), || {
        let s = status(d);
        s["call"].is_null().then(|| s["last_call"].clone())
    })
}

/// A UDP port free on loopback right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A gateway on loopback (no mDNS) and the stations a test adds to it.
#[derive(Debug)]
pub struct LoopbackOffice {
    pub gw: Daemon,
    pub listen: String,
    pub scratch: Scratch,
}

impl LoopbackOffice {
    /// Start a gateway with `extra` arguments after `run --no-mdns --listen`.
    pub fn start(tag: &str, extra: &[&str]) -> LoopbackOffice {
        let scratch = Scratch::new(tag);
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let mut args = vec!["run", "--no-mdns", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let gw = Daemon::start(None, bin("keyline-gatewayd"), &scratch.join("gw"), &args)
            .expect("start the gateway");
        LoopbackOffice {
            gw,
            listen,
            scratch,
        }
    }

    /// Start a station pointed at the gateway, with `extra` run arguments.
    pub fn agent(&self, name: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["run", "--no-mdns", "--gateway", self.listen.as_str()];
        args.extend_from_slice(extra);
        Daemon::start(None, bin("keyline-agent"), &self.scratch.join(name), &args)
            .expect("start a station")
    }

    /// Approve a station by its pairing code as `ext` and wait for it.
    pub fn enrol(&self, d: &Daemon, ext: &str) {
        enrol(&self.gw, d, ext);
    }
}

/// An office gateway in `ns` (or here) listening on `listen`, registered
/// with the directory at `dirs` (one address or several) pinned to `fp`
/// as `account` with `password`; its files under `base`. Waits until it
/// is registered, then starts a station there with `station_args` after
/// `run --no-mdns --gateway LISTEN` and enrols it as 201.
#[allow(clippy::too_many_arguments)]
pub fn office_with_station(
    base: &Path,
    ns: Option<&Netns>,
    listen: &str,
    dirs: &str,
    fp: &str,
    account: &str,
    password: &str,
    station_args: &[&str],
) -> (Daemon, Daemon) {
    std::fs::create_dir_all(base).expect("the office's folder");
    let pw = base.join("directory.password");
    std::fs::write(&pw, format!("{password}\n")).expect("the office's password file");
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\nmdns = false\n[directory]\naddress = \"{dirs}\"\n\
             fingerprint = \"{fp}\"\naccount = \"{account}\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .expect("the office's config");
    let ns = ns.map(|n| n.name.as_str());
    let gw = Daemon::start(
        ns,
        bin("keyline-gatewayd"),
        &base.join("gw"),
        &["run", "--config", cfg.to_str().expect("a UTF-8 path")],
    )
    .expect("start the gateway");
    wait_for("the office to register", Duration::from_secs(15), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(())
    });
    let mut args = vec!["run", "--no-mdns", "--gateway", listen];
    args.extend_from_slice(station_args);
    let station = Daemon::start(ns, bin("keyline-agent"), &base.join("agent-201"), &args)
        .expect("start a station");
    enrol(&gw, &station, "201");
    (gw, station)
}

/// Approve station `d` on gateway `gw` by its pairing code as `ext`, and
/// wait until it is registered.
pub fn enrol(gw: &Daemon, d: &Daemon, ext: &str) {
    let code = wait_for("a pairing code", Duration::from_secs(10), || {
        jstr(&d.json(&["status"]).ok()?, &["code"])
    });
    ok(gw, &["approve", &code, "--ext", ext]);
    registered(d, ext);
}

/// Start `keyline-agent terminal` for `account` (its password written
/// beside its state, `scratch/term-ACCOUNT`), in namespace `ns` if given,
/// with the directory at `dir` pinned to `fp`; its audio goes nowhere and
/// `extra` arguments follow. Does not wait for it to register.
pub fn start_terminal(
    scratch: &Scratch,
    ns: Option<&Netns>,
    dir: &str,
    fp: &str,
    account: &str,
    password: &str,
    extra: &[&str],
) -> Daemon {
    let pw = scratch.join(&format!("{account}.password"));
    std::fs::write(&pw, format!("{password}\n")).expect("write a password file");
    let pw = pw.to_string_lossy().into_owned();
    let mut args = vec![
        "terminal",
        "--directory",
        dir,
        "--directory-fp",
        fp,
        "--account",
        account,
        "--password-file",
        &pw,
        "--audio-out",
        "null",
    ];
    args.extend_from_slice(extra);
    Daemon::start(
        ns.map(|n| n.name.as_str()),
        bin("keyline-agent"),
        &scratch.join(&format!("term-{account}")),
        &args,
    )
    .expect("start a terminal")
}

/// Wait until a terminal is registered with its directory.
pub fn terminal_registered(d: &Daemon) {
    wait_for("the terminal to register", Duration::from_secs(20), || {
        (jstr(&d.json(&["status"]).ok()?, &["state"])? == "registered").then_some(())
    });
}

/// Wait until a station is registered as `ext`.
pub fn registered(d: &Daemon, ext: &str) {
    wait_for("registration", Duration::from_secs(15), || {
        (jstr(&d.json(&["status"]).ok()?, &["ext"])? == ext).then_some(())
    });
}

impl Netns {
    /// Run `ip ARGS…` inside this namespace (`ip -n NAME ARGS…`).
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Run a program inside this namespace (`ip netns exec NAME PROG
    /// ARGS…`); its output, whatever its exit status.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }
}

/// A Linux bridge (a switch) alone in a namespace of its own, so that
/// nothing touches the root namespace. Hosts are namespaces the test
/// makes and joins to it with [`Bridge::attach`]; a host may be on
/// several bridges (a router, a gateway with a LAN and an outside side).
/// Deleting the bridge's namespace on drop removes the bridge and every
/// veth pair attached to it.
#[derive(Debug)]
pub struct Bridge {
    pub ns: Netns,
    ports: AtomicU32,
}

impl Bridge {
    /// A bridge in a new namespace named `name` (make it with
    /// [`unique`]), multicast snooping off so mDNS floods.
    pub fn new(name: &str) -> Result<Bridge> {
        let ns = Netns::new(name)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Bridge {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// Join `host` to the bridge through a veth pair whose end in `host`
    /// is called `ifname` and has address `cidr` (`10.90.0.2/24`). No
    /// route is added but the subnet's own.
    pub fn attach(&self, host: &Netns, ifname: &str, cidr: &str) -> Result<()> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", &host.name,
        ])?;
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"])?;
        host.ip(&["addr", "add", cidr, "dev", ifname])?;
        host.ip(&["link", "set", ifname, "up", "multicast", "on"])?;
        Ok(())
    }
}

/// The two tone sequences the call tests send (one per side) and how a
/// recording is checked for them.
pub mod pg;

pub mod tones {
    use std::path::Path;

    use keyline_media::{collapse_track, read_wav_mono48k, tone_sequence, tone_track, write_wav};

    /// What the calling side says.
    pub const A_TONES: [f32; 5] = [600.0, 900.0, 1200.0, 1500.0, 1800.0];
    /// What the answering side says.
    pub const B_TONES: [f32; 5] = [700.0, 1000.0, 1300.0, 1600.0, 1900.0];
    /// How long each tone lasts.
    pub const STEP_MS: u32 = 600;

    /// Write `tones`, `STEP_MS` each, to a WAV file.
    pub fn write_tones(path: &Path, tones: &[f32]) {
        let steps: Vec<(f32, u32)> = tones.iter().map(|&t| (t, STEP_MS)).collect();
        write_wav(path, &tone_sequence(&steps)).expect("write tone file");
    }

    /// The tones of either sequence heard in a recording, in order.
    pub fn heard(path: &Path) -> Vec<f32> {
        let pcm = read_wav_mono48k(path).expect("read recording");
        let all: Vec<f32> = A_TONES.iter().chain(B_TONES.iter()).copied().collect();
        collapse_track(&tone_track(&pcm, &all), 8)
    }
}

/// The certificate fingerprint of the directory whose state is at
/// `state` (`keyline-directory status --json`, which works while it runs).
pub fn directory_fingerprint(state: &Path) -> String {
    let out = Command::new(bin("keyline-directory"))
        .arg("--state")
        .arg(state)
        .args(["status", "--json"])
        .output()
        .expect("run keyline-directory status");
    let st: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    jstr(&st, &["fingerprint"]).expect("the directory's fingerprint")
}

/// Add an account to the directory whose state is `state` (the
/// `keyline-directory user add` an admin runs), `password` on stdin.
pub fn add_account(state: &Path, account: &str, numbers: &[&str], password: &str) {
    use std::io::Write;
    let mut cmd = Command::new(bin("keyline-directory"));
    cmd.arg("--state").arg(state).args(["user", "add", account]);
    for n in numbers {
        cmd.args(["--number", n]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keyline-directory user add");
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}").expect("write the password");
    }
    let out = child
        .wait_with_output()
        .expect("keyline-directory user add");
    assert!(
        out.status.success(),
        "user add {account}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `f` on a thread of its own that has joined namespace `ns`'s
/// network: for what a test does itself with the client library (a
/// caller leaving voice mail) where the daemons are in namespaces.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(&ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace's file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("joining the namespace (the test needs root)");
        f()
    })
    .join()
    .expect("the thread in the namespace")
}

/// A browser script of `tests/browser` (headless Chromium through
/// playwright-core) run with node, inside a namespace when given (node
/// and Chromium both: `ip netns exec`). The script asks the test for what
/// it cannot do itself with `STEP name [words]` lines on its standard
/// output, and the test answers each with [`BrowserScript::answer`]. The
/// script's standard error is its log. Killed on drop if it still runs.
#[derive(Debug)]
pub struct BrowserScript {
    child: Child,
    to_node: Option<ChildStdin>,
    from_node: Lines<BufReader<ChildStdout>>,
    log: Option<std::thread::JoinHandle<String>>,
}

impl BrowserScript {
    /// Start `node tests/browser/SCRIPT` with `env`, in `ns` if given.
    pub fn start(ns: Option<&Netns>, script: &str, env: &[(&str, &OsStr)]) -> BrowserScript {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("browser")
            .join(script);
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "node"]);
                c
            }
            None => Command::new("node"),
        };
        let mut child = cmd
            .arg(&path)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (tests/browser needs its node_modules)");
        let to_node = child.stdin.take();
        let from_node = BufReader::new(child.stdout.take().expect("node's stdout")).lines();
        let mut err = child.stderr.take().expect("node's stderr");
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        BrowserScript {
            child,
            to_node,
            from_node,
            log: Some(log),
        }
    }

    /// The next step the script asks for (what follows `STEP `), or
    /// `None` once it has ended.
    pub fn next_step(&mut self) -> Option<String> {
        for line in self.from_node.by_ref() {
            let Ok(line) = line else { return None };
            if let Some(step) = line.strip_prefix("STEP ") {
                return Some(step.to_string());
            }
        }
        None
    }

    /// Tell the script its step is done (`OK value`).
    pub fn answer(&mut self, value: &str) {
        let to = self.to_node.as_mut().expect("the script's stdin");
        writeln!(to, "OK {value}").expect("answer the browser script");
    }

    /// Wait for the script to end (a hung one fails after two minutes);
    /// its log, printed.
    /// Panics, with the log, if it failed.
    pub fn finish(mut self) -> String {
        drop(self.to_node.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for node") {
                break s;
            }
            assert!(Instant::now() < deadline, "the browser script did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = self
            .log
            .take()
            .and_then(|l| l.join().ok())
            .unwrap_or_default();
        eprintln!("{log}");
        assert!(status.success(), "the browser script failed:\n{log}");
        assert!(!log.contains("FAILED"), "{log}");
        log
    }
}

impl Drop for BrowserScript {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
