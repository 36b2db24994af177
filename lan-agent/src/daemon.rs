//! The office station: it finds the gateway (mDNS or `--gateway`), enrols,
//! stays registered and reconnects with backoff. Its calls are decided by
//! the phone core ([`keyline_proto::phone`], through [`crate::station`]);
//! this adapter turns the gateway's messages into the core's link inputs,
//! sends what the core asks, and makes each call's end-to-end media
//! connection. Texts, voicemail and settings kept on the gateway are
//! handled here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_media::FRAME_SAMPLES;
use keyline_net::lifecycle::{self, Signals};
use keyline_net::{control, endpoint, mdns, medialink, pairing_code, peer_fingerprint, Identity};
use keyline_proto::codec::{read_frame, write_frame, CodecError};
use keyline_proto::msg::{CallId, EndReason, LineSettings, MediaPlan, Msg, Role};
use keyline_proto::phone::{CallKey, Command, Config, Flavor, LinkIn, LinkOut, MediaIn};
use keyline_proto::{MAX_MESSAGE, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{self, Request};
use crate::audio::LocalAudio;
use crate::cli::EndpointArgs;
use crate::station::{self, Station, Todo};

/// Options of `keyline-agent run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    pub gateway: Option<String>,
    pub mdns: bool,
    /// What it shares with the internet terminal: devices, answering,
    /// naming, recording.
    pub endpoint: EndpointArgs,
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
    /// The calls: the phone core and what both modes keep around it.
    station: Station<MediaPlan>,
    /// Call handling kept on the gateway for this extension.
    settings: LineSettings,
    /// Texts received and not yet read (the gateway keeps them too).
    inbox: Vec<Value>,
    /// Requests waiting for a TextSent or an Error.
    texts: Pending<Value>,
    /// Unheard voicemails in this extension's mailbox on the gateway.
    voicemail_waiting: u32,
    /// Voicemail requests waiting for their reply.
    vm_reqs: Pending<Msg>,
    /// A voicemail being played on the output.
    playback: Option<tokio::task::JoinHandle<()>>,
}

impl State {
    /// Set the link state and tell subscribers.
    fn set_link(&mut self, link: Link) {
        let ev = match &link {
            Link::Searching => json!({"event": "link", "state": "searching"}),
            Link::Connecting(a) => {
                json!({"event": "link", "state": "connecting", "gateway": a.to_string()})
            }
            Link::Pending { code } => json!({"event": "link", "state": "pending", "code": code}),
            Link::Registered { ext, name } => {
                json!({"event": "link", "state": "registered", "ext": ext, "name": name})
            }
            Link::Disconnected(e) => json!({"event": "link", "state": "disconnected", "error": e}),
        };
        self.station.events.publish(ev);
        self.link = Some(link);
    }
}

struct Agent {
    id: Identity,
    endpoint: quinn::Endpoint,
    state_dir: PathBuf,
    opts: RunOptions,
    st: Mutex<State>,
    /// The call we expect a peer to connect for: its key, id and plan.
    expect: watch::Sender<Option<(CallKey, CallId, MediaPlan)>>,
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
    let endpoint = keyline_net::make_endpoint(opts.endpoint.bind, &id)?;
    let (expect, _) = watch::channel(None);
    let events = control::Events::new();
    let (audio, station) = station::open(
        &opts.endpoint,
        &state_dir,
        Config::new(Flavor::Office),
        events.clone(),
    )?;
    let wake = station.wake.clone();
    let agent = Arc::new(Agent {
        id,
        endpoint,
        state_dir: state_dir.clone(),
        opts,
        st: Mutex::new(State {
            link: None,
            gateway: None,
            gw_tx: None,
            station,
            settings: LineSettings::default(),
            inbox: Vec::new(),
            texts: HashMap::new(),
            voicemail_waiting: 0,
            vm_reqs: HashMap::new(),
            playback: None,
        }),
        expect,
        audio,
        gateways: Mutex::new(Vec::new()),
        found: tokio::sync::Notify::new(),
    });

