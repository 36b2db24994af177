//! Outside calls on the switch (claims 1, 2 and 6): the switch task's
//! side of the office's line to the outside world.
//!
//! The uplink ([`crate::uplink`]) keeps the office number registered with
//! the internet directory; this module places and takes outside calls for
//! the stations. In the switchboard an outside call is a call with a trunk
//! line (`keyline_proto::call::Line::Trunk`), and the switchboard decides
//! what becomes of it (fallback to the relay, hand-offs accepted, the far
//! end gone); this module only turns its actions on trunk lines into
//! directory requests and the directory's events into its inputs.
//!
//! Media never ends at the gateway: the station's end-to-end connection to
//! the far end runs through a forwarder allocation whose outside port the
//! gateway announces to the directory as the station's address for that
//! call, vouching for the station's certificate. The LAN-only station never
//! touches the internet, and the forwarder moves packets it cannot read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keyline_dirclient::client::{
    self as dir, parse_number, CallError, CallOptions, DirClient, MediaPlan as DirPlan,
};
use keyline_net::relay;
use keyline_proto::call::{HandedOn, Line, TrunkId, TrunkLine};
use keyline_proto::dir::{DirectPolicy, EndReason as DirEnd, ErrorCode};
use keyline_proto::msg::{CallId, FailReason, MediaPlan, Msg};
use keyline_proto::number::Number;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Switch;
use crate::shared::{Event, Shared, TrunkEvent, VoicemailJob};

