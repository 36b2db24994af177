//! The directory's control API as types: the requests its control socket
//! takes, the replies they get, and the events it publishes to
//! subscribers (`keyline-directory events`).
//!
//! Everything is serde: a request is `{"cmd": "NAME", ...}`, a reply
//! `{"ok": true, ...}` (or `{"ok": false, "error": "..."}`), an event
//! `{"event": "NAME", ...}` (see `docs/control-api.md`). [`API_VERSION`] is
//! in `status` as `api`; a change that would break a client bumps it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::MailMeta;

/// Version of the requests, replies and events below.
pub const API_VERSION: u32 = 1;

/// A request to the directory (`{"cmd": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The directory's state.
    Status,
    /// Accounts, their numbers, which are registered, and login locks.
    Users,
    /// Registered numbers: where each rings now and until when.
    Bindings,
    /// Calls in progress.
    Calls,
    /// Every forwarding rule.
    Forwards,
    /// Stored messages waiting for delivery (metadata only).
    Mail,
    /// Accounts or numbers changed in storage (the account and forwarding
    /// commands write there directly, so they work without a running
    /// directory): read them again, and end the sessions of `logout`.
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logout: Option<String>,
    },
    /// The cluster: its nodes, NATS and PostgreSQL as this node sees them.
    Cluster,
}

/// The names of every request, for telling an unknown command from a
/// malformed one (`subscribe` is the socket's own, see
/// `keyline_net::control`).
pub const COMMANDS: &[&str] = &[
    "status", "users", "bindings", "calls", "forwards", "mail", "reload", "cluster",
];

/// Parse a control-socket request: an unknown `cmd` and a malformed one
/// get different, clear errors.
pub fn parse_request(v: Value) -> Result<Request, String> {
    keyline_net::control::parse_typed(v, COMMANDS, &[])
}

/// The directory's state (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`API_VERSION`].
    pub api: u32,
    pub version: String,
    pub listen: String,
    pub fingerprint: String,
    pub state_dir: String,
    pub config_file: Option<String>,
    /// What the last SIGHUP did.
    pub last_reload: Option<String>,
    pub direct_connect: String,
    pub binding_ttl_secs: u32,
    pub uptime_s: u64,
    /// Connected endpoints.
    pub sessions: usize,
    /// Registered numbers.
    pub bindings: usize,
    /// Numbers that exist.
    pub numbers: usize,
    pub calls_active: usize,
    /// Calls another directory node routes that ring or go on at one of
    /// this node's endpoints (always 0 on a single node).
    #[serde(default)]
    pub calls_elsewhere: usize,
    pub relays_active: usize,
    /// The relay's counters (`bytes`, `packets`, `active`, ...).
    pub relay: Value,
    /// Password checks and the login limiter's figures.
    pub logins: Value,
    /// Connections open now, at most, and refused since start.
    pub connections: usize,
    pub max_connections: usize,
    pub connections_refused: u64,
    /// Refusals by limit.
    pub admission: Value,
    /// The per-address limits.
    pub limits: Value,
    /// Where the web site is served, if it is.
    pub web: Option<String>,
    /// Messages stored for delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_waiting: Option<usize>,
    /// Space under the state directory now, as the `disk` event tells it
    /// (a subscriber that comes while the disk is low learns it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskState>,
}

/// Free space under the state directory (`low`: fewer than
/// [`DISK_LOW_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    pub free_bytes: u64,
    pub low: bool,
}

impl DiskState {
    pub fn of(free_bytes: u64) -> DiskState {
        DiskState {
            free_bytes,
            low: free_bytes < DISK_LOW_BYTES,
        }
    }
}

/// A registered number (`bindings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    pub number: String,
    pub account: String,
    pub session: u64,
    /// The address the directory sees the endpoint at.
    pub observed: String,
    /// What a caller is given: its own addresses, then the observed one.
    pub candidates: Vec<String>,
    pub fingerprint: String,
    pub expires_in_s: u64,
    pub since_s: u64,
}

/// A call in progress (`calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInfo {
    pub id: u64,
    /// The caller's number.
    pub from: String,
    /// The number that rings.
    pub number: String,
    /// The number dialled.
    pub dialled: String,
    /// Forwarded from, in order.
    pub via: Vec<String>,
    /// `ringing` or `answered`.
    pub state: String,
    /// Seconds in that state.
    pub seconds: u64,
    /// The direct-connect rule of the call.
    pub policy: String,
    pub relayed: bool,
}