    station::start(&agent, ctl, events, wake);
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
    let in_call = {
        let mut st = agent.lock();
        let in_call = st.station.phone.call().is_some();
        if st.station.phone.consultation().is_some() {
            drop(st.station.command(Command::ConsultCancel));
        }
        if in_call {
            drop(st.station.command(Command::Hangup));
        }
        drive(&agent, &mut st);
        in_call
    };
    if in_call {
        // Let the hang-up reach the gateway.
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
        agent.lock().set_link(Link::Searching);
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
                            agent.lock().set_link(Link::Disconnected(format!("{e:#}")));
                        }
                    }
                }
                registered
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                agent.lock().set_link(Link::Disconnected(format!("{e:#}")));
                false
            }
        };
        {
            let mut st = agent.lock();
            st.gw_tx = None;
            for (_, d) in st.texts.drain() {
                let _ = d.send(Err("lost the connection to the gateway".into()));
            }
            for (_, d) in st.vm_reqs.drain() {
                let _ = d.send(Err("lost the connection to the gateway".into()));
            }
            st.station.phone.handle_link(
                Instant::now(),
                LinkIn::Down {
                    reason: "connection to the gateway lost".into(),
                },
            );
            drive(&agent, &mut st);
            if !matches!(st.link, Some(Link::Disconnected(_))) {
                st.set_link(Link::Disconnected("connection to the gateway lost".into()));
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
    agent.lock().set_link(Link::Connecting(addr));
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
            name: agent.opts.endpoint.name.clone(),
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
                agent.lock().set_link(Link::Pending { code: mine.clone() });
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
                agent.lock().set_link(Link::Registered { ext, name });
            }
            other => on_gateway_msg(agent, other),
        }
    };
    writer.abort();
    conn.close(quinn::VarInt::from_u32(0), b"bye");
    result.map(|()| registered)
}

