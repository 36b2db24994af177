//! The directory's tokio shell around the sans-IO [`Router`].
//!
//! Tasks: one accept loop; per connection a reader (control stream), a
//! writer (bounded queue, drained into one stream write per wake-up), a
//! mail uploader (bidirectional mail streams), a mailman (delivery on
//! unidirectional streams) and a migration watcher;
//! one hub task that owns the router, the relay allocations and the
//! sessions' queues and is the only place routing state changes; the
//! control socket. Storage calls run off the runtime ([`store::blocking`]).
//! Every channel is bounded.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_net::admission::{admit_incoming, Gate};
use keyline_net::lifecycle::{self, Signal, Signals};
use keyline_net::relay::{self, Allocation, Counters};
use keyline_net::{control, peer_fingerprint, Identity};
use keyline_proto::codec::CodecError;
use keyline_proto::dir::{
    CallId, DirMsg, ErrorCode, ForwardRule, ForwardWhen, MailKind, NumberForwards, ReqId,
    MAX_CANDIDATES, OGG_MAGIC,
};
use keyline_proto::msg::Role;
use keyline_proto::{number, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::api::{self, BindingInfo, CallInfo, EndpointKind};
use crate::auth;
use crate::config::Config;
use crate::hashing::Refused;
use crate::ratelimit::{Attempt, Locked, LoginLimiter, Scope};
use crate::routing::{
    Action, CallState, MediaEnd, Notice, NumberInfo, Placing, RelayState, Router, SessionId,
};
use crate::store::{
    self, NewMail, PostgresStore, Quota, SqliteStore, Store, StoreError, StoreResult,
};
use crate::wire::{
    self, next_msg, read_body, send_msg, write_body, Incoming, MsgReader, MsgWriter, WRITE_BATCH,
};

/// Name of the database inside the state directory.
pub const DB_FILE: &str = "directory.sqlite";

/// What goes out on a session's control stream.
#[derive(Debug)]
pub enum Out {
    Msg(DirMsg),
}

/// Inputs of the hub task.
#[derive(Debug)]
pub enum Event {
    Up {
        sid: SessionId,
        fp: String,
        conn: quinn::Connection,
        tx: mpsc::Sender<Out>,
        /// Wakes the session's mail delivery.
        mail: Arc<Notify>,
        /// The name the endpoint gave in its hello.
        name: Option<String>,
        /// It said hello as a terminal (its own media end, which checks
        /// the direct path while its calls ring).
        terminal: bool,
        /// What it said it is, for the event stream.
        kind: EndpointKind,
    },
    Down {
        sid: SessionId,
    },
    Moved {
        sid: SessionId,
        observed: SocketAddr,
    },
    LoggedIn {
        sid: SessionId,
        account: String,
        numbers: Vec<String>,
        /// The hash of the session token it logged in with (a device, to
        /// the web site's account page).
        token_hash: String,
    },
    /// The logged-in endpoints of `account`, for the web site.
    Devices {
        account: String,
        reply: oneshot::Sender<Vec<Device>>,
    },
    /// End session `sid` if it is `account`'s; the reply is its token
    /// hash (to revoke), or `None` when there was no such session.
    SignOut {
        account: String,
        sid: SessionId,
        reply: oneshot::Sender<Option<String>>,
    },
    /// A routing request, already validated and canonicalised; `_held`
    /// is one of the session's requests in flight, given back once the
    /// hub has handled it. `read_at`: when the request was read off the
    /// session's stream (for the dial→ringing metric).
    Route {
        sid: SessionId,
        msg: DirMsg,
        read_at: Instant,
        _held: OwnedSemaphorePermit,
    },
    /// `number`'s forwarding rules are now `rules` (read back from the
    /// store after a change).
    ForwardChanged {
        number: String,
        rules: Vec<ForwardRule>,
    },
    /// Accounts or numbers changed in storage: reload; end the sessions of
    /// `logout` (except `keep`).
    Reload {
        logout: Option<String>,
        keep: Option<SessionId>,
        done: Option<oneshot::Sender<()>>,
    },
    MailArrived {
        account: String,
    },
    Query {
        what: Query,
        reply: oneshot::Sender<QueryReply>,
    },
    Reconfigure(Arc<Config>),
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A logged-in endpoint of an account, as the web site shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub session: SessionId,
    /// The address the directory sees it at.
    pub address: String,
    /// The name it gave in its hello.
    pub name: Option<String>,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Numbers it has registered now.
    pub numbers: Vec<String>,
    /// Seconds since it last registered (refreshed), if it did.
    pub refreshed_s_ago: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub enum Query {
    Ping,
    Status,
    Bindings,
    Calls,
    Online,
}

/// The hub's answer to a [`Query`].
#[derive(Debug, Clone)]
pub enum QueryReply {
    Pong,
    Status(Box<api::Status>),
    Bindings(Vec<BindingInfo>),
    Calls(Vec<CallInfo>),
    /// Each account's registered numbers.
    Online(HashMap<String, Vec<String>>),
}

/// State shared by the directory's tasks.
pub struct Shared {
    pub id: Identity,
    pub store: Arc<dyn Store>,
    cfg: RwLock<Arc<Config>>,
    pub config_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub local_addr: SocketAddr,
    pub relay: Arc<Counters>,
    pub hub: mpsc::Sender<Event>,
    pub limiter: Mutex<LoginLimiter>,
    /// Password hashes computed at once (each argon2 check takes ~19 MiB).
    /// Password hashing, below the event loop's priority.
    pub(crate) hashing: crate::hashing::Pool,
    /// Passwords checked since start (wrong ones, unknown accounts and
    /// password changes included), for `status`.
    password_checks: AtomicU64,
    /// Who may connect: `max_connections` and the per-address limits.
    pub gate: Gate,
    pub started: Instant,
    pub last_reload: Mutex<Option<String>>,
    next_session: AtomicU64,
    /// Where the web site listens, once it does.
    pub web_addr: std::sync::OnceLock<SocketAddr>,
    pub metrics: crate::metrics::Metrics,
    /// What `subscribe`rs of the control socket get.
    pub events: control::Events,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(
        id: Identity,
        store: Arc<dyn Store>,
        cfg: Config,
        config_file: Option<PathBuf>,
        state_dir: PathBuf,
        local_addr: SocketAddr,
        hub: mpsc::Sender<Event>,
    ) -> Result<Shared> {
        let cfg_metrics = cfg.metrics.listen.is_some();
        let hashing = crate::hashing::Pool::start(cfg.login.hashing())
            .context("starting the password hashing threads")?;
        Ok(Shared {
            id,
            store,
            limiter: Mutex::new(LoginLimiter::new(cfg.limits())),
            hashing,
            password_checks: AtomicU64::new(0),
            gate: Gate::new(cfg.admission().unwrap_or_default()),
            cfg: RwLock::new(Arc::new(cfg)),
            config_file,
            state_dir,
            local_addr,
            relay: Arc::new(Counters::default()),
            hub,
            started: Instant::now(),
            last_reload: Mutex::new(None),
            next_session: AtomicU64::new(1),
            web_addr: std::sync::OnceLock::new(),
            metrics: if cfg_metrics {
                crate::metrics::Metrics::on()
            } else {
                crate::metrics::Metrics::off()
            },
            events: control::Events::new(),
        })
    }

    /// Tell the control socket's subscribers `ev`; never waits (a
    /// subscriber that cannot keep up is dropped), and costs nothing
    /// when nobody listens.
    pub fn publish(&self, ev: &api::Event) {
        if self.events.subscribers() == 0 {
            return;
        }
        if let Ok(v) = serde_json::to_value(ev) {
            self.events.publish(v);
        }
    }

    /// A directory's shared state and hub without its QUIC endpoint, for
    /// the web site's handler tests.
    #[cfg(test)]
    pub(crate) fn for_tests(store: Arc<dyn Store>, cfg: Config) -> Result<Arc<Shared>> {
        let id = Identity::generate("keyline-directory")?;
        let table = number_table(store.as_ref())?;
        let (hub_tx, hub_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared::new(
            id,
            store,
            cfg,
            None,
            std::env::temp_dir(),
            SocketAddr::from(([127, 0, 0, 1], 7480)),
            hub_tx,
        )?);
        let mut router = Router::new(shared.cfg().routing());
        router.set_numbers(Instant::now(), table);
        let hub = Hub::new(shared.clone(), router);
        tokio::spawn(hub.run(hub_rx));
        Ok(shared)
    }

    pub fn cfg(&self) -> Arc<Config> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_cfg(&self, cfg: Arc<Config>) {
        match self.cfg.write() {
            Ok(mut c) => *c = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
    }
}

/// Options given on the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    pub config: Config,
    /// The file `config` came from, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// Flags that override the file, re-applied after a reload.
    pub overrides: Overrides,
}

/// Command-line settings that win over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub direct_connect: Option<keyline_proto::dir::DirectPolicy>,
    pub binding_ttl: Option<u32>,
    pub ring_timeout: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(p) = self.direct_connect {
            cfg.direct_connect = p;
        }
        if let Some(t) = self.binding_ttl {
            cfg.binding_ttl_secs = t;
        }
        if let Some(t) = self.ring_timeout {
            cfg.ring_timeout_secs = t;
        }
    }
}