/// An account (`users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub numbers: Vec<String>,
    /// Its numbers registered now.
    pub registered: Vec<String>,
    /// Locked for every address, for this many seconds.
    pub locked_for_s: Option<u64>,
    /// Locked from these addresses.
    pub locked_from: Vec<LockedFrom>,
    pub created_ms: i64,
}

/// An address an account may not log in from for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedFrom {
    pub address: String,
    pub for_s: u64,
}

/// A forwarding rule (`forwards`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardInfo {
    pub number: String,
    pub account: String,
    /// `always`, `unregistered`, `busy` or `no-answer`.
    pub when: String,
    pub to: String,
    pub on: bool,
}

/// A successful reply (serialised with `"ok": true` beside its fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Status(Box<Status>),
    Users {
        users: Vec<UserInfo>,
    },
    Bindings {
        bindings: Vec<BindingInfo>,
    },
    Calls {
        calls: Vec<CallInfo>,
    },
    Forwards {
        forwards: Vec<ForwardInfo>,
    },
    Mail {
        mail: Vec<MailMeta>,
    },
    /// `reload` done.
    Reloaded {},
    Cluster(Box<ClusterStatus>),
}

/// The cluster as one node sees it (`cluster`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// NATS as this node's client sees it (`connected`, `pending`,
    /// `disconnected`) and the server it uses.
    pub nats: String,
    pub nats_server: Option<String>,
    /// Every node whose entry is live, with its figures.
    pub nodes: Vec<crate::cluster::NodeEntry>,
    /// Bindings in the cluster's bucket (every node's).
    pub bindings: u64,
    /// `ok` with the time one query took, or what went wrong.
    pub postgres: String,
}

impl Response {
    /// The reply line's JSON: `{"ok": true, ...}`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        match v.as_object_mut() {
            Some(m) => {
                m.insert("ok".into(), Value::Bool(true));
                v
            }
            None => keyline_net::control::error("the reply could not be encoded"),
        }
    }
}

/// What kind of endpoint registered a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// A standalone internet terminal (its own media end).
    Terminal,
    /// An office's gateway (its stations are the media ends).
    Office,
}

/// Something that happened in the directory (`{"event": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// `number` now rings at the endpoint at `address` (a new
    /// registration, one that displaced another endpoint, or an endpoint
    /// that moved). Refreshes are not events.
    Registered {
        number: String,
        account: String,
        kind: EndpointKind,
        address: String,
    },
    /// `number` no longer rings where it did.
    Unregistered {
        number: String,
        account: String,
        reason: String,
    },
    /// Call `call` from `caller` rings `callee` (after forwarding; as
    /// `dialled`).
    CallRinging {
        call: u64,
        caller: String,
        callee: String,
        dialled: String,
    },
    /// The callee answered; `relayed`: the media goes through the
    /// directory's relay, else end to end.
    CallAnswered {
        call: u64,
        caller: String,
        callee: String,
        relayed: bool,
    },
    /// An answered call's media moved to the relay (its direct path failed).
    CallRelayed {
        call: u64,
        caller: String,
        callee: String,
    },
    /// The call is over: `outcome` as in the call history (`answered`,
    /// `declined`, `busy`, `no-answer`, `cancelled`, `forwarded`, ...),
    /// `reason` as the ends were told.
    CallEnded {
        call: u64,
        caller: String,
        callee: String,
        outcome: String,
        reason: String,
        /// Answered calls: whether the relay carried the media.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relayed: Option<bool>,
    },
    /// A message was stored for `to` (`kind`: `voice` or `text`).
    MailWaiting {
        id: u64,
        from: String,
        to: String,
        kind: String,
        bytes: u64,
    },
    /// A stored message was sent to an endpoint of its addressee.
    MailDelivered { id: u64, to: String, bytes: u64 },
    /// Logins of `account` from `address` are refused for `for_s` seconds
    /// (`scope`: `account-from-address`, `address` or `account`).
    LoginLocked {
        account: String,
        address: String,
        scope: String,
        for_s: u64,
    },
    /// Space under the state directory: `low` when fewer than
    /// [`DISK_LOW_BYTES`] are free (told when that changes).
    Disk { free_bytes: u64, low: bool },
}

/// Free bytes under the state directory below which the disk counts as
/// low (the store and stored mail need room).
pub const DISK_LOW_BYTES: u64 = 64 * 1024 * 1024;

