//! The `directory` suite: the real `keyline-directory` on loopback, loaded
//! by N concurrent QUIC clients on one endpoint of this process, each with
//! its own identity and connection, speaking the protocol on its control
//! stream with the client library's codec and batching (`rawdir`).
//!
//! - **Registrations/s**: each client logs in once (one argon2 login per
//!   account, the account's other clients resume with its token), binds
//!   its own number, then re-registers it over and over, `depth` requests
//!   in flight per client. A registration counts when the directory has
//!   answered it (`Registered`). What a registration writes is what the
//!   server writes today: nothing on disk — bindings live in the routing
//!   core's memory and die with the QUIC session that made them; the
//!   accounts, numbers, session tokens, forwarding rules and mail are what
//!   SQLite keeps. The JSON says so next to the figure.
//! - **Look-ups/s**: the same clients look up the registered numbers
//!   (LOOKUP → FOUND to the caller and EXPECT to the number's endpoint).
//! - **Memory per binding** (clients: `DirClient`, the library gateways
//!   and terminals use): a second directory with `bindings` numbers
//!   (accounts of `numbers_per_account` numbers each, as an office gateway
//!   registering its extensions would have, created with `keyline-directory
//!   user add` before it starts). The accounts log in once; the directory
//!   is restarted and the clients resume with their tokens, so that no
//!   argon2 work (19 MiB per verification) is freed inside the process
//!   being measured, where the allocator would reuse it for bindings. Then
//!   VmRSS before and after every number is registered.
//!
//! CPU: the directory's (utime + stime from `/proc/PID/stat`) and this
//! load generator's (getrusage) over the measured window, so that the
//! figures can be read for a machine where the two do not share cores.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_dirclient::client::{parse_number, DirClient};
use keyline_net::Identity;
use serde_json::{json, Value};

use crate::daemons::{poll, tail, Control, Daemon};
use crate::rawdir::{self, Login, Op, RawClient};
use crate::util::{self, round, Scratch, Summary};
use crate::weblogin::{self, WebLoad};

pub(crate) const PW: &str = "keyline bench password";

/// How much of the suite to run.
#[derive(Debug, Clone)]
pub struct DirConfig {
    /// Load levels: concurrent QUIC clients (one endpoint and identity
    /// each) and requests in flight per client.
    pub levels: Vec<(usize, usize)>,
    /// Clients sharing one account (each binds its own number of it).
    pub clients_per_account: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Bindings for the memory figure.
    pub bindings: usize,
    /// Numbers per account in the memory run.
    pub numbers_per_account: usize,
    /// Logins a second on the web site during the registrations beside
    /// it ([`weblogin`]).
    pub web_rate: f64,
    /// Accounts made for the web logins, and the source addresses they
    /// come from, so that the login limiter is not what is measured.
    pub web_accounts: usize,
    pub web_addresses: usize,
}

/// The directory's CPU time so far (all threads), from `/proc/PID/stat`.
pub(crate) fn proc_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    let ticks = tick(11)? + tick(12)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// `keyline-directory --state STATE user add ID --number N…`, password on stdin.
pub(crate) fn add_account(bin: &Path, state: &Path, id: &str, numbers: &[String]) -> Result<()> {
    add_account_in(bin, state, None, id, numbers)
}

