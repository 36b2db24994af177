//! The `cluster` suite: a directory node of a cluster (a real PostgreSQL
//! and a real `nats-server` with JetStream, started here) against the
//! embedded single node (SQLite), loaded the same way in the same run.
//!
//! - **Registrations/s and look-ups/s** with the `directory` suite's load
//!   clients (`rawdir`) at one level, and the directory's CPU per request:
//!   on node 1 of a two-node cluster, then on the single node. In cluster
//!   mode each registration also writes the binding to the NATS bucket (on
//!   the node's link task) and the other node takes it in; the node's CPU
//!   figure includes that, the other node's and NATS's are given beside.
//! - **Dial → ring at the callee**: a caller on node 1 calls a callee on
//!   node 2, which turns the call down as soon as it rings; the time from
//!   the dial to the ring reaching the callee, p50/p99. The same with both
//!   on the single node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_dirclient::client::{parse_number, CallOptions, DirClient, Event};
use keyline_net::Identity;
use keyline_tests::pg::PgCluster;
use serde_json::{json, Value};

use crate::daemons::{poll, Control, Daemon};
use crate::directory::{
    account_tokens, accounts_for, add_accounts_in, endpoint, load, online, online_with, proc_cpu,
    runtime, start_directory_with, DirConfig, PW,
};
use crate::rawdir::Op;
use crate::util::{round, rss_kib, Scratch, Summary};

/// How much of the suite to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Load clients and requests in flight per client.
    pub clients: usize,
    pub depth: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Calls for the dial → ring figure, on each setting.
    pub dials: usize,
    /// Idle registered terminals for the memory and keep-alive figures,
    /// and how long their keep-alives are measured.
    pub idle: usize,
    pub idle_window: Duration,
}

/// A `nats-server` with JetStream on loopback; killed when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    fn start(dir: &Path) -> Result<Nats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("a free TCP port for NATS")?
            .port();
        let store = dir.join("nats");
        std::fs::create_dir_all(&store).context("the NATS folder")?;
        let log = std::fs::File::create(dir.join("nats.log")).context("the NATS log")?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "starting nats-server (the Debian nats-server package: \
                 scripts/install-deps.sh --test installs it)",
            )?;
        let nats = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        poll(
            "nats-server to listen",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(std::net::TcpStream::connect(("127.0.0.1", port)).ok()),
        )?;
        Ok(nats)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder holding `directory.toml` with `body`; what `--config` and
/// `CONFIGURATION_DIRECTORY` are given.
fn config(dir: &Scratch, name: &str, body: &str) -> Result<PathBuf> {
    let etc = dir.join(&format!("{name}-etc"));
    std::fs::create_dir_all(&etc).context("a config folder")?;
    std::fs::write(etc.join("directory.toml"), body).context("writing a config")?;
    Ok(etc)
}

fn start_node(bin: &Path, state: &Path, etc: &Path) -> Result<(Daemon, Control, SocketAddr)> {
    let conf = etc.join("directory.toml");
    let conf = conf.to_str().context("a config path that is not UTF-8")?;
    start_directory_with(bin, state, &["--config", conf])
}

/// Registrations/s and look-ups/s on the directory at `addr` (process
/// `pid`), with `accounts` online.
async fn throughput(
    addr: SocketAddr,
    pid: u32,
    accounts: &[(String, Vec<String>)],
    cfg: &ClusterConfig,
) -> Result<(Value, Value)> {
    let ep = endpoint("cluster-load")?;
    let clients = online(&ep, addr, accounts).await?;
    let targets: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.number.clone()).collect());
    let dcfg = DirConfig {
        levels: vec![(cfg.clients, cfg.depth)],
        clients_per_account: 1,
        warmup: cfg.warmup,
        measure: cfg.measure,
        bindings: 0,
        numbers_per_account: 1,
        web_rate: 0.0,
        web_accounts: 0,
        web_addresses: 0,
    };
    let (clients, reg, _) = load(clients, &targets, Op::Register, cfg.depth, &dcfg, pid).await?;
    let (clients, look, _) = load(clients, &targets, Op::Lookup, cfg.depth, &dcfg, pid).await?;
    for c in &clients {
        c.close();
    }
    Ok((reg, look))
}

/// A logged-in client with `number` registered at the directory `dir`,
/// and its events.
async fn endpoint_of(
    dir: SocketAddr,
    account: &str,
    number: &str,
) -> Result<(
    quinn::Endpoint,
    DirClient,
    tokio::sync::mpsc::Receiver<Event>,
)> {
    let ep = endpoint(account)?;
    let id = Identity::generate(account)?;
    let me = ep.local_addr().context("the client's address")?;
    let (c, events) = DirClient::connect(&ep, &id, dir, None)
        .await
        .context("connecting to the directory")?;
    c.login(account, PW).await.context("logging in")?;
    c.register(&[parse_number(number)?], vec![me])
        .await
        .context("registering")?;
    Ok((ep, c, events))
}

