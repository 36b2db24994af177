//! What the gateway's tasks share: [`Shared`] (the database, the
//! configuration in force, the channels into the switch task, the admin
//! site's and the uplink's state), the switch task's inputs ([`Event`],
//! [`Query`] and its [`QueryReply`], [`TrunkEvent`]), the admin's decision on
//! a waiting station, and a caller expected at a mailbox. Every other module
//! of the shell depends on this one; it depends on none of them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use keyline_dirclient::client::{self as dir, Connected, DirClient, MediaPlan as DirPlan};
use keyline_net::admission::Gate;
use keyline_net::relay::Counters;
use keyline_net::{mdns, Identity};
use keyline_proto::msg::{CallId, FailReason, Msg};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::api::{CallInfo, Status};
use crate::config::Config;
use crate::db::Db;
use crate::events::Publisher;
use crate::metrics::Metrics;

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
    Trunk(TrunkEvent),
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
    /// Read through [`Shared::cfg`]; replaced whole on reload.
    pub(crate) cfg: RwLock<Config>,
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
    pub vm_jobs: Mutex<HashMap<String, VoicemailJob>>,
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

/// What the uplink and the per-call tasks tell the switch.
#[derive(Debug)]
pub enum TrunkEvent {
    /// Logged in and registered.
    Up {
        client: DirClient,
        outside_ip: IpAddr,
        numbers: Vec<String>,
        observed: SocketAddr,
    },
    /// The directory connection is gone (the uplink reconnects).
    Down { reason: String },
    /// Something the directory said.
    Dir(dir::Event),
    /// An outside call placed for a station rings at the far end.
    Ringing { call: CallId, dir_call: u64 },
    /// ... and was answered.
    Answered { call: CallId, connected: Connected },
    /// ... or failed before it was answered.
    Failed { call: CallId, reason: FailReason },
    /// The directory accepted our answer of an incoming call.
    Accepted { call: CallId, plan: DirPlan },
    /// Answering an incoming call failed.
    AcceptFailed { call: CallId, message: String },
    /// The directory's relay for `call` is at `relay`.
    Relay { call: CallId, relay: SocketAddr },
}

/// A caller expected at a mailbox.
#[derive(Debug, Clone)]
pub struct VoicemailJob {
    /// The switchboard's call.
    pub call: CallId,
    /// The id the caller presents on the media connection (the directory's
    /// for a caller from outside).
    pub flow: CallId,
    pub caller_fp: String,
    pub caller: String,
    pub mailbox: String,
}