/// What the shell holds of one outside call besides the switchboard's
/// state of it: the I/O in flight and the media details.
#[derive(Debug, Default)]
pub struct TrunkIo {
    /// The far end's certificate and addresses (incoming calls).
    caller_fp: String,
    caller_candidates: Vec<SocketAddr>,
    /// How the media connects, once the call is answered.
    plan: Option<DirPlan>,
    /// The task placing an outgoing call (aborting it cancels the call).
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The uplink's state and the outside calls' I/O (their state is the
/// switchboard's).
#[derive(Debug, Default)]
pub struct Trunks {
    pub client: Option<(DirClient, IpAddr)>,
    /// The office number callers see (the first registered).
    office_number: Option<String>,
    status: Value,
    /// By switchboard call id.
    io: HashMap<CallId, TrunkIo>,
    /// Incoming calls handed to the switchboard, until it rings or refuses:
    /// the caller's certificate and addresses.
    arriving: HashMap<u64, (String, Vec<SocketAddr>)>,
}

impl Trunks {
    pub fn new(configured: bool) -> Trunks {
        Trunks {
            status: json!({ "state": if configured { "connecting" } else { "off" } }),
            ..Trunks::default()
        }
    }

    pub fn status(&self) -> Value {
        self.status.clone()
    }
}

fn fail_reason(e: &CallError) -> FailReason {
    match e {
        CallError::Ended { reason, .. } => ended_reason(*reason),
        other => match other.code() {
            Some(ErrorCode::UnknownNumber) => FailReason::UnknownNumber,
            Some(ErrorCode::InvalidNumber) => FailReason::InvalidNumber,
            Some(ErrorCode::SelfCall) => FailReason::SelfCall,
            Some(ErrorCode::ForwardLoop | ErrorCode::TooManyHops) => FailReason::ForwardLoop,
            Some(ErrorCode::NotLoggedIn | ErrorCode::NotYourNumber) => FailReason::NotAllowed,
            _ => FailReason::Unreachable,
        },
    }
}

/// Why an outside call that rang ended, as the station is told.
fn ended_reason(reason: DirEnd) -> FailReason {
    match reason {
        DirEnd::Busy => FailReason::Busy,
        DirEnd::NoAnswer => FailReason::NoAnswer,
        DirEnd::Rejected => FailReason::Declined,
        _ => FailReason::Unreachable,
    }
}

impl Switch {
    pub(crate) fn on_trunk(&mut self, now: Instant, ev: TrunkEvent) {
        match ev {
            TrunkEvent::Up {
                client,
                outside_ip,
                numbers,
                observed,
            } => {
                self.trunks.office_number = numbers.first().cloned();
                self.trunks.status = json!({
                    "state": "registered",
                    "numbers": numbers,
                    "observed": observed.to_string(),
                    "outside_ip": outside_ip.to_string(),
                    "directory_fingerprint": client.directory_fingerprint(),
                    "address": client.connection().remote_address().to_string(),
                });
                if let Ok(mut c) = self.shared.dir_client.lock() {
                    *c = Some(client.clone());
                }
                self.shared.metrics.uplink("registered");
                self.shared.publisher.publish(&crate::api::Event::Uplink {
                    uplink: crate::api::Uplink {
                        state: "registered".into(),
                        numbers: numbers.clone(),
                        last_error: None,
                    },
                });
                self.trunks.client = Some((client, outside_ip));
            }
            TrunkEvent::Down { reason } => {
                self.trunks.client = None;
                if let Ok(mut c) = self.shared.dir_client.lock() {
                    *c = None;
                }
                self.trunks.status = json!({ "state": "connecting", "last_error": reason });
                self.shared.metrics.uplink("connecting");
                self.shared.publisher.publish(&crate::api::Event::Uplink {
                    uplink: crate::api::Uplink {
                        state: "connecting".into(),
                        numbers: Vec::new(),
                        last_error: Some(reason.clone()),
                    },
                });
                // Every outside call went with the connection.
                self.sb.handle_uplink_down(now);
                for (dc, _) in std::mem::take(&mut self.trunks.arriving) {
                    tracing::info!("incoming call {dc} lost with the directory");
                }
            }
            TrunkEvent::Dir(ev) => self.on_directory(now, ev),
            TrunkEvent::Ringing { call, dir_call } => {
                self.sb.handle_outside_ringing(call, dir_call);
            }
            TrunkEvent::Answered { call, connected } => {
                let Some(t) = self.trunks.io.get_mut(&call) else {
                    return;
                };
                t.task = None;
                let plan = connected.plan;
                // The office's own rule for calls it places, else the
                // directory's.
                let rule = self.shared.cfg().direct_connect.unwrap_or(plan.policy);
                if let Some(a) = self.relays.get(&call) {
                    a.retarget_callee(match (plan.relay, rule) {
                        (Some(r), _) => vec![r],
                        (None, DirectPolicy::Relay) => Vec::new(),
                        (None, _) => plan.peer_candidates.clone(),
                    });
                }
                // How long the far end has to be heard before the relay is
                // asked for (the switchboard keeps the deadline).
                let fallback = match (plan.relay, rule) {
                    (Some(_), _) | (None, DirectPolicy::Direct) => None,
                    (None, DirectPolicy::Relay) => Some(Duration::ZERO),
                    (None, DirectPolicy::DirectThenRelay) => Some(plan.fallback_after),
                };
                t.plan = Some(plan);
                if let Err(e) = self
                    .sb
                    .handle_outside_answered(now, call, connected.call, fallback)
                {
                    tracing::warn!("outside call {call}: {e}");
                }
            }
            TrunkEvent::Failed { call, reason } => {
                if let Some(t) = self.trunks.io.get_mut(&call) {
                    t.task = None;
                    self.sb.handle_outside_failed(now, call, reason);
                }
            }
            TrunkEvent::Accepted { call, plan } => {
                let Some(t) = self.trunks.io.get_mut(&call) else {
                    return;
                };
                if let (Some(r), Some(a)) = (plan.relay, self.relays.get(&call)) {
                    a.retarget_callee(vec![r]);
                }
                t.plan = Some(plan.clone());
                let station = self
                    .sb
                    .call(call)
                    .and_then(|c| c.station().ext().map(str::to_string));
                if let Some(ext) = station {
                    self.send(
                        &ext,
                        Msg::Connect {
                            call,
                            media: MediaPlan {
                                dial: false,
                                peer_addr: None,
                                peer_fp: plan.peer_fp,
                                token: plan.token,
                                relayed: true,
                                media_call: Some(plan.call),
                            },
                        },
                    );
                }
            }
            TrunkEvent::AcceptFailed { call, message } => {
                tracing::warn!("outside call {call}: answering failed: {message}");
                self.sb.handle_outside_answer_failed(now, call);
            }
            TrunkEvent::Relay { call, relay } => {
                if let Some(a) = self.relays.get(&call) {
                    a.retarget_callee(vec![relay]);
                }
            }
        }
    }

    fn on_directory(&mut self, now: Instant, ev: dir::Event) {
        match ev {
            dir::Event::Ring(inc) => {
                tracing::info!(
                    "incoming call {} from {} for {}{}",
                    inc.call,
                    inc.from,
                    inc.number,
                    inc.ext
                        .as_deref()
                        .map(|e| format!("/{e}"))
                        .unwrap_or_default()
                );
                let number = match Number::parse(&inc.from) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!("incoming call {}: the caller's number: {e}", inc.call);
                        return self.inbound_refused(inc.call, FailReason::InvalidNumber);
                    }
                };
                self.trunks
                    .arriving
                    .insert(inc.call, (inc.caller_fp, inc.caller_candidates));
                let line = TrunkLine {
                    id: TrunkId::In(inc.call),
                    number,
                };
                self.sb
                    .handle_offered(now, line, inc.ext.as_deref(), inc.handoff);
            }
            dir::Event::Ended { call: dc, reason } => {
                self.trunks.arriving.remove(&dc);
                self.sb
                    .handle_directory_ended(now, dc, ended_reason(reason));
            }
            dir::Event::Transferred {
                call: dc,
                number,
                by,
                handoff,
            } => {
                tracing::info!("{by} handed call {dc} on to {number}");
                match Number::parse(&number) {
                    Ok(number) => {
                        self.sb.handle_far_handoff(now, dc, number, handoff);
                    }
                    Err(e) => {
                        tracing::warn!("call {dc} handed on to a bad number: {e}");
                        self.sb
                            .handle_directory_ended(now, dc, FailReason::Unreachable);
                    }
                }
            }
            dir::Event::Relay { call: dc, relay } => {
                if let Some(a) = self
                    .sb
                    .call_of_directory(dc)
                    .and_then(|call| self.relays.get(&call))
                {
                    a.retarget_callee(vec![relay]);
                }
            }
            dir::Event::Mail(m) => self.office_mail(m),
            dir::Event::Expect { from, .. } => {
                tracing::info!("{from} looked the office up; look-up-only calls are not taken");
            }
            dir::Event::AddressChanged { observed } => {
                self.trunks.status["observed"] = json!(observed.to_string());
            }
            dir::Event::Unbound { numbers, reason } => {
                tracing::warn!("directory: {} unbound: {reason}", numbers.join(", "));
            }
            dir::Event::Error { code, message } => {
                tracing::warn!("directory error {code:?}: {message}");
            }
            dir::Event::GoingAway { .. } | dir::Event::Disconnected { .. } => {}
        }
    }