/// A message from the gateway: call messages go to the phone core; texts,
/// voicemail and settings are handled here.
fn on_gateway_msg(agent: &Arc<Agent>, msg: Msg) {
    let mut st = agent.lock();
    let link = match msg {
        Msg::Ringing { req, call, callee } => LinkIn::Ringing {
            req,
            call,
            callee,
            via: Vec::new(),
        },
        Msg::DialFailed {
            req,
            reason,
            message,
        } => LinkIn::Failed {
            req,
            message: if message == reason.describe() {
                message
            } else {
                format!("{message} ({})", reason.describe())
            },
            ended: "failed".into(),
        },
        Msg::Ring {
            call,
            from,
            from_name,
        } => {
            if let Some(p) = st.playback.take() {
                p.abort();
            }
            LinkIn::Incoming {
                call,
                from,
                from_name,
                number: None,
                via: Vec::new(),
            }
        }
        Msg::Connect { call, media } => LinkIn::Answered {
            req: None,
            call,
            relayed: media.relayed,
            plan: media,
            peer: None,
        },
        Msg::Ended { call, reason } => LinkIn::Ended {
            call,
            reason: end_reason(reason).into(),
            transferred: reason == EndReason::Transferred,
        },
        Msg::Feature { req, message } => LinkIn::Feature { req, message },
        Msg::Transferring { req, call, to } => LinkIn::Transferring { req, call, to },
        Msg::TransferFailed {
            req, call, message, ..
        } => LinkIn::TransferFailed { req, call, message },
        Msg::Replaced { old, new, peer } => LinkIn::Replaced { old, new, peer },
        Msg::Held { call, on } => LinkIn::Held { call, on },
        Msg::Forwarded { call, to } => LinkIn::Forwarded { call, to },
        Msg::PickedUp { req, call, from } => LinkIn::PickedUp { req, call, from },
        Msg::Settings { settings } => {
            st.station
                .events
                .publish(json!({"event": "settings", "settings": settings}));
            st.settings = settings;
            return;
        }
        Msg::MessageWaiting { voicemails } => {
            if voicemails > st.voicemail_waiting {
                println!("{voicemails} voicemail(s) waiting");
            }
            if voicemails != st.voicemail_waiting {
                st.station
                    .events
                    .publish(json!({"event": "voicemail-waiting", "count": voicemails}));
            }
            st.voicemail_waiting = voicemails;
            return;
        }
        m @ (Msg::Voicemails { .. } | Msg::VoicemailChunk { .. } | Msg::Contacts { .. }) => {
            let req = match &m {
                Msg::Voicemails { req, .. }
                | Msg::VoicemailChunk { req, .. }
                | Msg::Contacts { req, .. } => *req,
                _ => 0,
            };
            if let Some(d) = st.vm_reqs.remove(&req) {
                let _ = d.send(Ok(m));
            }
            return;
        }
        Msg::Text {
            id,
            from,
            body,
            sent_ms,
        } => {
            if !st.inbox.iter().any(|t| t["id"] == id) {
                println!("message from {from}: {body}");
                let text = json!({"id": id, "from": from, "body": body, "sent_ms": sent_ms});
                st.station
                    .events
                    .publish(json!({"event": "message", "message": text}));
                st.inbox.push(text);
            }
            return;
        }
        Msg::TextSent { req, id } => {
            if let Some(d) = st.texts.remove(&req) {
                let _ = d.send(Ok(json!({"ok": true, "id": id})));
            }
            return;
        }
        Msg::Error {
            req: Some(req),
            message,
            ..
        } => {
            if let Some(d) = st.vm_reqs.remove(&req) {
                let _ = d.send(Err(message));
            } else if let Some(d) = st.texts.remove(&req) {
                let _ = d.send(Err(message));
            } else {
                st.station.phone.handle_link(
                    Instant::now(),
                    LinkIn::Failed {
                        req,
                        message,
                        ended: "failed".into(),
                    },
                );
                drive(agent, &mut st);
            }
            return;
        }
        Msg::Error { code, message, .. } => {
            tracing::warn!("gateway error {code}: {message}");
            return;
        }
        _ => return,
    };
    st.station.phone.handle_link(Instant::now(), link);
    drive(agent, &mut st);
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

/// Carry out what the phone core asked: the shared part in the station,
/// the gateway's part here.
fn drive(agent: &Arc<Agent>, st: &mut State) {
    for todo in st.station.drain(&agent.audio) {
        match todo {
            Todo::Send(m) => {
                let msg = match m {
                    LinkOut::Dial { req, number, .. } => Msg::Dial { req, number },
                    LinkOut::Cancel { call, .. } => match call {
                        Some(call) => Msg::Hangup { call },
                        // Not named yet: the core hangs it up when it is.
                        None => continue,
                    },
                    LinkOut::Answer { call } => Msg::Answer { call },
                    LinkOut::Reject { call } | LinkOut::Busy { call } => Msg::Reject { call },
                    LinkOut::Hangup { call } => Msg::Hangup { call },
                    LinkOut::Hold { call, on } => Msg::Hold { call, on },
                    LinkOut::Transfer { req, call, target } => Msg::Transfer { req, call, target },
                    LinkOut::Consult { req, call, target } => Msg::Consult { req, call, target },
                    LinkOut::ConsultComplete { req } => Msg::ConsultComplete { req },
                    // Look-up-only calls are a terminal's; the core refuses
                    // them for a station.
                    LinkOut::Lookup { .. }
                    | LinkOut::AcceptLookup { .. }
                    | LinkOut::DeclineLookup { .. } => continue,
                };
                if let Some(tx) = &st.gw_tx {
                    if tx.try_send(msg).is_err() {
                        tracing::warn!("the gateway is not reading; a message was not sent");
                    }
                }
            }
            Todo::StartMedia { key, call, plan } => {
                if plan.dial {
                    let agent = agent.clone();
                    tokio::spawn(async move { dial_media(agent, key, call, plan).await });
                } else {
                    agent.expect.send_replace(Some((key, call, plan)));
                }
            }
            Todo::StopMedia { key } => {
                agent
                    .expect
                    .send_if_modified(|e| e.take_if(|(k, _, _)| *k == key).is_some());
            }
            Todo::RefuseLookup { .. } => {}
        }
    }
}

/// Dialling end: connect to the peer (or the forwarder) for media.
async fn dial_media(agent: Arc<Agent>, key: CallKey, call: CallId, plan: MediaPlan) {
    let flow = plan.flow(call);
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
        medialink::dial(&conn, flow, &plan.token, Duration::from_secs(5)).await?;
        Ok::<_, anyhow::Error>(conn)
    }
    .await;
    media_result(&agent, key, flow, res);
}

