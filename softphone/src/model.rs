//! The window's decisions, with no IO: the agent's replies and events come
//! in ([`Model::handle`]), the person's actions come in ([`Model::act`]),
//! requests for the agent go out ([`Model::poll_request`]). Time is passed
//! in as seconds on a monotonic clock, so the call timer is testable.

use std::collections::VecDeque;

use serde_json::{json, Value};

use crate::i18n::Msg;

/// The longest number the window sends (the gateway's own limit is far
/// above any real number; past this it is a slip of the hand).
pub const MAX_NUMBER: usize = 32;

/// Requests the window may have waiting to be sent at once.
const MAX_OUTBOX: usize = 32;

/// Calls kept in the history list.
const MAX_HISTORY: usize = 100;

/// Messages kept in the message list.
const MAX_MESSAGES: usize = 200;

/// Contacts kept (an office's stations and 110 short codes fit).
const MAX_CONTACTS: usize = 2000;

/// A request to the agent's control socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Status,
    History,
    Dial(String),
    Answer,
    Hangup,
    Hold,
    Resume,
    Mute(bool),
    Transfer(String),
    Consult(String),
    ConsultComplete,
    ConsultCancel,
    Record(bool),
    /// A code typed on the in-call keypad, sent as a dial during the call.
    Code(String),
    Message {
        to: String,
        body: String,
    },
    Messages,
    VoicemailList,
    VoicemailPlay(u64),
    VoicemailDelete(u64),
    Contacts,
    /// The agent's sound cards.
    AudioDevices,
    /// Use `spec` (none: the default) for `what` from now on.
    AudioSet {
        what: AudioWhat,
        spec: Option<String>,
    },
}

/// Which of the agent's audio settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioWhat {
    Microphone,
    Speaker,
    /// Where the ringtone plays (default: the speaker).
    RingDevice,
    /// The ringtone file (default: the built-in ring).
    RingtoneFile,
}

impl AudioWhat {
    /// The key in `audio-set`.
    pub fn key(self) -> &'static str {
        match self {
            AudioWhat::Microphone => "in",
            AudioWhat::Speaker => "out",
            AudioWhat::RingDevice => "ring_out",
            AudioWhat::RingtoneFile => "ringtone",
        }
    }
}

impl Req {
    /// The request line's JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Req::Status => json!({"cmd": "status"}),
            Req::History => json!({"cmd": "history"}),
            Req::Dial(n) | Req::Code(n) => json!({"cmd": "dial", "number": n}),
            Req::Answer => json!({"cmd": "answer"}),
            Req::Hangup => json!({"cmd": "hangup"}),
            Req::Hold => json!({"cmd": "hold"}),
            Req::Resume => json!({"cmd": "resume"}),
            Req::Mute(on) => json!({"cmd": "mute", "on": on}),
            Req::Transfer(t) => json!({"cmd": "transfer", "target": t}),
            Req::Consult(t) => json!({"cmd": "consult", "target": t}),
            Req::ConsultComplete => json!({"cmd": "consult-complete"}),
            Req::ConsultCancel => json!({"cmd": "consult-cancel"}),
            Req::Record(on) => json!({"cmd": "record", "on": on}),
            Req::Message { to, body } => json!({"cmd": "message", "to": to, "body": body}),
            Req::Messages => json!({"cmd": "messages"}),
            Req::VoicemailList => json!({"cmd": "voicemail-list"}),
            Req::VoicemailPlay(id) => json!({"cmd": "voicemail-play", "id": id}),
            Req::VoicemailDelete(id) => json!({"cmd": "voicemail-delete", "id": id}),
            Req::Contacts => json!({"cmd": "contacts"}),
            Req::AudioDevices => json!({"cmd": "audio-devices"}),
            Req::AudioSet { what, spec } => {
                let mut v = json!({"cmd": "audio-set"});
                v[what.key()] = spec.clone().map_or(Value::Null, Value::String);
                v
            }
        }
    }
}

/// What the IO layer tells the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Trying to reach the agent's control socket.
    Connecting,
    /// The agent's socket is not there or refused us; why, in words.
    AgentAbsent(String),
    /// Subscribed to the agent's events.
    AgentUp,
    /// One event from the stream.
    Event(Value),
    /// The answer to a request: the reply object, or why it failed.
    Reply {
        req: Req,
        result: Result<Value, String>,
    },
}

/// What the person did in the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Call the number in the number field.
    Call,
    /// Call this number (history, contacts, `tel:` links).
    CallNumber(String),
    Answer,
    Decline,
    HangUp,
    Hold,
    Resume,
    Mute,
    Record,
    /// Open the transfer dialog (blind when `consult` is false).
    OpenTransfer {
        consult: bool,
    },
    /// Send the transfer dialog's target.
    TransferTo,
    CloseTransfer,
    Complete,
    Cancel,
    /// A key of the in-call keypad.
    Keypad(char),
    /// Enter pressed: dial when idle, answer when ringing.
    Enter,
    /// Esc pressed: decline when ringing, hang up when in a call.
    Escape,
    Tab(Tab),
    ToggleDnd,
    /// Forward every call to the forward field's number, or stop.
    ToggleForward,
    SendMessage,
    PlayVoicemail(u64),
    DeleteVoicemail(u64),
    SetLang(crate::i18n::Lang),
    /// Use `spec` (none: the default) for `what`.
    SetAudio {
        what: AudioWhat,
        spec: Option<String>,
    },
    /// Use the ringtone file field's file (empty: the built-in ring).
    UseRingtoneFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Phone,
    History,
    Contacts,
    Messages,
    Voicemail,
    Settings,
}

/// How the window stands with its agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Agent {
    Connecting,
    Absent(String),
    Up,
}

/// The screen the window shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// The agent is not running (or not reachable).
    NoAgent,
    /// The station waits for the administrator's approval.
    Pairing,
    Idle,
    /// A call rings here.
    Ringing,
    /// Dialing, ringing out, or in a call.
    InCall,
}

/// The station's standing with its gateway or directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    pub state: String,
    pub ext: Option<String>,
    pub name: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub numbers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// A call as the agent last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallView {
    pub id: Option<u64>,
    pub peer: String,
    pub peer_name: Option<String>,
    pub direction: Direction,
    pub state: String,
    pub on_hold: bool,
    pub held_by_peer: bool,
    pub relayed: bool,
    pub consult: bool,
    pub muted: bool,
    pub recording: bool,
    /// The agent's `seconds` and when (model clock) it said so.
    seconds: f64,
    seen_at: f64,
}

