//! The results: one JSON document (machine, revision, settings, every
//! suite's figures, the targets of issue 6 and whether each is met, what
//! is not measured yet) written under the output directory as
//! `<UTC timestamp>-<mode>.json` and `latest.json`, and a table on stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::fwd;

/// Benchmarks issue 6 asks for that keyline-bench does not run yet.
pub const NOT_MEASURED: &[&str] = &[];

/// A target of issue 6.
struct Target {
    name: &'static str,
    goal: &'static str,
    value: Option<f64>,
    shown: String,
    met: Option<bool>,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn targets(doc: &Value) -> Vec<Target> {
    let s = &doc["suites"];
    let mut t = Vec::new();
    let cmp = &s["relay_vs_baseline"];
    let v = f(cmp, &["cpu_per_packet_ratio"]);
    t.push(Target {
        name: "relay CPU per forwarded packet",
        goal: "<= 1.3x baseline",
        value: v,
        shown: v.map(|x| format!("{x:.2}x")).unwrap_or_default(),
        met: v.map(|x| x <= 1.3),
    });
    let v = f(cmp, &["held_calls_ratio"]);
    t.push(Target {
        name: "relay calls held",
        goal: ">= 0.8x baseline",
        value: v,
        shown: v.map(|x| format!("{x:.2}x")).unwrap_or_default(),
        met: v.map(|x| x >= 0.8),
    });
    let on_off = &s["metrics_on_vs_off"];
    let v = f(on_off, &["cpu_per_packet_ratio"]);
    t.push(Target {
        name: "relay CPU per packet, metrics on / off",
        goal: "<= 1.03x",
        value: v,
        shown: v.map(|x| format!("{x:.3}x")).unwrap_or_default(),
        met: v.map(|x| x <= 1.03),
    });
    let v = f(on_off, &["held_measured_ratio"]);
    t.push(Target {
        name: "relay calls held, metrics on / off",
        goal: ">= 0.97x",
        value: v,
        shown: v.map(|x| format!("{x:.3}x")).unwrap_or_default(),
        met: v.map(|x| x >= 0.97),
    });
    let v = f(&s["setup"], &["direct", "dial_to_ringing_ms", "p50"]);
    t.push(Target {
        name: "dial -> ringing p50 (loopback)",
        goal: "<= 2 ms",
        value: v,
        shown: v.map(|x| format!("{x:.2} ms")).unwrap_or_default(),
        met: v.map(|x| x <= 2.0),
    });
    let v = f(&s["setup"], &["two_offices", "dial_to_ringing_ms", "p50"]);
    t.push(Target {
        name: "dial -> ringing p50 (two offices)",
        goal: "<= 2 ms",
        value: v,
        shown: v
            .map(|x| {
                format!(
                    "{x:.2} ms (p99 {})",
                    num(
                        f(&s["setup"], &["two_offices", "dial_to_ringing_ms", "p99"]),
                        2
                    )
                )
            })
            .unwrap_or_default(),
        met: v.map(|x| x <= 2.0),
    });
    let g = &s["startup"]["gateway"];
    let idle = [
        f(g, &["fresh_state", "rss_idle_kib_max"]),
        f(g, &["existing_state", "rss_idle_kib_max"]),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::max);
    t.push(Target {
        name: "gateway resident memory idle",
        goal: "<= 15 MiB",
        value: idle,
        shown: idle
            .map(|x| format!("{:.1} MiB", x / 1024.0))
            .unwrap_or_default(),
        met: idle.map(|x| x <= 15.0 * 1024.0),
    });
    let v = f(&s["relay"], &["rss_per_call_kib"]);
    let gw = f(
        &s["setup"],
        &["relay", "gateway_memory", "per_call_kib_second_round"],
    );
    t.push(Target {
        name: "resident memory per relayed call",
        goal: "<= 16 KiB",
        value: v.or(gw),
        shown: match (v, gw) {
            (Some(a), Some(b)) => format!("{a:.1} KiB (gateway, warm: {b:.0} KiB)"),
            (Some(a), None) => format!("{a:.1} KiB"),
            (None, Some(b)) => format!("gateway: {b:.0} KiB"),
            (None, None) => String::new(),
        },
        met: v.or(gw).map(|x| x <= 16.0),
    });
    let ready = [
        f(g, &["fresh_state", "ready_ms", "p50"]),
        f(g, &["existing_state", "ready_ms", "p50"]),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::max);
    t.push(Target {
        name: "gateway READY after start (p50)",
        goal: "<= 200 ms",
        value: ready,
        shown: ready.map(|x| format!("{x:.0} ms")).unwrap_or_default(),
        met: ready.map(|x| x <= 200.0),
    });
    let d = &s["directory"];
    let cores = |op: &str| {
        let l = &d["load"][op];
        match (
            f(l, &["clients"]),
            f(l, &["in_flight_per_client"]),
            f(l, &["directory_cpu_cores"]),
            f(l, &["generator_cpu_cores"]),
            f(l, &["directory_cpu_us_per_op"]),
        ) {
            (Some(n), Some(k), Some(a), Some(b), Some(us)) => {
                format!(" ({n:.0}x{k:.0}; dir {a:.1} cores, {us:.1} us each; clients {b:.1} cores)")
            }
            _ => String::new(),
        }
    };
    let v = f(d, &["lookups_per_s"]);
    t.push(Target {
        name: "directory look-ups/s (2 cores)",
        goal: ">= 100,000/s",
        value: v,
        shown: v
            .map(|x| format!("{x:.0}/s{}", cores("best_lookups")))
            .unwrap_or_default(),
        met: v.map(|x| x >= 100_000.0),
    });
    let v = f(d, &["registrations_per_s"]);
    t.push(Target {
        name: "directory registrations/s (2 cores)",
        goal: ">= 50,000/s",
        value: v,
        shown: v
            .map(|x| format!("{x:.0}/s{}", cores("best_registrations")))
            .unwrap_or_default(),
        met: v.map(|x| x >= 50_000.0),
    });
    let w = &d["load"]["registrations_beside_web_logins"];
    let v = f(w, &["ratio"]);
    t.push(Target {
        name: "registrations with web logins / alone",
        goal: ">= 0.9x",
        value: v,
        shown: v
            .map(|x| {
                format!(
                    "{x:.2}x ({} -> {}/s at {}/s logins, {}/s logged in; pages p50/p99 {} / {} ms)",
                    num(f(w, &["alone", "per_s"]), 0),
                    num(f(w, &["with_web_logins", "per_s"]), 0),
                    num(f(w, &["web", "rate_asked_per_s"]), 0),
                    num(f(w, &["web", "logins_ok_per_s"]), 1),
                    num(f(w, &["web", "latency_ms", "all_pages", "p50"]), 1),
                    num(f(w, &["web", "latency_ms", "all_pages", "p99"]), 1),
                )
            })
            .unwrap_or_default(),
        met: v.map(|x| x >= 0.9),
    });
    let v = f(d, &["rss_per_binding_bytes"]);
    t.push(Target {
        name: "directory memory per binding",
        goal: "<= 1 KB",
        value: v,
        shown: v
            .map(|x| {
                format!(
                    "{x:.0} B at {} bindings",
                    num(f(d, &["memory", "bindings"]), 0)
                )
            })
            .unwrap_or_default(),
        met: v.map(|x| x <= 1000.0),
    });
    t
}

/// Add the targets and what is missing to the document.
pub fn finish(doc: &mut Value) {
    let t: Vec<Value> = targets(doc)
        .into_iter()
        .map(|t| json!({"name": t.name, "target": t.goal, "value": t.value, "shown": t.shown, "met": t.met}))
        .collect();
    doc["targets"] = json!(t);
    doc["not_measured"] = json!(NOT_MEASURED);
}

/// Write `<stamp>-<mode>.json` and `latest.json`; the first path.
pub fn write(doc: &Value, dir: &Path, stamp: &str, mode: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(doc)?;
    let path = dir.join(format!("{stamp}-{mode}.json"));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let latest = dir.join("latest.json");
    std::fs::write(&latest, &text).with_context(|| format!("writing {}", latest.display()))?;
    Ok(path)
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn row(out: &mut String, label: &str, cols: &[String]) {
    let _ = write!(out, "  {label:<44}");
    for c in cols {
        let _ = write!(out, " {c:>16}");
    }
    out.push('\n');
}

fn pair(v: &Value, a: &[&str], b: &[&str], digits: usize) -> String {
    format!("{} / {}", num(f(v, a), digits), num(f(v, b), digits))
}

/// The table for stdout.
pub fn table(doc: &Value) -> String {
    let mut o = String::new();
    let m = &doc["machine"];
    let _ = writeln!(
        o,
        "Keyline benchmarks ({} mode) at {}{} on {} cores, {}, kernel {}, {} build",
        doc["mode"].as_str().unwrap_or("?"),
        doc["git"]["rev"].as_str().unwrap_or("unknown revision"),
        if doc["git"]["dirty"] == true {
            " (uncommitted changes)"
        } else {
            ""
        },
        m["cores"],
        m["cpu_model"].as_str().unwrap_or("unknown CPU"),
        m["kernel"].as_str().unwrap_or("?"),
        m["profile"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        o,
        "  scheduling {}; 1-minute load average {} at start, {} at end",
        doc["scheduling"].as_str().unwrap_or("?"),
        num(f(doc, &["load_at_start", "loadavg_1m"]), 2),
        num(f(doc, &["load_at_end", "loadavg_1m"]), 2),
    );
    let s = &doc["suites"];
    o.push_str(&crate::phone::table(&s["phone"]));
    let (r, b, c) = (&s["relay"], &s["baseline"], &s["relay_vs_baseline"]);
    if !r.is_null() || !b.is_null() {
        let settings = if r.is_null() {
            &b["settings"]
        } else {
            &r["settings"]
        };
        let _ = writeln!(
            o,
            "\nMedia forwarding: Opus-sized datagrams ({}-{} B) every 20 ms both ways per call, loopback; \
             forwarder on CPU {}, generator on CPU {}; held = loss <= 0.1% and added p99 <= 5 ms",
            settings["payload_bytes"][0],
            settings["payload_bytes"][1],
            settings["forwarder_cpu"],
            settings["generator_cpu"],
        );
        row(
            &mut o,
            "",
            &["relay".into(), "baseline".into(), "relay/baseline".into()],
        );
        let both = |label: &str, path: &[&str], digits: usize, ratio: &str| {
            vec![
                label.to_string(),
                num(f(r, path), digits),
                num(f(b, path), digits),
                num(f(c, &[ratio]), 2),
            ]
        };
        let rows = [
            both(
                "calls held (measured)",
                &["held_calls"],
                0,
                "held_measured_ratio",
            ),
            both(
                "calls one core holds (see basis below)",
                &["calls_one_core"],
                0,
                "held_calls_ratio",
            ),
            both(
                "packets/s forwarded at the limit",
                &["at_held", "forwarded_pps"],
                0,
                "pps_at_limit_ratio",
            ),
            both(
                "CPU use at the limit (share of one core)",
                &["at_held", "cpu_util"],
                2,
                "",
            ),
            both(
                "CPU per packet at the limit (us)",
                &["at_held", "cpu_us_per_packet"],
                2,
                "cpu_per_packet_at_limit_ratio",
            ),
            both(
                "added one-way latency p50 at the limit (us)",
                &["at_held", "added_p50_us"],
                0,
                "",
            ),
            both(
                "added one-way latency p99 at the limit (us)",
                &["at_held", "added_p99_us"],
                0,
                "",
            ),
            both("resident memory idle (KiB)", &["rss_idle_kib"], 0, ""),
            both(
                "resident memory per call (KiB)",
                &["rss_per_call_kib"],
                1,
                "rss_per_call_ratio",
            ),
        ];
        for cols in rows {
            row(&mut o, &cols[0], &cols[1..]);
        }
        if let Some(n) = c["reference_calls"].as_u64() {
            let cpp = &c["cpu_per_packet_us"];
            row(
                &mut o,
                &format!("CPU per packet at {n} calls, both held (us)"),
                &[
                    num(f(cpp, &["relay"]), 2),
                    num(f(cpp, &["baseline"]), 2),
                    num(f(c, &["cpu_per_packet_ratio"]), 2),
                ],
            );
            row(
                &mut o,
                &format!("added latency p50 / p99 at {n} calls (ratio)"),
                &[
                    String::new(),
                    String::new(),
                    format!(
                        "{} / {}",
                        num(f(c, &["added_p50_ratio"]), 2),
                        num(f(c, &["added_p99_ratio"]), 2)
                    ),
                ],
            );
        }
        let m = &s["metrics_on_vs_off"];
        if m.is_object() {
            let _ = writeln!(
                o,
                "  with metrics on (the gateway's recorder, scraped every second): calls held {}x, \
                 CPU per packet {}x{} of the relay without",
                num(f(m, &["held_measured_ratio"]), 3),
                num(f(m, &["cpu_per_packet_ratio"]), 3),
                m["reference_calls"]
                    .as_u64()
                    .map(|n| format!(" (at {n} calls)"))
                    .unwrap_or_default(),
            );
        }
        for (name, v) in [
            ("relay", r),
            ("relay_metrics", &s["relay_metrics"]),
            ("baseline", b),
        ] {
            if let Some(why) = v["stop_reason"].as_str() {
                let _ = writeln!(
                    o,
                    "  {name} ramp ended: {why}; calls on one core: {}",
                    v["calls_one_core_basis"].as_str().unwrap_or("-")
                );
            }
        }
        for (name, v) in [
            ("relay", r),
            ("relay_metrics", &s["relay_metrics"]),
            ("baseline", b),
        ] {
            let Some(steps) = v["steps"].as_array() else {
                continue;
            };
            let _ = writeln!(
                o,
                "  {name} steps: calls  held   pkt/s   loss%   +p50us   +p99us   cpu   us/pkt   gen"
            );
            for st in steps {
                let _ = writeln!(
                    o,
                    "  {:>20} {:>6} {:>5} {:>7} {:>7.3} {:>8} {:>8} {:>5} {:>8} {:>5}",
                    "",
                    st["calls"],
                    if st["held"] == true { "yes" } else { "no" },
                    num(f(st, &["forwarded_pps"]), 0),
                    f(st, &["loss"]).unwrap_or(0.0) * 100.0,
                    num(f(st, &["added_p50_us"]), 0),
                    num(f(st, &["added_p99_us"]), 0),
                    num(f(st, &["cpu_util"]), 2),
                    num(f(st, &["cpu_us_per_packet"]), 2),
                    num(f(st, &["raw", "generator_cpu"]), 2),
                );
            }
        }
    }
    let su = &s["setup"];
    if !su.is_null() {
        let (d, rl) = (&su["direct"], &su["relay"]);
        let _ = writeln!(
            o,
            "\nCall set-up, one office on loopback (p50 / p99, ms; agents' own timing unless noted)"
        );
        row(&mut o, "", &["direct media".into(), "relayed media".into()]);
        let both = |label: &str, key: &str| {
            (
                label.to_string(),
                vec![
                    pair(d, &[key, "p50"], &[key, "p99"], 2),
                    pair(rl, &[key, "p50"], &[key, "p99"], 2),
                ],
            )
        };
        row(
            &mut o,
            "calls placed / failed",
            &[
                format!("{} / {}", d["calls"], d["failed"]),
                format!("{} / {}", rl["calls"], rl["failed"]),
            ],
        );
        for (label, cols) in [
            both("dial -> ringing", "dial_to_ringing_ms"),
            both(
                "dial -> ringing (driver's round trip)",
                "dial_to_ringing_client_ms",
            ),
            both(
                "answer -> media session up, caller",
                "answer_to_media_caller_ms",
            ),
            both(
                "answer -> media session up, callee",
                "answer_to_media_callee_ms",
            ),
            both(
                "answer -> audio at both ends (driver, 20 ms)",
                "answer_to_audio_both_ends_ms",
            ),
        ] {
            row(&mut o, &label, &cols);
        }
        row(
            &mut o,
            "calls per second, one pair, sequential",
            &[
                num(f(d, &["calls_per_s"]), 1),
                num(f(rl, &["calls_per_s"]), 1),
            ],
        );
        row(
            &mut o,
            "gateway RSS before / after the loop (KiB)",
            &[
                pair(
                    d,
                    &["gateway_rss_before_kib"],
                    &["gateway_rss_after_kib"],
                    0,
                ),
                pair(
                    rl,
                    &["gateway_rss_before_kib"],
                    &["gateway_rss_after_kib"],
                    0,
                ),
            ],
        );
        let gm = &rl["gateway_memory"];
        if !gm.is_null() {
            let _ = writeln!(
                o,
                "  gateway with {} relayed calls at once: {} KiB -> {} KiB resident, {} KiB per call ({} KiB after hang-up); again: {} KiB, {} KiB per call ({} KiB after)",
                gm["relayed_calls"],
                gm["gateway_rss_registered_kib"],
                gm["gateway_rss_with_calls_kib"],
                gm["per_call_kib"],
                gm["gateway_rss_after_hangup_kib"],
                gm["second_round_rss_with_calls_kib"],
                gm["per_call_kib_second_round"],
                gm["second_round_rss_after_hangup_kib"],
            );
        }
        let two = &su["two_offices"];
        if !two.is_null() {
            let _ = writeln!(
                o,
                "\nCall set-up across two offices: keyline-directory + two gateways + one agent each, loopback (p50 / p99, ms)"
            );
            row(
                &mut o,
                "calls placed / failed",
                &[format!("{} / {}", two["calls"], two["failed"])],
            );
            for (label, key) in [
                ("dial -> ringing at the caller", "dial_to_ringing_ms"),
                (
                    "dial -> ringing (driver's round trip)",
                    "dial_to_ringing_client_ms",
                ),
                (
                    "answer -> media session up, caller",
                    "answer_to_media_caller_ms",
                ),
                (
                    "answer -> media session up, callee",
                    "answer_to_media_callee_ms",
                ),
                (
                    "answer -> audio at both ends (driver, 20 ms)",
                    "answer_to_audio_both_ends_ms",
                ),
            ] {
                row(&mut o, label, &[pair(two, &[key, "p50"], &[key, "p99"], 2)]);
            }
            row(
                &mut o,
                "calls per second, one pair, sequential",
                &[num(f(two, &["calls_per_s"]), 1)],
            );
        }
    }
    let st = &s["startup"];
    if !st.is_null() {
        let _ = writeln!(
            o,
            "\nStart-up: spawn -> READY=1 (NOTIFY_SOCKET), p50 / max, ms; idle RSS 0.5 s after READY"
        );
        row(&mut o, "", &["fresh state".into(), "existing state".into()]);
        for name in ["gateway", "agent"] {
            let g = &st[name];
            row(
                &mut o,
                &format!("{name} READY"),
                &[
                    pair(
                        g,
                        &["fresh_state", "ready_ms", "p50"],
                        &["fresh_state", "ready_ms", "max"],
                        1,
                    ),
                    pair(
                        g,
                        &["existing_state", "ready_ms", "p50"],
                        &["existing_state", "ready_ms", "max"],
                        1,
                    ),
                ],
            );
            row(
                &mut o,
                &format!("{name} RSS idle, max (KiB)"),
                &[
                    num(f(g, &["fresh_state", "rss_idle_kib_max"]), 0),
                    num(f(g, &["existing_state", "rss_idle_kib_max"]), 0),
                ],
            );
            row(
                &mut o,
                &format!("{name} SIGTERM -> exit 0"),
                &[
                    pair(
                        g,
                        &["fresh_state", "stop_ms", "p50"],
                        &["fresh_state", "stop_ms", "max"],
                        1,
                    ),
                    pair(
                        g,
                        &["existing_state", "stop_ms", "p50"],
                        &["existing_state", "stop_ms", "max"],
                        1,
                    ),
                ],
            );
        }
    }
    cluster_table(&mut o, &s["cluster"]);
    let d = &s["directory"];
    if !d.is_null() {
        let l = &d["load"];
        let _ = writeln!(
            o,
            "\nDirectory: real keyline-directory on loopback, {} accounts; N QUIC clients x D requests in flight, \
             clients in this process sharing the cores with the directory",
            l["accounts"],
        );
        let _ = writeln!(
            o,
            "  {:<18} {:>9} {:>15} {:>9} {:>9} {:>10} {:>12}",
            "", "answered/s", "p50/p99 (ms)", "dir cores", "gen cores", "dir us/req", "dir alone/s"
        );
        for lv in l["levels"].as_array().into_iter().flatten() {
            for (label, op) in [("registrations", "registrations"), ("look-ups", "lookups")] {
                let v = &lv[op];
                let _ = writeln!(
                    o,
                    "  {:<18} {:>9} {:>15} {:>9} {:>9} {:>10} {:>12}{}",
                    format!("{}x{} {label}", lv["clients"], lv["in_flight_per_client"]),
                    num(f(v, &["per_s"]), 0),
                    format!(
                        "{} / {}",
                        num(f(v, &["latency_us", "p50"]).map(|x| x / 1000.0), 1),
                        num(f(v, &["latency_us", "p99"]).map(|x| x / 1000.0), 1)
                    ),
                    num(f(v, &["directory_cpu_cores"]), 2),
                    num(f(v, &["generator_cpu_cores"]), 2),
                    num(f(v, &["directory_cpu_us_per_op"]), 1),
                    num(f(v, &["projected_per_s_directory_alone_2_cores"]), 0),
                    match f(v, &["errors"]) {
                        Some(e) if e > 0.0 => format!("  ({e:.0} errors)"),
                        _ => String::new(),
                    }
                );
            }
        }
        let _ = writeln!(
            o,
            "  (dir alone/s: what the directory would answer with both cores to itself, at the CPU per request it \
             used here; a projection)"
        );
        web_logins(&mut o, &l["registrations_beside_web_logins"]);
        let m = &d["memory"];
        let _ = writeln!(
            o,
            "  memory: {} numbers in {} accounts; VmRSS idle {} KiB, {} sessions {} KiB, {} bindings {} KiB: \
             {} B per binding ({} B per number loaded, {} KiB per session)",
            m["numbers"],
            m["accounts"],
            m["rss_idle_kib"],
            m["accounts"],
            m["rss_sessions_kib"],
            m["bindings"],
            m["rss_bound_kib"],
            m["rss_per_binding_bytes"],
            d["rss_per_number_loaded_bytes"],
            m["rss_per_session_kib"],
        );
        if let Some(p) = d["persisted"].as_str() {
            let _ = writeln!(o, "  persisted: {p}");
        }
    }
    let v = &s["video"];
    if let Some(sizes) = v.as_object() {
        let _ = writeln!(
            o,
            "\nVideo: VP8 (libvpx, real-time, one thread) on the moving test pattern; CPU is the thread's own"
        );
        let _ = writeln!(
            o,
            "  {:<10} {:>6} {:>18} {:>18} {:>10} {:>10} {:>20}",
            "",
            "kbit/s",
            "encode p50/p99 ms",
            "decode p50/p99 ms",
            "B/frame",
            "fps/core",
            "pipeline p50/p99 ms"
        );
        for (size, x) in sizes {
            let pair = |k: &str| {
                format!(
                    "{} / {}",
                    num(f(x, &[k, "p50"]), 2),
                    num(f(x, &[k, "p99"]), 2)
                )
            };
            let _ = writeln!(
                o,
                "  {:<10} {:>6} {:>18} {:>18} {:>10} {:>10} {:>20}",
                size,
                num(f(x, &["kbps"]), 0),
                pair("encode_cpu_ms"),
                pair("decode_cpu_ms"),
                num(f(x, &["bytes_per_frame_mean"]), 0),
                num(f(x, &["frames_per_core_s"]), 0),
                pair("pipeline_latency_ms"),
            );
        }
    }
    if let Some(ts) = doc["targets"].as_array() {
        let _ = writeln!(o, "\nTargets of issue 6");
        for t in ts {
            let _ = writeln!(
                o,
                "  {:<38} {:<18} {:<34} {}",
                t["name"].as_str().unwrap_or(""),
                t["target"].as_str().unwrap_or(""),
                t["shown"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("not measured"),
                match t["met"].as_bool() {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "-",
                }
            );
        }
    }
    if !NOT_MEASURED.is_empty() {
        let _ = writeln!(o, "\nNot measured yet:");
        for m in NOT_MEASURED {
            let _ = writeln!(o, "  - {m}");
        }
    }
    o
}

/// Registrations alone and beside logins on the web site.
fn web_logins(o: &mut String, w: &Value) {
    if !w.is_object() {
        return;
    }
    let web = &w["web"];
    let _ = writeln!(
        o,
        "  registrations at {}x{}, alone and with {}/s logins on the web site ({} accounts from {} addresses):",
        w["clients"],
        w["in_flight_per_client"],
        num(f(web, &["rate_asked_per_s"]), 0),
        web["accounts"],
        web["source_addresses"],
    );
    for (label, key) in [("alone", "alone"), ("with web logins", "with_web_logins")] {
        let v = &w[key];
        let _ = writeln!(
            o,
            "  {:<18} {:>9}/s, p50/p99 {} / {} ms, dir {} cores, clients {} cores",
            label,
            num(f(v, &["per_s"]), 0),
            num(f(v, &["latency_us", "p50"]).map(|x| x / 1000.0), 1),
            num(f(v, &["latency_us", "p99"]).map(|x| x / 1000.0), 1),
            num(f(v, &["directory_cpu_cores"]), 2),
            num(f(v, &["generator_cpu_cores"]), 2),
        );
    }
    let _ = writeln!(
        o,
        "  ratio {}; logins started {} ({}/s), ok {} ({}/s), failed {}, of which turned away \
         busy {} and refused by the limiter {}",
        num(f(w, &["ratio"]), 3),
        web["visits_started"],
        num(f(web, &["started_per_s"]), 1),
        web["logins_ok"],
        num(f(web, &["logins_ok_per_s"]), 1),
        web["failed"],
        web["turned_away_busy"],
        web["refused_by_limiter"],
    );
    let lat = &web["latency_ms"];
    let _ = writeln!(
        o,
        "  page responses p50 / p99 (ms): GET /login {}, POST /login {} (those that logged in {}), \
         GET /account {}, all {}; TCP + TLS {}",
        pair(lat, &["get_login", "p50"], &["get_login", "p99"], 1),
        pair(lat, &["post_login", "p50"], &["post_login", "p99"], 1),
        pair(lat, &["post_login_ok", "p50"], &["post_login_ok", "p99"], 1),
        pair(lat, &["get_account", "p50"], &["get_account", "p99"], 1),
        pair(lat, &["all_pages", "p50"], &["all_pages", "p99"], 1),
        pair(lat, &["connect_tls", "p50"], &["connect_tls", "p99"], 1),
    );
    if let Some(e) = web["first_error"].as_str() {
        let _ = writeln!(o, "  first failed login: {e}");
    }
}

/// The relay and baseline suites side by side, if both ran.
pub fn add_comparison(doc: &mut Value) {
    let s = &doc["suites"];
    let pair = |a: &str, b: &str| {
        (s[a].is_object() && s[b].is_object()).then(|| fwd::compare(&s[a], &s[b]))
    };
    let vs_baseline = pair("relay", "baseline");
    let on_off = pair("relay_metrics", "relay");
    if let Some(c) = vs_baseline {
        doc["suites"]["relay_vs_baseline"] = c;
    }
    if let Some(c) = on_off {
        doc["suites"]["metrics_on_vs_off"] = c;
    }
}

/// The cluster suite: one node of two against the single node.
fn cluster_table(o: &mut String, c: &Value) {
    if c.is_null() {
        return;
    }
    let _ = writeln!(
        o,
        "\nDirectory cluster: node 1 of two (PostgreSQL + NATS) against the single node (SQLite), same load, \
         same run"
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>12} {:>12} {:>16}",
        "", "cluster node", "single", "CPU/req ratio"
    );
    for (label, op) in [
        ("registrations/s", "registrations"),
        ("look-ups/s", "lookups"),
    ] {
        let key = format!("{op}_per_s");
        let _ = writeln!(
            o,
            "  {:<24} {:>12} {:>12} {:>16}",
            label,
            num(f(c, &[key.as_str(), "cluster_node"]), 0),
            num(f(c, &[key.as_str(), "single"]), 0),
            num(f(c, &["cpu_per_request_cluster_over_single", op]), 2),
        );
    }
    let i = &c["idle_terminal"];
    let _ = writeln!(
        o,
        "  idle registered terminals ({}): {} KiB each on the cluster node, {} KiB on the single node; \
         keep-alives {} / {} µs of CPU per terminal per second",
        i["single"]["terminals"],
        num(f(i, &["cluster_node", "rss_per_terminal_kib"]), 1),
        num(f(i, &["single", "rss_per_terminal_kib"]), 1),
        num(f(i, &["cluster_node", "idle_cpu_us_per_terminal_per_s"]), 2),
        num(f(i, &["single", "idle_cpu_us_per_terminal_per_s"]), 2),
    );
    let d = &c["dial_to_ring_ms"];
    let _ = writeln!(
        o,
        "  dial -> ring at the callee: across nodes p50 {} / p99 {} ms; single node p50 {} / p99 {} ms",
        num(f(d, &["across_nodes", "p50_ms"]), 2),
        num(f(d, &["across_nodes", "p99_ms"]), 2),
        num(f(d, &["single", "p50_ms"]), 2),
        num(f(d, &["single", "p99_ms"]), 2),
    );
}
