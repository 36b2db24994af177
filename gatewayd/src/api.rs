//! The gateway's control API as types: the requests its control socket and
//! its admin site take, the replies they get, and the events it publishes
//! to subscribers (`keyline-gatewayd events`, the admin site's live parts).
//!
//! Everything is serde: a request is `{"cmd": "NAME", ...}`, a reply
//! `{"ok": true, ...}`, an event `{"event": "NAME", ...}` (see
//! `docs/gateway-admin.md`). [`API_VERSION`] is in `status`; a change
//! that would break a client bumps it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::db::{CdrRow, NamedRingGroup, RingGroup};

/// Version of the requests, replies and events below.
pub const API_VERSION: u32 = 1;

/// A request to the gateway (`{"cmd": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The gateway's state.
    Status,
    /// Calls in progress.
    Calls,
    /// Stations: approved, waiting, and seen on the LAN.
    Agents,
    /// Call records, newest `limit` of those that match, oldest first.
    Cdr {
        #[serde(default = "default_limit")]
        limit: u32,
        #[serde(default, flatten)]
        filter: CdrFilter,
    },
    /// Approve a waiting station by its pairing code.
    Approve {
        code: String,
        #[serde(default)]
        ext: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
    /// Refuse a waiting station by its pairing code.
    Deny {
        code: String,
    },
    /// Take an approved station's extension away (it must enrol again).
    Revoke {
        ext: String,
    },
    /// Give an approved station another extension (or name).
    SetExtension {
        ext: String,
        #[serde(default)]
        new_ext: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
    /// End a call in progress.
    Hangup {
        call: u64,
    },
    SpeedDialSet {
        code: String,
        number: String,
    },
    SpeedDialRm {
        code: String,
    },
    SpeedDialList,
    RingGroupSet {
        #[serde(default = "default_mode")]
        mode: String,
        #[serde(default = "default_step")]
        step_secs: u64,
        members: Vec<String>,
        /// Whose mailbox takes the office number's unanswered calls
        /// (none: the configuration file's `office_mailbox`, else the
        /// first member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mailbox: Option<String>,
    },
    RingGroupClear,
    /// A new ring group with an extension of its own.
    RingGroupAdd {
        ext: String,
        name: String,
        #[serde(default = "default_mode")]
        mode: String,
        #[serde(default = "default_step")]
        step_secs: u64,
        members: Vec<String>,
        /// Whose mailbox takes the group's unanswered calls (none: the
        /// caller hears the group is unavailable).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mailbox: Option<String>,
    },
    /// Change the ring group with extension `ext` (everything but its
    /// extension; no name: it keeps its name).
    RingGroupEdit {
        ext: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default = "default_mode")]
        mode: String,
        #[serde(default = "default_step")]
        step_secs: u64,
        members: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mailbox: Option<String>,
    },
    RingGroupRemove {
        ext: String,
    },
    /// The ring groups with extensions of their own.
    RingGroupList,
    /// Set the extension range (wins over the configuration file's);
    /// refused while an enrolled station or a ring group is outside it.
    ExtensionRangeSet {
        lo: u32,
        hi: u32,
    },
    /// Forget the range set here: the configuration file's applies again
    /// (refused, as a change, if it would leave anyone outside).
    ExtensionRangeClear,
    /// Every mailbox's messages.
    VoicemailList,
    /// Delete a message from a mailbox.
    VoicemailDelete {
        mailbox: String,
        id: u64,
    },
    /// The greeting callers hear before the beep: a WAV or Ogg Opus file
    /// (stored as Ogg Opus).
    GreetingSet {
        audio: Vec<u8>,
    },
    /// Back to the configuration file's greeting (or the built-in chime).
    GreetingClear,
    /// Forwarding and do-not-disturb of every approved extension.
    LineSettings,
    /// Set one extension's forwarding and do-not-disturb.
    SetLineSettings {
        ext: String,
        #[serde(default)]
        forward_always: Option<String>,
        #[serde(default)]
        forward_busy: Option<String>,
        #[serde(default)]
        forward_no_answer: Option<String>,
        #[serde(default)]
        dnd: bool,
    },
    /// Store a new admin password, given as its argon2id hash (PHC
    /// string; `keyline-gatewayd admin passwd` hashes it), and turn the
    /// admin site on if it was waiting for one.
    AdminPasswd {
        hash: String,
    },
}

fn default_limit() -> u32 {
    100
}
fn default_mode() -> String {
    "all".into()
}
fn default_step() -> u64 {
    15
}

/// Which call records a `cdr` request wants (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrFilter {
    /// A number or extension on either end (a substring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// Started at or after (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Started before (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// One record by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
}