impl CallView {
    fn from_json(v: &Value, now: f64) -> Option<CallView> {
        let peer = v.get("peer")?.as_str()?.to_string();
        Some(CallView {
            id: v.get("id").and_then(Value::as_u64),
            peer,
            peer_name: str_of(v, "peer_name"),
            direction: if v.get("direction").and_then(Value::as_str) == Some("in") {
                Direction::In
            } else {
                Direction::Out
            },
            state: str_of(v, "state").unwrap_or_default(),
            on_hold: v.get("on_hold") == Some(&Value::Bool(true)),
            held_by_peer: v.get("held_by_peer") == Some(&Value::Bool(true)),
            relayed: v.get("relayed") == Some(&Value::Bool(true)),
            consult: v.get("consult") == Some(&Value::Bool(true)),
            muted: v.get("muted") == Some(&Value::Bool(true)),
            recording: v.get("recording").is_some_and(|r| !r.is_null()),
            seconds: v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
            seen_at: now,
        })
    }

    /// Seconds since it connected (or started) at model time `now`.
    pub fn elapsed(&self, now: f64) -> f64 {
        self.seconds + (now - self.seen_at).max(0.0)
    }

    pub fn connected(&self) -> bool {
        self.state == "connected"
    }

    /// The name to show, else the number.
    pub fn who(&self) -> &str {
        self.peer_name.as_deref().unwrap_or(&self.peer)
    }
}

/// One finished call in the history list.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub peer: String,
    pub peer_name: Option<String>,
    pub direction: Direction,
    pub connected: bool,
    pub ended: String,
    pub seconds: Option<f64>,
    pub ended_unix_ms: Option<u64>,
}

impl HistoryEntry {
    fn from_json(v: &Value) -> Option<HistoryEntry> {
        Some(HistoryEntry {
            peer: v.get("peer")?.as_str()?.to_string(),
            peer_name: str_of(v, "peer_name"),
            direction: if v.get("direction").and_then(Value::as_str) == Some("in") {
                Direction::In
            } else {
                Direction::Out
            },
            connected: v.get("connected") == Some(&Value::Bool(true)),
            ended: str_of(v, "ended").unwrap_or_default(),
            seconds: v.get("seconds").and_then(Value::as_f64),
            ended_unix_ms: v.get("ended_unix_ms").and_then(Value::as_u64),
        })
    }

    /// A call that came in and was never answered here.
    pub fn missed(&self) -> bool {
        self.direction == Direction::In && !self.connected
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: u64,
    pub from: String,
    pub body: String,
    /// Sent by this station (kept by the window only).
    pub mine: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Voicemail {
    pub id: u64,
    pub from: String,
    pub secs: f64,
    pub heard: bool,
}

/// The agent's audio, as its `status` names it: specs (`device`,
/// `device:ID`, a file, ...) and the ringtone file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audio {
    pub input: Option<String>,
    pub output: Option<String>,
    /// Where the ringtone plays; none: on the speaker.
    pub ring_out: Option<String>,
    pub ringtone: Option<String>,
}

impl Audio {
    fn from_json(a: &Value) -> Audio {
        Audio {
            input: str_of(a, "in"),
            output: str_of(a, "out"),
            ring_out: str_of(a, "ring_out"),
            ringtone: str_of(a, "ringtone"),
        }
    }
}

/// A sound card device the agent offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// What picks it (`device:ID`).
    pub spec: String,
    pub name: String,
    pub default: bool,
}

fn devices_of(v: Option<&Value>) -> Vec<Device> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    Some(Device {
                        spec: str_of(d, "spec")?,
                        name: str_of(d, "name").unwrap_or_default(),
                        default: d.get("default") == Some(&Value::Bool(true)),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An entry of the office's contacts: a station or a short code.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub name: Option<String>,
    /// What a click dials.
    pub number: String,
    /// The short code (`*1`), for a short code.
    pub code: Option<String>,
}

impl Contact {
    fn from_json(v: &Value) -> Option<Contact> {
        Some(Contact {
            name: str_of(v, "name"),
            number: str_of(v, "number")?,
            code: str_of(v, "code"),
        })
    }

    /// Whether it matches what was typed in the search field (any part of
    /// its name, number or code, case-insensitively).
    pub fn matches(&self, filter: &str) -> bool {
        let f = filter.trim().to_lowercase();
        f.is_empty()
            || [Some(&self.number), self.name.as_ref(), self.code.as_ref()]
                .into_iter()
                .flatten()
                .any(|x| x.to_lowercase().contains(&f))
    }
}

/// What the window says below its controls, until the next action.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub msg: Msg,
    /// Words from the agent (its errors are sentences in English).
    pub detail: Option<String>,
    pub error: bool,
}

/// Everything the window shows, and what it has asked of the agent.
#[derive(Debug)]
pub struct Model {
    pub lang: crate::i18n::Lang,
    pub agent: Agent,
    pub link: Link,
    pub call: Option<CallView>,
    /// The consultation call of an attended transfer (the first call is
    /// on hold meanwhile).
    pub consult: Option<CallView>,
    pub number: String,
    pub notice: Option<Notice>,
    pub tab: Tab,
    /// The transfer dialog, when open: consult or blind, and its field.
    pub transfer: Option<(bool, String)>,
    pub history: Vec<HistoryEntry>,
    /// Missed calls since the history was last looked at.
    pub missed: u32,
    pub messages: Vec<Message>,
    pub messages_waiting: u32,
    pub voicemails: Vec<Voicemail>,
    pub voicemail_waiting: u32,
    pub dnd: bool,
    pub forward_always: Option<String>,
    pub audio: Audio,
    /// The agent's sound cards' inputs and outputs.
    pub inputs: Vec<Device>,
    pub outputs: Vec<Device>,
    /// The ringtone file field in settings.
    pub ringtone_file: String,
    /// The office's contacts, and why there are none when the agent could
    /// not give them.
    pub contacts: Vec<Contact>,
    pub contacts_problem: Option<String>,
    /// The contacts' search field.
    pub contact_filter: String,
    /// The language was changed in the window (to be kept).
    lang_changed: bool,
    /// The forwarding target field in settings.
    pub forward_to: String,
    pub message_to: String,
    pub message_body: String,
    /// A dial was sent and not answered yet.
    pub dialing: bool,
    outbox: VecDeque<Req>,
    /// A call started ringing here since the UI last looked: raise the
    /// window.
    raise: bool,
    /// When the ringing call asked the window to the front (model time),
    /// until the window has the focus or the ringing stops.
    ring_at: Option<f64>,
    /// Whether the ringing call is offered as a desktop notification now.
    notify: bool,
}

/// How long (seconds) a ringing window may take to get the focus before
/// the call is also offered as a desktop notification: where the window
/// manager refuses focus, the person still sees Answer and Decline.
pub const FOCUS_GRACE: f64 = 0.5;

