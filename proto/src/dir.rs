//! The directory protocol: messages between an endpoint (a gateway or a
//! terminal) and the internet directory.
//!
//! Framing and encoding are those of [`crate::msg`]: length-prefixed CBOR
//! maps with a `t` key naming the kind; unknown fields are ignored, an
//! unknown kind decodes to [`CodecError::UnknownKind`].
//!
//! A connection carries one bidirectional control stream opened by the
//! endpoint: [`DirMsg::Hello`] first, answered by [`DirMsg::Welcome`] (with
//! the address the directory observes). Requests carry a [`ReqId`] echoed by
//! the reply ([`DirMsg::Ok`], [`DirMsg::Error`] or a specific message).
//!
//! Mail travels on streams of its own so a large voice message never delays
//! a ring: to leave one, the endpoint opens a bidirectional stream and sends
//! [`DirMsg::LeaveMail`] followed by one raw body frame (a 4-byte big-endian
//! length and the bytes); the directory answers [`DirMsg::MailStored`] or
//! [`DirMsg::Error`] on that stream. To deliver one, the directory opens a
//! unidirectional stream with [`DirMsg::Mail`] and a raw body frame; the
//! endpoint acknowledges with [`DirMsg::AckMail`] on the control stream,
//! and only then is the message deleted.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_body, CodecError};
use crate::msg::Role;

/// Request identifier chosen by the sender of a request, echoed in replies.
pub type ReqId = u64;
/// Call identifier chosen by the directory.
pub type CallId = u64;
/// Stored message identifier chosen by the directory.
pub type MailId = u64;

/// Default UDP port of a directory.
pub const DEFAULT_PORT: u16 = 7480;
/// Most forwarding steps (server-side forwards and client-side redirects)
/// one call may take before it ends with an error.
pub const MAX_HOPS: usize = 5;
/// Most candidate addresses an endpoint may announce.
pub const MAX_CANDIDATES: usize = 8;
/// Largest mail body the protocol allows at all; a directory's own limits
/// are usually lower.
pub const MAX_MAIL_BODY: usize = 16 * 1024 * 1024;
/// The first bytes of every Ogg stream (and so of an Ogg Opus voice mail).
pub const OGG_MAGIC: &[u8; 4] = b"OggS";

/// How the two ends of an answered call reach each other (the
/// direct-connect rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DirectPolicy {
    /// End to end only; the call fails when the ends cannot reach each other.
    Direct,
    /// End to end first; through the directory's relay when the direct
    /// attempt fails within the deadline.
    #[default]
    DirectThenRelay,
    /// Always through the directory's relay.
    Relay,
}

impl DirectPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DirectPolicy::Direct => "direct",
            DirectPolicy::DirectThenRelay => "direct-then-relay",
            DirectPolicy::Relay => "relay",
        }
    }
}

/// When a server-side forwarding rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardWhen {
    /// Every call.
    Always,
    /// Only while the number has no live registration.
    Unregistered,
    /// When the endpoint declines the call as busy (or the number is set
    /// to do-not-disturb).
    Busy,
    /// When the call rings unanswered until the ring timeout.
    NoAnswer,
}

impl ForwardWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardWhen::Always => "always",
            ForwardWhen::Unregistered => "unregistered",
            ForwardWhen::Busy => "busy",
            ForwardWhen::NoAnswer => "no-answer",
        }
    }

    pub fn parse(s: &str) -> Option<ForwardWhen> {
        match s {
            "always" => Some(ForwardWhen::Always),
            "unregistered" | "offline" => Some(ForwardWhen::Unregistered),
            "busy" => Some(ForwardWhen::Busy),
            "no-answer" => Some(ForwardWhen::NoAnswer),
            _ => None,
        }
    }
}

impl ForwardWhen {
    /// Every kind, in the order lists show them.
    pub const ALL: [ForwardWhen; 4] = [
        ForwardWhen::Always,
        ForwardWhen::Busy,
        ForwardWhen::NoAnswer,
        ForwardWhen::Unregistered,
    ];
}

/// A server-side forwarding rule of one number. A number has at most one
/// rule of each kind ([`ForwardWhen`]); several kinds apply at once, an
/// `always` rule that is on before all others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRule {
    pub when: ForwardWhen,
    /// The number calls go to (canonical once stored).
    pub to: String,
    /// Whether the rule is followed; one that is off keeps its target.
    /// Absent (an older sender): on.
    #[serde(default = "rule_on")]
    pub on: bool,
}

