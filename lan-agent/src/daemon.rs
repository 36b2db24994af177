//! The agent daemon: it finds the gateway (mDNS or `--gateway`), enrols,
//! stays registered and reconnects with backoff; it rings, answers, dials
//! and hangs up on the gateway's word or its CLI's; and it runs each
//! call's end-to-end media session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_media::FRAME_SAMPLES;
use keyline_net::lifecycle::{self, Signals};
use keyline_net::{control, endpoint, mdns, pairing_code, peer_fingerprint, Identity};
use keyline_proto::codec::{read_frame, write_frame, CodecError};
use keyline_proto::msg::{CallId, EndReason, LineSettings, MediaPlan, Msg, Role};
use keyline_proto::{MAX_MESSAGE, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audio::{self, LocalAudio};
use crate::calls::{self, Direction};
use crate::session::{
    finish_recording, recording_error, recording_path, start_recording, Hold, RecordSlot, Session,
    SharedRecord,
};

/// Options of `keyline-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    pub gateway: Option<String>,
    pub audio_in: String,
    pub audio_out: String,
    pub auto_answer: Option<u64>,
    pub name: Option<String>,
    pub ringtone: Option<PathBuf>,
    pub bind: SocketAddr,
    pub mdns: bool,
    /// Record every call into this directory.
    pub record_dir: Option<PathBuf>,
    /// What a held party hears (default: a generated melody).
    pub hold_music: Option<PathBuf>,
}

#[derive(Debug)]
struct CallInfo {
    id: Option<CallId>,
    peer: String,
    peer_name: Option<String>,
    direction: Direction,
    state: &'static str,
    started: Instant,
    connected_at: Option<Instant>,
    /// When the gateway said the far end rings (outgoing calls).
    ringing_at: Option<Instant>,
    /// When the gateway said the call was answered (media plan received).
    answered_at: Option<Instant>,
    /// Wall-clock start of media, for mouth-to-ear measurements.
    media_started_unix_ms: Option<u128>,
    relayed: bool,
}

impl CallInfo {
    fn new(
        id: Option<CallId>,
        peer: String,
        peer_name: Option<String>,
        direction: Direction,
    ) -> Self {
        CallInfo {
            id,
            peer,
            peer_name,
            direction,
            state: direction.initial_state(),
            started: Instant::now(),
            connected_at: None,
            ringing_at: None,
            answered_at: None,
            media_started_unix_ms: None,
            relayed: false,
        }
    }

    /// Set-up figures in milliseconds.
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

#[derive(Debug, Clone)]
enum Link {
    Searching,
    Connecting(SocketAddr),
    Pending { code: String },
    Registered { ext: String, name: Option<String> },
    Disconnected(String),
}

/// Replies parked by request id until the gateway answers (see
/// [`request`]).
type Pending<T> = HashMap<u64, oneshot::Sender<std::result::Result<T, String>>>;

struct State {
    link: Option<Link>,
    gateway: Option<SocketAddr>,
    gw_tx: Option<mpsc::Sender<Msg>>,
    call: Option<CallInfo>,
    last_call: Option<Value>,
    next_req: u64,
    /// Dial, transfer and consultation requests waiting for their reply.
    dials: Pending<Value>,
    session: Option<Session>,
    ringer: Option<tokio::task::JoinHandle<()>>,
    auto_answer: Option<tokio::task::JoinHandle<()>>,
    /// Call handling kept on the gateway for this extension.
    settings: LineSettings,
    /// Texts received and not yet read (the gateway keeps them too).
    inbox: Vec<Value>,
    /// Requests waiting for a TextSent or an Error.
    texts: Pending<Value>,
    /// The recording of the current call, if any.
    record: SharedRecord,
    /// Hold state shared with the media session.
    hold: Arc<Hold>,
    /// The held party's view: the other end holds this call.
    held_by_peer: bool,
    /// Unheard voicemails in this extension's mailbox on the gateway.
    voicemail_waiting: u32,
    /// Voicemail requests waiting for their reply.
    vm_reqs: Pending<Msg>,
    /// A voicemail being played on the output.
    playback: Option<tokio::task::JoinHandle<()>>,
    /// A consultation call placed while the main call is held (attended
    /// transfer), its media session, and the hold/record state it uses.
    consult: Option<CallInfo>,
    consult_session: Option<Session>,
    consult_hold: Arc<Hold>,
    consult_record: SharedRecord,
}

impl State {
    /// The consultation ended: drop it and take the main call off hold.
    fn end_consult(&mut self) {
        self.consult = None;
        self.consult_session = None;
        self.hold
            .holding
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn new(hold_music: Vec<i16>) -> State {
        State {
            link: None,
            gateway: None,
            gw_tx: None,
            call: None,
            last_call: None,
            next_req: 0,
            dials: HashMap::new(),
            session: None,
            ringer: None,
            auto_answer: None,
            settings: LineSettings::default(),
            inbox: Vec::new(),
            texts: HashMap::new(),
            record: Arc::new(Mutex::new(RecordSlot::default())),
            hold: Arc::new(Hold::new(hold_music)),
            held_by_peer: false,
            voicemail_waiting: 0,
            vm_reqs: HashMap::new(),
            playback: None,
            consult: None,
            consult_session: None,
            consult_hold: Arc::new(Hold::new(Vec::new())),
            consult_record: Arc::new(Mutex::new(RecordSlot::default())),
        }
    }
}

struct Agent {
    id: Identity,
    endpoint: quinn::Endpoint,
    state_dir: PathBuf,
    opts: RunOptions,
    st: Mutex<State>,
    /// The media plan of the call we expect a peer to connect for.
    expect: watch::Sender<Option<(CallId, MediaPlan)>>,
    audio: LocalAudio,
    gateways: Mutex<Vec<mdns::Found>>,
    found: tokio::sync::Notify,
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; keep serving regardless.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin_path(&self) -> PathBuf {
        self.state_dir.join("gateway.fp")
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<()> {
    let mut signals = Signals::new().context("installing signal handlers")?;
    let state_dir = keyline_net::statedir::resolve(opts.state.as_deref(), "agent")?;
    let id = Identity::load_or_create(&state_dir, "keyline-agent")?;
    let ctl = control::bind(&control::socket_path(&state_dir)).await?;
    let endpoint = keyline_net::make_endpoint(opts.bind, &id)?;
    let audio = LocalAudio::open(&opts.audio_in, &opts.audio_out, opts.ringtone.as_deref())?;
    let hold_music = audio::load_samples(
        opts.hold_music.as_deref(),
        "hold music",
        keyline_media::hold_music,
    )?;
    let (expect, _) = watch::channel(None);
    let agent = Arc::new(Agent {
        id,
        endpoint,
        state_dir: state_dir.clone(),
        opts,
        st: Mutex::new(State::new(hold_music)),
        expect,
        audio,
        gateways: Mutex::new(Vec::new()),
        found: tokio::sync::Notify::new(),
    });

    {
        let agent = agent.clone();
        tokio::spawn(control::serve(ctl, move |req| {
            let agent = agent.clone();
            async move { handle_control(&agent, req).await }
        }));
    }
    let mdns = if agent.opts.mdns {
        match start_mdns(&agent) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("keyline-agent: mDNS unavailable ({e:#}); use --gateway HOST:PORT");
                None
            }
        }
    } else {
        None
    };
    tokio::spawn(accept_media(agent.clone()));
    let link = tokio::spawn(link_loop(agent.clone()));
    println!(
        "keyline-agent ready: udp {}, state {}",
        agent.endpoint.local_addr()?,
        state_dir.display()
    );

