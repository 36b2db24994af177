//! The agent's control API as types: every request its control socket
//! takes, parsed once into [`Request`] before either mode (office station
//! or internet terminal) looks at it.
//!
//! A request is `{"cmd": "NAME", ...}` and its reply `{"ok": true, ...}`
//! or `{"ok": false, "error": "..."}`; events are the station's (see
//! `docs/control-api.md`). [`API_VERSION`] is in `status`; a change that
//! would break a client bumps it.

use keyline_proto::phone::Command;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the requests and replies below.
pub const API_VERSION: u32 = 1;

fn yes() -> bool {
    true
}

/// A request to the agent (`{"cmd": "...", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The station's state: link, call, settings, audio.
    Status,
    /// Place a call. `lookup`: ring the callee's terminal only (an
    /// internet terminal's look-up-only call, DESIGN §2).
    Dial {
        number: String,
        #[serde(default)]
        lookup: bool,
    },
    Answer,
    Hangup,
    Hold,
    Resume,
    /// Blind transfer of the connected call.
    Transfer {
        target: String,
    },
    /// Attended transfer: put the call on hold and call `target`.
    Consult {
        target: String,
    },
    ConsultComplete,
    ConsultCancel,
    Mute {
        #[serde(default = "yes")]
        on: bool,
    },
    /// Send (or stop sending) the camera's picture.
    Video {
        #[serde(default = "yes")]
        on: bool,
    },
    /// Record the connected call (on) or stop (off).
    Record {
        #[serde(default = "yes")]
        on: bool,
    },
    /// Recent calls.
    History,
    /// Media figures of the call in progress and the last one.
    Metrics,
    /// The sound cards the agent can open.
    AudioDevices,
    /// Choose the microphone, speaker, ringing device or ringtone file
    /// (`in`, `out`, `ring_out`, `ringtone`; null: back to the default);
    /// checked by the audio module, which opens each before it changes
    /// anything.
    AudioSet {
        #[serde(flatten)]
        choice: Map<String, Value>,
    },
    /// Send a text to `to`.
    Message {
        to: String,
        body: String,
    },
    /// Texts received and not yet read (reading them marks them read).
    Messages,
    VoicemailList,
    /// Play one voice message (`id`), or the oldest unheard.
    VoicemailPlay {
        #[serde(default)]
        id: Option<u64>,
    },
    VoicemailDelete {
        id: u64,
    },
    /// The office's other stations and short codes (office stations).
    Contacts,
    /// Server-side forwarding of one of the account's numbers (internet
    /// terminals; default: the first number).
    ForwardSet {
        #[serde(default)]
        number: Option<String>,
        #[serde(default)]
        rules: Vec<ForwardSetRule>,
    },
    /// Turn forwarding off for some conditions, or for all.
    ForwardOff {
        #[serde(default)]
        number: Option<String>,
        #[serde(default)]
        conditions: Vec<String>,
    },
    ForwardList,
    /// Change the account's password (internet terminals).
    Passwd {
        old: String,
        new: String,
    },
    /// The account on the directory: its numbers and its devices
    /// (internet terminals).
    Account,
}

/// One rule of `forward-set`: a condition (`always`, `busy`,
/// `no-answer`, `offline`) and its target number. Other fields are
/// ignored, so the rules `forward-list` returns (with their `on`) can be
/// sent back as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardSetRule {
    pub when: String,
    pub to: String,
}

/// Every command name [`Request`] knows (`status` lists it for clients).
pub const COMMANDS: &[&str] = &[
    "status",
    "dial",
    "answer",
    "hangup",
    "hold",
    "resume",
    "transfer",
    "consult",
    "consult-complete",
    "consult-cancel",
    "mute",
    "video",
    "record",
    "history",
    "metrics",
    "audio-devices",
    "audio-set",
    "message",
    "messages",
    "voicemail-list",
    "voicemail-play",
    "voicemail-delete",
    "contacts",
    "forward-set",
    "forward-off",
    "forward-list",
    "passwd",
    "account",
];

/// Parse one control request: an unknown command, a missing field or a
/// field of the wrong type is a clear error naming the command. A field
/// given as null counts as not given (its default), except in
/// `audio-set`, where null means "back to the default device".
pub fn parse_request(v: Value) -> Result<Request, String> {
    keyline_net::control::parse_typed(v, COMMANDS, &["audio-set"])
}

impl Request {
    /// The phone core's command this request is, if it is one.
    pub fn call_command(&self) -> Option<Command> {
        Some(match self {
            Request::Dial { number, lookup } => Command::Dial {
                number: number.clone(),
                lookup: *lookup,
            },
            Request::Answer => Command::Answer,
            Request::Hangup => Command::Hangup,
            Request::Hold => Command::Hold,
            Request::Resume => Command::Resume,
            Request::Transfer { target } => Command::Transfer {
                target: target.clone(),
            },
            Request::Consult { target } => Command::Consult {
                target: target.clone(),
            },
            Request::ConsultComplete => Command::ConsultComplete,
            Request::ConsultCancel => Command::ConsultCancel,
            _ => return None,
        })
    }

