//! `keyline-agent terminal`: the agent as a standalone internet terminal
//! (the patent's client program). No office gateway and no mDNS: it logs
//! in to a `keyline-directory`, registers its number(s) there with its own
//! addresses, reconnects with backoff when the directory goes away, and
//! places and takes calls through it. The media of an answered call is a
//! QUIC connection between the two ends, made as the directory's client
//! library makes it (`dial_media` on the calling end, `accept_media` in
//! this terminal's accept loop on the answering end), carried by the same
//! media session as an office call ([`crate::session`]).
//!
//! The control socket takes the office commands that make sense here:
//! `status`, `dial`, `answer`, `hangup`, `record`, `hold`/`resume` (local:
//! the other end hears the music), `message` (a text left with the
//! directory), `messages` (texts and voice mail delivered by the
//! directory, kept on disk), `voicemail list|play`.
//!
//! Look-up-only calls (claim 3): `dial --lookup` only asks the directory
//! where the callee is (`DirClient::lookup`) and connects its media
//! straight there; the callee's endpoint, told by the directory to expect
//! us (`Event::Expect`), rings itself and holds our connection without
//! answering `MediaHello` until its user answers. Such a call has no
//! directory call id: hanging up is closing the media connection.

mod mailbox;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_directory::client::{
    accept_media, CallError, CallOptions, ClientError, DirClient, Event, IncomingCall, Mail,
    MediaPlan, Options, Progress,
};
use keyline_media::FRAME_SAMPLES;
use keyline_net::lifecycle::{self, Signals};
use keyline_net::{control, peer_fingerprint, Identity, Puncher};
use keyline_proto::dir::{CallId, DirectPolicy, EndReason, ErrorCode, MailKind};
use keyline_proto::msg::Role;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::mailbox::Mailbox;
use crate::audio::{self, LocalAudio};
use crate::calls::{self, Direction};
use crate::session::{
    finish_recording, recording_error, recording_path, start_recording, Hold, RecordSlot, Session,
    SharedRecord,
};

/// Options of `keyline-agent terminal`.
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    pub state: Option<PathBuf>,
    pub directory: String,
    pub directory_fp: Option<String>,
    pub account: String,
    pub password_file: PathBuf,
    pub numbers: Vec<String>,
    pub audio_in: String,
    pub audio_out: String,
    pub auto_answer: Option<u64>,
    pub name: Option<String>,
    pub ringtone: Option<PathBuf>,
    pub bind: SocketAddr,
    pub record_dir: Option<PathBuf>,
    pub hold_music: Option<PathBuf>,
    pub mail_dir: Option<PathBuf>,
}

/// The longest wait between two attempts to reach the directory.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How often our own address is checked (a changed one is re-registered
/// at once).
const ADDRESS_CHECK: Duration = Duration::from_secs(5);
/// An answered call whose media is not up by then is given up.
const MEDIA_DEADLINE: Duration = Duration::from_secs(15);
/// An unanswered look-up-only call rings this long (the caller waits as
/// long: `keyline_directory::client::LOOKUP_RING_TIMEOUT`).
const LOOKUP_RING_TIMEOUT: Duration = keyline_directory::client::LOOKUP_RING_TIMEOUT;

/// The call in progress.
#[derive(Debug)]
struct Call {
    /// Local identity of this call attempt (the directory's id comes later
    /// for an outgoing call).
    seq: u64,
    id: Option<CallId>,
    peer: String,
    direction: Direction,
    state: &'static str,
    /// Our number that rang (incoming calls).
    number: Option<String>,
    /// Server-side forwards the call went through.
    via: Vec<String>,
    /// Numbers an outgoing call was redirected from.
    redirected_from: Vec<String>,
    started: Instant,
    ringing_at: Option<Instant>,
    answered_at: Option<Instant>,
    connected_at: Option<Instant>,
    media_started_unix_ms: Option<u128>,
    relayed: bool,
    /// Dropping it cancels the outgoing call's task (and so the call).
    cancel: Option<oneshot::Sender<()>>,
    /// A look-up-only call (claim 3): no directory call id.
    lookup: bool,
    /// For an incoming look-up-only call: the plan the caller connects with.
    plan: Option<MediaPlan>,
}

impl Call {
    fn new(seq: u64, id: Option<CallId>, peer: String, direction: Direction) -> Call {
        Call {
            seq,
            id,
            peer,
            direction,
            state: direction.initial_state(),
            number: None,
            via: Vec::new(),
            redirected_from: Vec::new(),
            started: Instant::now(),
            ringing_at: None,
            answered_at: None,
            connected_at: None,
            media_started_unix_ms: None,
            relayed: false,
            cancel: None,
            lookup: false,
            plan: None,
        }
    }

    fn timing(&self) -> Value {
        calls::timing(
            self.started,
            self.ringing_at,
            self.answered_at,
            self.connected_at,
            self.media_started_unix_ms,
        )
    }
}

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
    call: Option<Call>,
    last_call: Option<Value>,
    next_seq: u64,
    session: Option<Session>,
    /// Further verified media connections of the current call (a caller
    /// trying several of our addresses at once keeps one and closes the
    /// others); used if the session's own connection closes.
    spare: Vec<quinn::Connection>,
    /// Media connections of a ringing look-up-only call, held unanswered
    /// (no `MediaOk`) until our user answers.
    held: Vec<quinn::Connection>,
    ringer: Option<JoinHandle<()>>,
    auto_answer: Option<JoinHandle<()>>,
    media_timer: Option<JoinHandle<()>>,
    playback: Option<JoinHandle<()>>,
    record: SharedRecord,
    hold: Arc<Hold>,
    unread: usize,
    /// Look-up-only callers told to expect us while we were in a call, by
    /// certificate fingerprint: their connections are refused as busy.
    busy_for: Vec<(String, Instant)>,
}

struct Terminal {
    id: Identity,
    endpoint: quinn::Endpoint,
    /// Sends from the endpoint's port to open our NAT for a caller.
    puncher: Puncher,
    state_dir: PathBuf,
    opts: TerminalOptions,
    password: String,
    numbers: Vec<String>,
    mailbox: Mailbox,
    st: Mutex<State>,
    /// The media plan of the call we expect the caller to connect for.
    expect: watch::Sender<Option<(u64, MediaPlan)>>,
    audio: LocalAudio,
}

impl Terminal {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin_path(&self) -> PathBuf {
        self.state_dir.join("directory.fp")
    }
}

/// Read the password: the file's first line.
fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        bail!(
            "the password file {} is empty (its first line is the password)",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "keyline-agent: warning: the password file {} can be read by other users (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    Ok(pw)
}