/// [`add_account`] with the configuration in folder `etc` when given (its
/// `directory.toml` may name a PostgreSQL store).
fn add_account_in(
    bin: &Path,
    state: &Path,
    etc: Option<&Path>,
    id: &str,
    numbers: &[String],
) -> Result<()> {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.arg("--state")
        .arg(state)
        .args(["user", "add", id])
        .env("KEYLINE_LOG", "warn");
    if let Some(etc) = etc {
        cmd.env("CONFIGURATION_DIRECTORY", etc);
    }
    for n in numbers {
        cmd.args(["--number", n]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} user add", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{PW}").context("writing the password to user add")?;
    }
    let out = child.wait_with_output().context("waiting for user add")?;
    if !out.status.success() {
        bail!(
            "user add {id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Add `accounts` accounts with their numbers, two `user add` at a time.
fn add_accounts(bin: &Path, state: &Path, accounts: &[(String, Vec<String>)]) -> Result<()> {
    add_accounts_in(bin, state, None, accounts)
}

/// [`add_accounts`] with the configuration in folder `etc` when given.
pub(crate) fn add_accounts_in(
    bin: &Path,
    state: &Path,
    etc: Option<&Path>,
    accounts: &[(String, Vec<String>)],
) -> Result<()> {
    // The first creates the database; the rest may run side by side.
    let Some((first, rest)) = accounts.split_first() else {
        return Ok(());
    };
    add_account_in(bin, state, etc, &first.0, &first.1)?;
    for pair in rest.chunks(2) {
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = pair
                .iter()
                .map(|(id, ns)| s.spawn(move || add_account_in(bin, state, etc, id, ns)))
                .collect();
            for h in hs {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a user add thread panicked"))??;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Start `keyline-directory serve` on loopback; its control connection
/// and QUIC address.
pub(crate) fn start_directory(bin: &Path, state: &Path) -> Result<(Daemon, Control, SocketAddr)> {
    start_directory_with(bin, state, &[])
}

/// [`start_directory`] with more `serve` options.
pub(crate) fn start_directory_with(
    bin: &Path,
    state: &Path,
    more: &[&str],
) -> Result<(Daemon, Control, SocketAddr)> {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(more);
    let mut d = Daemon::start(bin, state, &args, &[])?;
    let mut ctl = Control::connect(&d.control(), Duration::from_secs(15))
        .with_context(|| format!("the directory did not start:\n{}", tail(&d.log)))?;
    let addr = poll(
        "the directory's listening address",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            d.check_alive()?;
            Ok(ctl.status()?["listen"]
                .as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok()))
        },
    )?;
    Ok((d, ctl, addr))
}

fn status_count(ctl: &mut Control, key: &str) -> Result<u64> {
    ctl.status()?[key]
        .as_u64()
        .with_context(|| format!("the directory's status has no {key}"))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")
}

/// A connected client on an endpoint of its own; its events are drained
/// (a look-up sends EXPECT to the number's endpoint).
async fn connect(dir: SocketAddr, name: &str) -> Result<(quinn::Endpoint, SocketAddr, DirClient)> {
    let ep = endpoint(name)?;
    let (addr, c) = connect_on(&ep, dir, name).await?;
    Ok((ep, addr, c))
}

pub(crate) fn endpoint(name: &str) -> Result<quinn::Endpoint> {
    let id = Identity::generate(name)?;
    keyline_net::make_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &id)
}

/// A connected client with an identity of its own on `ep`.
async fn connect_on(
    ep: &quinn::Endpoint,
    dir: SocketAddr,
    name: &str,
) -> Result<(SocketAddr, DirClient)> {
    let id = Identity::generate(name)?;
    let addr = ep.local_addr().context("the client endpoint's address")?;
    let (c, mut events) = DirClient::connect(ep, &id, dir, None)
        .await
        .context("connecting to the directory")?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok((addr, c))
}

/// Password logins under way at once while the clients come online: the
/// directory's login limiter lets one address have at most 20 attempts in
/// flight (its hashing pool checks 4 at a time) and refuses the rest.
const LOGINS_AT_ONCE: usize = 8;

/// Connect `accounts` × their numbers as load clients on `ep`: the first
/// client of an account logs in, the others resume with its token; each
/// binds its own number.
pub(crate) async fn online(
    ep: &quinn::Endpoint,
    dir: SocketAddr,
    accounts: &[(String, Vec<String>)],
) -> Result<Vec<RawClient>> {
    online_with(ep, dir, accounts, &[]).await
}

/// [`online`], resuming with `tokens` (one per account, in order, as
/// [`account_tokens`] gives them) instead of logging in with the
/// password: no password is checked in the directory meanwhile.
pub(crate) async fn online_with(
    ep: &quinn::Endpoint,
    dir: SocketAddr,
    accounts: &[(String, Vec<String>)],
    tokens: &[String],
) -> Result<Vec<RawClient>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(LOGINS_AT_ONCE));
    let mut tasks = Vec::new();
    for (i, (id, numbers)) in accounts.iter().enumerate() {
        let (id, numbers, ep, gate) = (id.clone(), numbers.clone(), ep.clone(), gate.clone());
        let given = tokens.get(i).cloned();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let mut out = Vec::new();
            let mut token: Option<String> = given;
            for n in &numbers {
                let login = match &token {
                    None => Login::Password(PW),
                    Some(t) => Login::Token(t),
                };
                let (c, t) = RawClient::online(&ep, dir, &id, login, n)
                    .await
                    .with_context(|| format!("bringing {n} online"))?;
                token.get_or_insert(t);
                out.push(c);
            }
            anyhow::Ok(out)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.extend(t.await.context("a client task failed")??);
    }
    Ok(clients)
}

