//! `keyline-agent terminal`: the agent as a standalone internet terminal
//! (the patent's client program). No office gateway and no mDNS: it logs
//! in to a `keyline-directory`, registers its number(s) there with its own
//! addresses, reconnects with backoff when the directory goes away, and
//! places and takes calls through it.
//!
//! Its calls are decided by the phone core ([`keyline_proto::phone`],
//! [`Flavor::Terminal`], through [`crate::station`]), as the office
//! station's are; this adapter only does the directory's I/O: it turns the
//! directory client's events and answers into the core's link inputs,
//! carries out what the core asks with [`DirClient`], and makes each
//! call's media connection end to end (`dial_media` on the calling end,
//! [`accept_media`] in this terminal's accept loop on the answering end),
//! opening our NAT towards the other end ([`Puncher`]). The directory
//! session itself (connect, log in, register, reconnect) is in
//! [`directory`]; texts and delivered mail, kept on disk, in [`mail`].
//!
//! The control socket takes the office commands that make sense here:
//! `status`, `dial`, `answer`, `hangup`, `record`, `hold`/`resume` (local:
//! the other end hears the music), `transfer` (a blind hand-off through
//! the directory), `message` (a text left with the directory), `messages`
//! (texts and voice mail delivered by the directory, kept on disk),
//! `voicemail list|play`, and the event stream.
//!
//! Look-up-only calls (claim 3): `dial --lookup` only asks the directory
//! where the callee is (`DirClient::lookup`) and connects its media
//! straight there; the callee's endpoint, told by the directory to expect
//! us (`Event::Expect`), rings itself and holds our connection without
//! answering `MediaHello` until its user answers. Such a call has no
//! directory call id: hanging up is closing the media connection.

mod account;
mod directory;
mod forward;
mod mail;
mod mailbox;
pub mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_dirclient::client::{
    accept_media, parse_number, CallError, CallOptions, ClientError, DirClient, Event, Found,
    MediaPlan, Progress, RingChecks,
};
use keyline_net::checks::HOPELESS_AFTER;
use keyline_net::lifecycle::Signals;
use keyline_net::{control, peer_fingerprint, Checker, Identity, Puncher};
use keyline_proto::dir::{CallId, DirectPolicy, EndReason, ErrorCode};
use keyline_proto::number::Number;
use keyline_proto::phone::{
    CallKey, CallState, Command, Config, Flavor, LinkIn, LinkOut, LookupRefusal, MediaIn, Req,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::mailbox::Mailbox;
use crate::api::{self, Request};
use crate::audio::LocalAudio;
use crate::cli::EndpointArgs;
use crate::station::{self, Station, Todo};

/// Options of `keyline-agent terminal`.
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    pub state: Option<PathBuf>,
    pub directory: String,
    pub directory_fp: Option<String>,
    pub account: String,
    pub password_file: PathBuf,
    pub numbers: Vec<String>,
    pub mail_dir: Option<PathBuf>,
    /// What it shares with the office station: devices, answering,
    /// naming, recording.
    pub endpoint: EndpointArgs,
}

/// The caller starts its checks this much after the callee: a router that
/// sees the caller's packet before its own host's first one towards the
/// caller may give its host's packets a new port (plain masquerade).
const CALLER_CHECK_DELAY: Duration = Duration::from_millis(150);
/// When the checks found no direct path, the direct attempt still gets
/// at least this long (a path that opened since) before the relay is
/// asked for.
const HOPELESS_DIRECT_TRY: Duration = Duration::from_millis(150);
/// An answered call whose media is not up by then is given up.
const MEDIA_DEADLINE: Duration = Duration::from_secs(15);
/// An unanswered look-up-only call rings this long (the caller waits as
/// long: `keyline_dirclient::client::LOOKUP_RING_TIMEOUT`).
const LOOKUP_RING_TIMEOUT: Duration = keyline_dirclient::client::LOOKUP_RING_TIMEOUT;

/// Why a look-up-only call's held connection is closed unanswered.
const LOOKUP_DECLINED: &[u8] = b"declined";
const LOOKUP_NO_ANSWER: &[u8] = b"no answer";
const LOOKUP_BUSY: &[u8] = b"busy";
/// How long a look-up-only caller refused as busy is remembered (it
/// connects within a second or two of the look-up).
const LOOKUP_BUSY_MEMORY: Duration = Duration::from_secs(15);

/// Where we stand with the directory.
#[derive(Debug, Default)]
struct Link {
    state: &'static str,
    error: Option<String>,
    directory: Option<SocketAddr>,
    numbers: Vec<String>,
    observed: Option<SocketAddr>,
    candidates: Vec<SocketAddr>,
    ttl: Option<Duration>,
    registered_at: Option<Instant>,
    /// Successful registrations since start (1 + reconnects).
    registrations: u64,
}