/// Open (creating if need be) the directory's SQLite database in `state_dir`.
pub fn open_store(state_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqliteStore::open(&state_dir.join(DB_FILE))?))
}

/// Open the store `[store]` names: PostgreSQL when `postgres` is set (its
/// schema brought up to date), else the SQLite file in `state_dir`.
/// Blocking: call it off the async runtime.
pub fn open_configured_store(
    state_dir: &std::path::Path,
    cfg: &crate::config::StoreConfig,
) -> Result<Arc<dyn Store>> {
    match &cfg.postgres {
        Some(url) => Ok(Arc::new(PostgresStore::open(url, cfg.pool_size)?)),
        None => open_store(state_dir),
    }
}

fn number_table(store: &dyn Store) -> Result<HashMap<String, NumberInfo>, StoreError> {
    Ok(store
        .numbers()?
        .into_iter()
        .map(|r| {
            (
                r.number,
                NumberInfo {
                    account: r.account,
                    forwards: r.forwards,
                    dnd: r.dnd,
                },
            )
        })
        .collect())
}

/// Run the directory until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    serve(opts, None).await
}

/// Run a directory inside another daemon (a standalone office's gateway):
/// no systemd notifications or signal handling of its own; it stops when
/// `stop` changes or its sender is dropped.
pub async fn run_embedded(opts: RunOptions, stop: watch::Receiver<bool>) -> Result<()> {
    serve(opts, Some(stop)).await
}

async fn serve(opts: RunOptions, stop: Option<watch::Receiver<bool>>) -> Result<()> {
    let embedded = stop.is_some();
    let cfg = opts.config;
    cfg.validate()?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "directory")?;
    let id = Identity::load_or_create(&state_dir, "keyline-directory")?;
    let store = {
        let (dir, store_cfg) = (state_dir.clone(), cfg.store.clone());
        tokio::task::spawn_blocking(move || open_configured_store(&dir, &store_cfg))
            .await
            .context("opening the store")??
    };
    let table = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || number_table(s.as_ref()))
            .await
            .context("loading numbers")??
    };
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let endpoint = keyline_net::make_endpoint(cfg.listen, &id)?;
    endpoint.set_server_config(Some(keyline_net::endpoint::control_server_config(
        &id,
        Some(wire::ACK_EVERY),
        CONTROL_LIMITS,
    )?));
    let local_addr = endpoint.local_addr()?;
    let (hub_tx, hub_rx) = mpsc::channel(4096);
    let shared = Arc::new(Shared::new(
        id,
        store,
        cfg,
        opts.config_file.clone(),
        state_dir.clone(),
        local_addr,
        hub_tx,
    )?);

    let mut router = Router::new(shared.cfg().routing());
    router.set_numbers(Instant::now(), table);
    let hub = Hub::new(shared.clone(), router);
    let hub_task = tokio::spawn(hub.run(hub_rx));

    {
        let shared = shared.clone();
        let events = shared.events.clone();
        tokio::spawn(control::serve_with_events(ctl, events, move |req| {
            let shared = shared.clone();
            async move { crate::control::handle_control(&shared, req).await }
        }));
    }
    {
        let shared = shared.clone();
        tokio::spawn(watch_disk(shared));
    }

    let accept = {
        let shared = shared.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Some((mut slot, incoming)) = admit_incoming(&shared.gate, incoming) else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let handshake = incoming.await;
                    slot.handshake_done();
                    match handshake {
                        Ok(conn) => {
                            if let Err(e) = serve_conn(shared, conn).await {
                                tracing::info!("endpoint {remote}: {e:#}");
                            }
                        }
                        Err(e) => tracing::debug!("handshake with {remote} failed: {e}"),
                    }
                });
            }
        })
    };

    if !embedded {
        let shared = shared.clone();
        lifecycle::spawn_watchdog(move || {
            let shared = shared.clone();
            async move {
                matches!(
                    query_typed(&shared, Query::Ping).await,
                    Ok(QueryReply::Pong)
                )
            }
        });
    }
    // Expired session tokens are purged hourly.
    {
        let store = shared.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let now = store::now_ms();
                if let Err(e) = store::blocking(&store, move |s| s.purge_tokens(now)).await {
                    tracing::warn!("purging expired tokens: {e}");
                }
            }
        });
    }

    let (web_stop, web_stop_rx) = watch::channel(false);
    let web_task = crate::web::start(shared.clone(), web_stop_rx.clone()).await?;
    let metrics_task = crate::metrics::start(shared.clone(), web_stop_rx).await?;
    tracing::info!(
        "keyline-directory listening on {local_addr} (QUIC), state in {}, fingerprint {}",
        state_dir.display(),
        shared.id.fingerprint
    );
    println!(
        "keyline-directory ready: udp {local_addr}, state {}, direct-connect {}{}",
        state_dir.display(),
        shared.cfg().direct_connect.as_str(),
        match shared.web_addr.get() {
            Some(a) => format!(", web https://{a}/"),
            None => String::new(),
        }
    );
    match stop {
        Some(mut stop) => {
            // Embedded: the host daemon owns signals and systemd.
            let _ = stop.changed().await;
        }
        None => {
            let mut signals = Signals::new().context("installing signal handlers")?;
            lifecycle::ready(&status_line(&shared).await);
            let mut status_tick = tokio::time::interval(Duration::from_secs(10));
            status_tick.tick().await;
            loop {
                tokio::select! {
                    sig = signals.recv() => match sig {
                        Signal::Reload => reload(&shared, &opts.overrides).await,
                        Signal::Terminate | Signal::Interrupt => break,
                    },
                    _ = status_tick.tick() => lifecycle::status(&status_line(&shared).await),
                }
            }
            lifecycle::stopping("stopping: telling endpoints, flushing storage");
        }
    }
    tracing::info!("stopping: ending calls and telling endpoints");
    let (done_tx, done_rx) = oneshot::channel();
    if shared
        .hub
        .send(Event::Shutdown { done: done_tx })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    }
    accept.abort();
    let _ = web_stop.send(true);
    for t in [web_task, metrics_task].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    // Give writers a moment to put the goodbyes on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"directory stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    if let Err(e) = store::blocking(&shared.store, |s| s.flush()).await {
        tracing::warn!("flushing the database: {e}");
    }
    hub_task.abort();
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

/// Messages queued for one endpoint's control stream before it counts as
/// gone (its own replies) or misses look-up hints (half of it).
const CONTROL_QUEUE: usize = 256;
/// What one client may make the directory hold for it: the control
/// stream and up to three mail uploads (one at a time is read, the rest
/// wait), no unidirectional streams (the directory only opens them, to
/// deliver mail) and no datagrams (its relay is plain UDP); 256 KiB of
/// receive window per stream and 1 MiB for the whole connection.
const CONTROL_LIMITS: keyline_net::endpoint::ControlLimits = keyline_net::endpoint::ControlLimits {
    bidi_streams: 4,
    uni_streams: 0,
    stream_window: 256 * 1024,
    connection_window: 1024 * 1024,
    datagrams: false,
};

/// Requests of one session the hub may hold at once.
const IN_FLIGHT: usize = 64;
/// Free places a session's queue must have before its next request is
/// read: room for the answers to every request in flight and this one,
/// with as much again for what other sessions send it.
const ROOM: usize = 2 * IN_FLIGHT;

async fn status_line(shared: &Arc<Shared>) -> String {
    let s = query_hub(shared, Query::Status).await;
    let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{} endpoints, {} numbers registered, {} calls, {} bytes relayed",
        n("sessions"),
        n("bindings"),
        n("calls_active"),
        s.get("relay")
            .and_then(|r| r.get("bytes"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    )
}

/// SIGHUP: re-read the configuration file; keep the old one on error.
async fn reload(shared: &Arc<Shared>, overrides: &Overrides) {
    lifecycle::reloading();
    let Some(file) = &shared.config_file else {
        tracing::info!("SIGHUP: no configuration file to reload");
        lifecycle::ready(&status_line(shared).await);
        return;
    };
    let old = shared.cfg();
    let result = Config::load(file).and_then(|mut c| {
        overrides.apply(&mut c);
        c.validate()?;
        Ok(c)
    });
    match result {
        Ok(mut new) => {
            if new.listen != old.listen {
                tracing::warn!(
                    "listen changed to {}; that needs a restart, still listening on {}",
                    new.listen,
                    old.listen
                );
                new.listen = old.listen;
            }
            if new.store != old.store {
                tracing::warn!("[store] changed; that needs a restart, still using the old store");
                new.store = old.store.clone();
            }
            let new = Arc::new(new);
            if let Ok(mut l) = shared.limiter.lock() {
                l.set_limits(new.limits());
            }
            if let Ok(a) = new.admission() {
                shared.gate.set_limits(a);
            }
            shared.set_cfg(new.clone());
            let _ = shared.hub.send(Event::Reconfigure(new)).await;
            if let Ok(mut r) = shared.last_reload.lock() {
                *r = Some(format!("reloaded {}", file.display()));
            }
            tracing::info!("configuration reloaded from {}", file.display());
            lifecycle::ready(&status_line(shared).await);
        }
        Err(e) => {
            let msg = format!("configuration reload failed, keeping the old one: {e:#}");
            tracing::error!("{msg}");
            if let Ok(mut r) = shared.last_reload.lock() {
                *r = Some(msg.clone());
            }
            lifecycle::ready(&msg);
        }
    }
}

fn error(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> DirMsg {
    DirMsg::Error {
        req,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

fn parse_candidates(c: &[String]) -> Result<Vec<SocketAddr>, String> {
    if c.len() > MAX_CANDIDATES {
        return Err(format!(
            "too many candidate addresses (at most {MAX_CANDIDATES})"
        ));
    }
    c.iter()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| format!("candidate {} is not an IP:PORT address", quoted(a)))
        })
        .collect()
}

/// Candidates, and when an endpoint vouches for another media end, that
/// end's fingerprint (64 hex digits) with at least one address.
fn parse_media_end(c: &[String], media_fp: Option<&str>) -> Result<Vec<SocketAddr>, String> {
    let addrs = parse_candidates(c)?;
    if let Some(fp) = media_fp {
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "media fingerprint {} is not a SHA-256 in hex (64 digits)",
                quoted(fp)
            ));
        }
        if addrs.is_empty() {
            return Err("a vouched media end needs at least one candidate address".into());
        }
    }
    Ok(addrs)
}