/// A fingerprint as given by a person: hex, any case, colons allowed.
fn parse_fingerprint(fp: &str) -> Result<String> {
    let clean: String = fp
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_lowercase();
    if clean.len() != 64 || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "--directory-fp {fp:?} is not a certificate fingerprint (64 hex digits, as `keyline-directory status` shows)"
        );
    }
    Ok(clean)
}

/// Run the terminal until SIGTERM or SIGINT.
pub async fn run(opts: TerminalOptions) -> Result<()> {
    let mut signals = Signals::new().context("installing signal handlers")?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "agent")?;
    let password = read_password(&opts.password_file)?;
    let numbers = opts
        .numbers
        .iter()
        .map(|n| {
            keyline_proto::number::canonicalize(n)
                .map_err(|e| anyhow::anyhow!("--number {n:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut opts = opts;
    opts.directory_fp = opts
        .directory_fp
        .as_deref()
        .map(parse_fingerprint)
        .transpose()?;
    let id = Identity::load_or_create(&state_dir, "keyline-agent")?;
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let (endpoint, puncher) = keyline_net::make_endpoint_with_puncher(opts.bind, &id)?;
    let audio = LocalAudio::open(&opts.audio_in, &opts.audio_out, opts.ringtone.as_deref())?;
    let hold_music = audio::load_samples(
        opts.hold_music.as_deref(),
        "hold music",
        keyline_media::hold_music,
    )?;
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
    let (expect, _) = watch::channel(None);
    let t = Arc::new(Terminal {
        id,
        endpoint,
        puncher,
        state_dir: state_dir.clone(),
        opts,
        password,
        numbers,
        mailbox,
        st: Mutex::new(State {
            link: Link {
                state: "connecting",
                ..Link::default()
            },
            client: None,
            call: None,
            last_call: None,
            next_seq: 0,
            session: None,
            spare: Vec::new(),
            held: Vec::new(),
            ringer: None,
            auto_answer: None,
            media_timer: None,
            playback: None,
            record: Arc::new(Mutex::new(RecordSlot::default())),
            hold: Arc::new(Hold::new(hold_music)),
            unread,
            busy_for: Vec::new(),
        }),
        expect,
        audio,
    });

    {
        let t = t.clone();
        tokio::spawn(control::serve(ctl, move |req| {
            let t = t.clone();
            async move { handle_control(&t, req).await }
        }));
    }
    tokio::spawn(accept_loop(t.clone()));
    let link = tokio::spawn(link_loop(t.clone()));
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
    let (client, call) = {
        let mut st = t.lock();
        let call = st.call.as_ref().and_then(|c| c.id);
        let client = st.client.take();
        end_call(&t, &mut st, "shutdown");
        (client, call)
    };
    if let Some(client) = client {
        if let Some(call) = call {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.hangup(call)).await;
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

/// Why a directory session ended.
enum Outcome {
    /// It was registered, then the connection went away.
    Lost(String),
    /// It never got registered.
    Failed {
        message: String,
        retry_after: Option<Duration>,
    },
}

fn failed(message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        message: message.into(),
        retry_after: None,
    }
}

/// Connect, log in, register, serve; again with backoff when it ends.
async fn link_loop(t: Arc<Terminal>) {
    let mut backoff = Duration::from_millis(250);
    let mut token: Option<String> = None;
    loop {
        let outcome = directory_session(&t, &mut token).await;
        let (message, wait) = match outcome {
            Outcome::Lost(m) => {
                backoff = Duration::from_millis(250);
                (m, None)
            }
            Outcome::Failed {
                message,
                retry_after,
            } => (message, retry_after),
        };
        tracing::warn!("directory: {message}");
        {
            let mut st = t.lock();
            st.client = None;
            st.link.state = "disconnected";
            st.link.error = Some(message);
            st.link.registered_at = None;
            // A call still being set up cannot go on without the
            // directory; a connected one can (its media is end to end).
            if st.call.as_ref().is_some_and(|c| c.connected_at.is_none()) {
                println!("the call is lost with the directory connection");
                end_call(&t, &mut st, "directory-lost");
            }
        }
        lifecycle::status("directory unreachable, retrying");
        let jitter = Duration::from_millis(rand::random::<u64>() % 250);
        let wait = wait.unwrap_or(backoff).max(backoff) + jitter;
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The UDP address we use to reach `to` (no packet is sent).
fn route_ip(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Our own candidate addresses: the endpoint's address when it is bound
/// to one, else the local address that faces the directory, with the
/// endpoint's port. The directory adds the address it observes.
fn own_candidates(t: &Terminal, client: &DirClient, dir: SocketAddr) -> Vec<SocketAddr> {
    let Ok(local) = t.endpoint.local_addr() else {
        return Vec::new();
    };
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    client
        .connection()
        .local_ip()
        .or_else(|| route_ip(dir))
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| vec![SocketAddr::new(ip, local.port())])
        .unwrap_or_default()
}

/// One connection to the directory, from connect until it ends.
async fn directory_session(t: &Arc<Terminal>, token: &mut Option<String>) -> Outcome {
    {
        let mut st = t.lock();
        st.link.state = "connecting";
    }
    let target = t.opts.directory.as_str();
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(target).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return failed(format!(
                "cannot resolve the directory address {target}: {e}"
            ))
        }
    };
    if addrs.is_empty() {
        return failed(format!("{target} resolves to no address"));
    }
    let pin = t.opts.directory_fp.clone().or_else(|| {
        std::fs::read_to_string(t.pin_path())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() == 64)
    });
    let opts = Options {
        role: Role::Terminal,
        name: t.opts.name.clone(),
        events: 256,
    };
    let mut last_err = String::new();
    let mut connected = None;
    for addr in addrs {
        t.lock().link.directory = Some(addr);
        match DirClient::connect_with(&t.endpoint, &t.id, addr, pin.clone(), opts.clone()).await {
            Ok(c) => {
                connected = Some((c, addr));
                break;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    let Some(((client, mut events), addr)) = connected else {
        let hint = if pin.is_some() {
            " (is it the directory whose fingerprint is pinned?)"
        } else {
            ""
        };
        return failed(format!("{last_err}{hint}"));
    };
    t.lock().link.state = "logging-in";

    // Log in: the session token of the last connection first (no password
    // hashing on the directory), else the password.
    let resumed = match token.as_deref() {
        Some(tok) => client.resume(tok).await.ok(),
        None => None,
    };
    let session = match resumed {
        Some(s) => s,
        None => match client.login(&t.opts.account, &t.password).await {
            Ok(s) => s,
            Err(ClientError::Refused {
                code: ErrorCode::RateLimited,
                retry_after,
                ..
            }) => {
                return Outcome::Failed {
                    message: format!(
                        "too many failed logins for account {}; the directory asks to wait",
                        t.opts.account
                    ),
                    retry_after,
                }
            }
            Err(e) if e.code() == Some(ErrorCode::BadCredentials) => {
                return failed(format!(
                    "the directory refused the login of account {}: wrong account or password (see --password-file)",
                    t.opts.account
                ))
            }
            Err(e) => return failed(format!("login failed: {e}")),
        },
    };
    *token = Some(session.token.clone());
    if pin.is_none() {
        if let Some(fp) = client.directory_fingerprint() {
            match std::fs::write(t.pin_path(), &fp) {
                Ok(()) => {
                    println!("trusting the directory at {addr} from now on: fingerprint {fp}")
                }
                Err(e) => tracing::warn!("could not pin the directory's fingerprint: {e}"),
            }
        }
    }

    let own = own_candidates(t, &client, addr);
    let wanted: Vec<&str> = t.numbers.iter().map(String::as_str).collect();
    let reg = match client.register(&wanted, own.clone()).await {
        Ok(r) => r,
        Err(e) => return failed(format!("registration refused: {e}")),
    };
    println!(
        "registered {} with the directory at {addr} (reachable at {})",
        reg.numbers.join(", "),
        reg.candidates
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    lifecycle::status(&format!("registered {}", reg.numbers.join(", ")));
    {
        let mut st = t.lock();
        st.client = Some(client.clone());
        st.link = Link {
            state: "registered",
            error: None,
            directory: Some(addr),
            numbers: reg.numbers.clone(),
            observed: Some(reg.observed),
            candidates: reg.candidates.clone(),
            ttl: Some(reg.ttl),
            registered_at: Some(Instant::now()),
            registrations: st.link.registrations + 1,
        };
        if session.numbers.iter().all(|n| !reg.numbers.contains(n)) {
            st.link.error = Some("none of the account's numbers is registered".into());
        }
    }

    let mut own = own;
    let mut check = tokio::time::interval(ADDRESS_CHECK);
    check.tick().await;
    let reason = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break "the directory connection is closed".to_string(),
                Some(Event::Disconnected { reason }) => break reason,
                Some(Event::GoingAway { message }) => break format!("the directory is going away: {message}"),
                Some(ev) => on_event(t, &client, ev),
            },
            _ = check.tick() => {
                let now = own_candidates(t, &client, addr);
                if now != own && !now.is_empty() {
                    println!("our address changed to {}; registering it", now.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
                    client.set_candidates(now.clone());
                    own = now;
                    let c = client.clone();
                    let t2 = t.clone();
                    tokio::spawn(async move {
                        if let Ok(r) = c.refresh().await {
                            t2.lock().link.candidates = r.candidates;
                        }
                    });
                }
            }
        }
    };
    client.close();
    Outcome::Lost(reason)
}

fn on_event(t: &Arc<Terminal>, client: &DirClient, ev: Event) {
    match ev {
        Event::Ring(r) => on_ring(t, client, r),
        Event::Ended { call, reason } => {
            let mut st = t.lock();
            if st.call.as_ref().is_some_and(|c| c.id == Some(call)) {
                println!("call {call} ended: {}", reason.describe());
                end_call(t, &mut st, end_reason(reason));
            }
        }
        Event::Transferred {
            call,
            number,
            by,
            handoff,
        } => {
            // The other end handed us on (claim 5): we call `number`
            // ourselves, directly.
            let ours = {
                let mut st = t.lock();
                let ours = st.call.as_ref().is_some_and(|c| c.id == Some(call));
                if ours {
                    println!("{by} handed call {call} on to {number}; calling {number}");
                    end_call(t, &mut st, "transferred");
                }
                ours
            };
            if ours {
                let t = t.clone();
                tokio::spawn(async move {
                    let r = dial(&t, &number, handoff).await;
                    if r.get("ok") != Some(&Value::Bool(true)) {
                        tracing::warn!("calling {number} after the hand-off: {r}");
                    }
                });
            }
        }
        Event::Relay { call, relay } => {
            let mut st = t.lock();
            if let Some(c) = st.call.as_mut().filter(|c| c.id == Some(call)) {
                tracing::info!("call {call}: media through the directory's relay {relay}");
                c.relayed = true;
                t.puncher.punch(vec![relay]);
            }
        }
        Event::Mail(m) => {
            let t = t.clone();
            let client = client.clone();
            tokio::spawn(async move { store_mail(t, client, m).await });
        }
        Event::AddressChanged { observed } => {
            println!("the directory now sees us at {observed}; registration refreshed");
            let mut st = t.lock();
            st.link.observed = Some(observed);
        }
        Event::Unbound { numbers, reason } => {
            println!("no longer registered: {} ({reason})", numbers.join(", "));
            let mut st = t.lock();
            st.link.numbers.retain(|n| !numbers.contains(n));
            if st.link.numbers.is_empty() {
                st.link.error = Some(format!("{} unbound: {reason}", numbers.join(", ")));
            }
        }
        Event::Expect {
            from,
            number,
            ext,
            plan,
        } => on_expect(t, from, number, ext, plan),
        Event::Error { code, message } => tracing::warn!("directory error {code:?}: {message}"),
        Event::Disconnected { .. } | Event::GoingAway { .. } => {}
    }
}

/// Save a delivered message to disk, then let the directory delete it.
async fn store_mail(t: Arc<Terminal>, client: DirClient, m: Mail) {
    let mb = t.mailbox.clone();
    let id = m.id;
    let saved = tokio::task::spawn_blocking(move || {
        let s = mb.save(&m)?;
        let unread = mb.list()?.iter().filter(|m| !m.read).count();
        Ok::<_, anyhow::Error>((s, unread))
    })
    .await;
    match saved {
        Ok(Ok((s, unread))) => {
            match s.kind.as_str() {
                "text" => println!(
                    "message from {}: {}",
                    s.from,
                    s.body.as_deref().unwrap_or("")
                ),
                _ => println!("voice mail from {} ({})", s.from, s.file.display()),
            }
            t.lock().unread = unread;
            if let Err(e) = client.ack_mail(id).await {
                // Redelivered next time; the mailbox recognises it.
                tracing::warn!("could not acknowledge message {id}: {e}");
            }
        }
        Ok(Err(e)) => tracing::warn!("message {id} not stored (the directory keeps it): {e:#}"),
        Err(e) => tracing::warn!("message {id} not stored: {e}"),
    }
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

fn on_ring(t: &Arc<Terminal>, client: &DirClient, r: IncomingCall) {
    let mut st = t.lock();
    if st.call.is_some() {
        println!("call {} from {} refused: busy", r.call, r.from);
        let c = client.clone();
        tokio::spawn(async move {
            let _ = c.busy(r.call).await;
        });
        return;
    }
    if let Some(p) = st.playback.take() {
        p.abort();
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
    st.next_seq += 1;
    let seq = st.next_seq;
    let mut c = Call::new(seq, Some(r.call), r.from, Direction::In);
    c.number = Some(r.number);
    c.via = r.via;
    st.call = Some(c);
    st.ringer = Some(t.audio.ring());
    if let Some(secs) = t.opts.auto_answer {
        let t2 = t.clone();
        st.auto_answer = Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let _ = answer(&t2, true).await;
        }));
    }
}

/// Answer the ringing call. `auto`: called by the auto-answer timer (which
/// must not abort itself).
async fn answer(t: &Arc<Terminal>, auto: bool) -> Value {
    let (client, call, seq) = {
        let mut st = t.lock();
        let Some(c) = st.call.as_mut() else {
            return control::error("no call is ringing");
        };
        if c.direction != Direction::In || c.state != "alerting" {
            return control::error("no call is ringing");
        }
        if c.lookup {
            return answer_lookup(t, &mut st, auto);
        }
        let (Some(call), seq) = (c.id, c.seq) else {
            return control::error("no call is ringing");
        };
        let Some(client) = st.client.clone() else {
            return control::error("not connected to the directory");
        };
        if let Some(c) = st.call.as_mut() {
            c.state = "answering";
        }
        if let Some(a) = st.auto_answer.take() {
            if !auto {
                a.abort();
            }
        }
        (client, call, seq)
    };
    let res = client.answer(call).await;
    let mut st = t.lock();
    let current = st.call.as_ref().is_some_and(|c| c.seq == seq);
    match res {
        Ok(plan) if current => {
            if let Some(r) = st.ringer.take() {
                r.abort();
            }
            if let Some(c) = st.call.as_mut() {
                c.state = "connecting";
                c.answered_at = Some(Instant::now());
                c.relayed = plan.relay.is_some();
            }
            arm_media_deadline(t, &mut st, seq, call);
            // The caller's packets come next, end to end or from the
            // relay: open our NAT to them.
            t.puncher.punch(match (plan.relay, plan.policy) {
                (Some(relay), _) => vec![relay],
                (None, DirectPolicy::Relay) => Vec::new(),
                (None, _) => plan.peer_candidates.clone(),
            });
            if plan.dial {
                let t2 = t.clone();
                tokio::spawn(async move {
                    let link = client.dial_media(&t2.endpoint, &t2.id, &plan).await;
                    install_session(
                        &t2,
                        seq,
                        call,
                        link.map(|l| (l.conn, l.relayed))
                            .map_err(|e| anyhow::anyhow!("{e}")),
                    );
                });
            } else {
                t.expect.send_replace(Some((seq, plan)));
            }
            json!({"ok": true, "call": call})
        }
        Ok(_) => control::error("the call ended before it was answered"),
        Err(e) => {
            if current {
                end_call(t, &mut st, "answer-failed");
            }
            control::error(format!("cannot answer: {e}"))
        }
    }
}

/// Give up an answered call whose media is not up in time.
fn arm_media_deadline(t: &Arc<Terminal>, st: &mut State, seq: u64, call: CallId) {
    let t2 = t.clone();
    if let Some(old) = st.media_timer.replace(tokio::spawn(async move {
        tokio::time::sleep(MEDIA_DEADLINE).await;
        let mut st = t2.lock();
        if st
            .call
            .as_ref()
            .is_some_and(|c| c.seq == seq && c.connected_at.is_none())
        {
            st.media_timer = None;
            fail_media(
                &t2,
                &mut st,
                call,
                &format!("no media connection within {MEDIA_DEADLINE:?}"),
            );
        }
    })) {
        old.abort();
    }
}

/// Place a call through the directory; replies once it rings (or fails).
/// Start an outgoing call to `number` as our call in progress: the
/// directory client to place it with and the call's sequence number, or
/// the reply that says why not.
fn new_outgoing(st: &mut State, number: &str) -> std::result::Result<(DirClient, u64), Value> {
    if st.call.is_some() {
        return Err(control::error("already in a call; hang up first"));
    }
    let Some(client) = st.client.clone() else {
        return Err(control::error(match &st.link.error {
            Some(e) => format!("not connected to the directory ({e})"),
            None => "not connected to the directory yet".to_string(),
        }));
    };
    if let Some(p) = st.playback.take() {
        p.abort();
    }
    st.next_seq += 1;
    let seq = st.next_seq;
    st.call = Some(Call::new(seq, None, number.to_string(), Direction::Out));
    Ok((client, seq))
}

/// Call `number`; `handoff` when the call follows a hand-off (see
/// [`CallOptions::handoff`]).
async fn dial(t: &Arc<Terminal>, number: &str, handoff: Option<u64>) -> Value {
    let rx = {
        let mut st = t.lock();
        let (client, seq) = match new_outgoing(&mut st, number) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        if let Some(c) = st.call.as_mut() {
            c.cancel = Some(cancel_tx);
        }
        let t2 = t.clone();
        let number = number.to_string();
        tokio::spawn(async move {
            outgoing(t2, client, number, handoff, seq, reply_tx, cancel_rx).await;
        });
        reply_rx
    };
    match tokio::time::timeout(Duration::from_secs(20), rx).await {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err(e))) => control::error(format!("cannot call {number}: {e}")),
        Ok(Err(_)) => control::error(format!("the call to {number} was given up")),
        Err(_) => control::error("the directory did not answer the call request"),
    }
}

type DialReply = oneshot::Sender<std::result::Result<Value, String>>;

/// A clear sentence for a call that did not connect.
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

/// The outgoing call's task: call (following redirects), then connect
/// the media end to end.
async fn outgoing(
    t: Arc<Terminal>,
    client: DirClient,
    number: String,
    handoff: Option<u64>,
    seq: u64,
    reply: DialReply,
    mut cancel: oneshot::Receiver<()>,
) {
    let (ptx, mut prx) = mpsc::channel(8);
    let opts = CallOptions {
        progress: Some(ptx),
        handoff,
        ..CallOptions::default()
    };
    let mut reply = Some(reply);
    let result = {
        let fut = client.call(&number, opts);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => break Some(r),
                // Hung up (or shut down) while dialling or ringing:
                // dropping the call future cancels the call.
                _ = &mut cancel => break None,
                Some(p) = prx.recv() => on_progress(&t, seq, p, &mut reply),
            }
        }
    };
    let Some(result) = result else {
        if let Some(r) = reply.take() {
            let _ = r.send(Err("hung up".into()));
        }
        return;
    };
    // Progress that came with the final answer.
    while let Ok(p) = prx.try_recv() {
        on_progress(&t, seq, p, &mut reply);
    }
    let connected = match result {
        Ok(c) => c,
        Err(e) => {
            let (message, ended) = call_failure(&number, &e);
            let mut st = t.lock();
            if st.call.as_ref().is_some_and(|c| c.seq == seq) {
                end_call(&t, &mut st, ended);
            }
            match reply.take() {
                Some(r) => {
                    let _ = r.send(Err(message));
                }
                None => println!("the call to {number} did not connect: {message}"),
            }
            return;
        }
    };
    let call = connected.call;
    let current = t.lock().call.as_ref().is_some_and(|c| c.seq == seq);
    if !current {
        let _ = client.hangup(call).await;
        return;
    }
    {
        let mut st = t.lock();
        let Some(c) = st.call.as_mut().filter(|c| c.seq == seq) else {
            send_hangup(&st, call);
            return;
        };
        c.id = Some(call);
        c.peer = connected.number.clone();
        c.redirected_from = connected.redirected_from.clone();
        c.via = connected.via.clone();
        c.state = "connecting";
        c.answered_at = Some(Instant::now());
        if let Some(r) = st.ringer.take() {
            r.abort();
        }
        arm_media_deadline(&t, &mut st, seq, call);
        println!("call {call} answered by {}", connected.number);
    }
    if let Some(r) = reply.take() {
        let _ = r.send(Ok(json!({
            "ok": true, "call": call, "callee": connected.number, "state": "connecting",
        })));
    }
    let link = tokio::select! {
        l = client.dial_media(&t.endpoint, &t.id, &connected.plan) => l,
        _ = &mut cancel => return,
    };
    install_session(
        &t,
        seq,
        call,
        link.map(|l| (l.conn, l.relayed))
            .map_err(|e| anyhow::anyhow!("{e}")),
    );
}