struct State {
    link: Link,
    client: Option<DirClient>,
    /// The calls: the phone core and what both modes keep around it.
    station: Station<MediaPlan>,
    /// The tasks of the core's dial and look-up requests still under way;
    /// aborting one gives its call up (dropping the call future cancels
    /// it at the directory).
    requests: HashMap<Req, JoinHandle<()>>,
    /// Media connection attempts of the dialling end, by call.
    attempts: HashMap<CallKey, JoinHandle<()>>,
    /// Media connections of a ringing look-up-only call, held unanswered
    /// (no `MediaOk`) until our user answers.
    held: Vec<(CallKey, quinn::Connection)>,
    /// Further verified media connections of a call (a caller trying
    /// several of our addresses at once keeps one and closes the others);
    /// used if the session's own connection closes.
    spare: Vec<(CallKey, quinn::Connection)>,
    /// Look-up-only callers told to expect us while we were in a call, by
    /// certificate fingerprint: their connections are refused as busy.
    busy_for: Vec<(String, Instant)>,
    playback: Option<JoinHandle<()>>,
    unread: usize,
}

impl State {
    /// Set where we stand with the directory and tell subscribers.
    fn set_link(&mut self, state: &'static str, error: Option<String>) {
        self.link.state = state;
        self.link.error = error;
        self.station.events.publish(json!({
            "event": "link",
            "state": state,
            "numbers": self.link.numbers,
            "error": self.link.error,
        }));
    }

    fn stop_playback(&mut self) {
        if let Some(p) = self.playback.take() {
            p.abort();
        }
    }
}

struct Terminal {
    id: Identity,
    endpoint: quinn::Endpoint,
    /// Sends from the endpoint's port to open our NAT for a caller.
    puncher: Puncher,
    /// Checks the direct path of each call while it rings.
    checker: Checker,
    state_dir: PathBuf,
    opts: TerminalOptions,
    /// The account's password, as `keyline-agent passwd` last set it.
    password: Mutex<String>,
    numbers: Vec<Number>,
    mailbox: Mailbox,
    st: Mutex<State>,
    /// The call we expect the other end to connect for: its key, the flow
    /// id of its datagrams and its plan.
    expect: watch::Sender<Option<(CallKey, CallId, MediaPlan)>>,
    audio: LocalAudio,
}