/// A session token for each of `accounts` (each logs in once with its
/// password, binding its first number until it closes), for
/// [`online_with`].
pub(crate) async fn account_tokens(
    ep: &quinn::Endpoint,
    dir: SocketAddr,
    accounts: &[(String, Vec<String>)],
) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for (id, numbers) in accounts {
        let first = numbers.first().context("an account without numbers")?;
        let (c, token) = RawClient::online(ep, dir, id, Login::Password(PW), first)
            .await
            .with_context(|| format!("logging {id} in"))?;
        c.close();
        tokens.push(token);
    }
    Ok(tokens)
}

/// Load the directory with `op` from every client, `depth` in flight
/// each; the figures of the measured window, and the window. The clients
/// come back.
pub(crate) async fn load(
    clients: Vec<RawClient>,
    targets: &Arc<Vec<String>>,
    op: Op,
    depth: usize,
    cfg: &DirConfig,
    dir_pid: u32,
) -> Result<(Vec<RawClient>, Value, (Instant, Instant))> {
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let n_clients = clients.len();
    let tasks = rawdir::load_all(clients, op, depth, targets.clone(), stop.clone(), base);
    tokio::time::sleep(cfg.warmup).await;
    eprintln!("keyline-bench directory: measuring {op:?} at {n_clients} clients x {depth}");
    let start = Instant::now();
    let t0 = (start - base).as_secs_f64();
    let (dcpu0, scpu0) = (proc_cpu(dir_pid)?, util::self_cpu()?);
    tokio::time::sleep(cfg.measure).await;
    let end = Instant::now();
    let t1 = (end - base).as_secs_f64();
    let (dcpu1, scpu1) = (proc_cpu(dir_pid)?, util::self_cpu()?);
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<f64> = Vec::new();
    let (mut errors, mut first_error, mut total) = (0u64, None, 0u64);
    let mut back = Vec::with_capacity(n_clients);
    for t in tasks {
        let (c, d) = t.await.context("a load task failed")?;
        back.push(c);
        let d = d.context("a load client failed")?;
        total += d.at.len() as u64;
        errors += d.errors;
        if first_error.is_none() {
            first_error = d.first_error;
        }
        lat.extend(
            d.at.iter()
                .filter(|(at, _)| (t0..t1).contains(at))
                .map(|&(_, us)| f64::from(us)),
        );
    }
    let n = lat.len() as f64;
    let secs = t1 - t0;
    let s = Summary::of(&mut lat);
    let dcpu = (dcpu1 - dcpu0).as_secs_f64();
    let scpu = (scpu1.saturating_sub(scpu0)).as_secs_f64();
    let dir_us_per_op = if n > 0.0 { dcpu * 1e6 / n } else { 0.0 };
    Ok((
        back,
        json!({
            "clients": n_clients,
            "in_flight_per_client": depth.max(1),
            "measured_s": round(secs, 2),
            "answered": n,
            "answered_total": total,
            "errors": errors,
            "first_error": first_error,
            "per_s": round(n / secs, 0),
            "latency_us": {"p50": round(s.p50, 0), "p99": round(s.p99, 0), "max": round(s.max, 0)},
            "directory_cpu_cores": round(dcpu / secs, 2),
            "directory_cpu_us_per_op": round(dir_us_per_op, 2),
            "generator_cpu_cores": round(scpu / secs, 2),
            "generator_cpu_us_per_op": round(if n > 0.0 { scpu * 1e6 / n } else { 0.0 }, 2),
            // What the directory alone would do with two cores, at the CPU
            // cost per request it showed here (a projection, not a measure).
            "projected_per_s_directory_alone_2_cores": round(
                if dir_us_per_op > 0.0 { 2e6 / dir_us_per_op } else { 0.0 }, 0),
        }),
        (start, end),
    ))
}