fn on_progress(t: &Arc<Terminal>, seq: u64, p: Progress, reply: &mut Option<DialReply>) {
    let mut st = t.lock();
    let Some(c) = st.call.as_mut().filter(|c| c.seq == seq) else {
        return;
    };
    match p {
        Progress::Ringing { call, number, via } => {
            c.id = Some(call);
            c.state = "ringing";
            c.ringing_at.get_or_insert_with(Instant::now);
            c.peer = number.clone();
            c.via = via;
            if st.ringer.is_none() {
                st.ringer = Some(t.audio.ringback());
            }
            if let Some(r) = reply.take() {
                let _ = r.send(Ok(
                    json!({"ok": true, "call": call, "callee": number, "state": "ringing"}),
                ));
            }
        }
        Progress::Redirected { from, to } => {
            println!("{from} sends the call on to {to}");
            c.redirected_from.push(from);
            c.peer = to;
            c.id = None;
            c.state = "dialing";
        }
    }
}

/// Why a look-up-only call's held connection is closed unanswered.
const LOOKUP_DECLINED: &[u8] = b"declined";
const LOOKUP_NO_ANSWER: &[u8] = b"no answer";
const LOOKUP_BUSY: &[u8] = b"busy";
/// How long a look-up-only caller refused as busy is remembered (it
/// connects within a second or two of the look-up).
const LOOKUP_BUSY_MEMORY: Duration = Duration::from_secs(15);

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