    {
        let a = agent.clone();
        agent
            .audio
            .serve_until_stopped(&mut signals, "searching for the gateway", move || {
                a.st.lock().is_ok()
            })
            .await;
    }
    link.abort();
    let tx = {
        let mut st = agent.lock();
        let call = st.call.as_ref().and_then(|c| c.id);
        let tx = st.gw_tx.clone();
        end_call(&mut st, "shutdown");
        call.zip(tx)
    };
    if let Some((call, tx)) = tx {
        let _ = tx.send(Msg::Hangup { call }).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.audio.finish();
    agent
        .endpoint
        .close(quinn::VarInt::from_u32(0), b"agent stopping");
    let _ = tokio::time::timeout(Duration::from_secs(1), agent.endpoint.wait_idle()).await;
    if let Some(m) = mdns {
        m.shutdown().await;
    }
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    Ok(())
}

fn start_mdns(agent: &Arc<Agent>) -> Result<mdns::Mdns> {
    let m = mdns::Mdns::new()?;
    let port = agent.endpoint.local_addr()?.port();
    let instance = format!("keyline-agent-{}", &agent.id.fingerprint[..8]);
    m.advertise(
        &instance,
        port,
        &[
            ("role", "agent"),
            ("fp", &agent.id.fingerprint),
            ("v", &PROTOCOL_VERSION.to_string()),
        ],
    )?;
    let rx = m.browse()?;
    let agent = agent.clone();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv_async().await {
            match ev {
                mdns_sd::ServiceEvent::ServiceResolved(rs) => {
                    let f = mdns::parse(&rs);
                    if f.role == "gateway" && !f.addrs.is_empty() {
                        if let Ok(mut g) = agent.gateways.lock() {
                            g.retain(|x| x.fullname != f.fullname);
                            g.push(f);
                        }
                        agent.found.notify_waiters();
                    }
                }
                mdns_sd::ServiceEvent::ServiceRemoved(_, fullname) => {
                    if let Ok(mut g) = agent.gateways.lock() {
                        g.retain(|x| x.fullname != fullname);
                    }
                }
                _ => {}
            }
        }
    });
    Ok(m)
}

/// Where to find the gateway now: `--gateway`, else what mDNS found
/// (preferring the gateway we are pinned to).
async fn find_gateway(agent: &Arc<Agent>, pin: Option<&str>) -> Result<Vec<SocketAddr>> {
    if let Some(g) = &agent.opts.gateway {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(g.as_str())
            .await
            .with_context(|| format!("resolving {g}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{g} resolves to no address");
        }
        return Ok(addrs);
    }
    loop {
        let notified = agent.found.notified();
        let choice = agent.gateways.lock().ok().and_then(|g| {
            g.iter()
                .find(|f| pin.is_none() || f.fingerprint.as_deref() == pin)
                .map(|f| f.addrs.clone())
        });
        if let Some(a) = choice {
            return Ok(a);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
    }
}

async fn link_loop(agent: Arc<Agent>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        agent.lock().link = Some(Link::Searching);
        let pin = std::fs::read_to_string(agent.pin_path())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() == 64);
        let registered = match find_gateway(&agent, pin.as_deref()).await {
            Ok(addrs) => {
                let mut registered = false;
                for addr in addrs {
                    match gateway_session(&agent, addr, pin.clone()).await {
                        Ok(r) => {
                            registered = r;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("gateway {addr}: {e:#}");
                            agent.lock().link = Some(Link::Disconnected(format!("{e:#}")));
                        }
                    }
                }
                registered
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                agent.lock().link = Some(Link::Disconnected(format!("{e:#}")));
                false
            }
        };
        {
            let mut st = agent.lock();
            st.gw_tx = None;
            for (_, d) in st.dials.drain() {
                let _ = d.send(Err("lost the connection to the gateway".into()));
            }
            if st.call.is_some() {
                end_call(&mut st, "gateway-lost");
            }
            if !matches!(st.link, Some(Link::Disconnected(_))) {
                st.link = Some(Link::Disconnected("connection to the gateway lost".into()));
            }
        }
        if registered {
            backoff = Duration::from_millis(250);
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 250);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

/// One connection to the gateway, from hello until it ends. `Ok(true)` if
/// we got registered during it.
async fn gateway_session(
    agent: &Arc<Agent>,
    addr: SocketAddr,
    pin: Option<String>,
) -> Result<bool> {
    agent.lock().link = Some(Link::Connecting(addr));
    let cfg = endpoint::client_config(&agent.id, pin.clone())?;
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        agent
            .endpoint
            .connect_with(cfg, addr, endpoint::SERVER_NAME)?,
    )
    .await
    .context("gateway did not answer within 5 s")?
    .context("connecting to the gateway")?;
    let gw_fp = peer_fingerprint(&conn).context("the gateway presented no certificate")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &Msg::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Agent,
            name: agent.opts.name.clone(),
        },
        MAX_MESSAGE,
    )
    .await?;
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write_frame(&mut send, &m, MAX_MESSAGE).await.is_err() {
                break;
            }
        }
    });
    {
        let mut st = agent.lock();
        st.gw_tx = Some(tx.clone());
        st.gateway = Some(addr);
    }
    let mut registered = false;
    let result = loop {
        let body = match read_frame(&mut recv, MAX_MESSAGE).await {
            Ok(Some(b)) => b,
            Ok(None) => break Ok(()),
            Err(CodecError::Io(_) | CodecError::Closed) => break Ok(()),
            Err(e) => break Err(anyhow::Error::from(e)),
        };
        let msg = match Msg::from_cbor(&body) {
            Ok(m) => m,
            Err(CodecError::UnknownKind(k)) => {
                tracing::debug!("ignoring unknown message kind {k:?} from the gateway");
                continue;
            }
            Err(e) => break Err(anyhow::Error::from(e).context("the gateway sent garbage")),
        };
        match msg {
            Msg::Pending { code } => {
                let mine = pairing_code(&agent.id.fingerprint, &gw_fp);
                if mine != code {
                    tracing::warn!(
                        "the gateway reports pairing code {code} but this station computes {mine}: something sits between us"
                    );
                }
                println!(
                    "pairing code {mine}: approve this station on the gateway with `keyline-gatewayd approve {mine}`"
                );
                agent.lock().link = Some(Link::Pending { code: mine.clone() });
                lifecycle::status(&format!("waiting for approval, pairing code {mine}"));
            }
            Msg::Registered { ext, name } => {
                if pin.as_deref() != Some(gw_fp.as_str()) {
                    if let Err(e) = std::fs::write(agent.pin_path(), &gw_fp) {
                        tracing::warn!("could not store the gateway's fingerprint: {e}");
                    }
                }
                println!("registered as extension {ext}");
                registered = true;
                lifecycle::status(&format!("registered as extension {ext}"));
                agent.lock().link = Some(Link::Registered { ext, name });
            }
            other => on_gateway_msg(agent, other),
        }
    };
    writer.abort();
    conn.close(quinn::VarInt::from_u32(0), b"bye");
    result.map(|()| registered)
}