impl Event {
    /// The event in words, for `keyline-directory events`.
    pub fn describe(&self) -> String {
        match self {
            Event::Registered {
                number,
                account,
                kind,
                address,
            } => {
                let kind = match kind {
                    EndpointKind::Terminal => "terminal",
                    EndpointKind::Office => "office",
                };
                format!("{number} ({account}) registered by a {kind} at {address}")
            }
            Event::Unregistered {
                number,
                account,
                reason,
            } => format!("{number} ({account}) unregistered: {reason}"),
            Event::CallRinging {
                call,
                caller,
                callee,
                dialled,
            } => {
                if dialled == callee {
                    format!("call {call} {caller} -> {callee} ringing")
                } else {
                    format!("call {call} {caller} -> {callee} (dialled {dialled}) ringing")
                }
            }
            Event::CallAnswered {
                call,
                caller,
                callee,
                relayed,
            } => format!(
                "call {call} {caller} -> {callee} answered ({})",
                if *relayed { "relayed" } else { "direct" }
            ),
            Event::CallRelayed {
                call,
                caller,
                callee,
            } => format!("call {call} {caller} -> {callee} now relayed"),
            Event::CallEnded {
                call,
                caller,
                callee,
                outcome,
                reason,
                relayed,
            } => {
                let path = match relayed {
                    Some(true) => ", relayed",
                    Some(false) => ", direct",
                    None => "",
                };
                format!("call {call} {caller} -> {callee} ended: {outcome} ({reason}{path})")
            }
            Event::MailWaiting {
                id,
                from,
                to,
                kind,
                bytes,
            } => format!("{kind} message {id} from {from} waits for {to} ({bytes} bytes)"),
            Event::MailDelivered { id, to, bytes } => {
                format!("message {id} delivered to {to} ({bytes} bytes)")
            }
            Event::LoginLocked {
                account,
                address,
                scope,
                for_s,
            } => format!("logins of {account} from {address} locked for {for_s} s ({scope})"),
            Event::Disk { free_bytes, low } => {
                if *low {
                    format!("disk: only {free_bytes} bytes free")
                } else {
                    format!("disk: {free_bytes} bytes free")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_and_bad_ones_get_clear_errors() {
        assert_eq!(parse_request(json!({"cmd": "status"})), Ok(Request::Status));
        assert_eq!(
            parse_request(json!({"cmd": "reload", "logout": null})),
            Ok(Request::Reload { logout: None })
        );
        assert_eq!(
            parse_request(json!({"cmd": "reload", "logout": "alice"})),
            Ok(Request::Reload {
                logout: Some("alice".into())
            })
        );
        assert_eq!(
            parse_request(json!({"cmd": "teleport"})),
            Err("unknown command \"teleport\"".into())
        );
        assert_eq!(parse_request(json!({})), Err("missing \"cmd\"".into()));
        assert_eq!(
            parse_request(json!({"cmd": 7})),
            Err("\"cmd\" must be a string".into())
        );
        let e = parse_request(json!({"cmd": "reload", "logout": 5})).unwrap_err();
        assert!(e.starts_with("bad request: reload"), "{e}");
        // Every request round-trips and its name is listed.
        for r in [
            Request::Status,
            Request::Users,
            Request::Bindings,
            Request::Calls,
            Request::Forwards,
            Request::Mail,
            Request::Reload { logout: None },
            Request::Reload {
                logout: Some("bob".into()),
            },
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert!(COMMANDS.contains(&v["cmd"].as_str().unwrap()), "{v}");
            assert_eq!(parse_request(v), Ok(r));
        }
    }

    #[test]
    fn events_and_replies_have_their_documented_shape() {
        let ev = Event::CallAnswered {
            call: 3,
            caller: "1001".into(),
            callee: "1002".into(),
            relayed: false,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            json!({"event": "call-answered", "call": 3, "caller": "1001", "callee": "1002", "relayed": false})
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), ev);
        assert_eq!(ev.describe(), "call 3 1001 -> 1002 answered (direct)");
        let r = Event::Registered {
            number: "1001".into(),
            account: "alice".into(),
            kind: EndpointKind::Office,
            address: "192.0.2.1:4000".into(),
        };
        assert_eq!(serde_json::to_value(&r).unwrap()["kind"], "office");
        assert_eq!(Response::Reloaded {}.to_json(), json!({"ok": true}));
        assert_eq!(
            Response::Calls { calls: vec![] }.to_json(),
            json!({"ok": true, "calls": []})
        );
    }
}
