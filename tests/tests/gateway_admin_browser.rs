//! The gateway's admin site in a real browser (headless Chromium through
//! playwright-core, `tests/browser/gateway_admin.mjs`) against a real
//! gateway and real stations in network namespaces: the gateway on an
//! office LAN (10.79.0.0/24) and an outside network (203.0.113.0/24, its
//! default route), each station in a namespace of its own on the LAN, the
//! browser (node and Chromium, `ip netns exec`) on a desk of the LAN that
//! reaches the site at the gateway's LAN address (no `[admin] listen`:
//! the LAN side, as installed), and an outside caller's terminal on the
//! outside network reaching the office's own directory at the gateway's
//! outside address. Log in, a new station's pending
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
//! The site does not listen until an admin password exists, and
//! `keyline-gatewayd admin passwd` on the running gateway turns it on
//! (log in works) without a restart. Without `[admin] listen` it listens
//! on the LAN side alone: in network namespaces, a desk on the gateway's
//! LAN gets the login page, a host on its outside network finds the port
//! closed at the gateway's outside addresses (connection refused) and is
//! refused with 403 at its LAN address, and an address added to the LAN
//! is listened on without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyline_tests::{
    add_account, bin, call_state, enrol, idle, jstr, ok, registered, start_terminal,
    terminal_registered, unique, wait_for, wait_state, Bridge, BrowserScript, Daemon,
    LoopbackOffice, Netns, Scratch,
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

/// The office LAN of the browser test.
const LAN_GW: &str = "10.79.0.1";
const LAN_DESK: &str = "10.79.0.2";
/// The gateway's outside address, and an outside caller's.
const WAN_GW: &str = "203.0.113.1";
const WAN_CALLER: &str = "203.0.113.9";
/// The gateway's QUIC port, on every address of its namespace.
const GW_PORT: u16 = 7470;
/// The embedded directory's UDP port.
const DIR_PORT: u16 = 7480;

/// The namespaces of the browser test: an office LAN bridge with the
/// gateway, a desk (the browser) and one namespace per station on it,
/// and an outside network with the gateway (its default route) and an
/// outside caller. Fields drop in order: hosts, then the bridges.
struct AdminNet {
    gw: Netns,
    desk: Netns,
    /// Stations a and b.
    stations: [Netns; 2],
    outside: Netns,
    // Kept until the hosts are gone: dropping one removes its bridge.
    _lan: Bridge,
    _wan: Bridge,
}

impl AdminNet {
    fn new() -> AdminNet {
        let base = unique("ad");
        let lan = Bridge::new(&format!("{base}l")).expect("a LAN bridge (the test needs root)");
        let gw = Netns::new(&format!("{base}g")).unwrap();
        let desk = Netns::new(&format!("{base}d")).unwrap();
        lan.attach(&gw, "lan0", &format!("{LAN_GW}/24")).unwrap();
        lan.attach(&desk, "eth0", &format!("{LAN_DESK}/24"))
            .unwrap();
        let station = |i: u8| {
            let ns = Netns::new(&format!("{base}s{i}")).unwrap();
            lan.attach(&ns, "eth0", &format!("10.79.0.{}/24", 11 + i))
                .unwrap();
            ns
        };
        let stations = [station(0), station(1)];
        let wan = Bridge::new(&format!("{base}w")).unwrap();
        let outside = Netns::new(&format!("{base}o")).unwrap();
        wan.attach(&gw, "wan0", &format!("{WAN_GW}/24")).unwrap();
        wan.attach(&outside, "eth0", &format!("{WAN_CALLER}/24"))
            .unwrap();
        gw.ip(&["route", "add", "default", "via", WAN_CALLER])
            .unwrap();
        AdminNet {
            gw,
            desk,
            stations,
            outside,
            _lan: lan,
            _wan: wan,
        }
    }
}