pub(crate) fn accounts_for(
    prefix: &str,
    first: u64,
    count: usize,
    per_account: usize,
) -> Vec<(String, Vec<String>)> {
    let per = per_account.max(1);
    let mut out = Vec::new();
    let mut k = 0usize;
    while k < count {
        let m = per.min(count - k);
        let numbers = (k..k + m)
            .map(|i| format!("{}", first + i as u64))
            .collect();
        out.push((format!("{prefix}{}", out.len()), numbers));
        k += m;
    }
    out
}

/// Throughput: registrations/s and look-ups/s.
fn run_load(bin: &Path, dir: &Scratch, cfg: &DirConfig) -> Result<Value> {
    let state = dir.join("load");
    let most = cfg.levels.iter().map(|l| l.0).max().unwrap_or(1).max(1);
    let accounts = accounts_for("load", 7_000_000, most, cfg.clients_per_account);
    let web_accounts = accounts_for("web", 9_100_000, cfg.web_accounts.max(1), 1);
    let t = Instant::now();
    let mut every = accounts.clone();
    every.extend(web_accounts.iter().cloned());
    add_accounts(bin, &state, &every)?;
    let accounts_s = t.elapsed().as_secs_f64();
    let (mut d, mut ctl, addr) = start_directory(bin, &state)?;
    let pid = d.pid()?;
    let (site, fingerprint) = site_of(&mut d, &mut ctl)?;
    let web_load = WebLoad {
        site,
        fingerprint,
        accounts: web_accounts.iter().map(|(id, _)| id.clone()).collect(),
        password: PW.to_string(),
        rate: cfg.web_rate,
        addresses: cfg.web_addresses,
        timeout: Duration::from_secs(10),
    };
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = util::rss_kib(pid)?;
    let rt = runtime()?;
    let res = rt.block_on(async {
        let t = Instant::now();
        let ep = endpoint("load")?;
        let mut clients = online(&ep, addr, &accounts).await?;
        let online_s = t.elapsed().as_secs_f64();
        let targets: Arc<Vec<String>> =
            Arc::new(clients.iter().map(|c| c.number.clone()).collect());
        let mut levels = Vec::new();
        for &(n, depth) in &cfg.levels {
            let n = n.clamp(1, clients.len());
            let rest = clients.split_off(n);
            let (some, registrations, _) =
                load(clients, &targets, Op::Register, depth, cfg, pid).await?;
            let (mut some, lookups, _) =
                load(some, &targets, Op::Lookup, depth, cfg, pid).await?;
            levels.push(json!({
                "clients": n,
                "in_flight_per_client": depth,
                "registrations": registrations,
                "lookups": lookups,
            }));
            some.extend(rest);
            clients = some;
        }
        // Registrations alone and beside web logins, at the level where
        // registrations went fastest, one run right after the other.
        let best = best_of(&levels, "registrations");
        let n = best["clients"].as_u64().unwrap_or(1) as usize;
        let depth = best["in_flight_per_client"].as_u64().unwrap_or(1) as usize;
        let n = n.clamp(1, clients.len());
        let rest = clients.split_off(n);
        let (some, alone, _) = load(clients, &targets, Op::Register, depth, cfg, pid).await?;
        eprintln!(
            "keyline-bench directory: {:.0} web logins/s beside the registrations",
            web_load.rate
        );
        let web = weblogin::start(&web_load)?;
        let (mut some, loaded, window) =
            load(some, &targets, Op::Register, depth, cfg, pid).await?;
        let pages = web.finish(window, &web_load).await?;
        some.extend(rest);
        for c in &some {
            c.close();
        }
        let ratio = match (alone["per_s"].as_f64(), loaded["per_s"].as_f64()) {
            (Some(a), Some(b)) if a > 0.0 => round(b / a, 3),
            _ => 0.0,
        };
        let beside = json!({
            "note": "registrations at the level where they went fastest, alone and then while visits to the \
                     directory's web site log in at a steady rate (open loop: a new TLS connection, GET /login \
                     for the CSRF token and its cookie, POST /login with the right password, GET /account); \
                     accounts made for the logins, each always from the same one of several 127.0.0.x \
                     addresses, so that the login limiter (5 attempts in flight per account and address, 20 \
                     per address) refuses nothing; refused_by_limiter counts what it did refuse",
            "clients": n,
            "in_flight_per_client": depth,
            "alone": alone,
            "with_web_logins": loaded,
            "ratio": ratio,
            "web": pages,
        });
        anyhow::Ok((levels, online_s, beside))
    });
    let (levels, online_s, beside) = res?;
    d.check_alive()?;
    let rss_after = util::rss_kib(pid)?;
    let bindings = status_count(&mut ctl, "bindings").unwrap_or(0);
    drop(rt);
    d.stop();
    let best = |op: &str| best_of(&levels, op);
    Ok(json!({
        "accounts": accounts.len(),
        "clients": most,
        "accounts_created_s": round(accounts_s, 2),
        "clients_online_s": round(online_s, 2),
        "directory_rss_idle_kib": rss_idle,
        "directory_rss_after_kib": rss_after,
        "bindings_at_end": bindings,
        "best_registrations": best("registrations"),
        "best_lookups": best("lookups"),
        "levels": levels,
        "registrations_beside_web_logins": beside,
    }))
}

