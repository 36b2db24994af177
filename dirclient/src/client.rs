//! The directory client library: what a gateway or a terminal uses to talk
//! to a `keyline-directory`.
//!
//! It runs on the caller's own quinn endpoint (one endpoint per process,
//! DESIGN §3.1) and never accepts connections itself: the media
//! connection of an answered call is made on that same endpoint, by
//! [`DirClient::dial_media`] on the calling end and by the host's accept
//! loop plus [`accept_media`] on the answering end, each end verifying the
//! other's certificate fingerprint and the per-call token the directory
//! issued.
//!
//! ```text
//! let (dir, mut events) = DirClient::connect(&endpoint, &identity, addr, pin).await?;
//! dir.login("alice", "secret").await?;
//! dir.register(&[], vec![my_lan_addr]).await?;      // refreshed automatically
//! let call = dir.call("김민준", CallOptions::default()).await?;   // follows redirects
//! let media = dir.dial_media(&endpoint, &identity, &call.plan, None).await?;
//! while let Some(ev) = events.recv().await { match ev { Event::Ring(r) => … } }
//! ```
//!
//! Every channel is bounded. Events are dropped (with a warning) when the
//! host does not drain its event channel, so a stalled host never stalls
//! the directory connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyline_net::endpoint::Checker;
use keyline_net::medialink::{self, LinkError};
use keyline_net::{endpoint, peer_fingerprint, Identity};
use keyline_proto::codec::CodecError;
use keyline_proto::dir::{
    CallId, CallPlan, CheckPlan, DeviceInfo, DirMsg, DirectPolicy, EndReason, ErrorCode,
    ForwardRule, ForwardWhen, MailId, MailKind, NumberForwards, ReqId, MAX_HOPS, MAX_MAIL_BODY,
};
use keyline_proto::msg::Role;
use keyline_proto::number::Number;
use keyline_proto::PROTOCOL_VERSION;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::wire::{
    self, next_msg, read_body, send_msg, write_body, Incoming, MsgReader, MsgWriter, WRITE_BATCH,
};

/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a directory request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the directory at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("the directory connection is closed")]
    Closed,
    #[error("the directory did not answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The directory refused the request.
    #[error("{message}")]
    Refused {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("invalid number {number:?}: {message}")]
    InvalidNumber { number: String, message: String },
}

impl ClientError {
    /// The directory's error code, when it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a call did not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nothing rang: unknown, unreachable, a forwarding loop, …
    #[error("{number}: {message}")]
    Failed {
        number: String,
        code: ErrorCode,
        message: String,
        /// A voice mail or text may be left for `number`.
        mail: bool,
    },
    /// It rang and ended without an answer.
    #[error("{number}: {}", reason.describe())]
    Ended { number: String, reason: EndReason },
    #[error("redirect loop: {}", chain.join(" -> "))]
    RedirectLoop { chain: Vec<String> },
    #[error("too many redirects (more than {}): {}", MAX_HOPS, chain.join(" -> "))]
    TooManyRedirects { chain: Vec<String> },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CallError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Failed { code, .. } => Some(*code),
            CallError::RedirectLoop { .. } => Some(ErrorCode::ForwardLoop),
            CallError::TooManyRedirects { .. } => Some(ErrorCode::TooManyHops),
            CallError::Client(c) => c.code(),
            CallError::Ended { .. } => None,
        }
    }
}

/// Why a media connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the other end is unreachable end to end ({tried}) and the rule is 'direct'")]
    Unreachable { tried: String },
    #[error("media connection failed: {0}")]
    Failed(String),
    #[error("the peer is not who the directory said (fingerprint {got})")]
    WrongPeer { got: String },
    #[error("wrong or missing media credential")]
    BadCredential,
    #[error(transparent)]
    Directory(#[from] ClientError),
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct Options {
    pub role: Role,
    pub name: Option<String>,
    /// Capacity of the event channel.
    pub events: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            role: Role::Terminal,
            name: None,
            events: 256,
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub account: String,
    /// The account's numbers, the default caller number first.
    pub numbers: Vec<String>,
    /// Give it to [`DirClient::resume`] after a reconnect.
    pub token: String,
    pub expires_in: Duration,
}

/// A registration as the directory confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub numbers: Vec<String>,
    /// The address the directory observes.
    pub observed: SocketAddr,
    /// What callers are given.
    pub candidates: Vec<SocketAddr>,
    pub ttl: Duration,
}

/// How one end of a call connects its media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    /// The directory's call id (0 for a look-up-only connection).
    pub call: CallId,
    /// This end connects (`true`) or waits for the other's connection.
    pub dial: bool,
    /// The certificate fingerprint the other end must present.
    pub peer_fp: String,
    pub peer_candidates: Vec<SocketAddr>,
    /// The secret both ends present in `MediaHello`.
    pub token: String,
    pub policy: DirectPolicy,
    /// The relay: where to connect (dialling end) or where the other end's
    /// packets come from.
    pub relay: Option<SocketAddr>,
    /// With `direct-then-relay`: how long to try end to end.
    pub fallback_after: Duration,
}

impl MediaPlan {
    fn from_wire(call: CallId, p: CallPlan) -> MediaPlan {
        MediaPlan {
            call,
            dial: p.dial,
            peer_fp: p.peer_fp,
            peer_candidates: p
                .peer_candidates
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            token: p.token,
            policy: p.policy,
            relay: p.relay.and_then(|a| a.parse().ok()),
            fallback_after: Duration::from_millis(u64::from(p.fallback_after_ms)),
        }
    }
}

/// An outgoing call the callee answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub call: CallId,
    /// The number that answered (after forwarding and redirects).
    pub number: String,
    /// The number first dialled.
    pub dialled: String,
    /// Server-side forwards of the last leg.
    pub via: Vec<String>,
    /// Numbers the call was redirected from, in order.
    pub redirected_from: Vec<String>,
    pub plan: MediaPlan,
}