/// Accepting end: take media connections from the expected peer only.
async fn accept_media(agent: Arc<Agent>) {
    while let Some(incoming) = agent.endpoint.accept().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            match accept_one(&agent, conn).await {
                Ok((key, flow, conn)) => media_result(&agent, key, flow, Ok(conn)),
                Err(e) => tracing::info!("refused a media connection: {e:#}"),
            }
        });
    }
}

async fn accept_one(
    agent: &Arc<Agent>,
    conn: quinn::Connection,
) -> Result<(CallKey, CallId, quinn::Connection)> {
    let fp = peer_fingerprint(&conn).context("no certificate")?;
    let mut rx = agent.expect.subscribe();
    // The peer may be quicker than the gateway's Connect to us: wait a bit.
    let plan = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|p| p.as_ref().is_some_and(|(_, _, m)| m.peer_fp == fp)),
    )
    .await
    .context("no call expects this peer")?
    .context("agent stopping")?
    .clone();
    let Some((key, call, plan)) = plan else {
        bail!("no call expects this peer");
    };
    let flow = plan.flow(call);
    medialink::accept(&conn, flow, &plan.token, Duration::from_secs(5)).await?;
    Ok((key, flow, conn))
}

/// The media connection of call `key` is made (or not): start its session
/// and tell the core.
fn media_result(agent: &Arc<Agent>, key: CallKey, flow: CallId, conn: Result<quinn::Connection>) {
    let mut st = agent.lock();
    match conn {
        Ok(conn) => {
            st.station.install(&agent.audio, key, flow, conn, false);
            agent
                .expect
                .send_if_modified(|e| e.take_if(|(k, _, _)| *k == key).is_some());
        }
        Err(e) => {
            tracing::warn!("call {flow}: media failed: {e:#}");
            st.station.phone.handle_media(
                Instant::now(),
                MediaIn::Failed {
                    key,
                    why: format!("{e:#}"),
                    ended: None,
                },
            );
        }
    }
    drive(agent, &mut st);
}