fn on_gateway_msg(agent: &Arc<Agent>, msg: Msg) {
    let mut st = agent.lock();
    match msg {
        Msg::Ringing { req, call, callee } => {
            let mut ringback = false;
            if let Some(c) = st.call.as_mut() {
                if c.direction == Direction::Out && c.id.is_none() {
                    c.id = Some(call);
                    c.state = "ringing";
                    c.ringing_at = Some(Instant::now());
                    c.peer = callee.clone();
                    ringback = true;
                }
            }
            if let Some(c) = st.consult.as_mut().filter(|c| c.id.is_none()) {
                c.id = Some(call);
                c.state = "ringing";
                c.ringing_at = Some(Instant::now());
                c.peer = callee.clone();
            }
            if ringback {
                st.ringer = Some(agent.audio.ringback());
            }
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Ok(
                    json!({"ok": true, "call": call, "callee": callee, "state": "ringing"}),
                ));
            }
        }
        Msg::DialFailed {
            req,
            reason,
            message,
        } => {
            if st.call.as_ref().is_some_and(|c| c.id.is_none()) {
                st.call = None;
            }
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Err(format!(
                    "{message}{}",
                    if message == reason.describe() {
                        String::new()
                    } else {
                        format!(" ({})", reason.describe())
                    }
                )));
            }
        }
        Msg::Ring {
            call,
            from,
            from_name,
        } => {
            if st.call.is_some() {
                // The gateway thinks we are free; we are not.
                if let Some(tx) = &st.gw_tx {
                    let _ = tx.try_send(Msg::Reject { call });
                }
                return;
            }
            println!(
                "incoming call {call} from {from}{}",
                from_name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            st.call = Some(CallInfo::new(Some(call), from, from_name, Direction::In));
            st.ringer = Some(agent.audio.ring());
            if let Some(secs) = agent.opts.auto_answer {
                let agent2 = agent.clone();
                st.auto_answer = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    let _ = answer(&agent2);
                }));
            }
        }
        Msg::Connect { call, media } if st.consult.as_ref().is_some_and(|c| c.id == Some(call)) => {
            if let Some(c) = st.consult.as_mut() {
                c.state = "connecting";
                c.answered_at = Some(Instant::now());
            }
            if media.dial {
                let agent = agent.clone();
                tokio::spawn(async move { dial_media(agent, call, media).await });
            } else {
                agent.expect.send_replace(Some((call, media)));
            }
        }
        Msg::Connect { call, media } => {
            let Some(c) = st.call.as_mut().filter(|c| c.id == Some(call)) else {
                return;
            };
            c.state = "connecting";
            c.answered_at = Some(Instant::now());
            c.relayed = media.relayed;
            if let Some(r) = st.ringer.take() {
                r.abort();
            }
            if media.dial {
                let agent = agent.clone();
                tokio::spawn(async move { dial_media(agent, call, media).await });
            } else {
                agent.expect.send_replace(Some((call, media)));
            }
        }
        Msg::Ended { call, reason } if st.consult.as_ref().is_some_and(|c| c.id == Some(call)) => {
            println!("consultation call {call} ended: {}", end_reason(reason));
            st.end_consult();
        }
        Msg::Ended { call, reason } if st.call.as_ref().is_some_and(|c| c.id == Some(call)) => {
            println!("call {call} ended: {}", end_reason(reason));
            end_call(&mut st, end_reason(reason));
            // The held party left during a consultation: the consultation
            // becomes the call (as the gateway sees it too).
            if reason != EndReason::Transferred {
                if let Some(c) = st.consult.take() {
                    st.call = Some(c);
                    st.session = st.consult_session.take();
                    let st = &mut *st;
                    std::mem::swap(&mut st.hold, &mut st.consult_hold);
                    std::mem::swap(&mut st.record, &mut st.consult_record);
                }
            }
        }
        Msg::Feature { req, message } => {
            if st.call.as_ref().is_some_and(|c| c.id.is_none()) {
                st.call = None;
            }
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Ok(json!({"ok": true, "feature": message})));
            }
        }
        Msg::Settings { settings } => st.settings = settings,
        Msg::MessageWaiting { voicemails } => {
            if voicemails > st.voicemail_waiting {
                println!("{voicemails} voicemail(s) waiting");
            }
            st.voicemail_waiting = voicemails;
        }
        m @ (Msg::Voicemails { .. } | Msg::VoicemailChunk { .. }) => {
            let req = match &m {
                Msg::Voicemails { req, .. } | Msg::VoicemailChunk { req, .. } => *req,
                _ => 0,
            };
            if let Some(d) = st.vm_reqs.remove(&req) {
                let _ = d.send(Ok(m));
            }
        }
        Msg::Error {
            req: Some(req),
            message,
            ..
        } if st.vm_reqs.contains_key(&req) => {
            if let Some(d) = st.vm_reqs.remove(&req) {
                let _ = d.send(Err(message));
            }
        }
        Msg::Transferring { req, call, to } => {
            println!("call {call}: transferring to {to}");
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Ok(json!({"ok": true, "call": call, "transferring_to": to})));
            }
        }
        Msg::TransferFailed {
            req, call, message, ..
        } => {
            if st.consult.as_ref().is_some_and(|c| c.id.is_none()) {
                st.consult = None;
            }
            if let Some(c) = st.call.as_mut().filter(|c| c.id == Some(call)) {
                println!("call {call}: transfer failed ({message}); the call is back with you");
                c.state = "connected";
                st.hold
                    .holding
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Err(format!("transfer failed: {message}")));
            }
        }
        Msg::Replaced { old, new, peer } if st.call.as_ref().is_some_and(|c| c.id == Some(old)) => {
            println!("call {old} continues as call {new} with {peer}");
            st.session = None;
            st.held_by_peer = false;
            if let Some(c) = st.call.as_mut() {
                c.id = Some(new);
                c.peer = peer;
                c.state = "connecting";
            }
        }
        Msg::Held { call, on } if st.call.as_ref().is_some_and(|c| c.id == Some(call)) => {
            println!(
                "call {call} {}",
                if on {
                    "put on hold by the other end"
                } else {
                    "resumed"
                }
            );
            st.held_by_peer = on;
        }
        Msg::Forwarded { call, to } => {
            if let Some(c) = st.call.as_mut().filter(|c| c.id == Some(call)) {
                println!("call {call}: no answer, forwarded to {to}");
                c.peer = to;
            }
        }
        Msg::PickedUp { req, call, from } => {
            if let Some(c) = st.call.as_mut().filter(|c| c.id.is_none()) {
                *c = CallInfo::new(Some(call), from.clone(), None, Direction::In);
                c.state = "answering";
            }
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Ok(
                    json!({"ok": true, "call": call, "picked_up_from": from}),
                ));
            }
        }
        Msg::Text {
            id,
            from,
            body,
            sent_ms,
        } if !st.inbox.iter().any(|t| t["id"] == id) => {
            println!("message from {from}: {body}");
            st.inbox
                .push(json!({"id": id, "from": from, "body": body, "sent_ms": sent_ms}));
        }
        Msg::TextSent { req, id } => {
            if let Some(d) = st.texts.remove(&req) {
                let _ = d.send(Ok(json!({"ok": true, "id": id})));
            }
        }
        Msg::Error {
            req: Some(req),
            message,
            ..
        } if st.texts.contains_key(&req) => {
            if let Some(d) = st.texts.remove(&req) {
                let _ = d.send(Err(message));
            }
        }
        Msg::Error {
            req: Some(req),
            message,
            ..
        } if st.dials.contains_key(&req) => {
            if let Some(d) = st.dials.remove(&req) {
                let _ = d.send(Err(message));
            }
        }
        Msg::Error { code, message, .. } => {
            tracing::warn!("gateway error {code}: {message}");
        }
        _ => {}
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
        EndReason::MediaFailed => "media-failed",
        EndReason::Shutdown => "gateway-shutdown",
        EndReason::AnsweredElsewhere => "answered-elsewhere",
        EndReason::Forwarded => "forwarded",
        EndReason::Transferred => "transferred",
    }
}

