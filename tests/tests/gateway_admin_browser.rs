//! The gateway's admin site in a real browser (headless Chromium through
//! playwright-core, `tests/browser/gateway_admin.mjs`) against a real
//! gateway and real stations on loopback: log in, a new station's pending
//! enrolment appears without a reload and Approve lets it register, a call
//! shows on the dashboard within 1 s with its packets a second through the
//! forwarder and Hang up ends it, Export CSV matches `keyline-gatewayd cdr
//! --json`, the dial plan refuses an unknown member and saves a hunt group,
//! adds a second ring group with an extension of its own (an unknown
//! member refused next to its field, nothing saved; one added with the CLI
//! listed without a reload; Remove), refuses an extension range that would
//! leave a station outside, and an outside call to the office number then rings its members in
//! order (the dashboard follows), a left voicemail plays in the page and
//! is deleted, a WAV and an Ogg greeting are taken, one call's record
//! opens and the records are searched by outcome and dates, a speed dial
//! to an invalid number and an extension outside the range are refused
//! next to their fields, change extension and Revoke work, a form (and a
//! login) without its CSRF token is refused, wrong passwords lock out,
//! what the site changed survives a restart of the gateway, and axe-core
//! finds no serious accessibility violations. Any failed check in the
//! script fails this test.
//!
//! Without `[admin] allow`, the site is the LAN's alone: in network
//! namespaces, a desk on the gateway's LAN gets the login page and a host
//! on its outside network gets 403.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyline_tests::{
    add_account, bin, call_state, idle, jstr, ok, registered, start_terminal, terminal_registered,
    unique, wait_for, wait_state, Bridge, Daemon, LoopbackOffice, Netns, Scratch,
};