/// Characters of a client's input an error message quotes at most.
const ECHO_CHARS: usize = 32;

/// `s` quoted (escaped) for an error message, cut after [`ECHO_CHARS`]
/// characters: an answer never grows with what the client sent.
fn quoted(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(ECHO_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// `s` cut after [`MAX_CHARS`](number::MAX_CHARS) characters, for a field
/// that gives a client's input back.
fn clipped(s: &str) -> String {
    s.chars().take(number::MAX_CHARS).collect()
}

fn canon(n: &str) -> Result<String, String> {
    if n.len() > number::MAX_INPUT_BYTES {
        return Err(format!(
            "the number is too long ({} bytes; at most {} are accepted)",
            n.len(),
            number::MAX_INPUT_BYTES
        ));
    }
    number::canonicalize(n).map_err(|e| format!("{}: {e}", quoted(n)))
}

/// What one connection knows about itself.
struct Conn {
    sid: SessionId,
    shared: Arc<Shared>,
    conn: quinn::Connection,
    tx: mpsc::Sender<Out>,
    /// Requests of this session the hub has not handled yet.
    in_flight: Arc<Semaphore>,
    /// Signalled each time the writer takes messages from `tx`.
    drained: Arc<Notify>,
    account: watch::Sender<Option<LoggedIn>>,
    /// The address last reported to the hub (shared with the migration
    /// watcher; held while reporting, so reports stay in order).
    observed: Arc<tokio::sync::Mutex<SocketAddr>>,
}

/// The logged-in account of a connection.
#[derive(Debug, Clone)]
struct LoggedIn {
    account: String,
    numbers: Vec<String>,
    token_hash: String,
}

impl Conn {
    fn reply(&self, msg: DirMsg) {
        if self.tx.try_send(Out::Msg(msg)).is_err() {
            self.conn
                .close(quinn::VarInt::from_u32(5), b"control queue overflow");
        }
    }

    fn who(&self) -> Option<LoggedIn> {
        self.account.borrow().clone()
    }

    /// Hand a routing request to the hub, once fewer than
    /// [`IN_FLIGHT`] of the session's requests wait there.
    async fn route(&self, msg: DirMsg) -> Result<()> {
        self.route_read_at(msg, Instant::now()).await
    }

    /// [`Conn::route`] for a request read off the stream at `read_at`.
    async fn route_read_at(&self, msg: DirMsg, read_at: Instant) -> Result<()> {
        let held = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .context("the session is closing")?;
        self.hub(Event::Route {
            sid: self.sid,
            msg,
            read_at,
            _held: held,
        })
        .await
    }

    /// Wait until the session's queue has [`ROOM`] free places: a client
    /// that sends requests faster than it reads the answers is not read
    /// from meanwhile (QUIC's flow control then holds it back), rather
    /// than dropped when its answers overflow the queue.
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // A closed queue: the writer is gone, and so is the session.
            if self.tx.capacity() >= ROOM || self.tx.is_closed() {
                return;
            }
            drained.await;
        }
    }

    async fn hub(&self, ev: Event) -> Result<()> {
        self.shared
            .hub
            .send(ev)
            .await
            .context("the directory is stopping")
    }

    /// Tell the hub the endpoint's address if it changed since the last
    /// report (a REGISTER right after a migration the watcher has not seen
    /// yet); nothing otherwise.
    async fn report_move(&self) -> Result<()> {
        let mut last = self.observed.lock().await;
        let now = self.conn.remote_address();
        if *last != now {
            *last = now;
            self.hub(Event::Moved {
                sid: self.sid,
                observed: now,
            })
            .await?;
        }
        Ok(())
    }
}

/// Serve one endpoint's connection from hello to goodbye.
async fn serve_conn(shared: Arc<Shared>, conn: quinn::Connection) -> Result<()> {
    let fp = peer_fingerprint(&conn).context("the endpoint presented no certificate")?;
    let observed = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("no control stream within 10 s")??;
    let hello = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv))
        .await
        .context("no hello within 10 s")?;
    let hello_name: Option<String>;
    let hello_role: Role;
    match hello {
        Ok(Incoming::Msg(DirMsg::Hello {
            version,
            role,
            name,
        })) => {
            if version != PROTOCOL_VERSION {
                let _ = send_msg(
                    &mut send,
                    &error(
                        None,
                        ErrorCode::Version,
                        format!("protocol version {version} is not supported (this directory speaks {PROTOCOL_VERSION})"),
                    ),
                )
                .await;
                let _ = send.finish();
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.close(quinn::VarInt::from_u32(2), b"unsupported version");
                anyhow::bail!("unsupported protocol version {version}");
            }
            if role == Role::Directory {
                conn.close(quinn::VarInt::from_u32(1), b"directories do not register");
                anyhow::bail!("a directory connected as an endpoint");
            }
            hello_name = name.map(|n| clipped(&n));
            hello_role = role;
        }
        Ok(_) => {
            conn.close(quinn::VarInt::from_u32(1), b"expected hello");
            anyhow::bail!("the first message was not a hello");
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
            return Err(e.into());
        }
    }
    let cfg = shared.cfg();
    send_msg(
        &mut send,
        &DirMsg::Welcome {
            version: PROTOCOL_VERSION,
            observed: observed.to_string(),
            ttl_secs: cfg.binding_ttl_secs,
            policy: cfg.direct_connect,
        },
    )
    .await?;

    let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Out>(CONTROL_QUEUE);
    let (acct_tx, acct_rx) = watch::channel::<Option<LoggedIn>>(None);
    let wake = Arc::new(Notify::new());
    let drained = Arc::new(Notify::new());
    let moved = Arc::new(tokio::sync::Mutex::new(observed));
    tokio::spawn(writer(
        conn.clone(),
        send,
        (rx, drained.clone()),
        acct_rx.clone(),
        wake.clone(),
    ));
    tokio::spawn(mailman(
        shared.clone(),
        conn.clone(),
        acct_rx.clone(),
        wake.clone(),
    ));
    tokio::spawn(watch_migration(
        shared.clone(),
        conn.clone(),
        sid,
        moved.clone(),
    ));
    tokio::spawn(login_deadline(
        conn.clone(),
        acct_rx.clone(),
        cfg.login_deadline(),
    ));
    shared
        .hub
        .send(Event::Up {
            sid,
            fp,
            conn: conn.clone(),
            tx: tx.clone(),
            mail: wake,
            name: hello_name,
            terminal: hello_role == Role::Terminal,
            kind: if hello_role == Role::Gateway {
                EndpointKind::Office
            } else {
                EndpointKind::Terminal
            },
        })
        .await
        .context("the directory is stopping")?;
    let c = Arc::new(Conn {
        sid,
        shared: shared.clone(),
        conn: conn.clone(),
        tx,
        in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        drained,
        account: acct_tx,
        observed: moved,
    });
    tokio::spawn(mail_uploads(c.clone()));
    tracing::debug!("endpoint {observed} connected as session {sid}");

    let result = control_loop(&c, recv).await;
    match &result {
        Err(e) => {
            tracing::warn!("session {sid} ({observed}): {e:#}; dropping it");
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
        }
        // The control stream is the session: without it, nothing rings.
        Ok(()) => conn.close(quinn::VarInt::from_u32(0), b"control stream closed"),
    }
    let _ = shared.hub.send(Event::Down { sid }).await;
    result
}

async fn control_loop(c: &Arc<Conn>, recv: quinn::RecvStream) -> Result<()> {
    let mut reader = MsgReader::new(recv);
    loop {
        let msg = match reader.next().await {
            Ok(Incoming::Msg(m)) => m,
            Ok(Incoming::Unknown(kind)) => {
                c.reply(error(
                    None,
                    ErrorCode::UnknownKind,
                    format!("unknown message kind {}", quoted(&kind)),
                ));
                continue;
            }
            // The end of the stream (a partial frame included), or the
            // connection went.
            Ok(Incoming::Closed) | Err(CodecError::Io(_)) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("protocol violation: {e}")),
        };
        c.room().await;
        handle_msg(c, msg, Instant::now()).await?;
    }
}