/// The directory says a look-up-only caller (claim 3) will connect
/// straight to us: ring here, and hold its media connection until our user
/// answers.
fn on_expect(
    t: &Arc<Terminal>,
    from: String,
    number: String,
    ext: Option<String>,
    plan: MediaPlan,
) {
    let mut st = t.lock();
    if st.call.is_some() {
        // Its connection is refused as busy when it comes.
        println!("look-up-only call from {from} to {number} refused: busy");
        st.busy_for
            .retain(|(_, at)| at.elapsed() < LOOKUP_BUSY_MEMORY);
        st.busy_for.push((plan.peer_fp, Instant::now()));
        return;
    }
    if let Some(p) = st.playback.take() {
        p.abort();
    }
    println!(
        "incoming look-up-only call from {from} to {number}{}",
        ext.map(|e| format!(" (extension {e}: a terminal has none)"))
            .unwrap_or_default()
    );
    // The caller connects straight to us next: open our NAT to it.
    t.puncher.punch(plan.peer_candidates.clone());
    st.next_seq += 1;
    let seq = st.next_seq;
    let mut c = Call::new(seq, None, from, Direction::In);
    c.number = Some(number);
    c.lookup = true;
    c.plan = Some(plan.clone());
    st.call = Some(c);
    st.ringer = Some(t.audio.ring());
    let t2 = t.clone();
    // The ring timeout (the media deadline replaces it on answer).
    if let Some(old) = st.media_timer.replace(tokio::spawn(async move {
        tokio::time::sleep(LOOKUP_RING_TIMEOUT).await;
        let mut st = t2.lock();
        if st
            .call
            .as_ref()
            .is_some_and(|c| c.seq == seq && c.state == "alerting")
        {
            st.media_timer = None;
            for h in st.held.drain(..) {
                h.close(quinn::VarInt::from_u32(3), LOOKUP_NO_ANSWER);
            }
            println!("look-up-only call not answered within {LOOKUP_RING_TIMEOUT:?}");
            end_call(&t2, &mut st, "no-answer");
        }
    })) {
        old.abort();
    }
    if let Some(secs) = t.opts.auto_answer {
        let t2 = t.clone();
        st.auto_answer = Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let _ = answer(&t2, true).await;
        }));
    }
    t.expect.send_replace(Some((seq, plan)));
}