impl Terminal {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn password(&self) -> String {
        self.password
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn pin_path(&self) -> PathBuf {
        self.state_dir.join("directory.fp")
    }
}

/// Run the terminal until SIGTERM or SIGINT.
pub async fn run(opts: TerminalOptions) -> Result<()> {
    let mut signals = Signals::new().context("installing signal handlers")?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "agent")?;
    let password = directory::read_password(&opts.password_file)?;
    let numbers = opts
        .numbers
        .iter()
        .map(|n| Number::parse(n).map_err(|e| anyhow::anyhow!("--number {n:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut opts = opts;
    opts.directory_fp = opts
        .directory_fp
        .as_deref()
        .map(directory::parse_fingerprint)
        .transpose()?;
    let id = Identity::load_or_create(&state_dir, "keyline-agent")?;
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let (endpoint, puncher, checker) =
        keyline_net::make_endpoint_with_checks(opts.endpoint.bind, &id)?;
    let mut cfg = Config::new(Flavor::Terminal);
    cfg.lookup_ring_timeout = LOOKUP_RING_TIMEOUT;
    cfg.media_deadline = MEDIA_DEADLINE;
    let events = control::Events::new();
    let (audio, station) = station::open(&opts.endpoint, &state_dir, cfg, events.clone())?;
    let mailbox = Mailbox::open(
        &opts
            .mail_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("mail")),
    )?;
    let unread = {
        let mb = mailbox.clone();
        tokio::task::spawn_blocking(move || mb.list())
            .await
            .context("reading the mailbox")??
            .iter()
            .filter(|m| !m.read)
            .count()
    };
    let wake = station.wake.clone();
    let (expect, _) = watch::channel(None);
    let t = Arc::new(Terminal {
        id,
        endpoint,
        puncher,
        checker,
        state_dir: state_dir.clone(),
        opts,
        password: Mutex::new(password),
        numbers,
        mailbox,
        st: Mutex::new(State {
            link: Link {
                state: "connecting",
                ..Link::default()
            },
            client: None,
            station,
            requests: HashMap::new(),
            attempts: HashMap::new(),
            held: Vec::new(),
            spare: Vec::new(),
            busy_for: Vec::new(),
            playback: None,
            unread,
        }),
        expect,
        audio,
    });

    station::start(&t, ctl, events, wake);
    tokio::spawn(accept_loop(t.clone()));
    let link = tokio::spawn(directory::link_loop(t.clone()));
    println!(
        "keyline-agent terminal ready: udp {}, state {}",
        t.endpoint.local_addr()?,
        state_dir.display()
    );
    {
        let t2 = t.clone();
        let status = format!("connecting to the directory {}", t.opts.directory);
        t.audio
            .serve_until_stopped(&mut signals, &status, move || t2.st.lock().is_ok())
            .await;
    }
    link.abort();
    let (client, in_call) = {
        let mut st = t.lock();
        let in_call = st.station.phone.call().is_some();
        if in_call {
            drop(st.station.command(Command::Hangup));
        }
        drive(&t, &mut st);
        (st.client.take(), in_call)
    };
    if let Some(client) = client {
        if in_call {
            // Let the hang-up reach the directory.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.close();
    }
    t.audio.finish();
    t.endpoint
        .close(quinn::VarInt::from_u32(0), b"terminal stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), t.endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

/// What the directory tells us unprompted: calls go to the phone core;
/// mail and our registration are handled here.
fn on_event(t: &Arc<Terminal>, client: &DirClient, ev: Event) {
    let link = match ev {
        Event::Ring(r) => {
            if let Some(c) = &r.checks {
                // The callee checks at once: its own router should see
                // its packets towards the caller before the caller's.
                start_checks(t, r.call, c, Duration::ZERO);
            }
            println!(
                "incoming call {} from {} to {}{}",
                r.call,
                r.from,
                r.number,
                if r.via.is_empty() {
                    String::new()
                } else {
                    format!(" (forwarded from {})", r.via.join(", "))
                }
            );
            LinkIn::Incoming {
                call: r.call,
                from: r.from,
                from_name: None,
                number: Some(r.number),
                via: r.via,
            }
        }
        Event::Expect {
            from,
            number,
            ext,
            plan,
        } => {
            println!(
                "incoming look-up-only call from {from} to {number}{}",
                ext.map(|e| format!(" (extension {e}: a terminal has none)"))
                    .unwrap_or_default()
            );
            LinkIn::IncomingLookup { from, number, plan }
        }
        Event::Ended { call, reason } => {
            t.checker.stop(call);
            LinkIn::Ended {
                call,
                reason: end_reason(reason).into(),
                transferred: false,
            }
        }
        Event::Transferred {
            call,
            number,
            by,
            handoff,
        } => {
            // The other end handed us on (claim 5): the core calls
            // `number` itself, directly.
            println!("{by} handed call {call} on to {number}");
            LinkIn::HandedOn {
                call,
                number,
                handoff,
            }
        }
        Event::Relay { call, relay } => {
            if t.lock().station.phone.call().and_then(|c| c.id) == Some(call) {
                tracing::info!("call {call}: media through the directory's relay {relay}");
                t.puncher.punch(vec![relay]);
                // The connection we wait for now comes from the relay.
                t.expect.send_if_modified(|e| match e {
                    Some((_, flow, plan)) if *flow == call => {
                        plan.relay = Some(relay);
                        true
                    }
                    _ => false,
                });
            }
            LinkIn::Relayed { call }
        }
        Event::Mail(m) => {
            let t = t.clone();
            let client = client.clone();
            tokio::spawn(async move { mail::store_mail(t, client, m).await });
            return;
        }
        Event::AddressChanged { observed } => {
            println!("the directory now sees us at {observed}; registration refreshed");
            t.lock().link.observed = Some(observed);
            return;
        }
        Event::Unbound { numbers, reason } => {
            println!("no longer registered: {} ({reason})", numbers.join(", "));
            let mut st = t.lock();
            st.link.numbers.retain(|n| !numbers.contains(n));
            if st.link.numbers.is_empty() {
                let error = format!("{} unbound: {reason}", numbers.join(", "));
                let state = st.link.state;
                st.set_link(state, Some(error));
            }
            return;
        }
        Event::Error { code, message } => {
            tracing::warn!("directory error {code:?}: {message}");
            return;
        }
        Event::Disconnected { .. } | Event::GoingAway { .. } => return,
    };
    let mut st = t.lock();
    if matches!(
        link,
        LinkIn::Incoming { .. } | LinkIn::IncomingLookup { .. }
    ) && st.station.phone.call().is_none()
    {
        st.stop_playback();
    }
    st.station.phone.handle_link(Instant::now(), link);
    drive(t, &mut st);
}

fn end_reason(r: EndReason) -> &'static str {
    match r {
        EndReason::Hangup => "hangup",
        EndReason::Cancelled => "cancelled",
        EndReason::Rejected => "rejected",
        EndReason::Busy => "busy",
        EndReason::NoAnswer => "no-answer",
        EndReason::PeerLost => "peer-lost",
        EndReason::Redirected => "redirected",
        EndReason::MediaFailed => "media-failed",
        EndReason::Shutdown => "directory-shutdown",
        EndReason::Other => "ended",
    }
}

/// A clear sentence for a call that did not connect, and how it ended.
fn call_failure(number: &str, e: &CallError) -> (String, &'static str) {
    match e {
        CallError::Failed {
            code: ErrorCode::Unreachable,
            message,
            mail,
            ..
        } => (
            if *mail {
                format!("{message} (leave one with: keyline-agent message {number} TEXT)")
            } else {
                message.clone()
            },
            "offline",
        ),
        CallError::Failed {
            code: ErrorCode::UnknownNumber,
            message,
            ..
        } => (message.clone(), "unknown"),
        CallError::Failed { message, .. } => (message.clone(), "failed"),
        CallError::Ended { reason, .. } => (reason.describe().to_string(), end_reason(*reason)),
        CallError::RedirectLoop { .. } | CallError::TooManyRedirects { .. } => {
            (e.to_string(), "redirect-loop")
        }
        CallError::Client(c) => (format!("the directory: {c}"), "directory-lost"),
    }
}

// ---- carrying out the core's requests ----

/// Carry out what the phone core asked: the shared part in the station,
/// the directory's and the media's part here. Inputs fed back to the core
/// on the way (a request that cannot be sent) are carried out too.
fn drive(t: &Arc<Terminal>, st: &mut State) {
    loop {
        let todo = st.station.drain(&t.audio);
        if todo.is_empty() {
            return;
        }
        for todo in todo {
            match todo {
                Todo::Send(m) => send(t, st, m),
                Todo::StartMedia { key, call, plan } => start_media(t, st, key, call, plan),
                Todo::StopMedia { key } => {
                    if let Some(a) = st.attempts.remove(&key) {
                        // Dropping the attempt closes its connections: a
                        // look-up's callee stops ringing.
                        a.abort();
                    }
                    for (_, c) in st.held.iter().chain(&st.spare).filter(|(k, _)| *k == key) {
                        c.close(quinn::VarInt::from_u32(0), b"call ended");
                    }
                    st.held.retain(|(k, _)| *k != key);
                    st.spare.retain(|(k, _)| *k != key);
                    t.expect
                        .send_if_modified(|e| e.take_if(|(k, _, _)| *k == key).is_some());
                }
                Todo::RefuseLookup { plan } => {
                    // Its connection is refused as busy when it comes.
                    println!("a look-up-only call was refused: busy");
                    st.busy_for
                        .retain(|(_, at)| at.elapsed() < LOOKUP_BUSY_MEMORY);
                    st.busy_for.push((plan.peer_fp, Instant::now()));
                }
            }
        }
    }
}

/// Send the core's request to the directory (or to the held connections
/// of a look-up-only call). What the directory answers goes back to the
/// core.
fn send(t: &Arc<Terminal>, st: &mut State, m: LinkOut) {
    match m {
        LinkOut::AcceptLookup { key } => return accept_lookup(t, st, key),
        LinkOut::DeclineLookup { key, why } => {
            let (code, reason) = match why {
                LookupRefusal::Declined => (2u32, LOOKUP_DECLINED),
                LookupRefusal::NoAnswer => (3, LOOKUP_NO_ANSWER),
            };
            for (_, h) in st.held.iter().filter(|(k, _)| *k == key) {
                h.close(quinn::VarInt::from_u32(code), reason);
            }
            st.held.retain(|(k, _)| *k != key);
            return;
        }
        LinkOut::Cancel { req, .. } => {
            // Dropping the call future cancels the call at the directory.
            if let Some(task) = st.requests.remove(&req) {
                task.abort();
            }
            return;
        }
        // A terminal's hold is its own business; attended transfers need
        // an office (the core refuses them).
        LinkOut::Hold { .. } | LinkOut::Consult { .. } | LinkOut::ConsultComplete { .. } => return,
        _ => {}
    }
    let Some(client) = st.client.clone() else {
        // No directory: a request that waits for its answer fails now.
        let message = "not connected to the directory".to_string();
        let back = match m {
            LinkOut::Dial { req, .. } | LinkOut::Lookup { req, .. } => LinkIn::Failed {
                req,
                message,
                ended: "directory-lost".into(),
            },
            LinkOut::Answer { call } => LinkIn::AnswerFailed { call, message },
            LinkOut::Transfer { req, call, .. } => LinkIn::TransferFailed { req, call, message },
            _ => return,
        };
        st.station.phone.handle_link(Instant::now(), back);
        return;
    };
    // Dials and look-ups can be given up (`Cancel`) while under way.
    let cancellable = match &m {
        LinkOut::Dial { req, .. } | LinkOut::Lookup { req, .. } => Some(*req),
        _ => None,
    };
    let t2 = t.clone();
    let task = tokio::spawn(async move {
        let back = match m {
            LinkOut::Dial {
                req,
                number,
                handoff,
            } => outgoing(&t2, &client, req, &number, handoff).await,
            LinkOut::Lookup { req, number } => match lookup(&client, &number).await {
                Ok(f) => LinkIn::Found {
                    req,
                    callee: f.number,
                    via: f.via,
                    plan: f.plan,
                },
                Err(e) => LinkIn::Failed {
                    req,
                    message: e.to_string(),
                    ended: match e.code() {
                        Some(ErrorCode::UnknownNumber) => "unknown",
                        Some(ErrorCode::Unreachable) => "offline",
                        _ => "failed",
                    }
                    .into(),
                },
            },
            LinkOut::Answer { call } => match client.answer(call).await {
                Ok(plan) => LinkIn::Answered {
                    req: None,
                    call,
                    relayed: plan.relay.is_some(),
                    plan,
                    peer: None,
                },
                Err(e) => LinkIn::AnswerFailed {
                    call,
                    message: e.to_string(),
                },
            },
            LinkOut::Transfer { req, call, target } => {
                match transfer(&client, call, &target).await {
                    Ok(()) => LinkIn::Transferring {
                        req,
                        call,
                        to: target,
                    },
                    Err(e) => LinkIn::TransferFailed {
                        req,
                        call,
                        message: e.to_string(),
                    },
                }
            }
            other => {
                let _ = match other {
                    LinkOut::Hangup { call } => client.hangup(call).await,
                    LinkOut::Reject { call } => client.reject(call).await,
                    LinkOut::Busy { call } => client.busy(call).await,
                    _ => Ok(()),
                };
                return;
            }
        };
        let mut st = t2.lock();
        let given_up = cancellable.is_some_and(|req| st.requests.remove(&req).is_none());
        let answered = match &back {
            LinkIn::Answered { call, .. } => Some(*call),
            _ => None,
        };
        if !given_up {
            st.station.phone.handle_link(Instant::now(), back);
        }
        // Answered for a call that is over here: end it there too.
        if let Some(call) =
            answered.filter(|&c| st.station.phone.call().and_then(|x| x.id) != Some(c))
        {
            tokio::spawn(async move {
                let _ = client.hangup(call).await;
            });
        }
        drive(&t2, &mut st);
    });
    if let Some(req) = cancellable {
        st.requests.insert(req, task);
    }
}

/// Call `number` through the directory (following redirects) for the
/// core's dial `req`, reporting its progress; how it went.
/// Look `typed` up (claim 3), once it is a number.
async fn lookup(client: &DirClient, typed: &str) -> Result<Found, ClientError> {
    client.lookup(&parse_number(typed)?).await
}

/// Hand call `call` on to `typed` (claim 5), once it is a number.
async fn transfer(client: &DirClient, call: CallId, typed: &str) -> Result<(), ClientError> {
    client.transfer(call, &parse_number(typed)?, None).await
}

async fn outgoing(
    t: &Arc<Terminal>,
    client: &DirClient,
    req: Req,
    number: &str,
    handoff: Option<u64>,
) -> LinkIn<MediaPlan> {
    // What was dialled becomes a number for the directory here.
    let dialled = match parse_number(number) {
        Ok(n) => n,
        Err(e) => {
            let (message, ended) = call_failure(number, &CallError::Client(e));
            return LinkIn::Failed {
                req,
                message,
                ended: ended.into(),
            };
        }
    };
    let (ptx, mut prx) = mpsc::channel(8);
    let opts = CallOptions {
        progress: Some(ptx),
        handoff,
        ..CallOptions::default()
    };
    // The calls that rang for this dial (a redirect makes another).
    let rang = Mutex::new(Vec::new());
    let progress = |p: Progress| {
        let link = match p {
            Progress::Ringing {
                call,
                number,
                via,
                checks,
            } => {
                if let Some(c) = &checks {
                    start_checks(t, call, c, CALLER_CHECK_DELAY);
                }
                rang.lock().unwrap_or_else(|p| p.into_inner()).push(call);
                LinkIn::Ringing {
                    req,
                    call,
                    callee: number,
                    via,
                }
            }
            Progress::Redirected { from, to } => LinkIn::Redirected { req, from, to },
        };
        let mut st = t.lock();
        st.station.phone.handle_link(Instant::now(), link);
        drive(t, &mut st);
    };
    let fut = client.call(&dialled, opts);
    tokio::pin!(fut);
    let result = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(p) = prx.recv() => progress(p),
        }
    };
    // Progress that came with the final answer.
    while let Ok(p) = prx.try_recv() {
        progress(p);
    }
    // Only an answered call's checks still matter (to its media).
    let answered = result.as_ref().ok().map(|c| c.call);
    for call in rang.into_inner().unwrap_or_else(|p| p.into_inner()) {
        if Some(call) != answered {
            t.checker.stop(call);
        }
    }
    match result {
        Ok(c) => LinkIn::Answered {
            req: Some(req),
            call: c.call,
            relayed: c.plan.relay.is_some(),
            plan: c.plan,
            peer: Some(c.number),
        },
        Err(e) => {
            let (message, ended) = call_failure(number, &e);
            LinkIn::Failed {
                req,
                message,
                ended: ended.into(),
            }
        }
    }
}

// ---- media ----

/// Make the media connection of call `key` as `plan` says: dial it, or
/// wait for the other end's (opening our NAT towards it).
fn start_media(t: &Arc<Terminal>, st: &mut State, key: CallKey, call: CallId, mut plan: MediaPlan) {
    // What the checks found while it rang: the addresses the other end's
    // checks came from join the candidates (all are dialled at once).
    let checked = (call != 0).then(|| t.checker.report(call)).flatten();
    if let Some(r) = &checked {
        for a in r.preferred() {
            if !plan.peer_candidates.contains(&a) {
                plan.peer_candidates.push(a);
            }
        }
        let nothing = r.validated.is_empty() && r.learnt.is_empty();
        if plan.relay.is_none() && plan.policy == DirectPolicy::DirectThenRelay && nothing {
            // No check answered yet: the direct attempt gets only until
            // the checks (which go on meanwhile) would have had an answer,
            // not the whole fallback delay, before the relay is asked for.
            let left = HOPELESS_AFTER
                .saturating_sub(r.running)
                .max(HOPELESS_DIRECT_TRY);
            tracing::info!(
                "call {call}: no check answered in {:?}; trying direct for {left:?}, then the relay",
                r.running
            );
            plan.fallback_after = plan.fallback_after.min(left);
        }
    }
    if !plan.dial {
        // The other end's packets come next, end to end or from the
        // relay: open our NAT to them.
        t.puncher.punch(match (plan.relay, plan.policy) {
            (Some(relay), _) => vec![relay],
            (None, DirectPolicy::Relay) if call != 0 => Vec::new(),
            (None, _) => plan.peer_candidates.clone(),
        });
        t.expect.send_replace(Some((key, call, plan)));
        return;
    }
    let Some(client) = st.client.clone() else {
        st.station.phone.handle_media(
            Instant::now(),
            MediaIn::Failed {
                key,
                why: "not connected to the directory".into(),
                ended: None,
            },
        );
        return;
    };
    let t2 = t.clone();
    let task = tokio::spawn(async move {
        let res = client
            .dial_media(&t2.endpoint, &t2.id, &plan, Some(&t2.checker))
            .await
            .map(|l| {
                let path = media_path(&t2, call, &plan, l.remote, l.relayed);
                (l.conn, path)
            })
            .map_err(|e| e.to_string());
        let res = res.map_err(|why| {
            // A look-up's callee says why it closed our connection.
            let ended = (call == 0).then(|| lookup_refusal(&why)).flatten();
            (why, ended)
        });
        media_result(&t2, key, call, res);
    });
    if let Some(old) = st.attempts.insert(key, task) {
        old.abort();
    }
}

/// How a call's media reached the other end, for the log, `status` and
/// the call record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaPath {
    relayed: bool,
    remote: SocketAddr,
    /// Which kind of candidate `remote` was (for a direct path), or why
    /// the call is relayed.
    kind: &'static str,
}

impl MediaPath {
    fn describe(&self) -> String {
        if self.relayed {
            format!(
                "through the directory's relay {} ({})",
                self.remote, self.kind
            )
        } else {
            format!("end to end with {} ({})", self.remote, self.kind)
        }
    }
}

/// Classify the path to `remote` for call `call` under `plan`: the relay,
/// or a direct path to one of the other end's own addresses (host), the
/// address the directory saw it at (reflexive, the last candidate), or
/// one its checks came from (learnt: its router gave it a new port).
fn media_path(
    t: &Terminal,
    call: CallId,
    plan: &MediaPlan,
    remote: SocketAddr,
    relayed: bool,
) -> MediaPath {
    let learnt = (call != 0)
        .then(|| t.checker.report(call))
        .flatten()
        .map(|r| r.learnt)
        .unwrap_or_default();
    // The directory's candidates: the other end's own, then the one it
    // saw (the learnt ones were appended after them).
    let offered: Vec<SocketAddr> = plan
        .peer_candidates
        .iter()
        .copied()
        .filter(|a| !learnt.contains(a))
        .collect();
    let kind = if relayed {
        if plan.policy == DirectPolicy::Relay {
            "the directory relays every call"
        } else {
            "no direct path answered"
        }
    } else if !offered.contains(&remote) {
        "learnt"
    } else if offered.last() == Some(&remote) && offered.len() > 1 {
        "reflexive"
    } else {
        "host"
    };
    MediaPath {
        relayed,
        remote,
        kind,
    }
}

/// Start checking the direct path of ringing call `call` (see
/// `keyline_net::checks`), the first round after `delay`.
fn start_checks(t: &Terminal, call: CallId, c: &RingChecks, delay: Duration) {
    if let Err(e) = t.checker.start(call, &c.key, &c.candidates, delay) {
        tracing::warn!("call {call}: cannot check the direct path: {e:?}");
    }
}

/// How a look-up-only call the callee closed unanswered ended, from the
/// reason it gave.
fn lookup_refusal(why: &str) -> Option<String> {
    let ended = if why.contains("declined") {
        "rejected"
    } else if why.contains("busy") {
        "busy"
    } else if why.contains("no answer") || why.contains("did not answer") {
        "no-answer"
    } else {
        return None;
    };
    Some(ended.into())
}

/// The media connection of call `key` is made (or not): start its session
/// (or keep it as a spare) and tell the core.
fn media_result(
    t: &Arc<Terminal>,
    key: CallKey,
    flow: CallId,
    res: std::result::Result<(quinn::Connection, MediaPath), (String, Option<String>)>,
) {
    let mut st = t.lock();
    match res {
        Ok((conn, _)) if st.station.session_conn(key).is_some() => {
            st.spare.push((key, conn.clone()));
            watch_media(t, key, flow, conn);
        }
        Ok((conn, path)) => {
            st.attempts.remove(&key);
            t.checker.stop(flow);
            println!("call {flow}: media {}", path.describe());
            st.station.set_path(key, path.describe());
            install(t, &mut st, key, flow, conn, path.relayed);
        }
        Err((why, ended)) => {
            st.attempts.remove(&key);
            tracing::warn!("call {flow}: media failed: {why}");
            if ended.is_none() {
                println!("call {flow}: no media connection: {why}");
            }
            st.station
                .phone
                .handle_media(Instant::now(), MediaIn::Failed { key, why, ended });
        }
    }
    drive(t, &mut st);
}

/// Start call `key`'s session on `conn` and watch the connection.
fn install(
    t: &Arc<Terminal>,
    st: &mut State,
    key: CallKey,
    flow: CallId,
    conn: quinn::Connection,
    relayed: bool,
) {
    st.station
        .install(&t.audio, key, flow, conn.clone(), relayed);
    if st
        .station
        .session_conn(key)
        .is_some_and(|c| c.stable_id() == conn.stable_id())
    {
        t.expect
            .send_if_modified(|e| e.take_if(|(k, _, _)| *k == key).is_some());
        watch_media(t, key, flow, conn);
    }
}

/// When a media connection closes: the call goes on on a spare one, or
/// ends (the other end hung up or vanished).
fn watch_media(t: &Arc<Terminal>, key: CallKey, flow: CallId, conn: quinn::Connection) {
    let t = t.clone();
    tokio::spawn(async move {
        let why = conn.closed().await;
        let mut st = t.lock();
        st.spare.retain(|(_, c)| c.stable_id() != conn.stable_id());
        let ours = st
            .station
            .session_conn(key)
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        if !ours {
            return;
        }
        while let Some(i) = st.spare.iter().position(|(k, _)| *k == key) {
            let (_, spare) = st.spare.remove(i);
            if spare.close_reason().is_none() {
                tracing::info!("call {flow}: media continues on another connection");
                install(&t, &mut st, key, flow, spare, false);
                drive(&t, &mut st);
                return;
            }
        }
        println!("call {flow} ended: the media connection closed ({why})");
        let by_peer = matches!(why, quinn::ConnectionError::ApplicationClosed(_));
        st.station
            .phone
            .handle_media(Instant::now(), MediaIn::Closed { key, by_peer });
        drive(&t, &mut st);
    });
}

/// Whether a connection from `fp` is a look-up-only caller we refused as
/// busy; closes it so if it is.
fn refuse_if_busy(t: &Terminal, fp: &str, conn: &quinn::Connection) -> bool {
    let busy = t
        .lock()
        .busy_for
        .iter()
        .any(|(f, at)| f == fp && at.elapsed() < LOOKUP_BUSY_MEMORY);
    if busy {
        conn.close(quinn::VarInt::from_u32(4), LOOKUP_BUSY);
    }
    busy
}

/// The user answered the ringing look-up-only call `key`: answer
/// `MediaHello` on its held connections (one that comes later is accepted
/// as it comes).
fn accept_lookup(t: &Arc<Terminal>, st: &mut State, key: CallKey) {
    let Some(plan) = st.station.phone.lookup_plan().cloned() else {
        return;
    };
    for (_, conn) in st.held.iter().filter(|(k, _)| *k == key) {
        let (t, plan, conn) = (t.clone(), plan.clone(), conn.clone());
        tokio::spawn(async move {
            let remote = conn.remote_address();
            match accept_media(conn, &plan).await {
                Ok(conn) => {
                    let path = media_path(&t, 0, &plan, remote, false);
                    media_result(&t, key, 0, Ok((conn, path)))
                }
                Err(e) => tracing::info!("look-up media connection from {remote} failed: {e}"),
            }
        });
    }
    st.held.retain(|(k, _)| *k != key);
}

/// A verified look-up caller's connection while our end still rings: keep
/// it without answering `MediaHello`; the call ends if the caller gives up
/// (closes it). `false`: the call is answered already (accept it now).
fn hold_lookup_connection(t: &Arc<Terminal>, key: CallKey, conn: &quinn::Connection) -> bool {
    let mut st = t.lock();
    let ringing = move |st: &State| {
        st.station
            .phone
            .call()
            .is_some_and(|c| c.key == key && c.lookup && c.state == CallState::Alerting)
    };
    if !ringing(&st) {
        return false;
    }
    st.held.push((key, conn.clone()));
    let (t, conn) = (t.clone(), conn.clone());
    tokio::spawn(async move {
        let why = conn.closed().await;
        let mut st = t.lock();
        st.held.retain(|(_, c)| c.stable_id() != conn.stable_id());
        if ringing(&st) && !st.held.iter().any(|(k, _)| *k == key) {
            println!("the caller gave up the look-up-only call ({why})");
            st.station
                .phone
                .handle_media(Instant::now(), MediaIn::Closed { key, by_peer: true });
            drive(&t, &mut st);
        }
    });
    true
}

/// Accepting end: media connections whose peer and credential match the
/// call we expect; anything else is refused.
async fn accept_loop(t: Arc<Terminal>) {
    while let Some(incoming) = t.endpoint.accept().await {
        let t = t.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("incoming connection failed: {e}");
                    return;
                }
            };
            let remote = conn.remote_address();
            let Some(fp) = peer_fingerprint(&conn) else {
                conn.close(quinn::VarInt::from_u32(1), b"no certificate");
                return;
            };
            if refuse_if_busy(&t, &fp, &conn) {
                tracing::info!("refused a look-up-only call from {remote}: busy");
                return;
            }
            // The caller may be quicker than the directory's word to us.
            let mut rx = t.expect.subscribe();
            let expected = tokio::time::timeout(
                Duration::from_secs(5),
                rx.wait_for(|p| p.as_ref().is_some_and(|(_, _, m)| m.peer_fp == fp)),
            )
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|p| p.clone()));
            let Some((key, flow, plan)) = expected else {
                if refuse_if_busy(&t, &fp, &conn) {
                    return;
                }
                tracing::info!("refused a connection from {remote}: no call expects it");
                conn.close(quinn::VarInt::from_u32(1), b"no call expects you");
                return;
            };
            if plan.call == 0 && hold_lookup_connection(&t, key, &conn) {
                return;
            }
            match accept_media(conn, &plan).await {
                Ok(conn) => {
                    let path = media_path(&t, flow, &plan, remote, plan.relay.is_some());
                    media_result(&t, key, flow, Ok((conn, path)))
                }
                Err(e) => tracing::info!("refused a media connection from {remote}: {e}"),
            }
        });
    }
}