/// An incoming call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    pub call: CallId,
    /// The caller's number, asserted by the directory.
    pub from: String,
    /// Our number that rings.
    pub number: String,
    /// The extension dialled after `OFFICE/` (route it to that station).
    pub ext: Option<String>,
    pub dialled: String,
    pub via: Vec<String>,
    pub caller_fp: String,
    pub caller_candidates: Vec<SocketAddr>,
    /// The hand-off the caller follows, as its `Transfer` set it: the
    /// endpoint that handed the caller on may recognise the call by it.
    pub handoff: Option<u64>,
    /// Check the direct path to the caller while ringing.
    pub checks: Option<RingChecks>,
}

/// What the directory gave both ends of a ringing call to check the
/// direct path between them with (`keyline_net::checks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChecks {
    /// The call's check key (hex).
    pub key: String,
    /// The other end's candidate addresses.
    pub candidates: Vec<SocketAddr>,
}

impl RingChecks {
    fn from_wire(p: Option<Box<CheckPlan>>) -> Option<RingChecks> {
        p.map(|p| RingChecks {
            candidates: addrs(&p.candidates),
            key: p.key,
        })
    }
}

/// A stored message delivered to us. Acknowledge it with
/// [`DirClient::ack_mail`] once it is safe; until then it is redelivered
/// at every registration on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub id: MailId,
    pub from: String,
    pub to: String,
    pub kind: MailKind,
    pub at_ms: i64,
    pub body: Vec<u8>,
}

/// A look-up result (claim 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub number: String,
    pub via: Vec<String>,
    pub plan: MediaPlan,
}

/// Progress of an outgoing call, for ringback and displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Ringing {
        call: CallId,
        number: String,
        via: Vec<String>,
        /// Check the direct path to the callee while it rings.
        checks: Option<RingChecks>,
    },
    Redirected {
        from: String,
        to: String,
    },
}

/// Options of [`DirClient::call`].
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// One of our own numbers to show (default: the directory picks the
    /// first registered one).
    pub from: Option<String>,
    /// Our own addresses (default: those of the registration).
    pub candidates: Vec<SocketAddr>,
    /// Where to report progress (`try_send`; a full channel drops).
    pub progress: Option<mpsc::Sender<Progress>>,
    /// Do not follow client-side redirects; fail with the first one.
    pub no_redirects: bool,
    /// Place the call for another media end this endpoint vouches for (a
    /// gateway's station): its certificate fingerprint. `candidates` must
    /// then be that end's addresses for this call (the forwarder port).
    pub media_fp: Option<String>,
    /// The `handoff` of the `Event::Transferred` this call follows.
    pub handoff: Option<u64>,
}

/// What the directory tells us unprompted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call for one of our numbers: answer, reject, busy or redirect it.
    Ring(IncomingCall),
    /// A caller looked us up and will connect directly with this plan.
    Expect {
        from: String,
        number: String,
        ext: Option<String>,
        plan: MediaPlan,
    },
    /// A call ended (for an incoming call, or an outgoing one after it
    /// connected).
    Ended { call: CallId, reason: EndReason },
    /// The other end of an answered call handed us on to `number` (claim
    /// 5): the call is over; call `number` to go on.
    Transferred {
        call: CallId,
        number: String,
        /// The number that handed us on.
        by: String,
        /// Put it in [`CallOptions::handoff`] of the call to `number`.
        handoff: Option<u64>,
    },
    /// The relay for an answered incoming call is ready; the caller's
    /// packets now come from `relay`.
    Relay { call: CallId, relay: SocketAddr },
    /// A stored voice mail or text.
    Mail(Mail),
    /// Our observed address changed; the registration was refreshed.
    AddressChanged { observed: SocketAddr },
    /// Bindings were dropped (expired, or another endpoint took them).
    Unbound {
        numbers: Vec<String>,
        reason: String,
    },
    /// The directory said something went wrong outside any request.
    Error { code: ErrorCode, message: String },
    /// The directory is going away; reconnect later.
    GoingAway { message: String },
    /// The connection to the directory is gone.
    Disconnected { reason: String },
}

struct Reply {
    msg: DirMsg,
    call_rx: Option<mpsc::Receiver<DirMsg>>,
}

#[derive(Debug, Clone)]
struct RegState {
    numbers: Vec<String>,
    candidates: Vec<SocketAddr>,
}

struct Inner {
    conn: quinn::Connection,
    out: mpsc::Sender<DirMsg>,
    pending: Mutex<HashMap<ReqId, oneshot::Sender<Reply>>>,
    calls: Mutex<HashMap<CallId, mpsc::Sender<DirMsg>>>,
    next_req: AtomicU64,
    observed: Mutex<SocketAddr>,
    ttl: Mutex<Duration>,
    policy: DirectPolicy,
    directory_fp: Option<String>,
    reg: Mutex<Option<RegState>>,
    refresher: AtomicBool,
    refresh: Arc<Notify>,
    events: mpsc::Sender<Event>,
}

impl Inner {
    async fn send(&self, msg: DirMsg) -> Result<(), ClientError> {
        self.out.send(msg).await.map_err(|_| ClientError::Closed)
    }

    async fn request_full(&self, make: impl FnOnce(ReqId) -> DirMsg) -> Result<Reply, ClientError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(req, tx);
        if let Err(e) = self.send(make(req)).await {
            lock(&self.pending).remove(&req);
            return Err(e);
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                lock(&self.pending).remove(&req);
                Err(ClientError::Timeout(REPLY_TIMEOUT))
            }
        }
    }

    async fn request(&self, make: impl FnOnce(ReqId) -> DirMsg) -> Result<DirMsg, ClientError> {
        Ok(self.request_full(make).await?.msg)
    }

    async fn request_ok(&self, make: impl FnOnce(ReqId) -> DirMsg) -> Result<(), ClientError> {
        match self.request(make).await? {
            DirMsg::Ok { .. } => Ok(()),
            other => Err(refused(other)),
        }
    }

    async fn register_now(&self, st: &RegState) -> Result<Registration, ClientError> {
        let msg = self
            .request(|req| DirMsg::Register {
                req,
                numbers: st.numbers.clone(),
                candidates: st.candidates.iter().map(ToString::to_string).collect(),
            })
            .await?;
        match msg {
            DirMsg::Registered {
                numbers,
                observed,
                candidates,
                ttl_secs,
                ..
            } => {
                let observed: SocketAddr = observed.parse().map_err(|_| {
                    ClientError::Protocol(format!("bad observed address {observed:?}"))
                })?;
                let ttl = Duration::from_secs(u64::from(ttl_secs.max(1)));
                *lock(&self.ttl) = ttl;
                let previous = std::mem::replace(&mut *lock(&self.observed), observed);
                if previous != observed {
                    self.emit(Event::AddressChanged { observed });
                }
                Ok(Registration {
                    numbers,
                    observed,
                    candidates: addrs(&candidates),
                    ttl,
                })
            }
            other => Err(refused(other)),
        }
    }
}