const PASSWORD: &str = "front desk 2026";
/// The office number, on the gateway's own (embedded) directory.
const OFFICE_NUMBER: &str = "Front Desk";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[test]
fn the_admin_site_in_a_browser() {
    let port = free_tcp_port();
    let dir_listen = format!("127.0.0.1:{}", keyline_tests::free_udp_port());
    let cfg_dir = Scratch::new("gwadmincfg");
    let cfg = cfg_dir.join("gatewayd.toml");
    // Calls inside the office go through the forwarder (their packets a
    // second show); the office's own directory takes outside calls.
    std::fs::write(
        &cfg,
        format!(
            "ring_timeout_secs = 2\nvoicemail_silence_secs = 1\ninternal_media = \"relay\"\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\n\
             [embedded_directory]\nlisten = \"{dir_listen}\"\nnumber = \"{OFFICE_NUMBER}\"\n"
        ),
    )
    .unwrap();
    let mut office = LoopbackOffice::start("gwadmin", &["--config", cfg.to_str().unwrap()]);
    // The password, as an installer would set it (standard input).
    let passwd = Command::new(bin("keyline-gatewayd"))
        .arg("--state")
        .arg(&office.gw.state)
        .args(["admin", "passwd"])
        .stdin(Stdio::piped())
        .output_with_stdin(format!("{PASSWORD}\n"));
    assert!(passwd.status.success(), "{passwd:?}");

    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    office.enrol(&a, "201");
    wait_for("the admin site", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/gateway_admin.mjs");
    let shots = office.scratch.join("shots");
    let mut node = Command::new("node")
        .arg(&script)
        .env("ADMIN_URL", format!("https://127.0.0.1:{port}"))
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("GW_BIN", bin("keyline-gatewayd"))
        .env("GW_STATE", &office.gw.state)
        .env(
            "SHOTS",
            std::env::var_os("KEYLINE_SHOTS").unwrap_or(shots.into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (tests/browser needs its node_modules)");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = BufReader::new(node.stdout.take().unwrap());
    let mut err = node.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });

    let mut b: Option<Daemon> = None;
    let mut carol: Option<Daemon> = None;
    for line in from_node.lines() {
        let Ok(line) = line else { break };
        let Some(step) = line.strip_prefix("STEP ") else {
            continue;
        };
        let mut words = step.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("start-station"), _) => {
                let d = office.agent("b", &["--audio-in", "tone:900", "--audio-out", "null"]);
                let code = wait_for("b's pairing code", Duration::from_secs(10), || {
                    jstr(&d.json(&["status"]).ok()?, &["code"])
                });
                b = Some(d);
                code
            }
            (Some("registered"), Some(ext)) => {
                registered(b.as_ref().unwrap(), ext);
                String::new()
            }
            (Some("call"), Some(ext)) => {
                // `dial` returns once the call rings.
                ok(&a, &["dial", ext]);
                String::new()
            }
            (Some("answer"), _) => {
                let bd = b.as_ref().unwrap();
                wait_state(bd, "alerting");
                ok(bd, &["answer"]);
                wait_state(&a, "connected");
                String::new()
            }
            (Some("hung-up"), _) => {
                keyline_tests::idle(&a);
                keyline_tests::idle(b.as_ref().unwrap());
                String::new()
            }
            (Some("hunt-call"), Some(ext)) => {
                // An outside caller dials the office number: the hunt
                // group rings `ext` alone, then 201, which answers.
                let carol = carol.get_or_insert_with(|| outside_caller(&office, &dir_listen));
                terminal_registered(carol);
                let bd = b.as_ref().unwrap();
                ok(carol, &["dial", OFFICE_NUMBER]);
                wait_state(bd, "alerting");
                assert!(call_state(&a).is_none(), "201 rang before its turn");
                wait_state(&a, "alerting");
                assert!(call_state(bd).is_none(), "{ext} still rings after its turn");
                ok(&a, &["answer"]);
                wait_state(carol, "connected");
                ok(carol, &["hangup"]);
                idle(&a);
                String::new()
            }
            (Some("voicemail"), Some(ext)) => {
                // Nobody answers: the caller talks to the mailbox a while.
                ok(&a, &["dial", ext]);
                wait_for("the mailbox", Duration::from_secs(8), || {
                    let calls = office.gw.json(&["calls"]).ok()?;
                    (calls["calls"][0]["state"] == "voicemail").then_some(())
                });
                std::thread::sleep(Duration::from_millis(2500));
                let _ = a.ctl(&["hangup"]);
                keyline_tests::idle(&a);
                String::new()
            }
            (Some("revoked"), Some(ext)) => {
                let agents = office.gw.json(&["agents"]).unwrap();
                let still = agents["agents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["ext"] == ext && x["state"] == "approved");
                assert!(!still, "Revoke left {ext} enrolled: {agents}");
                String::new()
            }
            (Some("restart"), _) => {
                // The same state and configuration, a new process.
                office.gw.stop();
                let listen = office.listen.clone();
                office.gw = Daemon::start(
                    None,
                    bin("keyline-gatewayd"),
                    &office.gw.state.clone(),
                    &[
                        "run",
                        "--no-mdns",
                        "--listen",
                        &listen,
                        "--config",
                        cfg.to_str().unwrap(),
                    ],
                )
                .unwrap();
                wait_for("the admin site again", Duration::from_secs(10), || {
                    let st = office.gw.json(&["status"]).ok()?;
                    (st["admin"]["state"] == "listening").then_some(())
                });
                String::new()
            }
            (Some("still-enrolled"), Some(ext)) => {
                let agents = office.gw.json(&["agents"]).unwrap();
                let still = agents["agents"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["ext"] == ext && x["state"] == "approved");
                assert!(still, "a form without its token revoked {ext}: {agents}");
                String::new()
            }
            other => panic!("unknown step {other:?}"),
        };
        writeln!(to_node, "OK {answer}").unwrap();
    }
    drop(to_node);
    let status = node.wait().unwrap();
    let log = err_text.join().unwrap();
    eprintln!("{log}");
    assert!(status.success(), "the browser script failed:\n{log}");
    assert!(!log.contains("FAILED"), "{log}");
}

/// `carol`, an account on the office's own directory, and her terminal.
fn outside_caller(office: &LoopbackOffice, dir_listen: &str) -> Daemon {
    let dir_state = office.gw.state.join("directory");
    add_account(&dir_state, "carol", &["carol"], PASSWORD);
    let fp = keyline_tests::directory_fingerprint(&dir_state);
    start_terminal(
        &office.scratch,
        None,
        dir_listen,
        &fp,
        "carol",
        PASSWORD,
        &["--audio-in", "tone:500"],
    )
}

