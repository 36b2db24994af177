//! The gateway half of the soak: stations enrolled with a real
//! `keyline-gatewayd` (internal media through its forwarder), and calls
//! among them at a steady rate.
//!
//! A station is the lightest faithful client of the gateway protocol
//! (`keyline_proto::msg`): a quinn endpoint and identity of its own (the
//! forwarder admits media only from the address of a station's control
//! connection, as it would from an agent), a control connection on which
//! it says hello, waits for approval (`Pending`, approved through the
//! gateway's control socket like `keyline-gatewayd approve`) and then
//! dials, answers, transfers and hangs up; media is a QUIC connection
//! from the caller's endpoint to the forwarder and on to the callee's,
//! opened with `MediaHello`/`MediaOk` as agents do, carrying datagrams.
//!
//! A job takes three idle stations (A, B, C): A dials B, B answers, they
//! talk; now and then C dials B and is told busy, or dials an extension
//! nobody has (failures the load asks for); B transfers A to C (blind: C
//! rings from A, answers, A is `Replaced` and B's call ends
//! `transferred`); A and C talk; one of them hangs up; A disconnects and
//! connects again. A failed job counts one failed call by its reason and
//! connects all three again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyline_net::{endpoint, medialink, peer_fingerprint, Identity};
use keyline_proto::codec::{write_frame, CodecError, FrameDecoder};
use keyline_proto::msg::{CallId, MediaPlan, Msg, ReqId, Role};
use keyline_proto::{MAX_MESSAGE, PROTOCOL_VERSION};
use tokio::time::Instant;

use super::media;
use super::tally::{Fail, InFlight, Tally};

/// How long one step (a reply, a ring, a connect) may take.
const STEP: Duration = Duration::from_secs(10);
/// An extension in the gateway's range that no station holds.
pub(crate) const UNKNOWN_EXT: &str = "499";
/// Extensions are handed out from here (the gateway's default range is
/// 201–499; 499 stays free for the "unknown" probe).
pub(crate) const FIRST_EXT: usize = 201;
pub(crate) const MAX_STATIONS: usize = 298;

fn kebab<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// A control connection to the gateway.
struct Link {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    frames: FrameDecoder,
}

/// What a message the caller of [`Link::expect`] did not claim means.
fn unclaimed(m: &Msg, what: &str) -> Option<Fail> {
    let fail = |reason: String| Some(Fail::new(reason, format!("{m:?} while waiting for {what}")));
    match m {
        // Line settings, mailbox counts, hold notices, pings.
        Msg::Settings { .. } | Msg::MessageWaiting { .. } | Msg::Held { .. } | Msg::Pong { .. } => {
            None
        }
        Msg::Ended { reason, .. } => fail(format!("ended: {}", kebab(reason))),
        Msg::DialFailed { reason, .. } => fail(format!("dial failed: {}", kebab(reason))),
        Msg::TransferFailed { reason, .. } => fail(format!("transfer failed: {}", kebab(reason))),
        Msg::Error { code, .. } => fail(format!("error: {code}")),
        other => fail(format!("unexpected {}", other.kind())),
    }
}

