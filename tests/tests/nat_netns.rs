//! Terminals behind NAT routers, in network namespaces (claims 1 and 2:
//! the two ends talk directly, wherever they are).
//!
//! ```text
//!              internet bridge 10.80.0.0/24
//!   directory .1 ──────┬──────────────────────┬──────
//!                  wan .2                 wan .3
//!                 router A               router B      (masquerade; unsolicited
//!                  lan .1                 lan .1        inbound dropped, as a
//!        10.81.0.0/24 ┴─ .11     10.82.0.0/24 ┴─ .11    home router does)
//!                    alice                   bob
//! ```
//!
//! 1. Both routers keep a host's port when they map it (what Linux
//!    masquerade does when the port is free). Alice calls Bob: Bob's
//!    terminal, answering, sends a few datagrams to Alice's addresses so
//!    his router lets her connection in (hole punching); the call connects
//!    end to end, and the directory relays nothing. So does a look-up-only
//!    call: the directory's EXPECT tells Bob where Alice comes from.
//! 2. Router A maps every destination to a random port (symmetric NAT):
//!    no direct path can exist. The call falls back to the directory's
//!    relay; Bob opens his router to the relay the same way, and the media
//!    flows through it.
//!
//! 3. An office gateway stands where Bob's terminal stood, behind router B
//!    (port-keeping): Alice calls the office number, its station answers,
//!    and the media runs end to end through the gateway's forwarder, which
//!    opened router B towards Alice when it answered; the directory relays
//!    nothing.
//!
//! Needs root (network namespaces) and nftables, like the other namespace
//! tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keyline_tests::{
    add_account, bin, jnum, jstr, ok, registered, start_terminal, status, terminal_registered,
    unique, wait_for, Bridge, Daemon, Netns, Scratch,
};
use serde_json::Value;

const PW: &str = "correct horse battery";
const DIR_IP: &str = "10.80.0.1";
const DIR_PORT: u16 = 7480;

/// A home: a router on the internet bridge and on its own LAN, and one host
/// behind it.
struct Home {
    host: Netns,
    router: Netns,
    /// Kept only to be deleted last.
    _lan: Bridge,
}

/// The whole topology. Fields drop in order: hosts, then bridges.
struct Net {
    dir: Netns,
    a: Home,
    b: Home,
    /// Kept only to be deleted last.
    _internet: Bridge,
}

/// The router's rules: masquerade out of `wan` (with a random port per
/// destination when `symmetric`), and drop what arrives unasked on `wan`.
fn router_rules(symmetric: bool) -> String {
    let how = if symmetric { " fully-random" } else { "" };
    format!(
        "flush ruleset\n\
         table ip nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat;\n    \
         oifname \"wan\" masquerade{how}\n  }}\n}}\n\
         table ip filter {{\n  chain input {{\n    type filter hook input priority 0;\n    \
         iifname \"wan\" ct state new drop\n  }}\n}}\n"
    )
}

impl Net {
    fn new(scratch: &Scratch) -> Net {
        let base = unique("n");
        let internet =
            Bridge::new(&format!("{base}i")).expect("an internet bridge (the test needs root)");
        let dir = Netns::new(&format!("{base}d")).unwrap();
        internet
            .attach(&dir, "eth0", &format!("{DIR_IP}/24"))
            .unwrap();
        let home = |tag: &str, wan_last: u8, subnet: u8| {
            let lan = Bridge::new(&format!("{base}{tag}l")).unwrap();
            let router = Netns::new(&format!("{base}{tag}r")).unwrap();
            let host = Netns::new(&format!("{base}{tag}h")).unwrap();
            internet
                .attach(&router, "wan", &format!("10.80.0.{wan_last}/24"))
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
            let h = Home {
                host,
                router,
                _lan: lan,
            };
            set_rules(scratch, &h, false);
            h
        };
        let a = home("a", 2, 81);
        let b = home("b", 3, 82);
        Net {
            dir,
            a,
            b,
            _internet: internet,
        }
    }
}