/// A verified look-up caller's connection while our end still rings: keep
/// it without answering `MediaHello`; the call ends if the caller gives up
/// (closes it). `false`: the call is answered already (accept it now).
fn hold_lookup_connection(t: &Arc<Terminal>, seq: u64, conn: &quinn::Connection) -> bool {
    let mut st = t.lock();
    let ringing = st
        .call
        .as_ref()
        .is_some_and(|c| c.seq == seq && c.lookup && c.state == "alerting");
    if !ringing {
        return false;
    }
    st.held.push(conn.clone());
    let (t, conn) = (t.clone(), conn.clone());
    tokio::spawn(async move {
        let why = conn.closed().await;
        let mut st = t.lock();
        st.held.retain(|c| c.stable_id() != conn.stable_id());
        let ringing = st
            .call
            .as_ref()
            .is_some_and(|c| c.seq == seq && c.state == "alerting");
        if ringing && st.held.is_empty() {
            let peer = st.call.as_ref().map(|c| c.peer.clone()).unwrap_or_default();
            println!("{peer} gave up the look-up-only call ({why})");
            end_call(&t, &mut st, "cancelled");
        }
    });
    true
}

/// Answer a ringing look-up-only call: answer `MediaHello` on the held
/// connections (the first verified one carries the call), or accept the
/// caller's connection as soon as it comes.
fn answer_lookup(t: &Arc<Terminal>, st: &mut State, auto: bool) -> Value {
    let Some(c) = st.call.as_mut() else {
        return control::error("no call is ringing");
    };
    let Some(plan) = c.plan.clone() else {
        return control::error("no call is ringing");
    };
    let seq = c.seq;
    c.state = "connecting";
    c.answered_at = Some(Instant::now());
    if let Some(a) = st.auto_answer.take() {
        if !auto {
            a.abort();
        }
    }
    if let Some(r) = st.ringer.take() {
        r.abort();
    }
    arm_media_deadline(t, st, seq, 0);
    for conn in st.held.drain(..) {
        let (t, plan) = (t.clone(), plan.clone());
        tokio::spawn(async move {
            let remote = conn.remote_address();
            match accept_media(conn, &plan).await {
                Ok(conn) => install_session(&t, seq, 0, Ok((conn, false))),
                Err(e) => tracing::info!("look-up media connection from {remote} failed: {e}"),
            }
        });
    }
    json!({"ok": true, "call": Value::Null, "lookup": true})
}