/// The caller and the callee of the dial → ring figure: account, number.
const CALLER: (&str, &str) = ("dial-a", "7299001");
const CALLEE: (&str, &str) = ("dial-b", "7299002");

/// Dial → ring at the callee, `n` times: [`CALLER`] at `a_dir` calls
/// [`CALLEE`] registered at `b_dir`, which turns each call down as it
/// rings.
async fn dial_to_ring(a_dir: SocketAddr, b_dir: SocketAddr, n: usize) -> Result<Value> {
    let (a, b) = (CALLER, CALLEE);
    let (_ea, caller, mut a_events) = endpoint_of(a_dir, a.0, a.1).await?;
    tokio::spawn(async move { while a_events.recv().await.is_some() {} });
    let (_eb, callee, mut b_events) = endpoint_of(b_dir, b.0, b.1).await?;
    // Until the callee's binding has reached the caller's node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let callee_number = parse_number(b.1)?;
    while caller.lookup(&callee_number).await.is_err() {
        if Instant::now() > deadline {
            bail!("{} never became known at {a_dir}", b.1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, number) = (caller.clone(), callee_number.clone());
        let t0 = Instant::now();
        let call = tokio::spawn(async move { c.call(&number, CallOptions::default()).await });
        let ring = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match b_events.recv().await {
                    Some(Event::Ring(inc)) => return Ok(inc.call),
                    Some(_) => continue,
                    None => bail!("the callee's connection closed"),
                }
            }
        })
        .await
        .context("the call never rang")??;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        callee.reject(ring).await.context("turning the call down")?;
        // The caller hears the refusal before the next dial.
        let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
    }
    caller.close();
    callee.close();
    let s = Summary::of(&mut ms);
    Ok(json!({
        "calls": s.n,
        "p50_ms": round(s.p50, 3),
        "p99_ms": round(s.p99, 3),
        "max_ms": round(s.max, 3),
    }))
}

/// Memory and CPU of `accounts`' numbers online at the directory at
/// `addr` (process `pid`), each its own connection and registration,
/// idle: VmRSS before and after, and the directory's CPU over `window`
/// while they only keep their connections alive.
async fn idle_terminals(
    addr: SocketAddr,
    pid: u32,
    accounts: &[(String, Vec<String>)],
    window: Duration,
) -> Result<Value> {
    let n: usize = accounts.iter().map(|(_, ns)| ns.len()).sum();
    let ep = endpoint("cluster-idle")?;
    // The password checks first, outside the figure: argon2's memory
    // (19 MiB a check) stays with the allocator afterwards, and 2,000
    // terminals' share of it would read as 10 KiB each.
    let tokens = account_tokens(&ep, addr, accounts).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let clients = online_with(&ep, addr, accounts, &tokens).await?;
    // Let the log-ins' buffers go and the first keep-alives pass.
    tokio::time::sleep(window.min(Duration::from_secs(2))).await;
    let after = rss_kib(pid)?;
    let cpu0 = proc_cpu(pid)?;
    tokio::time::sleep(window).await;
    let cpu = (proc_cpu(pid)? - cpu0).as_secs_f64();
    for c in &clients {
        c.close();
    }
    let per = |x: f64| if n > 0 { x / n as f64 } else { 0.0 };
    Ok(json!({
        "terminals": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_terminal_kib": round(per(after.saturating_sub(before) as f64), 1),
        "idle_cpu_cores": round(cpu / window.as_secs_f64(), 3),
        "idle_cpu_us_per_terminal_per_s": round(per(cpu * 1e6 / window.as_secs_f64()), 2),
    }))
}

/// Run the suite.
pub fn run(bin: &Path, cfg: &ClusterConfig) -> Result<Value> {
    let mut scratch = Scratch::new("cluster")?;
    let res = run_in(bin, cfg, &scratch);
    if res.is_err() {
        scratch.keep = true;
    }
    res
}