fn rule_on() -> bool {
    true
}

impl ForwardRule {
    /// A rule that is on.
    pub fn new(when: ForwardWhen, to: impl Into<String>) -> ForwardRule {
        ForwardRule {
            when,
            to: to.into(),
            on: true,
        }
    }
}

/// The forwarding rules of one number, in [`ForwardWhen::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberForwards {
    pub number: String,
    pub rules: Vec<ForwardRule>,
}

/// What a stored message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailKind {
    /// Ogg Opus audio.
    Voice,
    /// UTF-8 text.
    Text,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Voice => "voice",
            MailKind::Text => "text",
        }
    }

    pub fn parse(s: &str) -> Option<MailKind> {
        match s {
            "voice" => Some(MailKind::Voice),
            "text" => Some(MailKind::Text),
            _ => None,
        }
    }
}

/// Why a call that rang (or was about to ring) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The other end hung up.
    Hangup,
    /// The caller gave up while it rang.
    Cancelled,
    /// The callee declined.
    Rejected,
    /// The callee is busy.
    Busy,
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The other end's connection to the directory was lost.
    PeerLost,
    /// The callee sent the caller elsewhere (see [`DirMsg::Redirected`]).
    Redirected,
    /// No media path could be set up (the relay failed).
    MediaFailed,
    /// The directory is shutting down.
    Shutdown,
    /// A reason this version does not know.
    #[serde(other)]
    Other,
}

impl EndReason {
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Hangup => "the other end hung up",
            EndReason::Cancelled => "the caller cancelled",
            EndReason::Rejected => "the callee declined the call",
            EndReason::Busy => "the callee is busy",
            EndReason::NoAnswer => "no answer",
            EndReason::PeerLost => "the other end lost its connection",
            EndReason::Redirected => "the callee redirected the call",
            EndReason::MediaFailed => "no media path could be set up",
            EndReason::Shutdown => "the directory is shutting down",
            EndReason::Other => "ended",
        }
    }
}

/// What went wrong, machine-readably; the accompanying message says it for
/// people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Unsupported protocol version.
    Version,
    /// A message that is not allowed here or now.
    Unexpected,
    /// A message kind the directory does not know.
    UnknownKind,
    /// The request needs a logged-in account.
    NotLoggedIn,
    /// Wrong account or password.
    BadCredentials,
    /// Too many failed logins: wait `retry_after_ms`.
    RateLimited,
    /// The session token is unknown or expired: log in again.
    BadToken,
    /// The new password is not acceptable.
    WeakPassword,
    /// Not a well-formed number.
    InvalidNumber,
    /// The number belongs to another account.
    NotYourNumber,
    /// Nobody has this number.
    UnknownNumber,
    /// The number exists but nothing is registered for it.
    Unreachable,
    /// Forwarding goes round in a circle.
    ForwardLoop,
    /// Forwarding takes more than [`MAX_HOPS`] steps.
    TooManyHops,
    /// The endpoint called a number it registered itself.
    SelfCall,
    /// No such call.
    NoSuchCall,
    /// The call is not this endpoint's.
    NotYourCall,
    /// The call is not in a state that allows this.
    BadCallState,
    /// The direct-connect rule offers no relay.
    NoRelay,
    /// The relay could not be set up.
    RelayFailed,
    /// A candidate address is not `IP:PORT`.
    BadAddress,
    /// The message or body is too large.
    TooLarge,
    /// The recipient's mailbox is full.
    QuotaExceeded,
    /// The mail body is not what its kind says.
    BadMail,
    /// No such stored message.
    NoSuchMail,
    /// The directory's storage failed.
    Storage,
    /// The directory is shutting down.
    ShuttingDown,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

/// What an end of a ringing call needs to check the direct path to the
/// other end while it rings (`keyline_net::checks`): given to both ends of
/// a call between two terminals, in `Ring` and `Ringing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPlan {
    /// The call's check key (hex), the same for both ends.
    pub key: String,
    /// The other end's candidate addresses (its own, then the one the
    /// directory sees).
    pub candidates: Vec<String>,
}

