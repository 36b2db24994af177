//! Claim 6 on a real topology: two offices and a directory in network
//! namespaces, with stations that cannot reach the internet at all.
//!
//! ```text
//!             internet bridge 10.90.0.0/24
//!   directory .1 ─────┬──────────────────────┬─────
//!                 wan .2                 wan .3
//!                gateway A              gateway B
//!                 lan .1                 lan .1
//!        10.91.0.0/24 ┴─ .11 .12   10.92.0.0/24 ┴─ .11 .12
//!                  stations A               stations B
//! ```
//!
//! Each gateway sits on two bridges (its office LAN and the internet);
//! each station only on its office LAN, with no default route (the test
//! checks that it cannot send to the directory's address), and the
//! gateways do not route (`ip_forward` stays 0). No NAT.
//!
//! A's 201 calls B's office number; B's reception rings, 202 answers; the
//! tones each side plays are heard, in order, in the other's recording.
//! The media ran end to end through both gateways' forwarders (their
//! `relay.packets`), and the directory relayed 0 bytes. Then the other way:
//! B's 201 calls A's office number and A's 201 answers.
//!
//! Needs root (network namespaces), like the other namespace tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyline_tests::tones::{heard, write_tones, A_TONES, B_TONES, STEP_MS};
use keyline_tests::{
    add_account, bin, call_state, jnum, jstr, ok, registered, status, unique, wait_for, wait_state,
    Bridge, Daemon, Netns, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
const A_NUMBER: &str = "+8225550100";
const B_NUMBER: &str = "+8225550200";

const DIR_IP: &str = "10.90.0.1";
const DIR_PORT: u16 = 7480;
const GW_PORT: u16 = 7470;

/// One office's namespaces: a gateway on the internet and on the office
/// LAN, and two stations on the LAN only.
struct OfficeNet {
    /// The gateway's address on the internet bridge.
    wan_ip: String,
    /// The gateway's address on the office LAN.
    lan_ip: String,
    gw: Netns,
    /// (namespace, address) of each station.
    stations: Vec<(Netns, String)>,
    lan: Bridge,
}

/// The whole topology. Fields drop in order: hosts, then bridges.
struct Net {
    dir: Netns,
    a: OfficeNet,
    b: OfficeNet,
    internet: Bridge,
}

impl Net {
    fn new() -> Net {
        let base = unique("o");
        let internet =
            Bridge::new(&format!("{base}i")).expect("an internet bridge (the test needs root)");
        let dir = Netns::new(&format!("{base}d")).unwrap();
        internet
            .attach(&dir, "eth0", &format!("{DIR_IP}/24"))
            .unwrap();
        let office = |tag: &str, wan_last: u8, subnet: u8| {
            let lan = Bridge::new(&format!("{base}{tag}l")).unwrap();
            let gw = Netns::new(&format!("{base}{tag}g")).unwrap();
            let wan_ip = format!("10.90.0.{wan_last}");
            let lan_ip = format!("10.{subnet}.0.1");
            internet
                .attach(&gw, "wan", &format!("{wan_ip}/24"))
                .unwrap();
            lan.attach(&gw, "lan", &format!("{lan_ip}/24")).unwrap();
            let mut stations = Vec::new();
            for i in 0..2u8 {
                let ns = Netns::new(&format!("{base}{tag}s{i}")).unwrap();
                let ip = format!("10.{subnet}.0.{}", 11 + i);
                lan.attach(&ns, "eth0", &format!("{ip}/24")).unwrap();
                stations.push((ns, ip));
            }
            OfficeNet {
                wan_ip,
                lan_ip,
                gw,
                stations,
                lan,
            }
        };
        let a = office("a", 2, 91);
        let b = office("b", 3, 92);
        Net {
            dir,
            a,
            b,
            internet,
        }
    }

    fn names(&self) -> Vec<String> {
        let mut v = vec![self.dir.name.clone(), self.internet.ns.name.clone()];
        for o in [&self.a, &self.b] {
            v.push(o.gw.name.clone());
            v.push(o.lan.ns.name.clone());
            v.extend(o.stations.iter().map(|(ns, _)| ns.name.clone()));
        }
        v
    }
}

/// Whether a UDP socket in `ns` can be connected to `ip:port` and sent a
/// datagram from (bash's `/dev/udp`: socket, connect, write).
fn udp_send_works(ns: &Netns, ip: &str, port: u16) -> (bool, String) {
    let out = ns.exec(
        "bash",
        &["-c", &format!("echo probe > /dev/udp/{ip}/{port}")],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn directory(scratch: &Scratch, net: &Net) -> (Daemon, String) {
    let state = scratch.join("dir");
    for (account, number) in [("office-a", A_NUMBER), ("office-b", B_NUMBER)] {
        add_account(&state, account, &[number], PW);
    }
    let cfg = scratch.join("directory.toml");
    std::fs::write(&cfg, format!("listen = \"{DIR_IP}:{DIR_PORT}\"\n")).unwrap();
    let d = Daemon::start(
        Some(&net.dir.name),
        bin("keyline-directory"),
        &state,
        &["serve", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the directory", Duration::from_secs(15), || {
        d.json(&["status"]).ok()
    });
    let fp = jstr(&st, &["fingerprint"]).expect("directory fingerprint");
    (d, fp)
}

/// A gateway in its namespace, listening on every address, registered
/// with the directory.
struct Office {
    gw: Daemon,
    dir: PathBuf,
    lan_ip: String,
}

fn office(scratch: &Scratch, name: &str, net: &OfficeNet, account: &str, dir_fp: &str) -> Office {
    let base = scratch.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let pw = base.join("directory.password");
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:{GW_PORT}\"\nmdns = false\n\n[directory]\n\
             address = \"{DIR_IP}:{DIR_PORT}\"\nfingerprint = \"{dir_fp}\"\n\
             account = \"{account}\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let gw = Daemon::start(
        Some(&net.gw.name),
        bin("keyline-gatewayd"),
        &base.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the office to register", Duration::from_secs(15), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(st)
    });
    // The office is seen, and says it is, at its internet address.
    assert_eq!(
        jstr(&st, &["directory", "outside_ip"]).as_deref(),
        Some(net.wan_ip.as_str()),
        "{st}"
    );
    assert_eq!(
        jstr(&st, &["directory", "observed"]),
        Some(format!("{}:{GW_PORT}", net.wan_ip)),
        "{st}"
    );
    Office {
        gw,
        dir: base,
        lan_ip: net.lan_ip.clone(),
    }
}

impl Office {
    /// A station in `ns`, enrolled as `ext`, playing `input` and recording
    /// what it hears.
    fn station(&self, ns: &Netns, ext: &str, input: &str) -> Daemon {
        let out = self.dir.join(format!("{ext}-heard.wav"));
        let gateway = format!("{}:{GW_PORT}", self.lan_ip);
        let d = Daemon::start(
            Some(&ns.name),
            bin("keyline-agent"),
            &self.dir.join(format!("agent-{ext}")),
            &[
                "run",
                "--no-mdns",
                "--gateway",
                &gateway,
                "--audio-in",
                input,
                "--audio-out",
                out.to_str().unwrap(),
            ],
        )
        .unwrap();
        let code = wait_for("a pairing code", Duration::from_secs(10), || {
            jstr(&d.json(&["status"]).ok()?, &["code"])
        });
        ok(&self.gw, &["approve", &code, "--ext", ext]);
        registered(&d, ext);
        d
    }

    fn relay_packets(&self) -> f64 {
        let st = self.gw.json(&["status"]).unwrap();
        jnum(&st, &["relay", "packets"]).unwrap_or_else(|| panic!("no relay.packets: {st}"))
    }
}

/// Every address in `v` (searched recursively for `IP:PORT` strings).
fn socket_addrs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.parse::<std::net::SocketAddr>().is_ok() => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| socket_addrs(x, out)),
        Value::Object(o) => o.values().for_each(|x| socket_addrs(x, out)),
        _ => {}
    }
}

