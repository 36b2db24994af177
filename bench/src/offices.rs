//! Call set-up across two offices: a real `keyline-directory` and two real
//! `keyline-gatewayd`s, each with a `[directory]` table (the office's
//! account, made with `keyline-directory user add`, and the directory's
//! pinned fingerprint), one station per office (`keyline-agent run
//! --no-mdns --gateway …`, approved with `keyline-gatewayd approve`), all
//! on loopback, as `tests/tests/offices.rs` sets them up.
//!
//! Office A's 201 dials `B-NUMBER/201`, which rings office B's 201 alone;
//! then the same loop as inside one office ([`crate::setup::call_loop`]):
//! dial → ringing at the caller's station, the callee alerts, answer →
//! media session up at each end and audio heard at both, hang up. Media
//! runs end to end through both gateways' forwarders; the directory only
//! finds and rings.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::daemons::{poll, tail, Control, Daemon};
use crate::directory::{add_account, start_directory, PW};
use crate::setup::{call_loop, start_stations, Bins, Station};

/// The offices' numbers (as dialled; the directory keeps them canonical).
const A_NUMBER: &str = "+15550100";
const B_NUMBER: &str = "+15550200";

/// One office: its gateway registered with the directory, one station.
struct Office {
    gw: Daemon,
    station: Station,
}

/// Start office `name` (account `account`) on the directory at `dir_addr`
/// with fingerprint `dir_fp`, wait until it has registered its number,
/// then enrol one station as 201.
fn start_office(
    bins: &Bins,
    base: &Path,
    account: &str,
    dir_addr: &str,
    dir_fp: &str,
) -> Result<Office> {
    std::fs::create_dir_all(base)?;
    let pw = base.join("directory.password");
    std::fs::write(&pw, format!("{PW}\n"))?;
    let cfg = base.join("gatewayd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nmdns = false\n\n[directory]\naddress = \"{dir_addr}\"\n\
             fingerprint = \"{dir_fp}\"\naccount = \"{account}\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )?;
    let gw_state = base.join("gw");
    let cfg_s = cfg.to_str().context("a scratch path that is not UTF-8")?;
    let mut gw = Daemon::start(&bins.gatewayd, &gw_state, &["run", "--config", cfg_s], &[])?;
    let mut ctl = Control::connect(&gw.control(), Duration::from_secs(10))
        .with_context(|| format!("gateway {account} did not start:\n{}", tail(&gw.log)))?;
    let listen = poll(
        "the office to register with the directory",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || {
            gw.check_alive()?;
            let st = ctl.status()?;
            Ok((st["directory"]["state"] == "registered")
                .then(|| st["listen"].as_str().map(str::to_string))
                .flatten())
        },
    )
    .with_context(|| format!("gateway {account}:\n{}", tail(&gw.log)))?;
    let station = start_stations(bins, base, &gw_state, &listen, 1)?
        .pop()
        .context("no station started")?;
    Ok(Office { gw, station })
}

/// Run `calls` calls from office A's 201 to office B's 201 in `dir`.
pub fn run_in(bins: &Bins, dir: &Path, calls: usize, budget: Duration) -> Result<Value> {
    let dir_state = dir.join("dir");
    add_account(&bins.directory, &dir_state, "office-a", &[A_NUMBER.into()])?;
    add_account(&bins.directory, &dir_state, "office-b", &[B_NUMBER.into()])?;
    let (mut directory, mut dir_ctl, dir_addr) = start_directory(&bins.directory, &dir_state)?;
    let fp = dir_ctl.status()?["fingerprint"]
        .as_str()
        .context("directory status without fingerprint")?
        .to_string();
    let addr = dir_addr.to_string();
    let mut a = start_office(bins, &dir.join("a"), "office-a", &addr, &fp)?;
    let mut b = start_office(bins, &dir.join("b"), "office-b", &addr, &fp)?;
    let number = format!("{B_NUMBER}/{}", b.station.ext);
    let (gw_a, gw_b) = (&mut a.gw, &mut b.gw);
    let mut v = call_loop(
        &mut a.station,
        &mut b.station,
        &number,
        calls,
        budget,
        || {
            directory.check_alive()?;
            gw_a.check_alive()?;
            gw_b.check_alive()
        },
    )?;
    let calls_seen = dir_ctl.status()?;
    v["setup"] = json!(format!(
        "keyline-directory and two keyline-gatewayd ([directory] table), one keyline-agent per office \
         (--audio-in silence --audio-out null), loopback; office A's 201 dials {number}"
    ));
    v["directory_relayed_bytes"] = calls_seen["relay"]["bytes"].clone();
    Ok(v)
}
