//! The `keyline-gatewayd` command: runs the gateway, or talks to a running
//! one through its control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use keyline_gatewayd::cli::{
    AdminCmd, Cli, Cmd, ExtensionRangeCmd, RingGroupCmd, RunArgs, SpeedDialCmd,
};
use keyline_gatewayd::config::Config;
use keyline_gatewayd::server::{run, Overrides, RunOptions};
use keyline_net::{control, statedir};
use serde_json::{json, Value};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => serve(cli.state, RunArgs::default()),
        Some(Cmd::Run(args)) => serve(cli.state, args),
        Some(Cmd::CheckConfig { file }) => Config::load(&file).map(|_| {
            println!("{}: ok", file.display());
        }),
        Some(Cmd::Admin {
            action: AdminCmd::Passwd,
        }) => admin_passwd(cli.state),
        Some(cmd) => client(cli.state, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyline-gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(state: Option<PathBuf>, args: RunArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config_file = args.config.clone().or_else(|| {
        std::env::var_os("CONFIGURATION_DIRECTORY")
            .map(|d| PathBuf::from(d).join("gatewayd.toml"))
            .filter(|p| p.exists())
    });
    let opts = RunOptions {
        state,
        config_file,
        overrides: Overrides {
            listen: args.listen,
            internal_media: args.internal_media,
            ring_timeout: args.ring_timeout,
            no_mdns: args.no_mdns,
            no_voicemail: args.no_voicemail,
        },
    };
    runtime()?.block_on(run(opts))
}

fn client(state: Option<PathBuf>, cmd: Cmd) -> Result<()> {
    let dir = match state {
        Some(s) => s,
        None => statedir::default_dir("gatewayd")?,
    };
    let sock = control::socket_path(&dir);
    if let Cmd::Events { json } = cmd {
        return runtime()?.block_on(print_events(&sock, json));
    }
    let (req, json_out) = match &cmd {
        Cmd::Status { json } => (json!({"cmd": "status"}), *json),
        Cmd::Agents { json } => (json!({"cmd": "agents"}), *json),
        Cmd::Calls { json } => (json!({"cmd": "calls"}), *json),
        Cmd::Cdr {
            json,
            limit,
            number,
            outcome,
        } => (
            json!({"cmd": "cdr", "limit": limit, "number": number, "outcome": outcome}),
            *json,
        ),
        Cmd::Deny { code } => (json!({"cmd": "deny", "code": code}), false),
        Cmd::Revoke { ext } => (json!({"cmd": "revoke", "ext": ext}), false),
        Cmd::Renumber { ext, new_ext, name } => (
            json!({"cmd": "set-extension", "ext": ext, "new_ext": new_ext, "name": name}),
            false,
        ),
        Cmd::Hangup { call } => (json!({"cmd": "hangup", "call": call}), false),
        Cmd::Approve { code, ext, name } => (
            json!({"cmd": "approve", "code": code, "ext": ext, "name": name}),
            false,
        ),
        Cmd::SpeedDial { action } => match action {
            SpeedDialCmd::Set { code, number } => (
                json!({"cmd": "speed-dial-set", "code": code, "number": number}),
                false,
            ),
            SpeedDialCmd::List { json } => (json!({"cmd": "speed-dial-list"}), *json),
            SpeedDialCmd::Rm { code } => (json!({"cmd": "speed-dial-rm", "code": code}), false),
        },
        Cmd::RingGroup { action } => match action {
            RingGroupCmd::Set { ringing, mailbox } => {
                (ringing_request("ring-group-set", ringing, mailbox), false)
            }
            RingGroupCmd::Show { json } => (json!({"cmd": "status"}), *json),
            RingGroupCmd::Clear => (json!({"cmd": "ring-group-clear"}), false),
            RingGroupCmd::Add {
                ext,
                name,
                ringing,
                mailbox,
            } => {
                let mut req = ringing_request("ring-group-add", ringing, mailbox);
                req["ext"] = json!(ext);
                req["name"] = json!(name);
                (req, false)
            }
            RingGroupCmd::Edit {
                ext,
                name,
                ringing,
                mailbox,
            } => {
                let mut req = ringing_request("ring-group-edit", ringing, mailbox);
                req["ext"] = json!(ext);
                req["name"] = json!(name);
                (req, false)
            }
            RingGroupCmd::Remove { ext } => {
                (json!({"cmd": "ring-group-remove", "ext": ext}), false)
            }
            RingGroupCmd::List { json } => (json!({"cmd": "ring-group-list"}), *json),
        },
        Cmd::ExtensionRange { action } => match action {
            ExtensionRangeCmd::Set { lo, hi } => (
                json!({"cmd": "extension-range-set", "lo": lo, "hi": hi}),
                false,
            ),
            ExtensionRangeCmd::Show { json } => (json!({"cmd": "status"}), *json),
            ExtensionRangeCmd::Clear => (json!({"cmd": "extension-range-clear"}), false),
        },
        Cmd::Run(_) | Cmd::CheckConfig { .. } | Cmd::Events { .. } | Cmd::Admin { .. } => {
            unreachable_cmd()
        }
    };
    let reply = runtime()?.block_on(control::request(&sock, &req, Duration::from_secs(10)))?;
    let reply = control::into_result(reply)?;
    let reply = match &cmd {
        Cmd::RingGroup {
            action: RingGroupCmd::Show { .. },
        } => reply.get("ring_group").cloned().unwrap_or(Value::Null),
        Cmd::ExtensionRange {
            action: ExtensionRangeCmd::Show { .. },
        } => json!({
            "extension_range": reply.get("extension_range").cloned().unwrap_or(Value::Null),
            "source": reply.get("extension_range_source").cloned().unwrap_or(Value::Null),
        }),
        _ => reply,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    print_human(&cmd, &reply);
    Ok(())
}

/// `admin passwd`: store an argon2id hash of a new admin password in the
/// gateway's database (the running gateway reads it at each login).
fn admin_passwd(state: Option<PathBuf>) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let read_line = || -> Result<String> {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password")?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let pw = if std::io::stdin().is_terminal() {
        let ask = |prompt: &str| -> Result<String> {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            let echo = EchoOff::new();
            let line = read_line();
            drop(echo);
            eprintln!();
            line
        };
        let a = ask("New admin password: ")?;
        let b = ask("Again: ")?;
        if a != b {
            anyhow::bail!("the two passwords differ; nothing was changed");
        }
        a
    } else {
        read_line()?
    };
    let hash = keyline_gatewayd::admin::hash_password(&pw)?;
    let dir = match state {
        Some(s) => s,
        None => statedir::default_dir("gatewayd")?,
    };
    // A running gateway stores it itself, through the dispatcher, and
    // turns its admin site on at once.
    let sock = control::socket_path(&dir);
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        let req = json!({"cmd": "admin-passwd", "hash": hash});
        let reply = runtime()?.block_on(control::request(&sock, &req, Duration::from_secs(15)))?;
        let reply = control::into_result(reply)?;
        let site = &reply["admin_site"];
        match site["state"].as_str() {
            Some("listening") => println!(
                "admin password set; the admin site is on at {}",
                site["urls"]
                    .as_array()
                    .map(|u| u
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_else(|| s(site, "url"))
            ),
            _ => println!(
                "admin password set; the admin site is off: {}",
                s(site, "why")
            ),
        }
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = keyline_gatewayd::db::Db::open(&dir.join("gatewayd.sqlite"))?;
    db.set_admin_password(&hash)?;
    // A gateway running where its socket could not be reached still
    // finds it at its next look (every 10 seconds).
    println!("admin password set; the admin site comes on when the gateway runs (within 10 seconds if it is running)");
    Ok(())
}

/// The terminal's echo turned off until dropped.
struct EchoOff(Option<nix::sys::termios::Termios>);

impl EchoOff {
    fn new() -> EchoOff {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let stdin = std::io::stdin();
        let Ok(old) = tcgetattr(&stdin) else {
            return EchoOff(None);
        };
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        if tcsetattr(&stdin, SetArg::TCSANOW, &quiet).is_err() {
            return EchoOff(None);
        }
        EchoOff(Some(old))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                old,
            );
        }
    }
}

