//! The gateway's tokio shell around the sans-IO switchboard.
//!
//! Tasks: one accept loop; one task per agent connection (reads its control
//! stream, forwards requests as [`Event`]s, writes what the switch sends
//! it); one switch task that owns the [`Switchboard`], the stations and the
//! relay allocations and is the only place call state changes; the control
//! socket; mDNS. Every channel is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use keyline_net::admission::{admit_incoming, Gate};
use keyline_net::lifecycle::{self, Signal, Signals};
use keyline_net::{control, mdns, pairing_code, peer_fingerprint, Identity};
use keyline_proto::call::{Action, CallState, Config as CallConfig, HandedOn, Line, Switchboard};

use crate::trunk::Trunks;
use keyline_proto::codec::{read_frame, write_frame, CodecError};
use keyline_proto::msg::{CallId, EndReason, FailReason, MediaPlan, Msg, ReqId, Role};
use keyline_proto::{number, MAX_MESSAGE, PROTOCOL_VERSION};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::api::{CallInfo, CallPhase, Event as ApiEvent, Status};
use crate::config::{Config, InternalMedia};
use crate::db::{now_ms, CdrRow, Db};
use crate::events::Publisher;
use crate::metrics::Metrics;
use keyline_net::relay::{self, Allocation, Counters};

/// What an approved station is called on the switch.
#[derive(Debug, Clone)]
pub struct Approved {
    pub ext: String,
    pub name: Option<String>,
}

/// What the admin decided about a waiting station.
#[derive(Debug, Clone)]
pub enum Decision {
    Approved(Approved),
    Denied,
}

/// Inputs of the switch task.
#[derive(Debug)]
pub enum Event {
    Up {
        ext: String,
        name: Option<String>,
        conn: quinn::Connection,
        tx: mpsc::Sender<Msg>,
    },
    Down {
        ext: String,
        conn_id: usize,
    },
    FromStation {
        ext: String,
        msg: Msg,
    },
    AddLine {
        ext: String,
    },
    Query {
        what: Query,
        reply: oneshot::Sender<QueryReply>,
    },
    Reload {
        cfg: Box<Config>,
    },
    /// What the disk watcher saw: whether a mailbox could store a
    /// message, and the bytes free under the state directory.
    Disk {
        writable: bool,
        free: u64,
    },
    SpeedDial {
        code: String,
        number: Option<String>,
    },
    /// The ring group was set (or cleared: the config's `reception`).
    RingGroup {
        group: Option<crate::db::RingGroup>,
    },
    /// The ring groups with extensions of their own changed.
    RingGroups {
        groups: Vec<crate::db::NamedRingGroup>,
    },
    /// The extension range set here changed (see
    /// [`Shared::extension_range`]).
    ExtensionRange,
    /// The mailbox finished with a caller.
    VoicemailDone {
        call: CallId,
    },
    /// A mailbox changed: tell its station how many messages wait.
    MessageWaiting {
        ext: String,
    },
    /// A text was stored for `to`: deliver it if the station is online.
    TextStored {
        to: String,
        text: Msg,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// The directory uplink or an outside call has news.
    Trunk(crate::trunk::TrunkEvent),
}

/// What the control API asks of the switch task.
#[derive(Debug, Clone)]
pub enum Query {
    Status,
    Calls,
    Online,
    /// End a call in progress.
    Hangup {
        call: CallId,
    },
    /// An extension's forwarding and do-not-disturb were stored: use them
    /// and show them to its station.
    Settings {
        ext: String,
        settings: keyline_proto::msg::LineSettings,
    },
    /// An extension was taken away or renumbered: forget the line and
    /// drop its station (which reconnects as what it now is).
    DropLine {
        ext: String,
        why: &'static str,
    },
}

/// The switch task's answer to a [`Query`].
#[derive(Debug)]
pub enum QueryReply {
    Status(Box<Status>),
    Calls(Vec<CallInfo>),
    /// Extension and address of every station online.
    Online(Vec<(String, String)>),
    Done(std::result::Result<(), String>),
}

/// State shared by the gateway's tasks.
pub struct Shared {
    pub id: Identity,
    pub db: Db,
    cfg: RwLock<Config>,
    pub state_dir: PathBuf,
    pub local_addr: SocketAddr,
    pub relay: Arc<Counters>,
    pub events: mpsc::Sender<Event>,
    /// What the gateway tells subscribers.
    pub publisher: Publisher,
    /// Connections of unapproved stations waiting for `approve`.
    pub pending: Mutex<HashMap<String, oneshot::Sender<Decision>>>,
    /// Held while a new station is counted against `max_pending` and
    /// added to `pending`: stations that say hello at the same moment are
    /// counted one after the other, so no more than the cap ever wait.
    pub enrolling: tokio::sync::Mutex<()>,
    /// Callers expected at a mailbox, by the call's media token.
    pub vm_jobs: Mutex<HashMap<String, crate::voicemail::Job>>,
    /// The directory connection while the office is registered (for
    /// texts to outside numbers).
    pub dir_client: Mutex<Option<keyline_dirclient::client::DirClient>>,
    /// Stations seen by mDNS (a hint only).
    pub discovered: Mutex<HashMap<String, mdns::Found>>,
    pub started: Instant,
    /// The admin site's state, as `status` shows it.
    pub admin: RwLock<Value>,
    /// Wakes the admin site to look again (a password was just set).
    pub admin_wake: tokio::sync::Notify,
    pub metrics: Metrics,
    /// Who may connect: `max_connections` and the per-address limits.
    pub gate: Gate,
    /// The extension range set with `extension-range set` or on the admin
    /// site (kept in SQLite); it wins over the configuration file's.
    pub ext_range_set: RwLock<Option<[u32; 2]>>,
}

impl Shared {
    /// The waiting stations changed: keep the gauge right.
    pub fn pending_changed(&self) {
        let n = self.pending.lock().map(|p| p.len()).unwrap_or(0);
        self.metrics.enrolments_pending.set(n as f64);
    }

    /// Where the admin site is served, or why not (for `status`).
    pub fn admin_status(&self) -> Value {
        self.admin.read().map(|a| a.clone()).unwrap_or(Value::Null)
    }

    /// The configuration in force now.
    pub fn cfg(&self) -> Config {
        self.cfg.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// The extensions stations and ring groups may have, lowest and
    /// highest: the range set here (SQLite) once there is one, else the
    /// configuration file's `extension_range`. Every reader of the range
    /// goes through this.
    pub fn extension_range(&self) -> [u32; 2] {
        self.extension_range_and_source().0
    }

    /// [`Self::extension_range`] and where it comes from: `set-here` or
    /// `config`.
    pub fn extension_range_and_source(&self) -> ([u32; 2], &'static str) {
        match self.ext_range_set.read().ok().and_then(|r| *r) {
            Some(r) => (r, "set-here"),
            None => (self.cfg().extension_range, "config"),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Command-line settings that win over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub internal_media: Option<InternalMedia>,
    pub ring_timeout: Option<u64>,
    pub no_mdns: bool,
    pub no_voicemail: bool,
}

/// Options given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    /// The TOML file, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    pub overrides: Overrides,
}

/// The file (or the embedded defaults) with the command line on top.
pub fn load_config(opts: &RunOptions) -> Result<Config> {
    let mut config = match &opts.config_file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    let o = &opts.overrides;
    if let Some(l) = o.listen {
        config.listen = l;
    }
    if let Some(m) = o.internal_media {
        config.internal_media = m;
    }
    if let Some(t) = o.ring_timeout {
        config.ring_timeout_secs = t;
    }
    if o.no_mdns {
        config.mdns = false;
    }
    if o.no_voicemail {
        config.voicemail = false;
    }
    config.validate()?;
    Ok(config)
}

/// Run the gateway until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    let cfg = load_config(&opts)?;
    let mut signals = Signals::new().context("installing signal handlers")?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "gatewayd")?;
    let id = Identity::load_or_create(&state_dir, "keyline-gateway")?;
    let db = Db::open(&state_dir.join("gatewayd.sqlite"))?;
    // What a kill left of voice messages being written, before any caller
    // reaches a mailbox.
    let (dir2, db2, max_secs) = (state_dir.clone(), db.clone(), cfg.voicemail_max_secs);
    match tokio::task::spawn_blocking(move || crate::voicemail::sweep(&dir2, &db2, max_secs))
        .await?
    {
        Ok(s) if s.removed.is_empty() && s.recovered.is_empty() => {}
        Ok(s) => tracing::info!(
            "voicemail at start-up: {} partial files removed, {} whole messages recovered",
            s.removed.len(),
            s.recovered.len()
        ),
        Err(e) => tracing::warn!("voicemail at start-up: {e:#}"),
    }
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let endpoint = keyline_net::make_endpoint(cfg.listen, &id)?;
    let local_addr = endpoint.local_addr()?;
    let (events_tx, events_rx) = mpsc::channel(1024);
    let metrics = match &cfg.metrics {
        Some(_) => Metrics::install()?,
        None => Metrics::off(),
    };
    let configured_uplink = cfg.directory.is_some() || cfg.embedded_directory.is_some();
    metrics.uplink(if configured_uplink {
        "connecting"
    } else {
        "off"
    });
    let gate = Gate::new(cfg.admission().map_err(anyhow::Error::msg)?);
    let stored_range = db.extension_range()?.map(|(lo, hi)| [lo, hi]);
    let shared = Arc::new(Shared {
        id,
        db,
        cfg: RwLock::new(cfg),
        state_dir: state_dir.clone(),
        local_addr,
        relay: Arc::new(Counters::default()),
        events: events_tx,
        publisher: Publisher::new(),
        pending: Mutex::new(HashMap::new()),
        enrolling: tokio::sync::Mutex::new(()),
        vm_jobs: Mutex::new(HashMap::new()),
        dir_client: Mutex::new(None),
        discovered: Mutex::new(HashMap::new()),
        started: Instant::now(),
        admin: RwLock::new(json!({"state": "off"})),
        admin_wake: tokio::sync::Notify::new(),
        metrics,
        gate,
        ext_range_set: RwLock::new(stored_range),
    });
    if let Err(e) = crate::admin::start(shared.clone()).await {
        tracing::warn!("the admin site is off: {e:#}");
        if let Ok(mut a) = shared.admin.write() {
            *a = json!({"state": "off", "why": format!("{e:#}")});
        }
    }
    if let Some(m) = shared.cfg().metrics {
        shared.metrics.spawn_upkeep();
        crate::metrics::serve(m.listen, shared.metrics.clone(), shared.relay.clone()).await?;
    }