impl Link {
    async fn send(&mut self, msg: &Msg) -> Result<(), Fail> {
        match tokio::time::timeout(STEP, write_frame(&mut self.send, msg, MAX_MESSAGE)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Fail::new("connection lost", format!("sending: {e}"))),
            Err(_) => Err(Fail::new(
                "timeout",
                format!("sending {} for {STEP:?}", msg.kind()),
            )),
        }
    }

    /// The next message; reading is cancel-safe (whole chunks, split here).
    async fn next(&mut self) -> Result<Option<Msg>, CodecError> {
        loop {
            if let Some(body) = self.frames.next_frame_ref()? {
                match Msg::from_cbor(body) {
                    Ok(m) => return Ok(Some(m)),
                    // A newer gateway's message kind: not for us.
                    Err(CodecError::UnknownKind(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            match self.recv.read_chunk(MAX_MESSAGE, true).await {
                Ok(Some(chunk)) => self.frames.push(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(e) => return Err(CodecError::Io(e.into())),
            }
        }
    }

    async fn expect<T>(
        &mut self,
        what: &str,
        mut claim: impl FnMut(&Msg) -> Option<Result<T, Fail>>,
    ) -> Result<T, Fail> {
        let deadline = Instant::now() + STEP;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return Err(Fail::new("timeout", format!("waiting for {what}"))),
                Ok(Err(e)) => {
                    return Err(Fail::new(
                        "connection lost",
                        format!("waiting for {what}: {e}"),
                    ))
                }
                Ok(Ok(None)) => {
                    return Err(Fail::new(
                        "connection lost",
                        format!("the gateway closed the stream while waiting for {what}"),
                    ))
                }
                Ok(Ok(Some(m))) => m,
            };
            if let Some(r) = claim(&m) {
                return r;
            }
            if let Some(f) = unclaimed(&m, what) {
                return Err(f);
            }
        }
    }
}

/// One station.
pub(crate) struct Station {
    pub ext: String,
    id: Identity,
    ep: quinn::Endpoint,
    gw_cfg: quinn::ClientConfig,
    link: Link,
    next_req: ReqId,
}

/// What the gateway answered a hello with.
enum Hello {
    Pending(String),
    Registered(String),
}

/// Connect `ep` to the gateway and say hello.
async fn hello(
    ep: &quinn::Endpoint,
    gw: SocketAddr,
    cfg: &quinn::ClientConfig,
    name: &str,
) -> Result<(Link, Hello), Fail> {
    let connecting = ep
        .connect_with(cfg.clone(), gw, endpoint::SERVER_NAME)
        .map_err(|e| Fail::new("connect: refused", e.to_string()))?;
    let conn = match tokio::time::timeout(STEP, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(Fail::new("connect: handshake failed", e.to_string())),
        Err(_) => return Err(Fail::new("connect: timeout", "QUIC handshake")),
    };
    let (send, recv) = match tokio::time::timeout(STEP, conn.open_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Fail::new("connect: no stream", e.to_string())),
        Err(_) => return Err(Fail::new("connect: timeout", "opening the control stream")),
    };
    let mut l = Link {
        conn,
        send,
        recv,
        frames: FrameDecoder::new(MAX_MESSAGE),
    };
    l.send(&Msg::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Agent,
        name: Some(name.to_string()),
    })
    .await?;
    let h = l
        .expect("pending or registered", |m| match m {
            Msg::Pending { code } => Some(Ok(Hello::Pending(code.clone()))),
            Msg::Registered { ext, .. } => Some(Ok(Hello::Registered(ext.clone()))),
            _ => None,
        })
        .await?;
    Ok((l, h))
}

/// A station that said hello and waits for approval with `code`.
pub(crate) struct Waiting {
    pub code: String,
    pub ext: String,
    station: Station,
}

impl Waiting {
    /// Connect a new station (identity and endpoint of its own) that will
    /// be `ext` once approved.
    pub async fn start(gw: SocketAddr, gw_fp: &str, ext: String) -> anyhow::Result<Waiting> {
        let id = Identity::generate(&format!("soak station {ext}"))?;
        let ep = keyline_net::make_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), &id)?;
        let gw_cfg = endpoint::client_config(&id, Some(gw_fp.to_string()))?;
        let (link, h) = hello(&ep, gw, &gw_cfg, &ext)
            .await
            .map_err(|f| anyhow::anyhow!("station {ext}: {}: {}", f.reason, f.detail))?;
        let Hello::Pending(code) = h else {
            anyhow::bail!("station {ext}: a new station was registered without approval");
        };
        Ok(Waiting {
            code,
            ext: ext.clone(),
            station: Station {
                ext,
                id,
                ep,
                gw_cfg,
                link,
                next_req: 0,
            },
        })
    }

    /// The admin approved it: wait for `Registered` with its extension.
    pub async fn registered(self) -> anyhow::Result<Station> {
        let mut s = self.station;
        let ext = s
            .link
            .expect("registered", |m| match m {
                Msg::Registered { ext, .. } => Some(Ok(ext.clone())),
                _ => None,
            })
            .await
            .map_err(|f| anyhow::anyhow!("station {}: {}: {}", s.ext, f.reason, f.detail))?;
        if ext != s.ext {
            anyhow::bail!("station approved as {} registered as {ext}", s.ext);
        }
        Ok(s)
    }
}