// ---- control ----

/// Give the phone core a command and wait for its answer. Calls and
/// hand-offs need the directory: refused at once without it.
async fn command(t: &Arc<Terminal>, cmd: Command) -> Value {
    let rx = {
        let mut st = t.lock();
        if matches!(cmd, Command::Dial { .. } | Command::Transfer { .. }) && st.client.is_none() {
            return control::error(match &st.link.error {
                Some(e) => format!("not connected to the directory ({e})"),
                None => "not connected to the directory yet".to_string(),
            });
        }
        if matches!(cmd, Command::Dial { .. }) && st.station.phone.call().is_none() {
            st.stop_playback();
        }
        let rx = st.station.command(cmd);
        drive(t, &mut st);
        rx
    };
    station::reply(rx).await
}

fn status(t: &Arc<Terminal>) -> Value {
    let st = t.lock();
    let l = &st.link;
    json!({
        "ok": true,
        "api_version": api::API_VERSION,
        "mode": "terminal",
        "state": l.state,
        "error": l.error,
        "directory": l.directory.map(|a| a.to_string()),
        "directory_name": t.opts.directory,
        "account": t.opts.account,
        "numbers": l.numbers,
        "observed": l.observed.map(|a| a.to_string()),
        "candidates": l.candidates.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "ttl_secs": l.ttl.map(|d| d.as_secs()),
        "registered_secs": l.registered_at.map(|i| i.elapsed().as_secs_f64()),
        "registrations": l.registrations,
        "fingerprint": t.id.fingerprint,
        "listen": t.endpoint.local_addr().ok().map(|a| a.to_string()),
        "call": st.station.phone.call().map(|c| st.station.call_json(c)),
        "last_call": st.station.last_call,
        "messages_waiting": st.unread,
        "mailbox": t.mailbox.dir().display().to_string(),
        "playing_voicemail": st.playback.as_ref().is_some_and(|p| !p.is_finished()),
        "audio": t.audio.current_json(),
    })
}