fn run_in(bin: &Path, cfg: &ClusterConfig, dir: &Scratch) -> Result<Value> {
    eprintln!(
        "keyline-bench cluster: {} clients x {} in flight, {:.1} s per figure, {} dials",
        cfg.clients,
        cfg.depth,
        cfg.measure.as_secs_f64(),
        cfg.dials
    );
    // The kit panics with its reason (printed) when PostgreSQL cannot run.
    let pg = std::panic::catch_unwind(|| {
        let pg = PgCluster::start();
        pg.create_db("bench");
        pg
    })
    .map_err(|_| anyhow::anyhow!("PostgreSQL could not be started (why is printed above)"))?;
    let nats = Nats::start(&dir.join("nats-run"))?;
    let url = pg.url("bench");
    let node_conf = |name: &str| {
        config(
            dir,
            name,
            &format!(
                "[store]\npostgres = \"{url}\"\npool_size = 8\n[web]\nenabled = false\n\
                 [cluster]\nnats = \"{}\"\nnode = \"{name}\"\n",
                nats.url
            ),
        )
    };
    let (etc1, etc2) = (node_conf("n1")?, node_conf("n2")?);
    let etc_single = config(dir, "single", "[web]\nenabled = false\n")?;

    let mut accounts = accounts_for("load", 7_200_000, cfg.clients.max(1), 1);
    for (id, number) in [CALLER, CALLEE] {
        accounts.push((id.into(), vec![number.into()]));
    }
    let idle_accounts = accounts_for("idle", 7_400_000, cfg.idle.max(1), 500);
    let load_n = accounts.len();
    accounts.extend(idle_accounts.iter().cloned());
    let (s1, s2, ss) = (dir.join("n1"), dir.join("n2"), dir.join("single"));
    let t = Instant::now();
    add_accounts_in(bin, &s1, Some(&etc1), &accounts)?;
    let accounts_pg_s = t.elapsed().as_secs_f64();
    add_accounts_in(bin, &ss, Some(&etc_single), &accounts)?;
    let load_accounts = &accounts[..load_n - 2];

    let (mut d1, _c1, a1) = start_node(bin, &s1, &etc1)?;
    // The second node serves the first one's certificate, as a cluster's
    // nodes do.
    for f in ["cert.der", "key.der"] {
        std::fs::create_dir_all(&s2).context("the second node's folder")?;
        std::fs::copy(s1.join(f), s2.join(f)).context("copying the identity")?;
    }
    let (mut d2, _c2, a2) = start_node(bin, &s2, &etc2)?;
    let (p1, p2) = (d1.pid()?, d2.pid()?);
    let rt = runtime()?;
    let cluster = rt.block_on(async {
        let (c2_0, nats_0) = (proc_cpu(p2)?, proc_cpu(nats.pid())?);
        let t = Instant::now();
        let (reg, look) = throughput(a1, p1, load_accounts, cfg).await?;
        let secs = t.elapsed().as_secs_f64();
        let other = (proc_cpu(p2)? - c2_0).as_secs_f64();
        let nats_cpu = (proc_cpu(nats.pid())? - nats_0).as_secs_f64();
        let dial = dial_to_ring(a1, a2, cfg.dials).await?;
        let idle = idle_terminals(a1, p1, &idle_accounts, cfg.idle_window).await?;
        anyhow::Ok(json!({
            "registrations": reg,
            "lookups": look,
            "idle_terminals": idle,
            "other_node_cpu_cores": round(other / secs, 2),
            "nats_cpu_cores": round(nats_cpu / secs, 2),
            "dial_to_ring_across_nodes": dial,
        }))
    })?;
    d1.check_alive()?;
    d2.check_alive()?;
    d1.stop();
    d2.stop();

    let (mut ds, _cs, a_s) = start_node(bin, &ss, &etc_single)?;
    let ps = ds.pid()?;
    let single = rt.block_on(async {
        let (reg, look) = throughput(a_s, ps, load_accounts, cfg).await?;
        let dial = dial_to_ring(a_s, a_s, cfg.dials).await?;
        let idle = idle_terminals(a_s, ps, &idle_accounts, cfg.idle_window).await?;
        anyhow::Ok(json!({
            "registrations": reg,
            "lookups": look,
            "idle_terminals": idle,
            "dial_to_ring": dial,
        }))
    })?;
    ds.check_alive()?;
    ds.stop();
    drop(rt);
    drop(nats);
    drop(pg);

    let ratio = |op: &str| {
        let c = cluster[op]["directory_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(0.0);
        let s = single[op]["directory_cpu_us_per_op"]
            .as_f64()
            .unwrap_or(0.0);
        if s > 0.0 {
            round(c / s, 2)
        } else {
            0.0
        }
    };
    Ok(json!({
        "note": "node 1 of two keyline-directory nodes on one PostgreSQL (initdb here, Unix socket) and one \
                 nats-server with JetStream, against the embedded single node on SQLite, the same load \
                 clients (bench/src/rawdir.rs) in the same run on 127.0.0.1; all share the machine's cores",
        "accounts_created_in_postgres_s": round(accounts_pg_s, 2),
        "registrations_per_s": {
            "cluster_node": cluster["registrations"]["per_s"],
            "single": single["registrations"]["per_s"],
        },
        "lookups_per_s": {
            "cluster_node": cluster["lookups"]["per_s"],
            "single": single["lookups"]["per_s"],
        },
        "cpu_per_request_cluster_over_single": {
            "registrations": ratio("registrations"),
            "lookups": ratio("lookups"),
        },
        "idle_terminal": {
            "cluster_node": cluster["idle_terminals"],
            "single": single["idle_terminals"],
        },
        "dial_to_ring_ms": {
            "across_nodes": cluster["dial_to_ring_across_nodes"],
            "single": single["dial_to_ring"],
        },
        "cluster": cluster,
        "single": single,
    }))
}