#[test]
fn the_admin_site_in_a_browser() {
    let net = AdminNet::new();
    let scratch = Scratch::new("gwadmin");
    let cfg = scratch.join("gatewayd.toml");
    // Calls inside the office go through the forwarder (their packets a
    // second show); the office's own directory, on the outside address,
    // takes outside calls. No `[admin] listen`: the site is on the LAN
    // side alone, as installed.
    std::fs::write(
        &cfg,
        format!(
            "ring_timeout_secs = 2\nvoicemail_silence_secs = 1\ninternal_media = \"relay\"\n\
             [embedded_directory]\nlisten = \"{WAN_GW}:{DIR_PORT}\"\nnumber = \"{OFFICE_NUMBER}\"\n"
        ),
    )
    .unwrap();
    let gw_listen = format!("0.0.0.0:{GW_PORT}");
    let start_gw = |state: &std::path::Path| {
        Daemon::start(
            Some(&net.gw.name),
            bin("keyline-gatewayd"),
            state,
            &[
                "run",
                "--no-mdns",
                "--listen",
                &gw_listen,
                "--config",
                cfg.to_str().unwrap(),
            ],
        )
        .unwrap()
    };
    let gw_state = scratch.join("gw");
    let mut gw = start_gw(&gw_state);
    wait_for("the gateway", Duration::from_secs(15), || {
        gw.json(&["status"]).ok()
    });
    // The password, as an installer would set it (standard input).
    let passwd = admin_passwd(&gw.state, PASSWORD);
    assert!(passwd.status.success(), "{passwd:?}");
    let gateway = format!("{LAN_GW}:{GW_PORT}");
    let station = |i: usize, name: &str, tone: &str| {
        Daemon::start(
            Some(&net.stations[i].name),
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &gateway,
                "--audio-in",
                tone,
                "--audio-out",
                "null",
            ],
        )
        .unwrap()
    };
    let a = station(0, "a", "tone:600");
    enrol(&gw, &a, "201");
    let url = format!("https://{LAN_GW}:8443");
    wait_for("the admin site", Duration::from_secs(10), || {
        let st = gw.json(&["status"]).ok()?;
        let on_lan = st["admin"]["urls"]
            .as_array()?
            .iter()
            .any(|u| u.as_str() == Some(&format!("{url}/")));
        (st["admin"]["state"] == "listening" && on_lan).then_some(())
    });

    // The browser runs on the desk, a host of the office LAN.
    let gw_bin = bin("keyline-gatewayd");
    let shots = std::env::var_os("KEYLINE_SHOTS").unwrap_or(scratch.join("shots").into());
    let mut node = BrowserScript::start(
        Some(&net.desk),
        "gateway_admin.mjs",
        &[
            ("ADMIN_URL", OsStr::new(&url)),
            ("ADMIN_PASSWORD", OsStr::new(PASSWORD)),
            ("GW_BIN", gw_bin.as_os_str()),
            ("GW_STATE", gw_state.as_os_str()),
            ("SHOTS", shots.as_os_str()),
        ],
    );

    let mut b: Option<Daemon> = None;
    let mut carol: Option<Daemon> = None;
    while let Some(step) = node.next_step() {
        let mut words = step.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("start-station"), _) => {
                let d = station(1, "b", "tone:900");
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
                let carol =
                    carol.get_or_insert_with(|| outside_caller(&scratch, &net.outside, &gw));
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
                    let calls = gw.json(&["calls"]).ok()?;
                    (calls["calls"][0]["state"] == "voicemail").then_some(())
                });
                std::thread::sleep(Duration::from_millis(2500));
                let _ = a.ctl(&["hangup"]);
                keyline_tests::idle(&a);
                String::new()
            }
            (Some("revoked"), Some(ext)) => {
                let agents = gw.json(&["agents"]).unwrap();
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
                gw.stop();
                gw = start_gw(&gw_state);
                wait_for("the admin site again", Duration::from_secs(10), || {
                    let st = gw.json(&["status"]).ok()?;
                    (st["admin"]["state"] == "listening").then_some(())
                });
                String::new()
            }
            (Some("still-enrolled"), Some(ext)) => {
                let agents = gw.json(&["agents"]).unwrap();
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
        node.answer(&answer);
    }
    node.finish();
}