/// The best level of `op` (`registrations`, `lookups`), with its clients
/// and requests in flight. A level whose requests failed (an endpoint
/// dropped for not reading its control stream, so that look-ups of its
/// number fail fast) does not count while a level without errors exists.
fn best_of(levels: &[Value], op: &str) -> Value {
    let clean = |l: &&Value| l[op]["errors"].as_u64() == Some(0);
    let pool: Vec<&Value> = if levels.iter().any(|l| clean(&l)) {
        levels.iter().filter(clean).collect()
    } else {
        levels.iter().collect()
    };
    pool.into_iter()
        .max_by(|a, b| {
            let x = |v: &Value| v[op]["per_s"].as_f64().unwrap_or(0.0);
            x(a).total_cmp(&x(b))
        })
        .map(|l| {
            let mut v = l[op].clone();
            v["clients"] = l["clients"].clone();
            v
        })
        .unwrap_or(Value::Null)
}

/// The directory's web site (`https://ADDR/` in its status) and its
/// certificate fingerprint.
fn site_of(d: &mut Daemon, ctl: &mut Control) -> Result<(SocketAddr, String)> {
    poll(
        "the directory's web site",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            d.check_alive()?;
            let s = ctl.status()?;
            let site = s["web"]
                .as_str()
                .and_then(|u| u.strip_prefix("https://"))
                .and_then(|u| u.trim_end_matches('/').parse::<SocketAddr>().ok());
            let fp = s["fingerprint"].as_str().map(str::to_string);
            Ok(site.zip(fp))
        },
    )
}