    let switch = Switch::new(shared.clone())?;
    let switch_task = tokio::spawn(switch.run(events_rx));
    tokio::spawn(watch_disk(shared.clone()));
    tokio::spawn(prune_pending(shared.clone()));

    {
        let shared = shared.clone();
        let events = shared.publisher.control();
        tokio::spawn(control::serve_with_events(ctl, events, move |req| {
            let shared = shared.clone();
            async move { crate::control::handle_control(&shared, req).await }
        }));
    }

    let mdns = if shared.cfg().mdns {
        match start_mdns(&shared) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("mDNS unavailable, stations must be given --gateway: {e:#}");
                None
            }
        }
    } else {
        None
    };

    tracing::info!(
        "keyline-gatewayd listening on {local_addr} (QUIC), state in {}, fingerprint {}",
        state_dir.display(),
        shared.id.fingerprint
    );
    println!(
        "keyline-gatewayd ready: udp {local_addr}, state {}, internal media {}",
        state_dir.display(),
        shared.cfg().internal_media.as_str()
    );

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
                            if let Err(e) = serve_station(shared, conn).await {
                                tracing::info!("station {remote}: {e:#}");
                            }
                        }
                        Err(e) => tracing::debug!("handshake with {remote} failed: {e}"),
                    }
                });
            }
        })
    };

    let (embedded, dir_cfg) = match shared.cfg().embedded_directory {
        Some(e) => {
            let (task, d) = crate::trunk::start_embedded(&state_dir, &e).await?;
            (Some(task), Some(d))
        }
        None => (None, shared.cfg().directory),
    };
    let uplink =
        dir_cfg.map(|d| tokio::spawn(crate::trunk::uplink(shared.clone(), endpoint.clone(), d)));

    lifecycle::ready("0 extensions online, 0 calls in progress");
    {
        let shared = shared.clone();
        lifecycle::spawn_watchdog(move || {
            let shared = shared.clone();
            async move {
                matches!(
                    query_switch(&shared, Query::Status).await,
                    Ok(QueryReply::Status(_))
                )
            }
        });
    }
    while let Signal::Reload = signals.recv().await {
        reload(&shared, &opts).await;
    }
    lifecycle::stopping("ending calls");
    tracing::info!("stopping: ending calls");
    let (done_tx, done_rx) = oneshot::channel();
    if shared
        .events
        .send(Event::Shutdown { done: done_tx })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    }
    accept.abort();
    if let Some(u) = uplink {
        u.abort();
    }
    if let Some(e) = embedded {
        e.stop().await;
    }
    // Give writers a moment to put the goodbyes on the wire.
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"gateway stopping");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Some(m) = mdns {
        m.shutdown().await;
    }
    switch_task.abort();
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

/// SIGHUP: validate the new configuration first; keep the old one on error.
async fn reload(shared: &Arc<Shared>, opts: &RunOptions) {
    lifecycle::reloading();
    match load_config(opts) {
        Ok(new) => {
            let old = shared.cfg();
            let mut note = String::new();
            if new.listen != old.listen || new.mdns != old.mdns || new.name != old.name {
                note = " (listen, mdns and name take effect at the next restart)".into();
            }
            if let Ok(a) = new.admission() {
                shared.gate.set_limits(a);
            }
            if let Ok(mut c) = shared.cfg.write() {
                *c = new.clone();
            }
            let _ = shared
                .events
                .send(Event::Reload { cfg: Box::new(new) })
                .await;
            tracing::info!("configuration reloaded{note}");
            lifecycle::ready(&format!("configuration reloaded{note}"));
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the previous configuration: {e:#}");
            lifecycle::ready(&format!(
                "reload failed, keeping the previous configuration: {e:#}"
            ));
        }
    }
}

fn start_mdns(shared: &Arc<Shared>) -> Result<mdns::Mdns> {
    let m = mdns::Mdns::new()?;
    let instance = shared
        .cfg()
        .name
        .clone()
        .unwrap_or_else(|| format!("keyline-gateway-{}", &shared.id.fingerprint[..8]));
    m.advertise(
        &instance,
        shared.local_addr.port(),
        &[
            ("role", "gateway"),
            ("fp", &shared.id.fingerprint),
            ("v", &PROTOCOL_VERSION.to_string()),
        ],
    )?;
    let rx = m.browse()?;
    let shared = shared.clone();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv_async().await {
            if let mdns_sd::ServiceEvent::ServiceResolved(rs) = ev {
                let found = mdns::parse(&rs);
                if found.role == "agent" {
                    tracing::debug!("mDNS: station {} at {:?}", found.fullname, found.addrs);
                    if let Ok(mut d) = shared.discovered.lock() {
                        d.insert(found.fullname.clone(), found);
                    }
                }
            }
        }
    });
    Ok(m)
}

async fn send_msg(send: &mut quinn::SendStream, msg: &Msg) -> Result<()> {
    write_frame(send, msg, MAX_MESSAGE)
        .await
        .context("writing to the station")
}

/// What a station's next frame was.
enum Incoming {
    Msg(Msg),
    /// A well-formed message of a kind we do not know: answer, carry on.
    Unknown(String),
    Closed,
}

async fn next_msg(recv: &mut quinn::RecvStream) -> Result<Incoming> {
    let Some(body) = read_frame(recv, MAX_MESSAGE).await? else {
        return Ok(Incoming::Closed);
    };
    match Msg::from_cbor(&body) {
        Ok(m) => Ok(Incoming::Msg(m)),
        Err(CodecError::UnknownKind(k)) => Ok(Incoming::Unknown(k)),
        // Kept a `CodecError` underneath, so callers can tell garbage
        // from a lost connection.
        Err(e) => Err(anyhow::Error::new(e).context("protocol violation")),
    }
}

/// How often the free space under the state directory is checked.
const DISK_CHECK: Duration = Duration::from_secs(2);

/// Room a mailbox needs to take a message: the longest message at up to
/// 64 kbit/s, and a mebibyte for the database.
fn room_for_a_message(cfg: &Config) -> u64 {
    cfg.voicemail_max_secs.saturating_mul(8 * 1024) + (1 << 20)
}

/// Watches the free space under the state directory: tells the switch
/// when the mailboxes can take a message and when not (so that callers
/// are not sent to one that cannot store what they say), and writes the
/// call records kept in memory while the disk was full once there is
/// room.
async fn watch_disk(shared: Arc<Shared>) {
    let mut last: Option<bool> = None;
    let mut tick = tokio::time::interval(DISK_CHECK);
    loop {
        tick.tick().await;
        let dir = &shared.state_dir;
        // statvfs can stall on a slow file system: off the runtime.
        let stat = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&dir)).await
        };
        let free = match stat {
            Ok(Ok(v)) => v.blocks_available().saturating_mul(v.fragment_size()),
            Ok(Err(e)) => {
                tracing::debug!("statvfs {}: {e}", dir.display());
                continue;
            }
            Err(e) => {
                tracing::debug!("statvfs {}: {e}", dir.display());
                continue;
            }
        };
        let writable = free >= room_for_a_message(&shared.cfg());
        if last != Some(writable) {
            match (writable, last.is_some()) {
                (false, _) => tracing::warn!(
                    "only {free} bytes free under {}: voicemail takes no messages until there is room",
                    dir.display()
                ),
                (true, true) => tracing::info!(
                    "{free} bytes free under {} again: voicemail takes messages",
                    dir.display()
                ),
                (true, false) => {}
            }
            last = Some(writable);
        }
        if shared
            .events
            .send(Event::Disk { writable, free })
            .await
            .is_err()
        {
            return;
        }
        if writable && shared.db.unwritten_count() > 0 {
            let db = shared.db.clone();
            match tokio::task::spawn_blocking(move || db.write_unwritten()).await {
                Ok(Ok(n)) => {
                    tracing::info!("wrote {n} call record(s) kept while the disk was full")
                }
                Ok(Err(e)) => tracing::warn!("{e:#}"),
                Err(e) => tracing::warn!("writing kept call records: {e}"),
            }
        }
    }
}