impl Inner {
    fn emit(&self, ev: Event) {
        if let Err(e) = self.events.try_send(ev) {
            tracing::warn!("directory event dropped (the host does not read its events): {e}");
        }
    }
}

/// A connection to a directory. Cheap to clone; the connection closes
/// when [`DirClient::close`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct DirClient {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

struct Closer(quinn::Connection);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close(quinn::VarInt::from_u32(0), b"client closed");
    }
}

impl std::fmt::Debug for DirClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirClient")
            .field("remote", &self.inner.conn.remote_address())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What `account_info` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub account: String,
    /// In the account's order: the first is the one callees see.
    pub numbers: Vec<String>,
    pub devices: Vec<DeviceInfo>,
}

/// What this endpoint says it is in its hello: the running program's
/// name and Keyline's version ("keyline-agent 0.1.0").
fn client_name() -> String {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        // Linux names a replaced executable "NAME (deleted)".
        .map(|n| n.trim_end_matches(" (deleted)").to_string())
        .filter(|n| n.starts_with("keyline"))
        .unwrap_or_else(|| "keyline".to_string());
    format!("{program} {}", env!("CARGO_PKG_VERSION"))
}

/// `typed` as a [`Number`], or the error a caller of the directory gets
/// for it: where a person's or a program's text becomes a number for the
/// directory (a command, a form, a config), parsed once.
pub fn parse_number(typed: &str) -> Result<Number, ClientError> {
    Number::parse(typed).map_err(|e| ClientError::InvalidNumber {
        number: typed.to_string(),
        message: e.to_string(),
    })
}

fn canon(n: &str) -> Result<String, ClientError> {
    parse_number(n).map(Number::into_string)
}

fn refused(msg: DirMsg) -> ClientError {
    match msg {
        DirMsg::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => ClientError::Refused {
            code,
            message,
            retry_after: retry_after_ms.map(Duration::from_millis),
        },
        other => ClientError::Protocol(format!("unexpected reply {:?}", other.kind())),
    }
}

fn addrs(v: &[String]) -> Vec<SocketAddr> {
    v.iter().filter_map(|a| a.parse().ok()).collect()
}