/// The names of every request, for telling an unknown command from a
/// malformed one.
pub const COMMANDS: &[&str] = &[
    "status",
    "calls",
    "agents",
    "cdr",
    "approve",
    "deny",
    "revoke",
    "set-extension",
    "hangup",
    "speed-dial-set",
    "speed-dial-rm",
    "speed-dial-list",
    "ring-group-set",
    "ring-group-clear",
    "ring-group-add",
    "ring-group-edit",
    "ring-group-remove",
    "ring-group-list",
    "extension-range-set",
    "extension-range-clear",
    "voicemail-list",
    "voicemail-delete",
    "greeting-set",
    "greeting-clear",
    "line-settings",
    "set-line-settings",
    "admin-passwd",
];

/// Where a call is, as the admin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallPhase {
    Ringing,
    Answered,
    Held,
    Voicemail,
}

impl CallPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CallPhase::Ringing => "ringing",
            CallPhase::Answered => "answered",
            CallPhase::Held => "held",
            CallPhase::Voicemail => "voicemail",
        }
    }
}

/// A call in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallInfo {
    pub id: u64,
    /// The caller's extension or outside number.
    pub caller: String,
    pub caller_name: Option<String>,
    pub callee: String,
    pub callee_name: Option<String>,
    pub state: CallPhase,
    /// When the call began (Unix ms).
    pub started_ms: i64,
    /// When it entered `state` (Unix ms).
    pub since_ms: i64,
    /// Seconds in `state` when this was taken.
    pub seconds: u64,
    /// One end is outside the office (through the directory).
    pub outside: bool,
    /// The directory's id of an outside call.
    pub directory_call: Option<u64>,
    /// The media runs through the gateway's forwarder (else end to end).
    pub relayed: bool,
    /// Packets a second through the forwarder from each end, over the
    /// last second (relayed calls; direct media never passes the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<Pps>,
}

/// A relayed call's packets a second from each of its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pps {
    pub from_caller: u32,
    pub from_callee: u32,
}

/// A station the gateway knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub fingerprint: String,
    pub ext: Option<String>,
    pub name: Option<String>,
    /// `pending`, `approved` or `denied`.
    pub state: String,
    /// The pairing code, while pending.
    pub code: Option<String>,
    /// Connected and waiting for approval now.
    pub waiting: bool,
    pub online: bool,
    /// Where it is connected from, or was last.
    pub addr: Option<String>,
}

/// The office line to the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uplink {
    /// `off`, `connecting` or `registered`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numbers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Something that happened on the gateway (`{"event": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// An approved station connected.
    StationOnline {
        ext: String,
        name: Option<String>,
        addr: String,
    },
    /// It disconnected (or was replaced by a newer connection of its own).
    StationOffline {
        ext: String,
    },
    /// An unknown station connected and waits for approval with `code`.
    EnrolmentPending {
        fingerprint: String,
        code: String,
        name: Option<String>,
        addr: String,
    },
    /// A waiting station went away before anyone approved it.
    EnrolmentLeft {
        fingerprint: String,
        code: String,
    },
    EnrolmentApproved {
        fingerprint: String,
        ext: String,
        name: Option<String>,
    },
    EnrolmentDenied {
        fingerprint: String,
        code: String,
    },
    /// An approved station lost its extension.
    StationRevoked {
        fingerprint: String,
        ext: String,
    },
    /// A station's extension or name changed.
    StationChanged {
        fingerprint: String,
        old_ext: String,
        ext: String,
        name: Option<String>,
    },
    /// A call appeared or changed (state, ends, path).
    Call {
        call: CallInfo,
    },
    /// A call ended; `outcome` as in its call record.
    CallEnded {
        call: CallInfo,
        outcome: Option<String>,
    },
    /// The office line to the directory changed state.
    Uplink {
        uplink: Uplink,
    },
    /// Whether the mailboxes can take messages changed.
    Disk {
        free_bytes: u64,
        mailboxes_writable: bool,
    },
    /// The ring groups with extensions of their own changed (one was
    /// added, changed or removed): all of them now.
    RingGroups {
        ring_groups: Vec<NamedRingGroup>,
    },
    /// The extension range changed: the one in force now, and where it
    /// comes from (`set-here` or `config`).
    ExtensionRange {
        extension_range: [u32; 2],
        source: String,
    },
}