/// Place a look-up-only call (claim 3): ask the directory only where
/// `number` is, then connect straight to its endpoint, which rings itself.
/// Replies once the callee rings (or the look-up failed).
async fn dial_lookup(t: &Arc<Terminal>, number: &str) -> Value {
    let (client, seq) = {
        let mut st = t.lock();
        let r = match new_outgoing(&mut st, number) {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Some(c) = st.call.as_mut() {
            c.lookup = true;
        }
        r
    };
    let found = tokio::time::timeout(Duration::from_secs(20), client.lookup(number)).await;
    let found = match found {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            let ended = match e.code() {
                Some(ErrorCode::UnknownNumber) => "unknown",
                Some(ErrorCode::Unreachable) => "offline",
                _ => "failed",
            };
            let mut st = t.lock();
            if st.call.as_ref().is_some_and(|c| c.seq == seq) {
                end_call(t, &mut st, ended);
            }
            return control::error(format!("cannot look up {number}: {e}"));
        }
        Err(_) => {
            let mut st = t.lock();
            if st.call.as_ref().is_some_and(|c| c.seq == seq) {
                end_call(t, &mut st, "failed");
            }
            return control::error("the directory did not answer the look-up");
        }
    };
    let cancel = {
        let mut st = t.lock();
        let Some(c) = st.call.as_mut().filter(|c| c.seq == seq) else {
            return control::error(format!("the call to {number} was given up"));
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        c.cancel = Some(cancel_tx);
        c.peer = found.number.clone();
        c.via = found.via.clone();
        c.state = "ringing";
        c.ringing_at = Some(Instant::now());
        if st.ringer.is_none() {
            st.ringer = Some(t.audio.ringback());
        }
        cancel_rx
    };
    println!(
        "{} found; connecting straight to it (look-up only)",
        found.number
    );
    let t2 = t.clone();
    let plan = found.plan;
    let callee = found.number.clone();
    tokio::spawn(async move {
        let mut cancel = cancel;
        // Hung up while it rings: dropping the connection attempt closes
        // the connection, and the callee stops ringing.
        let link = tokio::select! {
            l = client.dial_media(&t2.endpoint, &t2.id, &plan) => l,
            _ = &mut cancel => return,
        };
        match link {
            Ok(l) => {
                if let Some(c) = t2.lock().call.as_mut().filter(|c| c.seq == seq) {
                    c.answered_at = Some(Instant::now());
                }
                install_session(&t2, seq, 0, Ok((l.conn, l.relayed)));
            }
            Err(e) => {
                let text = e.to_string();
                let ended = if text.contains("declined") {
                    "rejected"
                } else if text.contains("busy") {
                    "busy"
                } else if text.contains("no answer") || text.contains("did not answer") {
                    "no-answer"
                } else {
                    "media-failed"
                };
                let mut st = t2.lock();
                if st.call.as_ref().is_some_and(|c| c.seq == seq) {
                    println!("the look-up-only call to {callee} did not connect: {text}");
                    end_call(&t2, &mut st, ended);
                }
            }
        }
    });
    json!({"ok": true, "call": Value::Null, "callee": found.number, "state": "ringing", "lookup": true})
}

/// Accepting end: media connections whose peer and credential match the
/// call we answered; anything else is refused.
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
            // The caller may be quicker than the directory's answer to us.
            let mut rx = t.expect.subscribe();
            let expected = tokio::time::timeout(
                Duration::from_secs(5),
                rx.wait_for(|p| p.as_ref().is_some_and(|(_, m)| m.peer_fp == fp)),
            )
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|p| p.clone()));
            let Some((seq, plan)) = expected else {
                if refuse_if_busy(&t, &fp, &conn) {
                    return;
                }
                tracing::info!("refused a connection from {remote}: no call expects it");
                conn.close(quinn::VarInt::from_u32(1), b"no call expects you");
                return;
            };
            if plan.call == 0 && hold_lookup_connection(&t, seq, &conn) {
                return;
            }
            match accept_media(conn, &plan).await {
                Ok(conn) => install_session(&t, seq, plan.call, Ok((conn, false))),
                Err(e) => tracing::info!("refused a media connection from {remote}: {e}"),
            }
        });
    }
}

/// Start the call's media on a verified connection.
fn install_session(
    t: &Arc<Terminal>,
    seq: u64,
    call: CallId,
    conn: Result<(quinn::Connection, bool)>,
) {
    let mut st = t.lock();
    let current = st
        .call
        .as_ref()
        .is_some_and(|c| c.seq == seq && (c.id == Some(call) || (c.lookup && call == 0)));
    match conn {
        Ok((conn, _)) if current && st.session.is_some() => {
            st.spare.push(conn.clone());
            watch_media(t, seq, call, conn);
        }
        Ok((conn, relayed)) if current => start_session(t, &mut st, seq, call, conn, relayed),
        Ok((conn, _)) => conn.close(quinn::VarInt::from_u32(0), b"call already over"),
        Err(e) if current => fail_media(t, &mut st, call, &format!("{e:#}")),
        Err(_) => {}
    }
}