/// Tear down the current call locally and remember how it went.
fn end_call(st: &mut State, reason: &str) {
    let (recording, recording_error) = finish_recording(&st.record);
    st.hold
        .holding
        .store(false, std::sync::atomic::Ordering::Relaxed);
    st.held_by_peer = false;
    if let Some(r) = st.ringer.take() {
        r.abort();
    }
    if let Some(a) = st.auto_answer.take() {
        a.abort();
    }
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
            "timing": c.timing(),
            "recording": recording,
            "recording_error": recording_error,
            "media": stats,
        }));
    }
}

/// Dialling end: connect to the peer (or the forwarder) for media.
async fn dial_media(agent: Arc<Agent>, call: CallId, plan: MediaPlan) {
    let res = async {
        let addr: SocketAddr = plan
            .peer_addr
            .as_deref()
            .context("no peer address in the media plan")?
            .parse()
            .context("bad peer address in the media plan")?;
        let cfg = endpoint::client_config(&agent.id, Some(plan.peer_fp.clone()))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            agent
                .endpoint
                .connect_with(cfg, addr, endpoint::SERVER_NAME)?,
        )
        .await
        .context("the peer did not answer within 5 s")??;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(
            &mut send,
            &Msg::MediaHello {
                call: plan.flow(call),
                token: plan.token.clone(),
            },
            MAX_MESSAGE,
        )
        .await?;
        let body = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut recv, MAX_MESSAGE))
            .await
            .context("no media answer within 5 s")??
            .context("the peer closed the media stream")?;
        match Msg::from_cbor(&body)? {
            Msg::MediaOk { call: c } if c == plan.flow(call) => Ok::<_, anyhow::Error>(conn),
            other => bail!("unexpected media answer {:?}", other.kind()),
        }
    }
    .await;
    install_session(&agent, call, plan.flow(call), res);
}