/// Serve one station's connection from hello to goodbye.
async fn serve_station(shared: Arc<Shared>, conn: quinn::Connection) -> Result<()> {
    let fp = peer_fingerprint(&conn).context("the station presented no certificate")?;
    let addr = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("no control stream within 10 s")??;
    let name = match tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv))
        .await
        .context("no hello within 10 s")?
    {
        Ok(Incoming::Msg(Msg::MediaHello { call, token })) => {
            // A caller reaching a mailbox: the gateway is the media end.
            let hello = keyline_net::medialink::Hello::new(call, token, send);
            return crate::voicemail::serve(shared, conn, hello).await;
        }
        Ok(Incoming::Msg(Msg::Hello {
            version,
            role: Role::Agent,
            name,
        })) => {
            if version != PROTOCOL_VERSION {
                let _ = send_msg(
                    &mut send,
                    &Msg::Error {
                        req: None,
                        code: "version".into(),
                        message: format!(
                            "protocol version {version} is not supported (this gateway speaks {PROTOCOL_VERSION})"
                        ),
                    },
                )
                .await;
                conn.close(quinn::VarInt::from_u32(2), b"unsupported version");
                bail!("unsupported protocol version {version}");
            }
            name.map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
        }
        Ok(_) => {
            conn.close(quinn::VarInt::from_u32(1), b"expected hello");
            bail!("the first message was not a station hello");
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
            return Err(e);
        }
    };

    let db = shared.db.clone();
    let fp2 = fp.clone();
    let (row, denied) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((db.agent(&fp2)?, db.is_denied(&fp2)?))
    })
    .await??;
    let approved = match row {
        _ if denied => {
            let _ = send_msg(
                &mut send,
                &Msg::Error {
                    req: None,
                    code: "denied".into(),
                    message: "the office administrator refused this station".into(),
                },
            )
            .await;
            let _ = send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(quinn::VarInt::from_u32(6), b"denied");
            bail!("station {addr} was denied");
        }
        Some(r) if r.state == "approved" => {
            let db = shared.db.clone();
            let (fp2, a) = (fp.clone(), addr.to_string());
            let _ = tokio::task::spawn_blocking(move || db.touch(&fp2, &a)).await;
            Approved {
                ext: r.ext.context("approved station without extension")?,
                name: r.name,
            }
        }
        _ => match wait_for_approval(&shared, &fp, name, addr, &mut send, &mut recv).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Garbage from a waiting station is refused as it is from
                // any other, with a close that says why.
                if let Some(
                    CodecError::Malformed(_) | CodecError::TooLarge { .. } | CodecError::Encode(_),
                ) = e.downcast_ref::<CodecError>()
                {
                    conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
                }
                return Err(e);
            }
        },
    };

    send_msg(
        &mut send,
        &Msg::Registered {
            ext: approved.ext.clone(),
            name: approved.name.clone(),
        },
    )
    .await?;
    let ext = approved.ext.clone();
    tracing::info!("extension {ext} online from {addr}");
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let writer_conn = conn.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if send_msg(&mut send, &m).await.is_err() {
                writer_conn.close(quinn::VarInt::from_u32(3), b"write failed");
                break;
            }
        }
    });
    shared
        .events
        .send(Event::Up {
            ext: ext.clone(),
            name: approved.name,
            conn: conn.clone(),
            tx: tx.clone(),
        })
        .await
        .context("switch stopped")?;

    let result = station_loop(&shared, &ext, &tx, &mut recv).await;
    if let Err(e) = &result {
        tracing::warn!("extension {ext} ({addr}): {e:#}; dropping it");
        conn.close(quinn::VarInt::from_u32(1), b"protocol violation");
    }
    let _ = shared
        .events
        .send(Event::Down {
            ext: ext.clone(),
            conn_id: conn.stable_id(),
        })
        .await;
    tracing::info!("extension {ext} offline");
    result
}

async fn station_loop(
    shared: &Arc<Shared>,
    ext: &str,
    tx: &mpsc::Sender<Msg>,
    recv: &mut quinn::RecvStream,
) -> Result<()> {
    loop {
        let msg = match next_msg(recv).await {
            Ok(Incoming::Msg(m)) => m,
            Ok(Incoming::Unknown(kind)) => {
                let _ = tx.try_send(Msg::Error {
                    req: None,
                    code: "unknown-kind".into(),
                    message: format!("unknown message kind {kind:?}"),
                });
                continue;
            }
            Ok(Incoming::Closed) => return Ok(()),
            Err(e) => {
                // A reset or lost connection is not a protocol violation.
                if let Some(CodecError::Io(_) | CodecError::Closed) = e.downcast_ref::<CodecError>()
                {
                    return Ok(());
                }
                return Err(e);
            }
        };
        let msg = match msg {
            Msg::Ping { n } => {
                let _ = tx.try_send(Msg::Pong { n });
                continue;
            }
            Msg::Dial { req, number } => match number::canonicalize(&number) {
                Ok(n) => Msg::Dial { req, number: n },
                Err(e) => {
                    let _ = tx.try_send(Msg::DialFailed {
                        req,
                        reason: FailReason::InvalidNumber,
                        message: e.to_string(),
                    });
                    continue;
                }
            },
            m @ (Msg::Answer { .. }
            | Msg::Reject { .. }
            | Msg::Hangup { .. }
            | Msg::Hold { .. }
            | Msg::ConsultComplete { .. }) => m,
            Msg::Consult { req, call, target } => match transfer_target(tx, req, call, &target) {
                Some(target) => Msg::Consult { req, call, target },
                None => continue,
            },
            Msg::Transfer { req, call, target } => match transfer_target(tx, req, call, &target) {
                Some(target) => Msg::Transfer { req, call, target },
                None => continue,
            },
            Msg::SendText { req, to, body } => {
                let reply = send_text(shared, ext, &to, &body).await;
                let _ = tx.try_send(match reply {
                    Ok(id) => Msg::TextSent { req, id },
                    Err(e) => Msg::Error {
                        req: Some(req),
                        code: "text".into(),
                        message: format!("{e:#}"),
                    },
                });
                continue;
            }
            Msg::VoicemailList { req } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let items =
                    tokio::task::spawn_blocking(move || crate::voicemail::list(&sh, &me)).await;
                let _ = tx.try_send(match items {
                    Ok(Ok(items)) => Msg::Voicemails { req, items },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                });
                continue;
            }
            Msg::VoicemailFetch { req, id, offset } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let got = tokio::task::spawn_blocking(move || {
                    crate::voicemail::chunk(&sh, &me, id, offset)
                })
                .await;
                let reply = match got {
                    Ok(Ok((total, data))) => Msg::VoicemailChunk {
                        req,
                        id,
                        offset,
                        total,
                        data,
                    },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                };
                // Chunks are large: wait for room rather than drop one.
                let _ = tx.send(reply).await;
                if offset == 0 {
                    let _ = shared
                        .events
                        .send(Event::MessageWaiting {
                            ext: ext.to_string(),
                        })
                        .await;
                }
                continue;
            }
            Msg::VoicemailDelete { req, id } => {
                let (sh, me) = (shared.clone(), ext.to_string());
                let done = tokio::task::spawn_blocking(move || {
                    crate::voicemail::delete(&sh, &me, id)?;
                    crate::voicemail::list(&sh, &me)
                })
                .await;
                let _ = tx.try_send(match done {
                    Ok(Ok(items)) => Msg::Voicemails { req, items },
                    Ok(Err(e)) => vm_error(req, e),
                    Err(e) => vm_error(req, e.into()),
                });
                let _ = shared
                    .events
                    .send(Event::MessageWaiting {
                        ext: ext.to_string(),
                    })
                    .await;
                continue;
            }
            Msg::ContactList { req } => {
                let (db, me) = (shared.db.clone(), ext.to_string());
                let items = tokio::task::spawn_blocking(move || contacts(&db, &me)).await;
                let _ = tx.try_send(match items {
                    Ok(Ok(items)) => Msg::Contacts { req, items },
                    Ok(Err(e)) => contacts_error(req, e),
                    Err(e) => contacts_error(req, e.into()),
                });
                continue;
            }
            Msg::TextRead { ids } => {
                let db = shared.db.clone();
                let me = ext.to_string();
                let _ = tokio::task::spawn_blocking(move || db.mark_read(&me, &ids)).await;
                continue;
            }
            other => {
                let _ = tx.try_send(Msg::Error {
                    req: None,
                    code: "unexpected".into(),
                    message: format!("a station may not send {:?}", other.kind()),
                });
                continue;
            }
        };
        shared
            .events
            .send(Event::FromStation {
                ext: ext.to_string(),
                msg,
            })
            .await
            .context("switch stopped")?;
    }
}

fn vm_error(req: u64, e: anyhow::Error) -> Msg {
    Msg::Error {
        req: Some(req),
        code: "voicemail".into(),
        message: format!("{e:#}"),
    }
}

/// The office's contacts as station `me` sees them: every other approved
/// station (by extension) and every short code.
fn contacts(db: &Db, me: &str) -> Result<Vec<keyline_proto::msg::ContactInfo>> {
    use keyline_proto::msg::ContactInfo;
    let mut items: Vec<ContactInfo> = db
        .agents()?
        .into_iter()
        .filter(|a| a.state == "approved")
        .filter_map(|a| {
            let ext = a.ext?;
            (ext != me).then_some(ContactInfo {
                name: a.name,
                number: ext,
                code: None,
            })
        })
        .collect();
    items.extend(
        db.speed_dials()?
            .into_iter()
            .map(|(code, number)| ContactInfo {
                name: None,
                number,
                code: Some(code),
            }),
    );
    Ok(items)
}

fn contacts_error(req: u64, e: anyhow::Error) -> Msg {
    Msg::Error {
        req: Some(req),
        code: "contacts".into(),
        message: format!("{e:#}"),
    }
}

/// Longest text message accepted, in bytes.
const MAX_TEXT: usize = 4096;