impl Station {
    fn req(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    /// Disconnect and connect again (the gateway knows its certificate).
    async fn reconnect(&mut self, gw: SocketAddr) -> Result<(), Fail> {
        self.link.conn.close(quinn::VarInt::from_u32(0), b"bye");
        let (link, h) = hello(&self.ep, gw, &self.gw_cfg, &self.ext).await?;
        self.link = link;
        match h {
            Hello::Registered(ext) if ext == self.ext => Ok(()),
            Hello::Registered(ext) => Err(Fail::new(
                "reconnect: another extension",
                format!("{} came back as {ext}", self.ext),
            )),
            Hello::Pending(_) => Err(Fail::new(
                "reconnect: not approved",
                format!("{} must enrol again", self.ext),
            )),
        }
    }

    /// Dial `number`: `Ok(Ok(call))` when it rings, `Ok(Err(reason))`
    /// when the gateway refuses.
    async fn dial(&mut self, number: &str) -> Result<Result<CallId, String>, Fail> {
        let req = self.req();
        self.link
            .send(&Msg::Dial {
                req,
                number: number.to_string(),
            })
            .await?;
        self.link
            .expect("ringing", |m| match m {
                Msg::Ringing { req: r, call, .. } if *r == req => Some(Ok(Ok(*call))),
                Msg::DialFailed { req: r, reason, .. } if *r == req => Some(Ok(Err(kebab(reason)))),
                _ => None,
            })
            .await
    }

    async fn ring(&mut self, from: &str) -> Result<CallId, Fail> {
        self.link
            .expect("ring", |m| match m {
                Msg::Ring { call, from: f, .. } => Some(if f == from {
                    Ok(*call)
                } else {
                    Err(Fail::new("ring: wrong caller", format!("{f}, not {from}")))
                }),
                _ => None,
            })
            .await
    }

    async fn connected(&mut self, call: CallId) -> Result<MediaPlan, Fail> {
        self.link
            .expect("connect", |m| match m {
                Msg::Connect { call: c, media } if *c == call => Some(Ok(media.clone())),
                _ => None,
            })
            .await
    }

    async fn ended(&mut self, call: CallId, want: &str) -> Result<(), Fail> {
        self.link
            .expect("ended", |m| match m {
                Msg::Ended { call: c, reason } if *c == call => {
                    let r = kebab(reason);
                    Some(if r == want {
                        Ok(())
                    } else {
                        Err(Fail::new(
                            format!("ended: {r}"),
                            format!("call {call}, expected {want}"),
                        ))
                    })
                }
                _ => None,
            })
            .await
    }
}

/// What the gateway half shares between its tasks.
pub(crate) struct GwLoad {
    pub tally: Tally,
    pool: Mutex<VecDeque<Station>>,
    gw: SocketAddr,
    talk: Duration,
    pub paused: AtomicBool,
    pub stopping: AtomicBool,
    pub lost: std::sync::atomic::AtomicUsize,
}

fn media_fail(e: impl std::fmt::Display) -> Fail {
    Fail::new("media: set-up failed", e.to_string())
}

/// The dialling end of a media connection: connect where the plan says,
/// present the call and its token.
async fn dial_media(
    a: &Station,
    call: CallId,
    plan: &MediaPlan,
) -> Result<quinn::Connection, Fail> {
    let flow = plan.flow(call);
    let addr: SocketAddr = plan
        .peer_addr
        .as_deref()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Fail::new("plan: no address", format!("{plan:?}")))?;
    let cfg = endpoint::client_config(&a.id, Some(plan.peer_fp.clone())).map_err(media_fail)?;
    let conn =
        a.ep.connect_with(cfg, addr, endpoint::SERVER_NAME)
            .map_err(media_fail)?
            .await
            .map_err(media_fail)?;
    medialink::dial(&conn, flow, &plan.token, STEP)
        .await
        .map_err(media_fail)?;
    Ok(conn)
}