/// Accepting end: take media connections from the expected peer only.
async fn accept_media(agent: Arc<Agent>) {
    while let Some(incoming) = agent.endpoint.accept().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let res = accept_one(&agent, conn).await;
            match res {
                Ok((call, flow, conn)) => install_session(&agent, call, flow, Ok(conn)),
                Err(e) => tracing::info!("refused a media connection: {e:#}"),
            }
        });
    }
}

async fn accept_one(
    agent: &Arc<Agent>,
    conn: quinn::Connection,
) -> Result<(CallId, CallId, quinn::Connection)> {
    let fp = peer_fingerprint(&conn).context("no certificate")?;
    let mut rx = agent.expect.subscribe();
    // The peer may be quicker than the gateway's Connect to us: wait a bit.
    let plan = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|p| p.as_ref().is_some_and(|(_, m)| m.peer_fp == fp)),
    )
    .await
    .context("no call expects this peer")?
    .context("agent stopping")?
    .clone();
    let Some((call, plan)) = plan else {
        bail!("no call expects this peer");
    };
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
        .await
        .context("no media stream within 5 s")??;
    let body = read_frame(&mut recv, MAX_MESSAGE)
        .await?
        .context("the peer closed the media stream")?;
    let flow = plan.flow(call);
    match Msg::from_cbor(&body)? {
        Msg::MediaHello { call: c, token } if c == flow && token == plan.token => {}
        _ => {
            conn.close(quinn::VarInt::from_u32(1), b"bad media credential");
            bail!("wrong media credential");
        }
    }
    write_frame(&mut send, &Msg::MediaOk { call: flow }, MAX_MESSAGE).await?;
    Ok((call, flow, conn))
}

/// Start the media of `call` on `conn`; `flow` is the id on its datagrams.
fn install_session(
    agent: &Arc<Agent>,
    call: CallId,
    flow: CallId,
    conn: Result<quinn::Connection>,
) {
    let mut st = agent.lock();
    if st.consult.as_ref().is_some_and(|c| c.id == Some(call)) {
        match conn.and_then(|conn| {
            Session::start(
                conn,
                flow,
                agent.audio.source.clone(),
                agent.audio.sink.clone(),
                st.consult_record.clone(),
                st.consult_hold.clone(),
            )
        }) {
            Ok(s) => {
                st.consult_session = Some(s);
                if let Some(c) = st.consult.as_mut() {
                    c.state = "connected";
                    c.connected_at = Some(Instant::now());
                }
                println!("consultation call {call} connected");
            }
            Err(e) => {
                tracing::warn!("consultation call {call}: media failed: {e:#}");
                if let Some(tx) = &st.gw_tx {
                    let _ = tx.try_send(Msg::Hangup { call });
                }
                st.end_consult();
            }
        }
        return;
    }
    let current = st.call.as_ref().is_some_and(|c| c.id == Some(call));
    match conn {
        Ok(conn) if current => {
            match Session::start(
                conn,
                flow,
                agent.audio.source.clone(),
                agent.audio.sink.clone(),
                st.record.clone(),
                st.hold.clone(),
            ) {
                Ok(s) => {
                    st.session = Some(s);
                    if let Some(dir) = &agent.opts.record_dir {
                        let peer = st.call.as_ref().map(|c| c.peer.clone()).unwrap_or_default();
                        if let Err(e) = start_recording(&st.record, dir, &peer) {
                            tracing::warn!("cannot record call {call}: {e}");
                        }
                    }
                    if let Some(c) = st.call.as_mut() {
                        c.state = "connected";
                        c.connected_at = Some(Instant::now());
                        c.media_started_unix_ms = calls::unix_ms_now();
                    }
                    agent.expect.send_replace(None);
                    println!("call {call} connected");
                }
                Err(e) => fail_media(&mut st, call, &format!("{e:#}")),
            }
        }
        Ok(conn) => conn.close(quinn::VarInt::from_u32(0), b"call already over"),
        Err(e) if current => fail_media(&mut st, call, &format!("{e:#}")),
        Err(_) => {}
    }
}