/// `events`: the gateway's stream, in words or as JSON lines.
async fn print_events(sock: &std::path::Path, json: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    control::subscribe(sock, |ev| {
        let line = if json {
            ev.to_string()
        } else {
            match serde_json::from_value::<keyline_gatewayd::api::Event>(ev.clone()) {
                Ok(e) => e.describe(),
                Err(_) => ev.to_string(),
            }
        };
        // Stop when whoever reads us has gone (a closed pipe).
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })
    .await
}

/// The control request of `ring-group set`, `add` or `edit`: how the
/// members ring and whose mailbox takes what nobody answers.
fn ringing_request(
    cmd: &str,
    r: &keyline_gatewayd::cli::Ringing,
    mailbox: &Option<String>,
) -> Value {
    json!({
        "cmd": cmd,
        "mode": if r.hunt { "hunt" } else { "all" },
        "step_secs": r.step,
        "members": r.members,
        "mailbox": mailbox,
    })
}

fn unreachable_cmd() -> ! {
    // `main` dispatches Run and CheckConfig before reaching `client`.
    std::process::exit(2)
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// The extension range in `r` and where it comes from (the field
/// `source`), in words.
fn range_words(r: &Value, source: &str) -> String {
    let bound = |i: usize| {
        r.get("extension_range")
            .and_then(|v| v.get(i))
            .map(Value::to_string)
            .unwrap_or_default()
    };
    let from = match r.get(source).and_then(Value::as_str) {
        Some("set-here") => "set here",
        _ => "from the configuration file",
    };
    format!("{}-{} ({from})", bound(0), bound(1))
}

/// Ring groups with extensions of their own, one a line.
fn print_groups(groups: Option<&Value>) {
    for g in groups.and_then(Value::as_array).into_iter().flatten() {
        let members = g
            .get("members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let how = match g.get("mode").and_then(Value::as_str) {
            Some("hunt") => format!("in turn, {} s each", s(g, "step_secs")),
            _ => "all at once".into(),
        };
        let mailbox = match g.get("mailbox").and_then(Value::as_str) {
            Some(m) => format!(", unanswered to {m}'s mailbox"),
            None => String::new(),
        };
        println!(
            "  {:<6} {}: {members} ({how}{mailbox})",
            s(g, "ext"),
            s(g, "name")
        );
    }
}

fn print_human(cmd: &Cmd, r: &Value) {
    match cmd {
        Cmd::Status { .. } => {
            println!("listening     {}", s(r, "listen"));
            println!("fingerprint   {}", s(r, "fingerprint"));
            println!("state         {}", s(r, "state_dir"));
            println!("internal media {}", s(r, "internal_media"));
            println!("stations online {}", s(r, "stations_online"));
            println!("calls active  {}", s(r, "calls_active"));
            if let Some(c) = r.get("connections").filter(|c| c.is_object()) {
                println!(
                    "connections   {} of at most {} ({} refused)",
                    s(c, "open"),
                    s(c, "max"),
                    s(c, "refused")
                );
            }
            let admin = r.get("admin").cloned().unwrap_or(Value::Null);
            match (s(&admin, "state").as_str(), admin.get("password_set")) {
                (_, Some(Value::Bool(false))) => println!(
                    "admin site    off until a password is set: keyline-gatewayd admin passwd"
                ),
                ("listening", _) => {
                    let urls: Vec<&str> = admin["urls"]
                        .as_array()
                        .map(|u| u.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if urls.is_empty() {
                        println!("admin site    {}", s(&admin, "url"));
                    } else {
                        println!("admin site    {}", urls.join(" "));
                    }
                }
                _ => println!("admin site    off ({})", s(&admin, "why")),
            }
            println!("extensions    {}", range_words(r, "extension_range_source"));
            if r.get("ring_groups")
                .and_then(Value::as_array)
                .is_some_and(|g| !g.is_empty())
            {
                println!("ring groups");
                print_groups(r.get("ring_groups"));
            }
            if let Some(relay) = r.get("relay") {
                println!(
                    "relay         {} packets, {} bytes forwarded, {} active",
                    s(relay, "packets"),
                    s(relay, "bytes"),
                    s(relay, "active")
                );
            }
        }
        Cmd::Agents { .. } => {
            println!(
                "{:<6} {:<9} {:<8} {:<7} {:<22} NAME",
                "EXT", "STATE", "CODE", "ONLINE", "ADDRESS"
            );
            for a in r
                .get("agents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "{:<6} {:<9} {:<8} {:<7} {:<22} {}",
                    s(a, "ext"),
                    s(a, "state"),
                    s(a, "code"),
                    s(a, "online"),
                    s(a, "addr"),
                    s(a, "name")
                );
            }
        }
        Cmd::Calls { .. } => {
            for c in r
                .get("calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "call {} {} -> {} {} {}s{}",
                    s(c, "id"),
                    s(c, "caller"),
                    s(c, "callee"),
                    s(c, "state"),
                    s(c, "seconds"),
                    if c.get("relayed") == Some(&Value::Bool(true)) {
                        " (relayed)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Cdr { .. } => {
            for c in r.get("cdr").and_then(Value::as_array).into_iter().flatten() {
                println!(
                    "{} {} -> {} {} start={} answer={} end={}",
                    s(c, "id"),
                    s(c, "caller"),
                    s(c, "callee"),
                    s(c, "outcome"),
                    s(c, "start_ms"),
                    s(c, "answer_ms"),
                    s(c, "end_ms")
                );
            }
        }
        Cmd::SpeedDial { action } => match action {
            SpeedDialCmd::List { .. } => {
                for d in r
                    .get("speed_dials")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    println!("{:<6} {}", s(d, "code"), s(d, "number"));
                }
            }
            SpeedDialCmd::Set { code, .. } => println!("{code} now dials {}", s(r, "number")),
            SpeedDialCmd::Rm { code } => println!("{code} removed"),
        },
        Cmd::Approve { code, .. } => {
            println!("approved {code} as extension {}", s(r, "ext"));
        }
        Cmd::Deny { code } => println!("denied the station with code {code}"),
        Cmd::Revoke { ext } => println!("extension {ext} revoked"),
        Cmd::Renumber { ext, .. } => println!("extension {ext} is now {}", s(r, "ext")),
        Cmd::Hangup { call } => println!("call {call} ended"),
        Cmd::RingGroup { action } => match action {
            RingGroupCmd::Show { .. } => {
                let members = match r.get("members") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    Some(other) => other.as_str().unwrap_or("").to_string(),
                    None => String::new(),
                };
                match r.get("mode").and_then(Value::as_str) {
                    Some("hunt") => println!(
                        "the office number rings {members} in turn, {} s each (from {})",
                        s(r, "step_secs"),
                        s(r, "source")
                    ),
                    _ => println!(
                        "the office number rings {members} all at once (from {})",
                        s(r, "source")
                    ),
                }
                match r.get("office_mailbox").and_then(Value::as_str) {
                    Some(m) => println!(
                        "unanswered calls go to extension {m}'s mailbox (from {})",
                        s(r, "office_mailbox_source")
                    ),
                    None => println!("unanswered calls to the office number get no mailbox"),
                }
            }
            RingGroupCmd::Set { .. } => println!("ring group set"),
            RingGroupCmd::Clear => {
                println!("ring group cleared: the config file's reception applies")
            }
            RingGroupCmd::Add { ext, .. } => println!("ring group {ext} added"),
            RingGroupCmd::Edit { ext, .. } => println!("ring group {ext} changed"),
            RingGroupCmd::Remove { ext } => println!("ring group {ext} removed"),
            RingGroupCmd::List { .. } => print_groups(r.get("ring_groups")),
        },
        Cmd::ExtensionRange { action } => match action {
            ExtensionRangeCmd::Show { .. } => println!("{}", range_words(r, "source")),
            ExtensionRangeCmd::Set { .. } | ExtensionRangeCmd::Clear => {
                println!("{}", range_words(r, "source"))
            }
        },
        Cmd::Run(_) | Cmd::CheckConfig { .. } | Cmd::Events { .. } | Cmd::Admin { .. } => {}
    }
}
