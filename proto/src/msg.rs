//! Control messages exchanged on a connection's control stream.
//!
//! Every message is a CBOR map with a `t` key naming its kind. Unknown
//! fields are ignored (forward compatibility); an unknown kind decodes to
//! [`CodecError::UnknownKind`] so the receiver can answer with an error
//! instead of dropping the peer.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_body, CodecError};

/// Request identifier chosen by the sender of a request, echoed in replies.
pub type ReqId = u64;
/// Call identifier chosen by the gateway.
pub type CallId = u64;

/// What kind of endpoint is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Agent,
    Gateway,
    Terminal,
    Directory,
}

/// Why a dial attempt failed before anything rang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailReason {
    /// No such number or extension.
    UnknownNumber,
    /// The number is not well-formed.
    InvalidNumber,
    /// The callee is in another call.
    Busy,
    /// The callee exists but is not connected.
    Unreachable,
    /// The caller may not place calls (e.g. not yet approved).
    NotAllowed,
    /// The caller is already in a call.
    AlreadyInCall,
    /// The caller dialled itself.
    SelfCall,
    /// Forwarding rules send the call round in a circle (or too far).
    ForwardLoop,
    /// A feature code nobody knows, or one this gateway does not offer.
    UnknownFeature,
    /// Do-not-disturb is on at the callee.
    DoNotDisturb,
    /// It rang, and nobody answered (an outside number, or a transfer
    /// target).
    NoAnswer,
    /// It rang, and the callee declined.
    Declined,
}

impl FailReason {
    pub fn describe(self) -> &'static str {
        match self {
            FailReason::UnknownNumber => "unknown number",
            FailReason::InvalidNumber => "invalid number",
            FailReason::Busy => "busy",
            FailReason::Unreachable => "unreachable (not connected)",
            FailReason::NotAllowed => "not allowed (this station is not approved)",
            FailReason::AlreadyInCall => "already in a call",
            FailReason::SelfCall => "cannot call yourself",
            FailReason::ForwardLoop => "forwarding loop (the rules send the call in a circle)",
            FailReason::UnknownFeature => "unknown feature code",
            FailReason::DoNotDisturb => "do not disturb",
            FailReason::NoAnswer => "no answer",
            FailReason::Declined => "declined",
        }
    }
}

/// Why an established or ringing call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The other party hung up.
    Hangup,
    /// The caller gave up while it rang.
    Cancelled,
    /// The callee declined.
    Rejected,
    /// The callee turned out to be busy after all (an outside number
    /// whose directory said it rings).
    Busy,
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The other party's connection was lost.
    PeerLost,
    /// Media could not be set up.
    MediaFailed,
    /// The gateway is shutting down.
    Shutdown,
    /// Another station picked the ringing call up.
    AnsweredElsewhere,
    /// Nobody answered here; the call moved on to the forward target.
    Forwarded,
    /// This end handed the call on to someone else, who took it.
    Transferred,
}

/// An extension's call-handling settings, kept on the gateway (claim 7 for
/// the office) and shown to the station.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSettings {
    /// Forward every call to this number.
    #[serde(default)]
    pub forward_always: Option<String>,
    /// Forward when the line is in another call.
    #[serde(default)]
    pub forward_busy: Option<String>,
    /// Forward when nobody answers within the ring timeout (or the station
    /// is not connected).
    #[serde(default)]
    pub forward_no_answer: Option<String>,
    /// Do not disturb: callers get busy.
    #[serde(default)]
    pub dnd: bool,
}

/// How an end of an answered call sets up its end-to-end media connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPlan {
    /// `true`: connect to `peer_addr`; `false`: wait for the peer to connect.
    pub dial: bool,
    /// Where to connect (the peer itself, or the gateway's forwarder).
    pub peer_addr: Option<String>,
    /// SHA-256 fingerprint (hex) of the certificate the peer must present.
    pub peer_fp: String,
    /// Per-call secret both ends present on the media connection.
    pub token: String,
    /// Whether the path runs through the gateway's forwarder.
    pub relayed: bool,
    /// For an outside call: the directory's id of the call, which both
    /// ends present in `MediaHello` and use as the media flow id (the far
    /// end knows no other). Absent: this call's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_call: Option<CallId>,
}