fn fail_media(st: &mut State, call: CallId, why: &str) {
    tracing::warn!("call {call}: media failed: {why}");
    if let Some(tx) = &st.gw_tx {
        let _ = tx.try_send(Msg::Hangup { call });
    }
    end_call(st, "media-failed");
}

/// How long the gateway has to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the gateway got no good answer.
#[derive(Debug)]
enum RequestError {
    /// The request does not fit the station's state (the caller's words).
    Invalid(String),
    /// No connection to the gateway to send it on.
    NotConnected,
    /// The gateway refused it, or the connection was lost (the reason).
    Refused(String),
    /// No answer within [`REQUEST_TIMEOUT`].
    NoAnswer,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Invalid(m) | RequestError::Refused(m) => f.write_str(m),
            RequestError::NotConnected => f.write_str("not connected to the gateway"),
            RequestError::NoAnswer => write!(
                f,
                "the gateway did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        }
    }
}

/// A control reply: `Invalid` and `NotConnected` as they are, a refusal
/// worded by `refused`, and no answer as `no_answer`.
fn reply_error(e: RequestError, refused: impl FnOnce(String) -> String, no_answer: &str) -> Value {
    match e {
        RequestError::Refused(m) => control::error(refused(m)),
        RequestError::NoAnswer => control::error(format!(
            "{no_answer} within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
        other => control::error(other),
    }
}

/// Ask the gateway something and wait, at most [`REQUEST_TIMEOUT`], for
/// its answer. Under the state lock, `make_msg` checks that the request
/// fits (its `Err` is returned as [`RequestError::Invalid`]) and builds the
/// message for a fresh request id; once that message is queued, `sent`
/// makes the local changes that go with it, and the reply is parked in the
/// map `pending` picks, where [`on_gateway_msg`] delivers it.
async fn request<T>(
    agent: &Agent,
    pending: fn(&mut State) -> &mut Pending<T>,
    make_msg: impl FnOnce(&State, u64) -> std::result::Result<Msg, String>,
    sent: impl FnOnce(&mut State),
) -> std::result::Result<T, RequestError> {
    let (req, rx) = {
        let mut st = agent.lock();
        st.next_req += 1;
        let req = st.next_req;
        let msg = make_msg(&st, req).map_err(RequestError::Invalid)?;
        let Some(tx) = st.gw_tx.clone() else {
            return Err(RequestError::NotConnected);
        };
        if tx.try_send(msg).is_err() {
            return Err(RequestError::NotConnected);
        }
        sent(&mut st);
        let (dtx, drx) = oneshot::channel();
        pending(&mut st).insert(req, dtx);
        (req, drx)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(RequestError::Refused(e)),
        // Timed out (or the reply was dropped unsent): forget the request.
        Ok(Err(_)) | Err(_) => {
            pending(&mut agent.lock()).remove(&req);
            Err(RequestError::NoAnswer)
        }
    }
}

/// A voicemail request: no local checks or changes.
async fn vm_request(
    agent: &Agent,
    make: impl FnOnce(u64) -> Msg,
) -> std::result::Result<Msg, RequestError> {
    request(agent, |st| &mut st.vm_reqs, |_, req| Ok(make(req)), |_| {}).await
}

/// Fetch a whole voicemail file from the gateway.
async fn fetch_voicemail(agent: &Arc<Agent>, id: u64) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        let offset = bytes.len() as u64;
        match vm_request(agent, |req| Msg::VoicemailFetch { req, id, offset })
            .await
            .map_err(|e| e.to_string())?
        {
            Msg::VoicemailChunk { total, data, .. } => {
                if data.is_empty() || bytes.len() as u64 + data.len() as u64 > total {
                    return Err("the gateway sent a broken voicemail".into());
                }
                bytes.extend_from_slice(&data);
                if bytes.len() as u64 == total {
                    return Ok(bytes);
                }
            }
            _ => return Err("unexpected reply".into()),
        }
    }
}

/// Play voicemail `id` (or every unheard one, oldest first) on the output.
async fn play_voicemail(agent: &Arc<Agent>, id: Option<u64>) -> Value {
    if agent.lock().call.is_some() {
        return control::error("hang up first");
    }
    let ids: Vec<(u64, String)> = match vm_request(agent, |req| Msg::VoicemailList { req }).await {
        Ok(Msg::Voicemails { items, .. }) => items
            .into_iter()
            .filter(|v| id.map_or(!v.heard, |want| v.id == want))
            .map(|v| (v.id, v.from))
            .collect(),
        Ok(_) => return control::error("unexpected reply"),
        Err(e) => return control::error(e),
    };
    if ids.is_empty() {
        return match id {
            Some(id) => control::error(format!("no voicemail {id}")),
            None => control::error("no new voicemail"),
        };
    }
    let mut pcm = Vec::new();
    for (vid, _) in &ids {
        let bytes = match fetch_voicemail(agent, *vid).await {
            Ok(b) => b,
            Err(e) => return control::error(format!("voicemail {vid}: {e}")),
        };
        match keyline_media::read_ogg_opus_bytes(&bytes) {
            Ok(p) => pcm.extend(p),
            Err(e) => return control::error(format!("voicemail {vid}: {e}")),
        }
        // A short pause between messages.
        pcm.extend(std::iter::repeat_n(0i16, FRAME_SAMPLES * 25));
    }
    let seconds = pcm.len() as f64 / 48_000.0;
    let task = agent.audio.play(pcm);
    if let Some(old) = agent.lock().playback.replace(task) {
        old.abort();
    }
    json!({
        "ok": true,
        "playing": ids.iter().map(|(i, f)| json!({"id": i, "from": f})).collect::<Vec<_>>(),
        "seconds": seconds,
    })
}