    /// The command's name, as sent.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Dial { .. } => "dial",
            Request::Answer => "answer",
            Request::Hangup => "hangup",
            Request::Hold => "hold",
            Request::Resume => "resume",
            Request::Transfer { .. } => "transfer",
            Request::Consult { .. } => "consult",
            Request::ConsultComplete => "consult-complete",
            Request::ConsultCancel => "consult-cancel",
            Request::Mute { .. } => "mute",
            Request::Video { .. } => "video",
            Request::Record { .. } => "record",
            Request::History => "history",
            Request::Metrics => "metrics",
            Request::AudioDevices => "audio-devices",
            Request::AudioSet { .. } => "audio-set",
            Request::Message { .. } => "message",
            Request::Messages => "messages",
            Request::VoicemailList => "voicemail-list",
            Request::VoicemailPlay { .. } => "voicemail-play",
            Request::VoicemailDelete { .. } => "voicemail-delete",
            Request::Contacts => "contacts",
            Request::ForwardSet { .. } => "forward-set",
            Request::ForwardOff { .. } => "forward-off",
            Request::ForwardList => "forward-list",
            Request::Passwd { .. } => "passwd",
            Request::Account => "account",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_from_what_the_cli_and_the_window_send() {
        assert_eq!(
            parse_request(json!({"cmd": "dial", "number": "김민준"})),
            Ok(Request::Dial {
                number: "김민준".into(),
                lookup: false
            })
        );
        assert_eq!(
            parse_request(json!({"cmd": "mute"})),
            Ok(Request::Mute { on: true })
        );
        assert_eq!(
            parse_request(json!({"cmd": "voicemail-play", "id": null})),
            Ok(Request::VoicemailPlay { id: None })
        );
        let set =
            parse_request(json!({"cmd": "audio-set", "ring_out": null, "in": "null"})).unwrap();
        let Request::AudioSet { choice } = set else {
            panic!("{set:?}")
        };
        assert_eq!(choice.get("ring_out"), Some(&Value::Null));
        assert_eq!(choice.get("in"), Some(&json!("null")));
        assert_eq!(
            parse_request(json!({"cmd": "forward-set", "rules": [{"when": "busy", "to": "3003"}]})),
            Ok(Request::ForwardSet {
                number: None,
                rules: vec![ForwardSetRule {
                    when: "busy".into(),
                    to: "3003".into()
                }]
            })
        );
    }

    #[test]
    fn every_command_name_parses_and_names_itself() {
        let fields = |cmd: &str| match cmd {
            "dial" => json!({"cmd": cmd, "number": "1"}),
            "transfer" | "consult" => json!({"cmd": cmd, "target": "1"}),
            "message" => json!({"cmd": cmd, "to": "1", "body": "hi"}),
            "voicemail-delete" => json!({"cmd": cmd, "id": 1}),
            "passwd" => json!({"cmd": cmd, "old": "a", "new": "b"}),
            _ => json!({"cmd": cmd}),
        };
        for cmd in COMMANDS {
            let r = parse_request(fields(cmd)).unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert_eq!(r.name(), *cmd);
            // And back: what a client would send.
            let again = serde_json::to_value(&r).unwrap();
            assert_eq!(parse_request(again), Ok(r));
        }
    }

    #[test]
    fn null_is_the_default_and_listed_rules_can_be_sent_back() {
        assert_eq!(
            parse_request(json!({"cmd": "mute", "on": null})),
            Ok(Request::Mute { on: true })
        );
        assert_eq!(
            parse_request(json!({"cmd": "dial", "number": "202", "lookup": null})),
            Ok(Request::Dial {
                number: "202".into(),
                lookup: false
            })
        );
        // What `forward-list` shows, sent back to `forward-set`.
        let r = parse_request(json!({"cmd": "forward-set", "number": null,
            "rules": [{"when": "busy", "to": "3003", "on": true}]}));
        assert_eq!(
            r,
            Ok(Request::ForwardSet {
                number: None,
                rules: vec![ForwardSetRule {
                    when: "busy".into(),
                    to: "3003".into()
                }]
            })
        );
    }

    #[test]
    fn bad_requests_get_errors_naming_the_command() {
        assert_eq!(
            parse_request(json!({"cmd": "teleport"})),
            Err("unknown command \"teleport\"".into())
        );
        assert_eq!(
            parse_request(json!({"number": "1"})),
            Err("missing \"cmd\"".into())
        );
        assert_eq!(
            parse_request(json!({"cmd": 7})),
            Err("\"cmd\" must be a string".into())
        );
        let e = parse_request(json!({"cmd": "dial"})).unwrap_err();
        assert!(
            e.starts_with("bad request: dial:") && e.contains("number"),
            "{e}"
        );
        let e = parse_request(json!({"cmd": "dial", "number": 5})).unwrap_err();
        assert!(e.starts_with("bad request: dial:"), "{e}");
        let e = parse_request(json!({"cmd": "voicemail-play", "id": "3"})).unwrap_err();
        assert!(e.starts_with("bad request: voicemail-play:"), "{e}");
    }

    #[test]
    fn call_requests_become_the_cores_commands() {
        let r = parse_request(json!({"cmd": "consult", "target": "203"})).unwrap();
        assert_eq!(
            r.call_command(),
            Some(Command::Consult {
                target: "203".into()
            })
        );
        assert_eq!(Request::History.call_command(), None);
    }
}