impl Model {
    pub fn new(lang: crate::i18n::Lang) -> Model {
        Model {
            lang,
            agent: Agent::Connecting,
            link: Link::default(),
            call: None,
            consult: None,
            number: String::new(),
            notice: None,
            tab: Tab::Phone,
            transfer: None,
            history: Vec::new(),
            missed: 0,
            messages: Vec::new(),
            messages_waiting: 0,
            voicemails: Vec::new(),
            voicemail_waiting: 0,
            dnd: false,
            forward_always: None,
            audio: Audio::default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            ringtone_file: String::new(),
            contacts: Vec::new(),
            contacts_problem: None,
            contact_filter: String::new(),
            lang_changed: false,
            forward_to: String::new(),
            message_to: String::new(),
            message_body: String::new(),
            dialing: false,
            outbox: VecDeque::new(),
            raise: false,
            ring_at: None,
            notify: false,
        }
    }

    /// The screen to show now.
    pub fn screen(&self) -> Screen {
        if self.agent != Agent::Up {
            return Screen::NoAgent;
        }
        match &self.call {
            Some(c) if c.direction == Direction::In && c.state == "alerting" => Screen::Ringing,
            Some(_) => Screen::InCall,
            None if self.link.state == "pending" => Screen::Pairing,
            None => Screen::Idle,
        }
    }

    /// The next request to send to the agent.
    pub fn poll_request(&mut self) -> Option<Req> {
        self.outbox.pop_front()
    }

    /// Whether the person chose another language since the last call.
    pub fn take_lang_change(&mut self) -> bool {
        std::mem::take(&mut self.lang_changed)
    }

    /// Whether the window is about to be asked to come to the front.
    pub fn raise_pending(&self) -> bool {
        self.raise
    }

    /// Whether the window should come to the front (once per ring).
    pub fn take_raise(&mut self) -> bool {
        std::mem::take(&mut self.raise)
    }

    /// Report whether the window has the keyboard focus at model time
    /// `now` (the UI does, every frame). A ringing call whose window has
    /// not got the focus [`FOCUS_GRACE`] after asking for it is offered as
    /// a desktop notification; the offer is withdrawn when the window gets
    /// the focus or the ringing stops.
    pub fn window_focus(&mut self, now: f64, focused: bool) {
        if self.screen() != Screen::Ringing {
            self.ring_at = None;
            self.notify = false;
            return;
        }
        if focused {
            // In front: no notification, now or later in this ring.
            self.ring_at = None;
            self.notify = false;
            return;
        }
        if let Some(t) = self.ring_at {
            if now >= t + FOCUS_GRACE {
                self.notify = true;
                self.ring_at = None;
            }
        }
    }

    /// Whether the ringing call should be shown as a desktop notification.
    pub fn notification(&self) -> bool {
        self.notify
    }

    /// When (model time) the window must look at its focus again to decide
    /// on a notification, if a decision is pending.
    pub fn focus_deadline(&self) -> Option<f64> {
        self.ring_at.map(|t| t + FOCUS_GRACE)
    }

    /// Another `keyline-phone` (a `tel:` link) handed over `number`:
    /// come to the front with it in the number field.
    pub fn handed_over(&mut self, number: String) {
        if !number.is_empty() && self.call.is_none() {
            self.number = number;
            self.tab = Tab::Phone;
        }
        self.raise = true;
    }

    /// Whether anything shown changes with time (the call timer).
    pub fn ticking(&self) -> bool {
        self.call.is_some()
    }

    fn send(&mut self, r: Req) {
        if self.outbox.len() < MAX_OUTBOX {
            self.outbox.push_back(r);
        }
    }

    fn say(&mut self, msg: Msg, error: bool) {
        self.notice = Some(Notice {
            msg,
            detail: None,
            error,
        });
    }

    fn say_agent(&mut self, msg: Msg, detail: String) {
        self.notice = Some(Notice {
            msg,
            detail: Some(detail),
            error: true,
        });
    }

    /// Take what the IO layer reports, at model time `now` (seconds).
    pub fn handle(&mut self, now: f64, input: Input) {
        match input {
            Input::Connecting => {
                if self.agent != Agent::Up {
                    self.agent = Agent::Connecting;
                }
            }
            Input::AgentAbsent(why) => {
                let was_up = self.agent == Agent::Up;
                self.agent = Agent::Absent(why);
                self.dialing = false;
                self.transfer = None;
                if was_up && self.call.take().is_some() {
                    self.say(Msg::CallLostAgent, true);
                }
                self.consult = None;
            }
            Input::AgentUp => {
                self.agent = Agent::Up;
                if self.notice.as_ref().map(|n| &n.msg) == Some(&Msg::CallLostAgent) {
                    // Keep telling it: the person may not have seen it.
                } else {
                    self.notice = None;
                }
                self.send(Req::Status);
                self.send(Req::History);
            }
            Input::Event(ev) => self.event(now, &ev),
            Input::Reply { req, result } => self.reply(now, req, result),
        }
    }

    fn event(&mut self, now: f64, ev: &Value) {
        match ev.get("event").and_then(Value::as_str) {
            Some("call") => {
                if let Some(c) = ev.get("call").and_then(|c| CallView::from_json(c, now)) {
                    self.set_call(now, c);
                }
            }
            Some("call-ended") => {
                let Some(c) = ev.get("call").and_then(|c| CallView::from_json(c, now)) else {
                    return;
                };
                let reason = ev
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.call_ended(c, &reason);
            }
            Some("link") => {
                self.link = Link {
                    state: str_of(ev, "state").unwrap_or_default(),
                    ext: str_of(ev, "ext"),
                    name: str_of(ev, "name"),
                    code: str_of(ev, "code"),
                    error: str_of(ev, "error")
                        .or_else(|| str_of(ev, "gateway").map(|g| format!("connecting to {g}"))),
                    numbers: strings(ev.get("numbers")),
                };
            }
            Some("message") => {
                if let Some(m) = ev.get("message").and_then(message_of) {
                    self.messages_waiting += 1;
                    self.push_message(m);
                }
            }
            Some("voicemail-waiting") => {
                let count = ev.get("count").and_then(Value::as_u64).unwrap_or(0);
                self.voicemail_waiting = u32::try_from(count).unwrap_or(u32::MAX);
                if self.tab == Tab::Voicemail {
                    self.send(Req::VoicemailList);
                }
            }
            Some("settings") => {
                if let Some(s) = ev.get("settings") {
                    self.settings(s);
                }
            }
            Some("audio") => {
                if let Some(a) = ev.get("audio") {
                    self.set_audio(Audio::from_json(a));
                }
            }
            _ => {}
        }
    }