impl DirClient {
    /// Connect to the directory at `addr` on `endpoint`, presenting
    /// `identity`, pinning the directory's certificate when `pin` is given.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        identity: &Identity,
        addr: SocketAddr,
        directory_fp_pin: Option<String>,
    ) -> Result<(DirClient, mpsc::Receiver<Event>), ClientError> {
        Self::connect_with(
            endpoint,
            identity,
            addr,
            directory_fp_pin,
            Options::default(),
        )
        .await
    }

    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        identity: &Identity,
        addr: SocketAddr,
        directory_fp_pin: Option<String>,
        opts: Options,
    ) -> Result<(DirClient, mpsc::Receiver<Event>), ClientError> {
        let cerr = |m: String| ClientError::Connect { addr, message: m };
        let cfg =
            endpoint::directory_client_config(identity, directory_fp_pin, Some(wire::ACK_EVERY))
                .map_err(|e| cerr(format!("{e:#}")))?;
        let connecting = endpoint
            .connect_with(cfg, addr, endpoint::SERVER_NAME)
            .map_err(|e| cerr(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| cerr("no answer within 10 s".into()))?
            .map_err(|e| cerr(e.to_string()))?;
        let directory_fp = peer_fingerprint(&conn);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| cerr(e.to_string()))?;
        send_msg(
            &mut send,
            &DirMsg::Hello {
                version: PROTOCOL_VERSION,
                role: opts.role,
                name: opts.name.clone(),
                client: Some(client_name()),
            },
        )
        .await
        .map_err(|e| cerr(e.to_string()))?;
        let welcome = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut recv))
            .await
            .map_err(|_| cerr("no welcome within 10 s".into()))?
            .map_err(|e| cerr(e.to_string()))?;
        let (observed, ttl, policy) = match welcome {
            Incoming::Msg(DirMsg::Welcome {
                observed,
                ttl_secs,
                policy,
                ..
            }) => (
                observed
                    .parse::<SocketAddr>()
                    .map_err(|_| cerr(format!("bad observed address {observed:?}")))?,
                Duration::from_secs(u64::from(ttl_secs.max(1))),
                policy,
            ),
            Incoming::Msg(DirMsg::Error { message, .. }) => return Err(cerr(message)),
            Incoming::Msg(other) => return Err(cerr(format!("unexpected {:?}", other.kind()))),
            Incoming::Unknown(k) => return Err(cerr(format!("unexpected kind {k:?}"))),
            Incoming::Closed => return Err(cerr("the directory closed the stream".into())),
        };
        let (out_tx, out_rx) = mpsc::channel::<DirMsg>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<Event>(opts.events.max(1));
        let inner = Arc::new(Inner {
            conn: conn.clone(),
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            observed: Mutex::new(observed),
            ttl: Mutex::new(ttl),
            policy,
            directory_fp,
            reg: Mutex::new(None),
            refresher: AtomicBool::new(false),
            refresh: Arc::new(Notify::new()),
            events: ev_tx,
        });
        tokio::spawn(writer(conn.clone(), send, out_rx));
        tokio::spawn(reader(Arc::downgrade(&inner), inner.events.clone(), recv));
        tokio::spawn(mail_receiver(conn.clone(), inner.events.clone()));
        let client = DirClient {
            inner,
            _closer: Arc::new(Closer(conn)),
        };
        Ok((client, ev_rx))
    }

    /// Our address as the directory sees it.
    pub fn observed(&self) -> SocketAddr {
        *lock(&self.inner.observed)
    }

    /// The directory's certificate fingerprint (pin it next time).
    pub fn directory_fingerprint(&self) -> Option<String> {
        self.inner.directory_fp.clone()
    }

    /// The directory's direct-connect rule.
    pub fn policy(&self) -> DirectPolicy {
        self.inner.policy
    }

    /// The directory's registration TTL.
    pub fn ttl(&self) -> Duration {
        *lock(&self.inner.ttl)
    }

    /// The QUIC connection to the directory.
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    /// Close the connection (bindings vanish, calls end).
    pub fn close(&self) {
        self.inner
            .conn
            .close(quinn::VarInt::from_u32(0), b"client closed");
    }

    fn session(msg: DirMsg) -> Result<Session, ClientError> {
        match msg {
            DirMsg::LoggedIn {
                account,
                numbers,
                token,
                expires_in_secs,
                ..
            } => Ok(Session {
                account,
                numbers,
                token,
                expires_in: Duration::from_secs(expires_in_secs),
            }),
            other => Err(refused(other)),
        }
    }

    /// Log in with an account name and password.
    pub async fn login(&self, account: &str, password: &str) -> Result<Session, ClientError> {
        let msg = self
            .inner
            .request(|req| DirMsg::Login {
                req,
                account: account.to_string(),
                password: password.to_string(),
            })
            .await?;
        Self::session(msg)
    }

    /// Log in again with the token of an earlier session.
    pub async fn resume(&self, token: &str) -> Result<Session, ClientError> {
        let msg = self
            .inner
            .request(|req| DirMsg::Resume {
                req,
                token: token.to_string(),
            })
            .await?;
        Self::session(msg)
    }

    /// Change the account's password; its other sessions end.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<(), ClientError> {
        self.inner
            .request_ok(|req| DirMsg::ChangePassword {
                req,
                old: old.to_string(),
                new: new.to_string(),
            })
            .await
    }

    /// Bind `numbers` (all of the account's when empty) to this endpoint
    /// with our own `candidates` (the directory adds the address it
    /// observes). The registration is refreshed every TTL/3 from now on,
    /// and at once after [`Self::set_candidates`] or an expiry.
    pub async fn register(
        &self,
        numbers: &[Number],
        candidates: Vec<SocketAddr>,
    ) -> Result<Registration, ClientError> {
        let numbers = numbers.iter().map(|n| n.as_str().to_string()).collect();
        let st = RegState {
            numbers,
            candidates,
        };
        let r = self.inner.register_now(&st).await?;
        *lock(&self.inner.reg) = Some(RegState {
            numbers: r.numbers.clone(),
            candidates: st.candidates,
        });
        if !self.inner.refresher.swap(true, Ordering::SeqCst) {
            tokio::spawn(refresher(self.clone_weak()));
        }
        Ok(r)
    }

    fn clone_weak(&self) -> WeakClient {
        WeakClient {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Our own addresses changed: re-register at once.
    pub fn set_candidates(&self, candidates: Vec<SocketAddr>) {
        if let Some(st) = lock(&self.inner.reg).as_mut() {
            st.candidates = candidates;
        }
        self.inner.refresh.notify_one();
    }

    /// Re-register now (also done automatically).
    pub async fn refresh(&self) -> Result<Registration, ClientError> {
        let st = lock(&self.inner.reg).clone().ok_or(ClientError::Refused {
            code: ErrorCode::Unexpected,
            message: "nothing is registered".into(),
            retry_after: None,
        })?;
        self.inner.register_now(&st).await
    }

    /// Drop every binding of this endpoint and stop refreshing.
    pub async fn unregister(&self) -> Result<(), ClientError> {
        *lock(&self.inner.reg) = None;
        self.inner
            .request_ok(|req| DirMsg::Unregister {
                req,
                numbers: Vec::new(),
            })
            .await
    }

    /// Look-up only (claim 3): where `number` is now, with the plan to
    /// connect straight to it (its endpoint is told to expect us).
    pub async fn lookup(&self, number: &Number) -> Result<Found, ClientError> {
        let n = number.as_str().to_string();
        match self
            .inner
            .request(|req| DirMsg::Lookup { req, number: n })
            .await?
        {
            DirMsg::Found {
                number,
                via,
                candidates,
                fingerprint,
                token,
                ..
            } => Ok(Found {
                number,
                via,
                plan: MediaPlan {
                    call: 0,
                    dial: true,
                    peer_fp: fingerprint,
                    peer_candidates: addrs(&candidates),
                    token,
                    policy: DirectPolicy::Direct,
                    relay: None,
                    fallback_after: Duration::from_secs(3),
                },
            }),
            other => Err(refused(other)),
        }
    }

    /// Call `number` and wait until it is answered, following client-side
    /// redirects (at most [`MAX_HOPS`], never in a circle). Dropping the
    /// future while it rings cancels the call.
    pub async fn call(&self, number: &Number, opts: CallOptions) -> Result<Connected, CallError> {
        let dialled = number.as_str().to_string();
        let candidates = if opts.candidates.is_empty() {
            lock(&self.inner.reg)
                .as_ref()
                .map(|r| r.candidates.clone())
                .unwrap_or_default()
        } else {
            opts.candidates.clone()
        };
        let mut chain = vec![dialled.clone()];
        let mut number = dialled.clone();
        let mut hops: u8 = 0;
        loop {
            let reply = self
                .inner
                .request_full(|req| DirMsg::Call {
                    req,
                    number: number.clone(),
                    from: opts.from.clone(),
                    candidates: candidates.iter().map(ToString::to_string).collect(),
                    hops,
                    media_fp: opts.media_fp.clone(),
                    handoff: opts.handoff,
                })
                .await?;
            let (call, rang, via, checks, mut rx) = match (reply.msg, reply.call_rx) {
                (
                    DirMsg::Ringing {
                        call,
                        number,
                        via,
                        checks,
                        ..
                    },
                    Some(rx),
                ) => (call, number, via, checks, rx),
                (
                    DirMsg::CallFailed {
                        code,
                        number,
                        message,
                        mail,
                        ..
                    },
                    _,
                ) => {
                    return Err(CallError::Failed {
                        number,
                        code,
                        message,
                        mail,
                    })
                }
                (other, _) => return Err(CallError::Client(refused(other))),
            };
            let mut guard = CallGuard {
                inner: self.inner.clone(),
                call,
                armed: true,
            };
            if let Some(p) = &opts.progress {
                let _ = p.try_send(Progress::Ringing {
                    call,
                    number: rang.clone(),
                    via: via.clone(),
                    checks: RingChecks::from_wire(checks),
                });
            }
            let next = loop {
                match rx.recv().await {
                    Some(DirMsg::Connect { plan, .. }) => {
                        guard.armed = false;
                        chain.pop();
                        return Ok(Connected {
                            call,
                            number: rang,
                            dialled,
                            via,
                            redirected_from: chain,
                            plan: MediaPlan::from_wire(call, plan),
                        });
                    }
                    Some(DirMsg::Ended { reason, .. }) => {
                        guard.armed = false;
                        return Err(CallError::Ended {
                            number: rang,
                            reason,
                        });
                    }
                    Some(DirMsg::Redirected { number: to, .. }) => {
                        guard.armed = false;
                        break to;
                    }
                    Some(_) => continue,
                    None => {
                        guard.armed = false;
                        return Err(CallError::Client(ClientError::Closed));
                    }
                }
            };
            drop(guard);
            let next = canon(&next)?;
            if let Some(p) = &opts.progress {
                let _ = p.try_send(Progress::Redirected {
                    from: rang.clone(),
                    to: next.clone(),
                });
            }
            if opts.no_redirects {
                return Err(CallError::Ended {
                    number: rang,
                    reason: EndReason::Redirected,
                });
            }
            if chain.contains(&next) || next == rang {
                chain.push(next);
                return Err(CallError::RedirectLoop { chain });
            }
            chain.push(next.clone());
            hops += 1;
            if hops as usize > MAX_HOPS {
                return Err(CallError::TooManyRedirects { chain });
            }
            number = next;
        }
    }

    /// Hand the other end of answered call `call` on to `number` (claim 5):
    /// it calls `number` directly, and the call ends here. `handoff`, if
    /// any, comes with that new call, so that an office handing a caller on
    /// to one of its own extensions knows it when it arrives.
    pub async fn transfer(
        &self,
        call: CallId,
        number: &Number,
        handoff: Option<u64>,
    ) -> Result<(), ClientError> {
        let number = number.as_str().to_string();
        self.inner
            .request_ok(|req| DirMsg::Transfer {
                req,
                call,
                number,
                handoff,
            })
            .await
    }

    /// Take an incoming call; the plan says how to set up its media.
    pub async fn answer(&self, call: CallId) -> Result<MediaPlan, ClientError> {
        self.answer_for(call, None, Vec::new()).await
    }

    /// Take an incoming call for another media end this endpoint vouches
    /// for (a gateway's station): its fingerprint and its addresses for
    /// this call (the forwarder port).
    pub async fn answer_for(
        &self,
        call: CallId,
        media_fp: Option<String>,
        candidates: Vec<SocketAddr>,
    ) -> Result<MediaPlan, ClientError> {
        let candidates = candidates.iter().map(ToString::to_string).collect();
        match self
            .inner
            .request(|req| DirMsg::Answer {
                req,
                call,
                media_fp: media_fp.clone(),
                candidates,
            })
            .await?
        {
            DirMsg::Connect { plan, .. } => Ok(MediaPlan::from_wire(call, plan)),
            other => Err(refused(other)),
        }
    }

    /// Decline an incoming call.
    pub async fn reject(&self, call: CallId) -> Result<(), ClientError> {
        self.inner
            .request_ok(|req| DirMsg::Reject { req, call })
            .await
    }

    /// Decline an incoming call because we are busy.
    pub async fn busy(&self, call: CallId) -> Result<(), ClientError> {
        self.inner
            .request_ok(|req| DirMsg::Busy { req, call })
            .await
    }

    /// Send the caller of an incoming call to `number` (claim 7).
    pub async fn redirect(&self, call: CallId, number: &Number) -> Result<(), ClientError> {
        let n = number.as_str().to_string();
        self.inner
            .request_ok(|req| DirMsg::Redirect {
                req,
                call,
                number: n,
            })
            .await
    }

    /// End a call (either end).
    pub async fn hangup(&self, call: CallId) -> Result<(), ClientError> {
        lock(&self.inner.calls).remove(&call);
        self.inner.send(DirMsg::Hangup { call }).await
    }

    /// The direct attempt failed: ask for the relay. Gives the address to
    /// connect to.
    pub async fn fallback(&self, call: CallId) -> Result<SocketAddr, ClientError> {
        match self
            .inner
            .request(|req| DirMsg::Fallback { req, call })
            .await?
        {
            DirMsg::RelayReady { relay, .. } => relay
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad relay address {relay:?}"))),
            other => Err(refused(other)),
        }
    }

    /// Set the server-side forwarding rule of kind `rule.when` of one of
    /// our numbers (its rules of other kinds stay), or, with `None`, clear
    /// all its rules (claim 8).
    pub async fn set_forward(
        &self,
        number: &Number,
        rule: Option<ForwardRule>,
    ) -> Result<(), ClientError> {
        let n = number.as_str().to_string();
        self.inner
            .request_ok(|req| DirMsg::SetForward {
                req,
                number: n,
                rule,
            })
            .await
    }

    /// Turn the rule of kind `when` (or, with `None`, every rule) of one of
    /// our numbers off; each keeps its target.
    pub async fn forward_off(
        &self,
        number: &Number,
        when: Option<ForwardWhen>,
    ) -> Result<(), ClientError> {
        let n = number.as_str().to_string();
        self.inner
            .request_ok(|req| DirMsg::ForwardOff {
                req,
                number: n,
                when,
            })
            .await
    }

    /// The account's name, its numbers (the first is the one callees see)
    /// and its devices logged in now, on every node.
    pub async fn account_info(&self) -> Result<AccountView, ClientError> {
        match self
            .inner
            .request(|req| DirMsg::AccountQuery { req })
            .await?
        {
            DirMsg::AccountInfo {
                account,
                numbers,
                devices,
                ..
            } => Ok(AccountView {
                account,
                numbers,
                devices,
            }),
            other => Err(refused(other)),
        }
    }

    /// The forwarding rules of every number of the account.
    pub async fn forwards(&self) -> Result<Vec<NumberForwards>, ClientError> {
        match self
            .inner
            .request(|req| DirMsg::ListForwards { req })
            .await?
        {
            DirMsg::Forwards { numbers, .. } => Ok(numbers),
            other => Err(refused(other)),
        }
    }

    /// Leave a voice mail (Ogg Opus) or a text for `to`. `from` is one of
    /// our own numbers (default: the account's first).
    pub async fn leave_mail(
        &self,
        to: &Number,
        kind: MailKind,
        body: &[u8],
        from: Option<&Number>,
    ) -> Result<MailId, ClientError> {
        let to = to.as_str().to_string();
        let from = from.map(|f| f.as_str().to_string());
        if body.len() > MAX_MAIL_BODY {
            return Err(ClientError::Refused {
                code: ErrorCode::TooLarge,
                message: format!(
                    "the message has {} bytes; at most {MAX_MAIL_BODY}",
                    body.len()
                ),
                retry_after: None,
            });
        }
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let io = |e: &dyn std::fmt::Display| ClientError::Protocol(format!("mail stream: {e}"));
        let (mut send, mut recv) = self
            .inner
            .conn
            .open_bi()
            .await
            .map_err(|_| ClientError::Closed)?;
        send_msg(
            &mut send,
            &DirMsg::LeaveMail {
                req,
                to,
                from,
                kind,
                len: body.len() as u32,
            },
        )
        .await
        .map_err(|e| io(&e))?;
        // The directory may refuse on the header alone and stop reading.
        let _ = write_body(&mut send, body).await;
        let _ = send.finish();
        let reply = tokio::time::timeout(Duration::from_secs(60), next_msg(&mut recv))
            .await
            .map_err(|_| ClientError::Timeout(Duration::from_secs(60)))?
            .map_err(|e| io(&e))?;
        match reply {
            Incoming::Msg(DirMsg::MailStored { id, .. }) => Ok(id),
            Incoming::Msg(other) => Err(refused(other)),
            Incoming::Unknown(k) => Err(ClientError::Protocol(format!("unexpected kind {k:?}"))),
            Incoming::Closed => Err(ClientError::Closed),
        }
    }

    /// A delivered message is safe with us: the directory deletes it.
    pub async fn ack_mail(&self, id: MailId) -> Result<(), ClientError> {
        self.inner
            .request_ok(|req| DirMsg::AckMail { req, id })
            .await
    }

    /// Make the media connection of an answered outgoing call (or a
    /// look-up) on `endpoint`, following the plan's direct-connect rule:
    /// end to end to every candidate at once; with `direct-then-relay`,
    /// through the relay once the direct attempt has failed for
    /// `fallback_after`; with `relay`, through the relay only. With the
    /// endpoint's `checks`, addresses the call's checks find meanwhile are
    /// dialled as they are found.
    pub async fn dial_media(
        &self,
        endpoint: &quinn::Endpoint,
        identity: &Identity,
        plan: &MediaPlan,
        checks: Option<&Checker>,
    ) -> Result<MediaLink, MediaError> {
        let cfg = endpoint::client_config(identity, Some(plan.peer_fp.clone()))
            .map_err(|e| MediaError::Failed(format!("{e:#}")))?;
        if let Some(relay) = plan.relay {
            let conn = connect_media(endpoint, cfg, relay, plan, Duration::from_secs(5)).await?;
            return Ok(MediaLink {
                conn,
                remote: relay,
                relayed: true,
            });
        }
        let direct = connect_any(endpoint, &cfg, plan, checks).await;
        match direct {
            Ok((conn, remote)) => Ok(MediaLink {
                conn,
                remote,
                relayed: false,
            }),
            Err(e) if plan.policy == DirectPolicy::DirectThenRelay && plan.call != 0 => {
                tracing::info!(
                    "call {}: direct media failed ({e}); falling back to the relay",
                    plan.call
                );
                let relay = self.fallback(plan.call).await?;
                // The other end opens its router towards the relay when it
                // hears the relay is ready, as we do now: a first packet
                // that overtook its opening would be lost, and QUIC would
                // send it again only after a second.
                tokio::time::sleep(RELAY_SETTLE).await;
                let conn =
                    connect_media(endpoint, cfg, relay, plan, Duration::from_secs(5)).await?;
                Ok(MediaLink {
                    conn,
                    remote: relay,
                    relayed: true,
                })
            }
            Err(e) => Err(MediaError::Unreachable {
                tried: e.to_string(),
            }),
        }
    }
}

/// How long the dialling end waits, once the relay is ready, before it
/// connects through it (see [`DirClient::dial_media`]).
const RELAY_SETTLE: Duration = Duration::from_millis(100);

/// A media connection to the other end of a call.
#[derive(Debug, Clone)]
pub struct MediaLink {
    pub conn: quinn::Connection,
    /// Where we connected to.
    pub remote: SocketAddr,
    /// Whether it runs through the directory's relay.
    pub relayed: bool,
}

/// Connect to every candidate at once; the first verified one wins. With
/// the endpoint's `checks`, an address the call's checks learn or
/// validate while this runs is dialled too, as soon as it is found.
async fn connect_any(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    plan: &MediaPlan,
    checks: Option<&Checker>,
) -> Result<(quinn::Connection, SocketAddr), MediaError> {
    if plan.peer_candidates.is_empty() && checks.is_none() {
        return Err(MediaError::Failed("no candidate addresses".into()));
    }
    let mut set = tokio::task::JoinSet::new();
    let mut dialled = Vec::new();
    let dial = |set: &mut tokio::task::JoinSet<_>, addr: SocketAddr, within: Duration| {
        let (ep, cfg, plan) = (endpoint.clone(), cfg.clone(), plan.clone());
        set.spawn(async move {
            connect_media(&ep, cfg, addr, &plan, within)
                .await
                .map(|c| (c, addr))
                .map_err(|e| format!("{addr}: {e}"))
        });
    };
    for &addr in &plan.peer_candidates {
        dialled.push(addr);
        dial(&mut set, addr, plan.fallback_after);
    }
    // Only a ringing call has checks (a look-up has none).
    let mut found = checks.filter(|_| plan.call != 0).map(|c| (c, c.watch()));
    let mut errors = Vec::new();
    // A look-up's callee answers only once its user does.
    let wait = if plan.call == 0 {
        plan.fallback_after + LOOKUP_RING_TIMEOUT
    } else {
        plan.fallback_after
    };
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        if set.is_empty() && found.is_none() {
            break;
        }
        tokio::select! {
            Some(r) = set.join_next(), if !set.is_empty() => match r {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.to_string()),
            },
            alive = async {
                match found.as_mut() {
                    Some((_, rx)) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            }, if found.is_some() => {
                if !alive {
                    found = None;
                    continue;
                }
                let Some((checker, _)) = &found else { continue };
                let report = checker.report(plan.call).unwrap_or_default();
                for addr in report.preferred() {
                    if dialled.contains(&addr) {
                        continue;
                    }
                    tracing::info!("call {}: checks found {addr}; dialling it too", plan.call);
                    dialled.push(addr);
                    dial(&mut set, addr, LEARNT_TRY);
                    // A path the checks proved gets its try in full.
                    let until = tokio::time::Instant::now() + LEARNT_TRY;
                    if deadline.deadline() < until {
                        deadline.as_mut().reset(until);
                    }
                }
            }
            _ = &mut deadline => {
                errors.push(format!("no answer within {:?}", wait));
                break;
            }
        }
    }
    if errors.is_empty() {
        errors.push("no candidate addresses".into());
    }
    Err(MediaError::Failed(errors.join("; ")))
}