/// The waiting end: take the connection from the expected peer with the
/// call's token (anything else, left from an earlier call, is refused).
async fn accept_media(
    b: &Station,
    call: CallId,
    plan: &MediaPlan,
) -> Result<quinn::Connection, Fail> {
    let flow = plan.flow(call);
    loop {
        let incoming =
            b.ep.accept()
                .await
                .ok_or_else(|| media_fail("the endpoint closed"))?;
        let Ok(conn) = incoming.await else { continue };
        if peer_fingerprint(&conn).as_deref() != Some(plan.peer_fp.as_str()) {
            conn.close(quinn::VarInt::from_u32(1), b"not expected");
            continue;
        }
        match medialink::accept(&conn, flow, &plan.token, STEP).await {
            Ok(()) => return Ok(conn),
            // Refused (left from an earlier call) or gone: wait for the next.
            Err(_) => continue,
        }
    }
}

/// Set up the media of `call` between caller `a` and callee `b`.
async fn media(
    a: &Station,
    b: &Station,
    call: CallId,
    pa: &MediaPlan,
    pb: &MediaPlan,
) -> Result<(quinn::Connection, quinn::Connection), Fail> {
    let both = async { tokio::try_join!(dial_media(a, call, pa), accept_media(b, call, pb)) };
    match tokio::time::timeout(STEP, both).await {
        Ok(r) => r,
        Err(_) => Err(Fail::new("media: timeout", format!("call {call}"))),
    }
}

fn hang(conns: &[&quinn::Connection]) {
    for c in conns {
        c.close(quinn::VarInt::from_u32(0), b"hangup");
    }
}

async fn talk(
    load: &GwLoad,
    call: CallId,
    plan: &MediaPlan,
    a: &quinn::Connection,
    b: &quinn::Connection,
) -> Result<(), Fail> {
    let t = media::talk_quic(plan.flow(call), a, b, load.talk).await?;
    Tally::add(&load.tally.media_sent, t.sent);
    Tally::add(&load.tally.media_received, t.received);
    Ok(())
}

/// `a` dials `b`, `b` answers, their media connection is up.
async fn ring_and_answer(
    a: &mut Station,
    b: &mut Station,
) -> Result<(CallId, MediaPlan, quinn::Connection, quinn::Connection), Fail> {
    let call = match a.dial(&b.ext).await? {
        Ok(call) => call,
        Err(reason) => {
            return Err(Fail::new(
                format!("dial failed: {reason}"),
                format!("{} -> {}", a.ext, b.ext),
            ))
        }
    };
    let rang = b.ring(&a.ext).await?;
    if rang != call {
        return Err(Fail::new(
            "ring: another call",
            format!("{rang}, not {call}"),
        ));
    }
    b.link.send(&Msg::Answer { call }).await?;
    let pa = a.connected(call).await?;
    let pb = b.connected(call).await?;
    let (ma, mb) = media(a, b, call, &pa, &pb).await?;
    Ok((call, pa, ma, mb))
}

/// `c` dials `number` and the gateway must refuse with `reason`.
async fn probe(load: &GwLoad, c: &mut Station, number: &str, reason: &str) -> Result<(), Fail> {
    match c.dial(number).await? {
        Err(got) if got == reason => {
            load.tally.asked(reason);
            Ok(())
        }
        Err(got) => Err(Fail::new(
            format!("dial failed: {got}"),
            format!("{} dialled {number}, expected {reason}", c.ext),
        )),
        Ok(call) => Err(Fail::new(
            "probe rang",
            format!("call {call} to {number} rang; expected {reason}"),
        )),
    }
}