/// Handle one message of a session's control stream, read at `read_at`.
async fn handle_msg(c: &Arc<Conn>, msg: DirMsg, read_at: Instant) -> Result<()> {
    match msg {
        DirMsg::Ping { n } => c.reply(DirMsg::Pong { n }),
        DirMsg::Login {
            req,
            account,
            password,
        } => login(c, req, account, password).await?,
        DirMsg::Resume { req, token } => resume(c, req, token).await?,
        DirMsg::ChangePassword { req, old, new } => change_password(c, req, old, new).await?,
        DirMsg::SetForward { req, number, rule } => {
            forward_change(c, req, number, ForwardChange::Set(rule)).await?
        }
        DirMsg::ForwardOff { req, number, when } => {
            forward_change(c, req, number, ForwardChange::Off(when)).await?
        }
        DirMsg::ListForwards { req } => list_forwards(c, req).await?,
        DirMsg::AckMail { req, id } => {
            let Some(who) = c.who() else {
                c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
                return Ok(());
            };
            let account = who.account.clone();
            match store::blocking(&c.shared.store, move |s| s.delete_mail(&account, id)).await {
                Ok(true) => c.reply(DirMsg::Ok { req }),
                Ok(false) => c.reply(error(
                    Some(req),
                    ErrorCode::NoSuchMail,
                    format!("no message {id} waits for account {}", who.account),
                )),
                Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
            }
        }
        DirMsg::Register {
            req,
            numbers,
            candidates,
        } => {
            c.shared.metrics.registrations.increment(1);
            // A refresh right after the endpoint moved: use its new address.
            c.report_move().await?;
            let parsed = parse_candidates(&candidates).and_then(|cands| {
                let ns = numbers
                    .iter()
                    .map(|n| canon(n))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((ns, cands))
            });
            match parsed {
                Ok((numbers, cands)) => {
                    c.route(DirMsg::Register {
                        req,
                        numbers,
                        candidates: cands.iter().map(ToString::to_string).collect(),
                    })
                    .await?
                }
                Err(m) => c.reply(error(Some(req), ErrorCode::BadAddress, m)),
            }
        }
        DirMsg::Unregister { req, numbers } => {
            match numbers
                .iter()
                .map(|n| canon(n))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(numbers) => c.route(DirMsg::Unregister { req, numbers }).await?,
                Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
            }
        }
        DirMsg::Lookup { req, number } => {
            c.shared.metrics.lookups.increment(1);
            match canon(&number) {
                Ok(number) => c.route(DirMsg::Lookup { req, number }).await?,
                Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
            }
        }
        DirMsg::Call {
            req,
            number,
            from,
            candidates,
            hops,
            media_fp,
            handoff,
        } => {
            let fail = |code, message: String| DirMsg::CallFailed {
                req,
                code,
                number: clipped(&number),
                message,
                mail: false,
            };
            let n = match canon(&number) {
                Ok(n) => n,
                Err(m) => {
                    c.reply(fail(ErrorCode::InvalidNumber, m));
                    return Ok(());
                }
            };
            let from = match from.as_deref().map(canon).transpose() {
                Ok(f) => f,
                Err(m) => {
                    c.reply(fail(ErrorCode::InvalidNumber, m));
                    return Ok(());
                }
            };
            let cands = match parse_media_end(&candidates, media_fp.as_deref()) {
                Ok(cs) => cs,
                Err(m) => {
                    c.reply(fail(ErrorCode::BadAddress, m));
                    return Ok(());
                }
            };
            c.route_read_at(
                DirMsg::Call {
                    req,
                    number: n,
                    from,
                    candidates: cands.iter().map(ToString::to_string).collect(),
                    hops,
                    media_fp,
                    handoff,
                },
                read_at,
            )
            .await?
        }
        DirMsg::Answer {
            req,
            call,
            media_fp,
            candidates,
        } => match parse_media_end(&candidates, media_fp.as_deref()) {
            Ok(_) => {
                c.route(DirMsg::Answer {
                    req,
                    call,
                    media_fp,
                    candidates,
                })
                .await?
            }
            Err(m) => c.reply(error(Some(req), ErrorCode::BadAddress, m)),
        },
        DirMsg::Redirect { req, call, number } => match canon(&number) {
            Ok(number) => c.route(DirMsg::Redirect { req, call, number }).await?,
            Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
        },
        DirMsg::Transfer {
            req,
            call,
            number,
            handoff,
        } => match canon(&number) {
            Ok(number) => {
                c.route(DirMsg::Transfer {
                    req,
                    call,
                    number,
                    handoff,
                })
                .await?
            }
            Err(m) => c.reply(error(Some(req), ErrorCode::InvalidNumber, m)),
        },
        m @ (DirMsg::Reject { .. }
        | DirMsg::Busy { .. }
        | DirMsg::Hangup { .. }
        | DirMsg::Fallback { .. }) => c.route(m).await?,
        other => c.reply(error(
            other.reply_to(),
            ErrorCode::Unexpected,
            format!("an endpoint may not send {:?}", other.kind()),
        )),
    }
    Ok(())
}

fn rate_limited(req: ReqId, message: String, retry: Duration) -> DirMsg {
    DirMsg::Error {
        req: Some(req),
        code: ErrorCode::RateLimited,
        message,
        retry_after_ms: Some(retry.as_millis() as u64),
    }
}

/// A password check reserved with the limiter; given back on drop if it
/// was not finished (the session went away before the check was done).
pub(crate) struct Reserved<'a> {
    shared: &'a Shared,
    attempt: Option<Attempt>,
    /// Who tries from where, for the lock-out event.
    account: String,
    ip: IpAddr,
}

impl Reserved<'_> {
    /// Record the outcome; after a failure, the refusal the next attempt
    /// would meet.
    pub(crate) fn finish(mut self, ok: bool) -> Option<Locked> {
        let attempt = self.attempt.take()?;
        let locked = match self.shared.limiter.lock() {
            Ok(mut l) => l.finish(Instant::now(), attempt, ok),
            Err(_) => None,
        };
        if !ok {
            self.shared.metrics.auth_failures.increment(1);
        }
        if let Some(l) = &locked {
            self.shared.metrics.lockouts.increment(1);
            self.shared.publish(&api::Event::LoginLocked {
                account: self.account.clone(),
                address: self.ip.to_string(),
                scope: match l.scope {
                    Scope::AccountFromAddress => "account-from-address",
                    Scope::Address => "address",
                    Scope::Account => "account",
                }
                .to_string(),
                for_s: l.retry_after(Instant::now()).as_secs_f64().ceil() as u64,
            });
        }
        locked
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.attempt.take() {
            if let Ok(mut l) = self.shared.limiter.lock() {
                l.release(a);
            }
        }
    }
}

impl Shared {
    /// Reserve a password check of `account` from `ip` with the limiter.
    pub(crate) fn reserve_login(&self, account: &str, ip: IpAddr) -> Result<Reserved<'_>, Locked> {
        let attempt = match self.limiter.lock() {
            Ok(mut l) => Some(l.begin(Instant::now(), account, ip)?),
            Err(_) => None,
        };
        Ok(Reserved {
            shared: self,
            attempt,
            account: account.to_string(),
            ip,
        })
    }

    /// Check `password` against `hash` (or spend the same time when there
    /// is no account) on the hashing pool; refused at once when its queue
    /// is full.
    pub(crate) async fn check_password(
        &self,
        hash: Option<String>,
        password: String,
    ) -> Result<bool, Refused> {
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        self.hashing
            .run(move || match hash {
                Some(h) => auth::verify_password(&h, &password),
                None => {
                    auth::dummy_verify(&password);
                    false
                }
            })
            .await
    }

    /// Hash a new password on the same pool as the checks.
    pub(crate) async fn hash_password(&self, password: String) -> Result<String> {
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        self.hashing
            .run(move || auth::hash_password(&password))
            .await?
    }
}

/// The answer to a login the hashing pool turned away.
fn busy(req: ReqId, why: Refused) -> DirMsg {
    match why {
        Refused::Busy => rate_limited(req, why.to_string(), Duration::from_secs(1)),
        Refused::Stopped => error(Some(req), ErrorCode::ShuttingDown, why.to_string()),
    }
}

async fn login(c: &Arc<Conn>, req: ReqId, account: String, password: String) -> Result<()> {
    // No account has such a name: refused at once, and the name is not
    // kept (by the limiter) nor quoted.
    if auth::check_account_id(&account).is_err() {
        c.reply(error(
            Some(req),
            ErrorCode::BadCredentials,
            "wrong account or password (no account has such a name)",
        ));
        return Ok(());
    }
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let reserved = match c.shared.reserve_login(&account, ip) {
        Ok(r) => r,
        Err(locked) => {
            c.reply(rate_limited(
                req,
                locked.describe(now, &account),
                locked.retry_after(now),
            ));
            return Ok(());
        }
    };
    let acct = account.clone();
    let row = store::blocking(&c.shared.store, move |s| s.account(&acct)).await;
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
            return Ok(());
        }
    };
    let ok = match c
        .shared
        .check_password(row.as_ref().map(|r| r.pw_hash.clone()), password)
        .await
    {
        Ok(ok) => ok,
        Err(why) => {
            // Not a failure of the password: the reservation is given back.
            c.reply(busy(req, why));
            return Ok(());
        }
    };
    let row = match (ok, row) {
        (true, Some(r)) => {
            reserved.finish(true);
            r
        }
        _ => {
            let locked = reserved.finish(false);
            let now = Instant::now();
            tracing::info!("failed login for account {account:?} from {ip}");
            c.reply(match locked {
                Some(l) => rate_limited(
                    req,
                    format!("wrong account or password; {}", l.describe(now, &account)),
                    l.retry_after(now),
                ),
                None => error(
                    Some(req),
                    ErrorCode::BadCredentials,
                    "wrong account or password",
                ),
            });
            return Ok(());
        }
    };
    let token = auth::new_token();
    let th = auth::token_hash(&token);
    let ttl = c.shared.cfg().session_ttl();
    let (th2, acct) = (th.clone(), row.id.clone());
    let now_ms = store::now_ms();
    let expires = now_ms + ttl.as_millis() as i64;
    if let Err(e) = store::blocking(&c.shared.store, move |s| {
        s.insert_token(&th2, &acct, now_ms, expires)
    })
    .await
    {
        c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
        return Ok(());
    }
    logged_in(c, req, row.id, row.numbers, token, th, ttl).await
}

