//! The NAT matrix: one call for every ordered pair of four kinds of
//! internet connection, between two internet terminals under the
//! directory's default rule (direct, then the relay), in network
//! namespaces:
//!
//! - **public**: the host is on the internet itself, no router;
//! - **home**: a router that keeps the host's port when it maps it and
//!   drops what arrives unasked (what most home routers do; Linux
//!   masquerade with a `ct state new drop` on its outside);
//! - **masq**: plain masquerade, nothing dropped: the router answers an
//!   unasked packet itself (port unreachable) and remembers it, so its
//!   host's first packet back to that sender gets a new port;
//! - **symmetric**: a random outside port for every destination.
//!
//! ```text
//!                 internet bridge 10.80.0.0/24  (directory .1)
//!   callers:  public .10   home .21 ─ 10.81   masq .22 ─ 10.82   sym .23 ─ 10.83
//!   callees:  public .11   home .31 ─ 10.84   masq .32 ─ 10.85   sym .33 ─ 10.86
//! ```
//!
//! Each caller calls each callee once, so no call meets the mappings an
//! earlier call between the same two routers left. While the callee
//! rings, both ends check the direct path (`keyline_net::checks`); the
//! test asserts the path each call took against what these routers
//! allow, and prints the matrix with the time from dial to media.
//!
//! Needs root (network namespaces) and nftables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keyline_tests::{
    add_account, bin, jnum, jstr, ok, start_terminal, status, terminal_registered, unique,
    wait_for, Bridge, Daemon, Netns, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
const DIR_IP: &str = "10.80.0.1";
const DIR_PORT: u16 = 7480;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Public,
    Home,
    Masq,
    Symmetric,
}

const KINDS: [Kind; 4] = [Kind::Public, Kind::Home, Kind::Masq, Kind::Symmetric];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::Home => "home",
            Kind::Masq => "masq",
            Kind::Symmetric => "symmetric",
        }
    }

    /// The router's nftables rules (none for a public host).
    fn rules(self) -> Option<String> {
        let (random, drop) = match self {
            Kind::Public => return None,
            Kind::Home => ("", true),
            Kind::Masq => ("", false),
            Kind::Symmetric => (" fully-random", true),
        };
        let drop = if drop {
            "table ip filter {\n  chain input {\n    type filter hook input priority 0;\n    \
             iifname \"wan\" ct state new drop\n  }\n}\n"
        } else {
            ""
        };
        Some(format!(
            "flush ruleset\n\
             table ip nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    \
             oifname \"wan\" masquerade{random}\n  }}\n}}\n{drop}"
        ))
    }
}

/// Whether a direct path can exist between a caller of kind `a` and a
/// callee of kind `b` behind these routers.
fn direct_possible(a: Kind, b: Kind) -> bool {
    use Kind::*;
    match (a, b) {
        // A public end answers whatever port the other end's checks come
        // from.
        (Public, _) | (_, Public) => true,
        // Both keep ports and both check at once.
        (Home, Home) => true,
        // The masquerading callee checks first (the caller waits a
        // moment), so its router maps its port before the caller's
        // checks arrive; the home router drops the callee's early ones
        // without remembering them.
        (Home, Masq) => true,
        // The callee's early checks reach the masquerading caller's
        // router, which remembers them and gives its host's checks a new
        // port that the other router has never sent to; a symmetric
        // router gives a new port to every destination. Only port
        // prediction could help.
        _ => false,
    }
}

/// One end: a host (and its router, if it has one).
struct End {
    kind: Kind,
    host: Netns,
    /// Kept only to be deleted with the host.
    _router: Option<Netns>,
    _lan: Option<Bridge>,
}