/// One job's calls; `k` picks the probes.
async fn calls(load: &GwLoad, k: u64, t: &mut [Station; 3]) -> Result<(), Fail> {
    let [a, b, c] = t;
    if k % 8 == 3 {
        probe(load, c, UNKNOWN_EXT, "unknown-number").await?;
    }
    let (call, pa, ma, mb) = ring_and_answer(a, b).await?;
    let res = async {
        talk(load, call, &pa, &ma, &mb).await?;
        if k % 4 == 1 {
            let ext = b.ext.clone();
            probe(load, c, &ext, "busy").await?;
        }
        // B transfers A to C (blind): C rings from A and answers.
        let req = b.req();
        b.link
            .send(&Msg::Transfer {
                req,
                call,
                target: c.ext.clone(),
            })
            .await?;
        b.link
            .expect("transferring", |m| match m {
                Msg::Transferring { req: r, .. } if *r == req => Some(Ok(())),
                _ => None,
            })
            .await?;
        let leg = c.ring(&a.ext).await?;
        c.link.send(&Msg::Answer { call: leg }).await?;
        a.link
            .expect("replaced", |m| match m {
                Msg::Replaced { old, new, .. } if *old == call => Some(if *new == leg {
                    Ok(())
                } else {
                    Err(Fail::new(
                        "replaced: another call",
                        format!("{new}, not {leg}"),
                    ))
                }),
                _ => None,
            })
            .await?;
        b.ended(call, "transferred").await?;
        Ok::<_, Fail>(leg)
    }
    .await;
    hang(&[&ma, &mb]);
    let leg = res?;
    Tally::add(&load.tally.completed, 1);
    let pa = a.connected(leg).await?;
    let pc = c.connected(leg).await?;
    let (ma, mc) = media(a, c, leg, &pa, &pc).await?;
    let res = async {
        talk(load, leg, &pa, &ma, &mc).await?;
        let (by, other) = if k % 2 == 0 {
            (&mut *a, &mut *c)
        } else {
            (&mut *c, &mut *a)
        };
        by.link.send(&Msg::Hangup { call: leg }).await?;
        other.ended(leg, "hangup").await
    }
    .await;
    hang(&[&ma, &mc]);
    res?;
    Tally::add(&load.tally.completed, 1);
    Ok(())
}

impl GwLoad {
    pub fn new(stations: Vec<Station>, gw: SocketAddr, talk: Duration) -> Arc<GwLoad> {
        Arc::new(GwLoad {
            tally: Tally::default(),
            pool: Mutex::new(stations.into()),
            gw,
            talk,
            paused: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            lost: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn put_back(&self, s: Station) {
        if let Ok(mut p) = self.pool.lock() {
            p.push_back(s);
        }
    }

    async fn reconnect_or_lose(&self, mut s: Station) -> Option<Station> {
        for attempt in 0..3 {
            match s.reconnect(self.gw).await {
                Ok(()) => {
                    Tally::add(&self.tally.reconnects, 1);
                    return Some(s);
                }
                Err(f) => {
                    self.tally.unexpected(&Fail::new(
                        format!("reconnect: {}", f.reason),
                        format!("{} (try {}): {}", s.ext, attempt + 1, f.detail),
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.lost.fetch_add(1, Ordering::Relaxed);
        None
    }

    async fn job(self: Arc<Self>, k: u64, mut t: [Station; 3]) {
        let _running = InFlight::new(&self.tally);
        let res = calls(&self, k, &mut t).await;
        let [a, b, c] = t;
        match res {
            Ok(()) => {
                self.put_back(b);
                self.put_back(c);
                if let Some(a) = self.reconnect_or_lose(a).await {
                    self.put_back(a);
                }
            }
            Err(f) => {
                self.tally.unexpected(&Fail::new(
                    f.reason,
                    format!("job {k} ({} {} {}): {}", a.ext, b.ext, c.ext, f.detail),
                ));
                for x in [a, b, c] {
                    if let Some(x) = self.reconnect_or_lose(x).await {
                        self.put_back(x);
                    }
                }
            }
        }
    }

    /// Start a job every `1/rate` s while there are three idle stations.
    pub async fn schedule(self: Arc<Self>, rate: f64) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut k = 0u64;
        while !self.stopping.load(Ordering::Relaxed) {
            tick.tick().await;
            if self.paused.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed) {
                continue;
            }
            let three = self.pool.lock().ok().and_then(|mut p| {
                if p.len() < 3 {
                    return None;
                }
                Some([p.pop_front()?, p.pop_front()?, p.pop_front()?])
            });
            match three {
                Some(t) => {
                    k += 1;
                    tokio::spawn(self.clone().job(k, t));
                }
                None => Tally::add(&self.tally.skipped, 1),
            }
        }
    }

    pub fn busy(&self) -> usize {
        self.tally.in_flight.load(Ordering::Relaxed)
    }

    pub fn idle(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn close_all(&self) {
        if let Ok(mut p) = self.pool.lock() {
            for s in p.drain(..) {
                s.link.conn.close(quinn::VarInt::from_u32(0), b"soak over");
                s.ep.close(quinn::VarInt::from_u32(0), b"soak over");
            }
        }
    }
}