/// How long an address the checks found while the direct attempt runs
/// is given to answer, past the attempt's own deadline if need be.
const LEARNT_TRY: Duration = Duration::from_secs(1);

/// How long the caller of a look-up-only call (`plan.call == 0`) waits for
/// `MediaOk`: the callee's endpoint rings itself and answers only when its
/// user does (or gives up after its own ring timeout, as long as this).
pub const LOOKUP_RING_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect to `addr`, verify the peer by fingerprint (the client config
/// pins it) and exchange `MediaHello`/`MediaOk`, all within `timeout`; for
/// a look-up-only plan, the handshake within `timeout` and then `MediaOk`
/// within [`LOOKUP_RING_TIMEOUT`].
async fn connect_media(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    plan: &MediaPlan,
    timeout: Duration,
) -> Result<quinn::Connection, MediaError> {
    let fail = |e: &dyn std::fmt::Display| MediaError::Failed(e.to_string());
    let started = tokio::time::Instant::now();
    let connecting = endpoint
        .connect_with(cfg, addr, endpoint::SERVER_NAME)
        .map_err(|e| fail(&e))?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| MediaError::Failed(format!("no answer from {addr} within {timeout:?}")))?
        .map_err(|e| fail(&e))?;
    let wait = if plan.call == 0 {
        LOOKUP_RING_TIMEOUT
    } else {
        timeout.saturating_sub(started.elapsed())
    };
    match medialink::dial(&conn, plan.call, &plan.token, wait).await {
        Ok(()) => Ok(conn),
        Err(LinkError::BadCredential) => Err(MediaError::BadCredential),
        Err(LinkError::Timeout { .. }) if plan.call == 0 => Err(MediaError::Failed(format!(
            "{addr} did not answer within {LOOKUP_RING_TIMEOUT:?}"
        ))),
        Err(LinkError::Timeout { .. }) => Err(MediaError::Failed(format!(
            "no answer from {addr} within {timeout:?}"
        ))),
        Err(LinkError::Failed(why)) => Err(MediaError::Failed(why)),
    }
}

