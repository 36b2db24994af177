//! The `keyline-directory` command: runs the directory, manages accounts in
//! its database, or talks to a running one through its control socket.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use keyline_directory::api::{self, Request};
use keyline_directory::auth;
use keyline_directory::cli::{
    Cli, ClusterCmd, Cmd, ForwardCmd, ForwardWhenArg, InviteCmd, MailCmd, MigrateArgs, PolicyArg,
    ServeArgs, UserCmd,
};
use keyline_directory::config::Config;
use keyline_directory::server::{open_configured_store, run, Overrides, RunOptions};
use keyline_directory::store::{self, PostgresStore, SqliteStore, Store};
use keyline_net::{control, statedir};
use keyline_proto::dir::{DirectPolicy, ForwardRule, ForwardWhen};
use keyline_proto::number;
use serde_json::Value;

/// mimalloc rather than glibc's malloc: a look-up makes and frees a few
/// dozen small strings and buffers across two threads, where glibc's arenas
/// spent a fifth of the directory's time (issue 6).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.check_config, cli.cmd) {
        (Some(file), _) | (None, Some(Cmd::CheckConfig { file })) => check_config(&file),
        (None, None) => serve(cli.state, ServeArgs::default()),
        (None, Some(Cmd::Serve(args))) => serve(cli.state, args),
        (None, Some(Cmd::User(u))) => user(cli.state, u),
        (None, Some(Cmd::Migrate(m))) => migrate(m),
        (None, Some(Cmd::Invite(i))) => invite(cli.state, i),
        (None, Some(Cmd::Forward(ForwardCmd::Set { number, to, when }))) => {
            forward_set(cli.state, &number, Some((&to, when)))
        }
        (None, Some(Cmd::Forward(ForwardCmd::Rm { number }))) => {
            forward_set(cli.state, &number, None)
        }
        (None, Some(cmd)) => client(cli.state, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyline-directory: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> Result<()> {
    Config::load(file)?;
    println!("{}: ok", file.display());
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Storage calls are serialised on one SQLite connection: more
        // blocking threads would only wait (and cost memory).
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn policy(p: PolicyArg) -> DirectPolicy {
    match p {
        PolicyArg::Direct => DirectPolicy::Direct,
        PolicyArg::DirectThenRelay => DirectPolicy::DirectThenRelay,
        PolicyArg::Relay => DirectPolicy::Relay,
    }
}

fn serve(state: Option<PathBuf>, args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config_file = args.config.clone().or_else(|| {
        std::env::var_os("CONFIGURATION_DIRECTORY")
            .map(|d| PathBuf::from(d).join("directory.toml"))
            .filter(|p| p.exists())
    });
    let mut config = match &config_file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    let overrides = Overrides {
        listen: args.listen,
        direct_connect: args.direct_connect.map(policy),
        binding_ttl: args.binding_ttl,
        ring_timeout: args.ring_timeout,
    };
    overrides.apply(&mut config);
    config.validate()?;
    runtime()?.block_on(run(RunOptions {
        state,
        config,
        config_file,
        overrides,
    }))
}

/// The state directory of a command that is not the daemon: `--state`, else
/// the control default (see `statedir::default_dir`).
fn state_dir(state: Option<PathBuf>) -> Result<PathBuf> {
    match state {
        Some(s) => Ok(s),
        None => statedir::default_dir("directory"),
    }
}

/// Tell a running directory that storage changed; fine when none runs.
fn notify(dir: &Path, logout: Option<&str>) {
    let sock = control::socket_path(dir);
    if !sock.exists() {
        return;
    }
    let req = Request::Reload {
        logout: logout.map(str::to_string),
    };
    let res = runtime().and_then(|rt| rt.block_on(request(&sock, &req)));
    if let Err(e) = res {
        // A stale socket of a stopped directory is not an error.
        tracing_free_warn(&format!(
            "the change is stored, but the running directory could not be told ({e:#}); it applies at its next start"
        ));
    }
}

fn tracing_free_warn(msg: &str) {
    eprintln!("keyline-directory: warning: {msg}");
}

/// The packaged service's configuration and state.
const PACKAGED_CONFIG: &str = "/etc/keyline/directory.toml";
const PACKAGED_STATE: &str = "/var/lib/keyline/directory";

/// The configuration file a command other than the daemon reads for its
/// `[store]`: `explicit`, else $CONFIGURATION_DIRECTORY/directory.toml,
/// else (with `packaged`) /etc/keyline/directory.toml, when they exist.
fn command_config(explicit: Option<&Path>, packaged: bool) -> Result<Option<(PathBuf, Config)>> {
    let file = match explicit {
        Some(f) => Some(f.to_path_buf()),
        None => std::env::var_os("CONFIGURATION_DIRECTORY")
            .map(|d| PathBuf::from(d).join("directory.toml"))
            .into_iter()
            .chain(packaged.then(|| PathBuf::from(PACKAGED_CONFIG)))
            .find(|p| p.exists()),
    };
    match file {
        Some(f) => {
            let c = Config::load(&f)?;
            Ok(Some((f, c)))
        }
        None => Ok(None),
    }
}

/// Open the database for an account or forwarding command: PostgreSQL
/// when the configuration names one (the packaged service's
/// configuration goes with its state directory), else the SQLite file of
/// the same directory the control commands use (the packaged service's
/// when only it exists), created if need be.
fn open(state: Option<PathBuf>) -> Result<(PathBuf, Arc<dyn Store>)> {
    let dir = statedir::resolve(Some(&state_dir(state)?), "directory")?;
    let store_cfg = command_config(None, dir == Path::new(PACKAGED_STATE))?
        .map(|(_, c)| c.store)
        .unwrap_or_default();
    let store = open_configured_store(&dir, &store_cfg)?;
    Ok((dir, store))
}

fn migrate(args: MigrateArgs) -> Result<()> {
    let Some((file, cfg)) = command_config(args.config.as_deref(), true)? else {
        bail!("no configuration file names the PostgreSQL database: give --config FILE with [store] postgres");
    };
    let Some(url) = &cfg.store.postgres else {
        bail!(
            "{} names no PostgreSQL database ([store] postgres)",
            file.display()
        );
    };
    if !args.from_sqlite.is_file() {
        bail!("{}: no such SQLite file", args.from_sqlite.display());
    }
    let src = SqliteStore::open(&args.from_sqlite)?;
    let dst = PostgresStore::open(url, 2)?;
    let started = std::time::Instant::now();
    let report = store::copy::sqlite_to_postgres(&src, &dst, args.replace)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.replaced_rows > 0 {
        println!(
            "deleted {} rows that were in PostgreSQL",
            report.replaced_rows
        );
    }
    let c = report.counts;
    println!(
        "copied {} into PostgreSQL in {:.1} s",
        args.from_sqlite.display(),
        started.elapsed().as_secs_f64()
    );
    println!("accounts          {}", c.accounts);
    println!("numbers           {}", c.numbers);
    println!("forwarding rules  {}", c.forwards);
    println!("session tokens    {}", c.sessions);
    println!("invite codes      {}", c.invites);
    println!("held-back numbers {}", c.held_numbers);
    println!("messages          {} ({} bytes)", c.mail, c.mail_bytes);
    println!("calls in history  {}", c.calls);
    println!(
        "checked: every row read back equal; {} message bodies compared byte for byte",
        report.bodies_compared
    );
    Ok(())
}

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if let Err(m) = auth::check_new_password(&pw) {
        bail!("{m} (the password is read from standard input, one line)");
    }
    Ok(pw)
}

fn user(state: Option<PathBuf>, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add { id, numbers } => {
            auth::check_account_id(&id).map_err(anyhow::Error::msg)?;
            let numbers = numbers
                .iter()
                .map(|n| number::canonicalize(n).map_err(|e| anyhow::anyhow!("number {n:?}: {e}")))
                .collect::<Result<Vec<_>>>()?;
            let pw = read_password()?;
            let hash = auth::hash_password(&pw)?;
            let (dir, store) = open(state)?;
            store.add_account(&id, &hash, &numbers, store::now_ms())?;
            println!("added account {id} with numbers {}", numbers.join(", "));
            notify(&dir, None);
        }
        UserCmd::Passwd { id } => {
            let pw = read_password()?;
            let hash = auth::hash_password(&pw)?;
            let (dir, store) = open(state)?;
            store.set_password(&id, &hash, None)?;
            println!("password of {id} changed; its sessions ended");
            notify(&dir, Some(&id));
        }
        UserCmd::Admin { id, off } => {
            let (_, store) = open(state)?;
            store.set_admin(&id, !off)?;
            if off {
                println!("{id} no longer uses the operator pages");
            } else {
                println!("{id} may use the operator pages");
            }
        }
        UserCmd::Rm { id } => {
            let (dir, store) = open(state)?;
            store.remove_account(&id)?;
            println!("removed account {id} with its numbers, rules and mail");
            notify(&dir, Some(&id));
        }
    }
    Ok(())
}