fn end(scratch: &Scratch, internet: &Bridge, base: &str, kind: Kind, slot: u8) -> End {
    let host = Netns::new(&format!("{base}h{slot}")).unwrap();
    if kind == Kind::Public {
        internet
            .attach(&host, "eth0", &format!("10.80.0.{slot}/24"))
            .unwrap();
        return End {
            kind,
            host,
            _router: None,
            _lan: None,
        };
    }
    // Routers .21-.23 have LANs 10.81-83, routers .31-.33 10.84-86.
    let subnet = if slot < 30 { 60 + slot } else { 53 + slot };
    let lan = Bridge::new(&format!("{base}l{slot}")).unwrap();
    let router = Netns::new(&format!("{base}r{slot}")).unwrap();
    internet
        .attach(&router, "wan", &format!("10.80.0.{slot}/24"))
        .unwrap();
    lan.attach(&router, "lan", &format!("10.{subnet}.0.1/24"))
        .unwrap();
    lan.attach(&host, "eth0", &format!("10.{subnet}.0.11/24"))
        .unwrap();
    host.ip(&[
        "route",
        "add",
        "default",
        "via",
        &format!("10.{subnet}.0.1"),
    ])
    .unwrap();
    let out = router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    assert!(out.status.success(), "{out:?}");
    let file = scratch.join(&format!("{}.nft", router.name));
    std::fs::write(&file, kind.rules().unwrap()).unwrap();
    let out = router.exec("nft", &["-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    End {
        kind,
        host,
        _router: Some(router),
        _lan: Some(lan),
    }
}

fn terminal(scratch: &Scratch, ns: &Netns, fp: &str, account: &str, tone: &str) -> Daemon {
    let dir = format!("{DIR_IP}:{DIR_PORT}");
    let extra = ["--auto-answer", "0", "--audio-in", tone];
    start_terminal(scratch, Some(ns), &dir, fp, account, PW, &extra)
}

/// The caller calls `number`; both ends' calls once media flows both
/// ways, and the time from dial until then.
fn call(caller: &Daemon, callee: &Daemon, number: &str) -> (Value, Value, Duration) {
    let t0 = Instant::now();
    ok(caller, &["dial", number]);
    wait_for("media both ways", Duration::from_secs(20), || {
        let (a, b) = (status(caller), status(callee));
        (jnum(&a, &["call", "media", "played"])? > 0.0
            && jnum(&b, &["call", "media", "played"])? > 0.0)
            .then_some(())
    });
    let took = t0.elapsed();
    let (a, b) = (
        status(caller)["call"].clone(),
        status(callee)["call"].clone(),
    );
    ok(caller, &["hangup"]);
    wait_for(
        "the callee to see the hang-up",
        Duration::from_secs(5),
        || status(callee)["call"].is_null().then_some(()),
    );
    (a, b, took)
}

#[test]
fn every_pair_of_routers_connects_direct_where_it_can_else_relayed() {
    let scratch = Scratch::new("natmx");
    let base = unique("x");
    let internet = Bridge::new(&format!("{base}i")).expect("an internet bridge (needs root)");
    let dirns = Netns::new(&format!("{base}d")).unwrap();
    internet
        .attach(&dirns, "eth0", &format!("{DIR_IP}/24"))
        .unwrap();
    // Callers at .10/.21/.22/.23, callees at .11/.31/.32/.33.
    let slot = |caller: bool, i: usize| -> u8 {
        match (caller, i) {
            (true, 0) => 10,
            (false, 0) => 11,
            (true, i) => 20 + i as u8,
            (false, i) => 30 + i as u8,
        }
    };
    let callers: Vec<End> = KINDS
        .iter()
        .enumerate()
        .map(|(i, &k)| end(&scratch, &internet, &base, k, slot(true, i)))
        .collect();
    let callees: Vec<End> = KINDS
        .iter()
        .enumerate()
        .map(|(i, &k)| end(&scratch, &internet, &base, k, slot(false, i)))
        .collect();

    let state = scratch.join("dir");
    for i in 0..4 {
        add_account(&state, &format!("a{i}"), &[&format!("100{i}")], PW);
        add_account(&state, &format!("b{i}"), &[&format!("200{i}")], PW);
    }
    let cfg = scratch.join("directory.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"{DIR_IP}:{DIR_PORT}\"\ndirect_connect = \"direct-then-relay\"\n"),
    )
    .unwrap();
    let mut dir = Daemon::start(
        Some(&dirns.name),
        bin("keyline-directory"),
        &state,
        &["serve", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the directory", Duration::from_secs(15), || {
        dir.json(&["status"]).ok()
    });
    let fp = jstr(&st, &["fingerprint"]).expect("directory fingerprint");

    let mut a: Vec<Daemon> = callers
        .iter()
        .enumerate()
        .map(|(i, e)| terminal(&scratch, &e.host, &fp, &format!("a{i}"), "tone:600"))
        .collect();
    let mut b: Vec<Daemon> = callees
        .iter()
        .enumerate()
        .map(|(i, e)| terminal(&scratch, &e.host, &fp, &format!("b{i}"), "tone:900"))
        .collect();
    a.iter().chain(b.iter()).for_each(terminal_registered);

    let mut table = String::from(
        "caller \\ callee   public           home             masq             symmetric\n",
    );
    let mut wrong = Vec::new();
    let (mut possible, mut direct) = (0, 0);
    for (i, ce) in callers.iter().enumerate() {
        table.push_str(&format!("{:<17}", ce.kind.name()));
        for (j, ee) in callees.iter().enumerate() {
            let (ca, cb, took) = call(&a[i], &b[j], &format!("200{j}"));
            let relayed = ca["relayed"] == Value::Bool(true);
            assert_eq!(
                ca["relayed"], cb["relayed"],
                "both ends must agree on the path: {ca} / {cb}"
            );
            let cell = format!(
                "{} {:>4} ms",
                if relayed { "relay " } else { "direct" },
                took.as_millis()
            );
            table.push_str(&format!("{cell:<17}"));
            // Each end says how its media goes, the same way as `relayed`.
            for c in [&ca, &cb] {
                let path = c["path"].as_str().unwrap_or_default();
                let says_relayed = path.starts_with("through the directory's relay");
                assert!(
                    says_relayed == relayed && (relayed || path.starts_with("end to end")),
                    "{} -> {}: path {path:?} but relayed {relayed}",
                    ce.kind.name(),
                    ee.kind.name()
                );
            }
            // A symmetric router's port is learnt from its checks.
            if ce.kind == Kind::Public && ee.kind == Kind::Symmetric {
                let path = ca["path"].as_str().unwrap_or_default();
                assert!(path.ends_with("(learnt)"), "public -> symmetric: {path}");
            }
            let expect_direct = direct_possible(ce.kind, ee.kind);
            if expect_direct {
                possible += 1;
                direct += usize::from(!relayed);
            }
            if expect_direct == relayed {
                wrong.push(format!(
                    "{} -> {}: {} (caller: {}; callee: {})",
                    ce.kind.name(),
                    ee.kind.name(),
                    if relayed { "relayed" } else { "direct" },
                    ca["path"],
                    cb["path"],
                ));
            }
        }
        table.push('\n');
    }
    println!("{table}direct in {direct} of the {possible} pairs where it can be");
    let st = dir.json(&["status"]).unwrap();
    println!(
        "relayed through the directory: {} bytes",
        jnum(&st, &["relay", "bytes"]).unwrap_or(0.0)
    );
    for d in a
        .iter_mut()
        .chain(b.iter_mut())
        .chain(std::iter::once(&mut dir))
    {
        assert!(d.stop(), "a daemon did not stop cleanly:\n{}", d.log_text());
    }
    assert!(wrong.is_empty(), "unexpected paths:\n{}", wrong.join("\n"));
    // Namespaces go after the daemons: hosts and routers, then bridges.
    drop(callers);
    drop(callees);
    drop(dirns);
    drop(internet);
}