/// `carol`, an account on the office's own directory, and her terminal
/// in `ns`, outside the office, reaching the directory at the gateway's
/// outside address.
fn outside_caller(scratch: &Scratch, ns: &Netns, gw: &Daemon) -> Daemon {
    let dir_state = gw.state.join("directory");
    add_account(&dir_state, "carol", &["carol"], PASSWORD);
    let fp = keyline_tests::directory_fingerprint(&dir_state);
    start_terminal(
        scratch,
        Some(ns),
        &format!("{WAN_GW}:{DIR_PORT}"),
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

/// `keyline-gatewayd admin passwd` with `password` on standard input.
fn admin_passwd(state: &std::path::Path, password: &str) -> std::process::Output {
    Command::new(bin("keyline-gatewayd"))
        .arg("--state")
        .arg(state)
        .args(["admin", "passwd"])
        .stdin(Stdio::piped())
        .output_with_stdin(format!("{password}\n"))
}

/// The admin site is off until a password exists: nothing listens, and
/// `status` and the first start's log say how to turn it on. `admin
/// passwd` (password on standard input) on the running gateway turns it
/// on at once: the port opens, the login works, and the gateway is the
/// same process.
#[test]
fn the_admin_site_is_off_until_a_password_is_set_then_on_without_a_restart() {
    let port = free_tcp_port();
    let cfg_dir = Scratch::new("gwadminoff");
    let cfg = cfg_dir.join("gatewayd.toml");
    std::fs::write(&cfg, format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n")).unwrap();
    let mut office = LoopbackOffice::start("gwadminoff", &["--config", cfg.to_str().unwrap()]);
    let status = wait_for("the gateway", Duration::from_secs(15), || {
        office.gw.json(&["status"]).ok()
    });
    assert_eq!(status["admin"]["state"], "off", "{status}");
    assert_eq!(status["admin"]["password_set"], false, "{status}");
    assert!(
        status["admin"]["hint"]
            .as_str()
            .unwrap()
            .contains("keyline-gatewayd admin passwd"),
        "{status}"
    );
    let human = ok(&office.gw, &["status"]);
    assert!(
        human.contains("admin site    off until a password is set: keyline-gatewayd admin passwd"),
        "{human}"
    );
    assert!(
        office.gw.log_text().contains("admin passwd"),
        "the first start says how"
    );
    let refused = std::net::TcpStream::connect(("127.0.0.1", port))
        .expect_err("nothing listens before a password exists");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // A password too short is refused and changes nothing.
    let short = admin_passwd(&office.gw.state, "short");
    assert!(!short.status.success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let pid = office.gw.child.as_ref().unwrap().id();
    let passwd = admin_passwd(&office.gw.state, PASSWORD);
    assert!(passwd.status.success(), "{passwd:?}");
    let said = String::from_utf8_lossy(&passwd.stdout);
    assert!(
        said.contains(&format!(
            "the admin site is on at https://127.0.0.1:{port}/"
        )),
        "{said}"
    );
    // On when the command returns: no waiting, no restart.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the site listens now");
    let status = office.gw.json(&["status"]).unwrap();
    assert_eq!(status["admin"]["state"], "listening", "{status}");
    assert_eq!(status["admin"]["password_set"], true, "{status}");

    // Log in as a browser does: the login form's token, then the form.
    let jar = office.scratch.join("cookies");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-c"])
            .arg(&jar)
            .arg("-b")
            .arg(&jar)
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("https://127.0.0.1:{port}");
    let page = curl(&[&format!("{url}/login")]);
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no login token in\n{page}"))
        .to_string();
    let posted = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--data-urlencode",
        &format!("password={PASSWORD}"),
        "--data-urlencode",
        &format!("csrf={token}"),
        &format!("{url}/login"),
    ]);
    assert_eq!(posted, format!("303 {url}/"), "the login");
    let dashboard = curl(&["-w", "\n%{http_code}", &format!("{url}/")]);
    assert!(dashboard.ends_with("\n200"), "{dashboard}");
    assert!(
        dashboard.contains("aria-current=\"page\">Dashboard"),
        "{dashboard}"
    );

    assert_eq!(office.gw.child.as_ref().unwrap().id(), pid);
    assert!(
        office
            .gw
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the gateway is still running"
    );
    // Something that is not an argon2id hash, sent straight to the
    // control socket, is refused with a clear error and not stored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = keyline_net::control::socket_path(&office.gw.state);
    let reply = rt
        .block_on(keyline_net::control::request(
            &sock,
            &serde_json::json!({"cmd": "admin-passwd", "hash": "letmein"}),
            Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("not a password hash"),
        "{reply}"
    );
    let again = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-urlencode",
        &format!("password={PASSWORD}"),
        "--data-urlencode",
        &format!("csrf={token}"),
        &format!("{url}/login"),
    ]);
    assert_eq!(again, "303", "the password is the one set");
}

/// The real server applies `[admin] allow` to the peer's real address: a
/// gateway that allows only 10.0.0.0/8 refuses a browser on loopback.
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
    wait_for("the gateway", Duration::from_secs(15), || {
        office.gw.json(&["status"]).ok()
    });
    let passwd = admin_passwd(&office.gw.state, PASSWORD);
    assert!(passwd.status.success(), "{passwd:?}");
    let status = office.gw.json(&["status"]).unwrap();
    assert_eq!(status["admin"]["state"], "listening", "{status}");
    assert_eq!(
        status["admin"]["urls"],
        serde_json::json!([format!("https://127.0.0.1:{port}/")]),
        "{status}"
    );
    for path in ["/login", "/", "/metrics"] {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{path}");
    }
}