/// Attended transfer, first step: hold the call and call `target`.
async fn consult(agent: &Arc<Agent>, target: &str) -> Value {
    let made = request(
        agent,
        |st| &mut st.dials,
        |st, req| {
            let call = connected_call(st).ok_or("no connected call to consult about")?;
            if st.consult.is_some() {
                return Err("already consulting".into());
            }
            Ok(Msg::Consult {
                req,
                call,
                target: target.to_string(),
            })
        },
        |st| {
            st.hold
                .holding
                .store(true, std::sync::atomic::Ordering::Relaxed);
            st.consult = Some(CallInfo::new(
                None,
                target.to_string(),
                None,
                Direction::Out,
            ));
        },
    )
    .await;
    match made {
        Ok(v) => v,
        Err(RequestError::Refused(e)) => {
            agent.lock().end_consult();
            control::error(format!("cannot consult {target}: {e}"))
        }
        Err(e) => reply_error(e, |e| e, "the gateway did not answer"),
    }
}

/// Blind transfer of the connected call to `target`; the other end hears
/// the hold music until the target answers.
async fn transfer(agent: &Arc<Agent>, target: &str) -> Value {
    let made = request(
        agent,
        |st| &mut st.dials,
        |st, req| {
            let call = connected_call(st).ok_or("no connected call to transfer")?;
            Ok(Msg::Transfer {
                req,
                call,
                target: target.to_string(),
            })
        },
        |st| {
            st.hold
                .holding
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(c) = st.call.as_mut() {
                c.state = "transferring";
            }
        },
    )
    .await;
    made.unwrap_or_else(|e| reply_error(e, |e| e, "the gateway did not answer the transfer"))
}

/// The id of the call in progress, if it is connected.
fn connected_call(st: &State) -> Option<CallId> {
    st.call
        .as_ref()
        .filter(|c| c.state == "connected")
        .and_then(|c| c.id)
}

fn answer(agent: &Arc<Agent>) -> Value {
    let mut st = agent.lock();
    let Some(c) = st.call.as_mut() else {
        return control::error("no call is ringing");
    };
    if c.direction != Direction::In || c.state != "alerting" {
        return control::error("no call is ringing");
    }
    let Some(call) = c.id else {
        return control::error("no call is ringing");
    };
    c.state = "answering";
    if let Some(a) = st.auto_answer.take() {
        a.abort();
    }
    match &st.gw_tx {
        Some(tx) if tx.try_send(Msg::Answer { call }).is_ok() => json!({"ok": true, "call": call}),
        _ => control::error("not connected to the gateway"),
    }
}

fn status(agent: &Arc<Agent>) -> Value {
    let st = agent.lock();
    let (link, code, ext, name, error) = match &st.link {
        None | Some(Link::Searching) => ("searching", None, None, None, None),
        Some(Link::Connecting(addr)) => (
            "connecting",
            None,
            None,
            None,
            Some(format!("connecting to {addr}")),
        ),
        Some(Link::Pending { code }) => ("pending", Some(code.clone()), None, None, None),
        Some(Link::Registered { ext, name }) => {
            ("registered", None, Some(ext.clone()), name.clone(), None)
        }
        Some(Link::Disconnected(e)) => ("disconnected", None, None, None, Some(e.clone())),
    };
    let call = st.call.as_ref().map(|c| {
        json!({
            "id": c.id,
            "peer": c.peer,
            "peer_name": c.peer_name,
            "direction": c.direction.as_str(),
            "state": c.state,
            "seconds": c.connected_at.unwrap_or(c.started).elapsed().as_secs_f64(),
            "relayed": c.relayed,
            "timing": c.timing(),
            "on_hold": st.hold.holding.load(std::sync::atomic::Ordering::Relaxed),
            "held_by_peer": st.held_by_peer,
            "recording": recording_path(&st.record),
            "recording_error": recording_error(&st.record),
            "media": st.session.as_ref().map(|s| s.stats()),
        })
    });
    json!({
        "ok": true,
        "state": link,
        "code": code,
        "ext": ext,
        "name": name,
        "error": error,
        "gateway": st.gateway.map(|g| g.to_string()),
        "fingerprint": agent.id.fingerprint,
        "listen": agent.endpoint.local_addr().ok().map(|a| a.to_string()),
        "call": call,
        "consult": st.consult.as_ref().map(|c| json!({
            "id": c.id,
            "peer": c.peer,
            "state": c.state,
        })),
        "last_call": st.last_call,
        "settings": st.settings,
        "messages_waiting": st.inbox.len(),
        "voicemail_waiting": st.voicemail_waiting,
        "playing_voicemail": st.playback.as_ref().is_some_and(|p| !p.is_finished()),
    })
}