/// On the answering end: check that an incoming connection is the peer
/// `plan` names and presents the call's token, and answer `MediaOk`.
pub async fn accept_media(
    conn: quinn::Connection,
    plan: &MediaPlan,
) -> Result<quinn::Connection, MediaError> {
    let fp = peer_fingerprint(&conn).unwrap_or_default();
    if fp != plan.peer_fp {
        conn.close(quinn::VarInt::from_u32(1), b"unexpected peer");
        return Err(MediaError::WrongPeer { got: fp });
    }
    match medialink::accept(&conn, plan.call, &plan.token, Duration::from_secs(5)).await {
        Ok(()) => Ok(conn),
        Err(LinkError::BadCredential) => Err(MediaError::BadCredential),
        Err(e) => Err(MediaError::Failed(e.to_string())),
    }
}

/// Hangs up a ringing outgoing call whose `call` future was dropped.
struct CallGuard {
    inner: Arc<Inner>,
    call: CallId,
    armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        lock(&self.inner.calls).remove(&self.call);
        if self.armed {
            let _ = self.inner.out.try_send(DirMsg::Hangup { call: self.call });
        }
    }
}

struct WeakClient {
    inner: std::sync::Weak<Inner>,
}

/// Re-registers every TTL/3, and at once when asked.
async fn refresher(weak: WeakClient) {
    loop {
        let (wait, conn, refresh) = {
            let Some(inner) = weak.inner.upgrade() else {
                return;
            };
            let wait = *lock(&inner.ttl) / 3;
            (wait, inner.conn.clone(), inner.refresh.clone())
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh.notified() => {}
            _ = conn.closed() => return,
        }
        let Some(inner) = weak.inner.upgrade() else {
            return;
        };
        let st = lock(&inner.reg).clone();
        let Some(st) = st else {
            continue;
        };
        if let Err(e) = inner.register_now(&st).await {
            tracing::warn!("refreshing the registration failed: {e}");
        }
    }
}

