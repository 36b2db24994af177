//! Metrics end to end: in a network namespace of its own, a real
//! Prometheus server started here scrapes a gateway and the directory it
//! is registered with. After a relayed call between two stations its query
//! API shows the call ended as answered, a dial→ringing and an
//! answer→media sample, the forwarder's packets each way and the stations
//! online; and the directory's registrations and sessions. Then two
//! internet terminals call each other through the directory (relayed, by
//! the directory's rule): the directory's own series show the call ended
//! as answered, a dial→ringing and an answer→media sample, and its disk.
//! Each station's own metrics (`keyline-agent metrics`) count the call at
//! both ends. `promtool check metrics` accepts every exposition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyline_tests::{
    add_account, bin, directory_fingerprint, enrol, ok, unique, wait_for, wait_state, Daemon,
    Netns, Scratch,
};
use serde_json::Value;

/// Ports inside the test's own namespace (nothing else listens there).
const GATEWAY: &str = "127.0.0.1:5070";
const DIRECTORY: &str = "127.0.0.1:7480";
const GATEWAY_METRICS: u16 = 9464;
const DIRECTORY_METRICS: u16 = 9465;
const PROMETHEUS: u16 = 9090;
const PW: &str = "office line 2026";

/// GET `http://127.0.0.1:port/path` inside `ns`: (status, body).
fn get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    let out = ns.exec(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ],
    );
    let text = String::from_utf8(out.stdout).ok()?;
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// `name{job="keyline-gateway",labels}`: the gateway's series of a name
/// the directory has too.
fn gw_q(name: &str, labels: &str) -> String {
    job_q("keyline-gateway", name, labels)
}

/// The directory's series.
fn dir_q(name: &str, labels: &str) -> String {
    job_q("keyline-directory", name, labels)
}

fn job_q(job: &str, name: &str, labels: &str) -> String {
    if labels.is_empty() {
        format!("{name}{{job=\"{job}\"}}")
    } else {
        format!("{name}{{job=\"{job}\",{labels}}}")
    }
}

/// Percent-encode a query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server in `ns`, killed on drop.
struct Prometheus<'a> {
    child: Child,
    ns: &'a Netns,
}

impl<'a> Prometheus<'a> {
    fn start(scratch: &Scratch, ns: &'a Netns) -> Prometheus<'a> {
        let cfg = scratch.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
                 \x20 - job_name: keyline-gateway\n    static_configs:\n      - targets: ['127.0.0.1:{GATEWAY_METRICS}']\n\
                 \x20 - job_name: keyline-directory\n    static_configs:\n      - targets: ['127.0.0.1:{DIRECTORY_METRICS}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(scratch.join("prometheus.log")).unwrap();
        // `ip netns exec` becomes Prometheus itself: killing the child
        // stops it.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        let p = Prometheus { child, ns };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            (get(ns, PROMETHEUS, "/-/ready")?.0 == 200).then_some(())
        });
        p
    }

