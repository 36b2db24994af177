//! What the directory's tasks share: [`Shared`], the hub's inputs
//! ([`Event`]) and queries, the options a run starts with, and the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use keyline_net::admission::Gate;
use keyline_net::relay::Counters;
use keyline_net::{control, Identity};
use keyline_proto::dir::{DirMsg, ForwardRule};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};

use crate::api::{self, BindingInfo, CallInfo, EndpointKind};
use crate::config::Config;
use crate::ratelimit::LoginLimiter;
use crate::routing::{NumberInfo, Request, SessionId};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};

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
        request: Request,
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
    pub(super) cfg: RwLock<Arc<Config>>,
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
    pub(super) password_checks: AtomicU64,
    /// Who may connect: `max_connections` and the per-address limits.
    pub gate: Gate,
    pub started: Instant,
    pub last_reload: Mutex<Option<String>>,
    pub(super) next_session: AtomicU64,
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
    pub(super) fn new(
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

    pub fn cfg(&self) -> Arc<Config> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(super) fn set_cfg(&self, cfg: Arc<Config>) {
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

pub(super) fn number_table(store: &dyn Store) -> Result<HashMap<String, NumberInfo>, StoreError> {
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

/// Messages queued for one endpoint's control stream before it counts as
/// gone (its own replies) or misses look-up hints (half of it).
pub(super) const CONTROL_QUEUE: usize = 256;

/// Requests of one session the hub may hold at once.
pub(super) const IN_FLIGHT: usize = 64;

/// Free places a session's queue must have before its next request is
/// read: room for the answers to every request in flight and this one,
/// with as much again for what other sessions send it.
pub(super) const ROOM: usize = 2 * IN_FLIGHT;
