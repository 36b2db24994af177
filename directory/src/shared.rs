//! What the directory's tasks and its web site share: [`Shared`], the
//! hub's inputs ([`Event`]) and queries (asked with [`query_typed`] and
//! [`query_hub`]), and password checks through the login limiter
//! ([`Shared::reserve_login`]) and the hashing pool. Below both `server`
//! and `web`: it imports neither.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use keyline_net::admission::Gate;
use keyline_net::relay::Counters;
use keyline_net::{control, Identity};
use keyline_proto::dir::{DirMsg, ForwardRule};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};

use crate::api::{self, BindingInfo, CallInfo, EndpointKind};
use crate::auth;
use crate::config::Config;
use crate::hashing::Refused;
use crate::ratelimit::{Attempt, Locked, LoginLimiter, Scope};
use crate::routing::{AccountNumbers, Request, SessionId};
use crate::store::Store;

/// What goes out on a session's control stream. Boxed: a session's queue
/// holds its slots for as long as it lives, 32 of them at least, and a
/// message inline is some 200 bytes.
#[derive(Debug)]
pub enum Out {
    Msg(Box<DirMsg>),
}

impl Out {
    pub fn msg(m: DirMsg) -> Out {
        Out::Msg(Box::new(m))
    }
}

/// Inputs of the hub task.
#[derive(Debug)]
pub enum Event {
    Up {
        sid: SessionId,
        fp: String,
        conn: quinn::Connection,
        /// The address last told to the router, shared with the
        /// connection (which reports a move itself when a REGISTER comes
        /// right after one).
        observed: Arc<std::sync::Mutex<std::net::SocketAddr>>,
        tx: mpsc::Sender<Out>,
        /// Wakes the session's mail delivery.
        mail: Arc<Notify>,
        /// The name the endpoint gave in its hello.
        name: Option<String>,
        /// The program and version it gave in its hello.
        client: Option<String>,
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
        numbers: AccountNumbers,
        /// The hash of the session token it logged in with (a device, to
        /// the web site's account page).
        token_hash: String,
    },
    /// The logged-in endpoints of `account`, for the web site.
    Devices {
        account: String,
        reply: oneshot::Sender<Vec<Device>>,
    },
    /// End session `sid` if it is `account`'s (on this node or, through
    /// the cluster, on the node that holds it).
    SignOut {
        account: String,
        sid: SessionId,
        reply: oneshot::Sender<SignedOut>,
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
    /// `account`'s numbers are now `numbers`, in order (another was made
    /// the first, the one callees see).
    AccountNumbers {
        account: String,
        numbers: Vec<String>,
    },
    /// A password (with `account`) or session token (without) checked for
    /// a login from `ip`, for the other nodes' limiters.
    LoginChecked {
        account: Option<String>,
        ip: IpAddr,
        ok: bool,
    },
    Query {
        what: Query,
        reply: oneshot::Sender<QueryReply>,
    },
    Reconfigure(Arc<Config>),
    /// What another node of the cluster tells this one.
    Cluster(crate::cluster::Inbound),
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// What became of a device signed out on the web site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedOut {
    /// Ended here; its token (hash) is to be revoked.
    Here(String),
    /// Another node holds it and was told to end it and revoke its token.
    Elsewhere,
    /// No such session of that account.
    NotFound,
}

/// A logged-in endpoint of an account, as the web site shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub session: SessionId,
    /// The address the directory sees it at.
    pub address: String,
    /// The name it gave in its hello.
    pub name: Option<String>,
    /// The program and version it gave in its hello.
    pub client: Option<String>,
    /// The cluster node it is connected to, when another than this one.
    pub node: Option<String>,
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

/// State shared by the directory's tasks and its web site.
pub struct Shared {
    pub id: Identity,
    pub store: Arc<dyn Store>,
    pub(crate) cfg: RwLock<Arc<Config>>,
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
    pub(crate) password_checks: AtomicU64,
    /// Who may connect: `max_connections` and the per-address limits.
    pub gate: Gate,
    pub started: Instant,
    pub last_reload: Mutex<Option<String>>,
    pub(crate) next_session: AtomicU64,
    /// Where the web site listens, once it does.
    pub web_addr: std::sync::OnceLock<SocketAddr>,
    pub metrics: crate::metrics::Metrics,
    /// What `subscribe`rs of the control socket get.
    pub events: control::Events,
    /// The link to the other nodes, when this node is one of a cluster.
    pub cluster: std::sync::OnceLock<crate::cluster::link::Link>,
    /// The number lists of accounts logged in here, one per account.
    pub(crate) lists: NumberLists,
}

/// One [`AccountNumbers`] per account for all its sessions: each login
/// reads the list from the store, and an equal list already held by
/// another session of the account is used instead of the new copy.
#[derive(Debug, Default)]
pub(crate) struct NumberLists {
    /// The lists by account, and how many were added since the last sweep.
    lists: Mutex<(HashMap<String, HeldList>, usize)>,
}

/// A list as [`NumberLists`] remembers it: gone once no session holds it.
type HeldList = std::sync::Weak<Vec<String>>;

impl NumberLists {
    /// Entries added between two sweeps of the lists no session holds.
    const SWEEP_EVERY: usize = 1024;