    /// The agent's audio as it now stands. The ringtone field follows the
    /// agent's choice only when that choice changed: a status refresh
    /// (after every call, say) must not wipe a path being typed.
    fn set_audio(&mut self, a: Audio) {
        if a.ringtone != self.audio.ringtone {
            self.ringtone_file = a.ringtone.clone().unwrap_or_default();
        }
        self.audio = a;
    }

    fn settings(&mut self, s: &Value) {
        self.dnd = s.get("dnd") == Some(&Value::Bool(true));
        self.forward_always = str_of(s, "forward_always");
        if let Some(f) = &self.forward_always {
            self.forward_to = f.clone();
        }
    }

    fn push_message(&mut self, m: Message) {
        if !self.messages.iter().any(|x| x.id == m.id && !x.mine) || m.mine {
            self.messages.push(m);
        }
        if self.messages.len() > MAX_MESSAGES {
            let extra = self.messages.len() - MAX_MESSAGES;
            self.messages.drain(..extra);
        }
    }

    fn set_call(&mut self, now: f64, c: CallView) {
        self.dialing = false;
        if c.consult {
            self.consult = Some(c);
            return;
        }
        let was_ringing = self
            .call
            .as_ref()
            .is_some_and(|o| o.direction == Direction::In && o.state == "alerting");
        let rings = c.direction == Direction::In && c.state == "alerting";
        if rings && !was_ringing {
            self.raise = true;
            self.ring_at = Some(now);
            self.notify = false;
            self.tab = Tab::Phone;
        }
        self.call = Some(c);
    }

    fn call_ended(&mut self, c: CallView, reason: &str) {
        if c.consult {
            self.consult = None;
            return;
        }
        // A call other than the one shown (an attended transfer's
        // replacement arrives before the old one's end) leaves it alone.
        if let (Some(shown), Some(id)) = (&self.call, c.id) {
            if shown.id.is_some() && shown.id != Some(id) {
                return;
            }
        }
        self.call = None;
        self.consult = None;
        self.transfer = None;
        self.dialing = false;
        let msg = match reason {
            "busy" => Some(Msg::EndedBusy),
            "rejected" => Some(Msg::EndedRejected),
            "no-answer" => Some(Msg::EndedNoAnswer),
            "unknown" => Some(Msg::EndedUnknown),
            "offline" => Some(Msg::EndedOffline),
            "failed" | "media-failed" | "media-lost" | "peer-lost" | "gateway-lost"
            | "directory-lost" | "gateway-shutdown" | "directory-shutdown" => {
                Some(Msg::EndedFailed)
            }
            _ => None,
        };
        // A dial the gateway refused: its reply (a sentence, e.g. "no such
        // extension") says why, before or after this event.
        let refused = c.state == "dialing" && reason == "failed";
        match msg {
            _ if refused => {}
            Some(m) => {
                self.notice = Some(Notice {
                    msg: m,
                    detail: Some(reason.to_string()),
                    error: true,
                })
            }
            None => self.say(Msg::CallEnded, false),
        }
        if c.direction == Direction::In && c.state == "alerting" && reason != "local-hangup" {
            self.missed += 1;
        }
        self.send(Req::History);
    }