fn start_session(
    t: &Arc<Terminal>,
    st: &mut State,
    seq: u64,
    call: CallId,
    conn: quinn::Connection,
    relayed: bool,
) {
    let s = Session::start(
        conn.clone(),
        call,
        t.audio.source.clone(),
        t.audio.sink.clone(),
        st.record.clone(),
        st.hold.clone(),
    );
    match s {
        Ok(s) => {
            st.session = Some(s);
            if let Some(m) = st.media_timer.take() {
                m.abort();
            }
            if let Some(r) = st.ringer.take() {
                r.abort();
            }
            let peer = st.call.as_ref().map(|c| c.peer.clone()).unwrap_or_default();
            if let Some(dir) = &t.opts.record_dir {
                if let Err(e) = start_recording(&st.record, dir, &peer) {
                    tracing::warn!("cannot record call {call}: {e:#}");
                }
            }
            if let Some(c) = st.call.as_mut() {
                c.state = "connected";
                c.relayed |= relayed;
                if c.connected_at.is_none() {
                    c.connected_at = Some(Instant::now());
                    c.media_started_unix_ms = calls::unix_ms_now();
                }
            }
            t.expect.send_replace(None);
            println!(
                "call {call} connected with {peer}{}",
                if relayed {
                    " (through the directory's relay)"
                } else {
                    " (end to end)"
                }
            );
            watch_media(t, seq, call, conn);
        }
        Err(e) => fail_media(t, st, call, &format!("{e:#}")),
    }
}

/// When a media connection closes: the call goes on on a spare one, or
/// ends (the other end hung up or vanished).
fn watch_media(t: &Arc<Terminal>, seq: u64, call: CallId, conn: quinn::Connection) {
    let t = t.clone();
    tokio::spawn(async move {
        let why = conn.closed().await;
        let mut st = t.lock();
        st.spare.retain(|c| c.stable_id() != conn.stable_id());
        let ours = st.call.as_ref().is_some_and(|c| c.seq == seq)
            && st
                .session
                .as_ref()
                .is_some_and(|s| s.conn.stable_id() == conn.stable_id());
        if !ours {
            return;
        }
        // Keep the counters: a new session starts from zero.
        while let Some(spare) = st.spare.pop() {
            if spare.close_reason().is_none() {
                tracing::info!("call {call}: media continues on another connection");
                st.session = None;
                start_session(&t, &mut st, seq, call, spare, false);
                return;
            }
        }
        let reason = match why {
            quinn::ConnectionError::ApplicationClosed(_) => "hangup",
            _ => "media-lost",
        };
        println!("call {call} ended: the media connection closed ({why})");
        send_hangup(&st, call);
        end_call(&t, &mut st, reason);
    });
}

fn send_hangup(st: &State, call: CallId) {
    // A look-up-only call (id 0) is not the directory's: closing its media
    // connection is the hang-up.
    if call == 0 {
        return;
    }
    if let Some(c) = st.client.clone() {
        tokio::spawn(async move {
            let _ = c.hangup(call).await;
        });
    }
}

fn fail_media(t: &Arc<Terminal>, st: &mut State, call: CallId, why: &str) {
    tracing::warn!("call {call}: media failed: {why}");
    println!("call {call}: no media connection: {why}");
    send_hangup(st, call);
    end_call(t, st, "media-failed");
}

/// Tear down the current call locally and remember how it went.
fn end_call(t: &Terminal, st: &mut State, reason: &str) {
    let (recording, recording_error) = finish_recording(&st.record);
    st.hold
        .holding
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for h in [
        st.ringer.take(),
        st.auto_answer.take(),
        st.media_timer.take(),
    ]
    .into_iter()
    .flatten()
    {
        h.abort();
    }
    for c in st.spare.drain(..).chain(st.held.drain(..)) {
        c.close(quinn::VarInt::from_u32(0), b"call ended");
    }
    t.expect.send_replace(None);
    let stats = st.session.take().map(|s| s.stats());
    if let Some(c) = st.call.take() {
        st.last_call = Some(json!({
            "id": c.id,
            "peer": c.peer,
            "direction": c.direction.as_str(),
            "ended": reason,
            "connected": c.connected_at.is_some(),
            "seconds": c.connected_at.map(|t| t.elapsed().as_secs_f64()),
            "relayed": c.relayed,
            "lookup": c.lookup,
            "redirected_from": c.redirected_from,
            "timing": c.timing(),
            "recording": recording,
            "recording_error": recording_error,
            "media": stats,
        }));
        // Dropping `c.cancel` stops an outgoing call's task.
    }
}

fn status(t: &Arc<Terminal>) -> Value {
    let st = t.lock();
    let call = st.call.as_ref().map(|c| {
        json!({
            "id": c.id,
            "peer": c.peer,
            "number": c.number,
            "via": c.via,
            "redirected_from": c.redirected_from,
            "direction": c.direction.as_str(),
            "state": c.state,
            "seconds": c.connected_at.unwrap_or(c.started).elapsed().as_secs_f64(),
            "relayed": c.relayed,
            "lookup": c.lookup,
            "timing": c.timing(),
            "on_hold": st.hold.holding.load(std::sync::atomic::Ordering::Relaxed),
            "recording": recording_path(&st.record),
            "recording_error": recording_error(&st.record),
            "media": st.session.as_ref().map(|s| s.stats()),
        })
    });
    let l = &st.link;
    json!({
        "ok": true,
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
        "call": call,
        "last_call": st.last_call,
        "messages_waiting": st.unread,
        "mailbox": t.mailbox.dir().display().to_string(),
        "playing_voicemail": st.playback.as_ref().is_some_and(|p| !p.is_finished()),
    })
}