fn invite(state: Option<PathBuf>, cmd: InviteCmd) -> Result<()> {
    let (_, store) = open(state)?;
    match cmd {
        InviteCmd::Create { count } => {
            for _ in 0..count {
                let code = auth::new_invite_code();
                store.add_invite(&auth::token_hash(&code), store::now_ms())?;
                println!("{code}");
            }
        }
        InviteCmd::List { json } => {
            let invites = store.invites()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&invites)?);
            } else {
                println!("{:<20} {:<16} USED BY", "CODE HASH", "CREATED");
                for i in invites {
                    println!(
                        "{:<20} {:<16} {}",
                        &i.code_hash[..16.min(i.code_hash.len())],
                        i.created_ms / 1000,
                        i.used_by.as_deref().unwrap_or("-")
                    );
                }
            }
        }
    }
    Ok(())
}

fn forward_set(
    state: Option<PathBuf>,
    num: &str,
    rule: Option<(&str, ForwardWhenArg)>,
) -> Result<()> {
    let n = number::canonicalize(num).map_err(|e| anyhow::anyhow!("number {num:?}: {e}"))?;
    let rule = match rule {
        Some((to, when)) => Some(ForwardRule {
            when: match when {
                ForwardWhenArg::Always => ForwardWhen::Always,
                ForwardWhenArg::Unregistered => ForwardWhen::Unregistered,
                ForwardWhenArg::Busy => ForwardWhen::Busy,
                ForwardWhenArg::NoAnswer => ForwardWhen::NoAnswer,
            },
            to: number::canonicalize(to).map_err(|e| anyhow::anyhow!("number {to:?}: {e}"))?,
            on: true,
        }),
        None => None,
    };
    let (dir, store) = open(state)?;
    store.set_forward(&n, rule.as_ref(), store::now_ms())?;
    match &rule {
        Some(r) => println!("{n} forwards to {} ({})", r.to, r.when.as_str()),
        None => println!("{n} no longer forwards"),
    }
    notify(&dir, None);
    Ok(())
}

