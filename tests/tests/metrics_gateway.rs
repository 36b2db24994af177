//! The gateway's `/metrics` end to end: a real Prometheus server started
//! here scrapes a gateway on loopback; after a relayed call between two
//! stations its query API shows the call ended as answered, a dial→ringing
//! and an answer→media sample, the forwarder's packets and the stations
//! online; `promtool check metrics` accepts the exposition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyline_tests::{ok, wait_for, wait_state, LoopbackOffice, Scratch};
use serde_json::Value;

/// A free TCP port on loopback right now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// GET `path` from `127.0.0.1:port` over plain HTTP/1.0: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
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

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(scratch: &Scratch, target: u16) -> Prometheus {
        let port = free_tcp_port();
        let cfg = scratch.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: keyline-gateway\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(scratch.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        let p = Prometheus { child, port };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            (get(p.port, "/-/ready")?.0 == 200).then_some(())
        });
        p
    }

    /// The value of an instant query's only sample.
    fn value(&self, q: &str) -> Option<f64> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", encode(q)))?;
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

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_gateway_after_a_call() {
    let port = free_tcp_port();
    let scratch = Scratch::new("metricscfg");
    let cfg = scratch.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!("internal_media = \"relay\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let office = LoopbackOffice::start("metrics", &["--config", cfg.to_str().unwrap()]);
    wait_for("/metrics", Duration::from_secs(10), || {
        (get(port, "/metrics")?.0 == 200).then_some(())
    });
    let prom = Prometheus::start(&scratch, port);
    assert_eq!(prom.at_least("up{job=\"keyline-gateway\"}", 1.0), 1.0);

    let a = office.agent("a", &["--audio-in", "tone:600", "--audio-out", "null"]);
    let b = office.agent("b", &["--audio-in", "tone:900", "--audio-out", "null"]);
    office.enrol(&a, "201");
    office.enrol(&b, "202");
    ok(&a, &["dial", "202"]);
    wait_state(&b, "alerting");
    ok(&b, &["answer"]);
    wait_state(&a, "connected");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(prom.at_least("keyline_calls_active", 1.0), 1.0);
    ok(&a, &["hangup"]);

    assert!(prom.at_least("keyline_calls_ended_total{outcome=\"answered\"}", 1.0) >= 1.0);
    assert!(prom.at_least("keyline_dial_to_ringing_seconds_count", 1.0) >= 1.0);
    // The sample lies in a bucket, and took less than the last one.
    assert!(prom.at_least("keyline_dial_to_ringing_seconds_bucket{le=\"5\"}", 1.0) >= 1.0);
    assert!(prom.at_least("keyline_answer_to_media_seconds_count", 1.0) >= 1.0);
    // Both ways through the forwarder, each counted as its own series.
    for direction in ["to_callee", "to_caller"] {
        let q = format!("keyline_forwarder_packets_total{{direction=\"{direction}\"}}");
        assert!(prom.at_least(&q, 10.0) >= 10.0);
    }
    assert_eq!(prom.at_least("keyline_stations_online", 2.0), 2.0);
    wait_for("no calls active", Duration::from_secs(10), || {
        (prom.value("keyline_calls_active")? == 0.0).then_some(())
    });

    // The exposition itself passes promtool's lint.
    let (_, text) = get(port, "/metrics").unwrap();
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
