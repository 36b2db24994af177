//! The directory's web site in a real browser (headless Chromium through
//! playwright-core, `tests/browser/directory_web.mjs`) against a real
//! keyline-directory and real terminals in network namespaces: the
//! directory, each terminal and the browser (node and Chromium) each in a
//! namespace of its own on one office LAN (a bridge, 10.77.0.0/24), the
//! site reached at the directory's address there. `minjun` signs up
//! with number 김민준, downloads the settings file (it names the
//! directory at that address), a terminal started from it registers and
//! rings when another terminal dials 김민준;
//! forwarding set on the web is what the next call follows; "Sign out
//! this device" drops the binding at once; a password changed on the
//! web is refused at the terminal's next login; mail left while away is
//! listed, another account gets 404 for it, and deleting it on the web
//! removes it from the store; bad input (taken number, mismatched
//! passwords, overlong fields, markup in a number, a form without its
//! CSRF token, 20 wrong passwords) gets the right answers; axe-core finds
//! no serious violations on any page. Any failed check in the script
//! fails this test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keyline_tests::{
    bin, in_netns, jstr, number, ok, wait_for, wait_state, BrowserScript, Daemon, Lan, Netns,
    Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
/// The password the browser changes minjun's to.
const NEW_PW: &str = "a new password 2026";
/// The directory's QUIC port, web site and metrics, in its namespace.
const DIR_PORT: u16 = 7480;
const WEB_PORT: u16 = 8443;
const METRICS_PORT: u16 = 9464;

fn password_file(scratch: &Scratch, name: &str, pw: &str) -> PathBuf {
    let p = scratch.join(&format!("{name}.pw"));
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A terminal in namespace `ns`, its state `scratch/NAME`.
fn terminal(scratch: &Scratch, ns: &Netns, name: &str, args: &[&str]) -> Daemon {
    terminal_with(scratch, ns, name, PW, args)
}

fn terminal_with(scratch: &Scratch, ns: &Netns, name: &str, pw: &str, args: &[&str]) -> Daemon {
    let pw = password_file(scratch, name, pw);
    let mut all = vec!["terminal", "--password-file", pw.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--audio-in", "tone:600", "--audio-out", "null"]);
    Daemon::start(
        Some(&ns.name),
        bin("keyline-agent"),
        &scratch.join(name),
        &all,
    )
    .expect("start a terminal")
}

/// A directory with its web site in the first namespace of an office LAN
/// (10.77.0.1), the browser's desk the second (10.77.0.2) and a namespace
/// for each terminal after them. Fields drop in order: the directory,
/// then the namespaces.
struct Site {
    dir: Daemon,
    /// The directory's configuration file (SIGHUP re-reads it).
    cfg: PathBuf,
    /// The directory's QUIC address, its certificate's fingerprint, the
    /// site's URL (no slash at the end).
    listen: String,
    fp: String,
    url: String,
    lan: Lan,
}

impl Site {
    /// `hosts` namespaces for terminals; `config` is the directory's
    /// configuration but `[web] listen` (and `[metrics]`, always on
    /// loopback in the directory's namespace).
    fn start(scratch: &Scratch, hosts: usize, config: &str) -> Site {
        let lan = Lan::new(2 + hosts).expect("an office LAN (the test needs root)");
        let ip = lan.hosts[0].ip.clone();
        let cfg = scratch.join("directory.toml");
        std::fs::write(
            &cfg,
            format!(
                "{config}\n[web]\nlisten = \"{ip}:{WEB_PORT}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"
            ),
        )
        .unwrap();
        let listen = format!("{ip}:{DIR_PORT}");
        let dir = Daemon::start(
            Some(&lan.hosts[0].ns.name),
            bin("keyline-directory"),
            &scratch.join("dir"),
            &[
                "serve",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &listen,
            ],
        )
        .expect("start the directory");
        let st = wait_for("the directory to start", Duration::from_secs(15), || {
            dir.json(&["status"]).ok()
        });
        let url = format!("https://{ip}:{WEB_PORT}");
        assert_eq!(jstr(&st, &["listen"]).as_deref(), Some(listen.as_str()));
        assert_eq!(
            jstr(&st, &["web"]).as_deref(),
            Some(format!("{url}/").as_str())
        );
        Site {
            fp: jstr(&st, &["fingerprint"]).unwrap(),
            dir,
            cfg,
            listen,
            url,
            lan,
        }
    }

    /// The browser's namespace.
    fn desk(&self) -> &Netns {
        &self.lan.hosts[1].ns
    }

    /// The `i`th terminal's namespace.
    fn host(&self, i: usize) -> &Netns {
        &self.lan.hosts[2 + i].ns
    }

    /// A browser script on the desk, told the site's URL and `env`.
    fn browser(&self, script: &str, scratch: &Scratch, env: &[(&str, &OsStr)]) -> BrowserScript {
        let shots = std::env::var_os("KEYLINE_SHOTS").unwrap_or(scratch.join("shots").into());
        let mut all: Vec<(&str, &OsStr)> = vec![
            ("SITE_URL", OsStr::new(&self.url)),
            ("PASSWORD", OsStr::new(PW)),
            ("SHOTS", shots.as_os_str()),
        ];
        all.extend_from_slice(env);
        BrowserScript::start(Some(self.desk()), script, &all)
    }
}

fn registered(d: &Daemon) {
    wait_for("the terminal to register", Duration::from_secs(20), || {
        let s = d.json(&["status"]).ok()?;
        (jstr(&s, &["state"]).as_deref() == Some("registered")).then_some(())
    });
}

/// The string values of a flat TOML file (`key = "v"` and `key = ["a", "b"]`).
fn settings(path: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap();
        let values: Vec<String> = v
            .split('"')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_string())
            .collect();
        out.push((k.trim().to_string(), values));
    }
    out
}