/// Send one typed request to the running directory; its reply, or its
/// error as an error.
async fn request(sock: &Path, req: &Request) -> Result<Value> {
    let req = serde_json::to_value(req).context("encoding the request")?;
    control::into_result(control::request(sock, &req, Duration::from_secs(10)).await?)
}

fn client(state: Option<PathBuf>, cmd: Cmd) -> Result<()> {
    let dir = state_dir(state)?;
    let sock = control::socket_path(&dir);
    if let Cmd::Events { json } = cmd {
        return runtime()?.block_on(print_events(&sock, json));
    }
    let (req, json_out) = match &cmd {
        Cmd::Status { json } => (Request::Status, *json),
        Cmd::Users { json } => (Request::Users, *json),
        Cmd::Bindings { json } => (Request::Bindings, *json),
        Cmd::Calls { json } => (Request::Calls, *json),
        Cmd::Cluster(ClusterCmd::Status { json }) => (Request::Cluster, *json),
        Cmd::Forward(ForwardCmd::List { json }) => (Request::Forwards, *json),
        Cmd::Mail(MailCmd::List { json }) => (Request::Mail, *json),
        _ => bail!("internal error: command dispatched to the wrong place"),
    };
    let reply = runtime()?.block_on(request(&sock, &req))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    print_human(&cmd, &reply);
    Ok(())
}

/// `events`: the directory's stream, in words or as JSON lines.
async fn print_events(sock: &Path, json: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    control::subscribe(sock, |ev| {
        let line = if json {
            ev.to_string()
        } else {
            match serde_json::from_value::<api::Event>(ev.clone()) {
                Ok(e) => e.describe(),
                // The socket's own notices (`dropped`) and events of a
                // newer directory, as they came.
                Err(_) => ev.to_string(),
            }
        };
        // Stop when whoever reads us has gone (a closed pipe).
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })
    .await
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn list<'a>(r: &'a Value, k: &str) -> impl Iterator<Item = &'a Value> {
    r.get(k).and_then(Value::as_array).into_iter().flatten()
}

/// A user's LOCKED column: for every address, else from which addresses.
fn locked(u: &Value) -> String {
    if let Some(x) = u.get("locked_for_s").and_then(Value::as_u64) {
        return format!("{x} s, every address");
    }
    let from: Vec<String> = list(u, "locked_from")
        .map(|l| format!("{} ({} s)", s(l, "address"), s(l, "for_s")))
        .collect();
    if from.is_empty() {
        "-".into()
    } else {
        format!("from {}", from.join(", "))
    }
}