    /// The switchboard rang a trunk line: place the outside call.
    pub(crate) fn place_outside(&mut self, call: CallId, caller: &str, line: &TrunkLine) {
        let now = Instant::now();
        let number = line.number.clone();
        let res = (|| -> Result<(DirClient, SocketAddr, String)> {
            let (client, outside_ip) = self
                .trunks
                .client
                .clone()
                .context("the office is not connected to its directory")?;
            let (fp, port) = self.open_forwarder(call, caller, Vec::new(), outside_ip)?;
            Ok((client, port, fp))
        })();
        let (client, port, fp) = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("call {call} to {number}: {e:#}");
                self.sb
                    .handle_outside_failed(now, call, FailReason::Unreachable);
                return;
            }
        };
        let handoff = self.sb.outside_call(call).and_then(|o| o.handoff);
        let tx = self.shared.events.clone();
        let task = tokio::spawn(async move {
            let (ptx, mut prx) = mpsc::channel(4);
            let progress = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(p) = prx.recv().await {
                        if let dir::Progress::Ringing { call: dir_call, .. } = p {
                            let _ = tx
                                .send(Event::Trunk(TrunkEvent::Ringing { call, dir_call }))
                                .await;
                        }
                    }
                })
            };
            let opts = CallOptions {
                candidates: vec![port],
                media_fp: Some(fp),
                progress: Some(ptx),
                handoff,
                ..CallOptions::default()
            };
            let ev = match client.call(&number, opts).await {
                Ok(connected) => TrunkEvent::Answered { call, connected },
                Err(e) => {
                    tracing::info!("outside call {call}: {e}");
                    TrunkEvent::Failed {
                        call,
                        reason: fail_reason(&e),
                    }
                }
            };
            progress.abort();
            let _ = tx.send(Event::Trunk(ev)).await;
        });
        self.trunks.io.insert(
            call,
            TrunkIo {
                task: Some(task),
                ..TrunkIo::default()
            },
        );
    }

    /// The switchboard rings a station for the incoming outside call
    /// `dir_call`.
    pub(crate) fn inbound_ringing(&mut self, call: CallId, dir_call: u64) {
        let (caller_fp, caller_candidates) =
            self.trunks.arriving.remove(&dir_call).unwrap_or_default();
        self.trunks.io.insert(
            call,
            TrunkIo {
                caller_fp,
                caller_candidates,
                ..TrunkIo::default()
            },
        );
    }

    /// The switchboard refused an incoming outside call.
    pub(crate) fn inbound_refused(&mut self, dir_call: u64, reason: FailReason) {
        self.trunks.arriving.remove(&dir_call);
        let Some((client, _)) = self.trunks.client.clone() else {
            return;
        };
        tokio::spawn(async move {
            // No such extension: declined. Nobody free or online: busy,
            // which is what a caller can act on (try again later).
            let r = match reason {
                FailReason::UnknownNumber | FailReason::InvalidNumber | FailReason::NotAllowed => {
                    client.reject(dir_call).await
                }
                _ => client.busy(dir_call).await,
            };
            if let Err(e) = r {
                tracing::debug!("refusing call {dir_call}: {e}");
            }
        });
    }

    /// The switchboard ended an outside call for the trunk line: stop
    /// placing it if that is still under way.
    pub(crate) fn trunk_ended(&mut self, call: CallId) {
        if let Some(task) = self.trunks.io.remove(&call).and_then(|t| t.task) {
            // Still placing the call: dropping the request cancels it.
            task.abort();
        }
    }

    /// The switchboard ended an outside call the directory still has.
    pub(crate) fn hang_up_outside(&mut self, dir_call: u64) {
        if let Some((client, _)) = self.trunks.client.clone() {
            tokio::spawn(async move {
                if let Err(e) = client.hangup(dir_call).await {
                    tracing::debug!("hanging up call {dir_call}: {e}");
                }
            });
        }
    }

    /// Nothing came from the far end of the outside call `call` in time:
    /// ask the directory for its relay.
    pub(crate) fn fall_back(&mut self, call: CallId, dir_call: u64) {
        // The switchboard hears of the far end only while the media watch
        // lasts (10 s); the forwarder's own count is the last word, and a
        // call without a forwarder has nothing to move.
        match self.relays.get(&call).map(|a| a.callee_packets()) {
            None => return,
            Some(0) => {}
            Some(_) => return self.sb.handle_outside_media(call),
        }
        let Some((client, _)) = self.trunks.client.clone() else {
            return;
        };
        tracing::info!("outside call {call}: no direct answer; asking for the relay");
        let tx = self.shared.events.clone();
        tokio::spawn(async move {
            match client.fallback(dir_call).await {
                Ok(relay) => {
                    let _ = tx
                        .send(Event::Trunk(TrunkEvent::Relay { call, relay }))
                        .await;
                }
                Err(e) => tracing::warn!("call {call}: no relay: {e}"),
            }
        });
    }

    /// Open call `call`'s forwarder allocation between station `ext` and
    /// the outside (towards `far`, or nowhere yet). Returns the station's
    /// certificate fingerprint, which the gateway vouches for, and the
    /// allocation's outside port.
    fn open_forwarder(
        &mut self,
        call: CallId,
        ext: &str,
        far: Vec<SocketAddr>,
        outside_ip: IpAddr,
    ) -> Result<(String, SocketAddr)> {
        let st = self.stations.get(ext).context("the station is gone")?;
        let fp = keyline_net::peer_fingerprint(&st.conn).context("station certificate")?;
        let lan_ip = st
            .conn
            .local_ip()
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(self.shared.local_addr.ip());
        let alloc = relay::allocate_open(
            self.shared.relay.clone(),
            st.conn.remote_address(),
            lan_ip,
            far,
            outside_ip,
        )
        .context("allocating the forwarder")?;
        let port = alloc.callee_facing;
        self.relays.insert(call, alloc);
        Ok((fp, port))
    }

    /// Both ends of an outside call are set: give the station its plan.
    pub(crate) fn connect_outside(
        &mut self,
        call: CallId,
        caller: &Line,
        callee: &Line,
    ) -> Result<()> {
        let (station, line) = if callee.is_trunk() {
            (caller, callee)
        } else {
            (callee, caller)
        };
        let station = station.ext().context("an outside call with no station")?;
        let t = self
            .trunks
            .io
            .get(&call)
            .with_context(|| format!("no outside call for {line}"))?;
        if let Some(plan) = &t.plan {
            // We called out and the far end answered: the station dials
            // through the forwarder.
            let alloc = self.relays.get(&call).context("no forwarder")?;
            let media = MediaPlan {
                dial: true,
                peer_addr: Some(alloc.caller_facing.to_string()),
                peer_fp: plan.peer_fp.clone(),
                token: plan.token.clone(),
                relayed: true,
                media_call: Some(plan.call),
            };
            self.send(station, Msg::Connect { call, media });
            return Ok(());
        }
        // A station took an incoming call: open the forwarder towards the
        // caller and answer for the station.
        let (client, outside_ip) = self
            .trunks
            .client
            .clone()
            .context("the office is not connected to its directory")?;
        let dc = line
            .trunk()
            .and_then(TrunkLine::dir_call)
            .context("no directory call")?;
        let (caller_fp, candidates) = (t.caller_fp.clone(), t.caller_candidates.clone());
        let (fp, port) = self.open_forwarder(call, station, candidates, outside_ip)?;
        tracing::debug!(
            "call {call}: answering {dc} for {station} ({caller_fp}), forwarder {port}"
        );
        let tx = self.shared.events.clone();
        tokio::spawn(async move {
            let ev = match client.answer_for(dc, Some(fp), vec![port]).await {
                Ok(plan) => TrunkEvent::Accepted { call, plan },
                Err(e) => TrunkEvent::AcceptFailed {
                    call,
                    message: e.to_string(),
                },
            };
            let _ = tx.send(Event::Trunk(ev)).await;
        });
        Ok(())
    }

    /// An outside caller reaches `mailbox`: the gateway answers the
    /// directory's call as itself and is the media end (the caller's end
    /// connects to the gateway's own address, as the directory gives it).
    pub(crate) fn outside_to_mailbox(
        &mut self,
        call: CallId,
        caller: &TrunkLine,
        mailbox: &str,
    ) -> Result<()> {
        let (client, _) = self
            .trunks
            .client
            .clone()
            .context("the office is not connected to its directory")?;
        let dc = caller.dir_call().context("no directory call")?;
        let (shared, caller, mailbox) = (
            self.shared.clone(),
            caller.number.to_string(),
            mailbox.to_string(),
        );
        tokio::spawn(async move {
            match client.answer_for(dc, None, Vec::new()).await {
                Ok(plan) => {
                    if let Ok(mut jobs) = shared.vm_jobs.lock() {
                        jobs.insert(
                            plan.token.clone(),
                            VoicemailJob {
                                call,
                                flow: dc,
                                caller_fp: plan.peer_fp,
                                caller,
                                mailbox,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("call {call}: cannot take the caller to the mailbox: {e}");
                    let _ = shared.events.send(Event::VoicemailDone { call }).await;
                }
            }
        });
        Ok(())
    }

    /// The office forwards the outside caller on `caller` to the outside
    /// number `to`: the directory tells the caller's end to call it (claim
    /// 7).
    pub(crate) fn redirect_outside(&mut self, caller: &TrunkLine, to: &str) {
        let (Some(dc), Some((client, _))) = (caller.dir_call(), self.trunks.client.clone()) else {
            return;
        };
        self.trunks.arriving.remove(&dc);
        let to = to.to_string();
        tokio::spawn(async move {
            let sent = match parse_number(&to) {
                Ok(n) => client.redirect(dc, &n).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => tracing::info!("call {dc} forwarded to {to}"),
                Err(e) => tracing::warn!("forwarding call {dc} to {to}: {e}"),
            }
        });
    }

    /// A call is over: forget its outside side (no message to send).
    pub(crate) fn trunk_forget(&mut self, call: CallId) {
        self.trunk_ended(call);
    }

    /// A text or voice message left with the directory for the office: it
    /// goes to the office mailbox's extension (`office_mailbox`, else the
    /// first reception extension) and is acknowledged once stored here; with
    /// no such extension it stays on the directory.
    fn office_mail(&mut self, m: dir::Mail) {
        let cfg = self.shared.cfg();
        let Some(ext) = cfg
            .office_mailbox
            .or_else(|| cfg.reception.first().cloned())
        else {
            tracing::info!(
                "a {} message for the office from {} waits on the directory (no office_mailbox)",
                m.kind.as_str(),
                m.from
            );
            return;
        };
        let Some((client, _)) = self.trunks.client.clone() else {
            return;
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (id, kind, from) = (m.id, m.kind, m.from.clone());
            let sh = shared.clone();
            let ext2 = ext.clone();
            let stored = tokio::task::spawn_blocking(move || store_mail(&sh, &ext2, &m)).await;
            match stored {
                Ok(Ok(note)) => {
                    if let Err(e) = client.ack_mail(id).await {
                        tracing::warn!("message {id} stored but not acknowledged: {e}");
                    }
                    match note {
                        Some(note) => {
                            let _ = shared.events.send(note).await;
                            tracing::info!(
                                "{} message from {from} for the office kept for {ext}",
                                kind.as_str()
                            );
                        }
                        None => tracing::info!(
                            "{} message {id} from {from} delivered again: kept already",
                            kind.as_str()
                        ),
                    }
                }
                Ok(Err(e)) => tracing::error!("cannot keep message {id} from {from}: {e:#}"),
                Err(e) => tracing::error!("cannot keep message {id} from {from}: {e}"),
            }
        });
    }
}

/// Write a delivered message where the office keeps its own: a text in the
/// texts table, a voice message as an Ogg Opus file plus a voicemail row,
/// once however often the directory delivers it. Returns the event that
/// tells the station, `None` for a message kept before.
fn store_mail(shared: &Shared, ext: &str, m: &dir::Mail) -> Result<Option<Event>> {
    let mail = (m.id, m.at_ms);
    match m.kind {
        keyline_proto::dir::MailKind::Text => {
            let body = String::from_utf8_lossy(&m.body).to_string();
            let Some(row) = shared.db.insert_delivered_text(mail, &m.from, ext, &body)? else {
                return Ok(None);
            };
            Ok(Some(Event::TextStored {
                to: ext.to_string(),
                text: Msg::Text {
                    id: row.id as u64,
                    from: row.sender,
                    body: row.body,
                    sent_ms: row.sent_ms,
                },
            }))
        }
        keyline_proto::dir::MailKind::Voice => {
            let pcm = keyline_media::read_ogg_opus_bytes(&m.body)
                .map_err(|e| anyhow::anyhow!("not a playable Ogg Opus message: {e}"))?;
            let secs = pcm.len() as f64 / 48_000.0;
            let dir = shared.state_dir.join("voicemail").join(ext);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!(
                "{}-{}.opus",
                m.at_ms,
                keyline_media::record::sanitize_peer(&m.from)
            ));
            let tmp = path.with_extension("part");
            std::fs::write(&tmp, &m.body).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
            std::fs::rename(&tmp, &path)?;
            let kept = shared.db.insert_delivered_voicemail(
                mail,
                ext,
                &m.from,
                &path.display().to_string(),
                secs,
            )?;
            Ok(kept.map(|_| Event::MessageWaiting {
                ext: ext.to_string(),
            }))
        }
    }
}