fn get<'a>(s: &'a [(String, Vec<String>)], k: &str) -> &'a [String] {
    &s.iter().find(|(key, _)| key == k).unwrap().1
}

fn bound(dir: &Daemon, number: &str) -> bool {
    let b: Value = dir.json(&["bindings"]).unwrap();
    b["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["number"] == number)
}

#[test]
fn the_directory_site_in_a_browser() {
    let scratch = Scratch::new("dirweb");
    // Terminals: b (caller), c (helper), a (minjun's, from the settings
    // file) and a2 (minjun's again, after the password change).
    let site = Site::start(
        &scratch,
        4,
        "[login]\nmax_failures_per_account = 20\nmax_failures_per_address = 100\n\
         max_failures_account_wide = 100\nlockout_secs = 2",
    );
    let (dir, listen, fp) = (&site.dir, site.listen.as_str(), site.fp.as_str());
    keyline_tests::add_account(&dir.state, "caller", &["2002"], PW);
    keyline_tests::add_account(&dir.state, "helper", &["3003"], PW);
    let b = terminal(
        &scratch,
        site.host(0),
        "b",
        &["--directory", listen, "--account", "caller"],
    );
    let c = terminal(
        &scratch,
        site.host(1),
        "c",
        &["--directory", listen, "--account", "helper"],
    );
    registered(&b);
    registered(&c);

    let downloads = scratch.join("downloads");
    let mut node = site.browser(
        "directory_web.mjs",
        &scratch,
        &[
            ("DIR_FP", OsStr::new(fp)),
            ("NEW_PASSWORD", OsStr::new(NEW_PW)),
            ("DOWNLOADS", downloads.as_os_str()),
        ],
    );

    let mut a: Option<Daemon> = None;
    let mut a2: Option<Daemon> = None;
    while let Some(step) = node.next_step() {
        let mut words = step.splitn(2, ' ');
        let answer = match (words.next(), words.next()) {
            (Some("terminal-a"), Some(path)) => {
                // A terminal set up from the downloaded file alone (and
                // the password file the page tells the person to write).
                let s = settings(Path::new(path));
                assert!(
                    !std::fs::read_to_string(path).unwrap().contains(PW),
                    "no password in the file"
                );
                // `--config` takes everything from the file; the password
                // is where this test keeps it, not in the home directory.
                let d = terminal(&scratch, site.host(2), "a", &["--config", path]);
                assert_eq!(get(&s, "directory_fp")[0], fp);
                // The site's own address, as the browser reached it.
                assert_eq!(get(&s, "directory")[0], listen);
                registered(&d);
                a = Some(d);
                String::new()
            }
            (Some("ring"), _) => {
                let ad = a.as_ref().unwrap();
                ok(&b, &["dial", "김민준"]);
                wait_state(ad, "alerting");
                ok(&b, &["hangup"]);
                keyline_tests::idle(ad);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("answered-call"), _) => {
                // After the missed one ("ring"): answered, about a second.
                let ad = a.as_ref().unwrap();
                ok(&b, &["dial", "김민준"]);
                wait_state(ad, "alerting");
                ok(ad, &["answer"]);
                wait_state(&b, "connected");
                std::thread::sleep(Duration::from_millis(1300));
                ok(&b, &["hangup"]);
                keyline_tests::idle(ad);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("forwarded"), _) => {
                // The rule set on the web is what this call follows.
                ok(&b, &["dial", "김민준"]);
                wait_state(&c, "alerting");
                let s = a.as_ref().unwrap().json(&["status"]).unwrap();
                assert!(s["call"].is_null(), "a rang too: {s}");
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
                String::new()
            }
            (Some("bound"), _) => {
                wait_for("김민준 registered", Duration::from_secs(20), || {
                    bound(dir, "김민준").then_some(())
                });
                String::new()
            }
            (Some("unbound"), _) => {
                // At once: checked right after the click returned.
                assert!(!bound(dir, "김민준"), "the binding is still there");
                String::new()
            }
            (Some("refused"), _) => {
                let ad = a.as_ref().unwrap();
                let e = wait_for(
                    "the terminal's login refused",
                    Duration::from_secs(20),
                    || {
                        jstr(&ad.json(&["status"]).ok()?, &["error"])
                            .filter(|e| e.contains("wrong account or password"))
                    },
                );
                assert!(!bound(dir, "김민준"), "{e}");
                // Its retries would count against the account, as the
                // browser's wrong passwords do next.
                a.take();
                String::new()
            }
            (Some("leave-mail"), _) => {
                ok(&b, &["message", "김민준", "hello", "from", "b"]);
                let mail = dir.json(&["mail", "list"]).unwrap();
                let n = mail["mail"].as_array().unwrap().len();
                assert_eq!(n, 1, "{mail}");
                String::new()
            }
            (Some("leave-voice"), _) => {
                // Two voice messages while 김민준 is away, left with the
                // client library as a caller's terminal would.
                let ogg = voice_message(&scratch);
                let (mailer, listen, fp) =
                    (scratch.join("mailer"), listen.to_string(), fp.to_string());
                in_netns(site.host(0), move || {
                    leave_voice_mail(&mailer, &listen, &fp, &ogg, 2)
                });
                String::new()
            }
            (Some("voice-delivered"), _) => {
                // One was deleted on the web: only the other reaches the
                // terminal, and the deleted one never does.
                let d = terminal_with(
                    &scratch,
                    site.host(3),
                    "a2",
                    NEW_PW,
                    &[
                        "--directory",
                        listen,
                        "--directory-fp",
                        fp,
                        "--account",
                        "minjun",
                    ],
                );
                registered(&d);
                let count = |d: &Daemon| -> Option<usize> {
                    Some(
                        d.json(&["voicemail", "list"]).ok()?["voicemails"]
                            .as_array()?
                            .len(),
                    )
                };
                wait_for(
                    "the kept voice mail delivered",
                    Duration::from_secs(20),
                    || count(&d).filter(|n| *n >= 1),
                );
                std::thread::sleep(Duration::from_secs(2));
                assert_eq!(count(&d), Some(1), "{:?}", d.json(&["voicemail", "list"]));
                a2 = Some(d);
                String::new()
            }
            (Some("mail-gone"), _) => {
                let mail = dir.json(&["mail", "list"]).unwrap();
                assert!(mail["mail"].as_array().unwrap().is_empty(), "{mail}");
                String::new()
            }
            other => panic!("unknown step {other:?}"),
        };
        node.answer(&answer);
    }
    let log = node.finish();
    drop(a2);
    assert!(log.contains("ok: axe on account"), "{log}");

    // The directory's metrics saw it: registrations, look-ups, the wrong
    // passwords (web and terminal alike) and the lock-outs.
    let text = scrape(&site.lan.hosts[0].ns);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert!(
        value("keyline_directory_registrations_total") >= 4.0,
        "{text}"
    );
    assert!(
        value("keyline_directory_auth_failures_total") >= 20.0,
        "{text}"
    );
    assert!(value("keyline_directory_lockouts_total") >= 1.0, "{text}");
    assert!(value("keyline_directory_bindings") >= 2.0, "{text}");
    value("keyline_directory_lookups_total");
    value("keyline_directory_relay_bytes_total{direction=\"to_callee\"}");
}

/// The account and operator pages in headless Chromium
/// (`tests/browser/directory_account.mjs`): `jiwoo` signs up with 지우,
/// adds `Ji-Woo 2` (kept as `jiwoo2`), a taken number is refused next to
/// the field; a terminal registers both; removing jiwoo2 on the web
/// unbinds it at once and leaves 지우; with do-not-disturb on a call to
/// 지우 does not ring; forwarding when not answered sends the next call on
/// to 3003 after the ring timeout; busy to 3003 and offline to 2002 set
/// beside it on the web are each followed by the next call, and the
/// terminal's `forward list` shows all three; the operator sees the
/// rules, and searches accounts; Korean pages; the forms without
/// JavaScript. Then the operator turns sign-up to invite codes (the
/// configuration file, SIGHUP) and makes one with `keyline-directory
/// invite create`: a made-up code is refused next to its field and
/// nothing is created, the printed code works once and is refused as
/// used the second time. `hana`, signed up with it, changes her ID on
/// the account page (a wrong password refused beside the password's
/// field first): her number and the message waiting for her stay,
/// her terminal logged in with the old ID loses its session and its next
/// login is refused, the new ID logs in and the old one does not. She
/// deletes the account: a wrong password is refused with the message;
/// the right one logs her out, the ID cannot log in, and the sign-up
/// page's availability check shows her number held back. axe-core finds
/// no serious violations. The directory, the terminals and the browser
/// are in network namespaces as in the test above.
#[test]
fn the_account_and_operator_pages_in_a_browser() {
    let scratch = Scratch::new("dirweb-account");
    // Terminals: b (caller), c (helper), j and j2 (jiwoo's), h (hana's).
    let site = Site::start(&scratch, 5, "ring_timeout_secs = 3");
    let (dir, listen) = (&site.dir, site.listen.as_str());
    keyline_tests::add_account(&dir.state, "caller", &["2002"], PW);
    keyline_tests::add_account(&dir.state, "helper", &["3003"], PW);
    let b = terminal(
        &scratch,
        site.host(0),
        "b",
        &["--directory", listen, "--account", "caller"],
    );
    let c = terminal(
        &scratch,
        site.host(1),
        "c",
        &["--directory", listen, "--account", "helper"],
    );
    registered(&b);
    registered(&c);

    let mut node = site.browser("directory_account.mjs", &scratch, &[]);

    let mut j: Option<Daemon> = None;
    let mut h: Option<Daemon> = None;
    while let Some(step) = node.next_step() {
        let mut words = step.split_whitespace();
        let mut answer = String::new();
        match (words.next().unwrap_or_default(), words.next(), words.next()) {
            ("terminal-j", _, _) => {
                let d = terminal(
                    &scratch,
                    site.host(2),
                    "j",
                    &[
                        "--directory",
                        listen,
                        "--account",
                        "jiwoo",
                        "--number",
                        "지우",
                        "--number",
                        "jiwoo2",
                    ],
                );
                registered(&d);
                wait_for("both numbers bound", Duration::from_secs(20), || {
                    (bound(dir, "지우") && bound(dir, "jiwoo2")).then_some(())
                });
                j = Some(d);
            }
            ("unbound-jiwoo2", _, _) => {
                // At once: checked right after the click returned.
                assert!(!bound(dir, "jiwoo2"), "jiwoo2 is still bound");
                assert!(bound(dir, "지우"), "지우 went too");
            }
            ("dnd-call", _, _) => {
                let jd = j.as_ref().unwrap();
                let _ = b.ctl(&["dial", "지우"]);
                let until = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < until {
                    assert!(
                        keyline_tests::call_state(jd).is_none(),
                        "지우 rang despite do-not-disturb"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                keyline_tests::idle(&b);
            }
            ("no-answer-call", _, _) => {
                let jd = j.as_ref().unwrap();
                wait_for("지우 bound", Duration::from_secs(20), || {
                    bound(dir, "지우").then_some(())
                });
                ok(&b, &["dial", "지우"]);
                wait_state(jd, "alerting");
                // Unanswered for the ring timeout (3 s), then 3003 rings.
                wait_state(&c, "alerting");
                keyline_tests::idle(jd);
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
            }
            ("busy-and-offline-calls", _, _) => {
                let jd = j.take().unwrap();
                // The rules set on the web, as the terminal lists them.
                let out = jd.ctl(&["forward", "list"]);
                let list = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(out.status.success(), "{list}");
                for line in [
                    "지우: busy -> 3003",
                    "지우: no-answer -> 3003",
                    "지우: offline -> 2002",
                ] {
                    assert!(list.contains(line), "{line} missing from:\n{list}");
                }
                assert!(!list.contains("always"), "{list}");
                // Turned off and on again from the command line: the
                // target stays while it is off.
                let out = jd.ctl(&["forward", "off", "busy"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(text.contains("지우: busy -> 3003 (off)"), "{text}");
                let out = jd.ctl(&["forward", "set", "--busy", "3003"]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    text.contains("지우: busy -> 3003\n") && !text.contains("(off)"),
                    "{text}"
                );
                // Busy (do-not-disturb is on): 3003 rings, 지우 does not.
                ok(&b, &["dial", "지우"]);
                wait_state(&c, "alerting");
                assert!(keyline_tests::call_state(&jd).is_none(), "지우 rang");
                ok(&b, &["hangup"]);
                keyline_tests::idle(&c);
                keyline_tests::idle(&b);
                // Offline: with its terminal gone, a call from 3003 rings
                // 2002.
                drop(jd);
                wait_for("지우 unbound", Duration::from_secs(20), || {
                    (!bound(dir, "지우")).then_some(())
                });
                ok(&c, &["dial", "지우"]);
                wait_state(&b, "alerting");
                ok(&c, &["hangup"]);
                keyline_tests::idle(&b);
                keyline_tests::idle(&c);
                // Back online for the operator's pages.
                let d = terminal(
                    &scratch,
                    site.host(3),
                    "j2",
                    &["--directory", listen, "--account", "jiwoo"],
                );
                registered(&d);
                j = Some(d);
            }
            ("make-admin", _, _) => {
                ok(dir, &["user", "admin", "jiwoo"]);
            }
            ("invite-mode", _, _) => {
                // The operator edits the configuration file and tells the
                // running directory to read it again.
                let cfg = std::fs::read_to_string(&site.cfg).unwrap();
                let cfg = cfg.replace("[web]\n", "[web]\nsignup = \"invite\"\n");
                std::fs::write(&site.cfg, cfg).unwrap();
                let pid = dir.pid().unwrap().to_string();
                assert!(Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .unwrap()
                    .success());
                wait_for(
                    "the configuration reloaded",
                    Duration::from_secs(10),
                    || {
                        dir.log_text()
                            .contains("configuration reloaded from")
                            .then_some(())
                    },
                );
            }
            ("invite-code", _, _) => {
                // `keyline-directory invite create`, as an operator runs it
                // beside the running directory: one code on its own line.
                let out = Command::new(bin("keyline-directory"))
                    .arg("--state")
                    .arg(&dir.state)
                    .args(["invite", "create"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(out.status.success(), "{out:?}");
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), 1, "{text}");
                answer = lines[0].trim().to_string();
                let list = dir_cmd_json(dir, &["invite", "list"]);
                assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
            }
            ("not-created", Some(id), Some(number)) => {
                let users = dir.json(&["users"]).unwrap();
                let users = users["users"].as_array().unwrap();
                assert!(users.iter().all(|u| u["id"] != id), "{id}: {users:?}");
                assert!(
                    users.iter().all(|u| u["numbers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|n| n != number)),
                    "{number}: {users:?}"
                );
            }
            ("terminal-h", _, _) => {
                let d = terminal(
                    &scratch,
                    site.host(4),
                    "h",
                    &["--directory", listen, "--account", "hana"],
                );
                registered(&d);
                wait_for("하나 bound", Duration::from_secs(20), || {
                    bound(dir, "하나").then_some(())
                });
                h = Some(d);
            }
            ("mail-for-h", _, _) => {
                // hana's terminal stays logged in but takes nothing for a
                // moment (stopped), so the message left now waits in the
                // directory, as it does for a phone out of reach.
                signal(h.as_ref().unwrap(), "-STOP");
                ok(&b, &["message", "하나", "welcome", "hana"]);
                let mail = dir.json(&["mail", "list"]).unwrap();
                let mail = mail["mail"].as_array().unwrap();
                assert!(mail.len() == 1 && mail[0]["account"] == "hana", "{mail:?}");
            }
            ("old-id-refused", Some(new), _) => {
                // The session of the terminal logged in as hana ended with
                // the change; going on, it cannot log in as hana again.
                let hd = h.take().unwrap();
                assert!(!bound(dir, "하나"), "the old session still holds 하나");
                signal(&hd, "-CONT");
                let e = wait_for(
                    "the old ID's login refused",
                    Duration::from_secs(30),
                    || {
                        jstr(&hd.json(&["status"]).ok()?, &["error"])
                            .filter(|e| e.contains("wrong account or password"))
                    },
                );
                assert!(!bound(dir, "하나"), "{e}");
                drop(hd);
                // The number and the waiting message are the new ID's.
                let users = dir.json(&["users"]).unwrap();
                let users = users["users"].as_array().unwrap();
                let u = users.iter().find(|u| u["id"] == new).unwrap();
                assert_eq!(u["numbers"], serde_json::json!(["하나"]), "{u}");
                assert!(users.iter().all(|u| u["id"] != "hana"), "{users:?}");
                let mail = dir.json(&["mail", "list"]).unwrap();
                let mail = mail["mail"].as_array().unwrap();
                assert!(mail.len() == 1 && mail[0]["account"] == new, "{mail:?}");
            }
            ("account-kept", Some(id), _) => {
                let users = dir.json(&["users"]).unwrap();
                let users = users["users"].as_array().unwrap();
                assert!(users.iter().any(|u| u["id"] == id), "{id}: {users:?}");
            }
            ("account-gone", Some(id), Some(number)) => {
                let users = dir.json(&["users"]).unwrap();
                let users = users["users"].as_array().unwrap();
                assert!(users.iter().all(|u| u["id"] != id), "{id}: {users:?}");
                let mail = dir.json(&["mail", "list"]).unwrap();
                assert!(mail["mail"].as_array().unwrap().is_empty(), "{mail}");
                assert!(!bound(dir, number));
            }
            other => panic!("unknown step {other:?}"),
        }
        node.answer(&answer);
    }
    let log = node.finish();
    drop(j);
    assert!(log.contains("ok: axe on operator in Korean"), "{log}");
    assert!(
        log.contains("ok: axe on sign up with a held number"),
        "{log}"
    );
    let rows = dir.json(&["bindings"]).unwrap();
    assert!(
        rows["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["number"] != "jiwoo2"),
        "{rows}"
    );
}

/// `keyline-directory --state STATE ARGS… --json` (a command that opens
/// the store itself, beside the running directory), parsed.
fn dir_cmd_json(dir: &Daemon, args: &[&str]) -> Value {
    let out = Command::new(bin("keyline-directory"))
        .arg("--state")
        .arg(&dir.state)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Send `sig` (`-STOP`, `-CONT`) to a daemon's process.
fn signal(d: &Daemon, sig: &str) {
    let pid = d.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// One second and a half of a tone as Ogg Opus (sox, opusenc).
fn voice_message(scratch: &Scratch) -> Vec<u8> {
    let wav = scratch.join("voice.wav");
    let ogg = scratch.join("voice.ogg");
    let st = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args(["synth", "1.5", "sine", "440", "vol", "0.3"])
        .status()
        .expect("sox");
    assert!(st.success());
    let st = Command::new("opusenc")
        .arg("--quiet")
        .arg(&wav)
        .arg(&ogg)
        .status()
        .expect("opusenc (opus-tools)");
    assert!(st.success());
    std::fs::read(&ogg).unwrap()
}

/// Leave `n` voice messages for 김민준 as `caller`, with the client library
/// (its identity kept in `home`), from the namespace of the calling thread.
fn leave_voice_mail(home: &Path, listen: &str, fp: &str, body: &[u8], n: usize) {
    use keyline_dirclient::client::DirClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(home).unwrap();
        let id = keyline_net::Identity::load_or_create(home, "mailer").unwrap();
        let ep = keyline_net::make_endpoint("0.0.0.0:0".parse().unwrap(), &id).unwrap();
        let (c, _events) = DirClient::connect(&ep, &id, listen.parse().unwrap(), Some(fp.into()))
            .await
            .unwrap();
        c.login("caller", PW).await.unwrap();
        for _ in 0..n {
            c.leave_mail(
                &number("김민준"),
                keyline_proto::dir::MailKind::Voice,
                body,
                None,
            )
            .await
            .unwrap();
        }
        c.close();
    });
}

/// The directory's metrics (`GET /metrics`, in its namespace).
fn scrape(ns: &Netns) -> String {
    let out = ns.exec(
        "curl",
        &[
            "-s",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}