async fn handle_control(t: &Arc<Terminal>, req: Value) -> Value {
    match req.get("cmd").and_then(Value::as_str).unwrap_or("") {
        "status" => status(t),
        "dial" => {
            let Some(number) = req.get("number").and_then(Value::as_str) else {
                return control::error("dial needs a number");
            };
            if req.get("lookup").and_then(Value::as_bool) == Some(true) {
                dial_lookup(t, number).await
            } else {
                dial(t, number, None).await
            }
        }
        "answer" => answer(t, false).await,
        "hangup" => {
            let mut st = t.lock();
            let Some(c) = st.call.as_ref() else {
                return control::error("no call to hang up");
            };
            let incoming_ringing = c.direction == Direction::In && c.state == "alerting";
            let lookup = c.lookup;
            // An outgoing call not answered yet is cancelled by its task
            // (dropping the call request); the others are hung up here.
            let id =
                c.id.filter(|_| c.direction == Direction::In || c.answered_at.is_some());
            if lookup && incoming_ringing {
                // Declined: the caller's held connection is closed unanswered.
                for h in st.held.drain(..) {
                    h.close(quinn::VarInt::from_u32(2), LOOKUP_DECLINED);
                }
            }
            if let (Some(call), Some(client)) = (id, st.client.clone()) {
                tokio::spawn(async move {
                    let _ = if incoming_ringing {
                        client.reject(call).await
                    } else {
                        client.hangup(call).await
                    };
                });
            }
            end_call(t, &mut st, "local-hangup");
            json!({"ok": true})
        }
        "record" => {
            let on = req.get("on").and_then(Value::as_bool).unwrap_or(true);
            let st = t.lock();
            let Some(c) = st.call.as_ref().filter(|c| c.state == "connected") else {
                return control::error("no connected call to record");
            };
            calls::record_command(
                &st.record,
                on,
                &c.peer,
                t.opts.record_dir.as_deref(),
                &t.state_dir,
            )
        }
        "hold" | "resume" => {
            // Played by the holding end (as in the office); the directory
            // has no part in it.
            let on = req["cmd"] == "hold";
            let st = t.lock();
            let Some(call) = st
                .call
                .as_ref()
                .filter(|c| c.state == "connected")
                .map(|c| c.id.unwrap_or(0))
            else {
                return control::error("no connected call");
            };
            st.hold
                .holding
                .store(on, std::sync::atomic::Ordering::Relaxed);
            json!({"ok": true, "call": call, "on_hold": on})
        }
        "message" => {
            let (Some(to), Some(body)) = (
                req.get("to").and_then(Value::as_str),
                req.get("body").and_then(Value::as_str),
            ) else {
                return control::error("message needs a number and a text");
            };
            let Some(client) = t.lock().client.clone() else {
                return control::error("not connected to the directory");
            };
            match client
                .leave_mail(to, MailKind::Text, body.as_bytes(), None)
                .await
            {
                Ok(id) => json!({"ok": true, "id": id}),
                Err(e) => control::error(format!("message not left for {to}: {e}")),
            }
        }
        "messages" => {
            let mb = t.mailbox.clone();
            match tokio::task::spawn_blocking(move || mb.take_unread()).await {
                Ok(Ok(list)) => {
                    t.lock().unread = 0;
                    json!({"ok": true, "messages": list})
                }
                Ok(Err(e)) => control::error(format!("{e:#}")),
                Err(e) => control::error(format!("reading the mailbox: {e}")),
            }
        }
        "voicemail-list" => {
            let mb = t.mailbox.clone();
            match tokio::task::spawn_blocking(move || mb.list()).await {
                Ok(Ok(list)) => {
                    let items: Vec<Value> = list
                        .into_iter()
                        .filter(|m| m.kind == "voice")
                        .map(|m| {
                            json!({"id": m.id, "from": m.from, "secs": m.seconds,
                                   "heard": m.read, "file": m.file})
                        })
                        .collect();
                    json!({"ok": true, "voicemails": items})
                }
                Ok(Err(e)) => control::error(format!("{e:#}")),
                Err(e) => control::error(format!("reading the mailbox: {e}")),
            }
        }
        "voicemail-play" => play_voicemail(t, req.get("id").and_then(Value::as_u64)).await,
        "voicemail-delete" => control::error(
            "a terminal's voice mail is kept as files; delete them from the mailbox directory",
        ),
        "transfer" => {
            // Blind hand-off through the directory (claim 5): the other end
            // calls the target directly, and our call ends.
            let Some(target) = req.get("target").and_then(Value::as_str) else {
                return control::error("transfer needs a target number");
            };
            let (client, call) = {
                let st = t.lock();
                (
                    st.client.clone(),
                    st.call
                        .as_ref()
                        .filter(|c| c.state == "connected")
                        .and_then(|c| c.id),
                )
            };
            let (Some(client), Some(call)) = (client, call) else {
                return control::error("no connected call to hand on");
            };
            match client.transfer(call, target, None).await {
                Ok(()) => {
                    let mut st = t.lock();
                    if st.call.as_ref().is_some_and(|c| c.id == Some(call)) {
                        end_call(t, &mut st, "transferred");
                    }
                    json!({"ok": true, "call": call, "transferring_to": target})
                }
                Err(e) => control::error(format!("cannot hand the call on to {target}: {e}")),
            }
        }
        "consult" | "consult-complete" | "consult-cancel" => control::error(
            "an attended transfer needs an office gateway; a terminal hands calls on blind",
        ),
        "" => control::error("missing \"cmd\""),
        other => control::error(format!("unknown command {other:?}")),
    }
}

/// Play stored voice mail `id` (or every unheard one) on the output.
async fn play_voicemail(t: &Arc<Terminal>, id: Option<u64>) -> Value {
    if t.lock().call.is_some() {
        return control::error("hang up first");
    }
    let mb = t.mailbox.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<(Vec<Value>, Vec<i16>)> {
        let chosen: Vec<_> = mb
            .list()?
            .into_iter()
            .filter(|m| m.kind == "voice" && id.map_or(!m.read, |want| m.id == want))
            .collect();
        let mut pcm = Vec::new();
        for m in &chosen {
            pcm.extend(
                keyline_media::read_ogg_opus(&m.file)
                    .with_context(|| format!("voice mail {}", m.id))?,
            );
            pcm.extend(std::iter::repeat_n(0i16, FRAME_SAMPLES * 25));
        }
        let list = chosen
            .iter()
            .map(|m| json!({"id": m.id, "from": m.from}))
            .collect();
        Ok((list, pcm))
    })
    .await;
    let (list, pcm) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return control::error(format!("{e:#}")),
        Err(e) => return control::error(format!("reading the mailbox: {e}")),
    };
    if list.is_empty() {
        return match id {
            Some(id) => control::error(format!("no voice mail {id}")),
            None => control::error("no new voice mail"),
        };
    }
    let seconds = pcm.len() as f64 / 48_000.0;
    let task = t.audio.play(pcm);
    if let Some(old) = t.lock().playback.replace(task) {
        old.abort();
    }
    json!({"ok": true, "playing": list, "seconds": seconds})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(parse_fingerprint(&fp).unwrap(), "ab".repeat(32));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

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
    fn route_ip_to_loopback_is_loopback() {
        let ip = route_ip("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}
