//! The `keyline-agent` command: runs the office station daemon (`run`) or
//! the standalone internet terminal (`terminal`), or drives a running one
//! through its control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use keyline_agent::api::{ForwardSetRule, Request};
use keyline_agent::cli::{audio_set_request, AudioCmd, Cli, Cmd, ForwardCmd, VoicemailCmd};
use keyline_agent::daemon::{run, RunOptions};
use keyline_agent::terminal;
use keyline_net::{control, statedir};
use serde_json::{json, Value};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            gateway,
            no_mdns,
            endpoint,
        } => {
            if no_mdns && gateway.is_none() {
                Err(anyhow::anyhow!("--no-mdns needs --gateway HOST:PORT"))
            } else {
                serve(RunOptions {
                    state: cli.state,
                    gateway,
                    mdns: !no_mdns,
                    endpoint,
                })
            }
        }
        Cmd::Terminal {
            config,
            directory,
            directory_fp,
            account,
            password_file,
            numbers,
            mail_dir,
            endpoint,
        } => {
            let given = terminal::settings::Given {
                directory,
                directory_fp,
                account,
                password_file,
                numbers,
            };
            let file = match config.as_deref().map(terminal::settings::read).transpose() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("keyline-agent: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let s = match terminal::settings::resolve(given, file, home.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("keyline-agent: {e}");
                    return ExitCode::FAILURE;
                }
            };
            serve_terminal(terminal::TerminalOptions {
                state: cli.state,
                directory: s.directory,
                directory_fp: s.directory_fp,
                account: s.account,
                password_file: s.password_file,
                numbers: s.numbers,
                mail_dir,
                endpoint,
            })
        }
        cmd => client(cli.state, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyline-agent: {e:#}");
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

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `keyline-agent terminal`: the standalone internet terminal.
fn serve_terminal(opts: terminal::TerminalOptions) -> Result<()> {
    init_tracing();
    runtime()?.block_on(terminal::run(opts))
}

/// `keyline-agent run`: the office station.
fn serve(opts: RunOptions) -> Result<()> {
    init_tracing();
    runtime()?.block_on(run(opts))
}

fn client(state: Option<PathBuf>, cmd: Cmd) -> Result<()> {
    let dir = match state {
        Some(s) => s,
        None => statedir::default_dir("agent")?,
    };
    let sock = control::socket_path(&dir);
    if let Cmd::Events { json } = cmd {
        return runtime()?.block_on(print_events(&sock, json));
    }
    if let Cmd::Audio { action } = cmd {
        return runtime()?.block_on(audio(&sock, action));
    }
    let req = match &cmd {
        Cmd::Status { .. } => Request::Status,
        Cmd::Dial { number, lookup } => Request::Dial {
            number: number.clone(),
            lookup: *lookup,
        },
        Cmd::Answer => Request::Answer,
        Cmd::Hangup => Request::Hangup,
        Cmd::Message { number, text } => Request::Message {
            to: number.clone(),
            body: text.join(" "),
        },
        Cmd::Messages { .. } => Request::Messages,
        Cmd::Contacts { .. } => Request::Contacts,
        Cmd::Metrics => Request::Metrics,
        Cmd::Hold => Request::Hold,
        Cmd::Voicemail { action } => match action {
            VoicemailCmd::List { .. } => Request::VoicemailList,
            VoicemailCmd::Play { id } => Request::VoicemailPlay { id: *id },
            VoicemailCmd::Delete { id } => Request::VoicemailDelete { id: *id },
        },
        Cmd::Transfer {
            target,
            consult,
            complete,
            cancel,
        } => {
            if let Some(t) = consult {
                Request::Consult { target: t.clone() }
            } else if *complete {
                Request::ConsultComplete
            } else if *cancel {
                Request::ConsultCancel
            } else {
                Request::Transfer {
                    target: target.clone().context("transfer needs a target number")?,
                }
            }
        }
        Cmd::Resume => Request::Resume,
        Cmd::Record { mode } => Request::Record { on: mode == "on" },
        Cmd::Video { mode } => Request::Video { on: mode == "on" },
        Cmd::Forward { action } => match action {
            ForwardCmd::Set {
                always,
                busy,
                no_answer,
                offline,
                number,
            } => {
                let rules = [
                    ("always", always),
                    ("busy", busy),
                    ("no-answer", no_answer),
                    ("offline", offline),
                ]
                .into_iter()
                .filter_map(|(when, to)| {
                    Some(ForwardSetRule {
                        when: when.to_string(),
                        to: to.clone()?,
                    })
                })
                .collect();
                Request::ForwardSet {
                    number: number.clone(),
                    rules,
                }
            }
            ForwardCmd::Off { conditions, number } => Request::ForwardOff {
                number: number.clone(),
                conditions: conditions.clone(),
            },
            ForwardCmd::List { .. } => Request::ForwardList,
        },
        Cmd::Passwd => {
            let (old, new) = read_passwords()?;
            Request::Passwd { old, new }
        }
        Cmd::Account { .. } => Request::Account,
        Cmd::Run { .. } | Cmd::Terminal { .. } | Cmd::Events { .. } | Cmd::Audio { .. } => {
            return Ok(())
        }
    };
    let req = serde_json::to_value(&req)?;
    let reply = runtime()?.block_on(control::request(&sock, &req, Duration::from_secs(15)))?;
    let reply = control::into_result(reply)?;
    match &cmd {
        Cmd::Status { json: true } => println!("{}", serde_json::to_string_pretty(&reply)?),
        Cmd::Status { json: false } => print_status(&reply),
        Cmd::Dial { number, .. } => {
            if reply.get("lookup").and_then(Value::as_bool) == Some(true) {
                println!(
                    "ringing {} (look-up only: connected straight to its endpoint)",
                    reply
                        .get("callee")
                        .and_then(Value::as_str)
                        .unwrap_or(number)
                );
            } else if let Some(f) = reply.get("feature").and_then(Value::as_str) {
                println!("{f}");
            } else if let Some(secs) = reply.get("seconds").and_then(Value::as_f64) {
                println!("playing {secs:.1} s of voicemail");
            } else if let Some(to) = reply.get("transferring_to").and_then(Value::as_str) {
                println!("transferring to {to}");
            } else if let Some(from) = reply.get("picked_up_from").and_then(Value::as_str) {
                println!("picked up the call from {from}");
            } else {
                println!(
                    "ringing {} (call {})",
                    reply
                        .get("callee")
                        .and_then(Value::as_str)
                        .unwrap_or(number),
                    reply.get("call").map(Value::to_string).unwrap_or_default()
                );
            }
        }
        Cmd::Message { number, .. } => println!("sent to {number}"),
        Cmd::Hold => println!("on hold"),
        Cmd::Voicemail { action } => match action {
            VoicemailCmd::List { json: true } => {
                println!("{}", serde_json::to_string_pretty(&reply)?)
            }
            VoicemailCmd::List { json: false } | VoicemailCmd::Delete { .. } => {
                let list = reply.get("voicemails").and_then(Value::as_array);
                match list {
                    Some(l) if !l.is_empty() => {
                        for v in l {
                            println!(
                                "{:>4}  from {:<12} {:>5.1} s {}",
                                v.get("id").and_then(Value::as_u64).unwrap_or(0),
                                v.get("from").and_then(Value::as_str).unwrap_or("?"),
                                v.get("secs").and_then(Value::as_f64).unwrap_or(0.0),
                                if v.get("heard") == Some(&Value::Bool(true)) {
                                    ""
                                } else {
                                    "new"
                                }
                            );
                        }
                    }
                    _ => println!("no voicemail"),
                }
            }
            VoicemailCmd::Play { .. } => println!(
                "playing {:.1} s of voicemail",
                reply.get("seconds").and_then(Value::as_f64).unwrap_or(0.0)
            ),
        },
        Cmd::Transfer { .. } => {
            if let Some(f) = reply.get("feature").and_then(Value::as_str) {
                println!("{f}");
            } else if let Some(t) = reply.get("transferring_to").and_then(Value::as_str) {
                println!("transferring to {t}");
            } else if let Some(c) = reply.get("callee").and_then(Value::as_str) {
                println!("consulting {c} (the call is on hold)");
            } else {
                println!("back to the held call");
            }
        }
        Cmd::Resume => println!("resumed"),
        Cmd::Video { mode } => println!("camera {mode}"),
        Cmd::Record { .. } => {
            if let Some(p) = reply.get("recording").and_then(Value::as_str) {
                println!("recording to {p}");
            } else if let Some(p) = reply.get("recorded").and_then(Value::as_str) {
                println!("recorded {p}");
            }
        }
        Cmd::Contacts { json: true } => println!("{}", serde_json::to_string_pretty(&reply)?),
        Cmd::Contacts { json: false } => {
            let list = reply.get("contacts").and_then(Value::as_array);
            match list {
                Some(l) if !l.is_empty() => {
                    for c in l {
                        let s = |k: &str| c.get(k).and_then(Value::as_str);
                        let number = s("number").unwrap_or("?");
                        match (s("code"), s("name")) {
                            (Some(code), _) => println!("{code:<6} {number}"),
                            (None, Some(name)) => println!("{number:<6} {name}"),
                            (None, None) => println!("{number}"),
                        }
                    }
                }
                _ => println!("no contacts"),
            }
        }
        Cmd::Messages { json: true } => println!("{}", serde_json::to_string_pretty(&reply)?),
        Cmd::Messages { json: false } => {
            let list = reply.get("messages").and_then(Value::as_array);
            match list {
                Some(l) if !l.is_empty() => {
                    for m in l {
                        let from = m.get("from").and_then(Value::as_str).unwrap_or("?");
                        if m.get("kind").and_then(Value::as_str) == Some("voice") {
                            // A terminal's voice mail, delivered by the directory.
                            println!(
                                "from {from}: voice mail{} in {}",
                                m.get("seconds")
                                    .and_then(Value::as_f64)
                                    .map(|s| format!(" ({s:.1} s)"))
                                    .unwrap_or_default(),
                                m.get("file").and_then(Value::as_str).unwrap_or("?")
                            );
                        } else {
                            println!(
                                "from {from}: {}",
                                m.get("body").and_then(Value::as_str).unwrap_or("")
                            );
                        }
                    }
                }
                _ => println!("no messages"),
            }
        }
        Cmd::Forward {
            action: ForwardCmd::List { json: true },
        } => println!("{}", serde_json::to_string_pretty(&reply)?),
        Cmd::Forward { .. } => print_forwards(&reply),
        Cmd::Metrics => print!(
            "{}",
            reply.get("text").and_then(Value::as_str).unwrap_or("")
        ),
        Cmd::Answer => println!("answered"),
        Cmd::Hangup => println!("hung up"),
        Cmd::Passwd => {
            println!("the password was changed on the directory; the account's other sessions have ended");
            match reply.get("warning").and_then(Value::as_str) {
                Some(w) => eprintln!("keyline-agent: warning: {w}"),
                None => println!(
                    "the new password is in {}",
                    reply
                        .get("password_file")
                        .and_then(Value::as_str)
                        .unwrap_or("the password file")
                ),
            }
        }
        Cmd::Account { json: true } => println!("{}", serde_json::to_string_pretty(&reply)?),
        Cmd::Account { json: false } => print_account(&reply),
        Cmd::Run { .. } | Cmd::Terminal { .. } | Cmd::Events { .. } | Cmd::Audio { .. } => {}
    }
    Ok(())
}

/// `keyline-agent account`, in words.
fn print_account(reply: &Value) {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let list = |v: &Value, k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("account {}", text(reply, "account"));
    for (i, n) in list(reply, "numbers").iter().enumerate() {
        let shown = if i == 0 { " (shown to callees)" } else { "" };
        println!("  number {n}{shown}");
    }
    let devices = reply.get("devices").and_then(Value::as_array);
    match devices {
        Some(d) if !d.is_empty() => {
            println!("devices logged in now:");
            for d in d {
                let mut line = format!("  {}", text(d, "address"));
                for k in ["client", "name", "node"] {
                    let v = text(d, k);
                    if !v.is_empty() {
                        line.push_str(&format!("  {k} {v}"));
                    }
                }
                let numbers = list(d, "numbers");
                line.push_str(&if numbers.is_empty() {
                    "  registers nothing".to_string()
                } else {
                    format!("  registers {}", numbers.join(", "))
                });
                if let Some(s) = d.get("refreshed_s_ago").and_then(Value::as_u64) {
                    line.push_str(&format!(", refreshed {s} s ago"));
                }
                if d.get("this").and_then(Value::as_bool) == Some(true) {
                    line.push_str("  (this one)");
                }
                println!("{line}");
            }
        }
        _ => println!("no device logged in now"),
    }
}

/// `keyline-agent audio list` and `audio set`.
async fn audio(sock: &std::path::Path, action: AudioCmd) -> Result<()> {
    let ask = |req: Value| async move {
        control::into_result(control::request(sock, &req, Duration::from_secs(15)).await?)
    };
    match action {
        AudioCmd::List { json } => {
            let devices = ask(serde_json::to_value(Request::AudioDevices)?).await?;
            let status = ask(serde_json::to_value(Request::Status)?).await?;
            let current = status.get("audio").cloned().unwrap_or(Value::Null);
            if json {
                let all = json!({
                    "inputs": devices.get("inputs").cloned().unwrap_or(json!([])),
                    "outputs": devices.get("outputs").cloned().unwrap_or(json!([])),
                    "audio": current,
                });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for (title, key) in [("Microphones", "inputs"), ("Speakers", "outputs")] {
                    println!("{title}:");
                    let list = devices.get(key).and_then(Value::as_array);
                    match list {
                        Some(l) if !l.is_empty() => {
                            for d in l {
                                // ALSA's descriptions run over several lines.
                                let name = d["name"].as_str().unwrap_or("").lines().next();
                                println!(
                                    "  {:<24} {}{}",
                                    d["spec"].as_str().unwrap_or("?"),
                                    name.unwrap_or(""),
                                    if d["default"] == true {
                                        " (default)"
                                    } else {
                                        ""
                                    }
                                );
                            }
                        }
                        _ => println!("  none found"),
                    }
                }
                print_audio(&current);
            }
        }
        AudioCmd::Set {
            mic,
            speaker,
            ring_device,
            ringtone,
            json,
        } => {
            let cwd = std::env::current_dir().context("the current directory")?;
            let req = audio_set_request(
                &cwd,
                mic.as_deref(),
                speaker.as_deref(),
                ring_device.as_deref(),
                ringtone.as_deref(),
            );
            let reply = ask(req).await?;
            let now = reply.get("audio").cloned().unwrap_or(Value::Null);
            if json {
                println!("{}", serde_json::to_string_pretty(&now)?);
            } else {
                print_audio(&now);
            }
        }
    }
    Ok(())
}

/// The audio in use (`status`'s `audio`), in words.
fn print_audio(a: &Value) {
    let s = |k: &str| a.get(k).and_then(Value::as_str);
    println!("In use:");
    println!("  microphone  {}", s("in").unwrap_or("device"));
    println!("  speaker     {}", s("out").unwrap_or("device"));
    println!("  ring on     {}", s("ring_out").unwrap_or("the speaker"));
    println!("  ringtone    {}", s("ringtone").unwrap_or("built-in"));
}

/// The old and the new password for `passwd`: asked for without echo
/// (the new one twice) on a terminal, else two lines of standard input.
fn read_passwords() -> Result<(String, String)> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut lines = stdin.lock().lines();
        let mut next = |what: &str| -> Result<String> {
            let line = lines
                .next()
                .with_context(|| {
                    format!("no {what} on standard input (old, then new, one per line)")
                })?
                .context("reading standard input")?;
            Ok(line.trim_end_matches('\r').to_string())
        };
        let old = next("old password")?;
        let new = next("new password")?;
        return Ok((old, new));
    }
    let old = ask_hidden("Old password: ")?;
    let new = ask_hidden("New password: ")?;
    if ask_hidden("Repeat new password: ")? != new {
        anyhow::bail!("the new passwords differ; nothing was changed");
    }
    Ok((old, new))
}