async fn logged_in(
    c: &Arc<Conn>,
    req: ReqId,
    account: String,
    numbers: Vec<String>,
    token: String,
    token_hash: String,
    ttl: Duration,
) -> Result<()> {
    c.account.send_replace(Some(LoggedIn {
        account: account.clone(),
        numbers: numbers.clone(),
        token_hash: token_hash.clone(),
    }));
    c.hub(Event::LoggedIn {
        sid: c.sid,
        account: account.clone(),
        numbers: numbers.clone(),
        token_hash,
    })
    .await?;
    tracing::info!("session {} logged in as {account}", c.sid);
    c.reply(DirMsg::LoggedIn {
        req,
        account,
        numbers,
        token,
        expires_in_secs: ttl.as_secs(),
    });
    Ok(())
}

async fn resume(c: &Arc<Conn>, req: ReqId, token: String) -> Result<()> {
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let checked = match c.shared.limiter.lock() {
        Ok(l) => l.check_address(now, ip),
        Err(_) => Ok(()),
    };
    if let Err(locked) = checked {
        c.reply(rate_limited(
            req,
            locked.describe(now, "-"),
            locked.retry_after(now),
        ));
        return Ok(());
    }
    let th = auth::token_hash(&token);
    let th2 = th.clone();
    let now_ms = store::now_ms();
    let found = store::blocking(&c.shared.store, move |s| {
        let Some(acct) = s.token_account(&th2, now_ms)? else {
            return Ok(None);
        };
        s.account(&acct)
    })
    .await;
    match found {
        Ok(Some(row)) => {
            let ttl = c.shared.cfg().session_ttl();
            logged_in(c, req, row.id, row.numbers, token, th, ttl).await
        }
        Ok(None) => {
            if let Ok(mut l) = c.shared.limiter.lock() {
                l.failure_address(Instant::now(), ip);
            }
            c.reply(error(
                Some(req),
                ErrorCode::BadToken,
                "the session token is unknown or expired; log in with the password",
            ));
            Ok(())
        }
        Err(e) => {
            c.reply(error(Some(req), ErrorCode::Storage, e.to_string()));
            Ok(())
        }
    }
}

async fn change_password(c: &Arc<Conn>, req: ReqId, old: String, new: String) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    if let Err(m) = auth::check_new_password(&new) {
        c.reply(error(Some(req), ErrorCode::WeakPassword, m));
        return Ok(());
    }
    let ip = c.conn.remote_address().ip();
    let now = Instant::now();
    let reserved = match c.shared.reserve_login(&who.account, ip) {
        Ok(r) => r,
        Err(locked) => {
            c.reply(rate_limited(
                req,
                locked.describe(now, &who.account),
                locked.retry_after(now),
            ));
            return Ok(());
        }
    };
    let store = c.shared.store.clone();
    let (acct, keep) = (who.account.clone(), who.token_hash.clone());
    c.shared.password_checks.fetch_add(1, Ordering::Relaxed);
    let res = c.shared.hashing.run(move || -> Result<bool, StoreError> {
        let Some(row) = store.account(&acct)? else {
            return Err(StoreError::NotFound(format!(
                "account {acct} no longer exists"
            )));
        };
        if !auth::verify_password(&row.pw_hash, &old) {
            return Ok(false);
        }
        let h = auth::hash_password(&new).map_err(|e| StoreError::Backend(e.to_string()))?;
        store.set_password(&acct, &h, Some(&keep))?;
        Ok(true)
    });
    let res = match res.await {
        Ok(r) => r,
        Err(why) => {
            c.reply(busy(req, why));
            return Ok(());
        }
    };
    match res {
        Ok(true) => {
            reserved.finish(true);
            c.hub(Event::Reload {
                logout: Some(who.account.clone()),
                keep: Some(c.sid),
                done: None,
            })
            .await?;
            tracing::info!("account {} changed its password", who.account);
            c.reply(DirMsg::Ok { req });
        }
        Ok(false) => {
            reserved.finish(false);
            c.reply(error(
                Some(req),
                ErrorCode::BadCredentials,
                "the old password is wrong",
            ));
        }
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}

/// A change to one number's forwarding rules asked for on the control
/// stream.
enum ForwardChange {
    /// `SetForward`: one kind's rule, or (none) clear them all.
    Set(Option<ForwardRule>),
    /// `ForwardOff`: one kind's rule, or (none) all of them, off.
    Off(Option<ForwardWhen>),
}

async fn forward_change(
    c: &Arc<Conn>,
    req: ReqId,
    number: String,
    change: ForwardChange,
) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    let number = match canon(&number) {
        Ok(n) => n,
        Err(m) => {
            c.reply(error(Some(req), ErrorCode::InvalidNumber, m));
            return Ok(());
        }
    };
    if !who.numbers.contains(&number) {
        c.reply(error(
            Some(req),
            ErrorCode::NotYourNumber,
            format!("{number} is not a number of account {}", who.account),
        ));
        return Ok(());
    }
    let change = match change {
        ForwardChange::Set(Some(r)) => match canon(&r.to) {
            Ok(to) => ForwardChange::Set(Some(ForwardRule { to, ..r })),
            Err(m) => {
                c.reply(error(Some(req), ErrorCode::InvalidNumber, m));
                return Ok(());
            }
        },
        other => other,
    };
    let n2 = number.clone();
    let res = store::blocking(&c.shared.store, move |s| {
        match &change {
            ForwardChange::Set(rule) => s.set_forward(&n2, rule.as_ref(), store::now_ms())?,
            ForwardChange::Off(when) => {
                s.forward_off(&n2, *when)?;
            }
        }
        s.forwards(&n2)
    })
    .await;
    match res {
        Ok(rules) => {
            c.hub(Event::ForwardChanged { number, rules }).await?;
            c.reply(DirMsg::Ok { req });
        }
        Err(StoreError::NotFound(m)) => c.reply(error(Some(req), ErrorCode::UnknownNumber, m)),
        Err(StoreError::Invalid(m)) => c.reply(error(Some(req), ErrorCode::ForwardLoop, m)),
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}

/// `ListForwards`: the rules of every number of the account.
async fn list_forwards(c: &Arc<Conn>, req: ReqId) -> Result<()> {
    let Some(who) = c.who() else {
        c.reply(error(Some(req), ErrorCode::NotLoggedIn, "log in first"));
        return Ok(());
    };
    let numbers = who.numbers.clone();
    let res = store::blocking(&c.shared.store, move |s| {
        numbers
            .into_iter()
            .map(|number| {
                let rules = s.forwards(&number)?;
                Ok(NumberForwards { number, rules })
            })
            .collect::<StoreResult<Vec<_>>>()
    })
    .await;
    match res {
        Ok(numbers) => c.reply(DirMsg::Forwards { req, numbers }),
        Err(e) => c.reply(error(Some(req), ErrorCode::Storage, e.to_string())),
    }
    Ok(())
}

/// Writes the session's outgoing messages in order: everything queued
/// (at most [`WRITE_BATCH`] messages) goes out in one stream write per
/// wake-up, and `drained` is signalled each time messages are taken. The
/// first `Registered` after a login wakes mail delivery.
async fn writer(
    conn: quinn::Connection,
    send: quinn::SendStream,
    (mut rx, drained): (mpsc::Receiver<Out>, Arc<Notify>),
    mut account: watch::Receiver<Option<LoggedIn>>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut out = MsgWriter::new(send);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        drained.notify_waiters();
        let mut mail = false;
        let mut written = Ok(());
        for Out::Msg(m) in batch.drain(..) {
            if matches!(m, DirMsg::Registered { .. }) && account.has_changed().unwrap_or(false) {
                // The session's first registration since it logged in.
                account.borrow_and_update();
                mail = true;
            }
            if written.is_ok() {
                written = out.push(&m).await.map_err(|e| (m.kind(), e));
            }
        }
        if written.is_ok() {
            written = out.flush().await.map_err(|e| ("batch", e));
        }
        if let Err((what, e)) = written {
            if !matches!(e, CodecError::Io(_)) {
                tracing::warn!("encoding {what:?}: {e}");
            }
            conn.close(quinn::VarInt::from_u32(3), b"write failed");
            break;
        }
        if mail {
            wake.notify_one();
        }
    }
    // Whoever waits for room learns the queue is closed.
    drop(rx);
    drained.notify_waiters();
    out.finish();
}