/// Writes queued requests in order, everything queued at once in one
/// stream write.
async fn writer(conn: quinn::Connection, send: quinn::SendStream, mut rx: mpsc::Receiver<DirMsg>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut out = MsgWriter::new(send);
    'outer: while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        for m in batch.drain(..) {
            if out.push(&m).await.is_err() {
                conn.close(quinn::VarInt::from_u32(3), b"write failed");
                break 'outer;
            }
        }
        if out.flush().await.is_err() {
            conn.close(quinn::VarInt::from_u32(3), b"write failed");
            break;
        }
    }
    out.finish();
}

async fn reader(
    weak: std::sync::Weak<Inner>,
    events: mpsc::Sender<Event>,
    recv: quinn::RecvStream,
) {
    let mut recv = MsgReader::new(recv);
    let reason = loop {
        let msg = match recv.next().await {
            Ok(Incoming::Msg(m)) => m,
            Ok(Incoming::Unknown(k)) => {
                tracing::debug!("ignoring unknown directory message {k:?}");
                continue;
            }
            Ok(Incoming::Closed) => break "the directory closed the connection".to_string(),
            Err(CodecError::Io(e)) => break format!("connection lost: {e}"),
            Err(e) => break format!("protocol error: {e}"),
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        dispatch(&inner, msg);
    };
    if let Some(inner) = weak.upgrade() {
        lock(&inner.pending).clear();
        lock(&inner.calls).clear();
    }
    let _ = events.try_send(Event::Disconnected { reason });
}

fn dispatch(inner: &Arc<Inner>, msg: DirMsg) {
    if let Some(req) = msg.reply_to() {
        let waiter = lock(&inner.pending).remove(&req);
        if let Some(w) = waiter {
            let call_rx = match &msg {
                DirMsg::Ringing { call, .. } => {
                    let (tx, rx) = mpsc::channel(8);
                    lock(&inner.calls).insert(*call, tx);
                    Some(rx)
                }
                _ => None,
            };
            let _ = w.send(Reply { msg, call_rx });
            return;
        }
    }
    match msg {
        DirMsg::Ring {
            call,
            from,
            number,
            ext,
            dialled,
            via,
            caller_fp,
            caller_candidates,
            handoff,
            checks,
        } => inner.emit(Event::Ring(IncomingCall {
            call,
            from,
            number,
            ext,
            dialled,
            via,
            caller_fp,
            caller_candidates: addrs(&caller_candidates),
            handoff,
            checks: RingChecks::from_wire(checks),
        })),
        DirMsg::Expect {
            number,
            ext,
            from,
            caller_fp,
            token,
            caller_candidates,
        } => inner.emit(Event::Expect {
            from,
            number,
            ext,
            plan: MediaPlan {
                call: 0,
                dial: false,
                peer_fp: caller_fp,
                peer_candidates: addrs(&caller_candidates),
                token,
                policy: DirectPolicy::Direct,
                relay: None,
                fallback_after: Duration::from_secs(3),
            },
        }),
        m @ (DirMsg::Connect { .. } | DirMsg::Redirected { .. } | DirMsg::Ended { .. }) => {
            let call = match &m {
                DirMsg::Connect { call, .. }
                | DirMsg::Redirected { call, .. }
                | DirMsg::Ended { call, .. } => *call,
                _ => return,
            };
            let tx = lock(&inner.calls).get(&call).cloned();
            match (tx, m) {
                (Some(tx), m) => {
                    let _ = tx.try_send(m);
                }
                (None, DirMsg::Ended { call, reason }) => inner.emit(Event::Ended { call, reason }),
                (
                    None,
                    DirMsg::Redirected {
                        call,
                        number,
                        by,
                        handoff,
                    },
                ) => inner.emit(Event::Transferred {
                    call,
                    number,
                    by,
                    handoff,
                }),
                (None, _) => {}
            }
        }
        DirMsg::RelayReady { call, relay, .. } => {
            if let Ok(relay) = relay.parse() {
                inner.emit(Event::Relay { call, relay });
            }
        }
        DirMsg::Registered { observed, .. } | DirMsg::Observed { addr: observed } => {
            if let Ok(observed) = observed.parse::<SocketAddr>() {
                let previous = std::mem::replace(&mut *lock(&inner.observed), observed);
                if previous != observed {
                    inner.emit(Event::AddressChanged { observed });
                }
            }
        }
        DirMsg::Unbound {
            numbers,
            reason,
            expired,
        } => {
            if expired {
                // Still wanted: register again at once.
                if lock(&inner.reg).is_some() {
                    inner.refresh.notify_one();
                }
            } else if let Some(st) = lock(&inner.reg).as_mut() {
                // Taken away: do not take it back at the next refresh.
                st.numbers.retain(|n| !numbers.contains(n));
            }
            inner.emit(Event::Unbound { numbers, reason });
        }
        DirMsg::Error { code, message, .. } => inner.emit(Event::Error { code, message }),
        DirMsg::GoingAway { message } => inner.emit(Event::GoingAway { message }),
        _ => {}
    }
}

/// Receives delivered mail on unidirectional streams.
async fn mail_receiver(conn: quinn::Connection, events: mpsc::Sender<Event>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let res = async {
            let header = next_msg(&mut recv).await?;
            let Incoming::Msg(DirMsg::Mail {
                id,
                from,
                to,
                kind,
                at_ms,
                len,
            }) = header
            else {
                return Err(CodecError::Malformed(
                    "a delivery stream starts with mail".into(),
                ));
            };
            if len as usize > MAX_MAIL_BODY {
                return Err(CodecError::TooLarge {
                    len: len as usize,
                    max: MAX_MAIL_BODY,
                });
            }
            let body = read_body(&mut recv, len as usize).await?;
            Ok(Mail {
                id,
                from,
                to,
                kind,
                at_ms,
                body,
            })
        }
        .await;
        match res {
            Ok(m) => {
                if let Err(e) = events.try_send(Event::Mail(m)) {
                    tracing::warn!("mail event dropped (it is redelivered next time): {e}");
                }
            }
            Err(e) => tracing::warn!("bad mail delivery: {e}"),
        }
    }
}