impl Event {
    /// The event in words, for `keyline-gatewayd events`.
    pub fn describe(&self) -> String {
        let named = |n: &str, name: &Option<String>| match name {
            Some(name) => format!("{n} ({name})"),
            None => n.to_string(),
        };
        match self {
            Event::StationOnline { ext, name, addr } => {
                format!("extension {} online from {addr}", named(ext, name))
            }
            Event::StationOffline { ext } => format!("extension {ext} offline"),
            Event::EnrolmentPending {
                code, name, addr, ..
            } => match name {
                Some(n) => format!("station {n:?} at {addr} waits for approval with code {code}"),
                None => format!("a station at {addr} waits for approval with code {code}"),
            },
            Event::EnrolmentLeft { code, .. } => {
                format!("the station waiting with code {code} left")
            }
            Event::EnrolmentApproved { ext, name, .. } => {
                format!("approved as extension {}", named(ext, name))
            }
            Event::EnrolmentDenied { code, .. } => format!("the station with code {code} denied"),
            Event::StationRevoked { ext, .. } => format!("extension {ext} revoked"),
            Event::StationChanged {
                old_ext, ext, name, ..
            } => {
                format!("extension {old_ext} is now {}", named(ext, name))
            }
            Event::Call { call } => {
                let mut s = format!(
                    "call {} {} -> {} {}",
                    call.id,
                    named(&call.caller, &call.caller_name),
                    named(&call.callee, &call.callee_name),
                    call.state.as_str()
                );
                if call.state != CallPhase::Ringing {
                    match (call.relayed, call.pps) {
                        (true, Some(p)) => s.push_str(&format!(
                            " (relayed, {}/{} packets/s)",
                            p.from_caller, p.from_callee
                        )),
                        (true, None) => s.push_str(" (relayed)"),
                        (false, _) => s.push_str(" (direct)"),
                    }
                }
                s
            }
            Event::CallEnded { call, outcome } => format!(
                "call {} {} -> {} ended: {}",
                call.id,
                call.caller,
                call.callee,
                outcome.as_deref().unwrap_or("ended")
            ),
            Event::Uplink { uplink } => match (&uplink.last_error, uplink.numbers.is_empty()) {
                (Some(e), _) => format!("uplink {}: {e}", uplink.state),
                (None, false) => {
                    format!("uplink {} as {}", uplink.state, uplink.numbers.join(", "))
                }
                (None, true) => format!("uplink {}", uplink.state),
            },
            Event::RingGroups { ring_groups } => {
                if ring_groups.is_empty() {
                    "ring groups: none".into()
                } else {
                    let g: Vec<String> = ring_groups
                        .iter()
                        .map(|g| format!("{} ({})", g.ext, g.name))
                        .collect();
                    format!("ring groups: {}", g.join(", "))
                }
            }
            Event::ExtensionRange {
                extension_range: [lo, hi],
                source,
            } => format!("extension range {lo}-{hi} ({source})"),
            Event::Disk {
                free_bytes,
                mailboxes_writable,
            } => {
                if *mailboxes_writable {
                    format!("disk: {free_bytes} bytes free, voicemail takes messages")
                } else {
                    format!("disk: only {free_bytes} bytes free, voicemail takes no messages")
                }
            }
        }
    }
}

/// The gateway's state (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub api: u32,
    pub version: String,
    pub listen: String,
    pub fingerprint: String,
    pub state_dir: String,
    pub internal_media: String,
    pub ring_timeout_s: u64,
    pub uptime_s: u64,
    pub stations_online: usize,
    pub calls_active: usize,
    pub relay: Value,
    /// The uplink: `state` (`off`, `connecting`, `registered`) and details.
    pub directory: Value,
    pub ring_group: Value,
    /// The ring groups with extensions of their own.
    #[serde(default)]
    pub ring_groups: Vec<NamedRingGroup>,
    /// The extensions stations and ring groups may have, lowest and
    /// highest: the range set here, else the configuration file's
    /// `extension_range`.
    #[serde(default)]
    pub extension_range: [u32; 2],
    /// Where the range comes from: `set-here` (the database) or `config`.
    #[serde(default)]
    pub extension_range_source: String,
    pub disk: Option<Value>,
    /// Where the admin site is served, or why not.
    pub admin: Value,
    /// Connections open (`open`, `max`), refused since start (`refused`,
    /// by limit under `admission`) and the `limits` per address.
    #[serde(default)]
    pub connections: Value,
}

/// A short code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeedDial {
    pub code: String,
    pub number: String,
}