/// Delivers stored mail of the logged-in account on unidirectional
/// streams, each message once per connection, when woken (after the
/// session's first registration, or when new mail arrives for it).
async fn mailman(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    account: watch::Receiver<Option<LoggedIn>>,
    wake: Arc<Notify>,
) {
    let mut sent: HashSet<u64> = HashSet::new();
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = conn.closed() => return,
        }
        let Some(who) = account.borrow().clone() else {
            continue;
        };
        let acct = who.account.clone();
        let pending = match store::blocking(&shared.store, move |s| s.pending_mail(&acct)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reading mail for {}: {e}", who.account);
                continue;
            }
        };
        let fresh: Vec<_> = pending
            .into_iter()
            .filter(|m| !sent.contains(&m.id))
            .collect();
        for m in fresh {
            let id = m.id;
            let body = match store::blocking(&shared.store, move |s| s.mail_body(id)).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("reading message {id}: {e}");
                    continue;
                }
            };
            let res = async {
                let mut s = conn.open_uni().await?;
                send_msg(
                    &mut s,
                    &DirMsg::Mail {
                        id,
                        from: m.from.clone(),
                        to: m.to.clone(),
                        kind: MailKind::parse(m.kind).unwrap_or(MailKind::Text),
                        at_ms: m.at_ms,
                        len: body.len() as u32,
                    },
                )
                .await?;
                write_body(&mut s, &body).await?;
                s.finish()?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match res {
                Ok(()) => {
                    sent.insert(id);
                    tracing::info!("delivered message {id} to {} ({} bytes)", m.to, body.len());
                    shared.publish(&api::Event::MailDelivered {
                        id,
                        to: m.to.clone(),
                        bytes: body.len() as u64,
                    });
                }
                Err(e) => {
                    tracing::info!("delivering message {id}: {e:#}");
                    break;
                }
            }
        }
    }
}

/// Takes mail uploads: each on its own bidirectional stream.
async fn mail_uploads(c: Arc<Conn>) {
    loop {
        let Ok((mut send, mut recv)) = c.conn.accept_bi().await else {
            return;
        };
        let reply = tokio::time::timeout(Duration::from_secs(60), upload(&c, &mut recv)).await;
        let reply = match reply {
            Ok(r) => r,
            Err(_) => error(
                None,
                ErrorCode::TooLarge,
                "the upload took longer than 60 s",
            ),
        };
        if send_msg(&mut send, &reply).await.is_ok() {
            let _ = send.finish();
        }
        let _ = recv.stop(quinn::VarInt::from_u32(0));
    }
}

async fn upload(c: &Arc<Conn>, recv: &mut quinn::RecvStream) -> DirMsg {
    let (req, to, from, kind, len) = match next_msg(recv).await {
        Ok(Incoming::Msg(DirMsg::LeaveMail {
            req,
            to,
            from,
            kind,
            len,
        })) => (req, to, from, kind, len),
        Ok(Incoming::Msg(other)) => {
            return error(
                other.reply_to(),
                ErrorCode::Unexpected,
                format!(
                    "a mail stream starts with leave-mail, not {:?}",
                    other.kind()
                ),
            )
        }
        Ok(Incoming::Unknown(k)) => {
            return error(
                None,
                ErrorCode::UnknownKind,
                format!("unknown message kind {}", quoted(&k)),
            )
        }
        Ok(Incoming::Closed) | Err(_) => {
            return error(None, ErrorCode::Unexpected, "no leave-mail header")
        }
    };
    let Some(who) = c.who() else {
        return error(Some(req), ErrorCode::NotLoggedIn, "log in first");
    };
    let cfg = c.shared.cfg();
    let max = match kind {
        MailKind::Voice => cfg.mail.max_voice_bytes,
        MailKind::Text => cfg.mail.max_text_bytes,
    };
    if len > max {
        return error(
            Some(req),
            ErrorCode::TooLarge,
            format!(
                "the {} message has {len} bytes; at most {max} are accepted",
                kind.as_str()
            ),
        );
    }
    let to = match canon(&to) {
        Ok(t) => t,
        Err(m) => return error(Some(req), ErrorCode::InvalidNumber, m),
    };
    let from = match from.as_deref().map(canon).transpose() {
        Ok(Some(f)) if who.numbers.contains(&f) => f,
        Ok(Some(f)) => {
            return error(
                Some(req),
                ErrorCode::NotYourNumber,
                format!("{f} is not a number of account {}", who.account),
            )
        }
        Ok(None) => match who.numbers.first() {
            Some(f) => f.clone(),
            None => {
                return error(
                    Some(req),
                    ErrorCode::NotYourNumber,
                    "the account has no number",
                )
            }
        },
        Err(m) => return error(Some(req), ErrorCode::InvalidNumber, m),
    };
    let body = match read_body(recv, len as usize).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                format!("reading the body: {e}"),
            )
        }
    };
    match kind {
        MailKind::Voice if !body.starts_with(OGG_MAGIC) => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                "a voice message must be Ogg Opus (it does not start with \"OggS\")",
            )
        }
        MailKind::Text if std::str::from_utf8(&body).is_err() || body.is_empty() => {
            return error(
                Some(req),
                ErrorCode::BadMail,
                "a text message must be non-empty UTF-8",
            )
        }
        _ => {}
    }
    let quota = Quota {
        messages: cfg.mail.quota_messages,
        bytes: cfg.mail.quota_bytes,
    };
    let from_shown = from.clone();
    let mail = NewMail {
        to: to.clone(),
        from,
        kind,
        body,
        at_ms: store::now_ms(),
    };
    let to2 = to.clone();
    let res = store::blocking(&c.shared.store, move |s| {
        let id = s.store_mail(&mail, quota)?;
        let owner = s
            .numbers()?
            .into_iter()
            .find(|n| n.number == to2)
            .map(|n| n.account);
        Ok((id, owner))
    })
    .await;
    match res {
        Ok((id, owner)) => {
            tracing::info!("stored {} message {id} for {to}", kind.as_str());
            c.shared.publish(&api::Event::MailWaiting {
                id,
                from: from_shown,
                to: to.clone(),
                kind: kind.as_str().to_string(),
                bytes: u64::from(len),
            });
            if let Some(account) = owner {
                let _ = c.shared.hub.send(Event::MailArrived { account }).await;
            }
            DirMsg::MailStored { req, id, to }
        }
        Err(StoreError::Quota(m)) => error(Some(req), ErrorCode::QuotaExceeded, m),
        Err(StoreError::NotFound(m)) => error(Some(req), ErrorCode::UnknownNumber, m),
        Err(e) => error(Some(req), ErrorCode::Storage, e.to_string()),
    }
}

/// Closes a connection that has not logged in within `after` of its
/// hello: an endpoint that only says hello holds memory for nothing.
/// Logged-in sessions stay as long as QUIC keeps them alive.
async fn login_deadline(
    conn: quinn::Connection,
    mut account: watch::Receiver<Option<LoggedIn>>,
    after: Duration,
) {
    tokio::select! {
        r = tokio::time::timeout(after, account.wait_for(Option::is_some)) => {
            if r.is_err() {
                let secs = after.as_secs();
                tracing::info!(
                    "endpoint {} did not log in within {secs} s; closing",
                    conn.remote_address()
                );
                let reason = format!("no login within {secs} s");
                conn.close(quinn::VarInt::from_u32(7), reason.as_bytes());
            }
        }
        _ = conn.closed() => {}
    }
}