fn print_human(cmd: &Cmd, r: &Value) {
    match cmd {
        Cmd::Status { .. } => {
            println!("listening       {}", s(r, "listen"));
            println!("fingerprint     {}", s(r, "fingerprint"));
            println!("state           {}", s(r, "state_dir"));
            println!("direct-connect  {}", s(r, "direct_connect"));
            println!("binding ttl     {} s", s(r, "binding_ttl_secs"));
            println!("endpoints       {}", s(r, "sessions"));
            println!(
                "connections     {} of at most {} ({} refused)",
                s(r, "connections"),
                s(r, "max_connections"),
                s(r, "connections_refused")
            );
            if let Some(l) = r.get("limits") {
                println!(
                    "per address     {} connections, {} handshakes at once, {} per second (exempt: {})",
                    s(l, "max_connections_per_address"),
                    s(l, "max_handshakes_per_address"),
                    s(l, "handshakes_per_address_per_sec"),
                    l.get("exempt").map(|e| e.to_string()).unwrap_or_default()
                );
            }
            println!(
                "registered      {} of {} numbers",
                s(r, "bindings"),
                s(r, "numbers")
            );
            println!("calls active    {}", s(r, "calls_active"));
            println!("mail waiting    {}", s(r, "mail_waiting"));
            if let Some(d) = r.get("disk") {
                let low = d.get("low").and_then(Value::as_bool) == Some(true);
                println!(
                    "disk            {} bytes free{}",
                    s(d, "free_bytes"),
                    if low { " (low)" } else { "" }
                );
            }
            if let Some(l) = r.get("logins") {
                println!(
                    "passwords       {} checked on {} threads, {} logins turned away busy",
                    s(l, "password_checks"),
                    s(l, "hashing_threads"),
                    s(l, "turned_away_busy")
                );
            }
            if let Some(relay) = r.get("relay") {
                println!(
                    "relay           {} bytes, {} packets relayed, {} active",
                    s(relay, "bytes"),
                    s(relay, "packets"),
                    s(relay, "active")
                );
            }
            if r.get("last_reload").is_some_and(|v| !v.is_null()) {
                println!("last reload     {}", s(r, "last_reload"));
            }
        }
        Cmd::Users { .. } => {
            println!(
                "{:<20} {:<30} {:<20} LOCKED",
                "ACCOUNT", "NUMBERS", "REGISTERED"
            );
            for u in list(r, "users") {
                println!(
                    "{:<20} {:<30} {:<20} {}",
                    s(u, "id"),
                    s(u, "numbers"),
                    s(u, "registered"),
                    locked(u)
                );
            }
        }
        Cmd::Bindings { .. } => {
            println!(
                "{:<24} {:<16} {:<22} {:<8} CANDIDATES",
                "NUMBER", "ACCOUNT", "OBSERVED", "EXPIRES"
            );
            for b in list(r, "bindings") {
                println!(
                    "{:<24} {:<16} {:<22} {:<8} {}",
                    s(b, "number"),
                    s(b, "account"),
                    s(b, "observed"),
                    format!("{}s", s(b, "expires_in_s")),
                    s(b, "candidates")
                );
            }
        }
        Cmd::Calls { .. } => {
            for c in list(r, "calls") {
                println!(
                    "call {} {} -> {} {} {}s {}{}",
                    s(c, "id"),
                    s(c, "from"),
                    s(c, "number"),
                    s(c, "state"),
                    s(c, "seconds"),
                    s(c, "policy"),
                    if c.get("relayed") == Some(&Value::Bool(true)) {
                        " (relayed)"
                    } else {
                        ""
                    }
                );
            }
        }
        Cmd::Cluster(_) => {
            println!("node            {}", s(r, "node"));
            println!("nats            {} {}", s(r, "nats"), s(r, "nats_server"));
            println!("postgres        {}", s(r, "postgres"));
            println!("bindings        {}", s(r, "bindings"));
            let now = keyline_directory::store::now_ms();
            for n in list(r, "nodes") {
                let at = n.get("at_ms").and_then(Value::as_i64).unwrap_or(now);
                println!(
                    "  {:<20} {:<22} sessions {:<6} bindings {:<6} remote {:<6} calls {:<4} elsewhere {:<4} seen {:.1}s ago",
                    s(n, "node"),
                    s(n, "listen"),
                    s(n, "sessions"),
                    s(n, "bindings"),
                    s(n, "remote_bindings"),
                    s(n, "calls"),
                    s(n, "calls_elsewhere"),
                    (now - at).max(0) as f64 / 1000.0
                );
            }
        }
        Cmd::Forward(_) => {
            for f in list(r, "forwards") {
                println!("{} -> {} ({})", s(f, "number"), s(f, "to"), s(f, "when"));
            }
        }
        Cmd::Mail(_) => {
            for m in list(r, "mail") {
                println!(
                    "{} {} -> {} {} {} bytes at {}",
                    s(m, "id"),
                    s(m, "from"),
                    s(m, "to"),
                    s(m, "kind"),
                    s(m, "size"),
                    s(m, "at_ms")
                );
            }
        }
        _ => {}
    }
}