/// A transfer or consultation target as the switchboard takes it
/// (canonical); an invalid one is refused to the station here.
fn transfer_target(
    tx: &mpsc::Sender<Msg>,
    req: ReqId,
    call: CallId,
    target: &str,
) -> Option<String> {
    match number::canonicalize(target) {
        Ok(t) => Some(t),
        Err(e) => {
            let _ = tx.try_send(Msg::TransferFailed {
                req,
                call,
                reason: FailReason::InvalidNumber,
                message: e.to_string(),
            });
            None
        }
    }
}

/// Store a text from `from` for the extension `to` and push it if online.
async fn send_text(shared: &Arc<Shared>, from: &str, to: &str, body: &str) -> Result<u64> {
    if body.trim().is_empty() {
        bail!("empty message");
    }
    if body.len() > MAX_TEXT {
        bail!(
            "message too long ({} bytes, at most {MAX_TEXT})",
            body.len()
        );
    }
    let to = number::canonicalize(to)?;
    let db = shared.db.clone();
    let known = {
        let (db, to) = (db.clone(), to.clone());
        tokio::task::spawn_blocking(move || db.agents())
            .await??
            .into_iter()
            .any(|a| a.ext.as_deref() == Some(to.as_str()))
    };
    if !known {
        return send_outside_text(shared, &to, body).await;
    }
    let (f, t, b) = (from.to_string(), to.clone(), body.to_string());
    let row = tokio::task::spawn_blocking(move || db.insert_text(&f, &t, &b)).await??;
    let id = row.id as u64;
    let _ = shared
        .events
        .send(Event::TextStored {
            to,
            text: Msg::Text {
                id,
                from: row.sender,
                body: row.body,
                sent_ms: row.sent_ms,
            },
        })
        .await;
    Ok(id)
}

/// A text for an outside number: the directory stores it until the
/// recipient is online, sent as the office number.
async fn send_outside_text(shared: &Arc<Shared>, to: &str, body: &str) -> Result<u64> {
    let [lo, hi] = shared.extension_range();
    let ext_shaped = to.bytes().all(|b| b.is_ascii_digit())
        && to.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n));
    let client = shared.dir_client.lock().ok().and_then(|c| c.clone());
    let Some(client) = client.filter(|_| !ext_shaped) else {
        bail!("unknown number {to}");
    };
    let id = client
        .leave_mail(
            to,
            keyline_proto::dir::MailKind::Text,
            body.as_bytes(),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{to}: {e}"))?;
    tracing::info!("text {id} for {to} left with the directory");
    Ok(id)
}

/// Hold an unapproved station until the admin approves its code. `None`
/// when it went away first.
async fn wait_for_approval(
    shared: &Arc<Shared>,
    fp: &str,
    name: Option<String>,
    addr: SocketAddr,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<Option<Approved>> {
    let code = pairing_code(fp, &shared.id.fingerprint);
    let enrolling = shared.enrolling.lock().await;
    let db = shared.db.clone();
    let name2 = name.clone();
    let (fp2, code2, a) = (fp.to_string(), code.clone(), addr.to_string());
    let mut waiting = waiting_stations(shared);
    waiting.push(fp.to_string());
    let (cfg, now) = (shared.cfg(), now_ms());
    let (cap, before) = (cfg.max_pending, now - forget_ms(&cfg));
    let left = tokio::task::spawn_blocking(move || {
        db.upsert_pending(&fp2, &code2, name.as_deref(), &a)?;
        db.prune_pending(before, cap, &waiting)
            .map(|(_, left)| left)
    })
    .await??;
    if left > cap {
        // As many stations as the gateway remembers are connected and
        // waiting: this one is turned away rather than one of them.
        let db = shared.db.clone();
        let fp2 = fp.to_string();
        tokio::task::spawn_blocking(move || db.forget_pending(&fp2)).await??;
        send_msg(
            send,
            &Msg::Error {
                req: None,
                code: "too-many-waiting".into(),
                message: format!(
                    "{cap} stations are already waiting for approval; try again later"
                ),
            },
        )
        .await?;
        let _ = send.finish();
        // Give the error a moment on the wire before the connection goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        bail!("{cap} stations already wait for approval: station {addr} turned away");
    }
    let (tx, mut rx) = oneshot::channel();
    if let Ok(mut p) = shared.pending.lock() {
        p.insert(fp.to_string(), tx);
    }
    drop(enrolling);
    shared.pending_changed();
    tracing::info!("station {addr} waits for approval with code {code}");
    send_msg(send, &Msg::Pending { code: code.clone() }).await?;
    shared.publisher.publish(&ApiEvent::EnrolmentPending {
        fingerprint: fp.to_string(),
        code,
        name: name2,
        addr: addr.to_string(),
    });
    let outcome = loop {
        tokio::select! {
            a = &mut rx => match a {
                Ok(Decision::Approved(a)) => break Some(a),
                Ok(Decision::Denied) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "denied".into(),
                        message: "the office administrator refused this station".into(),
                    }).await?;
                    let _ = send.finish();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(None);
                }
                Err(_) => break None,
            },
            m = next_msg(recv) => match m {
                Ok(Incoming::Msg(Msg::Dial { req, .. })) => {
                    send_msg(send, &Msg::DialFailed {
                        req,
                        reason: FailReason::NotAllowed,
                        message: "this station is waiting for approval".into(),
                    }).await?;
                }
                Ok(Incoming::Msg(Msg::Ping { n })) => send_msg(send, &Msg::Pong { n }).await?,
                Ok(Incoming::Msg(other)) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "not-approved".into(),
                        message: format!("{} is not allowed before approval", other.kind()),
                    }).await?;
                }
                Ok(Incoming::Unknown(kind)) => {
                    send_msg(send, &Msg::Error {
                        req: None,
                        code: "unknown-kind".into(),
                        message: format!("unknown message kind {kind:?}"),
                    }).await?;
                }
                Ok(Incoming::Closed) => break None,
                Err(e) => {
                    pending_left(shared, fp).await;
                    return Err(e);
                }
            }
        }
    };
    if outcome.is_none() {
        pending_left(shared, fp).await;
    }
    Ok(outcome)
}