/// Memory per binding at `cfg.bindings` bindings.
fn run_memory(bin: &Path, dir: &Scratch, cfg: &DirConfig) -> Result<Value> {
    let state = dir.join("mem");
    let accounts = accounts_for(
        "office",
        80_000_000,
        cfg.bindings.max(1),
        cfg.numbers_per_account,
    );
    let t = Instant::now();
    add_accounts(bin, &state, &accounts)?;
    let accounts_s = t.elapsed().as_secs_f64();

    // First run: log every account in once, for its token.
    let (mut d, _ctl, addr) = start_directory(bin, &state)?;
    let rt = runtime()?;
    let tokens: Vec<String> = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(LOGINS_AT_ONCE));
        let mut tasks = Vec::new();
        for (i, (id, _)) in accounts.iter().enumerate() {
            let (id, gate) = (id.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let (_ep, _addr, c) = connect(addr, &format!("login{i}")).await?;
                let s = c.login(&id, PW).await.context("login")?;
                c.close();
                anyhow::Ok(s.token)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.context("a login task failed")??);
        }
        anyhow::Ok(out)
    })?;
    d.check_alive()?;
    d.stop();

    // Second run: the process being measured.
    let (mut d, mut ctl, addr) = start_directory(bin, &state)?;
    let pid = d.pid()?;
    let settle = Duration::from_millis(500);
    std::thread::sleep(settle);
    let rss_idle = util::rss_kib(pid)?;
    let numbers = status_count(&mut ctl, "numbers")?;
    let clients = rt.block_on(async {
        let mut out = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let (ep, a, c) = connect(addr, &format!("office{i}")).await?;
            c.resume(t).await.context("resume")?;
            out.push((ep, a, c));
        }
        anyhow::Ok(out)
    })?;
    std::thread::sleep(settle);
    let rss_sessions = util::rss_kib(pid)?;
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (_, a, c) in &clients {
            let (a, c) = (*a, c.clone());
            tasks.push(tokio::spawn(async move {
                c.register(&[], vec![a]).await.map(|r| r.numbers.len())
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t
                .await
                .context("a register task failed")?
                .context("register")?;
        }
        anyhow::Ok(n)
    })?;
    let register_s = t.elapsed().as_secs_f64();
    let bindings = poll(
        "every number to be bound",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let b = status_count(&mut ctl, "bindings")?;
            Ok((b as usize >= cfg.bindings).then_some(b))
        },
    )?;
    std::thread::sleep(settle);
    let rss_bound = util::rss_kib(pid)?;
    // The bindings are real: a few look-ups find them.
    let found = rt.block_on(async {
        let (_, _, c) = clients.first().context("no clients")?;
        let mut ok = 0;
        for (_, ns) in accounts.iter().step_by((accounts.len() / 8).max(1)) {
            if let Some(n) = ns.last() {
                c.lookup(&parse_number(n)?)
                    .await
                    .with_context(|| format!("looking up {n}"))?;
                ok += 1;
            }
        }
        anyhow::Ok(ok)
    })?;
    for (_, _, c) in &clients {
        c.close();
    }
    d.check_alive()?;
    drop(clients);
    drop(rt);
    d.stop();
    let delta = rss_bound.saturating_sub(rss_sessions);
    Ok(json!({
        "note": "accounts of numbers_per_account numbers each (an office gateway registering its extensions); \
                 sessions resumed with tokens after a restart so that no argon2 memory is freed inside the \
                 measured process; per binding = VmRSS after every number is registered minus before, \
                 divided by the bindings",
        "accounts": accounts.len(),
        "numbers_per_account": cfg.numbers_per_account,
        "accounts_created_s": round(accounts_s, 1),
        "numbers": numbers,
        "bindings": bindings,
        "register_all_s": round(register_s, 2),
        "lookups_checked": found,
        "rss_idle_kib": rss_idle,
        "rss_sessions_kib": rss_sessions,
        "rss_bound_kib": rss_bound,
        "rss_per_binding_bytes": round(delta as f64 * 1024.0 / bindings.max(1) as f64, 0),
        "rss_per_session_kib": round(
            rss_sessions.saturating_sub(rss_idle) as f64 / accounts.len().max(1) as f64, 1),
    }))
}

/// Run the suite.
pub fn run(bin: &Path, cfg: &DirConfig) -> Result<Value> {
    let mut scratch = Scratch::new("directory")?;
    let res = run_in(bin, cfg, &scratch);
    if res.is_err() {
        scratch.keep = true;
    }
    res
}

fn run_in(bin: &Path, cfg: &DirConfig, dir: &Scratch) -> Result<Value> {
    eprintln!(
        "keyline-bench directory: clients x in flight {:?}, {:.1} s per figure; memory at {} bindings",
        cfg.levels,
        cfg.measure.as_secs_f64(),
        cfg.bindings
    );
    let load = run_load(bin, dir, cfg)?;
    let memory = run_memory(bin, dir, cfg)?;
    let per_number = {
        let small = load["directory_rss_idle_kib"].as_f64().unwrap_or(0.0);
        let big = memory["rss_idle_kib"].as_f64().unwrap_or(0.0);
        let n = memory["numbers"].as_f64().unwrap_or(0.0)
            - load["accounts"].as_f64().unwrap_or(0.0) * cfg.clients_per_account as f64;
        if n > 0.0 {
            round((big - small).max(0.0) * 1024.0 / n, 0)
        } else {
            0.0
        }
    };
    Ok(json!({
        "note": "real keyline-directory on 127.0.0.1; load clients in this process on one quinn endpoint, each \
                 with its own identity and connection, speaking the protocol on their streams (bench/src/rawdir.rs), \
                 sharing the machine's cores with the directory; the memory run's clients are DirClient",
        "persisted": "a registration writes nothing to disk today: bindings are kept in the routing core's \
                      memory, tied to the QUIC session that made them (server.rs routes REGISTER to the hub \
                      without a store call); SQLite keeps accounts, numbers, tokens, rules and mail",
        "registrations_per_s": load["best_registrations"]["per_s"],
        "registrations_beside_web_logins_ratio": load["registrations_beside_web_logins"]["ratio"],
        "lookups_per_s": load["best_lookups"]["per_s"],
        "rss_per_binding_bytes": memory["rss_per_binding_bytes"],
        "rss_per_number_loaded_bytes": per_number,
        "load": load,
        "memory": memory,
    }))
}