/// One line from the terminal with echo off (and on again after).
fn ask_hidden(prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::BufRead;
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `keyline-agent events`: the daemon's events until it goes or drops us.
async fn print_events(sock: &std::path::Path, json: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    control::subscribe(sock, |ev| {
        let line = if json {
            ev.to_string()
        } else {
            describe_event(&ev)
        };
        // Stop when whoever reads us has gone (a closed pipe).
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })
    .await
}

/// One event in words.
fn describe_event(ev: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let call = &ev["call"];
    let who = || {
        let mut w = s(&call["peer"]);
        if let Some(n) = call["peer_name"].as_str() {
            w = format!("{w} ({n})");
        }
        w
    };
    let id = || match call["id"].as_u64() {
        Some(i) => format!("call {i}"),
        None => "call".to_string(),
    };
    match ev["event"].as_str().unwrap_or("") {
        "call" => {
            let mut line = format!(
                "{} {} {} {}",
                id(),
                if call["direction"] == "in" {
                    "from"
                } else {
                    "to"
                },
                who(),
                s(&call["state"])
            );
            if call["on_hold"] == true {
                line.push_str(", on hold");
            }
            if call["held_by_peer"] == true {
                line.push_str(", held by the other end");
            }
            if call["state"] == "connected" {
                line.push_str(if call["relayed"] == true {
                    " (relayed)"
                } else {
                    " (direct)"
                });
            }
            line
        }
        "call-ended" => format!("{} with {} ended: {}", id(), who(), s(&ev["reason"])),
        "link" => match ev["state"].as_str().unwrap_or("") {
            "pending" => format!("waiting for approval: pairing code {}", s(&ev["code"])),
            "registered" => match ev["ext"].as_str() {
                Some(ext) => format!("registered as extension {ext}"),
                None => format!(
                    "registered {}",
                    ev["numbers"]
                        .as_array()
                        .map(|n| n.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                ),
            },
            "disconnected" => format!("disconnected: {}", s(&ev["error"])),
            other => other.to_string(),
        },
        "message" => format!(
            "message from {}: {}",
            s(&ev["message"]["from"]),
            s(&ev["message"]["body"])
        ),
        "voicemail-waiting" => format!("{} voicemail(s) waiting", ev["count"]),
        "settings" => format!("settings: {}", ev["settings"]),
        "dropped" => format!("dropped by the daemon: {}", s(&ev["reason"])),
        _ => ev.to_string(),
    }
}

fn print_status(r: &Value) {
    let get = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let terminal = r.get("mode").and_then(Value::as_str) == Some("terminal");
    match get("state").as_str() {
        "registered" if terminal => {
            let numbers: Vec<&str> = r
                .get("numbers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "terminal: {} registered with the directory {} (seen as {})",
                numbers.join(", "),
                get("directory"),
                get("observed")
            );
        }
        other if terminal => println!(
            "terminal: {other} (directory {}){}",
            get("directory_name"),
            r.get("error")
                .and_then(Value::as_str)
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        "pending" => println!(
            "waiting for approval: pairing code {} (on the gateway: keyline-gatewayd approve {})",
            get("code"),
            get("code")
        ),
        "registered" => println!(
            "registered as extension {} via {}",
            get("ext"),
            get("gateway")
        ),
        other => println!(
            "{other} {}",
            r.get("error").and_then(Value::as_str).unwrap_or("")
        ),
    }
    if let Some(c) = r.get("call").filter(|c| !c.is_null()) {
        println!(
            "call {} {} {} {}",
            c.get("id").map(Value::to_string).unwrap_or_default(),
            c.get("direction").and_then(Value::as_str).unwrap_or(""),
            c.get("peer").and_then(Value::as_str).unwrap_or(""),
            c.get("state").and_then(Value::as_str).unwrap_or("")
        );
    } else {
        println!("no call");
    }
}

/// The rules of every number, one line each (what `forward list` shows,
/// and what `forward set` and `forward off` leave).
fn print_forwards(reply: &Value) {
    let empty = Vec::new();
    for n in reply["numbers"].as_array().unwrap_or(&empty) {
        let number = n["number"].as_str().unwrap_or("?");
        let rules = n["rules"].as_array().unwrap_or(&empty);
        if rules.is_empty() {
            println!("{number}: no forwarding");
        }
        for r in rules {
            let when = match r["when"].as_str().unwrap_or("?") {
                "unregistered" => "offline",
                w => w,
            };
            let on = if r["on"].as_bool() == Some(false) {
                " (off)"
            } else {
                ""
            };
            println!(
                "{number}: {when} -> {}{on}",
                r["to"].as_str().unwrap_or("?")
            );
        }
    }
}