/// Fingerprints of the stations connected and waiting for approval.
fn waiting_stations(shared: &Shared) -> Vec<String> {
    shared
        .pending
        .lock()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn forget_ms(cfg: &Config) -> i64 {
    i64::try_from(cfg.pending_forget_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A station waiting for approval went away: no longer listed as
/// waiting, and remembered from now for `pending_forget_secs`.
async fn pending_left(shared: &Arc<Shared>, fp: &str) {
    if let Ok(mut p) = shared.pending.lock() {
        p.remove(fp);
    }
    shared.pending_changed();
    shared.publisher.publish(&ApiEvent::EnrolmentLeft {
        fingerprint: fp.to_string(),
        code: pairing_code(fp, &shared.id.fingerprint),
    });
    let db = shared.db.clone();
    let fp = fp.to_string();
    let at = now_ms();
    match tokio::task::spawn_blocking(move || db.pending_left(&fp, at)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("recording that a waiting station left: {e:#}"),
        Err(e) => tracing::warn!("recording that a waiting station left: {e}"),
    }
}

/// Forget stations that waited for approval and went away more than
/// `pending_forget_secs` ago, and keep at most `max_pending`; checked
/// every few seconds.
async fn prune_pending(shared: Arc<Shared>) {
    loop {
        let cfg = shared.cfg();
        let every = Duration::from_secs((cfg.pending_forget_secs / 4).clamp(1, 60));
        tokio::time::sleep(every).await;
        let waiting = waiting_stations(&shared);
        let (cap, before) = (cfg.max_pending, now_ms() - forget_ms(&cfg));
        let db = shared.db.clone();
        match tokio::task::spawn_blocking(move || db.prune_pending(before, cap, &waiting)).await {
            Ok(Ok((0, _))) => {}
            Ok(Ok((n, _))) => {
                tracing::info!("forgot {n} stations that waited for approval and left")
            }
            Ok(Err(e)) => tracing::warn!("forgetting stations that left: {e:#}"),
            Err(e) => tracing::warn!("forgetting stations that left: {e}"),
        }
    }
}

/// A connected station as the switch sees it.
pub(crate) struct Station {
    pub(crate) conn: quinn::Connection,
    tx: mpsc::Sender<Msg>,
    name: Option<String>,
}

/// The task that owns call state.
pub(crate) struct Switch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) sb: Switchboard,
    pub(crate) stations: HashMap<String, Station>,
    pub(crate) relays: HashMap<CallId, Allocation>,
    pub(crate) trunks: Trunks,
    /// The ring group set from the command line, over the config file's.
    ring_group: Option<crate::db::RingGroup>,
    /// The ring groups with extensions of their own.
    groups: Vec<crate::db::NamedRingGroup>,
    /// Maps the monotonic clock to wall-clock time for call records.
    anchor: (Instant, SystemTime),
    last_status: (usize, usize),
    /// The disk watcher's last word: (mailboxes writable, bytes free).
    disk: Option<(bool, u64)>,
    /// The calls as subscribers last heard of them.
    told: HashMap<CallId, CallInfo>,
    /// Outcomes of calls that ended since subscribers were last told.
    outcomes: HashMap<CallId, &'static str>,
    /// Dial requests not answered yet, for dial→ringing.
    dialing: HashMap<(String, ReqId), Instant>,
    /// Relayed calls answered whose answering end has not sent through
    /// the forwarder yet, for answer→media.
    media_wait: HashMap<CallId, Instant>,
    /// Relayed calls' packet rates, and when to sample them next.
    rates: crate::rates::Rates,
    next_rates: Instant,
}

/// Dial requests timed at once, at most (a station that never gets a
/// reply cannot grow the table).
const MAX_TIMED_DIALS: usize = 4096;
/// How often relayed calls waiting for media are looked at.
const MEDIA_CHECK: Duration = Duration::from_millis(5);
/// How long a relayed call is watched for its first media.
const MEDIA_WAIT: Duration = Duration::from_secs(10);

impl Switch {
    fn new(shared: Arc<Shared>) -> Result<Switch> {
        let ring_group = shared.db.ring_group()?;
        let groups = shared.db.ring_groups()?;
        let mut sb = Switchboard::new(call_config(
            &shared.cfg(),
            shared.extension_range(),
            ring_group.as_ref(),
            &groups,
        ));
        let shared_cfg_has_directory =
            shared.cfg().directory.is_some() || shared.cfg().embedded_directory.is_some();
        sb.set_next_call_id(shared.db.max_call_id()? + 1);
        for row in shared.db.agents()? {
            if let (Some(ext), "approved") = (&row.ext, row.state.as_str()) {
                sb.add_line(ext);
            }
        }
        for (ext, settings) in shared.db.all_settings()? {
            sb.set_settings(&ext, settings);
        }
        for (code, number) in shared.db.speed_dials()? {
            sb.set_speed_dial(&code, Some(&number));
        }
        Ok(Switch {
            shared,
            sb,
            stations: HashMap::new(),
            relays: HashMap::new(),
            trunks: Trunks::new(shared_cfg_has_directory),
            ring_group,
            groups,
            anchor: (Instant::now(), SystemTime::now()),
            last_status: (0, 0),
            disk: None,
            told: HashMap::new(),
            outcomes: HashMap::new(),
            dialing: HashMap::new(),
            media_wait: HashMap::new(),
            rates: crate::rates::Rates::default(),
            next_rates: Instant::now(),
        })
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        loop {
            let media_check = (!self.media_wait.is_empty()).then(|| Instant::now() + MEDIA_CHECK);
            let rates_check =
                (!self.relays.is_empty() || !self.rates.is_empty()).then_some(self.next_rates);
            let deadline = [self.sb.poll_timeout(), media_check, rates_check]
                .into_iter()
                .flatten()
                .min();
            let ev = match deadline {
                Some(d) => tokio::select! {
                    ev = events.recv() => ev,
                    _ = tokio::time::sleep_until(d.into()) => {
                        let now = Instant::now();
                        // Media first: an outside call that heard its far
                        // end by its fallback deadline needs no relay.
                        self.check_media(now);
                        if self.sb.poll_timeout().is_some_and(|t| t <= now) {
                            self.sb.handle_timeout(now);
                        }
                        if now >= self.next_rates {
                            self.sample_rates(now);
                        }
                        self.drain().await;
                        self.tell_calls();
                        continue;
                    }
                },
                None => events.recv().await,
            };
            let Some(ev) = ev else { return };
            let now = Instant::now();
            match ev {
                Event::Up {
                    ext,
                    name,
                    conn,
                    tx,
                } => {
                    let addr = conn.remote_address().to_string();
                    self.shared.publisher.publish(&ApiEvent::StationOnline {
                        ext: ext.clone(),
                        name: name.clone(),
                        addr,
                    });
                    if let Some(old) = self
                        .stations
                        .insert(ext.clone(), Station { conn, tx, name })
                    {
                        // The same station reconnected; the old link is dead.
                        old.conn
                            .close(quinn::VarInt::from_u32(4), b"replaced by a new connection");
                        self.sb.handle_line_down(now, &ext);
                    }
                    self.sb.add_line(&ext);
                    self.sb.handle_line_up(now, &ext);
                    let settings = self.sb.settings(&ext).cloned().unwrap_or_default();
                    self.send(&ext, Msg::Settings { settings });
                    self.deliver_unread(&ext);
                    self.message_waiting(&ext);
                }
                Event::Down { ext, conn_id } => {
                    let current = self
                        .stations
                        .get(&ext)
                        .is_some_and(|s| s.conn.stable_id() == conn_id);
                    if current {
                        self.stations.remove(&ext);
                        self.sb.handle_line_down(now, &ext);
                        self.shared
                            .publisher
                            .publish(&ApiEvent::StationOffline { ext });
                    }
                }
                Event::FromStation { ext, msg } => self.on_station_msg(now, &ext, msg),
                Event::AddLine { ext } => self.sb.add_line(&ext),
                Event::SpeedDial { code, number } => {
                    self.sb.set_speed_dial(&code, number.as_deref())
                }
                Event::TextStored { to, text } => self.send(&to, text),
                Event::VoicemailDone { call } => self.sb.handle_voicemail_done(now, call),
                Event::MessageWaiting { ext } => self.message_waiting(&ext),
                Event::Disk { writable, free } => {
                    self.sb.set_mailboxes_writable(writable);
                    self.shared.metrics.disk_free.set(free as f64);
                    if self.disk.map(|d| d.0) != Some(writable) {
                        self.shared.publisher.publish(&ApiEvent::Disk {
                            free_bytes: free,
                            mailboxes_writable: writable,
                        });
                    }
                    self.disk = Some((writable, free));
                }
                Event::Reload { .. } | Event::ExtensionRange => self.reconfigure(),
                Event::RingGroup { group } => {
                    self.ring_group = group;
                    self.reconfigure();
                }
                Event::RingGroups { groups } => {
                    self.groups = groups;
                    self.reconfigure();
                }
                Event::Query { what, reply } => {
                    let answer = self.query(now, what);
                    let _ = reply.send(answer);
                }
                Event::Trunk(ev) => self.on_trunk(now, ev),
                Event::Shutdown { done } => {
                    self.sb.shutdown(now);
                    self.drain().await;
                    let _ = done.send(());
                }
            }
            self.drain().await;
            self.tell_calls();
            self.report_status();
        }
    }

    /// Relayed calls whose answering end has now sent through the
    /// forwarder: answer→media.
    fn check_media(&mut self, now: Instant) {
        let relays = &self.relays;
        let m = &self.shared.metrics;
        let mut heard = Vec::new();
        self.media_wait.retain(|call, answered| {
            let Some(alloc) = relays.get(call) else {
                return false;
            };
            if alloc.callee_packets() > 0 {
                m.answer_to_media
                    .record(now.saturating_duration_since(*answered).as_secs_f64());
                heard.push(*call);
                return false;
            }
            now.saturating_duration_since(*answered) < MEDIA_WAIT
        });
        for call in heard {
            // An outside call that hears its far end needs no relay.
            self.sb.handle_outside_media(call);
        }
    }

    /// Sample the forwarder's counters of every relayed call: their
    /// packets a second, shown with the calls.
    fn sample_rates(&mut self, now: Instant) {
        self.rates.sample(
            now,
            self.relays.iter().map(|(call, a)| (*call, a.traffic())),
        );
        self.next_rates = now + crate::rates::EVERY;
    }

    /// Tell subscribers of calls that appeared, changed or ended since
    /// they were last told.
    fn tell_calls(&mut self) {
        let now = Instant::now();
        let current = self.calls_info(now);
        self.shared.metrics.calls_active.set(current.len() as f64);
        self.shared
            .metrics
            .stations_online
            .set(self.stations.len() as f64);
        let mut gone: Vec<CallId> = self.told.keys().copied().collect();
        for c in current {
            gone.retain(|id| *id != c.id);
            let changed = match self.told.get(&c.id) {
                Some(old) => {
                    (
                        old.state,
                        old.relayed,
                        &old.caller,
                        &old.callee,
                        old.since_ms,
                        old.pps,
                    ) != (c.state, c.relayed, &c.caller, &c.callee, c.since_ms, c.pps)
                }
                None => true,
            };
            if changed {
                self.shared
                    .publisher
                    .publish(&ApiEvent::Call { call: c.clone() });
                self.told.insert(c.id, c);
            }
        }
        gone.sort_unstable();
        for id in gone {
            if let Some(mut call) = self.told.remove(&id) {
                call.seconds = now_ms().saturating_sub(call.since_ms).max(0) as u64 / 1000;
                let outcome = self.outcomes.remove(&id).map(str::to_string);
                self.shared
                    .publisher
                    .publish(&ApiEvent::CallEnded { call, outcome });
            }
        }
        self.outcomes.clear();
    }

    /// Wall-clock time (Unix ms) of a monotonic instant.
    fn wall_ms(&self, t: Instant) -> i64 {
        let wall = if t >= self.anchor.0 {
            self.anchor.1 + (t - self.anchor.0)
        } else {
            self.anchor.1 - (self.anchor.0 - t)
        };
        wall.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_else(|_| now_ms())
    }

    /// Tell a station how many voicemails wait for it.
    fn message_waiting(&self, ext: &str) {
        let Some(tx) = self.stations.get(ext).map(|s| s.tx.clone()) else {
            return;
        };
        let shared = self.shared.clone();
        let ext = ext.to_string();
        tokio::spawn(async move {
            let n = tokio::task::spawn_blocking(move || crate::voicemail::waiting(&shared, &ext))
                .await
                .unwrap_or(0);
            let _ = tx.send(Msg::MessageWaiting { voicemails: n }).await;
        });
    }

    /// Push the texts a station has not read yet (kept until it says so).
    fn deliver_unread(&self, ext: &str) {
        let Some(tx) = self.stations.get(ext).map(|s| s.tx.clone()) else {
            return;
        };
        let db = self.shared.db.clone();
        let ext = ext.to_string();
        tokio::spawn(async move {
            let rows = tokio::task::spawn_blocking(move || db.unread_texts(&ext)).await;
            if let Ok(Ok(rows)) = rows {
                for r in rows {
                    let _ = tx
                        .send(Msg::Text {
                            id: r.id as u64,
                            from: r.sender,
                            body: r.body,
                            sent_ms: r.sent_ms,
                        })
                        .await;
                }
            }
        });
    }

    /// Keep systemd's STATUS= line current.
    fn report_status(&mut self) {
        let now = (self.stations.len(), self.sb.calls().count());
        if now != self.last_status {
            self.last_status = now;
            lifecycle::status(&format!(
                "{} extensions online, {} calls in progress",
                now.0, now.1
            ));
        }
    }

    fn on_station_msg(&mut self, now: Instant, ext: &str, msg: Msg) {
        let (res, call) = match msg {
            Msg::Dial { req, number } => {
                if self.dialing.len() < MAX_TIMED_DIALS {
                    self.dialing.insert((ext.to_string(), req), now);
                }
                self.sb.handle_dial(now, ext, req, &number);
                return;
            }
            Msg::Answer { call } => (self.sb.handle_answer(now, ext, call), call),
            Msg::Reject { call } => (self.sb.handle_reject(now, ext, call), call),
            Msg::Hangup { call } => (self.sb.handle_hangup(now, ext, call), call),
            Msg::Hold { call, on } => (self.sb.handle_hold(ext, call, on), call),
            Msg::Transfer { req, call, target } => {
                (self.sb.handle_transfer(now, ext, req, call, &target), call)
            }
            Msg::Consult { req, call, target } => {
                (self.sb.handle_consult(now, ext, req, call, &target), call)
            }
            Msg::ConsultComplete { req } => {
                if let Err(e) = self.sb.handle_consult_complete(now, ext, req) {
                    self.send(
                        ext,
                        Msg::Error {
                            req: Some(req),
                            code: "call".into(),
                            message: format!("cannot join the calls: {e}"),
                        },
                    );
                }
                return;
            }
            _ => return,
        };
        if let Err(e) = res {
            self.send(
                ext,
                Msg::Error {
                    req: None,
                    code: "call".into(),
                    message: format!("call {call}: {e}"),
                },
            );
        }
    }

    pub(crate) fn send(&mut self, ext: &str, msg: Msg) {
        if let Some(st) = self.stations.get(ext) {
            if st.tx.try_send(msg).is_err() {
                // A station that cannot keep up with a few control messages
                // is gone; its reader will report it down.
                st.conn
                    .close(quinn::VarInt::from_u32(5), b"control queue overflow");
            }
        }
    }

    /// Carry out what the switchboard decided, one turn at a time. What a
    /// turn changed that must survive a crash (a station's settings, call
    /// records) is written first, off the event loop, and only then is
    /// anyone told: a reply or an `Ended` is a promise that it is kept.
    /// Settings that cannot be written are undone and refused.
    async fn drain(&mut self) {
        loop {
            let batch: Vec<Action> = std::iter::from_fn(|| self.sb.poll_action()).collect();
            if batch.is_empty() {
                return;
            }
            let writes = writes_of(&batch, |t| self.wall_ms(t));
            let failed = if writes.is_empty() {
                Vec::new()
            } else {
                let exts = settings_written(&writes);
                let db = self.shared.db.clone();
                match tokio::task::spawn_blocking(move || store(&db, &writes)).await {
                    Ok(failed) => failed,
                    Err(e) => exts
                        .into_iter()
                        .map(|ext| (ext, format!("the database write did not finish: {e}")))
                        .collect(),
                }
            };
            for step in settle(&mut self.sb, batch, &failed) {
                match step {
                    Step::Act(action) => self.act(action),
                    Step::Refuse { ext, req, message } => self.send(
                        &ext,
                        Msg::Error {
                            req: Some(req),
                            code: "storage".into(),
                            message,
                        },
                    ),
                }
            }
        }
    }

    /// Carry out one action of the switchboard (what it changed is stored).
    fn act(&mut self, action: Action) {
        match action {
            Action::Ringing {
                caller: Line::Trunk(t),
                req,
                call,
                callee: _,
            } => self.inbound_ringing(call, t.dir_call().unwrap_or(req)),
            Action::Ringing {
                caller: Line::Station(caller),
                req,
                call,
                callee,
            } => {
                if let Some(t) = self.dialing.remove(&(caller.clone(), req)) {
                    self.shared
                        .metrics
                        .dial_to_ringing
                        .record(t.elapsed().as_secs_f64());
                }
                self.send(&caller, Msg::Ringing { req, call, callee })
            }
            Action::DialFailed {
                caller: Line::Trunk(t),
                req,
                reason,
            } => self.inbound_refused(t.dir_call().unwrap_or(req), reason),
            Action::Ring {
                callee: Line::Trunk(t),
                call,
                from,
            } => self.place_outside(call, &from, &t),
            Action::DialFailed {
                caller: Line::Station(caller),
                req,
                reason,
            } => {
                self.dialing.remove(&(caller.clone(), req));
                self.send(
                    &caller,
                    Msg::DialFailed {
                        req,
                        reason,
                        message: reason.describe().to_string(),
                    },
                )
            }
            Action::Ring {
                callee: Line::Station(callee),
                call,
                from,
            } => {
                let from_name = self.stations.get(&from).and_then(|s| s.name.clone());
                self.send(
                    &callee,
                    Msg::Ring {
                        call,
                        from,
                        from_name,
                    },
                )
            }
            Action::Connected {
                call,
                caller,
                callee,
            } => {
                if let Err(e) = self.connect(call, &caller, &callee) {
                    tracing::warn!("call {call}: media set-up failed: {e:#}");
                    self.sb.handle_media_failed(Instant::now(), call);
                } else if self.relays.contains_key(&call) {
                    self.media_wait.insert(call, Instant::now());
                }
            }
            Action::Ended {
                to: Line::Trunk(_),
                call,
                ..
            } => {
                self.relays.remove(&call);
                self.trunk_ended(call);
            }
            Action::Ended {
                to: Line::Station(to),
                call,
                reason,
            } => {
                self.relays.remove(&call);
                self.send(&to, Msg::Ended { call, reason });
            }
            Action::HangUpOutside { dir_call, .. } => self.hang_up_outside(dir_call),
            Action::Fallback { call, dir_call } => self.fall_back(call, dir_call),
            Action::Feature {
                caller,
                req,
                message,
            } => self.send(&caller, Msg::Feature { req, message }),
            Action::Settings { ext, settings, .. } => {
                self.send(&ext, Msg::Settings { settings });
            }
            Action::Held { to, call, on } => {
                if let Some(to) = to.ext() {
                    self.send(to, Msg::Held { call, on })
                }
            }
            Action::ToVoicemail {
                call,
                caller,
                mailbox,
            } => {
                if let Err(e) = self.route_to_mailbox(call, &caller, &mailbox) {
                    tracing::warn!("call {call}: cannot reach the mailbox: {e:#}");
                    self.sb.handle_voicemail_done(Instant::now(), call);
                }
            }
            Action::Transferring {
                to,
                req,
                call,
                target,
            } => self.send(
                &to,
                Msg::Transferring {
                    req,
                    call,
                    to: target,
                },
            ),
            Action::TransferFailed {
                to,
                req,
                call,
                reason,
                note,
            } => self.send(
                &to,
                Msg::TransferFailed {
                    req,
                    call,
                    reason,
                    message: note.unwrap_or(reason.describe()).to_string(),
                },
            ),
            Action::Replaced { to, old, new, peer } => {
                self.relays.remove(&old);
                if let Some(to) = to.ext() {
                    self.send(to, Msg::Replaced { old, new, peer })
                }
            }
            Action::Forwarded { caller, call, to } => {
                if let Some(caller) = caller.ext() {
                    self.send(caller, Msg::Forwarded { call, to })
                }
            }
            Action::PickedUp {
                picker,
                req,
                call,
                from,
            } => self.send(&picker, Msg::PickedUp { req, call, from }),
            Action::Redirect { caller, to, .. } => self.redirect_outside(&caller, &to),
            Action::HandOff {
                line,
                call,
                to,
                internal,
                by,
                joins,
                dir_call,
            } => self.hand_off(
                Instant::now(),
                &line,
                call,
                dir_call,
                &to,
                internal,
                HandedOn { by, joins },
            ),
            Action::Record(rec) => {
                if let Some(call) = rec.call {
                    self.relays.remove(&call);
                    self.trunk_forget(call);
                    self.outcomes.insert(call, rec.outcome.as_str());
                }
                // Written before this turn's replies (`drain`).
                self.shared.metrics.call_ended(rec.outcome.as_str());
            }
        }
    }

    /// Point the caller at the gateway's own media end for `mailbox`.
    fn route_to_mailbox(&mut self, call: CallId, caller: &Line, mailbox: &str) -> Result<()> {
        let caller = match caller {
            Line::Trunk(t) => return self.outside_to_mailbox(call, t, mailbox),
            Line::Station(ext) => ext.as_str(),
        };
        let st = self.stations.get(caller).context("the caller is gone")?;
        let caller_fp = peer_fingerprint(&st.conn).context("caller certificate")?;
        let ip = st
            .conn
            .local_ip()
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(self.shared.local_addr.ip());
        let addr = SocketAddr::new(ip, self.shared.local_addr.port());
        let mut secret = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut secret);
        let token = hex::encode(secret);
        if let Ok(mut jobs) = self.shared.vm_jobs.lock() {
            jobs.insert(
                token.clone(),
                crate::voicemail::Job {
                    call,
                    flow: call,
                    caller_fp,
                    caller: caller.to_string(),
                    mailbox: mailbox.to_string(),
                },
            );
        }
        self.send(
            caller,
            Msg::Connect {
                call,
                media: MediaPlan {
                    dial: true,
                    peer_addr: Some(addr.to_string()),
                    peer_fp: self.shared.id.fingerprint.clone(),
                    token,
                    relayed: false,
                    media_call: None,
                },
            },
        );
        Ok(())
    }

    /// Hand both ends of an answered call their media plans.
    fn connect(&mut self, call: CallId, caller: &Line, callee: &Line) -> Result<()> {
        let (Line::Station(caller), Line::Station(callee)) = (caller, callee) else {
            return self.connect_outside(call, caller, callee);
        };
        let (Some(a), Some(b)) = (self.stations.get(caller), self.stations.get(callee)) else {
            bail!("an end of the call is not connected");
        };
        let a_fp = peer_fingerprint(&a.conn).context("caller certificate")?;
        let b_fp = peer_fingerprint(&b.conn).context("callee certificate")?;
        let a_addr = a.conn.remote_address();
        let b_addr = b.conn.remote_address();
        let mut secret = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut secret);
        let token = hex::encode(secret);
        let relayed = self.shared.cfg().internal_media == InternalMedia::Relay;
        let target = if relayed {
            let fallback = self.shared.local_addr.ip();
            let ip_of = |c: &quinn::Connection| -> IpAddr {
                c.local_ip()
                    .filter(|ip| !ip.is_unspecified())
                    .unwrap_or(fallback)
            };
            let alloc = relay::allocate_fixed(
                self.shared.relay.clone(),
                a_addr,
                ip_of(&a.conn),
                b_addr,
                ip_of(&b.conn),
            )
            .context("allocating the relay")?;
            let t = alloc.caller_facing;
            self.relays.insert(call, alloc);
            t
        } else {
            b_addr
        };
        let caller_plan = MediaPlan {
            dial: true,
            peer_addr: Some(target.to_string()),
            peer_fp: b_fp,
            token: token.clone(),
            relayed,
            media_call: None,
        };
        let callee_plan = MediaPlan {
            dial: false,
            peer_addr: None,
            peer_fp: a_fp,
            token,
            relayed,
            media_call: None,
        };
        self.send(
            callee,
            Msg::Connect {
                call,
                media: callee_plan,
            },
        );
        self.send(
            caller,
            Msg::Connect {
                call,
                media: caller_plan,
            },
        );
        Ok(())
    }

    fn query(&mut self, now: Instant, what: Query) -> QueryReply {
        match what {
            Query::Online => QueryReply::Online(
                self.stations
                    .iter()
                    .map(|(ext, s)| (ext.clone(), s.conn.remote_address().to_string()))
                    .collect(),
            ),
            Query::Calls => QueryReply::Calls(self.calls_info(now)),
            Query::Status => QueryReply::Status(Box::new(self.status())),
            Query::Hangup { call } => {
                let Some(c) = self.sb.calls().find(|c| c.id == call) else {
                    return QueryReply::Done(Err(format!("no call {call} in progress")));
                };
                let Some(end) = c.station().ext().map(str::to_string) else {
                    return QueryReply::Done(Err(format!("call {call} has no station")));
                };
                // The end we hang up for is told too (the switchboard
                // tells only the others, as when a station hangs up).
                let reason = match c.state {
                    CallState::Ringing { .. } => EndReason::Rejected,
                    _ => EndReason::Hangup,
                };
                let done = self
                    .sb
                    .handle_hangup(now, &end, call)
                    .map_err(|e| format!("call {call}: {e}"));
                if done.is_ok() {
                    self.send(&end, Msg::Ended { call, reason });
                }
                QueryReply::Done(done)
            }
            Query::Settings { ext, settings } => {
                self.sb.set_settings(&ext, settings.clone());
                self.send(&ext, Msg::Settings { settings });
                QueryReply::Done(Ok(()))
            }
            Query::DropLine { ext, why } => {
                self.sb.remove_line(now, &ext);
                if let Some(st) = self.stations.remove(&ext) {
                    st.conn.close(quinn::VarInt::from_u32(7), why.as_bytes());
                    self.shared
                        .publisher
                        .publish(&ApiEvent::StationOffline { ext });
                }
                QueryReply::Done(Ok(()))
            }
        }
    }

    /// Give the switchboard the configuration, ring groups and extension
    /// range in force now (ringing calls keep their deadlines).
    fn reconfigure(&mut self) {
        self.sb.set_config(call_config(
            &self.shared.cfg(),
            self.shared.extension_range(),
            self.ring_group.as_ref(),
            &self.groups,
        ));
    }

    fn status(&self) -> Status {
        let cfg = self.shared.cfg();
        let (extension_range, range_source) = self.shared.extension_range_and_source();
        Status {
            api: crate::api::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen: self.shared.local_addr.to_string(),
            fingerprint: self.shared.id.fingerprint.clone(),
            state_dir: self.shared.state_dir.display().to_string(),
            internal_media: cfg.internal_media.as_str().to_string(),
            ring_timeout_s: cfg.ring_timeout_secs,
            uptime_s: self.shared.started.elapsed().as_secs(),
            stations_online: self.stations.len(),
            calls_active: self.sb.calls().count(),
            relay: self.shared.relay.snapshot(),
            directory: self.trunks.status(),
            ring_group: self.ring_group_json(),
            ring_groups: self.groups.clone(),
            extension_range,
            extension_range_source: range_source.to_string(),
            disk: self.disk.map(|(writable, free)| {
                json!({
                    "free_bytes": free,
                    "mailboxes_writable": writable,
                    "unwritten_call_records": self.shared.db.unwritten_count(),
                })
            }),
            admin: self.shared.admin_status(),
            connections: self.connections_json(&cfg),
        }
    }

    /// Connections open and refused, and the limits on the way in.
    fn connections_json(&self, cfg: &Config) -> Value {
        let counts = self.shared.gate.counts();
        json!({
            "open": counts.open,
            "max": cfg.max_connections,
            "refused": counts.refused(),
            "admission": counts,
            "limits": cfg.limits,
        })
    }

    /// Who rings for the office number, and how; whose mailbox takes its
    /// unanswered calls.
    fn ring_group_json(&self) -> Value {
        let cfg = self.shared.cfg();
        let mailbox = call_config(&cfg, [0, 0], self.ring_group.as_ref(), &[]).office_mailbox;
        let mut v = match &self.ring_group {
            Some(g) => json!({
                "mode": g.mode,
                "members": g.members,
                "step_secs": g.step_secs,
                "source": "ring-group",
            }),
            None => {
                json!({
                    "mode": if cfg.hunt_secs.is_some() { "hunt" } else { "all" },
                    "members": if cfg.reception.is_empty() {
                        json!("every extension")
                    } else {
                        json!(cfg.reception)
                    },
                    "step_secs": cfg.hunt_secs,
                    "source": "config",
                })
            }
        };
        v["office_mailbox"] = json!(mailbox);
        let set_here = self
            .ring_group
            .as_ref()
            .is_some_and(|g| g.mailbox.is_some());
        v["office_mailbox_source"] = json!(if set_here {
            "ring-group"
        } else if cfg.office_mailbox.is_some() {
            "config"
        } else {
            "first-member"
        });
        v
    }

    fn calls_info(&self, now: Instant) -> Vec<CallInfo> {
        let name = |line: &Line| {
            line.ext()
                .and_then(|ext| self.stations.get(ext))
                .and_then(|s| s.name.clone())
        };
        let mut v: Vec<CallInfo> = self
            .sb
            .calls()
            .map(|c| {
                let (state, since) = match c.state {
                    CallState::Ringing { .. } => (CallPhase::Ringing, c.started),
                    CallState::Answered { at } if c.held_by.is_some() => (CallPhase::Held, at),
                    CallState::Answered { at } => (CallPhase::Answered, at),
                    CallState::Voicemail { at } => (CallPhase::Voicemail, at),
                };
                CallInfo {
                    id: c.id,
                    caller: c.caller.shown().to_string(),
                    caller_name: name(&c.caller),
                    callee: c.callee.shown().to_string(),
                    callee_name: name(&c.callee),
                    state,
                    started_ms: self.wall_ms(c.started),
                    since_ms: self.wall_ms(since),
                    seconds: now.saturating_duration_since(since).as_secs(),
                    outside: c.trunk().is_some(),
                    directory_call: self.sb.outside_call(c.id).and_then(|o| o.dir_call),
                    relayed: self.relays.contains_key(&c.id),
                    pps: self.rates.get(c.id),
                }
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// What one turn of the switchboard changed that must be on disk before
/// anyone hears of it.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// A station's settings, changed by a feature code it dialled.
    Settings {
        ext: String,
        settings: keyline_proto::msg::LineSettings,
    },
    /// The record of a call that ended.
    Record(CdrRow),
}

/// The writes a turn's actions need, in their order; `wall_ms` turns the
/// switchboard's instants into wall-clock time.
fn writes_of(batch: &[Action], wall_ms: impl Fn(Instant) -> i64) -> Vec<Write> {
    batch
        .iter()
        .filter_map(|a| match a {
            Action::Settings { ext, settings, .. } => Some(Write::Settings {
                ext: ext.clone(),
                settings: settings.clone(),
            }),
            Action::Record(rec) => Some(Write::Record(CdrRow {
                id: 0,
                call_id: rec.call.map(|c| c as i64),
                caller: rec.caller.clone(),
                callee: rec.callee.clone(),
                start_ms: wall_ms(rec.started),
                answer_ms: rec.answered.map(&wall_ms),
                end_ms: wall_ms(rec.ended),
                outcome: rec.outcome.as_str().to_string(),
            })),
            _ => None,
        })
        .collect()
}

/// The extensions whose settings `writes` store.
fn settings_written(writes: &[Write]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Settings { ext, .. } => Some(ext.clone()),
            Write::Record(_) => None,
        })
        .collect()
}