impl Switch {
    /// Extension `by` handed the outside party on `line` on (claim 5):
    /// tell the far end, through the directory, to call `to` (an extension
    /// here: the office number with `/to`, with a hand-off value by which
    /// we know the party when it calls back in; see
    /// [`keyline_proto::call::Switchboard::handle_handed_on`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn hand_off(
        &mut self,
        now: Instant,
        line: &TrunkLine,
        call: CallId,
        dir_call: Option<u64>,
        to: &str,
        internal: bool,
        back: HandedOn,
    ) {
        let dc = dir_call.or(line.dir_call());
        let (Some(dc), Some((client, _))) = (dc, self.trunks.client.clone()) else {
            // The directory call went with the connection.
            return;
        };
        let number = match (internal, &self.trunks.office_number) {
            (true, Some(office)) => format!("{office}/{to}"),
            (true, None) => {
                // The call is over here; do not leave the far end in it.
                tracing::warn!("call {call}: no office number to hand the caller on to {to}");
                tokio::spawn(async move {
                    if let Err(e) = client.hangup(dc).await {
                        tracing::debug!("hanging up call {dc}: {e}");
                    }
                });
                return;
            }
            (false, _) => to.to_string(),
        };
        let handoff = internal.then(|| {
            // The value is drawn here (the switchboard takes randomness as
            // an input); the switchboard decides whether a call that
            // brings it back is the party handed on.
            let h = rand::random::<u64>();
            self.sb
                .handle_handoff_sent(now, h, line.number.clone(), to, back);
            h
        });
        tokio::spawn(async move {
            let sent = match parse_number(&number) {
                Ok(n) => client.transfer(dc, &n, handoff).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => tracing::info!("call {dc} handed on to {number}"),
                Err(e) => {
                    // The call is over here; do not leave the far end in it.
                    tracing::warn!("handing call {dc} on to {number}: {e}; hanging up");
                    if let Err(e) = client.hangup(dc).await {
                        tracing::debug!("hanging up call {dc}: {e}");
                    }
                }
            }
        });
    }
}