    fn reply(&mut self, now: f64, req: Req, result: Result<Value, String>) {
        let v = match result {
            Ok(v) => v,
            Err(e) => {
                match req {
                    Req::Dial(_) => {
                        self.dialing = false;
                        self.say_agent(Msg::CannotCall, e);
                    }
                    // The agent may be older than the window: a missing
                    // history or mute is no reason to alarm anyone.
                    Req::History | Req::Status | Req::AudioDevices => {}
                    // A terminal has no office contacts: the tab says why.
                    Req::Contacts => {
                        self.contacts.clear();
                        self.contacts_problem = Some(e);
                    }
                    _ => self.say_agent(Msg::Failed, e),
                }
                return;
            }
        };
        if v.get("ok") != Some(&Value::Bool(true)) {
            let e = str_of(&v, "error").unwrap_or_else(|| "no reason given".into());
            return self.reply(now, req, Err(e));
        }
        match req {
            Req::Status => self.status(now, &v),
            Req::History => {
                self.history = v
                    .get("calls")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(HistoryEntry::from_json).collect())
                    .unwrap_or_default();
                self.history.truncate(MAX_HISTORY);
            }
            Req::Dial(n) => {
                self.dialing = false;
                if let Some(f) = str_of(&v, "feature") {
                    self.notice = Some(Notice {
                        msg: Msg::Done,
                        detail: Some(f),
                        error: false,
                    });
                    self.send(Req::Status);
                } else if self.number == n {
                    self.number.clear();
                }
            }
            Req::Messages => {
                if let Some(list) = v.get("messages").and_then(Value::as_array) {
                    for m in list.iter().filter_map(message_of) {
                        self.push_message(m);
                    }
                }
                self.messages_waiting = 0;
            }
            Req::Message { to, body } => {
                let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                self.push_message(Message {
                    id,
                    from: to,
                    body,
                    mine: true,
                });
                self.message_body.clear();
                self.say(Msg::MessageSent, false);
            }
            Req::VoicemailList | Req::VoicemailDelete(_) => {
                self.voicemails = v
                    .get("voicemails")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(voicemail_of).collect())
                    .unwrap_or_default();
            }
            Req::Transfer(_) | Req::Consult(_) => self.transfer = None,
            // Played: it is heard now.
            Req::VoicemailPlay(_) => self.send(Req::VoicemailList),
            Req::Contacts => {
                self.contacts = v
                    .get("contacts")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Contact::from_json).collect())
                    .unwrap_or_default();
                self.contacts.truncate(MAX_CONTACTS);
                self.contacts_problem = None;
            }
            Req::AudioDevices => {
                self.inputs = devices_of(v.get("inputs"));
                self.outputs = devices_of(v.get("outputs"));
            }
            Req::AudioSet { .. } => {
                if let Some(a) = v.get("audio") {
                    self.set_audio(Audio::from_json(a));
                }
                self.say(Msg::Done, false);
            }
            _ => {}
        }
    }

    fn status(&mut self, now: f64, v: &Value) {
        let numbers = strings(v.get("numbers"));
        self.link = Link {
            state: str_of(v, "state").unwrap_or_default(),
            ext: str_of(v, "ext"),
            name: str_of(v, "name"),
            code: str_of(v, "code"),
            error: str_of(v, "error"),
            numbers,
        };
        match v.get("call").and_then(|c| CallView::from_json(c, now)) {
            Some(c) => self.set_call(now, c),
            None => self.call = None,
        }
        if v.get("consult").is_none_or(Value::is_null) {
            self.consult = None;
        }
        if let Some(s) = v.get("settings").filter(|s| s.is_object()) {
            self.settings(s);
        }
        let count = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        if let Some(a) = v.get("audio") {
            self.set_audio(Audio::from_json(a));
        }
        self.messages_waiting = count("messages_waiting");
        self.voicemail_waiting = count("voicemail_waiting");
    }

    /// Take an action of the person.
    pub fn act(&mut self, a: Action) {
        match a {
            Action::Call => {
                let n = self.number.trim().to_string();
                self.dial(n);
            }
            Action::CallNumber(n) => {
                self.number = n.clone();
                self.tab = Tab::Phone;
                self.dial(n);
            }
            Action::Enter => match self.screen() {
                Screen::Ringing => self.act(Action::Answer),
                Screen::Idle => self.act(Action::Call),
                _ => {}
            },
            Action::Escape => match self.screen() {
                Screen::Ringing => self.act(Action::Decline),
                Screen::InCall if self.transfer.is_some() => self.transfer = None,
                Screen::InCall => self.act(Action::HangUp),
                _ => {}
            },
            Action::Answer => {
                if self.screen() == Screen::Ringing {
                    self.send(Req::Answer);
                }
            }
            Action::Decline | Action::HangUp => {
                if self.call.is_some() || self.dialing {
                    self.send(Req::Hangup);
                }
            }
            Action::Hold => self.in_call(Req::Hold),
            Action::Resume => self.in_call(Req::Resume),
            Action::Mute => {
                let on = !self.call.as_ref().is_some_and(|c| c.muted);
                self.in_call(Req::Mute(on));
            }
            Action::Record => {
                let on = !self.call.as_ref().is_some_and(|c| c.recording);
                self.in_call(Req::Record(on));
            }
            Action::OpenTransfer { consult } => {
                if self.call.as_ref().is_some_and(CallView::connected) {
                    self.transfer = Some((consult, String::new()));
                }
            }
            Action::CloseTransfer => self.transfer = None,
            Action::TransferTo => {
                let Some((consult, target)) = self.transfer.clone() else {
                    return;
                };
                let target = target.trim().to_string();
                if let Some(m) = number_problem(&target) {
                    return self.say(m, true);
                }
                self.notice = None;
                self.in_call(if consult {
                    Req::Consult(target)
                } else {
                    Req::Transfer(target)
                });
            }
            Action::Complete => {
                if self.consult.is_some() {
                    self.send(Req::ConsultComplete);
                }
            }
            Action::Cancel => {
                if self.consult.is_some() {
                    self.send(Req::ConsultCancel);
                }
            }
            Action::Keypad(k) => {
                if self.call.as_ref().is_some_and(CallView::connected) {
                    self.send(Req::Code(k.to_string()));
                } else {
                    self.number.push(k);
                }
            }
            Action::Tab(t) => {
                self.tab = t;
                match t {
                    Tab::History => {
                        self.missed = 0;
                        self.send(Req::History);
                    }
                    Tab::Messages => self.send(Req::Messages),
                    Tab::Voicemail => self.send(Req::VoicemailList),
                    Tab::Contacts => self.send(Req::Contacts),
                    Tab::Settings => {
                        self.send(Req::Status);
                        self.send(Req::AudioDevices);
                    }
                    Tab::Phone => {}
                }
            }
            Action::ToggleDnd => {
                let code = if self.dnd { "*79" } else { "*78" };
                self.feature(code.to_string());
            }
            Action::ToggleForward => {
                if self.forward_always.is_some() {
                    self.feature("*73".into());
                } else {
                    let to = self.forward_to.trim().to_string();
                    if let Some(m) = number_problem(&to) {
                        return self.say(m, true);
                    }
                    self.feature(format!("*72{to}"));
                }
            }
            Action::SendMessage => {
                let to = self.message_to.trim().to_string();
                let body = self.message_body.trim().to_string();
                if let Some(m) = number_problem(&to) {
                    return self.say(m, true);
                }
                if body.is_empty() {
                    return self.say(Msg::EmptyMessage, true);
                }
                self.send(Req::Message { to, body });
            }
            Action::PlayVoicemail(id) => self.send(Req::VoicemailPlay(id)),
            Action::DeleteVoicemail(id) => self.send(Req::VoicemailDelete(id)),
            Action::SetLang(l) => {
                if l != self.lang {
                    self.lang = l;
                    self.lang_changed = true;
                }
            }
            Action::SetAudio { what, spec } => {
                if self.agent == Agent::Up {
                    self.send(Req::AudioSet { what, spec });
                }
            }
            Action::UseRingtoneFile => {
                let f = self.ringtone_file.trim().to_string();
                if self.agent == Agent::Up {
                    self.send(Req::AudioSet {
                        what: AudioWhat::RingtoneFile,
                        spec: (!f.is_empty()).then_some(f),
                    });
                }
            }
        }
    }

    fn feature(&mut self, code: String) {
        if self.agent == Agent::Up && self.call.is_none() {
            self.send(Req::Dial(code));
        }
    }

    fn in_call(&mut self, r: Req) {
        if self.call.is_some() {
            self.send(r);
        }
    }

    fn dial(&mut self, n: String) {
        if let Some(m) = number_problem(&n) {
            return self.say(m, true);
        }
        match self.screen() {
            Screen::NoAgent => self.say(Msg::NoAgentShort, true),
            Screen::Pairing => self.say(Msg::NotApproved, true),
            Screen::Ringing | Screen::InCall => self.say(Msg::Busy, true),
            Screen::Idle if self.dialing => {}
            Screen::Idle => {
                self.notice = None;
                self.dialing = true;
                self.send(Req::Dial(n));
            }
        }
    }
}