async fn handle_control(agent: &Arc<Agent>, req: Value) -> Value {
    match req.get("cmd").and_then(Value::as_str).unwrap_or("") {
        "status" => status(agent),
        "voicemail-list" => match vm_request(agent, |req| Msg::VoicemailList { req }).await {
            Ok(Msg::Voicemails { items, .. }) => json!({"ok": true, "voicemails": items}),
            Ok(_) => control::error("unexpected reply"),
            Err(e) => control::error(e),
        },
        "voicemail-delete" => {
            let Some(id) = req.get("id").and_then(Value::as_u64) else {
                return control::error("voicemail delete needs an id");
            };
            match vm_request(agent, |req| Msg::VoicemailDelete { req, id }).await {
                Ok(Msg::Voicemails { items, .. }) => json!({"ok": true, "voicemails": items}),
                Ok(_) => control::error("unexpected reply"),
                Err(e) => control::error(e),
            }
        }
        "voicemail-play" => play_voicemail(agent, req.get("id").and_then(Value::as_u64)).await,
        "consult" => {
            let Some(target) = req.get("target").and_then(Value::as_str) else {
                return control::error("consult needs a target number");
            };
            consult(agent, target).await
        }
        "consult-complete" => request(
            agent,
            |st| &mut st.dials,
            |st, req| {
                if st.consult.as_ref().is_none_or(|c| c.state != "connected") {
                    return Err("no answered consultation call to join".into());
                }
                Ok(Msg::ConsultComplete { req })
            },
            |_| {},
        )
        .await
        .unwrap_or_else(|e| {
            reply_error(
                e,
                |e| format!("transfer failed: {e}"),
                "the gateway did not answer",
            )
        }),
        "consult-cancel" => {
            let mut st = agent.lock();
            let Some(c) = st.consult.as_ref() else {
                return control::error("no consultation call");
            };
            if let (Some(call), Some(tx)) = (c.id, &st.gw_tx) {
                let _ = tx.try_send(Msg::Hangup { call });
            }
            st.end_consult();
            json!({"ok": true})
        }
        "transfer" => {
            let Some(target) = req.get("target").and_then(Value::as_str) else {
                return control::error("transfer needs a target number");
            };
            transfer(agent, target).await
        }
        "hold" | "resume" => {
            let on = req["cmd"] == "hold";
            let mut st = agent.lock();
            let Some(call) = connected_call(&st) else {
                return control::error("no connected call");
            };
            if st.held_by_peer {
                return control::error("the other end holds this call");
            }
            let Some(tx) = st.gw_tx.clone() else {
                return control::error("not connected to the gateway");
            };
            if tx.try_send(Msg::Hold { call, on }).is_err() {
                return control::error("not connected to the gateway");
            }
            st.hold
                .holding
                .store(on, std::sync::atomic::Ordering::Relaxed);
            st.held_by_peer = false;
            json!({"ok": true, "call": call, "on_hold": on})
        }
        "record" => {
            let on = req.get("on").and_then(Value::as_bool).unwrap_or(true);
            let st = agent.lock();
            let Some(c) = st.call.as_ref().filter(|c| c.state == "connected") else {
                return control::error("no connected call to record");
            };
            calls::record_command(
                &st.record,
                on,
                &c.peer,
                agent.opts.record_dir.as_deref(),
                &agent.state_dir,
            )
        }
        "answer" => answer(agent),
        "hangup" => {
            let mut st = agent.lock();
            let Some(c) = st.call.as_ref() else {
                return control::error("no call to hang up");
            };
            let msg = match (c.id, c.direction, c.state) {
                (Some(call), Direction::In, "alerting") => Some(Msg::Reject { call }),
                (Some(call), _, _) => Some(Msg::Hangup { call }),
                (None, _, _) => None,
            };
            if let (Some(m), Some(tx)) = (msg, &st.gw_tx) {
                let _ = tx.try_send(m);
            }
            end_call(&mut st, "local-hangup");
            json!({"ok": true})
        }
        "dial" => {
            let Some(number) = req.get("number").and_then(Value::as_str) else {
                return control::error("dial needs a number");
            };
            if req.get("lookup").and_then(Value::as_bool) == Some(true) {
                return control::error("look-up-only calls (dial --lookup) are for standalone terminals (keyline-agent terminal); an office station calls through its gateway");
            }
            // Codes the station handles itself, in a call or not.
            let in_call = agent.lock().call.is_some();
            if number == "*97" {
                return play_voicemail(agent, None).await;
            }
            if let Some(target) = number.strip_prefix("*2").filter(|_| in_call) {
                return consult(agent, target).await;
            }
            if let Some(target) = number.strip_prefix("##") {
                return transfer(agent, target).await;
            }
            let dialled = request(
                agent,
                |st| &mut st.dials,
                |st, req| {
                    if st.call.is_some() {
                        return Err("already in a call; hang up first".into());
                    }
                    Ok(Msg::Dial {
                        req,
                        number: number.to_string(),
                    })
                },
                |st| {
                    st.call = Some(CallInfo::new(
                        None,
                        number.to_string(),
                        None,
                        Direction::Out,
                    ))
                },
            )
            .await;
            if let Err(RequestError::NoAnswer) = dialled {
                let mut st = agent.lock();
                if st.call.as_ref().is_some_and(|c| c.id.is_none()) {
                    st.call = None;
                }
            }
            dialled.unwrap_or_else(|e| {
                reply_error(
                    e,
                    |e| format!("cannot call {number}: {e}"),
                    "the gateway did not answer the dial request",
                )
            })
        }
        "message" => {
            let (Some(to), Some(body)) = (
                req.get("to").and_then(Value::as_str),
                req.get("body").and_then(Value::as_str),
            ) else {
                return control::error("message needs a number and a text");
            };
            request(
                agent,
                |st| &mut st.texts,
                |_, req| {
                    Ok(Msg::SendText {
                        req,
                        to: to.to_string(),
                        body: body.to_string(),
                    })
                },
                |_| {},
            )
            .await
            .unwrap_or_else(|e| {
                reply_error(
                    e,
                    |e| format!("message not sent: {e}"),
                    "the gateway did not confirm the message",
                )
            })
        }
        "messages" => {
            // Reading them is what lets the gateway forget them.
            let mut st = agent.lock();
            let read: Vec<Value> = std::mem::take(&mut st.inbox);
            let ids: Vec<u64> = read.iter().filter_map(|t| t["id"].as_u64()).collect();
            if !ids.is_empty() {
                if let Some(tx) = &st.gw_tx {
                    let _ = tx.try_send(Msg::TextRead { ids });
                }
            }
            json!({"ok": true, "messages": read})
        }
        "" => control::error("missing \"cmd\""),
        other => control::error(format!("unknown command {other:?}")),
    }
}