fn set_rules(scratch: &Scratch, h: &Home, symmetric: bool) {
    let file = scratch.join(&format!("{}.nft", h.router.name));
    std::fs::write(&file, router_rules(symmetric)).unwrap();
    let out = h.router.exec("nft", &["-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn directory(scratch: &Scratch, net: &Net) -> (Daemon, String) {
    let state = scratch.join("dir");
    add_account(&state, "alice", &["1001"], PW);
    add_account(&state, "bob", &["1002"], PW);
    add_account(&state, "office", &["1003"], PW);
    let cfg = scratch.join("directory.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"{DIR_IP}:{DIR_PORT}\"\ndirect_connect = \"direct-then-relay\"\n"),
    )
    .unwrap();
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
    (
        d,
        jstr(&st, &["fingerprint"]).expect("directory fingerprint"),
    )
}

/// A terminal for `account` in `ns`, answering at once.
fn terminal(scratch: &Scratch, ns: &Netns, fp: &str, account: &str, tone: &str) -> Daemon {
    let dir = format!("{DIR_IP}:{DIR_PORT}");
    let extra = ["--auto-answer", "0", "--audio-in", tone];
    let d = start_terminal(scratch, Some(ns), &dir, fp, account, PW, &extra);
    terminal_registered(&d);
    d
}

/// Alice calls Bob, both hear the other, Alice hangs up. Returns both
/// ends' calls as they were while connected.
fn call(alice: &Daemon, bob: &Daemon) -> (Value, Value) {
    call_number(alice, bob, "1002")
}

/// Alice calls `number`, which `bob` answers; as [`call`].
fn call_number(alice: &Daemon, bob: &Daemon, number: &str) -> (Value, Value) {
    ok(alice, &["dial", number]);
    for d in [alice, bob] {
        wait_for("the call to connect", Duration::from_secs(15), || {
            let s = status(d);
            (jstr(&s, &["call", "state"])? == "connected").then_some(())
        });
    }
    wait_for("media both ways", Duration::from_secs(10), || {
        let (a, b) = (status(alice), status(bob));
        (jnum(&a, &["call", "media", "played"])? > 50.0
            && jnum(&b, &["call", "media", "played"])? > 50.0)
            .then_some(())
    });
    let (a, b) = (status(alice)["call"].clone(), status(bob)["call"].clone());
    ok(alice, &["hangup"]);
    wait_for("Bob to see the hang-up", Duration::from_secs(5), || {
        status(bob)["call"].is_null().then_some(())
    });
    (a, b)
}

#[test]
fn terminals_behind_nat_routers_connect_directly_or_through_the_relay() {
    let scratch = Scratch::new("nat");
    let net = Net::new(&scratch);
    let (mut dir, fp) = directory(&scratch, &net);
    let mut alice = terminal(&scratch, &net.a.host, &fp, "alice", "tone:600");
    let mut bob = terminal(&scratch, &net.b.host, &fp, "bob", "tone:900");
    // The directory sees each terminal at its router, port kept.
    for (d, router_ip) in [(&alice, "10.80.0.2"), (&bob, "10.80.0.3")] {
        let observed = jstr(&status(d), &["observed"]).unwrap_or_default();
        assert!(
            observed.starts_with(&format!("{router_ip}:")),
            "observed {observed}"
        );
    }

    // 1. Port-keeping NAT on both sides: end to end, by hole punching.
    let (a, b) = call(&alice, &bob);
    assert_eq!(a["relayed"], Value::Bool(false), "{a}");
    assert_eq!(b["relayed"], Value::Bool(false), "{b}");
    // A look-up-only call (claim 3) too: the directory only says where Bob
    // is, and tells Bob where Alice's connection comes from. (A fresh
    // Alice, on a port router B has no mapping for yet.)
    assert!(alice.stop(), "{}", alice.log_text());
    alice = terminal(&scratch, &net.a.host, &fp, "alice", "tone:600");
    ok(&alice, &["dial", "--lookup", "1002"]);
    for d in [&alice, &bob] {
        wait_for(
            "the look-up call to connect",
            Duration::from_secs(15),
            || (jstr(&status(d), &["call", "state"])? == "connected").then_some(()),
        );
    }
    let a = status(&alice)["call"].clone();
    assert_eq!(a["lookup"], Value::Bool(true), "{a}");
    ok(&alice, &["hangup"]);
    wait_for("Bob to see the hang-up", Duration::from_secs(5), || {
        status(&bob)["call"].is_null().then_some(())
    });
    let st = dir.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");

    // 2. Symmetric NAT at Alice's side: only the relay can connect them.
    // (A fresh terminal, on a fresh port: the router keeps the mappings it
    // made under the old rules while they are in use.)
    assert!(alice.stop(), "{}", alice.log_text());
    set_rules(&scratch, &net.a, true);
    alice = terminal(&scratch, &net.a.host, &fp, "alice", "tone:600");
    let (a, b) = call(&alice, &bob);
    assert_eq!(a["relayed"], Value::Bool(true), "{a}");
    assert_eq!(b["relayed"], Value::Bool(true), "{b}");
    let st = dir.json(&["status"]).unwrap();
    assert!(
        jnum(&st, &["relay", "bytes"]).unwrap_or(0.0) > 10_000.0,
        "{st}"
    );

    for d in [&mut alice, &mut bob, &mut dir] {
        assert!(d.stop(), "a daemon did not stop cleanly:\n{}", d.log_text());
    }
    // Namespaces go with `net`, after the daemons.
    drop(net);
}

#[test]
fn an_office_behind_a_nat_router_takes_calls_end_to_end() {
    let scratch = Scratch::new("natgw");
    let net = Net::new(&scratch);
    let (mut dir, fp) = directory(&scratch, &net);
    let mut alice = terminal(&scratch, &net.a.host, &fp, "alice", "tone:600");
    // The office: a gateway on Bob's host, behind router B, with one
    // station beside it that answers at once.
    let base = scratch.join("office");
    std::fs::create_dir_all(&base).unwrap();
    let pw = base.join("directory.password");
    std::fs::write(&pw, format!("{PW}\n")).unwrap();
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:7470\"\nmdns = false\nreception = [\"201\"]\n\n[directory]\n\
             address = \"{DIR_IP}:{DIR_PORT}\"\nfingerprint = \"{fp}\"\n\
             account = \"office\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let mut gw = Daemon::start(
        Some(&net.b.host.name),
        bin("keyline-gatewayd"),
        &base.join("gw"),
        &["run", "--config", cfg.to_str().unwrap()],
    )
    .unwrap();
    let st = wait_for("the office to register", Duration::from_secs(15), || {
        let st = gw.json(&["status"]).ok()?;
        (jstr(&st, &["directory", "state"])? == "registered").then_some(st)
    });
    assert!(
        jstr(&st, &["directory", "observed"])
            .unwrap_or_default()
            .starts_with("10.80.0.3:"),
        "{st}"
    );
    let mut station = Daemon::start(
        Some(&net.b.host.name),
        bin("keyline-agent"),
        &base.join("agent-201"),
        &[
            "run",
            "--no-mdns",
            "--gateway",
            "127.0.0.1:7470",
            "--auto-answer",
            "0",
            "--audio-in",
            "tone:900",
            "--audio-out",
            "null",
        ],
    )
    .unwrap();
    let code = wait_for("a pairing code", Duration::from_secs(10), || {
        jstr(&station.json(&["status"]).ok()?, &["code"])
    });
    ok(&gw, &["approve", &code, "--ext", "201"]);
    registered(&station, "201");

    let (a, s) = call_number(&alice, &station, "1003");
    assert_eq!(a["relayed"], Value::Bool(false), "{a}");
    assert!(s["media"]["played"].as_f64().unwrap_or(0.0) > 50.0, "{s}");
    let st = dir.json(&["status"]).unwrap();
    assert_eq!(jnum(&st, &["relay", "bytes"]), Some(0.0), "{st}");
    let gst = gw.json(&["status"]).unwrap();
    assert!(
        jnum(&gst, &["relay", "packets"]).unwrap_or(0.0) > 100.0,
        "{gst}"
    );

    for d in [&mut station, &mut gw, &mut alice, &mut dir] {
        assert!(d.stop(), "a daemon did not stop cleanly:\n{}", d.log_text());
    }
    drop(net);
}