/// `Command::output` with something written to its standard input first.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: String) -> std::process::Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: String) -> std::process::Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The real server applies `[admin] allow` to the peer's real address: a
/// gateway that allows only 10.0.0.0/8 refuses a browser on loopback,
/// and says where the site is in `status`.
#[test]
fn the_admin_site_refuses_addresses_it_does_not_allow() {
    let port = free_tcp_port();
    let cfg_dir = Scratch::new("gwadminallow");
    let cfg = cfg_dir.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!("[admin]\nlisten = \"127.0.0.1:{port}\"\nallow = [\"10.0.0.0/8\"]\n"),
    )
    .unwrap();
    let office = LoopbackOffice::start("gwadminallow", &["--config", cfg.to_str().unwrap()]);
    wait_for("the admin site", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let status = office.gw.json(&["status"]).unwrap();
    assert_eq!(status["admin"]["state"], "listening", "{status}");
    assert_eq!(status["admin"]["password_set"], false, "{status}");
    assert!(status["admin"]["hint"]
        .as_str()
        .unwrap()
        .contains("keyline-gatewayd admin passwd"));
    for path in ["/login", "/", "/metrics"] {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{path}");
    }
    assert!(
        office.gw.log_text().contains("admin passwd"),
        "the first start says how"
    );
}

/// Without `[admin] allow` the site is the LAN side's: a gateway with a
/// LAN (10.78.0.0/24) and an outside network (203.0.113.0/24, a public
/// range) in namespaces of their own, its site on the default address
/// (port 8443 on every address). A desk on the LAN gets the login page;
/// a host outside gets 403 for every path, and no page is served to it.
#[test]
fn by_default_the_admin_site_is_the_lans_alone() {
    let base = unique("");
    let lan = Bridge::new(&format!("{base}lan")).unwrap();
    let wan = Bridge::new(&format!("{base}wan")).unwrap();
    let gw_ns = Netns::new(&format!("{base}gw")).unwrap();
    let desk = Netns::new(&format!("{base}desk")).unwrap();
    let outside = Netns::new(&format!("{base}out")).unwrap();
    lan.attach(&gw_ns, "lan0", "10.78.0.1/24").unwrap();
    lan.attach(&desk, "eth0", "10.78.0.2/24").unwrap();
    wan.attach(&gw_ns, "wan0", "203.0.113.1/24").unwrap();
    wan.attach(&outside, "eth0", "203.0.113.9/24").unwrap();

    let scratch = Scratch::new("gwadminwan");
    let state = scratch.join("gw");
    let passwd = Command::new(bin("keyline-gatewayd"))
        .arg("--state")
        .arg(&state)
        .args(["admin", "passwd"])
        .stdin(Stdio::piped())
        .output_with_stdin(format!("{PASSWORD}\n"));
    assert!(passwd.status.success(), "{passwd:?}");
    let gw = Daemon::start(
        Some(&gw_ns.name),
        bin("keyline-gatewayd"),
        &state,
        &["run", "--no-mdns"],
    )
    .unwrap();
    wait_for("the admin site", Duration::from_secs(10), || {
        let st = gw.json(&["status"]).ok()?;
        (st["admin"]["state"] == "listening").then_some(())
    });
    let code = |ns: &Netns, host: &str, path: &str| {
        let out = ns.exec(
            "curl",
            &[
                "-sk",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{host}:8443{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The LAN reaches it at the gateway's LAN address.
    assert_eq!(code(&desk, "10.78.0.1", "/login"), "200");
    // The outside reaches the port (at either address) and is refused.
    for host in ["203.0.113.1", "10.78.0.1"] {
        if host == "10.78.0.1" {
            // (The gateway's own address: no forwarding needed.)
            outside
                .ip(&["route", "add", "10.78.0.0/24", "via", "203.0.113.1"])
                .unwrap();
        }
        for path in ["/login", "/", "/stations", "/metrics"] {
            assert_eq!(code(&outside, host, path), "403", "{host}{path}");
        }
    }
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