/// Carry out `writes` in order (blocking: run it off the event loop).
/// Returns the extensions whose settings could not be stored, with why. A
/// call record that cannot be written is kept in memory and written later
/// (`Db::insert_cdr`): the call has ended either way.
fn store(db: &Db, writes: &[Write]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for w in writes {
        match w {
            Write::Settings { ext, settings } => {
                if let Err(e) = db.save_settings(ext, settings) {
                    tracing::error!("could not store the settings of {ext}: {e:#}");
                    failed.push((ext.clone(), format!("{e:#}")));
                }
            }
            Write::Record(row) => {
                if let Err(e) = db.insert_cdr(row) {
                    tracing::error!("could not write the call record: {e:#}");
                }
            }
        }
    }
    failed
}

/// What the switch does with one action of a stored turn.
#[derive(Debug, PartialEq)]
enum Step {
    Act(Action),
    /// Tell `ext` its request `req` did not happen.
    Refuse {
        ext: String,
        req: ReqId,
        message: String,
    },
}

/// A turn's actions once its writes were tried: settings that could not
/// be stored (`failed`) are undone in `sb`, so it holds what the disk
/// holds, their station is not shown them, and the feature code that
/// changed them is refused instead of confirmed.
fn settle(sb: &mut Switchboard, batch: Vec<Action>, failed: &[(String, String)]) -> Vec<Step> {
    let why = |ext: &str| failed.iter().find(|(e, _)| e == ext).map(|(_, w)| w);
    batch
        .into_iter()
        .filter_map(|a| match a {
            Action::Settings { ext, before, .. } if why(&ext).is_some() => {
                sb.set_settings(&ext, before);
                None
            }
            Action::Feature { caller, req, .. } if why(&caller).is_some() => {
                let message = format!(
                    "the change could not be stored, so nothing changed: {}",
                    why(&caller).map_or("", String::as_str)
                );
                Some(Step::Refuse {
                    ext: caller,
                    req,
                    message,
                })
            }
            a => Some(Step::Act(a)),
        })
        .collect()
}