impl station::Host for Terminal {
    type Plan = MediaPlan;

    fn audio(&self) -> &LocalAudio {
        &self.audio
    }

    fn with_station<R>(&self, f: impl FnOnce(&mut Station<MediaPlan>) -> R) -> R {
        f(&mut self.lock().station)
    }

    fn record_dir(&self) -> Option<&Path> {
        self.opts.endpoint.record_dir.as_deref()
    }

    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    async fn own_request(self: Arc<Self>, req: Request) -> Value {
        own_request(&self, req).await
    }

    fn tick(self: Arc<Self>) -> Option<Instant> {
        let mut st = self.lock();
        if st.station.handle_due() {
            drive(&self, &mut st);
        }
        st.station.phone.poll_timeout()
    }
}

/// The control requests this mode answers itself.
async fn own_request(t: &Arc<Terminal>, req: Request) -> Value {
    match req {
        Request::Status => status(t),
        Request::Message { .. }
        | Request::Messages
        | Request::VoicemailList
        | Request::VoicemailPlay { .. }
        | Request::VoicemailDelete { .. } => mail::control(t, req).await,
        Request::ForwardSet { .. } | Request::ForwardOff { .. } | Request::ForwardList => {
            forward::control(t, &req).await
        }
        Request::Passwd { old, new } => account::passwd(t, old, new).await,
        Request::Account => account::info(t).await,
        // The calls' commands are the core's (`transfer` is a blind
        // hand-off through the directory, claim 5: the other end calls the
        // target directly, and our call ends).
        other => match other.call_command() {
            Some(cmd) => command(t, cmd).await,
            None => control::error(format!(
                "{:?} is for office stations; this is an internet terminal",
                other.name()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_callee_gets_a_clear_message() {
        let e = CallError::Failed {
            number: "1002".into(),
            code: ErrorCode::Unreachable,
            message: "1002 is not registered (its endpoint is offline); you may leave a voice mail or text".into(),
            mail: true,
        };
        let (m, ended) = call_failure("1002", &e);
        assert_eq!(ended, "offline");
        assert!(
            m.contains("offline") && m.contains("keyline-agent message 1002"),
            "{m}"
        );
    }

    #[test]
    fn a_lookup_callee_closing_says_how_the_call_ended() {
        let why = |s: &str| lookup_refusal(s);
        assert_eq!(
            why("127.0.0.1:9: closed by peer: 2: declined").as_deref(),
            Some("rejected")
        );
        assert_eq!(why("closed by peer: 4: busy").as_deref(), Some("busy"));
        assert_eq!(
            why("1.2.3.4:5 did not answer within 30s").as_deref(),
            Some("no-answer")
        );
        assert_eq!(why("timed out"), None);
    }
}