/// Reports the connection's new address when it migrates.
async fn watch_migration(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    sid: SessionId,
    observed: Arc<tokio::sync::Mutex<SocketAddr>>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = conn.closed() => return,
        }
        let mut last = observed.lock().await;
        let now = conn.remote_address();
        if now != *last {
            tracing::info!("session {sid} moved from {} to {now}", *last);
            *last = now;
            if shared
                .hub
                .send(Event::Moved { sid, observed: now })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A connected session as the hub sees it.
struct Live {
    conn: quinn::Connection,
    tx: mpsc::Sender<Out>,
    mail: Arc<Notify>,
    name: Option<String>,
    /// The hash of the token it logged in with.
    token_hash: Option<String>,
    kind: EndpointKind,
}

/// The task that owns routing state.
struct Hub {
    shared: Arc<Shared>,
    router: Router,
    sessions: HashMap<SessionId, Live>,
    relays: HashMap<CallId, Allocation>,
    /// When the CALL being routed now was read (taken by the RINGING it
    /// gets back, for the dial→ringing metric).
    call_read_at: Option<Instant>,
}

impl Hub {
    fn new(shared: Arc<Shared>, router: Router) -> Hub {
        Hub {
            shared,
            router,
            sessions: HashMap::new(),
            relays: HashMap::new(),
            call_read_at: None,
        }
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        loop {
            let ev = match self.router.poll_timeout() {
                Some(d) => tokio::select! {
                    ev = events.recv() => ev,
                    _ = tokio::time::sleep_until(d.into()) => {
                        self.router.handle_timeout(Instant::now());
                        self.drain();
                        continue;
                    }
                },
                None => events.recv().await,
            };
            let Some(ev) = ev else { return };
            self.handle(ev).await;
            self.drain();
            self.call_read_at = None;
        }
    }

    async fn handle(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Up {
                sid,
                fp,
                conn,
                tx,
                mail,
                name,
                terminal,
                kind,
            } => {
                self.router
                    .handle_session_up(sid, fp, conn.remote_address());
                if terminal {
                    self.router.allow_checks(sid);
                }
                self.sessions.insert(
                    sid,
                    Live {
                        conn,
                        tx,
                        mail,
                        name,
                        token_hash: None,
                        kind,
                    },
                );
            }
            Event::Down { sid } => {
                self.sessions.remove(&sid);
                self.router.handle_session_down(now, sid);
            }
            Event::Moved { sid, observed } => self.router.handle_session_moved(now, sid, observed),
            Event::LoggedIn {
                sid,
                account,
                numbers,
                token_hash,
            } => {
                if let Some(l) = self.sessions.get_mut(&sid) {
                    l.token_hash = Some(token_hash);
                }
                self.router.handle_login(now, sid, &account, numbers)
            }
            Event::Devices { account, reply } => {
                let _ = reply.send(self.devices(now, &account));
            }
            Event::SignOut {
                account,
                sid,
                reply,
            } => {
                let mine = self.router.sessions_of(&account).contains(&sid);
                let token = if mine {
                    self.end_session(now, sid, "this device was signed out on the web site")
                } else {
                    None
                };
                let _ = reply.send(token);
            }
            Event::Route {
                sid, msg, read_at, ..
            } => {
                if matches!(msg, DirMsg::Call { .. }) {
                    self.call_read_at = Some(read_at);
                }
                self.route(now, sid, msg)
            }
            Event::ForwardChanged { number, rules } => self.router.set_forwards(&number, rules),
            Event::Reload { logout, keep, done } => {
                let store = self.shared.store.clone();
                match tokio::task::spawn_blocking(move || number_table(store.as_ref())).await {
                    Ok(Ok(t)) => self.router.set_numbers(now, t),
                    Ok(Err(e)) => tracing::error!("reloading numbers: {e}"),
                    Err(e) => tracing::error!("reloading numbers: {e}"),
                }
                if let Some(account) = logout {
                    for sid in self.router.sessions_of(&account) {
                        if Some(sid) == keep {
                            continue;
                        }
                        self.end_session(
                            now,
                            sid,
                            "the account's password or name changed, or it was removed; log in again",
                        );
                    }
                }
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            Event::MailArrived { account } => {
                for sid in self.router.registered_sessions_of(&account) {
                    if let Some(l) = self.sessions.get(&sid) {
                        l.mail.notify_one();
                    }
                }
            }
            Event::Query { what, reply } => {
                let _ = reply.send(self.query(what));
            }
            Event::Reconfigure(cfg) => self.router.reconfigure(cfg.routing()),
            Event::Shutdown { done } => {
                self.router.shutdown(now);
                self.drain();
                let _ = done.send(());
            }
        }
    }

    /// Tell session `sid` why, close it and drop its bindings at once;
    /// the hash of the token it logged in with.
    fn end_session(&mut self, now: Instant, sid: SessionId, why: &str) -> Option<String> {
        let mut token = None;
        if let Some(l) = self.sessions.remove(&sid) {
            let _ =
                l.tx.try_send(Out::Msg(error(None, ErrorCode::BadToken, why)));
            let conn = l.conn.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.close(quinn::VarInt::from_u32(6), b"logged out");
            });
            token = l.token_hash;
        }
        self.router.handle_session_down(now, sid);
        token
    }

    fn devices(&self, now: Instant, account: &str) -> Vec<Device> {
        let ttl = self.shared.cfg().routing().binding_ttl;
        let mut out: Vec<Device> = self
            .router
            .sessions_of(account)
            .into_iter()
            .filter_map(|sid| {
                let live = self.sessions.get(&sid)?;
                let mut numbers = Vec::new();
                let mut refreshed: Option<u64> = None;
                let mut fp = String::new();
                for b in self.router.bindings_of(sid) {
                    numbers.push(b.number.clone());
                    let ago = ttl
                        .saturating_sub(b.expires.saturating_duration_since(now))
                        .as_secs();
                    refreshed = Some(refreshed.map_or(ago, |r: u64| r.min(ago)));
                    fp = b.fp.clone();
                }
                numbers.sort();
                if fp.is_empty() {
                    fp = keyline_net::peer_fingerprint(&live.conn).unwrap_or_default();
                }
                Some(Device {
                    session: sid,
                    address: live.conn.remote_address().to_string(),
                    name: live.name.clone(),
                    fingerprint: fp,
                    numbers,
                    refreshed_s_ago: refreshed,
                })
            })
            .collect();
        out.sort_by_key(|d| d.session);
        out
    }

    fn route(&mut self, now: Instant, sid: SessionId, msg: DirMsg) {
        let addrs =
            |v: &[String]| -> Vec<SocketAddr> { v.iter().filter_map(|a| a.parse().ok()).collect() };
        match msg {
            DirMsg::Register {
                req,
                numbers,
                candidates,
            } => self
                .router
                .handle_register(now, sid, req, numbers, addrs(&candidates)),
            DirMsg::Unregister { req, numbers } => {
                self.router.handle_unregister(now, sid, req, numbers)
            }
            DirMsg::Lookup { req, number } => {
                self.router
                    .handle_lookup(now, sid, req, &number, auth::new_call_token())
            }
            DirMsg::Call {
                req,
                number,
                from,
                candidates,
                hops,
                media_fp,
                handoff,
            } => {
                let own = addrs(&candidates);
                let media = media_fp.map(|fp| MediaEnd {
                    fp,
                    addrs: own.clone(),
                });
                self.router.handle_call_for(
                    now,
                    sid,
                    req,
                    &number,
                    from,
                    own,
                    hops,
                    Placing {
                        media,
                        handoff,
                        check_key: Some(auth::new_call_token()),
                    },
                )
            }
            DirMsg::Answer {
                req,
                call,
                media_fp,
                candidates,
            } => {
                let media = media_fp.map(|fp| MediaEnd {
                    fp,
                    addrs: addrs(&candidates),
                });
                self.router
                    .handle_answer_for(now, sid, req, call, auth::new_call_token(), media)
            }
            DirMsg::Reject { req, call } => self.router.handle_decline(now, sid, req, call, false),
            DirMsg::Busy { req, call } => self.router.handle_decline(now, sid, req, call, true),
            DirMsg::Redirect { req, call, number } => {
                self.router.handle_redirect(now, sid, req, call, &number)
            }
            DirMsg::Transfer {
                req,
                call,
                number,
                handoff,
            } => self
                .router
                .handle_transfer(now, sid, req, call, &number, handoff),
            DirMsg::Hangup { call } => self.router.handle_hangup(now, sid, call),
            DirMsg::Fallback { req, call } => self.router.handle_fallback(now, sid, req, call),
            _ => {}
        }
    }

    fn send(&mut self, sid: SessionId, msg: DirMsg) {
        let Some(l) = self.sessions.get(&sid) else {
            return;
        };
        if let DirMsg::Expect { from, .. } = &msg {
            // Someone else's look-up: another endpoint decides how many of
            // these come. With the queue half full the hint is lost (that
            // caller's look-up-only call does not ring here), so the rest
            // stays for this endpoint's own replies; otherwise anyone could
            // knock a number offline by looking it up fast enough.
            if l.tx.capacity() < CONTROL_QUEUE / 2 {
                tracing::debug!("session {sid} is behind: a look-up by {from} not announced");
                return;
            }
        }
        match l.tx.try_send(Out::Msg(msg)) {
            Ok(()) => {}
            Err(_) => {
                // An endpoint that cannot keep up with its own replies is
                // gone; its reader will report it down.
                l.conn
                    .close(quinn::VarInt::from_u32(5), b"control queue overflow");
            }
        }
    }

    /// The directory's address facing session `sid`, for relay sockets.
    fn ip_facing(&self, sid: Option<SessionId>) -> IpAddr {
        if let Some(ip) = self.shared.cfg().relay_ip {
            return ip;
        }
        let fallback = self.shared.local_addr.ip();
        sid.and_then(|s| self.sessions.get(&s))
            .and_then(|l| l.conn.local_ip())
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(fallback)
    }

    fn drain(&mut self) {
        while let Some(action) = self.router.poll_action() {
            match action {
                Action::Send { to, msg } => {
                    if matches!(msg, DirMsg::Ringing { .. }) {
                        if let Some(at) = self.call_read_at.take() {
                            self.shared
                                .metrics
                                .dial_to_ringing
                                .record(at.elapsed().as_secs_f64());
                        }
                    }
                    self.send(to, msg)
                }
                Action::AllocateRelay {
                    call,
                    caller,
                    callee,
                } => {
                    let (a, b) = match self.router.call(call) {
                        Some(c) => (Some(c.caller), Some(c.callee)),
                        None => (None, None),
                    };
                    let (ip_a, ip_b) = (self.ip_facing(a), self.ip_facing(b));
                    match relay::allocate(self.shared.relay.clone(), caller, ip_a, callee, ip_b) {
                        Ok(mut alloc) => {
                            let (cf, ef) = (alloc.caller_facing, alloc.callee_facing);
                            tracing::info!(
                                "call {call}: relaying {caller} <-> {cf} | {ef} <-> {callee}"
                            );
                            let first_media = alloc.first_callee_packet();
                            self.relays.insert(call, alloc);
                            self.router.handle_relay_ready(Instant::now(), call, cf, ef);
                            let answered = match self.router.call(call).map(|c| c.state) {
                                Some(CallState::Answered { at }) => Some(at),
                                _ => None,
                            };
                            if let (Some(at), Some(first_media), true) =
                                (answered, first_media, self.shared.metrics.is_on())
                            {
                                // Woken by the relay's first packet from the
                                // answering end, or ended by its release.
                                let h = self.shared.metrics.answer_to_media.clone();
                                tokio::spawn(async move {
                                    if let Some(d) =
                                        crate::metrics::answer_to_media(at, first_media).await
                                    {
                                        h.record(d.as_secs_f64());
                                    }
                                });
                            }
                        }
                        Err(e) => {
                            tracing::warn!("call {call}: relay allocation failed: {e}");
                            self.router
                                .handle_relay_failed(Instant::now(), call, &e.to_string());
                        }
                    }
                }
                Action::ReleaseRelay { call } => {
                    self.relays.remove(&call);
                }
                Action::Finished {
                    call,
                    from,
                    number,
                    answered,
                    reason,
                } => {
                    tracing::info!(
                        "call {call} {from} -> {number} ended: {} ({})",
                        reason.describe(),
                        if answered { "answered" } else { "not answered" }
                    );
                }
                Action::Notice(n) => self.notice(n),
                Action::Record(rec) => {
                    self.shared.metrics.call_ended(rec.outcome);
                    // Written off the hub's task; a failure costs only
                    // this entry of the history.
                    let now_ms = store::now_ms();
                    let entries = rec.entries(Instant::now(), now_ms);
                    let keep = self.shared.cfg().history.retention(now_ms);
                    let st = self.shared.store.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            store::blocking(&st, move |s| s.add_calls(&entries, keep)).await
                        {
                            tracing::warn!("call history: {e}");
                        }
                    });
                }
            }
        }
    }

    /// The login limiter's figures for `status`.
    fn logins(&self) -> Value {
        let tracked = self.shared.limiter.lock().map(|l| l.tracked()).ok();
        let (pairs, addresses, accounts) = tracked.unwrap_or_default();
        json!({
            "password_checks": self.shared.password_checks.load(Ordering::Relaxed),
            "hashing_threads": self.shared.hashing.threads(),
            "turned_away_busy": self.shared.hashing.stats().refused_busy.load(Ordering::Relaxed),
            "checked_at_floor": self.shared.hashing.stats().at_floor.load(Ordering::Relaxed),
            "tracked_account_addresses": pairs,
            "tracked_addresses": addresses,
            "tracked_accounts": accounts,
        })
    }

    /// A router notice as the control socket's event.
    fn notice(&self, n: Notice) {
        if self.shared.events.subscribers() == 0 {
            return;
        }
        let ev = match n {
            Notice::Bound {
                number,
                account,
                session,
                observed,
            } => api::Event::Registered {
                number,
                account,
                kind: self
                    .sessions
                    .get(&session)
                    .map_or(EndpointKind::Terminal, |l| l.kind),
                address: observed.to_string(),
            },
            Notice::Unbound {
                number,
                account,
                reason,
                ..
            } => api::Event::Unregistered {
                number,
                account,
                reason: reason.to_string(),
            },
            Notice::Ringing {
                call,
                from,
                number,
                dialled,
            } => api::Event::CallRinging {
                call,
                caller: from,
                callee: number,
                dialled,
            },
            Notice::Answered {
                call,
                from,
                number,
                relayed,
            } => api::Event::CallAnswered {
                call,
                caller: from,
                callee: number,
                relayed,
            },
            Notice::Relayed { call, from, number } => api::Event::CallRelayed {
                call,
                caller: from,
                callee: number,
            },
            Notice::Ended {
                call,
                from,
                number,
                outcome,
                reason,
                relayed,
            } => api::Event::CallEnded {
                call,
                caller: from,
                callee: number,
                outcome: outcome.as_str().to_string(),
                reason: serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                relayed,
            },
        };
        self.shared.publish(&ev);
    }

    fn query(&self, what: Query) -> QueryReply {
        let now = Instant::now();
        match what {
            Query::Ping => QueryReply::Pong,
            Query::Status => {
                let cfg = self.shared.cfg();
                let admitted = self.shared.gate.counts();
                QueryReply::Status(Box::new(api::Status {
                    api: api::API_VERSION,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    listen: self.shared.local_addr.to_string(),
                    fingerprint: self.shared.id.fingerprint.clone(),
                    state_dir: self.shared.state_dir.display().to_string(),
                    config_file: self
                        .shared
                        .config_file
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    last_reload: self.shared.last_reload.lock().ok().and_then(|r| r.clone()),
                    direct_connect: cfg.direct_connect.as_str().to_string(),
                    binding_ttl_secs: cfg.binding_ttl_secs,
                    uptime_s: self.shared.started.elapsed().as_secs(),
                    sessions: self.router.session_count(),
                    bindings: self.router.bindings().count(),
                    numbers: self.router.numbers().count(),
                    calls_active: self.router.calls().count(),
                    relays_active: self.relays.len(),
                    relay: json!(self.shared.relay.snapshot()),
                    logins: self.logins(),
                    connections: admitted.open,
                    max_connections: cfg.max_connections,
                    connections_refused: admitted.refused(),
                    admission: json!(admitted),
                    limits: json!(cfg.limits),
                    web: self.shared.web_addr.get().map(|a| format!("https://{a}/")),
                    mail_waiting: None,
                }))
            }
            Query::Bindings => {
                let mut v: Vec<BindingInfo> = self
                    .router
                    .bindings()
                    .map(|b| BindingInfo {
                        number: b.number.clone(),
                        account: b.account.clone(),
                        session: b.session,
                        observed: b.observed.to_string(),
                        candidates: b.candidates().iter().map(ToString::to_string).collect(),
                        fingerprint: b.fp.clone(),
                        expires_in_s: b.expires.saturating_duration_since(now).as_secs(),
                        since_s: now.saturating_duration_since(b.since).as_secs(),
                    })
                    .collect();
                v.sort_by(|a, b| a.number.cmp(&b.number));
                QueryReply::Bindings(v)
            }
            Query::Calls => QueryReply::Calls(
                self.router
                    .calls()
                    .map(|c| {
                        let (state, secs) = match c.state {
                            CallState::Ringing { .. } => ("ringing", now.duration_since(c.started)),
                            CallState::Answered { at } => ("answered", now.duration_since(at)),
                        };
                        CallInfo {
                            id: c.id,
                            from: c.from.clone(),
                            number: c.number.clone(),
                            dialled: c.dialled.clone(),
                            via: c.via.clone(),
                            state: state.to_string(),
                            seconds: secs.as_secs(),
                            policy: c.policy.as_str().to_string(),
                            relayed: matches!(c.relay, RelayState::Ready { .. }),
                        }
                    })
                    .collect(),
            ),
            Query::Online => {
                let mut online: HashMap<String, Vec<String>> = HashMap::new();
                for b in self.router.bindings() {
                    online
                        .entry(b.account.clone())
                        .or_default()
                        .push(b.number.clone());
                }
                QueryReply::Online(online)
            }
        }
    }
}