/// Ask the switch task; `Err` when it is stopping.
pub(crate) async fn query_switch(
    shared: &Shared,
    what: Query,
) -> std::result::Result<QueryReply, String> {
    let (tx, rx) = oneshot::channel();
    if shared
        .events
        .send(Event::Query { what, reply: tx })
        .await
        .is_err()
    {
        return Err("the gateway is stopping".into());
    }
    rx.await.map_err(|_| "the gateway is stopping".to_string())
}

/// The switchboard's settings: the configuration, with the extension
/// range in force (see [`Shared::extension_range`]), the ring group set
/// from the command line (if any) in place of `reception`, and the ring
/// groups with extensions of their own.
fn call_config(
    cfg: &Config,
    range: [u32; 2],
    group: Option<&crate::db::RingGroup>,
    groups: &[crate::db::NamedRingGroup],
) -> CallConfig {
    let mut c = cfg.call_config(range);
    c.groups = groups
        .iter()
        .map(|g| keyline_proto::call::RingGroup {
            ext: g.ext.clone(),
            name: g.name.clone(),
            members: g.group.members.clone(),
            hunt_step: (g.group.mode == "hunt").then(|| Duration::from_secs(g.group.step_secs)),
            mailbox: g.group.mailbox.clone(),
        })
        .collect();
    if let Some(g) = group {
        c.reception = g.members.clone();
        c.hunt_step = (g.mode == "hunt").then(|| Duration::from_secs(g.step_secs));
        if g.mailbox.is_some() {
            c.office_mailbox = g.mailbox.clone();
        } else if cfg.office_mailbox.is_none() {
            c.office_mailbox = g.members.first().cloned();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyline_proto::msg::LineSettings;

    #[test]
    fn the_office_mailbox_set_with_the_ring_group_wins_over_the_file() {
        let group = |mailbox: Option<&str>| crate::db::RingGroup {
            mode: "hunt".into(),
            members: vec!["203".into(), "202".into()],
            step_secs: 5,
            mailbox: mailbox.map(str::to_string),
        };
        let file = Config {
            reception: vec!["201".into()],
            office_mailbox: Some("204".into()),
            ..Config::default()
        };
        let plain = Config {
            reception: vec!["201".into()],
            ..Config::default()
        };
        let mb = |cfg: &Config, g: Option<&crate::db::RingGroup>| {
            call_config(cfg, [201, 499], g, &[]).office_mailbox
        };
        assert_eq!(mb(&file, Some(&group(Some("202")))), Some("202".into()));
        assert_eq!(mb(&file, Some(&group(None))), Some("204".into()));
        assert_eq!(mb(&plain, Some(&group(None))), Some("203".into()));
        assert_eq!(mb(&plain, None), Some("201".into()));
        let c = call_config(&plain, [201, 499], Some(&group(Some("202"))), &[]);
        assert_eq!(c.reception, vec!["203".to_string(), "202".to_string()]);
        assert_eq!(c.hunt_step, Some(Duration::from_secs(5)));
    }

    /// A scratch database, removed on drop.
    struct TestDb {
        dir: PathBuf,
        db: Db,
    }

    impl TestDb {
        fn new(tag: &str) -> TestDb {
            let dir = std::env::temp_dir().join(format!("kl-gw-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let db = Db::open(&dir.join("gatewayd.db")).unwrap();
            TestDb { dir, db }
        }

        /// Make every write of settings fail, as a full disk would.
        fn refuse_settings(&self) {
            let c = rusqlite::Connection::open(self.dir.join("gatewayd.db")).unwrap();
            c.execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON line_settings
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            )
            .unwrap();
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn board() -> (Switchboard, Instant) {
        let now = Instant::now();
        let mut sb = Switchboard::new(CallConfig::default());
        for l in ["201", "202"] {
            sb.add_line(l);
            sb.handle_line_up(now, l);
        }
        (sb, now)
    }

    fn turn(sb: &mut Switchboard) -> Vec<Action> {
        std::iter::from_fn(|| sb.poll_action()).collect()
    }

    fn dnd_on_disk(db: &Db, ext: &str) -> Option<bool> {
        db.all_settings()
            .unwrap()
            .into_iter()
            .find(|(e, _)| e == ext)
            .map(|(_, s)| s.dnd)
    }

    #[test]
    fn a_feature_code_is_on_disk_before_it_is_confirmed() {
        let t = TestDb::new("store");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "*78");
        let batch = turn(&mut sb);
        let writes = writes_of(&batch, |_| 0);
        assert_eq!(
            writes,
            [Write::Settings {
                ext: "201".into(),
                settings: LineSettings {
                    dnd: true,
                    ..LineSettings::default()
                },
            }]
        );
        // Nothing of the turn has been carried out yet, and the write is
        // what comes first.
        assert_eq!(dnd_on_disk(&t.db, "201"), None);
        assert!(store(&t.db, &writes).is_empty());
        assert_eq!(dnd_on_disk(&t.db, "201"), Some(true));
        let steps = settle(&mut sb, batch, &[]);
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Act(Action::Feature { req: 1, .. }))));
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Act(Action::Settings { settings, .. }) if settings.dnd)));
        assert!(sb.settings("201").is_some_and(|s| s.dnd));
    }

    #[test]
    fn settings_that_cannot_be_stored_are_undone_and_refused() {
        let t = TestDb::new("refuse");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "*72202");
        let batch = turn(&mut sb);
        assert!(store(&t.db, &writes_of(&batch, |_| 0)).is_empty());
        let steps = settle(&mut sb, batch, &[]);
        assert!(steps.iter().any(|s| matches!(s, Step::Act(_))));

        t.refuse_settings();
        sb.handle_dial(now, "201", 2, "*78");
        let batch = turn(&mut sb);
        let failed = store(&t.db, &writes_of(&batch, |_| 0));
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].1.contains("full"), "{failed:?}");
        let steps = settle(&mut sb, batch, &failed);
        // The station hears that nothing changed, not that it did.
        assert_eq!(steps.len(), 1, "{steps:?}");
        match &steps[0] {
            Step::Refuse { ext, req, message } => {
                assert_eq!((ext.as_str(), *req), ("201", 2));
                assert!(message.contains("could not be stored"), "{message}");
                assert!(message.contains("full"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // The switchboard holds what the disk holds: the earlier
        // forwarding, no do-not-disturb.
        let held = sb.settings("201").cloned().unwrap();
        assert!(!held.dnd);
        assert_eq!(held.forward_always.as_deref(), Some("202"));
        assert_eq!(dnd_on_disk(&t.db, "201"), Some(false));
    }

    #[test]
    fn a_call_record_is_written_in_the_turn_that_ends_the_call() {
        let t = TestDb::new("cdr");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "202");
        let _ = turn(&mut sb);
        let call = sb.calls().next().unwrap().id;
        sb.handle_answer(now, "202", call).unwrap();
        let _ = turn(&mut sb);
        sb.handle_hangup(now, "201", call).unwrap();
        let batch = turn(&mut sb);
        assert!(batch.iter().any(|a| matches!(a, Action::Ended { .. })));
        let writes = writes_of(&batch, |_| 1_000);
        assert!(matches!(&writes[..], [Write::Record(r)] if r.outcome == "answered"));
        assert!(store(&t.db, &writes).is_empty());
        let rows = t.db.cdr(10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].caller.as_str(), rows[0].callee.as_str()),
            ("201", "202")
        );
    }
}