/// How an end of an answered call sets up its end-to-end media connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallPlan {
    /// `true`: this end connects (the caller); `false`: it waits for the
    /// other end's connection (the callee).
    pub dial: bool,
    /// SHA-256 fingerprint (hex) of the certificate the other end presents.
    pub peer_fp: String,
    /// The other end's addresses (its own, then the one the directory saw).
    pub peer_candidates: Vec<String>,
    /// Per-call secret both ends present on the media connection.
    pub token: String,
    /// The direct-connect rule in force for this call.
    pub policy: DirectPolicy,
    /// The relay, when the path runs through it: for the dialling end the
    /// address to connect to, for the other end the address the packets
    /// come from.
    pub relay: Option<String>,
    /// With [`DirectPolicy::DirectThenRelay`]: how long the dialling end
    /// tries end to end before it sends [`DirMsg::Fallback`].
    pub fallback_after_ms: u32,
}

/// An endpoint of an account logged in now, as `AccountInfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Where the directory sees it.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and version it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The directory node it is connected to, in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The numbers it has registered.
    pub numbers: Vec<String>,
    /// Seconds since it last registered, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_s_ago: Option<u64>,
    /// The endpoint that asked.
    #[serde(default)]
    pub this: bool,
}

/// A directory-protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum DirMsg {
    /// Endpoint → directory, first on the control stream.
    Hello {
        version: u32,
        role: Role,
        name: Option<String>,
        /// The program and its version ("keyline-agent 0.1.0"), shown
        /// among the account's devices. Older endpoints send none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Directory → endpoint: the reply to `Hello`.
    Welcome {
        version: u32,
        /// The endpoint's address as the directory sees it.
        observed: String,
        /// Seconds a registration lasts unless refreshed.
        ttl_secs: u32,
        /// The directory's direct-connect rule.
        policy: DirectPolicy,
    },
    /// Log in with an account and its password.
    Login {
        req: ReqId,
        account: String,
        password: String,
    },
    /// Log in again with the token of an earlier session.
    Resume {
        req: ReqId,
        token: String,
    },
    /// Reply to `Login`/`Resume`.
    LoggedIn {
        req: ReqId,
        account: String,
        /// The account's numbers, canonical, the default caller number first.
        numbers: Vec<String>,
        /// Present it with `Resume` after a reconnect.
        token: String,
        expires_in_secs: u64,
    },
    /// Change the logged-in account's password; other sessions end.
    ChangePassword {
        req: ReqId,
        old: String,
        new: String,
    },
    /// Bind (some of) the account's numbers to this endpoint, or refresh
    /// the binding. Empty `numbers`: all of them.
    Register {
        req: ReqId,
        numbers: Vec<String>,
        /// The endpoint's own addresses, `IP:PORT`.
        candidates: Vec<String>,
    },
    /// Reply to `Register`, or sent unprompted when the binding changed
    /// (`req` absent).
    Registered {
        req: Option<ReqId>,
        numbers: Vec<String>,
        /// The address the directory observes (also the last candidate).
        observed: String,
        /// Every candidate callers will be given.
        candidates: Vec<String>,
        ttl_secs: u32,
    },
    /// Remove bindings. Empty `numbers`: all of this endpoint's.
    Unregister {
        req: ReqId,
        numbers: Vec<String>,
    },
    /// Directory → endpoint: these bindings are gone (expired, or another
    /// endpoint took the number).
    Unbound {
        numbers: Vec<String>,
        reason: String,
        /// `true`: the registration expired (register again); `false`:
        /// taken away (another endpoint registered it, or it was removed).
        expired: bool,
    },
    /// Directory → endpoint: its observed address changed (the connection
    /// migrated); the binding was updated.
    Observed {
        addr: String,
    },
    /// Look-up only (claim 3): where is `number`?
    Lookup {
        req: ReqId,
        number: String,
    },
    /// Reply to `Lookup`.
    Found {
        req: ReqId,
        /// The number found, after server-side forwarding.
        number: String,
        /// Numbers forwarded from, in order.
        via: Vec<String>,
        candidates: Vec<String>,
        fingerprint: String,
        /// Present it to the callee in `MediaHello`.
        token: String,
    },
    /// Directory → callee: a caller looked you up and will connect directly.
    Expect {
        number: String,
        /// The extension dialled after `OFFICE/`, if any.
        ext: Option<String>,
        /// The caller's number, asserted by the directory.
        from: String,
        caller_fp: String,
        token: String,
        /// Where the caller's connection comes from (its registered
        /// addresses and the one the directory sees), so that the callee
        /// can open its NAT towards it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        caller_candidates: Vec<String>,
    },
    /// Place a call.
    Call {
        req: ReqId,
        number: String,
        /// One of the caller's own numbers to show (default: the first).
        from: Option<String>,
        /// The caller's own addresses.
        candidates: Vec<String>,
        /// Redirects the caller already followed for this call.
        hops: u8,
        /// The media end's certificate fingerprint when it is not this
        /// endpoint but one it vouches for (a gateway's station, claim 6).
        /// `candidates` are then that media end's addresses for this call
        /// (the gateway's forwarder port), not the endpoint's own.
        #[serde(default)]
        media_fp: Option<String>,
        /// The hand-off this call follows (the `handoff` of the
        /// `Redirected` that sent the caller here), passed on to the callee.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<u64>,
    },
    /// Reply to `Call`: the callee rings.
    Ringing {
        req: ReqId,
        call: CallId,
        /// The number that rings, after server-side forwarding.
        number: String,
        /// Numbers forwarded from, in order.
        via: Vec<String>,
        /// Check the direct path to the callee while it rings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checks: Option<Box<CheckPlan>>,
    },
    /// Reply to `Call`: nothing rang.
    CallFailed {
        req: ReqId,
        code: ErrorCode,
        /// The number concerned (after forwarding, when it got that far).
        number: String,
        message: String,
        /// Whether a voice mail or text may be left for `number`.
        mail: bool,
    },
    /// Directory → callee: an incoming call.
    Ring {
        call: CallId,
        /// The caller's number, asserted by the directory.
        from: String,
        /// The callee's number that rings.
        number: String,
        /// The extension dialled after `OFFICE/`, if any: the office's
        /// endpoint rings that extension.
        ext: Option<String>,
        /// The number the caller dialled.
        dialled: String,
        via: Vec<String>,
        caller_fp: String,
        caller_candidates: Vec<String>,
        /// The caller's `Call.handoff`: the endpoint that handed the caller
        /// on chose it, and may recognise the call by it (with `from`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<u64>,
        /// Check the direct path to the caller while ringing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checks: Option<Box<CheckPlan>>,
    },
    /// Callee: take the call; answered with `Connect`.
    Answer {
        req: ReqId,
        call: CallId,
        /// As in `Call`: the fingerprint of the media end this endpoint
        /// vouches for (a gateway's station), with `candidates` its
        /// addresses for this call. Absent: the endpoint itself, at its
        /// registered addresses.
        #[serde(default)]
        media_fp: Option<String>,
        #[serde(default)]
        candidates: Vec<String>,
    },
    /// Callee: decline.
    Reject {
        req: ReqId,
        call: CallId,
    },
    /// Callee: busy.
    Busy {
        req: ReqId,
        call: CallId,
    },
    /// Callee: the caller should call `number` instead (claim 7).
    Redirect {
        req: ReqId,
        call: CallId,
        number: String,
    },
    /// Either end of an answered call: hand the other end on to `number`
    /// (claim 5, keyphone hand-off). The other end gets `Redirected` and
    /// calls `number` itself, directly; the call ends for both.
    Transfer {
        req: ReqId,
        call: CallId,
        number: String,
        /// A value for the other end to put in its new `Call`, so the
        /// target (when it is us, an office) knows the call it hands on:
        /// to give it back if no one answers, or to take it straight into
        /// a consultation that is waiting for it (attended transfer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<u64>,
    },
    /// Either end: end the call (the caller cancels while it rings).
    Hangup {
        call: CallId,
    },
    /// Directory → both ends of an answered call (to the callee as the
    /// reply to `Answer`).
    Connect {
        req: Option<ReqId>,
        call: CallId,
        plan: CallPlan,
    },
    /// Directory → caller: the callee redirected; call `number`.
    Redirected {
        call: CallId,
        number: String,
        /// The callee's number that redirected.
        by: String,
        /// From `Transfer.handoff`: put it in the new `Call`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<u64>,
    },
    /// Directory → an end: the call is over.
    Ended {
        call: CallId,
        reason: EndReason,
    },
    /// Caller: the direct attempt failed; relay this call.
    Fallback {
        req: ReqId,
        call: CallId,
    },
    /// Directory → both ends: the relay is ready (to the caller as the
    /// reply to `Fallback`).
    RelayReady {
        req: Option<ReqId>,
        call: CallId,
        /// For the caller: connect here. For the callee: packets come from here.
        relay: String,
    },
    /// Set the server-side forwarding rule of kind `rule.when` of one of
    /// the account's numbers (its rules of other kinds stay), or, with
    /// `rule` absent, clear every rule of that number.
    SetForward {
        req: ReqId,
        number: String,
        rule: Option<ForwardRule>,
    },
    /// Turn the rule of kind `when` of one of the account's numbers off
    /// (it keeps its target), or, with `when` absent, every rule of it.
    ForwardOff {
        req: ReqId,
        number: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        when: Option<ForwardWhen>,
    },
    /// Ask for the forwarding rules of every number of the account;
    /// answered with `Forwards`.
    ListForwards {
        req: ReqId,
    },
    /// Reply to `ListForwards`: every number of the account, in the
    /// account's order, with its rules (on and off).
    Forwards {
        req: ReqId,
        numbers: Vec<NumberForwards>,
    },
    /// Ask for the account: its numbers and its devices (the endpoints
    /// logged in now, on every node of the directory); answered with
    /// `AccountInfo`.
    AccountQuery {
        req: ReqId,
    },
    /// Reply to `AccountQuery`.
    AccountInfo {
        req: ReqId,
        account: String,
        /// In the account's order: the first is the one callees see.
        numbers: Vec<String>,
        devices: Vec<DeviceInfo>,
    },
    /// On a mail stream: a message for `to` follows in one raw frame of
    /// `len` bytes.
    LeaveMail {
        req: ReqId,
        to: String,
        /// One of the sender's own numbers (default: the first).
        from: Option<String>,
        kind: MailKind,
        len: u32,
    },
    /// On a mail stream: stored.
    MailStored {
        req: ReqId,
        id: MailId,
        to: String,
    },
    /// On a delivery stream: a stored message; its body follows in one raw
    /// frame of `len` bytes.
    Mail {
        id: MailId,
        /// The sender's number, asserted by the directory.
        from: String,
        to: String,
        kind: MailKind,
        /// When it was left, milliseconds since the Unix epoch.
        at_ms: i64,
        len: u32,
    },
    /// The message arrived: delete it.
    AckMail {
        req: ReqId,
        id: MailId,
    },
    /// A request succeeded.
    Ok {
        req: ReqId,
    },
    /// A request (or, without `req`, the last message) could not be served.
    Error {
        req: Option<ReqId>,
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// Directory → endpoint: the directory is stopping; reconnect later.
    GoingAway {
        message: String,
    },
    Ping {
        n: u64,
    },
    Pong {
        n: u64,
    },
}

impl DirMsg {
    /// Decode a frame body, telling an unknown kind apart from garbage.
    pub fn from_cbor(body: &[u8]) -> Result<DirMsg, CodecError> {
        match decode_body::<DirMsg>(body) {
            Ok(m) => Ok(m),
            Err(err) => {
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

    /// The request id a reply echoes, if any.
    pub fn reply_to(&self) -> Option<ReqId> {
        match self {
            DirMsg::LoggedIn { req, .. }
            | DirMsg::Found { req, .. }
            | DirMsg::Ringing { req, .. }
            | DirMsg::CallFailed { req, .. }
            | DirMsg::MailStored { req, .. }
            | DirMsg::Forwards { req, .. }
            | DirMsg::AccountInfo { req, .. }
            | DirMsg::Ok { req } => Some(*req),
            DirMsg::Registered { req, .. }
            | DirMsg::Connect { req, .. }
            | DirMsg::RelayReady { req, .. }
            | DirMsg::Error { req, .. } => *req,
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DirMsg::Hello { .. } => "hello",
            DirMsg::Welcome { .. } => "welcome",
            DirMsg::Login { .. } => "login",
            DirMsg::Resume { .. } => "resume",
            DirMsg::LoggedIn { .. } => "logged-in",
            DirMsg::ChangePassword { .. } => "change-password",
            DirMsg::Register { .. } => "register",
            DirMsg::Registered { .. } => "registered",
            DirMsg::Unregister { .. } => "unregister",
            DirMsg::Unbound { .. } => "unbound",
            DirMsg::Observed { .. } => "observed",
            DirMsg::Lookup { .. } => "lookup",
            DirMsg::Found { .. } => "found",
            DirMsg::Expect { .. } => "expect",
            DirMsg::Call { .. } => "call",
            DirMsg::Ringing { .. } => "ringing",
            DirMsg::CallFailed { .. } => "call-failed",
            DirMsg::Ring { .. } => "ring",
            DirMsg::Answer { .. } => "answer",
            DirMsg::Reject { .. } => "reject",
            DirMsg::Busy { .. } => "busy",
            DirMsg::Redirect { .. } => "redirect",
            DirMsg::Transfer { .. } => "transfer",
            DirMsg::Hangup { .. } => "hangup",
            DirMsg::Connect { .. } => "connect",
            DirMsg::Redirected { .. } => "redirected",
            DirMsg::Ended { .. } => "ended",
            DirMsg::Fallback { .. } => "fallback",
            DirMsg::RelayReady { .. } => "relay-ready",
            DirMsg::SetForward { .. } => "set-forward",
            DirMsg::ForwardOff { .. } => "forward-off",
            DirMsg::ListForwards { .. } => "list-forwards",
            DirMsg::Forwards { .. } => "forwards",
            DirMsg::AccountQuery { .. } => "account-query",
            DirMsg::AccountInfo { .. } => "account-info",
            DirMsg::LeaveMail { .. } => "leave-mail",
            DirMsg::MailStored { .. } => "mail-stored",
            DirMsg::Mail { .. } => "mail",
            DirMsg::AckMail { .. } => "ack-mail",
            DirMsg::Ok { .. } => "ok",
            DirMsg::Error { .. } => "error",
            DirMsg::GoingAway { .. } => "going-away",
            DirMsg::Ping { .. } => "ping",
            DirMsg::Pong { .. } => "pong",
        }
    }
}

const KNOWN_KINDS: &[&str] = &[
    "hello",
    "welcome",
    "login",
    "resume",
    "logged-in",
    "change-password",
    "register",
    "registered",
    "unregister",
    "unbound",
    "observed",
    "lookup",
    "found",
    "expect",
    "call",
    "ringing",
    "call-failed",
    "ring",
    "answer",
    "reject",
    "busy",
    "redirect",
    "transfer",
    "hangup",
    "connect",
    "redirected",
    "ended",
    "fallback",
    "relay-ready",
    "set-forward",
    "forward-off",
    "list-forwards",
    "forwards",
    "account-query",
    "account-info",
    "leave-mail",
    "mail-stored",
    "mail",
    "ack-mail",
    "ok",
    "error",
    "going-away",
    "ping",
    "pong",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;

    fn roundtrip(m: &DirMsg) -> DirMsg {
        let frame = encode_frame(m, crate::MAX_MESSAGE).expect("encode");
        DirMsg::from_cbor(&frame[4..]).expect("decode")
    }

    fn plan() -> CallPlan {
        CallPlan {
            dial: true,
            peer_fp: "ab".repeat(32),
            peer_candidates: vec!["127.0.0.1:7470".into()],
            token: "00ff".into(),
            policy: DirectPolicy::DirectThenRelay,
            relay: None,
            fallback_after_ms: 3000,
        }
    }

    fn all() -> Vec<DirMsg> {
        let s = |x: &str| x.to_string();
        vec![
            DirMsg::Hello {
                version: 1,
                role: Role::Gateway,
                name: Some(s("office")),
                client: Some(s("keyline-gatewayd 0.1.0")),
            },
            DirMsg::Welcome {
                version: 1,
                observed: s("127.0.0.1:5"),
                ttl_secs: 120,
                policy: DirectPolicy::Direct,
            },
            DirMsg::Login {
                req: 1,
                account: s("alice"),
                password: s("pw"),
            },
            DirMsg::Resume {
                req: 2,
                token: s("t"),
            },
            DirMsg::LoggedIn {
                req: 1,
                account: s("alice"),
                numbers: vec![s("김민준")],
                token: s("t"),
                expires_in_secs: 60,
            },
            DirMsg::ChangePassword {
                req: 3,
                old: s("a"),
                new: s("b"),
            },
            DirMsg::Register {
                req: 4,
                numbers: vec![],
                candidates: vec![s("10.0.0.1:7470")],
            },
            DirMsg::Registered {
                req: None,
                numbers: vec![s("1")],
                observed: s("127.0.0.1:5"),
                candidates: vec![],
                ttl_secs: 120,
            },
            DirMsg::Unregister {
                req: 5,
                numbers: vec![],
            },
            DirMsg::Unbound {
                numbers: vec![s("1")],
                reason: s("expired"),
                expired: true,
            },
            DirMsg::Observed {
                addr: s("1.2.3.4:5"),
            },
            DirMsg::Lookup {
                req: 6,
                number: s("2"),
            },
            DirMsg::Found {
                req: 6,
                number: s("2"),
                via: vec![],
                candidates: vec![],
                fingerprint: s("fp"),
                token: s("t"),
            },
            DirMsg::Expect {
                number: s("2"),
                ext: None,
                from: s("1"),
                caller_fp: s("fp"),
                token: s("t"),
                caller_candidates: vec![s("10.0.0.1:5000")],
            },
            DirMsg::Call {
                req: 7,
                number: s("2"),
                from: None,
                candidates: vec![],
                hops: 0,
                media_fp: Some(s("ab")),
                handoff: Some(77),
            },
            DirMsg::Ringing {
                req: 7,
                call: 9,
                number: s("2"),
                via: vec![s("3")],
                checks: Some(Box::new(CheckPlan {
                    key: s("00ff"),
                    candidates: vec![s("10.0.0.2:7000")],
                })),
            },
            DirMsg::CallFailed {
                req: 7,
                code: ErrorCode::ForwardLoop,
                number: s("2"),
                message: s("loop"),
                mail: false,
            },
            DirMsg::Ring {
                call: 9,
                from: s("1"),
                number: s("2"),
                ext: Some(s("202")),
                dialled: s("3"),
                via: vec![],
                caller_fp: s("fp"),
                caller_candidates: vec![],
                handoff: None,
                checks: None,
            },
            DirMsg::Answer {
                req: 8,
                call: 9,
                media_fp: None,
                candidates: vec![s("10.0.0.1:5000")],
            },
            DirMsg::Reject { req: 8, call: 9 },
            DirMsg::Busy { req: 8, call: 9 },
            DirMsg::Redirect {
                req: 8,
                call: 9,
                number: s("4"),
            },
            DirMsg::Transfer {
                req: 8,
                call: 9,
                number: s("4/202"),
                handoff: Some(u64::MAX),
            },
            DirMsg::Hangup { call: 9 },
            DirMsg::Connect {
                req: Some(8),
                call: 9,
                plan: plan(),
            },
            DirMsg::Redirected {
                call: 9,
                number: s("4"),
                by: s("2"),
                handoff: Some(5),
            },
            DirMsg::Ended {
                call: 9,
                reason: EndReason::Busy,
            },
            DirMsg::Fallback { req: 10, call: 9 },
            DirMsg::RelayReady {
                req: Some(10),
                call: 9,
                relay: s("127.0.0.1:9"),
            },
            DirMsg::SetForward {
                req: 11,
                number: s("2"),
                rule: Some(ForwardRule {
                    when: ForwardWhen::Unregistered,
                    to: s("3"),
                    on: false,
                }),
            },
            DirMsg::ForwardOff {
                req: 11,
                number: s("2"),
                when: Some(ForwardWhen::Busy),
            },
            DirMsg::ListForwards { req: 11 },
            DirMsg::AccountQuery { req: 12 },
            DirMsg::AccountInfo {
                req: 12,
                account: s("minjun"),
                numbers: vec![s("김민준"), s("1234")],
                devices: vec![DeviceInfo {
                    address: s("10.0.0.5:40000"),
                    name: None,
                    client: Some(s("keyline-agent 0.1.0")),
                    node: Some(s("n1")),
                    numbers: vec![s("김민준")],
                    refreshed_s_ago: Some(3),
                    this: true,
                }],
            },
            DirMsg::Forwards {
                req: 11,
                numbers: vec![NumberForwards {
                    number: s("2"),
                    rules: vec![ForwardRule::new(ForwardWhen::NoAnswer, "3")],
                }],
            },
            DirMsg::LeaveMail {
                req: 12,
                to: s("2"),
                from: None,
                kind: MailKind::Voice,
                len: 10,
            },
            DirMsg::MailStored {
                req: 12,
                id: 1,
                to: s("2"),
            },
            DirMsg::Mail {
                id: 1,
                from: s("1"),
                to: s("2"),
                kind: MailKind::Text,
                at_ms: 5,
                len: 3,
            },
            DirMsg::AckMail { req: 13, id: 1 },
            DirMsg::Ok { req: 13 },
            DirMsg::Error {
                req: None,
                code: ErrorCode::RateLimited,
                message: s("wait"),
                retry_after_ms: Some(1000),
            },
            DirMsg::GoingAway { message: s("bye") },
            DirMsg::Ping { n: 1 },
            DirMsg::Pong { n: 1 },
        ]
    }

    #[test]
    fn every_kind_roundtrips_and_is_known() {
        let all = all();
        for m in &all {
            assert_eq!(&roundtrip(m), m);
            assert!(KNOWN_KINDS.contains(&m.kind()), "{}", m.kind());
        }
        assert_eq!(all.len(), KNOWN_KINDS.len());
    }

    /// Seeds for the `dirmsg` fuzz target: one stream of every kind, and
    /// one frame of each, each read back as the message it was made from.
    /// Written where `KEYLINE_FUZZ_SEEDS` says (`KEYLINE_FUZZ_SEEDS=
    /// fuzz/seeds/dirmsg cargo test -p keyline-proto fuzz_seeds`), else
    /// only checked.
    #[test]
    fn fuzz_seeds_read_back_as_every_kind() {
        // The target's first two bytes: chunk size, mail body length.
        let mut stream = vec![7u8, 3];
        let mut singles = Vec::new();
        for m in all() {
            let frame = crate::codec::encode_frame(&m, crate::MAX_MESSAGE).expect("encode");
            let mut one = vec![63u8, 0];
            one.extend_from_slice(&frame);
            singles.push((format!("kind-{}", m.kind()), one));
            stream.extend_from_slice(&frame);
        }
        let mut rest = &stream[2..];
        let mut read = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
            let (body, tail) = tail.split_at(len);
            read.push(DirMsg::from_cbor(body).expect("a seed frame decodes"));
            rest = tail;
        }
        assert_eq!(read, all());
        if let Some(dir) = std::env::var_os("KEYLINE_FUZZ_SEEDS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("seed folder");
            for (name, bytes) in singles {
                std::fs::write(dir.join(name), bytes).expect("write");
            }
            std::fs::write(dir.join("every-kind"), stream).expect("write");
        }
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
            matches!(DirMsg::from_cbor(&body), Err(CodecError::UnknownKind(k)) if k == "teleport")
        );
        assert!(matches!(
            DirMsg::from_cbor(&[0xff, 0x00, 0x13]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_fields_and_codes_are_tolerated() {
        let v = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("t".into()),
                ciborium::Value::Text("error".into()),
            ),
            (
                ciborium::Value::Text("code".into()),
                ciborium::Value::Text("from-the-future".into()),
            ),
            (
                ciborium::Value::Text("message".into()),
                ciborium::Value::Text("m".into()),
            ),
            (
                ciborium::Value::Text("extra".into()),
                ciborium::Value::Bool(true),
            ),
        ]);
        let mut body = Vec::new();
        ciborium::into_writer(&v, &mut body).expect("encode");
        assert_eq!(
            DirMsg::from_cbor(&body).expect("decode"),
            DirMsg::Error {
                req: None,
                code: ErrorCode::Other,
                message: "m".into(),
                retry_after_ms: None
            }
        );
    }

    /// A `set-forward` from a sender that knows no `on` field (one rule
    /// per number) still decodes, as a rule that is on.
    #[test]
    fn an_older_set_forward_decodes_as_a_rule_that_is_on() {
        let t = |k: &str| ciborium::Value::Text(k.into());
        let v = ciborium::Value::Map(vec![
            (t("t"), t("set-forward")),
            (t("req"), ciborium::Value::Integer(4.into())),
            (t("number"), t("2")),
            (
                t("rule"),
                ciborium::Value::Map(vec![(t("when"), t("busy")), (t("to"), t("3"))]),
            ),
        ]);
        let mut body = Vec::new();
        ciborium::into_writer(&v, &mut body).expect("encode");
        assert_eq!(
            DirMsg::from_cbor(&body).expect("decode"),
            DirMsg::SetForward {
                req: 4,
                number: "2".into(),
                rule: Some(ForwardRule::new(ForwardWhen::Busy, "3")),
            }
        );
    }

    #[test]
    fn reply_ids() {
        assert_eq!(DirMsg::Ok { req: 4 }.reply_to(), Some(4));
        assert_eq!(DirMsg::Hangup { call: 4 }.reply_to(), None);
        assert_eq!(
            DirMsg::Connect {
                req: None,
                call: 1,
                plan: plan()
            }
            .reply_to(),
            None
        );
    }
}