/// Ask the hub `what`.
pub(crate) async fn query_typed(shared: &Shared, what: Query) -> Result<QueryReply, String> {
    let (tx, rx) = oneshot::channel();
    shared
        .hub
        .send(Event::Query { what, reply: tx })
        .await
        .map_err(|_| "the directory is stopping".to_string())?;
    rx.await
        .map_err(|_| "the directory is stopping".to_string())
}

/// [`query_typed`] as the JSON the control socket gives (`{"ok": true,
/// ...}`), for the web site and the metrics.
pub(crate) async fn query_hub(shared: &Shared, what: Query) -> Value {
    let reply = match query_typed(shared, what).await {
        Ok(r) => r,
        Err(e) => return control::error(e),
    };
    match reply {
        QueryReply::Pong => json!({"ok": true}),
        QueryReply::Status(s) => api::Response::Status(s).to_json(),
        QueryReply::Bindings(bindings) => api::Response::Bindings { bindings }.to_json(),
        QueryReply::Calls(calls) => api::Response::Calls { calls }.to_json(),
        QueryReply::Online(online) => json!({"ok": true, "online": online}),
    }
}

/// How often the disk watcher looks at the state directory's free space.
const DISK_EVERY: Duration = Duration::from_secs(10);

/// Publishes the state directory's free space at start and whenever it
/// crosses [`api::DISK_LOW_BYTES`].
async fn watch_disk(shared: Arc<Shared>) {
    let mut low: Option<bool> = None;
    let mut tick = tokio::time::interval(DISK_EVERY);
    loop {
        tick.tick().await;
        let Some(free) = crate::metrics::disk_free_off_runtime(&shared.state_dir).await else {
            continue;
        };
        let now_low = free < api::DISK_LOW_BYTES;
        if low != Some(now_low) {
            if now_low {
                tracing::warn!("only {free} bytes free under the state directory");
            }
            low = Some(now_low);
            shared.publish(&api::Event::Disk {
                free_bytes: free,
                low: now_low,
            });
        }
    }
}