impl MediaPlan {
    /// The call id presented on the media connection and used as its
    /// flow id.
    pub fn flow(&self, call: CallId) -> CallId {
        self.media_call.unwrap_or(call)
    }
}

/// One voicemail message in a mailbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoicemailInfo {
    pub id: u64,
    pub from: String,
    pub at_ms: i64,
    pub secs: f64,
    pub heard: bool,
}

/// One entry of the office's contacts: a station (its extension and
/// name) or a short code (`*1`, `**12`) and the number it dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// The station's name; none for a short code or an unnamed station.
    #[serde(default)]
    pub name: Option<String>,
    /// What to dial: the extension, or the short code's number.
    pub number: String,
    /// The short code, for a short code.
    #[serde(default)]
    pub code: Option<String>,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Msg {
    /// First message of the connecting side.
    Hello {
        version: u32,
        role: Role,
        name: Option<String>,
    },
    /// Gateway → agent: not approved yet; the admin approves this code.
    Pending {
        code: String,
    },
    /// Gateway → agent: approved, with the extension it now holds.
    Registered {
        ext: String,
        name: Option<String>,
    },
    /// Agent → gateway: place a call.
    Dial {
        req: ReqId,
        number: String,
    },
    /// Gateway → caller: the callee is ringing.
    Ringing {
        req: ReqId,
        call: CallId,
        callee: String,
    },
    /// Gateway → caller: the call could not be placed.
    DialFailed {
        req: ReqId,
        reason: FailReason,
        message: String,
    },
    /// Gateway → callee: an incoming call.
    Ring {
        call: CallId,
        from: String,
        from_name: Option<String>,
    },
    /// Callee → gateway: take the call.
    Answer {
        call: CallId,
    },
    /// Callee → gateway: decline the call.
    Reject {
        call: CallId,
    },
    /// Either end → gateway: end the call.
    Hangup {
        call: CallId,
    },
    /// Gateway → both ends: the call is answered; set up media.
    Connect {
        call: CallId,
        media: MediaPlan,
    },
    /// Gateway → an end: the call is over.
    Ended {
        call: CallId,
        reason: EndReason,
    },
    /// Gateway → station: a feature code was applied.
    Feature {
        req: ReqId,
        message: String,
    },
    /// Gateway → station: its call-handling settings (on register and on
    /// every change).
    Settings {
        settings: LineSettings,
    },
    /// Gateway → caller: nobody answered; the call now rings `to`.
    Forwarded {
        call: CallId,
        to: String,
    },
    /// Gateway → a station that dialled the pick-up code: it now holds
    /// the ringing call from `from`.
    PickedUp {
        req: ReqId,
        call: CallId,
        from: String,
    },
    /// Station → gateway: put the call on hold (`on`) or take it off.
    Hold {
        call: CallId,
        on: bool,
    },
    /// Gateway → the other end: the call was put on hold, or resumed.
    Held {
        call: CallId,
        on: bool,
    },
    /// Station → gateway: hand the other end of `call` on to `target`
    /// (blind transfer). The call stays until the target answers.
    Transfer {
        req: ReqId,
        call: CallId,
        target: String,
    },
    /// Station → gateway: hold `call` and call `target` to consult first
    /// (attended transfer).
    Consult {
        req: ReqId,
        call: CallId,
        target: String,
    },
    /// Station → gateway: join the held party to the consulted one.
    ConsultComplete {
        req: ReqId,
    },
    /// Gateway → transferring station: `to` rings for the other end.
    Transferring {
        req: ReqId,
        call: CallId,
        to: String,
    },
    /// Gateway → transferring station: the transfer failed; the call is
    /// back with you.
    TransferFailed {
        req: ReqId,
        call: CallId,
        reason: FailReason,
        message: String,
    },
    /// Gateway → the transferred end: your call `old` continues as `new`
    /// with `peer` (media set-up follows).
    Replaced {
        old: CallId,
        new: CallId,
        peer: String,
    },
    /// Gateway → station: how many voicemails wait unheard.
    MessageWaiting {
        voicemails: u32,
    },
    /// Station → gateway: list my voicemails.
    VoicemailList {
        req: ReqId,
    },
    /// Gateway → station: the mailbox.
    Voicemails {
        req: ReqId,
        items: Vec<VoicemailInfo>,
    },
    /// Station → gateway: a piece of a voicemail's Ogg Opus file.
    VoicemailFetch {
        req: ReqId,
        id: u64,
        offset: u64,
    },
    /// Gateway → station: bytes `offset..offset+data.len()` of `total`.
    VoicemailChunk {
        req: ReqId,
        id: u64,
        offset: u64,
        total: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Station → gateway: delete a voicemail (answered with `Voicemails`).
    VoicemailDelete {
        req: ReqId,
        id: u64,
    },
    /// Station → gateway: send a text message.
    SendText {
        req: ReqId,
        to: String,
        body: String,
    },
    /// Gateway → station: the text was stored for delivery.
    TextSent {
        req: ReqId,
        id: u64,
    },
    /// Gateway → station: a text message, kept until the station reads it.
    Text {
        id: u64,
        from: String,
        body: String,
        sent_ms: i64,
    },
    /// Station → gateway: these texts were read; forget them.
    TextRead {
        ids: Vec<u64>,
    },
    /// Station → gateway: the office's contacts, please.
    ContactList {
        req: ReqId,
    },
    /// Gateway → station: the other stations and the short codes.
    Contacts {
        req: ReqId,
        items: Vec<ContactInfo>,
    },
    /// First message on a media connection, from the dialling end.
    MediaHello {
        call: CallId,
        token: String,
    },
    /// Reply to `MediaHello` from the accepting end.
    MediaOk {
        call: CallId,
    },
    Ping {
        n: u64,
    },
    Pong {
        n: u64,
    },
    /// A request could not be served.
    Error {
        req: Option<ReqId>,
        code: String,
        message: String,
    },
}

impl Msg {
    /// Decode a frame body, telling an unknown kind apart from garbage.
    pub fn from_cbor(body: &[u8]) -> Result<Msg, CodecError> {
        match decode_body::<Msg>(body) {
            Ok(m) => Ok(m),
            Err(err) => {
                // A well-formed map with a kind we do not know is a newer
                // peer, not an attacker: report the kind.
                if let Ok(ciborium::Value::Map(entries)) = decode_body::<ciborium::Value>(body) {
                    for (k, v) in entries {
                        if let (ciborium::Value::Text(k), ciborium::Value::Text(kind)) = (k, v) {
                            if k == "t" && !KNOWN_KINDS.contains(&kind.as_str()) {
                                return Err(CodecError::UnknownKind(kind));
                            }
                        }
                    }
                }
                Err(err)
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Pending { .. } => "pending",
            Msg::Registered { .. } => "registered",
            Msg::Dial { .. } => "dial",
            Msg::Ringing { .. } => "ringing",
            Msg::DialFailed { .. } => "dial-failed",
            Msg::Ring { .. } => "ring",
            Msg::Answer { .. } => "answer",
            Msg::Reject { .. } => "reject",
            Msg::Hangup { .. } => "hangup",
            Msg::Connect { .. } => "connect",
            Msg::Ended { .. } => "ended",
            Msg::Feature { .. } => "feature",
            Msg::Settings { .. } => "settings",
            Msg::Forwarded { .. } => "forwarded",
            Msg::PickedUp { .. } => "picked-up",
            Msg::Transfer { .. } => "transfer",
            Msg::Consult { .. } => "consult",
            Msg::ConsultComplete { .. } => "consult-complete",
            Msg::Transferring { .. } => "transferring",
            Msg::TransferFailed { .. } => "transfer-failed",
            Msg::Replaced { .. } => "replaced",
            Msg::MessageWaiting { .. } => "message-waiting",
            Msg::VoicemailList { .. } => "voicemail-list",
            Msg::Voicemails { .. } => "voicemails",
            Msg::VoicemailFetch { .. } => "voicemail-fetch",
            Msg::VoicemailChunk { .. } => "voicemail-chunk",
            Msg::VoicemailDelete { .. } => "voicemail-delete",
            Msg::Hold { .. } => "hold",
            Msg::Held { .. } => "held",
            Msg::SendText { .. } => "send-text",
            Msg::TextSent { .. } => "text-sent",
            Msg::Text { .. } => "text",
            Msg::TextRead { .. } => "text-read",
            Msg::ContactList { .. } => "contact-list",
            Msg::Contacts { .. } => "contacts",
            Msg::MediaHello { .. } => "media-hello",
            Msg::MediaOk { .. } => "media-ok",
            Msg::Ping { .. } => "ping",
            Msg::Pong { .. } => "pong",
            Msg::Error { .. } => "error",
        }
    }
}

const KNOWN_KINDS: &[&str] = &[
    "hello",
    "pending",
    "registered",
    "dial",
    "ringing",
    "dial-failed",
    "ring",
    "answer",
    "reject",
    "hangup",
    "connect",
    "ended",
    "feature",
    "settings",
    "forwarded",
    "picked-up",
    "transfer",
    "consult",
    "consult-complete",
    "transferring",
    "transfer-failed",
    "replaced",
    "message-waiting",
    "contact-list",
    "contacts",
    "voicemail-list",
    "voicemails",
    "voicemail-fetch",
    "voicemail-chunk",
    "voicemail-delete",
    "hold",
    "held",
    "send-text",
    "text-sent",
    "text",
    "text-read",
    "media-hello",
    "media-ok",
    "ping",
    "pong",
    "error",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;

    fn roundtrip(m: &Msg) -> Msg {
        let frame = encode_frame(m, crate::MAX_MESSAGE).expect("encode");
        Msg::from_cbor(&frame[4..]).expect("decode")
    }

    #[test]
    fn every_kind_roundtrips_and_is_known() {
        let plan = MediaPlan {
            dial: true,
            peer_addr: Some("10.0.0.2:7470".into()),
            peer_fp: "ab".repeat(32),
            token: "00ff".into(),
            relayed: false,
            media_call: None,
        };
        let all = vec![
            Msg::Hello {
                version: 1,
                role: Role::Agent,
                name: Some("desk".into()),
            },
            Msg::Pending {
                code: "123456".into(),
            },
            Msg::Registered {
                ext: "201".into(),
                name: None,
            },
            Msg::Dial {
                req: 1,
                number: "202".into(),
            },
            Msg::Ringing {
                req: 1,
                call: 7,
                callee: "202".into(),
            },
            Msg::DialFailed {
                req: 1,
                reason: FailReason::Busy,
                message: "busy".into(),
            },
            Msg::Ring {
                call: 7,
                from: "201".into(),
                from_name: None,
            },
            Msg::Answer { call: 7 },
            Msg::Reject { call: 7 },
            Msg::Hangup { call: 7 },
            Msg::Connect {
                call: 7,
                media: plan,
            },
            Msg::Ended {
                call: 7,
                reason: EndReason::Hangup,
            },
            Msg::Feature {
                req: 2,
                message: "forward on".into(),
            },
            Msg::Settings {
                settings: LineSettings {
                    forward_always: Some("203".into()),
                    dnd: true,
                    ..LineSettings::default()
                },
            },
            Msg::Forwarded {
                call: 7,
                to: "203".into(),
            },
            Msg::PickedUp {
                req: 3,
                call: 7,
                from: "201".into(),
            },
            Msg::SendText {
                req: 4,
                to: "202".into(),
                body: "lunch?".into(),
            },
            Msg::TextSent { req: 4, id: 9 },
            Msg::Text {
                id: 9,
                from: "201".into(),
                body: "lunch?".into(),
                sent_ms: 5,
            },
            Msg::TextRead { ids: vec![9] },
            Msg::ContactList { req: 9 },
            Msg::Contacts {
                req: 9,
                items: vec![
                    ContactInfo {
                        name: Some("Bob".into()),
                        number: "202".into(),
                        code: None,
                    },
                    ContactInfo {
                        name: None,
                        number: "+15550100".into(),
                        code: Some("*1".into()),
                    },
                ],
            },
            Msg::Transfer {
                req: 5,
                call: 7,
                target: "203".into(),
            },
            Msg::Consult {
                req: 5,
                call: 7,
                target: "203".into(),
            },
            Msg::ConsultComplete { req: 5 },
            Msg::Transferring {
                req: 5,
                call: 7,
                to: "203".into(),
            },
            Msg::TransferFailed {
                req: 5,
                call: 7,
                reason: FailReason::Busy,
                message: "busy".into(),
            },
            Msg::Replaced {
                old: 7,
                new: 8,
                peer: "203".into(),
            },
            Msg::MessageWaiting { voicemails: 2 },
            Msg::VoicemailList { req: 6 },
            Msg::Voicemails {
                req: 6,
                items: vec![VoicemailInfo {
                    id: 1,
                    from: "201".into(),
                    at_ms: 5,
                    secs: 3.5,
                    heard: false,
                }],
            },
            Msg::VoicemailFetch {
                req: 7,
                id: 1,
                offset: 0,
            },
            Msg::VoicemailChunk {
                req: 7,
                id: 1,
                offset: 0,
                total: 3,
                data: vec![1, 2, 3],
            },
            Msg::VoicemailDelete { req: 8, id: 1 },
            Msg::Hold { call: 7, on: true },
            Msg::Held { call: 7, on: false },
            Msg::MediaHello {
                call: 7,
                token: "t".into(),
            },
            Msg::MediaOk { call: 7 },
            Msg::Ping { n: 3 },
            Msg::Pong { n: 3 },
            Msg::Error {
                req: None,
                code: "x".into(),
                message: "y".into(),
            },
        ];
        for m in &all {
            assert_eq!(&roundtrip(m), m);
            assert!(KNOWN_KINDS.contains(&m.kind()));
        }
        assert_eq!(all.len(), KNOWN_KINDS.len());
    }

    #[test]
    fn unknown_kind_is_reported_not_garbage() {
        let mut body = Vec::new();
        let v = ciborium::Value::Map(vec![(
            ciborium::Value::Text("t".into()),
            ciborium::Value::Text("teleport".into()),
        )]);
        ciborium::into_writer(&v, &mut body).expect("encode");
        assert!(
            matches!(Msg::from_cbor(&body), Err(CodecError::UnknownKind(k)) if k == "teleport")
        );
        assert!(matches!(
            Msg::from_cbor(&[0xff, 0x00, 0x13]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let v = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("t".into()),
                ciborium::Value::Text("ping".into()),
            ),
            (
                ciborium::Value::Text("n".into()),
                ciborium::Value::Integer(5.into()),
            ),
            (
                ciborium::Value::Text("future".into()),
                ciborium::Value::Bool(true),
            ),
        ]);
        let mut body = Vec::new();
        ciborium::into_writer(&v, &mut body).expect("encode");
        assert_eq!(Msg::from_cbor(&body).expect("decode"), Msg::Ping { n: 5 });
    }
}