fn check_media(last: &Value) {
    let played = jnum(last, &["media", "played"]).unwrap();
    let lost = jnum(last, &["media", "lost"]).unwrap();
    assert!(played > 150.0, "too little audio: {last}");
    assert!(
        lost <= (played + lost) * 0.01,
        "lost {lost} of {played}: {last}"
    );
    assert_eq!(last["relayed"], Value::Bool(true), "{last}");
}

#[test]
fn two_offices_in_namespaces_call_through_their_gateways_only() {
    let t0 = Instant::now();
    let scratch = Scratch::new("offns");
    let net = Net::new();
    eprintln!(
        "topology ({} namespaces) in {:?}",
        net.names().len(),
        t0.elapsed()
    );

    // The stations are on their LAN only: they reach their gateway but
    // cannot even send towards the internet.
    for o in [&net.a, &net.b] {
        for (ns, ip) in &o.stations {
            let (up, e) = udp_send_works(ns, &o.lan_ip, 9);
            assert!(up, "{ip} cannot send to its gateway {}: {e}", o.lan_ip);
            for far in [DIR_IP, o.wan_ip.as_str()] {
                let (reach, e) = udp_send_works(ns, far, DIR_PORT);
                assert!(!reach, "station {ip} can send to {far}");
                assert!(e.contains("unreachable"), "station {ip} to {far}: {e}");
            }
        }
        let fwd = o.gw.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
    }

    write_tones(&scratch.join("a.wav"), &A_TONES);
    write_tones(&scratch.join("b.wav"), &B_TONES);
    let (a_wav, b_wav) = (scratch.join("a.wav"), scratch.join("b.wav"));
    let (dir, dir_fp) = directory(&scratch, &net);
    let a = office(&scratch, "a", &net.a, "office-a", &dir_fp);
    let b = office(&scratch, "b", &net.b, "office-b", &dir_fp);
    let mut a201 = a.station(&net.a.stations[0].0, "201", a_wav.to_str().unwrap());
    let a202 = a.station(&net.a.stations[1].0, "202", "silence");
    let b201 = b.station(&net.b.stations[0].0, "201", "silence");
    let mut b202 = b.station(&net.b.stations[1].0, "202", b_wav.to_str().unwrap());
    eprintln!("directory, 2 gateways, 4 stations up at {:?}", t0.elapsed());

    // The directory knows each office only by its internet address.
    let bindings = dir.json(&["bindings"]).unwrap();
    let mut addrs = Vec::new();
    socket_addrs(&bindings, &mut addrs);
    assert!(!addrs.is_empty(), "no addresses in {bindings}");
    for addr in &addrs {
        assert!(
            addr.starts_with("10.90.0."),
            "the directory holds a non-internet address {addr}: {bindings}"
        );
    }

    // A's 201 calls B's office number: B's reception (everyone) rings.
    let dialled = Instant::now();
    ok(&a201, &["dial", B_NUMBER]);
    for d in [&b201, &b202] {
        wait_state(d, "alerting");
        assert_eq!(
            jstr(&status(d), &["call", "peer"]).as_deref(),
            Some(A_NUMBER)
        );
    }
    let rang = dialled.elapsed();
    assert_eq!(call_state(&a201).as_deref(), Some("ringing"));
    ok(&b202, &["answer"]);
    let answered = Instant::now();
    wait_state(&a201, "connected");
    wait_state(&b202, "connected");
    eprintln!(
        "A→B: rang after {rang:?}, media connected {:?} after the answer",
        answered.elapsed()
    );
    wait_for("B's 201 to stop ringing", Duration::from_secs(5), || {
        call_state(&b201).is_none().then_some(())
    });
    std::thread::sleep(Duration::from_millis(u64::from(STEP_MS) * 5 + 800));
    ok(&a201, &["hangup"]);
    let b_last = wait_for("B to see the hang-up", Duration::from_secs(5), || {
        let s = status(&b202);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    assert_eq!(jstr(&b_last, &["ended"]).as_deref(), Some("hangup"));
    let a_last = status(&a201)["last_call"].clone();
    check_media(&a_last);
    check_media(&b_last);

    // Both forwarders moved every frame; the directory none.
    let sent =
        jnum(&a_last, &["media", "sent"]).unwrap() + jnum(&b_last, &["media", "sent"]).unwrap();
    let (pa, pb) = (a.relay_packets(), b.relay_packets());
    assert!(pa >= sent, "A forwarded {pa} packets for {sent} frames");
    assert!(pb >= sent, "B forwarded {pb} packets for {sent} frames");
    let st = dir.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");

    // The other way: B's 201 calls A's office number, A's 201 answers.
    ok(&b201, &["dial", A_NUMBER]);
    for d in [&a201, &a202] {
        wait_state(d, "alerting");
        assert_eq!(
            jstr(&status(d), &["call", "peer"]).as_deref(),
            Some(B_NUMBER)
        );
    }
    ok(&a201, &["answer"]);
    wait_state(&a201, "connected");
    wait_state(&b201, "connected");
    wait_for("A's 202 to stop ringing", Duration::from_secs(5), || {
        call_state(&a202).is_none().then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    ok(&b201, &["hangup"]);
    let a_last2 = wait_for("A to see the hang-up", Duration::from_secs(5), || {
        let s = status(&a201);
        s["call"].is_null().then(|| s["last_call"].clone())
    });
    let b_last2 = status(&b201)["last_call"].clone();
    check_media(&a_last2);
    check_media(&b_last2);
    let sent2 =
        jnum(&a_last2, &["media", "sent"]).unwrap() + jnum(&b_last2, &["media", "sent"]).unwrap();
    let (pa2, pb2) = (a.relay_packets(), b.relay_packets());
    assert!(pa2 - pa >= sent2, "A forwarded {} for {sent2}", pa2 - pa);
    assert!(pb2 - pb >= sent2, "B forwarded {} for {sent2}", pb2 - pb);
    let st = dir.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");

    // The first call's recordings: each side heard the other's tones. (A's
    // 201 also recorded the second call, after the first one's tones.)
    assert!(a201.stop(), "{}", a201.log_text());
    assert!(b202.stop(), "{}", b202.log_text());
    assert_eq!(heard(&a.dir.join("201-heard.wav"))[..5], B_TONES);
    assert_eq!(heard(&b.dir.join("202-heard.wav")), A_TONES.to_vec());
    eprintln!("total {:?}", t0.elapsed());
}

#[test]
fn the_topology_is_removed_when_a_test_panics() {
    let recorded = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let net = Net::new();
        *recorded.lock().unwrap() = net.names();
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    let names = recorded.into_inner().unwrap();
    assert_eq!(names.len(), 10, "{names:?}");
    for n in &names {
        assert!(!Netns::exists(n), "namespace {n} left behind");
    }
}