    /// The value of an instant query's only sample.
    fn value(&self, q: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(q));
        let (status, body) = get(self.ns, PROMETHEUS, &path)?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let r = v["data"]["result"].as_array()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Wait until `q` is at least `min`.
    fn at_least(&self, q: &str, min: f64) -> f64 {
        wait_for(q, Duration::from_secs(20), || {
            self.value(q).filter(|v| *v >= min)
        })
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` accepts this exposition.
fn promtool_accepts(text: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_the_gateway_and_the_directory_after_a_call() {
    let ns = Netns::new(&unique("prom")).unwrap();
    let scratch = Scratch::new("metrics");

    // The directory, with the office's account.
    let dir_state = scratch.join("dir");
    add_account(&dir_state, "office", &["0317001000"], PW);
    add_account(&dir_state, "alice", &["1001"], PW);
    add_account(&dir_state, "bob", &["1002"], PW);
    let dir_cfg = scratch.join("directory.toml");
    // Every call through the directory is relayed, so it sees media.
    std::fs::write(
        &dir_cfg,
        format!(
            "listen = \"{DIRECTORY}\"\ndirect_connect = \"relay\"\n\
             [metrics]\nlisten = \"127.0.0.1:{DIRECTORY_METRICS}\"\n"
        ),
    )
    .unwrap();
    let dir = Daemon::start(
        Some(&ns.name),
        bin("keyline-directory"),
        &dir_state,
        &["serve", "--config", dir_cfg.to_str().unwrap()],
    )
    .unwrap();
    wait_for("the directory", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    let fp = directory_fingerprint(&dir_state);

    // The gateway, relaying its calls, registered as the office.
    let pw = scratch.join("office.password");
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let gw_cfg = scratch.join("gatewayd.toml");
    std::fs::write(
        &gw_cfg,
        format!(
            "listen = \"{GATEWAY}\"\nmdns = false\ninternal_media = \"relay\"\n\
             [metrics]\nlisten = \"127.0.0.1:{GATEWAY_METRICS}\"\n\
             [directory]\naddress = \"{DIRECTORY}\"\nfingerprint = \"{fp}\"\n\
             account = \"office\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let gw = Daemon::start(
        Some(&ns.name),
        bin("keyline-gatewayd"),
        &scratch.join("gw"),
        &["run", "--config", gw_cfg.to_str().unwrap()],
    )
    .unwrap();
    let prom = Prometheus::start(&scratch, &ns);
    assert_eq!(prom.at_least("up{job=\"keyline-gateway\"}", 1.0), 1.0);
    assert_eq!(prom.at_least("up{job=\"keyline-directory\"}", 1.0), 1.0);
    assert_eq!(
        prom.at_least("keyline_uplink_state{state=\"registered\"}", 1.0),
        1.0
    );

    let station = |name: &str, tone: &str| {
        Daemon::start(
            Some(&ns.name),
            bin("keyline-agent"),
            &scratch.join(name),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                GATEWAY,
                "--audio-in",
                tone,
                "--audio-out",
                "null",
            ],
        )
        .unwrap()
    };
    let a = station("a", "tone:600");
    let b = station("b", "tone:900");
    enrol(&gw, &a, "201");
    enrol(&gw, &b, "202");
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        prom.at_least("keyline_calls_active{job=\"keyline-gateway\"}", 1.0),
        1.0
    );
    ok(&a, &["hangup"]);

    assert!(
        prom.at_least(
            &gw_q("keyline_calls_ended_total", "outcome=\"answered\""),
            1.0
        ) >= 1.0
    );
    assert!(prom.at_least(&gw_q("keyline_dial_to_ringing_seconds_count", ""), 1.0) >= 1.0);
    // The sample lies in a bucket, and took less than the last one.
    assert!(
        prom.at_least(
            &gw_q("keyline_dial_to_ringing_seconds_bucket", "le=\"5\""),
            1.0
        ) >= 1.0
    );
    assert!(prom.at_least(&gw_q("keyline_answer_to_media_seconds_count", ""), 1.0) >= 1.0);
    // Both ways through the forwarder, each counted as its own series.
    for direction in ["to_callee", "to_caller"] {
        let q = format!("keyline_forwarder_packets_total{{direction=\"{direction}\"}}");
        assert!(prom.at_least(&q, 10.0) >= 10.0);
    }
    assert_eq!(prom.at_least("keyline_stations_online", 2.0), 2.0);
    wait_for("no calls active", Duration::from_secs(10), || {
        (prom.value("keyline_calls_active{job=\"keyline-gateway\"}")? == 0.0).then_some(())
    });

    // The directory's side: the office's registration and its session.
    assert!(prom.at_least("keyline_directory_registrations_total", 1.0) >= 1.0);
    assert_eq!(prom.at_least("keyline_directory_sessions", 1.0), 1.0);
    assert!(prom.at_least("keyline_directory_bindings", 1.0) >= 1.0);
    // The office's call never reached the directory.
    assert_eq!(
        prom.at_least(
            &dir_q("keyline_calls_ended_total", "outcome=\"answered\""),
            0.0
        ),
        0.0
    );
    assert_eq!(
        prom.at_least(&dir_q("keyline_dial_to_ringing_seconds_count", ""), 0.0),
        0.0
    );
    assert!(prom.at_least(&dir_q("keyline_disk_free_bytes", ""), 1.0) > 0.0);

    // Two internet terminals call each other through the directory.
    let dir_fp = fp.clone();
    let terminal = |name: &str, account: &str, extra: &[&str]| {
        let pw = scratch.join(&format!("{name}.pw"));
        std::fs::write(&pw, format!("{PW}\n")).unwrap();
        let mut args = vec![
            "terminal",
            "--directory",
            DIRECTORY,
            "--directory-fp",
            &dir_fp,
            "--account",
            account,
            "--password-file",
            pw.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--audio-out",
            "null",
        ];
        args.extend_from_slice(extra);
        Daemon::start(
            Some(&ns.name),
            bin("keyline-agent"),
            &scratch.join(name),
            &args,
        )
        .unwrap()
    };
    let alice = terminal("alice", "alice", &["--audio-in", "tone:600"]);
    let bob = terminal(
        "bob",
        "bob",
        &["--audio-in", "tone:900", "--auto-answer", "1"],
    );
    for t in [&alice, &bob] {
        wait_for("a terminal to register", Duration::from_secs(20), || {
            (t.json(&["status"]).ok()?["state"].as_str()? == "registered").then_some(())
        });
    }
    ok(&alice, &["dial", "1002"]);
    wait_state(&alice, "connected");
    assert_eq!(prom.at_least(&dir_q("keyline_calls_active", ""), 1.0), 1.0);
    // The answering end's first packet through the relay.
    assert!(prom.at_least(&dir_q("keyline_answer_to_media_seconds_count", ""), 1.0) >= 1.0);
    ok(&alice, &["hangup"]);
    assert!(
        prom.at_least(
            &dir_q("keyline_calls_ended_total", "outcome=\"answered\""),
            1.0
        ) >= 1.0
    );
    assert!(prom.at_least(&dir_q("keyline_dial_to_ringing_seconds_count", ""), 1.0) >= 1.0);
    assert!(
        prom.at_least(
            &dir_q("keyline_dial_to_ringing_seconds_bucket", "le=\"5\""),
            1.0
        ) >= 1.0
    );
    wait_for("no directory calls active", Duration::from_secs(10), || {
        (prom.value(&dir_q("keyline_calls_active", ""))? == 0.0).then_some(())
    });
    // The relay carried it, both ways.
    for direction in ["to_callee", "to_caller"] {
        let q = dir_q(
            "keyline_directory_relay_packets_total",
            &format!("direction=\"{direction}\""),
        );
        assert!(prom.at_least(&q, 10.0) >= 10.0);
    }

    // The stations' own, through their control sockets: the caller
    // placed one call that connected, and sent and heard voice.
    let text = ok(&a, &["metrics"]);
    let sample = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from\n{text}"))
    };
    let ended = "keyline_agent_calls_ended_total{";
    assert_eq!(
        sample(ended, &["direction=\"out\"", "connected=\"true\""]),
        1.0
    );
    assert_eq!(
        sample(ended, &["direction=\"in\"", "connected=\"true\""]),
        0.0
    );
    assert_eq!(
        sample("keyline_agent_dial_to_ringing_seconds_count", &[]),
        1.0
    );
    assert_eq!(sample("keyline_agent_calls_active", &[]), 0.0);
    assert!(
        sample("keyline_agent_audio_packets_sent_total", &[]) >= 10.0,
        "{text}"
    );
    assert!(
        sample("keyline_agent_audio_packets_received_total", &[]) >= 10.0,
        "{text}"
    );
    let b_text = ok(&b, &["metrics"]);
    assert!(
        b_text.contains("keyline_agent_calls_ended_total{direction=\"in\",connected=\"true\"} 1"),
        "{b_text}"
    );

    // Every exposition passes promtool's lint.
    for port in [GATEWAY_METRICS, DIRECTORY_METRICS] {
        promtool_accepts(&get(&ns, port, "/metrics").unwrap().1);
    }
    promtool_accepts(&text);
}

#[test]
fn metrics_elsewhere_than_loopback_need_allow_remote() {
    let scratch = Scratch::new("metricsbad");
    let cfg = scratch.join("gatewayd.toml");
    std::fs::write(&cfg, "[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
    let out = Command::new(keyline_tests::bin("keyline-gatewayd"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_remote"), "{err}");
}