    pub(crate) fn share(&self, account: &str, numbers: Vec<String>) -> AccountNumbers {
        let Ok(mut g) = self.lists.lock() else {
            return Arc::new(numbers);
        };
        let (lists, added) = &mut *g;
        if let Some(held) = lists.get(account).and_then(std::sync::Weak::upgrade) {
            if *held == numbers {
                return held;
            }
        }
        let list = Arc::new(numbers);
        lists.insert(account.to_string(), Arc::downgrade(&list));
        *added += 1;
        if *added >= Self::SWEEP_EVERY {
            lists.retain(|_, w| w.strong_count() > 0);
            *added = 0;
        }
        list
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
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
            cluster: std::sync::OnceLock::new(),
            lists: NumberLists::default(),
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

    pub(crate) fn set_cfg(&self, cfg: Arc<Config>) {
        match self.cfg.write() {
            Ok(mut c) => *c = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
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
        self.shared
            .login_checked(Some(self.account.clone()), self.ip, ok);
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
    /// Tell the other nodes of a cluster that a password (or, without
    /// `account`, a session token) was checked: their limiters count it.
    /// Dropped when the hub is too busy to take it: the limit stays
    /// enforced on this node.
    pub(crate) fn login_checked(&self, account: Option<String>, ip: IpAddr, ok: bool) {
        if self.cluster.get().is_some() {
            let _ = self.hub.try_send(Event::LoginChecked { account, ip, ok });
        }
    }

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
/// ...}`), for the web site and the server's metrics scrape.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn list(ns: &[&str]) -> Vec<String> {
        ns.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn sessions_of_an_account_share_its_number_list_while_it_is_the_same() {
        let lists = NumberLists::default();
        let a = lists.share("alice", list(&["1001", "1002"]));
        let b = lists.share("alice", list(&["1001", "1002"]));
        assert!(Arc::ptr_eq(&a, &b));
        // Another account's equal list is its own.
        let c = lists.share("carol", list(&["1001", "1002"]));
        assert!(!Arc::ptr_eq(&a, &c));
        // A changed list (a number added, or another one first) is new,
        // and later logins share the new one; the old sessions keep theirs.
        let d = lists.share("alice", list(&["1002", "1001"]));
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(*a, list(&["1001", "1002"]));
        let e = lists.share("alice", list(&["1002", "1001"]));
        assert!(Arc::ptr_eq(&d, &e));
        // Once no session holds it, a list is not handed out again.
        drop((a, b, d, e));
        let f = lists.share("alice", list(&["1002", "1001"]));
        assert_eq!(Arc::strong_count(&f), 1);
    }

    #[test]
    fn lists_no_session_holds_are_swept() {
        let lists = NumberLists::default();
        let kept = lists.share("kept", list(&["1"]));
        for i in 0..(NumberLists::SWEEP_EVERY * 3) {
            drop(lists.share(&format!("gone{i}"), list(&["2"])));
        }
        let held = lists.lists.lock().unwrap().0.len();
        assert!(held <= NumberLists::SWEEP_EVERY + 1, "{held} entries held");
        assert!(Arc::ptr_eq(&kept, &lists.share("kept", list(&["1"]))));
    }
}