/// Why `n` cannot be called, if it cannot.
pub fn number_problem(n: &str) -> Option<Msg> {
    if n.is_empty() {
        Some(Msg::EmptyNumber)
    } else if n.chars().count() > MAX_NUMBER {
        Some(Msg::LongNumber)
    } else if n.chars().any(char::is_control) {
        Some(Msg::BadNumber)
    } else {
        None
    }
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn message_of(v: &Value) -> Option<Message> {
    Some(Message {
        id: v.get("id")?.as_u64()?,
        from: str_of(v, "from")?,
        body: str_of(v, "body")?,
        mine: false,
    })
}

fn voicemail_of(v: &Value) -> Option<Voicemail> {
    Some(Voicemail {
        id: v.get("id")?.as_u64()?,
        from: str_of(v, "from").unwrap_or_default(),
        secs: v.get("secs").and_then(Value::as_f64).unwrap_or(0.0),
        heard: v.get("heard") == Some(&Value::Bool(true)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::i18n::Lang;

    fn up() -> Model {
        let mut m = Model::new(Lang::En);
        m.handle(0.0, Input::AgentUp);
        assert_eq!(m.poll_request(), Some(Req::Status));
        assert_eq!(m.poll_request(), Some(Req::History));
        m.handle(
            0.0,
            Input::Event(
                json!({"event": "link", "state": "registered", "ext": "201", "name": "Alice"}),
            ),
        );
        m
    }

    fn call_ev(state: &str, dir: &str, extra: Value) -> Input {
        let mut c = json!({"id": 7, "peer": "202", "peer_name": "Bob", "direction": dir,
            "state": state, "seconds": 0.0, "on_hold": false, "held_by_peer": false,
            "relayed": false, "consult": false, "recording": null});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        Input::Event(json!({"event": "call", "call": c}))
    }

    fn ended(reason: &str, state: &str, dir: &str) -> Input {
        Input::Event(json!({"event": "call-ended", "reason": reason,
            "call": {"id": 7, "peer": "202", "direction": dir, "state": state}}))
    }

    #[test]
    fn no_agent_until_it_answers_then_idle() {
        let mut m = Model::new(Lang::En);
        assert_eq!(m.screen(), Screen::NoAgent);
        m.handle(0.0, Input::AgentAbsent("no agent answers at /x".into()));
        assert_eq!(m.screen(), Screen::NoAgent);
        m.number = "202".into();
        m.act(Action::Call);
        assert_eq!(m.poll_request(), None, "nothing is sent to an absent agent");
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::NoAgentShort);
        let m = up();
        assert_eq!(m.screen(), Screen::Idle);
        assert_eq!(m.link.ext.as_deref(), Some("201"));
    }

    #[test]
    fn pairing_screen_while_pending_then_idle_when_approved() {
        let mut m = up();
        m.handle(
            0.0,
            Input::Event(json!({"event": "link", "state": "pending", "code": "547266"})),
        );
        assert_eq!(m.screen(), Screen::Pairing);
        assert_eq!(m.link.code.as_deref(), Some("547266"));
        m.handle(
            1.0,
            Input::Event(json!({"event": "link", "state": "registered", "ext": "203"})),
        );
        assert_eq!(m.screen(), Screen::Idle);
    }

    #[test]
    fn dialing_checks_the_number_first() {
        let mut m = up();
        m.act(Action::Call);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::EmptyNumber);
        m.number = "1".repeat(MAX_NUMBER + 1);
        m.act(Action::Call);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::LongNumber);
        assert_eq!(m.poll_request(), None);
        // Any script is a number; the ends are trimmed.
        m.number = " 김민준 ".into();
        m.act(Action::Enter);
        assert_eq!(m.poll_request(), Some(Req::Dial("김민준".into())));
        assert!(m.dialing);
        // A second press while the first dial waits sends nothing.
        m.act(Action::Call);
        assert_eq!(m.poll_request(), None);
    }

    #[test]
    fn an_unknown_number_says_so_and_keeps_the_field() {
        let mut m = up();
        m.number = "299".into();
        m.act(Action::Call);
        let r = m.poll_request().unwrap();
        m.handle(
            0.1,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": false, "error": "cannot call 299: no such extension"})),
            },
        );
        let n = m.notice.clone().unwrap();
        assert_eq!(n.msg, Msg::CannotCall);
        assert!(n.detail.unwrap().contains("no such extension"));
        assert_eq!(m.number, "299");
        assert_eq!(m.screen(), Screen::Idle);
        assert!(!m.dialing);
    }

    #[test]
    fn a_refused_dial_keeps_the_gateways_reason_whichever_comes_first() {
        for reply_first in [true, false] {
            let mut m = up();
            m.number = "299".into();
            m.act(Action::Call);
            let r = m.poll_request().unwrap();
            let reply = Input::Reply {
                req: r,
                result: Ok(json!({"ok": false, "error": "cannot call 299: no such extension"})),
            };
            let ev = ended("failed", "dialing", "out");
            if reply_first {
                m.handle(0.1, reply);
                m.handle(0.1, ev);
            } else {
                m.handle(0.1, ev);
                m.handle(0.1, reply);
            }
            let n = m.notice.clone().unwrap();
            assert_eq!(n.msg, Msg::CannotCall, "reply first: {reply_first}");
            assert!(n.detail.unwrap().contains("no such extension"));
        }
    }

    #[test]
    fn a_call_rings_in_raises_the_window_and_is_answered_with_enter() {
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        assert_eq!(m.screen(), Screen::Ringing);
        assert!(m.take_raise());
        assert!(!m.take_raise(), "raised once per ring");
        m.act(Action::Enter);
        assert_eq!(m.poll_request(), Some(Req::Answer));
        m.handle(1.5, call_ev("connected", "in", json!({"seconds": 0.0})));
        assert_eq!(m.screen(), Screen::InCall);
        let c = m.call.clone().unwrap();
        assert_eq!(c.elapsed(4.0), 2.5);
        assert_eq!(c.who(), "Bob");
    }

    #[test]
    fn a_ring_becomes_a_notification_only_if_the_window_gets_no_focus() {
        // The window manager grants the focus within the grace period:
        // no notification, before or after.
        let mut m = up();
        m.window_focus(0.5, false);
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        assert_eq!(m.focus_deadline(), Some(1.0 + FOCUS_GRACE));
        m.window_focus(1.0, false);
        m.window_focus(1.2, true);
        assert!(!m.notification());
        assert_eq!(m.focus_deadline(), None);
        m.window_focus(1.2 + FOCUS_GRACE, false);
        m.window_focus(3.0, false);
        assert!(!m.notification(), "focused once: no notification later");

        // Focus refused: posted at the end of the grace period, not before.
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        m.window_focus(1.0, false);
        m.window_focus(1.0 + FOCUS_GRACE - 0.01, false);
        assert!(!m.notification());
        m.window_focus(1.0 + FOCUS_GRACE, false);
        assert!(m.notification());
        assert_eq!(m.focus_deadline(), None);
        // Withdrawn when the window gets the focus after all.
        m.window_focus(2.0, true);
        assert!(!m.notification());
        m.window_focus(2.5, false);
        assert!(!m.notification());

        // Withdrawn when the ringing stops (answered elsewhere, caller gone).
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        m.window_focus(2.0, false);
        assert!(m.notification());
        m.handle(2.5, call_ev("connected", "in", json!({})));
        m.window_focus(2.5, false);
        assert!(!m.notification());
        assert_eq!(m.focus_deadline(), None);

        // A call going out never rings here.
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "out", json!({})));
        m.window_focus(5.0, false);
        assert!(!m.notification());
        assert_eq!(m.focus_deadline(), None);

        // A window already in front when the call comes: nothing.
        let mut m = up();
        m.window_focus(0.5, true);
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        m.window_focus(1.0, true);
        m.window_focus(9.0, true);
        assert!(!m.notification());
    }

    #[test]
    fn escape_declines_a_ringing_call_and_hangs_up_a_connected_one() {
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        m.act(Action::Escape);
        assert_eq!(m.poll_request(), Some(Req::Hangup));
        m.handle(1.0, call_ev("connected", "in", json!({})));
        m.act(Action::Escape);
        assert_eq!(m.poll_request(), Some(Req::Hangup));
    }

    #[test]
    fn in_call_controls_follow_the_call() {
        let mut m = up();
        // Nothing to hold without a call.
        m.act(Action::Hold);
        assert_eq!(m.poll_request(), None);
        m.handle(1.0, call_ev("connected", "out", json!({})));
        m.act(Action::Hold);
        assert_eq!(m.poll_request(), Some(Req::Hold));
        m.handle(1.0, call_ev("connected", "out", json!({"on_hold": true})));
        assert!(m.call.as_ref().unwrap().on_hold);
        m.act(Action::Mute);
        assert_eq!(m.poll_request(), Some(Req::Mute(true)));
        m.handle(1.0, call_ev("connected", "out", json!({"muted": true})));
        m.act(Action::Mute);
        assert_eq!(m.poll_request(), Some(Req::Mute(false)));
        m.act(Action::Record);
        assert_eq!(m.poll_request(), Some(Req::Record(true)));
        m.act(Action::Keypad('5'));
        assert_eq!(m.poll_request(), Some(Req::Code("5".into())));
    }

    #[test]
    fn transfer_and_consult_through_the_dialog() {
        let mut m = up();
        m.handle(1.0, call_ev("connected", "in", json!({})));
        m.act(Action::OpenTransfer { consult: false });
        m.act(Action::TransferTo);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::EmptyNumber);
        m.transfer = Some((false, "203".into()));
        m.act(Action::TransferTo);
        assert_eq!(m.poll_request(), Some(Req::Transfer("203".into())));
        m.act(Action::Escape);
        assert!(m.transfer.is_none(), "Esc closes the dialog first");
        assert_eq!(m.poll_request(), None);

        m.act(Action::OpenTransfer { consult: true });
        m.transfer = Some((true, "204".into()));
        m.act(Action::TransferTo);
        let r = m.poll_request().unwrap();
        assert_eq!(r, Req::Consult("204".into()));
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": true})),
            },
        );
        assert!(m.transfer.is_none());
        let mut consult = json!({"id": 8, "peer": "204", "direction": "out", "state": "connected", "consult": true});
        m.handle(
            2.0,
            Input::Event(json!({"event": "call", "call": consult.clone()})),
        );
        assert_eq!(m.consult.as_ref().unwrap().peer, "204");
        assert_eq!(
            m.call.as_ref().unwrap().peer,
            "202",
            "the held call stays shown"
        );
        m.act(Action::Complete);
        assert_eq!(m.poll_request(), Some(Req::ConsultComplete));
        consult["state"] = json!("connected");
        m.handle(
            2.0,
            Input::Event(json!({"event": "call-ended", "reason": "transferred", "call": consult})),
        );
        assert!(m.consult.is_none());
        assert!(m.call.is_some());
    }

    #[test]
    fn a_call_ending_says_how_and_refreshes_history() {
        let mut m = up();
        m.handle(1.0, call_ev("ringing", "out", json!({})));
        m.handle(2.0, ended("busy", "ringing", "out"));
        assert!(m.call.is_none());
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::EndedBusy);
        assert_eq!(m.poll_request(), Some(Req::History));
        m.handle(
            2.1,
            Input::Reply {
                req: Req::History,
                result: Ok(json!({"ok": true, "calls": [
                    {"peer": "202", "direction": "out", "connected": false, "ended": "busy"},
                    {"peer": "203", "direction": "in", "connected": false, "ended": "cancelled"}]})),
            },
        );
        assert_eq!(m.history.len(), 2);
        assert!(m.history[1].missed());
    }

    #[test]
    fn a_missed_call_is_counted_until_history_is_opened() {
        let mut m = up();
        m.handle(1.0, call_ev("alerting", "in", json!({})));
        m.handle(2.0, ended("cancelled", "alerting", "in"));
        assert_eq!(m.missed, 1);
        m.act(Action::Tab(Tab::History));
        assert_eq!(m.missed, 0);
    }

    #[test]
    fn the_agent_dying_mid_call_ends_the_call_and_it_recovers() {
        let mut m = up();
        m.handle(1.0, call_ev("connected", "out", json!({})));
        m.handle(2.0, Input::AgentAbsent("the phone service stopped".into()));
        assert!(m.call.is_none());
        assert_eq!(m.screen(), Screen::NoAgent);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::CallLostAgent);
        while m.poll_request().is_some() {}
        m.handle(3.0, Input::AgentUp);
        assert_eq!(m.poll_request(), Some(Req::Status));
        m.handle(
            3.1,
            Input::Reply {
                req: Req::Status,
                result: Ok(
                    json!({"ok": true, "state": "registered", "ext": "201", "call": null,
                    "settings": {"dnd": true, "forward_always": "209"}, "messages_waiting": 2}),
                ),
            },
        );
        assert_eq!(m.screen(), Screen::Idle);
        assert!(m.dnd);
        assert_eq!(m.forward_always.as_deref(), Some("209"));
        assert_eq!(m.messages_waiting, 2);
    }

    #[test]
    fn dnd_and_forwarding_are_feature_codes() {
        let mut m = up();
        m.act(Action::ToggleDnd);
        assert_eq!(m.poll_request(), Some(Req::Dial("*78".into())));
        m.act(Action::ToggleForward);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::EmptyNumber);
        m.forward_to = "203".into();
        m.act(Action::ToggleForward);
        assert_eq!(m.poll_request(), Some(Req::Dial("*72203".into())));
        m.handle(
            1.0,
            Input::Event(
                json!({"event": "settings", "settings": {"dnd": true, "forward_always": "203"}}),
            ),
        );
        m.act(Action::ToggleDnd);
        assert_eq!(m.poll_request(), Some(Req::Dial("*79".into())));
        m.act(Action::ToggleForward);
        assert_eq!(m.poll_request(), Some(Req::Dial("*73".into())));
    }

    #[test]
    fn messages_arrive_are_sent_and_counted() {
        let mut m = up();
        m.handle(
            1.0,
            Input::Event(
                json!({"event": "message", "message": {"id": 3, "from": "202", "body": "hi"}}),
            ),
        );
        assert_eq!(m.messages_waiting, 1);
        m.act(Action::Tab(Tab::Messages));
        let r = m.poll_request().unwrap();
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(
                    json!({"ok": true, "messages": [{"id": 3, "from": "202", "body": "hi"}]}),
                ),
            },
        );
        assert_eq!(m.messages_waiting, 0);
        assert_eq!(m.messages.len(), 1, "the same message is not shown twice");
        m.message_to = "202".into();
        m.act(Action::SendMessage);
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::EmptyMessage);
        m.message_body = "ok".into();
        m.act(Action::SendMessage);
        let r = m.poll_request().unwrap();
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": true, "id": 4})),
            },
        );
        assert_eq!(m.messages.len(), 2);
        assert!(m.messages[1].mine);
    }

    #[test]
    fn contacts_come_from_the_agent_and_a_click_calls() {
        let mut m = up();
        m.act(Action::Tab(Tab::Contacts));
        let r = m.poll_request().unwrap();
        assert_eq!(r, Req::Contacts);
        assert_eq!(r.to_json(), json!({"cmd": "contacts"}));
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": true, "contacts": [
                    {"name": "Bob Lee", "number": "202", "code": null},
                    {"name": null, "number": "+15550100", "code": "*1"},
                    {"number": 5}]})),
            },
        );
        assert_eq!(m.contacts.len(), 2, "an entry without a number is left out");
        assert!(m.contacts[0].matches("bob"));
        assert!(m.contacts[0].matches("20"));
        assert!(!m.contacts[0].matches("*1"));
        assert!(m.contacts[1].matches("*1"));
        m.act(Action::CallNumber("202".into()));
        assert_eq!(m.tab, Tab::Phone);
        assert_eq!(m.poll_request(), Some(Req::Dial("202".into())));
        // A terminal has no office contacts: the reason is kept, no alarm.
        m.handle(
            2.0,
            Input::Reply {
                req: Req::Contacts,
                result: Ok(json!({"ok": false, "error": "unknown command \"contacts\""})),
            },
        );
        assert!(m.contacts.is_empty());
        assert!(m.contacts_problem.is_some());
        assert!(m.notice.is_none());
    }

    #[test]
    fn audio_settings_are_the_agents() {
        let mut m = up();
        m.act(Action::Tab(Tab::Settings));
        assert_eq!(m.poll_request(), Some(Req::Status));
        let r = m.poll_request().unwrap();
        assert_eq!(r, Req::AudioDevices);
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": true,
                    "inputs": [{"spec": "device:hw:1", "name": "USB headset", "default": false}],
                    "outputs": [{"spec": "device:default", "name": "Default", "default": true}]})),
            },
        );
        assert_eq!(m.inputs[0].name, "USB headset");
        assert!(m.outputs[0].default);
        m.act(Action::SetAudio {
            what: AudioWhat::Microphone,
            spec: Some("device:hw:1".into()),
        });
        let r = m.poll_request().unwrap();
        assert_eq!(
            r.to_json(),
            json!({"cmd": "audio-set", "in": "device:hw:1"})
        );
        m.handle(
            1.0,
            Input::Reply {
                req: r,
                result: Ok(json!({"ok": true, "audio":
                    {"in": "device:hw:1", "out": "device", "ring_out": null, "ringtone": null}})),
            },
        );
        assert_eq!(m.audio.input.as_deref(), Some("device:hw:1"));
        // The ringtone file: the field's file, or none for the built-in.
        m.ringtone_file = " /home/a/ring.wav ".into();
        m.act(Action::UseRingtoneFile);
        assert_eq!(
            m.poll_request().unwrap().to_json(),
            json!({"cmd": "audio-set", "ringtone": "/home/a/ring.wav"})
        );
        m.ringtone_file.clear();
        m.act(Action::UseRingtoneFile);
        assert_eq!(
            m.poll_request().unwrap().to_json(),
            json!({"cmd": "audio-set", "ringtone": null})
        );
        // A refusal says why; another window's change arrives as an event.
        m.handle(
            2.0,
            Input::Reply {
                req: Req::AudioSet {
                    what: AudioWhat::RingtoneFile,
                    spec: Some("/x.wav".into()),
                },
                result: Ok(
                    json!({"ok": false, "error": "audio not changed: ringtone /x.wav: not found"}),
                ),
            },
        );
        assert_eq!(m.notice.as_ref().unwrap().msg, Msg::Failed);
        m.handle(
            3.0,
            Input::Event(json!({"event": "audio", "audio":
                {"in": "device", "out": "device", "ring_out": "device:hw:2", "ringtone": "/r.wav"}})),
        );
        assert_eq!(m.audio.ring_out.as_deref(), Some("device:hw:2"));
        assert_eq!(m.ringtone_file, "/r.wav");
    }

    #[test]
    fn a_status_refresh_keeps_a_ringtone_path_being_typed() {
        let mut m = up();
        m.ringtone_file = "/home/a/my-ring".into();
        // The window refreshes the status after a call; the agent's
        // choice has not changed.
        m.handle(
            1.0,
            Input::Reply {
                req: Req::Status,
                result: Ok(json!({"ok": true, "state": "registered", "ext": "202",
                    "audio": {"in": "device", "out": "device", "ring_out": null, "ringtone": null}})),
            },
        );
        assert_eq!(m.ringtone_file, "/home/a/my-ring");
        // Once the agent's ringtone does change, the field shows it.
        m.handle(
            2.0,
            Input::Event(json!({"event": "audio", "audio":
                {"in": "device", "out": "device", "ring_out": null, "ringtone": "/r.wav"}})),
        );
        assert_eq!(m.ringtone_file, "/r.wav");
    }

    #[test]
    fn a_language_change_is_reported_once() {
        let mut m = up();
        m.act(Action::SetLang(Lang::En));
        assert!(!m.take_lang_change(), "the same language is no change");
        m.act(Action::SetLang(Lang::Ko));
        assert_eq!(m.lang, Lang::Ko);
        assert!(m.take_lang_change());
        assert!(!m.take_lang_change());
    }

    #[test]
    fn the_outbox_is_bounded() {
        let mut m = up();
        m.handle(1.0, call_ev("connected", "out", json!({})));
        for _ in 0..1000 {
            m.act(Action::Hold);
        }
        let mut n = 0;
        while m.poll_request().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_OUTBOX);
    }

    #[test]
    fn tel_links_give_the_number() {
        assert_eq!(crate::tel_number("tel:1001").as_deref(), Some("1001"));
        assert_eq!(
            crate::tel_number("tel://+82-2-555-1234;phone-context=x").as_deref(),
            Some("+8225551234")
        );
        assert_eq!(crate::tel_number("tel:%EA%B9%80").as_deref(), Some("김"));
        assert_eq!(crate::tel_number("tel:"), None);
        assert_eq!(crate::tel_number("1001"), None);
    }
}