/// Without `[admin] listen` the site listens on the LAN side alone. A
/// gateway with a LAN (10.78.0.0/24) and an outside network
/// (203.0.113.0/24, a public range, plus 192.168.100.0/24, the private
/// network of an ISP's router) in namespaces of their own, its default
/// route on the outside. A desk on the LAN gets the login page; a host
/// outside finds nothing listening at the gateway's outside addresses,
/// the private one included (connection refused, no TLS, no page), and
/// is refused with 403 at the LAN address routed to it. An address added
/// to the LAN is listened on within a rescan, without a restart.
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
    gw_ns
        .ip(&["addr", "add", "192.168.100.2/24", "dev", "wan0"])
        .unwrap();
    outside
        .ip(&["addr", "add", "192.168.100.9/24", "dev", "eth0"])
        .unwrap();
    gw_ns
        .ip(&["route", "add", "default", "via", "203.0.113.9"])
        .unwrap();

    let scratch = Scratch::new("gwadminwan");
    let state = scratch.join("gw");
    // Set before the gateway runs: stored straight in its database.
    let passwd = admin_passwd(&state, PASSWORD);
    assert!(passwd.status.success(), "{passwd:?}");
    let gw = Daemon::start(
        Some(&gw_ns.name),
        bin("keyline-gatewayd"),
        &state,
        &["run", "--no-mdns"],
    )
    .unwrap();
    let st = wait_for("the admin site", Duration::from_secs(10), || {
        let st = gw.json(&["status"]).ok()?;
        (st["admin"]["state"] == "listening").then_some(st)
    });
    let urls: Vec<&str> = st["admin"]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    // (and [::1] when the namespace's loopback has IPv6)
    for want in ["https://10.78.0.1:8443/", "https://127.0.0.1:8443/"] {
        assert!(urls.contains(&want), "{want} not in {st}");
    }
    assert!(
        urls.iter()
            .all(|u| !u.contains("203.0.113.") && !u.contains("192.168.100.")),
        "{st}"
    );
    // (curl's exit status, the HTTP status or 000)
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
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The LAN reaches it at the gateway's LAN address.
    assert_eq!(code(&desk, "10.78.0.1", "/login"), (Some(0), "200".into()));
    // Outside, at the gateway's outside addresses: the port is closed
    // (curl's 7: could not connect).
    for host in ["203.0.113.1", "192.168.100.2"] {
        for path in ["/login", "/"] {
            assert_eq!(
                code(&outside, host, path),
                (Some(7), "000".into()),
                "{host}{path}"
            );
        }
    }
    // At the LAN address routed through the gateway: the port is open
    // there, and the outside address is refused before any page.
    outside
        .ip(&["route", "add", "10.78.0.0/24", "via", "203.0.113.1"])
        .unwrap();
    for path in ["/login", "/", "/stations", "/metrics"] {
        assert_eq!(
            code(&outside, "10.78.0.1", path),
            (Some(0), "403".into()),
            "{path}"
        );
    }
    // A new LAN address is followed without a restart.
    gw_ns
        .ip(&["addr", "add", "10.78.0.5/24", "dev", "lan0"])
        .unwrap();
    wait_for("the new LAN address", Duration::from_secs(30), || {
        (code(&desk, "10.78.0.5", "/login").1 == "200").then_some(())
    });
    assert_eq!(code(&outside, "203.0.113.1", "/login").0, Some(7));
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
