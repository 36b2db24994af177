//! The shell both modes share around the phone core
//! ([`keyline_proto::phone`]): it routes the core's replies to whoever
//! asked, makes its sounds, keeps each call's media session, hold music and
//! recording, publishes its events to subscribers, writes the last call's
//! record, and runs its timer. The office station ([`crate::daemon`]) and
//! the internet terminal ([`crate::terminal`]) add only their link: how a
//! [`LinkOut`] is sent and how media is connected.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keyline_net::control::Events;
use keyline_proto::msg::CallId;
use keyline_proto::phone::{
    Call, CallKey, CallState, Command, Config, Event, LinkOut, MediaIn, Output, Phone, Reply, Req,
    Sound,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::api::Request;
use crate::audio::{self, LocalAudio};
use crate::calls;
use crate::cli::EndpointArgs;
use crate::session::{
    finish_recording, recording_error, recording_path, start_recording, Hold, MediaStats,
    RecordSlot, Session, SharedRecord,
};

/// Calls `history` remembers (in memory: a restart forgets them).
const HISTORY: usize = 100;

/// What the adapter must do itself: everything that touches its link.
#[derive(Debug)]
pub(crate) enum Todo<P> {
    Send(LinkOut),
    StartMedia {
        key: CallKey,
        call: CallId,
        plan: P,
    },
    /// The station dropped the media of `key`; close anything else held
    /// for it.
    StopMedia {
        key: CallKey,
    },
    /// A look-up-only caller to refuse as busy (only terminals take
    /// look-up-only calls).
    RefuseLookup {
        #[allow(dead_code)]
        plan: P,
    },
}

/// One call's media: the running session, what it plays on hold, and its
/// recording.
struct MediaSlot {
    session: Option<Session>,
    hold: Arc<Hold>,
    record: SharedRecord,
    /// Wall-clock start of media, for mouth-to-ear measurements.
    started_unix_ms: Option<u128>,
    /// The counters of the last session, once it is stopped.
    stats: Option<MediaStats>,
    /// How the media reaches the other end, in words.
    path: Option<String>,
}

impl MediaSlot {
    fn stats(&self) -> Option<MediaStats> {
        self.session.as_ref().map(Session::stats).or(self.stats)
    }
}

pub(crate) struct Station<P> {
    pub(crate) phone: Phone<P>,
    replies: HashMap<Req, oneshot::Sender<Result<Reply, String>>>,
    next_ctl: Req,
    media: HashMap<CallKey, MediaSlot>,
    ringer: Option<JoinHandle<()>>,
    /// How the last call went, for `status`.
    pub(crate) last_call: Option<Value>,
    /// The last [`HISTORY`] calls, newest first, for `history`.
    history: VecDeque<Value>,
    hold_music: Vec<i16>,
    record_dir: Option<PathBuf>,
    pub(crate) events: Events,
    /// Wakes the timer task when a deadline may have moved.
    pub(crate) wake: Arc<Notify>,
    metrics: crate::metrics::AgentMetrics,
}

/// What an office station and an internet terminal open at start from
/// the options both take: the sound and picture devices, and the phone
/// core (configured by `cfg`, with the options' auto-answer) in its shell,
/// with the hold music and the recording directory.
pub(crate) fn open<P: Clone>(
    args: &EndpointArgs,
    state_dir: &Path,
    mut cfg: Config,
    events: Events,
) -> anyhow::Result<(LocalAudio, Station<P>)> {
    let audio = LocalAudio::open(
        audio::AudioChoice {
            input: args.audio_in.clone(),
            out: args.audio_out.clone(),
            ring_out: None,
            ringtone: args.ringtone.clone(),
        },
        &args.video_in,
        &args.video_out,
        state_dir,
    )?;
    let hold_music = audio::load_samples(
        args.hold_music.as_deref(),
        "hold music",
        keyline_media::hold_music,
    )?;
    cfg.auto_answer = args.auto_answer.map(std::time::Duration::from_secs);
    let station = Station::new(Phone::new(cfg), hold_music, args.record_dir.clone(), events);
    Ok((audio, station))
}

impl<P: Clone> Station<P> {
    /// Tell subscribers the audio now in use (after `audio-set`), and
    /// the reply.
    pub(crate) fn audio_changed(&self, now: Value) -> Value {
        self.events
            .publish(json!({"event": "audio", "audio": now.clone()}));
        json!({"ok": true, "audio": now})
    }

    pub(crate) fn new(
        phone: Phone<P>,
        hold_music: Vec<i16>,
        record_dir: Option<PathBuf>,
        events: Events,
    ) -> Station<P> {
        Station {
            phone,
            replies: HashMap::new(),
            next_ctl: 0,
            media: HashMap::new(),
            ringer: None,
            last_call: None,
            history: VecDeque::new(),
            hold_music,
            record_dir,
            events,
            wake: Arc::new(Notify::new()),
            metrics: crate::metrics::AgentMetrics::new(),
        }
    }

    /// Give the core a command; the receiver gets its answer (the caller
    /// drains with [`Station::drain`] first).
    pub(crate) fn command(&mut self, cmd: Command) -> oneshot::Receiver<Result<Reply, String>> {
        self.next_ctl += 1;
        let ctl = self.next_ctl;
        let (tx, rx) = oneshot::channel();
        self.replies.insert(ctl, tx);
        self.phone.handle_command(Instant::now(), ctl, cmd);
        rx
    }

    /// Carry out the core's outputs that are the same for both modes;
    /// return the rest for the adapter.
    pub(crate) fn drain(&mut self, audio: &LocalAudio) -> Vec<Todo<P>> {
        let mut todo = Vec::new();
        while let Some(o) = self.phone.poll_output() {
            match o {
                Output::Send(m) => todo.push(Todo::Send(m)),
                Output::StartMedia { key, call, plan } => {
                    todo.push(Todo::StartMedia { key, call, plan })
                }
                Output::RefuseLookup { plan } => todo.push(Todo::RefuseLookup { plan }),
                Output::Reply { ctl, result } => {
                    if let Some(tx) = self.replies.remove(&ctl) {
                        let _ = tx.send(result);
                    }
                }
                Output::Sound(s) => {
                    if let Some(r) = self.ringer.take() {
                        r.abort();
                    }
                    self.ringer = match s {
                        Sound::Ring => Some(audio.ring()),
                        Sound::Ringback => Some(audio.ringback()),
                        Sound::Silence => None,
                    };
                }
                Output::LocalHold { key, on } => {
                    self.slot(key)
                        .hold
                        .holding
                        .store(on, std::sync::atomic::Ordering::Relaxed);
                }
                Output::StopMedia { key } => {
                    if let Some(s) = self.media.get_mut(&key) {
                        if let Some(old) = s.session.take() {
                            s.stats = Some(old.stats());
                        }
                    }
                    todo.push(Todo::StopMedia { key });
                }
                Output::Ended { call, reason } => self.ended(&call, &reason),
                Output::Event(e) => self.publish(&e),
            }
        }
        self.wake.notify_one();
        todo
    }

    fn publish(&self, e: &Event) {
        let v = match e {
            Event::Call { call } => json!({"event": "call", "call": self.call_json(call)}),
            Event::CallEnded { call, reason } => json!({
                "event": "call-ended",
                "call": self.call_json(call),
                "reason": reason,
            }),
        };
        self.events.publish(v);
    }

    fn slot(&mut self, key: CallKey) -> &mut MediaSlot {
        let consult = self.phone.call_by_key(key).is_some_and(|c| c.consult);
        let music = if consult {
            Vec::new()
        } else {
            self.hold_music.clone()
        };
        self.media.entry(key).or_insert_with(|| MediaSlot {
            session: None,
            hold: Arc::new(Hold::new(music)),
            record: Arc::new(Mutex::new(RecordSlot::default())),
            started_unix_ms: None,
            stats: None,
            path: None,
        })
    }

    /// The recording slot of call `key` (for `record on|off`).
    pub(crate) fn record(&mut self, key: CallKey) -> SharedRecord {
        self.slot(key).record.clone()
    }

    /// Start call `key`'s media on a verified connection and tell the
    /// core; `flow` is the id on its datagrams.
    /// How call `key`'s media reaches the other end, in words.
    pub(crate) fn set_path(&mut self, key: CallKey, path: String) {
        self.slot(key).path = Some(path);
    }

    pub(crate) fn install(
        &mut self,
        audio: &LocalAudio,
        key: CallKey,
        flow: CallId,
        conn: quinn::Connection,
        relayed: bool,
    ) {
        let Some(c) = self.phone.call_by_key(key) else {
            conn.close(quinn::VarInt::from_u32(0), b"call already over");
            return;
        };
        let (peer, consult) = (c.peer.clone(), c.consult);
        let record_dir = self.record_dir.clone();
        let slot = self.slot(key);
        match Session::start(
            conn,
            flow,
            audio.source.clone(),
            audio.sink.clone(),
            slot.record.clone(),
            slot.hold.clone(),
            audio.video.clone(),
        ) {
            Ok(s) => {
                slot.session = Some(s);
                slot.started_unix_ms
                    .get_or_insert_with(|| calls::unix_ms_now().unwrap_or(0));
                if let (Some(dir), false) = (&record_dir, consult) {
                    if let Err(e) = start_recording(&slot.record, dir, &peer) {
                        tracing::warn!("cannot record the call with {peer}: {e:#}");
                    }
                }
                self.phone
                    .handle_media(Instant::now(), MediaIn::Up { key, relayed });
            }
            Err(e) => self.phone.handle_media(
                Instant::now(),
                MediaIn::Failed {
                    key,
                    why: format!("{e:#}"),
                    ended: None,
                },
            ),
        }
    }

    /// The connection of call `key`'s running media session.
    pub(crate) fn session_conn(&self, key: CallKey) -> Option<&quinn::Connection> {
        self.media.get(&key)?.session.as_ref().map(|s| &s.conn)
    }

    /// Let the core handle its deadlines if one is due; whether one was
    /// (the caller then drains).
    pub(crate) fn handle_due(&mut self) -> bool {
        let now = Instant::now();
        let due = self.phone.poll_timeout().is_some_and(|t| t <= now);
        if due {
            self.phone.handle_timeout(now);
        }
        due
    }

    /// The `record` control command on the connected call (see
    /// [`calls::record_command`]).
    pub(crate) fn record_command(
        &mut self,
        on: bool,
        record_dir: Option<&Path>,
        state_dir: &Path,
    ) -> Value {
        let Some((key, peer)) = self
            .phone
            .call()
            .filter(|c| c.state == CallState::Connected)
            .map(|c| (c.key, c.peer.clone()))
        else {
            return keyline_net::control::error("no connected call to record");
        };
        let reply = calls::record_command(&self.record(key), on, &peer, record_dir, state_dir);
        // Whoever shows the call shows whether it is recorded.
        if let Some(c) = self.phone.call() {
            let v = json!({"event": "call", "call": self.call_json(c)});
            self.events.publish(v);
        }
        reply
    }

    /// A call ended: finish its recording and keep its record.
    fn ended(&mut self, c: &Call, reason: &str) {
        let slot = self.media.remove(&c.key);
        if c.consult {
            return;
        }
        let (recording, recording_error, stats, started) = match &slot {
            Some(s) => {
                let (r, e) = finish_recording(&s.record);
                (r, e, s.stats(), s.started_unix_ms)
            }
            None => (None, None, None, None),
        };
        self.metrics.call_ended(c, Instant::now(), stats.as_ref());
        let record = json!({
            "id": c.id,
            "peer": c.peer,
            "peer_name": c.peer_name,
            "ended_unix_ms": calls::unix_ms_now(),
            "direction": c.direction.as_str(),
            "ended": reason,
            "connected": c.connected_at.is_some(),
            "seconds": c.connected_at.map(|t| t.elapsed().as_secs_f64()),
            "relayed": c.relayed,
            "path": slot.as_ref().and_then(|s| s.path.clone()),
            "lookup": c.lookup,
            "redirected_from": c.redirected_from,
            "timing": timing(c, started),
            "recording": recording,
            "recording_error": recording_error,
            "media": stats,
        });
        if self.history.len() >= HISTORY {
            self.history.pop_back();
        }
        self.history.push_front(record.clone());
        self.last_call = Some(record);
    }

    /// The `metrics` control command: the agent's metrics in Prometheus's
    /// text format.
    pub(crate) fn metrics_json(&self) -> Value {
        let current: Vec<MediaStats> = self.media.values().filter_map(MediaSlot::stats).collect();
        let active = usize::from(self.phone.call().is_some())
            + usize::from(self.phone.consultation().is_some());
        let text = self.metrics.render(active, current.iter());
        json!({"ok": true, "text": text})
    }

    /// The `history` control command: the calls that ended, newest first.
    pub(crate) fn history_json(&self) -> Value {
        json!({"ok": true, "calls": self.history})
    }

    /// The `mute` control command: send silence instead of the
    /// microphone on the current call (or stop).
    pub(crate) fn mute_command(&mut self, on: bool) -> Value {
        let Some(key) = self.phone.call().map(|c| c.key) else {
            return keyline_net::control::error("no call to mute");
        };
        self.slot(key)
            .hold
            .muted
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = self.phone.call() {
            let v = json!({"event": "call", "call": self.call_json(c)});
            self.events.publish(v);
        }
        json!({"ok": true, "muted": on})
    }

    /// The `video` control command: turn the camera off on the current
    /// call (the other end gets a black card and is told) or on again.
    pub(crate) fn video_command(&mut self, on: bool) -> Value {
        let Some(key) = self.phone.call().map(|c| c.key) else {
            return keyline_net::control::error("no call to turn the camera on or off in");
        };
        self.slot(key)
            .hold
            .camera_off
            .store(!on, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = self.phone.call() {
            let v = json!({"event": "call", "call": self.call_json(c)});
            self.events.publish(v);
        }
        json!({"ok": true, "camera": on})
    }

    /// A call as `status` and events show it.
    pub(crate) fn call_json(&self, c: &Call) -> Value {
        let slot = self.media.get(&c.key);
        json!({
            "id": c.id,
            "peer": c.peer,
            "peer_name": c.peer_name,
            "number": c.number,
            "via": c.via,
            "redirected_from": c.redirected_from,
            "direction": c.direction.as_str(),
            "state": c.state.as_str(),
            "seconds": c.connected_at.unwrap_or(c.started).elapsed().as_secs_f64(),
            "relayed": c.relayed,
            "path": slot.and_then(|s| s.path.clone()),
            "lookup": c.lookup,
            "consult": c.consult,
            "timing": timing(c, slot.and_then(|s| s.started_unix_ms)),
            "on_hold": c.on_hold,
            "held_by_peer": c.held_by_peer,
            "muted": slot.is_some_and(|s| s.hold.muted.load(std::sync::atomic::Ordering::Relaxed)),
            "recording": slot.and_then(|s| recording_path(&s.record)),
            "recording_error": slot.and_then(|s| recording_error(&s.record)),
            "media": slot.and_then(MediaSlot::stats),
        })
    }
}

fn timing(c: &Call, media_started_unix_ms: Option<u128>) -> Value {
    calls::timing(
        c.started,
        c.ringing_at,
        c.answered_at,
        c.connected_at,
        media_started_unix_ms,
    )
}

/// What both modes hold that the requests they answer alike need.
pub(crate) trait Host: Send + Sync + 'static {
    /// How the mode's link describes a call's media.
    type Plan: Clone;
    fn audio(&self) -> &LocalAudio;
    /// Run `f` on the station, under the mode's lock.
    fn with_station<R>(&self, f: impl FnOnce(&mut Station<Self::Plan>) -> R) -> R;
    /// Where `record` writes (`--record-dir`, else under the state
    /// directory).
    fn record_dir(&self) -> Option<&Path>;
    fn state_dir(&self) -> &Path;
    /// Answer a control request that [`shared_request`] left to the mode.
    fn own_request(
        self: Arc<Self>,
        req: Request,
    ) -> impl std::future::Future<Output = Value> + Send;
    /// Handle what is due in the phone core and carry out its outputs;
    /// the next deadline.
    fn tick(self: Arc<Self>) -> Option<Instant>;
}

/// Answer one control request: those both modes answer alike here, the
/// rest by the mode.
async fn control<H: Host>(host: Arc<H>, req: Value) -> Value {
    let req = match crate::api::parse_request(req) {
        Ok(r) => r,
        Err(e) => return keyline_net::control::error(e),
    };
    match shared_request(&host, req).await {
        Ok(reply) => reply,
        Err(req) => host.own_request(req).await,
    }
}

/// Answer the requests both modes answer the same way (sound devices,
/// history, media figures, mute, video, recording); any other comes back
/// as `Err` for the mode's own handler.
pub(crate) async fn shared_request<H: Host>(host: &Arc<H>, req: Request) -> Result<Value, Request> {
    Ok(match req {
        Request::AudioDevices => audio::devices_reply().await,
        Request::AudioSet { choice } => {
            match audio::set_off_runtime(host.clone(), H::audio, Value::Object(choice)).await {
                Ok(now) => host.with_station(|s| s.audio_changed(now)),
                Err(e) => keyline_net::control::error(format!("audio not changed: {e}")),
            }
        }
        Request::History => host.with_station(|s| s.history_json()),
        Request::Metrics => host.with_station(|s| s.metrics_json()),
        Request::Mute { on } => host.with_station(|s| s.mute_command(on)),
        Request::Video { on } => host.with_station(|s| s.video_command(on)),
        Request::Record { on } => {
            let (record_dir, state_dir) = (host.record_dir(), host.state_dir());
            host.with_station(|s| s.record_command(on, record_dir, state_dir))
        }
        other => return Err(other),
    })
}

/// Await a command's answer as a control reply: `ok` with the reply's
/// fields, or the error.
pub(crate) async fn reply(rx: oneshot::Receiver<Result<Reply, String>>) -> Value {
    match rx.await {
        Ok(Ok(r)) => {
            let mut v = serde_json::to_value(&r).unwrap_or_else(|_| json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("ok".into(), Value::Bool(true));
                v
            } else {
                json!({"ok": true})
            }
        }
        Ok(Err(e)) => keyline_net::control::error(e),
        Err(_) => keyline_net::control::error("the station stopped"),
    }
}

/// Start the two tasks every adapter runs: its control socket, with the
/// event stream, and the phone core's timer, woken early by `wake`.
pub(crate) fn start<H: Host>(
    host: &Arc<H>,
    ctl: tokio::net::UnixListener,
    events: Events,
    wake: Arc<Notify>,
) {
    let h = host.clone();
    tokio::spawn(keyline_net::control::serve_with_events(
        ctl,
        events,
        move |req| control(h.clone(), req),
    ));
    let h = host.clone();
    tokio::spawn(run_timer(wake, move || h.clone().tick()));
}

/// The timer: `fire` handles what is due and says when to come back.
async fn run_timer(wake: Arc<Notify>, fire: impl Fn() -> Option<Instant>) {
    loop {
        let notified = wake.notified();
        match fire() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