/// How long the gateway has to answer a text or voicemail request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask the gateway something outside a call (texts, voicemail) and wait,
/// at most [`REQUEST_TIMEOUT`], for its answer, parked in the map
/// `pending` picks, where [`on_gateway_msg`] delivers it.
async fn request<T>(
    agent: &Agent,
    pending: fn(&mut State) -> &mut Pending<T>,
    make_msg: impl FnOnce(u64) -> Msg,
) -> std::result::Result<T, String> {
    let (req, rx) = {
        let mut st = agent.lock();
        let req = st.station.phone.next_request();
        let Some(tx) = st.gw_tx.clone() else {
            return Err("not connected to the gateway".into());
        };
        if tx.try_send(make_msg(req)).is_err() {
            return Err("not connected to the gateway".into());
        }
        let (dtx, drx) = oneshot::channel();
        pending(&mut st).insert(req, dtx);
        (req, drx)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        // Timed out (or the reply was dropped unsent): forget the request.
        Ok(Err(_)) | Err(_) => {
            pending(&mut agent.lock()).remove(&req);
            Err(format!(
                "the gateway did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        }
    }
}

/// A voicemail request.
async fn vm_request(
    agent: &Agent,
    make: impl FnOnce(u64) -> Msg,
) -> std::result::Result<Msg, String> {
    request(agent, |st| &mut st.vm_reqs, make).await
}

/// Fetch a whole voicemail file from the gateway.
async fn fetch_voicemail(agent: &Arc<Agent>, id: u64) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        let offset = bytes.len() as u64;
        match vm_request(agent, |req| Msg::VoicemailFetch { req, id, offset }).await? {
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
    if agent.lock().station.phone.call().is_some() {
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

/// Give the phone core a command and wait for its answer. Commands that
/// need the gateway are refused at once when there is none.
async fn command(agent: &Arc<Agent>, cmd: Command) -> Value {
    let rx = {
        let mut st = agent.lock();
        // Local, or refused by the core whatever the link (look-up-only
        // calls are a terminal's).
        let local = matches!(
            cmd,
            Command::Hangup | Command::ConsultCancel | Command::Dial { lookup: true, .. }
        );
        if !local && st.gw_tx.is_none() {
            return control::error("not connected to the gateway");
        }
        if matches!(cmd, Command::Dial { .. }) {
            if let Some(p) = st.playback.take() {
                p.abort();
            }
        }
        let rx = st.station.command(cmd);
        drive(agent, &mut st);
        rx
    };
    station::reply(rx).await
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
    let phone = &st.station.phone;
    json!({
        "ok": true,
        "api_version": api::API_VERSION,
        "state": link,
        "code": code,
        "ext": ext,
        "name": name,
        "error": error,
        "gateway": st.gateway.map(|g| g.to_string()),
        "fingerprint": agent.id.fingerprint,
        "listen": agent.endpoint.local_addr().ok().map(|a| a.to_string()),
        "call": phone.call().map(|c| st.station.call_json(c)),
        "consult": phone.consultation().map(|c| json!({
            "id": c.id,
            "peer": c.peer,
            "state": c.state.as_str(),
        })),
        "last_call": st.station.last_call,
        "settings": st.settings,
        "messages_waiting": st.inbox.len(),
        "voicemail_waiting": st.voicemail_waiting,
        "playing_voicemail": st.playback.as_ref().is_some_and(|p| !p.is_finished()),
        "audio": agent.audio.current_json(),
    })
}

impl station::Host for Agent {
    type Plan = MediaPlan;

    fn audio(&self) -> &LocalAudio {
        &self.audio
    }

    fn with_station<R>(&self, f: impl FnOnce(&mut Station<MediaPlan>) -> R) -> R {
        f(&mut self.lock().station)
    }

    fn record_dir(&self) -> Option<&std::path::Path> {
        self.opts.endpoint.record_dir.as_deref()
    }

    fn state_dir(&self) -> &std::path::Path {
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
async fn own_request(agent: &Arc<Agent>, req: Request) -> Value {
    match req {
        Request::Status => status(agent),
        Request::VoicemailList => match vm_request(agent, |req| Msg::VoicemailList { req }).await {
            Ok(Msg::Voicemails { items, .. }) => json!({"ok": true, "voicemails": items}),
            Ok(_) => control::error("unexpected reply"),
            Err(e) => control::error(e),
        },
        Request::VoicemailDelete { id } => {
            match vm_request(agent, |req| Msg::VoicemailDelete { req, id }).await {
                Ok(Msg::Voicemails { items, .. }) => json!({"ok": true, "voicemails": items}),
                Ok(_) => control::error("unexpected reply"),
                Err(e) => control::error(e),
            }
        }
        Request::VoicemailPlay { id } => play_voicemail(agent, id).await,
        Request::Contacts => match vm_request(agent, |req| Msg::ContactList { req }).await {
            Ok(Msg::Contacts { items, .. }) => json!({"ok": true, "contacts": items}),
            Ok(_) => control::error("unexpected reply"),
            Err(e) => control::error(e),
        },
        Request::Dial { number, lookup } => {
            // Codes the station handles itself, in a call or not.
            let in_call = agent.lock().station.phone.call().is_some();
            if number == "*97" {
                return play_voicemail(agent, None).await;
            }
            if let Some(target) = number.strip_prefix("*2").filter(|_| in_call) {
                let target = target.to_string();
                return command(agent, Command::Consult { target }).await;
            }
            if let Some(target) = number.strip_prefix("##") {
                let target = target.to_string();
                return command(agent, Command::Transfer { target }).await;
            }
            command(agent, Command::Dial { number, lookup }).await
        }
        Request::Message { to, body } => request(
            agent,
            |st| &mut st.texts,
            |req| Msg::SendText { req, to, body },
        )
        .await
        .unwrap_or_else(|e| control::error(format!("message not sent: {e}"))),
        Request::Messages => {
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
        other => match other.call_command() {
            Some(cmd) => command(agent, cmd).await,
            None => control::error(format!(
                "{:?} is for internet terminals; this is an office station (its forwarding and password are kept by the office gateway)",
                other.name()
            )),
        },
    }
}