/// A successful reply (serialised with `"ok": true` beside its fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Status(Box<Status>),
    Calls {
        calls: Vec<CallInfo>,
    },
    Agents {
        agents: Vec<AgentInfo>,
        discovered: Vec<Value>,
    },
    Cdr {
        cdr: Vec<CdrRow>,
    },
    Approved {
        ext: String,
        name: Option<String>,
        fingerprint: String,
    },
    Denied {
        fingerprint: String,
    },
    Revoked {
        ext: String,
        fingerprint: String,
    },
    Changed {
        ext: String,
        name: Option<String>,
        fingerprint: String,
    },
    HungUp {
        call: u64,
    },
    SpeedDial {
        code: String,
        number: Option<String>,
    },
    SpeedDials {
        speed_dials: Vec<SpeedDial>,
    },
    RingGroup {
        ring_group: Option<RingGroup>,
    },
    /// One ring group with an extension of its own, as stored.
    NamedRingGroup {
        ring_group: NamedRingGroup,
    },
    RingGroups {
        ring_groups: Vec<NamedRingGroup>,
    },
    /// A removed ring group's extension.
    RingGroupRemoved {
        removed: String,
    },
    ExtensionRange {
        extension_range: [u32; 2],
        source: String,
    },
    LineSettings {
        lines: Vec<LineSettingsInfo>,
    },
    Voicemails {
        voicemails: Vec<crate::db::VoicemailRow>,
    },
    Deleted {
        mailbox: String,
        id: u64,
    },
    Greeting {
        /// Length of the uploaded greeting; none: the default is used.
        greeting_secs: Option<f64>,
    },
    /// The admin password was stored; the admin site now (as `status`
    /// shows it).
    AdminPassword {
        admin_site: Value,
    },
}

/// One extension's forwarding and do-not-disturb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSettingsInfo {
    pub ext: String,
    #[serde(flatten)]
    pub settings: keyline_proto::msg::LineSettings,
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

/// Parse a control-socket request: an unknown `cmd` and a malformed one
/// get different, clear errors.
pub fn parse_request(v: Value) -> Result<Request, String> {
    keyline_net::control::parse_typed(v, COMMANDS, &[])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_from_what_the_cli_sends() {
        let r =
            parse_request(json!({"cmd": "approve", "code": "123456", "ext": null, "name": null}));
        assert_eq!(
            r,
            Ok(Request::Approve {
                code: "123456".into(),
                ext: None,
                name: None
            })
        );
        assert_eq!(
            parse_request(json!({"cmd": "cdr", "limit": 5, "number": "201"})),
            Ok(Request::Cdr {
                limit: 5,
                filter: CdrFilter {
                    number: Some("201".into()),
                    ..CdrFilter::default()
                }
            })
        );
        assert_eq!(
            parse_request(json!({"cmd": "teleport"})),
            Err("unknown command \"teleport\"".into())
        );
        let e = parse_request(json!({"cmd": "hangup", "call": "x"})).unwrap_err();
        assert!(e.starts_with("bad request: hangup"), "{e}");
        assert_eq!(parse_request(json!({})), Err("missing \"cmd\"".into()));
        // Every request round-trips and its name is listed.
        for r in [
            Request::Status,
            Request::Deny { code: "1".into() },
            Request::SetExtension {
                ext: "201".into(),
                new_ext: Some("205".into()),
                name: None,
            },
            Request::RingGroupSet {
                mode: "hunt".into(),
                step_secs: 10,
                members: vec!["201".into()],
                mailbox: Some("201".into()),
            },
            Request::RingGroupAdd {
                ext: "600".into(),
                name: "Sales".into(),
                mode: "all".into(),
                step_secs: 15,
                members: vec!["202".into(), "203".into()],
                mailbox: None,
            },
            Request::RingGroupEdit {
                ext: "600".into(),
                name: None,
                mode: "hunt".into(),
                step_secs: 5,
                members: vec!["203".into()],
                mailbox: Some("203".into()),
            },
            Request::RingGroupRemove { ext: "600".into() },
            Request::RingGroupList,
            Request::ExtensionRangeSet { lo: 200, hi: 299 },
            Request::ExtensionRangeClear,
            Request::AdminPasswd {
                hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            },
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert!(COMMANDS.contains(&v["cmd"].as_str().unwrap()), "{v}");
            assert_eq!(parse_request(v), Ok(r));
        }
    }

    #[test]
    fn events_and_replies_have_their_documented_shape() {
        let ev = Event::EnrolmentPending {
            fingerprint: "ab".into(),
            code: "123456".into(),
            name: None,
            addr: "10.0.0.2:5000".into(),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "enrolment-pending");
        assert_eq!(v["code"], "123456");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), ev);
        let r = Response::HungUp { call: 7 }.to_json();
        assert_eq!(r, json!({"ok": true, "call": 7}));
        assert_eq!(
            Event::StationOffline { ext: "201".into() }.describe(),
            "extension 201 offline"
        );
    }
}
